/* methods.c - Python's str, list and dict methods as templates call them
 * (split, strip, startswith, replace, find, format, get, items...), with
 * Python's Unicode whitespace and code point indices, Markup's escaping of
 * arguments, printf-style '%' formatting, and the argument binding that
 * methods, filters and tests share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "internal.h"

/* ---- Unicode ---- */

uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
	const unsigned char *u = (const unsigned char *)s;
	uint32_t c = u[*i];
	size_t k = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
	if (*i + k >= n + (k == 0)) {
		(*i)++;
		return c;
	}
	if (k)
		c &= k == 1 ? 0x1F : k == 2 ? 0x0F : 0x07;
	for (size_t j = 1; j <= k; j++)
		c = c << 6 | (u[*i + j] & 0x3F);
	*i += k + 1;
	return c;
}

int uc_isspace(uint32_t c)
{
	if (c < 0x80)
		return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20);
	return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
	       c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

int uc_isprintable(uint32_t c)
{
	if (c == ' ')
		return 1;
	switch (utf8proc_category((utf8proc_int32_t)c)) {
	case UTF8PROC_CATEGORY_CC:
	case UTF8PROC_CATEGORY_CF:
	case UTF8PROC_CATEGORY_CS:
	case UTF8PROC_CATEGORY_CO:
	case UTF8PROC_CATEGORY_CN:
	case UTF8PROC_CATEGORY_ZL:
	case UTF8PROC_CATEGORY_ZP:
	case UTF8PROC_CATEGORY_ZS:
		return 0;
	default:
		return 1;
	}
}

size_t utf8_offset(const jstr *s, size_t k)
{
	if (s->ncp == s->len)
		return k;
	size_t i = 0;
	while (k-- > 0 && i < s->len)
		utf8_next(s->s, s->len, &i);
	return i;
}

static int uc_cat(uint32_t c)
{
	return utf8proc_category((utf8proc_int32_t)c);
}

static int uc_isalpha(uint32_t c)
{
	int k = uc_cat(c);
	return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static int uc_isnum(uint32_t c)
{
	int k = uc_cat(c);
	return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

static int uc_islower(uint32_t c)
{
	return uc_cat(c) == UTF8PROC_CATEGORY_LL;
}

static int uc_isupper(uint32_t c)
{
	return uc_cat(c) == UTF8PROC_CATEGORY_LU;
}

static int uc_iscased(uint32_t c)
{
	int k = uc_cat(c);
	return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

/* Case mappings (simple, plus the full ones that text meets most). */
enum { CASE_LOWER, CASE_UPPER, CASE_TITLE };

static moe_err put_case(jbuf *b, uint32_t c, int how)
{
	if (how != CASE_LOWER && c == 0xDF)
		return jbuf_puts(b, how == CASE_UPPER ? "SS" : "Ss");
	if (how == CASE_LOWER && c == 0x130)
		return jbuf_puts(b, "i\xcc\x87");
	if (c < 0x80) {
		char ch = (char)c;
		if (how == CASE_LOWER && ch >= 'A' && ch <= 'Z')
			ch = (char)(ch + 32);
		else if (how != CASE_LOWER && ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 32);
		return jbuf_putc(b, ch);
	}
	utf8proc_int32_t m = how == CASE_LOWER   ? utf8proc_tolower((utf8proc_int32_t)c)
	                     : how == CASE_UPPER ? utf8proc_toupper((utf8proc_int32_t)c)
	                                         : utf8proc_totitle((utf8proc_int32_t)c);
	return jbuf_putcp(b, (uint32_t)m);
}

static moe_err buf_to_str(jrender *r, jv *out, jbuf *b, uint8_t fl)
{
	const jstr *s = jstr_new(&r->arena, b->p ? b->p : "", b->n);
	jbuf_free(b);
	if (!s)
		return jr_nomem(r);
	*out = jv_str(s);
	out->fl = fl;
	return MOE_OK;
}

/* ---- argument binding ---- */

moe_err jbind_args(jv *out, const char *fname, const char *const *params, size_t nparams,
                   const jargs *args)
{
	for (size_t i = 0; i < nparams; i++)
		out[i] = jv_make(JV_MISSING);
	if (args->npos > nparams)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s() takes at most %zu argument(s) (%zu given)",
		                fname, nparams, args->npos);
	for (size_t i = 0; i < args->npos; i++)
		out[i] = args->pos[i];
	for (size_t k = 0; k < args->nkw; k++) {
		size_t i = 0;
		while (i < nparams && strcmp(params[i], args->kw[k]->s) != 0)
			i++;
		if (i == nparams)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "%s() got an unexpected keyword argument '%s'", fname,
			                args->kw[k]->s);
		if (out[i].t != JV_MISSING)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "%s() got multiple values for argument '%s'", fname,
			                params[i]);
		out[i] = args->kwv[k];
	}
	return MOE_OK;
}

/* ---- str methods ---- */

static moe_err want_str(const jstr **out, jv v, const char *fname)
{
	*out = &jstr_empty;
	if (v.t == JV_STR) {
		*out = v.s;
		return MOE_OK;
	}
	if (v.t == JV_UNDEF)
		return jr_undef_fail(v);
	return moe_fail(MOE_ERR_BAD_TYPE, "%s() argument must be str, not %s", fname,
	                jv_type_name(v));
}

static moe_err want_int(int64_t *out, jv v, int64_t dflt, const char *fname)
{
	*out = dflt;
	if (v.t == JV_MISSING || v.t == JV_NONE) {
		*out = dflt;
		return MOE_OK;
	}
	if (v.t == JV_INT || v.t == JV_BOOL) {
		*out = v.i;
		return MOE_OK;
	}
	return moe_fail(MOE_ERR_BAD_TYPE, "%s(): '%s' object cannot be interpreted as an integer",
	                fname, jv_type_name(v));
}

/* Python's slice clamping of start/end on a length. */
static void clamp_range(int64_t len, int64_t *start, int64_t *end)
{
	if (*start < 0)
		*start = *start + len < 0 ? 0 : *start + len;
	if (*end < 0)
		*end = *end + len < 0 ? 0 : *end + len;
	if (*end > len)
		*end = len;
}

/* The byte range of s between code points start and end (optional args). */
static moe_err sub_range(const jstr *s, jv st, jv en, const char *fname, size_t *bo, size_t *be,
                         size_t *co, int *empty)
{
	int64_t a, b;
	moe_err e = want_int(&a, st, 0, fname);
	if (!e)
		e = want_int(&b, en, (int64_t)s->ncp, fname);
	if (e)
		return e;
	clamp_range((int64_t)s->ncp, &a, &b);
	*empty = a > (int64_t)s->ncp || a > b;
	if (*empty) {
		*bo = *be = 0;
		*co = 0;
		return MOE_OK;
	}
	*bo = utf8_offset(s, (size_t)a);
	*be = utf8_offset(s, (size_t)b);
	*co = (size_t)a;
	return MOE_OK;
}

typedef int (*cp_pred)(uint32_t c, const jstr *chars);

static int pred_space(uint32_t c, const jstr *chars)
{
	(void)chars;
	return uc_isspace(c);
}

static int pred_chars(uint32_t c, const jstr *chars)
{
	size_t i = 0;
	while (i < chars->len)
		if (utf8_next(chars->s, chars->len, &i) == c)
			return 1;
	return 0;
}

static moe_err m_strip(jrender *r, jv *out, jv self, const jv *a, int left, int right)
{
	const jstr *s = self.s, *chars = NULL;
	if (a[0].t != JV_MISSING && a[0].t != JV_NONE) {
		moe_err e = want_str(&chars, a[0], "strip");
		if (e)
			return e;
	}
	cp_pred pred = chars ? pred_chars : pred_space;
	size_t b = 0, e = s->len;
	if (left) {
		while (b < e) {
			size_t j = b;
			if (!pred(utf8_next(s->s, e, &j), chars))
				break;
			b = j;
		}
	}
	if (right) {
		while (e > b) {
			size_t st = e - 1;
			while (st > b && ((unsigned char)s->s[st] & 0xC0) == 0x80)
				st--;
			size_t j = st;
			if (!pred(utf8_next(s->s, e, &j), chars))
				break;
			e = st;
		}
	}
	if (b == 0 && e == s->len) {
		*out = self;
		return MOE_OK;
	}
	const jstr *o = jstr_new(&r->arena, s->s + b, e - b);
	if (!o)
		return jr_nomem(r);
	*out = jv_str(o);
	out->fl = self.fl;
	return MOE_OK;
}

static moe_err push_piece(jrender *r, jlist *l, const char *p, size_t n, uint8_t fl)
{
	const jstr *s = jstr_new(&r->arena, p, n);
	if (!s)
		return jr_nomem(r);
	jv v = jv_str(s);
	v.fl = fl;
	return jlist_push(&r->arena, l, v);
}

static void reverse_list(jlist *l)
{
	for (size_t i = 0, j = l->n ? l->n - 1 : 0; i < j; i++, j--) {
		jv t = l->v[i];
		l->v[i] = l->v[j];
		l->v[j] = t;
	}
}

/* The start of the code point before byte i. */
static size_t prev_cp(const char *s, size_t i)
{
	i--;
	while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
		i--;
	return i;
}

static moe_err split_ws(jrender *r, jlist *l, const jstr *s, int64_t max, int rev, uint8_t fl)
{
	const char *p = s->s;
	size_t n = s->len;
	moe_err e = MOE_OK;
	if (!rev) {
		size_t i = 0, j;
		while (max-- > 0 && !e) {
			while (i < n) {
				size_t k = i;
				if (!uc_isspace(utf8_next(p, n, &k)))
					break;
				i = k;
			}
			if (i == n)
				break;
			j = i;
			while (i < n) {
				size_t k = i;
				if (uc_isspace(utf8_next(p, n, &k)))
					break;
				i = k;
			}
			e = push_piece(r, l, p + j, i - j, fl);
		}
		if (!e && i < n) {
			while (i < n) {
				size_t k = i;
				if (!uc_isspace(utf8_next(p, n, &k)))
					break;
				i = k;
			}
			if (i < n)
				e = push_piece(r, l, p + i, n - i, fl);
		}
		return e;
	}
	size_t i = n, j; /* i: end (exclusive) of what is left */
	while (max-- > 0 && !e) {
		while (i > 0) {
			size_t st = prev_cp(p, i), k = st;
			if (!uc_isspace(utf8_next(p, n, &k)))
				break;
			i = st;
		}
		if (i == 0)
			break;
		j = i;
		while (i > 0) {
			size_t st = prev_cp(p, i), k = st;
			if (uc_isspace(utf8_next(p, n, &k)))
				break;
			i = st;
		}
		e = push_piece(r, l, p + i, j - i, fl);
	}
	if (!e && i > 0) {
		while (i > 0) {
			size_t st = prev_cp(p, i), k = st;
			if (!uc_isspace(utf8_next(p, n, &k)))
				break;
			i = st;
		}
		if (i > 0)
			e = push_piece(r, l, p, i, fl);
	}
	reverse_list(l);
	return e;
}

static const char *rmemmem(const char *h, size_t hn, const char *nd, size_t nn)
{
	if (nn > hn)
		return NULL;
	for (size_t i = hn - nn + 1; i-- > 0;)
		if (memcmp(h + i, nd, nn) == 0)
			return h + i;
	return NULL;
}

static moe_err m_split(jrender *r, jv *out, jv self, const jv *a, int rev)
{
	const jstr *s = self.s, *sep = NULL;
	int64_t max;
	moe_err e = want_int(&max, a[1], -1, "split");
	if (e)
		return e;
	if (max < 0)
		max = INT64_MAX;
	if (a[0].t != JV_MISSING && a[0].t != JV_NONE) {
		e = want_str(&sep, a[0], "split");
		if (e)
			return e;
		if (sep->len == 0)
			return moe_fail(MOE_ERR_BAD_TYPE, "empty separator");
	}
	jlist *l = jlist_new(&r->arena, 0, JL_LIST);
	if (!l)
		return jr_nomem(r);
	*out = jv_list(l);
	uint8_t fl = self.fl;
	if (!sep)
		return split_ws(r, l, s, max, rev, fl);
	if (!rev) {
		const char *p = s->s, *end = s->s + s->len, *q;
		while (max-- > 0 && (q = memmem(p, (size_t)(end - p), sep->s, sep->len)) != NULL) {
			e = push_piece(r, l, p, (size_t)(q - p), fl);
			if (e)
				return e;
			p = q + sep->len;
		}
		return push_piece(r, l, p, (size_t)(end - p), fl);
	}
	size_t n = s->len;
	const char *q;
	while (max-- > 0 && (q = rmemmem(s->s, n, sep->s, sep->len)) != NULL) {
		size_t at = (size_t)(q - s->s);
		e = push_piece(r, l, q + sep->len, n - at - sep->len, fl);
		if (e)
			return e;
		n = at;
	}
	e = push_piece(r, l, s->s, n, fl);
	reverse_list(l);
	return e;
}

static int is_linebreak(uint32_t c)
{
	return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d ||
	       c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
}

moe_err jsplitlines(jrender *r, jlist *l, const jstr *s, int keepends, uint8_t fl)
{
	size_t i = 0, n = s->len;
	while (i < n) {
		size_t st = i, eol;
		for (;;) {
			if (i >= n) {
				eol = i;
				break;
			}
			size_t k = i;
			uint32_t c = utf8_next(s->s, n, &k);
			if (is_linebreak(c)) {
				eol = i;
				i = k;
				if (c == '\r' && i < n && s->s[i] == '\n')
					i++;
				break;
			}
			i = k;
		}
		moe_err e = push_piece(r, l, s->s + st, (keepends ? i : eol) - st, fl);
		if (e)
			return e;
	}
	return MOE_OK;
}

static moe_err affix_match(int *out, const jstr *s, jv affix, size_t bo, size_t be, int end,
                           const char *fname)
{
	if (affix.t == JV_LIST && affix.l->kind == JL_TUPLE) {
		*out = 0;
		for (size_t i = 0; i < affix.l->n && !*out; i++) {
			moe_err e = affix_match(out, s, affix.l->v[i], bo, be, end, fname);
			if (e)
				return e;
		}
		return MOE_OK;
	}
	if (affix.t != JV_STR)
		return moe_fail(MOE_ERR_BAD_TYPE,
		                "%s first arg must be str or a tuple of str, not %s", fname,
		                jv_type_name(affix));
	size_t k = affix.s->len;
	if (k > be - bo)
		*out = 0;
	else if (end)
		*out = memcmp(s->s + be - k, affix.s->s, k) == 0;
	else
		*out = memcmp(s->s + bo, affix.s->s, k) == 0;
	return MOE_OK;
}

static moe_err m_affix(jv *out, jv self, const jv *a, int end)
{
	const char *fname = end ? "endswith" : "startswith";
	if (a[0].t == JV_MISSING)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s() takes at least 1 argument (0 given)",
		                fname);
	size_t bo, be, co;
	int empty, m = 0;
	moe_err e = sub_range(self.s, a[1], a[2], fname, &bo, &be, &co, &empty);
	if (!e && !empty)
		e = affix_match(&m, self.s, a[0], bo, be, end, fname);
	*out = jv_bool(m);
	return e;
}

/* find, rfind, index, rindex, count */
static moe_err m_find(jv *out, jv self, const jv *a, int rev, int must, int count)
{
	const jstr *s = self.s, *sub;
	const char *fname = count ? "count" : rev ? "rfind" : "find";
	if (a[0].t == JV_MISSING)
		return moe_fail(MOE_ERR_BAD_TYPE, "%s() takes at least 1 argument (0 given)",
		                fname);
	moe_err e = want_str(&sub, a[0], fname);
	size_t bo, be, co;
	int empty;
	if (!e)
		e = sub_range(s, a[1], a[2], fname, &bo, &be, &co, &empty);
	if (e)
		return e;
	if (count) {
		int64_t c = 0;
		if (!empty) {
			if (sub->len == 0) {
				c = (int64_t)utf8_count(s->s + bo, be - bo) + 1;
			} else {
				const char *p = s->s + bo, *end = s->s + be, *q;
				while ((q = memmem(p, (size_t)(end - p), sub->s, sub->len)) !=
				       NULL) {
					c++;
					p = q + sub->len;
				}
			}
		}
		*out = jv_int(c);
		return MOE_OK;
	}
	const char *q = NULL;
	if (!empty)
		q = rev ? rmemmem(s->s + bo, be - bo, sub->s, sub->len)
		        : memmem(s->s + bo, be - bo, sub->s, sub->len);
	if (!q) {
		if (must)
			return moe_fail(MOE_ERR_BAD_TYPE, "substring not found");
		*out = jv_int(-1);
		return MOE_OK;
	}
	*out = jv_int((int64_t)(co + utf8_count(s->s + bo, (size_t)(q - (s->s + bo)))));
	return MOE_OK;
}

moe_err jstr_replace(jrender *r, jv *out, const jstr *s, const jstr *old, const jstr *new,
                     int64_t count, uint8_t fl)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	moe_err e = MOE_OK;
	if (count < 0)
		count = INT64_MAX;
	if (old->len == 0) {
		size_t i = 0;
		while (!e && count > 0) {
			e = jbuf_put(&b, new->s, new->len);
			count--;
			if (i >= s->len)
				break;
			size_t st = i;
			utf8_next(s->s, s->len, &i);
			if (!e)
				e = jbuf_put(&b, s->s + st, i - st);
		}
		if (!e && i < s->len)
			e = jbuf_put(&b, s->s + i, s->len - i);
	} else {
		const char *p = s->s, *end = s->s + s->len, *q;
		while (!e && count > 0 &&
		       (q = memmem(p, (size_t)(end - p), old->s, old->len)) != NULL) {
			e = jbuf_put(&b, p, (size_t)(q - p));
			if (!e)
				e = jbuf_put(&b, new->s, new->len);
			p = q + old->len;
			count--;
		}
		if (!e)
			e = jbuf_put(&b, p, (size_t)(end - p));
	}
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, fl);
}

moe_err jstr_case(jrender *r, jv *out, const jstr *s, int how, uint8_t fl)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	moe_err e = MOE_OK;
	size_t i = 0;
	int prev_cased = 0;
	while (i < s->len && !e) {
		uint32_t c = utf8_next(s->s, s->len, &i);
		switch (how) {
		case 0: /* lower */
			e = put_case(&b, c, CASE_LOWER);
			break;
		case 1: /* upper */
			e = put_case(&b, c, CASE_UPPER);
			break;
		case 2: /* title: str.title */
			e = put_case(&b, c, prev_cased ? CASE_LOWER : CASE_TITLE);
			prev_cased = uc_iscased(c);
			break;
		case 3: /* capitalize */
			e = put_case(&b, c, prev_cased ? CASE_LOWER : CASE_TITLE);
			prev_cased = 1;
			break;
		case 4: /* swapcase */
			e = put_case(&b, c, uc_isupper(c) ? CASE_LOWER : CASE_UPPER);
			break;
		}
	}
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, fl);
}

/* Jinja2's title filter: words split at runs of '-', whitespace, '(', '{',
 * '[', '<'; each word's first character upper-cased, the rest lower-cased. */
moe_err jstr_jtitle(jrender *r, jv *out, const jstr *s, uint8_t fl)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	moe_err e = MOE_OK;
	size_t i = 0;
	int start = 1;
	while (i < s->len && !e) {
		uint32_t c = utf8_next(s->s, s->len, &i);
		if (c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || uc_isspace(c)) {
			e = jbuf_putcp(&b, c);
			start = 1;
		} else {
			e = put_case(&b, c, start ? CASE_UPPER : CASE_LOWER);
			start = 0;
		}
	}
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, fl);
}

/* The number of \w+ runs of s, as Python's re counts them. */
int64_t jwordcount(const jstr *s)
{
	int64_t n = 0;
	int in = 0;
	size_t i = 0;
	while (i < s->len) {
		uint32_t c = utf8_next(s->s, s->len, &i);
		int w = c == '_' || uc_isalpha(c) || uc_isnum(c);
		n += w && !in;
		in = w;
	}
	return n;
}

/* str.center / ljust / rjust (how 0, 1, 2) and zfill (3). */
static moe_err m_pad(jrender *r, jv *out, jv self, const jv *a, int how)
{
	int64_t width;
	moe_err e = want_int(&width, a[0], -1, "center");
	if (e)
		return e;
	if (a[0].t == JV_MISSING)
		return moe_fail(MOE_ERR_BAD_TYPE, "takes at least 1 argument (0 given)");
	const jstr *fill = NULL, *s = self.s;
	if (how != 3 && a[1].t != JV_MISSING) {
		e = want_str(&fill, a[1], "center");
		if (e)
			return e;
		if (fill->ncp != 1)
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "The fill character must be exactly one character long");
	}
	if (width <= (int64_t)s->ncp) {
		*out = self;
		return MOE_OK;
	}
	if (width > (int64_t)r->max_output)
		return moe_fail(MOE_ERR_OVERFLOW, "padding width too large");
	int64_t marg = width - (int64_t)s->ncp, left;
	if (how == 0)
		left = marg / 2 + (marg & width & 1);
	else if (how == 1)
		left = 0;
	else
		left = marg;
	const char *fp = fill ? fill->s : how == 3 ? "0" : " ";
	size_t fl = fill ? fill->len : 1;
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	size_t i0 = 0;
	if (how == 3 && s->len && (s->s[0] == '+' || s->s[0] == '-')) {
		e = jbuf_putc(&b, s->s[0]);
		i0 = 1;
	}
	for (int64_t i = 0; i < left && !e; i++)
		e = jbuf_put(&b, fp, fl);
	if (!e)
		e = jbuf_put(&b, s->s + i0, s->len - i0);
	for (int64_t i = left; i < marg && !e; i++)
		e = jbuf_put(&b, fp, fl);
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, self.fl);
}

static moe_err m_join(jrender *r, jv *out, jv self, const jv *a)
{
	const jv *items;
	size_t n;
	moe_err e = jr_iter(r, &items, &n, a[0]);
	if (e)
		return e;
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	int markup = self.fl & JVF_MARKUP;
	for (size_t i = 0; i < n && !e; i++) {
		if (items[i].t != JV_STR) {
			jbuf_free(&b);
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "sequence item %zu: expected str instance, %s found", i,
			                jv_type_name(items[i]));
		}
		if (i)
			e = jbuf_put(&b, self.s->s, self.s->len);
		const jstr *it = items[i].s;
		if (!e && markup && !(items[i].fl & JVF_MARKUP))
			e = jr_escape(r, &it, it);
		if (!e)
			e = jbuf_put(&b, it->s, it->len);
	}
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, self.fl);
}

static moe_err m_partition(jrender *r, jv *out, jv self, const jv *a, int rev)
{
	const jstr *sep, *s = self.s;
	moe_err e = want_str(&sep, a[0], "partition");
	if (e)
		return e;
	if (sep->len == 0)
		return moe_fail(MOE_ERR_BAD_TYPE, "empty separator");
	const char *q =
	    rev ? rmemmem(s->s, s->len, sep->s, sep->len) : memmem(s->s, s->len, sep->s, sep->len);
	jlist *l = jlist_new(&r->arena, 3, JL_TUPLE);
	if (!l)
		return jr_nomem(r);
	*out = jv_list(l);
	if (!q) {
		if (rev) {
			e = push_piece(r, l, "", 0, self.fl);
			if (!e)
				e = push_piece(r, l, "", 0, self.fl);
			if (!e)
				e = push_piece(r, l, s->s, s->len, self.fl);
		} else {
			e = push_piece(r, l, s->s, s->len, self.fl);
			if (!e)
				e = push_piece(r, l, "", 0, self.fl);
			if (!e)
				e = push_piece(r, l, "", 0, self.fl);
		}
		return e;
	}
	size_t at = (size_t)(q - s->s);
	e = push_piece(r, l, s->s, at, self.fl);
	if (!e)
		e = push_piece(r, l, sep->s, sep->len, self.fl);
	if (!e)
		e = push_piece(r, l, q + sep->len, s->len - at - sep->len, self.fl);
	return e;
}

/* is* predicates: what 0 alpha, 1 digit/decimal, 2 alnum, 3 space, 4 lower,
 * 5 upper, 6 ascii, 7 printable, 8 title */
static int m_is(const jstr *s, int what)
{
	size_t i = 0;
	int cased = 0, prev_cased = 0;
	if (s->len == 0)
		return what == 6 || what == 7;
	while (i < s->len) {
		uint32_t c = utf8_next(s->s, s->len, &i);
		switch (what) {
		case 0:
			if (!uc_isalpha(c))
				return 0;
			break;
		case 1:
			if (uc_cat(c) != UTF8PROC_CATEGORY_ND)
				return 0;
			break;
		case 2:
			if (!uc_isalpha(c) && !uc_isnum(c))
				return 0;
			break;
		case 3:
			if (!uc_isspace(c))
				return 0;
			break;
		case 4:
			if (uc_isupper(c) || uc_cat(c) == UTF8PROC_CATEGORY_LT)
				return 0;
			cased |= uc_islower(c);
			break;
		case 5:
			if (uc_islower(c) || uc_cat(c) == UTF8PROC_CATEGORY_LT)
				return 0;
			cased |= uc_isupper(c);
			break;
		case 6:
			if (c >= 0x80)
				return 0;
			break;
		case 7:
			if (!uc_isprintable(c))
				return 0;
			break;
		case 8:
			if (uc_isupper(c) || uc_cat(c) == UTF8PROC_CATEGORY_LT) {
				if (prev_cased)
					return 0;
				prev_cased = cased = 1;
			} else if (uc_islower(c)) {
				if (!prev_cased)
					return 0;
				prev_cased = cased = 1;
			} else {
				prev_cased = 0;
			}
			break;
		}
	}
	return (what == 4 || what == 5 || what == 8) ? cased : 1;
}

/* ---- printf-style formatting (str % args) and str.format ---- */

/* The widest field or longest precision a % format takes: tmp below holds
 * any number printed within it. */
#define FMT_MAX_FIELD 4096

/* %c's argument: a one-character string (*s) or an integer code point
 * in 0..0x10FFFF that is not a surrogate (UTF-8 has none) (*cp). */
static moe_err char_of(const jstr **s, uint32_t *cp, jv arg)
{
	if (arg.t == JV_STR) {
		if (arg.s->ncp != 1)
			return moe_fail(MOE_ERR_BAD_TYPE, "%%c requires an int or a char");
		*s = arg.s;
		return MOE_OK;
	}
	if (arg.t != JV_INT && arg.t != JV_BOOL)
		return moe_fail(MOE_ERR_BAD_TYPE, "%%c requires an int or a char, not %s",
		                jv_type_name(arg));
	if (arg.i < 0 || arg.i > 0x10FFFF || (arg.i >= 0xD800 && arg.i <= 0xDFFF))
		return moe_fail(MOE_ERR_BAD_TYPE, "%%c arg not in range(0x110000) or a surrogate");
	*cp = (uint32_t)arg.i;
	return MOE_OK;
}

moe_err jfmt_percent(jrender *r, jv *out, const jstr *fmt, jv args)
{
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	const jv *argv = &args;
	size_t argc = 1, ai = 0;
	int is_map = args.t == JV_DICT;
	moe_err e = MOE_OK;
	if (args.t == JV_LIST && args.l->kind == JL_TUPLE) {
		argv = args.l->v;
		argc = args.l->n;
	}
	const char *p = fmt->s, *end = fmt->s + fmt->len;
	while (p < end && !e) {
		const char *q = memchr(p, '%', (size_t)(end - p));
		if (!q) {
			e = jbuf_put(&b, p, (size_t)(end - p));
			break;
		}
		e = jbuf_put(&b, p, (size_t)(q - p));
		if (e)
			break;
		p = q + 1;
		if (p < end && *p == '%') {
			e = jbuf_putc(&b, '%');
			p++;
			continue;
		}
		jv arg;
		if (p < end && *p == '(') {
			const char *k = memchr(p, ')', (size_t)(end - p));
			if (!k || !is_map) {
				e = moe_fail(MOE_ERR_BAD_TYPE, "format requires a mapping");
				break;
			}
			jv *v = jdict_get(args.d, p + 1, (size_t)(k - p - 1));
			if (!v) {
				e = moe_fail(MOE_ERR_BAD_TYPE, "KeyError in %% formatting");
				break;
			}
			arg = *v;
			p = k + 1;
		} else {
			if (ai >= argc) {
				e = moe_fail(MOE_ERR_BAD_TYPE,
				             "not enough arguments for format string");
				break;
			}
			arg = argv[ai++];
		}
		char spec[32] = "%";
		size_t sl = 1;
		/* a NUL byte is text here, not the end of strchr's set */
		while (p < end && *p != '\0' && strchr("-+ #0123456789.", *p) && sl < 20)
			spec[sl++] = *p++;
		if (p >= end) {
			e = moe_fail(MOE_ERR_BAD_TYPE, "incomplete format");
			break;
		}
		char conv = *p++;
		/* flags ('-'), width and precision: for %s, %r and %c they count
		 * code points; the numbers' go to snprintf, bounded so that its
		 * output fits tmp */
		int left = 0;
		size_t k = 1, width = 0, prec = SIZE_MAX;
		while (k < sl && strchr("-+ #0", spec[k]))
			left |= spec[k++] == '-';
		while (k < sl && spec[k] >= '0' && spec[k] <= '9') /* < 20 digits: no overflow */
			width = width * 10 + (size_t)(spec[k++] - '0');
		if (k < sl && spec[k] == '.') {
			prec = 0;
			for (k++; k < sl && spec[k] >= '0' && spec[k] <= '9'; k++)
				prec = prec * 10 + (size_t)(spec[k] - '0');
		}
		if (k < sl) { /* "%1.2.3d", "%1-d": Python refuses them too */
			e = moe_fail(MOE_ERR_BAD_TYPE, "unsupported format character 0x%02x",
			             (unsigned char)spec[k]);
			break;
		}
		if (width > FMT_MAX_FIELD || (prec != SIZE_MAX && prec > FMT_MAX_FIELD)) {
			e = moe_fail(MOE_ERR_UNSUPPORTED,
			             "%% format: a width or precision over %d is not supported",
			             FMT_MAX_FIELD);
			break;
		}
		if (conv == 's' || conv == 'r' || conv == 'c') {
			const jstr *s = NULL;
			uint32_t cp = 0;
			size_t ncp = 1;
			if (conv == 'c') {
				e = char_of(&s, &cp, arg);
				if (e)
					break;
			} else {
				e = conv == 's' ? jr_str(r, &s, arg) : jr_repr(r, &s, arg);
				if (e)
					break;
				ncp = s->ncp < prec ? s->ncp : prec;
			}
			size_t pad = width > ncp ? width - ncp : 0;
			for (size_t i = 0; i < pad && !left && !e; i++)
				e = jbuf_putc(&b, ' ');
			if (!e)
				e = s ? jbuf_put(&b, s->s, utf8_offset(s, ncp))
				      : jbuf_putcp(&b, cp);
			for (size_t i = 0; i < pad && left && !e; i++)
				e = jbuf_putc(&b, ' ');
		} else if (conv != '\0' && strchr("diouxXeEfFgG", conv) && jv_is_num(arg)) {
			char tmp[FMT_MAX_FIELD + 400]; /* sign, 309 digits, '.', precision */
			if (strchr("diouxX", conv)) {
				if (arg.t == JV_FLOAT && strchr("oxX", conv)) {
					e = moe_fail(
					    MOE_ERR_BAD_TYPE,
					    "%%%c format: an integer is required, not float", conv);
					break;
				}
				long long v =
				    arg.t == JV_FLOAT ? (long long)arg.f : (long long)arg.i;
				if (conv == 'i' || conv == 'u')
					conv = 'd';
				spec[sl++] = 'l';
				spec[sl++] = 'l';
				spec[sl++] = conv;
				spec[sl] = 0;
				snprintf(tmp, sizeof(tmp), spec, v);
			} else {
				spec[sl++] = conv;
				spec[sl] = 0;
				snprintf(tmp, sizeof(tmp), spec, jv_num(arg));
			}
			e = jbuf_puts(&b, tmp);
		} else if (conv == '\0' || !strchr("diouxXeEfFgG", conv)) {
			e = moe_fail(MOE_ERR_BAD_TYPE, "unsupported format character 0x%02x",
			             (unsigned char)conv);
		} else {
			e = moe_fail(MOE_ERR_BAD_TYPE, "%%%c format: a number is required, not %s",
			             conv, jv_type_name(arg));
		}
	}
	if (!e && !is_map && ai < argc)
		e = moe_fail(MOE_ERR_BAD_TYPE,
		             "not all arguments converted during string formatting");
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, 0);
}

static moe_err m_format(jrender *r, jv *out, jv self, const jargs *a)
{
	const jstr *f = self.s;
	jbuf b = {.limit = r->max_output, .acct = &r->arena};
	size_t auto_i = 0, i = 0;
	moe_err e = MOE_OK;
	while (i < f->len && !e) {
		char c = f->s[i];
		if (c == '{' && i + 1 < f->len && f->s[i + 1] == '{') {
			e = jbuf_putc(&b, '{');
			i += 2;
			continue;
		}
		if (c == '}') {
			if (i + 1 < f->len && f->s[i + 1] == '}') {
				e = jbuf_putc(&b, '}');
				i += 2;
				continue;
			}
			e = moe_fail(MOE_ERR_BAD_TYPE, "Single '}' encountered in format string");
			break;
		}
		if (c != '{') {
			e = jbuf_putc(&b, c);
			i++;
			continue;
		}
		const char *close = memchr(f->s + i, '}', f->len - i);
		if (!close) {
			e = moe_fail(MOE_ERR_BAD_TYPE, "Single '{' encountered in format string");
			break;
		}
		const char *fs = f->s + i + 1;
		size_t fn = (size_t)(close - fs);
		i = (size_t)(close - f->s) + 1;
		int conv_r = 0;
		if (fn >= 2 && fs[fn - 2] == '!' && (fs[fn - 1] == 'r' || fs[fn - 1] == 's')) {
			conv_r = fs[fn - 1] == 'r';
			fn -= 2;
		}
		if (memchr(fs, ':', fn) || memchr(fs, '.', fn) || memchr(fs, '[', fn) ||
		    memchr(fs, '!', fn)) {
			e = moe_fail(MOE_ERR_UNSUPPORTED,
			             "unsupported: format specs and field access in str.format");
			break;
		}
		jv arg = jv_make(JV_MISSING);
		if (fn == 0) {
			if (auto_i < a->npos)
				arg = a->pos[auto_i++];
		} else if (fs[0] >= '0' && fs[0] <= '9') {
			size_t k = (size_t)strtoul(fs, NULL, 10);
			if (k < a->npos)
				arg = a->pos[k];
		} else {
			for (size_t k = 0; k < a->nkw; k++)
				if (a->kw[k]->len == fn && memcmp(a->kw[k]->s, fs, fn) == 0)
					arg = a->kwv[k];
		}
		if (arg.t == JV_MISSING) {
			e = moe_fail(MOE_ERR_BAD_TYPE, "Replacement index out of range for format");
			break;
		}
		const jstr *s;
		e = conv_r ? jr_repr(r, &s, arg) : jr_str(r, &s, arg);
		if (!e)
			e = jbuf_put(&b, s->s, s->len);
	}
	if (e) {
		jbuf_free(&b);
		return e;
	}
	return buf_to_str(r, out, &b, self.fl);
}

/* ---- dispatch ---- */

static const char *const str_methods[] = {
    "strip",      "lstrip",      "rstrip",  "split",        "rsplit",       "splitlines",
    "startswith", "endswith",    "find",    "rfind",        "index",        "rindex",
    "count",      "replace",     "lower",   "upper",        "title",        "capitalize",
    "swapcase",   "center",      "ljust",   "rjust",        "zfill",        "join",
    "partition",  "rpartition",  "format",  "removeprefix", "removesuffix", "isalpha",
    "isdigit",    "isdecimal",   "isalnum", "isspace",      "islower",      "isupper",
    "isascii",    "isprintable", "istitle", "isnumeric",
};

static const char *const list_methods[] = {"index", "count", "copy"};
static const char *const dict_methods[] = {"get", "items", "keys", "values", "copy"};
static const char *const list_unsafe[] = {"append", "reverse", "insert",
                                          "sort",   "extend",  "remove"};
static const char *const dict_unsafe[] = {"clear", "pop", "popitem", "setdefault", "update"};
static const char *const refused[] = {
    "casefold", "encode", "expandtabs", "format_map", "isidentifier", "maketrans", "translate",
    "fromkeys", "pop",    "clear",      "popitem",    "setdefault",   "update",    "append",
    "extend",   "insert", "remove",     "sort",       "reverse"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int in_list(const char *const *list, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(list[i]) == len && memcmp(list[i], name, len) == 0)
			return 1;
	return 0;
}

int jmethod_refused(const char *name, size_t n)
{
	return in_list(refused, COUNT(refused), name, n);
}

int jhas_method(jv v, const char *name, size_t n)
{
	switch (v.t) {
	case JV_STR:
		return in_list(str_methods, COUNT(str_methods), name, n);
	case JV_LIST:
		if (v.l->kind == JL_LIST || v.l->kind == JL_TUPLE || v.l->kind == JL_RANGE)
			return in_list(list_methods, COUNT(list_methods) - (v.l->kind != JL_LIST),
			               name, n);
		return 0;
	case JV_DICT:
		return in_list(dict_methods, COUNT(dict_methods), name, n);
	case JV_LOOP:
		return (n == 5 && memcmp(name, "cycle", 5) == 0) ||
		       (n == 7 && memcmp(name, "changed", 7) == 0);
	default:
		return 0;
	}
}

int junsafe_method(jv v, const char *name, size_t n)
{
	if (v.t == JV_LIST && v.l->kind == JL_LIST)
		return in_list(list_unsafe, COUNT(list_unsafe), name, n);
	if (v.t == JV_DICT)
		return in_list(dict_unsafe, COUNT(dict_unsafe), name, n);
	return 0;
}

static moe_err dict_view(jrender *r, jv *out, const jdict *d, int kind)
{
	jlist *l = jlist_new(&r->arena, d->n, kind);
	if (!l)
		return jr_nomem(r);
	for (size_t i = 0; i < d->n; i++) {
		if (kind == JL_KEYS) {
			l->v[i] = jv_str(d->e[i].k);
		} else if (kind == JL_VALUES) {
			l->v[i] = d->e[i].v;
		} else {
			jlist *pair = jlist_new(&r->arena, 2, JL_TUPLE);
			if (!pair)
				return jr_nomem(r);
			pair->v[0] = jv_str(d->e[i].k);
			pair->v[1] = d->e[i].v;
			pair->n = 2;
			l->v[i] = jv_list(pair);
		}
	}
	l->n = d->n;
	*out = jv_list(l);
	return jr_steps(r, d->n);
}

moe_err jdict_items(jrender *r, jv *out, const jdict *d, int kind)
{
	return dict_view(r, out, d, kind);
}

static moe_err call_loop(jrender *r, jv *out, jloop *lp, const char *name, const jargs *a)
{
	if (a->nkw)
		return moe_fail(MOE_ERR_BAD_TYPE, "loop.%s() takes no keyword arguments", name);
	if (strcmp(name, "cycle") == 0) {
		if (!a->npos)
			return moe_fail(MOE_ERR_BAD_TYPE, "no items for cycling given");
		*out = a->pos[lp->i % a->npos];
		return MOE_OK;
	}
	jlist *l = jlist_new(&r->arena, a->npos, JL_TUPLE);
	if (!l)
		return jr_nomem(r);
	jv_copy(l->v, 0, a->pos, a->npos);
	l->n = a->npos;
	jv now = jv_list(l);
	int changed = lp->changed.t == JV_MISSING || !jv_eq(lp->changed, now);
	if (changed)
		lp->changed = now;
	*out = jv_bool(changed);
	return MOE_OK;
}

static moe_err escape_args(jrender *r, jv *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i].t == JV_STR && !(v[i].fl & JVF_MARKUP)) {
			const jstr *s;
			moe_err e = jr_escape(r, &s, v[i].s);
			if (e)
				return e;
			v[i].s = s;
			v[i].fl = JVF_MARKUP;
		}
	return MOE_OK;
}

static moe_err call_str(jrender *r, jv *out, jv self, const char *n, const jargs *args)
{
	static const char *const p3[] = {"a", "b", "c"};
	static const char *const psplit[] = {"sep", "maxsplit"};
	jv a[3];
	moe_err e;
	if (strcmp(n, "format") == 0)
		return m_format(r, out, self, args);
	e = jbind_args(a, n, strcmp(n, "split") == 0 || strcmp(n, "rsplit") == 0 ? psplit : p3,
	               strcmp(n, "split") == 0 || strcmp(n, "rsplit") == 0 ? 2 : 3, args);
	if (e)
		return e;
	int markup = self.fl & JVF_MARKUP;
	if (markup && strcmp(n, "startswith") != 0 && strcmp(n, "endswith") != 0 &&
	    strcmp(n, "find") != 0 && strcmp(n, "rfind") != 0 && strcmp(n, "index") != 0 &&
	    strcmp(n, "rindex") != 0 && strcmp(n, "count") != 0 && strncmp(n, "is", 2) != 0 &&
	    strcmp(n, "join") != 0) {
		e = escape_args(r, a, 3);
		if (e)
			return e;
	}
	if (strcmp(n, "strip") == 0)
		return m_strip(r, out, self, a, 1, 1);
	if (strcmp(n, "lstrip") == 0)
		return m_strip(r, out, self, a, 1, 0);
	if (strcmp(n, "rstrip") == 0)
		return m_strip(r, out, self, a, 0, 1);
	if (strcmp(n, "split") == 0)
		return m_split(r, out, self, a, 0);
	if (strcmp(n, "rsplit") == 0)
		return m_split(r, out, self, a, 1);
	if (strcmp(n, "splitlines") == 0) {
		jlist *l = jlist_new(&r->arena, 0, JL_LIST);
		if (!l)
			return jr_nomem(r);
		*out = jv_list(l);
		return jsplitlines(r, l, self.s, jv_truthy(a[0]), self.fl);
	}
	if (strcmp(n, "startswith") == 0)
		return m_affix(out, self, a, 0);
	if (strcmp(n, "endswith") == 0)
		return m_affix(out, self, a, 1);
	if (strcmp(n, "find") == 0)
		return m_find(out, self, a, 0, 0, 0);
	if (strcmp(n, "rfind") == 0)
		return m_find(out, self, a, 1, 0, 0);
	if (strcmp(n, "index") == 0)
		return m_find(out, self, a, 0, 1, 0);
	if (strcmp(n, "rindex") == 0)
		return m_find(out, self, a, 1, 1, 0);
	if (strcmp(n, "count") == 0)
		return m_find(out, self, a, 0, 0, 1);
	if (strcmp(n, "replace") == 0) {
		const jstr *old, *new;
		int64_t count;
		e = want_str(&old, a[0], "replace");
		if (!e)
			e = want_str(&new, a[1], "replace");
		if (!e)
			e = want_int(&count, a[2], -1, "replace");
		return e ? e : jstr_replace(r, out, self.s, old, new, count, self.fl);
	}
	static const char *const cases[] = {"lower", "upper", "title", "capitalize", "swapcase"};
	for (int k = 0; k < 5; k++)
		if (strcmp(n, cases[k]) == 0)
			return jstr_case(r, out, self.s, k, self.fl);
	if (strcmp(n, "center") == 0)
		return m_pad(r, out, self, a, 0);
	if (strcmp(n, "ljust") == 0)
		return m_pad(r, out, self, a, 1);
	if (strcmp(n, "rjust") == 0)
		return m_pad(r, out, self, a, 2);
	if (strcmp(n, "zfill") == 0)
		return m_pad(r, out, self, a, 3);
	if (strcmp(n, "join") == 0)
		return m_join(r, out, self, a);
	if (strcmp(n, "partition") == 0)
		return m_partition(r, out, self, a, 0);
	if (strcmp(n, "rpartition") == 0)
		return m_partition(r, out, self, a, 1);
	if (strcmp(n, "removeprefix") == 0 || strcmp(n, "removesuffix") == 0) {
		const jstr *x, *s = self.s, *sub;
		int suffix = n[6] == 's';
		e = want_str(&x, a[0], n);
		if (e)
			return e;
		*out = self;
		if (x->len == 0 || x->len > s->len)
			return MOE_OK;
		if (!suffix && memcmp(s->s, x->s, x->len) == 0)
			sub = jr_substr(r, s, x->ncp, s->ncp);
		else if (suffix && memcmp(s->s + s->len - x->len, x->s, x->len) == 0)
			sub = jr_substr(r, s, 0, s->ncp - x->ncp);
		else
			return MOE_OK;
		if (!sub)
			return jr_nomem(r);
		out->s = sub;
		return MOE_OK;
	}
	static const char *const preds[] = {"isalpha", "isdigit",   "isalnum",  "isspace",
	                                    "islower", "isupper",   "isascii",  "isprintable",
	                                    "istitle", "isdecimal", "isnumeric"};
	static const int what[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1};
	for (size_t k = 0; k < COUNT(preds); k++)
		if (strcmp(n, preds[k]) == 0) {
			*out = jv_bool(m_is(self.s, what[k]));
			return MOE_OK;
		}
	return moe_fail(MOE_ERR_BAD_TYPE, "'str' object has no attribute '%s'", n);
}

moe_err jcall_method(jrender *r, jv *out, jv self, const jstr *name, const jargs *args)
{
	const char *n = name->s;
	jv a[2];
	moe_err e;
	switch (self.t) {
	case JV_STR:
		return call_str(r, out, self, n, args);
	case JV_LOOP:
		return call_loop(r, out, self.lp, n, args);
	case JV_DICT:
		if (strcmp(n, "get") == 0) {
			static const char *const p[] = {"key", "default"};
			e = jbind_args(a, "get", p, 2, args);
			if (e)
				return e;
			if (a[0].t == JV_MISSING)
				return moe_fail(MOE_ERR_BAD_TYPE,
				                "get expected at least 1 argument");
			jv *v = a[0].t == JV_STR ? jdict_get(self.d, a[0].s->s, a[0].s->len) : NULL;
			*out = v ? *v : a[1].t == JV_MISSING ? jv_make(JV_NONE) : a[1];
			return MOE_OK;
		}
		if (args->npos || args->nkw)
			return moe_fail(MOE_ERR_BAD_TYPE, "%s() takes no arguments", n);
		if (strcmp(n, "items") == 0)
			return dict_view(r, out, self.d, JL_ITEMS);
		if (strcmp(n, "keys") == 0)
			return dict_view(r, out, self.d, JL_KEYS);
		if (strcmp(n, "values") == 0)
			return dict_view(r, out, self.d, JL_VALUES);
		if (strcmp(n, "copy") == 0) {
			jdict *d = jdict_new(&r->arena, self.d->n);
			if (!d)
				return jr_nomem(r);
			for (size_t i = 0; i < self.d->n; i++)
				if ((e = jdict_set(&r->arena, d, self.d->e[i].k, self.d->e[i].v)))
					return e;
			*out = jv_dict(d);
			return MOE_OK;
		}
		break;
	case JV_LIST:
		if (strcmp(n, "copy") == 0) {
			jlist *l = jlist_new(&r->arena, self.l->n, JL_LIST);
			if (!l)
				return jr_nomem(r);
			jv_copy(l->v, 0, self.l->v, self.l->n);
			l->n = self.l->n;
			*out = jv_list(l);
			return MOE_OK;
		}
		if (strcmp(n, "index") == 0 || strcmp(n, "count") == 0) {
			static const char *const p[] = {"value"};
			e = jbind_args(a, n, p, 1, args);
			if (e)
				return e;
			int64_t c = 0;
			for (size_t i = 0; i < self.l->n; i++)
				if (jv_eq(self.l->v[i], a[0])) {
					if (n[0] == 'i') {
						*out = jv_int((int64_t)i);
						return MOE_OK;
					}
					c++;
				}
			if (n[0] == 'i')
				return moe_fail(MOE_ERR_BAD_TYPE, "value is not in list");
			*out = jv_int(c);
			return MOE_OK;
		}
		break;
	default:
		break;
	}
	return moe_fail(MOE_ERR_BAD_TYPE, "'%s' object has no attribute '%s'", jv_type_name(self),
	                n);
}
