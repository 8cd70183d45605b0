/* bench.c - the table of benchmarks behind `moemesh bench NAME`, the
 * STREAM triad every benchmark measures next to its own figures, the decode
 * loop of the cluster benchmarks and the gnuplot script the plotting
 * benchmarks share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/model.h"

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

moe_err moe_bench_decode(moe_bench_decode_out *out, moe_model *m, const char *model_path,
                         const moe_cluster_opts *co, int batch, int steps, int threads)
{
	const moe_hparams *hp = moe_model_hparams(m);
	moe_cluster *cl = NULL;
	moe_fwd *f = NULL;
	moe_err err;
	if (batch < 1 || batch > 64 || steps < 1)
		return moe_fail(MOE_ERR_INVAL, "bench decode: batch %d, steps %d", batch, steps);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = batch;
	o.n_ctx = steps + 8;
	o.n_threads = threads;
	if (co) {
		if ((err = moe_cluster_create(&cl, m, model_path, co)) != MOE_OK)
			return err;
		o.experts = moe_cluster_backend(cl);
	}
	const size_t nl = (size_t)batch * (size_t)hp->n_vocab;
	float *logits = malloc(nl * sizeof *logits);
	int32_t tok[64], slot[64], pos[64];
	if (logits == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "logits");
		goto out_free;
	}
	if ((err = moe_fwd_create(&f, m, &o)) != MOE_OK)
		goto out_free;
	if (cl)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	for (int b = 0; b < batch; b++)
		if ((err = moe_fwd_seq_open(f, &slot[b])) != MOE_OK)
			goto out_free;
	moe_cluster_counters c0 = {0};
	double dt = 0;
	uint64_t h = 1469598103934665603ull;
	for (int s = 0; s < steps + 2; s++) {
		if (s == 2 && cl) /* two warm-up steps */
			c0 = moe_cluster_get_counters(cl);
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)((s * 31 + b * 7 + 1) % hp->n_vocab);
			pos[b] = s;
		}
		const moe_batch mb = {.n_tok = batch, .tokens = tok, .slot = slot, .pos = pos};
		const double t0 = moe_now_s();
		if ((err = moe_fwd_step(f, logits, &mb)) != MOE_OK)
			goto out_free;
		if (s >= 2)
			dt += moe_now_s() - t0;
		for (size_t i = 0; i < nl; i++) {
			uint32_t w;
			memcpy(&w, &logits[i], sizeof w);
			h = (h ^ w) * 1099511628211ull;
		}
	}
	const double layers = (double)steps * hp->n_layer;
	*out = (moe_bench_decode_out){
	    .tok_s = (double)steps * batch / dt, .coord_us = dt * 1e6 / layers, .fnv = h};
	if (cl) {
		const moe_cluster_counters c1 = moe_cluster_get_counters(cl);
		const double wait = (double)(c1.wait_ns - c0.wait_ns) / 1e3 / layers;
		out->worker_us = (double)(c1.worker_ns - c0.worker_ns) / 1e3 / layers;
		out->net_us = wait > out->worker_us ? wait - out->worker_us : 0;
		out->coord_us -= wait;
	}
out_free:
	free(logits);
	moe_fwd_destroy(f);
	moe_cluster_destroy(cl);
	return err;
}
