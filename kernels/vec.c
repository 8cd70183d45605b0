/*
 * vec.c - float vector ops for the model's dense math (attention scores and
 * sums, DeltaNet state updates): the scalar references, and the table of the
 * active ISA level (dispatch.c picks the level).
 *
 * Every level gives the references' bits: the SIMD versions do the same
 * operations lane for lane (a multiply and a separate add, never fused: this
 * file and the per-ISA vec files are compiled with -ffp-contract=off; the
 * dot in 8 partial sums finished by a fixed tree), so the dense part of a
 * forward pass does not depend on which CPU the coordinator runs on.  The
 * conversions (F16, Q8_0 and Q4_0 rows of the KV cache to f32) are exact.
 */
#include "kernels/quants.h"

static float dot_ref(const float *a, const float *b, int64_t n)
{
	float s[8] = {0};
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			s[j] += a[i + j] * b[i + j];
	float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
	for (; i < n; i++)
		r += a[i] * b[i];
	return r;
}

static void dot_rows_ref(float *y, int64_t y_stride, const float *a, int64_t a_stride, int64_t m,
                         const float *b, int64_t n)
{
	for (int64_t r = 0; r < m; r++)
		y[r * y_stride] = dot_ref(a + r * a_stride, b, n);
}

static void axpy_ref(float *y, float a, const float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] += a * x[i];
}

static void axpy_rows_ref(float *y, const float *a, const float *x, int64_t x_stride, int64_t m,
                          int64_t n)
{
	for (int64_t i = 0; i < m; i++)
		axpy_ref(y, a[i], x + i * x_stride, n);
}

static void scale_ref(float *y, float a, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] *= a;
}

static void f16_ref(float *y, const uint16_t *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = moe_fp16_to_f32(x[i]);
}

/* d * q: an fp16 scale times an integer of at most 8 bits is exact in f32 */
static void q8_0_ref(float *y, const void *x, int64_t n)
{
	const moe_block_q8_0 *b = x;
	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		const float d = moe_fp16_to_f32(b[i].d);
		for (int j = 0; j < MOE_QK32; j++)
			y[j] = (float)b[i].qs[j] * d;
	}
}

static void q4_0_ref(float *y, const void *x, int64_t n)
{
	const moe_block_q4_0 *b = x;
	for (int64_t i = 0; i < n / MOE_QK32; i++, y += MOE_QK32) {
		const float d = moe_fp16_to_f32(b[i].d);
		for (int j = 0; j < 16; j++) {
			y[j] = (float)((b[i].qs[j] & 15) - 8) * d;
			y[j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
		}
	}
}

static void fix_axpy_ref(int64_t *acc, float w, const float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		acc[i] += moe_fix_from_f32(w * x[i]);
}

void moe_vec_ops_ref(moe_vec_ops *ops)
{
	ops->dot = dot_ref;
	ops->dot_rows = dot_rows_ref;
	ops->axpy = axpy_ref;
	ops->axpy_rows = axpy_rows_ref;
	ops->scale = scale_ref;
	ops->f16_to_f32 = f16_ref;
	ops->fix_axpy = fix_axpy_ref;
	ops->q8_0_to_f32 = q8_0_ref;
	ops->q4_0_to_f32 = q4_0_ref;
}
