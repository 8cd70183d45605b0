/* seqfilters.c - the filters over sequences: join, map, select, reject,
 * selectattr, rejectattr, sort and dictsort (a stable merge sort whose
 * comparisons may fail as Python's do), unique, min, max, reverse, batch,
 * slice, sum, and the attribute paths ("a.0.b") they look items up by. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

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

/* The parts of an attribute path: "a.0.b" gives a, 0, b. */
typedef struct attrpath {
	jv part[16];
	size_t n;
} attrpath;

static moe_err attr_parts(jrender *r, attrpath *p, jv attr)
{
	p->n = 0;
	if (attr.t == JV_MISSING || attr.t == JV_NONE)
		return MOE_OK;
	if (attr.t != JV_STR) {
		p->part[p->n++] = attr;
		return MOE_OK;
	}
	const char *s = attr.s->s, *end = s + attr.s->len;
	for (;;) {
		const char *dot = memchr(s, '.', (size_t)(end - s));
		const char *pe = dot ? dot : end;
		if (p->n == COUNT(p->part))
			return moe_fail(MOE_ERR_UNSUPPORTED,
			                "unsupported: attribute path too long");
		int digits = pe > s;
		for (const char *q = s; q < pe; q++)
			digits &= *q >= '0' && *q <= '9';
		if (digits && pe - s < 18) {
			p->part[p->n++] = jv_int(strtoll(s, NULL, 10));
		} else {
			const jstr *js = jstr_new(&r->arena, s, (size_t)(pe - s));
			if (!js)
				return jr_nomem(r);
			p->part[p->n++] = jv_str(js);
		}
		if (!dot)
			return MOE_OK;
		s = dot + 1;
	}
}

static moe_err attr_get(jrender *r, jv *out, const attrpath *p, jv item, jv dflt)
{
	for (size_t i = 0; i < p->n; i++) {
		moe_err e = jr_getitem(r, &item, item, p->part[i]);
		if (e)
			return e;
		if (dflt.t != JV_MISSING && dflt.t != JV_NONE && item.t == JV_UNDEF)
			item = dflt;
	}
	*out = item;
	return MOE_OK;
}

static moe_err ignore_case(jrender *r, jv *v)
{
	if (v->t != JV_STR)
		return MOE_OK;
	return jstr_case(r, v, v->s, 0, v->fl);
}

/* ---- sorting: a stable merge sort whose comparisons may fail ---- */

typedef struct sortctx {
	const jv *keys;
	int reverse;
	moe_err err;
} sortctx;

static int before(sortctx *c, size_t a, size_t b)
{
	/* is item b strictly less than a (so that b goes first)? */
	int r = 0;
	if (c->err)
		return 0;
	c->err = jv_cmp(&r, c->keys[b], c->keys[a]);
	if (r == 2)
		return 0;
	return c->reverse ? r > 0 : r < 0;
}

static void msort(sortctx *c, size_t *idx, size_t *tmp, size_t n)
{
	if (n < 2)
		return;
	size_t h = n / 2;
	msort(c, idx, tmp, h);
	msort(c, idx + h, tmp, n - h);
	size_t i = 0, j = h, k = 0;
	while (i < h && j < n)
		tmp[k++] = before(c, idx[i], idx[j]) ? idx[j++] : idx[i++];
	while (i < h)
		tmp[k++] = idx[i++];
	while (j < n)
		tmp[k++] = idx[j++];
	memcpy(idx, tmp, n * sizeof(size_t));
}

/* Sorts items by keys; out gets the items in order. */
static moe_err sort_by(jrender *r, jlist *out, const jv *items, const jv *keys, size_t n,
                       int reverse)
{
	size_t *idx = ja_alloc(&r->arena, (n ? n : 1) * 2 * sizeof(size_t));
	if (!idx)
		return jr_nomem(r);
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	sortctx c = {keys, reverse, MOE_OK};
	msort(&c, idx, idx + n, n);
	if (c.err)
		return c.err;
	for (size_t i = 0; i < n; i++)
		out->v[i] = items[idx[i]];
	out->n = n;
	return MOE_OK;
}

/* The attribute path of a filter's `attribute` argument, then the items of
 * v: the two steps (in that order, which decides the error reported) of
 * join, sort, unique, min / max and sum. */
static moe_err attr_items(jrender *r, attrpath *ap, const jv **items, size_t *n, jv attr, jv v)
{
	moe_err e = attr_parts(r, ap, attr);
	if (!e)
		e = jr_iter(r, items, n, v);
	return e;
}

moe_err jf_join(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"d", "attribute"};
	jv x[2];
	moe_err e = bind(x, "join", p, 2, a);
	const jv *items;
	size_t n;
	const jstr *sep = &jstr_empty;
	attrpath ap;
	if (!e && x[0].t != JV_MISSING)
		e = jr_str(r, &sep, x[0]);
	if (!e)
		e = attr_items(r, &ap, &items, &n, x[1], v);
	if (e)
		return e;
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	for (size_t i = 0; i < n && !e; i++) {
		jv it = items[i];
		const jstr *s;
		if (i)
			e = jbuf_put(&b, sep->s, sep->len);
		if (!e && ap.n)
			e = attr_get(r, &it, &ap, it, jv_make(JV_MISSING));
		if (!e)
			e = jr_str(r, &s, it);
		if (!e)
			e = jbuf_put(&b, s->s, s->len);
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

/* map / select / reject / selectattr / rejectattr */
moe_err jf_map(jrender *r, jv *out, jv v, const jargs *a)
{
	jlist *l = new_list(r, 0, JL_GEN);
	if (!l)
		return jr_nomem(r);
	*out = jv_list(l);
	if (!jv_truthy(v))
		return MOE_OK;
	const jv *items;
	size_t n;
	moe_err e = jr_iter(r, &items, &n, v);
	if (e)
		return e;
	attrpath ap;
	jv dflt = jv_make(JV_MISSING);
	int fi = -1;
	jargs rest = {0};
	if (a->npos == 0) {
		jv attr = jv_make(JV_MISSING);
		for (size_t i = 0; i < a->nkw; i++) {
			if (strcmp(a->kw[i]->s, "attribute") == 0)
				attr = a->kwv[i];
			else if (strcmp(a->kw[i]->s, "default") == 0)
				dflt = a->kwv[i];
			else
				return moe_fail(MOE_ERR_BAD_TYPE,
				                "Unexpected keyword argument '%s'", a->kw[i]->s);
		}
		if (attr.t == JV_MISSING)
			return moe_fail(MOE_ERR_BAD_TYPE, "map requires a filter argument");
		e = attr_parts(r, &ap, attr);
		if (e)
			return e;
	} else {
		if (a->pos[0].t != JV_STR)
			return moe_fail(MOE_ERR_BAD_TYPE, "map: the filter name must be a string");
		fi = jfilter_find(a->pos[0].s->s, a->pos[0].s->len);
		if (fi < 0)
			return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported filter '%s'",
			                a->pos[0].s->s);
		rest = *a;
		rest.pos++;
		rest.npos--;
	}
	for (size_t i = 0; i < n; i++) {
		jv o;
		e = fi >= 0 ? jcall_filter(r, &o, fi, items[i], &rest)
		            : attr_get(r, &o, &ap, items[i], dflt);
		if (!e)
			e = jlist_push(&r->arena, l, o);
		if (e)
			return e;
	}
	return MOE_OK;
}

moe_err jf_select(jrender *r, jv *out, jv v, const jargs *a, int reject, int attr)
{
	jlist *l = new_list(r, 0, JL_GEN);
	if (!l)
		return jr_nomem(r);
	*out = jv_list(l);
	if (!jv_truthy(v))
		return MOE_OK;
	size_t off = attr ? 1 : 0;
	attrpath ap = {.n = 0};
	moe_err e;
	if (attr) {
		if (a->npos < 1)
			return moe_fail(MOE_ERR_BAD_TYPE, "Missing parameter for attribute name");
		e = attr_parts(r, &ap, a->pos[0]);
		if (e)
			return e;
	}
	int ti = -1;
	jargs rest = {0};
	if (a->npos > off) {
		if (a->pos[off].t != JV_STR)
			return moe_fail(MOE_ERR_BAD_TYPE, "select: the test name must be a string");
		ti = jtest_find(a->pos[off].s->s, a->pos[off].s->len);
		if (ti < 0)
			return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported test '%s'",
			                a->pos[off].s->s);
		rest = *a;
		rest.pos += off + 1;
		rest.npos -= off + 1;
	}
	const jv *items;
	size_t n;
	e = jr_iter(r, &items, &n, v);
	if (e)
		return e;
	for (size_t i = 0; i < n; i++) {
		jv x = items[i];
		int ok;
		if (attr) {
			e = attr_get(r, &x, &ap, x, jv_make(JV_MISSING));
			if (e)
				return e;
		}
		if (ti >= 0) {
			e = jcall_test(r, &ok, ti, x, &rest);
			if (e)
				return e;
		} else {
			ok = jv_truthy(x);
		}
		if (ok != reject) {
			e = jlist_push(&r->arena, l, items[i]);
			if (e)
				return e;
		}
	}
	return MOE_OK;
}

moe_err jf_sort(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"reverse", "case_sensitive", "attribute"};
	jv x[3];
	moe_err e = bind(x, "sort", p, 3, a);
	const jv *items;
	size_t n;
	attrpath ap;
	if (!e)
		e = attr_items(r, &ap, &items, &n, x[2], v);
	if (e)
		return e;
	jv *keys = ja_alloc(&r->arena, (n ? n : 1) * sizeof(jv));
	jlist *l = new_list(r, n, JL_LIST);
	if (!keys || !l)
		return jr_nomem(r);
	for (size_t i = 0; i < n; i++) {
		keys[i] = items[i];
		if (ap.n)
			e = attr_get(r, &keys[i], &ap, items[i], jv_make(JV_MISSING));
		if (!e && !jv_truthy(x[1]))
			e = ignore_case(r, &keys[i]);
		if (e)
			return e;
	}
	e = sort_by(r, l, items, keys, n, jv_truthy(x[0]));
	*out = jv_list(l);
	return e;
}

moe_err jf_dictsort(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"case_sensitive", "by", "reverse"};
	jv x[3];
	moe_err e = bind(x, "dictsort", p, 3, a);
	if (e)
		return e;
	int pos = 0;
	if (x[1].t == JV_STR && strcmp(x[1].s->s, "value") == 0)
		pos = 1;
	else if (x[1].t != JV_MISSING && !(x[1].t == JV_STR && strcmp(x[1].s->s, "key") == 0))
		return moe_fail(MOE_ERR_BAD_TYPE,
		                "You can only sort by either \"key\" or \"value\"");
	if (v.t != JV_DICT)
		return moe_fail(MOE_ERR_BAD_TYPE, "'%s' object has no attribute 'items'",
		                jv_type_name(v));
	jv items;
	e = jdict_items(r, &items, v.d, JL_ITEMS);
	if (e)
		return e;
	size_t n = items.l->n;
	jv *keys = ja_alloc(&r->arena, (n ? n : 1) * sizeof(jv));
	jlist *l = new_list(r, n, JL_LIST);
	if (!keys || !l)
		return jr_nomem(r);
	for (size_t i = 0; i < n; i++) {
		keys[i] = items.l->v[i].l->v[pos];
		if (!jv_truthy(x[0]) && (e = ignore_case(r, &keys[i])) != MOE_OK)
			return e;
	}
	e = sort_by(r, l, items.l->v, keys, n, jv_truthy(x[2]));
	*out = jv_list(l);
	return e;
}

moe_err jf_unique(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"case_sensitive", "attribute"};
	jv x[2];
	moe_err e = bind(x, "unique", p, 2, a);
	const jv *items;
	size_t n;
	attrpath ap;
	if (!e)
		e = attr_items(r, &ap, &items, &n, x[1], v);
	if (e)
		return e;
	jlist *l = new_list(r, 0, JL_GEN);
	jv *seen = ja_alloc(&r->arena, (n ? n : 1) * sizeof(jv));
	if (!l || !seen)
		return jr_nomem(r);
	size_t ns = 0;
	for (size_t i = 0; i < n; i++) {
		jv k = items[i];
		if (ap.n)
			e = attr_get(r, &k, &ap, k, jv_make(JV_MISSING));
		if (!e && !jv_truthy(x[0]))
			e = ignore_case(r, &k);
		if (e)
			return e;
		if (k.t == JV_LIST || k.t == JV_DICT || k.t == JV_NS)
			return moe_fail(MOE_ERR_BAD_TYPE, "unhashable type: '%s'", jv_type_name(k));
		size_t j = 0;
		while (j < ns && !jv_eq(seen[j], k))
			j++;
		if (j < ns)
			continue;
		seen[ns++] = k;
		e = jr_steps(r, ns);
		if (!e)
			e = jlist_push(&r->arena, l, items[i]);
		if (e)
			return e;
	}
	*out = jv_list(l);
	return MOE_OK;
}

moe_err jf_minmax(jrender *r, jv *out, jv v, const jargs *a, int max)
{
	static const char *const p[] = {"case_sensitive", "attribute"};
	jv x[2];
	moe_err e = bind(x, max ? "max" : "min", p, 2, a);
	const jv *items;
	size_t n;
	attrpath ap;
	if (!e)
		e = attr_items(r, &ap, &items, &n, x[1], v);
	if (e)
		return e;
	if (n == 0) {
		*out = jv_undef_hint("No aggregated item, sequence was empty.");
		return MOE_OK;
	}
	size_t best = 0;
	jv bk = jv_make(JV_NONE);
	for (size_t i = 0; i < n; i++) {
		jv k = items[i];
		if (ap.n)
			e = attr_get(r, &k, &ap, k, jv_make(JV_MISSING));
		if (!e && !jv_truthy(x[0]))
			e = ignore_case(r, &k);
		if (e)
			return e;
		int c = 0;
		if (i) {
			e = jv_cmp(&c, k, bk);
			if (e)
				return e;
		}
		if (i == 0 || (max ? c == 1 : c == -1)) {
			best = i;
			bk = k;
		}
	}
	*out = items[best];
	return MOE_OK;
}

moe_err jf_reverse(jrender *r, jv *out, jv v)
{
	if (v.t == JV_STR) {
		jbuf b = {.limit = r->max_output, .acct = &r->arena};
		moe_err e = MOE_OK;
		size_t i = v.s->len;
		while (i > 0 && !e) {
			size_t st = i - 1;
			while (st > 0 && ((unsigned char)v.s->s[st] & 0xC0) == 0x80)
				st--;
			e = jbuf_put(&b, v.s->s + st, i - st);
			i = st;
		}
		const jstr *s = e ? NULL : jstr_new(&r->arena, b.p ? b.p : "", b.n);
		jbuf_free(&b);
		if (e)
			return e;
		if (!s)
			return jr_nomem(r);
		*out = jv_str(s);
		out->fl = v.fl;
		return MOE_OK;
	}
	int kind = JL_GEN;
	if (v.t == JV_LIST && v.l->kind == JL_GEN)
		kind = JL_LIST; /* reversed() fails; list(value) reversed */
	else if (!(v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF || v.t == JV_MISSING))
		return moe_fail(MOE_ERR_BAD_TYPE, "argument must be iterable");
	const jv *items;
	size_t n;
	moe_err e = jr_iter(r, &items, &n, v);
	if (e)
		return e;
	jlist *l = new_list(r, n, kind);
	if (!l)
		return jr_nomem(r);
	for (size_t i = 0; i < n; i++)
		l->v[i] = items[n - 1 - i];
	l->n = n;
	*out = jv_list(l);
	return MOE_OK;
}

moe_err jf_batch_slice(jrender *r, jv *out, jv v, const jargs *a, int slice)
{
	static const char *const pb[] = {"linecount", "fill_with"};
	static const char *const ps[] = {"slices", "fill_with"};
	jv x[2];
	moe_err e = bind(x, slice ? "slice" : "batch", slice ? ps : pb, 2, a);
	if (e)
		return e;
	if (x[0].t != JV_INT)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s: the count must be an int",
		                slice ? "slice" : "batch");
	int fill = x[1].t != JV_MISSING && x[1].t != JV_NONE;
	const jv *items;
	size_t n;
	e = jr_iter(r, &items, &n, v);
	if (e)
		return e;
	jlist *l = new_list(r, 0, JL_GEN);
	if (!l)
		return jr_nomem(r);
	*out = jv_list(l);
	int64_t c = x[0].i;
	if (slice) {
		if (c == 0)
			return moe_fail(MOE_ERR_BAD_TYPE, "integer division or modulo by zero");
		if (c < 0 || c > 100000)
			return moe_fail(MOE_ERR_UNSUPPORTED, "unsupported: this slice count");
		size_t per = n / (size_t)c, extra = n % (size_t)c, offset = 0;
		for (size_t s = 0; s < (size_t)c; s++) {
			size_t start = offset + s * per;
			if (s < extra)
				offset++;
			size_t end = offset + (s + 1) * per;
			jlist *part = new_list(r, end - start + 1, JL_LIST);
			if (!part)
				return jr_nomem(r);
			jv_copy(part->v, 0, items + (end > start ? start : 0), end - start);
			part->n = end - start;
			if (fill && s >= extra)
				part->v[part->n++] = x[1];
			if ((e = jlist_push(&r->arena, l, jv_list(part))) != MOE_OK)
				return e;
		}
		return jr_steps(r, (uint64_t)c);
	}
	jlist *cur = NULL;
	for (size_t i = 0; i < n; i++) {
		if (!cur || (c > 0 && (int64_t)cur->n == c)) {
			cur = new_list(r, 0, JL_LIST);
			if (!cur)
				return jr_nomem(r);
			if ((e = jlist_push(&r->arena, l, jv_list(cur))) != MOE_OK)
				return e;
		}
		if ((e = jlist_push(&r->arena, cur, items[i])) != MOE_OK)
			return e;
	}
	while (cur && fill && (int64_t)cur->n < c)
		if ((e = jlist_push(&r->arena, cur, x[1])) != MOE_OK)
			return e;
	return MOE_OK;
}

moe_err jf_sum(jrender *r, jv *out, jv v, const jargs *a)
{
	static const char *const p[] = {"attribute", "start"};
	jv x[2];
	moe_err e = bind(x, "sum", p, 2, a);
	const jv *items;
	size_t n;
	attrpath ap;
	if (!e)
		e = attr_items(r, &ap, &items, &n, x[0], v);
	if (e)
		return e;
	jv acc = or_default(x[1], jv_int(0));
	if (acc.t == JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE,
		                "sum() can't sum strings [use ''.join(seq) instead]");
	for (size_t i = 0; i < n; i++) {
		jv it = items[i];
		if (ap.n && (e = attr_get(r, &it, &ap, it, jv_make(JV_MISSING))) != MOE_OK)
			return e;
		if ((e = jr_binop(r, &acc, OP_ADD, acc, it)) != MOE_OK)
			return e;
	}
	*out = acc;
	return MOE_OK;
}
