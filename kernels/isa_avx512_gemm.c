/* isa_avx512_gemm.c - tile kernels (gemm.h) built with the avx512 flags. */
#include "kernels/gemm.h"

moe_gemm_fn moe_gemm_avx512(moe_type t)
{
	switch (t) {
	default:
		return NULL;
	}
}
