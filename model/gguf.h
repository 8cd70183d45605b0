/*
 * gguf.h - reading and writing GGUF v2/v3 files.
 *
 * Reading maps the file (or takes a caller's buffer) and validates all of it
 * before returning: magic, version, every count against the bytes left, string
 * lengths, value types, nested arrays, n_dims <= 4, element-count overflow,
 * known tensor types, general.alignment, duplicate keys and tensor names,
 * tensor data offsets aligned, inside the file and not overlapping.  A
 * violation returns a specific moe_err and sets a detail (moe_err_detail())
 * naming the field and its byte offset.  Nothing outside the input is ever
 * read.  After a successful open every accessor is a cheap lookup (keys and
 * tensor names through hash tables) that cannot fail on file content.
 *
 * Which error: a read past the end is MOE_ERR_TRUNCATED; a count or length
 * whose smallest encoding would not fit even in the whole input is
 * MOE_ERR_BAD_COUNT / MOE_ERR_BAD_STRING (one that fits the input but not the
 * bytes left is a truncation); a tensor offset beyond the whole input is
 * MOE_ERR_BAD_OFFSET, tensor data that runs past the end is
 * MOE_ERR_TRUNCATED.  The padding after the last tensor may be missing.
 * Also refused: GGUF v1 (MOE_ERR_BAD_VERSION), BOOL values other than 0/1
 * (MOE_ERR_BAD_VALUE), empty keys or tensor names and ones holding a NUL
 * (MOE_ERR_BAD_STRING), arrays nested more than 16 deep (MOE_ERR_UNSUPPORTED).
 *
 * Writing is streamed: declare metadata and tensor infos, then write each
 * tensor's bytes in declaration order; no whole-model buffer is needed.
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define MOE_GGUF_MAX_DIMS          4
#define MOE_GGUF_DEFAULT_ALIGNMENT 32

/* GGUF metadata value types, as stored in the file. */
typedef enum moe_gguf_vtype {
	MOE_GGUF_UINT8 = 0,
	MOE_GGUF_INT8 = 1,
	MOE_GGUF_UINT16 = 2,
	MOE_GGUF_INT16 = 3,
	MOE_GGUF_UINT32 = 4,
	MOE_GGUF_INT32 = 5,
	MOE_GGUF_FLOAT32 = 6,
	MOE_GGUF_BOOL = 7,
	MOE_GGUF_STRING = 8,
	MOE_GGUF_ARRAY = 9,
	MOE_GGUF_UINT64 = 10,
	MOE_GGUF_INT64 = 11,
	MOE_GGUF_FLOAT64 = 12,
	MOE_GGUF_VTYPE_COUNT
} moe_gguf_vtype;

/* A string inside the file: not NUL-terminated. */
typedef struct moe_gguf_str {
	const char *ptr;
	uint64_t len;
} moe_gguf_str;

/* One tensor's info. `data` points into the mapping. */
typedef struct moe_gguf_tensor {
	moe_gguf_str name;
	moe_type type;
	uint32_t n_dims;               /* 0..4; 0 is a scalar (one element) */
	int64_t ne[MOE_GGUF_MAX_DIMS]; /* ggml order: ne[0] = row length; unused dims = 1 */
	int64_t n_elements;            /* product of ne */
	uint64_t offset;               /* relative to the data section */
	uint64_t size;                 /* bytes */
	const void *data;              /* [size] bytes inside the mapping */
	uint32_t split;                /* file holding it: 0, or the split index (0-based) */
} moe_gguf_tensor;

/* "UINT32", "STRING", ...; "?" for an unknown value. */
const char *moe_gguf_vtype_name(moe_gguf_vtype t);

/* A metadata value, as the writer takes it and moe_gguf_kv_value gives it.
 * For an array, arr.data is n packed scalars (host byte order; BOOL as
 * bytes 0/1), moe_gguf_str[n] (STRING) or moe_gguf_value[n] each of type
 * ARRAY (nested arrays). */
typedef struct moe_gguf_value {
	moe_gguf_vtype type;
	union {
		uint64_t u;     /* UINT8, UINT16, UINT32, UINT64 */
		int64_t i;      /* INT8, INT16, INT32, INT64 */
		double f;       /* FLOAT32, FLOAT64 */
		bool b;         /* BOOL */
		moe_gguf_str s; /* STRING */
		struct {
			moe_gguf_vtype type;
			uint64_t n;
			const void *data;
		} arr; /* ARRAY */
	};
} moe_gguf_value;

typedef struct moe_gguf moe_gguf;

/* Opens and validates path, mapping it read-only. On success *out owns the
 * mapping (free with moe_gguf_close). On error returns the specific code with
 * a detail; *out is untouched.  A model split by llama.cpp's gguf-split is
 * opened through its first file (NAME-00001-of-0000N.gguf): the other files
 * are found by name, validated, and their tensors join the first file's
 * table (metadata comes from the first file, as gguf-split writes it). */
moe_err moe_gguf_open(moe_gguf **out, const char *path);

/* Same for a buffer of size bytes that the caller keeps alive and unchanged
 * until moe_gguf_close. Nothing is copied. */
moe_err moe_gguf_open_mem(moe_gguf **out, const void *data, size_t size);

/* Releases everything; NULL is a no-op. */
void moe_gguf_close(moe_gguf *g);

uint32_t moe_gguf_version(const moe_gguf *g);
uint32_t moe_gguf_alignment(const moe_gguf *g);
uint64_t moe_gguf_data_offset(const moe_gguf *g); /* file offset of the data section */
const void *moe_gguf_base(const moe_gguf *g);     /* the whole file */
size_t moe_gguf_file_size(const moe_gguf *g);
const char *moe_gguf_path(const moe_gguf *g); /* as opened; NULL for open_mem */

/* A split model: the number of files (1 for a single file) and file i as a
 * reader of its own (i = 0 is g itself; for i > 0 its tensor table is its own
 * share only; NULL out of range).  The version, alignment, data offset, base
 * and size accessors above describe one file: use them on moe_gguf_split(g,
 * t->split) for tensor t's file. */
int moe_gguf_n_splits(const moe_gguf *g);
const moe_gguf *moe_gguf_split(const moe_gguf *g, int i);

/* Metadata. Keys are indexed 0..n_kv-1 in file order. */
int64_t moe_gguf_n_kv(const moe_gguf *g);
moe_gguf_str moe_gguf_kv_key(const moe_gguf *g, int64_t i);
moe_gguf_vtype moe_gguf_kv_type(const moe_gguf *g, int64_t i);
/* Index of key, or -1. */
int64_t moe_gguf_find_key(const moe_gguf *g, const char *key);

/* Typed getters: return MOE_OK, MOE_ERR_NOT_FOUND (no such key),
 * MOE_ERR_BAD_TYPE (other type) or MOE_ERR_BAD_VALUE (an integer that does
 * not fit *out), with a detail naming the key; *out is untouched on error.
 * Integer getters accept any integer type (not BOOL) whose value fits; get_f32
 * accepts FLOAT32 and FLOAT64. */
moe_err moe_gguf_get_u32(uint32_t *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_get_u64(uint64_t *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_get_i64(int64_t *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_get_f32(float *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_get_bool(bool *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_get_str(moe_gguf_str *out, const moe_gguf *g, const char *key);

/* Value of kv i: scalars (UINT* in .u, INT* in .i, FLOAT* in .f, BOOL in .b)
 * and strings (a view in .s). MOE_ERR_INVAL for i out of range,
 * MOE_ERR_BAD_TYPE for an array (use moe_gguf_kv_arr). */
moe_err moe_gguf_kv_value(moe_gguf_value *out, const moe_gguf *g, int64_t i);

/* Scalar value of kv i widened (ints, bools -> int64/uint64, floats ->
 * double); returns false for strings and arrays. */
bool moe_gguf_kv_as_double(double *out, const moe_gguf *g, int64_t i);

/* Arrays: element type and count of kv i (MOE_GGUF_ARRAY). Element access for
 * scalar element types copies the value out widened; strings return views.
 * Nested arrays are validated on open and reported by type, and can be
 * walked with moe_gguf_arr_sub. Every element access is O(1): strings and
 * sub-arrays are found through an index built on open. */
typedef struct moe_gguf_arr {
	moe_gguf_vtype type; /* element type */
	uint64_t n;
	const uint8_t *data; /* first element (internal encoding) */
	const moe_gguf *g;
	const uint64_t *idx; /* STRING: [n] element file offsets; ARRAY: [n][2] (offset,
	                        index of the sub-array's own idx or UINT64_MAX); else NULL */
} moe_gguf_arr;
/* get_arr: MOE_OK, MOE_ERR_NOT_FOUND or MOE_ERR_BAD_TYPE (not an array).
 * kv_arr: MOE_ERR_INVAL for i out of range, MOE_ERR_BAD_TYPE if kv i is not
 * an array. */
moe_err moe_gguf_get_arr(moe_gguf_arr *out, const moe_gguf *g, const char *key);
moe_err moe_gguf_kv_arr(moe_gguf_arr *out, const moe_gguf *g, int64_t i);
/* Element j. A wrong element type or j >= n gives {NULL, 0}, 0, 0.0 or an
 * empty array. arr_int widens integers and bools (UINT64 wraps to int64);
 * arr_float also converts integers. */
moe_gguf_str moe_gguf_arr_str(const moe_gguf_arr *a, uint64_t j);
int64_t moe_gguf_arr_int(const moe_gguf_arr *a, uint64_t j);
double moe_gguf_arr_float(const moe_gguf_arr *a, uint64_t j);
moe_gguf_arr moe_gguf_arr_sub(const moe_gguf_arr *a, uint64_t j); /* nested array */

/* Tensors, in file order. tensor_at returns NULL for i out of range. */
int64_t moe_gguf_n_tensors(const moe_gguf *g);
const moe_gguf_tensor *moe_gguf_tensor_at(const moe_gguf *g, int64_t i);
/* The tensor named name, or NULL. A hash lookup. */
const moe_gguf_tensor *moe_gguf_find_tensor(const moe_gguf *g, const char *name);

/* ---- writer ---------------------------------------------------------------- */

typedef struct moe_gguf_writer moe_gguf_writer;

/* Creates path (truncating) for a GGUF v3 file, laid out like llama.cpp's
 * writers: header, kvs, tensor infos, zero padding to the alignment, then
 * each tensor's bytes followed by zero padding to the alignment. Tensor
 * offsets are assigned in declaration order. MOE_ERR_IO if path cannot be
 * created. */
moe_err moe_gguf_writer_create(moe_gguf_writer **out, const char *path);

/* Metadata, in the order it will be written. Keys must be non-empty and
 * unique (MOE_ERR_DUPLICATE). "general.alignment" must be a UINT32 power of
 * two (MOE_ERR_BAD_TYPE / MOE_ERR_BAD_ALIGNMENT) and sets the alignment used
 * for the data section (default 32). After begin_data: MOE_ERR_STATE. */
moe_err moe_gguf_writer_add_u32(moe_gguf_writer *w, const char *key, uint32_t v);
moe_err moe_gguf_writer_add_i32(moe_gguf_writer *w, const char *key, int32_t v);
moe_err moe_gguf_writer_add_u64(moe_gguf_writer *w, const char *key, uint64_t v);
moe_err moe_gguf_writer_add_f32(moe_gguf_writer *w, const char *key, float v);
moe_err moe_gguf_writer_add_bool(moe_gguf_writer *w, const char *key, bool v);
moe_err moe_gguf_writer_add_str(moe_gguf_writer *w, const char *key, const char *v);
/* Arrays of scalars: n elements of elem_type packed in data (host byte order;
 * BOOL elements are bytes 0/1). STRING or ARRAY element types are
 * MOE_ERR_INVAL here: use add_arr_str / add_arr_strn / add_value. */
moe_err moe_gguf_writer_add_arr(moe_gguf_writer *w, const char *key, moe_gguf_vtype elem_type,
                                const void *data, uint64_t n);
moe_err moe_gguf_writer_add_arr_str(moe_gguf_writer *w, const char *key, const char *const *strs,
                                    uint64_t n);
/* The same with counted strings (may hold any bytes). */
moe_err moe_gguf_writer_add_arr_strn(moe_gguf_writer *w, const char *key, const moe_gguf_str *strs,
                                     uint64_t n);

/* Any value, including nested arrays (see moe_gguf_value). Integer members
 * must fit the declared type (MOE_ERR_BAD_VALUE otherwise). */
moe_err moe_gguf_writer_add_value(moe_gguf_writer *w, const char *key, const moe_gguf_value *v);

/* Copies kv i of a reader (any type, nested arrays included) exactly. */
moe_err moe_gguf_writer_copy_kv(moe_gguf_writer *w, const moe_gguf *g, int64_t i);

/* Declares a tensor; its bytes are written later, in declaration order.
 * ne[0..n_dims) as in moe_gguf_tensor. Errors: MOE_ERR_DUPLICATE (name),
 * MOE_ERR_BAD_TYPE, MOE_ERR_BAD_SHAPE (n_dims > 4, ne < 0, ne[0] not a
 * multiple of the block), MOE_ERR_OVERFLOW. */
moe_err moe_gguf_writer_add_tensor(moe_gguf_writer *w, const char *name, moe_type type,
                                   uint32_t n_dims, const int64_t *ne);

/* Writes header, metadata and tensor infos. Call once, after all adds.
 * A refused add or write (bad argument, duplicate, wrong state) changes
 * nothing; an I/O failure leaves the writer unusable: later calls return
 * MOE_ERR_STATE and destroy removes the file. */
moe_err moe_gguf_writer_begin_data(moe_gguf_writer *w);

/* Appends bytes of the current tensor; a tensor may come in several calls.
 * Moving past a tensor's size without finishing it is MOE_ERR_INVAL. */
moe_err moe_gguf_writer_write(moe_gguf_writer *w, const void *data, size_t size);

/* Checks every tensor was written fully, pads, flushes, closes. */
moe_err moe_gguf_writer_finish(moe_gguf_writer *w);

/* Frees; an unfinished file is removed. NULL is a no-op. */
void moe_gguf_writer_destroy(moe_gguf_writer *w);

/* Writes the model g (any reader, split or not) as llama.cpp's gguf-split
 * does: files PREFIX-%05d-of-%05d.gguf of at most max_tensors tensors each, in
 * g's tensor order; the first carries all of g's metadata, and every file
 * split.no (UINT16), split.count (UINT16) and split.tensors.count (INT32).
 * *n_files (may be NULL) gets the file count.  Errors: MOE_ERR_INVAL
 * (max_tensors < 1, more than 65535 files), the writer's errors with the
 * file named (a file that failed is removed; earlier ones stay). */
moe_err moe_gguf_split_write(int *n_files, const moe_gguf *g, const char *prefix,
                             int64_t max_tensors);

#endif
