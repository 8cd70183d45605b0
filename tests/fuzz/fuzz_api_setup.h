/*
 * fuzz_api_setup.h - what the two API harnesses load once: the demo model's
 * tokenizer and Qwen3's chat template (tests/fixtures/chat-templates), which
 * renders tools, tool calls and reasoning: the request paths a client drives.
 */
#ifndef MOE_TESTS_FUZZ_API_SETUP_H
#define MOE_TESTS_FUZZ_API_SETUP_H

#include "server/api.h"
#include "server/chat.h"
#include "tests/fuzz/fuzz.h"

static moe_gguf *api_gguf;
static moe_tokenizer *api_tok;
static moe_chat_template *api_tmpl;

static inline void api_setup(void)
{
	moe_err err = moe_gguf_open(&api_gguf, fuzz_source_path("models/kjv-qwen3moe-Q4_K_M.gguf"));
	if (err != MOE_OK)
		fuzz_setup_failed("the demo model", err);
	if ((err = moe_tokenizer_from_gguf(&api_tok, api_gguf)) != MOE_OK)
		fuzz_setup_failed("its tokenizer", err);
	err = moe_chat_template_create(
	    &api_tmpl, api_gguf, api_tok,
	    fuzz_source_path("tests/fixtures/chat-templates/Qwen-Qwen3-0.6B.jinja"));
	if (err != MOE_OK)
		fuzz_setup_failed("the chat template", err);
}

#endif
