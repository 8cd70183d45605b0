/*
 * isa_neon_k23.c - aarch64 Advanced SIMD kernels of the 2- and 3-bit
 * K-quants (Q2_K, Q3_K) against Q8_K: the per-element dots and the tile
 * kernels (gemm.h).  Like isa_neon_dot.c it is compiled twice: as itself for
 * base Armv8-A (int8 products through SMULL/SMLAL and SADALP; defines
 * moe_dots_neon_k23 and moe_gemm_neon_k23) and through isa_neondp_k23.c with
 * +dotprod (SDOT; defines moe_dots_neon_dotprod_k23 and
 * moe_gemm_neon_dotprod_k23).  Both sum their products exactly in int32 lanes
 * before any float arithmetic, so they give the same exact integers and the
 * canonical arithmetic's bits (quants.h): per super-block the exact isum
 * (and Q2_K's msum), then the references' fused multiply-add in block order.
 *
 * Dots, per 16 values (one sub-block): the 2-bit field of qs (shift, and),
 * for Q3_K bit 2 from hmask (a bit test) and q - 4 as int8; one 16-product
 * dot into int32 lanes, multiplied by the sub-block's scale into the block's
 * accumulator (vmlaq_n_s32).
 *
 * Tiles, 2 rows x T tokens (T = 2..4; the driver, a single token's per-row
 * dot and the lane arithmetic are isa_neon_gemm.c's, from isa_neon_tile.h):
 * per row and sub-block the 16 values are decoded once and multiplied by the
 * sub-block's scale in int8 (Q2_K q * sc in 0..45; Q3_K (4 - q) * (sc - 32)
 * in -128..124, the block's sum negated at the end), so each (row, token)
 * pair needs no multiply by a scale: per 32 values one sdot32_acc (Q2_K) or
 * two idot16 (Q3_K) into its int32x4.
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/isa_neon_tile.h"

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

/* GCC's instruction scheduling before register allocation hoists the decode
 * of later sub-blocks above the products and spills: without it Q2_K's tile
 * runs 85 instead of 119 instructions per (row, token, block) in the base
 * build, 59 instead of 64 with SDOT (counted under qemu). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-schedule-insns")
#endif
/* ---- tiles (gemm.h): 2 rows x T tokens, the driver of isa_neon_tile.h ---------- */

/* Q2_K, 2 rows x T tokens.  Per row and sub-block the 16 quants (0..3) times
 * the sub-block's scale (0..15), in int8 once (at most 45: the base build's
 * int16 lanes hold 4 such products); per pair and 32 values one sdot32_acc.
 * Mins per pair: the row's 16 mins times the token's 16 bsums (SMULL/SMLAL
 * into int32).  Block value: d * d_a * isum - dmin * d_a * msum, in two
 * accumulators: the canonical arithmetic (quants.h), lane by lane. */
static ALWAYS_INLINE void tile_q2_K(int T, int64_t n_cols, float out[8], const uint8_t *const w[2],
                                    const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK_K;
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
	float32x4_t accm[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q2_K);
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const moe_block_q2_K *x[2];
		const moe_block_q8_K *y[4];
		uint8_t scb[2][16]; /* sub-block scales, each broadcast by LD1R */
		int32x4_t is[2][4], ms[2][4];

		for (int t = 0; t < 4; t++)
			y[t] = (const moe_block_q8_K *)(a[t] + ao);
		for (int r = 0; r < 2; r++) {
			x[r] = (const moe_block_q2_K *)(w[r] + wo);
			vst1q_u8(scb[r], vandq_u8(vld1q_u8(x[r]->scales), vdupq_n_u8(15)));
			for (int t = 0; t < 4; t++)
				is[r][t] = ms[r][t] = vdupq_n_s32(0);
		}
		for (int h = 0; h < 2; h++) {
			uint8x16_t q[2][2];
			for (int r = 0; r < 2; r++) {
				q[r][0] = vld1q_u8(x[r]->qs + 32 * h);
				q[r][1] = vld1q_u8(x[r]->qs + 32 * h + 16);
			}
#pragma GCC unroll 4
			for (int j = 0; j < 4; j++) {
				/* sub-blocks sb (from q[r][0]) and sb + 1 (q[r][1]) */
				const int sb = 8 * h + 2 * j;
				int8x16_t v[2][2];
				for (int r = 0; r < 2; r++)
					for (int k = 0; k < 2; k++)
						v[r][k] = vreinterpretq_s8_u8(
						    vmulq_u8(field2(q[r][k], j),
						             vld1q_dup_u8(&scb[r][sb + k])));
				for (int t = 0; t < T; t++) {
					const int8_t *y8 = y[t]->qs + 16 * sb;
					const int8x16_t y0 = vld1q_s8(y8), y1 = vld1q_s8(y8 + 16);
					for (int r = 0; r < 2; r++)
						is[r][t] =
						    sdot32_acc(is[r][t], v[r][0], y0, v[r][1], y1);
				}
			}
		}
		/* the mins (high nibbles), read again: fewer live registers above */
		int16x8_t mn[2][2];
		for (int r = 0; r < 2; r++) {
			const uint8x16_t m = vshrq_n_u8(vld1q_u8(x[r]->scales), 4);
			mn[r][0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
			mn[r][1] = vreinterpretq_s16_u16(vmovl_high_u8(m));
		}
		for (int t = 0; t < T; t++) {
			const int16x8_t b0 = vld1q_s16(y[t]->bsums),
			                b1 = vld1q_s16(y[t]->bsums + 8);
			for (int r = 0; r < 2; r++) {
				int32x4_t m = vmull_s16(vget_low_s16(mn[r][0]), vget_low_s16(b0));
				m = vmlal_high_s16(m, mn[r][0], b0);
				m = vmlal_s16(m, vget_low_s16(mn[r][1]), vget_low_s16(b1));
				ms[r][t] = vmlal_high_s16(m, mn[r][1], b1);
			}
		}
		/* lanes d0, dmin0, d1, dmin1 (d and dmin are adjacent fp16) */
		const uint8_t *rp[4] = {w[0] + wo, w[0] + wo + 2, w[1] + wo, w[1] + wo + 2};
		const float32x4_t dd = half4_at(rp, offsetof(moe_block_q2_K, d));
		const float32x4_t dy = f32x4_at(a, ao + offsetof(moe_block_q8_K, d));
		const float32x4_t vi0 = vcvtq_f32_s32(lanes_sum(T, is[0]));
		const float32x4_t vi1 = vcvtq_f32_s32(lanes_sum(T, is[1]));
		const float32x4_t vm0 = vcvtq_f32_s32(lanes_sum(T, ms[0]));
		const float32x4_t vm1 = vcvtq_f32_s32(lanes_sum(T, ms[1]));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] = vfmaq_f32(acc[0], vi0, vmulq_laneq_f32(dy, dd, 0));
		accm[0] = vfmaq_f32(accm[0], vm0, vmulq_laneq_f32(dy, dd, 1));
		acc[1] = vfmaq_f32(acc[1], vi1, vmulq_laneq_f32(dy, dd, 2));
		accm[1] = vfmaq_f32(accm[1], vm1, vmulq_laneq_f32(dy, dd, 3));
	}
	store_rows(out, vsubq_f32(acc[0], accm[0]), vsubq_f32(acc[1], accm[1]));
}

/* The 16 sub-block scales sc - 32 (-32..31) of a Q3_K block's 12 scale bytes
 * s, as moe_k3_scale gives them: low 4 bits from the nibbles of bytes 0-7
 * (sub-blocks 0-7 low, 8-15 high), bits 4-5 from bits 2 (s / 4) of byte
 * 8 + s % 4. */
static ALWAYS_INLINE int8x16_t k3_scales(const uint8_t *s)
{
	const int8_t shifts[16] = {0, 0, 0, 0, -2, -2, -2, -2, -4, -4, -4, -4, -6, -6, -6, -6};
	uint32_t u;

	memcpy(&u, s + 8, 4);
	const uint8x8_t v = vld1_u8(s);
	const uint8x16_t lo = vcombine_u8(vand_u8(v, vdup_n_u8(15)), vshr_n_u8(v, 4));
	const uint8x16_t hi = vandq_u8(
	    vshlq_u8(vreinterpretq_u8_u32(vdupq_n_u32(u)), vld1q_s8(shifts)), vdupq_n_u8(3));
	return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32));
}

/* Q3_K, 2 rows x T tokens.  Per row and sub-block the 16 values
 * (4 - q) * (sc - 32) in int8 once: 4 - q is 4 where the hmask bit is clear,
 * minus the 2-bit field, and the product lies in -128..124 (the other sign,
 * (q - 4) * (sc - 32), would reach 128).  Per pair and 16 values one idot16
 * (exact: single products in the base build's int16 lanes); the block's sum
 * is -isum, negated (exactly) before the conversion.  Block value:
 * d * d_a * isum, the canonical arithmetic (quants.h), lane by lane. */
static ALWAYS_INLINE void tile_q3_K(int T, int64_t n_cols, float out[8], const uint8_t *const w[2],
                                    const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const uint8x16_t four = vdupq_n_u8(4);
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q3_K);
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const moe_block_q3_K *x[2];
		const moe_block_q8_K *y[4];
		int8_t scb[2][16]; /* sc - 32, each broadcast by LD1R */
		uint8x16_t hm[2][2];
		int32x4_t is[2][4];

		for (int t = 0; t < 4; t++)
			y[t] = (const moe_block_q8_K *)(a[t] + ao);
		for (int r = 0; r < 2; r++) {
			x[r] = (const moe_block_q3_K *)(w[r] + wo);
			vst1q_s8(scb[r], k3_scales(x[r]->scales));
			hm[r][0] = vld1q_u8(x[r]->hmask);
			hm[r][1] = vld1q_u8(x[r]->hmask + 16);
			for (int t = 0; t < 4; t++)
				is[r][t] = vdupq_n_s32(0);
		}
		for (int h = 0; h < 2; h++) {
			uint8x16_t q[2][2];
			for (int r = 0; r < 2; r++) {
				q[r][0] = vld1q_u8(x[r]->qs + 32 * h);
				q[r][1] = vld1q_u8(x[r]->qs + 32 * h + 16);
			}
#pragma GCC unroll 4
			for (int j = 0; j < 4; j++) {
				/* sub-blocks sb (values 32 (4h + j) + l, l < 16: hmask bit
				 * 4h + j of bytes l) and sb + 1 (l = 16..31) */
				const int sb = 8 * h + 2 * j;
				const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + j)));
				int8x16_t v[2][2];
				for (int r = 0; r < 2; r++)
					for (int k = 0; k < 2; k++) {
						const uint8x16_t four_q = vsubq_u8(
						    vbicq_u8(four, vtstq_u8(hm[r][k], bit)),
						    field2(q[r][k], j));
						v[r][k] = vmulq_s8(vreinterpretq_s8_u8(four_q),
						                   vld1q_dup_s8(&scb[r][sb + k]));
					}
				for (int t = 0; t < T; t++) {
					const int8_t *y8 = y[t]->qs + 16 * sb;
					const int8x16_t y0 = vld1q_s8(y8), y1 = vld1q_s8(y8 + 16);
					for (int r = 0; r < 2; r++)
						is[r][t] = idot16(idot16(is[r][t], v[r][0], y0),
						                  v[r][1], y1);
				}
			}
		}
		const uint8_t *rp[4] = {w[0] + wo, w[1] + wo, w[1] + wo, w[1] + wo};
		const float32x4_t d = half4_at(rp, offsetof(moe_block_q3_K, d));
		const float32x4_t dy = f32x4_at(a, ao + offsetof(moe_block_q8_K, d));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] = vfmaq_f32(acc[0], vcvtq_f32_s32(vnegq_s32(lanes_sum(T, is[0]))),
		                   vmulq_laneq_f32(dy, d, 0));
		acc[1] = vfmaq_f32(acc[1], vcvtq_f32_s32(vnegq_s32(lanes_sum(T, is[1]))),
		                   vmulq_laneq_f32(dy, d, 1));
	}
	store_rows(out, acc[0], acc[1]);
}

#define K23_TILE(name, fn, T)                                                                      \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		fn(T, n, o, w, a);                                                                 \
	}
K23_TILE(q2_K_2x2, tile_q2_K, 2)
K23_TILE(q2_K_2x3, tile_q2_K, 3)
K23_TILE(q2_K_2x4, tile_q2_K, 4)
K23_TILE(q3_K_2x2, tile_q3_K, 2)
K23_TILE(q3_K_2x3, tile_q3_K, 3)
K23_TILE(q3_K_2x4, tile_q3_K, 4)

static const tile_set set_q2_K = {MOE_TYPE_Q2_K, {NULL, NULL, q2_K_2x2, q2_K_2x3, q2_K_2x4}};
static const tile_set set_q3_K = {MOE_TYPE_Q3_K, {NULL, NULL, q3_K_2x2, q3_K_2x3, q3_K_2x4}};
GEMM(gemm_q2_K, set_q2_K)
GEMM(gemm_q3_K, set_q3_K)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#if defined(MOE_NEON_DOTPROD)
moe_gemm_fn moe_gemm_neon_dotprod_k23(moe_type t)
#else
moe_gemm_fn moe_gemm_neon_k23(moe_type t)
#endif
{
	return t == MOE_TYPE_Q2_K ? gemm_q2_K : t == MOE_TYPE_Q3_K ? gemm_q3_K : NULL;
}
