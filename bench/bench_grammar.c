/*
 * bench_grammar.c - `moemesh bench grammar`: the cost of constrained decoding
 * per step.  Loads the Qwen3 vocabulary, compiles a realistic tool schema
 * inside Qwen3's tool-call markup (schema to grammar text, the automaton, the
 * per-position tables), then replays a valid tool call token by token (as
 * the real tokenizer splits it) and times, at every step, the one-token check
 * of the sample-then-check fast path (token_ok) and the full mask
 * (fill_mask), each reported as mean, p50, p99 and max over all steps of all
 * replays; then compiles schemas of 1,000 to 16,000 properties (a request
 * may bring one that wide) and times their text and automaton.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "grammar/grammar.h"
#include "model/model.h"

static const char schema[] =
    "{\"type\": \"object\", \"properties\": {"
    "\"origin\": {\"type\": \"string\", \"description\": \"IATA code\", \"pattern\": "
    "\"^[A-Z]{3}$\"},"
    "\"destination\": {\"type\": \"string\", \"pattern\": \"^[A-Z]{3}$\"},"
    "\"departure_date\": {\"type\": \"string\", \"format\": \"date\"},"
    "\"return_date\": {\"type\": \"string\", \"format\": \"date\"},"
    "\"passengers\": {\"type\": \"object\", \"properties\": {"
    "  \"adults\": {\"type\": \"integer\", \"minimum\": 1},"
    "  \"children\": {\"type\": \"integer\", \"minimum\": 0},"
    "  \"infants\": {\"type\": \"integer\", \"minimum\": 0}},"
    "  \"required\": [\"adults\"], \"additionalProperties\": false},"
    "\"cabin\": {\"enum\": [\"economy\", \"premium_economy\", \"business\", \"first\"]},"
    "\"max_price\": {\"type\": [\"number\", \"null\"]},"
    "\"airlines\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"maxItems\": 5},"
    "\"nonstop\": {\"type\": \"boolean\"},"
    "\"notes\": {\"type\": \"string\", \"description\": \"free text for the agent\"},"
    "\"filters\": {\"type\": \"array\", \"items\": {\"type\": \"object\", \"properties\": {"
    "  \"field\": {\"type\": \"string\"}, \"op\": {\"enum\": [\"eq\", \"lt\", \"gt\"]},"
    "  \"value\": {\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"number\"}]}},"
    "  \"required\": [\"field\", \"op\", \"value\"]}}"
    "}, \"required\": [\"origin\", \"destination\", \"departure_date\", \"passengers\"]}";

static const char output[] =
    "<tool_call>\n{\"name\": \"search_flights\", \"arguments\": {\"origin\": \"SFO\", "
    "\"destination\": \"NRT\", \"departure_date\": \"2025-03-14\", \"return_date\": "
    "\"2025-03-28\", \"passengers\": {\"adults\": 2, \"children\": 1}, \"cabin\": "
    "\"premium_economy\", \"max_price\": 2450.5, \"airlines\": [\"United\", \"ANA\", \"Japan "
    "Airlines\"], \"nonstop\": true, \"notes\": \"Family trip \\u2014 we'd prefer an aisle "
    "seat and a bassinet for the \\\"little one\\\"; flexible by \\u00b12 days. 日本語も可。\", "
    "\"filters\": [{\"field\": \"departure_time\", \"op\": \"gt\", \"value\": \"08:00\"}, "
    "{\"field\": \"layover_minutes\", \"op\": \"lt\", \"value\": 180}]}}\n</tool_call>";

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void stats(const char *what, double *v, size_t n, double *mean_out)
{
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	qsort(v, n, sizeof(double), cmp_double);
	double mean = sum / (double)n;
	printf("  %-10s mean %8.2f us   p50 %8.2f us   p99 %8.2f us   max %8.2f us\n", what,
	       mean * 1e6, v[n / 2] * 1e6, v[(size_t)((double)(n - 1) * 0.99)] * 1e6,
	       v[n - 1] * 1e6);
	*mean_out = mean;
}

/* Schemas of n optional integer properties (a request may bring one this
 * wide): schema -> text and the automaton timed; refused past the limits.
 * The text parser was quadratic in the rules here (62 s to refuse 16,000). */
static int wide_schemas(void)
{
	static const int widths[] = {1000, 4000, 16000};
	for (size_t k = 0; k < sizeof widths / sizeof *widths; k++) {
		const int n = widths[k];
		char *s = malloc((size_t)n * 40 + 64), *text = NULL;
		if (s == NULL)
			return -1;
		size_t len = (size_t)sprintf(s, "{\"type\": \"object\", \"properties\": {");
		for (int i = 0; i < n; i++)
			len += (size_t)sprintf(s + len, "%s\"p%d\": {\"type\": \"integer\"}",
			                       i ? ", " : "", i);
		len += (size_t)sprintf(s + len, "}}");
		const double t0 = moe_now_s();
		moe_err err = moe_grammar_schema_to_gbnf(&text, s, len, "");
		const double t1 = moe_now_s();
		moe_grammar *g = NULL;
		if (err == MOE_OK)
			err = moe_grammar_parse(&g, text, strlen(text), "root");
		const double t2 = moe_now_s();
		printf(
		    "  wide       %5d properties, schema %6zu B -> text %7zu B: %.1f ms, automaton "
		    "%.1f ms: %s\n",
		    n, len, text ? strlen(text) : 0, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
		    err == MOE_OK ? "compiled" : moe_err_detail());
		moe_grammar_destroy(g);
		free(text);
		free(s);
	}
	return 0;
}

static int fail(moe_err err)
{
	fprintf(stderr, "moemesh bench grammar: %s: %s\n", moe_err_name(err), moe_err_detail());
	return 1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench grammar [--tokenizer-json FILE] [--reps N]\n"
	           "\n"
	           "  --tokenizer-json FILE  vocabulary (default "
	           "tests/fixtures/qwen3-tokenizer/tokenizer.json)\n"
	           "  --reps N               replays of the tool call (default 20)\n");
}

int moe_bench_grammar(int argc, char **argv)
{
	const char *json = "tests/fixtures/qwen3-tokenizer/tokenizer.json";
	int reps = 20;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--tokenizer-json") && i + 1 < argc) {
			json = argv[++i];
		} else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			if (moe_parse_int(&reps, argv[++i], 1, 100000)) {
				fprintf(stderr, "moemesh bench grammar: bad --reps '%s'\n",
				        argv[i]);
				return 2;
			}
		} else {
			usage(stderr);
			return 2;
		}
	}
	int rc = 1;
	moe_err err;
	moe_tokenizer *tok = NULL;
	moe_grammar_vocab *v = NULL;
	moe_grammar *g = NULL;
	moe_grammar_tables *t = NULL;
	moe_grammar_matcher *m = NULL;
	char *fn = NULL, *text = NULL;
	int32_t *ids = NULL;
	uint32_t *mask = NULL;
	double *t_ok = NULL, *t_mask = NULL;
	const char **bytes = NULL;
	size_t *lens = NULL;
	bool *never = NULL;
	if ((err = moe_tokenizer_create_hf(&tok, json)) != MOE_OK) {
		rc = fail(err);
		goto out;
	}
	uint32_t n_vocab = moe_tokenizer_n_vocab(tok);
	bytes = malloc(n_vocab * sizeof(*bytes));
	lens = malloc(n_vocab * sizeof(*lens));
	never = malloc(n_vocab * sizeof(*never));
	if (!bytes || !lens || !never) {
		rc = fail(moe_fail(MOE_ERR_NOMEM, "vocabulary"));
		goto out;
	}
	for (uint32_t i = 0; i < n_vocab; i++) {
		bytes[i] = moe_tokenizer_token_bytes(tok, (int32_t)i, &lens[i]);
		moe_token_type ty = moe_tokenizer_token_type(tok, (int32_t)i);
		never[i] =
		    ty == MOE_TOKEN_CONTROL || ty == MOE_TOKEN_UNUSED || ty == MOE_TOKEN_UNKNOWN;
	}
	int32_t end = moe_tokenizer_find_special(tok, "<|im_end|>", 10);
	double t0 = moe_now_s();
	if ((err = moe_grammar_vocab_create(&v, n_vocab, bytes, lens, never, &end, end >= 0)) !=
	    MOE_OK) {
		rc = fail(err);
		goto out;
	}
	double t_vocab = moe_now_s() - t0;

	/* compile: schema -> text, root around it, automaton, tables */
	t0 = moe_now_s();
	if ((err = moe_grammar_schema_to_gbnf(&fn, schema, strlen(schema), "fn-")) != MOE_OK) {
		rc = fail(err);
		goto out;
	}
	const char *head = "root ::= \"<tool_call>\\n{\\\"name\\\": \\\"search_flights\\\", "
	                   "\\\"arguments\\\": \" fn-root \"}\\n</tool_call>\"\n";
	text = malloc(strlen(head) + strlen(fn) + 1);
	if (text == NULL) {
		rc = fail(moe_fail(MOE_ERR_NOMEM, "grammar text"));
		goto out;
	}
	strcpy(text, head);
	strcat(text, fn);
	double t1 = moe_now_s();
	if ((err = moe_grammar_parse(&g, text, strlen(text), "root")) != MOE_OK) {
		rc = fail(err);
		goto out;
	}
	double t2 = moe_now_s();
	if ((err = moe_grammar_tables_create(&t, g, v)) != MOE_OK) {
		rc = fail(err);
		goto out;
	}
	double t3 = moe_now_s();

	size_t n_ids;
	if ((err = moe_tokenizer_encode(&ids, &n_ids, tok, output, strlen(output), 0)) != MOE_OK) {
		rc = fail(err);
		goto out;
	}
	size_t words = moe_grammar_mask_words(v), steps = (n_ids + 1) * (size_t)reps, k = 0;
	mask = malloc(words * sizeof(uint32_t));
	t_ok = malloc(steps * sizeof(double));
	t_mask = malloc(steps * sizeof(double));
	if (!mask || !t_ok || !t_mask) {
		rc = fail(moe_fail(MOE_ERR_NOMEM, "timings"));
		goto out;
	}
	uint64_t allowed = 0;
	for (int r = 0; r < reps; r++) {
		if ((err = moe_grammar_matcher_create(&m, t)) != MOE_OK) {
			rc = fail(err);
			goto out;
		}
		for (size_t i = 0; i <= n_ids; i++, k++) {
			int32_t id = i < n_ids ? ids[i] : end;
			uint64_t a = moe_now_ns();
			bool ok = moe_grammar_matcher_token_ok(m, id);
			uint64_t b = moe_now_ns();
			err = moe_grammar_matcher_fill_mask(m, mask);
			uint64_t c = moe_now_ns();
			if (err != MOE_OK) {
				rc = fail(err);
				goto out;
			}
			t_ok[k] = (double)(b - a) * 1e-9;
			t_mask[k] = (double)(c - b) * 1e-9;
			if (!ok || !(mask[id >> 5] >> (id & 31) & 1)) {
				rc = fail(
				    moe_fail(MOE_ERR_STATE, "step %zu: token %d refused", i, id));
				goto out;
			}
			for (size_t w = 0; w < words; w++)
				allowed += (uint64_t)__builtin_popcount(mask[w]);
			if ((err = moe_grammar_matcher_accept_token(m, id)) != MOE_OK) {
				rc = fail(err);
				goto out;
			}
		}
		if (!moe_grammar_matcher_is_done(m)) {
			rc = fail(moe_fail(MOE_ERR_STATE, "the replay did not end the grammar"));
			goto out;
		}
		moe_grammar_matcher_destroy(m);
		m = NULL;
	}
	printf("grammar: Qwen3 vocabulary (%u tokens, view built in %.1f ms), tool schema of %zu "
	       "bytes -> %u rules, %u states\n",
	       n_vocab, t_vocab * 1e3, strlen(schema), moe_grammar_n_rules(g),
	       moe_grammar_n_states(g));
	printf("  compile    schema->text %.2f ms, automaton %.2f ms, tables %.1f ms (total %.1f "
	       "ms)\n",
	       (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3);
	printf("  replay     %zu tokens (+ end) x %d, %.0f tokens allowed per step on average\n",
	       n_ids, reps, (double)allowed / (double)steps);
	double m_ok, m_mask;
	stats("token_ok", t_ok, steps, &m_ok);
	stats("fill_mask", t_mask, steps, &m_mask);
	if (wide_schemas() != 0) {
		rc = fail(moe_fail(MOE_ERR_NOMEM, "a wide schema"));
		goto out;
	}
	printf(
	    "summary: grammar compile %.1f ms, token_ok %.2f us, fill_mask %.1f us mean (p99 %.1f "
	    "us) per step\n",
	    (t3 - t0) * 1e3, m_ok * 1e6, m_mask * 1e6,
	    t_mask[(size_t)((double)(steps - 1) * 0.99)] * 1e6);
	rc = 0;
out:
	moe_grammar_matcher_destroy(m);
	moe_grammar_tables_destroy(t);
	moe_grammar_destroy(g);
	moe_grammar_vocab_destroy(v);
	moe_tokenizer_destroy(tok);
	free(fn);
	free(text);
	free(ids);
	free(mask);
	free(t_ok);
	free(t_mask);
	free(bytes);
	free(lens);
	free(never);
	return rc;
}
