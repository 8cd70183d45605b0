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

#include "kernels/quants.h"

static inline float hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float half_to_f32(uint16_t h)
{
	return _cvtsh_ss(h);
}

static inline uint64_t ld16(const void *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

/* The 8 fp16 values at p, p + stride, ..., p + 7 * stride, as floats.  They
 * are packed in two general-purpose registers (integer ALUs, otherwise idle
 * here) and moved over with vmovq + vpinsrq; the empty asm statements keep
 * the compiler from turning the packing into a long chain of vector
 * shuffles (which it does otherwise, and which costs more than it saves). */
static inline __m256 half8(const uint8_t *p, size_t stride)
{
	uint64_t lo = ld16(p) | ld16(p + stride) << 16 | ld16(p + 2 * stride) << 32 |
	              ld16(p + 3 * stride) << 48;
	uint64_t hi = ld16(p + 4 * stride) | ld16(p + 5 * stride) << 16 |
	              ld16(p + 6 * stride) << 32 | ld16(p + 7 * stride) << 48;
	__asm__("" : "+r"(lo));
	__asm__("" : "+r"(hi));
	return _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo));
}

/* 16 bytes of nibbles -> 32 bytes: values 0..15 = low nibbles, 16..31 = high.
 * The 16 bytes are loaded into both halves; the upper half is shifted. */
static inline __m256i unpack_nibbles(const uint8_t *p)
{
	__m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
	b = _mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0));
	return _mm256_and_si256(b, _mm256_set1_epi8(15));
}

/* 32 bits -> 32 bytes, 0xff where the bit is set (byte k <- bit k). */
static inline __m256i spread_bits(const uint8_t *p)
{
	uint32_t bits;
	memcpy(&bits, p, 4);
	const __m256i pick =
	    _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll, 0x0101010101010101ll, 0);
	const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	__m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
	return _mm256_cmpeq_epi8(_mm256_and_si256(b, sel), sel);
}

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

/* 8 vectors of 16 int16 partial sums -> 8 int32 lanes, lane k = sum of v[k].
 * The tree keeps the two int16 halves of each 32-bit unit in one block, so
 * one multiply-add by ones finishes it; each int16 lane ends as the sum of 8
 * of v[k]'s lanes, which callers guarantee fits (16 products per lane). */
static inline __m256i sum8_i16(const __m256i v[8])
{
	__m256i t[4], u[2];

	for (int k = 0; k < 4; k++)
		t[k] = _mm256_add_epi16(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
		                        _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
	for (int k = 0; k < 2; k++)
		u[k] = _mm256_add_epi16(_mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
		                        _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
	__m256i w = _mm256_add_epi16(_mm256_permute2x128_si256(u[0], u[1], 0x20),
	                             _mm256_permute2x128_si256(u[0], u[1], 0x31));
	return _mm256_madd_epi16(w, _mm256_set1_epi16(1));
}

/* 8 vectors of 8 int32 partial sums -> 8 int32 lanes, lane k = sum of v[k]. */
static inline __m256i sum8_i32(const __m256i v[8])
{
	__m256i t[4], u[2];

	for (int k = 0; k < 4; k++)
		t[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
		                        _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
	for (int k = 0; k < 2; k++)
		u[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
		                        _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
	return _mm256_add_epi32(_mm256_permute2x128_si256(u[0], u[1], 0x20),
	                        _mm256_permute2x128_si256(u[0], u[1], 0x31));
}

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

/* The 8 six-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K/Q5_K
 * block, in both 128-bit halves, unpacked in vector registers from the 12
 * bytes at p as 32-bit words u0 u1 u2 (layout in quants.h):
 *   sc0-3 = u0 & 0x3f..             sc4-7 = (u2 & 0x0f..) | ((u0 >> 2) & 0x30..)
 *   mn0-3 = u1 & 0x3f..             mn4-7 = ((u2 >> 4) & 0x0f..) | ((u1 >> 2) & 0x30..)
 * Reads 16 bytes at p (the caller's block continues past the scales).  The
 * consumers pick bytes out of it with one byte shuffle each. */
static inline __m256i k4_scales_mins(const uint8_t *p)
{
	__m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
	__m256i a = _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
	__m256i b = _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
	__m256i lo =
	    _mm256_and_si256(_mm256_srlv_epi32(a, _mm256_set_epi32(4, 0, 0, 0, 4, 0, 0, 0)),
	                     _mm256_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f,
	                                      0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
	__m256i hi = _mm256_and_si256(
	    _mm256_srli_epi32(b, 2),
	    _mm256_set_epi32(0x30303030, 0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0));
	return _mm256_or_si256(lo, hi);
}

/* sum over 8 sub-blocks of mn[s] * (bsums[2s] + bsums[2s+1]), as 8 int32 lanes:
 * word j of the bsums is multiplied by mn[j / 2] (byte 8 + j/2 of sm). */
static inline __m256i k4_mins(__m256i sm, const int16_t *bsums)
{
	const __m256i pick =
	    _mm256_setr_epi16((short)0x8008, (short)0x8008, (short)0x8009, (short)0x8009,
	                      (short)0x800a, (short)0x800a, (short)0x800b, (short)0x800b,
	                      (short)0x800c, (short)0x800c, (short)0x800d, (short)0x800d,
	                      (short)0x800e, (short)0x800e, (short)0x800f, (short)0x800f);
	return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums),
	                         _mm256_shuffle_epi8(sm, pick));
}

/* Byte shuffle mask giving scale byte e of sm as every int16 lane. */
static inline __m256i pick_scale(int e)
{
	return _mm256_set1_epi16((short)(0x8000 | e));
}

/* [d * dy, dmin * dy, ...] from the fp16 pair d, dmin at p (both
 * conversions in one instruction; the products are the references'). */
static inline __m128 k4_d_dmin(const uint16_t *p, float dy)
{
	uint32_t u;
	memcpy(&u, p, 4);
	return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)u)), _mm_set1_ps(dy));
}

/* Keeps v in a register: without it the compiler folds one use of a load into
 * an instruction's memory operand and loads the same bytes again for the
 * other use, and loads are what these loops run short of. */
static inline void pin(__m256i *v)
{
	__asm__("" : "+x"(*v));
}

/* Shuffle mask that broadcasts int16 element e of each 128-bit half. */
static inline __m256i pick16(int e)
{
	return _mm256_set1_epi16((short)((2 * e + 1) << 8 | 2 * e));
}

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

/* qh shifted so that bit k of each byte lands on bit 4 (other bits are
 * garbage, to be masked): 16-bit shifts by at most 4 keep bit k inside its
 * byte. */
static inline __m256i bit_to_4(__m256i qh, int k)
{
	if (k < 4)
		return _mm256_slli_epi16(qh, 4 - k);
	if (k > 4)
		return _mm256_srli_epi16(qh, k - 4);
	return qh;
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
	const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(0x30);

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

			q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
			                       _mm256_and_si256(_mm256_slli_epi16(qh, 4), m3));
			q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
			                       _mm256_and_si256(_mm256_slli_epi16(qh, 2), m3));
			q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
			                       _mm256_and_si256(qh, m3));
			q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
			                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3));
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
}
