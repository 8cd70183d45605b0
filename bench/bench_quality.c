/*
 * bench_quality.c - `moemesh bench quality -m MODEL.gguf -f TEXT [--ref
 * REF.gguf] [--ctx N] [--chunks N] [--threads N] [--kv TYPE]`: perplexity
 * over a text file computed as llama.cpp's llama-perplexity computes it, and
 * with --ref the KL divergence and top-1 agreement against a reference
 * model's logits on the same tokens (its --kl-divergence).
 *
 * The text is tokenized whole (BOS first where the model adds one) and cut
 * into chunks of --ctx tokens (default: the trained length, at most 512);
 * each chunk runs from an empty context in one step (its first token
 * replaced by BOS where the model adds one), and its second half is scored:
 * the log-probability of the token after each position ctx/2 .. ctx-2.  PPL
 * = exp(mean negative log-likelihood), given with the standard error of that
 * mean times PPL, and after every chunk the running value ("[1]x,[2]y,...",
 * llama-perplexity's line).  With --ref the reference model (same vocabulary)
 * runs the same chunks: per scored position KL(ref || model) of the two
 * softmaxes and whether their largest logits agree.  Sums are in double.
 * Ends with one line `quality_ppl=.. [kl_mean=.. kl_max=.. top1_pct=..]`.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/core.h"
#include "model/model.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench quality -m MODEL.gguf -f TEXT [--ref REF.gguf]\n"
	           "                            [--ctx N] [--chunks N] [--threads N]\n"
	           "                            [--kv f16|f32|q8_0|q4_0]\n"
	           "Perplexity of MODEL over TEXT as llama-perplexity computes it (chunks of\n"
	           "--ctx tokens, default the trained length up to 512, the second half of\n"
	           "each scored); with --ref the mean and largest KL divergence from REF's\n"
	           "distribution and how often the top token agrees (llama-perplexity\n"
	           "--kl-divergence).  --chunks: at most this many chunks.\n");
}

/* One model with its forward pass over one slot. */
typedef struct qmodel {
	moe_model *m;
	moe_fwd *f;
	int slot;
	float *rows; /* [ctx - 1 - ctx/2][n_vocab] a chunk's scored logits */
} qmodel;

/* The forward pass of q->m (opened) over one slot, and its rows. */
static moe_err qmodel_start(qmodel *q, const moe_fwd_opts *fo, int ctx)
{
	const int32_t n_vocab = moe_model_hparams(q->m)->n_vocab;
	moe_err err;
	if ((err = moe_fwd_create(&q->f, q->m, fo)) != MOE_OK ||
	    (err = moe_fwd_seq_open(q->f, &q->slot)) != MOE_OK)
		return err;
	q->rows = malloc((size_t)(ctx - 1 - ctx / 2) * (size_t)n_vocab * sizeof *q->rows);
	if (q->rows == NULL)
		return moe_fail(MOE_ERR_NOMEM, "bench quality: logits of %d positions",
		                ctx - 1 - ctx / 2);
	return MOE_OK;
}

static void qmodel_close(qmodel *q)
{
	free(q->rows);
	moe_fwd_destroy(q->f);
	moe_model_destroy(q->m);
}

/* The chunk's logits at positions ctx/2 .. ctx-2 into q->rows. */
static moe_err run_chunk(qmodel *q, const int32_t *tok, int ctx, int32_t *pos, int32_t *slots,
                         bool *want)
{
	for (int j = 0; j < ctx; j++) {
		pos[j] = j;
		slots[j] = q->slot;
		want[j] = j >= ctx / 2 && j < ctx - 1;
	}
	const moe_batch b = {
	    .n_tok = ctx, .tokens = tok, .slot = slots, .pos = pos, .logits = want};
	moe_err err = moe_fwd_step(q->f, q->rows, &b);
	if (err == MOE_OK)
		err = moe_fwd_seq_reset(q->f, q->slot);
	return err;
}

/* log-sum-exp of x[0..n) in double, and the index of its largest value */
static double log_sum_exp(const float *x, int32_t n, int32_t *arg)
{
	int32_t a = 0;
	for (int32_t i = 1; i < n; i++)
		if (x[i] > x[a])
			a = i;
	double s = 0;
	for (int32_t i = 0; i < n; i++)
		s += exp((double)x[i] - (double)x[a]);
	*arg = a;
	return (double)x[a] + log(s);
}

typedef struct qsums {
	double nll, nll2, kl, kl2, kl_max;
	long count, same;
} qsums;

/* Adds one scored position: logits x (and the reference's r, or NULL) with
 * target token t. */
static void score(qsums *s, const float *x, const float *r, int32_t n, int32_t t)
{
	int32_t ax, ar;
	const double lx = log_sum_exp(x, n, &ax);
	const double nll = lx - (double)x[t];
	s->nll += nll;
	s->nll2 += nll * nll;
	s->count++;
	if (r == NULL)
		return;
	const double lr = log_sum_exp(r, n, &ar);
	double kl = 0;
	for (int32_t i = 0; i < n; i++) {
		const double lpr = (double)r[i] - lr, lpx = (double)x[i] - lx;
		kl += exp(lpr) * (lpr - lpx);
	}
	s->kl += kl;
	s->kl2 += kl * kl;
	if (kl > s->kl_max)
		s->kl_max = kl;
	s->same += ax == ar;
}

/* The standard error of a mean from the sums of x and x^2 over n values. */
static double std_err(double sum, double sum2, long n)
{
	if (n < 2)
		return 0;
	const double mean = sum / (double)n, var = sum2 / (double)n - mean * mean;
	return var > 0 ? sqrt(var / (double)(n - 1)) : 0;
}

int moe_bench_quality(int argc, char **argv)
{
	const char *model = NULL, *ref = NULL, *text_path = NULL;
	int ctx = 0, max_chunks = -1, bad = 0;
	moe_fwd_opts fo;
	moe_fwd_opts_default(&fo);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			bad = 1;
			break;
		}
		i++;
		if (strcmp(a, "-m") == 0)
			model = v;
		else if (strcmp(a, "-f") == 0)
			text_path = v;
		else if (strcmp(a, "--ref") == 0)
			ref = v;
		else if (strcmp(a, "--ctx") == 0)
			bad |= moe_parse_int(&ctx, v, 4, 1 << 20);
		else if (strcmp(a, "--chunks") == 0)
			bad |= moe_parse_int(&max_chunks, v, 1, 1 << 30);
		else if (strcmp(a, "--threads") == 0)
			bad |= moe_parse_int(&fo.n_threads, v, 1, 1024);
		else if (strcmp(a, "--kv") == 0)
			bad |= moe_fwd_kv_type_parse(&fo.kv_type, v) != MOE_OK;
		else
			bad = 1;
	}
	if (bad || model == NULL || text_path == NULL) {
		usage(stderr);
		return 2;
	}

	int rc = 1;
	moe_err err;
	qmodel q = {0}, qr = {0};
	moe_tokenizer *tok = NULL;
	char *text = NULL;
	size_t text_len = 0;
	int32_t *ids = NULL, *pos = NULL, *slots = NULL;
	bool *want = NULL;
	size_t n_ids = 0;

	if ((err = moe_read_file(&text, &text_len, text_path, (size_t)1 << 30)) != MOE_OK ||
	    (err = moe_model_open(&q.m, model)) != MOE_OK ||
	    (err = moe_tokenizer_from_gguf(&tok, moe_model_gguf(q.m))) != MOE_OK ||
	    (err = moe_tokenizer_encode(&ids, &n_ids, tok, text, text_len,
	                                MOE_TOK_ENCODE_ADD_SPECIAL)) != MOE_OK)
		goto out_fail;
	const moe_hparams *hp = moe_model_hparams(q.m);
	if (ctx == 0)
		ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 512 ? (int)hp->n_ctx_train : 512;
	if (n_ids < 2 * (size_t)ctx) {
		err = moe_fail(MOE_ERR_INVAL,
		               "bench quality: %s is %zu tokens; a context of %d needs at least %d",
		               text_path, n_ids, ctx, 2 * ctx);
		goto out_fail;
	}
	int n_chunk = (int)(n_ids / (size_t)ctx);
	if (max_chunks > 0 && max_chunks < n_chunk)
		n_chunk = max_chunks;
	fo.n_ctx = ctx;
	fo.max_batch = ctx;
	if ((err = qmodel_start(&q, &fo, ctx)) != MOE_OK ||
	    (ref != NULL && ((err = moe_model_open(&qr.m, ref)) != MOE_OK ||
	                     (err = qmodel_start(&qr, &fo, ctx)) != MOE_OK)))
		goto out_fail;
	const int32_t n_vocab = moe_model_hparams(q.m)->n_vocab;
	if (ref != NULL && moe_model_hparams(qr.m)->n_vocab != n_vocab) {
		err = moe_fail(MOE_ERR_INVAL, "bench quality: %s has %d tokens, %s %d", ref,
		               moe_model_hparams(qr.m)->n_vocab, model, n_vocab);
		goto out_fail;
	}
	pos = malloc((size_t)ctx * sizeof *pos);
	slots = malloc((size_t)ctx * sizeof *slots);
	want = malloc((size_t)ctx * sizeof *want);
	if (pos == NULL || slots == NULL || want == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench quality: buffers");
		goto out_fail;
	}
	const int32_t bos = moe_tokenizer_bos(tok);
	const bool add_bos = moe_tokenizer_add_bos(tok) && bos >= 0;
	printf("model %s, %zu tokens, %d chunks of %d%s%s\n", model, n_ids, n_chunk, ctx,
	       ref ? ", reference " : "", ref ? ref : "");
	qsums s = {0};
	const double t0 = moe_now_s();
	for (int c = 0; c < n_chunk; c++) {
		int32_t *chunk = ids + (size_t)c * (size_t)ctx;
		const int32_t first = chunk[0];
		if (add_bos)
			chunk[0] = bos;
		err = run_chunk(&q, chunk, ctx, pos, slots, want);
		if (err == MOE_OK && ref != NULL)
			err = run_chunk(&qr, chunk, ctx, pos, slots, want);
		chunk[0] = first;
		if (err != MOE_OK)
			goto out_fail;
		for (int j = ctx / 2; j < ctx - 1; j++) {
			const size_t row = (size_t)(j - ctx / 2) * (size_t)n_vocab;
			score(&s, q.rows + row, ref ? qr.rows + row : NULL, n_vocab, chunk[j + 1]);
		}
		printf("[%d]%.4f,", c + 1, exp(s.nll / (double)s.count));
		fflush(stdout);
	}
	const double ppl = exp(s.nll / (double)s.count);
	printf("\nFinal estimate: PPL = %.4f +/- %.5f (%ld positions scored, %.1f s)\n", ppl,
	       std_err(s.nll, s.nll2, s.count) * ppl, s.count, moe_now_s() - t0);
	if (ref != NULL) {
		printf("KL divergence from the reference: mean %.6f +/- %.6f, max %.6f; top token "
		       "the same at %.3f %% of positions\n",
		       s.kl / (double)s.count, std_err(s.kl, s.kl2, s.count), s.kl_max,
		       100.0 * (double)s.same / (double)s.count);
		printf("quality_ppl=%.4f kl_mean=%.6f kl_max=%.6f top1_pct=%.3f\n", ppl,
		       s.kl / (double)s.count, s.kl_max, 100.0 * (double)s.same / (double)s.count);
	} else {
		printf("quality_ppl=%.4f\n", ppl);
	}
	rc = 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh bench quality: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	free(want);
	free(slots);
	free(pos);
	free(ids);
	free(text);
	moe_tokenizer_destroy(tok);
	qmodel_close(&qr);
	qmodel_close(&q);
	return rc;
}
