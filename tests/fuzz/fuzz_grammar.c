/*
 * fuzz_grammar.c - libFuzzer harness for the grammar compiler and matcher:
 * the input is grammar text, then a NUL byte, then bytes to match.  A grammar
 * that compiles is indexed over a vocabulary of the 256 single bytes, an end
 * token and some multi-byte tokens, and the bytes are fed one token at a
 * time: each must be accepted exactly when token_ok and the full mask say it
 * is valid, and two multi-byte tokens per step must be in the mask exactly
 * when token_ok says so.
 */
#include <stdbool.h>
#include <string.h>

#include "grammar/grammar.h"
#include "tests/fuzz/fuzz.h"

static moe_grammar_vocab *vocab;

/* Multi-byte tokens after the 256 bytes and the end token (id 256): real
 * vocabularies are mostly such tokens, and a token of several bytes can push,
 * pop and fan out within one step, which one byte cannot. */
static const char *const multi[] = {
    "ab",  "abc", "aa",   "  ",   "\n\n", " \n", "{\"", "\":", "\",", "},", "[]",  "12",
    "-1",  "0.",  "true", "null", "\\n",  "xy",  "a\n", "\n-", "- ",  "::", "==",  "\t\t",
    "a b", "()",  "x|",   "|y",   "\"\"", "9-",  "-9",  "{}",  "a\"", "',", "TnT", "\n\n\n",
};
#define N_MULTI (sizeof multi / sizeof *multi)
#define N_VOCAB (257 + N_MULTI)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	static char bytes[256];
	const char *strs[N_VOCAB];
	size_t lens[N_VOCAB];
	for (int i = 0; i < 256; i++) {
		bytes[i] = (char)i;
		strs[i] = &bytes[i];
		lens[i] = 1;
	}
	strs[256] = "";
	lens[256] = 0;
	for (size_t i = 0; i < N_MULTI; i++) {
		strs[257 + i] = multi[i];
		lens[257 + i] = strlen(multi[i]);
	}
	const int32_t end = 256;
	const moe_err err = moe_grammar_vocab_create(&vocab, N_VOCAB, strs, lens, NULL, &end, 1);
	if (err != MOE_OK)
		fuzz_setup_failed("the byte vocabulary", err);
	return 0;
}

/* Whether token tok's bit in the mask is what token_ok says (aborts if not). */
static bool agrees(moe_grammar_matcher *m, const uint32_t *mask, int32_t tok, size_t at)
{
	const bool in_mask = (mask[tok >> 5] >> (tok & 31)) & 1u;
	const bool ok = moe_grammar_matcher_token_ok(m, tok);
	if (ok != in_mask) {
		fprintf(stderr,
		        "token_ok (%d) and the mask (%d) disagree on token %d at byte %zu\n", ok,
		        in_mask, tok, at);
		abort();
	}
	return ok;
}

static void match(const moe_grammar *g, const uint8_t *in, size_t n)
{
	moe_grammar_tables *t = NULL;
	moe_grammar_matcher *m = NULL;
	uint32_t *mask = calloc(moe_grammar_mask_words(vocab), sizeof *mask);
	if (mask == NULL || moe_grammar_tables_create(&t, g, vocab) != MOE_OK ||
	    moe_grammar_matcher_create(&m, t) != MOE_OK)
		goto out_free;
	for (size_t i = 0; i < n && i < 256; i++) {
		const int32_t tok = in[i];
		if (moe_grammar_matcher_fill_mask(m, mask) != MOE_OK)
			break;
		const bool ok = agrees(m, mask, tok, i);
		/* two of the multi-byte tokens, picked by the input */
		(void)agrees(m, mask, (int32_t)(257 + (in[i] * 7u + i) % N_MULTI), i);
		(void)agrees(m, mask, (int32_t)(257 + (in[i] * 13u + 3 * i + 1) % N_MULTI), i);
		const moe_err err = moe_grammar_matcher_accept_token(m, tok);
		if ((err == MOE_OK) != ok && err != MOE_ERR_BAD_COUNT) {
			fprintf(stderr, "accept_token disagrees with token_ok at byte %zu\n", i);
			abort();
		}
		if (err != MOE_OK)
			break;
	}
	if (n > 1)
		(void)moe_grammar_matcher_rollback(m, 1);
	(void)moe_grammar_matcher_can_end(m);
out_free:
	moe_grammar_matcher_destroy(m);
	moe_grammar_tables_destroy(t);
	free(mask);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	const size_t glen = nul ? (size_t)(nul - data) : size;
	moe_grammar *g = NULL;
	if (moe_grammar_parse(&g, (const char *)data, glen, NULL) != MOE_OK)
		return 0;
	if (nul != NULL)
		match(g, nul + 1, size - glen - 1);
	moe_grammar_destroy(g);
	return 0;
}
