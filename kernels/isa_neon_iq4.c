/*
 * isa_neon_iq4.c - aarch64 Advanced SIMD (base Armv8-A) dot products of
 * IQ4_NL and MXFP4 (x Q8_0) and IQ4_XS (x Q8_K), with the scalar references'
 * bits: the 4-bit codes become their int8 levels by one table lookup (TBL)
 * from the 16-entry table, the int8 products are exact in int16 (SMULL,
 * |level| <= 127, |q8| <= 128) and widened into int32 lanes (SADALP); each
 * block's (IQ4_XS: sub-block's) lanes are summed exactly, and the float
 * arithmetic is the reference's fmaf per block in block order.
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/quants.h"

/* One fp16 value as a float (FCVTL, exact like moe_fp16_to_f32). */
static inline float half_to_f32(uint16_t h)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* The exact dot of the 32 levels of 16 code bytes with 32 int8 activations. */
static inline int32_t codes_dot(int8x16_t lut, const uint8_t *qs, const int8_t *y)
{
	const uint8x16_t q = vld1q_u8(qs);
	const int8x16_t lo = vqtbl1q_s8(lut, vandq_u8(q, vdupq_n_u8(15)));
	const int8x16_t hi = vqtbl1q_s8(lut, vshrq_n_u8(q, 4));
	const int8x16_t y0 = vld1q_s8(y), y1 = vld1q_s8(y + 16);
	int32x4_t acc = vdupq_n_s32(0);
	acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(lo), vget_low_s8(y0)));
	acc = vpadalq_s16(acc, vmull_high_s8(lo, y0));
	acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(hi), vget_low_s8(y1)));
	acc = vpadalq_s16(acc, vmull_high_s8(hi, y1));
	return vaddvq_s32(acc);
}

static void dot_iq4_nl(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_nl *x = w;
	const moe_block_q8_0 *y = a;
	const int8x16_t lut = vld1q_s8(moe_iq4nl_values);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		const int32_t isum = codes_dot(lut, x[i].qs, y[i].qs);
		sum = fmaf((float)isum, half_to_f32(x[i].d) * half_to_f32(y[i].d), sum);
	}
	*s = sum;
}

static void dot_mxfp4(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_mxfp4 *x = w;
	const moe_block_q8_0 *y = a;
	const int8x16_t lut = vld1q_s8(moe_mxfp4_values);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		const int32_t isum = codes_dot(lut, x[i].qs, y[i].qs);
		sum = fmaf((float)isum, moe_e8m0_half(x[i].e) * half_to_f32(y[i].d), sum);
	}
	*s = sum;
}

static void dot_iq4_xs(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_xs *x = w;
	const moe_block_q8_K *y = a;
	const int8x16_t lut = vld1q_s8(moe_iq4nl_values);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32_t isum = 0;
		for (int sb = 0; sb < 8; sb++)
			isum += (moe_iq4xs_scale(&x[i], sb) - 32) *
			        codes_dot(lut, x[i].qs + 16 * sb, y[i].qs + 32 * sb);
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

void moe_dots_neon_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_IQ4_NL] = dot_iq4_nl;
	dots[MOE_TYPE_MXFP4] = dot_mxfp4;
	dots[MOE_TYPE_IQ4_XS] = dot_iq4_xs;
}
