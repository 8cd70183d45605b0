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
 *   - activation quantisation bit patterns (Q8_0 ties to even, Q8_K).
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
	}
	printf("%d checks, %d failed\n", n_checks, n_failed);
	return n_failed ? 1 : 0;
}
