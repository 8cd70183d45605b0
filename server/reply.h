/*
 * reply.h - private to server/: the model's generated text taken apart into
 * what the chat APIs report: the answer (content), the reasoning, and tool
 * calls (name and arguments as a JSON text), incrementally, so that a
 * streamed reply sends the same pieces a non-streamed one collects and never
 * shows tool-call markup as content.
 *
 * Formats (which one a model speaks follows from its chat template):
 *
 *   PLAIN       no tool calls; only the reasoning is split off
 *   QWEN3_JSON  Qwen3:  <tool_call>\n{"name": N, "arguments": {...}}\n</tool_call>
 *   QWEN3_XML   Qwen3-Coder, Qwen3.5/3.6:  <tool_call>\n<function=N>\n
 *               <parameter=P>\nVALUE\n</parameter>\n...</function>\n</tool_call>
 *               (VALUE converted to the JSON type the tool's schema gives P)
 *   HARMONY     gpt-oss: messages <|channel|>C[ to=R]<|message|>BODY, ended by
 *               <|end|>, <|call|> or <|return|>; analysis = reasoning, final =
 *               content, commentary to=functions.N = a call of N with BODY as
 *               its arguments
 *
 * Reasoning (all but HARMONY): <think>...</think> before the answer, or
 * everything up to </think> when the prompt already opened <think>.
 * Whitespace next to markup (after </think> or </tool_call>, before
 * <tool_call>, around the reasoning) is not part of content or reasoning.
 *
 * Events: CONTENT and REASONING carry text pieces; a tool call is TOOL_BEGIN
 * (its index from 0 and name), TOOL_ARGS pieces whose concatenation is the
 * arguments JSON, and TOOL_END with the whole arguments text.  Pieces are
 * valid UTF-8 when the input is.
 *
 * Threads: a parser belongs to one request; no shared state.
 */
#ifndef MOE_SERVER_REPLY_H
#define MOE_SERVER_REPLY_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/core.h"

typedef enum moe_reply_format {
	MOE_REPLY_PLAIN = 0,
	MOE_REPLY_QWEN3_JSON,
	MOE_REPLY_QWEN3_XML,
	MOE_REPLY_HARMONY,
} moe_reply_format;

typedef enum moe_reply_kind {
	MOE_REPLY_CONTENT = 0,
	MOE_REPLY_REASONING,
	MOE_REPLY_TOOL_BEGIN,
	MOE_REPLY_TOOL_ARGS,
	MOE_REPLY_TOOL_END,
} moe_reply_kind;

typedef struct moe_reply_event {
	moe_reply_kind kind;
	int index;        /* tool call index (TOOL_*), from 0 */
	const char *text; /* CONTENT, REASONING, TOOL_ARGS: the piece; TOOL_END: all arguments */
	size_t len;
	const char *name; /* TOOL_BEGIN: the function's name (NUL-terminated) */
} moe_reply_event;

/* Receives each event; the pointers are valid during the call only.  Returns
 * false to stop the parse (it then fails with MOE_ERR_CANCELED). */
typedef bool (*moe_reply_cb)(void *ctx, const moe_reply_event *ev);

typedef struct moe_reply_opts {
	moe_reply_format format;
	bool reasoning;     /* split off the reasoning; false: think tags stay in the content
	                     * (HARMONY: the analysis channel becomes content) */
	bool in_reasoning;  /* the prompt ends inside <think>: the text starts as reasoning */
	const cJSON *tools; /* the request's "tools" (OpenAI shape), for QWEN3_XML's value
	                     * types; may be NULL; must outlive the parser */
} moe_reply_opts;

typedef struct moe_reply_parser moe_reply_parser;

/* Errors: MOE_ERR_NOMEM. */
moe_err moe_reply_parser_create(moe_reply_parser **out, const moe_reply_opts *o);

/* NULL is a no-op. */
void moe_reply_parser_destroy(moe_reply_parser *p);

/* Feeds the next len bytes of the generated text and calls cb for every event
 * they settle (text that could still turn out to be markup is held back).
 * With final, the text is complete: everything held back is settled.  After
 * an error the parser only fails.  Errors: MOE_ERR_FORMAT (a tool call that
 * cannot be read: not JSON, no name, an unterminated call or parameter at the
 * end; the detail says which and quotes it), MOE_ERR_CANCELED (cb returned
 * false), MOE_ERR_NOMEM. */
moe_err moe_reply_parser_feed(moe_reply_parser *p, const char *text, size_t len, bool final,
                              moe_reply_cb cb, void *ctx);

/* Says the text is being cut by the token limit: at the final feed a tool
 * call still open ends (TOOL_END) with the arguments it has, which may not
 * be JSON, instead of failing (one whose name never came is dropped). */
void moe_reply_parser_truncated(moe_reply_parser *p);

/* Whether the text so far has opened a tool call that has not ended (for a
 * constraint that starts when the model opens a call). */
bool moe_reply_parser_in_tool(const moe_reply_parser *p);

/* Tool calls completed so far. */
int moe_reply_parser_n_tools(const moe_reply_parser *p);

#endif
