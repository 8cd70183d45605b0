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
	void *progress_ctx;
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

/* Frees everything; NULL is a no-op. */
void moe_expert_store_destroy(moe_expert_store *s);

/* Expert e's matrix `which` (MOE_EXP_*) of layer l, or NULL if not held or
 * out of range. */
const void *moe_expert_store_get(const moe_expert_store *s, int layer, int which, int expert);

/* Type and shape of matrix `which` of layer l: rows of n_cols values. Returns
 * false if the layer is out of range. */
bool moe_expert_store_shape(const moe_expert_store *s, int layer, int which, moe_type *type,
                            int64_t *n_cols, int64_t *n_rows);

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
	/* Observers for tests (tests/worker_harness.c injects faults with them);
	 * production leaves them NULL.  Called on the serving thread with
	 * observer_ctx; they may end the process.  on_assign: an authenticated
	 * ASSIGN arrived (before it is read).  on_computed: a DISPATCH was
	 * computed, n_computed counting it; its RESULT is sent once this returns. */
	void (*on_assign)(void *ctx);
	void (*on_computed)(void *ctx, uint64_t n_computed);
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
