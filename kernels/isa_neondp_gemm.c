/*
 * isa_neondp_gemm.c - the NEON tile kernels of isa_neon_gemm.c, built a
 * second time with +dotprod so that their int8 products use SDOT
 * (vdotq_s32).  dispatch.c hands these out only when the kernel reports
 * HWCAP_ASIMDDP; both builds give the same bits (see isa_neon_gemm.c).
 */
#define MOE_NEON_DOTPROD 1
#include "isa_neon_gemm.c"
