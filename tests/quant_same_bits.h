/*
 * quant_same_bits.h - the two checks test_iq2.c, test_iq13.c and test_iq4.c
 * make of their types at every SIMD level: each dot gives the reference's
 * bits on sane and random-byte blocks, and each matrix product the scalar
 * level's bits for every rows x tokens edge (1..11 rows x 1..19 tokens),
 * one token over 37 rows, and on 2 threads.  The caller supplies its blocks
 * (sane: finite scales; else random bytes) and activations, both malloc'd,
 * from its generator, whose state this header seeds.
 */
#ifndef MOE_TESTS_QUANT_SAME_BITS_H
#define MOE_TESTS_QUANT_SAME_BITS_H

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

typedef void *(*qsb_blocks_fn)(moe_type t, int64_t n, bool sane);
typedef void *(*qsb_act_fn)(moe_type t, int64_t n);

static inline bool qsb_same_float(float a, float b)
{
	return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

/* Every type's dot at level against its scalar reference over the lengths
 * (need_simd: the level must have a kernel of its own); *rng is seeded per
 * case. */
static inline void qsb_dots(moe_isa level, const moe_type *types, size_t n_types,
                            const int64_t *lengths, size_t n_lengths, bool need_simd,
                            qsb_blocks_fn blocks, qsb_act_fn act, uint64_t *rng, const char *what)
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
				*rng = 900 + ti * 100 + li * 2 + (uint64_t)sane;
				void *w = blocks(t, n, sane), *a = act(t, n);
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
                              qsb_blocks_fn blocks, qsb_act_fn act, uint64_t *rng, const char *what)
{
	enum { MAXR = 11, MAXT = 19, LONG_R = 37 };
	int compared = 0;
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	for (size_t ti = 0; ti < n_types; ti++)
		for (int sane = 1; sane >= 0; sane--) {
			const moe_type t = types[ti];
			*rng = 5000 + ti * 2 + (uint64_t)sane;
			uint8_t *w = blocks(t, (int64_t)LONG_R * cols, sane);
			uint8_t *xq = act(t, (int64_t)MAXT * cols);
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
