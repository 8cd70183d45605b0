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

/* One item = one token and one KV head with its group of query heads, so
 * every cache row is read (and converted) once per group: each K row meets
 * the group's queries in one dot_rows (independent sums, the bits of one dot
 * each); the V rows are converted MOE_ATTN_VTILE at a time and summed into
 * each head's output by axpy_rows (the bits of one axpy per position, in
 * position order). */
static void attn_heads(void *arg, int ith, int nth)
{
	const attn_job *jb = arg;
	moe_fwd *f = jb->f;
	const moe_vec_ops *v_ops = moe_vec_ops_get();
	const moe_hparams *hp = &f->m->hp;
	const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
	const int grp = nh / nkv;
	const int kv_layer = f->m->layers[jb->il].idx_kv;
	const float scale = 1.0f / sqrtf((float)hd);
	const int64_t cap = f->scores_cap;
	const size_t head_bytes = moe_row_size(f->kv.type, hd);
	float *s = f->scores + (size_t)ith * f->scores_n; /* [grp][cap] */
	float *buf = s + (size_t)grp * (size_t)cap;       /* [MOE_ATTN_VTILE][hd] */

	for (int64_t item = ith; item < f->n * nkv; item += nth) {
		const int64_t t = item / nkv;
		const int kvh = (int)(item % nkv);
		const int slot = f->slot[t];
		const int64_t n_pos = f->pos[t] + 1;
		const float *q0 = f->q + t * jb->q_stride + (int64_t)kvh * grp * jb->q_head;
		float *out0 = f->att + (t * nh + (int64_t)kvh * grp) * hd;

		for (int64_t p = 0; p < n_pos; p++) {
			const float *k =
			    kv_head(f, v_ops, 0, kv_layer, slot, p, kvh, head_bytes, hd, buf);
			v_ops->dot_rows(s + p, cap, q0, jb->q_head, grp, k, hd);
		}
		for (int g = 0; g < grp; g++) {
			float *sg = s + (int64_t)g * cap;
			for (int64_t p = 0; p < n_pos; p++)
				sg[p] *= scale;
			moe_softmax(sg, n_pos);
			for (int d = 0; d < hd; d++)
				out0[g * hd + d] = 0.0f;
		}
		for (int64_t p0 = 0; p0 < n_pos; p0 += MOE_ATTN_VTILE) {
			const int64_t m = n_pos - p0 < MOE_ATTN_VTILE ? n_pos - p0 : MOE_ATTN_VTILE;
			for (int64_t i = 0; i < m; i++) {
				float *row = buf + i * hd;
				const float *src = kv_head(f, v_ops, 1, kv_layer, slot, p0 + i, kvh,
				                           head_bytes, hd, row);
				if (src != row)
					memcpy(row, src, sizeof(float) * (size_t)hd);
			}
			for (int g = 0; g < grp; g++)
				v_ops->axpy_rows(out0 + g * hd, s + (int64_t)g * cap + p0, buf, hd,
				                 m, hd);
		}
		if (jb->gated) {
			for (int g = 0; g < grp; g++) {
				const float *gate = q0 + g * jb->q_head + hd;
				float *out = out0 + g * hd;
				for (int d = 0; d < hd; d++)
					out[d] *= moe_sigmoid(gate[d]);
			}
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
