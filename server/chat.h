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
	cJSON *schema;      /* owned; the JSON schema the answer must follow; NULL: free text */
	bool schema_strict; /* refuse a schema keyword that cannot be enforced (else ignore it) */
	bool reasoning;     /* take the reasoning apart from the answer */
} moe_chat_req;

/* Frees what r owns and zeroes it. */
void moe_chat_req_free(moe_chat_req *r);

/* Checks an OpenAI-shaped "tools" array (each {"type": "function",
 * "function": {"name", "description"?, "parameters"?}}, names of 1-64 letters,
 * digits, '_' or '-', no name twice).  On failure why gets the reason. */
bool moe_chat_tools_valid(const cJSON *tools, char *why, size_t size);

/* Whether tools (as checked) has a function called name. */
bool moe_chat_tool_exists(const cJSON *tools, const char *name);

/* The compiled grammars a template's requests constrain replies with (a
 * small cache over the template's vocabulary), and one of them, shared. */
typedef struct moe_chat_grammars moe_chat_grammars;
typedef struct moe_chat_grammar moe_chat_grammar;

typedef struct moe_chat_prompt {
	int32_t *ids; /* malloc'd */
	size_t n_ids;
	int32_t end_ids[MOE_GEN_MAX_END]; /* tokens that end the reply */
	int n_end;
	bool special_text;         /* the reply's markup is control tokens: show them */
	bool think_closed;         /* the prompt ends with </think>: thinking is off */
	moe_reply_opts reply;      /* .tools points into the request: valid while it lives */
	moe_chat_grammar *grammar; /* held; NULL: the reply is free (moe_chat_constrain) */
	const char *trigger;       /* static; NULL: the grammar holds from the first token */
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

/* p's grammar as a generation's constraint, with one more hold on it (that a
 * successful moe_engine_submit hands to the generation; else release it with
 * moe_chat_grammar_release(.release_ctx)); all zero without a grammar. */
moe_gen_grammar moe_chat_gen_grammar(const moe_chat_prompt *p);

/* Frees out->ids, releases its grammar, zeroes it. */
void moe_chat_prompt_free(moe_chat_prompt *p);

/* ---- constrained replies (constrain.c) ------------------------------------------ */

/* The view of tok's vocabulary that grammars are compiled over (control
 * tokens never written, but the n_end end tokens, valid where a grammar may
 * end), with an empty cache.  Errors: MOE_ERR_NOMEM, MOE_ERR_SYS. */
moe_err moe_chat_grammars_create(moe_chat_grammars **out, const moe_tokenizer *tok,
                                 const int32_t *end_ids, int n_end);

/* NULL is a no-op; every grammar handed out must have been released. */
void moe_chat_grammars_destroy(moe_chat_grammars *gs);

/* The template's grammars (thread-safe: requests on every connection thread
 * use them). */
moe_chat_grammars *moe_chat_template_grammars(const moe_chat_template *t);

/* Sets p->grammar (and p->trigger) to what r asks the reply to follow, given
 * how p reads it: the JSON schema of response_format; a tool call of any tool
 * (tool_choice required) or of the named one, several if parallel_tool_calls,
 * in the template's form (Qwen3's JSON form where the template has none),
 * after an optional reasoning part where the template thinks; with tools and
 * tool_choice auto, the rest of a call from the moment the model writes
 * <tool_call> (the trigger).  Leaves p->grammar NULL when r asks for nothing
 * of the kind.  Compiling takes up to a few hundred ms for large schemas;
 * the same grammar is taken from the cache.  Errors: MOE_ERR_UNSUPPORTED (a
 * schema keyword, or the template's form; the detail says which), those of
 * moe_grammar_schema_to_gbnf and moe_grammar_parse, MOE_ERR_NOMEM. */
moe_err moe_chat_constrain(moe_chat_prompt *p, moe_chat_grammars *gs, const moe_chat_req *r);

/* The tables of g, and one more hold on it (for the generation), and the
 * release of one hold (void * to serve as moe_gen_grammar.release; NULL is a
 * no-op; the last one frees g). */
const moe_grammar_tables *moe_chat_grammar_tables(const moe_chat_grammar *g);
moe_chat_grammar *moe_chat_grammar_ref(moe_chat_grammar *g);
void moe_chat_grammar_release(void *g);

#endif
