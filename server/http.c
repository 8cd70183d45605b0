/* http.c - the OpenAI-compatible HTTP API of `moemesh serve` on
 * libmicrohttpd (one thread per connection: a handler may block while its
 * request generates, and polls its socket to notice a client that left). */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "server/server.h"

#define WAIT_MS 50

/* status codes counted in /metrics */
static const int counted[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
#define N_COUNTED ((int)(sizeof counted / sizeof counted[0]))

struct moe_http {
	struct MHD_Daemon *d;
	moe_http_opts o;
	char *api_key, *model_id;
	int port;
	pthread_mutex_t mu;
	moe_engine *e; /* NULL until ready */
	const moe_tokenizer *tok;
	char status[64], reason[256];
	_Atomic uint64_t by_status[N_COUNTED + 1]; /* last: other codes */
	_Atomic uint64_t next_id;
};

/* Per-connection request state (MHD's con_cls). */
typedef struct req_ctx {
	char *body;
	size_t len, cap;
	bool too_big;
} req_ctx;

static void count_status(moe_http *h, int code)
{
	int i = 0;
	while (i < N_COUNTED && counted[i] != code)
		i++;
	atomic_fetch_add_explicit(&h->by_status[i], 1, memory_order_relaxed);
}

static enum MHD_Result send_buf(moe_http *h, struct MHD_Connection *c, int code, const char *type,
                                const char *buf, size_t len)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(len, (void *)buf, MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	enum MHD_Result ret = MHD_queue_response(c, (unsigned)code, r);
	MHD_destroy_response(r);
	count_status(h, code);
	return ret;
}

static enum MHD_Result send_json(moe_http *h, struct MHD_Connection *c, int code, cJSON *j)
{
	char *s = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (s == NULL)
		return send_buf(
		    h, c, 500, "application/json",
		    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
		    "\"param\":null,\"code\":null}}",
		    86);
	enum MHD_Result ret = send_buf(h, c, code, "application/json", s, strlen(s));
	cJSON_free(s);
	return ret;
}

static const char *err_type(int code)
{
	switch (code) {
	case 401:
		return "authentication_error";
	case 404:
		return "not_found_error";
	case 429:
		return "rate_limit_error";
	case 500:
	case 503:
		return "server_error";
	default:
		return "invalid_request_error";
	}
}

/* Adds text (len bytes, valid UTF-8 but possibly with NUL bytes, which a C
 * string cannot carry) as a JSON string; NUL becomes U+FFFD. */
static void add_text(cJSON *obj, const char *key, const char *text, size_t len)
{
	if (memchr(text, '\0', len) == NULL) {
		cJSON_AddStringToObject(obj, key, text);
		return;
	}
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += text[i] == '\0' ? 3 : 1;
	char *s = malloc(n + 1);
	if (s == NULL) {
		cJSON_AddStringToObject(obj, key, "");
		return;
	}
	size_t k = 0;
	for (size_t i = 0; i < len; i++) {
		if (text[i] == '\0') {
			memcpy(s + k, "\xef\xbf\xbd", 3);
			k += 3;
		} else
			s[k++] = text[i];
	}
	s[k] = '\0';
	cJSON_AddStringToObject(obj, key, s);
	free(s);
}

/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. */
static cJSON *error_json(int code, const char *param, const char *msg)
{
	cJSON *j = cJSON_CreateObject();
	cJSON *e = cJSON_AddObjectToObject(j, "error");
	if (e == NULL) {
		cJSON_Delete(j);
		return NULL;
	}
	cJSON_AddStringToObject(e, "message", msg);
	cJSON_AddStringToObject(e, "type", err_type(code));
	if (param != NULL)
		cJSON_AddStringToObject(e, "param", param);
	else
		cJSON_AddNullToObject(e, "param");
	cJSON_AddNullToObject(e, "code");
	return j;
}

/* Why a generation failed: 503 with the engine's reason when the experts
 * cannot be reached (the cluster cannot serve), else 500. */
static int failure(moe_engine *e, char *why, size_t size)
{
	char reason[256];
	if (e != NULL && !moe_engine_healthy(e, reason, sizeof reason)) {
		snprintf(why, size, "the cluster cannot serve: %s", reason);
		return 503;
	}
	snprintf(why, size, "generation failed");
	return 500;
}

static enum MHD_Result send_error(moe_http *h, struct MHD_Connection *c, int code,
                                  const char *param, const char *msg)
{
	return send_json(h, c, code, error_json(code, param, msg));
}

/* True if the client closed its end. */
static bool client_gone(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (ci == NULL)
		return true;
	struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

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
	cJSON_AddStringToObject(j, "model", h->model_id);
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
		add_text(obj, key, t, sl);
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

typedef struct stream_ctx {
	moe_http *h;
	moe_gen *g;
	struct MHD_Connection *conn;
	bool chat;
	uint64_t id;
	char *out; /* SSE bytes not yet handed to MHD: [pos, len) */
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
			add_text(d, "content", text, len);
	} else {
		add_text(choice, "text", text != NULL ? text : "", len);
	}
	if (s->want_lp && s->n_lp > 0)
		cJSON_AddItemToObject(choice, "logprobs",
		                      logprobs_json(s->chat, s->tok, s->lp, s->n_lp));
	else
		cJSON_AddNullToObject(choice, "logprobs");
	s->n_lp = 0;
	if (fin != MOE_GEN_RUNNING) {
		cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin));
		cJSON_AddItemToObject(j, "usage", usage_json(s->g));
	} else
		cJSON_AddNullToObject(choice, "finish_reason");
	return j;
}

static ssize_t stream_read(void *cls, uint64_t at, char *buf, size_t max)
{
	(void)at;
	stream_ctx *s = cls;
	while (s->pos == s->len) {
		s->pos = s->len = 0;
		if (s->phase == 2)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (s->phase == 0) {
			s->phase = 1;
			if (s->chat && !out_event(s, chunk_json(s, "", 0, true, MOE_GEN_RUNNING)))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			continue;
		}
		s->text_len = 0;
		const moe_gen_finish fin =
		    moe_gen_wait(s->g, &s->text, &s->text_len, &s->text_cap, WAIT_MS);
		s->text_total += s->text_len;
		if (s->want_lp && !take_logprobs(s->g, &s->lp, &s->n_lp, &s->cap_lp, &s->lp_next,
		                                 fin == MOE_GEN_RUNNING ? s->text_total : SIZE_MAX))
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (s->text_len > 0 &&
		    !out_event(s, chunk_json(s, s->text, s->text_len, false, MOE_GEN_RUNNING)))
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
			char why[300];
			const int code = failure(s->h->e, why, sizeof why);
			if (!out_event(s, error_json(code, NULL, why)) ||
			    !out_add(s, "data: [DONE]\n\n", 14))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			s->phase = 2;
		} else if (fin != MOE_GEN_RUNNING) {
			if (!out_event(s, chunk_json(s, NULL, 0, false, fin)) ||
			    !out_add(s, "data: [DONE]\n\n", 14))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			s->phase = 2;
		} else if (s->text_len == 0 && client_gone(s->conn)) {
			moe_gen_cancel(s->g);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
	const size_t n = s->len - s->pos < max ? s->len - s->pos : max;
	memcpy(buf, s->out + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static void stream_free(void *cls)
{
	stream_ctx *s = cls;
	moe_gen_release(s->g); /* cancels it if the client left early */
	free(s->out);
	free(s->text);
	free(s->lp);
	free(s);
}

static enum MHD_Result generate(moe_http *h, struct MHD_Connection *c, req_ctx *rc, bool chat)
{
	pthread_mutex_lock(&h->mu);
	moe_engine *e = h->e;
	const moe_tokenizer *tok = h->tok;
	pthread_mutex_unlock(&h->mu);

	cJSON *root = cJSON_ParseWithLength(rc->body != NULL ? rc->body : "", rc->len);
	if (root == NULL)
		return send_error(h, c, 400, NULL, "the body is not valid JSON");
	api_req r = {.chat = chat};
	enum MHD_Result ret;
	if (!parse_request(&r, root, tok, moe_engine_n_ctx(e))) {
		ret = send_error(h, c, 400, r.err_param, r.err);
		goto out_free;
	}
	moe_gen *g = NULL;
	moe_err err = moe_engine_submit(&g, e, &r.gp);
	if (err != MOE_OK) {
		const int code = err == MOE_ERR_BUSY    ? 429
		                 : err == MOE_ERR_STATE ? 503
		                 : err == MOE_ERR_NOMEM ? 500
		                                        : 400;
		ret = send_error(h, c, code,
		                 err == MOE_ERR_BAD_VALUE ? "max_tokens"
		                 : code == 400            ? (chat ? "messages" : "prompt")
		                                          : NULL,
		                 moe_err_detail());
		goto out_free;
	}
	const uint64_t id = atomic_fetch_add(&h->next_id, 1);

	if (r.stream) {
		stream_ctx *s = calloc(1, sizeof *s);
		if (s == NULL) {
			moe_gen_release(g);
			ret = send_error(h, c, 500, NULL, "out of memory");
			goto out_free;
		}
		*s = (stream_ctx){.h = h,
		                  .g = g,
		                  .conn = c,
		                  .chat = chat,
		                  .id = id,
		                  .want_lp = r.gp.logprobs >= 0,
		                  .tok = tok};
		struct MHD_Response *resp = MHD_create_response_from_callback(
		    MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
		if (resp == NULL) {
			stream_free(s);
			ret = MHD_NO;
			goto out_free;
		}
		MHD_add_response_header(resp, "Content-Type", "text/event-stream");
		MHD_add_response_header(resp, "Cache-Control", "no-cache");
		ret = MHD_queue_response(c, 200, resp);
		MHD_destroy_response(resp);
		count_status(h, 200);
		goto out_free;
	}

	char *text = NULL;
	size_t len = 0, cap = 0;
	moe_gen_finish fin;
	while ((fin = moe_gen_wait(g, &text, &len, &cap, WAIT_MS)) == MOE_GEN_RUNNING) {
		if (client_gone(c)) {
			moe_gen_release(g);
			free(text);
			ret = MHD_NO; /* closes the connection */
			goto out_free;
		}
	}
	if (fin == MOE_GEN_ERROR || fin == MOE_GEN_CANCELLED) {
		char why[300];
		const int code = failure(e, why, sizeof why);
		moe_gen_release(g);
		free(text);
		ret = send_error(h, c, code, NULL, why);
		goto out_free;
	}
	moe_gen_logprob *lp = NULL;
	size_t n_lp = 0, cap_lp = 0, lp_next = 0;
	if (r.gp.logprobs >= 0 && !take_logprobs(g, &lp, &n_lp, &cap_lp, &lp_next, SIZE_MAX)) {
		moe_gen_release(g);
		free(text);
		free(lp);
		ret = send_error(h, c, 500, NULL, "out of memory");
		goto out_free;
	}
	cJSON *choice;
	cJSON *j = frame(h, chat, false, id, &choice);
	if (chat) {
		cJSON *msg = cJSON_AddObjectToObject(choice, "message");
		cJSON_AddStringToObject(msg, "role", "assistant");
		add_text(msg, "content", text != NULL ? text : "", len);
	} else {
		add_text(choice, "text", text != NULL ? text : "", len);
	}
	if (r.gp.logprobs >= 0)
		cJSON_AddItemToObject(choice, "logprobs", logprobs_json(chat, tok, lp, n_lp));
	else
		cJSON_AddNullToObject(choice, "logprobs");
	free(lp);
	cJSON_AddStringToObject(choice, "finish_reason", finish_name(fin));
	cJSON_AddItemToObject(j, "usage", usage_json(g));
	moe_gen_release(g);
	free(text);
	ret = send_json(h, c, 200, j);

out_free:
	free(r.prompt);
	cJSON_Delete(root);
	return ret;
}

/* ---- routes ---------------------------------------------------------------------------- */

static enum MHD_Result health(moe_http *h, struct MHD_Connection *c)
{
	cJSON *j = cJSON_CreateObject();
	pthread_mutex_lock(&h->mu);
	moe_engine *e = h->e;
	if (e == NULL) {
		cJSON_AddStringToObject(j, "status", h->status);
		if (h->reason[0])
			cJSON_AddStringToObject(j, "reason", h->reason);
	}
	pthread_mutex_unlock(&h->mu);
	char why[256];
	const bool ok = e != NULL && moe_engine_healthy(e, why, sizeof why);
	if (e != NULL) {
		cJSON_AddStringToObject(j, "status", ok ? "ok" : "unavailable");
		if (!ok)
			cJSON_AddStringToObject(j, "reason", why);
	}
	return send_json(h, c, ok ? 200 : 503, j);
}

static enum MHD_Result metrics(moe_http *h, struct MHD_Connection *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL)
		return send_error(h, c, 500, NULL, "out of memory");
	fprintf(f, "# HELP moemesh_http_requests_total HTTP responses by status code.\n"
	           "# TYPE moemesh_http_requests_total counter\n");
	for (int i = 0; i <= N_COUNTED; i++) {
		const uint64_t n = atomic_load_explicit(&h->by_status[i], memory_order_relaxed);
		if (i < N_COUNTED)
			fprintf(f, "moemesh_http_requests_total{code=\"%d\"} %llu\n", counted[i],
			        (unsigned long long)n);
		else
			fprintf(f, "moemesh_http_requests_total{code=\"other\"} %llu\n",
			        (unsigned long long)n);
	}
	pthread_mutex_lock(&h->mu);
	moe_engine *e = h->e;
	pthread_mutex_unlock(&h->mu);
	fprintf(f,
	        "# HELP moemesh_ready 1 when the model is loaded and serving.\n"
	        "# TYPE moemesh_ready gauge\nmoemesh_ready %d\n",
	        e != NULL);
	if (e != NULL)
		moe_engine_metrics(e, f);
	if (fclose(f) != 0) {
		free(buf);
		return send_error(h, c, 500, NULL, "out of memory");
	}
	enum MHD_Result ret = send_buf(h, c, 200, "text/plain; version=0.0.4", buf, len);
	free(buf);
	return ret;
}

static enum MHD_Result models(moe_http *h, struct MHD_Connection *c)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "object", "list");
	cJSON *d = cJSON_AddArrayToObject(j, "data");
	cJSON *m = cJSON_CreateObject();
	cJSON_AddItemToArray(d, m);
	cJSON_AddStringToObject(m, "id", h->model_id);
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", 0);
	cJSON_AddStringToObject(m, "owned_by", "moemesh");
	return send_json(h, c, 200, j);
}

static bool authorized(const moe_http *h, struct MHD_Connection *c)
{
	if (h->api_key == NULL)
		return true;
	const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	if (a == NULL || strncmp(a, "Bearer ", 7) != 0)
		return false;
	a += 7;
	const size_t n = strlen(a), k = strlen(h->api_key);
	unsigned diff = n != k;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned)(a[i] ^ h->api_key[i % (k ? k : 1)]);
	return diff == 0;
}

enum route { R_NONE, R_HEALTH, R_METRICS, R_MODELS, R_CHAT, R_COMPL };

static enum route find_route(const char *url, const char **method)
{
	static const struct {
		const char *url, *method;
		enum route r;
	} t[] = {
	    {"/health", "GET", R_HEALTH},         {"/metrics", "GET", R_METRICS},
	    {"/v1/models", "GET", R_MODELS},      {"/v1/chat/completions", "POST", R_CHAT},
	    {"/v1/completions", "POST", R_COMPL},
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (strcmp(url, t[i].url) == 0) {
			*method = t[i].method;
			return t[i].r;
		}
	return R_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
	(void)version;
	moe_http *h = cls;
	req_ctx *rc = *con_cls;
	const char *want = NULL;
	const enum route r = find_route(url, &want);

	if (rc == NULL) { /* headers only so far: answer early what needs no body */
		if ((rc = calloc(1, sizeof *rc)) == NULL)
			return MHD_NO;
		*con_cls = rc;
		if (r == R_NONE)
			return send_error(h, c, 404, NULL, "unknown route");
		if (strcmp(method, want) != 0 &&
		    !(r != R_CHAT && r != R_COMPL && strcmp(method, "HEAD") == 0))
			return send_error(h, c, 405, NULL, "method not allowed on this route");
		if (r != R_HEALTH && !authorized(h, c))
			return send_error(h, c, 401, NULL,
			                  "missing or wrong API key (Authorization: Bearer KEY)");
		const char *cl =
		    MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl != NULL && strtoull(cl, NULL, 10) > h->o.max_body)
			return send_error(h, c, 413, NULL, "request body too large");
		return MHD_YES;
	}
	if (*upload_size > 0) {
		if (!rc->too_big && rc->len + *upload_size > h->o.max_body)
			rc->too_big = true;
		if (!rc->too_big) {
			if (rc->len + *upload_size + 1 > rc->cap) {
				size_t cap = rc->cap ? rc->cap : 4096;
				while (cap < rc->len + *upload_size + 1)
					cap *= 2;
				char *b = realloc(rc->body, cap);
				if (b == NULL)
					return MHD_NO;
				rc->body = b;
				rc->cap = cap;
			}
			memcpy(rc->body + rc->len, upload, *upload_size);
			rc->len += *upload_size;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (rc->too_big)
		return send_error(h, c, 413, NULL, "request body too large");
	if (r == R_HEALTH)
		return health(h, c);
	pthread_mutex_lock(&h->mu);
	const bool ready = h->e != NULL;
	pthread_mutex_unlock(&h->mu);
	if (!ready)
		return send_error(h, c, 503, NULL, "the model is not loaded yet");
	switch (r) {
	case R_METRICS:
		return metrics(h, c);
	case R_MODELS:
		return models(h, c);
	case R_CHAT:
		return generate(h, c, rc, true);
	case R_COMPL:
		return generate(h, c, rc, false);
	default:
		return send_error(h, c, 404, NULL, "unknown route");
	}
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	(void)cls, (void)c, (void)toe;
	req_ctx *rc = *con_cls;
	if (rc != NULL) {
		free(rc->body);
		free(rc);
	}
	*con_cls = NULL;
}

/* ---- server ------------------------------------------------------------------------------ */

moe_err moe_http_start(moe_http **out, const moe_http_opts *o)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
	const char *host = o->host != NULL ? o->host : "127.0.0.1";
	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
		return moe_fail(MOE_ERR_INVAL, "serve: --host %s is not an IPv4 address", host);
	if (o->port < 0 || o->port > 65535)
		return moe_fail(MOE_ERR_INVAL, "serve: --port %d out of range", o->port);
	moe_http *h = calloc(1, sizeof *h);
	if (h == NULL)
		return moe_fail(MOE_ERR_NOMEM, "serve: http");
	h->o = *o;
	h->api_key = o->api_key != NULL ? strdup(o->api_key) : NULL;
	h->model_id = strdup(o->model_id != NULL ? o->model_id : "moemesh");
	snprintf(h->status, sizeof h->status, "loading");
	atomic_store(&h->next_id, 1);
	moe_err err;
	if ((o->api_key != NULL && h->api_key == NULL) || h->model_id == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "serve: http");
		goto out_free_h;
	}
	if (pthread_mutex_init(&h->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "serve: pthread_mutex_init");
		goto out_free_h;
	}
	h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
	                        (uint16_t)o->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
	                        (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
	                        (unsigned)(o->max_conn > 0 ? o->max_conn : 256),
	                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
	                        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
	if (h->d == NULL) {
		err =
		    moe_fail(MOE_ERR_SYS, "serve: cannot listen on %s:%d (in use?)", host, o->port);
		goto out_free_mutex;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	h->port = di != NULL ? di->port : o->port;
	*out = h;
	return MOE_OK;

out_free_mutex:
	pthread_mutex_destroy(&h->mu);
out_free_h:
	free(h->api_key);
	free(h->model_id);
	free(h);
	return err;
}

int moe_http_port(const moe_http *h)
{
	return h->port;
}

void moe_http_set_status(moe_http *h, const char *status, const char *reason)
{
	pthread_mutex_lock(&h->mu);
	snprintf(h->status, sizeof h->status, "%s", status);
	snprintf(h->reason, sizeof h->reason, "%s", reason != NULL ? reason : "");
	pthread_mutex_unlock(&h->mu);
}

void moe_http_set_engine(moe_http *h, moe_engine *e, const moe_tokenizer *tok)
{
	pthread_mutex_lock(&h->mu);
	h->e = e;
	h->tok = tok;
	pthread_mutex_unlock(&h->mu);
}

void moe_http_stop(moe_http *h)
{
	if (h == NULL)
		return;
	MHD_stop_daemon(h->d);
	pthread_mutex_destroy(&h->mu);
	free(h->api_key);
	free(h->model_id);
	free(h);
}
