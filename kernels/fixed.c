/*
 * fixed.c - the exact accumulator: 64-bit fixed point, 32 fractional bits.
 *
 * A moe_fix_t v stands for the real number v * 2^-32.  Conversion from f32
 * rounds to nearest, ties away from zero (decided on the exact product
 * v * 2^32, so it does not depend on the FPU rounding mode), and saturates to
 * +-MOE_FIX_MAX (= 2^55, i.e. +-2^23 = +-8388608.0): NaN converts to 0.
 * Keeping converted values at or below 2^55 in magnitude leaves 8 bits of
 * headroom, so a plain int64 sum of up to 256 converted values cannot
 * overflow; integer addition is associative and commutative, so such a sum is
 * the same bits in any order and any grouping (which worker added what).
 *
 * Back to f32: one correctly rounded int64 -> float conversion, then an exact
 * scaling by 2^-32.
 */
#include <math.h>

#include "kernels/kernels.h"

moe_fix_t moe_fix_from_f32(float v)
{
	/* exact: a float has 24 significant bits, scaling by 2^32 is exact in
	 * double and t, f below are exact too */
	double d = (double)v * 0x1p32;

	if (isnan(d))
		return 0;
	if (d >= (double)MOE_FIX_MAX)
		return MOE_FIX_MAX;
	if (d <= -(double)MOE_FIX_MAX)
		return -MOE_FIX_MAX;
	double t = trunc(d);
	double f = d - t;
	int64_t r = (int64_t)t;
	if (f >= 0.5)
		r++;
	else if (f <= -0.5)
		r--;
	return r;
}

float moe_fix_to_f32(moe_fix_t v)
{
	return (float)v * 0x1p-32f;
}
