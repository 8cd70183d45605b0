/*
 * fuzz_anthropic.c - libFuzzer harness for the Anthropic API's request
 * handling: the input is a POST /v1/messages body, checked as the route
 * checks it before generating (JSON, content blocks, tools, thinking, the
 * rendered and tokenized prompt, the tools' grammar).  A refusal must come
 * with a message.
 */
#include <string.h>

#include "tests/fuzz/fuzz_api_setup.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	api_setup();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[512] = "";
	const int code =
	    moe_api_anthropic_check((const char *)data, size, api_tmpl, api_tok, why, sizeof why);
	if (code != 0 && (code != 400 || why[0] == '\0')) {
		fprintf(stderr, "a refusal without a 400 and a message: %d\n", code);
		abort();
	}
	return 0;
}
