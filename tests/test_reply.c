/* test_reply.c - the reply parser (server/reply.h) on crafted model outputs:
 * reasoning, Qwen3 JSON and XML tool calls, harmony channels, markup split at
 * every byte and in random pieces (the pieces always add up to what one feed
 * gives), invalid calls as clear errors, and random text that never crashes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/reply.h"

#define MAX_TOOLS 8

typedef struct got {
	char content[4096], reasoning[4096];
	int n_tools;
	char name[MAX_TOOLS][64];
	char args[MAX_TOOLS][1024]; /* TOOL_ARGS pieces joined */
	char end[MAX_TOOLS][1024];  /* TOOL_END's text */
	int n_events;
	bool order_ok; /* BEGIN, ARGS..., END per call, in index order */
	int open;      /* index of the call between BEGIN and END, or -1 */
} got;

static void cat(char *dst, size_t cap, const char *s, size_t n)
{
	size_t k = strlen(dst);
	cr_assert(k + n < cap, "test buffer too small");
	memcpy(dst + k, s, n);
	dst[k + n] = '\0';
}

static bool on_event(void *ctx, const moe_reply_event *ev)
{
	got *g = ctx;
	g->n_events++;
	switch (ev->kind) {
	case MOE_REPLY_CONTENT:
		cr_assert(ev->len > 0, "empty CONTENT event");
		cat(g->content, sizeof g->content, ev->text, ev->len);
		break;
	case MOE_REPLY_REASONING:
		cr_assert(ev->len > 0, "empty REASONING event");
		cat(g->reasoning, sizeof g->reasoning, ev->text, ev->len);
		break;
	case MOE_REPLY_TOOL_BEGIN:
		if (g->open != -1 || ev->index != g->n_tools)
			g->order_ok = false;
		g->open = ev->index;
		cr_assert(ev->index < MAX_TOOLS);
		snprintf(g->name[ev->index], sizeof g->name[0], "%s", ev->name);
		break;
	case MOE_REPLY_TOOL_ARGS:
		if (g->open != ev->index)
			g->order_ok = false;
		cat(g->args[ev->index], sizeof g->args[0], ev->text, ev->len);
		break;
	case MOE_REPLY_TOOL_END:
		if (g->open != ev->index)
			g->order_ok = false;
		cat(g->end[ev->index], sizeof g->end[0], ev->text, ev->len);
		g->open = -1;
		g->n_tools++;
		break;
	}
	return true;
}

/* Feeds text in pieces cut at cuts[0..n_cuts) (increasing offsets). */
static moe_err parse_cut(got *g, const moe_reply_opts *o, const char *text, const size_t *cuts,
                         int n_cuts)
{
	memset(g, 0, sizeof *g);
	g->order_ok = true;
	g->open = -1;
	moe_reply_parser *p;
	cr_assert_eq(moe_reply_parser_create(&p, o), MOE_OK);
	const size_t len = strlen(text);
	size_t at = 0;
	moe_err err = MOE_OK;
	for (int i = 0; i <= n_cuts && err == MOE_OK; i++) {
		const size_t to = i < n_cuts ? cuts[i] : len;
		err = moe_reply_parser_feed(p, text + at, to - at, i == n_cuts, on_event, g);
		at = to;
	}
	moe_reply_parser_destroy(p);
	return err;
}

static void same(const got *a, const got *b, const char *how)
{
	cr_assert_str_eq(a->content, b->content, "%s: content", how);
	cr_assert_str_eq(a->reasoning, b->reasoning, "%s: reasoning", how);
	cr_assert_eq(a->n_tools, b->n_tools, "%s: tool calls", how);
	for (int i = 0; i < a->n_tools; i++) {
		cr_assert_str_eq(a->name[i], b->name[i], "%s: name %d", how, i);
		cr_assert_str_eq(a->args[i], b->args[i], "%s: args %d", how, i);
		cr_assert_str_eq(a->end[i], b->end[i], "%s: end %d", how, i);
	}
	cr_assert(b->order_ok, "%s: events out of order", how);
}

/* Parses text whole, then cut once at every byte, then byte by byte, then in
 * 200 random pieces; every way must give the same result (or the same error
 * code).  Returns the whole-text result in *out and its error. */
static moe_err parse_every_way(got *out, const moe_reply_opts *o, const char *text)
{
	const moe_err err = parse_cut(out, o, text, NULL, 0);
	cr_assert(out->order_ok, "whole: events out of order");
	for (int i = 0; i < out->n_tools; i++)
		cr_assert_str_eq(out->args[i], out->end[i], "TOOL_END differs from its pieces");
	const size_t len = strlen(text);
	static got g;
	static size_t cuts[8192];
	cr_assert(len < 8192);
	for (size_t c = 1; c < len; c++) {
		cuts[0] = c;
		moe_err e = parse_cut(&g, o, text, cuts, 1);
		cr_assert_eq(e, err, "cut at %zu: %s instead of %s", c, moe_err_name(e),
		             moe_err_name(err));
		if (err == MOE_OK)
			same(out, &g, "one cut");
	}
	for (size_t c = 1; c < len; c++)
		cuts[c - 1] = c;
	moe_err e = parse_cut(&g, o, text, cuts, len > 0 ? (int)len - 1 : 0);
	cr_assert_eq(e, err, "byte by byte: %s", moe_err_name(e));
	if (err == MOE_OK)
		same(out, &g, "byte by byte");
	unsigned seed = 12345;
	for (int r = 0; r < 200; r++) {
		int n = 0;
		for (size_t c = 1; c < len; c++) {
			seed = seed * 1103515245u + 12345u;
			if ((seed >> 16) % 5 == 0)
				cuts[n++] = c;
		}
		e = parse_cut(&g, o, text, cuts, n);
		cr_assert_eq(e, err, "random pieces: %s", moe_err_name(e));
		if (err == MOE_OK)
			same(out, &g, "random pieces");
	}
	return err;
}

static const char weather_tools[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{"
    "\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},"
    "\"days\":{\"type\":\"integer\"},\"metric\":{\"type\":\"boolean\"},"
    "\"scale\":{\"type\":\"number\"},\"where\":{\"type\":\"object\"},"
    "\"tags\":{\"type\":\"array\"},\"note\":{\"type\":[\"string\",\"null\"]}}}}}]";

Test(reply, qwen3_reasoning_content_and_two_json_calls)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON, .reasoning = true};
	got g;
	cr_assert_eq(parse_every_way(&g, &o,
	                             "<think>\nThe user wants weather.\n</think>\n\nLet me check.\n"
	                             "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
	                             "{\"city\": \"Paris\", \"days\": 3}}\n</tool_call>\n"
	                             "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n"
	                             "</tool_call>"),
	             MOE_OK);
	cr_assert_str_eq(g.reasoning, "The user wants weather.");
	cr_assert_str_eq(g.content, "Let me check.");
	cr_assert_eq(g.n_tools, 2);
	cr_assert_str_eq(g.name[0], "get_weather");
	cr_assert_str_eq(g.args[0], "{\"city\": \"Paris\", \"days\": 3}");
	cr_assert_str_eq(g.name[1], "get_time");
	cr_assert_str_eq(g.args[1], "{}");
}

Test(reply, json_call_arguments_first_and_without_arguments)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON};
	got g;
	cr_assert_eq(parse_every_way(&g, &o,
	                             "<tool_call>{\"arguments\": {\"q\": \"a}b\\\"c\"}, "
	                             "\"name\": \"search\"}</tool_call><tool_call>\n"
	                             "{\"name\": \"ping\"}\n</tool_call>"),
	             MOE_OK);
	cr_assert_eq(g.n_tools, 2);
	cr_assert_str_eq(g.name[0], "search");
	cr_assert_str_eq(g.args[0], "{\"q\": \"a}b\\\"c\"}");
	cr_assert_str_eq(g.name[1], "ping");
	cr_assert_str_eq(g.args[1], "{}");
	cr_assert_str_eq(g.content, "");
}

Test(reply, xml_call_values_follow_the_schema)
{
	cJSON *tools = cJSON_Parse(weather_tools);
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_XML, .reasoning = true, .tools = tools};
	got g;
	cr_assert_eq(
	    parse_every_way(&g, &o,
	                    "<think>\nhmm\n</think>\n\n<tool_call>\n<function=get_weather>\n"
	                    "<parameter=city>\nNew \"York\"\n</parameter>\n"
	                    "<parameter=days>\n7\n</parameter>\n<parameter=metric>\nTrue\n"
	                    "</parameter>\n<parameter=scale>\nbig\n</parameter>\n"
	                    "<parameter=where>\n{\"lat\": 1.5}\n</parameter>\n"
	                    "<parameter=tags>\n[1, 2]\n</parameter>\n<parameter=note>\nnull\n"
	                    "</parameter>\n<parameter=extra>\nline 1\nline 2\n</parameter>\n"
	                    "<parameter=n>\n42\n</parameter>\n</function>\n</tool_call>"),
	    MOE_OK);
	cr_assert_str_eq(g.reasoning, "hmm");
	cr_assert_str_eq(g.content, "");
	cr_assert_eq(g.n_tools, 1);
	cr_assert_str_eq(g.name[0], "get_weather");
	cr_assert_str_eq(g.args[0],
	                 "{\"city\": \"New \\\"York\\\"\", \"days\": 7, \"metric\": true, "
	                 "\"scale\": \"big\", \"where\": {\"lat\": 1.5}, \"tags\": [1, 2], "
	                 "\"note\": null, \"extra\": \"line 1\\nline 2\", \"n\": 42}");
	cJSON *a = cJSON_Parse(g.args[0]);
	cr_assert(cJSON_IsObject(a), "the arguments are JSON");
	cJSON_Delete(a);
	cJSON_Delete(tools);
}

Test(reply, xml_call_without_parameters_and_either_form_in_either_format)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_XML};
	got g;
	cr_assert_eq(parse_every_way(&g, &o,
	                             "Sure.\n\n<tool_call>\n<function=now>\n</function>\n"
	                             "</tool_call>\n<tool_call>\n{\"name\": \"j\", \"arguments\": "
	                             "{\"x\": [1, {\"y\": null}]}}\n</tool_call>"),
	             MOE_OK);
	cr_assert_str_eq(g.content, "Sure.");
	cr_assert_eq(g.n_tools, 2);
	cr_assert_str_eq(g.name[0], "now");
	cr_assert_str_eq(g.args[0], "{}");
	cr_assert_str_eq(g.args[1], "{\"x\": [1, {\"y\": null}]}");
}

Test(reply, prompt_opened_think_and_reasoning_off)
{
	const moe_reply_opts in = {
	    .format = MOE_REPLY_QWEN3_XML, .reasoning = true, .in_reasoning = true};
	got g;
	cr_assert_eq(parse_every_way(&g, &in, "Step 1.\nStep 2.\n</think>\n\nThe answer is 4.\n"),
	             MOE_OK);
	cr_assert_str_eq(g.reasoning, "Step 1.\nStep 2.");
	cr_assert_str_eq(g.content, "The answer is 4.\n");
	const moe_reply_opts raw = {.format = MOE_REPLY_PLAIN, .reasoning = false};
	cr_assert_eq(parse_every_way(&g, &raw, "<think>\nx\n</think>\n\ny <tool_call>"), MOE_OK);
	cr_assert_str_eq(g.content, "<think>\nx\n</think>\n\ny <tool_call>");
	cr_assert_str_eq(g.reasoning, "");
}

Test(reply, text_that_only_looks_like_markup_is_content)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON, .reasoning = true};
	got g;
	cr_assert_eq(parse_every_way(&g, &o, "a < b, <tool> and <think or </think>x <tool_cal"),
	             MOE_OK);
	cr_assert_str_eq(g.content, "a < b, <tool> and <think or </think>x <tool_cal");
	cr_assert_eq(parse_every_way(&g, &o, "  \n<think></think>\n\n  Hi 你好 🙂  "), MOE_OK);
	cr_assert_str_eq(g.reasoning, "");
	cr_assert_str_eq(g.content, "Hi 你好 🙂  ");
}

Test(reply, complete_call_at_the_end_without_its_closing_tag)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON};
	got g;
	cr_assert_eq(parse_every_way(&g, &o, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}"),
	             MOE_OK);
	cr_assert_eq(g.n_tools, 1);
	cr_assert_str_eq(g.args[0], "{}");
}

Test(reply, harmony_channels_and_a_call)
{
	const moe_reply_opts o = {.format = MOE_REPLY_HARMONY, .reasoning = true};
	got g;
	cr_assert_eq(parse_every_way(&g, &o,
	                             "<|channel|>analysis<|message|>Need weather.<|end|>"
	                             "<|start|>assistant to=functions.get_weather<|channel|>"
	                             "commentary <|constrain|>json<|message|>{\"city\":\"Oslo\"}"),
	             MOE_OK);
	cr_assert_str_eq(g.reasoning, "Need weather.");
	cr_assert_eq(g.n_tools, 1);
	cr_assert_str_eq(g.name[0], "get_weather");
	cr_assert_str_eq(g.args[0], "{\"city\":\"Oslo\"}");
	cr_assert_eq(parse_every_way(&g, &o,
	                             "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant"
	                             "<|channel|>final<|message|>It is 4."),
	             MOE_OK);
	cr_assert_str_eq(g.reasoning, "Easy.");
	cr_assert_str_eq(g.content, "It is 4.");
	cr_assert_eq(g.n_tools, 0);
}

Test(reply, invalid_calls_are_clear_errors)
{
	static const struct {
		moe_reply_format f;
		const char *text, *why;
	} bad[] = {
	    {MOE_REPLY_QWEN3_JSON,
	     "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }}\n</tool_call>",
	     "not valid JSON"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n{\"name\": \"f\", \"argu", "not valid JSON"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
	     "no function name"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n[1, 2]\n</tool_call>",
	     "start with <function=NAME>"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n{\"name\": \"f\", \"arguments\": 3}</tool_call>",
	     "not a JSON object"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n{\"name\": \"f\"} trailing</tool_call>",
	     "text after"},
	    {MOE_REPLY_QWEN3_JSON, "<tool_call>\n\n</tool_call>", "is empty"},
	    {MOE_REPLY_QWEN3_XML, "<tool_call>\n<function=f>\n<parameter=a>\n1\n</tool_call>",
	     "ends inside a parameter"},
	    {MOE_REPLY_QWEN3_XML, "<tool_call>\n<function=f>\nhello\n</function>\n</tool_call>",
	     "not a <parameter"},
	    {MOE_REPLY_HARMONY,
	     "<|start|>assistant to=functions.f<|channel|>commentary<|message|>{x",
	     "not a JSON object"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const moe_reply_opts o = {.format = bad[i].f};
		got g;
		cr_assert_eq(parse_every_way(&g, &o, bad[i].text), MOE_ERR_FORMAT, "case %zu", i);
		(void)parse_cut(&g, &o, bad[i].text, NULL, 0);
		cr_assert(strstr(moe_err_detail(), bad[i].why) != NULL, "case %zu: '%s' lacks '%s'",
		          i, moe_err_detail(), bad[i].why);
	}
}

static bool stop_at_second(void *ctx, const moe_reply_event *ev)
{
	(void)ev;
	return ++*(int *)ctx < 2;
}

Test(reply, a_receiver_can_stop_the_parse)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON, .reasoning = true};
	moe_reply_parser *p;
	cr_assert_eq(moe_reply_parser_create(&p, &o), MOE_OK);
	int n = 0;
	const char *t = "<think>a</think>b<tool_call>{\"name\":\"f\"}</tool_call>";
	cr_assert_eq(moe_reply_parser_feed(p, t, strlen(t), true, stop_at_second, &n),
	             MOE_ERR_CANCELED);
	cr_assert_eq(moe_reply_parser_feed(p, "x", 1, true, stop_at_second, &n), MOE_ERR_STATE);
	moe_reply_parser_destroy(p);
	moe_reply_parser_destroy(NULL);
}

Test(reply, in_tool_tracks_an_open_call)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON};
	moe_reply_parser *p;
	got g = {.order_ok = true, .open = -1};
	cr_assert_eq(moe_reply_parser_create(&p, &o), MOE_OK);
	cr_assert_eq(moe_reply_parser_feed(p, "Hi <tool_ca", 11, false, on_event, &g), MOE_OK);
	cr_assert(!moe_reply_parser_in_tool(p));
	cr_assert_eq(moe_reply_parser_feed(p, "ll>{\"na", 7, false, on_event, &g), MOE_OK);
	cr_assert(moe_reply_parser_in_tool(p));
	cr_assert_eq(moe_reply_parser_feed(p, "me\":\"f\"}</tool_call>", 20, false, on_event, &g),
	             MOE_OK);
	cr_assert(!moe_reply_parser_in_tool(p));
	cr_assert_eq(moe_reply_parser_n_tools(p), 1);
	moe_reply_parser_destroy(p);
}

Test(reply, random_text_never_crashes)
{
	static const char *const bits[] = {"<think>",
	                                   "</think>",
	                                   "<tool_call>",
	                                   "</tool_call>",
	                                   "<function=",
	                                   "</function>",
	                                   "<parameter=",
	                                   "</parameter>",
	                                   "{",
	                                   "}",
	                                   "[",
	                                   "]",
	                                   "\"",
	                                   "\\",
	                                   ":",
	                                   ",",
	                                   "\"name\"",
	                                   "\"arguments\"",
	                                   "\n",
	                                   " ",
	                                   "x",
	                                   "1",
	                                   "<|channel|>",
	                                   "<|message|>",
	                                   "<|end|>",
	                                   "<|start|>",
	                                   "to=functions.",
	                                   "analysis",
	                                   "final",
	                                   "é",
	                                   ">",
	                                   "<"};
	const int nb = (int)(sizeof bits / sizeof bits[0]);
	unsigned seed = 7;
	char text[512];
	for (int it = 0; it < 3000; it++) {
		text[0] = '\0';
		for (int k = 0; k < 40; k++) {
			seed = seed * 1103515245u + 12345u;
			strcat(text, bits[(seed >> 16) % (unsigned)nb]);
		}
		for (int f = 0; f < 4; f++) {
			const moe_reply_opts o = {.format = (moe_reply_format)f,
			                          .reasoning = (it & 1) != 0,
			                          .in_reasoning = (it & 2) != 0};
			got g;
			size_t cuts[3] = {strlen(text) / 4, strlen(text) / 2, strlen(text) * 3 / 4};
			const moe_err a = parse_cut(&g, &o, text, NULL, 0);
			const moe_err b = parse_cut(&g, &o, text, cuts, 3);
			cr_assert(a == MOE_OK || a == MOE_ERR_FORMAT, "%s", moe_err_name(a));
			cr_assert_eq(a, b, "pieces change the outcome of '%s'", text);
		}
	}
}

Test(reply, a_call_cut_by_the_token_limit_ends_as_it_is)
{
	const moe_reply_opts o = {.format = MOE_REPLY_QWEN3_JSON};
	static const char *const texts[] = {
	    "<tool_call>\n{\"name\": \"f\", \"arguments\": "
	    "{}}\n</tool_call>\n<tool_call>\n{\"name\": "
	    "\"g\", \"arguments\": {\"a\": [1, 2",
	    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"na"};
	for (int k = 0; k < 2; k++) {
		moe_reply_parser *p;
		got g = {.order_ok = true, .open = -1};
		cr_assert_eq(moe_reply_parser_create(&p, &o), MOE_OK);
		moe_reply_parser_truncated(p);
		cr_assert_eq(
		    moe_reply_parser_feed(p, texts[k], strlen(texts[k]), true, on_event, &g),
		    MOE_OK, "%s", moe_err_detail());
		moe_reply_parser_destroy(p);
		cr_assert(g.order_ok);
		cr_assert_eq(g.n_tools, k == 0 ? 2 : 1, "text %d: %d calls", k, g.n_tools);
		cr_assert_str_eq(g.args[0], "{}");
		if (k == 0) {
			cr_assert_str_eq(g.name[1], "g");
			cr_assert_str_eq(g.args[1], "{\"a\": [1, 2");
			cr_assert_str_eq(g.end[1], "{\"a\": [1, 2");
		}
		/* not cut: the same text is an error */
		got h;
		cr_assert_eq(parse_cut(&h, &o, texts[k], NULL, 0), MOE_ERR_FORMAT);
	}
}
