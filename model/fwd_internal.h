/*
 * fwd_internal.h - structures shared by forward.c, kvcache.c, attention.c
 * and deltanet.c.  Not part of the public API (see forward.h).
 */
#ifndef MOE_FWD_INTERNAL_H
#define MOE_FWD_INTERNAL_H

#include "model/forward.h"

/* A matrix weight inside the mapping: n_rows rows of n_cols values of type. */
typedef struct moe_wmat {
	const void *data;
	moe_type type;
	int64_t n_cols; /* input length */
	int64_t n_rows; /* output length */
} moe_wmat;

/* The extra weights of an MTP (nextn) block (qwen35moe), which otherwise is a
 * gated-attention block with MoE: h' = eh_proj [rmsnorm(embd, enorm);
 * rmsnorm(h, hnorm)].  Loaded and checked, not run by the main pass. */
typedef struct moe_nextn_w {
	moe_wmat eh_proj;              /* [2*n_embd] -> [n_embd] */
	const float *enorm;            /* [n_embd] */
	const float *hnorm;            /* [n_embd] */
	const float *shared_head_norm; /* [n_embd], NULL: output_norm */
	moe_wmat embed_tokens;         /* [n_embd] x n_vocab; data NULL: token_embd */
	moe_wmat shared_head_head;     /* [n_embd] -> [n_vocab]; data NULL: output */
} moe_nextn_w;

typedef struct moe_layer_w {
	int idx_kv;  /* index among the full-attention layers, or -1 */
	int idx_rec; /* index among the DeltaNet layers, or -1 */

	const float *attn_norm; /* [n_embd] */
	const float *ffn_norm;  /* [n_embd] ffn_norm (qwen3moe) / post_attention_norm (hybrid) */

	/* full attention */
	moe_wmat wq; /* [n_embd] -> [n_head*head_dim] (x2 for hybrid archs: per head q then gate) */
	moe_wmat wk; /* [n_embd] -> [n_head_kv*head_dim] */
	moe_wmat wv; /* [n_embd] -> [n_head_kv*head_dim] */
	moe_wmat wo; /* [n_head*head_dim] -> [n_embd] */
	const float *q_norm; /* [head_dim] */
	const float *k_norm; /* [head_dim] */

	/* Gated DeltaNet */
	moe_wmat wqkv;         /* [n_embd] -> [conv_dim]: q heads, k heads, v heads */
	moe_wmat wz;           /* attn_gate: [n_embd] -> [n_v_heads*head_v] */
	moe_wmat wba;          /* ssm_ba (qwen3next): [n_embd] -> [n_k_heads][b for r heads,
	                        * a for r heads] */
	moe_wmat wbeta;        /* ssm_beta (qwen35moe): [n_embd] -> [n_v_heads] */
	moe_wmat walpha;       /* ssm_alpha (qwen35moe): [n_embd] -> [n_v_heads] */
	moe_wmat ssm_out;      /* [n_v_heads*head_v] -> [n_embd] */
	const float *conv1d;   /* [conv_dim][conv_kernel] */
	const float *dt_bias;  /* [n_v_heads] */
	const float *ssm_a;    /* [n_v_heads], = -exp(A_log) */
	const float *ssm_norm; /* [head_v] */

	/* MoE */
	moe_wmat router;          /* ffn_gate_inp: [n_embd] -> [n_expert] */
	moe_expert_ffn exps;      /* stacked gate/up/down, pointers into the mapping */
	const float *sh_gate_inp; /* ffn_gate_inp_shexp: [n_embd] (NULL: no shared expert) */
	moe_wmat sh_gate;         /* [n_embd] -> [n_ff_shexp] */
	moe_wmat sh_up;           /* [n_embd] -> [n_ff_shexp] */
	moe_wmat sh_down;         /* [n_ff_shexp] -> [n_embd] */

	moe_nextn_w nextn; /* MTP blocks only */
} moe_layer_w;

struct moe_model {
	moe_hparams hp;
	const moe_gguf *g;
	moe_gguf *owned;       /* set by moe_model_open */
	moe_wmat tok_embd;     /* [n_embd] x n_vocab rows */
	const float *out_norm; /* [n_embd] */
	moe_wmat output;       /* [n_embd] -> [n_vocab] */
	moe_layer_w *layers;   /* [n_layer_all]: the trunk, then the MTP blocks */
	bool has_nextn;        /* the MTP blocks' tensors are in the file (layers[n_layer..]) */
	const void **exp_ptrs; /* [n_layer_all][3][n_expert], backing of layers[].exps */
};

/* ---- the KV cache (kvcache.c) ---------------------------------------------------------
 * Per sequence a table of blocks; block b holds positions [b*B, (b+1)*B),
 * B = MOE_FWD_KV_BLOCK, laid out [layer][K, V][position in block][row], a row
 * being one position's n_head_kv*head_dim values of one layer in the KV type.
 * A sequence holds blocks for positions [0, n_blk*B), written ones [0, held). */

typedef struct moe_kv_seq {
	char **blk;    /* [cap] */
	int64_t n_blk; /* blocks held */
	int64_t cap;
	int64_t held; /* positions whose K and V are written */
} moe_kv_seq;

/* The attention (attention.c) takes up to scores_qt consecutive tokens of
 * one sequence at a time (MOE_ATTN_QTILE, fewer where their scores would
 * pass MOE_ATTN_SCORES_MAX bytes per thread), converts MOE_ATTN_VTILE K or V
 * rows at a time and meets the queries with MOE_ATTN_KSUB of them at a time
 * (16 KiB of f32 at head_dim 256: they stay in L1 while every query of the
 * tile passes). */
#define MOE_ATTN_QTILE      16
#define MOE_ATTN_SCORES_MAX ((size_t)64 << 20)
#define MOE_ATTN_VTILE      64
#define MOE_ATTN_KSUB       16

typedef struct moe_kvcache {
	moe_type type;   /* F32, F16, Q8_0 or Q4_0 */
	int n_layers;    /* full-attention layers */
	int n_seq;       /* slots */
	int64_t n_ctx;   /* positions per sequence at most */
	int64_t row_len; /* values per row */
	size_t row;      /* bytes per row */
	size_t blk_bytes;
	size_t budget; /* 0: none */
	size_t in_use; /* bytes of the blocks held by all sequences */
	moe_kv_seq *seq;
} moe_kvcache;

/* An empty cache.  Errors: MOE_ERR_INVAL (type, or row_len not a multiple of
 * its block), MOE_ERR_NOMEM. */
moe_err moe_kv_init(moe_kvcache *kv, moe_type type, int n_layers, int64_t row_len, int n_seq,
                    int64_t n_ctx, size_t budget);
void moe_kv_free(moe_kvcache *kv); /* releases every block and table */

/* Blocks for positions [0, n) of sequence s.  MOE_ERR_NOMEM, naming the
 * numbers, if a block would pass the budget or cannot be allocated; the
 * blocks taken before stay (moe_kv_trim gives them back). */
moe_err moe_kv_reserve(moe_kvcache *kv, int s, int64_t n);

/* Releases the blocks of sequence s past position n (all of them for 0);
 * held becomes min(held, n). */
void moe_kv_trim(moe_kvcache *kv, int s, int64_t n);

/* The K (which 0) or V (1) row of layer at position pos of sequence s, in a
 * block it holds. */
static inline void *moe_kv_row(const moe_kvcache *kv, int s, int layer, int which, int64_t pos)
{
	char *b = kv->seq[s].blk[pos / MOE_FWD_KV_BLOCK];
	const size_t r = ((size_t)layer * 2 + (size_t)which) * MOE_FWD_KV_BLOCK +
	                 (size_t)(pos % MOE_FWD_KV_BLOCK);
	return b + r * kv->row;
}

/* Encodes row_len floats as one row of the KV type at dst.  Errors of
 * moe_quantize_row (NaN or Inf in a quantized row). */
moe_err moe_kv_store(const moe_kvcache *kv, void *dst, const float *src);

/* Positions [p0, p1) of sequence s to / from the position-major form of
 * moe_fwd_seq_kv_read; the range is checked by the caller.  moe_kv_write
 * takes the blocks it needs first (errors of moe_kv_reserve) and raises held
 * to p1. */
void moe_kv_read(const moe_kvcache *kv, int s, int64_t p0, int64_t p1, void *out);
moe_err moe_kv_write(moe_kvcache *kv, int s, int64_t p0, int64_t p1, const void *in);

/* The local expert backend's pending call. */
typedef struct moe_local_experts {
	const moe_model *m;
	moe_pool *pool;
	int il;
	int64_t n_tok;
	const float *x;
	const int32_t *ids;
	const float *w;
	int n_used;
} moe_local_experts;

struct moe_fwd {
	const moe_model *m;
	moe_fwd_opts o;
	moe_pool *pool;
	int nth;
	moe_expert_backend backend;
	moe_local_experts local;
	moe_expert_backend local_backend; /* on local: the MTP block's experts */
	moe_expert_backend overlap;       /* micro-batch B's (has_overlap) */
	bool has_overlap;

	/* slots */
	bool *open;    /* [n_slots] */
	int64_t *len;  /* [n_slots] positions held */
	int64_t *next; /* [n_slots] scratch for batch validation */

	moe_kvcache kv;

	/* DeltaNet state */
	float *conv_state; /* [n_rec][n_slots][conv_kernel-1][conv_dim] */
	float *ssm_state;  /* [n_rec][n_slots][n_v_heads][head_k][head_v] */
	size_t state_bytes;

	/* scratch, B = max_batch rows */
	float *x;    /* [B][n_embd] residual stream */
	float *xn;   /* [B][n_embd] normalised input of a block */
	float *y;    /* [B][n_embd] block output */
	float *rope; /* [B][n_rot] cos/sin pairs */
	float *q;    /* [B][q_rows]: wq output (q and gate for qwen3next) */
	float *k;    /* [B][n_head_kv*head_dim] */
	float *v;    /* [B][n_head_kv*head_dim] */
	float *att;  /* [B][max(n_head*head_dim, n_v_heads*head_v)] attention / DeltaNet output */
	/* [nth][scores_n]: [scores_qt][n_head/n_head_kv][scores_cap] scores, then
	 * [MOE_ATTN_VTILE][head_dim] rows; grown (by whole KV blocks) to the
	 * longest sequence a step has seen */
	float *scores;
	size_t scores_n;
	int64_t scores_cap;
	int scores_qt;
	float *qkv;     /* [B][conv_dim] DeltaNet projections, then conv output */
	float *z;       /* [B][n_v_heads*head_v] */
	float *ba;      /* [B][2*n_v_heads] */
	float *beta;    /* [B][n_v_heads] */
	float *gdec;    /* [B][n_v_heads] log decay g */
	float *gdn_tmp; /* [nth][gdn scratch floats] */
	size_t gdn_tmp_n;
	float *conv_tmp;   /* [conv_dim] */
	int32_t *order;    /* [B] token indices grouped by slot */
	int32_t *runs;     /* [B+1] run starts in order[] (a run = one slot's tokens) */
	int32_t *run_slot; /* [B] slot of each run */
	int32_t *run_of;   /* [n_slots] scratch: run of a slot, or -1 */
	int n_runs;
	float *router;  /* [B][n_expert] */
	int32_t *ids;   /* [B][n_expert_used] */
	float *wts;     /* [B][n_expert_used] */
	moe_fix_t *acc; /* [B][n_embd] */
	float *sh_g;    /* [B][n_ff_shexp] */
	float *sh_u;    /* [B][n_ff_shexp] */

	/* the current chunk */
	int64_t n;
	const int32_t *slot;
	const int32_t *pos;

	/* rewind checkpoints (o.keep_states): slot s's state at length m, m in
	 * [ck_lo[s], ck_hi[s]), at ck + (s * keep_states + m - ck_lo[s]) * ck_floats,
	 * laid out as moe_fwd_seq_state_read's; the window is set by each step */
	float *ck;
	size_t ck_floats;
	int64_t *ck_lo;
	int64_t *ck_hi;
	float **ck_row; /* [B] per row of a DeltaNet layer: its checkpoint's place, or NULL */

	/* MTP drafting (o.mtp; mtp.c): the MTP block's KV is one more layer of kv
	 * (index n_attn), and a slot's state includes its last trunk hidden row */
	float *mtp_h;      /* [n_slots][n_embd] post-norm trunk hidden of the last position */
	float *mtp_hn;     /* [B][n_embd] post-norm trunk hidden of the chunk's rows */
	float *mtp_hin;    /* [B][n_embd] the MTP block's hidden input per row */
	float *mtp_cat;    /* [B][2*n_embd] [enorm(embedding); hnorm(h)] */
	float *mtp_g;      /* [B][n_embd] the MTP block's post-norm output (the next h) */
	float *mtp_logits; /* [n_slots][n_vocab] */
	int32_t *mtp_tok;  /* [B] */
	int32_t *mtp_slot; /* [B] */
	int32_t *mtp_pos;  /* [B] */
	int32_t *mtp_row;  /* [n_slots] a drafting sequence's row in the last pass */
	/* [n_slots] the position (or -1) and token of the last draft's first pass,
	 * which is the next step's catch-up row there: that row is not run again */
	int64_t *mtp_pre;
	int32_t *mtp_pre_tok;
};

/* Where slot s's checkpoint of length m goes, or NULL if the step keeps none. */
static inline float *moe_fwd_ck(const moe_fwd *f, int s, int64_t m)
{
	if (m < f->ck_lo[s] || m >= f->ck_hi[s])
		return NULL;
	return f->ck +
	       ((size_t)s * (size_t)f->o.keep_states + (size_t)(m - f->ck_lo[s])) * f->ck_floats;
}

/* One block (attention or DeltaNet, then MoE) of layer il on the chunk's
 * residual stream f->x, in place. */
moe_err moe_fwd_layer(moe_fwd *f, int il);

/* Groups the chunk's tokens by slot (f->order, f->runs, f->run_slot). */
void moe_fwd_group_runs(moe_fwd *f);

/* Row t's rotary cos/sin (f->rope) at position pos, as the model's arch
 * ropes (qwen35moe: by sections). */
void moe_fwd_rope_row(moe_fwd *f, int64_t t, int64_t pos);

/* Scores scratch and KV blocks for a step whose sequences end at f->next[];
 * nothing changed on an error. */
moe_err moe_fwd_take_memory(moe_fwd *f);

/* After the trunk of a chunk (f->x its output): the post-norm hidden rows into
 * f->mtp_hn, and the MTP block run on every row (its KV written), each row
 * paired with the hidden row of the position before (f->mtp_h for a slot's
 * first); f->mtp_h then holds each slot's last row.  Clobbers f->x. */
moe_err moe_mtp_catch_up(moe_fwd *f, const int32_t *tokens);

/* y[t] = W x[t] for t < n_tok (moe_matmul on the context's pool). */
moe_err moe_fwd_matmul(moe_fwd *f, float *y, const moe_wmat *w, const float *x, int64_t n_tok);

/* Full attention of layer il on f->xn rows [f->n] into f->y. */
moe_err moe_fwd_attention(moe_fwd *f, int il);

/* Gated DeltaNet of layer il on f->xn rows [f->n] into f->y. */
moe_err moe_fwd_deltanet(moe_fwd *f, int il);

/* Inputs and output of a Gated-DeltaNet core on one value head over one
 * sequence's run of tokens: token i of the run is row rows[i]; its q (scaled
 * by 1/sqrt(head_k)) and k (L2-normalised) are head_k floats at
 * q/k + rows[i]*qk_stride, v and o head_v floats at v + rows[i]*v_stride and
 * o + rows[i]*o_stride, beta and g (log decay) at beta/g + rows[i]*bg_stride. */
typedef struct moe_gdn_io {
	const int32_t *rows;
	int64_t n_tok;
	const float *q;
	const float *k;
	int64_t qk_stride;
	const float *v;
	int64_t v_stride;
	const float *beta;
	const float *g;
	int64_t bg_stride;
	float *o;
	int64_t o_stride;
	/* checkpoints (moe_fwd_ck): after the token of row r, S is copied to
	 * ck[r] + ck_off where ck[r] is not NULL (ck itself NULL: none) */
	float *const *ck;
	size_t ck_off;
} moe_gdn_io;

/* The delta rule token by token.  S: f32 [head_k][head_v], updated in place;
 * tmp: head_v floats. */
void moe_gdn_recurrent(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp);

/* The same result in chunks of MOE_GDN_CHUNK tokens (matrix form with a
 * triangular solve); tmp holds moe_gdn_chunk_scratch(hk, hv) floats. */
void moe_gdn_chunked(float *S, const moe_gdn_io *io, int hk, int hv, float *tmp);
size_t moe_gdn_chunk_scratch(int hk, int hv);

#define MOE_GDN_CHUNK 64

#endif
