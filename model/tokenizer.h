/*
 * tokenizer.h - byte-level BPE tokenizer (GPT-2 style, Qwen2/Qwen3 vocabularies).
 *
 * A tokenizer is built from the vocabulary exactly as GGUF stores it
 * (tokenizer.ggml.*): token strings in GPT-2 byte-to-unicode form, merges as
 * "left right" strings ranked by position, token types, special ids.  The same
 * arrays come from an HF tokenizer.json (moe_tokenizer_spec_read_hf) or from a
 * GGUF file (moe_tokenizer_from_gguf).
 *
 * Encoding: the text is made valid UTF-8 (each maximal ill-formed subsequence
 * becomes U+FFFD, as Python's errors="replace" does), added tokens are split
 * out (USER_DEFINED always, CONTROL only with MOE_TOK_ENCODE_SPECIAL), the
 * remaining pieces are NFC-normalised (utf8proc), split by the Qwen2
 * pre-tokenizer regex (PCRE2, UTF + UCP), and each pre-token is merged by BPE
 * rank.  A tokenizer is immutable after creation: every function taking a
 * const moe_tokenizer * may be called from many threads at once.
 */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Token types as GGUF stores them (tokenizer.ggml.token_type, llama.cpp's
 * llama_token_type). */
typedef enum moe_token_type {
	MOE_TOKEN_UNDEFINED = 0,
	MOE_TOKEN_NORMAL = 1,
	MOE_TOKEN_UNKNOWN = 2,
	MOE_TOKEN_CONTROL = 3,      /* <|im_start|>, <|endoftext|>: matched only on request */
	MOE_TOKEN_USER_DEFINED = 4, /* <think>, <tool_call>: always matched in text */
	MOE_TOKEN_UNUSED = 5,
	MOE_TOKEN_BYTE = 6,
} moe_token_type;

/* The vocabulary as plain arrays, as GGUF stores it. Nothing is owned by the
 * struct unless it came from moe_tokenizer_spec_read_hf. */
typedef struct moe_tokenizer_spec {
	const char *model;          /* tokenizer.ggml.model: must be "gpt2" */
	const char *pre;            /* tokenizer.ggml.pre: "qwen2" (NULL means "qwen2") */
	uint32_t n_tokens;          /* vocabulary size, ids 0..n_tokens-1 */
	const char *const *tokens;  /* [n_tokens] token texts: byte-level form for NORMAL,
	                               raw UTF-8 for CONTROL / USER_DEFINED */
	const uint32_t *token_lens; /* [n_tokens] byte lengths, or NULL: NUL-terminated */
	const int32_t *token_types; /* [n_tokens] moe_token_type, or NULL: all NORMAL */
	uint32_t n_merges;
	const char *const *merges;  /* [n_merges] "left right" (byte-level form); rank = index */
	const uint32_t *merge_lens; /* [n_merges] byte lengths, or NULL: NUL-terminated */
	int32_t bos_id;             /* -1: none */
	int32_t eos_id;             /* -1: none */
	int32_t pad_id;             /* -1: none */
	bool add_bos;               /* tokenizer.ggml.add_bos_token */
	bool add_eos;               /* tokenizer.ggml.add_eos_token */
} moe_tokenizer_spec;

typedef struct moe_tokenizer moe_tokenizer;

/* Builds a tokenizer from spec (copied: spec and its arrays may be freed
 * afterwards). Errors: MOE_ERR_UNSUPPORTED (model not "gpt2", unknown pre),
 * MOE_ERR_INVAL (NULL arrays, n_tokens 0 or > 2^30), MOE_ERR_BAD_VALUE (a
 * special id outside the vocabulary), MOE_ERR_NOMEM. Merges that can never
 * apply (a part that is not a token) are skipped, as llama.cpp does in effect.
 * On error *out is untouched. Free with moe_tokenizer_destroy. */
moe_err moe_tokenizer_create(moe_tokenizer **out, const moe_tokenizer_spec *spec);

/* Frees the tokenizer; NULL is a no-op. */
void moe_tokenizer_destroy(moe_tokenizer *tok);

/* Reads an HF tokenizer.json (BPE model, ByteLevel decoder) into the arrays
 * that llama.cpp's convert_hf_to_gguf.py would write: tokens in id order
 * including added tokens (holes filled with "[PAD<id>]", type UNUSED), merges
 * as "left right" strings, token types (added tokens: CONTROL when `special`
 * or when they look special ("<|...|>"), else USER_DEFINED; others NORMAL).
 * Special ids: from tokenizer_config.json and config.json in the same folder
 * when present (bos/eos/pad by content, bos_token_id/eos_token_id), then, for
 * a BOS still unset, the id of "<|endoftext|>" (what Qwen's config.json
 * says); add_bos / add_eos from tokenizer_config.json (default false).
 * pre is "qwen2" when the pre-tokenizer regex is Qwen2's, else
 * MOE_ERR_UNSUPPORTED. On success *out is owned by the caller: free it with
 * moe_tokenizer_spec_free. Errors: MOE_ERR_IO, MOE_ERR_FORMAT (not JSON, or
 * a field of the wrong type, named in the detail), MOE_ERR_UNSUPPORTED,
 * MOE_ERR_DUPLICATE (two tokens with one id), MOE_ERR_NOMEM. */
moe_err moe_tokenizer_spec_read_hf(moe_tokenizer_spec **out, const char *path);

/* Frees a spec returned by moe_tokenizer_spec_read_hf (and only such a spec);
 * NULL is a no-op. */
void moe_tokenizer_spec_free(moe_tokenizer_spec *spec);

/* moe_tokenizer_spec_read_hf + moe_tokenizer_create. */
moe_err moe_tokenizer_create_hf(moe_tokenizer **out, const char *path);

struct moe_gguf;
/* Builds a tokenizer from the tokenizer.ggml.* keys of an open GGUF file:
 * model, pre, tokens, token_type (optional), merges, bos/eos/padding ids and
 * add_bos/add_eos (optional). Errors: MOE_ERR_NOT_FOUND (a required key),
 * MOE_ERR_BAD_TYPE (a key of the wrong type), MOE_ERR_BAD_COUNT
 * (token_type length differs from tokens), and those of moe_tokenizer_create. */
moe_err moe_tokenizer_from_gguf(moe_tokenizer **out, const struct moe_gguf *g);

/* ---- encoding --------------------------------------------------------------- */

enum {
	MOE_TOK_ENCODE_SPECIAL = 1u << 0,     /* recognise CONTROL tokens written in the text */
	MOE_TOK_ENCODE_ADD_SPECIAL = 1u << 1, /* prepend BOS / append EOS as the vocab says */
};

/* Encodes len bytes of text (any bytes; NUL is an ordinary character). On
 * success *ids is a malloc'd array of *n_ids token ids that the caller frees
 * with free() (NULL when *n_ids is 0). Errors: MOE_ERR_INVAL (NULL text with
 * len > 0), MOE_ERR_NOT_FOUND (a byte has no single-byte token: the vocabulary
 * is incomplete), MOE_ERR_NOMEM; outputs untouched on error. */
moe_err moe_tokenizer_encode(int32_t **ids, size_t *n_ids, const moe_tokenizer *tok,
                             const char *text, size_t len, unsigned flags);

/* ---- decoding --------------------------------------------------------------- */

enum {
	MOE_TOK_DECODE_SPECIAL = 1u << 0, /* render CONTROL / UNKNOWN tokens as their text */
};

/* The bytes token id stands for, and its length in *len: the decoded bytes
 * of a NORMAL token, the raw text of an added token. NULL (and *len = 0) for
 * an id outside the vocabulary. The bytes belong to the tokenizer and are
 * not NUL-terminated. */
const char *moe_tokenizer_token_bytes(const moe_tokenizer *tok, int32_t id, size_t *len);

/* Concatenates the bytes of n ids (CONTROL tokens rendered only with
 * MOE_TOK_DECODE_SPECIAL, UNUSED tokens never). The result is the raw bytes
 * (it may be invalid UTF-8 when the ids split a character); *out is malloc'd,
 * NUL-terminated, *out_len excludes the NUL; the caller frees it. Errors:
 * MOE_ERR_BAD_VALUE (an id outside the vocabulary, named in the detail),
 * MOE_ERR_NOMEM. */
moe_err moe_tokenizer_decode(char **out, size_t *out_len, const moe_tokenizer *tok,
                             const int32_t *ids, size_t n, unsigned flags);

/* Streaming decoder for generation: each push returns the text that is
 * complete so far, always valid UTF-8. An incomplete UTF-8 sequence at the
 * end is held back until the next token completes it; ill-formed bytes become
 * U+FFFD. */
typedef struct moe_tok_stream moe_tok_stream;

/* Creates a stream over tok (which must outlive it); flags as for decode. */
moe_err moe_tok_stream_create(moe_tok_stream **out, const moe_tokenizer *tok, unsigned flags);

/* Feeds one id. On success *text points to *len bytes of new text (possibly
 * 0) owned by the stream and valid until the next call on it. Errors:
 * MOE_ERR_BAD_VALUE (id outside the vocabulary; the stream is unchanged),
 * MOE_ERR_NOMEM. */
moe_err moe_tok_stream_push(moe_tok_stream *s, int32_t id, const char **text, size_t *len);

/* Ends the stream: returns what is still held back (an incomplete sequence
 * becomes U+FFFD) and resets the stream for reuse. */
moe_err moe_tok_stream_finish(moe_tok_stream *s, const char **text, size_t *len);

/* Frees the stream; NULL is a no-op. */
void moe_tok_stream_destroy(moe_tok_stream *s);

/* ---- vocabulary facts ------------------------------------------------------- */

uint32_t moe_tokenizer_n_vocab(const moe_tokenizer *tok);
int32_t moe_tokenizer_bos(const moe_tokenizer *tok); /* -1: none */
int32_t moe_tokenizer_eos(const moe_tokenizer *tok); /* -1: none */
int32_t moe_tokenizer_pad(const moe_tokenizer *tok); /* -1: none */
bool moe_tokenizer_add_bos(const moe_tokenizer *tok);
/* The type of id, MOE_TOKEN_UNDEFINED for an id outside the vocabulary. */
moe_token_type moe_tokenizer_token_type(const moe_tokenizer *tok, int32_t id);
/* The id of the added (CONTROL / USER_DEFINED) token whose text is exactly
 * the len bytes at text, or -1. */
int32_t moe_tokenizer_find_special(const moe_tokenizer *tok, const char *text, size_t len);

/* ---- UTF-8 helper ----------------------------------------------------------- */

/* Copies len bytes of s into *out (malloc'd, NUL-terminated, caller frees)
 * replacing every maximal ill-formed subsequence by U+FFFD; *out_len
 * excludes the NUL. Errors: MOE_ERR_NOMEM. */
moe_err moe_utf8_sanitize(char **out, size_t *out_len, const char *s, size_t len);

#endif
