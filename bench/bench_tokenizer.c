/*
 * bench_tokenizer.c - `moemesh bench tokenizer`: encode and decode speed of
 * the byte-level BPE tokenizer on mixed text (English prose, code, numbers,
 * CJK, emoji, punctuation), generated deterministically, on one core.
 *
 * Encoding is timed two ways: in prompt-sized calls of about 16 KiB (what a
 * server does; the per-call word cache starts empty each time) and as one
 * call over the whole text.  Decoding is timed for moe_tokenizer_decode
 * over all ids and for the streaming decoder fed one id at a time.  The
 * summary line reports the prompt-sized encode and the whole decode.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "model/model.h"

#define CHUNK (16 * 1024)

static const char *const prose[] = {
    "the",       "quick",   "brown",     "fox",      "jumps",     "over",      "lazy",
    "dog",       "and",     "of",        "to",       "in",        "expert",    "parallel",
    "inference", "across",  "a",         "small",    "cluster",   "with",      "memory",
    "bandwidth", "is",      "what",      "limits",   "decoding",  "speed",     "when",
    "weights",   "are",     "quantized", "while",    "network",   "latency",   "dominates",
    "It's",      "they've", "we'll",     "However,", "Meanwhile", "Therefore", "tokenizer",
    "benchmark", "results", "were",      "measured", "carefully", "on",        "machines",
    "running",   "Debian"};
static const char *const code[] = {"for (int i = 0; i < n; i++) {\n",
                                   "\treturn moe_fail(MOE_ERR_INVAL, \"bad\");\n",
                                   "def forward(self, x):\n    return self.proj(x) + x\n",
                                   "    if (err != MOE_OK)\n",
                                   "const uint8_t *p = buf + off;\n",
                                   "}\n",
                                   "x = [1, 2, 3]; y = {\"a\": null}\n",
                                   "#include <stdio.h>\n",
                                   "    printf(\"%d\\n\", value);\n"};
static const char *const cjk[] = {"你好，世界！",  "这是一个测试。", "日本語のテキストです。",
                                  "한국어 텍스트", "机器学习模型",   "東京都",
                                  "分布式推理"};
static const char *const emoji[] = {"😀", "🎉", "🤖", "👍🏽", "🚀", "👨‍👩‍👧‍👦",
                                    "✅"};
static const char *const other[] = {"Привет, мир! ", "Γειά σου Κόσμε ", "café naïve résumé ",
                                    "∑ ∫ √ ∞ ≠ ", "مرحبا بالعالم "};

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static const char *pick(const char *const *arr, size_t n, uint64_t *s)
{
	return arr[rng_next(s) % n];
}

#define COUNT(arr) (sizeof arr / sizeof *arr)

/* Appends a string; the buffer has room (checked by the caller's margin). */
static void put(char *buf, size_t *n, const char *s)
{
	size_t k = strlen(s);
	memcpy(buf + *n, s, k);
	*n += k;
}

/* size bytes (give or take a line) of mixed text, the same every run. */
static char *make_text(size_t size, size_t *len)
{
	char *buf = malloc(size + 4096);
	if (buf == NULL)
		return NULL;
	uint64_t s = 0x9E3779B97F4A7C15ull;
	size_t n = 0;
	while (n < size) {
		uint64_t kind = rng_next(&s) % 100;
		if (kind < 55) { /* a sentence of prose */
			int words = 6 + (int)(rng_next(&s) % 14);
			for (int w = 0; w < words; w++) {
				if (w)
					put(buf, &n, " ");
				put(buf, &n, pick(prose, COUNT(prose), &s));
			}
			put(buf, &n, rng_next(&s) % 4 ? ". " : ".\n");
		} else if (kind < 70) {
			put(buf, &n, pick(code, COUNT(code), &s));
		} else if (kind < 80) { /* numbers */
			char num[64];
			snprintf(num, sizeof num, "%llu %.3f, ",
			         (unsigned long long)(rng_next(&s) % 1000000),
			         (double)(rng_next(&s) % 100000) / 7.0);
			put(buf, &n, num);
		} else if (kind < 90) {
			put(buf, &n, pick(cjk, COUNT(cjk), &s));
		} else if (kind < 95) {
			put(buf, &n, pick(emoji, COUNT(emoji), &s));
			put(buf, &n, " ");
		} else {
			put(buf, &n, pick(other, COUNT(other), &s));
		}
	}
	*len = n;
	return buf;
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh bench tokenizer [--tokenizer-json FILE | -m MODEL.gguf] [--mb N]\n"
	        "\n"
	        "  --tokenizer-json FILE  vocabulary (default "
	        "tests/fixtures/qwen3-tokenizer/tokenizer.json)\n"
	        "  -m MODEL.gguf          take the vocabulary from a GGUF model instead\n"
	        "  --mb N                 megabytes of text (default 8)\n");
}

static int fail(moe_err err)
{
	fprintf(stderr, "moemesh bench tokenizer: %s: %s\n", moe_err_name(err), moe_err_detail());
	return 1;
}

int moe_bench_tokenizer(int argc, char **argv)
{
	const char *json = "tests/fixtures/qwen3-tokenizer/tokenizer.json", *gguf = NULL;
	double mb = 8;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--tokenizer-json") && i + 1 < argc) {
			json = argv[++i];
		} else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
			gguf = argv[++i];
		} else if (!strcmp(argv[i], "--mb") && i + 1 < argc) {
			char *end;
			mb = strtod(argv[++i], &end);
			if (*end || !(mb > 0 && mb <= 4096)) {
				fprintf(stderr, "moemesh bench tokenizer: bad --mb '%s'\n",
				        argv[i]);
				return 2;
			}
		} else {
			usage(stderr);
			return 2;
		}
	}

	double t0 = moe_now_s();
	moe_tokenizer *tok = NULL;
	moe_err err;
	if (gguf) {
		moe_gguf *g = NULL;
		err = moe_gguf_open(&g, gguf);
		if (!err)
			err = moe_tokenizer_from_gguf(&tok, g);
		moe_gguf_close(g);
	} else {
		err = moe_tokenizer_create_hf(&tok, json);
	}
	if (err)
		return fail(err);
	double t_load = moe_now_s() - t0;

	size_t len;
	char *text = make_text((size_t)(mb * 1e6), &len);
	if (text == NULL)
		return fail(moe_fail(MOE_ERR_NOMEM, "%zu bytes of text", (size_t)(mb * 1e6)));

	/* prompt-sized calls, cut after a newline or space */
	size_t n_ids = 0, off = 0;
	t0 = moe_now_s();
	while (off < len) {
		size_t end = off + CHUNK < len ? off + CHUNK : len;
		while (end < len && text[end - 1] != '\n' && text[end - 1] != ' ')
			end++;
		int32_t *ids;
		size_t n;
		err = moe_tokenizer_encode(&ids, &n, tok, text + off, end - off, 0);
		if (err)
			return fail(err);
		free(ids);
		n_ids += n;
		off = end;
	}
	double t_enc = moe_now_s() - t0;

	int32_t *ids;
	size_t n;
	t0 = moe_now_s();
	err = moe_tokenizer_encode(&ids, &n, tok, text, len, 0);
	double t_enc1 = moe_now_s() - t0;
	if (err)
		return fail(err);

	char *out;
	size_t out_len;
	t0 = moe_now_s();
	err = moe_tokenizer_decode(&out, &out_len, tok, ids, n, 0);
	double t_dec = moe_now_s() - t0;
	if (err)
		return fail(err);
	bool same = out_len == len && memcmp(out, text, len) == 0;
	free(out);

	moe_tok_stream *s;
	err = moe_tok_stream_create(&s, tok, 0);
	if (err)
		return fail(err);
	size_t stream_len = 0;
	t0 = moe_now_s();
	for (size_t i = 0; i <= n && !err; i++) {
		const char *piece;
		size_t k;
		err = i < n ? moe_tok_stream_push(s, ids[i], &piece, &k)
		            : moe_tok_stream_finish(s, &piece, &k);
		stream_len += k;
	}
	double t_stream = moe_now_s() - t0;
	moe_tok_stream_destroy(s);
	if (err)
		return fail(err);

	double mbytes = (double)len / 1e6;
	printf("vocab: %u tokens, loaded in %.3f s (%s)\n", moe_tokenizer_n_vocab(tok), t_load,
	       gguf ? gguf : json);
	printf("text: %.2f MB mixed, %zu ids (%.2f bytes/token), round trip %s\n", mbytes, n,
	       (double)len / (double)(n ? n : 1), same && stream_len == len ? "exact" : "DIFFERS");
	printf("encode, %d KiB calls: %.2f MB/s (%zu ids)\n", CHUNK / 1024, mbytes / t_enc, n_ids);
	printf("encode, one call:     %.2f MB/s\n", mbytes / t_enc1);
	printf("decode, all ids:      %.2f MB/s\n", mbytes / t_dec);
	printf("decode, streamed:     %.2f MB/s (%.1f M ids/s)\n", mbytes / t_stream,
	       (double)n / t_stream / 1e6);
	printf("tokenizer_encode_mb_s=%.2f tokenizer_decode_mb_s=%.2f\n", mbytes / t_enc,
	       mbytes / t_dec);
	free(ids);
	free(text);
	moe_tokenizer_destroy(tok);
	return same ? 0 : 1;
}
