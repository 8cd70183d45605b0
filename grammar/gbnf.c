/* gbnf.c - the grammar text parser: rules, literals and classes with their
 * escapes, groups, alternation and repetition into syntax trees (grammar.h
 * describes the language); errors name the line and column. */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

typedef struct parser {
	const char *s;
	size_t len, pos;
	g_rules *rs;
	uint32_t depth;
	/* the rules by name: open addressing, id + 1 (0: empty), a power of
	 * two at least twice the rules (a linear search made a schema of 4,000
	 * properties take seconds to compile) */
	uint32_t *slot;
	uint32_t n_slots;
	/* where() counted lines up to wpos (wline, wcol there): the parse
	 * moves forward, so counting on from there keeps it linear */
	size_t wpos;
	uint32_t wline, wcol;
} parser;

static void where(parser *p, size_t pos, uint32_t *line, uint32_t *col)
{
	if (pos > p->len)
		pos = p->len;
	if (pos < p->wpos) {
		p->wpos = 0;
		p->wline = p->wcol = 1;
	}
	uint32_t l = p->wline, c = p->wcol;
	for (size_t i = p->wpos; i < pos; i++) {
		if (p->s[i] == '\n') {
			l++;
			c = 1;
		} else {
			c++;
		}
	}
	p->wpos = pos;
	*line = p->wline = l;
	*col = p->wcol = c;
}

static moe_err perr(parser *p, moe_err err, size_t pos, const char *what)
{
	uint32_t line, col;
	where(p, pos, &line, &col);
	return moe_fail(err, "grammar: line %u, column %u: %s", line, col, what);
}

static int at_end(const parser *p)
{
	return p->pos >= p->len;
}

static int peek(const parser *p)
{
	return at_end(p) ? -1 : (unsigned char)p->s[p->pos];
}

static int is_name_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

/* Skips spaces and tabs, and with newlines also line breaks and comments; a
 * comment is always skipped up to (not over) its line break. */
static void skip_space(parser *p, int newlines)
{
	while (!at_end(p)) {
		int c = peek(p);
		if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
			p->pos++;
		} else if (c == '#') {
			while (!at_end(p) && peek(p) != '\n')
				p->pos++;
		} else {
			break;
		}
	}
}

/* Whether a rule definition "name ::=" starts at pos (after spaces). */
static int rule_starts(const parser *p, size_t pos)
{
	size_t i = pos;
	while (i < p->len && is_name_char((unsigned char)p->s[i]))
		i++;
	if (i == pos)
		return 0;
	while (i < p->len && (p->s[i] == ' ' || p->s[i] == '\t'))
		i++;
	return i + 3 <= p->len && memcmp(p->s + i, "::=", 3) == 0;
}

/* Skips spaces inside a rule: at the top level of a rule body a line break
 * ends the rule when what follows is a new rule or the end of the text. */
static void skip_in_rule(parser *p)
{
	if (p->depth > 0) {
		skip_space(p, 1);
		return;
	}
	skip_space(p, 0);
	if (at_end(p) || (peek(p) != '\n' && peek(p) != '\r'))
		return;
	size_t save = p->pos;
	skip_space(p, 1);
	if (at_end(p) || rule_starts(p, p->pos))
		p->pos = save;
}

/* FNV-1a of a rule name. */
static uint32_t name_hash(const char *name, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)name[i]) * 16777619u;
	return h;
}

/* The slot of name in p->slot: its rule's, or the empty one where it goes. */
static uint32_t *name_slot(parser *p, const char *name, size_t n)
{
	const uint32_t mask = p->n_slots - 1;
	for (uint32_t k = name_hash(name, n) & mask;; k = (k + 1) & mask) {
		uint32_t *sl = &p->slot[k];
		if (*sl == 0)
			return sl;
		const char *r = p->rs->r[*sl - 1].name;
		if (strncmp(r, name, n) == 0 && r[n] == '\0')
			return sl;
	}
}

/* Room in p->slot for one more rule (at most half the slots used). */
static moe_err slots_reserve(parser *p)
{
	if (2 * ((size_t)p->rs->n + 1) <= p->n_slots)
		return MOE_OK;
	const uint32_t n = p->n_slots ? 2 * p->n_slots : 64;
	uint32_t *old = p->slot;
	const uint32_t old_n = p->n_slots;
	p->slot = calloc(n, sizeof(uint32_t));
	if (p->slot == NULL) {
		p->slot = old;
		return moe_fail(MOE_ERR_NOMEM, "grammar: %u rule slots", n);
	}
	p->n_slots = n;
	for (uint32_t k = 0; k < old_n; k++)
		if (old[k] != 0) {
			const char *r = p->rs->r[old[k] - 1].name;
			*name_slot(p, r, strlen(r)) = old[k];
		}
	free(old);
	return MOE_OK;
}

static uint32_t rule_id(parser *p, const char *name, size_t n, size_t pos, moe_err *err)
{
	g_rules *rs = p->rs;
	if ((*err = slots_reserve(p)) != MOE_OK)
		return G_NONE;
	uint32_t *sl = name_slot(p, name, n);
	if (*sl != 0)
		return *sl - 1;
	if (rs->n >= G_MAX_RULES) {
		*err = perr(p, MOE_ERR_BAD_COUNT, pos, "more than 65536 rules");
		return G_NONE;
	}
	if (rs->n == rs->cap) {
		uint32_t cap = rs->cap ? rs->cap * 2 : 32;
		g_rule *r = realloc(rs->r, cap * sizeof(*r));
		if (r == NULL) {
			*err = moe_fail(MOE_ERR_NOMEM, "grammar: %u rules", cap);
			return G_NONE;
		}
		rs->r = r;
		rs->cap = cap;
	}
	char *copy = g_arena_alloc(&rs->arena, n + 1);
	if (copy == NULL) {
		*err = moe_fail(MOE_ERR_NOMEM, "grammar: rule name");
		return G_NONE;
	}
	memcpy(copy, name, n);
	copy[n] = 0;
	uint32_t line, col;
	where(p, pos, &line, &col);
	rs->r[rs->n] = (g_rule){copy, NULL, line, col};
	*sl = rs->n + 1;
	return rs->n++;
}

static g_ast *node(parser *p, uint8_t kind, uint32_t n_kids)
{
	g_ast *a = g_arena_alloc(&p->rs->arena, sizeof(g_ast));
	if (a == NULL)
		return NULL;
	a->kind = kind;
	if (n_kids > 0) {
		a->kids = g_arena_alloc(&p->rs->arena, n_kids * sizeof(g_ast *));
		if (a->kids == NULL)
			return NULL;
	}
	return a;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reads one character of a literal or class at p->pos: an escape or one
 * UTF-8 encoded code point.  *raw is set when the character is a raw byte
 * that is not valid UTF-8 (literals keep such bytes as they are). */
static moe_err read_char(parser *p, uint32_t *cp, int *raw)
{
	size_t at = p->pos;
	unsigned char c = (unsigned char)p->s[p->pos++];
	*raw = 0;
	if (c == '\\') {
		if (at_end(p))
			return perr(p, MOE_ERR_FORMAT, at, "escape at the end of the text");
		int e = p->s[p->pos++];
		int digits = 0;
		switch (e) {
		case 'n':
			*cp = '\n';
			return MOE_OK;
		case 'r':
			*cp = '\r';
			return MOE_OK;
		case 't':
			*cp = '\t';
			return MOE_OK;
		case '\\':
		case '"':
		case '\'':
		case '[':
		case ']':
		case '-':
		case '^':
		case '/':
			*cp = (uint32_t)e;
			return MOE_OK;
		case 'x':
			digits = 2;
			break;
		case 'u':
			digits = 4;
			break;
		case 'U':
			digits = 8;
			break;
		default:
			return perr(p, MOE_ERR_FORMAT, at, "unknown escape");
		}
		uint32_t v = 0;
		for (int i = 0; i < digits; i++) {
			int h = at_end(p) ? -1 : hexval(peek(p));
			if (h < 0)
				return perr(p, MOE_ERR_FORMAT, p->pos, "expected a hex digit");
			v = v * 16 + (uint32_t)h;
			p->pos++;
		}
		if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
			return perr(p, MOE_ERR_FORMAT, at, "escape is not a Unicode scalar value");
		*cp = v;
		return MOE_OK;
	}
	if (c < 0x80) {
		*cp = c;
		return MOE_OK;
	}
	const int k = g_utf8_next((const uint8_t *)p->s + at, p->len - at, cp);
	if (k == 0) {
		*raw = 1;
		*cp = c;
		return MOE_OK;
	}
	p->pos = at + (size_t)k;
	return MOE_OK;
}

static moe_err parse_literal(parser *p, g_ast **out)
{
	size_t at = p->pos++;
	g_buf b = {0};
	moe_err err = MOE_OK;
	for (;;) {
		if (at_end(p) || peek(p) == '\n') {
			err = perr(p, MOE_ERR_FORMAT, at, "unterminated literal");
			goto out_free_buf;
		}
		if (peek(p) == '"') {
			p->pos++;
			break;
		}
		uint32_t cp;
		int raw;
		err = read_char(p, &cp, &raw);
		if (err != MOE_OK)
			goto out_free_buf;
		if (raw) {
			char c = (char)cp;
			g_buf_put(&b, &c, 1);
		} else {
			g_buf_utf8(&b, cp);
		}
	}
	if (b.failed || b.n > UINT32_MAX) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: literal");
		goto out_free_buf;
	}
	g_ast *a = node(p, b.n ? AST_LIT : AST_EMPTY, 0);
	if (a == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: literal");
		goto out_free_buf;
	}
	if (b.n) {
		a->n = (uint32_t)b.n;
		a->bytes = g_arena_alloc(&p->rs->arena, b.n);
		if (a->bytes == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "grammar: literal");
			goto out_free_buf;
		}
		memcpy(a->bytes, b.p, b.n);
	}
	*out = a;
out_free_buf:
	free(b.p);
	return err;
}

static int cmp_pair(const void *a, const void *b)
{
	const uint32_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Sorts and merges n pairs in r (in place), complements them over the code
 * points when negate, and drops the surrogates.  Returns the new count; r
 * must have room for n + 2 pairs. */
static uint32_t normalize_ranges(uint32_t *r, uint32_t n, int negate)
{
	qsort(r, n, 2 * sizeof(uint32_t), cmp_pair);
	uint32_t m = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (m > 0 && r[2 * i] <= r[2 * (m - 1) + 1] + 1) {
			if (r[2 * i + 1] > r[2 * (m - 1) + 1])
				r[2 * (m - 1) + 1] = r[2 * i + 1];
		} else {
			r[2 * m] = r[2 * i];
			r[2 * m + 1] = r[2 * i + 1];
			m++;
		}
	}
	if (negate) {
		/* the complement, through a scratch copy */
		uint32_t tmp_n = 0;
		uint32_t lo = 0;
		uint32_t *c = malloc((m + 1) * 2 * sizeof(uint32_t));
		if (c == NULL)
			return G_NONE;
		for (uint32_t i = 0; i < m; i++) {
			if (r[2 * i] > lo) {
				c[2 * tmp_n] = lo;
				c[2 * tmp_n + 1] = r[2 * i] - 1;
				tmp_n++;
			}
			lo = r[2 * i + 1] + 1;
		}
		if (lo <= 0x10FFFF) {
			c[2 * tmp_n] = lo;
			c[2 * tmp_n + 1] = 0x10FFFF;
			tmp_n++;
		}
		memcpy(r, c, tmp_n * 2 * sizeof(uint32_t));
		free(c);
		m = tmp_n;
	}
	/* drop the surrogates D800-DFFF (may split one range in two) */
	uint32_t k = 0;
	uint32_t *c = malloc((m + 1) * 2 * sizeof(uint32_t));
	if (c == NULL)
		return G_NONE;
	for (uint32_t i = 0; i < m; i++) {
		uint32_t lo = r[2 * i], hi = r[2 * i + 1];
		if (hi < 0xD800 || lo > 0xDFFF) {
			c[2 * k] = lo;
			c[2 * k + 1] = hi;
			k++;
			continue;
		}
		if (lo < 0xD800) {
			c[2 * k] = lo;
			c[2 * k + 1] = 0xD7FF;
			k++;
		}
		if (hi > 0xDFFF) {
			c[2 * k] = 0xE000;
			c[2 * k + 1] = hi;
			k++;
		}
	}
	memcpy(r, c, k * 2 * sizeof(uint32_t));
	free(c);
	return k;
}

static moe_err class_node(parser *p, g_ast **out, uint32_t *r, uint32_t n, int negate)
{
	uint32_t m = normalize_ranges(r, n, negate);
	if (m == G_NONE)
		return moe_fail(MOE_ERR_NOMEM, "grammar: class");
	g_ast *a = node(p, AST_CLASS, 0);
	if (a == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar: class");
	a->n = m;
	if (m > 0) {
		a->ranges = g_arena_alloc(&p->rs->arena, m * 2 * sizeof(uint32_t));
		if (a->ranges == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: class");
		memcpy(a->ranges, r, m * 2 * sizeof(uint32_t));
	}
	*out = a;
	return MOE_OK;
}

static moe_err parse_class(parser *p, g_ast **out)
{
	size_t at = p->pos++;
	int negate = 0;
	if (peek(p) == '^') {
		negate = 1;
		p->pos++;
	}
	g_vec r = {0};
	moe_err err = MOE_OK;
	for (;;) {
		if (at_end(p) || peek(p) == '\n') {
			err = perr(p, MOE_ERR_FORMAT, at, "unterminated character class");
			goto out_free_ranges;
		}
		if (peek(p) == ']') {
			p->pos++;
			break;
		}
		size_t cat = p->pos;
		uint32_t lo, hi;
		int raw;
		err = read_char(p, &lo, &raw);
		if (err != MOE_OK)
			goto out_free_ranges;
		if (raw) {
			err = perr(p, MOE_ERR_FORMAT, cat, "invalid UTF-8 in a character class");
			goto out_free_ranges;
		}
		hi = lo;
		if (peek(p) == '-' && p->pos + 1 < p->len && p->s[p->pos + 1] != ']') {
			p->pos++;
			err = read_char(p, &hi, &raw);
			if (err != MOE_OK)
				goto out_free_ranges;
			if (raw) {
				err = perr(p, MOE_ERR_FORMAT, cat,
				           "invalid UTF-8 in a character class");
				goto out_free_ranges;
			}
			if (hi < lo) {
				err = perr(p, MOE_ERR_FORMAT, cat, "character range out of order");
				goto out_free_ranges;
			}
		}
		err = g_vec_reserve(&r, 2);
		if (err != MOE_OK)
			goto out_free_ranges;
		r.v[r.n++] = lo;
		r.v[r.n++] = hi;
	}
	err = g_vec_reserve(&r, 4);
	if (err != MOE_OK)
		goto out_free_ranges;
	err = class_node(p, out, r.v, (uint32_t)(r.n / 2), negate);
out_free_ranges:
	free(r.v);
	return err;
}

static moe_err parse_alt(parser *p, g_ast **out);

static moe_err parse_number(parser *p, uint32_t *v)
{
	size_t at = p->pos;
	uint64_t x = 0;
	if (at_end(p) || peek(p) < '0' || peek(p) > '9')
		return perr(p, MOE_ERR_FORMAT, at, "expected a number");
	while (!at_end(p) && peek(p) >= '0' && peek(p) <= '9') {
		x = x * 10 + (uint64_t)(peek(p) - '0');
		if (x > G_MAX_REPEAT)
			return perr(p, MOE_ERR_BAD_COUNT, at, "repetition count above 10000");
		p->pos++;
	}
	*v = (uint32_t)x;
	return MOE_OK;
}

/* {m} {m,} {m,n} {,n} after the opening brace. */
static moe_err parse_braces(parser *p, uint32_t *min, uint32_t *max)
{
	size_t at = p->pos - 1;
	skip_space(p, 0);
	*min = 0;
	if (peek(p) != ',') {
		moe_err err = parse_number(p, min);
		if (err != MOE_OK)
			return err;
		skip_space(p, 0);
	}
	if (peek(p) == '}') {
		if (p->s[p->pos - 1] == '{')
			return perr(p, MOE_ERR_FORMAT, at, "empty repetition");
		p->pos++;
		*max = *min;
		return MOE_OK;
	}
	if (peek(p) != ',')
		return perr(p, MOE_ERR_FORMAT, p->pos, "expected ',' or '}'");
	p->pos++;
	skip_space(p, 0);
	*max = G_INF;
	if (peek(p) != '}') {
		moe_err err = parse_number(p, max);
		if (err != MOE_OK)
			return err;
		skip_space(p, 0);
	}
	if (peek(p) != '}')
		return perr(p, MOE_ERR_FORMAT, p->pos, "expected '}'");
	p->pos++;
	if (*max < *min)
		return perr(p, MOE_ERR_FORMAT, at, "repetition maximum below its minimum");
	return MOE_OK;
}

static moe_err parse_primary(parser *p, g_ast **out)
{
	int c = peek(p);
	size_t at = p->pos;
	if (c == '"')
		return parse_literal(p, out);
	if (c == '[')
		return parse_class(p, out);
	if (c == '.') {
		p->pos++;
		uint32_t r[6] = {0, 0x10FFFF};
		return class_node(p, out, r, 1, 0);
	}
	if (c == '(') {
		if (p->depth >= G_MAX_NEST)
			return perr(p, MOE_ERR_BAD_COUNT, at, "groups nested deeper than 64");
		p->pos++;
		p->depth++;
		skip_space(p, 1);
		moe_err err = parse_alt(p, out);
		if (err != MOE_OK)
			return err;
		skip_space(p, 1);
		if (peek(p) != ')')
			return perr(p, MOE_ERR_FORMAT, p->pos, "expected ')'");
		p->pos++;
		p->depth--;
		return MOE_OK;
	}
	if (c >= 0 && is_name_char(c)) {
		size_t n = 0;
		while (p->pos + n < p->len && is_name_char((unsigned char)p->s[p->pos + n]))
			n++;
		moe_err err = MOE_OK;
		uint32_t id = rule_id(p, p->s + p->pos, n, at, &err);
		if (id == G_NONE)
			return err;
		p->pos += n;
		g_ast *a = node(p, AST_REF, 0);
		if (a == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: reference");
		a->rule = id;
		*out = a;
		return MOE_OK;
	}
	return perr(p, MOE_ERR_FORMAT, at, "expected a literal, class, group or rule name");
}

static moe_err parse_item(parser *p, g_ast **out)
{
	g_ast *a = NULL;
	moe_err err = parse_primary(p, &a);
	if (err != MOE_OK)
		return err;
	for (int n_post = 0;; n_post++) {
		int c = peek(p);
		uint32_t min, max;
		if (n_post == 8 && (c == '?' || c == '*' || c == '+' || c == '{'))
			return perr(p, MOE_ERR_BAD_COUNT, p->pos,
			            "more than 8 repetition operators");
		if (c == '?') {
			min = 0;
			max = 1;
			p->pos++;
		} else if (c == '*') {
			min = 0;
			max = G_INF;
			p->pos++;
		} else if (c == '+') {
			min = 1;
			max = G_INF;
			p->pos++;
		} else if (c == '{') {
			p->pos++;
			err = parse_braces(p, &min, &max);
			if (err != MOE_OK)
				return err;
		} else {
			break;
		}
		g_ast *r = node(p, AST_REP, 1);
		if (r == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: repetition");
		r->n = 1;
		r->kids[0] = a;
		r->min = min;
		r->max = max;
		a = r;
	}
	*out = a;
	return MOE_OK;
}

static int seq_ends(const parser *p)
{
	int c = peek(p);
	return c < 0 || c == '|' || c == ')' || c == '\n' || c == '\r' ||
	       (p->depth == 0 && rule_starts(p, p->pos));
}

static moe_err parse_seq(parser *p, g_ast **out)
{
	g_ast **items = NULL;
	size_t n = 0, cap = 0;
	moe_err err = MOE_OK;
	skip_in_rule(p);
	while (!seq_ends(p)) {
		g_ast *a = NULL;
		err = parse_item(p, &a);
		if (err != MOE_OK)
			goto out_free_items;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			g_ast **it = realloc(items, cap * sizeof(*it));
			if (it == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "grammar: sequence");
				goto out_free_items;
			}
			items = it;
		}
		items[n++] = a;
		skip_in_rule(p);
	}
	if (n == 1) {
		*out = items[0];
	} else {
		g_ast *s = node(p, n ? AST_SEQ : AST_EMPTY, (uint32_t)n);
		if (s == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "grammar: sequence");
			goto out_free_items;
		}
		s->n = (uint32_t)n;
		for (size_t i = 0; i < n; i++)
			s->kids[i] = items[i];
		*out = s;
	}
out_free_items:
	free(items);
	return err;
}

static moe_err parse_alt(parser *p, g_ast **out)
{
	g_ast **alts = NULL;
	size_t n = 0, cap = 0;
	moe_err err = MOE_OK;
	for (;;) {
		g_ast *a = NULL;
		err = parse_seq(p, &a);
		if (err != MOE_OK)
			goto out_free_alts;
		if (n == cap) {
			cap = cap ? cap * 2 : 4;
			g_ast **al = realloc(alts, cap * sizeof(*al));
			if (al == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "grammar: alternatives");
				goto out_free_alts;
			}
			alts = al;
		}
		alts[n++] = a;
		if (p->depth > 0)
			skip_space(p, 1);
		if (peek(p) != '|')
			break;
		p->pos++;
		skip_space(p, 1);
	}
	if (n == 1) {
		*out = alts[0];
	} else {
		g_ast *a = node(p, AST_ALT, (uint32_t)n);
		if (a == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "grammar: alternatives");
			goto out_free_alts;
		}
		a->n = (uint32_t)n;
		for (size_t i = 0; i < n; i++)
			a->kids[i] = alts[i];
		*out = a;
	}
out_free_alts:
	free(alts);
	return err;
}

void g_rules_free(g_rules *rs)
{
	free(rs->r);
	g_arena_free(&rs->arena);
	rs->r = NULL;
	rs->n = rs->cap = 0;
}

static moe_err parse_rules(parser *p)
{
	moe_err err;
	const char *text = p->s;
	const size_t len = p->len;
	g_rules *rs = p->rs;
	for (;;) {
		skip_space(p, 1);
		if (at_end(p))
			break;
		size_t at = p->pos;
		if (!is_name_char(peek(p)))
			return perr(p, MOE_ERR_FORMAT, at, "expected a rule name");
		size_t n = 0;
		while (p->pos + n < len && is_name_char((unsigned char)text[p->pos + n]))
			n++;
		err = MOE_OK;
		uint32_t id = rule_id(p, text + p->pos, n, at, &err);
		if (id == G_NONE)
			return err;
		p->pos += n;
		skip_space(p, 0);
		if (p->pos + 3 > len || memcmp(text + p->pos, "::=", 3) != 0)
			return perr(p, MOE_ERR_FORMAT, p->pos, "expected '::='");
		p->pos += 3;
		if (rs->r[id].body != NULL) {
			uint32_t line, col;
			where(p, at, &line, &col);
			return moe_fail(MOE_ERR_DUPLICATE,
			                "grammar: line %u, column %u: rule %s is defined twice",
			                line, col, rs->r[id].name);
		}
		where(p, at, &rs->r[id].line, &rs->r[id].col);
		skip_space(p, 1);
		g_ast *body;
		err = parse_alt(p, &body);
		if (err != MOE_OK)
			return err;
		rs->r[id].body = body;
		skip_space(p, 0);
		if (!at_end(p) && peek(p) != '\n' && peek(p) != '\r' && !rule_starts(p, p->pos))
			return perr(p, MOE_ERR_FORMAT, p->pos, "unexpected character");
	}
	for (uint32_t i = 0; i < rs->n; i++)
		if (rs->r[i].body == NULL)
			return moe_fail(MOE_ERR_NOT_FOUND,
			                "grammar: line %u, column %u: rule %s is not defined",
			                rs->r[i].line, rs->r[i].col, rs->r[i].name);
	return MOE_OK;
}

moe_err g_parse_text(g_rules *rs, const char *text, size_t len)
{
	parser p = {.s = text, .len = len, .rs = rs, .wline = 1, .wcol = 1};
	const moe_err err = parse_rules(&p);
	free(p.slot);
	return err;
}
