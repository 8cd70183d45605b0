/*
 * gdn.c - the Gated-DeltaNet cores on one value head: the recurrent form for
 * decode and the chunked form for prefill (see deltanet.c for the math).
 */
#include <math.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

void moe_gdn_recurrent(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp)
{
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
		for (int a = 0; a < hk; a++) {
			float *row = S + (int64_t)a * hv;
			const float ka = k[a];
			for (int j = 0; j < hv; j++) {
				row[j] *= decay;
				d[j] += row[j] * ka;
			}
		}
		for (int j = 0; j < hv; j++) {
			d[j] = (v[j] - d[j]) * beta;
			o[j] = 0.0f;
		}
		/* S += k d^T, then o = S^T q with the updated rows */
		for (int a = 0; a < hk; a++) {
			float *row = S + (int64_t)a * hv;
			const float ka = k[a], qa = q[a];
			for (int j = 0; j < hv; j++) {
				row[j] += ka * d[j];
				o[j] += row[j] * qa;
			}
		}
	}
}

size_t moe_gdn_chunk_scratch(int hk, int hv)
{
	(void)hk;
	return (size_t)MOE_GDN_CHUNK + (size_t)MOE_GDN_CHUNK * (size_t)hv; /* >= hv */
}

void moe_gdn_chunked(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp)
{
	float *G = tmp;                 /* [C] cumulative log decay */
	float *D = tmp + MOE_GDN_CHUNK; /* [C][hv] the d_t */
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
			for (int a = 0; a < hk; a++) {
				const float *row = S + (int64_t)a * hv;
				const float ka = k[a];
				for (int j = 0; j < hv; j++)
					d[j] += row[j] * ka;
			}
			for (int j = 0; j < hv; j++)
				d[j] = beta * (v[j] - eg * d[j]);
			/* forward substitution against the earlier d_i */
			for (int i = 0; i < t; i++) {
				const float *ki = io->k + rows[i] * io->qk_stride;
				const float coef =
				    beta * expf(G[t] - G[i]) * moe_dot_f32(k, ki, hk);
				const float *di = D + (int64_t)i * hv;
				for (int j = 0; j < hv; j++)
					d[j] -= coef * di[j];
			}
		}
		/* outputs, from the state before the chunk */
		for (int t = 0; t < c; t++) {
			const float *q = io->q + rows[t] * io->qk_stride;
			float *o = io->o + rows[t] * io->o_stride;
			const float eg = expf(G[t]);
			for (int j = 0; j < hv; j++)
				o[j] = 0.0f;
			for (int a = 0; a < hk; a++) {
				const float *row = S + (int64_t)a * hv;
				const float qa = q[a];
				for (int j = 0; j < hv; j++)
					o[j] += row[j] * qa;
			}
			for (int j = 0; j < hv; j++)
				o[j] *= eg;
			for (int i = 0; i <= t; i++) {
				const float *ki = io->k + rows[i] * io->qk_stride;
				const float coef = expf(G[t] - G[i]) * moe_dot_f32(q, ki, hk);
				const float *di = D + (int64_t)i * hv;
				for (int j = 0; j < hv; j++)
					o[j] += coef * di[j];
			}
		}
		/* state at the end of the chunk */
		const float eg_end = expf(G[c - 1]);
		for (int a = 0; a < hk; a++) {
			float *row = S + (int64_t)a * hv;
			for (int j = 0; j < hv; j++)
				row[j] *= eg_end;
		}
		for (int i = 0; i < c; i++) {
			const float *ki = io->k + rows[i] * io->qk_stride;
			const float w = expf(G[c - 1] - G[i]);
			const float *di = D + (int64_t)i * hv;
			for (int a = 0; a < hk; a++) {
				float *row = S + (int64_t)a * hv;
				const float ka = w * ki[a];
				for (int j = 0; j < hv; j++)
					row[j] += ka * di[j];
			}
		}
	}
}
