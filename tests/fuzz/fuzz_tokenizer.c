/*
 * fuzz_tokenizer.c - libFuzzer harness for the tokenizer (the Qwen3 vocabulary
 * of the demo model): the first input byte picks the flags, the rest is text
 * to encode (any bytes); where the text is valid UTF-8 already in NFC (the
 * encoder normalises), the ids must decode back to exactly the text (byte
 * level BPE loses nothing); and the input read as little-endian ids is
 * decoded whole and through the streaming decoder, which must give the same
 * bytes.
 */
#include <string.h>
#include <utf8proc.h>

#include "model/model.h"
#include "tests/fuzz/fuzz.h"

static moe_gguf *g;
static moe_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	moe_err err = moe_gguf_open(&g, fuzz_source_path("models/kjv-qwen3moe-Q4_K_M.gguf"));
	if (err != MOE_OK)
		fuzz_setup_failed("the demo model", err);
	if ((err = moe_tokenizer_from_gguf(&tok, g)) != MOE_OK)
		fuzz_setup_failed("its tokenizer", err);
	return 0;
}

/* Whether text is valid UTF-8 without NUL and already NFC. */
static int is_nfc(const char *text, size_t len)
{
	if (memchr(text, '\0', len) != NULL)
		return 0;
	char *z = strndup(text, len);
	if (z == NULL)
		return 0;
	utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)z);
	const int same = nfc != NULL && strcmp((const char *)nfc, z) == 0;
	free(nfc);
	free(z);
	return same;
}

static void round_trip(const char *text, size_t len, unsigned flags)
{
	int32_t *ids = NULL;
	size_t n = 0;
	if (moe_tokenizer_encode(&ids, &n, tok, text, len, flags) != MOE_OK)
		return;
	char *back = NULL;
	size_t back_len = 0;
	const unsigned dflags = (flags & MOE_TOK_ENCODE_SPECIAL) ? MOE_TOK_DECODE_SPECIAL : 0;
	if (moe_tokenizer_decode(&back, &back_len, tok, ids, n, dflags) == MOE_OK &&
	    !(flags & MOE_TOK_ENCODE_ADD_SPECIAL) && (back_len != len || memcmp(back, text, len)) &&
	    is_nfc(text, len)) {
		fprintf(stderr, "decode(encode(text)) differs from text\n");
		abort();
	}
	free(back);
	free(ids);
}

static void decode_ids(const uint8_t *data, size_t size)
{
	const size_t n = size / 4;
	int32_t *ids = malloc(n ? n * sizeof *ids : 1);
	if (ids == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, data + 4 * i, 4);
		ids[i] = (int32_t)(u % 160000u); /* mostly inside the vocabulary */
	}
	char *whole = NULL;
	size_t whole_len = 0;
	const moe_err werr = moe_tokenizer_decode(&whole, &whole_len, tok, ids, n, 0);
	moe_tok_stream *s = NULL;
	if (moe_tok_stream_create(&s, tok, 0) == MOE_OK) {
		for (size_t i = 0; i < n; i++) {
			const char *t;
			size_t len;
			if (moe_tok_stream_push(s, ids[i], &t, &len) != MOE_OK)
				break;
		}
		const char *t;
		size_t len;
		(void)moe_tok_stream_finish(s, &t, &len);
		moe_tok_stream_destroy(s);
	}
	(void)werr;
	free(whole);
	free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	const unsigned flags = data[0] & (MOE_TOK_ENCODE_SPECIAL | MOE_TOK_ENCODE_ADD_SPECIAL);
	round_trip((const char *)data + 1, size - 1, flags);
	decode_ids(data + 1, size - 1);
	return 0;
}
