/*
 * http.h - private to server/: the seam between the HTTP transport (http.c,
 * the one file that knows libmicrohttpd) and the API layer above it (api.c
 * and the api_*.c files it routes to).
 *
 * The transport owns the listening daemon (one thread per connection), each
 * request's state, the body (read whole into memory, at most max_body bytes:
 * 413 above), the per-status reply counters, and sending: a buffer, or a
 * stream pulled from the API layer.  It knows nothing of routes, JSON or
 * engines.  The API layer sees a request as an opaque moe_http_req and is
 * called twice per request through moe_httpd_handlers:
 *
 *   head  when the headers have arrived, before any body byte is read: it
 *         may answer at once (unknown route, wrong method, wrong key);
 *   body  when the body is complete: it must answer.
 *
 * The transport refuses a body over max_body through reject (the API layer
 * words the error): after head when Content-Length says so (no body byte
 * is read), else instead of body once the body has grown over it.
 *
 * Threads: every callback of one request (head, reject, body, a stream's
 * pull and release) runs on that request's connection thread, and the
 * moe_http_req functions are for that thread only.  Callbacks of different
 * connections run at once.
 */
#ifndef MOE_SERVER_HTTP_H
#define MOE_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#include "core/core.h"

typedef struct moe_httpd moe_httpd;
typedef struct moe_http_req moe_http_req;

/* One more response header (name and value are copied when sent). */
typedef struct moe_http_header {
	const char *name, *value;
} moe_http_header;

/* How the transport calls the API layer; ctx is handed back to each. */
typedef struct moe_httpd_handlers {
	void *ctx;
	/* The headers of r have arrived.  May reply (the body is then not read);
	 * returning without a reply reads the body. */
	void (*head)(void *ctx, moe_http_req *r);
	/* The transport refuses r with status (413) for the reason why; must
	 * reply with that status. */
	void (*reject)(void *ctx, moe_http_req *r, int status, const char *why);
	/* The body of r is complete.  Must reply, or moe_http_close; returning
	 * without either closes the connection. */
	void (*body)(void *ctx, moe_http_req *r);
} moe_httpd_handlers;

typedef struct moe_httpd_opts {
	const char *host;    /* IPv4 address or "localhost"; NULL: 127.0.0.1 */
	int port;            /* 0: any free port */
	size_t max_body;     /* body cap in bytes */
	int max_conn;        /* connections at once; <= 0: 4096 */
	int timeout_s;       /* a connection idle this long is closed; <= 0: 600 */
	int max_conn_per_ip; /* connections at once from one address; <= 0: 3/4 of max_conn */
} moe_httpd_opts;

/* ---- the daemon ---------------------------------------------------------------- */

/* Starts listening with a thread per connection; h is called for every
 * request from then on (h->ctx must be ready before this call).  Errors:
 * MOE_ERR_INVAL (host, port), MOE_ERR_SYS (bind / start failed),
 * MOE_ERR_NOMEM. */
moe_err moe_httpd_start(moe_httpd **out, const moe_httpd_opts *o, const moe_httpd_handlers *h);

/* The port actually bound. */
int moe_httpd_port(const moe_httpd *d);

/* Writes the reply counters by status code in Prometheus text format
 * (moemesh_http_requests_total).  Safe from any thread. */
void moe_httpd_metrics(moe_httpd *d, FILE *out);

/* Stops listening, waits for every connection thread (no callback runs after
 * it returns), frees d.  NULL is a no-op. */
void moe_httpd_stop(moe_httpd *d);

/* ---- a request ------------------------------------------------------------------- */

/* The method and the path (without the query string) of r; valid until the
 * request ends. */
const char *moe_http_req_method(const moe_http_req *r);
const char *moe_http_req_path(const moe_http_req *r);

/* The value of header name (case-insensitive) or NULL; valid until the
 * request ends. */
const char *moe_http_req_header(const moe_http_req *r, const char *name);

/* The body read so far (all of it in the body callback) as *len bytes,
 * followed by a NUL that *len does not count (the body itself may hold NUL
 * bytes); never NULL.  Owned by r, valid until the request ends. */
const char *moe_http_req_body(const moe_http_req *r, size_t *len);

/* True if the client has closed its end of the connection (or it cannot be
 * told): a handler that blocks polls it to stop work nobody waits for. */
bool moe_http_req_client_gone(const moe_http_req *r);

/* ---- replies: at most one per request --------------------------------------------- */

/* Sends status with body[0..len) (copied) as Content-Type type, plus the
 * n_extra headers of extra, and counts status.  On failure (no memory, a
 * second reply) the connection is closed instead; nothing to undo. */
void moe_http_reply(moe_http_req *r, int status, const char *type, const moe_http_header *extra,
                    size_t n_extra, const char *body, size_t len);

/* Fills buf with up to max bytes of a streamed reply, blocking until it has
 * some: returns how many (> 0), 0 at the end of the stream, < 0 to abort it
 * (the connection is closed, the client sees a cut reply).  It may call
 * moe_http_req_client_gone on the request being answered. */
typedef ssize_t (*moe_http_pull)(void *ctx, char *buf, size_t max);

/* Sends status with headers as moe_http_reply and a body of unknown length
 * (chunked) pulled from pull(ctx, ...) as the client takes it, and counts
 * status.  release(ctx) is called exactly once, when the transport is done
 * with ctx: after the last pull, or at once if the reply cannot be sent
 * (then the connection is closed); it must not touch r, which may be gone
 * by then. */
void moe_http_reply_stream(moe_http_req *r, int status, const char *type,
                           const moe_http_header *extra, size_t n_extra, moe_http_pull pull,
                           void (*release)(void *ctx), void *ctx);

/* Closes the connection without a reply (the client left); not counted. */
void moe_http_close(moe_http_req *r);

#endif
