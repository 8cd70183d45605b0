/*
 * quants_iq13.c - the scalar reference of the grid formats IQ3_XXS, IQ3_S,
 * IQ1_S and IQ1_M: their grids (expanded from iq13_grids.c's point sets),
 * dequantisation and the scalar dot products against Q8_K, the canonical
 * block arithmetic every ISA level reproduces (quants.h).  Block layouts are
 * drawn in quants.h.  No quantisers: these types come from llama-quantize.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "kernels/quants.h"

uint32_t moe_iq3xxs_grid[256];
uint32_t moe_iq3s_grid[512];
uint64_t moe_iq1s_grid[2048];
uint64_t moe_iq_signs[256];

static const uint8_t iq3xxs_levels[8] = {4, 12, 20, 28, 36, 44, 52, 62};
static const uint8_t iq3s_levels[8] = {1, 3, 5, 7, 9, 11, 13, 15};

static pthread_once_t grids_once = PTHREAD_ONCE_INIT;

/* The points of an IQ3 set in order: bit k = levels c_j with k = sum c_j 8^j. */
static int expand3(uint32_t *grid, const uint64_t set[64], const uint8_t levels[8])
{
	int n = 0;
	for (int k = 0; k < 4096; k++) {
		if (!((set[k / 64] >> (k % 64)) & 1))
			continue;
		uint32_t v = 0;
		for (int j = 0; j < 4; j++)
			v |= (uint32_t)levels[(k >> (3 * j)) & 7] << (8 * j);
		grid[n++] = v;
	}
	return n;
}

static void expand_grids(void)
{
	int n3 = expand3(moe_iq3xxs_grid, moe_iq3xxs_grid_set, iq3xxs_levels);
	int n3s = expand3(moe_iq3s_grid, moe_iq3s_grid_set, iq3s_levels);
	int n1 = 0;
	for (int k = 0; k < 6561; k++) {
		if (!((moe_iq1s_grid_set[k / 64] >> (k % 64)) & 1))
			continue;
		uint64_t v = 0;
		for (int j = 0, r = k; j < 8; j++, r /= 3)
			v |= (uint64_t)(uint8_t)(int8_t)(r % 3 - 1) << (8 * j);
		moe_iq1s_grid[n1++] = v;
	}
	/* the sets are facts of the formats: a set with another count is a
	 * damaged table, and every kernel would read past its grid */
	if (n3 != 256 || n3s != 512 || n1 != 2048)
		abort();
	for (int b = 0; b < 256; b++) {
		uint64_t v = 0;
		for (int j = 0; j < 8; j++)
			v |= (uint64_t)((b >> j) & 1 ? 0xff : 0x01) << (8 * j);
		moe_iq_signs[b] = v;
	}
}

void moe_iq13_init(void)
{
	pthread_once(&grids_once, expand_grids);
}

/* ---- the blocks' int8 weights and scales (shared by dequant and dot) ---------- */

/* The 8 sign bits of group l of an IQ3_XXS sub-block: 7 stored, the 8th the
 * parity of those (an even count of negatives). */
static inline uint8_t xxs_signs(uint32_t aux, int l)
{
	uint32_t s = (aux >> (7 * l)) & 127;
	return (uint8_t)(s | (uint32_t)(__builtin_popcount(s) & 1) << 7);
}

/* The 32 int8 weights of sub-block s and its scale(s) ls' = 2 ls + 1 (ls2:
 * the second 16 values' scale, the same as ls1 but for IQ1_M). */
static void sub_block(moe_type t, const void *blk, int s, int8_t q[32], int *ls1, int *ls2)
{
	if (t == MOE_TYPE_IQ3_XXS) {
		const moe_block_iq3_xxs *x = blk;
		uint32_t aux;
		memcpy(&aux, x->qs + 64 + 4 * s, 4);
		for (int l = 0; l < 4; l++) {
			uint8_t sg = xxs_signs(aux, l);
			for (int h = 0; h < 2; h++) {
				uint32_t g = moe_iq3xxs_grid[x->qs[8 * s + 2 * l + h]];
				for (int j = 0; j < 4; j++) {
					int v = (int)((g >> (8 * j)) & 255);
					q[8 * l + 4 * h + j] =
					    (int8_t)((sg >> (4 * h + j)) & 1 ? -v : v);
				}
			}
		}
		*ls1 = *ls2 = 2 * (int)(aux >> 28) + 1;
	} else if (t == MOE_TYPE_IQ3_S) {
		const moe_block_iq3_s *x = blk;
		for (int k = 0; k < 8; k++) {
			uint32_t g = moe_iq3s_grid[x->qs[8 * s + k] | ((x->qh[s] >> k) & 1) << 8];
			uint8_t sg = x->signs[4 * s + k / 2];
			for (int j = 0; j < 4; j++) {
				int v = (int)((g >> (8 * j)) & 255);
				q[4 * k + j] = (int8_t)((sg >> (4 * (k % 2) + j)) & 1 ? -v : v);
			}
		}
		*ls1 = *ls2 = 2 * ((x->scales[s / 2] >> (4 * (s % 2))) & 15) + 1;
	} else if (t == MOE_TYPE_IQ1_S) {
		const moe_block_iq1_s *x = blk;
		const int qh = x->qh[s], delta = qh & 0x8000 ? -1 : 1;
		for (int l = 0; l < 4; l++) {
			uint64_t g = moe_iq1s_grid[x->qs[4 * s + l] | ((qh >> (3 * l)) & 7) << 8];
			for (int j = 0; j < 8; j++)
				q[8 * l + j] = (int8_t)(8 * (int8_t)(g >> (8 * j)) + delta);
		}
		*ls1 = *ls2 = 2 * ((qh >> 12) & 7) + 1;
	} else {
		const moe_block_iq1_m *x = blk;
		uint16_t w;
		memcpy(&w, x->scales + 2 * (s / 2), 2);
		for (int l = 0; l < 4; l++) {
			const int nib = (x->qh[2 * s + l / 2] >> (4 * (l % 2))) & 15;
			const int delta = nib & 8 ? -1 : 1;
			uint64_t g = moe_iq1s_grid[x->qs[4 * s + l] | (nib & 7) << 8];
			for (int j = 0; j < 8; j++)
				q[8 * l + j] = (int8_t)(8 * (int8_t)(g >> (8 * j)) + delta);
		}
		*ls1 = 2 * ((w >> (6 * (s % 2))) & 7) + 1;
		*ls2 = 2 * ((w >> (6 * (s % 2) + 3)) & 7) + 1;
	}
}

static size_t block_bytes(moe_type t)
{
	return t == MOE_TYPE_IQ3_XXS ? sizeof(moe_block_iq3_xxs)
	       : t == MOE_TYPE_IQ3_S ? sizeof(moe_block_iq3_s)
	       : t == MOE_TYPE_IQ1_S ? sizeof(moe_block_iq1_s)
	                             : sizeof(moe_block_iq1_m);
}

/* The block's weight scale dw: its fp16 d times 1/4, 1 or 1/8 (exact). */
static float block_dw(moe_type t, const void *blk)
{
	uint16_t h;
	if (t == MOE_TYPE_IQ1_M)
		h = moe_iq1m_d(blk);
	else
		memcpy(&h, blk, 2);
	const float d = moe_fp16_to_f32(h);
	return t == MOE_TYPE_IQ3_XXS ? d * 0.25f : t == MOE_TYPE_IQ3_S ? d : d * 0.125f;
}

/* As ggml's dequantize_row_*: per 32 (IQ1_M: 16) values db = d * ls' (IQ3_XXS
 * d * (ls' / 2) / 2), then each value db * grid * sign (IQ1: db * (grid +
 * delta)), so the get_rows of an embedding gives llama.cpp's bits. */
void moe_dequant_iq13(moe_type t, float *y, const void *src, int64_t n)
{
	moe_iq13_init();
	const uint8_t *x = src;
	const size_t bs = block_bytes(t);
	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const uint8_t *b = x + (size_t)i * bs;
		uint16_t h;
		if (t == MOE_TYPE_IQ1_M)
			h = moe_iq1m_d((const moe_block_iq1_m *)b);
		else
			memcpy(&h, b, 2);
		const float d = moe_fp16_to_f32(h);
		for (int s = 0; s < 8; s++, y += 32) {
			int8_t q[32];
			int ls[2];
			sub_block(t, b, s, q, &ls[0], &ls[1]);
			for (int j = 0; j < 32; j++) {
				const int l = ls[j / 16];
				if (t == MOE_TYPE_IQ3_XXS)
					y[j] = d * ((float)l * 0.5f) * 0.5f * (float)q[j];
				else if (t == MOE_TYPE_IQ3_S)
					y[j] = d * (float)l * (float)q[j];
				else
					y[j] = d * (float)l * ((float)q[j] * 0.125f);
			}
		}
	}
}

/* ---- scalar dot products --------------------------------------------------------- */

static inline void dot_ref(moe_type t, int64_t n, float *s, const void *w, const void *a)
{
	const uint8_t *x = w;
	const moe_block_q8_K *y = a;
	const size_t bs = block_bytes(t);
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		const uint8_t *b = x + (size_t)i * bs;
		int32_t isum = 0;
		for (int sb = 0; sb < 8; sb++) {
			int8_t q[32];
			int ls1, ls2, d1 = 0, d2 = 0;
			sub_block(t, b, sb, q, &ls1, &ls2);
			for (int j = 0; j < 16; j++) {
				d1 += q[j] * y[i].qs[32 * sb + j];
				d2 += q[16 + j] * y[i].qs[32 * sb + 16 + j];
			}
			isum += ls1 * d1 + ls2 * d2;
		}
		sum = fmaf((float)isum, block_dw(t, b) * y[i].d, sum);
	}
	*s = sum;
}

void moe_vec_dot_iq3_xxs_ref(int64_t n, float *s, const void *w, const void *a)
{
	dot_ref(MOE_TYPE_IQ3_XXS, n, s, w, a);
}

void moe_vec_dot_iq3_s_ref(int64_t n, float *s, const void *w, const void *a)
{
	dot_ref(MOE_TYPE_IQ3_S, n, s, w, a);
}

void moe_vec_dot_iq1_s_ref(int64_t n, float *s, const void *w, const void *a)
{
	dot_ref(MOE_TYPE_IQ1_S, n, s, w, a);
}

void moe_vec_dot_iq1_m_ref(int64_t n, float *s, const void *w, const void *a)
{
	dot_ref(MOE_TYPE_IQ1_M, n, s, w, a);
}

void moe_dots_ref_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	moe_iq13_init();
	dots[MOE_TYPE_IQ3_XXS] = moe_vec_dot_iq3_xxs_ref;
	dots[MOE_TYPE_IQ3_S] = moe_vec_dot_iq3_s_ref;
	dots[MOE_TYPE_IQ1_S] = moe_vec_dot_iq1_s_ref;
	dots[MOE_TYPE_IQ1_M] = moe_vec_dot_iq1_m_ref;
}
