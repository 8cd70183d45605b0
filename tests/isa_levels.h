/*
 * isa_levels.h - for the kernel tests (test_matmul, test_dot, test_expert_ffn):
 * one Criterion test per ISA level, and a visible report of skipped tests.
 *
 * A check that runs at one level, or compares one level with the scalar
 * reference, is written once as a function of the level and instantiated as
 * one test per level this build has kernels for (ISA_LEVEL_TESTS: scalar and
 * the SIMD levels; ISA_SIMD_TESTS: the SIMD levels only): x86-64 builds have
 * avx2 and avx512, aarch64 Linux builds neon (the NEON kernels of an x86 build
 * do not exist; ctest's neon_cross runs them under qemu).  Each such test
 * starts with isa_level_require, which skips it (cr_skip_test) when the CPU
 * cannot run the level or the level is above the one the process started with
 * (MOEMESH_ISA=avx2 keeps AVX-512 code away from valgrind, MOEMESH_ISA=scalar
 * leaves only the scalar tests).  The checks themselves count what they
 * compared and assert that the count is not 0.
 *
 * Criterion counts a skipped test as neither passed nor failed, keeps the exit
 * status 0 (ctest reports the program as passed) and, without --verbose, prints
 * nothing about it.  So the report hooks below print one line per skipped test,
 *     [SKIP] matmul::tiled_same_bits_avx512: avx512: this CPU cannot run it
 * and a total, on stderr (in ctest: `ctest -V`, or Testing/Temporary/
 * LastTest.log).  cr_log_warn is not an option: any warning makes Criterion
 * exit 1.  Include this header in one test file per program.
 */
#ifndef MOE_TESTS_ISA_LEVELS_H
#define MOE_TESTS_ISA_LEVELS_H

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <criterion/logging.h>
#include <criterion/options.h>
#include <stdio.h>

#include "kernels/kernels.h"

/* Skips the running test unless this CPU runs isa and isa is not above the
 * level in use when the test starts (the best one, or MOEMESH_ISA's).  Call it
 * before anything calls moe_isa_set. */
static inline void isa_level_require(moe_isa isa)
{
	const moe_isa start = moe_isa_active();

	if (!moe_isa_supported(isa))
		cr_skip_test("%s: this CPU cannot run it", moe_isa_name(isa));
	if ((int)isa > (int)start)
		cr_skip_test("%s: above MOEMESH_ISA=%s", moe_isa_name(isa), moe_isa_name(start));
}

#define ISA_TEST_AT(suite, name, fn, level, tag)                                                   \
	Test(suite, name##_##tag)                                                                  \
	{                                                                                          \
		isa_level_require(level);                                                          \
		fn(level);                                                                         \
	}

#if defined(__x86_64__)
#define ISA_SIMD_TESTS(suite, name, fn)                                                            \
	ISA_TEST_AT(suite, name, fn, MOE_ISA_AVX2, avx2)                                           \
	ISA_TEST_AT(suite, name, fn, MOE_ISA_AVX512, avx512)
#elif defined(__aarch64__) && defined(__linux__)
#define ISA_SIMD_TESTS(suite, name, fn) ISA_TEST_AT(suite, name, fn, MOE_ISA_NEON, neon)
#else
#define ISA_SIMD_TESTS(suite, name, fn)                                                            \
	Test(suite, name##_simd)                                                                   \
	{                                                                                          \
		cr_skip_test("this build has no SIMD kernels");                                    \
	}
#endif

#define ISA_LEVEL_TESTS(suite, name, fn)                                                           \
	ISA_TEST_AT(suite, name, fn, MOE_ISA_SCALAR, scalar)                                       \
	ISA_SIMD_TESTS(suite, name, fn)

/* The skip report (runs in Criterion's runner process). */
static size_t isa_levels_skipped;

ReportHook(POST_TEST)(struct criterion_test_stats *st)
{
	if (st->test_status != CR_STATUS_SKIPPED)
		return;
	isa_levels_skipped++;
	if (criterion_options.logging_threshold > CRITERION_INFO) /* else Criterion says it */
		fprintf(stderr, "[SKIP] %s::%s: %s\n", st->test->category, st->test->name,
		        st->message ? st->message : "");
}

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
	(void)st; /* its tests_skipped also counts the tests --filter left out */
	if (isa_levels_skipped > 0)
		fprintf(stderr, "[====] Skipped: %zu (neither passed nor failed)\n",
		        isa_levels_skipped);
}

#endif
