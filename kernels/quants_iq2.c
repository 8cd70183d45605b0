/*
 * quants_iq2.c - the scalar reference of the 2-bit grid formats IQ2_XXS,
 * IQ2_XS and IQ2_S: their levels, the grids expanded for the SIMD kernels,
 * dequantisation and the scalar dot products against Q8_K (the canonical
 * block arithmetic every ISA level reproduces, quants.h).  Block layouts are
 * drawn in quants.h; the grids themselves are in quants_iq2_grids.c.
 */
#include <math.h>
#include <pthread.h>

#include "kernels/quants.h"

/* The 3 magnitudes a grid value takes (a fact of the formats). */
const uint8_t moe_iq2_levels[3] = {8, 25, 43};

uint64_t moe_iq2xxs_grid64[256];
uint64_t moe_iq2xs_grid64[512];
uint64_t moe_iq2s_grid64[1024];
uint64_t moe_iq2_signs64[256];
uint64_t moe_iq2_esigns64[128];

static uint64_t expand(uint16_t g)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)moe_iq2_levels[(g >> (2 * i)) & 3] << (8 * i);
	return v;
}

static void tables_fill(void)
{
	for (int k = 0; k < 256; k++)
		moe_iq2xxs_grid64[k] = expand(moe_iq2xxs_grid[k]);
	for (int k = 0; k < 512; k++)
		moe_iq2xs_grid64[k] = expand(moe_iq2xs_grid[k]);
	for (int k = 0; k < 1024; k++)
		moe_iq2s_grid64[k] = expand(moe_iq2s_grid[k]);
	for (int m = 0; m < 256; m++) {
		uint64_t v = 0;
		for (int j = 0; j < 8; j++)
			v |= (uint64_t)((m >> j) & 1 ? 0xff : 0x01) << (8 * j);
		moe_iq2_signs64[m] = v;
	}
	for (int k = 0; k < 128; k++)
		moe_iq2_esigns64[k] = moe_iq2_signs64[moe_iq2_sign_byte(k)];
}

void moe_iq2_tables_init(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, tables_fill);
}

/* ---- one group of 8 values ------------------------------------------------------- */

/* Writes the 8 values grid entry g with sign bits sg times dl. */
static inline void group_values(float *y, uint16_t g, int sg, float dl)
{
	for (int j = 0; j < 8; j++) {
		float v = dl * (float)moe_iq2_levels[(g >> (2 * j)) & 3];
		y[j] = (sg >> j) & 1 ? -v : v;
	}
}

/* The exact dot of grid entry g with sign bits sg and 8 int8 activations. */
static inline int group_dot(uint16_t g, int sg, const int8_t *q8)
{
	int sum = 0;

	for (int j = 0; j < 8; j++) {
		int v = moe_iq2_levels[(g >> (2 * j)) & 3] * q8[j];
		sum += (sg >> j) & 1 ? -v : v;
	}
	return sum;
}

/* Sub-block b of an IQ2_XXS block as its two words. */
static inline void xxs_words(const moe_block_iq2_xxs *x, int b, uint32_t *a0, uint32_t *a1)
{
	memcpy(a0, x->qs + 4 * b, 4);
	memcpy(a1, x->qs + 4 * b + 2, 4);
}

/* Group l (0..3) of IQ2_S sub-block b: its grid entry. */
static inline uint16_t s_grid(const moe_block_iq2_s *x, int b, int l)
{
	return moe_iq2s_grid[x->qs[4 * b + l] | ((x->qh[b] >> (2 * l)) & 3) << 8];
}

/* ---- dequantisation ------------------------------------------------------------ */

static void dequant_iq2_xxs(float *y, const void *src, int64_t n)
{
	const moe_block_iq2_xxs *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);
		for (int b = 0; b < 8; b++) {
			uint32_t a0, a1;
			xxs_words(&x[i], b, &a0, &a1);
			float dl = d * (float)(2 * (a1 >> 28) + 1) * 0.125f;
			for (int l = 0; l < 4; l++, y += 8)
				group_values(y, moe_iq2xxs_grid[(a0 >> (8 * l)) & 255],
				             moe_iq2_sign_byte((a1 >> (7 * l)) & 127), dl);
		}
	}
}

static void dequant_iq2_xs(float *y, const void *src, int64_t n)
{
	const moe_block_iq2_xs *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);
		for (int g = 0; g < 32; g++, y += 8) {
			int s = (x[i].scales[g / 4] >> (4 * ((g % 4) / 2))) & 15;
			group_values(y, moe_iq2xs_grid[x[i].qs[g] & 511],
			             moe_iq2_sign_byte(x[i].qs[g] >> 9),
			             d * (float)(2 * s + 1) * 0.125f);
		}
	}
}

static void dequant_iq2_s(float *y, const void *src, int64_t n)
{
	const moe_block_iq2_s *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);
		for (int g = 0; g < 32; g++, y += 8) {
			int s = (x[i].scales[g / 4] >> (4 * ((g % 4) / 2))) & 15;
			group_values(y, s_grid(&x[i], g / 4, g % 4), x[i].qs[32 + g],
			             d * (float)(2 * s + 1) * 0.125f);
		}
	}
}

void moe_dequant_iq2(moe_type t, float *y, const void *src, int64_t n)
{
	if (t == MOE_TYPE_IQ2_XXS)
		dequant_iq2_xxs(y, src, n);
	else if (t == MOE_TYPE_IQ2_XS)
		dequant_iq2_xs(y, src, n);
	else if (t == MOE_TYPE_IQ2_S)
		dequant_iq2_s(y, src, n);
}

/* ---- scalar dot products --------------------------------------------------------- */

void moe_vec_dot_iq2_xxs_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_xxs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;
		for (int b = 0; b < 8; b++) {
			uint32_t a0, a1;
			xxs_words(&x[i], b, &a0, &a1);
			int sub = 0;
			for (int l = 0; l < 4; l++)
				sub += group_dot(moe_iq2xxs_grid[(a0 >> (8 * l)) & 255],
				                 moe_iq2_sign_byte((a1 >> (7 * l)) & 127),
				                 y[i].qs + 32 * b + 8 * l);
			isum += (int)(2 * (a1 >> 28) + 1) * sub;
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

void moe_vec_dot_iq2_xs_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_xs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;
		for (int h = 0; h < 16; h++) { /* 16 values per scale */
			int sub = 0;
			for (int g = 2 * h; g < 2 * h + 2; g++)
				sub +=
				    group_dot(moe_iq2xs_grid[x[i].qs[g] & 511],
				              moe_iq2_sign_byte(x[i].qs[g] >> 9), y[i].qs + 8 * g);
			isum += (2 * ((x[i].scales[h / 2] >> (4 * (h % 2))) & 15) + 1) * sub;
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

void moe_vec_dot_iq2_s_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq2_s *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;
		for (int h = 0; h < 16; h++) {
			int sub = 0;
			for (int g = 2 * h; g < 2 * h + 2; g++)
				sub += group_dot(s_grid(&x[i], g / 4, g % 4), x[i].qs[32 + g],
				                 y[i].qs + 8 * g);
			isum += (2 * ((x[i].scales[h / 2] >> (4 * (h % 2))) & 15) + 1) * sub;
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = 0.125f * sum;
}

void moe_dots_ref_iq2(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_IQ2_XXS] = moe_vec_dot_iq2_xxs_ref;
	dots[MOE_TYPE_IQ2_XS] = moe_vec_dot_iq2_xs_ref;
	dots[MOE_TYPE_IQ2_S] = moe_vec_dot_iq2_s_ref;
}
