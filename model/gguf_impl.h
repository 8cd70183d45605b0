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

#endif
