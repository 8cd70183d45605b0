/* interp.c - the tree-walking interpreter: moe_jinja_render, its state
 * (arena, limits, output), Jinja2's scopes (a for loop's body and a macro
 * are scopes, an if is not; macros see the scope they were defined in),
 * statements (output, if, for with loop and else, set, block set, macro,
 * call block, filter block, with, break, continue) and expressions, with
 * every error given the line of the innermost node it came from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

enum { X_BREAK = 1000, X_CONTINUE = 1001 };

#define DEFAULT_MAX_OUTPUT ((size_t)32 << 20)
#define DEFAULT_MAX_MEMORY ((size_t)256 << 20)
#define DEFAULT_MAX_STEPS  1000000u
#define DEFAULT_MAX_DEPTH  500u

static moe_err eval(jrender *r, const jnode *n, jv *out);
static int exec_body(jrender *r, jnode *const *body, size_t n);

/* Prefixes the error detail with the line of n, once (the innermost node). */
static moe_err at_line(jrender *r, const jnode *n, moe_err e)
{
	if (!r->annotated && e != MOE_OK && (int)e < X_BREAK) {
		char copy[512];
		snprintf(copy, sizeof(copy), "%s", moe_err_detail());
		moe_fail(e, "line %u: %s", n->line, copy);
		r->annotated = 1;
	}
	return e;
}

static moe_err enter(jrender *r)
{
	if (++r->depth > r->max_depth)
		return moe_fail(MOE_ERR_OVERFLOW,
		                "nesting deeper than %u (statements, expressions, "
		                "macro calls)",
		                r->max_depth);
	return MOE_OK;
}

/* ---- scopes ---- */

static jscope *scope_new(jrender *r, jscope *parent)
{
	jscope *s = ja_alloc(&r->arena, sizeof(*s));
	if (s) {
		memset(s, 0, sizeof(*s));
		s->parent = parent;
	}
	return s;
}

/* A macro holds s and every scope around it: a loop must not reuse them. */
static void capture_scopes(jscope *s)
{
	for (; s && !s->captured; s = s->parent)
		s->captured = 1;
}

static moe_err scope_set(jrender *r, jscope *s, int32_t sym, jv v)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->b[i].sym == sym) {
			s->b[i].v = v;
			return MOE_OK;
		}
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4;
		jbind *nb = ja_grow(&r->arena, s->b, s->n * sizeof(jbind), cap * sizeof(jbind));
		if (!nb)
			return jr_nomem(r);
		s->b = nb;
		s->cap = cap;
	}
	s->b[s->n].sym = sym;
	s->b[s->n].v = v;
	s->n++;
	return MOE_OK;
}

static jv lookup(jrender *r, int32_t sym)
{
	for (jscope *s = r->scope; s; s = s->parent)
		for (size_t i = 0; i < s->n; i++)
			if (s->b[i].sym == sym)
				return s->b[i].v;
	jv v = r->ctx[sym];
	if (v.t == JV_MISSING) {
		v = jv_make(JV_UNDEF);
		v.aux = JU_NAME;
		v.s = r->t->symnames[sym];
	}
	return v;
}

/* ---- output ---- */

static moe_err emit(jrender *r, const char *p, size_t n)
{
	return jbuf_put(r->out, p, n);
}

static moe_err emit_value(jrender *r, jv v)
{
	if (v.t == JV_STR)
		return emit(r, v.s->s, v.s->len);
	if (v.t == JV_UNDEF || v.t == JV_MISSING)
		return MOE_OK;
	return jv_write_str(r->out, v, 0);
}

/* Runs body in scope with its output captured into a string; *status gets
 * a break or continue that ends the body. */
static moe_err capture(jrender *r, jnode *const *body, size_t n, jscope *scope, const jstr **out,
                       int *status)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	jbuf *saved_out = r->out;
	jscope *saved_scope = r->scope;
	r->out = &b;
	r->scope = scope;
	int st = exec_body(r, body, n);
	r->out = saved_out;
	r->scope = saved_scope;
	*status = 0;
	if (st == X_BREAK || st == X_CONTINUE) {
		*status = st;
		st = MOE_OK;
	}
	if (!st) {
		*out = jstr_new(&r->arena, b.p ? b.p : "", b.n);
		if (!*out)
			st = jr_nomem(r);
	}
	jbuf_free(&b);
	return (moe_err)st;
}

/* ---- calls ---- */

static moe_err eval_args(jrender *r, const jnode *call, jargs *a, size_t extra_kw)
{
	memset(a, 0, sizeof(*a));
	if (call->nk) {
		a->pos = ja_alloc(&r->arena, call->nk * sizeof(jv));
		if (!a->pos)
			return jr_nomem(r);
	}
	if (call->nk2 + extra_kw) {
		a->kwv = ja_alloc(&r->arena, (call->nk2 + extra_kw) * sizeof(jv));
		a->kw = ja_alloc(&r->arena, (call->nk2 + extra_kw) * sizeof(jstr *));
		if (!a->kwv || !a->kw)
			return jr_nomem(r);
	}
	for (size_t i = 0; i < call->nk; i++) {
		moe_err e = eval(r, call->kids[i], &a->pos[i]);
		if (e)
			return e;
	}
	a->npos = call->nk;
	for (size_t i = 0; i < call->nk2; i++) {
		moe_err e = eval(r, call->kids2[i], &a->kwv[i]);
		if (e)
			return e;
		a->kw[i] = call->kw[i];
	}
	a->nkw = call->nk2;
	return MOE_OK;
}

static moe_err call_macro(jrender *r, jv *out, const jmacro *m, const jargs *a)
{
	const jnode *def = m->def;
	const moe_jinja_tmpl *t = r->t;
	const char *mname = def->k == N_MACRO ? def->name->s : "caller";
	moe_err e = jr_steps(r, 1);
	if (e)
		return e;
	jscope *s = scope_new(r, m->closure);
	if (!s)
		return jr_nomem(r);
	size_t np = def->nsyms;
	jv *vals = ja_alloc(&r->arena, (np + 1) * sizeof(jv));
	if (!vals)
		return jr_nomem(r);
	for (size_t i = 0; i < np; i++)
		vals[i] = jv_make(JV_MISSING);
	for (size_t i = 0; i < a->npos && i < np; i++)
		vals[i] = a->pos[i];
	jv caller = jv_make(JV_MISSING);
	jdict *kwargs = NULL;
	for (size_t k = 0; k < a->nkw; k++) {
		size_t i = a->npos;
		while (i < np && strcmp(t->symnames[def->syms[i]]->s, a->kw[k]->s) != 0)
			i++;
		if (i < np) {
			vals[i] = a->kwv[k];
		} else if ((def->op & MF_CALLER) && strcmp(a->kw[k]->s, "caller") == 0) {
			caller = a->kwv[k];
		} else if (def->op & MF_KWARGS) {
			if (!kwargs && !(kwargs = jdict_new(&r->arena, 0)))
				return jr_nomem(r);
			e = jdict_set(&r->arena, kwargs, a->kw[k], a->kwv[k]);
			if (e)
				return e;
		} else {
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "macro '%s' takes no keyword argument '%s'", mname,
			                a->kw[k]->s);
		}
	}
	if (a->npos > np && !(def->op & MF_VARARGS))
		return moe_fail(MOE_ERR_BAD_TYPE, "macro '%s' takes not more than %zu argument(s)",
		                mname, np);
	jscope *saved = r->scope;
	r->scope = s;
	size_t first_default = np - def->nk2;
	for (size_t i = 0; i < np && !e; i++) {
		jv v = vals[i];
		if (v.t == JV_MISSING) {
			if (i >= first_default) {
				e = eval(r, def->kids2[i - first_default], &v);
			} else {
				char *hint =
				    ja_alloc(&r->arena, t->symnames[def->syms[i]]->len + 40);
				if (!hint) {
					e = jr_nomem(r);
					break;
				}
				sprintf(hint, "parameter '%s' was not provided",
				        t->symnames[def->syms[i]]->s);
				v = jv_undef_hint(hint);
			}
		}
		if (!e)
			e = scope_set(r, s, def->syms[i], v);
	}
	if (!e && (def->op & MF_CALLER))
		e = scope_set(r, s, t->sym_caller,
		              caller.t == JV_MISSING ? jv_undef_hint("No caller defined") : caller);
	if (!e && (def->op & MF_VARARGS)) {
		size_t extra = a->npos > np ? a->npos - np : 0;
		jlist *l = jlist_new(&r->arena, extra, JL_TUPLE);
		if (!l) {
			e = jr_nomem(r);
		} else {
			jv_copy(l->v, 0, a->pos + (extra ? np : 0), extra);
			l->n = extra;
			e = scope_set(r, s, t->sym_varargs, jv_list(l));
		}
	}
	if (!e && (def->op & MF_KWARGS)) {
		if (!kwargs && !(kwargs = jdict_new(&r->arena, 0)))
			e = jr_nomem(r);
		else
			e = scope_set(r, s, t->sym_kwargs, jv_dict(kwargs));
	}
	r->scope = saved;
	if (e)
		return e;
	const jstr *res;
	int status;
	e = capture(r, def->kids, def->nk, s, &res, &status);
	if (!e)
		*out = jv_str(res);
	return e;
}

moe_err jr_call(jrender *r, jv *out, jv fn, const jargs *a)
{
	switch (fn.t) {
	case JV_MACRO:
		return call_macro(r, out, fn.m, a);
	case JV_FUNC:
		return jr_call_global(r, out, (int)fn.aux, a);
	case JV_METHOD:
		return jcall_method(r, out, fn.bm->self, fn.bm->name, a);
	case JV_UNDEF:
	case JV_MISSING:
		return jr_undef_fail(fn);
	default:
		return moe_fail(MOE_ERR_BAD_TYPE, "'%s' object is not callable", jv_type_name(fn));
	}
}

/* A call; caller (or JV_MISSING) is a call block's body, passed as caller=. */
static moe_err eval_call(jrender *r, const jnode *n, jv *out, jv caller)
{
	jargs a;
	jv fn;
	moe_err e;
	const jnode *f = n->a;
	if (f->k == N_GETATTR) {
		jv self;
		e = eval(r, f->a, &self);
		if (e)
			return e;
		e = jr_getattr(r, &fn, self, f->name);
	} else {
		e = eval(r, f, &fn);
	}
	if (!e)
		e = eval_args(r, n, &a, caller.t != JV_MISSING);
	if (e)
		return e;
	if (caller.t != JV_MISSING) {
		a.kw[a.nkw] = jstr_lit(&r->arena, "caller");
		if (!a.kw[a.nkw])
			return jr_nomem(r);
		a.kwv[a.nkw++] = caller;
	}
	return jr_call(r, out, fn, &a);
}

/* ---- expressions ---- */

static moe_err eval_slice(jrender *r, jv obj, const jnode *s, jv *out)
{
	jv parts[3];
	int64_t v[3];
	int given[3];
	const jnode *kids[3] = {s->a, s->b, s->c};
	for (int i = 0; i < 3; i++) {
		given[i] = 0;
		if (!kids[i])
			continue;
		moe_err e = eval(r, kids[i], &parts[i]);
		if (e)
			return e;
		if (parts[i].t == JV_NONE)
			continue;
		if (parts[i].t != JV_INT && parts[i].t != JV_BOOL)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "slice indices must be integers or None or have an "
			                "__index__ method");
		v[i] = parts[i].i;
		given[i] = 1;
	}
	if (obj.t == JV_UNDEF || obj.t == JV_MISSING)
		return jr_undef_fail(obj);
	int is_str = obj.t == JV_STR;
	if (!is_str && !(obj.t == JV_LIST && (obj.l->kind == JL_LIST || obj.l->kind == JL_TUPLE ||
	                                      obj.l->kind == JL_RANGE)))
		return moe_fail(MOE_ERR_BAD_TYPE,
		                obj.t == JV_DICT ? "unhashable type: 'slice'"
		                                 : "'%s' object is not subscriptable",
		                jv_type_name(obj));
	int64_t len = is_str ? (int64_t)obj.s->ncp : (int64_t)obj.l->n;
	int64_t step = given[2] ? v[2] : 1;
	if (step == 0)
		return moe_fail(MOE_ERR_BAD_TYPE, "slice step cannot be zero");
	int64_t start, stop;
	if (!given[0]) {
		start = step < 0 ? len - 1 : 0;
	} else {
		start = v[0];
		if (start < 0) {
			start += len;
			if (start < 0)
				start = step < 0 ? -1 : 0;
		} else if (start >= len) {
			start = step < 0 ? len - 1 : len;
		}
	}
	if (!given[1]) {
		stop = step < 0 ? -1 : len;
	} else {
		stop = v[1];
		if (stop < 0) {
			stop += len;
			if (stop < 0)
				stop = step < 0 ? -1 : 0;
		} else if (stop >= len) {
			stop = step < 0 ? len - 1 : len;
		}
	}
	int64_t count = 0;
	if (step > 0 && stop > start)
		count = (stop - start - 1) / step + 1;
	else if (step < 0 && start > stop)
		count = (start - stop - 1) / (-step) + 1;
	moe_err e = jr_steps(r, (uint64_t)count);
	if (e)
		return e;
	if (is_str) {
		if (step == 1) {
			const jstr *sub =
			    jr_substr(r, obj.s, (size_t)start, (size_t)(start + count));
			if (!sub)
				return jr_nomem(r);
			*out = jv_str(sub);
			out->fl = obj.fl;
			return MOE_OK;
		}
		/* code point offsets, then the picked ones */
		size_t *offs = ja_alloc(&r->arena, ((size_t)len + 1) * sizeof(size_t));
		if (!offs)
			return jr_nomem(r);
		size_t i = 0, k = 0;
		while (i < obj.s->len) {
			offs[k++] = i;
			utf8_next(obj.s->s, obj.s->len, &i);
		}
		offs[k] = obj.s->len;
		jbuf b = {.limit = r->max_output, .acct = &r->arena};
		for (int64_t j = 0; j < count && !e; j++) {
			int64_t at = start + j * step;
			e = jbuf_put(&b, obj.s->s + offs[at], offs[at + 1] - offs[at]);
		}
		const jstr *res = e ? NULL : jstr_new(&r->arena, b.p ? b.p : "", b.n);
		jbuf_free(&b);
		if (e)
			return e;
		if (!res)
			return jr_nomem(r);
		*out = jv_str(res);
		out->fl = obj.fl;
		return MOE_OK;
	}
	jlist *l = jlist_new(&r->arena, (size_t)count, obj.l->kind);
	if (!l)
		return jr_nomem(r);
	for (int64_t j = 0; j < count; j++)
		l->v[l->n++] = obj.l->v[start + j * step];
	if (obj.l->kind == JL_RANGE) { /* Python's range slice: from the adjusted indices */
		l->r0 = obj.l->r0 + start * obj.l->rs;
		l->r1 = obj.l->r0 + stop * obj.l->rs;
		l->rs = obj.l->rs * step;
	}
	*out = jv_list(l);
	return MOE_OK;
}

static moe_err compare(jrender *r, int *res, int op, jv a, jv b)
{
	int c;
	moe_err e;
	switch (op) {
	case OP_EQ:
		*res = jv_eq(a, b);
		return MOE_OK;
	case OP_NE:
		*res = !jv_eq(a, b);
		return MOE_OK;
	case OP_IN:
	case OP_NOTIN:
		e = jr_contains(r, res, a, b);
		if (op == OP_NOTIN)
			*res = !*res;
		return e;
	default:
		e = jv_cmp(&c, a, b);
		if (e)
			return e;
		*res = op == OP_LT   ? c == -1
		       : op == OP_LE ? (c == -1 || c == 0)
		       : op == OP_GT ? c == 1
		                     : (c == 1 || c == 0);
		return MOE_OK;
	}
}

static moe_err eval_list(jrender *r, const jnode *n, jv *out, int kind)
{
	jlist *l = jlist_new(&r->arena, n->nk, kind);
	if (!l)
		return jr_nomem(r);
	for (size_t i = 0; i < n->nk; i++) {
		moe_err e = eval(r, n->kids[i], &l->v[i]);
		if (e)
			return e;
		l->n++;
	}
	*out = jv_list(l);
	return MOE_OK;
}

static moe_err eval_inner(jrender *r, const jnode *n, jv *out)
{
	jv a, b;
	moe_err e;
	int t;
	switch (n->k) {
	case N_CONST:
		*out = n->cv;
		return MOE_OK;
	case N_NAME:
		*out = lookup(r, n->sym);
		return MOE_OK;
	case N_GETATTR:
		e = eval(r, n->a, &a);
		return e ? e : jr_getattr(r, out, a, n->name);
	case N_GETITEM:
		e = eval(r, n->a, &a);
		if (e)
			return e;
		if (n->b->k == N_SLICE)
			return eval_slice(r, a, n->b, out);
		e = eval(r, n->b, &b);
		return e ? e : jr_getitem(r, out, a, b);
	case N_CALL:
		return eval_call(r, n, out, jv_make(JV_MISSING));
	case N_FILTER: {
		jargs args;
		e = eval(r, n->a, &a);
		if (!e)
			e = eval_args(r, n, &args, 0);
		return e ? e : jcall_filter(r, out, n->fn, a, &args);
	}
	case N_TEST: {
		jargs args;
		e = eval(r, n->a, &a);
		if (!e)
			e = eval_args(r, n, &args, 0);
		if (!e)
			e = jcall_test(r, &t, n->fn, a, &args);
		*out = jv_bool(n->op ? !t : t);
		return e;
	}
	case N_LIST:
		return eval_list(r, n, out, JL_LIST);
	case N_TUPLE:
		return eval_list(r, n, out, JL_TUPLE);
	case N_DICT: {
		jdict *d = jdict_new(&r->arena, n->nk);
		if (!d)
			return jr_nomem(r);
		for (size_t i = 0; i < n->nk; i++) {
			e = eval(r, n->kids[i], &a);
			if (!e)
				e = eval(r, n->kids2[i], &b);
			if (e)
				return e;
			if (a.t != JV_STR)
				return moe_fail(MOE_ERR_UNSUPPORTED,
				                "unsupported: a dict key that is not a string");
			e = jdict_set(&r->arena, d, a.s, b);
			if (e)
				return e;
		}
		*out = jv_dict(d);
		return MOE_OK;
	}
	case N_NOT:
		e = eval(r, n->a, &a);
		*out = jv_bool(!jv_truthy(a));
		return e;
	case N_NEG:
	case N_POS:
		e = eval(r, n->a, &a);
		if (e)
			return e;
		if (a.t == JV_FLOAT) {
			*out = jv_float(n->k == N_NEG ? -a.f : a.f);
			return MOE_OK;
		}
		if (a.t == JV_INT || a.t == JV_BOOL) {
			if (n->k == N_NEG && a.i == INT64_MIN)
				return moe_fail(MOE_ERR_OVERFLOW, "integer result beyond int64");
			*out = jv_int(n->k == N_NEG ? -a.i : a.i);
			return MOE_OK;
		}
		if (a.t == JV_UNDEF)
			return jr_undef_fail(a);
		return moe_fail(MOE_ERR_BAD_TYPE, "bad operand type for unary %c: '%s'",
		                n->k == N_NEG ? '-' : '+', jv_type_name(a));
	case N_AND:
	case N_OR:
		e = eval(r, n->a, &a);
		if (e)
			return e;
		if (jv_truthy(a) == (n->k == N_OR)) {
			*out = a;
			return MOE_OK;
		}
		return eval(r, n->b, out);
	case N_BINOP:
		e = eval(r, n->a, &a);
		if (!e)
			e = eval(r, n->b, &b);
		return e ? e : jr_binop(r, out, n->op, a, b);
	case N_COMPARE:
		e = eval(r, n->a, &a);
		for (size_t i = 0; i < n->nk && !e; i++) {
			e = eval(r, n->kids[i], &b);
			if (!e)
				e = compare(r, &t, n->ops[i], a, b);
			if (!e && !t) {
				*out = jv_bool(0);
				return MOE_OK;
			}
			a = b;
		}
		*out = jv_bool(1);
		return e;
	case N_CONCAT: {
		jbuf buf = {.limit = r->max_output, .acct = &r->arena};
		for (size_t i = 0; i < n->nk; i++) {
			const jstr *s;
			e = eval(r, n->kids[i], &a);
			if (!e)
				e = jr_str(r, &s, a);
			if (!e)
				e = jbuf_put(&buf, s->s, s->len);
			if (e) {
				jbuf_free(&buf);
				return e;
			}
		}
		const jstr *s = jstr_new(&r->arena, buf.p ? buf.p : "", buf.n);
		jbuf_free(&buf);
		if (!s)
			return jr_nomem(r);
		*out = jv_str(s);
		return MOE_OK;
	}
	case N_COND:
		e = eval(r, n->b, &a);
		if (e)
			return e;
		if (jv_truthy(a))
			return eval(r, n->a, out);
		if (n->c)
			return eval(r, n->c, out);
		*out = jv_undef_hint("the inline if-expression evaluated to false and no else "
		                     "section was defined.");
		return MOE_OK;
	default:
		return moe_fail(MOE_ERR_STATE, "not an expression");
	}
}

static moe_err eval(jrender *r, const jnode *n, jv *out)
{
	moe_err e = enter(r);
	if (!e)
		e = eval_inner(r, n, out);
	r->depth--;
	return e ? at_line(r, n, e) : MOE_OK;
}

/* ---- statements ---- */

/* Binds v to the names of a target (one, or several unpacked). */
static moe_err assign(jrender *r, jscope *s, const jnode *n, jv v)
{
	if (!n->op)
		return scope_set(r, s, n->syms[0], v);
	const jv *items;
	size_t cnt;
	moe_err e = jr_iter(r, &items, &cnt, v);
	if (e)
		return e;
	if (cnt < n->nsyms)
		return moe_fail(MOE_ERR_BAD_TYPE,
		                "not enough values to unpack (expected %zu, got %zu)", n->nsyms,
		                cnt);
	if (cnt > n->nsyms)
		return moe_fail(MOE_ERR_BAD_TYPE, "too many values to unpack (expected %zu)",
		                n->nsyms);
	for (size_t i = 0; i < cnt && !e; i++)
		e = scope_set(r, s, n->syms[i], items[i]);
	return e;
}

static moe_err assign_stmt(jrender *r, const jnode *target, jv v)
{
	if (target->k == N_SETNS) {
		jv ns = lookup(r, target->sym);
		if (ns.t != JV_NS)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "cannot assign attribute on non-namespace object");
		return jdict_set(&r->arena, ns.d, target->name, v);
	}
	return assign(r, r->scope, target, v);
}

/* Applies the filter chain f (its innermost operand being NULL) to v. */
static moe_err apply_filters(jrender *r, const jnode *f, jv v, jv *out)
{
	if (!f) {
		*out = v;
		return MOE_OK;
	}
	jv inner;
	jargs args;
	moe_err e = enter(r);
	if (!e)
		e = apply_filters(r, f->a, v, &inner);
	if (!e)
		e = eval_args(r, f, &args, 0);
	if (!e)
		e = jcall_filter(r, out, f->fn, inner, &args);
	r->depth--;
	return e ? at_line(r, f, e) : MOE_OK;
}

static int exec_for(jrender *r, const jnode *n)
{
	jv it;
	const jv *items;
	size_t cnt;
	moe_err e = eval(r, n->a, &it);
	if (!e)
		e = jr_iter(r, &items, &cnt, it);
	if (e)
		return e;
	jscope *outer = r->scope;
	if (n->b) {
		/* for x in y if cond: filter first, so that loop.length counts */
		jv *kept = ja_alloc(&r->arena, (cnt ? cnt : 1) * sizeof(jv));
		jscope *fs = scope_new(r, outer);
		if (!kept || !fs)
			return jr_nomem(r);
		size_t k = 0;
		r->scope = fs;
		for (size_t i = 0; i < cnt && !e; i++) {
			jv c;
			fs->n = 0;
			e = assign(r, fs, n, items[i]);
			if (!e)
				e = eval(r, n->b, &c);
			if (!e && jv_truthy(c))
				kept[k++] = items[i];
		}
		r->scope = outer;
		if (e)
			return e;
		items = kept;
		cnt = k;
	}
	if (cnt == 0) {
		if (!n->nk2)
			return MOE_OK;
		jscope *es = scope_new(r, outer);
		if (!es)
			return jr_nomem(r);
		r->scope = es;
		int st = exec_body(r, n->kids2, n->nk2);
		r->scope = outer;
		return st;
	}
	jloop *lp = ja_alloc(&r->arena, sizeof(*lp));
	if (!lp)
		return jr_nomem(r);
	memset(lp, 0, sizeof(*lp));
	lp->items = items;
	lp->n = cnt;
	lp->changed = jv_make(JV_MISSING);
	jv loopv = jv_make(JV_LOOP);
	loopv.lp = lp;
	jscope *s = NULL;
	int st = MOE_OK;
	for (size_t i = 0; i < cnt; i++) {
		e = jr_steps(r, 1);
		if (e)
			return at_line(r, n, e);
		if (!s || s->captured) {
			s = scope_new(r, outer);
			if (!s)
				return jr_nomem(r);
		}
		s->n = 0;
		lp->i = i;
		e = assign(r, s, n, items[i]);
		if (!e)
			e = scope_set(r, s, r->t->sym_loop, loopv);
		if (e)
			return at_line(r, n, e);
		r->scope = s;
		st = exec_body(r, n->kids, n->nk);
		r->scope = outer;
		if (st == X_CONTINUE) {
			st = MOE_OK;
			continue;
		}
		if (st == X_BREAK) {
			st = MOE_OK;
			break;
		}
		if (st)
			break;
	}
	return st;
}

static int exec_stmt(jrender *r, const jnode *n)
{
	jv v;
	moe_err e;
	const jstr *s;
	int st;
	switch (n->k) {
	case N_DATA:
		return emit(r, n->cv.s->s, n->cv.s->len);
	case N_OUTPUT:
		e = eval(r, n->a, &v);
		return e ? e : emit_value(r, v);
	case N_IF:
		for (const jnode *br = n; br; br = br->b) {
			if (br->a) {
				e = eval(r, br->a, &v);
				if (e)
					return e;
				if (!jv_truthy(v))
					continue;
			}
			return exec_body(r, br->kids, br->nk);
		}
		return MOE_OK;
	case N_FOR:
		return exec_for(r, n);
	case N_SET:
	case N_SETNS:
		e = eval(r, n->a, &v);
		return e ? e : assign_stmt(r, n, v);
	case N_SETBLOCK: {
		jscope *bs = scope_new(r, r->scope);
		if (!bs)
			return jr_nomem(r);
		e = capture(r, n->kids, n->nk, bs, &s, &st);
		if (e)
			return e;
		if (st)
			return st;
		e = apply_filters(r, n->a, jv_str(s), &v);
		return e ? e : assign_stmt(r, n->b, v);
	}
	case N_FILTERBLOCK: {
		jscope *bs = scope_new(r, r->scope);
		if (!bs)
			return jr_nomem(r);
		e = capture(r, n->kids, n->nk, bs, &s, &st);
		if (e)
			return e;
		if (st)
			return st;
		e = apply_filters(r, n->a, jv_str(s), &v);
		return e ? e : emit_value(r, v);
	}
	case N_MACRO: {
		jmacro *m = ja_alloc(&r->arena, sizeof(*m));
		if (!m)
			return jr_nomem(r);
		m->def = n;
		m->closure = r->scope;
		capture_scopes(r->scope);
		v = jv_make(JV_MACRO);
		v.m = m;
		return scope_set(r, r->scope, n->sym, v);
	}
	case N_CALLBLOCK: {
		jmacro *m = ja_alloc(&r->arena, sizeof(*m));
		if (!m)
			return jr_nomem(r);
		m->def = n;
		m->closure = r->scope;
		capture_scopes(r->scope);
		jv caller = jv_make(JV_MACRO);
		caller.m = m;
		e = eval_call(r, n->a, &v, caller);
		return e ? at_line(r, n->a, e) : emit_value(r, v);
	}
	case N_WITH: {
		jscope *ws = scope_new(r, r->scope);
		if (!ws)
			return jr_nomem(r);
		for (size_t i = 0; i < n->nsyms; i++) {
			e = eval(r, n->kids2[i], &v);
			if (!e)
				e = scope_set(r, ws, n->syms[i], v);
			if (e)
				return e;
		}
		jscope *saved = r->scope;
		r->scope = ws;
		st = exec_body(r, n->kids, n->nk);
		r->scope = saved;
		return st;
	}
	case N_BREAK:
		return X_BREAK;
	case N_CONTINUE:
		return X_CONTINUE;
	default:
		return moe_fail(MOE_ERR_STATE, "not a statement");
	}
}

static int exec_body(jrender *r, jnode *const *body, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int st = enter(r);
		if (!st)
			st = exec_stmt(r, body[i]);
		r->depth--;
		if (st) {
			if (st < X_BREAK)
				at_line(r, body[i], (moe_err)st);
			return st;
		}
	}
	return MOE_OK;
}

/* ---- the render ---- */

static const char *const globals[JF__COUNT] = {"range",           "dict",         "namespace",
                                               "raise_exception", "strftime_now", NULL};

moe_err moe_jinja_render(char **out, size_t *out_len, const moe_jinja_tmpl *t,
                         const moe_jinja_value *vars, const moe_jinja_opts *opts)
{
	moe_err e;
	jrender r = {0};
	jbuf b = {0};
	if (out)
		*out = NULL;
	if (out_len)
		*out_len = 0;
	if (!out || !out_len || !t)
		return moe_fail(MOE_ERR_INVAL, "moe_jinja_render: NULL output or template");
	if (vars && vars->v.t != JV_DICT)
		return moe_fail(MOE_ERR_INVAL, "moe_jinja_render: vars must be a dict");
	moe_jinja_opts o = opts ? *opts : (moe_jinja_opts){0};
	r.t = t;
	r.max_output = o.max_output ? o.max_output : DEFAULT_MAX_OUTPUT;
	r.arena.limit = o.max_memory ? o.max_memory : DEFAULT_MAX_MEMORY;
	r.max_steps = o.max_steps ? o.max_steps : DEFAULT_MAX_STEPS;
	r.max_depth = o.max_depth ? o.max_depth : DEFAULT_MAX_DEPTH;
	if (o.now) {
		r.now = *o.now;
	} else {
		time_t now = time(NULL);
		localtime_r(&now, &r.now);
	}
	jv *ctx = ja_alloc(&r.arena, (t->nsyms ? t->nsyms : 1) * sizeof(jv));
	if (!ctx) {
		e = jr_nomem(&r);
		goto release_arena;
	}
	for (size_t i = 0; i < t->nsyms; i++) {
		const jstr *name = t->symnames[i];
		jv *v = vars ? jdict_get(vars->v.d, name->s, name->len) : NULL;
		ctx[i] = v ? *v : jv_make(JV_MISSING);
		if (v)
			continue;
		if (strcmp(name->s, "lipsum") == 0 || strcmp(name->s, "cycler") == 0 ||
		    strcmp(name->s, "joiner") == 0) {
			ctx[i] = jv_make(JV_FUNC);
			ctx[i].aux = JF_REFUSED;
			continue;
		}
		for (int g = 0; g < JF_REFUSED; g++)
			if (strcmp(globals[g], name->s) == 0) {
				ctx[i] = jv_make(JV_FUNC);
				ctx[i].aux = (uint32_t)g;
				break;
			}
	}
	r.ctx = ctx;
	r.scope = scope_new(&r, NULL);
	if (!r.scope) {
		e = jr_nomem(&r);
		goto release_arena;
	}
	b.limit = r.max_output;
	b.acct = &r.arena;
	r.out = &b;
	int st = exec_body(&r, t->root->kids, t->root->nk);
	e = (moe_err)st;
	if (e)
		goto free_output;
	if (!b.p) {
		b.p = malloc(1);
		if (!b.p) {
			e = moe_fail(MOE_ERR_NOMEM, "out of memory");
			goto release_arena;
		}
		b.p[0] = 0;
	}
	ja_release(&r.arena);
	*out = b.p;
	*out_len = b.n;
	return MOE_OK;
free_output:
	jbuf_free(&b);
release_arena:
	ja_release(&r.arena);
	return e;
}
