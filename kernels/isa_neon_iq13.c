/*
 * isa_neon_iq13.c - aarch64 Advanced SIMD (base Armv8-A) dot products of
 * IQ3_XXS, IQ3_S, IQ1_S and IQ1_M against Q8_K, with the scalar references'
 * bits (the canonical arithmetic of quants.h).  Per 32-value sub-block the
 * int8 weights are formed in two vectors: IQ3 grid points (loaded from the
 * expanded grid) times their +-1 signs (moe_iq_signs of the group's sign
 * byte; IQ3_XXS's 8th bit the parity of its 7), IQ1 8 * grid + delta; the
 * products with the activations are exact in int16 (SMULL, |w| <= 62) and
 * widened into int32 lanes (SADALP), summed exactly, times the sub-block's
 * scale 2 ls + 1 into the block's integer sum; then the reference's fmaf per
 * block in block order.
 */
#include <arm_neon.h>
#include <math.h>

#include "kernels/quants.h"

static inline float half_to_f32(uint16_t h)
{
	return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* The exact dot of 16 int8 weights with 16 int8 activations. */
static inline int32_t dot16(int8x16_t w, const int8_t *y)
{
	const int8x16_t q = vld1q_s8(y);
	int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(q)));
	acc = vpadalq_s16(acc, vmull_high_s8(w, q));
	return vaddvq_s32(acc);
}

/* 8 grid bytes (two 4-byte points) times the +-1 signs of sign byte s. */
static inline int8x8_t signed_pair(uint32_t g0, uint32_t g1, unsigned s)
{
	const uint8x8_t g = vcreate_u8((uint64_t)g1 << 32 | g0);
	return vmul_s8(vreinterpret_s8_u8(g), vcreate_s8(moe_iq_signs[s]));
}

/* IQ1: 8 * grid + delta of grid point idx (delta +-1). */
static inline int8x8_t iq1_group(unsigned idx, int delta)
{
	return vadd_s8(vshl_n_s8(vcreate_s8(moe_iq1s_grid[idx]), 3), vdup_n_s8((int8_t)delta));
}

/* Sub-block v of block b: weights w[0] (values 0-15), w[1] (16-31), scales
 * ls[0], ls[1] (2 ls + 1 of each half). */
static inline void sub_block(moe_type t, const uint8_t *b, int v, int8x16_t w[2], int ls[2])
{
	int8x8_t g[4];
	if (t == MOE_TYPE_IQ3_XXS) {
		const moe_block_iq3_xxs *x = (const moe_block_iq3_xxs *)b;
		const uint8_t *q = x->qs + 8 * v;
		uint32_t aux;
		memcpy(&aux, x->qs + 64 + 4 * v, 4);
		for (int l = 0; l < 4; l++) {
			const unsigned s = (aux >> (7 * l)) & 127;
			g[l] = signed_pair(moe_iq3xxs_grid[q[2 * l]], moe_iq3xxs_grid[q[2 * l + 1]],
			                   s | (unsigned)(__builtin_popcount(s) & 1) << 7);
		}
		ls[0] = ls[1] = 2 * (int)(aux >> 28) + 1;
	} else if (t == MOE_TYPE_IQ3_S) {
		const moe_block_iq3_s *x = (const moe_block_iq3_s *)b;
		const uint8_t *q = x->qs + 8 * v;
		const unsigned h = x->qh[v];
		for (int l = 0; l < 4; l++)
			g[l] =
			    signed_pair(moe_iq3s_grid[q[2 * l] | ((h >> (2 * l)) & 1) << 8],
			                moe_iq3s_grid[q[2 * l + 1] | ((h >> (2 * l + 1)) & 1) << 8],
			                x->signs[4 * v + l]);
		ls[0] = ls[1] = 2 * ((x->scales[v / 2] >> (4 * (v % 2))) & 15) + 1;
	} else if (t == MOE_TYPE_IQ1_S) {
		const moe_block_iq1_s *x = (const moe_block_iq1_s *)b;
		const unsigned h = x->qh[v];
		const int delta = h & 0x8000 ? -1 : 1;
		for (int l = 0; l < 4; l++)
			g[l] = iq1_group(x->qs[4 * v + l] | ((h >> (3 * l)) & 7) << 8, delta);
		ls[0] = ls[1] = 2 * ((h >> 12) & 7) + 1;
	} else {
		const moe_block_iq1_m *x = (const moe_block_iq1_m *)b;
		for (int l = 0; l < 4; l++) {
			const unsigned nib = (x->qh[2 * v + l / 2] >> (4 * (l % 2))) & 15;
			g[l] = iq1_group(x->qs[4 * v + l] | (nib & 7) << 8, nib & 8 ? -1 : 1);
		}
		uint16_t ws;
		memcpy(&ws, x->scales + 2 * (v / 2), 2);
		ls[0] = 2 * ((ws >> (6 * (v % 2))) & 7) + 1;
		ls[1] = 2 * ((ws >> (6 * (v % 2) + 3)) & 7) + 1;
	}
	w[0] = vcombine_s8(g[0], g[1]);
	w[1] = vcombine_s8(g[2], g[3]);
}

static inline void dot_iq(moe_type t, size_t bs, int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const uint8_t *b = x + (size_t)i * bs;
		int32_t isum = 0;
		for (int v = 0; v < 8; v++) {
			int8x16_t wv[2];
			int ls[2];
			sub_block(t, b, v, wv, ls);
			isum += ls[0] * dot16(wv[0], y[i].qs + 32 * v) +
			        ls[1] * dot16(wv[1], y[i].qs + 32 * v + 16);
		}
		uint16_t h;
		if (t == MOE_TYPE_IQ1_M)
			h = moe_iq1m_d((const moe_block_iq1_m *)b);
		else
			memcpy(&h, b, 2);
		const float d = half_to_f32(h);
		const float dw = t == MOE_TYPE_IQ3_XXS ? d * 0.25f
		                 : t == MOE_TYPE_IQ3_S ? d
		                                       : d * 0.125f;
		sum = fmaf((float)isum, dw * y[i].d, sum);
	}
	*s = sum;
}

static void dot_iq3_xxs(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq(MOE_TYPE_IQ3_XXS, sizeof(moe_block_iq3_xxs), n, s, w, a);
}

static void dot_iq3_s(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq(MOE_TYPE_IQ3_S, sizeof(moe_block_iq3_s), n, s, w, a);
}

static void dot_iq1_s(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq(MOE_TYPE_IQ1_S, sizeof(moe_block_iq1_s), n, s, w, a);
}

static void dot_iq1_m(int64_t n, float *s, const void *w, const void *a)
{
	dot_iq(MOE_TYPE_IQ1_M, sizeof(moe_block_iq1_m), n, s, w, a);
}

void moe_dots_neon_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	moe_iq13_init();
	dots[MOE_TYPE_IQ3_XXS] = dot_iq3_xxs;
	dots[MOE_TYPE_IQ3_S] = dot_iq3_s;
	dots[MOE_TYPE_IQ1_S] = dot_iq1_s;
	dots[MOE_TYPE_IQ1_M] = dot_iq1_m;
}
