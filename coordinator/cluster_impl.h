/* cluster_impl.h - the cluster's state (moe_cluster, one clink per worker)
 * and the functions the files of coordinator/ call across: cluster.c
 * (create/destroy, stats), config.c (options), link.c (workers: spawn,
 * handshake, assign, heartbeat, shutdown), placement.c (placement, repair),
 * dispatch.c (the expert backend), rebalance.c (load, re-placement).  Not a public header; every
 * function here runs on the thread that owns the cluster. */
#ifndef MOE_CLUSTER_IMPL_H
#define MOE_CLUSTER_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "coordinator/coordinator.h"
#include "proto/proto.h"

typedef struct clink {
	char url[256];
	char name[64];
	bool local; /* experts computed in this process */
	bool alive;
	/* control (nng) */
	nng_socket ctl;
	bool ctl_open;
	atomic_int pipes; /* connected pipes (nng notify callback) */
	moe_aead *ctl_tx; /* with a secret: seals control frames (NULL: plain) */
	moe_aead *ctl_rx; /* and opens the worker's, from AUTH_OK on */
	/* data (stream socket) */
	int dfd;
	moe_aead *data_tx; /* seals DISPATCHes, rx.open opens RESULTs (NULL: plain) */
	moe_rx rx;
	pid_t pid;         /* spawned worker, or 0 */
	uint64_t mem;      /* free memory the worker announces */
	uint64_t cap;      /* expert bytes it may hold (the cluster file's "mem"; 0 = no cap) */
	uint8_t *held;     /* [n_layer][n_expert] what dispatch routes to it */
	uint8_t *loaded;   /* [n_layer][n_expert] what it holds (its last ASSIGN done) */
	uint8_t *next;     /* [n_layer][n_expert] the ASSIGN in flight (async) */
	uint8_t *has;      /* [n_layer][n_expert] what it said it held at AUTH_OK (adopt.c) */
	uint32_t others;   /* other coordinators it served at AUTH_OK */
	uint64_t *rows;    /* [n_layer][n_expert] its STATS expert_rows at the last window */
	bool rows_ok;      /* rows holds a reading of this session */
	bool async;        /* an ASSIGN of the rebalancer in flight, not waited for */
	uint64_t async_t;  /* when it was sent, or its last LOAD_PROGRESS */
	int errors;        /* ERROR replies in a row (a RESULT resets it) */
	uint64_t redial_t; /* when it was last re-dialled (dead URL workers) */
	/* the heartbeat thread's side (heartbeat.c; the locking: DESIGN.md,
	 * "Failure semantics") */
	pthread_mutex_t ctl_mu; /* once it runs: held by whoever uses ctl, ctl_tx, ctl_rx */
	atomic_int wstate;      /* MOE_CLU_W_*: who owns the session, what to apply */
	char why[256];          /* why it was found lost; written before wstate = LOST */
	int dial_wait_ms;       /* moe_clu_connect's wait for a connection (0: the cluster's) */
	uint64_t re_bytes, re_loaded, re_dropped; /* its re-admission's load (READY) */
	char
	    ended[200]; /* how spawned processes of it that were re-spawned ended, if not cleanly */
	double re_seconds;
	/* stats */
	moe_cluster_link_stats st;
} clink;

/* A lane's dispatch on one link (dispatch.c). */
typedef struct clane_link {
	bool pending; /* its DISPATCH sent, its answer not yet read */
	int n_sent;
	int32_t *tok;      /* [max_tok] token index of each row sent */
	int32_t *ids;      /* [max_tok][n_used] expert ids for this link, -1 elsewhere */
	float *wts;        /* [max_tok][n_used] */
	struct iovec *iov; /* [max_tok] payload parts */
	uint64_t t_sent;
} clane_link;

/* One layer's dispatch, from start to finish (dispatch.c).  Lane 0 is the
 * backend of moe_cluster_backend, lane 1 that of moe_cluster_overlap_backend;
 * both may be in flight at once (two micro-batches).  A link answers in the
 * order it was sent to (the cluster's fifo), so one lane's wait may read the
 * other's RESULT: its rows go to that lane's stash, added at its finish. */
typedef struct clane {
	struct moe_cluster *c;
	moe_expert_backend be;
	bool busy; /* between start and finish */
	uint64_t step;
	int il;
	int64_t n_tok;
	int n_used;
	const int32_t *ids; /* [n_tok][n_used] the router's choice */
	const float *wts;   /* [n_tok][n_used] */
	moe_type act_type;
	size_t act_row;
	uint8_t *xq; /* [max_tok][act_row], 64-aligned */
	size_t xq_cap;
	int8_t *todo; /* [max_tok][n_used] 1 = not yet computed */
	size_t todo_cap;
	int32_t *lids;    /* [max_tok][n_used] local ids */
	size_t max_tok;   /* capacity of the per-link arrays */
	moe_fix_t *stash; /* [stash_cap / n_embd][n_embd] rows read by the other lane's wait */
	size_t stash_cap;
	bool stashed; /* stash holds rows (zeroed at its first) */
	moe_err start_err;
	clane_link lk[MOE_CLUSTER_MAX_LINKS];
} clane;

struct moe_cluster {
	moe_cluster_opts o;
	const moe_model *m;
	const moe_hparams *hp;
	char model_path[1024];
	uint8_t id[MOE_ID_BYTES];
	uint8_t *secret;
	size_t secret_len;
	clink links[MOE_CLUSTER_MAX_LINKS];
	int n_links;
	moe_pool *pool;
	/* dispatch (dispatch.c) */
	clane lanes[2];
	uint8_t fifo[MOE_CLUSTER_MAX_LINKS][2]; /* per link: lanes in the order sent */
	uint8_t fifo_n[MOE_CLUSTER_MAX_LINKS];
	uint64_t step;    /* the last DISPATCH's step number */
	uint64_t rr;      /* rotates the choice among replicas */
	int dial_wait_ms; /* how long moe_clu_connect waits for a connection (0: 10 s) */
	moe_cluster_counters cnt;
	/* load, counted by dispatch for the rebalancer (rebalance.c) */
	uint64_t *eload; /* [n_layer][n_expert] (token, expert) pairs routed, this window */
	uint64_t *wload; /* [n_layer][MOE_CLUSTER_MAX_LINKS] pairs sent to each link, this window */
	struct rebal *rb; /* the rebalancer's state (rebalance.c) */
	struct watch *wt; /* the heartbeat thread (heartbeat.c), or NULL */
};

/* A link's state between the owner thread and the heartbeat thread:
 * LIVE (the owner's; heartbeated), LOST (the heartbeat thread found it lost:
 * the owner marks it dead), DOWN (marked dead: its session fields are the
 * heartbeat thread's, which may re-dial it), READY (re-dialled and loaded:
 * the owner takes it back). */
enum { MOE_CLU_W_LIVE = 0, MOE_CLU_W_LOST, MOE_CLU_W_DOWN, MOE_CLU_W_READY };

/* link.c */

/* Starts local worker k on ipc:///tmp/moemesh-PID-k.sock (this program,
 * `worker --ready-fd`) and waits until it listens; l->url and l->pid are set.
 * Errors: MOE_ERR_SYS (pipe/fork), MOE_ERR_CLOSED (it exited first: its
 * status in the detail), MOE_ERR_TIMEOUT. */
moe_err moe_clu_spawn(moe_cluster *c, clink *l, int k);

/* Dials l->url and runs the handshake (HELLO / HELLO_REPLY, model identity,
 * HMAC both ways if c has a secret, AUTH / AUTH_OK), then opens and
 * authenticates the data socket; l->name and l->mem come from the worker.
 * Errors: those of moe_cluster_create; the detail names the worker. */
moe_err moe_clu_connect(moe_cluster *c, clink *l);

/* Sends l's held set as an ASSIGN and waits until the worker has loaded it
 * (LOAD_PROGRESS keeps the wait alive), then checks its count of experts.
 * A local link only counts.  Errors: MOE_ERR_CLOSED / MOE_ERR_TIMEOUT /
 * MOE_ERR_PROTO or the worker's own error, naming it. */
moe_err moe_clu_assign(moe_cluster *c, clink *l);

/* Sends set ([n_layer][n_expert]) to l as an ASSIGN without waiting. */
moe_err moe_clu_send_assign(moe_cluster *c, clink *l, const uint8_t *set);

/* Takes the final LOAD_PROGRESS f of the ASSIGN of set: checks the worker's
 * count of experts, adds what it loaded and dropped to l's stats, and
 * records set as what l holds.  Errors: MOE_ERR_PROTO. */
moe_err moe_clu_assign_done(moe_cluster *c, clink *l, const moe_frame *f, const uint8_t *set);

/* link.c's wait for a control frame (LOAD_PROGRESS and HEARTBEAT frames
 * restart the silence allowed; an ERROR frame is its error). */
moe_err moe_clu_ctl_expect(nng_msg **msg, moe_frame *f, clink *l, moe_msg_kind want,
                           int timeout_ms);

/* Sends set as an ASSIGN, touching neither l's stats nor on_load (the
 * heartbeat thread's re-admission).  Errors: those of the send. */
moe_err moe_clu_send_assign_msg(moe_cluster *c, clink *l, const uint8_t *set);

/* Closes everything of l's last session: control socket, keys, data socket. */
void moe_clu_drop_session(clink *l);

/* Marks l dead (once): closes its data socket, says why on stderr. */
void moe_clu_mark_dead(moe_cluster *c, clink *l, const char *why);

/* Re-dials each dead worker named by URL (not spawned, not local), at most
 * once per REDIAL_MS each and not while a re-placement is under way (an
 * async ASSIGN), waiting briefly for a connection; one that
 * authenticates is sent its held set as an ASSIGN, waited for, and is alive
 * again (it keeps its place in the placement; what survivors took over in
 * the meantime they keep).  Failures leave it dead; never an error. */
void moe_clu_readmit(moe_cluster *c);

/* Stops the spawned workers (moe_cluster_shutdown): SHUTDOWN to the live
 * ones, SIGTERM to the others, SIGKILL after a grace period; reaps them,
 * removes their socket files and marks them dead.  Returns MOE_ERR_CLOSED,
 * naming each worker that did not end cleanly, if report; else MOE_OK
 * without touching the thread's error detail. */
moe_err moe_clu_stop_spawned(moe_cluster *c, bool report);

/* adopt.c */

/* Fills l->has from AUTH_OK's held list, checked against the model's
 * layers and experts.  Errors: MOE_ERR_PROTO naming the worker. */
moe_err moe_clu_held_read(moe_cluster *c, clink *l, const Moemesh__AuthOk *ok);

/* If the workers already hold a complete placement (each one something,
 * every expert of every layer somewhere, each within its cap; no local
 * link), makes it this coordinator's (every link's held = what it holds) and
 * returns true: its ASSIGNs then load nothing.  Else false, nothing changed. */
bool moe_clu_adopt(moe_cluster *c);

/* Replaces the window's load counters (c->eload, c->wload) by what the
 * workers computed in the window for every coordinator together: each
 * one's STATS expert_rows less its last reading.  Only when every live link
 * is a worker that answers (no local link, none loading for a rebalance,
 * none the heartbeat thread found lost) and each has a reading from before;
 * else the counters stay this coordinator's own (and the readings are taken
 * for the next window).  Returns whether they were replaced. */
bool moe_clu_union_load(moe_cluster *c);

/* placement.c */

/* Bytes of one expert of layer il: its gate, up and down slices. */
uint64_t moe_clu_expert_bytes(const moe_cluster *c, int il);

/* Fills every link's held table from c->o (placement kind, replication).
 * Errors: MOE_ERR_INVAL (a bad --replicate list). */
moe_err moe_clu_place(moe_cluster *c);

/* Gives every expert that no live link holds to the live link holding the
 * fewest experts of its layer, and re-assigns the links that changed (a link
 * that fails there is marked dead and the repair starts over).  Errors:
 * MOE_ERR_CLOSED when no live link is left. */
moe_err moe_clu_repair(moe_cluster *c);

/* rebalance.c */

/* Allocates the load counters and the rebalancer's state (after place).
 * Errors: MOE_ERR_NOMEM, MOE_ERR_SYS. */
moe_err moe_clu_rebalance_init(moe_cluster *c);
void moe_clu_rebalance_free(moe_cluster *c);

/* If l has an ASSIGN of the rebalancer in flight, waits for it to finish
 * (a change that is under way when a worker is lost is abandoned). */
moe_err moe_clu_rebalance_drain(moe_cluster *c, clink *l);

/* heartbeat.c */

/* Takes l's control lock (ctl_mu) while the heartbeat thread runs (else a
 * no-op); try: false when the other thread holds it. */
void moe_clu_ctl_lock(moe_cluster *c, clink *l);
bool moe_clu_ctl_trylock(moe_cluster *c, clink *l);
void moe_clu_ctl_unlock(moe_cluster *c, clink *l);

/* The owner's side of moe_cluster_heartbeat while the heartbeat thread runs:
 * marks dead the links it found lost, takes back those it re-admitted, and
 * repairs the placement when something changed or the last repair failed.
 * Errors: moe_clu_repair's. */
moe_err moe_clu_watch_apply(moe_cluster *c);

/* Stops and joins the heartbeat thread (a no-op without one). */
void moe_clu_watch_stop(moe_cluster *c);

/* dispatch.c */

/* ERROR replies in a row a worker may give (each one's pairs sent again, to
 * a replica or to it) before the next marks it dead. */
#define MOE_CLU_ERROR_RETRIES 2

/* The moe_expert_backend's start and finish (coordinator.h) with ctx a
 * lane of the cluster: quantise and send a layer's tokens; run the local experts, gather
 * the results, retry what failed.  Errors: MOE_ERR_INVAL (a bad layer or
 * size), MOE_ERR_NOMEM, MOE_ERR_CLOSED (no worker left for some expert). */
moe_err moe_clu_backend_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                              const float *weights, int n_used);
moe_err moe_clu_backend_finish(void *ctx, moe_fix_t *acc);

/* Resets link i's dispatch state: no lane waits for its answer (what was
 * sent there stays to do), its fifo is empty, its ERROR replies in a row
 * are none.  For a link marked dead, or taken back between steps. */
void moe_clu_link_reset(moe_cluster *c, int i);

/* Sets up the two lanes of c (before any dispatch). */
void moe_clu_lanes_init(moe_cluster *c);

/* Frees the lanes' buffers (per layer and per link). */
void moe_clu_free_buffers(moe_cluster *c);

#endif
