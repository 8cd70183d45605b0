/*
 * cmd_tokenize.c - `moemesh tokenize`: JSON lines in, JSON lines out.
 *
 * Encoding reads one JSON string per line and writes one JSON array of ids;
 * --decode reads arrays of ids and writes JSON strings.  A bad line gets an
 * {"error": ...} object in its place on stdout (so output lines stay aligned
 * with input lines) and a message on stderr; the other lines go on, and the
 * exit status is 1 at the end.
 *
 * cJSON strings are NUL-terminated, so U+0000 needs care: a "\u0000" escape
 * in the input is parsed as U+FDD0 and turned back into a NUL byte (a line
 * that holds U+FDD0 itself is refused), and a NUL in output text is written
 * as "\u0000" between cJSON-escaped pieces.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "model/model.h"

#define FDD0 "\xEF\xB7\x90"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: moemesh tokenize (-m MODEL.gguf | --tokenizer-json tokenizer.json)\n"
	    "                        [--decode] [--no-special] [--add-special] [--skip-special]\n"
	    "\n"
	    "Reads JSON lines on stdin. Encoding: each line is a JSON string, the output line\n"
	    "is a JSON array of token ids. --decode: each line is a JSON array of ids, the\n"
	    "output line is the JSON string they decode to (ill-formed UTF-8 becomes U+FFFD).\n"
	    "\n"
	    "  -m FILE               take the vocabulary from a GGUF model (tokenizer.ggml.*)\n"
	    "  --tokenizer-json FILE take it from an HF tokenizer.json\n"
	    "  --no-special          do not recognise control tokens (<|im_start|>) in text\n"
	    "  --add-special         add BOS/EOS as the vocabulary asks\n"
	    "  --skip-special        --decode: leave control tokens out of the text\n"
	    "\n"
	    "A bad line gives {\"error\": \"...\"} on its output line and a message on\n"
	    "stderr; the others go on and the exit status is 1.\n");
}

/* Rewrites "\u0000" escapes of line (in place; same length) as "\ufdd0".
 * Returns false if the line already holds U+FDD0 in any spelling. */
static bool hide_nul_escapes(char *line)
{
	if (strstr(line, FDD0) != NULL)
		return false;
	for (char *s = line; (s = strchr(s, '\\')) != NULL;) {
		if (s[1] == 'u' && strncasecmp(s + 2, "fdd0", 4) == 0)
			return false;
		if (s[1] == 'u' && strncmp(s + 2, "0000", 4) == 0)
			memcpy(s + 2, "fdd0", 4);
		s += s[1] ? 2 : 1; /* skip the escaped character, so "\\u0000" stays */
	}
	return true;
}

/* The bytes of a parsed string with U+FDD0 back to NUL; returns the length. */
static size_t restore_nuls(char *s)
{
	size_t o = 0;
	for (size_t i = 0; s[i];) {
		if (strncmp(s + i, FDD0, 3) == 0) {
			s[o++] = 0;
			i += 3;
		} else {
			s[o++] = s[i++];
		}
	}
	s[o] = 0;
	return o;
}

/* Writes text[0..len) (valid UTF-8) as a JSON string and a newline. */
static moe_err print_json_string(FILE *f, const char *text, size_t len)
{
	fputc('"', f);
	size_t i = 0;
	for (;;) {
		const char *nul = memchr(text + i, 0, len - i);
		size_t end = nul ? (size_t)(nul - text) : len;
		char *piece = strndup(text + i, end - i);
		cJSON *js = piece ? cJSON_CreateString(piece) : NULL;
		char *out = js ? cJSON_PrintUnformatted(js) : NULL;
		free(piece);
		cJSON_Delete(js);
		if (out == NULL)
			return moe_fail(MOE_ERR_NOMEM, "tokenize: JSON output");
		size_t n = strlen(out);
		fwrite(out + 1, 1, n - 2, f); /* without its quotes */
		free(out);
		if (nul == NULL)
			break;
		fputs("\\u0000", f);
		i = end + 1;
	}
	fputs("\"\n", f);
	return MOE_OK;
}

static moe_err encode_line(const moe_tokenizer *tok, const cJSON *js, unsigned flags)
{
	if (!cJSON_IsString(js))
		return moe_fail(MOE_ERR_FORMAT, "expected a JSON string");
	size_t len = restore_nuls(js->valuestring);
	int32_t *ids = NULL;
	size_t n = 0;
	moe_err err = moe_tokenizer_encode(&ids, &n, tok, js->valuestring, len, flags);
	if (err)
		return err;
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr != NULL && i < n; i++) {
		cJSON *num = cJSON_CreateNumber(ids[i]);
		if (num == NULL || !cJSON_AddItemToArray(arr, num)) {
			cJSON_Delete(num);
			cJSON_Delete(arr);
			arr = NULL;
		}
	}
	free(ids);
	char *out = arr ? cJSON_PrintUnformatted(arr) : NULL;
	cJSON_Delete(arr);
	if (out == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tokenize: JSON output of %zu ids", n);
	puts(out);
	free(out);
	return MOE_OK;
}

static moe_err decode_line(const moe_tokenizer *tok, const cJSON *js, moe_tok_stream *s)
{
	if (!cJSON_IsArray(js))
		return moe_fail(MOE_ERR_FORMAT, "expected a JSON array of token ids");
	uint32_t n_vocab = moe_tokenizer_n_vocab(tok);
	int k = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, js)
	{
		/* the range first: casting a double beyond int64_t's is undefined */
		if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0) || e->valuedouble >= n_vocab ||
		    e->valuedouble != (double)(int64_t)e->valuedouble)
			return moe_fail(MOE_ERR_BAD_VALUE, "element %d is not a token id in 0..%u",
			                k, n_vocab - 1);
		k++;
	}
	char *text = NULL;
	size_t len = 0, cap = 0;
	moe_err err = MOE_OK;
	for (const cJSON *it = js->child;; it = it->next) {
		const char *piece;
		size_t n;
		err = it ? moe_tok_stream_push(s, (int32_t)it->valuedouble, &piece, &n)
		         : moe_tok_stream_finish(s, &piece, &n);
		if (err)
			goto out_free_text;
		if (len + n + 1 > cap) {
			cap = 2 * (len + n + 1);
			char *t = realloc(text, cap);
			if (t == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "tokenize: %zu bytes", cap);
				goto out_free_text;
			}
			text = t;
		}
		memcpy(text + len, piece, n);
		len += n;
		if (it == NULL)
			break;
	}
	err = print_json_string(stdout, text ? text : "", len);
out_free_text:
	free(text);
	return err;
}

static moe_err load(moe_tokenizer **tok, const char *gguf_path, const char *json_path)
{
	if (json_path)
		return moe_tokenizer_create_hf(tok, json_path);
	moe_gguf *g;
	moe_err err = moe_gguf_open(&g, gguf_path);
	if (err)
		return err;
	err = moe_tokenizer_from_gguf(tok, g);
	moe_gguf_close(g);
	return err;
}

int moe_cmd_tokenize(int argc, char **argv)
{
	const char *gguf_path = NULL, *json_path = NULL;
	bool decode = false;
	unsigned enc_flags = MOE_TOK_ENCODE_SPECIAL, dec_flags = MOE_TOK_DECODE_SPECIAL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
			gguf_path = argv[++i];
		} else if (!strcmp(a, "--tokenizer-json") && i + 1 < argc) {
			json_path = argv[++i];
		} else if (!strcmp(a, "--decode")) {
			decode = true;
		} else if (!strcmp(a, "--no-special")) {
			enc_flags &= ~(unsigned)MOE_TOK_ENCODE_SPECIAL;
		} else if (!strcmp(a, "--add-special")) {
			enc_flags |= MOE_TOK_ENCODE_ADD_SPECIAL;
		} else if (!strcmp(a, "--skip-special")) {
			dec_flags &= ~(unsigned)MOE_TOK_DECODE_SPECIAL;
		} else {
			fprintf(stderr, "moemesh tokenize: unknown or incomplete option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if ((gguf_path == NULL) == (json_path == NULL)) {
		fprintf(stderr, "moemesh tokenize: give exactly one of -m and --tokenizer-json\n");
		usage(stderr);
		return 2;
	}
	moe_tokenizer *tok;
	moe_err err = load(&tok, gguf_path, json_path);
	if (err) {
		fprintf(stderr, "moemesh tokenize: %s: %s\n", moe_err_name(err), moe_err_detail());
		return 1;
	}
	moe_tok_stream *stream;
	err = moe_tok_stream_create(&stream, tok, dec_flags);
	if (err) {
		fprintf(stderr, "moemesh tokenize: %s: %s\n", moe_err_name(err), moe_err_detail());
		moe_tokenizer_destroy(tok);
		return 1;
	}
	int status = 0;
	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	for (long no = 1; (got = getline(&line, &cap, stdin)) >= 0; no++) {
		size_t n = (size_t)got;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = 0;
		if (strspn(line, " \t") == n)
			continue; /* blank */
		cJSON *js = NULL;
		if (memchr(line, 0, n) != NULL)
			err = moe_fail(MOE_ERR_FORMAT, "raw NUL byte in the line");
		else if (!hide_nul_escapes(line))
			err = moe_fail(MOE_ERR_UNSUPPORTED, "U+FDD0 in the input is not supported");
		else if ((js = cJSON_ParseWithLength(line, n)) == NULL)
			err = moe_fail(MOE_ERR_FORMAT, "not JSON");
		else
			err =
			    decode ? decode_line(tok, js, stream) : encode_line(tok, js, enc_flags);
		cJSON_Delete(js);
		if (err) {
			char msg[640];
			snprintf(msg, sizeof msg, "line %ld: %s: %s", no, moe_err_name(err),
			         moe_err_detail());
			fprintf(stderr, "moemesh tokenize: %s\n", msg);
			cJSON *obj = cJSON_CreateObject();
			char *out = NULL;
			if (obj && cJSON_AddStringToObject(obj, "error", msg))
				out = cJSON_PrintUnformatted(obj);
			puts(out ? out : "{\"error\": \"out of memory\"}");
			free(out);
			cJSON_Delete(obj);
			status = 1;
			/* a failed decode may leave bytes held back */
			const char *rest;
			size_t rest_n;
			(void)moe_tok_stream_finish(stream, &rest, &rest_n);
		}
		fflush(stdout);
	}
	free(line);
	moe_tok_stream_destroy(stream);
	moe_tokenizer_destroy(tok);
	return status;
}
