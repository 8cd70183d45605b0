/*
 * gguf_write.c - the streamed GGUF v3 writer.  Metadata is encoded into a
 * buffer as it is added and tensor infos are kept in a table; begin_data
 * writes header, metadata, tensor infos and the padding up to the data
 * section; tensor bytes are then streamed to the file, each tensor followed by
 * zero padding to the alignment.  This is the layout of llama.cpp's writers
 * (gguf-py's GGUFWriter and gguf.cpp), so a file read and written back comes
 * out byte for byte the same.
 */
#include "model/gguf.h"
#include "model/gguf_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct wtensor {
	char *name;
	moe_type type;
	uint32_t n_dims;
	int64_t ne[MOE_GGUF_MAX_DIMS];
	uint64_t size;   /* bytes */
	uint64_t offset; /* in the data section; set by begin_data */
};

/* A set of NUL-terminated names (open addressing); the strings belong to the
 * caller of set_add. */
struct nameset {
	const char **slot; /* [cap] */
	size_t cap;
	size_t n;
};

enum wstate {
	W_ADDING, /* taking metadata and tensor infos */
	W_DATA,   /* streaming tensor bytes */
	W_DONE,   /* finished: the file is complete */
	W_FAILED, /* an I/O error: only destroy remains */
};

struct moe_gguf_writer {
	char *path;
	FILE *f;
	enum wstate state;
	uint32_t alignment;

	uint8_t *kv; /* [kv_len] encoded metadata */
	size_t kv_len;
	size_t kv_cap;
	uint64_t n_kv;
	char **keys; /* [n_kv] owned copies, referenced by key_set */
	size_t keys_cap;
	struct nameset key_set;

	struct wtensor *tensors; /* [n_tensors] */
	size_t n_tensors;
	size_t tensors_cap;
	struct nameset tensor_set;

	size_t cur;           /* tensor being written */
	uint64_t cur_written; /* its bytes so far */
};

static const uint8_t zeros[4096];

static bool set_has(const struct nameset *s, const char *name)
{
	if (s->cap == 0)
		return false;
	for (size_t h = gguf_hash(name, strlen(name)) & (s->cap - 1); s->slot[h] != NULL;
	     h = (h + 1) & (s->cap - 1))
		if (strcmp(s->slot[h], name) == 0)
			return true;
	return false;
}

static void set_place(const char **slot, size_t cap, const char *name)
{
	size_t h = gguf_hash(name, strlen(name)) & (cap - 1);

	while (slot[h] != NULL)
		h = (h + 1) & (cap - 1);
	slot[h] = name;
}

/* Adds name (not already present); keeps the load factor under 1/2. */
static moe_err set_add(struct nameset *s, const char *name)
{
	if ((s->n + 1) * 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		const char **slot = calloc(cap, sizeof(*slot));
		if (slot == NULL)
			return moe_fail(MOE_ERR_NOMEM, "name set of %zu slots", cap);
		for (size_t i = 0; i < s->cap; i++)
			if (s->slot[i] != NULL)
				set_place(slot, cap, s->slot[i]);
		free(s->slot);
		s->slot = slot;
		s->cap = cap;
	}
	set_place(s->slot, s->cap, name);
	s->n++;
	return MOE_OK;
}

/* ---- the metadata buffer ------------------------------------------------------ */

static moe_err buf_put(moe_gguf_writer *w, const void *p, size_t n)
{
	if (n > SIZE_MAX - w->kv_len)
		return moe_fail(MOE_ERR_OVERFLOW, "metadata larger than memory");
	if (w->kv_len + n > w->kv_cap) {
		size_t cap = w->kv_cap ? w->kv_cap : 4096;
		while (cap < w->kv_len + n)
			cap = cap > SIZE_MAX / 2 ? w->kv_len + n : cap * 2;
		uint8_t *b = realloc(w->kv, cap);
		if (b == NULL)
			return moe_fail(MOE_ERR_NOMEM, "metadata buffer of %zu bytes", cap);
		w->kv = b;
		w->kv_cap = cap;
	}
	if (n != 0)
		memcpy(w->kv + w->kv_len, p, n);
	w->kv_len += n;
	return MOE_OK;
}

/* Little-endian encoding of the low `bytes` bytes of v. */
static moe_err buf_le(moe_gguf_writer *w, uint64_t v, size_t bytes)
{
	uint8_t b[8];

	if (bytes > sizeof b)
		return moe_fail(MOE_ERR_INVAL, "a %zu-byte integer", bytes);
	/* all 8 bytes, the first `bytes` of them used: a loop bounded by bytes
	 * made gcc's -Wstringop-overflow see a write past b under the
	 * sanitizers at -O2 */
	for (size_t i = 0; i < sizeof b; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	return buf_put(w, b, bytes);
}

static moe_err buf_str(moe_gguf_writer *w, const char *p, uint64_t len)
{
	moe_err err;

	if (p == NULL && len != 0)
		return moe_fail(MOE_ERR_INVAL, "string of length %llu with a NULL pointer",
		                (unsigned long long)len);
	if (len > SIZE_MAX)
		return moe_fail(MOE_ERR_OVERFLOW, "string of length %llu", (unsigned long long)len);
	err = buf_le(w, len, 8);
	if (err != MOE_OK)
		return err;
	return buf_put(w, p, (size_t)len);
}

/* Encodes one scalar held in a moe_gguf_value, checking its range. */
static moe_err put_scalar(moe_gguf_writer *w, const moe_gguf_value *v, const char *key)
{
	size_t sz = gguf_scalar_size(v->type);
	union {
		float f;
		uint32_t u;
	} c32;
	union {
		double f;
		uint64_t u;
	} c64;

	switch (v->type) {
	case MOE_GGUF_UINT8:
	case MOE_GGUF_UINT16:
	case MOE_GGUF_UINT32:
		if (v->u >> (8 * sz) != 0)
			return moe_fail(MOE_ERR_BAD_VALUE, "key %s: %llu does not fit %s", key,
			                (unsigned long long)v->u, moe_gguf_vtype_name(v->type));
		return buf_le(w, v->u, sz);
	case MOE_GGUF_UINT64:
		return buf_le(w, v->u, 8);
	case MOE_GGUF_INT8:
	case MOE_GGUF_INT16:
	case MOE_GGUF_INT32: {
		int64_t lim = (int64_t)1 << (8 * sz - 1);
		if (v->i < -lim || v->i >= lim)
			return moe_fail(MOE_ERR_BAD_VALUE, "key %s: %lld does not fit %s", key,
			                (long long)v->i, moe_gguf_vtype_name(v->type));
		return buf_le(w, (uint64_t)v->i, sz);
	}
	case MOE_GGUF_INT64:
		return buf_le(w, (uint64_t)v->i, 8);
	case MOE_GGUF_FLOAT32:
		c32.f = (float)v->f;
		return buf_le(w, c32.u, 4);
	case MOE_GGUF_FLOAT64:
		c64.f = v->f;
		return buf_le(w, c64.u, 8);
	case MOE_GGUF_BOOL:
		return buf_le(w, v->b ? 1 : 0, 1);
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: value type %d unknown", key,
		                (int)v->type);
	}
}

/* Encodes n packed host scalars of type t as little-endian. */
static moe_err put_packed(moe_gguf_writer *w, moe_gguf_vtype t, const uint8_t *p, uint64_t n,
                          const char *key)
{
	size_t sz = gguf_scalar_size(t);
	moe_err err = MOE_OK;

	for (uint64_t j = 0; j < n && err == MOE_OK; j++, p += sz) {
		uint8_t u8;
		uint16_t u16;
		uint32_t u32;
		uint64_t u64;
		switch (sz) {
		case 1:
			u8 = p[0];
			if (t == MOE_GGUF_BOOL && u8 > 1)
				return moe_fail(MOE_ERR_BAD_VALUE,
				                "key %s: BOOL element %llu is %u (must be 0 or 1)",
				                key, (unsigned long long)j, u8);
			err = buf_le(w, u8, 1);
			break;
		case 2:
			memcpy(&u16, p, 2);
			err = buf_le(w, u16, 2);
			break;
		case 4:
			memcpy(&u32, p, 4);
			err = buf_le(w, u32, 4);
			break;
		default:
			memcpy(&u64, p, 8);
			err = buf_le(w, u64, 8);
			break;
		}
	}
	return err;
}

/* The payload of a value (no type tag): scalar, string or array. */
static moe_err put_value(moe_gguf_writer *w, const moe_gguf_value *v, const char *key, int depth)
{
	moe_err err;

	if (v->type == MOE_GGUF_STRING)
		return buf_str(w, v->s.ptr, v->s.len);
	if (v->type != MOE_GGUF_ARRAY)
		return put_scalar(w, v, key);
	if (depth > GGUF_MAX_DEPTH)
		return moe_fail(MOE_ERR_UNSUPPORTED, "key %s: arrays nested deeper than %d", key,
		                GGUF_MAX_DEPTH);
	if ((unsigned)v->arr.type >= MOE_GGUF_VTYPE_COUNT)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: array element type %d unknown", key,
		                (int)v->arr.type);
	if (v->arr.data == NULL && v->arr.n != 0)
		return moe_fail(MOE_ERR_INVAL, "key %s: array of %llu with NULL data", key,
		                (unsigned long long)v->arr.n);
	err = buf_le(w, (uint64_t)v->arr.type, 4);
	if (err == MOE_OK)
		err = buf_le(w, v->arr.n, 8);
	if (err != MOE_OK)
		return err;
	if (v->arr.type == MOE_GGUF_STRING) {
		const moe_gguf_str *s = v->arr.data;
		for (uint64_t j = 0; j < v->arr.n && err == MOE_OK; j++)
			err = buf_str(w, s[j].ptr, s[j].len);
		return err;
	}
	if (v->arr.type == MOE_GGUF_ARRAY) {
		const moe_gguf_value *e = v->arr.data;
		for (uint64_t j = 0; j < v->arr.n && err == MOE_OK; j++) {
			if (e[j].type != MOE_GGUF_ARRAY)
				return moe_fail(
				    MOE_ERR_INVAL,
				    "key %s: element %llu of an array of arrays has type %s", key,
				    (unsigned long long)j, moe_gguf_vtype_name(e[j].type));
			err = put_value(w, &e[j], key, depth + 1);
		}
		return err;
	}
	return put_packed(w, v->arr.type, v->arr.data, v->arr.n, key);
}

/* Encodes a reader's array exactly (header and elements). */
static moe_err put_reader_arr(moe_gguf_writer *w, const moe_gguf_arr *a, const char *key)
{
	size_t sz = gguf_scalar_size(a->type);
	moe_err err = buf_le(w, (uint64_t)a->type, 4);

	if (err == MOE_OK)
		err = buf_le(w, a->n, 8);
	if (err != MOE_OK)
		return err;
	if (sz != 0) /* file encoding in, file encoding out */
		return buf_put(w, a->data, (size_t)a->n * sz);
	for (uint64_t j = 0; j < a->n && err == MOE_OK; j++) {
		if (a->type == MOE_GGUF_STRING) {
			moe_gguf_str s = moe_gguf_arr_str(a, j);
			err = buf_str(w, s.ptr, s.len);
		} else {
			moe_gguf_arr sub = moe_gguf_arr_sub(a, j);
			err = put_reader_arr(w, &sub, key);
		}
	}
	return err;
}

/* ---- adding metadata ------------------------------------------------------------ */

static moe_err check_adding(const moe_gguf_writer *w, const char *what, const char *name)
{
	if (w == NULL || name == NULL)
		return moe_fail(MOE_ERR_INVAL, "%s: NULL argument", what);
	if (w->state != W_ADDING)
		return moe_fail(MOE_ERR_STATE, "%s %s: the writer is past the metadata stage", what,
		                name);
	if (name[0] == '\0')
		return moe_fail(MOE_ERR_INVAL, "%s: empty name", what);
	return MOE_OK;
}

/* Starts kv key: checks it and writes key and type tag. */
static moe_err kv_begin(moe_gguf_writer *w, const char *key, moe_gguf_vtype type, size_t *start)
{
	moe_err err = check_adding(w, "key", key);

	if (err != MOE_OK)
		return err;
	if (set_has(&w->key_set, key))
		return moe_fail(MOE_ERR_DUPLICATE, "key %s: added twice", key);
	if ((unsigned)type >= MOE_GGUF_VTYPE_COUNT)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: value type %d unknown", key, (int)type);
	*start = w->kv_len;
	err = buf_str(w, key, strlen(key));
	if (err == MOE_OK)
		err = buf_le(w, (uint64_t)type, 4);
	if (err != MOE_OK)
		w->kv_len = *start;
	return err;
}

/* Finishes kv key after its value was encoded; on err rolls the buffer back. */
static moe_err kv_end(moe_gguf_writer *w, const char *key, size_t start, moe_err err)
{
	char *copy;

	if (err != MOE_OK)
		goto out_rollback;
	if (w->n_kv == w->keys_cap) {
		size_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
		char **k = realloc(w->keys, cap * sizeof(*k));
		if (k == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "key table");
			goto out_rollback;
		}
		w->keys = k;
		w->keys_cap = cap;
	}
	copy = strdup(key);
	if (copy == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "key %s", key);
		goto out_rollback;
	}
	err = set_add(&w->key_set, copy);
	if (err != MOE_OK)
		goto out_free_copy;
	w->keys[w->n_kv++] = copy;
	return MOE_OK;

out_free_copy:
	free(copy);
out_rollback:
	w->kv_len = start;
	return err;
}

/* general.alignment: UINT32, a power of two; sets the writer's alignment. */
static moe_err check_alignment(const char *key, const moe_gguf_value *v)
{
	if (strcmp(key, "general.alignment") != 0)
		return MOE_OK;
	if (v->type != MOE_GGUF_UINT32)
		return moe_fail(MOE_ERR_BAD_TYPE, "key general.alignment: type %s, must be UINT32",
		                moe_gguf_vtype_name(v->type));
	if (v->u == 0 || v->u > UINT32_MAX || (v->u & (v->u - 1)) != 0)
		return moe_fail(MOE_ERR_BAD_ALIGNMENT,
		                "key general.alignment: %llu is not a power of two",
		                (unsigned long long)v->u);
	return MOE_OK;
}

moe_err moe_gguf_writer_add_value(moe_gguf_writer *w, const char *key, const moe_gguf_value *v)
{
	size_t start = 0;
	moe_err err;

	if (v == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_add_value: NULL value");
	err = kv_begin(w, key, v->type, &start);
	if (err != MOE_OK)
		return err;
	err = check_alignment(key, v);
	if (err == MOE_OK)
		err = put_value(w, v, key, 1);
	err = kv_end(w, key, start, err);
	if (err == MOE_OK && strcmp(key, "general.alignment") == 0)
		w->alignment = (uint32_t)v->u;
	return err;
}

moe_err moe_gguf_writer_add_u32(moe_gguf_writer *w, const char *key, uint32_t v)
{
	moe_gguf_value val = {.type = MOE_GGUF_UINT32, .u = v};

	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_i32(moe_gguf_writer *w, const char *key, int32_t v)
{
	moe_gguf_value val = {.type = MOE_GGUF_INT32, .i = v};

	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_u64(moe_gguf_writer *w, const char *key, uint64_t v)
{
	moe_gguf_value val = {.type = MOE_GGUF_UINT64, .u = v};

	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_f32(moe_gguf_writer *w, const char *key, float v)
{
	moe_gguf_value val = {.type = MOE_GGUF_FLOAT32, .f = v};

	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_bool(moe_gguf_writer *w, const char *key, bool v)
{
	moe_gguf_value val = {.type = MOE_GGUF_BOOL, .b = v};

	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_str(moe_gguf_writer *w, const char *key, const char *v)
{
	moe_gguf_value val = {.type = MOE_GGUF_STRING};

	if (v == NULL)
		return moe_fail(MOE_ERR_INVAL, "key %s: NULL string", key ? key : "(null)");
	val.s.ptr = v;
	val.s.len = strlen(v);
	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_arr(moe_gguf_writer *w, const char *key, moe_gguf_vtype elem_type,
                                const void *data, uint64_t n)
{
	moe_gguf_value val = {.type = MOE_GGUF_ARRAY};

	if (elem_type == MOE_GGUF_STRING || elem_type == MOE_GGUF_ARRAY)
		return moe_fail(MOE_ERR_INVAL, "key %s: add_arr takes scalar elements, not %s",
		                key ? key : "(null)", moe_gguf_vtype_name(elem_type));
	val.arr.type = elem_type;
	val.arr.n = n;
	val.arr.data = data;
	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_arr_strn(moe_gguf_writer *w, const char *key, const moe_gguf_str *strs,
                                     uint64_t n)
{
	moe_gguf_value val = {.type = MOE_GGUF_ARRAY};

	val.arr.type = MOE_GGUF_STRING;
	val.arr.n = n;
	val.arr.data = strs;
	return moe_gguf_writer_add_value(w, key, &val);
}

moe_err moe_gguf_writer_add_arr_str(moe_gguf_writer *w, const char *key, const char *const *strs,
                                    uint64_t n)
{
	size_t start = 0;
	moe_err err;

	if (strs == NULL && n != 0)
		return moe_fail(MOE_ERR_INVAL, "key %s: NULL string array", key ? key : "(null)");
	err = kv_begin(w, key, MOE_GGUF_ARRAY, &start);
	if (err != MOE_OK)
		return err;
	err = buf_le(w, MOE_GGUF_STRING, 4);
	if (err == MOE_OK)
		err = buf_le(w, n, 8);
	for (uint64_t j = 0; j < n && err == MOE_OK; j++) {
		if (strs[j] == NULL)
			err = moe_fail(MOE_ERR_INVAL, "key %s: string %llu is NULL", key,
			               (unsigned long long)j);
		else
			err = buf_str(w, strs[j], strlen(strs[j]));
	}
	return kv_end(w, key, start, err);
}

moe_err moe_gguf_writer_copy_kv(moe_gguf_writer *w, const moe_gguf *g, int64_t i)
{
	moe_gguf_str k;
	moe_gguf_arr a;
	moe_gguf_value v;
	size_t start = 0;
	char *key;
	moe_err err;

	if (w == NULL || g == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_copy_kv: NULL argument");
	if (i < 0 || i >= moe_gguf_n_kv(g))
		return moe_fail(MOE_ERR_INVAL, "kv index %lld out of range", (long long)i);
	k = moe_gguf_kv_key(g, i);
	key = strndup(k.ptr, k.len);
	if (key == NULL)
		return moe_fail(MOE_ERR_NOMEM, "key copy");
	if (moe_gguf_kv_type(g, i) != MOE_GGUF_ARRAY) {
		err = moe_gguf_kv_value(&v, g, i);
		if (err == MOE_OK)
			err = moe_gguf_writer_add_value(w, key, &v);
		goto out_free_key;
	}
	err = moe_gguf_kv_arr(&a, g, i);
	if (err != MOE_OK)
		goto out_free_key;
	err = kv_begin(w, key, MOE_GGUF_ARRAY, &start);
	if (err == MOE_OK)
		err = kv_end(w, key, start, put_reader_arr(w, &a, key));

out_free_key:
	free(key);
	return err;
}

/* ---- tensors ----------------------------------------------------------------------- */

moe_err moe_gguf_writer_add_tensor(moe_gguf_writer *w, const char *name, moe_type type,
                                   uint32_t n_dims, const int64_t *ne)
{
	const moe_type_traits *tr;
	struct wtensor t = {.type = type, .n_dims = n_dims};
	int64_t nel = 1;
	moe_err err = check_adding(w, "tensor", name);

	if (err != MOE_OK)
		return err;
	if (set_has(&w->tensor_set, name))
		return moe_fail(MOE_ERR_DUPLICATE, "tensor %s: added twice", name);
	tr = moe_type_get(type);
	if (tr == NULL)
		return moe_fail(MOE_ERR_BAD_TYPE, "tensor %s: type %d unknown", name, (int)type);
	if (n_dims > MOE_GGUF_MAX_DIMS || (n_dims > 0 && ne == NULL))
		return moe_fail(MOE_ERR_BAD_SHAPE, "tensor %s: n_dims %u", name, n_dims);
	for (uint32_t d = 0; d < MOE_GGUF_MAX_DIMS; d++) {
		t.ne[d] = d < n_dims ? ne[d] : 1;
		if (t.ne[d] < 0)
			return moe_fail(MOE_ERR_BAD_SHAPE, "tensor %s: ne[%u] = %lld", name, d,
			                (long long)t.ne[d]);
		if (t.ne[d] != 0 && nel > INT64_MAX / t.ne[d])
			return moe_fail(MOE_ERR_OVERFLOW, "tensor %s: element count overflows",
			                name);
		nel *= t.ne[d];
	}
	if (t.ne[0] % tr->block_size != 0)
		return moe_fail(
		    MOE_ERR_BAD_SHAPE,
		    "tensor %s: ne[0] = %lld is not a multiple of the %s block size %lld", name,
		    (long long)t.ne[0], tr->name, (long long)tr->block_size);
	if ((uint64_t)(nel / tr->block_size) > UINT64_MAX / 2 / tr->type_size)
		return moe_fail(MOE_ERR_OVERFLOW, "tensor %s: byte size overflows", name);
	t.size = (uint64_t)(nel / tr->block_size) * tr->type_size;
	if (w->n_tensors == w->tensors_cap) {
		size_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
		struct wtensor *p = realloc(w->tensors, cap * sizeof(*p));
		if (p == NULL)
			return moe_fail(MOE_ERR_NOMEM, "tensor table of %zu", cap);
		w->tensors = p;
		w->tensors_cap = cap;
	}
	t.name = strdup(name);
	if (t.name == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tensor name %s", name);
	err = set_add(&w->tensor_set, t.name);
	if (err != MOE_OK) {
		free(t.name);
		return err;
	}
	w->tensors[w->n_tensors++] = t;
	return MOE_OK;
}

/* ---- the file ------------------------------------------------------------------------ */

static moe_err file_put(moe_gguf_writer *w, const void *p, size_t n)
{
	if (n != 0 && fwrite(p, 1, n, w->f) != n) {
		w->state = W_FAILED;
		return moe_fail(MOE_ERR_IO, "write %s: %s", w->path, strerror(errno));
	}
	return MOE_OK;
}

static moe_err file_le(moe_gguf_writer *w, uint64_t v, size_t bytes)
{
	uint8_t b[8];

	if (bytes > sizeof b)
		return moe_fail(MOE_ERR_INVAL, "a %zu-byte integer", bytes);
	for (size_t i = 0; i < sizeof b; i++) /* all 8, as buf_le */
		b[i] = (uint8_t)(v >> (8 * i));
	return file_put(w, b, bytes);
}

/* Zero bytes from `used` up to the next multiple of the alignment. */
static moe_err file_pad(moe_gguf_writer *w, uint64_t used)
{
	uint64_t pad = (w->alignment - used % w->alignment) % w->alignment;
	moe_err err = MOE_OK;

	while (pad > 0 && err == MOE_OK) {
		size_t n = pad < sizeof(zeros) ? (size_t)pad : sizeof(zeros);
		err = file_put(w, zeros, n);
		pad -= n;
	}
	return err;
}

moe_err moe_gguf_writer_create(moe_gguf_writer **out, const char *path)
{
	moe_gguf_writer *w;
	moe_err err;

	if (out == NULL || path == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_create: NULL argument");
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return moe_fail(MOE_ERR_NOMEM, "writer");
	w->alignment = MOE_GGUF_DEFAULT_ALIGNMENT;
	w->path = strdup(path);
	if (w->path == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "writer path");
		goto out_free_w;
	}
	w->f = fopen(path, "wb");
	if (w->f == NULL) {
		err = moe_fail(MOE_ERR_IO, "create %s: %s", path, strerror(errno));
		goto out_free_path;
	}
	setvbuf(w->f, NULL, _IOFBF, 1 << 20);
	*out = w;
	return MOE_OK;

out_free_path:
	free(w->path);
out_free_w:
	free(w);
	return err;
}

/* Moves past tensors that are complete (all of the current one written). */
static moe_err advance(moe_gguf_writer *w)
{
	moe_err err = MOE_OK;

	while (w->cur < w->n_tensors && w->cur_written == w->tensors[w->cur].size) {
		err = file_pad(w, w->tensors[w->cur].size);
		if (err != MOE_OK)
			return err;
		w->cur++;
		w->cur_written = 0;
	}
	return err;
}

moe_err moe_gguf_writer_begin_data(moe_gguf_writer *w)
{
	uint64_t off = 0, pos;
	moe_err err;

	if (w == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_begin_data: NULL writer");
	if (w->state != W_ADDING)
		return moe_fail(MOE_ERR_STATE, "%s: begin_data called twice or after a failure",
		                w->path);
	for (size_t i = 0; i < w->n_tensors; i++) {
		struct wtensor *t = &w->tensors[i];
		uint64_t padded = t->size + (w->alignment - t->size % w->alignment) % w->alignment;
		t->offset = off;
		if (padded < t->size || off > UINT64_MAX - padded)
			return moe_fail(MOE_ERR_OVERFLOW, "tensor %s: data section overflows",
			                t->name);
		off += padded;
	}
	err = file_put(w, "GGUF", 4);
	if (err == MOE_OK)
		err = file_le(w, 3, 4);
	if (err == MOE_OK)
		err = file_le(w, w->n_tensors, 8);
	if (err == MOE_OK)
		err = file_le(w, w->n_kv, 8);
	if (err == MOE_OK)
		err = file_put(w, w->kv, w->kv_len);
	pos = 24 + w->kv_len;
	for (size_t i = 0; i < w->n_tensors && err == MOE_OK; i++) {
		const struct wtensor *t = &w->tensors[i];
		size_t len = strlen(t->name);
		err = file_le(w, len, 8);
		if (err == MOE_OK)
			err = file_put(w, t->name, len);
		if (err == MOE_OK)
			err = file_le(w, t->n_dims, 4);
		for (uint32_t d = 0; d < t->n_dims && err == MOE_OK; d++)
			err = file_le(w, (uint64_t)t->ne[d], 8);
		if (err == MOE_OK)
			err = file_le(w, (uint64_t)t->type, 4);
		if (err == MOE_OK)
			err = file_le(w, t->offset, 8);
		pos += 8 + len + 4 + 8ull * t->n_dims + 4 + 8;
	}
	if (err == MOE_OK)
		err = file_pad(w, pos);
	if (err != MOE_OK)
		return err;
	w->state = W_DATA;
	w->cur = 0;
	w->cur_written = 0;
	return advance(w);
}

moe_err moe_gguf_writer_write(moe_gguf_writer *w, const void *data, size_t size)
{
	const struct wtensor *t;
	moe_err err;

	if (w == NULL || (data == NULL && size != 0))
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_write: NULL argument");
	if (w->state != W_DATA)
		return moe_fail(MOE_ERR_STATE, "%s: write outside the data stage", w->path);
	if (size == 0)
		return MOE_OK;
	if (w->cur >= w->n_tensors)
		return moe_fail(MOE_ERR_INVAL, "%s: %zu bytes written after the last tensor",
		                w->path, size);
	t = &w->tensors[w->cur];
	if (size > t->size - w->cur_written)
		return moe_fail(MOE_ERR_INVAL,
		                "tensor %s: %zu bytes written with %llu of its %llu bytes left",
		                t->name, size, (unsigned long long)(t->size - w->cur_written),
		                (unsigned long long)t->size);
	err = file_put(w, data, size);
	if (err != MOE_OK)
		return err;
	w->cur_written += size;
	return advance(w);
}

moe_err moe_gguf_writer_finish(moe_gguf_writer *w)
{
	moe_err err;

	if (w == NULL)
		return moe_fail(MOE_ERR_INVAL, "moe_gguf_writer_finish: NULL writer");
	if (w->state == W_ADDING) {
		err = moe_gguf_writer_begin_data(w);
		if (err != MOE_OK)
			return err;
	}
	if (w->state != W_DATA)
		return moe_fail(MOE_ERR_STATE, "%s: finish after finish or a failure", w->path);
	if (w->cur < w->n_tensors)
		return moe_fail(MOE_ERR_INVAL, "tensor %s: %llu of %llu bytes written",
		                w->tensors[w->cur].name, (unsigned long long)w->cur_written,
		                (unsigned long long)w->tensors[w->cur].size);
	if (fflush(w->f) != 0) {
		w->state = W_FAILED;
		return moe_fail(MOE_ERR_IO, "write %s: %s", w->path, strerror(errno));
	}
	if (fclose(w->f) != 0) {
		w->f = NULL;
		w->state = W_FAILED;
		return moe_fail(MOE_ERR_IO, "close %s: %s", w->path, strerror(errno));
	}
	w->f = NULL;
	w->state = W_DONE;
	return MOE_OK;
}

void moe_gguf_writer_destroy(moe_gguf_writer *w)
{
	if (w == NULL)
		return;
	if (w->f != NULL)
		fclose(w->f);
	if (w->state != W_DONE)
		unlink(w->path);
	for (size_t i = 0; i < w->n_kv; i++)
		free(w->keys[i]);
	for (size_t i = 0; i < w->n_tensors; i++)
		free(w->tensors[i].name);
	free(w->keys);
	free(w->key_set.slot);
	free(w->tensor_set.slot);
	free(w->tensors);
	free(w->kv);
	free(w->path);
	free(w);
}
