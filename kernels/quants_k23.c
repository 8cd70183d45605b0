/*
 * quants_k23.c - the scalar reference of the 2- and 3-bit K-quants (Q2_K,
 * Q3_K): dequantisation, ggml's reference quantizers (the same algorithms as
 * quantize_row_q2_K_ref / quantize_row_q3_K_ref, which llama-quantize runs
 * without an importance matrix, so its output is reproduced byte for byte),
 * and the scalar dots against Q8_K in the canonical arithmetic (quants.h).
 * Block layouts are drawn in quants.h.
 */
#include <math.h>

#include "kernels/quants.h"

static inline int clampi(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* q (0..3) of value v (0..255) from a Q2_K/Q3_K qs[64]. */
static inline int q2_get(const uint8_t *qs, int v)
{
	return (qs[32 * (v / 128) + v % 32] >> (2 * ((v % 128) / 32))) & 3;
}

/* ---- dequantisation ------------------------------------------------------------ */

void moe_dequant_q2_K(float *y, const void *src, int64_t n)
{
	const moe_block_q2_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, y += MOE_QK_K) {
		float d = moe_fp16_to_f32(x[i].d);
		float dmin = moe_fp16_to_f32(x[i].dmin);

		for (int v = 0; v < MOE_QK_K; v++) {
			int sc = x[i].scales[v / 16] & 15, mn = x[i].scales[v / 16] >> 4;

			y[v] = d * (float)sc * (float)q2_get(x[i].qs, v) - dmin * (float)mn;
		}
	}
}

void moe_dequant_q3_K(float *y, const void *src, int64_t n)
{
	const moe_block_q3_K *x = src;

	for (int64_t i = 0; i < n / MOE_QK_K; i++, y += MOE_QK_K) {
		float d = moe_fp16_to_f32(x[i].d);

		for (int v = 0; v < MOE_QK_K; v++) {
			int q = q2_get(x[i].qs, v) | ((x[i].hmask[v % 32] >> (v / 32)) & 1) << 2;

			y[v] = d * (float)(moe_k3_scale(v / 16, x[i].scales) - 32) * (float)(q - 4);
		}
	}
}

/* ---- quantisers ------------------------------------------------------------------ */

/* L[0..256) (each 0..3) into qs[64] as drawn in quants.h. */
static void pack_q2(uint8_t qs[64], const uint8_t L[256])
{
	for (int h = 0; h < 2; h++)
		for (int l = 0; l < 32; l++)
			qs[32 * h + l] =
			    (uint8_t)(L[128 * h + l] | L[128 * h + 32 + l] << 2 |
			              L[128 * h + 64 + l] << 4 | L[128 * h + 96 + l] << 6);
}

void moe_quant_q2_K(void *dst, const float *x, int64_t n)
{
	moe_block_q2_K *y = dst;
	uint8_t L[256];
	float w[16], mins[16], scales[16];

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		float max_scale = 0, max_min = 0;

		for (int j = 0; j < 16; j++) {
			for (int l = 0; l < 16; l++)
				w[l] = fabsf(x[16 * j + l]);
			scales[j] = moe_fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j],
			                              -0.5f, 0.1f, 15, true);
			max_scale = scales[j] > max_scale ? scales[j] : max_scale;
			max_min = mins[j] > max_min ? mins[j] : max_min;
		}
		memset(y[i].scales, 0, sizeof(y[i].scales));
		y[i].d = moe_f32_to_fp16(0.0f);
		if (max_scale > 0) {
			float iscale = 15.f / max_scale;
			for (int j = 0; j < 16; j++)
				y[i].scales[j] = (uint8_t)moe_nearest_int(iscale * scales[j]);
			y[i].d = moe_f32_to_fp16(max_scale / 15.f);
		}
		y[i].dmin = moe_f32_to_fp16(0.0f);
		if (max_min > 0) {
			float iscale = 15.f / max_min;
			for (int j = 0; j < 16; j++)
				y[i].scales[j] |= (uint8_t)(moe_nearest_int(iscale * mins[j]) << 4);
			y[i].dmin = moe_f32_to_fp16(max_min / 15.f);
		}
		for (int j = 0; j < 16; j++) {
			float d = moe_fp16_to_f32(y[i].d) * (float)(y[i].scales[j] & 15);
			if (d == 0.0f)
				continue;
			float dm = moe_fp16_to_f32(y[i].dmin) * (float)(y[i].scales[j] >> 4);
			for (int l = 0; l < 16; l++)
				L[16 * j + l] = (uint8_t)clampi(
				    moe_nearest_int((x[16 * j + l] + dm) / d), 0, 3);
		}
		pack_q2(y[i].qs, L);
	}
}

/*
 * Symmetric q in -nmax..nmax-1 for x[0..n) with weights x^2: a first guess
 * from the value of largest magnitude, then up to 5 passes moving single
 * values to a better level (ggml's make_q3_quants with do_rmse).  L gets
 * q + nmax.  Returns the scale.
 */
static float fit_scale_q3(int n, int nmax, const float *x, int8_t *L)
{
	float max = 0, amax = 0;

	for (int i = 0; i < n; i++) {
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			max = x[i];
		}
	}
	if (amax < 1e-15f) {
		memset(L, 0, (size_t)n);
		return 0.0f;
	}
	float iscale = -nmax / max;
	float sumlx = 0, suml2 = 0;

	for (int i = 0; i < n; i++) {
		int l = clampi(moe_nearest_int(iscale * x[i]), -nmax, nmax - 1);
		float w = x[i] * x[i];

		L[i] = (int8_t)l;
		sumlx += w * x[i] * l;
		suml2 += w * l * l;
	}
	for (int itry = 0; itry < 5; itry++) {
		int n_changed = 0;

		for (int i = 0; i < n; i++) {
			float w = x[i] * x[i];
			float slx = sumlx - w * x[i] * L[i];
			if (slx <= 0)
				continue;
			float sl2 = suml2 - w * L[i] * L[i];
			int new_l = clampi(moe_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
			if (new_l == L[i])
				continue;
			slx += w * x[i] * new_l;
			sl2 += w * new_l * new_l;
			if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
				L[i] = (int8_t)new_l;
				sumlx = slx;
				suml2 = sl2;
				n_changed++;
			}
		}
		if (n_changed == 0)
			break;
	}
	for (int i = 0; i < n; i++)
		L[i] = (int8_t)(L[i] + nmax);
	return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

void moe_quant_q3_K(void *dst, const float *x, int64_t n)
{
	moe_block_q3_K *y = dst;
	int8_t L[256];
	uint8_t U[256];
	float scales[16];

	for (int64_t i = 0; i < n / MOE_QK_K; i++, x += MOE_QK_K) {
		float max_scale = 0, amax = 0;

		for (int j = 0; j < 16; j++) {
			scales[j] = fit_scale_q3(16, 4, x + 16 * j, L + 16 * j);
			if (fabsf(scales[j]) > amax) {
				amax = fabsf(scales[j]);
				max_scale = scales[j];
			}
		}
		memset(y[i].scales, 0, sizeof(y[i].scales));
		y[i].d = moe_f32_to_fp16(0.0f);
		if (max_scale != 0.0f) {
			float iscale = -32.f / max_scale;
			for (int j = 0; j < 16; j++) {
				int l =
				    clampi((int8_t)moe_nearest_int(iscale * scales[j]), -32, 31) +
				    32;
				if (j < 8)
					y[i].scales[j] = (uint8_t)(l & 15);
				else
					y[i].scales[j - 8] |= (uint8_t)((l & 15) << 4);
				y[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
			}
			y[i].d = moe_f32_to_fp16(1 / iscale);
		}
		for (int j = 0; j < 16; j++) {
			float d =
			    moe_fp16_to_f32(y[i].d) * (float)(moe_k3_scale(j, y[i].scales) - 32);
			if (d == 0.0f)
				continue;
			for (int l = 0; l < 16; l++)
				L[16 * j + l] =
				    (int8_t)(clampi(moe_nearest_int(x[16 * j + l] / d), -4, 3) + 4);
		}
		memset(y[i].hmask, 0, sizeof(y[i].hmask));
		for (int v = 0; v < MOE_QK_K; v++) {
			int l = L[v];
			if (l > 3) {
				y[i].hmask[v % 32] |= (uint8_t)(1 << (v / 32));
				l -= 4;
			}
			U[v] = (uint8_t)l;
		}
		pack_q2(y[i].qs, U);
	}
}

/* ---- scalar dots (the canonical arithmetic) --------------------------------------- */

void moe_vec_dot_q2_K_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q2_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0, msums = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0, msum = 0;

		for (int sb = 0; sb < 16; sb++) {
			int sub = 0;

			for (int l = 0; l < 16; l++)
				sub += q2_get(x[i].qs, 16 * sb + l) * y[i].qs[16 * sb + l];
			isum += (x[i].scales[sb] & 15) * sub;
			msum += (x[i].scales[sb] >> 4) * y[i].bsums[sb];
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
		msums = fmaf((float)msum, moe_fp16_to_f32(x[i].dmin) * y[i].d, msums);
	}
	*s = sum - msums;
}

void moe_vec_dot_q3_K_ref(int64_t n, float *s, const void *w, const void *a)
{
	const moe_block_q3_K *x = w;
	const moe_block_q8_K *y = a;
	float sum = 0;

	for (int64_t i = 0; i < n / MOE_QK_K; i++) {
		int isum = 0;

		for (int sb = 0; sb < 16; sb++) {
			int sub = 0;

			for (int l = 0; l < 16; l++) {
				int v = 16 * sb + l;
				int q = q2_get(x[i].qs, v) | ((x[i].hmask[v % 32] >> (v / 32)) & 1)
				                                 << 2;

				sub += (q - 4) * y[i].qs[v];
			}
			isum += (moe_k3_scale(sb, x[i].scales) - 32) * sub;
		}
		sum = fmaf((float)isum, moe_fp16_to_f32(x[i].d) * y[i].d, sum);
	}
	*s = sum;
}
