/* test_jinja.c - the chat-template renderer (jinja/) against Python's Jinja2
 * as transformers sets it up: every fixture template with every fixture
 * case and hundreds of generated conversations through every template,
 * compared byte for byte with the reference rendered at test time
 * (tests/jinja_ref.h); then concurrent renders of one template, mutated
 * templates that must never crash, and the render speed (reported).
 * (test_jinja_lang.c has the language on small templates, errors and
 * limits.) */
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

#include "tests/jinja_ref.h"

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
