/*
 * bench_e2e.c - `moemesh bench e2e -m MODEL.gguf [--prompt N] [-n N]
 * [--threads N] [--gdn-chunk N] [--kv TYPE]`: single-process prefill and
 * decode speed of the forward pass.
 *
 * Prefill: one step of N prompt tokens (default 128), after one unmeasured
 * run of the same step.  Decode: -n (default 64)
 * single-token steps after it.  The weight bytes one decode token reads are
 * every tensor except token_embd (one row) and the routed experts, plus
 * n_used/n_expert of the routed experts; times decode tok/s that gives the
 * effective bandwidth, shown next to a STREAM-like triad on the same pool
 * (the memory roofline: triad / bytes per token = the fastest decode the
 * memory allows), the best of 3 passes just before the decode steps and 3
 * just after.  Ends with one line:
 * `decode_tok_s=.. prefill_tok_s=.. decode_pct_of_roofline=..`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/core.h"
#include "model/model.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh bench e2e -m MODEL.gguf [--prompt N] [-n N] [--threads N]\n"
	        "                        [--gdn-chunk N]  (DeltaNet: runs of >= N tokens in the\n"
	        "                        chunked form, 0 = always recurrent; default 0)\n"
	        "                        [--kv f16|f32|q8_0|q4_0]  (KV cache type; default f16)\n");
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
			bad |= moe_parse_int(&n_prompt, v, 1, 1 << 20);
		else if (strcmp(argv[i - 1], "-n") == 0)
			bad |= moe_parse_int(&n_gen, v, 1, 1 << 20);
		else if (strcmp(argv[i - 1], "--threads") == 0)
			bad |= moe_parse_int(&o.n_threads, v, 0, 1024);
		else if (strcmp(argv[i - 1], "--gdn-chunk") == 0)
			bad |= moe_parse_int(&o.gdn_chunk, v, 0, 1 << 20);
		else if (strcmp(argv[i - 1], "--kv") == 0)
			bad |= moe_fwd_kv_type_parse(&o.kv_type, v) != MOE_OK;
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
	/* Warm-up, not measured: the same prefill once, so that neither figure
	 * pays for page faults on the mapped weights or a cold page cache
	 * (a first run after writing other files measured 70 instead of ~250
	 * prefill tok/s); then the sequence starts again from position 0. */
	moe_batch b = {.n_tok = n_prompt, .tokens = tok, .slot = slots, .pos = pos, .logits = want};
	if ((err = moe_fwd_step(f, logits, &b)) != MOE_OK ||
	    (err = moe_fwd_seq_reset(f, slot)) != MOE_OK) {
		free(want);
		goto out_fail;
	}
	const double t0 = moe_now_s();
	err = moe_fwd_step(f, logits, &b);
	const double t_pre = moe_now_s();
	free(want);
	if (err != MOE_OK)
		goto out_fail;
	/* The roofline's triad: 3 passes just before the decode steps and 3 just
	 * after, the best of the 6, so that it brackets them in time (this VM's
	 * bandwidth moves by a third within seconds).  Passes between the steps
	 * were tried: they flush the caches between steps, which serving does
	 * not, and decode measured 61-70 tok/s with them, 69-85 without. */
	moe_bench_triad *tri = NULL;
	if ((err = moe_bench_triad_create(&tri, moe_fwd_pool(f), (size_t)1 << 24)) != MOE_OK)
		goto out_fail;
	double bw = 1e9 * moe_bench_triad_run(tri, moe_fwd_pool(f), 3);
	const double t1 = moe_now_s();
	for (int i = 0; i < n_gen; i++) {
		const int32_t t = moe_argmax(logits, hp->n_vocab), p = n_prompt + i;
		moe_batch d = {.n_tok = 1, .tokens = &t, .slot = &slot, .pos = &p};
		if ((err = moe_fwd_step(f, logits, &d)) != MOE_OK) {
			moe_bench_triad_destroy(tri);
			goto out_fail;
		}
	}
	const double t2 = moe_now_s();
	const double bw_after = 1e9 * moe_bench_triad_run(tri, moe_fwd_pool(f), 3);
	bw = bw_after > bw ? bw_after : bw;
	moe_bench_triad_destroy(tri);
	const double pre = n_prompt / (t_pre - t0), dec = n_gen / (t2 - t1);
	const double bpt = bytes_per_token(m);
	printf("model %s (%s), %d threads, %s KV\n", model, moe_arch_name(hp->arch),
	       moe_pool_threads(moe_fwd_pool(f)), moe_fwd_kv_type_name(o.kv_type));
	printf("prefill: %d tokens, %.1f tok/s\n", n_prompt, pre);
	printf("decode:  %d tokens, %.1f tok/s, %.2f MB weights/token -> %.2f GB/s\n", n_gen, dec,
	       bpt / 1e6, bpt * dec / 1e9);
	printf("triad:   %.2f GB/s (best of 3 passes before decode, 3 after) -> roofline %.1f "
	       "decode tok/s\n",
	       bw / 1e9, bw / bpt);
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
