/* isa_avx2_gemm.c - tile kernels (gemm.h) built with the avx2 flags. */
#include "kernels/gemm.h"

moe_gemm_fn moe_gemm_avx2(moe_type t)
{
	switch (t) {
	default:
		return NULL;
	}
}
