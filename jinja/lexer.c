/* lexer.c - template text to tokens, as Jinja2's lexer cuts it: newlines
 * normalised, the trailing newline dropped, whitespace control ('-', '+',
 * trim_blocks, lstrip_blocks), comments and raw blocks, and inside tags
 * names, numbers, string literals (Python escapes) and operators. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct lexer {
	jtoks *out;
	jarena *a;
	const char *s;
	size_t n;
	size_t pos;
	uint32_t line;
	int line_starting;
} lexer;

static moe_err lex_fail(const lexer *lx, const char *what)
{
	return moe_fail(MOE_ERR_FORMAT, "line %u: %s", lx->line, what);
}

static moe_err push(lexer *lx, const jtok *t)
{
	jtoks *o = lx->out;
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 256;
		jtok *v = realloc(o->v, cap * sizeof(*v));
		if (!v)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		o->v = v;
		o->cap = cap;
	}
	o->v[o->n++] = *t;
	return MOE_OK;
}

/* Length of the Python whitespace code point at s[i], 0 if none. */
static size_t space_at(const char *s, size_t n, size_t i)
{
	size_t j = i;
	uint32_t cp = utf8_next(s, n, &j);
	return uc_isspace(cp) ? j - i : 0;
}

/* Start of the trailing whitespace of s[0..n). */
static size_t rstrip_at(const char *s, size_t n)
{
	size_t end = n;
	while (end > 0) {
		size_t st = end - 1;
		while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80)
			st--;
		size_t j = st;
		if (!uc_isspace(utf8_next(s, n, &j)))
			break;
		end = st;
	}
	return end;
}

static uint32_t count_nl(const char *s, size_t n)
{
	uint32_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += s[i] == '\n';
	return c;
}

/* Emits text s[0..n) as data, after the whitespace control of the tag that
 * follows it (sign '-', '+' or 0; lstrip: the tag is not a variable). */
static moe_err emit_text(lexer *lx, const char *s, size_t n, char sign, int lstrip)
{
	uint32_t lines = count_nl(s, n);
	size_t keep = n;
	if (sign == '-') {
		keep = rstrip_at(s, n);
	} else if (sign != '+' && lstrip) {
		size_t l = n;
		while (l > 0 && s[l - 1] != '\n')
			l--;
		if ((l > 0 || lx->line_starting) && l < n) {
			size_t i = l;
			while (i < n) {
				size_t k = space_at(s, n, i);
				if (!k)
					break;
				i += k;
			}
			if (i == n)
				keep = l;
		}
	}
	if (keep > 0) {
		jtok t = {.t = T_DATA, .line = lx->line, .p = s, .n = keep};
		t.str = jstr_new(lx->a, s, keep);
		if (!t.str)
			return ja_fail(lx->a);
		moe_err e = push(lx, &t);
		if (e)
			return e;
	}
	lx->line += lines;
	return MOE_OK;
}

/* Skips Python whitespace from lx->pos (counting lines). */
static void skip_space(lexer *lx)
{
	size_t k;
	while (lx->pos < lx->n && (k = space_at(lx->s, lx->n, lx->pos)) > 0) {
		lx->line += lx->s[lx->pos] == '\n';
		lx->pos += k;
	}
}

/* Matches "\s*raw\s*(-%}\s*|%})" or the same with endraw at i; returns the
 * end or 0. */
static size_t match_word_tag(const lexer *lx, size_t i, const char *word)
{
	const char *s = lx->s;
	size_t n = lx->n, k, wl = strlen(word);
	while (i < n && (k = space_at(s, n, i)) > 0)
		i += k;
	if (n - i < wl || memcmp(s + i, word, wl) != 0)
		return 0;
	i += wl;
	while (i < n && (k = space_at(s, n, i)) > 0)
		i += k;
	return i;
}

/* (\d+_)*\d+ at i: its length, 0 if none. */
static size_t match_digits(const char *s, size_t n, size_t i)
{
	size_t j = i;
	if (j >= n || !isdigit((unsigned char)s[j]))
		return 0;
	for (;;) {
		while (j < n && isdigit((unsigned char)s[j]))
			j++;
		if (j + 1 < n && s[j] == '_' && isdigit((unsigned char)s[j + 1]))
			j++;
		else
			break;
	}
	return j - i;
}

static size_t match_float(const char *s, size_t n, size_t i)
{
	if (i > 0 && s[i - 1] == '.')
		return 0;
	size_t d = match_digits(s, n, i);
	if (!d)
		return 0;
	size_t q = i + d;
	/* (\.digits)? e[+-]? digits */
	for (int with_frac = 1; with_frac >= 0; with_frac--) {
		size_t q1 = q;
		if (with_frac) {
			size_t f;
			if (q1 < n && s[q1] == '.' && (f = match_digits(s, n, q1 + 1)) > 0)
				q1 += 1 + f;
			else
				continue;
		}
		if (q1 < n && (s[q1] == 'e' || s[q1] == 'E')) {
			size_t q2 = q1 + 1;
			if (q2 < n && (s[q2] == '+' || s[q2] == '-'))
				q2++;
			size_t e = match_digits(s, n, q2);
			if (e)
				return q2 + e - i;
		}
	}
	size_t f;
	if (q < n && s[q] == '.' && (f = match_digits(s, n, q + 1)) > 0)
		return q + 1 + f - i;
	return 0;
}

static int digit_in_base(char c, int base)
{
	int v;
	if (c >= '0' && c <= '9')
		v = c - '0';
	else if (c >= 'a' && c <= 'f')
		v = c - 'a' + 10;
	else if (c >= 'A' && c <= 'F')
		v = c - 'A' + 10;
	else
		return -1;
	return v < base ? v : -1;
}

/* (_?[digit])+ in base at i: its length. */
static size_t match_based(const char *s, size_t n, size_t i, int base)
{
	size_t j = i;
	for (;;) {
		if (j < n && digit_in_base(s[j], base) >= 0)
			j++;
		else if (j + 1 < n && s[j] == '_' && digit_in_base(s[j + 1], base) >= 0)
			j += 2;
		else
			break;
	}
	return j - i;
}

/* An integer literal at i: its length (0 if none) and value. */
static size_t match_int(const lexer *lx, size_t i, int64_t *val, int *big)
{
	const char *s = lx->s;
	size_t n = lx->n, len = 0, start = i;
	int base = 10;
	*big = 0;
	if (s[i] == '0' && i + 1 < n) {
		char c = (char)tolower((unsigned char)s[i + 1]);
		int b = c == 'b' ? 2 : c == 'o' ? 8 : c == 'x' ? 16 : 0;
		if (b) {
			size_t d = match_based(s, n, i + 2, b);
			if (d) {
				base = b;
				start = i + 2;
				len = 2 + d;
			}
		}
	}
	if (!len) {
		if (s[i] >= '1' && s[i] <= '9') {
			len = 1 + match_based(s, n, i + 1, 10);
		} else if (s[i] == '0') {
			size_t j = i + 1;
			for (;;) {
				if (j < n && s[j] == '0')
					j++;
				else if (j + 1 < n && s[j] == '_' && s[j + 1] == '0')
					j += 2;
				else
					break;
			}
			len = j - i;
		} else {
			return 0;
		}
	}
	uint64_t v = 0;
	for (size_t j = start; j < i + len; j++) {
		if (s[j] == '_')
			continue;
		uint64_t d = (uint64_t)digit_in_base(s[j], base);
		if (v > (UINT64_MAX - d) / (uint64_t)base) {
			*big = 1;
			break;
		}
		v = v * (uint64_t)base + d;
	}
	if (v > INT64_MAX)
		*big = 1;
	*val = (int64_t)v;
	return len;
}

static int hexval(const char *s, size_t n, size_t i, int digits, uint32_t *out)
{
	uint32_t v = 0;
	if (n - i < (size_t)digits)
		return -1;
	for (int k = 0; k < digits; k++) {
		int d = digit_in_base(s[i + k], 16);
		if (d < 0)
			return -1;
		v = v * 16 + (uint32_t)d;
	}
	*out = v;
	return 0;
}

/* Decodes a string literal's body as Jinja2 does (backslashreplace, then
 * Python's unicode-escape). */
static moe_err unescape(lexer *lx, const char *s, size_t n, const jstr **out)
{
	jbuf b = {0};
	moe_err e = MOE_OK;
	size_t i = 0;
	while (i < n && !e) {
		if (s[i] != '\\') {
			size_t j = i + 1;
			while (j < n && s[j] != '\\')
				j++;
			e = jbuf_put(&b, s + i, j - i);
			i = j;
			continue;
		}
		i++;
		size_t cstart = i;
		uint32_t c = utf8_next(s, n, &i), v;
		if (c >= 0x80) {
			char tmp[16];
			if (c <= 0xff)
				snprintf(tmp, sizeof(tmp), "\\x%02x", c);
			else if (c <= 0xffff)
				snprintf(tmp, sizeof(tmp), "\\u%04x", c);
			else
				snprintf(tmp, sizeof(tmp), "\\U%08x", c);
			e = jbuf_puts(&b, tmp);
			continue;
		}
		switch (c) {
		case '\n':
			break;
		case '\\':
		case '\'':
		case '"':
			e = jbuf_putc(&b, (char)c);
			break;
		case 'a':
			e = jbuf_putc(&b, 7);
			break;
		case 'b':
			e = jbuf_putc(&b, 8);
			break;
		case 'f':
			e = jbuf_putc(&b, 12);
			break;
		case 'n':
			e = jbuf_putc(&b, '\n');
			break;
		case 'r':
			e = jbuf_putc(&b, '\r');
			break;
		case 't':
			e = jbuf_putc(&b, '\t');
			break;
		case 'v':
			e = jbuf_putc(&b, 11);
			break;
		case 'x':
		case 'u':
		case 'U': {
			int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
			if (hexval(s, n, i, digits, &v) != 0) {
				e = lex_fail(lx, c == 'x'   ? "truncated \\xXX escape"
				                 : c == 'u' ? "truncated \\uXXXX escape"
				                            : "truncated \\UXXXXXXXX escape");
				break;
			}
			i += (size_t)digits;
			if (v > 0x10FFFF)
				e = lex_fail(lx, "illegal Unicode character");
			else if (v >= 0xD800 && v <= 0xDFFF)
				e = moe_fail(MOE_ERR_UNSUPPORTED,
				             "line %u: unsupported: a lone surrogate in a string",
				             lx->line);
			else
				e = jbuf_putcp(&b, v);
			break;
		}
		case 'N':
			e = moe_fail(MOE_ERR_UNSUPPORTED, "line %u: unsupported: \\N{...} escape",
			             lx->line);
			break;
		default:
			if (c >= '0' && c <= '7') {
				v = c - '0';
				for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
					v = v * 8 + (uint32_t)(s[i++] - '0');
				e = jbuf_putcp(&b, v);
			} else {
				e = jbuf_putc(&b, '\\');
				if (!e)
					e = jbuf_put(&b, s + cstart, i - cstart);
			}
		}
	}
	if (!e) {
		*out = jstr_new(lx->a, b.p ? b.p : "", b.n);
		if (!*out)
			e = ja_fail(lx->a);
	}
	jbuf_free(&b);
	return e;
}

static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char ops1[] = "+-/*%~[](){}><=.:|,;";

/* The tokens of one tag from lx->pos up to and including its end. */
static moe_err lex_tag(lexer *lx, int block)
{
	const char *s = lx->s;
	size_t n = lx->n;
	char stack[256];
	size_t depth = 0;
	for (;;) {
		size_t p = lx->pos;
		if (p >= n)
			return MOE_OK; /* the parser reports the missing end */
		if (depth == 0) {
			size_t end = 0;
			int strip = 0, trim = 0;
			if (block) {
				if (n - p >= 3 && memcmp(s + p, "+%}", 3) == 0)
					end = 3;
				else if (n - p >= 3 && memcmp(s + p, "-%}", 3) == 0)
					end = 3, strip = 1;
				else if (n - p >= 2 && memcmp(s + p, "%}", 2) == 0)
					end = 2, trim = 1;
			} else {
				if (n - p >= 3 && memcmp(s + p, "-}}", 3) == 0)
					end = 3, strip = 1;
				else if (n - p >= 2 && memcmp(s + p, "}}", 2) == 0)
					end = 2;
			}
			if (end) {
				jtok t = {.t = block ? T_BLOCK_END : T_VAR_END, .line = lx->line};
				moe_err e = push(lx, &t);
				if (e)
					return e;
				lx->pos += end;
				if (strip)
					skip_space(lx);
				else if (trim && lx->pos < n && s[lx->pos] == '\n')
					lx->pos++, lx->line++;
				lx->line_starting = lx->pos > 0 && s[lx->pos - 1] == '\n';
				return MOE_OK;
			}
		}
		size_t k = space_at(s, n, p);
		if (k) {
			skip_space(lx);
			continue;
		}
		unsigned char c = (unsigned char)s[p];
		jtok t = {.line = lx->line};
		size_t len;
		int64_t iv;
		int big;
		if ((len = match_float(s, n, p)) > 0) {
			char tmp[128];
			if (len >= sizeof(tmp))
				return moe_fail(MOE_ERR_UNSUPPORTED,
				                "line %u: unsupported: a float literal of over 127 "
				                "characters",
				                lx->line);
			size_t m = 0;
			for (size_t j = p; j < p + len && m + 1 < sizeof(tmp); j++)
				if (s[j] != '_')
					tmp[m++] = s[j];
			tmp[m] = 0;
			t.t = T_FLOAT;
			t.f = strtod(tmp, NULL);
		} else if ((len = match_int(lx, p, &iv, &big)) > 0) {
			if (big)
				return moe_fail(
				    MOE_ERR_UNSUPPORTED,
				    "line %u: unsupported: integer literal beyond int64", lx->line);
			t.t = T_INT;
			t.i = iv;
		} else if (isalpha(c) || c == '_') {
			len = 1;
			while (p + len < n &&
			       (isalnum((unsigned char)s[p + len]) || s[p + len] == '_'))
				len++;
			t.t = T_NAME;
			t.p = s + p;
			t.n = len;
		} else if (c == '\'' || c == '"') {
			size_t j = p + 1;
			while (j < n && s[j] != (char)c) {
				if (s[j] == '\\') {
					if (j + 1 >= n)
						break;
					j++;
				}
				utf8_next(s, n, &j);
			}
			if (j >= n)
				return lex_fail(lx, c == '\'' ? "unexpected char \"'\""
				                              : "unexpected char '\"'");
			len = j + 1 - p;
			t.t = T_STRING;
			moe_err e = unescape(lx, s + p + 1, len - 2, &t.str);
			if (e)
				return e;
			lx->line += count_nl(s + p, len);
		} else {
			len = 0;
			for (size_t o = 0; o < sizeof(ops2) / sizeof(ops2[0]); o++)
				if (n - p >= 2 && memcmp(s + p, ops2[o], 2) == 0)
					len = 2;
			if (!len && c && strchr(ops1, c))
				len = 1;
			if (!len) {
				if (c >= 0x80)
					return moe_fail(
					    MOE_ERR_UNSUPPORTED,
					    "line %u: unsupported: a non-ASCII character "
					    "in a tag",
					    lx->line);
				return moe_fail(MOE_ERR_FORMAT, "line %u: unexpected char '%c'",
				                lx->line, c >= 32 && c < 127 ? c : '?');
			}
			t.t = T_OP;
			memcpy(t.opc, s + p, len);
			t.opc[len] = 0;
			if (len == 1 && strchr("{([", c)) {
				if (depth == sizeof(stack))
					return moe_fail(MOE_ERR_UNSUPPORTED,
					                "line %u: brackets nest too deep",
					                lx->line);
				stack[depth++] = c == '{' ? '}' : c == '(' ? ')' : ']';
			} else if (len == 1 && strchr("})]", c)) {
				if (depth == 0)
					return moe_fail(MOE_ERR_FORMAT, "line %u: unexpected '%c'",
					                lx->line, c);
				if (stack[depth - 1] != (char)c)
					return moe_fail(MOE_ERR_FORMAT,
					                "line %u: unexpected '%c', expected '%c'",
					                lx->line, c, stack[depth - 1]);
				depth--;
			}
		}
		moe_err e = push(lx, &t);
		if (e)
			return e;
		lx->pos = p + len;
	}
}

/* A raw block's body from lx->pos up to its endraw tag. */
static moe_err lex_raw(lexer *lx)
{
	const char *s = lx->s;
	size_t n = lx->n;
	for (size_t i = lx->pos; i + 1 < n; i++) {
		if (s[i] != '{' || s[i + 1] != '%')
			continue;
		size_t j = i + 2;
		char sign = 0;
		if (j < n && (s[j] == '-' || s[j] == '+'))
			sign = s[j++];
		size_t w = match_word_tag(lx, j, "endraw");
		if (!w)
			continue;
		size_t end = 0;
		int strip = 0, trim = 0;
		if (n - w >= 3 && memcmp(s + w, "+%}", 3) == 0)
			end = 3;
		else if (n - w >= 3 && memcmp(s + w, "-%}", 3) == 0)
			end = 3, strip = 1;
		else if (n - w >= 2 && memcmp(s + w, "%}", 2) == 0)
			end = 2, trim = 1;
		if (!end)
			continue;
		moe_err e = emit_text(lx, s + lx->pos, i - lx->pos, sign, 1);
		if (e)
			return e;
		lx->line += count_nl(s + i, w - i);
		lx->pos = w + end;
		if (strip)
			skip_space(lx);
		else if (trim && lx->pos < n && s[lx->pos] == '\n')
			lx->pos++, lx->line++;
		lx->line_starting = s[lx->pos - 1] == '\n';
		return MOE_OK;
	}
	return lex_fail(lx, "Missing end of raw directive");
}

static moe_err lex_comment(lexer *lx, size_t body)
{
	const char *s = lx->s;
	size_t n = lx->n;
	for (size_t i = body; i + 1 < n; i++) {
		if (s[i] != '#' || s[i + 1] != '}')
			continue;
		lx->line += count_nl(s + lx->pos, i + 2 - lx->pos);
		lx->pos = i + 2;
		if (i > body && s[i - 1] == '-')
			skip_space(lx);
		else if (!(i > body && s[i - 1] == '+') && lx->pos < n && s[lx->pos] == '\n')
			lx->pos++, lx->line++;
		lx->line_starting = s[lx->pos - 1] == '\n';
		return MOE_OK;
	}
	return lex_fail(lx, "Missing end of comment tag");
}

static moe_err lex_all(lexer *lx)
{
	const char *s = lx->s;
	size_t n = lx->n;
	moe_err e;
	while (lx->pos < n) {
		size_t k = lx->pos;
		while (k + 1 < n &&
		       !(s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%' || s[k + 1] == '#')))
			k++;
		if (k + 1 >= n)
			return emit_text(lx, s + lx->pos, n - lx->pos, 0, 0);
		char kind = s[k + 1];
		size_t j = k + 2;
		char sign = 0;
		if (j < n && (s[j] == '-' || s[j] == '+'))
			sign = s[j++];
		if (kind == '%') {
			size_t w = match_word_tag(lx, j, "raw");
			size_t end = 0;
			if (w && n - w >= 3 && memcmp(s + w, "-%}", 3) == 0)
				end = 3;
			else if (w && n - w >= 2 && memcmp(s + w, "%}", 2) == 0)
				end = 2;
			if (end) {
				e = emit_text(lx, s + lx->pos, k - lx->pos, sign, 1);
				if (e)
					return e;
				lx->line += count_nl(s + k, w - k);
				lx->pos = w + end;
				if (end == 3)
					skip_space(lx);
				lx->line_starting = s[lx->pos - 1] == '\n';
				e = lex_raw(lx);
				if (e)
					return e;
				continue;
			}
		}
		e = emit_text(lx, s + lx->pos, k - lx->pos, sign, kind != '{');
		if (e)
			return e;
		lx->pos = j;
		lx->line_starting = 0;
		if (kind == '#') {
			e = lex_comment(lx, j);
		} else {
			jtok t = {.t = kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, .line = lx->line};
			e = push(lx, &t);
			if (!e)
				e = lex_tag(lx, kind == '%');
		}
		if (e)
			return e;
	}
	return MOE_OK;
}

moe_err jlex(jtoks *out, jarena *a, const char *text, size_t len)
{
	memset(out, 0, sizeof(*out));
	if (!utf8_valid(text, len))
		return moe_fail(MOE_ERR_BAD_STRING, "template: not valid UTF-8");
	char *src = malloc(len + 1);
	if (!src)
		return moe_fail(MOE_ERR_NOMEM, "out of memory");
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (text[i] == '\r') {
			src[n++] = '\n';
			if (i + 1 < len && text[i + 1] == '\n')
				i++;
		} else {
			src[n++] = text[i];
		}
	}
	if (n > 0 && src[n - 1] == '\n')
		n--; /* keep_trailing_newline=False */
	src[n] = 0;
	out->src = src;
	lexer lx = {.out = out, .a = a, .s = src, .n = n, .line = 1, .line_starting = 1};
	moe_err e = lex_all(&lx);
	if (!e) {
		jtok t = {.t = T_EOF, .line = lx.line};
		e = push(&lx, &t);
	}
	if (e)
		jtoks_free(out);
	return e;
}

void jtoks_free(jtoks *t)
{
	free(t->v);
	free(t->src);
	memset(t, 0, sizeof(*t));
}
