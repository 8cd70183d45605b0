/*
 * quants.c - the scalar reference of every block format: fp16/bf16
 * conversion, dequantisation, weight quantisers (the same algorithms as
 * ggml's *_ref quantizers, so llama-quantize's output is reproduced), the
 * activation quantisers of llama.cpp's x86 CPU backend, and the scalar dot
 * products.  Block layouts are drawn in quants.h.
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>

#include "kernels/quants.h"

/* ---- fp16 ---------------------------------------------------------------------- */

float moe_fp16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t e = (h >> 10) & 0x1fu;
	uint32_t m = h & 0x3ffu;

	if (e == 0) {
		float v = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
		return moe_bits_f32(moe_f32_bits(v) | sign);
	}
	if (e == 31)
		return moe_bits_f32(sign | 0x7f800000u | (m << 13));
	return moe_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t moe_f32_to_fp16(float f)
{
	uint32_t x = moe_f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);

	x &= 0x7fffffffu;
	if (x >= 0x7f800000u) /* Inf or NaN */
		return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
	if (x >= 0x477ff000u) /* >= 65520 rounds to infinity */
		return (uint16_t)(sign | 0x7c00u);
	if (x < 0x38800000u) {
		/* Below 2^-14: a subnormal half.  Adding 0.5 (whose ulp is 2^-24,
		 * the subnormal step) rounds to nearest even in hardware. */
		float r = moe_bits_f32(x) + 0.5f;
		return (uint16_t)(sign | (moe_f32_bits(r) - 0x3f000000u));
	}
	/* Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits. */
	x += 0xc8000fffu + ((x >> 13) & 1u);
	return (uint16_t)(sign | (x >> 13));
}

/* Round to nearest, ties to even, for |f| < 2^22 (the 2^23 + 2^22 trick). */

static inline int imin(int a, int b)
{
	return a < b ? a : b;
}

static inline int imax(int a, int b)
{
	return a > b ? a : b;
}

/* ---- dequantisation ------------------------------------------------------------ */

static void dequant_f16(float *y, const void *src, int64_t n)
{
	const uint16_t *x = src;

	for (int64_t i = 0; i < n; i++)
		y[i] = moe_fp16_to_f32(x[i]);
}

static void dequant_bf16(float *y, const void *src, int64_t n)
{
	const uint16_t *x = src;

	for (int64_t i = 0; i < n; i++)
		y[i] = moe_bf16_to_f32(x[i]);
}

static void dequant_q4_0(float *y, const void *src, int64_t n)
{
	const moe_block_q4_0 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int j = 0; j < 16; j++) {
			y[j] = (float)((x[i].qs[j] & 15) - 8) * d;
			y[j + 16] = (float)((x[i].qs[j] >> 4) - 8) * d;
		}
	}
}

static void dequant_q4_1(float *y, const void *src, int64_t n)
{
	const moe_block_q4_1 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);
		float m = moe_fp16_to_f32(x[i].m);

		for (int j = 0; j < 16; j++) {
			y[j] = (float)(x[i].qs[j] & 15) * d + m;
			y[j + 16] = (float)(x[i].qs[j] >> 4) * d + m;
		}
	}
}

static inline uint32_t load_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void dequant_q5_0(float *y, const void *src, int64_t n)
{
	const moe_block_q5_0 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);
		uint32_t qh = load_u32(x[i].qh);

		for (int j = 0; j < 16; j++) {
			int q0 = (x[i].qs[j] & 15) | (int)((qh >> j) & 1u) << 4;
			int q1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;

			y[j] = (float)(q0 - 16) * d;
			y[j + 16] = (float)(q1 - 16) * d;
		}
	}
}

static void dequant_q5_1(float *y, const void *src, int64_t n)
{
	const moe_block_q5_1 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);
		float m = moe_fp16_to_f32(x[i].m);
		uint32_t qh = load_u32(x[i].qh);

		for (int j = 0; j < 16; j++) {
			int q0 = (x[i].qs[j] & 15) | (int)((qh >> j) & 1u) << 4;
			int q1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;

			y[j] = (float)q0 * d + m;
			y[j + 16] = (float)q1 * d + m;
		}
	}
}

static void dequant_q8_0(float *y, const void *src, int64_t n)
{
	const moe_block_q8_0 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int j = 0; j < MOE_QK32; j++)
			y[j] = (float)x[i].qs[j] * d;
	}
}

static void dequant_q8_1(float *y, const void *src, int64_t n)
{
	const moe_block_q8_1 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int j = 0; j < MOE_QK32; j++)
			y[j] = (float)x[i].qs[j] * d;
	}
}

static void dequant_q4_K(float *y, const void *src, int64_t n)
{
	const moe_block_q4_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);
		float dmin = moe_fp16_to_f32(x[i].dmin);
		const uint8_t *q = x[i].qs;

		for (int c = 0; c < 4; c++, q += 32) {
			uint8_t sc, mn;

			moe_k4_scale_min(2 * c, x[i].scales, &sc, &mn);
			float d1 = d * sc, m1 = dmin * mn;
			moe_k4_scale_min(2 * c + 1, x[i].scales, &sc, &mn);
			float d2 = d * sc, m2 = dmin * mn;
			for (int l = 0; l < 32; l++)
				*y++ = d1 * (float)(q[l] & 15) - m1;
			for (int l = 0; l < 32; l++)
				*y++ = d2 * (float)(q[l] >> 4) - m2;
		}
	}
}

static void dequant_q5_K(float *y, const void *src, int64_t n)
{
	const moe_block_q5_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);
		float dmin = moe_fp16_to_f32(x[i].dmin);
		const uint8_t *ql = x[i].qs;
		const uint8_t *qh = x[i].qh;

		for (int c = 0; c < 4; c++, ql += 32) {
			uint8_t sc, mn;

			moe_k4_scale_min(2 * c, x[i].scales, &sc, &mn);
			float d1 = d * sc, m1 = dmin * mn;
			moe_k4_scale_min(2 * c + 1, x[i].scales, &sc, &mn);
			float d2 = d * sc, m2 = dmin * mn;
			for (int l = 0; l < 32; l++)
				*y++ =
				    d1 * (float)((ql[l] & 15) + ((qh[l] >> (2 * c)) & 1) * 16) - m1;
			for (int l = 0; l < 32; l++)
				*y++ =
				    d2 * (float)((ql[l] >> 4) + ((qh[l] >> (2 * c + 1)) & 1) * 16) -
				    m2;
		}
	}
}

/* q (0..63) of value v (0..255) of a Q6_K block. */
static inline int q6_K_get(const moe_block_q6_K *b, int v)
{
	int h = v / 128, r = v % 128, quarter = r / 32, l = r % 32;
	int ql = b->ql[64 * h + 32 * (quarter & 1) + l];
	int lo = quarter < 2 ? ql & 15 : ql >> 4;
	int hi = (b->qh[32 * h + l] >> (2 * quarter)) & 3;

	return lo | hi << 4;
}

static void dequant_q6_K(float *y, const void *src, int64_t n)
{
	const moe_block_q6_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, y += MOE_QK_K) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int v = 0; v < MOE_QK_K; v++)
			y[v] = d * (float)x[i].scales[v / 16] * (float)(q6_K_get(&x[i], v) - 32);
	}
}

static void dequant_q8_K(float *y, const void *src, int64_t n)
{
	const moe_block_q8_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, y += MOE_QK_K)
		for (int v = 0; v < MOE_QK_K; v++)
			y[v] = x[i].d * (float)x[i].qs[v];
}

moe_err moe_dequantize_row(moe_type t, float *dst, const void *src, int64_t n)
{
	const moe_type_traits *tr = moe_type_get(t);

	if (tr == NULL)
		return moe_fail(MOE_ERR_BAD_TYPE, "dequantize: type id %d is not a ggml type",
		                (int)t);
	if (n < 0 || n % tr->block_size != 0)
		return moe_fail(MOE_ERR_INVAL, "dequantize %s: n = %lld is not a multiple of %lld",
		                tr->name, (long long)n, (long long)tr->block_size);
	switch (t) {
	case MOE_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case MOE_TYPE_F16:
		dequant_f16(dst, src, n);
		break;
	case MOE_TYPE_BF16:
		dequant_bf16(dst, src, n);
		break;
	case MOE_TYPE_Q4_0:
		dequant_q4_0(dst, src, n);
		break;
	case MOE_TYPE_Q4_1:
		dequant_q4_1(dst, src, n);
		break;
	case MOE_TYPE_Q5_0:
		dequant_q5_0(dst, src, n);
		break;
	case MOE_TYPE_Q5_1:
		dequant_q5_1(dst, src, n);
		break;
	case MOE_TYPE_Q8_0:
		dequant_q8_0(dst, src, n);
		break;
	case MOE_TYPE_Q8_1:
		dequant_q8_1(dst, src, n);
		break;
	case MOE_TYPE_Q4_K:
		dequant_q4_K(dst, src, n);
		break;
	case MOE_TYPE_Q5_K:
		dequant_q5_K(dst, src, n);
		break;
	case MOE_TYPE_Q6_K:
		dequant_q6_K(dst, src, n);
		break;
	case MOE_TYPE_Q8_K:
		dequant_q8_K(dst, src, n);
		break;
	case MOE_TYPE_IQ4_NL:
	case MOE_TYPE_IQ4_XS:
	case MOE_TYPE_MXFP4:
		moe_dequant_iq4(t, dst, src, n);
		break;
	case MOE_TYPE_Q2_K:
		moe_dequant_q2_K(dst, src, n);
		break;
	case MOE_TYPE_Q3_K:
		moe_dequant_q3_K(dst, src, n);
		break;
	case MOE_TYPE_IQ3_XXS:
	case MOE_TYPE_IQ3_S:
	case MOE_TYPE_IQ1_S:
	case MOE_TYPE_IQ1_M:
		moe_dequant_iq13(t, dst, src, n);
		break;
	case MOE_TYPE_IQ2_XXS:
	case MOE_TYPE_IQ2_XS:
	case MOE_TYPE_IQ2_S:
		moe_dequant_iq2(t, dst, src, n);
		break;
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "dequantize: type %s is not implemented",
		                tr->name);
	}
	return MOE_OK;
}

/* ---- weight quantisers (ggml's reference algorithms) ------------------------------ */

/* Signed value of largest magnitude of x[0..n) (the first one on ties). */
static float signed_amax(const float *x, int n, float *amax_out)
{
	float amax = 0.0f, max = 0.0f;

	for (int j = 0; j < n; j++) {
		if (amax < fabsf(x[j])) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	}
	*amax_out = amax;
	return max;
}

/* Truncating float -> int that is defined for every input (NaN gives lo). */
static inline int trunc_clamp(float v, int lo, int hi)
{
	if (!(v >= (float)lo))
		return lo;
	if (v >= (float)hi)
		return hi;
	return (int)v;
}

static void quant_q4_0(void *dst, const float *x, int64_t n)
{
	moe_block_q4_0 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax;
		float d = signed_amax(x, MOE_QK32, &amax) / -8;
		float id = d != 0.0f ? 1.0f / d : 0.0f;

		y[i].d = moe_f32_to_fp16(d);
		for (int j = 0; j < 16; j++) {
			int q0 = trunc_clamp(x[j] * id + 8.5f, 0, 15);
			int q1 = trunc_clamp(x[j + 16] * id + 8.5f, 0, 15);

			y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
		}
	}
}

static void quant_q4_1(void *dst, const float *x, int64_t n)
{
	moe_block_q4_1 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float min = FLT_MAX, max = -FLT_MAX;

		for (int j = 0; j < MOE_QK32; j++) {
			min = x[j] < min ? x[j] : min;
			max = x[j] > max ? x[j] : max;
		}
		float d = (max - min) / 15;
		float id = d != 0.0f ? 1.0f / d : 0.0f;

		y[i].d = moe_f32_to_fp16(d);
		y[i].m = moe_f32_to_fp16(min);
		for (int j = 0; j < 16; j++) {
			int q0 = trunc_clamp((x[j] - min) * id + 0.5f, 0, 15);
			int q1 = trunc_clamp((x[j + 16] - min) * id + 0.5f, 0, 15);

			y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
		}
	}
}

static void put_q5(uint8_t qs[16], uint8_t qh_out[4], const int q[32])
{
	uint32_t qh = 0;

	for (int j = 0; j < 16; j++) {
		qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
		qh |= (uint32_t)((q[j] >> 4) & 1) << j;
		qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
	}
	for (int b = 0; b < 4; b++)
		qh_out[b] = (uint8_t)(qh >> (8 * b));
}

static void quant_q5_0(void *dst, const float *x, int64_t n)
{
	moe_block_q5_0 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax;
		float d = signed_amax(x, MOE_QK32, &amax) / -16;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		int q[32];

		y[i].d = moe_f32_to_fp16(d);
		for (int j = 0; j < MOE_QK32; j++)
			q[j] = trunc_clamp(x[j] * id + 16.5f, 0, 31);
		put_q5(y[i].qs, y[i].qh, q);
	}
}

static void quant_q5_1(void *dst, const float *x, int64_t n)
{
	moe_block_q5_1 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float min = FLT_MAX, max = -FLT_MAX;
		int q[32];

		for (int j = 0; j < MOE_QK32; j++) {
			min = x[j] < min ? x[j] : min;
			max = x[j] > max ? x[j] : max;
		}
		float d = (max - min) / 31;
		float id = d != 0.0f ? 1.0f / d : 0.0f;

		y[i].d = moe_f32_to_fp16(d);
		y[i].m = moe_f32_to_fp16(min);
		for (int j = 0; j < MOE_QK32; j++)
			q[j] = trunc_clamp((x[j] - min) * id + 0.5f, 0, 31);
		put_q5(y[i].qs, y[i].qh, q);
	}
}

/* Q8_0 weights as llama-quantize writes them: d = amax/127, q = roundf(x/d). */
static void quant_q8_0(void *dst, const float *x, int64_t n)
{
	moe_block_q8_0 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax = 0.0f;

		for (int j = 0; j < MOE_QK32; j++)
			amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
		float d = amax / 127;
		float id = d != 0.0f ? 1.0f / d : 0.0f;

		y[i].d = moe_f32_to_fp16(d);
		for (int j = 0; j < MOE_QK32; j++)
			y[i].qs[j] = (int8_t)roundf(x[j] * id);
	}
}

float moe_fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                        float rmin, float rdelta, int nstep, bool mad)
{
	uint8_t Laux[32];
	float min = x[0], max = x[0];
	float sum_w = w[0], sum_x = sum_w * x[0];

	for (int i = 1; i < n; i++) {
		min = x[i] < min ? x[i] : min;
		max = x[i] > max ? x[i] : max;
		sum_w += w[i];
		sum_x += w[i] * x[i];
	}
	if (min > 0)
		min = 0;
	if (max == min) {
		memset(L, 0, (size_t)n);
		*neg_min = -min;
		return 0.0f;
	}
	float iscale = nmax / (max - min);
	float scale = 1 / iscale;
	float best_error = 0;

	for (int i = 0; i < n; i++) {
		int l = moe_nearest_int(iscale * (x[i] - min));

		L[i] = (uint8_t)imax(0, imin(nmax, l));
		float diff = scale * L[i] + min - x[i];
		best_error += w[i] * (mad ? fabsf(diff) : diff * diff);
	}
	for (int is = 0; is <= nstep; is++) {
		float sum_l = 0, sum_l2 = 0, sum_xl = 0;

		iscale = (rmin + rdelta * is + nmax) / (max - min);
		for (int i = 0; i < n; i++) {
			int l = imax(0, imin(nmax, moe_nearest_int(iscale * (x[i] - min))));

			Laux[i] = (uint8_t)l;
			sum_l += w[i] * l;
			sum_l2 += w[i] * l * l;
			sum_xl += w[i] * l * x[i];
		}
		float D = sum_w * sum_l2 - sum_l * sum_l;
		if (D > 0) {
			float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
			float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
			float cur_error = 0;

			if (this_min > 0) {
				this_min = 0;
				this_scale = sum_xl / sum_l2;
			}
			for (int i = 0; i < n; i++) {
				float diff = this_scale * Laux[i] + this_min - x[i];
				cur_error += w[i] * (mad ? fabsf(diff) : diff * diff);
			}
			if (cur_error < best_error) {
				memcpy(L, Laux, (size_t)n);
				best_error = cur_error;
				scale = this_scale;
				min = this_min;
			}
		}
	}
	*neg_min = -min;
	return scale;
}

/*
 * Shared by Q4_K and Q5_K: fit 8 sub-block (scale, min) pairs, quantise them
 * to 6 bits against the block's d/dmin, then requantise every value against
 * its rounded sub-block scale.  L gets q (0..nmax) of all 256 values.
 */
static void quant_k_scales(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out,
                           uint16_t *dmin_out, uint8_t packed[12], uint8_t L[256])
{
	float weights[32], mins[8], scales[8];
	float max_scale = 0, max_min = 0;

	for (int j = 0; j < 8; j++) {
		float sum_x2 = 0;

		for (int l = 0; l < 32; l++)
			sum_x2 += x[32 * j + l] * x[32 * j + l];
		float av_x = sqrtf(sum_x2 / 32);
		for (int l = 0; l < 32; l++)
			weights[l] = av_x + fabsf(x[32 * j + l]);
		scales[j] = moe_fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j],
		                              rmin, 0.1f, nstep, false);
		max_scale = scales[j] > max_scale ? scales[j] : max_scale;
		max_min = mins[j] > max_min ? mins[j] : max_min;
	}
	float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
	float inv_min = max_min > 0 ? 63.f / max_min : 0.f;

	memset(packed, 0, 12);
	for (int j = 0; j < 8; j++) {
		uint8_t ls = (uint8_t)imin(63, (uint8_t)moe_nearest_int(inv_scale * scales[j]));
		uint8_t lm = (uint8_t)imin(63, (uint8_t)moe_nearest_int(inv_min * mins[j]));

		if (j < 4) {
			packed[j] = ls;
			packed[j + 4] = lm;
		} else {
			packed[j + 4] = (uint8_t)((ls & 15) | (lm & 15) << 4);
			packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
			packed[j] |= (uint8_t)((lm >> 4) << 6);
		}
	}
	*d_out = moe_f32_to_fp16(max_scale / 63.f);
	*dmin_out = moe_f32_to_fp16(max_min / 63.f);
	for (int j = 0; j < 8; j++) {
		uint8_t sc, mn;

		moe_k4_scale_min(j, packed, &sc, &mn);
		float d = moe_fp16_to_f32(*d_out) * sc;
		if (d == 0.0f)
			continue;
		float dm = moe_fp16_to_f32(*dmin_out) * mn;
		for (int ii = 0; ii < 32; ii++) {
			int l = moe_nearest_int((x[32 * j + ii] + dm) / d);
			L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, l));
		}
	}
}

static void quant_q4_K(void *dst, const float *x, int64_t n)
{
	moe_block_q4_K *y = dst;
	uint8_t L[256];

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		quant_k_scales(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
		for (int c = 0; c < 4; c++)
			for (int l = 0; l < 32; l++)
				y[i].qs[32 * c + l] =
				    (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
	}
}

static void quant_q5_K(void *dst, const float *x, int64_t n)
{
	moe_block_q5_K *y = dst;
	uint8_t L[256];

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		quant_k_scales(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
		memset(y[i].qh, 0, sizeof(y[i].qh));
		for (int c = 0; c < 4; c++) {
			for (int l = 0; l < 32; l++) {
				int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];

				y[i].qh[l] |= (uint8_t)(((l1 >> 4) & 1) << (2 * c));
				y[i].qh[l] |= (uint8_t)(((l2 >> 4) & 1) << (2 * c + 1));
				y[i].qs[32 * c + l] = (uint8_t)((l1 & 15) | (l2 & 15) << 4);
			}
		}
	}
}

/*
 * Symmetric q in -nmax..nmax-1 for x[0..n) with weights x^2: the best of 19
 * candidate scales around -nmax/max (ggml's make_qx_quants, rmse_type 1).
 * L gets q + nmax.  Returns the scale.
 */
static float fit_scale_sym(int n, int nmax, const float *x, int8_t *L)
{
	float amax;
	float max = signed_amax(x, n, &amax);

	if (amax < 1e-15f) {
		memset(L, 0, (size_t)n);
		return 0.0f;
	}
	float iscale = -nmax / max;
	float sumlx = 0, suml2 = 0;

	for (int i = 0; i < n; i++) {
		int l = imax(-nmax, imin(nmax - 1, moe_nearest_int(iscale * x[i])));
		float w = x[i] * x[i];

		L[i] = (int8_t)(l + nmax);
		sumlx += w * x[i] * l;
		suml2 += w * l * l;
	}
	float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
	float best = scale * sumlx;

	for (int is = -9; is <= 9; is++) {
		if (is == 0)
			continue;
		iscale = -(nmax + 0.1f * is) / max;
		sumlx = suml2 = 0;
		for (int i = 0; i < n; i++) {
			int l = imax(-nmax, imin(nmax - 1, moe_nearest_int(iscale * x[i])));
			float w = x[i] * x[i];

			sumlx += w * x[i] * l;
			suml2 += w * l * l;
		}
		if (suml2 > 0 && sumlx * sumlx > best * suml2) {
			for (int i = 0; i < n; i++) {
				int l = moe_nearest_int(iscale * x[i]);
				L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
			}
			scale = sumlx / suml2;
			best = scale * sumlx;
		}
	}
	return scale;
}

static void quant_q6_K(void *dst, const float *x, int64_t n)
{
	moe_block_q6_K *y = dst;
	int8_t L[256];
	float scales[16];

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		float max_scale = 0, max_abs_scale = 0;

		for (int ib = 0; ib < 16; ib++) {
			scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib);
			if (fabsf(scales[ib]) > max_abs_scale) {
				max_abs_scale = fabsf(scales[ib]);
				max_scale = scales[ib];
			}
		}
		memset(&y[i], 0, sizeof(y[i]));
		if (max_abs_scale < 1e-15f)
			continue;
		float iscale = -128.f / max_scale;
		y[i].d = moe_f32_to_fp16(1 / iscale);
		for (int ib = 0; ib < 16; ib++)
			y[i].scales[ib] = (int8_t)imin(127, moe_nearest_int(iscale * scales[ib]));
		for (int j = 0; j < 16; j++) {
			float d = moe_fp16_to_f32(y[i].d) * y[i].scales[j];
			if (d == 0.0f)
				continue;
			for (int ii = 0; ii < 16; ii++) {
				int l = moe_nearest_int(x[16 * j + ii] / d);
				L[16 * j + ii] = (int8_t)(imax(-32, imin(31, l)) + 32);
			}
		}
		for (int h = 0; h < 2; h++) {
			const int8_t *Lh = L + 128 * h;
			uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;

			for (int l = 0; l < 32; l++) {
				ql[l] = (uint8_t)((Lh[l] & 15) | (Lh[l + 64] & 15) << 4);
				ql[l + 32] = (uint8_t)((Lh[l + 32] & 15) | (Lh[l + 96] & 15) << 4);
				qh[l] = (uint8_t)((Lh[l] >> 4) | (Lh[l + 32] >> 4) << 2 |
				                  (Lh[l + 64] >> 4) << 4 | (Lh[l + 96] >> 4) << 6);
			}
		}
	}
}

/*
 * Q8_K as llama.cpp quantises K-quant activations (quantize_row_q8_K_ref,
 * also used by its x86 backend): m = the signed value of largest magnitude,
 * q = min(127, moe_nearest_int(-127/m * x)), d = 1/(-127/m), bsums per 16.
 */
static void quant_q8_K(void *dst, const float *x, int64_t n)
{
	moe_block_q8_K *y = dst;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		float amax;
		float max = signed_amax(x, MOE_QK_K, &amax);

		if (amax == 0.0f) {
			memset(&y[i], 0, sizeof(y[i]));
			continue;
		}
		float iscale = -127.f / max;
		for (int j = 0; j < MOE_QK_K; j++)
			y[i].qs[j] = (int8_t)imin(127, moe_nearest_int(iscale * x[j]));
		for (int g = 0; g < 16; g++) {
			int sum = 0;

			for (int l = 0; l < 16; l++)
				sum += y[i].qs[16 * g + l];
			y[i].bsums[g] = (int16_t)sum;
		}
		y[i].d = 1 / iscale;
	}
}

/*
 * Q8_0 activations as llama.cpp's x86 CPU backend makes them (the goldens
 * depend on it): d = amax/127 stored as fp16, q = round-half-even(x * 127/amax)
 * (multiplier 127/amax, not 1/d).
 */
static void quant_act_q8_0(void *dst, const float *x, int64_t n)
{
	moe_block_q8_0 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax = 0.0f;

		for (int j = 0; j < MOE_QK32; j++)
			amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
		float id = amax != 0.0f ? 127.f / amax : 0.0f;

		y[i].d = moe_f32_to_fp16(amax / 127.f);
		for (int j = 0; j < MOE_QK32; j++)
			y[i].qs[j] = (int8_t)moe_nearest_int(x[j] * id);
	}
}

/* Q8_1 activations, the same way, plus s = fp16(d * sum(q)). */
static void quant_act_q8_1(void *dst, const float *x, int64_t n)
{
	moe_block_q8_1 *y = dst;

	for (int64_t i = 0; i < n / MOE_QK32; i++, x += MOE_QK32) {
		float amax = 0.0f;
		int sum = 0;

		for (int j = 0; j < MOE_QK32; j++)
			amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
		float d = amax / 127.f;
		float id = amax != 0.0f ? 127.f / amax : 0.0f;

		y[i].d = moe_f32_to_fp16(d);
		for (int j = 0; j < MOE_QK32; j++) {
			y[i].qs[j] = (int8_t)moe_nearest_int(x[j] * id);
			sum += y[i].qs[j];
		}
		y[i].s = moe_f32_to_fp16(d * (float)sum);
	}
}

static bool all_finite(const float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return false;
	return true;
}

moe_err moe_quantize_row(moe_type t, void *dst, const float *src, int64_t n)
{
	const moe_type_traits *tr = moe_type_get(t);

	if (tr == NULL)
		return moe_fail(MOE_ERR_BAD_TYPE, "quantize: type id %d is not a ggml type",
		                (int)t);
	if (n < 0 || n % tr->block_size != 0)
		return moe_fail(MOE_ERR_INVAL, "quantize %s: n = %lld is not a multiple of %lld",
		                tr->name, (long long)n, (long long)tr->block_size);
	if (t != MOE_TYPE_F32 && t != MOE_TYPE_F16 && t != MOE_TYPE_BF16 && !all_finite(src, n))
		return moe_fail(MOE_ERR_BAD_VALUE, "quantize %s: input has NaN or Inf", tr->name);
	switch (t) {
	case MOE_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case MOE_TYPE_F16:
		for (int64_t i = 0; i < n; i++)
			((uint16_t *)dst)[i] = moe_f32_to_fp16(src[i]);
		break;
	case MOE_TYPE_BF16:
		for (int64_t i = 0; i < n; i++)
			((uint16_t *)dst)[i] = moe_f32_to_bf16(src[i]);
		break;
	case MOE_TYPE_Q4_0:
		quant_q4_0(dst, src, n);
		break;
	case MOE_TYPE_Q4_1:
		quant_q4_1(dst, src, n);
		break;
	case MOE_TYPE_Q5_0:
		quant_q5_0(dst, src, n);
		break;
	case MOE_TYPE_Q5_1:
		quant_q5_1(dst, src, n);
		break;
	case MOE_TYPE_Q8_0:
		quant_q8_0(dst, src, n);
		break;
	case MOE_TYPE_Q8_1:
		quant_act_q8_1(dst, src, n);
		break;
	case MOE_TYPE_Q4_K:
		quant_q4_K(dst, src, n);
		break;
	case MOE_TYPE_Q5_K:
		quant_q5_K(dst, src, n);
		break;
	case MOE_TYPE_Q6_K:
		quant_q6_K(dst, src, n);
		break;
	case MOE_TYPE_Q8_K:
		quant_q8_K(dst, src, n);
		break;
	case MOE_TYPE_IQ4_NL:
	case MOE_TYPE_IQ4_XS:
	case MOE_TYPE_MXFP4:
		moe_quant_iq4(t, dst, src, n);
		break;
	case MOE_TYPE_Q2_K:
		moe_quant_q2_K(dst, src, n);
		break;
	case MOE_TYPE_Q3_K:
		moe_quant_q3_K(dst, src, n);
		break;
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "quantize: type %s is not implemented",
		                tr->name);
	}
	return MOE_OK;
}

size_t moe_act_row_size(moe_type wt, int64_t n)
{
	const moe_type_traits *tr = moe_type_get(wt);

	if (tr == NULL || !tr->compute)
		return 0;
	return moe_row_size(tr->vec_dot_type, n);
}

moe_err moe_quantize_act(moe_type wt, void *dst, const float *src, int64_t n)
{
	const moe_type_traits *tr = moe_type_get(wt);

	if (tr == NULL || !tr->compute)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "quantize_act: weight type %d has no dot product", (int)wt);
	const moe_type_traits *at = moe_type_get(tr->vec_dot_type);
	if (n < 0 || n % at->block_size != 0 || n % tr->block_size != 0)
		return moe_fail(MOE_ERR_INVAL,
		                "quantize_act %s: n = %lld is not a multiple of %lld", tr->name,
		                (long long)n, (long long)at->block_size);
	if (tr->vec_dot_type != MOE_TYPE_F32 && !all_finite(src, n))
		return moe_fail(MOE_ERR_BAD_VALUE, "quantize_act %s: input has NaN or Inf",
		                tr->name);
	switch (tr->vec_dot_type) {
	case MOE_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case MOE_TYPE_Q8_0:
		quant_act_q8_0(dst, src, n);
		break;
	case MOE_TYPE_Q8_1:
		quant_act_q8_1(dst, src, n);
		break;
	case MOE_TYPE_Q8_K:
		quant_q8_K(dst, src, n);
		break;
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "quantize_act: activation type %s", at->name);
	}
	return MOE_OK;
}

/* ---- scalar dot products --------------------------------------------------------- */
/* Integer parts are exact per block; block results are summed in float, in
 * block order.  SIMD versions keep the integer parts and may reorder the
 * float sums. */

void moe_vec_dot_f32_ref(int64_t n, float *s, const void *w, const void *a)
{
	const float *x = w, *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n; i++)
		sum += x[i] * y[i];
	*s = sum;
}

void moe_vec_dot_f16_ref(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n; i++)
		sum += moe_fp16_to_f32(x[i]) * y[i];
	*s = sum;
}

void moe_vec_dot_bf16_ref(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n; i++)
		sum += moe_bf16_to_f32(x[i]) * y[i];
	*s = sum;
}

void moe_vec_dot_q4_0_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_0 *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = 0;

		for (int j = 0; j < 16; j++) {
			isum += ((x[i].qs[j] & 15) - 8) * y[i].qs[j];
			isum += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_vec_dot_q4_1_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_1 *x = w;
	const moe_block_q8_1 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = 0;

		for (int j = 0; j < 16; j++) {
			isum += (x[i].qs[j] & 15) * y[i].qs[j];
			isum += (x[i].qs[j] >> 4) * y[i].qs[j + 16];
		}
		sum += (float)isum * (moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d)) +
		       moe_fp16_to_f32(x[i].m) * moe_fp16_to_f32(y[i].s);
	}
	*s = sum;
}

void moe_vec_dot_q5_0_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_0 *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		uint32_t qh = load_u32(x[i].qh);
		int isum = 0;

		for (int j = 0; j < 16; j++) {
			int q0 = (x[i].qs[j] & 15) | (int)((qh >> j) & 1u) << 4;
			int q1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;

			isum += (q0 - 16) * y[i].qs[j] + (q1 - 16) * y[i].qs[j + 16];
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_vec_dot_q5_1_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_1 *x = w;
	const moe_block_q8_1 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		uint32_t qh = load_u32(x[i].qh);
		int isum = 0;

		for (int j = 0; j < 16; j++) {
			int q0 = (x[i].qs[j] & 15) | (int)((qh >> j) & 1u) << 4;
			int q1 = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;

			isum += q0 * y[i].qs[j] + q1 * y[i].qs[j + 16];
		}
		sum += (float)isum * (moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d)) +
		       moe_fp16_to_f32(x[i].m) * moe_fp16_to_f32(y[i].s);
	}
	*s = sum;
}

void moe_vec_dot_q8_0_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q8_0 *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = 0;

		for (int j = 0; j < MOE_QK32; j++)
			isum += x[i].qs[j] * y[i].qs[j];
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_vec_dot_q4_K_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0, msum = 0;

		for (int sb = 0; sb < 8; sb++) {
			uint8_t sc, mn;
			int sub = 0;
			const uint8_t *q = x[i].qs + 32 * (sb / 2);
			const int8_t *q8 = y[i].qs + 32 * sb;

			moe_k4_scale_min(sb, x[i].scales, &sc, &mn);
			for (int l = 0; l < 32; l++)
				sub += (sb & 1 ? q[l] >> 4 : q[l] & 15) * q8[l];
			isum += sc * sub;
			msum += mn * (y[i].bsums[2 * sb] + y[i].bsums[2 * sb + 1]);
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, moe_fp16_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

void moe_vec_dot_q5_K_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0, msum = 0;

		for (int sb = 0; sb < 8; sb++) {
			uint8_t sc, mn;
			int sub = 0;
			const uint8_t *q = x[i].qs + 32 * (sb / 2);
			const int8_t *q8 = y[i].qs + 32 * sb;

			moe_k4_scale_min(sb, x[i].scales, &sc, &mn);
			for (int l = 0; l < 32; l++) {
				int lo = sb & 1 ? q[l] >> 4 : q[l] & 15;
				int hi = (x[i].qh[l] >> sb) & 1;

				sub += (lo | hi << 4) * q8[l];
			}
			isum += sc * sub;
			msum += mn * (y[i].bsums[2 * sb] + y[i].bsums[2 * sb + 1]);
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, moe_fp16_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

void moe_vec_dot_q6_K_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q6_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;

		for (int g = 0; g < 16; g++) {
			int sub = 0;

			for (int l = 0; l < 16; l++)
				sub += (q6_K_get(&x[i], 16 * g + l) - 32) * y[i].qs[16 * g + l];
			isum += x[i].scales[g] * sub;
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

void moe_dots_ref(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	for (int t = 0; t < MOE_TYPE_COUNT; t++)
		dots[t] = NULL;
	dots[MOE_TYPE_F32] = moe_vec_dot_f32_ref;
	dots[MOE_TYPE_F16] = moe_vec_dot_f16_ref;
	dots[MOE_TYPE_BF16] = moe_vec_dot_bf16_ref;
	dots[MOE_TYPE_Q4_0] = moe_vec_dot_q4_0_ref;
	dots[MOE_TYPE_Q4_1] = moe_vec_dot_q4_1_ref;
	dots[MOE_TYPE_Q5_0] = moe_vec_dot_q5_0_ref;
	dots[MOE_TYPE_Q5_1] = moe_vec_dot_q5_1_ref;
	dots[MOE_TYPE_Q8_0] = moe_vec_dot_q8_0_ref;
	dots[MOE_TYPE_Q4_K] = moe_vec_dot_q4_K_ref;
	dots[MOE_TYPE_Q5_K] = moe_vec_dot_q5_K_ref;
	dots[MOE_TYPE_Q6_K] = moe_vec_dot_q6_K_ref;
	moe_dots_ref_iq4(dots);
	dots[MOE_TYPE_Q2_K] = moe_vec_dot_q2_K_ref;
	dots[MOE_TYPE_Q3_K] = moe_vec_dot_q3_K_ref;
	moe_dots_ref_iq13(dots);
	moe_dots_ref_iq2(dots);
}
