/*
 * isa_neon_iq4.c - aarch64 Advanced SIMD kernels of IQ4_NL and MXFP4
 * (x Q8_0) and IQ4_XS (x Q8_K), with the scalar references' bits: the
 * 4-bit codes become their int8 levels by one table lookup (TBL) from the
 * 16-entry table; each block's (IQ4_XS: sub-block's) products are summed
 * exactly, and the float arithmetic is the reference's fused multiply-add per
 * block in block order (the canonical arithmetic, quants.h).
 *
 * The per-element dots (base Armv8-A only, the same in both NEON tables):
 * int8 products exact in int16 (SMULL, |level| <= 127, |q8| <= 128),
 * widened into int32 lanes (SADALP).
 *
 * The tile kernels (gemm.h), 2 rows x T tokens with the driver and lane
 * arithmetic of isa_neon_tile.h: compiled twice like isa_neon_gemm.c, as
 * itself (base: 2 products per int16 lane, 2 * 127 * 128 < 2^15, then
 * SADDLP/SADALP; defines moe_gemm_neon_iq4) and through isa_neondp_iq4.c with
 * SDOT (defines moe_gemm_neon_dotprod_iq4).  Per row and block (IQ4_XS: and
 * sub-block) the codes are looked up once and met by the T tokens, whose
 * loads serve both rows; IQ4_XS multiplies each pair's sub-block sum by
 * ls - 32 in int32 (MLA).
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/isa_neon_tile.h"

#if !defined(MOE_NEON_DOTPROD)
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
#endif /* the dots: base build only */

/* ---- tiles (gemm.h): 2 rows x T tokens, the driver of isa_neon_tile.h ---------- */

/* The 32 products a1 * b1, a2 * b2 as 4 int32 lanes (which product lands in
 * which lane differs between the builds; only lane sums are used) for
 * |a| <= 127: the base build sums 2 products per int16 lane (at most
 * 2 * 127 * 128 < 2^15 in magnitude, exact for any int8 b). */
#if defined(MOE_NEON_DOTPROD)
static ALWAYS_INLINE int32x4_t wdot32(int8x16_t a1, int8x16_t b1, int8x16_t a2, int8x16_t b2)
{
	return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a1, b1), a2, b2);
}
#else
static ALWAYS_INLINE int32x4_t wdot32(int8x16_t a1, int8x16_t b1, int8x16_t a2, int8x16_t b2)
{
	const int32x4_t s =
	    vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)), a1, b1));
	return vpadalq_s16(s, vmlal_high_s8(vmull_s8(vget_low_s8(a2), vget_low_s8(b2)), a2, b2));
}
#endif

/* The 32 levels of 16 code bytes at qs: v[0] values 0..15 (low nibbles),
 * v[1] values 16..31 (high nibbles). */
static ALWAYS_INLINE void code_levels(int8x16_t v[2], int8x16_t lut, const uint8_t *qs)
{
	const uint8x16_t q = vld1q_u8(qs);
	v[0] = vqtbl1q_s8(lut, vandq_u8(q, vdupq_n_u8(15)));
	v[1] = vqtbl1q_s8(lut, vshrq_n_u8(q, 4));
}

/* IQ4_NL (mx false) or MXFP4 (true), 2 rows x T tokens: per row and block the
 * 32 levels looked up once; per pair one wdot32 (MXFP4's levels, at most 12,
 * take sdot32).  Block value: dw * d_a * isum, dw the fp16 d or
 * moe_e8m0_half(e). */
static ALWAYS_INLINE void tile_q32(int T, bool mx, int64_t n_cols, float out[8],
                                   const uint8_t *const w[2], const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = mx ? sizeof(moe_block_mxfp4) : sizeof(moe_block_iq4_nl);
	const size_t qs_off = mx ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const int8x16_t lut = vld1q_s8(mx ? moe_mxfp4_values : moe_iq4nl_values);
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * sizeof(moe_block_q8_0);
		int8x16_t q[2][2];
		int32x4_t v[2][4];

		code_levels(q[0], lut, w[0] + wo + qs_off);
		code_levels(q[1], lut, w[1] + wo + qs_off);
		for (int t = 0; t < T; t++) {
			const int8_t *yq =
			    (const int8_t *)(a[t] + ao + offsetof(moe_block_q8_0, qs));
			const int8x16_t y0 = vld1q_s8(yq), y1 = vld1q_s8(yq + 16);
			for (int r = 0; r < 2; r++)
				v[r][t] = mx ? sdot32(q[r][0], y0, q[r][1], y1)
				             : wdot32(q[r][0], y0, q[r][1], y1);
		}
		float32x4_t d;
		if (mx) {
			const float dw[4] = {moe_e8m0_half(w[0][wo]), moe_e8m0_half(w[1][wo]), 0,
			                     0};
			d = vld1q_f32(dw);
		} else {
			const uint8_t *rp[4] = {w[0] + wo, w[1] + wo, w[1] + wo, w[1] + wo};
			d = half4_at(rp, offsetof(moe_block_iq4_nl, d));
		}
		const float32x4_t dy = half4_at(a, ao + offsetof(moe_block_q8_0, d));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] =
		    vfmaq_f32(acc[0], vcvtq_f32_s32(lanes_sum(T, v[0])), vmulq_laneq_f32(dy, d, 0));
		acc[1] =
		    vfmaq_f32(acc[1], vcvtq_f32_s32(lanes_sum(T, v[1])), vmulq_laneq_f32(dy, d, 1));
	}
	store_rows(out, acc[0], acc[1]);
}

/* The 8 sub-block scales ls - 32 (-32..31) of an IQ4_XS block, as int32 in
 * scv (moe_iq4xs_scale's values: the nibbles of scales_l under bits 2s,
 * 2s + 1 of scales_h). */
static ALWAYS_INLINE void xs_scales(int32_t scv[8], const moe_block_iq4_xs *b)
{
	const int8_t lo_shifts[8] = {0, -4, 0, -4, 0, -4, 0, -4};
	const int8_t hi_shifts[8] = {0, -2, -4, -6, 0, -2, -4, -6};
	uint32_t l;

	memcpy(&l, b->scales_l, 4);
	const uint8x8_t lb = vreinterpret_u8_u32(vdup_n_u32(l));
	const uint8x8_t lo = vand_u8(vshl_u8(vzip1_u8(lb, lb), vld1_s8(lo_shifts)), vdup_n_u8(15));
	const uint64_t h = b->scales_h;
	const uint8x8_t hb = vcreate_u8((h & 0xff) * 0x01010101u | (h >> 8) * 0x0101010100000000u);
	const uint8x8_t hi = vand_u8(vshl_u8(hb, vld1_s8(hi_shifts)), vdup_n_u8(3));
	const int16x8_t ls = vsubq_s16(
	    vreinterpretq_s16_u16(vmovl_u8(vorr_u8(lo, vshl_n_u8(hi, 4)))), vdupq_n_s16(32));
	vst1q_s32(scv, vmovl_s16(vget_low_s16(ls)));
	vst1q_s32(scv + 4, vmovl_high_s16(ls));
}

/* IQ4_XS, 2 rows x T tokens: per row and sub-block the 32 levels looked up
 * once and ls - 32 broadcast once; per pair one wdot32 and one MLA.  Block
 * value: d * d_a * isum. */
static ALWAYS_INLINE void tile_iq4_xs(int T, int64_t n_cols, float out[8],
                                      const uint8_t *const w[2], const uint8_t *const a[4])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const int8x16_t lut = vld1q_s8(moe_iq4nl_values);
	float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_iq4_xs);
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const moe_block_iq4_xs *x[2];
		const moe_block_q8_K *y[4];
		int32_t scv[2][8]; /* ls - 32 */
		int32x4_t is[2][4];

		for (int t = 0; t < 4; t++)
			y[t] = (const moe_block_q8_K *)(a[t] + ao);
		for (int r = 0; r < 2; r++) {
			x[r] = (const moe_block_iq4_xs *)(w[r] + wo);
			xs_scales(scv[r], x[r]);
			for (int t = 0; t < 4; t++)
				is[r][t] = vdupq_n_s32(0);
		}
		for (int sb = 0; sb < 8; sb++) {
			int8x16_t q[2][2];
			int32x4_t sc[2];
			for (int r = 0; r < 2; r++) {
				code_levels(q[r], lut, x[r]->qs + 16 * sb);
				sc[r] = vld1q_dup_s32(&scv[r][sb]);
			}
			for (int t = 0; t < T; t++) {
				const int8_t *y8 = y[t]->qs + 32 * sb;
				const int8x16_t y0 = vld1q_s8(y8), y1 = vld1q_s8(y8 + 16);
				for (int r = 0; r < 2; r++)
					is[r][t] = vmlaq_s32(
					    is[r][t], wdot32(q[r][0], y0, q[r][1], y1), sc[r]);
			}
		}
		const uint8_t *rp[4] = {w[0] + wo, w[1] + wo, w[1] + wo, w[1] + wo};
		const float32x4_t d = half4_at(rp, offsetof(moe_block_iq4_xs, d));
		const float32x4_t dy = f32x4_at(a, ao + offsetof(moe_block_q8_K, d));
		/* the canonical block arithmetic (quants.h), lane by lane */
		acc[0] = vfmaq_f32(acc[0], vcvtq_f32_s32(lanes_sum(T, is[0])),
		                   vmulq_laneq_f32(dy, d, 0));
		acc[1] = vfmaq_f32(acc[1], vcvtq_f32_s32(lanes_sum(T, is[1])),
		                   vmulq_laneq_f32(dy, d, 1));
	}
	store_rows(out, acc[0], acc[1]);
}

#define Q32_TILE(name, T, mx)                                                                      \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		tile_q32(T, mx, n, o, w, a);                                                       \
	}
#define XS_TILE(name, T)                                                                           \
	static void name(int64_t n, float o[8], const uint8_t *const w[2],                         \
	                 const uint8_t *const a[4])                                                \
	{                                                                                          \
		tile_iq4_xs(T, n, o, w, a);                                                        \
	}
Q32_TILE(iq4_nl_2x2, 2, false)
Q32_TILE(iq4_nl_2x3, 3, false)
Q32_TILE(iq4_nl_2x4, 4, false)
Q32_TILE(mxfp4_2x2, 2, true)
Q32_TILE(mxfp4_2x3, 3, true)
Q32_TILE(mxfp4_2x4, 4, true)
XS_TILE(iq4_xs_2x2, 2)
XS_TILE(iq4_xs_2x3, 3)
XS_TILE(iq4_xs_2x4, 4)

static const tile_set set_iq4_nl = {MOE_TYPE_IQ4_NL,
                                    {NULL, NULL, iq4_nl_2x2, iq4_nl_2x3, iq4_nl_2x4}};
static const tile_set set_mxfp4 = {MOE_TYPE_MXFP4, {NULL, NULL, mxfp4_2x2, mxfp4_2x3, mxfp4_2x4}};
static const tile_set set_iq4_xs = {MOE_TYPE_IQ4_XS,
                                    {NULL, NULL, iq4_xs_2x2, iq4_xs_2x3, iq4_xs_2x4}};
GEMM(gemm_iq4_nl, set_iq4_nl)
GEMM(gemm_mxfp4, set_mxfp4)
GEMM(gemm_iq4_xs, set_iq4_xs)

#if defined(MOE_NEON_DOTPROD)
moe_gemm_fn moe_gemm_neon_dotprod_iq4(moe_type t)
#else
moe_gemm_fn moe_gemm_neon_iq4(moe_type t)
#endif
{
	switch (t) {
	case MOE_TYPE_IQ4_NL:
		return gemm_iq4_nl;
	case MOE_TYPE_MXFP4:
		return gemm_mxfp4;
	case MOE_TYPE_IQ4_XS:
		return gemm_iq4_xs;
	default:
		return NULL;
	}
}
