/*
 * attention.c - grouped-query attention with q/k RMSNorm, NeoX RoPE (partial
 * for qwen3next), a per-sequence KV cache (F16 or F32) and, for qwen3next,
 * the sigmoid output gate whose rows are interleaved with the query rows
 * (head 0 q, head 0 gate, head 1 q, ...).
 *
 * A batch first writes the K/V rows of all its tokens into the cache, then
 * every (token, head) attends to positions 0..pos of its own sequence, which
 * is causal because a token never reads a position after its own.
 */
#include <math.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

static void *kv_row(const moe_fwd *f, void *cache, int kv_layer, int slot, int64_t pos)
{
	const size_t idx =
	    ((size_t)kv_layer * (size_t)f->o.n_slots + (size_t)slot) * (size_t)f->o.n_ctx +
	    (size_t)pos;
	return (char *)cache + idx * f->kv_row;
}

static void kv_store(void *dst, const float *src, int64_t n, moe_type t)
{
	if (t == MOE_TYPE_F32) {
		memcpy(dst, src, (size_t)n * sizeof(float));
		return;
	}
	uint16_t *h = dst;
	for (int64_t i = 0; i < n; i++)
		h[i] = moe_f32_to_f16(src[i]);
}

typedef struct attn_job {
	moe_fwd *f;
	int il;
	int64_t q_stride; /* floats per token row of f->q */
	int64_t q_head;   /* floats between heads in f->q (head_dim, or 2*head_dim gated) */
	bool gated;
} attn_job;

/* Row of head kvh at position p of the cache as floats: a pointer into the
 * cache (F32) or buf converted (F16). */
static const float *kv_head(const moe_fwd *f, const moe_vec_ops *v_ops, void *cache, int kv_layer,
                            int slot, int64_t p, int kvh, int hd, float *buf)
{
	const char *row = kv_row(f, cache, kv_layer, slot, p);
	if (f->o.kv_type == MOE_TYPE_F32)
		return (const float *)row + (int64_t)kvh * hd;
	v_ops->f16_to_f32(buf, (const uint16_t *)(row + (size_t)kvh * (size_t)hd * 2), hd);
	return buf;
}

/* One item = one token and one KV head with its group of query heads, so
 * every cache row is read (and converted) once per group. */
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
	float *s = f->scores + (size_t)ith * f->scores_n;  /* [grp][n_ctx] */
	float *buf = s + (size_t)grp * (size_t)f->o.n_ctx; /* [hd] */

	for (int64_t item = ith; item < f->n * nkv; item += nth) {
		const int64_t t = item / nkv;
		const int kvh = (int)(item % nkv);
		const int slot = f->slot[t];
		const int64_t n_pos = f->pos[t] + 1;
		const float *q0 = f->q + t * jb->q_stride + (int64_t)kvh * grp * jb->q_head;
		float *out0 = f->att + (t * nh + (int64_t)kvh * grp) * hd;

		for (int64_t p = 0; p < n_pos; p++) {
			const float *k =
			    kv_head(f, v_ops, f->k_cache, kv_layer, slot, p, kvh, hd, buf);
			for (int g = 0; g < grp; g++)
				s[(int64_t)g * f->o.n_ctx + p] =
				    v_ops->dot(q0 + g * jb->q_head, k, hd) * scale;
		}
		for (int g = 0; g < grp; g++) {
			moe_softmax(s + (int64_t)g * f->o.n_ctx, n_pos);
			for (int d = 0; d < hd; d++)
				out0[g * hd + d] = 0.0f;
		}
		for (int64_t p = 0; p < n_pos; p++) {
			const float *v =
			    kv_head(f, v_ops, f->v_cache, kv_layer, slot, p, kvh, hd, buf);
			for (int g = 0; g < grp; g++)
				v_ops->axpy(out0 + g * hd, s[(int64_t)g * f->o.n_ctx + p], v, hd);
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
	const bool gated = hp->arch == MOE_ARCH_QWEN3NEXT;
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
		kv_store(kv_row(f, f->k_cache, L->idx_kv, f->slot[t], f->pos[t]), k, kvd,
		         f->o.kv_type);
		kv_store(kv_row(f, f->v_cache, L->idx_kv, f->slot[t], f->pos[t]), f->v + t * kvd,
		         kvd, f->o.kv_type);
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
