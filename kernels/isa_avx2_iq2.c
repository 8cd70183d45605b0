/*
 * isa_avx2_iq2.c - AVX2 + FMA + F16C dot products and tile kernels (gemm.h)
 * of IQ2_XXS, IQ2_XS and IQ2_S (x Q8_K), built with the avx2 flags; the
 * AVX-512 level uses them for several tokens, and for everything on CPUs
 * without VBMI/BITALG (its one-token kernels: isa_avx512_iq2.c).
 *
 * Both follow the canonical arithmetic of quants.h bit for bit.  Per 32-value
 * sub-block the 4 groups' grid entries (moe_iq2*_grid64, 8 unsigned bytes
 * each, <= 43) are gathered into one vector (rows4_u64) and their signs
 * formed as +1 / -1 bytes in another (esigns4; IQ2_S: its sign bytes spread
 * and tested); the activations take the signs (vpsignb; |q8| <= 127,
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

/* 4 entries of a table of 8-byte rows as one vector (entry i0 in lane 0):
 * per 128-bit half a vmovq and a vmovhps load, then one vinserti128 (the
 * compiler's _mm256_set_epi64x spends more instructions on it). */
static ALWAYS_INLINE __m256i rows4_u64(const uint64_t *tab, size_t i0, size_t i1, size_t i2,
                                       size_t i3)
{
	const __m128i lo = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i0))),
	                 (const double *)(tab + i1)));
	const __m128i hi = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i2))),
	                 (const double *)(tab + i3)));
	return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* IQ2_XXS's sub-block scales 2 s + 1 (s = 0..15) in every int16 lane. */
#define SC16(s)                                                                                    \
	{                                                                                          \
		2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1,      \
		    2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1,  \
		    2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1, 2 * (s) + 1                             \
	}
static const int16_t sc16[16][16] __attribute__((aligned(32))) = {
    SC16(0), SC16(1), SC16(2),  SC16(3),  SC16(4),  SC16(5),  SC16(6),  SC16(7),
    SC16(8), SC16(9), SC16(10), SC16(11), SC16(12), SC16(13), SC16(14), SC16(15)};
#undef SC16

/* IQ2_XS's and IQ2_S's 16 scales 2 s + 1 of a block (scales[8] at p), once
 * per block: bytes 0-7 of the low 128-bit half the low nibbles' (the first
 * 16 values of sub-block b), of the high half the high nibbles'; decode
 * picks sub-block b's with one byte shuffle. */
static ALWAYS_INLINE __m256i block_scales(int kind, const uint8_t *p)
{
	if (kind == KIND_XXS)
		return _mm256_setzero_si256();
	uint64_t s8;
	memcpy(&s8,
	       p + (kind == KIND_XS ? offsetof(moe_block_iq2_xs, scales)
	                            : offsetof(moe_block_iq2_s, scales)),
	       8);
	__m256i e =
	    _mm256_srlv_epi64(_mm256_set1_epi64x((long long)s8), _mm256_setr_epi64x(0, 0, 4, 4));
	e = _mm256_and_si256(e, _mm256_set1_epi8(15));
	return _mm256_add_epi8(_mm256_add_epi8(e, e), _mm256_set1_epi8(1));
}

/* Sub-block b (values 32b .. 32b+31) of the block at p: its 32 grid bytes,
 * their sign bytes and the int16 scale vector (2 s + 1 per 16 values; e:
 * block_scales of the block). */
static ALWAYS_INLINE void decode(int kind, const uint8_t *p, int b, __m256i e, __m256i *gv,
                                 __m256i *sv, __m256i *sc)
{
	if (kind == KIND_XXS) {
		const uint8_t *q = p + offsetof(moe_block_iq2_xxs, qs) + 8 * b;
		uint64_t a;
		memcpy(&a, q, 8);
		*gv = rows4_u64(moe_iq2xxs_grid64, q[0], q[1], q[2], q[3]);
		/* group l's sign bits at bits 32 + 7 l of a */
		*sv = esigns4(_mm256_srlv_epi64(_mm256_set1_epi64x((long long)a),
		                                _mm256_setr_epi64x(32, 39, 46, 53)));
		/* s (bits 4-7 of byte 7) times 16, which the address scale of 2
		 * makes sc16's row stride of 32 bytes: no shift */
		*sc = _mm256_load_si256(
		    (const __m256i *)((const uint8_t *)sc16 + 2 * (size_t)(q[7] & 0xf0)));
		return;
	}
	*sc = _mm256_shuffle_epi8(e, pick_scale(b));
	if (kind == KIND_XS) {
		const uint8_t *q = p + offsetof(moe_block_iq2_xs, qs) + 8 * b;
		uint64_t a;
		memcpy(&a, q, 8);
		*gv = rows4_u64(moe_iq2xs_grid64, ld16(q) & 511, ld16(q + 2) & 511,
		                ld16(q + 4) & 511, ld16(q + 6) & 511);
		*sv = esigns4(_mm256_srlv_epi64(_mm256_set1_epi64x((long long)a),
		                                _mm256_setr_epi64x(9, 25, 41, 57)));
		return;
	}
	const uint8_t *qs = p + offsetof(moe_block_iq2_s, qs) + 4 * b;
	const uint8_t *sg = p + offsetof(moe_block_iq2_s, qs) + 32 + 4 * b;
	const unsigned h = p[offsetof(moe_block_iq2_s, qh) + b];
	*gv = rows4_u64(moe_iq2s_grid64, qs[0] | (h << 8 & 0x300), qs[1] | (h << 6 & 0x300),
	                qs[2] | (h << 4 & 0x300), qs[3] | (h << 2 & 0x300));
	/* the 4 sign bytes spread over their 8 values each: -1 where the
	 * value's bit is set, else +1 */
	uint32_t s4;
	memcpy(&s4, sg, 4);
	const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
	const __m256i spread =
	    _mm256_shuffle_epi8(_mm256_set1_epi32((int)s4),
	                        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2,
	                                         2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
	*sv = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit),
	                      _mm256_set1_epi8(1));
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
		const __m256i e = block_scales(kind, p);
		__m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 8
		for (int b = 0; b < 8; b++) {
			__m256i gv, sv, sc;
			decode(kind, p, b, e, &gv, &sv, &sc);
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
			const __m256i e = block_scales(kind, w[r] + wo);
			/* the row's sums in registers (pinned): accumulated in v[]
			 * itself they went through the stack, a store-to-load
			 * chain per sub-block */
			__m256i s[NP];
#pragma GCC unroll 8
			for (int b = 0; b < 8; b++) {
				__m256i gv, sv, sc;
				decode(kind, w[r] + wo, b, e, &gv, &sv, &sc);
#pragma GCC unroll 8
				for (int t = 0; t < T; t++) {
					const __m256i p = sub_dot(
					    gv, sv, sc, (const int8_t *)(a[t] + ao + aqo + 32 * b));
					s[t] = b == 0 ? p : _mm256_add_epi32(s[t], p);
					pin(&s[t]);
				}
			}
#pragma GCC unroll 8
			for (int t = 0; t < T; t++)
				v[r * T + t] = s[t];
		}
		__m256 dw;
		float da[NP];
		if (T == 1) {
			dw = half8_ptr(w, wo);
		} else {
			float d1[NP];
			for (int k = 0; k < NP; k++)
				d1[k] = half_to_f32((uint16_t)ld16(w[k / T] + wo));
			dw = _mm256_loadu_ps(d1);
		}
		for (int k = 0; k < NP; k++)
			memcpy(&da[k], a[k % T] + ao + ado, sizeof(float));
		const __m256 d = _mm256_mul_ps(dw, _mm256_loadu_ps(da));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(0.125f), acc));
}

AVX2_TILE_SHAPES(xxs, KIND_XXS)
AVX2_TILE_SHAPES(xs, KIND_XS)
AVX2_TILE_SHAPES(s2, KIND_S)

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
