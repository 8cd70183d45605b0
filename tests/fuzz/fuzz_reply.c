/*
 * fuzz_reply.c - libFuzzer harness for the reply parser (reasoning and tool
 * calls read out of generated text, which a prompt can steer): the first
 * input byte picks the format and flags, the second where to cut, the rest is
 * the generated text.  Fed whole or in pieces cut anywhere, the parser must
 * give the same events (adjacent text pieces of one kind joined) and the same
 * outcome: text arrives token by token, wherever the tokens end.
 */
#include <string.h>

#include "server/reply.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* The events as one text: a kind letter before each run of one kind. */
typedef struct trace {
	char *b;
	size_t len, cap;
	int last; /* kind of the open text run, -1: none */
} trace;

static void put(trace *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *b = realloc(t->b, cap);
		if (b == NULL)
			abort();
		t->b = b;
		t->cap = cap;
	}
	memcpy(t->b + t->len, s, n);
	t->len += n;
}

static bool on_event(void *ctx, const moe_reply_event *ev)
{
	trace *t = ctx;
	char tag[48];
	const bool text = ev->kind == MOE_REPLY_CONTENT || ev->kind == MOE_REPLY_REASONING ||
	                  ev->kind == MOE_REPLY_TOOL_ARGS;
	if (!text || t->last != (int)ev->kind) {
		const int n = snprintf(tag, sizeof tag, "\n<%d:%d>", (int)ev->kind, ev->index);
		put(t, tag, (size_t)n);
	}
	t->last = text ? (int)ev->kind : -1;
	if (ev->kind == MOE_REPLY_TOOL_BEGIN)
		put(t, ev->name, strlen(ev->name));
	else
		put(t, ev->text, ev->len);
	return true;
}

/* Parses text[0..n) fed in pieces of at most step bytes (0: whole). */
static moe_err parse(trace *t, const moe_reply_opts *o, const char *text, size_t n, size_t step,
                     bool cut)
{
	moe_reply_parser *p = NULL;
	moe_err err = moe_reply_parser_create(&p, o);
	if (err != MOE_OK)
		return err;
	if (cut)
		moe_reply_parser_truncated(p);
	size_t at = 0;
	do {
		const size_t k = step == 0 || n - at < step ? n - at : step;
		err = moe_reply_parser_feed(p, text + at, k, at + k == n, on_event, t);
		at += k;
	} while (err == MOE_OK && at < n);
	moe_reply_parser_destroy(p);
	return err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	static const char tools[] =
	    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
	    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"days\":"
	    "{\"type\":\"integer\"}}}}}]";
	cJSON *tj = cJSON_Parse(tools);
	const moe_reply_opts o = {.format = (moe_reply_format)(data[0] & 3),
	                          .reasoning = (data[0] >> 2) & 1,
	                          .in_reasoning = (data[0] >> 3) & 1,
	                          .tools = (data[0] >> 4) & 1 ? tj : NULL};
	const bool cut = (data[0] >> 5) & 1;
	const size_t step = 1 + data[1] % 7;
	const char *text = (const char *)data + 2;
	const size_t n = size - 2;
	trace whole = {.last = -1}, pieces = {.last = -1};
	const moe_err e1 = parse(&whole, &o, text, n, 0, cut);
	const moe_err e2 = parse(&pieces, &o, text, n, step, cut);
	/* a failed parse may have given different prefixes before failing */
	if ((e1 == MOE_OK) != (e2 == MOE_OK) ||
	    (e1 == MOE_OK &&
	     (whole.len != pieces.len || (whole.len && memcmp(whole.b, pieces.b, whole.len))))) {
		fprintf(stderr, "fed whole and in pieces of %zu, the parser differs\n", step);
		abort();
	}
	free(whole.b);
	free(pieces.b);
	cJSON_Delete(tj);
	return 0;
}
