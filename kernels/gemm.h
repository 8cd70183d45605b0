/*
 * gemm.h - private to kernels/: the tiled matrix-product micro-kernels behind
 * moe_matmul_q and the grouped expert FFN.
 *
 * A tile kernel computes y[t*ldy + r] = dot(weight row r, activation row t)
 * for r < n_r, t < n_t. Contract that makes every product batch-invariant:
 * the bits of y[t*ldy + r] depend only on weight row r and activation row t,
 * never on n_r, n_t, the position of the row or token in the tile, or on
 * which kernel variant (full tile or edge) computed it.
 */
#ifndef MOE_KERNELS_GEMM_H
#define MOE_KERNELS_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef void (*moe_gemm_fn)(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                            size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride,
                            int64_t n_t);

/* The tile kernel of weight type t for the active ISA level, or NULL where
 * there is none (the caller then uses moe_vec_dot_get(t) per element). */
moe_gemm_fn moe_gemm_get(moe_type t);

/* Per-ISA lookups: the level's tile kernel for type t, or NULL.  The
 * AVX-512 level lists every type the AVX2 level tiles (some of its entries
 * call the AVX2 tiles): a type it missed would fall back to the per-element
 * dot, whose bits test_matmul's every-level comparison would catch. */
moe_gemm_fn moe_gemm_avx512(moe_type t);
moe_gemm_fn moe_gemm_avx2(moe_type t);
moe_gemm_fn moe_gemm_avx2_iq4(moe_type t);   /* IQ4_NL, IQ4_XS, MXFP4 (isa_avx2_iq4.c) */
moe_gemm_fn moe_gemm_avx512_iq4(moe_type t); /* the same at the AVX-512 level (isa_avx512_iq4.c) */
moe_gemm_fn moe_gemm_avx2_iq13(moe_type t);  /* IQ3_XXS, IQ3_S, IQ1_S, IQ1_M (isa_avx2_iq13.c) */
/* the same at the AVX-512 level (isa_avx512_iq13.c; the AVX2 ones without VBMI/BITALG) */
moe_gemm_fn moe_gemm_avx512_iq13(moe_type t);
moe_gemm_fn moe_gemm_avx2_iq2(moe_type t); /* IQ2_XXS, IQ2_XS, IQ2_S (isa_avx2_iq2.c) */
/* The same at the AVX-512 level (isa_avx512_iq2.c; the AVX2 ones without VBMI/BITALG) */
moe_gemm_fn moe_gemm_avx512_iq2(moe_type t);
/* The NEON tiles (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, Q5_0, and through the
 * lookups below Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4): isa_neon_gemm.c for
 * base Armv8-A, built again with SDOT as isa_neondp_gemm.c (same bits);
 * moe_gemm_neon_level (dispatch.c, aarch64 Linux) is the one of the two
 * this CPU runs. */
moe_gemm_fn moe_gemm_neon(moe_type t);
moe_gemm_fn moe_gemm_neon_dotprod(moe_type t);
moe_gemm_fn moe_gemm_neon_level(moe_type t);
/* The NEON Q2_K / Q3_K tiles (isa_neon_k23.c, isa_neondp_k23.c), listed by
 * moe_gemm_neon / moe_gemm_neon_dotprod of the same build. */
moe_gemm_fn moe_gemm_neon_k23(moe_type t);
moe_gemm_fn moe_gemm_neon_dotprod_k23(moe_type t);
/* The NEON IQ4_NL / IQ4_XS / MXFP4 tiles (isa_neon_iq4.c, isa_neondp_iq4.c),
 * likewise. */
moe_gemm_fn moe_gemm_neon_iq4(moe_type t);
moe_gemm_fn moe_gemm_neon_dotprod_iq4(moe_type t);
/* The Q2_K / Q3_K tiles (isa_avx2_k23.c), listed by both x86 levels. */
void moe_gemm_q2_K_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t);
void moe_gemm_q3_K_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                        int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t);

/* One Q8_K token block rearranged for the lanes kernels (repack_k23.c): qs
 * in the weights' lanes order (byte b of vector v = the block's value
 * moe_lanes_value(v, b)), the bsums and 4 x the bsums (Q3_K's -4 offset). */
typedef struct moe_q8_K_lanes {
	float d;
	int8_t qs[256];
	int16_t bsums[16];
	int16_t bsums4[16];
} moe_q8_K_lanes;

/* The AVX2 lanes kernels (isa_avx2_k23.c, taken by the AVX-512 level too):
 * prep = the token's nb = n_cols / 256 blocks rearranged from the Q8_K row a;
 * y[t * ldy + r] = repacked row r (stride w_stride) against token t (prep +
 * t * nb), r < n_r, t < n_t, with the bits of moe_matmul_q on the rows
 * before repacking (one token: four rows per pass; several: groups of 8, 4,
 * 2, 1 tokens over every row, the quants unpacked once per group). */
void moe_prep_q8_K_lanes_avx2(moe_q8_K_lanes *prep, const uint8_t *a, int64_t nb);
void moe_gemm_q2_K_lanes_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                              size_t w_stride, int64_t n_r, const moe_q8_K_lanes *prep,
                              int64_t n_t);
void moe_gemm_q3_K_lanes_avx2(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                              size_t w_stride, int64_t n_r, const moe_q8_K_lanes *prep,
                              int64_t n_t);

/* moe_gemm_rows on rows repacked by moe_repack_rows (Q2_K, Q3_K): the same
 * bits as moe_gemm_rows on the rows before repacking. */
moe_err moe_gemm_rows_repacked(float *y, int64_t ldy, const void *w, moe_type t, int64_t r0,
                               int64_t r1, int64_t n_cols, const void *xq, int64_t n_tok);

/* Single-threaded: y[t*ldy + (r - r0)] = row r . token t for r in [r0, r1)
 * and t < n_tok; w points at row 0. The same per-element arithmetic as
 * moe_matmul_q. */
moe_err moe_gemm_rows(float *y, int64_t ldy, const void *w, moe_type wt, int64_t r0, int64_t r1,
                      int64_t n_cols, const void *xq, int64_t n_tok);

#endif
