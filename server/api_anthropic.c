/* api_anthropic.c - Anthropic's Messages API on the API layer of api.c:
 * POST /v1/messages (the body's system prompt, text / tool_use / tool_result
 * / thinking blocks, tools and tool_choice turned into a chat request; the
 * reply as content blocks, whole or as Anthropic's event stream) and POST
 * /v1/messages/count_tokens; errors in Anthropic's shape. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/api.h"
#include "server/chat.h"

#define WAIT_MS 50 /* longest wait for text between two looks at the client */

/* ---- errors --------------------------------------------------------------------- */

static const char *err_type(int code)
{
	switch (code) {
	case 400:
	case 405:
	case 422:
		return "invalid_request_error";
	case 401:
		return "authentication_error";
	case 403:
		return "permission_error";
	case 404:
		return "not_found_error";
	case 413:
		return "request_too_large";
	case 429:
		return "rate_limit_error";
	case 503:
		return "overloaded_error";
	default:
		return "api_error";
	}
}

cJSON *moe_api_anthropic_error(int code, const char *param, const char *msg)
{
	(void)param;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "error");
	cJSON *e = cJSON_AddObjectToObject(j, "error");
	if (e == NULL) {
		cJSON_Delete(j);
		return NULL;
	}
	cJSON_AddStringToObject(e, "type", err_type(code));
	cJSON_AddStringToObject(e, "message", msg);
	return j;
}

static void send_error(moe_http_req *r, int code, const char *msg)
{
	moe_api_send_json(r, code, moe_api_anthropic_error(code, NULL, msg));
}

/* ---- request parsing --------------------------------------------------------------- */

typedef struct areq {
	bool stream;
	moe_gen_params gp;
	moe_chat_req cr;
	moe_chat_prompt cp;
	char err[300];
} areq;

static bool bad(areq *r, const char *fmt, const char *a)
{
	snprintf(r->err, sizeof r->err, fmt, a != NULL ? a : "");
	return false;
}

/* A number field in [lo, hi] (integer: whole); absent leaves *out. */
static bool get_num(areq *r, double *out, const cJSON *root, const char *key, double lo, double hi,
                    bool integer)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
	if (v == NULL || cJSON_IsNull(v))
		return true;
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
	    v->valuedouble > hi || (integer && v->valuedouble != floor(v->valuedouble))) {
		snprintf(r->err, sizeof r->err, "%s: must be %s in [%g, %g]", key,
		         integer ? "an integer" : "a number", lo, hi);
		return false;
	}
	*out = v->valuedouble;
	return true;
}

/* The text of a string or of an array of {"type": "text", "text"} blocks
 * (joined with new lines), appended to *b. */
static bool text_of(areq *r, char **b, size_t *n, size_t *cap, const cJSON *v, const char *what)
{
	if (cJSON_IsString(v))
		return moe_api_grow(b, n, cap, v->valuestring, strlen(v->valuestring)) ||
		       bad(r, "out of memory", NULL);
	if (!cJSON_IsArray(v))
		return bad(r, "%s: must be a string or an array of text blocks", what);
	const cJSON *blk;
	cJSON_ArrayForEach(blk, v)
	{
		const char *type =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "type"));
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(blk, "text");
		if (type == NULL || strcmp(type, "text") != 0 || !cJSON_IsString(t))
			return bad(r, "%s: only text blocks are supported here", what);
		if ((*n > 0 && !moe_api_grow(b, n, cap, "\n", 1)) ||
		    !moe_api_grow(b, n, cap, t->valuestring, strlen(t->valuestring)))
			return bad(r, "out of memory", NULL);
	}
	return true;
}

/* Appends {"role": role, "content": text} to the request's messages. */
static cJSON *add_message(areq *r, const char *role, const char *text)
{
	cJSON *m = cJSON_CreateObject();
	if (m == NULL || !cJSON_AddItemToArray(r->cr.messages, m)) {
		cJSON_Delete(m);
		return NULL;
	}
	cJSON_AddStringToObject(m, "role", role);
	cJSON_AddStringToObject(m, "content", text != NULL ? text : "");
	return m;
}

/* A user message: its tool_result blocks become tool messages (in order),
 * its text the user message after them. */
static bool user_message(areq *r, const cJSON *content)
{
	char *text = NULL;
	size_t n = 0, cap = 0;
	bool ok = true, any_text = cJSON_IsString(content);
	if (cJSON_IsString(content)) {
		ok = add_message(r, "user", content->valuestring) != NULL ||
		     bad(r, "out of memory", NULL);
		return ok;
	}
	if (!cJSON_IsArray(content))
		return bad(r, "messages: content must be a string or an array of blocks", NULL);
	const cJSON *blk;
	cJSON_ArrayForEach(blk, content)
	{
		const char *type =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "type"));
		if (type != NULL && strcmp(type, "text") == 0) {
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(blk, "text");
			if (!cJSON_IsString(t)) {
				ok = bad(r, "messages: a text block needs a 'text' string", NULL);
				break;
			}
			ok = (n == 0 || moe_api_grow(&text, &n, &cap, "\n", 1)) &&
			     moe_api_grow(&text, &n, &cap, t->valuestring, strlen(t->valuestring));
			if (!ok) {
				bad(r, "out of memory", NULL);
				break;
			}
			any_text = true;
		} else if (type != NULL && strcmp(type, "tool_result") == 0) {
			const cJSON *id = cJSON_GetObjectItemCaseSensitive(blk, "tool_use_id");
			const cJSON *c = cJSON_GetObjectItemCaseSensitive(blk, "content");
			char *res = NULL;
			size_t rn = 0, rcap = 0;
			if (!cJSON_IsString(id)) {
				ok = bad(
				    r, "messages: a tool_result block needs a 'tool_use_id' string",
				    NULL);
				break;
			}
			if (c != NULL && !cJSON_IsNull(c) &&
			    !text_of(r, &res, &rn, &rcap, c, "messages: tool_result content")) {
				free(res);
				ok = false;
				break;
			}
			cJSON *m = add_message(r, "tool", res);
			free(res);
			if (m == NULL ||
			    cJSON_AddStringToObject(m, "tool_call_id", id->valuestring) == NULL) {
				ok = bad(r, "out of memory", NULL);
				break;
			}
		} else {
			ok = bad(r,
			         "messages: a user block of type '%s' is not supported (text and "
			         "tool_result are)",
			         type != NULL ? type : "?");
			break;
		}
	}
	if (ok && any_text && add_message(r, "user", text != NULL ? text : "") == NULL)
		ok = bad(r, "out of memory", NULL);
	free(text);
	return ok;
}

/* An assistant message: text blocks its content, thinking blocks its
 * reasoning, tool_use blocks its tool calls. */
static bool assistant_message(areq *r, const cJSON *content)
{
	if (cJSON_IsString(content))
		return add_message(r, "assistant", content->valuestring) != NULL ||
		       bad(r, "out of memory", NULL);
	if (!cJSON_IsArray(content))
		return bad(r, "messages: content must be a string or an array of blocks", NULL);
	char *text = NULL, *think = NULL;
	size_t n = 0, cap = 0, tn = 0, tcap = 0;
	cJSON *calls = cJSON_CreateArray();
	bool ok = calls != NULL || bad(r, "out of memory", NULL);
	const cJSON *blk;
	cJSON_ArrayForEach(blk, content)
	{
		if (!ok)
			break;
		const char *type =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(blk, "type"));
		if (type != NULL && strcmp(type, "text") == 0) {
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(blk, "text");
			ok = cJSON_IsString(t)
			         ? moe_api_grow(&text, &n, &cap, t->valuestring,
			                        strlen(t->valuestring)) ||
			               bad(r, "out of memory", NULL)
			         : bad(r, "messages: a text block needs a 'text' string", NULL);
		} else if (type != NULL && strcmp(type, "thinking") == 0) {
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(blk, "thinking");
			ok = cJSON_IsString(t)
			         ? moe_api_grow(&think, &tn, &tcap, t->valuestring,
			                        strlen(t->valuestring)) ||
			               bad(r, "out of memory", NULL)
			         : bad(r,
			               "messages: a thinking block needs a 'thinking' "
			               "string",
			               NULL);
		} else if (type != NULL && strcmp(type, "redacted_thinking") == 0) {
			/* nothing the model can read */
		} else if (type != NULL && strcmp(type, "tool_use") == 0) {
			const cJSON *id = cJSON_GetObjectItemCaseSensitive(blk, "id");
			const cJSON *name = cJSON_GetObjectItemCaseSensitive(blk, "name");
			const cJSON *input = cJSON_GetObjectItemCaseSensitive(blk, "input");
			if (!cJSON_IsString(id) || !cJSON_IsString(name) ||
			    (input != NULL && !cJSON_IsObject(input))) {
				ok = bad(
				    r,
				    "messages: a tool_use block needs 'id', 'name' and an object "
				    "'input'",
				    NULL);
				break;
			}
			cJSON *c = cJSON_CreateObject();
			cJSON_AddItemToArray(calls, c);
			cJSON_AddStringToObject(c, "id", id->valuestring);
			cJSON_AddStringToObject(c, "type", "function");
			cJSON *f = cJSON_AddObjectToObject(c, "function");
			cJSON_AddStringToObject(f, "name", name->valuestring);
			cJSON_AddItemToObject(f, "arguments",
			                      input != NULL ? cJSON_Duplicate(input, true)
			                                    : cJSON_CreateObject());
		} else {
			ok = bad(r, "messages: an assistant block of type '%s' is not supported",
			         type != NULL ? type : "?");
		}
	}
	cJSON *m = ok ? add_message(r, "assistant", text) : NULL;
	if (ok && m == NULL)
		ok = bad(r, "out of memory", NULL);
	if (ok && think != NULL)
		cJSON_AddStringToObject(m, "reasoning_content", think);
	if (ok && cJSON_GetArraySize(calls) > 0) {
		cJSON_AddItemToObject(m, "tool_calls", calls);
		calls = NULL;
	}
	cJSON_Delete(calls);
	free(text);
	free(think);
	return ok;
}

/* "system" and "messages" into the shape of chat.h. */
static bool parse_messages(areq *r, const cJSON *root)
{
	const cJSON *sys = cJSON_GetObjectItemCaseSensitive(root, "system");
	const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
	if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) < 1)
		return bad(r, "messages: a non-empty array is required", NULL);
	if (cJSON_GetArraySize(ms) > 4096)
		return bad(r, "messages: more than 4096 entries", NULL);
	if ((r->cr.messages = cJSON_CreateArray()) == NULL)
		return bad(r, "out of memory", NULL);
	if (sys != NULL && !cJSON_IsNull(sys)) {
		char *s = NULL;
		size_t n = 0, cap = 0;
		const bool ok = text_of(r, &s, &n, &cap, sys, "system") &&
		                (add_message(r, "system", s != NULL ? s : "") != NULL ||
		                 bad(r, "out of memory", NULL));
		free(s);
		if (!ok)
			return false;
	}
	const cJSON *m;
	cJSON_ArrayForEach(m, ms)
	{
		const char *role =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		bool ok;
		if (role != NULL && strcmp(role, "user") == 0)
			ok = user_message(r, content);
		else if (role != NULL && strcmp(role, "assistant") == 0)
			ok = assistant_message(r, content);
		else
			ok = bad(r, "messages: role must be user or assistant", NULL);
		if (!ok)
			return false;
	}
	return true;
}

/* "tools" ({"name", "description", "input_schema"}) into OpenAI's shape, and
 * "tool_choice". */
static bool parse_tools(areq *r, const cJSON *root)
{
	const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
	const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
	r->cr.parallel_tool_calls = true;
	r->cr.tool_choice = MOE_TOOLS_AUTO;
	if (tools != NULL && !cJSON_IsNull(tools)) {
		if (!cJSON_IsArray(tools))
			return bad(r, "tools: must be an array", NULL);
		cJSON *out = cJSON_CreateArray();
		if (out == NULL)
			return bad(r, "out of memory", NULL);
		r->cr.tools = out;
		const cJSON *t;
		cJSON_ArrayForEach(t, tools)
		{
			const char *type =
			    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "type"));
			const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
			const cJSON *desc = cJSON_GetObjectItemCaseSensitive(t, "description");
			const cJSON *schema = cJSON_GetObjectItemCaseSensitive(t, "input_schema");
			if (type != NULL && strcmp(type, "custom") != 0)
				return bad(r, "tools: server tools ('%s') are not available here",
				           type);
			if (!cJSON_IsString(name) || !cJSON_IsObject(schema))
				return bad(
				    r,
				    "tools: each tool needs a 'name' and an 'input_schema' object",
				    NULL);
			cJSON *o = cJSON_CreateObject();
			cJSON_AddItemToArray(out, o);
			cJSON_AddStringToObject(o, "type", "function");
			cJSON *f = cJSON_AddObjectToObject(o, "function");
			cJSON_AddStringToObject(f, "name", name->valuestring);
			if (cJSON_IsString(desc))
				cJSON_AddStringToObject(f, "description", desc->valuestring);
			cJSON_AddItemToObject(f, "parameters", cJSON_Duplicate(schema, true));
		}
		char why[200];
		if (!moe_chat_tools_valid(out, why, sizeof why))
			return bad(r, "%s", why);
		if (cJSON_GetArraySize(out) == 0) {
			cJSON_Delete(out);
			r->cr.tools = NULL;
		}
	}
	if (choice == NULL || cJSON_IsNull(choice))
		return true;
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(choice, "type"));
	const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(choice, "name"));
	const cJSON *dp = cJSON_GetObjectItemCaseSensitive(choice, "disable_parallel_tool_use");
	if (!cJSON_IsObject(choice) || type == NULL)
		return bad(r, "tool_choice: must be {\"type\": auto|any|tool|none}", NULL);
	if (cJSON_IsTrue(dp))
		r->cr.parallel_tool_calls = false;
	if (strcmp(type, "auto") == 0)
		r->cr.tool_choice = MOE_TOOLS_AUTO;
	else if (strcmp(type, "none") == 0)
		r->cr.tool_choice = MOE_TOOLS_NONE;
	else if (strcmp(type, "any") == 0)
		r->cr.tool_choice = MOE_TOOLS_REQUIRED;
	else if (strcmp(type, "tool") == 0 && name != NULL && strlen(name) <= MOE_CHAT_NAME_MAX) {
		r->cr.tool_choice = MOE_TOOLS_NAMED;
		snprintf(r->cr.tool_name, sizeof r->cr.tool_name, "%s", name);
	} else
		return bad(r, "tool_choice: type must be auto, any, tool (with a name) or none",
		           NULL);
	if ((r->cr.tool_choice == MOE_TOOLS_REQUIRED || r->cr.tool_choice == MOE_TOOLS_NAMED) &&
	    r->cr.tools == NULL)
		return bad(r, "tool_choice: asks for a tool but 'tools' is empty", NULL);
	if (r->cr.tool_choice == MOE_TOOLS_NAMED && !moe_chat_tool_exists(r->cr.tools, name))
		return bad(r, "tool_choice: no tool is called '%s'", name);
	return true;
}

/* "thinking": {"type": "enabled", "budget_tokens"} or {"type": "disabled"},
 * passed to the template as enable_thinking. */
static bool parse_thinking(areq *r, const cJSON *root)
{
	const cJSON *th = cJSON_GetObjectItemCaseSensitive(root, "thinking");
	r->cr.reasoning = true;
	if (th == NULL || cJSON_IsNull(th))
		return true;
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(th, "type"));
	if (type == NULL || (strcmp(type, "enabled") != 0 && strcmp(type, "disabled") != 0))
		return bad(r, "thinking: type must be enabled or disabled", NULL);
	if ((r->cr.kwargs = cJSON_CreateObject()) == NULL ||
	    cJSON_AddBoolToObject(r->cr.kwargs, "enable_thinking", strcmp(type, "enabled") == 0) ==
	        NULL)
		return bad(r, "out of memory", NULL);
	return true;
}

/* The conversation, tools and thinking of a body (both routes). */
static bool parse_chat(areq *r, const cJSON *root)
{
	if (!cJSON_IsObject(root))
		return bad(r, "the body must be a JSON object", NULL);
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (model != NULL && !cJSON_IsString(model))
		return bad(r, "model: must be a string", NULL);
	r->cr.add_generation_prompt = true;
	return parse_messages(r, root) && parse_tools(r, root) && parse_thinking(r, root);
}

/* The sampling, limits and stops of a /v1/messages body. */
static bool parse_generation(areq *r, const cJSON *root)
{
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (st != NULL && !cJSON_IsNull(st) && !cJSON_IsBool(st))
		return bad(r, "stream: must be a boolean", NULL);
	r->stream = cJSON_IsTrue(st);
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
	if (mt == NULL || cJSON_IsNull(mt))
		return bad(r, "max_tokens: required", NULL);
	moe_sampler_params *sp = &r->gp.sp;
	moe_sampler_params_default(sp);
	/* Anthropic's defaults: temperature 1, no top_p / top_k */
	double temp = 1.0, top_p = 1.0, top_k = 0, max_tok = 0;
	double seed = (double)(moe_now_ns() & ((1ull << 52) - 1));
	if (!get_num(r, &max_tok, root, "max_tokens", 1, 1 << 24, true) ||
	    !get_num(r, &temp, root, "temperature", 0, 1, false) ||
	    !get_num(r, &top_p, root, "top_p", 0, 1, false) ||
	    !get_num(r, &top_k, root, "top_k", 0, 1 << 30, true))
		return false;
	sp->temp = (float)temp;
	sp->top_p = (float)top_p;
	sp->top_k = (int)top_k;
	sp->min_p = 0;
	sp->seed = (uint64_t)seed;
	r->gp.max_tokens = (int)max_tok;
	const cJSON *ss = cJSON_GetObjectItemCaseSensitive(root, "stop_sequences");
	if (ss != NULL && !cJSON_IsNull(ss)) {
		if (!cJSON_IsArray(ss) || cJSON_GetArraySize(ss) > MOE_GEN_MAX_STOPS)
			return bad(r, "stop_sequences: an array of at most 8 strings", NULL);
		const cJSON *x;
		cJSON_ArrayForEach(x, ss)
		{
			if (!cJSON_IsString(x) || x->valuestring[0] == '\0' ||
			    strlen(x->valuestring) > 256)
				return bad(r, "stop_sequences: strings of 1-256 bytes", NULL);
			r->gp.stops[r->gp.n_stops++] = x->valuestring;
		}
	}
	r->gp.logprobs = -1;
	return true;
}

/* Renders the chat and sets the prompt of r->gp (generating: for a reply,
 * not only a count). */
static bool make_prompt(areq *r, const moe_chat_template *t, const moe_tokenizer *tok,
                        bool generating)
{
	if (moe_chat_prompt_make(&r->cp, t, tok, &r->cr) != MOE_OK)
		return bad(r, "messages: cannot be rendered: %s", moe_err_detail());
	if (generating &&
	    moe_chat_constrain(&r->cp, moe_chat_template_grammars(t), &r->cr) != MOE_OK)
		return bad(r, "tools: the reply cannot be held to them: %s", moe_err_detail());
	r->gp.prompt = r->cp.ids;
	r->gp.n_prompt = r->cp.n_ids;
	memcpy(r->gp.end_ids, r->cp.end_ids, sizeof r->gp.end_ids);
	r->gp.n_end = r->cp.n_end;
	r->gp.special_text = r->cp.special_text;
	return true;
}

/* What POST /v1/messages checks of a body before it generates: the chat, the
 * sampling and limits, the rendered prompt and the tools' grammar (the route
 * and moe_api_anthropic_check both, so the fuzzer checks the route's path). */
static bool parse_messages_request(areq *r, const cJSON *root, const moe_chat_template *t,
                                   const moe_tokenizer *tok)
{
	return parse_chat(r, root) && parse_generation(r, root) && make_prompt(r, t, tok, true);
}

/* ---- replies ----------------------------------------------------------------------- */

/* The block the parser's event belongs to: 0 text, 1 thinking, 2 tool_use. */
static int block_of(moe_reply_kind k)
{
	return k == MOE_REPLY_CONTENT ? 0 : k == MOE_REPLY_REASONING ? 1 : 2;
}

/* Content blocks built from the parser's events, whole or streamed. */
typedef struct blocks {
	bool stream;
	/* whole: the content array; streamed: SSE bytes to send */
	cJSON *content;
	char *out;
	size_t len, cap, pos;
	int index;   /* the open block's index, -1: none */
	int kind;    /* its block_of, -1: none */
	char *piece; /* whole: the open block's text or arguments */
	size_t n_piece, cap_piece;
	char id[40], name[MOE_CHAT_NAME_MAX + 256];
	int n_calls;
	bool nomem, bad_input; /* a call's arguments are not an object */
} blocks;

static bool out_event(blocks *b, const char *name, cJSON *j)
{
	char *t = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (t == NULL)
		return false;
	const bool ok = moe_api_grow(&b->out, &b->len, &b->cap, "event: ", 7) &&
	                moe_api_grow(&b->out, &b->len, &b->cap, name, strlen(name)) &&
	                moe_api_grow(&b->out, &b->len, &b->cap, "\ndata: ", 7) &&
	                moe_api_grow(&b->out, &b->len, &b->cap, t, strlen(t)) &&
	                moe_api_grow(&b->out, &b->len, &b->cap, "\n\n", 2);
	cJSON_free(t);
	return ok;
}

/* {"type": "text"|"thinking"|"tool_use", ...} of the open block with text
 * (whole: its text or input; streamed: empty). */
static cJSON *block_json(blocks *b, const char *text, size_t n)
{
	cJSON *o = cJSON_CreateObject();
	if (b->kind == 0) {
		cJSON_AddStringToObject(o, "type", "text");
		moe_api_add_text(o, "text", text, n);
	} else if (b->kind == 1) {
		cJSON_AddStringToObject(o, "type", "thinking");
		moe_api_add_text(o, "thinking", text, n);
		cJSON_AddStringToObject(o, "signature", "");
	} else {
		cJSON_AddStringToObject(o, "type", "tool_use");
		cJSON_AddStringToObject(o, "id", b->id);
		cJSON_AddStringToObject(o, "name", b->name);
		cJSON *input = n > 0 ? cJSON_ParseWithLength(text, n) : cJSON_CreateObject();
		if (!cJSON_IsObject(input)) {
			b->bad_input = true;
			cJSON_Delete(input);
			input = cJSON_CreateObject();
		}
		cJSON_AddItemToObject(o, "input", input);
	}
	return o;
}

/* Closes the open block. */
static bool close_block(blocks *b)
{
	if (b->kind < 0)
		return true;
	bool ok = true;
	if (b->stream) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "type", "content_block_stop");
		cJSON_AddNumberToObject(j, "index", b->index);
		ok = out_event(b, "content_block_stop", j);
	} else {
		ok = cJSON_AddItemToArray(
		    b->content, block_json(b, b->piece != NULL ? b->piece : "", b->n_piece));
	}
	b->kind = -1;
	b->n_piece = 0;
	return ok;
}

/* Opens a block of kind k (streamed: content_block_start). */
static bool open_block(blocks *b, int k)
{
	b->kind = k;
	b->index++;
	b->n_piece = 0;
	if (!b->stream)
		return true;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "content_block_start");
	cJSON_AddNumberToObject(j, "index", b->index);
	cJSON_AddItemToObject(j, "content_block", block_json(b, "", 0));
	return out_event(b, "content_block_start", j);
}

static bool on_event(void *ctx, const moe_reply_event *ev)
{
	blocks *b = ctx;
	const int k = block_of(ev->kind);
	bool ok = true;
	if (ev->kind == MOE_REPLY_TOOL_END) {
		b->n_calls++;
		ok = close_block(b);
	} else if (ev->kind == MOE_REPLY_TOOL_BEGIN) {
		moe_api_call_id(b->id, sizeof b->id, "toolu_");
		snprintf(b->name, sizeof b->name, "%s", ev->name);
		ok = close_block(b) && open_block(b, 2);
	} else {
		if (b->kind != k)
			ok = close_block(b) && open_block(b, k);
		if (ok && !b->stream) {
			ok = moe_api_grow(&b->piece, &b->n_piece, &b->cap_piece, ev->text, ev->len);
		} else if (ok) {
			static const char *const dt[] = {"text_delta", "thinking_delta",
			                                 "input_json_delta"};
			static const char *const key[] = {"text", "thinking", "partial_json"};
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "content_block_delta");
			cJSON_AddNumberToObject(j, "index", b->index);
			cJSON *d = cJSON_AddObjectToObject(j, "delta");
			cJSON_AddStringToObject(d, "type", dt[k]);
			moe_api_add_text(d, key[k], ev->text, ev->len);
			ok = out_event(b, "content_block_delta", j);
		}
	}
	b->nomem |= !ok;
	return ok;
}

static void blocks_free(blocks *b)
{
	cJSON_Delete(b->content);
	free(b->out);
	free(b->piece);
}

/* "end_turn", "max_tokens", "stop_sequence" or "tool_use". */
static const char *stop_reason(moe_gen_finish fin, int stop_index, int n_calls)
{
	if (fin == MOE_GEN_LENGTH)
		return "max_tokens";
	if (stop_index >= 0)
		return "stop_sequence";
	return n_calls > 0 ? "tool_use" : "end_turn";
}

static void add_stop(cJSON *o, const areq *r, moe_gen *g, moe_gen_finish fin, int n_calls)
{
	const int k = moe_gen_stop_index(g);
	cJSON_AddStringToObject(o, "stop_reason", stop_reason(fin, k, n_calls));
	if (k >= 0 && k < r->gp.n_stops)
		cJSON_AddStringToObject(o, "stop_sequence", r->gp.stops[k]);
	else
		cJSON_AddNullToObject(o, "stop_sequence");
}

/* Anthropic's input counts: the tokens read from the prefix cache apart. */
static void add_input_usage(cJSON *u, const moe_gen *g, int prompt_tokens)
{
	const int cached = moe_gen_cached_tokens(g);
	cJSON_AddNumberToObject(u, "input_tokens", prompt_tokens - cached);
	cJSON_AddNumberToObject(u, "cache_creation_input_tokens", 0);
	cJSON_AddNumberToObject(u, "cache_read_input_tokens", cached);
}

static cJSON *message_json(moe_http *h, uint64_t id)
{
	char sid[48];
	snprintf(sid, sizeof sid, "msg_%016llx", (unsigned long long)id);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "id", sid);
	cJSON_AddStringToObject(j, "type", "message");
	cJSON_AddStringToObject(j, "role", "assistant");
	cJSON_AddStringToObject(j, "model", moe_api_model_id(h));
	return j;
}

/* ---- streamed replies ------------------------------------------------------------ */

typedef struct astream {
	moe_http *h;
	moe_engine *e;
	moe_gen *g;
	moe_http_req *rq;
	areq r; /* the request (its stops and tools outlive the handler) */
	cJSON *root;
	uint64_t id;
	moe_reply_parser *rp;
	blocks b;
	char *text;
	size_t text_len, text_cap;
	int phase; /* 0 start, 1 generating, 2 done */
} astream;

static bool stream_error(astream *s, int code, const char *why)
{
	s->phase = 2;
	return out_event(&s->b, "error", moe_api_anthropic_error(code, NULL, why));
}

static ssize_t stream_pull(void *ctx, char *buf, size_t max)
{
	astream *s = ctx;
	blocks *b = &s->b;
	while (b->pos == b->len) {
		b->pos = b->len = 0;
		if (s->phase == 2)
			return 0;
		if (s->phase == 0) {
			s->phase = 1;
			int pt, ct;
			moe_gen_usage(s->g, &pt, &ct);
			cJSON *m = message_json(s->h, s->id);
			cJSON_AddArrayToObject(m, "content");
			cJSON_AddNullToObject(m, "stop_reason");
			cJSON_AddNullToObject(m, "stop_sequence");
			cJSON *u = cJSON_AddObjectToObject(m, "usage");
			add_input_usage(u, s->g, pt);
			cJSON_AddNumberToObject(u, "output_tokens", 0);
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "message_start");
			cJSON_AddItemToObject(j, "message", m);
			if (!out_event(b, "message_start", j))
				return -1;
			continue;
		}
		s->text_len = 0;
		const moe_gen_finish fin =
		    moe_gen_wait(s->g, &s->text, &s->text_len, &s->text_cap, WAIT_MS);
		const bool done = fin != MOE_GEN_RUNNING;
		if (s->text_len > 0 || done) {
			if (fin == MOE_GEN_LENGTH)
				moe_reply_parser_truncated(s->rp);
			const moe_err err =
			    moe_reply_parser_feed(s->rp, s->text, s->text_len, done, on_event, b);
			if (err == MOE_ERR_FORMAT) {
				char why[400];
				snprintf(why, sizeof why, "the model's reply cannot be read: %s",
				         moe_err_detail());
				if (!stream_error(s, 500, why))
					return -1;
				continue;
			}
			if (err != MOE_OK)
				return -1;
		}
		if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
			char why[300];
			if (!stream_error(s, moe_api_failure(s->e, why, sizeof why), why))
				return -1;
		} else if (done) {
			int pt, ct;
			moe_gen_usage(s->g, &pt, &ct);
			cJSON *j = cJSON_CreateObject();
			cJSON_AddStringToObject(j, "type", "message_delta");
			cJSON *d = cJSON_AddObjectToObject(j, "delta");
			add_stop(d, &s->r, s->g, fin, b->n_calls);
			cJSON *u = cJSON_AddObjectToObject(j, "usage");
			add_input_usage(u, s->g, pt); /* the cache's part is known by now */
			cJSON_AddNumberToObject(u, "output_tokens", ct);
			cJSON *stop = cJSON_CreateObject();
			cJSON_AddStringToObject(stop, "type", "message_stop");
			if (!close_block(b) || !out_event(b, "message_delta", j) ||
			    !out_event(b, "message_stop", stop))
				return -1;
			s->phase = 2;
		} else if (s->text_len == 0 && moe_http_req_client_gone(s->rq)) {
			moe_gen_cancel(s->g);
			return -1;
		}
	}
	const size_t n = b->len - b->pos < max ? b->len - b->pos : max;
	memcpy(buf, b->out + b->pos, n);
	b->pos += n;
	return (ssize_t)n;
}

static void stream_release(void *ctx)
{
	astream *s = ctx;
	moe_gen_release(s->g);
	moe_reply_parser_destroy(s->rp);
	blocks_free(&s->b);
	free(s->text);
	moe_chat_prompt_free(&s->r.cp);
	moe_chat_req_free(&s->r.cr);
	cJSON_Delete(s->root);
	free(s);
}

/* ---- routes ---------------------------------------------------------------------- */

/* Answers r once g has finished. */
static void answer_whole(moe_http *h, moe_http_req *rq, moe_engine *e, areq *r, moe_gen *g,
                         uint64_t id)
{
	char *text = NULL;
	size_t len = 0, cap = 0;
	moe_gen_finish fin;
	while ((fin = moe_gen_wait(g, &text, &len, &cap, WAIT_MS)) == MOE_GEN_RUNNING)
		if (moe_http_req_client_gone(rq))
			break;
	blocks b = {.index = -1, .kind = -1, .content = cJSON_CreateArray()};
	moe_reply_parser *rp = NULL;
	char why[400];
	const bool cut = fin == MOE_GEN_LENGTH; /* a tool_use cut short gets input {} */
	bool read = false;
	if (fin != MOE_GEN_RUNNING && fin != MOE_GEN_ERROR && fin != MOE_GEN_CANCELLED &&
	    b.content != NULL && moe_reply_parser_create(&rp, &r->cp.reply) == MOE_OK) {
		if (cut)
			moe_reply_parser_truncated(rp);
		read = moe_reply_parser_feed(rp, text != NULL ? text : "", len, true, on_event,
		                             &b) == MOE_OK &&
		       close_block(&b) && (!b.bad_input || cut);
	}
	if (fin == MOE_GEN_RUNNING) {
		moe_http_close(rq);
	} else if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
		const int code = moe_api_failure(e, why, sizeof why);
		send_error(rq, code, why);
	} else if (rp == NULL) {
		send_error(rq, 500, "out of memory");
	} else if (!read) {
		snprintf(why, sizeof why, "the model's reply cannot be read: %s",
		         b.nomem       ? "out of memory"
		         : b.bad_input ? "a tool call's input is not a JSON object"
		                       : moe_err_detail());
		send_error(rq, 500, why);
	} else {
		int pt, ct;
		moe_gen_usage(g, &pt, &ct);
		cJSON *j = message_json(h, id);
		cJSON_AddItemToObject(j, "content", b.content);
		b.content = NULL;
		add_stop(j, r, g, fin, b.n_calls);
		cJSON *u = cJSON_AddObjectToObject(j, "usage");
		add_input_usage(u, g, pt);
		cJSON_AddNumberToObject(u, "output_tokens", ct);
		moe_api_send_json(rq, 200, j);
	}
	moe_reply_parser_destroy(rp);
	blocks_free(&b);
	moe_gen_release(g);
	free(text);
}

void moe_api_anthropic_messages(moe_http *h, moe_http_req *rq)
{
	moe_engine *e;
	const moe_tokenizer *tok;
	(void)moe_api_engine(h, &e, &tok); /* set: api.c checked readiness */
	size_t len;
	const char *body = moe_http_req_body(rq, &len);
	cJSON *root = cJSON_ParseWithLength(body, len);
	areq r = {0};
	moe_gen *g = NULL;
	if (root == NULL) {
		send_error(rq, 400, "the body is not valid JSON");
		return;
	}
	if (!parse_messages_request(&r, root, moe_api_template(h), tok)) {
		send_error(rq, 400, r.err);
		goto out_free;
	}
	r.gp.grammar = moe_chat_gen_grammar(&r.cp);
	const moe_err err = moe_engine_submit(&g, e, &r.gp);
	if (err != MOE_OK) {
		moe_chat_grammar_release(r.gp.grammar.release_ctx);
		send_error(rq, moe_api_submit_status(err), moe_err_detail());
		goto out_free;
	}
	const uint64_t id = moe_api_next_id(h);
	if (!r.stream) {
		answer_whole(h, rq, e, &r, g, id);
		goto out_free;
	}
	static const moe_http_header no_cache = {"Cache-Control", "no-cache"};
	astream *s = calloc(1, sizeof *s);
	if (s == NULL || moe_reply_parser_create(&s->rp, &r.cp.reply) != MOE_OK) {
		free(s);
		moe_gen_release(g);
		send_error(rq, 500, "out of memory");
		goto out_free;
	}
	s->h = h;
	s->e = e;
	s->g = g;
	s->rq = rq;
	s->r = r; /* the stream owns the request (stops, tools) and the body from here */
	s->root = root;
	s->id = id;
	s->b = (blocks){.stream = true, .index = -1, .kind = -1};
	moe_http_reply_stream(rq, 200, "text/event-stream", &no_cache, 1, stream_pull,
	                      stream_release, s);
	return;

out_free:
	moe_chat_prompt_free(&r.cp);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
}

void moe_api_anthropic_count_tokens(moe_http *h, moe_http_req *rq)
{
	moe_engine *e;
	const moe_tokenizer *tok;
	(void)moe_api_engine(h, &e, &tok);
	size_t len;
	const char *body = moe_http_req_body(rq, &len);
	cJSON *root = cJSON_ParseWithLength(body, len);
	areq r = {0};
	if (root == NULL) {
		send_error(rq, 400, "the body is not valid JSON");
		return;
	}
	if (!parse_chat(&r, root) || !make_prompt(&r, moe_api_template(h), tok, false)) {
		send_error(rq, 400, r.err);
	} else {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddNumberToObject(j, "input_tokens", (double)r.cp.n_ids);
		moe_api_send_json(rq, 200, j);
	}
	moe_chat_prompt_free(&r.cp);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
}

int moe_api_anthropic_check(const char *body, size_t len, const moe_chat_template *t,
                            const moe_tokenizer *tok, char *why, size_t size)
{
	cJSON *root = cJSON_ParseWithLength(body, len);
	areq r = {0};
	int code = 0;
	if (root == NULL) {
		snprintf(why, size, "the body is not valid JSON");
		return 400;
	}
	if (!parse_messages_request(&r, root, t, tok)) {
		snprintf(why, size, "%s", r.err);
		code = 400;
	}
	moe_chat_prompt_free(&r.cp);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
	return code;
}
