/*
 * fuzz.h - what the libFuzzer harnesses of tests/fuzz share: where the data
 * they load once lies (the source tree's demo model and fixtures, found
 * through MOE_SOURCE_DIR or the tree this was built from) and a failure that
 * stops the fuzzer when that data cannot be loaded (a harness without its
 * model would fuzz nothing).
 */
#ifndef MOE_TESTS_FUZZ_H
#define MOE_TESTS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/core.h"

/* libFuzzer's entry points. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* path under the source tree (MOE_SOURCE_DIR, else the tree of this build),
 * in a static buffer: valid until the next call. */
static inline const char *fuzz_source_path(const char *rel)
{
	static char buf[4096];
	const char *root = getenv("MOE_SOURCE_DIR");
	if (root == NULL || root[0] == '\0')
		root = MOE_FUZZ_SOURCE_DIR;
	snprintf(buf, sizeof buf, "%s/%s", root, rel);
	return buf;
}

/* A harness's set-up failed: say what and stop (exit is right here: this is
 * a test program, not the library). */
static inline void fuzz_setup_failed(const char *what, moe_err err)
{
	fprintf(stderr, "fuzz set-up: %s: %s (%s)\n", what, moe_err_name(err), moe_err_detail());
	exit(2);
}

#endif
