/*
 * attention.c - grouped-query attention with q/k RMSNorm, NeoX RoPE (partial
 * for qwen3next, multi-section IMROPE angles for qwen35moe: see
 * moe_rope_cache_imrope), a per-sequence KV cache (kvcache.c: F32, F16, Q8_0
 * or Q4_0 rows in blocks of positions) and, for qwen3next and qwen35moe, the
 * sigmoid output gate whose rows are interleaved with the query rows (head 0
 * q, head 0 gate, head 1 q, ...).
 *
 * A batch first writes the K/V rows of all its tokens into the cache, then
 * every (token, head) attends to positions 0..pos of its own sequence, which
 * is causal because a token never reads a position after its own.  Rows of
 * other types than F32 are converted to f32 (exactly) into a scratch row once
 * per group of query heads sharing a KV head, then enter the same float dot
 * products and sums as F32 rows: per query the scores, softmax and weighted
 * sum run over positions 0..pos in order, whatever block they lie in.
 */
#include <math.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

typedef struct attn_job {
	moe_fwd *f;
	int il;
	int64_t q_stride; /* floats per token row of f->q */
	int64_t q_head;   /* floats between heads in f->q (head_dim, or 2*head_dim gated) */
	bool gated;
} attn_job;

/* Head kvh's part of the K (which 0) or V (1) row at position p as floats: a
 * pointer into the cache (F32) or buf converted. */
static const float *kv_head(const moe_fwd *f, const moe_vec_ops *v_ops, int which, int kv_layer,
                            int slot, int64_t p, int kvh, size_t head_bytes, int hd, float *buf)
{
	const char *row =
	    (const char *)moe_kv_row(&f->kv, slot, kv_layer, which, p) + (size_t)kvh * head_bytes;
	switch (f->kv.type) {
	case MOE_TYPE_F32:
		return (const float *)row;
	case MOE_TYPE_F16:
		v_ops->f16_to_f32(buf, (const uint16_t *)row, hd);
		return buf;
	case MOE_TYPE_Q8_0:
		v_ops->q8_0_to_f32(buf, row, hd);
		return buf;
	default:
		v_ops->q4_0_to_f32(buf, row, hd);
		return buf;
	}
}

/* Tokens t0..t1-1 (one sequence, consecutive) attended together: tile_end
 * gives the end of the tile that starts at t0. */
static int64_t tile_end(const moe_fwd *f, int64_t t0)
{
	int64_t t1 = t0 + 1;
	while (t1 < f->n && t1 - t0 < f->scores_qt && f->slot[t1] == f->slot[t0])
		t1++;
	return t1;
}

/* One tile: tokens t0..t1-1 of one sequence with KV head kvh and its group
 * of query heads; s [qt][grp][cap] their scores, buf [VTILE][hd] rows. */
typedef struct attn_tile {
	const attn_job *jb;
	const moe_vec_ops *v_ops;
	float *s, *buf;
	int64_t t0, t1;
	int kvh;
} attn_tile;

/* Token t's first query head of the group (its q row) and output row. */
static const float *tile_q(const attn_tile *a, int64_t t)
{
	const attn_job *jb = a->jb;
	const int grp = jb->f->m->hp.n_head / jb->f->m->hp.n_head_kv;
	return jb->f->q + t * jb->q_stride + (int64_t)a->kvh * grp * jb->q_head;
}

static float *tile_out(const attn_tile *a, int64_t t)
{
	const moe_hparams *hp = &a->jb->f->m->hp;
	const int grp = hp->n_head / hp->n_head_kv;
	return a->jb->f->att + (t * hp->n_head + (int64_t)a->kvh * grp) * hp->head_dim;
}

/* The tile against the K rows (which 0: every query's scores) or the V rows
 * (which 1: every query's output from its softmaxed scores), up to n_max
 * positions: rows converted MOE_ATTN_VTILE at a time, each MOE_ATTN_KSUB of
 * them meeting every query whose positions reach them. */
static void tile_rows(const attn_tile *a, int which, int64_t n_max)
{
	const attn_job *jb = a->jb;
	const moe_fwd *f = jb->f;
	const moe_hparams *hp = &f->m->hp;
	const int hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv;
	const int kv_layer = f->m->layers[jb->il].idx_kv;
	const int64_t cap = f->scores_cap;
	const size_t head_bytes = moe_row_size(f->kv.type, hd);
	const int slot = f->slot[a->t0];

	for (int64_t p0 = 0; p0 < n_max; p0 += MOE_ATTN_VTILE) {
		const int64_t m = n_max - p0 < MOE_ATTN_VTILE ? n_max - p0 : MOE_ATTN_VTILE;
		for (int64_t i = 0; i < m; i++) {
			float *row = a->buf + i * hd;
			const float *src = kv_head(f, a->v_ops, which, kv_layer, slot, p0 + i,
			                           a->kvh, head_bytes, hd, row);
			if (src != row)
				memcpy(row, src, sizeof(float) * (size_t)hd);
		}
		for (int64_t b0 = p0; b0 < p0 + m; b0 += MOE_ATTN_KSUB) {
			const float *rows = a->buf + (b0 - p0) * hd;
			const int64_t b_end =
			    b0 + MOE_ATTN_KSUB < p0 + m ? b0 + MOE_ATTN_KSUB : p0 + m;
			for (int64_t t = a->t0; t < a->t1; t++) {
				const int64_t n_pos = f->pos[t] + 1;
				if (b0 >= n_pos)
					continue;
				const int64_t mb = (n_pos < b_end ? n_pos : b_end) - b0;
				const float *q0 = tile_q(a, t);
				float *out0 = tile_out(a, t);
				for (int g = 0; g < grp; g++) {
					float *sg = a->s + ((t - a->t0) * grp + g) * cap;
					if (which == 0)
						a->v_ops->dot_rows(sg + b0, 1, rows, hd, mb,
						                   q0 + g * jb->q_head, hd);
					else
						a->v_ops->axpy_rows(out0 + g * hd, sg + b0, rows,
						                    hd, mb, hd);
				}
			}
		}
	}
}

/* Each query's scores over its positions 0..pos scaled and softmaxed; its
 * output zeroed for the V rows. */
static void tile_softmax(const attn_tile *a)
{
	const moe_fwd *f = a->jb->f;
	const moe_hparams *hp = &f->m->hp;
	const int hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv;
	const float scale = 1.0f / sqrtf((float)hd);
	for (int64_t t = a->t0; t < a->t1; t++) {
		const int64_t n_pos = f->pos[t] + 1;
		for (int g = 0; g < grp; g++) {
			float *sg = a->s + ((t - a->t0) * grp + g) * f->scores_cap;
			for (int64_t p = 0; p < n_pos; p++)
				sg[p] *= scale;
			moe_softmax(sg, n_pos);
		}
		memset(tile_out(a, t), 0, sizeof(float) * (size_t)grp * (size_t)hd);
	}
}

/* The sigmoid output gate (qwen3next, qwen35moe): its rows follow each
 * head's query rows. */
static void tile_gate(const attn_tile *a)
{
	const moe_hparams *hp = &a->jb->f->m->hp;
	const int hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv;
	for (int64_t t = a->t0; t < a->t1; t++) {
		const float *q0 = tile_q(a, t);
		float *out0 = tile_out(a, t);
		for (int g = 0; g < grp; g++) {
			const float *gate = q0 + g * a->jb->q_head + hd;
			float *out = out0 + g * hd;
			for (int d = 0; d < hd; d++)
				out[d] *= moe_sigmoid(gate[d]);
		}
	}
}

/* One item = a tile of up to f->scores_qt consecutive tokens of one
 * sequence and one KV head with its group of query heads, so every cache row
 * is read and converted once per tile: MOE_ATTN_VTILE K rows at a time, which
 * meet every query of the tile MOE_ATTN_KSUB rows at a time in dot_rows (the
 * rows' dots with the query, the bits of one dot each); after each query's
 * scale and softmax, the V rows likewise, summed into each query's output by
 * axpy_rows (the bits of one axpy per position, in position order, however
 * the positions are cut).  A query only meets positions 0..pos of its own
 * token, so the result is each (token, head)'s own attention, bit for bit,
 * whatever tile the token falls in. */
static void attn_heads(void *arg, int ith, int nth)
{
	const attn_job *jb = arg;
	const moe_fwd *f = jb->f;
	const int grp = f->m->hp.n_head / f->m->hp.n_head_kv, nkv = f->m->hp.n_head_kv;
	attn_tile a = {.jb = jb, .v_ops = moe_vec_ops_get()};
	a.s = f->scores + (size_t)ith * f->scores_n; /* [qt][grp][cap] */
	a.buf = a.s + (size_t)f->scores_qt * (size_t)grp * (size_t)f->scores_cap; /* [VTILE][hd] */

	int64_t item = 0;
	for (a.t0 = 0; a.t0 < f->n; a.t0 = a.t1) {
		a.t1 = tile_end(f, a.t0);
		for (a.kvh = 0; a.kvh < nkv; a.kvh++, item++) {
			if (item % nth != ith)
				continue;
			int64_t n_max = 0;
			for (int64_t t = a.t0; t < a.t1; t++)
				if (f->pos[t] + 1 > n_max)
					n_max = f->pos[t] + 1;
			tile_rows(&a, 0, n_max);
			tile_softmax(&a);
			tile_rows(&a, 1, n_max);
			if (jb->gated)
				tile_gate(&a);
		}
	}
}

moe_err moe_fwd_attention(moe_fwd *f, int il)
{
	const moe_hparams *hp = &f->m->hp;
	const moe_layer_w *L = &f->m->layers[il];
	const int64_t n = f->n;
	const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
	const bool gated = moe_arch_is_hybrid(hp->arch);
	const int64_t kvd = (int64_t)nkv * hd;
	moe_err err;

	if ((err = moe_fwd_matmul(f, f->q, &L->wq, f->xn, n)) != MOE_OK ||
	    (err = moe_fwd_matmul(f, f->k, &L->wk, f->xn, n)) != MOE_OK ||
	    (err = moe_fwd_matmul(f, f->v, &L->wv, f->xn, n)) != MOE_OK)
		return err;

	attn_job jb = {
	    .f = f,
	    .il = il,
	    .q_stride = (int64_t)nh * hd * (gated ? 2 : 1),
	    .q_head = gated ? 2 * hd : hd,
	    .gated = gated,
	};
	for (int64_t t = 0; t < n; t++) {
		const float *cs = f->rope + t * hp->n_rot;
		for (int h = 0; h < nh; h++) {
			float *q = f->q + t * jb.q_stride + h * jb.q_head;
			moe_rmsnorm(q, q, L->q_norm, hd, hp->rms_eps);
			moe_rope_neox(q, cs, hp->n_rot);
		}
		float *k = f->k + t * kvd;
		for (int h = 0; h < nkv; h++) {
			moe_rmsnorm(k + (int64_t)h * hd, k + (int64_t)h * hd, L->k_norm, hd,
			            hp->rms_eps);
			moe_rope_neox(k + (int64_t)h * hd, cs, hp->n_rot);
		}
		if ((err = moe_kv_store(&f->kv,
		                        moe_kv_row(&f->kv, f->slot[t], L->idx_kv, 0, f->pos[t]),
		                        k)) != MOE_OK ||
		    (err = moe_kv_store(&f->kv,
		                        moe_kv_row(&f->kv, f->slot[t], L->idx_kv, 1, f->pos[t]),
		                        f->v + t * kvd)) != MOE_OK)
			return err;
	}

	/* small work runs on this thread: a pool barrier costs more */
	double work = 0;
	for (int64_t t = 0; t < n; t++)
		work += (double)(f->pos[t] + 1) * nh * hd;
	if (work < 2e5)
		attn_heads(&jb, 0, 1);
	else
		moe_pool_run(f->pool, attn_heads, &jb);
	return moe_fwd_matmul(f, f->y, &L->wo, f->att, n);
}
