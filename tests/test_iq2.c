/*
 * test_iq2.c - the IQ2_XXS, IQ2_XS and IQ2_S block formats: dequantisation of
 * hand-built blocks (expected values from grid entries written out here as
 * llama.cpp's ggml-common.h states them, 8 bytes each, independent of our
 * 2-bit index form), the grids' stated properties, the parity sign bit, the
 * scalar reference dot against a double-precision dot of the dequantised
 * operands, and every SIMD level's dots and matrix products against the
 * scalar level bit for bit on blocks of random bytes (sane or random scales),
 * over every rows x tokens edge size.  The fixtures' logits are test_forward's.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"
#include "quant_same_bits.h"

static const moe_type iq2_types[] = {MOE_TYPE_IQ2_XXS, MOE_TYPE_IQ2_XS, MOE_TYPE_IQ2_S};
#define N_IQ2 (sizeof(iq2_types) / sizeof(iq2_types[0]))

/* Value j (0..7) of a grid entry as ggml-common.h writes it (byte j). */
static float gbyte(uint64_t e, int j)
{
	return (float)((e >> (8 * j)) & 255);
}

Test(iq2, type_table)
{
	const struct {
		moe_type t;
		size_t size;
	} want[] = {{MOE_TYPE_IQ2_XXS, 66}, {MOE_TYPE_IQ2_XS, 74}, {MOE_TYPE_IQ2_S, 82}};
	for (size_t i = 0; i < 3; i++) {
		const moe_type_traits *tr = moe_type_get(want[i].t);
		cr_assert_not_null(tr);
		cr_assert_eq(tr->block_size, 256, "%s", tr->name);
		cr_assert_eq(tr->type_size, want[i].size, "%s", tr->name);
		cr_assert_eq(tr->vec_dot_type, MOE_TYPE_Q8_K, "%s", tr->name);
		cr_assert(tr->compute, "%s", tr->name);
		cr_assert_not_null(moe_vec_dot_get(want[i].t), "%s", tr->name);
		/* no quantiser (llama-quantize makes these files) */
		float x[256] = {0};
		uint8_t b[82];
		cr_assert_eq(moe_quantize_row(want[i].t, b, x, 256), MOE_ERR_UNSUPPORTED);
	}
}

/* IQ2_XXS: sub-block 0 takes grid entries 1, 100, 255, 200 with sign fields
 * 0, 127, 5, 1 and scale 3, in a block with d = 0.5; the rest stays 0 (entry
 * 0, all 8; no signs; scale 0).  The 8th sign is the parity of the 7: field
 * 127 negates all 8, 5 values 0 and 2, 1 values 0 and 7. */
Test(iq2, dequant_iq2_xxs_by_hand)
{
	const uint64_t e[4] = {0x080808080808082bull, 0x08192b0808081908ull, 0x2b2b2b1908081908ull,
	                       0x192b081908080808ull};
	const int neg[4] = {0x00, 0xff, 0x05, 0x81};
	uint8_t b[66];
	float y[256];
	memset(b, 0, sizeof b);
	qsb_put16(b, 0x3800); /* 0.5 */
	b[2] = 1, b[3] = 100, b[4] = 255, b[5] = 200;
	const uint32_t a1 = 0u | 127u << 7 | 5u << 14 | 1u << 21 | 3u << 28;
	for (int k = 0; k < 4; k++)
		b[6 + k] = (uint8_t)(a1 >> (8 * k));
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ2_XXS, y, b, 256), MOE_OK);
	for (int l = 0; l < 4; l++)
		for (int j = 0; j < 8; j++) {
			float want = 0.5f * 7.0f / 8.0f * gbyte(e[l], j);
			want = (neg[l] >> j) & 1 ? -want : want;
			cr_assert_eq(y[8 * l + j], want, "value %d: %g vs %g", 8 * l + j,
			             y[8 * l + j], want);
		}
	for (int v = 32; v < 256; v++)
		cr_assert_eq(y[v], 0.5f / 8.0f * 8.0f, "value %d", v);
	cr_assert_eq(y[0], 0.5f * 7 / 8 * 43); /* literal: entry 1's first byte is 0x2b */
	cr_assert_eq(y[8], -0.5f * 7 / 8 * 8);
}

/* IQ2_XS: groups 0..4 take entries 1, 100, 511, 300, 201 with sign fields 0,
 * 127, 5, 1, 64; scales[0] = 0x52 (groups 0-1: s 2, groups 2-3: s 5),
 * scales[1] = 0x0f (group 4: s 15); d = -2. */
Test(iq2, dequant_iq2_xs_by_hand)
{
	const uint64_t e[5] = {0x080808080808082bull, 0x0808192b08081908ull, 0x2b2b2b2b2b2b2b2bull,
	                       0x1908190808191908ull, 0x08192b1908081919ull};
	const int idx[5] = {1, 100, 511, 300, 201}, sg[5] = {0, 127, 5, 1, 64};
	const int neg[5] = {0x00, 0xff, 0x05, 0x81, 0xc0}, s[5] = {2, 2, 5, 5, 15};
	uint8_t b[74];
	float y[256];
	memset(b, 0, sizeof b);
	qsb_put16(b, 0xc000); /* -2 */
	for (int g = 0; g < 5; g++)
		qsb_put16(b + 2 + 2 * g, (uint16_t)(idx[g] | sg[g] << 9));
	b[66] = 0x52, b[67] = 0x0f;
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ2_XS, y, b, 256), MOE_OK);
	for (int g = 0; g < 5; g++)
		for (int j = 0; j < 8; j++) {
			float want = -2.0f * (float)(2 * s[g] + 1) / 8.0f * gbyte(e[g], j);
			want = (neg[g] >> j) & 1 ? -want : want;
			cr_assert_eq(y[8 * g + j], want, "value %d: %g vs %g", 8 * g + j,
			             y[8 * g + j], want);
		}
	cr_assert_eq(y[16], 2.0f * 11 / 8 * 43, "group 2 value 0 is negative (sign field 5)");
}

/* IQ2_S: groups 0..3 take entries 700, 1023, 300, 1 (10-bit: qh[0] = 2 | 3 << 2
 * | 1 << 4 | 0 << 6), explicit sign bytes 0xa5, 0x00, 0xff, 0x01; scales[0] =
 * 0x31; d = 1. */
Test(iq2, dequant_iq2_s_by_hand)
{
	const uint64_t e[4] = {0x1919082b2b080808ull, 0x2b2b2b2b2b2b2b2bull, 0x08191908192b1908ull,
	                       0x080808080808082bull};
	const int idx[4] = {700, 1023, 300, 1}, neg[4] = {0xa5, 0x00, 0xff, 0x01},
	          s[4] = {1, 1, 3, 3};
	uint8_t b[82];
	float y[256];
	memset(b, 0, sizeof b);
	qsb_put16(b, 0x3c00);
	for (int g = 0; g < 4; g++) {
		b[2 + g] = (uint8_t)(idx[g] & 255);
		b[2 + 32 + g] = (uint8_t)neg[g];
		b[66] |= (uint8_t)((idx[g] >> 8) << (2 * g));
	}
	b[74] = 0x31;
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ2_S, y, b, 256), MOE_OK);
	for (int g = 0; g < 4; g++)
		for (int j = 0; j < 8; j++) {
			float want = (float)(2 * s[g] + 1) / 8.0f * gbyte(e[g], j);
			want = (neg[g] >> j) & 1 ? -want : want;
			cr_assert_eq(y[8 * g + j], want, "value %d: %g vs %g", 8 * g + j,
			             y[8 * g + j], want);
		}
	cr_assert_eq(y[8], 3.0f / 8 * 43, "entry 1023 is all 0x2b");
}

/* Properties the formats state, over random blocks with d = 1 and every scale
 * 0 (so |value| = level / 8): the levels are 8, 25 and 43 (all met; 62,
 * IQ3's fourth level, never); IQ2_XXS / IQ2_XS groups have an even
 * number of negative values (the 8th sign is the parity of the 7). */
Test(iq2, grid_levels_and_sign_parity)
{
	enum { N = 256 * 64 };
	for (size_t ti = 0; ti < N_IQ2; ti++) {
		const moe_type t = iq2_types[ti];
		const size_t bs = moe_type_get(t)->type_size;
		rng_state = 77 + ti;
		uint8_t *w = qsb_rand_blocks(t, N, true);
		for (int64_t k = 0; k < N / 256; k++) {
			uint8_t *blk = w + (size_t)k * bs;
			qsb_put16(blk, 0x3c00);
			if (t == MOE_TYPE_IQ2_XXS)
				for (int sb = 0; sb < 8; sb++)
					blk[2 + 8 * sb + 7] &= 0x0f; /* bits 28-31 of a1 */
			else
				memset(blk + bs - 8, 0, 8); /* scales[8] */
		}
		float *y = malloc(sizeof(float) * N);
		cr_assert_not_null(y);
		cr_assert_eq(moe_dequantize_row(t, y, w, N), MOE_OK);
		int count[64] = {0};
		for (int g = 0; g < N / 8; g++) {
			int negs = 0;
			for (int j = 0; j < 8; j++) {
				const float v = y[8 * g + j];
				const float l = fabsf(v) * 8.0f;
				negs += v < 0;
				cr_assert(l == 8 || l == 25 || l == 43, "%s value %d: %g",
				          moe_type_get(t)->name, 8 * g + j, v);
				count[(int)l]++;
			}
			if (t != MOE_TYPE_IQ2_S)
				cr_assert_eq(negs % 2, 0, "%s group %d: %d negative values",
				             moe_type_get(t)->name, g, negs);
		}
		cr_assert(count[8] > 0 && count[25] > 0 && count[43] > 0);
		cr_assert_eq(count[62], 0, "%s", moe_type_get(t)->name);
		free(y);
		free(w);
	}
}

/* The reference dot against sum(dequant(w) * dequant(a)) in double (integer
 * parts exact, then the float rounding of scale products and running sum). */
Test(iq2, reference_matches_dequantised_double)
{
	const int64_t lengths[] = {256, 768, 4096, 256 * 27};
	cr_assert_eq(
	    qsb_reference_double(iq2_types, N_IQ2, lengths, sizeof lengths / sizeof lengths[0]),
	    12);
}

/* Each level's one-row dot gives the reference's bits (NaN for NaN). */
static void dots_same_bits(moe_isa level)
{
	static const int64_t lengths[] = {256, 768, 4096, 256 * 27};
	qsb_dots(level, iq2_types, N_IQ2, lengths, sizeof lengths / sizeof lengths[0], true, "IQ2");
}

ISA_SIMD_TESTS(iq2, dots_same_bits_as_reference, dots_same_bits)

/* Matrix products at each level give the scalar level's bits for every rows
 * x tokens edge size (1..11 rows x 1..19 tokens: every tile shape, padded or
 * not), one token and a few over 37 rows (the 8 row runs), and on 2 threads. */
static void matmul_same_bits(moe_isa level)
{
	qsb_matmul(level, iq2_types, N_IQ2, 768, "IQ2");
}

ISA_SIMD_TESTS(iq2, matmul_same_bits_as_scalar, matmul_same_bits)
