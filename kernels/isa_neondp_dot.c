/*
 * isa_neondp_dot.c - the NEON dot products of isa_neon_dot.c, built a second
 * time with +dotprod so that their int8 products use SDOT (vdotq_s32).
 * dispatch.c installs this table over the base NEON one only when the kernel
 * reports HWCAP_ASIMDDP; both give the same bits (see isa_neon_dot.c).
 */
#define MOE_NEON_DOTPROD 1
#include "isa_neon_dot.c"
