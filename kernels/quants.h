/*
 * quants.h - private to kernels/: the GGUF/ggml block formats (bit-exact with
 * ggml-common.h), half-precision conversions, the scalar reference kernels and
 * the per-ISA dot-product tables.  Not part of the public API.
 *
 * A block stores `block_size` consecutive values of a row.  All multi-byte
 * fields are little-endian (as on every host we build for).  fp16 = IEEE
 * binary16; bf16 = the upper half of an IEEE binary32.
 */
#ifndef MOE_KERNELS_QUANTS_H
#define MOE_KERNELS_QUANTS_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

#define MOE_QK32 32  /* values per block of the 32-block formats */
#define MOE_QK_K 256 /* values per K-quant super-block */

/*
 * Q4_0 (18 bytes / 32 values): value = d * (q - 8), q in 0..15.
 *   byte 0-1   d      fp16
 *   byte 2-17  qs[16] qs[j] low nibble = q of value j, high nibble = q of value j+16
 */
typedef struct moe_block_q4_0 {
	uint16_t d;
	uint8_t qs[16];
} moe_block_q4_0;
static_assert(sizeof(moe_block_q4_0) == 18, "Q4_0 block is 18 bytes");

/*
 * Q4_1 (20 bytes / 32 values): value = d * q + m, q in 0..15.
 *   byte 0-1 d fp16 | byte 2-3 m fp16 | byte 4-19 qs[16] (nibbles as in Q4_0)
 */
typedef struct moe_block_q4_1 {
	uint16_t d;
	uint16_t m;
	uint8_t qs[16];
} moe_block_q4_1;
static_assert(sizeof(moe_block_q4_1) == 20, "Q4_1 block is 20 bytes");

/*
 * Q5_0 (22 bytes / 32 values): value = d * (q - 16), q in 0..31.
 *   byte 0-1   d      fp16
 *   byte 2-5   qh     u32 LE: bit j = bit 4 of q of value j (j = 0..31)
 *   byte 6-21  qs[16] low 4 bits: qs[j] low nibble = value j, high nibble = value j+16
 */
typedef struct moe_block_q5_0 {
	uint16_t d;
	uint8_t qh[4];
	uint8_t qs[16];
} moe_block_q5_0;
static_assert(sizeof(moe_block_q5_0) == 22, "Q5_0 block is 22 bytes");

/*
 * Q5_1 (24 bytes / 32 values): value = d * q + m, q in 0..31.
 *   byte 0-1 d fp16 | 2-3 m fp16 | 4-7 qh (as Q5_0) | 8-23 qs[16] (as Q5_0)
 */
typedef struct moe_block_q5_1 {
	uint16_t d;
	uint16_t m;
	uint8_t qh[4];
	uint8_t qs[16];
} moe_block_q5_1;
static_assert(sizeof(moe_block_q5_1) == 24, "Q5_1 block is 24 bytes");

/*
 * Q8_0 (34 bytes / 32 values): value = d * q, q in -127..127.
 *   byte 0-1 d fp16 | byte 2-33 qs[32] int8, value j = qs[j]
 */
typedef struct moe_block_q8_0 {
	uint16_t d;
	int8_t qs[32];
} moe_block_q8_0;
static_assert(sizeof(moe_block_q8_0) == 34, "Q8_0 block is 34 bytes");

/*
 * Q8_1 (36 bytes / 32 values), activations of Q4_1/Q5_1: value = d * q.
 *   byte 0-1 d fp16 | byte 2-3 s fp16 = d * sum(q) | byte 4-35 qs[32] int8
 */
typedef struct moe_block_q8_1 {
	uint16_t d;
	uint16_t s;
	int8_t qs[32];
} moe_block_q8_1;
static_assert(sizeof(moe_block_q8_1) == 36, "Q8_1 block is 36 bytes");

/*
 * Q4_K (144 bytes / 256 values): 8 sub-blocks of 32 values, each with a 6-bit
 * scale sc and a 6-bit min mn; value = d*sc[s] * q - dmin*mn[s], q in 0..15.
 *   byte 0-1    d       fp16 super-scale of the scales
 *   byte 2-3    dmin    fp16 super-scale of the mins
 *   byte 4-15   scales[12]  the 8 (sc, mn) pairs, 6 bits each:
 *                 s < 4:  sc = scales[s] & 63         mn = scales[s+4] & 63
 *                 s >= 4: sc = (scales[s+4] & 15) | (scales[s-4] >> 6) << 4
 *                         mn = (scales[s+4] >> 4) | (scales[s]   >> 6) << 4
 *               i.e.  byte: 0..3   [hi2 of sc4..7 | sc0..3]
 *                           4..7   [hi2 of mn4..7 | mn0..3]
 *                           8..11  [lo4 mn4..7 | lo4 sc4..7]
 *   byte 16-143 qs[128] 4 chunks of 32 bytes; chunk c holds sub-block 2c in
 *               the low nibbles and sub-block 2c+1 in the high nibbles:
 *               value 64c + l = qs[32c + l] & 15, value 64c + 32 + l = qs[32c + l] >> 4
 */
typedef struct moe_block_q4_K {
	uint16_t d;
	uint16_t dmin;
	uint8_t scales[12];
	uint8_t qs[128];
} moe_block_q4_K;
static_assert(sizeof(moe_block_q4_K) == 144, "Q4_K block is 144 bytes");

/*
 * Q5_K (176 bytes / 256 values): as Q4_K with a fifth bit, q in 0..31.
 *   byte 0-1 d | 2-3 dmin | 4-15 scales[12] (as Q4_K)
 *   byte 16-47  qh[32]  bit 2c of qh[l] = bit 4 of value 64c + l,
 *                       bit 2c+1 of qh[l] = bit 4 of value 64c + 32 + l
 *   byte 48-175 qs[128] low 4 bits, laid out as Q4_K's qs
 */
typedef struct moe_block_q5_K {
	uint16_t d;
	uint16_t dmin;
	uint8_t scales[12];
	uint8_t qh[32];
	uint8_t qs[128];
} moe_block_q5_K;
static_assert(sizeof(moe_block_q5_K) == 176, "Q5_K block is 176 bytes");

/*
 * Q6_K (210 bytes / 256 values): 16 sub-blocks of 16 values with an int8
 * scale each; value = d * scales[v/16] * (q - 32), q in 0..63.
 *   byte 0-127   ql[128] low 4 bits; two halves h = 0,1 of 128 values each:
 *                  for l < 32: value 128h + l      low = ql[64h + l] & 15
 *                              value 128h + 32 + l low = ql[64h + 32 + l] & 15
 *                              value 128h + 64 + l low = ql[64h + l] >> 4
 *                              value 128h + 96 + l low = ql[64h + 32 + l] >> 4
 *   byte 128-191 qh[64]  high 2 bits: qh[32h + l] bits 0-1, 2-3, 4-5, 6-7 are
 *                        the high bits of values 128h + l, +32, +64, +96
 *   byte 192-207 scales[16] int8
 *   byte 208-209 d fp16
 */
typedef struct moe_block_q6_K {
	uint8_t ql[128];
	uint8_t qh[64];
	int8_t scales[16];
	uint16_t d;
} moe_block_q6_K;
static_assert(sizeof(moe_block_q6_K) == 210, "Q6_K block is 210 bytes");

/*
 * Q2_K (84 bytes / 256 values): 16 sub-blocks of 16 values, each with a 4-bit
 * scale sc and a 4-bit min mn; value = d*sc[s] * q - dmin*mn[s], q in 0..3,
 * s = v / 16.
 *   byte 0-15   scales[16]  scales[s] = sc[s] | mn[s] << 4
 *   byte 16-79  qs[64]  two halves h = 0,1 of 128 values; for l < 32 and
 *               j < 4, bits 2j..2j+1 of qs[32h + l] = q of value 128h + 32j + l
 *   byte 80-81  d     fp16 super-scale of the scales
 *   byte 82-83  dmin  fp16 super-scale of the mins
 */
typedef struct moe_block_q2_K {
	uint8_t scales[16];
	uint8_t qs[64];
	uint16_t d;
	uint16_t dmin;
} moe_block_q2_K;
static_assert(sizeof(moe_block_q2_K) == 84, "Q2_K block is 84 bytes");

/*
 * Q3_K (110 bytes / 256 values): 16 sub-blocks of 16 values with a 6-bit
 * scale each; value = d * (sc[s] - 32) * (q - 4), q in 0..7, s = v / 16.
 *   byte 0-31    hmask[32]  bit 2 of q: bit k of hmask[l] is that of value 32k + l
 *   byte 32-95   qs[64]     bits 0-1 of q, laid out as Q2_K's qs
 *   byte 96-107  scales[12] sc[s] = lo4 | hi2 << 4 with
 *                  lo4 = s < 8 ? scales[s] & 15 : scales[s - 8] >> 4
 *                  hi2 = (scales[8 + s % 4] >> (2 * (s / 4))) & 3
 *   byte 108-109 d fp16
 */
typedef struct moe_block_q3_K {
	uint8_t hmask[32];
	uint8_t qs[64];
	uint8_t scales[12];
	uint16_t d;
} moe_block_q3_K;
static_assert(sizeof(moe_block_q3_K) == 110, "Q3_K block is 110 bytes");

/*
 * The "lanes" layouts (kernels/repack_k23.c): Q2_K and Q3_K blocks repacked
 * once at load time for the AVX2 one-token GEMV (moe_repack_rows).  The same
 * values, placed so that int16 lane m of a 32-byte vector of unpacked quants
 * holds two values of sub-block m: byte b of vector v (v < 8, b < 32) is
 * value  lanes_value(v, b) = 16 * (b / 2) + 2 * v + (b & 1)  of the block.
 * The token is rearranged the same way once per product, so the kernel sums
 * a sub-block's products in one int16 lane over the 8 vectors and multiplies
 * by the scales once per block (no per-vector scale pick or widening).
 *
 * Q2_K lanes (84 bytes, moe_block_q2_K's fields): scales, d, dmin as Q2_K;
 * bits 2j..2j+1 of qs[32h + b] = q of value lanes_value(4h + j, b).
 *
 * Q3_K lanes (110 bytes, as Q3_K: a row is repacked in place): q in 0..7 as
 * Q3_K's (bit 2 from hmask) in three 32-byte planes, so that 6 of the 8
 * vectors are one AND each:
 *   bits 0-2 of qs[32k + b] = q of lanes_value(2k, b), bits 3-5 that of
 *   lanes_value(2k + 1, b), k < 3;  bits 6-7 of qs[b] and qs[32 + b] = bits
 *   0-1 of q of lanes_value(6, b) and lanes_value(7, b), bit 6 and 7 of
 *   qs[64 + b] their bit 2;
 *   scales[12]: the 16 six-bit scales sc (0..63, as Q3_K's) one after the
 *   other, little-endian: bits 6s..6s+5 of the 96-bit string are sc[s] (the
 *   kernel gets all 16 into int16 lanes by one byte shuffle, one multiply and
 *   one shift);  d: as Q3_K (bytes 108-109).
 */
typedef struct moe_block_q3_K_lanes {
	uint8_t qs[96];
	uint8_t scales[12];
	uint16_t d;
} moe_block_q3_K_lanes;
static_assert(sizeof(moe_block_q3_K_lanes) == 110, "Q3_K lanes block is 110 bytes");

/* Byte b of the lanes layouts' unpacked vector v: value lanes_value(v, b). */
static inline int moe_lanes_value(int v, int b)
{
	return 16 * (b / 2) + 2 * v + (b & 1);
}

/*
 * Q8_K (292 bytes / 256 values), activations of the K-quants: value = d * q.
 *   byte 0-3     d         f32
 *   byte 4-259   qs[256]   int8
 *   byte 260-291 bsums[16] int16, bsums[g] = sum of qs[16g .. 16g+15]
 */
typedef struct moe_block_q8_K {
	float d;
	int8_t qs[256];
	int16_t bsums[16];
} moe_block_q8_K;
static_assert(sizeof(moe_block_q8_K) == 292, "Q8_K block is 292 bytes");

/*
 * IQ4_NL (18 bytes / 32 values): value = d * moe_iq4nl_values[q], q in 0..15
 * (a fixed non-linear 16-entry table of int8 levels, -127..113).
 *   byte 0-1  d      fp16
 *   byte 2-17 qs[16] qs[j] low nibble = q of value j, high nibble = q of value j+16
 */
typedef struct moe_block_iq4_nl {
	uint16_t d;
	uint8_t qs[16];
} moe_block_iq4_nl;
static_assert(sizeof(moe_block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");

/*
 * IQ4_XS (136 bytes / 256 values): 8 sub-blocks of 32 values with a 6-bit
 * scale ls each; value = d * (ls[s] - 32) * moe_iq4nl_values[q], q in 0..15.
 *   byte 0-1    d           fp16
 *   byte 2-3    scales_h    u16 LE: bits 2s, 2s+1 = bits 4, 5 of ls[s]
 *   byte 4-7    scales_l[4] low 4 bits: ls[s] & 15 = scales_l[s/2] >> 4*(s%2)
 *   byte 8-135  qs[128]     16 bytes per sub-block s (qs[16s..16s+15]):
 *               low nibble = q of value 32s + j, high nibble = of 32s + 16 + j
 */
typedef struct moe_block_iq4_xs {
	uint16_t d;
	uint16_t scales_h;
	uint8_t scales_l[4];
	uint8_t qs[128];
} moe_block_iq4_xs;
static_assert(sizeof(moe_block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");

/*
 * MXFP4 (17 bytes / 32 values), OCP Microscaling FP4: value = 2^(e-127) * fp4(q),
 * fp4 = E2M1 (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6).
 * Computed, as in ggml, as moe_e8m0_half(e) * moe_mxfp4_values[q] with the E2M1
 * values doubled into integers (-12..12) and the scale halved: 2^(e-128).
 *   byte 0    e      E8M0 shared exponent (255 = NaN: the block's values are NaN)
 *   byte 1-16 qs[16] qs[j] low nibble = q of value j, high nibble = q of value j+16
 */
typedef struct moe_block_mxfp4 {
	uint8_t e;
	uint8_t qs[16];
} moe_block_mxfp4;
static_assert(sizeof(moe_block_mxfp4) == 17, "MXFP4 block is 17 bytes");

/*
 * IQ3_XXS (98 bytes / 256 values): 8 sub-blocks of 32 values; each group of
 * 4 values is a point of a 256-entry grid of 4 levels in {4, 12, 20, 28, 36,
 * 44, 52, 62} (moe_iq3xxs_grid), each value with a sign;
 * value = d * (2 * ls + 1) * grid * sign / 4.
 *   byte 0-1   d      fp16
 *   byte 2-65  qs[64] qs[8s + k] = grid index of values 32s + 4k .. + 3
 *   byte 66-97 8 u32 LE words, word s for sub-block s: bits 7l .. 7l + 6 =
 *              the signs of values 32s + 8l + j (j < 7, bit j set: negative),
 *              the sign of value j = 7 makes the count of negatives even;
 *              bits 28-31 = ls
 */
typedef struct moe_block_iq3_xxs {
	uint16_t d;
	uint8_t qs[96];
} moe_block_iq3_xxs;
static_assert(sizeof(moe_block_iq3_xxs) == 98, "IQ3_XXS block is 98 bytes");

/*
 * IQ3_S (110 bytes / 256 values): 8 sub-blocks of 32; groups of 4 values are
 * points of a 512-entry grid of levels in {1, 3, .., 15} (moe_iq3s_grid);
 * value = d * (2 * ls + 1) * grid * sign.
 *   byte 0-1    d          fp16
 *   byte 2-65   qs[64]     low 8 bits of the grid index of values 32s + 4k .. + 3 (qs[8s + k])
 *   byte 66-73  qh[8]      bit k of qh[s] = bit 8 of that index
 *   byte 74-105 signs[32]  bit j of signs[4s + l] set: value 32s + 8l + j negative
 *   byte 106-109 scales[4] ls of sub-block s = (scales[s / 2] >> 4 * (s % 2)) & 15
 */
typedef struct moe_block_iq3_s {
	uint16_t d;
	uint8_t qs[64];
	uint8_t qh[8];
	uint8_t signs[32];
	uint8_t scales[4];
} moe_block_iq3_s;
static_assert(sizeof(moe_block_iq3_s) == 110, "IQ3_S block is 110 bytes");

/*
 * IQ1_S (50 bytes / 256 values): 8 sub-blocks of 32; groups of 8 values are
 * points of a 2048-entry grid of values in {-1, 0, 1} (moe_iq1s_grid);
 * value = d * (2 * ls + 1) * (grid + delta), delta = +-1/8 per sub-block.
 *   byte 0-1   d       fp16
 *   byte 2-33  qs[32]  low 8 bits of the grid index of values 32s + 8l .. + 7 (qs[4s + l])
 *   byte 34-49 qh[8]   u16 LE per sub-block: bits 3l .. 3l + 2 = index bits 8-10 of
 *                      group l, bits 12-14 = ls, bit 15 set: delta = -1/8
 */
typedef struct moe_block_iq1_s {
	uint16_t d;
	uint8_t qs[32];
	uint16_t qh[8];
} moe_block_iq1_s;
static_assert(sizeof(moe_block_iq1_s) == 50, "IQ1_S block is 50 bytes");

/*
 * IQ1_M (56 bytes / 256 values): IQ1_S's grid and groups of 8, a 3-bit scale
 * per 16 values and a delta per group; value = d * (2 * ls + 1) * (grid + delta).
 *   byte 0-31  qs[32]    as IQ1_S
 *   byte 32-47 qh[16]    qh[2s + h]: low nibble for group l = 2h of sub-block s,
 *                        high nibble for l = 2h + 1: bits 0-2 = index bits 8-10,
 *                        bit 3 set: delta = -1/8 (else +1/8)
 *   byte 48-55 scales[8] 4 u16 LE words w[k]: bits 6 (s % 2) .. + 2 = ls of values
 *                        32s .. 32s + 15 of sub-block s = 2k + s % 2, the next 3 bits
 *                        ls of values 32s + 16 .. + 31; bits 12-15 of w[0..3] are
 *                        bits 0-3, 4-7, 8-11, 12-15 of the fp16 super-scale d
 */
typedef struct moe_block_iq1_m {
	uint8_t qs[32];
	uint8_t qh[16];
	uint8_t scales[8];
} moe_block_iq1_m;
static_assert(sizeof(moe_block_iq1_m) == 56, "IQ1_M block is 56 bytes");

/* The grids, as ggml lays them out (4 uint8 levels per IQ3 point, 8 int8
 * values per IQ1 point, point c's value j in byte j), expanded once by
 * moe_iq13_init from the point sets in iq13_grids.c (bitmaps of the points
 * in increasing order, point digits c_j: IQ3 bit sum c_j 8^j with level
 * c_j, IQ1 bit sum (v_j + 1) 3^j), and moe_iq_signs[b]: byte j = -1 where
 * bit j of b is set, else +1. */
extern uint32_t moe_iq3xxs_grid[256];
extern uint32_t moe_iq3s_grid[512];
extern uint64_t moe_iq1s_grid[2048];
extern uint64_t moe_iq_signs[256];
extern const uint64_t moe_iq3xxs_grid_set[64];
extern const uint64_t moe_iq3s_grid_set[64];
extern const uint64_t moe_iq1s_grid_set[103];
/* Expands the grids (once; thread-safe).  moe_dequant_iq13 and the
 * moe_dots_*_iq13 table fillers call it, so every kernel that reads the grids
 * runs after it. */
void moe_iq13_init(void);

/* The IQ1_M fp16 super-scale (bits 12-15 of its 4 scale words). */
static inline uint16_t moe_iq1m_d(const moe_block_iq1_m *b)
{
	uint16_t w[4];
	memcpy(w, b->scales, 8);
	return (uint16_t)((w[0] >> 12) | ((w[1] >> 8) & 0x00f0) | ((w[2] >> 4) & 0x0f00) |
	                  (w[3] & 0xf000));
}

/*
 * IQ2_XXS (66 bytes / 256 values): 8 sub-blocks of 32 values, each 4 groups
 * of 8 values from a 256-entry grid (moe_iq2xxs_grid) with a sign per value;
 * value = d * (2 s + 1) / 8 * moe_iq2_levels[grid level] * sign, s a 4-bit
 * sub-block scale.
 *   byte 0-1   d      fp16
 *   byte 2-65  qs[32] u16; sub-block b is qs[4b..4b+3] read as two u32 LE
 *              words a0, a1: byte l of a0 = grid index of group l (values
 *              32b + 8l .. +7); bits 7l..7l+6 of a1 = signs of group l's
 *              first 7 values (bit j set: value j negative), the 8th sign the
 *              parity of those 7 (moe_iq2_sign_byte); bits 28-31 of a1 = s
 */
typedef struct moe_block_iq2_xxs {
	uint16_t d;
	uint16_t qs[32];
} moe_block_iq2_xxs;
static_assert(sizeof(moe_block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");

/*
 * IQ2_XS (74 bytes / 256 values): 32 groups of 8 values from a 512-entry grid
 * (moe_iq2xs_grid), signs as IQ2_XXS's; two 4-bit scales per 32 values;
 * value = d * (2 s + 1) / 8 * level * sign.
 *   byte 0-1   d          fp16
 *   byte 2-65  qs[32]     u16, group g (values 8g .. 8g+7): bits 0-8 = grid
 *                         index, bits 9-15 = the 7 sign bits (8th: parity)
 *   byte 66-73 scales[8]  scales[b] low nibble = s of groups 4b, 4b+1, high
 *                         nibble = s of groups 4b+2, 4b+3
 */
typedef struct moe_block_iq2_xs {
	uint16_t d;
	uint16_t qs[32];
	uint8_t scales[8];
} moe_block_iq2_xs;
static_assert(sizeof(moe_block_iq2_xs) == 74, "IQ2_XS block is 74 bytes");

/*
 * IQ2_S (82 bytes / 256 values): 32 groups of 8 values from a 1024-entry grid
 * (moe_iq2s_grid) with 8 explicit sign bits each; scales as IQ2_XS's.
 *   byte 0-1   d          fp16
 *   byte 2-33  qs[0..31]  low 8 bits of group g's grid index
 *   byte 34-65 qs[32..63] signs: qs[32 + g] bit j set = value 8g + j negative
 *   byte 66-73 qh[8]      bits 2l, 2l+1 of qh[b] = bits 8, 9 of group 4b+l's index
 *   byte 74-81 scales[8]  as IQ2_XS
 */
typedef struct moe_block_iq2_s {
	uint16_t d;
	uint8_t qs[64];
	uint8_t qh[8];
	uint8_t scales[8];
} moe_block_iq2_s;
static_assert(sizeof(moe_block_iq2_s) == 82, "IQ2_S block is 82 bytes");

/* The IQ2 grids (quants_iq2_grids.c, written by tests/make_iq2_grids.py):
 * value i of entry k is moe_iq2_levels[(grid[k] >> 2 i) & 3], an index 0..2
 * (3 never occurs: the script checks it). */
extern const uint8_t moe_iq2_levels[3];
extern const uint16_t moe_iq2xxs_grid[256];
extern const uint16_t moe_iq2xs_grid[512];
extern const uint16_t moe_iq2s_grid[1024];

/* The same expanded for the SIMD kernels (quants_iq2.c, filled once by
 * moe_iq2_tables_init, which the functions that hand out those kernels,
 * moe_dots_<level>_iq2, call first; thread-safe): byte i of
 * entry k = value i; and moe_iq2_signs64[m] byte j = -1 (0xff) where bit j of
 * m is set, else +1. */
extern uint64_t moe_iq2xxs_grid64[256];
extern uint64_t moe_iq2xs_grid64[512];
extern uint64_t moe_iq2s_grid64[1024];
extern uint64_t moe_iq2_signs64[256];
/* moe_iq2_signs64 of an IQ2_XXS/IQ2_XS 7-bit sign field (its parity bit added). */
extern uint64_t moe_iq2_esigns64[128];
void moe_iq2_tables_init(void);

/* The 8 sign bits of a 7-bit IQ2_XXS/IQ2_XS sign field: bit 7 makes the
 * number of negative values even. */
static inline int moe_iq2_sign_byte(int k)
{
	int p = k ^ (k >> 4);
	p ^= p >> 2;
	p ^= p >> 1;
	return k | (p & 1) << 7;
}

/* The levels of IQ4_NL/IQ4_XS codes and the doubled E2M1 values of MXFP4
 * codes (quants_iq4.c). */
extern const int8_t moe_iq4nl_values[16];
extern const int8_t moe_mxfp4_values[16];

/* ---- half-precision conversions (bit-exact, round to nearest even) -------- */

static inline float moe_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline uint32_t moe_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

float moe_fp16_to_f32(uint16_t h);
uint16_t moe_f32_to_fp16(float f);

static inline float moe_bf16_to_f32(uint16_t h)
{
	return moe_bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaNs stay NaN (quietened). */
static inline uint16_t moe_f32_to_bf16(float f)
{
	uint32_t u = moe_f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40u);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The 6-bit scale and min of sub-block s (0..7) of a Q4_K/Q5_K block. */
static inline void moe_k4_scale_min(int s, const uint8_t *scales, uint8_t *sc, uint8_t *mn)
{
	if (s < 4) {
		*sc = scales[s] & 63;
		*mn = scales[s + 4] & 63;
	} else {
		*sc = (uint8_t)((scales[s + 4] & 15) | ((scales[s - 4] >> 6) << 4));
		*mn = (uint8_t)((scales[s + 4] >> 4) | ((scales[s] >> 6) << 4));
	}
}

/* Half an E8M0 scale, 2^(e-128) as f32 (e = 0, 1: subnormal); NaN for e = 255. */
static inline float moe_e8m0_half(uint8_t e)
{
	if (e == 255)
		return moe_bits_f32(0x7fc00000u);
	if (e < 2)
		return moe_bits_f32(0x00200000u << e);
	return moe_bits_f32((uint32_t)(e - 1) << 23);
}

/* The 6-bit scale ls (0..63) of sub-block s (0..7) of an IQ4_XS block. */
static inline int moe_iq4xs_scale(const moe_block_iq4_xs *b, int s)
{
	return ((b->scales_l[s / 2] >> (4 * (s % 2))) & 15) | ((b->scales_h >> (2 * s)) & 3) << 4;
}

/* The 6-bit scale (0..63, before the -32) of sub-block s (0..15) of a Q3_K block. */
static inline int moe_k3_scale(int s, const uint8_t *scales)
{
	int lo = s < 8 ? scales[s] & 15 : scales[s - 8] >> 4;
	return lo | ((scales[8 + s % 4] >> (2 * (s / 4))) & 3) << 4;
}

/* Round to nearest, ties to even, for |f| < 2^22 (the 2^23 + 2^22 trick, as
 * ggml's quantizers round). */
static inline int moe_nearest_int(float f)
{
	return (int)(moe_f32_bits(f + 12582912.f) & 0x007fffffu) - 0x00400000;
}

/* The best (scale, min) with q in 0..nmax (L[0..n), n <= 32) for x[0..n)
 * under w-weighted squared error, or absolute error with mad, searching nstep
 * + 1 scales (rmin + rdelta * is + nmax) / (max - min) around nmax/(max-min)
 * (ggml's make_qkx2_quants; Q4_K/Q5_K squared, Q2_K absolute).  Returns the
 * scale; *neg_min = -min (>= 0). */
float moe_fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                        float rmin, float rdelta, int nstep, bool mad);

/* ---- scalar references (quants.c) ----------------------------------------------- */

/* The canonical arithmetic of the block types with tile kernels (Q8_0, Q4_0,
 * Q5_0, Q4_K, Q5_K, Q6_K), which every level's products follow bit for bit:
 * per block the exact integer sum isum (K-quants: of sub-block scale times
 * sub-block dot; Q4_K/Q5_K also msum of mins times bsums), then
 * acc = fmaf((float)isum, dw * da, acc) in block order (dw, da the weight's
 * and the activation's block scales as f32; Q4_K/Q5_K a second accumulator
 * with dmin), the result acc (minus the mins' accumulator).  Q2_K is Q4_K's
 * arithmetic over 16 sub-blocks of 16 (msum = sum mn[s] * bsums[s]); Q3_K
 * Q6_K's with scales sc - 32 and q - 4 (isum = sum (sc[s] - 32) * sum
 * (q - 4) * a), their tiles in isa_<level>_k23.c. */

void moe_vec_dot_f32_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_f16_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_bf16_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q4_0_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q4_1_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q5_0_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q5_1_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q8_0_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q4_K_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q5_K_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q6_K_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q2_K_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_q3_K_ref(int64_t n, float *s, const void *w, const void *a);

/* Q2_K / Q3_K rows (quants_k23.c): dequantisation and ggml's reference
 * quantizers (quantize_row_q2_K_ref / _q3_K_ref, what llama-quantize runs
 * without an imatrix); n a multiple of 256, x finite. */
void moe_dequant_q2_K(float *y, const void *src, int64_t n);
void moe_dequant_q3_K(float *y, const void *src, int64_t n);
void moe_quant_q2_K(void *dst, const float *x, int64_t n);
void moe_quant_q3_K(void *dst, const float *x, int64_t n);

/* IQ4_NL and MXFP4 (x Q8_0), IQ4_XS (x Q8_K): quants_iq4.c.  Canonical
 * arithmetic as above: per block the exact integer sum (IQ4_XS: of
 * (ls - 32) times each sub-block's dot), acc = fmaf((float)isum, dw * da, acc)
 * in block order, dw = fp16 d (MXFP4: moe_e8m0_half(e)). */
void moe_vec_dot_iq4_nl_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq4_xs_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_mxfp4_ref(int64_t n, float *s, const void *w, const void *a);
/* Dequantises n values of IQ4_NL, IQ4_XS or MXFP4 (n a multiple of the block). */
void moe_dequant_iq4(moe_type t, float *y, const void *src, int64_t n);
/* Quantises n finite floats to IQ4_NL, IQ4_XS or MXFP4 (ggml's algorithms, no
 * importance matrix). */
void moe_quant_iq4(moe_type t, void *dst, const float *x, int64_t n);
void moe_dots_ref_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_avx2_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_avx2_iq4.c */
void moe_dots_neon_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_neon_iq4.c */

/* IQ3_XXS, IQ3_S, IQ1_S, IQ1_M (x Q8_K): quants_iq13.c.  Canonical
 * arithmetic: per block the exact integer sum over sub-blocks of ls' times
 * the sub-block's dot of int8 weights with the activations, ls' = 2 ls + 1
 * and the weights grid * sign (IQ3) or 8 * (grid + delta) = 8 grid +- 1 (IQ1, in
 * -9..9; IQ1_M per 16 values), then acc = fmaf((float)isum, dw * da, acc)
 * in block order with dw = fp16 d times 1/4 (IQ3_XXS), 1 (IQ3_S) or 1/8
 * (IQ1), an exact product. */
void moe_vec_dot_iq3_xxs_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq3_s_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq1_s_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq1_m_ref(int64_t n, float *s, const void *w, const void *a);
/* Dequantises n values (a multiple of 256) of one of those types. */
void moe_dequant_iq13(moe_type t, float *y, const void *src, int64_t n);
void moe_dots_ref_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_avx2_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_avx2_iq13.c */
void moe_dots_neon_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_neon_iq13.c */
/* IQ2_XXS, IQ2_XS, IQ2_S (x Q8_K): quants_iq2.c.  Canonical arithmetic: per
 * block the exact integer sum isum = sum over scales of (2 s + 1) times the
 * dot of its signed grid values with the activations, acc =
 * fmaf((float)isum, dw * da, acc) in block order (dw the fp16 d, da Q8_K's d),
 * the result 0.125f * acc.  The AVX2 kernels sign the activations, so they
 * take |q8| <= 127 (as moe_quantize_act makes them: no -128 to negate). */
void moe_vec_dot_iq2_xxs_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq2_xs_ref(int64_t n, float *s, const void *w, const void *a);
void moe_vec_dot_iq2_s_ref(int64_t n, float *s, const void *w, const void *a);
/* Dequantises n values of IQ2_XXS, IQ2_XS or IQ2_S (n a multiple of 256). */
void moe_dequant_iq2(moe_type t, float *y, const void *src, int64_t n);
void moe_dots_ref_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_avx2_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_avx2_iq2.c */
/* isa_avx512_iq2.c: only where the CPU has AVX512_VBMI and AVX512_BITALG */
void moe_dots_avx512_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_neon_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* isa_neon_iq2.c */

/* Fills dots[type] with the scalar references (NULL where none). */
void moe_dots_ref(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);

/* ---- per-ISA tables (isa_<level>_*.c): overwrite the entries they have ----------- */

void moe_dots_avx2(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_avx512(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_neon(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);         /* base Armv8-A */
void moe_dots_neon_dotprod(moe_vec_dot_fn dots[MOE_TYPE_COUNT]); /* + SDOT */

/* Q2_K and Q3_K (isa_<level>_k23.c), called by the tables above. */
void moe_dots_avx2_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_neon_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);
void moe_dots_neon_dotprod_k23(moe_vec_dot_fn dots[MOE_TYPE_COUNT]);

/* The float vector ops (kernels.h moe_vec_ops): references, AVX2 + F16C. */
void moe_vec_ops_ref(moe_vec_ops *ops);
void moe_vec_ops_avx2(moe_vec_ops *ops);   /* all but fix_axpy */
void moe_vec_ops_avx512(moe_vec_ops *ops); /* fix_axpy */

#endif
