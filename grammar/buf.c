/* buf.c - growable buffers of grammar/: text (g_buf, with grammar-literal
 * escaping), uint32_t arrays (g_vec), the bump arena of syntax trees, and
 * moe_grammar_literal. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "grammar/grammar_impl.h"

static int buf_grow(g_buf *b, size_t extra)
{
	if (b->failed)
		return 0;
	if (b->n + extra + 1 <= b->cap)
		return 1;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->n + extra + 1) {
		if (cap > SIZE_MAX / 2) {
			b->failed = 1;
			return 0;
		}
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (p == NULL) {
		b->failed = 1;
		return 0;
	}
	b->p = p;
	b->cap = cap;
	return 1;
}

void g_buf_put(g_buf *b, const char *s, size_t n)
{
	if (!buf_grow(b, n))
		return;
	if (n > 0)
		memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

void g_buf_puts(g_buf *b, const char *s)
{
	g_buf_put(b, s, strlen(s));
}

void g_buf_printf(g_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (k < 0) {
		b->failed = 1;
		return;
	}
	if (!buf_grow(b, (size_t)k))
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
	va_end(ap);
	b->n += (size_t)k;
}

void g_buf_utf8(g_buf *b, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	g_buf_put(b, u, n);
}

int g_utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
	if (n == 0)
		return 0;
	utf8proc_int32_t v;
	const utf8proc_ssize_t k = utf8proc_iterate(s, n < 4 ? (utf8proc_ssize_t)n : 4, &v);
	if (k <= 0)
		return 0;
	*cp = (uint32_t)v;
	return (int)k;
}

void g_buf_lit(g_buf *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '"':
			g_buf_puts(b, "\\\"");
			break;
		case '\\':
			g_buf_puts(b, "\\\\");
			break;
		case '\n':
			g_buf_puts(b, "\\n");
			break;
		case '\r':
			g_buf_puts(b, "\\r");
			break;
		case '\t':
			g_buf_puts(b, "\\t");
			break;
		default:
			if (c < 0x20 || c == 0x7F)
				g_buf_printf(b, "\\x%02X", c);
			else
				g_buf_put(b, (const char *)&c, 1);
		}
	}
}

moe_err moe_grammar_literal(char **out, const char *text, size_t len)
{
	if (out == NULL || (text == NULL && len > 0))
		return moe_fail(MOE_ERR_INVAL, "moe_grammar_literal: NULL argument");
	/* Bytes >= 0x80 are copied: a literal holds UTF-8.  A byte that is not
	 * part of valid UTF-8 could not be written as a code point escape, so it
	 * is refused. */
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		const int k = g_utf8_next((const uint8_t *)text + i, len - i, &cp);
		if (k == 0)
			return moe_fail(MOE_ERR_INVAL, "moe_grammar_literal: invalid UTF-8 at %zu",
			                i);
		i += (size_t)k;
	}
	g_buf b = {0};
	g_buf_puts(&b, "\"");
	g_buf_lit(&b, text, len);
	g_buf_puts(&b, "\"");
	if (b.failed) {
		free(b.p);
		return moe_fail(MOE_ERR_NOMEM, "moe_grammar_literal: %zu bytes", len);
	}
	*out = b.p;
	return MOE_OK;
}

moe_err g_vec_reserve(g_vec *v, size_t extra)
{
	/* an array reserved is never NULL, even for no elements: an offset
	 * into it (tables' acc + 0 where no state accepts a token by id) must
	 * not be one into NULL (UBSan, fuzz_grammar) */
	if (v->n + extra <= v->cap && v->v != NULL)
		return MOE_OK;
	size_t cap = v->cap ? v->cap : 64;
	while (cap < v->n + extra) {
		if (cap > (SIZE_MAX / sizeof(uint32_t)) / 2)
			return moe_fail(MOE_ERR_NOMEM, "grammar: array of %zu", v->n + extra);
		cap *= 2;
	}
	uint32_t *p = realloc(v->v, cap * sizeof(uint32_t));
	if (p == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar: array of %zu", cap);
	v->v = p;
	v->cap = cap;
	return MOE_OK;
}

struct g_chunk {
	g_chunk *prev;
	max_align_t data[];
};

void *g_arena_alloc(g_arena *a, size_t n)
{
	n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
	if (a->head == NULL || a->used + n > a->cap) {
		size_t cap = n > 65536 ? n : 65536;
		g_chunk *c = malloc(sizeof(g_chunk) + cap);
		if (c == NULL)
			return NULL;
		c->prev = a->head;
		a->head = c;
		a->used = 0;
		a->cap = cap;
	}
	void *p = (char *)a->head->data + a->used;
	a->used += n;
	memset(p, 0, n);
	return p;
}

void g_arena_free(g_arena *a)
{
	g_chunk *c = a->head;
	while (c != NULL) {
		g_chunk *prev = c->prev;
		free(c);
		c = prev;
	}
	a->head = NULL;
	a->used = a->cap = 0;
}
