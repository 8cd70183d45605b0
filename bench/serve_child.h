/*
 * serve_child.h - what the benchmarks that drive `moemesh serve` share
 * (bench_serve.c, bench_soak.c; private to bench/): the server as a child
 * process on a free port, a growable list of latencies with percentiles,
 * and reading a file once into the page cache.
 */
#ifndef MOE_BENCH_SERVE_CHILD_H
#define MOE_BENCH_SERVE_CHILD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Latencies in seconds; zero-initialised is empty; free(v) when done. */
typedef struct moe_bsrv_lat {
	double *v;
	size_t n, cap;
} moe_bsrv_lat;

/* Appends x; -1 without memory (l unchanged), else 0. */
int moe_bsrv_lat_add(moe_bsrv_lat *l, double x);

/* The p-quantile (0..1, nearest rank) of l, sorting l->v; 0 when empty. */
double moe_bsrv_pct(moe_bsrv_lat *l, double p);

/* Reads path through once (into the page cache); 0 on success. */
int moe_bsrv_warm_file(const char *path);

/* What one HTTP request got back (moe_bsrv_request). */
typedef struct moe_bsrv_reply {
	int status;        /* the HTTP status, 0 if no status line arrived */
	double t_status;   /* seconds from connect to the status line */
	int chunks;        /* streamed data chunks that carried text */
	long tokens;       /* usage.completion_tokens, where a chunk or body had it */
	int done;          /* a stream ended with data: [DONE] */
	int cut;           /* on_text asked to stop: the connection was closed early */
	uint64_t text_fnv; /* FNV-1a 64 over the streamed text's bytes, in order */
	char *body;        /* the whole body, NUL-terminated (malloc'd; free it) */
} moe_bsrv_reply;

/* POSTs body (JSON) to path at 127.0.0.1:port over HTTP/1.0 and reads the
 * reply into *r. A body that is a server-sent event stream is parsed as it
 * arrives: for each data chunk that carries text (choices[0].text or
 * choices[0].delta.content) on_text(arg, now in seconds) is called (may be
 * NULL); when it returns 0 the connection is closed there (a client that
 * goes away). Returns 0 when a reply was read to its end or cut on purpose,
 * -1 on a connection or memory error (r holds what arrived). Thread-safe. */
int moe_bsrv_request(moe_bsrv_reply *r, int port, const char *path, const char *body,
                     int (*on_text)(void *arg, double now), void *arg);

/* One load level (bench multicoord, bench cluster --netns --coordinators):
 * n_clients threads, client i sending n_req streamed greedy completions of
 * n_tok tokens (prompt "In the beginning I-R", so each request's text
 * depends on the client and request only) to 127.0.0.1:ports[i % k] in the
 * network namespace opened as netns_fd[i % k] (netns_fd NULL, or an entry
 * < 0: the caller's).  Returns the completion tokens per second of the
 * level's wall time, or -1 if a thread could not start or enter its
 * namespace.  *errors is incremented per request that failed or did not
 * answer 200; *text_fnv (may be NULL) gets an FNV-1a over every request's
 * text_fnv in (client, request) order: equal for equal texts however the
 * requests were spread.  At most 256 clients.  Thread-safe. */
double moe_bsrv_run_clients(const int *ports, const int *netns_fd, int k, int n_clients, int n_req,
                            int n_tok, int *errors, uint64_t *text_fnv);

/* A `moemesh serve` child: its pid, HTTP port and stderr (read to the
 * "ready" line by start, drained by stop). */
typedef struct moe_bsrv_child {
	pid_t pid;
	int port;
	FILE *err;
} moe_bsrv_child;

/* Starts this program's `serve -m model --port 0` plus extra (a
 * NULL-terminated list of at most 24 arguments, may be NULL) and waits for
 * its ready line; the server's earlier stderr lines are copied to ours.
 * 0 on success, -1 if it could not start or exited first (reaped). */
int moe_bsrv_start(moe_bsrv_child *s, const char *model, const char *const *extra);

/* SIGTERM, drain its stderr, reap it: 0 when it exited with status 0, else
 * -1 with its last 16 lines of stderr copied to ours (a sanitizer's report,
 * say). */
int moe_bsrv_stop(moe_bsrv_child *s);

#endif
