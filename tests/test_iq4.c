/*
 * test_iq4.c - the IQ4_NL, IQ4_XS and MXFP4 block formats: dequantisation of
 * hand-built blocks (expected values from the format's definition written out
 * here: the IQ4 levels, E2M1 decoded from its bits), the scalar reference dot
 * against a double-precision dot of the dequantised operands, and every SIMD
 * level's dots and matrix products against the scalar level bit for bit, on
 * sane random blocks and on blocks of random bytes (NaN / Inf scales, E8M0
 * 255 = NaN), over every rows x tokens edge size.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"
#include "model/gguf.h"
#include "quant_same_bits.h"

static const moe_type iq_types[] = {MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_MXFP4};
#define N_IQ (sizeof(iq_types) / sizeof(iq_types[0]))

/* The IQ4_NL / IQ4_XS levels as the format defines them. */
static const int nl_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                  1,    13,   25,  38,  53,  69,  89,  113};

/* fp16 bits -> value by the IEEE formula. */
static double half_value(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0    ? ldexp(m, -24)
	           : e == 31 ? (m ? NAN : INFINITY)
	                     : ldexp(1024 + m, e - 25);
	return (h & 0x8000) ? -v : v;
}

/* An E2M1 code's value from its bits: sign, 2 exponent bits (bias 1), 1
 * mantissa bit; exponent 0 is subnormal (0 or 0.5). */
static double e2m1_value(int q)
{
	int s = q >> 3, e = (q >> 1) & 3, m = q & 1;
	double v = e == 0 ? 0.5 * m : ldexp(1.0 + 0.5 * m, e - 1);
	return s ? -v : v;
}

Test(iq4, type_table)
{
	const struct {
		moe_type t;
		int64_t bs;
		size_t size;
		moe_type act;
	} want[] = {{MOE_TYPE_IQ4_NL, 32, 18, MOE_TYPE_Q8_0},
	            {MOE_TYPE_IQ4_XS, 256, 136, MOE_TYPE_Q8_K},
	            {MOE_TYPE_MXFP4, 32, 17, MOE_TYPE_Q8_0}};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const moe_type_traits *tr = moe_type_get(want[i].t);
		cr_assert_not_null(tr);
		cr_assert_eq(tr->block_size, want[i].bs, "%s", tr->name);
		cr_assert_eq(tr->type_size, want[i].size, "%s", tr->name);
		cr_assert_eq(tr->vec_dot_type, want[i].act, "%s", tr->name);
		cr_assert(tr->compute, "%s", tr->name);
		cr_assert_not_null(moe_vec_dot_get(want[i].t), "%s", tr->name);
	}
}

Test(iq4, dequant_iq4_nl_by_hand)
{
	uint8_t b[2 * 18];
	float y[64];
	qsb_put16(b, 0x3800);      /* 0.5 */
	qsb_put16(b + 18, 0xc400); /* -4 */
	for (int j = 0; j < 16; j++) {
		b[2 + j] = (uint8_t)(j | (15 - j) << 4);
		b[20 + j] = (uint8_t)((j * 7) % 16 | ((j * 3) % 16) << 4);
	}
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ4_NL, y, b, 64), MOE_OK);
	for (int j = 0; j < 16; j++) {
		cr_assert_eq(y[j], 0.5f * (float)nl_levels[j], "value %d", j);
		cr_assert_eq(y[16 + j], 0.5f * (float)nl_levels[15 - j], "value %d", 16 + j);
		cr_assert_eq(y[32 + j], -4.0f * (float)nl_levels[(j * 7) % 16]);
		cr_assert_eq(y[48 + j], -4.0f * (float)nl_levels[(j * 3) % 16]);
	}
	/* a few literal values: level 0 is -127, level 15 is 113 */
	cr_assert_eq(y[0], -63.5f);
	cr_assert_eq(y[16], 56.5f);
	cr_assert_eq(y[15], 56.5f);
	cr_assert_eq(y[8], 0.5f);
}

Test(iq4, dequant_iq4_xs_by_hand)
{
	uint8_t b[136];
	float y[256];
	const int ls[8] = {0, 63, 32, 33, 31, 16, 48, 7};
	memset(b, 0, sizeof b);
	qsb_put16(b, 0x3400); /* 0.25 */
	uint16_t h = 0;
	for (int s = 0; s < 8; s++) {
		b[4 + s / 2] |= (uint8_t)((ls[s] & 15) << (4 * (s % 2)));
		h |= (uint16_t)((ls[s] >> 4) << (2 * s));
	}
	qsb_put16(b + 2, h);
	for (int k = 0; k < 128; k++)
		b[8 + k] = (uint8_t)((k * 5 + 3) % 16 | ((k * 11 + 1) % 16) << 4);
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_IQ4_XS, y, b, 256), MOE_OK);
	for (int v = 0; v < 256; v++) {
		int s = v / 32, j = v % 32, k = 16 * s + j % 16;
		int q = j < 16 ? (k * 5 + 3) % 16 : (k * 11 + 1) % 16;
		float want = (float)half_value(0x3400) * (float)(ls[s] - 32) * (float)nl_levels[q];
		cr_assert_eq(y[v], want, "value %d: %g vs %g", v, y[v], want);
	}
	/* literal: value 0 is in sub-block 0 (ls 0: scale -32), code 3 (-65):
	 * 0.25 * -32 * -65 = 520 */
	cr_assert_eq(y[0], 520.0f);
	/* sub-block 2 has ls 32: all zero */
	for (int j = 0; j < 32; j++)
		cr_assert_eq(y[64 + j], 0.0f);
}

Test(iq4, dequant_mxfp4_by_hand)
{
	const uint8_t es[] = {127, 130, 100, 0, 1, 2, 254};
	enum { NE = sizeof(es) };
	uint8_t b[NE * 17];
	float y[NE * 32];
	for (int k = 0; k < NE; k++) {
		b[17 * k] = es[k];
		for (int j = 0; j < 16; j++)
			b[17 * k + 1 + j] = (uint8_t)(j | ((j + k + 5) % 16) << 4);
	}
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_MXFP4, y, b, NE * 32), MOE_OK);
	for (int k = 0; k < NE; k++)
		for (int j = 0; j < 16; j++) {
			double s = ldexp(1.0, es[k] - 127);
			double w0 = e2m1_value(j) * s, w1 = e2m1_value((j + k + 5) % 16) * s;
			cr_assert_eq(y[32 * k + j], (float)w0, "e %d code %d: %g vs %g", es[k], j,
			             y[32 * k + j], w0);
			cr_assert_eq(y[32 * k + 16 + j], (float)w1, "e %d code %d", es[k],
			             (j + k + 5) % 16);
		}
	/* literal: e 127 is scale 1, codes 0..7 are 0 0.5 1 1.5 2 3 4 6 */
	const float lit[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
	for (int j = 0; j < 8; j++) {
		cr_assert_eq(y[j], lit[j]);
		cr_assert_eq(y[8 + j], -lit[j]);
	}
	cr_assert_eq(y[32 + 7], 48.0f); /* e 130: 6 * 8 */
	cr_assert_eq(y[96 + 1], 0x1p-128f, "e 0: 0.5 * 2^-127, a subnormal");
}

/* E8M0 255 is NaN (OCP MX): every value of its block is NaN, and so is any
 * dot that meets it, at every level; its neighbours are not. */
Test(iq4, mxfp4_e8m0_255_is_nan)
{
	enum { N = 32 * 24 };
	rng_state = 4242;
	uint8_t *w = qsb_rand_blocks(MOE_TYPE_MXFP4, N, true);
	void *a = qsb_rand_act(MOE_TYPE_MXFP4, N);
	float y[N];
	w[17 * 5] = 255;
	cr_assert_eq(moe_dequantize_row(MOE_TYPE_MXFP4, y, w, N), MOE_OK);
	for (int i = 0; i < N; i++)
		cr_assert(isnan(y[i]) == (i / 32 == 5), "value %d: %g", i, y[i]);
	for (int l = 0; l <= (int)MOE_ISA_NEON; l++) {
		moe_vec_dot_fn fn = moe_vec_dot_get_isa(MOE_TYPE_MXFP4, (moe_isa)l);
		if (fn == NULL)
			continue;
		float s = 0;
		fn(N, &s, w, a);
		cr_assert(isnan(s), "%s: %g", moe_isa_name((moe_isa)l), s);
	}
	free(a);
	free(w);
}

/* The reference dot against sum(dequant(w) * dequant(a)) in double: integer
 * parts exact, then float rounding of the scale products and the running
 * sum (as test_dot's bound). */
Test(iq4, reference_matches_dequantised_double)
{
	const int64_t lengths[] = {256, 768, 4096, 256 * 27, 32 * 13, 32 * 41};
	cr_assert_eq(
	    qsb_reference_double(iq_types, N_IQ, lengths, sizeof lengths / sizeof lengths[0]), 16);
}

/* Each level's one-row dot gives the reference's bits (NaN for NaN), on sane
 * and on random-byte blocks, for lengths with and without a partial group
 * of 8 blocks. */
static void dots_same_bits(moe_isa level)
{
	static const int64_t lengths[] = {256, 768, 4096, 32 * 13, 32 * 41, 32 * 7};
	qsb_dots(level, iq_types, N_IQ, lengths, sizeof lengths / sizeof lengths[0], false,
	         "IQ4/MXFP4");
}

ISA_SIMD_TESTS(iq4, dots_same_bits_as_reference, dots_same_bits)

/* Matrix products at each level give the scalar level's bits for every rows
 * x tokens edge size (1..11 rows x 1..19 tokens: every tile shape, padded
 * or not), one token over 37 rows (the 8 row runs), and on 2 threads. */
static void matmul_same_bits(moe_isa level)
{
	qsb_matmul(level, iq_types, N_IQ, 768, "IQ4/MXFP4");
}

ISA_SIMD_TESTS(iq4, matmul_same_bits_as_scalar, matmul_same_bits)

/* ---- the quantizers against llama-quantize ---------------------------------------- */

/*
 * The IQ4 / MXFP4 fixtures were made by `llama-quantize F32 out TYPE` from an
 * F32 twin holding qwen3moe-kq-Q4_K_M.gguf's values (tests/fixtures/README.md):
 * so the Q4_K_M tensor dequantised and quantised by moe_quantize_row gives
 * the fixture's bytes, for a prefix of every IQ4_NL, IQ4_XS and MXFP4 tensor.
 */
Test(iq4_fixtures, quantizers_reproduce_llama_quantize)
{
	const char *files[] = {"qwen3moe-kq-IQ4_XS.gguf", "qwen3moe-kq-IQ4_NL.gguf",
	                       "qwen3moe-kq-MXFP4_MOE.gguf"};
	int seen[MOE_TYPE_COUNT] = {0};
	moe_gguf *src = qsb_open_fixture("qwen3moe-kq-Q4_K_M.gguf");
	for (size_t fi = 0; fi < sizeof(files) / sizeof(files[0]); fi++) {
		moe_gguf *gq = qsb_open_fixture(files[fi]);
		for (int64_t i = 0; i < moe_gguf_n_tensors(gq); i++) {
			const moe_gguf_tensor *tq = moe_gguf_tensor_at(gq, i);
			if (tq->type != MOE_TYPE_IQ4_NL && tq->type != MOE_TYPE_IQ4_XS &&
			    tq->type != MOE_TYPE_MXFP4)
				continue;
			char name[256];
			snprintf(name, sizeof(name), "%.*s", (int)tq->name.len, tq->name.ptr);
			const moe_gguf_tensor *tf = moe_gguf_find_tensor(src, name);
			cr_assert_not_null(tf, "%s", name);
			const int64_t n = tq->n_elements < 256 * 64 ? tq->n_elements : 256 * 64;
			const size_t sz = moe_row_size(tq->type, n);
			float *f = malloc(sizeof(float) * (size_t)n);
			uint8_t *buf = malloc(sz);
			cr_assert(f != NULL && buf != NULL);
			cr_assert_eq(moe_dequantize_row(tf->type, f, tf->data, n), MOE_OK);
			cr_assert_eq(moe_quantize_row(tq->type, buf, f, n), MOE_OK);
			const size_t bs = moe_type_get(tq->type)->type_size;
			for (size_t b = 0; b < sz / bs; b++)
				cr_assert(memcmp(buf + b * bs, (const uint8_t *)tq->data + b * bs,
				                 bs) == 0,
				          "%s %s (%s): block %zu differs", files[fi], name,
				          moe_type_get(tq->type)->name, b);
			seen[tq->type]++;
			free(buf);
			free(f);
		}
		moe_gguf_close(gq);
	}
	moe_gguf_close(src);
	cr_assert_eq(seen[MOE_TYPE_IQ4_XS], 9);
	cr_assert_eq(seen[MOE_TYPE_IQ4_NL], 9);
	cr_assert_eq(seen[MOE_TYPE_MXFP4], 6);
}

/* One token on long rows over 37 rows (the 8 row runs of the one-token
 * tiles, in claims of 16 rows and an edge): the scalar level's bits.  IQ4_XS
 * rows of 40 blocks; IQ4_NL and MXFP4 rows of 545 blocks (17440 columns:
 * MXFP4's per-block token data then lives on the heap, past 512 blocks). */
static void xs_long_rows_same_bits(moe_isa level)
{
	enum { ROWS = 37 };
	const moe_type types[] = {MOE_TYPE_IQ4_XS, MOE_TYPE_IQ4_NL, MOE_TYPE_MXFP4};
	const int64_t cols[] = {256 * 40, 32 * 545, 32 * 545};
	rng_state = 31337;
	for (int ti = 0; ti < 3; ti++) {
		const moe_type t = types[ti];
		uint8_t *w = qsb_rand_blocks(t, (int64_t)ROWS * cols[ti], true);
		void *xq = qsb_rand_act(t, cols[ti]);
		float want[ROWS], got[ROWS];
		cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
		cr_assert_eq(moe_matmul_q(NULL, want, w, t, ROWS, cols[ti], xq, 1), MOE_OK);
		cr_assert_eq(moe_isa_set(level), MOE_OK);
		cr_assert_eq(moe_matmul_q(NULL, got, w, t, ROWS, cols[ti], xq, 1), MOE_OK);
		for (int r = 0; r < ROWS; r++)
			cr_assert(qsb_same_float(want[r], got[r]),
			          "%s %s: row %d: %.9g, scalar %.9g", moe_isa_name(level),
			          moe_type_get(t)->name, r, got[r], want[r]);
		free(xq);
		free(w);
	}
}

ISA_SIMD_TESTS(iq4, xs_one_token_long_rows_same_bits, xs_long_rows_same_bits)

/* Several tokens on the same long rows (6: one padded group of 8; 9: a group
 * and a lone token), 37 rows on 2 threads: the AVX-512 tiles' gathered token
 * data then lives on the heap (IQ4_XS past 16 blocks, IQ4_NL / MXFP4 past
 * 256).  The scalar level's bits. */
static void long_rows_tokens_same_bits(moe_isa level)
{
	enum { ROWS = 37, MAXT = 9 };
	const moe_type types[] = {MOE_TYPE_IQ4_XS, MOE_TYPE_IQ4_NL, MOE_TYPE_MXFP4};
	const int64_t cols[] = {256 * 40, 32 * 545, 32 * 545};
	const int toks[] = {6, 9};
	static float want[ROWS * MAXT], got[ROWS * MAXT];
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	rng_state = 4711;
	for (int ti = 0; ti < 3; ti++) {
		const moe_type t = types[ti];
		uint8_t *w = qsb_rand_blocks(t, (int64_t)ROWS * cols[ti], true);
		void *xq = qsb_rand_act(t, MAXT * cols[ti]);
		for (int k = 0; k < 2; k++) {
			const int nt = toks[k];
			cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
			cr_assert_eq(moe_matmul_q(NULL, want, w, t, ROWS, cols[ti], xq, nt),
			             MOE_OK);
			cr_assert_eq(moe_isa_set(level), MOE_OK);
			cr_assert_eq(moe_matmul_q(pool, got, w, t, ROWS, cols[ti], xq, nt), MOE_OK);
			for (int e = 0; e < ROWS * nt; e++)
				cr_assert(qsb_same_float(want[e], got[e]),
				          "%s %s, %d tokens: element %d: %.9g, scalar %.9g",
				          moe_isa_name(level), moe_type_get(t)->name, nt, e, got[e],
				          want[e]);
		}
		free(xq);
		free(w);
	}
	moe_pool_destroy(pool);
}

ISA_SIMD_TESTS(iq4, long_rows_tokens_same_bits, long_rows_tokens_same_bits)

/* ---- extreme values, every tile path ----------------------------------------------- */

/* Activations of t's form (Q8_0 or Q8_K) for n_tok rows of cols values, by
 * hand: every other block all lo, the rest lo, -127, 127 and random bytes
 * in -127..127 mixed; realistic scales, Q8_K's bsums consistent with its
 * values.  moe_quantize_act makes values in -127..127 only (lo = -127); lo =
 * -128 is what vpsignb cannot negate (the AVX2 tiles' sign trick), which the
 * AVX-512 one-token tiles take exactly too. */
static void *extreme_act(moe_type t, int64_t cols, int n_tok, int8_t lo)
{
	const size_t rs = moe_act_row_size(t, cols);
	uint8_t *x = malloc(rs * (size_t)n_tok);
	cr_assert_not_null(x);
	const bool k = t == MOE_TYPE_IQ4_XS;
	const int64_t qk = k ? 256 : 32, nb = cols / qk;
	const size_t bs = k ? 292 : 34, qo = k ? 4 : 2;
	for (int tok = 0; tok < n_tok; tok++)
		for (int64_t b = 0; b < nb; b++) {
			uint8_t *blk = x + rs * (size_t)tok + (size_t)b * bs;
			int8_t *q = (int8_t *)(blk + qo);
			for (int64_t j = 0; j < qk; j++) {
				const uint64_t r = rng_next();
				const int8_t any =
				    (int8_t)(r >> 40) == -128 ? 0 : (int8_t)(r >> 40);
				const int8_t pick[4] = {lo, -127, 127, any};
				q[j] = (b + tok) % 2 == 0 ? lo : pick[(r >> 8) % 4];
			}
			if (k) {
				const float d = 0.01f + (float)(rng_next() % 100) * 1e-4f;
				memcpy(blk, &d, sizeof d);
				for (int g = 0; g < 16; g++) {
					int s = 0;
					for (int j = 0; j < 16; j++)
						s += q[16 * g + j];
					const int16_t v = (int16_t)s;
					memcpy(blk + 4 + 256 + 2 * g, &v, 2);
				}
			} else {
				qsb_put16(blk, qsb_rand_scale16());
			}
		}
	return x;
}

/* n_r x n_tok products of w and x at level against the scalar level's
 * (pool: NULL or 2 threads); returns the elements compared. */
static int extreme_compare(moe_isa level, moe_pool *pool, moe_type t, const uint8_t *w,
                           const uint8_t *x, int64_t cols, int n_r, int n_tok)
{
	float *want = malloc(sizeof(float) * (size_t)(n_r * n_tok));
	float *got = malloc(sizeof(float) * (size_t)(n_r * n_tok));
	cr_assert(want != NULL && got != NULL);
	cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
	cr_assert_eq(moe_matmul_q(NULL, want, w, t, n_r, cols, x, n_tok), MOE_OK);
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	cr_assert_eq(moe_matmul_q(pool, got, w, t, n_r, cols, x, n_tok), MOE_OK);
	for (int e = 0; e < n_r * n_tok; e++)
		cr_assert(qsb_same_float(want[e], got[e]),
		          "%s %s, %lld columns, %d rows x %d tokens, %s: element %d (row %d, "
		          "token %d): %.9g, scalar %.9g",
		          moe_isa_name(level), moe_type_get(t)->name, (long long)cols, n_r, n_tok,
		          pool ? "2 threads" : "1 thread", e, e % n_r, e / n_r, got[e], want[e]);
	free(got);
	free(want);
	return n_r * n_tok;
}

/* Every level's products give the scalar level's bits on extreme operands:
 * activations of -127 and 127 (at the AVX-512 level, one token: also
 * -128), weight blocks of random codes with
 * whole blocks of code 0 (level -127, MXFP4 0) and of code 15 / 7 (113 /
 * 12) among them.  Shapes: 1, 5, 8, 16, 17, 37 rows (the one-token tiles'
 * 8 row runs, full and clamped) x 1 token (the one-token tiles), 9 tokens (a
 * group of 8 and a lone one) and 3 tokens (several-token tiles), on 1 and 2
 * threads; rows of 1, 3 and 25 blocks (IQ4_XS: 1 and 3), so the two-block
 * steps of the IQ4_NL / MXFP4 tiles end both even and odd. */
static void extremes_same_bits(moe_isa level)
{
	static const int rows[] = {1, 5, 8, 16, 17, 37}, toks[] = {1, 9, 3};
	int compared = 0;
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	rng_state = 777;
	for (size_t ti = 0; ti < N_IQ; ti++) {
		const moe_type t = iq_types[ti];
		const bool xs = t == MOE_TYPE_IQ4_XS;
		const int64_t qk = xs ? 256 : 32;
		const int64_t nbs[] = {1, 3, xs ? 3 : 25};
		for (size_t ci = 0; ci < 3; ci++) {
			const int64_t cols = qk * nbs[ci];
			uint8_t *w = qsb_rand_blocks(t, 37 * cols, true);
			const size_t bsz = moe_type_get(t)->type_size;
			const size_t qo = xs ? 8 : t == MOE_TYPE_MXFP4 ? 1 : 2;
			const size_t ql = xs ? 128 : 16;
			for (int64_t b = 0; b < 37 * nbs[ci]; b++)
				if (b % 3 != 2)
					memset(w + (size_t)b * bsz + qo,
					       b % 3 == 0            ? 0x00
					       : t == MOE_TYPE_MXFP4 ? 0x77
					                             : 0xff,
					       ql);
			uint8_t *x = extreme_act(t, cols, 9, -127);
			uint8_t *x128 = extreme_act(t, cols, 1, -128);
			for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++)
				for (int thr = 0; thr < 2; thr++) {
					moe_pool *p = thr ? pool : NULL;
					for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++)
						compared += extreme_compare(level, p, t, w, x, cols,
						                            rows[ri], toks[k]);
					if (level == MOE_ISA_AVX512)
						compared += extreme_compare(level, p, t, w, x128,
						                            cols, rows[ri], 1);
				}
			free(x128);
			free(x);
			free(w);
		}
	}
	moe_pool_destroy(pool);
	cr_assert_gt(compared, 0);
	cr_log_info("%s: %d IQ4/MXFP4 elements on extreme operands equal to the scalar level's",
	            moe_isa_name(level), compared);
}

ISA_SIMD_TESTS(iq4, extremes_same_bits_as_scalar, extremes_same_bits)
