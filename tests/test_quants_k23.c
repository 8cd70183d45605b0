/*
 * test_quants_k23.c - the 2- and 3-bit K-quants (Q2_K, Q3_K): dequantisation
 * of hand-built blocks against values worked out by hand and against a
 * decoder written here from the layout drawing; the quantizers' error; the
 * scalar dot against a double-precision dot of the dequantised operands; and
 * each SIMD level's dot and tiles against the scalar reference bit for bit
 * (random blocks of every bit pattern, extremes, row lengths of 1 to 27
 * blocks, 1 to 19 tokens).  Fixture checks (llama-quantize's bytes, the
 * forward pass) are in test_quants and test_forward.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "test_rng.h"

/* fp16 bits -> value by the IEEE formula. */
static double half_value(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);

	return (h & 0x8000) ? -v : v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

enum { Q2_BYTES = 84, Q3_BYTES = 110 };

/* Value v of a block, decoded from quants.h's drawing. */
static double q2_value(const uint8_t *b, int v)
{
	int s = v / 16, sc = b[s] & 15, mn = b[s] >> 4;
	int q = (b[16 + 32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3;
	return half_value(get16(b + 80)) * sc * q - half_value(get16(b + 82)) * mn;
}

static double q3_value(const uint8_t *b, int v)
{
	int s = v / 16;
	const uint8_t *sc12 = b + 96;
	int lo = s < 8 ? sc12[s] & 15 : sc12[s - 8] >> 4;
	int sc = lo | ((sc12[8 + s % 4] >> (2 * (s / 4))) & 3) << 4;
	int q = (b[32 + 32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3;
	q |= ((b[v % 32] >> (v / 32)) & 1) << 2;
	return half_value(get16(b + 108)) * (sc - 32) * (q - 4);
}

/* Packs 16 six-bit Q3_K scales as drawn in quants.h. */
static void pack_q3_scales(uint8_t out[12], const int sc[16])
{
	memset(out, 0, 12);
	for (int s = 0; s < 16; s++) {
		if (s < 8)
			out[s] |= (uint8_t)(sc[s] & 15);
		else
			out[s - 8] |= (uint8_t)((sc[s] & 15) << 4);
		out[8 + s % 4] |= (uint8_t)((sc[s] >> 4) << (2 * (s / 4)));
	}
}

Test(quants_k23, dequant_q2_K_by_hand)
{
	uint8_t b[Q2_BYTES];
	float y[256];

	/* sc[s] = s + 1 (15 for s = 15), mn = 2 (1 for s = 15); every qs byte
	 * 0xe4 = q 0, 1, 2, 3 in bits 0-1, 2-3, 4-5, 6-7: q = (v % 128) / 32;
	 * d = 1, dmin = 0.5 */
	for (int s = 0; s < 16; s++)
		b[s] = s < 15 ? (uint8_t)((s + 1) | 2 << 4) : (uint8_t)(15 | 1 << 4);
	memset(b + 16, 0xe4, 64);
	b[80] = 0x00, b[81] = 0x3c, b[82] = 0x00, b[83] = 0x38;
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q2_K, y, b, 256), MOE_OK);
	cr_assert_float_eq(y[0], -1.0f, 0, "q 0: -dmin * mn");
	cr_assert_float_eq(y[40], 2.0f, 0, "s 2 (sc 3), q 1: 3 - 1");
	cr_assert_float_eq(y[100], 20.0f, 0, "s 6 (sc 7), q 3: 21 - 1");
	cr_assert_float_eq(y[200], 25.0f, 0, "s 12 (sc 13), q 2: 26 - 1");
	cr_assert_float_eq(y[255], 44.5f, 0, "s 15 (sc 15, mn 1), q 3: 45 - 0.5");

	/* random blocks against the drawing */
	rng_state = 11;
	for (int k = 0; k < 200; k++) {
		for (int i = 0; i < 80; i++)
			b[i] = (uint8_t)rng_next();
		b[80] = (uint8_t)rng_next(), b[81] = (uint8_t)(0x28 + rng_next() % 16);
		b[82] = (uint8_t)rng_next(), b[83] = (uint8_t)(0x28 + rng_next() % 16);
		cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q2_K, y, b, 256), MOE_OK);
		for (int v = 0; v < 256; v++) {
			double want = q2_value(b, v);
			cr_assert(fabs(y[v] - want) <= 1e-6 * fabs(want) + 1e-9,
			          "block %d value %d: %g vs %g", k, v, y[v], want);
		}
	}
}

Test(quants_k23, dequant_q3_K_by_hand)
{
	uint8_t b[Q3_BYTES];
	float y[256];
	int sc[16];

	/* sc[s] = 4s (63 for s = 15), i.e. sc - 32 = -32, -28, ..., 31; every
	 * qs byte 0xe4: bits 0-1 of q = (v % 128) / 32; every hmask byte 0xaa:
	 * bit 2 of q set where v / 32 is odd; d = 1 */
	for (int s = 0; s < 16; s++)
		sc[s] = s < 15 ? 4 * s : 63;
	memset(b, 0xaa, 32);
	memset(b + 32, 0xe4, 64);
	pack_q3_scales(b + 96, sc);
	b[108] = 0x00, b[109] = 0x3c;
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q3_K, y, b, 256), MOE_OK);
	cr_assert_float_eq(y[0], 128.0f, 0, "s 0 (-32), q 0: -32 * -4");
	cr_assert_float_eq(y[33], -24.0f, 0, "s 2 (-24), q 1 | 4: -24 * 1");
	cr_assert_float_eq(y[100], -24.0f, 0, "s 6 (-8), q 3 | 4: -8 * 3");
	cr_assert_float_eq(y[130], 0.0f, 0, "s 8 (0)");
	cr_assert_float_eq(y[255], 93.0f, 0, "s 15 (31), q 3 | 4: 31 * 3");
	cr_assert_float_eq(y[64], 32.0f, 0, "s 4 (-16), q 2: -16 * -2");

	rng_state = 12;
	for (int k = 0; k < 200; k++) {
		for (int i = 0; i < 108; i++)
			b[i] = (uint8_t)rng_next();
		b[108] = (uint8_t)rng_next(), b[109] = (uint8_t)(0x28 + rng_next() % 16);
		cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q3_K, y, b, 256), MOE_OK);
		for (int v = 0; v < 256; v++) {
			double want = q3_value(b, v);
			cr_assert(fabs(y[v] - want) <= 1e-6 * fabs(want) + 1e-9,
			          "block %d value %d: %g vs %g", k, v, y[v], want);
		}
	}
}

/* The quantizers: the RMS error over normal-ish data relative to its RMS,
 * bounded by what 2 and 3 bits with 16-value sub-blocks give (measured:
 * Q2_K 0.289, Q3_K 0.145 on this data), and an all-zero block stays zero. */
Test(quants_k23, quantizer_error)
{
	enum { N = 256 * 32 };
	static float x[N], y[N];
	static uint8_t q[N];
	const moe_type types[] = {MOE_TYPE_Q2_K, MOE_TYPE_Q3_K};
	const double bound[] = {0.32, 0.17};

	rng_state = 5;
	for (int i = 0; i < N; i++)
		x[i] = (rng_unif() + rng_unif() + rng_unif()) * (1.0f + (float)(i / 256 % 4));
	for (int k = 0; k < 2; k++) {
		double e2 = 0, x2 = 0;
		cr_assert_eq(moe_quantize_row(types[k], q, x, N), MOE_OK);
		cr_assert_eq(moe_dequantize_row(types[k], y, q, N), MOE_OK);
		for (int i = 0; i < N; i++) {
			e2 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
			x2 += (double)x[i] * x[i];
		}
		double rel = sqrt(e2 / x2);
		cr_log_info("%s: relative RMS error %.4f", moe_type_get(types[k])->name, rel);
		cr_assert(rel <= bound[k], "%s: relative RMS error %.4f > %.2f",
		          moe_type_get(types[k])->name, rel, bound[k]);
		float z[256] = {0}, back[256];
		cr_assert_eq(moe_quantize_row(types[k], q, z, 256), MOE_OK);
		cr_assert_eq(moe_dequantize_row(types[k], back, q, 256), MOE_OK);
		for (int i = 0; i < 256; i++)
			cr_assert_eq(back[i], 0.0f);
	}
}

/* A row of nb random blocks of type t (every byte random, the fp16 scales
 * positive and small), and an activation row from random floats. */
static void random_row(moe_type t, uint8_t *w, uint8_t *aq, float *a, int64_t nb, int extreme)
{
	const size_t bs = moe_type_get(t)->type_size;
	for (int64_t i = 0; i < nb; i++) {
		uint8_t *b = w + (size_t)i * bs;
		for (size_t k = 0; k < bs; k++)
			b[k] = extreme ? 0xff : (uint8_t)rng_next();
		/* the fp16 fields: Q2_K d, dmin at 80, 82; Q3_K d at 108 */
		const size_t off = t == MOE_TYPE_Q2_K ? 80 : 108;
		const int nh = t == MOE_TYPE_Q2_K ? 2 : 1;
		for (int h = 0; h < nh; h++) {
			b[off + 2 * h] = (uint8_t)rng_next();
			b[off + 2 * h + 1] = (uint8_t)(0x1c + rng_next() % 24);
		}
	}
	for (int64_t i = 0; i < 256 * nb; i++)
		a[i] = extreme ? (i % 3 ? 1.0f : -1.0f) : rng_unif() * (1.0f + (float)(i / 64 % 5));
	if (extreme == 2)
		for (int64_t i = 0; i < 256 * nb; i++)
			a[i] = -1.0f;
	cr_assert_eq(moe_quantize_act(t, aq, a, 256 * nb), MOE_OK);
}

static const moe_type k23_types[] = {MOE_TYPE_Q2_K, MOE_TYPE_Q3_K};
static const int64_t k23_blocks[] = {1, 2, 3, 8, 16, 27};

/* Reference vs double: the integer parts are exact, what remains is the f32
 * rounding of the scale products and of the two running sums (as in
 * test_dot: 4e-6 relative to sum |w_i a_i|). */
Test(quants_k23, reference_matches_dequantised_double)
{
	enum { MAXB = 27 };
	static uint8_t w[MAXB * 110], aq[MAXB * 292];
	static float a[MAXB * 256], wd[MAXB * 256], ad[MAXB * 256];
	int checked = 0;

	rng_state = 77;
	for (size_t ti = 0; ti < 2; ti++) {
		moe_type t = k23_types[ti];
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		cr_assert_not_null(ref);
		for (size_t li = 0; li < sizeof(k23_blocks) / sizeof(k23_blocks[0]); li++) {
			const int64_t nb = k23_blocks[li], n = 256 * nb;
			for (int rep = 0; rep < 4; rep++) {
				random_row(t, w, aq, a, nb, 0);
				cr_assert_eq(moe_dequantize_row(t, wd, w, n), MOE_OK);
				cr_assert_eq(moe_dequantize_row(MOE_TYPE_Q8_K, ad, aq, n), MOE_OK);
				double exact = 0, mag = 0;
				for (int64_t i = 0; i < n; i++) {
					exact += (double)wd[i] * ad[i];
					mag += fabs((double)wd[i] * ad[i]);
				}
				float s = NAN;
				ref(n, &s, w, aq);
				cr_assert(fabs(s - exact) <= 4e-6 * mag + 1e-30,
				          "%s n=%lld: %.9g vs %.9g", moe_type_get(t)->name,
				          (long long)n, s, exact);
				checked++;
			}
		}
	}
	cr_assert_gt(checked, 0);
}

/* Each SIMD level's one-token dot gives the reference's bits, on random
 * blocks and on extremes (every byte 0xff: the largest quants, scales and
 * mins; activations of +-127 and all -127). */
static void dot_same_bits(moe_isa level)
{
	enum { MAXB = 27 };
	static uint8_t w[MAXB * 110], aq[MAXB * 292];
	static float a[MAXB * 256];
	int checked = 0;

	rng_state = 99;
	for (size_t ti = 0; ti < 2; ti++) {
		moe_type t = k23_types[ti];
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		moe_vec_dot_fn fn = moe_vec_dot_get_isa(t, level);
		cr_assert(ref != NULL && fn != NULL);
		for (size_t li = 0; li < sizeof(k23_blocks) / sizeof(k23_blocks[0]); li++) {
			const int64_t nb = k23_blocks[li], n = 256 * nb;
			for (int rep = 0; rep < 6; rep++) {
				random_row(t, w, aq, a, nb, rep < 3 ? 0 : rep - 3);
				float want = NAN, got = NAN;
				ref(n, &want, w, aq);
				fn(n, &got, w, aq);
				cr_assert(memcmp(&want, &got, sizeof(float)) == 0,
				          "%s %s n=%lld rep %d: %.9g, reference %.9g",
				          moe_isa_name(level), moe_type_get(t)->name, (long long)n,
				          rep, got, want);
				checked++;
			}
		}
	}
	cr_assert_gt(checked, 0, "%s: nothing compared", moe_isa_name(level));
}

ISA_SIMD_TESTS(quants_k23, dot_same_bits_as_reference, dot_same_bits)

/* The tiles behind moe_matmul_q: every element of rows x tokens products
 * (1..11 rows, 1..19 tokens: every group size of the tiles, one token on 4
 * or more rows the four-row kernels with a short last run) gives the scalar
 * level's bits, on random blocks of 3 blocks per row and on the extremes of
 * random_row (the largest block sums: the one-token kernels' int32 lanes). */
static void tiles_same_bits(moe_isa level)
{
	enum { MAXR = 11, MAXT = 19, NB = 3, COLS = 256 * NB };
	static uint8_t w[MAXR * NB * 110], aq[MAXT * NB * 292];
	static float a[COLS], want[MAXR * MAXT], got[MAXR * MAXT];
	int compared = 0;

	rng_state = 1234;
	for (size_t ti = 0; ti < 2; ti++) {
		moe_type t = k23_types[ti];
		const size_t rs = moe_row_size(t, COLS), as = moe_act_row_size(t, COLS);
		for (int ex = 0; ex < 3; ex++) {
			for (int r = 0; r < MAXR; r++)
				random_row(t, w + r * rs, aq, a, NB, ex);
			for (int k = 0; k < MAXT; k++)
				random_row(t, w + (MAXR - 1) * rs, aq + k * as, a, NB, ex);
			for (int nr = 1; nr <= MAXR; nr += 2)
				for (int nt = 1; nt <= MAXT; nt++) {
					cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
					cr_assert_eq(
					    moe_matmul_q(NULL, want, w, t, nr, COLS, aq, nt),
					    MOE_OK);
					cr_assert_eq(moe_isa_set(level), MOE_OK);
					cr_assert_eq(
					    moe_matmul_q(NULL, got, w, t, nr, COLS, aq, nt),
					    MOE_OK);
					for (int e = 0; e < nr * nt; e++)
						cr_assert(
						    memcmp(&want[e], &got[e], sizeof(float)) == 0,
						    "%s %s extreme %d, %d x %d element %d: %.9g, "
						    "scalar %.9g",
						    moe_isa_name(level), moe_type_get(t)->name, ex,
						    nr, nt, e, got[e], want[e]);
					compared += nr * nt;
				}
		}
	}
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
}

ISA_SIMD_TESTS(quants_k23, tiles_same_bits_as_scalar, tiles_same_bits)

/* ---- the lanes layouts (moe_repack_rows, moe_matmul_repacked) ---------------- */

/* q (0..3 / 0..7) of value v of a Q2_K / Q3_K block, from quants.h's drawing. */
static int q2_q(const uint8_t *b, int v)
{
	return (b[16 + 32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3;
}

static int q3_q(const uint8_t *b, int v)
{
	return ((b[32 + 32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3) |
	       ((b[v % 32] >> (v / 32)) & 1) << 2;
}

/* Repacking: the bytes of every lanes block are those the drawing in
 * quants.h gives (decoded here by hand: byte b of vector v is value
 * 16 (b / 2) + 2 v + (b & 1)), and moe_unrepack_rows gives the rows back byte
 * for byte; random blocks of every bit pattern and the all-0xff extreme. */
Test(quants_k23, lanes_layout_and_round_trip)
{
	enum { NB = 5, ROWS = 3 };
	static uint8_t w[ROWS * NB * 110], r[ROWS * NB * 110], back[ROWS * NB * 110], aq[NB * 292];
	static float a[NB * 256];
	int blocks = 0;

	rng_state = 4242;
	for (size_t ti = 0; ti < 2; ti++) {
		const moe_type t = k23_types[ti];
		const size_t rs = moe_row_size(t, 256 * NB), ps = moe_repack_row_size(t, 256 * NB);
		cr_assert_eq(ps, (t == MOE_TYPE_Q2_K ? 84u : 110u) * NB);
		for (int ex = 0; ex < 2; ex++) {
			for (int k = 0; k < ROWS; k++)
				random_row(t, w + k * rs, aq, a, NB, ex);
			cr_assert_eq(moe_repack_rows(r, w, t, ROWS, 256 * NB), MOE_OK);
			for (int i = 0; i < ROWS * NB; i++) {
				const uint8_t *x = w + (size_t)i * (t == MOE_TYPE_Q2_K ? 84 : 110);
				const uint8_t *l = r + (size_t)i * (t == MOE_TYPE_Q2_K ? 84 : 110);
				for (int v = 0; v < 8; v++)
					for (int b = 0; b < 32; b++) {
						const int val = 16 * (b / 2) + 2 * v + (b & 1);
						int got;
						if (t == MOE_TYPE_Q2_K) {
							got = (l[16 + 32 * (v / 4) + b] >>
							       2 * (v % 4)) &
							      3;
							cr_assert_eq(got, q2_q(x, val), "v %d b %d",
							             v, b);
							continue;
						}
						if (v < 6)
							got = (l[32 * (v / 2) + b] >> 3 * (v % 2)) &
							      7;
						else
							got = (l[32 * (v - 6) + b] >> 6) |
							      ((l[64 + b] >> v) & 1) << 2;
						cr_assert_eq(got, q3_q(x, val), "v %d b %d", v, b);
					}
				/* scales and fp16 fields where they were */
				if (t == MOE_TYPE_Q2_K)
					cr_assert(memcmp(l, x, 16) == 0 &&
					          memcmp(l + 80, x + 80, 4) == 0);
				else
					for (int s = 0; s < 16; s++) {
						/* lanes: bits 6s..6s+5 of bytes 96-107 */
						int sc = 0;
						for (int i = 0; i < 6; i++)
							sc |= ((l[96 + (6 * s + i) / 8] >>
							        ((6 * s + i) % 8)) &
							       1)
							      << i;
						const uint8_t *sc12 = x + 96;
						const int lo =
						    s < 8 ? sc12[s] & 15 : sc12[s - 8] >> 4;
						cr_assert_eq(
						    sc,
						    lo | ((sc12[8 + s % 4] >> (2 * (s / 4))) & 3)
						             << 4,
						    "scale %d", s);
					}
				if (t == MOE_TYPE_Q3_K)
					cr_assert(memcmp(l + 108, x + 108, 2) == 0);
				blocks++;
			}
			memset(back, 0x5a, sizeof(back));
			cr_assert_eq(moe_unrepack_rows(back, r, t, ROWS, 256 * NB), MOE_OK);
			cr_assert(memcmp(back, w, ROWS * rs) == 0, "%s extreme %d: round trip",
			          moe_type_get(t)->name, ex);
		}
	}
	cr_assert_gt(blocks, 0);
	cr_assert_eq(moe_repack_row_size(MOE_TYPE_Q4_K, 256), 0u);
	cr_assert_eq(moe_repack_row_size(MOE_TYPE_Q2_K, 384), 0u);
	cr_assert_eq(moe_repack_rows(r, w, MOE_TYPE_Q4_K, 1, 256), MOE_ERR_UNSUPPORTED);
	cr_assert_eq(moe_repack_rows(r, w, MOE_TYPE_Q3_K, 1, 100), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_repack_rows(NULL, w, MOE_TYPE_Q3_K, 1, 256), MOE_ERR_INVAL);
	/* the products refuse what the repacking would, and do nothing for 0 tokens */
	float y[ROWS] = {7.0f, 7.0f, 7.0f};
	cr_assert_eq(moe_matmul_repacked(NULL, y, r, MOE_TYPE_Q4_K, ROWS, 256 * NB, aq, 1),
	             MOE_ERR_UNSUPPORTED);
	cr_assert_eq(moe_matmul_repacked(NULL, y, r, MOE_TYPE_Q2_K, ROWS, 100, aq, 1),
	             MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_matmul_repacked(NULL, y, r, MOE_TYPE_Q2_K, ROWS, 256 * NB, NULL, 1),
	             MOE_ERR_INVAL);
	cr_assert_eq(moe_matmul_repacked(NULL, NULL, r, MOE_TYPE_Q2_K, ROWS, 256 * NB, aq, 1),
	             MOE_ERR_INVAL);
	cr_assert_eq(moe_matmul_repacked(NULL, y, r, MOE_TYPE_Q2_K, ROWS, 256 * NB, aq, -1),
	             MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_matmul_repacked(NULL, y, r, MOE_TYPE_Q2_K, ROWS, 256 * NB, aq, 0), MOE_OK);
	cr_assert(y[0] == 7.0f && y[1] == 7.0f && y[2] == 7.0f);
	cr_assert_eq(moe_gemm_rows_repacked(y, ROWS, r, MOE_TYPE_Q3_K, 2, 1, 256 * NB, aq, 1),
	             MOE_ERR_BAD_SHAPE);
}

/* A Q8_K token of nb blocks with every value -128 (neg) or alternating
 * -128 / 127, the bsums worked out here: the int16 lanes' worst case, which
 * moe_quantize_act (|q| <= 127) does not make. */
static void token_128(uint8_t *aq, int64_t nb, int neg)
{
	for (int64_t i = 0; i < nb; i++) {
		uint8_t *b = aq + i * 292;
		const float d = 0.03125f;
		memcpy(b, &d, 4);
		for (int k = 0; k < 256; k++)
			b[4 + k] = (uint8_t)(int8_t)(neg || k % 2 ? -128 : 127);
		for (int s = 0; s < 16; s++) {
			int16_t sum = 0;
			for (int k = 0; k < 16; k++)
				sum = (int16_t)(sum + (int8_t)b[4 + 16 * s + k]);
			memcpy(b + 260 + 2 * s, &sum, 2);
		}
	}
}

/* moe_matmul_repacked at each level gives the scalar reference dot's bits on
 * the rows before repacking, on every row count 1..9 and 17, 33 (the four-row
 * runs with a short last run, the 16-row claims) against 1, 2, 3, 5, 8, 9
 * and 19 tokens (each token group of the tiles), 3 and 16 blocks per row, one
 * and two threads; so does moe_gemm_rows_repacked on rows [2, nr).  Blocks
 * random, and the 0xff extreme against +-127, -127 and the -128 tokens of
 * token_128. */
static void repacked_same_bits(moe_isa level)
{
	enum { MAXR = 33, MAXT = 19, MAXB = 16 };
	static uint8_t w[MAXR * MAXB * 110], r[MAXR * MAXB * 110], aq[MAXT * MAXB * 292];
	static float a[MAXB * 256], want[MAXR * MAXT], got[MAXR * MAXT];
	static const int rows[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 33};
	static const int toks[] = {1, 2, 3, 5, 8, 9, 19};
	static const int64_t blocks[] = {3, 16};
	moe_pool *pool = NULL;
	int compared = 0;

	cr_assert_eq(moe_isa_set(level), MOE_OK);
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	rng_state = 5150;
	for (size_t ti = 0; ti < 2; ti++) {
		const moe_type t = k23_types[ti];
		const moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		for (size_t bi = 0; bi < 2; bi++) {
			const int64_t nb = blocks[bi], cols = 256 * nb;
			const size_t rs = moe_row_size(t, cols), as = moe_act_row_size(t, cols);
			for (int ex = 0; ex < 5; ex++) {
				for (int k = 0; k < MAXR; k++)
					random_row(t, w + k * rs, aq, a, nb, ex > 2 ? 1 : ex);
				for (int k = 0; k < MAXT; k++)
					random_row(t, w + (MAXR - 1) * rs, aq + k * as, a, nb,
					           ex > 2 ? 1 : ex);
				if (ex > 2)
					token_128(aq, nb * MAXT, ex == 3);
				cr_assert_eq(moe_repack_rows(r, w, t, MAXR, cols), MOE_OK);
				for (int k = 0; k < MAXR; k++)
					for (int q = 0; q < MAXT; q++)
						ref(cols, &want[q * MAXR + k], w + k * rs,
						    aq + q * as);
				for (size_t ri = 0; ri < sizeof(rows) / sizeof(rows[0]); ri++)
					for (size_t ki = 0; ki < sizeof(toks) / sizeof(toks[0]);
					     ki++) {
						const int nr = rows[ri], nt = toks[ki];
						for (int th = 0; th < 3; th++) {
							const int k0 =
							    th == 2 ? (nr > 2 ? 2 : nr) : 0;
							memset(got, 0xff, sizeof(got));
							if (th < 2)
								cr_assert_eq(moe_matmul_repacked(
								                 th ? pool : NULL,
								                 got, r, t, nr,
								                 cols, aq, nt),
								             MOE_OK);
							else
								cr_assert_eq(moe_gemm_rows_repacked(
								                 got + k0, nr, r, t,
								                 k0, nr, cols, aq,
								                 nt),
								             MOE_OK);
							for (int e = k0; e < nr * nt; e++) {
								if (e % nr < k0)
									continue;
								const float *wt =
								    &want[e / nr * MAXR + e % nr];
								cr_assert(memcmp(wt, &got[e], 4) ==
								              0,
								          "%s %s %lld blocks, "
								          "extreme %d, "
								          "%d x %d (%s) element "
								          "%d: %.9g, "
								          "reference %.9g",
								          moe_isa_name(level),
								          moe_type_get(t)->name,
								          (long long)nb, ex, nr, nt,
								          th == 2 ? "gemm_rows"
								                  : "matmul",
								          e, got[e], *wt);
								compared++;
							}
						}
					}
			}
		}
	}
	moe_pool_destroy(pool);
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
}

ISA_LEVEL_TESTS(quants_k23, repacked_same_bits_as_reference, repacked_same_bits)
