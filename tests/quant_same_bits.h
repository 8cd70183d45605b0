/*
 * quant_same_bits.h - what test_iq2.c, test_iq13.c and test_iq4.c share for
 * their types: random blocks from test_rng.h's generator (sane: a
 * finite scale of the format's kind in each block; else every byte random)
 * and random activations from it, the scalar reference dot against a
 * double-precision dot of the dequantised operands, and the two checks made
 * at every SIMD level: each dot gives the reference's bits on sane and
 * random-byte blocks, and each matrix product the scalar level's bits for
 * every rows x tokens edge (1..11 rows x 1..19 tokens), one token over 37
 * rows, and on 2 threads.  Also the fixtures' opener.
 */
#ifndef MOE_TESTS_QUANT_SAME_BITS_H
#define MOE_TESTS_QUANT_SAME_BITS_H

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/gguf.h"
#include "test_rng.h"

static inline void qsb_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* A random fp16 scale of magnitude 2^-10 .. 2^-4 (sane blocks). */
static inline uint16_t qsb_rand_scale16(void)
{
	uint64_t r = rng_next();
	return (uint16_t)((r & 1) << 15 | (uint16_t)(5 + r % 7) << 10 | ((r >> 8) & 1023));
}

/* IQ1_M keeps its fp16 scale in the top nibbles of its 4 scale words. */
static inline void qsb_put_iq1m_d(uint8_t *blk, uint16_t d)
{
	for (int k = 0; k < 4; k++)
		blk[48 + 2 * k + 1] =
		    (uint8_t)((blk[48 + 2 * k + 1] & 0x0f) | ((d >> (4 * k)) & 15) << 4);
}

/* n values of type t as random blocks (malloc'd): every byte random, then
 * (sane) each block's scale a realistic one: MXFP4's E8M0 2^-15 .. 2^4,
 * IQ1_M's fp16 in its scale words, the others' fp16 d at byte 0. */
static inline void *qsb_rand_blocks(moe_type t, int64_t n, bool sane)
{
	const moe_type_traits *tr = moe_type_get(t);
	const size_t bytes = moe_row_size(t, n);
	uint8_t *b = malloc(bytes);
	cr_assert_not_null(b);
	for (size_t i = 0; i < bytes; i++)
		b[i] = (uint8_t)(rng_next() >> 56);
	if (!sane)
		return b;
	for (int64_t k = 0; k < n / tr->block_size; k++) {
		uint8_t *blk = b + (size_t)k * tr->type_size;
		if (t == MOE_TYPE_MXFP4)
			blk[0] = (uint8_t)(112 + rng_next() % 20);
		else if (t == MOE_TYPE_IQ1_M)
			qsb_put_iq1m_d(blk, qsb_rand_scale16());
		else
			qsb_put16(blk, qsb_rand_scale16());
	}
	return b;
}

/* n random activations quantised to t's activation form (malloc'd). */
static inline void *qsb_rand_act(moe_type t, int64_t n)
{
	float *x = malloc(sizeof(float) * (size_t)n);
	void *q = malloc(moe_act_row_size(t, n));
	cr_assert(x != NULL && q != NULL);
	for (int64_t i = 0; i < n; i++)
		x[i] = rng_unif() * (1.0f + (float)((i / 64) % 5));
	cr_assert_eq(moe_quantize_act(t, q, x, n), MOE_OK);
	free(x);
	return q;
}

/* The fixture file name of tests/fixtures (MOE_FIXTURES), open. */
static inline moe_gguf *qsb_open_fixture(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");
	char path[1024];
	moe_gguf *g = NULL;

	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(moe_gguf_open(&g, path), MOE_OK, "%s: %s", path, moe_err_detail());
	return g;
}

/* Every type's scalar reference dot against sum(dequant(w) * dequant(a)) in
 * double over the lengths (those that are whole blocks; sane blocks, the
 * generator seeded per case): integer parts exact, then the float rounding
 * of the scale products and the running sum (as test_dot's bound).  Returns
 * how many it checked. */
static inline int qsb_reference_double(const moe_type *types, size_t n_types,
                                       const int64_t *lengths, size_t n_lengths)
{
	int checked = 0;
	for (size_t ti = 0; ti < n_types; ti++) {
		const moe_type t = types[ti];
		const moe_type_traits *tr = moe_type_get(t);
		for (size_t li = 0; li < n_lengths; li++) {
			const int64_t n = lengths[li];
			if (moe_row_size(t, n) == 0)
				continue;
			rng_state = 100 + ti * 10 + li;
			void *w = qsb_rand_blocks(t, n, true), *a = qsb_rand_act(t, n);
			float *wd = malloc(sizeof(float) * (size_t)n),
			      *ad = malloc(sizeof(float) * (size_t)n);
			cr_assert(wd != NULL && ad != NULL);
			cr_assert_eq(moe_dequantize_row(t, wd, w, n), MOE_OK);
			cr_assert_eq(moe_dequantize_row(tr->vec_dot_type, ad, a, n), MOE_OK);
			double exact = 0, mag = 0;
			for (int64_t i = 0; i < n; i++) {
				exact += (double)wd[i] * ad[i];
				mag += fabs((double)wd[i] * ad[i]);
			}
			float s = NAN;
			moe_vec_dot_get_isa(t, MOE_ISA_SCALAR)(n, &s, w, a);
			cr_assert(fabs(s - exact) <= 4e-6 * mag + 1e-30,
			          "%s n=%lld: %.9g vs %.9g (mag %.3g)", tr->name, (long long)n, s,
			          exact, mag);
			checked++;
			free(ad), free(wd), free(a), free(w);
		}
	}
	return checked;
}

static inline bool qsb_same_float(float a, float b)
{
	return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

/* Every type's dot at level against its scalar reference over the lengths
 * (need_simd: the level must have a kernel of its own); the generator is
 * seeded per case. */
static inline void qsb_dots(moe_isa level, const moe_type *types, size_t n_types,
                            const int64_t *lengths, size_t n_lengths, bool need_simd,
                            const char *what)
{
	int checked = 0;
	for (size_t ti = 0; ti < n_types; ti++) {
		const moe_type t = types[ti];
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		moe_vec_dot_fn fn = moe_vec_dot_get_isa(t, level);
		cr_assert(ref != NULL && fn != NULL);
		cr_assert(!need_simd || fn != ref, "%s: no SIMD dot at %s", moe_type_get(t)->name,
		          moe_isa_name(level));
		for (size_t li = 0; li < n_lengths; li++)
			for (int sane = 0; sane < 2; sane++) {
				const int64_t n = lengths[li];
				if (moe_row_size(t, n) == 0)
					continue;
				rng_state = 900 + ti * 100 + li * 2 + (uint64_t)sane;
				void *w = qsb_rand_blocks(t, n, sane), *a = qsb_rand_act(t, n);
				float want = 0, got = 1;
				ref(n, &want, w, a);
				fn(n, &got, w, a);
				cr_assert(qsb_same_float(want, got),
				          "%s %s n=%lld %s: %.9g vs ref %.9g", moe_isa_name(level),
				          moe_type_get(t)->name, (long long)n,
				          sane ? "sane" : "random bytes", got, want);
				checked++;
				free(a), free(w);
			}
	}
	cr_assert_gt(checked, 0);
	cr_log_info("%s: %d %s dots equal to the reference", moe_isa_name(level), checked, what);
}

/* Every type's moe_matmul_q at level against the scalar level's, rows of
 * cols values (a multiple of the types' blocks). */
static inline void qsb_matmul(moe_isa level, const moe_type *types, size_t n_types, int64_t cols,
                              const char *what)
{
	enum { MAXR = 11, MAXT = 19, LONG_R = 37 };
	int compared = 0;
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	for (size_t ti = 0; ti < n_types; ti++)
		for (int sane = 1; sane >= 0; sane--) {
			const moe_type t = types[ti];
			rng_state = 5000 + ti * 2 + (uint64_t)sane;
			uint8_t *w = qsb_rand_blocks(t, (int64_t)LONG_R * cols, sane);
			uint8_t *xq = qsb_rand_act(t, (int64_t)MAXT * cols);
			const size_t rs = moe_row_size(t, cols), as = moe_act_row_size(t, cols);
			static float want[MAXT * LONG_R], got[MAXT * LONG_R];
			for (int nr = 1; nr <= LONG_R; nr = nr < MAXR    ? nr + 1
			                                    : nr == MAXR ? LONG_R
			                                                 : LONG_R + 1)
				for (int nt = 1; nt <= MAXT; nt = nr <= MAXR ? nt + 1 : nt + 9) {
					const int r0 = LONG_R - nr, t0 = MAXT - nt;
					cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
					cr_assert_eq(moe_matmul_q(NULL, want, w + r0 * rs, t, nr,
					                          cols, xq + t0 * as, nt),
					             MOE_OK);
					cr_assert_eq(moe_isa_set(level), MOE_OK);
					cr_assert_eq(moe_matmul_q(nr > MAXR ? pool : NULL, got,
					                          w + r0 * rs, t, nr, cols,
					                          xq + t0 * as, nt),
					             MOE_OK);
					for (int k = 0; k < nr * nt; k++)
						cr_assert(
						    qsb_same_float(want[k], got[k]),
						    "%s %s %s: %d rows x %d tokens, element %d: "
						    "%.9g, scalar %.9g",
						    moe_isa_name(level), moe_type_get(t)->name,
						    sane ? "sane" : "random bytes", nr, nt, k,
						    got[k], want[k]);
					compared += nr * nt;
				}
			free(xq);
			free(w);
		}
	moe_pool_destroy(pool);
	cr_assert_gt(compared, 0);
	cr_log_info("%s: %d %s elements equal to the scalar level's", moe_isa_name(level), compared,
	            what);
}

#endif
