/* vocab.c - the vocabulary view: each token's bytes, which tokens are never
 * valid and which end the output, and the ordinary tokens sorted by their
 * bytes (so walks over them share prefixes) with an index by first byte and
 * each one's common start with the one before. */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

typedef struct tok_key {
	const uint8_t *p;
	uint32_t len, id;
} tok_key;

static int cmp_tok(const void *x, const void *y)
{
	const tok_key *a = x, *b = y;
	uint32_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->p, b->p, n);
	if (c != 0)
		return c;
	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

/* v->by_len and v->n_longer from the sorted keys (a counting sort by
 * length, longest first). */
static moe_err index_by_length(moe_grammar_vocab *v, const tok_key *keys)
{
	uint32_t n = v->n_sorted;
	uint32_t *at = calloc((size_t)v->max_len + 2, sizeof(uint32_t));
	v->by_len = malloc((n ? n : 1) * sizeof(uint32_t));
	if (at == NULL || v->by_len == NULL) {
		free(at);
		return moe_fail(MOE_ERR_NOMEM, "grammar vocab: %u tokens", n);
	}
	/* at[max_len - len + 1] counts tokens of len; prefix sums give starts */
	for (uint32_t i = 0; i < n; i++)
		at[v->max_len - keys[i].len + 1]++;
	for (uint32_t l = 1; l <= v->max_len + 1; l++)
		at[l] += at[l - 1];
	for (uint32_t i = 0; i < n; i++)
		v->by_len[at[v->max_len - keys[i].len]++] = i;
	for (int k = 0; k < G_FAN_BUCKETS; k++) {
		uint32_t c = 0;
		while (k + 1 < G_FAN_BUCKETS && c < n && keys[v->by_len[c]].len > (1u << k))
			c++;
		v->n_longer[k] = c;
	}
	free(at);
	return MOE_OK;
}

void moe_grammar_vocab_destroy(moe_grammar_vocab *v)
{
	if (v == NULL)
		return;
	free(v->bytes);
	free(v->off);
	free(v->kind);
	free(v->sorted);
	free(v->lcp);
	free(v->by_len);
	free(v->end_ids);
	free(v);
}

uint32_t moe_grammar_vocab_n(const moe_grammar_vocab *v)
{
	return v->n_vocab;
}

size_t moe_grammar_mask_words(const moe_grammar_vocab *v)
{
	return v->words;
}

moe_err moe_grammar_vocab_create(moe_grammar_vocab **out, uint32_t n_vocab,
                                 const char *const *bytes, const size_t *lens, const bool *never,
                                 const int32_t *end_ids, size_t n_end)
{
	if (out == NULL || bytes == NULL || lens == NULL || (end_ids == NULL && n_end > 0))
		return moe_fail(MOE_ERR_INVAL, "grammar vocab: NULL argument");
	if (n_vocab == 0 || n_vocab > (1u << 24) || n_end > n_vocab)
		return moe_fail(MOE_ERR_INVAL, "grammar vocab: %u tokens, %zu end tokens", n_vocab,
		                n_end);
	for (size_t i = 0; i < n_end; i++)
		if (end_ids[i] < 0 || (uint32_t)end_ids[i] >= n_vocab)
			return moe_fail(MOE_ERR_INVAL, "grammar vocab: end token %d outside 0..%u",
			                end_ids[i], n_vocab - 1);
	size_t total = 0;
	for (uint32_t i = 0; i < n_vocab; i++) {
		if (lens[i] > 0 && bytes[i] == NULL)
			return moe_fail(MOE_ERR_INVAL, "grammar vocab: token %u has no bytes", i);
		if (lens[i] > 65535 || !moe_size_add(&total, total, lens[i]) || total > (1u << 30))
			return moe_fail(MOE_ERR_INVAL, "grammar vocab: token %u: too many bytes",
			                i);
	}
	moe_err err = MOE_OK;
	tok_key *keys = NULL;
	moe_grammar_vocab *v = calloc(1, sizeof(*v));
	if (v == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar vocab");
	v->n_vocab = n_vocab;
	v->words = ((size_t)n_vocab + 31) / 32;
	v->bytes = malloc(total ? total : 1);
	v->off = malloc(((size_t)n_vocab + 1) * sizeof(uint32_t));
	v->kind = malloc(n_vocab);
	v->end_ids = malloc((n_end ? n_end : 1) * sizeof(uint32_t));
	keys = malloc((size_t)n_vocab * sizeof(tok_key));
	if (!v->bytes || !v->off || !v->kind || !v->end_ids || !keys) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar vocab: %u tokens", n_vocab);
		goto out_destroy;
	}
	size_t at = 0;
	for (uint32_t i = 0; i < n_vocab; i++) {
		v->off[i] = (uint32_t)at;
		if (lens[i])
			memcpy(v->bytes + at, bytes[i], lens[i]);
		at += lens[i];
		v->kind[i] =
		    (lens[i] == 0 || (never != NULL && never[i])) ? G_TOK_NEVER : G_TOK_NORMAL;
		if (lens[i] > v->max_len)
			v->max_len = (uint32_t)lens[i];
	}
	v->off[n_vocab] = (uint32_t)at;
	for (size_t i = 0; i < n_end; i++) {
		if (v->kind[end_ids[i]] != G_TOK_END)
			v->end_ids[v->n_end++] = (uint32_t)end_ids[i];
		v->kind[end_ids[i]] = G_TOK_END;
	}
	uint32_t n = 0;
	for (uint32_t i = 0; i < n_vocab; i++)
		if (v->kind[i] == G_TOK_NORMAL)
			keys[n++] = (tok_key){v->bytes + v->off[i], v->off[i + 1] - v->off[i], i};
	qsort(keys, n, sizeof(tok_key), cmp_tok);
	v->sorted = malloc((n ? n : 1) * sizeof(uint32_t));
	v->lcp = malloc(n ? n : 1);
	if (v->sorted == NULL || v->lcp == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar vocab: %u tokens", n_vocab);
		goto out_destroy;
	}
	v->n_sorted = n;
	uint32_t b = 0;
	for (uint32_t i = 0; i < n; i++) {
		v->sorted[i] = keys[i].id;
		while (b <= keys[i].p[0])
			v->first[b++] = i;
		uint32_t l = 0;
		if (i > 0) {
			uint32_t lim =
			    keys[i].len < keys[i - 1].len ? keys[i].len : keys[i - 1].len;
			while (l < lim && l < 255 && keys[i].p[l] == keys[i - 1].p[l])
				l++;
		}
		v->lcp[i] = (uint8_t)l;
	}
	while (b <= 256)
		v->first[b++] = n;
	if ((err = index_by_length(v, keys)) != MOE_OK)
		goto out_destroy;
	free(keys);
	*out = v;
	return MOE_OK;
out_destroy:
	free(keys);
	moe_grammar_vocab_destroy(v);
	return err;
}
