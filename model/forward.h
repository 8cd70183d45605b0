/*
 * forward.h - the single-process forward pass of qwen3moe / qwen3next /
 * qwen35moe models, and qwen35moe's MTP block for drafting (moe_fwd_mtp_draft).
 *
 * A moe_model is a validated view of the weights in a mapped GGUF file (no
 * copy).  A moe_fwd is one inference context on a model: a fixed number of
 * sequence slots, each with its own KV cache (full-attention layers; blocks
 * taken as the sequence grows, under a byte budget) and conv + recurrent
 * state (DeltaNet layers), scratch buffers sized for max_batch tokens, and a
 * thread pool.  moe_fwd_step runs one batch of tokens that may belong to
 * several sequences at different positions.  A sequence can be read out at a
 * position and written into another slot (snapshots, for prefix caching).
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

/* Whether m can draft with its MTP block: a qwen35moe file that has one. */
bool moe_model_has_mtp(const moe_model *m);

/* The stacked routed-expert tensors of layer il (pointers into the mapping),
 * as moe_expert_ffn_run takes them; NULL if il is not a trunk layer
 * (0 <= il < n_layer: MTP blocks are not served). */
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

/* Positions per KV block: a slot's KV cache grows by blocks of this many
 * positions (every full-attention layer's K and V rows of them). */
#define MOE_FWD_KV_BLOCK 256

typedef struct moe_fwd_opts {
	int n_slots;      /* sequences alive at once (default 1) */
	int n_ctx;        /* positions per sequence at most (default: the model's
	                   * context_length); nothing is reserved for them */
	int max_batch;    /* tokens per internal step; longer batches are chunked (default 256) */
	moe_type kv_type; /* MOE_TYPE_F16 (default), F32, Q8_0 or Q4_0 */
	size_t kv_budget_bytes; /* KV blocks of all slots together at most (0 = no limit) */
	int n_threads;          /* threads of the pool (default: one per CPU) */
	int gdn_chunk;          /* DeltaNet runs of >= this many tokens of one sequence use the
	                         * chunked form (default 0 = always the recurrent form, whose
	                         * logits do not depend on how a sequence is cut into steps) */
	bool mtp;        /* keep what moe_fwd_mtp_draft needs (default false): every step also runs
	                  * the MTP block on its rows, whose KV is one more attention layer of the
	                  * cache, and a slot's state includes its last trunk hidden row; a model
	                  * without moe_model_has_mtp is refused (MOE_ERR_UNSUPPORTED) */
	int keep_states; /* per slot, the states a step passes through at most (default 0),
	                  * for moe_fwd_seq_rewind: 0 where n_slots x keep_states x
	                  * moe_fwd_state_size would pass MOE_FWD_KEEP_MAX_BYTES
	                  * (moe_fwd_keep_states says what was kept) */
	const moe_expert_backend *experts; /* NULL: local experts (copied by value) */
	/* A second backend on the same experts whose call may be in flight while one
	 * of experts' is (the cluster's moe_cluster_overlap_backend), or NULL (the
	 * default): copied by value.  With one, a chunk of overlap_min_tok to
	 * MOE_FWD_OVERLAP_MAX_TOK tokens that can be cut between sequences runs as
	 * two micro-batches, A on experts and B on overlap, each layer's routed
	 * experts of one in flight while the other's dense part (attention or
	 * DeltaNet, router, shared expert) computes.  The logits are the same bits. */
	const moe_expert_backend *overlap;
	int overlap_min_tok; /* smaller chunks run in one pass (default 16, at least 2): each
	                      * micro-batch costs a message per worker and a pass over the
	                      * dense weights, which few tokens do not repay */
} moe_fwd_opts;

/* The most bytes of rewind checkpoints (moe_fwd_opts.keep_states) a context
 * takes: beyond it it keeps none, and callers run refused drafts' taken tokens
 * again instead. */
#define MOE_FWD_KEEP_MAX_BYTES ((size_t)64 << 20)

/* Chunks of more tokens than this are never cut into micro-batches: a
 * micro-batch's dispatch must fit the socket buffers while the other's result
 * waits unread (prefill is compute-bound anyway). */
#define MOE_FWD_OVERLAP_MAX_TOK 64

/* Fills the defaults above (n_ctx = 0, n_threads = 0 mean "choose"). */
void moe_fwd_opts_default(moe_fwd_opts *o);

/* The KV type called name ("f32", "f16", "q8_0", "q4_0") into *out;
 * MOE_ERR_INVAL (naming it) for any other name. */
moe_err moe_fwd_kv_type_parse(moe_type *out, const char *name);

/* The name above of a KV type, or "?" for a type that is not one. */
const char *moe_fwd_kv_type_name(moe_type t);

typedef struct moe_fwd moe_fwd;

/* Creates a context: the DeltaNet states of n_slots sequences and scratch
 * for max_batch tokens are allocated here; the KV cache grows by blocks of
 * MOE_FWD_KV_BLOCK positions as sequences do.  m must outlive it.  Errors:
 * MOE_ERR_INVAL (option out of range, or a Q8_0/Q4_0 KV type with a head
 * dimension that is not a multiple of 32), MOE_ERR_NOMEM, errors of
 * moe_pool_create. */
moe_err moe_fwd_create(moe_fwd **out, const moe_model *m, const moe_fwd_opts *o);

void moe_fwd_destroy(moe_fwd *f); /* NULL is a no-op */

/* Takes a free slot, with empty KV cache and zero states, into *slot.
 * MOE_ERR_BUSY if all slots are in use. */
moe_err moe_fwd_seq_open(moe_fwd *f, int *slot);

/* Releases slot and its KV blocks (it can be opened again); MOE_ERR_INVAL if
 * not open. */
moe_err moe_fwd_seq_close(moe_fwd *f, int slot);

/* Empties slot's KV cache (releasing its blocks) and states, keeping it open. */
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
 * index), MOE_ERR_BAD_VALUE (n_ctx exceeded), MOE_ERR_NOMEM (a KV block past
 * kv_budget_bytes, or memory; the detail names the numbers), all found before
 * anything runs, so the sequences are unchanged; backend errors, after which
 * the sequences of the batch are in an unspecified state: reset them. */
moe_err moe_fwd_step(moe_fwd *f, float *logits, const moe_batch *b);

/* ---- sequence snapshots (prefix caching) ------------------------------------------
 * A sequence at position P is its KV [0, P) and its DeltaNet state at P.  Read
 * both out of one slot, write them into another (of a context on the same
 * model with the same KV type), set its length to P, and the tokens from P on
 * give the logits they would have given in the first slot, bit for bit. */

/* Bytes of one sequence's DeltaNet state (conv + recurrent, all DeltaNet
 * layers) and, with o.mtp, its last trunk hidden row; 0 for qwen3moe. */
size_t moe_fwd_state_size(const moe_fwd *f);

/* Copies slot's DeltaNet state, as it stands at the slot's current position,
 * to out[0..moe_fwd_state_size): per DeltaNet layer in layer order the conv
 * state f32 [conv_kernel-1][conv_dim] (oldest position first), then the
 * recurrent state f32 [n_v_heads][head_k][head_v]; then, with o.mtp, the f32
 * [n_embd] post-norm trunk hidden row of the slot's last position (the MTP
 * block's input for the next).  MOE_ERR_INVAL if slot is not open. */
moe_err moe_fwd_seq_state_read(const moe_fwd *f, int slot, void *out);

/* Replaces slot's DeltaNet state by in (the layout above); its length and KV
 * are unchanged.  MOE_ERR_INVAL if slot is not open. */
moe_err moe_fwd_seq_state_write(moe_fwd *f, int slot, const void *in);

/* Bytes of one position's K and V over all full-attention layers (with
 * o.mtp, the MTP block's last) in the context's KV type: the unit of
 * moe_fwd_seq_kv_read / _write. */
size_t moe_fwd_kv_pos_bytes(const moe_fwd *f);

/* Copies the K and V of positions [p0, p1) of slot to
 * out[0 .. (p1-p0) * moe_fwd_kv_pos_bytes), position-major: per position, per
 * full-attention layer in layer order, its K row then its V row, each
 * n_head_kv * head_dim values encoded as GGUF stores the KV type (f32, f16,
 * or Q8_0 / Q4_0 blocks of 32), so [p0, p1) then [p1, p2) concatenate to
 * [p0, p2).  The slot holds positions [0, n): n is its length, or more after
 * moe_fwd_seq_kv_write.  MOE_ERR_INVAL if slot is not open or not
 * 0 <= p0 <= p1 <= n. */
moe_err moe_fwd_seq_kv_read(const moe_fwd *f, int slot, int64_t p0, int64_t p1, void *out);

/* Writes positions [p0, p1) of slot's KV from in (the layout above), taking
 * KV blocks as needed; the slot then holds positions up to at least p1.  Its
 * length is unchanged (moe_fwd_seq_set_len).  Errors: MOE_ERR_INVAL (slot not
 * open, or not 0 <= p0 <= p1 <= n_ctx, or p0 past the positions held: no
 * gaps), MOE_ERR_NOMEM (a block past kv_budget_bytes, or memory; nothing
 * written). */
moe_err moe_fwd_seq_kv_write(moe_fwd *f, int slot, int64_t p0, int64_t p1, const void *in);

/* Makes slot continue at position n: its next token has position n and
 * attends to KV [0, n); the KV blocks past n are released.  The caller has
 * written (or computed) KV [0, n) and the state at n.  MOE_ERR_INVAL if slot
 * is not open or n is not within [0, positions held]. */
moe_err moe_fwd_seq_set_len(moe_fwd *f, int slot, int64_t n);

/* ---- rewinding after refused drafts (o.keep_states) --------------------------------
 * A step that runs tokens [start, end) of a slot keeps, for lengths m with
 * start < m < end, m >= end - keep_states, and the row at position m and every
 * row after it wanting logits (the drafts), the slot's state at length m (its
 * DeltaNet state after the token at m - 1, and with o.mtp its last trunk
 * hidden row).  Going back to one of them costs a copy instead of running the
 * taken tokens again, and gives the same bits. */

/* The keep_states the context has (0 if it keeps none: see moe_fwd_opts). */
int moe_fwd_keep_states(const moe_fwd *f);

/* Makes slot continue at position n < its length, the state being the one
 * its last step kept at length n (above), the KV cut as moe_fwd_seq_set_len
 * does; n equal to the length changes nothing.  The checkpoints go with any
 * step, reset, state write or length change of the slot (this one included).
 * MOE_ERR_INVAL if slot is not open or no checkpoint of length n is held. */
moe_err moe_fwd_seq_rewind(moe_fwd *f, int slot, int64_t n);

/* ---- MTP drafting (o.mtp) ---------------------------------------------------------
 * The MTP block at position p takes the token at p and the post-norm trunk
 * hidden row of p - 1 (zeros at 0) and gives logits for p + 1, and its own
 * post-norm output row, which stands in for the trunk's at p in the next
 * pass of a chain (as llama.cpp drafts).  Every step runs it on its rows so
 * that its KV follows the trunk's (cut, snapshotted and freed with it). */

/* Drafts greedily for n_seq distinct open slots at once: for sequence j, whose
 * next token tokens[j] is not yet run (it goes at position len = the slot's
 * length), up to max[j] tokens (fewer where n_ctx ends; at most stride) into
 * draft[j*stride ..], their number into n_draft[j].  The pass for draft i runs
 * the MTP block at position len + i, writing its KV rows there (the next step
 * writes them again); the slot's length, trunk KV and state are unchanged.
 * logits1, if not NULL, gets each sequence's first pass's logits
 * [n_seq][n_vocab] (max[j] >= 1).  Errors: MOE_ERR_UNSUPPORTED (context
 * without o.mtp), MOE_ERR_INVAL (slot not open or repeated, token id, max,
 * n_seq > max_batch), MOE_ERR_NOMEM (KV blocks past the budget; nothing
 * changed); no draft is valid after an error. */
moe_err moe_fwd_mtp_draft(moe_fwd *f, int32_t *draft, int *n_draft, float *logits1, int n_seq,
                          const int32_t *slots, const int32_t *tokens, const int *max, int stride);

/* ---- memory ------------------------------------------------------------------------ */

/* Bytes of the KV blocks that the slots hold now, and the most they may hold
 * (kv_budget_bytes rounded down to whole blocks; SIZE_MAX without a budget). */
size_t moe_fwd_kv_bytes(const moe_fwd *f);
size_t moe_fwd_kv_capacity(const moe_fwd *f);

/* Bytes of the DeltaNet conv + recurrent states of all slots (allocated at
 * creation). */
size_t moe_fwd_state_bytes(const moe_fwd *f);

/* The pool the context runs on (for callers that want to share it). */
moe_pool *moe_fwd_pool(const moe_fwd *f);

/* The expert backend the context calls: the one given in its options, or its
 * own local one (valid as long as f). A caller that wraps it (to count, say)
 * reads it here and installs the wrapper with moe_fwd_set_experts. */
moe_expert_backend moe_fwd_experts(const moe_fwd *f);

/* Replaces the expert backend (copied by value) for the following steps. */
void moe_fwd_set_experts(moe_fwd *f, const moe_expert_backend *b);

/* Replaces the second backend of moe_fwd_opts.overlap (copied by value; NULL:
 * no micro-batches) for the following steps. */
void moe_fwd_set_overlap(moe_fwd *f, const moe_expert_backend *b);

/* Whether the context has a second backend (steps may run as micro-batches). */
bool moe_fwd_has_overlap(const moe_fwd *f);

#endif
