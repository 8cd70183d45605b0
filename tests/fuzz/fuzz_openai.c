/*
 * fuzz_openai.c - libFuzzer harness for the OpenAI API's request handling:
 * the input is a request body, checked as POST /v1/chat/completions and as
 * POST /v1/completions check it before generating (JSON, every field, the
 * rendered and tokenized prompt, tool and schema grammars).  A refusal must
 * come with a message.
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
	for (int chat = 0; chat < 2; chat++) {
		char why[512] = "";
		const int code = moe_api_openai_check((const char *)data, size, chat, api_tmpl,
		                                      api_tok, 4096, why, sizeof why);
		if (code != 0 && (code != 400 || why[0] == '\0')) {
			fprintf(stderr, "a refusal without a 400 and a message: %d\n", code);
			abort();
		}
	}
	return 0;
}
