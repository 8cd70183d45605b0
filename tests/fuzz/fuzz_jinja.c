/*
 * fuzz_jinja.c - libFuzzer harness for the chat-template engine: the input is
 * a template's text; what parses is rendered with a real conversation (tool
 * definitions, a tool call and its result: the fixtures' 06-tool-roundtrip
 * case) under tight limits, as a server renders a model's template.
 */
#include <string.h>
#include <time.h>

#include "jinja/jinja.h"
#include "tests/fuzz/fuzz.h"

static moe_jinja_value *vars;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char *json = NULL;
	size_t len = 0;
	moe_err err = moe_read_file(
	    &json, &len,
	    fuzz_source_path("tests/fixtures/chat-templates/cases/06-tool-roundtrip.json"),
	    1 << 20);
	if (err != MOE_OK)
		fuzz_setup_failed("the conversation", err);
	if ((err = moe_jinja_value_from_json(&vars, json, len)) != MOE_OK)
		fuzz_setup_failed("the conversation's JSON", err);
	free(json);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	moe_jinja_tmpl *t = NULL;
	if (moe_jinja_parse(&t, (const char *)data, size) != MOE_OK)
		return 0;
	const struct tm now = {.tm_year = 126, .tm_mon = 11, .tm_mday = 6};
	const moe_jinja_opts o = {.max_output = 1 << 20,
	                          .max_memory = 64 << 20,
	                          .max_steps = 100000,
	                          .max_depth = 100,
	                          .now = &now};
	char *out = NULL;
	size_t out_len = 0;
	if (moe_jinja_render(&out, &out_len, t, vars, &o) == MOE_OK && out[out_len] != '\0')
		abort(); /* the contract: NUL-terminated */
	free(out);
	moe_jinja_free(t);
	return 0;
}
