/* chat.c - chat templates (server.h) and chat requests turned into prompts
 * (chat.h): which template, which reply format it implies, the checks of a
 * request's tools, rendering and tokenizing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/chat.h"

struct moe_chat_template {
	char *text; /* the template's source; NULL: the built-in ChatML */
	const moe_tokenizer *tok;
	moe_reply_format format;
	bool thinks; /* the template writes <think> */
	int32_t end_ids[MOE_GEN_MAX_END];
	int n_end;
};

static const char im_start[] = "<|im_start|>";
static const char im_end[] = "<|im_end|>";

/* ---- the template ----------------------------------------------------------------- */

static bool has(const char *text, const char *what)
{
	return text != NULL && strstr(text, what) != NULL;
}

/* The reply format a template implies by what it tells the model to write. */
static moe_reply_format format_of(const char *text)
{
	if (has(text, "<|channel|>"))
		return MOE_REPLY_HARMONY;
	if (has(text, "<function=") && has(text, "<tool_call>"))
		return MOE_REPLY_QWEN3_XML;
	if (has(text, "<tool_call>"))
		return MOE_REPLY_QWEN3_JSON;
	return MOE_REPLY_PLAIN;
}

static moe_err read_file(char **out, const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return moe_fail(MOE_ERR_IO, "chat template %s: %s", path, strerror(errno));
	char *b = NULL;
	size_t n = 0, cap = 0;
	moe_err err = MOE_OK;
	for (;;) {
		if (n + 4096 + 1 > cap) {
			cap = cap ? 2 * cap : 16384;
			char *q = cap <= (1u << 24) ? realloc(b, cap) : NULL;
			if (q == NULL) {
				err = cap > (1u << 24)
				          ? moe_fail(MOE_ERR_BAD_VALUE,
				                     "chat template %s: over 16 MiB", path)
				          : moe_fail(MOE_ERR_NOMEM, "chat template %s", path);
				goto out_close;
			}
			b = q;
		}
		const size_t k = fread(b + n, 1, 4096, f);
		n += k;
		if (k < 4096)
			break;
	}
	if (ferror(f)) {
		err = moe_fail(MOE_ERR_IO, "chat template %s: read error", path);
		goto out_close;
	}
	b[n] = '\0';
	if (memchr(b, '\0', n) != NULL)
		err = moe_fail(MOE_ERR_BAD_VALUE, "chat template %s holds a NUL byte", path);
out_close:
	fclose(f);
	if (err != MOE_OK) {
		free(b);
		return err;
	}
	*out = b;
	return MOE_OK;
}

/* The renderer below writes ChatML only: refuse a template that is not. */
static moe_err chatml_only(const char *text, const char *whose)
{
	if (has(text, im_start) && has(text, im_end))
		return MOE_OK;
	char head[81];
	size_t k = 0;
	for (size_t i = 0; text[i] && k < sizeof head - 1; i++)
		head[k++] = text[i] >= 0x20 && text[i] < 0x7f ? text[i] : ' ';
	head[k] = '\0';
	return moe_fail(MOE_ERR_UNSUPPORTED,
	                "%s (%zu bytes) is not ChatML (no <|im_start|>/<|im_end|>), the only "
	                "template the server renders; it starts \"%s\"; pass --chat-template "
	                "chatml to use ChatML anyway",
	                whose, strlen(text), head);
}

moe_err moe_chat_template_create(moe_chat_template **out, const moe_gguf *g,
                                 const moe_tokenizer *tok, const char *path)
{
	moe_chat_template *t = calloc(1, sizeof *t);
	if (t == NULL)
		return moe_fail(MOE_ERR_NOMEM, "chat template");
	t->tok = tok;
	moe_err err = MOE_OK;
	if (path != NULL && strcmp(path, "chatml") != 0) {
		if ((err = read_file(&t->text, path)) != MOE_OK ||
		    (err = chatml_only(t->text, path)) != MOE_OK)
			goto out_destroy;
	} else if (path == NULL) {
		moe_gguf_str s;
		if (moe_gguf_get_str(&s, g, "tokenizer.chat_template") == MOE_OK) {
			t->text = malloc((size_t)s.len + 1);
			if (t->text == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "chat template");
				goto out_destroy;
			}
			memcpy(t->text, s.ptr, (size_t)s.len);
			t->text[s.len] = '\0';
			if (memchr(t->text, '\0', (size_t)s.len) != NULL) {
				err = moe_fail(MOE_ERR_BAD_VALUE,
				               "the model's chat template holds a NUL byte");
				goto out_destroy;
			}
			if ((err = chatml_only(
			         t->text, "the model's chat template (tokenizer.chat_template)")) !=
			    MOE_OK)
				goto out_destroy;
		}
	}
	t->format = format_of(t->text);
	t->thinks = has(t->text, "<think>");
	const int32_t eos = moe_tokenizer_eos(tok);
	if (eos >= 0)
		t->end_ids[t->n_end++] = eos;
	const int32_t ie = moe_tokenizer_find_special(tok, im_end, sizeof im_end - 1);
	if (ie >= 0 && ie != eos)
		t->end_ids[t->n_end++] = ie;
	*out = t;
	return MOE_OK;

out_destroy:
	moe_chat_template_destroy(t);
	return err;
}

void moe_chat_template_destroy(moe_chat_template *t)
{
	if (t == NULL)
		return;
	free(t->text);
	free(t);
}

/* ---- requests ----------------------------------------------------------------------- */

void moe_chat_req_free(moe_chat_req *r)
{
	cJSON_Delete(r->messages);
	cJSON_Delete(r->tools);
	cJSON_Delete(r->kwargs);
	cJSON_Delete(r->schema);
	memset(r, 0, sizeof *r);
}

static bool name_ok(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
		      (s[n] >= '0' && s[n] <= '9') || s[n] == '_' || s[n] == '-'))
			return false;
	return n >= 1 && n <= MOE_CHAT_NAME_MAX;
}

static const char *tool_name(const cJSON *tool)
{
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(tool, "function");
	return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f, "name"));
}

bool moe_chat_tools_valid(const cJSON *tools, char *why, size_t size)
{
	if (!cJSON_IsArray(tools)) {
		snprintf(why, size, "'tools' must be an array");
		return false;
	}
	if (cJSON_GetArraySize(tools) > 512) {
		snprintf(why, size, "'tools' has more than 512 entries");
		return false;
	}
	int i = 0;
	const cJSON *t;
	cJSON_ArrayForEach(t, tools)
	{
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
		const char *name = tool_name(t);
		if (!cJSON_IsObject(t) || !cJSON_IsString(type) ||
		    strcmp(type->valuestring, "function") != 0 || !cJSON_IsObject(f)) {
			snprintf(
			    why, size,
			    "'tools[%d]' must be {\"type\": \"function\", \"function\": {...}}", i);
			return false;
		}
		if (name == NULL || !name_ok(name)) {
			snprintf(
			    why, size,
			    "'tools[%d].function.name' must be 1-64 letters, digits, '_' or '-'",
			    i);
			return false;
		}
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(f, "description");
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(f, "parameters");
		if ((d != NULL && !cJSON_IsString(d) && !cJSON_IsNull(d)) ||
		    (p != NULL && !cJSON_IsObject(p) && !cJSON_IsNull(p))) {
			snprintf(
			    why, size,
			    "'tools[%d].function': 'description' must be a string and 'parameters' "
			    "a JSON schema object",
			    i);
			return false;
		}
		for (const cJSON *u = tools->child; u != t; u = u->next)
			if (strcmp(tool_name(u), name) == 0) {
				snprintf(why, size, "'tools' names the function '%s' twice", name);
				return false;
			}
		i++;
	}
	return true;
}

bool moe_chat_tool_exists(const cJSON *tools, const char *name)
{
	const cJSON *t;
	cJSON_ArrayForEach(t, tools)
	{
		const char *n = tool_name(t);
		if (n != NULL && strcmp(n, name) == 0)
			return true;
	}
	return false;
}

/* ---- prompts ------------------------------------------------------------------------ */

typedef struct id_buf {
	int32_t *v;
	size_t n, cap;
} id_buf;

static moe_err ids_add(id_buf *b, const int32_t *ids, size_t n)
{
	if (b->n + n > b->cap) {
		size_t c = b->cap ? b->cap : 64;
		while (c < b->n + n)
			c *= 2;
		int32_t *v = realloc(b->v, c * sizeof *v);
		if (v == NULL)
			return moe_fail(MOE_ERR_NOMEM, "chat: %zu token ids", c);
		b->v = v;
		b->cap = c;
	}
	if (n > 0) /* an empty text encodes to no ids and maybe a NULL array */
		memcpy(b->v + b->n, ids, n * sizeof *ids);
	b->n += n;
	return MOE_OK;
}

static moe_err add_text(id_buf *b, const moe_tokenizer *tok, const char *s, size_t len)
{
	int32_t *ids = NULL;
	size_t n = 0;
	moe_err err = moe_tokenizer_encode(&ids, &n, tok, s, len, 0);
	if (err == MOE_OK)
		err = ids_add(b, ids, n);
	free(ids);
	return err;
}

static moe_err add_marker(id_buf *b, const moe_tokenizer *tok, const char *m, size_t len)
{
	const int32_t id = moe_tokenizer_find_special(tok, m, len);
	if (id >= 0)
		return ids_add(b, &id, 1);
	return add_text(b, tok, m, len);
}

/* ChatML: <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n,
 * the markers as special tokens, roles and contents as plain text. */
static moe_err chatml(id_buf *b, const moe_tokenizer *tok, const moe_chat_req *r)
{
	moe_err err = MOE_OK;
	const cJSON *m;
	cJSON_ArrayForEach(m, r->messages)
	{
		const char *role =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
		const char *content =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "content"));
		if (content == NULL)
			content = "";
		if ((err = add_marker(b, tok, im_start, sizeof im_start - 1)) != MOE_OK ||
		    (err = add_text(b, tok, role, strlen(role))) != MOE_OK ||
		    (err = add_text(b, tok, "\n", 1)) != MOE_OK ||
		    (err = add_text(b, tok, content, strlen(content))) != MOE_OK ||
		    (err = add_marker(b, tok, im_end, sizeof im_end - 1)) != MOE_OK ||
		    (err = add_text(b, tok, "\n", 1)) != MOE_OK)
			return err;
	}
	if (r->add_generation_prompt &&
	    ((err = add_marker(b, tok, im_start, sizeof im_start - 1)) != MOE_OK ||
	     (err = add_text(b, tok, "assistant\n", 10)) != MOE_OK))
		return err;
	return MOE_OK;
}

moe_err moe_chat_prompt_make(moe_chat_prompt *out, const moe_chat_template *t,
                             const moe_tokenizer *tok, const moe_chat_req *r)
{
	memset(out, 0, sizeof *out);
	id_buf b = {0};
	moe_err err = chatml(&b, tok, r);
	if (err != MOE_OK) {
		free(b.v);
		return err;
	}
	out->ids = b.v;
	out->n_ids = b.n;
	memcpy(out->end_ids, t->end_ids, sizeof out->end_ids);
	out->n_end = t->n_end;
	out->reply = (moe_reply_opts){
	    .format =
	        r->tool_choice == MOE_TOOLS_NONE || r->tools == NULL ? MOE_REPLY_PLAIN : t->format,
	    .reasoning = r->reasoning && (t->thinks || t->format == MOE_REPLY_HARMONY),
	    .tools = r->tools,
	};
	if (t->format == MOE_REPLY_HARMONY)
		out->reply.format = MOE_REPLY_HARMONY; /* its channels are read in any case */
	return MOE_OK;
}

void moe_chat_prompt_free(moe_chat_prompt *p)
{
	free(p->ids);
	memset(p, 0, sizeof *p);
}
