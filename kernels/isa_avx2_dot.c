/*
 * isa_avx2_dot.c - AVX2 + FMA + F16C dot products (compiled with those flags
 * only; called only when CPUID says so).  Integer parts are exact per block,
 * as in the references; block results are accumulated per vector lane, in an
 * order fixed by n alone (so every call with the same inputs gives the same
 * bits).
 *
 * What makes them fast (decode streams the weights once per token; each choice
 * below was measured with bench/dotbench and llvm-mca -mcpu=znver3):
 *   - the 32-blocks (Q8_0, Q4_0, Q5_0) go 8 blocks at a time: the 16 fp16
 *     scales are packed in general-purpose registers and converted by one
 *     vcvtph2ps each side; the 8 blocks' partial sums are reduced together by
 *     an unpack-and-add tree to one vector (block k exact in lane k), so one
 *     conversion and one FMA serve 8 blocks;
 *   - Q4_K/Q5_K: the 6-bit scales and mins are unpacked in vector registers,
 *     one super-block ahead, into a ymm from which every consumer picks its
 *     scale with one byte shuffle; d and dmin are converted together;
 *   - K-quant mins and the Q6_K -32 offset use the activation's bsums (one
 *     madd per super-block);
 *   - each quant vector is loaded once (pin(): the compiler would otherwise
 *     fold one use into a memory operand and load again for the other);
 *   - float rows use 4 accumulators (32 values per iteration).
 * Tried and measured slower or no better: unsigned maddubs with an offset
 * term for Q4_0/Q5_0, per-block convert+broadcast+FMA, software prefetch
 * (hurts F32 streaming, no gain elsewhere), scales applied after a reduction
 * tree for Q4_K, unpacking BF16 by interleaving with zeros.
 */
#include <immintrin.h>

#include "kernels/isa_avx2.h"

/* ---- float rows ------------------------------------------------------------------ */

static void dot_f32(int64_t n, float *s, const void *w, const void *a)
{
	const float *x = w, *y = a;
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
	                 _mm256_setzero_ps()};
	int64_t i = 0;

	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++)
			acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k),
			                         _mm256_loadu_ps(y + i + 8 * k), acc[k]);
	for (; i + 8 <= n; i += 8)
		acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc[0]);
	float sum =
	    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
	for (; i < n; i++)
		sum += x[i] * y[i];
	*s = sum;
}

static inline __m256 f16x8(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static void dot_f16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
	                 _mm256_setzero_ps()};
	int64_t i = 0;

	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++)
			acc[k] = _mm256_fmadd_ps(f16x8(x + i + 8 * k),
			                         _mm256_loadu_ps(y + i + 8 * k), acc[k]);
	for (; i + 8 <= n; i += 8)
		acc[0] = _mm256_fmadd_ps(f16x8(x + i), _mm256_loadu_ps(y + i), acc[0]);
	float sum =
	    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
	for (; i < n; i++)
		sum += half_to_f32(x[i]) * y[i];
	*s = sum;
}

static inline __m256 bf16x8(const uint16_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static void dot_bf16(int64_t n, float *s, const void *w, const void *a)
{
	const uint16_t *x = w;
	const float *y = a;
	__m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
	                 _mm256_setzero_ps()};
	int64_t i = 0;

	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++)
			acc[k] = _mm256_fmadd_ps(bf16x8(x + i + 8 * k),
			                         _mm256_loadu_ps(y + i + 8 * k), acc[k]);
	for (; i + 8 <= n; i += 8)
		acc[0] = _mm256_fmadd_ps(bf16x8(x + i), _mm256_loadu_ps(y + i), acc[0]);
	float sum =
	    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
	for (; i < n; i++)
		sum += moe_bf16_to_f32(x[i]) * y[i];
	*s = sum;
}

/* ---- 32-blocks ------------------------------------------------------------------- */

/*
 * Groups of 8 blocks.  Each block's integer dot is first a vector of partial
 * sums; the 8 vectors are reduced together by an unpack-and-add tree into one
 * vector holding block k's exact sum in lane k, converted once and multiplied
 * by the 8 scale products in one FMA.  (A multiply-add by ones, a conversion
 * and a broadcast per block would load the multiply pipes instead.)  Blocks
 * past the last full group go one at a time.
 */

/* The 16 int16 partial sums (pairs of products) of one block pair. */
static inline __m256i pairs_q8_0(const moe_block_q8_0 *x, const moe_block_q8_0 *y)
{
	__m256i qx = _mm256_loadu_si256((const __m256i *)x->qs);
	__m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
	/* |x| * sign(y, x): products of up to 127 * 127, pairs within int16 */
	return _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
}

/* Q4_0: (q - 8) in -8..7, so 16 products stay within 16 * 8 * 127 < 2^15. */
static inline __m256i pairs_q4_0(const moe_block_q4_0 *x, const moe_block_q8_0 *y)
{
	__m256i qx = _mm256_sub_epi8(unpack_nibbles(x->qs), _mm256_set1_epi8(8));
	__m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
	return _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
}

/* Q5_0: (q - 16) in -16..15 = nibble | (high bit ? 0 : 0xf0) as int8; 16
 * products stay within 16 * 16 * 127 < 2^15. */
static inline __m256i pairs_q5_0(const moe_block_q5_0 *x, const moe_block_q8_0 *y)
{
	__m256i hi = _mm256_andnot_si256(spread_bits(x->qh), _mm256_set1_epi8((char)0xf0));
	__m256i qx = _mm256_or_si256(unpack_nibbles(x->qs), hi);
	__m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);
	return _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
}

static inline __m256i ones16(void)
{
	return _mm256_set1_epi16(1);
}

static inline float block_scale(uint16_t dx, uint16_t dy)
{
	return half_to_f32(dx) * half_to_f32(dy);
}

static void dot_q8_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q8_0 *x = w, *y = a;
	const int64_t nb = n / MOE_QK32;
	__m256 acc = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t i = 0;

	for (; i + 8 <= nb; i += 8) {
		__m256i v[8];
		for (int k = 0; k < 8; k++)
			v[k] = _mm256_madd_epi16(pairs_q8_0(x + i + k, y + i + k), ones16());
		__m256 d = _mm256_mul_ps(half8((const uint8_t *)&x[i].d, sizeof(*x)),
		                         half8((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	for (; i < nb; i++) {
		__m256i p = _mm256_madd_epi16(pairs_q8_0(x + i, y + i), ones16());
		acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
		                       _mm256_set1_ps(block_scale(x[i].d, y[i].d)), acc1);
	}
	*s = hsum_ps(_mm256_add_ps(acc, acc1));
}

static void dot_q4_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_0 *x = w;
	const moe_block_q8_0 *y = a;
	const int64_t nb = n / MOE_QK32;
	__m256 acc = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t i = 0;

	for (; i + 8 <= nb; i += 8) {
		__m256i v[8];
		for (int k = 0; k < 8; k++)
			v[k] = pairs_q4_0(x + i + k, y + i + k);
		__m256 d = _mm256_mul_ps(half8((const uint8_t *)&x[i].d, sizeof(*x)),
		                         half8((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i16(v)), d, acc);
	}
	for (; i < nb; i++) {
		__m256i p = _mm256_madd_epi16(pairs_q4_0(x + i, y + i), ones16());
		acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
		                       _mm256_set1_ps(block_scale(x[i].d, y[i].d)), acc1);
	}
	*s = hsum_ps(_mm256_add_ps(acc, acc1));
}

static void dot_q5_0(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_0 *x = w;
	const moe_block_q8_0 *y = a;
	const int64_t nb = n / MOE_QK32;
	__m256 acc = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t i = 0;

	for (; i + 8 <= nb; i += 8) {
		__m256i v[8];
		for (int k = 0; k < 8; k++)
			v[k] = pairs_q5_0(x + i + k, y + i + k);
		__m256 d = _mm256_mul_ps(half8((const uint8_t *)&x[i].d, sizeof(*x)),
		                         half8((const uint8_t *)&y[i].d, sizeof(*y)));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i16(v)), d, acc);
	}
	for (; i < nb; i++) {
		__m256i p = _mm256_madd_epi16(pairs_q5_0(x + i, y + i), ones16());
		acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
		                       _mm256_set1_ps(block_scale(x[i].d, y[i].d)), acc1);
	}
	*s = hsum_ps(_mm256_add_ps(acc, acc1));
}

/* ---- K-quants -------------------------------------------------------------------- */

static void dot_q4_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q4_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	const __m256i m4 = _mm256_set1_epi8(15);

	const int64_t nb = n / MOE_QK_K;
	/* the scales of block i + 1 are unpacked during block i: their chain of
	 * dependent shuffles then overlaps the previous block's arithmetic */
	__m256i sm_next = nb > 0 ? k4_scales_mins(x[0].scales) : _mm256_setzero_si256();

	for (int64_t i = 0; i < nb; i++) {
		__m256i sm = sm_next;
		if (i + 1 < nb)
			sm_next = k4_scales_mins(x[i + 1].scales);
		__m256i is0 = _mm256_setzero_si256(), is1 = _mm256_setzero_si256();

		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
			pin(&q);
			__m256i lo = _mm256_and_si256(q, m4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32));
			__m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0),
			                               _mm256_shuffle_epi8(sm, pick_scale(2 * c)));
			__m256i p1 =
			    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1),
			                      _mm256_shuffle_epi8(sm, pick_scale(2 * c + 1)));
			is0 = _mm256_add_epi32(is0, p0);
			is1 = _mm256_add_epi32(is1, p1);
		}
		__m128 dd = k4_d_dmin(&x[i].d, y[i].d);
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(is0, is1)),
		                      _mm256_broadcastss_ps(dd), acc);
		accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins(sm, y[i].bsums)),
		                       _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), accm);
	}
	*s = hsum_ps(acc) - hsum_ps(accm);
}

static void dot_q5_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q5_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);

	const int64_t nb = n / MOE_QK_K;
	/* the scales of block i + 1 are unpacked during block i: their chain of
	 * dependent shuffles then overlaps the previous block's arithmetic */
	__m256i sm_next = nb > 0 ? k4_scales_mins(x[0].scales) : _mm256_setzero_si256();

	for (int64_t i = 0; i < nb; i++) {
		__m256i sm = sm_next;
		if (i + 1 < nb)
			sm_next = k4_scales_mins(x[i + 1].scales);
		__m256i is0 = _mm256_setzero_si256(), is1 = _mm256_setzero_si256();
		__m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);

		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * c));
			__m256i hl = _mm256_and_si256(bit_to_4(qh, 2 * c), b16);
			__m256i hh = _mm256_and_si256(bit_to_4(qh, 2 * c + 1), b16);
			__m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
			__m256i hi =
			    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32));
			__m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0),
			                               _mm256_shuffle_epi8(sm, pick_scale(2 * c)));
			__m256i p1 =
			    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1),
			                      _mm256_shuffle_epi8(sm, pick_scale(2 * c + 1)));
			is0 = _mm256_add_epi32(is0, p0);
			is1 = _mm256_add_epi32(is1, p1);
		}
		__m128 dd = k4_d_dmin(&x[i].d, y[i].d);
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(is0, is1)),
		                      _mm256_broadcastss_ps(dd), acc);
		accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins(sm, y[i].bsums)),
		                       _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), accm);
	}
	*s = hsum_ps(acc) - hsum_ps(accm);
}

static void dot_q6_K(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q6_K *x = w;
	const moe_block_q8_K *y = a;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		__m256i is0 = _mm256_setzero_si256(), is1 = _mm256_setzero_si256();
		/* the -32 offset: 32 * sum_g scales[g] * bsums[g] */
		__m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
		__m256i bias =
		    _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)y[i].bsums));

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = x[i].ql + 64 * h;
			const int8_t *q8 = y[i].qs + 128 * h;
			/* scales 8h..8h+7 as int16, in both halves */
			__m256i sc = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
			                    : _mm256_permute2x128_si256(sc16, sc16, 0x11);
			__m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
			__m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
			__m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i q[4];

			pin(&qh);
			pin(&l0);
			pin(&l1);

			q6_assemble(q, l0, l1, qh);
			for (int j = 0; j < 4; j++) {
				__m256i yy = _mm256_loadu_si256((const __m256i *)(q8 + 32 * j));
				/* low half: scale 2j, high half: scale 2j+1 */
				__m256i scj = _mm256_shuffle_epi8(
				    sc, _mm256_set_m128i(_mm256_castsi256_si128(pick16(2 * j + 1)),
				                         _mm256_castsi256_si128(pick16(2 * j))));
				__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], yy), scj);
				if (j & 1)
					is1 = _mm256_add_epi32(is1, p);
				else
					is0 = _mm256_add_epi32(is0, p);
			}
		}
		__m256i isum =
		    _mm256_sub_epi32(_mm256_add_epi32(is0, is1), _mm256_slli_epi32(bias, 5));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum),
		                      _mm256_set1_ps(half_to_f32(x[i].d) * y[i].d), acc);
	}
	*s = hsum_ps(acc);
}

void moe_dots_avx2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
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
	moe_dots_avx2_iq4(dots);
	moe_dots_avx2_k23(dots);
	moe_dots_avx2_iq13(dots);
	moe_dots_avx2_iq2(dots); /* isa_avx2_iq2.c, also the AVX-512 level's */
}
