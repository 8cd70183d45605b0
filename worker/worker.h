/*
 * worker.h - the public header of worker/: an expert store that holds a slice
 * of the routed experts of a GGUF model, loaded with io_uring, and
 * the dispatch server that runs them for the coordinator.
 *
 * A worker holds no request state: what it computes for a dispatch is a pure
 * function of (layer, activations, expert ids, weights) and its weights.
 */
#ifndef MOE_WORKER_H
#define MOE_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "proto/proto.h"

/* ---- expert store ------------------------------------------------------------ */

/* The three stacked expert tensors of a layer. */
enum { MOE_EXP_GATE = 0, MOE_EXP_UP = 1, MOE_EXP_DOWN = 2 };

typedef struct moe_expert_store moe_expert_store;

typedef struct moe_store_stats {
	uint64_t bytes_read;   /* from the file, alignment slack included */
	uint64_t bytes_held;   /* expert weights held */
	uint64_t experts_held; /* (layer, expert) pairs */
	double seconds;        /* wall time of the load */
	bool direct;           /* O_DIRECT was used (else buffered reads) */
	bool registered;       /* buffers were registered with io_uring */
} moe_store_stats;

typedef struct moe_store_opts {
	bool no_direct;     /* force buffered reads */
	unsigned depth;     /* reads in flight; 0 = 16 */
	size_t chunk_bytes; /* bytes per read; 0 = 1 MiB */
	/* Called after each completed read with bytes done and total; may be NULL. */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	/* Asked before each batch of reads (may be NULL): true stops the load
	 * with MOE_ERR_CLOSED. */
	bool (*stop)(void *ctx);
	void *progress_ctx; /* of progress and stop */
} moe_store_opts;

/* Loads, for every layer l < n_layer and expert e < n_expert with
 * held[l * n_expert + e] != 0, expert e's slices of blk.l.ffn_{gate,up,down}_exps
 * from the GGUF file at path (g: that file, opened, used for the tensor table
 * only; for a split model path is the first file and the others are read
 * from the paths g opened them by). Reads only those slices (contiguous experts in one run), with
 * io_uring, O_DIRECT and registered buffers where the file system and limits
 * allow, else buffered reads. opts may be NULL. Errors: MOE_ERR_NOT_FOUND /
 * MOE_ERR_BAD_SHAPE (tensors absent or not [*, *, n_expert]), MOE_ERR_IO,
 * MOE_ERR_NOMEM, MOE_ERR_SYS (io_uring). On success *out owns the weights. */
moe_err moe_expert_store_load(moe_expert_store **out, const char *path, const moe_gguf *g,
                              int n_layer, int n_expert, const uint8_t *held,
                              const moe_store_opts *opts);

/* An empty store for the expert tensors of g (the GGUF at path; both must
 * outlive the store): their types, shapes and places are read and checked
 * here.  Errors: MOE_ERR_NOT_FOUND / MOE_ERR_BAD_SHAPE as above, MOE_ERR_INVAL,
 * MOE_ERR_NOMEM. */
moe_err moe_expert_store_create(moe_expert_store **out, const char *path, const moe_gguf *g,
                                int n_layer, int n_expert);

/* Frees everything; NULL is a no-op. */
void moe_expert_store_destroy(moe_expert_store *s);

/* Changing what a store holds by slices, while it serves: a load reads into
 * buffers of its own the experts that a held table names and s lacks.
 * prepare plans and allocates (on the thread that owns s; nothing is read);
 * read does the reading (io_uring, as moe_expert_store_load) and may run on
 * another thread while s is read and used, but not changed; commit (on the
 * owning thread) makes the experts s's, without a copy, and frees ld, or
 * fails with MOE_ERR_NOMEM leaving s and ld as they were.  Errors of
 * prepare: MOE_ERR_INVAL, MOE_ERR_NOMEM; of read: MOE_ERR_IO, MOE_ERR_NOMEM,
 * MOE_ERR_SYS, MOE_ERR_MISMATCH (the file changed), MOE_ERR_CLOSED (opts->stop
 * said so).  moe_store_load_destroy frees a load not committed (NULL: no-op). */
typedef struct moe_store_load moe_store_load;
moe_err moe_store_load_prepare(moe_store_load **out, const moe_expert_store *s,
                               const uint8_t *held);
moe_err moe_store_load_read(moe_store_load *ld, const moe_store_opts *opts);
moe_err moe_store_load_commit(moe_expert_store *s, moe_store_load *ld);
void moe_store_load_destroy(moe_store_load *ld);

/* Expert bytes (slices, no alignment slack) that ld adds. */
uint64_t moe_store_load_bytes(const moe_store_load *ld);

/* Drops every held expert that held[l * n_expert + e] does not name; the
 * others stay where they are.  Sets the expert bytes and (layer, expert)
 * pairs dropped (either may be NULL).  Pages holding only dropped bytes go
 * back to the system at once. */
void moe_expert_store_keep(moe_expert_store *s, const uint8_t *held, uint64_t *bytes_dropped,
                           uint64_t *experts_dropped);

/* Expert e's matrix `which` (MOE_EXP_*) of layer l, or NULL if not held or
 * out of range. */
const void *moe_expert_store_get(const moe_expert_store *s, int layer, int which, int expert);

/* Type and shape of matrix `which` of layer l: rows of n_cols values. Returns
 * false if the layer is out of range. */
bool moe_expert_store_shape(const moe_expert_store *s, int layer, int which, moe_type *type,
                            int64_t *n_cols, int64_t *n_rows);

/* Whether the Q2_K and Q3_K experts this store reads are repacked in place,
 * right after their read, into the lanes layouts of the kernels' faster
 * products (moe_repack_rows; the same bytes, arranged otherwise: the FFN
 * views must set moe_expert_mat.lanes where moe_expert_store_lanes says so).
 * Call before the first load is prepared: MOE_ERR_INVAL once it holds
 * experts.  Off by default. */
moe_err moe_expert_store_set_lanes(moe_expert_store *s, bool on);

/* Whether matrix `which` of layer l is held in a lanes layout (the store's
 * lanes on and the type Q2_K or Q3_K); false out of range. */
bool moe_expert_store_lanes(const moe_expert_store *s, int layer, int which);

moe_store_stats moe_expert_store_stats(const moe_expert_store *s);

/* ---- dispatch server ------------------------------------------------------------- */

typedef struct moe_worker_opts {
	const char *model_path;  /* the GGUF (only its expert slices are read) */
	const char *listen_url;  /* control: tcp://HOST:PORT or ipc://PATH (nng) */
	int n_threads;           /* expert FFN threads; 0 = one per CPU */
	const char *secret_file; /* shared secret for HMAC challenge-response; NULL = none */
	const char *name;        /* announced in HELLO_REPLY */
	uint64_t mem_bytes;      /* memory offered for experts; 0 = MemAvailable */
	uint16_t data_port;      /* TCP data port; 0 = any (announced in AUTH_OK) */
	int net_delay_us;        /* injected delay before reading a dispatch and before its
	                          * result (latency experiments); 0 = none */
	int ready_fd;            /* if >= 0: one byte is written and the fd closed once the
	                          * worker listens (process supervisors); else -1 */
	int stop_fd;             /* if >= 0: once it is readable (a byte from a signal
	                          * handler) the worker stops as on SHUTDOWN; else -1 */
	bool quiet;              /* no log lines on stderr */
	int auth_timeout_ms;     /* a control peer or data connection that has not
	                          * authenticated this long after it came is dropped;
	                          * 0 = 10000 */
	int max_preauth_per_ip;  /* control peers, and data connections, not yet
	                          * authenticated from one address (IPv4 or IPv6;
	                          * ipc:// has none): a new one past it is closed at
	                          * once; 0 = 4 */
	/* Observers for tests (tests/worker_harness.c injects faults with them);
	 * production leaves them NULL.  Called on the serving thread with
	 * observer_ctx; they may end the process.  on_assign: an authenticated
	 * ASSIGN arrived (before it is read).  on_computed: a DISPATCH was
	 * computed, n_computed counting it; its RESULT is sent once this returns.
	 * fail_dispatch: a valid DISPATCH arrived; true answers it with an ERROR
	 * instead of computing it (a transient failure). */
	void (*on_assign)(void *ctx);
	void (*on_computed)(void *ctx, uint64_t n_computed);
	bool (*fail_dispatch)(void *ctx);
	void *observer_ctx;
} moe_worker_opts;

/* Serves the cluster protocol (proto/proto.h, server.c) on o->listen_url until
 * an authenticated SHUTDOWN arrives or o->stop_fd becomes readable (then it
 * frees everything and returns MOE_OK).  Bad frames from peers are answered and
 * counted, never fatal.  Errors (set-up only): those of moe_gguf_open,
 * moe_hparams_load, moe_secret_read, MOE_ERR_INVAL/IO (cannot listen),
 * MOE_ERR_NOMEM, MOE_ERR_SYS. */
moe_err moe_worker_run(const moe_worker_opts *o);

#endif
