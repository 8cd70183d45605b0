/* value.c - the values of jinja/: the arena, strings, lists and dicts (on the
 * heap for the caller, in the arena for a render), Python's truth, equality
 * and order, str() and repr() with Python's float repr, output buffers, and
 * the public value API. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "internal.h"

/* ---- arena ---- */

struct jchunk {
	jchunk *next;
	size_t size, used;
	max_align_t data[];
};

void *ja_alloc(jarena *a, size_t n)
{
	if (!a)
		return malloc(n ? n : 1);
	n = (n + 15) & ~(size_t)15;
	jchunk *c = a->head;
	if (!c || c->size - c->used < n) {
		size_t size = n > 32768 ? n : 32768;
		if (c && size < c->size * 2 && c->size < (1u << 20))
			size = c->size * 2 > n ? c->size * 2 : n;
		if (a->limit && (a->total + size > a->limit)) {
			a->over = 1;
			return NULL;
		}
		c = malloc(sizeof(*c) + size);
		if (!c)
			return NULL;
		c->size = size;
		c->used = 0;
		c->next = a->head;
		a->head = c;
		a->total += size;
	}
	void *p = (char *)c->data + c->used;
	c->used += n;
	return p;
}

void *ja_grow(jarena *a, void *p, size_t old, size_t n)
{
	if (!a)
		return realloc(p, n ? n : 1);
	void *q = ja_alloc(a, n);
	if (q && old)
		memcpy(q, p, old < n ? old : n);
	return q;
}

void ja_release(jarena *a)
{
	jchunk *c = a->head;
	while (c) {
		jchunk *next = c->next;
		free(c);
		c = next;
	}
	a->head = NULL;
	a->total = 0;
}

moe_err ja_fail(const jarena *a)
{
	if (a && a->over)
		return moe_fail(MOE_ERR_OVERFLOW, "working memory exceeds %zu bytes", a->limit);
	return moe_fail(MOE_ERR_NOMEM, "out of memory");
}

/* ---- strings ---- */

/* Its terminating NUL is initialised too (a GNU C extension for a static
 * flexible array member, which GCC and clang size to hold it): a jstr is
 * "len bytes, then a NUL", and printing "%s" of an empty one read past the
 * object (fuzz_jinja: raise_exception of an undefined value). */
const jstr jstr_empty = {0, 0, {0}};

size_t utf8_count(const char *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)s[i] & 0xC0) != 0x80;
	return c;
}

int utf8_valid(const char *s, size_t n)
{
	const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s;
	utf8proc_int32_t cp;
	for (size_t i = 0; i < n;) {
		if (u[i] < 0x80) {
			i++;
			continue;
		}
		/* a bad lead or continuation, cut short, overlong, a surrogate,
		 * past U+10FFFF: negative */
		const utf8proc_ssize_t k =
		    utf8proc_iterate(u + i, n - i < 4 ? (utf8proc_ssize_t)(n - i) : 4, &cp);
		if (k <= 0)
			return 0;
		i += (size_t)k;
	}
	return 1;
}

const jstr *jstr_new(jarena *a, const char *s, size_t n)
{
	if (n > SIZE_MAX / 2)
		return NULL;
	jstr *r = ja_alloc(a, sizeof(jstr) + n + 1);
	if (!r)
		return NULL;
	r->len = n;
	r->ncp = utf8_count(s, n);
	if (n)
		memcpy(r->s, s, n);
	r->s[n] = 0;
	return r;
}

const jstr *jstr_lit(jarena *a, const char *s)
{
	return jstr_new(a, s, strlen(s));
}

/* ---- lists and dicts ---- */

jlist *jlist_new(jarena *a, size_t cap, int kind)
{
	jlist *l = ja_alloc(a, sizeof(*l));
	if (!l)
		return NULL;
	memset(l, 0, sizeof(*l));
	l->kind = (uint8_t)kind;
	if (cap) {
		l->v = ja_alloc(a, cap * sizeof(jv));
		if (!l->v) {
			if (!a)
				free(l);
			return NULL;
		}
		l->cap = cap;
	}
	return l;
}

moe_err jlist_push(jarena *a, jlist *l, jv v)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4;
		jv *nv = ja_grow(a, l->v, l->n * sizeof(jv), cap * sizeof(jv));
		if (!nv)
			return ja_fail(a);
		l->v = nv;
		l->cap = cap;
	}
	l->v[l->n++] = v;
	return MOE_OK;
}

jdict *jdict_new(jarena *a, size_t cap)
{
	jdict *d = ja_alloc(a, sizeof(*d));
	if (!d)
		return NULL;
	memset(d, 0, sizeof(*d));
	if (cap) {
		d->e = ja_alloc(a, cap * sizeof(jentry));
		if (!d->e) {
			if (!a)
				free(d);
			return NULL;
		}
		d->cap = cap;
	}
	return d;
}

static uint32_t hash_key(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	return h;
}

static void index_insert(jdict *d, size_t i)
{
	size_t mask = d->icap - 1;
	size_t h = hash_key(d->e[i].k->s, d->e[i].k->len) & mask;
	while (d->idx[h])
		h = (h + 1) & mask;
	d->idx[h] = (uint32_t)(i + 1);
}

static moe_err reindex(jarena *a, jdict *d, size_t icap)
{
	uint32_t *idx = ja_alloc(a, icap * sizeof(uint32_t));
	if (!idx)
		return ja_fail(a);
	memset(idx, 0, icap * sizeof(uint32_t));
	if (!a)
		free(d->idx);
	d->idx = idx;
	d->icap = icap;
	for (size_t i = 0; i < d->n; i++)
		index_insert(d, i);
	return MOE_OK;
}

jv *jdict_get(const jdict *d, const char *k, size_t n)
{
	if (d->idx) {
		size_t mask = d->icap - 1;
		size_t h = hash_key(k, n) & mask;
		while (d->idx[h]) {
			jentry *e = &d->e[d->idx[h] - 1];
			if (e->k->len == n && memcmp(e->k->s, k, n) == 0)
				return &e->v;
			h = (h + 1) & mask;
		}
		return NULL;
	}
	for (size_t i = 0; i < d->n; i++)
		if (d->e[i].k->len == n && memcmp(d->e[i].k->s, k, n) == 0)
			return &d->e[i].v;
	return NULL;
}

moe_err jdict_set(jarena *a, jdict *d, const jstr *k, jv v)
{
	jv *old = jdict_get(d, k->s, k->len);
	if (old) {
		if (!a) {
			jv_free_heap(*old);
			free((void *)k);
		}
		*old = v;
		return MOE_OK;
	}
	if (d->n >= UINT32_MAX - 1)
		return moe_fail(MOE_ERR_OVERFLOW, "dict too large");
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4;
		jentry *ne = ja_grow(a, d->e, d->n * sizeof(jentry), cap * sizeof(jentry));
		if (!ne)
			return ja_fail(a);
		d->e = ne;
		d->cap = cap;
	}
	if (d->n + 1 > 8 && (d->n + 1) * 2 > d->icap) {
		moe_err e = reindex(a, d, d->icap ? d->icap * 2 : 32);
		if (e)
			return e;
	}
	d->e[d->n].k = k;
	d->e[d->n].v = v;
	d->n++;
	if (d->idx)
		index_insert(d, d->n - 1);
	return MOE_OK;
}

void jv_free_heap(jv v)
{
	switch (v.t) {
	case JV_STR:
		free((void *)v.s);
		break;
	case JV_LIST:
		for (size_t i = 0; i < v.l->n; i++)
			jv_free_heap(v.l->v[i]);
		free(v.l->v);
		free(v.l);
		break;
	case JV_DICT:
		for (size_t i = 0; i < v.d->n; i++) {
			free((void *)v.d->e[i].k);
			jv_free_heap(v.d->e[i].v);
		}
		free(v.d->e);
		free(v.d->idx);
		free(v.d);
		break;
	default:
		break;
	}
}

/* ---- Python semantics ---- */

int jv_is_str(jv v)
{
	return v.t == JV_STR;
}

int jv_is_num(jv v)
{
	return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

double jv_num(jv v)
{
	return v.t == JV_FLOAT ? v.f : (double)v.i;
}

int jv_truthy(jv v)
{
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
	case JV_NONE:
		return 0;
	case JV_BOOL:
	case JV_INT:
		return v.i != 0;
	case JV_FLOAT:
		return v.f != 0.0;
	case JV_STR:
		return v.s->len != 0;
	case JV_LIST:
		return v.l->kind == JL_GEN || v.l->n != 0;
	case JV_DICT:
		return v.d->n != 0;
	default:
		return 1;
	}
}

static int seq_kind_class(const jlist *l)
{
	/* lists and tuples compare only with their own kind */
	return l->kind == JL_TUPLE ? 1 : l->kind == JL_LIST ? 0 : 2;
}

static int jv_eq_depth(jv v, jv w, int depth)
{
	if (depth > 512)
		return 0;
	if (jv_is_num(v) && jv_is_num(w)) {
		if (v.t != JV_FLOAT && w.t != JV_FLOAT)
			return v.i == w.i;
		if (v.t == JV_FLOAT && w.t == JV_FLOAT)
			return v.f == w.f;
		/* int vs float: exact, as Python compares */
		double f = v.t == JV_FLOAT ? v.f : w.f;
		int64_t i = v.t == JV_FLOAT ? w.i : v.i;
		if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0))
			return 0;
		if (f != floor(f))
			return 0;
		return (int64_t)f == i;
	}
	if (v.t != w.t) {
		if ((v.t == JV_UNDEF || v.t == JV_MISSING) &&
		    (w.t == JV_UNDEF || w.t == JV_MISSING))
			return 1;
		return 0;
	}
	switch (v.t) {
	case JV_UNDEF:
	case JV_NONE:
		return 1;
	case JV_STR:
		return v.s->len == w.s->len && memcmp(v.s->s, w.s->s, v.s->len) == 0;
	case JV_LIST:
		if (v.l->kind == JL_GEN || w.l->kind == JL_GEN || v.l->kind == JL_RANGE ||
		    w.l->kind == JL_RANGE)
			return v.l == w.l;
		if (seq_kind_class(v.l) != seq_kind_class(w.l) || v.l->kind != w.l->kind)
			return 0;
		if (v.l->n != w.l->n)
			return 0;
		for (size_t i = 0; i < v.l->n; i++)
			if (!jv_eq_depth(v.l->v[i], w.l->v[i], depth + 1))
				return 0;
		return 1;
	case JV_DICT:
		if (v.d->n != w.d->n)
			return 0;
		for (size_t i = 0; i < v.d->n; i++) {
			jv *o = jdict_get(w.d, v.d->e[i].k->s, v.d->e[i].k->len);
			if (!o || !jv_eq_depth(v.d->e[i].v, *o, depth + 1))
				return 0;
		}
		return 1;
	case JV_NS:
		return v.d == w.d;
	case JV_MACRO:
		return v.m == w.m;
	case JV_FUNC:
		return v.aux == w.aux;
	case JV_LOOP:
		return v.lp == w.lp;
	default:
		return 0;
	}
}

int jv_eq(jv v, jv w)
{
	return jv_eq_depth(v, w, 0);
}

static int cmp_i64(int64_t a, int64_t b)
{
	return (a > b) - (a < b);
}

static moe_err cmp_depth(int *r, jv v, jv w, int depth)
{
	if (depth > 512)
		return moe_fail(MOE_ERR_OVERFLOW, "comparison nests too deep");
	if (jv_is_num(v) && jv_is_num(w)) {
		if (v.t != JV_FLOAT && w.t != JV_FLOAT) {
			*r = cmp_i64(v.i, w.i);
		} else if (v.t != JV_FLOAT || w.t != JV_FLOAT) {
			/* int with float: exactly, as Python does */
			double f = v.t == JV_FLOAT ? v.f : w.f;
			int64_t i = v.t == JV_FLOAT ? w.i : v.i;
			int c; /* sign of i - f */
			if (isnan(f)) {
				*r = 2;
				return MOE_OK;
			}
			if (f >= 9223372036854775808.0) {
				c = -1;
			} else if (f < -9223372036854775808.0) {
				c = 1;
			} else {
				double fl = floor(f);
				c = cmp_i64(i, (int64_t)fl);
				if (c == 0 && fl < f)
					c = -1;
			}
			*r = v.t == JV_FLOAT ? -c : c;
		} else {
			double a = jv_num(v), b = jv_num(w);
			if (isnan(a) || isnan(b))
				*r = 2; /* unordered: every comparison is false */
			else
				*r = (a > b) - (a < b);
		}
		return MOE_OK;
	}
	if (v.t == JV_STR && w.t == JV_STR) {
		size_t n = v.s->len < w.s->len ? v.s->len : w.s->len;
		int c = memcmp(v.s->s, w.s->s, n);
		*r = c ? (c > 0) - (c < 0) : (v.s->len > w.s->len) - (v.s->len < w.s->len);
		return MOE_OK;
	}
	if (v.t == JV_LIST && w.t == JV_LIST && v.l->kind == w.l->kind &&
	    (v.l->kind == JL_LIST || v.l->kind == JL_TUPLE)) {
		size_t n = v.l->n < w.l->n ? v.l->n : w.l->n;
		for (size_t i = 0; i < n; i++) {
			if (jv_eq(v.l->v[i], w.l->v[i]))
				continue;
			return cmp_depth(r, v.l->v[i], w.l->v[i], depth + 1);
		}
		*r = (v.l->n > w.l->n) - (v.l->n < w.l->n);
		return MOE_OK;
	}
	if (v.t == JV_UNDEF)
		return jr_undef_fail(v);
	if (w.t == JV_UNDEF)
		return jr_undef_fail(w);
	return moe_fail(MOE_ERR_BAD_TYPE, "'<' not supported between instances of '%s' and '%s'",
	                jv_type_name(v), jv_type_name(w));
}

moe_err jv_cmp(int *r, jv v, jv w)
{
	return cmp_depth(r, v, w, 0);
}

const char *jv_type_name(jv v)
{
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
		return "Undefined";
	case JV_NONE:
		return "NoneType";
	case JV_BOOL:
		return "bool";
	case JV_INT:
		return "int";
	case JV_FLOAT:
		return "float";
	case JV_STR:
		return v.fl & JVF_MARKUP ? "Markup" : "str";
	case JV_LIST:
		switch (v.l->kind) {
		case JL_TUPLE:
			return "tuple";
		case JL_GEN:
			return "generator";
		case JL_KEYS:
			return "dict_keys";
		case JL_VALUES:
			return "dict_values";
		case JL_ITEMS:
			return "dict_items";
		case JL_RANGE:
			return "range";
		default:
			return "list";
		}
	case JV_DICT:
		return "dict";
	case JV_NS:
		return "Namespace";
	case JV_MACRO:
		return "Macro";
	case JV_FUNC:
		return "function";
	case JV_METHOD:
		return "builtin_function_or_method";
	case JV_LOOP:
		return "LoopContext";
	default:
		return "object";
	}
}

const char *jv_object_repr(int t)
{
	switch (t) {
	case JV_NONE:
		return "None";
	case JV_BOOL:
		return "bool object";
	case JV_INT:
		return "int object";
	case JV_FLOAT:
		return "float object";
	case JV_STR:
		return "str object";
	case JV_LIST:
		return "list object";
	case JV_DICT:
		return "dict object";
	case JV_NS:
		return "jinja2.utils.Namespace object";
	case JV_LOOP:
		return "jinja2.runtime.LoopContext object";
	default:
		return "object";
	}
}

/* ---- output buffers ---- */

moe_err jbuf_put(jbuf *b, const void *p, size_t n)
{
	if (n == 0)
		return MOE_OK;
	if (b->limit && (n > b->limit || b->n > b->limit - n))
		return moe_fail(MOE_ERR_OVERFLOW, "output exceeds %zu bytes", b->limit);
	if (b->cap - b->n <= n) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap - b->n <= n) {
			if (cap > SIZE_MAX / 2)
				return moe_fail(MOE_ERR_OVERFLOW, "output too large");
			cap *= 2;
		}
		if (b->acct) {
			size_t delta = cap - b->cap;
			if (b->acct->limit && b->acct->total + delta > b->acct->limit) {
				b->acct->over = 1;
				return ja_fail(b->acct);
			}
		}
		char *np = realloc(b->p, cap);
		if (!np)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		if (b->acct)
			b->acct->total += cap - b->cap;
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
	b->p[b->n] = 0;
	return MOE_OK;
}

moe_err jbuf_putc(jbuf *b, char c)
{
	return jbuf_put(b, &c, 1);
}

moe_err jbuf_puts(jbuf *b, const char *s)
{
	return jbuf_put(b, s, strlen(s));
}

moe_err jbuf_printf(jbuf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return moe_fail(MOE_ERR_INVAL, "bad format");
	if ((size_t)n >= sizeof(tmp))
		n = sizeof(tmp) - 1;
	return jbuf_put(b, tmp, (size_t)n);
}

void jbuf_free(jbuf *b)
{
	if (b->acct)
		b->acct->total -= b->cap;
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

moe_err jbuf_putcp(jbuf *b, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp, n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
	} else {
		u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
		u[2] = (char)(0x80 | (cp >> 6 & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
	}
	return jbuf_put(b, u, n);
}

/* ---- Python's float repr ---- */

/* The p significant digits of d (|d| > 0, finite) as "%.{p-1}e" rounds them:
 * digits in dig (NUL-terminated), decimal exponent in *exp. */
static void digits_of(double d, int p, char *dig, int *exp)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%.*e", p - 1, fabs(d));
	size_t k = 0;
	const char *q = buf;
	for (; *q && *q != 'e'; q++)
		if (*q != '.')
			dig[k++] = *q;
	dig[k] = 0;
	*exp = atoi(q + 1);
}

static double value_of(const char *dig, int exp, int neg)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%s%c.%se%d", neg ? "-" : "", dig[0], dig + 1, exp);
	return strtod(buf, NULL);
}

/* dig +1 (up) or -1 (down) in the last place; returns 0 if it leaves p digits. */
static int step_digits(char *dig, int *exp, int up)
{
	size_t n = strlen(dig);
	size_t i = n;
	if (up) {
		while (i > 0 && dig[i - 1] == '9')
			dig[--i] = '0';
		if (i == 0) {
			dig[0] = '1';
			(*exp)++;
			return 0;
		}
		dig[i - 1]++;
		return 0;
	}
	while (i > 0 && dig[i - 1] == '0')
		dig[--i] = '9';
	if (i == 0)
		return -1;
	dig[i - 1]--;
	if (dig[0] == '0')
		return -1;
	return 0;
}

void fmt_float(char *buf, double d)
{
	if (isnan(d)) {
		strcpy(buf, "nan");
		return;
	}
	if (isinf(d)) {
		strcpy(buf, d < 0 ? "-inf" : "inf");
		return;
	}
	if (d == 0) {
		strcpy(buf, signbit(d) ? "-0.0" : "0.0");
		return;
	}
	int neg = d < 0;
	char dig[32] = {0};
	int exp = 0;
	for (int p = 1; p <= 17; p++) {
		digits_of(d, p, dig, &exp);
		if (value_of(dig, exp, neg) == d)
			break;
		char alt[32];
		int aexp;
		int found = 0;
		for (int up = 1; up >= 0 && !found; up--) {
			memcpy(alt, dig, sizeof(alt));
			aexp = exp;
			if (step_digits(alt, &aexp, up) == 0 && strlen(alt) == (size_t)p &&
			    value_of(alt, aexp, neg) == d) {
				memcpy(dig, alt, sizeof(alt));
				exp = aexp;
				found = 1;
			}
		}
		if (found)
			break;
	}
	size_t nd = strlen(dig);
	while (nd > 1 && dig[nd - 1] == '0')
		dig[--nd] = 0;
	int decpt = exp + 1;
	char *o = buf;
	if (neg)
		*o++ = '-';
	if (decpt <= -4 || decpt > 16) {
		*o++ = dig[0];
		if (nd > 1) {
			*o++ = '.';
			memcpy(o, dig + 1, nd - 1);
			o += nd - 1;
		}
		sprintf(o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
		return;
	}
	if (decpt <= 0) {
		*o++ = '0';
		*o++ = '.';
		for (int i = 0; i < -decpt; i++)
			*o++ = '0';
		memcpy(o, dig, nd);
		o += nd;
	} else if ((size_t)decpt < nd) {
		memcpy(o, dig, (size_t)decpt);
		o += decpt;
		*o++ = '.';
		memcpy(o, dig + decpt, nd - (size_t)decpt);
		o += nd - (size_t)decpt;
	} else {
		memcpy(o, dig, nd);
		o += nd;
		for (size_t i = nd; i < (size_t)decpt; i++)
			*o++ = '0';
		*o++ = '.';
		*o++ = '0';
	}
	*o = 0;
}

/* ---- str() and repr() ---- */

moe_err jstr_write_repr(jbuf *b, const char *s, size_t n)
{
	int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
	char quote = sq && !dq ? '"' : '\'';
	moe_err e = jbuf_putc(b, quote);
	size_t i = 0;
	while (i < n && !e) {
		size_t st = i;
		uint32_t c = utf8_next(s, n, &i);
		if (c == (uint32_t)quote || c == '\\') {
			char t[2] = {'\\', (char)c};
			e = jbuf_put(b, t, 2);
		} else if (c == '\t') {
			e = jbuf_puts(b, "\\t");
		} else if (c == '\n') {
			e = jbuf_puts(b, "\\n");
		} else if (c == '\r') {
			e = jbuf_puts(b, "\\r");
		} else if (c < 0x20 || c == 0x7f) {
			e = jbuf_printf(b, "\\x%02x", c);
		} else if (c < 0x7f || uc_isprintable(c)) {
			e = jbuf_put(b, s + st, i - st);
		} else if (c <= 0xff) {
			e = jbuf_printf(b, "\\x%02x", c);
		} else if (c <= 0xffff) {
			e = jbuf_printf(b, "\\u%04x", c);
		} else {
			e = jbuf_printf(b, "\\U%08x", c);
		}
	}
	if (!e)
		e = jbuf_putc(b, quote);
	return e;
}

static moe_err write_items(jbuf *b, const jlist *l, int depth)
{
	moe_err e = MOE_OK;
	for (size_t i = 0; i < l->n && !e; i++) {
		if (i)
			e = jbuf_puts(b, ", ");
		if (!e)
			e = jv_write_repr(b, l->v[i], depth + 1);
	}
	return e;
}

static moe_err write_dict(jbuf *b, const jdict *d, int depth)
{
	moe_err e = jbuf_putc(b, '{');
	for (size_t i = 0; i < d->n && !e; i++) {
		if (i)
			e = jbuf_puts(b, ", ");
		if (!e)
			e = jstr_write_repr(b, d->e[i].k->s, d->e[i].k->len);
		if (!e)
			e = jbuf_puts(b, ": ");
		if (!e)
			e = jv_write_repr(b, d->e[i].v, depth + 1);
	}
	return e ? e : jbuf_putc(b, '}');
}

moe_err jv_write_repr(jbuf *b, jv v, int depth)
{
	moe_err e;
	if (depth > 512)
		return moe_fail(MOE_ERR_OVERFLOW, "value nests too deep to print");
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
		return jbuf_puts(b, "Undefined");
	case JV_STR:
		if (v.fl & JVF_MARKUP) {
			e = jbuf_puts(b, "Markup(");
			if (!e)
				e = jstr_write_repr(b, v.s->s, v.s->len);
			return e ? e : jbuf_putc(b, ')');
		}
		return jstr_write_repr(b, v.s->s, v.s->len);
	case JV_LIST:
		switch (v.l->kind) {
		case JL_LIST:
			e = jbuf_putc(b, '[');
			if (!e)
				e = write_items(b, v.l, depth);
			return e ? e : jbuf_putc(b, ']');
		case JL_TUPLE:
			e = jbuf_putc(b, '(');
			if (!e)
				e = write_items(b, v.l, depth);
			if (!e && v.l->n == 1)
				e = jbuf_putc(b, ',');
			return e ? e : jbuf_putc(b, ')');
		case JL_KEYS:
		case JL_VALUES:
		case JL_ITEMS:
			e = jbuf_puts(b, v.l->kind == JL_KEYS     ? "dict_keys(["
			                 : v.l->kind == JL_VALUES ? "dict_values(["
			                                          : "dict_items([");
			if (!e)
				e = write_items(b, v.l, depth);
			return e ? e : jbuf_puts(b, "])");
		case JL_RANGE:
			if (v.l->rs == 1)
				return jbuf_printf(b, "range(%lld, %lld)", (long long)v.l->r0,
				                   (long long)v.l->r1);
			return jbuf_printf(b, "range(%lld, %lld, %lld)", (long long)v.l->r0,
			                   (long long)v.l->r1, (long long)v.l->rs);
		default:
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "unsupported: printing a generator (Python prints its "
			                "address); apply |list first");
		}
	case JV_DICT:
		return write_dict(b, v.d, depth);
	case JV_NS:
		e = jbuf_puts(b, "<Namespace ");
		if (!e)
			e = write_dict(b, v.d, depth);
		return e ? e : jbuf_putc(b, '>');
	case JV_MACRO:
		if (v.m->def->k == N_MACRO && v.m->def->name) {
			e = jbuf_puts(b, "<Macro ");
			if (!e)
				e = jstr_write_repr(b, v.m->def->name->s, v.m->def->name->len);
			return e ? e : jbuf_putc(b, '>');
		}
		return jbuf_puts(b, "<Macro 'caller'>");
	case JV_LOOP:
		return jbuf_printf(b, "<LoopContext %zu/%zu>", v.lp->i + 1, v.lp->n);
	case JV_FUNC:
	case JV_METHOD:
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "unsupported: printing a function (Python prints its address)");
	default:
		return jv_write_str(b, v, depth);
	}
}

moe_err jv_write_str(jbuf *b, jv v, int depth)
{
	char num[40];
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
		return MOE_OK;
	case JV_NONE:
		return jbuf_puts(b, "None");
	case JV_BOOL:
		return jbuf_puts(b, v.i ? "True" : "False");
	case JV_INT:
		snprintf(num, sizeof(num), "%lld", (long long)v.i);
		return jbuf_puts(b, num);
	case JV_FLOAT:
		fmt_float(num, v.f);
		return jbuf_puts(b, num);
	case JV_STR:
		return jbuf_put(b, v.s->s, v.s->len);
	default:
		return jv_write_repr(b, v, depth);
	}
}

/* ---- the public value API ---- */

static moe_err wrap(moe_jinja_value **out, jv v)
{
	*out = malloc(sizeof(**out));
	if (!*out) {
		jv_free_heap(v);
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	}
	(*out)->v = v;
	return MOE_OK;
}

moe_err moe_jinja_value_null(moe_jinja_value **out)
{
	return wrap(out, jv_make(JV_NONE));
}

moe_err moe_jinja_value_bool(moe_jinja_value **out, int b)
{
	return wrap(out, jv_bool(b));
}

moe_err moe_jinja_value_int(moe_jinja_value **out, int64_t i)
{
	return wrap(out, jv_int(i));
}

moe_err moe_jinja_value_float(moe_jinja_value **out, double d)
{
	return wrap(out, jv_float(d));
}

moe_err moe_jinja_value_string(moe_jinja_value **out, const char *s, size_t len)
{
	*out = NULL;
	if (!s && len)
		return moe_fail(MOE_ERR_INVAL, "moe_jinja_value_string: NULL string");
	if (!utf8_valid(s, len))
		return moe_fail(MOE_ERR_BAD_STRING, "string is not valid UTF-8");
	const jstr *js = jstr_new(NULL, s ? s : "", len);
	if (!js)
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	return wrap(out, jv_str(js));
}

moe_err moe_jinja_value_list(moe_jinja_value **out)
{
	*out = NULL;
	jlist *l = jlist_new(NULL, 0, JL_LIST);
	if (!l)
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	return wrap(out, jv_list(l));
}

moe_err moe_jinja_value_dict(moe_jinja_value **out)
{
	*out = NULL;
	jdict *d = jdict_new(NULL, 0);
	if (!d)
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	return wrap(out, jv_dict(d));
}

moe_err moe_jinja_list_append(moe_jinja_value *list, moe_jinja_value *item)
{
	moe_err e;
	if (!list || list->v.t != JV_LIST || !item) {
		e = moe_fail(MOE_ERR_INVAL, "moe_jinja_list_append: not a list and an item");
		goto free_item;
	}
	e = jlist_push(NULL, list->v.l, item->v);
	if (e)
		goto free_item;
	free(item);
	return MOE_OK;
free_item:
	moe_jinja_value_free(item);
	return e;
}

moe_err moe_jinja_dict_set(moe_jinja_value *dict, const char *key, moe_jinja_value *val)
{
	moe_err e;
	const jstr *k = NULL;
	if (!dict || dict->v.t != JV_DICT || !key || !val) {
		e = moe_fail(MOE_ERR_INVAL, "moe_jinja_dict_set: not a dict, a key and a value");
		goto free_val;
	}
	if (!utf8_valid(key, strlen(key))) {
		e = moe_fail(MOE_ERR_BAD_STRING, "dict key is not valid UTF-8");
		goto free_val;
	}
	k = jstr_new(NULL, key, strlen(key));
	if (!k) {
		e = moe_fail(MOE_ERR_NOMEM, "out of memory");
		goto free_val;
	}
	e = jdict_set(NULL, dict->v.d, k, val->v);
	if (e)
		goto free_key;
	free(val);
	return MOE_OK;
free_key:
	free((void *)k);
free_val:
	moe_jinja_value_free(val);
	return e;
}

void moe_jinja_value_free(moe_jinja_value *v)
{
	if (!v)
		return;
	jv_free_heap(v->v);
	free(v);
}
