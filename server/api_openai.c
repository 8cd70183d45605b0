/* api_openai.c - OpenAI's API on the API layer of api.c: /v1/chat/completions
 * and /v1/completions (parsing and validating the body into a moe_gen_params,
 * the response whole or streamed as server-sent events, logprobs, cancelling
 * the request of a client that left) and /v1/models. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/api.h"
#include "server/chat.h"

#define WAIT_MS 50 /* longest wait for text between two looks at the client */

/* ---- request parsing ------------------------------------------------------------- */

typedef struct api_req {
	bool chat, stream;
	moe_gen_params gp;
	int32_t *prompt;    /* completions */
	moe_chat_req cr;    /* chat */
	moe_chat_prompt cp; /* chat: the prompt, end tokens, how to read the reply */
	char err[256];
	const char *err_param;
} api_req;

static bool bad(api_req *r, const char *param, const char *msg)
{
	r->err_param = param;
	snprintf(r->err, sizeof r->err, "%s", msg);
	return false;
}

/* A number field in [lo, hi]; absent leaves *out.  integer: must be whole. */
static bool get_num(api_req *r, double *out, const cJSON *root, const char *key, double lo,
                    double hi, bool integer)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
	if (v == NULL || cJSON_IsNull(v))
		return true;
	char msg[160];
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
		snprintf(msg, sizeof msg, "'%s' must be a %s", key, integer ? "integer" : "number");
		return bad(r, key, msg);
	}
	const double x = v->valuedouble;
	if (x < lo || x > hi || (integer && x != floor(x))) {
		snprintf(msg, sizeof msg, "'%s' must be %s in [%g, %g]", key,
		         integer ? "an integer" : "a number", lo, hi);
		return bad(r, key, msg);
	}
	*out = x;
	return true;
}

static bool valid_utf8(const char *s)
{
	char *t = NULL;
	size_t n = 0, len = strlen(s);
	if (moe_utf8_sanitize(&t, &n, s, len) != MOE_OK)
		return false;
	const bool same = n == len && memcmp(t, s, len) == 0;
	free(t);
	return same;
}

/* A message's content for the template (o is the message's copy): a string
 * stays, null or none becomes "" (as llama.cpp's server passes it: templates
 * test it with `in` and string methods), an array of {"type": "text",
 * "text": ...} parts becomes one string. */
static bool norm_content(api_req *r, cJSON *o, int i)
{
	char msg[160];
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "content");
	if (cJSON_IsString(v))
		return true;
	if (v == NULL || cJSON_IsNull(v)) {
		cJSON *e = cJSON_CreateString("");
		const bool ok =
		    e != NULL &&
		    (v == NULL ? cJSON_AddItemToObject(o, "content", e)
		               : cJSON_ReplaceItemInObjectCaseSensitive(o, "content", e));
		if (!ok)
			cJSON_Delete(e);
		return ok || bad(r, NULL, "out of memory");
	}
	snprintf(msg, sizeof msg,
	         "'messages[%d].content' must be a string or an array of text parts", i);
	if (!cJSON_IsArray(v))
		return bad(r, "messages", msg);
	size_t n = 1;
	const cJSON *p;
	cJSON_ArrayForEach(p, v)
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
		const char *type =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "type"));
		if (!cJSON_IsObject(p) || !cJSON_IsString(t) ||
		    (type != NULL && strcmp(type, "text") != 0)) {
			snprintf(
			    msg, sizeof msg,
			    "'messages[%d].content[]' parts must be {\"type\": \"text\", \"text\": "
			    "...} (the model reads text only)",
			    i);
			return bad(r, "messages", msg);
		}
		n += strlen(t->valuestring);
	}
	char *s = malloc(n);
	if (s == NULL)
		return bad(r, NULL, "out of memory");
	s[0] = '\0';
	cJSON_ArrayForEach(p, v)
	    strcat(s, cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring);
	cJSON *str = cJSON_CreateString(s);
	free(s);
	return (str != NULL && cJSON_ReplaceItemInObjectCaseSensitive(o, "content", str)) ||
	       bad(r, NULL, "out of memory");
}

/* An assistant message's tool_calls for the template (o is the message's
 * copy): each call's "function.arguments", a JSON text in OpenAI's shape, is
 * parsed into the object templates iterate over; the rest stays. */
static bool norm_tool_calls(api_req *r, cJSON *o, int i)
{
	char msg[200];
	cJSON *calls = cJSON_GetObjectItemCaseSensitive(o, "tool_calls");
	if (calls == NULL || cJSON_IsNull(calls))
		return true;
	if (!cJSON_IsArray(calls)) {
		snprintf(msg, sizeof msg, "'messages[%d].tool_calls' must be an array", i);
		return bad(r, "messages", msg);
	}
	int k = 0;
	cJSON *tc;
	cJSON_ArrayForEach(tc, calls)
	{
		cJSON *f = cJSON_GetObjectItemCaseSensitive(tc, "function");
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
		const cJSON *args = cJSON_GetObjectItemCaseSensitive(f, "arguments");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(tc, "id");
		if (!cJSON_IsObject(tc) || !cJSON_IsObject(f) || !cJSON_IsString(name) ||
		    (id != NULL && !cJSON_IsString(id))) {
			snprintf(msg, sizeof msg,
			         "'messages[%d].tool_calls[%d]' must be {\"id\", \"type\": "
			         "\"function\", \"function\": {\"name\", \"arguments\"}}",
			         i, k);
			return bad(r, "messages", msg);
		}
		cJSON *a = NULL;
		if (cJSON_IsString(args))
			a = cJSON_Parse(args->valuestring);
		else if (cJSON_IsObject(args))
			a = cJSON_Duplicate(args, true);
		else if (args == NULL || cJSON_IsNull(args))
			a = cJSON_CreateObject();
		if (!cJSON_IsObject(a)) {
			cJSON_Delete(a);
			snprintf(
			    msg, sizeof msg,
			    "'messages[%d].tool_calls[%d].function.arguments' is not a JSON object",
			    i, k);
			return bad(r, "messages", msg);
		}
		const bool ok = args != NULL
		                    ? cJSON_ReplaceItemInObjectCaseSensitive(f, "arguments", a)
		                    : cJSON_AddItemToObject(f, "arguments", a);
		if (!ok) {
			cJSON_Delete(a);
			return bad(r, NULL, "out of memory");
		}
		k++;
	}
	return true;
}

/* "messages" into the shape of chat.h: each message as the client sent it
 * (keys a template may read, such as "thinking", stay), with "developer"
 * named "system", text parts joined, tool call arguments parsed. */
static bool parse_messages(api_req *r, const cJSON *root)
{
	const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
	if (ms == NULL)
		return bad(r, "messages", "'messages' is required");
	if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) < 1)
		return bad(r, "messages", "'messages' must be a non-empty array");
	if (cJSON_GetArraySize(ms) > 4096)
		return bad(r, "messages", "'messages' has more than 4096 entries");
	if ((r->cr.messages = cJSON_CreateArray()) == NULL)
		return bad(r, NULL, "out of memory");
	int i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, ms)
	{
		char msg[160];
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		if (!cJSON_IsObject(m) || !cJSON_IsString(role))
			return bad(r, "messages",
			           "'messages[]' must be objects with a 'role' string");
		const char *rs = role->valuestring;
		const bool dev = strcmp(rs, "developer") == 0; /* OpenAI's newer name */
		if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
		    strcmp(rs, "tool") && !dev)
			return bad(
			    r, "messages",
			    "'messages[].role' must be system, developer, user, assistant or tool");
		cJSON *o = cJSON_Duplicate(m, true);
		if (o == NULL || !cJSON_AddItemToArray(r->cr.messages, o)) {
			cJSON_Delete(o);
			return bad(r, NULL, "out of memory");
		}
		if (dev && !cJSON_ReplaceItemInObjectCaseSensitive(o, "role",
		                                                   cJSON_CreateString("system")))
			return bad(r, NULL, "out of memory");
		const cJSON *rc = cJSON_GetObjectItemCaseSensitive(m, "reasoning_content");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
		const cJSON *nm = cJSON_GetObjectItemCaseSensitive(m, "name");
		if ((rc != NULL && !cJSON_IsString(rc) && !cJSON_IsNull(rc)) ||
		    (id != NULL && !cJSON_IsString(id)) || (nm != NULL && !cJSON_IsString(nm))) {
			snprintf(
			    msg, sizeof msg,
			    "'messages[%d]': 'reasoning_content', 'tool_call_id' and 'name' are "
			    "strings",
			    i);
			return bad(r, "messages", msg);
		}
		const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
		if (tc != NULL && strcmp(rs, "assistant") != 0 && !cJSON_IsNull(tc)) {
			snprintf(msg, sizeof msg,
			         "'messages[%d]': only assistant messages have 'tool_calls'", i);
			return bad(r, "messages", msg);
		}
		if (!norm_content(r, o, i) || !norm_tool_calls(r, o, i))
			return false;
		i++;
	}
	return true;
}

/* "tools", "tool_choice", "parallel_tool_calls". */
static bool parse_tools(api_req *r, const cJSON *root)
{
	const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
	const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
	const cJSON *par = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
	char why[200];
	if (tools != NULL && !cJSON_IsNull(tools)) {
		if (!moe_chat_tools_valid(tools, why, sizeof why))
			return bad(r, "tools", why);
		if (cJSON_GetArraySize(tools) > 0 &&
		    (r->cr.tools = cJSON_Duplicate(tools, true)) == NULL)
			return bad(r, NULL, "out of memory");
	}
	if (par != NULL && !cJSON_IsNull(par) && !cJSON_IsBool(par))
		return bad(r, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
	r->cr.parallel_tool_calls = !cJSON_IsFalse(par);
	r->cr.tool_choice = MOE_TOOLS_AUTO;
	if (choice == NULL || cJSON_IsNull(choice))
		return true;
	const char *cs = cJSON_GetStringValue(choice);
	const cJSON *fn = cJSON_GetObjectItemCaseSensitive(choice, "function");
	const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name"));
	if (cs != NULL && strcmp(cs, "auto") == 0)
		r->cr.tool_choice = MOE_TOOLS_AUTO;
	else if (cs != NULL && strcmp(cs, "none") == 0)
		r->cr.tool_choice = MOE_TOOLS_NONE;
	else if (cs != NULL && strcmp(cs, "required") == 0)
		r->cr.tool_choice = MOE_TOOLS_REQUIRED;
	else if (cJSON_IsObject(choice) && name != NULL && strlen(name) <= MOE_CHAT_NAME_MAX) {
		r->cr.tool_choice = MOE_TOOLS_NAMED;
		snprintf(r->cr.tool_name, sizeof r->cr.tool_name, "%s", name);
	} else
		return bad(r, "tool_choice",
		           "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": "
		           "\"function\", \"function\": {\"name\": ...}}");
	if ((r->cr.tool_choice == MOE_TOOLS_REQUIRED || r->cr.tool_choice == MOE_TOOLS_NAMED) &&
	    r->cr.tools == NULL)
		return bad(r, "tool_choice", "'tool_choice' asks for a call but 'tools' is empty");
	if (r->cr.tool_choice == MOE_TOOLS_NAMED && !moe_chat_tool_exists(r->cr.tools, name))
		return bad(r, "tool_choice", "'tool_choice' names a function that 'tools' lacks");
	return true;
}

/* "response_format": text, json_object or json_schema. */
static bool parse_response_format(api_req *r, const cJSON *root)
{
	const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
	if (rf == NULL || cJSON_IsNull(rf))
		return true;
	const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rf, "type"));
	if (!cJSON_IsObject(rf) || type == NULL)
		return bad(r, "response_format", "'response_format' must be {\"type\": ...}");
	if (strcmp(type, "text") == 0)
		return true;
	if (strcmp(type, "json_object") == 0) {
		r->cr.schema = cJSON_Parse("{\"type\": \"object\"}");
	} else if (strcmp(type, "json_schema") == 0) {
		const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
		const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
		if (!cJSON_IsObject(js) || !cJSON_IsObject(schema))
			return bad(
			    r, "response_format",
			    "'response_format.json_schema.schema' must be a JSON schema object");
		r->cr.schema = cJSON_Duplicate(schema, true);
		r->cr.schema_strict = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(js, "strict"));
	} else {
		return bad(r, "response_format",
		           "'response_format.type' must be text, json_object or json_schema");
	}
	return r->cr.schema != NULL || bad(r, NULL, "out of memory");
}

/* Everything of a chat body but the sampling: the conversation, tools,
 * template variables, reasoning, and its prompt. */
/* The conversation and what goes with it into the template: messages,
 * tools, response_format, chat_template_kwargs, reasoning_format,
 * add_generation_prompt (default true). */
static bool parse_chat_req(api_req *r, const cJSON *root)
{
	if (!parse_messages(r, root) || !parse_tools(r, root) || !parse_response_format(r, root))
		return false;
	const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
	if (kw != NULL && !cJSON_IsNull(kw)) {
		if (!cJSON_IsObject(kw))
			return bad(r, "chat_template_kwargs",
			           "'chat_template_kwargs' must be an object");
		if ((r->cr.kwargs = cJSON_Duplicate(kw, true)) == NULL)
			return bad(r, NULL, "out of memory");
	}
	const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "reasoning_format");
	if (rf != NULL && !cJSON_IsNull(rf) && !cJSON_IsString(rf))
		return bad(r, "reasoning_format", "'reasoning_format' must be a string");
	r->cr.reasoning = !(cJSON_IsString(rf) && strcmp(rf->valuestring, "none") == 0);
	const cJSON *agp = cJSON_GetObjectItemCaseSensitive(root, "add_generation_prompt");
	if (agp != NULL && !cJSON_IsNull(agp) && !cJSON_IsBool(agp))
		return bad(r, "add_generation_prompt", "'add_generation_prompt' must be a boolean");
	r->cr.add_generation_prompt = !cJSON_IsFalse(agp);
	return true;
}

/* A chat body: the conversation, its prompt and the constraint of its reply. */
static bool parse_chat(api_req *r, const cJSON *root, const moe_chat_template *t,
                       const moe_tokenizer *tok)
{
	if (!parse_chat_req(r, root))
		return false;
	char msg[256];
	if (moe_chat_prompt_make(&r->cp, t, tok, &r->cr) != MOE_OK) {
		snprintf(msg, sizeof msg, "the messages cannot be rendered: %s", moe_err_detail());
		return bad(r, "messages", msg);
	}
	if (moe_chat_constrain(&r->cp, moe_chat_template_grammars(t), &r->cr) != MOE_OK) {
		snprintf(msg, sizeof msg, "the reply cannot be held to it: %s", moe_err_detail());
		return bad(r, r->cr.schema != NULL ? "response_format" : "tools", msg);
	}
	r->gp.n_prompt = r->cp.n_ids;
	r->gp.prompt = r->cp.ids;
	memcpy(r->gp.end_ids, r->cp.end_ids, sizeof r->gp.end_ids);
	r->gp.n_end = r->cp.n_end;
	r->gp.special_text = r->cp.special_text;
	return true;
}

static bool parse_prompt(api_req *r, const cJSON *root, const moe_tokenizer *tok)
{
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
	if (p == NULL)
		return bad(r, "prompt", "'prompt' is required");
	if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child))
		p = p->child;
	if (!cJSON_IsString(p))
		return bad(r, "prompt", "'prompt' must be a string");
	size_t nt = 0;
	/* control tokens written in the prompt are those tokens, as llama.cpp's
	 * and vLLM's servers read a completion prompt (a chat rendered by the
	 * client, e.g. from /apply-template) */
	if (moe_tokenizer_encode(&r->prompt, &nt, tok, p->valuestring, strlen(p->valuestring),
	                         MOE_TOK_ENCODE_ADD_SPECIAL | MOE_TOK_ENCODE_SPECIAL) != MOE_OK)
		return bad(r, "prompt", "the prompt cannot be tokenized");
	r->gp.n_prompt = nt;
	r->gp.prompt = r->prompt;
	if (nt == 0)
		return bad(r, "prompt", "'prompt' is empty");
	const int32_t eos = moe_tokenizer_eos(tok);
	if (eos >= 0)
		r->gp.end_ids[r->gp.n_end++] = eos;
	return true;
}

static bool parse_stop(api_req *r, const cJSON *root)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stop");
	if (s == NULL || cJSON_IsNull(s))
		return true;
	if (cJSON_IsString(s)) {
		if (s->valuestring[0] == '\0' || strlen(s->valuestring) > 256 ||
		    !valid_utf8(s->valuestring))
			return bad(r, "stop", "'stop' strings must be 1-256 bytes of UTF-8");
		r->gp.stops[r->gp.n_stops++] = s->valuestring;
		return true;
	}
	if (!cJSON_IsArray(s) || cJSON_GetArraySize(s) > MOE_GEN_MAX_STOPS)
		return bad(r, "stop", "'stop' must be a string or an array of at most 8 strings");
	const cJSON *x;
	cJSON_ArrayForEach(x, s)
	{
		if (!cJSON_IsString(x) || x->valuestring[0] == '\0' ||
		    strlen(x->valuestring) > 256 || !valid_utf8(x->valuestring))
			return bad(r, "stop", "'stop' strings must be 1-256 bytes of UTF-8");
		r->gp.stops[r->gp.n_stops++] = x->valuestring;
	}
	return true;
}

/* Completions: "logprobs": N alternatives per token (0..20).  Chat:
 * "logprobs": true, with "top_logprobs": N alternatives (0..20, default 0). */
static bool parse_logprobs(api_req *r, const cJSON *root)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
	double n = -1, top = -1;
	r->gp.logprobs = -1;
	if (!r->chat) {
		if (cJSON_IsBool(v))
			return bad(r, "logprobs",
			           "'logprobs' of a completion is a number of alternatives: an "
			           "integer in [0, 20]");
		if (!get_num(r, &n, root, "logprobs", 0, MOE_GEN_MAX_TOP_LOGPROB, true))
			return false;
		r->gp.logprobs = (int)n;
		return true;
	}
	if (v != NULL && !cJSON_IsNull(v) && !cJSON_IsBool(v))
		return bad(r, "logprobs", "'logprobs' must be a boolean");
	if (!get_num(r, &top, root, "top_logprobs", 0, MOE_GEN_MAX_TOP_LOGPROB, true))
		return false;
	if (cJSON_IsTrue(v))
		r->gp.logprobs = top < 0 ? 0 : (int)top;
	else if (top >= 0)
		return bad(r, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
	return true;
}

/* Fills r from the body's JSON (root stays alive while r is used). */
static bool parse_request(api_req *r, const cJSON *root, const moe_chat_template *t,
                          const moe_tokenizer *tok, int n_ctx)
{
	if (!cJSON_IsObject(root))
		return bad(r, NULL, "the body must be a JSON object");
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (st != NULL && !cJSON_IsNull(st) && !cJSON_IsBool(st))
		return bad(r, "stream", "'stream' must be a boolean");
	r->stream = cJSON_IsTrue(st);
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (model != NULL && !cJSON_IsNull(model) && !cJSON_IsString(model))
		return bad(r, "model", "'model' must be a string");
	double n = 1;
	if (!get_num(r, &n, root, "n", 1, 1, true))
		return false;

	moe_sampler_params *sp = &r->gp.sp;
	moe_sampler_params_default(sp);
	/* OpenAI's defaults: temperature 1, top_p 1, nothing else */
	double temp = 1.0, top_p = 1.0, top_k = 0, min_p = 0, pp = 0, fp = 0, max_tok = -1;
	double seed = (double)(moe_now_ns() & ((1ull << 52) - 1));
	if (!get_num(r, &temp, root, "temperature", 0, 2, false) ||
	    !get_num(r, &top_p, root, "top_p", 0, 1, false) ||
	    !get_num(r, &top_k, root, "top_k", 0, 1 << 30, true) ||
	    !get_num(r, &min_p, root, "min_p", 0, 1, false) ||
	    !get_num(r, &pp, root, "presence_penalty", -2, 2, false) ||
	    !get_num(r, &fp, root, "frequency_penalty", -2, 2, false) ||
	    !get_num(r, &seed, root, "seed", 0, 9007199254740991.0, true) ||
	    !get_num(r, &max_tok, root, "max_completion_tokens", 1, 1 << 24, true) ||
	    !get_num(r, &max_tok, root, "max_tokens", 1, 1 << 24, true) || !parse_stop(r, root) ||
	    !parse_logprobs(r, root))
		return false;
	sp->temp = (float)temp;
	sp->top_p = (float)top_p;
	sp->top_k = (int)top_k;
	sp->min_p = (float)min_p;
	sp->presence_penalty = (float)pp;
	sp->frequency_penalty = (float)fp;
	sp->seed = (uint64_t)seed;

	if (!(r->chat ? parse_chat(r, root, t, tok) : parse_prompt(r, root, tok)))
		return false;
	if (max_tok < 0) {
		const long left = (long)n_ctx - (long)r->gp.n_prompt;
		max_tok = left < 1 ? 1 : left < 256 ? left : 256;
	}
	r->gp.max_tokens = (int)max_tok;
	return true;
}

/* ---- responses ---------------------------------------------------------------------- */

/* "length", "tool_calls" (the reply ended after n_calls > 0 calls) or "stop". */
static const char *finish_name(moe_gen_finish f, int n_calls)
{
	return f == MOE_GEN_LENGTH ? "length" : n_calls > 0 ? "tool_calls" : "stop";
}

static cJSON *usage_json(const moe_gen *g)
{
	int pt, ct;
	moe_gen_usage(g, &pt, &ct);
	cJSON *u = cJSON_CreateObject();
	cJSON_AddNumberToObject(u, "prompt_tokens", pt);
	cJSON_AddNumberToObject(u, "completion_tokens", ct);
	cJSON_AddNumberToObject(u, "total_tokens", pt + ct);
	cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
	cJSON_AddNumberToObject(d, "cached_tokens", moe_gen_cached_tokens(g));
	return u;
}

/* The frame of a response or chunk: id, object, created, model, choices[0]. */
static cJSON *frame(const moe_http *h, bool chat, bool chunk, uint64_t id, cJSON **choice)
{
	char sid[48];
	snprintf(sid, sizeof sid, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)id);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "id", sid);
	cJSON_AddStringToObject(j, "object",
	                        chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
	                             : "text_completion");
	cJSON_AddNumberToObject(j, "created", (double)time(NULL));
	cJSON_AddStringToObject(j, "model", moe_api_model_id(h));
	cJSON *arr = cJSON_AddArrayToObject(j, "choices");
	*choice = cJSON_CreateObject();
	cJSON_AddItemToArray(arr, *choice);
	cJSON_AddNumberToObject(*choice, "index", 0);
	return j;
}

/* ---- logprobs ---- */

/* Token id's text under key: its bytes as UTF-8, ill-formed ones as U+FFFD. */
static void add_token_text(cJSON *obj, const char *key, const moe_tokenizer *tok, int32_t id)
{
	size_t n = 0, sl = 0;
	const char *b = moe_tokenizer_token_bytes(tok, id, &n);
	char *t = NULL;
	if (b != NULL && moe_utf8_sanitize(&t, &sl, b, n) == MOE_OK)
		moe_api_add_text(obj, key, t, sl);
	else
		cJSON_AddStringToObject(obj, key, "");
	free(t);
}

/* Chat: {"token", "logprob", "bytes"} of id. */
static cJSON *chat_token(const moe_tokenizer *tok, int32_t id, float logprob)
{
	size_t n = 0;
	const char *b = moe_tokenizer_token_bytes(tok, id, &n);
	cJSON *o = cJSON_CreateObject();
	add_token_text(o, "token", tok, id);
	cJSON_AddNumberToObject(o, "logprob", logprob);
	cJSON *bytes = cJSON_AddArrayToObject(o, "bytes");
	for (size_t i = 0; b != NULL && i < n; i++)
		cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)b[i]));
	return o;
}

/* The "logprobs" object of records lp[0..n): chat {"content": [...]} or the
 * completions' parallel arrays (text_offset counted in the generated text;
 * top_logprobs maps token text to logprob, the sampled token included). */
static cJSON *logprobs_json(bool chat, const moe_tokenizer *tok, const moe_gen_logprob *lp,
                            size_t n)
{
	cJSON *j = cJSON_CreateObject();
	if (chat) {
		cJSON *content = cJSON_AddArrayToObject(j, "content");
		for (size_t i = 0; i < n; i++) {
			cJSON *o = chat_token(tok, lp[i].id, lp[i].logprob);
			cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
			for (int k = 0; k < lp[i].n_top; k++)
				cJSON_AddItemToArray(
				    top, chat_token(tok, lp[i].top_id[k], lp[i].top_logprob[k]));
			cJSON_AddItemToArray(content, o);
		}
		cJSON_AddNullToObject(j, "refusal");
		return j;
	}
	cJSON *tokens = cJSON_AddArrayToObject(j, "tokens");
	cJSON *lps = cJSON_AddArrayToObject(j, "token_logprobs");
	cJSON *tops = cJSON_AddArrayToObject(j, "top_logprobs");
	cJSON *offs = cJSON_AddArrayToObject(j, "text_offset");
	for (size_t i = 0; i < n; i++) {
		cJSON *tmp = cJSON_CreateObject();
		add_token_text(tmp, "t", tok, lp[i].id);
		const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tmp, "t"));
		cJSON_AddItemToArray(tokens, cJSON_CreateString(text != NULL ? text : ""));
		cJSON_AddItemToArray(lps, cJSON_CreateNumber(lp[i].logprob));
		cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)lp[i].offset));
		cJSON *top = cJSON_CreateObject();
		for (int k = 0; k <= lp[i].n_top; k++) {
			const int32_t id = k < lp[i].n_top ? lp[i].top_id[k] : lp[i].id;
			const float v = k < lp[i].n_top ? lp[i].top_logprob[k] : lp[i].logprob;
			cJSON *key = cJSON_CreateObject();
			add_token_text(key, "t", tok, id);
			const char *ks =
			    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(key, "t"));
			if (ks != NULL && cJSON_GetObjectItemCaseSensitive(top, ks) == NULL)
				cJSON_AddNumberToObject(top, ks,
				                        v); /* texts can repeat: first wins */
			cJSON_Delete(key);
		}
		cJSON_AddItemToArray(tops, top);
		cJSON_Delete(tmp);
	}
	return j;
}

/* Appends the records of g from *next on whose text starts before upto to
 * *lp / *n / *cap (grown with realloc).  False without memory. */
static bool take_logprobs(moe_gen *g, moe_gen_logprob **lp, size_t *n, size_t *cap, size_t *next,
                          size_t upto)
{
	for (;;) {
		if (*n == *cap) {
			size_t c = *cap ? 2 * *cap : 32;
			moe_gen_logprob *p = realloc(*lp, c * sizeof(*p));
			if (p == NULL)
				return false;
			*lp = p;
			*cap = c;
		}
		const size_t k = moe_gen_logprobs(g, *lp + *n, *cap - *n, next, upto);
		*n += k;
		if (*n < *cap)
			return true;
	}
}

/* The "logprobs" of a choice: the records lp[0..n), or null if not asked. */
static void add_logprobs(cJSON *choice, bool chat, const moe_tokenizer *tok, bool want,
                         const moe_gen_logprob *lp, size_t n)
{
	if (want)
		cJSON_AddItemToObject(choice, "logprobs", logprobs_json(chat, tok, lp, n));
	else
		cJSON_AddNullToObject(choice, "logprobs");
}

/* ---- a chat's reply: content, reasoning, tool calls ------------------------------ */

/* {"id", "type": "function", "function": {"name", "arguments"}}: a call whole
 * (args non-NULL) or the first delta of a streamed one (arguments ""). */
static cJSON *call_json(int index, const char *id, const char *name, const char *args,
                        size_t n_args, bool with_index)
{
	cJSON *o = cJSON_CreateObject();
	if (with_index)
		cJSON_AddNumberToObject(o, "index", index);
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "type", "function");
	cJSON *f = cJSON_AddObjectToObject(o, "function");
	cJSON_AddStringToObject(f, "name", name);
	moe_api_add_text(f, "arguments", args != NULL ? args : "", n_args);
	return o;
}

/* The whole reply collected from the parser's events. */
typedef struct collect {
	char *text[2]; /* [0] content, [1] reasoning */
	size_t len[2], cap[2];
	cJSON *calls; /* [call_json ...] */
	char *args;   /* of the call being read */
	size_t n_args, cap_args;
	char id[40], name[MOE_CHAT_NAME_MAX + 256];
	bool nomem;
} collect;

static bool on_collect(void *ctx, const moe_reply_event *ev)
{
	collect *c = ctx;
	switch (ev->kind) {
	case MOE_REPLY_CONTENT:
	case MOE_REPLY_REASONING: {
		const int k = ev->kind == MOE_REPLY_REASONING;
		c->nomem |= !moe_api_grow(&c->text[k], &c->len[k], &c->cap[k], ev->text, ev->len);
		break;
	}
	case MOE_REPLY_TOOL_BEGIN:
		moe_api_call_id(c->id, sizeof c->id, "call_");
		snprintf(c->name, sizeof c->name, "%s", ev->name);
		c->n_args = 0;
		break;
	case MOE_REPLY_TOOL_ARGS:
		c->nomem |= !moe_api_grow(&c->args, &c->n_args, &c->cap_args, ev->text, ev->len);
		break;
	case MOE_REPLY_TOOL_END:
		if (c->calls == NULL)
			c->calls = cJSON_CreateArray();
		c->nomem |= !cJSON_AddItemToArray(
		    c->calls, call_json(ev->index, c->id, c->name, c->args, c->n_args, false));
		break;
	}
	return !c->nomem;
}

static void collect_free(collect *c)
{
	free(c->text[0]);
	free(c->text[1]);
	free(c->args);
	cJSON_Delete(c->calls);
}

/* The assistant message of a whole chat reply read from text[0..len) as cp
 * says; *n_calls gets its tool calls.  NULL with the reason in why (a tool
 * call the parser cannot read, no memory). */
static cJSON *chat_message(const moe_chat_prompt *cp, const char *text, size_t len, bool cut,
                           int *n_calls, char *why, size_t size)
{
	collect c = {0};
	moe_reply_parser *p = NULL;
	cJSON *msg = NULL;
	moe_err err = moe_reply_parser_create(&p, &cp->reply);
	if (err == MOE_OK && cut)
		moe_reply_parser_truncated(p);
	if (err == MOE_OK)
		err = moe_reply_parser_feed(p, text, len, true, on_collect, &c);
	moe_reply_parser_destroy(p);
	if (err != MOE_OK || c.nomem) {
		snprintf(why, size, "the model's reply cannot be read: %s",
		         err != MOE_OK ? moe_err_detail() : "out of memory");
		goto out_free;
	}
	msg = cJSON_CreateObject();
	cJSON_AddStringToObject(msg, "role", "assistant");
	if (c.len[0] == 0 && c.calls != NULL)
		cJSON_AddNullToObject(msg, "content");
	else
		moe_api_add_text(msg, "content", c.text[0] != NULL ? c.text[0] : "", c.len[0]);
	if (c.len[1] > 0)
		moe_api_add_text(msg, "reasoning_content", c.text[1], c.len[1]);
	*n_calls = cJSON_GetArraySize(c.calls);
	if (c.calls != NULL) {
		cJSON_AddItemToObject(msg, "tool_calls", c.calls);
		c.calls = NULL;
	}
out_free:
	collect_free(&c);
	return msg;
}

/* ---- streamed responses ------------------------------------------------------------- */

typedef struct stream_ctx {
	moe_http *h;
	moe_engine *e;
	moe_gen *g;
	moe_http_req *rq; /* only while the transport pulls */
	bool chat;
	uint64_t id;
	char *out; /* SSE bytes not yet handed to the transport: [pos, len) */
	size_t len, cap, pos;
	char *text;
	size_t text_len, text_cap;
	int phase; /* 0 = start, 1 = generating, 2 = [DONE] queued */
	bool want_lp;
	const moe_tokenizer *tok;
	size_t text_total;   /* bytes of text received so far */
	size_t lp_next;      /* next record of g */
	moe_gen_logprob *lp; /* records for the next chunk */
	size_t n_lp, cap_lp;
	/* chat: the reply parser and the piece it has given but not yet sent */
	moe_reply_parser *rp;
	cJSON *tools;  /* the request's, for the parser (the request is gone) */
	int pend_kind; /* moe_reply_kind of pend, or -1 */
	int pend_index;
	char *pend;
	size_t n_pend, cap_pend;
	int n_calls;
	char call_id[40];
	bool nomem;
} stream_ctx;

static bool out_add(stream_ctx *s, const char *b, size_t n)
{
	return moe_api_grow(&s->out, &s->len, &s->cap, b, n);
}

/* Queues "data: JSON\n\n" and frees j. */
static bool out_event(stream_ctx *s, cJSON *j)
{
	char *t = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (t == NULL)
		return false;
	const bool ok =
	    out_add(s, "data: ", 6) && out_add(s, t, strlen(t)) && out_add(s, "\n\n", 2);
	cJSON_free(t);
	return ok;
}

/* A chunk: chat, the delta d (taken; NULL: an empty one); completions, text
 * (NULL: none).  The records taken so far go with it, and the finish. */
static cJSON *chunk_json(stream_ctx *s, cJSON *d, const char *text, size_t len, moe_gen_finish fin)
{
	cJSON *choice;
	cJSON *j = frame(s->h, s->chat, true, s->id, &choice);
	if (s->chat)
		cJSON_AddItemToObject(choice, "delta", d != NULL ? d : cJSON_CreateObject());
	else
		moe_api_add_text(choice, "text", text != NULL ? text : "", len);
	add_logprobs(choice, s->chat, s->tok, s->want_lp && s->n_lp > 0, s->lp, s->n_lp);
	s->n_lp = 0;
	if (fin != MOE_GEN_RUNNING) {
		cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin, s->n_calls));
		cJSON_AddItemToObject(j, "usage", usage_json(s->g));
	} else
		cJSON_AddNullToObject(choice, "finish_reason");
	return j;
}

/* Sends the pending piece as one chunk. */
static bool flush_pending(stream_ctx *s)
{
	if (s->pend_kind < 0)
		return true;
	cJSON *d = cJSON_CreateObject();
	if (s->pend_kind == MOE_REPLY_CONTENT) {
		moe_api_add_text(d, "content", s->pend, s->n_pend);
	} else if (s->pend_kind == MOE_REPLY_REASONING) {
		moe_api_add_text(d, "reasoning_content", s->pend, s->n_pend);
	} else {
		cJSON *arr = cJSON_AddArrayToObject(d, "tool_calls");
		cJSON *o = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, o);
		cJSON_AddNumberToObject(o, "index", s->pend_index);
		moe_api_add_text(cJSON_AddObjectToObject(o, "function"), "arguments", s->pend,
		                 s->n_pend);
	}
	s->pend_kind = -1;
	s->n_pend = 0;
	return out_event(s, chunk_json(s, d, NULL, 0, MOE_GEN_RUNNING));
}

/* The parser's events as chunks: consecutive pieces of one kind (one call's
 * arguments) are sent together when the kind changes or the pull ends. */
static bool on_stream_event(void *ctx, const moe_reply_event *ev)
{
	stream_ctx *s = ctx;
	if (ev->kind == MOE_REPLY_TOOL_END) {
		s->n_calls++;
		return flush_pending(s);
	}
	if (s->pend_kind != (int)ev->kind || s->pend_index != ev->index) {
		if (!flush_pending(s))
			return false;
	}
	if (ev->kind == MOE_REPLY_TOOL_BEGIN) {
		moe_api_call_id(s->call_id, sizeof s->call_id, "call_");
		cJSON *d = cJSON_CreateObject();
		cJSON *arr = cJSON_AddArrayToObject(d, "tool_calls");
		cJSON_AddItemToArray(arr, call_json(ev->index, s->call_id, ev->name, "", 0, true));
		return out_event(s, chunk_json(s, d, NULL, 0, MOE_GEN_RUNNING));
	}
	s->pend_kind = (int)ev->kind;
	s->pend_index = ev->index;
	return moe_api_grow(&s->pend, &s->n_pend, &s->cap_pend, ev->text, ev->len);
}

/* Queues an error event and the end of the stream. */
static bool out_error(stream_ctx *s, int code, const char *why)
{
	s->phase = 2;
	return out_event(s, moe_api_error_json(code, NULL, why)) &&
	       out_add(s, "data: [DONE]\n\n", 14);
}

/* The transport's pull (http.h): the next SSE bytes, waiting for text. */
static ssize_t stream_pull(void *ctx, char *buf, size_t max)
{
	stream_ctx *s = ctx;
	while (s->pos == s->len) {
		s->pos = s->len = 0;
		if (s->phase == 2)
			return 0;
		if (s->phase == 0) {
			s->phase = 1;
			if (s->chat) {
				cJSON *d = cJSON_CreateObject();
				cJSON_AddStringToObject(d, "role", "assistant");
				cJSON_AddStringToObject(d, "content", "");
				if (!out_event(s, chunk_json(s, d, NULL, 0, MOE_GEN_RUNNING)))
					return -1;
			}
			continue;
		}
		s->text_len = 0;
		const moe_gen_finish fin =
		    moe_gen_wait(s->g, &s->text, &s->text_len, &s->text_cap, WAIT_MS);
		s->text_total += s->text_len;
		if (s->want_lp && !take_logprobs(s->g, &s->lp, &s->n_lp, &s->cap_lp, &s->lp_next,
		                                 fin == MOE_GEN_RUNNING ? s->text_total : SIZE_MAX))
			return -1;
		const bool done = fin != MOE_GEN_RUNNING;
		if (s->chat && (s->text_len > 0 || done)) {
			if (fin == MOE_GEN_LENGTH)
				moe_reply_parser_truncated(s->rp);
			const moe_err err = moe_reply_parser_feed(s->rp, s->text, s->text_len, done,
			                                          on_stream_event, s);
			if (err == MOE_ERR_FORMAT) {
				char why[400];
				snprintf(why, sizeof why, "the model's reply cannot be read: %s",
				         moe_err_detail());
				if (!out_error(s, 500, why))
					return -1;
				continue;
			}
			if (err != MOE_OK || !flush_pending(s))
				return -1;
		} else if (!s->chat && s->text_len > 0 &&
		           !out_event(s,
		                      chunk_json(s, NULL, s->text, s->text_len, MOE_GEN_RUNNING))) {
			return -1;
		}
		if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
			char why[300];
			const int code = moe_api_failure(s->e, why, sizeof why);
			if (!out_error(s, code, why))
				return -1;
		} else if (done) {
			if (!out_event(s, chunk_json(s, NULL, NULL, 0, fin)) ||
			    !out_add(s, "data: [DONE]\n\n", 14))
				return -1;
			s->phase = 2;
		} else if (s->text_len == 0 && moe_http_req_client_gone(s->rq)) {
			moe_gen_cancel(s->g);
			return -1;
		}
	}
	const size_t n = s->len - s->pos < max ? s->len - s->pos : max;
	memcpy(buf, s->out + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static void stream_release(void *ctx)
{
	stream_ctx *s = ctx;
	moe_gen_release(s->g); /* cancels it if the client left early */
	moe_reply_parser_destroy(s->rp);
	cJSON_Delete(s->tools);
	free(s->out);
	free(s->text);
	free(s->lp);
	free(s->pend);
	free(s);
}

/* Answers with the events of g as they come; takes g.  cp: how to read a
 * chat's reply (NULL for completions). */
static void answer_stream(moe_http *h, moe_http_req *rq, moe_engine *e, const moe_tokenizer *tok,
                          moe_gen *g, const moe_chat_prompt *cp, uint64_t id, bool want_lp)
{
	static const moe_http_header no_cache = {"Cache-Control", "no-cache"};
	stream_ctx *s = calloc(1, sizeof *s);
	moe_reply_parser *rp = NULL;
	cJSON *tools = NULL;
	if (s != NULL && cp != NULL) {
		moe_reply_opts o = cp->reply;
		o.tools = tools = o.tools != NULL ? cJSON_Duplicate(o.tools, true) : NULL;
		if ((cp->reply.tools != NULL && tools == NULL) ||
		    moe_reply_parser_create(&rp, &o) != MOE_OK) {
			cJSON_Delete(tools);
			free(s);
			s = NULL;
		}
	}
	if (s == NULL) {
		moe_gen_release(g);
		moe_api_send_error(rq, 500, NULL, "out of memory");
		return;
	}
	*s = (stream_ctx){.h = h,
	                  .e = e,
	                  .g = g,
	                  .rq = rq,
	                  .chat = cp != NULL,
	                  .id = id,
	                  .want_lp = want_lp,
	                  .tok = tok,
	                  .rp = rp,
	                  .tools = tools,
	                  .pend_kind = -1};
	moe_http_reply_stream(rq, 200, "text/event-stream", &no_cache, 1, stream_pull,
	                      stream_release, s);
}

/* ---- whole responses ------------------------------------------------------------------ */

/* Answers once g has finished (a closed connection if the client left
 * first); takes g.  cp: how to read a chat's reply (NULL for completions). */
static void answer_whole(moe_http *h, moe_http_req *rq, moe_engine *e, const moe_tokenizer *tok,
                         moe_gen *g, const moe_chat_prompt *cp, uint64_t id, bool want_lp)
{
	char *text = NULL;
	size_t len = 0, cap = 0;
	moe_gen_logprob *lp = NULL;
	size_t n_lp = 0, cap_lp = 0, lp_next = 0;
	moe_gen_finish fin;
	while ((fin = moe_gen_wait(g, &text, &len, &cap, WAIT_MS)) == MOE_GEN_RUNNING)
		if (moe_http_req_client_gone(rq))
			break;
	int code = 200, n_calls = 0;
	char why[400];
	cJSON *j = NULL, *msg = NULL;
	if (fin == MOE_GEN_RUNNING) {
		code = 0; /* the client left: no reply */
	} else if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
		code = moe_api_failure(e, why, sizeof why);
		j = moe_api_error_json(code, NULL, why);
	} else if (want_lp && !take_logprobs(g, &lp, &n_lp, &cap_lp, &lp_next, SIZE_MAX)) {
		code = 500;
		j = moe_api_error_json(code, NULL, "out of memory");
	} else if (cp != NULL &&
	           (msg = chat_message(cp, text != NULL ? text : "", len, fin == MOE_GEN_LENGTH,
	                               &n_calls, why, sizeof why)) == NULL) {
		code = 500;
		j = moe_api_error_json(code, NULL, why);
	} else {
		cJSON *choice;
		j = frame(h, cp != NULL, false, id, &choice);
		if (cp != NULL)
			cJSON_AddItemToObject(choice, "message", msg);
		else
			moe_api_add_text(choice, "text", text != NULL ? text : "", len);
		add_logprobs(choice, cp != NULL, tok, want_lp, lp, n_lp);
		cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin, n_calls));
		cJSON_AddItemToObject(j, "usage", usage_json(g));
	}
	moe_gen_release(g);
	free(text);
	free(lp);
	if (code == 0)
		moe_http_close(rq);
	else
		moe_api_send_json(rq, code, j);
}

/* ---- routes ------------------------------------------------------------------------------ */

/* Parses the body of rq, submits it and answers (chat: messages, else a
 * prompt). */
static void generate(moe_http *h, moe_http_req *rq, bool chat)
{
	moe_engine *e;
	const moe_tokenizer *tok;
	(void)moe_api_engine(h, &e, &tok); /* set: api.c checked readiness */
	size_t len;
	const char *body = moe_http_req_body(rq, &len);
	cJSON *root = cJSON_ParseWithLength(body, len);
	if (root == NULL) {
		moe_api_send_error(rq, 400, NULL, "the body is not valid JSON");
		return;
	}
	api_req r = {.chat = chat};
	if (!parse_request(&r, root, moe_api_template(h), tok, moe_engine_n_ctx(e))) {
		moe_api_send_error(rq, 400, r.err_param, r.err);
		goto out_free_req;
	}
	moe_gen *g = NULL;
	r.gp.grammar = moe_chat_gen_grammar(&r.cp);
	const moe_err err = moe_engine_submit(&g, e, &r.gp);
	if (err != MOE_OK) {
		moe_chat_grammar_release(r.gp.grammar.release_ctx);
		const int code = moe_api_submit_status(err);
		moe_api_send_error(rq, code,
		                   err == MOE_ERR_BAD_VALUE ? "max_tokens"
		                   : code == 400            ? (chat ? "messages" : "prompt")
		                                            : NULL,
		                   moe_err_detail());
		goto out_free_req;
	}
	const uint64_t id = moe_api_next_id(h);
	if (r.stream)
		answer_stream(h, rq, e, tok, g, chat ? &r.cp : NULL, id, r.gp.logprobs >= 0);
	else
		answer_whole(h, rq, e, tok, g, chat ? &r.cp : NULL, id, r.gp.logprobs >= 0);

out_free_req:
	free(r.prompt);
	moe_chat_prompt_free(&r.cp);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
}

void moe_api_openai_chat(moe_http *h, moe_http_req *r)
{
	generate(h, r, true);
}

void moe_api_openai_completions(moe_http *h, moe_http_req *r)
{
	generate(h, r, false);
}

void moe_api_apply_template(moe_http *h, moe_http_req *rq)
{
	size_t len;
	const char *body = moe_http_req_body(rq, &len);
	cJSON *root = cJSON_ParseWithLength(body, len);
	api_req r = {.chat = true};
	char *text = NULL;
	size_t n = 0;
	if (root == NULL) {
		moe_api_send_error(rq, 400, NULL, "the body is not valid JSON");
		return;
	}
	if (!cJSON_IsObject(root)) {
		moe_api_send_error(rq, 400, NULL, "the body must be a JSON object");
	} else if (!parse_chat_req(&r, root)) {
		moe_api_send_error(rq, 400, r.err_param, r.err);
	} else if (moe_chat_render(&text, &n, moe_api_template(h), &r.cr) != MOE_OK) {
		moe_api_send_error(rq, 400, "messages", moe_err_detail());
	} else {
		cJSON *j = cJSON_CreateObject();
		moe_api_add_text(j, "prompt", text, n);
		moe_api_send_json(rq, 200, j);
	}
	free(text);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
}

void moe_api_openai_models(moe_http *h, moe_http_req *r)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "object", "list");
	cJSON *d = cJSON_AddArrayToObject(j, "data");
	cJSON *m = cJSON_CreateObject();
	cJSON_AddItemToArray(d, m);
	cJSON_AddStringToObject(m, "id", moe_api_model_id(h));
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", 0);
	cJSON_AddStringToObject(m, "owned_by", "moemesh");
	moe_api_send_json(r, 200, j);
}

int moe_api_openai_check(const char *body, size_t len, bool chat, const moe_chat_template *t,
                         const moe_tokenizer *tok, int n_ctx, char *why, size_t size)
{
	cJSON *root = cJSON_ParseWithLength(body, len);
	api_req r = {.chat = chat};
	int code = 0;
	if (root == NULL) {
		snprintf(why, size, "the body is not valid JSON");
		return 400;
	}
	if (!parse_request(&r, root, t, tok, n_ctx)) {
		snprintf(why, size, "%s%s%s", r.err_param ? r.err_param : "",
		         r.err_param ? ": " : "", r.err);
		code = 400;
	}
	free(r.prompt);
	moe_chat_prompt_free(&r.cp);
	moe_chat_req_free(&r.cr);
	cJSON_Delete(root);
	return code;
}
