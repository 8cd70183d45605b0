/*
 * devtools.h - the public header of devtools/, the developer tools the CLI
 * links (make-model): synthetic random-weight models in GGUF, with exactly llama.cpp's
 * metadata keys, tensor names, shapes, storage conventions and F32-kept
 * tensors for qwen3moe, qwen3next and qwen35moe (see tests/fixtures/README.md), so
 * llama.cpp and moemesh load the same file.  Generation is streamed: no
 * buffer bigger than a chunk of rows is held, whatever the model size.
 */
#ifndef MOE_DEVTOOLS_H
#define MOE_DEVTOOLS_H

#include <stdint.h>

#include "core/core.h"
#include "kernels/kernels.h"

/* Output weight types; the numbers are GGUF's general.file_type. */
typedef enum moe_ftype {
	MOE_FTYPE_F32 = 0,
	MOE_FTYPE_F16 = 1,
	MOE_FTYPE_Q4_0 = 2,
	MOE_FTYPE_Q8_0 = 7,
	MOE_FTYPE_Q4_K_M = 15,
	MOE_FTYPE_BF16 = 32,
} moe_ftype;

/* Parses "F32", "Q4_K_M", ... (case-insensitive); MOE_ERR_INVAL if unknown. */
moe_err moe_ftype_parse(moe_ftype *out, const char *name);
const char *moe_ftype_name(moe_ftype t);

/* A vocabulary to write as tokenizer.ggml.* metadata (borrowed). */
typedef struct moe_synth_vocab {
	const char *const *tokens; /* [n_tokens], GPT-2 byte-to-unicode form */
	const int32_t *types;      /* [n_tokens], llama token types (1 normal, 3 control, ...) */
	int64_t n_tokens;
	const char *const *merges; /* [n_merges], "a b" */
	int64_t n_merges;
	int32_t bos, eos, pad; /* ids, or -1 to leave out */
} moe_synth_vocab;

typedef struct moe_synth_opts {
	const char *arch; /* "qwen3moe", "qwen3next" or "qwen35moe" */
	/* "tiny", "qwen3next-80b-4L" (qwen3next), "qwen3-30b-a3b-4L" (qwen3moe),
	 * "qwen35-397b-4L" (qwen35moe) */
	const char *preset;
	int n_layer; /* trunk layers, 0: the preset's (MTP blocks come after them) */
	/* MTP blocks after the trunk: 0 the preset's (qwen35moe presets have 1,
	 * the others none), 1..4 that many (qwen3next, qwen35moe). */
	int mtp;
	moe_ftype ftype;
	uint64_t seed;
	/* NULL: a small byte-level BPE vocabulary learned from a built-in text,
	 * padded to the preset's vocabulary size. */
	const moe_synth_vocab *vocab;
	/* Called now and then with bytes of tensor data written so far and the
	 * total; may be NULL. */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
	/* Threads quantising rows (0 = one per CPU). The output does not depend
	 * on it. */
	int n_threads;
	/* Non-NULL: the weights are not random but read from this folder, one
	 * file per tensor named as the tensor ("blk.0.attn_qkv.weight"), raw
	 * little-endian F32 in ggml order, exactly the tensor's size; every value
	 * must be finite (a trained model: devtools/train/). */
	const char *weights_dir;
	/* Non-NULL: the tokenizer.* metadata is copied from this GGUF file (its
	 * token count must equal the preset's vocabulary rows) instead of vocab. */
	const char *tokenizer_gguf;
} moe_synth_opts;

/* One tensor of the model a set of options describes. */
typedef struct moe_synth_tensor {
	char name[96];
	moe_type type;
	uint32_t n_dims;
	int64_t ne[4]; /* ggml order */
	uint64_t bytes;
} moe_synth_tensor;

/* The tensors moe_synth_write would write, in file order, without writing
 * anything: *out is a malloc'd array of *n entries (caller frees). Same
 * errors as moe_synth_write for bad options. */
moe_err moe_synth_plan(moe_synth_tensor **out, size_t *n, const moe_synth_opts *opts);

/* Writes the model to path. Returns MOE_ERR_INVAL (unknown arch/preset, or a
 * preset of the other arch), MOE_ERR_IO, MOE_ERR_NOMEM, or an error of the
 * GGUF writer or the quantizers; a partial file is removed. */
moe_err moe_synth_write(const char *path, const moe_synth_opts *opts);

#endif
