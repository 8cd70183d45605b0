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
 * leading or trailing whitespace.  Strict: every keyword that constrains
 * values is enforced or the schema is refused (moe_grammar_schema_to_gbnf_ex
 * with flags 0).
 *
 * Covered: type (every JSON type, and lists of them), properties with
 * required (emitted in declared order, optional ones may be left out),
 * additionalProperties (false, true or a schema; absent means false when
 * properties are given, even as {}, any property otherwise; extra keys come after the
 * declared ones, are written without escapes and differ from the declared
 * names), enum, const, anyOf, oneOf (as anyOf), allOf of object schemas (and
 * of one schema), items, prefixItems, minItems, maxItems, minLength,
 * maxLength, pattern (a regex subset: literals, escapes \d \w \s \D \W . and
 * classes, groups, |, ? * + {m,n}, ^ and $ only at the ends; characters JSON
 * must escape are never produced by a class or `.`), format date, time,
 * date-time and uuid on strings and int32 on integers (other formats are
 * annotations: not enforced, and listed as "format" in *ignored of the _ex
 * form), $ref to #/$defs/NAME and #/definitions/NAME (recursion allowed),
 * nullable (OpenAPI: true also allows null), the annotations title,
 * description, default, examples, $schema, $id, $comment, and:
 *
 *   - integers with minimum, maximum, exclusiveMinimum, exclusiveMaximum
 *     (numbers, as in draft 2020-12; any combination, the tightest bound of
 *     each side wins; a non-integral bound is rounded inward: minimum 1.5
 *     means >= 2): exactly the integers of the range, written without
 *     leading zeros, "+" or fraction, zero as "0" only (not "-0", which the
 *     unbounded integer rule allows); bounds up to +-2^53 and beyond, a
 *     missing side ending at the 16-digit limit;
 *   - numbers with those bounds when they are integral: exactly the numbers
 *     of the range, written without exponent (at most 16 integer and 16
 *     fraction digits, no "-0", "-0.0"); minimum 0 alone keeps the exponent
 *     (no minus sign is enough).  Non-integral bounds on numbers are not
 *     covered.
 *
 * A schema with $ref, const, enum, anyOf, oneOf or allOf is that keyword
 * alone (in this order): the keywords beside it, nullable aside, are checked
 * (refused, or ignored as below) but not applied, and not listed in
 * *ignored.  Bounds compare decimal values (as JSON Schema does); a
 * validator that reads numbers as doubles may round a number of more than
 * 15 significant digits onto an exclusive bound.  Refused
 * (MOE_ERR_UNSUPPORTED, the keyword in the detail): every other keyword that
 * constrains values (multipleOf, not, if, uniqueItems, ...), regex features
 * beyond the subset, pattern together with min/maxLength, non-integral
 * bounds on numbers, counts above 10000.  Bounds that no integer (no number)
 * of at most 16 integer digits meets, and minItems above maxItems (or
 * minLength above maxLength): the schema cannot be met (MOE_ERR_BAD_VALUE).
 *
 * Whitespace: between structural tokens, either nothing, one space, or one
 * newline followed by at most 24 spaces or tabs; numbers take at most 16
 * integer digits, 16 fraction digits and 2 exponent digits.  So the model
 * cannot loop on whitespace or digits; only strings without maxLength are
 * unbounded.  Errors: MOE_ERR_FORMAT (not JSON, or a keyword of the wrong
 * type), MOE_ERR_UNSUPPORTED, MOE_ERR_NOT_FOUND (a $ref that does not
 * resolve), MOE_ERR_BAD_COUNT (nested deeper than 64, or too large),
 * MOE_ERR_BAD_VALUE, MOE_ERR_NOMEM.  *out is malloc'd, NUL-terminated,
 * owned by the caller. */
moe_err moe_grammar_schema_to_gbnf(char **out, const char *schema, size_t len, const char *prefix);

/* Flags of moe_grammar_schema_to_gbnf_ex. */
#define MOE_GRAMMAR_SCHEMA_LENIENT 1u /* ignore (and list) what cannot be enforced */

/* moe_grammar_schema_to_gbnf with flags (0 or MOE_GRAMMAR_SCHEMA_LENIENT;
 * other bits: MOE_ERR_INVAL) and a report of what was not enforced.
 *
 * Flags 0: as moe_grammar_schema_to_gbnf.  MOE_GRAMMAR_SCHEMA_LENIENT: what
 * the strict form refuses as MOE_ERR_UNSUPPORTED because it constrains
 * values that the grammar cannot is ignored instead, so that the grammar
 * allows a superset of the schema (apart from the policies above:
 * additionalProperties, whitespace, digit counts): every keyword outside the covered set and the
 * annotations (multipleOf, not, if/then/else, uniqueItems, contains, minContains, maxContains,
 * minProperties, maxProperties, dependentRequired, dependentSchemas, propertyNames,
 * unevaluatedItems, unevaluatedProperties, and unknown keywords, which JSON Schema ignores too);
 * patternProperties (other keys are then allowed with any value, and a non-true
 * additionalProperties is listed as well); a pattern beyond the regex subset
 * (the string is then free within its lengths); minLength/maxLength beside a
 * pattern (the pattern is kept); a count above 10000 (minItems, maxItems,
 * minLength, maxLength: as if absent); a non-integral bound on a number
 * (widened to the next integer outward, included: maximum 2.5 allows up to
 * 3); allOf of schemas that are not all objects (its first schema alone).
 * Everything the grammar does enforce stays as in the strict form, and
 * every other error stays an error: MOE_ERR_FORMAT (not JSON, a keyword of
 * the wrong type), MOE_ERR_NOT_FOUND (a $ref that does not resolve),
 * MOE_ERR_UNSUPPORTED (a $ref outside the document, the schema false,
 * items as an array, a required property that is not among properties, more
 * than 32 prefixItems, long or empty property names beside
 * additionalProperties), MOE_ERR_BAD_COUNT (too deep or too large),
 * MOE_ERR_BAD_VALUE (a schema that cannot be met).
 *
 * ignored (may be NULL): on success, *ignored is NULL when every keyword was
 * enforced, else a malloc'd, NUL-terminated list of the names of the
 * keywords that were not, comma-separated without spaces, each once, in the
 * order first met (e.g. "multipleOf,uniqueItems,not"); the caller frees it.
 * In both modes it lists "format" where a format was not enforced (an
 * unknown one, or date/time/date-time/uuid beside a pattern or lengths).
 * On error *out and *ignored are untouched. */
moe_err moe_grammar_schema_to_gbnf_ex(char **out, const char *schema, size_t len,
                                      const char *prefix, unsigned flags, char **ignored);

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
 * after the end), at the stack limits too: a token whose step would pass
 * them is in neither.  Errors: MOE_ERR_NOMEM (the mask is then all zero). */
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
