/* constrain.c - the grammar a chat reply is held to (a JSON schema, a
 * required or named tool call, or the rest of a call once the model opens
 * one), written as grammar text for the template's reply format, compiled
 * over the template's vocabulary, and shared through a small cache by the
 * requests that ask for the same one (chat.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/chat.h"

#define CACHE_SIZE 16

struct moe_chat_grammar {
	char *text; /* the grammar text: the cache's key */
	moe_grammar *g;
	moe_grammar_tables *t;
	moe_chat_grammars *owner;
	int refs;      /* holds: the cache's (while cached) and the requests' */
	uint64_t used; /* when last handed out (LRU) */
};

struct moe_chat_grammars {
	moe_grammar_vocab *v;
	pthread_mutex_t mu;
	moe_chat_grammar *cache[CACHE_SIZE];
	uint64_t clock;
};

/* ---- the vocabulary and the cache ------------------------------------------------- */

moe_err moe_chat_grammars_create(moe_chat_grammars **out, const moe_tokenizer *tok,
                                 const int32_t *end_ids, int n_end)
{
	const uint32_t n = moe_tokenizer_n_vocab(tok);
	moe_chat_grammars *gs = calloc(1, sizeof *gs);
	const char **bytes = calloc(n, sizeof *bytes);
	size_t *lens = calloc(n, sizeof *lens);
	bool *never = calloc(n, sizeof *never);
	moe_err err = MOE_OK;
	if (gs == NULL || bytes == NULL || lens == NULL || never == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "chat: the grammar vocabulary");
		goto out_free;
	}
	for (uint32_t i = 0; i < n; i++) {
		bytes[i] = moe_tokenizer_token_bytes(tok, (int32_t)i, &lens[i]);
		const moe_token_type ty = moe_tokenizer_token_type(tok, (int32_t)i);
		/* control tokens are markup the grammar never writes, but the end */
		never[i] =
		    ty != MOE_TOKEN_NORMAL && ty != MOE_TOKEN_USER_DEFINED && ty != MOE_TOKEN_BYTE;
		for (int k = 0; k < n_end; k++)
			if (end_ids[k] == (int32_t)i)
				never[i] = false;
	}
	if ((err = moe_grammar_vocab_create(&gs->v, n, bytes, lens, never, end_ids,
	                                    (size_t)n_end)) != MOE_OK)
		goto out_free;
	if (pthread_mutex_init(&gs->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "chat: pthread_mutex_init");
		goto out_free;
	}
	*out = gs;
	gs = NULL;
out_free:
	if (gs != NULL)
		moe_grammar_vocab_destroy(gs->v);
	free(gs);
	free(bytes);
	free(lens);
	free(never);
	return err;
}

static void grammar_free(moe_chat_grammar *g)
{
	moe_grammar_tables_destroy(g->t);
	moe_grammar_destroy(g->g);
	free(g->text);
	free(g);
}

void moe_chat_grammars_destroy(moe_chat_grammars *gs)
{
	if (gs == NULL)
		return;
	for (int i = 0; i < CACHE_SIZE; i++)
		if (gs->cache[i] != NULL && --gs->cache[i]->refs == 0)
			grammar_free(gs->cache[i]);
	pthread_mutex_destroy(&gs->mu);
	moe_grammar_vocab_destroy(gs->v);
	free(gs);
}

const moe_grammar_tables *moe_chat_grammar_tables(const moe_chat_grammar *g)
{
	return g->t;
}

moe_chat_grammar *moe_chat_grammar_ref(moe_chat_grammar *g)
{
	pthread_mutex_lock(&g->owner->mu);
	g->refs++;
	pthread_mutex_unlock(&g->owner->mu);
	return g;
}

void moe_chat_grammar_release(void *p)
{
	moe_chat_grammar *g = p;
	if (g == NULL)
		return;
	pthread_mutex_lock(&g->owner->mu);
	const bool last = --g->refs == 0;
	pthread_mutex_unlock(&g->owner->mu);
	if (last)
		grammar_free(g);
}

/* The compiled grammar of text: from the cache, or compiled now (outside the
 * lock: tables take up to a few hundred ms for a large tool schema) and
 * cached in place of the least recently used entry nobody holds. */
static moe_err acquire(moe_chat_grammar **out, moe_chat_grammars *gs, char *text)
{
	pthread_mutex_lock(&gs->mu);
	for (int i = 0; i < CACHE_SIZE; i++) {
		moe_chat_grammar *g = gs->cache[i];
		if (g != NULL && strcmp(g->text, text) == 0) {
			g->refs++;
			g->used = ++gs->clock;
			pthread_mutex_unlock(&gs->mu);
			free(text);
			*out = g;
			return MOE_OK;
		}
	}
	pthread_mutex_unlock(&gs->mu);
	moe_chat_grammar *g = calloc(1, sizeof *g);
	if (g == NULL) {
		free(text);
		return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
	}
	g->text = text;
	g->owner = gs;
	g->refs = 1;
	moe_err err = moe_grammar_parse(&g->g, text, strlen(text), "root");
	if (err == MOE_OK)
		err = moe_grammar_tables_create(&g->t, g->g, gs->v);
	if (err != MOE_OK) {
		grammar_free(g);
		return err;
	}
	pthread_mutex_lock(&gs->mu);
	int slot = -1;
	for (int i = 0; i < CACHE_SIZE; i++) {
		const moe_chat_grammar *c = gs->cache[i];
		if (c == NULL) {
			slot = i;
			break;
		}
		if (c->refs == 1 && (slot < 0 || c->used < gs->cache[slot]->used))
			slot = i;
	}
	moe_chat_grammar *old = NULL;
	if (slot >= 0) {
		old = gs->cache[slot];
		gs->cache[slot] = g;
		g->refs++;
		g->used = ++gs->clock;
	}
	pthread_mutex_unlock(&gs->mu);
	if (old != NULL)
		moe_chat_grammar_release(old);
	*out = g;
	return MOE_OK;
}

/* ---- grammar text ------------------------------------------------------------------- */

/* What the grammar depends on: the request and how its prompt reads the reply. */
typedef struct view {
	const moe_chat_req *r;
	moe_reply_format format; /* the form tool calls take (PLAIN: Qwen3's JSON) */
	bool reasoning;          /* a reasoning part may come first */
	bool in_reasoning;       /* the prompt opened it */
} view;

/* Writes text as a grammar literal. */
static bool lit(FILE *f, const char *text)
{
	char *l = NULL;
	if (moe_grammar_literal(&l, text, strlen(text)) != MOE_OK)
		return false;
	fputs(l, f);
	free(l);
	return true;
}

/* Writes the rules of schema s (NULL: any object) with names from prefix;
 * its value rule is PREFIXroot.  Lenient: keywords that cannot be enforced
 * are ignored (the grammar is a superset of the schema) instead of refused. */
static moe_err schema_rules(FILE *f, const cJSON *s, const char *prefix, bool lenient)
{
	char *json = s != NULL ? cJSON_PrintUnformatted(s) : NULL;
	char *rules = NULL;
	const char *text = json != NULL ? json : "{\"type\": \"object\"}";
	if (s != NULL && json == NULL)
		return moe_fail(MOE_ERR_NOMEM, "chat: a schema");
	char *ignored = NULL;
	moe_err err = moe_grammar_schema_to_gbnf_ex(
	    &rules, text, strlen(text), prefix, lenient ? MOE_GRAMMAR_SCHEMA_LENIENT : 0, &ignored);
	free(ignored);
	cJSON_free(json);
	if (err == MOE_OK)
		fprintf(f, "%s\n", rules);
	free(rules);
	return err;
}

static const cJSON *tool_fn(const cJSON *tool, const char **name)
{
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(tool, "function");
	*name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f, "name"));
	return f;
}

/* Qwen3's JSON form of tool i: {"name": "N", "arguments": ARGS}. */
static moe_err json_call_rules(FILE *f, const cJSON *tool, int i)
{
	const char *name;
	const cJSON *fn = tool_fn(tool, &name);
	char prefix[32], head[MOE_CHAT_NAME_MAX + 64];
	snprintf(prefix, sizeof prefix, "t%d-", i);
	snprintf(head, sizeof head, "{\"name\": \"%s\", \"arguments\": ", name);
	fprintf(f, "t%d-call ::= ", i);
	if (!lit(f, head))
		return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
	fprintf(f, " t%d-root \"}\"\n", i);
	return schema_rules(f, cJSON_GetObjectItemCaseSensitive(fn, "parameters"), prefix, true);
}

/* The XML form of tool i: <function=N>\n then each parameter of its schema,
 * in declared order (optional ones may be left out), as
 * <parameter=P>\nVALUE\n</parameter>\n, then </function>\n.  A string
 * parameter's VALUE is text (without "</"), an enum of strings one of them,
 * anything else the JSON of its schema. */
static moe_err xml_call_rules(FILE *f, const cJSON *tool, int i)
{
	const char *name;
	const cJSON *fn = tool_fn(tool, &name);
	const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
	const cJSON *props = cJSON_GetObjectItemCaseSensitive(params, "properties");
	const cJSON *req = cJSON_GetObjectItemCaseSensitive(params, "required");
	char head[MOE_CHAT_NAME_MAX + 32];
	snprintf(head, sizeof head, "<function=%s>\n", name);
	fprintf(f, "t%d-call ::= ", i);
	if (!lit(f, head))
		return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
	int k = 0;
	const cJSON *p;
	cJSON_ArrayForEach(p, props)
	{
		bool required = false;
		const cJSON *r;
		cJSON_ArrayForEach(r, req) required |=
		    cJSON_IsString(r) && strcmp(r->valuestring, p->string) == 0;
		fprintf(f, " t%d-p%d%s", i, k++, required ? "" : "?");
	}
	fprintf(f, " \"</function>\\n\"\n");
	k = 0;
	cJSON_ArrayForEach(p, props)
	{
		char open[300], prefix[32];
		snprintf(open, sizeof open, "<parameter=%s>\n", p->string);
		snprintf(prefix, sizeof prefix, "t%d-p%d-", i, k);
		fprintf(f, "t%d-p%d ::= ", i, k);
		if (!lit(f, open))
			return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
		const char *type =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "type"));
		const cJSON *en = cJSON_GetObjectItemCaseSensitive(p, "enum");
		bool all_str = cJSON_IsArray(en) && cJSON_GetArraySize(en) > 0;
		const cJSON *x;
		cJSON_ArrayForEach(x, en) all_str &= cJSON_IsString(x);
		moe_err err = MOE_OK;
		if (all_str) {
			fputs(" (", f);
			bool first = true;
			cJSON_ArrayForEach(x, en)
			{
				fputs(first ? "" : " | ", f);
				first = false;
				if (!lit(f, x->valuestring))
					return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
			}
			fputs(")", f);
		} else if (type != NULL && strcmp(type, "string") == 0) {
			/* raw text; a maxLength bounds it (then without '<' at all) */
			const cJSON *lo = cJSON_GetObjectItemCaseSensitive(p, "minLength");
			const cJSON *hi = cJSON_GetObjectItemCaseSensitive(p, "maxLength");
			if (cJSON_IsNumber(hi) && hi->valuedouble >= 0 && hi->valuedouble <= 10000)
				fprintf(f, " [^<]{%d,%d}",
				        cJSON_IsNumber(lo) && lo->valuedouble >= 0 &&
				                lo->valuedouble <= hi->valuedouble
				            ? (int)lo->valuedouble
				            : 0,
				        (int)hi->valuedouble);
			else
				fputs(" xml-text", f);
		} else {
			fprintf(f, " %sroot", prefix);
		}
		fputs(" \"\\n</parameter>\\n\"\n", f);
		if (!all_str && !(type != NULL && strcmp(type, "string") == 0) &&
		    (err = schema_rules(f, p, prefix, true)) != MOE_OK)
			return err;
		k++;
	}
	return MOE_OK;
}

/* Writes the whole grammar for r (p: its prompt); *trigger gets the text that
 * turns it on (NULL: from the start).  Returns MOE_ERR_NOT_FOUND when r asks
 * for no constraint. */
static moe_err grammar_text(FILE *f, const char **trigger, const view *v)
{
	const moe_chat_req *r = v->r;
	const bool calls =
	    r->tools != NULL &&
	    (r->tool_choice == MOE_TOOLS_REQUIRED || r->tool_choice == MOE_TOOLS_NAMED ||
	     (r->tool_choice == MOE_TOOLS_AUTO && r->schema == NULL));
	*trigger = NULL;
	if (!calls && r->schema == NULL)
		return MOE_ERR_NOT_FOUND;
	const bool lazy = calls && r->tool_choice == MOE_TOOLS_AUTO;
	if (v->format == MOE_REPLY_HARMONY) {
		if (lazy)
			return MOE_ERR_NOT_FOUND; /* calls the model opens itself are read as
			                             written */
		return moe_fail(
		    MOE_ERR_UNSUPPORTED,
		    "constrained output is not available for harmony (gpt-oss) templates");
	}
	const bool xml = v->format == MOE_REPLY_QWEN3_XML;
	/* a named function is called once (as OpenAI and Anthropic force it) */
	const bool several = r->parallel_tool_calls && r->tool_choice != MOE_TOOLS_NAMED;
	moe_err err = MOE_OK;
	if (calls) {
		int i = 0, n = 0;
		const cJSON *t;
		fputs("calls-body ::=", f);
		cJSON_ArrayForEach(t, r->tools)
		{
			const char *name;
			tool_fn(t, &name);
			if (r->tool_choice != MOE_TOOLS_NAMED || strcmp(name, r->tool_name) == 0)
				fprintf(f, "%s t%d-call", n++ > 0 ? " |" : "", i);
			i++;
		}
		fputs("\n", f);
		i = 0;
		cJSON_ArrayForEach(t, r->tools)
		{
			const char *name;
			tool_fn(t, &name);
			if ((r->tool_choice != MOE_TOOLS_NAMED ||
			     strcmp(name, r->tool_name) == 0) &&
			    (err = (xml ? xml_call_rules : json_call_rules)(f, t, i)) != MOE_OK)
				return err;
			i++;
		}
		if (xml)
			fputs("xml-text ::= ([^<] | \"<\" [^/])*\n"
			      "call ::= \"<tool_call>\\n\" calls-body \"</tool_call>\"\n"
			      "call-rest ::= \"\\n\" calls-body \"</tool_call>\"\n",
			      f);
		else
			fputs("call ::= \"<tool_call>\\n\" calls-body \"\\n</tool_call>\"\n"
			      "call-rest ::= \"\\n\" calls-body \"\\n</tool_call>\"\n",
			      f);
		fprintf(f, "body ::= call%s\n", several ? " (\"\\n\" call)*" : "");
	} else {
		if ((err = schema_rules(f, r->schema, "s-", !r->schema_strict)) != MOE_OK)
			return err;
		fputs("body ::= s-root\n", f);
	}
	if (lazy) {
		*trigger = "<tool_call>";
		fprintf(f, "root ::= call-rest%s\n", several ? " (\"\\n\" call)*" : "");
	} else if (v->reasoning && v->in_reasoning) {
		fputs("think-body ::= ([^<] | \"<\" [^/])*\n"
		      "root ::= think-body \"</think>\" [ \\t\\n]{0,4} body\n",
		      f);
	} else if (v->reasoning) {
		fputs("think-body ::= ([^<] | \"<\" [^/])*\n"
		      "root ::= (\"<think>\" think-body \"</think>\" [ \\t\\n]{0,4})? body\n",
		      f);
	} else {
		fputs("root ::= body\n", f);
	}
	return MOE_OK;
}

moe_gen_grammar moe_chat_gen_grammar(const moe_chat_prompt *p)
{
	if (p->grammar == NULL)
		return (moe_gen_grammar){0};
	return (moe_gen_grammar){.tables = p->grammar->t,
	                         .trigger = p->trigger,
	                         .release = moe_chat_grammar_release,
	                         .release_ctx = moe_chat_grammar_ref(p->grammar)};
}

moe_err moe_chat_constrain(moe_chat_prompt *p, moe_chat_grammars *gs, const moe_chat_req *r)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (f == NULL)
		return moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
	const view v = {.r = r,
	                .format = p->reply.format == MOE_REPLY_PLAIN ? MOE_REPLY_QWEN3_JSON
	                                                             : p->reply.format,
	                .reasoning = p->reply.reasoning && !p->think_closed,
	                .in_reasoning = p->reply.in_reasoning};
	const char *trigger = NULL;
	moe_err err = grammar_text(f, &trigger, &v);
	if (fclose(f) != 0 && err == MOE_OK)
		err = moe_fail(MOE_ERR_NOMEM, "chat: a grammar");
	if (err != MOE_OK) {
		free(text);
		return err == MOE_ERR_NOT_FOUND ? MOE_OK : err;
	}
	if ((err = acquire(&p->grammar, gs, text)) != MOE_OK)
		return err;
	p->trigger = trigger;
	if (p->reply.format == MOE_REPLY_PLAIN && r->tools != NULL)
		p->reply.format = MOE_REPLY_QWEN3_JSON; /* the form the grammar writes */
	return MOE_OK;
}
