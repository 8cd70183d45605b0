/*
 * bench_rebalance.c - `moemesh bench rebalance [-m MODEL.gguf]`: live
 * re-placement of experts (coordinator/rebalance.c) on a skewed routing.
 *
 * The router's choice is replaced on its way to the cluster by a skewed one:
 * every token's experts are drawn without repetition from a Zipf law over the
 * expert index (expert 0 the hottest, --skew S the exponent), in every
 * layer, so the hot experts sit together on the first worker of the
 * contiguous placement.  (The text is then not the model's; the work is the
 * same per expert, which is what is measured.)  Decode tok/s at --batch
 * sequences (the best of 4 parts of the steps) and the imbalance (busiest
 * worker's pairs over the mean's, summed over layers) are measured for -n
 * steps, with the slowest worker's compute per MoE layer (what a layer waits
 * for) and the coordinator's wait; then one re-placement is
 * run (moe_cluster_rebalance, timed, with the bytes it moved); then the same
 * again.  Ends with `imbalance_before=X imbalance_after=Y tok_s_before=A
 * tok_s_after=B slowest_us_before=C slowest_us_after=D`.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh bench rebalance [-m MODEL.gguf] [-n STEPS] [--batch N]\n"
	        "                               [--workers N] [--threads N] [--worker-threads N]\n"
	        "                               [--skew S]\n\n"
	        "Default model models/kjv-qwen3next-Q4_K_M.gguf, 64 decode steps of 16\n"
	        "sequences, 2 workers, Zipf exponent 1.2.\n");
}

typedef struct skew {
	moe_expert_backend inner;
	int n_expert;
	double *cdf; /* [n_expert] of the Zipf law */
	int32_t *ids;
	size_t cap;
	uint64_t calls;
} skew;

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The router's ids replaced by n_used distinct Zipf draws per token. */
static moe_err skew_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                          const float *weights, int n_used)
{
	skew *k = ctx;
	const size_t n = (size_t)n_tok * (size_t)n_used;
	(void)ids;
	if (n > k->cap) {
		int32_t *p = realloc(k->ids, n * sizeof *p);
		if (p == NULL)
			return moe_fail(MOE_ERR_NOMEM, "bench rebalance: ids");
		k->ids = p;
		k->cap = n;
	}
	k->calls++;
	for (int64_t t = 0; t < n_tok; t++) {
		uint64_t r = mix(k->calls * 1000003u + (uint64_t)t);
		for (int j = 0; j < n_used; j++) {
			int32_t e;
			bool again;
			do {
				r = mix(r);
				const double u = (double)(r >> 11) / 9007199254740992.0;
				e = 0;
				while (e + 1 < k->n_expert && k->cdf[e] < u)
					e++;
				again = false;
				for (int i = 0; i < j; i++)
					again |= k->ids[(size_t)t * n_used + i] == e;
			} while (again);
			k->ids[(size_t)t * n_used + j] = e;
		}
	}
	return k->inner.start(k->inner.ctx, il, n_tok, x, k->ids, weights, n_used);
}

static moe_err skew_finish(void *ctx, moe_fix_t *acc)
{
	skew *k = ctx;
	return k->inner.finish(k->inner.ctx, acc);
}

/* Decode tok/s over steps steps of batch sequences (positions from *pos):
 * the best of ROUNDS equal parts (the box is shared; the best part is the
 * least disturbed). */
#define ROUNDS 4
static moe_err decode(double *tok_s, moe_fwd *f, const moe_hparams *hp, int batch, int steps,
                      int *pos, const int32_t *slot, float *logits)
{
	int32_t tok[256], p[256];
	double t0 = moe_now_s();
	const int part = steps >= ROUNDS ? steps / ROUNDS : steps;
	*tok_s = 0;
	for (int s = 0; s < steps; s++, (*pos)++) {
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)((*pos * 31 + b * 7 + 1) % hp->n_vocab);
			p[b] = *pos;
		}
		const moe_batch mb = {.n_tok = batch, .tokens = tok, .slot = slot, .pos = p};
		moe_err err = moe_fwd_step(f, logits, &mb);
		if (err != MOE_OK)
			return err;
		if ((s + 1) % part == 0) {
			const double r = (double)part * batch / (moe_now_s() - t0);
			*tok_s = r > *tok_s ? r : *tok_s;
			t0 = moe_now_s();
		}
	}
	return MOE_OK;
}

int moe_bench_rebalance(int argc, char **argv)
{
	const char *model = "models/kjv-qwen3next-Q4_K_M.gguf";
	int steps = 64, batch = 16, workers = 2, threads = 1, wthreads = 1;
	float zipf = 1.2f;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(s, "-m") == 0)
			model = v;
		else if (strcmp(s, "-n") == 0)
			bad = moe_parse_int(&steps, v, 1, 1 << 20);
		else if (strcmp(s, "--batch") == 0)
			bad = moe_parse_int(&batch, v, 1, 256);
		else if (strcmp(s, "--workers") == 0)
			bad = moe_parse_int(&workers, v, 2, 16);
		else if (strcmp(s, "--threads") == 0)
			bad = moe_parse_int(&threads, v, 1, 1024);
		else if (strcmp(s, "--worker-threads") == 0)
			bad = moe_parse_int(&wthreads, v, 1, 1024);
		else if (strcmp(s, "--skew") == 0)
			bad = moe_parse_float(&zipf, v) != 0 || !(zipf >= 0 && zipf <= 8);
		else
			bad = 1;
		if (bad) {
			usage(stderr);
			return 2;
		}
	}

	moe_model *m = NULL;
	moe_cluster *cl = NULL;
	moe_fwd *f = NULL;
	skew k = {0};
	float *logits = NULL;
	int32_t slot[256];
	int rc = 1;
	moe_err err;
	if ((err = moe_model_open(&m, model)) != MOE_OK)
		goto out_fail;
	const moe_hparams *hp = moe_model_hparams(m);
	k.n_expert = hp->n_expert;
	k.cdf = malloc((size_t)hp->n_expert * sizeof *k.cdf);
	logits = malloc((size_t)batch * (size_t)hp->n_vocab * sizeof *logits);
	if (k.cdf == NULL || logits == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench rebalance");
		goto out_fail;
	}
	double z = 0;
	for (int e = 0; e < hp->n_expert; e++)
		z += pow(e + 1, -zipf);
	for (int e = 0; e < hp->n_expert; e++)
		k.cdf[e] = (e ? k.cdf[e - 1] : 0) + pow(e + 1, -zipf) / z;
	moe_cluster_opts co = {.spawn = workers, .worker_threads = wthreads};
	if ((err = moe_cluster_create(&cl, m, model, &co)) != MOE_OK)
		goto out_fail;
	k.inner = *moe_cluster_backend(cl);
	const moe_expert_backend be = {.ctx = &k, .start = skew_start, .finish = skew_finish};
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = batch;
	o.n_ctx = 2 * steps + 8;
	o.n_threads = threads;
	o.experts = &be;
	if ((err = moe_fwd_create(&f, m, &o)) != MOE_OK)
		goto out_fail;
	moe_cluster_set_pool(cl, moe_fwd_pool(f));
	for (int b = 0; b < batch; b++)
		if ((err = moe_fwd_seq_open(f, &slot[b])) != MOE_OK)
			goto out_fail;
	printf("# bench rebalance: %s, %d workers (%d threads each), %d threads here, batch %d, "
	       "%d steps, Zipf %.2f over %d experts (top-%d)\n",
	       model, workers, wthreads, threads, batch, steps, zipf, hp->n_expert,
	       hp->n_expert_used);
	int pos = 0;
	double ts0, ts1;
	if ((err = decode(&ts0, f, hp, batch, 2, &pos, slot, logits)) != MOE_OK) /* warm-up */
		goto out_fail;
	(void)moe_cluster_window(cl);
	const moe_cluster_counters k0 = moe_cluster_get_counters(cl);
	moe_cluster_link_stats l0[16], l1[16], l2[16], l3[16];
	for (int i = 0; i < workers; i++)
		l0[i] = moe_cluster_link(cl, i);
	if ((err = decode(&ts0, f, hp, batch, steps - 2, &pos, slot, logits)) != MOE_OK)
		goto out_fail;
	const moe_cluster_counters k1 = moe_cluster_get_counters(cl);
	for (int i = 0; i < workers; i++)
		l1[i] = moe_cluster_link(cl, i);
	const double t_rb = moe_now_s();
	if ((err = moe_cluster_rebalance(cl)) != MOE_OK)
		goto out_fail;
	const double rb_s = moe_now_s() - t_rb;
	const moe_cluster_balance b = moe_cluster_get_balance(cl);
	const moe_cluster_counters k2 = moe_cluster_get_counters(cl);
	for (int i = 0; i < workers; i++)
		l2[i] = moe_cluster_link(cl, i);
	if ((err = decode(&ts1, f, hp, batch, steps - 2, &pos, slot, logits)) != MOE_OK)
		goto out_fail;
	const moe_cluster_counters k3 = moe_cluster_get_counters(cl);
	for (int i = 0; i < workers; i++)
		l3[i] = moe_cluster_link(cl, i);
	const double after = moe_cluster_window(cl);
	/* per MoE layer: the slowest worker's compute, and the wait for results */
	const double sw0 = (double)(k1.worker_ns - k0.worker_ns) / 1e3 /
	                   (double)(k1.layers - k0.layers),
	             wt0 =
	                 (double)(k1.wait_ns - k0.wait_ns) / 1e3 / (double)(k1.layers - k0.layers),
	             sw1 = (double)(k3.worker_ns - k2.worker_ns) / 1e3 /
	                   (double)(k3.layers - k2.layers),
	             wt1 =
	                 (double)(k3.wait_ns - k2.wait_ns) / 1e3 / (double)(k3.layers - k2.layers);
	printf("phase   imbalance  tok/s   slowest worker us/layer  wait us/layer\n");
	printf("before  %9.3f  %6.1f  %23.1f  %13.1f\n", b.before, ts0, sw0, wt0);
	printf("after   %9.3f  %6.1f  %23.1f  %13.1f   (planned imbalance %.3f)\n", after, ts1, sw1,
	       wt1, b.planned);
	/* where the work went: each worker's pairs and compute per MoE layer */
	for (int ph = 0; ph < 2; ph++) {
		const moe_cluster_link_stats *a = ph ? l2 : l0, *z = ph ? l3 : l1;
		const double layers = (double)(ph ? k3.layers - k2.layers : k1.layers - k0.layers);
		printf("%s ", ph ? "after  per worker:" : "before per worker:");
		for (int i = 0; i < workers; i++)
			printf(" %s %.0f pairs %.1f us", z[i].name,
			       (double)(z[i].routed - a[i].routed) / layers,
			       (double)(z[i].compute_ns - a[i].compute_ns) / 1e3 / layers);
		printf("\n");
	}
	printf("re-placements %llu in %.3f s: %.2f MB loaded, %.2f MB dropped\n",
	       (unsigned long long)b.rebalances, rb_s, (double)b.bytes_loaded / 1e6,
	       (double)b.bytes_dropped / 1e6);
	moe_cluster_print_stats(cl, stdout);
	printf("imbalance_before=%.3f imbalance_after=%.3f tok_s_before=%.1f tok_s_after=%.1f "
	       "slowest_us_before=%.1f slowest_us_after=%.1f\n",
	       b.before, after, ts0, ts1, sw0, sw1);
	rc = 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh bench rebalance: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	moe_fwd_destroy(f);
	if (cl != NULL && moe_cluster_shutdown(cl) != MOE_OK) {
		fprintf(stderr, "moemesh bench rebalance: %s\n", moe_err_detail());
		rc = 1;
	}
	moe_cluster_destroy(cl);
	free(k.cdf);
	free(k.ids);
	free(logits);
	moe_model_destroy(m);
	return rc;
}
