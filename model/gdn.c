/*
 * gdn.c - the Gated-DeltaNet cores on one value head: the recurrent form for
 * decode and the chunked form for prefill (see deltanet.c for the math).
 * The loops over a value row run on the kernels' float vector ops, which
 * give the scalar loops' bits at every ISA level.
 */
#include <math.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

void moe_gdn_recurrent(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp)
{
	const moe_vec_ops *v_ops = moe_vec_ops_get();
	float *d = tmp; /* [hv] */
	for (int64_t i = 0; i < io->n_tok; i++) {
		const int64_t r = io->rows[i];
		const float *q = io->q + r * io->qk_stride;
		const float *k = io->k + r * io->qk_stride;
		const float *v = io->v + r * io->v_stride;
		float *o = io->o + r * io->o_stride;
		const float decay = expf(io->g[r * io->bg_stride]);
		const float beta = io->beta[r * io->bg_stride];

		/* decay the state and read it at k: d = (e^g S)^T k */
		for (int j = 0; j < hv; j++)
			d[j] = 0.0f;
		v_ops->scale(S, decay, (int64_t)hk * hv);
		v_ops->axpy_rows(d, k, S, hv, hk, hv);
		for (int j = 0; j < hv; j++) {
			d[j] = (v[j] - d[j]) * beta;
			o[j] = 0.0f;
		}
		/* S += k d^T, then o = S^T q with the updated rows */
		for (int a = 0; a < hk; a++)
			v_ops->axpy(S + (int64_t)a * hv, k[a], d, hv);
		v_ops->axpy_rows(o, q, S, hv, hk, hv);
		if (io->ck != NULL && io->ck[r] != NULL)
			memcpy(io->ck[r] + io->ck_off, S, (size_t)hk * (size_t)hv * sizeof(float));
	}
}

size_t moe_gdn_chunk_scratch(int hk, int hv)
{
	(void)hk;
	return (size_t)MOE_GDN_CHUNK + (size_t)MOE_GDN_CHUNK * (size_t)hv; /* >= hv */
}

void moe_gdn_chunked(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp)
{
	const moe_vec_ops *v_ops = moe_vec_ops_get();
	float *G = tmp;                             /* [C] cumulative log decay */
	float *D = tmp + MOE_GDN_CHUNK;             /* [C][hv] the d_t */
	float cf[MOE_GDN_CHUNK], ws[MOE_GDN_CHUNK]; /* coefficients of one axpy_rows */
	for (int64_t c0 = 0; c0 < io->n_tok; c0 += MOE_GDN_CHUNK) {
		const int c =
		    (int)(io->n_tok - c0 < MOE_GDN_CHUNK ? io->n_tok - c0 : MOE_GDN_CHUNK);
		const int32_t *rows = io->rows + c0;
		float acc = 0.0f;
		for (int t = 0; t < c; t++) {
			acc += io->g[rows[t] * io->bg_stride];
			G[t] = acc;
		}
		/* right-hand side: beta_t (v_t - e^{G_t} S0^T k_t) */
		for (int t = 0; t < c; t++) {
			const float *k = io->k + rows[t] * io->qk_stride;
			const float *v = io->v + rows[t] * io->v_stride;
			const float beta = io->beta[rows[t] * io->bg_stride];
			const float eg = expf(G[t]);
			float *d = D + (int64_t)t * hv;
			for (int j = 0; j < hv; j++)
				d[j] = 0.0f;
			v_ops->axpy_rows(d, k, S, hv, hk, hv);
			for (int j = 0; j < hv; j++)
				d[j] = beta * (v[j] - eg * d[j]);
			/* forward substitution against the earlier d_i (d - c * di
			 * has the same bits as d + (-c) * di) */
			for (int i = 0; i < t; i++) {
				const float *ki = io->k + rows[i] * io->qk_stride;
				cf[i] = -(beta * expf(G[t] - G[i]) * v_ops->dot(k, ki, hk));
			}
			v_ops->axpy_rows(d, cf, D, hv, t, hv);
		}
		/* outputs, from the state before the chunk */
		for (int t = 0; t < c; t++) {
			const float *q = io->q + rows[t] * io->qk_stride;
			float *o = io->o + rows[t] * io->o_stride;
			const float eg = expf(G[t]);
			for (int j = 0; j < hv; j++)
				o[j] = 0.0f;
			v_ops->axpy_rows(o, q, S, hv, hk, hv);
			v_ops->scale(o, eg, hv);
			for (int i = 0; i <= t; i++) {
				const float *ki = io->k + rows[i] * io->qk_stride;
				cf[i] = expf(G[t] - G[i]) * v_ops->dot(q, ki, hk);
			}
			v_ops->axpy_rows(o, cf, D, hv, t + 1, hv);
		}
		/* state at the end of the chunk */
		/* each row a of S takes w_i k_i[a] d_i for i in order, as row by
		 * row rank-one updates would */
		v_ops->scale(S, expf(G[c - 1]), (int64_t)hk * hv);
		for (int i = 0; i < c; i++)
			ws[i] = expf(G[c - 1] - G[i]);
		for (int a = 0; a < hk; a++) {
			for (int i = 0; i < c; i++)
				cf[i] = ws[i] * io->k[rows[i] * io->qk_stride + a];
			v_ops->axpy_rows(S + (int64_t)a * hv, cf, D, hv, c, hv);
		}
	}
}
