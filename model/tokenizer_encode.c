/*
 * tokenizer_encode.c - text -> token ids.
 *
 * Steps (see tokenizer.h): make the text valid UTF-8, split out added
 * tokens, NFC-normalise each remaining piece, split it with the Qwen2 regex,
 * and merge each pre-token ("word") by BPE rank.  All state of one call lives
 * in a struct enc on the caller's stack and heap, so the tokenizer itself is
 * read-only and shareable between threads.  A per-call cache maps words seen
 * before to their ids: ordinary text repeats its words a lot.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "model/tokenizer_impl.h"

#define CACHE_MAX_WORD    64     /* longer words are not cached */
#define CACHE_MAX_ENTRIES 65536u /* the cache stops growing here */

struct cache_ent {
	uint64_t hash;
	uint32_t word_off; /* into words */
	uint32_t word_len;
	uint32_t ids_off; /* into cache_ids */
	uint32_t ids_n;
};

struct enc {
	const moe_tokenizer *tok;
	int32_t *ids; /* the result */
	size_t n, cap;

	/* BPE of one word: symbols are a linked list over byte positions */
	int32_t *sym;   /* [ws_cap] piece id, -2 = merged into its left neighbour */
	int32_t *next;  /* [ws_cap] next live symbol, -1 = none */
	int32_t *prev;  /* [ws_cap] previous live symbol, -1 = none */
	uint64_t *heap; /* [3 * ws_cap] rank << 32 | left position */
	size_t ws_cap;

	struct cache_ent *cache; /* [cache_mask + 1], word_len 0 = empty */
	uint32_t cache_mask, cache_n;
	uint8_t *words;
	size_t words_n, words_cap;
	int32_t *cache_ids;
	size_t cids_n, cids_cap;

	pcre2_match_data *md;
	uint8_t *norm; /* NFC output */
	size_t norm_n, norm_cap;
	utf8proc_int32_t *cps; /* NFC code points */
	size_t cps_cap;
};

static moe_err grow_bytes(void **buf, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return MOE_OK;
	size_t c = *cap ? *cap : 64;
	while (c < need)
		c *= 2;
	size_t bytes;
	if (!moe_size_mul(&bytes, c, elem))
		return moe_fail(MOE_ERR_OVERFLOW, "encode: buffer of %zu elements", c);
	void *b = realloc(*buf, bytes);
	if (b == NULL)
		return moe_fail(MOE_ERR_NOMEM, "encode: %zu bytes", bytes);
	*buf = b;
	*cap = c;
	return MOE_OK;
}

static moe_err emit(struct enc *e, int32_t id)
{
	if (e->n == e->cap) {
		moe_err err = grow_bytes((void **)&e->ids, &e->cap, e->n + 1, sizeof *e->ids);
		if (err)
			return err;
	}
	e->ids[e->n++] = id;
	return MOE_OK;
}

/* ---- word cache ------------------------------------------------------------- */

static const struct cache_ent *cache_find(const struct enc *e, const uint8_t *w, size_t n,
                                          uint64_t h)
{
	if (e->cache == NULL)
		return NULL;
	for (uint32_t i = (uint32_t)h & e->cache_mask;; i = (i + 1) & e->cache_mask) {
		const struct cache_ent *c = &e->cache[i];
		if (c->word_len == 0)
			return NULL;
		if (c->hash == h && c->word_len == n && memcmp(e->words + c->word_off, w, n) == 0)
			return c;
	}
}

static void cache_place(struct cache_ent *tab, uint32_t mask, const struct cache_ent *ent)
{
	uint32_t i = (uint32_t)ent->hash & mask;
	while (tab[i].word_len != 0)
		i = (i + 1) & mask;
	tab[i] = *ent;
}

/* Remembers that word w[0..n) encodes to ids[0..k). Failing to remember is
 * not an error: the cache is only a shortcut. */
static void cache_add(struct enc *e, const uint8_t *w, size_t n, uint64_t h, const int32_t *ids,
                      size_t k)
{
	if (e->cache_n >= CACHE_MAX_ENTRIES)
		return;
	if (e->cache == NULL || 2 * (e->cache_n + 1) > e->cache_mask + 1) {
		uint32_t slots = e->cache ? 2 * (e->cache_mask + 1) : 1024;
		struct cache_ent *tab = calloc(slots, sizeof *tab);
		if (tab == NULL)
			return;
		if (e->cache)
			for (uint32_t i = 0; i <= e->cache_mask; i++)
				if (e->cache[i].word_len)
					cache_place(tab, slots - 1, &e->cache[i]);
		free(e->cache);
		e->cache = tab;
		e->cache_mask = slots - 1;
	}
	if (grow_bytes((void **)&e->words, &e->words_cap, e->words_n + n, 1) ||
	    grow_bytes((void **)&e->cache_ids, &e->cids_cap, e->cids_n + k, sizeof *e->cache_ids)) {
		moe_err_clear();
		return;
	}
	struct cache_ent ent = {h, (uint32_t)e->words_n, (uint32_t)n, (uint32_t)e->cids_n,
	                        (uint32_t)k};
	memcpy(e->words + e->words_n, w, n);
	e->words_n += n;
	memcpy(e->cache_ids + e->cids_n, ids, k * sizeof *ids);
	e->cids_n += k;
	cache_place(e->cache, e->cache_mask, &ent);
	e->cache_n++;
}

/* ---- BPE -------------------------------------------------------------------- */

static void heap_push(uint64_t *heap, size_t *n, uint64_t v)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (heap[p] <= v)
			break;
		heap[i] = heap[p];
		i = p;
	}
	heap[i] = v;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n)
{
	uint64_t top = heap[0];
	uint64_t v = heap[--(*n)];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && heap[c + 1] < heap[c])
			c++;
		if (v <= heap[c])
			break;
		heap[i] = heap[c];
		i = c;
	}
	heap[i] = v;
	return top;
}

static void push_pair(const struct enc *e, uint64_t *heap, size_t *hn, int32_t i)
{
	if (i < 0 || e->next[i] < 0)
		return;
	int32_t j = e->next[i];
	uint32_t rank, result;
	if (moe_tok_pair(e->tok, (uint32_t)e->sym[i], (uint32_t)e->sym[j], &rank, &result))
		heap_push(heap, hn, (uint64_t)rank << 32 | (uint32_t)i);
}

/* Emits piece p: itself if it is a token, else its bytes one by one. */
static moe_err emit_piece(struct enc *e, int32_t p)
{
	const moe_tokenizer *tok = e->tok;
	if ((uint32_t)p < tok->n_vocab)
		return emit(e, p);
	size_t len;
	const uint8_t *s = moe_tok_piece(tok, (uint32_t)p, &len);
	for (size_t i = 0; i < len; i++) {
		moe_err err = emit(e, tok->byte_id[s[i]]);
		if (err)
			return err;
	}
	return MOE_OK;
}

static moe_err bpe_word(struct enc *e, const uint8_t *w, size_t n)
{
	const moe_tokenizer *tok = e->tok;
	for (size_t i = 0; i < n; i++)
		if (tok->byte_id[w[i]] < 0)
			return moe_fail(MOE_ERR_NOT_FOUND, "encode: byte 0x%02x has no token",
			                w[i]);
	if (n == 1)
		return emit(e, tok->byte_id[w[0]]);

	uint64_t h = 0;
	if (n <= CACHE_MAX_WORD) {
		h = moe_tok_hash(w, n);
		const struct cache_ent *c = cache_find(e, w, n, h);
		if (c != NULL) {
			moe_err err =
			    grow_bytes((void **)&e->ids, &e->cap, e->n + c->ids_n, sizeof *e->ids);
			if (err)
				return err;
			memcpy(e->ids + e->n, e->cache_ids + c->ids_off, c->ids_n * sizeof *e->ids);
			e->n += c->ids_n;
			return MOE_OK;
		}
	}
	if (n > INT32_MAX / 4)
		return moe_fail(MOE_ERR_OVERFLOW, "encode: pre-token of %zu bytes", n);
	if (n > e->ws_cap) {
		size_t c = n < 64 ? 64 : n;
		int32_t *sym = realloc(e->sym, c * sizeof *sym);
		if (sym)
			e->sym = sym;
		int32_t *nx = realloc(e->next, c * sizeof *nx);
		if (nx)
			e->next = nx;
		int32_t *pv = realloc(e->prev, c * sizeof *pv);
		if (pv)
			e->prev = pv;
		uint64_t *hp = realloc(e->heap, 3 * c * sizeof *hp);
		if (hp)
			e->heap = hp;
		if (!sym || !nx || !pv || !hp)
			return moe_fail(MOE_ERR_NOMEM, "encode: BPE of a %zu-byte pre-token", n);
		e->ws_cap = c;
	}
	for (size_t i = 0; i < n; i++) {
		e->sym[i] = tok->byte_id[w[i]];
		e->prev[i] = (int32_t)i - 1;
		e->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
	}
	size_t hn = 0;
	for (size_t i = 0; i + 1 < n; i++)
		push_pair(e, e->heap, &hn, (int32_t)i);
	while (hn > 0) {
		uint64_t top = heap_pop(e->heap, &hn);
		int32_t i = (int32_t)(uint32_t)top;
		uint32_t want = (uint32_t)(top >> 32), rank, result;
		if (e->sym[i] < 0 || e->next[i] < 0)
			continue;
		int32_t j = e->next[i];
		if (!moe_tok_pair(tok, (uint32_t)e->sym[i], (uint32_t)e->sym[j], &rank, &result) ||
		    rank != want)
			continue; /* stale: a neighbour changed since this pair was queued */
		e->sym[i] = (int32_t)result;
		e->sym[j] = -2;
		e->next[i] = e->next[j];
		if (e->next[j] >= 0)
			e->prev[e->next[j]] = i;
		push_pair(e, e->heap, &hn, e->prev[i]);
		push_pair(e, e->heap, &hn, i);
	}
	size_t first = e->n;
	for (int32_t i = 0; i >= 0; i = e->next[i]) {
		moe_err err = emit_piece(e, e->sym[i]);
		if (err)
			return err;
	}
	if (n <= CACHE_MAX_WORD)
		cache_add(e, w, n, h, e->ids + first, e->n - first);
	return MOE_OK;
}

/* ---- normalisation and pre-tokenisation ------------------------------------- */

static bool all_ascii(const uint8_t *s, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, s + i, 8);
		if (v & 0x8080808080808080ull)
			return false;
	}
	for (; i < n; i++)
		if (s[i] & 0x80)
			return false;
	return true;
}

static moe_err norm_append(struct enc *e, const uint8_t *s, size_t n)
{
	moe_err err = grow_bytes((void **)&e->norm, &e->norm_cap, e->norm_n + n, 1);
	if (err)
		return err;
	if (n > 0)
		memcpy(e->norm + e->norm_n, s, n);
	e->norm_n += n;
	return MOE_OK;
}

/* Appends NFC(s[0..n)) (valid UTF-8) to e->norm. */
static moe_err nfc_chunk(struct enc *e, const uint8_t *s, size_t n)
{
	const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
	utf8proc_ssize_t r;
	for (;;) {
		r = utf8proc_decompose(s, (utf8proc_ssize_t)n, e->cps, (utf8proc_ssize_t)e->cps_cap,
		                       opt);
		if (r < 0)
			return moe_fail(MOE_ERR_BAD_STRING, "encode: NFC: %s", utf8proc_errmsg(r));
		if ((size_t)r <= e->cps_cap)
			break;
		moe_err err = grow_bytes((void **)&e->cps, &e->cps_cap, (size_t)r, sizeof *e->cps);
		if (err)
			return err;
	}
	r = utf8proc_normalize_utf32(e->cps, r, opt);
	if (r < 0)
		return moe_fail(MOE_ERR_BAD_STRING, "encode: NFC: %s", utf8proc_errmsg(r));
	moe_err err = grow_bytes((void **)&e->norm, &e->norm_cap, e->norm_n + 4 * (size_t)r, 1);
	if (err)
		return err;
	for (utf8proc_ssize_t i = 0; i < r; i++)
		e->norm_n += (size_t)utf8proc_encode_char(e->cps[i], e->norm + e->norm_n);
	return MOE_OK;
}

/* NFC of the valid UTF-8 s[0..n). ASCII needs nothing, and a boundary just
 * before an ASCII character is one that NFC never reaches across (ASCII
 * characters are starters that compose with nothing before them), so only
 * the non-ASCII runs, each with the character before it, go to utf8proc. */
static moe_err nfc(struct enc *e, const uint8_t *s, size_t n, const uint8_t **out, size_t *out_n)
{
	if (all_ascii(s, n)) {
		*out = s;
		*out_n = n;
		return MOE_OK;
	}
	e->norm_n = 0;
	size_t i = 0;
	while (i < n) {
		size_t p = i;
		while (p < n && s[p] < 0x80)
			p++;
		if (p == n) {
			moe_err err = norm_append(e, s + i, n - i);
			if (err)
				return err;
			break;
		}
		size_t start = p > i ? p - 1 : p;
		moe_err err = norm_append(e, s + i, start - i);
		if (err)
			return err;
		size_t q = p;
		while (q < n && s[q] >= 0x80)
			q++;
		err = nfc_chunk(e, s + start, q - start);
		if (err)
			return err;
		i = q;
	}
	*out = e->norm;
	*out_n = e->norm_n;
	return MOE_OK;
}

/* Encodes a piece of text that holds no added token. */
static moe_err encode_segment(struct enc *e, const uint8_t *raw, size_t raw_n)
{
	if (raw_n == 0)
		return MOE_OK;
	const uint8_t *s;
	size_t n;
	moe_err err = nfc(e, raw, raw_n, &s, &n);
	if (err)
		return err;
	size_t off = 0;
	while (off < n) {
		int rc = pcre2_match(e->tok->re, s, n, off, PCRE2_NO_UTF_CHECK, e->md, NULL);
		size_t start = n, end = n;
		if (rc >= 0) {
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
			start = ov[0];
			end = ov[1];
		} else if (rc != PCRE2_ERROR_NOMATCH) {
			PCRE2_UCHAR msg[160];
			pcre2_get_error_message(rc, msg, sizeof msg);
			return moe_fail(MOE_ERR_FORMAT, "encode: pre-tokenizer at byte %zu: %s",
			                off, (const char *)msg);
		}
		if (start > off) { /* text no alternative matched: a word of its own */
			err = bpe_word(e, s + off, start - off);
			if (err)
				return err;
		}
		if (end <= start) { /* an empty match cannot happen with this regex */
			if (start >= n)
				break;
			end = start + 1;
			while (end < n && (s[end] & 0xC0) == 0x80)
				end++;
		}
		err = bpe_word(e, s + start, end - start);
		if (err)
			return err;
		off = end;
	}
	return MOE_OK;
}

/* The added token starting at s[0..n) under flags, longest first, or -1. */
static int32_t match_special(const moe_tokenizer *tok, const uint8_t *s, size_t n, unsigned flags,
                             size_t *len)
{
	uint32_t lo = tok->special_first[s[0]], hi = tok->special_first[s[0] + 1];
	for (uint32_t j = lo; j < hi; j++) {
		int32_t id = tok->special[j];
		unsigned type = tok->type[id];
		if (type != MOE_TOKEN_USER_DEFINED && !(flags & MOE_TOK_ENCODE_SPECIAL))
			continue;
		size_t k;
		const uint8_t *p = moe_tok_piece(tok, (uint32_t)id, &k);
		if (k <= n && memcmp(p, s, k) == 0) {
			*len = k;
			return id;
		}
	}
	return -1;
}

static bool utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		uint32_t cp;
		size_t bad;
		int r = moe_tok_utf8_next(s + i, n - i, &cp, &bad);
		if (r <= 0)
			return false;
		i += (size_t)r;
	}
	return true;
}

static void enc_free(struct enc *e)
{
	pcre2_match_data_free(e->md);
	free(e->cps);
	free(e->norm);
	free(e->cache_ids);
	free(e->words);
	free(e->cache);
	free(e->heap);
	free(e->prev);
	free(e->next);
	free(e->sym);
}

moe_err moe_tokenizer_encode(int32_t **ids, size_t *n_ids, const moe_tokenizer *tok,
                             const char *text, size_t len, unsigned flags)
{
	if (tok == NULL || ids == NULL || n_ids == NULL || (text == NULL && len > 0))
		return moe_fail(MOE_ERR_INVAL, "encode: NULL argument");
	struct enc e = {.tok = tok};
	char *clean = NULL;
	const uint8_t *s = (const uint8_t *)text;
	moe_err err = MOE_OK;
	if (!utf8_valid(s, len)) {
		size_t n;
		err = moe_utf8_sanitize(&clean, &n, text, len);
		if (err)
			return err;
		s = (const uint8_t *)clean;
		len = n;
	}
	e.md = pcre2_match_data_create_from_pattern(tok->re, NULL);
	if (e.md == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "encode: PCRE2 match data");
		goto out_free;
	}
	if ((flags & MOE_TOK_ENCODE_ADD_SPECIAL) && tok->add_bos && tok->bos >= 0) {
		err = emit(&e, tok->bos);
		if (err)
			goto out_free;
	}
	size_t seg = 0, i = 0;
	while (i < len) {
		size_t k;
		int32_t id = -1;
		if (tok->special_first[s[i]] != tok->special_first[s[i] + 1])
			id = match_special(tok, s + i, len - i, flags, &k);
		if (id < 0) {
			i++;
			continue;
		}
		err = encode_segment(&e, s + seg, i - seg);
		if (!err)
			err = emit(&e, id);
		if (err)
			goto out_free;
		i += k;
		seg = i;
	}
	err = encode_segment(&e, s + seg, len - seg);
	if (!err && (flags & MOE_TOK_ENCODE_ADD_SPECIAL) && tok->add_eos && tok->eos >= 0)
		err = emit(&e, tok->eos);
	if (err)
		goto out_free;
	*ids = e.ids;
	*n_ids = e.n;
	e.ids = NULL;
out_free:
	free(e.ids);
	enc_free(&e);
	free(clean);
	return err;
}
