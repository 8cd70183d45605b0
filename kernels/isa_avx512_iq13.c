/*
 * isa_avx512_iq13.c - the AVX-512 level's one-token tiles (gemm.h) of
 * IQ3_XXS, IQ3_S, IQ1_S and IQ1_M (x Q8_K), built with the avx512 flags plus
 * -mavx512vbmi -mavx512bitalg (kernels/CMakeLists.txt).  VBMI and BITALG are
 * not among the level's required features (dispatch.c), so this file asks
 * CPUID (cpu_x86.h) and hands out the AVX2 tiles (isa_avx2_iq13.c) where
 * either is missing.  Several tokens always take the AVX2 tiles, and the
 * one-row dots stay the AVX2 level's.
 *
 * The arithmetic is the canonical one of quants.h, bit for bit: per (row,
 * block) the exact int32 isum (any instructions, any order: integers), then
 * the AVX2 tiles' float steps (rows8_iq): the 8 rows' isums converted and
 * fused-multiply-added by (fp16 d times 1/4, 1 or 1/8, exact) * d_a per lane,
 * which is the reference's fmaf((float)isum, dw * d_a, acc) lane by lane.
 *
 * All four take the token's activations rearranged once per call (prep):
 * in each block, chunk c (64 bytes) holds the 8-value units 4 b + c, b =
 * 0..7, in its qwords b, so qword b of every chunk meets sub-block b; the 4
 * chunks' vpdpbusd sums fold into one qword per sub-block, multiplied once
 * by the qword-uniform scales 2 ls + 1 (vpmulld), as isa_avx512_iq2.c's
 * IQ2_XXS tile does.
 *   - IQ3_XXS: the grid in registers.  Each of its 256 points is 4 level
 *     codes of 3 bits (a 12-bit code); the low and the high byte of every
 *     code sit in 4 + 4 zmm tables, and a block's 64 indices look up both
 *     bytes with 2 vpermi2b each (128 entries a lookup, the index's bit 7
 *     picks by a mask blend).  Per chunk one vpermt2b puts a unit's two
 *     codes in its qword, vpmultishiftqb moves code digit j to the low bits
 *     of byte j and vpermb maps it to its level.  Signs: 7 stored bits a
 *     unit, the 8th their parity (vpopcntb, BITALG), each unit's byte
 *     spread over its qword (vpmultishiftqb) and tested against 1, 2, ..,
 *     128 (vptestmb): masks that negate the activations (masked vpsubb from
 *     0; |q8| <= 127 as moe_quantize_act makes them, as the AVX2 tiles'
 *     vpsignb needs too).  Magnitudes <= 62 are vpdpbusd's unsigned side.
 *   - IQ3_S: the same with a 512-entry grid (8 zmm of low code bytes, 4 of
 *     high nibbles, two points a byte; blends by index bit 7 and by the 9th
 *     bits, its qh bytes read as a mask) and its 8 stored sign bits a unit.
 *   - IQ1_S: the 2048-entry grid rows by scalar index arithmetic and 8-byte
 *     loads (8 into a zmm), from a table of 8 (g + 1) in {0, 8, 16}; the
 *     sub-block's delta enters as + (1 + delta) in {0, 2}, so every weight
 *     byte u = 8 g + delta + 9 is unsigned and the block sums u * q8 by
 *     vpdpbusd alone (no sign step); the - 9 * (sum of q8 over the
 *     sub-block) that makes them sum w * q8 is the token's, formed once per
 *     block in prep and the accumulators' start.
 *   - IQ1_M: as IQ1_S, with a delta per unit and two scales per sub-block
 *     (units 0-1, 2-3: two accumulators, the prep's half sub-block sums).
 * The 8x1 tile (run_lanes8's 8 row runs) prefetches each lane's stream 512
 * bytes ahead once per block (lanes8_prefetch).
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/cpu_x86.h"
#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { KIND_XXS, KIND_S3, KIND_S1, KIND_M1 };

/* ---- tables ------------------------------------------------------------------------ */

/* IQ3_XXS: lo/hi byte of point k's 12-bit code (digit j, bits 3 j .. 3 j + 2,
 * the level index of its value j); IQ1: 8 (g + 1) per value of point k. */
static uint8_t xxs_lo[256] __attribute__((aligned(64)));
static uint8_t xxs_hi[256] __attribute__((aligned(64)));
static uint8_t s3_lo[512] __attribute__((aligned(64)));
static uint8_t s3_hi[256] __attribute__((aligned(64))); /* k's high code nibble, k + 256's above */
static uint64_t g1_8[2048];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void fill_tables(void)
{
	for (int k = 0; k < 256; k++) {
		const uint32_t g = moe_iq3xxs_grid[k];
		unsigned code = 0;
		for (int j = 0; j < 4; j++)
			code |= (((g >> (8 * j)) & 255) - 4) >>
			        3 << (3 * j); /* 4, 12, .. 52, 62 -> 0..7 */
		xxs_lo[k] = (uint8_t)code;
		xxs_hi[k] = (uint8_t)(code >> 8);
	}
	for (int k = 0; k < 512; k++) {
		const uint32_t g = moe_iq3s_grid[k];
		unsigned code = 0;
		for (int j = 0; j < 4; j++)
			code |=
			    (((g >> (8 * j)) & 255) - 1) >> 1 << (3 * j); /* 1, 3, .. 15 -> 0..7 */
		s3_lo[k] = (uint8_t)code;
		s3_hi[k % 256] |= (uint8_t)((code >> 8) << (k / 256 * 4));
	}
	for (int i = 0; i < 2048; i++) {
		uint64_t v = 0;
		for (int j = 0; j < 8; j++)
			v |= (uint64_t)(uint8_t)(8 * ((int8_t)(moe_iq1s_grid[i] >> (8 * j)) + 1))
			     << (8 * j);
		g1_8[i] = v;
	}
}

static void tables_init(void)
{
	moe_iq13_init();
	pthread_once(&tables_once, fill_tables);
}

/* ---- the token's layout ------------------------------------------------------------ */

/* Per block of the token: 256 bytes of rearranged activations (above), then
 * (IQ1) 3 x 64 bytes: qword b = -9 times the sum of the block's q8 over
 * sub-block b (IQ1_S), over its first 16 values, over its last 16 (IQ1_M),
 * in the qword's low dword, 0 in its high dword. */
enum { PREP_Y = 256, PREP_BLOCK = 448 };

/* -9 times the sums of s's dword pairs, in the low dwords of its qwords. */
static ALWAYS_INLINE __m512i neg9_pairs(__m512i s)
{
	s = _mm512_add_epi32(s, _mm512_srli_epi64(s, 32));
	return _mm512_mullo_epi32(s, _mm512_set1_epi64(0xfffffff7ll));
}

/* Rearranges the nb Q8_K blocks at a into prep (PREP_BLOCK bytes a block);
 * with_sums: also the -9 * sub-block sums. */
static void prep_token(int8_t *prep, const uint8_t *a, int64_t nb, bool with_sums)
{
	for (int64_t i = 0; i < nb; i++) {
		const int8_t *q = ((const moe_block_q8_K *)a + i)->qs;
		int8_t *yt = prep + PREP_BLOCK * i;
		const __m512i y0 = _mm512_loadu_si512(q), y1 = _mm512_loadu_si512(q + 64);
		const __m512i y2 = _mm512_loadu_si512(q + 128), y3 = _mm512_loadu_si512(q + 192);
		__m512i s01 = _mm512_setzero_si512(), s23 = _mm512_setzero_si512();
		for (int c = 0; c < 4; c++) {
			/* qwords c, 4 + c of y0, then of y1 (indices 8.. = y1) */
			const __m512i ix = _mm512_set_epi64(0, 0, 0, 0, 12 + c, 8 + c, 4 + c, c);
			const __m256i a01 =
			    _mm512_castsi512_si256(_mm512_permutex2var_epi64(y0, ix, y1));
			const __m256i a23 =
			    _mm512_castsi512_si256(_mm512_permutex2var_epi64(y2, ix, y3));
			const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(a01), a23, 1);
			_mm512_storeu_si512(yt + 64 * c, v);
			if (c < 2)
				s01 = _mm512_dpbusd_epi32(s01, _mm512_set1_epi8(1), v);
			else
				s23 = _mm512_dpbusd_epi32(s23, _mm512_set1_epi8(1), v);
		}
		if (with_sums) {
			_mm512_storeu_si512(yt + PREP_Y, neg9_pairs(_mm512_add_epi32(s01, s23)));
			_mm512_storeu_si512(yt + PREP_Y + 64, neg9_pairs(s01));
			_mm512_storeu_si512(yt + PREP_Y + 128, neg9_pairs(s23));
		}
	}
}

/* ---- IQ3_XXS ----------------------------------------------------------------------- */

typedef struct {
	__m512i lo[4], hi[4], lv;
} xxs_tab;

static ALWAYS_INLINE void xxs_tab_load(xxs_tab *tb)
{
	for (int j = 0; j < 4; j++) {
		tb->lo[j] = _mm512_load_si512(xxs_lo + 64 * j);
		tb->hi[j] = _mm512_load_si512(xxs_hi + 64 * j);
	}
	/* level of code digit e & 7 (vpermb reads 6 bits: 8 copies) */
	tb->lv = _mm512_set1_epi64(0x3e342c241c140c04ll);
}

/* The 7-bit sign fields k (bits 0-6 of each byte) with their parity in bit 7. */
static ALWAYS_INLINE __m512i parity8(__m512i k)
{
	const __m512i p = _mm512_popcnt_epi8(k);
	return _mm512_ternarylogic_epi32(k, _mm512_slli_epi16(p, 7), _mm512_set1_epi8((char)0x80),
	                                 0xf8);
}

/* vpermt2b's picks for chunk c: qword b bytes lo, hi of group 8 b + 2 c, lo,
 * hi of group 8 b + 2 c + 1 (hi: index + 64), then the same again. */
#define XP(b, c)                                                                                   \
	8 * (b) + 2 * (c), 64 + 8 * (b) + 2 * (c), 8 * (b) + 2 * (c) + 1,                          \
	    64 + 8 * (b) + 2 * (c) + 1, 8 * (b) + 2 * (c), 64 + 8 * (b) + 2 * (c),                 \
	    8 * (b) + 2 * (c) + 1, 64 + 8 * (b) + 2 * (c) + 1
#define XPC(c)                                                                                     \
	{                                                                                          \
		XP(0, c), XP(1, c), XP(2, c), XP(3, c), XP(4, c), XP(5, c), XP(6, c), XP(7, c)     \
	}
static const uint8_t xxs_pick[4][64]
    __attribute__((aligned(64))) = {XPC(0), XPC(1), XPC(2), XPC(3)};
#undef XPC
#undef XP

/* One IQ3_XXS block at p against its rearranged activations yt: 16 int32
 * lanes whose total is the block's exact isum (a sub-block's sum before its
 * scale: 32 products of at most 62 * 127, < 2^18; times at most 31). */
static ALWAYS_INLINE __m512i xxs_block(const uint8_t *p, const int8_t *yt, const xxs_tab *tb)
{
	const __m512i idx = _mm512_loadu_si512(p + offsetof(moe_block_iq3_xxs, qs));
	const __mmask64 top = _mm512_movepi8_mask(idx);
	const __m512i lo =
	    _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(tb->lo[0], idx, tb->lo[1]),
	                           _mm512_permutex2var_epi8(tb->lo[2], idx, tb->lo[3]));
	const __m512i hi =
	    _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(tb->hi[0], idx, tb->hi[1]),
	                           _mm512_permutex2var_epi8(tb->hi[2], idx, tb->hi[3]));
	/* qword b = sub-block b's aux word: bits 7 l .. 7 l + 6 unit l's signs,
	 * bits 28-31 ls */
	const __m512i aux = _mm512_cvtepu32_epi64(
	    _mm256_loadu_si256((const __m256i *)(p + offsetof(moe_block_iq3_xxs, qs) + 64)));
	const __m512i f = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x150e0700ll), aux);
	const __m512i sb = parity8(_mm512_and_si512(f, _mm512_set1_epi8(0x7f)));
	const __m512i bit = _mm512_set1_epi64((long long)0x8040201008040201ull);
	/* digit j of group 0 at bit 3 j, of group 1 at 16 + 3 j */
	const __m512i dig = _mm512_set1_epi64(0x19161310090603ll << 8);
	__m512i acc = _mm512_setzero_si512();
	for (int c = 0; c < 4; c++) {
		const __m512i codes =
		    _mm512_permutex2var_epi8(lo, _mm512_load_si512(xxs_pick[c]), hi);
		const __m512i g =
		    _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(dig, codes), tb->lv);
		const __mmask64 m = _mm512_test_epi8_mask(
		    _mm512_multishift_epi64_epi8(_mm512_set1_epi8((char)(8 * c)), sb), bit);
		const __m512i y = _mm512_loadu_si512(yt + 64 * c);
		acc = _mm512_dpbusd_epi32(acc, g,
		                          _mm512_mask_sub_epi8(y, m, _mm512_setzero_si512(), y));
	}
	/* qword b: its two sums, times 2 ls + 1 */
	const __m512i sc = _mm512_ternarylogic_epi64(
	    _mm512_srli_epi64(aux, 27), _mm512_set1_epi64(0x1e), _mm512_set1_epi64(1), 0xea);
	return _mm512_mullo_epi32(_mm512_add_epi32(acc, _mm512_srli_epi64(acc, 32)), sc);
}

/* ---- IQ3_S ------------------------------------------------------------------------- */

typedef struct {
	__m512i lo[8], hi[4], lv;
} s3_tab;

static ALWAYS_INLINE void s3_tab_load(s3_tab *tb)
{
	for (int j = 0; j < 8; j++)
		tb->lo[j] = _mm512_load_si512(s3_lo + 64 * j);
	for (int j = 0; j < 4; j++)
		tb->hi[j] = _mm512_load_si512(s3_hi + 64 * j);
	tb->lv = _mm512_set1_epi64(0x0f0d0b0907050301ll); /* level of digit e & 7 */
}

/* One IQ3_S block at p against its rearranged activations yt, as xxs_block:
 * the grid in registers (512 code bytes in 8 zmm, 4 lookups by index bits
 * 0-6, blends by bit 7 and by bit 8, which the qh bytes are as they stand;
 * the high code nibbles of points k and k + 256 share a byte), the stored
 * sign bytes spread and tested, scales 4 bits a sub-block (a sub-block's sum
 * before its scale: 32 products of at most 15 * 127; times at most 31). */
static ALWAYS_INLINE __m512i s3_block(const uint8_t *p, const int8_t *yt, const s3_tab *tb)
{
	const moe_block_iq3_s *x = (const moe_block_iq3_s *)p;
	const __m512i idx = _mm512_loadu_si512(x->qs);
	const __mmask64 b7 = _mm512_movepi8_mask(idx);
	uint64_t h8;
	memcpy(&h8, x->qh, 8);
	const __mmask64 b8 = _cvtu64_mask64(h8);
	const __m512i l0 =
	    _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(tb->lo[0], idx, tb->lo[1]),
	                           _mm512_permutex2var_epi8(tb->lo[2], idx, tb->lo[3]));
	const __m512i l1 =
	    _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(tb->lo[4], idx, tb->lo[5]),
	                           _mm512_permutex2var_epi8(tb->lo[6], idx, tb->lo[7]));
	const __m512i lo = _mm512_mask_blend_epi8(b8, l0, l1);
	const __m512i hb =
	    _mm512_mask_blend_epi8(b7, _mm512_permutex2var_epi8(tb->hi[0], idx, tb->hi[1]),
	                           _mm512_permutex2var_epi8(tb->hi[2], idx, tb->hi[3]));
	const __m512i n15 = _mm512_set1_epi8(15);
	const __m512i hi = _mm512_mask_blend_epi8(b8, _mm512_and_si512(hb, n15),
	                                          _mm512_and_si512(_mm512_srli_epi16(hb, 4), n15));
	/* qword b = sub-block b's 4 sign bytes (unit l's in byte l) */
	const __m512i sb = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)x->signs));
	const __m512i bit = _mm512_set1_epi64((long long)0x8040201008040201ull);
	const __m512i dig = _mm512_set1_epi64(0x19161310090603ll << 8);
	__m512i acc = _mm512_setzero_si512();
	for (int c = 0; c < 4; c++) {
		const __m512i codes =
		    _mm512_permutex2var_epi8(lo, _mm512_load_si512(xxs_pick[c]), hi);
		const __m512i g =
		    _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(dig, codes), tb->lv);
		const __mmask64 m = _mm512_test_epi8_mask(
		    _mm512_multishift_epi64_epi8(_mm512_set1_epi8((char)(8 * c)), sb), bit);
		const __m512i y = _mm512_loadu_si512(yt + 64 * c);
		acc = _mm512_dpbusd_epi32(acc, g,
		                          _mm512_mask_sub_epi8(y, m, _mm512_setzero_si512(), y));
	}
	/* qword b: nibble b of the 4 scale bytes, 2 ls + 1 */
	uint32_t s4;
	memcpy(&s4, x->scales, 4);
	const __m512i v = _mm512_srlv_epi64(_mm512_set1_epi64((long long)s4),
	                                    _mm512_set_epi64(28, 24, 20, 16, 12, 8, 4, 0));
	const __m512i sc = _mm512_ternarylogic_epi64(
	    _mm512_slli_epi64(v, 1), _mm512_set1_epi64(0x1e), _mm512_set1_epi64(1), 0xea);
	return _mm512_mullo_epi32(_mm512_add_epi32(acc, _mm512_srli_epi64(acc, 32)), sc);
}

/* ---- IQ1_S ------------------------------------------------------------------------- */

/* 8 rows of an 8-byte table as one vector (entry i[0] in qword 0). */
static ALWAYS_INLINE __m512i rows8(const uint64_t *tab, const size_t i[8])
{
	const __m128i a = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i[0]))),
	                 (const double *)(tab + i[1])));
	const __m128i b = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i[2]))),
	                 (const double *)(tab + i[3])));
	const __m128i c = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i[4]))),
	                 (const double *)(tab + i[5])));
	const __m128i d = _mm_castpd_si128(
	    _mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)(tab + i[6]))),
	                 (const double *)(tab + i[7])));
	const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
	const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1);
	return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* vpermb's picks for iq1_index: word 8 c + b takes qs byte 4 b + c (high
 * bytes masked off); vpermw's: word 8 c + b takes qh word b; the shifts 3 c
 * (IQ1_S) and 4 c (IQ1_M). */
#define QP(c)                                                                                      \
	4 * 0 + (c), 0, 4 * 1 + (c), 0, 4 * 2 + (c), 0, 4 * 3 + (c), 0, 4 * 4 + (c), 0,            \
	    4 * 5 + (c), 0, 4 * 6 + (c), 0, 4 * 7 + (c), 0
static const uint8_t iq1_qpick[64] __attribute__((aligned(64))) = {QP(0), QP(1), QP(2), QP(3)};
#undef QP
#define HP(c) 0, 1, 2, 3, 4, 5, 6, 7
static const uint16_t iq1_hpick[32] __attribute__((aligned(64))) = {HP(0), HP(1), HP(2), HP(3)};
#undef HP
#define SH(k) (k), (k), (k), (k), (k), (k), (k), (k)
static const uint16_t iq1_shift[2][32]
    __attribute__((aligned(64))) = {{SH(0), SH(3), SH(6), SH(9)}, {SH(0), SH(4), SH(8), SH(12)}};
#undef SH

/* IQ1: the 32 grid indices of the block's qs and its 8 qh words h (IQ1_M:
 * qh[2 b] | qh[2 b + 1] << 8) as words 8 c + b (unit c of sub-block b):
 * qs[4 b + c] | (h[b] >> k c & 7) << 8, k = 3 (IQ1_S) or 4 (IQ1_M). */
static ALWAYS_INLINE __m512i iq1_index(int kind, const uint8_t *qs, const uint8_t *qh)
{
	const __m512i q = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)qs));
	const __m512i h = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)qh));
	const __m512i lo =
	    _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, _mm512_load_si512(iq1_qpick), q);
	const __m512i hi = _mm512_slli_epi16(
	    _mm512_srlv_epi16(_mm512_permutexvar_epi16(_mm512_load_si512(iq1_hpick), h),
	                      _mm512_load_si512(iq1_shift[kind == KIND_M1])),
	    8);
	return _mm512_ternarylogic_epi32(hi, _mm512_set1_epi16(0x700), lo, 0xea);
}

/* Unit c's 8 rows (u = 8 (g + 1) bytes) of the indices ix (iq1_index): the
 * indices to general registers 4 by 4 (vmovq, vpextrq; vpextrw each, as GCC
 * made of the indices stored to an array, gave 4.1-4.3 against 6.2-6.4 GB/s
 * in cache; vpgatherqq 2.7), then 8 loads. */
static ALWAYS_INLINE __m512i iq1_rows(__m512i ix, int c)
{
	/* a literal lane per case: the builds without optimisation do not fold c */
	__m128i l;
	switch (c) {
	case 0:
		l = _mm512_castsi512_si128(ix);
		break;
	case 1:
		l = _mm512_extracti32x4_epi32(ix, 1);
		break;
	case 2:
		l = _mm512_extracti32x4_epi32(ix, 2);
		break;
	default:
		l = _mm512_extracti32x4_epi32(ix, 3);
		break;
	}
	const uint64_t q0 = (uint64_t)_mm_cvtsi128_si64(l), q1 = (uint64_t)_mm_extract_epi64(l, 1);
	size_t i[8];
	for (int b = 0; b < 4; b++) {
		i[b] = (uint16_t)(q0 >> 16 * b);
		i[4 + b] = (uint16_t)(q1 >> 16 * b);
	}
	return rows8(g1_8, i);
}

/* One IQ1_S block at p against its prepared token yt: 16 int32 lanes whose
 * total is the block's exact isum (a qword's sum of u * q8 before the
 * scale: 32 products of at most 18 * 127 plus -9 * 32 * 127, |.| < 2^17;
 * times at most 15). */
static ALWAYS_INLINE __m512i s1_block(const uint8_t *p, const int8_t *yt)
{
	const moe_block_iq1_s *x = (const moe_block_iq1_s *)p;
	const __m512i ix = iq1_index(KIND_S1, x->qs, (const uint8_t *)x->qh);
	const __m512i qh = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)x->qh));
	/* 1 + delta per qword's bytes: 2 where bit 15 is clear, else 0 */
	const __mmask8 neg = _mm512_test_epi64_mask(qh, _mm512_set1_epi64(0x8000));
	const __m512i dl = _mm512_maskz_mov_epi64((__mmask8)~neg, _mm512_set1_epi8(2));
	__m512i acc = _mm512_loadu_si512(yt + PREP_Y);
#pragma GCC unroll 4
	for (int c = 0; c < 4; c++)
		acc = _mm512_dpbusd_epi32(acc, _mm512_add_epi8(iq1_rows(ix, c), dl),
		                          _mm512_loadu_si512(yt + 64 * c));
	const __m512i sc = _mm512_ternarylogic_epi64(
	    _mm512_srli_epi64(qh, 11), _mm512_set1_epi64(0xe), _mm512_set1_epi64(1), 0xea);
	return _mm512_mullo_epi32(_mm512_add_epi32(acc, _mm512_srli_epi64(acc, 32)), sc);
}

/* One IQ1_M block at p against its prepared token yt, as s1_block: units 0,
 * 1 of a sub-block (chunks 0, 1) take its first scale, units 2, 3 its
 * second; each unit its own delta (bit 4 c + 3 of the qh word). */
static ALWAYS_INLINE __m512i m1_block(const uint8_t *p, const int8_t *yt)
{
	const moe_block_iq1_m *x = (const moe_block_iq1_m *)p;
	const __m512i ix = iq1_index(KIND_M1, x->qs, x->qh);
	const __m512i qh = _mm512_cvtepu16_epi64(_mm_loadu_si128((const __m128i *)x->qh));
	__m512i a01 = _mm512_loadu_si512(yt + PREP_Y + 64);
	__m512i a23 = _mm512_loadu_si512(yt + PREP_Y + 128);
#pragma GCC unroll 4
	for (int c = 0; c < 4; c++) {
		const __mmask8 neg = _mm512_test_epi64_mask(qh, _mm512_set1_epi64(8ll << 4 * c));
		const __m512i dl = _mm512_maskz_mov_epi64((__mmask8)~neg, _mm512_set1_epi8(2));
		const __m512i u = _mm512_add_epi8(iq1_rows(ix, c), dl);
		const __m512i y = _mm512_loadu_si512(yt + 64 * c);
		if (c < 2)
			a01 = _mm512_dpbusd_epi32(a01, u, y);
		else
			a23 = _mm512_dpbusd_epi32(a23, u, y);
	}
	/* qword b: scale word b / 2 >> 6 (b % 2): ls1 bits 0-2, ls2 bits 3-5 */
	uint64_t s8;
	memcpy(&s8, x->scales, 8);
	const __m512i w = _mm512_srlv_epi64(_mm512_set1_epi64((long long)s8),
	                                    _mm512_set_epi64(54, 48, 38, 32, 22, 16, 6, 0));
	const __m512i s1 = _mm512_ternarylogic_epi64(
	    _mm512_slli_epi64(w, 1), _mm512_set1_epi64(0xe), _mm512_set1_epi64(1), 0xea);
	const __m512i s2 = _mm512_ternarylogic_epi64(
	    _mm512_srli_epi64(w, 2), _mm512_set1_epi64(0xe), _mm512_set1_epi64(1), 0xea);
	return _mm512_add_epi32(
	    _mm512_mullo_epi32(_mm512_add_epi32(a01, _mm512_srli_epi64(a01, 32)), s1),
	    _mm512_mullo_epi32(_mm512_add_epi32(a23, _mm512_srli_epi64(a23, 32)), s2));
}

/* ---- 8x1 tiles --------------------------------------------------------------------- */

/* Rows w[0..8) against the token a[0] (prepared in yt): out[k] = row k's
 * result, rows8_iq's float steps. */
static ALWAYS_INLINE void tile8(int kind, int64_t n_cols, float out[8], const uint8_t *const w[8],
                                const uint8_t *a, const int8_t *yt)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t bs = kind == KIND_XXS  ? sizeof(moe_block_iq3_xxs)
	                  : kind == KIND_S3 ? sizeof(moe_block_iq3_s)
	                  : kind == KIND_S1 ? sizeof(moe_block_iq1_s)
	                                    : sizeof(moe_block_iq1_m);
	const float f = kind == KIND_XXS ? 0.25f : kind == KIND_S3 ? 1.0f : 0.125f;
	xxs_tab tb;
	s3_tab t3;
	__m256 acc = _mm256_setzero_ps();

	if (kind == KIND_XXS)
		xxs_tab_load(&tb);
	if (kind == KIND_S3)
		s3_tab_load(&t3);
	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * bs;
		const moe_block_q8_K *ab = (const moe_block_q8_K *)a + i;
		const int8_t *yb = yt + PREP_BLOCK * i;
		__m256i v[8];
		lanes8_prefetch(w, wo);
#pragma GCC unroll 8
		for (int r = 0; r < 8; r++) {
			const __m512i s = kind == KIND_XXS  ? xxs_block(w[r] + wo, yb, &tb)
			                  : kind == KIND_S3 ? s3_block(w[r] + wo, yb, &t3)
			                  : kind == KIND_S1 ? s1_block(w[r] + wo, yb)
			                                    : m1_block(w[r] + wo, yb);
			v[r] = _mm256_add_epi32(_mm512_castsi512_si256(s),
			                        _mm512_extracti64x4_epi64(s, 1));
		}
		/* fp16 d times a power of two: exact, as block_dw */
		__m256 dw;
		if (kind == KIND_M1) {
			uint16_t h[8];
			for (int r = 0; r < 8; r++)
				h[r] = moe_iq1m_d((const moe_block_iq1_m *)(w[r] + wo));
			dw = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)),
			                   _mm256_set1_ps(f));
		} else {
			dw = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(f));
		}
		const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(ab->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

static void xxs_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                    const void *prep)
{
	tile8(KIND_XXS, n, o, w, a[0], prep);
}

static void s3_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile8(KIND_S3, n, o, w, a[0], prep);
}

static void s1_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile8(KIND_S1, n, o, w, a[0], prep);
}

static void m1_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile8(KIND_M1, n, o, w, a[0], prep);
}

enum { PREP_STACK_BLOCKS = 64 }; /* rows of up to 16384 columns: the token's prep on the stack */

/* One token: one8 over runs of the rows (run_lanes8; fewer than 16 rows: a
 * padded tile over them); several tokens, or no memory for a long row's
 * prep: the AVX2 tiles. */
static void gemm_one(moe_type t, moe_tile_fn one8, int64_t n_cols, float *y, int64_t ldy,
                     const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                     size_t x_stride, int64_t n_t)
{
	const int64_t nb = n_cols / MOE_QK_K;
	int8_t stack[PREP_STACK_BLOCKS * PREP_BLOCK] __attribute__((aligned(64)));
	int8_t *yt = n_t != 1 || nb <= PREP_STACK_BLOCKS ? stack : malloc((size_t)nb * PREP_BLOCK);
	if (yt == NULL || n_t != 1) {
		moe_gemm_avx2_iq13(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
		return;
	}
	prep_token(yt, x, nb, t == MOE_TYPE_IQ1_S || t == MOE_TYPE_IQ1_M);
	if (n_r >= 16)
		run_lanes8(one8, n_cols, y, w, w_stride, n_r, x, yt);
	else
		run_grid(one8, 8, 1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0, 1, NULL, yt);
	if (yt != stack)
		free(yt);
}

static void gemm_iq3_xxs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                         int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_one(MOE_TYPE_IQ3_XXS, xxs_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq3_s(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_one(MOE_TYPE_IQ3_S, s3_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq1_s(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_one(MOE_TYPE_IQ1_S, s1_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq1_m(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_one(MOE_TYPE_IQ1_M, m1_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

/* ---- dispatch ---------------------------------------------------------------------- */

moe_gemm_fn moe_gemm_avx512_iq13(moe_type t)
{
	if (!moe_x86_have_vbmi_bitalg())
		return moe_gemm_avx2_iq13(t);
	tables_init(); /* once; a load and a branch after that */
	switch (t) {
	case MOE_TYPE_IQ3_XXS:
		return gemm_iq3_xxs;
	case MOE_TYPE_IQ3_S:
		return gemm_iq3_s;
	case MOE_TYPE_IQ1_S:
		return gemm_iq1_s;
	case MOE_TYPE_IQ1_M:
		return gemm_iq1_m;
	default:
		return moe_gemm_avx2_iq13(t);
	}
}
