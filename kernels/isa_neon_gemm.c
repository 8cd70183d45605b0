/*
 * isa_neon_gemm.c - tile kernels (gemm.h) for the NEON level: Q4_K, Q5_K,
 * Q6_K, Q8_0, Q4_0 and Q5_0 here, and the lookup of the level's tiles
 * (moe_gemm_neon), which hands out those of isa_neon_k23.c (Q2_K, Q3_K) and
 * isa_neon_iq4.c (IQ4_NL, IQ4_XS, MXFP4) of the same build too.  The int8 dot helpers, the lane
 * helpers and the driver (run_tiles) are in isa_neon_tile.h, shared with those files.
 *
 * Compiled twice, as isa_neon_dot.c is: as itself for base Armv8-A (int8
 * products by SMULL/SMLAL into int16, exact, widened by SADDLP/SADALP),
 * defining moe_gemm_neon(); and through isa_neondp_gemm.c with +dotprod
 * (SDOT), defining moe_gemm_neon_dotprod().  idot16(), sdot16() and sdot32()
 * are the only difference; the two spread the products over the lanes
 * differently, but only whole-lane sums are used, so both give the same
 * integers and the same bits.
 *
 * One tile = 2 rows x T tokens (T = 2, 3 or 4).  Per block, each row's
 * weights are decoded once (nibbles, fifth or sixth bits, the K-quants'
 * scales and mins) and met by the T tokens, and each token's activation
 * loads serve both rows.  Pair (row r, token t) sums its products exactly in
 * an int32x4 (K-quants: each sub-block's products times its scale, by MLA);
 * at the block's end a pairwise-add tree turns row r's T vectors into one
 * whose lane t is pair (r, t)'s exact block sum, converted once (SCVTF) and
 * fused-multiply-added (FMLA) by the lanes' scale products d_r * d_t into
 * row r's f32 accumulator.  So lane t does per block exactly the canonical
 * arithmetic of quants.h (exact isum, one int->f32 conversion, one fused
 * multiply-add, in block order; Q4_K/Q5_K a second accumulator for the mins,
 * subtracted at the end): the bits of y[t*ldy + r] are the scalar
 * reference's, whatever the tile shape, n_r, n_t or position (an edge tile
 * repeats its last row and drops that lane's result).
 *
 * One token (decode, and the fifth, ninth... token of a batch) takes the
 * level's per-row dot instead: it meets each weight block once anyway, and
 * gives the same bits.
 */
#include "kernels/isa_neon_tile.h"

/* ---- Q4_K / Q5_K x Q8_K ---------------------------------------------------------- */

/* The 8 scales and 8 mins of a Q4_K/Q5_K block's 12 scale bytes s, widened
 * to int32: scv[k] = sc[k], mins m0 = mn[0..3], m1 = mn[4..7] (moe_k4_scale_min's
 * values: sub-blocks 0-3 the low 6 bits of bytes 0-3 / 4-7; 4-7 the nibbles of
 * bytes 8-11 under the top 2 bits of bytes 0-3 / 4-7). */
static ALWAYS_INLINE void k4_scales(const uint8_t *s, int32_t scv[8], int32x4_t *m0, int32x4_t *m1)
{
	const int8_t shifts[8] = {0, 0, 0, 0, -4, -4, -4, -4};
	uint32_t u;

	memcpy(&u, s + 8, 4);
	uint8x8_t v = vld1_u8(s);
	uint8x8_t lo = vand_u8(v, vdup_n_u8(63)); /* sc0..3, mn0..3 */
	uint8x8_t nib =
	    vand_u8(vshl_u8(vreinterpret_u8_u32(vdup_n_u32(u)), vld1_s8(shifts)), vdup_n_u8(15));
	uint8x8_t hi = vorr_u8(nib, vshl_n_u8(vshr_n_u8(v, 6), 4)); /* sc4..7, mn4..7 */
	uint16x8_t sc = vmovl_u8(
	    vreinterpret_u8_u32(vzip1_u32(vreinterpret_u32_u8(lo), vreinterpret_u32_u8(hi))));
	uint16x8_t mn = vmovl_u8(
	    vreinterpret_u8_u32(vzip2_u32(vreinterpret_u32_u8(lo), vreinterpret_u32_u8(hi))));
	vst1q_s32(scv, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc))));
	vst1q_s32(scv + 4, vreinterpretq_s32_u32(vmovl_high_u16(sc)));
	*m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(mn)));
	*m1 = vreinterpretq_s32_u32(vmovl_high_u16(mn));
}

/* Q4_K (hbits false) or Q5_K (true), 2 rows x T tokens.  Per row and 64
 * values: the low and high nibbles (Q5_K: with their fifth bits) decoded once;
 * per pair 2 sdot32 and 2 MLA by the sub-block scales.  Mins: per token the
 * bsums summed in pairs once, per pair a MUL and an MLA by the row's mins.
 * Block value: d * d_a * isum - dmin * d_a * msum, in two accumulators. */
static ALWAYS_INLINE void tile_k45(int T, bool hbits, int64_t n_cols, float out[8],
                                   const uint8_t *const w[2], const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	const size_t qs_off = hbits ? offsetof(moe_block_q5_K, qs) : offsetof(moe_block_q4_K, qs);
	const uint8x16_t m4 = vdupq_n_u8(15), b16 = vdupq_n_u8(16);
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
	float32x4_t accm[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * sizeof(moe_block_q8_K);
		const moe_block_q8_K *y[4];
		const uint8_t *b[2];
		int32_t scv[2][8];
		int32x4_t mn0[2], mn1[2], is[2][4], ms[2][4];

		for (int t = 0; t < 4; t++)
			y[t] = (const moe_block_q8_K *)(a[t] + ao);
		for (int r = 0; r < 2; r++) {
			b[r] = w[r] + wo;
			k4_scales(b[r] + offsetof(moe_block_q4_K, scales), scv[r], &mn0[r],
			          &mn1[r]);
			for (int t = 0; t < 4; t++)
				is[r][t] = ms[r][t] = vdupq_n_s32(0);
		}
		for (int c = 0; c < 4; c++) {
			uint8x16_t lo[2][2], hi[2][2];
			int32x4_t s0[2], s1[2];
			for (int r = 0; r < 2; r++) {
				for (int k = 0; k < 2; k++) {
					uint8x16_t q = vld1q_u8(b[r] + qs_off + 32 * c + 16 * k);
					lo[r][k] = vandq_u8(q, m4);
					hi[r][k] = vshrq_n_u8(q, 4);
					if (hbits) {
						/* bit 2c of qh[l] is the fifth bit of the low
						 * nibble's value, bit 2c + 1 the high one's */
						uint8x16_t qh = vld1q_u8(
						    b[r] + offsetof(moe_block_q5_K, qh) + 16 * k);
						uint8x16_t bl =
						    vdupq_n_u8((uint8_t)(1u << (2 * c)));
						uint8x16_t bh =
						    vdupq_n_u8((uint8_t)(2u << (2 * c)));
						lo[r][k] = vorrq_u8(
						    lo[r][k], vandq_u8(vtstq_u8(qh, bl), b16));
						hi[r][k] = vorrq_u8(
						    hi[r][k], vandq_u8(vtstq_u8(qh, bh), b16));
					}
				}
				s0[r] = vld1q_dup_s32(&scv[r][2 * c]);
				s1[r] = vld1q_dup_s32(&scv[r][2 * c + 1]);
			}
			for (int t = 0; t < T; t++) {
				const int8_t *y8 = y[t]->qs + 64 * c;
				int8x16_t y0 = vld1q_s8(y8), y1 = vld1q_s8(y8 + 16);
				int8x16_t y2 = vld1q_s8(y8 + 32), y3 = vld1q_s8(y8 + 48);
				for (int r = 0; r < 2; r++) {
					int32x4_t pl = sdot32(vreinterpretq_s8_u8(lo[r][0]), y0,
					                      vreinterpretq_s8_u8(lo[r][1]), y1);
					int32x4_t ph = sdot32(vreinterpretq_s8_u8(hi[r][0]), y2,
					                      vreinterpretq_s8_u8(hi[r][1]), y3);
					is[r][t] =
					    vmlaq_s32(vmlaq_s32(is[r][t], pl, s0[r]), ph, s1[r]);
				}
			}
		}
		for (int t = 0; t < T; t++) {
			/* sub-block sums of the activations: bsums in pairs */
			int32x4_t p0 = vpaddlq_s16(vld1q_s16(y[t]->bsums));
			int32x4_t p1 = vpaddlq_s16(vld1q_s16(y[t]->bsums + 8));
			for (int r = 0; r < 2; r++)
				ms[r][t] = vmlaq_s32(vmulq_s32(p0, mn0[r]), p1, mn1[r]);
		}
		/* lanes d0, dmin0, d1, dmin1 (d and dmin are adjacent fp16) */
		const uint8_t *rp[4] = {b[0], b[0] + 2, b[1], b[1] + 2};
		const float32x4_t dd = half4_at(rp, offsetof(moe_block_q4_K, d));
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

/* ---- Q6_K x Q8_K ----------------------------------------------------------------- */

/* The 4 pieces j of 16 values (q - 32, in -32..31) that share the 16 bytes of
 * ql at l (pieces 0, 2: low and high nibbles), of ql at l + 32 (pieces 1, 3)
 * and of qh at hb (bits 2j, 2j + 1 of each byte: the values' bits 4-5). */
static ALWAYS_INLINE void q6_pieces(int8x16_t q[4], const uint8_t *l, const uint8_t *hb)
{
	const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(0x30);
	const int8x16_t off = vdupq_n_s8(32);
	const uint8x16_t la = vld1q_u8(l), lb = vld1q_u8(l + 32), qh = vld1q_u8(hb);
	const uint8x16_t v[4] = {
	    vorrq_u8(vandq_u8(la, m4), vandq_u8(vshlq_n_u8(qh, 4), m3)),
	    vorrq_u8(vandq_u8(lb, m4), vandq_u8(vshlq_n_u8(qh, 2), m3)),
	    vorrq_u8(vshrq_n_u8(la, 4), vandq_u8(qh, m3)),
	    vorrq_u8(vshrq_n_u8(lb, 4), vandq_u8(vshrq_n_u8(qh, 2), m3)),
	};
	for (int j = 0; j < 4; j++)
		q[j] = vsubq_s8(vreinterpretq_s8_u8(v[j]), off);
}

/* Q6_K, 2 rows x T tokens (the layout as in isa_neon_dot.c's dot_q6_K): per
 * row and 64 values (4 pieces of 16 sharing their ql and qh bytes) q - 32
 * assembled once, and per 16 values the int8 scale broadcast once; per pair
 * and 16 values one activation load, one sdot16 and one MLA.  Block value: d * d_a *
 * isum. */
static ALWAYS_INLINE void tile_q6_K(int T, int64_t n_cols, float out[8], const uint8_t *const w[2],
                                    const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK_K;
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q6_K);
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const moe_block_q6_K *x[2];
		const moe_block_q8_K *y[4];
		int32_t scv[2][16];
		int32x4_t is[2][4];

		for (int t = 0; t < 4; t++)
			y[t] = (const moe_block_q8_K *)(a[t] + ao);
		for (int r = 0; r < 2; r++) {
			x[r] = (const moe_block_q6_K *)(w[r] + wo);
			int16x8_t s0 = vmovl_s8(vld1_s8(x[r]->scales));
			int16x8_t s1 = vmovl_s8(vld1_s8(x[r]->scales + 8));
			vst1q_s32(scv[r], vmovl_s16(vget_low_s16(s0)));
			vst1q_s32(scv[r] + 4, vmovl_high_s16(s0));
			vst1q_s32(scv[r] + 8, vmovl_s16(vget_low_s16(s1)));
			vst1q_s32(scv[r] + 12, vmovl_high_s16(s1));
			for (int t = 0; t < 4; t++)
				is[r][t] = vdupq_n_s32(0);
		}
		/* each row's block whole before the other's: fewer live registers
		 * (the tokens' values are loaded again from L1) */
		for (int r = 0; r < 2; r++)
			for (int h = 0; h < 2; h++)
				for (int half = 0; half < 2; half++) {
					/* piece j of the 16 values here, q - 32 */
					int8x16_t q[4];
					q6_pieces(q, x[r]->ql + 64 * h + 16 * half,
					          x[r]->qh + 32 * h + 16 * half);
#pragma GCC unroll 4
					for (int j = 0; j < 4; j++) {
						const int32x4_t sj =
						    vld1q_dup_s32(&scv[r][8 * h + 2 * j + half]);
						for (int t = 0; t < T; t++) {
							const int8x16_t yv =
							    vld1q_s8(y[t]->qs + 128 * h + 32 * j +
							             16 * half);
							is[r][t] = vmlaq_s32(is[r][t],
							                     sdot16(q[j], yv), sj);
						}
					}
				}
		const uint8_t *rp[4] = {w[0] + wo, w[1] + wo, w[1] + wo, w[1] + wo};
		const float32x4_t d = half4_at(rp, offsetof(moe_block_q6_K, d));
		const float32x4_t dy = f32x4_at(a, ao + offsetof(moe_block_q8_K, d));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] = vfmaq_f32(acc[0], vcvtq_f32_s32(lanes_sum(T, is[0])),
		                   vmulq_laneq_f32(dy, d, 0));
		acc[1] = vfmaq_f32(acc[1], vcvtq_f32_s32(lanes_sum(T, is[1])),
		                   vmulq_laneq_f32(dy, d, 1));
	}
	store_rows(out, acc[0], acc[1]);
}

/* ---- 32-blocks x Q8_0 ------------------------------------------------------------ */

enum { KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 };

/* 16 bits (b0 = bits 0-7, b1 = bits 8-15) -> 16 bytes, 0xff where bit k is set. */
static ALWAYS_INLINE uint8x16_t spread_bits16(uint8_t b0, uint8_t b1)
{
	const uint8_t sel_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
	uint8x16_t v = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
	return vtstq_u8(v, vld1q_u8(sel_bytes));
}

/* The 32 signed quants of a 32-block at b as int8: q[0] values 0..15, q[1]
 * 16..31 (Q8_0 as stored, Q4_0 q - 8, Q5_0 q - 16: the nibble with 0xf0
 * or-ed in where the fifth bit is clear). */
static ALWAYS_INLINE void q32_values(int kind, const uint8_t *b, int8x16_t q[2])
{
	if (kind == KIND_Q8_0) {
		q[0] = vld1q_s8((const int8_t *)(b + offsetof(moe_block_q8_0, qs)));
		q[1] = vld1q_s8((const int8_t *)(b + offsetof(moe_block_q8_0, qs) + 16));
	} else if (kind == KIND_Q4_0) {
		const int8x16_t eight = vdupq_n_s8(8);
		uint8x16_t v = vld1q_u8(b + offsetof(moe_block_q4_0, qs));
		q[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15))), eight);
		q[1] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
	} else {
		const uint8x16_t f0 = vdupq_n_u8(0xf0);
		const uint8_t *qh = b + offsetof(moe_block_q5_0, qh);
		uint8x16_t v = vld1q_u8(b + offsetof(moe_block_q5_0, qs));
		q[0] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(15)),
		                                    vbicq_u8(f0, spread_bits16(qh[0], qh[1]))));
		q[1] = vreinterpretq_s8_u8(
		    vorrq_u8(vshrq_n_u8(v, 4), vbicq_u8(f0, spread_bits16(qh[2], qh[3]))));
	}
}

/* Q8_0, Q4_0 or Q5_0 (kind), 2 rows x T tokens: per row and block the 32
 * values decoded once; per pair two idot16 (Q8_0) or one sdot32.  Block value: d * d_a * isum. */
static ALWAYS_INLINE void tile_q32(int T, int kind, int64_t n_cols, float out[8],
                                   const uint8_t *const w[2], const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = kind == KIND_Q8_0   ? sizeof(moe_block_q8_0)
	                   : kind == KIND_Q4_0 ? sizeof(moe_block_q4_0)
	                                       : sizeof(moe_block_q5_0);
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * sizeof(moe_block_q8_0);
		int8x16_t q[2][2];
		int32x4_t v[2][4];

		q32_values(kind, w[0] + wo, q[0]);
		q32_values(kind, w[1] + wo, q[1]);
		for (int t = 0; t < T; t++) {
			const int8_t *yq =
			    (const int8_t *)(a[t] + ao + offsetof(moe_block_q8_0, qs));
			int8x16_t y0 = vld1q_s8(yq), y1 = vld1q_s8(yq + 16);
			for (int r = 0; r < 2; r++)
				v[r][t] =
				    kind == KIND_Q8_0
				        ? idot16(idot16(vdupq_n_s32(0), q[r][0], y0), q[r][1], y1)
				        : sdot32(q[r][0], y0, q[r][1], y1);
		}
		/* every block type here starts with its fp16 d */
		const uint8_t *rp[4] = {w[0] + wo, w[1] + wo, w[1] + wo, w[1] + wo};
		const float32x4_t d = half4_at(rp, 0);
		const float32x4_t dy = half4_at(a, ao + offsetof(moe_block_q8_0, d));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] =
		    vfmaq_f32(acc[0], vcvtq_f32_s32(lanes_sum(T, v[0])), vmulq_laneq_f32(dy, d, 0));
		acc[1] =
		    vfmaq_f32(acc[1], vcvtq_f32_s32(lanes_sum(T, v[1])), vmulq_laneq_f32(dy, d, 1));
	}
	store_rows(out, acc[0], acc[1]);
}

/* ---- shapes (the driver: isa_neon_tile.h) ---------------------------------------- */

#define K45_TILE(name, T, hbits)                                                                   \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		tile_k45(T, hbits, n, o, w, a);                                                    \
	}
#define Q6_TILE(name, T)                                                                           \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		tile_q6_K(T, n, o, w, a);                                                          \
	}
#define Q32_TILE(name, T, kind)                                                                    \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		tile_q32(T, kind, n, o, w, a);                                                     \
	}

K45_TILE(q4_K_2x2, 2, false)
K45_TILE(q4_K_2x3, 3, false)
K45_TILE(q4_K_2x4, 4, false)
K45_TILE(q5_K_2x2, 2, true)
K45_TILE(q5_K_2x3, 3, true)
K45_TILE(q5_K_2x4, 4, true)
Q6_TILE(q6_K_2x2, 2)
Q6_TILE(q6_K_2x3, 3)
Q6_TILE(q6_K_2x4, 4)
Q32_TILE(q8_0_2x2, 2, KIND_Q8_0)
Q32_TILE(q8_0_2x3, 3, KIND_Q8_0)
Q32_TILE(q8_0_2x4, 4, KIND_Q8_0)
Q32_TILE(q4_0_2x2, 2, KIND_Q4_0)
Q32_TILE(q4_0_2x3, 3, KIND_Q4_0)
Q32_TILE(q4_0_2x4, 4, KIND_Q4_0)
Q32_TILE(q5_0_2x2, 2, KIND_Q5_0)
Q32_TILE(q5_0_2x3, 3, KIND_Q5_0)
Q32_TILE(q5_0_2x4, 4, KIND_Q5_0)

static const tile_set set_q4_K = {MOE_TYPE_Q4_K, {NULL, NULL, q4_K_2x2, q4_K_2x3, q4_K_2x4}};
static const tile_set set_q5_K = {MOE_TYPE_Q5_K, {NULL, NULL, q5_K_2x2, q5_K_2x3, q5_K_2x4}};
static const tile_set set_q6_K = {MOE_TYPE_Q6_K, {NULL, NULL, q6_K_2x2, q6_K_2x3, q6_K_2x4}};
static const tile_set set_q8_0 = {MOE_TYPE_Q8_0, {NULL, NULL, q8_0_2x2, q8_0_2x3, q8_0_2x4}};
static const tile_set set_q4_0 = {MOE_TYPE_Q4_0, {NULL, NULL, q4_0_2x2, q4_0_2x3, q4_0_2x4}};
static const tile_set set_q5_0 = {MOE_TYPE_Q5_0, {NULL, NULL, q5_0_2x2, q5_0_2x3, q5_0_2x4}};

GEMM(gemm_q4_K, set_q4_K)
GEMM(gemm_q5_K, set_q5_K)
GEMM(gemm_q6_K, set_q6_K)
GEMM(gemm_q8_0, set_q8_0)
GEMM(gemm_q4_0, set_q4_0)
GEMM(gemm_q5_0, set_q5_0)

#if defined(MOE_NEON_DOTPROD)
moe_gemm_fn moe_gemm_neon_dotprod(moe_type t)
#else
moe_gemm_fn moe_gemm_neon(moe_type t)
#endif
{
	switch (t) {
	case MOE_TYPE_Q4_K:
		return gemm_q4_K;
	case MOE_TYPE_Q5_K:
		return gemm_q5_K;
	case MOE_TYPE_Q6_K:
		return gemm_q6_K;
	case MOE_TYPE_Q8_0:
		return gemm_q8_0;
	case MOE_TYPE_Q4_0:
		return gemm_q4_0;
	case MOE_TYPE_Q5_0:
		return gemm_q5_0;
	case MOE_TYPE_Q2_K:
	case MOE_TYPE_Q3_K:
#if defined(MOE_NEON_DOTPROD)
		return moe_gemm_neon_dotprod_k23(t); /* isa_neondp_k23.c */
#else
		return moe_gemm_neon_k23(t); /* isa_neon_k23.c */
#endif
	case MOE_TYPE_IQ4_NL:
	case MOE_TYPE_IQ4_XS:
	case MOE_TYPE_MXFP4:
#if defined(MOE_NEON_DOTPROD)
		return moe_gemm_neon_dotprod_iq4(t); /* isa_neondp_iq4.c */
#else
		return moe_gemm_neon_iq4(t); /* isa_neon_iq4.c */
#endif
	default:
		return NULL;
	}
}
