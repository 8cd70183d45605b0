/*
 * isa_avx512_gemm.c - tile kernels (gemm.h) at the AVX-512 level, built with
 * the AVX-512 flags (F/BW/VL/DQ + VNNI).
 *
 * The per-element arithmetic is the AVX2 tiles' (isa_avx2_gemm.c): per block
 * an exact integer sum, then one int32 -> f32 conversion and one fused
 * multiply-add into the element's accumulator, block after block.  Integer
 * sums are exact whichever instructions form them, so every result here has
 * the same bits as at the AVX2 level: an AVX2 node and an AVX-512 node of one
 * cluster compute the same logits (tested: test_matmul).
 *
 * What differs (on 256-bit vectors but for the zmm 1x8 tiles below: the
 * Zen 4 cores these were first measured on run 512-bit integer multiplies in
 * two passes, and a zmm one-row Q4_K kernel was ~15 % slower there):
 *   - one row x 1..4 tokens on Q4_K, Q5_K, Q6_K (decode, experts that met
 *     few tokens): VNNI's vpdpwssd multiplies the u8 x s8 pair sums by the
 *     sub-block scales and accumulates in one instruction (AVX2: vpmaddwd +
 *     vpaddd), in four short chains per block;
 *   - one row x 8 tokens on Q4_K, Q5_K, Q6_K (prefill, batches): the
 *     sub-blocks in lanes (tile_v1x8, tile_v6): ~1.1 multiply instructions
 *     per 32 products instead of 2; on CPUs that run 512-bit integer
 *     multiplies at full width (use_zmm: all AVX-512 CPUs but AMD family
 *     0x19, Zen 4; measured on Zen 5 only) the same tiles on zmm, two tokens
 *     per vector (tile_z1x8, tile_z6), with the same bits;
 *   - one token on Q8_0, Q5_0: the 8x1 tile with vpdpbusd (tile8_q32); on
 *     Q4_0 the 8x1 tile with the rows transposed into the lanes (q4_0_8x1_t);
 *   - IQ4_NL, MXFP4, IQ4_XS: isa_avx512_iq4.c (vpdpbusd on the levels +
 *     128; the one-token tiles on 512-bit vectors, measured on Zen 5);
 *   - everything else (5..7 tokens pad an 8-group; several tokens on the
 *     32-value types) calls the AVX2 tiles.
 */
#include <cpuid.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { MAX_T = 4 };
enum { KQ_Q4_K, KQ_Q5_K, KQ_Q6_K };

/* One Q4_K (hbits false) or Q5_K (true) row against T tokens a[0..T):
 * y[t * ldy] for t < T.  The integers and the float operations of
 * tile_k45's scalar-lane shapes (isa_avx2_gemm.c). */
static ALWAYS_INLINE void row_k45(int T, bool hbits, int64_t n_cols, float *y, int64_t ldy,
                                  const uint8_t *w, const uint8_t *const a[MAX_T])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	const size_t qs_off = hbits ? offsetof(moe_block_q5_K, qs) : offsetof(moe_block_q4_K, qs);
	/* per token: lane 0 the block terms' accumulator, lane 1 the mins' */
	__m128 acc[MAX_T];
	for (int t = 0; t < MAX_T; t++)
		acc[t] = _mm_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const uint8_t *b = w + (size_t)i * wbs;
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const __m256i sm = k4_scales_mins(b + offsetof(moe_block_q4_K, scales));
		__m256i qh = _mm256_setzero_si256();
		__m256i is[MAX_T][4];

		if (hbits)
			qh =
			    _mm256_loadu_si256((const __m256i *)(b + offsetof(moe_block_q5_K, qh)));
#pragma GCC unroll 4
		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(b + qs_off + 32 * c));
			pin(&q);
			__m256i lo, hi;
			k45_unpack(&lo, &hi, q, qh, c, hbits);
			const __m256i s0 = _mm256_shuffle_epi8(sm, pick_scale(2 * c));
			const __m256i s1 = _mm256_shuffle_epi8(sm, pick_scale(2 * c + 1));
#pragma GCC unroll 4
			for (int t = 0; t < T; t++) {
				const int8_t *yq =
				    (const int8_t *)(a[t] + ao + offsetof(moe_block_q8_K, qs));
				__m256i y0 = _mm256_loadu_si256((const __m256i *)(yq + 64 * c));
				__m256i y1 =
				    _mm256_loadu_si256((const __m256i *)(yq + 64 * c + 32));
				__m256i p0 = _mm256_maddubs_epi16(lo, y0);
				__m256i p1 = _mm256_maddubs_epi16(hi, y1);
				/* four chains of two (chunk parity x lo/hi) instead of
				 * one of eight: vpdpwssd's latency, not its rate, had
				 * bounded the loop */
				if (c < 2) {
					is[t][2 * c] = _mm256_madd_epi16(p0, s0);
					is[t][2 * c + 1] = _mm256_madd_epi16(p1, s1);
				} else {
					is[t][2 * (c - 2)] =
					    _mm256_dpwssd_epi32(is[t][2 * (c - 2)], p0, s0);
					is[t][2 * (c - 2) + 1] =
					    _mm256_dpwssd_epi32(is[t][2 * (c - 2) + 1], p1, s1);
				}
			}
		}
#pragma GCC unroll 4
		for (int t = 0; t < T; t++) {
			const __m256i isum = _mm256_add_epi32(_mm256_add_epi32(is[t][0], is[t][1]),
			                                      _mm256_add_epi32(is[t][2], is[t][3]));
			acc[t] =
			    k45_row_block(acc[t], isum, sm, b, (const moe_block_q8_K *)(a[t] + ao));
		}
	}
	for (int t = 0; t < T; t++)
		y[t * ldy] = k45_row_result(acc[t]);
}

/* One Q6_K row against T tokens: tile_q6_K's scalar-lane integers and float
 * operations (6-bit quants 0..63 by maddubs, times the int8 sub-block scales,
 * minus 32 * sum(scale * bsum) for the -32 offset). */
static ALWAYS_INLINE void row_q6_K(int T, int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                                   const uint8_t *const a[MAX_T])
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m128 acc[MAX_T]; /* lane 0 */
	for (int t = 0; t < MAX_T; t++)
		acc[t] = _mm_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q6_K *x = (const moe_block_q6_K *)(w + (size_t)i * sizeof(*x));
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		const __m256i sc16 =
		    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
		const __m256i scm =
		    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
		__m256i is[MAX_T][4]; /* four chains of two, as in row_k45 */

#pragma GCC unroll 4
		for (int t = 0; t < T; t++) {
			const moe_block_q8_K *yb = (const moe_block_q8_K *)(a[t] + ao);
			is[t][0] =
			    _mm256_madd_epi16(scm, _mm256_loadu_si256((const __m256i *)yb->bsums));
		}
#pragma GCC unroll 2
		for (int h = 0; h < 2; h++) {
			/* two calls: clang wants the selector a constant expression */
			const __m256i sc = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
			                          : _mm256_permute2x128_si256(sc16, sc16, 0x11);
			__m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
			__m256i l0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
			__m256i l1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
			pin(&qh);
			pin(&l0);
			pin(&l1);
			__m256i q[4];
			q6_assemble(q, l0, l1, qh);
#pragma GCC unroll 4
			for (int j = 0; j < 4; j++) {
				/* low 128-bit half: scale 2j, high half: scale 2j + 1 */
				const __m256i scj = _mm256_shuffle_epi8(
				    sc, _mm256_set_m128i(_mm256_castsi256_si128(pick16(2 * j + 1)),
				                         _mm256_castsi256_si128(pick16(2 * j))));
#pragma GCC unroll 4
				for (int t = 0; t < T; t++) {
					const int8_t *yq =
					    ((const moe_block_q8_K *)(a[t] + ao))->qs + 128 * h +
					    32 * j;
					__m256i yy = _mm256_loadu_si256((const __m256i *)yq);
					const __m256i p = _mm256_maddubs_epi16(q[j], yy);
					is[t][j] = h == 0 && j > 0
					               ? _mm256_madd_epi16(p, scj)
					               : _mm256_dpwssd_epi32(is[t][j], p, scj);
				}
			}
		}
		const float d = half_to_f32(x->d);
#pragma GCC unroll 4
		for (int t = 0; t < T; t++) {
			const float dy = ((const moe_block_q8_K *)(a[t] + ao))->d;
			/* a tile lane's conversion and fused multiply-add */
			const __m256i isum = _mm256_add_epi32(_mm256_add_epi32(is[t][0], is[t][1]),
			                                      _mm256_add_epi32(is[t][2], is[t][3]));
			acc[t] = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum_i32_v(isum)), _mm_set_ss(d * dy),
			                      acc[t]);
		}
	}
	for (int t = 0; t < T; t++)
		y[t * ldy] = _mm_cvtss_f32(acc[t]);
}

/* ---- Q4_K / Q5_K x Q8_K, one row x 8 tokens: sub-blocks in lanes ---------------- */

/* What the tile needs of a group of 8 tokens per block, made once per group:
 * each token's quants transposed like the weights (so one vpdpbusd meets 4
 * values of every sub-block at once), the tokens' d, and the bsums that meet
 * the mins, as in isa_avx2_gemm.c's k8_prep. */
typedef struct vk8_block {
	/* [token][column k] (Q6_K: [4 * half + column]); for the 512-bit tiles
	 * the same bytes as [token / 2][column][token % 2] (yt_at) */
	uint8_t yt[8][8][32];
	float dy[8];
	int16_t bs[4][16];    /* Q4_K/Q5_K: bs[k] = BS[2k][t], BS[2k+1][t], t = 0..7 */
	int16_t bsums[8][16]; /* Q6_K: each token's bsums */
} vk8_block;

enum { VK8_STACK_BLOCKS = 16 };

/* Where column k of token t lies in p->yt: token-major (ymm tiles) or, for
 * the zmm tiles, tokens 2m and 2m + 1 of one column side by side, so that
 * one 64-byte load gives both. */
static ALWAYS_INLINE uint8_t *yt_at(vk8_block *p, bool pair, int t, int k)
{
	return pair ? &p->yt[0][0][0] + ((size_t)((t / 2) * 8 + k) * 2 + (size_t)(t % 2)) * 32
	            : p->yt[t][k];
}

/* Tokens 2m and 2m + 1 of column k of a pair-laid-out p. */
static ALWAYS_INLINE __m512i yt_pair(const vk8_block *p, int m, int k)
{
	return _mm512_loadu_si512((const void *)(&p->yt[0][0][0] + (size_t)(m * 8 + k) * 64));
}

static void prep_vk8(vk8_block *p, int64_t nb, const uint8_t *const a[8], bool pair)
{
	for (int64_t i = 0; i < nb; i++) {
		for (int t = 0; t < 8; t++) {
			const moe_block_q8_K *y =
			    (const moe_block_q8_K *)(a[t] + (size_t)i * sizeof(moe_block_q8_K));
			__m256i r[8];
			for (int s = 0; s < 8; s++)
				r[s] = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * s));
			transpose8(r);
			for (int k = 0; k < 8; k++)
				_mm256_storeu_si256((__m256i *)yt_at(&p[i], pair, t, k), r[k]);
			p[i].dy[t] = y->d;
			for (int s = 0; s < 8; s++)
				p[i].bs[s / 2][2 * t + s % 2] =
				    (int16_t)(y->bsums[2 * s] + y->bsums[2 * s + 1]);
		}
	}
}

/* The Q4_K (hbits false) or Q5_K block at b's quants (0..15 or 0..31) as 8
 * columns: wc[k] lane s = dword k of sub-block s. */
static ALWAYS_INLINE void k45_columns(bool hbits, const uint8_t *b, __m256i wc[8])
{
	const size_t qs_off = hbits ? offsetof(moe_block_q5_K, qs) : offsetof(moe_block_q4_K, qs);
	__m256i qh = _mm256_setzero_si256();

	if (hbits)
		qh = _mm256_loadu_si256((const __m256i *)(b + offsetof(moe_block_q5_K, qh)));
	for (int c = 0; c < 4; c++) {
		__m256i q = _mm256_loadu_si256((const __m256i *)(b + qs_off + 32 * c));
		__m256i lo, hi;
		k45_unpack(&lo, &hi, q, qh, c, hbits);
		wc[2 * c] = lo;
		wc[2 * c + 1] = hi;
	}
	transpose8(wc);
}

/* sum8_i32 of 8 token vectors held in pairs, v[m] = token 2m's lanes in the
 * low 256 bits, token 2m + 1's in the high: lane t = the exact sum of token
 * t's 8 lanes (int32 sums are exact in any order). */
static ALWAYS_INLINE __m256i sum8z_i32(const __m512i v[4])
{
	/* per 128-bit chunk: v[0] (v[2]) in dwords 0 and 2, v[1] (v[3]) in 1, 3 */
	const __m512i t0 =
	    _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
	const __m512i t1 =
	    _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
	/* chunk c dword j: half of token (c / 2) + 2j's sum, the other half in
	 * chunk c ^ 1 */
	const __m512i u =
	    _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
	const __m512i s = _mm512_add_epi32(u, _mm512_shuffle_i64x2(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
	/* chunk 0: tokens 0 2 4 6, chunk 2: tokens 1 3 5 7 */
	const __m512i idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
	return _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, s));
}

/* One Q4_K (hbits false) or Q5_K row against the 8 tokens of p: out[t].
 * Per block the weights' 8 sub-blocks are transposed into columns, and per
 * token 8 vpdpbusd (u8 quants x s8 activations, 4 products per lane, exact)
 * leave lane s = the integer dot of sub-block s; one vpmulld by the 8 scales
 * and the 8-token tree give lane t = the block's exact integer sum, the same
 * integer as the AVX2 tiles' maddubs/madd (which spend two multiplies per 32
 * products where this spends one and a ninth).  The float operations are
 * the AVX2 1x8 tile's, lane for lane. */
static ALWAYS_INLINE void tile_v1x8(bool hbits, int64_t n_cols, float out[8], const uint8_t *w,
                                    const vk8_block *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const uint8_t *b = w + (size_t)i * wbs;
		const vk8_block *pp = &p[i];
		const __m256i sm = k4_scales_mins(b + offsetof(moe_block_q4_K, scales));
		const __m256i scv = _mm256_cvtepu8_epi32(_mm256_castsi256_si128(sm));
		__m256i wc[8], iv[8];

		k45_columns(hbits, b, wc);
#pragma GCC unroll 8
		for (int t = 0; t < 8; t++) {
			/* two chains of four per token */
			__m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
			for (int k = 0; k < 4; k++) {
				s0 = _mm256_dpbusd_epi32(
				    s0, wc[k], _mm256_loadu_si256((const __m256i *)pp->yt[t][k]));
				s1 = _mm256_dpbusd_epi32(
				    s1, wc[4 + k],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 + k]));
			}
			iv[t] = _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), scv);
		}
		const __m256 vi = _mm256_cvtepi32_ps(sum8_i32(iv));
		const __m256i m = k8_mins(sm, pp->bs);
		const __m256 vm = _mm256_cvtepi32_ps(m);
		const __m256 dy = _mm256_loadu_ps(pp->dy);
		const __m256 d =
		    _mm256_set1_ps(half_to_f32((uint16_t)ld16(b + offsetof(moe_block_q4_K, d))));
		const __m256 dmin =
		    _mm256_set1_ps(half_to_f32((uint16_t)ld16(b + offsetof(moe_block_q4_K, dmin))));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, dy), acc);
		accm = _mm256_fmadd_ps(vm, _mm256_mul_ps(dmin, dy), accm);
	}
	_mm256_storeu_ps(out, _mm256_sub_ps(acc, accm));
}

/* tile_v1x8 on 512-bit vectors, for a pair-laid-out p (yt_pair): the
 * weight columns broadcast to both halves, two tokens per vpdpbusd and
 * vpmulld, half the instructions of the token loop.  The same exact
 * integers (sum8z_i32), then tile_v1x8's float operations, so the same
 * bits.  For CPUs that run 512-bit integer multiplies at full width
 * (use_zmm). */
static ALWAYS_INLINE void tile_z1x8(bool hbits, int64_t n_cols, float out[8], const uint8_t *w,
                                    const vk8_block *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const uint8_t *b = w + (size_t)i * wbs;
		const vk8_block *pp = &p[i];
		const __m256i sm = k4_scales_mins(b + offsetof(moe_block_q4_K, scales));
		const __m512i scv =
		    _mm512_broadcast_i64x4(_mm256_cvtepu8_epi32(_mm256_castsi256_si128(sm)));
		__m256i wc[8];
		__m512i wz[8], iv[4];

		k45_columns(hbits, b, wc);
		for (int k = 0; k < 8; k++)
			wz[k] = _mm512_broadcast_i64x4(wc[k]);
#pragma GCC unroll 4
		for (int m = 0; m < 4; m++) {
			/* two chains of four per token pair */
			__m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
			for (int k = 0; k < 4; k++) {
				s0 = _mm512_dpbusd_epi32(s0, wz[k], yt_pair(pp, m, k));
				s1 = _mm512_dpbusd_epi32(s1, wz[4 + k], yt_pair(pp, m, 4 + k));
			}
			iv[m] = _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), scv);
		}
		const __m256 vi = _mm256_cvtepi32_ps(sum8z_i32(iv));
		const __m256i m = k8_mins(sm, pp->bs);
		const __m256 vm = _mm256_cvtepi32_ps(m);
		const __m256 dy = _mm256_loadu_ps(pp->dy);
		const __m256 d =
		    _mm256_set1_ps(half_to_f32((uint16_t)ld16(b + offsetof(moe_block_q4_K, d))));
		const __m256 dmin =
		    _mm256_set1_ps(half_to_f32((uint16_t)ld16(b + offsetof(moe_block_q4_K, dmin))));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, dy), acc);
		accm = _mm256_fmadd_ps(vm, _mm256_mul_ps(dmin, dy), accm);
	}
	_mm256_storeu_ps(out, _mm256_sub_ps(acc, accm));
}

/* ---- Q6_K x Q8_K, one row x 8 tokens: sub-blocks in lanes ------------------------- */

static void prep_v6(vk8_block *p, int64_t nb, const uint8_t *const a[8], bool pair)
{
	for (int64_t i = 0; i < nb; i++) {
		for (int t = 0; t < 8; t++) {
			const moe_block_q8_K *y =
			    (const moe_block_q8_K *)(a[t] + (size_t)i * sizeof(moe_block_q8_K));
			for (int h = 0; h < 2; h++) {
				__m256i r[4];
				for (int j = 0; j < 4; j++)
					r[j] = _mm256_loadu_si256(
					    (const __m256i *)(y->qs + 128 * h + 32 * j));
				transpose4x2(r);
				for (int k = 0; k < 4; k++)
					_mm256_storeu_si256(
					    (__m256i *)yt_at(&p[i], pair, t, 4 * h + k), r[k]);
			}
			p[i].dy[t] = y->d;
			memcpy(p[i].bsums[t], y->bsums, sizeof(p[i].bsums[t]));
		}
	}
}

/* One Q6_K row against the 8 tokens of p: out[t].  Per half-block the 6-bit
 * quants (0..63) are transposed into columns; per token 4 vpdpbusd leave
 * lane l = the dot of one sub-block, one vpmulld per half applies the int8
 * scales (in the lanes' order), and -32 * sum(scale * bsum) accounts for
 * the offset: the AVX2 Q6_K tile's integer, and its float operations. */
static ALWAYS_INLINE void tile_v6(int64_t n_cols, float out[8], const uint8_t *w,
                                  const vk8_block *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	/* scale bytes in lane order: sub-blocks 0 2 4 6 1 3 5 7 of each half */
	const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q6_K *x = (const moe_block_q6_K *)(w + (size_t)i * sizeof(*x));
		const vk8_block *pp = &p[i];
		const __m128i sc8 = _mm_loadu_si128((const __m128i *)x->scales);
		const __m128i so = _mm_shuffle_epi8(sc8, order);
		const __m256i scv[2] = {_mm256_cvtepi8_epi32(so),
		                        _mm256_cvtepi8_epi32(_mm_srli_si128(so, 8))};
		const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
		const __m256i scm =
		    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
		__m256i wq[2][4], iv[8];

		for (int h = 0; h < 2; h++) {
			const __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
			const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
			const __m256i l1 =
			    _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
			q6_assemble(wq[h], l0, l1, qh);
			transpose4x2(wq[h]);
		}
#pragma GCC unroll 8
		for (int t = 0; t < 8; t++) {
			__m256i s[2];
#pragma GCC unroll 2
			for (int h = 0; h < 2; h++) {
				__m256i d0 = _mm256_dpbusd_epi32(
				    _mm256_setzero_si256(), wq[h][0],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 * h]));
				__m256i d1 = _mm256_dpbusd_epi32(
				    _mm256_setzero_si256(), wq[h][1],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 * h + 1]));
				d0 = _mm256_dpbusd_epi32(
				    d0, wq[h][2],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 * h + 2]));
				d1 = _mm256_dpbusd_epi32(
				    d1, wq[h][3],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 * h + 3]));
				s[h] = _mm256_mullo_epi32(_mm256_add_epi32(d0, d1), scv[h]);
			}
			const __m256i off = _mm256_madd_epi16(
			    scm, _mm256_loadu_si256((const __m256i *)pp->bsums[t]));
			iv[t] = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), off);
		}
		const __m256 vi = _mm256_cvtepi32_ps(sum8_i32(iv));
		const __m256 d = _mm256_set1_ps(half_to_f32(x->d));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, _mm256_loadu_ps(pp->dy)), acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* tile_v6 on 512-bit vectors, as tile_z1x8 is tile_v1x8: two tokens per
 * vpdpbusd, vpmulld and vpmaddwd (the bsums of tokens 2m and 2m + 1 are
 * adjacent in p), the same exact integers and float operations. */
static ALWAYS_INLINE void tile_z6(int64_t n_cols, float out[8], const uint8_t *w,
                                  const vk8_block *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q6_K *x = (const moe_block_q6_K *)(w + (size_t)i * sizeof(*x));
		const vk8_block *pp = &p[i];
		const __m128i sc8 = _mm_loadu_si128((const __m128i *)x->scales);
		const __m128i so = _mm_shuffle_epi8(sc8, order);
		const __m512i scv[2] = {
		    _mm512_broadcast_i64x4(_mm256_cvtepi8_epi32(so)),
		    _mm512_broadcast_i64x4(_mm256_cvtepi8_epi32(_mm_srli_si128(so, 8)))};
		const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
		const __m512i scm = _mm512_broadcast_i64x4(
		    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5)));
		__m256i wq[2][4];
		__m512i wz[2][4], iv[4];

		for (int h = 0; h < 2; h++) {
			const __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
			const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
			const __m256i l1 =
			    _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
			q6_assemble(wq[h], l0, l1, qh);
			transpose4x2(wq[h]);
			for (int j = 0; j < 4; j++)
				wz[h][j] = _mm512_broadcast_i64x4(wq[h][j]);
		}
#pragma GCC unroll 4
		for (int m = 0; m < 4; m++) {
			__m512i s[2];
#pragma GCC unroll 2
			for (int h = 0; h < 2; h++) {
				__m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz[h][0],
				                                 yt_pair(pp, m, 4 * h));
				__m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz[h][1],
				                                 yt_pair(pp, m, 4 * h + 1));
				d0 = _mm512_dpbusd_epi32(d0, wz[h][2], yt_pair(pp, m, 4 * h + 2));
				d1 = _mm512_dpbusd_epi32(d1, wz[h][3], yt_pair(pp, m, 4 * h + 3));
				s[h] = _mm512_mullo_epi32(_mm512_add_epi32(d0, d1), scv[h]);
			}
			const __m512i off = _mm512_madd_epi16(
			    scm, _mm512_loadu_si512((const void *)pp->bsums[2 * m]));
			iv[m] = _mm512_add_epi32(_mm512_add_epi32(s[0], s[1]), off);
		}
		const __m256 vi = _mm256_cvtepi32_ps(sum8z_i32(iv));
		const __m256 d = _mm256_set1_ps(half_to_f32(x->d));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, _mm256_loadu_ps(pp->dy)), acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* ---- 32-value blocks x Q8_0, one token ------------------------------------------- */

enum { KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 };

/* The AVX2 8x1 tile (isa_avx2_gemm.c tile_q32) for one token, lane r = row
 * w[r], with VNNI: Q8_0 by vpdpbusd on |q| and sign(y, q); Q4_0 and Q5_0 by
 * vpdpbusd on their unsigned codes u (q = u - 8 or u - 16), the accumulator
 * starting at -8 or -16 times the lanes' sums of y.  The same exact block
 * sums, conversion and FMA per lane, so the same bits. */
static ALWAYS_INLINE void tile8_q32(int kind, int64_t n_cols, float out[8],
                                    const uint8_t *const w[8], const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = kind == KIND_Q8_0   ? sizeof(moe_block_q8_0)
	                   : kind == KIND_Q4_0 ? sizeof(moe_block_q4_0)
	                                       : sizeof(moe_block_q5_0);
	const __m256i ones = _mm256_set1_epi8(1), b16 = _mm256_set1_epi8(16);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_0 *ab = (const moe_block_q8_0 *)a + i;
		const size_t wo = (size_t)i * wbs;
		lanes8_prefetch(w, wo);
		const __m256i qy = _mm256_loadu_si256((const __m256i *)ab->qs);
		__m256i base = _mm256_setzero_si256(), v[8];
		if (kind != KIND_Q8_0)
			base = _mm256_sub_epi32(
			    base,
			    _mm256_slli_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, qy),
			                      kind == KIND_Q4_0 ? 3 : 4));
#pragma GCC unroll 8
		for (int r = 0; r < 8; r++) {
			const uint8_t *b = w[r] + wo;
			if (kind == KIND_Q8_0) {
				const __m256i q = _mm256_loadu_si256(
				    (const __m256i *)(b + offsetof(moe_block_q8_0, qs)));
				v[r] = _mm256_dpbusd_epi32(base, _mm256_sign_epi8(q, q),
				                           _mm256_sign_epi8(qy, q));
			} else if (kind == KIND_Q4_0) {
				v[r] = _mm256_dpbusd_epi32(
				    base, unpack_nibbles(b + offsetof(moe_block_q4_0, qs)), qy);
			} else {
				const __m256i u = _mm256_or_si256(
				    unpack_nibbles(b + offsetof(moe_block_q5_0, qs)),
				    _mm256_and_si256(spread_bits(b + offsetof(moe_block_q5_0, qh)),
				                     b16));
				v[r] = _mm256_dpbusd_epi32(base, u, qy);
			}
		}
		const __m256 d =
		    _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(half_to_f32(ab->d)));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* tile8_q32 as run_lanes8's tiles (one token: a[0]) */
static void q8_0_8x1(int64_t n_cols, float out[8], const uint8_t *const w[8],
                     const uint8_t *const a[8], const void *prep)
{
	(void)prep;
	tile8_q32(KIND_Q8_0, n_cols, out, w, a[0]);
}

static void q4_0_8x1(int64_t n_cols, float out[8], const uint8_t *const w[8],
                     const uint8_t *const a[8], const void *prep)
{
	(void)prep;
	tile8_q32(KIND_Q4_0, n_cols, out, w, a[0]);
}

static void q5_0_8x1(int64_t n_cols, float out[8], const uint8_t *const w[8],
                     const uint8_t *const a[8], const void *prep)
{
	(void)prep;
	tile8_q32(KIND_Q5_0, n_cols, out, w, a[0]);
}

/* Q4_0, one token, the rows transposed into the lanes (isa_avx2.h
 * q40_rows): vpdpbusd of each dword vector's low nibbles and of its high
 * nibbles in place (16 x the code, the sums shifted down by 4, exact) with
 * the token's 4 matching values.  tile8_q32 spends a third of its
 * instructions reducing 8 vectors per block; the same exact integers,
 * conversion and FMA per lane, so the same bits: 32.4 against 25.4 GB/s in
 * cache, 24.0 against 22.5 streaming 1024-row claims (one Zen 4 core,
 * alternating runs). */
static void q4_0_8x1_t(int64_t n_cols, float out[8], const uint8_t *const w[8],
                       const uint8_t *const a[8], const void *prep)
{
	const q40_prep *p = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const __m256i m0f = _mm256_set1_epi8(0x0f), mf0 = _mm256_set1_epi8((char)0xf0);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q4_0);
		const size_t qo = wo + offsetof(moe_block_q4_0, qs);
		const int8_t *y = ((const moe_block_q8_0 *)a[0] + i)->qs;
		lanes8_prefetch(w, wo);
		__m256i v[4];
		q40_rows(v, w, qo);
		__m256i lo = _mm256_set1_epi32(p[i].base), hi = _mm256_setzero_si256();
#pragma GCC unroll 4
		for (int m = 0; m < 4; m++) {
			lo =
			    _mm256_dpbusd_epi32(lo, _mm256_and_si256(v[m], m0f), bcast4(y + 4 * m));
			hi = _mm256_dpbusd_epi32(hi, _mm256_and_si256(v[m], mf0),
			                         bcast4(y + 16 + 4 * m));
		}
		const __m256i is = _mm256_add_epi32(lo, _mm256_srai_epi32(hi, 4));
		const __m256 d = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(p[i].d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* The AVX2 tiles for every token but a last lone one after the groups of 8,
 * which takes one8 over runs of the rows (run_lanes8), on Q4_0 q4_0_8x1_t
 * (one8 without memory for its prep). */
static void gemm_q32(moe_type t, moe_tile_fn one8, int64_t n_cols, float *y, int64_t ldy,
                     const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                     size_t x_stride, int64_t n_t)
{
	const int64_t full = n_t / 8 * 8;
	if (n_t - full != 1) {
		moe_gemm_avx2(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
		return;
	}
	if (full > 0)
		moe_gemm_avx2(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full);
	const uint8_t *a = x + (size_t)full * x_stride;
	if (t == MOE_TYPE_Q4_0)
		run_lanes8_q40(q4_0_8x1_t, one8, n_cols, y + full * ldy, w, w_stride, n_r, a);
	else
		run_lanes8(one8, n_cols, y + full * ldy, w, w_stride, n_r, a, NULL);
}

static void gemm_q8_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_q32(MOE_TYPE_Q8_0, q8_0_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_q4_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_q32(MOE_TYPE_Q4_0, q4_0_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_q5_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_q32(MOE_TYPE_Q5_0, q5_0_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

/* Whether the several-token K-quant tiles run on 512-bit vectors (tile_z1x8,
 * tile_z6) rather than 256-bit ones (tile_v1x8, tile_v6): the same bits
 * either way, so only speed decides.  MOEMESH_AVX512_ZMM=0 or 1 chooses
 * (to measure both on one machine); otherwise AMD family 0x19 (Zen 4,
 * which runs 512-bit integer multiplies in two passes; the 256-bit tiles
 * were measured best there) takes 256 bits and every other AVX-512 CPU 512
 * (measured on Zen 5, family 0x1a, only).  Decided once per process. */
static bool pick_zmm(void)
{
	const char *env = getenv("MOEMESH_AVX512_ZMM");
	if (env != NULL && (strcmp(env, "0") == 0 || strcmp(env, "1") == 0))
		return env[0] == '1';
	unsigned a, b, c, d;
	if (!__get_cpuid(0, &a, &b, &c, &d))
		return true;
	const bool amd =
	    b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u; /* AuthenticAMD */
	if (!__get_cpuid(1, &a, &b, &c, &d))
		return true;
	const unsigned base = (a >> 8) & 0xf;
	const unsigned family = base == 0xf ? base + ((a >> 20) & 0xff) : base;
	return !(amd && family == 0x19);
}

static bool use_zmm(void)
{
	static _Atomic int state; /* 0 undecided, 1 ymm, 2 zmm */
	int s = atomic_load_explicit(&state, memory_order_relaxed);
	if (s == 0) {
		s = pick_zmm() ? 2 : 1;
		atomic_store_explicit(&state, s, memory_order_relaxed);
	}
	return s == 2;
}

/* Rows [0, n_r) against tokens [0, n_t) in groups of 8 (a last group of
 * fewer repeats its last token and drops it), by the sub-blocks-in-lanes
 * tiles of kind.  false without memory for the gathered activations
 * (nothing written then). */
static bool run_v(int kind, int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                  size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const bool zmm = use_zmm();
	vk8_block stack[VK8_STACK_BLOCKS];
	vk8_block *p = nb <= VK8_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
	if (p == NULL)
		return false;
	for (int64_t t0 = 0; t0 < n_t; t0 += 8) {
		const uint8_t *a[8];
		float out[8];
		for (int t = 0; t < 8; t++)
			a[t] = x + (size_t)(t0 + t < n_t ? t0 + t : n_t - 1) * x_stride;
		if (kind == KQ_Q6_K)
			prep_v6(p, nb, a, zmm);
		else
			prep_vk8(p, nb, a, zmm);
		for (int64_t r = 0; r < n_r; r++) {
			const uint8_t *wr = w + (size_t)r * w_stride;
			if (kind == KQ_Q6_K)
				zmm ? tile_z6(n_cols, out, wr, p) : tile_v6(n_cols, out, wr, p);
			else if (kind == KQ_Q5_K)
				zmm ? tile_z1x8(true, n_cols, out, wr, p)
				    : tile_v1x8(true, n_cols, out, wr, p);
			else
				zmm ? tile_z1x8(false, n_cols, out, wr, p)
				    : tile_v1x8(false, n_cols, out, wr, p);
			for (int t = 0; t < 8 && t0 + t < n_t; t++)
				y[(t0 + t) * ldy + r] = out[t];
		}
	}
	if (p != stack)
		free(p);
	return true;
}

static ALWAYS_INLINE void rows_t(int kind, int T, int64_t n_cols, float *y, int64_t ldy,
                                 const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                                 size_t x_stride)
{
	const uint8_t *a[MAX_T];
	for (int t = 0; t < MAX_T; t++)
		a[t] = x + (size_t)(t < T ? t : 0) * x_stride;
	for (int64_t r = 0; r < n_r; r++) {
		const uint8_t *wr = w + (size_t)r * w_stride;
		if (kind == KQ_Q6_K)
			row_q6_K(T, n_cols, y + r, ldy, wr, a);
		else if (kind == KQ_Q5_K)
			row_k45(T, true, n_cols, y + r, ldy, wr, a);
		else
			row_k45(T, false, n_cols, y + r, ldy, wr, a);
	}
}

/* Rows [0, n_r) against 1..4 tokens, one row at a time. */
static void rows_few(int kind, int T, int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                     size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride)
{
	switch (T) {
	case 1:
		rows_t(kind, 1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride);
		break;
	case 2:
		rows_t(kind, 2, n_cols, y, ldy, w, w_stride, n_r, x, x_stride);
		break;
	case 3:
		rows_t(kind, 3, n_cols, y, ldy, w, w_stride, n_r, x, x_stride);
		break;
	case 4:
		rows_t(kind, 4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride);
		break;
	default:
		break;
	}
}

/* The AVX2 tiles' split (isa_avx2_gemm.c run_tiles): groups of 8 tokens by
 * the AVX2 1x8 tiles, a remainder of 1..4 tokens by the rows above, of 5..7
 * by the AVX2 tiles too.  Each element has the same bits whichever part
 * computes it. */
static void gemm_k(moe_type t, int kind, int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                   size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const int64_t full = n_t / 8 * 8, rem = n_t - full;
	const int64_t grouped = rem > 4 ? n_t : full; /* 5..7 left: one padded group */

	const bool done =
	    grouped == 0 || run_v(kind, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, grouped);
	if (!done) /* no memory for the gathered activations */
		moe_gemm_avx2(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, grouped);
	if (grouped < n_t)
		rows_few(kind, (int)(n_t - grouped), n_cols, y + grouped * ldy, ldy, w, w_stride,
		         n_r, x + (size_t)grouped * x_stride, x_stride);
}

static void gemm_q4_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_k(MOE_TYPE_Q4_K, KQ_Q4_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_q5_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_k(MOE_TYPE_Q5_K, KQ_Q5_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_q6_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_k(MOE_TYPE_Q6_K, KQ_Q6_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

moe_gemm_fn moe_gemm_avx512(moe_type t)
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
		return moe_gemm_q2_K_avx2;
	case MOE_TYPE_Q3_K:
		return moe_gemm_q3_K_avx2;
	case MOE_TYPE_IQ3_XXS:
	case MOE_TYPE_IQ3_S:
	case MOE_TYPE_IQ1_S:
	case MOE_TYPE_IQ1_M:
		return moe_gemm_avx512_iq13(t); /* isa_avx512_iq13.c */
	case MOE_TYPE_IQ2_XXS:
	case MOE_TYPE_IQ2_XS:
	case MOE_TYPE_IQ2_S:
		return moe_gemm_avx512_iq2(t); /* isa_avx512_iq2.c */
	default:
		return moe_gemm_avx512_iq4(t); /* isa_avx512_iq4.c */
	}
}
