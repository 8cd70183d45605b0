/*
 * test_rng.h - the tests' one random generator (splitmix64): the state
 * rng_state, which a test sets to a seed per case, rng_next() and rng_unif().
 * Independent of the code under test and of Criterion (tests/cross's
 * neon_check includes it too).  One test program per file: the state is the
 * including file's.
 */
#ifndef MOE_TESTS_TEST_RNG_H
#define MOE_TESTS_TEST_RNG_H

#include <stdint.h>

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float rng_unif(void)
{
	return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#endif
