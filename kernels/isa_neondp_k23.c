/*
 * isa_neondp_k23.c - the Q2_K / Q3_K NEON dots and tiles of isa_neon_k23.c,
 * built a second time with +dotprod so that their int8 products use SDOT;
 * installed with the rest of the dotprod table and tiles (same bits as the
 * base build).
 */
#define MOE_NEON_DOTPROD 1
#include "isa_neon_k23.c"
