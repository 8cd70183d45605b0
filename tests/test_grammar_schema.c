/*
 * test_grammar_schema.c - JSON schemas against an independent random
 * document generator (accepted byte by byte and token by token through the
 * real Qwen3 tokenizer, broken ones refused at the first bad byte), hostile
 * schemas, integer and number ranges against brute force, the lenient mode
 * and its report.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "grammar/grammar.h"
#include "grammar_util.h"
#include "model/tokenizer.h"

Test(grammar, schemas_accept_generated_documents, .timeout = 300)
{
	int docs = SLOW ? 6 : 25;
	uint64_t s = 4242;
	for (size_t i = 0; i < N_SCHEMAS; i++) {
		moe_grammar_tables *t = schema_tables(i);
		for (int d = 0; d < docs; d++) {
			char *doc = gen_doc(i, (uint64_t)d);
			size_t len = strlen(doc);
			cJSON *parsed = cJSON_Parse(doc);
			cr_assert(parsed != NULL, "generator: not JSON: %s", doc);
			cJSON_Delete(parsed);
			/* byte by byte; a control byte is refused wherever it is put */
			moe_grammar_matcher *m;
			cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
			for (size_t k = 0; k < len; k++) {
				cr_assert(!moe_grammar_matcher_can_end(m),
				          "schema %zu: ends early at %zu: %s", i, k, doc);
				if (rng(&s) % 4 == 0) {
					cr_assert_eq(moe_grammar_matcher_accept_bytes(m, "\x01", 1),
					             MOE_ERR_INVAL);
				}
				moe_err err = moe_grammar_matcher_accept_bytes(m, doc + k, 1);
				cr_assert(err == MOE_OK, "schema %zu: byte %zu of %s refused (%s)",
				          i, k, doc, moe_err_detail());
			}
			cr_assert(moe_grammar_matcher_can_end(m), "schema %zu: cannot end: %s", i,
			          doc);
			moe_grammar_matcher_destroy(m);
			/* token by token, as the real tokenizer splits it */
			int32_t *ids;
			size_t n_ids;
			cr_assert(moe_tokenizer_encode(&ids, &n_ids, qwen3(), doc, len, 0) ==
			          MOE_OK);
			char *back;
			size_t back_len;
			cr_assert(moe_tokenizer_decode(&back, &back_len, qwen3(), ids, n_ids, 0) ==
			          MOE_OK);
			cr_assert(back_len == len && !memcmp(back, doc, len));
			free(back);
			cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
			for (size_t k = 0; k < n_ids; k++) {
				cr_assert(!moe_grammar_matcher_token_ok(m, im_end()));
				cr_assert(moe_grammar_matcher_token_ok(m, ids[k]),
				          "schema %zu: token %zu (%d) of %s", i, k, ids[k], doc);
				cr_assert(moe_grammar_matcher_accept_token(m, ids[k]) == MOE_OK);
			}
			cr_assert(moe_grammar_matcher_token_ok(m, im_end()));
			cr_assert(moe_grammar_matcher_accept_token(m, im_end()) == MOE_OK);
			cr_assert(moe_grammar_matcher_is_done(m));
			cr_assert(!moe_grammar_matcher_token_ok(m, ids[0]));
			cr_assert_eq(moe_grammar_matcher_accept_token(m, ids[0]), MOE_ERR_STATE);
			moe_grammar_matcher_destroy(m);
			free(ids);
			/* replacing one byte: the prefix before it stays valid */
			for (int r = 0; r < 4; r++) {
				size_t at = rng(&s) % len;
				char *mut = strdup(doc);
				mut[at] = (char)(mut[at] ^ (1 + rng(&s) % 255));
				cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
				size_t k = 0;
				while (k < len &&
				       moe_grammar_matcher_accept_bytes(m, mut + k, 1) == MOE_OK)
					k++;
				cr_assert(k >= at,
				          "schema %zu: refused at %zu before the change at %zu", i,
				          k, at);
				moe_grammar_matcher_destroy(m);
				free(mut);
			}
			free(doc);
		}
	}
}

/* The schema subset, and what is refused. */
Test(grammar, schema_errors)
{
	static const struct {
		const char *schema;
		moe_err err;
		const char *detail;
		const char *lenient; /* what the lenient mode ignores; NULL: the same error */
	} bad[] = {
	    {"{\"type\": \"number\", \"maximum\": 2.5}", MOE_ERR_UNSUPPORTED, "maximum 2.5",
	     "maximum"},
	    {"{\"type\": \"integer\", \"multipleOf\": 3}", MOE_ERR_UNSUPPORTED, "\"multipleOf\"",
	     "multipleOf"},
	    {"{\"type\": \"integer\", \"minimum\": \"3\"}", MOE_ERR_FORMAT, "minimum is not", NULL},
	    {"{\"type\": \"integer\", \"exclusiveMinimum\": true, \"minimum\": 1}", MOE_ERR_FORMAT,
	     "exclusiveMinimum is not", NULL},
	    {"{\"type\": \"integer\", \"minimum\": 5, \"maximum\": 4}", MOE_ERR_BAD_VALUE,
	     "no integer", NULL},
	    {"{\"type\": \"integer\", \"minimum\": 1.2, \"maximum\": 1.8}", MOE_ERR_BAD_VALUE,
	     "no integer", NULL},
	    {"{\"type\": \"integer\", \"exclusiveMinimum\": 3, \"exclusiveMaximum\": 4}",
	     MOE_ERR_BAD_VALUE, "no integer", NULL},
	    {"{\"type\": \"integer\", \"minimum\": 1e16}", MOE_ERR_BAD_VALUE, "no integer", NULL},
	    {"{\"type\": \"number\", \"minimum\": 0, \"exclusiveMaximum\": 0}", MOE_ERR_BAD_VALUE,
	     "no number", NULL},
	    {"{\"type\": \"number\", \"exclusiveMinimum\": 3, \"maximum\": 3}", MOE_ERR_BAD_VALUE,
	     "no number", NULL},
	    {"{\"type\": \"integer\", \"nullable\": 1}", MOE_ERR_FORMAT, "nullable", NULL},
	    {"{\"not\": {}}", MOE_ERR_UNSUPPORTED, "\"not\"", "not"},
	    {"{\"type\": \"string\", \"pattern\": \"(?=a)\"}", MOE_ERR_UNSUPPORTED, "lookaround",
	     "pattern"},
	    {"{\"type\": \"string\", \"pattern\": \"\\\\bx\"}", MOE_ERR_UNSUPPORTED, "escape",
	     "pattern"},
	    {"{\"type\": \"string\", \"pattern\": \"(a)\\\\1\"}", MOE_ERR_UNSUPPORTED, "escape",
	     "pattern"},
	    {"{\"type\": \"string\", \"pattern\": \"^a|b$\"}", MOE_ERR_UNSUPPORTED, "top-level",
	     "pattern"},
	    {"{\"type\": \"string\", \"pattern\": \"a\", \"maxLength\": 3}", MOE_ERR_UNSUPPORTED,
	     "pattern together", "maxLength"},
	    {"{\"$ref\": \"#/$defs/nope\"}", MOE_ERR_NOT_FOUND, "does not resolve", NULL},
	    {"{\"$ref\": \"http://x/y\"}", MOE_ERR_UNSUPPORTED, "$ref", NULL},
	    {"{\"type\": \"strin\"}", MOE_ERR_FORMAT, "unknown type", NULL},
	    {"{\"type\": ", MOE_ERR_FORMAT, "not JSON", NULL},
	    {"{\"type\": \"array\", \"maxItems\": 100000}", MOE_ERR_UNSUPPORTED, "maxItems",
	     "maxItems"},
	    /* counts beyond long long's range (fuzz_schema: casting one was
	     * undefined), one not whole, one negative */
	    {"{\"type\": \"string\", \"maxLength\": 73333333333333333333332}", MOE_ERR_UNSUPPORTED,
	     "maxLength above", "maxLength"},
	    {"{\"type\": \"array\", \"minItems\": 1e300}", MOE_ERR_UNSUPPORTED, "minItems above",
	     "minItems"},
	    {"{\"type\": \"string\", \"minLength\": 2.5}", MOE_ERR_FORMAT,
	     "minLength is not a count", NULL},
	    {"{\"type\": \"string\", \"maxLength\": -1}", MOE_ERR_FORMAT,
	     "maxLength is not a count", NULL},
	    {"{\"type\": \"object\", \"properties\": {}, \"required\": [\"x\"]}",
	     MOE_ERR_UNSUPPORTED, "required property", NULL},
	    {"{\"allOf\": [{\"type\": \"string\"}, {\"type\": \"object\"}]}", MOE_ERR_UNSUPPORTED,
	     "allOf", "allOf"},
	    /* a pattern or key that is not UTF-8 (fuzz_schema: a lead byte 0xF6
	     * made code point 0x19D68D, an escape the grammar refused): a bad
	     * lead, an overlong form, a surrogate */
	    {"{\"type\": \"string\", \"pattern\": \"SSS\xf6\x9d\x9a\x8d\"}", MOE_ERR_FORMAT,
	     "invalid UTF-8", NULL},
	    {"{\"type\": \"string\", \"pattern\": \"a\xc0\x80\"}", MOE_ERR_FORMAT, "invalid UTF-8",
	     NULL},
	    {"{\"type\": \"string\", \"pattern\": \"[\xed\xa0\x80-z]\"}", MOE_ERR_FORMAT,
	     "invalid UTF-8", NULL},
	    {"{\"type\": \"object\", \"properties\": {\"a\xc0\x80\": {}}, "
	     "\"additionalProperties\": true}",
	     MOE_ERR_FORMAT, "invalid UTF-8 key", NULL},
	    /* recursion no finite value ends: the compiler refuses it */
	    {"{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\"}",
	     MOE_ERR_UNSUPPORTED, "can never finish", NULL},
	    {"{\"$defs\": {\"n\": {\"type\": \"object\", \"properties\": {\"next\": {\"$ref\": "
	     "\"#/$defs/n\"}}, \"required\": [\"next\"]}}, \"$ref\": \"#/$defs/n\"}",
	     MOE_ERR_UNSUPPORTED, "can never finish", NULL},
	    /* left recursion (fuzz_schema): a $ref reaching itself through oneOf
	     * before any character, directly or after being reached inside an object */
	    {"{\"oneOf\": [{\"const\": 1}, {\"$ref\": \"#\"}]}", MOE_ERR_UNSUPPORTED,
	     "rule ref-root-1 is left-recursive", NULL},
	    {"{\"$defs\": {\"x\": {\"anyOf\": [{\"properties\": {\"a\": {\"$ref\": "
	     "\"#/$defs/y\"}}}, "
	     "{\"$ref\": \"#/$defs/y\"}]}, \"y\": {\"anyOf\": [{\"const\": 1}, {\"$ref\": "
	     "\"#/$defs/x\"}]}}, "
	     "\"$ref\": \"#/$defs/x\"}",
	     MOE_ERR_UNSUPPORTED, "left-recursive", NULL},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		moe_grammar *g = NULL;
		moe_err err =
		    moe_grammar_from_json_schema(&g, bad[i].schema, strlen(bad[i].schema));
		cr_assert_eq(err, bad[i].err, "%s: got %s (%s)", bad[i].schema, moe_err_name(err),
		             moe_err_detail());
		cr_assert(strstr(moe_err_detail(), bad[i].detail) != NULL, "%s: detail '%s'",
		          bad[i].schema, moe_err_detail());
		char *text = NULL, *ign = NULL;
		err = moe_grammar_schema_to_gbnf_ex(&text, bad[i].schema, strlen(bad[i].schema), "",
		                                    MOE_GRAMMAR_SCHEMA_LENIENT, &ign);
		if (err == MOE_OK) /* the grammar compiles, or fails as the strict one did */
			err = moe_grammar_parse(&g, text, strlen(text), NULL);
		free(text);
		if (bad[i].lenient == NULL) {
			cr_assert_eq(err, bad[i].err, "%s: lenient: got %s (%s)", bad[i].schema,
			             moe_err_name(err), moe_err_detail());
			cr_assert(ign == NULL);
		} else {
			cr_assert(err == MOE_OK, "%s: lenient: %s", bad[i].schema,
			          moe_err_detail());
			cr_assert(ign != NULL && !strcmp(ign, bad[i].lenient),
			          "%s: lenient ignored %s", bad[i].schema, ign ? ign : "(null)");
			moe_grammar_destroy(g);
			free(ign);
		}
	}
	/* nested deeper than the limit: refused, not a stack overflow */
	sb b = {0};
	for (int i = 0; i < 200; i++)
		sb_puts(&b, "{\"type\": \"array\", \"items\": ");
	sb_puts(&b, "{}");
	for (int i = 0; i < 200; i++)
		sb_puts(&b, "}");
	moe_grammar *g = NULL;
	cr_assert_eq(moe_grammar_from_json_schema(&g, b.p, b.n), MOE_ERR_BAD_COUNT);
	char *text;
	cr_assert_eq(
	    moe_grammar_schema_to_gbnf_ex(&text, b.p, b.n, "", MOE_GRAMMAR_SCHEMA_LENIENT, NULL),
	    MOE_ERR_BAD_COUNT);
	free(b.p);
	/* the prefix keeps composed rules apart */
	cr_assert(moe_grammar_schema_to_gbnf(&text, schemas[1], strlen(schemas[1]), "get-w-") ==
	          MOE_OK);
	cr_assert(strstr(text, "get-w-root ::= ") != NULL);
	free(text);
	cr_assert_eq(moe_grammar_schema_to_gbnf(&text, schemas[1], strlen(schemas[1]), "a b"),
	             MOE_ERR_INVAL);
}

/* ---- numeric ranges and the lenient mode ------------------------------------------ */

#define INT_CAP 9999999999999999ll /* the largest integer part the rules write */

/* A schema's grammar text (strict or lenient), grammar, tables over the
 * small vocabulary and a matcher at its start. */
typedef struct fixture {
	char *text;
	moe_grammar *g;
	moe_grammar_tables *t;
	moe_grammar_matcher *m;
} fixture;

/* *ignored gets the report (NULL: not wanted). */
static void fx_open(fixture *f, const char *schema, unsigned flags, char **ignored)
{
	moe_err err =
	    moe_grammar_schema_to_gbnf_ex(&f->text, schema, strlen(schema), "", flags, ignored);
	cr_assert(err == MOE_OK, "%s: %s: %s", schema, moe_err_name(err), moe_err_detail());
	f->g = parse_ok(f->text);
	cr_assert(moe_grammar_tables_create(&f->t, f->g, tiny_vocab()) == MOE_OK, "%s",
	          moe_err_detail());
	cr_assert(moe_grammar_matcher_create(&f->m, f->t) == MOE_OK);
}

static void fx_close(fixture *f)
{
	moe_grammar_matcher_destroy(f->m);
	moe_grammar_tables_destroy(f->t);
	moe_grammar_destroy(f->g);
	free(f->text);
}

/* Whether the report is the expected list (NULL: nothing ignored). */
static int same_list(const char *got, const char *want)
{
	return got == NULL || want == NULL ? got == want : strcmp(got, want) == 0;
}

/* Whether m takes the whole of s and may end there; m is left as it was. */
static int takes(moe_grammar_matcher *m, const char *s)
{
	if (moe_grammar_matcher_accept_bytes(m, s, strlen(s)) != MOE_OK)
		return 0;
	int ok = moe_grammar_matcher_can_end(m);
	cr_assert(moe_grammar_matcher_rollback(m, 1) == MOE_OK);
	return ok;
}

static void check_int(moe_grammar_matcher *m, const char *schema, long long lo, long long hi,
                      long long v)
{
	char txt[32];
	snprintf(txt, sizeof txt, "%lld", v);
	int want = v >= lo && v <= hi;
	cr_assert_eq(takes(m, txt), want, "%s: %s %s", schema, txt, want ? "refused" : "accepted");
}

/* The integers of [lo, hi] and only they, in canonical form: every integer
 * within w of each bound and of 0, random ones inside, the powers of ten
 * and 2^53 with their neighbours; then forms JSON or the rule refuse. */
static void check_int_range(const char *schema, long long lo, long long hi, long long w,
                            uint64_t *s)
{
	fixture f;
	fx_open(&f, schema, 0, NULL);
	moe_grammar_matcher *m = f.m;
	cr_assert(strlen(f.text) < 2500, "%s: %zu bytes of grammar", schema, strlen(f.text));
	const long long at[] = {lo, hi, 0};
	for (int k = 0; k < 3; k++)
		for (long long v = at[k] - w; v <= at[k] + w; v++)
			if (v >= -INT_CAP - 2 && v <= INT_CAP + 2)
				check_int(m, schema, lo, hi, v);
	for (int k = 0; k < 200; k++) {
		uint64_t span = (uint64_t)(hi - lo) + 1;
		check_int(m, schema, lo, hi, lo + (long long)(span ? rng(s) % span : rng(s) >> 12));
	}
	for (long long p = 1, k = 0; k <= 16; k++, p *= 10)
		for (long long d = -1; d <= 1; d++) {
			check_int(m, schema, lo, hi, p + d);
			check_int(m, schema, lo, hi, -p - d);
		}
	for (long long d = -2; d <= 2; d++) {
		check_int(m, schema, lo, hi, (1ll << 53) + d);
		check_int(m, schema, lo, hi, -(1ll << 53) - d);
	}
	/* leading zeros, signs, fractions, exponents, spaces, "-0" */
	char txt[48];
	long long in = lo > 0 ? lo : hi < 0 ? hi : 0;
	const char *const fmts[] = {"0%lld", "+%lld",  "%lld.0", "%lld.", "%llde0", " %lld",
	                            "%lld ", "%lld0x", "00",     "-0",    "-",      ""};
	for (size_t k = 0; k < sizeof fmts / sizeof *fmts; k++) {
		snprintf(txt, sizeof txt, fmts[k], in);
		cr_assert(!takes(m, txt), "%s: '%s' accepted", schema, txt);
	}
	if (in < 0) {
		snprintf(txt, sizeof txt, "-0%lld", -in);
		cr_assert(!takes(m, txt), "%s: '%s' accepted", schema, txt);
	}
	fx_close(&f);
}

Test(grammar, integer_ranges_are_exact, .timeout = 300)
{
	static const struct {
		const char *kw;
		long long lo, hi;
	} r[] = {
	    {"\"minimum\": 0, \"maximum\": 0", 0, 0},
	    {"\"minimum\": -5, \"maximum\": 5", -5, 5},
	    {"\"minimum\": 7, \"maximum\": 7", 7, 7},
	    {"\"minimum\": -120, \"maximum\": -3", -120, -3},
	    {"\"minimum\": 1, \"maximum\": 100", 1, 100},
	    {"\"minimum\": 10, \"maximum\": 99", 10, 99},
	    {"\"minimum\": 99, \"maximum\": 1000", 99, 1000},
	    {"\"minimum\": 1000, \"maximum\": 9999", 1000, 9999},
	    {"\"minimum\": 101, \"maximum\": 989", 101, 989},
	    {"\"minimum\": 0, \"maximum\": 9007199254740992", 0, 1ll << 53},
	    {"\"minimum\": -9007199254740992, \"maximum\": 9007199254740992", -(1ll << 53),
	     1ll << 53},
	    {"\"minimum\": -9007199254740991, \"maximum\": -9007199254740000", -(1ll << 53) + 1,
	     -9007199254740000},
	    {"\"minimum\": 0", 0, INT_CAP},
	    {"\"minimum\": 1", 1, INT_CAP},
	    {"\"minimum\": -37", -37, INT_CAP},
	    {"\"minimum\": 4503599627370496", 1ll << 52, INT_CAP},
	    {"\"maximum\": 250", -INT_CAP, 250},
	    {"\"maximum\": -1000", -INT_CAP, -1000},
	    {"\"maximum\": 0", -INT_CAP, 0},
	    {"\"exclusiveMaximum\": 0", -INT_CAP, -1},
	    {"\"exclusiveMinimum\": 0, \"exclusiveMaximum\": 10", 1, 9},
	    {"\"exclusiveMinimum\": -10, \"minimum\": -3, \"maximum\": 10", -3, 10},
	    {"\"minimum\": -10, \"exclusiveMinimum\": -3, \"maximum\": 10, \"exclusiveMaximum\": "
	     "11",
	     -2, 10},
	    {"\"minimum\": 1.5, \"maximum\": 99.9", 2, 99},
	    {"\"exclusiveMinimum\": 1.5, \"exclusiveMaximum\": 99.9", 2, 99},
	    {"\"minimum\": -7.5, \"exclusiveMaximum\": -0.5", -7, -1},
	    {"\"exclusiveMinimum\": -0.5, \"maximum\": 0.5", 0, 0},
	    {"\"minimum\": 1e3, \"maximum\": 1e4", 1000, 10000},
	    {"\"minimum\": 123456789012, \"maximum\": 123456789999999", 123456789012,
	     123456789999999},
	    {"\"format\": \"int32\"", -2147483648ll, 2147483647ll},
	    {"\"format\": \"int32\", \"minimum\": 5, \"maximum\": 1e12", 5, 2147483647ll},
	    {"\"maximum\": 1e300", -INT_CAP, INT_CAP},
	    {"\"minimum\": -1e300, \"maximum\": 3", -INT_CAP, 3},
	};
	uint64_t s = 77;
	long long w = 1100;
	char schema[256];
	for (size_t i = 0; i < sizeof r / sizeof *r; i++) {
		snprintf(schema, sizeof schema, "{\"type\": \"integer\", %s}", r[i].kw);
		check_int_range(schema, r[i].lo, r[i].hi, w, &s);
	}
	/* random ranges of every digit count, either sign */
	for (int k = 0; k < 40; k++) {
		long long b[2];
		for (int j = 0; j < 2; j++) {
			int digits = 1 + (int)(rng(&s) % 16);
			long long p = 1;
			for (int d = 1; d < digits; d++)
				p *= 10;
			b[j] = (long long)(rng(&s) % (uint64_t)(p * 9)) + (digits > 1 ? p : 0);
			if (b[j] > INT_CAP)
				b[j] = INT_CAP;
			if (rng(&s) % 3 == 0)
				b[j] = -b[j];
		}
		long long lo = b[0] < b[1] ? b[0] : b[1], hi = b[0] < b[1] ? b[1] : b[0];
		snprintf(schema, sizeof schema,
		         "{\"type\": \"integer\", \"minimum\": %lld, \"maximum\": %lld}", lo, hi);
		check_int_range(schema, lo, hi, 300, &s);
	}
	/* without bounds the rule is as before: "-0" too */
	fixture f;
	fx_open(&f, "{\"type\": \"integer\"}", 0, NULL);
	cr_assert(takes(f.m, "-0") && takes(f.m, "-12") && takes(f.m, "9999999999999999"));
	cr_assert(!takes(f.m, "01") && !takes(f.m, "+1") && !takes(f.m, "1.0") &&
	          !takes(f.m, "10000000000000000"));
	fx_close(&f);
}

/* Numbers between integral bounds: every integer part near the bounds and
 * 0, with fractions; compared exactly in units of 10^-4. */
/* "properties": {} declares that there are none: a tool without parameters
 * takes {} only (no additionalProperties means no extra keys, as with any
 * declared properties), while an object without the keyword takes any keys. */
Test(grammar, empty_properties_take_the_empty_object)
{
	fixture f = {0};
	fx_open(&f, "{\"type\": \"object\", \"properties\": {}}", 0, NULL);
	cr_assert(takes(f.m, "{}"));
	cr_assert(takes(f.m, "{ }"));
	cr_assert(!takes(f.m, "{\"a\": 1}"));
	fx_close(&f);
	fixture g = {0};
	fx_open(&g, "{\"type\": \"object\"}", 0, NULL);
	cr_assert(takes(g.m, "{}"));
	cr_assert(takes(g.m, "{\"a\": 1}"));
	fx_close(&g);
}

Test(grammar, number_ranges_are_exact)
{
	static const char *const r[] = {
	    "\"minimum\": 0, \"maximum\": 1",
	    "\"minimum\": -1, \"maximum\": 1",
	    "\"exclusiveMinimum\": 0, \"exclusiveMaximum\": 10",
	    "\"exclusiveMinimum\": -5, \"maximum\": -2",
	    "\"minimum\": -3",
	    "\"exclusiveMaximum\": 7",
	    "\"minimum\": 2, \"maximum\": 2",
	    "\"exclusiveMinimum\": 1, \"exclusiveMaximum\": 2",
	    "\"minimum\": 100, \"maximum\": 1000",
	    "\"exclusiveMinimum\": 0",
	    "\"maximum\": 0",
	    "\"exclusiveMaximum\": 0",
	    "\"minimum\": -10, \"exclusiveMinimum\": -10, \"maximum\": 3.0",
	};
	static const char *const fr[] = {"", ".0", ".000", ".5", ".05", ".9999", ".0001", ".10"};
	static const long long fv[] = {0, 0, 0, 5000, 500, 9999, 1, 1000};
	static const char *const never[] = {"1e0", "01", "01.5", ".5",   "1.",
	                                    "+1",  "-",  "-0",   "-0.0", "1.00000000000000000"};
	char schema[256], txt[64];
	for (size_t i = 0; i < sizeof r / sizeof *r; i++) {
		snprintf(schema, sizeof schema, "{\"type\": \"number\", %s}", r[i]);
		cJSON *x = cJSON_Parse(schema);
		fixture f;
		fx_open(&f, schema, 0, NULL);
		/* integer parts near the bounds and 0, each fraction, either sign
		 * ("-0.5" too), compared in units of 10^-4 */
		for (long long n = -1050; n <= 1050; n++)
			for (size_t k = 0; k < sizeof fr / sizeof *fr; k++)
				for (int neg = n < 0; neg <= (n <= 0); neg++) {
					long long mag = (n < 0 ? -n : n) * 10000 + fv[k];
					snprintf(txt, sizeof txt, "%s%lld%s", neg ? "-" : "",
					         n < 0 ? -n : n, fr[k]);
					int want = in_bounds(x, (double)(neg ? -mag : mag) / 1e4) &&
					           !(neg && mag == 0);
					cr_assert_eq(takes(f.m, txt), want, "%s: %s %s", schema,
					             txt, want ? "refused" : "accepted");
				}
		for (size_t k = 0; k < sizeof never / sizeof *never; k++)
			cr_assert(!takes(f.m, never[k]), "%s: '%s' accepted", schema, never[k]);
		fx_close(&f);
		cJSON_Delete(x);
	}
}

/* Lenient: what cannot be enforced is ignored and reported; the rest holds. */
Test(grammar, lenient_mode_ignores_and_reports)
{
	const char *schema =
	    "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", "
	    "\"multipleOf\": "
	    "5, \"minimum\": 0, \"maximum\": 100}, \"tags\": {\"type\": \"array\", \"items\": "
	    "{\"type\": \"string\"}, \"uniqueItems\": true, \"maxItems\": 3}, \"x\": {\"not\": "
	    "{\"type\": \"null\"}}, \"m\": {\"type\": \"integer\", \"multipleOf\": 2}}, "
	    "\"required\": [\"n\", \"tags\"], \"additionalProperties\": false}";
	char *text = NULL, *ign = NULL;
	moe_err err = moe_grammar_schema_to_gbnf_ex(&text, schema, strlen(schema), "", 0, &ign);
	cr_assert_eq(err, MOE_ERR_UNSUPPORTED, "%s", moe_err_name(err));
	cr_assert(strstr(moe_err_detail(), "\"multipleOf\"") != NULL, "%s", moe_err_detail());
	cr_assert(text == NULL && ign == NULL);
	cr_assert_eq(moe_grammar_schema_to_gbnf_ex(&text, schema, strlen(schema), "", 2, &ign),
	             MOE_ERR_INVAL);
	/* each case: what the report names, whether the strict mode takes it
	 * too, documents (one a line) the lenient grammar takes and refuses */
	static const struct {
		const char *schema, *ignored; /* ignored NULL: nothing */
		int strict_ok;
		const char *yes, *no;
	} c[] = {
	    {NULL, "multipleOf,uniqueItems,not", 0,
	     "{\"n\": 7, \"tags\": [\"a\", \"a\"]}\n{\"n\": 100, \"tags\": [], \"x\": null, \"m\": "
	     "3}\n"
	     "{\"n\": 0, \"tags\": [\"\", \"b\", \"c\"], \"x\": {\"y\": 1}}",
	     "{\"n\": 101, \"tags\": []}\n{\"n\": -1, \"tags\": []}\n{\"tags\": []}\n{\"n\": 5}\n"
	     "{\"n\": 5, \"tags\": [\"a\", \"b\", \"c\", \"d\"]}\n{\"n\": 5, \"tags\": [1]}\n"
	     "{\"n\": 5, \"tags\": [], \"y\": 1}\n{\"n\": 5.5, \"tags\": []}\n"
	     "{\"n\": 5, \"tags\": [], \"m\": 1.5}"},
	    {"{\"type\": \"integer\", \"minimum\": 1, \"maximum\": 3}", NULL, 1, "3", "4\n0"},
	    {"{\"type\": \"string\", \"format\": \"email\"}", "format", 1, "\"x\"", "1"},
	    {"{\"type\": \"string\", \"format\": \"date\", \"maxLength\": 4}", "format", 1,
	     "\"ab\"", "\"abcde\""},
	    {"{\"type\": \"number\", \"minimum\": 0.5, \"maximum\": 2.5}", "minimum,maximum", 0,
	     "3\n0.25", "3.5\n-0.5"},
	    {"{\"type\": \"number\", \"exclusiveMinimum\": -0.5}", "exclusiveMinimum", 0, "-1",
	     "-1.5"},
	    {"{\"type\": \"string\", \"pattern\": \"^[A-Z]+$\", \"maxLength\": 3}", "maxLength", 0,
	     "\"ABCDE\"", "\"abc\""},
	    {"{\"type\": \"string\", \"pattern\": \"^(?=a)\", \"maxLength\": 2}", "pattern", 0,
	     "\"zz\"", "\"zzz\""},
	    {"{\"type\": \"array\", \"maxItems\": 100000, \"contains\": {}, \"items\": "
	     "{\"type\": \"integer\"}}",
	     "contains,maxItems", 0, "[1,2,3]", "[\"a\"]"},
	    {"{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}, "
	     "\"patternProperties\": {\"^x\": {\"type\": \"string\"}}, "
	     "\"additionalProperties\": false, \"minProperties\": 1}",
	     "patternProperties,minProperties,additionalProperties", 0, "{\"a\":1,\"zz\":[]}",
	     "{\"a\":\"1\"}"},
	    {"{\"allOf\": [{\"type\": \"integer\", \"minimum\": 2}, {\"maximum\": 5}]}", "allOf", 0,
	     "7", "1"},
	    {"{\"if\": {\"type\": \"string\"}, \"then\": {\"minLength\": 2}, \"type\": "
	     "[\"string\", \"null\"], \"x-vendor\": 1}",
	     "if,then,x-vendor", 0, "\"a\"", "1"},
	    {"{\"type\": \"integer\", \"nullable\": true, \"maximum\": 3}", NULL, 1, "null\n3",
	     "4"},
	    {"{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"boolean\"}}, "
	     "\"dependentRequired\": {\"a\": [\"b\"]}, \"propertyNames\": {\"maxLength\": 1}, "
	     "\"unevaluatedProperties\": false}",
	     "dependentRequired,propertyNames,unevaluatedProperties", 0, "{\"a\":true}",
	     "{\"a\":1}"},
	};
	for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
		const char *sc = c[i].schema ? c[i].schema : schema;
		char *strict_text = NULL, *strict_ign = NULL;
		err =
		    moe_grammar_schema_to_gbnf_ex(&strict_text, sc, strlen(sc), "", 0, &strict_ign);
		cr_assert_eq(err, c[i].strict_ok ? MOE_OK : MOE_ERR_UNSUPPORTED, "%s: strict: %s",
		             sc, moe_err_name(err));
		cr_assert(!c[i].strict_ok || same_list(strict_ign, c[i].ignored),
		          "%s: strict ignored %s", sc, strict_ign ? strict_ign : "-");
		free(strict_text);
		free(strict_ign);
		fixture f;
		fx_open(&f, sc, MOE_GRAMMAR_SCHEMA_LENIENT, &ign);
		cr_assert(same_list(ign, c[i].ignored), "%s: ignored %s", sc, ign ? ign : "-");
		for (int want = 0; want < 2; want++) {
			char *docs = strdup(want ? c[i].yes : c[i].no), *save = NULL;
			for (char *d = strtok_r(docs, "\n", &save); d;
			     d = strtok_r(NULL, "\n", &save))
				cr_assert_eq(takes(f.m, d), want, "%s: %s %s", sc, d,
				             want ? "refused" : "accepted");
			free(docs);
		}
		fx_close(&f);
		free(ign);
	}
	/* a NULL report is fine */
	cr_assert(moe_grammar_schema_to_gbnf_ex(&text, schema, strlen(schema), "fn-",
	                                        MOE_GRAMMAR_SCHEMA_LENIENT, NULL) == MOE_OK);
	cr_assert(strstr(text, "fn-root ::= ") != NULL);
	free(text);
}
