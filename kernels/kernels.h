/*
 * kernels.h - the numeric floor of moemesh: GGUF/ggml block formats, their
 * (de)quantisation, dot products, GEMV/GEMM on a persistent thread pool and the
 * grouped expert FFN.  Depends on core/ only.
 *
 * Every op has a scalar reference (`_ref`) and SIMD versions (AVX2+FMA,
 * AVX-512, NEON) in per-ISA files, chosen once at start-up from CPUID through a
 * dispatch table indexed by type; MOEMESH_ISA=scalar|avx2|avx512|neon forces a
 * level.
 *
 * Shapes follow ggml: a weight matrix with ne = [n_cols, n_rows] holds n_rows
 * rows of n_cols values; y = W x.  Activations are quantised per row to the
 * weight type's `vec_dot_type` (Q8_0 for the 32-blocks, Q8_K for the K-quants,
 * F32 for float weights) like llama.cpp's CPU backend does.
 *
 * Exact accumulation: expert outputs are summed as 64-bit fixed point
 * (moe_fix_t, MOE_FIX_FRAC_BITS fractional bits) so the sum does not depend on
 * order: the single-process and the distributed path give identical bits.
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ggml type ids, exactly as stored in GGUF tensor infos. */
typedef enum moe_type {
	MOE_TYPE_F32 = 0,
	MOE_TYPE_F16 = 1,
	MOE_TYPE_Q4_0 = 2,
	MOE_TYPE_Q4_1 = 3,
	MOE_TYPE_Q5_0 = 6,
	MOE_TYPE_Q5_1 = 7,
	MOE_TYPE_Q8_0 = 8,
	MOE_TYPE_Q8_1 = 9,
	MOE_TYPE_Q2_K = 10,
	MOE_TYPE_Q3_K = 11,
	MOE_TYPE_Q4_K = 12,
	MOE_TYPE_Q5_K = 13,
	MOE_TYPE_Q6_K = 14,
	MOE_TYPE_Q8_K = 15,
	MOE_TYPE_IQ2_XXS = 16,
	MOE_TYPE_IQ2_XS = 17,
	MOE_TYPE_IQ3_XXS = 18,
	MOE_TYPE_IQ1_S = 19,
	MOE_TYPE_IQ4_NL = 20,
	MOE_TYPE_IQ3_S = 21,
	MOE_TYPE_IQ2_S = 22,
	MOE_TYPE_IQ4_XS = 23,
	MOE_TYPE_I8 = 24,
	MOE_TYPE_I16 = 25,
	MOE_TYPE_I32 = 26,
	MOE_TYPE_I64 = 27,
	MOE_TYPE_F64 = 28,
	MOE_TYPE_IQ1_M = 29,
	MOE_TYPE_BF16 = 30,
	MOE_TYPE_TQ1_0 = 34,
	MOE_TYPE_TQ2_0 = 35,
	MOE_TYPE_MXFP4 = 39,
	MOE_TYPE_COUNT = 40
} moe_type;

/* What is known about a type. Every ggml type has a name, block size and
 * block bytes (so files with any type can be inspected and validated);
 * `compute` says whether this build can dequantise it and dot it. */
typedef struct moe_type_traits {
	const char *name;      /* "Q4_K"; NULL for ids that are not types */
	int64_t block_size;    /* values per block (1 for F32/F16/BF16) */
	size_t type_size;      /* bytes per block */
	bool compute;          /* dequantise + dot implemented */
	moe_type vec_dot_type; /* activation format its dot product takes */
} moe_type_traits;

/* Returns the traits of t, or NULL if t is not a ggml type id. */
const moe_type_traits *moe_type_get(moe_type t);

/* Bytes of a row of n values of type t; 0 if t is unknown or n is not a
 * multiple of its block size. */
size_t moe_row_size(moe_type t, int64_t n);

#endif
