/*
 * isa_neondp_iq4.c - the IQ4_NL / IQ4_XS / MXFP4 NEON tiles of
 * isa_neon_iq4.c, built a second time with +dotprod so that their int8
 * products use SDOT (same bits as the base build; the dots are built once,
 * in the base file).
 */
#define MOE_NEON_DOTPROD 1
#include "isa_neon_iq4.c"
