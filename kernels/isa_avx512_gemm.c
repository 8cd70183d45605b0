/*
 * isa_avx512_gemm.c - tile kernels (gemm.h) built with the AVX-512 flags
 * (F/BW/VL/DQ + VNNI).
 *
 * Q4_K x Q8_K: for each weight row, each 256-value block's nibbles are
 * unpacked once into four zmm (chunk c = values 64c..64c+63: low nibbles of
 * qs[32c..32c+31] then their high nibbles, the same order as the Q8_K
 * activation bytes) and met by up to GEMM_T tokens. Per (row, token, block):
 * vpmaddubsw (u8 weight x s8 activation -> pairs in s16, exact: 2*15*127 <
 * 2^15) and vpdpwssd with the sub-block scales (-> s32, exact), then one f32
 * fma of the block's integer sums by d * d_a into 16 lanes; the mins the same
 * way with bsums on 8 lanes. The lanes of a token never mix with another
 * token's and the final reduction has a fixed order, so the bits of a result
 * do not depend on the tile.
 */
#include <immintrin.h>

#include "kernels/gemm.h"
#include "kernels/quants.h"

enum { GEMM_T = 4 };

static inline float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

static inline float hsum512(__m512 v)
{
	__m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
	__m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
	b = _mm_add_ps(b, _mm_movehl_ps(b, b));
	b = _mm_add_ss(b, _mm_movehdup_ps(b));
	return _mm_cvtss_f32(b);
}

static inline float hsum256(__m256 a)
{
	__m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
	b = _mm_add_ps(b, _mm_movehl_ps(b, b));
	b = _mm_add_ss(b, _mm_movehdup_ps(b));
	return _mm_cvtss_f32(b);
}

static void gemm_q4_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const __m512i m4 = _mm512_set1_epi8(15);

	for (int64_t t0 = 0; t0 < n_t; t0 += GEMM_T) {
		int nt = n_t - t0 < GEMM_T ? (int)(n_t - t0) : GEMM_T;
		const moe_block_q8_K *a[GEMM_T];
		for (int t = 0; t < nt; t++)
			a[t] = (const moe_block_q8_K *)(x + (size_t)(t0 + t) * x_stride);
		for (int64_t r = 0; r < n_r; r++) {
			const moe_block_q4_K *b =
			    (const moe_block_q4_K *)(w + (size_t)r * w_stride);
			__m512 acc[GEMM_T];
			__m256 accm[GEMM_T];
			for (int t = 0; t < GEMM_T; t++) {
				acc[t] = _mm512_setzero_ps();
				accm[t] = _mm256_setzero_ps();
			}
			for (int64_t i = 0; i < nb; i++) {
				uint8_t sc[8], mn[8];
				for (int s = 0; s < 8; s++)
					moe_k4_scale_min(s, b[i].scales, &sc[s], &mn[s]);
				__m512i q[4], scv[4];
				for (int c = 0; c < 4; c++) {
					__m256i v =
					    _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
					__m512i both = _mm512_inserti64x4(
					    _mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
					q[c] = _mm512_and_si512(both, m4);
					scv[c] = _mm512_inserti64x4(
					    _mm512_castsi256_si512(_mm256_set1_epi16(sc[2 * c])),
					    _mm256_set1_epi16(sc[2 * c + 1]), 1);
				}
				__m128i m8 =
				    _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
				__m256i mn2 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8),
				                               _mm_unpacklo_epi16(m8, m8));
				float d = f16(b[i].d), dmin = f16(b[i].dmin);
				for (int t = 0; t < nt; t++) {
					const moe_block_q8_K *ab = &a[t][i];
					__m512i isum = _mm512_setzero_si512();
					for (int c = 0; c < 4; c++) {
						__m512i av = _mm512_loadu_si512(ab->qs + 64 * c);
						isum = _mm512_dpwssd_epi32(
						    isum, _mm512_maddubs_epi16(q[c], av), scv[c]);
					}
					__m256i ms = _mm256_madd_epi16(
					    _mm256_loadu_si256((const __m256i *)ab->bsums), mn2);
					acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
					                         _mm512_set1_ps(d * ab->d), acc[t]);
					accm[t] =
					    _mm256_fmadd_ps(_mm256_cvtepi32_ps(ms),
					                    _mm256_set1_ps(dmin * ab->d), accm[t]);
				}
			}
			for (int t = 0; t < nt; t++)
				y[(t0 + t) * ldy + r] = hsum512(acc[t]) - hsum256(accm[t]);
		}
	}
}

moe_gemm_fn moe_gemm_avx512(moe_type t)
{
	switch (t) {
	case MOE_TYPE_Q4_K:
		return gemm_q4_K;
	default:
		return NULL;
	}
}
