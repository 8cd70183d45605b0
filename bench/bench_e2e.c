/*
 * bench_e2e.c - `moemesh bench e2e -m MODEL.gguf [--prompt N] [-n N]
 * [--threads N]`: single-process prefill and decode speed of the forward pass.
 *
 * Prefill: one step of N prompt tokens (default 128).  Decode: -n (default 64)
 * single-token steps after it.  The weight bytes one decode token reads are
 * every tensor except token_embd (one row) and the routed experts, plus
 * n_used/n_expert of the routed experts; times decode tok/s that gives the
 * effective bandwidth, shown next to a STREAM-like triad on the same pool
 * (the memory roofline: triad / bytes per token = the fastest decode the
 * memory allows).  Ends with one line:
 * `decode_tok_s=.. prefill_tok_s=.. decode_pct_of_roofline=..`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/args.h"
#include "model/forward.h"
#include "model/sample.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench e2e -m MODEL.gguf [--prompt N] [-n N] [--threads N]\n");
}

typedef struct triad {
	double *a, *b, *c;
	size_t n;
} triad;

static void triad_fn(void *arg, int ith, int nth)
{
	triad *t = arg;
	const size_t lo = t->n * (size_t)ith / (size_t)nth,
	             hi = t->n * (size_t)(ith + 1) / (size_t)nth;
	for (size_t i = lo; i < hi; i++)
		t->a[i] = t->b[i] + 3.0 * t->c[i];
}

/* Best-of-5 triad bandwidth in bytes/s on pool (3 x 8 bytes per element). */
static double triad_bw(moe_pool *pool)
{
	triad t = {.n = (size_t)1 << 24};
	t.a = malloc(t.n * 8), t.b = malloc(t.n * 8), t.c = malloc(t.n * 8);
	if (t.a == NULL || t.b == NULL || t.c == NULL) {
		free(t.a), free(t.b), free(t.c);
		return 0;
	}
	for (size_t i = 0; i < t.n; i++)
		t.a[i] = 0, t.b[i] = 1, t.c[i] = 2;
	double best = 1e30;
	for (int r = 0; r < 5; r++) {
		const double t0 = moe_now_s();
		moe_pool_run(pool, triad_fn, &t);
		const double dt = moe_now_s() - t0;
		best = dt < best ? dt : best;
	}
	free(t.a), free(t.b), free(t.c);
	return 24.0 * (double)t.n / best;
}

/* Weight bytes read by one decode token. */
static double bytes_per_token(const moe_model *m)
{
	const moe_gguf *g = moe_model_gguf(m);
	const moe_hparams *hp = moe_model_hparams(m);
	double b = 0;
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		const char *name = t->name.ptr;
		const size_t len = (size_t)t->name.len;
		if (len == 17 && memcmp(name, "token_embd.weight", 17) == 0)
			b += (double)t->size / (double)hp->n_vocab;
		else if (len > 12 && memcmp(name + len - 12, "_exps.weight", 12) == 0)
			b += (double)t->size * hp->n_expert_used / hp->n_expert;
		else
			b += (double)t->size;
	}
	return b;
}

int moe_bench_e2e(int argc, char **argv)
{
	const char *model = NULL;
	int n_prompt = 128, n_gen = 64, bad = 0;
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(argv[i - 1], "-m") == 0)
			model = v;
		else if (strcmp(argv[i - 1], "--prompt") == 0)
			bad |= moe_arg_int(&n_prompt, v, 1, 1 << 20);
		else if (strcmp(argv[i - 1], "-n") == 0)
			bad |= moe_arg_int(&n_gen, v, 1, 1 << 20);
		else if (strcmp(argv[i - 1], "--threads") == 0)
			bad |= moe_arg_int(&o.n_threads, v, 0, 1024);
		else {
			usage(stderr);
			return 2;
		}
	}
	if (model == NULL || bad) {
		usage(stderr);
		return 2;
	}

	moe_model *m = NULL;
	moe_fwd *f = NULL;
	int rc = 1;
	int32_t *tok = NULL, *pos = NULL, *slots = NULL;
	float *logits = NULL;
	moe_err err = moe_model_open(&m, model);
	if (err != MOE_OK)
		goto out_fail;
	const moe_hparams *hp = moe_model_hparams(m);
	o.n_ctx = n_prompt + n_gen;
	o.max_batch = n_prompt;
	if ((err = moe_fwd_create(&f, m, &o)) != MOE_OK)
		goto out_fail;
	tok = malloc(sizeof(int32_t) * (size_t)n_prompt);
	pos = malloc(sizeof(int32_t) * (size_t)n_prompt);
	slots = calloc((size_t)n_prompt, sizeof(int32_t));
	logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
	if (tok == NULL || pos == NULL || slots == NULL || logits == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench e2e: buffers");
		goto out_fail;
	}
	int slot;
	if ((err = moe_fwd_seq_open(f, &slot)) != MOE_OK)
		goto out_fail;
	bool *want = calloc((size_t)n_prompt, sizeof(bool));
	if (want == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench e2e: buffers");
		goto out_fail;
	}
	want[n_prompt - 1] = true;
	for (int i = 0; i < n_prompt; i++)
		tok[i] = (int32_t)(((int64_t)i * 7919 + 13) % hp->n_vocab), pos[i] = i;
	const double t0 = moe_now_s();
	moe_batch b = {.n_tok = n_prompt, .tokens = tok, .slot = slots, .pos = pos, .logits = want};
	err = moe_fwd_step(f, logits, &b);
	free(want);
	if (err != MOE_OK)
		goto out_fail;
	const double t1 = moe_now_s();
	for (int i = 0; i < n_gen; i++) {
		const int32_t t = moe_argmax(logits, hp->n_vocab), p = n_prompt + i;
		moe_batch d = {.n_tok = 1, .tokens = &t, .slot = &slot, .pos = &p};
		if ((err = moe_fwd_step(f, logits, &d)) != MOE_OK)
			goto out_fail;
	}
	const double t2 = moe_now_s();
	const double pre = n_prompt / (t1 - t0), dec = n_gen / (t2 - t1);
	const double bpt = bytes_per_token(m), bw = triad_bw(moe_fwd_pool(f));
	printf("model %s (%s), %d threads\n", model, moe_arch_name(hp->arch),
	       moe_pool_threads(moe_fwd_pool(f)));
	printf("prefill: %d tokens, %.1f tok/s\n", n_prompt, pre);
	printf("decode:  %d tokens, %.1f tok/s, %.2f MB weights/token -> %.2f GB/s\n", n_gen, dec,
	       bpt / 1e6, bpt * dec / 1e9);
	printf("triad:   %.2f GB/s -> roofline %.1f decode tok/s\n", bw / 1e9, bw / bpt);
	printf("decode_tok_s=%.1f prefill_tok_s=%.1f decode_pct_of_roofline=%.0f\n", dec, pre,
	       bw > 0 ? 100.0 * bpt * dec / bw : 0.0);
	rc = 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh bench e2e: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	free(tok), free(pos), free(slots), free(logits);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
	return rc;
}
