/*
 * deltanet.c - the Gated DeltaNet (linear attention) layer of qwen3next and
 * qwen35moe.
 *
 * Per token t and value head (S: [head_k][head_v], zeros at start):
 *   S = exp(g) * S;  d = (v - S^T k) * beta;  S = S + k d^T;  o = S^T q
 * with q, k L2-normalised after a causal depthwise conv + SiLU, q scaled by
 * 1/sqrt(head_k), beta = sigmoid(b), g = ssm_a * softplus(a + dt_bias).
 * Output: rmsnorm(o per head, ssm_norm) * silu(z), then ssm_out.
 *
 * The two archs differ in the projections and in which key head a value head
 * reads: qwen3next's ssm_ba rows come per key head ([b for its r value heads,
 * a for them]) and value head j reads key head j / r (llama.cpp's repeat
 * interleave); qwen35moe has ssm_beta and ssm_alpha rows per value head, and
 * its converter stores the value heads tiled, so value head j reads key head
 * j mod n_k_heads (ggml's broadcast).
 *
 * Decode runs the recurrence token by token; prefill runs it in chunks of
 * MOE_GDN_CHUNK tokens: with G_t the cumulative log decay inside a chunk and
 * S0 the state before it,
 *   d_t = beta_t (v_t - e^{G_t} S0^T k_t) - beta_t sum_{i<t} e^{G_t-G_i} (k_t.k_i) d_i
 *   o_t = e^{G_t} S0^T q_t + sum_{i<=t} e^{G_t-G_i} (q_t.k_i) d_i
 *   S   = e^{G_c} S0 + sum_i e^{G_c-G_i} k_i d_i^T
 * (a unit lower-triangular solve for the d_t, then matrix products), which
 * is the same function of the inputs.  All state arithmetic is F32.
 */
#include <math.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

/* ---- the layer ------------------------------------------------------------------ */

typedef struct gdn_job {
	moe_fwd *f;
	int rec;    /* index among DeltaNet layers */
	bool tiled; /* value head j reads key head j mod n_k_heads (qwen35moe), else j / r */
} gdn_job;

static void gdn_heads(void *arg, int ith, int nth)
{
	const gdn_job *jb = arg;
	moe_fwd *f = jb->f;
	const moe_hparams *hp = &f->m->hp;
	const int nv = hp->ssm_n_v_heads, nk = hp->ssm_n_k_heads;
	const int hk = hp->ssm_head_k, hv = hp->ssm_head_v, r = nv / nk;
	const int64_t cd = hp->ssm_conv_dim;
	const size_t conv_floats = (size_t)(hp->ssm_conv_kernel - 1) * (size_t)cd;
	float *tmp = f->gdn_tmp + (size_t)ith * f->gdn_tmp_n;
	for (int item = ith; item < f->n_runs * nv; item += nth) {
		const int run = item / nv, j = item % nv;
		const int slot = f->run_slot[run];
		const int kh = jb->tiled ? j % nk : j / r;
		moe_gdn_io io = {
		    .rows = f->order + f->runs[run],
		    .n_tok = f->runs[run + 1] - f->runs[run],
		    .q = f->qkv + (int64_t)kh * hk,
		    .k = f->qkv + (int64_t)nk * hk + (int64_t)kh * hk,
		    .qk_stride = cd,
		    .v = f->qkv + 2 * (int64_t)nk * hk + (int64_t)j * hv,
		    .v_stride = cd,
		    .beta = f->beta + j,
		    .g = f->gdec + j,
		    .bg_stride = nv,
		    .o = f->att + (int64_t)j * hv,
		    .o_stride = (int64_t)nv * hv,
		    .ck = f->ck != NULL ? f->ck_row : NULL,
		    .ck_off = conv_floats + (size_t)j * (size_t)hk * (size_t)hv,
		};
		float *S = f->ssm_state +
		           (((size_t)jb->rec * (size_t)f->o.n_slots + (size_t)slot) * (size_t)nv +
		            (size_t)j) *
		               (size_t)hk * (size_t)hv;
		if (f->o.gdn_chunk > 0 && io.n_tok >= f->o.gdn_chunk)
			moe_gdn_chunked(S, &io, hk, hv, tmp);
		else
			moe_gdn_recurrent(S, &io, hk, hv, tmp);
	}
}

/* Causal depthwise conv over one run of tokens with the carried state, then
 * SiLU; writes the result over the input rows.
 *   state: [K-1][conv_dim] oldest first;  w: [conv_dim][K]; out: [conv_dim] scratch */
static void conv_run(float *qkv, const int32_t *rows, int64_t n_tok, float *state, const float *w,
                     int K, int64_t cd, float *out, float *const *ck)
{
	for (int64_t i = 0; i < n_tok; i++) {
		float *x = qkv + rows[i] * cd;
		for (int64_t c = 0; c < cd; c++) {
			const float *wc = w + c * K;
			float s = 0.0f;
			for (int k = 0; k < K - 1; k++)
				s += state[(int64_t)k * cd + c] * wc[k];
			s += x[c] * wc[K - 1];
			out[c] = s;
		}
		if (K > 1) {
			memmove(state, state + cd, (size_t)(K - 2) * (size_t)cd * sizeof(float));
			memcpy(state + (int64_t)(K - 2) * cd, x, (size_t)cd * sizeof(float));
		}
		if (ck != NULL && ck[rows[i]] != NULL)
			memcpy(ck[rows[i]], state, (size_t)(K - 1) * (size_t)cd * sizeof(float));
		for (int64_t c = 0; c < cd; c++)
			x[c] = moe_silu(out[c]);
	}
}

moe_err moe_fwd_deltanet(moe_fwd *f, int il)
{
	const moe_hparams *hp = &f->m->hp;
	const moe_layer_w *L = &f->m->layers[il];
	const int64_t n = f->n;
	const int nv = hp->ssm_n_v_heads, nk = hp->ssm_n_k_heads;
	const int hk = hp->ssm_head_k, hv = hp->ssm_head_v, r = nv / nk;
	const int K = hp->ssm_conv_kernel;
	const int64_t cd = hp->ssm_conv_dim;
	moe_err err;

	const bool split = hp->arch == MOE_ARCH_QWEN35MOE;
	if ((err = moe_fwd_matmul(f, f->qkv, &L->wqkv, f->xn, n)) != MOE_OK ||
	    (err = moe_fwd_matmul(f, f->z, &L->wz, f->xn, n)) != MOE_OK)
		return err;
	/* qwen35moe: b into beta and a into gdec, per value head, in place below */
	if (split && ((err = moe_fwd_matmul(f, f->beta, &L->wbeta, f->xn, n)) != MOE_OK ||
	              (err = moe_fwd_matmul(f, f->gdec, &L->walpha, f->xn, n)) != MOE_OK))
		return err;
	if (!split && (err = moe_fwd_matmul(f, f->ba, &L->wba, f->xn, n)) != MOE_OK)
		return err;

	/* beta and g per token and value head; ssm_ba rows are grouped per key
	 * head: [b for its r value heads, a for them]. */
	for (int64_t t = 0; t < n; t++) {
		const float *ba = f->ba + t * 2 * nv;
		for (int j = 0; j < nv; j++) {
			const int grp = j / r, i = j % r;
			const float b = split ? f->beta[t * nv + j] : ba[grp * 2 * r + i];
			const float a = split ? f->gdec[t * nv + j] : ba[grp * 2 * r + r + i];
			f->beta[t * nv + j] = moe_sigmoid(b);
			f->gdec[t * nv + j] = L->ssm_a[j] * moe_softplus(a + L->dt_bias[j]);
		}
	}

	/* each row's checkpoint place in this layer (a chunked run keeps none) */
	if (f->ck != NULL) {
		const size_t layer = (size_t)L->idx_rec * ((size_t)(K - 1) * (size_t)cd +
		                                           (size_t)nv * (size_t)hk * (size_t)hv);
		for (int run = 0; run < f->n_runs; run++) {
			const int s = f->run_slot[run];
			const int64_t n_tok = f->runs[run + 1] - f->runs[run];
			if (f->o.gdn_chunk > 0 && n_tok >= f->o.gdn_chunk)
				f->ck_hi[s] = f->ck_lo[s]; /* none for this step */
			for (int32_t i = f->runs[run]; i < f->runs[run + 1]; i++) {
				const int32_t t = f->order[i];
				float *c = moe_fwd_ck(f, s, (int64_t)f->pos[t] + 1);
				f->ck_row[t] = c != NULL ? c + layer : NULL;
			}
		}
	}

	/* conv + SiLU per sequence, in token order */
	for (int run = 0; run < f->n_runs; run++) {
		float *state = f->conv_state + ((size_t)L->idx_rec * (size_t)f->o.n_slots +
		                                (size_t)f->run_slot[run]) *
		                                   (size_t)(K - 1) * (size_t)cd;
		conv_run(f->qkv, f->order + f->runs[run], f->runs[run + 1] - f->runs[run], state,
		         L->conv1d, K, cd, f->conv_tmp, f->ck != NULL ? f->ck_row : NULL);
	}

	/* L2-normalise q and k per key head; fold 1/sqrt(head_k) into q */
	const float qscale = 1.0f / sqrtf((float)hk);
	for (int64_t t = 0; t < n; t++) {
		float *row = f->qkv + t * cd;
		for (int h = 0; h < 2 * nk; h++)
			moe_l2norm(row + (int64_t)h * hk, row + (int64_t)h * hk, hk, hp->rms_eps);
		for (int64_t c = 0; c < (int64_t)nk * hk; c++)
			row[c] *= qscale;
	}

	/* small work runs on this thread: a pool barrier costs more */
	gdn_job jb = {.f = f, .rec = L->idx_rec, .tiled = split};
	if ((double)n * nv * hk * hv < 2e5)
		gdn_heads(&jb, 0, 1);
	else
		moe_pool_run(f->pool, gdn_heads, &jb);

	/* gated RMSNorm per head */
	for (int64_t t = 0; t < n; t++) {
		for (int j = 0; j < nv; j++) {
			float *o = f->att + (t * nv + j) * hv;
			const float *z = f->z + (t * nv + j) * hv;
			moe_rmsnorm(o, o, L->ssm_norm, hv, hp->rms_eps);
			for (int c = 0; c < hv; c++)
				o[c] *= moe_silu(z[c]);
		}
	}
	return moe_fwd_matmul(f, f->y, &L->ssm_out, f->att, n);
}
