/*
 * isa_neon_dot.c - aarch64 Advanced SIMD (NEON) dot products.
 *
 * This file is compiled twice:
 *   - as itself, for base Armv8-A (every aarch64 CPU has Advanced SIMD): the
 *     int8 products go through SMULL/SMULL2 (int16, exact: |q| <= 128) and are
 *     widened into int32 lanes with SADALP; it defines moe_dots_neon();
 *   - through isa_neondp_dot.c, which defines MOE_NEON_DOTPROD and is built
 *     with +dotprod: the int8 products are SDOT (vdotq_s32); it defines
 *     moe_dots_neon_dotprod(), which dispatch.c uses only when the kernel
 *     reports HWCAP_ASIMDDP.
 * idot16() below is the only difference between the two.  It adds 16 int8
 * products into 4 int32 lanes; the two forms spread the products over the
 * lanes differently, but every caller sums all four lanes of a block (or
 * multiplies all four by the same integer scale) before any float arithmetic,
 * so both forms give the same exact integers and therefore the same bits.
 *
 * Integer parts are exact per block, as in the scalar references.  The
 * K-quants then do exactly the references' float arithmetic, per super-block
 * in block order (bit-identical to them when the compiler does not contract
 * a*b+c, as in ISO C mode); the 32-blocks multiply four block sums by their
 * four scale products in one vector FMA, and float rows use four vector
 * accumulators, so those reorder float sums in an order fixed by n alone:
 * every call with the same inputs gives the same bits.
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/isa_neon_tile.h" /* idot16 */
#include "kernels/quants.h"

/* ---- float rows ------------------------------------------------------------------ */

static void dot_f32(int64_t n, float *s, const void *w, const void *a)
{
	const float *x = w, *y = a;
	float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		for (int k = 0; k < 4; k++)
			acc[k] =
			    vfmaq_f32(acc[k], vld1q_f32(x + i + 4 * k), vld1q_f32(y + i + 4 * k));
	for (; i + 4 <= n; i += 4)
		acc[0] = vfmaq_f32(acc[0], vld1q_f32(x + i), vld1q_f32(y + i));
	float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
	for (; i < n; i++)
		sum += x[i] * y[i];
	*s = sum;
}

/* One fp16 value as a float: the same exact conversion as moe_fp16_to_f32,
 * in one instruction instead of a call. */
static inline float half_to_f32(uint16_t h)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* 4 fp16 values at p as floats (exact conversion, FCVTL). */
static inline float32x4_t f16x4(const uint16_t *p)
{
	return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static void dot_f16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		for (int k = 0; k < 4; k++)
			acc[k] = vfmaq_f32(acc[k], f16x4(x + i + 4 * k), vld1q_f32(y + i + 4 * k));
	for (; i + 4 <= n; i += 4)
		acc[0] = vfmaq_f32(acc[0], f16x4(x + i), vld1q_f32(y + i));
	float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
	for (; i < n; i++)
		sum += half_to_f32(x[i]) * y[i];
	*s = sum;
}

/* 4 bf16 values at p as floats: each becomes the upper half of a binary32. */
static inline float32x4_t bf16x4(const uint16_t *p)
{
	return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

static void dot_bf16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		for (int k = 0; k < 4; k++)
			acc[k] = vfmaq_f32(acc[k], bf16x4(x + i + 4 * k), vld1q_f32(y + i + 4 * k));
	for (; i + 4 <= n; i += 4)
		acc[0] = vfmaq_f32(acc[0], bf16x4(x + i), vld1q_f32(y + i));
	float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
	for (; i < n; i++)
		sum += moe_bf16_to_f32(x[i]) * y[i];
	*s = sum;
}

/* ---- 32-blocks ------------------------------------------------------------------- */

/*
 * Groups of 4 blocks: each block's products are summed into a vector of 4
 * int32 partial sums; a pairwise-add tree turns the 4 vectors into one
 * holding block k's exact sum in lane k, converted once; the 4 scale
 * products dx * dy in one multiply; then one fused multiply-add per block,
 * in block order, into one accumulator (the canonical arithmetic of
 * quants.h, which the x86 tiles follow too).
 */

/* The fp16 values at p, p + stride, p + 2 stride, p + 3 stride, as floats. */
static inline float32x4_t half4(const uint8_t *p, size_t stride)
{
	uint16_t h[4];

	for (int k = 0; k < 4; k++)
		memcpy(&h[k], p + (size_t)k * stride, 2);
	return f16x4(h);
}

/* Lane k = sum of the lanes of v[k]. */
static inline int32x4_t sum4_i32(const int32x4_t v[4])
{
	return vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]));
}

static inline int32x4_t part_q8_0(const moe_block_q8_0 *x, const moe_block_q8_0 *y)
{
	int32x4_t p = idot16(vdupq_n_s32(0), vld1q_s8(x->qs), vld1q_s8(y->qs));
	return idot16(p, vld1q_s8(x->qs + 16), vld1q_s8(y->qs + 16));
}

/* Q4_0: low nibbles are values 0..15, high nibbles 16..31; q - 8 in -8..7. */
static inline int32x4_t part_q4_0(const moe_block_q4_0 *x, const moe_block_q8_0 *y)
{
	const int8x16_t eight = vdupq_n_s8(8);
	uint8x16_t q = vld1q_u8(x->qs);
	int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15))), eight);
	int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
	int32x4_t p = idot16(vdupq_n_s32(0), lo, vld1q_s8(y->qs));
	return idot16(p, hi, vld1q_s8(y->qs + 16));
}

/* 16 bits (b0 = bits 0-7, b1 = bits 8-15) -> 16 bytes, 0xff where bit k is set. */
static inline uint8x16_t spread_bits16(uint8_t b0, uint8_t b1)
{
	const uint8_t sel_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
	uint8x16_t b = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
	return vtstq_u8(b, vld1q_u8(sel_bytes));
}

/* Q5_0: q - 16 in -16..15 is, as int8, the nibble with 0xf0 or-ed in where the
 * fifth bit is clear. */
static inline int32x4_t part_q5_0(const moe_block_q5_0 *x, const moe_block_q8_0 *y)
{
	const uint8x16_t f0 = vdupq_n_u8(0xf0);
	uint8x16_t q = vld1q_u8(x->qs);
	uint8x16_t lo =
	    vorrq_u8(vandq_u8(q, vdupq_n_u8(15)), vbicq_u8(f0, spread_bits16(x->qh[0], x->qh[1])));
	uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), vbicq_u8(f0, spread_bits16(x->qh[2], x->qh[3])));
	int32x4_t p = idot16(vdupq_n_s32(0), vreinterpretq_s8_u8(lo), vld1q_s8(y->qs));
	return idot16(p, vreinterpretq_s8_u8(hi), vld1q_s8(y->qs + 16));
}

static inline float block_scale(uint16_t dx, uint16_t dy)
{
	return half_to_f32(dx) * half_to_f32(dy);
}

/* acc + f[k] * d[k] for k = 0..3 in order, one fused multiply-add each: the
 * canonical block arithmetic (quants.h) of 4 consecutive blocks. */
static inline float fma4(float acc, float32x4_t f, float32x4_t d)
{
	acc = fmaf(vgetq_lane_f32(f, 0), vgetq_lane_f32(d, 0), acc);
	acc = fmaf(vgetq_lane_f32(f, 1), vgetq_lane_f32(d, 1), acc);
	acc = fmaf(vgetq_lane_f32(f, 2), vgetq_lane_f32(d, 2), acc);
	return fmaf(vgetq_lane_f32(f, 3), vgetq_lane_f32(d, 3), acc);
}

static void dot_q8_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q8_0 *x = w, *y = a;
	const int64_t nb = n / MOE_QK32;
	float acc = 0;
	int64_t i = 0;

	for (; i + 4 <= nb; i += 4) {
		int32x4_t v[4];
		for (int k = 0; k < 4; k++)
			v[k] = part_q8_0(x + i + k, y + i + k);
		float32x4_t d = vmulq_f32(half4((const uint8_t *)&x[i].d, sizeof(*x)),
		                          half4((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = fma4(acc, vcvtq_f32_s32(sum4_i32(v)), d);
	}
	for (; i < nb; i++)
		acc = fmaf((float)vaddvq_s32(part_q8_0(x + i, y + i)), block_scale(x[i].d, y[i].d),
		           acc);
	*s = acc;
}

static void dot_q4_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_0 *x = w;
	const moe_block_q8_0 *y = a;
	const int64_t nb = n / MOE_QK32;
	float acc = 0;
	int64_t i = 0;

	for (; i + 4 <= nb; i += 4) {
		int32x4_t v[4];
		for (int k = 0; k < 4; k++)
			v[k] = part_q4_0(x + i + k, y + i + k);
		float32x4_t d = vmulq_f32(half4((const uint8_t *)&x[i].d, sizeof(*x)),
		                          half4((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = fma4(acc, vcvtq_f32_s32(sum4_i32(v)), d);
	}
	for (; i < nb; i++)
		acc = fmaf((float)vaddvq_s32(part_q4_0(x + i, y + i)), block_scale(x[i].d, y[i].d),
		           acc);
	*s = acc;
}

static void dot_q5_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_0 *x = w;
	const moe_block_q8_0 *y = a;
	const int64_t nb = n / MOE_QK32;
	float acc = 0;
	int64_t i = 0;

	for (; i + 4 <= nb; i += 4) {
		int32x4_t v[4];
		for (int k = 0; k < 4; k++)
			v[k] = part_q5_0(x + i + k, y + i + k);
		float32x4_t d = vmulq_f32(half4((const uint8_t *)&x[i].d, sizeof(*x)),
		                          half4((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = fma4(acc, vcvtq_f32_s32(sum4_i32(v)), d);
	}
	for (; i < nb; i++)
		acc = fmaf((float)vaddvq_s32(part_q5_0(x + i, y + i)), block_scale(x[i].d, y[i].d),
		           acc);
	*s = acc;
}

/* ---- K-quants -------------------------------------------------------------------- */

/* sum over the 8 sub-blocks of mn[s] * (bsums[2s] + bsums[2s+1]), the pair
 * sums and products in int32 as in the reference. */
static inline int32_t k4_min_sum(const uint8_t mn[8], const int16_t bsums[16])
{
	int32x4_t p0 = vpaddlq_s16(vld1q_s16(bsums));     /* pairs 0..3 */
	int32x4_t p1 = vpaddlq_s16(vld1q_s16(bsums + 8)); /* pairs 4..7 */
	uint16x8_t m = vmovl_u8(vld1_u8(mn));
	int32x4_t m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)));
	int32x4_t m1 = vreinterpretq_s32_u32(vmovl_high_u16(m));
	return vaddvq_s32(vmlaq_s32(vmulq_s32(p0, m0), p1, m1));
}

/* The 8 scales and mins of a Q4_K/Q5_K block (layout in quants.h). */
static inline void k4_unpack(const uint8_t scales[12], uint8_t sc[8], uint8_t mn[8])
{
	for (int sb = 0; sb < 8; sb++)
		moe_k4_scale_min(sb, scales, &sc[sb], &mn[sb]);
}

/* acc + the 32 products of the bytes of q0, q1 (values 0..31, read as int8)
 * with the activations y[0..32). */
static inline int32x4_t dot32(int32x4_t acc, uint8x16_t q0, uint8x16_t q1, const int8_t *y)
{
	acc = idot16(acc, vreinterpretq_s8_u8(q0), vld1q_s8(y));
	return idot16(acc, vreinterpretq_s8_u8(q1), vld1q_s8(y + 16));
}

static void dot_q4_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_K *x = w;
	const moe_block_q8_K *y = a;
	const uint8x16_t m4 = vdupq_n_u8(15);
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		uint8_t sc[8], mn[8];
		int32x4_t acc = vdupq_n_s32(0);

		k4_unpack(x[i].scales, sc, mn);
		for (int c = 0; c < 4; c++) {
			uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * c);
			uint8x16_t q1 = vld1q_u8(x[i].qs + 32 * c + 16);
			const int8_t *y8 = y[i].qs + 64 * c;
			int32x4_t plo =
			    dot32(vdupq_n_s32(0), vandq_u8(q0, m4), vandq_u8(q1, m4), y8);
			int32x4_t phi =
			    dot32(vdupq_n_s32(0), vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4), y8 + 32);
			acc = vmlaq_n_s32(acc, plo, sc[2 * c]);
			acc = vmlaq_n_s32(acc, phi, sc[2 * c + 1]);
		}
		int isum = vaddvq_s32(acc), msum = k4_min_sum(mn, y[i].bsums);
		/* the canonical block arithmetic (quants.h) */
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, half_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

static void dot_q5_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_K *x = w;
	const moe_block_q8_K *y = a;
	const uint8x16_t m4 = vdupq_n_u8(15), b16 = vdupq_n_u8(16);
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		uint8_t sc[8], mn[8];
		int32x4_t acc = vdupq_n_s32(0);
		uint8x16_t qh0 = vld1q_u8(x[i].qh), qh1 = vld1q_u8(x[i].qh + 16);

		k4_unpack(x[i].scales, sc, mn);
		for (int c = 0; c < 4; c++) {
			uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * c);
			uint8x16_t q1 = vld1q_u8(x[i].qs + 32 * c + 16);
			/* bit 2c of qh[l] is the fifth bit of the low nibble's value,
			 * bit 2c + 1 that of the high nibble's */
			uint8x16_t bl = vdupq_n_u8((uint8_t)(1u << (2 * c)));
			uint8x16_t bh = vdupq_n_u8((uint8_t)(2u << (2 * c)));
			uint8x16_t l0 =
			    vorrq_u8(vandq_u8(q0, m4), vandq_u8(vtstq_u8(qh0, bl), b16));
			uint8x16_t l1 =
			    vorrq_u8(vandq_u8(q1, m4), vandq_u8(vtstq_u8(qh1, bl), b16));
			uint8x16_t h0 =
			    vorrq_u8(vshrq_n_u8(q0, 4), vandq_u8(vtstq_u8(qh0, bh), b16));
			uint8x16_t h1 =
			    vorrq_u8(vshrq_n_u8(q1, 4), vandq_u8(vtstq_u8(qh1, bh), b16));
			const int8_t *y8 = y[i].qs + 64 * c;
			acc = vmlaq_n_s32(acc, dot32(vdupq_n_s32(0), l0, l1, y8), sc[2 * c]);
			acc =
			    vmlaq_n_s32(acc, dot32(vdupq_n_s32(0), h0, h1, y8 + 32), sc[2 * c + 1]);
		}
		int isum = vaddvq_s32(acc), msum = k4_min_sum(mn, y[i].bsums);
		/* the canonical block arithmetic (quants.h) */
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, half_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

/* Bits 2j, 2j + 1 of each byte of qh, moved to bits 4-5 (others garbage). */
static inline uint8x16_t q6_high(uint8x16_t qh, int j)
{
	switch (j) {
	case 0:
		return vshlq_n_u8(qh, 4);
	case 1:
		return vshlq_n_u8(qh, 2);
	case 2:
		return qh;
	default:
		return vshrq_n_u8(qh, 2);
	}
}

/* Q6_K: within each half h, 32-value piece j of the half is built from the low
 * nibbles (j = 0, 1) or high nibbles (j = 2, 3) of ql[64h + 32 (j & 1) ..] and
 * bits 2j, 2j + 1 of qh[32h ..]; q - 32 is in -32..31.  Each 16 values have
 * their own int8 scale (sub-block 8h + 2j for the first 16, 8h + 2j + 1). */
static void dot_q6_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q6_K *x = w;
	const moe_block_q8_K *y = a;
	const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(0x30);
	const int8x16_t off = vdupq_n_s8(32);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int32x4_t acc = vdupq_n_s32(0);

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = x[i].ql + 64 * h;
			const uint8_t *qh = x[i].qh + 32 * h;
			const int8_t *sc = x[i].scales + 8 * h;
			const int8_t *y8 = y[i].qs + 128 * h;
			uint8x16_t l[4] = {vld1q_u8(ql), vld1q_u8(ql + 16), vld1q_u8(ql + 32),
			                   vld1q_u8(ql + 48)};
			uint8x16_t hb[2] = {vld1q_u8(qh), vld1q_u8(qh + 16)};

			for (int j = 0; j < 4; j++) {
				for (int half = 0; half < 2; half++) {
					uint8x16_t lo = l[2 * (j & 1) + half];
					lo = j < 2 ? vandq_u8(lo, m4) : vshrq_n_u8(lo, 4);
					uint8x16_t hi = q6_high(hb[half], j);
					int8x16_t q = vsubq_s8(
					    vreinterpretq_s8_u8(vorrq_u8(lo, vandq_u8(hi, m3))),
					    off);
					int32x4_t p = idot16(vdupq_n_s32(0), q,
					                     vld1q_s8(y8 + 32 * j + 16 * half));
					acc = vmlaq_n_s32(acc, p, sc[2 * j + half]);
				}
			}
		}
		sum = fmaf((float)vaddvq_s32(acc), half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

#if defined(MOE_NEON_DOTPROD)
void moe_dots_neon_dotprod(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
#else
void moe_dots_neon(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
#endif
{
	dots[MOE_TYPE_F32] = dot_f32;
	dots[MOE_TYPE_F16] = dot_f16;
	dots[MOE_TYPE_BF16] = dot_bf16;
	dots[MOE_TYPE_Q8_0] = dot_q8_0;
	dots[MOE_TYPE_Q4_0] = dot_q4_0;
	dots[MOE_TYPE_Q5_0] = dot_q5_0;
	dots[MOE_TYPE_Q4_K] = dot_q4_K;
	dots[MOE_TYPE_Q5_K] = dot_q5_K;
	dots[MOE_TYPE_Q6_K] = dot_q6_K;
	moe_dots_neon_iq4(dots);  /* isa_neon_iq4.c, the same in both builds */
	moe_dots_neon_iq13(dots); /* isa_neon_iq13.c, likewise */
	moe_dots_neon_iq2(dots);  /* isa_neon_iq2.c, likewise */
#if defined(MOE_NEON_DOTPROD)
	moe_dots_neon_dotprod_k23(dots);
#else
	moe_dots_neon_k23(dots);
#endif
}
