/*
 * schema.c - JSON schemas into grammar text: one rule per object, array,
 * constrained string, $ref target and property, shared rules for the JSON
 * primitives and for any value, and the bounded whitespace; numeric bounds
 * (range.c writes the ranges); the lenient mode's list of what was not
 * enforced.  grammar.h lists what is covered, refused and ignored.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

#define S_MAX_DEPTH 64

/* One JSON string character: unescaped (no control characters, no DEL) or
 * an escape; \u escapes of surrogates are left out, so that each element is
 * one code point (what minLength / maxLength count). */
#define CHAR_EXPR                                                                                  \
	"( [^\"\\\\\\x00-\\x1F\\x7F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-C] "           \
	"[0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3} ) ) )"
/* A character of a key that no escape can spell. */
#define KEYCHAR_CLASS "[^\"\\\\\\x00-\\x1F\\x7F]"

enum {
	P_WS = 1 << 0,
	P_STRING = 1 << 1,
	P_NUMBER = 1 << 2,
	P_INTEGER = 1 << 3,
	P_BOOLEAN = 1 << 4,
	P_NULL = 1 << 5,
	P_VALUE = 1 << 6,
	P_OBJECT = 1 << 7,
	P_ARRAY = 1 << 8,
	P_UNUMBER = 1 << 9,
};

typedef struct ref_rule {
	char *ref;
	char *name;
} ref_rule;

typedef struct sctx {
	g_buf rules;
	const char *prefix;
	const cJSON *doc;
	moe_err err;
	uint32_t prims, n_names;
	ref_rule *refs;
	size_t n_refs, cap_refs;
	unsigned flags;
	g_buf ignored; /* the keywords not enforced, comma-separated, each once */
} sctx;

static int fail(sctx *c, moe_err err)
{
	if (c->err == MOE_OK)
		c->err = err;
	return -1;
}

static int lenient(const sctx *c)
{
	return (c->flags & MOE_GRAMMAR_SCHEMA_LENIENT) != 0;
}

/* Adds keyword kw to the list of those not enforced (once). */
static void note(sctx *c, const char *kw)
{
	size_t n = strlen(kw);
	for (const char *p = c->ignored.p; p != NULL && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && memcmp(p, kw, n) == 0)
			return;
		p += len + (end != NULL);
	}
	if (c->ignored.n > 0)
		g_buf_puts(&c->ignored, ",");
	g_buf_puts(&c->ignored, kw);
}

/* A keyword that constrains values but cannot be enforced here: noted when
 * lenient (returns 0), refused otherwise. */
static int unenforced(sctx *c, const char *kw, const char *why)
{
	if (lenient(c)) {
		note(c, kw);
		return 0;
	}
	return fail(c, moe_fail(MOE_ERR_UNSUPPORTED, "json schema: %s", why));
}

/* Appends a fresh rule name "<prefix><hint>-<n>" to b. */
static void new_name(sctx *c, g_buf *b, const char *hint)
{
	g_buf_printf(b, "%s%s-%u", c->prefix, hint, ++c->n_names);
}

static void prim(sctx *c, g_buf *b, uint32_t which, const char *name)
{
	c->prims |= which;
	g_buf_printf(b, "%s%s", c->prefix, name);
}

static const char *const annotations[] = {
    "title",    "description",      "default",         "examples",  "$schema", "$id",
    "$comment", "deprecated",       "readOnly",        "writeOnly", "$defs",   "definitions",
    "format",   "contentMediaType", "contentEncoding", "strict",    NULL};

static const char *const handled[] = {
    "type",     "properties", "required",    "additionalProperties",
    "enum",     "const",      "anyOf",       "oneOf",
    "allOf",    "items",      "prefixItems", "minItems",
    "maxItems", "minLength",  "maxLength",   "pattern",
    "$ref",     "nullable",   NULL};

/* The bounds of numbers (read_bounds: lower ones first, inclusive first). */
static const char *const bounds[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
                                     NULL};

static int in_list(const char *const *l, const char *s)
{
	for (; *l; l++)
		if (strcmp(*l, s) == 0)
			return 1;
	return 0;
}

static int gen(sctx *c, const cJSON *s, g_buf *e, int depth);

static int check_keywords(sctx *c, const cJSON *s)
{
	for (const cJSON *k = s->child; k; k = k->next) {
		if (in_list(annotations, k->string) || in_list(handled, k->string) ||
		    in_list(bounds, k->string))
			continue;
		if (!lenient(c))
			return fail(c, moe_fail(MOE_ERR_UNSUPPORTED,
			                        "json schema: keyword \"%s\" is not supported",
			                        k->string));
		note(c, k->string);
	}
	return 0;
}

static int get_count(sctx *c, const cJSON *s, const char *key, uint32_t *out, uint32_t dflt)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, key);
	*out = dflt;
	if (x == NULL)
		return 0;
	/* doubles from 2^53 up are all whole; below it the cast is defined (a
	 * cast of one beyond long long's range is not: fuzz_schema found a
	 * maxLength of 7.3e22) */
	const double v = x->valuedouble;
	if (!cJSON_IsNumber(x) || !(v >= 0) || (v < 0x1p53 && v != (double)(long long)v))
		return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: %s is not a count", key));
	if (x->valuedouble > G_MAX_REPEAT) {
		if (lenient(c)) {
			note(c, key);
			return 0;
		}
		return fail(c, moe_fail(MOE_ERR_UNSUPPORTED, "json schema: %s above %u", key,
		                        G_MAX_REPEAT));
	}
	*out = (uint32_t)x->valuedouble;
	return 0;
}

/* Appends {lo,hi} (hi G_INF: {lo,}) after an element. */
static void put_rep(g_buf *e, uint32_t lo, uint32_t hi)
{
	if (hi == G_INF)
		g_buf_printf(e, "{%u,}", lo);
	else
		g_buf_printf(e, "{%u,%u}", lo, hi);
}

/* A JSON value written as a literal (enum, const). */
static int literal_value(sctx *c, const cJSON *v, g_buf *e)
{
	char *txt = cJSON_PrintUnformatted(v);
	if (txt == NULL)
		return fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: enum value"));
	g_buf_puts(e, "\"");
	g_buf_lit(e, txt, strlen(txt));
	g_buf_puts(e, "\"");
	cJSON_free(txt);
	return 0;
}

static int known_format(const char *f)
{
	return !strcmp(f, "date") || !strcmp(f, "time") || !strcmp(f, "date-time") ||
	       !strcmp(f, "uuid");
}

static int gen_string(sctx *c, const cJSON *s, g_buf *e)
{
	uint32_t lo, hi;
	if (get_count(c, s, "minLength", &lo, 0) || get_count(c, s, "maxLength", &hi, G_INF))
		return -1;
	if (hi != G_INF && hi < lo)
		return fail(c,
		            moe_fail(MOE_ERR_BAD_VALUE, "json schema: maxLength below minLength"));
	const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
	const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
	const char *f = cJSON_IsString(fmt) ? fmt->valuestring : "";
	g_buf body = {0};
	int rc = 0, use_pat = 0;
	if (pat != NULL) {
		if (!cJSON_IsString(pat)) {
			rc = fail(c,
			          moe_fail(MOE_ERR_FORMAT, "json schema: pattern is not a string"));
			goto out_free_body;
		}
		g_buf_puts(&body, "\"\\\"\" ");
		moe_err err = g_regex_to_gbnf(&body, pat->valuestring, strlen(pat->valuestring));
		if (err == MOE_ERR_UNSUPPORTED && lenient(c)) {
			note(c, "pattern"); /* any string of the lengths instead */
			body.n = 0;
			if (body.p != NULL)
				body.p[0] = 0;
		} else if (err != MOE_OK) {
			rc = fail(c, err);
			goto out_free_body;
		} else {
			use_pat = 1;
			g_buf_puts(&body, " \"\\\"\"");
		}
	}
	if (use_pat && (lo != 0 || hi != G_INF)) {
		if (!lenient(c)) {
			rc = fail(
			    c, moe_fail(MOE_ERR_UNSUPPORTED,
			                "json schema: pattern together with minLength/maxLength"));
			goto out_free_body;
		}
		if (lo != 0)
			note(c, "minLength");
		if (hi != G_INF)
			note(c, "maxLength");
		lo = 0;
		hi = G_INF;
	}
	if (f[0] != 0 && (!known_format(f) || use_pat || lo != 0 || hi != G_INF))
		note(c, "format"); /* an annotation (draft 2020-12): not enforced */
	if (use_pat) {
		/* body holds the pattern */
	} else if (lo == 0 && hi == G_INF && !known_format(f)) {
		prim(c, e, P_STRING, "string");
		goto out_free_body;
	} else if (lo != 0 || hi != G_INF) {
		g_buf_puts(&body, "\"\\\"\" " CHAR_EXPR);
		put_rep(&body, lo, hi);
		g_buf_puts(&body, " \"\\\"\"");
	} else {
		static const char date[] =
		    "[0-9]{4} \"-\" ( ( \"0\" [13578] | \"1\" [02] ) \"-\" ( \"0\" [1-9] | [12] "
		    "[0-9] | "
		    "\"3\" [01] ) | ( \"0\" [469] | \"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | "
		    "\"30\" ) | "
		    "\"02\" \"-\" ( \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8] ) )";
		static const char time[] =
		    "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" "
		    "[0-9]{1,6} )? "
		    "( \"Z\" | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )";
		static const char uuid[] = "[0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" "
		                           "[0-9a-f]{4} \"-\" [0-9a-f]{12}";
		g_buf_puts(&body, "\"\\\"\" ");
		if (!strcmp(f, "date")) {
			g_buf_puts(&body, date);
		} else if (!strcmp(f, "time")) {
			g_buf_puts(&body, time);
		} else if (!strcmp(f, "date-time")) {
			g_buf_puts(&body, date);
			g_buf_puts(&body, " \"T\" ");
			g_buf_puts(&body, time);
		} else {
			g_buf_puts(&body, uuid);
		}
		g_buf_puts(&body, " \"\\\"\"");
	}
	g_buf name = {0};
	new_name(c, &name, "string");
	g_buf_printf(&c->rules, "%s ::= %s\n", name.p ? name.p : "", body.p ? body.p : "");
	g_buf_puts(e, name.p ? name.p : "");
	free(name.p);
out_free_body:
	free(body.p);
	return rc;
}

/* The bounds of a number schema: minimum, exclusiveMinimum, maximum,
 * exclusiveMaximum, the tightest on each side, clipped to +-1e17.  For
 * integers inclusive and rounded inward; for numbers integral (another
 * bound is refused, or when lenient widened to the integer outside it,
 * included, and noted). */
static int read_bounds(sctx *c, const cJSON *s, int integer, g_bound *lo, g_bound *hi)
{
	const char *const *keys = bounds;
	*lo = *hi = (g_bound){0};
	for (int i = 0; i < 4; i++) {
		const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, keys[i]);
		if (x == NULL)
			continue;
		if (!cJSON_IsNumber(x) || isnan(x->valuedouble))
			return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: %s is not a number",
			                        keys[i]));
		int upper = i >= 2, excl = i & 1;
		double d = x->valuedouble > 1e17    ? 1e17
		           : x->valuedouble < -1e17 ? -1e17
		                                    : x->valuedouble;
		double r = upper ? floor(d) : ceil(d); /* the integer inside the bound */
		g_bound b = {.set = 1, .excl = excl, .v = (int64_t)r};
		if (integer) {
			if (excl && r == d)
				b.v += upper ? -1 : 1;
			b.excl = 0;
		} else if (r != d) {
			char why[128];
			snprintf(why, sizeof why, "%s %g on a number (only integral bounds)",
			         keys[i], x->valuedouble);
			if (unenforced(c, keys[i], why))
				return -1;
			b.v = (int64_t)(upper ? ceil(d) : floor(d));
			b.excl = 0;
		}
		g_bound *cur = upper ? hi : lo;
		if (!cur->set || (upper ? b.v < cur->v : b.v > cur->v) || (b.v == cur->v && b.excl))
			*cur = b;
	}
	return 0;
}

static int gen_number(sctx *c, const cJSON *s, g_buf *e, int integer)
{
	g_bound lo, hi;
	if (read_bounds(c, s, integer, &lo, &hi))
		return -1;
	const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
	const char *f = cJSON_IsString(fmt) ? fmt->valuestring : "";
	if (integer && !strcmp(f, "int32")) {
		if (!lo.set || lo.v < -2147483648ll)
			lo = (g_bound){.set = 1, .v = -2147483648ll};
		if (!hi.set || hi.v > 2147483647ll)
			hi = (g_bound){.set = 1, .v = 2147483647ll};
	} else if (f[0] != 0 && strcmp(f, "float") && strcmp(f, "double") &&
	           !(integer && !strcmp(f, "int64"))) {
		note(c, "format"); /* an annotation (draft 2020-12): not enforced */
	}
	if (!lo.set && !hi.set) {
		if (integer)
			prim(c, e, P_INTEGER, "integer");
		else
			prim(c, e, P_NUMBER, "number");
		return 0;
	}
	if (!integer && lo.set && lo.v == 0 && !lo.excl && !hi.set) {
		prim(c, e, P_UNUMBER, "unumber"); /* with an exponent: no sign is enough */
		return 0;
	}
	g_buf body = {0}, name = {0};
	int rc = 0;
	if (integer) {
		const int64_t cap = (int64_t)G_INT_CAP;
		int64_t a = lo.set && lo.v > -cap ? lo.v : -cap,
		        b = hi.set && hi.v < cap ? hi.v : cap;
		if (a > b) {
			rc = fail(c,
			          moe_fail(MOE_ERR_BAD_VALUE,
			                   "json schema: no integer of at most 16 digits is within "
			                   "the bounds"));
			goto out_free;
		}
		g_range_int(&body, a, b);
	} else if (g_range_number(&body, lo, hi) == 0) {
		rc = fail(c, moe_fail(MOE_ERR_BAD_VALUE, "json schema: no number of at most 16 "
		                                         "integer digits is within the bounds"));
		goto out_free;
	}
	new_name(c, &name, integer ? "integer" : "number");
	g_buf_printf(&c->rules, "%s ::= %s\n", name.p ? name.p : "", body.p ? body.p : "");
	g_buf_puts(e, name.p ? name.p : "");
out_free:
	free(body.p);
	free(name.p);
	return rc;
}

/* The key of an additional property: a string without escapes that is none
 * of the declared names (a trie of them, one rule per node). */
typedef struct trie {
	uint32_t cp;
	int terminal;
	struct trie *kids, *next;
} trie;

static void trie_free(trie *t)
{
	while (t != NULL) {
		trie *n = t->next;
		trie_free(t->kids);
		free(t);
		t = n;
	}
}

static void emit_trie(sctx *c, const trie *t, int terminal, const char *name)
{
	g_buf body = {0};
	const char *sep = "";
	if (!terminal) {
		g_buf_puts(&body, "\"\"");
		sep = " | ";
	}
	g_buf_printf(&body, "%s[^\"\\\\\\x00-\\x1F\\x7F", sep);
	for (const trie *k = t; k; k = k->next)
		g_buf_printf(&body, "\\U%08X", k->cp);
	g_buf_puts(&body, "] " KEYCHAR_CLASS "*");
	for (const trie *k = t; k; k = k->next) {
		g_buf kn = {0};
		new_name(c, &kn, "key");
		g_buf_printf(&body, " | \"\\U%08X\" %s", k->cp, kn.p ? kn.p : "");
		emit_trie(c, k->kids, k->terminal, kn.p ? kn.p : "");
		free(kn.p);
	}
	g_buf_printf(&c->rules, "%s ::= %s\n", name, body.p ? body.p : "");
	free(body.p);
}

static int gen_other_key(sctx *c, const cJSON *props, g_buf *e)
{
	trie *root = NULL;
	for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
		const unsigned char *s = (const unsigned char *)p->string;
		if (strlen(p->string) > 256) {
			trie_free(root);
			return fail(c,
			            moe_fail(MOE_ERR_UNSUPPORTED,
			                     "json schema: a property name longer than 256 bytes "
			                     "with additionalProperties"));
		}
		int plain = 1;
		for (const unsigned char *q = s; *q; q++)
			if (*q == '"' || *q == '\\' || *q < 0x20 || *q == 0x7F)
				plain = 0;
		if (!plain)
			continue; /* no escape-free key can be equal to it */
		trie **level = &root, *node = NULL;
		uint32_t cp;
		while (*s) {
			const int k = g_utf8_next(s, strnlen((const char *)s, 4), &cp);
			if (k == 0) {
				trie_free(root);
				return fail(
				    c, moe_fail(MOE_ERR_FORMAT, "json schema: invalid UTF-8 key"));
			}
			s += k;
			for (node = *level; node && node->cp != cp; node = node->next)
				;
			if (node == NULL) {
				node = calloc(1, sizeof(*node));
				if (node == NULL) {
					trie_free(root);
					return fail(c,
					            moe_fail(MOE_ERR_NOMEM, "json schema: keys"));
				}
				node->cp = cp;
				node->next = *level;
				*level = node;
			}
			level = &node->kids;
		}
		if (node == NULL) { /* the empty name */
			trie_free(root);
			return fail(c, moe_fail(MOE_ERR_UNSUPPORTED,
			                        "json schema: an empty property name with "
			                        "additionalProperties"));
		}
		node->terminal = 1;
	}
	g_buf name = {0};
	new_name(c, &name, "key");
	emit_trie(c, root, 0, name.p ? name.p : "");
	g_buf_printf(e, "\"\\\"\" %s \"\\\"\"", name.p ? name.p : "");
	free(name.p);
	trie_free(root);
	return 0;
}

static int gen_object(sctx *c, const cJSON *props, const cJSON *required, const cJSON *addl,
                      g_buf *e, int depth)
{
	int n = props ? cJSON_GetArraySize(props) : 0;
	if (props && !cJSON_IsObject(props))
		return fail(c,
		            moe_fail(MOE_ERR_FORMAT, "json schema: properties is not an object"));
	if (required && !cJSON_IsArray(required))
		return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: required is not an array"));
	for (const cJSON *r = required ? required->child : NULL; r; r = r->next) {
		if (!cJSON_IsString(r))
			return fail(c, moe_fail(MOE_ERR_FORMAT,
			                        "json schema: required holds a non-string"));
		if (!cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
			return fail(c,
			            moe_fail(MOE_ERR_UNSUPPORTED,
			                     "json schema: required property \"%s\" is not among "
			                     "properties",
			                     r->valuestring));
	}
	/* absent additionalProperties: none when properties are declared, even
	 * as {} (a tool without parameters takes {}) */
	int extra = addl == NULL ? props == NULL : !cJSON_IsFalse(addl);
	if (n == 0 && !extra) {
		g_buf_puts(e, "\"{\" ");
		prim(c, e, P_WS, "ws");
		g_buf_puts(e, " \"}\"");
		return 0;
	}
	if (n == 0 &&
	    (addl == NULL || cJSON_IsTrue(addl) || (cJSON_IsObject(addl) && addl->child == NULL))) {
		prim(c, e, P_OBJECT, "object");
		return 0;
	}
	g_buf name = {0}, body = {0}, kv = {0};
	int rc = 0;
	new_name(c, &name, "object");
	const char *N = name.p ? name.p : "";
	char ws[128];
	snprintf(ws, sizeof ws, "%sws", c->prefix);
	c->prims |= P_WS;
	/* the properties, each as rule N-kv-i */
	int i = 0, first_req = -1, n_kv = 0;
	char(*kvname)[160] = calloc((size_t)n + 1, sizeof(*kvname));
	int *req = calloc((size_t)n + 1, sizeof(int));
	if (kvname == NULL || req == NULL) {
		rc = fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: object"));
		goto out_free;
	}
	for (const cJSON *p = props ? props->child : NULL; p; p = p->next) {
		int is_req = 0;
		for (const cJSON *r = required ? required->child : NULL; r; r = r->next)
			if (strcmp(r->valuestring, p->string) == 0)
				is_req = 1;
		if (cJSON_IsFalse(p)) {
			if (is_req) {
				rc = fail(c,
				          moe_fail(MOE_ERR_UNSUPPORTED,
				                   "json schema: required property \"%s\" is false",
				                   p->string));
				goto out_free;
			}
			continue;
		}
		kv.n = 0;
		g_buf_puts(&kv, "\"\\\"");
		/* the name as JSON writes it, inside a grammar literal */
		cJSON *tmp = cJSON_CreateString(p->string);
		char *js = tmp ? cJSON_PrintUnformatted(tmp) : NULL;
		cJSON_Delete(tmp);
		if (js == NULL) {
			rc = fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: property name"));
			goto out_free;
		}
		g_buf_lit(&kv, js + 1, strlen(js) - 2);
		cJSON_free(js);
		g_buf_printf(&kv, "\\\"\" %s \":\" %s ", ws, ws);
		if (gen(c, p, &kv, depth + 1)) {
			rc = -1;
			goto out_free;
		}
		g_buf_printf(&kv, " %s", ws);
		snprintf(kvname[n_kv], sizeof kvname[n_kv], "%s-kv%d", N, i);
		g_buf_printf(&c->rules, "%s ::= %s\n", kvname[n_kv], kv.p ? kv.p : "");
		req[n_kv] = is_req;
		if (is_req && first_req < 0)
			first_req = n_kv;
		n_kv++;
		i++;
	}
	/* additional properties: N-extra */
	char extra_name[160] = "";
	if (extra) {
		snprintf(extra_name, sizeof extra_name, "%s-extra", N);
		kv.n = 0;
		if (gen_other_key(c, props, &kv)) {
			rc = -1;
			goto out_free;
		}
		g_buf_printf(&kv, " %s \":\" %s ", ws, ws);
		if (addl == NULL || cJSON_IsTrue(addl))
			prim(c, &kv, P_VALUE, "value");
		else if (gen(c, addl, &kv, depth + 1)) {
			rc = -1;
			goto out_free;
		}
		g_buf_printf(&kv, " %s", ws);
		g_buf_printf(&c->rules, "%s ::= %s\n", extra_name, kv.p ? kv.p : "");
	}
	/* N-rest-i: what may follow property i (tail calls, so no stack depth) */
	for (int k = n_kv - 1; k >= 0; k--) {
		g_buf_printf(&c->rules, "%s-rest%d ::= ", N, k);
		if (k + 1 < n_kv)
			g_buf_printf(&c->rules, "%s\",\" %s %s %s %s-rest%d\n",
			             req[k + 1] ? "" : "( ", ws, kvname[k + 1],
			             req[k + 1] ? "" : ")?", N, k + 1);
		else if (extra)
			g_buf_printf(&c->rules, "( \",\" %s %s )*\n", ws, extra_name);
		else
			g_buf_puts(&c->rules, "\"\"\n");
	}
	g_buf_printf(&body, "\"{\" %s ", ws);
	const char *sep = "";
	int last = first_req >= 0 ? first_req : n_kv - 1;
	g_buf_puts(&body, "( ");
	for (int k = 0; k <= last; k++) {
		g_buf_printf(&body, "%s%s %s-rest%d", sep, kvname[k], N, k);
		sep = " | ";
	}
	if (first_req < 0 && extra)
		g_buf_printf(&body, "%s%s ( \",\" %s %s )*", sep, extra_name, ws, extra_name);
	g_buf_printf(&body, " )%s \"}\"", first_req < 0 ? "?" : "");
	g_buf_printf(&c->rules, "%s ::= %s\n", N, body.p ? body.p : "");
	g_buf_puts(e, N);
out_free:
	free(kvname);
	free(req);
	free(name.p);
	free(body.p);
	free(kv.p);
	return rc;
}

static int gen_array(sctx *c, const cJSON *s, g_buf *e, int depth)
{
	uint32_t lo, hi;
	if (get_count(c, s, "minItems", &lo, 0) || get_count(c, s, "maxItems", &hi, G_INF))
		return -1;
	if (hi != G_INF && hi < lo)
		return fail(c, moe_fail(MOE_ERR_BAD_VALUE, "json schema: maxItems below minItems"));
	const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
	const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(s, "prefixItems");
	if (items && !cJSON_IsObject(items) && !cJSON_IsBool(items))
		return fail(c, moe_fail(MOE_ERR_UNSUPPORTED,
		                        "json schema: items must be a schema (use prefixItems)"));
	if (prefix && !cJSON_IsArray(prefix))
		return fail(c,
		            moe_fail(MOE_ERR_FORMAT, "json schema: prefixItems is not an array"));
	uint32_t k = prefix ? (uint32_t)cJSON_GetArraySize(prefix) : 0;
	if (k > 32)
		return fail(c,
		            moe_fail(MOE_ERR_UNSUPPORTED, "json schema: more than 32 prefixItems"));
	int more = !cJSON_IsFalse(items); /* elements after the prefix */
	if (!more && hi > k)
		hi = k;
	if (lo > hi)
		return fail(c, moe_fail(MOE_ERR_BAD_VALUE, "json schema: minItems cannot be met"));
	char ws[128];
	snprintf(ws, sizeof ws, "%sws", c->prefix);
	c->prims |= P_WS;
	g_buf item = {0}, body = {0}, name = {0};
	int rc = 0;
	if (more) {
		if (items == NULL || cJSON_IsTrue(items))
			prim(c, &item, P_VALUE, "value");
		else if (gen(c, items, &item, depth + 1)) {
			rc = -1;
			goto out_free;
		}
		g_buf_printf(&item, " %s", ws);
	}
	new_name(c, &name, "array");
	g_buf_printf(&body, "\"[\" %s ", ws);
	/* element j (0-based) is prefixItems[j] or items; after element 0 each
	 * one is preceded by a comma */
	uint32_t opened = 0;
	const cJSON *pj = prefix ? prefix->child : NULL;
	uint32_t j = 0;
	for (; j < k && j < hi; j++, pj = pj->next) {
		if (j >= lo) {
			g_buf_puts(&body, "( ");
			opened++;
		}
		if (j > 0)
			g_buf_printf(&body, "\",\" %s ", ws);
		if (gen(c, pj, &body, depth + 1)) {
			rc = -1;
			goto out_free;
		}
		g_buf_printf(&body, " %s ", ws);
	}
	if (more && j < hi) {
		/* elements j.. from items: at least lo - j, at most hi - j */
		uint32_t need = lo > j ? lo - j : 0;
		uint32_t cap = hi == G_INF ? G_INF : hi - j;
		if (j == 0) {
			if (need == 0) {
				g_buf_printf(&body, "( %s ( \",\" %s %s )", item.p, ws, item.p);
				put_rep(&body, 0, cap == G_INF ? G_INF : cap - 1);
				g_buf_puts(&body, " )? ");
			} else {
				g_buf_printf(&body, "%s ( \",\" %s %s )", item.p, ws, item.p);
				put_rep(&body, need - 1, cap == G_INF ? G_INF : cap - 1);
				g_buf_puts(&body, " ");
			}
		} else {
			g_buf_printf(&body, "( \",\" %s %s )", ws, item.p);
			put_rep(&body, need, cap);
			g_buf_puts(&body, " ");
		}
	}
	for (; opened > 0; opened--)
		g_buf_puts(&body, ")? ");
	g_buf_puts(&body, "\"]\"");
	g_buf_printf(&c->rules, "%s ::= %s\n", name.p ? name.p : "", body.p ? body.p : "");
	g_buf_puts(e, name.p ? name.p : "");
out_free:
	free(item.p);
	free(body.p);
	free(name.p);
	return rc;
}

/* allOf of object schemas: their properties and required lists, merged. */
static int gen_allof(sctx *c, const cJSON *all, g_buf *e, int depth);

static const cJSON *resolve(sctx *c, const char *ref)
{
	const char *name = NULL;
	const cJSON *defs = NULL;
	if (strncmp(ref, "#/$defs/", 8) == 0) {
		name = ref + 8;
		defs = cJSON_GetObjectItemCaseSensitive(c->doc, "$defs");
	} else if (strncmp(ref, "#/definitions/", 14) == 0) {
		name = ref + 14;
		defs = cJSON_GetObjectItemCaseSensitive(c->doc, "definitions");
	} else if (strcmp(ref, "#") == 0) {
		return c->doc;
	}
	if (name == NULL) {
		fail(c,
		     moe_fail(MOE_ERR_UNSUPPORTED,
		              "json schema: $ref \"%s\" (only #/$defs/NAME and #/definitions/NAME)",
		              ref));
		return NULL;
	}
	const cJSON *x = defs ? cJSON_GetObjectItemCaseSensitive(defs, name) : NULL;
	if (x == NULL)
		fail(c,
		     moe_fail(MOE_ERR_NOT_FOUND, "json schema: $ref \"%s\" does not resolve", ref));
	return x;
}

static int gen_ref(sctx *c, const char *ref, g_buf *e, int depth)
{
	for (size_t i = 0; i < c->n_refs; i++)
		if (strcmp(c->refs[i].ref, ref) == 0) {
			g_buf_puts(e, c->refs[i].name);
			return 0;
		}
	const cJSON *target = resolve(c, ref);
	if (target == NULL)
		return -1;
	if (c->n_refs == c->cap_refs) {
		size_t cap = c->cap_refs ? c->cap_refs * 2 : 8;
		ref_rule *r = realloc(c->refs, cap * sizeof(*r));
		if (r == NULL)
			return fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: refs"));
		c->refs = r;
		c->cap_refs = cap;
	}
	/* the rule is named after the definition (ref-NAME-N, ref-root-N for
	 * "#"), so that a compiler refusal naming the rule (left recursion
	 * through $ref) names the $ref the schema wrote */
	char hint[40] = "ref-root";
	const char *slash = strrchr(ref, '/');
	if (slash != NULL) {
		size_t k = 4;
		memcpy(hint, "ref-", 4);
		for (const char *q = slash + 1; *q && k < sizeof hint - 1; q++, k++)
			hint[k] = (char)(((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
			                  (*q >= '0' && *q <= '9'))
			                     ? *q
			                     : '-');
		hint[k] = '\0';
	}
	g_buf name = {0};
	new_name(c, &name, hint);
	char *rc = strdup(ref);
	if (name.p == NULL || rc == NULL) {
		free(name.p);
		free(rc);
		return fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: refs"));
	}
	c->refs[c->n_refs++] = (ref_rule){rc, name.p};
	g_buf body = {0};
	int r = gen(c, target, &body, depth + 1);
	if (r == 0)
		g_buf_printf(&c->rules, "%s ::= %s\n", name.p, body.p ? body.p : "");
	free(body.p);
	g_buf_puts(e, name.p);
	return r;
}

static int gen_typed(sctx *c, const cJSON *s, const char *type, g_buf *e, int depth)
{
	if (!strcmp(type, "string"))
		return gen_string(c, s, e);
	if (!strcmp(type, "number"))
		return gen_number(c, s, e, 0);
	if (!strcmp(type, "integer"))
		return gen_number(c, s, e, 1);
	if (!strcmp(type, "boolean")) {
		prim(c, e, P_BOOLEAN, "boolean");
		return 0;
	}
	if (!strcmp(type, "null")) {
		prim(c, e, P_NULL, "null");
		return 0;
	}
	if (!strcmp(type, "object")) {
		const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
		cJSON any = {.type = cJSON_True};
		if (cJSON_GetObjectItemCaseSensitive(s, "patternProperties") != NULL) {
			/* lenient only (check_keywords refuses it otherwise): other
			 * keys with any value */
			if (addl != NULL && !cJSON_IsTrue(addl))
				note(c, "additionalProperties");
			addl = &any;
		}
		return gen_object(c, cJSON_GetObjectItemCaseSensitive(s, "properties"),
		                  cJSON_GetObjectItemCaseSensitive(s, "required"), addl, e, depth);
	}
	if (!strcmp(type, "array"))
		return gen_array(c, s, e, depth);
	return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: unknown type \"%s\"", type));
}

static int gen_alts(sctx *c, const cJSON *list, const char *kw, g_buf *e, int depth)
{
	if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
		return fail(
		    c, moe_fail(MOE_ERR_FORMAT, "json schema: %s is not a non-empty array", kw));
	g_buf_puts(e, "( ");
	for (const cJSON *x = list->child; x; x = x->next) {
		if (x != list->child)
			g_buf_puts(e, " | ");
		if (gen(c, x, e, depth + 1))
			return -1;
	}
	g_buf_puts(e, " )");
	return 0;
}

static int gen_body(sctx *c, const cJSON *s, g_buf *e, int depth);

/* The value of schema s, appended to e. */
static int gen(sctx *c, const cJSON *s, g_buf *e, int depth)
{
	if (depth > S_MAX_DEPTH)
		return fail(c, moe_fail(MOE_ERR_BAD_COUNT, "json schema: nested deeper than %d",
		                        S_MAX_DEPTH));
	if (cJSON_IsTrue(s) || (cJSON_IsObject(s) && s->child == NULL)) {
		prim(c, e, P_VALUE, "value");
		return 0;
	}
	if (cJSON_IsFalse(s))
		return fail(c, moe_fail(MOE_ERR_UNSUPPORTED, "json schema: the schema false"));
	if (!cJSON_IsObject(s))
		return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: a schema is not an object"));
	if (check_keywords(c, s))
		return -1;
	const cJSON *nullable = cJSON_GetObjectItemCaseSensitive(s, "nullable");
	if (nullable == NULL || cJSON_IsFalse(nullable))
		return gen_body(c, s, e, depth);
	if (!cJSON_IsTrue(nullable))
		return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: nullable is not a boolean"));
	g_buf_puts(e, "( ");
	if (gen_body(c, s, e, depth))
		return -1;
	g_buf_puts(e, " | ");
	prim(c, e, P_NULL, "null");
	g_buf_puts(e, " )");
	return 0;
}

/* The value of object schema s, its keywords checked, nullable aside. */
static int gen_body(sctx *c, const cJSON *s, g_buf *e, int depth)
{
	const cJSON *x;
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "$ref")) != NULL) {
		if (!cJSON_IsString(x))
			return fail(c,
			            moe_fail(MOE_ERR_FORMAT, "json schema: $ref is not a string"));
		return gen_ref(c, x->valuestring, e, depth);
	}
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "const")) != NULL)
		return literal_value(c, x, e);
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "enum")) != NULL) {
		if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) == 0)
			return fail(c, moe_fail(MOE_ERR_FORMAT,
			                        "json schema: enum is not a non-empty array"));
		g_buf_puts(e, "( ");
		for (const cJSON *v = x->child; v; v = v->next) {
			if (v != x->child)
				g_buf_puts(e, " | ");
			if (literal_value(c, v, e))
				return -1;
		}
		g_buf_puts(e, " )");
		return 0;
	}
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "anyOf")) != NULL)
		return gen_alts(c, x, "anyOf", e, depth);
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "oneOf")) != NULL)
		return gen_alts(c, x, "oneOf", e, depth);
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "allOf")) != NULL)
		return gen_allof(c, x, e, depth);
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
	if (cJSON_IsString(type))
		return gen_typed(c, s, type->valuestring, e, depth);
	if (cJSON_IsArray(type)) {
		if (cJSON_GetArraySize(type) == 0)
			return fail(c, moe_fail(MOE_ERR_FORMAT, "json schema: empty type list"));
		g_buf_puts(e, "( ");
		for (const cJSON *t = type->child; t; t = t->next) {
			if (!cJSON_IsString(t))
				return fail(
				    c, moe_fail(MOE_ERR_FORMAT, "json schema: type list entry"));
			if (t != type->child)
				g_buf_puts(e, " | ");
			if (gen_typed(c, s, t->valuestring, e, depth))
				return -1;
		}
		g_buf_puts(e, " )");
		return 0;
	}
	if (type != NULL)
		return fail(c,
		            moe_fail(MOE_ERR_FORMAT, "json schema: type is not a string or list"));
	/* no type: what the keywords imply */
	if (cJSON_GetObjectItemCaseSensitive(s, "properties") ||
	    cJSON_GetObjectItemCaseSensitive(s, "additionalProperties") ||
	    cJSON_GetObjectItemCaseSensitive(s, "required"))
		return gen_typed(c, s, "object", e, depth);
	if (cJSON_GetObjectItemCaseSensitive(s, "items") ||
	    cJSON_GetObjectItemCaseSensitive(s, "prefixItems") ||
	    cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
	    cJSON_GetObjectItemCaseSensitive(s, "maxItems"))
		return gen_typed(c, s, "array", e, depth);
	if (cJSON_GetObjectItemCaseSensitive(s, "minLength") ||
	    cJSON_GetObjectItemCaseSensitive(s, "maxLength") ||
	    cJSON_GetObjectItemCaseSensitive(s, "pattern"))
		return gen_typed(c, s, "string", e, depth);
	for (const char *const *k = bounds; *k; k++)
		if (cJSON_GetObjectItemCaseSensitive(s, *k))
			return gen_typed(c, s, "number", e, depth);
	prim(c, e, P_VALUE, "value");
	return 0;
}

static int gen_allof(sctx *c, const cJSON *all, g_buf *e, int depth)
{
	if (!cJSON_IsArray(all) || cJSON_GetArraySize(all) == 0)
		return fail(
		    c, moe_fail(MOE_ERR_FORMAT, "json schema: allOf is not a non-empty array"));
	if (cJSON_GetArraySize(all) == 1)
		return gen(c, all->child, e, depth + 1);
	cJSON *props = cJSON_CreateObject(), *req = cJSON_CreateArray();
	int rc = 0;
	if (props == NULL || req == NULL) {
		rc = fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: allOf"));
		goto out_free;
	}
	for (const cJSON *x = all->child; x; x = x->next) {
		const cJSON *s = x;
		for (int hops = 0; cJSON_IsObject(s) && cJSON_GetObjectItemCaseSensitive(s, "$ref");
		     hops++) {
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(s, "$ref");
			if (hops > 16 || !cJSON_IsString(r)) {
				rc = fail(c, moe_fail(MOE_ERR_UNSUPPORTED,
				                      "json schema: allOf $ref chain"));
				goto out_free;
			}
			if ((s = resolve(c, r->valuestring)) == NULL) {
				rc = -1;
				goto out_free;
			}
		}
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "properties");
		if (!cJSON_IsObject(s) ||
		    (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "object"))) ||
		    (!type && !p)) {
			if (lenient(c)) { /* the first schema: a superset of them all */
				note(c, "allOf");
				rc = gen(c, all->child, e, depth + 1);
				goto out_free;
			}
			rc = fail(
			    c, moe_fail(MOE_ERR_UNSUPPORTED,
			                "json schema: allOf of schemas that are not all objects"));
			goto out_free;
		}
		if (check_keywords(c, s)) {
			rc = -1;
			goto out_free;
		}
		for (const cJSON *q = p ? p->child : NULL; q; q = q->next) {
			if (cJSON_GetObjectItemCaseSensitive(props, q->string))
				continue;
			cJSON *d = cJSON_Duplicate(q, 1);
			if (d == NULL || !cJSON_AddItemToObject(props, q->string, d)) {
				cJSON_Delete(d);
				rc = fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: allOf"));
				goto out_free;
			}
		}
		const cJSON *r = cJSON_GetObjectItemCaseSensitive(s, "required");
		for (const cJSON *q = cJSON_IsArray(r) ? r->child : NULL; q; q = q->next) {
			cJSON *d = cJSON_Duplicate(q, 1);
			if (d == NULL || !cJSON_AddItemToArray(req, d)) {
				cJSON_Delete(d);
				rc = fail(c, moe_fail(MOE_ERR_NOMEM, "json schema: allOf"));
				goto out_free;
			}
		}
	}
	rc = gen_object(c, props, req, NULL, e, depth + 1);
out_free:
	cJSON_Delete(props);
	cJSON_Delete(req);
	return rc;
}

static void emit_prims(sctx *c)
{
	const char *P = c->prefix;
	uint32_t p = c->prims;
	/* what the shared rules use */
	if (p & P_VALUE)
		p |= P_OBJECT | P_ARRAY | P_STRING | P_NUMBER | P_BOOLEAN | P_NULL;
	if (p & (P_OBJECT | P_ARRAY))
		p |= P_VALUE | P_STRING | P_NUMBER | P_BOOLEAN | P_NULL | P_WS | P_OBJECT | P_ARRAY;
	g_buf *r = &c->rules;
	if (p & P_WS)
		g_buf_printf(r, "%sws ::= ( \" \" | \"\\n\" [ \\t]{0,24} )?\n", P);
	if (p & P_STRING)
		g_buf_printf(r, "%sstring ::= \"\\\"\" %s* \"\\\"\"\n", P, CHAR_EXPR);
	if (p & P_NUMBER)
		g_buf_printf(
		    r,
		    "%snumber ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? "
		    "( [eE] [-+]? [0-9]{1,2} )?\n",
		    P);
	if (p & P_UNUMBER)
		g_buf_printf(r,
		             "%sunumber ::= ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? "
		             "( [eE] [-+]? [0-9]{1,2} )?\n",
		             P);
	if (p & P_INTEGER)
		g_buf_printf(r, "%sinteger ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} )\n", P);
	if (p & P_BOOLEAN)
		g_buf_printf(r, "%sboolean ::= \"true\" | \"false\"\n", P);
	if (p & P_NULL)
		g_buf_printf(r, "%snull ::= \"null\"\n", P);
	if (p & P_VALUE)
		g_buf_printf(r,
		             "%svalue ::= %sobject | %sarray | %sstring | %snumber | %sboolean | "
		             "%snull\n",
		             P, P, P, P, P, P, P);
	if (p & P_OBJECT)
		g_buf_printf(r,
		             "%sobject ::= \"{\" %sws ( %sstring %sws \":\" %sws %svalue %sws "
		             "( \",\" %sws %sstring %sws \":\" %sws %svalue %sws )* )? \"}\"\n",
		             P, P, P, P, P, P, P, P, P, P, P, P, P);
	if (p & P_ARRAY)
		g_buf_printf(
		    r,
		    "%sarray ::= \"[\" %sws ( %svalue %sws ( \",\" %sws %svalue %sws )* )? "
		    "\"]\"\n",
		    P, P, P, P, P, P, P);
}

moe_err moe_grammar_schema_to_gbnf_ex(char **out, const char *schema, size_t len,
                                      const char *prefix, unsigned flags, char **ignored)
{
	if (out == NULL || schema == NULL)
		return moe_fail(MOE_ERR_INVAL, "json schema: NULL argument");
	if ((flags & ~MOE_GRAMMAR_SCHEMA_LENIENT) != 0)
		return moe_fail(MOE_ERR_INVAL, "json schema: unknown flags 0x%x", flags);
	if (prefix == NULL)
		prefix = "";
	if (strlen(prefix) > 64)
		return moe_fail(MOE_ERR_INVAL, "json schema: prefix longer than 64");
	for (const char *q = prefix; *q; q++)
		if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
		      (*q >= '0' && *q <= '9') || *q == '-'))
			return moe_fail(MOE_ERR_INVAL,
			                "json schema: prefix \"%s\" (letters, digits, -)", prefix);
	cJSON *doc = cJSON_ParseWithLength(schema, len);
	if (doc == NULL)
		return moe_fail(MOE_ERR_FORMAT, "json schema: not JSON (near byte %td)",
		                cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - schema : (ptrdiff_t)0);
	sctx c = {.prefix = prefix, .doc = doc, .flags = flags};
	g_buf root = {0};
	if (gen(&c, doc, &root, 0) == 0) {
		g_buf_printf(&c.rules, "%sroot ::= %s\n", prefix, root.p ? root.p : "");
		emit_prims(&c);
	}
	if (c.err == MOE_OK && (c.rules.failed || root.failed || c.ignored.failed))
		c.err = moe_fail(MOE_ERR_NOMEM, "json schema: grammar text");
	free(root.p);
	for (size_t i = 0; i < c.n_refs; i++) {
		free(c.refs[i].ref);
		free(c.refs[i].name);
	}
	free(c.refs);
	cJSON_Delete(doc);
	if (c.err != MOE_OK) {
		free(c.rules.p);
		free(c.ignored.p);
		return c.err;
	}
	*out = c.rules.p;
	if (ignored != NULL)
		*ignored = c.ignored.p; /* NULL when nothing was noted */
	else
		free(c.ignored.p);
	return MOE_OK;
}

moe_err moe_grammar_schema_to_gbnf(char **out, const char *schema, size_t len, const char *prefix)
{
	return moe_grammar_schema_to_gbnf_ex(out, schema, len, prefix, 0, NULL);
}

moe_err moe_grammar_from_json_schema(moe_grammar **out, const char *schema, size_t len)
{
	char *text = NULL;
	moe_err err = moe_grammar_schema_to_gbnf(&text, schema, len, "");
	if (err != MOE_OK)
		return err;
	err = moe_grammar_parse(out, text, strlen(text), "root");
	free(text);
	return err;
}
