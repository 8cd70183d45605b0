/*
 * bench.h - the benchmarks behind `moemesh bench NAME`. Each takes the
 * arguments after its name (argv[0] is the name) and returns an exit status
 * like the commands (0 ok, 1 runtime error, 2 usage).
 */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "kernels/kernels.h"

typedef struct moe_bench {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
} moe_bench;

/* The table of benchmarks, terminated by an entry with name NULL. */
extern const moe_bench moe_benches[];

/* STREAM triad a[i] = b[i] + 3 * c[i] on three arrays of n_doubles doubles,
 * kept so that a benchmark can measure it next to each of its own
 * measurements (this machine's bandwidth moves by a third from one second to
 * the next); every benchmark that states a % of the memory roofline measures
 * it with this.  create: arrays first touched on pool's threads (as they are
 * then read); MOE_ERR_NOMEM without memory (*out NULL).  run: the best of
 * reps passes on pool (any pool) in GB/s, counting 3 x 8 bytes per element
 * as STREAM does.  destroy(NULL) is a no-op. */
typedef struct moe_bench_triad moe_bench_triad;
moe_err moe_bench_triad_create(moe_bench_triad **out, moe_pool *pool, size_t n_doubles);
double moe_bench_triad_run(moe_bench_triad *t, moe_pool *pool, int reps);
void moe_bench_triad_destroy(moe_bench_triad *t);

/* A delaying TCP relay (relay.c): listens on listen_host:listen_port (0 =
 * any: moe_relay_port says which) and joins each connection it accepts to
 * to_host:to_port (a refused connect is retried for up to 10 s: the target
 * may be starting), passing the bytes of each direction on hold_us after it
 * read them (TCP_NODELAY both sides; an EOF is passed on after the last
 * held byte, a reset ends both directions).  netns: NULL, or the name of a
 * network namespace (/var/run/netns/NAME, as `ip netns` makes) whose network
 * its sockets live in; the calling thread's stays as it was.  Threads: its
 * own (one accepting, two per connection); create and destroy from one
 * thread.  Errors: MOE_ERR_INVAL, MOE_ERR_SYS (namespace, listen), MOE_ERR_NOMEM.
 * destroy: closes every connection, joins its threads; NULL is a no-op. */
typedef struct moe_relay_opts {
	const char *listen_host, *to_host, *netns;
	uint16_t listen_port, to_port;
	int hold_us;
} moe_relay_opts;
typedef struct moe_relay moe_relay;
moe_err moe_relay_create(moe_relay **out, const moe_relay_opts *o);
uint16_t moe_relay_port(const moe_relay *r);
void moe_relay_destroy(moe_relay *r);

/* The overlap A/B (bench_overlap.c) on a cluster made from co: per batch,
 * steps of a context with the overlap backend and of one without alternate;
 * prints step times, dispatch waits and the share of the wait hidden, and
 * appends label,batch,... to csv (NULL: none).  Returns 0, 1 (an error, or
 * logits that differ), 2 (bad options). */
struct moe_cluster_opts;
typedef struct moe_bench_overlap_opts {
	const char *model, *label, *csv;
	const struct moe_cluster_opts *co;
	int batches[8], n_batches; /* 2..64 sequences */
	int steps, threads;
} moe_bench_overlap_opts;
typedef struct moe_bench_overlap_row {
	int batch;
	double step_on_ms, step_off_ms; /* medians */
	double wait_on_ms, wait_off_ms; /* medians per step */
	double hidden;                  /* (step_off - step_on) / wait_off */
	bool same;                      /* the logits' bits */
} moe_bench_overlap_row;
struct moe_model;
int moe_bench_overlap_ab(struct moe_model *m, const moe_bench_overlap_opts *o);

struct moe_model;
struct moe_cluster_opts;

/* One configuration's decode speed (bench cluster, bench cluster --netns). */
typedef struct moe_bench_decode_out {
	double tok_s;                       /* batch tokens per second of the timed steps */
	double coord_us, net_us, worker_us; /* per layer; net and worker 0 without workers */
	uint64_t fnv;                       /* FNV-1a over every step's logits' bits */
} moe_bench_decode_out;

/* Decodes `batch` sequences for 2 warm-up + `steps` timed steps (tokens
 * (s*31 + b*7 + 1) mod vocab at position s) on m, in this process (co NULL)
 * or with a cluster made from co on model_path; times each step's
 * moe_fwd_step only (the logits are hashed outside it).  The split per
 * layer: coordinator = step time - the cluster's wait, worker = its worker
 * compute, net = the rest of the wait.  Errors: the cluster's, the forward
 * pass's, MOE_ERR_NOMEM; batch 1..64. */
moe_err moe_bench_decode(moe_bench_decode_out *out, struct moe_model *m, const char *model_path,
                         const struct moe_cluster_opts *co, int batch, int steps, int threads);

/* A gnuplot script DIR/NAME.gp that will write DIR/NAME.png, opened with
 * its terminal (pngcairo w x h, noenhanced), output, comma-separated data
 * and a 1 x 2 multiplot already set; the caller writes the two plots.
 * NULL after printing why there will be no plot (no gnuplot on the PATH,
 * the file not writable). */
FILE *moe_bench_plot_open(const char *dir, const char *name, int w, int h);
/* Ends f's multiplot, closes f and runs gnuplot on DIR/NAME.gp; prints
 * "plot: DIR/NAME.png" or that gnuplot failed. */
void moe_bench_plot_run(FILE *f, const char *dir, const char *name);

int moe_bench_kernels(int argc, char **argv);
int moe_bench_tokenizer(int argc, char **argv);
int moe_bench_e2e(int argc, char **argv);
int moe_bench_serve(int argc, char **argv);
int moe_bench_cluster(int argc, char **argv);
int moe_bench_cluster_netns(int argc, char **argv); /* bench cluster --netns */
int moe_bench_rebalance(int argc, char **argv);
int moe_bench_grammar(int argc, char **argv);
int moe_bench_agent(int argc, char **argv);
int moe_bench_quality(int argc, char **argv);
int moe_bench_soak(int argc, char **argv);
int moe_bench_trace(int argc, char **argv);
int moe_bench_chaos(int argc, char **argv);
int moe_bench_multicoord(int argc, char **argv);

#endif
