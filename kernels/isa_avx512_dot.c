/* isa_avx512_dot.c - AVX-512 (F/BW/VL/DQ + VNNI) dot products. */
#include <immintrin.h>

#include "kernels/quants.h"

void moe_dots_avx512(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	(void)dots;
}
