/* test_expert_ffn.c - the exact accumulator and the grouped expert FFN. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* ---- fixed point ---------------------------------------------------------- */

Test(fix, exact_values_convert_exactly)
{
	cr_assert_eq(moe_fix_from_f32(0.0f), 0);
	cr_assert_eq(moe_fix_from_f32(-0.0f), 0);
	cr_assert_eq(moe_fix_from_f32(1.0f), (int64_t)1 << 32);
	cr_assert_eq(moe_fix_from_f32(-1.0f), -((int64_t)1 << 32));
	cr_assert_eq(moe_fix_from_f32(0.5f), (int64_t)1 << 31);
	cr_assert_eq(moe_fix_from_f32(1.5f), (int64_t)3 << 31);
	cr_assert_eq(moe_fix_from_f32(0x1p-32f), 1);
	cr_assert_eq(moe_fix_from_f32(-0x1p-32f), -1);
	cr_assert_eq(moe_fix_from_f32(12345.0f), (int64_t)12345 << 32);
	/* 3 * 2^-34 = 0.75 units: rounds to 1 */
	cr_assert_eq(moe_fix_from_f32(3 * 0x1p-34f), 1);
	for (int i = -1000; i <= 1000; i++) {
		float v = (float)i * 0.0078125f; /* multiples of 2^-7: exact */
		cr_assert_eq(moe_fix_to_f32(moe_fix_from_f32(v)), v);
	}
}

Test(fix, rounds_to_nearest_ties_away_from_zero)
{
	cr_assert_eq(moe_fix_from_f32(0x1p-33f), 1);   /* 0.5 unit */
	cr_assert_eq(moe_fix_from_f32(-0x1p-33f), -1); /* -0.5 unit */
	cr_assert_eq(moe_fix_from_f32(0x1p-34f), 0);   /* 0.25 unit */
	cr_assert_eq(moe_fix_from_f32(-0x1p-34f), 0);
	cr_assert_eq(moe_fix_from_f32(3 * 0x1p-33f), 2);   /* 1.5 units */
	cr_assert_eq(moe_fix_from_f32(5 * 0x1p-33f), 3);   /* 2.5 units */
	cr_assert_eq(moe_fix_from_f32(-5 * 0x1p-33f), -3); /* -2.5 units */
	cr_assert_eq(moe_fix_from_f32(1e-12f), 0);
	/* 1 + 2^-23 has its last bit at 2^-23: still exact */
	float v = 1.0f + 0x1p-23f;
	cr_assert_eq(moe_fix_from_f32(v), ((int64_t)1 << 32) + ((int64_t)1 << 9));
}

Test(fix, saturates_and_maps_nan_to_zero)
{
	cr_assert_eq(MOE_FIX_MAX, (int64_t)1 << 55);
	cr_assert_eq(moe_fix_from_f32(8388608.0f), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(1e30f), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(-1e30f), -MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(INFINITY), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(-INFINITY), -MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(NAN), 0);
	cr_assert_eq(moe_fix_from_f32(8388607.5f), (int64_t)16777215 << 31);
	/* the headroom: MOE_FIX_MAX_TERMS saturated values sum without overflow */
	moe_fix_t s = 0;
	for (int i = 0; i < MOE_FIX_MAX_TERMS - 1; i++)
		s += moe_fix_from_f32(1e30f);
	cr_assert_gt(s, 0);
	cr_assert_eq(moe_fix_to_f32(MOE_FIX_MAX), 8388608.0f);
	cr_assert_eq(moe_fix_to_f32(-MOE_FIX_MAX), -8388608.0f);
}

Test(fix, to_f32_is_correctly_rounded)
{
	/* (2^24 + 1) units: exact value 2^-8 + 2^-32 is not a float; the
	 * nearest is 2^-8 (the tie rounds to even) */
	cr_assert_eq(moe_fix_to_f32(((int64_t)1 << 24) + 1), 0x1p-8f);
	/* 2^24 + 3 units: nearest is (2^24 + 4) units */
	cr_assert_eq(moe_fix_to_f32(((int64_t)1 << 24) + 3),
	             (float)(((int64_t)1 << 24) + 4) * 0x1p-32f);
	cr_assert_eq(moe_fix_to_f32(-1), -0x1p-32f);
}

Test(fix, sums_are_order_independent)
{
	enum { N = 1000 };
	moe_fix_t v[N];
	uint32_t s = 12345;
	for (int i = 0; i < N; i++) {
		s = s * 1664525u + 1013904223u;
		float f = ((float)(s >> 8) / 16777216.0f - 0.5f) * (float)(1 << (i % 20));
		v[i] = moe_fix_from_f32(f);
	}
	moe_fix_t fwd = 0, bwd = 0, strided = 0;
	for (int i = 0; i < N; i++)
		fwd += v[i];
	for (int i = N - 1; i >= 0; i--)
		bwd += v[i];
	for (int k = 0; k < 7; k++)
		for (int i = k; i < N; i += 7)
			strided += v[i];
	cr_assert_eq(fwd, bwd);
	cr_assert_eq(fwd, strided);
}
