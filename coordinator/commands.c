/* commands.c - the table of moemesh subcommands. */
#include "coordinator/commands.h"

#include <stdio.h>

int moe_cmd_version(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("moemesh 0.1.0\n");
	return 0;
}

const moe_command moe_commands[] = {
	{"version", "print the version", moe_cmd_version},
	{"inspect", "validate a GGUF file and print its metadata and tensors", moe_cmd_inspect},
	{"bench", "run a benchmark (moemesh bench --help)", moe_cmd_bench},
	{NULL, NULL, NULL},
};
