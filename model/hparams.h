/*
 * hparams.h - hyper-parameters of qwen3moe / qwen3next / qwen35moe models,
 * read from GGUF metadata (keys "<arch>.block_count", "<arch>.ssm.state_size",
 * ...; see tests/fixtures/README.md) and checked for consistency.
 */
#ifndef MOE_HPARAMS_H
#define MOE_HPARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "model/gguf.h"

#define MOE_MAX_LAYERS 512

typedef enum moe_arch {
	MOE_ARCH_QWEN3MOE = 0,  /* attention + MoE in every layer */
	MOE_ARCH_QWEN3NEXT = 1, /* Gated DeltaNet / gated attention + MoE + shared expert */
	MOE_ARCH_QWEN35MOE = 2, /* qwen3next with split DeltaNet projections, multi-section
	                         * rotary (IMROPE) and MTP blocks after the trunk */
} moe_arch;

typedef struct moe_hparams {
	moe_arch arch;
	int32_t n_vocab;       /* rows of token_embd */
	int32_t n_embd;        /* hidden size */
	int32_t n_layer;       /* trunk layers: the ones the main pass runs */
	int32_t n_layer_nextn; /* MTP (nextn) blocks after the trunk (nextn_predict_layers;
	                        * qwen35moe and qwen3next, 0 for qwen3moe) */
	int32_t n_layer_all;   /* block_count = n_layer + n_layer_nextn */
	int32_t n_ctx_train;   /* context_length */
	float rms_eps;

	/* full attention */
	int32_t n_head;
	int32_t n_head_kv;
	int32_t head_dim; /* attention.key_length (= value_length) */
	int32_t n_rot;    /* rotated dims per head (rope.dimension_count) */
	float rope_base;  /* rope.freq_base */
	/* rope.dimension_sections (qwen35moe): rotary pair i takes position section
	 * (i mod sum) under llama.cpp's interleaved rule (IMROPE); all zero = plain NeoX */
	int32_t rope_sections[4];

	/* MoE */
	int32_t n_expert;
	int32_t n_expert_used;
	int32_t n_ff_exp;   /* expert_feed_forward_length */
	int32_t n_ff_shexp; /* expert_shared_feed_forward_length; 0 = no shared expert */

	/* Gated DeltaNet (qwen3next; zero for qwen3moe) */
	int32_t ssm_conv_kernel; /* ssm.conv_kernel */
	int32_t ssm_n_k_heads;   /* ssm.group_count */
	int32_t ssm_n_v_heads;   /* ssm.time_step_rank */
	int32_t ssm_head_k;      /* ssm.state_size */
	int32_t ssm_head_v;      /* ssm.inner_size / n_v_heads */
	int32_t ssm_conv_dim;    /* 2*n_k_heads*head_k + n_v_heads*head_v */
	int32_t full_attn_interval;

	bool recurrent[MOE_MAX_LAYERS]; /* layer i is Gated DeltaNet (never an MTP block) */

	/* tokenizer ids, -1 when absent */
	int32_t bos_id;
	int32_t eos_id;
} moe_hparams;

/* Fills *out from g's metadata and the shape of token_embd.weight.  On error
 * returns MOE_ERR_UNSUPPORTED (architecture), MOE_ERR_NOT_FOUND (a required
 * key; the detail names it), MOE_ERR_BAD_TYPE or MOE_ERR_BAD_VALUE (a value
 * out of range or inconsistent with another; the detail names both keys);
 * *out is then unspecified. */
moe_err moe_hparams_load(moe_hparams *out, const moe_gguf *g);

/* Number of full-attention / DeltaNet layers of the trunk. */
int moe_hparams_n_attn_layers(const moe_hparams *hp);
int moe_hparams_n_recurrent_layers(const moe_hparams *hp);

/* The GGUF general.architecture string of arch ("qwen3moe", ...), or "?". */
const char *moe_arch_name(moe_arch arch);

/* Whether arch has qwen3next's layout: Gated DeltaNet layers, gated attention,
 * post_attention_norm, a shared expert (qwen3next and qwen35moe). */
bool moe_arch_is_hybrid(moe_arch arch);

#endif
