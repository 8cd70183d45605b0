/*
 * ops.h - the element-wise and per-row layer operations of the forward pass:
 * RMSNorm, L2 norm, RoPE (NeoX layout, partial rotary), softmax, SiLU /
 * sigmoid / softplus, SwiGLU, top-k selection and f16 conversion.
 *
 * They follow what llama.cpp's CPU backend computes (sums of squares and the
 * softmax denominator in double, RoPE angles by repeated multiplication in
 * float), so that an F32 model reproduces its logits to ~1e-6.  All functions
 * are pure and thread-safe; none allocates.
 */
#ifndef MOE_OPS_H
#define MOE_OPS_H

#include <math.h>
#include <stdint.h>

/* y[0..n) = x / sqrt(mean(x^2) + eps) * w  (w NULL: no weight).  y may be x. */
void moe_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);

/* y[0..n) = x / max(||x||_2, eps).  y may be x. */
void moe_l2norm(float *y, const float *x, int64_t n, float eps);

/* Angles of RoPE at position pos for n_rot rotated dims:
 * cs[2*i] = cos(pos * base^(-2i/n_rot)), cs[2*i+1] = sin(...), i < n_rot/2.
 *   cs: f32 [n_rot/2][2] */
void moe_rope_cache(float *cs, int64_t pos, int n_rot, float base);

/* The same for llama.cpp's interleaved multi-section rotary (IMROPE, qwen35moe)
 * on a text token: pair i lies in sector s = i mod (sections[0] + ... + [3]);
 * sectors 3j, 3j+1, 3j+2 below 3*sections[0], 3*sections[1], 3*sections[2]
 * take the temporal, height and width positions, which llama.cpp sets all to
 * pos for text; every other sector takes the fourth position, which it sets
 * to 0 (cos 1, sin 0: the pair is not rotated).  Rotate with moe_rope_neox.
 *   sections: the 4 values of rope.dimension_sections, sum > 0 */
void moe_rope_cache_imrope(float *cs, int64_t pos, int n_rot, float base,
                           const int32_t sections[4]);

/* Rotates one head vector x in NeoX layout: pairs (i, i + n_rot/2) for
 * i < n_rot/2 by the angles in cs (moe_rope_cache); dims >= n_rot are left as
 * they are (partial rotary).   x: f32 [head_dim >= n_rot] */
void moe_rope_neox(float *x, const float *cs, int n_rot);

/* In place: x = exp(x - max) / sum(exp(x - max)) over x[0..n), n >= 1. */
void moe_softmax(float *x, int64_t n);

/* e^x in float by range reduction and a polynomial, written so a loop over it
 * vectorizes: relative error below 4e-7 for x in [-87, 88] (test_ops); 0 below
 * -87 (where e^x < 2^-125), e^88 above 88, NaN for NaN. */
float moe_exp_approx(float x);

/* In place, the sampler's draw weights: w[i] = e^((w[i] - max) / temp) by
 * moe_exp_approx where w[i] >= lim, else 0 (NaN included). */
void moe_exp_weights(float *w, int64_t n, float max, float temp, float lim);

static inline float moe_sigmoid(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

static inline float moe_silu(float x)
{
	return x / (1.0f + expf(-x));
}

static inline float moe_softplus(float x)
{
	return x > 20.0f ? x : log1pf(expf(x));
}

/* y[i] = silu(g[i]) * u[i] for i < n.  y may be g or u. */
void moe_swiglu(float *y, const float *g, const float *u, int64_t n);

/* The k largest of p[0..n) in descending order, ties to the lower index:
 * ids[0..k) their indices, val[0..k) their values (both written).
 * 1 <= k <= n. */
void moe_topk(int32_t *ids, float *val, const float *p, int n, int k);

/* IEEE half <-> single, round to nearest even (NaN stays NaN, overflow to inf). */
uint16_t moe_f32_to_f16(float f);
float moe_f16_to_f32(uint16_t h);

/* Dot product of n floats accumulated in float (vectorisable). */
float moe_dot_f32(const float *a, const float *b, int64_t n);

#endif
