/* chat.c - chat templates (server.h) and chat requests turned into prompts
 * (chat.h): which template (the model's Jinja template, a file, or ChatML),
 * parsed once (jinja/), which reply format it implies, the checks of a
 * request's tools, rendering and tokenizing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja.h"
#include "server/chat.h"

struct moe_chat_template {
	char *text; /* the template's source */
	moe_jinja_tmpl *jt;
	char *bos, *eos; /* the tokenizer's BOS and EOS text, for bos_token / eos_token */
	const moe_tokenizer *tok;
	moe_reply_format format;
	bool thinks; /* the template writes <think> */
	int32_t end_ids[MOE_GEN_MAX_END];
	int n_end;
	moe_chat_grammars *grammars;
};

static const char im_end[] = "<|im_end|>";

/* The template of a model that has none, and of --chat-template chatml. */
static const char chatml_text[] =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content if message.content is "
    "string else '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

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

/* The template file at path (at most 16 MiB, no NUL byte) into *out. */
static moe_err read_file(char **out, const char *path)
{
	char *b = NULL;
	size_t n = 0;
	moe_err err = moe_read_file(&b, &n, path, (size_t)1 << 24);
	if (err == MOE_ERR_BAD_COUNT)
		return moe_fail(MOE_ERR_BAD_VALUE, "chat template %s: over 16 MiB", path);
	if (err != MOE_OK) {
		char why[512];
		snprintf(why, sizeof why, "%s", moe_err_detail()); /* it names path */
		return moe_fail(err, "chat template %s", why);
	}
	if (memchr(b, '\0', n) != NULL) {
		free(b);
		return moe_fail(MOE_ERR_BAD_VALUE, "chat template %s holds a NUL byte", path);
	}
	*out = b;
	return MOE_OK;
}

/* The text of token id ("" for none; NULL without memory). */
static char *token_text(const moe_tokenizer *tok, int32_t id)
{
	size_t n = 0;
	const char *b = id >= 0 ? moe_tokenizer_token_bytes(tok, id, &n) : NULL;
	char *s = malloc(n + 1);
	if (s != NULL) {
		if (n > 0)
			memcpy(s, b, n);
		s[n] = '\0';
	}
	return s;
}

moe_err moe_chat_template_create(moe_chat_template **out, const moe_gguf *g,
                                 const moe_tokenizer *tok, const char *path)
{
	moe_chat_template *t = calloc(1, sizeof *t);
	if (t == NULL)
		return moe_fail(MOE_ERR_NOMEM, "chat template");
	t->tok = tok;
	moe_err err = MOE_OK;
	const char *whose = "the model's chat template (tokenizer.chat_template)";
	moe_gguf_str s;
	if (path != NULL && strcmp(path, "chatml") != 0) {
		whose = path;
		if ((err = read_file(&t->text, path)) != MOE_OK)
			goto out_destroy;
	} else if (path == NULL && moe_gguf_get_str(&s, g, "tokenizer.chat_template") == MOE_OK) {
		if (memchr(s.ptr, '\0', (size_t)s.len) != NULL) {
			err = moe_fail(MOE_ERR_BAD_VALUE, "%s holds a NUL byte", whose);
			goto out_destroy;
		}
		t->text = strndup(s.ptr, (size_t)s.len);
	} else {
		whose = "ChatML";
		t->text = strdup(chatml_text);
	}
	if (t->text == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "chat template");
		goto out_destroy;
	}
	if ((err = moe_jinja_parse(&t->jt, t->text, strlen(t->text))) != MOE_OK) {
		err = moe_fail(MOE_ERR_UNSUPPORTED, "%s cannot be rendered: %s", whose,
		               moe_err_detail());
		goto out_destroy;
	}
	t->bos = token_text(tok, moe_tokenizer_bos(tok));
	t->eos = token_text(tok, moe_tokenizer_eos(tok));
	if (t->bos == NULL || t->eos == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "chat template");
		goto out_destroy;
	}
	t->format = format_of(t->text);
	t->thinks = has(t->text, "<think>");
	const int32_t eos = moe_tokenizer_eos(tok);
	if (eos >= 0)
		t->end_ids[t->n_end++] = eos;
	static const char *const ends[] = {im_end, "<|call|>", "<|return|>"};
	for (size_t k = 0; k < sizeof ends / sizeof ends[0]; k++) {
		const int32_t id = moe_tokenizer_find_special(tok, ends[k], strlen(ends[k]));
		bool dup = id < 0 || t->n_end == MOE_GEN_MAX_END;
		for (int i = 0; i < t->n_end && !dup; i++)
			dup = t->end_ids[i] == id;
		if (!dup)
			t->end_ids[t->n_end++] = id;
	}
	if ((err = moe_chat_grammars_create(&t->grammars, tok, t->end_ids, t->n_end)) != MOE_OK)
		goto out_destroy;
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
	moe_chat_grammars_destroy(t->grammars);
	moe_jinja_free(t->jt);
	free(t->bos);
	free(t->eos);
	free(t->text);
	free(t);
}

moe_chat_grammars *moe_chat_template_grammars(const moe_chat_template *t)
{
	return t->grammars;
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

/* The variables of the template, as transformers passes them: the chat
 * template kwargs, then messages, add_generation_prompt, bos_token,
 * eos_token and (unless tool_choice is none) tools. */
static cJSON *template_vars(const moe_chat_template *t, const moe_chat_req *r)
{
	cJSON *v = r->kwargs != NULL ? cJSON_Duplicate(r->kwargs, true) : cJSON_CreateObject();
	if (v == NULL)
		return NULL;
	static const char *const ours[] = {"messages", "add_generation_prompt", "bos_token",
	                                   "eos_token", "tools"};
	for (size_t k = 0; k < sizeof ours / sizeof ours[0]; k++)
		cJSON_DeleteItemFromObjectCaseSensitive(v, ours[k]);
	const bool ok =
	    cJSON_AddItemToObject(v, "messages", cJSON_Duplicate(r->messages, true)) &&
	    cJSON_AddBoolToObject(v, "add_generation_prompt", r->add_generation_prompt) &&
	    cJSON_AddStringToObject(v, "bos_token", t->bos) &&
	    cJSON_AddStringToObject(v, "eos_token", t->eos) &&
	    (r->tools == NULL || r->tool_choice == MOE_TOOLS_NONE ||
	     cJSON_AddItemToObject(v, "tools", cJSON_Duplicate(r->tools, true)));
	if (!ok) {
		cJSON_Delete(v);
		return NULL;
	}
	return v;
}

moe_err moe_chat_render(char **text, size_t *len, const moe_chat_template *t, const moe_chat_req *r)
{
	cJSON *v = template_vars(t, r);
	char *json = v != NULL ? cJSON_PrintUnformatted(v) : NULL;
	cJSON_Delete(v);
	if (json == NULL)
		return moe_fail(MOE_ERR_NOMEM, "chat: the template's variables");
	moe_jinja_value *vars = NULL;
	moe_err err = moe_jinja_value_from_json(&vars, json, strlen(json));
	cJSON_free(json);
	if (err == MOE_OK)
		err = moe_jinja_render(text, len, t->jt, vars, NULL);
	moe_jinja_value_free(vars);
	if (err == MOE_JINJA_RAISED)
		return moe_fail(MOE_ERR_BAD_VALUE, "the chat template refused the conversation: %s",
		                moe_err_detail());
	if (err != MOE_OK && err != MOE_ERR_NOMEM)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "the chat template failed on the conversation: %s",
		                moe_err_detail());
	return err;
}

/* Whether the rendered prompt ends with tag and then only whitespace:
 * "<think>" (the template opened the reasoning for the model) or "</think>"
 * (it closed it: thinking is off). */
static bool ends_with(const char *s, size_t n, const char *tag)
{
	const size_t k = strlen(tag);
	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\r'))
		n--;
	return n >= k && memcmp(s + n - k, tag, k) == 0;
}

moe_err moe_chat_prompt_make(moe_chat_prompt *out, const moe_chat_template *t,
                             const moe_tokenizer *tok, const moe_chat_req *r)
{
	memset(out, 0, sizeof *out);
	char *text = NULL;
	size_t len = 0;
	moe_err err = moe_chat_render(&text, &len, t, r);
	if (err != MOE_OK)
		return err;
	err = moe_tokenizer_encode(&out->ids, &out->n_ids, tok, text, len, MOE_TOK_ENCODE_SPECIAL);
	if (err != MOE_OK)
		goto out_free;
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
	out->reply.in_reasoning = out->reply.reasoning && ends_with(text, len, "<think>");
	out->think_closed = ends_with(text, len, "</think>");
	out->special_text = t->format == MOE_REPLY_HARMONY;
out_free:
	free(text);
	return err;
}

void moe_chat_prompt_free(moe_chat_prompt *p)
{
	free(p->ids);
	moe_chat_grammar_release(p->grammar);
	memset(p, 0, sizeof *p);
}
