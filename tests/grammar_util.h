/*
 * grammar_util.h - the helpers test_grammar.c and test_grammar_schema.c share
 * (tests/grammar_util.c, linked into both programs).
 */
#ifndef MOE_TESTS_GRAMMAR_UTIL_H
#define MOE_TESTS_GRAMMAR_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "grammar/grammar.h"
#include "model/tokenizer.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW 1 /* the sanitizer build: fewer of the expensive checks */
#else
#define SLOW 0
#endif

/* xorshift64: the next value of *s. */
uint64_t rng(uint64_t *s);

/* A growing NUL-terminated string ({0} is empty; free p). */
typedef struct sb {
	char *p;
	size_t n, cap;
} sb;
void sb_put(sb *b, const char *s, size_t n);
void sb_puts(sb *b, const char *s);

/* The Qwen3 tokenizer of the fixtures, its <|im_end|>, and its vocabulary
 * view (control tokens never valid, <|im_end|> ends); built once. */
moe_tokenizer *qwen3(void);
int32_t im_end(void);
moe_grammar_vocab *qvocab(void);

/* The small vocabulary: the 256 bytes, TINY_MULTI_N multi-byte tokens, a
 * never-valid one (id TINY_N - 2) and the end token (the last id). */
#define TINY_MULTI_N 20
#define TINY_N       (256 + TINY_MULTI_N + 2)
moe_grammar_vocab *tiny_vocab(void);

/* text parsed (asserts it parses). */
moe_grammar *parse_ok(const char *text);
/* Whether the whole of s is a sentence of the grammar. */
int accepts(const moe_grammar_tables *t, const char *s, size_t n);
/* Bit id of a token mask. */
int bit(const uint32_t *mask, uint32_t id);
/* fill_mask equals token_ok for every token of the vocabulary. */
void check_mask_exact(moe_grammar_matcher *m, const moe_grammar_vocab *v, const char *where);

/* The JSON schemas under test. */
extern const char *const schemas[];
extern const size_t n_schemas;
#define N_SCHEMAS n_schemas
/* A random document schema `schema` must accept (malloc'd), from seed. */
char *gen_doc(size_t schema, uint64_t seed);
/* Grammar and tables of schema i over the Qwen3 vocabulary (built once). */
moe_grammar_tables *schema_tables(size_t i);
/* Whether v lies within x's numeric bounds. */
struct cJSON;
int in_bounds(const struct cJSON *x, double v);

#endif
