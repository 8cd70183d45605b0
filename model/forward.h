/*
 * forward.h - the single-process forward pass of qwen3moe / qwen3next models.
 *
 * A moe_model is a validated view of the weights in a mapped GGUF file (no
 * copy).  A moe_fwd is one inference context on a model: a fixed number of
 * sequence slots, each with its own KV cache (full-attention layers) and
 * conv + recurrent state (DeltaNet layers), scratch buffers sized for
 * max_batch tokens, and a thread pool.  moe_fwd_step runs one batch of tokens
 * that may belong to several sequences at different positions.
 *
 * The routed experts of every layer go through a moe_expert_backend: the
 * default one runs them locally on the mapped stacked tensors; the cluster
 * replaces it by network dispatch.  Their routing-weighted outputs are summed
 * as moe_fix_t (exact, order-independent), so any placement of the experts
 * gives bit-identical logits.
 */
#ifndef MOE_FORWARD_H
#define MOE_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "model/gguf.h"
#include "model/hparams.h"

typedef struct moe_model moe_model;

/* Reads the hyper-parameters of g and checks every tensor the architecture
 * needs: present, type computable by kernels/, shape consistent with the
 * hyper-parameters (the detail names the tensor, the expected and the actual
 * shape).  g must stay open while the model is used; nothing is copied.
 * Errors: those of moe_hparams_load, MOE_ERR_NOT_FOUND (tensor missing),
 * MOE_ERR_BAD_SHAPE, MOE_ERR_UNSUPPORTED (tensor type), MOE_ERR_NOMEM. */
moe_err moe_model_load(moe_model **out, const moe_gguf *g);

/* Opens path with moe_gguf_open and loads it; the model then owns the file. */
moe_err moe_model_open(moe_model **out, const char *path);

void moe_model_destroy(moe_model *m); /* NULL is a no-op */

const moe_hparams *moe_model_hparams(const moe_model *m);
const moe_gguf *moe_model_gguf(const moe_model *m);

/* The stacked routed-expert tensors of layer il (pointers into the mapping),
 * as moe_expert_ffn_run takes them; NULL if il is out of range. */
const moe_expert_ffn *moe_model_experts(const moe_model *m, int il);

/* ---- expert backend ----------------------------------------------------------- */

/* Computes the routed experts of one layer.  For one layer the forward pass
 * calls start, then runs the shared expert locally, then finish; buffers
 * passed to start stay valid and unchanged until finish returns.
 *   x:       f32 [n_tok][n_embd], the normalised FFN input rows
 *   ids:     [n_tok][n_used] expert ids, < n_expert
 *   weights: [n_tok][n_used] routing weights (renormalised, sum 1 per token)
 * finish adds, for every token t and slot j,
 *   moe_fix_from_f32(weights[t][j] * expert_{ids[t][j]}(x[t]))
 * element-wise into acc[t][0..n_embd) (acc is zeroed by the caller) and
 * returns MOE_OK or the error that stopped it (the step then fails). */
typedef struct moe_expert_backend {
	void *ctx;
	moe_err (*start)(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
	                 const float *weights, int n_used);
	moe_err (*finish)(void *ctx, moe_fix_t *acc);
} moe_expert_backend;

/* ---- inference context ---------------------------------------------------------- */

typedef struct moe_fwd_opts {
	int n_slots;      /* sequences alive at once (default 1) */
	int n_ctx;        /* positions per sequence (default: min(context_length, 4096)) */
	int max_batch;    /* tokens per internal step; longer batches are chunked (default 256) */
	moe_type kv_type; /* MOE_TYPE_F16 (default) or MOE_TYPE_F32 */
	int n_threads;    /* threads of the pool (default: one per CPU) */
	int gdn_chunk;    /* DeltaNet runs of >= this many tokens of one sequence use the
	                   * chunked form (default 0 = always the recurrent form, whose
	                   * logits do not depend on how a sequence is cut into steps) */
	const moe_expert_backend *experts; /* NULL: local experts (copied by value) */
} moe_fwd_opts;

/* Fills the defaults above (n_ctx = 0, n_threads = 0 mean "choose"). */
void moe_fwd_opts_default(moe_fwd_opts *o);

typedef struct moe_fwd moe_fwd;

/* Creates a context with every buffer allocated up front (KV cache for
 * n_slots * n_ctx positions, states, scratch for max_batch tokens).  m must
 * outlive it.  Errors: MOE_ERR_INVAL (option out of range), MOE_ERR_NOMEM,
 * errors of moe_pool_create. */
moe_err moe_fwd_create(moe_fwd **out, const moe_model *m, const moe_fwd_opts *o);

void moe_fwd_destroy(moe_fwd *f); /* NULL is a no-op */

/* Takes a free slot, with empty KV cache and zero states, into *slot.
 * MOE_ERR_BUSY if all slots are in use. */
moe_err moe_fwd_seq_open(moe_fwd *f, int *slot);

/* Releases slot (it can be opened again); MOE_ERR_INVAL if not open. */
moe_err moe_fwd_seq_close(moe_fwd *f, int slot);

/* Empties slot's KV cache and states, keeping it open. */
moe_err moe_fwd_seq_reset(moe_fwd *f, int slot);

/* Positions already in slot (the position of its next token), or -1. */
int64_t moe_fwd_seq_len(const moe_fwd *f, int slot);

/* A batch of tokens.  Tokens of one sequence must come in position order and
 * continue it: the first has pos = moe_fwd_seq_len(slot), the next pos + 1... */
typedef struct moe_batch {
	int64_t n_tok;
	const int32_t *tokens; /* [n_tok] */
	const int32_t *slot;   /* [n_tok] open slots */
	const int32_t *pos;    /* [n_tok] */
	const bool *logits;    /* [n_tok] rows wanted; NULL = every row */
} moe_batch;

/* Runs the batch (in chunks of max_batch tokens) and writes the logits of the
 * wanted rows, in batch order, to logits [n_wanted][n_vocab] (NULL allowed if
 * none is wanted).  A sequence's logits are bit-identical however it is cut
 * into steps and whatever shares them, while gdn_chunk is 0.  Errors:
 * MOE_ERR_INVAL (token id, slot or position wrong; the detail names the
 * index), MOE_ERR_BAD_VALUE (n_ctx exceeded), backend errors.  On error the
 * sequences of the batch are in an unspecified state: reset them. */
moe_err moe_fwd_step(moe_fwd *f, float *logits, const moe_batch *b);

/* Bytes allocated for the KV cache and for the DeltaNet conv + recurrent
 * states (all slots). */
size_t moe_fwd_kv_bytes(const moe_fwd *f);
size_t moe_fwd_state_bytes(const moe_fwd *f);

/* The pool the context runs on (for callers that want to share it). */
moe_pool *moe_fwd_pool(const moe_fwd *f);

/* The expert backend the context calls: the one given in its options, or its
 * own local one (valid as long as f). A caller that wraps it (to count, say)
 * reads it here and installs the wrapper with moe_fwd_set_experts. */
moe_expert_backend moe_fwd_experts(const moe_fwd *f);

/* Replaces the expert backend (copied by value) for the following steps. */
void moe_fwd_set_experts(moe_fwd *f, const moe_expert_backend *b);

#endif
