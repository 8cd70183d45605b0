/* isa_avx2_dot.c - AVX2 + FMA + F16C dot products. */
#include <immintrin.h>

#include "kernels/quants.h"

void moe_dots_avx2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	(void)dots;
}
