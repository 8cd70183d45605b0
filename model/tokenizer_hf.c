/*
 * tokenizer_hf.c - HF tokenizer.json -> the arrays GGUF stores
 * (tokenizer.ggml.*), following what llama.cpp's convert_hf_to_gguf.py
 * (get_vocab_base, does_token_look_special) and gguf-py's SpecialVocab do.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_impl.h"

#define HF_MAX_FILE (1u << 30)
#define HF_MAX_ID   (1 << 26)

/* The Split regex of Qwen2/Qwen3 tokenizer.json files. */
static const char qwen2_hf_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* The owned spec: the public part first, so a moe_tokenizer_spec * is also
 * a struct hf_spec *. */
struct hf_spec {
	moe_tokenizer_spec spec;
	char **tokens;  /* [n_tokens] */
	char **merges;  /* [n_merges] */
	int32_t *types; /* [n_tokens] */
};

void moe_tokenizer_spec_free(moe_tokenizer_spec *spec)
{
	if (spec == NULL)
		return;
	struct hf_spec *h = (struct hf_spec *)spec;
	if (h->tokens)
		for (uint32_t i = 0; i < spec->n_tokens; i++)
			free(h->tokens[i]);
	if (h->merges)
		for (uint32_t i = 0; i < spec->n_merges; i++)
			free(h->merges[i]);
	free(h->tokens);
	free(h->merges);
	free(h->types);
	free(h);
}

static moe_err parse_file(cJSON **out, const char *path)
{
	char *buf = NULL;
	size_t len = 0;
	moe_err err = moe_read_file(&buf, &len, path, HF_MAX_FILE);
	if (err)
		return err;
	*out = cJSON_ParseWithLength(buf, len);
	if (*out == NULL) {
		const char *at = cJSON_GetErrorPtr();
		size_t off = at && at >= buf && at <= buf + len ? (size_t)(at - buf) : 0;
		free(buf);
		return moe_fail(MOE_ERR_FORMAT, "%s: not JSON (near byte %zu)", path, off);
	}
	free(buf);
	return MOE_OK;
}

/* path with its last component replaced by name; malloc'd. */
static char *sibling(const char *path, const char *name)
{
	const char *slash = strrchr(path, '/');
	size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
	char *s = malloc(dir + strlen(name) + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, path, dir);
	strcpy(s + dir, name);
	return s;
}

/* Parses the sibling file name if it exists; *out NULL if it does not. */
static moe_err parse_sibling(cJSON **out, const char *path, const char *name)
{
	*out = NULL;
	char *p = sibling(path, name);
	if (p == NULL)
		return moe_fail(MOE_ERR_NOMEM, "path");
	FILE *f = fopen(p, "rb");
	moe_err err = MOE_OK;
	if (f != NULL) {
		fclose(f);
		err = parse_file(out, p);
	}
	free(p);
	return err;
}

/* llama.cpp's does_token_look_special. */
static bool looks_special(const char *t)
{
	size_t n = strlen(t);
	if (!strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") ||
	    !strcmp(t, "[@BOS@]"))
		return true;
	if (n >= 4 && !strncmp(t, "<|", 2) && !strcmp(t + n - 2, "|>"))
		return true;
	/* "<｜" ... "｜>" (U+FF5C FULLWIDTH VERTICAL LINE), deepseek */
	if (n >= 8 && !strncmp(t, "<\xEF\xBD\x9C", 4) && !strcmp(t + n - 4, "\xEF\xBD\x9C>"))
		return true;
	if (!strncmp(t, "<unused", 7) && n >= 8 && t[n - 1] == '>')
		return true;
	return false;
}

/* Replaces every U+2581 (what SentencePiece writes for a space) by ' '. */
static void unspace(char *t)
{
	char *o = t;
	for (const char *s = t; *s;) {
		if (!strncmp(s, "\xE2\x96\x81", 3)) {
			*o++ = ' ';
			s += 3;
		} else {
			*o++ = *s++;
		}
	}
	*o = 0;
}

/* A merge given as ["left", "right"] -> "left right", spaces inside a part
 * written as U+0120 as gguf-py does. */
static char *join_pair(const char *a, const char *b)
{
	size_t sp = 0;
	for (const char *s = a; *s; s++)
		sp += *s == ' ';
	for (const char *s = b; *s; s++)
		sp += *s == ' ';
	char *m = malloc(strlen(a) + strlen(b) + sp + 2);
	if (m == NULL)
		return NULL;
	char *o = m;
	for (int k = 0; k < 2; k++) {
		for (const char *s = k ? b : a; *s; s++) {
			if (*s == ' ') {
				*o++ = (char)0xC4;
				*o++ = (char)0xA0;
			} else {
				*o++ = *s;
			}
		}
		if (k == 0)
			*o++ = ' ';
	}
	*o = 0;
	return m;
}

static bool pretok_is_qwen2(const cJSON *pre)
{
	if (pre == NULL)
		return false;
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(pre, "type");
	if (cJSON_IsString(type) && !strcmp(type->valuestring, "Sequence")) {
		const cJSON *p;
		cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers"))
		{
			if (pretok_is_qwen2(p))
				return true;
		}
		return false;
	}
	if (!cJSON_IsString(type) || strcmp(type->valuestring, "Split") != 0)
		return false;
	const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pre, "pattern");
	const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
	return cJSON_IsString(re) && !strcmp(re->valuestring, qwen2_hf_regex);
}

/* The id of the added token whose content is text, or -1. */
static int64_t added_id(const cJSON *added, const char *text)
{
	const cJSON *a;
	cJSON_ArrayForEach(a, added)
	{
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
		if (cJSON_IsString(c) && cJSON_IsNumber(id) && !strcmp(c->valuestring, text))
			return (int64_t)id->valuedouble;
	}
	return -1;
}

/* Sets *id from tokenizer_config's "<typ>_token" (a string or {content}). */
static void config_token(int32_t *id, const cJSON *cfg, const cJSON *added, const char *key,
                         uint32_t n)
{
	if (*id >= 0 || cfg == NULL)
		return;
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, key);
	if (cJSON_IsObject(e))
		e = cJSON_GetObjectItemCaseSensitive(e, "content");
	if (!cJSON_IsString(e))
		return;
	int64_t v = added_id(added, e->valuestring);
	if (v >= 0 && v < n)
		*id = (int32_t)v;
}

static void config_id(int32_t *id, const cJSON *cfg, const char *key, uint32_t n)
{
	if (*id >= 0 || cfg == NULL)
		return;
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, key);
	if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < n)
		*id = (int32_t)e->valuedouble;
}

static bool config_bool(const cJSON *cfg, const char *key)
{
	return cfg && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, key));
}

static bool id_ok(const cJSON *id)
{
	return cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < HF_MAX_ID &&
	       id->valuedouble == (double)(int32_t)id->valuedouble;
}

static moe_err fill_tokens(struct hf_spec *h, const cJSON *vocab, const cJSON *added,
                           const char *path)
{
	uint32_t n = h->spec.n_tokens;
	const cJSON *v;
	cJSON_ArrayForEach(v, vocab)
	{
		uint32_t id = (uint32_t)v->valuedouble;
		if (h->tokens[id] != NULL)
			return moe_fail(MOE_ERR_DUPLICATE, "%s: two vocab tokens with id %u", path,
			                id);
		h->tokens[id] = strdup(v->string);
		if (h->tokens[id] == NULL)
			return moe_fail(MOE_ERR_NOMEM, "%s: token %u", path, id);
		h->types[id] = MOE_TOKEN_NORMAL;
	}
	cJSON_ArrayForEach(v, added)
	{
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
		uint32_t id = (uint32_t)cJSON_GetObjectItemCaseSensitive(v, "id")->valuedouble;
		bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "special"));
		free(h->tokens[id]);
		h->tokens[id] = strdup(c->valuestring);
		if (h->tokens[id] == NULL)
			return moe_fail(MOE_ERR_NOMEM, "%s: added token %u", path, id);
		if (special || looks_special(h->tokens[id])) {
			h->types[id] = MOE_TOKEN_CONTROL;
		} else {
			unspace(h->tokens[id]);
			h->types[id] = MOE_TOKEN_USER_DEFINED;
		}
	}
	for (uint32_t id = 0; id < n; id++) {
		if (h->tokens[id] != NULL)
			continue;
		char pad[32];
		snprintf(pad, sizeof pad, "[PAD%u]", id);
		h->tokens[id] = strdup(pad);
		if (h->tokens[id] == NULL)
			return moe_fail(MOE_ERR_NOMEM, "%s: token %u", path, id);
		h->types[id] = MOE_TOKEN_UNUSED;
	}
	return MOE_OK;
}

static moe_err fill_merges(struct hf_spec *h, const cJSON *merges, const char *path)
{
	uint32_t i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, merges)
	{
		if (cJSON_IsString(m)) {
			h->merges[i] = strdup(m->valuestring);
		} else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
		           cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
		           cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
			h->merges[i] = join_pair(cJSON_GetArrayItem(m, 0)->valuestring,
			                         cJSON_GetArrayItem(m, 1)->valuestring);
		} else {
			return moe_fail(MOE_ERR_FORMAT, "%s: model.merges[%u] is not a merge", path,
			                i);
		}
		if (h->merges[i] == NULL)
			return moe_fail(MOE_ERR_NOMEM, "%s: merge %u", path, i);
		i++;
		h->spec.n_merges = i; /* what moe_tokenizer_spec_free must free */
	}
	return MOE_OK;
}

/* Checks the shapes of the fields we read; returns the vocabulary size. */
static moe_err check_json(uint32_t *n_tokens, const cJSON *root, const char *path)
{
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
	if (!cJSON_IsObject(model))
		return moe_fail(MOE_ERR_FORMAT, "%s: no \"model\" object", path);
	if (type != NULL && (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0))
		return moe_fail(MOE_ERR_UNSUPPORTED, "%s: model.type is not BPE", path);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
		return moe_fail(MOE_ERR_UNSUPPORTED, "%s: byte_fallback BPE", path);
	const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
	const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(dec, "type");
	if (!cJSON_IsString(dtype) || strcmp(dtype->valuestring, "ByteLevel") != 0)
		return moe_fail(MOE_ERR_UNSUPPORTED, "%s: decoder is not ByteLevel", path);
	const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	if (!cJSON_IsObject(vocab))
		return moe_fail(MOE_ERR_FORMAT, "%s: model.vocab is not an object", path);
	if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(model, "merges")))
		return moe_fail(MOE_ERR_FORMAT, "%s: model.merges is not an array", path);
	int64_t max_id = -1;
	const cJSON *v;
	cJSON_ArrayForEach(v, vocab)
	{
		if (!id_ok(v))
			return moe_fail(MOE_ERR_FORMAT, "%s: model.vocab[\"%.40s\"] is not an id",
			                path, v->string);
		if (v->valuedouble > max_id)
			max_id = (int64_t)v->valuedouble;
	}
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	if (added != NULL && !cJSON_IsArray(added) && !cJSON_IsNull(added))
		return moe_fail(MOE_ERR_FORMAT, "%s: added_tokens is not an array", path);
	int k = 0;
	cJSON_ArrayForEach(v, added)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(v, "id");
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
		if (!id_ok(id) || !cJSON_IsString(c) || c->valuestring[0] == 0)
			return moe_fail(MOE_ERR_FORMAT, "%s: added_tokens[%d] lacks id or content",
			                path, k);
		if (id->valuedouble > max_id)
			max_id = (int64_t)id->valuedouble;
		k++;
	}
	if (max_id < 0)
		return moe_fail(MOE_ERR_FORMAT, "%s: empty vocabulary", path);
	if (!pretok_is_qwen2(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")))
		return moe_fail(MOE_ERR_UNSUPPORTED, "%s: pre-tokenizer is not Qwen2's split regex",
		                path);
	*n_tokens = (uint32_t)max_id + 1;
	return MOE_OK;
}

static void special_ids(moe_tokenizer_spec *spec, const cJSON *added, const cJSON *tcfg,
                        const cJSON *cfg)
{
	uint32_t n = spec->n_tokens;
	spec->bos_id = spec->eos_id = spec->pad_id = -1;
	config_token(&spec->bos_id, tcfg, added, "bos_token", n);
	config_token(&spec->eos_id, tcfg, added, "eos_token", n);
	config_token(&spec->pad_id, tcfg, added, "pad_token", n);
	config_id(&spec->bos_id, cfg, "bos_token_id", n);
	config_id(&spec->eos_id, cfg, "eos_token_id", n);
	config_id(&spec->pad_id, cfg, "pad_token_id", n);
	if (spec->bos_id < 0) {
		int64_t v = added_id(added, "<|endoftext|>");
		if (v >= 0 && v < n)
			spec->bos_id = (int32_t)v;
	}
	spec->add_bos = config_bool(tcfg, "add_bos_token");
	spec->add_eos = config_bool(tcfg, "add_eos_token");
}

moe_err moe_tokenizer_spec_read_hf(moe_tokenizer_spec **out, const char *path)
{
	if (out == NULL || path == NULL)
		return moe_fail(MOE_ERR_INVAL, "read_hf: NULL argument");
	cJSON *root = NULL, *tcfg = NULL, *cfg = NULL;
	moe_err err = parse_file(&root, path);
	if (err)
		return err;
	uint32_t n = 0;
	err = check_json(&n, root, path);
	if (err)
		goto out_free_json;
	err = parse_sibling(&tcfg, path, "tokenizer_config.json");
	if (!err)
		err = parse_sibling(&cfg, path, "config.json");
	if (err)
		goto out_free_json;

	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	int n_merges = cJSON_GetArraySize(merges);
	struct hf_spec *h = calloc(1, sizeof *h);
	if (h == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "read_hf");
		goto out_free_json;
	}
	h->spec.n_tokens = n;
	h->tokens = calloc(n, sizeof *h->tokens);
	h->types = calloc(n, sizeof *h->types);
	h->merges = calloc(n_merges ? (size_t)n_merges : 1, sizeof *h->merges);
	if (!h->tokens || !h->types || !h->merges) {
		err = moe_fail(MOE_ERR_NOMEM, "read_hf: %u tokens", n);
		goto out_free_spec;
	}
	err = fill_tokens(h, cJSON_GetObjectItemCaseSensitive(model, "vocab"), added, path);
	if (!err)
		err = fill_merges(h, merges, path);
	if (err)
		goto out_free_spec;
	h->spec.model = "gpt2";
	h->spec.pre = "qwen2";
	h->spec.tokens = (const char *const *)h->tokens;
	h->spec.token_types = h->types;
	h->spec.merges = (const char *const *)h->merges;
	special_ids(&h->spec, added, tcfg, cfg);
	*out = &h->spec;
	goto out_free_json;

out_free_spec:
	moe_tokenizer_spec_free(&h->spec);
out_free_json:
	cJSON_Delete(cfg);
	cJSON_Delete(tcfg);
	cJSON_Delete(root);
	return err;
}

moe_err moe_tokenizer_create_hf(moe_tokenizer **out, const char *path)
{
	moe_tokenizer_spec *spec;
	moe_err err = moe_tokenizer_spec_read_hf(&spec, path);
	if (err)
		return err;
	err = moe_tokenizer_create(out, spec);
	moe_tokenizer_spec_free(spec);
	return err;
}
