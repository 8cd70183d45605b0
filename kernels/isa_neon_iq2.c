/*
 * isa_neon_iq2.c - aarch64 Advanced SIMD (base Armv8-A) dot products of
 * IQ2_XXS, IQ2_XS and IQ2_S (x Q8_K) with the scalar references' bits: each
 * group's 8 grid bytes (moe_iq2*_grid64, <= 43) take their signs by a
 * multiply with the +1 / -1 bytes of moe_iq2_signs64 (exact in int8), the
 * products with the activations are exact in int16 (SMULL) and widened into
 * int32 lanes (SADALP); each scale's lanes are summed exactly and multiplied
 * by its 2 s + 1, and the float arithmetic is the reference's fmaf per block
 * in block order, 0.125f times the sum at the end.
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/quants.h"

/* One fp16 value as a float (FCVTL, exact like moe_fp16_to_f32). */
static inline float half_to_f32(uint16_t h)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* acc + the products of one group (grid entry g, sign mask sg) with 8
 * activations, pairwise in int32 lanes. */
static inline int32x4_t group(int32x4_t acc, uint64_t g, uint64_t sg, const int8_t *q8)
{
	const int8x8_t v = vmul_s8(vcreate_s8(g), vcreate_s8(sg));
	return vpadalq_s16(acc, vmull_s8(v, vld1_s8(q8)));
}

static inline uint64_t esigns(uint32_t k)
{
	return moe_iq2_esigns64[k & 127];
}

static void dot_iq2_xxs(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_xxs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32_t isum = 0;
		for (int b = 0; b < 8; b++) {
			uint32_t a0, a1;
			memcpy(&a0, x[i].qs + 4 * b, 4);
			memcpy(&a1, x[i].qs + 4 * b + 2, 4);
			int32x4_t acc = vdupq_n_s32(0);
			for (int l = 0; l < 4; l++)
				acc = group(acc, moe_iq2xxs_grid64[(a0 >> (8 * l)) & 255],
				            esigns(a1 >> (7 * l)), y[i].qs + 32 * b + 8 * l);
			isum += (int32_t)(2 * (a1 >> 28) + 1) * vaddvq_s32(acc);
		}
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

static void dot_iq2_xs(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_xs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32_t isum = 0;
		for (int h = 0; h < 16; h++) {
			const uint16_t q0 = x[i].qs[2 * h], q1 = x[i].qs[2 * h + 1];
			int32x4_t acc = group(vdupq_n_s32(0), moe_iq2xs_grid64[q0 & 511],
			                      esigns(q0 >> 9), y[i].qs + 16 * h);
			acc = group(acc, moe_iq2xs_grid64[q1 & 511], esigns(q1 >> 9),
			            y[i].qs + 16 * h + 8);
			isum += (2 * ((x[i].scales[h / 2] >> (4 * (h % 2))) & 15) + 1) *
			        vaddvq_s32(acc);
		}
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

static void dot_iq2_s(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_s *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32_t isum = 0;
		for (int h = 0; h < 16; h++) {
			int32x4_t acc = vdupq_n_s32(0);
			for (int g = 2 * h; g < 2 * h + 2; g++) {
				const int idx = x[i].qs[g] | ((x[i].qh[g / 4] >> (2 * (g % 4))) & 3)
				                                 << 8;
				acc = group(acc, moe_iq2s_grid64[idx],
				            moe_iq2_signs64[x[i].qs[32 + g]], y[i].qs + 8 * g);
			}
			isum += (2 * ((x[i].scales[h / 2] >> (4 * (h % 2))) & 15) + 1) *
			        vaddvq_s32(acc);
		}
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

void moe_dots_neon_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	moe_iq2_tables_init();
	dots[MOE_TYPE_IQ2_XXS] = dot_iq2_xxs;
	dots[MOE_TYPE_IQ2_XS] = dot_iq2_xs;
	dots[MOE_TYPE_IQ2_S] = dot_iq2_s;
}
