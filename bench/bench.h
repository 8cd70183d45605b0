/*
 * bench.h - the benchmarks of `moemesh bench NAME ...`.  Each takes the
 * arguments after its name (argv[0] is the benchmark name) and returns the
 * exit status like a subcommand (0, 1 runtime error, 2 usage).  To add one:
 * declare it here and add a row to the table in bench/bench.c.
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

int moe_bench_tokenizer(int argc, char **argv);

#endif
