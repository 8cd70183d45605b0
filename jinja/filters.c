/* filters.c - Jinja2's filters and tests as the renderer implements them:
 * the tables that name them (and the Jinja2 builtins this renderer refuses),
 * the filters on single values (tojson, trim, length, items, default, int,
 * float, round, indent, replace, escape, safe, truncate, ...; the sequence
 * ones are in seqfilters.c) and the tests (defined, none, string, mapping,
 * sequence, iterable, equalto, in, ...). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum {
	F_ABS,
	F_ATTR,
	F_BATCH,
	F_CAPITALIZE,
	F_CENTER,
	F_COUNT,
	F_D,
	F_DEFAULT,
	F_DICTSORT,
	F_E,
	F_ESCAPE,
	F_FIRST,
	F_FLOAT,
	F_FORCEESCAPE,
	F_FORMAT,
	F_INDENT,
	F_INT,
	F_ITEMS,
	F_JOIN,
	F_LAST,
	F_LENGTH,
	F_LIST,
	F_LOWER,
	F_MAP,
	F_MAX,
	F_MIN,
	F_REJECT,
	F_REJECTATTR,
	F_REPLACE,
	F_REVERSE,
	F_ROUND,
	F_SAFE,
	F_SELECT,
	F_SELECTATTR,
	F_SLICE,
	F_SORT,
	F_STRING,
	F_SUM,
	F_TITLE,
	F_TOJSON,
	F_TRIM,
	F_TRUNCATE,
	F_UNIQUE,
	F_UPPER,
	F_WORDCOUNT,
	F__COUNT
};

static const char *const filter_names[F__COUNT] = {
    "abs",     "attr",     "batch",     "capitalize", "center", "count",      "d",
    "default", "dictsort", "e",         "escape",     "first",  "float",      "forceescape",
    "format",  "indent",   "int",       "items",      "join",   "last",       "length",
    "list",    "lower",    "map",       "max",        "min",    "reject",     "rejectattr",
    "replace", "reverse",  "round",     "safe",       "select", "selectattr", "slice",
    "sort",    "string",   "sum",       "title",      "tojson", "trim",       "truncate",
    "unique",  "upper",    "wordcount",
};

/* Jinja2 builtins that this renderer does not implement */
static const char *const filters_refused[] = {"filesizeformat", "groupby",   "pprint",
                                              "random",         "striptags", "urlencode",
                                              "urlize",         "wordwrap",  "xmlattr"};

enum {
	T_ODD,
	T_EVEN,
	T_DIVISIBLEBY,
	T_DEFINED,
	T_UNDEFINED,
	T_FILTER,
	T_TEST,
	T_NONE,
	T_BOOLEAN,
	T_FALSE,
	T_TRUE,
	T_INTEGER,
	T_FLOAT_,
	T_LOWER,
	T_UPPER,
	T_STRING_,
	T_MAPPING,
	T_NUMBER,
	T_SEQUENCE,
	T_ITERABLE,
	T_CALLABLE,
	T_SAMEAS,
	T_ESCAPED,
	T_IN,
	T_EQ1,
	T_EQ2,
	T_EQ3,
	T_NE1,
	T_NE2,
	T_GT1,
	T_GT2,
	T_GT3,
	T_GE1,
	T_GE2,
	T_LT1,
	T_LT2,
	T_LT3,
	T_LE1,
	T_LE2,
	T__COUNT
};

static const char *const test_names[T__COUNT] = {
    "odd",     "even",   "divisibleby", "defined",  "undefined", "filter", "test",    "none",
    "boolean", "false",  "true",        "integer",  "float",     "lower",  "upper",   "string",
    "mapping", "number", "sequence",    "iterable", "callable",  "sameas", "escaped", "in",
    "==",      "eq",     "equalto",     "!=",       "ne",        ">",      "gt",      "greaterthan",
    ">=",      "ge",     "<",           "lt",       "lessthan",  "<=",     "le",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int find(const char *const *names, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
			return (int)i;
	return -1;
}

int jfilter_find(const char *name, size_t n)
{
	int i = find(filter_names, F__COUNT, name, n);
	if (i >= 0)
		return i;
	return find(filters_refused, COUNT(filters_refused), name, n) >= 0 ? -1 : -2;
}

int jtest_find(const char *name, size_t n)
{
	int i = find(test_names, T__COUNT, name, n);
	return i >= 0 ? i : -2;
}

int jfilter_known(const char *name, size_t n)
{
	return jfilter_find(name, n) != -2;
}

int jtest_known(const char *name, size_t n)
{
	return jtest_find(name, n) >= 0;
}

/* ---- helpers ---- */

static moe_err bind(jv *out, const char *fname, const char *const *params, size_t n, const jargs *a)
{
	return jbind_args(out, fname, params, n, a);
}

static jv or_default(jv v, jv d)
{
	return v.t == JV_MISSING ? d : v;
}

static jlist *new_list(jrender *r, size_t cap, int kind)
{
	return jlist_new(&r->arena, cap, kind);
}

/* soft_str: strings stay (Markup too), anything else becomes str(). */
static moe_err soft_str(jrender *r, jv *out, jv v)
{
	if (v.t == JV_STR) {
		*out = v;
		return MOE_OK;
	}
	const jstr *s;
	moe_err e = jr_str(r, &s, v);
	if (!e)
		*out = jv_str(s);
	return e;
}

static moe_err len_of(int64_t *out, jv v)
{
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
		*out = 0;
		return MOE_OK;
	case JV_STR:
		*out = (int64_t)v.s->ncp;
		return MOE_OK;
	case JV_LIST:
		if (v.l->kind == JL_GEN)
			break;
		*out = (int64_t)v.l->n;
		return MOE_OK;
	case JV_DICT:
		*out = (int64_t)v.d->n;
		return MOE_OK;
	case JV_LOOP:
		*out = (int64_t)v.lp->n;
		return MOE_OK;
	default:
		break;
	}
	return moe_fail(MOE_ERR_BAD_TYPE, "object of type '%s' has no len()", jv_type_name(v));
}

/* ---- the filters ---- */

static moe_err f_tojson(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
	jv x[4];
	moe_err e = bind(x, "tojson", p, 4, a);
	if (e)
		return e;
	jjson_opts o = {0};
	o.ensure_ascii = x[0].t != JV_MISSING && jv_truthy(x[0]);
	o.sort_keys = x[3].t != JV_MISSING && jv_truthy(x[3]);
	if (x[1].t == JV_INT || x[1].t == JV_BOOL) {
		int64_t n = x[1].i < 0 ? 0 : x[1].i > 64 ? -1 : x[1].i;
		if (n < 0)
			return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: tojson indent over 64");
		char sp[65];
		memset(sp, ' ', (size_t)n);
		o.indent = jstr_new(&r->arena, sp, (size_t)n);
		if (!o.indent)
			return jr_nomem(r);
	} else if (x[1].t == JV_STR) {
		o.indent = x[1].s;
	} else if (x[1].t != JV_MISSING && x[1].t != JV_NONE) {
		return moe_fail(MOE_ERR_BAD_TYPE, "tojson: indent must be an int or a str");
	}
	o.item_sep = jstr_lit(&r->arena, o.indent ? "," : ", ");
	o.key_sep = jstr_lit(&r->arena, ": ");
	if (!o.item_sep || !o.key_sep)
		return jr_nomem(r);
	if (x[2].t != JV_MISSING && x[2].t != JV_NONE) {
		if (x[2].t != JV_LIST || x[2].l->n != 2 || x[2].l->v[0].t != JV_STR ||
		    x[2].l->v[1].t != JV_STR)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "tojson: separators must be a pair of strings");
		o.item_sep = x[2].l->v[0].s;
		o.key_sep = x[2].l->v[1].s;
	}
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	e = jv_write_json(&b, v, &o);
	if (!e) {
		const jstr *s = jstr_new(&r->arena, b.p ? b.p : "", b.n);
		if (!s)
			e = jr_nomem(r);
		else
			*out = jv_str(s);
	}
	jbuf_free(&b);
	return e;
}

static moe_err f_indent(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"width", "first", "blank"};
	jv x[3];
	moe_err e = bind(x, "indent", p, 3, a);
	if (e)
		return e;
	if (v.t != JV_STR)
		return v.t == JV_UNDEF
		           ? jr_undef_fail(v)
		           : moe_fail(MOE_ERR_BAD_TYPE, "indent: can only indent a str");
	const jstr *ind;
	if (x[0].t == JV_STR) {
		ind = x[0].s;
	} else {
		int64_t w = x[0].t == JV_MISSING                    ? 4
		            : x[0].t == JV_INT || x[0].t == JV_BOOL ? x[0].i
		                                                    : -1;
		if (x[0].t != JV_MISSING && x[0].t != JV_INT && x[0].t != JV_BOOL)
			return moe_fail(MOE_ERR_BAD_TYPE, "indent: width must be an int or a str");
		if (w < 0)
			w = 0;
		if (w > 1024)
			return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: indent over 1024");
		char *sp = ja_alloc(&r->arena, (size_t)w + 1);
		if (!sp)
			return jr_nomem(r);
		memset(sp, ' ', (size_t)w);
		ind = jstr_new(&r->arena, sp, (size_t)w);
		if (!ind)
			return jr_nomem(r);
	}
	int first = jv_truthy(x[1]), blank = jv_truthy(x[2]);
	/* s += "\n"; lines = s.splitlines() */
	jstr *s2 = ja_alloc(&r->arena, sizeof(jstr) + v.s->len + 2);
	if (!s2)
		return jr_nomem(r);
	memcpy(s2->s, v.s->s, v.s->len);
	s2->s[v.s->len] = '\n';
	s2->s[v.s->len + 1] = 0;
	s2->len = v.s->len + 1;
	s2->ncp = v.s->ncp + 1;
	jlist *lines = new_list(r, 0, JL_LIST);
	if (!lines)
		return jr_nomem(r);
	e = jsplitlines(r, lines, s2, 0, 0);
	if (e)
		return e;
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	if (first)
		e = jbuf_put(&b, ind->s, ind->len);
	for (size_t i = 0; i < lines->n && !e; i++) {
		const jstr *ln = lines->v[i].s;
		if (i) {
			e = jbuf_putc(&b, '\n');
			if (!e && (blank || ln->len))
				e = jbuf_put(&b, ind->s, ind->len);
		}
		if (!e)
			e = jbuf_put(&b, ln->s, ln->len);
	}
	if (!e) {
		const jstr *s = jstr_new(&r->arena, b.p ? b.p : "", b.n);
		if (!s)
			e = jr_nomem(r);
		else
			*out = jv_str(s);
	}
	jbuf_free(&b);
	return e;
}

/* Python's float(str): digits with '_' between them, a point, an exponent,
 * inf/infinity/nan, surrounding whitespace. */
static int parse_py_float(const jstr *s, double *out)
{
	size_t b = 0, e = s->len;
	while (b < e && uc_isspace((unsigned char)s->s[b]))
		b++;
	while (e > b && uc_isspace((unsigned char)s->s[e - 1]))
		e--;
	char buf[128];
	size_t n = 0, i = b;
	if (e - b >= sizeof(buf) - 1 || e == b)
		return -1;
	if (s->s[i] == '+' || s->s[i] == '-')
		buf[n++] = s->s[i++];
	const char *words[] = {"inf", "infinity", "nan"};
	for (int w = 0; w < 3; w++)
		if (e - i == strlen(words[w]) && strncasecmp(s->s + i, words[w], e - i) == 0) {
			memcpy(buf + n, s->s + i, e - i);
			buf[n + e - i] = 0;
			*out = strtod(buf, NULL);
			return 0;
		}
	int digits = 0, prev_digit = 0;
	int seen_point = 0, seen_exp = 0;
	for (; i < e; i++) {
		char c = s->s[i];
		if (c >= '0' && c <= '9') {
			buf[n++] = c;
			digits = prev_digit = 1;
		} else if (c == '_') {
			if (!prev_digit || i + 1 >= e || s->s[i + 1] < '0' || s->s[i + 1] > '9')
				return -1;
			prev_digit = 0;
		} else if (c == '.' && !seen_point && !seen_exp) {
			buf[n++] = c;
			seen_point = 1;
			prev_digit = 0;
		} else if ((c == 'e' || c == 'E') && digits && !seen_exp) {
			buf[n++] = c;
			seen_exp = 1;
			digits = prev_digit = 0;
			if (i + 1 < e && (s->s[i + 1] == '+' || s->s[i + 1] == '-'))
				buf[n++] = s->s[++i];
		} else {
			return -1;
		}
	}
	if (!digits)
		return -1;
	buf[n] = 0;
	*out = strtod(buf, NULL);
	return 0;
}

/* Python's int(str, base) for base 10 (and 2, 8, 16 with their prefixes). */
static int parse_py_int(const jstr *s, int64_t base, int64_t *out, int *overflow)
{
	size_t b = 0, e = s->len;
	*overflow = 0;
	while (b < e && uc_isspace((unsigned char)s->s[b]))
		b++;
	while (e > b && uc_isspace((unsigned char)s->s[e - 1]))
		e--;
	int neg = 0;
	if (b < e && (s->s[b] == '+' || s->s[b] == '-'))
		neg = s->s[b++] == '-';
	if (base != 10 && base != 2 && base != 8 && base != 16)
		return -1;
	if (base != 10 && e - b >= 2 && s->s[b] == '0') {
		char c = (char)(s->s[b + 1] | 0x20);
		if ((base == 16 && c == 'x') || (base == 8 && c == 'o') || (base == 2 && c == 'b'))
			b += 2;
	}
	if (b >= e)
		return -1;
	uint64_t v = 0;
	int prev_digit = 0;
	for (size_t i = b; i < e; i++) {
		char c = s->s[i];
		int d = c >= '0' && c <= '9'                     ? c - '0'
		        : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10
		                                                 : -1;
		if (c == '_' && prev_digit && i + 1 < e) {
			prev_digit = 0;
			continue;
		}
		if (d < 0 || d >= base)
			return -1;
		prev_digit = 1;
		if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
			*overflow = 1;
		v = v * (uint64_t)base + (uint64_t)d;
	}
	if (!prev_digit)
		return -1;
	if (*overflow || v > (uint64_t)INT64_MAX + (uint64_t)neg) {
		*overflow = 1;
		return 0;
	}
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
}

/* int(f): 1 for NaN (int() raises ValueError, so the filter's default). */
static int float_to_int(jv *out, double f, moe_err *e)
{
	*e = MOE_OK;
	if (isnan(f))
		return 1;
	if (isinf(f))
		*e = moe_fail(MOE_ERR_OVERFLOW, "cannot convert float infinity to integer");
	else if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0))
		*e = moe_fail(MOE_ERR_OVERFLOW, "integer beyond int64");
	else
		*out = jv_int((int64_t)f);
	return 0;
}

static moe_err f_int(jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"default", "base"};
	jv x[2];
	moe_err e = bind(x, "int", p, 2, a);
	if (e)
		return e;
	jv dflt = or_default(x[0], jv_int(0));
	int64_t base = x[1].t == JV_INT ? x[1].i : 10;
	double f;
	switch (v.t) {
	case JV_INT:
		*out = v;
		return MOE_OK;
	case JV_BOOL:
		*out = jv_int(v.i);
		return MOE_OK;
	case JV_FLOAT:
		if (float_to_int(out, v.f, &e))
			*out = dflt;
		return e;
	case JV_STR: {
		int64_t i;
		int overflow;
		if (parse_py_int(v.s, base, &i, &overflow) == 0) {
			if (overflow)
				return moe_fail(MOE_ERR_OVERFLOW, "integer beyond int64");
			*out = jv_int(i);
			return MOE_OK;
		}
		if (parse_py_float(v.s, &f) == 0) {
			if (float_to_int(out, f, &e))
				*out = dflt;
			return e;
		}
		*out = dflt;
		return MOE_OK;
	}
	case JV_UNDEF:
	case JV_MISSING:
		return jr_undef_fail(v);
	default:
		*out = dflt;
		return MOE_OK;
	}
}

static moe_err f_float(jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"default"};
	jv x[1];
	moe_err e = bind(x, "float", p, 1, a);
	if (e)
		return e;
	jv dflt = or_default(x[0], jv_float(0.0));
	double f;
	switch (v.t) {
	case JV_INT:
	case JV_BOOL:
		*out = jv_float((double)v.i);
		return MOE_OK;
	case JV_FLOAT:
		*out = v;
		return MOE_OK;
	case JV_STR:
		*out = parse_py_float(v.s, &f) == 0 ? jv_float(f) : dflt;
		return MOE_OK;
	case JV_UNDEF:
	case JV_MISSING:
		return jr_undef_fail(v);
	default:
		*out = dflt;
		return MOE_OK;
	}
}

/* Python's round(x, n) for floats: correctly rounded through the decimal. */
static double round_float(double x, int64_t n)
{
	if (!isfinite(x) || n > 330)
		return x;
	char buf[512];
	snprintf(buf, sizeof(buf), "%.*f", (int)n, x);
	return strtod(buf, NULL);
}

static moe_err f_round(jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"precision", "method"};
	jv x[2];
	moe_err e = bind(x, "round", p, 2, a);
	if (e)
		return e;
	int64_t prec = x[0].t == JV_MISSING                    ? 0
	               : x[0].t == JV_INT || x[0].t == JV_BOOL ? x[0].i
	                                                       : 0;
	if (x[0].t != JV_MISSING && x[0].t != JV_INT && x[0].t != JV_BOOL)
		return moe_fail(MOE_ERR_BAD_TYPE, "round: precision must be an int");
	const char *method = x[1].t == JV_STR ? x[1].s->s : "common";
	if (x[1].t != JV_MISSING && x[1].t != JV_STR)
		method = "";
	if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
		return moe_fail(MOE_ERR_BAD_TYPE, "method must be common, ceil or floor");
	if (!jv_is_num(v))
		return v.t == JV_UNDEF
		           ? jr_undef_fail(v)
		           : moe_fail(MOE_ERR_BAD_TYPE, "type %s doesn't define __round__ method",
		                      jv_type_name(v));
	if (strcmp(method, "common") == 0) {
		if (v.t != JV_FLOAT) {
			if (prec >= 0) {
				*out = jv_int(v.i);
				return MOE_OK;
			}
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "unsupported: round of an int to negative precision");
		}
		if (prec < 0)
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "unsupported: round to negative precision");
		*out = jv_float(round_float(v.f, prec));
		return MOE_OK;
	}
	if (prec < 0 || prec > 300)
		return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: this round precision");
	double scale = pow(10.0, (double)prec);
	double y = jv_num(v) * scale;
	y = method[0] == 'c' ? ceil(y) : floor(y);
	if (!isfinite(y))
		return moe_fail(MOE_ERR_OVERFLOW, "cannot convert float infinity to integer");
	*out = jv_float(y / scale);
	return MOE_OK;
}

static moe_err f_truncate(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"length", "killwords", "end", "leeway"};
	jv x[4];
	moe_err e = bind(x, "truncate", p, 4, a);
	if (e)
		return e;
	if (v.t != JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE, "truncate: the value must be a str");
	int64_t length = x[0].t == JV_MISSING ? 255 : x[0].i;
	int64_t leeway = x[3].t == JV_MISSING || x[3].t == JV_NONE ? 5 : x[3].i;
	const jstr *end = x[2].t == JV_MISSING ? jstr_lit(&r->arena, "...") : NULL;
	if ((x[0].t != JV_MISSING && x[0].t != JV_INT) ||
	    (x[3].t != JV_MISSING && x[3].t != JV_NONE && x[3].t != JV_INT))
		return moe_fail(MOE_ERR_BAD_TYPE, "truncate: length and leeway must be ints");
	if (!end) {
		if (x[2].t != JV_STR)
			return moe_fail(MOE_ERR_BAD_TYPE, "truncate: end must be a str");
		end = x[2].s;
	}
	if (length < (int64_t)end->ncp)
		return moe_fail(MOE_ERR_BAD_TYPE, "expected length >= %zu, got %lld", end->ncp,
		                (long long)length);
	if (leeway < 0)
		return moe_fail(MOE_ERR_BAD_TYPE, "expected leeway >= 0, got %lld",
		                (long long)leeway);
	if ((int64_t)v.s->ncp <= length + leeway) {
		*out = v;
		return MOE_OK;
	}
	const jstr *head = jr_substr(r, v.s, 0, (size_t)(length - (int64_t)end->ncp));
	if (!head)
		return jr_nomem(r);
	if (!jv_truthy(x[1])) {
		const char *sp = NULL;
		for (size_t i = head->len; i-- > 0;)
			if (head->s[i] == ' ') {
				sp = head->s + i;
				break;
			}
		if (sp)
			head = jstr_new(&r->arena, head->s, (size_t)(sp - head->s));
		if (!head)
			return jr_nomem(r);
	}
	return jr_binop(r, out, OP_ADD, jv_str(head), jv_str(end));
}

static moe_err markup_of(jrender *r, jv *out, jv v, int escape, int force)
{
	const jstr *s;
	moe_err e;
	if (v.t == JV_STR && (v.fl & JVF_MARKUP) && !force) {
		*out = v;
		return MOE_OK;
	}
	e = jr_str(r, &s, v);
	if (!e && escape)
		e = jr_escape(r, &s, s);
	if (e)
		return e;
	*out = jv_str(s);
	out->fl = JVF_MARKUP;
	return MOE_OK;
}

static moe_err f_attr(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"name"};
	jv x[1];
	moe_err e = bind(x, "attr", p, 1, a);
	if (e)
		return e;
	if (x[0].t != JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE, "attribute name must be string");
	if (v.t == JV_DICT && !jhas_method(v, x[0].s->s, x[0].s->len) &&
	    !junsafe_method(v, x[0].s->s, x[0].s->len)) {
		*out = jv_make(JV_UNDEF);
		out->aux = JU_ATTR;
		out->x = JV_DICT;
		out->s = x[0].s;
		return MOE_OK;
	}
	return jr_getattr(r, out, v, x[0].s);
}

moe_err jcall_filter(jrender *r, jv *out, int f, jv v, const jargs *a)
{
	jv x[3];
	moe_err e;
	int64_t n = 0;
	const jv *items;
	size_t cnt;
	switch (f) {
	case F_TOJSON:
		return f_tojson(r, out, v, a);
	case F_TRIM: {
		static const char *const p[] = {"chars"};
		jv s;
		e = bind(x, "trim", p, 1, a);
		if (!e)
			e = soft_str(r, &s, v);
		if (e)
			return e;
		jargs ma = {.pos = x, .npos = x[0].t == JV_MISSING ? 0 : 1};
		const jstr *name = jstr_lit(&r->arena, "strip");
		return name ? jcall_method(r, out, s, name, &ma) : jr_nomem(r);
	}
	case F_LENGTH:
	case F_COUNT:
		if (a->npos || a->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "len() takes exactly one argument");
		e = len_of(&n, v);
		*out = jv_int(n);
		return e;
	case F_ITEMS:
		if (a->npos || a->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "items() takes no arguments");
		if (v.t == JV_UNDEF || v.t == JV_MISSING) {
			jlist *l = new_list(r, 0, JL_GEN);
			if (!l)
				return jr_nomem(r);
			*out = jv_list(l);
			return MOE_OK;
		}
		if (v.t != JV_DICT)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "Can only get item pairs from a mapping.");
		e = jdict_items(r, out, v.d, JL_ITEMS);
		if (!e)
			out->l->kind = JL_GEN;
		return e;
	case F_JOIN:
		return jf_join(r, out, v, a);
	case F_REPLACE: {
		static const char *const p[] = {"old", "new", "count"};
		const jstr *s, *old, *new;
		e = bind(x, "replace", p, 3, a);
		if (e)
			return e;
		if (x[0].t == JV_MISSING || x[1].t == JV_MISSING)
			return moe_fail(MOE_ERR_BAD_TYPE, "replace() missing required arguments");
		e = jr_str(r, &s, v);
		if (!e)
			e = jr_str(r, &old, x[0]);
		if (!e)
			e = jr_str(r, &new, x[1]);
		if (e)
			return e;
		if (x[2].t != JV_MISSING && x[2].t != JV_NONE && x[2].t != JV_INT)
			return moe_fail(MOE_ERR_BAD_TYPE, "replace: count must be an int");
		return jstr_replace(r, out, s, old, new, x[2].t == JV_INT ? x[2].i : -1, 0);
	}
	case F_LOWER:
	case F_UPPER:
	case F_CAPITALIZE:
	case F_TITLE:
		if (a->npos || a->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "%s takes no arguments", filter_names[f]);
		e = soft_str(r, &x[0], v);
		if (e)
			return e;
		if (f == F_TITLE)
			return jstr_jtitle(r, out, x[0].s, x[0].fl);
		return jstr_case(r, out, x[0].s, f == F_LOWER ? 0 : f == F_UPPER ? 1 : 3, x[0].fl);
	case F_CENTER: {
		static const char *const p[] = {"width"};
		e = bind(x, "center", p, 1, a);
		if (!e)
			e = soft_str(r, &x[1], v);
		if (e)
			return e;
		jv w = or_default(x[0], jv_int(80));
		jargs ma = {.pos = &w, .npos = 1};
		const jstr *name = jstr_lit(&r->arena, "center");
		return name ? jcall_method(r, out, x[1], name, &ma) : jr_nomem(r);
	}
	case F_WORDCOUNT:
		e = soft_str(r, &x[0], v);
		if (!e)
			*out = jv_int(jwordcount(x[0].s));
		return e;
	case F_D:
	case F_DEFAULT: {
		static const char *const pd[] = {"default_value", "boolean"};
		e = bind(x, "default", pd, 2, a);
		if (e)
			return e;
		if (v.t == JV_UNDEF || v.t == JV_MISSING || (jv_truthy(x[1]) && !jv_truthy(v)))
			*out = x[0].t == JV_MISSING ? jv_str(&jstr_empty) : x[0];
		else
			*out = v;
		return MOE_OK;
	}
	case F_FIRST:
	case F_LAST:
		if (a->npos || a->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "%s takes no arguments", filter_names[f]);
		if (f == F_LAST && v.t == JV_LIST && v.l->kind == JL_GEN)
			return moe_fail(MOE_ERR_BAD_TYPE, "'generator' object is not reversible");
		if (f == F_FIRST && v.t == JV_LIST && v.l->kind == JL_GEN) {
			/* next(iter(generator)): one item used up */
			if (v.l->pos < v.l->n) {
				*out = v.l->v[v.l->pos++];
				return MOE_OK;
			}
			cnt = 0;
		} else {
			e = jr_iter(r, &items, &cnt, v);
			if (e)
				return e;
		}
		if (!cnt)
			*out = jv_undef_hint(f == F_FIRST ? "No first item, sequence was empty."
			                                  : "No last item, sequence was empty.");
		else
			*out = items[f == F_FIRST ? 0 : cnt - 1];
		return MOE_OK;
	case F_LIST: {
		e = jr_iter(r, &items, &cnt, v);
		if (e)
			return e;
		jlist *l = new_list(r, cnt, JL_LIST);
		if (!l)
			return jr_nomem(r);
		jv_copy(l->v, 0, items, cnt);
		l->n = cnt;
		*out = jv_list(l);
		return MOE_OK;
	}
	case F_STRING:
		return soft_str(r, out, v);
	case F_SAFE:
		return markup_of(r, out, v, 0, 1);
	case F_E:
	case F_ESCAPE:
		return markup_of(r, out, v, 1, 0);
	case F_FORCEESCAPE:
		return markup_of(r, out, v, 1, 1);
	case F_INT:
		return f_int(out, v, a);
	case F_FLOAT:
		return f_float(out, v, a);
	case F_ABS:
		if (v.t == JV_FLOAT) {
			*out = jv_float(fabs(v.f));
			return MOE_OK;
		}
		if (v.t == JV_INT || v.t == JV_BOOL) {
			if (v.i == INT64_MIN)
				return moe_fail(MOE_ERR_OVERFLOW, "integer result beyond int64");
			*out = jv_int(v.i < 0 ? -v.i : v.i);
			return MOE_OK;
		}
		return v.t == JV_UNDEF
		           ? jr_undef_fail(v)
		           : moe_fail(MOE_ERR_BAD_TYPE, "bad operand type for abs(): '%s'",
		                      jv_type_name(v));
	case F_ROUND:
		return f_round(out, v, a);
	case F_INDENT:
		return f_indent(r, out, v, a);
	case F_MAP:
		return jf_map(r, out, v, a);
	case F_SELECT:
		return jf_select(r, out, v, a, 0, 0);
	case F_REJECT:
		return jf_select(r, out, v, a, 1, 0);
	case F_SELECTATTR:
		return jf_select(r, out, v, a, 0, 1);
	case F_REJECTATTR:
		return jf_select(r, out, v, a, 1, 1);
	case F_SORT:
		return jf_sort(r, out, v, a);
	case F_DICTSORT:
		return jf_dictsort(r, out, v, a);
	case F_UNIQUE:
		return jf_unique(r, out, v, a);
	case F_MIN:
		return jf_minmax(r, out, v, a, 0);
	case F_MAX:
		return jf_minmax(r, out, v, a, 1);
	case F_REVERSE:
		return jf_reverse(r, out, v);
	case F_TRUNCATE:
		return f_truncate(r, out, v, a);
	case F_BATCH:
		return jf_batch_slice(r, out, v, a, 0);
	case F_SLICE:
		return jf_batch_slice(r, out, v, a, 1);
	case F_SUM:
		return jf_sum(r, out, v, a);
	case F_ATTR:
		return f_attr(r, out, v, a);
	case F_FORMAT: {
		const jstr *s;
		if (a->npos && a->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "can't handle positional and keyword "
			                                  "arguments at the same time");
		e = jr_str(r, &s, v);
		if (e)
			return e;
		jv args;
		if (a->nkw) {
			jdict *d = jdict_new(&r->arena, a->nkw);
			if (!d)
				return jr_nomem(r);
			for (size_t i = 0; i < a->nkw; i++)
				if ((e = jdict_set(&r->arena, d, a->kw[i], a->kwv[i])) != MOE_OK)
					return e;
			args = jv_dict(d);
		} else {
			jlist *l = new_list(r, a->npos, JL_TUPLE);
			if (!l)
				return jr_nomem(r);
			jv_copy(l->v, 0, a->pos, a->npos);
			l->n = a->npos;
			args = jv_list(l);
		}
		return jfmt_percent(r, out, s, args);
	}
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported filter");
	}
}

/* ---- the tests ---- */

static moe_err test_cmp(int *out, jv v, jv w, int op)
{
	int c;
	moe_err e = jv_cmp(&c, v, w);
	if (e)
		return e;
	switch (op) {
	case OP_LT:
		*out = c == -1;
		break;
	case OP_LE:
		*out = c == -1 || c == 0;
		break;
	case OP_GT:
		*out = c == 1;
		break;
	default:
		*out = c == 1 || c == 0;
		break;
	}
	return MOE_OK;
}

static moe_err test_mod(jrender *r, int *out, jv v, jv m, int64_t want)
{
	jv res;
	moe_err e = jr_binop(r, &res, OP_MOD, v, m);
	if (e)
		return e;
	*out = jv_eq(res, jv_int(want));
	return MOE_OK;
}

moe_err jcall_test(jrender *r, int *out, int t, jv v, const jargs *a)
{
	jv x[1] = {jv_make(JV_MISSING)};
	if (a->npos + a->nkw > 1)
		return moe_fail(MOE_ERR_BAD_TYPE, "test '%s' takes at most one argument",
		                test_names[t]);
	if (a->npos)
		x[0] = a->pos[0];
	else if (a->nkw)
		x[0] = a->kwv[0];
	int needs_arg = t == T_DIVISIBLEBY || t == T_SAMEAS || t == T_IN || t >= T_EQ1;
	if (needs_arg && x[0].t == JV_MISSING)
		return moe_fail(MOE_ERR_BAD_TYPE, "test '%s' needs an argument", test_names[t]);
	int is_seqlike = v.t == JV_LIST &&
	                 (v.l->kind == JL_LIST || v.l->kind == JL_TUPLE || v.l->kind == JL_RANGE);
	switch (t) {
	case T_ODD:
		return test_mod(r, out, v, jv_int(2), 1);
	case T_EVEN:
		return test_mod(r, out, v, jv_int(2), 0);
	case T_DIVISIBLEBY:
		return test_mod(r, out, v, x[0], 0);
	case T_DEFINED:
		*out = v.t != JV_UNDEF && v.t != JV_MISSING;
		return MOE_OK;
	case T_UNDEFINED:
		*out = v.t == JV_UNDEF || v.t == JV_MISSING;
		return MOE_OK;
	case T_FILTER:
		*out = v.t == JV_STR && jfilter_known(v.s->s, v.s->len);
		return MOE_OK;
	case T_TEST:
		*out = v.t == JV_STR && jtest_known(v.s->s, v.s->len);
		return MOE_OK;
	case T_NONE:
		*out = v.t == JV_NONE;
		return MOE_OK;
	case T_BOOLEAN:
		*out = v.t == JV_BOOL;
		return MOE_OK;
	case T_FALSE:
		*out = v.t == JV_BOOL && !v.i;
		return MOE_OK;
	case T_TRUE:
		*out = v.t == JV_BOOL && v.i;
		return MOE_OK;
	case T_INTEGER:
		*out = v.t == JV_INT;
		return MOE_OK;
	case T_FLOAT_:
		*out = v.t == JV_FLOAT;
		return MOE_OK;
	case T_LOWER:
	case T_UPPER: {
		const jstr *s;
		jv res;
		moe_err e = jr_str(r, &s, v);
		const jstr *name = jstr_lit(&r->arena, t == T_LOWER ? "islower" : "isupper");
		if (!e && !name)
			e = jr_nomem(r);
		jargs none = {0};
		if (!e)
			e = jcall_method(r, &res, jv_str(s), name, &none);
		if (!e)
			*out = (int)res.i;
		return e;
	}
	case T_STRING_:
		*out = v.t == JV_STR;
		return MOE_OK;
	case T_MAPPING:
		*out = v.t == JV_DICT;
		return MOE_OK;
	case T_NUMBER:
		*out = jv_is_num(v);
		return MOE_OK;
	case T_SEQUENCE:
		*out = v.t == JV_STR || v.t == JV_DICT || v.t == JV_UNDEF || v.t == JV_MISSING ||
		       is_seqlike;
		return MOE_OK;
	case T_ITERABLE:
		*out = v.t == JV_STR || v.t == JV_DICT || v.t == JV_UNDEF || v.t == JV_MISSING ||
		       v.t == JV_LIST || v.t == JV_LOOP;
		return MOE_OK;
	case T_CALLABLE:
		*out = v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_METHOD || v.t == JV_LOOP;
		return MOE_OK;
	case T_SAMEAS:
		if (v.t != x[0].t)
			*out = 0;
		else if (v.t == JV_NONE || v.t == JV_UNDEF)
			*out = 1;
		else if (v.t == JV_BOOL)
			*out = v.i == x[0].i;
		else if (v.t == JV_INT)
			*out = v.i == x[0].i && v.i >= -5 && v.i <= 256;
		else if (v.t == JV_STR)
			*out = v.s == x[0].s;
		else
			*out = v.l == x[0].l;
		return MOE_OK;
	case T_ESCAPED:
		*out = v.t == JV_STR && (v.fl & JVF_MARKUP);
		return MOE_OK;
	case T_IN:
		return jr_contains(r, out, v, x[0]);
	case T_EQ1:
	case T_EQ2:
	case T_EQ3:
		*out = jv_eq(v, x[0]);
		return MOE_OK;
	case T_NE1:
	case T_NE2:
		*out = !jv_eq(v, x[0]);
		return MOE_OK;
	case T_GT1:
	case T_GT2:
	case T_GT3:
		return test_cmp(out, v, x[0], OP_GT);
	case T_GE1:
	case T_GE2:
		return test_cmp(out, v, x[0], OP_GE);
	case T_LT1:
	case T_LT2:
	case T_LT3:
		return test_cmp(out, v, x[0], OP_LT);
	case T_LE1:
	case T_LE2:
		return test_cmp(out, v, x[0], OP_LE);
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported test");
	}
}
