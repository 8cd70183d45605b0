/*
 * test_grammar.c - the grammar engine: grammar text parsing and its errors,
 * hostile grammars and schemas (refused or bounded), the matcher on a small
 * byte vocabulary (every mask against every token), JSON schemas against an
 * independent random document generator (accepted byte by byte and token by
 * token through the real Qwen3 tokenizer, broken ones refused at the first
 * bad byte), fill_mask against token_ok over the whole 151,669-token
 * vocabulary, constrained random walks validated by ajv (node, with
 * tests/sdk/node_modules), rollback and clone, tool-call
 * composition with Qwen3's added tokens, integer and number ranges against
 * brute force, the lenient mode and its report.
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
#include "model/tokenizer.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW 1 /* the sanitizer build: fewer of the expensive checks */
#else
#define SLOW 0
#endif

/* ---- helpers ---------------------------------------------------------------------- */

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

typedef struct sb {
	char *p;
	size_t n, cap;
} sb;

static void sb_put(sb *b, const char *s, size_t n)
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

static void sb_puts(sb *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static moe_tokenizer *qwen3(void)
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

static int32_t im_end(void)
{
	return moe_tokenizer_find_special(qwen3(), "<|im_end|>", 10);
}

/* The Qwen3 vocabulary view: control tokens never valid, <|im_end|> ends. */
static moe_grammar_vocab *qvocab(void)
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
#define TINY_N (256 + sizeof tiny_multi / sizeof *tiny_multi + 2)

static moe_grammar_vocab *tiny_vocab(void)
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

static moe_grammar *parse_ok(const char *text)
{
	moe_grammar *g = NULL;
	moe_err err = moe_grammar_parse(&g, text, strlen(text), NULL);
	cr_assert(err == MOE_OK, "parse: %s: %s\n%s", moe_err_name(err), moe_err_detail(), text);
	return g;
}

/* Whether the whole of s is a sentence of the grammar (tiny vocabulary). */
static int accepts(const moe_grammar_tables *t, const char *s, size_t n)
{
	moe_grammar_matcher *m;
	cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
	int ok =
	    moe_grammar_matcher_accept_bytes(m, s, n) == MOE_OK && moe_grammar_matcher_can_end(m);
	moe_grammar_matcher_destroy(m);
	return ok;
}

static int bit(const uint32_t *mask, uint32_t id)
{
	return (mask[id >> 5] >> (id & 31)) & 1;
}

/* fill_mask equals token_ok for every token of the vocabulary. */
static void check_mask_exact(moe_grammar_matcher *m, const moe_grammar_vocab *v, const char *where)
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

Test(grammar, parses_the_language)
{
	static const char *const ok[] = {
	    "root ::= \"a\"",
	    "root ::= \"a\" | \"b\"\n  | \"c\"   # comment\n",
	    "# leading comment\n\nroot ::= x y\nx ::= [a-z]+\ny ::= [^a-z\\n]* \"\\t\\\\\\\"\"\n",
	    "root ::=\n  ( \"a\" ( \"b\" | \"c\" )? )*\n  \"d\"{2,3} [0-9]{3} .{,2} \"x\"{1,}",
	    "root ::= [\\u00e9-\\U0001F600] \"\\x41\" [\\]\\[\\-\\^]",
	    "root ::= \"\"",
	    "root ::= item (\",\" item)*\nitem ::= \"[\" root? \"]\"",
	    "root ::= ws\nws ::= [ \\t\\n]*",
	};
	for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
		moe_grammar *g = parse_ok(ok[i]);
		cr_assert(moe_grammar_n_states(g) > 0);
		moe_grammar_destroy(g);
	}
	moe_grammar_destroy(NULL);
}

Test(grammar, errors_name_line_and_column)
{
	static const struct {
		const char *text;
		moe_err err;
		const char *detail;
	} bad[] = {
	    {"root ::= \"a", MOE_ERR_FORMAT, "line 1, column 10: unterminated literal"},
	    {"root ::= \"a\"\nx ::= [a-", MOE_ERR_FORMAT, "line 2, column 7: unterminated"},
	    {"root ::= x", MOE_ERR_NOT_FOUND, "rule x is not defined"},
	    {"root ::= \"a\"\nroot ::= \"b\"", MOE_ERR_DUPLICATE, "line 2, column 1: rule root"},
	    {"root = \"a\"", MOE_ERR_FORMAT, "line 1, column 6: expected '::='"},
	    {"root ::= (\"a\"", MOE_ERR_FORMAT, "expected ')'"},
	    {"root ::= \"a\"{3,2}", MOE_ERR_FORMAT, "maximum below"},
	    {"root ::= \"\\q\"", MOE_ERR_FORMAT, "line 1, column 11: unknown escape"},
	    {"root ::= [z-a]", MOE_ERR_FORMAT, "out of order"},
	    {"root ::= \"\\uD800\"", MOE_ERR_FORMAT, "not a Unicode scalar"},
	    {"root ::= )", MOE_ERR_FORMAT, "line 1, column 10"},
	    {"x ::= \"a\"", MOE_ERR_NOT_FOUND, "no rule named root"},
	    {"root ::= \"a\"{10001}", MOE_ERR_BAD_COUNT, "above 10000"},
	    {"\n\n  root ::= \"a\" @", MOE_ERR_FORMAT, "line 3, column 16"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		moe_grammar *g = NULL;
		moe_err err = moe_grammar_parse(&g, bad[i].text, strlen(bad[i].text), NULL);
		cr_assert_eq(err, bad[i].err, "%s: got %s (%s)", bad[i].text, moe_err_name(err),
		             moe_err_detail());
		cr_assert(strstr(moe_err_detail(), bad[i].detail) != NULL, "%s: detail '%s'",
		          bad[i].text, moe_err_detail());
		cr_assert(g == NULL);
	}
}

Test(grammar, hostile_grammars_are_refused_or_bounded)
{
	static const struct {
		const char *text;
		moe_err err;
	} bad[] = {
	    {"root ::= root \"a\" | \"b\"", MOE_ERR_UNSUPPORTED},               /* left recursion */
	    {"root ::= x\nx ::= y \"a\"\ny ::= \"\" | x", MOE_ERR_UNSUPPORTED}, /* indirect */
	    {"root ::= e? root \"x\" | \"y\"\ne ::= \"\"", MOE_ERR_UNSUPPORTED}, /* via nullable */
	    {"root ::= \"a\" root", MOE_ERR_UNSUPPORTED}, /* never finishes */
	    {"root ::= (\"a\"{10000}){10000}", MOE_ERR_BAD_COUNT},
	    {"root ::= ((((\"a\"{100}){100}){100}){100})", MOE_ERR_BAD_COUNT},
	    {"root ::= \"a\"?????????", MOE_ERR_BAD_COUNT},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		moe_grammar *g = NULL;
		moe_err err = moe_grammar_parse(&g, bad[i].text, strlen(bad[i].text), NULL);
		cr_assert_eq(err, bad[i].err, "%s: got %s (%s)", bad[i].text, moe_err_name(err),
		             moe_err_detail());
	}
	/* 100 nested groups: refused, no deep recursion */
	sb b = {0};
	sb_puts(&b, "root ::= ");
	for (int i = 0; i < 100; i++)
		sb_puts(&b, "(");
	sb_puts(&b, "\"a\"");
	for (int i = 0; i < 100; i++)
		sb_puts(&b, ")");
	moe_grammar *g = NULL;
	cr_assert_eq(moe_grammar_parse(&g, b.p, b.n, NULL), MOE_ERR_BAD_COUNT);
	free(b.p);
	/* exponential determinisation: refused, not run out of memory */
	const char *blow = "root ::= [ab]* \"a\" [ab]{20}";
	moe_err err = moe_grammar_parse(&g, blow, strlen(blow), NULL);
	cr_assert_eq(err, MOE_ERR_BAD_COUNT, "%s", moe_err_detail());
	/* random bytes never crash the parser */
	uint64_t s = 7;
	for (int k = 0; k < 2000; k++) {
		char txt[64] = "root ::= ";
		size_t n = 9 + rng(&s) % 40;
		for (size_t i = 9; i < n; i++)
			txt[i] = "\"[]()|*+?{},.^-\\ a1\n#:="[rng(&s) % 24];
		if (moe_grammar_parse(&g, txt, n, NULL) == MOE_OK)
			moe_grammar_destroy(g);
	}
	/* deep recursion at run time is capped, not followed */
	g = parse_ok("root ::= \"[\" root? \"]\"");
	moe_grammar_tables *t;
	cr_assert(moe_grammar_tables_create(&t, g, tiny_vocab()) == MOE_OK);
	moe_grammar_matcher *m;
	cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
	int depth = 0;
	while (moe_grammar_matcher_accept_bytes(m, "[", 1) == MOE_OK)
		depth++;
	cr_assert(depth >= MOE_GRAMMAR_MAX_DEPTH - 2 && depth <= MOE_GRAMMAR_MAX_DEPTH, "%d",
	          depth);
	check_mask_exact(m, tiny_vocab(), "at the depth limit");
	moe_grammar_matcher_destroy(m);
	moe_grammar_tables_destroy(t);
	moe_grammar_destroy(g);
}

Test(grammar, sentences_on_bytes)
{
	static const struct {
		const char *grammar;
		const char *yes[6];
		const char *no[6];
	} cases[] = {
	    {"root ::= \"a\" | \"b\" \"c\"", {"a", "bc"}, {"", "b", "ac", "abc"}},
	    {"root ::= [a-c]{2,3}", {"ab", "abc", "cca"}, {"a", "abca", "ad"}},
	    {"root ::= [^a]", {"b", "é", "😀", "\n"}, {"a", "", "\xC3", "\xED\xA0\x80"}},
	    {"root ::= [\\u00e0-\\u00ff]+", {"é", "àÿ"}, {"e", "Ā", "\xC3"}},
	    {"root ::= \"x\"{,2} \"y\"{1,}", {"y", "xyy", "xxy"}, {"xxxy", "x", ""}},
	    {"root ::= ( \"ab\" | \"a\" )* \"b\"", {"b", "abb", "aab", "ababb"}, {"ba", "a"}},
	    {"root ::= s \",\" s\ns ::= \"\\\"\" [^\"]* \"\\\"\"",
	     {"\"\",\"x\"", "\"é\",\"\""},
	     {"\"\"", "\"a\"b\",\"\""}},
	    {"root ::= .", {"a", "😀", "\x7F"}, {"ab", "\xFF", "\xF4\x90\x80\x80"}},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		moe_grammar *g = parse_ok(cases[i].grammar);
		moe_grammar_tables *t;
		cr_assert(moe_grammar_tables_create(&t, g, tiny_vocab()) == MOE_OK);
		for (int k = 0; k < 6 && cases[i].yes[k]; k++)
			cr_assert(accepts(t, cases[i].yes[k], strlen(cases[i].yes[k])), "%s: '%s'",
			          cases[i].grammar, cases[i].yes[k]);
		for (int k = 0; k < 6 && cases[i].no[k]; k++)
			cr_assert(!accepts(t, cases[i].no[k], strlen(cases[i].no[k])),
			          "%s: not '%s'", cases[i].grammar, cases[i].no[k]);
		moe_grammar_tables_destroy(t);
		moe_grammar_destroy(g);
	}
}

/* Every mask along every path of a few grammars equals token_ok (small vocab). */
Test(grammar, masks_on_the_small_vocabulary)
{
	static const char *const gs[] = {
	    "root ::= \"{\" kv (\", \" kv)* \"}\"\nkv ::= str \":\" val\nstr ::= \"\\\"\" [a-z]* "
	    "\"\\\"\"\nval ::= \"12\" | \"1.5\" | \"true\" | \"null\" | str",
	    "root ::= x x\nx ::= \"a\"* | \"ab\"",
	    "root ::= [😀é]+ \"b\"?",
	};
	uint64_t s = 99;
	for (size_t i = 0; i < sizeof gs / sizeof *gs; i++) {
		moe_grammar *g = parse_ok(gs[i]);
		moe_grammar_tables *t;
		cr_assert(moe_grammar_tables_create(&t, g, tiny_vocab()) == MOE_OK);
		uint32_t *mask = malloc(moe_grammar_mask_words(tiny_vocab()) * 4);
		for (int walk = 0; walk < 20; walk++) {
			moe_grammar_matcher *m;
			cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
			for (int step = 0; step < 30 && !moe_grammar_matcher_is_done(m); step++) {
				check_mask_exact(m, tiny_vocab(), gs[i]);
				cr_assert(moe_grammar_matcher_fill_mask(m, mask) == MOE_OK);
				uint32_t n = 0, pick;
				for (uint32_t id = 0; id < TINY_N; id++)
					n += bit(mask, id);
				cr_assert(n > 0, "%s: empty mask at step %d", gs[i], step);
				pick = (uint32_t)(rng(&s) % n);
				for (uint32_t id = 0; id < TINY_N; id++)
					if (bit(mask, id) && pick-- == 0) {
						cr_assert(moe_grammar_matcher_accept_token(
						              m, (int32_t)id) == MOE_OK);
						break;
					}
			}
			cr_assert(!moe_grammar_matcher_token_ok(m, TINY_N - 2),
			          "never-valid token");
			moe_grammar_matcher_destroy(m);
		}
		free(mask);
		moe_grammar_tables_destroy(t);
		moe_grammar_destroy(g);
	}
}

/* ---- JSON schemas ----------------------------------------------------------------- */

static const char *const schemas[] = {
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
#define N_SCHEMAS (sizeof schemas / sizeof *schemas)

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
static int in_bounds(const cJSON *x, double v)
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

static char *gen_doc(size_t schema, uint64_t seed)
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
static moe_grammar_tables *schema_tables(size_t i)
{
	static moe_grammar *g[N_SCHEMAS];
	static moe_grammar_tables *t[N_SCHEMAS];
	if (t[i] == NULL) {
		moe_err err = moe_grammar_from_json_schema(&g[i], schemas[i], strlen(schemas[i]));
		cr_assert(err == MOE_OK, "schema %zu: %s: %s", i, moe_err_name(err),
		          moe_err_detail());
		err = moe_grammar_tables_create(&t[i], g[i], qvocab());
		cr_assert(err == MOE_OK, "schema %zu tables: %s", i, moe_err_detail());
	}
	return t[i];
}

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
	    {"{\"type\": \"object\", \"properties\": {}, \"required\": [\"x\"]}",
	     MOE_ERR_UNSUPPORTED, "required property", NULL},
	    {"{\"allOf\": [{\"type\": \"string\"}, {\"type\": \"object\"}]}", MOE_ERR_UNSUPPORTED,
	     "allOf", "allOf"},
	    {"{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\"}",
	     MOE_ERR_UNSUPPORTED, "never finish", NULL},
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

/* ---- masks over the whole vocabulary ---------------------------------------------- */

/* A tool call as the server composes it: Qwen3's markup around a schema. */
static moe_grammar_tables *tool_tables(moe_grammar **gout)
{
	char *fn, *lit;
	cr_assert(moe_grammar_schema_to_gbnf(&fn, schemas[2], strlen(schemas[2]), "fn-") == MOE_OK);
	const char *head = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ";
	cr_assert(moe_grammar_literal(&lit, head, strlen(head)) == MOE_OK);
	sb b = {0};
	sb_puts(&b, "root ::= ");
	sb_puts(&b, lit);
	sb_puts(&b, " fn-root \"}\\n</tool_call>\"\n");
	sb_puts(&b, fn);
	moe_grammar *g = parse_ok(b.p);
	moe_grammar_tables *t;
	cr_assert(moe_grammar_tables_create(&t, g, qvocab()) == MOE_OK, "%s", moe_err_detail());
	free(fn);
	free(lit);
	free(b.p);
	*gout = g;
	return t;
}

Test(grammar, fill_mask_is_token_ok_over_the_vocabulary, .timeout = 300)
{
	moe_grammar *g;
	moe_grammar_tables *t = tool_tables(&g);
	char *args = gen_doc(2, 3);
	sb b = {0};
	sb_puts(&b, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ");
	sb_puts(&b, args);
	sb_puts(&b, "}\n</tool_call>");
	int32_t *ids;
	size_t n_ids;
	cr_assert(moe_tokenizer_encode(&ids, &n_ids, qwen3(), b.p, b.n, 0) == MOE_OK);
	cr_assert_eq(ids[0], moe_tokenizer_find_special(qwen3(), "<tool_call>", 11));
	moe_grammar_matcher *m;
	cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
	/* the added token <tool_call> is allowed, control tokens are not */
	cr_assert(moe_grammar_matcher_token_ok(m, ids[0]));
	cr_assert(!moe_grammar_matcher_token_ok(
	    m, moe_tokenizer_find_special(qwen3(), "<|im_start|>", 12)));
	size_t every = SLOW ? n_ids / 6 + 1 : 3;
	for (size_t k = 0; k < n_ids; k++) {
		if (k % every == 0 || k + 1 == n_ids) {
			char where[64];
			snprintf(where, sizeof where, "tool call step %zu", k);
			check_mask_exact(m, qvocab(), where);
		}
		cr_assert(moe_grammar_matcher_accept_token(m, ids[k]) == MOE_OK, "step %zu", k);
	}
	check_mask_exact(m, qvocab(), "at the end");
	cr_assert(moe_grammar_matcher_can_end(m) && moe_grammar_matcher_is_done(m));
	moe_grammar_matcher_destroy(m);
	free(ids);
	free(args);
	free(b.p);
	moe_grammar_tables_destroy(t);
	moe_grammar_destroy(g);
}

Test(grammar, rollback_and_clone)
{
	moe_grammar *g;
	moe_grammar_tables *t = tool_tables(&g);
	const char *text =
	    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"s\": \"héllo\", "
	    "\"n\": 1.5, \"i\": -3, \"b\": true, \"z\": null, \"a\": [1, 2], \"o\": "
	    "{\"x\": \"\"}}}\n</tool_call>";
	int32_t *ids;
	size_t n;
	cr_assert(moe_tokenizer_encode(&ids, &n, qwen3(), text, strlen(text), 0) == MOE_OK);
	size_t words = moe_grammar_mask_words(qvocab());
	uint32_t **masks = calloc(n + 1, sizeof(*masks));
	moe_grammar_matcher *m, *c = NULL;
	cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
	for (size_t k = 0; k <= n; k++) {
		masks[k] = malloc(words * 4);
		cr_assert(moe_grammar_matcher_fill_mask(m, masks[k]) == MOE_OK);
		if (k == n / 2)
			cr_assert(moe_grammar_matcher_clone(&c, m) == MOE_OK);
		if (k < n)
			cr_assert(moe_grammar_matcher_accept_token(m, ids[k]) == MOE_OK);
	}
	cr_assert(moe_grammar_matcher_accept_token(m, im_end()) == MOE_OK);
	cr_assert_eq(moe_grammar_matcher_n_steps(m), n + 1);
	cr_assert_eq(moe_grammar_matcher_rollback(m, n + 2), MOE_ERR_INVAL);
	uint32_t *mask = malloc(words * 4);
	/* back several steps at once, then forward again */
	cr_assert(moe_grammar_matcher_rollback(m, n / 3 + 1) == MOE_OK);
	cr_assert(moe_grammar_matcher_fill_mask(m, mask) == MOE_OK);
	cr_assert(!memcmp(mask, masks[n - n / 3], words * 4), "after rollback of %zu", n / 3 + 1);
	for (size_t k = n - n / 3; k < n; k++)
		cr_assert(moe_grammar_matcher_accept_token(m, ids[k]) == MOE_OK);
	cr_assert(moe_grammar_matcher_accept_token(m, im_end()) == MOE_OK);
	/* back step by step: every earlier mask again */
	for (size_t k = n + 1; k-- > 0;) {
		cr_assert(moe_grammar_matcher_rollback(m, 1) == MOE_OK);
		cr_assert(moe_grammar_matcher_fill_mask(m, mask) == MOE_OK);
		cr_assert(!memcmp(mask, masks[k < n ? k : n], words * 4), "after rollback to %zu",
		          k);
		if (k == 0)
			break;
	}
	/* the clone goes on alone from the middle */
	for (size_t k = n / 2; k < n; k++) {
		cr_assert(moe_grammar_matcher_fill_mask(c, mask) == MOE_OK);
		cr_assert(!memcmp(mask, masks[k], words * 4), "clone at %zu", k);
		cr_assert(moe_grammar_matcher_accept_token(c, ids[k]) == MOE_OK);
	}
	cr_assert(moe_grammar_matcher_can_end(c));
	/* a refused token leaves the matcher as it was */
	cr_assert_eq(moe_grammar_matcher_accept_token(c, ids[0]), MOE_ERR_INVAL);
	cr_assert(moe_grammar_matcher_can_end(c));
	for (size_t k = 0; k <= n; k++)
		free(masks[k]);
	free(masks);
	free(mask);
	free(ids);
	moe_grammar_matcher_destroy(c);
	moe_grammar_matcher_destroy(m);
	moe_grammar_matcher_destroy(NULL);
	moe_grammar_tables_destroy(t);
	moe_grammar_destroy(g);
}

/* ---- constrained random walks, validated by ajv ----------------------------------- */

/* The validator script (tests/sdk/validate.cjs) with ajv and ajv-formats
 * next to it in tests/sdk/node_modules, which deploy/install.sh test installs
 * (npm ci): without them the test fails, saying so. */
static const char *ajv_script(void)
{
	static char script[4096], mod[4096];
	const char *src = getenv("MOE_SOURCE_DIR");
	cr_assert(src != NULL, "MOE_SOURCE_DIR is not set");
	struct stat st;
	snprintf(mod, sizeof mod, "%s/tests/sdk/node_modules/ajv-formats/package.json", src);
	cr_assert(stat(mod, &st) == 0,
	          "%s is missing: deploy/install.sh test installs the test clients "
	          "(npm ci --prefix tests/sdk)",
	          mod);
	snprintf(script, sizeof script, "%s/tests/sdk/validate.cjs", src);
	return script;
}

static void jsonl_doc(FILE *f, size_t schema, const char *doc, const char *what)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "schema", (double)schema);
	cJSON_AddStringToObject(o, "doc", doc);
	cJSON_AddStringToObject(o, "what", what);
	char *line = cJSON_PrintUnformatted(o);
	fprintf(f, "%s\n", line);
	free(line);
	cJSON_Delete(o);
}

Test(grammar, random_walks_are_valid_json_for_ajv, .timeout = 600)
{
	FILE *sf = fopen("grammar_schemas.json", "w"), *df = fopen("grammar_docs.jsonl", "w");
	cr_assert(sf != NULL && df != NULL);
	fprintf(sf, "[");
	for (size_t i = 0; i < N_SCHEMAS; i++)
		fprintf(sf, "%s%s\n", i ? "," : "", schemas[i]);
	fprintf(sf, "]\n");
	fclose(sf);
	const moe_grammar_vocab *v = qvocab();
	uint32_t nv = moe_grammar_vocab_n(v);
	uint32_t *mask = malloc(moe_grammar_mask_words(v) * 4);
	uint64_t s = 2024;
	int walks = SLOW ? 2 : 6, finished = 0, total = 0, n_docs = 0;
	for (size_t i = 0; i < N_SCHEMAS; i++) {
		moe_grammar_tables *t = schema_tables(i);
		/* the generator's documents go to ajv too: it checks the generator */
		for (int d = 0; d < 4; d++) {
			char *doc = gen_doc(i, (uint64_t)d);
			jsonl_doc(df, i, doc, "generated");
			n_docs++;
			free(doc);
		}
		for (int w = 0; w < walks; w++, total++) {
			moe_grammar_matcher *m;
			cr_assert(moe_grammar_matcher_create(&m, t) == MOE_OK);
			sb out = {0};
			int step;
			for (step = 0; step < 1500 && !moe_grammar_matcher_is_done(m); step++) {
				cr_assert(moe_grammar_matcher_fill_mask(m, mask) == MOE_OK);
				uint32_t n = 0;
				for (size_t k = 0; k < moe_grammar_mask_words(v); k++)
					n += (uint32_t)__builtin_popcount(mask[k]);
				cr_assert(n > 0, "schema %zu: empty mask after %s", i,
				          out.p ? out.p : "");
				if (rng(&s) % 97 ==
				    0) /* now and then, the whole mask by brute force */
					check_mask_exact(m, v, "random walk");
				uint32_t pick = (uint32_t)(rng(&s) % n), id = 0;
				for (id = 0; id < nv; id++)
					if (bit(mask, id) && pick-- == 0)
						break;
				cr_assert(moe_grammar_matcher_token_ok(m, (int32_t)id));
				cr_assert(moe_grammar_matcher_accept_token(m, (int32_t)id) ==
				          MOE_OK);
				if ((int32_t)id != im_end()) {
					size_t len;
					const char *tb =
					    moe_tokenizer_token_bytes(qwen3(), (int32_t)id, &len);
					sb_put(&out, tb, len);
				}
			}
			if (moe_grammar_matcher_is_done(m)) {
				finished++;
				cJSON *parsed = cJSON_ParseWithLength(out.p, out.n);
				cr_assert(parsed != NULL, "schema %zu: walk output is not JSON: %s",
				          i, out.p);
				cJSON_Delete(parsed);
				jsonl_doc(df, i, out.p, "random walk");
				n_docs++;
			}
			free(out.p);
			moe_grammar_matcher_destroy(m);
		}
	}
	fclose(df);
	free(mask);
	cr_assert(finished * 2 >= total, "only %d of %d walks finished", finished, total);
	cr_log_info("%d of %d random walks finished; %d documents for ajv", finished, total,
	            n_docs);
	const char *script = ajv_script();
	char cmd[16384];
	snprintf(cmd, sizeof cmd, "node '%s' grammar_schemas.json grammar_docs.jsonl", script);
	int rc = system(cmd);
	cr_assert_eq(rc, 0, "ajv found invalid documents (above)");
}
