/*
 * isa_avx512_iq4.c - tile kernels (gemm.h) of IQ4_NL and MXFP4 (x Q8_0) and
 * IQ4_XS (x Q8_K) at the AVX-512 level, built with the AVX-512 flags
 * (F/BW/VL/DQ + VNNI; no VBMI: the level does not require it).
 *
 * One token (decode: a lone token, or the last one after groups of 8) goes
 * over 8 row runs (run_lanes8); several tokens take 1x8 tiles (groups of 8,
 * and 5..7 left as one padded group) and, for IQ4_NL / MXFP4, 2x4 tiles
 * (2..4 left; IQ4_XS: the AVX2 tiles, isa_avx2_iq4.c).  All keep the
 * canonical arithmetic of quants.h: per block the exact integer sum, then
 * (float)isum times (dw * dy) fused-added into the element's accumulator in
 * block order, so the bits are the AVX2 tiles' and the scalar reference's.
 *
 * The integers are formed by VNNI's vpdpbusd (u8 x s8, 4 products summed
 * into an int32 lane) on the levels shifted to unsigned: one byte shuffle
 * of the code from the table levels + 128 (IQ4: 1..241, MXFP4: 116..140),
 * and 128 x the token's sums taken back exactly (per token block, formed
 * once per token or token group, or per block for the 8 rows of a
 * one-token IQ4_XS tile, as the accumulators' start or added to the
 * reduced sums).  No sign trick: an activation of -128 is exact too
 * (vpsignb cannot negate it).  An int32 lane meets at most 32 x 241 x 128
 * (< 2^22) before the offset, and an IQ4_XS block at most 8 x 32 x 32 x 127
 * x 128 (< 2^27).
 *
 *   - IQ4_NL, MXFP4, one token: the 8 rows transposed into the lanes as
 *     Q4_0's one-token tile (isa_avx2.h q40_rows): vector m = dword m of
 *     every row's codes, lane r = row r; low and high nibbles looked up in
 *     place and met by the token's 4 matching values; two blocks per zmm.
 *   - IQ4_NL, MXFP4, several tokens: each row's 32 levels looked up once per
 *     block, one vpdpbusd per token, the 8 pairs reduced together (sum8_i32).
 *   - IQ4_XS, one token: per row 4 sub-blocks per zmm (64 code bytes; the
 *     token's values rearranged once per block for the 8 rows), one
 *     vpdpbusd per nibble half, the lanes reduced to the 8 sub-block sums,
 *     one vpmulld by the scales ls - 32 (worked out in a general-purpose
 *     register), the 8 rows reduced together: lane r = row r (on Zen 5
 *     1.47-1.63x the AVX2 tile in L2 against 1.14-1.35x for a 256-bit twin
 *     with two sub-blocks per vector; DESIGN).
 *   - IQ4_XS, 8 tokens: sub-blocks in lanes, as isa_avx512_gemm.c's K-quant
 *     1x8 tiles: each block's levels transposed once so that one vpdpbusd
 *     meets 4 values of all 8 sub-blocks, one vpmulld per token by the 8
 *     scales.
 *
 * The 512-bit vectors (one-token tiles) were measured on Zen 5 only (full
 * 512-bit integer units); on Zen 4, which runs them in two passes, they may
 * lose to 256-bit ones (see docs/DESIGN.md).
 */
#include <stddef.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { KIND_NL, KIND_MX };

/* The 16 levels of kind's codes + 128 as u8, in both 128-bit halves. */
static ALWAYS_INLINE __m256i levels_u8(int kind)
{
	const int8_t *t = kind == KIND_MX ? moe_mxfp4_values : moe_iq4nl_values;
	return _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t)),
	                        _mm256_set1_epi8((char)0x80));
}

/* ---- IQ4_NL / MXFP4 x Q8_0, one token, the rows transposed into the lanes -------- */

/* Per token block: base = -128 x the sum of its 32 values (the levels'
 * offset), d = its scale. */
static void prep_u128(q40_prep *p, int64_t nb, const uint8_t *a)
{
	const __m256i ones8 = _mm256_set1_epi8(1);
	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_0 *ab = (const moe_block_q8_0 *)a + i;
		const __m256i y = _mm256_loadu_si256((const __m256i *)ab->qs);
		const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones8, y);
		p[i].base = -128 * _mm_cvtsi128_si32(hsum_i32_v(s));
		p[i].d = half_to_f32(ab->d);
	}
}

/* One block i of the 8 rows w[0..8) against the token's values y, added to
 * acc: vector m holds dword m of each row's 16 code bytes (values 4m..4m+3
 * in the low nibbles, 16+4m.. in the high); each nibble half is looked up
 * in place (AND, or shift and AND, then vpshufb) and met by the token's
 * matching 4 values broadcast; the low half's accumulator starts at the
 * prep's base. */
static ALWAYS_INLINE __m256 block_t(int kind, __m256 acc, __m256i lut, const uint8_t *const w[8],
                                    size_t wo, const int8_t *y, const q40_prep *p)
{
	const size_t qo =
	    kind == KIND_MX ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const __m256i m0f = _mm256_set1_epi8(15);
	__m256i v[4];
	q40_rows(v, w, wo + qo);
	__m256i lo = _mm256_set1_epi32(p->base), hi = _mm256_setzero_si256();
#pragma GCC unroll 4
	for (int m = 0; m < 4; m++) {
		const __m256i l0 = _mm256_shuffle_epi8(lut, _mm256_and_si256(v[m], m0f));
		const __m256i l1 =
		    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v[m], 4), m0f));
		lo = _mm256_dpbusd_epi32(lo, l0, bcast4(y + 4 * m));
		hi = _mm256_dpbusd_epi32(hi, l1, bcast4(y + 16 + 4 * m));
	}
	const __m256 dw = kind == KIND_MX ? e8m0_half8_ptr(w, wo) : half8_ptr(w, wo);
	const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(p->d));
	return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi)), d, acc);
}

/* The 8 rows w[0..8) against the one token a[0]: out[r] = row r's result.
 * Blocks i and i + 1 share 512-bit vectors (lane 8h + r: row r, block i +
 * h): the rows' code bytes transposed as block_t's, the token's 4 values
 * of each half picked by vpermd; the two blocks' sums are converted
 * together and fused-multiply-added one block after the other.  A last odd
 * block takes block_t. */
static ALWAYS_INLINE void tile_t(int kind, int64_t n_cols, float out[8], const uint8_t *const w[8],
                                 const uint8_t *const a[8], const void *prep)
{
	const bool mx = kind == KIND_MX;
	const q40_prep *p = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = mx ? sizeof(moe_block_mxfp4) : sizeof(moe_block_iq4_nl);
	const size_t qo = mx ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const __m256i lut = levels_u8(kind);
	const __m512i lutz = _mm512_broadcast_i32x4(_mm256_castsi256_si128(lut));
	const __m512i m0f = _mm512_set1_epi8(15);
	const moe_block_q8_0 *yb = (const moe_block_q8_0 *)a[0];
	__m256 acc = _mm256_setzero_ps();
	int64_t i = 0;

	for (; i + 1 < nb; i += 2) {
		const size_t wo = (size_t)i * wbs;
		lanes8_prefetch(w, wo);
		__m512i z[4];
#pragma GCC unroll 4
		for (int k = 0; k < 4; k++) {
			const uint8_t *r0 = w[k] + wo + qo, *r1 = w[k + 4] + wo + qo;
			__m512i t = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)r0));
			t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)r1), 1);
			t = _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(r0 + wbs)), 2);
			z[k] =
			    _mm512_inserti32x4(t, _mm_loadu_si128((const __m128i *)(r1 + wbs)), 3);
		}
		{ /* 4x4 dword transpose in each 128-bit lane (transpose4x2) */
			const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]);
			const __m512i t1 = _mm512_unpackhi_epi32(z[0], z[1]);
			const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]);
			const __m512i t3 = _mm512_unpackhi_epi32(z[2], z[3]);
			z[0] = _mm512_unpacklo_epi64(t0, t2);
			z[1] = _mm512_unpackhi_epi64(t0, t2);
			z[2] = _mm512_unpacklo_epi64(t1, t3);
			z[3] = _mm512_unpackhi_epi64(t1, t3);
		}
		const __m512i yy = _mm512_inserti64x4(
		    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)yb[i].qs)),
		    _mm256_loadu_si256((const __m256i *)yb[i + 1].qs), 1);
		__m512i lo = _mm512_inserti64x4(_mm512_set1_epi32(p[i].base),
		                                _mm256_set1_epi32(p[i + 1].base), 1);
		__m512i hi = _mm512_setzero_si512();
#pragma GCC unroll 4
		for (int m = 0; m < 4; m++) {
			/* dword m (values 4m..) and 4 + m (16 + 4m..) of each block */
			const __m512i ilo =
			    _mm512_inserti64x4(_mm512_set1_epi32(m), _mm256_set1_epi32(8 + m), 1);
			const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(4));
			const __m512i l0 = _mm512_shuffle_epi8(lutz, _mm512_and_si512(z[m], m0f));
			const __m512i l1 = _mm512_shuffle_epi8(
			    lutz, _mm512_and_si512(_mm512_srli_epi16(z[m], 4), m0f));
			lo = _mm512_dpbusd_epi32(lo, l0, _mm512_permutexvar_epi32(ilo, yy));
			hi = _mm512_dpbusd_epi32(hi, l1, _mm512_permutexvar_epi32(ihi, yy));
		}
		const __m512 is = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
		const __m256 dw0 = mx ? e8m0_half8_ptr(w, wo) : half8_ptr(w, wo);
		const __m256 dw1 = mx ? e8m0_half8_ptr(w, wo + wbs) : half8_ptr(w, wo + wbs);
		acc = _mm256_fmadd_ps(_mm512_castps512_ps256(is),
		                      _mm256_mul_ps(dw0, _mm256_set1_ps(p[i].d)), acc);
		acc = _mm256_fmadd_ps(
		    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(is), 1)),
		    _mm256_mul_ps(dw1, _mm256_set1_ps(p[i + 1].d)), acc);
	}
	if (i < nb)
		acc = block_t(kind, acc, lut, w, (size_t)i * wbs, yb[i].qs, &p[i]);
	_mm256_storeu_ps(out, acc);
}

static void nl_8x1_t(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                     const void *prep)
{
	tile_t(KIND_NL, n, o, w, a, prep);
}

static void mx_8x1_t(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                     const void *prep)
{
	tile_t(KIND_MX, n, o, w, a, prep);
}

/* Rows [0, n_r) against the one token at a by tile over 8 row runs, with
 * its prep on the stack (or the heap for rows over Q40_STACK_BLOCKS
 * blocks); false without memory for it (nothing written then). */
static bool run_lanes8_u128(moe_tile_fn tile, int64_t n_cols, float *y, const uint8_t *w,
                            size_t w_stride, int64_t n_r, const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK32;
	q40_prep stack[Q40_STACK_BLOCKS];
	q40_prep *p = nb <= Q40_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
	if (p == NULL)
		return false;
	prep_u128(p, nb, a);
	/* GCC (ASan build) cannot see that prep_u128 wrote what the tiles read */
	__asm__("" : : "r"(p) : "memory");
	run_lanes8(tile, n_cols, y, w, w_stride, n_r, a, p);
	if (p != stack)
		free(p);
	return true;
}

/* ---- IQ4_XS x Q8_K, one token, four sub-blocks per vector ------------------------ */

/* The 8 sub-block scales ls - 32 of an IQ4_XS block as int8 bytes 0..7 of
 * a general-purpose register (byte s = sub-block s): the 8 nibbles and 8 bit
 * pairs spread to bytes by shifts and masks, then 32 taken from each byte
 * without borrows ((ls + 0x60) ^ 0x80 = ls - 32 as int8 for ls in 0..63). */
static ALWAYS_INLINE uint64_t xs_scales_i8(const moe_block_iq4_xs *b)
{
	uint32_t lo;
	memcpy(&lo, b->scales_l, 4);
	uint64_t t = lo, u = b->scales_h;
	t = (t | t << 16) & 0x0000ffff0000ffffull;
	t = (t | t << 8) & 0x00ff00ff00ff00ffull;
	t = (t | t << 4) & 0x0f0f0f0f0f0f0f0full; /* byte s = bits 4s..4s+3 of lo */
	u = (u | u << 24) & 0x000000ff000000ffull;
	u = (u | u << 12) & 0x000f000f000f000full;
	u = (u | u << 6) & 0x0303030303030303ull; /* byte s = bits 2s, 2s+1 of h */
	uint64_t ls = ((t | u << 4) + 0x6060606060606060ull) ^ 0x8080808080808080ull;
	__asm__("" : "+r"(ls));
	return ls;
}

/* IQ4_XS, the 8 rows w[0..8) against the one token a[0].  Per token block,
 * once for the 8 rows: yz[j][h] = the token's values 16h..16h+15 of
 * sub-blocks 4j..4j+3 (one per 128-bit lane, as the rows' low (h = 0) and
 * high (h = 1) nibbles of 64 code bytes lie), and off[j] = -128 x the sums
 * of the same 4-value groups.  Per row: D_j = off[j] + vpdpbusd of the
 * levels + 128 with yz (lane group q of D_j: sub-block 4j + q), reduced so
 * that dword 0 of lane group q holds sub-block q's exact sum and dword 1
 * sub-block 4 + q's; one vpmulld by the scales in that order (the other
 * dwords 0), the halves added: 8 lanes whose total is the block's isum. */
static void xs_8x1_z(int64_t n_cols, float out[8], const uint8_t *const w[8],
                     const uint8_t *const a[8], const void *prep)
{
	(void)prep;
	const int64_t nb = n_cols / MOE_QK_K;
	const __m512i m0f = _mm512_set1_epi8(15), c128 = _mm512_set1_epi8((char)0x80);
	const __m512i lut = _mm512_broadcast_i32x4(_mm256_castsi256_si128(levels_u8(KIND_NL)));
	/* ls - 32 of sub-blocks q, 4 + q as bytes 0, 1 of dword 4q, the rest 0 */
	const __m128i sc_order =
	    _mm_setr_epi8(0, 4, -1, -1, 1, 5, -1, -1, 2, 6, -1, -1, 3, 7, -1, -1);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_iq4_xs);
		const moe_block_q8_K *y = (const moe_block_q8_K *)a[0] + i;
		__m512i yz[2][2], off[2];
#pragma GCC unroll 2
		for (int j = 0; j < 2; j++) {
			const __m512i e = _mm512_loadu_si512((const void *)(y->qs + 128 * j));
			const __m512i o = _mm512_loadu_si512((const void *)(y->qs + 128 * j + 64));
			yz[j][0] = _mm512_shuffle_i64x2(e, o, _MM_SHUFFLE(2, 0, 2, 0));
			yz[j][1] = _mm512_shuffle_i64x2(e, o, _MM_SHUFFLE(3, 1, 3, 1));
			const __m512i s = _mm512_dpbusd_epi32(
			    _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, yz[j][0]), c128,
			    yz[j][1]);
			off[j] = _mm512_sub_epi32(_mm512_setzero_si512(), s);
		}
		__m256i v[8];
#pragma GCC unroll 8
		for (int r = 0; r < 8; r++) {
			const moe_block_iq4_xs *b = (const moe_block_iq4_xs *)(w[r] + wo);
			const __m512i sc = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(
			    _mm_cvtsi64_si128((long long)xs_scales_i8(b)), sc_order));
			__m512i dj[2];
#pragma GCC unroll 2
			for (int j = 0; j < 2; j++) {
				const __m512i c =
				    _mm512_loadu_si512((const void *)(b->qs + 64 * j));
				const __m512i l0 =
				    _mm512_shuffle_epi8(lut, _mm512_and_si512(c, m0f));
				const __m512i l1 = _mm512_shuffle_epi8(
				    lut, _mm512_and_si512(_mm512_srli_epi16(c, 4), m0f));
				dj[j] = _mm512_dpbusd_epi32(
				    _mm512_dpbusd_epi32(off[j], l0, yz[j][0]), l1, yz[j][1]);
			}
			/* lane group q: [D0 a+c, D1 a+c, D0 b+d, D1 b+d], then the two
			 * 64-bit halves added: dword 0 = sub-block q, 1 = 4 + q */
			__m512i t = _mm512_add_epi32(_mm512_unpacklo_epi32(dj[0], dj[1]),
			                             _mm512_unpackhi_epi32(dj[0], dj[1]));
			t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
			const __m512i p = _mm512_mullo_epi32(t, sc);
			v[r] = _mm256_add_epi32(_mm512_castsi512_si256(p),
			                        _mm512_extracti64x4_epi64(p, 1));
		}
		const __m256 d = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(y->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* ---- IQ4_NL / MXFP4 x Q8_0, several tokens: 1x8 and 2x4 tiles ------------------- */

/* Per token block of a tile's group, lane k = the tile's token k % T: base =
 * -128 x the sum of the block's 32 values, d = its scale. */
typedef struct tok8_block {
	int32_t base[8];
	float d[8];
} tok8_block;

enum { TOK8_STACK_BLOCKS = 256 }; /* 16 KiB on the stack: up to 8192 columns */

/* The gather of run_grid for T tokens a[0..T): lane k from a[k % T]. */
static ALWAYS_INLINE void gather_tok(int T, void *prep, int64_t n_cols, const uint8_t *const a[8])
{
	tok8_block *p = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const __m256i ones8 = _mm256_set1_epi8(1);
	for (int64_t i = 0; i < nb; i++)
		for (int t = 0; t < T; t++) {
			const moe_block_q8_0 *ab = (const moe_block_q8_0 *)a[t] + i;
			const __m256i y = _mm256_loadu_si256((const __m256i *)ab->qs);
			const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones8, y);
			const int32_t base = -128 * _mm_cvtsi128_si32(hsum_i32_v(s));
			const float d = half_to_f32(ab->d);
			for (int k = t; k < 8; k += T) {
				p[i].base[k] = base;
				p[i].d[k] = d;
			}
		}
}

static void gather_tok8(void *prep, int64_t n_cols, const uint8_t *const a[8])
{
	gather_tok(8, prep, n_cols, a);
}

static void gather_tok4(void *prep, int64_t n_cols, const uint8_t *const a[8])
{
	gather_tok(4, prep, n_cols, a);
}

/* R rows x T tokens (R * T = 8): lane k = row k / T, token k % T.  Per block
 * each row's codes are looked up once (levels + 128) and met by each token's
 * 32 values in one vpdpbusd; the 8 pairs' vectors are reduced together
 * (sum8_i32), the tokens' bases added: lane k = pair k's exact block sum. */
static ALWAYS_INLINE void tile_rt(int kind, int R, int T, int64_t n_cols, float out[8],
                                  const uint8_t *const w[8], const uint8_t *const a[8],
                                  const void *prep)
{
	const bool mx = kind == KIND_MX;
	const tok8_block *p = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = mx ? sizeof(moe_block_mxfp4) : sizeof(moe_block_iq4_nl);
	const size_t qo = mx ? offsetof(moe_block_mxfp4, qs) : offsetof(moe_block_iq4_nl, qs);
	const __m256i lut = levels_u8(kind);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * sizeof(moe_block_q8_0);
		__m256i l[2], v[8];
#pragma GCC unroll 2
		for (int r = 0; r < R; r++) {
			l[r] = _mm256_shuffle_epi8(lut, unpack_nibbles(w[r] + wo + qo));
			pin(&l[r]);
		}
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const __m256i y = _mm256_loadu_si256(
			    (const __m256i *)(a[t] + ao + offsetof(moe_block_q8_0, qs)));
#pragma GCC unroll 2
			for (int r = 0; r < R; r++)
				v[r * T + t] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), l[r], y);
		}
		const __m256i s =
		    _mm256_add_epi32(sum8_i32(v), _mm256_loadu_si256((const __m256i *)p[i].base));
		float dr[2];
		for (int r = 0; r < R; r++)
			dr[r] =
			    mx ? moe_e8m0_half(w[r][wo]) : half_to_f32((uint16_t)ld16(w[r] + wo));
		const __m256 dw = R == 1 ? _mm256_set1_ps(dr[0])
		                         : _mm256_setr_m128(_mm_set1_ps(dr[0]), _mm_set1_ps(dr[1]));
		const __m256 d = _mm256_mul_ps(dw, _mm256_loadu_ps(p[i].d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

static void nl_1x8(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile_rt(KIND_NL, 1, 8, n, o, w, a, prep);
}

static void nl_2x4(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile_rt(KIND_NL, 2, 4, n, o, w, a, prep);
}

static void mx_1x8(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile_rt(KIND_MX, 1, 8, n, o, w, a, prep);
}

static void mx_2x4(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile_rt(KIND_MX, 2, 4, n, o, w, a, prep);
}

/* Tokens [0, n_t - lone) by the 1x8 tiles (groups of 8, and 5..7 left as
 * one padded group) and the 2x4 tiles (2..4 left), with their token data
 * gathered per group; false without memory for it (nothing written then). */
static bool run_tiles_u128(moe_tile_fn r1t8, moe_tile_fn r2t4, int64_t n_cols, float *y,
                           int64_t ldy, const uint8_t *w, size_t w_stride, int64_t n_r,
                           const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK32;
	const int64_t full = n_t / 8 * 8, rem = n_t - full;
	tok8_block stack[TOK8_STACK_BLOCKS];
	tok8_block *p = nb <= TOK8_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
	if (p == NULL)
		return false;
	const int64_t g8 = rem > 4 ? n_t : full;
	if (g8 > 0)
		run_grid(r1t8, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0, g8,
		         gather_tok8, p);
	if (g8 < n_t)
		run_grid(r2t4, 2, 4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, g8, n_t,
		         gather_tok4, p);
	if (p != stack)
		free(p);
	return true;
}

/* ---- IQ4_XS x Q8_K, several tokens: 1x8, sub-blocks in lanes ------------------- */

/* What the tile needs of a group of 8 tokens per block, made once per group
 * (as isa_avx512_gemm.c's vk8_block): each token's values transposed like
 * the weights, -128 x each sub-block's sum (from the values, not the
 * bsums), the tokens' d. */
typedef struct xs8_block {
	uint8_t yt[8][8][32]; /* [token][column k]: lane s = values 32s + 4k .. + 3 */
	int32_t off[8][8];    /* [token][sub-block] */
	float dy[8];
} xs8_block;

enum { XS8_STACK_BLOCKS = 16 }; /* 37 KiB on the stack: up to 4096 columns */

static void gather_xs8(void *prep, int64_t n_cols, const uint8_t *const a[8])
{
	xs8_block *p = prep;
	const int64_t nb = n_cols / MOE_QK_K;
	const __m256i c128 = _mm256_set1_epi8((char)0x80);
	for (int64_t i = 0; i < nb; i++)
		for (int t = 0; t < 8; t++) {
			const moe_block_q8_K *y = (const moe_block_q8_K *)a[t] + i;
			__m256i r[8], s = _mm256_setzero_si256();
			for (int k = 0; k < 8; k++)
				r[k] = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k));
			transpose8(r);
			for (int k = 0; k < 8; k++) {
				_mm256_storeu_si256((__m256i *)p[i].yt[t][k], r[k]);
				s = _mm256_dpbusd_epi32(s, c128, r[k]);
			}
			_mm256_storeu_si256((__m256i *)p[i].off[t],
			                    _mm256_sub_epi32(_mm256_setzero_si256(), s));
			p[i].dy[t] = y->d;
		}
}

/* One IQ4_XS row against the 8 tokens of the prep: out[t].  Per block the
 * levels + 128 of the 8 sub-blocks are transposed into columns (lane s =
 * sub-block s), and per token 8 vpdpbusd from the token's -128 x sums leave
 * lane s = sub-block s's exact sum; one vpmulld by the 8 scales ls - 32 and
 * the 8 tokens' tree give lane t = the block's isum. */
static void xs_1x8_v(int64_t n_cols, float out[8], const uint8_t *const w[8],
                     const uint8_t *const a[8], const void *prep)
{
	(void)a;
	const xs8_block *p = prep;
	const int64_t nb = n_cols / MOE_QK_K;
	const __m256i lut = levels_u8(KIND_NL);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_iq4_xs *b = (const moe_block_iq4_xs *)w[0] + i;
		const xs8_block *pp = &p[i];
		__m256i wc[8], iv[8];
		for (int s = 0; s < 8; s++)
			wc[s] = _mm256_shuffle_epi8(lut, unpack_nibbles(b->qs + 16 * s));
		transpose8(wc);
		const __m256i sc =
		    _mm256_cvtepi8_epi32(_mm_cvtsi64_si128((long long)xs_scales_i8(b)));
#pragma GCC unroll 8
		for (int t = 0; t < 8; t++) {
			/* two chains of four per token */
			__m256i s0 = _mm256_loadu_si256((const __m256i *)pp->off[t]);
			__m256i s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
			for (int k = 0; k < 4; k++) {
				s0 = _mm256_dpbusd_epi32(
				    s0, wc[k], _mm256_loadu_si256((const __m256i *)pp->yt[t][k]));
				s1 = _mm256_dpbusd_epi32(
				    s1, wc[4 + k],
				    _mm256_loadu_si256((const __m256i *)pp->yt[t][4 + k]));
			}
			iv[t] = _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc);
		}
		const __m256 d =
		    _mm256_mul_ps(_mm256_set1_ps(half_to_f32(b->d)), _mm256_loadu_ps(pp->dy));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(iv)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* IQ4_XS, tokens [0, n_t): groups of 8 (and 5..7 left as one padded group)
 * by xs_1x8_v, 2..4 left by the AVX2 tiles; false without memory for the
 * gathered tokens (nothing written then). */
static bool run_xs8(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                    int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const int64_t full = n_t / 8 * 8, rem = n_t - full;
	const int64_t g8 = rem > 4 ? n_t : full;
	if (g8 > 0) {
		xs8_block stack[XS8_STACK_BLOCKS];
		xs8_block *p = nb <= XS8_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*p));
		if (p == NULL)
			return false;
		run_grid(xs_1x8_v, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0, g8,
		         gather_xs8, p);
		if (p != stack)
			free(p);
	}
	if (g8 < n_t)
		moe_gemm_avx2_iq4(MOE_TYPE_IQ4_XS)(n_cols, y + g8 * ldy, ldy, w, w_stride, n_r,
		                                   x + (size_t)g8 * x_stride, x_stride, n_t - g8);
	return true;
}

/* ---- drivers --------------------------------------------------------------------- */

/* A last lone token after the groups of 8 by one8 over 8 row runs, the
 * other tokens by the 1x8 / 2x4 tiles above (IQ4_XS: the 1x8 tile, 2..4
 * tokens left by the AVX2 tiles).  Without memory for the token data: the
 * AVX2 tiles (the same bits). */
static void gemm_iq4(moe_type t, moe_tile_fn one8, moe_tile_fn r1t8, moe_tile_fn r2t4,
                     int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                     int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	const moe_gemm_fn avx2 = moe_gemm_avx2_iq4(t);
	const bool q32 = t != MOE_TYPE_IQ4_XS;
	const int64_t lone = n_t % 8 == 1 ? 1 : 0, many = n_t - lone;
	const bool done =
	    many == 0 ||
	    (q32 ? run_tiles_u128(r1t8, r2t4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, many)
	         : run_xs8(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, many));
	if (!done)
		avx2(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, many);
	if (lone == 0)
		return;
	float *yt = y + many * ldy;
	const uint8_t *a = x + (size_t)many * x_stride;
	if (!q32)
		run_lanes8(one8, n_cols, yt, w, w_stride, n_r, a, NULL);
	else if (!run_lanes8_u128(one8, n_cols, yt, w, w_stride, n_r, a))
		avx2(n_cols, yt, ldy, w, w_stride, n_r, a, x_stride, 1);
}

static void gemm_iq4_nl(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq4(MOE_TYPE_IQ4_NL, nl_8x1_t, nl_1x8, nl_2x4, n_cols, y, ldy, w, w_stride, n_r, x,
	         x_stride, n_t);
}

static void gemm_mxfp4(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq4(MOE_TYPE_MXFP4, mx_8x1_t, mx_1x8, mx_2x4, n_cols, y, ldy, w, w_stride, n_r, x,
	         x_stride, n_t);
}

static void gemm_iq4_xs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq4(MOE_TYPE_IQ4_XS, xs_8x1_z, NULL, NULL, n_cols, y, ldy, w, w_stride, n_r, x,
	         x_stride, n_t);
}

moe_gemm_fn moe_gemm_avx512_iq4(moe_type t)
{
	switch (t) {
	case MOE_TYPE_IQ4_NL:
		return gemm_iq4_nl;
	case MOE_TYPE_MXFP4:
		return gemm_mxfp4;
	case MOE_TYPE_IQ4_XS:
		return gemm_iq4_xs;
	default:
		return NULL;
	}
}
