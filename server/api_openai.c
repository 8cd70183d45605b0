/* api_openai.c - OpenAI's API on the API layer of api.c: /v1/chat/completions
 * and /v1/completions (parsing and validating the body into a moe_gen_params,
 * the response whole or streamed as server-sent events, logprobs, cancelling
 * the request of a client that left) and /v1/models. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/api.h"

#define WAIT_MS 50 /* longest wait for text between two looks at the client */

/* ---- request parsing ------------------------------------------------------------- */

typedef struct api_req {
	bool chat, stream;
	moe_gen_params gp;
	int32_t *prompt;
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

/* Text of a message's content: a string, null, or an array of
 * {"type": "text", "text": ...} parts (concatenated into *own). */
static bool content_text(api_req *r, const char **out, char **own, const cJSON *v)
{
	if (v == NULL || cJSON_IsNull(v)) {
		*out = "";
		return true;
	}
	if (cJSON_IsString(v)) {
		*out = v->valuestring;
		return true;
	}
	if (!cJSON_IsArray(v))
		return bad(r, "messages",
		           "'messages[].content' must be a string or an array of "
		           "text parts");
	size_t n = 1;
	const cJSON *p;
	cJSON_ArrayForEach(p, v)
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
		if (!cJSON_IsObject(p) || !cJSON_IsString(t))
			return bad(
			    r, "messages",
			    "'messages[].content[]' parts must be objects with a 'text' string");
		n += strlen(t->valuestring);
	}
	char *s = malloc(n);
	if (s == NULL)
		return bad(r, NULL, "out of memory");
	s[0] = '\0';
	cJSON_ArrayForEach(p, v)
	    strcat(s, cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring);
	*own = s;
	*out = s;
	return true;
}

static bool parse_messages(api_req *r, const cJSON *root, const moe_tokenizer *tok)
{
	const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
	if (ms == NULL)
		return bad(r, "messages", "'messages' is required");
	if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) < 1)
		return bad(r, "messages", "'messages' must be a non-empty array");
	const int n = cJSON_GetArraySize(ms);
	if (n > 4096)
		return bad(r, "messages", "'messages' has more than 4096 entries");
	moe_chat_msg *msgs = calloc((size_t)n, sizeof *msgs);
	char **own = calloc((size_t)n, sizeof *own);
	bool ok = msgs != NULL && own != NULL;
	if (!ok)
		bad(r, NULL, "out of memory");
	int i = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, ms)
	{
		if (!ok)
			break;
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
			ok =
			    bad(r, "messages", "'messages[]' must be objects with a 'role' string");
			break;
		}
		const char *rs = role->valuestring;
		if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
		    strcmp(rs, "developer") && strcmp(rs, "tool")) {
			ok = bad(
			    r, "messages",
			    "'messages[].role' must be system, developer, user, assistant or tool");
			break;
		}
		msgs[i].role = rs;
		ok = content_text(r, &msgs[i].content, &own[i],
		                  cJSON_GetObjectItemCaseSensitive(m, "content"));
		i++;
	}
	if (ok) {
		size_t nt = 0;
		if (moe_chat_tokens(&r->prompt, &nt, tok, msgs, n) != MOE_OK)
			ok = bad(r, "messages", "the messages cannot be tokenized");
		r->gp.n_prompt = nt;
	}
	for (int k = 0; own != NULL && k < n; k++)
		free(own[k]);
	free(own);
	free(msgs);
	return ok;
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
	if (moe_tokenizer_encode(&r->prompt, &nt, tok, p->valuestring, strlen(p->valuestring),
	                         MOE_TOK_ENCODE_ADD_SPECIAL) != MOE_OK)
		return bad(r, "prompt", "the prompt cannot be tokenized");
	r->gp.n_prompt = nt;
	if (nt == 0)
		return bad(r, "prompt", "'prompt' is empty");
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
static bool parse_request(api_req *r, const cJSON *root, const moe_tokenizer *tok, int n_ctx)
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

	if (!(r->chat ? parse_messages(r, root, tok) : parse_prompt(r, root, tok)))
		return false;
	r->gp.prompt = r->prompt;
	if (max_tok < 0) {
		const long left = (long)n_ctx - (long)r->gp.n_prompt;
		max_tok = left < 1 ? 1 : left < 256 ? left : 256;
	}
	r->gp.max_tokens = (int)max_tok;
	const int32_t eos = moe_tokenizer_eos(tok);
	if (eos >= 0)
		r->gp.end_ids[r->gp.n_end++] = eos;
	const int32_t im_end = moe_chat_end_id(tok);
	if (r->chat && im_end >= 0 && im_end != eos)
		r->gp.end_ids[r->gp.n_end++] = im_end;
	return true;
}

/* ---- responses ---------------------------------------------------------------------- */

static const char *finish_name(moe_gen_finish f)
{
	return f == MOE_GEN_LENGTH ? "length" : "stop";
}

static cJSON *usage_json(const moe_gen *g)
{
	int pt, ct;
	moe_gen_usage(g, &pt, &ct);
	cJSON *u = cJSON_CreateObject();
	cJSON_AddNumberToObject(u, "prompt_tokens", pt);
	cJSON_AddNumberToObject(u, "completion_tokens", ct);
	cJSON_AddNumberToObject(u, "total_tokens", pt + ct);
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
	moe_gen_logprob *lp; /* records for the chunk being built */
	size_t n_lp, cap_lp;
} stream_ctx;

static bool out_add(stream_ctx *s, const char *b, size_t n)
{
	if (s->len + n > s->cap) {
		size_t c = s->cap ? s->cap : 1024;
		while (c < s->len + n)
			c *= 2;
		char *p = realloc(s->out, c);
		if (p == NULL)
			return false;
		s->out = p;
		s->cap = c;
	}
	memcpy(s->out + s->len, b, n);
	s->len += n;
	return true;
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

/* A chunk with text (may be NULL: none), role (first chat chunk) and finish. */
static cJSON *chunk_json(stream_ctx *s, const char *text, size_t len, bool role, moe_gen_finish fin)
{
	cJSON *choice;
	cJSON *j = frame(s->h, s->chat, true, s->id, &choice);
	if (s->chat) {
		cJSON *d = cJSON_AddObjectToObject(choice, "delta");
		if (role)
			cJSON_AddStringToObject(d, "role", "assistant");
		if (text != NULL)
			moe_api_add_text(d, "content", text, len);
	} else {
		moe_api_add_text(choice, "text", text != NULL ? text : "", len);
	}
	add_logprobs(choice, s->chat, s->tok, s->want_lp && s->n_lp > 0, s->lp, s->n_lp);
	s->n_lp = 0;
	if (fin != MOE_GEN_RUNNING) {
		cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin));
		cJSON_AddItemToObject(j, "usage", usage_json(s->g));
	} else
		cJSON_AddNullToObject(choice, "finish_reason");
	return j;
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
			if (s->chat && !out_event(s, chunk_json(s, "", 0, true, MOE_GEN_RUNNING)))
				return -1;
			continue;
		}
		s->text_len = 0;
		const moe_gen_finish fin =
		    moe_gen_wait(s->g, &s->text, &s->text_len, &s->text_cap, WAIT_MS);
		s->text_total += s->text_len;
		if (s->want_lp && !take_logprobs(s->g, &s->lp, &s->n_lp, &s->cap_lp, &s->lp_next,
		                                 fin == MOE_GEN_RUNNING ? s->text_total : SIZE_MAX))
			return -1;
		if (s->text_len > 0 &&
		    !out_event(s, chunk_json(s, s->text, s->text_len, false, MOE_GEN_RUNNING)))
			return -1;
		if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
			char why[300];
			const int code = moe_api_failure(s->e, why, sizeof why);
			if (!out_event(s, moe_api_error_json(code, NULL, why)) ||
			    !out_add(s, "data: [DONE]\n\n", 14))
				return -1;
			s->phase = 2;
		} else if (fin != MOE_GEN_RUNNING) {
			if (!out_event(s, chunk_json(s, NULL, 0, false, fin)) ||
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
	free(s->out);
	free(s->text);
	free(s->lp);
	free(s);
}

/* Answers with the events of g as they come; takes g. */
static void answer_stream(moe_http *h, moe_http_req *rq, moe_engine *e, const moe_tokenizer *tok,
                          moe_gen *g, bool chat, uint64_t id, bool want_lp)
{
	static const moe_http_header no_cache = {"Cache-Control", "no-cache"};
	stream_ctx *s = calloc(1, sizeof *s);
	if (s == NULL) {
		moe_gen_release(g);
		moe_api_send_error(rq, 500, NULL, "out of memory");
		return;
	}
	*s = (stream_ctx){.h = h,
	                  .e = e,
	                  .g = g,
	                  .rq = rq,
	                  .chat = chat,
	                  .id = id,
	                  .want_lp = want_lp,
	                  .tok = tok};
	moe_http_reply_stream(rq, 200, "text/event-stream", &no_cache, 1, stream_pull,
	                      stream_release, s);
}

/* ---- whole responses ------------------------------------------------------------------ */

/* Answers once g has finished (a closed connection if the client left
 * first); takes g. */
static void answer_whole(moe_http *h, moe_http_req *rq, moe_engine *e, const moe_tokenizer *tok,
                         moe_gen *g, bool chat, uint64_t id, bool want_lp)
{
	char *text = NULL;
	size_t len = 0, cap = 0;
	moe_gen_logprob *lp = NULL;
	size_t n_lp = 0, cap_lp = 0, lp_next = 0;
	moe_gen_finish fin;
	while ((fin = moe_gen_wait(g, &text, &len, &cap, WAIT_MS)) == MOE_GEN_RUNNING)
		if (moe_http_req_client_gone(rq))
			break;
	int code = 200;
	cJSON *j = NULL;
	if (fin == MOE_GEN_RUNNING) {
		code = 0; /* the client left: no reply */
	} else if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
		char why[300];
		code = moe_api_failure(e, why, sizeof why);
		j = moe_api_error_json(code, NULL, why);
	} else if (want_lp && !take_logprobs(g, &lp, &n_lp, &cap_lp, &lp_next, SIZE_MAX)) {
		code = 500;
		j = moe_api_error_json(code, NULL, "out of memory");
	} else {
		cJSON *choice;
		j = frame(h, chat, false, id, &choice);
		if (chat) {
			cJSON *msg = cJSON_AddObjectToObject(choice, "message");
			cJSON_AddStringToObject(msg, "role", "assistant");
			moe_api_add_text(msg, "content", text != NULL ? text : "", len);
		} else {
			moe_api_add_text(choice, "text", text != NULL ? text : "", len);
		}
		add_logprobs(choice, chat, tok, want_lp, lp, n_lp);
		cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin));
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
	if (!parse_request(&r, root, tok, moe_engine_n_ctx(e))) {
		moe_api_send_error(rq, 400, r.err_param, r.err);
		goto out_free_req;
	}
	moe_gen *g = NULL;
	const moe_err err = moe_engine_submit(&g, e, &r.gp);
	if (err != MOE_OK) {
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
		answer_stream(h, rq, e, tok, g, chat, id, r.gp.logprobs >= 0);
	else
		answer_whole(h, rq, e, tok, g, chat, id, r.gp.logprobs >= 0);

out_free_req:
	free(r.prompt);
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
