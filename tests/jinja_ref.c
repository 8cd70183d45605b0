/* jinja_ref.c - the reference renderer and the comparison that test_jinja.c
 * and test_jinja_lang.c share (tests/jinja_ref.h says each function). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/jinja_ref.h"

/* ---- files and the reference ---- */

char *dir_path(const char *rel)
{
	const char *fx = getenv("MOE_FIXTURES");
	cr_assert_not_null(fx, "MOE_FIXTURES is not set (ctest sets it)");
	char *p = malloc(strlen(fx) + strlen(rel) + 2);
	cr_assert_not_null(p);
	sprintf(p, "%s/%s", fx, rel);
	return p;
}

char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	cr_assert_not_null(b);
	cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	b[n] = 0;
	fclose(f);
	if (len)
		*len = (size_t)n;
	return b;
}

static void need_reference(void)
{
	int rc = system(REFERENCE_PYTHON " -c 'import jinja2' >/dev/null 2>&1");
	cr_assert_eq(rc, 0,
	             "the reference renderer needs Debian's Jinja2 for " REFERENCE_PYTHON
	             " (`" REFERENCE_PYTHON " -c 'import jinja2'` failed): "
	             "apt-get install python3-jinja2 (deploy/install.sh installs it)");
}

/* Renders spec ({"templates": [...], "jobs": [[i, case], ...]}) with the
 * reference in one Python process; returns its list of results. */
json_t *reference(json_t *spec)
{
	need_reference();
	char in[] = "/tmp/moe_jinja_jobs_XXXXXX";
	int fd = mkstemp(in);
	cr_assert_geq(fd, 0);
	close(fd);
	char out[sizeof(in) + 8];
	snprintf(out, sizeof(out), "%s.out", in);
	cr_assert_eq(json_dump_file(spec, in, JSON_COMPACT | JSON_REAL_PRECISION(17)), 0);
	char *script = dir_path("chat-templates/render_batch.py");
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), REFERENCE_PYTHON " %s %s %s", script, in, out);
	int rc = system(cmd);
	cr_assert_eq(rc, 0, "the reference renderer failed: %s", cmd);
	json_error_t err;
	json_t *res = json_load_file(out, JSON_ALLOW_NUL, &err);
	cr_assert_not_null(res, "reading %s: %s", out, err.text);
	cr_assert_eq(json_array_size(res), json_array_size(json_object_get(spec, "jobs")));
	if (!getenv("MOE_JINJA_KEEP"))
		unlink(in);
	if (!getenv("MOE_JINJA_KEEP"))
		unlink(out);
	else
		cr_log_info("kept %s and %s", in, out);
	free(script);
	return res;
}

/* The variables of a case, as render_chat_template.render builds them. */
moe_jinja_value *case_vars(json_t *c)
{
	json_t *v = json_object();
	json_t *kw = json_object_get(c, "kwargs");
	if (kw)
		json_object_update(v, kw);
	json_t *m = json_object_get(c, "messages");
	json_object_set_new(v, "messages", m ? json_incref(m) : json_array());
	json_t *agp = json_object_get(c, "add_generation_prompt");
	json_object_set_new(v, "add_generation_prompt", agp ? json_incref(agp) : json_true());
	json_t *b = json_object_get(c, "bos_token"), *e = json_object_get(c, "eos_token");
	json_object_set_new(v, "bos_token", b ? json_incref(b) : json_string(""));
	json_object_set_new(v, "eos_token", e ? json_incref(e) : json_string(""));
	json_t *tools = json_object_get(c, "tools");
	if (tools && !json_is_null(tools))
		json_object_set(v, "tools", tools);
	char *text = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(17));
	moe_jinja_value *vars = NULL;
	moe_err e2 = moe_jinja_value_from_json(&vars, text, strlen(text));
	cr_assert_eq(e2, MOE_OK, "vars from JSON: %s", moe_err_detail());
	free(text);
	json_decref(v);
	return vars;
}

/* strftime_now's fixed clock in the reference: 2026-01-01 12:00:00 */
struct tm ref_now(void)
{
	struct tm t = {0};
	t.tm_year = 126;
	t.tm_mon = 0;
	t.tm_mday = 1;
	t.tm_hour = 12;
	t.tm_wday = 4;
	t.tm_yday = 0;
	t.tm_isdst = 0;
	return t;
}

ours render_ours(const moe_jinja_tmpl *t, json_t *c)
{
	ours o = {0};
	moe_jinja_value *vars = case_vars(c);
	struct tm now = ref_now();
	moe_jinja_opts opts = {.now = &now};
	o.err = moe_jinja_render(&o.text, &o.len, t, vars, &opts);
	if (o.err) {
		o.text = strdup(moe_err_detail());
		o.len = strlen(o.text);
	}
	moe_jinja_value_free(vars);
	return o;
}

/* Compares our result with the reference's; logs the difference. */
int same(const char *label, json_t *ref, const ours *o)
{
	json_t *out = json_object_get(ref, "out"), *raised = json_object_get(ref, "raised");
	json_t *error = json_object_get(ref, "error");
	if (out) {
		const char *want = json_string_value(out);
		size_t wn = json_string_length(out);
		if (o->err) {
			cr_log_error("%s: Jinja2 renders (%zu bytes), we fail: %s %s", label, wn,
			             moe_err_name(o->err), o->text);
			return 0;
		}
		if (wn == o->len && memcmp(want, o->text, wn) == 0)
			return 1;
		size_t i = 0;
		while (i < wn && i < o->len && want[i] == o->text[i])
			i++;
		size_t from = i > 60 ? i - 60 : 0;
		cr_log_error("%s: output differs at byte %zu (Jinja2 %zu bytes, ours %zu)\n"
		             "  Jinja2: ...%.*s|%.*s\n  ours:   ...%.*s|%.*s",
		             label, i, wn, o->len, (int)(i - from), want + from,
		             (int)(wn - i > 80 ? 80 : wn - i), want + i, (int)(i - from),
		             o->text + from, (int)(o->len - i > 80 ? 80 : o->len - i), o->text + i);
		return 0;
	}
	if (raised) {
		if (o->err == MOE_JINJA_RAISED && strcmp(o->text, json_string_value(raised)) == 0)
			return 1;
		cr_log_error("%s: Jinja2 raises '%s', we give %s: %.300s", label,
		             json_string_value(raised), moe_err_name(o->err),
		             o->err ? o->text : "");
		return 0;
	}
	if (o->err && o->err != MOE_JINJA_RAISED)
		return 1;
	cr_log_error("%s: Jinja2 fails (%s), we give %s: %.300s", label, json_string_value(error),
	             moe_err_name(o->err), o->text);
	return 0;
}

/* Renders every job of spec with ours (template i: tmpls[i], or the parse
 * error perr[i] when it is NULL) and compares with the reference; returns
 * the number that differ. */
int compare_jobs(json_t *spec, moe_jinja_tmpl *const *tmpls, char *const *perr,
                 const char *const *names, const char *what, int *n_out, int *n_raised,
                 int *n_error)
{
	json_t *res = reference(spec);
	json_t *jobs = json_object_get(spec, "jobs");
	int bad = 0;
	for (size_t j = 0; j < json_array_size(jobs); j++) {
		json_t *job = json_array_get(jobs, j);
		size_t ti = (size_t)json_integer_value(json_array_get(job, 0));
		json_t *c = json_array_get(job, 1);
		json_t *r = json_array_get(res, j);
		ours o = {0};
		if (tmpls[ti]) {
			o = render_ours(tmpls[ti], c);
		} else {
			o.err = MOE_ERR_FORMAT;
			o.text = strdup(perr[ti]);
			o.len = strlen(o.text);
		}
		char label[256];
		json_t *name = json_object_get(c, "name");
		snprintf(label, sizeof(label), "%s %s x %s", what, names[ti],
		         name ? json_string_value(name) : "?");
		if (!same(label, r, &o)) {
			if (++bad <= 3) {
				char *cj = json_dumps(c, JSON_COMPACT);
				cr_log_error("  the case: %.1500s", cj);
				free(cj);
			}
		}
		*n_out += json_object_get(r, "out") != NULL;
		*n_raised += json_object_get(r, "raised") != NULL;
		*n_error += json_object_get(r, "error") != NULL;
		free(o.text);
	}
	json_decref(res);
	return bad;
}
