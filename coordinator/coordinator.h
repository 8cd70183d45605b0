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

struct moe_cluster;

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
	bool insecure; /* --insecure: tcp:// workers off loopback without a secret */
	bool overlap;  /* --overlap: two micro-batches (moe_cluster_overlap_backend); default off,
	                * --no-overlap says so too (it did not pay on the shared VM: DESIGN) */
	moe_place_kind place;
	const char *replicate; /* NULL, "all" (every expert on two links) or "E,E,..."
	                        * (those experts of every layer on every link) */
	int timeout_ms;        /* per-dispatch deadline (0 = 10000) */
	int net_delay_us;      /* passed to spawned workers (--net-delay-us) */
	bool respawn;          /* --respawn: the heartbeat thread (moe_cluster_watch) starts
	                        * a spawned worker that died again (backoff) and re-admits it */
	double rebalance_s;    /* --rebalance SECONDS: re-place experts by the load of
	                        * each such window (moe_cluster_tick); 0 = never */
	/* Called on the cluster's thread when an ASSIGN is sent, whenever a
	 * worker reports load progress (LOAD_PROGRESS) and when its load ends; c's links
	 * (moe_cluster_link: loading, load_done, load_total) say where each is.  May be NULL. */
	void (*on_load)(void *ctx, const struct moe_cluster *c);
	void *on_load_ctx;
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
 * --worker-threads N, --dispatch-timeout-ms N, --net-delay-us N, --insecure,
 * --overlap, --no-overlap), consumes it
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

/* MOE_ERR_INVAL naming the first worker URL that is not loopback
 * (moe_url_is_loopback) when o has no secret_file and not insecure, and
 * both remedies; MOE_OK otherwise. */
moe_err moe_cluster_check_secure(const moe_cluster_opts *o);

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

/* A second backend on the same workers whose call may be in flight while one
 * of moe_cluster_backend's is (its own buffers; the links answer each in
 * turn): the one to put in moe_fwd_opts.overlap, so that steps of several
 * sequences run as two micro-batches.  NULL unless the option overlap is set.
 * Valid while c lives; same thread as the first. */
const moe_expert_backend *moe_cluster_overlap_backend(moe_cluster *c);

/* The pool for quantising activations and for local experts (NULL = one
 * thread); pass moe_fwd_pool() of the context that uses the backend. */
void moe_cluster_set_pool(moe_cluster *c, moe_pool *pool);

/* First re-dials lost workers named by URL and re-admits those that answer
 * (each at most every 2 s, a 200 ms wait for the connection, then their
 * ASSIGN's load), then sends a HEARTBEAT to every live worker and waits for
 * the echoes (up to the dispatch deadline); a worker that does not answer,
 * or whose control connection closed, is marked dead and its experts
 * re-placed.  Errors: MOE_ERR_CLOSED if no holder is left for some expert. */
moe_err moe_cluster_heartbeat(moe_cluster *c);

/* Starts the cluster's heartbeat thread (coordinator/heartbeat.c): every
 * period_ms it sends a HEARTBEAT to each live worker and awaits the echoes
 * within the dispatch deadline, also while the scheduler steps, and re-dials
 * lost workers named by URL (every 2 s), re-loading a returning one's
 * experts on that thread.  From then on moe_cluster_heartbeat, on the
 * cluster's thread, takes its findings (marks dead, takes back, repairs)
 * instead of heartbeating itself: call it between steps too.  Stopped by
 * moe_cluster_shutdown / moe_cluster_destroy.  Errors: MOE_ERR_INVAL (a
 * period <= 0), MOE_ERR_NOMEM, MOE_ERR_SYS.  A second call is a no-op. */
moe_err moe_cluster_watch(moe_cluster *c, int period_ms);

typedef struct moe_cluster_link_stats {
	char name[64];
	char url[128];
	bool local, alive;
	uint64_t experts_held; /* (layer, expert) pairs */
	uint64_t bytes_loaded; /* expert bytes (as the worker reports) */
	double load_seconds;
	bool loading;                   /* an ASSIGN is being loaded */
	uint64_t load_done, load_total; /* bytes of it, as LOAD_PROGRESS says (0 before) */
	uint64_t dispatches;            /* answered */
	uint64_t rtt_ns;                /* sum of round trips (send .. result parsed) */
	uint64_t compute_ns;            /* sum of the worker's reported compute */
	uint64_t assigns;               /* ASSIGNs done */
	uint64_t assign_loaded;         /* expert bytes they loaded (as the worker reports) */
	uint64_t assign_dropped;        /* and dropped */
	uint64_t routed;                /* (token, expert) pairs sent to it */
	uint64_t errors;                /* DISPATCHes it answered with an ERROR */
} moe_cluster_link_stats;

typedef struct moe_cluster_counters {
	uint64_t layers;        /* start/finish pairs */
	uint64_t start_ns;      /* in start(): quantise + send */
	uint64_t local_ns;      /* experts computed in this process */
	uint64_t wait_ns;       /* in finish(), waiting for results */
	uint64_t worker_ns;     /* sum over layers of the slowest worker's compute */
	uint64_t retries;       /* (token, expert) pairs sent again after a failure */
	uint64_t reassigns;     /* experts re-loaded onto survivors */
	uint64_t error_retries; /* ERROR replies whose DISPATCH was sent again */
	uint64_t lost;          /* workers marked dead */
	uint64_t readmitted;    /* dead workers re-dialled and taken back */
	uint64_t stashed;       /* RESULTs of one micro-batch read by the other's wait (overlap) */
} moe_cluster_counters;

int moe_cluster_n_links(const moe_cluster *c);
moe_cluster_link_stats moe_cluster_link(const moe_cluster *c, int i);
moe_cluster_counters moe_cluster_get_counters(const moe_cluster *c);

/* Prints one line per link: experts held, bytes loaded, dispatches, mean
 * round trip, worker compute. */
void moe_cluster_print_stats(const moe_cluster *c, FILE *f);

/* ---- rebalancing (rebalance.c) ----------------------------------------------------
 * Dispatch counts the (token, expert) pairs of every layer, and those it sends
 * to each worker.  Per window the imbalance is sum over layers of the busiest
 * worker's pairs over sum over layers of the mean worker's (a layer waits for
 * its slowest worker).  A re-placement starts from the current placement and
 * per layer moves, replicates or un-replicates experts while that lowers the
 * layer's busiest worker by the window's loads (a replicated expert's tokens
 * are split between its holders), within every worker's byte budget (its
 * "mem" cap, else the memory it announced) counting what it holds and what
 * it gets until the change ends.  The change runs while serving: (1) every
 * worker that gains experts is sent the union of its old and new sets and
 * loads while it serves its old ones; (2) when all confirm, the routing
 * switches between two steps; (3) workers that lose experts are sent their
 * new sets and drop them.  Outputs do not change by a bit (the partial sums
 * are exact integers, whatever the placement). */

/* Called between steps on the cluster's thread (the serving engine's after-step
 * and idle hooks): closes a window when rebalance_s (or 10 s without
 * --rebalance) has passed, starts a re-placement if it pays and none is under
 * way, and moves one under way on as its workers confirm, never waiting for
 * a load.  Errors: those of a lost worker's repair (MOE_ERR_CLOSED). */
moe_err moe_cluster_tick(moe_cluster *c);

/* Closes the window and runs one re-placement from its loads to its end,
 * waiting for the workers (benchmarks, tests); MOE_OK with nothing changed
 * when nothing pays.  A change already under way is finished first. */
moe_err moe_cluster_rebalance(moe_cluster *c);

/* Closes the load window now (its loads are what the next plan starts from)
 * and returns its imbalance (the last one's if it had no load). */
double moe_cluster_window(moe_cluster *c);

/* Finishes the change under way, if any, waiting for the workers. */
moe_err moe_cluster_settle(moe_cluster *c);

typedef struct moe_cluster_balance {
	double imbalance;       /* of the last window closed (1 = even; 0 = no load yet) */
	double before, planned; /* at the last re-placement: the window's imbalance, and
	                         * the imbalance the new placement gives its loads */
	uint64_t rebalances;    /* routing switches to a new placement */
	uint64_t bytes_loaded;  /* expert bytes workers loaded for them */
	uint64_t bytes_dropped; /* and dropped */
	uint64_t windows;       /* load windows closed */
	uint64_t union_windows; /* of them, those whose load is the workers' counts
	                         * (every coordinator's rows, STATS expert_rows) */
} moe_cluster_balance;

/* Safe from any thread. */
moe_cluster_balance moe_cluster_get_balance(moe_cluster *c);

/* Whether dispatch routes layer il's expert e to link i now. */
bool moe_cluster_holds(const moe_cluster *c, int i, int il, int e);

/* Writes the cluster's metrics in Prometheus text: per worker the pairs
 * routed to it, the expert bytes it holds, whether it is up and its ERROR
 * replies; the failure counters (pairs retried, ERROR retries, experts
 * re-loaded onto survivors, workers lost), the imbalance, re-placements and
 * bytes moved, the load windows closed and those with the workers' counts.
 * Safe from any thread (a snapshot the tick keeps). */
void moe_cluster_metrics(moe_cluster *c, FILE *out);

/* One worker as /health shows it. */
typedef struct moe_cluster_worker_state {
	char name[64];
	bool up;
} moe_cluster_worker_state;

/* Fills out[0..max) with the workers' names and whether each is up (the
 * snapshot moe_cluster_tick keeps); returns how many.  Safe from any thread. */
int moe_cluster_worker_states(moe_cluster *c, moe_cluster_worker_state *out, int max);
/* ---- status of workers (status.c): `moemesh status`, without a cluster ---------- */

typedef enum moe_node_state {
	MOE_NODE_UP = 0,
	MOE_NODE_UNREACHABLE,    /* no answer, or nothing listens */
	MOE_NODE_AUTH_FAILED,    /* one side does not know the other's secret */
	MOE_NODE_MODEL_MISMATCH, /* set by the caller: another model identity */
	MOE_NODE_ERROR,          /* an answer that is not a valid STATUS */
} moe_node_state;

/* "up", "unreachable", "auth-failed", "model-mismatch", "error". */
const char *moe_node_state_name(moe_node_state s);

typedef struct moe_node_status {
	char url[256];
	moe_node_state state;
	char detail[256]; /* why, when not up */
	/* as the worker answered (state up) */
	char name[64];
	uint8_t model_id[32];
	char isa[16];
	uint32_t threads;
	uint64_t mem_total, mem_available, mem_offered; /* bytes */
	uint64_t bytes_loaded, experts_held;            /* experts held */
	int layers_held, n_layers;                      /* layers with experts here, of all */
	uint64_t dispatches, compute_ns, uptime_ns;
	bool coordinator; /* a coordinator is connected */
	bool loading;
	uint64_t load_done, load_total, bad_frames;
	uint64_t bytes_loaded_total; /* expert bytes every ASSIGN loaded since it started */
	uint32_t coordinators;       /* authenticated coordinators connected now */
	uint64_t dispatches_merged;  /* dispatches computed in one batch with others */
	double rtt_ms, rtt_ms_max;   /* fastest and slowest answered ping */
	double clock_offset_ms;      /* its wall clock minus ours, at the fastest ping */
	int pings_answered;
} moe_node_status;

/* Asks the worker at url (its control URL: tcp://HOST:PORT or ipc://PATH)
 * for its status n_pings times (each up to timeout_ms) on its status socket
 * (proto.h), with the secret when secret_len > 0, and fills *out: state up
 * once any ping is answered, else unreachable (no answer, refused, a host
 * that does not resolve), auth-failed (the worker refused our MAC, or its
 * answer lacks the right one) or error, with the reason in detail.  Returns
 * MOE_OK whatever the worker's state; MOE_ERR_NOMEM / MOE_ERR_SYS only for
 * this process's own failures.  Never opens the control link. */
moe_err moe_node_status_query(moe_node_status *out, const char *url, const uint8_t *secret,
                              size_t secret_len, int n_pings, int timeout_ms);
/* ---- plan (plan.c) ------------------------------------------------------------ */

/* The placement moe_cluster_create starts with for o's links (the --workers
 * N spawned ones first, then o's URLs), computed without contacting any: the
 * same moe_clu_place on the model's expert bytes and the links' "mem" caps;
 * links without a cap count as equal (start sizes those by the memory each
 * announces: give caps, or round-robin, for the two to agree exactly).
 * held[i][il * n_expert + e] is 1 where link i holds layer il's expert e;
 * name[i] as plan's node table names the link.  A link over its cap is not
 * refused here (plan reports it).  Errors: MOE_ERR_INVAL (no links, a bad
 * --replicate list), MOE_ERR_NOMEM.  moe_placement_free frees the tables. */
typedef struct moe_placement {
	int n_links, n_layer, n_expert;
	uint8_t *held[MOE_CLUSTER_MAX_LINKS];
	char name[MOE_CLUSTER_MAX_LINKS][64];
} moe_placement;
moe_err moe_placement_compute(moe_placement *out, const moe_model *m, const moe_cluster_opts *o);
void moe_placement_free(moe_placement *p);

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
	int batches[3];          /* decode estimates at these batches (0: 1, 4, 16 in turn) */
	bool mtp;                /* MTP drafting (--spec mtp): the MTP blocks' KV counts too */
	int n_coordinators;      /* coordinators sharing the workers, each holding what nodes[0]
	                          * holds and decoding its own batch (0 or 1: one) */
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
	int n_coordinators; /* each like nodes[0]; speed[] per coordinator's batch */
	moe_type kv_type;
	uint64_t dense_bytes;  /* coordinator weights: all but the trunk's routed experts */
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
	char why[1024]; /* when !fits: the node, what is short and by how much (the longest fits) */
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
