/*
 * cpu_x86.h - CPU features past an x86 ISA level's required set that a
 * kernel file checks for itself before handing out its kernels (the level's
 * own checks: dispatch.c).  Header-only, so the files of one level can share
 * it without a link dependency; x86-64 only.
 */
#ifndef MOE_KERNELS_CPU_X86_H
#define MOE_KERNELS_CPU_X86_H

#include <cpuid.h>
#include <stdatomic.h>
#include <stdbool.h>

/* Whether this CPU has AVX512_VBMI (CPUID 7.0 ECX bit 1) and AVX512_BITALG
 * (bit 12): Ice Lake and later Intel cores, Zen 4 and Zen 5, not Skylake-X or
 * Cascade Lake.  CPUID is asked once per including file; the answer is kept
 * in an atomic (every writer stores the same), so threads may ask at once. */
static inline bool moe_x86_have_vbmi_bitalg(void)
{
	static _Atomic int ok = -1;
	int v = atomic_load_explicit(&ok, memory_order_relaxed);
	if (v < 0) {
		unsigned a, b, c, d;
		v = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 1)) && (c & (1u << 12));
		atomic_store_explicit(&ok, v, memory_order_relaxed);
	}
	return v != 0;
}

#endif
