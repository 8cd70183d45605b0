/*
 * test_iq13.c - the grid formats IQ3_XXS, IQ3_S, IQ1_S and IQ1_M: the grids
 * (against hashes and entries of llama.cpp's tables, written out here), the
 * dequantisation of hand-built blocks (expected values from the formats'
 * definitions), the scalar reference dot against a double-precision dot of
 * the dequantised operands, every SIMD level's dots and matrix products
 * against the scalar level bit for bit (sane random blocks and blocks of
 * random bytes, every rows x tokens edge size), and the fixtures' tensor
 * types (a file mixing them with other types).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "model/gguf.h"
#include "quant_same_bits.h"

static const moe_type iq_types[] = {MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_S, MOE_TYPE_IQ1_S,
                                    MOE_TYPE_IQ1_M};
#define N_IQ (sizeof(iq_types) / sizeof(iq_types[0]))

Test(iq13, type_table)
{
	const struct {
		moe_type t;
		const char *name;
		size_t size;
	} want[] = {{MOE_TYPE_IQ3_XXS, "IQ3_XXS", 98},
	            {MOE_TYPE_IQ3_S, "IQ3_S", 110},
	            {MOE_TYPE_IQ1_S, "IQ1_S", 50},
	            {MOE_TYPE_IQ1_M, "IQ1_M", 56}};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const moe_type_traits *tr = moe_type_get(want[i].t);
		cr_assert_not_null(tr);
		cr_assert_str_eq(tr->name, want[i].name);
		cr_assert_eq(tr->block_size, 256, "%s", tr->name);
		cr_assert_eq(tr->type_size, want[i].size, "%s", tr->name);
		cr_assert_eq(tr->vec_dot_type, MOE_TYPE_Q8_K, "%s", tr->name);
		cr_assert(tr->compute, "%s", tr->name);
		cr_assert_not_null(moe_vec_dot_get(want[i].t), "%s", tr->name);
	}
}

static uint64_t fnv1a(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

/* The expanded grids are llama.cpp's: FNV-1a of ggml-common.h's iq3xxs_grid,
 * iq3s_grid and iq1s_grid as stored (computed by tests/tools/gen_iq_grids.py
 * from that file), and a few entries copied from it. */
Test(iq13, grids_are_the_formats)
{
	moe_iq13_init();
	cr_expect_eq(fnv1a(moe_iq3xxs_grid, sizeof(moe_iq3xxs_grid)), 0xdfa5dc83d6a155d5ull);
	cr_expect_eq(fnv1a(moe_iq3s_grid, sizeof(moe_iq3s_grid)), 0xfa37020c25b44829ull);
	cr_expect_eq(fnv1a(moe_iq1s_grid, sizeof(moe_iq1s_grid)), 0x6703ed863501ae2eull);
	cr_expect_eq(moe_iq3xxs_grid[0], 0x04040404u);
	cr_expect_eq(moe_iq3xxs_grid[1], 0x04040414u);
	cr_expect_eq(moe_iq3xxs_grid[100], 0x14040c1cu);
	cr_expect_eq(moe_iq3xxs_grid[255], 0x3e341c04u);
	cr_expect_eq(moe_iq3s_grid[1], 0x01010103u);
	cr_expect_eq(moe_iq3s_grid[300], 0x07030503u);
	cr_expect_eq(moe_iq3s_grid[511], 0x0f0f0101u);
	cr_expect_eq(moe_iq1s_grid[0], 0xffffffffffffffffull);
	cr_expect_eq(moe_iq1s_grid[1], 0xffffffffffffff01ull);
	cr_expect_eq(moe_iq1s_grid[1000], 0x00000000ffff00ffull);
	cr_expect_eq(moe_iq1s_grid[2047], 0x0101010101010101ull);
	/* the sign table: byte j is -1 where bit j is set */
	cr_expect_eq(moe_iq_signs[0], 0x0101010101010101ull);
	cr_expect_eq(moe_iq_signs[0x81], 0xff010101010101ffull);
}

Test(iq13, dequant_iq3_xxs_by_hand)
{
	uint8_t b[98] = {0};
	float y[256];
	qsb_put16(b, 0x3c00); /* d = 1 */
	b[2 + 0] = 1;         /* values 0-3: grid 1 = 20 4 4 4 */
	b[2 + 8 + 2] = 100;   /* values 40-43: grid 100 = 28 12 4 20 */
	/* sub-block 0's word: ls 3 (x 7), group 0 sign bits 0000001 (value 0
	 * negative; odd count: value 7 negative too) */
	const uint32_t w0 = 3u << 28 | 1u;
	memcpy(b + 2 + 64, &w0, 4);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ3_XXS, y, b, 256), MOE_OK);
	/* value = d * (2 ls + 1) * grid * sign / 4 */
	cr_expect_eq(y[0], -35.0f);
	cr_expect_eq(y[1], 7.0f);
	cr_expect_eq(y[4], 7.0f);
	cr_expect_eq(y[6], 7.0f);
	cr_expect_eq(y[7], -7.0f);
	cr_expect_eq(y[8], 7.0f);
	cr_expect_eq(y[32], 1.0f); /* ls 0: 1 * 4 / 4 */
	cr_expect_eq(y[40], 7.0f);
	cr_expect_eq(y[41], 3.0f);
	cr_expect_eq(y[42], 1.0f);
	cr_expect_eq(y[43], 5.0f);
	cr_expect_eq(y[255], 1.0f);
}

Test(iq13, dequant_iq3_s_by_hand)
{
	uint8_t b[110] = {0};
	float y[256];
	qsb_put16(b, 0x3800); /* d = 0.5 */
	b[2 + 0] = 44;        /* with qh bit: grid 300 = 3 5 3 7 */
	b[2 + 8] = 1;         /* sub-block 1 values 0-3: grid 1 = 3 1 1 1 */
	b[66] = 1;            /* qh[0] bit 0 */
	b[74] = 0x02;         /* signs[0]: value 1 negative */
	b[74 + 4] = 0x01;     /* signs[4]: value 32 negative */
	b[106] = 0x21;        /* ls 1 (x 3) and 2 (x 5) */
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ3_S, y, b, 256), MOE_OK);
	cr_expect_eq(y[0], 4.5f);
	cr_expect_eq(y[1], -7.5f);
	cr_expect_eq(y[2], 4.5f);
	cr_expect_eq(y[3], 10.5f);
	cr_expect_eq(y[4], 1.5f);
	cr_expect_eq(y[32], -7.5f);
	cr_expect_eq(y[33], 2.5f);
	cr_expect_eq(y[64], 0.5f); /* ls 0, grid 0: 0.5 * 1 * 1 */
}

Test(iq13, dequant_iq1_s_by_hand)
{
	uint8_t b[50] = {0};
	float y[256];
	qsb_put16(b, 0x3c00); /* d = 1 */
	b[2 + 0] = 0xff;      /* group 0: index 0x7ff, all +1 */
	b[2 + 2] = 0xe8;      /* group 2: index 0x3e8 = 1000: -1 0 -1 -1 0 0 0 0 */
	/* qh[0]: delta -1/8, ls 5 (x 11), group 0 high bits 7, group 2 high bits 3 */
	qsb_put16(b + 34, 0x8000 | 5u << 12 | 7u | 3u << 6);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ1_S, y, b, 256), MOE_OK);
	/* value = d * (2 ls + 1) * (grid + delta) */
	cr_expect_eq(y[0], 9.625f);
	cr_expect_eq(y[7], 9.625f);
	cr_expect_eq(y[8], -12.375f);
	cr_expect_eq(y[16], -12.375f);
	cr_expect_eq(y[17], -1.375f);
	cr_expect_eq(y[19], -12.375f);
	cr_expect_eq(y[20], -1.375f);
	cr_expect_eq(y[32], -0.875f); /* qh 0: ls 0, delta +1/8, grid 0 */
}

Test(iq13, dequant_iq1_m_by_hand)
{
	uint8_t b[56] = {0};
	float y[256];
	b[0] = 0xff;  /* group 0: index 0x7ff */
	b[2] = 1;     /* group 2: index 1 = +1 then -1 x 7 */
	b[32] = 0x87; /* group 0 high bits 7, delta +; group 1 delta - */
	/* word 0: sub-block 0 ls 2 (x 5) and 6 (x 13); sub-block 1 ls 0, 7 (x 15) */
	uint16_t w0 = (uint16_t)(2u | 6u << 3 | 0u << 6 | 7u << 9);
	qsb_put16(b + 48, w0);
	qsb_put_iq1m_d(b, 0x4000); /* d = 2 */
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ1_M, y, b, 256), MOE_OK);
	cr_expect_eq(y[0], 11.25f);
	cr_expect_eq(y[8], -11.25f);
	cr_expect_eq(y[16], 29.25f);
	cr_expect_eq(y[17], -22.75f);
	cr_expect_eq(y[32], -1.75f);
	cr_expect_eq(y[48], -26.25f);
	cr_expect_eq(y[255], -1.75f); /* word 1 = the d nibble only: ls 0 */
}

/* The reference dot against sum(dequant(w) * dequant(a)) in double: integer
 * parts exact, then float rounding of the scale products and the running
 * sum. */
Test(iq13, reference_matches_dequantised_double)
{
	const int64_t lengths[] = {256, 768, 4096, 256 * 27};
	cr_assert_eq(
	    qsb_reference_double(iq_types, N_IQ, lengths, sizeof lengths / sizeof lengths[0]), 16);
}

/* Each level's one-row dot gives the reference's bits (NaN for NaN), on sane
 * and on random-byte blocks. */
static void dots_same_bits(moe_isa level)
{
	static const int64_t lengths[] = {256, 768, 4096, 256 * 27};
	qsb_dots(level, iq_types, N_IQ, lengths, sizeof lengths / sizeof lengths[0], true,
	         "IQ3/IQ1");
}

ISA_SIMD_TESTS(iq13, dots_same_bits_as_reference, dots_same_bits)

/* Matrix products at each level give the scalar level's bits for every rows
 * x tokens edge size (1..11 rows x 1..19 tokens: every token group, full or
 * not), one token over 37 rows, and on 2 threads. */
static void matmul_same_bits(moe_isa level)
{
	qsb_matmul(level, iq_types, N_IQ, 512, "IQ3/IQ1");
}

ISA_SIMD_TESTS(iq13, matmul_same_bits_as_scalar, matmul_same_bits)

/* One token on 37 long rows (70 blocks: the AVX-512 one-token tiles' prepared
 * token then lives on the heap, past 64 blocks) and on 37 rows of 3 blocks,
 * on 1 and 2 threads: the scalar level's bits. */
static void one_token_long_rows_same_bits(moe_isa level)
{
	enum { ROWS = 37 };
	const int64_t cols[] = {256 * 70, 256 * 3};
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	rng_state = 2718;
	for (size_t ti = 0; ti < N_IQ; ti++)
		for (int ci = 0; ci < 2; ci++) {
			const moe_type t = iq_types[ti];
			uint8_t *w = qsb_rand_blocks(t, (int64_t)ROWS * cols[ci], true);
			void *xq = qsb_rand_act(t, cols[ci]);
			float want[ROWS], got[ROWS];
			cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
			cr_assert_eq(moe_matmul_q(NULL, want, w, t, ROWS, cols[ci], xq, 1), MOE_OK);
			cr_assert_eq(moe_isa_set(level), MOE_OK);
			for (int thr = 0; thr < 2; thr++) {
				cr_assert_eq(moe_matmul_q(thr ? pool : NULL, got, w, t, ROWS,
				                          cols[ci], xq, 1),
				             MOE_OK);
				for (int r = 0; r < ROWS; r++)
					cr_assert(qsb_same_float(want[r], got[r]),
					          "%s %s, %lld columns, %d threads: row %d: %.9g, "
					          "scalar %.9g",
					          moe_isa_name(level), moe_type_get(t)->name,
					          (long long)cols[ci], thr + 1, r, got[r], want[r]);
			}
			free(xq);
			free(w);
		}
	moe_pool_destroy(pool);
}

ISA_SIMD_TESTS(iq13, one_token_long_rows_same_bits, one_token_long_rows_same_bits)

/* ---- the expert FFN ----------------------------------------------------------------- */

enum { FFN_EXP = 6, FFN_EMBD = 256, FFN_FF = 512, FFN_USED = 2, FFN_T = 19 };

/* A stacked expert matrix of random sane blocks, scales cut to 2^-13 .. 2^-7
 * so that the products stay far from the fixed-point limits. */
static void ffn_mat(moe_expert_mat *m, const void **ptr, uint8_t **data, moe_type t, int64_t rows,
                    int64_t cols)
{
	const size_t bytes = moe_row_size(t, cols) * (size_t)rows;
	*data = malloc(bytes * FFN_EXP);
	cr_assert_not_null(*data);
	for (int e = 0; e < FFN_EXP; e++) {
		uint8_t *b = qsb_rand_blocks(t, rows * cols, true);
		const moe_type_traits *tr = moe_type_get(t);
		for (int64_t k = 0; k < rows * cols / 256; k++) {
			uint8_t *blk = b + (size_t)k * tr->type_size;
			const uint16_t d = (uint16_t)(qsb_rand_scale16() - (3 << 10));
			if (t == MOE_TYPE_IQ1_M)
				qsb_put_iq1m_d(blk, d);
			else
				qsb_put16(blk, d);
		}
		memcpy(*data + bytes * (size_t)e, b, bytes);
		free(b);
		ptr[e] = *data + bytes * (size_t)e;
	}
	m->type = t;
	m->n_rows = rows;
	m->n_cols = cols;
	m->expert = ptr;
}

/* A worker's whole expert FFN over these types (products, SwiGLU, the
 * quantised h, the fixed-point sums) gives the scalar level's bits at each
 * SIMD level: workers of any kind can share a cluster. */
static void ffn_same_bits(moe_isa level)
{
	static const moe_type mixes[][3] = {
	    {MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_XXS},
	    {MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_S},
	    {MOE_TYPE_IQ3_S, MOE_TYPE_IQ3_S, MOE_TYPE_IQ3_S},
	    {MOE_TYPE_IQ1_S, MOE_TYPE_IQ1_S, MOE_TYPE_IQ1_S},
	    {MOE_TYPE_IQ1_M, MOE_TYPE_IQ1_M, MOE_TYPE_IQ1_M},
	};
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	int compared = 0;
	for (size_t k = 0; k < sizeof(mixes) / sizeof(mixes[0]); k++) {
		rng_state = 777 + k;
		moe_expert_ffn f = {.n_expert = FFN_EXP};
		const void *ptr[3][FFN_EXP];
		uint8_t *data[3];
		ffn_mat(&f.gate, ptr[0], &data[0], mixes[k][0], FFN_FF, FFN_EMBD);
		ffn_mat(&f.up, ptr[1], &data[1], mixes[k][1], FFN_FF, FFN_EMBD);
		ffn_mat(&f.down, ptr[2], &data[2], mixes[k][2], FFN_EMBD, FFN_FF);
		static float x[FFN_T * FFN_EMBD];
		float w[FFN_T * FFN_USED];
		int32_t ids[FFN_T * FFN_USED];
		for (int i = 0; i < FFN_T * FFN_EMBD; i++)
			x[i] = rng_unif();
		for (int t = 0; t < FFN_T; t++) {
			ids[2 * t] = (int32_t)(rng_next() % FFN_EXP);
			ids[2 * t + 1] =
			    (ids[2 * t] + 1 + (int32_t)(rng_next() % (FFN_EXP - 1))) % FFN_EXP;
			w[2 * t] = 0.25f + 0.5f * (rng_unif() + 1) / 2;
			w[2 * t + 1] = 1 - w[2 * t];
		}
		static moe_fix_t want[FFN_T * FFN_EMBD], got[FFN_T * FFN_EMBD];
		memset(want, 0, sizeof(want));
		memset(got, 0, sizeof(got));
		cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
		cr_assert_eq(moe_expert_ffn_run(pool, want, &f, x, FFN_T, ids, w, FFN_USED),
		             MOE_OK);
		cr_assert_eq(moe_isa_set(level), MOE_OK);
		cr_assert_eq(moe_expert_ffn_run(pool, got, &f, x, FFN_T, ids, w, FFN_USED), MOE_OK);
		int nonzero = 0;
		for (int i = 0; i < FFN_T * FFN_EMBD; i++) {
			nonzero +=
			    want[i] != 0 && want[i] != MOE_FIX_MAX && want[i] != -MOE_FIX_MAX;
			cr_assert_eq(want[i], got[i],
			             "mix %zu (%s): element %d: %s %lld, scalar %lld", k,
			             moe_type_get(mixes[k][0])->name, i, moe_isa_name(level),
			             (long long)got[i], (long long)want[i]);
		}
		cr_assert_gt(nonzero, FFN_T * FFN_EMBD / 2,
		             "mix %zu: outputs mostly 0 or saturated", k);
		compared += FFN_T * FFN_EMBD;
		for (int m = 0; m < 3; m++)
			free(data[m]);
	}
	moe_pool_destroy(pool);
	cr_log_info("%s: %d expert FFN outputs equal to the scalar level's", moe_isa_name(level),
	            compared);
}

ISA_SIMD_TESTS(iq13, expert_ffn_same_bits_as_scalar, ffn_same_bits)

/* ---- the fixtures ---------------------------------------------------------------- */

/* The fixtures hold the types llama-quantize chose (tests/fixtures/README.md):
 * the IQ3_XXS file mixes IQ3_XXS experts with IQ3_S, Q8_0, Q5_K and Q6_K
 * tensors; every tensor of these types dequantises to finite values that
 * its own dots agree with. */
Test(iq13_fixtures, tensor_types)
{
	const struct {
		const char *file;
		moe_type main;
		int n_main;
		moe_type other;
		int n_other;
	} want[] = {{"qwen3moe-kq-IQ3_XXS.gguf", MOE_TYPE_IQ3_XXS, 6, MOE_TYPE_IQ3_S, 3},
	            {"qwen3moe-kq-IQ3_S.gguf", MOE_TYPE_IQ3_S, 9, MOE_TYPE_Q8_0, 4},
	            {"qwen3moe-kq-IQ1_S.gguf", MOE_TYPE_IQ1_S, 8, MOE_TYPE_Q2_K, 1},
	            {"qwen3moe-kq-IQ1_M.gguf", MOE_TYPE_IQ1_M, 8, MOE_TYPE_Q2_K, 1}};
	for (size_t fi = 0; fi < sizeof(want) / sizeof(want[0]); fi++) {
		moe_gguf *g = qsb_open_fixture(want[fi].file);
		int count[MOE_TYPE_COUNT] = {0};
		for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
			const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
			cr_assert_lt((unsigned)t->type, MOE_TYPE_COUNT);
			count[t->type]++;
			if (t->type != MOE_TYPE_IQ3_XXS && t->type != MOE_TYPE_IQ3_S &&
			    t->type != MOE_TYPE_IQ1_S && t->type != MOE_TYPE_IQ1_M)
				continue;
			const int64_t n = 256 * 16;
			float *f = malloc(sizeof(float) * (size_t)n);
			cr_assert_not_null(f);
			cr_assert_eq(moe_dequantize_row(t->type, f, t->data, n), MOE_OK);
			for (int64_t k = 0; k < n; k++)
				cr_assert(isfinite(f[k]), "%s: %.*s value %lld", want[fi].file,
				          (int)t->name.len, t->name.ptr, (long long)k);
			free(f);
		}
		cr_expect_eq(count[want[fi].main], want[fi].n_main, "%s", want[fi].file);
		cr_expect_eq(count[want[fi].other], want[fi].n_other, "%s", want[fi].file);
		moe_gguf_close(g);
	}
}
