/*
 * quants_iq4.c - the scalar reference of the non-linear 4-bit formats IQ4_NL
 * and IQ4_XS and of MXFP4: their value tables, dequantisation and the scalar
 * dot products (the canonical block arithmetic every ISA level reproduces).
 * Also their weight quantisers. Block layouts are drawn in quants.h.
 */
#include <math.h>

#include "kernels/quants.h"

/* The 16 levels of an IQ4_NL / IQ4_XS code (a fact of the format). */
const int8_t moe_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

/* E2M1 codes 0..15 doubled: sign bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6 (x 2). */
const int8_t moe_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ---- dequantisation ------------------------------------------------------------ */

static void dequant_iq4_nl(float *y, const void *src, int64_t n)
{
	const moe_block_iq4_nl *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int j = 0; j < 16; j++) {
			y[j] = d * (float)moe_iq4nl_values[x[i].qs[j] & 15];
			y[j + 16] = d * (float)moe_iq4nl_values[x[i].qs[j] >> 4];
		}
	}
}

static void dequant_iq4_xs(float *y, const void *src, int64_t n)
{
	const moe_block_iq4_xs *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int s = 0; s < 8; s++, y += 32) {
			const uint8_t *q = x[i].qs + 16 * s;
			float dl = d * (float)(moe_iq4xs_scale(&x[i], s) - 32);

			for (int j = 0; j < 16; j++) {
				y[j] = dl * (float)moe_iq4nl_values[q[j] & 15];
				y[j + 16] = dl * (float)moe_iq4nl_values[q[j] >> 4];
			}
		}
	}
}

static void dequant_mxfp4(float *y, const void *src, int64_t n)
{
	const moe_block_mxfp4 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_e8m0_half(x[i].e);

		for (int j = 0; j < 16; j++) {
			y[j] = d * (float)moe_mxfp4_values[x[i].qs[j] & 15];
			y[j + 16] = d * (float)moe_mxfp4_values[x[i].qs[j] >> 4];
		}
	}
}

void moe_dequant_iq4(moe_type t, float *y, const void *src, int64_t n)
{
	if (t == MOE_TYPE_IQ4_NL)
		dequant_iq4_nl(y, src, n);
	else if (t == MOE_TYPE_IQ4_XS)
		dequant_iq4_xs(y, src, n);
	else if (t == MOE_TYPE_MXFP4)
		dequant_mxfp4(y, src, n);
}

/* ---- weight quantisers (ggml's algorithms without an importance matrix) ----------- */

/* The index of the level nearest to v (the upper one on a tie). */
static int nearest_level(const int8_t lv[16], float v)
{
	if (v <= lv[0])
		return 0;
	if (v >= lv[15])
		return 15;
	int k = 1;
	while (lv[k] <= v)
		k++;
	return v - lv[k - 1] < lv[k] - v ? k - 1 : k;
}

/* For the levels nearest to id * x of a 32-value sub-block, weights x^2:
 * *sumqx = sum(w q x), *sumq2 = sum(w q^2). */
static void fit(const float *x, float id, float *sumqx, float *sumq2)
{
	*sumqx = 0;
	*sumq2 = 0;
	for (int j = 0; j < 32; j++) {
		float q = moe_iq4nl_values[nearest_level(moe_iq4nl_values, id * x[j])];
		float w = x[j] * x[j];
		*sumqx += w * q * x[j];
		*sumq2 += w * q * q;
	}
}

/* The scale of one 32-value sub-block: the least-squares fit to the levels
 * nearest x / d for d = max / -127 (max: the value of largest magnitude),
 * then, of 15 trial reciprocals (t - 127) / max (t = -7..7), the fit with the
 * largest sum(w q x)^2 / sum(w q^2) where it beats the first. */
static float iq4_sub_scale(const float *x)
{
	float amax = 0, max = 0, sumqx, sumq2;

	for (int j = 0; j < 32; j++) {
		if (fabsf(x[j]) > amax) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	}
	if (amax < 1e-15f)
		return 0;
	fit(x, 1 / (-max / moe_iq4nl_values[0]), &sumqx, &sumq2);
	float d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
	float best = d * sumqx;
	for (int t = -7; t <= 7; t++) {
		fit(x, (float)(t + moe_iq4nl_values[0]) / max, &sumqx, &sumq2);
		if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
			d = sumqx / sumq2;
			best = d * sumqx;
		}
	}
	return d;
}

static void put_codes(uint8_t qs[16], const float *x, float id)
{
	for (int j = 0; j < 16; j++)
		qs[j] = (uint8_t)(nearest_level(moe_iq4nl_values, id * x[j]) |
		                  nearest_level(moe_iq4nl_values, id * x[j + 16]) << 4);
}

static void quant_iq4_nl(void *dst, const float *x, int64_t n)
{
	moe_block_iq4_nl *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float d = iq4_sub_scale(x);

		y[i].d = moe_f32_to_fp16(d);
		put_codes(y[i].qs, x, d != 0.0f ? 1 / d : 0.0f);
	}
}

/* Sub-block scales as above, their super-scale d = -(the one of largest
 * magnitude) / 32, each stored as l = rne(scale / d) in -32..31 (+ 32), and
 * the codes for the rounded scale d * l. */
static void quant_iq4_xs(void *dst, const float *x, int64_t n)
{
	moe_block_iq4_xs *y = dst;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		float sc[8], amax = 0, max = 0;

		for (int s = 0; s < 8; s++) {
			sc[s] = iq4_sub_scale(x + 32 * s);
			if (fabsf(sc[s]) > amax) {
				amax = fabsf(sc[s]);
				max = sc[s];
			}
		}
		float d = -max / 32, id = d != 0.0f ? 1 / d : 0.0f;
		memset(&y[i], 0, sizeof(y[i]));
		y[i].d = moe_f32_to_fp16(d);
		for (int s = 0; s < 8; s++) {
			long l = lrintf(id * sc[s]);
			l = l < -32 ? -32 : l > 31 ? 31 : l;
			float dl = d * (float)l;
			put_codes(y[i].qs + 16 * s, x + 32 * s, dl != 0.0f ? 1 / dl : 0.0f);
			y[i].scales_l[s / 2] |= (uint8_t)(((l + 32) & 15) << (4 * (s % 2)));
			y[i].scales_h |= (uint16_t)(((l + 32) >> 4) << (2 * s));
		}
	}
}

/* The E8M0 exponent floor(log2(amax)) - 2 + 127 (6 = 1.5 * 2^2 is the
 * largest E2M1 level), then each value's nearest level (the first on a tie). */
static void quant_mxfp4(void *dst, const float *x, int64_t n)
{
	moe_block_mxfp4 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax = 0;

		for (int j = 0; j < MOE_QK32; j++)
			amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
		float e = amax > 0 ? floorf(log2f(amax)) - 2 + 127 : 0;
		y[i].e = (uint8_t)(e < 0 ? 0 : e > 254 ? 254 : e);
		float d = moe_e8m0_half(y[i].e);
		memset(y[i].qs, 0, sizeof(y[i].qs));
		for (int j = 0; j < MOE_QK32; j++) {
			int best = 0;
			float err = fabsf(moe_mxfp4_values[0] * d - x[j]);
			for (int k = 1; k < 16; k++) {
				float ek = fabsf(moe_mxfp4_values[k] * d - x[j]);
				if (ek < err) {
					best = k;
					err = ek;
				}
			}
			y[i].qs[j % 16] |= (uint8_t)(best << (j < 16 ? 0 : 4));
		}
	}
}

void moe_quant_iq4(moe_type t, void *dst, const float *x, int64_t n)
{
	if (t == MOE_TYPE_IQ4_NL)
		quant_iq4_nl(dst, x, n);
	else if (t == MOE_TYPE_IQ4_XS)
		quant_iq4_xs(dst, x, n);
	else if (t == MOE_TYPE_MXFP4)
		quant_mxfp4(dst, x, n);
}

/* ---- scalar dot products --------------------------------------------------------- */

/* The exact integer dot of one 32-value block of 4-bit codes (levels from
 * table) with 32 int8 activations. */
static inline int codes_dot(const int8_t table[16], const uint8_t qs[16], const int8_t q8[32])
{
	int sum = 0;

	for (int j = 0; j < 16; j++) {
		sum += table[qs[j] & 15] * q8[j];
		sum += table[qs[j] >> 4] * q8[j + 16];
	}
	return sum;
}

void moe_vec_dot_iq4_nl_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_nl *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = codes_dot(moe_iq4nl_values, x[i].qs, y[i].qs);

		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_vec_dot_iq4_xs_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_xs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;

		for (int sb = 0; sb < 8; sb++)
			isum += (moe_iq4xs_scale(&x[i], sb) - 32) *
			        codes_dot(moe_iq4nl_values, x[i].qs + 16 * sb, y[i].qs + 32 * sb);
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

void moe_vec_dot_mxfp4_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_mxfp4 *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = codes_dot(moe_mxfp4_values, x[i].qs, y[i].qs);

		sum = fmaf((float)isum, moe_e8m0_half(x[i].e) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_dots_ref_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_IQ4_NL] = moe_vec_dot_iq4_nl_ref;
	dots[MOE_TYPE_IQ4_XS] = moe_vec_dot_iq4_xs_ref;
	dots[MOE_TYPE_MXFP4] = moe_vec_dot_mxfp4_ref;
}
