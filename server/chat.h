/*
 * chat.h - private to server/: a chat request in the one shape every API
 * turns its body into, and its prompt: the rendered conversation's token
 * ids, the tokens that end the reply, and how to read the reply (reply.h).
 *
 * The shape (what the chat template sees, as transformers passes it):
 *
 *   messages  [{"role": "system"|"user"|"assistant"|"tool",
 *               "content": "text",
 *               "reasoning_content": "text"        (assistant, optional)
 *               "tool_calls": [{"id", "type": "function",
 *                               "function": {"name", "arguments": {...}}}]
 *                                                  (assistant, optional;
 *                                                   arguments an object)
 *               "tool_call_id": "...", "name": "..."   (tool, optional)}]
 *   tools     [{"type": "function", "function": {"name", "description",
 *               "parameters": {JSON schema}}}]
 *
 * Threads: a moe_chat_template is read-only once created and shared by every
 * connection thread.
 */
#ifndef MOE_SERVER_CHAT_H
#define MOE_SERVER_CHAT_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "server/reply.h"
#include "server/server.h"

#define MOE_CHAT_NAME_MAX 64 /* a function name's bytes */

typedef enum moe_tool_choice {
	MOE_TOOLS_AUTO = 0, /* the model decides */
	MOE_TOOLS_NONE,     /* no call: the tools are not shown to the model */
	MOE_TOOLS_REQUIRED, /* at least one call */
	MOE_TOOLS_NAMED,    /* a call of tool_name */
} moe_tool_choice;

typedef struct moe_chat_req {
	cJSON *messages; /* owned; the shape above */
	cJSON *tools;    /* owned; NULL: none */
	cJSON *kwargs;   /* owned; extra template variables (chat_template_kwargs); NULL: none */
	bool add_generation_prompt;
	moe_tool_choice tool_choice;
	char tool_name[MOE_CHAT_NAME_MAX + 1]; /* MOE_TOOLS_NAMED */
	bool parallel_tool_calls;
	cJSON *schema;  /* owned; the JSON schema the answer must follow; NULL: free text */
	bool reasoning; /* take the reasoning apart from the answer */
} moe_chat_req;

/* Frees what r owns and zeroes it. */
void moe_chat_req_free(moe_chat_req *r);

/* Checks an OpenAI-shaped "tools" array (each {"type": "function",
 * "function": {"name", "description"?, "parameters"?}}, names of 1-64 letters,
 * digits, '_' or '-', no name twice).  On failure why gets the reason. */
bool moe_chat_tools_valid(const cJSON *tools, char *why, size_t size);

/* Whether tools (as checked) has a function called name. */
bool moe_chat_tool_exists(const cJSON *tools, const char *name);

typedef struct moe_chat_prompt {
	int32_t *ids; /* malloc'd */
	size_t n_ids;
	int32_t end_ids[MOE_GEN_MAX_END]; /* tokens that end the reply */
	int n_end;
	bool special_text;    /* the reply's markup is control tokens: show them */
	moe_reply_opts reply; /* .tools points into the request: valid while it lives */
} moe_chat_prompt;

/* The text of r rendered with the template t: *text malloc'd (NUL-terminated,
 * *len bytes).  Errors: MOE_ERR_BAD_VALUE (the template refused the
 * conversation: the detail quotes it), MOE_ERR_NOMEM. */
moe_err moe_chat_render(char **text, size_t *len, const moe_chat_template *t,
                        const moe_chat_req *r);

/* Renders r with the template t and tokenizes it with tok (special tokens
 * written by the template are recognised).  Errors: MOE_ERR_BAD_VALUE (the
 * template refused the conversation: the detail quotes it), those of the
 * tokenizer, MOE_ERR_NOMEM. */
moe_err moe_chat_prompt_make(moe_chat_prompt *out, const moe_chat_template *t,
                             const moe_tokenizer *tok, const moe_chat_req *r);

/* Frees out->ids and zeroes it. */
void moe_chat_prompt_free(moe_chat_prompt *p);

#endif
