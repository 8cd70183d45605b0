/*
 * jinja_ref.h - what test_jinja.c and test_jinja_lang.c share: the fixture
 * paths, the reference renderer (Python's Jinja2 as transformers sets it up,
 * tests/fixtures/chat-templates/render_batch.py, run by Debian's python3) and
 * the byte-for-byte comparison of our renders with its results
 * (tests/jinja_ref.c, linked into both programs).
 */
#ifndef MOE_TESTS_JINJA_REF_H
#define MOE_TESTS_JINJA_REF_H

#include <jansson.h>
#include <stddef.h>
#include <time.h>

#include "jinja/jinja.h"

#define REFERENCE_PYTHON "/usr/bin/python3"

/* MOE_FIXTURES/rel, malloc'd (asserts MOE_FIXTURES is set). */
char *dir_path(const char *rel);

/* A whole file, NUL-terminated, malloc'd; its length in *len if len. */
char *slurp(const char *path, size_t *len);

/* Renders spec ({"templates": [...], "jobs": [[i, case], ...]}) with the
 * reference in one Python process; returns its list of results. */
json_t *reference(json_t *spec);

/* The variables of a case, as render_chat_template.render builds them. */
moe_jinja_value *case_vars(json_t *c);

/* strftime_now's fixed clock in the reference: 2026-01-01 12:00:00 */
struct tm ref_now(void);

typedef struct ours {
	moe_err err;
	char *text; /* the output, or the error detail */
	size_t len;
} ours;

/* Our render of case c with t (the error detail as text on failure). */
ours render_ours(const moe_jinja_tmpl *t, json_t *c);

/* Compares our result with the reference's; logs the difference. */
int same(const char *label, json_t *ref, const ours *o);

/* Renders every job of spec with ours (template i: tmpls[i], or the parse
 * error perr[i] when it is NULL) and compares with the reference; returns
 * the number that differ; counts what the reference rendered, raised and
 * failed. */
int compare_jobs(json_t *spec, moe_jinja_tmpl *const *tmpls, char *const *perr,
                 const char *const *names, const char *what, int *n_out, int *n_raised,
                 int *n_error);

#endif
