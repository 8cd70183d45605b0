/* parser.c - expressions from tokens to the syntax tree by recursive
 * descent, as Jinja2's parser reads them (same precedence, tuples, slices,
 * calls, filters, tests), with names interned as symbols, filters and tests
 * resolved, and what the renderer refuses (unknown filters and tests,
 * unimplemented methods, *args) refused here with its line; the token
 * helpers that the statement parser shares. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

moe_err jp_push(jparser *p, jnvec *v, jnode *x)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 4;
		jnode **nv = ja_grow(p->a, v->v, v->n * sizeof(jnode *), cap * sizeof(jnode *));
		if (!nv)
			return ja_fail(p->a);
		v->v = nv;
		v->cap = cap;
	}
	v->v[v->n++] = x;
	return MOE_OK;
}

jtok *jp_cur(jparser *p)
{
	return &p->tk[p->i];
}

jtok *jp_peek(jparser *p)
{
	return p->i + 1 < p->n ? &p->tk[p->i + 1] : &p->tk[p->i];
}

void jp_next(jparser *p)
{
	if (p->tk[p->i].t != T_EOF)
		p->i++;
}

int jp_name(const jtok *t, const char *name)
{
	return t->t == T_NAME && t->n == strlen(name) && memcmp(t->p, name, t->n) == 0;
}

int jp_op(const jtok *t, const char *op)
{
	return t->t == T_OP && strcmp(t->opc, op) == 0;
}

/* Describes a token for messages, as Jinja2 does. */
const char *jp_describe(const jtok *t, char *buf, size_t n)
{
	switch (t->t) {
	case T_EOF:
		return "end of template";
	case T_DATA:
		return "template data / text";
	case T_VAR_BEGIN:
		return "begin of print statement";
	case T_VAR_END:
		return "end of print statement";
	case T_BLOCK_BEGIN:
		return "begin of statement block";
	case T_BLOCK_END:
		return "end of statement block";
	case T_NAME:
		snprintf(buf, n, "%.*s", (int)(t->n > 64 ? 64 : t->n), t->p);
		return buf;
	case T_STRING:
		return "string";
	case T_INT:
		return "integer";
	case T_FLOAT:
		return "float";
	default:
		snprintf(buf, n, "%s", t->opc);
		return buf;
	}
}

moe_err jp_err(jparser *p, uint32_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
moe_err jp_err(jparser *p, uint32_t line, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)p;
	return moe_fail(MOE_ERR_FORMAT, "line %u: %s", line, msg);
}

moe_err jp_unsup(uint32_t line, const char *what, const char *name, size_t n)
{
	return moe_fail(MOE_ERR_UNSUPPORTED, "line %u: unsupported %s '%.*s'", line, what,
	                (int)(n > 64 ? 64 : n), name);
}

moe_err jp_unexpected(jparser *p, const char *expected)
{
	char buf[80];
	jtok *t = jp_cur(p);
	if (t->t == T_EOF)
		return jp_err(p, t->line, "unexpected end of template, expected '%s'", expected);
	return jp_err(p, t->line, "expected token '%s', got '%s'", expected,
	              jp_describe(t, buf, sizeof(buf)));
}

moe_err jp_expect_op(jparser *p, const char *op)
{
	if (!jp_op(jp_cur(p), op))
		return jp_unexpected(p, op);
	jp_next(p);
	return MOE_OK;
}

moe_err jp_expect_type(jparser *p, int type, const char *what)
{
	if (jp_cur(p)->t != type)
		return jp_unexpected(p, what);
	jp_next(p);
	return MOE_OK;
}

moe_err jp_expect_name(jparser *p, const char *name)
{
	if (!jp_name(jp_cur(p), name))
		return jp_unexpected(p, name);
	jp_next(p);
	return MOE_OK;
}

jnode *jp_node(jparser *p, int kind, uint32_t line)
{
	jnode *x = ja_alloc(p->a, sizeof(*x));
	if (x) {
		memset(x, 0, sizeof(*x));
		x->k = (uint8_t)kind;
		x->line = line;
	}
	return x;
}

/* The symbol of a name, interned. */
moe_err jp_intern(jparser *p, int32_t *out, const char *s, size_t n)
{
	moe_jinja_tmpl *t = p->t;
	for (size_t i = 0; i < t->nsyms; i++)
		if (t->symnames[i]->len == n && memcmp(t->symnames[i]->s, s, n) == 0) {
			*out = (int32_t)i;
			return MOE_OK;
		}
	if (t->nsyms == p->symcap) {
		size_t cap = p->symcap ? p->symcap * 2 : 64;
		const jstr **v =
		    ja_grow(p->a, t->symnames, t->nsyms * sizeof(*v), cap * sizeof(*v));
		if (!v)
			return ja_fail(p->a);
		t->symnames = v;
		p->symcap = cap;
	}
	const jstr *js = jstr_new(p->a, s, n);
	if (!js)
		return ja_fail(p->a);
	t->symnames[t->nsyms] = js;
	*out = (int32_t)t->nsyms++;
	return MOE_OK;
}

static moe_err parse_unary(jparser *p, jnode **out, int with_filter);
static moe_err parse_postfix(jparser *p, jnode **node);
static moe_err parse_filter_expr(jparser *p, jnode **node);

moe_err jp_enter(jparser *p)
{
	if (++p->depth > JP_MAX_NEST)
		return moe_fail(MOE_ERR_UNSUPPORTED, "line %u: unsupported: nesting deeper than %d",
		                jp_cur(p)->line, JP_MAX_NEST);
	return MOE_OK;
}

/* ---- expressions ---- */

static moe_err parse_call_args(jparser *p, jnode *call)
{
	uint32_t line = jp_cur(p)->line;
	jnvec args = {0}, kwv = {0};
	const jstr **kw = NULL;
	size_t kwcap = 0;
	moe_err e = jp_expect_op(p, "(");
	int need_comma = 0;
	while (!e && !jp_op(jp_cur(p), ")")) {
		if (need_comma) {
			e = jp_expect_op(p, ",");
			if (e || jp_op(jp_cur(p), ")"))
				break;
		}
		if (jp_op(jp_cur(p), "*") || jp_op(jp_cur(p), "**"))
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "line %u: unsupported: *args / **kwargs in a call", line);
		jnode *x = NULL;
		if (jp_cur(p)->t == T_NAME && jp_op(jp_peek(p), "=")) {
			const jstr *name = jstr_new(p->a, jp_cur(p)->p, jp_cur(p)->n);
			if (!name)
				return ja_fail(p->a);
			jp_next(p);
			jp_next(p);
			e = jp_expression(p, &x, 1);
			if (e)
				return e;
			if (kwv.n == kwcap) {
				size_t cap = kwcap ? kwcap * 2 : 4;
				kw = ja_grow(p->a, kw, kwv.n * sizeof(*kw), cap * sizeof(*kw));
				if (!kw)
					return ja_fail(p->a);
				kwcap = cap;
			}
			kw[kwv.n] = name;
			e = jp_push(p, &kwv, x);
		} else {
			if (kwv.n)
				return jp_err(p, line,
				              "invalid syntax for function call expression");
			e = jp_expression(p, &x, 1);
			if (!e)
				e = jp_push(p, &args, x);
		}
		need_comma = 1;
	}
	if (!e)
		e = jp_expect_op(p, ")");
	call->kids = args.v;
	call->nk = args.n;
	call->kids2 = kwv.v;
	call->nk2 = kwv.n;
	call->kw = kw;
	return e;
}

/* Refuses at parse time the callables this renderer does not implement. */
static moe_err check_call(jparser *p, const jnode *call)
{
	const jnode *f = call->a;
	if (f->k == N_GETATTR && jmethod_refused(f->name->s, f->name->len))
		return jp_unsup(call->line, "method", f->name->s, f->name->len);
	if (f->k == N_NAME) {
		const jstr *nm = p->t->symnames[f->sym];
		if ((nm->len == 6 && memcmp(nm->s, "lipsum", 6) == 0) ||
		    (nm->len == 6 && memcmp(nm->s, "cycler", 6) == 0) ||
		    (nm->len == 6 && memcmp(nm->s, "joiner", 6) == 0))
			return jp_unsup(call->line, "function", nm->s, nm->len);
	}
	return MOE_OK;
}

static moe_err parse_call(jparser *p, jnode **node)
{
	jnode *c = jp_node(p, N_CALL, jp_cur(p)->line);
	if (!c)
		return ja_fail(p->a);
	c->a = *node;
	moe_err e = parse_call_args(p, c);
	if (!e)
		e = check_call(p, c);
	*node = c;
	return e;
}

static moe_err parse_subscribed(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	jnode *args[3] = {NULL, NULL, NULL};
	moe_err e;
	if (jp_op(jp_cur(p), ":")) {
		jp_next(p);
	} else {
		e = jp_expression(p, &args[0], 1);
		if (e)
			return e;
		if (!jp_op(jp_cur(p), ":")) {
			*out = args[0];
			return MOE_OK;
		}
		jp_next(p);
	}
	if (!jp_op(jp_cur(p), ":") && !jp_op(jp_cur(p), "]") && !jp_op(jp_cur(p), ",")) {
		e = jp_expression(p, &args[1], 1);
		if (e)
			return e;
	}
	if (jp_op(jp_cur(p), ":")) {
		jp_next(p);
		if (!jp_op(jp_cur(p), "]") && !jp_op(jp_cur(p), ",")) {
			e = jp_expression(p, &args[2], 1);
			if (e)
				return e;
		}
	}
	jnode *s = jp_node(p, N_SLICE, line);
	if (!s)
		return ja_fail(p->a);
	s->a = args[0];
	s->b = args[1];
	s->c = args[2];
	*out = s;
	return MOE_OK;
}

static moe_err parse_subscript(jparser *p, jnode **node)
{
	jtok *t = jp_cur(p);
	uint32_t line = t->line;
	moe_err e;
	if (jp_op(t, ".")) {
		jp_next(p);
		jtok *at = jp_cur(p);
		if (at->t == T_NAME) {
			jnode *g = jp_node(p, N_GETATTR, line);
			if (!g)
				return ja_fail(p->a);
			g->a = *node;
			g->name = jstr_new(p->a, at->p, at->n);
			if (!g->name)
				return ja_fail(p->a);
			jp_next(p);
			*node = g;
			return MOE_OK;
		}
		if (at->t != T_INT)
			return jp_err(p, at->line, "expected name or number");
		jnode *c = jp_node(p, N_CONST, at->line), *g = jp_node(p, N_GETITEM, line);
		if (!c || !g)
			return ja_fail(p->a);
		c->cv = jv_int(at->i);
		g->a = *node;
		g->b = c;
		jp_next(p);
		*node = g;
		return MOE_OK;
	}
	/* '[' */
	jp_next(p);
	jnvec args = {0};
	while (!jp_op(jp_cur(p), "]")) {
		if (args.n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
		}
		jnode *x = NULL;
		e = parse_subscribed(p, &x);
		if (!e)
			e = jp_push(p, &args, x);
		if (e)
			return e;
	}
	e = jp_expect_op(p, "]");
	if (e)
		return e;
	jnode *g = jp_node(p, N_GETITEM, line);
	if (!g)
		return ja_fail(p->a);
	g->a = *node;
	if (args.n == 1) {
		g->b = args.v[0];
	} else {
		jnode *tup = jp_node(p, N_TUPLE, line);
		if (!tup)
			return ja_fail(p->a);
		tup->kids = args.v;
		tup->nk = args.n;
		g->b = tup;
	}
	*node = g;
	return MOE_OK;
}

static moe_err parse_postfix(jparser *p, jnode **node)
{
	for (;;) {
		moe_err e;
		if (jp_op(jp_cur(p), ".") || jp_op(jp_cur(p), "["))
			e = parse_subscript(p, node);
		else if (jp_op(jp_cur(p), "("))
			e = parse_call(p, node);
		else
			return MOE_OK;
		if (e)
			return e;
	}
}

/* Constant string argument i of a filter call, if it is one. */
static const jstr *const_arg(const jnode *f, size_t i)
{
	if (i < f->nk && f->kids[i]->k == N_CONST && f->kids[i]->cv.t == JV_STR)
		return f->kids[i]->cv.s;
	return NULL;
}

static int has_kw(const jnode *f, const char *name)
{
	for (size_t i = 0; i < f->nk2; i++)
		if (strcmp(f->kw[i]->s, name) == 0)
			return 1;
	return 0;
}

/* map('filter'), select('test'), selectattr('x', 'test'): the names given as
 * constants must exist. */
static moe_err check_filter_names(const jnode *f)
{
	const char *fn = f->name->s;
	const jstr *s;
	if (strcmp(fn, "map") == 0 && !has_kw(f, "attribute") && (s = const_arg(f, 0)) &&
	    jfilter_find(s->s, s->len) < 0)
		return jp_unsup(f->line, "filter", s->s, s->len);
	if ((strcmp(fn, "select") == 0 || strcmp(fn, "reject") == 0) && (s = const_arg(f, 0)) &&
	    jtest_find(s->s, s->len) < 0)
		return jp_unsup(f->line, "test", s->s, s->len);
	if ((strcmp(fn, "selectattr") == 0 || strcmp(fn, "rejectattr") == 0) &&
	    (s = const_arg(f, 1)) && jtest_find(s->s, s->len) < 0)
		return jp_unsup(f->line, "test", s->s, s->len);
	return MOE_OK;
}

moe_err jp_filter(jparser *p, jnode **node, int start_inline)
{
	while (jp_op(jp_cur(p), "|") || start_inline) {
		if (!start_inline)
			jp_next(p);
		start_inline = 0;
		jtok *t = jp_cur(p);
		if (t->t != T_NAME)
			return jp_unexpected(p, "name");
		if (jp_op(jp_peek(p), "."))
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "line %u: unsupported: dotted filter name", t->line);
		int fi = jfilter_find(t->p, t->n);
		if (fi < 0)
			return jp_unsup(t->line, "filter", t->p, t->n);
		jnode *f = jp_node(p, N_FILTER, t->line);
		if (!f)
			return ja_fail(p->a);
		f->a = *node;
		f->fn = (uint16_t)fi;
		f->name = jstr_new(p->a, t->p, t->n);
		if (!f->name)
			return ja_fail(p->a);
		jp_next(p);
		if (jp_op(jp_cur(p), "(")) {
			moe_err e = parse_call_args(p, f);
			if (!e)
				e = check_filter_names(f);
			if (e)
				return e;
		}
		*node = f;
	}
	return MOE_OK;
}

static moe_err parse_test(jparser *p, jnode **node)
{
	uint32_t line = jp_cur(p)->line;
	jp_next(p); /* is */
	int negated = 0;
	if (jp_name(jp_cur(p), "not")) {
		jp_next(p);
		negated = 1;
	}
	jtok *t = jp_cur(p);
	if (t->t != T_NAME)
		return jp_unexpected(p, "name");
	if (jp_op(jp_peek(p), "."))
		return moe_fail(MOE_ERR_UNSUPPORTED, "line %u: unsupported: dotted test name",
		                t->line);
	int ti = jtest_find(t->p, t->n);
	if (ti < 0)
		return jp_unsup(t->line, "test", t->p, t->n);
	jnode *x = jp_node(p, N_TEST, line);
	if (!x)
		return ja_fail(p->a);
	x->a = *node;
	x->fn = (uint16_t)ti;
	x->op = (uint8_t)negated;
	x->name = jstr_new(p->a, t->p, t->n);
	if (!x->name)
		return ja_fail(p->a);
	jp_next(p);
	moe_err e = MOE_OK;
	jtok *c = jp_cur(p);
	if (jp_op(c, "(")) {
		e = parse_call_args(p, x);
	} else if ((c->t == T_NAME || c->t == T_STRING || c->t == T_INT || c->t == T_FLOAT ||
	            jp_op(c, "[") || jp_op(c, "{")) &&
	           !jp_name(c, "else") && !jp_name(c, "or") && !jp_name(c, "and")) {
		if (jp_name(c, "is"))
			return jp_err(p, c->line, "You cannot chain multiple tests with is");
		jnode *arg = NULL;
		e = jp_primary(p, &arg);
		if (!e)
			e = parse_postfix(p, &arg);
		if (!e) {
			x->kids = ja_alloc(p->a, sizeof(jnode *));
			if (!x->kids)
				return ja_fail(p->a);
			x->kids[0] = arg;
			x->nk = 1;
		}
	}
	*node = x;
	return e;
}

static moe_err parse_filter_expr(jparser *p, jnode **node)
{
	for (;;) {
		moe_err e;
		if (jp_op(jp_cur(p), "|"))
			e = jp_filter(p, node, 0);
		else if (jp_name(jp_cur(p), "is"))
			e = parse_test(p, node);
		else if (jp_op(jp_cur(p), "("))
			e = parse_call(p, node);
		else
			return MOE_OK;
		if (e)
			return e;
	}
}

static moe_err parse_list(jparser *p, jnode **out)
{
	jnode *l = jp_node(p, N_LIST, jp_cur(p)->line);
	if (!l)
		return ja_fail(p->a);
	jp_next(p);
	jnvec items = {0};
	moe_err e = MOE_OK;
	while (!jp_op(jp_cur(p), "]")) {
		if (items.n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
			if (jp_op(jp_cur(p), "]"))
				break;
		}
		jnode *x = NULL;
		e = jp_expression(p, &x, 1);
		if (!e)
			e = jp_push(p, &items, x);
		if (e)
			return e;
	}
	jp_next(p);
	l->kids = items.v;
	l->nk = items.n;
	*out = l;
	return MOE_OK;
}

static moe_err parse_dict(jparser *p, jnode **out)
{
	jnode *d = jp_node(p, N_DICT, jp_cur(p)->line);
	if (!d)
		return ja_fail(p->a);
	jp_next(p);
	jnvec keys = {0}, vals = {0};
	moe_err e = MOE_OK;
	while (!jp_op(jp_cur(p), "}")) {
		if (keys.n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
			if (jp_op(jp_cur(p), "}"))
				break;
		}
		jnode *k = NULL, *v = NULL;
		e = jp_expression(p, &k, 1);
		if (!e)
			e = jp_expect_op(p, ":");
		if (!e)
			e = jp_expression(p, &v, 1);
		if (!e)
			e = jp_push(p, &keys, k);
		if (!e)
			e = jp_push(p, &vals, v);
		if (e)
			return e;
	}
	jp_next(p);
	d->kids = keys.v;
	d->nk = keys.n;
	d->kids2 = vals.v;
	d->nk2 = vals.n;
	*out = d;
	return MOE_OK;
}

moe_err jp_primary(jparser *p, jnode **out)
{
	jtok *t = jp_cur(p);
	jnode *x = NULL;
	moe_err e;
	char buf[80];
	switch (t->t) {
	case T_NAME:
		x = jp_node(p, N_CONST, t->line);
		if (!x)
			return ja_fail(p->a);
		if (jp_name(t, "true") || jp_name(t, "True")) {
			x->cv = jv_bool(1);
		} else if (jp_name(t, "false") || jp_name(t, "False")) {
			x->cv = jv_bool(0);
		} else if (jp_name(t, "none") || jp_name(t, "None")) {
			x->cv = jv_make(JV_NONE);
		} else {
			x->k = N_NAME;
			e = jp_intern(p, &x->sym, t->p, t->n);
			if (e)
				return e;
			/* caller, varargs, kwargs make the enclosing macros take them */
			int flag = x->sym == p->t->sym_caller    ? MF_CALLER
			           : x->sym == p->t->sym_varargs ? MF_VARARGS
			           : x->sym == p->t->sym_kwargs  ? MF_KWARGS
			                                         : 0;
			for (size_t i = 0; i < p->nmacros; i++)
				p->macros[i]->op |= (uint8_t)flag;
		}
		jp_next(p);
		*out = x;
		return MOE_OK;
	case T_STRING: {
		x = jp_node(p, N_CONST, t->line);
		if (!x)
			return ja_fail(p->a);
		const jstr *s = t->str;
		jp_next(p);
		while (jp_cur(p)->t == T_STRING) {
			const jstr *s2 = jp_cur(p)->str;
			jstr *cat = ja_alloc(p->a, sizeof(jstr) + s->len + s2->len + 1);
			if (!cat)
				return ja_fail(p->a);
			cat->len = s->len + s2->len;
			cat->ncp = s->ncp + s2->ncp;
			memcpy(cat->s, s->s, s->len);
			memcpy(cat->s + s->len, s2->s, s2->len);
			cat->s[cat->len] = 0;
			s = cat;
			jp_next(p);
		}
		x->cv = jv_str(s);
		*out = x;
		return MOE_OK;
	}
	case T_INT:
	case T_FLOAT:
		x = jp_node(p, N_CONST, t->line);
		if (!x)
			return ja_fail(p->a);
		x->cv = t->t == T_INT ? jv_int(t->i) : jv_float(t->f);
		jp_next(p);
		*out = x;
		return MOE_OK;
	default:
		break;
	}
	if (jp_op(t, "(")) {
		jp_next(p);
		e = jp_tuple(p, out, 0, 1, 1);
		return e ? e : jp_expect_op(p, ")");
	}
	if (jp_op(t, "["))
		return parse_list(p, out);
	if (jp_op(t, "{"))
		return parse_dict(p, out);
	if (t->t == T_EOF)
		return jp_err(p, t->line, "unexpected end of template");
	return jp_err(p, t->line, "unexpected '%s'", jp_describe(t, buf, sizeof(buf)));
}

static moe_err parse_unary(jparser *p, jnode **out, int with_filter)
{
	moe_err e = jp_enter(p);
	if (e)
		return e;
	jtok *t = jp_cur(p);
	if (jp_op(t, "-") || jp_op(t, "+")) {
		jnode *x = jp_node(p, jp_op(t, "-") ? N_NEG : N_POS, t->line);
		if (!x)
			return ja_fail(p->a);
		jp_next(p);
		e = parse_unary(p, &x->a, 0);
		*out = x;
	} else {
		e = jp_primary(p, out);
	}
	if (!e)
		e = parse_postfix(p, out);
	if (!e && with_filter)
		e = parse_filter_expr(p, out);
	p->depth--;
	return e;
}

static moe_err binop(jparser *p, jnode **left, int kind, int op, uint32_t line, jnode *right)
{
	jnode *x = jp_node(p, kind, line);
	if (!x)
		return ja_fail(p->a);
	x->op = (uint8_t)op;
	x->a = *left;
	x->b = right;
	*left = x;
	return MOE_OK;
}

static moe_err parse_pow(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	moe_err e = parse_unary(p, out, 1);
	while (!e && jp_op(jp_cur(p), "**")) {
		jp_next(p);
		jnode *r = NULL;
		e = parse_unary(p, &r, 1);
		if (!e)
			e = binop(p, out, N_BINOP, OP_POW, line, r);
		line = jp_cur(p)->line;
	}
	return e;
}

static moe_err parse_math2(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	moe_err e = parse_pow(p, out);
	for (;;) {
		jtok *t = jp_cur(p);
		int op = jp_op(t, "*")    ? OP_MUL
		         : jp_op(t, "/")  ? OP_DIV
		         : jp_op(t, "//") ? OP_FLOORDIV
		         : jp_op(t, "%")  ? OP_MOD
		                          : -1;
		if (e || op < 0)
			return e;
		jp_next(p);
		jnode *r = NULL;
		e = parse_pow(p, &r);
		if (!e)
			e = binop(p, out, N_BINOP, op, line, r);
		line = jp_cur(p)->line;
	}
}

static moe_err parse_concat(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	moe_err e = parse_math2(p, out);
	if (e || !jp_op(jp_cur(p), "~"))
		return e;
	jnvec args = {0};
	e = jp_push(p, &args, *out);
	while (!e && jp_op(jp_cur(p), "~")) {
		jp_next(p);
		jnode *r = NULL;
		e = parse_math2(p, &r);
		if (!e)
			e = jp_push(p, &args, r);
	}
	if (e)
		return e;
	jnode *x = jp_node(p, N_CONCAT, line);
	if (!x)
		return ja_fail(p->a);
	x->kids = args.v;
	x->nk = args.n;
	*out = x;
	return MOE_OK;
}

static moe_err parse_math1(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	moe_err e = parse_concat(p, out);
	for (;;) {
		jtok *t = jp_cur(p);
		int op = jp_op(t, "+") ? OP_ADD : jp_op(t, "-") ? OP_SUB : -1;
		if (e || op < 0)
			return e;
		jp_next(p);
		jnode *r = NULL;
		e = parse_concat(p, &r);
		if (!e)
			e = binop(p, out, N_BINOP, op, line, r);
		line = jp_cur(p)->line;
	}
}

static moe_err parse_compare(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	jnode *first = NULL;
	moe_err e = parse_math1(p, &first);
	if (e)
		return e;
	jnvec operands = {0};
	uint8_t *ops = NULL;
	for (;;) {
		jtok *t = jp_cur(p);
		int op = jp_op(t, "==")   ? OP_EQ
		         : jp_op(t, "!=") ? OP_NE
		         : jp_op(t, "<")  ? OP_LT
		         : jp_op(t, "<=") ? OP_LE
		         : jp_op(t, ">")  ? OP_GT
		         : jp_op(t, ">=") ? OP_GE
		                          : -1;
		if (op >= 0) {
			jp_next(p);
		} else if (jp_name(t, "in")) {
			jp_next(p);
			op = OP_IN;
		} else if (jp_name(t, "not") && jp_name(jp_peek(p), "in")) {
			jp_next(p);
			jp_next(p);
			op = OP_NOTIN;
		} else {
			break;
		}
		jnode *r = NULL;
		e = parse_math1(p, &r);
		if (!e)
			e = jp_push(p, &operands, r);
		if (e)
			return e;
		uint8_t *nops = ja_grow(p->a, ops, operands.n - 1, operands.n);
		if (!nops)
			return ja_fail(p->a);
		ops = nops;
		ops[operands.n - 1] = (uint8_t)op;
		line = jp_cur(p)->line;
	}
	if (!operands.n) {
		*out = first;
		return MOE_OK;
	}
	jnode *x = jp_node(p, N_COMPARE, line);
	if (!x)
		return ja_fail(p->a);
	x->a = first;
	x->kids = operands.v;
	x->nk = operands.n;
	x->ops = ops;
	*out = x;
	return MOE_OK;
}

static moe_err parse_not(jparser *p, jnode **out)
{
	if (!jp_name(jp_cur(p), "not"))
		return parse_compare(p, out);
	moe_err e = jp_enter(p);
	if (e)
		return e;
	jnode *x = jp_node(p, N_NOT, jp_cur(p)->line);
	if (!x)
		return ja_fail(p->a);
	jp_next(p);
	e = parse_not(p, &x->a);
	*out = x;
	p->depth--;
	return e;
}

/* A left-associative chain `sub (word sub)*` of node kind k: `and` over
 * `not`, `or` over `and`. */
static moe_err parse_chain(jparser *p, jnode **out, moe_err (*sub)(jparser *, jnode **),
                           const char *word, int k)
{
	uint32_t line = jp_cur(p)->line;
	moe_err e = sub(p, out);
	while (!e && jp_name(jp_cur(p), word)) {
		jp_next(p);
		jnode *r = NULL;
		e = sub(p, &r);
		if (!e)
			e = binop(p, out, k, 0, line, r);
		line = jp_cur(p)->line;
	}
	return e;
}

static moe_err parse_and(jparser *p, jnode **out)
{
	return parse_chain(p, out, parse_not, "and", N_AND);
}

static moe_err parse_or(jparser *p, jnode **out)
{
	return parse_chain(p, out, parse_and, "or", N_OR);
}

static moe_err parse_condexpr(jparser *p, jnode **out)
{
	moe_err e = jp_enter(p);
	if (e)
		return e;
	uint32_t line = jp_cur(p)->line;
	e = parse_or(p, out);
	while (!e && jp_name(jp_cur(p), "if")) {
		jp_next(p);
		jnode *x = jp_node(p, N_COND, line);
		if (!x)
			return ja_fail(p->a);
		x->a = *out;
		e = parse_or(p, &x->b);
		if (!e && jp_name(jp_cur(p), "else")) {
			jp_next(p);
			e = parse_condexpr(p, &x->c);
		}
		*out = x;
		line = jp_cur(p)->line;
	}
	p->depth--;
	return e;
}

moe_err jp_expression(jparser *p, jnode **out, int with_condexpr)
{
	return with_condexpr ? parse_condexpr(p, out) : parse_or(p, out);
}

/* The end of a tuple.  Jinja2 also means to end one at an extra name ('in'
 * after a for loop's targets) but its test never matches (it passes the
 * rules as one argument), so "for a, in x" fails there: it fails here too. */
static int tuple_end(jparser *p)
{
	jtok *t = jp_cur(p);
	return t->t == T_VAR_END || t->t == T_BLOCK_END || jp_op(t, ")");
}

moe_err jp_tuple(jparser *p, jnode **out, int simplified, int with_condexpr, int explicit_parens)
{
	uint32_t line = jp_cur(p)->line;
	jnvec args = {0};
	int is_tuple = 0;
	moe_err e;
	char buf[80];
	for (;;) {
		if (args.n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
		}
		if (tuple_end(p))
			break;
		jnode *x = NULL;
		e = simplified ? jp_primary(p, &x) : jp_expression(p, &x, with_condexpr);
		if (!e)
			e = jp_push(p, &args, x);
		if (e)
			return e;
		if (jp_op(jp_cur(p), ","))
			is_tuple = 1;
		else
			break;
		line = jp_cur(p)->line;
	}
	if (!is_tuple) {
		if (args.n) {
			*out = args.v[0];
			return MOE_OK;
		}
		if (!explicit_parens)
			return jp_err(p, jp_cur(p)->line, "Expected an expression, got '%s'",
			              jp_describe(jp_cur(p), buf, sizeof(buf)));
	}
	jnode *x = jp_node(p, N_TUPLE, line);
	if (!x)
		return ja_fail(p->a);
	x->kids = args.v;
	x->nk = args.n;
	*out = x;
	return MOE_OK;
}
