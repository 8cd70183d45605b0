/*
 * kernels.h - the numeric floor of moemesh: GGUF/ggml block formats, their
 * (de)quantisation, dot products, GEMV/GEMM on a persistent thread pool and the
 * grouped expert FFN.  Depends on core/ only.
 *
 * Every op has a scalar reference (`_ref`) and SIMD versions (AVX2+FMA,
 * AVX-512, NEON) in per-ISA files, chosen once at start-up from CPUID (x86) or
 * getauxval(AT_HWCAP) (aarch64) through a
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

/* ---- ISA selection ---------------------------------------------------------- */

typedef enum moe_isa {
	MOE_ISA_SCALAR = 0,
	MOE_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
	MOE_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI (+ BF16 where present) */
	MOE_ISA_NEON = 3,   /* aarch64 Advanced SIMD; int8 dots use SDOT where the
	                       CPU has dotprod (HWCAP_ASIMDDP), same results */
} moe_isa;

/* The level in use: the best the CPU supports, or MOEMESH_ISA if set (a level
 * the CPU lacks falls back to the best it has, with a warning on stderr). */
moe_isa moe_isa_active(void);
const char *moe_isa_name(moe_isa isa);
/* Forces a level for this process (tests); returns MOE_ERR_UNSUPPORTED if the
 * CPU cannot run it. Not thread-safe against running kernels. */
moe_err moe_isa_set(moe_isa isa);
/* Whether this CPU (and OS) can run isa. */
bool moe_isa_supported(moe_isa isa);

/* ---- rows: conversion, (de)quantisation ------------------------------------ */

/* dst[0..n) = values of src (n values of type t). MOE_ERR_BAD_TYPE if t is not
 * a type, MOE_ERR_UNSUPPORTED if it cannot be dequantised (compute false;
 * Q8_1 and Q8_K can), MOE_ERR_INVAL if n is not a multiple of the block. */
moe_err moe_dequantize_row(moe_type t, float *dst, const void *src, int64_t n);

/* Quantises n floats into type t blocks (moe_row_size(t, n) bytes).
 * Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K,
 * Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4 (the same algorithms as ggml's reference
 * quantizers, which llama-quantize uses without an imatrix: byte-identical
 * output), Q8_K and Q8_1 (activation
 * semantics, below).  Errors: MOE_ERR_BAD_TYPE / MOE_ERR_UNSUPPORTED /
 * MOE_ERR_INVAL as above; MOE_ERR_BAD_VALUE if a quantised type is asked of
 * input with NaN or Inf. */
moe_err moe_quantize_row(moe_type t, void *dst, const float *src, int64_t n);

/* Activation rows: the form a weight of type wt takes its input in
 * (moe_type_get(wt)->vec_dot_type), made exactly as llama.cpp's x86 CPU
 * backend makes it:
 *   Q8_0: d = amax/127 (fp16), q = round-half-even(x * (127/amax))
 *   Q8_1: the same, plus s = fp16(d * sum q)
 *   Q8_K: m = signed value of largest magnitude, q = min(127, rne(-127/m * x)),
 *         d = 1/(-127/m) (f32), bsums = sums of 16
 *   F32:  a copy.
 * moe_act_row_size returns 0 if wt has no dot product or n does not fit its
 * blocks; moe_quantize_act fails like moe_quantize_row. */
size_t moe_act_row_size(moe_type wt, int64_t n);
moe_err moe_quantize_act(moe_type wt, void *dst, const float *src, int64_t n);

/* s = dot(w, a) over n values: w a row of type t, a a row of
 * moe_type_get(t)->vec_dot_type (from moe_quantize_act). The function for the
 * active ISA, or NULL if t has no dot product. */
typedef void (*moe_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);
moe_vec_dot_fn moe_vec_dot_get(moe_type t);
/* The same for a given level (tests, benchmarks); NULL if t has no dot
 * product or the CPU cannot run isa.  Types without a SIMD version at that
 * level get the scalar reference. */
moe_vec_dot_fn moe_vec_dot_get_isa(moe_type t, moe_isa isa);

/* ---- thread pool ------------------------------------------------------------- */

typedef struct moe_pool moe_pool;

/* Starts n_threads - 1 workers (the caller is thread 0); n_threads <= 0 means
 * one per online CPU. */
moe_err moe_pool_create(moe_pool **out, int n_threads);
void moe_pool_destroy(moe_pool *pool); /* NULL is a no-op */
int moe_pool_threads(const moe_pool *pool);

/* Runs fn(arg, ith, nth) once for every ith = 0..nth-1 (nth = the pool's
 * thread count) and returns when all are done. Indices are claimed by
 * whichever pool thread is free, the caller included, so one thread may run
 * several of them, in any order: fn must not wait for another index. Not
 * reentrant. */
void moe_pool_run(moe_pool *pool, void (*fn)(void *arg, int ith, int nth), void *arg);

/* ---- float vector ops -------------------------------------------------------- */

/* The model's dense float loops (attention, DeltaNet), per ISA level.  Every
 * level gives the scalar references' bits (same operations lane for lane,
 * multiplies and adds never fused, the dot in 8 partial sums and a fixed
 * tree), so these results do not depend on the CPU. */
typedef struct moe_vec_ops {
	float (*dot)(const float *a, const float *b, int64_t n); /* sum a[i] * b[i] */
	/* for r < m: y[r * y_stride] = dot(a + r * a_stride, b, n), the same bits
	 * as m dot calls (rows in independent sums: one b, many rows at once) */
	void (*dot_rows)(float *y, int64_t y_stride, const float *a, int64_t a_stride, int64_t m,
	                 const float *b, int64_t n);
	void (*axpy)(float *y, float a, const float *x, int64_t n); /* y[i] += a * x[i] */
	void (*scale)(float *y, float a, int64_t n);                /* y[i] *= a */
	void (*f16_to_f32)(float *y, const uint16_t *x, int64_t n); /* exact */
	/* for i < m in order: y[j] += a[i] * x[i * x_stride + j], j < n (y kept
	 * in registers across the m rows: the same sums as m axpy calls) */
	void (*axpy_rows)(float *y, const float *a, const float *x, int64_t x_stride, int64_t m,
	                  int64_t n);
	/* acc[i] += moe_fix_from_f32(w * x[i]), the product in f32 */
	void (*fix_axpy)(int64_t *acc, float w, const float *x, int64_t n);
	/* y[0..n) = the values of n / 32 Q8_0 (d * q) or Q4_0 (d * (q - 8))
	 * blocks at x, n a multiple of 32; exact (an fp16 scale times an
	 * integer of at most 8 bits is an f32) */
	void (*q8_0_to_f32)(float *y, const void *x, int64_t n);
	void (*q4_0_to_f32)(float *y, const void *x, int64_t n);
} moe_vec_ops;

/* The active level's ops (never NULL; fetch once per loop, not per call). */
const moe_vec_ops *moe_vec_ops_get(void);
/* Level isa's ops, or NULL if this CPU cannot run it (tests). */
const moe_vec_ops *moe_vec_ops_get_isa(moe_isa isa);

/* ---- matrix products ---------------------------------------------------------- */

/* y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tok, r < n_rows.
 *   w: n_rows rows of n_cols values of type wt (row stride moe_row_size)
 *   x: f32 [n_tok][n_cols];  y: f32 [n_tok][n_rows]
 * Activations are quantised per row as moe_quantize_act does. Batch-invariant:
 * row t of y is bit-identical whatever n_tok and the other rows are, and
 * whatever the thread count. pool may be NULL (single thread). */
moe_err moe_matmul(moe_pool *pool, float *y, const void *w, moe_type wt, int64_t n_rows,
                   int64_t n_cols, const float *x, int64_t n_tok);

/* The same with activations already in wt's activation form:
 *   xq: n_tok rows of moe_act_row_size(wt, n_cols) bytes. */
moe_err moe_matmul_q(moe_pool *pool, float *y, const void *w, moe_type wt, int64_t n_rows,
                     int64_t n_cols, const void *xq, int64_t n_tok);

/* Quantises n_tok rows of n_cols floats (x: f32 [n_tok][n_cols]) to wt's
 * activation form, dst: n_tok rows of moe_act_row_size(wt, n_cols) bytes, as
 * moe_quantize_act does row by row (so the bits do not depend on n_tok or the
 * pool). Errors as moe_quantize_act; dst is then partly written. */
moe_err moe_quantize_act_rows(moe_pool *pool, void *dst, moe_type wt, const float *x,
                              int64_t n_cols, int64_t n_tok);

/* ---- load-time repacking (Q2_K, Q3_K one-token GEMV) ------------------------------
 *
 * Q2_K and Q3_K rows repacked once into the "lanes" layouts (quants.h,
 * kernels/repack_k23.c) run the one-token product faster at the AVX2 and
 * AVX-512 levels (sub-blocks in int16 lanes: the scales met once per block),
 * with the same bits as moe_matmul_q on the rows as they were.  A repacked
 * row has the size of the stored one (a row can be repacked in place). */

/* Bytes of one repacked row of n_cols values of type t; 0 when t has no
 * repacked layout (every type but Q2_K and Q3_K) or n_cols is not a positive
 * multiple of 256. */
size_t moe_repack_row_size(moe_type t, int64_t n_cols);

/* dst (n_rows * moe_repack_row_size(t, n_cols) bytes) = the n_rows rows of t
 * at src (moe_row_size(t, n_cols) bytes each) in the lanes layout.  Any block
 * bytes are accepted (every bit pattern is a block); dst may be src (in
 * place).  Errors:
 * MOE_ERR_UNSUPPORTED (t has no lanes layout), MOE_ERR_BAD_SHAPE,
 * MOE_ERR_INVAL (NULL).  Threads: reads src, writes dst only. */
moe_err moe_repack_rows(void *dst, const void *src, moe_type t, int64_t n_rows, int64_t n_cols);

/* The inverse of moe_repack_rows: dst = the rows in t's own layout, byte for
 * byte what moe_repack_rows took.  Errors and threads as moe_repack_rows. */
moe_err moe_unrepack_rows(void *dst, const void *src, moe_type t, int64_t n_rows, int64_t n_cols);

/* y[t][r] = repacked row r of w (moe_repack_rows of type t) against token t
 * of xq (n_tok rows of moe_act_row_size(t, n_cols) bytes from
 * moe_quantize_act(t, ...)), r < n_rows, t < n_tok (y: f32 [n_tok][n_rows]):
 * bit for bit moe_matmul_q's result on the rows before repacking, at every
 * level (AVX2 / AVX-512: the lanes kernels; other levels restore each row and
 * take the level's dot) and for any thread count.  pool may be NULL.  Errors:
 * as moe_matmul_q, MOE_ERR_UNSUPPORTED for a type without a lanes layout,
 * MOE_ERR_NOMEM. */
moe_err moe_matmul_repacked(moe_pool *pool, float *y, const void *w, moe_type t, int64_t n_rows,
                            int64_t n_cols, const void *xq, int64_t n_tok);

/* ---- exact accumulation -------------------------------------------------------- */

/* 64-bit fixed point with MOE_FIX_FRAC_BITS fractional bits: v stands for
 * v * 2^-32. Integer addition is associative, so sums of moe_fix_t do not
 * depend on order; accumulate with plain `acc += moe_fix_from_f32(x)`.
 *
 * moe_fix_from_f32 rounds to nearest, ties away from zero (independent of the
 * FPU rounding mode), saturates to +-MOE_FIX_MAX (+-2^23 = 8388608.0 in real
 * terms) and maps NaN to 0. The 8 bits of headroom above MOE_FIX_MAX mean a sum
 * of up to MOE_FIX_MAX_TERMS converted values never overflows int64.
 * moe_fix_to_f32 is one correctly rounded conversion (exact scaling by 2^-32).
 * Resolution: 2^-32 = 2.3e-10, far below an f32 ulp of any value >= 2^-9. */
typedef int64_t moe_fix_t;
#define MOE_FIX_FRAC_BITS 32
#define MOE_FIX_MAX       ((moe_fix_t)1 << 55)
#define MOE_FIX_MAX_TERMS 256
moe_fix_t moe_fix_from_f32(float v);
float moe_fix_to_f32(moe_fix_t v);

/* ---- grouped expert FFN ---------------------------------------------------------- */

/* One stacked expert tensor (gate, up or down of a layer). Expert e's matrix
 * is at expert[e] (NULL = not held here): rows of n_cols values of type. */
typedef struct moe_expert_mat {
	moe_type type;
	int64_t n_cols;            /* input length */
	int64_t n_rows;            /* output length */
	const void *const *expert; /* [n_expert] */
	bool lanes;                /* rows repacked by moe_repack_rows (Q2_K, Q3_K) */
} moe_expert_mat;

typedef struct moe_expert_ffn {
	int32_t n_expert;
	moe_expert_mat gate; /* [n_embd] -> [n_ff] */
	moe_expert_mat up;   /* [n_embd] -> [n_ff] */
	moe_expert_mat down; /* [n_ff]   -> [n_embd] */
} moe_expert_ffn;

/* For each token t < n_tok and slot j < n_used with e = ids[t*n_used + j]
 * (e < 0 or expert not held: skipped), adds
 *     moe_fix_from_f32(weights[t*n_used + j] * down_e(silu(gate_e x_t) * up_e x_t))
 * element-wise into acc[t][0..n_embd). x: f32 [n_tok][n_embd]. Every token is
 * processed by exactly the same arithmetic whatever the batch, its position in
 * it, and the thread count, so results are bit-reproducible. */
moe_err moe_expert_ffn_run(moe_pool *pool, moe_fix_t *acc, const moe_expert_ffn *f, const float *x,
                           int64_t n_tok, const int32_t *ids, const float *weights, int n_used);

/* The same with the token rows already quantised (for workers that receive
 * activations off the network): xq is n_tok rows of
 * moe_act_row_size(f->gate.type, n_embd) bytes; up must take the same
 * activation form as gate (MOE_ERR_UNSUPPORTED otherwise). Bit-identical to
 * moe_expert_ffn_run on the rows moe_quantize_act_rows made.
 *
 * Both: the order of work is (1) per expert, its tokens in order of
 * (token, slot); (2) gate and up rows, silu(gate) * up in f32, quantised per
 * (token, slot) row with moe_quantize_act(down.type); (3) down rows, times the
 * routing weight in f32, converted with moe_fix_from_f32 and added to acc.
 * Every step is per element or per row, so the order of threads does not
 * matter. Errors: MOE_ERR_BAD_SHAPE (inconsistent matrices), MOE_ERR_BAD_VALUE
 * (an id >= n_expert, n_used out of 1..64), MOE_ERR_NOMEM; acc is untouched
 * on an error found before the work starts. */
moe_err moe_expert_ffn_run_q(moe_pool *pool, moe_fix_t *acc, const moe_expert_ffn *f,
                             const void *xq, int64_t n_tok, const int32_t *ids,
                             const float *weights, int n_used);

#endif
