/* bench.c - `moemesh bench NAME [ARGS...]`: the table of benchmarks. */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/commands.h"

const moe_bench moe_benches[] = {
    {"kernels", "STREAM triad, GEMV bandwidth and GEMM throughput per weight type",
     moe_bench_kernels},
    {"tokenizer", "tokenizer encode/decode MB/s on mixed text, one core", moe_bench_tokenizer},
    {"e2e", "single-process prefill / decode tok/s of a model vs the memory roofline",
     moe_bench_e2e},
    {"cluster", "decode tok/s with 0-3 workers, dispatch round trip vs raw TCP, shard load",
     moe_bench_cluster},
    {NULL, NULL, NULL},
};

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
