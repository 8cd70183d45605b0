/*
 * test_tokenizer.c - the byte-level BPE tokenizer: the 55 Qwen3 reference
 * cases (ids and decoded text, through tokenizer.json), the tiny fixture
 * vocabularies and the KJV demo models (through GGUF), special tokens,
 * streaming decode split at every byte, invalid UTF-8, the tokenize CLI.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/gguf.h"
#include "model/tokenizer.h"

static char *path_in(const char *env, const char *rel)
{
	const char *dir = getenv(env);
	cr_assert(dir != NULL, "%s is not set", env);
	char *p = malloc(strlen(dir) + strlen(rel) + 2);
	cr_assert(p != NULL);
	sprintf(p, "%s/%s", dir, rel);
	return p;
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	cr_assert(b != NULL);
	cr_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
	fclose(f);
	b[n] = 0;
	*len = (size_t)n;
	return b;
}

/* One tokenizer.json tokenizer for the whole program (151k vocab). */
static moe_tokenizer *qwen3(void)
{
	static moe_tokenizer *tok;
	if (tok == NULL) {
		char *p = path_in("MOE_FIXTURES", "qwen3-tokenizer/tokenizer.json");
		moe_err err = moe_tokenizer_create_hf(&tok, p);
		cr_assert(err == MOE_OK, "create_hf: %s %s", moe_err_name(err), moe_err_detail());
		free(p);
	}
	return tok;
}

/* cJSON strings end at NUL, and one case holds U+0000. The file's "\u0000"
 * escapes become U+FDD0 (checked absent from the file) before parsing, and
 * U+FDD0 back into a NUL byte after. */
static cJSON *load_cases(void)
{
	char *p = path_in("MOE_FIXTURES", "qwen3-tokenizer/cases.json");
	size_t n;
	char *raw = slurp(p, &n);
	free(p);
	cr_assert(strstr(raw, "\xEF\xB7\x90") == NULL && strstr(raw, "\\ufdd0") == NULL &&
	          strstr(raw, "\\uFDD0") == NULL);
	for (char *s = raw; (s = strstr(s, "\\u0000")) != NULL; s += 6) {
		size_t bs = 0;
		while (s - bs > raw && s[-1 - (long)bs] == '\\')
			bs++;
		if (bs % 2 == 0)
			memcpy(s, "\\ufdd0", 6);
	}
	cJSON *root = cJSON_ParseWithLength(raw, n);
	free(raw);
	cr_assert(root != NULL);
	return root;
}

/* The bytes of a cases.json string with U+FDD0 turned back into NUL. */
static size_t case_bytes(char *dst, const char *s)
{
	size_t o = 0;
	while (*s) {
		if (!strncmp(s, "\xEF\xB7\x90", 3)) {
			dst[o++] = 0;
			s += 3;
		} else {
			dst[o++] = *s++;
		}
	}
	return o;
}

Test(tokenizer_hf, qwen3_cases_ids_and_decode)
{
	moe_tokenizer *tok = qwen3();
	cJSON *root = load_cases();
	const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
	int n_cases = cJSON_GetArraySize(cases), passed = 0, decoded_ok = 0;
	cr_assert_eq(n_cases, 55);
	const cJSON *c;
	cJSON_ArrayForEach(c, cases)
	{
		const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
		const char *dec = cJSON_GetObjectItemCaseSensitive(c, "decoded")->valuestring;
		const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "ids");
		char *t = malloc(strlen(text) + 1), *d = malloc(strlen(dec) + 1);
		size_t tn = case_bytes(t, text), dn = case_bytes(d, dec);
		int32_t *ids = NULL;
		size_t n = 0;
		moe_err err = moe_tokenizer_encode(&ids, &n, tok, t, tn, MOE_TOK_ENCODE_SPECIAL);
		cr_assert(err == MOE_OK, "encode: %s", moe_err_detail());
		bool same = n == (size_t)cJSON_GetArraySize(want);
		for (size_t i = 0; same && i < n; i++)
			same = ids[i] == (int32_t)cJSON_GetArrayItem(want, (int)i)->valuedouble;
		if (same)
			passed++;
		else
			cr_log_error("ids differ for %s", cJSON_PrintUnformatted(c));
		char *out;
		size_t out_n;
		err = moe_tokenizer_decode(&out, &out_n, tok, ids, n, MOE_TOK_DECODE_SPECIAL);
		cr_assert(err == MOE_OK);
		if (out_n == dn && memcmp(out, d, dn) == 0)
			decoded_ok++;
		else
			cr_log_error("decode differs for %s: got '%s'", text, out);
		free(out);
		free(ids);
		free(t);
		free(d);
	}
	cJSON_Delete(root);
	cr_expect_eq(passed, 55, "ids: %d of 55 cases", passed);
	cr_expect_eq(decoded_ok, 55, "decode: %d of 55 cases", decoded_ok);
}

Test(tokenizer_hf, vocabulary_as_gguf_would_store_it)
{
	char *p = path_in("MOE_FIXTURES", "qwen3-tokenizer/tokenizer.json");
	moe_tokenizer_spec *spec;
	moe_err err = moe_tokenizer_spec_read_hf(&spec, p);
	free(p);
	cr_assert(err == MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(spec->n_tokens, 151669);
	cr_expect_eq(spec->n_merges, 151387);
	cr_expect_str_eq(spec->model, "gpt2");
	cr_expect_str_eq(spec->pre, "qwen2");
	cr_expect_str_eq(spec->tokens[0], "!");
	cr_expect_str_eq(spec->tokens[220], "\xC4\xA0"); /* "Ġ", a space */
	cr_expect_str_eq(spec->merges[0], "\xC4\xA0 \xC4\xA0");
	cr_expect_str_eq(spec->merges[2], "i n");
	cr_expect_str_eq(spec->tokens[151643], "<|endoftext|>");
	cr_expect_eq(spec->token_types[151643], MOE_TOKEN_CONTROL);
	cr_expect_eq(spec->token_types[151644], MOE_TOKEN_CONTROL);
	/* not special in tokenizer.json, but "<|...|>": CONTROL, as llama.cpp */
	cr_expect_str_eq(spec->tokens[151659], "<|fim_prefix|>");
	cr_expect_eq(spec->token_types[151659], MOE_TOKEN_CONTROL);
	cr_expect_str_eq(spec->tokens[151667], "<think>");
	cr_expect_eq(spec->token_types[151667], MOE_TOKEN_USER_DEFINED);
	cr_expect_eq(spec->token_types[151657], MOE_TOKEN_USER_DEFINED); /* <tool_call> */
	cr_expect_eq(spec->token_types[9707], MOE_TOKEN_NORMAL);
	cr_expect_eq(spec->eos_id, 151645); /* tokenizer_config.json eos_token <|im_end|> */
	cr_expect_eq(spec->pad_id, 151643);
	cr_expect_eq(spec->bos_id, 151643);
	cr_expect(!spec->add_bos);
	moe_tokenizer_spec_free(spec);
}

static void expect_ids(moe_tokenizer *tok, const char *text, unsigned flags, const int32_t *want,
                       size_t n_want)
{
	int32_t *ids = NULL;
	size_t n = 0;
	moe_err err = moe_tokenizer_encode(&ids, &n, tok, text, strlen(text), flags);
	cr_assert(err == MOE_OK, "encode '%s': %s", text, moe_err_detail());
	cr_expect_eq(n, n_want, "'%s': %zu ids, want %zu", text, n, n_want);
	for (size_t i = 0; i < n && i < n_want; i++)
		cr_expect_eq(ids[i], want[i], "'%s': id %zu = %d, want %d", text, i, ids[i],
		             want[i]);
	free(ids);
}

Test(tokenizer_hf, special_tokens_only_on_request)
{
	moe_tokenizer *tok = qwen3();
	/* recognised: one id each */
	expect_ids(tok, "<|im_start|>", MOE_TOK_ENCODE_SPECIAL, (int32_t[]){151644}, 1);
	/* not recognised: CONTROL text is ordinary text ("<", "|", "im", "_start", "|>") */
	int32_t *ids;
	size_t n;
	cr_assert(moe_tokenizer_encode(&ids, &n, tok, "<|im_start|>", 12, 0) == MOE_OK);
	cr_expect_gt(n, 1);
	for (size_t i = 0; i < n; i++)
		cr_expect_lt(ids[i], 151643);
	free(ids);
	/* USER_DEFINED tokens (<think>) are always recognised, as in llama.cpp and HF */
	expect_ids(tok, "<think>", 0, (int32_t[]){151667}, 1);
	/* adding BOS: Qwen3 says add_bos = false, so nothing is added */
	expect_ids(tok, "<|endoftext|>", MOE_TOK_ENCODE_SPECIAL | MOE_TOK_ENCODE_ADD_SPECIAL,
	           (int32_t[]){151643}, 1);
	cr_expect_eq(moe_tokenizer_find_special(tok, "<|im_end|>", 10), 151645);
	cr_expect_eq(moe_tokenizer_find_special(tok, "<|im_end", 8), -1);
}

Test(tokenizer_hf, decode_skips_control_tokens_unless_asked)
{
	moe_tokenizer *tok = qwen3();
	int32_t ids[] = {151644, 9707, 151645};
	char *out;
	size_t n;
	cr_assert(moe_tokenizer_decode(&out, &n, tok, ids, 3, 0) == MOE_OK);
	cr_expect_str_eq(out, "Hello");
	free(out);
	cr_assert(moe_tokenizer_decode(&out, &n, tok, ids, 3, MOE_TOK_DECODE_SPECIAL) == MOE_OK);
	cr_expect_str_eq(out, "<|im_start|>Hello<|im_end|>");
	free(out);
	int32_t bad[] = {9707, 151669};
	cr_expect(moe_tokenizer_decode(&out, &n, tok, bad, 2, 0) == MOE_ERR_BAD_VALUE);
	cr_expect(moe_tokenizer_decode(&out, &n, tok, (int32_t[]){-1}, 1, 0) == MOE_ERR_BAD_VALUE);
}

/* Streams ids one by one; returns the concatenated output. */
static char *stream_all(moe_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
	moe_tok_stream *s;
	cr_assert(moe_tok_stream_create(&s, tok, 0) == MOE_OK);
	char *acc = malloc(16 * n + 16);
	size_t o = 0;
	for (size_t i = 0; i <= n; i++) {
		const char *t;
		size_t k;
		moe_err err = i < n ? moe_tok_stream_push(s, ids[i], &t, &k)
		                    : moe_tok_stream_finish(s, &t, &k);
		cr_assert(err == MOE_OK);
		memcpy(acc + o, t, k);
		o += k;
	}
	moe_tok_stream_destroy(s);
	acc[o] = 0;
	*len = o;
	return acc;
}

Test(tokenizer_stream, multibyte_split_at_every_byte)
{
	moe_tokenizer *tok = qwen3();
	/* 2-, 3- and 4-byte characters, fed as single-byte tokens so every byte
	 * boundary falls between two pushes */
	const char *text = "aé中😀z\xC3\xB1";
	size_t len = strlen(text);
	int32_t ids[32];
	for (size_t i = 0; i < len; i++) {
		size_t k;
		ids[i] = -1;
		for (int32_t id = 0; id < 256 && ids[i] < 0; id++) {
			const char *b = moe_tokenizer_token_bytes(tok, id, &k);
			if (k == 1 && (uint8_t)b[0] == (uint8_t)text[i])
				ids[i] = id;
		}
		cr_assert(ids[i] >= 0);
	}
	moe_tok_stream *s;
	cr_assert(moe_tok_stream_create(&s, tok, 0) == MOE_OK);
	/* 'a' at once; then é held after its first byte, out after the second */
	const size_t expect_len[] = {1, 0, 2, 0, 0, 3, 0, 0, 0, 4, 1, 0, 2};
	cr_assert_eq(len, sizeof expect_len / sizeof *expect_len);
	size_t at = 0;
	for (size_t i = 0; i < len; i++) {
		const char *t;
		size_t k;
		cr_assert(moe_tok_stream_push(s, ids[i], &t, &k) == MOE_OK);
		cr_expect_eq(k, expect_len[i], "push %zu gave %zu bytes", i, k);
		cr_expect(k == 0 || memcmp(t, text + at, k) == 0);
		at += k;
	}
	const char *t;
	size_t k;
	cr_assert(moe_tok_stream_finish(s, &t, &k) == MOE_OK);
	cr_expect_eq(k, 0);
	moe_tok_stream_destroy(s);

	/* a real encoding of mixed text, streamed, equals the text */
	const char *mixed = "Grüße, 世界! 👨‍👩‍👧 emoji 🎉 done";
	int32_t *enc;
	size_t n;
	cr_assert(moe_tokenizer_encode(&enc, &n, tok, mixed, strlen(mixed), 0) == MOE_OK);
	char *got = stream_all(tok, enc, n, &k);
	cr_expect_str_eq(got, mixed);
	free(got);
	free(enc);
}

Test(tokenizer_stream, incomplete_and_invalid_become_replacement)
{
	moe_tokenizer *tok = qwen3();
	int32_t e4 = -1, x41 = -1, ff = -1;
	for (int32_t id = 0; id < 256; id++) {
		size_t k;
		const uint8_t *b = (const uint8_t *)moe_tokenizer_token_bytes(tok, id, &k);
		if (k == 1 && b[0] == 0xE4)
			e4 = id;
		if (k == 1 && b[0] == 'A')
			x41 = id;
		if (k == 1 && b[0] == 0xFF)
			ff = id;
	}
	/* E4 then 'A': the lead byte never completes -> U+FFFD then A */
	size_t k;
	char *s = stream_all(tok, (int32_t[]){e4, x41, ff, e4}, 4, &k);
	cr_expect_str_eq(s, "\xEF\xBF\xBD"
	                    "A"
	                    "\xEF\xBF\xBD"
	                    "\xEF\xBF\xBD");
	free(s);
}

Test(tokenizer_hf, invalid_utf8_input)
{
	moe_tokenizer *tok = qwen3();
	/* ill-formed input: each maximal ill-formed subsequence is encoded as
	 * U+FFFD (the ids of "a\uFFFDb\uFFFD\uFFFD") */
	const char bad[] = "a\xC3"
	                   "b\xFF\xE4\xB8";
	int32_t *ids, *ref;
	size_t n, nref;
	cr_assert(moe_tokenizer_encode(&ids, &n, tok, bad, sizeof bad - 1, 0) == MOE_OK);
	const char good[] = "a\xEF\xBF\xBD"
	                    "b\xEF\xBF\xBD\xEF\xBF\xBD";
	cr_assert(moe_tokenizer_encode(&ref, &nref, tok, good, sizeof good - 1, 0) == MOE_OK);
	cr_assert_eq(n, nref);
	cr_expect(memcmp(ids, ref, n * sizeof *ids) == 0);
	free(ids);
	free(ref);
	/* surrogates and overlongs are ill-formed too; lone NUL is fine */
	const char *odd[] = {"\xED\xA0\x80", "\xC0\xAF", "\xF4\x90\x80\x80", "x\0y"};
	for (int i = 0; i < 4; i++) {
		cr_assert(moe_tokenizer_encode(&ids, &n, tok, odd[i], i == 3 ? 3 : strlen(odd[i]),
		                               0) == MOE_OK);
		cr_expect_gt(n, 0);
		free(ids);
	}
	char *clean;
	cr_assert(moe_utf8_sanitize(&clean, &n, "\xE0\x80\x41", 3) == MOE_OK);
	cr_expect_str_eq(clean, "\xEF\xBF\xBD\xEF\xBF\xBD"
	                        "A"); /* E0 80: two subparts */
	free(clean);
}

Test(tokenizer, long_word_and_empty)
{
	moe_tokenizer *tok = qwen3();
	size_t len = 200000;
	char *big = malloc(len);
	for (size_t i = 0; i < len; i++)
		big[i] = "abcdefghij"[(i * 7 + i / 3) % 10];
	int32_t *ids;
	size_t n;
	cr_assert(moe_tokenizer_encode(&ids, &n, tok, big, len, 0) == MOE_OK);
	char *out;
	size_t out_n;
	cr_assert(moe_tokenizer_decode(&out, &out_n, tok, ids, n, 0) == MOE_OK);
	cr_expect(out_n == len && memcmp(out, big, len) == 0);
	free(out);
	free(ids);
	free(big);
	ids = (int32_t *)1;
	cr_assert(moe_tokenizer_encode(&ids, &n, tok, "", 0, 0) == MOE_OK);
	cr_expect_eq(n, 0);
	free(ids);
}

/* A small hand-made vocabulary: merges whose result is not a token, a
 * special token, rank order over position order. */
Test(tokenizer, spec_rules)
{
	const char *tokens[256 + 4];
	char store[256][4];
	/* the 256 byte tokens in byte-level form, in byte order */
	for (unsigned b = 0; b < 256; b++) {
		unsigned cp = b;
		if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
			unsigned k = 0;
			for (unsigned c = 0; c < b; c++)
				k += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) ||
				       c >= 0xAE);
			cp = 0x100 + k;
		}
		if (cp < 0x80) {
			store[b][0] = (char)cp;
			store[b][1] = 0;
		} else {
			store[b][0] = (char)(0xC0 | cp >> 6);
			store[b][1] = (char)(0x80 | (cp & 0x3F));
			store[b][2] = 0;
		}
		tokens[b] = store[b];
	}
	tokens[256] = "bc";
	tokens[257] = "abc";
	tokens[258] = "<s>";
	tokens[259] = "cd"; /* there, but no merge makes it */
	int32_t types[260];
	for (int i = 0; i < 260; i++)
		types[i] = MOE_TOKEN_NORMAL;
	types[258] = MOE_TOKEN_CONTROL;
	/* "a b" merges to "ab" which is not a token; "ab c" then gives "abc";
	 * "b c" has a lower rank than "a b" so it wins in "abc" */
	const char *merges[] = {"b c", "a b", "a bc", "ab c", "x y"};
	moe_tokenizer_spec spec = {.model = "gpt2",
	                           .pre = "qwen2",
	                           .n_tokens = 260,
	                           .tokens = tokens,
	                           .token_types = types,
	                           .n_merges = 5,
	                           .merges = merges,
	                           .bos_id = 258,
	                           .eos_id = -1,
	                           .pad_id = -1,
	                           .add_bos = true};
	moe_tokenizer *tok;
	moe_err err = moe_tokenizer_create(&tok, &spec);
	cr_assert(err == MOE_OK, "%s", moe_err_detail());
	/* b+c (rank 0) first, then a+bc (rank 2) */
	expect_ids(tok, "abc", 0, (int32_t[]){257}, 1);
	/* "ab" alone: merged but not a token -> its bytes a, b */
	expect_ids(tok, "ab", 0, (int32_t[]){'a', 'b'}, 2);
	/* "cd" is a token no merge reaches */
	expect_ids(tok, "cd", 0, (int32_t[]){'c', 'd'}, 2);
	expect_ids(tok, "abc", MOE_TOK_ENCODE_ADD_SPECIAL, (int32_t[]){258, 257}, 2);
	expect_ids(tok, "<s>abc", MOE_TOK_ENCODE_SPECIAL, (int32_t[]){258, 257}, 2);
	moe_tokenizer_destroy(tok);

	spec.model = "llama";
	cr_expect(moe_tokenizer_create(&tok, &spec) == MOE_ERR_UNSUPPORTED);
	spec.model = "gpt2";
	spec.bos_id = 260;
	cr_expect(moe_tokenizer_create(&tok, &spec) == MOE_ERR_BAD_VALUE);
	spec.bos_id = -1;
	types[3] = 9;
	cr_expect(moe_tokenizer_create(&tok, &spec) == MOE_ERR_BAD_VALUE);
	moe_tokenizer_destroy(NULL);
}

Test(tokenizer_hf, bad_files)
{
	moe_tokenizer *tok;
	cr_expect(moe_tokenizer_create_hf(&tok, "/nonexistent/tokenizer.json") == MOE_ERR_IO);
	char path[] = "/tmp/moe_tok_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": [1]", f);
	fclose(f);
	cr_expect(moe_tokenizer_create_hf(&tok, path) == MOE_ERR_FORMAT);
	f = fopen(path, "w");
	fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []},"
	      " \"decoder\": {\"type\": \"ByteLevel\"}}",
	      f);
	fclose(f);
	cr_expect(moe_tokenizer_create_hf(&tok, path) == MOE_ERR_FORMAT);
	f = fopen(path, "w");
	fputs("{\"model\": {\"type\": \"Unigram\", \"vocab\": {}}}", f);
	fclose(f);
	cr_expect(moe_tokenizer_create_hf(&tok, path) == MOE_ERR_UNSUPPORTED);
	remove(path);
}

static moe_tokenizer *from_gguf_file(const char *env, const char *rel)
{
	char *p = path_in(env, rel);
	moe_gguf *g;
	moe_err err = moe_gguf_open(&g, p);
	cr_assert(err == MOE_OK, "open %s: %s", p, moe_err_detail());
	moe_tokenizer *tok;
	err = moe_tokenizer_from_gguf(&tok, g);
	cr_assert(err == MOE_OK, "from_gguf %s: %s", p, moe_err_detail());
	moe_gguf_close(g); /* the tokenizer keeps copies */
	free(p);
	return tok;
}

Test(tokenizer_gguf, fixture_vocab_quick_brown_fox)
{
	const char *models[] = {"qwen3moe-tiny-F32.gguf", "qwen3next-tiny-Q4_0.gguf",
	                        "qwen3moe-kq-Q4_K_M.gguf"};
	for (int m = 0; m < 3; m++) {
		moe_tokenizer *tok = from_gguf_file("MOE_FIXTURES", models[m]);
		cr_expect_eq(moe_tokenizer_n_vocab(tok), 512);
		cr_expect_eq(moe_tokenizer_bos(tok), 509);
		cr_expect_eq(moe_tokenizer_eos(tok), 511);
		cr_expect_eq(moe_tokenizer_pad(tok), 509);
		cr_expect(!moe_tokenizer_add_bos(tok));
		cr_expect_eq(moe_tokenizer_token_type(tok, 510), MOE_TOKEN_CONTROL);
		cr_expect_eq(moe_tokenizer_token_type(tok, 300), MOE_TOKEN_NORMAL);
		/* no BOS even with ADD_SPECIAL: add_bos_token is false */
		expect_ids(tok, "The quick brown fox", MOE_TOK_ENCODE_ADD_SPECIAL,
		           (int32_t[]){326, 398, 321, 74, 275, 283, 403, 385, 87}, 9);
		expect_ids(tok, "<|im_start|>The", MOE_TOK_ENCODE_SPECIAL, (int32_t[]){510, 326},
		           2);
		/* id 0 is "!", id 187 the byte 0xFF, id 188 the byte 0x00 */
		size_t k;
		const char *b = moe_tokenizer_token_bytes(tok, 0, &k);
		cr_expect(k == 1 && b[0] == '!');
		b = moe_tokenizer_token_bytes(tok, 187, &k);
		cr_expect(k == 1 && (uint8_t)b[0] == 0xFF);
		b = moe_tokenizer_token_bytes(tok, 188, &k);
		cr_expect(k == 1 && b[0] == 0);
		moe_tokenizer_destroy(tok);
	}
}

Test(tokenizer_gguf, kjv_demo_models)
{
	const char *models[] = {"models/kjv-qwen3moe-Q4_K_M.gguf",
	                        "models/kjv-qwen3next-Q4_K_M.gguf"};
	for (int m = 0; m < 2; m++) {
		moe_tokenizer *tok = from_gguf_file("MOE_SOURCE_DIR", models[m]);
		cr_expect_eq(moe_tokenizer_n_vocab(tok), 4096);
		cr_expect_eq(moe_tokenizer_eos(tok), 4095);
		expect_ids(tok, "In the beginning", 0, (int32_t[]){1147, 258, 2081}, 3);
		expect_ids(tok, "And the LORD said", 0, (int32_t[]){296, 258, 341, 388}, 4);
		int32_t ids[] = {296, 258, 341, 388};
		char *out;
		size_t n;
		cr_assert(moe_tokenizer_decode(&out, &n, tok, ids, 4, 0) == MOE_OK);
		cr_expect_str_eq(out, "And the LORD said");
		free(out);
		moe_tokenizer_destroy(tok);
	}
}

/* tokenizer.json -> spec -> GGUF file (the writer) -> from_gguf gives the
 * same encodings as the tokenizer made from tokenizer.json directly: what
 * make-model --tokenizer relies on. */
Test(tokenizer_gguf, hf_spec_round_trip_through_gguf)
{
	char *p = path_in("MOE_FIXTURES", "qwen3-tokenizer/tokenizer.json");
	moe_tokenizer_spec *spec;
	cr_assert(moe_tokenizer_spec_read_hf(&spec, p) == MOE_OK);
	free(p);
	char path[] = "/tmp/moe_tok_gguf_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	close(fd);
	moe_gguf_writer *w;
	cr_assert(moe_gguf_writer_create(&w, path) == MOE_OK);
	cr_assert(moe_gguf_writer_add_str(w, "tokenizer.ggml.model", spec->model) == MOE_OK);
	cr_assert(moe_gguf_writer_add_str(w, "tokenizer.ggml.pre", spec->pre) == MOE_OK);
	cr_assert(moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", spec->tokens,
	                                      spec->n_tokens) == MOE_OK);
	cr_assert(moe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_INT32,
	                                  spec->token_types, spec->n_tokens) == MOE_OK);
	cr_assert(moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", spec->merges,
	                                      spec->n_merges) == MOE_OK);
	cr_assert(moe_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id",
	                                  (uint32_t)spec->eos_id) == MOE_OK);
	cr_assert(moe_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id",
	                                  (uint32_t)spec->bos_id) == MOE_OK);
	cr_assert(moe_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false) == MOE_OK);
	cr_assert(moe_gguf_writer_begin_data(w) == MOE_OK);
	cr_assert(moe_gguf_writer_finish(w) == MOE_OK);
	moe_gguf_writer_destroy(w);
	moe_tokenizer_spec_free(spec);

	moe_gguf *g;
	cr_assert(moe_gguf_open(&g, path) == MOE_OK, "%s", moe_err_detail());
	moe_tokenizer *tok;
	cr_assert(moe_tokenizer_from_gguf(&tok, g) == MOE_OK, "%s", moe_err_detail());
	moe_gguf_close(g);
	remove(path);
	cr_expect_eq(moe_tokenizer_pad(tok), -1); /* not written above */
	cr_expect_eq(moe_tokenizer_eos(tok), 151645);
	const char *texts[] = {"Hello, my dog is cute",
	                       "<|im_start|>user\n你好 <think>x</think> 😀 naïve 3.14159<|im_end|>"};
	for (int i = 0; i < 2; i++) {
		int32_t *a, *b;
		size_t na, nb;
		cr_assert(moe_tokenizer_encode(&a, &na, tok, texts[i], strlen(texts[i]),
		                               MOE_TOK_ENCODE_SPECIAL) == MOE_OK);
		cr_assert(moe_tokenizer_encode(&b, &nb, qwen3(), texts[i], strlen(texts[i]),
		                               MOE_TOK_ENCODE_SPECIAL) == MOE_OK);
		cr_expect(na == nb && memcmp(a, b, na * sizeof *a) == 0, "text %d differs", i);
		free(a);
		free(b);
	}
	expect_ids(tok, "Hello, my dog is cute", 0, (int32_t[]){9707, 11, 847, 5562, 374, 18838},
	           6);
	moe_tokenizer_destroy(tok);
}

/* Writes a GGUF file with the keys set by which (bits) and returns what
 * moe_tokenizer_from_gguf says about it. */
static moe_err gguf_keys(unsigned which)
{
	char path[] = "/tmp/moe_tok_gguf_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	close(fd);
	moe_gguf_writer *w;
	const char *toks[] = {"a", "b"};
	cr_assert(moe_gguf_writer_create(&w, path) == MOE_OK);
	if (which & 1)
		cr_assert(moe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") == MOE_OK);
	if (which & 2)
		cr_assert(moe_gguf_writer_add_u32(w, "tokenizer.ggml.tokens", 3) == MOE_OK);
	if (which & 4)
		cr_assert(moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 2) ==
		          MOE_OK);
	if (which & 8)
		cr_assert(moe_gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2") == MOE_OK);
	if (which & 16)
		cr_assert(moe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_INT32,
		                                  (int32_t[]){1, 1, 1}, 3) == MOE_OK);
	if (which & 32)
		cr_assert(moe_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2) == MOE_OK);
	cr_assert(moe_gguf_writer_begin_data(w) == MOE_OK);
	cr_assert(moe_gguf_writer_finish(w) == MOE_OK);
	moe_gguf_writer_destroy(w);
	moe_gguf *g;
	cr_assert(moe_gguf_open(&g, path) == MOE_OK);
	moe_tokenizer *tok = NULL;
	moe_err err = moe_tokenizer_from_gguf(&tok, g);
	moe_tokenizer_destroy(tok);
	moe_gguf_close(g);
	remove(path);
	return err;
}

Test(tokenizer_gguf, bad_or_missing_keys)
{
	cr_expect_eq(gguf_keys(4 | 8), MOE_ERR_NOT_FOUND);    /* no model */
	cr_expect_eq(gguf_keys(1 | 2 | 8), MOE_ERR_BAD_TYPE); /* tokens not an array */
	cr_expect_eq(gguf_keys(1 | 8), MOE_ERR_NOT_FOUND);    /* no tokens */
	cr_expect_eq(gguf_keys(1 | 4), MOE_ERR_UNSUPPORTED);  /* no pre: llama.cpp's "default" */
	cr_expect_eq(gguf_keys(1 | 4 | 8 | 16), MOE_ERR_BAD_COUNT); /* 3 types, 2 tokens */
	cr_expect_eq(gguf_keys(1 | 4 | 8 | 32), MOE_ERR_BAD_VALUE); /* eos id 2 of 2 tokens */
	cr_expect_eq(gguf_keys(1 | 4 | 8), MOE_OK);
}

/* Runs `moemesh tokenize ARGS` with input on stdin; returns its exit status
 * and its stdout in *out (malloc'd). */
static int run_cli(const char *args, const char *input, char **out)
{
	const char *bin = getenv("MOE_BIN");
	cr_assert(bin != NULL, "MOE_BIN is not set");
	char in_path[] = "/tmp/moe_tok_in_XXXXXX", out_path[] = "/tmp/moe_tok_out_XXXXXX";
	int fd = mkstemp(in_path);
	cr_assert(fd >= 0);
	cr_assert(write(fd, input, strlen(input)) == (ssize_t)strlen(input));
	close(fd);
	fd = mkstemp(out_path);
	cr_assert(fd >= 0);
	close(fd);
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "'%s' tokenize %s < %s > %s 2>/dev/null", bin, args, in_path,
	         out_path);
	int st = system(cmd);
	cr_assert(st != -1 && WIFEXITED(st));
	size_t n;
	*out = slurp(out_path, &n);
	remove(in_path);
	remove(out_path);
	return WEXITSTATUS(st);
}

Test(tokenizer_cli, encode_decode_round_trip_and_bad_lines)
{
	char *json = path_in("MOE_FIXTURES", "qwen3-tokenizer/tokenizer.json");
	char args[1024];
	snprintf(args, sizeof args, "--tokenizer-json '%s'", json);
	char *out;
	int st = run_cli(args,
	                 "\"Hello, my dog is cute\"\n"
	                 "42\n"
	                 "not json\n"
	                 "\"<|im_start|>a\\u0000b\"\n",
	                 &out);
	cr_expect_eq(st, 1, "a bad line makes the exit status 1");
	char *l1 = strtok(out, "\n"), *l2 = strtok(NULL, "\n"), *l3 = strtok(NULL, "\n"),
	     *l4 = strtok(NULL, "\n");
	cr_assert(l1 && l2 && l3 && l4, "four output lines");
	cr_expect_str_eq(l1, "[9707,11,847,5562,374,18838]");
	cr_expect(strncmp(l2, "{\"error\":", 9) == 0, "line 2: %s", l2);
	cr_expect(strncmp(l3, "{\"error\":", 9) == 0, "line 3: %s", l3);
	cr_expect_str_eq(l4, "[151644,64,188,65]"); /* a, NUL (byte token 188), b */
	free(out);

	snprintf(args, sizeof args, "--tokenizer-json '%s' --decode", json);
	st = run_cli(args,
	             "[9707,11,847,5562,374,18838]\n"
	             "[151644,64,188,65]\n"
	             "[151669]\n"
	             "[100, \"x\"]\n"
	             "[1e30]\n" /* beyond int64_t: refused, not cast */
	             "[2.5]\n"
	             "[]\n",
	             &out);
	cr_expect_eq(st, 1);
	l1 = strtok(out, "\n");
	l2 = strtok(NULL, "\n");
	l3 = strtok(NULL, "\n");
	l4 = strtok(NULL, "\n");
	char *l5 = strtok(NULL, "\n"), *l6 = strtok(NULL, "\n"), *l7 = strtok(NULL, "\n");
	cr_assert(l1 && l2 && l3 && l4 && l5 && l6 && l7);
	cr_expect_str_eq(l1, "\"Hello, my dog is cute\"");
	cr_expect_str_eq(l2, "\"<|im_start|>a\\u0000b\"");
	cr_expect(strncmp(l3, "{\"error\":", 9) == 0, "line 3: %s", l3);
	cr_expect(strncmp(l4, "{\"error\":", 9) == 0, "line 4: %s", l4);
	cr_expect(strstr(l5, "element 0 is not a token id") != NULL, "line 5: %s", l5);
	cr_expect(strstr(l6, "element 0 is not a token id") != NULL, "line 6: %s", l6);
	cr_expect_str_eq(l7, "\"\"");
	free(out);
	free(json);
}

Test(tokenizer_cli, gguf_model_and_usage)
{
	char *model = path_in("MOE_SOURCE_DIR", "models/kjv-qwen3moe-Q4_K_M.gguf");
	char args[1024];
	snprintf(args, sizeof args, "-m '%s'", model);
	char *out;
	int st = run_cli(args, "\"In the beginning\"\n\"And the LORD said\"\n", &out);
	cr_expect_eq(st, 0);
	cr_expect_str_eq(out, "[1147,258,2081]\n[296,258,341,388]\n");
	free(out);
	cr_expect_eq(run_cli("", "", &out), 2, "no vocabulary given: usage error");
	free(out);
	snprintf(args, sizeof args, "-m /nonexistent.gguf");
	cr_expect_eq(run_cli(args, "", &out), 1);
	free(out);
	free(model);
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Random byte strings (mostly UTF-8-like) never fail or give an id outside
 * the vocabulary; random printable ASCII decodes back to itself. */
Test(tokenizer_hf, random_input)
{
	moe_tokenizer *tok = qwen3();
	uint64_t seed = 12345;
	static const uint8_t alphabet[] = {'a',  ' ',  '\n', '1',  '.',  '<',  '|',  '\'',
	                                   0xC3, 0xA9, 0xE4, 0xB8, 0xAD, 0xF0, 0x9F, 0x98,
	                                   0x80, 0xFF, 0x80, 0xCC, 0x81, '\t', '\r', 0};
	char buf[300];
	for (int iter = 0; iter < 300; iter++) {
		size_t len = xorshift(&seed) % sizeof buf;
		for (size_t i = 0; i < len; i++)
			buf[i] = (char)alphabet[xorshift(&seed) % sizeof alphabet];
		int32_t *ids;
		size_t n;
		unsigned flags = iter & 1 ? MOE_TOK_ENCODE_SPECIAL : 0;
		cr_assert(moe_tokenizer_encode(&ids, &n, tok, buf, len, flags) == MOE_OK);
		for (size_t i = 0; i < n; i++)
			cr_assert(ids[i] >= 0 && ids[i] < 151669);
		free(ids);

		for (size_t i = 0; i < len; i++)
			buf[i] = (char)(' ' + xorshift(&seed) % 95);
		cr_assert(moe_tokenizer_encode(&ids, &n, tok, buf, len, 0) == MOE_OK);
		char *out;
		size_t out_n;
		cr_assert(moe_tokenizer_decode(&out, &out_n, tok, ids, n, 0) == MOE_OK);
		cr_assert(out_n == len && memcmp(out, buf, len) == 0, "round trip of '%.*s'",
		          (int)len, buf);
		free(out);
		free(ids);
	}
}

struct encode_job {
	const moe_tokenizer *tok;
	const char *text;
	int32_t *ids;
	size_t n;
	moe_err err;
};

static void *encode_thread(void *arg)
{
	struct encode_job *j = arg;
	for (int k = 0; k < 20 && !j->err; k++) {
		free(j->ids);
		j->err = moe_tokenizer_encode(&j->ids, &j->n, j->tok, j->text, strlen(j->text),
		                              MOE_TOK_ENCODE_SPECIAL);
	}
	return NULL;
}

/* One tokenizer, four threads encoding at once: the same ids as alone. */
Test(tokenizer_hf, shared_between_threads)
{
	moe_tokenizer *tok = qwen3();
	const char *texts[] = {"<|im_start|>user\nWhy is the sky blue?<|im_end|>",
	                       "def f(x):\n    return x * 2  # 二倍\n", "Ångström 😀 naïve",
	                       "The year 2025 was 365 days."};
	struct encode_job jobs[4] = {0};
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct encode_job){.tok = tok, .text = texts[i]};
		cr_assert(pthread_create(&th[i], NULL, encode_thread, &jobs[i]) == 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		cr_assert(jobs[i].err == MOE_OK);
		int32_t *ids;
		size_t n;
		cr_assert(moe_tokenizer_encode(&ids, &n, tok, texts[i], strlen(texts[i]),
		                               MOE_TOK_ENCODE_SPECIAL) == MOE_OK);
		cr_expect(n == jobs[i].n && memcmp(ids, jobs[i].ids, n * sizeof *ids) == 0);
		free(ids);
		free(jobs[i].ids);
	}
}
