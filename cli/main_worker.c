/* main_worker.c - the moemesh-worker program: `moemesh worker` alone, for a
 * box that only holds experts (linked without the coordinator, the server,
 * the benchmarks and OpenBLAS). */
#include "cli/cli.h"

int main(int argc, char **argv)
{
	argv[0] = "worker";
	return moe_cmd_worker(argc, argv);
}
