/*
 * fuzz_grammar.c - libFuzzer harness for the grammar compiler and matcher:
 * the input is grammar text, then a NUL byte, then bytes to match.  A grammar
 * that compiles is indexed over a vocabulary of the 256 single bytes and an
 * end token, and the bytes are fed one token at a time: each must be accepted
 * exactly when token_ok and the full mask say it is valid.
 */
#include <stdbool.h>
#include <string.h>

#include "grammar/grammar.h"
#include "tests/fuzz/fuzz.h"

static moe_grammar_vocab *vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	static char bytes[256];
	const char *strs[257];
	size_t lens[257];
	for (int i = 0; i < 256; i++) {
		bytes[i] = (char)i;
		strs[i] = &bytes[i];
		lens[i] = 1;
	}
	strs[256] = "";
	lens[256] = 0;
	const int32_t end = 256;
	const moe_err err = moe_grammar_vocab_create(&vocab, 257, strs, lens, NULL, &end, 1);
	if (err != MOE_OK)
		fuzz_setup_failed("the byte vocabulary", err);
	return 0;
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
		const bool in_mask = (mask[tok >> 5] >> (tok & 31)) & 1u;
		const bool ok = moe_grammar_matcher_token_ok(m, tok);
		if (ok != in_mask) {
			fprintf(stderr, "token_ok and the mask disagree at byte %zu\n", i);
			abort();
		}
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
