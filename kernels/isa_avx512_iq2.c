/*
 * isa_avx512_iq2.c - the AVX-512 level's one-row dots (IQ2_XXS, IQ2_XS) and
 * one-token tiles (gemm.h; IQ2_XXS, IQ2_XS, IQ2_S) of the IQ2 types (x Q8_K), built with the avx512
 * flags plus -mavx512vbmi -mavx512bitalg (kernels/CMakeLists.txt).  VBMI and BITALG are not among
 * the level's required features (dispatch.c: F/DQ/BW/VL/VNNI; Cascade Lake has those without them),
 * so this file reads CPUID itself and hands out the AVX2 kernels (isa_avx2_iq2.c) where either is
 * missing; tiles of several tokens are always the AVX2 ones.
 *
 * The arithmetic is the canonical one of quants.h, bit for bit: per block the
 * exact integer isum (exact whatever instructions form it), then the
 * reference's float steps in its order (one-row dots: fmaf per block in
 * scalar registers, 0.125f times the sum at the end; tiles: the AVX2 tiles'
 * int32 -> f32 conversion and fused multiply-add by dw * da per lane, times
 * 0.125f at the end).  A whole 256-value block is decoded at once, in 4
 * zmm registers of 64 values each:
 *   - grid bytes (levels 8/25/43, unsigned): IQ2_XXS decodes in registers:
 *     its 256-entry grid of 2-bit level codes (16 bits an entry, 512 bytes)
 *     sits in 8 zmm registers, the block's 32 indices look up their codes
 *     with 4 merge-masked vpermi2w (64 entries each), then per 64 values a
 *     vpermw puts each group's code in its own qword, vpmultishiftqb moves
 *     code j to the low bits of byte j and vpermb maps it to its level.
 *     IQ2_XS (512 entries) and IQ2_S (1024) load their expanded 8-byte
 *     rows (moe_iq2*_grid64) one by one, 8 into a zmm (rows8), as the AVX2
 *     kernels do.  Measured on a Zen 5 core (moe_dotbench --matmul, in-cache
 *     best GB/s, alternating builds): IQ2_XXS in registers 8.0-8.3, by
 *     scalar loads 4.9-7.0, by vpgatherqq 3.7-3.8 (the AVX2 tiles 5.8-6.1);
 *     IQ2_XS / IQ2_S by gathers 3.5-5.3, by scalar loads 6.2-7.6;
 *   - signs: 4 mask registers of 64 bits, one per 64 values: IQ2_S's 32
 *     sign bytes are those (kmovq from the block); IQ2_XXS / IQ2_XS store
 *     7 bits a group, the 8th the parity of those 7 (vpopcntb/vpopcntw,
 *     BITALG), each group's byte spread over its 8 values (vpermb) and
 *     tested against 1, 2, .., 128 (vptestmb); the masks negate the activations
 *     (masked vpsubb from 0): they are |q8| <= 127 as moe_quantize_act
 *     makes them (quants.c quant_q8_K: q = min(127, round(-127 / m * x))
 *     with |x| <= |m|, so never below -127), no -128 to negate;
 *   - dots and IQ2_S's tile: vpmaddubsw of grid bytes and signed
 *     activations (pairs of at most 2 * 43 * 127 < 2^15, no saturation),
 *     then VNNI's vpdpwssd by the 16-bit scales 2 s + 1 (one per 32 values
 *     for IQ2_XXS, per 16 for the others) into 16 int32 lanes whose total is
 *     the block's isum; IQ2_XXS's and IQ2_XS's tiles take the token's
 *     activations rearranged once per call so that one qword-uniform scale
 *     vector (two for IQ2_XS) serves a whole block (block_isum_t below):
 *     vpdpbusd, then one vpmulld by the scales (IQ2_XXS in cache 9.6-10.5
 *     against 8.7-8.8 GB/s; IQ2_XS the same either way).
 * The 8x1 tile (run_lanes8's 8 row runs) prefetches each lane's stream 512
 * bytes ahead once per block (lanes8_prefetch): streaming 128 MiB it gained
 * about a third (IQ2_XXS 4.4-7.7 against 2.6-4.7 GB/s, three alternating
 * runs on a busy host), in cache nothing.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "kernels/cpu_x86.h"
#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { KIND_XXS, KIND_XS, KIND_S };

static ALWAYS_INLINE size_t block_bytes(int kind)
{
	return kind == KIND_XXS  ? sizeof(moe_block_iq2_xxs)
	       : kind == KIND_XS ? sizeof(moe_block_iq2_xs)
	                         : sizeof(moe_block_iq2_s);
}

/* IQ2_XXS's grid as 8 vectors of 32 entries (moe_iq2xxs_grid: level codes). */
typedef struct {
	__m512i t[8];
} xxs_tab;

static ALWAYS_INLINE void xxs_tab_load(xxs_tab *tb)
{
	for (int j = 0; j < 8; j++)
		tb->t[j] = _mm512_loadu_si512(moe_iq2xxs_grid + 32 * j);
}

/* The negation masks of the 4 chunks (bit j of m[c] = value 64 c + j) from
 * the sign bytes in sb (group g's byte at byte pos[g] of the tables below):
 * each chunk's 8 sign bytes spread over their 8 values (vpermb), bit j of
 * byte j tested. */
static ALWAYS_INLINE void masks_of(__m512i sb, const uint8_t rep[4][64], __mmask64 m[4])
{
	const __m512i bit = _mm512_set1_epi64((long long)0x8040201008040201ull);
	for (int c = 0; c < 4; c++)
		m[c] = _mm512_test_epi8_mask(_mm512_permutexvar_epi8(_mm512_load_si512(rep[c]), sb),
		                             bit);
}

/* masks_of's tables: byte 8 j + i of chunk c's = where group 8 c + j's sign
 * byte is: IQ2_XXS byte 8 b + l (b = 2 c + j / 4 the sub-block's qword,
 * l = j % 4), IQ2_XS byte 2 (8 c + j) (the low byte of its word). */
#define R8(v) (v), (v), (v), (v), (v), (v), (v), (v)
#define XXS_REP(c)                                                                                 \
	{                                                                                          \
		R8(16 * (c)), R8(16 * (c) + 1), R8(16 * (c) + 2), R8(16 * (c) + 3),                \
		    R8(16 * (c) + 8), R8(16 * (c) + 9), R8(16 * (c) + 10), R8(16 * (c) + 11)       \
	}
#define XS_REP(c)                                                                                  \
	{                                                                                          \
		R8(16 * (c)), R8(16 * (c) + 2), R8(16 * (c) + 4), R8(16 * (c) + 6),                \
		    R8(16 * (c) + 8), R8(16 * (c) + 10), R8(16 * (c) + 12), R8(16 * (c) + 14)      \
	}
static const uint8_t rep_xxs[4][64]
    __attribute__((aligned(64))) = {XXS_REP(0), XXS_REP(1), XXS_REP(2), XXS_REP(3)};
static const uint8_t rep_xs[4][64]
    __attribute__((aligned(64))) = {XS_REP(0), XS_REP(1), XS_REP(2), XS_REP(3)};
#undef XS_REP
#undef XXS_REP
#undef R8

/* IQ2_XXS: word g = byte 8 (g / 4) + g % 4 (group g's grid index), high
 * bytes 0 (masked off). */
#define IW(b) (b), 0, (b) + 1, 0, (b) + 2, 0, (b) + 3, 0
static const uint8_t xxs_iw[64]
    __attribute__((aligned(64))) = {IW(0), IW(8), IW(16), IW(24), IW(32), IW(40), IW(48), IW(56)};
#undef IW

/* The 7-bit sign fields k (bits 0-6 of each byte, the rest 0) with their
 * parity in bit 7 (moe_iq2_sign_byte); 16-bit lanes when w16. */
static ALWAYS_INLINE __m512i parity8(__m512i k, bool w16)
{
	const __m512i p = w16 ? _mm512_popcnt_epi16(k) : _mm512_popcnt_epi8(k);
	/* k | (p << 7 & 0x80): bit 0 of each byte's count to its bit 7 */
	return _mm512_ternarylogic_epi32(k, _mm512_slli_epi16(p, 7), _mm512_set1_epi8((char)0x80),
	                                 0xf8);
}

/* IQ2_XS / IQ2_S: the 16 scales 2 s + 1 of scales[8] at sp as bytes 0-15
 * (byte h: the h-th 16 values), for sc_words. */
static ALWAYS_INLINE __m512i scales16(const uint8_t *sp)
{
	uint64_t s8;
	memcpy(&s8, sp, 8);
	/* byte h = bits 4h .. 4h + 7 of the 8 bytes: nibble h in its low half */
	const __m512i ctl = _mm512_set1_epi64(0x1c1814100c080400ll);
	const __m512i ctl2 = _mm512_set1_epi64(0x3c3834302c282420ll);
	const __m512i v = _mm512_set1_epi64((long long)s8);
	__m512i n = _mm512_mask_multishift_epi64_epi8(_mm512_multishift_epi64_epi8(ctl, v),
	                                              0xff00ff00ff00ff00ull, ctl2, v);
	n = _mm512_and_si512(n, _mm512_set1_epi8(15));
	return _mm512_or_si512(_mm512_add_epi8(n, n), _mm512_set1_epi8(1));
}

/* Chunk c's 32 int16 scales from the bytes e: word i takes byte e_idx(c, i)
 * (zero high bytes). */
static ALWAYS_INLINE __m512i sc_words(__m512i e, __m512i idx)
{
	return _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, idx, e);
}

/* The word-picking indices of sc_words, per chunk c: IQ2_XXS word i takes
 * byte 8 (2 c + i / 16) + 4 (qword = sub-block, byte 4 = its scale), the
 * others byte 4 c + i / 8 (scales16's order); odd bytes 0 (masked off). */
#define W2(v)  (v), 0
#define W8(v)  W2(v), W2(v), W2(v), W2(v), W2(v), W2(v), W2(v), W2(v)
#define W16(v) W8(v), W8(v)
static const uint8_t sc_idx_xxs[4][64] __attribute__((aligned(64))) = {
    {W16(4), W16(12)}, {W16(20), W16(28)}, {W16(36), W16(44)}, {W16(52), W16(60)}};
static const uint8_t sc_idx_k[4][64]
    __attribute__((aligned(64))) = {{W8(0), W8(1), W8(2), W8(3)},
                                    {W8(4), W8(5), W8(6), W8(7)},
                                    {W8(8), W8(9), W8(10), W8(11)},
                                    {W8(12), W8(13), W8(14), W8(15)}};
#undef W16
#undef W8
#undef W2

static ALWAYS_INLINE __m512i sc_idx(int kind, int c)
{
	return _mm512_load_si512(kind == KIND_XXS ? sc_idx_xxs[c] : sc_idx_k[c]);
}

/* 8 rows of an 8-byte table as one vector (entry i[0] in qword 0): 8 loads
 * and inserts. */
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

/* Chunk c's grid rows by scalar index arithmetic and loads. */
static ALWAYS_INLINE __m512i grid_scalar(int kind, const uint8_t *p, int c)
{
	size_t i[8];
	if (kind == KIND_XXS) {
		const uint8_t *q = p + offsetof(moe_block_iq2_xxs, qs) + 16 * c;
		for (int j = 0; j < 8; j++)
			i[j] = q[8 * (j / 4) + j % 4];
		return rows8(moe_iq2xxs_grid64, i);
	}
	if (kind == KIND_XS) {
		const uint8_t *q = p + offsetof(moe_block_iq2_xs, qs) + 16 * c;
		for (int j = 0; j < 8; j++)
			i[j] = ld16(q + 2 * j) & 511;
		return rows8(moe_iq2xs_grid64, i);
	}
	const uint8_t *qs = p + offsetof(moe_block_iq2_s, qs) + 8 * c;
	const uint8_t *qh = p + offsetof(moe_block_iq2_s, qh) + 2 * c;
	for (int j = 0; j < 8; j++)
		i[j] = qs[j] | ((size_t)qh[j / 4] << (8 - 2 * (j % 4)) & 0x300);
	return rows8(moe_iq2s_grid64, i);
}

/* IQ2_XS chunk c's grid rows in the tiles' layout: qword b = group 4 b + c. */
static ALWAYS_INLINE __m512i grid_xs_t(const uint8_t *p, int c)
{
	const uint8_t *q = p + offsetof(moe_block_iq2_xs, qs) + 2 * c;
	size_t i[8];
	for (int b = 0; b < 8; b++)
		i[b] = ld16(q + 8 * b) & 511;
	return rows8(moe_iq2xs_grid64, i);
}

/* One block at p against the 256 activations q8: 16 int32 lanes whose total
 * is the block's exact isum. */
static ALWAYS_INLINE __m512i block_isum(int kind, const uint8_t *p, const int8_t *q8,
                                        const xxs_tab *tb)
{
	__m512i g[4], sc[4];
	__mmask64 m[4];

	if (kind == KIND_XXS) {
		/* qword b = sub-block b: bytes 0-3 indices, bits 32 + 7 l signs
		 * of group l, bits 60-63 s */
		const __m512i q = _mm512_loadu_si512(p + offsetof(moe_block_iq2_xxs, qs));
		/* byte l (0-3): bits 32 + 7 l ..; byte 4: bits 60 .. (s in its low nibble) */
		const __m512i sctl = _mm512_set1_epi64(0x3c3c3c3c352e2720ll);
		const __m512i f = _mm512_multishift_epi64_epi8(sctl, q);
		const __m512i k = _mm512_and_si512(f, _mm512_set1_epi8(0x7f));
		masks_of(parity8(k, false), rep_xxs, m);
		/* 2 s + 1 by a 64-byte table (vpermb reads bits 0-5: s and 2 of
		 * the signs') */
		const __m512i odd = _mm512_set_epi8(
		    31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 31, 29, 27, 25, 23,
		    21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13,
		    11, 9, 7, 5, 3, 1, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
		const __m512i e = _mm512_permutexvar_epi8(f, odd);
		for (int c = 0; c < 4; c++)
			sc[c] = sc_words(e, sc_idx(KIND_XXS, c));
		/* the 32 indices as words, their codes by 4 merge-masked
		 * lookups of 64 entries each */
		const __m512i w = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull,
		                                                _mm512_load_si512(xxs_iw), q);
		const __m512i hi = _mm512_srli_epi16(w, 6);
		__m512i code = w;
		for (int j = 0; j < 4; j++)
			code = _mm512_mask2_permutex2var_epi16(
			    tb->t[2 * j], code, _mm512_cmpeq_epi16_mask(hi, _mm512_set1_epi16(j)),
			    tb->t[2 * j + 1]);
		/* per chunk: group 8 c + j's code in qword j, code i of it to
		 * byte i's low bits, then the level */
		const __m512i lv =
		    _mm512_set4_epi32(0x002b1908, 0x002b1908, 0x002b1908, 0x002b1908);
		const __m512i shc = _mm512_set1_epi64(0x0e0c0a0806040200ll);
		for (int c = 0; c < 4; c++) {
			const __m512i rep = _mm512_permutexvar_epi16(
			    _mm512_set_epi16(8 * c + 7, 8 * c + 7, 8 * c + 7, 8 * c + 7, 8 * c + 6,
			                     8 * c + 6, 8 * c + 6, 8 * c + 6, 8 * c + 5, 8 * c + 5,
			                     8 * c + 5, 8 * c + 5, 8 * c + 4, 8 * c + 4, 8 * c + 4,
			                     8 * c + 4, 8 * c + 3, 8 * c + 3, 8 * c + 3, 8 * c + 3,
			                     8 * c + 2, 8 * c + 2, 8 * c + 2, 8 * c + 2, 8 * c + 1,
			                     8 * c + 1, 8 * c + 1, 8 * c + 1, 8 * c, 8 * c, 8 * c,
			                     8 * c),
			    code);
			g[c] = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(shc, rep), lv);
		}
	} else {
		const __m512i e =
		    scales16(p + (kind == KIND_XS ? offsetof(moe_block_iq2_xs, scales)
		                                  : offsetof(moe_block_iq2_s, scales)));
		for (int c = 0; c < 4; c++)
			sc[c] = sc_words(e, sc_idx(kind, c));
		if (kind == KIND_XS) {
			const __m512i q = _mm512_loadu_si512(p + offsetof(moe_block_iq2_xs, qs));
			masks_of(parity8(_mm512_srli_epi16(q, 9), true), rep_xs, m);
		} else {
			const uint8_t *sg = p + offsetof(moe_block_iq2_s, qs) + 32;
			for (int c = 0; c < 4; c++) { /* unaligned: memcpy, then kmovq */
				uint64_t b;
				memcpy(&b, sg + 8 * c, 8);
				m[c] = _cvtu64_mask64(b);
			}
		}
		for (int c = 0; c < 4; c++)
			g[c] = grid_scalar(kind, p, c);
	}
	__m512i acc = _mm512_setzero_si512();
	for (int c = 0; c < 4; c++) {
		const __m512i y = _mm512_loadu_si512(q8 + 64 * c);
		const __m512i ys = _mm512_mask_sub_epi8(y, m[c], _mm512_setzero_si512(), y);
		acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(g[c], ys), sc[c]);
	}
	return acc;
}

/* ---- the tiles' layout: groups transposed ---------------------------------------- */

/* The tiles take the token's activations rearranged once per call (prep_t):
 * in each block, chunk c (64 bytes) holds groups 4 b + c, b = 0..7, in its
 * qwords b, so every chunk's qword b meets sub-block b (IQ2_XXS) or 16-value
 * group 2 b + c / 2 (IQ2_XS): the scales become one (two) qword-uniform
 * vectors per block, the products vpdpbusd's (sums of 4, unscaled), folded
 * per qword and multiplied by the scales once (vpmulld), where the plain
 * layout needs a scale vector per chunk and vpmaddubsw + vpdpwssd. */

/* Whether kind's tile takes the rearranged layout: not IQ2_S, whose sign
 * bytes are its masks as they are stored, where the transposed layout needs
 * them spread and tested (in-cache best 5.7-5.8 against 7.5-7.6 GB/s). */
static ALWAYS_INLINE bool use_t(int kind)
{
	return kind != KIND_S;
}

/* Rearranges the 256 activations of nb Q8_K blocks at a into yt (256 bytes a
 * block). */
static void prep_t(int8_t *yt, const uint8_t *a, int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const int8_t *q = ((const moe_block_q8_K *)a + i)->qs;
		const __m512i y0 = _mm512_loadu_si512(q), y1 = _mm512_loadu_si512(q + 64);
		const __m512i y2 = _mm512_loadu_si512(q + 128), y3 = _mm512_loadu_si512(q + 192);
		for (int c = 0; c < 4; c++) {
			/* qwords c, 4 + c of y0 then of y1 (indices 8.. = y1) */
			const __m256i a01 = _mm512_castsi512_si256(_mm512_permutex2var_epi64(
			    y0, _mm512_set_epi64(0, 0, 0, 0, 12 + c, 8 + c, 4 + c, c), y1));
			const __m256i a23 = _mm512_castsi512_si256(_mm512_permutex2var_epi64(
			    y2, _mm512_set_epi64(0, 0, 0, 0, 12 + c, 8 + c, 4 + c, c), y3));
			_mm512_storeu_si512(
			    yt + 256 * i + 64 * c,
			    _mm512_inserti64x4(_mm512_castsi256_si512(a01), a23, 1));
		}
	}
}

/* One IQ2_XXS or IQ2_XS block at p against its rearranged activations yt:
 * 16 int32 lanes whose total is the block's exact isum (sums of at most 16
 * products of 43 * 127 a lane before the scale, < 2^17, times at most 31). */
static ALWAYS_INLINE __m512i block_isum_t(int kind, const uint8_t *p, const int8_t *yt,
                                          const xxs_tab *tb)
{
	__m512i g[4];
	__mmask64 m[4];
	const __m512i bit = _mm512_set1_epi64((long long)0x8040201008040201ull);
	const __m512i c1e = _mm512_set1_epi64(0x1e), one = _mm512_set1_epi64(1);

	if (kind == KIND_XXS) {
		const __m512i q = _mm512_loadu_si512(p + offsetof(moe_block_iq2_xxs, qs));
		/* byte l (0-3) of qword b: group 4 b + l's sign byte */
		const __m512i f = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x352e2720ll), q);
		const __m512i sb = parity8(_mm512_and_si512(f, _mm512_set1_epi8(0x7f)), false);
		for (int c = 0; c < 4; c++)
			m[c] = _mm512_test_epi8_mask(
			    _mm512_multishift_epi64_epi8(_mm512_set1_epi8((char)(8 * c)), sb), bit);
		const __m512i w = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull,
		                                                _mm512_load_si512(xxs_iw), q);
		const __m512i hi = _mm512_srli_epi16(w, 6);
		__m512i code = w;
		for (int j = 0; j < 4; j++)
			code = _mm512_mask2_permutex2var_epi16(
			    tb->t[2 * j], code, _mm512_cmpeq_epi16_mask(hi, _mm512_set1_epi16(j)),
			    tb->t[2 * j + 1]);
		/* chunk c: byte j of qword b = code j of group 4 b + c (word c of
		 * the qword) in its low bits, then the level */
		const __m512i lv =
		    _mm512_set4_epi32(0x002b1908, 0x002b1908, 0x002b1908, 0x002b1908);
		for (int c = 0; c < 4; c++)
			g[c] = _mm512_permutexvar_epi8(
			    _mm512_multishift_epi64_epi8(
			        _mm512_add_epi8(_mm512_set1_epi64(0x0e0c0a0806040200ll),
			                        _mm512_set1_epi8((char)(16 * c))),
			        code),
			    lv);
		__m512i acc = _mm512_setzero_si512();
		for (int c = 0; c < 4; c++) {
			const __m512i y = _mm512_loadu_si512(yt + 64 * c);
			acc = _mm512_dpbusd_epi32(
			    acc, g[c], _mm512_mask_sub_epi8(y, m[c], _mm512_setzero_si512(), y));
		}
		/* qword b: its two sums, times 2 s_b + 1 (bits 60-63 of q) */
		const __m512i sc =
		    _mm512_ternarylogic_epi64(_mm512_srli_epi64(q, 59), c1e, one, 0xea);
		return _mm512_mullo_epi32(_mm512_add_epi32(acc, _mm512_srli_epi64(acc, 32)), sc);
	}
	/* IQ2_XS: word l of qword b holds group 4 b + l's sign byte in its low byte */
	const __m512i q = _mm512_loadu_si512(p + offsetof(moe_block_iq2_xs, qs));
	const __m512i sb = parity8(_mm512_srli_epi16(q, 9), true);
	for (int c = 0; c < 4; c++)
		m[c] = _mm512_test_epi8_mask(
		    _mm512_multishift_epi64_epi8(_mm512_set1_epi8((char)(16 * c)), sb), bit);
	for (int c = 0; c < 4; c++)
		g[c] = grid_xs_t(p, c);
	__m512i a01 = _mm512_setzero_si512(), a23 = _mm512_setzero_si512();
	for (int c = 0; c < 4; c++) {
		const __m512i y = _mm512_loadu_si512(yt + 64 * c);
		const __m512i ys = _mm512_mask_sub_epi8(y, m[c], _mm512_setzero_si512(), y);
		if (c < 2)
			a01 = _mm512_dpbusd_epi32(a01, g[c], ys);
		else
			a23 = _mm512_dpbusd_epi32(a23, g[c], ys);
	}
	/* qword b = scales[b]: low nibble s of groups 2 b (chunks 0, 1), high
	 * nibble of 2 b + 1 (chunks 2, 3) */
	const __m512i v = _mm512_cvtepu8_epi64(
	    _mm_loadl_epi64((const __m128i *)(p + offsetof(moe_block_iq2_xs, scales))));
	const __m512i s01 = _mm512_ternarylogic_epi64(_mm512_slli_epi64(v, 1), c1e, one, 0xea);
	const __m512i s23 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(v, 3), c1e, one, 0xea);
	return _mm512_add_epi32(
	    _mm512_mullo_epi32(_mm512_add_epi32(a01, _mm512_srli_epi64(a01, 32)), s01),
	    _mm512_mullo_epi32(_mm512_add_epi32(a23, _mm512_srli_epi64(a23, 32)), s23));
}

/* ---- one-row dots ---------------------------------------------------------------- */

static ALWAYS_INLINE void dot_iq2(int kind, int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *x = w;
	const moe_block_q8_K *y = a;
	const size_t bs = block_bytes(kind);
	xxs_tab tb;
	float sum = 0;

	if (kind == KIND_XXS)
		xxs_tab_load(&tb);
	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const uint8_t *p = x + (size_t)i * bs;
		const int32_t isum = _mm512_reduce_add_epi32(block_isum(kind, p, y[i].qs, &tb));
		sum = fmaf((float)isum, half_to_f32((uint16_t)ld16(p)) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

static void dot_iq2_xxs(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq2(KIND_XXS, n, s, w, a);
}

static void dot_iq2_xs(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq2(KIND_XS, n, s, w, a);
}

/* ---- 8x1 tiles ------------------------------------------------------------------- */

/* Rows w[0..8) against the token a[0] (run_lanes8's tiles): out[k] = row k's
 * result. */
static ALWAYS_INLINE void tile8(int kind, int64_t n_cols, float out[8], const uint8_t *const w[8],
                                const uint8_t *a, const int8_t *yt)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = block_bytes(kind);
	xxs_tab tb;
	__m256 acc = _mm256_setzero_ps();

	if (kind == KIND_XXS)
		xxs_tab_load(&tb);
	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs;
		const moe_block_q8_K *ab = (const moe_block_q8_K *)a + i;
		__m256i v[8];
		lanes8_prefetch(w, wo);
		for (int r = 0; r < 8; r++) {
			const __m512i s = use_t(kind)
			                      ? block_isum_t(kind, w[r] + wo, yt + 256 * i, &tb)
			                      : block_isum(kind, w[r] + wo, ab->qs, &tb);
			v[r] = _mm256_add_epi32(_mm512_castsi512_si256(s),
			                        _mm512_extracti64x4_epi64(s, 1));
		}
		const __m256 d = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(ab->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(0.125f), acc));
}

static void xxs_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                    const void *prep)
{
	tile8(KIND_XXS, n, o, w, a[0], prep);
}

static void xs_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                   const void *prep)
{
	tile8(KIND_XS, n, o, w, a[0], prep);
}

static void s_8x1(int64_t n, float o[8], const uint8_t *const w[8], const uint8_t *const a[8],
                  const void *prep)
{
	tile8(KIND_S, n, o, w, a[0], prep);
}

enum { PREP_STACK_BLOCKS = 64 }; /* rows of up to 16384 columns: the token's prep_t on the stack */

/* The AVX2 tiles for every token but a last lone one after the groups of 8,
 * which takes one8 over runs of the rows (run_lanes8; fewer than 16 rows: a
 * padded tile over them, as run_shape_plain). */
static void gemm_iq2(moe_type t, moe_tile_fn one8, int64_t n_cols, float *y, int64_t ldy,
                     const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                     size_t x_stride, int64_t n_t)
{
	const int64_t full = n_t / 8 * 8, nb = n_cols / MOE_QK_K;
	int8_t stack[PREP_STACK_BLOCKS * MOE_QK_K] __attribute__((aligned(64)));
	int8_t *yt =
	    n_t - full != 1 || nb <= PREP_STACK_BLOCKS ? stack : malloc((size_t)nb * MOE_QK_K);
	if (yt == NULL || n_t - full != 1) { /* several tokens, or no memory: the AVX2 tiles */
		moe_gemm_avx2_iq2(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
		return;
	}
	if (full > 0)
		moe_gemm_avx2_iq2(t)(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full);
	const uint8_t *a = x + (size_t)full * x_stride;
	if (t != MOE_TYPE_IQ2_S)
		prep_t(yt, a, nb);
	if (n_r >= 16)
		run_lanes8(one8, n_cols, y + full * ldy, w, w_stride, n_r, a, yt);
	else
		run_grid(one8, 8, 1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full, n_t, NULL,
		         yt);
	if (yt != stack)
		free(yt);
}

static void gemm_iq2_xxs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                         int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq2(MOE_TYPE_IQ2_XXS, xxs_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq2_xs(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq2(MOE_TYPE_IQ2_XS, xs_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

static void gemm_iq2_s(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                       int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	gemm_iq2(MOE_TYPE_IQ2_S, s_8x1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

/* ---- dispatch -------------------------------------------------------------------- */

void moe_dots_avx512_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	if (!moe_x86_have_vbmi_bitalg())
		return; /* the AVX2 level's stay */
	moe_iq2_tables_init();
	dots[MOE_TYPE_IQ2_XXS] = dot_iq2_xxs;
	dots[MOE_TYPE_IQ2_XS] = dot_iq2_xs;
	/* IQ2_S keeps the AVX2 dot: this one was no faster (in cache 5.9-6.0
	 * against 6.2-6.4 GB/s, three alternating runs) */
}

moe_gemm_fn moe_gemm_avx512_iq2(moe_type t)
{
	if (!moe_x86_have_vbmi_bitalg())
		return moe_gemm_avx2_iq2(t);
	moe_iq2_tables_init(); /* once; a load and a branch after that */
	switch (t) {
	case MOE_TYPE_IQ2_XXS:
		return gemm_iq2_xxs;
	case MOE_TYPE_IQ2_XS:
		return gemm_iq2_xs;
	case MOE_TYPE_IQ2_S:
		return gemm_iq2_s;
	default:
		return NULL;
	}
}
