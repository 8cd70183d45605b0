/*
 * gguf_split.c - models split over several GGUF files, as llama.cpp's
 * gguf-split writes them, read through the first file and written from one.
 *
 * The convention (tools/gguf-split in llama.cpp): file i of N (1-based in the
 * name) is PREFIX-%05d-of-%05d.gguf; each file is a complete GGUF with the
 * keys split.no (UINT16, 0-based), split.count (UINT16) and
 * split.tensors.count (INT32, the tensors of all files); the first file also
 * carries all of the model's metadata, the others only the split keys; every
 * tensor is in exactly one file, with its offset in that file's data section.
 */
#include "model/gguf.h"
#include "model/gguf_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_NO      "split.no"
#define KEY_COUNT   "split.count"
#define KEY_TENSORS "split.tensors.count"

/* The longest name suffix: "-%05d-of-%05d.gguf" with 5-digit numbers. */
enum { SUFFIX_MAX = 32, MAX_SPLITS = 65535 };

/* A split key as a non-negative integer; *present false (and MOE_OK) if the
 * file lacks it.  Any integer type is taken (llama.cpp writes UINT16 and
 * INT32). */
static moe_err split_key(uint64_t *out, bool *present, const moe_gguf *g, const char *key)
{
	moe_gguf_value v;
	const int64_t i = moe_gguf_find_key(g, key);

	*present = false;
	if (i < 0)
		return MOE_OK;
	moe_err err = moe_gguf_kv_value(&v, g, i);
	if (err != MOE_OK)
		return err;
	switch (v.type) {
	case MOE_GGUF_UINT8:
	case MOE_GGUF_UINT16:
	case MOE_GGUF_UINT32:
	case MOE_GGUF_UINT64:
		*out = v.u;
		break;
	case MOE_GGUF_INT8:
	case MOE_GGUF_INT16:
	case MOE_GGUF_INT32:
	case MOE_GGUF_INT64:
		if (v.i < 0)
			return moe_fail(MOE_ERR_BAD_VALUE, "%s: %s is %" PRId64,
			                moe_gguf_path(g) ? moe_gguf_path(g) : "GGUF", key, v.i);
		*out = (uint64_t)v.i;
		break;
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "%s: %s has type %s, expected an integer",
		                moe_gguf_path(g) ? moe_gguf_path(g) : "GGUF", key,
		                moe_gguf_vtype_name(v.type));
	}
	*present = true;
	return MOE_OK;
}

typedef struct split_keys {
	uint64_t no, count, tensors;
	bool has_no, has_count, has_tensors;
} split_keys;

static moe_err read_keys(split_keys *k, const moe_gguf *g)
{
	moe_err err;

	*k = (split_keys){.count = 1};
	if ((err = split_key(&k->no, &k->has_no, g, KEY_NO)) != MOE_OK ||
	    (err = split_key(&k->count, &k->has_count, g, KEY_COUNT)) != MOE_OK ||
	    (err = split_key(&k->tensors, &k->has_tensors, g, KEY_TENSORS)) != MOE_OK)
		return err;
	if (!k->has_count)
		k->count = 1;
	if (k->count == 0 || k->count > MAX_SPLITS || (k->has_count && !k->has_no) ||
	    k->no >= k->count)
		return moe_fail(MOE_ERR_BAD_VALUE, "%s: %s = %" PRIu64 " and %s = %s%" PRIu64,
		                moe_gguf_path(g), KEY_COUNT, k->count, KEY_NO,
		                k->has_no ? "" : "(missing) ", k->no);
	return MOE_OK;
}

/* "-%05d-of-%05d.gguf" for 0-based split i of n. */
static void suffix(char out[SUFFIX_MAX], uint64_t i, uint64_t n)
{
	/* i < n <= MAX_SPLITS: five digits each, every name the same length */
	snprintf(out, SUFFIX_MAX, "-%05u-of-%05u.gguf", (unsigned)(i + 1), (unsigned)n);
}

moe_err gguf_open_splits(moe_gguf *g, gguf_open_fn open_file)
{
	split_keys k0, k;
	char sfx[SUFFIX_MAX];
	moe_err err;

	if ((err = read_keys(&k0, g)) != MOE_OK)
		return err;
	if (k0.count == 1)
		return MOE_OK;
	const size_t plen = strlen(g->path);
	suffix(sfx, k0.no, k0.count);
	const size_t slen = strlen(sfx);
	if (plen <= slen || strcmp(g->path + plen - slen, sfx) != 0)
		return moe_fail(MOE_ERR_MISMATCH,
		                "%s is split %" PRIu64 " of %" PRIu64
		                " but its name does not end in %s, so the other files cannot be "
		                "found",
		                g->path, k0.no + 1, k0.count, sfx);
	if (k0.no != 0) {
		suffix(sfx, 0, k0.count);
		return moe_fail(MOE_ERR_MISMATCH,
		                "%s is split %" PRIu64 " of %" PRIu64
		                ": open the first one, %.*s%s, which holds the metadata",
		                g->path, k0.no + 1, k0.count, (int)(plen - slen), g->path, sfx);
	}

	g->splits = calloc((size_t)k0.count, sizeof(*g->splits));
	char *path = malloc(plen + 1);
	if (g->splits == NULL || path == NULL) {
		free(path);
		return moe_fail(MOE_ERR_NOMEM, "%s: %" PRIu64 " splits", g->path, k0.count);
	}
	g->splits[0] = g;
	g->n_splits = 1;
	int64_t total = g->n_tensors;
	for (uint64_t i = 1; i < k0.count; i++) {
		moe_gguf *p = NULL;
		memcpy(path, g->path, plen - slen);
		suffix(path + plen - slen, i, k0.count); /* the same length */
		if ((err = open_file(&p, path)) != MOE_OK) {
			err = moe_fail(err, "split %" PRIu64 " of %" PRIu64 ": %s", i + 1, k0.count,
			               moe_err_detail());
			goto out_free_path;
		}
		g->splits[g->n_splits++] = p;
		if ((err = read_keys(&k, p)) != MOE_OK)
			goto out_free_path;
		if (k.count != k0.count || k.no != i ||
		    (k.has_tensors && k0.has_tensors && k.tensors != k0.tensors)) {
			err = moe_fail(MOE_ERR_MISMATCH,
			               "%s says split %" PRIu64 " of %" PRIu64 " (%s%" PRIu64
			               " tensors); %s expects split %" PRIu64 " of %" PRIu64
			               " (%" PRIu64 " tensors)",
			               path, k.no + 1, k.count, k.has_tensors ? "" : "? ",
			               k.tensors, g->path, i + 1, k0.count, k0.tensors);
			goto out_free_path;
		}
		total += p->n_tensors;
	}
	if (k0.has_tensors && (uint64_t)total != k0.tensors) {
		err = moe_fail(MOE_ERR_MISMATCH,
		               "%s: %s is %" PRIu64 " but the %" PRIu64 " files hold %" PRId64
		               " tensors",
		               g->path, KEY_TENSORS, k0.tensors, k0.count, total);
		goto out_free_path;
	}

	/* one table over every file; names and data stay in their mappings */
	moe_gguf_tensor *all = realloc(g->tensors, (size_t)(total ? total : 1) * sizeof(*all));
	if (all == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "tensor table of %" PRId64, total);
		goto out_free_path;
	}
	g->tensors = all;
	for (int i = 1; i < g->n_splits; i++) {
		const moe_gguf *p = g->splits[i];
		for (int64_t j = 0; j < p->n_tensors; j++) {
			all[g->n_tensors] = p->tensors[j];
			all[g->n_tensors++].split = (uint32_t)i;
		}
	}
	free(g->tensor_hash);
	g->tensor_hash = NULL;
	err = gguf_build_tensor_hash(g);

out_free_path:
	free(path);
	return err;
}

/* ---- writing ------------------------------------------------------------------- */

static bool is_split_key(moe_gguf_str k)
{
	static const char *const keys[] = {KEY_NO, KEY_COUNT, KEY_TENSORS};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (k.len == strlen(keys[i]) && memcmp(k.ptr, keys[i], k.len) == 0)
			return true;
	return false;
}

static moe_err add_u16(moe_gguf_writer *w, const char *key, uint64_t v)
{
	moe_gguf_value val = {.type = MOE_GGUF_UINT16, .u = v};
	return moe_gguf_writer_add_value(w, key, &val);
}

/* File `no` of n_files: tensors [t0, t1) of g. */
static moe_err write_one(const moe_gguf *g, const char *path, uint64_t no, uint64_t n_files,
                         int64_t t0, int64_t t1)
{
	moe_gguf_writer *w = NULL;
	moe_err err = moe_gguf_writer_create(&w, path);
	if (err != MOE_OK)
		return err;
	for (int64_t i = 0; no == 0 && i < moe_gguf_n_kv(g); i++)
		if (!is_split_key(moe_gguf_kv_key(g, i)) &&
		    (err = moe_gguf_writer_copy_kv(w, g, i)) != MOE_OK)
			goto out_destroy;
	if ((err = add_u16(w, KEY_NO, no)) != MOE_OK ||
	    (err = add_u16(w, KEY_COUNT, n_files)) != MOE_OK ||
	    (err = moe_gguf_writer_add_i32(w, KEY_TENSORS, (int32_t)moe_gguf_n_tensors(g))) !=
	        MOE_OK)
		goto out_destroy;
	for (int64_t i = t0; i < t1; i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		char *name =
		    strndup(t->name.ptr, t->name.len); /* no NUL inside: the reader checks */
		if (name == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "tensor name");
			goto out_destroy;
		}
		err = moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne);
		free(name);
		if (err != MOE_OK)
			goto out_destroy;
	}
	if ((err = moe_gguf_writer_begin_data(w)) != MOE_OK)
		goto out_destroy;
	for (int64_t i = t0; i < t1; i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		if ((err = moe_gguf_writer_write(w, t->data, t->size)) != MOE_OK)
			goto out_destroy;
	}
	err = moe_gguf_writer_finish(w);
out_destroy:
	moe_gguf_writer_destroy(w);
	return err;
}

moe_err moe_gguf_split_write(int *n_files, const moe_gguf *g, const char *prefix,
                             int64_t max_tensors)
{
	const int64_t nt = moe_gguf_n_tensors(g);
	if (prefix == NULL || max_tensors < 1)
		return moe_fail(MOE_ERR_INVAL, "gguf split: prefix %s, %lld tensors per file",
		                prefix ? prefix : "NULL", (long long)max_tensors);
	if (nt > INT32_MAX)
		return moe_fail(MOE_ERR_BAD_COUNT, "gguf split: %lld tensors", (long long)nt);
	const int64_t n = nt == 0 ? 1 : (nt + max_tensors - 1) / max_tensors;
	if (n > MAX_SPLITS)
		return moe_fail(MOE_ERR_INVAL, "gguf split: %lld files, at most %d", (long long)n,
		                MAX_SPLITS);
	const size_t plen = strlen(prefix);
	char *path = malloc(plen + SUFFIX_MAX);
	if (path == NULL)
		return moe_fail(MOE_ERR_NOMEM, "gguf split: path");
	memcpy(path, prefix, plen);
	moe_err err = MOE_OK;
	for (int64_t i = 0; i < n && err == MOE_OK; i++) {
		suffix(path + plen, (uint64_t)i, (uint64_t)n);
		const int64_t t0 = i * max_tensors,
		              t1 = t0 + max_tensors < nt ? t0 + max_tensors : nt;
		err = write_one(g, path, (uint64_t)i, (uint64_t)n, t0, t1);
		if (err != MOE_OK)
			err = moe_fail(err, "%s: %s", path, moe_err_detail());
	}
	free(path);
	if (err == MOE_OK && n_files != NULL)
		*n_files = (int)n;
	return err;
}
