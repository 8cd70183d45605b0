/* hparams.c - hyper-parameters from GGUF metadata (see hparams.h). */
#include "model/hparams.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *moe_arch_name(moe_arch arch)
{
	switch (arch) {
	case MOE_ARCH_QWEN3MOE:
		return "qwen3moe";
	case MOE_ARCH_QWEN3NEXT:
		return "qwen3next";
	case MOE_ARCH_QWEN35MOE:
		return "qwen35moe";
	}
	return "?";
}

bool moe_arch_is_hybrid(moe_arch arch)
{
	return arch == MOE_ARCH_QWEN3NEXT || arch == MOE_ARCH_QWEN35MOE;
}

/* Reads "<arch>.<name>" as a u32 in [lo, hi] into *out. */
static moe_err get_u32(int32_t *out, const moe_gguf *g, const char *arch, const char *name,
                       uint32_t lo, uint32_t hi)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", arch, name);
	uint32_t v;
	moe_err err = moe_gguf_get_u32(&v, g, key);
	if (err == MOE_ERR_NOT_FOUND)
		return moe_fail(err, "hparams: required key %s is missing", key);
	if (err != MOE_OK)
		return moe_fail(err, "hparams: key %s: %s", key, moe_err_detail());
	if (v < lo || v > hi)
		return moe_fail(MOE_ERR_BAD_VALUE, "hparams: %s = %u is outside [%u, %u]", key, v,
		                lo, hi);
	*out = (int32_t)v;
	return MOE_OK;
}

/* Same, but an absent key gives def. */
static moe_err get_u32_opt(int32_t *out, const moe_gguf *g, const char *arch, const char *name,
                           uint32_t lo, uint32_t hi, int32_t def)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", arch, name);
	if (moe_gguf_find_key(g, key) < 0) {
		*out = def;
		return MOE_OK;
	}
	return get_u32(out, g, arch, name, lo, hi);
}

static moe_err get_f32(float *out, const moe_gguf *g, const char *arch, const char *name,
                       bool required, float def)
{
	char key[128];
	snprintf(key, sizeof key, "%s.%s", arch, name);
	if (!required && moe_gguf_find_key(g, key) < 0) {
		*out = def;
		return MOE_OK;
	}
	float v;
	moe_err err = moe_gguf_get_f32(&v, g, key);
	if (err == MOE_ERR_NOT_FOUND)
		return moe_fail(err, "hparams: required key %s is missing", key);
	if (err != MOE_OK)
		return moe_fail(err, "hparams: key %s: %s", key, moe_err_detail());
	if (!isfinite(v) || v <= 0.0f)
		return moe_fail(MOE_ERR_BAD_VALUE, "hparams: %s = %g must be finite and > 0", key,
		                (double)v);
	*out = v;
	return MOE_OK;
}

static int32_t token_id_opt(const moe_gguf *g, const char *key, int32_t n_vocab)
{
	uint32_t v;
	if (moe_gguf_get_u32(&v, g, key) != MOE_OK || v >= (uint32_t)n_vocab) {
		moe_err_clear();
		return -1;
	}
	return (int32_t)v;
}

static moe_err load_attention(moe_hparams *hp, const moe_gguf *g, const char *a)
{
	moe_err err;
	if ((err = get_u32(&hp->n_head, g, a, "attention.head_count", 1, 4096)) != MOE_OK ||
	    (err = get_u32(&hp->n_head_kv, g, a, "attention.head_count_kv", 1, 4096)) != MOE_OK)
		return err;
	if (hp->n_head % hp->n_head_kv != 0)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s.attention.head_count (%d) is not a multiple of "
		                "%s.attention.head_count_kv (%d)",
		                a, hp->n_head, a, hp->n_head_kv);
	int32_t def_head = hp->n_embd / hp->n_head;
	int32_t head_v;
	if ((err = get_u32_opt(&hp->head_dim, g, a, "attention.key_length", 1, 65536, def_head)) !=
	        MOE_OK ||
	    (err = get_u32_opt(&head_v, g, a, "attention.value_length", 1, 65536, hp->head_dim)) !=
	        MOE_OK)
		return err;
	if (head_v != hp->head_dim)
		return moe_fail(
		    MOE_ERR_UNSUPPORTED,
		    "hparams: %s.attention.value_length (%d) != %s.attention.key_length "
		    "(%d)",
		    a, head_v, a, hp->head_dim);
	if ((err = get_u32_opt(&hp->n_rot, g, a, "rope.dimension_count", 2, 65536, hp->head_dim)) !=
	    MOE_OK)
		return err;
	if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s.rope.dimension_count (%d) must be even and <= "
		                "%s.attention.key_length (%d)",
		                a, hp->n_rot, a, hp->head_dim);
	return get_f32(&hp->rope_base, g, a, "rope.freq_base", false, 10000.0f);
}

static moe_err load_ssm(moe_hparams *hp, const moe_gguf *g, const char *a)
{
	moe_err err;
	int32_t inner;
	if ((err = get_u32(&hp->ssm_conv_kernel, g, a, "ssm.conv_kernel", 1, 64)) != MOE_OK ||
	    (err = get_u32(&hp->ssm_n_k_heads, g, a, "ssm.group_count", 1, 4096)) != MOE_OK ||
	    (err = get_u32(&hp->ssm_n_v_heads, g, a, "ssm.time_step_rank", 1, 4096)) != MOE_OK ||
	    (err = get_u32(&hp->ssm_head_k, g, a, "ssm.state_size", 1, 4096)) != MOE_OK ||
	    (err = get_u32(&inner, g, a, "ssm.inner_size", 1, 1 << 20)) != MOE_OK ||
	    (err = get_u32_opt(&hp->full_attn_interval, g, a, "full_attention_interval", 1,
	                       MOE_MAX_LAYERS, 4)) != MOE_OK)
		return err;
	if (hp->ssm_n_v_heads % hp->ssm_n_k_heads != 0)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s.ssm.time_step_rank (%d value heads) is not a multiple "
		                "of %s.ssm.group_count (%d key heads)",
		                a, hp->ssm_n_v_heads, a, hp->ssm_n_k_heads);
	if (inner % hp->ssm_n_v_heads != 0)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s.ssm.inner_size (%d) is not a multiple of "
		                "%s.ssm.time_step_rank (%d)",
		                a, inner, a, hp->ssm_n_v_heads);
	hp->ssm_head_v = inner / hp->ssm_n_v_heads;
	if (hp->ssm_head_v != hp->ssm_head_k)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "hparams: value head size %s.ssm.inner_size / time_step_rank = %d "
		                "differs from %s.ssm.state_size = %d",
		                a, hp->ssm_head_v, a, hp->ssm_head_k);
	hp->ssm_conv_dim = 2 * hp->ssm_n_k_heads * hp->ssm_head_k + inner;
	return get_u32_opt(&hp->n_ff_shexp, g, a, "expert_shared_feed_forward_length", 1, 1 << 20,
	                   0);
}

/* rope.dimension_sections: required for qwen35moe (as llama.cpp requires it),
 * 4 integers (an array of 4, or one value for all four); the rotary pairs are
 * cycled through their sum, which must fit the head (as ggml asserts). */
static moe_err load_rope_sections(moe_hparams *hp, const moe_gguf *g, const char *a)
{
	char key[128];
	snprintf(key, sizeof key, "%s.rope.dimension_sections", a);
	const int64_t i = moe_gguf_find_key(g, key);
	if (i < 0)
		return moe_fail(MOE_ERR_NOT_FOUND, "hparams: required key %s is missing", key);
	int64_t sum = 0;
	if (moe_gguf_kv_type(g, i) == MOE_GGUF_ARRAY) {
		moe_gguf_arr arr;
		moe_err err = moe_gguf_kv_arr(&arr, g, i);
		if (err != MOE_OK)
			return err;
		if (arr.n != 4 || (arr.type != MOE_GGUF_INT32 && arr.type != MOE_GGUF_UINT32))
			return moe_fail(MOE_ERR_BAD_TYPE,
			                "hparams: %s must be 4 32-bit integers (has %llu)", key,
			                (unsigned long long)arr.n);
		for (int k = 0; k < 4; k++) {
			const int64_t v = moe_gguf_arr_int(&arr, (uint64_t)k);
			if (v < 0 || v > 65536)
				return moe_fail(MOE_ERR_BAD_VALUE, "hparams: %s[%d] = %lld", key, k,
				                (long long)v);
			hp->rope_sections[k] = (int32_t)v;
			sum += v;
		}
	} else {
		int32_t v;
		moe_err err = get_u32(&v, g, a, "rope.dimension_sections", 0, 65536);
		if (err != MOE_OK)
			return err;
		for (int k = 0; k < 4; k++)
			hp->rope_sections[k] = v;
		sum = 4 * (int64_t)v;
	}
	if (sum > hp->head_dim ||
	    hp->rope_sections[0] + hp->rope_sections[1] + hp->rope_sections[2] == 0)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s = [%d, %d, %d, %d]: the sum must be at most "
		                "%s.attention.key_length (%d), and one of the first three positive",
		                key, hp->rope_sections[0], hp->rope_sections[1],
		                hp->rope_sections[2], hp->rope_sections[3], a, hp->head_dim);
	return MOE_OK;
}

/* Which trunk layers are Gated DeltaNet: attention.recurrent_layers (an array
 * of block_count flags, or one flag for all) where present, else every layer
 * but each full_attention_interval-th.  MTP blocks are attention blocks. */
static moe_err load_recurrent(moe_hparams *hp, const moe_gguf *g, const char *a)
{
	char key[128];
	snprintf(key, sizeof key, "%s.attention.recurrent_layers", a);
	const int64_t i = moe_gguf_find_key(g, key);
	if (i < 0) {
		for (int l = 0; l < hp->n_layer; l++)
			hp->recurrent[l] = (l + 1) % hp->full_attn_interval != 0;
		return MOE_OK;
	}
	if (moe_gguf_kv_type(g, i) == MOE_GGUF_ARRAY) {
		moe_gguf_arr arr;
		moe_err err = moe_gguf_kv_arr(&arr, g, i);
		if (err != MOE_OK)
			return err;
		if (arr.n != (uint64_t)hp->n_layer_all ||
		    (arr.type != MOE_GGUF_BOOL && arr.type != MOE_GGUF_INT32 &&
		     arr.type != MOE_GGUF_UINT32))
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "hparams: %s must hold %s.block_count (%d) bools or "
			                "integers (has %llu)",
			                key, a, hp->n_layer_all, (unsigned long long)arr.n);
		for (int l = 0; l < hp->n_layer; l++)
			hp->recurrent[l] = moe_gguf_arr_int(&arr, (uint64_t)l) != 0;
		return MOE_OK;
	}
	double v;
	if (!moe_gguf_kv_as_double(&v, g, i))
		return moe_fail(MOE_ERR_BAD_TYPE, "hparams: %s is not a flag or an array", key);
	const bool all = v != 0;
	for (int l = 0; l < hp->n_layer; l++)
		hp->recurrent[l] = all;
	return MOE_OK;
}

moe_err moe_hparams_load(moe_hparams *out, const moe_gguf *g)
{
	memset(out, 0, sizeof *out);
	moe_gguf_str arch;
	moe_err err = moe_gguf_get_str(&arch, g, "general.architecture");
	if (err != MOE_OK)
		return moe_fail(err, "hparams: general.architecture: %s", moe_err_detail());
	if (arch.len == 8 && memcmp(arch.ptr, "qwen3moe", 8) == 0)
		out->arch = MOE_ARCH_QWEN3MOE;
	else if (arch.len == 9 && memcmp(arch.ptr, "qwen3next", 9) == 0)
		out->arch = MOE_ARCH_QWEN3NEXT;
	else if (arch.len == 9 && memcmp(arch.ptr, "qwen35moe", 9) == 0)
		out->arch = MOE_ARCH_QWEN35MOE;
	else
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "hparams: general.architecture '%.*s' is not qwen3moe, qwen3next "
		                "or qwen35moe",
		                (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
	const char *a = moe_arch_name(out->arch);

	if ((err = get_u32(&out->n_layer_all, g, a, "block_count", 1, MOE_MAX_LAYERS)) != MOE_OK ||
	    (err = get_u32(&out->n_embd, g, a, "embedding_length", 1, 1 << 16)) != MOE_OK ||
	    (err = get_u32_opt(&out->n_ctx_train, g, a, "context_length", 1, 1u << 30, 4096)) !=
	        MOE_OK ||
	    (err = get_f32(&out->rms_eps, g, a, "attention.layer_norm_rms_epsilon", true, 0)) !=
	        MOE_OK ||
	    (err = get_u32(&out->n_expert, g, a, "expert_count", 1, 65536)) != MOE_OK ||
	    (err = get_u32(&out->n_expert_used, g, a, "expert_used_count", 1, 65536)) != MOE_OK ||
	    (err = get_u32(&out->n_ff_exp, g, a, "expert_feed_forward_length", 1, 1 << 20)) !=
	        MOE_OK)
		return err;
	if (out->n_expert_used > out->n_expert)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "hparams: %s.expert_used_count (%d) > %s.expert_count (%d)", a,
		                out->n_expert_used, a, out->n_expert);
	if ((err = load_attention(out, g, a)) != MOE_OK)
		return err;
	out->n_layer = out->n_layer_all;
	if (moe_arch_is_hybrid(out->arch)) {
		/* MTP blocks after the trunk (llama.cpp reads the key for both archs) */
		if ((err = get_u32_opt(&out->n_layer_nextn, g, a, "nextn_predict_layers", 0,
		                       MOE_MAX_LAYERS, 0)) != MOE_OK)
			return err;
		if (out->n_layer_nextn >= out->n_layer_all)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "hparams: %s.nextn_predict_layers (%d) must be below "
			                "%s.block_count (%d)",
			                a, out->n_layer_nextn, a, out->n_layer_all);
		out->n_layer = out->n_layer_all - out->n_layer_nextn;
	}
	if (out->arch == MOE_ARCH_QWEN35MOE && (err = load_rope_sections(out, g, a)) != MOE_OK)
		return err;
	if (moe_arch_is_hybrid(out->arch)) {
		if ((err = load_ssm(out, g, a)) != MOE_OK ||
		    (err = load_recurrent(out, g, a)) != MOE_OK)
			return err;
	}

	const moe_gguf_tensor *emb = moe_gguf_find_tensor(g, "token_embd.weight");
	if (emb == NULL)
		return moe_fail(MOE_ERR_NOT_FOUND, "hparams: tensor token_embd.weight is missing");
	if (emb->n_dims != 2 || emb->ne[0] != out->n_embd || emb->ne[1] < 1 ||
	    emb->ne[1] > (1 << 24))
		return moe_fail(
		    MOE_ERR_BAD_SHAPE,
		    "hparams: token_embd.weight has ne [%lld, %lld] (%u dims), expected "
		    "[%s.embedding_length = %d, n_vocab]",
		    (long long)emb->ne[0], (long long)emb->ne[1], emb->n_dims, a, out->n_embd);
	out->n_vocab = (int32_t)emb->ne[1];
	out->bos_id = token_id_opt(g, "tokenizer.ggml.bos_token_id", out->n_vocab);
	out->eos_id = token_id_opt(g, "tokenizer.ggml.eos_token_id", out->n_vocab);
	return MOE_OK;
}

int moe_hparams_n_recurrent_layers(const moe_hparams *hp)
{
	int n = 0;
	for (int i = 0; i < hp->n_layer; i++)
		n += hp->recurrent[i];
	return n;
}

int moe_hparams_n_attn_layers(const moe_hparams *hp)
{
	return hp->n_layer - moe_hparams_n_recurrent_layers(hp);
}
