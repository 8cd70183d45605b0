/* http.c - the HTTP transport of `moemesh serve` on libmicrohttpd, and the
 * only file that includes it: the daemon (one thread per connection, so a
 * handler may block while its request generates), each request's state and
 * body (capped, 413 above the cap), the reply counters by status, sending a
 * buffer or a pulled stream, and telling that a client left.  What the
 * requests mean is the API layer's (api.c), called through http.h. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "server/http.h"

/* status codes counted in moemesh_http_requests_total */
static const int counted[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
#define N_COUNTED ((int)(sizeof counted / sizeof counted[0]))

struct moe_httpd {
	struct MHD_Daemon *d;
	moe_httpd_handlers h;
	size_t max_body;
	int port;
	_Atomic uint64_t by_status[N_COUNTED + 1]; /* last: other codes */
};

/* One request (MHD's con_cls), from its headers to its end. */
struct moe_http_req {
	moe_httpd *d;
	struct MHD_Connection *c;
	const char *method, *path;
	char *body;
	size_t len, cap;
	bool too_big;
	bool answered;       /* a reply (or a close) was made during this call */
	enum MHD_Result ret; /* what to return to MHD for it */
};

/* A streamed reply: the API layer's pull and its context. */
typedef struct stream {
	moe_http_pull pull;
	void (*release)(void *ctx);
	void *ctx;
} stream;

static void count_status(moe_httpd *d, int code)
{
	int i = 0;
	while (i < N_COUNTED && counted[i] != code)
		i++;
	atomic_fetch_add_explicit(&d->by_status[i], 1, memory_order_relaxed);
}

/* Adds the headers, queues resp with status and counts it; records the
 * result in r. */
static void queue(moe_http_req *r, struct MHD_Response *resp, int status, const char *type,
                  const moe_http_header *extra, size_t n_extra)
{
	MHD_add_response_header(resp, "Content-Type", type);
	for (size_t i = 0; i < n_extra; i++)
		MHD_add_response_header(resp, extra[i].name, extra[i].value);
	r->ret = MHD_queue_response(r->c, (unsigned)status, resp);
	r->answered = true;
	MHD_destroy_response(resp);
	count_status(r->d, status);
}

void moe_http_reply(moe_http_req *r, int status, const char *type, const moe_http_header *extra,
                    size_t n_extra, const char *body, size_t len)
{
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (resp == NULL) {
		moe_http_close(r);
		return;
	}
	queue(r, resp, status, type, extra, n_extra);
}

static ssize_t stream_read(void *cls, uint64_t at, char *buf, size_t max)
{
	(void)at;
	stream *s = cls;
	const ssize_t n = s->pull(s->ctx, buf, max);
	if (n > 0)
		return n;
	return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
	stream *s = cls;
	s->release(s->ctx);
	free(s);
}

void moe_http_reply_stream(moe_http_req *r, int status, const char *type,
                           const moe_http_header *extra, size_t n_extra, moe_http_pull pull,
                           void (*release)(void *ctx), void *ctx)
{
	stream *s = malloc(sizeof *s);
	if (s == NULL) {
		release(ctx);
		moe_http_close(r);
		return;
	}
	*s = (stream){.pull = pull, .release = release, .ctx = ctx};
	struct MHD_Response *resp =
	    MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
	if (resp == NULL) {
		stream_free(s);
		moe_http_close(r);
		return;
	}
	queue(r, resp, status, type, extra, n_extra);
}

void moe_http_close(moe_http_req *r)
{
	r->ret = MHD_NO;
	r->answered = true;
}

const char *moe_http_req_method(const moe_http_req *r)
{
	return r->method;
}

const char *moe_http_req_path(const moe_http_req *r)
{
	return r->path;
}

const char *moe_http_req_header(const moe_http_req *r, const char *name)
{
	return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
}

const char *moe_http_req_body(const moe_http_req *r, size_t *len)
{
	*len = r->len;
	return r->body != NULL ? r->body : "";
}

bool moe_http_req_client_gone(const moe_http_req *r)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (ci == NULL)
		return true;
	struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* Appends a piece of the body unless it went over the cap; false without
 * memory.  The body stays NUL-terminated. */
static bool take_body(moe_http_req *r, const char *upload, size_t n)
{
	if (!r->too_big && r->len + n > r->d->max_body)
		r->too_big = true;
	if (r->too_big)
		return true;
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		while (cap < r->len + n + 1)
			cap *= 2;
		char *b = realloc(r->body, cap);
		if (b == NULL)
			return false;
		r->body = b;
		r->cap = cap;
	}
	memcpy(r->body + r->len, upload, n);
	r->len += n;
	r->body[r->len] = '\0';
	return true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
	(void)version;
	moe_httpd *d = cls;
	moe_http_req *r = *con_cls;

	if (r == NULL) { /* headers only so far: the API layer may answer early */
		if ((r = calloc(1, sizeof *r)) == NULL)
			return MHD_NO;
		*r = (moe_http_req){.d = d, .c = c, .method = method, .path = url};
		*con_cls = r;
		d->h.head(d->h.ctx, r);
		if (r->answered)
			return r->ret;
		const char *cl =
		    MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl != NULL && strtoull(cl, NULL, 10) > d->max_body) {
			d->h.reject(d->h.ctx, r, 413, "request body too large");
			return r->answered ? r->ret : MHD_NO;
		}
		return MHD_YES;
	}
	r->method = method;
	r->path = url;
	r->answered = false;
	if (*upload_size > 0) {
		if (!take_body(r, upload, *upload_size))
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->too_big)
		d->h.reject(d->h.ctx, r, 413, "request body too large");
	else
		d->h.body(d->h.ctx, r);
	return r->answered ? r->ret : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	(void)cls, (void)c, (void)toe;
	moe_http_req *r = *con_cls;
	if (r != NULL) {
		free(r->body);
		free(r);
	}
	*con_cls = NULL;
}

/* ---- the daemon ---------------------------------------------------------------------- */

moe_err moe_httpd_start(moe_httpd **out, const moe_httpd_opts *o, const moe_httpd_handlers *h)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
	const char *host = o->host != NULL ? o->host : "127.0.0.1";
	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
		return moe_fail(MOE_ERR_INVAL, "serve: --host %s is not an IPv4 address", host);
	if (o->port < 0 || o->port > 65535)
		return moe_fail(MOE_ERR_INVAL, "serve: --port %d out of range", o->port);
	moe_httpd *d = calloc(1, sizeof *d);
	if (d == NULL)
		return moe_fail(MOE_ERR_NOMEM, "serve: http");
	d->h = *h;
	d->max_body = o->max_body;
	/* one address (a client in a loop, a leak) cannot take every slot: it
	 * is refused past its share, at once (MHD closes the connection) */
	const unsigned max_conn = (unsigned)(o->max_conn > 0 ? o->max_conn : 4096);
	const unsigned per_ip = o->max_conn_per_ip > 0 ? (unsigned)o->max_conn_per_ip
	                        : max_conn * 3 / 4 > 0 ? max_conn * 3 / 4
	                                               : 1;
	d->d = MHD_start_daemon(
	    MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)o->port,
	    NULL, NULL, on_request, d, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
	    MHD_OPTION_CONNECTION_LIMIT, max_conn, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s > 0 ? o->timeout_s : 600),
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, d, MHD_OPTION_END);
	if (d->d == NULL) {
		free(d);
		return moe_fail(MOE_ERR_SYS, "serve: cannot listen on %s:%d (in use?)", host,
		                o->port);
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d->d, MHD_DAEMON_INFO_BIND_PORT);
	d->port = di != NULL ? di->port : o->port;
	*out = d;
	return MOE_OK;
}

int moe_httpd_port(const moe_httpd *d)
{
	return d->port;
}

void moe_httpd_metrics(moe_httpd *d, FILE *out)
{
	fprintf(out, "# HELP moemesh_http_requests_total HTTP responses by status code.\n"
	             "# TYPE moemesh_http_requests_total counter\n");
	for (int i = 0; i <= N_COUNTED; i++) {
		const uint64_t n = atomic_load_explicit(&d->by_status[i], memory_order_relaxed);
		if (i < N_COUNTED)
			fprintf(out, "moemesh_http_requests_total{code=\"%d\"} %llu\n", counted[i],
			        (unsigned long long)n);
		else
			fprintf(out, "moemesh_http_requests_total{code=\"other\"} %llu\n",
			        (unsigned long long)n);
	}
}

void moe_httpd_stop(moe_httpd *d)
{
	if (d == NULL)
		return;
	MHD_stop_daemon(d->d);
	free(d);
}
