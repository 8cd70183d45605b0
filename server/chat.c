/* chat.c - ChatML rendering for /v1/chat/completions and the start-up
 * check of the model's chat template. */
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

static const char im_start[] = "<|im_start|>";
static const char im_end[] = "<|im_end|>";

moe_err moe_chat_check(const moe_gguf *g)
{
	moe_gguf_str t;
	if (moe_gguf_get_str(&t, g, "tokenizer.chat_template") != MOE_OK)
		return MOE_OK; /* no template: ChatML */
	const size_t n = (size_t)t.len;
	bool has_start = false, has_end = false;
	for (size_t i = 0; i < n; i++) {
		if (n - i >= sizeof im_start - 1 &&
		    memcmp(t.ptr + i, im_start, sizeof im_start - 1) == 0)
			has_start = true;
		if (n - i >= sizeof im_end - 1 && memcmp(t.ptr + i, im_end, sizeof im_end - 1) == 0)
			has_end = true;
	}
	if (has_start && has_end)
		return MOE_OK;
	char head[81];
	size_t k = 0;
	for (size_t i = 0; i < n && k < sizeof head - 1; i++)
		head[k++] = t.ptr[i] >= 0x20 && t.ptr[i] < 0x7f ? t.ptr[i] : ' ';
	head[k] = '\0';
	return moe_fail(MOE_ERR_UNSUPPORTED,
	                "the model's chat template (tokenizer.chat_template, %zu bytes) is not "
	                "ChatML (no <|im_start|>/<|im_end|>), the only template the server "
	                "renders; it starts \"%s\"; pass --chat-template chatml to use ChatML "
	                "anyway",
	                n, head);
}

int32_t moe_chat_end_id(const moe_tokenizer *tok)
{
	return moe_tokenizer_find_special(tok, im_end, sizeof im_end - 1);
}

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

moe_err moe_chat_tokens(int32_t **ids, size_t *n_ids, const moe_tokenizer *tok,
                        const moe_chat_msg *msgs, int n)
{
	id_buf b = {0};
	moe_err err = MOE_OK;
	for (int i = 0; i <= n && err == MOE_OK; i++) {
		const char *role = i < n ? msgs[i].role : "assistant";
		if ((err = add_marker(&b, tok, im_start, sizeof im_start - 1)) != MOE_OK ||
		    (err = add_text(&b, tok, role, strlen(role))) != MOE_OK ||
		    (err = add_text(&b, tok, "\n", 1)) != MOE_OK)
			break;
		if (i == n)
			break;
		if ((err = add_text(&b, tok, msgs[i].content, strlen(msgs[i].content))) != MOE_OK ||
		    (err = add_marker(&b, tok, im_end, sizeof im_end - 1)) != MOE_OK ||
		    (err = add_text(&b, tok, "\n", 1)) != MOE_OK)
			break;
	}
	if (err != MOE_OK) {
		free(b.v);
		return err;
	}
	*ids = b.v;
	*n_ids = b.n;
	return MOE_OK;
}
