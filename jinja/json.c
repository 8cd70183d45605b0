/* json.c - JSON in and out: JSON text to values (through Jansson, which keeps
 * ints apart from floats and object keys in order) and values to JSON text
 * exactly as Python's json.dumps writes it (tojson). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Converts j into a heap value (depth bounded by Jansson's parser). */
static moe_err from_jansson(jv *out, json_t *j)
{
	moe_err e;
	switch (json_typeof(j)) {
	case JSON_NULL:
		*out = jv_make(JV_NONE);
		return MOE_OK;
	case JSON_TRUE:
		*out = jv_bool(1);
		return MOE_OK;
	case JSON_FALSE:
		*out = jv_bool(0);
		return MOE_OK;
	case JSON_INTEGER:
		*out = jv_int((int64_t)json_integer_value(j));
		return MOE_OK;
	case JSON_REAL:
		*out = jv_float(json_real_value(j));
		return MOE_OK;
	case JSON_STRING: {
		const jstr *s = jstr_new(NULL, json_string_value(j), json_string_length(j));
		if (!s)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		*out = jv_str(s);
		return MOE_OK;
	}
	case JSON_ARRAY: {
		size_t n = json_array_size(j);
		jlist *l = jlist_new(NULL, n, JL_LIST);
		if (!l)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		*out = jv_list(l);
		for (size_t i = 0; i < n; i++) {
			jv item = jv_make(JV_NONE);
			e = from_jansson(&item, json_array_get(j, i));
			if (e) {
				jv_free_heap(item);
				return e; /* the caller frees *out */
			}
			l->v[l->n++] = item;
		}
		return MOE_OK;
	}
	case JSON_OBJECT: {
		jdict *d = jdict_new(NULL, json_object_size(j));
		if (!d)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		*out = jv_dict(d);
		const char *key;
		size_t klen;
		json_t *val;
		json_object_keylen_foreach(j, key, klen, val)
		{
			const jstr *k = jstr_new(NULL, key, klen);
			if (!k)
				return moe_fail(MOE_ERR_NOMEM, "out of memory");
			jv item = jv_make(JV_NONE);
			e = from_jansson(&item, val);
			if (!e)
				e = jdict_set(NULL, d, k, item);
			if (e) {
				jv_free_heap(item);
				free((void *)k);
				return e;
			}
		}
		return MOE_OK;
	}
	}
	return moe_fail(MOE_ERR_FORMAT, "JSON: unknown value type");
}

moe_err moe_jinja_value_from_json(moe_jinja_value **out, const char *json, size_t len)
{
	*out = NULL;
	if (!json && len)
		return moe_fail(MOE_ERR_INVAL, "moe_jinja_value_from_json: NULL text");
	json_error_t jerr;
	json_t *j = json_loadb(json ? json : "", len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (!j)
		return moe_fail(MOE_ERR_FORMAT, "JSON line %d column %d: %s", jerr.line,
		                jerr.column, jerr.text);
	jv v = jv_make(JV_NONE);
	moe_err e = from_jansson(&v, j);
	json_decref(j);
	if (e)
		goto free_value;
	*out = malloc(sizeof(**out));
	if (!*out) {
		e = moe_fail(MOE_ERR_NOMEM, "out of memory");
		goto free_value;
	}
	(*out)->v = v;
	return MOE_OK;
free_value:
	jv_free_heap(v);
	return e;
}

/* ---- json.dumps ---- */

static moe_err write_json_str(jbuf *b, const char *s, size_t n, int ascii)
{
	moe_err e = jbuf_putc(b, '"');
	size_t i = 0;
	while (i < n && !e) {
		size_t st = i;
		uint32_t c = utf8_next(s, n, &i);
		switch (c) {
		case '"':
			e = jbuf_puts(b, "\\\"");
			break;
		case '\\':
			e = jbuf_puts(b, "\\\\");
			break;
		case '\n':
			e = jbuf_puts(b, "\\n");
			break;
		case '\r':
			e = jbuf_puts(b, "\\r");
			break;
		case '\t':
			e = jbuf_puts(b, "\\t");
			break;
		case '\b':
			e = jbuf_puts(b, "\\b");
			break;
		case '\f':
			e = jbuf_puts(b, "\\f");
			break;
		default:
			if (c < 0x20 || (ascii && c >= 0x7f)) {
				if (c >= 0x10000) {
					uint32_t v = c - 0x10000;
					e = jbuf_printf(b, "\\u%04x\\u%04x", 0xD800 | (v >> 10),
					                0xDC00 | (v & 0x3FF));
				} else {
					e = jbuf_printf(b, "\\u%04x", c);
				}
			} else {
				e = jbuf_put(b, s + st, i - st);
			}
		}
	}
	return e ? e : jbuf_putc(b, '"');
}

static moe_err newline_indent(jbuf *b, const jjson_opts *o, int level)
{
	moe_err e = jbuf_putc(b, '\n');
	for (int i = 0; i < level && !e; i++)
		e = jbuf_put(b, o->indent->s, o->indent->len);
	return e;
}

static int key_order(const void *x, const void *y)
{
	const jentry *a = *(const jentry *const *)x, *b = *(const jentry *const *)y;
	size_t n = a->k->len < b->k->len ? a->k->len : b->k->len;
	int c = memcmp(a->k->s, b->k->s, n);
	if (c)
		return c;
	return (a->k->len > b->k->len) - (a->k->len < b->k->len);
}

static moe_err write_json(jbuf *b, jv v, const jjson_opts *o, int level)
{
	char num[40];
	moe_err e = MOE_OK;
	if (level > 512)
		return moe_fail(MOE_ERR_OVERFLOW, "tojson: value nests too deep");
	switch (v.t) {
	case JV_NONE:
		return jbuf_puts(b, "null");
	case JV_BOOL:
		return jbuf_puts(b, v.i ? "true" : "false");
	case JV_INT:
		snprintf(num, sizeof(num), "%lld", (long long)v.i);
		return jbuf_puts(b, num);
	case JV_FLOAT:
		if (isnan(v.f))
			return jbuf_puts(b, "NaN");
		if (isinf(v.f))
			return jbuf_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
		fmt_float(num, v.f);
		return jbuf_puts(b, num);
	case JV_STR:
		return write_json_str(b, v.s->s, v.s->len, o->ensure_ascii);
	case JV_LIST:
		if (v.l->kind != JL_LIST && v.l->kind != JL_TUPLE)
			break;
		if (v.l->n == 0)
			return jbuf_puts(b, "[]");
		e = jbuf_putc(b, '[');
		for (size_t i = 0; i < v.l->n && !e; i++) {
			if (i)
				e = jbuf_put(b, o->item_sep->s, o->item_sep->len);
			if (!e && o->indent)
				e = newline_indent(b, o, level + 1);
			if (!e)
				e = write_json(b, v.l->v[i], o, level + 1);
		}
		if (!e && o->indent)
			e = newline_indent(b, o, level);
		return e ? e : jbuf_putc(b, ']');
	case JV_DICT: {
		const jdict *d = v.d;
		if (d->n == 0)
			return jbuf_puts(b, "{}");
		const jentry **order = malloc(d->n * sizeof(*order));
		if (!order)
			return moe_fail(MOE_ERR_NOMEM, "out of memory");
		for (size_t i = 0; i < d->n; i++)
			order[i] = &d->e[i];
		if (o->sort_keys)
			qsort(order, d->n, sizeof(*order), key_order);
		e = jbuf_putc(b, '{');
		for (size_t i = 0; i < d->n && !e; i++) {
			if (i)
				e = jbuf_put(b, o->item_sep->s, o->item_sep->len);
			if (!e && o->indent)
				e = newline_indent(b, o, level + 1);
			if (!e)
				e = write_json_str(b, order[i]->k->s, order[i]->k->len,
				                   o->ensure_ascii);
			if (!e)
				e = jbuf_put(b, o->key_sep->s, o->key_sep->len);
			if (!e)
				e = write_json(b, order[i]->v, o, level + 1);
		}
		free(order);
		if (!e && o->indent)
			e = newline_indent(b, o, level);
		return e ? e : jbuf_putc(b, '}');
	}
	default:
		break;
	}
	return moe_fail(MOE_ERR_BAD_TYPE, "Object of type %s is not JSON serializable",
	                jv_type_name(v));
}

moe_err jv_write_json(jbuf *b, jv v, const jjson_opts *o)
{
	return write_json(b, v, o, 0);
}
