/*
 * tokenizer_gguf.c - a tokenizer from the tokenizer.ggml.* keys of a GGUF
 * file.  The strings stay in the mapping; only pointer and length arrays are
 * built for moe_tokenizer_create, which copies what it keeps.
 */
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer_impl.h"

/* A string array key as pointer + length arrays (malloc'd, caller frees). */
static moe_err str_array(const char ***ptrs, uint32_t **lens, uint32_t *n, const moe_gguf *g,
                         const char *key)
{
	moe_gguf_arr a;
	moe_err err = moe_gguf_get_arr(&a, g, key);
	if (err)
		return err;
	if (a.type != MOE_GGUF_STRING)
		return moe_fail(MOE_ERR_BAD_TYPE, "key %s: array of %s, not STRING", key,
		                moe_gguf_vtype_name(a.type));
	if (a.n > (1u << 30))
		return moe_fail(MOE_ERR_BAD_COUNT, "key %s: %llu strings", key,
		                (unsigned long long)a.n);
	*ptrs = malloc((a.n ? a.n : 1) * sizeof **ptrs);
	*lens = malloc((a.n ? a.n : 1) * sizeof **lens);
	if (*ptrs == NULL || *lens == NULL) {
		free(*ptrs);
		free(*lens);
		return moe_fail(MOE_ERR_NOMEM, "key %s: %llu strings", key,
		                (unsigned long long)a.n);
	}
	for (uint64_t j = 0; j < a.n; j++) {
		moe_gguf_str s = moe_gguf_arr_str(&a, j);
		if (s.len > UINT32_MAX / 2) {
			free(*ptrs);
			free(*lens);
			return moe_fail(MOE_ERR_BAD_STRING, "key %s: string %llu of %llu bytes",
			                key, (unsigned long long)j, (unsigned long long)s.len);
		}
		(*ptrs)[j] = s.ptr ? s.ptr : "";
		(*lens)[j] = (uint32_t)s.len;
	}
	*n = (uint32_t)a.n;
	return MOE_OK;
}

/* An optional id key: -1 when absent. */
static moe_err opt_id(int32_t *out, const moe_gguf *g, const char *key)
{
	uint32_t v;
	moe_err err = moe_gguf_get_u32(&v, g, key);
	if (err == MOE_ERR_NOT_FOUND) {
		moe_err_clear();
		*out = -1;
		return MOE_OK;
	}
	if (err)
		return err;
	if (v > INT32_MAX)
		return moe_fail(MOE_ERR_BAD_VALUE, "key %s: id %u", key, v);
	*out = (int32_t)v;
	return MOE_OK;
}

static moe_err opt_bool(bool *out, const moe_gguf *g, const char *key)
{
	moe_err err = moe_gguf_get_bool(out, g, key);
	if (err == MOE_ERR_NOT_FOUND) {
		moe_err_clear();
		*out = false;
		return MOE_OK;
	}
	return err;
}

/* A short string key copied NUL-terminated into buf. */
static moe_err short_str(char *buf, size_t cap, const moe_gguf *g, const char *key)
{
	moe_gguf_str s;
	moe_err err = moe_gguf_get_str(&s, g, key);
	if (err)
		return err;
	if (s.len >= cap || memchr(s.ptr, 0, s.len) != NULL)
		return moe_fail(MOE_ERR_BAD_STRING, "key %s: %llu bytes", key,
		                (unsigned long long)s.len);
	memcpy(buf, s.ptr, s.len);
	buf[s.len] = 0;
	return MOE_OK;
}

moe_err moe_tokenizer_from_gguf(moe_tokenizer **out, const moe_gguf *g)
{
	if (out == NULL || g == NULL)
		return moe_fail(MOE_ERR_INVAL, "tokenizer_from_gguf: NULL argument");
	char model[64], pre[64];
	moe_err err = short_str(model, sizeof model, g, "tokenizer.ggml.model");
	if (err)
		return err;
	err = short_str(pre, sizeof pre, g, "tokenizer.ggml.pre");
	if (err == MOE_ERR_NOT_FOUND) {
		moe_err_clear();
		strcpy(pre, "default"); /* what llama.cpp assumes */
		err = MOE_OK;
	}
	if (err)
		return err;

	moe_tokenizer_spec spec = {.model = model, .pre = pre};
	const char **tokens = NULL, **merges = NULL;
	uint32_t *token_lens = NULL, *merge_lens = NULL;
	int32_t *types = NULL;
	err = str_array(&tokens, &token_lens, &spec.n_tokens, g, "tokenizer.ggml.tokens");
	if (err)
		return err;
	err = str_array(&merges, &merge_lens, &spec.n_merges, g, "tokenizer.ggml.merges");
	if (err == MOE_ERR_NOT_FOUND) {
		moe_err_clear();
		err = MOE_OK;
		spec.n_merges = 0;
	}
	if (err)
		goto out_free;

	moe_gguf_arr ta;
	err = moe_gguf_get_arr(&ta, g, "tokenizer.ggml.token_type");
	if (err == MOE_ERR_NOT_FOUND) {
		moe_err_clear();
		err = MOE_OK;
	} else if (!err) {
		if (ta.n != spec.n_tokens) {
			err = moe_fail(MOE_ERR_BAD_COUNT,
			               "key tokenizer.ggml.token_type: %llu types for %u tokens",
			               (unsigned long long)ta.n, spec.n_tokens);
			goto out_free;
		}
		if (ta.type != MOE_GGUF_INT32 && ta.type != MOE_GGUF_UINT32 &&
		    ta.type != MOE_GGUF_INT8 && ta.type != MOE_GGUF_UINT8 &&
		    ta.type != MOE_GGUF_INT16 && ta.type != MOE_GGUF_UINT16) {
			err = moe_fail(MOE_ERR_BAD_TYPE,
			               "key tokenizer.ggml.token_type: array of %s, not INT32",
			               moe_gguf_vtype_name(ta.type));
			goto out_free;
		}
		types = malloc((ta.n ? ta.n : 1) * sizeof *types);
		if (types == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "token types");
			goto out_free;
		}
		for (uint64_t j = 0; j < ta.n; j++) {
			int64_t t = moe_gguf_arr_int(&ta, j);
			types[j] = t < 0 || t > 255 ? 255 : (int32_t)t; /* rejected by create */
		}
	}
	if (err)
		goto out_free;

	spec.tokens = tokens;
	spec.token_lens = token_lens;
	spec.token_types = types;
	spec.merges = merges;
	spec.merge_lens = merge_lens;
	err = opt_id(&spec.bos_id, g, "tokenizer.ggml.bos_token_id");
	if (!err)
		err = opt_id(&spec.eos_id, g, "tokenizer.ggml.eos_token_id");
	if (!err)
		err = opt_id(&spec.pad_id, g, "tokenizer.ggml.padding_token_id");
	if (!err)
		err = opt_bool(&spec.add_bos, g, "tokenizer.ggml.add_bos_token");
	if (!err)
		err = opt_bool(&spec.add_eos, g, "tokenizer.ggml.add_eos_token");
	if (!err)
		err = moe_tokenizer_create(out, &spec);
out_free:
	free(types);
	free(merge_lens);
	free(merges);
	free(token_lens);
	free(tokens);
	return err;
}
