/*
 * bench.h - the benchmarks behind `moemesh bench NAME`. Each takes the
 * arguments after its name (argv[0] is the name) and returns an exit status
 * like the commands (0 ok, 1 runtime error, 2 usage).
 */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

typedef struct moe_bench {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
} moe_bench;

/* The table of benchmarks, terminated by an entry with name NULL. */
extern const moe_bench moe_benches[];

int moe_bench_kernels(int argc, char **argv);
int moe_bench_tokenizer(int argc, char **argv);
int moe_bench_e2e(int argc, char **argv);
int moe_bench_cluster(int argc, char **argv);

#endif
