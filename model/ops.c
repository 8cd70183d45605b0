/* ops.c - per-row layer operations (see ops.h). */
#include "model/ops.h"

#include <stdbool.h>
#include <string.h>

#include "kernels/kernels.h"

void moe_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps)
{
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)(x[i] * x[i]);
	const float mean = (float)(sum / (double)n);
	const float scale = 1.0f / sqrtf(mean + eps);
	if (w != NULL) {
		for (int64_t i = 0; i < n; i++)
			y[i] = (x[i] * scale) * w[i];
	} else {
		for (int64_t i = 0; i < n; i++)
			y[i] = x[i] * scale;
	}
}

void moe_l2norm(float *y, const float *x, int64_t n, float eps)
{
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++)
		sum += (double)(x[i] * x[i]);
	const float scale = 1.0f / fmaxf(sqrtf((float)sum), eps);
	for (int64_t i = 0; i < n; i++)
		y[i] = x[i] * scale;
}

void moe_rope_cache(float *cs, int64_t pos, int n_rot, float base)
{
	/* theta_i = pos * base^(-2i/n_rot), formed by repeated multiplication as
	 * ggml does, so the angles round the same way. */
	const float theta_scale = powf(base, -2.0f / (float)n_rot);
	float theta = (float)pos;
	for (int i = 0; i < n_rot / 2; i++) {
		cs[2 * i] = cosf(theta);
		cs[2 * i + 1] = sinf(theta);
		theta *= theta_scale;
	}
}

void moe_rope_cache_imrope(float *cs, int64_t pos, int n_rot, float base, const int32_t sections[4])
{
	/* ggml keeps one angle per section, each multiplied by theta_scale per
	 * pair; three start at pos and stay equal, the fourth starts at 0. */
	const float theta_scale = powf(base, -2.0f / (float)n_rot);
	const int sum = sections[0] + sections[1] + sections[2] + sections[3];
	float theta = (float)pos;
	for (int i = 0; i < n_rot / 2; i++) {
		const int s = i % sum;
		const bool at_pos = (s % 3 == 0 && s < 3 * sections[0]) ||
		                    (s % 3 == 1 && s < 3 * sections[1]) ||
		                    (s % 3 == 2 && s < 3 * sections[2]);
		cs[2 * i] = at_pos ? cosf(theta) : 1.0f;
		cs[2 * i + 1] = at_pos ? sinf(theta) : 0.0f;
		theta *= theta_scale;
	}
}

void moe_rope_neox(float *x, const float *cs, int n_rot)
{
	const int half = n_rot / 2;
	for (int i = 0; i < half; i++) {
		const float c = cs[2 * i], s = cs[2 * i + 1];
		const float x0 = x[i], x1 = x[i + half];
		x[i] = x0 * c - x1 * s;
		x[i + half] = x0 * s + x1 * c;
	}
}

void moe_softmax(float *x, int64_t n)
{
	float max = -INFINITY;
	for (int64_t i = 0; i < n; i++)
		if (x[i] > max)
			max = x[i];
	double sum = 0.0;
	for (int64_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += (double)x[i];
	}
	const float inv = (float)(1.0 / sum);
	for (int64_t i = 0; i < n; i++)
		x[i] *= inv;
}

/* x = n ln2 + r with n = round(x log2 e) (the 1.5 * 2^23 shift rounds in the
 * float's low bits, whose integer is n) and ln2 in two parts, |r| <= ln2 / 2;
 * e^r by its Taylor series to r^7 (truncation < 6e-9 relative); times 2^n
 * built in the exponent bits (n >= -126 for x >= -87: a normal number). */
static inline float exp_poly(float x)
{
	const float shift = 12582912.0f;
	const float xc = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
	const float t = xc * 1.44269504f + shift;
	const float n = t - shift;
	const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-6f;
	const float p =
	    1.0f +
	    r * (1.0f +
	         r * (0.5f + r * (1.0f / 6 +
	                          r * (1.0f / 24 +
	                               r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
	/* unsigned: a NaN input makes t's bits arbitrary (the result is then
	 * replaced by x below), and signed arithmetic on them could overflow */
	uint32_t bits;
	memcpy(&bits, &t, sizeof bits);
	bits = (bits - 0x4b400000u + 127u) << 23;
	float scale;
	memcpy(&scale, &bits, sizeof scale);
	const float e = p * scale;
	return x < -87.0f ? 0.0f : x != x ? x : e;
}

float moe_exp_approx(float x)
{
	return exp_poly(x);
}

void moe_exp_weights(float *w, int64_t n, float max, float temp, float lim)
{
	for (int64_t i = 0; i < n; i++) {
		const float x = w[i];
		const float e = exp_poly((x - max) / temp);
		w[i] = x >= lim ? e : 0.0f;
	}
}

void moe_swiglu(float *y, const float *g, const float *u, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = moe_silu(g[i]) * u[i];
}

void moe_topk(int32_t *ids, float *val, const float *p, int n, int k)
{
	int count = 0;
	for (int i = 0; i < n; i++) {
		if (count == k && !(p[i] > val[k - 1]))
			continue;
		/* Insert after every kept value >= p[i]: equal values keep the
		 * lower index first. */
		int at = count < k ? count : k - 1;
		while (at > 0 && p[i] > val[at - 1]) {
			val[at] = val[at - 1];
			ids[at] = ids[at - 1];
			at--;
		}
		val[at] = p[i];
		ids[at] = i;
		if (count < k)
			count++;
	}
}

uint16_t moe_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, sizeof x);
	const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
	const uint32_t ax = x & 0x7fffffffu;
	if (ax >= 0x7f800000u) /* inf or NaN (keep it a quiet NaN) */
		return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
	if (ax >= 0x477ff000u) /* >= 65520 rounds to inf */
		return (uint16_t)(sign | 0x7c00u);
	if (ax < 0x38800000u) { /* below 2^-14: half subnormal or zero */
		float af;
		memcpy(&af, &ax, sizeof af);
		/* af * 2^24 is exact; nearbyintf rounds to nearest even. */
		return (uint16_t)(sign | (uint16_t)nearbyintf(af * 16777216.0f));
	}
	const uint32_t mant = ax & 0x7fffffu;
	const uint32_t exp = (ax >> 23) - 127u + 15u;
	uint32_t h = (exp << 10) | (mant >> 13);
	const uint32_t rem = mant & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
		h++; /* a carry into the exponent is the correct result */
	return (uint16_t)(sign | h);
}

float moe_f16_to_f32(uint16_t h)
{
	const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	const uint32_t exp = (h >> 10) & 0x1fu;
	const uint32_t mant = h & 0x3ffu;
	uint32_t x;
	if (exp == 0) {
		float v = (float)mant * (1.0f / 16777216.0f);
		return sign ? -v : v;
	}
	if (exp == 31)
		x = sign | 0x7f800000u | (mant << 13);
	else
		x = sign | ((exp + 112u) << 23) | (mant << 13);
	float f;
	memcpy(&f, &x, sizeof f);
	return f;
}

float moe_dot_f32(const float *a, const float *b, int64_t n)
{
	/* the kernels' dot: eight partial sums and a fixed tree at every level */
	return moe_vec_ops_get()->dot(a, b, n);
}
