/*
 * isa_avx512_dot.c - AVX-512 (F/BW/VL/DQ + VNNI) dot products: the AVX2
 * kernels' block algorithms with VNNI doing the int8/int16 multiply-adds
 * (vpdpbusd, vpdpwssd: exact in int32 like the instruction pairs they
 * replace) and 512-bit float dots.  Called only when CPUID reports all of
 * those.
 */
#include <immintrin.h>

#include "kernels/isa_avx2.h"

/* int32 lanes of sum over pairs of x*y, x and y signed bytes (|x*y| pairs
 * stay within int16: |y| <= 127 for our activations). */
static inline __m256i dot_i8(__m256i x, __m256i y)
{
	__m256i ax = _mm256_sign_epi8(x, x);
	__m256i sy = _mm256_sign_epi8(y, x);
	return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
}

static void dot_f32(int64_t n, float *s, const void *w, const void *a)
{
	const float *x = w, *y = a;
	__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
	int64_t i = 0;

	for (; i + 32 <= n; i += 32) {
		acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
		acc1 =
		    _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
	}
	float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
	for (; i < n; i++)
		sum += x[i] * y[i];
	*s = sum;
}

static void dot_f16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
	int64_t i = 0;

	for (; i + 32 <= n; i += 32) {
		__m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i)));
		__m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i + 16)));
		acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(y + i), acc0);
		acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(y + i + 16), acc1);
	}
	float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
	for (; i < n; i++)
		sum += half_to_f32(x[i]) * y[i];
	*s = sum;
}

static inline __m512 bf16x16(const uint16_t *p)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

static void dot_bf16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
	int64_t i = 0;

	for (; i + 32 <= n; i += 32) {
		acc0 = _mm512_fmadd_ps(bf16x16(x + i), _mm512_loadu_ps(y + i), acc0);
		acc1 = _mm512_fmadd_ps(bf16x16(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
	}
	float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
	for (; i < n; i++)
		sum += moe_bf16_to_f32(x[i]) * y[i];
	*s = sum;
}

static void dot_q8_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q8_0 *x = w, *y = a;
	__m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		__m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
		__m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
		__m256 d = _mm256_set1_ps(half_to_f32(x[i].d) * half_to_f32(y[i].d));
		/* even and odd blocks in two accumulators: no serial FMA chain */
		acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(qx, qy)), d, acc[i & 1]);
	}
	*s = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
}

static void dot_q4_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_0 *x = w;
	const moe_block_q8_0 *y = a;
	__m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		__m256i qx = _mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8));
		__m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
		__m256 d = _mm256_set1_ps(half_to_f32(x[i].d) * half_to_f32(y[i].d));
		/* even and odd blocks in two accumulators: no serial FMA chain */
		acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(qx, qy)), d, acc[i & 1]);
	}
	*s = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
}

static void dot_q5_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_0 *x = w;
	const moe_block_q8_0 *y = a;
	__m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		/* q - 16 = nibble | (bit4 ? 0 : 0xf0) read as int8 */
		__m256i hi =
		    _mm256_andnot_si256(spread_bits(x[i].qh), _mm256_set1_epi8((char)0xf0));
		__m256i qx = _mm256_or_si256(unpack_nibbles(x[i].qs), hi);
		__m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
		__m256 d = _mm256_set1_ps(half_to_f32(x[i].d) * half_to_f32(y[i].d));
		/* even and odd blocks in two accumulators: no serial FMA chain */
		acc[i & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(qx, qy)), d, acc[i & 1]);
	}
	*s = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
}

/* The 8 six-bit scales and mins of a Q4_K/Q5_K block, as bytes. */
static inline void k4_unpack(const uint8_t *p, uint8_t sc[8], uint8_t mn[8])
{
	uint32_t u0, u1, u2, t[4];

	memcpy(&u0, p, 4);
	memcpy(&u1, p + 4, 4);
	memcpy(&u2, p + 8, 4);
	t[0] = u0 & 0x3f3f3f3fu;
	t[1] = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
	t[2] = u1 & 0x3f3f3f3fu;
	t[3] = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
	memcpy(sc, t, 8);
	memcpy(mn, t + 2, 8);
}

/* sum over 8 sub-blocks of mn[s] * (bsums[2s] + bsums[2s+1]), as 8 int32 lanes. */
static inline __m256i k4_mins_bytes(const uint8_t mn[8], const int16_t *bsums)
{
	__m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
	__m256i m2 = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
	return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), m2);
}

static void dot_q4_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	const __m256i m4 = _mm256_set1_epi8(15);

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		uint8_t sc[8], mn[8];
		__m256i isum = _mm256_setzero_si256();

		k4_unpack(x[i].scales, sc, mn);
		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
			__m256i lo = _mm256_and_si256(q, m4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32));
			isum = _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(lo, y0),
			                           _mm256_set1_epi16(sc[2 * c]));
			isum = _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(hi, y1),
			                           _mm256_set1_epi16(sc[2 * c + 1]));
		}
		float dy = y[i].d;
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
		                      _mm256_set1_ps(half_to_f32(x[i].d) * dy), acc);
		accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins_bytes(mn, y[i].bsums)),
		                       _mm256_set1_ps(half_to_f32(x[i].dmin) * dy), accm);
	}
	*s = hsum_ps(acc) - hsum_ps(accm);
}

static void dot_q5_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		uint8_t sc[8], mn[8];
		__m256i isum = _mm256_setzero_si256();
		__m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);

		k4_unpack(x[i].scales, sc, mn);
		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
			__m256i bl = _mm256_set1_epi8((char)(1 << (2 * c)));
			__m256i bh = _mm256_set1_epi8((char)(2 << (2 * c)));
			__m256i hl =
			    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), b16);
			__m256i hh =
			    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), b16);
			__m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
			__m256i hi =
			    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32));
			isum = _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(lo, y0),
			                           _mm256_set1_epi16(sc[2 * c]));
			isum = _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(hi, y1),
			                           _mm256_set1_epi16(sc[2 * c + 1]));
		}
		float dy = y[i].d;
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
		                      _mm256_set1_ps(half_to_f32(x[i].d) * dy), acc);
		accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins_bytes(mn, y[i].bsums)),
		                       _mm256_set1_ps(half_to_f32(x[i].dmin) * dy), accm);
	}
	*s = hsum_ps(acc) - hsum_ps(accm);
}

static void dot_q6_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q6_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		__m256i isum = _mm256_setzero_si256();
		/* the -32 offset: 32 * sum_g scales[g] * bsums[g] */
		__m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
		__m256i bias =
		    _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = x[i].ql + 64 * h;
			const int8_t *q8 = y[i].qs + 128 * h;
			const int8_t *scl = x[i].scales + 8 * h;
			__m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
			__m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
			__m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i q[4];
			q6_assemble(q, l0, l1, qh);
			for (int j = 0; j < 4; j++) {
				__m256i yy = _mm256_loadu_si256((const __m256i *)(q8 + 32 * j));
				__m256i sc = _mm256_set_m128i(_mm_set1_epi16(scl[2 * j + 1]),
				                              _mm_set1_epi16(scl[2 * j]));
				isum =
				    _mm256_dpwssd_epi32(isum, _mm256_maddubs_epi16(q[j], yy), sc);
			}
		}
		isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(bias, 5));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
		                      _mm256_set1_ps(half_to_f32(x[i].d) * y[i].d), acc);
	}
	*s = hsum_ps(acc);
}

void moe_dots_avx512(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_F32] = dot_f32;
	dots[MOE_TYPE_F16] = dot_f16;
	dots[MOE_TYPE_BF16] = dot_bf16;
	dots[MOE_TYPE_Q8_0] = dot_q8_0;
	dots[MOE_TYPE_Q4_0] = dot_q4_0;
	dots[MOE_TYPE_Q5_0] = dot_q5_0;
	dots[MOE_TYPE_Q4_K] = dot_q4_K;
	dots[MOE_TYPE_Q5_K] = dot_q5_K;
	dots[MOE_TYPE_Q6_K] = dot_q6_K;
}
