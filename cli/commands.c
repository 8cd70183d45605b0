/* commands.c - the table of moemesh subcommands. */
#include "cli/cli.h"

#include <stdio.h>

int moe_cmd_version(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("moemesh 0.1.0\n");
	return 0;
}

const moe_command moe_commands[] = {
    {"make-model", "write a synthetic random-weight GGUF model", moe_cmd_make_model},
    {"version", "print the version", moe_cmd_version},
    {"inspect", "validate a GGUF file and print its metadata and tensors", moe_cmd_inspect},
    {"gguf-split", "write a model as several GGUF files (llama.cpp's gguf-split layout)",
     moe_cmd_gguf_split},
    {"tokenize", "JSON lines of text -> token ids (or --decode ids -> text)", moe_cmd_tokenize},
    {"bench", "run a benchmark (moemesh bench --help)", moe_cmd_bench},
    {"logits", "write the raw float32 logits of a token list", moe_cmd_logits},
    {"run", "generate text from a prompt on this machine", moe_cmd_run},
    {"worker", "serve a slice of the experts to a coordinator", moe_cmd_worker},
    {"serve", "OpenAI-compatible HTTP server with continuous batching", moe_cmd_serve},
    {"status", "each worker's state, experts, memory, load and round trip", moe_cmd_status},
    {"plan", "what a model takes on a cluster: bytes, context, decode tok/s", moe_cmd_plan},
    {"probe", "measure this node's figures for the cluster file", moe_cmd_probe},
    {"trace", "check a routing trace (run/serve --trace) and print it, or its rows as CSV",
     moe_cmd_trace},
    {NULL, NULL, NULL},
};
