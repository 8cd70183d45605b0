/* cmd_bench.c - `moemesh bench NAME [ARGS...]`: runs one benchmark of the
 * bench library's table. */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "cli/cli.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench NAME [ARGS...]\n\nbenchmarks:\n");
	for (const moe_bench *b = moe_benches; b->name != NULL; b++)
		fprintf(f, "  %-12s %s\n", b->name, b->summary);
	fprintf(f, "\n'moemesh bench NAME --help' describes a benchmark.\n");
}

int moe_cmd_bench(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	for (const moe_bench *b = moe_benches; b->name != NULL; b++)
		if (strcmp(b->name, argv[1]) == 0)
			return b->run(argc - 1, argv + 1);
	fprintf(stderr, "moemesh bench: unknown benchmark '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
