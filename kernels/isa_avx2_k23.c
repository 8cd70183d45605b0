/*
 * isa_avx2_k23.c - AVX2 + FMA + F16C kernels of the 2- and 3-bit K-quants
 * (Q2_K, Q3_K) against Q8_K: the one-token dot and the tile kernel (gemm.h)
 * the matrix products and the expert FFN use, and the kernels of the rows
 * repacked at load (the "lanes" layouts of quants.h, at the end).  Compiled
 * with the avx2 flags; the AVX-512 level takes these as they are.
 *
 * Both follow the canonical arithmetic of quants.h bit for bit: per (row,
 * token) and block the exact int32 sum (in any order: integers), then the
 * same scalar f32 operations as the references in block order
 * (acc = fmaf((float)isum, d * d_a, acc)).  A (row, token) result therefore
 * does not depend on the tile, the batch or the level.
 *
 * Each block prefetches the weights 16 blocks ahead (1.3-1.8 KB): these
 * formats carry few bytes per unit of work, and on one busy AVX2 EPYC core
 * Q3_K's one-token stream went from 4.2-6.4 to 7.7-7.9 GB/s with it (Q2_K
 * within the noise; dotbench --matmul, runs alternated).
 *
 * One token on 4 or more rows takes four rows per pass (q2_K_rows4,
 * q3_K_rows4 through isa_avx2.h run_rows4): the same integer sums per row,
 * reduced and accumulated four rows at once.  Their blocks (and the one-token
 * dot's) are q2_K_block1 / q3_K_block1: one accumulation chain per row kept
 * in a register (GCC spilled the 8 products of each of the four rows of the
 * token-generic block to the stack), and Q2_K's quants taken in place by one
 * AND each (factor 1, 4, 16; bits 6-7 by one shift to 16) against scales
 * x16, x4, x1, the block's sums exactly 16 x and shifted back once.
 * callgrind (moe_matmul_q, 64 rows x 4096, one token): Q2_K 77.4 -> 64.3,
 * Q3_K 113.7 -> 103.2 instructions per block; in cache (moe_dotbench
 * --matmul, one Zen 3 core, alternated) Q2_K 12.4-13.3 -> 13.7-14.1, Q3_K
 * 11.9-12.0 -> 12.0-12.1 GB/s, streaming a 128 MiB matrix Q2_K 12.2-12.4 ->
 * 12.5-12.9, Q3_K 10.8-11.2 -> 11.5-11.7.  Tried and dropped: Q3_K's scales
 * worked out in general-purpose registers (as IQ4_XS's one-token tile does):
 * 4 vector instructions instead of 10 and 3 % faster in cache, but 8 %
 * slower streaming (10.6-10.8 GB/s).
 *
 * Per row and block the quants are unpacked once into 8 vectors of 32 bytes
 * (vector v = values 32v..32v+31 = sub-blocks 2v (low 128 bits) and 2v+1
 * (high 128 bits)), each with its pair of sub-block scales as int16, and met
 * by up to 8 tokens: one maddubs (u8 quants x s8 activations, pairs within
 * int16) and one madd by the scales (-> int32) per vector and token.
 *   Q2_K: q in 0..3; the mins' term sum mn[s] * bsums[s] is one madd of the
 *         16 mins with the activation's bsums.
 *   Q3_K: q in 0..7 (bit 2 from hmask), the -4 offset taken out as
 *         4 * sum (sc[s] - 32) * bsums[s] (one madd); the signed scales
 *         are unpacked in vector registers and widened to int16 once per
 *         block, each vector's pair picked by one shuffle.
 */
#include <stddef.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { KT = 8 }; /* tokens per tile at most */

/* Shuffle mask: int16 lanes of the low half = byte 2v zero-extended, of the
 * high half = byte 2v + 1 (with 0x80 high bytes). */
static ALWAYS_INLINE __m256i pick_u8_pair(int v)
{
	return _mm256_set_epi64x(0x8000800080008000ll | (0x0001000100010001ll * (2 * v + 1)),
	                         0x8000800080008000ll | (0x0001000100010001ll * (2 * v + 1)),
	                         0x8000800080008000ll | (0x0001000100010001ll * (2 * v)),
	                         0x8000800080008000ll | (0x0001000100010001ll * (2 * v)));
}

/* Shuffle mask: int16 lanes of the low half = int16 element e0, of the high
 * half = element e1 (of each half's 8). */
static ALWAYS_INLINE __m256i pick_i16_pair(int e0, int e1)
{
	const long long w0 = 0x0001000100010001ll * (0x0100 * (2 * e0 + 1) + 2 * e0);
	const long long w1 = 0x0001000100010001ll * (0x0100 * (2 * e1 + 1) + 2 * e1);
	return _mm256_set_epi64x(w1, w1, w0, w0);
}

/* [sum of a's 8 int32, sum of b's, the same again] (exact). */
static ALWAYS_INLINE __m128i hsum2_i32(__m256i a, __m256i b)
{
	__m256i t = _mm256_hadd_epi32(a, b); /* a01 a23 b01 b23 | a45 a67 b45 b67 */
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
	return _mm_hadd_epi32(s, s);
}

static ALWAYS_INLINE uint32_t load_u32(const void *p)
{
	uint32_t u;
	memcpy(&u, p, 4);
	return u;
}

/* acc[t] += the products of q (32 unsigned quants: values 32v..32v + 31 of
 * a block) with token block y[t]'s, pairs summed (maddubs), times the
 * pairs' scales sc (madd), for t < T: exact int32 lanes. */
static ALWAYS_INLINE void add_vec_tokens(int T, __m256i q, __m256i sc,
                                         const moe_block_q8_K *const *y, int v, __m256i *acc)
{
#pragma GCC unroll 8
	for (int t = 0; t < T; t++) {
		const __m256i yy = _mm256_loadu_si256((const __m256i *)(y[t]->qs + 32 * v));
		acc[t] =
		    _mm256_add_epi32(acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, yy), sc));
	}
}

/* ---- Q2_K ------------------------------------------------------------------------ */

/* Q2_K block x against the T token blocks y[0..T) (row_q2_K, q2_K_rows4):
 * acc[t] = 8 int32 lanes summing to the block's isum against y[t] (exact),
 * *mn16 = the 16 mins as int16; prefetches the row 16 blocks ahead.  (y and
 * acc are pointers, not [KT] arrays: the four-row callers pass one each.) */
static ALWAYS_INLINE void q2_K_block(int T, const moe_block_q2_K *x, const moe_block_q8_K *const *y,
                                     __m256i *acc, __m256i *mn16)
{
	const __m256i m3 = _mm256_set1_epi8(3), m15 = _mm256_set1_epi8(15);

	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	const __m128i sc8 = _mm_loadu_si128((const __m128i *)x->scales);
	const __m256i scb = _mm256_and_si256(_mm256_broadcastsi128_si256(sc8), m15);
	*mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(15)));
#pragma GCC unroll 8
	for (int t = 0; t < T; t++)
		acc[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		__m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
		pin(&qs);
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const int v = 4 * h + j;
			const __m256i q = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), m3);
			const __m256i sc = _mm256_shuffle_epi8(scb, pick_u8_pair(v));
			add_vec_tokens(T, q, sc, y, v, acc);
		}
	}
}

/* Q2_K block x against one token block y (q2_K_rows4): *is = 8 int32 lanes
 * summing to 16 x the block's isum, *ms to 16 x the mins' sum (exact: at most
 * 16 * 256 * 3 * 15 * 128 < 2^31); prefetches the row 16 blocks ahead.
 *   The quants are taken where they lie (no shift) when they can: of each
 * byte's four, bits 0-1 (factor 1), 2-3 (4) and 4-5 (16) by one AND each,
 * bits 6-7 shifted to 4-5 (16); the scales they meet are 16, 4, 1 and 1 x
 * sc (bytes, <= 240), so every product carries the factor 16 (the pairs stay
 * below 2 * 48 * 128 < 2^15).  The mins come 16 x from the zero-extended
 * scale bytes by one AND.  One accumulation chain, kept in a register (pin):
 * with q2_K_block's zeroed per-token sums GCC kept the 8 products of each of
 * the four rows apart and spilled them to the stack. */
static ALWAYS_INLINE void q2_K_block1(const moe_block_q2_K *x, const moe_block_q8_K *y, __m256i *is,
                                      __m256i *ms)
{
	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	const __m128i sc8 = _mm_loadu_si128((const __m128i *)x->scales);
	const __m256i sc1 =
	    _mm256_and_si256(_mm256_broadcastsi128_si256(sc8), _mm256_set1_epi8(15));
	const __m256i sc4 = _mm256_slli_epi16(sc1, 2), sc16 = _mm256_slli_epi16(sc1, 4);
	*ms =
	    _mm256_madd_epi16(_mm256_and_si256(_mm256_cvtepu8_epi16(sc8), _mm256_set1_epi16(0xf0)),
	                      _mm256_loadu_si256((const __m256i *)y->bsums));
	__m256i s = _mm256_setzero_si256();
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		__m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
		pin(&qs);
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const int v = 4 * h + j;
			const __m256i q =
			    j < 3 ? _mm256_and_si256(qs, _mm256_set1_epi8((char)(3 << 2 * j)))
			          : _mm256_and_si256(_mm256_srli_epi16(qs, 2),
			                             _mm256_set1_epi8(0x30));
			const __m256i sc = j == 0 ? sc16 : j == 1 ? sc4 : sc1;
			const __m256i yy = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * v));
			const __m256i p = _mm256_madd_epi16(
			    _mm256_maddubs_epi16(q, yy), _mm256_shuffle_epi8(sc, pick_u8_pair(v)));
			s = v == 0 ? p : _mm256_add_epi32(s, p);
			pin(&s);
		}
	}
	*is = s;
}

/* Row w (nb blocks) against T tokens a[0..T): out[t] as the reference. */
static ALWAYS_INLINE void row_q2_K(int T, int64_t nb, float out[KT], const uint8_t *w,
                                   const uint8_t *const a[KT])
{
	__m128 acc2[KT]; /* lane 0: the scales' sum, lane 1: the mins' */

	for (int t = 0; t < T; t++)
		acc2[t] = _mm_setzero_ps();
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q2_K *x = (const moe_block_q2_K *)w + i;
		const moe_block_q8_K *y[KT];
		__m256i acc[KT], mn16;

#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			y[t] = (const moe_block_q8_K *)a[t] + i;
		const __m128 ddm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(&x->d)));
		if (T == 1) {
			/* q2_K_block1: both sums x 16 */
			__m256i is, ms;
			q2_K_block1(x, y[0], &is, &ms);
			acc2[0] =
			    _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_srai_epi32(hsum2_i32(is, ms), 4)),
			                 _mm_mul_ps(ddm, _mm_set1_ps(y[0]->d)), acc2[0]);
			continue;
		}
		q2_K_block(T, x, y, acc, &mn16);
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const __m256i m = _mm256_madd_epi16(
			    mn16, _mm256_loadu_si256((const __m256i *)y[t]->bsums));
			/* [isum, msum] * [d * dy, dmin * dy] + acc: the references' fmaf */
			acc2[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum2_i32(acc[t], m)),
			                       _mm_mul_ps(ddm, _mm_set1_ps(y[t]->d)), acc2[t]);
		}
	}
	for (int t = 0; t < T; t++)
		out[t] = _mm_cvtss_f32(acc2[t]) - _mm_cvtss_f32(_mm_movehdup_ps(acc2[t]));
}

/* ---- Q3_K ------------------------------------------------------------------------ */

/* The 16 scales sc[s] - 32 of a Q3_K block as int8 (quants.h layout), from
 * the 16 bytes ending with its 12 scale bytes (the block's bytes 92-107: no
 * read past the block).  As 32-bit words a0 a1 hi (scale bytes 0-3, 4-7,
 * 8-11): scales 0-3 = (a0 & 0x0f..) | (hi & 0x03..) << 4, 4-7 = a1 and hi >> 2,
 * 8-11 = a0 >> 4 and hi >> 4, 12-15 = a1 >> 4 and hi >> 6. */
static ALWAYS_INLINE __m128i q3_scales(const uint8_t *scales)
{
	const __m128i v = _mm_srli_si128(_mm_loadu_si128((const __m128i *)(scales - 4)), 4);
	const __m128i lo =
	    _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 1, 0)),
	                                 _mm_set_epi32(4, 4, 0, 0)),
	                  _mm_set1_epi8(15));
	const __m128i hi =
	    _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 2, 2)),
	                                 _mm_set_epi32(6, 4, 2, 0)),
	                  _mm_set1_epi8(3));
	return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi32(hi, 4)), _mm_set1_epi8(32));
}

/* Q3_K block x against the T token blocks y[0..T) (row_q3_K, q3_K_rows4):
 * acc[t] = 8 int32 lanes summing to the block's isum against y[t] (exact,
 * the -4 offset included); prefetches the row 16 blocks ahead. */
static ALWAYS_INLINE void q3_K_block(int T, const moe_block_q3_K *x, const moe_block_q8_K *const *y,
                                     __m256i *acc)
{
	const __m256i m3 = _mm256_set1_epi8(3), b4 = _mm256_set1_epi8(4);

	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	const __m256i sc16 = _mm256_cvtepi8_epi16(q3_scales(x->scales));
	/* scales 0-7 and 8-15 as int16, in both halves */
	const __m256i sca = _mm256_permute2x128_si256(sc16, sc16, 0x00);
	const __m256i scb = _mm256_permute2x128_si256(sc16, sc16, 0x11);
	/* -4 * (sc - 32) as int16 per sub-block: |.| <= 128 */
	const __m256i off16 = _mm256_slli_epi16(_mm256_sub_epi16(_mm256_setzero_si256(), sc16), 2);
	const __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);

#pragma GCC unroll 8
	for (int t = 0; t < T; t++)
		acc[t] = _mm256_madd_epi16(off16, _mm256_loadu_si256((const __m256i *)y[t]->bsums));
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		__m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
		pin(&qs);
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const int v = 4 * h + j;
			/* bit v of each hmask byte moved to bit 2 */
			const __m256i hb =
			    v >= 2 ? _mm256_srli_epi16(hm, v - 2) : _mm256_slli_epi16(hm, 2 - v);
			const __m256i q =
			    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), m3),
			                    _mm256_and_si256(hb, b4));
			const __m256i sc = _mm256_shuffle_epi8(
			    v < 4 ? sca : scb, pick_i16_pair((2 * v) % 8, (2 * v + 1) % 8));
			add_vec_tokens(T, q, sc, y, v, acc);
		}
	}
}

/* Q3_K block x against one token block y (q3_K_rows4): 8 int32 lanes summing
 * to the block's isum (exact, the -4 offset included), as q3_K_block with one
 * token, in one accumulation chain kept in a register (as q2_K_block1). */
static ALWAYS_INLINE __m256i q3_K_block1(const moe_block_q3_K *x, const moe_block_q8_K *y)
{
	const __m256i m3 = _mm256_set1_epi8(3), b4 = _mm256_set1_epi8(4);

	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	const __m256i sc16 = _mm256_cvtepi8_epi16(q3_scales(x->scales));
	const __m256i sca = _mm256_permute2x128_si256(sc16, sc16, 0x00);
	const __m256i scb = _mm256_permute2x128_si256(sc16, sc16, 0x11);
	const __m256i off16 = _mm256_slli_epi16(_mm256_sub_epi16(_mm256_setzero_si256(), sc16), 2);
	__m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
	pin(&hm);
	__m256i s = _mm256_madd_epi16(off16, _mm256_loadu_si256((const __m256i *)y->bsums));
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		__m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
		pin(&qs);
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const int v = 4 * h + j;
			const __m256i hb =
			    v >= 2 ? _mm256_srli_epi16(hm, v - 2) : _mm256_slli_epi16(hm, 2 - v);
			const __m256i q =
			    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), m3),
			                    _mm256_and_si256(hb, b4));
			const __m256i sc = _mm256_shuffle_epi8(
			    v < 4 ? sca : scb, pick_i16_pair((2 * v) % 8, (2 * v + 1) % 8));
			const __m256i yy = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * v));
			s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(q, yy), sc));
			pin(&s);
		}
	}
	return s;
}

static ALWAYS_INLINE void row_q3_K(int T, int64_t nb, float out[KT], const uint8_t *w,
                                   const uint8_t *const a[KT])
{
	__m128 sum[KT]; /* lane 0 */

	for (int t = 0; t < T; t++)
		sum[t] = _mm_setzero_ps();
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q3_K *x = (const moe_block_q3_K *)w + i;
		const moe_block_q8_K *y[KT];
		__m256i acc[KT];

#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			y[t] = (const moe_block_q8_K *)a[t] + i;
		if (T == 1)
			acc[0] = q3_K_block1(x, y[0]);
		else
			q3_K_block(T, x, y, acc);
		const float d = half_to_f32(x->d);
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			/* fmaf((float)isum, d * dy, sum), in a vector register */
			sum[t] = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum_i32_v(acc[t])),
			                      _mm_set_ss(d * y[t]->d), sum[t]);
	}
	for (int t = 0; t < T; t++)
		out[t] = _mm_cvtss_f32(sum[t]);
}

/* ---- one token ------------------------------------------------------------------ */

/* Q2_K, rows w[0..3] (isa_avx2.h run_rows4): per row and block the integer
 * sums of row_q2_K, then accumulator lanes 2r, 2r + 1 = row r's isum at
 * d * dy and msum at dmin * dy (sum8_i32 puts v[k]'s sum in lane k). */
static void q2_K_rows4(int64_t n_cols, float out[4], const uint8_t *const w[4], const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_K *y = (const moe_block_q8_K *)a + i;
		const moe_block_q2_K *x[4];
		__m256i v[8];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			x[r] = (const moe_block_q2_K *)w[r] + i;
			q2_K_block1(x[r], y, &v[2 * r], &v[2 * r + 1]);
		}
		const __m256 dd =
		    _mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi32(
		                      (int)load_u32(&x[3]->d), (int)load_u32(&x[2]->d),
		                      (int)load_u32(&x[1]->d), (int)load_u32(&x[0]->d))),
		                  _mm256_set1_ps(y->d));
		/* all sums carry the factor 16: exact arithmetic shift */
		acc =
		    _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srai_epi32(sum8_i32(v), 4)), dd, acc);
	}
	float o[8];
	_mm256_storeu_ps(o, acc);
	for (int r = 0; r < 4; r++)
		out[r] = o[2 * r] - o[2 * r + 1];
}

/* Q3_K, rows w[0..3]: per row and block the integer sum of row_q3_K, then
 * accumulator lane r = row r's at d * dy. */
static void q3_K_rows4(int64_t n_cols, float out[4], const uint8_t *const w[4], const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m128 acc = _mm_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_K *y = (const moe_block_q8_K *)a + i;
		const moe_block_q3_K *x[4];
		__m256i is[4];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			x[r] = (const moe_block_q3_K *)w[r] + i;
			is[r] = q3_K_block1(x[r], y);
		}
		const uint64_t d4 = ld16(&x[0]->d) | ld16(&x[1]->d) << 16 | ld16(&x[2]->d) << 32 |
		                    ld16(&x[3]->d) << 48;
		const __m128 d =
		    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)d4)), _mm_set1_ps(y->d));
		acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_i32(is[0], is[1], is[2], is[3])), d, acc);
	}
	_mm_storeu_ps(out, acc);
}

/* ---- one-token dots -------------------------------------------------------------- */

static void dot_q2_K(int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *ap[KT] = {a};
	float out[KT];

	row_q2_K(1, n / MOE_QK_K, out, w, ap);
	*s = out[0];
}

static void dot_q3_K(int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *ap[KT] = {a};
	float out[KT];

	row_q3_K(1, n / MOE_QK_K, out, w, ap);
	*s = out[0];
}

void moe_dots_avx2_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_Q2_K] = dot_q2_K;
	dots[MOE_TYPE_Q3_K] = dot_q3_K;
}

/* ---- tiles ----------------------------------------------------------------------- */

#define ROW_FNS(type)                                                                              \
	static void type##_t1(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_##type(1, nb, o, w, a);                                                        \
	}                                                                                          \
	static void type##_t2(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_##type(2, nb, o, w, a);                                                        \
	}                                                                                          \
	static void type##_t4(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_##type(4, nb, o, w, a);                                                        \
	}                                                                                          \
	static void type##_t8(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_##type(8, nb, o, w, a);                                                        \
	}

ROW_FNS(q2_K)
ROW_FNS(q3_K)

/* One token on 4 or more rows: rows4 (run_rows4).  Otherwise tokens [0, n_t)
 * in groups of 8, 4, 2 and 1 over every row (run_row_groups). */
static void run_rows(const row_tokens_fn fns[4], rows4_fn rows4, int64_t n_cols, float *y,
                     int64_t ldy, const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                     size_t x_stride, int64_t n_t)
{
	if (n_t == 1 && n_r >= 4)
		run_rows4(rows4, n_cols, y, w, w_stride, n_r, x);
	else
		run_row_groups(fns, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static const row_tokens_fn fns_q2_K[4] = {q2_K_t1, q2_K_t2, q2_K_t4, q2_K_t8};
static const row_tokens_fn fns_q3_K[4] = {q3_K_t1, q3_K_t2, q3_K_t4, q3_K_t8};

void moe_gemm_q2_K_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_rows(fns_q2_K, q2_K_rows4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

void moe_gemm_q3_K_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_rows(fns_q3_K, q3_K_rows4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

/* ---- one token on the lanes layouts (repack_k23.c, quants.h) ----------------------
 *
 * Int16 lane m of every unpacked vector holds two values of sub-block m, so a
 * sub-block's 16 products are summed in its lane over the block's 8 vectors
 * (maddubs + add) and met by the scales once per block (one madd): per 32
 * values an AND (a few a shift too), a maddubs and an add, against the
 * one-token blocks' AND, scale pick, maddubs, madd and add above.  The quants
 * are taken where they lie (factor 1, 4, 8 or 16); products at one factor are
 * summed while the int16 lane has room (bounds below, for any int8 token
 * value), then shifted back exactly.  The row's integer sums and the f32
 * steps are those of the one-token blocks above: the same bits. */

/* The lanes token blocks from the nb Q8_K blocks at a: per block an 8 x 8
 * transpose of int16 pairs in each 128-bit half (sub-blocks 0-7 below, 8-15
 * above). */
void moe_prep_q8_K_lanes_avx2(moe_q8_K_lanes *prep, const uint8_t *a, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_K *y = (const moe_block_q8_K *)a + i;
		moe_q8_K_lanes *p = prep + i;
		__m256i z[8], u[8], t[8];
		for (int k = 0; k < 4; k++) {
			/* R_k: sub-blocks 2k (low half), 2k + 1 (high half) */
			const __m256i lo = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k));
			const __m256i hi =
			    _mm256_loadu_si256((const __m256i *)(y->qs + 32 * (k + 4)));
			z[2 * k] = _mm256_permute2x128_si256(lo, hi, 0x20);
			z[2 * k + 1] = _mm256_permute2x128_si256(lo, hi, 0x31);
		}
		/* z[m]: pairs 0-7 of sub-block m (low), m + 8 (high); out v: pair v */
		for (int k = 0; k < 4; k++) {
			u[2 * k] = _mm256_unpacklo_epi16(z[2 * k], z[2 * k + 1]);
			u[2 * k + 1] = _mm256_unpackhi_epi16(z[2 * k], z[2 * k + 1]);
		}
		for (int k = 0; k < 2; k++) {
			t[4 * k] = _mm256_unpacklo_epi32(u[4 * k], u[4 * k + 2]);
			t[4 * k + 1] = _mm256_unpackhi_epi32(u[4 * k], u[4 * k + 2]);
			t[4 * k + 2] = _mm256_unpacklo_epi32(u[4 * k + 1], u[4 * k + 3]);
			t[4 * k + 3] = _mm256_unpackhi_epi32(u[4 * k + 1], u[4 * k + 3]);
		}
		for (int k = 0; k < 4; k++) {
			_mm256_storeu_si256((__m256i *)(p->qs + 64 * k),
			                    _mm256_unpacklo_epi64(t[k], t[k + 4]));
			_mm256_storeu_si256((__m256i *)(p->qs + 64 * k + 32),
			                    _mm256_unpackhi_epi64(t[k], t[k + 4]));
		}
		const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
		_mm256_storeu_si256((__m256i *)p->bsums, bs);
		_mm256_storeu_si256((__m256i *)p->bsums4, _mm256_slli_epi16(bs, 2));
		p->d = y->d;
	}
}

/* The 32 products of unpacked vector q with token vector k, pairs summed. */
static ALWAYS_INLINE __m256i lanes_mul(__m256i q, const moe_q8_K_lanes *y, int k)
{
	return _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k)));
}

/* The 8 vectors of a Q2_K lanes block's quants as they lie: q[0..1] at
 * factor 1 (vectors 0, 4), q[2..3] at 4 (1, 5), q[4..7] at 16 (2, 6, 3, 7);
 * prefetches the row 16 blocks ahead. */
static ALWAYS_INLINE void q2_K_lanes_unpack(const moe_block_q2_K *x, __m256i q[8])
{
	const __m256i m03 = _mm256_set1_epi8(0x03), m0c = _mm256_set1_epi8(0x0c),
	              m30 = _mm256_set1_epi8(0x30);

	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	const __m256i s0 = _mm256_loadu_si256((const __m256i *)x->qs);
	const __m256i s1 = _mm256_loadu_si256((const __m256i *)(x->qs + 32));
	q[0] = _mm256_and_si256(s0, m03);
	q[1] = _mm256_and_si256(s1, m03);
	q[2] = _mm256_and_si256(s0, m0c);
	q[3] = _mm256_and_si256(s1, m0c);
	q[4] = _mm256_and_si256(s0, m30);
	q[5] = _mm256_and_si256(s1, m30);
	q[6] = _mm256_and_si256(_mm256_srli_epi16(s0, 2), m30);
	q[7] = _mm256_and_si256(_mm256_srli_epi16(s1, 2), m30);
}

/* Q2_K lanes block x (its quants q from q2_K_lanes_unpack) against y: *is =
 * 8 int32 lanes summing to the block's isum, *ms to its msum (exact).  Pairs
 * at factor 1, 4, 16 are at most 2 * 48 * 128 = 12288, two of them summed
 * (24576); a lane's sum after the shifts at most 16 * 3 * 128 = 6144. */
static ALWAYS_INLINE void q2_K_lanes_dot(const moe_block_q2_K *x, const __m256i q[8],
                                         const moe_q8_K_lanes *y, __m256i *is, __m256i *ms)
{
	const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
	const __m256i f1 = _mm256_add_epi16(lanes_mul(q[0], y, 0), lanes_mul(q[1], y, 4));
	const __m256i f4 = _mm256_add_epi16(lanes_mul(q[2], y, 1), lanes_mul(q[3], y, 5));
	const __m256i f16a = _mm256_add_epi16(lanes_mul(q[4], y, 2), lanes_mul(q[5], y, 6));
	const __m256i f16b = _mm256_add_epi16(lanes_mul(q[6], y, 3), lanes_mul(q[7], y, 7));
	const __m256i sum = _mm256_add_epi16(
	    _mm256_add_epi16(f1, _mm256_srai_epi16(f4, 2)),
	    _mm256_add_epi16(_mm256_srai_epi16(f16a, 4), _mm256_srai_epi16(f16b, 4)));
	*is = _mm256_madd_epi16(sum, _mm256_and_si256(c, _mm256_set1_epi16(15)));
	*ms = _mm256_madd_epi16(_mm256_srli_epi16(c, 4),
	                        _mm256_loadu_si256((const __m256i *)y->bsums));
}

/* Q2_K lanes block x against y: q2_K_lanes_dot of its quants. */
static ALWAYS_INLINE void q2_K_lanes_block(const moe_block_q2_K *x, const moe_q8_K_lanes *y,
                                           __m256i *is, __m256i *ms)
{
	__m256i q[8];
	q2_K_lanes_unpack(x, q);
	q2_K_lanes_dot(x, q, y, is, ms);
}

/* The 8 vectors of a Q3_K lanes block's quants as they lie: q[0..2] at
 * factor 1 (vectors 0, 2, 4), q[3..5] at 8 (1, 3, 5), q[6..7] at 16 (6, 7:
 * bits 0-1 from bits 6-7 of the first / second plane, bit 2 from bit 6 / 7
 * of the third); prefetches the row 16 blocks ahead. */
static ALWAYS_INLINE void q3_K_lanes_unpack(const moe_block_q3_K_lanes *x, __m256i q[8])
{
	const __m256i m07 = _mm256_set1_epi8(0x07), m38 = _mm256_set1_epi8(0x38),
	              m30 = _mm256_set1_epi8(0x30), m40 = _mm256_set1_epi8(0x40);

	/* two lines of the block 16 ahead (one prefetch per 110 bytes left
	 * about every other line to the hardware; alternated runs on a busy
	 * box, streaming 7.8-9.0 -> 14.5-15.3 GB/s, Q2_K's 84 bytes unclear) */
	_mm_prefetch((const char *)(x + 16), _MM_HINT_T0);
	_mm_prefetch((const char *)(x + 16) + 64, _MM_HINT_T0);
	const __m256i s0 = _mm256_loadu_si256((const __m256i *)x->qs);
	const __m256i s1 = _mm256_loadu_si256((const __m256i *)(x->qs + 32));
	const __m256i s2 = _mm256_loadu_si256((const __m256i *)(x->qs + 64));
	q[0] = _mm256_and_si256(s0, m07);
	q[1] = _mm256_and_si256(s1, m07);
	q[2] = _mm256_and_si256(s2, m07);
	q[3] = _mm256_and_si256(s0, m38);
	q[4] = _mm256_and_si256(s1, m38);
	q[5] = _mm256_and_si256(s2, m38);
	q[6] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(s0, 2), m30),
	                       _mm256_and_si256(s2, m40));
	q[7] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(s1, 2), m30),
	                       _mm256_and_si256(_mm256_srli_epi16(s2, 1), m40));
}

/* The 16 scales sc - 32 of a Q3_K lanes block as int16 lanes (quants.h:
 * sc[s] at bits 6s..6s+5 of the 12 bytes).  Int16 lane s gets the bytes
 * holding bits 6s.. (one shuffle of the 16 bytes ending with the scales: no
 * read past the block), a multiply by 2^(10 - 6s % 8) moves the field to
 * bits 10-15, a shift brings it down. */
static ALWAYS_INLINE __m256i q3_K_lanes_scales(const uint8_t *scales)
{
	__m256i pick, mul;
	uint8_t pk[32];
	int16_t ml[16];
	for (int s = 0; s < 16; s++) {
		const int b = 6 * s / 8, o = 6 * s % 8;
		pk[2 * s] = (uint8_t)(4 + b);
		pk[2 * s + 1] = o + 6 > 8 ? (uint8_t)(4 + b + 1) : 0x80;
		ml[s] = (int16_t)(1 << (10 - o));
	}
	memcpy(&pick, pk, 32);
	memcpy(&mul, ml, 32);
	const __m256i v =
	    _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(scales - 4)));
	const __m256i f = _mm256_mullo_epi16(_mm256_shuffle_epi8(v, pick), mul);
	return _mm256_sub_epi16(_mm256_srli_epi16(f, 10), _mm256_set1_epi16(32));
}

/* Q3_K lanes block x (its quants q from q3_K_lanes_unpack) against y: 8
 * int32 lanes summing to the block's isum (the -4 offset included, as 4 x
 * bsums taken from each lane's sum).  Pairs at factor 1, 8, 16 are at most
 * 2 * 7 * 128, 2 * 56 * 128, 2 * 112 * 128 = 28672 (so at factor 8 two are
 * summed, at 16 none); a lane's sum after the shifts at most 16 * 7 * 128 =
 * 14336, minus 4 x bsums at most 22528. */
static ALWAYS_INLINE __m256i q3_K_lanes_dot(const moe_block_q3_K_lanes *x, const __m256i q[8],
                                            const moe_q8_K_lanes *y)
{
	const __m256i f1 = _mm256_add_epi16(
	    _mm256_add_epi16(lanes_mul(q[0], y, 0), lanes_mul(q[1], y, 2)), lanes_mul(q[2], y, 4));
	const __m256i f8a = _mm256_add_epi16(lanes_mul(q[3], y, 1), lanes_mul(q[4], y, 3));
	const __m256i f8b = lanes_mul(q[5], y, 5);
	__m256i sum = _mm256_add_epi16(
	    _mm256_add_epi16(f1, _mm256_srai_epi16(f8a, 3)),
	    _mm256_add_epi16(_mm256_srai_epi16(f8b, 3),
	                     _mm256_add_epi16(_mm256_srai_epi16(lanes_mul(q[6], y, 6), 4),
	                                      _mm256_srai_epi16(lanes_mul(q[7], y, 7), 4))));
	sum = _mm256_sub_epi16(sum, _mm256_loadu_si256((const __m256i *)y->bsums4));
	return _mm256_madd_epi16(sum, q3_K_lanes_scales(x->scales));
}

/* Q3_K lanes block x against y: q3_K_lanes_dot of its quants. */
static ALWAYS_INLINE __m256i q3_K_lanes_block(const moe_block_q3_K_lanes *x,
                                              const moe_q8_K_lanes *y)
{
	__m256i q[8];
	q3_K_lanes_unpack(x, q);
	return q3_K_lanes_dot(x, q, y);
}

/* Q2_K lanes, rows w[0..3] against the token p: as q2_K_rows4. */
static void q2_K_lanes_rows4(int64_t n_cols, float out[4], const uint8_t *const w[4],
                             const uint8_t *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_q8_K_lanes *y = (const moe_q8_K_lanes *)p + i;
		const moe_block_q2_K *x[4];
		__m256i v[8];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			x[r] = (const moe_block_q2_K *)w[r] + i;
			q2_K_lanes_block(x[r], y, &v[2 * r], &v[2 * r + 1]);
		}
		const __m256 dd =
		    _mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi32(
		                      (int)load_u32(&x[3]->d), (int)load_u32(&x[2]->d),
		                      (int)load_u32(&x[1]->d), (int)load_u32(&x[0]->d))),
		                  _mm256_set1_ps(y->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), dd, acc);
	}
	float o[8];
	_mm256_storeu_ps(o, acc);
	for (int r = 0; r < 4; r++)
		out[r] = o[2 * r] - o[2 * r + 1];
}

/* Q3_K lanes, rows w[0..3] against the token p: as q3_K_rows4. */
static void q3_K_lanes_rows4(int64_t n_cols, float out[4], const uint8_t *const w[4],
                             const uint8_t *p)
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m128 acc = _mm_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_q8_K_lanes *y = (const moe_q8_K_lanes *)p + i;
		const moe_block_q3_K_lanes *x[4];
		__m256i is[4];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			x[r] = (const moe_block_q3_K_lanes *)w[r] + i;
			is[r] = q3_K_lanes_block(x[r], y);
		}
		const uint64_t d4 = ld16(&x[0]->d) | ld16(&x[1]->d) << 16 | ld16(&x[2]->d) << 32 |
		                    ld16(&x[3]->d) << 48;
		const __m128 d =
		    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)d4)), _mm_set1_ps(y->d));
		acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_i32(is[0], is[1], is[2], is[3])), d, acc);
	}
	_mm_storeu_ps(out, acc);
}

/* Lanes row w (nb blocks) against the T lanes tokens p[0..T): out[t] as
 * row_q2_K / row_q3_K (the quants unpacked once per block for the T). */
static ALWAYS_INLINE void row_q2_K_lanes(int T, int64_t nb, float out[KT], const uint8_t *w,
                                         const uint8_t *const p[KT])
{
	__m128 acc2[KT]; /* lane 0: the scales' sum, lane 1: the mins' */

	for (int t = 0; t < T; t++)
		acc2[t] = _mm_setzero_ps();
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q2_K *x = (const moe_block_q2_K *)w + i;
		const __m128 ddm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(&x->d)));
		__m256i q[8];
		q2_K_lanes_unpack(x, q);
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const moe_q8_K_lanes *y = (const moe_q8_K_lanes *)p[t] + i;
			__m256i is, ms;
			q2_K_lanes_dot(x, q, y, &is, &ms);
			acc2[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum2_i32(is, ms)),
			                       _mm_mul_ps(ddm, _mm_set1_ps(y->d)), acc2[t]);
		}
	}
	for (int t = 0; t < T; t++)
		out[t] = _mm_cvtss_f32(acc2[t]) - _mm_cvtss_f32(_mm_movehdup_ps(acc2[t]));
}

static ALWAYS_INLINE void row_q3_K_lanes(int T, int64_t nb, float out[KT], const uint8_t *w,
                                         const uint8_t *const p[KT])
{
	__m128 sum[KT]; /* lane 0 */

	for (int t = 0; t < T; t++)
		sum[t] = _mm_setzero_ps();
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q3_K_lanes *x = (const moe_block_q3_K_lanes *)w + i;
		const float d = half_to_f32(x->d);
		__m256i q[8];
		q3_K_lanes_unpack(x, q);
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const moe_q8_K_lanes *y = (const moe_q8_K_lanes *)p[t] + i;
			sum[t] = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum_i32_v(q3_K_lanes_dot(x, q, y))),
			                      _mm_set_ss(d * y->d), sum[t]);
		}
	}
	for (int t = 0; t < T; t++)
		out[t] = _mm_cvtss_f32(sum[t]);
}

ROW_FNS(q2_K_lanes)
ROW_FNS(q3_K_lanes)

static const row_tokens_fn fns_q2_K_lanes[4] = {q2_K_lanes_t1, q2_K_lanes_t2, q2_K_lanes_t4,
                                                q2_K_lanes_t8};
static const row_tokens_fn fns_q3_K_lanes[4] = {q3_K_lanes_t1, q3_K_lanes_t2, q3_K_lanes_t4,
                                                q3_K_lanes_t8};

void moe_gemm_q2_K_lanes_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                              size_t w_stride, int64_t n_r, const moe_q8_K_lanes *prep, int64_t n_t)
{
	run_rows(fns_q2_K_lanes, q2_K_lanes_rows4, n_cols, y, ldy, w, w_stride, n_r,
	         (const uint8_t *)prep, (size_t)(n_cols / MOE_QK_K) * sizeof(*prep), n_t);
}

void moe_gemm_q3_K_lanes_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                              size_t w_stride, int64_t n_r, const moe_q8_K_lanes *prep, int64_t n_t)
{
	run_rows(fns_q3_K_lanes, q3_K_lanes_rows4, n_cols, y, ldy, w, w_stride, n_r,
	         (const uint8_t *)prep, (size_t)(n_cols / MOE_QK_K) * sizeof(*prep), n_t);
}
