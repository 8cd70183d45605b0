/*
 * jinja.h - the public header of jinja/: chat templates (Jinja2, as Hugging
 * Face transformers renders them) parsed once and rendered many times, and
 * the values a render reads (built in C or from JSON text).
 *
 * The language is the subset that chat templates use, with Python's and
 * Jinja2's semantics, set up as transformers sets it up: trim_blocks,
 * lstrip_blocks, the loop controls (break, continue), an immutable sandbox,
 * the globals raise_exception(msg) and strftime_now(fmt), a tojson filter that
 * is json.dumps(ensure_ascii=False, indent, separators, sort_keys).  What the
 * renderer does not implement is refused, when it can be seen, at parse time.
 *
 * Errors (moe_err, with moe_err_detail() on the calling thread):
 *   MOE_ERR_FORMAT       the template is not valid Jinja ("line 3: ...")
 *   MOE_ERR_UNSUPPORTED  a construct, filter, test or method this renderer
 *                        does not implement ("line 12: unsupported filter 'foo'")
 *   MOE_JINJA_RAISED     the template called raise_exception(msg); the detail is
 *                        msg itself (truncated to 511 bytes), nothing added
 *   MOE_ERR_BAD_TYPE     the render failed on its data, where Jinja2 raises
 *                        (undefined attribute use, str + int, not iterable...)
 *   MOE_ERR_OVERFLOW     a resource limit was hit (output, memory, steps, depth)
 *                        or an integer left int64
 *   MOE_ERR_BAD_STRING   text that is not UTF-8 (a template, a string value)
 *   MOE_ERR_NOMEM, MOE_ERR_INVAL as usual.
 */
#ifndef MOE_JINJA_H
#define MOE_JINJA_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/core.h"

/* The error of a render that the template itself stopped with
 * raise_exception(msg); no other failure of this library returns it. */
#define MOE_JINJA_RAISED MOE_ERR_BAD_VALUE

/* A parsed template: immutable, shareable by threads rendering at once. */
typedef struct moe_jinja_tmpl moe_jinja_tmpl;

/* A value a template reads: null, bool, int64, double, string (UTF-8, may
 * hold NUL bytes), list, or dict (string keys, insertion order kept). */
typedef struct moe_jinja_value moe_jinja_value;

/* Limits and clock of one render; a zero field takes the default. */
typedef struct moe_jinja_opts {
	size_t max_output;    /* bytes of output, and of each captured block (32 MiB) */
	size_t max_memory;    /* bytes of working memory of the render (256 MiB) */
	uint64_t max_steps;   /* loop iterations, macro calls and items that filters
	                       * walk (1,000,000) */
	unsigned max_depth;   /* nesting of evaluation: statements, expressions,
	                       * macro calls (500) */
	const struct tm *now; /* what strftime_now formats; NULL: local time now */
} moe_jinja_opts;

/* Parses len bytes of text (UTF-8) into *out.  Unknown filters, tests and
 * constructs that the renderer refuses fail here, with their line.  Free the
 * result with moe_jinja_free.  On failure *out is NULL. */
moe_err moe_jinja_parse(moe_jinja_tmpl **out, const char *text, size_t len);

/* Frees a parsed template; NULL is a no-op. */
void moe_jinja_free(moe_jinja_tmpl *t);

/* Renders t with the variables of the dict vars (NULL: none) into *out, a
 * malloc'd buffer of *out_len bytes plus a terminating NUL (free() it).  opts
 * may be NULL.  Thread-safe: any number of threads may render the same t with
 * the same or other vars at once, as long as nobody changes vars meanwhile.
 * At the default depth limit a render needs about 300 KiB of stack (run it
 * on threads of 1 MiB or more).  On failure *out is NULL and *out_len 0. */
moe_err moe_jinja_render(char **out, size_t *out_len, const moe_jinja_tmpl *t,
                         const moe_jinja_value *vars, const moe_jinja_opts *opts);

/* Makes *out a new None, owned by the caller until freed or handed to a list
 * or dict (so for every constructor below; on failure *out is NULL). */
moe_err moe_jinja_value_null(moe_jinja_value **out);

/* Makes *out a new bool (b != 0 is True). */
moe_err moe_jinja_value_bool(moe_jinja_value **out, int b);

/* Makes *out a new int. */
moe_err moe_jinja_value_int(moe_jinja_value **out, int64_t i);

/* Makes *out a new float (a Python float: 1.0 prints "1.0"). */
moe_err moe_jinja_value_float(moe_jinja_value **out, double d);

/* Makes *out a new string, a copy of the len bytes at s, which must be UTF-8
 * (MOE_ERR_BAD_STRING otherwise); NUL bytes are allowed. */
moe_err moe_jinja_value_string(moe_jinja_value **out, const char *s, size_t len);

/* Makes *out a new empty list. */
moe_err moe_jinja_value_list(moe_jinja_value **out);

/* Makes *out a new empty dict. */
moe_err moe_jinja_value_dict(moe_jinja_value **out);

/* Parses one JSON text (any value at the top) into *out: integers stay ints
 * (int64; larger ones fail), numbers with a fraction or exponent stay doubles,
 * object keys keep their order (a repeated key keeps its first place and its
 * last value, as Python's json does).  MOE_ERR_FORMAT with line and column on
 * malformed JSON. */
moe_err moe_jinja_value_from_json(moe_jinja_value **out, const char *json, size_t len);

/* Appends item to list, which takes item over (also when it fails: item is
 * freed then).  MOE_ERR_INVAL if list is not a list. */
moe_err moe_jinja_list_append(moe_jinja_value *list, moe_jinja_value *item);

/* Sets dict[key] = val, key being a NUL-terminated UTF-8 string; an existing
 * key keeps its place.  dict takes val over (also when it fails). */
moe_err moe_jinja_dict_set(moe_jinja_value *dict, const char *key, moe_jinja_value *val);

/* Frees a value and everything it holds; NULL is a no-op. */
void moe_jinja_value_free(moe_jinja_value *v);

#endif
