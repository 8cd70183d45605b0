/*
 * isa_avx2_iq4.c - AVX2 + FMA + F16C dot products and tile kernels (gemm.h)
 * of IQ4_NL and MXFP4 (x Q8_0) and IQ4_XS (x Q8_K), built with the avx2
 * flags; the AVX-512 level uses the dots too, and the tiles for IQ4_XS's
 * 2..4 tokens left after groups of 8 (its own tiles: isa_avx512_iq4.c).
 *
 * Both follow the canonical arithmetic of quants.h bit for bit: per block the
 * exact integer sum, then (float)isum times (dw * da) fused-added into the
 * element's accumulator in block order.  The 4-bit codes become their int8
 * levels by one byte shuffle from the 16-entry table (vpshufb); products are
 * formed as |w| * sign(y, w) by vpmaddubsw (pairs of at most 2 * 127 * 127 <
 * 2^15, no saturation), widened by vpmaddwd (by ones, or by IQ4_XS's
 * sub-block scale ls - 32) to int32.  MXFP4's levels (|v| <= 12) leave its
 * pairs small enough (2 * 12 * 127) to be summed 8 to an int16 lane by the
 * reduction tree before widening, as Q4_0's are.
 *
 * Tiles: 8 (row, token) pairs, R rows x T tokens (8x1, 2x4, 1x8), as
 * isa_avx2_gemm.c's: the 8 pairs' partial-sum vectors are reduced together
 * (sum8_i32 / sum8_i16) so lane k holds pair k's exact block sum, converted
 * and fused-multiply-added by the 8 pairs' scale products; one token over
 * many rows lays the 8 lanes over 8 long row runs (run_lanes8), with tiles
 * of its own (see "one token over 8 row runs" below: two rows or two
 * sub-blocks per vector, MXFP4 without the sign trick; callgrind, 64 rows x
 * 4096, one token: IQ4_XS 115.9 -> 119.2 (more scalar, fewer vector ones:
 * llvm-mca znver3 262 -> 156 cycles per 8 row blocks), IQ4_NL 124.3 ->
 * 119.9, MXFP4 125.4 -> 108.7 instructions per 256 values; in cache,
 * moe_dotbench --matmul on one busy Zen 3 core, alternated: IQ4_XS 12.1-12.2 -> 16.2-16.8,
 * IQ4_NL 12.6-13.0 -> 13.5-14.0, MXFP4 13.1-13.3 -> 15.7-15.8 GB/s).  The
 * one-row dots form each block's sum in vector registers, reduce it exactly
 * and do the reference's fmaf per block in scalar registers.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { NP = 8 }; /* pairs per tile */
enum { KIND_NL, KIND_MX, KIND_XS };

/* The 16 levels of kind's codes in both 128-bit halves. */
static ALWAYS_INLINE __m256i levels(int kind)
{
	const int8_t *t = kind == KIND_MX ? moe_mxfp4_values : moe_iq4nl_values;
	return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
}

/* The 32 int8 levels of 16 bytes of codes (low nibbles: values 0..15, high
 * nibbles: 16..31). */
static ALWAYS_INLINE __m256i code_values(__m256i lut, const uint8_t *qs)
{
	return _mm256_shuffle_epi8(lut, unpack_nibbles(qs));
}

/* The 16 int16 pair sums of 32 levels qx with 32 activations qy. */
static ALWAYS_INLINE __m256i pairs(__m256i ax, __m256i qx, __m256i qy)
{
	return _mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx));
}

/* ---- one-row dots ---------------------------------------------------------------- */

/* IQ4_NL / MXFP4 x Q8_0: 8 blocks' sums reduced together (block k in lane
 * k), then the reference's fmaf per block in order. */
static ALWAYS_INLINE void dot_q32(int kind, int64_t n, float *s, const void *w, const void *a)
{
	const size_t bs = kind == KIND_MX ? sizeof(moe_block_mxfp4) : sizeof(moe_block_iq4_nl);
	const size_t qo =
	    kind == KIND_MX ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const uint8_t *x = w;
	const moe_block_q8_0 *y = a;
	const int64_t nb = n / MOE_QK32;
	const __m256i lut = levels(kind), ones = _mm256_set1_epi16(1);
	float sum = 0;

	for (int64_t i = 0; i < nb; i += 8) {
		const int g = nb - i < 8 ? (int)(nb - i) : 8;
		__m256i v[8];
		int32_t is[8];
		for (int k = 0; k < 8; k++) {
			const int64_t b = i + (k < g ? k : 0);
			__m256i qx = code_values(lut, x + (size_t)b * bs + qo);
			__m256i qy = _mm256_loadu_si256((const __m256i *)y[b].qs);
			__m256i p = pairs(_mm256_sign_epi8(qx, qx), qx, qy);
			v[k] = kind == KIND_MX ? p : _mm256_madd_epi16(p, ones);
		}
		_mm256_storeu_si256((__m256i *)is, kind == KIND_MX ? sum8_i16(v) : sum8_i32(v));
		for (int k = 0; k < g; k++) {
			const uint8_t *xb = x + (size_t)(i + k) * bs;
			const float dw = kind == KIND_MX ? moe_e8m0_half(xb[0])
			                                 : half_to_f32((uint16_t)ld16(xb));
			sum = fmaf((float)is[k], dw * half_to_f32(y[i + k].d), sum);
		}
	}
	*s = sum;
}

static void dot_iq4_nl(int64_t n, float *s, const void *w, const void *a)
{
	dot_q32(KIND_NL, n, s, w, a);
}

static void dot_mxfp4(int64_t n, float *s, const void *w, const void *a)
{
	dot_q32(KIND_MX, n, s, w, a);
}

/* IQ4_XS sub-block scales ls - 32 of block b, as int16 lanes 0..7 of both
 * 128-bit halves: ls[s] = bits 4s..4s+3 of the scales_l word | bits 2s, 2s+1
 * of scales_h << 4. */
static ALWAYS_INLINE __m256i xs_scales(const moe_block_iq4_xs *b)
{
	uint32_t lo;
	memcpy(&lo, b->scales_l, 4);
	const __m256i l =
	    _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)lo),
	                                       _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
	                     _mm256_set1_epi32(15));
	const __m256i h =
	    _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(b->scales_h),
	                                       _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
	                     _mm256_set1_epi32(3));
	const __m256i ls =
	    _mm256_sub_epi32(_mm256_or_si256(l, _mm256_slli_epi32(h, 4)), _mm256_set1_epi32(32));
	/* 8 int32 -> 8 int16 (exact: -32..31), in both halves */
	const __m128i p =
	    _mm_packs_epi32(_mm256_castsi256_si128(ls), _mm256_extracti128_si256(ls, 1));
	return _mm256_broadcastsi128_si256(p);
}

/* Per block of one (row, token) pair: lane sums whose total is the block's
 * exact integer sum (each sub-block's pairs widened by its scale). */
static ALWAYS_INLINE __m256i xs_block(__m256i lut, const moe_block_iq4_xs *x, const int8_t *q8)
{
	const __m256i sc = xs_scales(x);
	__m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 8
	for (int sb = 0; sb < 8; sb++) {
		__m256i qx = code_values(lut, x->qs + 16 * sb);
		__m256i qy = _mm256_loadu_si256((const __m256i *)(q8 + 32 * sb));
		__m256i p = pairs(_mm256_sign_epi8(qx, qx), qx, qy);
		acc = _mm256_add_epi32(acc,
		                       _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, pick16(sb))));
	}
	return acc;
}

static void dot_iq4_xs(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_xs *x = w;
	const moe_block_q8_K *y = a;
	const __m256i lut = levels(KIND_XS);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const int32_t isum = _mm_cvtsi128_si32(hsum_i32_v(xs_block(lut, &x[i], y[i].qs)));
		sum = fmaf((float)isum, half_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

void moe_dots_avx2_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_IQ4_NL] = dot_iq4_nl;
	dots[MOE_TYPE_MXFP4] = dot_mxfp4;
	dots[MOE_TYPE_IQ4_XS] = dot_iq4_xs;
}

/* ---- tiles ----------------------------------------------------------------------- */

/* Lane k's weight scale (row k / T at byte off of its block): fp16, or E8M0 / 2. */
static ALWAYS_INLINE __m256 lane_rows_d(int kind, int R, int T, const uint8_t *const w[NP],
                                        size_t off)
{
	const uint8_t *p[NP];
	for (int k = 0; k < NP; k++)
		p[k] = w[k / T] + off;
	if (kind == KIND_MX) {
		if (R == 1)
			return _mm256_set1_ps(moe_e8m0_half(p[0][0]));
		return e8m0_half8_ptr(p, 0);
	}
	if (R == 1)
		return _mm256_set1_ps(half_to_f32((uint16_t)ld16(p[0])));
	return half8_ptr(p, 0);
}

/* Lane k's token scale (token k % T): Q8_0's fp16 d, or Q8_K's f32 d. */
static ALWAYS_INLINE __m256 lane_toks_d(int kind, int T, const uint8_t *const a[NP], size_t off)
{
	if (kind == KIND_XS) {
		float v[NP];
		for (int k = 0; k < NP; k++)
			memcpy(&v[k], a[k % T] + off + offsetof(moe_block_q8_K, d), sizeof(float));
		if (T == 1)
			return _mm256_set1_ps(v[0]);
		return _mm256_loadu_ps(v);
	}
	if (T == 1)
		return _mm256_set1_ps(half_to_f32((uint16_t)ld16(a[0] + off)));
	const uint8_t *p[NP];
	for (int k = 0; k < NP; k++)
		p[k] = a[k % T] + off;
	return half8_ptr(p, 0);
}

/* One R x T tile of kind over n_cols columns; out[k] = pair k's result. */
static ALWAYS_INLINE void tile(int kind, int R, int T, int64_t n_cols, float out[NP],
                               const uint8_t *const w[NP], const uint8_t *const a[NP])
{
	const bool xs = kind == KIND_XS;
	const int64_t nb = n_cols / (xs ? MOE_QK_K : MOE_QK32);
	const size_t wbs = xs                ? sizeof(moe_block_iq4_xs)
	                   : kind == KIND_MX ? sizeof(moe_block_mxfp4)
	                                     : sizeof(moe_block_iq4_nl);
	const size_t abs_ = xs ? sizeof(moe_block_q8_K) : sizeof(moe_block_q8_0);
	const size_t qo =
	    kind == KIND_MX ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const size_t aqo = xs ? offsetof(moe_block_q8_K, qs) : offsetof(moe_block_q8_0, qs);
	const __m256i lut = levels(kind), ones = _mm256_set1_epi16(1);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * abs_;
		__m256i v[NP];

		if (xs) {
#pragma GCC unroll 8
			for (int r = 0; r < R; r++) {
				const moe_block_iq4_xs *b = (const moe_block_iq4_xs *)(w[r] + wo);
				const __m256i sc = xs_scales(b);
#pragma GCC unroll 8
				for (int sb = 0; sb < 8; sb++) {
					__m256i qx = code_values(lut, b->qs + 16 * sb);
					pin(&qx);
					const __m256i ax = _mm256_sign_epi8(qx, qx);
					const __m256i scv = _mm256_shuffle_epi8(sc, pick16(sb));
#pragma GCC unroll 8
					for (int t = 0; t < T; t++) {
						const __m256i qy = _mm256_loadu_si256(
						    (const __m256i *)(a[t] + ao + aqo + 32 * sb));
						const __m256i p =
						    _mm256_madd_epi16(pairs(ax, qx, qy), scv);
						v[r * T + t] =
						    sb == 0 ? p : _mm256_add_epi32(v[r * T + t], p);
					}
				}
			}
		} else {
#pragma GCC unroll 8
			for (int r = 0; r < R; r++) {
				__m256i qx = code_values(lut, w[r] + wo + qo);
				pin(&qx);
				__m256i ax = _mm256_sign_epi8(qx, qx);
#pragma GCC unroll 8
				for (int t = 0; t < T; t++) {
					__m256i qy =
					    _mm256_loadu_si256((const __m256i *)(a[t] + ao + aqo));
					__m256i p = pairs(ax, qx, qy);
					v[r * T + t] =
					    kind == KIND_NL ? _mm256_madd_epi16(p, ones) : p;
				}
			}
		}
		__m256i s = kind == KIND_MX ? sum8_i16(v) : sum8_i32(v);
		__m256 d =
		    _mm256_mul_ps(lane_rows_d(kind, R, T, w, wo), lane_toks_d(kind, T, a, ao));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

AVX2_TILE_SHAPES(nl, KIND_NL)
AVX2_TILE_SHAPES(mx, KIND_MX)
AVX2_TILE_SHAPES(xs, KIND_XS)

/* ---- one token over 8 row runs (run_lanes8) ---------------------------------------
 *
 * IQ4_NL and MXFP4: rows k and k + 4 share a vector (16 code bytes each):
 * one AND and one shift + AND give the 32 low and the 32 high nibbles of both
 * rows, met by the token's values 0..15 and 16..31 broadcast to both halves
 * (loaded once per block for the 8 rows), instead of a broadcast, a
 * variable shift and an AND per row; the four vectors of row pairs reduce
 * to lane k = row k by 3 unpacks and adds each way.  MXFP4 takes its levels
 * + 12 (0..24, unsigned: vpmaddubsw needs no sign trick, and the low and high
 * halves' pairs, 2 * 2 * 24 * 127 < 2^15, add as int16 before one widening)
 * and the block's -12 x the token's sum (mx_prep) back once per block.
 * IQ4_XS: the 32 code bytes of sub-blocks 2k, 2k + 1 as one vector (low
 * nibbles: the first 16 values of each, high: the last 16), so one scale
 * vector serves both halves' products, and the token's values rearranged
 * to match once per block for the 8 rows.  The same exact block sums,
 * conversions and FMAs per lane as the tiles: the same bits.  Tried and
 * dropped: lanes8_prefetch in these tiles (IQ4_XS streaming 8.3-8.7 against
 * 10.5-11.6 GB/s, IQ4_NL and MXFP4 unchanged; moe_dotbench --matmul,
 * alternated). */

/* Per token block of MXFP4's one-token tile: base = -12 x the sum of its 32
 * values (the levels' offset), d = its scale. */
static void prep_mx(q40_prep *p, int64_t nb, const uint8_t *a)
{
	const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_0 *ab = (const moe_block_q8_0 *)a + i;
		const __m256i y = _mm256_loadu_si256((const __m256i *)ab->qs);
		const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, y), ones16);
		p[i].base = -12 * _mm_cvtsi128_si32(hsum_i32_v(s));
		p[i].d = half_to_f32(ab->d);
	}
}

/* The 8 rows w[0..8) against the one token a[0] (prep: MXFP4's q40_prep per
 * block, unused for IQ4_NL). */
static ALWAYS_INLINE void tile_pairs(int kind, int64_t n_cols, float out[NP],
                                     const uint8_t *const w[NP], const uint8_t *const a[NP],
                                     const void *prep)
{
	const bool mx = kind == KIND_MX;
	const q40_prep *pp = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = mx ? sizeof(moe_block_mxfp4) : sizeof(moe_block_iq4_nl);
	const size_t qo = mx ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const __m256i m0f = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
	const __m256i lut = mx ? _mm256_add_epi8(levels(kind), _mm256_set1_epi8(12)) : levels(kind);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs;
		const moe_block_q8_0 *y = (const moe_block_q8_0 *)a[0] + i;
		__m256i ylo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)y->qs));
		__m256i yhi =
		    _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(y->qs + 16)));
		pin(&ylo);
		pin(&yhi);
		__m256i v[4];
#pragma GCC unroll 4
		for (int k = 0; k < 4; k++) {
			__m256i c = _mm256_inserti128_si256(
			    _mm256_castsi128_si256(
			        _mm_loadu_si128((const __m128i *)(w[k] + wo + qo))),
			    _mm_loadu_si128((const __m128i *)(w[k + 4] + wo + qo)), 1);
			const __m256i l0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(c, m0f));
			const __m256i l1 = _mm256_shuffle_epi8(
			    lut, _mm256_and_si256(_mm256_srli_epi16(c, 4), m0f));
			if (mx) /* int16 pair sums: <= 2 * 2 * 24 * 127 */
				v[k] = _mm256_add_epi16(_mm256_maddubs_epi16(l0, ylo),
				                        _mm256_maddubs_epi16(l1, yhi));
			else
				v[k] = _mm256_add_epi32(
				    _mm256_madd_epi16(pairs(_mm256_sign_epi8(l0, l0), l0, ylo),
				                      ones),
				    _mm256_madd_epi16(pairs(_mm256_sign_epi8(l1, l1), l1, yhi),
				                      ones));
		}
		/* lane k of the low half = row k, of the high half = row k + 4 (MXFP4:
		 * the first step on int16 pair sums, <= 4 * 2 * 24 * 127, then widened) */
		__m256i s01, s23;
		if (mx) {
			s01 = _mm256_madd_epi16(_mm256_add_epi16(_mm256_unpacklo_epi32(v[0], v[1]),
			                                         _mm256_unpackhi_epi32(v[0], v[1])),
			                        ones);
			s23 = _mm256_madd_epi16(_mm256_add_epi16(_mm256_unpacklo_epi32(v[2], v[3]),
			                                         _mm256_unpackhi_epi32(v[2], v[3])),
			                        ones);
		} else {
			s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]),
			                       _mm256_unpackhi_epi32(v[0], v[1]));
			s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]),
			                       _mm256_unpackhi_epi32(v[2], v[3]));
		}
		__m256i s = _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23),
		                             _mm256_unpackhi_epi64(s01, s23));
		float dy;
		if (mx) {
			s = _mm256_add_epi32(s, _mm256_set1_epi32(pp[i].base));
			dy = pp[i].d;
		} else {
			dy = half_to_f32(y->d);
		}
		const __m256 d = _mm256_mul_ps(lane_rows_d(kind, 8, 1, w, wo), _mm256_set1_ps(dy));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

static void nl_8x1_pairs(int64_t n, float o[NP], const uint8_t *const w[NP],
                         const uint8_t *const a[NP], const void *prep)
{
	tile_pairs(KIND_NL, n, o, w, a, prep);
}

static void mx_8x1_pairs(int64_t n, float o[NP], const uint8_t *const w[NP],
                         const uint8_t *const a[NP], const void *prep)
{
	tile_pairs(KIND_MX, n, o, w, a, prep);
}

/* Shuffle mask: int16 lanes of the low half = element e0 (of its 8), of the
 * high half = element e1. */
static ALWAYS_INLINE __m256i pick16_pair(int e0, int e1)
{
	return _mm256_set_m128i(_mm256_castsi256_si128(pick16(e1)),
	                        _mm256_castsi256_si128(pick16(e0)));
}

/* xs_scales worked out in a general-purpose register (8 nibbles and 8 bit
 * pairs spread to bytes by shifts and masks: integer ALUs, idle here) and
 * moved over once: 4 vector instructions instead of 11 on the vector pipes
 * this tile is short of. */
static ALWAYS_INLINE __m256i xs_scales_gpr(const moe_block_iq4_xs *b)
{
	uint32_t lo;
	memcpy(&lo, b->scales_l, 4);
	uint64_t t = lo, u = b->scales_h;
	t = (t | t << 16) & 0x0000ffff0000ffffull;
	t = (t | t << 8) & 0x00ff00ff00ff00ffull;
	t = (t | t << 4) & 0x0f0f0f0f0f0f0f0full; /* byte s = bits 4s..4s+3 of lo */
	u = (u | u << 24) & 0x000000ff000000ffull;
	u = (u | u << 12) & 0x000f000f000f000full;
	u = (u | u << 6) & 0x0303030303030303ull; /* byte s = bits 2s, 2s+1 of h */
	uint64_t ls = t | u << 4;
	__asm__("" : "+r"(ls));
	const __m128i v =
	    _mm_sub_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)ls)), _mm_set1_epi16(32));
	return _mm256_broadcastsi128_si256(v);
}

/* IQ4_XS, the 8 rows w[0..8) against the one token a[0]. */
static void xs_8x1_sb2(int64_t n_cols, float out[NP], const uint8_t *const w[NP],
                       const uint8_t *const a[NP], const void *prep)
{
	(void)prep;
	const int64_t nb = n_cols / MOE_QK_K;
	const __m256i m0f = _mm256_set1_epi8(15), lut = levels(KIND_XS);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_iq4_xs);
		const moe_block_q8_K *y = (const moe_block_q8_K *)a[0] + i;
		__m256i yv[8]; /* 2k: values 0..15 of sub-blocks 2k | 2k + 1, 2k + 1: 16..31 */
#pragma GCC unroll 4
		for (int k = 0; k < 4; k++) {
			const __m256i e = _mm256_loadu_si256((const __m256i *)(y->qs + 64 * k));
			const __m256i o =
			    _mm256_loadu_si256((const __m256i *)(y->qs + 64 * k + 32));
			yv[2 * k] = _mm256_permute2x128_si256(e, o, 0x20);
			yv[2 * k + 1] = _mm256_permute2x128_si256(e, o, 0x31);
		}
		__m256i v[NP];
#pragma GCC unroll 8
		for (int r = 0; r < NP; r++) {
			const moe_block_iq4_xs *b = (const moe_block_iq4_xs *)(w[r] + wo);
			const __m256i sc = xs_scales_gpr(b);
			__m256i s = _mm256_setzero_si256();
#pragma GCC unroll 4
			for (int k = 0; k < 4; k++) {
				__m256i c = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * k));
				pin(&c);
				const __m256i l0 =
				    _mm256_shuffle_epi8(lut, _mm256_and_si256(c, m0f));
				const __m256i l1 = _mm256_shuffle_epi8(
				    lut, _mm256_and_si256(_mm256_srli_epi16(c, 4), m0f));
				const __m256i scv =
				    _mm256_shuffle_epi8(sc, pick16_pair(2 * k, 2 * k + 1));
				const __m256i p = _mm256_add_epi32(
				    _mm256_madd_epi16(
				        pairs(_mm256_sign_epi8(l0, l0), l0, yv[2 * k]), scv),
				    _mm256_madd_epi16(
				        pairs(_mm256_sign_epi8(l1, l1), l1, yv[2 * k + 1]), scv));
				s = k == 0 ? p : _mm256_add_epi32(s, p);
				pin(&s);
			}
			v[r] = s;
		}
		const __m256 d =
		    _mm256_mul_ps(lane_rows_d(KIND_XS, 8, 1, w, wo), _mm256_set1_ps(y->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* run_lanes8 of MXFP4's one-token tile with its prep (on the stack, or the
 * heap for rows over Q40_STACK_BLOCKS blocks); without memory for it, of the
 * plain 8x1 tile (the same results). */
static void run_lanes8_mx(int64_t n_cols, float *y, const uint8_t *w, size_t w_stride, int64_t n_r,
                          const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK32;
	q40_prep stack[Q40_STACK_BLOCKS];
	q40_prep *p = nb <= Q40_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
	if (p == NULL) {
		run_lanes8(mx_8x1, n_cols, y, w, w_stride, n_r, a, NULL);
		return;
	}
	prep_mx(p, nb, a);
	/* GCC (ASan build) cannot see that prep_mx wrote what the tiles read */
	__asm__("" : : "r"(p) : "memory");
	run_lanes8(mx_8x1_pairs, n_cols, y, w, w_stride, n_r, a, p);
	if (p != stack)
		free(p);
}

static void gemm_iq4_nl(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	if (n_t == 1 && n_r >= 16) {
		run_lanes8(nl_8x1_pairs, n_cols, y, w, w_stride, n_r, x, NULL);
		return;
	}
	run_tiles_plain(nl_8x1, nl_2x4, nl_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_mxfp4(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	if (n_t == 1 && n_r >= 16) {
		run_lanes8_mx(n_cols, y, w, w_stride, n_r, x);
		return;
	}
	run_tiles_plain(mx_8x1, mx_2x4, mx_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq4_xs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	if (n_t == 1 && n_r >= 16) {
		run_lanes8(xs_8x1_sb2, n_cols, y, w, w_stride, n_r, x, NULL);
		return;
	}
	run_tiles_plain(xs_8x1, xs_2x4, xs_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

moe_gemm_fn moe_gemm_avx2_iq4(moe_type t)
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
