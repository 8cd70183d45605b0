/* bench.c - the table of benchmarks behind `moemesh bench NAME`, the
 * STREAM triad every benchmark measures next to its own figures, and the
 * gnuplot script the plotting benchmarks share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/core.h"

const moe_bench moe_benches[] = {
    {"kernels", "STREAM triad, GEMV bandwidth and GEMM throughput per weight type",
     moe_bench_kernels},
    {"tokenizer", "tokenizer encode/decode MB/s on mixed text, one core", moe_bench_tokenizer},
    {"e2e", "single-process prefill / decode tok/s of a model vs the memory roofline",
     moe_bench_e2e},
    {"serve", "concurrent streaming clients against moemesh serve: tok/s, TTFT, ITL",
     moe_bench_serve},
    {"cluster", "decode tok/s with 0-3 workers, dispatch round trip vs raw TCP, shard load",
     moe_bench_cluster},
    {"rebalance", "imbalance and decode tok/s on a skewed routing before and after a re-placement",
     moe_bench_rebalance},
    {"grammar", "constrained decoding: tool-schema compile, per-step token check and full mask",
     moe_bench_grammar},
    {"agent", "a synthetic agent session: TTFT per turn with and without the prefix cache",
     moe_bench_agent},
    {"quality",
     "perplexity over a text, KL and top-1 against a reference model (llama-perplexity's)",
     moe_bench_quality},
    {"soak", "clients that cancel and disconnect for minutes: RSS, fds, ITL p99, 429s",
     moe_bench_soak},
    {"trace", "replay a routing trace against a placement: load per worker, distinct experts",
     moe_bench_trace},
    {"chaos", "workers killed or frozen under serve while clients stream: identical bytes",
     moe_bench_chaos},
    {"multicoord", "two workers served by 1 and by 2 coordinators: aggregate tok/s",
     moe_bench_multicoord},
    {NULL, NULL, NULL},
};

typedef struct triad_job {
	double *a, *b, *c;
	size_t n;
	int init;
} triad_job;

struct moe_bench_triad {
	triad_job j;
};

static void triad_fn(void *arg, int ith, int nth)
{
	triad_job *j = arg;
	size_t lo = j->n * (size_t)ith / (size_t)nth, hi = j->n * (size_t)(ith + 1) / (size_t)nth;
	double *restrict a = j->a, *restrict b = j->b, *restrict c = j->c;
	if (j->init) {
		for (size_t i = lo; i < hi; i++) {
			a[i] = 0.0;
			b[i] = 1.0;
			c[i] = 2.0;
		}
		return;
	}
	for (size_t i = lo; i < hi; i++)
		a[i] = b[i] + 3.0 * c[i];
}

void moe_bench_triad_destroy(moe_bench_triad *t)
{
	if (t == NULL)
		return;
	moe_aligned_free(t->j.c);
	moe_aligned_free(t->j.b);
	moe_aligned_free(t->j.a);
	free(t);
}

moe_err moe_bench_triad_create(moe_bench_triad **out, moe_pool *pool, size_t n_doubles)
{
	*out = NULL;
	moe_bench_triad *t = calloc(1, sizeof(*t));
	if (t == NULL || n_doubles == 0)
		goto out_fail;
	t->j.n = n_doubles;
	t->j.a = moe_aligned_alloc(64, n_doubles * sizeof(double));
	t->j.b = moe_aligned_alloc(64, n_doubles * sizeof(double));
	t->j.c = moe_aligned_alloc(64, n_doubles * sizeof(double));
	if (t->j.a == NULL || t->j.b == NULL || t->j.c == NULL)
		goto out_fail;
	t->j.init = 1;
	moe_pool_run(pool, triad_fn, &t->j);
	t->j.init = 0;
	*out = t;
	return MOE_OK;
out_fail:
	moe_bench_triad_destroy(t);
	return moe_fail(MOE_ERR_NOMEM, "triad: 3 x %zu doubles", n_doubles);
}

double moe_bench_triad_run(moe_bench_triad *t, moe_pool *pool, int reps)
{
	double best = 1e30;
	for (int rep = 0; rep < reps; rep++) {
		const double t0 = moe_now_s();
		moe_pool_run(pool, triad_fn, &t->j);
		const double dt = moe_now_s() - t0;
		best = dt < best ? dt : best;
	}
	return 3.0 * (double)(t->j.n * sizeof(double)) / best / 1e9;
}

FILE *moe_bench_plot_open(const char *dir, const char *name, int w, int h)
{
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		printf("gnuplot not found: no plot\n");
		return NULL;
	}
	char script[1100];
	snprintf(script, sizeof script, "%s/%s.gp", dir, name);
	FILE *f = fopen(script, "w");
	if (f == NULL) {
		printf("cannot write %s: no plot\n", script);
		return NULL;
	}
	fprintf(f,
	        "set terminal pngcairo size %d,%d noenhanced\nset output '%s/%s.png'\n"
	        "set datafile separator ','\nset multiplot layout 1,2\n",
	        w, h, dir, name);
	return f;
}

void moe_bench_plot_run(FILE *f, const char *dir, const char *name)
{
	fprintf(f, "unset multiplot\n");
	fclose(f);
	char cmd[2300];
	snprintf(cmd, sizeof cmd, "gnuplot '%s/%s.gp' 2>/dev/null", dir, name);
	if (system(cmd) == 0)
		printf("plot: %s/%s.png\n", dir, name);
	else
		printf("gnuplot failed: no plot\n");
}
