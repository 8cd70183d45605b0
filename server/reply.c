/* reply.c - the model's generated text taken apart into content, reasoning
 * and tool calls, incrementally (reply.h). */
#include "server/reply.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct buf {
	char *p;
	size_t n, cap;
} buf;

static bool buf_add(buf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 256;
		while (c < b->n + n + 1)
			c *= 2;
		char *q = realloc(b->p, c);
		if (q == NULL)
			return false;
		b->p = q;
		b->cap = c;
	}
	if (n > 0)
		memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return true;
}

static bool buf_adds(buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

static void buf_drop(buf *b, size_t n) /* removes the first n bytes */
{
	memmove(b->p, b->p + n, b->n - n);
	b->n -= n;
	if (b->p != NULL)
		b->p[b->n] = '\0';
}

enum state {
	ST_START,    /* before anything: <think> may open the reasoning */
	ST_REASON,   /* inside <think> */
	ST_CONTENT,  /* the answer */
	ST_TOOL,     /* inside <tool_call> */
	ST_H_HEADER, /* harmony: a message's header, up to <|message|> */
	ST_H_BODY,   /* harmony: a message's body */
	ST_FAILED,
};

enum channel { CH_CONTENT, CH_REASON, CH_TOOL };

struct moe_reply_parser {
	moe_reply_opts o;
	enum state st;
	buf in;    /* fed, not yet settled */
	buf held;  /* trailing whitespace of the text being emitted, not yet sent */
	bool lead; /* drop leading whitespace of the next text */
	moe_reply_cb cb;
	void *ctx;
	int n_tools;    /* completed calls */
	bool truncated; /* the text was cut: an unfinished call ends as it is */
	/* the tool call being read */
	buf body; /* ST_TOOL: the call's text so far */
	buf name;
	buf args;     /* the arguments emitted so far */
	bool begun;   /* TOOL_BEGIN sent */
	int n_params; /* XML: parameters emitted */
	/* harmony */
	buf hdr;
	enum channel ch;
};

static const char think_open[] = "<think>", think_close[] = "</think>";
static const char tool_open[] = "<tool_call>", tool_close[] = "</tool_call>";
static const char h_message[] = "<|message|>";
static const char *const h_ends[] = {"<|end|>", "<|call|>", "<|return|>", "<|start|>"};

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t i, size_t n)
{
	while (i < n && is_ws(s[i]))
		i++;
	return i;
}

/* ---- events ------------------------------------------------------------------ */

static moe_err send(moe_reply_parser *p, moe_reply_kind kind, const char *text, size_t len,
                    const char *name)
{
	const moe_reply_event ev = {
	    .kind = kind, .index = p->n_tools, .text = text, .len = len, .name = name};
	if (!p->cb(p->ctx, &ev))
		return moe_fail(MOE_ERR_CANCELED, "reply: stopped by the receiver");
	return MOE_OK;
}

/* Sends text as CONTENT or REASONING.  With trim, whitespace at the start of
 * a text (p->lead) is dropped and trailing whitespace is held back until
 * more text shows it is inside (flush_held) or markup ends it (drop). */
static moe_err emit_text(moe_reply_parser *p, moe_reply_kind kind, const char *s, size_t n,
                         bool trim)
{
	if (!trim)
		return n > 0 ? send(p, kind, s, n, NULL) : MOE_OK;
	if (p->lead) {
		const size_t i = skip_ws(s, 0, n);
		s += i;
		n -= i;
		if (n == 0)
			return MOE_OK;
		p->lead = false;
	}
	size_t t = n;
	while (t > 0 && is_ws(s[t - 1]))
		t--;
	moe_err err;
	if (t > 0) {
		if (p->held.n > 0) {
			if ((err = send(p, kind, p->held.p, p->held.n, NULL)) != MOE_OK)
				return err;
			p->held.n = 0;
		}
		if ((err = send(p, kind, s, t, NULL)) != MOE_OK)
			return err;
	}
	if (!buf_add(&p->held, s + t, n - t))
		return moe_fail(MOE_ERR_NOMEM, "reply");
	return MOE_OK;
}

/* ---- JSON helpers --------------------------------------------------------------- */

/* Appends s[0..n) as a JSON string (UTF-8 kept, controls escaped). */
static bool json_str(buf *b, const char *s, size_t n)
{
	if (!buf_add(b, "\"", 1))
		return false;
	for (size_t i = 0; i < n; i++) {
		const unsigned char c = (unsigned char)s[i];
		char esc[8];
		const char *e = NULL;
		switch (c) {
		case '"':
			e = "\\\"";
			break;
		case '\\':
			e = "\\\\";
			break;
		case '\n':
			e = "\\n";
			break;
		case '\r':
			e = "\\r";
			break;
		case '\t':
			e = "\\t";
			break;
		case '\b':
			e = "\\b";
			break;
		case '\f':
			e = "\\f";
			break;
		default:
			if (c < 0x20) {
				snprintf(esc, sizeof esc, "\\u%04x", c);
				e = esc;
			}
		}
		if (!(e ? buf_adds(b, e) : buf_add(b, s + i, 1)))
			return false;
	}
	return buf_add(b, "\"", 1);
}

enum scan { SCAN_DONE, SCAN_MORE, SCAN_BAD };

/* Scans the JSON value at s[*i..n) and moves *i past it.  SCAN_MORE: the text
 * ends inside it (*i = n); SCAN_BAD: not JSON.  A number at the very end is
 * SCAN_MORE unless final.  Depth is bounded. */
static enum scan scan_value(const char *s, size_t *i, size_t n, bool final, int depth)
{
	size_t k = skip_ws(s, *i, n);
	if (k == n) {
		*i = n;
		return SCAN_MORE;
	}
	if (depth > 64)
		return SCAN_BAD;
	const char c = s[k];
	if (c == '"') {
		for (k++; k < n; k++) {
			if (s[k] == '\\') {
				k++;
			} else if (s[k] == '"') {
				*i = k + 1;
				return SCAN_DONE;
			} else if ((unsigned char)s[k] < 0x20) {
				return SCAN_BAD;
			}
		}
		*i = n;
		return SCAN_MORE;
	}
	if (c == '{' || c == '[') {
		const char close = c == '{' ? '}' : ']';
		k = skip_ws(s, k + 1, n);
		if (k < n && s[k] == close) {
			*i = k + 1;
			return SCAN_DONE;
		}
		for (;;) {
			if (c == '{') {
				k = skip_ws(s, k, n);
				if (k < n && s[k] != '"')
					return SCAN_BAD;
				enum scan r = scan_value(s, &k, n, final, depth + 1);
				if (r != SCAN_DONE) {
					*i = n;
					return r;
				}
				k = skip_ws(s, k, n);
				if (k == n) {
					*i = n;
					return SCAN_MORE;
				}
				if (s[k++] != ':')
					return SCAN_BAD;
			}
			enum scan r = scan_value(s, &k, n, final, depth + 1);
			if (r != SCAN_DONE) {
				*i = n;
				return r;
			}
			k = skip_ws(s, k, n);
			if (k == n) {
				*i = n;
				return SCAN_MORE;
			}
			if (s[k] == close) {
				*i = k + 1;
				return SCAN_DONE;
			}
			if (s[k++] != ',')
				return SCAN_BAD;
		}
	}
	/* number or literal: up to a delimiter */
	size_t e = k;
	while (e < n && !is_ws(s[e]) && !memchr(",]}:", s[e], 4))
		e++;
	if (e == n && !final) {
		*i = n;
		return SCAN_MORE;
	}
	cJSON *j = cJSON_ParseWithLength(s + k, e - k);
	const bool ok = j != NULL && (cJSON_IsNumber(j) || cJSON_IsBool(j) || cJSON_IsNull(j));
	cJSON_Delete(j);
	if (!ok)
		return SCAN_BAD;
	*i = e;
	return SCAN_DONE;
}

/* Whether s[0..n) is exactly one JSON number. */
static bool is_json_number(const char *s, size_t n)
{
	size_t i = 0;
	if (i < n && s[i] == '-')
		i++;
	if (i == n || s[i] < '0' || s[i] > '9')
		return false;
	if (s[i] == '0')
		i++;
	else
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	if (i < n && s[i] == '.') {
		if (++i == n || s[i] < '0' || s[i] > '9')
			return false;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i == n || s[i] < '0' || s[i] > '9')
			return false;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	return i == n;
}

static bool is_integer(const char *s, size_t n)
{
	return is_json_number(s, n) && memchr(s, '.', n) == NULL && memchr(s, 'e', n) == NULL &&
	       memchr(s, 'E', n) == NULL;
}

/* ---- tool calls ------------------------------------------------------------------- */

static void tool_reset(moe_reply_parser *p)
{
	p->body.n = p->name.n = p->args.n = 0;
	p->begun = false;
	p->n_params = 0;
}

static moe_err tool_begin(moe_reply_parser *p)
{
	if (p->begun)
		return MOE_OK;
	p->begun = true;
	return send(p, MOE_REPLY_TOOL_BEGIN, NULL, 0, p->name.p ? p->name.p : "");
}

/* Sends s[0..n) as arguments and keeps it for TOOL_END. */
static moe_err tool_args(moe_reply_parser *p, const char *s, size_t n)
{
	if (n == 0)
		return MOE_OK;
	if (!buf_add(&p->args, s, n))
		return moe_fail(MOE_ERR_NOMEM, "reply");
	return send(p, MOE_REPLY_TOOL_ARGS, s, n, NULL);
}

static moe_err tool_end(moe_reply_parser *p)
{
	moe_err err = send(p, MOE_REPLY_TOOL_END, p->args.p ? p->args.p : "", p->args.n, NULL);
	p->n_tools++;
	tool_reset(p);
	return err;
}

static moe_err bad_call(const moe_reply_parser *p, const char *why)
{
	const int n = p->body.n > 120 ? 120 : (int)p->body.n;
	return moe_fail(MOE_ERR_FORMAT, "tool call %d %s: '%.*s%s'", p->n_tools, why, n,
	                p->body.p ? p->body.p : "", p->body.n > 120 ? "..." : "");
}

/* JSON form: {"name": N, "arguments": {...}} in p->body.  Sends the name as
 * soon as it is complete and the arguments' bytes as they arrive; with done
 * (the call's text is complete) checks the whole and ends the call. */
static moe_err json_call(moe_reply_parser *p, bool done)
{
	const char *s = p->body.p ? p->body.p : "";
	const size_t n = p->body.n;
	size_t i = skip_ws(s, 0, n), a0 = 0, a1 = 0;
	bool have_args = false, args_done = false, closed = false;
	moe_err err;
	if (i < n && s[i] != '{')
		return bad_call(p, "is not a JSON object");
	for (i++; i < n;) {
		i = skip_ws(s, i, n);
		if (i == n)
			break;
		if (s[i] == '}') {
			closed = true;
			i++;
			break;
		}
		const size_t k0 = i;
		enum scan r = scan_value(s, &i, n, done, 0);
		if (r == SCAN_BAD || s[k0] != '"')
			return bad_call(p, "is not a JSON object");
		if (r == SCAN_MORE)
			break;
		const size_t klen = i - k0;
		i = skip_ws(s, i, n);
		if (i == n)
			break;
		if (s[i++] != ':')
			return bad_call(p, "is not a JSON object");
		i = skip_ws(s, i, n);
		const size_t v0 = i;
		r = scan_value(s, &i, n, done, 0);
		if (r == SCAN_BAD)
			return bad_call(p, "is not valid JSON");
		/* the first "name" is the call's (as cJSON reads it), whatever
		 * follows and however the text arrives in pieces */
		if (klen == 6 && memcmp(s + k0, "\"name\"", 6) == 0 && r == SCAN_DONE &&
		    p->name.n == 0 && !p->begun) {
			cJSON *j = cJSON_ParseWithLength(s + v0, i - v0);
			bool ok = cJSON_IsString(j) && j->valuestring[0] != '\0';
			if (ok) {
				p->name.n = 0;
				ok = buf_adds(&p->name, j->valuestring);
			}
			cJSON_Delete(j);
			if (!ok)
				return bad_call(p, "has no function name");
		} else if ((klen == 11 && memcmp(s + k0, "\"arguments\"", 11) == 0) ||
		           (klen == 12 && memcmp(s + k0, "\"parameters\"", 12) == 0)) {
			if (v0 < n && s[v0] != '{')
				return bad_call(p, "has arguments that are not a JSON object");
			have_args = true;
			a0 = v0;
			a1 = i;
			args_done = r == SCAN_DONE;
		}
		if (r == SCAN_MORE)
			break;
		i = skip_ws(s, i, n);
		if (i == n)
			break;
		if (s[i] == ',') {
			i++;
		} else if (s[i] == '}') {
			closed = true;
			i++;
			break;
		} else {
			return bad_call(p, "is not a JSON object");
		}
	}
	if (closed && skip_ws(s, i, n) != n)
		return bad_call(p, "has text after its JSON object");
	if (p->name.n > 0 && (err = tool_begin(p)) != MOE_OK)
		return err;
	if (p->begun && have_args && a1 - a0 > p->args.n &&
	    (err = tool_args(p, s + a0 + p->args.n, a1 - a0 - p->args.n)) != MOE_OK)
		return err;
	if (!done)
		return MOE_OK;
	if (!closed || (have_args && !args_done))
		return bad_call(p, "is not valid JSON");
	if (p->name.n == 0)
		return bad_call(p, "has no function name");
	cJSON *j = cJSON_ParseWithLength(s, n);
	const bool valid = j != NULL;
	cJSON_Delete(j);
	if (!valid)
		return bad_call(p, "is not valid JSON");
	if (!have_args && (err = tool_args(p, "{}", 2)) != MOE_OK)
		return err;
	return tool_end(p);
}

/* The JSON type a tool's schema gives parameter key of function fn: "string",
 * "integer", ... or NULL (unknown).  A list of types gives its first type
 * other than "null", and *nullable. */
static const char *param_type(const moe_reply_parser *p, const char *fn, const char *key,
                              bool *nullable)
{
	*nullable = false;
	const cJSON *t;
	cJSON_ArrayForEach(t, p->o.tools)
	{
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
		const cJSON *nm = cJSON_GetObjectItemCaseSensitive(f, "name");
		if (!cJSON_IsString(nm) || strcmp(nm->valuestring, fn) != 0)
			continue;
		const cJSON *pr = cJSON_GetObjectItemCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(f, "parameters"), "properties");
		const cJSON *ty = cJSON_GetObjectItemCaseSensitive(
		    cJSON_GetObjectItemCaseSensitive(pr, key), "type");
		if (cJSON_IsString(ty))
			return ty->valuestring;
		const char *first = NULL;
		const cJSON *e;
		cJSON_ArrayForEach(e, ty)
		{
			if (!cJSON_IsString(e))
				continue;
			if (strcmp(e->valuestring, "null") == 0)
				*nullable = true;
			else if (first == NULL)
				first = e->valuestring;
		}
		return first;
	}
	return NULL;
}

/* Appends the JSON of an XML parameter's text v[0..n) as its schema type:
 * numbers, booleans, null, objects and arrays where the text is one (else the
 * text as a string); with no type known, whatever JSON the text is. */
static bool xml_value(buf *out, const char *type, bool nullable, const char *v, size_t n)
{
	size_t a = skip_ws(v, 0, n), b = n;
	while (b > a && is_ws(v[b - 1]))
		b--;
	const char *t = v + a;
	const size_t tn = b - a;
	if (nullable && tn == 4 && memcmp(t, "null", 4) == 0)
		return buf_adds(out, "null");
	if (type != NULL && strcmp(type, "string") == 0)
		return json_str(out, v, n);
	if (type != NULL && strcmp(type, "integer") == 0)
		return is_integer(t, tn) ? buf_add(out, t, tn) : json_str(out, v, n);
	if (type != NULL && strcmp(type, "number") == 0)
		return is_json_number(t, tn) ? buf_add(out, t, tn) : json_str(out, v, n);
	if (type != NULL && strcmp(type, "boolean") == 0) {
		if (tn == 4 && strncasecmp(t, "true", 4) == 0)
			return buf_adds(out, "true");
		if (tn == 5 && strncasecmp(t, "false", 5) == 0)
			return buf_adds(out, "false");
		return json_str(out, v, n);
	}
	cJSON *j = tn > 0 ? cJSON_ParseWithLength(t, tn) : NULL;
	bool as_json = j != NULL;
	if (as_json && type != NULL)
		as_json = (strcmp(type, "object") == 0 && cJSON_IsObject(j)) ||
		          (strcmp(type, "array") == 0 && cJSON_IsArray(j)) ||
		          (strcmp(type, "null") == 0 && cJSON_IsNull(j));
	if (as_json && type == NULL && cJSON_IsString(j))
		as_json = false; /* a quoted text stays the text the model wrote */
	cJSON_Delete(j);
	return as_json ? buf_add(out, t, tn) : json_str(out, v, n);
}

/* XML form: <function=N>\n<parameter=P>\nV\n</parameter>\n...</function> in
 * p->body.  Each parameter is sent when its closing tag arrives. */
static moe_err xml_call(moe_reply_parser *p, bool done)
{
	static const char fo[] = "<function=", fc[] = "</function>",
	                  po[] = "<parameter=", pc[] = "</parameter>";
	const char *s = p->body.p ? p->body.p : "";
	const size_t n = p->body.n;
	size_t i = skip_ws(s, 0, n);
	moe_err err;
	const size_t rest = n - i;
	if (rest < sizeof fo - 1 ? memcmp(s + i, fo, rest) != 0 : memcmp(s + i, fo, sizeof fo - 1))
		return bad_call(p, "does not start with <function=NAME>");
	const char *gt = memchr(s + i, '>', n - i);
	if (gt == NULL)
		return done ? bad_call(p, "does not start with <function=NAME>") : MOE_OK;
	if (!p->begun) {
		size_t a = i + sizeof fo - 1, b = (size_t)(gt - s);
		p->name.n = 0;
		if (b == a || !buf_add(&p->name, s + a, b - a))
			return b == a ? bad_call(p, "has no function name")
			              : moe_fail(MOE_ERR_NOMEM, "reply");
		if ((err = tool_begin(p)) != MOE_OK)
			return err;
	}
	i = (size_t)(gt - s) + 1;
	for (int k = 0;; k++) {
		i = skip_ws(s, i, n);
		if (n - i >= sizeof fc - 1 && memcmp(s + i, fc, sizeof fc - 1) == 0) {
			if (skip_ws(s, i + sizeof fc - 1, n) != n)
				return bad_call(p, "has text after </function>");
			if (k >= p->n_params) { /* not sent yet (k < n_params: the close was) */
				if ((err = tool_args(p, k == 0 ? "{}" : "}", k == 0 ? 2 : 1)) !=
				    MOE_OK)
					return err;
				p->n_params = k + 1;
			}
			return done ? tool_end(p) : MOE_OK;
		}
		if (n - i < sizeof po - 1) {
			if (memcmp(s + i, po, n - i) != 0 && memcmp(s + i, fc, n - i) != 0)
				return bad_call(p, "holds text that is not a <parameter=...>");
			break;
		}
		if (memcmp(s + i, po, sizeof po - 1) != 0)
			return bad_call(p, "holds text that is not a <parameter=...>");
		const char *pgt = memchr(s + i, '>', n - i);
		const char *end =
		    pgt ? memmem(pgt, n - (size_t)(pgt - s), pc, sizeof pc - 1) : NULL;
		if (end == NULL)
			break;
		if (k >= p->n_params) {
			const size_t ka = i + sizeof po - 1, kb = (size_t)(pgt - s);
			size_t va = kb + 1, vb = (size_t)(end - s);
			if (va < vb && s[va] == '\n')
				va++;
			if (vb > va && s[vb - 1] == '\n')
				vb--;
			char key[256];
			if (kb - ka == 0 || kb - ka >= sizeof key)
				return bad_call(p, "has a parameter without a usable name");
			memcpy(key, s + ka, kb - ka);
			key[kb - ka] = '\0';
			bool nullable;
			const char *type = param_type(p, p->name.p, key, &nullable);
			buf piece = {0};
			bool ok = buf_adds(&piece, k == 0 ? "{" : ", ") &&
			          json_str(&piece, key, kb - ka) && buf_adds(&piece, ": ") &&
			          xml_value(&piece, type, nullable, s + va, vb - va);
			err =
			    ok ? tool_args(p, piece.p, piece.n) : moe_fail(MOE_ERR_NOMEM, "reply");
			free(piece.p);
			if (err != MOE_OK)
				return err;
			p->n_params = k + 1;
		}
		i = (size_t)(end - s) + sizeof pc - 1;
	}
	if (done)
		return bad_call(p, "ends inside a parameter or without </function>");
	return MOE_OK;
}

/* Reads p->body as the current call; done: the call's text is complete. */
static moe_err tool_step(moe_reply_parser *p, bool done)
{
	const size_t i = skip_ws(p->body.p ? p->body.p : "", 0, p->body.n);
	if (i == p->body.n) {
		if (done)
			return bad_call(p, "is empty");
		return MOE_OK;
	}
	/* either form is read in either format: models stray */
	return p->body.p[i] == '{' ? json_call(p, done) : xml_call(p, done);
}

/* ---- harmony ----------------------------------------------------------------------- */

/* Sets p->ch (and the call's name) from a header such as
 * "assistant to=functions.get_weather<|channel|>commentary <|constrain|>json". */
static moe_err harmony_header(moe_reply_parser *p)
{
	const char *h = p->hdr.p ? p->hdr.p : "";
	const char *c = strstr(h, "<|channel|>");
	const char *to = strstr(h, "to=");
	char chan[32] = "";
	if (c != NULL) {
		c += strlen("<|channel|>");
		size_t k = 0;
		while (c[k] && !is_ws(c[k]) && c[k] != '<' && k + 1 < sizeof chan) {
			chan[k] = c[k];
			k++;
		}
		chan[k] = '\0';
	}
	if (to != NULL) {
		to += 3;
		size_t k = 0;
		while (to[k] && !is_ws(to[k]) && to[k] != '<')
			k++;
		if (k > 10 && strncmp(to, "functions.", 10) == 0) {
			to += 10;
			k -= 10;
		}
		tool_reset(p);
		if (k == 0 || !buf_add(&p->name, to, k))
			return k == 0 ? moe_fail(MOE_ERR_FORMAT, "tool call %d: empty recipient",
			                         p->n_tools)
			              : moe_fail(MOE_ERR_NOMEM, "reply");
		p->ch = CH_TOOL;
		return tool_begin(p);
	}
	p->ch = strcmp(chan, "analysis") == 0 && p->o.reasoning ? CH_REASON : CH_CONTENT;
	return MOE_OK;
}

static moe_err harmony_text(moe_reply_parser *p, const char *s, size_t n)
{
	if (p->ch == CH_TOOL) {
		if (!buf_add(&p->body, s, n))
			return moe_fail(MOE_ERR_NOMEM, "reply");
		return tool_args(p, s, n);
	}
	return emit_text(p, p->ch == CH_REASON ? MOE_REPLY_REASONING : MOE_REPLY_CONTENT, s, n,
	                 false);
}

static moe_err harmony_end(moe_reply_parser *p)
{
	if (p->ch != CH_TOOL)
		return MOE_OK;
	p->ch = CH_CONTENT;
	cJSON *j = cJSON_ParseWithLength(p->args.p ? p->args.p : "", p->args.n);
	const bool ok = cJSON_IsObject(j);
	cJSON_Delete(j);
	if (!ok)
		return bad_call(p, "has arguments that are not a JSON object");
	return tool_end(p);
}

/* ---- the state machine ------------------------------------------------------------- */

/* The earliest of the markers in s[0..n): its index in *which and offset in
 * *at; false if none occurs.  *keep: how many bytes at the end could be the
 * start of a marker (a proper prefix of one). */
static bool find_marker(int *which, size_t *at, size_t *keep, const char *s, size_t n,
                        const char *const *marks, int n_marks)
{
	bool found = false;
	*keep = 0;
	for (int m = 0; m < n_marks; m++) {
		const size_t ml = strlen(marks[m]);
		const char *q = memmem(s, n, marks[m], ml);
		if (q != NULL && (!found || (size_t)(q - s) < *at)) {
			found = true;
			*which = m;
			*at = (size_t)(q - s);
		}
		for (size_t k = ml - 1; k > *keep; k--)
			if (k <= n && memcmp(s + n - k, marks[m], k) == 0) {
				*keep = k;
				break;
			}
	}
	return found;
}

static bool has_tools(const moe_reply_parser *p)
{
	return p->o.format == MOE_REPLY_QWEN3_JSON || p->o.format == MOE_REPLY_QWEN3_XML;
}

/* One settling step; *more: call again. */
static moe_err step(moe_reply_parser *p, bool final, bool *more)
{
	const char *s = p->in.p ? p->in.p : "";
	const size_t n = p->in.n;
	const char *marks[4];
	int n_marks = 0;
	moe_err err = MOE_OK;
	*more = false;

	if (p->st == ST_START) {
		if (!p->o.reasoning) {
			p->st = ST_CONTENT;
			*more = true;
			return MOE_OK;
		}
		const size_t i = skip_ws(s, 0, n), ol = sizeof think_open - 1;
		if (n - i >= ol && memcmp(s + i, think_open, ol) == 0) {
			buf_drop(&p->in, i + ol);
			p->st = ST_REASON;
			p->lead = true;
			*more = true;
		} else if (final || (n > i && (n - i >= ol || memcmp(s + i, think_open, n - i)))) {
			p->st = ST_CONTENT;
			p->lead = true;
			*more = true;
		}
		return MOE_OK;
	}

	switch (p->st) {
	case ST_REASON:
		marks[n_marks++] = think_close;
		break;
	case ST_CONTENT:
		if (has_tools(p))
			marks[n_marks++] = tool_open;
		break;
	case ST_TOOL:
		marks[n_marks++] = tool_close;
		break;
	case ST_H_HEADER:
		marks[n_marks++] = h_message;
		break;
	case ST_H_BODY:
		for (int k = 0; k < 4; k++)
			marks[n_marks++] = h_ends[k];
		break;
	default:
		break;
	}
	int which = 0;
	size_t at = n, keep = 0;
	const bool found = n_marks > 0 && find_marker(&which, &at, &keep, s, n, marks, n_marks);
	const size_t upto = found ? at : final ? n : n - keep;
	const bool trim = p->o.reasoning || has_tools(p);

	switch (p->st) {
	case ST_REASON:
		err = emit_text(p, MOE_REPLY_REASONING, s, upto, true);
		break;
	case ST_CONTENT:
		err = emit_text(p, MOE_REPLY_CONTENT, s, upto, trim);
		break;
	case ST_TOOL:
		if (!buf_add(&p->body, s, upto))
			return moe_fail(MOE_ERR_NOMEM, "reply");
		if (!found && final && p->truncated) {
			/* cut by the token limit: the call ends with what it has */
			err = tool_step(p, false);
			if (err == MOE_OK && p->begun)
				err = tool_end(p);
			p->st = ST_CONTENT;
			break;
		}
		err = tool_step(p, found || final);
		if (err == MOE_OK && !found && final)
			p->st = ST_CONTENT; /* a whole call the text ended after */
		break;
	case ST_H_HEADER:
		if (!buf_add(&p->hdr, s, upto))
			return moe_fail(MOE_ERR_NOMEM, "reply");
		break;
	case ST_H_BODY:
		err = harmony_text(p, s, upto);
		break;
	default:
		break;
	}
	if (err != MOE_OK)
		return err;
	if (!found) {
		buf_drop(&p->in, upto);
		if (final) {
			if (p->st == ST_CONTENT && p->n_tools == 0 && p->held.n > 0)
				err = send(p, MOE_REPLY_CONTENT, p->held.p, p->held.n, NULL);
			else if (p->st == ST_H_BODY && p->ch == CH_TOOL && p->truncated)
				err = tool_end(p);
			else if (p->st == ST_H_BODY)
				err = harmony_end(p);
			p->held.n = 0;
		}
		return err;
	}
	buf_drop(&p->in, at + strlen(marks[which]));
	p->held.n = 0; /* whitespace next to markup */
	*more = true;
	switch (p->st) {
	case ST_REASON:
		p->st = ST_CONTENT;
		p->lead = true;
		break;
	case ST_CONTENT:
		tool_reset(p);
		p->st = ST_TOOL;
		break;
	case ST_TOOL:
		p->st = ST_CONTENT;
		p->lead = true;
		break;
	case ST_H_HEADER:
		err = harmony_header(p);
		p->hdr.n = 0;
		p->st = ST_H_BODY;
		break;
	case ST_H_BODY:
		err = harmony_end(p);
		p->st = ST_H_HEADER;
		break;
	default:
		break;
	}
	return err;
}

moe_err moe_reply_parser_feed(moe_reply_parser *p, const char *text, size_t len, bool final,
                              moe_reply_cb cb, void *ctx)
{
	if (p->st == ST_FAILED)
		return moe_fail(MOE_ERR_STATE, "reply: the parser failed before");
	if (!buf_add(&p->in, text, len))
		return moe_fail(MOE_ERR_NOMEM, "reply");
	p->cb = cb;
	p->ctx = ctx;
	moe_err err = MOE_OK;
	bool more = true;
	while (more && err == MOE_OK)
		err = step(p, final, &more);
	if (err != MOE_OK)
		p->st = ST_FAILED;
	return err;
}

void moe_reply_parser_truncated(moe_reply_parser *p)
{
	p->truncated = true;
}

bool moe_reply_parser_in_tool(const moe_reply_parser *p)
{
	return p->st == ST_TOOL || (p->st == ST_H_BODY && p->ch == CH_TOOL);
}

int moe_reply_parser_n_tools(const moe_reply_parser *p)
{
	return p->n_tools;
}

moe_err moe_reply_parser_create(moe_reply_parser **out, const moe_reply_opts *o)
{
	moe_reply_parser *p = calloc(1, sizeof *p);
	if (p == NULL)
		return moe_fail(MOE_ERR_NOMEM, "reply parser");
	p->o = *o;
	if (o->format == MOE_REPLY_HARMONY)
		p->st = ST_H_HEADER;
	else if (o->reasoning && o->in_reasoning) {
		p->st = ST_REASON;
		p->lead = true;
	} else
		p->st = ST_START;
	*out = p;
	return MOE_OK;
}

void moe_reply_parser_destroy(moe_reply_parser *p)
{
	if (p == NULL)
		return;
	free(p->in.p);
	free(p->held.p);
	free(p->body.p);
	free(p->name.p);
	free(p->args.p);
	free(p->hdr.p);
	free(p);
}
