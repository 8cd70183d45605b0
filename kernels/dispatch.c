/*
 * dispatch.c - which ISA level runs: CPUID/xgetbv (x86) or the kernel's
 * AT_HWCAP bits (aarch64 Linux) read once at start-up,
 * the MOEMESH_ISA override, and per level a table of dot products indexed by
 * type (filled from the scalar references, then overwritten by each per-ISA
 * file with the kernels it has); on aarch64 also which NEON build of the tile
 * kernels runs (moe_gemm_neon_level).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/quants.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
/* The bits of AT_HWCAP, as in the kernel's uapi asm/hwcap.h for arm64. */
#define MOE_HWCAP_ASIMD   (1ul << 1)
#define MOE_HWCAP_ASIMDDP (1ul << 20)
#endif

#define N_ISA 4

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static bool isa_supported[N_ISA];
static moe_vec_dot_fn dot_table[N_ISA][MOE_TYPE_COUNT];
static moe_vec_ops vec_table[N_ISA];
static _Atomic int isa_current = MOE_ISA_SCALAR;

static const char *const isa_names[N_ISA] = {"scalar", "avx2", "avx512", "neon"};

#if defined(__x86_64__) || defined(__i386__)
static uint64_t read_xcr0(void)
{
	uint32_t lo, hi;

	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (uint64_t)hi << 32 | lo;
}

static void detect(bool sup[N_ISA])
{
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return;
	bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
	bool avx = c & (1u << 28);
	if (!osxsave || !avx)
		return;
	uint64_t xcr0 = read_xcr0();
	bool ymm_os = (xcr0 & 0x6) == 0x6;   /* SSE + AVX state */
	bool zmm_os = (xcr0 & 0xe0) == 0xe0; /* opmask + ZMM_Hi256 + Hi16_ZMM */
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return;
	bool avx2 = b & (1u << 5);
	bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
	bool vnni = c & (1u << 11);

	sup[MOE_ISA_AVX2] = ymm_os && avx2 && fma && f16c;
	sup[MOE_ISA_AVX512] = sup[MOE_ISA_AVX2] && zmm_os && f && dq && bw && vl && vnni;
}
#elif defined(__aarch64__) && defined(__linux__)
/* Whether the NEON level uses the SDOT build of its int8 dots. */
static bool neon_dotprod;

/* Advanced SIMD is architecturally part of every aarch64 Linux system, but the
 * kernel says so in HWCAP_ASIMD and a CPU without it must not get NEON code;
 * dotprod (SDOT) is optional before Armv8.4 and says so in HWCAP_ASIMDDP. */
static void detect(bool sup[N_ISA])
{
	unsigned long hwcap = getauxval(AT_HWCAP);

	sup[MOE_ISA_NEON] = (hwcap & MOE_HWCAP_ASIMD) != 0;
	neon_dotprod = sup[MOE_ISA_NEON] && (hwcap & MOE_HWCAP_ASIMDDP) != 0;
}
#else
static void detect(bool sup[N_ISA])
{
	(void)sup;
}
#endif

static void fill_tables(void)
{
	for (int i = 0; i < N_ISA; i++) {
		moe_dots_ref(dot_table[i]);
		moe_vec_ops_ref(&vec_table[i]);
	}
#if defined(__x86_64__)
	if (isa_supported[MOE_ISA_AVX2]) {
		moe_dots_avx2(dot_table[MOE_ISA_AVX2]);
		moe_vec_ops_avx2(&vec_table[MOE_ISA_AVX2]);
	}
	if (isa_supported[MOE_ISA_AVX512]) {
		moe_dots_avx2(dot_table[MOE_ISA_AVX512]);
		moe_dots_avx512(dot_table[MOE_ISA_AVX512]);
		moe_dots_avx512_iq2(dot_table[MOE_ISA_AVX512]); /* needs VBMI + BITALG */
		moe_vec_ops_avx2(&vec_table[MOE_ISA_AVX512]);
		moe_vec_ops_avx512(&vec_table[MOE_ISA_AVX512]);
	}
#elif defined(__aarch64__) && defined(__linux__)
	if (isa_supported[MOE_ISA_NEON]) {
		moe_dots_neon(dot_table[MOE_ISA_NEON]);
		if (neon_dotprod)
			moe_dots_neon_dotprod(dot_table[MOE_ISA_NEON]);
	}
#endif
}

static int best_isa(void)
{
	for (int i = N_ISA - 1; i > 0; i--)
		if (isa_supported[i])
			return i;
	return MOE_ISA_SCALAR;
}

static void isa_init(void)
{
	isa_supported[MOE_ISA_SCALAR] = true;
	detect(isa_supported);
	fill_tables();

	int level = best_isa();
	const char *env = getenv("MOEMESH_ISA");
	if (env != NULL && env[0] != '\0') {
		int want = -1;

		for (int i = 0; i < N_ISA; i++)
			if (strcmp(env, isa_names[i]) == 0)
				want = i;
		if (want < 0)
			fprintf(
			    stderr,
			    "moemesh: MOEMESH_ISA=%s is not scalar|avx2|avx512|neon; using %s\n",
			    env, isa_names[level]);
		else if (!isa_supported[want])
			fprintf(stderr,
			        "moemesh: MOEMESH_ISA=%s: this CPU cannot run it; using %s\n", env,
			        isa_names[level]);
		else
			level = want;
	}
	atomic_store(&isa_current, level);
}

moe_isa moe_isa_active(void)
{
	pthread_once(&isa_once, isa_init);
	return (moe_isa)atomic_load(&isa_current);
}

const char *moe_isa_name(moe_isa isa)
{
	if ((unsigned)isa >= N_ISA)
		return "unknown";
	return isa_names[isa];
}

bool moe_isa_supported(moe_isa isa)
{
	pthread_once(&isa_once, isa_init);
	return (unsigned)isa < N_ISA && isa_supported[isa];
}

moe_err moe_isa_set(moe_isa isa)
{
	pthread_once(&isa_once, isa_init);
	if ((unsigned)isa >= N_ISA)
		return moe_fail(MOE_ERR_INVAL, "isa_set: %d is not an ISA level", (int)isa);
	if (!isa_supported[isa])
		return moe_fail(MOE_ERR_UNSUPPORTED, "isa_set: this CPU cannot run %s",
		                isa_names[isa]);
	atomic_store(&isa_current, (int)isa);
	return MOE_OK;
}

#if defined(__aarch64__) && defined(__linux__)
moe_gemm_fn moe_gemm_neon_level(moe_type t)
{
	pthread_once(&isa_once, isa_init);
	return neon_dotprod ? moe_gemm_neon_dotprod(t) : moe_gemm_neon(t);
}
#endif

moe_vec_dot_fn moe_vec_dot_get_isa(moe_type t, moe_isa isa)
{
	pthread_once(&isa_once, isa_init);
	if ((unsigned)t >= MOE_TYPE_COUNT || (unsigned)isa >= N_ISA || !isa_supported[isa])
		return NULL;
	return dot_table[isa][t];
}

moe_vec_dot_fn moe_vec_dot_get(moe_type t)
{
	return moe_vec_dot_get_isa(t, moe_isa_active());
}

const moe_vec_ops *moe_vec_ops_get_isa(moe_isa isa)
{
	pthread_once(&isa_once, isa_init);
	if ((unsigned)isa >= N_ISA || !isa_supported[isa])
		return NULL;
	return &vec_table[isa];
}

const moe_vec_ops *moe_vec_ops_get(void)
{
	return moe_vec_ops_get_isa(moe_isa_active());
}
