/*
 * grammar.h - the public header of grammar/: constrained decoding.  A
 * grammar (GBNF-like text, or a JSON schema turned into that text) is
 * compiled into a byte-level pushdown automaton; a vocabulary view holds a
 * model's token bytes; tables precompute, per grammar position, which tokens
 * are valid whatever the stack below holds; a matcher follows one generation
 * and answers, per decoding step, whether one token may come next and the
 * exact mask of all tokens that may.
 *
 * Lifetimes and threads: a moe_grammar, a moe_grammar_vocab and a
 * moe_grammar_tables are immutable once created, and may be used by many
 * threads at once; tables refer to (do not own) their grammar and vocabulary,
 * which must outlive them; a matcher refers to its tables and is used by one
 * thread at a time.  Every function fails without side effects unless its
 * comment says otherwise, with a detail in moe_err_detail().
 *
 * Grammar text (like llama.cpp's GBNF):
 *
 *   # comment to the end of the line
 *   root  ::= "{" ws pair ("," ws pair)* ws "}"   # rules: name ::= alternatives
 *   pair  ::= key ":" ws [0-9]+                   # a rule ends at the next `name ::=`
 *   key   ::= "\"" [a-z_] [a-z0-9_]{0,15} "\""
 *   ws    ::= [ \t\n]{0,4}
 *
 * Literals "..." and classes [...] hold UTF-8 text with the escapes \n \r \t
 * \\ \" \' \[ \] \- \^ \xHH \uHHHH \UHHHHHHHH (code points, written as UTF-8);
 * [^...] is the complement over all code points (surrogates excluded); `.` is
 * any code point.  Postfix ? * + {m} {m,} {m,n} {,n} (counts up to 10000),
 * grouping ( ), alternation |.  Matching is on bytes: a class only ever
 * matches the valid UTF-8 encodings of its code points, one byte at a time,
 * so a character may be split across tokens.  Refused: undefined rules
 * (MOE_ERR_NOT_FOUND), rules defined twice (MOE_ERR_DUPLICATE), left
 * recursion and rules that can never finish (MOE_ERR_UNSUPPORTED), text that
 * does not parse (MOE_ERR_FORMAT, "line L, column C: ..."), grammars beyond
 * the size limits (MOE_ERR_BAD_COUNT).  At run time the stack depth of
 * nested rules is capped (MOE_GRAMMAR_MAX_DEPTH): paths deeper than that are
 * not followed.
 */
#ifndef MOE_GRAMMAR_H
#define MOE_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define MOE_GRAMMAR_MAX_DEPTH 512 /* frames of nested rules a matcher follows */

typedef struct moe_grammar moe_grammar;
typedef struct moe_grammar_vocab moe_grammar_vocab;
typedef struct moe_grammar_tables moe_grammar_tables;
typedef struct moe_grammar_matcher moe_grammar_matcher;

/* ---- grammars ---------------------------------------------------------------- */

/* Parses and compiles len bytes of grammar text whose start rule is named
 * root (NULL: "root").  Errors: MOE_ERR_FORMAT (syntax; the detail names line
 * and column), MOE_ERR_NOT_FOUND (an undefined rule, or no rule root),
 * MOE_ERR_DUPLICATE, MOE_ERR_UNSUPPORTED (left recursion, a rule that can
 * never finish), MOE_ERR_BAD_COUNT (too large: nesting, repetition counts,
 * automaton size), MOE_ERR_NOMEM, MOE_ERR_INVAL (NULL text with len > 0).
 * *out is owned by the caller (moe_grammar_destroy); untouched on error. */
moe_err moe_grammar_parse(moe_grammar **out, const char *text, size_t len, const char *root);

/* Frees a grammar; NULL is a no-op.  Tables made from it must be gone. */
void moe_grammar_destroy(moe_grammar *g);

/* The number of automaton states and rules of g (for logs and tests). */
uint32_t moe_grammar_n_states(const moe_grammar *g);
uint32_t moe_grammar_n_rules(const moe_grammar *g);

/* Writes len bytes of text as one grammar literal ("..." with escapes), so
 * that text can be composed into grammar text.  *out is malloc'd,
 * NUL-terminated, owned by the caller.  Errors: MOE_ERR_NOMEM, MOE_ERR_INVAL. */
moe_err moe_grammar_literal(char **out, const char *text, size_t len);

/* ---- JSON schemas -------------------------------------------------------------- */

/* Turns a JSON schema (len bytes of JSON text) into grammar text whose rules
 * all begin with prefix (NULL: ""; letters, digits and '-' only) and whose
 * value rule is named "<prefix>root", so that a caller can write its own
 * root around it:  root ::= "<tool_call>\n{\"arguments\": " fn-root "}"
 * followed by the text of this function for prefix "fn-".  The value has no
 * leading or trailing whitespace.
 *
 * Covered: type (every JSON type, and lists of them), properties with
 * required (emitted in declared order, optional ones may be left out),
 * additionalProperties (false, true or a schema; absent means false when
 * properties are given, any property otherwise; extra keys come after the
 * declared ones, are written without escapes and differ from the declared
 * names), enum, const, anyOf, oneOf (as anyOf), allOf of object schemas (and
 * of one schema), items, prefixItems, minItems, maxItems, minLength,
 * maxLength, pattern (a regex subset: literals, escapes \d \w \s \D \W . and
 * classes, groups, |, ? * + {m,n}, ^ and $ only at the ends; characters JSON
 * must escape are never produced by a class or `.`), format date, time,
 * date-time and uuid (other formats are annotations and ignored), $ref to
 * #/$defs/NAME and #/definitions/NAME (recursion allowed), the annotations
 * title, description, default, examples, $schema, $id, $comment.  Refused
 * (MOE_ERR_UNSUPPORTED, the keyword in the detail): every other keyword that
 * constrains values (minimum, multipleOf, not, if, uniqueItems, ...), regex
 * features beyond the subset, pattern together with min/maxLength.
 *
 * Whitespace: between structural tokens, either nothing, one space, or one
 * newline followed by at most 24 spaces or tabs; numbers take at most 16
 * integer digits, 16 fraction digits and 2 exponent digits.  So the model
 * cannot loop on whitespace or digits; only strings without maxLength are
 * unbounded.  Errors: MOE_ERR_FORMAT (not JSON, or a keyword of the wrong
 * type), MOE_ERR_UNSUPPORTED, MOE_ERR_NOT_FOUND (a $ref that does not
 * resolve), MOE_ERR_BAD_COUNT (nested deeper than 64, or too large),
 * MOE_ERR_NOMEM.  *out is malloc'd, NUL-terminated, owned by the caller. */
moe_err moe_grammar_schema_to_gbnf(char **out, const char *schema, size_t len, const char *prefix);

/* moe_grammar_schema_to_gbnf (prefix "") + moe_grammar_parse (root "root").
 * The JSON mode {"type":"json_object"} is the schema {"type":"object"}. */
moe_err moe_grammar_from_json_schema(moe_grammar **out, const char *schema, size_t len);

/* ---- vocabulary view ----------------------------------------------------------- */

/* Builds the view of a model's vocabulary: n_vocab tokens whose bytes are
 * bytes[i] (lens[i] bytes; copied).  Token i is never valid when never is
 * non-NULL and never[i] is true (control tokens: the caller marks them) or
 * when it has no bytes, else it is valid exactly where its bytes are; the
 * n_end ids in end_ids are the end tokens, valid only where the grammar may
 * end.  Build it once per model.  Errors: MOE_ERR_INVAL (n_vocab 0 or above
 * 2^24, NULL arrays, an end id outside the vocabulary), MOE_ERR_NOMEM. */
moe_err moe_grammar_vocab_create(moe_grammar_vocab **out, uint32_t n_vocab,
                                 const char *const *bytes, const size_t *lens, const bool *never,
                                 const int32_t *end_ids, size_t n_end);

/* Frees a view; NULL is a no-op.  Tables made over it must be gone. */
void moe_grammar_vocab_destroy(moe_grammar_vocab *v);

/* The number of tokens, and of 32-bit words in a mask: (n_vocab + 31) / 32. */
uint32_t moe_grammar_vocab_n(const moe_grammar_vocab *v);
size_t moe_grammar_mask_words(const moe_grammar_vocab *v);

/* ---- tables -------------------------------------------------------------------- */

/* Precomputes, for every position of g, which tokens of v are valid from it
 * whatever the stack below holds, which are not, and which depend on the
 * stack (checked per step).  Build once per request, or cache per grammar:
 * tables are immutable and shared by any number of matchers and threads.  g
 * and v must outlive the tables.  Errors: MOE_ERR_BAD_COUNT (the grammar is
 * too large or ambiguous to index within the work limit), MOE_ERR_NOMEM. */
moe_err moe_grammar_tables_create(moe_grammar_tables **out, const moe_grammar *g,
                                  const moe_grammar_vocab *v);

/* Frees tables; NULL is a no-op.  Matchers on them must be gone. */
void moe_grammar_tables_destroy(moe_grammar_tables *t);

/* ---- matcher ------------------------------------------------------------------- */

/* A matcher at the start of t's grammar.  t must outlive it.  Errors:
 * MOE_ERR_NOMEM, MOE_ERR_BAD_COUNT (the start is too ambiguous). */
moe_err moe_grammar_matcher_create(moe_grammar_matcher **out, const moe_grammar_tables *t);

/* Frees a matcher; NULL is a no-op. */
void moe_grammar_matcher_destroy(moe_grammar_matcher *m);

/* An independent copy of m in the same state (history included).  Errors:
 * MOE_ERR_NOMEM. */
moe_err moe_grammar_matcher_clone(moe_grammar_matcher **out, const moe_grammar_matcher *m);

/* Whether token tok may come next: its whole byte string can be consumed
 * from the current state (an end token: the grammar may end here).  Cheap
 * (about a microsecond for an ordinary token): meant for the
 * sample-then-check fast path.  False for ids outside the vocabulary, after
 * the end, and when following the token would pass the stack limits. */
bool moe_grammar_matcher_token_ok(moe_grammar_matcher *m, int32_t tok);

/* Advances by token tok.  Errors: MOE_ERR_INVAL (tok is not valid here: m
 * is unchanged), MOE_ERR_STATE (an end token was accepted before),
 * MOE_ERR_BAD_COUNT (the stack limits), MOE_ERR_NOMEM. */
moe_err moe_grammar_matcher_accept_token(moe_grammar_matcher *m, int32_t tok);

/* Advances by len bytes (text forced by the caller), as one step for
 * rollback.  Errors: MOE_ERR_INVAL (the bytes are not valid here, the
 * detail says at which offset; m is unchanged), as accept_token otherwise. */
moe_err moe_grammar_matcher_accept_bytes(moe_grammar_matcher *m, const char *bytes, size_t len);

/* Writes the mask of every token valid next: bit (tok & 31) of
 * mask[tok >> 5], moe_grammar_mask_words(v) words, exactly the tokens for
 * which token_ok is true (end tokens where the grammar may end; all zero
 * after the end).  Errors: MOE_ERR_NOMEM (the mask is then all zero). */
moe_err moe_grammar_matcher_fill_mask(moe_grammar_matcher *m, uint32_t *mask);

/* Whether the grammar may end here (an end token is valid), and whether it
 * must (an end token was accepted, or nothing but the end is valid). */
bool moe_grammar_matcher_can_end(const moe_grammar_matcher *m);
bool moe_grammar_matcher_is_done(const moe_grammar_matcher *m);

/* Undoes the last n successful accept calls (tokens, byte strings, the end
 * token); cheap: the matcher keeps every earlier state.  Errors:
 * MOE_ERR_INVAL (n is more than the accepted steps; m is unchanged). */
moe_err moe_grammar_matcher_rollback(moe_grammar_matcher *m, size_t n);

/* The number of accept calls that rollback can undo. */
size_t moe_grammar_matcher_n_steps(const moe_grammar_matcher *m);

#endif
