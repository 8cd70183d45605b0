/*
 * bench_overlap.c - what two micro-batches hide (`bench cluster
 * --overlap-ab`, with or without --netns): on one cluster, two forward
 * contexts of B sequences each, one with the cluster's overlap backend and one
 * without, fed the same tokens; their decode steps alternate (which one goes
 * first alternates too), so drift on a shared box hits both alike.  Per batch:
 * the median step time of each, the median time per step spent waiting for
 * results (the cluster's wait_ns, both lanes), the share of that wait that
 * overlap puts to use (1 - wait_on / wait_off) and the share it removes from
 * the step, (off - on) / wait_off (less where the coordinator and the workers
 * share cores: then the wait was their compute).
 * Every step's logits of both must be the same bits (FNV-1a over them, outside
 * the timed steps): else the run fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"

#define MAX_STEPS 4096

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	return n > 0 ? v[n / 2] : 0;
}

/* FNV-1a over 32-bit words: the logits' bits. */
static uint64_t fnv_words(uint64_t h, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t w;
		memcpy(&w, &x[i], sizeof w);
		h = (h ^ w) * 1099511628211ull;
	}
	return h;
}

typedef struct ab_ctx {
	moe_fwd *f;
	int32_t slot[64];
	uint64_t fnv;
	double *step_s, *wait_s; /* [steps] */
} ab_ctx;

/* One batch size on cl: fills the row's figures; MOE_ERR_STATE if the
 * logits of the two differ. */
static moe_err ab_batch(moe_bench_overlap_row *r, moe_model *m, moe_cluster *cl,
                        const moe_bench_overlap_opts *o, int batch)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t nl = (size_t)batch * (size_t)hp->n_vocab;
	ab_ctx cx[2] = {0}; /* 0: overlap, 1: none */
	float *logits = malloc(nl * sizeof *logits);
	moe_err err = MOE_OK;
	for (int k = 0; k < 2; k++) {
		cx[k].step_s = calloc((size_t)o->steps, sizeof(double));
		cx[k].wait_s = calloc((size_t)o->steps, sizeof(double));
		if (cx[k].step_s == NULL || cx[k].wait_s == NULL)
			err = moe_fail(MOE_ERR_NOMEM, "bench overlap: step times");
	}
	if (logits == NULL && err == MOE_OK)
		err = moe_fail(MOE_ERR_NOMEM, "bench overlap: logits");
	for (int k = 0; k < 2 && err == MOE_OK; k++) {
		moe_fwd_opts fo;
		moe_fwd_opts_default(&fo);
		fo.n_slots = batch;
		fo.n_ctx = o->steps + 8;
		fo.n_threads = o->threads;
		fo.experts = moe_cluster_backend(cl);
		fo.overlap = k == 0 ? moe_cluster_overlap_backend(cl) : NULL;
		fo.overlap_min_tok = 2; /* the A/B at every batch */
		if ((err = moe_fwd_create(&cx[k].f, m, &fo)) != MOE_OK)
			break;
		for (int b = 0; b < batch && err == MOE_OK; b++)
			err = moe_fwd_seq_open(cx[k].f, &cx[k].slot[b]);
		cx[k].fnv = 1469598103934665603ull;
	}
	if (err == MOE_OK && !moe_fwd_has_overlap(cx[0].f))
		err = moe_fail(MOE_ERR_INVAL, "bench overlap: the cluster has --no-overlap");
	int32_t tok[64], pos[64];
	for (int s = 0; s < o->steps + 2 && err == MOE_OK; s++) {
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)((s * 31 + b * 7 + 1) % hp->n_vocab);
			pos[b] = s;
		}
		for (int j = 0; j < 2 && err == MOE_OK; j++) {
			ab_ctx *c = &cx[(s + j) % 2]; /* who goes first alternates */
			const moe_batch mb = {
			    .n_tok = batch, .tokens = tok, .slot = c->slot, .pos = pos};
			moe_cluster_set_pool(cl, moe_fwd_pool(c->f));
			const uint64_t w0 = moe_cluster_get_counters(cl).wait_ns;
			const double t0 = moe_now_s();
			if ((err = moe_fwd_step(c->f, logits, &mb)) != MOE_OK)
				break;
			const double dt = moe_now_s() - t0;
			const uint64_t w1 = moe_cluster_get_counters(cl).wait_ns;
			if (s >= 2) { /* two warm-up steps */
				c->step_s[s - 2] = dt;
				c->wait_s[s - 2] = (double)(w1 - w0) / 1e9;
			}
			c->fnv = fnv_words(c->fnv, logits, nl);
		}
	}
	if (err == MOE_OK) {
		double wait[2];
		for (int k = 0; k < 2; k++)
			wait[k] = median(cx[k].wait_s, o->steps);
		*r = (moe_bench_overlap_row){.batch = batch,
		                             .step_on_ms = median(cx[0].step_s, o->steps) * 1e3,
		                             .step_off_ms = median(cx[1].step_s, o->steps) * 1e3,
		                             .wait_on_ms = wait[0] * 1e3,
		                             .wait_off_ms = wait[1] * 1e3,
		                             .same = cx[0].fnv == cx[1].fnv};
		r->hidden =
		    r->wait_off_ms > 0 ? (r->step_off_ms - r->step_on_ms) / r->wait_off_ms : 0;
		if (!r->same)
			err = moe_fail(MOE_ERR_STATE,
			               "bench overlap: batch %d: the logits with overlap differ "
			               "from those without",
			               batch);
	}
	for (int k = 0; k < 2; k++) {
		moe_fwd_destroy(cx[k].f);
		free(cx[k].step_s);
		free(cx[k].wait_s);
	}
	free(logits);
	return err;
}

int moe_bench_overlap_ab(moe_model *m, const moe_bench_overlap_opts *o)
{
	if (o->steps < 1 || o->steps > MAX_STEPS || o->n_batches < 1 || o->n_batches > 8) {
		fprintf(stderr, "bench overlap: 1..%d steps, 1..8 batches\n", MAX_STEPS);
		return 2;
	}
	for (int i = 0; i < o->n_batches; i++) {
		if (o->batches[i] < 2 || o->batches[i] > 64) {
			fprintf(stderr, "bench overlap: batch %d: 2..64 sequences\n",
			        o->batches[i]);
			return 2;
		}
	}
	moe_cluster *cl;
	moe_err err = moe_cluster_create(&cl, m, o->model, o->co);
	if (err != MOE_OK) {
		fprintf(stderr, "bench overlap: %s: %s\n", moe_err_name(err), moe_err_detail());
		return 1;
	}
	FILE *csv = NULL;
	if (o->csv != NULL && (csv = fopen(o->csv, "a")) == NULL)
		fprintf(stderr, "bench overlap: cannot append to %s\n", o->csv);
	double load[3] = {0};
	if (getloadavg(load, 3) > 0)
		printf("overlap A/B (%s): load average before %.2f %.2f %.2f\n", o->label, load[0],
		       load[1], load[2]);
	printf("%6s %12s %12s %8s %12s %12s %9s %8s\n", "batch", "step off ms", "step on ms",
	       "gain", "wait off ms", "wait on ms", "wait cut", "hidden");
	int rc = 0;
	for (int i = 0; i < o->n_batches; i++) {
		moe_bench_overlap_row r;
		if ((err = ab_batch(&r, m, cl, o, o->batches[i])) != MOE_OK) {
			fprintf(stderr, "bench overlap: %s: %s\n", moe_err_name(err),
			        moe_err_detail());
			rc = 1;
			break;
		}
		printf("%6d %12.2f %12.2f %7.1f%% %12.2f %12.2f %8.0f%% %7.0f%%\n", r.batch,
		       r.step_off_ms, r.step_on_ms,
		       100.0 * (r.step_off_ms - r.step_on_ms) / r.step_off_ms, r.wait_off_ms,
		       r.wait_on_ms,
		       r.wait_off_ms > 0 ? 100.0 * (1 - r.wait_on_ms / r.wait_off_ms) : 0,
		       100.0 * r.hidden);
		if (csv != NULL)
			fprintf(csv, "%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f\n", o->label, r.batch,
			        r.step_off_ms, r.step_on_ms, r.wait_off_ms, r.wait_on_ms, r.hidden);
		fflush(stdout);
	}
	if (rc == 0)
		printf("logits with and without overlap: the same bits at every step\n");
	if (getloadavg(load, 3) > 0)
		printf("load average after %.2f %.2f %.2f\n", load[0], load[1], load[2]);
	if (csv != NULL)
		fclose(csv);
	moe_cluster_destroy(cl);
	return rc;
}
