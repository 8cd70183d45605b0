/* test_matmul.c - GEMV/GEMM: against a float64 reference, batch invariance
 * (alone vs among others, any position, 1 or 2 threads), tile-shape and
 * row-run independence, the scalar level's bits at every SIMD level for the
 * tiled types, moe_matmul == moe_matmul_q on quantised rows, argument errors.
 * The per-level checks are one test per ISA level (isa_levels.h): a level
 * this CPU cannot run is reported as skipped, never passed. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"

static const moe_type types[] = {
    MOE_TYPE_F32,    MOE_TYPE_F16,    MOE_TYPE_Q8_0, MOE_TYPE_Q4_0, MOE_TYPE_Q5_0,
    MOE_TYPE_Q4_K,   MOE_TYPE_Q5_K,   MOE_TYPE_Q6_K, MOE_TYPE_Q2_K, MOE_TYPE_Q3_K /* isa_*_k23.c */,
    MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_MXFP4 /* isa_*_iq4.c */};
#define N_TYPES (sizeof(types) / sizeof(types[0]))

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform in [-1, 1) */
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (float)(rng_state >> 40) / 8388608.0f - 1.0f;
}

static void fill_f32(float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = frand() * (1.0f + (float)(i % 7)); /* uneven magnitudes */
}

/* n_rows rows of type t made from random floats; caller frees. */
static uint8_t *make_weights(moe_type t, int64_t n_rows, int64_t n_cols)
{
	size_t rs = moe_row_size(t, n_cols);
	cr_assert_gt(rs, 0);
	uint8_t *w = malloc(rs * (size_t)n_rows);
	float *tmp = malloc(sizeof(float) * (size_t)n_cols);
	cr_assert(w != NULL && tmp != NULL);
	for (int64_t r = 0; r < n_rows; r++) {
		fill_f32(tmp, n_cols);
		cr_assert_eq(moe_quantize_row(t, w + (size_t)r * rs, tmp, n_cols), MOE_OK, "%s",
		             moe_err_detail());
	}
	free(tmp);
	return w;
}

Test(matmul, matches_float64_reference_of_dequantised_operands)
{
	enum { ROWS = 19, COLS = 512, TOK = 5 };
	for (size_t ti = 0; ti < N_TYPES; ti++) {
		moe_type t = types[ti];
		moe_type at = moe_type_get(t)->vec_dot_type;
		uint8_t *w = make_weights(t, ROWS, COLS);
		size_t rs = moe_row_size(t, COLS), as = moe_act_row_size(t, COLS);
		float *x = malloc(sizeof(float) * TOK * COLS),
		      *y = malloc(sizeof(float) * TOK * ROWS);
		float *wd = malloc(sizeof(float) * COLS), *ad = malloc(sizeof(float) * TOK * COLS);
		uint8_t *xq = malloc(as * TOK);
		fill_f32(x, TOK * COLS);
		cr_assert_eq(moe_matmul(NULL, y, w, t, ROWS, COLS, x, TOK), MOE_OK, "%s: %s",
		             moe_type_get(t)->name, moe_err_detail());
		for (int k = 0; k < TOK; k++) {
			cr_assert_eq(moe_quantize_act(t, xq + k * as, x + k * COLS, COLS), MOE_OK);
			cr_assert_eq(moe_dequantize_row(at, ad + k * COLS, xq + k * as, COLS),
			             MOE_OK, "%s", moe_err_detail());
		}
		for (int r = 0; r < ROWS; r++) {
			cr_assert_eq(moe_dequantize_row(t, wd, w + r * rs, COLS), MOE_OK);
			for (int k = 0; k < TOK; k++) {
				double ref = 0, mag = 0;
				for (int c = 0; c < COLS; c++) {
					double p = (double)wd[c] * ad[k * COLS + c];
					ref += p;
					mag += fabs(p);
				}
				/* Any f32 summation of COLS terms (each product or block sum
				 * exact or rounded once) is within COLS * 2^-24 * sum|w a| of
				 * the exact value (the recursive-summation bound gamma_n). */
				double tol = COLS * 0x1p-24 * mag + 1e-30;
				double got = y[k * ROWS + r];
				cr_assert(fabs(got - ref) <= tol,
				          "%s row %d tok %d: got %.9g want %.9g (tol %.3g)",
				          moe_type_get(t)->name, r, k, got, ref, tol);
			}
		}
		free(xq);
		free(ad);
		free(wd);
		free(y);
		free(x);
		free(w);
	}
}

/* Token `probe` alone, then at positions 0, middle and last among n-1 random
 * others, with pools of 1 and 2 threads: the same bits every time.  Returns
 * the number of batches compared. */
static int check_batch_invariance(moe_type t, int64_t rows, int64_t cols)
{
	enum { NB = 41 }; /* crosses the token blocks of matmul.c */
	moe_pool *pools[2] = {NULL, NULL};
	cr_assert_eq(moe_pool_create(&pools[0], 1), MOE_OK);
	cr_assert_eq(moe_pool_create(&pools[1], 2), MOE_OK);
	uint8_t *w = make_weights(t, rows, cols);
	float *probe = malloc(sizeof(float) * cols);
	float *x = malloc(sizeof(float) * NB * cols);
	float *alone = malloc(sizeof(float) * rows), *y = malloc(sizeof(float) * NB * rows);
	fill_f32(probe, cols);
	cr_assert_eq(moe_matmul(pools[0], alone, w, t, rows, cols, probe, 1), MOE_OK, "%s",
	             moe_err_detail());
	const int64_t pos[] = {0, NB / 2, NB - 1};
	const int64_t sizes[] = {2, 7, NB};
	int compared = 0;
	for (int pi = 0; pi < 2; pi++)
		for (int si = 0; si < 3; si++)
			for (int qi = 0; qi < 3; qi++) {
				int64_t n = sizes[si], p = pos[qi] < n ? pos[qi] : n - 1;
				fill_f32(x, n * cols);
				memcpy(x + p * cols, probe, sizeof(float) * cols);
				cr_assert_eq(moe_matmul(pools[pi], y, w, t, rows, cols, x, n),
				             MOE_OK);
				cr_assert(memcmp(y + p * rows, alone, sizeof(float) * rows) == 0,
				          "%s %s: %d threads, batch %lld, position %lld differs",
				          moe_isa_name(moe_isa_active()), moe_type_get(t)->name,
				          pi + 1, (long long)n, (long long)p);
				compared++;
			}
	free(y);
	free(alone);
	free(x);
	free(probe);
	free(w);
	moe_pool_destroy(pools[1]);
	moe_pool_destroy(pools[0]);
	return compared;
}

static void batch_and_thread_invariant(moe_isa level)
{
	int compared = 0;
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	for (size_t ti = 0; ti < N_TYPES; ti++)
		compared += check_batch_invariance(types[ti], 37, 512); /* 37: ragged row tiles */
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	cr_log_info("%s: %d batches give the bits of their probe alone", moe_isa_name(level),
	            compared);
}

ISA_LEVEL_TESTS(matmul, batch_and_thread_invariant, batch_and_thread_invariant)

/* Every (row, token) element of an n_rows x n_tok product equals the product
 * of that row alone with that token alone, bit for bit, for every edge size:
 * the tile kernels compute it in a 1x1, 8x1, 2x4 or 1x8 tile, at any
 * position, padded or not (isa_avx2_gemm.c), and must not tell. */
static int check_tile_shapes(moe_type t)
{
	enum { MAXR = 11, MAXT = 19, COLS = 512 };
	uint8_t *w = make_weights(t, MAXR, COLS);
	size_t rs = moe_row_size(t, COLS), as = moe_act_row_size(t, COLS);
	float *x = malloc(sizeof(float) * MAXT * COLS);
	uint8_t *xq = malloc(as * MAXT);
	float single[MAXT][MAXR], y[MAXT * MAXR];
	int compared = 0;
	cr_assert(x != NULL && xq != NULL);
	fill_f32(x, MAXT * COLS);
	cr_assert_eq(moe_quantize_act_rows(NULL, xq, t, x, COLS, MAXT), MOE_OK);
	for (int k = 0; k < MAXT; k++)
		for (int r = 0; r < MAXR; r++)
			cr_assert_eq(moe_matmul_q(NULL, &single[k][r], w + r * rs, t, 1, COLS,
			                          xq + k * as, 1),
			             MOE_OK);
	for (int nr = 1; nr <= MAXR; nr += 1)
		for (int nt = 1; nt <= MAXT; nt++) {
			/* the last rows and tokens, so that every one meets every edge */
			int r0 = MAXR - nr, t0 = MAXT - nt;
			cr_assert_eq(
			    moe_matmul_q(NULL, y, w + r0 * rs, t, nr, COLS, xq + t0 * as, nt),
			    MOE_OK);
			for (int k = 0; k < nt; k++)
				for (int r = 0; r < nr; r++)
					cr_assert(
					    memcmp(&y[k * nr + r], &single[t0 + k][r0 + r],
					           sizeof(float)) == 0,
					    "%s %s: %d rows x %d tokens, element (%d, %d): %.9g vs "
					    "%.9g alone",
					    moe_isa_name(moe_isa_active()), moe_type_get(t)->name,
					    nr, nt, r, k, y[k * nr + r], single[t0 + k][r0 + r]);
			compared += nr * nt;
		}
	free(xq);
	free(x);
	free(w);
	return compared;
}

static void element_independent_of_tile_shape(moe_isa level)
{
	int compared = 0;
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	for (size_t ti = 0; ti < N_TYPES; ti++)
		compared += check_tile_shapes(types[ti]);
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	cr_log_info("%s: %d elements equal to their row and token alone", moe_isa_name(level),
	            compared);
}

ISA_LEVEL_TESTS(matmul, element_independent_of_tile_shape, element_independent_of_tile_shape)

Test(matmul, float_input_equals_prequantised_input)
{
	enum { ROWS = 24, COLS = 256, TOK = 9 };
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	for (size_t ti = 0; ti < N_TYPES; ti++) {
		moe_type t = types[ti];
		uint8_t *w = make_weights(t, ROWS, COLS);
		size_t as = moe_act_row_size(t, COLS);
		float x[TOK * COLS], y1[TOK * ROWS], y2[TOK * ROWS];
		uint8_t *xq = malloc(as * TOK), *xq2 = malloc(as * TOK);
		fill_f32(x, TOK * COLS);
		for (int k = 0; k < TOK; k++)
			cr_assert_eq(moe_quantize_act(t, xq + k * as, x + k * COLS, COLS), MOE_OK);
		cr_assert_eq(moe_quantize_act_rows(pool, xq2, t, x, COLS, TOK), MOE_OK);
		cr_assert(memcmp(xq, xq2, as * TOK) == 0);
		cr_assert_eq(moe_matmul(pool, y1, w, t, ROWS, COLS, x, TOK), MOE_OK);
		cr_assert_eq(moe_matmul_q(pool, y2, w, t, ROWS, COLS, xq, TOK), MOE_OK);
		cr_assert(memcmp(y1, y2, sizeof(y1)) == 0, "%s", moe_type_get(t)->name);
		free(xq2);
		free(xq);
		free(w);
	}
	moe_pool_destroy(pool);
}

Test(matmul, rejects_bad_arguments)
{
	float x[512] = {0}, y[16];
	uint8_t w[4096] = {0};
	cr_assert_eq(moe_matmul(NULL, y, w, MOE_TYPE_Q4_K, 2, 100, x, 1), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_matmul(NULL, y, w, MOE_TYPE_Q8_0, 0, 32, x, 1), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_matmul(NULL, y, w, MOE_TYPE_Q8_0, 2, 32, x, -1), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_matmul(NULL, y, w, (moe_type)5, 2, 32, x, 1), MOE_ERR_UNSUPPORTED);
	cr_assert_eq(moe_matmul(NULL, y, w, MOE_TYPE_I32, 2, 32, x, 1), MOE_ERR_UNSUPPORTED);
	cr_assert_eq(moe_matmul(NULL, y, NULL, MOE_TYPE_Q8_0, 2, 32, x, 1), MOE_ERR_INVAL);
	cr_assert_eq(moe_matmul_q(NULL, y, w, MOE_TYPE_Q8_0, 2, 32, NULL, 1), MOE_ERR_INVAL);
	cr_assert_eq(moe_matmul(NULL, y, w, MOE_TYPE_Q8_0, 2, 32, x, 0), MOE_OK);
}

/* Type t's rows of cols columns at level against the scalar level's bits,
 * every rows x tokens edge size up to 11 x 19; the elements compared. */
static int tiled_same_bits(moe_isa level, moe_type t, int cols)
{
	enum { MAXR = 11, MAXT = 19 };
	int compared = 0;
	uint8_t *w = make_weights(t, MAXR, cols);
	size_t rs = moe_row_size(t, cols), as = moe_act_row_size(t, cols);
	float *x = malloc(sizeof(float) * MAXT * (size_t)cols);
	uint8_t *xq = malloc(as * MAXT);
	float want[MAXT * MAXR], got[MAXT * MAXR];
	cr_assert(x != NULL && xq != NULL);
	fill_f32(x, MAXT * cols);
	cr_assert_eq(moe_quantize_act_rows(NULL, xq, t, x, cols, MAXT), MOE_OK);
	for (int nr = 1; nr <= MAXR; nr += 2)
		for (int nt = 1; nt <= MAXT; nt++) {
			const int r0 = MAXR - nr, t0 = MAXT - nt;
			cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
			cr_assert_eq(
			    moe_matmul_q(NULL, want, w + r0 * rs, t, nr, cols, xq + t0 * as, nt),
			    MOE_OK);
			cr_assert_eq(moe_isa_set(level), MOE_OK);
			cr_assert_eq(
			    moe_matmul_q(NULL, got, w + r0 * rs, t, nr, cols, xq + t0 * as, nt),
			    MOE_OK);
			for (int k = 0; k < nr * nt; k++)
				cr_assert(memcmp(&want[k], &got[k], sizeof(float)) == 0,
				          "%s %s, %d columns: %d rows x %d tokens, element %d: "
				          "%.9g, scalar %.9g",
				          moe_isa_name(level), moe_type_get(t)->name, cols, nr, nt,
				          k, got[k], want[k]);
			compared += nr * nt;
		}
	free(xq);
	free(x);
	free(w);
	return compared;
}

/* The types with tile kernels (gemm.h) follow one canonical block
 * arithmetic (quants.h) at every level: the scalar level's reference dots,
 * the AVX2 tiles and the AVX-512 kernels give the same bits, for every rows x
 * tokens edge size (and neon_cross checks the NEON dots against the same
 * references).  So the products a worker computes for its experts do not
 * depend on its CPU, and a cluster that mixes kinds of node stays
 * bit-identical to one process.  (The per-element dot types - F32, F16,
 * BF16, Q4_1, Q5_1 - use each level's own dot and are not covered.)  One test
 * per SIMD level; a level this CPU lacks is a skipped test. */
static void tiled_types_same_bits_as_scalar(moe_isa level)
{
	const moe_type tiled[] = {
	    MOE_TYPE_Q4_K,   MOE_TYPE_Q5_K,   MOE_TYPE_Q6_K, MOE_TYPE_Q8_0,
	    MOE_TYPE_Q4_0,   MOE_TYPE_Q5_0,   MOE_TYPE_Q2_K, MOE_TYPE_Q3_K /* isa_*_k23.c */,
	    MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_MXFP4 /* isa_*_iq4.c */};
	int compared = 0;
	for (size_t ti = 0; ti < sizeof(tiled) / sizeof(tiled[0]); ti++) {
		/* rows of one super-block, as the demo models' 256-column
		 * rows, and of three; 32-value types also on 128 columns (the
		 * demo models' Q5_0 and Q8_0 expert down rows) */
		if (moe_type_get(tiled[ti])->block_size == 32)
			compared += tiled_same_bits(level, tiled[ti], 128);
		compared += tiled_same_bits(level, tiled[ti], 256);
		compared += tiled_same_bits(level, tiled[ti], 768);
	}
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	cr_log_info("%s: %d elements equal to the scalar level's", moe_isa_name(level), compared);
}

ISA_SIMD_TESTS(matmul, tiled_types_same_bits_as_scalar, tiled_types_same_bits_as_scalar)

/* One token on Q4_0 rows longer than the transposed tiles' stack-held prep
 * (isa_avx2.h Q40_STACK_BLOCKS: 16384 columns), which then comes from the
 * heap, over enough rows (>= 16) that the AVX2 level takes its row runs too:
 * the scalar level's bits at each x86 level (one test per level). */
static void q4_0_long_rows_same_bits(moe_isa level)
{
	enum { ROWS = 37, COLS = 32 * 600 };
	uint8_t *w = make_weights(MOE_TYPE_Q4_0, ROWS, COLS);
	float *x = malloc(sizeof(float) * COLS);
	uint8_t *xq = malloc(moe_act_row_size(MOE_TYPE_Q4_0, COLS));
	float want[ROWS], got[ROWS];
	int compared = 0;
	cr_assert(x != NULL && xq != NULL);
	fill_f32(x, COLS);
	cr_assert_eq(moe_quantize_act(MOE_TYPE_Q4_0, xq, x, COLS), MOE_OK);
	cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
	cr_assert_eq(moe_matmul_q(NULL, want, w, MOE_TYPE_Q4_0, ROWS, COLS, xq, 1), MOE_OK);
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	cr_assert_eq(moe_matmul_q(NULL, got, w, MOE_TYPE_Q4_0, ROWS, COLS, xq, 1), MOE_OK);
	for (int r = 0; r < ROWS; r++, compared++)
		cr_assert(memcmp(&want[r], &got[r], sizeof(float)) == 0,
		          "%s: row %d: %.9g, scalar %.9g", moe_isa_name(level), r, got[r], want[r]);
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	free(xq);
	free(x);
	free(w);
}

#if defined(__x86_64__)
ISA_TEST_AT(matmul, q4_0_one_token_on_long_rows_same_bits, q4_0_long_rows_same_bits, MOE_ISA_AVX2,
            avx2)
ISA_TEST_AT(matmul, q4_0_one_token_on_long_rows_same_bits, q4_0_long_rows_same_bits, MOE_ISA_AVX512,
            avx512)
#endif

/* One token against row counts that take the one-token 8x1 tile over long
 * runs of rows (isa_avx2.h run_lanes8: lane k walks the k-th of 8
 * runs, the last lanes clamped, each lane starting k * rotation rows in and
 * wrapping; the rotation is 1 to 3 for many of these shapes' 144-, 160- and
 * 272-byte rows): every element equals its row alone, at every ISA level. */
static void one_token_over_row_runs(moe_isa level)
{
	/* one thread: runs of max(16, rows / 8 rounded down to 16) rows */
	const int64_t counts[] = {16, 17, 23, 37, 130, 300, 2100};
	enum { COLS = 256, MAXR = 2100 };
	int compared = 0;
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	for (size_t ti = 0; ti < N_TYPES; ti++) {
		moe_type t = types[ti];
		uint8_t *w = make_weights(t, MAXR, COLS);
		size_t rs = moe_row_size(t, COLS), as = moe_act_row_size(t, COLS);
		float x[COLS], alone;
		float *y = malloc(sizeof(float) * MAXR);
		uint8_t *xq = malloc(as);
		cr_assert(xq != NULL && y != NULL);
		fill_f32(x, COLS);
		cr_assert_eq(moe_quantize_act(t, xq, x, COLS), MOE_OK);
		for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
			const int64_t n = counts[ci];
			cr_assert_eq(moe_matmul_q(NULL, y, w, t, n, COLS, xq, 1), MOE_OK);
			for (int64_t r = 0; r < n; r++) {
				cr_assert_eq(
				    moe_matmul_q(NULL, &alone, w + r * rs, t, 1, COLS, xq, 1),
				    MOE_OK);
				cr_assert(memcmp(&y[r], &alone, sizeof(float)) == 0,
				          "%s %s: %lld rows, row %lld: %.9g vs %.9g alone",
				          moe_isa_name(level), moe_type_get(t)->name, (long long)n,
				          (long long)r, y[r], alone);
				compared++;
			}
		}
		free(y);
		free(xq);
		free(w);
	}
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
}

ISA_LEVEL_TESTS(matmul, one_token_over_row_runs_equals_rows_alone, one_token_over_row_runs)
