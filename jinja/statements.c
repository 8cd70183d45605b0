/* statements.c - the statements of a template (for, if, set, macro, call,
 * filter, with, print, break, continue) parsed into the syntax tree, the
 * template body, and moe_jinja_parse / moe_jinja_free; break and continue
 * outside a loop, and the tags this renderer refuses (include, extends,
 * block, import, autoescape, recursive loops), fail here with their line. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- statements ---- */

/* The names of an assignment target (a name or a tuple of names). */
static moe_err target_syms(jparser *p, jnode *stmt, const jnode *target)
{
	if (target->k == N_NAME) {
		stmt->syms = ja_alloc(p->a, sizeof(int32_t));
		if (!stmt->syms)
			return ja_fail(p->a);
		stmt->syms[0] = target->sym;
		stmt->nsyms = 1;
		return MOE_OK;
	}
	if (target->k == N_TUPLE) {
		stmt->syms = ja_alloc(p->a, (target->nk ? target->nk : 1) * sizeof(int32_t));
		if (!stmt->syms)
			return ja_fail(p->a);
		for (size_t i = 0; i < target->nk; i++) {
			if (target->kids[i]->k != N_NAME)
				return moe_fail(MOE_ERR_UNSUPPORTED,
				                "line %u: unsupported assignment target",
				                target->line);
			stmt->syms[i] = target->kids[i]->sym;
		}
		stmt->nsyms = target->nk;
		stmt->op = 1; /* unpack */
		return MOE_OK;
	}
	return jp_err(p, target->line, "can't assign to '%s'",
	              target->k == N_CONST ? "const" : "expression");
}

/* Body up to one of the end tags; the end tag's name stays current. */
static moe_err parse_statements(jparser *p, jnvec *body, const char *const *end, size_t nend,
                                int drop)
{
	if (jp_op(jp_cur(p), ":"))
		jp_next(p);
	moe_err e = jp_expect_type(p, T_BLOCK_END, "end of statement block");
	if (!e)
		e = jp_subparse(p, body, end, nend);
	if (!e && jp_cur(p)->t == T_EOF)
		return jp_err(p, jp_cur(p)->line,
		              "Unexpected end of template. Jinja was looking "
		              "for the following tags: '%s'.",
		              end[0]);
	if (!e && drop)
		jp_next(p);
	return e;
}

static moe_err parse_signature(jparser *p, jnode *m)
{
	jnvec defaults = {0};
	int32_t *syms = NULL;
	size_t n = 0;
	moe_err e = jp_expect_op(p, "(");
	while (!e && !jp_op(jp_cur(p), ")")) {
		if (n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
		}
		jtok *t = jp_cur(p);
		if (t->t != T_NAME)
			return jp_unexpected(p, "name");
		int32_t *ns = ja_grow(p->a, syms, n * sizeof(int32_t), (n + 1) * sizeof(int32_t));
		if (!ns)
			return ja_fail(p->a);
		syms = ns;
		e = jp_intern(p, &syms[n], t->p, t->n);
		if (e)
			return e;
		n++;
		jp_next(p);
		if (jp_op(jp_cur(p), "=")) {
			jp_next(p);
			jnode *d = NULL;
			e = jp_expression(p, &d, 1);
			if (!e)
				e = jp_push(p, &defaults, d);
		} else if (defaults.n) {
			return jp_err(p, t->line, "non-default argument follows default argument");
		}
	}
	if (!e)
		e = jp_expect_op(p, ")");
	m->syms = syms;
	m->nsyms = n;
	m->kids2 = defaults.v;
	m->nk2 = defaults.n;
	return e;
}

/* Parses a macro or call block body with its own loop context. */
static moe_err macro_body(jparser *p, jnode *m, const char *end)
{
	unsigned loops = p->loops;
	p->loops = 0;
	if (p->nmacros == JP_MAX_NEST)
		return moe_fail(MOE_ERR_UNSUPPORTED, "line %u: macros nest too deep", m->line);
	p->macros[p->nmacros++] = m;
	jnvec body = {0};
	moe_err e = parse_statements(p, &body, &end, 1, 1);
	p->nmacros--;
	p->loops = loops;
	m->kids = body.v;
	m->nk = body.n;
	return e;
}

static moe_err parse_for(jparser *p, jnode **out)
{
	jnode *f = jp_node(p, N_FOR, jp_cur(p)->line);
	if (!f)
		return ja_fail(p->a);
	jp_next(p);
	jnode *target = NULL;
	moe_err e = jp_tuple(p, &target, 1, 1, 0);
	if (!e)
		e = target_syms(p, f, target);
	if (!e)
		e = jp_expect_name(p, "in");
	if (!e)
		e = jp_tuple(p, &f->a, 0, 0, 0);
	if (!e && jp_name(jp_cur(p), "if")) {
		jp_next(p);
		e = jp_expression(p, &f->b, 1);
	}
	if (e)
		return e;
	if (jp_name(jp_cur(p), "recursive"))
		return moe_fail(MOE_ERR_UNSUPPORTED, "line %u: unsupported: recursive for loops",
		                f->line);
	static const char *const end1[] = {"endfor", "else"};
	static const char *const end2[] = {"endfor"};
	jnvec body = {0}, els = {0};
	p->loops++;
	e = parse_statements(p, &body, end1, 2, 0);
	p->loops--;
	if (e)
		return e;
	if (jp_name(jp_cur(p), "else")) {
		jp_next(p);
		e = parse_statements(p, &els, end2, 1, 1);
	} else {
		jp_next(p);
	}
	f->kids = body.v;
	f->nk = body.n;
	f->kids2 = els.v;
	f->nk2 = els.n;
	*out = f;
	return e;
}

static moe_err parse_if(jparser *p, jnode **out)
{
	static const char *const end1[] = {"elif", "else", "endif"};
	static const char *const end2[] = {"endif"};
	jnode *first = NULL, **link = &first;
	moe_err e;
	jp_next(p); /* if */
	for (;;) {
		jnode *br = jp_node(p, N_IF, jp_cur(p)->line);
		if (!br)
			return ja_fail(p->a);
		e = jp_tuple(p, &br->a, 0, 0, 0);
		jnvec body = {0};
		if (!e)
			e = parse_statements(p, &body, end1, 3, 0);
		if (e)
			return e;
		br->kids = body.v;
		br->nk = body.n;
		*link = br;
		link = &br->b;
		if (jp_name(jp_cur(p), "elif")) {
			jp_next(p);
			continue;
		}
		if (jp_name(jp_cur(p), "else")) {
			jp_next(p);
			jnode *el = jp_node(p, N_IF, jp_cur(p)->line);
			if (!el)
				return ja_fail(p->a);
			jnvec els = {0};
			e = parse_statements(p, &els, end2, 1, 1);
			el->kids = els.v;
			el->nk = els.n;
			*link = el;
		} else {
			jp_next(p); /* endif */
		}
		break;
	}
	*out = first;
	return e;
}

static moe_err parse_set(jparser *p, jnode **out)
{
	uint32_t line = jp_cur(p)->line;
	jp_next(p);
	jnode *s = jp_node(p, N_SET, line);
	if (!s)
		return ja_fail(p->a);
	moe_err e;
	if (jp_cur(p)->t == T_NAME && jp_op(jp_peek(p), ".")) {
		e = jp_intern(p, &s->sym, jp_cur(p)->p, jp_cur(p)->n);
		if (e)
			return e;
		jp_next(p);
		jp_next(p);
		if (jp_cur(p)->t != T_NAME)
			return jp_unexpected(p, "name");
		s->name = jstr_new(p->a, jp_cur(p)->p, jp_cur(p)->n);
		if (!s->name)
			return ja_fail(p->a);
		jp_next(p);
		s->k = N_SETNS;
	} else {
		jnode *target = NULL;
		e = jp_tuple(p, &target, 1, 1, 0);
		if (!e)
			e = target_syms(p, s, target);
		if (e)
			return e;
	}
	*out = s;
	if (jp_op(jp_cur(p), "=")) {
		jp_next(p);
		return jp_tuple(p, &s->a, 0, 1, 0);
	}
	/* a block set: {% set x | filter %}...{% endset %} */
	jnode *blk = jp_node(p, N_SETBLOCK, line);
	if (!blk)
		return ja_fail(p->a);
	blk->b = s;
	e = jp_filter(p, &blk->a, 0);
	static const char *const end[] = {"endset"};
	jnvec body = {0};
	if (!e)
		e = parse_statements(p, &body, end, 1, 1);
	blk->kids = body.v;
	blk->nk = body.n;
	*out = blk;
	return e;
}

static moe_err parse_macro(jparser *p, jnode **out)
{
	jnode *m = jp_node(p, N_MACRO, jp_cur(p)->line);
	if (!m)
		return ja_fail(p->a);
	jp_next(p);
	jtok *t = jp_cur(p);
	if (t->t != T_NAME)
		return jp_unexpected(p, "name");
	moe_err e = jp_intern(p, &m->sym, t->p, t->n);
	if (e)
		return e;
	m->name = p->t->symnames[m->sym];
	jp_next(p);
	e = parse_signature(p, m);
	if (!e)
		e = macro_body(p, m, "endmacro");
	*out = m;
	return e;
}

static moe_err parse_call_block(jparser *p, jnode **out)
{
	jnode *c = jp_node(p, N_CALLBLOCK, jp_cur(p)->line);
	if (!c)
		return ja_fail(p->a);
	jp_next(p);
	moe_err e = MOE_OK;
	if (jp_op(jp_cur(p), "("))
		e = parse_signature(p, c);
	if (!e)
		e = jp_expression(p, &c->a, 1);
	if (e)
		return e;
	if (c->a->k != N_CALL)
		return jp_err(p, c->line, "expected call");
	e = macro_body(p, c, "endcall");
	*out = c;
	return e;
}

static moe_err parse_filter_block(jparser *p, jnode **out)
{
	jnode *f = jp_node(p, N_FILTERBLOCK, jp_cur(p)->line);
	if (!f)
		return ja_fail(p->a);
	jp_next(p);
	moe_err e = jp_filter(p, &f->a, 1);
	static const char *const end[] = {"endfilter"};
	jnvec body = {0};
	if (!e)
		e = parse_statements(p, &body, end, 1, 1);
	f->kids = body.v;
	f->nk = body.n;
	*out = f;
	return e;
}

static moe_err parse_with(jparser *p, jnode **out)
{
	jnode *w = jp_node(p, N_WITH, jp_cur(p)->line);
	if (!w)
		return ja_fail(p->a);
	jp_next(p);
	jnvec vals = {0};
	int32_t *syms = NULL;
	size_t n = 0;
	moe_err e = MOE_OK;
	while (jp_cur(p)->t != T_BLOCK_END) {
		if (n) {
			e = jp_expect_op(p, ",");
			if (e)
				return e;
		}
		jtok *t = jp_cur(p);
		if (t->t != T_NAME)
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "line %u: unsupported: with target other than a name",
			                t->line);
		int32_t *ns = ja_grow(p->a, syms, n * sizeof(int32_t), (n + 1) * sizeof(int32_t));
		if (!ns)
			return ja_fail(p->a);
		syms = ns;
		e = jp_intern(p, &syms[n++], t->p, t->n);
		if (!e) {
			jp_next(p);
			e = jp_expect_op(p, "=");
		}
		jnode *v = NULL;
		if (!e)
			e = jp_expression(p, &v, 1);
		if (!e)
			e = jp_push(p, &vals, v);
		if (e)
			return e;
	}
	w->syms = syms;
	w->nsyms = n;
	w->kids2 = vals.v;
	w->nk2 = vals.n;
	static const char *const end[] = {"endwith"};
	jnvec body = {0};
	e = parse_statements(p, &body, end, 1, 1);
	w->kids = body.v;
	w->nk = body.n;
	*out = w;
	return e;
}

/* One statement (after '{%'); may append several nodes (print). */
static moe_err parse_statement(jparser *p, jnvec *body)
{
	jtok *t = jp_cur(p);
	jnode *x = NULL;
	moe_err e;
	char buf[80];
	if (t->t != T_NAME)
		return jp_err(p, t->line, "tag name expected");
	if (jp_name(t, "for"))
		e = parse_for(p, &x);
	else if (jp_name(t, "if"))
		e = parse_if(p, &x);
	else if (jp_name(t, "set"))
		e = parse_set(p, &x);
	else if (jp_name(t, "macro"))
		e = parse_macro(p, &x);
	else if (jp_name(t, "call"))
		e = parse_call_block(p, &x);
	else if (jp_name(t, "filter"))
		e = parse_filter_block(p, &x);
	else if (jp_name(t, "with"))
		e = parse_with(p, &x);
	else if (jp_name(t, "break") || jp_name(t, "continue")) {
		if (!p->loops)
			return jp_err(p, t->line, "'%s' outside loop",
			              jp_describe(t, buf, sizeof(buf)));
		x = jp_node(p, jp_name(t, "break") ? N_BREAK : N_CONTINUE, t->line);
		if (!x)
			return ja_fail(p->a);
		jp_next(p);
		e = MOE_OK;
	} else if (jp_name(t, "print")) {
		jp_next(p);
		e = MOE_OK;
		size_t n0 = body->n;
		while (!e && jp_cur(p)->t != T_BLOCK_END) {
			if (body->n > n0) {
				e = jp_expect_op(p, ",");
				if (e)
					return e;
			}
			jnode *o = jp_node(p, N_OUTPUT, t->line);
			if (!o)
				return ja_fail(p->a);
			e = jp_expression(p, &o->a, 1);
			if (!e)
				e = jp_push(p, body, o);
		}
		return e;
	} else if (jp_name(t, "block") || jp_name(t, "extends") || jp_name(t, "include") ||
	           jp_name(t, "import") || jp_name(t, "from") || jp_name(t, "autoescape"))
		return jp_unsup(t->line, "tag", t->p, t->n);
	else
		return jp_err(p, t->line, "Encountered unknown tag '%s'.",
		              jp_describe(t, buf, sizeof(buf)));
	if (!e)
		e = jp_push(p, body, x);
	return e;
}

moe_err jp_subparse(jparser *p, jnvec *body, const char *const *end, size_t nend)
{
	moe_err e = jp_enter(p);
	while (!e) {
		jtok *t = jp_cur(p);
		if (t->t == T_EOF)
			break;
		if (t->t == T_DATA) {
			jnode *d = jp_node(p, N_DATA, t->line);
			if (!d)
				return ja_fail(p->a);
			d->cv = jv_str(t->str);
			jp_next(p);
			e = jp_push(p, body, d);
		} else if (t->t == T_VAR_BEGIN) {
			jp_next(p);
			jnode *o = jp_node(p, N_OUTPUT, t->line);
			if (!o)
				return ja_fail(p->a);
			e = jp_tuple(p, &o->a, 0, 1, 0);
			if (!e)
				e = jp_expect_type(p, T_VAR_END, "end of print statement");
			if (!e)
				e = jp_push(p, body, o);
		} else if (t->t == T_BLOCK_BEGIN) {
			jp_next(p);
			for (size_t i = 0; i < nend; i++)
				if (jp_name(jp_cur(p), end[i])) {
					p->depth--;
					return MOE_OK;
				}
			e = parse_statement(p, body);
			if (!e)
				e = jp_expect_type(p, T_BLOCK_END, "end of statement block");
		} else {
			char buf[80];
			return jp_err(p, t->line, "unexpected '%s'",
			              jp_describe(t, buf, sizeof(buf)));
		}
	}
	p->depth--;
	return e;
}

moe_err moe_jinja_parse(moe_jinja_tmpl **out, const char *text, size_t len)
{
	moe_err e;
	jtoks toks = {0};
	*out = NULL;
	if (!text && len)
		return moe_fail(MOE_ERR_INVAL, "moe_jinja_parse: NULL text");
	moe_jinja_tmpl *t = calloc(1, sizeof(*t));
	if (!t)
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	jparser p = {.t = t, .a = &t->arena};
	/* the special names first, so that their symbols are known */
	e = jp_intern(&p, &t->sym_loop, "loop", 4);
	if (!e)
		e = jp_intern(&p, &t->sym_caller, "caller", 6);
	if (!e)
		e = jp_intern(&p, &t->sym_varargs, "varargs", 7);
	if (!e)
		e = jp_intern(&p, &t->sym_kwargs, "kwargs", 6);
	if (e)
		goto free_tmpl;
	e = jlex(&toks, &t->arena, text ? text : "", len);
	if (e)
		goto free_tmpl;
	p.tk = toks.v;
	p.n = toks.n;
	t->root = jp_node(&p, N_OUTPUT, 1);
	if (!t->root) {
		e = ja_fail(&t->arena);
		goto free_toks;
	}
	jnvec body = {0};
	e = jp_subparse(&p, &body, NULL, 0);
	if (e)
		goto free_toks;
	t->root->kids = body.v;
	t->root->nk = body.n;
	jtoks_free(&toks);
	*out = t;
	return MOE_OK;
free_toks:
	jtoks_free(&toks);
free_tmpl:
	moe_jinja_free(t);
	return e;
}

void moe_jinja_free(moe_jinja_tmpl *t)
{
	if (!t)
		return;
	ja_release(&t->arena);
	free(t);
}
