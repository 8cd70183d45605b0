/*
 * regex.c - the regex subset of JSON schema "pattern" into a grammar
 * expression over the JSON-encoded string: literals (written as JSON writes
 * them, escapes included), classes and `.` (only characters JSON holds
 * unescaped), \d \w \s and their negations, groups, alternation, greedy or
 * lazy quantifiers, ^ and $ at the ends; an unanchored end matches any
 * characters.  Everything else is refused by name.
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

#define R_MAX_NEST 32

/* Any JSON string character (as schema.c writes it). */
#define ANY_CHAR                                                                                   \
	"( [^\"\\\\\\x00-\\x1F\\x7F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-C] "           \
	"[0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3} ) ) )"

typedef struct rx {
	const unsigned char *s;
	size_t len, pos;
	g_buf *out;
	int depth;
	int top_alts; /* alternatives at the top level */
	moe_err err;
} rx;

static int rfail(rx *r, moe_err err, const char *what)
{
	if (r->err == MOE_OK)
		r->err = moe_fail(err, "json schema pattern: %s (at offset %zu)", what, r->pos);
	return -1;
}

static int rpeek(const rx *r)
{
	return r->pos < r->len ? r->s[r->pos] : -1;
}

/* A code point of the pattern (UTF-8). */
static int read_cp(rx *r, uint32_t *cp)
{
	const int k = g_utf8_next((const uint8_t *)r->s + r->pos, r->len - r->pos, cp);
	if (k == 0)
		return rfail(r, MOE_ERR_FORMAT, "invalid UTF-8");
	r->pos += (size_t)k;
	return 0;
}

/* Ranges of code points, pairs in a g_vec. */
static int add_range(rx *r, g_vec *v, uint32_t lo, uint32_t hi)
{
	if (g_vec_reserve(v, 2) != MOE_OK)
		return rfail(r, MOE_ERR_NOMEM, "class");
	v->v[v->n++] = lo;
	v->v[v->n++] = hi;
	return 0;
}

static int cmp_pair(const void *a, const void *b)
{
	const uint32_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Sorts and merges, complements when negate, then removes what JSON must
 * escape (controls, '"', '\\', DEL) and the surrogates. */
static int finish_class(rx *r, g_vec *v, int negate)
{
	size_t n = v->n / 2, m = 0;
	if (n > 0)
		qsort(v->v, n, 2 * sizeof(uint32_t), cmp_pair);
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && v->v[2 * i] <= v->v[2 * (m - 1) + 1] + 1) {
			if (v->v[2 * i + 1] > v->v[2 * (m - 1) + 1])
				v->v[2 * (m - 1) + 1] = v->v[2 * i + 1];
		} else {
			v->v[2 * m] = v->v[2 * i];
			v->v[2 * m + 1] = v->v[2 * i + 1];
			m++;
		}
	}
	g_vec out = {0};
	static const uint32_t holes[][2] = {
	    {0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0x7F, 0x7F}, {0xD800, 0xDFFF}};
	uint32_t lo = 0;
	for (size_t i = 0; i <= m; i++) {
		/* the piece [a, b] to keep: a range, or (negate) a gap */
		uint32_t a, b;
		if (negate) {
			if (i < m) {
				if (v->v[2 * i] == 0) {
					lo = v->v[2 * i + 1] + 1;
					continue;
				}
				a = lo;
				b = v->v[2 * i] - 1;
				lo = v->v[2 * i + 1] + 1;
			} else {
				if (lo > 0x10FFFF)
					break;
				a = lo;
				b = 0x10FFFF;
			}
		} else {
			if (i == m)
				break;
			a = v->v[2 * i];
			b = v->v[2 * i + 1];
		}
		if (a > b)
			continue;
		/* minus the holes (sorted, disjoint) */
		for (size_t h = 0; h < sizeof holes / sizeof holes[0] && a <= b; h++) {
			if (holes[h][1] < a || holes[h][0] > b)
				continue;
			if (holes[h][0] > a && add_range(r, &out, a, holes[h][0] - 1)) {
				free(out.v);
				return -1;
			}
			a = holes[h][1] + 1;
		}
		if (a <= b && add_range(r, &out, a, b)) {
			free(out.v);
			return -1;
		}
	}
	free(v->v);
	*v = out;
	return 0;
}

static void put_class(rx *r, const g_vec *v)
{
	g_buf_puts(r->out, "[");
	for (size_t i = 0; i < v->n; i += 2) {
		g_buf_printf(r->out, "\\U%08X", v->v[i]);
		if (v->v[i + 1] != v->v[i])
			g_buf_printf(r->out, "-\\U%08X", v->v[i + 1]);
	}
	g_buf_puts(r->out, "]");
}

/* The class of \d \w \s (upper case: negated) into v. */
static int shorthand(rx *r, g_vec *v, int c, int *negate)
{
	*negate = c == 'D' || c == 'W' || c == 'S';
	switch (c | 0x20) {
	case 'd':
		return add_range(r, v, '0', '9');
	case 'w':
		return add_range(r, v, '0', '9') || add_range(r, v, 'A', 'Z') ||
		       add_range(r, v, 'a', 'z') || add_range(r, v, '_', '_');
	default: /* s */
		return add_range(r, v, ' ', ' ') || add_range(r, v, '\t', '\r') ||
		       add_range(r, v, 0xA0, 0xA0) || add_range(r, v, 0x2028, 0x2029) ||
		       add_range(r, v, 0xFEFF, 0xFEFF);
	}
}

/* An escaped single character (after the backslash) as a code point. */
static int escaped_char(rx *r, uint32_t *cp)
{
	int c = rpeek(r);
	if (c < 0)
		return rfail(r, MOE_ERR_FORMAT, "escape at the end");
	r->pos++;
	switch (c) {
	case 'n':
		*cp = '\n';
		return 0;
	case 't':
		*cp = '\t';
		return 0;
	case 'r':
		*cp = '\r';
		return 0;
	case 'f':
		*cp = '\f';
		return 0;
	case 'v':
		*cp = '\v';
		return 0;
	case 'x':
	case 'u': {
		int k = c == 'x' ? 2 : 4;
		uint32_t v = 0;
		for (int i = 0; i < k; i++) {
			int h = rpeek(r);
			int d = h >= '0' && h <= '9'                     ? h - '0'
			        : (h | 0x20) >= 'a' && (h | 0x20) <= 'f' ? (h | 0x20) - 'a' + 10
			                                                 : -1;
			if (d < 0)
				return rfail(r, MOE_ERR_FORMAT, "bad hex escape");
			v = v * 16 + (uint32_t)d;
			r->pos++;
		}
		*cp = v;
		return 0;
	}
	default:
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
			r->pos--;
			return rfail(
			    r, MOE_ERR_UNSUPPORTED,
			    "escape (word boundaries, back references, \\p and the like are "
			    "not supported)");
		}
		*cp = (uint32_t)c;
		return 0;
	}
}

/* A literal code point as JSON writes it inside a string. */
static void put_char(rx *r, uint32_t cp)
{
	g_buf_puts(r->out, "\"");
	switch (cp) {
	case '"':
		g_buf_puts(r->out, "\\\\\\\"");
		break;
	case '\\':
		g_buf_puts(r->out, "\\\\\\\\");
		break;
	case '\n':
		g_buf_puts(r->out, "\\\\n");
		break;
	case '\t':
		g_buf_puts(r->out, "\\\\t");
		break;
	case '\r':
		g_buf_puts(r->out, "\\\\r");
		break;
	case '\b':
		g_buf_puts(r->out, "\\\\b");
		break;
	case '\f':
		g_buf_puts(r->out, "\\\\f");
		break;
	default:
		if (cp < 0x20 || cp == 0x7F) {
			g_buf_printf(r->out, "\\\\u%04x", cp);
		} else if (cp >= 0xD800 && cp <= 0xDFFF) {
			g_buf_printf(r->out, "\\\\u%04x", cp);
		} else {
			g_buf_printf(r->out, "\\U%08X", cp);
		}
	}
	g_buf_puts(r->out, "\"");
}

static int parse_class(rx *r)
{
	g_vec v = {0};
	int negate = 0;
	r->pos++; /* [ */
	if (rpeek(r) == '^') {
		negate = 1;
		r->pos++;
	}
	for (int first = 1;; first = 0) {
		int c = rpeek(r);
		if (c < 0) {
			free(v.v);
			return rfail(r, MOE_ERR_FORMAT, "unterminated class");
		}
		if (c == ']' && !first) {
			r->pos++;
			break;
		}
		uint32_t lo, hi;
		if (c == '\\') {
			r->pos++;
			int e = rpeek(r);
			if (e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 's' || e == 'S') {
				int neg;
				r->pos++;
				if (e == 'D' || e == 'W' || e == 'S') {
					free(v.v);
					return rfail(r, MOE_ERR_UNSUPPORTED,
					             "negated shorthand inside a class");
				}
				if (shorthand(r, &v, e, &neg)) {
					free(v.v);
					return -1;
				}
				continue;
			}
			if (e == 'b') {
				r->pos++;
				lo = '\b';
			} else if (escaped_char(r, &lo)) {
				free(v.v);
				return -1;
			}
		} else if (read_cp(r, &lo)) {
			free(v.v);
			return -1;
		}
		hi = lo;
		if (rpeek(r) == '-' && r->pos + 1 < r->len && r->s[r->pos + 1] != ']') {
			r->pos++;
			if (rpeek(r) == '\\') {
				r->pos++;
				if (escaped_char(r, &hi)) {
					free(v.v);
					return -1;
				}
			} else if (read_cp(r, &hi)) {
				free(v.v);
				return -1;
			}
			if (hi < lo) {
				free(v.v);
				return rfail(r, MOE_ERR_FORMAT, "class range out of order");
			}
		}
		if (add_range(r, &v, lo, hi)) {
			free(v.v);
			return -1;
		}
	}
	if (finish_class(r, &v, negate)) {
		free(v.v);
		return -1;
	}
	if (v.n == 0) {
		free(v.v);
		return rfail(r, MOE_ERR_UNSUPPORTED,
		             "a class with no character that JSON holds unescaped");
	}
	put_class(r, &v);
	free(v.v);
	return 0;
}

static int parse_alt(rx *r);

static int parse_atom(rx *r)
{
	int c = rpeek(r);
	if (c == '(') {
		if (++r->depth > R_MAX_NEST)
			return rfail(r, MOE_ERR_BAD_COUNT, "groups nested deeper than 32");
		r->pos++;
		if (rpeek(r) == '?') {
			if (r->pos + 1 < r->len && r->s[r->pos + 1] == ':')
				r->pos += 2;
			else
				return rfail(r, MOE_ERR_UNSUPPORTED, "lookaround or named group");
		}
		g_buf_puts(r->out, "( ");
		if (parse_alt(r))
			return -1;
		if (rpeek(r) != ')')
			return rfail(r, MOE_ERR_FORMAT, "expected ')'");
		r->pos++;
		r->depth--;
		g_buf_puts(r->out, " )");
		return 0;
	}
	if (c == '[')
		return parse_class(r);
	if (c == '.') {
		r->pos++;
		g_vec v = {0};
		if (add_range(r, &v, '\n', '\n') || add_range(r, &v, '\r', '\r') ||
		    add_range(r, &v, 0x2028, 0x2029) || finish_class(r, &v, 1)) {
			free(v.v);
			return -1;
		}
		put_class(r, &v);
		free(v.v);
		return 0;
	}
	if (c == '\\') {
		r->pos++;
		int e = rpeek(r);
		if (e == 'd' || e == 'D' || e == 'w' || e == 'W' || e == 's' || e == 'S') {
			r->pos++;
			g_vec v = {0};
			int neg;
			if (shorthand(r, &v, e, &neg) || finish_class(r, &v, neg)) {
				free(v.v);
				return -1;
			}
			if (v.n == 0) {
				free(v.v);
				return rfail(r, MOE_ERR_UNSUPPORTED,
				             "\\s holds no unescaped character");
			}
			put_class(r, &v);
			free(v.v);
			return 0;
		}
		uint32_t cp;
		if (escaped_char(r, &cp))
			return -1;
		put_char(r, cp);
		return 0;
	}
	if (c == '^' || c == '$')
		return rfail(r, MOE_ERR_UNSUPPORTED, "^ or $ other than at the ends");
	if (c == '*' || c == '+' || c == '?' || c == '{')
		return rfail(r, MOE_ERR_FORMAT, "quantifier without an atom");
	uint32_t cp;
	if (read_cp(r, &cp))
		return -1;
	put_char(r, cp);
	return 0;
}

static int read_num(rx *r, uint32_t *v)
{
	uint64_t x = 0;
	if (rpeek(r) < '0' || rpeek(r) > '9')
		return rfail(r, MOE_ERR_FORMAT, "expected a number");
	while (rpeek(r) >= '0' && rpeek(r) <= '9') {
		x = x * 10 + (uint64_t)(rpeek(r) - '0');
		if (x > G_MAX_REPEAT)
			return rfail(r, MOE_ERR_UNSUPPORTED, "repetition count above 10000");
		r->pos++;
	}
	*v = (uint32_t)x;
	return 0;
}

static int parse_seq(rx *r)
{
	int any = 0;
	while (r->pos < r->len && rpeek(r) != '|' && rpeek(r) != ')') {
		if (rpeek(r) == '$' && r->pos + 1 == r->len)
			break;
		if (any)
			g_buf_puts(r->out, " ");
		if (parse_atom(r))
			return -1;
		any = 1;
		int q = rpeek(r);
		if (q == '*' || q == '+' || q == '?') {
			char op[2] = {(char)q, 0};
			g_buf_puts(r->out, op);
			r->pos++;
		} else if (q == '{') {
			uint32_t lo, hi;
			r->pos++;
			if (read_num(r, &lo))
				return -1;
			hi = lo;
			if (rpeek(r) == ',') {
				r->pos++;
				hi = G_INF;
				if (rpeek(r) != '}' && read_num(r, &hi))
					return -1;
			}
			if (rpeek(r) != '}')
				return rfail(r, MOE_ERR_FORMAT, "expected '}'");
			r->pos++;
			if (hi < lo)
				return rfail(r, MOE_ERR_FORMAT,
				             "repetition maximum below its minimum");
			if (hi == G_INF)
				g_buf_printf(r->out, "{%u,}", lo);
			else
				g_buf_printf(r->out, "{%u,%u}", lo, hi);
		} else {
			continue;
		}
		if (rpeek(r) == '?')
			r->pos++; /* lazy: the same strings */
		q = rpeek(r);
		if (q == '*' || q == '+' || q == '?' || q == '{')
			return rfail(r, MOE_ERR_UNSUPPORTED, "possessive or stacked quantifier");
	}
	if (!any)
		g_buf_puts(r->out, "\"\"");
	return 0;
}

static int parse_alt(rx *r)
{
	g_buf_puts(r->out, "( ");
	for (;;) {
		if (parse_seq(r))
			return -1;
		if (rpeek(r) != '|')
			break;
		r->pos++;
		if (r->depth == 0)
			r->top_alts++;
		g_buf_puts(r->out, " | ");
	}
	g_buf_puts(r->out, " )");
	return 0;
}

moe_err g_regex_to_gbnf(g_buf *out, const char *re, size_t len)
{
	rx r = {(const unsigned char *)re, len, 0, out, 0, 0, MOE_OK};
	int anchored_start = len > 0 && re[0] == '^';
	if (anchored_start)
		r.pos = 1;
	int anchored_end = len > r.pos && re[len - 1] == '$' && (len < 2 || re[len - 2] != '\\');
	if (!anchored_start)
		g_buf_puts(out, ANY_CHAR "* ");
	if (parse_alt(&r) == 0 && r.pos < len && !(anchored_end && r.pos == len - 1))
		rfail(&r, MOE_ERR_FORMAT, "unbalanced ')'");
	if (r.err == MOE_OK && r.top_alts > 0 && (anchored_start || anchored_end))
		rfail(&r, MOE_ERR_UNSUPPORTED,
		      "^ or $ with a top-level | (group the alternatives)");
	if (r.err != MOE_OK)
		return r.err;
	if (!anchored_end)
		g_buf_puts(out, " " ANY_CHAR "*");
	if (out->failed)
		return moe_fail(MOE_ERR_NOMEM, "json schema pattern: grammar text");
	return MOE_OK;
}
