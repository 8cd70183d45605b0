/* test_jinja.c - the chat-template renderer (jinja/) against Python's Jinja2
 * as transformers sets it up: every fixture template with every fixture
 * case, hundreds of generated conversations through every template, and the
 * language itself on small templates, all compared byte for byte with the
 * reference rendered at test time by Debian's /usr/bin/python3
 * (tests/fixtures/chat-templates/render_batch.py); then what Jinja2 cannot
 * judge: error lines, refusals at parse time, raise_exception, resource
 * limits, the value API, concurrent renders, and mutated templates that must
 * never crash. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jinja/jinja.h"

#define REFERENCE_PYTHON "/usr/bin/python3"

/* ---- files and the reference ---- */

static char *dir_path(const char *rel)
{
	const char *fx = getenv("MOE_FIXTURES");
	cr_assert_not_null(fx, "MOE_FIXTURES is not set (ctest sets it)");
	char *p = malloc(strlen(fx) + strlen(rel) + 2);
	cr_assert_not_null(p);
	sprintf(p, "%s/%s", fx, rel);
	return p;
}

static char *slurp(const char *path, size_t *len)
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
static json_t *reference(json_t *spec)
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
static moe_jinja_value *case_vars(json_t *c)
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
static struct tm ref_now(void)
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

typedef struct ours {
	moe_err err;
	char *text; /* the output, or the error detail */
	size_t len;
} ours;

static ours render_ours(const moe_jinja_tmpl *t, json_t *c)
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
static int same(const char *label, json_t *ref, const ours *o)
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

static const char *const template_files[] = {
    "GLM-4.6.jinja",
    "MiniMax-M2.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "Qwen3-Coder.jinja",
    "Qwen3.5-4B.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja",
    "moonshotai-Kimi-K2.jinja",
    "openai-gpt-oss-120b.jinja",
};
#define N_TEMPLATES (sizeof(template_files) / sizeof(template_files[0]))

static const char *const case_files[] = {
    "01-plain.json",          "02-system-multiturn.json",
    "03-thinking-off.json",   "04-reasoning-history.json",
    "05-tools-offered.json",  "06-tool-roundtrip.json",
    "07-parallel-tools.json", "08-unicode-multiline.json",
};
#define N_CASES (sizeof(case_files) / sizeof(case_files[0]))

typedef struct templates {
	char *text[N_TEMPLATES];
	size_t len[N_TEMPLATES];
	moe_jinja_tmpl *t[N_TEMPLATES];
} templates;

static void load_templates(templates *ts, json_t *texts)
{
	for (size_t i = 0; i < N_TEMPLATES; i++) {
		char rel[256];
		snprintf(rel, sizeof(rel), "chat-templates/%s", template_files[i]);
		char *p = dir_path(rel);
		ts->text[i] = slurp(p, &ts->len[i]);
		free(p);
		moe_err e = moe_jinja_parse(&ts->t[i], ts->text[i], ts->len[i]);
		cr_assert_eq(e, MOE_OK, "%s: %s", template_files[i], moe_err_detail());
		if (texts)
			json_array_append_new(texts, json_stringn(ts->text[i], ts->len[i]));
	}
}

static void free_templates(templates *ts)
{
	for (size_t i = 0; i < N_TEMPLATES; i++) {
		moe_jinja_free(ts->t[i]);
		free(ts->text[i]);
	}
}

/* Renders every job of spec with ours (template i: tmpls[i], or the parse
 * error perr[i] when it is NULL) and compares with the reference; returns
 * the number that differ. */
static int compare_jobs(json_t *spec, moe_jinja_tmpl *const *tmpls, char *const *perr,
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

static int compare_all(json_t *spec, templates *ts, const char *what, int *n_out, int *n_raised,
                       int *n_error)
{
	char *perr[N_TEMPLATES] = {0};
	return compare_jobs(spec, ts->t, perr, template_files, what, n_out, n_raised, n_error);
}

/* ---- (a) the fixtures ---- */

Test(jinja, fixture_templates_and_cases_match_jinja2, .timeout = 120)
{
	templates ts;
	json_t *spec = json_object(), *texts = json_array(), *jobs = json_array();
	load_templates(&ts, texts);
	for (size_t ti = 0; ti < N_TEMPLATES; ti++)
		for (size_t ci = 0; ci < N_CASES; ci++) {
			char rel[256];
			snprintf(rel, sizeof(rel), "chat-templates/cases/%s", case_files[ci]);
			char *p = dir_path(rel);
			json_error_t err;
			json_t *c = json_load_file(p, 0, &err);
			cr_assert_not_null(c, "%s: %s", p, err.text);
			json_object_set_new(c, "name", json_string(case_files[ci]));
			json_t *job = json_array();
			json_array_append_new(job, json_integer((json_int_t)ti));
			json_array_append_new(job, c);
			json_array_append_new(jobs, job);
			free(p);
		}
	json_object_set_new(spec, "templates", texts);
	json_object_set_new(spec, "jobs", jobs);
	int n_out = 0, n_raised = 0, n_error = 0;
	int bad = compare_all(spec, &ts, "fixture", &n_out, &n_raised, &n_error);
	cr_log_info("fixtures: %zu templates x %zu cases = %zu renders compared with Jinja2 "
	            "(%d rendered, %d raised, %d failed in Jinja2), %d differ",
	            N_TEMPLATES, N_CASES, N_TEMPLATES * N_CASES, n_out, n_raised, n_error, bad);
	cr_assert_eq(n_error, 0, "the reference fails on a fixture case");
	cr_assert_eq(bad, 0, "%d of %zu fixture renders differ from Jinja2", bad,
	             N_TEMPLATES * N_CASES);
	json_decref(spec);
	free_templates(&ts);
}

/* ---- (b) generated conversations ---- */

typedef struct rng {
	uint64_t s;
} rng;

static uint64_t rnext(rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static unsigned rn(rng *r, unsigned n)
{
	return (unsigned)(rnext(r) % n);
}

static int chance(rng *r, unsigned percent)
{
	return rn(r, 100) < percent;
}

/* Pieces of text: ASCII, Latin, CJK, astral emoji, combining marks, RTL,
 * Python whitespace that is not ASCII (strip and split see it), quotes,
 * backslashes, newlines, what templates look for. */
static const char *const pieces[] = {
    "Hello",
    "world",
    " ",
    "\n",
    "\n\n",
    "\t",
    "  ",
    "\"quoted\"",
    "it's",
    "back\\slash",
    "\\n",
    "Zürich",
    "naïve",
    "中文",
    "日本語のテキスト",
    "😀",
    "👩‍💻",
    "e\xcc\x81",
    "a\xcc\x88\xcc\x81",
    "مرحبا",
    "שלום",
    "\xe3\x80\x80",
    "\xc2\xa0",
    "\xe2\x80\xa8",
    "\xe2\x80\x8b",
    "\xef\xbb\xbf",
    "{{ x }}",
    "{% if %}",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "/nothink",
    "</",
    "<|im_end|>",
    "#",
    "%s",
    "{}",
    "null",
    "1.5",
    "\r\n",
    "\x01",
    "\x7f",
    "🎉🎉",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ß",
    "İ",
    "ﬁ",
    "x",
    "y",
    "z",
    "0",
};

static json_t *gen_text(rng *r)
{
	char buf[1024];
	size_t n = 0;
	unsigned k = rn(r, 8);
	if (chance(r, 8))
		k = 0;
	for (unsigned i = 0; i < k; i++) {
		const char *p = pieces[rn(r, sizeof(pieces) / sizeof(pieces[0]))];
		size_t l = strlen(p);
		if (n + l >= sizeof(buf))
			break;
		memcpy(buf + n, p, l);
		n += l;
	}
	return json_stringn(buf, n);
}

static const char *const keys[] = {"city",   "unit", "query",   "path", "n",    "items",
                                   "values", "type", "x y",     "ключ", "数量", "_id",
                                   "get",    "keys", "content", "a.b"};

static json_t *gen_value(rng *r, int depth)
{
	static const double floats[] = {0.1,     1.0,        -0.0, 1e20, 1e16,    1e15,
	                                1e-5,    1e-4,       2.5,  0.5,  3.14159, -273.15,
	                                1.5e300, 123456.789, 1e22, 0.3,  100.0,   7.0};
	switch (rn(r, depth > 2 ? 6 : 8)) {
	case 0:
		return json_null();
	case 1:
		return json_boolean(rn(r, 2));
	case 2: {
		int64_t v;
		switch (rn(r, 4)) {
		case 0:
			v = (int64_t)rn(r, 10);
			break;
		case 1:
			v = -(int64_t)rn(r, 1000);
			break;
		case 2:
			v = (int64_t)(rnext(r) >> 1);
			break;
		default:
			v = (int64_t)rn(r, 100000);
		}
		return json_integer(v);
	}
	case 3: {
		if (chance(r, 60))
			return json_real(floats[rn(r, sizeof(floats) / sizeof(floats[0]))]);
		double d;
		uint64_t bits;
		do {
			bits = rnext(r);
			memcpy(&d, &bits, sizeof(d));
		} while (d != d || d - d != 0);
		return json_real(d);
	}
	case 4:
	case 5:
		return gen_text(r);
	case 6: {
		json_t *a = json_array();
		for (unsigned i = rn(r, 4); i > 0; i--)
			json_array_append_new(a, gen_value(r, depth + 1));
		return a;
	}
	default: {
		json_t *o = json_object();
		for (unsigned i = rn(r, 4); i > 0; i--)
			json_object_set_new(o, keys[rn(r, sizeof(keys) / sizeof(keys[0]))],
			                    gen_value(r, depth + 1));
		return o;
	}
	}
}

static json_t *gen_args(rng *r)
{
	json_t *o = json_object();
	for (unsigned i = rn(r, 4); i > 0; i--)
		json_object_set_new(o, keys[rn(r, sizeof(keys) / sizeof(keys[0]))],
		                    gen_value(r, 1));
	return o;
}

static const char *const tool_names[] = {"get_weather", "search", "run_python", "read_file",
                                         "send_mail"};

static json_t *gen_schema(rng *r, int depth)
{
	static const char *const types[] = {"string", "integer", "number", "boolean",
	                                    "array",  "object",  "null"};
	json_t *s = json_object();
	const char *t = types[rn(r, depth > 1 ? 4 : 7)];
	if (chance(r, 10)) {
		json_t *ts = json_array();
		json_array_append_new(ts, json_string(t));
		json_array_append_new(ts, json_string("null"));
		json_object_set_new(s, "type", ts);
	} else {
		json_object_set_new(s, "type", json_string(t));
	}
	if (chance(r, 60))
		json_object_set_new(s, "description", gen_text(r));
	if (strcmp(t, "string") == 0 && chance(r, 30)) {
		json_t *e = json_array();
		json_array_append_new(e, json_string("C"));
		json_array_append_new(e, json_string("F"));
		json_object_set_new(s, "enum", e);
	}
	if (chance(r, 25))
		json_object_set_new(s, "default", gen_value(r, 3));
	if (chance(r, 10))
		json_object_set_new(s, "nullable", json_true());
	if (strcmp(t, "array") == 0 && chance(r, 70))
		json_object_set_new(s, "items", gen_schema(r, depth + 1));
	if (strcmp(t, "number") == 0 && chance(r, 30)) {
		json_object_set_new(s, "minimum", json_real(-1.5));
		json_object_set_new(s, "maximum", json_integer(100));
	}
	if (strcmp(t, "object") == 0 && depth < 3) {
		json_t *props = json_object(), *req = json_array();
		for (unsigned i = rn(r, 3); i > 0; i--) {
			const char *k = keys[rn(r, sizeof(keys) / sizeof(keys[0]))];
			json_object_set_new(props, k, gen_schema(r, depth + 1));
			if (chance(r, 50))
				json_array_append_new(req, json_string(k));
		}
		json_object_set_new(s, "properties", props);
		json_object_set_new(s, "required", req);
	}
	return s;
}

static json_t *gen_tool(rng *r, unsigned i)
{
	json_t *f = json_object();
	json_object_set_new(f, "name", json_string(tool_names[i % 5]));
	json_object_set_new(f, "description", gen_text(r));
	json_t *params = json_object();
	json_object_set_new(params, "type", json_string("object"));
	json_t *props = json_object(), *req = json_array();
	for (unsigned k = rn(r, 4); k > 0; k--) {
		const char *name = keys[rn(r, sizeof(keys) / sizeof(keys[0]))];
		json_object_set_new(props, name, gen_schema(r, 1));
		if (chance(r, 50))
			json_array_append_new(req, json_string(name));
	}
	json_object_set_new(params, "properties", props);
	json_object_set_new(params, "required", req);
	if (chance(r, 90))
		json_object_set_new(f, "parameters", params);
	else
		json_decref(params);
	json_t *t = json_object();
	json_object_set_new(t, "type", json_string("function"));
	json_object_set_new(t, "function", f);
	return t;
}

static json_t *gen_content(rng *r)
{
	if (chance(r, 4)) {
		json_t *parts = json_array();
		for (unsigned i = 1 + rn(r, 2); i > 0; i--) {
			json_t *p = json_object();
			json_object_set_new(p, "type", json_string("text"));
			json_object_set_new(p, "text", gen_text(r));
			json_array_append_new(parts, p);
		}
		return parts;
	}
	return gen_text(r);
}

static json_t *gen_message(rng *r, const char *role, unsigned *pending_tools)
{
	json_t *m = json_object();
	json_object_set_new(m, "role", json_string(role));
	if (strcmp(role, "assistant") == 0) {
		json_t *content = gen_content(r);
		if (chance(r, 15) && json_is_string(content)) {
			char buf[2048];
			snprintf(buf, sizeof(buf), "<think>%s</think>%s",
			         json_string_value(content), chance(r, 50) ? "\n\nAnswer" : "done");
			json_decref(content);
			content = json_string(buf);
		}
		if (chance(r, 25))
			json_object_set_new(m, "reasoning_content", gen_text(r));
		if (chance(r, 35)) {
			json_t *calls = json_array();
			unsigned n = 1 + rn(r, 3);
			for (unsigned i = 0; i < n; i++) {
				json_t *f = json_object(), *c = json_object();
				json_object_set_new(f, "name", json_string(tool_names[rn(r, 5)]));
				if (chance(r, 5)) {
					json_t *a = gen_args(r);
					char *s = json_dumps(a, JSON_COMPACT);
					json_object_set_new(f, "arguments", json_string(s));
					free(s);
					json_decref(a);
				} else {
					json_object_set_new(f, "arguments", gen_args(r));
				}
				char id[32];
				snprintf(id, sizeof(id), "call_%u", rn(r, 1000));
				json_object_set_new(c, "id", json_string(id));
				json_object_set_new(c, "type", json_string("function"));
				json_object_set_new(c, "function", f);
				json_array_append_new(calls, c);
			}
			json_object_set_new(m, "tool_calls", calls);
			*pending_tools = n;
			if (chance(r, 30)) {
				json_decref(content);
				content = chance(r, 50) ? json_string("") : json_null();
			}
		}
		json_object_set_new(m, "content", content);
	} else if (strcmp(role, "tool") == 0) {
		json_object_set_new(m, "content", chance(r, 90) ? gen_text(r) : gen_content(r));
		char id[32];
		snprintf(id, sizeof(id), "call_%u", rn(r, 1000));
		json_object_set_new(m, "tool_call_id", json_string(id));
	} else {
		json_object_set_new(m, "content", gen_content(r));
	}
	return m;
}

static json_t *gen_case(rng *r, unsigned index)
{
	json_t *c = json_object(), *msgs = json_array();
	char name[64];
	snprintf(name, sizeof(name), "generated-%u", index);
	json_object_set_new(c, "name", json_string(name));
	unsigned pending = 0;
	if (chance(r, 45))
		json_array_append_new(msgs, gen_message(r, "system", &pending));
	unsigned turns = 1 + rn(r, 4);
	for (unsigned t = 0; t < turns; t++) {
		if (chance(r, 8)) {
			static const char *const roles[] = {"user", "assistant", "tool", "system",
			                                    "developer"};
			json_array_append_new(msgs, gen_message(r, roles[rn(r, 5)], &pending));
			continue;
		}
		json_array_append_new(msgs, gen_message(r, "user", &pending));
		for (unsigned k = rn(r, 3); k > 0 || t + 1 == turns; k--) {
			json_array_append_new(msgs, gen_message(r, "assistant", &pending));
			while (pending > 0) {
				json_array_append_new(msgs, gen_message(r, "tool", &pending));
				pending--;
			}
			if (t + 1 == turns && chance(r, 50))
				break;
			if (k <= 1)
				break;
		}
	}
	if (chance(r, 30) && json_array_size(msgs) > 1)
		json_array_remove(msgs, json_array_size(msgs) - 1);
	json_object_set_new(c, "messages", msgs);
	if (chance(r, 50)) {
		json_t *tools = json_array();
		for (unsigned i = 1 + rn(r, 4); i > 0; i--)
			json_array_append_new(tools, gen_tool(r, rn(r, 5)));
		json_object_set_new(c, "tools", tools);
	}
	json_object_set_new(c, "add_generation_prompt", json_boolean(chance(r, 70)));
	json_object_set_new(c, "bos_token", json_string(chance(r, 50) ? "" : "<s>"));
	json_object_set_new(c, "eos_token", json_string(chance(r, 50) ? "<|im_end|>" : "</s>"));
	json_t *kw = json_object();
	if (chance(r, 60))
		json_object_set_new(kw, "enable_thinking", json_boolean(rn(r, 2)));
	if (chance(r, 20))
		json_object_set_new(kw, "reasoning_effort", json_string("high"));
	if (chance(r, 15)) {
		json_t *b = json_array();
		json_array_append_new(b, json_string("browser"));
		if (chance(r, 50))
			json_array_append_new(b, json_string("python"));
		json_object_set_new(kw, "builtin_tools", b);
	}
	if (chance(r, 10))
		json_object_set_new(kw, "model_identity", gen_text(r));
	json_object_set_new(c, "kwargs", kw);
	return c;
}

Test(jinja, generated_conversations_match_jinja2, .timeout = 300)
{
	unsigned n_cases = 300;
	uint64_t seed = 20260101;
	const char *env = getenv("MOE_JINJA_SEED");
	if (env)
		seed = strtoull(env, NULL, 10);
	if (getenv("MOE_JINJA_CASES"))
		n_cases = (unsigned)strtoul(getenv("MOE_JINJA_CASES"), NULL, 10);
	rng r = {seed};
	templates ts;
	json_t *spec = json_object(), *texts = json_array(), *jobs = json_array();
	load_templates(&ts, texts);
	for (unsigned i = 0; i < n_cases; i++) {
		json_t *c = gen_case(&r, i);
		for (size_t ti = 0; ti < N_TEMPLATES; ti++) {
			json_t *job = json_array();
			json_array_append_new(job, json_integer((json_int_t)ti));
			json_array_append(job, c);
			json_array_append_new(jobs, job);
		}
		json_decref(c);
	}
	json_object_set_new(spec, "templates", texts);
	json_object_set_new(spec, "jobs", jobs);
	int n_out = 0, n_raised = 0, n_error = 0;
	double t0 = (double)clock() / CLOCKS_PER_SEC;
	int bad = compare_all(spec, &ts, "generated", &n_out, &n_raised, &n_error);
	cr_log_info(
	    "generated (seed %llu): %u conversations x %zu templates = %zu renders compared "
	    "with Jinja2 (%d rendered, %d raised, %d failed in both), %d differ; %.1f s CPU",
	    (unsigned long long)seed, n_cases, N_TEMPLATES, n_cases * N_TEMPLATES, n_out, n_raised,
	    n_error, bad, (double)clock() / CLOCKS_PER_SEC - t0);
	cr_assert_eq(bad, 0, "%d of %zu generated renders differ from Jinja2", bad,
	             n_cases * N_TEMPLATES);
	cr_assert_gt(n_out, (int)(n_cases * N_TEMPLATES / 2),
	             "too few renders succeed to mean much");
	json_decref(spec);
	free_templates(&ts);
}

/* ---- (c) the language, on small templates ---- */

/* Each: a template and its variables (JSON); "messages" goes where
 * render_chat_template puts it.  Whitespace control, values as Python prints
 * them, arithmetic, undefined, loops, scoping, macros, tests, filters, string
 * methods, slicing, globals, raise_exception, and errors on both sides. */
static const struct snippet {
	const char *tmpl, *vars;
} snippets[] = {
    {"a\n{% if true %}\nb\n{% endif %}\nc", "{}"},
    {"  {% if true %}x{% endif %}  \n  y", "{}"},
    {"{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n", "{}"},
    {"a  {%- if true -%}  b  {%- endif -%}  c", "{}"},
    {"a\n  {{- 'x' -}}\n  b", "{}"},
    {"x\n  {%+ if true %}y{% endif %}", "{}"},
    {"{% if true +%}\nkeep{% endif %}", "{}"},
    {"  {# comment #}\nx\n  {#- c2 -#}  \n y", "{}"},
    {"a {#- c -#} b {#+ c +#} c", "{}"},
    {"{% raw %}{{ not parsed }}{% endraw %}", "{}"},
    {"  {% raw -%}  x  {%- endraw %}  \n  {% raw %}\ny{% endraw %}\nz", "{}"},
    {"line1\r\nline2\rline3\n", "{}"},
    {"two trailing newlines\n\n", "{}"},
    {"\t{% if true %}\ttab{% endif %}\n\t {% if true %}x{% endif %}", "{}"},
    {"x\343\200\200\302\240 {%- if true %}y{% endif %}", "{}"},
    {"{{ 'a' }}  {% if true %}b{% endif %}", "{}"},
    {"a\n    {%- if true %}b{% endif %}", "{}"},
    {"{% if true %}\n\n{% endif %}\n{% for x in [1] %}{{ x }}\n{% endfor %}", "{}"},
    {"{{- 'x' }}\n{%- if true %}\n{{ 'y' -}}\n   z{% endif %}", "{}"},
    {"<{% for x in [1, 2] -%}\n  {{ x }}\n{%- endfor %}>", "{}"},
    {"a {{ '{{' }} b {{ '}}' }} {{ {'k': {'n': 1}} }}", "{}"},
    {"{# {{ not }} {% also not %} #}x", "{}"},
    {"{{ [1, 'a', none, true, false, 1.5, {'k': [2]}] }} {{ (1,) }} {{ (1, 2) }} {{ () }}", "{}"},
    {"{{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1/3 }} {{ -0.0 }} {{ 2**0.5 "
     "}}",
     "{}"},
    {"{{ 0.1 + 0.2 }} {{ 100.0 }} {{ 1e22 }} {{ 123456789012345678.0 }} {{ 5e-324 }} {{ "
     "1.7976931348623157e308 }}",
     "{}"},
    {"{{ x }} {{ y }} {{ z }} {{ w }}",
     "{\"x\": 2.5, \"y\": 1e-07, \"z\": -123.456, \"w\": 9007199254740993}"},
    {"{{ [x, y] }}", "{\"x\": 0.1, \"y\": 5e-324}"},
    {"{{ d }} {{ d.b }} {{ d.c }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ [s1, s2, s3, s4] }}", "{\"s1\": \"it's\", \"s2\": \"say \\\"hi\\\"\", \"s3\": \"both ' "
                               "and \\\"\", \"s4\": \"back\\\\slash\"}"},
    {"{{ [s] }}", "{\"s\": "
                  "\"\\n\\t\\r\\u0000\177\302\205\302\240\343\200\200\342\200\213\357\273\277\342"
                  "\200\250\303\251\344\270\255\360\237\230\200\356\200\200\"}"},
    {"{{ ['x' ~ 1, 1 ~ 2, none ~ true] }} {{ 'a' ~ x ~ 'b' }}", "{}"},
    {"{{ true }} {{ none }} {{ 'x' }}{{ 3 }}{{ 3.0 }}", "{}"},
    {"{{ 1, 2 }} {{ 'a', }}", "{}"},
    {"{{ 9223372036854775807 }} {{ -9223372036854775807 }}", "{}"},
    {"{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} "
     "{{ 2 ** -1 }}",
     "{}"},
    {"{{ 7.5 // 2 }} {{ -7.5 // 2 }} {{ 7.5 % 2 }} {{ -7.5 % 2 }} {{ 1 + 1.0 }} {{ true + 1 }} {{ "
     "3 * 1.5 }}",
     "{}"},
    {"{{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 2 }} {{ 'a' * 0 }} {{ 'a' * -1 }} {{ [1, 2] + [3] }} "
     "{{ (1,) + (2,) }}",
     "{}"},
    {"{{ 1 < 2 < 3 }} {{ 1 < 2 > 3 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < "
     "[1, 3] }} {{ 'a' != 'a' }}",
     "{}"},
    {"{{ 'b' in 'abc' }} {{ 'x' not in 'abc' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ '' in "
     "'abc' }} {{ 1.0 in [1] }}",
     "{}"},
    {"{{ not 1 }} {{ not '' }} {{ -3 }} {{ +3 }} {{ - -3 }} {{ -x }}", "{\"x\": 2.5}"},
    {"{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ '' or [] }} {{ none or none }}", "{}"},
    {"{{ 'yes' if 1 else 'no' }} {{ 'yes' if 0 else 'no' }} [{{ 'yes' if 0 }}] {{ 1 if 0 else 2 if "
     "0 else 3 }}",
     "{}"},
    {"{{ 10 - 2 - 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ (1 + 2) * 3 }} {{ 1 + 2 ~ 3 }} {{ 2 * 3 "
     "~ 4 }}",
     "{}"},
    {"{{ x > 1 }} {{ x == y }} {{ x is eq(y) }}", "{\"x\": 3, \"y\": 3.0}"},
    {"[{{ u }}] {{ u is defined }} {{ u is undefined }} {{ u|default('d') }} {{ u|d('x') }} {{ "
     "none|default('d') }} {{ ''|default('e', true) }}",
     "{}"},
    {"[{{ d.missing }}] {{ d.missing is defined }} {{ d.a is defined }} [{{ d['missing'] }}] [{{ "
     "[1][5] }}] [{{ 'ab'[9] }}]",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ u|length }} {{ u|list }} {{ u is iterable }} {{ u is sequence }} {{ u is mapping }} {{ u "
     "is none }} {{ u == u2 }} {{ 'x' in u }}",
     "{}"},
    {"{% for x in u %}never{% else %}empty{% endfor %} [{{ u|join(',') }}] [{{ u|trim }}] [{{ "
     "u|upper }}] [{{ u|string }}] {{ u|first is defined }}",
     "{}"},
    {"{{ 'x' ~ u ~ 'y' }} {% if not u %}falsy{% endif %} {{ u|items|list }}", "{}"},
    {"[{{ loop }}]{% for a in [1] %}{{ loop.previtem is defined }}{{ loop.nextitem is defined }}{% "
     "endfor %}",
     "{}"},
    {"{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ "
     "loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{% endfor %}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{% for x in [] %}x{% else %}empty{% endfor %} {% for x in [1, 2] if x > 5 %}x{% else "
     "%}none{% endfor %}",
     "{}"},
    {"{% for x in [1, 2, 3, 4] if x is even %}{{ x }}:{{ loop.index }}/{{ loop.length }}{{ ',' if "
     "not loop.last }}{% endfor %}",
     "{}"},
    {"{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% "
     "endif %}{{ x }}{% endfor %}",
     "{}"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {% for k in d %}{{ k }}{% endfor %} "
     "{% for k, v in d|dictsort %}{{ k }}{% endfor %}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{% for c in s %}{{ c }}.{% endfor %}", "{\"s\": \"h\303\251llo\360\237\230\200\"}"},
    {"{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ "
     "loop.index }}|{% endfor %}",
     "{}"},
    {"{% for x in xs %}{{ loop.cycle('odd', 'even') }}{{ loop.changed(x) }} {% endfor %}",
     "{\"xs\": [1, 1, 2, 2, 1]}"},
    {"{% for x in [1] %}{{ loop.depth }}{{ loop.depth0 }}{% endfor %}", "{}"},
    {"{% for a, b in [[1, 2], (3, 4), 'xy'] %}{{ a }}{{ b }} {% endfor %}", "{}"},
    {"{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 10, 3) %}{{ i }}{% endfor %} "
     "{% for i in range(5, 0, -2) %}{{ i }}{% endfor %} {{ range(3) }} {{ range(3)|list }}",
     "{}"},
    {"{% for m in messages %}{{ m.role }}:{{ m.content }}{% if not loop.last %}|{% endif %}{% "
     "endfor %}",
     "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
     "\"content\": \"yo\"}]}"},
    {"{% for x in xs|reverse %}{{ x }}{% endfor %} {% for x in xs[::-1] %}{{ x }}{% endfor %}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = i*10 %}{{ x }}{% endfor %}{{ x }}",
     "{}"},
    {"{% for i in [1,2] %}{% if i == 1 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}", "{}"},
    {"{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}{% set x = 2 %}{{ m() }}", "{}"},
    {"{% macro m() %}{{ i }}{% endmacro %}{% for i in [1] %}[{{ m() }}]{% endfor %}", "{}"},
    {"{% for i in [1] %}{% macro m() %}{{ i }}{{ z }}{% endmacro %}{% set z = 3 %}{{ m() }}{% "
     "endfor %}",
     "{}"},
    {"{% set x = 1 %}{% macro m() %}{% set x = 2 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}", "{}"},
    {"{% macro m() %}{% if x is not defined %}{% set x = 'd' %}{% endif %}{{ x }}{% endmacro %}{{ "
     "m() }}",
     "{\"x\": \"ctx\"}"},
    {"{% macro m() %}{% if x is not defined %}{% set x = 'd' %}{% endif %}{{ x }}{% endmacro %}{{ "
     "m() }}",
     "{}"},
    {"{% set x %}a{{ y }}{% set y = 2 %}{{ y }}{% endset %}{{ x }}[{{ y }}]", "{}"},
    {"{{ x }}{% set x = 1 %}{{ x }}", "{\"x\": 5}"},
    {"{% if true %}{% set q = 1 %}{% endif %}{{ q }}", "{}"},
    {"{% set ns = namespace(n=0, items=[]) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% "
     "endfor %}{{ ns.n }} {{ ns.items }} {{ ns.missing is defined }}",
     "{}"},
    {"{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{% set ns.a = 'x' %}{{ ns.a }}{{ "
     "ns['b'] }}",
     "{}"},
    {"{% set a, b = [1, 2] %}{{ a }}{{ b }} {% set c = 1, 2 %}{{ c }} {% set d, e = 'xy' %}{{ d "
     "}}{{ e }}",
     "{}"},
    {"{% set x | upper %}abc {{ 1 + 1 }}{% endset %}[{{ x }}] {% set y | trim | replace('a', 'b') "
     "%}  aaa  {% endset %}[{{ y }}]",
     "{}"},
    {"{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}] {% set q = 5 %}{% with q = q + 1 "
     "%}{{ q }}{% endwith %}{{ q }}",
     "{}"},
    {"{% set has = false %}{% for v in [1, 2] %}{% if v == 2 %}{% set has = true %}{% endif %}{% "
     "endfor %}{{ has }}",
     "{}"},
    {"{% macro m(a, b='B', c=none) %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ m(1) }} {{ m(1, 2) }} "
     "{{ m(1, c=3) }} {{ m(a=4) }} [{{ m() }}]",
     "{}"},
    {"{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{% endmacro %}{{ m('x') }} {{ m('x', 'y') }}", "{}"},
    {"{% macro m() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, k=3) }}", "{}"},
    {"{% macro m(a) %}{{ a }}{{ varargs|length }}{% endmacro %}{{ m(1, 2, 3) }}", "{}"},
    {"{% macro m(x) %}[{{ caller(x) }}]{% endmacro %}{% call(v) m(5) %}got {{ v }}{% endcall %}",
     "{}"},
    {"{% macro m() %}<{{ caller() }}>{% endmacro %}{% call m() %}body {{ 1 + 1 }}{% endcall %}",
     "{}"},
    {"{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
     "{}"},
    {"{% macro m() %}  x  {% endmacro %}[{{ m() }}] [{{ m()|trim }}] {{ m() is string }} {{ m is "
     "callable }}",
     "{}"},
    {"{% macro outer() %}{% macro inner() %}in{% endmacro %}{{ inner() }}out{% endmacro %}{{ "
     "outer() }}",
     "{}"},
    {"{% filter upper %}abc {{ 'def' }}{% endfilter %} {% filter replace('a', 'o') | title "
     "%}banana{% endfilter %}",
     "{}"},
    {"{{ 1 is odd }} {{ 2 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ none is "
     "none }} {{ true is boolean }} {{ 1 is boolean }}",
     "{}"},
    {"{{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }} {{ 1 is number }} {{ true is "
     "number }} {{ 'a' is number }} {{ 1.5 is number }}",
     "{}"},
    {"{{ 'a' is string }} {{ ['a'] is sequence }} {{ 'a' is sequence }} {{ d is sequence }} {{ d "
     "is mapping }} {{ 1 is sequence }} {{ 1 is iterable }} {{ d is iterable }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ 'abc' is lower "
     "}} {{ 'ABC' is upper }} {{ 'aB' is lower }}",
     "{}"},
    {"{{ 1 is in [1, 2] }} {{ 'a' is in 'abc' }} {{ 2 is eq 2 }} {{ 2 is ne 3 }} {{ 3 is gt 2 }} "
     "{{ 3 is ge 3 }} {{ 1 is lt 2 }} {{ 1 is le 0 }} {{ 2 is equalto 2 }} {{ 2 is greaterthan 1 "
     "}} {{ 1 is lessthan 2 }}",
     "{}"},
    {"{{ 'upper' is filter }} {{ 'nope' is filter }} {{ 'defined' is test }} {{ 'urlize' is filter "
     "}} {{ none is sameas none }} {{ true is sameas true }}",
     "{}"},
    {"{{ x is string }} {{ x is not string }} {{ not x is string }} {{ x is escaped }} {{ (x|safe) "
     "is escaped }}",
     "{\"x\": \"s\"}"},
    {"{{ range is callable }} {{ 'x' is callable }} {{ d.items is callable }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ x|tojson }} {{ x|tojson(indent=2) }} {{ x|tojson(sort_keys=true) }} {{ "
     "x|tojson(separators=(',', ':')) }}",
     "{\"x\": {\"b\": [1, 2.0, null, true], \"a\": {\"\303\251\": "
     "\"\\n\\\"\\\\/\\t\\u0001\342\200\250\360\237\230\200\"}, \"c\": 1e+20}}"},
    {"{{ x|tojson(true) }} {{ x|tojson(ensure_ascii=true, indent=1) }} {{ []|tojson(indent=2) }} "
     "{{ {}|tojson(indent=2) }} {{ [[]]|tojson(indent=2) }}",
     "{\"x\": [\"\303\251\360\237\230\200\177\", {\"k\": []}]}"},
    {"{{ 'x'|tojson }} {{ 1|tojson }} {{ 1.0|tojson }} {{ none|tojson }} {{ (1, 2)|tojson }} {{ "
     "('a'|safe)|tojson }} {{ x|tojson(indent='\t') }}",
     "{\"x\": [1]}"},
    {"[{{ '  a b \n'|trim }}] [{{ 'xxaxx'|trim('x') }}] [{{ s|trim }}]",
     "{\"s\": \"\343\200\200\302\240 a \342\200\250\302\205\"}"},
    {"{{ 'abc'|length }} {{ 'h\303\251llo\360\237\230\200'|length }} {{ [1, 2]|length }} {{ "
     "d|length }} {{ d|count }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ d|items|list }} {{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }} {{ "
     "d.items() }} {{ d.keys() }}",
     "{\"d\": {\"a\": 1, \"b\": [2]}}"},
    {"{{ xs|join }} {{ xs|join(', ') }} {{ [1, none, 2.5]|join('-') }} {{ ds|join(',', "
     "attribute='n') }} {{ 'abc'|join('.') }}",
     "{\"xs\": [\"a\", \"b\", \"c\"], \"ds\": [{\"n\": 1}, {\"n\": \"x\"}]}"},
    {"{{ 'Hello World'|replace('o', '0') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', "
     "'-') }} {{ 5|replace('5', 'five') }}",
     "{}"},
    {"{{ 'h\303\211llo \303\237'|upper }} {{ 'H\303\211LLO'|lower }} {{ 'hello world-foo(bar) "
     "[x]<y>'|title }} {{ 'hELLO wORLD'|capitalize }} {{ \"it's a dog's\"|title }}",
     "{}"},
    {"{{ xs|first }} {{ xs|last }} {{ 'abc'|first }} {{ 'abc'|last }} {{ []|first is defined }} {{ "
     "d|first }}",
     "{\"xs\": [\"a\", \"b\", \"c\"], \"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": "
     "null, \"e\": true}}}"},
    {"{{ d|list }} {{ 'ab'|list }} {{ (1, 2)|list }} {{ d.values()|list }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ 5|string }} {{ [1, 'a']|string }} {{ none|string }} {{ 1.5|string ~ 'x' }}", "{}"},
    {"{{ '42'|int }} {{ '42.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ -3.9|int }} "
     "{{ ' 12 '|int }} {{ '1_000'|int }} {{ '0x1F'|int(0, 16) }} {{ true|int }} {{ none|int }} {{ "
     "'nan'|int }}",
     "{}"},
    {"{{ '3.5'|float }} {{ 'x'|float }} {{ 2|float }} {{ ' 1e3 '|float }} {{ '1_0.5'|float }} {{ "
     "'inf'|float }} {{ '-nan'|float }} {{ none|float(1.5) }}",
     "{}"},
    {"{{ -3|abs }} {{ -2.5|abs }} {{ (-3)|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) "
     "}} {{ 1.5|round(0, 'floor') }} {{ 1.2|round(0, 'ceil') }} {{ 3|round }} {{ 0.125|round(2) }} "
     "{{ -0.5|round }}",
     "{}"},
    {"{{ xs|map('upper')|list }} {{ ds|map(attribute='n')|list }} {{ ds|map(attribute='m', "
     "default='z')|list }} {{ xs|map('replace', 'a', 'A')|join }}",
     "{\"xs\": [\"a\", \"b\", \"c\"], \"ds\": [{\"n\": 1}, {\"n\": 2, \"m\": 3}]}"},
    {"{{ ns|select('odd')|list }} {{ ns|reject('odd')|list }} {{ ns|select|list }} {{ "
     "ns|select('>', 1)|list }} {{ ns|select('in', [1, 3])|list }}",
     "{\"ns\": [0, 1, 2, 3]}"},
    {"{{ ds|selectattr('on')|map(attribute='n')|list }} {{ ds|rejectattr('on')|list }} {{ "
     "ds|selectattr('n', 'equalto', 2)|list }} {{ ds|selectattr('n', '>', 1)|list|length }}",
     "{\"ds\": [{\"n\": 1, \"on\": true}, {\"n\": 2, \"on\": false}, {\"n\": 3}]}"},
    {"{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} {{ ['b', "
     "'A', 'c']|sort(case_sensitive=true) }} {{ ds|sort(attribute='n')|map(attribute='k')|list }}",
     "{\"ds\": [{\"n\": 2, \"k\": \"a\"}, {\"n\": 1, \"k\": \"b\"}, {\"n\": 2, \"k\": \"c\"}]}"},
    {"{{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ d|dictsort(by='value') }} {{ "
     "d|dictsort(true) }}",
     "{\"d\": {\"b\": 1, \"A\": 3, \"c\": 2}}"},
    {"{{ [1, 2, 1, 3]|unique|list }} {{ ['a', 'A', 'b']|unique|list }} {{ ['a', "
     "'A']|unique(case_sensitive=true)|list }} {{ ds|unique(attribute='n')|list }}",
     "{\"ds\": [{\"n\": 1}, {\"n\": 1, \"x\": 2}]}"},
    {"{{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ ['b', 'A']|min }} {{ []|max is defined }} {{ "
     "ds|max(attribute='n') }}",
     "{\"ds\": [{\"n\": 1}, {\"n\": 5}]}"},
    {"{{ [1, 2, 3]|sum }} {{ [1.5, 2]|sum }} {{ ds|sum(attribute='n') }} {{ [1]|sum(start=10) }}",
     "{\"ds\": [{\"n\": 1}, {\"n\": 5}]}"},
    {"{{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }} {{ 'h\303\251llo'|reverse }}", "{}"},
    {"{{ 'a b  c\nd'|wordcount }} {{ 'h\303\251llo w\303\266rld_x 3.5'|wordcount }} {{ "
     "'abc'|center(9) }}| {{ 'ab'|center(7) }}|",
     "{}"},
    {"{{ s|indent }}|{{ s|indent(2, true) }}|{{ s|indent('> ', blank=true) }}|{{ "
     "s|indent(first=true) }}",
     "{\"s\": \"a\\n\\nb\\r\\nc\\n\"}"},
    {"{{ s|truncate(10) }}|{{ s|truncate(10, true) }}|{{ s|truncate(10, end='\342\200\246') }}|{{ "
     "s|truncate(30) }}|{{ s|truncate(10, leeway=0) }}",
     "{\"s\": \"hello world this is long\"}"},
    {"{{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 'x')|list }} {{ [1, 2, 3, 4, "
     "5]|slice(2)|list }} {{ [1, 2, 3]|slice(2, 0)|list }}",
     "{}"},
    {"{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|escape }} {{ ('<b>'|safe)|e }} {{ "
     "('<b>'|safe)|forceescape }} {{ 5|e }}",
     "{}"},
    {"{{ ('<a>'|safe) + '<b>' }} {{ '<a>' + ('<b>'|safe) }} {{ ('<a>'|safe) ~ '<b>' }} {{ "
     "('<x>'|safe) * 2 }} {{ ('a<'|safe).replace('<', '>') }}",
     "{}"},
    {"{{ x|attr('a') }} [{{ x|attr('zz') }}] {{ d|attr('keys') is callable }} [{{ d|attr('a') }}]",
     "{\"x\": {\"a\": 1}, \"d\": {\"a\": 1}}"},
    {"{{ '%s-%s'|format('a', 1) }} {{ '%(k)s!'|format(k='v') }} {{ '%d%%'|format(50) }} {{ "
     "'%5.2f|%x'|format(3.14159, 255) }} {{ '%r'|format('q') }}",
     "{}"},
    {"{{ 'a' ~ 'b' | upper }} {{ -1|abs }} {{ 1 + 2|string }}", "{}"},
    {"{{ s.startswith('He') }} {{ s.endswith('ld') }} {{ s.startswith(('x', 'H')) }} {{ "
     "s.startswith('l', 2) }} {{ s.endswith('o', 0, 5) }}",
     "{\"s\": \"Hello world\"}"},
    {"{{ s.split() }} {{ s.split(' ') }} {{ s.split(None, 1) }} {{ s.rsplit(None, 1) }} {{ "
     "s.split('l') }} {{ s.rsplit('l', 1) }} {{ s.split('l', 1) }}",
     "{\"s\": \"  Hello  wor ld  \"}"},
    {"{{ s.split() }} {{ s.split('\343\200\200') }}",
     "{\"s\": \"a\343\200\200b\302\240c\342\200\250d\\u001ce\"}"},
    {"[{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ s.strip(' \n') }}] [{{ "
     "'xxhixx'.strip('x') }}] [{{ 'abcba'.strip('ab') }}]",
     "{\"s\": \" \\n hi \\t\\n\"}"},
    {"{{ s.lower() }} {{ s.upper() }} {{ s.title() }} {{ s.capitalize() }} {{ s.swapcase() }}",
     "{\"s\": \"hELLo wORLD it's 3rd\"}"},
    {"{{ s.replace('l', 'L') }} {{ s.replace('l', 'L', 1) }} {{ s.find('o') }} {{ s.rfind('o') }} "
     "{{ s.find('z') }} {{ s.count('l') }} {{ s.index('w') }} {{ s.find('o', 5) }}",
     "{\"s\": \"hello world\"}"},
    {"{{ s.find('\303\266') }} {{ s.index('d') }} {{ s[1:3] }} {{ s[-2:] }} {{ s[::-1] }} {{ "
     "s[::2] }} {{ s|length }}",
     "{\"s\": \"h\303\251ll\303\266 w\303\266rld\360\237\230\200\"}"},
    {"{{ s.splitlines() }} {{ s.splitlines(true) }} {{ ''.splitlines() }}",
     "{\"s\": \"a\\nb\\r\\nc\\rd\\u000be\342\200\250f\\n\"}"},
    {"{{ ', '.join(xs) }} {{ '-'.join('abc') }} {{ s.partition(':') }} {{ s.rpartition(':') }} {{ "
     "'x'.partition(':') }}",
     "{\"xs\": [\"a\", \"b\", \"c\"], \"s\": \"k:v:w\"}"},
    {"{{ 'ab'.center(6, '*') }} {{ 'ab'.ljust(5) }}| {{ 'ab'.rjust(5, '.') }} {{ '42'.zfill(5) }} "
     "{{ '-42'.zfill(5) }}",
     "{}"},
    {"{{ '{} and {}'.format('a', 'b') }} {{ '{0}{1}{0}'.format('x', 'y') }} {{ '{n}!'.format(n=5) "
     "}} {{ '{{}}{}'.format(1) }} {{ '{!r}'.format('q') }}",
     "{}"},
    {"{{ 'abc'.isalpha() }} {{ '123'.isdigit() }} {{ 'a1'.isalnum() }} {{ ' \t'.isspace() }} {{ "
     "'abc'.islower() }} {{ 'ABC'.isupper() }} {{ ''.isalpha() }} {{ 'Ab Cd'.istitle() }}",
     "{}"},
    {"{{ 'prefix-x'.removeprefix('prefix-') }} {{ 'x.txt'.removesuffix('.txt') }} {{ "
     "'abc'.removeprefix('z') }}",
     "{}"},
    {"{{ s.startswith('<tool_response>') and s.endswith('</tool_response>') }} {{ "
     "s.split('</think>')[-1].lstrip('\n') }} {{ "
     "s.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') }}",
     "{\"s\": \"<think>\\nhmm\\n</think>\\n\\nanswer\"}"},
    {"{{ xs[0] }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[::2] }} {{ xs[5:] "
     "}} {{ xs[-10:2] }} {{ xs[2:0:-1] }} {{ xs[1:100] }}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{{ (1, 2, 3)[1:] }} {{ range(10)[2:8:3]|list }} {{ 'abc'[1] }} {{ xs.index('b') }} {{ "
     "xs.count('a') }} {{ xs.copy() }}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }} {{ d['a'] }} {{ d.a }} {{ d.c.e "
     "}} {{ d['c']['d'] }} {{ d.copy() == d }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ m.items is callable }} {{ m['items'] }} {{ m.get('keys') }} {{ m.values is callable }}",
     "{\"m\": {\"items\": \"shadowed\?\", \"keys\": 1}}"},
    {"{{ {'b': 1, 'a': 2} }} {{ {'a': 1, 'a': 2} }} {{ dict(a=1, b='x') }} {{ dict([('k', 'v')]) "
     "}} {{ [] }} {{ {} }}",
     "{}"},
    {"{{ x.0 }} {{ x.1.k }} {{ [[1, 2], [3]][1][0] }}", "{\"x\": [\"a\", {\"k\": \"v\"}]}"},
    {"{{ [1, 2] == [1, 2] }} {{ [1, 2] == (1, 2) }} {{ {'a': 1} == {'a': 1.0} }} {{ none == none "
     "}} {{ 'a' == 'a'|safe }}",
     "{}"},
    {"{{ strftime_now('%Y-%m-%d') }} {{ strftime_now('%d %b %Y %H:%M') }} {{ strftime_now('%A %j') "
     "}}",
     "{}"},
    {"{{ namespace(a=1).a }} {{ range(0) }} {{ range(2, 5) }} {{ range(0, 10, 3) }} {{ "
     "range(3)|length }}",
     "{}"},
    {"a{{ raise_exception('bad input: ' ~ 42) }}b", "{}"},
    {"{% if messages|length == 0 %}{{ raise_exception('No messages provided.') }}{% endif %}",
     "{}"},
    {"{% macro m() %}{{ raise_exception('from a macro') }}{% endmacro %}x{{ m() }}", "{}"},
    {"{{ 1 + 'a' }}", "{}"},
    {"{{ u.x }}", "{}"},
    {"{{ u + 1 }}", "{}"},
    {"{{ u() }}", "{}"},
    {"{{ 'a' < 1 }}", "{}"},
    {"{{ 1 / 0 }}", "{}"},
    {"{{ 1 // 0 }}", "{}"},
    {"{% for x in 5 %}{% endfor %}", "{}"},
    {"{% for a, b in [1] %}{% endfor %}", "{}"},
    {"{{ d.update({}) }}",
     "{\"d\": {\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": {\"d\": null, \"e\": true}}}"},
    {"{{ [].append(1) }}", "{}"},
    {"{{ none.x }} ok\? {{ none['x'] }}", "{}"},
    {"{% set x = 1 %}{% set x.y = 2 %}", "{}"},
    {"{{ 1|tojson(indent=none)|length }} {{ u|tojson }}", "{}"},
    {"{{ range(200000)|length }}", "{}"},
    {"{{ {'a': 1}|items|list }} {{ 'x'|items|list }}", "{}"},
    {"{{ [1, 'a']|sort }}", "{}"},
    {"{{ '%d'|format('x') }}", "{}"},
    {"{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "{}"},
    {"{% macro m(a) %}{% endmacro %}{{ m(b=2) }}", "{}"},
    {"{{ 'abc'.split('') }}", "{}"},
    {"{{ xs|map('upper')|length }}", "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{{ (xs|select)|last }}", "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{{ 'a\\nb' }}|{{ \"\\u00e9\\U0001F600\" }}|{{ '\\x41\\101\\0' }}|{{ 'a\\qb' }}|{{ "
     "'\\\303\251' }}|{{ 'it\\'s' }}|{{ \"say \\\"x\\\"\" }}|{{ 'a' 'b' \"c\" }}",
     "{}"},
    {"{{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }} {{ 1_0.5 }} {{ 1e3 }} {{ 1E-3 }} {{ 10.0e-1 }} "
     "{{ 007 if false else 1 }}",
     "{}"},
    {"{{ 'multi\nline' }}|{{ 'tab\there' }}", "{}"},
    {"{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}",
     "{\"a\": 0, \"b\": 0, \"c\": 1}"},
    {"{% if a %}A{% elif b %}B{% else %}D{% endif %}", "{\"a\": 0, \"b\": 0}"},
    {"{{ 'x' if u is defined and u else 'y' }} {{ (1, 2)[0] }} {{ [1, 2, 3][-2:] }} {{ x[1][0] }}",
     "{\"x\": [[1], [2]]}"},
    {"{{ '%s and %s' % ('a', 'b') }} {{ '%s' % 'x' }} {{ '%d items' % 3 }} {{ '%s' % [1, 2] }} {{ "
     "'%.2f' % 3.14159 }} {{ '%5s|%-5s|%.2s|%3r|' % ('a', 'b', '\303\251xyz', 'q') }}",
     "{}"},
    {"{{ 'Hello' ~ ' ' ~ name|default('you', true) ~ '!' }}", "{\"name\": \"\"}"},
    {"{%- set x = 1 -%}\n  {{ x }}  \n{%- set y = 2 %}\n{{ y }}", "{}"},
    {"{% for i in range(3) -%}\n{{ i }}\n{%- endfor %}", "{}"},
    {"{% for i in range(3) %}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %}", "{}"},
    {"{% macro m(x) -%}\n  [{{ x }}]\n{%- endmacro %}\n{{ m(1) }}\n{{- m(2) }}", "{}"},
    {"  {%- macro m() %}\nbody\n  {% endmacro %}\n{{ m() }}|", "{}"},
    {"{{ messages[0]['role'] }} {{ messages[-1].content|trim }} {{ messages|selectattr('role', "
     "'equalto', 'user')|list|length }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", "
     "\"content\": \" u \"}]}"},
    {"{{ messages|map(attribute='role')|join(',') }} {{ messages|rejectattr('role', 'in', "
     "['system'])|map(attribute='content')|list }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", "
     "\"content\": \"u\"}]}"},
    {"{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'user' %}{% set "
     "ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}",
     "{\"messages\": [{\"role\": \"user\"}]}"},
    {"{% for m in messages if m.role != 'system' %}{{ loop.index0 }}{{ m.role }}{% endfor %}",
     "{\"messages\": [{\"role\": \"system\"}, {\"role\": \"user\"}, {\"role\": \"assistant\"}]}"},
    {"{{ tools|tojson(indent=4) }}",
     "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
     "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"number\", \"default\": 1.5}}, "
     "\"required\": [\"a\"]}}}]}"},
    {"{{ x|tojson }} {{ y|tojson }}",
     "{\"x\": [1.0, 0.5, 1e-10, 123456789.0, 1.5e+300, -2.0], \"y\": {\"nested\": {\"deep\": "
     "[null, false, \"\\u0000\\u001f\"]}}}"},
    {"{{ x|string }} {{ x|join('|') }} {{ x|first|string }}",
     "{\"x\": [1.0, null, true, \"s\", {\"k\": 1.5}]}"},
    {"{{ x|int + 1 }} {{ x|float * 2 }} {{ (x|int) // 2 }}", "{\"x\": \"7\"}"},
    {"{{ '' ~ none }} {{ none|string }} {{ none|tojson }} {{ [none] }} {{ none is none }} {{ none "
     "== none }} [{{ none|default('d') }}]",
     "{}"},
    {"{% set d = {'a': 1} %}{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}{% for k, v in "
     "d|dictsort %}{{ k }}{% endfor %}",
     "{}"},
    {"{{ 'abc'.upper().lower().title() }} {{ ' a '.strip().center(5, '-') }} {{ "
     "'a,b,,c'.split(',') }} {{ 'a,b,,c'.split(',', 2) }} {{ ',a,'.split(',') }}",
     "{}"},
    {"{{ 'ab' in ['ab', 'c'] }} {{ 'a' in {'a': 1} }} {{ 1 in {'1': 1} }} {{ [1] in [[1], 2] }} {{ "
     "none in [none] }}",
     "{}"},
    {"{{ [1, 2, 3]|batch(2)|map('sum')|list }} {{ [[1, 2], [3]]|map('length')|list }} {{ ['a', "
     "'bb']|map('length')|max }}",
     "{}"},
    {"{{ lipsum is defined }} {{ range is defined }} {{ dict is defined }} {{ namespace is defined "
     "}} {{ joiner is defined }}",
     "{}"},
    {"{% set parts = [] %}{% for i in range(3) %}{% set parts = parts + [i] %}{% endfor %}{{ parts "
     "}}",
     "{}"},
    {"{% set parts = [] %}{% set parts = parts + [1] %}{% set parts = parts + [2] %}{{ parts }}",
     "{}"},
    {"{{ '\303\251'|length }} {{ 'e\314\201'|length }} {{ '\360\237\230\200'|length }} {{ "
     "'\360\237\230\200x'[1] }} {{ '\303\251\360\237\230\200'[::-1] }}",
     "{}"},
    {"{{ 'abc'|center(2) }}|{{ 'abc'.ljust(2) }}|{{ 'a'.center(4) }}|{{ 'a'.center(5) }}|{{ "
     "'ab'.center(5) }}|",
     "{}"},
    {"{{ 1 if true }}{{ 2 if false }}{{ 3 if none else 4 }}", "{}"},
    {"{% for x in [3, 1, 2]|sort %}{{ x }}{% endfor %}{% for x in {'b': 1, 'a': 2}|dictsort %}{{ "
     "x[0] }}{{ x.1 }}{% endfor %}",
     "{}"},
    {"{{ {'a': 1}.items()|list|first|first }} {{ (1, 2)|last }} {{ [[1, 2]]|first|last }}", "{}"},
    {"{{ x }}", "{\"x\": [[], {}, [[]], {\"a\": {}}]}"},
    {"{{ d['a b'] }} {{ d['\346\227\245\346\234\254'] }}",
     "{\"d\": {\"a b\": 1, \"\346\227\245\346\234\254\": 2}}"},
    {"{{ 5 is divisibleby 0 }}", "{}"},
    {"{{ 'a' * 3 ~ 'b' * 2 }} {{ ('a' ~ 'b') * 2 }}", "{}"},
    {"{{ 10 % 3 }} {{ -10 % 3 }} {{ 10.5 % 3 }} {{ 2 ** 62 }} {{ 2 ** 63 - 1 if false else 1 }} {{ "
     "3 / 1 }} {{ 0.0 == -0.0 }} {{ 1e308 * 10 }} {{ -1e308 * 10 }}",
     "{}"},
    {"{{ x == y }} {{ x < y }} {{ x != y }} {{ x > y }} {{ y < x }} {{ [x, 2.5]|max }} {{ 3 > 2.5 "
     "}} {{ -3 < -2.5 }} {{ 2 <= 2.0 }}",
     "{\"x\": 9007199254740993, \"y\": 9007199254740992.0}"},
    {"{{ [x]|tojson }} {{ [y] }}", "{\"x\": 1e+16, \"y\": 1.2345678901234567e+19}"},
    {"{{ (0.1).__class__ }}", "{}"},
    {"{{ 'ab'.__len__() }}", "{}"},
    {"{% set g = xs|map('upper') %}{{ g|first }}{{ g|list }}{{ g|list }}",
     "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{% set g = xs|select %}{{ 'b' in g }}{{ g|list }}", "{\"xs\": [\"a\", \"b\", \"c\"]}"},
    {"{% set g = xs|map('upper') %}{% for x in g %}{{ x }}{% endfor %}{% for x in g %}{{ x }}{% "
     "endfor %}|{{ g|join }}",
     "{\"xs\": [\"a\", \"b\"]}"},
    {"{% if xs|select('eq', 'zz') %}a generator is true{% endif %} {{ xs|select|first }} {{ "
     "xs|reject|list }}",
     "{\"xs\": [\"a\", \"\", \"c\"]}"},
    {"{% for c in ('<a>'|safe) %}{{ c + '&' }}{% endfor %} {{ ('<a>'|safe)[0] + '&' }} {{ "
     "('<a>'|safe)[1:] + '&' }} {{ ('<a>'|safe).upper() + '&' }}",
     "{}"},
    {"{%- raw %} a {% endraw -%}  b", "{}"},
    {"{{- 'x' -}}", "{}"},
    {"x {#-#} y {##} z", "{}"},
    {"a {# c -#}\n  b", "{}"},
    {"end with brace {", "{}"},
    {"{{ '{{' ~ '}}' }}{{ '%}' }}", "{}"},
    {"{% set s = '{% x %}' %}{{ s }}", "{}"},
    {"  \t{%- if true -%}  \t\nx\n  {%- endif %}", "{}"},
    {"a\n\n  {% if true %}\n  b\n  {% endif %}\n\nc", "{}"},
    {"{% for i in [1, 2] %}\n    {{- i }}\n{% endfor %}", "{}"},
    {"{% for i in [1, 2] -%}\n    {{ i }}\n{%- endfor %}", "{}"},
    {"x   {%+ if true %}y{% endif %}   z", "{}"},
    {"{%if true%}a{%endif%}{%for i in [1]%}b{%endfor%}", "{}"},
    {"{{x}}{{x|upper}}{{x ~x}}", "{\"x\": \"q\"}"},
    {"{% if true %}\r\n  line\r\n{% endif %}\r\n", "{}"},
    {"{{ -x|abs }} {{ not x == 3 }} {{ x is not none and x > 2 }} {{ (not x) == false }}",
     "{\"x\": 3}"},
    {"{{ d.items()|list|first|last }} {{ 'a,b'.split(',')[1].upper() }} {{ [1, 2, 3][1:][0] }}",
     "{\"d\": {\"k\": \"v\"}}"},
    {"{% for (a, b) in [(1, 2)] %}{{ a }}{{ b }}{% endfor %}", "{}"},
    {"{% for a, in [(1,)] %}{{ a }}{% endfor %}", "{}"},
    {"{{ range(10)[::-3] }} {{ range(10)[8:2:-2] }} {{ range(1, 20, 4)[::2] }} {{ range(5)[10:] }}",
     "{}"},
    {"{% set x = 1 if false else 2 %}{{ x }} {% set y = 'a' ~ 'b' if true %}{{ y }}", "{}"},
    {"{{ 1 if true else 2 if true else 3 }} {{ [1, 2][0 if true else 1] }}", "{}"},
    {"{{ [1, 2,] }} {{ {'a': 1,} }} {{ f(1,) if false }}", "{}"},
    {"{{ 'a' 'b' 'c' }} {{ 1 + + 2 }} {{ 1 - - 2 }} {{ 2 * -1 }} {{ -2 ** 2 }} {{ (-2) ** 2 }}",
     "{}"},
    {"{{ x.y.z }}", "{\"x\": {\"y\": {\"z\": \"deep\"}}}"},
    {"{{ x['y']['z'] }} {{ x.y['z'] }} {{ x['y'].z }}", "{\"x\": {\"y\": {\"z\": \"deep\"}}}"},
    {"{{ 'abc' is in ['abc'] }} {{ 3 is in range(5) }} {{ 'ab' in 'xaby' }}", "{}"},
    {"{% if x is defined and x is not none and x|length > 0 %}yes{% endif %}", "{\"x\": [1]}"},
    {"{{ x is mapping and 'a' in x }} {{ y is iterable and y is not string }}",
     "{\"x\": {\"a\": 1}, \"y\": \"s\"}"},
    {"{{ (1, 2) == (1, 2) }} {{ [(1, 2)] }} {{ ((1,),) }}", "{}"},
    {"{% set a = [1, [2, 3]] %}{{ a[1][0] }}{{ a|length }}{{ a[1]|length }}{{ a[-1][-1] }}", "{}"},
    {"{{ range(3)[1] }} {{ range(3)[-1] }} {{ range(10)[::3] }} {{ range(0, 10, 2)[1:3] }}", "{}"},
    {"{{ 'x'|default('y') }} {{ false|default('y') }} {{ false|default('y', true) }} {{ 0|d(5, "
     "boolean=true) }}",
     "{}"},
    {"{{ '%s' % none }} {{ '%s %s' % (1, 2.5) }} {{ '%(a)s-%(b)d' % {'a': 'x', 'b': 3} }} {{ '%%' "
     "% () }}",
     "{}"},
    {"{{ '%i %o %x %X %e %g %c' % (42, 8, 255, 255, 12345.678, 0.0001, 65) }}", "{}"},
    {"{{ '%5d|%-5d|%05d|%+d' % (42, 42, 42, 42) }} {{ '%.3f|%10.2f|%-8.1e|' % (1.0, 3.14159, "
     "1234.5) }}",
     "{}"},
    {"{{ 1 == '1' }} {{ none == false }} {{ 0 == false }} {{ 1 == true }} {{ [] == [] }} {{ {} == "
     "{} }} {{ 'a' != 1 }}",
     "{}"},
    {"{{ 1.5 > 1 }} {{ true > false }} {{ 2 >= 2.0 }} {{ -1 < 0.0 }} {{ 'B' < 'a' }} {{ '\303\251' "
     "> 'z' }} {{ [1] < [1, 0] }}",
     "{}"},
    {"{{ xs|sort(attribute='a.b') }}", "{\"xs\": [{\"a\": {\"b\": 2}}, {\"a\": {\"b\": 1}}]}"},
    {"{{ xs|map(attribute='0')|list }} {{ xs|map(attribute=1)|list }}",
     "{\"xs\": [[1, 2], [3, 4]]}"},
    {"{{ xs|selectattr('a', 'defined')|list }} {{ xs|rejectattr('a', 'undefined')|list }} {{ "
     "xs|selectattr('a', 'none')|list }}",
     "{\"xs\": [{\"a\": null}, {\"b\": 1}]}"},
    {"{{ ds|dictsort(false, 'value') }} {{ {'b': 'B', 'a': 'a'}|dictsort(by='value') }}",
     "{\"ds\": {\"x\": 2, \"y\": 1}}"},
    {"{{ [0.5, 1, true]|sum }} {{ ['a', 'B', 'c']|max }} {{ ['a', 'B', "
     "'c']|max(case_sensitive=true) }} {{ [2, 1.5]|min }}",
     "{}"},
    {"{{ 'a\nb'|indent(width='--') }} {{ ''|indent }}|{{ 'x'|indent(first=true, width=1) }}", "{}"},
    {"{{ '\303\234n\303\257c\303\266d\303\251'|upper }} {{ '\303\200\303\211\303\216'|lower }} {{ "
     "'stra\303\237e'|title }} {{ '\307\206emal'|capitalize }} {{ '\303\261'.isalpha() }} {{ "
     "'\331\243'.isdigit() }}",
     "{}"},
    {"{{ s|wordcount }} {{ s.split()|length }} {{ s|title }}",
     "{\"s\": \"one two-three (four) [five] <six> it's\"}"},
    {"{{ x|tojson }} {{ x|string }}", "{\"x\": \"\342\200\250\342\200\251\302\205\"}"},
    /* empty generators iterated (found by tests/fuzz/fuzz_jinja: UB on a NULL array) */
    {"{% for x in xs|select %}{{ x }}{% else %}none{% endfor %}|{% for k in u|items %}{{ k "
     "}}{% endfor %}|{{ xs|map('upper')|list }}",
     "{\"xs\": []}"},
};

#define N_SNIPPETS (sizeof(snippets) / sizeof(snippets[0]))

Test(jinja, language_matches_jinja2, .timeout = 120)
{
	json_t *spec = json_object(), *texts = json_array(), *jobs = json_array();
	moe_jinja_tmpl **tmpls = calloc(N_SNIPPETS, sizeof(*tmpls));
	char **perr = calloc(N_SNIPPETS, sizeof(*perr));
	char **names = calloc(N_SNIPPETS, sizeof(*names));
	cr_assert(tmpls && perr && names);
	for (size_t i = 0; i < N_SNIPPETS; i++) {
		const char *text = snippets[i].tmpl;
		json_array_append_new(texts, json_string(text));
		if (moe_jinja_parse(&tmpls[i], text, strlen(text)) != MOE_OK)
			perr[i] = strdup(moe_err_detail());
		names[i] = malloc(64);
		snprintf(names[i], 64, "snippet %zu", i);
		json_error_t err;
		json_t *vars = json_loads(snippets[i].vars, JSON_ALLOW_NUL, &err);
		cr_assert_not_null(vars, "snippet %zu vars: %s", i, err.text);
		json_t *c = json_object();
		json_t *m = json_object_get(vars, "messages");
		json_object_set_new(c, "messages", m ? json_incref(m) : json_array());
		json_object_del(vars, "messages");
		json_object_set_new(c, "kwargs", vars);
		char *cut = strndup(text, 60);
		json_object_set_new(c, "name", json_string(cut));
		free(cut);
		json_t *job = json_array();
		json_array_append_new(job, json_integer((json_int_t)i));
		json_array_append_new(job, c);
		json_array_append_new(jobs, job);
	}
	json_object_set_new(spec, "templates", texts);
	json_object_set_new(spec, "jobs", jobs);
	int n_out = 0, n_raised = 0, n_error = 0;
	int bad = compare_jobs(spec, tmpls, perr, (const char *const *)names, "language", &n_out,
	                       &n_raised, &n_error);
	cr_log_info("language: %zu small templates compared with Jinja2 (%d rendered, %d raised, "
	            "%d failed in both), %d differ",
	            N_SNIPPETS, n_out, n_raised, n_error, bad);
	cr_assert_eq(bad, 0, "%d of %zu small templates differ from Jinja2", bad, N_SNIPPETS);
	for (size_t i = 0; i < N_SNIPPETS; i++) {
		moe_jinja_free(tmpls[i]);
		free(perr[i]);
		free(names[i]);
	}
	free(tmpls);
	free(perr);
	free(names);
	json_decref(spec);
}

/* ---- what Jinja2 cannot judge ---- */

/* Parses text (NUL-terminated); returns the error, the template in *t. */
static moe_err parse(moe_jinja_tmpl **t, const char *text)
{
	return moe_jinja_parse(t, text, strlen(text));
}

/* Renders text with vars (JSON, may be NULL) and opts; *out gets the
 * output or the error detail (caller frees). */
static moe_err run(char **out, const char *text, const char *vars_json, const moe_jinja_opts *o)
{
	moe_jinja_tmpl *t = NULL;
	moe_jinja_value *vars = NULL;
	size_t len = 0;
	*out = NULL;
	moe_err e = parse(&t, text);
	if (!e && vars_json)
		e = moe_jinja_value_from_json(&vars, vars_json, strlen(vars_json));
	if (!e)
		e = moe_jinja_render(out, &len, t, vars, o);
	if (e) {
		cr_assert_null(*out, "a failed render leaves no output");
		*out = strdup(moe_err_detail());
	}
	moe_jinja_value_free(vars);
	moe_jinja_free(t);
	return e;
}

static void expect_error(const char *text, moe_err want, const char *detail)
{
	char *out;
	moe_err e = run(&out, text, NULL, NULL);
	cr_expect_eq(e, want, "%s: want %s, got %s (%s)", text, moe_err_name(want), moe_err_name(e),
	             out);
	cr_expect_str_eq(out, detail, "%s", text);
	free(out);
}

Test(jinja, errors_name_their_construct_and_line)
{
	/* refused at parse time, so that a server refuses the template at start-up */
	expect_error("a\nb\n{{ x|foo }}", MOE_ERR_UNSUPPORTED, "line 3: unsupported filter 'foo'");
	expect_error("{{ x|urlize }}", MOE_ERR_UNSUPPORTED, "line 1: unsupported filter 'urlize'");
	expect_error("\n{% if x is blah %}{% endif %}", MOE_ERR_UNSUPPORTED,
	             "line 2: unsupported test 'blah'");
	expect_error("{{ xs|map('nofilter')|list }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported filter 'nofilter'");
	expect_error("{{ xs|selectattr('a', 'nope')|list }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported test 'nope'");
	expect_error("{{ s.encode() }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported method 'encode'");
	expect_error("{{ xs.pop() }}", MOE_ERR_UNSUPPORTED, "line 1: unsupported method 'pop'");
	expect_error("{{ cycler(1, 2) }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported function 'cycler'");
	expect_error("x\n\n{% include 'other.jinja' %}", MOE_ERR_UNSUPPORTED,
	             "line 3: unsupported tag 'include'");
	expect_error("{% extends 'base' %}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported tag 'extends'");
	expect_error("{% for x in xs recursive %}{% endfor %}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported: recursive for loops");
	expect_error("{{ f(*args) }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported: *args / **kwargs in a call");
	/* not Jinja */
	expect_error("{% if x %}\nno end", MOE_ERR_FORMAT,
	             "line 2: Unexpected end of template. Jinja was looking for the following "
	             "tags: 'elif'.");
	expect_error("{{ x + }}", MOE_ERR_FORMAT, "line 1: unexpected 'end of print statement'");
	expect_error("\n\n{% endfor %}", MOE_ERR_FORMAT,
	             "line 3: Encountered unknown tag 'endfor'.");
	expect_error("{% break %}", MOE_ERR_FORMAT, "line 1: 'break' outside loop");
	expect_error("{% for x in y %}{% macro m() %}{% break %}{% endmacro %}{% endfor %}",
	             MOE_ERR_FORMAT, "line 1: 'break' outside loop");
	expect_error("a\n{# never closed", MOE_ERR_FORMAT, "line 2: Missing end of comment tag");
	expect_error("{{ 'abc }}", MOE_ERR_FORMAT, "line 1: unexpected char \"'\"");
	expect_error("{{ x ! y }}", MOE_ERR_FORMAT, "line 1: unexpected char '!'");
	expect_error("{{ (1 ] }}", MOE_ERR_FORMAT, "line 1: unexpected ']', expected ')'");
	expect_error("{% set 1 = 2 %}", MOE_ERR_FORMAT, "line 1: can't assign to 'const'");
	expect_error("{% macro m(a=1, b) %}{% endmacro %}", MOE_ERR_FORMAT,
	             "line 1: non-default argument follows default argument");
	expect_error("{{ '\\x4' }}", MOE_ERR_FORMAT, "line 1: truncated \\xXX escape");
	/* at render time, with the line of the innermost node */
	expect_error("one\n{{ 1 }}\n{% for x in [1] %}\n{{ x + 'a' }}{% endfor %}",
	             MOE_ERR_BAD_TYPE,
	             "line 4: unsupported operand type(s) for +: 'int' and 'str'");
	expect_error("{% macro m(v) %}\n\n{{ v.missing.x }}{% endmacro %}\n{{ m({}) }}",
	             MOE_ERR_BAD_TYPE, "line 3: 'dict object' has no attribute 'missing'");
	expect_error("{{ u.x }}", MOE_ERR_BAD_TYPE, "line 1: 'u' is undefined");
	expect_error("{{ none.x.y }}", MOE_ERR_BAD_TYPE, "line 1: 'None' has no attribute 'x'");
	expect_error("{% for x in 5 %}{% endfor %}", MOE_ERR_BAD_TYPE,
	             "line 1: 'int' object is not iterable");
	expect_error("{% set f = {}.update %}{{ f() }}", MOE_ERR_BAD_TYPE,
	             "line 1: access to attribute 'update' of 'dict' object is unsafe.");
	expect_error("{{ 2 ** 64 }}", MOE_ERR_OVERFLOW, "line 1: integer result beyond int64");
	/* what Python prints with an address is refused, not invented */
	expect_error("{{ ['a']|map('upper') }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported: printing a generator (Python prints its address); "
	             "apply |list first");
	expect_error("{{ 'x'.upper }}", MOE_ERR_UNSUPPORTED,
	             "line 1: unsupported: printing a function (Python prints its address)");
	/* bytes that are not UTF-8 */
	moe_jinja_tmpl *t = (moe_jinja_tmpl *)1;
	cr_expect_eq(moe_jinja_parse(&t, "a\xff", 2), MOE_ERR_BAD_STRING);
	cr_expect_null(t);
}

Test(jinja, raise_exception_is_a_distinct_error_carrying_its_message)
{
	char *out;
	moe_err e = run(&out, "before {{ raise_exception('No user query found: ' ~ 3) }} after",
	                NULL, NULL);
	cr_assert_eq(e, MOE_JINJA_RAISED, "%s", moe_err_name(e));
	cr_assert_str_eq(out, "No user query found: 3");
	free(out);
	/* no other failure uses that code */
	e = run(&out, "{{ 1 + 'a' }}", NULL, NULL);
	cr_assert_neq(e, MOE_JINJA_RAISED);
	free(out);
	e = run(&out, "{{ raise_exception() }}", NULL, NULL);
	cr_assert_eq(e, MOE_ERR_BAD_TYPE);
	free(out);
}

Test(jinja, simple_renders)
{
	char *out;
	cr_assert_eq(run(&out, "", NULL, NULL), MOE_OK);
	cr_assert_str_eq(out, "");
	free(out);
	cr_assert_eq(run(&out, "\n", NULL, NULL), MOE_OK);
	cr_assert_str_eq(out, "");
	free(out);
	cr_assert_eq(
	    run(&out, "{{ a }}-{{ b.c[1] }}", "{\"a\": \"x\", \"b\": {\"c\": [0, 2.0]}}", NULL),
	    MOE_OK);
	cr_assert_str_eq(out, "x-2.0");
	free(out);
	/* strftime_now: the caller's clock, else the local time now */
	struct tm tm = {.tm_year = 99, .tm_mon = 11, .tm_mday = 31, .tm_hour = 23};
	moe_jinja_opts o = {.now = &tm};
	cr_assert_eq(run(&out, "{{ strftime_now('%Y-%m-%d %H') }}", NULL, &o), MOE_OK);
	cr_assert_str_eq(out, "1999-12-31 23");
	free(out);
	cr_assert_eq(run(&out, "{{ strftime_now('%Y')|int > 2000 }}", NULL, NULL), MOE_OK);
	cr_assert_str_eq(out, "True");
	free(out);
}

static void expect_limit(const char *text, const moe_jinja_opts *o, const char *what)
{
	char *out;
	double t0 = (double)clock() / CLOCKS_PER_SEC;
	moe_err e = run(&out, text, NULL, o);
	double dt = (double)clock() / CLOCKS_PER_SEC - t0;
	cr_expect(e == MOE_ERR_OVERFLOW || e == MOE_ERR_UNSUPPORTED, "%.60s: %s (%s)", text,
	          moe_err_name(e), out);
	cr_expect(strstr(out, what) != NULL, "%.60s: '%s' does not say '%s'", text, out, what);
	cr_expect_lt(dt, 10.0, "%.60s took %.1f s", text, dt);
	free(out);
}

static char *repeat3(const char *a, size_t n, const char *mid, const char *b)
{
	size_t la = strlen(a), lm = strlen(mid), lb = strlen(b);
	char *s = malloc(n * (la + lb) + lm + 1), *p = s;
	for (size_t i = 0; i < n; i++, p += la)
		memcpy(p, a, la);
	memcpy(p, mid, lm);
	p += lm;
	for (size_t i = 0; i < n; i++, p += lb)
		memcpy(p, b, lb);
	*p = 0;
	return s;
}

Test(jinja, limits_stop_hostile_templates, .timeout = 120)
{
	moe_jinja_opts small = {.max_output = 1 << 20, .max_memory = 16 << 20};
	expect_limit(
	    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
	    NULL, "steps");
	expect_limit("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", &small,
	             "output exceeds");
	expect_limit("{% set ns = namespace(s='xy') %}{% for i in range(60) %}"
	             "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
	             &small, "exceeds");
	expect_limit("{{ 'x' * 100000000000 }}", NULL, "too large");
	/* captured output counts as working memory: nested macros that each hold
	 * megabytes of output stop at the memory limit, not at the depth limit */
	moe_jinja_opts mem = {.max_memory = 16 << 20, .max_depth = 200};
	char *kb = repeat3("x", 1000, "", "");
	char *deep = malloc(strlen(kb) + 128);
	sprintf(deep,
	        "{%% macro f(n) %%}{%% for i in range(2000) %%}%s{%% endfor %%}{{ f(n + 1) }}"
	        "{%% endmacro %%}{{ f(0) }}",
	        kb);
	expect_limit(deep, &mem, "working memory exceeds");
	free(kb);
	free(deep);
	expect_limit("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL,
	             "nesting deeper");
	expect_limit("{% macro f(n) %}{% for x in [1, 2] %}{{ f(n + 1) }}{% endfor %}{% endmacro %}"
	             "{{ f(0) }}",
	             NULL, "nesting deeper");
	/* text that nests deeper than the parser goes: refused, not a stack overflow */
	char *s = repeat3("(", 100000, "1", ")");
	char *tmpl = malloc(strlen(s) + 8);
	sprintf(tmpl, "{{ %s }}", s);
	expect_limit(tmpl, NULL, "nest");
	free(s);
	free(tmpl);
	s = repeat3("not ", 100000, "x", "");
	tmpl = malloc(strlen(s) + 8);
	sprintf(tmpl, "{{ %s }}", s);
	expect_limit(tmpl, NULL, "nesting deeper");
	free(s);
	free(tmpl);
	s = repeat3("{% if true %}", 10000, "x", "{% endif %}");
	expect_limit(s, NULL, "nesting deeper");
	free(s);
	/* trees that are deep without nesting in the text: the render refuses */
	s = repeat3("1 + ", 100000, "1", "");
	tmpl = malloc(strlen(s) + 8);
	sprintf(tmpl, "{{ %s }}", s);
	expect_limit(tmpl, NULL, "nesting deeper");
	free(s);
	free(tmpl);
	s = repeat3(" | trim", 100000, "", "");
	tmpl = malloc(strlen(s) + 64);
	sprintf(tmpl, "{%% set x%s %%}x{%% endset %%}", s);
	expect_limit(tmpl, NULL, "nesting deeper");
	free(s);
	free(tmpl);
	/* deep data: Jansson stops at its depth, printing stops at ours */
	s = repeat3("[", 100000, "", "]");
	moe_jinja_value *v = NULL;
	cr_expect_eq(moe_jinja_value_from_json(&v, s, strlen(s)), MOE_ERR_FORMAT);
	cr_expect_null(v);
	free(s);
	s = repeat3("[", 1000, "", "]");
	tmpl = malloc(strlen(s) + 32);
	sprintf(tmpl, "{\"x\": %s}", s);
	char *out;
	moe_err e = run(&out, "{{ x }}", tmpl, NULL);
	cr_expect_eq(e, MOE_ERR_OVERFLOW, "%s", out);
	free(out);
	e = run(&out, "{{ x|tojson }}", tmpl, NULL);
	cr_expect_eq(e, MOE_ERR_OVERFLOW, "%s", out);
	free(out);
	free(s);
	free(tmpl);
}

Test(jinja, value_api_builds_what_templates_read)
{
	moe_jinja_value *vars, *v, *list, *inner;
	cr_assert_eq(moe_jinja_value_dict(&vars), MOE_OK);
	cr_assert_eq(moe_jinja_value_string(&v, "first", 5), MOE_OK);
	cr_assert_eq(moe_jinja_dict_set(vars, "b", v), MOE_OK);
	cr_assert_eq(moe_jinja_value_int(&v, -7), MOE_OK);
	cr_assert_eq(moe_jinja_dict_set(vars, "a", v), MOE_OK);
	cr_assert_eq(moe_jinja_value_string(&v, "n\0ul", 4), MOE_OK);
	cr_assert_eq(moe_jinja_dict_set(vars, "b", v), MOE_OK); /* keeps its place */
	cr_assert_eq(moe_jinja_value_list(&list), MOE_OK);
	cr_assert_eq(moe_jinja_value_float(&v, 1.0), MOE_OK);
	cr_assert_eq(moe_jinja_list_append(list, v), MOE_OK);
	cr_assert_eq(moe_jinja_value_bool(&v, 1), MOE_OK);
	cr_assert_eq(moe_jinja_list_append(list, v), MOE_OK);
	cr_assert_eq(moe_jinja_value_null(&v), MOE_OK);
	cr_assert_eq(moe_jinja_list_append(list, v), MOE_OK);
	cr_assert_eq(moe_jinja_value_from_json(&inner, "{\"k\": [1, 2.5e-7]}", 18), MOE_OK);
	cr_assert_eq(moe_jinja_list_append(list, inner), MOE_OK);
	cr_assert_eq(moe_jinja_dict_set(vars, "c", list), MOE_OK);
	/* refusals free what they were given (ASan would see a leak) */
	cr_assert_eq(moe_jinja_value_string(&v, "\xc3", 1), MOE_ERR_BAD_STRING);
	cr_assert_null(v);
	cr_assert_eq(moe_jinja_value_int(&v, 1), MOE_OK);
	cr_assert_eq(moe_jinja_list_append(vars, v), MOE_ERR_INVAL);
	cr_assert_eq(moe_jinja_value_int(&v, 1), MOE_OK);
	cr_assert_eq(moe_jinja_dict_set(vars, "\xff", v), MOE_ERR_BAD_STRING);

	moe_jinja_tmpl *t;
	cr_assert_eq(
	    parse(&t, "{{ a }} {{ b|length }} {{ c }} {{ vars_not_given }}|{{ b|tojson }}"),
	    MOE_OK);
	char *out;
	size_t len;
	cr_assert_eq(moe_jinja_render(&out, &len, t, vars, NULL), MOE_OK, "%s", moe_err_detail());
	const char want[] = "-7 4 [1.0, True, None, {'k': [1, 2.5e-07]}] |\"n\\u0000ul\"";
	cr_assert_eq(len, sizeof(want) - 1, "%s", out);
	cr_assert_str_eq(out, want);
	cr_assert_eq(out[len], 0);
	free(out);
	/* the variables must be a dict */
	moe_jinja_value *not_dict;
	cr_assert_eq(moe_jinja_value_list(&not_dict), MOE_OK);
	out = (char *)1;
	len = 9;
	cr_assert_eq(moe_jinja_render(&out, &len, t, not_dict, NULL), MOE_ERR_INVAL);
	cr_assert_null(out);
	cr_assert_eq(len, 0);
	moe_jinja_value_free(not_dict);
	moe_jinja_free(t);
	moe_jinja_value_free(vars);
	moe_jinja_value_free(NULL);
	moe_jinja_free(NULL);
}

Test(jinja, json_keeps_ints_floats_and_key_order)
{
	char *out;
	const char *vars = "{\"x\": {\"b\": 1, \"a\": 1.0, \"c\": [1e20, 10000000000000000, -0.0, "
	                   "0.1, 1E+2, -9223372036854775808], \"é\": \"\\u00e9\\ud83d\\ude00\", "
	                   "\"b\": 2}}";
	cr_assert_eq(run(&out,
	                 "{{ x }}|{{ x|tojson }}|{{ x.c[0] is float }}{{ x.c[1] is integer }}",
	                 vars, NULL),
	             MOE_OK, "%s", out);
	cr_assert_str_eq(out,
	                 "{'b': 2, 'a': 1.0, 'c': [1e+20, 10000000000000000, -0.0, 0.1, 100.0, "
	                 "-9223372036854775808], 'é': 'é😀'}|"
	                 "{\"b\": 2, \"a\": 1.0, \"c\": [1e+20, 10000000000000000, -0.0, 0.1, "
	                 "100.0, -9223372036854775808], \"é\": \"é😀\"}|TrueTrue");
	free(out);
	moe_jinja_value *v = (moe_jinja_value *)1;
	cr_assert_eq(moe_jinja_value_from_json(&v, "[9223372036854775808]", 21), MOE_ERR_FORMAT);
	cr_assert_null(v);
	cr_assert_eq(moe_jinja_value_from_json(&v, "{\"a\": [1,}", 10), MOE_ERR_FORMAT);
	cr_assert(strstr(moe_err_detail(), "line 1") != NULL, "%s", moe_err_detail());
	cr_assert_eq(moe_jinja_value_from_json(&v, "\"\\ud800\"", 8), MOE_ERR_FORMAT);
	cr_assert_eq(moe_jinja_value_from_json(&v, "7", 1), MOE_OK);
	moe_jinja_value_free(v);
}

/* ---- concurrency ---- */

typedef struct shared {
	const moe_jinja_tmpl *t;
	const moe_jinja_value *vars;
	const char *want;
	size_t want_len;
	int bad;
} shared;

static void *render_many(void *arg)
{
	shared *s = arg;
	struct tm now = ref_now();
	moe_jinja_opts o = {.now = &now};
	for (int i = 0; i < 100; i++) {
		char *out;
		size_t len;
		moe_err e = moe_jinja_render(&out, &len, s->t, s->vars, &o);
		if (e || len != s->want_len || memcmp(out, s->want, len) != 0)
			__atomic_add_fetch(&s->bad, 1, __ATOMIC_RELAXED);
		free(out);
	}
	return NULL;
}

Test(jinja, threads_render_one_template_and_one_set_of_vars_at_once, .timeout = 120)
{
	templates ts;
	load_templates(&ts, NULL);
	char *p = dir_path("chat-templates/cases/07-parallel-tools.json");
	json_error_t err;
	json_t *c = json_load_file(p, 0, &err);
	cr_assert_not_null(c);
	free(p);
	for (size_t ti = 0; ti < N_TEMPLATES; ti++) {
		ours one = render_ours(ts.t[ti], c);
		cr_assert_eq(one.err, MOE_OK, "%s: %s", template_files[ti], one.text);
		moe_jinja_value *vars = case_vars(c);
		shared s = {ts.t[ti], vars, one.text, one.len, 0};
		pthread_t th[4];
		for (int i = 0; i < 4; i++)
			cr_assert_eq(pthread_create(&th[i], NULL, render_many, &s), 0);
		for (int i = 0; i < 4; i++)
			pthread_join(th[i], NULL);
		cr_assert_eq(s.bad, 0, "%s: %d concurrent renders differ", template_files[ti],
		             s.bad);
		moe_jinja_value_free(vars);
		free(one.text);
	}
	json_decref(c);
	free_templates(&ts);
}

/* ---- (d) malformed templates ---- */

static const char *const fuzz_tokens[] = {
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "-",
    "+",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "'",
    "\"",
    "\\",
    "|",
    ".",
    ",",
    ":",
    "=",
    "~",
    "*",
    "**",
    "//",
    " not ",
    " in ",
    " is ",
    " if ",
    " else ",
    " and ",
    "endfor",
    "endif",
    " for x in ",
    "loop.",
    "{% for x in messages %}",
    "{% endfor %}",
    "{% if x %}",
    "{% endif %}",
    "{% macro m(a, b=1) %}",
    "{% endmacro %}",
    "{{ m(1) }}",
    "{% set ns.x = 1 %}",
    "|tojson",
    "|join(',')",
    "[::-1]",
    "[1:]",
    "\n",
    " ",
    "0",
    "1e5",
    "x",
    "none",
    "{% break %}",
    "{% raw %}",
    "{% endraw %}",
    "{% call m() %}",
    "{% endcall %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "caller()",
    "raise_exception('x')",
    "namespace(a=1)",
    "range(3)",
    "é",
    "😀",
    "\t",
    "\r",
    "\r\n",
    "{%-",
    "-%}",
    "{{-",
    "-}}",
    "{%+",
    "+%}",
    "'\\x4",
    "'\\u12'",
    "\\",
};

static void mutate(rng *r, char *buf, size_t *len, size_t cap)
{
	size_t n = *len;
	unsigned op = rn(r, 7);
	size_t at = n ? rn(r, (unsigned)n) : 0;
	if (op == 6) /* insert at the end */
		at = n, op = 2;
	size_t span = 1 + rn(r, 24);
	if (span > n - at)
		span = n - at;
	switch (op) {
	case 0: /* delete */
		memmove(buf + at, buf + at + span, n - at - span);
		n -= span;
		break;
	case 1: /* duplicate */
		if (n + span < cap) {
			memmove(buf + at + span, buf + at, n - at);
			n += span;
		}
		break;
	case 2:
	case 3: { /* insert a token */
		const char *tok = fuzz_tokens[rn(r, sizeof(fuzz_tokens) / sizeof(fuzz_tokens[0]))];
		size_t k = strlen(tok);
		if (n + k < cap) {
			memmove(buf + at + k, buf + at, n - at);
			memcpy(buf + at, tok, k);
			n += k;
		}
		break;
	}
	case 4: /* replace a byte by printable ASCII */
		if (n)
			buf[at] = (char)(32 + rn(r, 95));
		break;
	default: /* truncate */
		n = at;
	}
	*len = n;
}

Test(jinja, mutated_templates_never_crash, .timeout = 300)
{
	templates ts;
	load_templates(&ts, NULL);
	char *p = dir_path("chat-templates/cases/06-tool-roundtrip.json");
	json_error_t err;
	json_t *c = json_load_file(p, 0, &err);
	cr_assert_not_null(c);
	free(p);
	moe_jinja_value *vars = case_vars(c);
	moe_jinja_opts o = {.max_output = 1 << 20, .max_memory = 8 << 20, .max_steps = 20000};
	rng r = {7};
	unsigned per = 600, parsed = 0, rendered = 0, failed = 0;
	const char *env = getenv("MOE_JINJA_FUZZ");
	if (env)
		per = (unsigned)strtoul(env, NULL, 10);
	for (size_t ti = 0; ti < N_TEMPLATES; ti++) {
		size_t cap = ts.len[ti] * 2 + 4096;
		char *buf = malloc(cap);
		for (unsigned i = 0; i < per; i++) {
			size_t n = ts.len[ti];
			memcpy(buf, ts.text[ti], n);
			for (unsigned k = 1 + rn(&r, 4); k > 0; k--)
				mutate(&r, buf, &n, cap);
			moe_jinja_tmpl *t = NULL;
			/* an exact-size heap copy, so that ASan sees any read past the end */
			char *text = malloc(n ? n : 1);
			memcpy(text, buf, n);
			moe_err e = moe_jinja_parse(&t, text, n);
			if (e) {
				cr_assert_null(t);
				cr_assert_neq(moe_err_detail()[0], 0, "a failure without a detail");
				failed++;
			} else {
				parsed++;
				char *out = NULL;
				size_t len;
				e = moe_jinja_render(&out, &len, t, vars, &o);
				if (e) {
					cr_assert_null(out);
					cr_assert_neq(moe_err_detail()[0], 0);
				} else {
					rendered++;
					cr_assert_eq(out[len], 0);
				}
				free(out);
				moe_jinja_free(t);
			}
			free(text);
		}
		free(buf);
	}
	cr_log_info("fuzz: %u mutated templates: %u refused at parse, %u parsed, %u rendered",
	            per * (unsigned)N_TEMPLATES, failed, parsed, rendered);
	cr_assert_gt(parsed, 0);
	cr_assert_gt(failed, 0);
	moe_jinja_value_free(vars);
	json_decref(c);
	free_templates(&ts);
}

/* ---- speed (reported, not judged) and the stack a render needs ---- */

Test(jinja, render_speed_of_the_largest_template)
{
	templates ts;
	load_templates(&ts, NULL);
	size_t big = 0;
	for (size_t i = 1; i < N_TEMPLATES; i++)
		if (ts.len[i] > ts.len[big])
			big = i;
	char *p = dir_path("chat-templates/cases/07-parallel-tools.json");
	json_error_t err;
	json_t *c = json_load_file(p, 0, &err);
	cr_assert_not_null(c);
	free(p);
	moe_jinja_value *vars = case_vars(c);
	struct tm now = ref_now();
	moe_jinja_opts o = {.now = &now};
	int n = 300;
	size_t bytes = 0;
	uint64_t t0 = moe_now_ns();
	for (int i = 0; i < n; i++) {
		char *out;
		size_t len;
		cr_assert_eq(moe_jinja_render(&out, &len, ts.t[big], vars, &o), MOE_OK);
		bytes = len;
		free(out);
	}
	double us = (double)(moe_now_ns() - t0) / 1e3 / n;
	t0 = moe_now_ns();
	for (int i = 0; i < n; i++) {
		moe_jinja_tmpl *t;
		cr_assert_eq(moe_jinja_parse(&t, ts.text[big], ts.len[big]), MOE_OK);
		moe_jinja_free(t);
	}
	double parse_us = (double)(moe_now_ns() - t0) / 1e3 / n;
	cr_log_info("speed: %s (%zu bytes) with 07-parallel-tools: %.1f us per render (%zu bytes "
	            "out), %.1f us per parse",
	            template_files[big], ts.len[big], us, bytes, parse_us);
	moe_jinja_value_free(vars);
	json_decref(c);
	free_templates(&ts);
}

static void *deep_render(void *arg)
{
	moe_err *e = arg;
	const char *text = "{% macro f(n) %}{% if n > 0 %}{% for x in [1] %}{{ f(n - 1)|trim }}"
	                   "{% endfor %}{% endif %}{% endmacro %}{{ f(100000) }}";
	moe_jinja_tmpl *t;
	char *out = NULL;
	size_t len;
	*e = moe_jinja_parse(&t, text, strlen(text));
	if (!*e)
		*e = moe_jinja_render(&out, &len, t, NULL, NULL);
	free(out);
	moe_jinja_free(t);
	return NULL;
}

/* The default depth limit fits a 2 MiB thread stack (a release render needs
 * about 300 KiB at that depth, an ASan one about 500 KiB): the render stops
 * with an error, not a crash. */
Test(jinja, the_depth_limit_comes_before_the_end_of_the_stack)
{
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, (size_t)2 << 20);
	pthread_t th;
	moe_err e = MOE_OK;
	cr_assert_eq(pthread_create(&th, &at, deep_render, &e), 0);
	pthread_join(th, NULL);
	pthread_attr_destroy(&at);
	cr_assert_eq(e, MOE_ERR_OVERFLOW, "%s", moe_err_name(e));
}
