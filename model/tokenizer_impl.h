/*
 * tokenizer_impl.h - the insides of moe_tokenizer, shared by tokenizer.c
 * (building, decoding) and tokenizer_encode.c (encoding).  Not a public
 * header: nothing outside model/tokenizer*.c includes it.
 */
#ifndef MOE_TOKENIZER_IMPL_H
#define MOE_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "model/tokenizer.h"

/* The Qwen2 pre-tokenizer regex as llama.cpp spells it for "qwen2" (the
 * (?i:...) group of tokenizer.json written out as character classes). */
#define MOE_TOK_QWEN2_REGEX                                                                        \
	"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
	"\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* Pieces: ids 0..n_vocab-1 are the vocabulary; ids n_vocab..n_pieces-1 are
 * "virtual" merge results that are not tokens themselves (a merge whose
 * concatenation is missing from the vocabulary); when BPE ends on one, its
 * bytes are emitted as single-byte tokens, as llama.cpp does. */
struct moe_tokenizer {
	uint32_t n_vocab;
	uint32_t n_pieces;
	uint32_t *piece_off;  /* [n_pieces + 1] offsets into bytes */
	uint8_t *bytes;       /* the bytes of every piece, back to back */
	uint8_t *type;        /* [n_vocab] moe_token_type */
	int32_t byte_id[256]; /* the single-byte token of each byte, -1 if none */

	/* bytes -> BPE piece (everything but CONTROL / USER_DEFINED / UNKNOWN) */
	uint32_t *piece_slot; /* [piece_mask + 1] piece id + 1, 0 = empty */
	uint32_t piece_mask;

	/* (left, right) -> rank and merged piece */
	uint64_t *pair_key;    /* [pair_mask + 1] left << 32 | right, UINT64_MAX = empty */
	uint32_t *pair_rank;   /* [pair_mask + 1] */
	uint32_t *pair_result; /* [pair_mask + 1] */
	uint32_t pair_mask;

	/* added tokens (CONTROL, USER_DEFINED, UNKNOWN) for matching in text,
	 * grouped by first byte, longest first within a group */
	uint32_t n_special;
	int32_t *special;            /* [n_special] token ids */
	uint32_t special_first[257]; /* group of byte b: special[first[b] .. first[b+1]) */

	pcre2_code *re; /* the pre-tokenizer */

	int32_t bos, eos, pad;
	bool add_bos, add_eos;
};

static inline const uint8_t *moe_tok_piece(const moe_tokenizer *tok, uint32_t id, size_t *len)
{
	*len = tok->piece_off[id + 1] - tok->piece_off[id];
	return tok->bytes + tok->piece_off[id];
}

/* 64-bit hash of a byte string. */
uint64_t moe_tok_hash(const uint8_t *s, size_t n);

/* The BPE piece whose bytes are s[0..n), or -1. */
int64_t moe_tok_lookup(const moe_tokenizer *tok, const uint8_t *s, size_t n);

/* Rank and result of merging pieces a and b; false if they never merge. */
static inline bool moe_tok_pair(const moe_tokenizer *tok, uint32_t a, uint32_t b, uint32_t *rank,
                                uint32_t *result)
{
	uint64_t key = (uint64_t)a << 32 | b;
	uint64_t h = key * 0x9E3779B97F4A7C15ull;
	uint32_t i = (uint32_t)(h >> 32) & tok->pair_mask;
	for (;;) {
		uint64_t k = tok->pair_key[i];
		if (k == key) {
			*rank = tok->pair_rank[i];
			*result = tok->pair_result[i];
			return true;
		}
		if (k == UINT64_MAX)
			return false;
		i = (i + 1) & tok->pair_mask;
	}
}

/* UTF-8: decodes the sequence at s[0..n). Returns its length (1..4) and sets
 * *cp when it is well-formed; returns 0 and sets *bad to the length of the
 * maximal ill-formed subpart (>= 1) otherwise; returns -1 when the bytes are
 * a proper prefix of a well-formed sequence that n cuts off. */
int moe_tok_utf8_next(const uint8_t *s, size_t n, uint32_t *cp, size_t *bad);

#endif
