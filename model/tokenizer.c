/*
 * tokenizer.c - building a byte-level BPE tokenizer from its GGUF arrays,
 * decoding (whole and streaming) and the UTF-8 helpers.  Encoding is in
 * tokenizer_encode.c.
 *
 * GPT-2 byte-level form: every byte is written as one Unicode character so
 * that token strings are printable.  Bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF stand for themselves; the other 68 bytes, in increasing order,
 * become U+0100, U+0101, ... U+0143.  Internally every token is kept as the
 * raw bytes it stands for.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_impl.h"

#define BYTELEVEL_MAX_CP 0x144 /* code points of the byte-level alphabet are < this */

static bool byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* byte_of_cp[cp] = the byte code point cp stands for, or -1. */
static void bytelevel_inverse(int16_t byte_of_cp[BYTELEVEL_MAX_CP])
{
	unsigned next = 0x100;
	for (unsigned cp = 0; cp < BYTELEVEL_MAX_CP; cp++)
		byte_of_cp[cp] = -1;
	for (unsigned b = 0; b < 256; b++) {
		if (byte_is_printable(b))
			byte_of_cp[b] = (int16_t)b;
		else
			byte_of_cp[next++] = (int16_t)b;
	}
}

/* Decodes byte-level text s[0..n) into dst (room for n bytes). Returns the
 * number of bytes, or -1 when s is not in byte-level form. */
static int64_t bytelevel_decode(uint8_t *dst, const uint8_t *s, size_t n,
                                const int16_t byte_of_cp[BYTELEVEL_MAX_CP])
{
	size_t i = 0, o = 0;
	while (i < n) {
		uint32_t cp;
		size_t bad;
		int r = moe_tok_utf8_next(s + i, n - i, &cp, &bad);
		if (r <= 0 || cp >= BYTELEVEL_MAX_CP || byte_of_cp[cp] < 0)
			return -1;
		dst[o++] = (uint8_t)byte_of_cp[cp];
		i += (size_t)r;
	}
	return (int64_t)o;
}

int moe_tok_utf8_next(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad)
{
	uint8_t b0 = s[0];
	if (b0 < 0x80) {
		*cp = b0;
		return 1;
	}
	int need;
	uint8_t lo = 0x80, hi = 0xBF;
	if (b0 < 0xC2) {
		*bad = 1;
		return 0;
	} else if (b0 < 0xE0) {
		need = 2;
	} else if (b0 < 0xF0) {
		need = 3;
		if (b0 == 0xE0)
			lo = 0xA0;
		else if (b0 == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (b0 < 0xF5) {
		need = 4;
		if (b0 == 0xF0)
			lo = 0x90;
		else if (b0 == 0xF4)
			hi = 0x8F; /* nothing above U+10FFFF */
	} else {
		*bad = 1;
		return 0;
	}
	if (n < 2)
		return -1;
	if (s[1] < lo || s[1] > hi) {
		*bad = 1;
		return 0;
	}
	for (int i = 2; i < need; i++) {
		if ((size_t)i >= n)
			return -1;
		if ((s[i] & 0xC0) != 0x80) {
			*bad = (size_t)i;
			return 0;
		}
	}
	uint32_t c = b0 & (need == 2 ? 0x1F : need == 3 ? 0x0F : 0x07);
	for (int i = 1; i < need; i++)
		c = c << 6 | (s[i] & 0x3F);
	*cp = c;
	return need;
}

/* Writes s[0..n) to dst (room for 3 * n bytes) with ill-formed parts replaced
 * by U+FFFD. With hold_tail, a cut-off sequence at the end is left out and
 * *used tells how many input bytes were consumed. Returns the output length. */
static size_t utf8_clean(uint8_t *dst, const uint8_t *s, size_t n, bool hold_tail, size_t *used)
{
	size_t i = 0, o = 0;
	while (i < n) {
		if (s[i] < 0x80) {
			dst[o++] = s[i++];
			continue;
		}
		uint32_t cp;
		size_t bad = 1;
		int r = moe_tok_utf8_next(s + i, n - i, &cp, &bad);
		if (r > 0) {
			memcpy(dst + o, s + i, (size_t)r);
			o += (size_t)r;
			i += (size_t)r;
			continue;
		}
		if (r < 0 && hold_tail)
			break;
		dst[o++] = 0xEF;
		dst[o++] = 0xBF;
		dst[o++] = 0xBD;
		i += r < 0 ? n - i : bad;
	}
	if (used)
		*used = i;
	return o;
}

moe_err moe_utf8_sanitize(char **out, size_t *out_len, const char *s, size_t len)
{
	if (s == NULL && len > 0)
		return moe_fail(MOE_ERR_INVAL, "utf8_sanitize: NULL text of %zu bytes", len);
	size_t cap;
	if (!moe_size_mul(&cap, len, 3) || !moe_size_add(&cap, cap, 1))
		return moe_fail(MOE_ERR_OVERFLOW, "utf8_sanitize: %zu bytes", len);
	uint8_t *buf = malloc(cap);
	if (buf == NULL)
		return moe_fail(MOE_ERR_NOMEM, "utf8_sanitize: %zu bytes", cap);
	size_t n = len ? utf8_clean(buf, (const uint8_t *)s, len, false, NULL) : 0;
	buf[n] = 0;
	*out = (char *)buf;
	*out_len = n;
	return MOE_OK;
}

uint64_t moe_tok_hash(const uint8_t *s, size_t n)
{
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, s, 8);
		h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
		h ^= h >> 31;
		s += 8;
		n -= 8;
	}
	uint64_t v = 0;
	memcpy(&v, s, n);
	h = (h ^ v) * 0x94D049BB133111EBull;
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	h ^= h >> 32;
	return h;
}

int64_t moe_tok_lookup(const moe_tokenizer *tok, const uint8_t *s, size_t n)
{
	uint32_t i = (uint32_t)moe_tok_hash(s, n) & tok->piece_mask;
	for (;;) {
		uint32_t slot = tok->piece_slot[i];
		if (slot == 0)
			return -1;
		size_t len;
		const uint8_t *p = moe_tok_piece(tok, slot - 1, &len);
		if (len == n && memcmp(p, s, n) == 0)
			return slot - 1;
		i = (i + 1) & tok->piece_mask;
	}
}

/* Inserts piece id unless a piece with the same bytes is there (first wins). */
static void piece_insert(moe_tokenizer *tok, uint32_t id)
{
	size_t n;
	const uint8_t *s = moe_tok_piece(tok, id, &n);
	uint32_t i = (uint32_t)moe_tok_hash(s, n) & tok->piece_mask;
	for (;;) {
		uint32_t slot = tok->piece_slot[i];
		if (slot == 0) {
			tok->piece_slot[i] = id + 1;
			return;
		}
		size_t len;
		const uint8_t *p = moe_tok_piece(tok, slot - 1, &len);
		if (len == n && memcmp(p, s, n) == 0)
			return;
		i = (i + 1) & tok->piece_mask;
	}
}

static void pair_insert(moe_tokenizer *tok, uint32_t a, uint32_t b, uint32_t rank, uint32_t result)
{
	uint64_t key = (uint64_t)a << 32 | b;
	uint64_t h = key * 0x9E3779B97F4A7C15ull;
	uint32_t i = (uint32_t)(h >> 32) & tok->pair_mask;
	while (tok->pair_key[i] != UINT64_MAX) {
		if (tok->pair_key[i] == key)
			return; /* the first (lowest) rank wins */
		i = (i + 1) & tok->pair_mask;
	}
	tok->pair_key[i] = key;
	tok->pair_rank[i] = rank;
	tok->pair_result[i] = result;
}

static uint32_t pow2_at_least(uint64_t n)
{
	uint32_t p = 16;
	while (p < n)
		p <<= 1;
	return p;
}

static bool type_is_added(unsigned type)
{
	return type == MOE_TOKEN_CONTROL || type == MOE_TOKEN_USER_DEFINED ||
	       type == MOE_TOKEN_UNKNOWN;
}

struct special_key {
	uint8_t first;
	uint32_t len;
	int32_t id;
};

static int special_cmp(const void *pa, const void *pb)
{
	const struct special_key *a = pa, *b = pb;
	if (a->first != b->first)
		return a->first < b->first ? -1 : 1;
	if (a->len != b->len)
		return a->len > b->len ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

/* Appends n bytes as a new piece; grows the arena. */
static moe_err piece_append(moe_tokenizer *tok, size_t *bytes_cap, const uint8_t *s, size_t n)
{
	uint32_t off = tok->piece_off[tok->n_pieces];
	if ((uint64_t)off + n > UINT32_MAX)
		return moe_fail(MOE_ERR_OVERFLOW, "tokenizer: pieces exceed 4 GiB");
	if (off + n > *bytes_cap) {
		size_t cap = *bytes_cap * 2 + n + 64;
		uint8_t *b = realloc(tok->bytes, cap);
		if (b == NULL)
			return moe_fail(MOE_ERR_NOMEM, "tokenizer: %zu bytes of pieces", cap);
		tok->bytes = b;
		*bytes_cap = cap;
	}
	memcpy(tok->bytes + off, s, n);
	tok->n_pieces++;
	tok->piece_off[tok->n_pieces] = off + (uint32_t)n;
	return MOE_OK;
}

static size_t spec_len(const char *s, const uint32_t *lens, uint32_t i)
{
	return lens ? lens[i] : strlen(s);
}

static moe_err build_merges(moe_tokenizer *tok, size_t *bytes_cap, const moe_tokenizer_spec *spec,
                            const int16_t byte_of_cp[BYTELEVEL_MAX_CP])
{
	uint8_t *buf = NULL;
	size_t buf_cap = 0;
	moe_err err = MOE_OK;
	for (uint32_t r = 0; r < spec->n_merges; r++) {
		const char *m = spec->merges[r];
		if (m == NULL) {
			err = moe_fail(MOE_ERR_INVAL, "tokenizer: merge %u is NULL", r);
			goto out_free_buf;
		}
		size_t n = spec_len(m, spec->merge_lens, r);
		const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
		if (sp == NULL)
			continue; /* malformed: can never apply */
		if (n + 1 > buf_cap) {
			buf_cap = 2 * n + 64;
			uint8_t *b = realloc(buf, buf_cap);
			if (b == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "tokenizer: merge buffer");
				goto out_free_buf;
			}
			buf = b;
		}
		size_t nl = (size_t)(sp - m);
		int64_t la = bytelevel_decode(buf, (const uint8_t *)m, nl, byte_of_cp);
		if (la <= 0)
			continue;
		int64_t lb =
		    bytelevel_decode(buf + la, (const uint8_t *)sp + 1, n - nl - 1, byte_of_cp);
		if (lb <= 0)
			continue;
		int64_t a = moe_tok_lookup(tok, buf, (size_t)la);
		int64_t b = moe_tok_lookup(tok, buf + la, (size_t)lb);
		if (a < 0 || b < 0)
			continue;
		int64_t c = moe_tok_lookup(tok, buf, (size_t)(la + lb));
		if (c < 0) {
			c = tok->n_pieces;
			err = piece_append(tok, bytes_cap, buf, (size_t)(la + lb));
			if (err)
				goto out_free_buf;
			piece_insert(tok, (uint32_t)c);
		}
		pair_insert(tok, (uint32_t)a, (uint32_t)b, r, (uint32_t)c);
	}
out_free_buf:
	free(buf);
	return err;
}

static moe_err build_specials(moe_tokenizer *tok)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < tok->n_vocab; i++)
		if (type_is_added(tok->type[i]) && tok->piece_off[i + 1] > tok->piece_off[i])
			n++;
	struct special_key *keys = malloc((n ? n : 1) * sizeof *keys);
	tok->special = malloc((n ? n : 1) * sizeof *tok->special);
	if (keys == NULL || tok->special == NULL) {
		free(keys);
		return moe_fail(MOE_ERR_NOMEM, "tokenizer: %u added tokens", n);
	}
	n = 0;
	for (uint32_t i = 0; i < tok->n_vocab; i++) {
		size_t len;
		const uint8_t *p = moe_tok_piece(tok, i, &len);
		if (type_is_added(tok->type[i]) && len > 0)
			keys[n++] = (struct special_key){p[0], (uint32_t)len, (int32_t)i};
	}
	qsort(keys, n, sizeof *keys, special_cmp);
	for (uint32_t j = 0; j < n; j++)
		tok->special[j] = keys[j].id;
	tok->n_special = n;
	uint32_t j = 0;
	for (unsigned b = 0; b <= 256; b++) {
		while (j < n && keys[j].first < b)
			j++;
		tok->special_first[b] = j;
	}
	free(keys);
	return MOE_OK;
}

static moe_err build_regex(moe_tokenizer *tok)
{
	int code;
	PCRE2_SIZE where;
	tok->re = pcre2_compile((PCRE2_SPTR)MOE_TOK_QWEN2_REGEX, PCRE2_ZERO_TERMINATED,
	                        PCRE2_UTF | PCRE2_UCP, &code, &where, NULL);
	if (tok->re == NULL) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(code, msg, sizeof msg);
		return moe_fail(MOE_ERR_UNSUPPORTED, "tokenizer: PCRE2 regex at %zu: %s",
		                (size_t)where, (const char *)msg);
	}
	(void)pcre2_jit_compile(tok->re, PCRE2_JIT_COMPLETE); /* interpreted if no JIT */
	return MOE_OK;
}

static moe_err check_spec(const moe_tokenizer_spec *spec)
{
	if (spec == NULL || spec->tokens == NULL || (spec->merges == NULL && spec->n_merges))
		return moe_fail(MOE_ERR_INVAL, "tokenizer: spec without tokens or merges");
	if (spec->model == NULL || strcmp(spec->model, "gpt2") != 0)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "tokenizer: model '%s' (only gpt2 byte-level BPE)",
		                spec->model ? spec->model : "(none)");
	if (spec->pre != NULL && strcmp(spec->pre, "qwen2") != 0)
		return moe_fail(MOE_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer '%s' (only qwen2)",
		                spec->pre);
	if (spec->n_tokens == 0 || spec->n_tokens > (1u << 30) || spec->n_merges > (1u << 30))
		return moe_fail(MOE_ERR_INVAL, "tokenizer: %u tokens, %u merges", spec->n_tokens,
		                spec->n_merges);
	int32_t ids[3] = {spec->bos_id, spec->eos_id, spec->pad_id};
	static const char *const names[3] = {"bos", "eos", "padding"};
	for (int k = 0; k < 3; k++)
		if (ids[k] < -1 || ids[k] >= (int64_t)spec->n_tokens)
			return moe_fail(MOE_ERR_BAD_VALUE, "tokenizer: %s id %d outside %u tokens",
			                names[k], ids[k], spec->n_tokens);
	for (uint32_t i = 0; i < spec->n_tokens; i++) {
		if (spec->tokens[i] == NULL)
			return moe_fail(MOE_ERR_INVAL, "tokenizer: token %u is NULL", i);
		if (spec->token_types && (spec->token_types[i] < 0 || spec->token_types[i] > 6))
			return moe_fail(MOE_ERR_BAD_VALUE, "tokenizer: token %u has type %d", i,
			                spec->token_types[i]);
	}
	return MOE_OK;
}

moe_err moe_tokenizer_create(moe_tokenizer **out, const moe_tokenizer_spec *spec)
{
	moe_err err = check_spec(spec);
	if (err)
		return err;
	int16_t byte_of_cp[BYTELEVEL_MAX_CP];
	bytelevel_inverse(byte_of_cp);

	moe_tokenizer *tok = calloc(1, sizeof *tok);
	if (tok == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tokenizer");
	uint32_t n = spec->n_tokens;
	size_t bytes_cap = 64;
	for (uint32_t i = 0; i < n; i++)
		bytes_cap += spec_len(spec->tokens[i], spec->token_lens, i);
	tok->n_vocab = n;
	tok->piece_off = malloc(((size_t)n + spec->n_merges + 1) * sizeof *tok->piece_off);
	tok->bytes = malloc(bytes_cap);
	tok->type = malloc(n);
	tok->piece_mask = pow2_at_least(2 * ((uint64_t)n + spec->n_merges)) - 1;
	tok->piece_slot = calloc((size_t)tok->piece_mask + 1, sizeof *tok->piece_slot);
	tok->pair_mask = pow2_at_least(2 * (uint64_t)spec->n_merges) - 1;
	tok->pair_key = malloc(((size_t)tok->pair_mask + 1) * sizeof *tok->pair_key);
	tok->pair_rank = malloc(((size_t)tok->pair_mask + 1) * sizeof *tok->pair_rank);
	tok->pair_result = malloc(((size_t)tok->pair_mask + 1) * sizeof *tok->pair_result);
	if (!tok->piece_off || !tok->bytes || !tok->type || !tok->piece_slot || !tok->pair_key ||
	    !tok->pair_rank || !tok->pair_result) {
		err = moe_fail(MOE_ERR_NOMEM, "tokenizer: tables for %u tokens", n);
		goto out_destroy;
	}
	memset(tok->pair_key, 0xFF, ((size_t)tok->pair_mask + 1) * sizeof *tok->pair_key);
	tok->piece_off[0] = 0;

	/* tokens: raw bytes of each */
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *s = (const uint8_t *)spec->tokens[i];
		size_t len = spec_len(spec->tokens[i], spec->token_lens, i);
		unsigned type =
		    spec->token_types ? (unsigned)spec->token_types[i] : MOE_TOKEN_NORMAL;
		tok->type[i] = (uint8_t)type;
		uint32_t off = tok->piece_off[i];
		int64_t dec = -1;
		if (!type_is_added(type))
			dec = bytelevel_decode(tok->bytes + off, s, len, byte_of_cp);
		if (dec < 0) { /* added token, or not byte-level: keep the text */
			memcpy(tok->bytes + off, s, len);
			dec = (int64_t)len;
		}
		tok->piece_off[i + 1] = off + (uint32_t)dec;
		tok->n_pieces = i + 1;
	}
	for (uint32_t i = 0; i < n; i++)
		if (!type_is_added(tok->type[i]) && tok->piece_off[i + 1] > tok->piece_off[i])
			piece_insert(tok, i);
	for (unsigned b = 0; b < 256; b++) {
		uint8_t c = (uint8_t)b;
		tok->byte_id[b] = (int32_t)moe_tok_lookup(tok, &c, 1);
	}
	err = build_merges(tok, &bytes_cap, spec, byte_of_cp);
	if (err)
		goto out_destroy;
	err = build_specials(tok);
	if (err)
		goto out_destroy;
	err = build_regex(tok);
	if (err)
		goto out_destroy;
	tok->bos = spec->bos_id;
	tok->eos = spec->eos_id;
	tok->pad = spec->pad_id;
	tok->add_bos = spec->add_bos;
	tok->add_eos = spec->add_eos;
	*out = tok;
	return MOE_OK;

out_destroy:
	moe_tokenizer_destroy(tok);
	return err;
}

void moe_tokenizer_destroy(moe_tokenizer *tok)
{
	if (tok == NULL)
		return;
	pcre2_code_free(tok->re);
	free(tok->special);
	free(tok->pair_result);
	free(tok->pair_rank);
	free(tok->pair_key);
	free(tok->piece_slot);
	free(tok->type);
	free(tok->bytes);
	free(tok->piece_off);
	free(tok);
}

/* ---- facts ------------------------------------------------------------------ */

uint32_t moe_tokenizer_n_vocab(const moe_tokenizer *tok)
{
	return tok->n_vocab;
}

int32_t moe_tokenizer_bos(const moe_tokenizer *tok)
{
	return tok->bos;
}

int32_t moe_tokenizer_eos(const moe_tokenizer *tok)
{
	return tok->eos;
}

int32_t moe_tokenizer_pad(const moe_tokenizer *tok)
{
	return tok->pad;
}

bool moe_tokenizer_add_bos(const moe_tokenizer *tok)
{
	return tok->add_bos;
}

moe_token_type moe_tokenizer_token_type(const moe_tokenizer *tok, int32_t id)
{
	if (id < 0 || (uint32_t)id >= tok->n_vocab)
		return MOE_TOKEN_UNDEFINED;
	return (moe_token_type)tok->type[id];
}

int32_t moe_tokenizer_find_special(const moe_tokenizer *tok, const char *text, size_t len)
{
	if (text == NULL || len == 0)
		return -1;
	uint8_t b = (uint8_t)text[0];
	for (uint32_t j = tok->special_first[b]; j < tok->special_first[b + 1]; j++) {
		size_t n;
		const uint8_t *p = moe_tok_piece(tok, (uint32_t)tok->special[j], &n);
		if (n == len && memcmp(p, text, len) == 0)
			return tok->special[j];
	}
	return -1;
}

const char *moe_tokenizer_token_bytes(const moe_tokenizer *tok, int32_t id, size_t *len)
{
	if (id < 0 || (uint32_t)id >= tok->n_vocab) {
		*len = 0;
		return NULL;
	}
	return (const char *)moe_tok_piece(tok, (uint32_t)id, len);
}

/* ---- decoding --------------------------------------------------------------- */

/* The bytes id renders as under flags (llama.cpp's token_to_piece rules for
 * BPE): NORMAL decoded, USER_DEFINED raw, CONTROL / UNKNOWN raw only with
 * MOE_TOK_DECODE_SPECIAL, anything else nothing. */
static const uint8_t *render(const moe_tokenizer *tok, int32_t id, unsigned flags, size_t *len)
{
	unsigned type = tok->type[id];
	if (type == MOE_TOKEN_NORMAL || type == MOE_TOKEN_USER_DEFINED ||
	    ((type == MOE_TOKEN_CONTROL || type == MOE_TOKEN_UNKNOWN) &&
	     (flags & MOE_TOK_DECODE_SPECIAL)))
		return moe_tok_piece(tok, (uint32_t)id, len);
	*len = 0;
	return tok->bytes;
}

moe_err moe_tokenizer_decode(char **out, size_t *out_len, const moe_tokenizer *tok,
                             const int32_t *ids, size_t n, unsigned flags)
{
	if (ids == NULL && n > 0)
		return moe_fail(MOE_ERR_INVAL, "decode: NULL ids");
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || (uint32_t)ids[i] >= tok->n_vocab)
			return moe_fail(MOE_ERR_BAD_VALUE, "decode: id %d at %zu outside %u tokens",
			                ids[i], i, tok->n_vocab);
		size_t len;
		render(tok, ids[i], flags, &len);
		total += len;
	}
	char *buf = malloc(total + 1);
	if (buf == NULL)
		return moe_fail(MOE_ERR_NOMEM, "decode: %zu bytes", total + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		size_t len;
		const uint8_t *p = render(tok, ids[i], flags, &len);
		memcpy(buf + o, p, len);
		o += len;
	}
	buf[o] = 0;
	*out = buf;
	*out_len = o;
	return MOE_OK;
}

struct moe_tok_stream {
	const moe_tokenizer *tok;
	unsigned flags;
	uint8_t *in; /* held-back bytes, then the new token's bytes */
	size_t n_held;
	size_t in_cap;
	uint8_t *out;
	size_t out_cap;
};

moe_err moe_tok_stream_create(moe_tok_stream **out, const moe_tokenizer *tok, unsigned flags)
{
	if (tok == NULL)
		return moe_fail(MOE_ERR_INVAL, "tok_stream: NULL tokenizer");
	moe_tok_stream *s = calloc(1, sizeof *s);
	if (s == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tok_stream");
	s->tok = tok;
	s->flags = flags;
	*out = s;
	return MOE_OK;
}

static moe_err grow(uint8_t **buf, size_t *cap, size_t need)
{
	if (need <= *cap)
		return MOE_OK;
	size_t c = need < 64 ? 64 : need * 2;
	uint8_t *b = realloc(*buf, c);
	if (b == NULL)
		return moe_fail(MOE_ERR_NOMEM, "tok_stream: %zu bytes", c);
	*buf = b;
	*cap = c;
	return MOE_OK;
}

static moe_err stream_emit(moe_tok_stream *s, size_t n_in, bool hold, const char **text,
                           size_t *len)
{
	moe_err err = grow(&s->out, &s->out_cap, 3 * n_in + 1);
	if (err)
		return err;
	size_t used = n_in;
	size_t o = n_in ? utf8_clean(s->out, s->in, n_in, hold, &used) : 0;
	if (used < n_in)
		memmove(s->in, s->in + used, n_in - used);
	s->n_held = n_in - used;
	s->out[o] = 0;
	*text = (const char *)s->out;
	*len = o;
	return MOE_OK;
}

moe_err moe_tok_stream_push(moe_tok_stream *s, int32_t id, const char **text, size_t *len)
{
	if (id < 0 || (uint32_t)id >= s->tok->n_vocab)
		return moe_fail(MOE_ERR_BAD_VALUE, "tok_stream: id %d outside %u tokens", id,
		                s->tok->n_vocab);
	size_t n;
	const uint8_t *p = render(s->tok, id, s->flags, &n);
	moe_err err = grow(&s->in, &s->in_cap, s->n_held + n);
	if (err)
		return err;
	if (n > 0)
		memcpy(s->in + s->n_held, p, n);
	return stream_emit(s, s->n_held + n, true, text, len);
}

moe_err moe_tok_stream_finish(moe_tok_stream *s, const char **text, size_t *len)
{
	return stream_emit(s, s->n_held, false, text, len);
}

void moe_tok_stream_destroy(moe_tok_stream *s)
{
	if (s == NULL)
		return;
	free(s->in);
	free(s->out);
	free(s);
}
