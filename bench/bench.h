/*
 * bench.h - the benchmarks behind `moemesh bench NAME`. Each takes the
 * arguments after its name (argv[0] is the name) and returns an exit status
 * like the commands (0 ok, 1 runtime error, 2 usage).
 */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

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

int moe_bench_kernels(int argc, char **argv);
int moe_bench_tokenizer(int argc, char **argv);
int moe_bench_e2e(int argc, char **argv);
int moe_bench_serve(int argc, char **argv);
int moe_bench_cluster(int argc, char **argv);
int moe_bench_rebalance(int argc, char **argv);
int moe_bench_grammar(int argc, char **argv);
int moe_bench_agent(int argc, char **argv);
int moe_bench_quality(int argc, char **argv);
int moe_bench_soak(int argc, char **argv);
int moe_bench_chaos(int argc, char **argv);

#endif
