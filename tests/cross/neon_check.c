/*
 * neon_check.c - the kernel checks of test_dot.c and test_quants.c that matter
 * for aarch64, as a plain C program (Criterion is not available for arm64
 * here).  Built for aarch64 by tests/cross/CMakeLists.txt and run under
 * qemu-user by tests/cross/run_neon_cross.sh, once on a CPU with dotprod and
 * once on one without.
 *
 *   neon_check [--expect-isa NAME] [--expect-dotprod 0|1] [--dispatch-only]
 *
 * Checks (every failure is printed; exit 1 if any, 0 if all passed):
 *   - dispatch: the active level is NAME; HWCAP_ASIMDDP is as expected (so the
 *     caller knows which CPU qemu gave it); the NEON table holds the SDOT
 *     build exactly when HWCAP_ASIMDDP is set; x86 levels are refused;
 *   - the scalar reference against a double-precision dot of the dequantised
 *     operands (this is another architecture: char is unsigned, no x87...);
 *   - every NEON build this CPU runs (base always, SDOT where the CPU has it)
 *     against the scalar reference on seeded random rows of every dot type
 *     and several lengths, with test_dot.c's tolerances; repeated calls give
 *     the same bits; the two builds give the same bits as each other; the
 *     K-quants give the reference's bits (same integers, same float ops);
 *   - extreme rows (all +-127 activations, maximal weights);
 *   - activation quantisation bit patterns (Q8_0 ties to even, Q8_K);
 *   - the tile kernels (gemm.h) of every NEON build this CPU runs, on every
 *     rows x tokens shape 1..17 x 1..17 at shifting positions in the
 *     matrices, against the reference's dot per element bit for bit (so also
 *     batch-invariant), nothing written outside the shape; quantised rows and
 *     random-byte blocks; the level's dispatch of them (moe_gemm_get) and one
 *     product through moe_gemm_rows.
 * Expected values come from the scalar reference or from formulas written
 * here, never from the NEON code.
 */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "../test_rng.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"

#define HWCAP_BIT_ASIMDDP (1ul << 20) /* arm64 uapi asm/hwcap.h */

static int n_checks, n_failed;

/* Counts a check; prints the message if it failed. Returns ok. */
static bool check(bool ok, const char *fmt, ...)
{
	n_checks++;
	if (!ok) {
		va_list ap;

		n_failed++;
		fputs("FAIL: ", stdout);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		fputc('\n', stdout);
	}
	return ok;
}

/* ---- helpers independent of the code under test ------------------------------ */

/* fp16 bits -> value by the IEEE formula (finite values only). */
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

/* test_dot.c's lengths: one block, a few, long rows; 13 and 41 32-blocks
 * (not a multiple of the 4-block group: the leftover path runs); 421 and 1003
 * values (float tails shorter than a vector). */
static const int64_t lengths[] = {256, 768, 2048, 4096, 256 * 27, 32 * 13, 32 * 41, 421, 1003};
#define N_LENGTHS (sizeof(lengths) / sizeof(lengths[0]))

static bool is_k_quant(moe_type t)
{
	return t == MOE_TYPE_Q4_K || t == MOE_TYPE_Q5_K || t == MOE_TYPE_Q6_K ||
	       t == MOE_TYPE_Q2_K || t == MOE_TYPE_Q3_K;
}

/* The types whose dots follow the canonical block arithmetic (quants.h) at
 * every level: the NEON dot must give the reference's bits, which are the
 * x86 tiles' bits too. */
static bool is_canonical(moe_type t)
{
	return is_k_quant(t) || t == MOE_TYPE_Q8_0 || t == MOE_TYPE_Q4_0 || t == MOE_TYPE_Q5_0 ||
	       t == MOE_TYPE_IQ4_NL || t == MOE_TYPE_IQ4_XS || t == MOE_TYPE_MXFP4;
}

/* The types the NEON files implement (the rest fall back to the reference). */
static bool has_neon_kernel(moe_type t)
{
	return t == MOE_TYPE_F32 || t == MOE_TYPE_F16 || t == MOE_TYPE_BF16 || t == MOE_TYPE_Q8_0 ||
	       t == MOE_TYPE_Q4_0 || t == MOE_TYPE_Q5_0 || is_k_quant(t) || t == MOE_TYPE_IQ4_NL ||
	       t == MOE_TYPE_IQ4_XS || t == MOE_TYPE_MXFP4;
}

typedef struct case_data {
	int64_t n;
	float *x, *a;   /* inputs */
	void *w, *aq;   /* quantised weight row, activation row */
	float *wd, *ad; /* their dequantised values */
	double exact;   /* sum wd*ad in double */
	double mag;     /* sum |wd*ad| */
} case_data;

static void case_free(case_data *c)
{
	free(c->x);
	free(c->a);
	free(c->wd);
	free(c->ad);
	free(c->w);
	free(c->aq);
}

/* Builds the case as test_dot.c does; false (after reporting) on failure. */
static bool case_make(case_data *c, moe_type t, int64_t n, uint64_t seed)
{
	const moe_type_traits *tr = moe_type_get(t);

	memset(c, 0, sizeof(*c));
	c->n = n;
	c->x = malloc((size_t)n * sizeof(float));
	c->a = malloc((size_t)n * sizeof(float));
	c->wd = malloc((size_t)n * sizeof(float));
	c->ad = malloc((size_t)n * sizeof(float));
	c->w = malloc(moe_row_size(t, n));
	c->aq = malloc(moe_act_row_size(t, n));
	if (!check(c->x && c->a && c->wd && c->ad && c->w && c->aq, "out of memory"))
		goto out_free;
	rng_state = seed;
	for (int64_t i = 0; i < n; i++) {
		float scale = 0.02f + 0.5f * (float)((i / 32) % 7) / 7.0f;
		c->x[i] = rng_unif() * scale + ((i / 256) % 3 == 1 ? -0.3f * scale : 0.0f);
		c->a[i] = rng_unif() * (1.0f + (float)((i / 64) % 5));
	}
	if (!check(moe_quantize_row(t, c->w, c->x, n) == MOE_OK &&
	               moe_quantize_act(t, c->aq, c->a, n) == MOE_OK &&
	               moe_dequantize_row(t, c->wd, c->w, n) == MOE_OK &&
	               moe_dequantize_row(tr->vec_dot_type, c->ad, c->aq, n) == MOE_OK,
	           "%s n=%lld: quantise/dequantise failed", tr->name, (long long)n))
		goto out_free;
	for (int64_t i = 0; i < n; i++) {
		c->exact += (double)c->wd[i] * c->ad[i];
		c->mag += fabs((double)c->wd[i] * c->ad[i]);
	}
	if (tr->vec_dot_type == MOE_TYPE_Q8_1) {
		/* Q4_1/Q5_1: the dot takes sum(a) of a block from the activation's
		 * stored fp16 s (bytes 2-3 of each 36-byte block); m is bytes 2-3
		 * of the weight block. */
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
	return true;
out_free:
	case_free(c);
	return false;
}

/* ---- the NEON builds under test ----------------------------------------------- */

typedef struct build {
	const char *name;
	moe_vec_dot_fn dots[MOE_TYPE_COUNT];
} build;

static build builds[2];
static int n_builds;

/* The base build always; the SDOT build only where the CPU has dotprod (it
 * would stop with SIGILL otherwise). */
static void builds_init(bool dotprod)
{
	builds[0].name = "neon";
	moe_dots_ref(builds[0].dots);
	moe_dots_neon(builds[0].dots);
	n_builds = 1;
	if (dotprod) {
		builds[1].name = "neon+dotprod";
		moe_dots_ref(builds[1].dots);
		moe_dots_neon_dotprod(builds[1].dots);
		n_builds = 2;
	}
}

/* ---- checks ------------------------------------------------------------------------ */

static void check_dispatch(const char *expect_isa, int expect_dotprod, bool dotprod)
{
	moe_isa active = moe_isa_active();

	if (expect_isa != NULL)
		check(strcmp(moe_isa_name(active), expect_isa) == 0, "active ISA %s, expected %s",
		      moe_isa_name(active), expect_isa);
	if (expect_dotprod >= 0)
		check(dotprod == (expect_dotprod != 0),
		      "HWCAP_ASIMDDP is %d, expected %d (wrong qemu -cpu?)", dotprod,
		      expect_dotprod);
	check(moe_isa_supported(MOE_ISA_SCALAR) && moe_isa_supported(MOE_ISA_NEON),
	      "scalar and neon must be supported on aarch64");
	check(!moe_isa_supported(MOE_ISA_AVX2) && !moe_isa_supported(MOE_ISA_AVX512),
	      "x86 levels reported as supported");
	check(moe_isa_set(MOE_ISA_AVX2) == MOE_ERR_UNSUPPORTED, "isa_set(avx2) not refused");
	check(moe_vec_dot_get_isa(MOE_TYPE_Q4_0, MOE_ISA_AVX2) == NULL, "avx2 table handed out");
	check(moe_isa_active() == active, "a refused isa_set changed the level");
	/* The NEON table is the SDOT build exactly when the CPU has dotprod. */
	const build *want = &builds[dotprod ? 1 : 0];
	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		moe_vec_dot_fn got = moe_vec_dot_get_isa(t, MOE_ISA_NEON);
		check(got == want->dots[t], "%s: NEON table entry is not the %s build",
		      moe_type_get(t)->name, want->name);
		if (!has_neon_kernel(t))
			check(got == moe_vec_dot_get_isa(t, MOE_ISA_SCALAR),
			      "%s: expected the scalar fallback", moe_type_get(t)->name);
		else
			check(got != moe_vec_dot_get_isa(t, MOE_ISA_SCALAR),
			      "%s: NEON table holds the scalar reference", moe_type_get(t)->name);
	}
	check(moe_isa_set(MOE_ISA_NEON) == MOE_OK && moe_isa_active() == MOE_ISA_NEON &&
	          moe_vec_dot_get(MOE_TYPE_Q8_0) == want->dots[MOE_TYPE_Q8_0],
	      "isa_set(neon)");
	check(moe_isa_set(MOE_ISA_SCALAR) == MOE_OK &&
	          moe_vec_dot_get(MOE_TYPE_Q8_0) ==
	              moe_vec_dot_get_isa(MOE_TYPE_Q8_0, MOE_ISA_SCALAR),
	      "isa_set(scalar)");
	moe_isa_set(active);
}

/* test_dot.c's tolerances: reference vs double 4e-6 (integer dots) or
 * n * 1.2e-7 (float rows) of sum |w a|; SIMD vs reference 2e-6 or n * 1.2e-7. */
static void check_dots(void)
{
	int cases = 0;

	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		const char *tn = moe_type_get(t)->name;
		bool per_value = moe_type_get(t)->block_size == 1;
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);

		if (!check(ref != NULL, "%s: no reference", tn))
			continue;
		for (size_t li = 0; li < N_LENGTHS; li++) {
			case_data c;
			float want = NAN, got[2];

			if (moe_row_size(t, lengths[li]) == 0)
				continue;
			if (!case_make(&c, t, lengths[li], 7000 + ti * 10 + li))
				continue;
			ref(c.n, &want, c.w, c.aq);
			double tol_ref = (per_value ? (double)c.n * 1.2e-7 : 4e-6) * c.mag + 1e-30;
			check(fabs(want - c.exact) <= tol_ref,
			      "reference %s n=%lld: %.9g vs double %.9g (tol %.3g)", tn,
			      (long long)c.n, want, c.exact, tol_ref);
			for (int b = 0; b < n_builds; b++) {
				float again = NAN;

				got[b] = NAN;
				builds[b].dots[t](c.n, &got[b], c.w, c.aq);
				builds[b].dots[t](c.n, &again, c.w, c.aq);
				double tol = (per_value ? (double)c.n * 1.2e-7 : 2e-6) * c.mag;
				check(fabs((double)got[b] - want) <= tol,
				      "%s %s n=%lld: %.9g vs ref %.9g (tol %.3g)", builds[b].name,
				      tn, (long long)c.n, got[b], want, tol);
				check(memcmp(&got[b], &again, sizeof(float)) == 0,
				      "%s %s n=%lld: two calls differ", builds[b].name, tn,
				      (long long)c.n);
				if (is_canonical(t))
					check(memcmp(&got[b], &want, sizeof(float)) == 0,
					      "%s %s n=%lld: %.9g is not the reference's bits %.9g",
					      builds[b].name, tn, (long long)c.n, got[b], want);
				cases++;
			}
			if (n_builds == 2)
				check(memcmp(&got[0], &got[1], sizeof(float)) == 0,
				      "%s n=%lld: base %.9g and SDOT %.9g builds differ", tn,
				      (long long)c.n, got[0], got[1]);
			case_free(&c);
		}
	}
	printf("dots: %d (type, length, build) cases against the reference\n", cases);
}

/* test_dot.c's extremes: q8 activations of +-127 everywhere and maximal weights
 * (pattern 1 makes every Q4_0/Q5_0 product its largest, all one sign). */
static void check_extremes(void)
{
	enum { N = 1024 };
	static float x[N], a[N];
	static uint8_t w[N * 4], aq[N * 4];

	for (size_t ti = 0; ti < N_DOT_TYPES; ti++) {
		moe_type t = dot_types[ti];
		for (int pattern = 0; pattern < 3; pattern++) {
			for (int i = 0; i < N; i++) {
				float sx = (i % 2) ? 1.0f : -1.0f;
				x[i] = pattern == 0 ? sx : pattern == 1 ? -1.0f : 1.0f;
				if (i % 32 == 0)
					x[i] = pattern == 2 ? 1.0f : -1.0f;
				a[i] = pattern == 1 ? -1.0f : (i % 3 ? 1.0f : -1.0f);
			}
			if (!check(moe_quantize_row(t, w, x, N) == MOE_OK &&
			               moe_quantize_act(t, aq, a, N) == MOE_OK,
			           "extremes: quantise %s", moe_type_get(t)->name))
				continue;
			float want;
			moe_vec_dot_get_isa(t, MOE_ISA_SCALAR)(N, &want, w, aq);
			for (int b = 0; b < n_builds; b++) {
				float got;
				builds[b].dots[t](N, &got, w, aq);
				check(fabs((double)got - want) <= 1e-5 * (fabs(want) + N),
				      "extremes %s %s pattern %d: %.9g vs %.9g", builds[b].name,
				      moe_type_get(t)->name, pattern, got, want);
			}
		}
	}
}

/* Signed int8 weights at both ends (-128 included, which no quantiser writes but
 * a file may hold) against +-127 activations, for Q8_0: the base build's int16
 * products must not overflow. Expected value by hand. */
static void check_q8_0_full_range(void)
{
	enum { NB = 9 };
	moe_block_q8_0 w[NB], a[NB];
	double exact = 0;

	for (int b = 0; b < NB; b++) {
		w[b].d = 0x3c00; /* 1.0 */
		a[b].d = 0x3800; /* 0.5 */
		for (int j = 0; j < 32; j++) {
			w[b].qs[j] = (int8_t)((j + b) % 3 == 0 ? -128 : (j % 2 ? 127 : -127));
			a[b].qs[j] = (int8_t)(j % 4 < 2 ? -127 : 127);
			exact += 0.5 * w[b].qs[j] * a[b].qs[j];
		}
	}
	for (int b = 0; b < n_builds; b++) {
		float got;
		builds[b].dots[MOE_TYPE_Q8_0](32 * NB, &got, w, a);
		check((double)got == exact, "%s Q8_0 full range: %.9g vs %.9g", builds[b].name, got,
		      exact);
	}
}

static int8_t byte_i8(const uint8_t *b, int i)
{
	return (int8_t)b[i];
}

/* test_quants.c's activation bit patterns. */
static void check_act_bits(void)
{
	/* Q8_0: amax 127 gives d = 1 and exact ties, rounded to even. */
	float x[256];
	uint8_t b[292];

	for (int j = 0; j < 32; j++)
		x[j] = (float)(j - 16) + 0.5f;
	x[31] = 127.0f;
	check(moe_quantize_act(MOE_TYPE_Q4_0, b, x, 32) == MOE_OK, "act Q8_0");
	check((b[0] | b[1] << 8) == 0x3c00, "act Q8_0: d is not 1.0");
	for (int j = 0; j < 31; j++)
		check(byte_i8(b, 2 + j) == (int)nearbyint(x[j]), "act Q8_0 x=%g: %d", x[j],
		      byte_i8(b, 2 + j));
	check(byte_i8(b, 33) == 127, "act Q8_0: 127");

	/* Q8_K: the value of largest magnitude is positive, so d < 0. */
	for (int j = 0; j < 256; j++)
		x[j] = (float)((j * 37) % 255 - 127) * 0.5f;
	for (int j = 0; j < 10; j++)
		x[j] = 0.25f * j;
	x[10] = 63.5f;
	x[11] = -63.5f;
	check(moe_quantize_act(MOE_TYPE_Q4_K, b, x, 256) == MOE_OK, "act Q8_K");
	float iscale = -127.0f / 63.5f, d;
	memcpy(&d, b, 4);
	check(d == 1.0f / iscale, "act Q8_K: d %g", d);
	for (int g = 0; g < 16; g++) {
		int sum = 0;
		for (int l = 0; l < 16; l++) {
			int j = 16 * g + l;
			int q = (int)nearbyintf(iscale * x[j]);
			q = q > 127 ? 127 : q;
			check(byte_i8(b, 4 + j) == q, "act Q8_K value %d: %d vs %d", j,
			      byte_i8(b, 4 + j), q);
			sum += q;
		}
		int16_t bs;
		memcpy(&bs, b + 260 + 2 * g, 2);
		check(bs == sum, "act Q8_K bsum %d: %d vs %d", g, bs, sum);
	}
}

/* IQ3_XXS, IQ3_S, IQ1_S, IQ1_M (no quantiser: llama-quantize makes them):
 * blocks of random bytes, with a sane fp16 scale or (every other case) as
 * they come (NaN / Inf scales), against Q8_K activations; each build's dot
 * must give the reference's bits, and the NEON table must hold it. */
static void check_iq13_dots(bool dotprod)
{
	static const moe_type types[] = {MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_S, MOE_TYPE_IQ1_S,
	                                 MOE_TYPE_IQ1_M};
	static const int64_t ns[] = {256, 768, 4096, 256 * 27};
	int cases = 0;

	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		const moe_type t = types[ti];
		const moe_type_traits *tr = moe_type_get(t);
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		check(ref != NULL &&
		          moe_vec_dot_get_isa(t, MOE_ISA_NEON) == builds[dotprod ? 1 : 0].dots[t] &&
		          builds[0].dots[t] != ref,
		      "%s: NEON table entry", tr->name);
		for (size_t li = 0; li < sizeof(ns) / sizeof(ns[0]); li++)
			for (int sane = 0; sane < 2; sane++) {
				const int64_t n = ns[li];
				uint8_t *w = malloc(moe_row_size(t, n));
				void *aq = malloc(moe_act_row_size(t, n));
				float *a = malloc(sizeof(float) * (size_t)n);
				if (!check(w && aq && a, "out of memory"))
					goto next;
				rng_state = 9100 + ti * 100 + li * 2 + (uint64_t)sane;
				for (size_t i = 0; i < moe_row_size(t, n); i++)
					w[i] = (uint8_t)(rng_next() >> 56);
				for (int64_t k = 0; sane && k < n / 256; k++) {
					uint8_t *blk = w + (size_t)k * tr->type_size;
					uint16_t d = (uint16_t)(0x1400 + rng_next() % 0x1800);
					if (t == MOE_TYPE_IQ1_M)
						for (int q = 0; q < 4; q++)
							blk[49 + 2 * q] =
							    (uint8_t)((blk[49 + 2 * q] & 15) |
							              ((d >> (4 * q)) & 15) << 4);
					else
						memcpy(blk, &d, 2);
				}
				for (int64_t i = 0; i < n; i++)
					a[i] = rng_unif() * (1.0f + (float)((i / 64) % 5));
				if (!check(moe_quantize_act(t, aq, a, n) == MOE_OK, "act %s",
				           tr->name))
					goto next;
				float want = NAN;
				ref(n, &want, w, aq);
				for (int b = 0; b < n_builds; b++) {
					float got = NAN;
					builds[b].dots[t](n, &got, w, aq);
					check(memcmp(&got, &want, sizeof(float)) == 0 ||
					          (isnan(got) && isnan(want)),
					      "%s %s n=%lld %s: %.9g is not the reference's bits "
					      "%.9g",
					      builds[b].name, tr->name, (long long)n,
					      sane ? "sane" : "random bytes", got, want);
					cases++;
				}
			next:
				free(w);
				free(aq);
				free(a);
			}
	}
	printf("IQ3/IQ1 dots: %d (type, length, build) cases bit for bit\n", cases);
}

/* IQ2_XXS, IQ2_XS, IQ2_S (no quantiser here): blocks of random bytes with a
 * sane fp16 d against random Q8_K activations; each build's dot gives the
 * reference's bits, and the reference the dequantised double dot within
 * 4e-6 of sum |w a|. */
static void check_iq2(void)
{
	static const moe_type types[] = {MOE_TYPE_IQ2_XXS, MOE_TYPE_IQ2_XS, MOE_TYPE_IQ2_S};
	static const int64_t lens[] = {256, 768, 4096, 256 * 27};
	int cases = 0;

	for (size_t ti = 0; ti < 3; ti++)
		for (size_t li = 0; li < 4; li++) {
			const moe_type t = types[ti];
			const int64_t n = lens[li];
			const size_t bs = moe_type_get(t)->type_size;
			uint8_t *w = malloc(moe_row_size(t, n));
			void *aq = malloc(moe_act_row_size(t, n));
			float *a = malloc(sizeof(float) * (size_t)n);
			float *wd = malloc(sizeof(float) * (size_t)n);
			float *ad = malloc(sizeof(float) * (size_t)n);
			if (!check(w && aq && a && wd && ad, "out of memory"))
				goto next;
			rng_state = 9100 + ti * 10 + li;
			for (size_t k = 0; k < moe_row_size(t, n); k++)
				w[k] = (uint8_t)(rng_next() >> 56);
			for (int64_t b = 0; b < n / 256; b++) { /* d: +-2^-10 .. 2^-4 */
				uint64_t r = rng_next();
				uint16_t d = (uint16_t)((r & 1) << 15 | (5 + r % 7) << 10 |
				                        ((r >> 8) & 1023));
				w[b * bs] = (uint8_t)d;
				w[b * bs + 1] = (uint8_t)(d >> 8);
			}
			for (int64_t i = 0; i < n; i++)
				a[i] = rng_unif() * (1.0f + (float)((i / 64) % 5));
			if (!check(moe_quantize_act(t, aq, a, n) == MOE_OK &&
			               moe_dequantize_row(t, wd, w, n) == MOE_OK &&
			               moe_dequantize_row(MOE_TYPE_Q8_K, ad, aq, n) == MOE_OK,
			           "%s: quantise/dequantise failed", moe_type_get(t)->name))
				goto next;
			double exact = 0, mag = 0;
			for (int64_t i = 0; i < n; i++) {
				exact += (double)wd[i] * ad[i];
				mag += fabs((double)wd[i] * ad[i]);
			}
			float want = NAN;
			moe_vec_dot_get_isa(t, MOE_ISA_SCALAR)(n, &want, w, aq);
			check(fabs(want - exact) <= 4e-6 * mag + 1e-30,
			      "reference %s n=%lld: %.9g vs double %.9g", moe_type_get(t)->name,
			      (long long)n, want, exact);
			check(moe_vec_dot_get_isa(t, MOE_ISA_NEON) !=
			          moe_vec_dot_get_isa(t, MOE_ISA_SCALAR),
			      "%s: NEON table holds the scalar reference", moe_type_get(t)->name);
			for (int b = 0; b < n_builds; b++) {
				float got = NAN;
				builds[b].dots[t](n, &got, w, aq);
				check(memcmp(&got, &want, sizeof(float)) == 0,
				      "%s %s n=%lld: %.9g is not the reference's bits %.9g",
				      builds[b].name, moe_type_get(t)->name, (long long)n, got,
				      want);
				cases++;
			}
		next:
			free(w), free(aq), free(a), free(wd), free(ad);
		}
	printf("iq2: %d (type, length, build) cases against the reference\n", cases);
}

/* The NEON tile kernels (gemm.h): the types that have them. */
static const moe_type tile_types[] = {
    MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K,   MOE_TYPE_Q8_0,   MOE_TYPE_Q4_0, MOE_TYPE_Q5_0,
    MOE_TYPE_Q2_K, MOE_TYPE_Q3_K, MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_MXFP4};
#define N_TILE_TYPES (sizeof(tile_types) / sizeof(tile_types[0]))

/* The byte offsets of a block's fp16 scales (d, and Q4_K/Q5_K/Q2_K's dmin);
 * none for MXFP4 (its E8M0 byte is set apart). */
static int block_scales(moe_type t, size_t off[2])
{
	if (t == MOE_TYPE_MXFP4)
		return 0;
	if (t == MOE_TYPE_Q4_K || t == MOE_TYPE_Q5_K) {
		off[0] = 0, off[1] = 2;
		return 2;
	}
	if (t == MOE_TYPE_Q2_K) {
		off[0] = 80, off[1] = 82;
		return 2;
	}
	off[0] = t == MOE_TYPE_Q6_K ? 208 : t == MOE_TYPE_Q3_K ? 108 : 0;
	return 1;
}

enum { TILE_MAX = 17, TILE_LDY = TILE_MAX + 3 };

/* Weights of TILE_MAX rows and activations of TILE_MAX tokens of type t:
 * quantised from seeded random floats, or (random) random bytes with sane
 * fp16 scales of either sign (every scale and min code, Q8_0's -128), and
 * every other token's int8 values random bytes. */
static bool tile_data(moe_type t, int64_t n, bool random, uint8_t *w, uint8_t *xq, uint64_t seed)
{
	const moe_type_traits *tr = moe_type_get(t);
	const size_t ws = moe_row_size(t, n), xs = moe_act_row_size(t, n);
	float *f = malloc(sizeof(float) * (size_t)n);

	if (!check(f != NULL, "out of memory"))
		return false;
	rng_state = seed;
	bool ok = true;
	for (int r = 0; r < TILE_MAX && ok; r++) {
		uint8_t *row = w + (size_t)r * ws;
		if (random) {
			size_t off[2];
			int ns = block_scales(t, off);
			for (size_t k = 0; k < ws; k++)
				row[k] = (uint8_t)(rng_next() >> 56);
			for (int64_t b = 0; b < n / tr->block_size; b++)
				for (int s = 0; s < ns; s++) {
					uint64_t v = rng_next();
					uint16_t d = (uint16_t)((v & 1) << 15 |
					                        (0x1400 + (v >> 8) % 0x1800));
					memcpy(row + (size_t)b * tr->type_size + off[s], &d, 2);
				}
			/* MXFP4: exponents 2^-28 .. 2^21 (no NaN block, e = 255) */
			for (int64_t b = 0; t == MOE_TYPE_MXFP4 && b < n / tr->block_size; b++)
				row[(size_t)b * tr->type_size] = (uint8_t)(100 + rng_next() % 50);
		} else {
			float scale = 0.05f + 0.1f * (float)r;
			for (int64_t i = 0; i < n; i++)
				f[i] = rng_unif() * scale +
				       ((i / 256 + r) % 3 == 1 ? -0.3f * scale : 0.0f);
			ok = check(moe_quantize_row(t, row, f, n) == MOE_OK, "tiles: quantise %s",
			           tr->name);
		}
	}
	for (int tk = 0; tk < TILE_MAX && ok; tk++) {
		for (int64_t i = 0; i < n; i++)
			f[i] = rng_unif() * (1.0f + (float)((i / 64 + tk) % 5));
		ok = check(moe_quantize_act(t, xq + (size_t)tk * xs, f, n) == MOE_OK,
		           "tiles: quantise activations %s", tr->name);
		if (random && tk % 2 == 1) {
			/* every other token's int8 values random too (-128
			 * included, which moe_quantize_act never writes: the
			 * int16 sums must hold for any activation byte); its d and
			 * Q8_K bsums kept */
			const bool q8k = moe_type_get(tr->vec_dot_type)->block_size == 256;
			const size_t abs = q8k ? sizeof(moe_block_q8_K) : sizeof(moe_block_q8_0);
			const size_t qoff =
			    q8k ? offsetof(moe_block_q8_K, qs) : offsetof(moe_block_q8_0, qs);
			for (size_t b = 0; b < xs / abs; b++)
				for (int k = 0; k < (q8k ? 256 : 32); k++)
					xq[(size_t)tk * xs + b * abs + qoff + (size_t)k] =
					    (uint8_t)(rng_next() >> 56);
		}
	}
	free(f);
	return ok;
}

/* One type's tiles of every build this CPU runs (build b: 0 base, 1 SDOT)
 * against want[t][r] = the reference dot of row r and token t. */
static int check_tile_shapes(moe_type t, int64_t n, const char *data, const uint8_t *w,
                             const uint8_t *xq, const float want[TILE_MAX][TILE_MAX])
{
	const size_t ws = moe_row_size(t, n), xs = moe_act_row_size(t, n);
	const uint32_t sentinel = 0x7fc0dead;
	static float y[TILE_MAX * TILE_LDY];
	int cases = 0;

	for (int b = 0; b < n_builds; b++) {
		moe_gemm_fn gemm = b == 0 ? moe_gemm_neon(t) : moe_gemm_neon_dotprod(t);
		if (!check(gemm != NULL, "%s %s: no tile kernel", builds[b].name,
		           moe_type_get(t)->name))
			continue;
		for (int nr = 1; nr <= TILE_MAX; nr++)
			for (int nt = 1; nt <= TILE_MAX; nt++) {
				/* the shape's place in the matrices moves with it */
				const int r0 = (nr * 7 + nt) % (TILE_MAX - nr + 1);
				const int t0 = (nt * 5 + nr) % (TILE_MAX - nt + 1);
				int bad = 0, stray = 0;

				for (size_t k = 0; k < sizeof(y) / sizeof(y[0]); k++)
					memcpy(&y[k], &sentinel, 4);
				gemm(n, y, TILE_LDY, w + (size_t)r0 * ws, ws, nr,
				     xq + (size_t)t0 * xs, xs, nt);
				for (int tk = 0; tk < TILE_MAX; tk++)
					for (int r = 0; r < TILE_LDY; r++) {
						const float *got = &y[tk * TILE_LDY + r];
						if (tk < nt && r < nr) {
							if (memcmp(got, &want[t0 + tk][r0 + r],
							           4) != 0 &&
							    bad++ == 0)
								printf("  %s %s %s %dx%d: row %d "
								       "token %d: "
								       "%.9g, reference %.9g\n",
								       builds[b].name,
								       moe_type_get(t)->name, data,
								       nr, nt, r0 + r, t0 + tk,
								       *got, want[t0 + tk][r0 + r]);
						} else if (memcmp(got, &sentinel, 4) != 0) {
							stray++;
						}
					}
				check(bad == 0,
				      "%s %s %s tiles %d rows x %d tokens: %d of %d not the "
				      "reference's bits",
				      builds[b].name, moe_type_get(t)->name, data, nr, nt, bad,
				      nr * nt);
				check(stray == 0,
				      "%s %s %s tiles %d rows x %d tokens: %d writes outside",
				      builds[b].name, moe_type_get(t)->name, data, nr, nt, stray);
				cases++;
			}
	}
	return cases;
}

/* Which tile kernels the level hands out, and one product through them. */
static void check_tile_dispatch(bool dotprod, moe_type t, int64_t n, const uint8_t *w,
                                const uint8_t *xq, const float want[TILE_MAX][TILE_MAX])
{
	const moe_isa active = moe_isa_active();
	moe_gemm_fn build_fn = dotprod ? moe_gemm_neon_dotprod(t) : moe_gemm_neon(t);
	static float y[TILE_MAX * TILE_LDY];

	check(moe_isa_set(MOE_ISA_SCALAR) == MOE_OK && moe_gemm_get(t) == NULL,
	      "%s: scalar level hands out a tile kernel", moe_type_get(t)->name);
	check(moe_isa_set(MOE_ISA_NEON) == MOE_OK && moe_gemm_get(t) == build_fn,
	      "%s: NEON level's tile kernel is not the %s build", moe_type_get(t)->name,
	      dotprod ? "SDOT" : "base");
	/* rows 3..16 x 11 tokens, as the matrix products call them */
	if (check(moe_gemm_rows(y, TILE_LDY, w, t, 3, 16, n, xq, 11) == MOE_OK, "gemm_rows %s",
	          moe_type_get(t)->name)) {
		int bad = 0;
		for (int tk = 0; tk < 11; tk++)
			for (int r = 3; r < 16; r++)
				bad += memcmp(&y[tk * TILE_LDY + r - 3], &want[tk][r], 4) != 0;
		check(bad == 0,
		      "%s: gemm_rows at the NEON level: %d of %d not the reference's bits",
		      moe_type_get(t)->name, bad, 13 * 11);
	}
	moe_isa_set(active);
}

static void check_tiles(bool dotprod)
{
	static float want[TILE_MAX][TILE_MAX];
	int cases = 0;

	for (size_t ti = 0; ti < N_TILE_TYPES; ti++) {
		const moe_type t = tile_types[ti];
		/* K-quants 2 blocks, 32-blocks 5 (not a multiple of 2 or 4) */
		const int64_t n = moe_type_get(t)->block_size == 256 ? 512 : 160;
		const size_t ws = moe_row_size(t, n), xs = moe_act_row_size(t, n);
		moe_vec_dot_fn ref = moe_vec_dot_get_isa(t, MOE_ISA_SCALAR);
		uint8_t *w = malloc(ws * TILE_MAX), *xq = malloc(xs * TILE_MAX);

		if (!check(w != NULL && xq != NULL && ref != NULL, "tiles: setup"))
			goto next;
		for (int random = 0; random < 2; random++) {
			if (!tile_data(t, n, random, w, xq, 8800 + ti * 10 + (uint64_t)random))
				continue;
			for (int tk = 0; tk < TILE_MAX; tk++)
				for (int r = 0; r < TILE_MAX; r++)
					ref(n, &want[tk][r], w + (size_t)r * ws,
					    xq + (size_t)tk * xs);
			cases += check_tile_shapes(t, n, random ? "random bytes" : "quantised", w,
			                           xq, want);
			if (!random)
				check_tile_dispatch(dotprod, t, n, w, xq, want);
		}
	next:
		free(w);
		free(xq);
	}
	for (moe_type t = 0; t < MOE_TYPE_COUNT; t++) {
		bool listed = false;
		for (size_t ti = 0; ti < N_TILE_TYPES; ti++)
			listed |= tile_types[ti] == t;
		check(listed || (moe_gemm_neon(t) == NULL && moe_gemm_neon_dotprod(t) == NULL),
		      "type %d: a NEON tile kernel not checked here", (int)t);
	}
	printf("tiles: %d (type, data, build, rows x tokens) shapes bit for bit\n", cases);
}

int main(int argc, char **argv)
{
	const char *expect_isa = NULL;
	int expect_dotprod = -1;
	bool dispatch_only = false;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--expect-isa") == 0 && i + 1 < argc)
			expect_isa = argv[++i];
		else if (strcmp(argv[i], "--expect-dotprod") == 0 && i + 1 < argc)
			expect_dotprod = atoi(argv[++i]);
		else if (strcmp(argv[i], "--dispatch-only") == 0)
			dispatch_only = true;
		else {
			fprintf(stderr,
			        "usage: %s [--expect-isa NAME] [--expect-dotprod 0|1] "
			        "[--dispatch-only]\n",
			        argv[0]);
			return 2;
		}
	}
	bool dotprod = (getauxval(AT_HWCAP) & HWCAP_BIT_ASIMDDP) != 0;
	builds_init(dotprod);
	printf("CPU: dotprod %s; active ISA %s\n", dotprod ? "yes" : "no",
	       moe_isa_name(moe_isa_active()));
	check_dispatch(expect_isa, expect_dotprod, dotprod);
	if (!dispatch_only) {
		check_dots();
		check_extremes();
		check_iq2();
		check_q8_0_full_range();
		check_act_bits();
		check_iq13_dots(dotprod);
		check_tiles(dotprod);
	}
	printf("%d checks, %d failed\n", n_checks, n_failed);
	return n_failed ? 1 : 0;
}
