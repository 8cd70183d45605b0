/*
 * api.h - private to server/: what the files of the API layer share.
 *
 * api.c owns the front end (struct moe_http behind server.h's moe_http_*):
 * the route table, the API key, readiness (503 before the engine is set),
 * the error shapes, /health and /metrics.  Each api_*.c serves the routes of
 * one API (api_openai.c: OpenAI's) with handlers of type moe_api_handler
 * that the table in api.c names; a new API is a new file and new rows.
 *
 * Threads: handlers run on their request's connection thread (http.h), many
 * at once; the functions here are safe from any of them.
 */
#ifndef MOE_SERVER_API_H
#define MOE_SERVER_API_H

#include <cjson/cJSON.h>

#include "server/http.h"
#include "server/server.h"

/* Answers r, a request routed to it whose method, key and readiness api.c
 * has checked (the engine is set).  Must reply (http.h) or moe_http_close. */
typedef void (*moe_api_handler)(moe_http *h, moe_http_req *r);

/* An API's error object for status code (param may be NULL); NULL without
 * memory.  The caller owns the result. */
typedef cJSON *(*moe_api_error_fn)(int code, const char *param, const char *msg);

/* ---- the front end's state ------------------------------------------------------- */

/* The engine and its tokenizer; false (and NULLs) until moe_http_set_engine. */
bool moe_api_engine(moe_http *h, moe_engine **e, const moe_tokenizer **tok);

/* The chat template (set with the engine; NULL before). */
const moe_chat_template *moe_api_template(moe_http *h);

/* The model name clients see (moe_http_opts.model_id); lives as long as h. */
const char *moe_api_model_id(const moe_http *h);

/* A number for a response id: 1, 2, ... over the server's life. */
uint64_t moe_api_next_id(moe_http *h);

/* ---- replies and errors ----------------------------------------------------------- */

/* The server's own error shape (OpenAI's), for routes of APIs without one:
 * {"error": {"message", "type", "param", "code": null}}, type from the
 * status. */
cJSON *moe_api_error_json(int code, const char *param, const char *msg);

/* Replies code with j as application/json and frees j; NULL j (a failed
 * build) or no memory to print it gives a 500 "out of memory" instead. */
void moe_api_send_json(moe_http_req *r, int code, cJSON *j);

/* Replies code with moe_api_error_json(code, param, msg). */
void moe_api_send_error(moe_http_req *r, int code, const char *param, const char *msg);

/* The status for an error of moe_engine_submit: 429 (queue full), 503
 * (stopping), 500 (no memory), 400 (the request). */
int moe_api_submit_status(moe_err err);

/* The status and message for a generation that ended in MOE_GEN_ERROR or
 * MOE_GEN_CANCELLED: 503 with the engine's reason when it cannot serve (the
 * cluster lost its experts), else 500.  why gets the message. */
int moe_api_failure(moe_engine *e, char *why, size_t size);

/* Adds text[0..len) (valid UTF-8, possibly with NUL bytes, which a C string
 * cannot carry; what follows text[len - 1] is not read) to obj as the JSON
 * string key; NUL becomes U+FFFD.  Without memory the string is empty. */
void moe_api_add_text(cJSON *obj, const char *key, const char *text, size_t len);

/* Appends s[0..n) to the malloc'd *b (length *len, capacity *cap, kept
 * NUL-terminated).  False without memory (*b unchanged). */
bool moe_api_grow(char **b, size_t *len, size_t *cap, const char *s, size_t n);

/* A new tool call id: prefix and 24 random letters and digits (the system's
 * CSPRNG; a clock-seeded generator if it fails), NUL-terminated in out. */
void moe_api_call_id(char *out, size_t size, const char *prefix);

/* ---- api_openai.c ----------------------------------------------------------------- */

/* POST /apply-template (as llama.cpp's server has it): an OpenAI chat body
 * (messages, tools, chat_template_kwargs, add_generation_prompt) rendered
 * with the chat template: {"prompt": TEXT}. */
void moe_api_apply_template(moe_http *h, moe_http_req *r);

/* GET /v1/models: the one model, as moe_api_model_id. */
void moe_api_openai_models(moe_http *h, moe_http_req *r);

/* POST /v1/chat/completions and POST /v1/completions: validate the body,
 * generate, answer whole or as a stream of server-sent events; a client that
 * leaves cancels its request. */
void moe_api_openai_chat(moe_http *h, moe_http_req *r);
void moe_api_openai_completions(moe_http *h, moe_http_req *r);

/* The checks POST /v1/chat/completions (chat) or /v1/completions makes of a
 * body before it generates (the JSON, every field, the rendered and tokenized
 * prompt, the reply's grammar), without a connection or an engine: 0 when the
 * route would submit the request, else the status it answers (400) with the
 * message in why.  For the fuzzer (tests/fuzz); thread-safe as the handlers. */
int moe_api_openai_check(const char *body, size_t len, bool chat, const moe_chat_template *t,
                         const moe_tokenizer *tok, int n_ctx, char *why, size_t size);

/* ---- api_anthropic.c --------------------------------------------------------------- */

/* Anthropic's error shape: {"type": "error", "error": {"type", "message"}}. */
cJSON *moe_api_anthropic_error(int code, const char *param, const char *msg);

/* POST /v1/messages: a Messages API request, answered whole or as
 * Anthropic's event stream. */
void moe_api_anthropic_messages(moe_http *h, moe_http_req *r);

/* POST /v1/messages/count_tokens: {"input_tokens": N} of the rendered
 * prompt. */
void moe_api_anthropic_count_tokens(moe_http *h, moe_http_req *r);

/* As moe_api_openai_check, for POST /v1/messages. */
int moe_api_anthropic_check(const char *body, size_t len, const moe_chat_template *t,
                            const moe_tokenizer *tok, char *why, size_t size);

#endif
