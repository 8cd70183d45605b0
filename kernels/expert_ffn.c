/*
 * expert_ffn.c - the grouped expert FFN: each routed expert's SwiGLU over
 * exactly the tokens routed to it, weighted outputs summed in fixed point.
 *
 * The (token, slot) pairs are sorted by expert (counting sort, stable, so a
 * pair's position depends on the batch but its arithmetic never does). Three
 * pool runs:
 *   A. work items = (expert, chunk of FFN_CHUNK rows of gate/up): the tile
 *      kernels give g and u for the expert's pairs, h = silu(g) * u in f32;
 *   B. each pair's h row is quantised to down's activation form;
 *   C. work items = chunks of FFN_CHUNK output rows: for every expert, down's
 *      rows against the expert's pairs, times the routing weight, converted
 *      to moe_fix_t and added to acc.  Items own disjoint columns of acc, so
 *      no two threads ever add to the same element.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/kernels.h"

enum { FFN_CHUNK = 128, FFN_MAX_USED = 64 };

typedef struct ffn_job {
	const moe_expert_ffn *f;
	int64_t n_embd, n_ff;
	int64_t n_pairs;
	int32_t *first;    /* [n_expert + 1]: pairs of expert e are [first[e], first[e+1]) */
	int32_t *pair_tok; /* [n_pairs] token of each pair */
	float *pair_w;     /* [n_pairs] routing weight of each pair */
	const uint8_t *xg; /* [n_pairs][x_stride] gate input rows, gathered */
	const uint8_t *xu; /* [n_pairs][xu_stride] up input rows (== xg if same form) */
	size_t x_stride, xu_stride;
	float *g;    /* [n_pairs][n_ff] gate, then h */
	float *u;    /* [n_pairs][n_ff] up */
	uint8_t *hq; /* [n_pairs][hq_stride] h quantised for down */
	size_t hq_stride;
	float *scratch; /* [nth][max_pairs * FFN_CHUNK] down outputs */
	int64_t max_pairs;
	moe_fix_t *acc;   /* [n_tok][n_embd] */
	int32_t *item_e;  /* [n_items_a] expert of each phase-A item */
	int32_t *item_r0; /* [n_items_a] first row of each phase-A item */
	int64_t n_items_a;
	atomic_llong next;
	atomic_int err;
} ffn_job;

static void job_fail(ffn_job *j, moe_err e)
{
	int expect = MOE_OK;
	atomic_compare_exchange_strong(&j->err, &expect, (int)e);
}

static float silu(float v)
{
	return v / (1.0f + expf(-v));
}

/* moe_gemm_rows on expert e of m, repacked rows or not. */
static moe_err mat_rows(const moe_expert_mat *m, int32_t e, float *y, int64_t ldy, int64_t r0,
                        int64_t r1, const uint8_t *x, int64_t n_tok)
{
	if (m->lanes)
		return moe_gemm_rows_repacked(y, ldy, m->expert[e], m->type, r0, r1, m->n_cols, x,
		                              n_tok);
	return moe_gemm_rows(y, ldy, m->expert[e], m->type, r0, r1, m->n_cols, x, n_tok);
}

static void phase_gate_up(void *arg, int ith, int nth)
{
	ffn_job *j = arg;
	const moe_expert_ffn *f = j->f;
	(void)ith;
	(void)nth;
	for (;;) {
		int64_t it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
		if (it >= j->n_items_a)
			break;
		int32_t e = j->item_e[it];
		int64_t r0 = j->item_r0[it];
		int64_t r1 = r0 + FFN_CHUNK < j->n_ff ? r0 + FFN_CHUNK : j->n_ff;
		int64_t p0 = j->first[e], np = j->first[e + 1] - p0;
		float *g = j->g + p0 * j->n_ff, *u = j->u + p0 * j->n_ff;
		moe_err err = mat_rows(&f->gate, e, g + r0, j->n_ff, r0, r1,
		                       j->xg + (size_t)p0 * j->x_stride, np);
		if (err == MOE_OK)
			err = mat_rows(&f->up, e, u + r0, j->n_ff, r0, r1,
			               j->xu + (size_t)p0 * j->xu_stride, np);
		if (err != MOE_OK) {
			job_fail(j, err);
			continue;
		}
		for (int64_t p = 0; p < np; p++)
			for (int64_t r = r0; r < r1; r++)
				g[p * j->n_ff + r] = silu(g[p * j->n_ff + r]) * u[p * j->n_ff + r];
	}
}

static void phase_quant_h(void *arg, int ith, int nth)
{
	ffn_job *j = arg;
	for (int64_t p = ith; p < j->n_pairs; p += nth) {
		moe_err err = moe_quantize_act(j->f->down.type, j->hq + (size_t)p * j->hq_stride,
		                               j->g + p * j->n_ff, j->n_ff);
		if (err != MOE_OK)
			job_fail(j, err);
	}
}

static void phase_down(void *arg, int ith, int nth)
{
	ffn_job *j = arg;
	const moe_expert_ffn *f = j->f;
	float *d = j->scratch + (size_t)ith * (size_t)j->max_pairs * FFN_CHUNK;
	const moe_vec_ops *v_ops = moe_vec_ops_get();
	int64_t n_items = (j->n_embd + FFN_CHUNK - 1) / FFN_CHUNK;
	(void)nth;
	for (;;) {
		int64_t it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
		if (it >= n_items)
			break;
		int64_t r0 = it * FFN_CHUNK;
		int64_t r1 = r0 + FFN_CHUNK < j->n_embd ? r0 + FFN_CHUNK : j->n_embd;
		int64_t nr = r1 - r0;
		for (int32_t e = 0; e < f->n_expert; e++) {
			int64_t p0 = j->first[e], np = j->first[e + 1] - p0;
			if (np == 0)
				continue;
			/* d[p][r - r0]: rows r0.. of down against pairs p0.. */
			moe_err err = mat_rows(&f->down, e, d, nr, r0, r1,
			                       j->hq + (size_t)p0 * j->hq_stride, np);
			if (err != MOE_OK) {
				job_fail(j, err);
				continue;
			}
			for (int64_t p = 0; p < np; p++) {
				moe_fix_t *a = j->acc + (int64_t)j->pair_tok[p0 + p] * j->n_embd;
				v_ops->fix_axpy(a + r0, j->pair_w[p0 + p], d + p * nr, nr);
			}
		}
	}
}

static moe_err check_ffn(const moe_expert_ffn *f)
{
	if (f == NULL || f->n_expert <= 0 || f->gate.expert == NULL || f->up.expert == NULL ||
	    f->down.expert == NULL)
		return moe_fail(MOE_ERR_INVAL, "expert_ffn: missing experts");
	if (f->gate.n_cols <= 0 || f->gate.n_rows <= 0 || f->up.n_cols != f->gate.n_cols ||
	    f->up.n_rows != f->gate.n_rows || f->down.n_cols != f->gate.n_rows ||
	    f->down.n_rows != f->gate.n_cols)
		return moe_fail(MOE_ERR_BAD_SHAPE,
		                "expert_ffn: gate %lldx%lld, up %lldx%lld, down %lldx%lld "
		                "(want n_ff x n_embd, n_ff x n_embd, n_embd x n_ff)",
		                (long long)f->gate.n_rows, (long long)f->gate.n_cols,
		                (long long)f->up.n_rows, (long long)f->up.n_cols,
		                (long long)f->down.n_rows, (long long)f->down.n_cols);
	const moe_expert_mat *m[3] = {&f->gate, &f->up, &f->down};
	for (int i = 0; i < 3; i++)
		if (moe_row_size(m[i]->type, m[i]->n_cols) == 0 ||
		    moe_act_row_size(m[i]->type, m[i]->n_cols) == 0 ||
		    moe_vec_dot_get(m[i]->type) == NULL)
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "expert_ffn: %s type %d with %lld cols has no kernel",
			                i == 0   ? "gate"
			                : i == 1 ? "up"
			                         : "down",
			                (int)m[i]->type, (long long)m[i]->n_cols);
	for (int i = 0; i < 3; i++)
		if (m[i]->lanes && moe_repack_row_size(m[i]->type, m[i]->n_cols) == 0)
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "expert_ffn: type %d with %lld cols has no repacked layout",
			                (int)m[i]->type, (long long)m[i]->n_cols);
	return MOE_OK;
}

/* The common body: x_gate rows in gate's form; x_up rows in up's form (may
 * be the same pointer). */
static moe_err ffn_run(moe_pool *pool, moe_fix_t *acc, const moe_expert_ffn *f,
                       const uint8_t *x_gate, const uint8_t *x_up, int64_t n_tok,
                       const int32_t *ids, const float *weights, int n_used)
{
	moe_err err = check_ffn(f);
	if (err != MOE_OK)
		return err;
	if (n_used < 1 || n_used > FFN_MAX_USED)
		return moe_fail(MOE_ERR_BAD_VALUE, "expert_ffn: n_used %d (1..%d)", n_used,
		                FFN_MAX_USED);
	if (n_tok < 0 || n_tok > INT32_MAX / FFN_MAX_USED)
		return moe_fail(MOE_ERR_BAD_SHAPE, "expert_ffn: %lld tokens", (long long)n_tok);
	if (n_tok == 0)
		return MOE_OK;
	if (acc == NULL || x_gate == NULL || ids == NULL || weights == NULL)
		return moe_fail(MOE_ERR_INVAL, "expert_ffn: NULL argument");

	ffn_job j;
	memset(&j, 0, sizeof(j));
	j.f = f;
	j.n_embd = f->gate.n_cols;
	j.n_ff = f->gate.n_rows;
	j.acc = acc;
	j.x_stride = moe_act_row_size(f->gate.type, j.n_embd);
	j.xu_stride = moe_act_row_size(f->up.type, j.n_embd);
	j.hq_stride = moe_act_row_size(f->down.type, j.n_ff);
	int32_t ne = f->n_expert;
	int nth = moe_pool_threads(pool);

	j.first = calloc((size_t)ne + 1, sizeof(*j.first));
	if (j.first == NULL)
		return moe_fail(MOE_ERR_NOMEM, "expert_ffn: %d experts", ne);
	/* count, validating ids */
	for (int64_t i = 0; i < n_tok * n_used; i++) {
		int32_t e = ids[i];
		if (e >= ne) {
			err = moe_fail(MOE_ERR_BAD_VALUE,
			               "expert_ffn: token %lld slot %lld: expert %d of %d",
			               (long long)(i / n_used), (long long)(i % n_used), e, ne);
			goto out_free_first;
		}
		if (e >= 0 && f->gate.expert[e] != NULL && f->up.expert[e] != NULL &&
		    f->down.expert[e] != NULL)
			j.first[e + 1]++;
	}
	j.n_items_a = 0;
	for (int32_t e = 0; e < ne; e++) {
		if (j.first[e + 1] > j.max_pairs)
			j.max_pairs = j.first[e + 1];
		if (j.first[e + 1] > 0)
			j.n_items_a += (j.n_ff + FFN_CHUNK - 1) / FFN_CHUNK;
		j.first[e + 1] += j.first[e];
	}
	j.n_pairs = j.first[ne];
	if (j.n_pairs == 0)
		goto out_free_first;

	size_t np = (size_t)j.n_pairs, nff = (size_t)j.n_ff;
	bool same_x = x_up == x_gate && j.xu_stride == j.x_stride;
	j.pair_tok = malloc(np * sizeof(*j.pair_tok));
	j.pair_w = malloc(np * sizeof(*j.pair_w));
	j.item_e = malloc((size_t)j.n_items_a * sizeof(*j.item_e));
	j.item_r0 = malloc((size_t)j.n_items_a * sizeof(*j.item_r0));
	uint8_t *xg = moe_aligned_alloc(64, np * j.x_stride);
	uint8_t *xu = same_x ? xg : moe_aligned_alloc(64, np * j.xu_stride);
	j.g = moe_aligned_alloc(64, np * nff * sizeof(float));
	j.u = moe_aligned_alloc(64, np * nff * sizeof(float));
	j.hq = moe_aligned_alloc(64, np * j.hq_stride);
	j.scratch =
	    moe_aligned_alloc(64, (size_t)nth * (size_t)j.max_pairs * FFN_CHUNK * sizeof(float));
	int32_t *fill = malloc((size_t)ne * sizeof(*fill));
	if (j.pair_tok == NULL || j.pair_w == NULL || j.item_e == NULL || j.item_r0 == NULL ||
	    xg == NULL || xu == NULL || j.g == NULL || j.u == NULL || j.hq == NULL ||
	    j.scratch == NULL || fill == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "expert_ffn: buffers for %zu pairs", np);
		goto out_free_bufs;
	}
	j.xg = xg;
	j.xu = xu;

	/* place pairs: by expert, then token, then slot; gather their inputs */
	memcpy(fill, j.first, (size_t)ne * sizeof(*fill));
	for (int64_t i = 0; i < n_tok * n_used; i++) {
		int32_t e = ids[i];
		if (e < 0 || f->gate.expert[e] == NULL || f->up.expert[e] == NULL ||
		    f->down.expert[e] == NULL)
			continue;
		int64_t t = i / n_used;
		int32_t p = fill[e]++;
		j.pair_tok[p] = (int32_t)t;
		j.pair_w[p] = weights[i];
		memcpy(xg + (size_t)p * j.x_stride, x_gate + (size_t)t * j.x_stride, j.x_stride);
		if (!same_x)
			memcpy(xu + (size_t)p * j.xu_stride, x_up + (size_t)t * j.xu_stride,
			       j.xu_stride);
	}
	int64_t k = 0;
	for (int32_t e = 0; e < ne; e++)
		if (j.first[e + 1] > j.first[e])
			for (int64_t r0 = 0; r0 < j.n_ff; r0 += FFN_CHUNK) {
				j.item_e[k] = e;
				j.item_r0[k] = (int32_t)r0;
				k++;
			}

	atomic_init(&j.err, MOE_OK);
	atomic_init(&j.next, 0);
	moe_pool_run(pool, phase_gate_up, &j);
	if (atomic_load(&j.err) == MOE_OK)
		moe_pool_run(pool, phase_quant_h, &j);
	atomic_store(&j.next, 0);
	if (atomic_load(&j.err) == MOE_OK)
		moe_pool_run(pool, phase_down, &j);
	err = (moe_err)atomic_load(&j.err);
	if (err != MOE_OK)
		err = moe_fail(err, "expert_ffn: %s", moe_err_detail());

out_free_bufs:
	free(fill);
	moe_aligned_free(j.scratch);
	moe_aligned_free(j.hq);
	moe_aligned_free(j.u);
	moe_aligned_free(j.g);
	if (!same_x)
		moe_aligned_free(xu);
	moe_aligned_free(xg);
	free(j.item_r0);
	free(j.item_e);
	free(j.pair_w);
	free(j.pair_tok);
out_free_first:
	free(j.first);
	return err;
}

moe_err moe_expert_ffn_run_q(moe_pool *pool, moe_fix_t *acc, const moe_expert_ffn *f,
                             const void *xq, int64_t n_tok, const int32_t *ids,
                             const float *weights, int n_used)
{
	moe_err err = check_ffn(f);
	if (err != MOE_OK)
		return err;
	if (moe_type_get(f->gate.type)->vec_dot_type != moe_type_get(f->up.type)->vec_dot_type)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "expert_ffn_q: gate %s and up %s take different activations",
		                moe_type_get(f->gate.type)->name, moe_type_get(f->up.type)->name);
	return ffn_run(pool, acc, f, xq, xq, n_tok, ids, weights, n_used);
}

moe_err moe_expert_ffn_run(moe_pool *pool, moe_fix_t *acc, const moe_expert_ffn *f, const float *x,
                           int64_t n_tok, const int32_t *ids, const float *weights, int n_used)
{
	moe_err err = check_ffn(f);
	if (err != MOE_OK)
		return err;
	if (n_tok <= 0 || x == NULL)
		return ffn_run(pool, acc, f, (const uint8_t *)x, (const uint8_t *)x, n_tok, ids,
		               weights, n_used);
	int64_t n_embd = f->gate.n_cols;
	size_t sg = moe_act_row_size(f->gate.type, n_embd);
	size_t su = moe_act_row_size(f->up.type, n_embd);
	bool same =
	    moe_type_get(f->gate.type)->vec_dot_type == moe_type_get(f->up.type)->vec_dot_type;
	size_t bg, bu;
	if (!moe_size_mul(&bg, sg, (size_t)n_tok) || !moe_size_mul(&bu, su, (size_t)n_tok))
		return moe_fail(MOE_ERR_OVERFLOW, "expert_ffn: %lld tokens", (long long)n_tok);
	uint8_t *xg = moe_aligned_alloc(64, bg);
	uint8_t *xu = same ? xg : moe_aligned_alloc(64, bu);
	if (xg == NULL || xu == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "expert_ffn: %zu bytes of activations", bg + bu);
		goto out_free_x;
	}
	err = moe_quantize_act_rows(pool, xg, f->gate.type, x, n_embd, n_tok);
	if (err == MOE_OK && !same)
		err = moe_quantize_act_rows(pool, xu, f->up.type, x, n_embd, n_tok);
	if (err == MOE_OK)
		err = ffn_run(pool, acc, f, xg, xu, n_tok, ids, weights, n_used);
out_free_x:
	if (!same)
		moe_aligned_free(xu);
	moe_aligned_free(xg);
	return err;
}
