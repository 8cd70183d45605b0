/*
 * worker_harness.c - moe-test-worker, the tests' double of moemesh-worker:
 * `moemesh worker` (cli/cmd_worker.c, the same options) plus the faults the
 * release programs do not carry, injected through the worker's observers:
 *
 *   --die-after N     _exit(3) once N dispatches are computed, before the
 *                     Nth RESULT is sent
 *   --die-on-assign   _exit(3) when an ASSIGN arrives
 *   --error-on N[,M...]
 *                     answer the Nth (and Mth...) DISPATCH received with an
 *                     ERROR instead of computing it (1-based, at most 16)
 *   --error-from N    answer every DISPATCH from the Nth on with an ERROR
 *   --hold-assign-until FILE
 *                     when an ASSIGN arrives, wait until FILE exists (up to
 *                     60 s), then load it (a load the test can watch)
 *
 * Built by tests/CMakeLists.txt; the tests find it through MOE_TEST_WORKER.
 * Exit status 3 is what a fault test expects of a worker it made die.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/core.h"
#include "worker/worker.h"

typedef struct faults {
	long die_after; /* 0 = never */
	bool die_on_assign;
	const char *hold_until; /* NULL = do not hold */
	long error_on[16];      /* DISPATCHes answered with an ERROR (1-based) */
	int n_error_on;
	long error_from; /* 0 = never */
	uint64_t n_dispatch;
} faults;

static void die(const char *why)
{
	fprintf(stderr, "moe-test-worker: %s: exiting with status 3\n", why);
	_exit(3);
}

static void on_assign(void *ctx)
{
	const faults *f = ctx;
	if (f->die_on_assign)
		die("--die-on-assign");
	for (int t = 0; t < 60000 && access(f->hold_until, F_OK) != 0; t += 10)
		usleep(10000);
}

static void on_computed(void *ctx, uint64_t n_computed)
{
	const faults *f = ctx;
	if (f->die_after > 0 && n_computed >= (uint64_t)f->die_after)
		die("--die-after reached, the last RESULT unsent");
}

static bool fail_dispatch(void *ctx)
{
	faults *f = ctx;
	const long n = (long)++f->n_dispatch;
	bool fail = f->error_from > 0 && n >= f->error_from;
	for (int i = 0; i < f->n_error_on; i++)
		fail |= f->error_on[i] == n;
	if (fail)
		fprintf(stderr, "moe-test-worker: DISPATCH %ld answered with an ERROR\n", n);
	return fail;
}

static void adjust(struct moe_worker_opts *o, void *ctx)
{
	const faults *f = ctx;
	if (f->die_on_assign || f->hold_until != NULL)
		o->on_assign = on_assign;
	if (f->die_after > 0)
		o->on_computed = on_computed;
	if (f->n_error_on > 0 || f->error_from > 0)
		o->fail_dispatch = fail_dispatch;
	o->observer_ctx = ctx;
}

int main(int argc, char **argv)
{
	static faults f;
	char **rest = calloc((size_t)argc + 1, sizeof *rest);
	int n = 0;
	if (rest == NULL)
		return 1;
	rest[n++] = "worker";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--die-on-assign") == 0) {
			f.die_on_assign = true;
		} else if (strcmp(argv[i], "--hold-assign-until") == 0 && i + 1 < argc) {
			f.hold_until = argv[++i];
		} else if (strcmp(argv[i], "--error-on") == 0 && i + 1 < argc) {
			char *p = argv[++i], *end;
			while (*p && f.n_error_on < 16) {
				f.error_on[f.n_error_on++] = strtol(p, &end, 10);
				if (end == p || f.error_on[f.n_error_on - 1] < 1 ||
				    (*end && *end != ',')) {
					fprintf(stderr, "moe-test-worker: --error-on N[,M...]\n");
					free(rest);
					return 2;
				}
				p = end + (*end == ',');
			}
		} else if (strcmp(argv[i], "--error-from") == 0) {
			if (i + 1 >= argc ||
			    moe_parse_long(&f.error_from, argv[++i], 1, 1L << 30)) {
				fprintf(stderr, "moe-test-worker: --error-from N (N >= 1)\n");
				free(rest);
				return 2;
			}
		} else if (strcmp(argv[i], "--die-after") == 0) {
			if (i + 1 >= argc || moe_parse_long(&f.die_after, argv[++i], 1, 1L << 30)) {
				fprintf(stderr, "moe-test-worker: --die-after N (N >= 1)\n");
				free(rest);
				return 2;
			}
		} else {
			rest[n++] = argv[i];
		}
	}
	const int rc = moe_cmd_worker_with(n, rest, adjust, &f);
	free(rest);
	return rc;
}
