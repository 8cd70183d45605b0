/*
 * isa_neon_tile.h - private to the NEON tile files (isa_neon_gemm.c,
 * isa_neon_k23.c, isa_neon_iq4.c and their +dotprod twins isa_neondp_*.c)
 * and to isa_neon_dot.c (for idot16): the int8 dot helpers of the two builds, the lane helpers and
 * the driver that runs a type's 2 x T tiles over a product (gemm.h).  Included by .c files only,
 * after <arm_neon.h>; every function is static inline, so each build compiles its own copy with its
 * own flags.
 */
#ifndef MOE_KERNELS_ISA_NEON_TILE_H
#define MOE_KERNELS_ISA_NEON_TILE_H

#include <arm_neon.h>
#include <stddef.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/quants.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* acc + the 16 products a[k] * b[k], as 4 int32 lanes (which product lands in
 * which lane differs between the two builds; only lane sums are used). */
#if defined(MOE_NEON_DOTPROD)
static ALWAYS_INLINE int32x4_t idot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
	return vdotq_s32(acc, a, b);
}
#else
static ALWAYS_INLINE int32x4_t idot16(int32x4_t acc, int8x16_t a, int8x16_t b)
{
	acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
	return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#endif

/* The 16 (a1, b1) or 32 (a1, b1 and a2, b2) products, as 4 int32 lanes of
 * the same lane sums, for weights a of at most 32 in magnitude (every type
 * here but Q8_0).  The base build sums them in int16 lanes first (2 or 4
 * products of at most 32 * 128: under 2^15, exact for any int8 b) and widens
 * once: 3 or 5 instructions instead of 4 or 8. */
#if defined(MOE_NEON_DOTPROD)
static ALWAYS_INLINE int32x4_t sdot16(int8x16_t a1, int8x16_t b1)
{
	return vdotq_s32(vdupq_n_s32(0), a1, b1);
}
static ALWAYS_INLINE int32x4_t sdot32(int8x16_t a1, int8x16_t b1, int8x16_t a2, int8x16_t b2)
{
	return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a1, b1), a2, b2);
}
#else
static ALWAYS_INLINE int32x4_t sdot16(int8x16_t a1, int8x16_t b1)
{
	return vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)), a1, b1));
}
static ALWAYS_INLINE int32x4_t sdot32(int8x16_t a1, int8x16_t b1, int8x16_t a2, int8x16_t b2)
{
	int16x8_t p = vmlal_high_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)), a1, b1);
	p = vmlal_s8(p, vget_low_s8(a2), vget_low_s8(b2));
	return vpaddlq_s16(vmlal_high_s8(p, a2, b2));
}
#endif

/* acc + sdot32(a1, b1, a2, b2) (the same bound on a): the base build widens
 * the int16 sums into acc by one SADALP, the SDOT build accumulates in place. */
#if defined(MOE_NEON_DOTPROD)
static ALWAYS_INLINE int32x4_t sdot32_acc(int32x4_t acc, int8x16_t a1, int8x16_t b1, int8x16_t a2,
                                          int8x16_t b2)
{
	return vdotq_s32(vdotq_s32(acc, a1, b1), a2, b2);
}
#else
static ALWAYS_INLINE int32x4_t sdot32_acc(int32x4_t acc, int8x16_t a1, int8x16_t b1, int8x16_t a2,
                                          int8x16_t b2)
{
	int16x8_t p = vmlal_high_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)), a1, b1);
	p = vmlal_s8(p, vget_low_s8(a2), vget_low_s8(b2));
	return vpadalq_s16(acc, vmlal_high_s8(p, a2, b2));
}
#endif

/* Lane t = the sum of the lanes of v[t], for t < T; 0 in the other lanes. */
static ALWAYS_INLINE int32x4_t lanes_sum(int T, const int32x4_t v[4])
{
	const int32x4_t z = vdupq_n_s32(0);
	return vpaddq_s32(vpaddq_s32(v[0], T > 1 ? v[1] : z),
	                  vpaddq_s32(T > 2 ? v[2] : z, T > 3 ? v[3] : z));
}

/* Four fp16 values, lane k from bytes off..off+1 of p[k], as floats (exact). */
static ALWAYS_INLINE float32x4_t half4_at(const uint8_t *const p[4], size_t off)
{
	uint64_t bits = 0;

	for (int k = 0; k < 4; k++) {
		uint16_t h;
		memcpy(&h, p[k] + off, 2);
		bits |= (uint64_t)h << (16 * k);
	}
	return vcvt_f32_f16(vreinterpret_f16_u16(vcreate_u16(bits)));
}

/* Four floats, lane k from bytes off..off+3 of p[k]. */
static ALWAYS_INLINE float32x4_t f32x4_at(const uint8_t *const p[4], size_t off)
{
	uint32_t u[4];

	for (int k = 0; k < 4; k++)
		memcpy(&u[k], p[k] + off, 4);
	uint64_t lo = u[0] | (uint64_t)u[1] << 32, hi = u[2] | (uint64_t)u[3] << 32;
	return vreinterpretq_f32_u32(vcombine_u32(vcreate_u32(lo), vcreate_u32(hi)));
}

/* Lane t of out[4 * r + t] for t < 4: the accumulators of rows 0 and 1. */
static ALWAYS_INLINE void store_rows(float out[8], float32x4_t r0, float32x4_t r1)
{
	vst1q_f32(out, r0);
	vst1q_f32(out + 4, r1);
}

/* out[4 * r + t] = row w[r] . token a[t] for r < 2, t < T (the tile's T). */
typedef void (*tile_fn)(int64_t n_cols, float out[8], const uint8_t *const w[2],
                        const uint8_t *const a[4]);

/* Tokens [t0, t1) (t1 - t0 a multiple of T, or less than T) over rows
 * [0, n_r) with 2 x T tiles; an edge tile repeats the last row and token and
 * drops those results. */
static inline void run_grid(tile_fn tile, int T, int64_t n_cols, float *y, int64_t ldy,
                            const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                            size_t x_stride, int64_t t0, int64_t t1)
{
	for (int64_t tt = t0; tt < t1; tt += T) {
		const uint8_t *ap[4];
		for (int t = 0; t < 4; t++) {
			int64_t tk = t < T && tt + t < t1 ? tt + t : tt;
			ap[t] = x + (size_t)tk * x_stride;
		}
		for (int64_t r0 = 0; r0 < n_r; r0 += 2) {
			const int64_t r1 = r0 + 1 < n_r ? r0 + 1 : r0;
			const uint8_t *wp[2] = {w + (size_t)r0 * w_stride,
			                        w + (size_t)r1 * w_stride};
			float out[8];
			tile(n_cols, out, wp, ap);
			for (int r = 0; r < 2 && r0 + r < n_r; r++)
				for (int t = 0; t < T && tt + t < t1; t++)
					y[(tt + t) * ldy + r0 + r] = out[4 * r + t];
		}
	}
}

/* A type's tiles: tile[T] is 2 rows x T tokens, T = 2..4. */
typedef struct tile_set {
	moe_type type;
	tile_fn tile[5];
} tile_set;

/* Groups of 4 tokens take 2x4 tiles, a remainder of 2 or 3 one 2x2 or 2x3
 * row of tiles, a single token the level's per-row dot (same bits). */
static inline void run_tiles(const tile_set *s, int64_t n_cols, float *y, int64_t ldy,
                             const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                             size_t x_stride, int64_t n_t)
{
	const int64_t full = n_t / 4 * 4, rem = n_t - full;

	if (full > 0)
		run_grid(s->tile[4], 4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0, full);
	if (rem >= 2) {
		run_grid(s->tile[rem], (int)rem, n_cols, y, ldy, w, w_stride, n_r, x, x_stride,
		         full, n_t);
	} else if (rem == 1) {
		moe_vec_dot_fn dot = moe_vec_dot_get_isa(s->type, MOE_ISA_NEON);
		if (dot == NULL)
			dot = moe_vec_dot_get_isa(s->type, MOE_ISA_SCALAR);
		const uint8_t *a = x + (size_t)full * x_stride;
		for (int64_t r = 0; r < n_r; r++)
			dot(n_cols, &y[full * ldy + r], w + (size_t)r * w_stride, a);
	}
}

/* A gemm.h kernel `name` running tile_set `set` through run_tiles. */
#define GEMM(name, set)                                                                            \
	static void name(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride, \
	                 int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)              \
	{                                                                                          \
		run_tiles(&set, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);               \
	}

#endif
