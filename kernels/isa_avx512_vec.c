/*
 * isa_avx512_vec.c - float vector ops (vec.c) that AVX-512 (DQ) does better
 * than AVX2: the fixed-point accumulation, with the reference's exact
 * conversion (fixed.c: the product widened to double and scaled by 2^32,
 * both exact; truncation, the fraction compared with +-0.5, saturation at
 * +-2^55, NaN to 0) on 8 lanes.  The results are the reference's bits.
 */
#include <immintrin.h>

#include "kernels/quants.h"

static void fix_axpy_avx512(int64_t *acc, float w, const float *x, int64_t n)
{
	const __m256 vw = _mm256_set1_ps(w);
	const __m512d scale = _mm512_set1_pd(0x1p32), half = _mm512_set1_pd(0.5);
	const __m512d mx = _mm512_set1_pd((double)MOE_FIX_MAX);
	const __m512i one = _mm512_set1_epi64(1), pmax = _mm512_set1_epi64(MOE_FIX_MAX);
	int64_t i = 0;

	for (; i + 8 <= n; i += 8) {
		const __m256 v = _mm256_mul_ps(vw, _mm256_loadu_ps(x + i));
		const __m512d d = _mm512_mul_pd(_mm512_cvtps_pd(v), scale);
		const __m512d t = _mm512_roundscale_pd(d, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
		const __m512d f = _mm512_sub_pd(d, t);
		__m512i r = _mm512_cvttpd_epi64(t);
		r = _mm512_mask_add_epi64(r, _mm512_cmp_pd_mask(f, half, _CMP_GE_OQ), r, one);
		r = _mm512_mask_sub_epi64(
		    r, _mm512_cmp_pd_mask(f, _mm512_sub_pd(_mm512_setzero_pd(), half), _CMP_LE_OQ),
		    r, one);
		r = _mm512_mask_mov_epi64(r, _mm512_cmp_pd_mask(d, mx, _CMP_GE_OQ), pmax);
		r = _mm512_mask_mov_epi64(
		    r, _mm512_cmp_pd_mask(d, _mm512_sub_pd(_mm512_setzero_pd(), mx), _CMP_LE_OQ),
		    _mm512_sub_epi64(_mm512_setzero_si512(), pmax));
		r = _mm512_mask_mov_epi64(r, _mm512_cmp_pd_mask(d, d, _CMP_UNORD_Q),
		                          _mm512_setzero_si512());
		_mm512_storeu_si512(acc + i, _mm512_add_epi64(_mm512_loadu_si512(acc + i), r));
	}
	for (; i < n; i++)
		acc[i] += moe_fix_from_f32(w * x[i]);
}

void moe_vec_ops_avx512(moe_vec_ops *ops)
{
	ops->fix_axpy = fix_axpy_avx512;
}
