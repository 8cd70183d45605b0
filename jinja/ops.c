/* ops.c - the operations of a render on values, with Python's and the
 * sandbox's semantics: attribute and item access (undefined where Jinja2
 * gives undefined), slicing, iteration, arithmetic (int64 checked, true
 * division, floor division, modulo, power), containment, str() and the
 * Markup rules of '+', and the global functions (range, dict, namespace,
 * raise_exception, strftime_now). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

moe_err jr_nomem(jrender *r)
{
	return ja_fail(&r->arena);
}

moe_err jr_steps(jrender *r, uint64_t n)
{
	r->steps += n;
	if (r->steps > r->max_steps)
		return moe_fail(MOE_ERR_OVERFLOW,
		                "more than %llu steps (loop iterations, macro calls, items)",
		                (unsigned long long)r->max_steps);
	return MOE_OK;
}

moe_err jr_undef_fail(jv u)
{
	switch (u.aux) {
	case JU_ATTR:
		if (u.x == JV_NONE)
			return moe_fail(MOE_ERR_BAD_TYPE, "'None' has no attribute '%s'", u.s->s);
		return moe_fail(MOE_ERR_BAD_TYPE, "'%s' has no attribute '%s'", jv_object_repr(u.x),
		                u.s->s);
	case JU_HINT:
		return moe_fail(MOE_ERR_BAD_TYPE, "%s", u.hint);
	case JU_UNSAFE:
		return moe_fail(MOE_ERR_BAD_TYPE,
		                "access to attribute '%s' of '%s' object is unsafe.", u.s->s,
		                u.x == JV_DICT  ? "dict"
		                : u.x == JV_STR ? "str"
		                                : "list");
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "'%s' is undefined", u.s ? u.s->s : "");
	}
}

static jv undef_attr(jv obj, const jstr *name)
{
	jv u = jv_make(JV_UNDEF);
	u.aux = JU_ATTR;
	u.x = obj.t;
	u.s = name;
	return u;
}

static jv undef_unsafe(jv obj, const jstr *name)
{
	jv u = jv_make(JV_UNDEF);
	u.aux = JU_UNSAFE;
	u.x = obj.t;
	u.s = name;
	return u;
}

moe_err jr_str(jrender *r, const jstr **out, jv v)
{
	char num[40];
	switch (v.t) {
	case JV_STR:
		*out = v.s;
		return MOE_OK;
	case JV_MISSING:
	case JV_UNDEF:
		*out = &jstr_empty;
		return MOE_OK;
	case JV_INT:
		snprintf(num, sizeof(num), "%lld", (long long)v.i);
		break;
	case JV_FLOAT:
		fmt_float(num, v.f);
		break;
	case JV_BOOL:
		*out = v.i ? jstr_lit(&r->arena, "True") : jstr_lit(&r->arena, "False");
		return *out ? MOE_OK : jr_nomem(r);
	case JV_NONE:
		*out = jstr_lit(&r->arena, "None");
		return *out ? MOE_OK : jr_nomem(r);
	default: {
		jbuf b = {.limit = r->max_output, .acct = &r->arena};
		moe_err e = jv_write_str(&b, v, 0);
		if (!e) {
			*out = jstr_new(&r->arena, b.p ? b.p : "", b.n);
			if (!*out)
				e = jr_nomem(r);
		}
		jbuf_free(&b);
		return e;
	}
	}
	*out = jstr_lit(&r->arena, num);
	return *out ? MOE_OK : jr_nomem(r);
}

moe_err jr_repr(jrender *r, const jstr **out, jv v)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	moe_err e = jv_write_repr(&b, v, 0);
	if (!e) {
		*out = jstr_new(&r->arena, b.p ? b.p : "", b.n);
		if (!*out)
			e = jr_nomem(r);
	}
	jbuf_free(&b);
	return e;
}

const jstr *jr_substr(jrender *r, const jstr *s, size_t a, size_t b)
{
	if (a >= b)
		return &jstr_empty;
	size_t oa = utf8_offset(s, a), ob = utf8_offset(s, b);
	return jstr_new(&r->arena, s->s + oa, ob - oa);
}

moe_err jr_escape(jrender *r, const jstr **out, const jstr *s)
{
	size_t extra = 0;
	for (size_t i = 0; i < s->len; i++) {
		char c = s->s[i];
		extra += c == '&' ? 4 : c == '<' || c == '>' ? 3 : c == '"' || c == '\'' ? 4 : 0;
	}
	if (!extra) {
		*out = s;
		return MOE_OK;
	}
	jstr *o = ja_alloc(&r->arena, sizeof(jstr) + s->len + extra + 1);
	if (!o)
		return jr_nomem(r);
	char *p = o->s;
	for (size_t i = 0; i < s->len; i++) {
		const char *rep = NULL;
		switch (s->s[i]) {
		case '&':
			rep = "&amp;";
			break;
		case '<':
			rep = "&lt;";
			break;
		case '>':
			rep = "&gt;";
			break;
		case '"':
			rep = "&#34;";
			break;
		case '\'':
			rep = "&#39;";
			break;
		default:
			*p++ = s->s[i];
			continue;
		}
		size_t k = strlen(rep);
		memcpy(p, rep, k);
		p += k;
	}
	*p = 0;
	o->len = (size_t)(p - o->s);
	o->ncp = s->ncp + extra;
	*out = o;
	return MOE_OK;
}

/* ---- attributes and items ---- */

static moe_err bound_method(jrender *r, jv *out, jv self, const jstr *name)
{
	jmethod *m = ja_alloc(&r->arena, sizeof(*m));
	if (!m)
		return jr_nomem(r);
	m->self = self;
	m->name = name;
	*out = jv_make(JV_METHOD);
	out->bm = m;
	return MOE_OK;
}

static moe_err loop_attr(jrender *r, jv *out, const jloop *lp, const jstr *name)
{
	const char *n = name->s;
	int64_t idx = (int64_t)lp->i, len = (int64_t)lp->n;
	if (strcmp(n, "index") == 0)
		*out = jv_int(idx + 1);
	else if (strcmp(n, "index0") == 0)
		*out = jv_int(idx);
	else if (strcmp(n, "revindex") == 0)
		*out = jv_int(len - idx);
	else if (strcmp(n, "revindex0") == 0)
		*out = jv_int(len - idx - 1);
	else if (strcmp(n, "first") == 0)
		*out = jv_bool(idx == 0);
	else if (strcmp(n, "last") == 0)
		*out = jv_bool(idx + 1 == len);
	else if (strcmp(n, "length") == 0)
		*out = jv_int(len);
	else if (strcmp(n, "depth") == 0)
		*out = jv_int(lp->depth0 + 1);
	else if (strcmp(n, "depth0") == 0)
		*out = jv_int(lp->depth0);
	else if (strcmp(n, "previtem") == 0)
		*out = idx > 0 ? lp->items[idx - 1] : jv_undef_hint("there is no previous item");
	else if (strcmp(n, "nextitem") == 0)
		*out = idx + 1 < len ? lp->items[idx + 1] : jv_undef_hint("there is no next item");
	else if (strcmp(n, "cycle") == 0 || strcmp(n, "changed") == 0) {
		jv self = jv_make(JV_LOOP);
		self.lp = (jloop *)lp;
		return bound_method(r, out, self, name);
	} else {
		jv self = jv_make(JV_LOOP);
		*out = undef_attr(self, name);
	}
	return MOE_OK;
}

moe_err jr_getattr(jrender *r, jv *out, jv obj, const jstr *name)
{
	const char *n = name->s;
	size_t nl = name->len;
	switch (obj.t) {
	case JV_MISSING:
	case JV_UNDEF:
		return jr_undef_fail(obj);
	case JV_LOOP:
		return loop_attr(r, out, obj.lp, name);
	case JV_NS: {
		jv *v = jdict_get(obj.d, n, nl);
		*out = v ? *v : undef_attr(obj, name);
		return MOE_OK;
	}
	case JV_DICT:
	case JV_STR:
	case JV_LIST:
		if (nl >= 2 && n[0] == '_' && n[1] == '_') {
			*out = undef_unsafe(obj, name);
			return MOE_OK;
		}
		if (junsafe_method(obj, n, nl)) {
			*out = undef_unsafe(obj, name);
			return MOE_OK;
		}
		if (jhas_method(obj, n, nl))
			return bound_method(r, out, obj, name);
		if (obj.t == JV_DICT) {
			jv *v = jdict_get(obj.d, n, nl);
			if (v) {
				*out = *v;
				return MOE_OK;
			}
		}
		*out = undef_attr(obj, name);
		return MOE_OK;
	default:
		*out = undef_attr(obj, name);
		return MOE_OK;
	}
}

static moe_err undef_element(jrender *r, jv *out, jv obj, jv key)
{
	const jstr *ks;
	moe_err e = jr_repr(r, &ks, key);
	if (e)
		return e;
	char *msg = ja_alloc(&r->arena, ks->len + 64);
	if (!msg)
		return jr_nomem(r);
	sprintf(msg, "%s has no element %s", jv_object_repr(obj.t), ks->s);
	*out = jv_undef_hint(msg);
	return MOE_OK;
}

static moe_err str_char(jrender *r, jv *out, jv s, size_t k)
{
	const jstr *c = jr_substr(r, s.s, k, k + 1);
	if (!c)
		return jr_nomem(r);
	*out = jv_str(c);
	out->fl = s.fl; /* Markup's __getitem__ gives Markup */
	return MOE_OK;
}

moe_err jr_getitem(jrender *r, jv *out, jv obj, jv key)
{
	if (obj.t == JV_UNDEF || obj.t == JV_MISSING)
		return jr_undef_fail(obj);
	if (obj.t == JV_DICT && key.t == JV_STR) {
		jv *v = jdict_get(obj.d, key.s->s, key.s->len);
		if (v) {
			*out = *v;
			return MOE_OK;
		}
	}
	int indexable = (obj.t == JV_LIST && (obj.l->kind == JL_LIST || obj.l->kind == JL_TUPLE ||
	                                      obj.l->kind == JL_RANGE)) ||
	                obj.t == JV_STR;
	if (indexable && (key.t == JV_INT || key.t == JV_BOOL)) {
		int64_t len = obj.t == JV_STR ? (int64_t)obj.s->ncp : (int64_t)obj.l->n;
		int64_t i = key.i < 0 ? key.i + len : key.i;
		if (i >= 0 && i < len) {
			if (obj.t == JV_STR)
				return str_char(r, out, obj, (size_t)i);
			*out = obj.l->v[i];
			return MOE_OK;
		}
		return undef_element(r, out, obj, key);
	}
	if (key.t == JV_STR && obj.t != JV_NONE) {
		/* the sandbox's getitem falls back to the attribute */
		jv a;
		moe_err e = jr_getattr(r, &a, obj, key.s);
		if (e)
			return e;
		if (a.t != JV_UNDEF || a.aux == JU_UNSAFE) {
			*out = a;
			return MOE_OK;
		}
		*out = undef_attr(obj, key.s);
		return MOE_OK;
	}
	if (key.t == JV_STR) {
		*out = undef_attr(obj, key.s);
		return MOE_OK;
	}
	return undef_element(r, out, obj, key);
}

/* ---- iteration ---- */

moe_err jr_iter(jrender *r, const jv **items, size_t *n, jv v)
{
	moe_err e;
	switch (v.t) {
	case JV_MISSING:
	case JV_UNDEF:
		*items = NULL;
		*n = 0;
		return MOE_OK;
	case JV_LIST:
		if (v.l->kind == JL_GEN) {
			/* a generator: what is left of it, and then nothing */
			size_t pos = v.l->pos;
			v.l->pos = v.l->n;
			*n = v.l->n > pos ? v.l->n - pos : 0;
			*items = *n ? v.l->v + pos : NULL; /* an empty one may have no array */
			return jr_steps(r, *n);
		}
		*items = v.l->v;
		*n = v.l->n;
		return jr_steps(r, v.l->n);
	case JV_DICT: {
		jv *keys = ja_alloc(&r->arena, (v.d->n ? v.d->n : 1) * sizeof(jv));
		if (!keys)
			return jr_nomem(r);
		for (size_t i = 0; i < v.d->n; i++)
			keys[i] = jv_str(v.d->e[i].k);
		*items = keys;
		*n = v.d->n;
		return jr_steps(r, v.d->n);
	}
	case JV_STR: {
		const jstr *s = v.s;
		e = jr_steps(r, s->ncp);
		if (e)
			return e;
		jv *chars = ja_alloc(&r->arena, (s->ncp ? s->ncp : 1) * sizeof(jv));
		if (!chars)
			return jr_nomem(r);
		size_t i = 0, k = 0;
		while (i < s->len) {
			size_t st = i;
			utf8_next(s->s, s->len, &i);
			const jstr *c = jstr_new(&r->arena, s->s + st, i - st);
			if (!c)
				return jr_nomem(r);
			chars[k++] = jv_str(c); /* str's iterator: plain str */
		}
		*items = chars;
		*n = k;
		return MOE_OK;
	}
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "'%s' object is not iterable", jv_type_name(v));
	}
}

moe_err jr_contains(jrender *r, int *out, jv item, jv seq)
{
	*out = 0;
	switch (seq.t) {
	case JV_MISSING:
	case JV_UNDEF:
		return MOE_OK;
	case JV_STR:
		if (item.t != JV_STR)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "'in <string>' requires string as left operand, not %s",
			                jv_type_name(item));
		if (item.s->len == 0)
			*out = 1;
		else
			*out = memmem(seq.s->s, seq.s->len, item.s->s, item.s->len) != NULL;
		return MOE_OK;
	case JV_DICT:
		if (item.t == JV_STR)
			*out = jdict_get(seq.d, item.s->s, item.s->len) != NULL;
		else if (item.t == JV_LIST || item.t == JV_DICT || item.t == JV_NS)
			return moe_fail(MOE_ERR_BAD_TYPE, "unhashable type: '%s'",
			                jv_type_name(item));
		return MOE_OK;
	case JV_LIST: {
		const jv *items;
		size_t n;
		jlist *gen = seq.l->kind == JL_GEN ? seq.l : NULL;
		size_t pos = gen ? gen->pos : 0;
		moe_err e = jr_iter(r, &items, &n, seq);
		if (e)
			return e;
		for (size_t i = 0; i < n; i++)
			if (jv_eq(item, items[i])) {
				*out = 1;
				if (gen) /* a generator is used up to the item found */
					gen->pos = pos + i + 1;
				break;
			}
		return MOE_OK;
	}
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "argument of type '%s' is not iterable",
		                jv_type_name(seq));
	}
}

/* ---- arithmetic ---- */

static moe_err type_error(const char *op, jv a, jv b)
{
	if (a.t == JV_UNDEF || a.t == JV_MISSING)
		return jr_undef_fail(a);
	if (b.t == JV_UNDEF || b.t == JV_MISSING)
		return jr_undef_fail(b);
	if (strcmp(op, "+") == 0 && a.t == JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE, "can only concatenate str (not \"%s\") to str",
		                jv_type_name(b));
	if (strcmp(op, "+") == 0 && a.t == JV_LIST && a.l->kind == JL_LIST)
		return moe_fail(MOE_ERR_BAD_TYPE, "can only concatenate list (not \"%s\") to list",
		                jv_type_name(b));
	return moe_fail(MOE_ERR_BAD_TYPE, "unsupported operand type(s) for %s: '%s' and '%s'", op,
	                jv_type_name(a), jv_type_name(b));
}

static moe_err int_overflow(void)
{
	return moe_fail(MOE_ERR_OVERFLOW, "integer result beyond int64");
}

static moe_err concat_str(jrender *r, jv *out, jv a, jv b)
{
	const jstr *x = a.s, *y = b.s;
	int markup = (a.fl | b.fl) & JVF_MARKUP;
	moe_err e;
	if (markup && !(a.fl & JVF_MARKUP) && (e = jr_escape(r, &x, x)) != MOE_OK)
		return e;
	if (markup && !(b.fl & JVF_MARKUP) && (e = jr_escape(r, &y, y)) != MOE_OK)
		return e;
	jstr *s = ja_alloc(&r->arena, sizeof(jstr) + x->len + y->len + 1);
	if (!s)
		return jr_nomem(r);
	s->len = x->len + y->len;
	s->ncp = x->ncp + y->ncp;
	memcpy(s->s, x->s, x->len);
	memcpy(s->s + x->len, y->s, y->len);
	s->s[s->len] = 0;
	*out = jv_str(s);
	out->fl = (uint8_t)markup;
	return MOE_OK;
}

static moe_err repeat(jrender *r, jv *out, jv seq, int64_t times)
{
	if (times < 0)
		times = 0;
	/* empty, however many times: no loop over times (fuzz_jinja found
	 * `() * (9 ** 15)` spinning for hours) */
	if ((seq.t == JV_STR ? seq.s->len : seq.l->n) == 0)
		times = 0;
	if (seq.t == JV_STR) {
		size_t total;
		if (!moe_size_mul(&total, seq.s->len, (size_t)times) || total > r->arena.limit)
			return moe_fail(MOE_ERR_OVERFLOW, "string repetition too large");
		jstr *s = ja_alloc(&r->arena, sizeof(jstr) + total + 1);
		if (!s)
			return jr_nomem(r);
		for (int64_t i = 0; i < times; i++)
			memcpy(s->s + (size_t)i * seq.s->len, seq.s->s, seq.s->len);
		s->len = total;
		s->ncp = seq.s->ncp * (size_t)times;
		s->s[total] = 0;
		*out = jv_str(s);
		out->fl = seq.fl;
		return MOE_OK;
	}
	size_t total;
	if (!moe_size_mul(&total, seq.l->n, (size_t)times) || total > r->arena.limit / sizeof(jv))
		return moe_fail(MOE_ERR_OVERFLOW, "list repetition too large");
	moe_err e = jr_steps(r, total);
	if (e)
		return e;
	jlist *l = jlist_new(&r->arena, total, seq.l->kind);
	if (!l)
		return jr_nomem(r);
	for (int64_t i = 0; i < times; i++)
		for (size_t k = 0; k < seq.l->n; k++)
			l->v[l->n++] = seq.l->v[k];
	*out = jv_list(l);
	return MOE_OK;
}

static double py_floordiv(double a, double b, double *mod)
{
	double m = fmod(a, b);
	double div = (a - m) / b;
	if (m != 0) {
		if ((b < 0) != (m < 0)) {
			m += b;
			div -= 1.0;
		}
	} else {
		m = copysign(0.0, b);
	}
	double fd;
	if (div != 0) {
		fd = floor(div);
		if (div - fd > 0.5)
			fd += 1.0;
	} else {
		fd = copysign(0.0, a / b);
	}
	*mod = m;
	return fd;
}

static int is_seq(jv v)
{
	return v.t == JV_LIST && (v.l->kind == JL_LIST || v.l->kind == JL_TUPLE);
}

static moe_err int_pow(jv *out, int64_t b, int64_t x)
{
	int64_t res = 1;
	while (x > 0) {
		if (x & 1) {
			if (__builtin_mul_overflow(res, b, &res))
				return int_overflow();
		}
		x >>= 1;
		if (x && __builtin_mul_overflow(b, b, &b))
			return int_overflow();
	}
	*out = jv_int(res);
	return MOE_OK;
}

moe_err jr_binop(jrender *r, jv *out, int op, jv a, jv b)
{
	static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
	int nums = jv_is_num(a) && jv_is_num(b);
	int ints = nums && a.t != JV_FLOAT && b.t != JV_FLOAT;
	double x = nums ? jv_num(a) : 0, y = nums ? jv_num(b) : 0;
	int64_t ri;
	switch (op) {
	case OP_ADD:
		if (ints) {
			if (__builtin_add_overflow(a.i, b.i, &ri))
				return int_overflow();
			*out = jv_int(ri);
			return MOE_OK;
		}
		if (nums) {
			*out = jv_float(x + y);
			return MOE_OK;
		}
		if (a.t == JV_STR && b.t == JV_STR)
			return concat_str(r, out, a, b);
		if (is_seq(a) && is_seq(b) && a.l->kind == b.l->kind) {
			jlist *l = jlist_new(&r->arena, a.l->n + b.l->n, a.l->kind);
			if (!l)
				return jr_nomem(r);
			jv_copy(l->v, 0, a.l->v, a.l->n);
			jv_copy(l->v, a.l->n, b.l->v, b.l->n);
			l->n = a.l->n + b.l->n;
			*out = jv_list(l);
			return jr_steps(r, l->n);
		}
		break;
	case OP_SUB:
		if (ints) {
			if (__builtin_sub_overflow(a.i, b.i, &ri))
				return int_overflow();
			*out = jv_int(ri);
			return MOE_OK;
		}
		if (nums) {
			*out = jv_float(x - y);
			return MOE_OK;
		}
		break;
	case OP_MUL:
		if (ints) {
			if (__builtin_mul_overflow(a.i, b.i, &ri))
				return int_overflow();
			*out = jv_int(ri);
			return MOE_OK;
		}
		if (nums) {
			*out = jv_float(x * y);
			return MOE_OK;
		}
		if ((a.t == JV_STR || is_seq(a)) && (b.t == JV_INT || b.t == JV_BOOL))
			return repeat(r, out, a, b.i);
		if ((b.t == JV_STR || is_seq(b)) && (a.t == JV_INT || a.t == JV_BOOL))
			return repeat(r, out, b, a.i);
		break;
	case OP_DIV:
		if (nums) {
			if (y == 0)
				return moe_fail(MOE_ERR_BAD_TYPE, ints ? "division by zero"
				                                       : "float division by zero");
			*out = jv_float(x / y);
			return MOE_OK;
		}
		break;
	case OP_FLOORDIV:
	case OP_MOD:
		if (ints) {
			if (b.i == 0)
				return moe_fail(MOE_ERR_BAD_TYPE,
				                "integer division or modulo by zero");
			if (a.i == INT64_MIN && b.i == -1) {
				if (op == OP_FLOORDIV)
					return int_overflow();
				*out = jv_int(0);
				return MOE_OK;
			}
			int64_t q = a.i / b.i, m = a.i % b.i;
			if (m != 0 && ((m < 0) != (b.i < 0))) {
				q -= 1;
				m += b.i;
			}
			*out = jv_int(op == OP_FLOORDIV ? q : m);
			return MOE_OK;
		}
		if (nums) {
			if (y == 0)
				return moe_fail(MOE_ERR_BAD_TYPE,
				                op == OP_MOD ? "float modulo"
				                             : "float floor division by zero");
			double m, q = py_floordiv(x, y, &m);
			*out = jv_float(op == OP_FLOORDIV ? q : m);
			return MOE_OK;
		}
		if (op == OP_MOD && a.t == JV_STR)
			return jfmt_percent(r, out, a.s, b);
		break;
	case OP_POW:
		if (ints && b.i >= 0)
			return int_pow(out, a.i, b.i);
		if (nums) {
			if (x == 0 && y < 0)
				return moe_fail(MOE_ERR_BAD_TYPE,
				                "0.0 cannot be raised to a negative power");
			if (x < 0 && y != floor(y))
				return moe_fail(MOE_ERR_UNSUPPORTED,
				                "unsupported: a complex power");
			*out = jv_float(pow(x, y));
			if (isinf(out->f) && !isinf(x) && !isinf(y))
				return moe_fail(MOE_ERR_OVERFLOW,
				                "(34, 'Numerical result out of range')");
			return MOE_OK;
		}
		break;
	}
	return type_error(names[op], a, b);
}

/* ---- global functions ---- */

static moe_err want_int(int64_t *out, jv v, const char *what)
{
	if (v.t == JV_INT || v.t == JV_BOOL) {
		*out = v.i;
		return MOE_OK;
	}
	if (v.t == JV_UNDEF)
		return jr_undef_fail(v);
	return moe_fail(MOE_ERR_BAD_TYPE, "'%s' object cannot be interpreted as an integer (%s)",
	                jv_type_name(v), what);
}

static moe_err g_range(jrender *r, jv *out, const jargs *a)
{
	int64_t v[3] = {0, 0, 1};
	if (a->nkw)
		return moe_fail(MOE_ERR_BAD_TYPE, "range() takes no keyword arguments");
	if (a->npos < 1 || a->npos > 3)
		return moe_fail(MOE_ERR_BAD_TYPE, "range expected 1 to 3 arguments, got %zu",
		                a->npos);
	for (size_t i = 0; i < a->npos; i++) {
		moe_err e = want_int(&v[a->npos == 1 ? 1 : i], a->pos[i], "range");
		if (e)
			return e;
	}
	if (v[2] == 0)
		return moe_fail(MOE_ERR_BAD_TYPE, "range() arg 3 must not be zero");
	/* the length, in 128 bits: no overflow */
	__int128 span = v[2] > 0 ? (__int128)v[1] - v[0] : (__int128)v[0] - v[1];
	__int128 step = v[2] > 0 ? v[2] : -(__int128)v[2];
	__int128 len = span <= 0 ? 0 : (span - 1) / step + 1;
	if (len > 100000)
		return moe_fail(MOE_ERR_OVERFLOW, "Range too big. The sandbox blocks ranges larger "
		                                  "than MAX_RANGE (100000).");
	moe_err e = jr_steps(r, (uint64_t)len);
	if (e)
		return e;
	jlist *l = jlist_new(&r->arena, (size_t)len, JL_RANGE);
	if (!l)
		return jr_nomem(r);
	for (int64_t i = 0; i < (int64_t)len; i++)
		l->v[l->n++] = jv_int(v[0] + i * v[2]);
	l->r0 = v[0];
	l->r1 = v[1];
	l->rs = v[2];
	*out = jv_list(l);
	return MOE_OK;
}

/* dict(...) and namespace(...): a mapping or pairs, then keywords. */
static moe_err g_dict(jrender *r, jv *out, const jargs *a, int ns)
{
	jdict *d = jdict_new(&r->arena, 0);
	if (!d)
		return jr_nomem(r);
	const char *fname = ns ? "Namespace" : "dict";
	if (a->npos > 1)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s expected at most 1 argument, got %zu", fname,
		                a->npos);
	moe_err e;
	if (a->npos == 1) {
		jv src = a->pos[0];
		if (src.t == JV_DICT || src.t == JV_NS) {
			for (size_t i = 0; i < src.d->n; i++) {
				e = jdict_set(&r->arena, d, src.d->e[i].k, src.d->e[i].v);
				if (e)
					return e;
			}
		} else {
			const jv *items;
			size_t n;
			e = jr_iter(r, &items, &n, src);
			if (e)
				return e;
			for (size_t i = 0; i < n; i++) {
				const jv *kv;
				size_t m;
				if (items[i].t != JV_LIST)
					return moe_fail(MOE_ERR_BAD_TYPE,
					                "cannot convert dictionary update sequence "
					                "element #%zu to a sequence",
					                i);
				e = jr_iter(r, &kv, &m, items[i]);
				if (e)
					return e;
				if (m != 2)
					return moe_fail(
					    MOE_ERR_BAD_TYPE,
					    "dictionary update sequence element #%zu has "
					    "length %zu; 2 is required",
					    i, m);
				if (kv[0].t != JV_STR)
					return moe_fail(
					    MOE_ERR_UNSUPPORTED,
					    "unsupported: a dict key that is not a string");
				e = jdict_set(&r->arena, d, kv[0].s, kv[1]);
				if (e)
					return e;
			}
		}
	}
	for (size_t i = 0; i < a->nkw; i++) {
		e = jdict_set(&r->arena, d, a->kw[i], a->kwv[i]);
		if (e)
			return e;
	}
	*out = jv_make(ns ? JV_NS : JV_DICT);
	out->d = d;
	return MOE_OK;
}

static moe_err g_raise(jrender *r, const jargs *a)
{
	static const char *const params[] = {"message"};
	jv v[1];
	moe_err e = jbind_args(v, "raise_exception", params, 1, a);
	if (e)
		return e;
	if (v[0].t == JV_MISSING)
		return moe_fail(
		    MOE_ERR_BAD_TYPE,
		    "raise_exception() missing 1 required positional argument: 'message'");
	const jstr *msg;
	e = jr_str(r, &msg, v[0]);
	if (e)
		return e;
	r->annotated = 1;
	return moe_fail(MOE_JINJA_RAISED, "%s", msg->s);
}

static moe_err g_strftime(jrender *r, jv *out, const jargs *a)
{
	static const char *const params[] = {"fmt"};
	jv v[1];
	moe_err e = jbind_args(v, "strftime_now", params, 1, a);
	if (e)
		return e;
	if (v[0].t != JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE, "strftime() argument 1 must be str, not %s",
		                jv_type_name(v[0]));
	if (v[0].s->len > 256 || memchr(v[0].s->s, 0, v[0].s->len))
		return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: this strftime format");
	char buf[8192]; /* 256 bytes of format expand to less */
	size_t n = v[0].s->len ? strftime(buf, sizeof(buf), v[0].s->s, &r->now) : 0;
	if (v[0].s->len && n == 0)
		buf[0] = 0;
	const jstr *s = jstr_new(&r->arena, buf, n);
	if (!s)
		return jr_nomem(r);
	*out = jv_str(s);
	return MOE_OK;
}

moe_err jr_call_global(jrender *r, jv *out, int fn, const jargs *a)
{
	switch (fn) {
	case JF_RANGE:
		return g_range(r, out, a);
	case JF_DICT:
		return g_dict(r, out, a, 0);
	case JF_NAMESPACE:
		return g_dict(r, out, a, 1);
	case JF_RAISE:
		return g_raise(r, a);
	case JF_STRFTIME:
		return g_strftime(r, out, a);
	default:
		return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: this global function");
	}
}
