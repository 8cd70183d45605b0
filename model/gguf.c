/*
 * gguf.c - the GGUF v2/v3 reader: maps a file (or takes a caller's buffer),
 * validates every byte of the header, metadata and tensor infos, and builds
 * the indexes that make every later accessor an O(1) lookup.
 *
 * File layout (all little-endian):
 *
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x      { str key, u32 vtype, value }
 *   n_tensors x { str name, u32 n_dims, i64 ne[n_dims], u32 type, u64 offset }
 *   zero padding to general.alignment (default 32)
 *   data: tensor bytes at data_offset + offset
 *
 *   str   = u64 len, len bytes (no NUL)
 *   value = scalar | str | array;  array = u32 elem vtype, u64 n, n values
 *
 * Error rules: a read past the end is MOE_ERR_TRUNCATED; a count or length
 * whose minimum encoding would not fit even in the whole input is absurd
 * (MOE_ERR_BAD_COUNT / MOE_ERR_BAD_STRING); one that fits the input but not
 * the bytes left is a truncation.  Likewise a tensor whose offset lies beyond
 * the whole input is MOE_ERR_BAD_OFFSET, one that merely runs past the end is
 * MOE_ERR_TRUNCATED.
 */
#include "model/gguf.h"
#include "model/gguf_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The parse position and what is being parsed, for error details. */
struct cur {
	const uint8_t *base;
	size_t size;
	size_t pos;
	char where[160]; /* "kv 3 (general.name)" */
};

static const char *const vtype_names[MOE_GGUF_VTYPE_COUNT] = {
    [MOE_GGUF_UINT8] = "UINT8",     [MOE_GGUF_INT8] = "INT8",     [MOE_GGUF_UINT16] = "UINT16",
    [MOE_GGUF_INT16] = "INT16",     [MOE_GGUF_UINT32] = "UINT32", [MOE_GGUF_INT32] = "INT32",
    [MOE_GGUF_FLOAT32] = "FLOAT32", [MOE_GGUF_BOOL] = "BOOL",     [MOE_GGUF_STRING] = "STRING",
    [MOE_GGUF_ARRAY] = "ARRAY",     [MOE_GGUF_UINT64] = "UINT64", [MOE_GGUF_INT64] = "INT64",
    [MOE_GGUF_FLOAT64] = "FLOAT64",
};

const char *moe_gguf_vtype_name(moe_gguf_vtype t)
{
	if ((unsigned)t >= MOE_GGUF_VTYPE_COUNT)
		return "?";
	return vtype_names[t];
}

/* The fewest bytes one value of type t can take in a file. */
static size_t min_value_size(moe_gguf_vtype t)
{
	if (t == MOE_GGUF_STRING)
		return 8;
	if (t == MOE_GGUF_ARRAY)
		return 12;
	return gguf_scalar_size(t);
}

static uint16_t le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

/* ---- reading primitives ----------------------------------------------------- */

static size_t left(const struct cur *c)
{
	return c->size - c->pos;
}

static moe_err truncated(const struct cur *c, const char *field, uint64_t need)
{
	return moe_fail(MOE_ERR_TRUNCATED,
	                "%s%s%s at offset %zu: needs %llu bytes, file ends at %zu", c->where,
	                c->where[0] ? ": " : "", field, c->pos, (unsigned long long)need, c->size);
}

static moe_err read_u32(struct cur *c, uint32_t *v, const char *field)
{
	if (left(c) < 4)
		return truncated(c, field, 4);
	*v = le32(c->base + c->pos);
	c->pos += 4;
	return MOE_OK;
}

static moe_err read_u64(struct cur *c, uint64_t *v, const char *field)
{
	if (left(c) < 8)
		return truncated(c, field, 8);
	*v = le64(c->base + c->pos);
	c->pos += 8;
	return MOE_OK;
}

/* Checks that n items of at least min_size bytes each can follow. */
static moe_err check_count(const struct cur *c, uint64_t n, size_t min_size, const char *field)
{
	if (min_size == 0 || n <= left(c) / min_size)
		return MOE_OK;
	if (n > c->size / min_size)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "%s%s%s = %llu at offset %zu: needs at least %zu bytes each, the "
		                "whole file has %zu",
		                c->where, c->where[0] ? ": " : "", field, (unsigned long long)n,
		                c->pos - 8, min_size, c->size);
	return moe_fail(MOE_ERR_TRUNCATED,
	                "%s%s%s = %llu at offset %zu: needs at least %llu bytes, file ends at %zu",
	                c->where, c->where[0] ? ": " : "", field, (unsigned long long)n, c->pos - 8,
	                (unsigned long long)(n * min_size), c->size);
}

/* Reads a string; a name (key or tensor name) must be non-empty without NUL. */
static moe_err read_str(struct cur *c, moe_gguf_str *s, const char *field, bool is_name)
{
	uint64_t len = 0;
	size_t at = c->pos;
	moe_err err = read_u64(c, &len, field);

	if (err != MOE_OK)
		return err;
	if (len > left(c)) {
		if (len > c->size)
			return moe_fail(
			    MOE_ERR_BAD_STRING,
			    "%s%s%s at offset %zu: length %llu exceeds the file size %zu", c->where,
			    c->where[0] ? ": " : "", field, at, (unsigned long long)len, c->size);
		return truncated(c, field, len);
	}
	s->ptr = (const char *)c->base + c->pos;
	s->len = len;
	if (is_name && len == 0)
		return moe_fail(MOE_ERR_BAD_STRING, "%s%s%s at offset %zu: empty", c->where,
		                c->where[0] ? ": " : "", field, at);
	if (is_name && memchr(s->ptr, '\0', len) != NULL)
		return moe_fail(MOE_ERR_BAD_STRING, "%s%s%s at offset %zu: contains a NUL byte",
		                c->where, c->where[0] ? ": " : "", field, at);
	c->pos += len;
	return MOE_OK;
}

/* Appends "(element j)" to the detail of err (formatting only on failure
 * keeps the loop over 150k-string arrays fast). */
static moe_err add_element(moe_err err, uint64_t j)
{
	char detail[512];

	snprintf(detail, sizeof(detail), "%s", moe_err_detail());
	return moe_fail(err, "%s (element %llu)", detail, (unsigned long long)j);
}

/* ---- the element index pool --------------------------------------------------- */

/* Appends n entries; *at receives the index of the first (GGUF_NO_IDX for
 * n = 0, so that an empty array needs no pool). */
static moe_err pool_push(moe_gguf *g, uint64_t n, uint64_t *at)
{
	if (n == 0) {
		*at = GGUF_NO_IDX;
		return MOE_OK;
	}
	if (n > SIZE_MAX / sizeof(uint64_t) - g->n_pool)
		return moe_fail(MOE_ERR_NOMEM, "array index of %llu entries",
		                (unsigned long long)n);
	if (g->n_pool + n > g->cap_pool) {
		size_t cap = g->cap_pool ? g->cap_pool : 1024;
		while (cap < g->n_pool + n)
			cap = cap > SIZE_MAX / 2 / sizeof(uint64_t) ? g->n_pool + n : cap * 2;
		uint64_t *p = realloc(g->pool, cap * sizeof(uint64_t));
		if (p == NULL)
			return moe_fail(MOE_ERR_NOMEM, "array index of %zu entries", cap);
		g->pool = p;
		g->cap_pool = cap;
	}
	*at = g->n_pool;
	g->n_pool += n;
	return MOE_OK;
}

/* ---- values ------------------------------------------------------------------- */

static moe_err parse_array(moe_gguf *g, struct cur *c, moe_gguf_vtype *type, uint64_t *n,
                           uint64_t *idx, int depth);

static moe_err check_bools(const struct cur *c, const uint8_t *p, uint64_t n)
{
	for (uint64_t j = 0; j < n; j++)
		if (p[j] > 1)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "%s: BOOL at offset %zu is %u (must be 0 or 1)", c->where,
			                (size_t)(p + j - c->base), p[j]);
	return MOE_OK;
}

/* Parses the elements of an array whose header has been read. */
static moe_err parse_elements(moe_gguf *g, struct cur *c, moe_gguf_vtype et, uint64_t n,
                              uint64_t *idx, int depth)
{
	moe_err err;
	size_t esz = gguf_scalar_size(et);

	*idx = GGUF_NO_IDX;
	if (esz != 0) {
		/* check_count made n * esz <= left(c) */
		if (et == MOE_GGUF_BOOL) {
			err = check_bools(c, c->base + c->pos, n);
			if (err != MOE_OK)
				return err;
		}
		c->pos += (size_t)n * esz;
		return MOE_OK;
	}
	if (et == MOE_GGUF_STRING) {
		err = pool_push(g, n, idx);
		if (err != MOE_OK)
			return err;
		for (uint64_t j = 0; j < n; j++) {
			moe_gguf_str s;
			g->pool[*idx + j] = c->pos;
			err = read_str(c, &s, "string", false);
			if (err != MOE_OK)
				return add_element(err, j);
		}
		return MOE_OK;
	}
	/* nested arrays: [offset, index of the sub-array's own index] per element;
	 * check_count made n <= size / 12, so 2 * n cannot overflow */
	err = pool_push(g, 2 * n, idx);
	if (err != MOE_OK)
		return err;
	for (uint64_t j = 0; j < n; j++) {
		moe_gguf_vtype st;
		uint64_t sn, sidx;
		g->pool[*idx + 2 * j] = c->pos;
		err = parse_array(g, c, &st, &sn, &sidx, depth + 1);
		if (err != MOE_OK)
			return err;
		g->pool[*idx + 2 * j + 1] = sidx;
	}
	return MOE_OK;
}

/* Parses an array value (header + elements) at c. */
static moe_err parse_array(moe_gguf *g, struct cur *c, moe_gguf_vtype *type, uint64_t *n,
                           uint64_t *idx, int depth)
{
	uint32_t et = 0;
	size_t at = c->pos;
	moe_err err;

	if (depth > GGUF_MAX_DEPTH)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "%s: array at offset %zu nested deeper than %d", c->where, at,
		                GGUF_MAX_DEPTH);
	err = read_u32(c, &et, "array element type");
	if (err != MOE_OK)
		return err;
	if (et >= MOE_GGUF_VTYPE_COUNT)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s: array element type %u at offset %zu unknown",
		                c->where, et, at);
	err = read_u64(c, n, "array count");
	if (err != MOE_OK)
		return err;
	err = check_count(c, *n, min_value_size((moe_gguf_vtype)et), "array count");
	if (err != MOE_OK)
		return err;
	*type = (moe_gguf_vtype)et;
	return parse_elements(g, c, *type, *n, idx, depth);
}

static moe_err parse_kv(moe_gguf *g, struct cur *c, struct kv *kv, int64_t i)
{
	uint32_t vt = 0;
	moe_err err;
	size_t at;

	snprintf(c->where, sizeof(c->where), "kv %lld", (long long)i);
	kv->off = c->pos;
	err = read_str(c, &kv->key, "key", true);
	if (err != MOE_OK)
		return err;
	snprintf(c->where, sizeof(c->where), "kv %lld (%.*s)", (long long)i,
	         (int)(kv->key.len > 96 ? 96 : kv->key.len), kv->key.ptr);
	at = c->pos;
	err = read_u32(c, &vt, "value type");
	if (err != MOE_OK)
		return err;
	if (vt >= MOE_GGUF_VTYPE_COUNT)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s: value type %u at offset %zu unknown",
		                c->where, vt, at);
	kv->type = (moe_gguf_vtype)vt;
	kv->arr_idx = GGUF_NO_IDX;
	kv->val = c->base + c->pos;
	if (kv->type == MOE_GGUF_STRING) {
		moe_gguf_str s;
		err = read_str(c, &s, "value", false);
	} else if (kv->type == MOE_GGUF_ARRAY) {
		err = parse_array(g, c, &kv->arr_type, &kv->arr_n, &kv->arr_idx, 1);
		kv->val += 12;
	} else {
		size_t sz = gguf_scalar_size(kv->type);
		if (left(c) < sz)
			return truncated(c, "value", sz);
		if (kv->type == MOE_GGUF_BOOL)
			err = check_bools(c, c->base + c->pos, 1);
		c->pos += sz;
	}
	return err;
}

/* ---- hash indexes ------------------------------------------------------------- */

static size_t hash_cap(int64_t n)
{
	size_t cap = 16;

	while (cap < (size_t)n * 2)
		cap *= 2;
	return cap;
}

static bool str_eq(moe_gguf_str a, const char *b, size_t blen)
{
	return a.len == blen && memcmp(a.ptr, b, blen) == 0;
}

static int64_t key_lookup(const moe_gguf *g, const char *key, size_t len)
{
	if (g->key_cap == 0)
		return -1;
	for (size_t h = gguf_hash(key, len) & (g->key_cap - 1);; h = (h + 1) & (g->key_cap - 1)) {
		int64_t v = g->key_hash[h];
		if (v == 0)
			return -1;
		if (str_eq(g->kvs[v - 1].key, key, len))
			return v - 1;
	}
}

static int64_t tensor_lookup(const moe_gguf *g, const char *name, size_t len)
{
	if (g->tensor_cap == 0)
		return -1;
	for (size_t h = gguf_hash(name, len) & (g->tensor_cap - 1);;
	     h = (h + 1) & (g->tensor_cap - 1)) {
		int64_t v = g->tensor_hash[h];
		if (v == 0)
			return -1;
		if (str_eq(g->tensors[v - 1].name, name, len))
			return v - 1;
	}
}

static moe_err build_key_hash(moe_gguf *g)
{
	g->key_cap = hash_cap(g->n_kv);
	g->key_hash = calloc(g->key_cap, sizeof(int64_t));
	if (g->key_hash == NULL)
		return moe_fail(MOE_ERR_NOMEM, "key index of %zu slots", g->key_cap);
	for (int64_t i = 0; i < g->n_kv; i++) {
		const struct kv *kv = &g->kvs[i];
		size_t h = gguf_hash(kv->key.ptr, kv->key.len) & (g->key_cap - 1);
		for (; g->key_hash[h] != 0; h = (h + 1) & (g->key_cap - 1)) {
			const struct kv *o = &g->kvs[g->key_hash[h] - 1];
			if (str_eq(o->key, kv->key.ptr, kv->key.len))
				return moe_fail(
				    MOE_ERR_DUPLICATE,
				    "kv %lld (%.*s) at offset %llu: duplicate of kv %lld",
				    (long long)i, (int)(kv->key.len > 96 ? 96 : kv->key.len),
				    kv->key.ptr, (unsigned long long)kv->off,
				    (long long)(g->key_hash[h] - 1));
		}
		g->key_hash[h] = i + 1;
	}
	return MOE_OK;
}

/* ---- tensor infos ------------------------------------------------------------- */

static moe_err parse_tensor_info(struct cur *c, moe_gguf_tensor *t, int64_t i)
{
	moe_err err;
	uint32_t n_dims = 0, type = 0;
	size_t at;
	const moe_type_traits *tr;
	int64_t nel = 1;

	*t = (moe_gguf_tensor){0};
	snprintf(c->where, sizeof(c->where), "tensor info %lld", (long long)i);
	err = read_str(c, &t->name, "name", true);
	if (err != MOE_OK)
		return err;
	snprintf(c->where, sizeof(c->where), "tensor info %lld (%.*s)", (long long)i,
	         (int)(t->name.len > 96 ? 96 : t->name.len), t->name.ptr);
	at = c->pos;
	err = read_u32(c, &n_dims, "n_dims");
	if (err != MOE_OK)
		return err;
	if (n_dims > MOE_GGUF_MAX_DIMS)
		return moe_fail(MOE_ERR_BAD_SHAPE, "%s: n_dims %u at offset %zu exceeds %d",
		                c->where, n_dims, at, MOE_GGUF_MAX_DIMS);
	t->n_dims = n_dims;
	size_t ne0_at = c->pos;
	for (uint32_t d = 0; d < MOE_GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (uint32_t d = 0; d < n_dims; d++) {
		static const char *const field[MOE_GGUF_MAX_DIMS] = {"ne[0]", "ne[1]", "ne[2]",
		                                                     "ne[3]"};
		uint64_t v = 0;
		at = c->pos;
		err = read_u64(c, &v, field[d]);
		if (err != MOE_OK)
			return err;
		if (v > INT64_MAX)
			return moe_fail(MOE_ERR_BAD_SHAPE,
			                "%s: ne[%u] at offset %zu is negative (%lld)", c->where, d,
			                at, (long long)v);
		t->ne[d] = (int64_t)v;
		if (t->ne[d] != 0 && nel > INT64_MAX / t->ne[d])
			return moe_fail(MOE_ERR_OVERFLOW,
			                "%s: ne[%u] = %lld at offset %zu: element count overflows",
			                c->where, d, (long long)t->ne[d], at);
		nel *= t->ne[d];
	}
	t->n_elements = nel;
	at = c->pos;
	err = read_u32(c, &type, "type");
	if (err != MOE_OK)
		return err;
	tr = moe_type_get((moe_type)type);
	if (tr == NULL)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s: tensor type %u at offset %zu unknown",
		                c->where, type, at);
	t->type = (moe_type)type;
	if (t->ne[0] % tr->block_size != 0)
		return moe_fail(
		    MOE_ERR_BAD_SHAPE,
		    "%s: ne[0] = %lld at offset %zu is not a multiple of the %s block size %lld",
		    c->where, (long long)t->ne[0], ne0_at, tr->name, (long long)tr->block_size);
	/* blocks * type_size: blocks < 2^63 and type_size is small, but check */
	uint64_t blocks = (uint64_t)(nel / tr->block_size);
	if (tr->type_size != 0 && blocks > UINT64_MAX / tr->type_size)
		return moe_fail(MOE_ERR_OVERFLOW, "%s: byte size of %lld elements overflows",
		                c->where, (long long)nel);
	t->size = blocks * tr->type_size;
	return read_u64(c, &t->offset, "offset");
}

struct span {
	uint64_t start;
	int64_t idx;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int name_len(const moe_gguf_tensor *t)
{
	return (int)(t->name.len > 96 ? 96 : t->name.len);
}

/* Every tensor aligned, inside the file, and no two overlapping. Ranges are
 * checked in offset order, so a cut file reports its first missing tensor. */
static moe_err check_tensor_ranges(moe_gguf *g)
{
	struct span *sp;
	const moe_gguf_tensor *prev = NULL;
	moe_err err = MOE_OK;

	for (int64_t i = 0; i < g->n_tensors; i++) {
		const moe_gguf_tensor *t = &g->tensors[i];
		if (t->offset % g->alignment != 0)
			return moe_fail(MOE_ERR_BAD_ALIGNMENT,
			                "tensor %lld (%.*s): offset %llu (in the data section at "
			                "offset %llu) is not a multiple of the alignment %u",
			                (long long)i, name_len(t), t->name.ptr,
			                (unsigned long long)t->offset,
			                (unsigned long long)g->data_offset, g->alignment);
	}
	sp = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof(*sp));
	if (sp == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tensor range table");
	for (int64_t i = 0; i < g->n_tensors; i++) {
		sp[i].start = g->tensors[i].offset;
		sp[i].idx = i;
	}
	qsort(sp, (size_t)g->n_tensors, sizeof(*sp), span_cmp);
	for (int64_t k = 0; k < g->n_tensors; k++) {
		moe_gguf_tensor *t = &g->tensors[sp[k].idx];
		if (t->offset > g->size) {
			err = moe_fail(MOE_ERR_BAD_OFFSET,
			               "tensor %lld (%.*s): offset %llu lies beyond the file "
			               "(%zu bytes)",
			               (long long)sp[k].idx, name_len(t), t->name.ptr,
			               (unsigned long long)t->offset, g->size);
			goto out_free_sp;
		}
		/* data_offset < size + alignment and offset <= size: no overflow */
		uint64_t start = g->data_offset + t->offset;
		if (t->size > g->size || start + t->size > g->size) {
			err = moe_fail(
			    MOE_ERR_TRUNCATED,
			    "tensor %lld (%.*s): %llu bytes of data at offset %llu: file "
			    "ends at %zu",
			    (long long)sp[k].idx, name_len(t), t->name.ptr,
			    (unsigned long long)t->size, (unsigned long long)start, g->size);
			goto out_free_sp;
		}
		t->data = g->base + start;
		if (prev != NULL && t->offset < prev->offset + prev->size) {
			err = moe_fail(
			    MOE_ERR_BAD_OFFSET,
			    "tensor %lld (%.*s) data at offset %llu overlaps tensor %lld "
			    "(%.*s) data at offset %llu, %llu bytes",
			    (long long)sp[k].idx, name_len(t), t->name.ptr,
			    (unsigned long long)start, (long long)sp[k - 1].idx, name_len(prev),
			    prev->name.ptr, (unsigned long long)(g->data_offset + prev->offset),
			    (unsigned long long)prev->size);
			goto out_free_sp;
		}
		prev = t;
	}

out_free_sp:
	free(sp);
	return err;
}

moe_err gguf_build_tensor_hash(moe_gguf *g)
{
	g->tensor_cap = hash_cap(g->n_tensors);
	g->tensor_hash = calloc(g->tensor_cap, sizeof(int64_t));
	if (g->tensor_hash == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tensor index of %zu slots", g->tensor_cap);
	for (int64_t i = 0; i < g->n_tensors; i++) {
		const moe_gguf_tensor *t = &g->tensors[i];
		size_t h = gguf_hash(t->name.ptr, t->name.len) & (g->tensor_cap - 1);
		for (; g->tensor_hash[h] != 0; h = (h + 1) & (g->tensor_cap - 1)) {
			const moe_gguf_tensor *o = &g->tensors[g->tensor_hash[h] - 1];
			if (!str_eq(o->name, t->name.ptr, t->name.len))
				continue;
			if (t->split != 0 || o->split != 0)
				return moe_fail(MOE_ERR_DUPLICATE,
				                "tensor %.*s is in split %u and in split %u",
				                (int)(t->name.len > 96 ? 96 : t->name.len),
				                t->name.ptr, o->split + 1, t->split + 1);
			return moe_fail(MOE_ERR_DUPLICATE,
			                "tensor info %lld (%.*s) at offset %zu: duplicate of "
			                "tensor info %lld",
			                (long long)i, (int)(t->name.len > 96 ? 96 : t->name.len),
			                t->name.ptr,
			                (size_t)((const uint8_t *)t->name.ptr - g->base) - 8,
			                (long long)(g->tensor_hash[h] - 1));
		}
		g->tensor_hash[h] = i + 1;
	}
	return MOE_OK;
}

/* ---- the whole file ------------------------------------------------------------- */

/* The kvs and tensor infos that follow the header need at least
 * n_kv * KV_MIN + n_tensors * TI_MIN bytes. */
#define KV_MIN (8 + 4 + 1)     /* key length, type, a one-byte value */
#define TI_MIN (8 + 4 + 4 + 8) /* name length, n_dims, type, offset */

static moe_err check_header_counts(const struct cur *c, uint64_t n_tensors, uint64_t n_kv)
{
	uint64_t need;

	if (n_tensors > c->size / TI_MIN)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "n_tensors = %llu at offset 8: needs at least %d bytes each, the "
		                "whole file has %zu",
		                (unsigned long long)n_tensors, TI_MIN, c->size);
	if (n_kv > c->size / KV_MIN)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "n_kv = %llu at offset 16: needs at least %d bytes each, the whole "
		                "file has %zu",
		                (unsigned long long)n_kv, KV_MIN, c->size);
	need = n_tensors * TI_MIN + n_kv * KV_MIN; /* both terms <= size */
	if (need > c->size)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "n_tensors = %llu and n_kv = %llu at offset 8: need at least %llu "
		                "bytes, the whole file has %zu",
		                (unsigned long long)n_tensors, (unsigned long long)n_kv,
		                (unsigned long long)need, c->size);
	if (need > left(c))
		return moe_fail(MOE_ERR_TRUNCATED,
		                "n_tensors = %llu and n_kv = %llu at offset 8: need at least %llu "
		                "bytes after offset %zu, file ends at %zu",
		                (unsigned long long)n_tensors, (unsigned long long)n_kv,
		                (unsigned long long)need, c->pos, c->size);
	return MOE_OK;
}

static moe_err parse_header(moe_gguf *g, struct cur *c, uint64_t *n_tensors, uint64_t *n_kv)
{
	moe_err err;

	if (c->size < 4)
		return truncated(c, "magic", 4);
	if (memcmp(c->base, "GGUF", 4) != 0)
		return moe_fail(MOE_ERR_BAD_MAGIC,
		                "magic at offset 0 is %02x %02x %02x %02x, not \"GGUF\"",
		                c->base[0], c->base[1], c->base[2], c->base[3]);
	c->pos = 4;
	err = read_u32(c, &g->version, "version");
	if (err != MOE_OK)
		return err;
	if (g->version == 1)
		return moe_fail(
		    MOE_ERR_BAD_VERSION,
		    "version at offset 4 is 1: GGUF v1 (32-bit counts) is not supported");
	if (g->version != 2 && g->version != 3) {
		if (g->version == 0x02000000u || g->version == 0x03000000u)
			return moe_fail(MOE_ERR_BAD_VERSION,
			                "version at offset 4 is 0x%08x: a big-endian GGUF",
			                g->version);
		return moe_fail(MOE_ERR_BAD_VERSION,
		                "version at offset 4 is %u: only versions 2 and 3 are known",
		                g->version);
	}
	err = read_u64(c, n_tensors, "n_tensors");
	if (err != MOE_OK)
		return err;
	err = read_u64(c, n_kv, "n_kv");
	if (err != MOE_OK)
		return err;
	return check_header_counts(c, *n_tensors, *n_kv);
}

static moe_err parse_kvs(moe_gguf *g, struct cur *c, uint64_t n_kv)
{
	moe_err err;
	size_t cap = n_kv < 64 ? (size_t)n_kv : 64;

	g->kvs = calloc(cap ? cap : 1, sizeof(struct kv));
	if (g->kvs == NULL)
		return moe_fail(MOE_ERR_NOMEM, "kv table");
	for (uint64_t i = 0; i < n_kv; i++) {
		if ((size_t)i == cap) {
			struct kv *p = realloc(g->kvs, cap * 2 * sizeof(struct kv));
			if (p == NULL)
				return moe_fail(MOE_ERR_NOMEM, "kv table of %zu", cap * 2);
			g->kvs = p;
			cap *= 2;
		}
		err = parse_kv(g, c, &g->kvs[i], (int64_t)i);
		if (err != MOE_OK)
			return err;
		g->n_kv = (int64_t)i + 1;
	}
	c->where[0] = '\0';
	err = build_key_hash(g);
	if (err != MOE_OK)
		return err;
	int64_t ai = key_lookup(g, "general.alignment", strlen("general.alignment"));
	g->alignment = MOE_GGUF_DEFAULT_ALIGNMENT;
	if (ai >= 0) {
		const struct kv *kv = &g->kvs[ai];
		if (kv->type != MOE_GGUF_UINT32)
			return moe_fail(
			    MOE_ERR_BAD_TYPE,
			    "kv %lld (general.alignment) at offset %llu: type %s, must be "
			    "UINT32",
			    (long long)ai, (unsigned long long)kv->off,
			    moe_gguf_vtype_name(kv->type));
		uint32_t a = le32(kv->val);
		if (a == 0 || (a & (a - 1)) != 0)
			return moe_fail(MOE_ERR_BAD_ALIGNMENT,
			                "kv %lld (general.alignment) at offset %zu: %u is not a "
			                "power of two",
			                (long long)ai, (size_t)(kv->val - g->base), a);
		g->alignment = a;
	}
	return MOE_OK;
}

static moe_err parse_tensors(moe_gguf *g, struct cur *c, uint64_t n_tensors)
{
	moe_err err;
	size_t cap = n_tensors < 64 ? (size_t)n_tensors : 64;

	g->tensors = calloc(cap ? cap : 1, sizeof(moe_gguf_tensor));
	if (g->tensors == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tensor table");
	for (uint64_t i = 0; i < n_tensors; i++) {
		if ((size_t)i == cap) {
			moe_gguf_tensor *p = realloc(g->tensors, cap * 2 * sizeof(moe_gguf_tensor));
			if (p == NULL)
				return moe_fail(MOE_ERR_NOMEM, "tensor table of %zu", cap * 2);
			g->tensors = p;
			cap *= 2;
		}
		err = parse_tensor_info(c, &g->tensors[i], (int64_t)i);
		if (err != MOE_OK)
			return err;
		g->n_tensors = (int64_t)i + 1;
	}
	c->where[0] = '\0';
	/* pos <= size, alignment <= 2^31: no overflow */
	g->data_offset = ((uint64_t)c->pos + g->alignment - 1) / g->alignment * g->alignment;
	err = gguf_build_tensor_hash(g);
	if (err != MOE_OK)
		return err;
	return check_tensor_ranges(g);
}

static moe_err parse(moe_gguf *g)
{
	struct cur c = {.base = g->base, .size = g->size, .pos = 0, .where = ""};
	uint64_t n_tensors, n_kv;
	moe_err err;

	err = parse_header(g, &c, &n_tensors, &n_kv);
	if (err != MOE_OK)
		return err;
	err = parse_kvs(g, &c, n_kv);
	if (err != MOE_OK)
		return err;
	return parse_tensors(g, &c, n_tensors);
}

static void free_tables(moe_gguf *g)
{
	free(g->kvs);
	free(g->tensors);
	free(g->pool);
	free(g->key_hash);
	free(g->tensor_hash);
}

moe_err moe_gguf_open_mem(moe_gguf **out, const void *data, size_t size)
{
	moe_gguf *g;
	moe_err err;

	if (out == NULL || (data == NULL && size != 0))
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_open_mem: NULL argument");
	g = calloc(1, sizeof(*g));
	if (g == NULL)
		return moe_fail(MOE_ERR_NOMEM, "moe_gguf");
	g->base = data;
	g->size = size;
	err = parse(g);
	if (err != MOE_OK)
		goto out_free_g;
	*out = g;
	return MOE_OK;

out_free_g:
	free_tables(g);
	free(g);
	return err;
}

/* moe_gguf_open for one file, splits not followed. */
static moe_err open_file(moe_gguf **out, const char *path)
{
	struct stat st;
	void *map = NULL;
	moe_gguf *g = NULL;
	moe_err err;
	int fd;

	if (out == NULL || path == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_open: NULL argument");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return moe_fail(MOE_ERR_IO, "open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0) {
		err = moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno));
		goto out_close_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		err = moe_fail(MOE_ERR_IO, "%s: not a regular file", path);
		goto out_close_fd;
	}
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			err = moe_fail(MOE_ERR_IO, "mmap %s: %s", path, strerror(errno));
			goto out_close_fd;
		}
	}
	err = moe_gguf_open_mem(&g, map, (size_t)st.st_size);
	if (err != MOE_OK)
		goto out_unmap;
	g->map = map;
	close(fd);
	g->path = strdup(path);
	if (g->path == NULL) {
		moe_gguf_close(g);
		return moe_fail(MOE_ERR_NOMEM, "path of %s", path);
	}
	*out = g;
	return MOE_OK;

out_unmap:
	if (map != NULL)
		munmap(map, (size_t)st.st_size);
out_close_fd:
	close(fd);
	return err;
}

moe_err moe_gguf_open(moe_gguf **out, const char *path)
{
	moe_gguf *g = NULL;
	moe_err err;

	if (out == NULL || path == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_open: NULL argument");
	if ((err = open_file(&g, path)) != MOE_OK)
		return err;
	if ((err = gguf_open_splits(g, open_file)) != MOE_OK) {
		moe_gguf_close(g);
		return err;
	}
	*out = g;
	return MOE_OK;
}

void moe_gguf_close(moe_gguf *g)
{
	if (g == NULL)
		return;
	for (int i = 1; i < g->n_splits; i++)
		moe_gguf_close(g->splits[i]);
	free(g->splits);
	if (g->map != NULL)
		munmap(g->map, g->size);
	free(g->path);
	free_tables(g);
	free(g);
}

/* ---- accessors ------------------------------------------------------------------ */

uint32_t moe_gguf_version(const moe_gguf *g)
{
	return g->version;
}

uint32_t moe_gguf_alignment(const moe_gguf *g)
{
	return g->alignment;
}

uint64_t moe_gguf_data_offset(const moe_gguf *g)
{
	return g->data_offset;
}

const void *moe_gguf_base(const moe_gguf *g)
{
	return g->base;
}

size_t moe_gguf_file_size(const moe_gguf *g)
{
	return g->size;
}

const char *moe_gguf_path(const moe_gguf *g)
{
	return g->path;
}

int moe_gguf_n_splits(const moe_gguf *g)
{
	return g->n_splits > 1 ? g->n_splits : 1;
}

const moe_gguf *moe_gguf_split(const moe_gguf *g, int i)
{
	if (i == 0)
		return g;
	return i > 0 && i < g->n_splits ? g->splits[i] : NULL;
}

int64_t moe_gguf_n_kv(const moe_gguf *g)
{
	return g->n_kv;
}

moe_gguf_str moe_gguf_kv_key(const moe_gguf *g, int64_t i)
{
	if (i < 0 || i >= g->n_kv)
		return (moe_gguf_str){NULL, 0};
	return g->kvs[i].key;
}

moe_gguf_vtype moe_gguf_kv_type(const moe_gguf *g, int64_t i)
{
	if (i < 0 || i >= g->n_kv)
		return MOE_GGUF_VTYPE_COUNT;
	return g->kvs[i].type;
}

int64_t moe_gguf_find_key(const moe_gguf *g, const char *key)
{
	return key_lookup(g, key, strlen(key));
}

/* Reads scalar p of type t widened: signed types into *i, unsigned and bool
 * into *u, floats into *f; returns which (0 int, 1 uint, 2 float, -1 none). */
static int scalar_value(const uint8_t *p, moe_gguf_vtype t, int64_t *i, uint64_t *u, double *f)
{
	union {
		uint32_t u;
		float f;
	} c32;
	union {
		uint64_t u;
		double f;
	} c64;

	switch (t) {
	case MOE_GGUF_UINT8:
	case MOE_GGUF_BOOL:
		*u = p[0];
		return 1;
	case MOE_GGUF_INT8:
		*i = (int8_t)p[0];
		return 0;
	case MOE_GGUF_UINT16:
		*u = le16(p);
		return 1;
	case MOE_GGUF_INT16:
		*i = (int16_t)le16(p);
		return 0;
	case MOE_GGUF_UINT32:
		*u = le32(p);
		return 1;
	case MOE_GGUF_INT32:
		*i = (int32_t)le32(p);
		return 0;
	case MOE_GGUF_UINT64:
		*u = le64(p);
		return 1;
	case MOE_GGUF_INT64:
		*i = (int64_t)le64(p);
		return 0;
	case MOE_GGUF_FLOAT32:
		c32.u = le32(p);
		*f = c32.f;
		return 2;
	case MOE_GGUF_FLOAT64:
		c64.u = le64(p);
		*f = c64.f;
		return 2;
	default:
		return -1;
	}
}

static moe_err find_kv(const struct kv **out, const moe_gguf *g, const char *key)
{
	int64_t i = moe_gguf_find_key(g, key);

	if (i < 0)
		return moe_fail(MOE_ERR_NOT_FOUND, "key %s: not in the file", key);
	*out = &g->kvs[i];
	return MOE_OK;
}

/* An integer kv as a sign flag and magnitude-carrying pair. */
static moe_err get_int(int64_t *si, uint64_t *ui, int *kind, const moe_gguf *g, const char *key)
{
	const struct kv *kv = NULL;
	double f;
	moe_err err = find_kv(&kv, g, key);

	if (err != MOE_OK)
		return err;
	if (kv->type == MOE_GGUF_BOOL || gguf_scalar_size(kv->type) == 0 ||
	    kv->type == MOE_GGUF_FLOAT32 || kv->type == MOE_GGUF_FLOAT64)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: type %s, not an integer", key,
		                moe_gguf_vtype_name(kv->type));
	*kind = scalar_value(kv->val, kv->type, si, ui, &f);
	return MOE_OK;
}

moe_err moe_gguf_get_u64(uint64_t *out, const moe_gguf *g, const char *key)
{
	int64_t si = 0;
	uint64_t ui = 0;
	int kind = 0;
	moe_err err = get_int(&si, &ui, &kind, g, key);

	if (err != MOE_OK)
		return err;
	if (kind == 0) {
		if (si < 0)
			return moe_fail(MOE_ERR_BAD_VALUE, "key %s: %lld does not fit UINT64", key,
			                (long long)si);
		ui = (uint64_t)si;
	}
	*out = ui;
	return MOE_OK;
}

moe_err moe_gguf_get_u32(uint32_t *out, const moe_gguf *g, const char *key)
{
	uint64_t v = 0;
	moe_err err = moe_gguf_get_u64(&v, g, key);

	if (err != MOE_OK)
		return err;
	if (v > UINT32_MAX)
		return moe_fail(MOE_ERR_BAD_VALUE, "key %s: %llu does not fit UINT32", key,
		                (unsigned long long)v);
	*out = (uint32_t)v;
	return MOE_OK;
}

moe_err moe_gguf_get_i64(int64_t *out, const moe_gguf *g, const char *key)
{
	int64_t si = 0;
	uint64_t ui = 0;
	int kind = 0;
	moe_err err = get_int(&si, &ui, &kind, g, key);

	if (err != MOE_OK)
		return err;
	if (kind == 1) {
		if (ui > INT64_MAX)
			return moe_fail(MOE_ERR_BAD_VALUE, "key %s: %llu does not fit INT64", key,
			                (unsigned long long)ui);
		si = (int64_t)ui;
	}
	*out = si;
	return MOE_OK;
}

moe_err moe_gguf_get_f32(float *out, const moe_gguf *g, const char *key)
{
	const struct kv *kv = NULL;
	int64_t si;
	uint64_t ui;
	double f;
	moe_err err = find_kv(&kv, g, key);

	if (err != MOE_OK)
		return err;
	if (kv->type != MOE_GGUF_FLOAT32 && kv->type != MOE_GGUF_FLOAT64)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: type %s, not a float", key,
		                moe_gguf_vtype_name(kv->type));
	scalar_value(kv->val, kv->type, &si, &ui, &f);
	*out = (float)f;
	return MOE_OK;
}

moe_err moe_gguf_get_bool(bool *out, const moe_gguf *g, const char *key)
{
	const struct kv *kv = NULL;
	moe_err err = find_kv(&kv, g, key);

	if (err != MOE_OK)
		return err;
	if (kv->type != MOE_GGUF_BOOL)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: type %s, not BOOL", key,
		                moe_gguf_vtype_name(kv->type));
	*out = kv->val[0] != 0;
	return MOE_OK;
}

moe_err moe_gguf_get_str(moe_gguf_str *out, const moe_gguf *g, const char *key)
{
	const struct kv *kv = NULL;
	moe_err err = find_kv(&kv, g, key);

	if (err != MOE_OK)
		return err;
	if (kv->type != MOE_GGUF_STRING)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: type %s, not STRING", key,
		                moe_gguf_vtype_name(kv->type));
	out->len = le64(kv->val);
	out->ptr = (const char *)kv->val + 8;
	return MOE_OK;
}

bool moe_gguf_kv_as_double(double *out, const moe_gguf *g, int64_t i)
{
	int64_t si;
	uint64_t ui;
	double f;

	if (i < 0 || i >= g->n_kv)
		return false;
	switch (scalar_value(g->kvs[i].val, g->kvs[i].type, &si, &ui, &f)) {
	case 0:
		*out = (double)si;
		return true;
	case 1:
		*out = (double)ui;
		return true;
	case 2:
		*out = f;
		return true;
	default:
		return false;
	}
}

moe_err moe_gguf_kv_arr(moe_gguf_arr *out, const moe_gguf *g, int64_t i)
{
	const struct kv *kv;

	if (i < 0 || i >= g->n_kv)
		return moe_fail(MOE_ERR_INVAL, "kv index %lld out of range", (long long)i);
	kv = &g->kvs[i];
	if (kv->type != MOE_GGUF_ARRAY)
		return moe_fail(MOE_ERR_BAD_TYPE, "kv %lld (%.*s): type %s, not ARRAY",
		                (long long)i, (int)(kv->key.len > 96 ? 96 : kv->key.len),
		                kv->key.ptr, moe_gguf_vtype_name(kv->type));
	out->type = kv->arr_type;
	out->n = kv->arr_n;
	out->data = kv->val;
	out->g = g;
	out->idx = kv->arr_idx == GGUF_NO_IDX ? NULL : g->pool + kv->arr_idx;
	return MOE_OK;
}

moe_err moe_gguf_get_arr(moe_gguf_arr *out, const moe_gguf *g, const char *key)
{
	int64_t i = moe_gguf_find_key(g, key);

	if (i < 0)
		return moe_fail(MOE_ERR_NOT_FOUND, "key %s: not in the file", key);
	return moe_gguf_kv_arr(out, g, i);
}

moe_gguf_str moe_gguf_arr_str(const moe_gguf_arr *a, uint64_t j)
{
	const uint8_t *p;

	if (a->type != MOE_GGUF_STRING || j >= a->n || a->idx == NULL)
		return (moe_gguf_str){NULL, 0};
	p = a->g->base + a->idx[j];
	return (moe_gguf_str){(const char *)p + 8, le64(p)};
}

int64_t moe_gguf_arr_int(const moe_gguf_arr *a, uint64_t j)
{
	int64_t si = 0;
	uint64_t ui = 0;
	double f;
	size_t esz = gguf_scalar_size(a->type);

	if (j >= a->n || esz == 0)
		return 0;
	switch (scalar_value(a->data + j * esz, a->type, &si, &ui, &f)) {
	case 0:
		return si;
	case 1:
		return (int64_t)ui;
	default:
		return 0;
	}
}

double moe_gguf_arr_float(const moe_gguf_arr *a, uint64_t j)
{
	int64_t si = 0;
	uint64_t ui = 0;
	double f = 0.0;
	size_t esz = gguf_scalar_size(a->type);

	if (j >= a->n || esz == 0)
		return 0.0;
	switch (scalar_value(a->data + j * esz, a->type, &si, &ui, &f)) {
	case 0:
		return (double)si;
	case 1:
		return (double)ui;
	default:
		return f;
	}
}

moe_gguf_arr moe_gguf_arr_sub(const moe_gguf_arr *a, uint64_t j)
{
	moe_gguf_arr s = {.type = MOE_GGUF_UINT8, .n = 0, .data = NULL, .g = a->g, .idx = NULL};
	const uint8_t *p;
	uint64_t sidx;

	if (a->type != MOE_GGUF_ARRAY || j >= a->n || a->idx == NULL)
		return s;
	p = a->g->base + a->idx[2 * j];
	sidx = a->idx[2 * j + 1];
	s.type = (moe_gguf_vtype)le32(p);
	s.n = le64(p + 4);
	s.data = p + 12;
	s.idx = sidx == GGUF_NO_IDX ? NULL : a->g->pool + sidx;
	return s;
}

int64_t moe_gguf_n_tensors(const moe_gguf *g)
{
	return g->n_tensors;
}

const moe_gguf_tensor *moe_gguf_tensor_at(const moe_gguf *g, int64_t i)
{
	if (i < 0 || i >= g->n_tensors)
		return NULL;
	return &g->tensors[i];
}

const moe_gguf_tensor *moe_gguf_find_tensor(const moe_gguf *g, const char *name)
{
	int64_t i = tensor_lookup(g, name, strlen(name));

	return i < 0 ? NULL : &g->tensors[i];
}

moe_err moe_gguf_kv_value(moe_gguf_value *out, const moe_gguf *g, int64_t i)
{
	const struct kv *kv;
	int64_t si = 0;
	uint64_t ui = 0;
	double f = 0.0;

	if (i < 0 || i >= g->n_kv)
		return moe_fail(MOE_ERR_INVAL, "kv index %lld out of range", (long long)i);
	kv = &g->kvs[i];
	out->type = kv->type;
	switch (kv->type) {
	case MOE_GGUF_ARRAY:
		return moe_fail(MOE_ERR_BAD_TYPE, "kv %lld (%.*s): an ARRAY (use moe_gguf_kv_arr)",
		                (long long)i, (int)(kv->key.len > 96 ? 96 : kv->key.len),
		                kv->key.ptr);
	case MOE_GGUF_STRING:
		out->s.len = le64(kv->val);
		out->s.ptr = (const char *)kv->val + 8;
		return MOE_OK;
	case MOE_GGUF_BOOL:
		out->b = kv->val[0] != 0;
		return MOE_OK;
	default:
		break;
	}
	switch (scalar_value(kv->val, kv->type, &si, &ui, &f)) {
	case 0:
		out->i = si;
		break;
	case 1:
		out->u = ui;
		break;
	default:
		out->f = f;
		break;
	}
	return MOE_OK;
}
