/*
 * fuzz_schema.c - libFuzzer harness for JSON schemas to grammars (response
 * formats and tool parameters): the input is a schema's JSON text.  Strict
 * and lenient conversion run; grammar text that either gives must compile
 * (or be refused only as too large), since the server compiles exactly that.
 * One refusal is the compiler's by design: recursion through $ref that no
 * finite value ends or that reaches itself before a character (DESIGN,
 * "JSON schemas"); it is allowed only where the schema has a $ref.
 */
#include <string.h>

#include "grammar/grammar.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static void compile(const char *gbnf, int has_ref)
{
	moe_grammar *g = NULL;
	const moe_err err = moe_grammar_parse(&g, gbnf, strlen(gbnf), "root");
	const int recursion =
	    err == MOE_ERR_UNSUPPORTED && (strstr(moe_err_detail(), "is left-recursive") != NULL ||
	                                   strstr(moe_err_detail(), "can never finish") != NULL);
	if (err != MOE_OK && err != MOE_ERR_BAD_COUNT && !(recursion && has_ref)) {
		fprintf(stderr, "a schema's grammar does not compile: %s\n%s\n", moe_err_detail(),
		        gbnf);
		abort();
	}
	moe_grammar_destroy(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	const int has_ref = memmem(data, size, "$ref", 4) != NULL;
	for (unsigned flags = 0; flags <= MOE_GRAMMAR_SCHEMA_LENIENT; flags++) {
		char *gbnf = NULL, *ignored = NULL;
		if (moe_grammar_schema_to_gbnf_ex(&gbnf, s, size, "", flags, &ignored) != MOE_OK)
			continue;
		compile(gbnf, has_ref);
		free(gbnf);
		free(ignored);
	}
	return 0;
}
