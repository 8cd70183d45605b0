/*
 * test_dot.c - dot products: the scalar reference against a double-precision
 * dot of the dequantised operands, and each SIMD level against the scalar
 * reference (dots on seeded random data of several lengths and on extreme
 * values, the float vector ops bit for bit): one test per level
 * (isa_levels.h), skipped - and reported so - where this CPU cannot run the
 * level or MOEMESH_ISA caps it (e.g. to run under valgrind, which cannot
 * execute AVX-512).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"
#include "test_rng.h"

/* fp16 bits -> value by the IEEE formula. */
static double half_value(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);

	return (h & 0x8000) ? -v : v;
}

/* clang-format off */
static const moe_type dot_types[] = {
    MOE_TYPE_F32,  MOE_TYPE_F16,  MOE_TYPE_BF16,   MOE_TYPE_Q4_0,   MOE_TYPE_Q4_1,
    MOE_TYPE_Q5_0, MOE_TYPE_Q5_1, MOE_TYPE_Q8_0,   MOE_TYPE_Q4_K,   MOE_TYPE_Q5_K,
    MOE_TYPE_Q6_K, MOE_TYPE_Q2_K, MOE_TYPE_Q3_K,   MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS,
    MOE_TYPE_MXFP4,
};
/* clang-format on */
#define N_DOT_TYPES (sizeof(dot_types) / sizeof(dot_types[0]))

/* Lengths: one block, a few, and long rows (expert FFN sizes); then lengths
 * that only some types take (skipped where moe_row_size is 0): 13 and 41
 * 32-blocks (not a multiple of the SIMD group of 8 blocks, so the leftover
 * path runs) and 421 / 1003 values (float tails shorter than a vector). */
static const int64_t lengths[] = {256, 768, 2048, 4096, 256 * 27, 32 * 13, 32 * 41, 421, 1003};

typedef struct case_data {
	int64_t n;
	float *x, *a;   /* inputs */
	void *w, *aq;   /* quantised weight row, activation row */
	float *wd, *ad; /* their dequantised values */
	double exact;   /* sum wd*ad in double */
	double mag;     /* sum |wd*ad| */
} case_data;

static void case_make(case_data *c, moe_type t, int64_t n, uint64_t seed)
{
	const moe_type_traits *tr = moe_type_get(t);

	c->n = n;
	c->x = malloc((size_t)n * sizeof(float));
	c->a = malloc((size_t)n * sizeof(float));
	c->wd = malloc((size_t)n * sizeof(float));
	c->ad = malloc((size_t)n * sizeof(float));
	c->w = malloc(moe_row_size(t, n));
	c->aq = malloc(moe_act_row_size(t, n));
	cr_assert(c->x && c->a && c->wd && c->ad && c->w && c->aq);
	rng_state = seed;
	for (int64_t i = 0; i < n; i++) {
		/* Varying magnitudes per block, some negative-heavy blocks. */
		float scale = 0.02f + 0.5f * (float)((i / 32) % 7) / 7.0f;
		c->x[i] = rng_unif() * scale + ((i / 256) % 3 == 1 ? -0.3f * scale : 0.0f);
		c->a[i] = rng_unif() * (1.0f + (float)((i / 64) % 5));
	}
	cr_assert_eq(moe_quantize_row(t, c->w, c->x, n), MOE_OK, "%s", tr->name);
	cr_assert_eq(moe_quantize_act(t, c->aq, c->a, n), MOE_OK, "%s", tr->name);
	cr_assert_eq(moe_dequantize_row(t, c->wd, c->w, n), MOE_OK);
	cr_assert_eq(moe_dequantize_row(tr->vec_dot_type, c->ad, c->aq, n), MOE_OK);
	c->exact = 0;
	c->mag = 0;
	for (int64_t i = 0; i < n; i++) {
		c->exact += (double)c->wd[i] * c->ad[i];
		c->mag += fabs((double)c->wd[i] * c->ad[i]);
	}
	if (tr->vec_dot_type == MOE_TYPE_Q8_1) {
		/* Q4_1/Q5_1 value = d*q + m: the format's dot takes sum(a) of a
		 * block from the activation's stored fp16 s (bytes 2-3 of each
		 * 36-byte block), not from its values; m is bytes 2-3 of the
		 * weight block. */
		for (int64_t b = 0; b < n / 32; b++) {
			const uint8_t *wb = (const uint8_t *)c->w + b * tr->type_size;
			const uint8_t *ab = (const uint8_t *)c->aq + b * 36;
			double m = half_value((uint16_t)(wb[2] | wb[3] << 8));
			double s = half_value((uint16_t)(ab[2] | ab[3] << 8));
			double sum_a = 0;
			for (int j = 0; j < 32; j++)
				sum_a += c->ad[32 * b + j];
			c->exact += m * (s - sum_a);
		}
	}
}

static void case_free(case_data *c)
{
	free(c->x);
	free(c->a);
	free(c->wd);
	free(c->ad);
	free(c->w);
	free(c->aq);
}

/*
 * Reference vs double: the integer parts are exact; what remains is float
 * rounding of the block scale products (a few ulp each) and of the running
 * float sum over n terms/blocks, bounded by ~n_terms * 2^-24 * sum|terms|.
 * 4e-6 relative to sum |w_i a_i| covers n up to ~7000 float terms with margin
 * (F32/F16/BF16 sum every product in float: n * 6e-8 = 4e-4 at worst, so
 * those get n * 1.2e-7).
 */
Test(dot, reference_matches_dequantised_double)
{
	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		cr_assert_not_null(ref, "%s", moe_type_get(t)->name);
		for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
			case_data c;
			float s = NAN;

			if (moe_row_size(t, lengths[li]) == 0)
				continue;
			case_make(&c, t, lengths[li], 1000 + ti * 10 + li);
			ref(c.n, &s, c.w, c.aq);
			bool per_value = moe_type_get(t)->block_size == 1;
			double tol = (per_value ? (double)c.n * 1.2e-7 : 4e-6) * c.mag + 1e-30;
			cr_assert(fabs(s - c.exact) <= tol, "%s n=%lld: %.9g vs %.9g (tol %.3g)",
			          moe_type_get(t)->name, (long long)c.n, s, c.exact, tol);
			case_free(&c);
		}
	}
}

/* The quantised dot is close to the float dot of the original inputs: a sanity
 * bound on the whole path (quantisation error dominates; loose on purpose). */
Test(dot, quantised_dot_tracks_float_dot)
{
	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		case_data c;
		float s;
		double f = 0, mag = 0;

		case_make(&c, t, 4096, 42 + ti);
		moe_vec_dot_get_isa(t, MOE_ISA_SCALAR)(c.n, &s, c.w, c.aq);
		for (int64_t i = 0; i < c.n; i++) {
			f += (double)c.x[i] * c.a[i];
			mag += fabs((double)c.x[i] * c.a[i]);
		}
		cr_assert(fabs(s - f) <= 0.05 * mag, "%s: %g vs %g", moe_type_get(t)->name, s, f);
		case_free(&c);
	}
}

/*
 * SIMD vs reference. Integer dots: every block's integer sum is exact in
 * int32 at both levels, and the block scale products are the same float
 * operations; only the order in which block results are added differs
 * (vector lanes, then a horizontal sum), which moves the result by at most
 * ~n_blocks * 2^-24 * sum|block terms|: 2e-6 relative to sum |w_i a_i| holds
 * for every length here.  Float dots (F32/F16/BF16) reorder all n products
 * and may fuse multiply-adds: n * 1.2e-7 relative.
 */
static void matches_reference(moe_isa level)
{
	int checked = 0;

	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		moe_vec_dot_fn fn = moe_vec_dot_get_isa(t, level);
		cr_assert_not_null(fn, "%s %s", moe_isa_name(level), moe_type_get(t)->name);
		for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
			case_data c;
			float want;

			if (moe_row_size(t, lengths[li]) == 0)
				continue;
			case_make(&c, t, lengths[li], 7000 + ti * 10 + li);
			ref(c.n, &want, c.w, c.aq);
			float got = NAN, again = NAN;
			fn(c.n, &got, c.w, c.aq);
			fn(c.n, &again, c.w, c.aq);
			bool per_value = moe_type_get(t)->block_size == 1;
			double tol = (per_value ? (double)c.n * 1.2e-7 : 2e-6) * c.mag;
			cr_assert(fabs((double)got - want) <= tol,
			          "%s %s n=%lld: %.9g vs ref %.9g (tol %.3g)", moe_isa_name(level),
			          moe_type_get(t)->name, (long long)c.n, got, want, tol);
			cr_assert(memcmp(&got, &again, sizeof(float)) == 0, "not deterministic");
			checked++;
			case_free(&c);
		}
	}
	cr_assert_gt(checked, 0, "%s: nothing compared", moe_isa_name(level));
	cr_log_info("%s: %d (type, length) cases checked against the reference",
	            moe_isa_name(level), checked);
}

ISA_SIMD_TESTS(dot, every_isa_matches_reference, matches_reference)

/* Extreme activations: q8 values of -127/127 everywhere and maximal weights
 * exercise the int16/int32 headroom of the SIMD paths (maddubs saturation).
 * Pattern 1 (all weights and activations -1) makes every Q4_0/Q5_0 product
 * its largest magnitude with one sign (-8 * -127, -16 * -127): 16 of them
 * sum to 32512, the bound the AVX2 int16 reduction tree relies on. */
static void extremes(moe_isa level)
{
	enum { N = 1024 };
	static float x[N], a[N];
	static uint8_t w[N * 4], aq[N * 4];
	int checked = 0;

	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		moe_vec_dot_fn fn = moe_vec_dot_get_isa(t, level);
		cr_assert_not_null(fn, "%s %s", moe_isa_name(level), moe_type_get(t)->name);
		for (int pattern = 0; pattern < 3; pattern++) {
			for (int i = 0; i < N; i++) {
				float sx = (i % 2) ? 1.0f : -1.0f;
				x[i] = pattern == 0 ? sx : pattern == 1 ? -1.0f : 1.0f;
				if (i % 32 == 0)
					x[i] = pattern == 2 ? 1.0f : -1.0f; /* the block max */
				a[i] = pattern == 1 ? -1.0f : (i % 3 ? 1.0f : -1.0f);
			}
			cr_assert_eq(moe_quantize_row(t, w, x, N), MOE_OK);
			cr_assert_eq(moe_quantize_act(t, aq, a, N), MOE_OK);
			float want, got;
			moe_vec_dot_get_isa(t, MOE_ISA_SCALAR)(N, &want, w, aq);
			fn(N, &got, w, aq);
			cr_assert(fabs((double)got - want) <= 1e-5 * (fabs(want) + N),
			          "%s %s pattern %d: %.9g vs %.9g", moe_isa_name(level),
			          moe_type_get(t)->name, pattern, got, want);
			checked++;
		}
	}
	cr_assert_gt(checked, 0, "%s: nothing compared", moe_isa_name(level));
}

ISA_SIMD_TESTS(dot, every_isa_extremes, extremes)

Test(dot, active_isa_is_the_best_supported)
{
	if (getenv("MOEMESH_ISA") != NULL)
		cr_skip_test("MOEMESH_ISA is set");
	moe_isa a = moe_isa_active();
	cr_assert(moe_isa_supported(a));
	for (int l = (int)a + 1; l <= (int)MOE_ISA_AVX512; l++)
		cr_assert(!moe_isa_supported((moe_isa)l), "%s supported but %s active",
		          moe_isa_name((moe_isa)l), moe_isa_name(a));
	cr_log_info("active ISA: %s", moe_isa_name(a));
}

/* The Q8_0 and Q4_0 row conversions (the quantized KV cache) at level v give
 * the reference's bits, and the reference gives moe_dequantize_row's values,
 * for blocks with every fp16 scale (NaN scales: NaN) and random codes, over
 * rows of 1..8 blocks.  Returns the number of rows compared. */
static int kv_rows_equal_references(const moe_vec_ops *ref, const moe_vec_ops *v, moe_isa level)
{
	enum { NB = 65536, Q8 = 34, Q4 = 18 };
	uint8_t *q8 = malloc((size_t)NB * Q8), *q4 = malloc((size_t)NB * Q4);
	float *r = malloc(sizeof(float) * 32 * 8), *s = malloc(sizeof(float) * 32 * 8);
	float *g = malloc(sizeof(float) * 32 * 8);
	cr_assert(q8 && q4 && r && s && g);
	uint64_t st = 777;
	for (int i = 0; i < NB; i++) {
		const uint16_t d = (uint16_t)i;
		memcpy(q8 + (size_t)i * Q8, &d, 2);
		memcpy(q4 + (size_t)i * Q4, &d, 2);
		for (int j = 0; j < 32; j++) {
			st = st * 6364136223846793005ull + 1442695040888963407ull;
			q8[(size_t)i * Q8 + 2 + j] = (uint8_t)(st >> 56);
			if (j < 16)
				q4[(size_t)i * Q4 + 2 + j] = (uint8_t)(st >> 48);
		}
	}
	int rows = 0;
	for (int t = 0; t < 2; t++) {
		const moe_type type = t == 0 ? MOE_TYPE_Q8_0 : MOE_TYPE_Q4_0;
		const size_t bs = t == 0 ? Q8 : Q4;
		const uint8_t *blocks = t == 0 ? q8 : q4;
		void (*fr)(float *, const void *, int64_t) =
		    t == 0 ? ref->q8_0_to_f32 : ref->q4_0_to_f32;
		void (*fv)(float *, const void *, int64_t) =
		    t == 0 ? v->q8_0_to_f32 : v->q4_0_to_f32;
		for (int i = 0; i < NB; i += 1 + i % 8) {
			const int nb = 1 + i % 8 < NB - i ? 1 + i % 8 : NB - i;
			const int n = 32 * nb;
			fr(r, blocks + (size_t)i * bs, n);
			fv(s, blocks + (size_t)i * bs, n);
			cr_assert_eq(moe_dequantize_row(type, g, blocks + (size_t)i * bs, n),
			             MOE_OK);
			for (int k = 0; k < n; k++) {
				if (r[k] != r[k]) {
					cr_assert(s[k] != s[k] && g[k] != g[k],
					          "%s %s block %d: NaN vs %g", moe_isa_name(level),
					          t == 0 ? "q8_0" : "q4_0", i + k / 32, s[k]);
					continue;
				}
				cr_assert(
				    memcmp(&r[k], &s[k], 4) == 0 && memcmp(&r[k], &g[k], 4) == 0,
				    "%s %s block %d value %d: %g, reference %g, dequantized %g",
				    moe_isa_name(level), t == 0 ? "q8_0" : "q4_0", i + k / 32,
				    k % 32, s[k], r[k], g[k]);
			}
			rows++;
		}
	}
	free(g), free(s), free(r), free(q4), free(q8);
	return rows;
}

/* The float vector ops give the scalar references' bits at each SIMD level,
 * for every length 0..100 and a long one (tails, the 8-lane body), and the
 * F16 conversion is exact for every half that is not a NaN. */
static void vec_ops_equal_references(moe_isa level)
{
	const moe_vec_ops *ref = moe_vec_ops_get_isa(MOE_ISA_SCALAR);
	const moe_vec_ops *v = moe_vec_ops_get_isa(level);
	enum { N = 1031 };
	float *a = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * N);
	float *y1 = malloc(sizeof(float) * N), *y2 = malloc(sizeof(float) * N);
	uint16_t *h = malloc(sizeof(uint16_t) * 65536);
	float *f1 = malloc(sizeof(float) * 65536), *f2 = malloc(sizeof(float) * 65536);
	cr_assert(ref != NULL && v != NULL && a && b && y1 && y2 && h && f1 && f2);
	uint64_t st = 12345;
	for (int i = 0; i < N; i++) {
		st = st * 6364136223846793005ull + 1442695040888963407ull;
		a[i] = (float)((int64_t)(st >> 33) - (1ll << 30)) / (float)(1 << 28);
		st = st * 6364136223846793005ull + 1442695040888963407ull;
		b[i] = (float)((int64_t)(st >> 33) - (1ll << 30)) / (float)(1 << 26);
	}
	for (int i = 0; i < 65536; i++)
		h[i] = (uint16_t)i;
	int checked = 0;
	for (int n = 0; n <= N; n = n < 100 ? n + 1 : N + 1) {
		float d1 = ref->dot(a, b, n), d2 = v->dot(a, b, n);
		cr_assert(memcmp(&d1, &d2, sizeof d1) == 0, "%s dot n=%d: %.9g vs %.9g",
		          moe_isa_name(level), n, d2, d1);
		memcpy(y1, b, sizeof(float) * N);
		memcpy(y2, b, sizeof(float) * N);
		ref->axpy(y1, 0.377f, a, n);
		v->axpy(y2, 0.377f, a, n);
		cr_assert(memcmp(y1, y2, sizeof(float) * N) == 0, "%s axpy n=%d",
		          moe_isa_name(level), n);
		/* dot_rows over m rows of a (stride 103) with b, into y (stride 3) */
		for (int m = 0; m <= 17 && (int64_t)(m - 1) * 103 + n <= N && 3 * m <= N; m++) {
			memcpy(y1, b, sizeof(float) * N);
			memcpy(y2, b, sizeof(float) * N);
			ref->dot_rows(y1, 3, a, 103, m, b, n);
			v->dot_rows(y2, 3, a, 103, m, b, n);
			cr_assert(memcmp(y1, y2, sizeof(float) * N) == 0, "%s dot_rows m=%d n=%d",
			          moe_isa_name(level), m, n);
			for (int r = 0; r < m; r++) {
				const float d = ref->dot(a + r * 103, b, n);
				cr_assert(memcmp(&y1[3 * r], &d, sizeof d) == 0,
				          "reference dot_rows m=%d n=%d row %d is not dot's", m, n,
				          r);
			}
		}
		/* axpy_rows over m rows of a (stride 101) with weights b */
		for (int m = 0; m <= 9 && (int64_t)(m - 1) * 101 + n <= N; m += 3) {
			ref->axpy_rows(y1, b, a, 101, m, n);
			v->axpy_rows(y2, b, a, 101, m, n);
			cr_assert(memcmp(y1, y2, sizeof(float) * N) == 0, "%s axpy_rows m=%d n=%d",
			          moe_isa_name(level), m, n);
		}
		ref->scale(y1, -1.618f, n);
		v->scale(y2, -1.618f, n);
		cr_assert(memcmp(y1, y2, sizeof(float) * N) == 0, "%s scale n=%d",
		          moe_isa_name(level), n);
		checked += 3;
	}
	/* fixed-point accumulation: the values of a and some at the
	 * edges (ties, saturation, infinities, NaN, tiny) */
	{
		float e[N];
		int64_t acc1[N], acc2[N];
		memcpy(e, a, sizeof e);
		const float edge[] = {0.5f * 0x1p-32f, -0.5f * 0x1p-32f,
		                      1.5f * 0x1p-32f, -2.5f * 0x1p-32f,
		                      8388608.0f,      -8388608.0f,
		                      8388607.5f,      1e30f,
		                      -1e30f,          INFINITY,
		                      -INFINITY,       NAN,
		                      1e-45f,          -0.0f,
		                      3.0f * 0x1p-33f};
		for (size_t k = 0; k < sizeof(edge) / sizeof(edge[0]); k++)
			e[7 * k + 3] = edge[k];
		for (int k = 0; k < N; k++)
			acc1[k] = acc2[k] = (int64_t)k * 977 - 400000;
		const float ws[] = {1.0f, -0.731f, 3.5f};
		for (int wi = 0; wi < 3; wi++)
			for (int n = 0; n <= N; n = n < 40 ? n + 1 : N + 1) {
				ref->fix_axpy(acc1, ws[wi], e, n);
				v->fix_axpy(acc2, ws[wi], e, n);
				cr_assert(memcmp(acc1, acc2, sizeof acc1) == 0,
				          "%s fix_axpy w=%g n=%d", moe_isa_name(level), ws[wi], n);
			}
	}
	ref->f16_to_f32(f1, h, 65536);
	v->f16_to_f32(f2, h, 65536);
	for (int i = 0; i < 65536; i++) {
		if (f1[i] != f1[i]) {
			cr_assert(f2[i] != f2[i], "%s f16 %04x: NaN vs %g", moe_isa_name(level), i,
			          f2[i]);
			continue;
		}
		cr_assert(memcmp(&f1[i], &f2[i], sizeof(float)) == 0, "%s f16 %04x: %g vs %g",
		          moe_isa_name(level), i, f2[i], f1[i]);
		checked++;
	}
	checked += kv_rows_equal_references(ref, v, level);
	cr_assert_gt(checked, 0, "%s: nothing compared", moe_isa_name(level));
	cr_log_info("%s: %d vector op cases equal to the references", moe_isa_name(level), checked);
	free(f2);
	free(f1);
	free(h);
	free(y2);
	free(y1);
	free(b);
	free(a);
}

ISA_SIMD_TESTS(dot, vec_ops_equal_references, vec_ops_equal_references)
