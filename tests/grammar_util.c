/*
 * grammar_util.c - what test_grammar.c and test_grammar_schema.c share: a
 * xorshift generator, a growing string, the Qwen3 and small vocabularies,
 * the mask-against-token_ok check, and the JSON schemas with the independent
 * random document generator that writes documents they must accept.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar_util.h"

uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

void sb_put(sb *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		cr_assert(b->p != NULL);
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

void sb_puts(sb *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

moe_tokenizer *qwen3(void)
{
	static moe_tokenizer *tok;
	if (tok == NULL) {
		const char *dir = getenv("MOE_FIXTURES");
		cr_assert(dir != NULL, "MOE_FIXTURES is not set");
		char path[4096];
		snprintf(path, sizeof path, "%s/qwen3-tokenizer/tokenizer.json", dir);
		moe_err err = moe_tokenizer_create_hf(&tok, path);
		cr_assert(err == MOE_OK, "create_hf: %s %s", moe_err_name(err), moe_err_detail());
	}
	return tok;
}

int32_t im_end(void)
{
	return moe_tokenizer_find_special(qwen3(), "<|im_end|>", 10);
}

/* The Qwen3 vocabulary view: control tokens never valid, <|im_end|> ends. */
moe_grammar_vocab *qvocab(void)
{
	static moe_grammar_vocab *v;
	if (v != NULL)
		return v;
	moe_tokenizer *tok = qwen3();
	uint32_t n = moe_tokenizer_n_vocab(tok);
	const char **bytes = malloc(n * sizeof(*bytes));
	size_t *lens = malloc(n * sizeof(*lens));
	bool *never = malloc(n);
	for (uint32_t i = 0; i < n; i++) {
		bytes[i] = moe_tokenizer_token_bytes(tok, (int32_t)i, &lens[i]);
		moe_token_type t = moe_tokenizer_token_type(tok, (int32_t)i);
		never[i] =
		    t == MOE_TOKEN_CONTROL || t == MOE_TOKEN_UNUSED || t == MOE_TOKEN_UNKNOWN;
	}
	int32_t end = im_end();
	cr_assert(end >= 0);
	moe_err err = moe_grammar_vocab_create(&v, n, bytes, lens, never, &end, 1);
	cr_assert(err == MOE_OK, "vocab: %s", moe_err_detail());
	free(bytes);
	free(lens);
	free(never);
	return v;
}

/* A small vocabulary: the 256 bytes, some multi-byte tokens, an end token
 * (the last id) and a never-valid one. */
static const char *const tiny_multi[] = {"ab",  "abc",      "\"",       "{\"", "\":", " \"", "é",
                                         "😀",   "\xF0\x9F", "\x98\x80", "aa",  "a\"", "\"}", "12",
                                         "1.5", "true",     "nul",      "l}",  ", ",  "\n  "};
_Static_assert(sizeof tiny_multi / sizeof *tiny_multi == TINY_MULTI_N, "TINY_MULTI_N");

moe_grammar_vocab *tiny_vocab(void)
{
	static moe_grammar_vocab *v;
	if (v != NULL)
		return v;
	static char single[256];
	const char *bytes[TINY_N];
	size_t lens[TINY_N];
	bool never[TINY_N] = {0};
	for (int i = 0; i < 256; i++) {
		single[i] = (char)i;
		bytes[i] = &single[i];
		lens[i] = 1;
	}
	for (size_t i = 0; i < sizeof tiny_multi / sizeof *tiny_multi; i++) {
		bytes[256 + i] = tiny_multi[i];
		lens[256 + i] = strlen(tiny_multi[i]);
	}
	bytes[TINY_N - 2] = "<ctl>";
	lens[TINY_N - 2] = 5;
	never[TINY_N - 2] = true;
	bytes[TINY_N - 1] = "<end>";
	lens[TINY_N - 1] = 5;
	int32_t end = TINY_N - 1;
	moe_err err = moe_grammar_vocab_create(&v, TINY_N, bytes, lens, never, &end, 1);
	cr_assert(err == MOE_OK, "tiny vocab: %s", moe_err_detail());
	return v;
}

moe_grammar *parse_ok(const char *text)
{
	moe_grammar *g = NULL;
	moe_err err = moe_grammar_parse(&g, text, strlen(text), NULL);
	cr_assert(err == MOE_OK, "parse: %s: %s\n%s", moe_err_name(err), moe_err_detail(), text);
	return g;
}

/* Whether the whole of s is a sentence of the grammar (tiny vocabulary). */
int accepts(const moe_grammar_tables *t, const char *s, size_t n)
{
	moe_grammar_matcher *m;
	cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
	int ok =
	    moe_grammar_matcher_accept_bytes(m, s, n) == MOE_OK && moe_grammar_matcher_can_end(m);
	moe_grammar_matcher_destroy(m);
	return ok;
}

int bit(const uint32_t *mask, uint32_t id)
{
	return (mask[id >> 5] >> (id & 31)) & 1;
}

/* fill_mask equals token_ok for every token of the vocabulary. */
void check_mask_exact(moe_grammar_matcher *m, const moe_grammar_vocab *v, const char *where)
{
	uint32_t n = moe_grammar_vocab_n(v);
	uint32_t *mask = malloc(moe_grammar_mask_words(v) * sizeof(uint32_t));
	cr_assert(moe_grammar_matcher_fill_mask(m, mask) == MOE_OK, "%s", moe_err_detail());
	for (uint32_t id = 0; id < n; id++) {
		int want = moe_grammar_matcher_token_ok(m, (int32_t)id);
		cr_assert_eq(bit(mask, id), want, "%s: token %u: mask %d, token_ok %d", where, id,
		             bit(mask, id), want);
	}
	free(mask);
}

/* ---- grammar text ----------------------------------------------------------------- */

/* ---- JSON schemas ----------------------------------------------------------------- */

const char *const schemas[] = {
    /* 0 json_object */
    "{\"type\": \"object\"}",
    /* 1 */
    "{\"type\": \"object\", \"properties\": {\"location\": {\"type\": \"string\", "
    "\"description\": \"City\"}, \"unit\": {\"enum\": [\"celsius\", \"fahrenheit\"]}}, "
    "\"required\": [\"location\"], \"additionalProperties\": false}",
    /* 2 */
    "{\"type\": \"object\", \"properties\": {\"s\": {\"type\": \"string\"}, \"n\": {\"type\": "
    "\"number\"}, \"i\": {\"type\": \"integer\"}, \"b\": {\"type\": \"boolean\"}, \"z\": "
    "{\"type\": \"null\"}, \"a\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}, "
    "\"o\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"string\"}}, "
    "\"required\": [\"x\"]}}, \"required\": [\"s\", \"n\", \"i\", \"b\", \"z\", \"a\", \"o\"]}",
    /* 3 */
    "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": "
    "\"boolean\"}, \"c\": {\"type\": \"string\"}, \"d\": {\"type\": \"null\"}, \"e\": "
    "{\"type\": \"number\"}}, \"required\": [\"b\", \"d\"]}",
    /* 4 */
    "{\"type\": \"object\", \"properties\": {\"id\": {\"type\": \"integer\"}}, \"required\": "
    "[\"id\"], \"additionalProperties\": {\"type\": \"string\"}}",
    /* 5 */
    "{\"type\": \"array\", \"items\": {\"type\": \"string\", \"maxLength\": 3}, \"minItems\": "
    "2, \"maxItems\": 4}",
    /* 6 */
    "{\"type\": \"array\", \"prefixItems\": [{\"type\": \"integer\"}, {\"type\": \"string\"}], "
    "\"items\": {\"type\": \"boolean\"}, \"minItems\": 1, \"maxItems\": 4}",
    /* 7 */
    "{\"type\": \"object\", \"properties\": {\"v\": {\"type\": [\"string\", \"null\"]}, \"w\": "
    "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"array\", \"items\": {\"type\": "
    "\"null\"}, \"maxItems\": 2}]}}, \"required\": [\"v\", \"w\"]}",
    /* 8 */
    "{\"type\": \"object\", \"properties\": {\"kind\": {\"const\": \"point\"}, \"tag\": "
    "{\"enum\": [\"a\", 1, null, true, {\"x\": [1, 2]}, \"q\\\"\\u00e9\"]}}, \"required\": "
    "[\"kind\", \"tag\"]}",
    /* 9 */
    "{\"type\": \"object\", \"properties\": {\"code\": {\"type\": \"string\", \"minLength\": 2, "
    "\"maxLength\": 4}, \"day\": {\"type\": \"string\", \"format\": \"date\"}, \"at\": "
    "{\"type\": \"string\", \"format\": \"date-time\"}, \"id\": {\"type\": \"string\", "
    "\"format\": \"uuid\"}, \"t\": {\"type\": \"string\", \"format\": \"time\"}}, "
    "\"required\": [\"code\", \"day\", \"at\", \"id\", \"t\"]}",
    /* 10 */
    "{\"type\": \"object\", \"properties\": {\"iata\": {\"type\": \"string\", \"pattern\": "
    "\"^[A-Z]{3}$\", \"examples\": [\"SFO\", \"NRT\"]}, \"ver\": {\"type\": \"string\", "
    "\"pattern\": \"^v\\\\d+(\\\\.\\\\d+){0,2}(-beta)?$\", \"examples\": [\"v1\", "
    "\"v2.10.3-beta\"]}, \"any\": {\"type\": \"string\", \"pattern\": \"a(b|c\\\\.)\", "
    "\"examples\": [\"xxab\", \"ac.\", \"\\\"ab\\\\\"]}}, \"required\": [\"iata\", \"ver\", "
    "\"any\"]}",
    /* 11 */
    "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {\"name\": {\"type\": "
    "\"string\", \"maxLength\": 8}, \"children\": {\"type\": \"array\", \"items\": {\"$ref\": "
    "\"#/$defs/node\"}, \"maxItems\": 2}}, \"required\": [\"name\"]}}, \"$ref\": "
    "\"#/$defs/node\"}",
    /* 12 */
    "{\"allOf\": [{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}, "
    "\"required\": [\"a\"]}, {\"type\": \"object\", \"properties\": {\"b\": {\"type\": "
    "\"boolean\"}}}]}",
    /* 13 */
    "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 1}, "
    "\"z\": {\"type\": \"integer\", \"minimum\": 0}, \"f\": {\"type\": \"number\", \"minimum\": "
    "0}}, \"required\": [\"n\", \"z\", \"f\"]}",
    /* 14 */
    "{\"definitions\": {\"p\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": "
    "\"number\"}, \"y\": {\"type\": \"number\"}}, \"required\": [\"x\", \"y\"], "
    "\"additionalProperties\": false}}, \"type\": \"object\", \"properties\": {\"from\": "
    "{\"$ref\": \"#/definitions/p\"}, \"to\": {\"$ref\": \"#/definitions/p\"}}, \"required\": "
    "[\"from\"], \"additionalProperties\": true}",
    /* 15 integer ranges */
    "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\", \"minimum\": -120, "
    "\"maximum\": -3}, \"b\": {\"type\": \"integer\", \"exclusiveMinimum\": 0, "
    "\"exclusiveMaximum\": 100}, \"c\": {\"type\": \"integer\", \"minimum\": 99, \"maximum\": "
    "1000}, \"d\": {\"type\": \"integer\", \"minimum\": -5}, \"e\": {\"type\": \"integer\", "
    "\"maximum\": 7.5}, \"f\": {\"type\": \"integer\", \"format\": \"int32\"}, \"g\": {\"type\": "
    "[\"integer\", \"null\"], \"minimum\": 1.5, \"maximum\": 9007199254740992}, \"h\": {\"type\": "
    "\"integer\", \"nullable\": true, \"minimum\": -1, \"exclusiveMaximum\": 1}}, \"required\": "
    "[\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\"]}",
    /* 16 number ranges (integral bounds) */
    "{\"type\": \"object\", \"properties\": {\"p\": {\"type\": \"number\", \"minimum\": -1, "
    "\"maximum\": 1}, \"q\": {\"type\": \"number\", \"exclusiveMinimum\": 0, "
    "\"exclusiveMaximum\": 10}, \"r\": {\"type\": \"number\", \"maximum\": -2}, \"s\": {\"type\": "
    "\"number\", \"exclusiveMinimum\": -3}}, \"required\": [\"p\", \"q\", \"r\", \"s\"]}",
};
#define SCHEMA_COUNT (sizeof schemas / sizeof *schemas)
const size_t n_schemas = SCHEMA_COUNT;

/* ---- an independent generator of valid documents (the whitespace and
 * property-order policy of grammar.h, the schema's constraints) ---- */

static void gen_ws(sb *b, uint64_t *s)
{
	uint64_t r = rng(s) % 6;
	if (r == 1) {
		sb_puts(b, " ");
	} else if (r == 2) {
		sb_puts(b, "\n");
		for (uint64_t k = rng(s) % 25; k > 0; k--)
			sb_puts(b, rng(s) % 4 ? " " : "\t");
	}
}

static const cJSON *deref(const cJSON *root, const cJSON *x)
{
	const cJSON *r = cJSON_GetObjectItem(x, "$ref");
	if (!cJSON_IsString(r))
		return x;
	const char *p = r->valuestring;
	if (!strncmp(p, "#/$defs/", 8))
		return cJSON_GetObjectItem(cJSON_GetObjectItem(root, "$defs"), p + 8);
	return cJSON_GetObjectItem(cJSON_GetObjectItem(root, "definitions"), p + 14);
}

static void put_json(sb *b, const cJSON *v)
{
	char *t = cJSON_PrintUnformatted(v);
	sb_puts(b, t);
	free(t);
}

/* A random string of n code points in JSON form. */
static void gen_chars(sb *b, uint64_t *s, uint32_t n)
{
	static const char *const pool[] = {
	    "a", "Z",  "q", " ",       "7",       "\\\"",    "\\\\", "/", "\\/", "\\n", "\\t",
	    "é", "日", "😀", "\\u00e9", "\\u20AC", "\\uFFFF", "'",    "}", ",",   ":"};
	for (uint32_t i = 0; i < n; i++) {
		sb_puts(b, pool[rng(s) % (sizeof pool / sizeof *pool)]);
	}
}

static void gen_value(sb *b, const cJSON *root, const cJSON *x, uint64_t *s, int depth);

static void gen_any(sb *b, uint64_t *s, int depth)
{
	uint64_t r = rng(s) % (depth > 2 ? 4 : 6);
	static const char *const atoms[] = {"null", "true", "false", "0", "-12.5e3", "42"};
	if (r == 0) {
		sb_puts(b, atoms[rng(s) % 6]);
	} else if (r <= 3) {
		sb_puts(b, "\"");
		gen_chars(b, s, (uint32_t)(rng(s) % 6));
		sb_puts(b, "\"");
	} else if (r == 4) {
		sb_puts(b, "[");
		gen_ws(b, s);
		for (uint64_t k = rng(s) % 3, i = 0; i < k; i++) {
			if (i)
				sb_puts(b, ","), gen_ws(b, s);
			gen_any(b, s, depth + 1);
			gen_ws(b, s);
		}
		sb_puts(b, "]");
	} else {
		sb_puts(b, "{");
		gen_ws(b, s);
		for (uint64_t k = rng(s) % 3, i = 0; i < k; i++) {
			if (i)
				sb_puts(b, ","), gen_ws(b, s);
			sb_puts(b, "\"");
			gen_chars(b, s, (uint32_t)(rng(s) % 4));
			sb_puts(b, "\"");
			gen_ws(b, s);
			sb_puts(b, ":");
			gen_ws(b, s);
			gen_any(b, s, depth + 1);
			gen_ws(b, s);
		}
		sb_puts(b, "}");
	}
}

static void gen_object(sb *b, const cJSON *root, const cJSON *props, const cJSON *req,
                       const cJSON *addl, uint64_t *s, int depth)
{
	sb_puts(b, "{");
	gen_ws(b, s);
	int n = 0;
	for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
		int is_req = 0;
		for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
			is_req |= !strcmp(r->valuestring, p->string);
		if (!is_req && (depth > 3 || rng(s) % 2))
			continue;
		if (n++)
			sb_puts(b, ","), gen_ws(b, s);
		cJSON *name = cJSON_CreateString(p->string);
		put_json(b, name);
		cJSON_Delete(name);
		gen_ws(b, s);
		sb_puts(b, ":");
		gen_ws(b, s);
		gen_value(b, root, p, s, depth + 1);
		gen_ws(b, s);
	}
	int extra = addl == NULL ? props == NULL : !cJSON_IsFalse(addl);
	for (uint64_t k = extra ? rng(s) % 3 : 0; k > 0; k--) {
		if (n++)
			sb_puts(b, ","), gen_ws(b, s);
		char key[16];
		snprintf(key, sizeof key, "\"k%u\"", (unsigned)(rng(s) % 1000));
		sb_puts(b, key);
		gen_ws(b, s);
		sb_puts(b, ":");
		gen_ws(b, s);
		if (addl == NULL || cJSON_IsTrue(addl))
			gen_any(b, s, depth + 1);
		else
			gen_value(b, root, addl, s, depth + 1);
		gen_ws(b, s);
	}
	sb_puts(b, "}");
}

static uint32_t get_u(const cJSON *x, const char *k, uint32_t dflt)
{
	const cJSON *v = cJSON_GetObjectItem(x, k);
	return cJSON_IsNumber(v) ? (uint32_t)v->valuedouble : dflt;
}

/* Whether v meets the bounds of schema x. */
int in_bounds(const cJSON *x, double v)
{
	const cJSON *min = cJSON_GetObjectItem(x, "minimum"),
	            *max = cJSON_GetObjectItem(x, "maximum"),
	            *xmin = cJSON_GetObjectItem(x, "exclusiveMinimum"),
	            *xmax = cJSON_GetObjectItem(x, "exclusiveMaximum");
	return (!min || v >= min->valuedouble) && (!xmin || v > xmin->valuedouble) &&
	       (!max || v <= max->valuedouble) && (!xmax || v < xmax->valuedouble);
}

/* A number of schema x (one lower and one upper bound at most): an integer
 * within the bounds (now and then a bound itself), for numbers now and then
 * v.25 (or -|v|.25) where that is within them too; an exponent only where no
 * bound but minimum 0 is given. */
static void gen_number(sb *b, const cJSON *x, int integer, uint64_t *s)
{
	const cJSON *min = cJSON_GetObjectItem(x, "minimum"),
	            *max = cJSON_GetObjectItem(x, "maximum"),
	            *xmin = cJSON_GetObjectItem(x, "exclusiveMinimum"),
	            *xmax = cJSON_GetObjectItem(x, "exclusiveMaximum");
	long long lo = min    ? (long long)ceil(min->valuedouble)
	               : xmin ? (long long)floor(xmin->valuedouble) + 1
	                      : LLONG_MIN;
	long long hi = max    ? (long long)floor(max->valuedouble)
	               : xmax ? (long long)ceil(xmax->valuedouble) - 1
	                      : LLONG_MAX;
	if (lo == LLONG_MIN)
		lo = hi == LLONG_MAX ? -50000 : hi - 100000;
	if (hi == LLONG_MAX)
		hi = lo + 100000;
	uint64_t r = rng(s) % 8;
	long long v = r == 0   ? lo
	              : r == 1 ? hi
	                       : lo + (long long)(rng(s) % (uint64_t)(hi - lo + 1));
	char tmp[64];
	snprintf(tmp, sizeof tmp, "%lld", v);
	sb_puts(b, tmp);
	if (integer || rng(s) % 2) {
		return;
	} else if (!max && !xmax && !xmin && (!min || min->valuedouble == 0)) {
		snprintf(tmp, sizeof tmp, ".%u%s", (unsigned)(rng(s) % 1000),
		         rng(s) % 2 ? "e-7" : "E+2");
		sb_puts(b, tmp);
	} else if (in_bounds(x, (double)v + (v < 0 ? -0.25 : 0.25))) {
		sb_puts(b, ".25");
	}
}

static void gen_typed(sb *b, const cJSON *root, const cJSON *x, const char *type, uint64_t *s,
                      int depth)
{
	char tmp[64];
	if (!strcmp(type, "object")) {
		gen_object(b, root, cJSON_GetObjectItem(x, "properties"),
		           cJSON_GetObjectItem(x, "required"),
		           cJSON_GetObjectItem(x, "additionalProperties"), s, depth);
	} else if (!strcmp(type, "array")) {
		uint32_t lo = get_u(x, "minItems", 0), hi = get_u(x, "maxItems", lo + 3);
		if (depth > 3)
			hi = lo;
		const cJSON *pre = cJSON_GetObjectItem(x, "prefixItems");
		uint32_t n = lo + (uint32_t)(rng(s) % (hi - lo + 1));
		sb_puts(b, "[");
		gen_ws(b, s);
		const cJSON *pj = pre ? pre->child : NULL;
		for (uint32_t i = 0; i < n; i++) {
			if (i)
				sb_puts(b, ","), gen_ws(b, s);
			const cJSON *it = pj ? pj : cJSON_GetObjectItem(x, "items");
			if (pj)
				pj = pj->next;
			if (it)
				gen_value(b, root, it, s, depth + 1);
			else
				gen_any(b, s, depth + 1);
			gen_ws(b, s);
		}
		sb_puts(b, "]");
	} else if (!strcmp(type, "string")) {
		const cJSON *ex = cJSON_GetObjectItem(x, "examples");
		const cJSON *fmt = cJSON_GetObjectItem(x, "format");
		const char *f = cJSON_IsString(fmt) ? fmt->valuestring : "";
		int mo = 1 + (int)(rng(s) % 12), da = 1 + (int)(rng(s) % 28);
		char date[16], time[32];
		snprintf(date, sizeof date, "%04d-%02d-%02d", (int)(rng(s) % 10000), mo, da);
		snprintf(time, sizeof time, "%02d:%02d:%02d%s", (int)(rng(s) % 24),
		         (int)(rng(s) % 60), (int)(rng(s) % 60), rng(s) % 2 ? "Z" : "+05:30");
		if (ex) {
			put_json(b, cJSON_GetArrayItem(
			                ex, (int)(rng(s) % (uint64_t)cJSON_GetArraySize(ex))));
		} else if (!strcmp(f, "date")) {
			snprintf(tmp, sizeof tmp, "\"%s\"", date);
			sb_puts(b, tmp);
		} else if (!strcmp(f, "time")) {
			snprintf(tmp, sizeof tmp, "\"%s\"", time);
			sb_puts(b, tmp);
		} else if (!strcmp(f, "date-time")) {
			snprintf(tmp, sizeof tmp, "\"%sT%s\"", date, time);
			sb_puts(b, tmp);
		} else if (!strcmp(f, "uuid")) {
			snprintf(tmp, sizeof tmp, "\"%08x-%04x-%04x-%04x-%012llx\"",
			         (unsigned)rng(s), (unsigned)(rng(s) & 0xFFFF),
			         (unsigned)(rng(s) & 0xFFFF), (unsigned)(rng(s) & 0xFFFF),
			         (unsigned long long)(rng(s) & 0xFFFFFFFFFFFFull));
			sb_puts(b, tmp);
		} else {
			uint32_t lo = get_u(x, "minLength", 0), hi = get_u(x, "maxLength", lo + 8);
			sb_puts(b, "\"");
			gen_chars(b, s, lo + (uint32_t)(rng(s) % (hi - lo + 1)));
			sb_puts(b, "\"");
		}
	} else if (!strcmp(type, "integer") || !strcmp(type, "number")) {
		gen_number(b, x, !strcmp(type, "integer"), s);
	} else if (!strcmp(type, "boolean")) {
		sb_puts(b, rng(s) % 2 ? "true" : "false");
	} else {
		sb_puts(b, "null");
	}
}

static void gen_value(sb *b, const cJSON *root, const cJSON *x, uint64_t *s, int depth)
{
	x = deref(root, x);
	const cJSON *k;
	if (cJSON_IsTrue(cJSON_GetObjectItem(x, "nullable")) && rng(s) % 3 == 0) {
		sb_puts(b, "null");
	} else if ((k = cJSON_GetObjectItem(x, "const")) != NULL) {
		put_json(b, k);
	} else if ((k = cJSON_GetObjectItem(x, "enum")) != NULL) {
		put_json(b, cJSON_GetArrayItem(k, (int)(rng(s) % (uint64_t)cJSON_GetArraySize(k))));
	} else if ((k = cJSON_GetObjectItem(x, "anyOf")) != NULL) {
		gen_value(b, root,
		          cJSON_GetArrayItem(k, (int)(rng(s) % (uint64_t)cJSON_GetArraySize(k))), s,
		          depth);
	} else if ((k = cJSON_GetObjectItem(x, "allOf")) != NULL) {
		cJSON *props = cJSON_CreateObject(), *req = cJSON_CreateArray();
		for (const cJSON *p = k->child; p; p = p->next) {
			for (const cJSON *q = cJSON_GetObjectItem(p, "properties")->child; q;
			     q = q->next)
				cJSON_AddItemToObject(props, q->string, cJSON_Duplicate(q, 1));
			const cJSON *r = cJSON_GetObjectItem(p, "required");
			for (const cJSON *q = r ? r->child : NULL; q; q = q->next)
				cJSON_AddItemToArray(req, cJSON_Duplicate(q, 1));
		}
		cJSON *f = cJSON_CreateFalse();
		gen_object(b, root, props, req, f, s, depth);
		cJSON_Delete(f);
		cJSON_Delete(props);
		cJSON_Delete(req);
	} else if ((k = cJSON_GetObjectItem(x, "type")) != NULL) {
		if (cJSON_IsArray(k))
			k = cJSON_GetArrayItem(k, (int)(rng(s) % (uint64_t)cJSON_GetArraySize(k)));
		gen_typed(b, root, x, k->valuestring, s, depth);
	} else {
		gen_any(b, s, depth);
	}
}

char *gen_doc(size_t schema, uint64_t seed)
{
	cJSON *root = cJSON_Parse(schemas[schema]);
	cr_assert(root != NULL);
	sb b = {0};
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + schema + 1;
	gen_value(&b, root, root, &s, 0);
	cJSON_Delete(root);
	return b.p;
}

/* Grammar and tables of schema i over the Qwen3 vocabulary (built once). */
moe_grammar_tables *schema_tables(size_t i)
{
	static moe_grammar *g[SCHEMA_COUNT];
	static moe_grammar_tables *t[SCHEMA_COUNT];
	if (t[i] == NULL) {
		moe_err err = moe_grammar_from_json_schema(&g[i], schemas[i], strlen(schemas[i]));
		cr_assert(err == MOE_OK, "schema %zu: %s: %s", i, moe_err_name(err),
		          moe_err_detail());
		err = moe_grammar_tables_create(&t[i], g[i], qvocab());
		cr_assert(err == MOE_OK, "schema %zu tables: %s", i, moe_err_detail());
	}
	return t[i];
}
