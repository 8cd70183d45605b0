/*
 * synth.c - synthetic random-weight qwen3moe / qwen3next / qwen35moe GGUF
 * models.
 *
 * Layout, names, shapes and key order follow llama.cpp's converter (see
 * tests/fixtures/README.md, "Storage conventions").  Initialisation follows
 * the fixtures' recipe so activations stay well-conditioned through the
 * layers: token_embd N(0,1); input projections N(0, 1/fan_in); output
 * projections N(0, 0.25/fan_in); router N(0, 4/hidden); shared-expert gate
 * N(0, 1/hidden); output.weight N(0, 9/hidden); norms 1 + 0.1 N(0,1); conv
 * U(-0.5, 0.5); dt bias U(-2, 1); ssm_a = -A with A log-uniform in [0.05, 1].
 * Every tensor has its own random stream seeded by (seed, hash of its name),
 * so a tensor's values do not depend on the others or on the layer count.
 */
#include "devtools/devtools.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/kernels.h"
#include "model/model.h"

/* ---- presets ------------------------------------------------------------------ */

typedef struct preset {
	const char *name;
	const char *arch; /* NULL: both */
	int64_t n_vocab;
	int64_t n_embd;
	int64_t n_layer;
	int64_t n_ff; /* feed_forward_length (unused by these archs, kept for llama.cpp) */
	int64_t n_head, n_head_kv, head_dim;
	int64_t n_rot; /* rope dims (qwen3next); qwen3moe ropes the whole head */
	float rope_base_moe, rope_base_next;
	int64_t n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
	int64_t ssm_conv, ssm_d_state, ssm_n_group, ssm_dt_rank;
	int64_t full_attn_interval;
	int64_t n_ctx;
	int32_t rope_sections[4]; /* qwen35moe: rope.dimension_sections */
	int64_t n_nextn;          /* MTP blocks after the n_layer trunk blocks (hybrid archs) */
} preset;

static const preset presets[] = {
    /* the fixtures' tiny qwen35moe: qwen3next-tiny's sizes, 16 rotary dims in
     * sections [2, 1, 1, 1] (pair 4 falls in the fourth section, which text
     * tokens do not rotate, and pairs 5-7 wrap around to the first), 1 MTP block */
    {.name = "tiny",
     .arch = "qwen35moe",
     .n_vocab = 512,
     .n_embd = 128,
     .n_layer = 4,
     .n_ff = 384,
     .n_head = 8,
     .n_head_kv = 2,
     .head_dim = 32,
     .n_rot = 16,
     .rope_base_moe = 1e6f,
     .rope_base_next = 1e7f,
     .n_expert = 16,
     .n_expert_used = 4,
     .n_ff_exp = 64,
     .n_ff_shexp = 64,
     .ssm_conv = 4,
     .ssm_d_state = 32,
     .ssm_n_group = 4,
     .ssm_dt_rank = 8,
     .full_attn_interval = 4,
     .n_ctx = 4096,
     .rope_sections = {2, 1, 1, 1},
     .n_nextn = 1},
    /* the trained KJV demo model's shape (devtools/train/train_kjv_qwen35moe.py,
     * models/README.md): kjv-qwen3next's sizes, 4096 tokens, 8 rotary dims in
     * sections [2, 1, 1, 0] (all 4 pairs rotate for text), context 512, 1 MTP
     * block; its weights come from --from-weights */
    {.name = "kjv",
     .arch = "qwen35moe",
     .n_vocab = 4096,
     .n_embd = 256,
     .n_layer = 4,
     .n_ff = 768,
     .n_head = 8,
     .n_head_kv = 2,
     .head_dim = 32,
     .n_rot = 8,
     .rope_base_moe = 1e6f,
     .rope_base_next = 1e7f,
     .n_expert = 16,
     .n_expert_used = 4,
     .n_ff_exp = 128,
     .n_ff_shexp = 256,
     .ssm_conv = 4,
     .ssm_d_state = 64,
     .ssm_n_group = 2,
     .ssm_dt_rank = 4,
     .full_attn_interval = 4,
     .n_ctx = 512,
     .rope_sections = {2, 1, 1, 0},
     .n_nextn = 1},
    {.name = "tiny",
     .arch = NULL,
     .n_vocab = 512,
     .n_embd = 128,
     .n_layer = 4,
     .n_ff = 384,
     .n_head = 8,
     .n_head_kv = 2,
     .head_dim = 32,
     .n_rot = 8,
     .rope_base_moe = 1e6f,
     .rope_base_next = 1e7f,
     .n_expert = 16,
     .n_expert_used = 4,
     .n_ff_exp = 64,
     .n_ff_shexp = 64,
     .ssm_conv = 4,
     .ssm_d_state = 32,
     .ssm_n_group = 4,
     .ssm_dt_rank = 8,
     .full_attn_interval = 4,
     .n_ctx = 4096,
     .rope_sections = {0, 0, 0, 0},
     .n_nextn = 0},
    /* Qwen3.5-397B-A17B's per-layer sizes, 4 trunk layers plus its 1 MTP block.
     * Source: the model's Hugging Face config.json (Qwen/Qwen3.5-397B-A17B), as
     * transcribed by MLPerf's Qwen3.5 training reference and the
     * mlx-community/Qwen3.5-397B-A17B-4bit model card: hidden 4096, 60 layers
     * with full attention every 4th, 32 q / 2 kv heads x 256, partial rotary
     * 0.25 (64 dims), rope theta 1e7, 512 experts / 10 used of 1024, one
     * shared expert of 1024 (shared_expert_intermediate_size = moe_intermediate_
     * size, as in the 35B and 122B configs), DeltaNet 16 key / 64 value heads
     * x 128, conv 4, vocab 248320, context 262144, mtp_num_hidden_layers 1;
     * mrope_section [11, 11, 10] (llama.cpp's converter writes [11, 11, 10, 0]).
     * feed_forward_length (intermediate_size, unused by qwen35moe) is written as
     * 1024. */
    {"qwen35-397b-4L",
     "qwen35moe",
     248320,
     4096,
     4,
     1024,
     32,
     2,
     256,
     64,
     1e7f,
     1e7f,
     512,
     10,
     1024,
     1024,
     4,
     128,
     16,
     64,
     4,
     262144,
     {11, 11, 10, 0},
     1},
    {"qwen3next-80b-4L",
     "qwen3next",
     151936,
     2048,
     4,
     5120,
     16,
     2,
     256,
     64,
     1e6f,
     1e7f,
     512,
     10,
     512,
     512,
     4,
     128,
     16,
     32,
     4,
     262144,
     {0, 0, 0, 0},
     0},
    {"qwen3-30b-a3b-4L",
     "qwen3moe",
     151936,
     2048,
     4,
     6144,
     32,
     4,
     128,
     128,
     1e6f,
     1e7f,
     128,
     8,
     768,
     0,
     0,
     0,
     0,
     0,
     0,
     40960,
     {0, 0, 0, 0},
     0},
    /* a tiny qwen3moe whose every row length is a multiple of 256 (the K-quant
     * block), so llama-quantize gives the 2- and 3-bit K-quants real tensors:
     * the Q2_K / Q3_K_M fixtures (tests/make_k23_fixtures.py) */
    {.name = "tiny256",
     .arch = "qwen3moe",
     .n_vocab = 512,
     .n_embd = 256,
     .n_layer = 2,
     .n_ff = 768,
     .n_head = 2,
     .n_head_kv = 1,
     .head_dim = 128,
     .n_rot = 128,
     .rope_base_moe = 1e6f,
     .rope_base_next = 1e7f,
     .n_expert = 4,
     .n_expert_used = 2,
     .n_ff_exp = 256,
     .n_ctx = 4096},
};

/* The preset called name for arch: one made for arch first, else a shared
 * one (arch NULL), else one of another arch (refused by plan, naming it). */
static const preset *find_preset(const char *name, const char *arch)
{
	const preset *other = NULL;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
			const preset *p = &presets[i];
			if (strcmp(p->name, name) != 0)
				continue;
			if (pass == 0 && p->arch != NULL && strcmp(p->arch, arch) == 0)
				return p;
			if (pass == 1 && p->arch == NULL)
				return p;
			other = p;
		}
	return other;
}

/* ---- file types ---------------------------------------------------------------- */

static const struct {
	const char *name;
	moe_ftype ftype;
} ftype_names[] = {
    {"F32", MOE_FTYPE_F32},   {"F16", MOE_FTYPE_F16},   {"BF16", MOE_FTYPE_BF16},
    {"Q8_0", MOE_FTYPE_Q8_0}, {"Q4_0", MOE_FTYPE_Q4_0}, {"Q4_K_M", MOE_FTYPE_Q4_K_M},
};

moe_err moe_ftype_parse(moe_ftype *out, const char *name)
{
	for (size_t i = 0; i < sizeof(ftype_names) / sizeof(ftype_names[0]); i++) {
		if (strcasecmp(ftype_names[i].name, name) == 0) {
			*out = ftype_names[i].ftype;
			return MOE_OK;
		}
	}
	return moe_fail(MOE_ERR_INVAL, "unknown type '%s' (F32, F16, BF16, Q8_0, Q4_0, Q4_K_M)",
	                name);
}

const char *moe_ftype_name(moe_ftype t)
{
	for (size_t i = 0; i < sizeof(ftype_names) / sizeof(ftype_names[0]); i++)
		if (ftype_names[i].ftype == t)
			return ftype_names[i].name;
	return "?";
}

/* ---- tensors ------------------------------------------------------------------- */

typedef enum init_kind {
	INIT_NORMAL,  /* N(0, scale^2) */
	INIT_NORM,    /* 1 + 0.1 N(0,1) */
	INIT_UNIFORM, /* U(lo, hi) */
	INIT_NEG_LOGU /* -exp(U(log lo, log hi)) */
} init_kind;

/* What decides the quantised type of a tensor under a mixed file type. */
typedef enum quant_role {
	ROLE_KEEP_F32, /* 1-D, norms, routers, conv, ssm_a, dt bias: always F32 */
	ROLE_PLAIN,    /* ordinary 2-D/3-D weight */
	ROLE_EMBD,     /* token_embd */
	ROLE_OUTPUT,   /* output.weight */
	ROLE_MORE_V,   /* attn_v / attn_qkv: more bits in some layers (Q4_K_M) */
	ROLE_MORE_DOWN /* ffn_down*: more bits in some layers (Q4_K_M) */
} quant_role;

typedef struct tensor_spec {
	char name[96];
	uint32_t n_dims;
	int64_t ne[4];
	init_kind init;
	float a, b; /* scale, or range */
	quant_role role;
	int layer; /* -1 outside blocks */
	moe_type type;
} tensor_spec;

typedef struct tensor_list {
	tensor_spec *v; /* capacity reserved up front by tensor_list_reserve */
	size_t n, cap;
} tensor_list;

/* At most this many tensors per layer, plus 3 outside the layers. */
#define MAX_TENSORS_PER_LAYER 24

static moe_err tensor_list_reserve(tensor_list *l, int64_t n_layer)
{
	l->cap = (size_t)(3 + MAX_TENSORS_PER_LAYER * n_layer);
	l->n = 0;
	l->v = calloc(l->cap, sizeof(*l->v));
	return l->v ? MOE_OK : moe_fail(MOE_ERR_NOMEM, "tensor list");
}

static void add_tensor(tensor_list *l, const char *name, int layer, uint32_t n_dims, int64_t ne0,
                       int64_t ne1, int64_t ne2, init_kind init, float a, float b, quant_role role)
{
	tensor_spec *t = &l->v[l->n++];

	if (layer >= 0)
		snprintf(t->name, sizeof(t->name), "blk.%d.%s", layer, name);
	else
		snprintf(t->name, sizeof(t->name), "%s", name);
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->ne[2] = ne2;
	t->ne[3] = 1;
	t->init = init;
	t->a = a;
	t->b = b;
	t->role = role;
	t->layer = layer;
}

/* std of N(0, k/fan_in) written as scale / sqrt(fan_in). */
static float fan_scale(float scale, int64_t fan_in)
{
	return scale / sqrtf((float)fan_in);
}

typedef enum synth_arch { SYN_QWEN3MOE, SYN_QWEN3NEXT, SYN_QWEN35MOE } synth_arch;

static synth_arch arch_of(const char *arch)
{
	if (strcmp(arch, "qwen3next") == 0)
		return SYN_QWEN3NEXT;
	if (strcmp(arch, "qwen35moe") == 0)
		return SYN_QWEN35MOE;
	return SYN_QWEN3MOE;
}

/* The attention tensors of block il (hybrid: q and gate per head). */
static void add_attention(tensor_list *l, const preset *p, bool hybrid, int il)
{
	const int64_t E = p->n_embd, D = p->head_dim, H = p->n_head, HKV = p->n_head_kv;
	add_tensor(l, "attn_q.weight", il, 2, E, (hybrid ? 2 : 1) * H * D, 1, INIT_NORMAL,
	           fan_scale(1, E), 0, ROLE_PLAIN);
	add_tensor(l, "attn_k.weight", il, 2, E, HKV * D, 1, INIT_NORMAL, fan_scale(1, E), 0,
	           ROLE_PLAIN);
	add_tensor(l, "attn_v.weight", il, 2, E, HKV * D, 1, INIT_NORMAL, fan_scale(1, E), 0,
	           ROLE_MORE_V);
	add_tensor(l, "attn_output.weight", il, 2, H * D, E, 1, INIT_NORMAL, fan_scale(0.5f, H * D),
	           0, ROLE_PLAIN);
	add_tensor(l, "attn_q_norm.weight", il, 1, D, 1, 1, INIT_NORM, 0, 0, ROLE_KEEP_F32);
	add_tensor(l, "attn_k_norm.weight", il, 1, D, 1, 1, INIT_NORM, 0, 0, ROLE_KEEP_F32);
}

/* The Gated DeltaNet tensors of block il: qwen3next's ssm_ba, or qwen35moe's
 * ssm_beta and ssm_alpha (one row per value head each). */
static void add_deltanet(tensor_list *l, const preset *p, bool split, int il)
{
	const int64_t E = p->n_embd;
	const int64_t dk = p->ssm_d_state, nk = p->ssm_n_group, nv = p->ssm_dt_rank;
	const int64_t dv = dk; /* head_v = head_k in these models */
	const int64_t conv_dim = 2 * nk * dk + nv * dv;
	add_tensor(l, "attn_qkv.weight", il, 2, E, conv_dim, 1, INIT_NORMAL, fan_scale(1, E), 0,
	           ROLE_MORE_V);
	add_tensor(l, "attn_gate.weight", il, 2, E, nv * dv, 1, INIT_NORMAL, fan_scale(1, E), 0,
	           ROLE_PLAIN);
	add_tensor(l, "ssm_conv1d.weight", il, 2, p->ssm_conv, conv_dim, 1, INIT_UNIFORM, -0.5f,
	           0.5f, ROLE_KEEP_F32);
	add_tensor(l, "ssm_dt.bias", il, 1, nv, 1, 1, INIT_UNIFORM, -2.0f, 1.0f, ROLE_KEEP_F32);
	add_tensor(l, "ssm_a", il, 1, nv, 1, 1, INIT_NEG_LOGU, 0.05f, 1.0f, ROLE_KEEP_F32);
	if (split) {
		add_tensor(l, "ssm_beta.weight", il, 2, E, nv, 1, INIT_NORMAL, fan_scale(1, E), 0,
		           ROLE_PLAIN);
		add_tensor(l, "ssm_alpha.weight", il, 2, E, nv, 1, INIT_NORMAL, fan_scale(1, E), 0,
		           ROLE_PLAIN);
	} else {
		add_tensor(l, "ssm_ba.weight", il, 2, E, 2 * nv, 1, INIT_NORMAL, fan_scale(1, E), 0,
		           ROLE_PLAIN);
	}
	add_tensor(l, "ssm_norm.weight", il, 1, dv, 1, 1, INIT_NORM, 0, 0, ROLE_KEEP_F32);
	add_tensor(l, "ssm_out.weight", il, 2, nv * dv, E, 1, INIT_NORMAL, fan_scale(0.5f, nv * dv),
	           0, ROLE_PLAIN);
}

/* Router, routed experts and (hybrid) shared expert of block il. */
static void add_moe(tensor_list *l, const preset *p, bool hybrid, int il)
{
	const int64_t E = p->n_embd;
	add_tensor(l, "ffn_gate_inp.weight", il, 2, E, p->n_expert, 1, INIT_NORMAL, fan_scale(2, E),
	           0, ROLE_KEEP_F32);
	add_tensor(l, "ffn_gate_exps.weight", il, 3, E, p->n_ff_exp, p->n_expert, INIT_NORMAL,
	           fan_scale(1, E), 0, ROLE_PLAIN);
	add_tensor(l, "ffn_up_exps.weight", il, 3, E, p->n_ff_exp, p->n_expert, INIT_NORMAL,
	           fan_scale(1, E), 0, ROLE_PLAIN);
	add_tensor(l, "ffn_down_exps.weight", il, 3, p->n_ff_exp, E, p->n_expert, INIT_NORMAL,
	           fan_scale(0.5f, p->n_ff_exp), 0, ROLE_MORE_DOWN);
	if (!hybrid)
		return;
	add_tensor(l, "ffn_gate_inp_shexp.weight", il, 1, E, 1, 1, INIT_NORMAL, fan_scale(1, E), 0,
	           ROLE_KEEP_F32);
	add_tensor(l, "ffn_gate_shexp.weight", il, 2, E, p->n_ff_shexp, 1, INIT_NORMAL,
	           fan_scale(1, E), 0, ROLE_PLAIN);
	add_tensor(l, "ffn_up_shexp.weight", il, 2, E, p->n_ff_shexp, 1, INIT_NORMAL,
	           fan_scale(1, E), 0, ROLE_PLAIN);
	add_tensor(l, "ffn_down_shexp.weight", il, 2, p->n_ff_shexp, E, 1, INIT_NORMAL,
	           fan_scale(0.5f, p->n_ff_shexp), 0, ROLE_MORE_DOWN);
}

/* Appends the model's tensors in llama.cpp's converter order; l has room.
 * n_layer trunk blocks, then p->n_nextn MTP blocks (qwen35moe and qwen3next):
 * a gated attention block with MoE plus nextn.eh_proj, enorm, hnorm and
 * shared_head_norm, as llama.cpp's converter names the mtp.* tensors. */
static void build_tensors(tensor_list *l, const preset *p, synth_arch arch, int64_t n_layer,
                          int64_t n_vocab)
{
	const int64_t E = p->n_embd, V = n_vocab;
	const bool hybrid = arch != SYN_QWEN3MOE;
	const int64_t n_nextn = p->n_nextn;

	add_tensor(l, "token_embd.weight", -1, 2, E, V, 1, INIT_NORMAL, 1.0f, 0, ROLE_EMBD);
	for (int il = 0; il < n_layer + n_nextn; il++) {
		const bool mtp = il >= n_layer;
		const bool full = mtp || !hybrid || ((il + 1) % p->full_attn_interval == 0);

		add_tensor(l, "attn_norm.weight", il, 1, E, 1, 1, INIT_NORM, 0, 0, ROLE_KEEP_F32);
		if (hybrid)
			add_tensor(l, "post_attention_norm.weight", il, 1, E, 1, 1, INIT_NORM, 0, 0,
			           ROLE_KEEP_F32);
		if (full)
			add_attention(l, p, hybrid, il);
		else
			add_deltanet(l, p, arch == SYN_QWEN35MOE, il);
		if (!hybrid)
			add_tensor(l, "ffn_norm.weight", il, 1, E, 1, 1, INIT_NORM, 0, 0,
			           ROLE_KEEP_F32);
		add_moe(l, p, hybrid, il);
		if (mtp) {
			add_tensor(l, "nextn.eh_proj.weight", il, 2, 2 * E, E, 1, INIT_NORMAL,
			           fan_scale(1, 2 * E), 0, ROLE_PLAIN);
			add_tensor(l, "nextn.enorm.weight", il, 1, E, 1, 1, INIT_NORM, 0, 0,
			           ROLE_KEEP_F32);
			add_tensor(l, "nextn.hnorm.weight", il, 1, E, 1, 1, INIT_NORM, 0, 0,
			           ROLE_KEEP_F32);
			add_tensor(l, "nextn.shared_head_norm.weight", il, 1, E, 1, 1, INIT_NORM, 0,
			           0, ROLE_KEEP_F32);
		}
	}
	add_tensor(l, "output_norm.weight", -1, 1, E, 1, 1, INIT_NORM, 0, 0, ROLE_KEEP_F32);
	add_tensor(l, "output.weight", -1, 2, E, V, 1, INIT_NORMAL, fan_scale(3, E), 0,
	           ROLE_OUTPUT);
}

/* llama.cpp's "use more bits" layer rule for Q4_K_M's attn_v and ffn_down. */
static bool more_bits(int layer, int64_t n_layer)
{
	return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

/* K-quants need rows that are a multiple of 256; llama-quantize falls back. */
static moe_type fallback(moe_type t, int64_t ne0)
{
	if (ne0 % 256 == 0)
		return t;
	if (t == MOE_TYPE_Q4_K)
		return MOE_TYPE_Q5_0;
	if (t == MOE_TYPE_Q6_K)
		return MOE_TYPE_Q8_0;
	return t;
}

/* The type of t under ft.  llama-quantize's "more bits" rule counts attn_v
 * and attn_qkv tensors in file order (t is number i_v of n_v) and places
 * ffn_down tensors by their block among all n_blocks (MTP blocks included). */
static moe_type pick_type(const tensor_spec *t, moe_ftype ft, int64_t i_v, int64_t n_v,
                          int64_t n_blocks)
{
	if (t->role == ROLE_KEEP_F32 || t->n_dims < 2)
		return MOE_TYPE_F32;
	switch (ft) {
	case MOE_FTYPE_F32:
		return MOE_TYPE_F32;
	case MOE_FTYPE_F16:
		return MOE_TYPE_F16;
	case MOE_FTYPE_BF16:
		return MOE_TYPE_BF16;
	case MOE_FTYPE_Q8_0:
		return MOE_TYPE_Q8_0;
	case MOE_FTYPE_Q4_0:
		return t->role == ROLE_OUTPUT ? fallback(MOE_TYPE_Q6_K, t->ne[0]) : MOE_TYPE_Q4_0;
	case MOE_FTYPE_Q4_K_M:
		if (t->role == ROLE_OUTPUT)
			return fallback(MOE_TYPE_Q6_K, t->ne[0]);
		if ((t->role == ROLE_MORE_V && more_bits((int)i_v, n_v)) ||
		    (t->role == ROLE_MORE_DOWN && more_bits(t->layer, n_blocks)))
			return fallback(MOE_TYPE_Q6_K, t->ne[0]);
		return fallback(MOE_TYPE_Q4_K, t->ne[0]);
	}
	return MOE_TYPE_F32;
}

/* ---- random numbers --------------------------------------------------------------- */

/* PCG-XSH-RR 64/32 (O'Neill), plus normals by Box-Muller. */
typedef struct rng {
	uint64_t state, inc;
	bool have_spare;
	float spare;
} rng;

static uint32_t rng_u32(rng *r)
{
	uint64_t old = r->state;
	uint32_t x, rot;

	r->state = old * 6364136223846793005ULL + r->inc;
	x = (uint32_t)(((old >> 18) ^ old) >> 27);
	rot = (uint32_t)(old >> 59);
	return (x >> rot) | (x << ((32 - rot) & 31));
}

static void rng_seed(rng *r, uint64_t seed, uint64_t stream)
{
	r->state = 0;
	r->inc = (stream << 1) | 1u;
	r->have_spare = false;
	r->spare = 0;
	rng_u32(r);
	r->state += seed;
	rng_u32(r);
}

/* Uniform in (0, 1). */
static double rng_unit(rng *r)
{
	uint64_t v = ((uint64_t)rng_u32(r) << 21) ^ rng_u32(r);
	return ((double)(v & ((1ULL << 53) - 1)) + 0.5) / 9007199254740992.0;
}

static float rng_normal(rng *r)
{
	double u1, u2, m;

	if (r->have_spare) {
		r->have_spare = false;
		return r->spare;
	}
	u1 = rng_unit(r);
	u2 = rng_unit(r);
	m = sqrt(-2.0 * log(u1));
	r->spare = (float)(m * sin(2.0 * M_PI * u2));
	r->have_spare = true;
	return (float)(m * cos(2.0 * M_PI * u2));
}

/* FNV-1a, to give every tensor its own stream. */
static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static void fill(float *dst, int64_t n, const tensor_spec *t, rng *r)
{
	for (int64_t i = 0; i < n; i++) {
		switch (t->init) {
		case INIT_NORMAL:
			dst[i] = t->a * rng_normal(r);
			break;
		case INIT_NORM:
			dst[i] = 1.0f + 0.1f * rng_normal(r);
			break;
		case INIT_UNIFORM:
			dst[i] = t->a + (t->b - t->a) * (float)rng_unit(r);
			break;
		case INIT_NEG_LOGU:
			dst[i] = -expf(logf(t->a) + (logf(t->b) - logf(t->a)) * (float)rng_unit(r));
			break;
		}
	}
}

/* ---- vocabulary ---------------------------------------------------------------------- */

/* A built-in text the synthetic vocabulary's merges are learned from. */
static const char vocab_text[] =
    "The quick brown fox jumps over the lazy dog. A mixture of experts model routes every "
    "token to a few of its experts, and the experts of every layer are spread over the "
    "machines of a small cluster. The coordinator holds the dense part of the model and all "
    "the state of every request; the workers hold the experts and nothing else. For every "
    "layer the coordinator sends each token to the workers that hold its chosen experts and "
    "adds up what comes back. In the beginning there was a question, and the question was "
    "how to run a model that is too big for one machine on the machines that there are. "
    "They measured the memory bandwidth, the latency of the network and the time of every "
    "step, and then they made the slow parts faster. Numbers like 1, 2, 3, 10, 42, 100 and "
    "2048 appear in the text too, with words such as attention, expert, router, token, "
    "layer, weight, state, cache, batch, prompt, answer, thread, socket, message, server.\n"
    "She said that the results were the same on one machine and on three. He asked why, and "
    "she told him that the sums were exact, so the order in which the answers arrived did "
    "not matter at all. Then they went home, and the cluster kept on running through the "
    "night, answering every request that came in, one token after another.\n";

typedef struct synth_vocab {
	char **tokens;
	int32_t *types;
	int64_t n_tokens;
	char **merges;
	int64_t n_merges;
	const char **view; /* padded vocabulary: borrowed strings then pads */
} synth_vocab;

static void synth_vocab_free(synth_vocab *v)
{
	for (int64_t i = 0; v->tokens && i < v->n_tokens; i++)
		free(v->tokens[i]);
	for (int64_t i = 0; v->merges && i < v->n_merges; i++)
		free(v->merges[i]);
	free(v->tokens);
	free(v->types);
	free(v->merges);
	free(v->view);
	memset(v, 0, sizeof(*v));
}

/* GPT-2's byte-to-unicode map: token ids 0..187 are the printable bytes in
 * byte order (each its own code point), ids 188..255 the other bytes in byte
 * order, mapped to U+0100 upwards.  Fills byte_of_id and id_of_byte. */
static bool byte_printable(int b)
{
	return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

static void byte_tables(int byte_of_id[256], unsigned cp_of_id[256], int id_of_byte[256])
{
	int id = 0, k = 0;

	for (int pass = 0; pass < 2; pass++) {
		for (int b = 0; b < 256; b++) {
			if (byte_printable(b) != (pass == 0))
				continue;
			byte_of_id[id] = b;
			cp_of_id[id] = pass == 0 ? (unsigned)b : 256u + (unsigned)k++;
			id_of_byte[b] = id++;
		}
	}
}

static char *utf8_of_cp(unsigned c)
{
	char *s = malloc(3);

	if (s == NULL)
		return NULL;
	if (c < 0x80) {
		s[0] = (char)c;
		s[1] = 0;
	} else {
		s[0] = (char)(0xC0 | (c >> 6));
		s[1] = (char)(0x80 | (c & 0x3F));
		s[2] = 0;
	}
	return s;
}

static char *str_concat(const char *a, const char *sep, const char *b)
{
	size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
	char *s = malloc(la + ls + lb + 1);

	if (s == NULL)
		return NULL;
	memcpy(s, a, la);
	memcpy(s + la, sep, ls);
	memcpy(s + la + ls, b, lb + 1);
	return s;
}

static bool is_letter(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Learns up to MAX_MERGES BPE merges from vocab_text split into words (an
 * optional space plus letters, or one other character) until no pair occurs
 * twice or n_vocab - 3 tokens exist (most frequent pair first, ties to the
 * lowest (left, right) ids); pads with unused "[PADn]" tokens; ends with the
 * three Qwen control tokens <|endoftext|>, <|im_start|>, <|im_end|>. */
static moe_err synth_vocab_make(synth_vocab *v, int64_t n_vocab)
{
	enum { MAX_MERGES = 512, MAXT = 256 + MAX_MERGES };
	int byte_of_id[256], id_of_byte[256];
	unsigned cp_of_id[256];
	int64_t n_normal = n_vocab - 3;
	size_t n_text = sizeof(vocab_text) - 1;
	int *seq = NULL, *cnt = NULL;
	size_t n_seq = 0;

	memset(v, 0, sizeof(*v));
	if (n_vocab < 259)
		return moe_fail(MOE_ERR_INVAL, "vocabulary of %lld tokens is below 259",
		                (long long)n_vocab);
	byte_tables(byte_of_id, cp_of_id, id_of_byte);
	(void)byte_of_id;
	v->tokens = calloc((size_t)n_vocab, sizeof(char *));
	v->types = calloc((size_t)n_vocab, sizeof(int32_t));
	v->merges = calloc(MAX_MERGES, sizeof(char *));
	/* the text as token ids, words separated by -1 */
	seq = malloc(2 * n_text * sizeof(int));
	cnt = malloc((size_t)MAXT * MAXT * sizeof(int));
	if (v->tokens == NULL || v->types == NULL || v->merges == NULL || seq == NULL ||
	    cnt == NULL)
		goto out_nomem;
	for (int i = 0; i < 256; i++) {
		if ((v->tokens[i] = utf8_of_cp(cp_of_id[i])) == NULL)
			goto out_nomem;
		v->types[i] = 1; /* NORMAL */
	}
	v->n_tokens = 256;
	for (size_t i = 0; i < n_text;) {
		if (vocab_text[i] == ' ' && i + 1 < n_text && is_letter(vocab_text[i + 1]))
			seq[n_seq++] = id_of_byte[(unsigned char)vocab_text[i++]];
		if (is_letter(vocab_text[i])) {
			while (i < n_text && is_letter(vocab_text[i]))
				seq[n_seq++] = id_of_byte[(unsigned char)vocab_text[i++]];
		} else {
			seq[n_seq++] = id_of_byte[(unsigned char)vocab_text[i++]];
		}
		seq[n_seq++] = -1;
	}

	while (v->n_tokens < n_normal && v->n_merges < MAX_MERGES) {
		int best_l = -1, best_r = -1, best_c = 1;
		size_t o = 0;

		memset(cnt, 0, (size_t)MAXT * MAXT * sizeof(int));
		for (size_t i = 0; i + 1 < n_seq; i++)
			if (seq[i] >= 0 && seq[i + 1] >= 0)
				cnt[seq[i] * MAXT + seq[i + 1]]++;
		for (int l = 0; l < (int)v->n_tokens; l++)
			for (int r = 0; r < (int)v->n_tokens; r++)
				if (cnt[l * MAXT + r] > best_c) {
					best_c = cnt[l * MAXT + r];
					best_l = l;
					best_r = r;
				}
		if (best_l < 0)
			break;
		int id = (int)v->n_tokens;
		v->merges[v->n_merges] = str_concat(v->tokens[best_l], " ", v->tokens[best_r]);
		v->tokens[id] = str_concat(v->tokens[best_l], "", v->tokens[best_r]);
		if (v->merges[v->n_merges] == NULL || v->tokens[id] == NULL)
			goto out_nomem;
		v->n_merges++;
		v->types[id] = 1;
		v->n_tokens++;
		for (size_t i = 0; i < n_seq; i++) {
			if (i + 1 < n_seq && seq[i] == best_l && seq[i + 1] == best_r) {
				seq[o++] = id;
				i++;
			} else {
				seq[o++] = seq[i];
			}
		}
		n_seq = o;
	}
	while (v->n_tokens < n_normal) {
		char name[32];
		snprintf(name, sizeof(name), "[PAD%lld]", (long long)v->n_tokens);
		if ((v->tokens[v->n_tokens] = strdup(name)) == NULL)
			goto out_nomem;
		v->types[v->n_tokens++] = 5; /* UNUSED */
	}
	static const char *const specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
	for (int i = 0; i < 3; i++) {
		if ((v->tokens[v->n_tokens] = strdup(specials[i])) == NULL)
			goto out_nomem;
		v->types[v->n_tokens++] = 3; /* CONTROL */
	}
	free(seq);
	free(cnt);
	return MOE_OK;

out_nomem:
	free(seq);
	free(cnt);
	synth_vocab_free(v);
	return moe_fail(MOE_ERR_NOMEM, "synthetic vocabulary");
}

/* The vocabulary v padded to n_vocab rows with unused "[PADn]" tokens, as
 * llama.cpp's converter pads Qwen's vocabulary to the embedding rows. The
 * pad strings and the new pointer arrays are owned by sv; the rest is v's. */
static moe_err pad_vocab(synth_vocab *sv, moe_synth_vocab *out, const moe_synth_vocab *v,
                         int64_t n_vocab)
{
	memset(sv, 0, sizeof(*sv));
	sv->tokens = calloc((size_t)n_vocab, sizeof(char *));
	sv->types = calloc((size_t)n_vocab, sizeof(int32_t));
	if (sv->tokens == NULL || sv->types == NULL)
		goto out_nomem;
	sv->n_tokens = n_vocab;
	for (int64_t i = 0; i < n_vocab; i++) {
		if (i < v->n_tokens) {
			sv->types[i] = v->types[i];
			continue;
		}
		char name[32];
		snprintf(name, sizeof(name), "[PAD%lld]", (long long)i);
		if ((sv->tokens[i] = strdup(name)) == NULL)
			goto out_nomem;
		sv->types[i] = 5; /* UNUSED */
	}
	/* The view: v's strings first, then the pads. sv->tokens[i < v->n_tokens]
	 * stays NULL so synth_vocab_free frees only the pads. */
	sv->view = malloc((size_t)n_vocab * sizeof(char *));
	if (sv->view == NULL)
		goto out_nomem;
	for (int64_t i = 0; i < n_vocab; i++)
		sv->view[i] = i < v->n_tokens ? v->tokens[i] : sv->tokens[i];
	*out = *v;
	out->tokens = sv->view;
	out->types = sv->types;
	out->n_tokens = n_vocab;
	return MOE_OK;

out_nomem:
	synth_vocab_free(sv);
	return moe_fail(MOE_ERR_NOMEM, "padded vocabulary");
}

/* ---- writing ---------------------------------------------------------------------------- */

/* "<arch>.<suffix>" in buf (128 bytes). */
static const char *akey(char *buf, const char *arch, const char *suffix)
{
	snprintf(buf, 128, "%s.%s", arch, suffix);
	return buf;
}

/* Copies every tokenizer.* key of g, in its order. */
static moe_err copy_tokenizer(moe_gguf_writer *w, const moe_gguf *g)
{
	static const char prefix[] = "tokenizer.";
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		const moe_gguf_str k = moe_gguf_kv_key(g, i);
		if (k.len < sizeof(prefix) - 1 || memcmp(k.ptr, prefix, sizeof(prefix) - 1) != 0)
			continue;
		moe_err err = moe_gguf_writer_copy_kv(w, g, i);
		if (err != MOE_OK)
			return err;
	}
	return MOE_OK;
}

/* The tokenizer keys are vocab's, or (tok_g non-NULL) copied from tok_g. */
static moe_err write_metadata(moe_gguf_writer *w, const preset *p, const char *arch,
                              int64_t n_layer, moe_ftype ft, const moe_synth_vocab *vocab,
                              const moe_gguf *tok_g)
{
	const synth_arch sa = arch_of(arch);
	const bool hybrid = sa != SYN_QWEN3MOE;
	const int64_t n_nextn = p->n_nextn;
	char key[128], name[128];
	moe_err err = MOE_OK;

	snprintf(name, sizeof(name), "%s-%s", arch, p->name);
	if ((err = moe_gguf_writer_add_str(w, "general.architecture", arch)) ||
	    (err = moe_gguf_writer_add_str(w, "general.type", "model")) ||
	    (err = moe_gguf_writer_add_str(w, "general.name", name)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "block_count"),
	                                   (uint32_t)(n_layer + n_nextn))) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "context_length"),
	                                   (uint32_t)p->n_ctx)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "embedding_length"),
	                                   (uint32_t)p->n_embd)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "feed_forward_length"),
	                                   (uint32_t)p->n_ff)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "attention.head_count"),
	                                   (uint32_t)p->n_head)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "attention.head_count_kv"),
	                                   (uint32_t)p->n_head_kv)) ||
	    (err = moe_gguf_writer_add_f32(w, akey(key, arch, "rope.freq_base"),
	                                   hybrid ? p->rope_base_next : p->rope_base_moe)) ||
	    (err = moe_gguf_writer_add_f32(w, akey(key, arch, "attention.layer_norm_rms_epsilon"),
	                                   1e-6f)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "expert_count"),
	                                   (uint32_t)p->n_expert)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "expert_used_count"),
	                                   (uint32_t)p->n_expert_used)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "attention.key_length"),
	                                   (uint32_t)p->head_dim)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "attention.value_length"),
	                                   (uint32_t)p->head_dim)) ||
	    (err = moe_gguf_writer_add_u32(w, "general.file_type", (uint32_t)ft)) ||
	    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "expert_feed_forward_length"),
	                                   (uint32_t)p->n_ff_exp)))
		return err;
	if (hybrid) {
		if ((err = moe_gguf_writer_add_u32(
		         w, akey(key, arch, "expert_shared_feed_forward_length"),
		         (uint32_t)p->n_ff_shexp)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "ssm.conv_kernel"),
		                                   (uint32_t)p->ssm_conv)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "ssm.state_size"),
		                                   (uint32_t)p->ssm_d_state)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "ssm.group_count"),
		                                   (uint32_t)p->ssm_n_group)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "ssm.time_step_rank"),
		                                   (uint32_t)p->ssm_dt_rank)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "ssm.inner_size"),
		                                   (uint32_t)(p->ssm_dt_rank * p->ssm_d_state))) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "full_attention_interval"),
		                                   (uint32_t)p->full_attn_interval)) ||
		    (err = moe_gguf_writer_add_u32(w, akey(key, arch, "rope.dimension_count"),
		                                   (uint32_t)p->n_rot)))
			return err;
	}
	if (sa == SYN_QWEN35MOE &&
	    (err = moe_gguf_writer_add_arr(w, akey(key, arch, "rope.dimension_sections"),
	                                   MOE_GGUF_INT32, p->rope_sections, 4)))
		return err;
	if (n_nextn > 0 && (err = moe_gguf_writer_add_u32(
	                        w, akey(key, arch, "nextn_predict_layers"), (uint32_t)n_nextn)))
		return err;
	if ((err = moe_gguf_writer_add_u32(w, "general.quantization_version", 2)) != MOE_OK)
		return err;
	if (tok_g != NULL)
		return copy_tokenizer(w, tok_g);
	if ((err = moe_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2")) ||
	    (err = moe_gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2")) ||
	    (err = moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", vocab->tokens,
	                                       (uint64_t)vocab->n_tokens)) ||
	    (err = moe_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_INT32,
	                                   vocab->types, (uint64_t)vocab->n_tokens)) ||
	    (err = moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", vocab->merges,
	                                       (uint64_t)vocab->n_merges)))
		return err;
	if (vocab->eos >= 0 &&
	    (err = moe_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)vocab->eos)))
		return err;
	if (vocab->pad >= 0 && (err = moe_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id",
	                                                      (uint32_t)vocab->pad)))
		return err;
	if (vocab->bos >= 0 &&
	    (err = moe_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)vocab->bos)))
		return err;
	return moe_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
}

/* Generates, converts and writes one tensor in chunks of whole rows. */
/* Quantisation of a chunk of rows, split over the pool by index. */
typedef struct quant_job {
	const tensor_spec *t;
	const float *src;
	uint8_t *dst;
	int64_t n_rows;
	size_t row_bytes;
	_Atomic int err; /* first error, MOE_OK if none */
} quant_job;

static void quant_rows(void *arg, int ith, int nth)
{
	quant_job *j = arg;
	int64_t per = (j->n_rows + nth - 1) / nth;
	int64_t r0 = per * ith, r1 = r0 + per < j->n_rows ? r0 + per : j->n_rows;

	for (int64_t r = r0; r < r1; r++) {
		moe_err e = moe_quantize_row(j->t->type, j->dst + (size_t)r * j->row_bytes,
		                             j->src + r * j->t->ne[0], j->t->ne[0]);
		if (e != MOE_OK) {
			int ok = MOE_OK;
			atomic_compare_exchange_strong(&j->err, &ok, (int)e);
			return;
		}
	}
}

/* Opens dir/<t's name> for reading after checking it holds exactly t's
 * values as F32. */
static moe_err open_weights(FILE **out, const char *dir, const tensor_spec *t)
{
	char path[4096];
	const int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
	if (snprintf(path, sizeof(path), "%s/%s", dir, t->name) >= (int)sizeof(path))
		return moe_fail(MOE_ERR_INVAL, "weights: path too long for %s", t->name);
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return moe_fail(MOE_ERR_IO, "weights: cannot open %s", path);
	long size = -1;
	if (fseek(f, 0, SEEK_END) == 0)
		size = ftell(f);
	if (size != (long)(n * (int64_t)sizeof(float)) || fseek(f, 0, SEEK_SET) != 0) {
		fclose(f);
		return moe_fail(MOE_ERR_FORMAT, "weights: %s has %ld bytes, not %lld (%lld F32)",
		                path, size, (long long)(n * (int64_t)sizeof(float)), (long long)n);
	}
	*out = f;
	return MOE_OK;
}

/* n little-endian F32 values of f into dst, all finite. */
static moe_err read_weights(float *dst, int64_t n, FILE *f, const tensor_spec *t)
{
	uint8_t *b = (uint8_t *)dst;
	if (fread(dst, sizeof(float), (size_t)n, f) != (size_t)n)
		return moe_fail(MOE_ERR_IO, "weights: short read in %s", t->name);
	for (int64_t i = 0; i < n; i++) {
		const uint8_t *p = b + 4 * i;
		const uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		                   (uint32_t)p[3] << 24;
		memcpy(&dst[i], &u, sizeof(u));
		if (!isfinite(dst[i]))
			return moe_fail(MOE_ERR_BAD_VALUE, "weights: %s value %lld is not finite",
			                t->name, (long long)i);
	}
	return MOE_OK;
}

/* The rows of t, random or (wf non-NULL) read from wf, converted and
 * written in chunks. */
static moe_err write_rows(moe_gguf_writer *w, moe_pool *pool, const tensor_spec *t, uint64_t seed,
                          float *fbuf, void *qbuf, int64_t chunk_vals, uint64_t *done,
                          uint64_t total, const moe_synth_opts *o, FILE *wf)
{
	int64_t ne0 = t->ne[0];
	int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
	int64_t rows_per_chunk = chunk_vals / ne0 > 0 ? chunk_vals / ne0 : 1;
	size_t row_bytes = moe_row_size(t->type, ne0);
	rng r;
	moe_err err;

	rng_seed(&r, seed, name_hash(t->name));
	for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
		int64_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
		if (wf != NULL) {
			if ((err = read_weights(fbuf, nr * ne0, wf, t)) != MOE_OK)
				return err;
		} else {
			fill(fbuf, nr * ne0, t, &r);
		}
		if (t->type == MOE_TYPE_F32) {
			err = moe_gguf_writer_write(w, fbuf, (size_t)(nr * ne0) * sizeof(float));
		} else {
			quant_job j = {t, fbuf, qbuf, nr, row_bytes, MOE_OK};
			moe_pool_run(pool, quant_rows, &j);
			if ((err = (moe_err)atomic_load(&j.err)) != MOE_OK)
				return moe_fail(err, "%s: quantising to %s failed", t->name,
				                moe_type_get(t->type)->name);
			err = moe_gguf_writer_write(w, qbuf, (size_t)nr * row_bytes);
		}
		if (err != MOE_OK)
			return err;
		*done += (uint64_t)nr * row_bytes;
		if (o->progress)
			o->progress(o->progress_ctx, *done, total);
	}
	return MOE_OK;
}

/* Generates (one random stream per tensor, in row order) or reads (from
 * o->weights_dir), converts and writes one tensor in chunks of whole rows. */
static moe_err write_tensor(moe_gguf_writer *w, moe_pool *pool, const tensor_spec *t, uint64_t seed,
                            float *fbuf, void *qbuf, int64_t chunk_vals, uint64_t *done,
                            uint64_t total, const moe_synth_opts *o)
{
	FILE *wf = NULL;
	moe_err err = o->weights_dir != NULL ? open_weights(&wf, o->weights_dir, t) : MOE_OK;
	if (err != MOE_OK)
		return err;
	err = write_rows(w, pool, t, seed, fbuf, qbuf, chunk_vals, done, total, o, wf);
	if (wf != NULL)
		fclose(wf);
	return err;
}

/* Rows of token_embd / output: the preset's, or a tokenizer's token count
 * rounded up to a multiple of 64 where that is more. */
static int64_t vocab_rows(const preset *p, int64_t n_tokens)
{
	int64_t r = (n_tokens + 63) / 64 * 64;
	return r > p->n_vocab ? r : p->n_vocab;
}

/* Checks the options and builds the typed tensor list; *pp gets the preset
 * with the options' MTP blocks in n_nextn. */
static moe_err plan(tensor_list *tl, preset *pp, int64_t *n_layer_out, const moe_synth_opts *o,
                    int64_t n_vocab_tokens)
{
	const preset *found;
	preset *p = pp;
	int64_t n_layer;
	moe_err err;

	if (o == NULL || o->arch == NULL || o->preset == NULL)
		return moe_fail(MOE_ERR_INVAL, "make-model: arch and preset are required");
	if (strcmp(o->arch, "qwen3moe") != 0 && strcmp(o->arch, "qwen3next") != 0 &&
	    strcmp(o->arch, "qwen35moe") != 0)
		return moe_fail(MOE_ERR_INVAL, "unknown arch '%s' (qwen3moe, qwen3next, qwen35moe)",
		                o->arch);
	found = find_preset(o->preset, o->arch);
	if (found == NULL)
		return moe_fail(MOE_ERR_INVAL,
		                "unknown preset '%s' (tiny, qwen3next-80b-4L, qwen3-30b-a3b-4L, "
		                "qwen35-397b-4L, tiny256, kjv)",
		                o->preset);
	if (found->arch != NULL && strcmp(found->arch, o->arch) != 0)
		return moe_fail(MOE_ERR_INVAL, "preset '%s' is for arch %s, not %s", found->name,
		                found->arch, o->arch);
	*p = *found;
	if (o->mtp < 0 || o->mtp > 4)
		return moe_fail(MOE_ERR_INVAL, "make-model: %d MTP blocks (0 to 4)", o->mtp);
	if (o->mtp > 0 && arch_of(o->arch) == SYN_QWEN3MOE)
		return moe_fail(MOE_ERR_INVAL, "make-model: qwen3moe has no MTP blocks");
	if (o->mtp > 0)
		p->n_nextn = o->mtp;
	else if (o->mtp == 0 && arch_of(o->arch) != SYN_QWEN35MOE)
		p->n_nextn = 0;
	n_layer = o->n_layer > 0 ? o->n_layer : p->n_layer;
	if (n_layer > 1024)
		return moe_fail(MOE_ERR_INVAL, "%lld layers is too many", (long long)n_layer);
	if ((err = tensor_list_reserve(tl, n_layer + p->n_nextn)) != MOE_OK)
		return err;
	build_tensors(tl, p, arch_of(o->arch), n_layer, vocab_rows(p, n_vocab_tokens));
	int64_t n_v = 0, i_v = 0;
	for (size_t i = 0; i < tl->n; i++)
		n_v += tl->v[i].role == ROLE_MORE_V;
	for (size_t i = 0; i < tl->n; i++) {
		tensor_spec *t = &tl->v[i];
		t->type = pick_type(t, o->ftype, i_v, n_v, n_layer + p->n_nextn);
		i_v += t->role == ROLE_MORE_V;
		if (moe_row_size(t->type, t->ne[0]) == 0) {
			err = moe_fail(MOE_ERR_UNSUPPORTED, "%s: rows of %lld do not fit type %s",
			               t->name, (long long)t->ne[0], moe_type_get(t->type)->name);
			free(tl->v);
			tl->v = NULL;
			return err;
		}
	}
	*n_layer_out = n_layer;
	return MOE_OK;
}

moe_err moe_synth_plan(moe_synth_tensor **out, size_t *n, const moe_synth_opts *o)
{
	tensor_list tl = {0};
	preset pres;
	int64_t n_layer;
	moe_synth_tensor *v;
	moe_err err;

	err = plan(&tl, &pres, &n_layer, o, o && o->vocab ? o->vocab->n_tokens : 0);
	if (err != MOE_OK)
		return err;
	v = calloc(tl.n, sizeof(*v));
	if (v == NULL) {
		free(tl.v);
		return moe_fail(MOE_ERR_NOMEM, "tensor plan");
	}
	for (size_t i = 0; i < tl.n; i++) {
		memcpy(v[i].name, tl.v[i].name, sizeof(v[i].name));
		v[i].type = tl.v[i].type;
		v[i].n_dims = tl.v[i].n_dims;
		memcpy(v[i].ne, tl.v[i].ne, sizeof(v[i].ne));
		v[i].bytes = moe_row_size(tl.v[i].type, tl.v[i].ne[0]) *
		             (uint64_t)(tl.v[i].ne[1] * tl.v[i].ne[2] * tl.v[i].ne[3]);
	}
	free(tl.v);
	*out = v;
	*n = tl.n;
	return MOE_OK;
}

moe_err moe_synth_write(const char *path, const moe_synth_opts *o)
{
	preset pres;
	const preset *p = &pres;
	int64_t n_layer;
	tensor_list tl = {0};
	synth_vocab sv = {0};
	moe_synth_vocab vocab = {0};
	moe_gguf_writer *w = NULL;
	moe_pool *pool = NULL;
	moe_gguf *tok_g = NULL;
	float *fbuf = NULL;
	void *qbuf = NULL;
	const int64_t chunk_vals = 1 << 20;
	int64_t max_ne0 = 0;
	uint64_t total = 0, done = 0;
	moe_err err;

	err = plan(&tl, &pres, &n_layer, o, o && o->vocab ? o->vocab->n_tokens : 0);
	if (err != MOE_OK)
		return err;
	if (o->tokenizer_gguf != NULL) {
		moe_gguf_arr toks;
		if ((err = moe_gguf_open(&tok_g, o->tokenizer_gguf)) != MOE_OK ||
		    (err = moe_gguf_get_arr(&toks, tok_g, "tokenizer.ggml.tokens")) != MOE_OK)
			goto out_free;
		if ((int64_t)toks.n != vocab_rows(p, 0)) {
			err = moe_fail(MOE_ERR_INVAL, "%s has %llu tokens, preset %s has %lld rows",
			               o->tokenizer_gguf, (unsigned long long)toks.n, p->name,
			               (long long)vocab_rows(p, 0));
			goto out_free;
		}
	} else if (o->vocab != NULL && o->vocab->n_tokens < vocab_rows(p, o->vocab->n_tokens)) {
		err = pad_vocab(&sv, &vocab, o->vocab, vocab_rows(p, o->vocab->n_tokens));
		if (err != MOE_OK)
			goto out_free;
	} else if (o->vocab != NULL) {
		vocab = *o->vocab;
	} else {
		if ((err = synth_vocab_make(&sv, p->n_vocab)) != MOE_OK)
			goto out_free;
		vocab = (moe_synth_vocab){(const char *const *)sv.tokens,
		                          sv.types,
		                          sv.n_tokens,
		                          (const char *const *)sv.merges,
		                          sv.n_merges,
		                          (int32_t)sv.n_tokens - 3,
		                          (int32_t)sv.n_tokens - 1,
		                          (int32_t)sv.n_tokens - 3};
	}
	for (size_t i = 0; i < tl.n; i++) {
		const tensor_spec *t = &tl.v[i];
		total += moe_row_size(t->type, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2]);
		if (t->ne[0] > max_ne0)
			max_ne0 = t->ne[0];
	}

	fbuf = malloc((size_t)(chunk_vals > max_ne0 ? chunk_vals : max_ne0) * sizeof(float));
	qbuf = malloc((size_t)(chunk_vals > max_ne0 ? chunk_vals : max_ne0) * sizeof(float));
	if (fbuf == NULL || qbuf == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "make-model buffers");
		goto out_free;
	}
	if ((err = moe_pool_create(&pool, o->n_threads)) != MOE_OK)
		goto out_free;
	if ((err = moe_gguf_writer_create(&w, path)) != MOE_OK)
		goto out_pool;
	if ((err = write_metadata(w, p, o->arch, n_layer, o->ftype, &vocab, tok_g)) != MOE_OK)
		goto out_writer;
	for (size_t i = 0; i < tl.n; i++) {
		if ((err = moe_gguf_writer_add_tensor(w, tl.v[i].name, tl.v[i].type, tl.v[i].n_dims,
		                                      tl.v[i].ne)) != MOE_OK)
			goto out_writer;
	}
	if ((err = moe_gguf_writer_begin_data(w)) != MOE_OK)
		goto out_writer;
	for (size_t i = 0; i < tl.n; i++) {
		err = write_tensor(w, pool, &tl.v[i], o->seed, fbuf, qbuf, chunk_vals, &done, total,
		                   o);
		if (err != MOE_OK)
			goto out_writer;
	}
	err = moe_gguf_writer_finish(w);

out_writer:
	moe_gguf_writer_destroy(w);
out_pool:
	moe_pool_destroy(pool);
out_free:
	free(fbuf);
	free(qbuf);
	free(tl.v);
	synth_vocab_free(&sv);
	moe_gguf_close(tok_g);
	return err;
}
