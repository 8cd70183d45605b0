/* server_impl.h - the worker's dispatch server's state (server: its
 * control sessions, data connections, expert store and loader) and what its
 * two files call across: server.c (poll loop, status, data connections,
 * set-up) and session.c (control sessions: handshake, ASSIGN and the
 * loader, pipes coming and going).  Not a public header; everything here
 * runs on the serving thread unless its comment says otherwise. */
#ifndef MOE_WORKER_SERVER_IMPL_H
#define MOE_WORKER_SERVER_IMPL_H

#include <nng/nng.h>
#include <pthread.h>
#include <stdatomic.h>

#include "model/model.h"
#include "proto/proto.h"
#include "worker/worker.h"

#define MAX_CONNS 32

/* Frames a peer may send before it has authenticated (control: before
 * AUTH_OK; data: before its token), HELLO and AUTH being a few hundred
 * bytes: a bigger one is refused and the connection dropped, so an
 * unauthenticated peer makes the worker buffer no more than this. */
#define PREAUTH_MAX_FRAME (64u << 10)

/* A peer's address, as the per-address limit on peers not yet
 * authenticated counts them (--max-preauth-per-ip): IPv4 in 4 bytes (an
 * IPv4-mapped IPv6 address too), IPv6 in 16; len 0: none (ipc://, a Unix
 * socket), never counted. */
typedef struct peer_addr {
	uint8_t len;
	uint8_t a[16];
} peer_addr;

/* Peers not yet authenticated from one address, by default (control pipes
 * and data connections each). */
#define PREAUTH_PER_ADDR 4

typedef struct conn {
	int fd;
	peer_addr addr; /* where it came from */
	bool authed;
	bool sealed_first; /* with a secret: its token frame is not read yet (sealed_token) */
	bool dead;         /* to close after this pass (on_data) */
	uint64_t since;    /* accepted at (moe_now_ns) */
	moe_rx rx;         /* rx.open: sealed link (a secret) */
	moe_aead *tx;      /* seals what goes out, once authed with a secret */
	uint8_t head[256]; /* the sealed token frame, read before its key is known */
	size_t head_have;
} conn;

/* One control session: a coordinator's pipe on the (polyamorous) pair1
 * socket, its handshake, keys, data token and the set it last assigned. */
typedef struct session {
	uint32_t pipe;  /* nng pipe id; 0: a free slot */
	uint64_t since; /* its pipe came (moe_now_ns) */
	peer_addr addr; /* its pipe's remote address */
	bool hello_ok, authed;
	uint8_t nonce_c[32], challenge[32]; /* challenge: nonce_w */
	uint8_t token[32];
	bool token_used;       /* a data connection came with it (with a secret: no second) */
	moe_session_keys keys; /* with a secret, from AUTH on */
	moe_aead *tx;          /* control sealer (NULL: plain), under ctl_lock */
	moe_aead *rx;          /* control opener (NULL: plain) */
	uint8_t *set;          /* [n_layer][n_expert] its last ASSIGN (NULL: none) */
	bool assign_wait;      /* its ASSIGN waits for the loader */
	bool covered;          /* the load under way answers its ASSIGN (under ctl_lock) */
	uint64_t drop_at;      /* drop it then (after its ERROR went out); 0: no */
} session;

/* A control pipe that came (add) or left, as nng's callback saw it. */
typedef struct pipe_ev {
	uint32_t id;
	bool add;
	uint64_t t;
	peer_addr addr; /* add: the pipe's remote address */
} pipe_ev;

/* Coordinators served at once (each its own session). */
#define MAX_SESSIONS 8

typedef struct server {
	const moe_worker_opts *o;
	moe_gguf *g;
	moe_hparams hp;
	moe_proto_limits lim;
	uint8_t id[MOE_ID_BYTES];
	uint8_t *secret;
	size_t secret_len;
	nng_socket ctl;
	int ctl_fd;
	int lfd;
	int sfd; /* status datagrams */
	char status_path[256];
	uint64_t t_start;
	_Atomic uint64_t load_done, load_total; /* the loader thread writes them */
	uint16_t data_port;
	char data_path[256];
	conn conns[MAX_CONNS];
	int n_conns;
	/* control sessions; pipes come and go on nng's threads, which queue
	 * them (ev_*) and wake the poll loop through ev_pipe */
	session sess[MAX_SESSIONS];
	pthread_mutex_t ctl_lock; /* control sends (this thread and the loader's), sess[].tx */
	pthread_mutex_t ev_lock;
	pipe_ev ev[256];
	int n_ev;
	bool ev_lost; /* the queue overflowed */
	int ev_pipe[2];
	uint32_t gone[64]; /* the last pipes that left */
	unsigned n_gone;
	/* experts */
	moe_pool *pool;
	moe_expert_store *store;
	moe_expert_ffn *ffn; /* [n_layer] */
	const void **ptrs;   /* [n_layer][3][n_expert] */
	moe_fix_t *acc;      /* result buffer */
	size_t acc_cap;      /* in elements */
	/* dispatches of one layer computed together (batch.c): their rows,
	 * expert ids and weights one after the other */
	uint8_t *xcat;
	size_t xcat_cap; /* bytes */
	int32_t *idcat;
	float *wcat;
	size_t cat_cap;    /* ids / weights */
	Moemesh__Stats st; /* st.expert_rows: [n_layer][n_expert] rows, every session */
	/* an ASSIGN's load, read by the loader thread while this one serves */
	bool loading; /* the loader thread runs (join it) */
	pthread_t loader;
	moe_store_load *ld; /* what it reads */
	moe_err load_err;   /* its outcome, with load_msg */
	char load_msg[400];
	int load_pipe[2];          /* it writes a byte here when done */
	atomic_int load_stop;      /* asks it to stop (shutdown) */
	double load_t0;            /* when the ASSIGN arrived */
	uint64_t assign_dropped;   /* bytes the ASSIGN dropped */
	uint64_t load_last;        /* bytes at the last LOAD_PROGRESS sent (loader thread) */
	uint64_t auth_deadline_ns; /* a peer not authenticated by then is dropped */
	int preauth_per_addr;      /* at most this many such peers from one address */
	uint64_t limit_logged;     /* the last line about refused peers (moe_now_ns) */
	unsigned limit_refused;    /* peers refused since that line */
	bool quit;
} server;

/* A DISPATCH frame one connection has ready (data_next). */
typedef struct moe_wk_pending {
	int conn;
	moe_frame f;
} moe_wk_pending;

/* server.c */

/* An ERROR on a data connection, sealed with tx (NULL: plain). */
moe_err moe_wk_data_error(server *s, int fd, moe_aead *tx, moe_err code, const char *what,
                          uint64_t step);

/* A log line (core.h) naming this worker; --quiet drops them all. */
void moe_wk_log(const server *s, moe_log_level l, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* MemAvailable of /proc/meminfo in bytes (0 if absent). */
uint64_t moe_wk_mem_available(void);

/* Whether a new peer from a (control: a pipe; else a data connection) would
 * pass the per-address limit: fewer than preauth_per_addr peers of that
 * kind from a that have not authenticated (authenticated ones do not count;
 * an address of len 0 always passes).  If not, logs it (a line per 10 s at
 * most, with the count refused meanwhile) and returns false: the caller
 * closes the peer. */
bool moe_wk_preauth_admit(server *s, const peer_addr *a, bool control);

/* The address as the limit counts it from an IPv4 address's 4 bytes or an
 * IPv6 address's 16 (an IPv4-mapped one as its IPv4 address). */
peer_addr moe_wk_peer_addr(const uint8_t *bytes, bool v6);

/* batch.c */

/* Answers the n DISPATCH frames of pd (each of another connection): those
 * that fail validation get an ERROR; those of one layer are computed as one
 * batch (every row's result is the one it would get alone: the expert
 * kernels are row-independent) and each gets its RESULT.  A connection
 * whose reply cannot be sent is marked dead. */
void moe_wk_serve_dispatches(server *s, moe_wk_pending *pd, int n);

/* session.c */

/* Forgets session x's handshake and keys (its assigned set stays). */
void moe_wk_session_reset(server *s, session *x);

/* Ends session x (its pipe left or was dropped): keys gone, its set freed
 * (the slices stay held until another session's ASSIGN), a load that
 * answered it alone stopped. */
void moe_wk_session_end(server *s, session *x);

/* Whether any coordinator has an authenticated session. */
bool moe_wk_any_authed(const server *s);

/* Stops the loader and frees the store. */
void moe_wk_drop_store(server *s);

/* The loader thread is done (its byte on load_pipe): commit, answer. */
void moe_wk_on_loaded(server *s);

/* nng's pipe callbacks (nng's threads): queue the event, wake the loop. */
void moe_wk_pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg);
void moe_wk_pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg);

/* Takes the queued pipe events (ev_pipe is readable). */
void moe_wk_pipes_changed(server *s);

/* Serves one control message if one waits. */
void moe_wk_on_control(server *s);

#endif
