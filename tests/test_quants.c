/*
 * test_quants.c - block formats: sizes, half-precision conversion, dequantisation
 * of hand-built blocks (expected values from the format formulas written out
 * here), activation quantisation bit patterns, quantise -> dequantise error.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test_rng.h"

/* ---- helpers independent of the code under test ------------------------------ */

/* Roughly normal (sum of 4 uniforms), like trained weights. */
static float rng_normal(void)
{
	return (rng_unif() + rng_unif() + rng_unif() + rng_unif()) * 0.5f;
}

/* fp16 bits -> float by the IEEE formula (independent of kernels/). */
static float half_value(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v;

	if (e == 0)
		v = ldexp(m, -24);
	else if (e == 31)
		v = m ? NAN : INFINITY;
	else
		v = ldexp(1024 + m, e - 25);
	return (float)((h & 0x8000) ? -v : v);
}

/* The nearest fp16 (ties to even) of a float, by search over the finite halves. */
static uint16_t half_nearest(float f)
{
	uint16_t best = 0;
	double bestd = INFINITY;

	for (uint32_t h = 0; h < 0x10000; h++) {
		if (((h >> 10) & 31) == 31)
			continue;
		double dd = fabs((double)half_value((uint16_t)h) - (double)f);
		if (dd < bestd || (dd == bestd && (h & 1) == 0 && half_value((uint16_t)h) != 0)) {
			bestd = dd;
			best = (uint16_t)h;
		}
	}
	return best;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

/* ---- sizes ---------------------------------------------------------------------- */

Test(quants, block_sizes_are_ggml)
{
	/* From ggml-common.h: (type, values per block, bytes per block). */
	static const struct {
		moe_type t;
		int64_t bs;
		size_t sz;
	} want[] = {
	    {MOE_TYPE_F32, 1, 4},      {MOE_TYPE_F16, 1, 2},      {MOE_TYPE_BF16, 1, 2},
	    {MOE_TYPE_Q4_0, 32, 18},   {MOE_TYPE_Q4_1, 32, 20},   {MOE_TYPE_Q5_0, 32, 22},
	    {MOE_TYPE_Q5_1, 32, 24},   {MOE_TYPE_Q8_0, 32, 34},   {MOE_TYPE_Q8_1, 32, 36},
	    {MOE_TYPE_Q4_K, 256, 144}, {MOE_TYPE_Q5_K, 256, 176}, {MOE_TYPE_Q6_K, 256, 210},
	    {MOE_TYPE_Q8_K, 256, 292},
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const moe_type_traits *tr = moe_type_get(want[i].t);
		cr_assert_not_null(tr);
		cr_assert_eq(tr->block_size, want[i].bs, "%s", tr->name);
		cr_assert_eq(tr->type_size, want[i].sz, "%s", tr->name);
		cr_assert_eq(moe_row_size(want[i].t, 4096), 4096 / want[i].bs * want[i].sz);
	}
	cr_assert_eq(moe_act_row_size(MOE_TYPE_Q4_K, 512), 2 * 292);
	cr_assert_eq(moe_act_row_size(MOE_TYPE_Q4_0, 64), 2 * 34);
	cr_assert_eq(moe_act_row_size(MOE_TYPE_Q4_1, 64), 2 * 36);
	cr_assert_eq(moe_act_row_size(MOE_TYPE_BF16, 10), 40);
	cr_assert_eq(moe_act_row_size(MOE_TYPE_TQ1_0, 256), 0);
}

/* ---- half precision ------------------------------------------------------------- */

Test(quants, fp16_every_half_round_trips)
{
	float f[1];
	uint16_t h[1], back[1];

	for (uint32_t v = 0; v < 0x10000; v++) {
		if (((v >> 10) & 31) == 31 && (v & 1023) != 0)
			continue; /* NaN payloads are not preserved bit-for-bit */
		h[0] = (uint16_t)v;
		cr_assert_eq(moe_dequantize_row(MOE_TYPE_F16, f, h, 1), MOE_OK);
		float want = half_value((uint16_t)v);
		cr_assert(f[0] == want || (isnan(want) && isnan(f[0])), "half %04x: %g vs %g", v,
		          f[0], want);
		cr_assert(signbit(f[0]) == signbit(want));
		cr_assert_eq(moe_quantize_row(MOE_TYPE_F16, back, f, 1), MOE_OK);
		cr_assert_eq(back[0], v, "half %04x came back as %04x", v, back[0]);
	}
}

Test(quants, fp16_rounds_to_nearest_even)
{
	/* Known encodings, ties, overflow, subnormals. */
	static const struct {
		float f;
		uint16_t h;
	} known[] = {
	    {1.0f, 0x3c00},
	    {-2.0f, 0xc000},
	    {65504.0f, 0x7bff},
	    {65519.99f, 0x7bff},
	    {65520.0f, 0x7c00},
	    {1e9f, 0x7c00},
	    {6.103515625e-05f, 0x0400},
	    {5.9604644775390625e-08f, 0x0001},
	    {2.98023223876953125e-08f, 0x0000}, /* half of the smallest: tie to even 0 */
	    {8.940696716308594e-08f, 0x0002},   /* 1.5 steps: tie to even 2 */
	    {1.00048828125f, 0x3c00},           /* 1 + 2^-11: tie to even */
	    {1.00146484375f, 0x3c02},           /* 1 + 3*2^-11: tie to even */
	    {0.1f, 0x2e66},
	    {-0.0f, 0x8000},
	    {INFINITY, 0x7c00},
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		uint16_t h;
		cr_assert_eq(moe_quantize_row(MOE_TYPE_F16, &h, &known[i].f, 1), MOE_OK);
		cr_assert_eq(h, known[i].h, "%.10g -> %04x, want %04x", known[i].f, h, known[i].h);
	}
	/* Random floats in the half range: the result is the nearest half. */
	rng_state = 11;
	for (int i = 0; i < 200; i++) {
		float f = ldexpf(rng_unif(), (int)(rng_next() % 40) - 26);
		uint16_t h;
		cr_assert_eq(moe_quantize_row(MOE_TYPE_F16, &h, &f, 1), MOE_OK);
		cr_assert_eq(h & 0x7fff, half_nearest(fabsf(f)), "%.10g", f);
	}
}

Test(quants, bf16_conversion)
{
	static const struct {
		uint32_t f;
		uint16_t h;
	} known[] = {
	    {0x3f800000u, 0x3f80}, /* 1.0 */
	    {0x3f808000u, 0x3f80}, /* tie, even stays */
	    {0x3f818000u, 0x3f82}, /* tie, odd rounds up */
	    {0x3f808001u, 0x3f81}, /* just above the tie */
	    {0xc0490fdbu, 0xc049}, /* -pi */
	    {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to inf */
	    {0x7fc00001u, 0x7fc0}, /* NaN stays NaN */
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		float f;
		uint16_t h;
		memcpy(&f, &known[i].f, 4);
		cr_assert_eq(moe_quantize_row(MOE_TYPE_BF16, &h, &f, 1), MOE_OK);
		cr_assert_eq(h, known[i].h, "%08x -> %04x, want %04x", known[i].f, h, known[i].h);
		float back;
		cr_assert_eq(moe_dequantize_row(MOE_TYPE_BF16, &back, &h, 1), MOE_OK);
		uint32_t bb;
		memcpy(&bb, &back, 4);
		cr_assert_eq(bb, (uint32_t)h << 16);
	}
}

/* ---- dequantisation of hand-built blocks ------------------------------------------ */

Test(quants, dequant_q4_0_q4_1_q8_0_by_hand)
{
	uint8_t b[20];
	float y[32];

	/* Q4_0: d = 0.5 (0x3800); nibble of value j is j % 16. */
	put16(b, 0x3800);
	for (int j = 0; j < 16; j++)
		b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q4_0, y, b, 32), MOE_OK);
	for (int j = 0; j < 16; j++) {
		cr_assert_eq(y[j], 0.5f * (j - 8));
		cr_assert_eq(y[j + 16], 0.5f * (15 - j - 8));
	}
	/* Q4_1: d = 2, m = -1.5 (0xbe00). */
	put16(b, 0x4000);
	put16(b + 2, 0xbe00);
	for (int j = 0; j < 16; j++)
		b[4 + j] = (uint8_t)(j | ((15 - j) << 4));
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q4_1, y, b, 32), MOE_OK);
	for (int j = 0; j < 16; j++) {
		cr_assert_eq(y[j], 2.0f * j - 1.5f);
		cr_assert_eq(y[j + 16], 2.0f * (15 - j) - 1.5f);
	}
	/* Q8_0: d = 0.25 (0x3400), q = j - 16. */
	uint8_t c[34];
	put16(c, 0x3400);
	for (int j = 0; j < 32; j++)
		c[2 + j] = (uint8_t)(int8_t)(j - 16);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q8_0, y, c, 32), MOE_OK);
	for (int j = 0; j < 32; j++)
		cr_assert_eq(y[j], 0.25f * (j - 16));
}

Test(quants, dequant_q5_0_q5_1_by_hand)
{
	uint8_t b[24];
	float y[32];
	int q[32];

	for (int j = 0; j < 32; j++)
		q[j] = (j * 7 + 3) % 32;
	/* Q5_0: d = 1 (0x3c00); qh bit j = bit 4 of q[j], little-endian u32. */
	memset(b, 0, sizeof(b));
	put16(b, 0x3c00);
	for (int j = 0; j < 32; j++)
		if (q[j] & 16)
			b[2 + j / 8] |= (uint8_t)(1 << (j % 8));
	for (int j = 0; j < 16; j++)
		b[6 + j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q5_0, y, b, 32), MOE_OK);
	for (int j = 0; j < 32; j++)
		cr_assert_eq(y[j], (float)(q[j] - 16), "value %d", j);
	/* Q5_1: d = 0.5, m = 3. */
	memset(b, 0, sizeof(b));
	put16(b, 0x3800);
	put16(b + 2, 0x4200);
	for (int j = 0; j < 32; j++)
		if (q[j] & 16)
			b[4 + j / 8] |= (uint8_t)(1 << (j % 8));
	for (int j = 0; j < 16; j++)
		b[8 + j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q5_1, y, b, 32), MOE_OK);
	for (int j = 0; j < 32; j++)
		cr_assert_eq(y[j], 0.5f * q[j] + 3.0f, "value %d", j);
}

/* Packs 8 six-bit (scale, min) pairs the way Q4_K/Q5_K store them. */
static void pack_k4_scales(uint8_t out[12], const int sc[8], const int mn[8])
{
	for (int s = 0; s < 4; s++) {
		out[s] = (uint8_t)((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
		out[s + 4] = (uint8_t)((mn[s] & 63) | ((mn[s + 4] >> 4) << 6));
		out[s + 8] = (uint8_t)((sc[s + 4] & 15) | ((mn[s + 4] & 15) << 4));
	}
}

Test(quants, dequant_q4_K_by_hand)
{
	/* d = 0.5, dmin = 0.25; scales and mins use all six bits. */
	const int sc[8] = {1, 63, 17, 32, 48, 5, 60, 33};
	const int mn[8] = {62, 0, 19, 44, 7, 63, 31, 16};
	uint8_t b[144];
	float y[256];

	put16(b, 0x3800);
	put16(b + 2, 0x3400);
	pack_k4_scales(b + 4, sc, mn);
	/* value v has q = (v * 5 + v / 32) % 16 */
	for (int c = 0; c < 4; c++)
		for (int l = 0; l < 32; l++) {
			int v0 = 64 * c + l, v1 = 64 * c + 32 + l;
			b[16 + 32 * c + l] =
			    (uint8_t)(((v0 * 5 + v0 / 32) % 16) | ((v1 * 5 + v1 / 32) % 16) << 4);
		}
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q4_K, y, b, 256), MOE_OK);
	for (int v = 0; v < 256; v++) {
		int s = v / 32, q = (v * 5 + v / 32) % 16;
		float want = 0.5f * sc[s] * q - 0.25f * mn[s];
		cr_assert_float_eq(y[v], want, 1e-6, "value %d: %g vs %g", v, y[v], want);
	}
}

Test(quants, dequant_q5_K_by_hand)
{
	const int sc[8] = {3, 63, 20, 40, 50, 9, 61, 34};
	const int mn[8] = {60, 1, 18, 45, 8, 62, 30, 17};
	uint8_t b[176];
	float y[256];

	memset(b, 0, sizeof(b));
	put16(b, 0x3400);     /* d = 0.25 */
	put16(b + 2, 0x3000); /* dmin = 0.125 */
	pack_k4_scales(b + 4, sc, mn);
	for (int v = 0; v < 256; v++) {
		int q = (v * 11 + 7) % 32, c = v / 64, l = v % 32, upper = (v % 64) >= 32;
		b[48 + 32 * c + l] |= (uint8_t)((q & 15) << (upper ? 4 : 0));
		if (q & 16)
			b[16 + l] |= (uint8_t)(1 << (2 * c + upper));
	}
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q5_K, y, b, 256), MOE_OK);
	for (int v = 0; v < 256; v++) {
		int s = v / 32, q = (v * 11 + 7) % 32;
		float want = 0.25f * sc[s] * q - 0.125f * mn[s];
		cr_assert_float_eq(y[v], want, 1e-6, "value %d: %g vs %g", v, y[v], want);
	}
}

Test(quants, dequant_q6_K_by_hand)
{
	uint8_t b[210];
	float y[256];
	int8_t scales[16];

	memset(b, 0, sizeof(b));
	for (int g = 0; g < 16; g++)
		scales[g] = (int8_t)(g * 17 - 128);
	memcpy(b + 192, scales, 16);
	put16(b + 208, 0x3800); /* d = 0.5 */
	for (int v = 0; v < 256; v++) {
		int q = (v * 13 + 5) % 64;
		int h = v / 128, r = v % 128, quarter = r / 32, l = r % 32;
		/* quarters 0,1 use the low nibbles of ql[64h + l], ql[64h + 32 + l];
		 * quarters 2,3 the high nibbles of the same bytes */
		int byte = 64 * h + (quarter % 2) * 32 + l;
		b[byte] |= (uint8_t)((q & 15) << (quarter >= 2 ? 4 : 0));
		b[128 + 32 * h + l] |= (uint8_t)((q >> 4) << (2 * quarter));
	}
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q6_K, y, b, 256), MOE_OK);
	for (int v = 0; v < 256; v++) {
		int q = (v * 13 + 5) % 64;
		float want = 0.5f * scales[v / 16] * (q - 32);
		cr_assert_float_eq(y[v], want, 1e-6, "value %d: %g vs %g", v, y[v], want);
	}
}

Test(quants, dequant_errors)
{
	float y[64];
	uint8_t b[64] = {0};

	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q4_0, y, b, 31), MOE_ERR_INVAL);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_TQ1_0, y, b, 256), MOE_ERR_UNSUPPORTED);
	cr_assert_eq(moe_dequantize_row((moe_type)4, y, b, 32), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_quantize_row(MOE_TYPE_Q4_K, b, y, 100), MOE_ERR_INVAL);
	float bad[32] = {0};
	bad[3] = NAN;
	cr_assert_eq(moe_quantize_row(MOE_TYPE_Q8_0, b, bad, 32), MOE_ERR_BAD_VALUE);
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q8_0, b, bad, 32), MOE_ERR_BAD_VALUE);
	cr_assert_eq(moe_quantize_act(MOE_TYPE_TQ1_0, b, y, 256), MOE_ERR_UNSUPPORTED);
}

/* ---- activation quantisation: exact bit patterns ------------------------------------ */

Test(quants, act_q8_0_rounds_half_to_even)
{
	/* amax = 127 gives d = 1 and multiplier 127/127 = 1 exactly, so the
	 * halves below are exact ties: llama.cpp's x86 path rounds them to even. */
	float x[32];
	for (int j = 0; j < 32; j++)
		x[j] = (float)(j - 16) + 0.5f;
	x[31] = 127.0f;
	uint8_t b[34];
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q4_0, b, x, 32), MOE_OK);
	cr_assert_eq(get16(b), 0x3c00); /* d = 1.0 */
	for (int j = 0; j < 31; j++) {
		double t = x[j];
		double want = nearbyint(t); /* default mode: ties to even */
		cr_assert_eq((int8_t)b[2 + j], (int)want, "x = %g: %d", x[j], (int8_t)b[2 + j]);
	}
	cr_assert_eq((int8_t)b[33], 127);
	/* The weight quantiser (llama-quantize's) rounds ties away from zero. */
	cr_assert_eq(moe_quantize_row(MOE_TYPE_Q8_0, b, x, 32), MOE_OK);
	for (int j = 0; j < 31; j++)
		cr_assert_eq((int8_t)b[2 + j], (int)round(x[j]));
}

Test(quants, act_q8_0_random_blocks)
{
	rng_state = 5;
	float x[256];
	uint8_t b[8 * 34];

	for (int j = 0; j < 256; j++)
		x[j] = rng_normal() * (j < 32 ? 1e-3f : 3.0f);
	for (int j = 64; j < 96; j++)
		x[j] = 0.0f; /* an all-zero block: d = 0, q = 0 */
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q8_0, b, x, 256), MOE_OK);
	for (int blk = 0; blk < 8; blk++) {
		float amax = 0;
		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(x[32 * blk + j]));
		uint16_t d = get16(b + 34 * blk);
		cr_assert_eq(d, half_nearest(amax / 127.0f), "block %d", blk);
		float id = amax != 0 ? 127.0f / amax : 0.0f;
		for (int j = 0; j < 32; j++) {
			float p = x[32 * blk + j] * id;
			cr_assert_eq((int8_t)b[34 * blk + 2 + j], (int)nearbyintf(p));
		}
	}
}

Test(quants, act_q8_1_sum)
{
	rng_state = 6;
	float x[64];
	uint8_t b[2 * 36];

	for (int j = 0; j < 64; j++)
		x[j] = rng_normal();
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q5_1, b, x, 64), MOE_OK);
	for (int blk = 0; blk < 2; blk++) {
		float amax = 0;
		int sum = 0;
		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(x[32 * blk + j]));
		float d = amax / 127.0f;
		for (int j = 0; j < 32; j++) {
			int q = (int)nearbyintf(x[32 * blk + j] * (127.0f / amax));
			cr_assert_eq((int8_t)b[36 * blk + 4 + j], q);
			sum += q;
		}
		cr_assert_eq(get16(b + 36 * blk), half_nearest(d));
		cr_assert_eq(get16(b + 36 * blk + 2) & 0x7fff, half_nearest(fabsf(d * (float)sum)));
	}
}

Test(quants, act_q8_K_bits)
{
	float x[256];
	uint8_t b[292];

	/* Largest magnitude positive (the first of two equal): iscale = -127/m < 0,
	 * so q = -x scaled and d is negative. */
	for (int j = 0; j < 256; j++)
		x[j] = (float)((j * 37) % 255 - 127) * 0.5f; /* in [-63.5, 63.5] */
	for (int j = 0; j < 10; j++)
		x[j] = 0.25f * j;
	x[10] = 63.5f;
	x[11] = -63.5f;
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q4_K, b, x, 256), MOE_OK);
	float m = 0;
	for (int j = 0; j < 256; j++)
		if (fabsf(x[j]) > fabsf(m))
			m = x[j];
	cr_assert_eq(m, 63.5f);
	float iscale = -127.0f / m;
	float d;
	memcpy(&d, b, 4);
	cr_assert_eq(d, 1.0f / iscale);
	for (int g = 0; g < 16; g++) {
		int sum = 0;
		for (int l = 0; l < 16; l++) {
			int j = 16 * g + l;
			int q = (int)nearbyintf(iscale * x[j]);
			q = q > 127 ? 127 : q;
			cr_assert_eq((int8_t)b[4 + j], q, "value %d", j);
			sum += q;
		}
		int16_t bs;
		memcpy(&bs, b + 260 + 2 * g, 2);
		cr_assert_eq(bs, sum, "bsum %d", g);
	}
	/* Zero input: all-zero block. */
	memset(x, 0, sizeof(x));
	memset(b, 0x55, sizeof(b));
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q6_K, b, x, 256), MOE_OK);
	for (int i = 0; i < 292; i++)
		cr_assert_eq(b[i], 0);
}

/* ---- quantise -> dequantise error ------------------------------------------------ */

static double rmse(const float *a, const float *b, int n)
{
	double s = 0;
	for (int i = 0; i < n; i++)
		s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
	return sqrt(s / n);
}

/*
 * The plain reference quantizer of each format, written here: per block (or
 * sub-block) the textbook choice - symmetric formats d = amax/qmax, q =
 * round(x/d); asymmetric formats d = (max-min)/qmax, m = min; K-quant
 * sub-block scales and mins rounded to 6 bits against their maxima - encoded
 * into real blocks and decoded by moe_dequantize_row.  The library's
 * quantizer must have RMSE no worse than this (it searches for better scales).
 */
static void plain_k(moe_type t, uint8_t *blk, const float *x)
{
	int nmax = t == MOE_TYPE_Q4_K ? 15 : 31;
	float sc[8], mn[8], maxsc = 0, maxmn = 0;

	for (int s = 0; s < 8; s++) {
		float lo = 0, hi = -INFINITY;
		for (int l = 0; l < 32; l++) {
			lo = fminf(lo, x[32 * s + l]);
			hi = fmaxf(hi, x[32 * s + l]);
		}
		sc[s] = (hi - lo) / nmax;
		mn[s] = -lo;
		maxsc = fmaxf(maxsc, sc[s]);
		maxmn = fmaxf(maxmn, mn[s]);
	}
	uint16_t dh = half_nearest(maxsc / 63), mh = half_nearest(maxmn / 63);
	float d = half_value(dh), dm = half_value(mh);
	int isc[8], imn[8];
	for (int s = 0; s < 8; s++) {
		isc[s] = d > 0 ? (int)fminf(63, roundf(sc[s] / d)) : 0;
		imn[s] = dm > 0 ? (int)fminf(63, roundf(mn[s] / dm)) : 0;
	}
	size_t qs_off = t == MOE_TYPE_Q4_K ? 16 : 48;
	size_t sz = t == MOE_TYPE_Q4_K ? 144 : 176;
	memset(blk, 0, sz);
	put16(blk, dh);
	put16(blk + 2, mh);
	pack_k4_scales(blk + 4, isc, imn);
	for (int v = 0; v < 256; v++) {
		int s = v / 32;
		float step = d * isc[s];
		int q = step > 0 ? (int)roundf((x[v] + dm * imn[s]) / step) : 0;
		q = q < 0 ? 0 : q > nmax ? nmax : q;
		int c = v / 64, l = v % 32, upper = (v % 64) >= 32;
		blk[qs_off + 32 * c + l] |= (uint8_t)((q & 15) << (upper ? 4 : 0));
		if (q & 16)
			blk[16 + l] |= (uint8_t)(1 << (2 * c + upper));
	}
}

static void plain_q6_K(uint8_t *blk, const float *x)
{
	float sc[16], amax = 0;
	memset(blk, 0, 210);
	for (int g = 0; g < 16; g++) {
		float a = 0;
		for (int l = 0; l < 16; l++)
			a = fmaxf(a, fabsf(x[16 * g + l]));
		sc[g] = a / 31;
		amax = fmaxf(amax, sc[g]);
	}
	uint16_t dh = half_nearest(amax / 127);
	float d = half_value(dh);
	put16(blk + 208, dh);
	for (int g = 0; g < 16; g++) {
		int s = d > 0 ? (int)fminf(127, roundf(sc[g] / d)) : 0;
		blk[192 + g] = (uint8_t)(int8_t)s;
		for (int l = 0; l < 16; l++) {
			int v = 16 * g + l;
			float step = d * s;
			int q = step > 0 ? (int)roundf(x[v] / step) : 0;
			q = (q < -32 ? -32 : q > 31 ? 31 : q) + 32;
			int h = v / 128, r = v % 128, quarter = r / 32, ll = r % 32;
			blk[64 * h + (quarter % 2) * 32 + ll] |=
			    (uint8_t)((q & 15) << (quarter >= 2 ? 4 : 0));
			blk[128 + 32 * h + ll] |= (uint8_t)((q >> 4) << (2 * quarter));
		}
	}
}

Test(quants, k_quant_rmse_no_worse_than_plain)
{
	enum { N = 256 * 64 };
	static float x[N], y[N];
	static uint8_t q[N / 256 * 210];
	static uint8_t p[N / 256 * 210];
	const moe_type types[] = {MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K};

	rng_state = 77;
	for (int i = 0; i < N; i++)
		x[i] = rng_normal() * 0.05f + (i % 256 < 32 ? 0.02f : 0.0f);
	for (size_t ti = 0; ti < 3; ti++) {
		moe_type t = types[ti];
		size_t bsz = moe_type_get(t)->type_size;
		cr_assert_eq(moe_quantize_row(t, q, x, N), MOE_OK);
		cr_assert_eq(moe_dequantize_row(t, y, q, N), MOE_OK);
		double e_lib = rmse(x, y, N);
		for (int b = 0; b < N / 256; b++) {
			if (t == MOE_TYPE_Q6_K)
				plain_q6_K(p + bsz * b, x + 256 * b);
			else
				plain_k(t, p + bsz * b, x + 256 * b);
		}
		cr_assert_eq(moe_dequantize_row(t, y, p, N), MOE_OK);
		double e_plain = rmse(x, y, N);
		cr_log_info("%s rmse %.6g (plain %.6g)", moe_type_get(t)->name, e_lib, e_plain);
		cr_assert(e_lib <= e_plain, "%s: rmse %g > plain %g", moe_type_get(t)->name, e_lib,
		          e_plain);
		/* and the format's resolution bounds it from above (data sigma 0.05) */
		double bound = t == MOE_TYPE_Q4_K ? 0.006 : t == MOE_TYPE_Q5_K ? 0.003 : 0.0015;
		cr_assert(e_lib < bound, "%s rmse %g", moe_type_get(t)->name, e_lib);
	}
}

Test(quants, simple_quant_error_bounds)
{
	/* Symmetric/asymmetric 32-blocks: every value within half a step (plus
	 * fp16 rounding of d) of the input; these quantizers ARE the plain ones. */
	enum { N = 32 * 64 };
	static float x[N], y[N];
	static uint8_t q[N * 2];
	const moe_type types[] = {MOE_TYPE_Q4_0, MOE_TYPE_Q4_1, MOE_TYPE_Q5_0, MOE_TYPE_Q5_1,
	                          MOE_TYPE_Q8_0, MOE_TYPE_F16,  MOE_TYPE_BF16};
	const double steps[] = {16, 15, 32, 31, 254, 0, 0}; /* levels across the range */

	rng_state = 99;
	for (int i = 0; i < N; i++)
		x[i] = rng_normal();
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		moe_type t = types[ti];
		cr_assert_eq(moe_quantize_row(t, q, x, N), MOE_OK);
		cr_assert_eq(moe_dequantize_row(t, y, q, N), MOE_OK);
		for (int b = 0; b < N / 32; b++) {
			float lo = INFINITY, hi = -INFINITY, amax = 0;
			for (int j = 0; j < 32; j++) {
				lo = fminf(lo, x[32 * b + j]);
				hi = fmaxf(hi, x[32 * b + j]);
				amax = fmaxf(amax, fabsf(x[32 * b + j]));
			}
			double range =
			    (t == MOE_TYPE_Q4_1 || t == MOE_TYPE_Q5_1) ? hi - lo : 2 * amax;
			for (int j = 0; j < 32; j++) {
				double err = fabs((double)x[32 * b + j] - y[32 * b + j]);
				/* Q4_0/Q5_0 put the signed max at level -8/-16, so the
				 * other side reaches only 7/8 (15/16) of it: a full step */
				double half =
				    (t == MOE_TYPE_Q4_0 || t == MOE_TYPE_Q5_0) ? 1.0 : 0.5;
				double tol = steps[ti] > 0
				                 ? range / steps[ti] * half * 1.01 + 1e-3 * amax
				                 : (t == MOE_TYPE_F16 ? 1.0 / 2048 : 1.0 / 256) *
				                       fabs(x[32 * b + j]);
				cr_assert(err <= tol, "%s value %d: err %g > %g",
				          moe_type_get(t)->name, 32 * b + j, err, tol);
			}
		}
	}
}

/* ---- dispatch / ISA --------------------------------------------------------------- */

Test(quants, isa_override_by_set)
{
	cr_assert(moe_isa_supported(MOE_ISA_SCALAR));
	cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
	cr_assert_eq(moe_isa_active(), MOE_ISA_SCALAR);
	cr_assert_eq(moe_vec_dot_get(MOE_TYPE_Q4_K),
	             moe_vec_dot_get_isa(MOE_TYPE_Q4_K, MOE_ISA_SCALAR));
#if defined(__x86_64__)
	cr_assert_eq(moe_isa_set(MOE_ISA_NEON), MOE_ERR_UNSUPPORTED);
	cr_assert_null(moe_vec_dot_get_isa(MOE_TYPE_Q4_0, MOE_ISA_NEON));
#endif
	cr_assert_eq(moe_isa_set((moe_isa)17), MOE_ERR_INVAL);
	cr_assert_null(moe_vec_dot_get(MOE_TYPE_TQ1_0));
	cr_assert_str_eq(moe_isa_name(MOE_ISA_AVX512), "avx512");
}

/* Criterion runs every test in its own process, so the environment is read
 * fresh by the first kernels call of this test. */
Test(quants, isa_override_by_environment)
{
	setenv("MOEMESH_ISA", "scalar", 1);
	cr_assert_eq(moe_isa_active(), MOE_ISA_SCALAR);
	cr_assert_eq(moe_vec_dot_get(MOE_TYPE_Q8_0),
	             moe_vec_dot_get_isa(MOE_TYPE_Q8_0, MOE_ISA_SCALAR));
}

Test(quants, isa_override_by_environment_avx2)
{
	setenv("MOEMESH_ISA", "avx2", 1);
	moe_isa got = moe_isa_active();
	if (moe_isa_supported(MOE_ISA_AVX2))
		cr_assert_eq(got, MOE_ISA_AVX2);
	else
		cr_assert_neq(got, MOE_ISA_AVX2);
}

/* ---- fixtures: llama-quantize output reproduced byte for byte --------------------- */

#include <sys/wait.h>
#include <unistd.h>

#include "model/gguf.h"

static moe_gguf *open_fixture(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");
	char path[1024];
	moe_gguf *g = NULL;

	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(moe_gguf_open(&g, path), MOE_OK, "%s: %s", path, moe_err_detail());
	return g;
}

/*
 * The quantised fixtures were made by `llama-quantize F32.gguf out.gguf TYPE`
 * (no imatrix), i.e. by ggml's reference quantizers.  Quantising each F32
 * tensor with moe_quantize_row must give the same bytes.
 */
static void requantize_equal(moe_gguf *gf, moe_gguf *gq, const char *f32_name, const char *q_name,
                             int *n_types_seen)
{
	int checked = 0;

	for (int64_t i = 0; i < moe_gguf_n_tensors(gq); i++) {
		const moe_gguf_tensor *tq = moe_gguf_tensor_at(gq, i);
		if (tq->type == MOE_TYPE_F32)
			continue;
		char name[256];
		snprintf(name, sizeof(name), "%.*s", (int)tq->name.len, tq->name.ptr);
		const moe_gguf_tensor *tf = moe_gguf_find_tensor(gf, name);
		cr_assert_not_null(tf, "%s not in %s", name, f32_name);
		cr_assert_eq(tf->type, MOE_TYPE_F32);
		cr_assert_eq(tf->n_elements, tq->n_elements);
		size_t sz = moe_row_size(tq->type, tq->n_elements);
		cr_assert_eq(sz, tq->size, "%s", name);
		uint8_t *buf = malloc(sz);
		cr_assert_not_null(buf);
		cr_assert_eq(moe_quantize_row(tq->type, buf, tf->data, tf->n_elements), MOE_OK);
		size_t bad = 0, first = 0;
		for (size_t b = 0; b < sz; b++)
			if (buf[b] != ((const uint8_t *)tq->data)[b] && bad++ == 0)
				first = b;
		cr_assert_eq(bad, 0, "%s %s (%s): %zu of %zu bytes differ, first at %zu", q_name,
		             name, moe_type_get(tq->type)->name, bad, sz, first);
		n_types_seen[tq->type]++;
		checked++;
		free(buf);
	}
	cr_log_info("%s: %d tensors byte-identical", q_name, checked);
}

static void check_requantize(const char *f32_name, const char *q_name, int *n_types_seen)
{
	moe_gguf *gf = open_fixture(f32_name), *gq = open_fixture(q_name);
	requantize_equal(gf, gq, f32_name, q_name, n_types_seen);
	moe_gguf_close(gf);
	moe_gguf_close(gq);
}

Test(quants_fixtures, quantizers_reproduce_llama_quantize)
{
	int seen[MOE_TYPE_COUNT] = {0};

	check_requantize("qwen3moe-tiny-F32.gguf", "qwen3moe-tiny-Q8_0.gguf", seen);
	check_requantize("qwen3moe-tiny-F32.gguf", "qwen3moe-tiny-Q4_0.gguf", seen);
	check_requantize("qwen3moe-tiny-F32.gguf", "qwen3moe-tiny-Q4_K_M.gguf", seen);
	cr_assert_gt(seen[MOE_TYPE_Q8_0], 0);
	cr_assert_gt(seen[MOE_TYPE_Q4_0], 0);
	cr_assert_gt(seen[MOE_TYPE_Q5_0], 0);
	cr_assert_gt(seen[MOE_TYPE_Q4_K], 0);
}

/* The qwen3moe-k256 fixtures ship without their F32 original, which
 * `moemesh make-model --arch qwen3moe --preset tiny256 --seed 6001` writes byte
 * for byte (tests/make_k23_fixtures.py): written here to a temporary folder,
 * its Q2_K / Q3_K_M quantisations (mixing Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) must
 * be llama-quantize's bytes. */
Test(quants_fixtures, k23_quantizers_reproduce_llama_quantize)
{
	const char *bin = getenv("MOE_BIN");
	cr_assert_not_null(bin, "MOE_BIN is not set");
	char dir[] = "/tmp/moe-k23-XXXXXX", path[256];
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/qwen3moe-k256-F32.gguf", dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		execl(bin, bin, "make-model", "--arch", "qwen3moe", "--preset", "tiny256", "--seed",
		      "6001", "-o", path, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "make-model failed");
	moe_gguf *gf = NULL;
	cr_assert_eq(moe_gguf_open(&gf, path), MOE_OK, "%s: %s", path, moe_err_detail());
	int seen[MOE_TYPE_COUNT] = {0};
	const char *qs[] = {"qwen3moe-k256-Q2_K.gguf", "qwen3moe-k256-Q3_K_M.gguf"};
	for (int k = 0; k < 2; k++) {
		moe_gguf *gq = open_fixture(qs[k]);
		requantize_equal(gf, gq, "qwen3moe-k256-F32.gguf", qs[k], seen);
		moe_gguf_close(gq);
	}
	moe_gguf_close(gf);
	unlink(path);
	rmdir(dir);
	cr_assert_gt(seen[MOE_TYPE_Q2_K], 0);
	cr_assert_gt(seen[MOE_TYPE_Q3_K], 0);
}

/* Value v of a K-quant block decoded straight from the layout drawing. */
static float k_value_by_hand(moe_type t, const uint8_t *b, int v)
{
	if (t == MOE_TYPE_Q6_K) {
		int h = v / 128, r = v % 128, quarter = r / 32, l = r % 32;
		int byte = b[64 * h + (quarter % 2) * 32 + l];
		int lo = quarter >= 2 ? byte >> 4 : byte & 15;
		int hi = (b[128 + 32 * h + l] >> (2 * quarter)) & 3;
		return half_value(get16(b + 208)) * (float)(int8_t)b[192 + v / 16] *
		       (float)((lo | hi << 4) - 32);
	}
	const uint8_t *sc12 = b + 4;
	int s = v / 32, sc, mn;
	if (s < 4) {
		sc = sc12[s] & 63;
		mn = sc12[s + 4] & 63;
	} else {
		sc = (sc12[s + 4] & 15) | (sc12[s - 4] >> 6) << 4;
		mn = (sc12[s + 4] >> 4) | (sc12[s] >> 6) << 4;
	}
	int c = v / 64, l = v % 32, upper = (v % 64) >= 32;
	const uint8_t *qs = b + (t == MOE_TYPE_Q4_K ? 16 : 48);
	int q = upper ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
	if (t == MOE_TYPE_Q5_K)
		q |= ((b[16 + l] >> (2 * c + upper)) & 1) << 4;
	return half_value(get16(b)) * (float)sc * (float)q - half_value(get16(b + 2)) * (float)mn;
}

Test(quants_fixtures, k_quant_fixture_tensors_decode_as_drawn)
{
	moe_gguf *g = open_fixture("qwen3moe-kq-Q4_K_M.gguf");
	int seen[MOE_TYPE_COUNT] = {0};

	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		if (t->type != MOE_TYPE_Q4_K && t->type != MOE_TYPE_Q5_K &&
		    t->type != MOE_TYPE_Q6_K)
			continue;
		int64_t n = t->n_elements < 256 * 64 ? t->n_elements : 256 * 64; /* a prefix */
		float *y = malloc((size_t)n * sizeof(float));
		cr_assert_not_null(y);
		cr_assert_eq(moe_dequantize_row(t->type, y, t->data, n), MOE_OK);
		size_t bsz = moe_type_get(t->type)->type_size;
		double sumsq = 0;
		for (int64_t v = 0; v < n; v++) {
			const uint8_t *blk = (const uint8_t *)t->data + (size_t)(v / 256) * bsz;
			float want = k_value_by_hand(t->type, blk, (int)(v % 256));
			cr_assert(fabsf(y[v] - want) <= 1e-6f * fabsf(want) + 1e-12f,
			          "%.*s value %lld: %g vs %g", (int)t->name.len, t->name.ptr,
			          (long long)v, y[v], want);
			sumsq += (double)y[v] * y[v];
		}
		cr_assert(sumsq > 0, "all-zero tensor decoded");
		seen[t->type]++;
		free(y);
	}
	cr_assert_gt(seen[MOE_TYPE_Q4_K], 0);
	cr_assert_gt(seen[MOE_TYPE_Q5_K], 0);
	cr_assert_gt(seen[MOE_TYPE_Q6_K], 0);
	moe_gguf_close(g);
}
