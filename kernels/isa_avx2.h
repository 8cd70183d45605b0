/*
 * isa_avx2.h - private to kernels/: small AVX2 + FMA + F16C helpers shared by
 * the per-ISA dot and tile files of the AVX2 and AVX-512 levels.  Include only
 * from files compiled with the avx2 flags or a superset (isa_avx2_*.c,
 * isa_avx512_*.c).
 */
#ifndef MOE_KERNELS_ISA_AVX2_H
#define MOE_KERNELS_ISA_AVX2_H

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

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

/* The 8 fp16 values at p[k] + off as floats (packed in general-purpose
 * registers, then one conversion, as half8 does). */
static inline __m256 half8_ptr(const uint8_t *const p[8], size_t off)
{
	uint64_t lo = ld16(p[0] + off) | ld16(p[1] + off) << 16 | ld16(p[2] + off) << 32 |
	              ld16(p[3] + off) << 48;
	uint64_t hi = ld16(p[4] + off) | ld16(p[5] + off) << 16 | ld16(p[6] + off) << 32 |
	              ld16(p[7] + off) << 48;
	__asm__("" : "+r"(lo));
	__asm__("" : "+r"(hi));
	return _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo));
}

/* Half an E8M0 scale per lane (moe_e8m0_half): 2^(e-128), NaN for 255. */
static inline __m256 e8m0_half_v(__m256i e)
{
	const __m256i one = _mm256_set1_epi32(1);
	__m256i norm = _mm256_slli_epi32(_mm256_sub_epi32(e, one), 23);
	__m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
	__m256i bits = _mm256_blendv_epi8(norm, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e));
	bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7fc00000),
	                          _mm256_cmpeq_epi32(e, _mm256_set1_epi32(255)));
	return _mm256_castsi256_ps(bits);
}

/* moe_e8m0_half of the byte at p[k] + off in lane k (MXFP4's row scales):
 * the 8 exponents packed in a general-purpose register, one move over. */
static inline __m256 e8m0_half8_ptr(const uint8_t *const p[8], size_t off)
{
	uint64_t e = 0;
	for (int k = 0; k < 8; k++)
		e |= (uint64_t)p[k][off] << (8 * k);
	__asm__("" : "+r"(e));
	return e8m0_half_v(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)e)));
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

/* One Q4_K/Q5_K block of a one-row pair (b: the weight block, y: the token's):
 * acc lane 0 += isum (the block's integer sum, spread over 8 lanes) at
 * d * dy, lane 1 += the mins' sum (sm: k4_scales_mins) at dmin * dy, each by
 * one int32 -> f32 conversion and one fused multiply-add, as a tile lane;
 * both sums reduced together, kept in vector registers (a trip through
 * general-purpose ones per block cost ~25 % of the one-row speed). */
static inline __m128 k45_row_block(__m128 acc, __m256i isum, __m256i sm, const uint8_t *b,
                                   const moe_block_q8_K *y)
{
	const __m128 dd = k4_d_dmin((const uint16_t *)(b + offsetof(moe_block_q4_K, d)), y->d);
	__m256i h = _mm256_hadd_epi32(isum, k4_mins(sm, y->bsums));
	h = _mm256_hadd_epi32(h, h);
	const __m128i sums =
	    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
	return _mm_fmadd_ps(_mm_cvtepi32_ps(sums), dd, acc);
}

/* A one-row pair's result from k45_row_block's accumulator: lane 0 - lane 1. */
static inline float k45_row_result(__m128 acc)
{
	return _mm_cvtss_f32(acc) - _mm_cvtss_f32(_mm_movehdup_ps(acc));
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

/* The 32 quants of Q4_K/Q5_K chunk c (64 values) from its 32 quant bytes q:
 * *lo = values 0..31 (low nibbles), *hi = values 32..63 (high nibbles), with
 * Q5_K's fifth bit (qh bits 2c and 2c + 1) when hbits. */
static inline void k45_unpack(__m256i *lo, __m256i *hi, __m256i q, __m256i qh, int c, bool hbits)
{
	const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);
	*lo = _mm256_and_si256(q, m4);
	*hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
	if (hbits) {
		*lo = _mm256_or_si256(*lo, _mm256_and_si256(bit_to_4(qh, 2 * c), b16));
		*hi = _mm256_or_si256(*hi, _mm256_and_si256(bit_to_4(qh, 2 * c + 1), b16));
	}
}

/* The 6-bit quants (0..63) of one Q6_K half-block from its 64 ql bytes (l0,
 * l1) and 32 qh bytes: q[j] = values 32j..32j + 31 of the half. */
static inline void q6_assemble(__m256i q[4], __m256i l0, __m256i l1, __m256i qh)
{
	const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(0x30);
	q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
	                       _mm256_and_si256(_mm256_slli_epi16(qh, 4), m3));
	q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
	                       _mm256_and_si256(_mm256_slli_epi16(qh, 2), m3));
	q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
	                       _mm256_and_si256(qh, m3));
	q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
	                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), m3));
}

/* For 8 tokens of one Q4_K/Q5_K block: lane t = sum over sub-blocks s of
 * mn[s] * BS[s][t] (BS = bsums summed per 32 values), from the mins in sm
 * (k4_scales_mins) and bs[k] = BS[2k][t], BS[2k+1][t] for t = 0..7: 4 madds. */
static inline __m256i k8_mins(__m256i sm, const int16_t bs[4][16])
{
	__m256i m = _mm256_setzero_si256();
	for (int k = 0; k < 4; k++) {
		const __m256i pick = _mm256_set1_epi32(
		    (int)(0x80008000u | (uint32_t)(8 + 2 * k) | (uint32_t)(9 + 2 * k) << 16));
		m = _mm256_add_epi32(m,
		                     _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bs[k]),
		                                       _mm256_shuffle_epi8(sm, pick)));
	}
	return m;
}

/* A tile of 8 (row, token) pairs: rows w[0..R), tokens a[0..T) with R * T =
 * 8, as pointers to their first block; out[k] = pair k's result (row k / T,
 * token k % T); prep: gathered token data or NULL. */
typedef void (*moe_tile_fn)(int64_t n_cols, float out[8], const uint8_t *const w[8],
                            const uint8_t *const a[8], const void *prep);

/* name##_8x1, name##_2x4 and name##_1x8: the 8x1, 2x4 and 1x8 moe_tile_fn
 * shapes of the including file's static tile(kind, R, T, n_cols, out, w, a)
 * (isa_avx2_iq2.c, isa_avx2_iq4.c), for run_tiles_plain. */
#define AVX2_TILE_SHAPES(name, kind)                                                               \
	static void name##_8x1(int64_t n, float o[8], const uint8_t *const w[8],                   \
	                       const uint8_t *const a[8], const void *prep)                        \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 8, 1, n, o, w, a);                                                      \
	}                                                                                          \
	static void name##_2x4(int64_t n, float o[8], const uint8_t *const w[8],                   \
	                       const uint8_t *const a[8], const void *prep)                        \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 2, 4, n, o, w, a);                                                      \
	}                                                                                          \
	static void name##_1x8(int64_t n, float o[8], const uint8_t *const w[8],                   \
	                       const uint8_t *const a[8], const void *prep)                        \
	{                                                                                          \
		(void)prep;                                                                        \
		tile(kind, 1, 8, n, o, w, a);                                                      \
	}

/* The rotation d (0..7) for run_lanes8's runs of seg rows of w_stride bytes:
 * lane k starts d * k rows into its run, so lanes sit k * (seg + d) rows
 * apart, and d is chosen to keep those distances (mod 4 KiB) as far from
 * each other as it can.  Runs a multiple of 4 KiB apart put all 8 streams on
 * the same L1 set and cost a sixth of the streaming rate (Q4_0, 1024-row
 * claims of 4096 columns: 19.1 against 22.7 GB/s on one Zen 4 core). */
static inline int64_t lanes8_rotation(int64_t seg, size_t w_stride)
{
	int64_t best_d = 0, best = -1;
	for (int64_t d = 0; d < 8 && d < seg; d++) {
		const uint64_t s = (uint64_t)(seg + d) * w_stride;
		int64_t near = 4096;
		for (uint64_t k = 1; k < 8; k++) {
			const int64_t o = (int64_t)(k * s % 4096);
			const int64_t c = o < 4096 - o ? o : 4096 - o;
			near = c < near ? c : near;
		}
		if (near > best) {
			best = near;
			best_d = d;
		}
	}
	return best_d;
}

/* For run_lanes8's tiles, once per block: each lane's stream from 512
 * bytes ahead into L1.  With the rotation above, the AVX-512 tile streamed
 * Q4_0 at 19.7-21.1 GB/s with it against 18.6-18.8 without, Q8_0 at
 * 23.7-26.8 against 20.0-21.0 (one Zen 4 core, three alternating runs of
 * bench kernels); the transposed Q4_0 tiles (q40_rows) use it at both levels
 * (AVX2: 23.0-23.9 against 20.4-21.5 GB/s streaming 1024-row claims), the
 * AVX2 level's tile_q32 gained nothing and does not.  Always inlined: GCC
 * otherwise finds the function free of side effects and drops the calls. */
static inline __attribute__((always_inline)) void lanes8_prefetch(const uint8_t *const w[8],
                                                                  size_t off)
{
	for (int r = 0; r < 8; r++)
		_mm_prefetch((const char *)(w[r] + off + 512), _MM_HINT_T0);
}

/* Rows [0, n_r) of w against the one token at a by an 8-row x 1-token tile,
 * y[r] = row r's result: lane k walks the k-th of 8 contiguous runs of the
 * rows (the last lanes clamped to the last row and dropped), so the tile
 * reads 8 long sequential streams that the hardware prefetcher follows, not
 * 8 adjacent rows of a few KB that end with every tile (those streamed at
 * half the in-cache rate).  Each lane starts lanes8_rotation() * k rows into
 * its run and wraps around to the run's start.  prep goes to every tile. */
static inline void run_lanes8(moe_tile_fn tile, int64_t n_cols, float *y, const uint8_t *w,
                              size_t w_stride, int64_t n_r, const uint8_t *a, const void *prep)
{
	const int64_t seg = (n_r + 7) / 8;
	const int64_t rot = lanes8_rotation(seg, w_stride);
	const uint8_t *ap[8] = {a, a, a, a, a, a, a, a};
	for (int64_t j = 0; j < seg; j++) {
		const uint8_t *wp[8];
		int64_t row[8];
		float out[8];
		for (int k = 0; k < 8; k++) {
			row[k] = k * seg + (j + k * rot) % seg;
			wp[k] = w + (size_t)(row[k] < n_r ? row[k] : n_r - 1) * w_stride;
		}
		tile(n_cols, out, wp, ap, prep);
		for (int k = 0; k < 8; k++)
			if (row[k] < n_r)
				y[row[k]] = out[k];
	}
}

/* Fills prep (a tile's per-token data) from the tokens a[0..8) of one group,
 * for rows of n_cols columns. */
typedef void (*moe_tile_gather_fn)(void *prep, int64_t n_cols, const uint8_t *const a[8]);

/* Rows [0, n_r) x tokens [t0, t1) by R x T tiles of tile (R * T = 8), the
 * last row / token repeated in edge tiles (their lanes dropped) and the
 * unused pointers (rows past R, tokens past T) set to the first; every tile
 * gets prep, which gather (where not NULL) fills first for each group of T
 * tokens.  The tile drivers of isa_avx2_gemm.c, isa_avx2_iq2.c and
 * isa_avx2_iq4.c. */
static inline void run_grid(moe_tile_fn tile, int R, int T, int64_t n_cols, float *y, int64_t ldy,
                            const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                            size_t x_stride, int64_t t0, int64_t t1, moe_tile_gather_fn gather,
                            void *prep)
{
	const uint8_t *wp[8], *ap[8];
	float out[8];

	for (int64_t tt = t0; tt < t1; tt += T) {
		for (int t = 0; t < T; t++) {
			int64_t tk = tt + t < t1 ? tt + t : t1 - 1;
			ap[t] = x + (size_t)tk * x_stride;
		}
		for (int t = T; t < 8; t++)
			ap[t] = ap[0];
		if (gather != NULL)
			gather(prep, n_cols, ap);
		for (int64_t r0 = 0; r0 < n_r; r0 += R) {
			for (int r = 0; r < R; r++) {
				int64_t rr = r0 + r < n_r ? r0 + r : n_r - 1;
				wp[r] = w + (size_t)rr * w_stride;
			}
			for (int r = R; r < 8; r++)
				wp[r] = wp[0];
			tile(n_cols, out, wp, ap, prep);
			for (int k = 0; k < R * T; k++) {
				int64_t r = r0 + k / T, t = tt + k % T;
				if (r < n_r && t < t1)
					y[t * ldy + r] = out[k];
			}
		}
	}
}

/* run_grid with tiles that take no prep, but one token over 16 rows or more
 * by the 8x1 tile over 8 row runs (run_lanes8). */
static inline void run_shape_plain(moe_tile_fn tile, int R, int T, int64_t n_cols, float *y,
                                   int64_t ldy, const uint8_t *w, size_t w_stride, int64_t n_r,
                                   const uint8_t *x, size_t x_stride, int64_t t0, int64_t t1)
{
	if (R == 8 && T == 1 && n_r >= 16)
		run_lanes8(tile, n_cols, y + t0 * ldy, w, w_stride, n_r, x + (size_t)t0 * x_stride,
		           NULL);
	else
		run_grid(tile, R, T, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, t0, t1, NULL,
		         NULL);
}

/* Tokens [0, n_t) over rows [0, n_r) with a type's 8x1, 2x4 and 1x8 tiles
 * (run_shape_plain): groups of 8 tokens take 1x8 tiles; a remainder of 1
 * token 8x1, of 2-4 2x4, of 5-7 one padded 1x8 (as isa_avx2_gemm.c's
 * run_tiles).  Which shape computes an element does not change its bits. */
static inline void run_tiles_plain(moe_tile_fn r8t1, moe_tile_fn r2t4, moe_tile_fn r1t8,
                                   int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                                   size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride,
                                   int64_t n_t)
{
	const int64_t full = n_t / 8 * 8, rem = n_t - full;
	if (full > 0)
		run_shape_plain(r1t8, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0, full);
	if (rem == 1)
		run_shape_plain(r8t1, 8, 1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full,
		                n_t);
	else if (rem >= 2 && rem <= 4)
		run_shape_plain(r2t4, 2, 4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full,
		                n_t);
	else if (rem > 4)
		run_shape_plain(r1t8, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full,
		                n_t);
}

/* The exact sum of v's 8 int32 lanes (they fit: callers' block sums), in
 * lane 0 of the result. */
static inline __m128i hsum_i32_v(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
	return _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 1, 1, 1)));
}

/* The 32 sign bytes of 4 groups (IQ2_XXS, IQ2_XS, IQ3_XXS) from v, whose 64-bit lane
 * l holds group l's 7 stored sign bits at bits 0-6 and anything at bit 7:
 * lane l's byte 0 spread over its 8 bytes, byte j tested for bit j (mask m:
 * -1 where set), then byte 7 made the parity of bits 0-6: vpsadbw of m
 * counts the set bits 0-7 (times 255), bit 0 of that shifted to bit 63
 * flips byte 7's sign exactly when bit 7 disagrees with that parity.  The
 * result, m | 1 with that flip, is negative where the value is negative and
 * never 0 (what vpsignb needs).  Vector instructions instead of 4 table
 * loads (moe_iq2_esigns64), their indices' general-register work and 3
 * inserts per sub-block (isa_avx2_iq2.c, isa_avx2_iq13.c). */
static inline __attribute__((always_inline)) __m256i esigns4(__m256i v)
{
	const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 0,
	                                        0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	v = _mm256_shuffle_epi8(v, spread);
	const __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
	const __m256i p = _mm256_slli_epi64(_mm256_sad_epu8(m, _mm256_setzero_si256()), 63);
	return _mm256_or_si256(_mm256_xor_si256(m, p), _mm256_set1_epi8(1));
}

/* ---- Q4_0, one token, the rows transposed into the lanes -------------------------
 *
 * The one-token 8x1 Q4_0 tiles of both levels (isa_avx2_gemm.c q4_0_8x1_t,
 * isa_avx512_gemm.c q4_0_8x1_t) load the 8 rows' 16 code bytes of a block
 * in pairs [row r | row r + 4] and transpose them by dword (q40_rows), so
 * that vector m holds dword m of every row: lane r = row r, no reduction at
 * the end.  Each meets the token's matching 4 values broadcast (bcast4); the
 * -8 of every code is the block's q40_prep base, one value for all rows. */
typedef struct q40_prep {
	int32_t base; /* -8 x the sum of the token block's 32 values */
	float d;      /* the token block's scale */
} q40_prep;

enum { Q40_STACK_BLOCKS = 512 }; /* 4 KiB on the stack: up to 16384 columns */

static inline void prep_q40(q40_prep *p, int64_t nb, const uint8_t *a)
{
	const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_0 *ab = (const moe_block_q8_0 *)a + i;
		const __m256i y = _mm256_loadu_si256((const __m256i *)ab->qs);
		const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, y), ones16);
		p[i].base = -8 * _mm_cvtsi128_si32(hsum_i32_v(s));
		p[i].d = half_to_f32(ab->d);
	}
}

/* A 4x4 dword transpose in each 128-bit half of r[0..3]: lane l of r[k]
 * becomes dword k of the input r[l], lane 4 + l dword 4 + k of it.  (Also
 * isa_avx512_gemm.c's Q6_K sub-blocks: vector j holding sub-blocks 2j |
 * 2j + 1 becomes 4 columns.) */
static inline void transpose4x2(__m256i r[4])
{
	const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]),
	              t1 = _mm256_unpackhi_epi32(r[0], r[1]);
	const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]),
	              t3 = _mm256_unpackhi_epi32(r[2], r[3]);
	r[0] = _mm256_unpacklo_epi64(t0, t2);
	r[1] = _mm256_unpackhi_epi64(t0, t2);
	r[2] = _mm256_unpacklo_epi64(t1, t3);
	r[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* A block of 256 values as 8 rows (sub-blocks s) of 8 dwords (4 values
 * each) -> its 8 columns: on return r[k] holds, in 32-bit lane s, dword k of
 * row s (the AVX-512 sub-blocks-in-lanes tiles: isa_avx512_gemm.c,
 * isa_avx512_iq4.c). */
static inline __attribute__((always_inline)) void transpose8(__m256i r[8])
{
	transpose4x2(r);
	transpose4x2(r + 4);
	for (int k = 0; k < 4; k++) {
		const __m256i u = r[k];
		r[k] = _mm256_permute2x128_si256(u, r[4 + k], 0x20);
		r[4 + k] = _mm256_permute2x128_si256(u, r[4 + k], 0x31);
	}
}

/* v[m] = dword m of the code bytes at w[r] + qo, lane r (m = 0..3). */
static inline void q40_rows(__m256i v[4], const uint8_t *const w[8], size_t qo)
{
	for (int k = 0; k < 4; k++)
		v[k] = _mm256_inserti128_si256(
		    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(w[k] + qo))),
		    _mm_loadu_si128((const __m128i *)(w[k + 4] + qo)), 1);
	transpose4x2(v);
}

/* The 4 bytes at p in every dword. */
static inline __m256i bcast4(const int8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return _mm256_set1_epi32(v);
}

/* run_lanes8 with tile_t and a q40_prep of the token at a (on the stack, or
 * the heap for rows over Q40_STACK_BLOCKS blocks); without memory for it,
 * run_lanes8 with plain, which needs none (the same results). */
static inline void run_lanes8_q40(moe_tile_fn tile_t, moe_tile_fn plain, int64_t n_cols, float *y,
                                  const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK32;
	q40_prep stack[Q40_STACK_BLOCKS];
	q40_prep *p = nb <= Q40_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
	if (p == NULL) {
		run_lanes8(plain, n_cols, y, w, w_stride, n_r, a, NULL);
		return;
	}
	prep_q40(p, nb, a);
	/* GCC (ASan build) cannot see that prep_q40 wrote what the tiles read */
	__asm__("" : : "r"(p) : "memory");
	run_lanes8(tile_t, n_cols, y, w, w_stride, n_r, a, p);
	if (p != stack)
		free(p);
}

/* ---- one token, four rows at a time (decode) --------------------------------------
 *
 * The one-token K-quant kernels (isa_avx2_gemm.c, isa_avx2_k23.c) take four
 * rows per pass: the token's loads serve four rows, and the four rows' block
 * sums are reduced together (hsum4_i32, sum8_i32) and converted and
 * fused-multiply-added once, in a vector whose lanes are the rows'
 * accumulators: per lane the one-row arithmetic, so the same bits. */

/* out[r] = row w[r] against the one token at a (n_cols columns). */
typedef void (*rows4_fn)(int64_t n_cols, float out[4], const uint8_t *const w[4], const uint8_t *a);

/* The exact sums of the 8 int32 lanes of a, b, c and d, in lanes 0-3. */
static inline __m128i hsum4_i32(__m256i a, __m256i b, __m256i c, __m256i d)
{
	const __m256i ab =
	    _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
	const __m256i cd =
	    _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
	const __m256i s =
	    _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
	return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* Rows [0, n_r) (n_r >= 4) against the one token at a, four at a time: the
 * rows in four contiguous runs, row j of each beside the others, so that each
 * run is one sequential stream for the hardware prefetcher (as run_lanes8
 * lays out its 8); a short last run repeats its last row and drops it. */
static inline void run_rows4(rows4_fn fn, int64_t n_cols, float *y, const uint8_t *w,
                             size_t w_stride, int64_t n_r, const uint8_t *a)
{
	const int64_t seg = (n_r + 3) / 4;
	for (int64_t j = 0; j < seg; j++) {
		const uint8_t *wp[4];
		int64_t row[4];
		float out[4];
		for (int k = 0; k < 4; k++) {
			row[k] = k * seg + j;
			wp[k] = w + (size_t)(row[k] < n_r ? row[k] : n_r - 1) * w_stride;
		}
		fn(n_cols, out, wp, a);
		for (int k = 0; k < 4; k++)
			if (row[k] < n_r)
				y[row[k]] = out[k];
	}
}

/* ---- one row against up to 8 tokens ------------------------------------------------
 *
 * The 256-block types without tiles (isa_avx2_k23.c, isa_avx2_iq13.c) run one
 * row at a time against a group of 1, 2, 4 or 8 tokens. */

/* out[t] = row w (nb blocks) against token a[t], t < the function's group. */
typedef void (*row_tokens_fn)(int64_t nb, float out[8], const uint8_t *w,
                              const uint8_t *const a[8]);

/* Tokens [0, n_t) in groups of 8 (fns[3]), then one of 4, 2 and 1 as needed
 * (fns[2], fns[1], fns[0]); each group meets every row (the caller keeps the
 * rows few enough to stay in cache when there are several groups). */
static inline void run_row_groups(const row_tokens_fn fns[4], int64_t n_cols, float *y, int64_t ldy,
                                  const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                                  size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const uint8_t *ap[8];
	float out[8];

	for (int64_t t0 = 0; t0 < n_t;) {
		const int64_t left = n_t - t0;
		const int k = left >= 8 ? 3 : left >= 4 ? 2 : left >= 2 ? 1 : 0;
		const int T = 1 << k;
		for (int t = 0; t < T; t++)
			ap[t] = x + (size_t)(t0 + t) * x_stride;
		for (int64_t r = 0; r < n_r; r++) {
			fns[k](nb, out, w + (size_t)r * w_stride, ap);
			for (int t = 0; t < T; t++)
				y[(t0 + t) * ldy + r] = out[t];
		}
		t0 += T;
	}
}

#endif
