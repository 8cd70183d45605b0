/* api.c - the API layer's common part, on the transport of http.c: the
 * front end of server.h (moe_http_*: its state, readiness, the API key), the
 * route table and what is checked before a route's handler runs (route,
 * method, key, readiness: 404 / 405 / 401 / 503), the server's error shape
 * and status mapping, /health and /metrics.  The routes of each API are
 * served by its own file (api_openai.c). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "server/api.h"

struct moe_http {
	moe_httpd *t;
	char *api_key, *model_id;
	pthread_mutex_t mu;
	moe_engine *e; /* NULL until ready */
	const moe_tokenizer *tok;
	const moe_chat_template *tmpl;
	char status[64], reason[256];
	moe_http_load load[MOE_HTTP_MAX_LOADS]; /* workers loading (names copied) */
	char load_names[MOE_HTTP_MAX_LOADS][64];
	int n_load;
	_Atomic uint64_t next_id;
};

/* ---- the front end's state ------------------------------------------------------- */

bool moe_api_engine(moe_http *h, moe_engine **e, const moe_tokenizer **tok)
{
	pthread_mutex_lock(&h->mu);
	*e = h->e;
	*tok = h->tok;
	pthread_mutex_unlock(&h->mu);
	return *e != NULL;
}

const moe_chat_template *moe_api_template(moe_http *h)
{
	pthread_mutex_lock(&h->mu);
	const moe_chat_template *t = h->tmpl;
	pthread_mutex_unlock(&h->mu);
	return t;
}

const char *moe_api_model_id(const moe_http *h)
{
	return h->model_id;
}

uint64_t moe_api_next_id(moe_http *h)
{
	return atomic_fetch_add(&h->next_id, 1);
}

/* ---- replies and errors ----------------------------------------------------------- */

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

cJSON *moe_api_error_json(int code, const char *param, const char *msg)
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

void moe_api_send_json(moe_http_req *r, int code, cJSON *j)
{
	static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
	                          "\"server_error\",\"param\":null,\"code\":null}}";
	char *s = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (s == NULL) {
		moe_http_reply(r, 500, "application/json", NULL, 0, oom, sizeof oom - 1);
		return;
	}
	moe_http_reply(r, code, "application/json", NULL, 0, s, strlen(s));
	cJSON_free(s);
}

void moe_api_send_error(moe_http_req *r, int code, const char *param, const char *msg)
{
	moe_api_send_json(r, code, moe_api_error_json(code, param, msg));
}

int moe_api_submit_status(moe_err err)
{
	switch (err) {
	case MOE_ERR_BUSY:
		return 429;
	case MOE_ERR_STATE:
		return 503;
	case MOE_ERR_NOMEM:
		return 500;
	default:
		return 400;
	}
}

int moe_api_failure(moe_engine *e, char *why, size_t size)
{
	char reason[256];
	if (e != NULL && !moe_engine_healthy(e, reason, sizeof reason)) {
		snprintf(why, size, "the cluster cannot serve: %s", reason);
		return 503;
	}
	snprintf(why, size, "generation failed");
	return 500;
}

void moe_api_add_text(cJSON *obj, const char *key, const char *text, size_t len)
{
	size_t n = 0; /* the bytes of the copy: text need not end at len */
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

bool moe_api_grow(char **b, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 1024;
		while (c < *len + n + 1)
			c *= 2;
		char *p = realloc(*b, c);
		if (p == NULL)
			return false;
		*b = p;
		*cap = c;
	}
	if (n > 0)
		memcpy(*b + *len, s, n);
	*len += n;
	(*b)[*len] = '\0';
	return true;
}

void moe_api_call_id(char *out, size_t size, const char *prefix)
{
	static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	unsigned char rnd[24];
	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
		uint64_t x = moe_now_ns() ^ (uint64_t)(uintptr_t)out;
		for (size_t i = 0; i < sizeof rnd; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			rnd[i] = (unsigned char)(x >> 56);
		}
	}
	if (size == 0)
		return;
	size_t k = (size_t)snprintf(out, size, "%s", prefix);
	if (k >= size)
		k = size - 1;
	for (size_t i = 0; i < sizeof rnd && k + 1 < size; i++)
		out[k++] = abc[rnd[i] % (sizeof abc - 1)];
	if (k < size)
		out[k] = '\0';
}

/* ---- /health and /metrics ------------------------------------------------------------ */

/* 200 {"status": "ok"} when serving; 503 with the loading status set by
 * moe_http_set_status (and the workers' load progress set by
 * moe_http_set_loading), or "unavailable" and the engine's reason.  Once
 * serving, a cluster's workers too: [{"name", "up"}] and "workers_up". */
static void health(moe_http *h, moe_http_req *r)
{
	cJSON *j = cJSON_CreateObject();
	pthread_mutex_lock(&h->mu);
	moe_engine *e = h->e;
	if (e == NULL) {
		cJSON_AddStringToObject(j, "status", h->status);
		if (h->reason[0])
			cJSON_AddStringToObject(j, "reason", h->reason);
		cJSON *ws = h->n_load > 0 ? cJSON_AddArrayToObject(j, "workers") : NULL;
		for (int i = 0; ws != NULL && i < h->n_load; i++) {
			cJSON *w = cJSON_CreateObject();
			cJSON_AddStringToObject(w, "name", h->load_names[i]);
			cJSON_AddNumberToObject(w, "loaded_bytes", (double)h->load[i].loaded_bytes);
			cJSON_AddNumberToObject(w, "total_bytes", (double)h->load[i].total_bytes);
			cJSON_AddItemToArray(ws, w);
		}
	}
	pthread_mutex_unlock(&h->mu);
	char why[256];
	const bool ok = e != NULL && moe_engine_healthy(e, why, sizeof why);
	if (e != NULL) {
		cJSON_AddStringToObject(j, "status", ok ? "ok" : "unavailable");
		if (!ok)
			cJSON_AddStringToObject(j, "reason", why);
		/* a cluster's workers: which are up (a lost one stays listed) */
		moe_engine_worker w[64];
		const int nw = moe_engine_workers(e, w, 64);
		int up = 0;
		cJSON *ws = nw > 0 ? cJSON_AddArrayToObject(j, "workers") : NULL;
		for (int i = 0; ws != NULL && i < nw; i++) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "name", w[i].name);
			cJSON_AddBoolToObject(o, "up", w[i].up);
			cJSON_AddItemToArray(ws, o);
			up += w[i].up;
		}
		if (nw > 0)
			cJSON_AddNumberToObject(j, "workers_up", up);
	}
	moe_api_send_json(r, ok ? 200 : 503, j);
}

/* Prometheus text: the transport's reply counters, readiness, the engine's. */
static void metrics(moe_http *h, moe_http_req *r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL) {
		moe_api_send_error(r, 500, NULL, "out of memory");
		return;
	}
	moe_httpd_metrics(h->t, f);
	moe_engine *e;
	const moe_tokenizer *tok;
	const bool ready = moe_api_engine(h, &e, &tok);
	fprintf(f,
	        "# HELP moemesh_ready 1 when the model is loaded and serving.\n"
	        "# TYPE moemesh_ready gauge\nmoemesh_ready %d\n",
	        ready);
	if (ready)
		moe_engine_metrics(e, f);
	if (fclose(f) != 0) {
		free(buf);
		moe_api_send_error(r, 500, NULL, "out of memory");
		return;
	}
	moe_http_reply(r, 200, "text/plain; version=0.0.4", NULL, 0, buf, len);
	free(buf);
}

/* ---- routes ------------------------------------------------------------------------- */

/* What a route may skip of the checks before its handler. */
enum {
	ROUTE_KEYLESS = 1,      /* served without the API key */
	ROUTE_BEFORE_READY = 2, /* served before the engine is set (else 503) */
};

typedef struct route {
	const char *path;
	const char *method;     /* a GET route answers HEAD too */
	unsigned flags;         /* ROUTE_* */
	moe_api_handler handle; /* runs once the body is complete */
	moe_api_error_fn error; /* the shape of the errors api.c answers on it */
} route;

/* Every route of every API; a new API adds its rows (and its file). */
static const route routes[] = {
    {"/health", "GET", ROUTE_KEYLESS | ROUTE_BEFORE_READY, health, moe_api_error_json},
    {"/metrics", "GET", 0, metrics, moe_api_error_json},
    /* OpenAI: api_openai.c */
    {"/v1/models", "GET", 0, moe_api_openai_models, moe_api_error_json},
    {"/v1/chat/completions", "POST", 0, moe_api_openai_chat, moe_api_error_json},
    {"/v1/completions", "POST", 0, moe_api_openai_completions, moe_api_error_json},
    {"/apply-template", "POST", 0, moe_api_apply_template, moe_api_error_json},
    /* Anthropic: api_anthropic.c */
    {"/v1/messages", "POST", 0, moe_api_anthropic_messages, moe_api_anthropic_error},
    {"/v1/messages/count_tokens", "POST", 0, moe_api_anthropic_count_tokens,
     moe_api_anthropic_error},
};

static const route *find_route(const char *path)
{
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (strcmp(path, routes[i].path) == 0)
			return &routes[i];
	return NULL;
}

/* Replies code with msg in the error shape of rt (the server's without one). */
static void route_error(moe_http_req *r, const route *rt, int code, const char *msg)
{
	moe_api_send_json(r, code, (rt != NULL ? rt->error : moe_api_error_json)(code, NULL, msg));
}

/* "Authorization: Bearer KEY" (OpenAI's clients) or "x-api-key: KEY"
 * (Anthropic's) with the server's key, compared in a time that does not
 * depend on where they differ. */
static bool authorized(const moe_http *h, const moe_http_req *r)
{
	if (h->api_key == NULL)
		return true;
	const char *a = moe_http_req_header(r, "Authorization");
	if (a != NULL && strncmp(a, "Bearer ", 7) == 0)
		a += 7;
	else if ((a = moe_http_req_header(r, "x-api-key")) == NULL)
		return false;
	const size_t n = strlen(a), k = strlen(h->api_key);
	unsigned diff = n != k;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned)(a[i] ^ h->api_key[i % (k ? k : 1)]);
	return diff == 0;
}

/* The headers are in: answer now what needs no body. */
static void on_head(void *ctx, moe_http_req *r)
{
	moe_http *h = ctx;
	const route *rt = find_route(moe_http_req_path(r));
	if (rt == NULL) {
		route_error(r, NULL, 404, "unknown route");
		return;
	}
	const char *m = moe_http_req_method(r);
	if (strcmp(m, rt->method) != 0 &&
	    !(strcmp(rt->method, "GET") == 0 && strcmp(m, "HEAD") == 0)) {
		route_error(r, rt, 405, "method not allowed on this route");
		return;
	}
	if (!(rt->flags & ROUTE_KEYLESS) && !authorized(h, r))
		route_error(
		    r, rt, 401,
		    "missing or wrong API key (Authorization: Bearer KEY, or x-api-key: KEY)");
}

static void on_reject(void *ctx, moe_http_req *r, int status, const char *why)
{
	(void)ctx;
	route_error(r, find_route(moe_http_req_path(r)), status, why);
}

static void on_body(void *ctx, moe_http_req *r)
{
	moe_http *h = ctx;
	const route *rt = find_route(moe_http_req_path(r));
	if (rt == NULL) {
		route_error(r, NULL, 404, "unknown route");
		return;
	}
	moe_engine *e;
	const moe_tokenizer *tok;
	if (!(rt->flags & ROUTE_BEFORE_READY) && !moe_api_engine(h, &e, &tok)) {
		route_error(r, rt, 503, "the model is not loaded yet");
		return;
	}
	rt->handle(h, r);
}

/* ---- the front end (server.h) ------------------------------------------------------- */

/* Whether host (as moe_http_opts takes it) is a loopback address. */
static bool is_loopback(const char *host)
{
	return host == NULL || strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0;
}

moe_err moe_http_start(moe_http **out, const moe_http_opts *o)
{
	if (!is_loopback(o->host) && o->api_key == NULL && !o->insecure)
		return moe_fail(
		    MOE_ERR_INVAL,
		    "serve: --host %s is reachable from other machines and every request "
		    "would be served unauthenticated: give --api-key KEY (or --insecure "
		    "to serve it without one)",
		    o->host);
	moe_http *h = calloc(1, sizeof *h);
	if (h == NULL)
		return moe_fail(MOE_ERR_NOMEM, "serve: http");
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
	const moe_httpd_opts to = {.host = o->host,
	                           .port = o->port,
	                           .max_body = o->max_body,
	                           .max_conn = o->max_conn,
	                           .max_conn_per_ip = o->max_conn_per_ip,
	                           .timeout_s = o->timeout_s};
	const moe_httpd_handlers hh = {
	    .ctx = h, .head = on_head, .reject = on_reject, .body = on_body};
	if ((err = moe_httpd_start(&h->t, &to, &hh)) != MOE_OK)
		goto out_free_mutex;
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
	return moe_httpd_port(h->t);
}

void moe_http_set_status(moe_http *h, const char *status, const char *reason)
{
	pthread_mutex_lock(&h->mu);
	snprintf(h->status, sizeof h->status, "%s", status);
	snprintf(h->reason, sizeof h->reason, "%s", reason != NULL ? reason : "");
	pthread_mutex_unlock(&h->mu);
}

void moe_http_set_loading(moe_http *h, const moe_http_load *w, int n)
{
	pthread_mutex_lock(&h->mu);
	h->n_load = n < 0 ? 0 : n > MOE_HTTP_MAX_LOADS ? MOE_HTTP_MAX_LOADS : n;
	for (int i = 0; i < h->n_load; i++) {
		snprintf(h->load_names[i], sizeof h->load_names[i], "%s",
		         w[i].name != NULL ? w[i].name : "");
		h->load[i] = w[i];
		h->load[i].name = h->load_names[i];
	}
	pthread_mutex_unlock(&h->mu);
}

void moe_http_set_engine(moe_http *h, moe_engine *e, const moe_tokenizer *tok,
                         const moe_chat_template *t)
{
	pthread_mutex_lock(&h->mu);
	h->e = e;
	h->tok = tok;
	h->tmpl = t;
	pthread_mutex_unlock(&h->mu);
}

void moe_http_stop(moe_http *h)
{
	if (h == NULL)
		return;
	moe_httpd_stop(h->t);
	pthread_mutex_destroy(&h->mu);
	free(h->api_key);
	free(h->model_id);
	free(h);
}
