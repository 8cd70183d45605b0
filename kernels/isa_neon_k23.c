/*
 * isa_neon_k23.c - aarch64 Advanced SIMD dot products of the 2- and 3-bit
 * K-quants (Q2_K, Q3_K) against Q8_K.  Like isa_neon_dot.c it is compiled
 * twice: as itself for base Armv8-A (int8 products through SMULL/SMULL2 and
 * SADALP; defines moe_dots_neon_k23) and through isa_neondp_k23.c with
 * +dotprod (SDOT; defines moe_dots_neon_dotprod_k23).  Both sum every 16
 * products' lanes before any float arithmetic, so they give the same exact
 * integers and the canonical arithmetic's bits (quants.h): per super-block
 * the exact isum (and Q2_K's msum), then the references' fmaf in block order.
 *
 * Per 16 values (one sub-block): the 2-bit field of qs (shift, and), for
 * Q3_K bit 2 from hmask (a bit test) and q - 4 as int8; one 16-product dot
 * into int32 lanes, multiplied by the sub-block's scale into the block's
 * accumulator (vmlaq_n_s32).
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/quants.h"

#if defined(MOE_NEON_DOTPROD)
static inline int32x4_t idot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
	return vdotq_s32(acc, a, b);
}
#else
static inline int32x4_t idot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
	acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
	return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#endif

static inline float half_to_f32(uint16_t h)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* Bits 2j, 2j + 1 of each byte of q (j = 0..3) as 0..3. */
static inline uint8x16_t field2(uint8x16_t q, int j)
{
	const uint8x16_t m3 = vdupq_n_u8(3);

	switch (j) {
	case 0:
		return vandq_u8(q, m3);
	case 1:
		return vandq_u8(vshrq_n_u8(q, 2), m3);
	case 2:
		return vandq_u8(vshrq_n_u8(q, 4), m3);
	default:
		return vshrq_n_u8(q, 6);
	}
}

static void dot_q2_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q2_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32x4_t acc = vdupq_n_s32(0);
		const uint8x16_t scm = vld1q_u8(x[i].scales);
		/* the mins (high nibbles) times the bsums, 16 products */
		const int16x8_t mn0 =
		    vreinterpretq_s16_u16(vmovl_u8(vshr_n_u8(vget_low_u8(scm), 4)));
		const int16x8_t mn1 = vreinterpretq_s16_u16(vmovl_high_u8(vshrq_n_u8(scm, 4)));
		int32x4_t m = vmull_s16(vget_low_s16(mn0), vld1_s16(y[i].bsums));
		m = vmlal_high_s16(m, mn0, vld1q_s16(y[i].bsums));
		m = vmlal_s16(m, vget_low_s16(mn1), vld1_s16(y[i].bsums + 8));
		m = vmlal_high_s16(m, mn1, vld1q_s16(y[i].bsums + 8));

		for (int h = 0; h < 2; h++) {
			const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h);
			const uint8x16_t q1 = vld1q_u8(x[i].qs + 32 * h + 16);
			for (int j = 0; j < 4; j++) {
				const int sb = 8 * h + 2 * j;
				const int8_t *y8 = y[i].qs + 16 * sb;
				int32x4_t p0 =
				    idot16(vdupq_n_s32(0), vreinterpretq_s8_u8(field2(q0, j)),
				           vld1q_s8(y8));
				int32x4_t p1 =
				    idot16(vdupq_n_s32(0), vreinterpretq_s8_u8(field2(q1, j)),
				           vld1q_s8(y8 + 16));
				acc = vmlaq_n_s32(acc, p0, x[i].scales[sb] & 15);
				acc = vmlaq_n_s32(acc, p1, x[i].scales[sb + 1] & 15);
			}
		}
		const int isum = vaddvq_s32(acc), msum = vaddvq_s32(m);
		/* the canonical block arithmetic (quants.h) */
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, half_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

static void dot_q3_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q3_K *x = w;
	const moe_block_q8_K *y = a;
	const uint8x16_t b4 = vdupq_n_u8(4);
	const int8x16_t off = vdupq_n_s8(4);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32x4_t acc = vdupq_n_s32(0);
		int sc[16];
		const uint8x16_t hm0 = vld1q_u8(x[i].hmask), hm1 = vld1q_u8(x[i].hmask + 16);

		for (int sb = 0; sb < 16; sb++)
			sc[sb] = moe_k3_scale(sb, x[i].scales) - 32;
		for (int h = 0; h < 2; h++) {
			const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h);
			const uint8x16_t q1 = vld1q_u8(x[i].qs + 32 * h + 16);
			for (int j = 0; j < 4; j++) {
				const int sb = 8 * h + 2 * j;
				const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + j)));
				const int8_t *y8 = y[i].qs + 16 * sb;
				/* q - 4 in -4..3: the 2-bit field, 4 where the hmask bit is set */
				const int8x16_t v0 =
				    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(
				                 field2(q0, j), vandq_u8(vtstq_u8(hm0, bit), b4))),
				             off);
				const int8x16_t v1 =
				    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(
				                 field2(q1, j), vandq_u8(vtstq_u8(hm1, bit), b4))),
				             off);
				acc = vmlaq_n_s32(acc, idot16(vdupq_n_s32(0), v0, vld1q_s8(y8)),
				                  sc[sb]);
				acc = vmlaq_n_s32(
				    acc, idot16(vdupq_n_s32(0), v1, vld1q_s8(y8 + 16)), sc[sb + 1]);
			}
		}
		/* the canonical block arithmetic (quants.h) */
		sum = fmaf((float)vaddvq_s32(acc), half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

#if defined(MOE_NEON_DOTPROD)
void moe_dots_neon_dotprod_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
#else
void moe_dots_neon_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
#endif
{
	dots[MOE_TYPE_Q2_K] = dot_q2_K;
	dots[MOE_TYPE_Q3_K] = dot_q3_K;
}
