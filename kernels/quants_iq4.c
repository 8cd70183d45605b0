/*
 * quants_iq4.c - the scalar reference of the non-linear 4-bit formats IQ4_NL
 * and IQ4_XS and of MXFP4: their value tables, dequantisation and the scalar
 * dot products (the canonical block arithmetic every ISA level reproduces).
 * Block layouts are drawn in quants.h.
 */
#include <math.h>

#include "kernels/quants.h"

/* The 16 levels of an IQ4_NL / IQ4_XS code (a fact of the format). */
const int8_t moe_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

/* E2M1 codes 0..15 doubled: sign bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6 (x 2). */
const int8_t moe_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ---- dequantisation ------------------------------------------------------------ */

static void dequant_iq4_nl(float *y, const void *src, int64_t n)
{
	const moe_block_iq4_nl *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int j = 0; j < 16; j++) {
			y[j] = d * (float)moe_iq4nl_values[x[i].qs[j] & 15];
			y[j + 16] = d * (float)moe_iq4nl_values[x[i].qs[j] >> 4];
		}
	}
}

static void dequant_iq4_xs(float *y, const void *src, int64_t n)
{
	const moe_block_iq4_xs *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int s = 0; s < 8; s++, y += 32) {
			const uint8_t *q = x[i].qs + 16 * s;
			float dl = d * (float)(moe_iq4xs_scale(&x[i], s) - 32);

			for (int j = 0; j < 16; j++) {
				y[j] = dl * (float)moe_iq4nl_values[q[j] & 15];
				y[j + 16] = dl * (float)moe_iq4nl_values[q[j] >> 4];
			}
		}
	}
}

static void dequant_mxfp4(float *y, const void *src, int64_t n)
{
	const moe_block_mxfp4 *x = src;

	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		float d = moe_e8m0_half(x[i].e);

		for (int j = 0; j < 16; j++) {
			y[j] = d * (float)moe_mxfp4_values[x[i].qs[j] & 15];
			y[j + 16] = d * (float)moe_mxfp4_values[x[i].qs[j] >> 4];
		}
	}
}

void moe_dequant_iq4(moe_type t, float *y, const void *src, int64_t n)
{
	if (t == MOE_TYPE_IQ4_NL)
		dequant_iq4_nl(y, src, n);
	else if (t == MOE_TYPE_IQ4_XS)
		dequant_iq4_xs(y, src, n);
	else if (t == MOE_TYPE_MXFP4)
		dequant_mxfp4(y, src, n);
}

/* ---- scalar dot products --------------------------------------------------------- */

/* The exact integer dot of one 32-value block of 4-bit codes (levels from
 * table) with 32 int8 activations. */
static inline int codes_dot(const int8_t table[16], const uint8_t qs[16], const int8_t q8[32])
{
	int sum = 0;

	for (int j = 0; j < 16; j++) {
		sum += table[qs[j] & 15] * q8[j];
		sum += table[qs[j] >> 4] * q8[j + 16];
	}
	return sum;
}

void moe_vec_dot_iq4_nl_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_nl *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = codes_dot(moe_iq4nl_values, x[i].qs, y[i].qs);

		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_vec_dot_iq4_xs_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_iq4_xs *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;

		for (int sb = 0; sb < 8; sb++)
			isum += (moe_iq4xs_scale(&x[i], sb) - 32) *
			        codes_dot(moe_iq4nl_values, x[i].qs + 16 * sb, y[i].qs + 32 * sb);
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}

void moe_vec_dot_mxfp4_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_mxfp4 *x = w;
	const moe_block_q8_0 *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK32; i++) {
		int isum = codes_dot(moe_mxfp4_values, x[i].qs, y[i].qs);

		sum = fmaf((float)isum, moe_e8m0_half(x[i].e) * moe_fp16_to_f32(y[i].d), sum);
	}
	*s = sum;
}

void moe_dots_ref_iq4(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	dots[MOE_TYPE_IQ4_NL] = moe_vec_dot_iq4_nl_ref;
	dots[MOE_TYPE_IQ4_XS] = moe_vec_dot_iq4_xs_ref;
	dots[MOE_TYPE_MXFP4] = moe_vec_dot_mxfp4_ref;
}
