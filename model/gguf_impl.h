/*
 * gguf_impl.h - what the GGUF reader (gguf.c) and writer (gguf_write.c) share:
 * the size of scalar values, the nesting bound and the name hash.  Private to
 * model/gguf*.c.
 */
#ifndef MOE_GGUF_IMPL_H
#define MOE_GGUF_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"

/* Arrays nested deeper than this are refused by the reader and never
 * written (a bound on recursion). */
#define GGUF_MAX_DEPTH 16

/* Bytes of one scalar of type t; 0 for STRING, ARRAY and unknown types. */
static inline size_t gguf_scalar_size(moe_gguf_vtype t)
{
	switch (t) {
	case MOE_GGUF_UINT8:
	case MOE_GGUF_INT8:
	case MOE_GGUF_BOOL:
		return 1;
	case MOE_GGUF_UINT16:
	case MOE_GGUF_INT16:
		return 2;
	case MOE_GGUF_UINT32:
	case MOE_GGUF_INT32:
	case MOE_GGUF_FLOAT32:
		return 4;
	case MOE_GGUF_UINT64:
	case MOE_GGUF_INT64:
	case MOE_GGUF_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

/* FNV-1a of n bytes: the hash of the key and tensor-name tables. */
static inline uint64_t gguf_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 1099511628211ull;
	}
	return h;
}

#define GGUF_NO_IDX UINT64_MAX

/* One metadata entry. */
struct kv {
	moe_gguf_str key;
	uint64_t off; /* file offset of the entry (its key length) */
	moe_gguf_vtype type;
	const uint8_t *val; /* scalar / string encoding; for arrays the first element */
	moe_gguf_vtype arr_type;
	uint64_t arr_n;
	uint64_t arr_idx; /* pool index of the element index, or GGUF_NO_IDX */
};

struct moe_gguf {
	const uint8_t *base; /* [size] the whole file */
	char *path;          /* as opened; NULL for open_mem */
	size_t size;
	void *map; /* our mapping, or NULL for open_mem */
	uint32_t version;
	uint32_t alignment;
	uint64_t data_offset;

	struct kv *kvs; /* [n_kv] */
	int64_t n_kv;
	moe_gguf_tensor *tensors; /* [n_tensors] */
	int64_t n_tensors;

	uint64_t *pool; /* [n_pool] element indexes of string and nested arrays */
	size_t n_pool;
	size_t cap_pool;

	int64_t *key_hash; /* [key_cap] kv index + 1, 0 = empty */
	size_t key_cap;
	int64_t *tensor_hash; /* [tensor_cap] tensor index + 1, 0 = empty */
	size_t tensor_cap;

	/* A split model (llama.cpp's gguf-split): the first file holds every
	 * other one; splits[0] == this file; tensors and the tensor hash of the
	 * first file cover all splits.  n_splits == 0 for a single file. */
	moe_gguf **splits;
	int n_splits;
};

/* Builds g->tensor_hash over g->tensors (MOE_ERR_DUPLICATE for a repeated
 * name, MOE_ERR_NOMEM). */
moe_err gguf_build_tensor_hash(moe_gguf *g);

/* The reader of one file (moe_gguf_open without following splits). */
typedef moe_err (*gguf_open_fn)(moe_gguf **out, const char *path);

/* After the first file of a model is open in g: if it is split 1 of N
 * (N > 1), opens splits 2..N with open_file by llama.cpp's naming
 * (PREFIX-%05d-of-%05d.gguf, 1-based), checks they belong together and
 * merges their tensor tables into g's.  A single file is left alone.  Errors
 * name the file: MOE_ERR_IO (a split is missing), MOE_ERR_MISMATCH (split
 * keys disagree; a later split opened on its own), MOE_ERR_BAD_TYPE /
 * MOE_ERR_BAD_VALUE (split keys), MOE_ERR_DUPLICATE (a tensor in two
 * splits), MOE_ERR_NOMEM.  On error g keeps what it opened, for
 * moe_gguf_close to release. */
moe_err gguf_open_splits(moe_gguf *g, gguf_open_fn open_file);

#endif
