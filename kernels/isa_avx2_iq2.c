/*
 * isa_avx2_iq2.c - AVX2 + FMA + F16C dot products and tile kernels (gemm.h)
 * of IQ2_XXS, IQ2_XS and IQ2_S (x Q8_K), built with the avx2 flags; the
 * AVX-512 level uses them too (it has no kernels of its own for these types).
 *
 * Both follow the canonical arithmetic of quants.h bit for bit.  Per 32-value
 * sub-block the 4 groups' grid entries (moe_iq2*_grid64, 8 unsigned bytes
 * each, <= 43) and sign masks (moe_iq2_signs64: +1 / -1 bytes) are gathered
 * into one vector each; the activations take the signs (vpsignb; |q8| <= 127,
 * so no -128 to negate) and meet the grid bytes in vpmaddubsw (pairs of at
 * most 2 * 43 * 127 < 2^15, no saturation), widened by vpmaddwd by the
 * sub-block's 2 s + 1 (IQ2_XS/IQ2_S: one for each 16 values, one per 128-bit
 * half) into int32 lanes whose total is the block's exact isum.
 *
 * One-row dots reduce each block's lanes exactly and do the reference's fmaf
 * per block in scalar registers, 0.125f times the sum at the end.  Tiles: 8
 * (row, token) pairs, R rows x T tokens (8x1, 2x4, 1x8) as isa_avx2_iq4.c's:
 * a row's sub-block is decoded once for its T tokens, the 8 pairs' lane
 * vectors reduced together (sum8_i32: lane k = pair k's isum), converted,
 * fused-multiply-added by the 8 pairs' dw * da, and times 0.125f per lane.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { NP = 8 }; /* pairs per tile */
enum { KIND_XXS, KIND_XS, KIND_S };

static ALWAYS_INLINE size_t block_bytes(int kind)
{
	return kind == KIND_XXS  ? sizeof(moe_block_iq2_xxs)
	       : kind == KIND_XS ? sizeof(moe_block_iq2_xs)
	                         : sizeof(moe_block_iq2_s);
}

static ALWAYS_INLINE uint64_t esigns(uint32_t k)
{
	return moe_iq2_esigns64[k & 127];
}

/* Sub-block b (values 32b .. 32b+31) of the block at p: its 32 grid bytes,
 * their sign masks and the int16 scale vector (2 s + 1 per 16 values). */
static ALWAYS_INLINE void decode(int kind, const uint8_t *p, int b, __m256i *gv, __m256i *sv,
                                 __m256i *sc)
{
	if (kind == KIND_XXS) {
		uint32_t a0, a1;
		memcpy(&a0, p + offsetof(moe_block_iq2_xxs, qs) + 8 * b, 4);
		memcpy(&a1, p + offsetof(moe_block_iq2_xxs, qs) + 8 * b + 4, 4);
		*gv = _mm256_set_epi64x((long long)moe_iq2xxs_grid64[a0 >> 24],
		                        (long long)moe_iq2xxs_grid64[(a0 >> 16) & 255],
		                        (long long)moe_iq2xxs_grid64[(a0 >> 8) & 255],
		                        (long long)moe_iq2xxs_grid64[a0 & 255]);
		*sv = _mm256_set_epi64x((long long)esigns(a1 >> 21), (long long)esigns(a1 >> 14),
		                        (long long)esigns(a1 >> 7), (long long)esigns(a1));
		*sc = _mm256_set1_epi16((short)(2 * (a1 >> 28) + 1));
		return;
	}
	uint8_t s;
	if (kind == KIND_XS) {
		uint16_t q[4];
		memcpy(q, p + offsetof(moe_block_iq2_xs, qs) + 8 * b, 8);
		*gv = _mm256_set_epi64x((long long)moe_iq2xs_grid64[q[3] & 511],
		                        (long long)moe_iq2xs_grid64[q[2] & 511],
		                        (long long)moe_iq2xs_grid64[q[1] & 511],
		                        (long long)moe_iq2xs_grid64[q[0] & 511]);
		*sv = _mm256_set_epi64x((long long)esigns(q[3] >> 9), (long long)esigns(q[2] >> 9),
		                        (long long)esigns(q[1] >> 9), (long long)esigns(q[0] >> 9));
		s = p[offsetof(moe_block_iq2_xs, scales) + b];
	} else {
		const uint8_t *qs = p + offsetof(moe_block_iq2_s, qs) + 4 * b;
		const uint8_t *sg = p + offsetof(moe_block_iq2_s, qs) + 32 + 4 * b;
		const int h = p[offsetof(moe_block_iq2_s, qh) + b];
		*gv = _mm256_set_epi64x((long long)moe_iq2s_grid64[qs[3] | (h << 2 & 0x300)],
		                        (long long)moe_iq2s_grid64[qs[2] | (h << 4 & 0x300)],
		                        (long long)moe_iq2s_grid64[qs[1] | (h << 6 & 0x300)],
		                        (long long)moe_iq2s_grid64[qs[0] | (h << 8 & 0x300)]);
		/* the 4 sign bytes spread over their 8 values each: -1 where the
		 * value's bit is set, else +1 */
		uint32_t s4;
		memcpy(&s4, sg, 4);
		const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
		const __m256i spread = _mm256_shuffle_epi8(
		    _mm256_set1_epi32((int)s4),
		    _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2,
		                     2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
		*sv = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit),
		                      _mm256_set1_epi8(1));
		s = p[offsetof(moe_block_iq2_s, scales) + b];
	}
	*sc = _mm256_set_m128i(_mm_set1_epi16((short)(2 * (s >> 4) + 1)),
	                       _mm_set1_epi16((short)(2 * (s & 15) + 1)));
}

/* The int32 lanes of one sub-block's scaled dot with 32 activations. */
static ALWAYS_INLINE __m256i sub_dot(__m256i gv, __m256i sv, __m256i sc, const int8_t *q8)
{
	const __m256i qy = _mm256_loadu_si256((const __m256i *)q8);
	return _mm256_madd_epi16(_mm256_maddubs_epi16(gv, _mm256_sign_epi8(qy, sv)), sc);
}

/* ---- one-row dots ---------------------------------------------------------------- */

static ALWAYS_INLINE void dot_iq2(int kind, int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *x = w;
	const moe_block_q8_K *y = a;
	const size_t bs = block_bytes(kind);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const uint8_t *p = x + (size_t)i * bs;
		__m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 8
		for (int b = 0; b < 8; b++) {
			__m256i gv, sv, sc;
			decode(kind, p, b, &gv, &sv, &sc);
			acc = _mm256_add_epi32(acc, sub_dot(gv, sv, sc, y[i].qs + 32 * b));
		}
		const int32_t isum = _mm_cvtsi128_si32(hsum_i32_v(acc));
		sum = fmaf((float)isum, half_to_f32((uint16_t)ld16(p)) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

static void dot_iq2_xxs(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq2(KIND_XXS, n, s, w, a);
}

static void dot_iq2_xs(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq2(KIND_XS, n, s, w, a);
}

static void dot_iq2_s(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq2(KIND_S, n, s, w, a);
}

void moe_dots_avx2_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	moe_iq2_tables_init();
	dots[MOE_TYPE_IQ2_XXS] = dot_iq2_xxs;
	dots[MOE_TYPE_IQ2_XS] = dot_iq2_xs;
	dots[MOE_TYPE_IQ2_S] = dot_iq2_s;
}

/* ---- tiles ----------------------------------------------------------------------- */

/* One R x T tile of kind over n_cols columns; out[k] = pair k's result (row
 * k / T, token k % T). */
static ALWAYS_INLINE void tile(int kind, int R, int T, int64_t n_cols, float out[NP],
                               const uint8_t *const w[NP], const uint8_t *const a[NP])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = block_bytes(kind), abs_ = sizeof(moe_block_q8_K);
	const size_t aqo = offsetof(moe_block_q8_K, qs), ado = offsetof(moe_block_q8_K, d);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * abs_;
		__m256i v[NP];
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			for (int b = 0; b < 8; b++) {
				__m256i gv, sv, sc;
				decode(kind, w[r] + wo, b, &gv, &sv, &sc);
#pragma GCC unroll 8
				for (int t = 0; t < T; t++) {
					const __m256i p = sub_dot(
					    gv, sv, sc, (const int8_t *)(a[t] + ao + aqo + 32 * b));
					v[r * T + t] =
					    b == 0 ? p : _mm256_add_epi32(v[r * T + t], p);
				}
			}
		}
		float dw[NP], da[NP];
		for (int k = 0; k < NP; k++) {
			dw[k] = half_to_f32((uint16_t)ld16(w[k / T] + wo));
			memcpy(&da[k], a[k % T] + ao + ado, sizeof(float));
		}
		const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(dw), _mm256_loadu_ps(da));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(0.125f), acc));
}

#define SHAPES(name, kind)                                                                         \
	static void name##_8x1(int64_t n, float o[NP], const uint8_t *const w[NP],                 \
	                       const uint8_t *const a[NP], const void *prep)                       \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 8, 1, n, o, w, a);                                                      \
	}                                                                                          \
	static void name##_2x4(int64_t n, float o[NP], const uint8_t *const w[NP],                 \
	                       const uint8_t *const a[NP], const void *prep)                       \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 2, 4, n, o, w, a);                                                      \
	}                                                                                          \
	static void name##_1x8(int64_t n, float o[NP], const uint8_t *const w[NP],                 \
	                       const uint8_t *const a[NP], const void *prep)                       \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 1, 8, n, o, w, a);                                                      \
	}

SHAPES(xxs, KIND_XXS)
SHAPES(xs, KIND_XS)
SHAPES(s2, KIND_S)

static void gemm_iq2_xxs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                         int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles_plain(xxs_8x1, xxs_2x4, xxs_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride,
	                n_t);
}

static void gemm_iq2_xs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles_plain(xs_8x1, xs_2x4, xs_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq2_s(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles_plain(s2_8x1, s2_2x4, s2_1x8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

moe_gemm_fn moe_gemm_avx2_iq2(moe_type t)
{
	moe_iq2_tables_init(); /* once; a load and a branch after that */
	switch (t) {
	case MOE_TYPE_IQ2_XXS:
		return gemm_iq2_xxs;
	case MOE_TYPE_IQ2_XS:
		return gemm_iq2_xs;
	case MOE_TYPE_IQ2_S:
		return gemm_iq2_s;
	default:
		return NULL;
	}
}
