/* test_ops.c - layer ops of the forward pass against values worked out by
 * hand or by a plain double-precision formula written here, and the two
 * Gated-DeltaNet forms against a direct transcription of the delta rule. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

Test(ops, rmsnorm_matches_formula)
{
	const float x[4] = {1.0f, -2.0f, 3.0f, -4.0f};
	const float w[4] = {1.0f, 0.5f, 2.0f, 1.0f};
	float y[4];
	/* mean(x^2) = 30/4 = 7.5 */
	const double inv = 1.0 / sqrt(7.5 + 1e-6);
	moe_rmsnorm(y, x, w, 4, 1e-6f);
	for (int i = 0; i < 4; i++)
		cr_assert_float_eq(y[i], x[i] * inv * w[i], 1e-6, "i=%d", i);
	moe_rmsnorm(y, x, NULL, 4, 1e-6f);
	for (int i = 0; i < 4; i++)
		cr_assert_float_eq(y[i], x[i] * inv, 1e-6, "i=%d", i);
	float z[4];
	memcpy(z, x, sizeof z);
	moe_rmsnorm(z, z, w, 4, 1e-6f); /* in place */
	for (int i = 0; i < 4; i++)
		cr_assert_float_eq(z[i], x[i] * inv * w[i], 1e-6);
}

Test(ops, l2norm_unit_length_and_eps_floor)
{
	float x[2] = {3.0f, 4.0f};
	moe_l2norm(x, x, 2, 1e-6f);
	cr_assert_float_eq(x[0], 0.6f, 1e-7);
	cr_assert_float_eq(x[1], 0.8f, 1e-7);
	float tiny[2] = {1e-8f, 0.0f};
	moe_l2norm(tiny, tiny, 2, 1e-3f); /* norm 1e-8 < eps: divide by eps */
	cr_assert_float_eq(tiny[0], 1e-5f, 1e-9);
}

Test(ops, rope_rotates_pairs_neox_and_leaves_the_rest)
{
	/* head_dim 6, n_rot 4: pairs (0,2) and (1,3); dims 4,5 untouched */
	float cs[4];
	const int pos = 3;
	const float base = 100.0f;
	moe_rope_cache(cs, pos, 4, base);
	const double th0 = pos * 1.0, th1 = pos * pow(base, -2.0 / 4.0);
	cr_assert_float_eq(cs[0], cos(th0), 1e-6);
	cr_assert_float_eq(cs[1], sin(th0), 1e-6);
	cr_assert_float_eq(cs[2], cos(th1), 1e-6);
	cr_assert_float_eq(cs[3], sin(th1), 1e-6);

	float x[6] = {1, 2, 3, 4, 5, 6};
	moe_rope_neox(x, cs, 4);
	cr_assert_float_eq(x[0], 1 * cos(th0) - 3 * sin(th0), 1e-5);
	cr_assert_float_eq(x[2], 1 * sin(th0) + 3 * cos(th0), 1e-5);
	cr_assert_float_eq(x[1], 2 * cos(th1) - 4 * sin(th1), 1e-5);
	cr_assert_float_eq(x[3], 2 * sin(th1) + 4 * cos(th1), 1e-5);
	cr_assert_eq(x[4], 5.0f);
	cr_assert_eq(x[5], 6.0f);

	moe_rope_cache(cs, 0, 4, base); /* position 0 is the identity */
	float y[4] = {0.5f, -1.0f, 2.0f, 7.0f};
	moe_rope_neox(y, cs, 4);
	cr_assert_eq(y[0], 0.5f);
	cr_assert_eq(y[1], -1.0f);
	cr_assert_eq(y[2], 2.0f);
	cr_assert_eq(y[3], 7.0f);
}

/* IMROPE for a text token (qwen35moe): sections [2, 1, 1, 1] over 8 pairs put
 * pair i in sector i mod 5; sectors 0-3 take the token's position (t, h, w, t
 * by llama.cpp's interleaving), sector 4 the fourth section's position 0.
 * Qwen3.5's [11, 11, 10, 0] over 32 pairs leaves none in the fourth section:
 * the angles are NeoX's, bit for bit. */
Test(ops, imrope_text_positions_by_section)
{
	float cs[16], ref[16];
	const int32_t sec[4] = {2, 1, 1, 1};
	moe_rope_cache_imrope(cs, 37, 16, 1e7f, sec);
	moe_rope_cache(ref, 37, 16, 1e7f);
	for (int i = 0; i < 8; i++) {
		const bool still = i % 5 == 4;
		cr_assert_eq(cs[2 * i], still ? 1.0f : ref[2 * i], "pair %d", i);
		cr_assert_eq(cs[2 * i + 1], still ? 0.0f : ref[2 * i + 1], "pair %d", i);
	}
	float big[64], nx[64];
	const int32_t q35[4] = {11, 11, 10, 0};
	moe_rope_cache_imrope(big, 4097, 64, 1e7f, q35);
	moe_rope_cache(nx, 4097, 64, 1e7f);
	cr_assert_eq(memcmp(big, nx, sizeof big), 0);
	/* sections [1, 1, 0, 1]: sector 2 would be the width section, which has
	 * no pairs, so it falls to the fourth */
	const int32_t gap[4] = {1, 1, 0, 1};
	moe_rope_cache_imrope(cs, 5, 8, 1e4f, gap);
	moe_rope_cache(ref, 5, 8, 1e4f);
	cr_assert(cs[0] == ref[0] && cs[2] == ref[2] && cs[4] == 1.0f && cs[5] == 0.0f &&
	          cs[6] == ref[6]);
}

Test(ops, softmax_matches_formula_and_survives_large_inputs)
{
	float x[3] = {1.0f, 2.0f, 3.0f};
	const double den = exp(1) + exp(2) + exp(3);
	moe_softmax(x, 3);
	cr_assert_float_eq(x[0], exp(1) / den, 1e-7);
	cr_assert_float_eq(x[1], exp(2) / den, 1e-7);
	cr_assert_float_eq(x[2], exp(3) / den, 1e-7);
	float big[2] = {1000.0f, 1000.0f};
	moe_softmax(big, 2);
	cr_assert_float_eq(big[0], 0.5f, 1e-7);
	cr_assert_float_eq(big[1], 0.5f, 1e-7);
}

Test(ops, activations)
{
	cr_assert_float_eq(moe_sigmoid(0.0f), 0.5f, 1e-7);
	cr_assert_float_eq(moe_silu(2.0f), 2.0 / (1.0 + exp(-2.0)), 1e-6);
	cr_assert_float_eq(moe_softplus(1.0f), log(1.0 + exp(1.0)), 1e-6);
	cr_assert_eq(moe_softplus(50.0f), 50.0f);
	float g[2] = {1.0f, -1.0f}, u[2] = {3.0f, 2.0f}, y[2];
	moe_swiglu(y, g, u, 2);
	cr_assert_float_eq(y[0], 3.0 / (1.0 + exp(-1.0)), 1e-6);
	cr_assert_float_eq(y[1], 2.0 * -1.0 / (1.0 + exp(1.0)), 1e-6);
}

Test(ops, exp_approx_within_4e_7_and_weights_follow_the_rules)
{
	/* every 2^-10 step over the range, against exp in double */
	double worst = 0.0;
	for (double x = -87.0; x <= 88.0; x += 1.0 / 1024) {
		const double want = exp((double)(float)x);
		const double rel = fabs((double)moe_exp_approx((float)x) - want) / want;
		worst = rel > worst ? rel : worst;
	}
	cr_assert(worst < 4e-7, "worst relative error %g", worst);
	cr_assert_eq(moe_exp_approx(0.0f), 1.0f);
	cr_assert_eq(moe_exp_approx(-87.5f), 0.0f);
	cr_assert_eq(moe_exp_approx(-INFINITY), 0.0f);
	cr_assert(isnan(moe_exp_approx(NAN)));

	/* weights: e^((w - max) / temp) at or above lim, 0 below it and for NaN;
	 * the vectorised loop and its scalar tail agree with the function */
	float w[11], ref[11];
	for (int i = 0; i < 11; i++)
		w[i] = (float)i * 0.7f - 3.0f;
	w[3] = NAN;
	w[7] = -INFINITY;
	memcpy(ref, w, sizeof w);
	moe_exp_weights(w, 11, 4.0f, 0.8f, -2.5f);
	for (int i = 0; i < 11; i++) {
		const float want = ref[i] >= -2.5f ? moe_exp_approx((ref[i] - 4.0f) / 0.8f) : 0.0f;
		cr_assert_eq(w[i], want, "w[%d] = %g, want %g", i, (double)w[i], (double)want);
	}
	cr_assert_eq(w[0], 0.0f); /* -3 < lim */
	cr_assert_eq(w[3], 0.0f); /* NaN */
	cr_assert_eq(w[7], 0.0f); /* -inf */
	cr_assert(w[10] > 0.0f);
}

Test(ops, topk_descending_ties_to_lower_index)
{
	const float p[6] = {0.1f, 0.3f, 0.2f, 0.3f, 0.05f, 0.05f};
	int32_t ids[3];
	float v[3];
	moe_topk(ids, v, p, 6, 3);
	cr_assert_eq(ids[0], 1);
	cr_assert_eq(ids[1], 3);
	cr_assert_eq(ids[2], 2);
	cr_assert_eq(v[0], 0.3f);
	cr_assert_eq(v[2], 0.2f);
	moe_topk(ids, v, p, 6, 1);
	cr_assert_eq(ids[0], 1);
	const float q[3] = {0.0f, 0.0f, 0.0f};
	moe_topk(ids, v, q, 3, 3);
	cr_assert_eq(ids[0], 0);
	cr_assert_eq(ids[1], 1);
	cr_assert_eq(ids[2], 2);
}

Test(ops, f16_known_values_and_rounding)
{
	cr_assert_eq(moe_f32_to_f16(1.0f), 0x3c00);
	cr_assert_eq(moe_f32_to_f16(-2.0f), 0xc000);
	cr_assert_eq(moe_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(moe_f32_to_f16(65520.0f), 0x7c00); /* rounds to inf */
	cr_assert_eq(moe_f32_to_f16(0.0f), 0x0000);
	cr_assert_eq(moe_f32_to_f16(5.9604645e-8f), 0x0001);         /* smallest subnormal */
	cr_assert_eq(moe_f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00); /* tie to even */
	cr_assert_eq(moe_f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02); /* tie to even (up) */
	cr_assert_eq(moe_f32_to_f16(INFINITY), 0x7c00);
	cr_assert(isnan(moe_f16_to_f32(moe_f32_to_f16(NAN))));
	cr_assert_eq(moe_f16_to_f32(0x3c00), 1.0f);
	cr_assert_eq(moe_f16_to_f32(0x0001), 5.9604645e-8f);
	cr_assert_eq(moe_f16_to_f32(0xfbff), -65504.0f);
	for (uint32_t h = 0; h < 0x7c00; h++) /* every finite half round-trips */
		cr_assert_eq(moe_f32_to_f16(moe_f16_to_f32((uint16_t)h)), h, "h=%x", h);
}

/* ---- Gated DeltaNet cores ----------------------------------------------------------- */

/* The delta rule exactly as written in tests/fixtures/README.md, in double. */
static void gdn_reference(double *o, double *S, const float *q, const float *k, const float *v,
                          const float *beta, const float *g, int n, int hk, int hv)
{
	for (int t = 0; t < n; t++) {
		const double decay = exp(g[t]);
		for (int i = 0; i < hk * hv; i++)
			S[i] *= decay;
		for (int j = 0; j < hv; j++) {
			double kv = 0;
			for (int i = 0; i < hk; i++)
				kv += S[i * hv + j] * k[t * hk + i];
			const double d = (v[t * hv + j] - kv) * beta[t];
			for (int i = 0; i < hk; i++)
				S[i * hv + j] += k[t * hk + i] * d;
		}
		for (int j = 0; j < hv; j++) {
			double s = 0;
			for (int i = 0; i < hk; i++)
				s += S[i * hv + j] * q[t * hk + i];
			o[t * hv + j] = s;
		}
	}
}

static float urand(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return (float)((*s >> 8) & 0xffff) / 65536.0f;
}

static void check_gdn(int n, int hk, int hv, bool chunked)
{
	unsigned seed = 7;
	float *q = malloc(sizeof(float) * n * hk), *k = malloc(sizeof(float) * n * hk);
	float *v = malloc(sizeof(float) * n * hv), *o = malloc(sizeof(float) * n * hv);
	float beta[200], g[200];
	int32_t rows[200];
	for (int t = 0; t < n; t++) {
		double nq = 0, nk = 0;
		for (int i = 0; i < hk; i++) {
			q[t * hk + i] = urand(&seed) - 0.5f;
			k[t * hk + i] = urand(&seed) - 0.5f;
			nq += q[t * hk + i] * q[t * hk + i];
			nk += k[t * hk + i] * k[t * hk + i];
		}
		for (int i = 0; i < hk; i++) {
			q[t * hk + i] /= (float)sqrt(nq) * sqrtf((float)hk);
			k[t * hk + i] /= (float)sqrt(nk);
		}
		for (int j = 0; j < hv; j++)
			v[t * hv + j] = 2.0f * urand(&seed) - 1.0f;
		beta[t] = urand(&seed);
		g[t] = -0.5f * urand(&seed);
		rows[t] = t;
	}
	float *S = calloc((size_t)hk * hv, sizeof(float));
	double *Sr = calloc((size_t)hk * hv, sizeof(double));
	double *orf = malloc(sizeof(double) * n * hv);
	/* start from a non-zero state: run a few tokens first through both */
	moe_gdn_io io = {.rows = rows,
	                 .n_tok = n,
	                 .q = q,
	                 .k = k,
	                 .qk_stride = hk,
	                 .v = v,
	                 .v_stride = hv,
	                 .beta = beta,
	                 .g = g,
	                 .bg_stride = 1,
	                 .o = o,
	                 .o_stride = hv};
	float *tmp = malloc(sizeof(float) * moe_gdn_chunk_scratch(hk, hv));
	if (chunked)
		moe_gdn_chunked(S, &io, hk, hv, tmp);
	else
		moe_gdn_recurrent(S, &io, hk, hv, tmp);
	gdn_reference(orf, Sr, q, k, v, beta, g, n, hk, hv);
	for (int i = 0; i < n * hv; i++)
		cr_assert(fabs(o[i] - orf[i]) < 2e-5, "%s o[%d] = %g, reference %g",
		          chunked ? "chunked" : "recurrent", i, o[i], orf[i]);
	for (int i = 0; i < hk * hv; i++)
		cr_assert(fabs(S[i] - Sr[i]) < 2e-5, "%s S[%d] = %g, reference %g",
		          chunked ? "chunked" : "recurrent", i, S[i], Sr[i]);
	/* a second run continues from the carried state */
	if (chunked)
		moe_gdn_chunked(S, &io, hk, hv, tmp);
	else
		moe_gdn_recurrent(S, &io, hk, hv, tmp);
	gdn_reference(orf, Sr, q, k, v, beta, g, n, hk, hv);
	for (int i = 0; i < n * hv; i++)
		cr_assert(fabs(o[i] - orf[i]) < 2e-5, "second run o[%d] = %g, reference %g", i,
		          o[i], orf[i]);
	free(q), free(k), free(v), free(o), free(S), free(Sr), free(orf), free(tmp);
}

Test(gdn, recurrent_matches_reference)
{
	check_gdn(37, 16, 8, false);
}

Test(gdn, chunked_matches_reference_across_chunk_boundaries)
{
	check_gdn(150, 16, 8, true); /* 64 + 64 + 22 */
	check_gdn(5, 8, 16, true);
}
