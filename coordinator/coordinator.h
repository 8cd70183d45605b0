/*
 * coordinator.h - the public header of coordinator/, the coordinator's side
 * of expert parallelism: a set of worker
 * links, a placement of every (layer, expert) on one or more of them, and a
 * moe_expert_backend that sends each layer's tokens to the workers that hold
 * their chosen experts and adds up the exact partial sums they return.
 *
 * Wire (proto/proto.h): nng for control; DISPATCH/RESULT on a plain stream
 * socket per worker.  Per layer, start() quantises the FFN input once to the
 * activation form of the layer's gate weights, groups tokens by worker and
 * writes every involved worker's frame (writev, payload from where it lies);
 * finish() computes the experts this process hosts itself ("local"), then
 * waits on all data sockets at once (poll) and adds each RESULT's moe_fix_t
 * rows into the accumulator.  Integer addition is associative, so the logits
 * are bit-identical to the single-process run whatever the placement, the
 * number of workers and the order results arrive in.
 *
 * Failures: a worker whose data socket closes, errors, answers with ERROR or
 * misses the per-dispatch deadline is marked dead; its unanswered (token,
 * expert) pairs are sent again to a live replica, and experts with no live
 * holder are re-assigned (ASSIGN + load) to the survivors first.  The layer
 * then completes with identical bits.  With nobody left the step fails with
 * MOE_ERR_CLOSED.  A spawned worker (--workers N) that does not end cleanly
 * (a crash, even one that failover hid) is reported by moe_cluster_shutdown.
 */
#ifndef MOE_COORDINATOR_H
#define MOE_COORDINATOR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "model/model.h"

#define MOE_CLUSTER_MAX_LINKS 64

typedef enum moe_place_kind {
	MOE_PLACE_MEMORY = 0,      /* contiguous expert ranges per layer, sized by memory */
	MOE_PLACE_ROUND_ROBIN = 1, /* expert e on link e % n */
} moe_place_kind;

typedef struct moe_cluster_opts {
	const char *urls[MOE_CLUSTER_MAX_LINKS];  /* tcp://, ipc://, or "local" (this process) */
	const char *names[MOE_CLUSTER_MAX_LINKS]; /* per URL: the name messages and statistics
	                                           * give it (NULL = what the worker announces) */
	uint64_t mem_caps[MOE_CLUSTER_MAX_LINKS]; /* per URL: expert bytes it may hold at most
	                                           * (the cluster file's "mem"; 0 = no cap) */
	int n_urls;
	int spawn;          /* --workers N: start N local workers (this program) on ipc:// */
	int worker_threads; /* threads of spawned workers (0 = CPUs / (N + 1), >= 1) */
	const char *secret_file;
	moe_place_kind place;
	const char *replicate; /* NULL, "all" (every expert on two links) or "E,E,..."
	                        * (those experts of every layer on every link) */
	int timeout_ms;        /* per-dispatch deadline (0 = 10000) */
	int net_delay_us;      /* passed to spawned workers (--net-delay-us) */
	/* the cluster file's node figures, read by `moemesh plan` (0 = not given) */
	double bw[MOE_CLUSTER_MAX_LINKS];      /* per URL: memory bandwidth, bytes/s ("bw") */
	double rtt_us[MOE_CLUSTER_MAX_LINKS];  /* per URL: round trip to it ("rtt_us") */
	double net_bps[MOE_CLUSTER_MAX_LINKS]; /* per URL: link bandwidth, bytes/s ("net") */
	double gops[MOE_CLUSTER_MAX_LINKS];    /* per URL: weight kernels' 1e9 ops/s ("gops") */
	const char *coord_name;                /* "coordinator": {"name", "mem", "bw", "gops"} */
	uint64_t coord_mem;
	double coord_bw, coord_gops;
} moe_cluster_opts;

/* If argv[*i] is a cluster option (--worker URL, --workers N, --cluster FILE,
 * --placement memory|round-robin, --replicate all|E,E.., --secret-file F,
 * --worker-threads N, --dispatch-timeout-ms N, --net-delay-us N), consumes it
 * and its value (advancing *i) and returns MOE_OK; MOE_ERR_NOT_FOUND if it is
 * not one; MOE_ERR_INVAL (detail says why) for a bad value or an unreadable
 * --cluster file, o unchanged.  The cluster file (deploy/cluster.example.json)
 * is a JSON object with the keys "workers" (an array of URL strings or
 * {"url": URL, "name": NAME, "mem": SIZE} objects; mem caps the expert bytes
 * that worker holds, replicas counted, and placement sizes its share by it;
 * plan's figures "bw": RATE, "rtt_us": N, "net": RATE, "gops": N may be given
 * too), "coordinator" ({"name", "mem": SIZE, "bw": RATE, "gops": N}: its box, for
 * plan), "placement", "replicate",
 * "secret_file" and "dispatch_timeout_ms", all optional but "workers"; any
 * other key, at the top or in a worker object, is an error that names it.
 * The file's strings stay allocated for the life of the process. */
moe_err moe_cluster_parse_arg(moe_cluster_opts *o, int *i, int argc, char **argv);

/* The usage lines of those options. */
const char *moe_cluster_usage(void);

/* Whether o asks for a cluster at all. */
bool moe_cluster_wanted(const moe_cluster_opts *o);

typedef struct moe_cluster moe_cluster;

/* Starts spawned workers, connects to every URL (HELLO: protocol version and
 * model identity checked, HMAC challenge-response both ways if a secret is
 * set; AUTH_OK: the data socket), computes the placement and has every worker
 * load its experts.  m (opened from model_path) must outlive the cluster.
 * Errors: MOE_ERR_MISMATCH (a worker has another model: the detail says so),
 * MOE_ERR_AUTH, MOE_ERR_CLOSED / MOE_ERR_TIMEOUT (a worker died or did not
 * answer: the detail names it), MOE_ERR_INVAL, MOE_ERR_NOMEM, MOE_ERR_SYS. */
moe_err moe_cluster_create(moe_cluster **out, const moe_model *m, const char *model_path,
                           const moe_cluster_opts *o);

/* Ends the workers this cluster spawned (--workers N): SHUTDOWN to each live
 * one (SIGTERM to one already lost), up to 10 s for all to exit, SIGKILL for
 * those still there; reaps every one.  Returns MOE_OK if each exited with
 * status 0 of its own accord, else MOE_ERR_CLOSED with a detail that names
 * each that did not (killed by a signal, a non-zero exit status such as an
 * AddressSanitizer report's, or killed here), even when failover had hidden
 * its loss.  Workers named by URL keep running.  Call it once, after the
 * last step (the cluster computes nothing on spawned workers after it), then
 * moe_cluster_destroy; programs print its error and exit non-zero.  NULL:
 * MOE_OK. */
moe_err moe_cluster_shutdown(moe_cluster *c);

/* Ends the spawned workers as moe_cluster_shutdown does if it was not called
 * (without a report: the thread's error detail is left as it was), closes
 * every link, frees c.  NULL is a no-op. */
void moe_cluster_destroy(moe_cluster *c);

/* The backend to put in moe_fwd_opts.experts; valid while c lives. */
const moe_expert_backend *moe_cluster_backend(moe_cluster *c);

/* The pool for quantising activations and for local experts (NULL = one
 * thread); pass moe_fwd_pool() of the context that uses the backend. */
void moe_cluster_set_pool(moe_cluster *c, moe_pool *pool);

/* Sends a HEARTBEAT to every live worker and waits for the echoes (up to the
 * dispatch deadline); a worker that does not answer is marked dead and its
 * experts re-placed.  Errors: MOE_ERR_CLOSED if no holder is left for some
 * expert. */
moe_err moe_cluster_heartbeat(moe_cluster *c);

typedef struct moe_cluster_link_stats {
	char name[64];
	char url[128];
	bool local, alive;
	uint64_t experts_held; /* (layer, expert) pairs */
	uint64_t bytes_loaded; /* expert bytes (as the worker reports) */
	double load_seconds;
	uint64_t dispatches; /* answered */
	uint64_t rtt_ns;     /* sum of round trips (send .. result parsed) */
	uint64_t compute_ns; /* sum of the worker's reported compute */
} moe_cluster_link_stats;

typedef struct moe_cluster_counters {
	uint64_t layers;    /* start/finish pairs */
	uint64_t start_ns;  /* in start(): quantise + send */
	uint64_t local_ns;  /* experts computed in this process */
	uint64_t wait_ns;   /* in finish(), waiting for results */
	uint64_t worker_ns; /* sum over layers of the slowest worker's compute */
	uint64_t retries;   /* (token, expert) pairs sent again after a failure */
	uint64_t reassigns; /* experts re-loaded onto survivors */
} moe_cluster_counters;

int moe_cluster_n_links(const moe_cluster *c);
moe_cluster_link_stats moe_cluster_link(const moe_cluster *c, int i);
moe_cluster_counters moe_cluster_get_counters(const moe_cluster *c);

/* Prints one line per link: experts held, bytes loaded, dispatches, mean
 * round trip, worker compute. */
void moe_cluster_print_stats(const moe_cluster *c, FILE *f);

/* ---- plan (plan.c) ------------------------------------------------------------ */

/* What `moemesh plan` is asked for; moe_plan_opts_default fills each. */
typedef struct moe_plan_opts {
	int n_ctx;               /* positions per sequence (default: the model's context_length) */
	int n_parallel;          /* sequences decoding at once (default 4, as serve) */
	moe_type kv_type;        /* F16 (default), F32, Q8_0 or Q4_0 */
	uint64_t cache_bytes;    /* prefix-cache budget (default 8192 MiB, serve's --cache-ram) */
	uint64_t overhead_bytes; /* coordinator's scratch, pools, server (default 1 GiB) */
	int n_layer;             /* trunk layers to plan for (0 = the file's; else a multiple of
	                          * them: the file's layers repeat, see DESIGN "Planning") */
	int depth;               /* context depth of the decode estimate (default 0) */
	double efficiency;       /* fraction of "bw" that weight reads reach (default 0.8) */
	double bw;               /* bytes/s of a node that states no "bw" (0 = unknown) */
	double worker_bw;        /* the same for workers (0 = bw) */
	double gops;             /* 1e9 ops/s of a node that states no "gops" (0 = no compute
	                          * bound: bandwidth alone) */
	double rtt_us;           /* round trip of a worker that states no "rtt_us" (default 100) */
	double net_bps;          /* link of a worker that states no "net" (default 1.25e9) */
} moe_plan_opts;

void moe_plan_opts_default(moe_plan_opts *o);

#define MOE_PLAN_NODES   (MOE_CLUSTER_MAX_LINKS + 1)
#define MOE_PLAN_BATCHES 3 /* decode estimates at batch 1, 4, 16 */

typedef struct moe_plan_node {
	char name[64];
	char url[256]; /* "" for the coordinator */
	bool coordinator;
	uint64_t mem; /* its "mem" (coordinator: all it holds; worker: expert cap); 0 none */
	uint64_t dense, kv, state, cache, overhead; /* coordinator only */
	uint64_t experts; /* expert bytes held, replicas counted ("local" on the coordinator) */
	uint64_t expert_pairs; /* (layer, expert) pairs held */
	uint64_t total;        /* what it holds: the sum of the above */
	double bw, rtt_us, net_bps, gops;
} moe_plan_node;

typedef struct moe_plan {
	char model[32]; /* architecture */
	int n_layer, n_layer_file, n_attn, n_rec, n_expert, n_used, n_ctx, n_parallel;
	moe_type kv_type;
	uint64_t dense_bytes;  /* coordinator weights: all but the routed experts */
	uint64_t dense_read;   /* of those, read every step (not token_embd's rows, not MTP) */
	uint64_t dense_params; /* values of dense_read (a multiply-add each per token) */
	uint64_t expert_bytes; /* all routed experts, each once */
	uint64_t kv_block;     /* bytes of one KV block (MOE_FWD_KV_BLOCK positions) */
	uint64_t kv_seq;       /* KV of one sequence at n_ctx (whole blocks) */
	uint64_t state_seq;    /* DeltaNet conv + recurrent state of one sequence */
	int n_nodes;           /* nodes[0] is the coordinator, then one per worker */
	moe_plan_node nodes[MOE_PLAN_NODES];
	int64_t max_ctx;      /* at n_parallel, whole KV blocks (-1: coordinator mem unknown) */
	int64_t max_parallel; /* at n_ctx (-1: unknown) */
	int depth;
	double efficiency;
	struct {
		int batch;
		double distinct; /* expected distinct experts per layer */
		double coord_s, workers_s, net_s, step_s;
		double tok_s_stream, tok_s_total;
	} speed[MOE_PLAN_BATCHES];
	bool fits;
	char why[512]; /* when !fits: the node, what is short and by how much */
} moe_plan;

/* Plans model m (the layers of the file, or po->n_layer of them) on the
 * cluster o (its URLs, caps and figures; o->spawn local workers count as
 * workers with no figures) without contacting anyone: the bytes each node
 * holds, with the experts placed by the placement moe_cluster_create uses
 * (workers with no "mem" cap taken as equal), the largest context and
 * parallel sequences the coordinator's "mem" allows, and the decode estimate
 * (DESIGN "Planning").  A plan that does not fit is still filled, with
 * fits false and why set (the same words as the refusal at start).  Errors:
 * MOE_ERR_INVAL (bad options: the detail says which), MOE_ERR_UNSUPPORTED (no
 * routed experts), MOE_ERR_NOMEM.  *out is large (~40 KiB): allocate it. */
moe_err moe_plan_compute(moe_plan *out, const moe_model *m, const moe_cluster_opts *o,
                         const moe_plan_opts *po);

/* Writes p as a table (text) or one JSON object (json) to f. */
void moe_plan_print(const moe_plan *p, bool json, FILE *f);

/* A rate as the cluster file writes it ("215GB/s", "10Gbit/s", "900MB/s",
 * "1.5GiB/s" or a number of bytes/s) into *out bytes/s; MOE_ERR_INVAL else. */
moe_err moe_parse_rate(double *out, const char *s);

#endif
