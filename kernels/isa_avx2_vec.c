/*
 * isa_avx2_vec.c - the float vector ops (vec.c) with AVX2 + F16C: the
 * references' operations on 8 lanes, multiply and add kept separate
 * (-ffp-contract=off), so every result has the reference's bits.
 */
#include <immintrin.h>

#include "kernels/quants.h"

/* dot_ref's lane j is the partial sum s[j]; its tail and tree likewise */
static float dot_avx2(const float *a, const float *b, int64_t n)
{
	__m256 s = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
	float v[8];
	_mm256_storeu_ps(v, s);
	float r = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

/* Rows in groups of 8 (each its own 8-lane sum, as dot has it, so the adds
 * of different rows overlap instead of waiting on one chain), then one at a
 * time. */
static void dot_rows_avx2(float *y, int64_t y_stride, const float *a, int64_t a_stride, int64_t m,
                          const float *b, int64_t n)
{
	int64_t r = 0;
	for (; r + 8 <= m; r += 8) {
		const float *ar = a + r * a_stride;
		__m256 s[8];
		for (int k = 0; k < 8; k++)
			s[k] = _mm256_setzero_ps();
		int64_t i = 0;
		for (; i + 8 <= n; i += 8) {
			const __m256 vb = _mm256_loadu_ps(b + i);
			for (int k = 0; k < 8; k++)
				s[k] = _mm256_add_ps(
				    s[k],
				    _mm256_mul_ps(_mm256_loadu_ps(ar + k * a_stride + i), vb));
		}
		for (int k = 0; k < 8; k++) {
			float v[8];
			_mm256_storeu_ps(v, s[k]);
			float t = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
			for (int64_t j = i; j < n; j++)
				t += ar[k * a_stride + j] * b[j];
			y[(r + k) * y_stride] = t;
		}
	}
	for (; r < m; r++)
		y[r * y_stride] = dot_avx2(a + r * a_stride, b, n);
}

static void axpy_avx2(float *y, float a, const float *x, int64_t n)
{
	const __m256 va = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i),
		                                      _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
	for (; i < n; i++)
		y[i] += a * x[i];
}

/* Columns in blocks of 64 (8 vectors held in registers over all m rows),
 * then of 8, then one at a time: each y[j] still takes a[0] * x0[j], a[1] *
 * x1[j], ... in row order, as axpy row by row does. */
static void axpy_rows_avx2(float *y, const float *a, const float *x, int64_t x_stride, int64_t m,
                           int64_t n)
{
	int64_t j = 0;
	for (; j + 64 <= n; j += 64) {
		__m256 v[8];
		for (int r = 0; r < 8; r++)
			v[r] = _mm256_loadu_ps(y + j + 8 * r);
		for (int64_t i = 0; i < m; i++) {
			const __m256 va = _mm256_set1_ps(a[i]);
			const float *xi = x + i * x_stride + j;
			for (int r = 0; r < 8; r++)
				v[r] = _mm256_add_ps(
				    v[r], _mm256_mul_ps(va, _mm256_loadu_ps(xi + 8 * r)));
		}
		for (int r = 0; r < 8; r++)
			_mm256_storeu_ps(y + j + 8 * r, v[r]);
	}
	for (; j + 8 <= n; j += 8) {
		__m256 v = _mm256_loadu_ps(y + j);
		for (int64_t i = 0; i < m; i++)
			v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(a[i]),
			                                   _mm256_loadu_ps(x + i * x_stride + j)));
		_mm256_storeu_ps(y + j, v);
	}
	for (; j < n; j++)
		for (int64_t i = 0; i < m; i++)
			y[j] += a[i] * x[i * x_stride + j];
}

static void scale_avx2(float *y, float a, int64_t n)
{
	const __m256 va = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), va));
	for (; i < n; i++)
		y[i] *= a;
}

/* exact, as the reference's conversion (F16C) */
static void f16_avx2(float *y, const uint16_t *x, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
	for (; i < n; i++)
		y[i] = _cvtsh_ss(x[i]);
}

/* the reference's exact products, 8 lanes at a time */
static void q8_0_avx2(float *y, const void *x, int64_t n)
{
	const moe_block_q8_0 *b = x;
	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
		for (int k = 0; k < 4; k++) {
			const __m128i q = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * k));
			const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
			_mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(v, d));
		}
	}
}

static void q4_0_avx2(float *y, const void *x, int64_t n)
{
	const moe_block_q4_0 *b = x;
	const __m128i lo4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
		const __m128i qs = _mm_loadu_si128((const __m128i *)b[i].qs);
		/* values 0..15 in the low nibbles, 16..31 in the high ones */
		const __m128i h[2] = {
		    _mm_sub_epi8(_mm_and_si128(qs, lo4), eight),
		    _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), lo4), eight)};
		for (int k = 0; k < 4; k++) {
			const __m128i q = k & 1 ? _mm_srli_si128(h[k >> 1], 8) : h[k >> 1];
			const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
			_mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(v, d));
		}
	}
}

void moe_vec_ops_avx2(moe_vec_ops *ops)
{
	ops->dot = dot_avx2;
	ops->dot_rows = dot_rows_avx2;
	ops->axpy = axpy_avx2;
	ops->axpy_rows = axpy_rows_avx2;
	ops->scale = scale_avx2;
	ops->f16_to_f32 = f16_avx2;
	ops->q8_0_to_f32 = q8_0_avx2;
	ops->q4_0_to_f32 = q4_0_avx2;
}
