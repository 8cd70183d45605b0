/*
 * forward.c - model loading (tensor checks), the inference context, sequence
 * slots and their snapshots (state and KV in and out), the MoE block with its
 * expert backend, and the step that runs a batch through every layer (see
 * forward.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

/* ---- model loading ------------------------------------------------------------------ */

/* Finds tensor name and checks its shape is exactly ne (n_dims entries, the
 * rest 1) and, if want_f32, that it is F32; otherwise that kernels/ can
 * compute with its type. */
static moe_err find_checked(const moe_gguf_tensor **out, const moe_gguf *g, const char *name,
                            bool want_f32, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2)
{
	const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
	if (t == NULL)
		return moe_fail(MOE_ERR_NOT_FOUND, "model: tensor %s is missing", name);
	const int64_t want[MOE_GGUF_MAX_DIMS] = {ne0, n_dims > 1 ? ne1 : 1, n_dims > 2 ? ne2 : 1,
	                                         1};
	for (int d = 0; d < MOE_GGUF_MAX_DIMS; d++) {
		if (t->ne[d] != want[d])
			return moe_fail(
			    MOE_ERR_BAD_SHAPE,
			    "model: tensor %s has ne [%lld, %lld, %lld, %lld], expected "
			    "[%lld, %lld, %lld, %lld] from the hyper-parameters",
			    name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
			    (long long)t->ne[3], (long long)want[0], (long long)want[1],
			    (long long)want[2], (long long)want[3]);
	}
	const moe_type_traits *tr = moe_type_get(t->type);
	if (want_f32 && t->type != MOE_TYPE_F32)
		return moe_fail(MOE_ERR_UNSUPPORTED, "model: tensor %s has type %s, expected F32",
		                name, tr != NULL && tr->name != NULL ? tr->name : "?");
	if (tr == NULL || !tr->compute)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "model: tensor %s has type %s, which kernels/ cannot compute", name,
		                tr != NULL && tr->name != NULL ? tr->name : "?");
	if (moe_row_size(t->type, ne0) == 0)
		return moe_fail(MOE_ERR_BAD_SHAPE,
		                "model: tensor %s: row length %lld is not a multiple of the %s "
		                "block (%lld)",
		                name, (long long)ne0, tr->name, (long long)tr->block_size);
	*out = t;
	return MOE_OK;
}

static moe_err get_vec(const float **out, const moe_gguf *g, const char *name, int64_t n)
{
	const moe_gguf_tensor *t = NULL;
	moe_err err = find_checked(&t, g, name, true, 1, n, 1, 1);
	if (err == MOE_OK)
		*out = t->data;
	return err;
}

static moe_err get_mat(moe_wmat *out, const moe_gguf *g, const char *name, int64_t n_cols,
                       int64_t n_rows)
{
	const moe_gguf_tensor *t = NULL;
	moe_err err = find_checked(&t, g, name, false, 2, n_cols, n_rows, 1);
	if (err != MOE_OK)
		return err;
	*out = (moe_wmat){.data = t->data, .type = t->type, .n_cols = n_cols, .n_rows = n_rows};
	return MOE_OK;
}

/* A stacked expert tensor: n_expert slabs of n_rows x n_cols. */
static moe_err get_exps(moe_expert_mat *out, const void **ptrs, const moe_gguf *g, const char *name,
                        int64_t n_cols, int64_t n_rows, int n_expert)
{
	const moe_gguf_tensor *t = NULL;
	moe_err err = find_checked(&t, g, name, false, 3, n_cols, n_rows, n_expert);
	if (err != MOE_OK)
		return err;
	const size_t slab = moe_row_size(t->type, n_cols) * (size_t)n_rows;
	for (int e = 0; e < n_expert; e++)
		ptrs[e] = (const char *)t->data + (size_t)e * slab;
	*out =
	    (moe_expert_mat){.type = t->type, .n_cols = n_cols, .n_rows = n_rows, .expert = ptrs};
	return MOE_OK;
}

/* "blk.<il>.<s>" in buf[128]. */
static const char *lname(char *buf, int il, const char *s)
{
	snprintf(buf, 128, "blk.%d.%s", il, s);
	return buf;
}

/* The gated (hybrid) or plain attention weights of block il. */
static moe_err load_attn(moe_model *m, int il)
{
	const moe_hparams *hp = &m->hp;
	const moe_gguf *g = m->g;
	moe_layer_w *L = &m->layers[il];
	const int64_t E = hp->n_embd, hd = hp->head_dim;
	const int64_t q_rows = (int64_t)hp->n_head * hd * (moe_arch_is_hybrid(hp->arch) ? 2 : 1);
	const int64_t kv_rows = (int64_t)hp->n_head_kv * hd;
	char nm[128];
	moe_err err;
	if ((err = get_mat(&L->wq, g, lname(nm, il, "attn_q.weight"), E, q_rows)) != MOE_OK ||
	    (err = get_mat(&L->wk, g, lname(nm, il, "attn_k.weight"), E, kv_rows)) != MOE_OK ||
	    (err = get_mat(&L->wv, g, lname(nm, il, "attn_v.weight"), E, kv_rows)) != MOE_OK ||
	    (err = get_mat(&L->wo, g, lname(nm, il, "attn_output.weight"), (int64_t)hp->n_head * hd,
	                   E)) != MOE_OK ||
	    (err = get_vec(&L->q_norm, g, lname(nm, il, "attn_q_norm.weight"), hd)) != MOE_OK ||
	    (err = get_vec(&L->k_norm, g, lname(nm, il, "attn_k_norm.weight"), hd)) != MOE_OK)
		return err;
	return MOE_OK;
}

/* The Gated DeltaNet weights of block il: qwen3next's ssm_ba, or qwen35moe's
 * ssm_beta and ssm_alpha. */
static moe_err load_deltanet(moe_model *m, int il)
{
	const moe_hparams *hp = &m->hp;
	const moe_gguf *g = m->g;
	moe_layer_w *L = &m->layers[il];
	const int64_t E = hp->n_embd;
	const int64_t nv = hp->ssm_n_v_heads, hv = hp->ssm_head_v;
	char nm[128];
	moe_err err;
	if ((err = get_mat(&L->wqkv, g, lname(nm, il, "attn_qkv.weight"), E, hp->ssm_conv_dim)) !=
	        MOE_OK ||
	    (err = get_mat(&L->wz, g, lname(nm, il, "attn_gate.weight"), E, nv * hv)) != MOE_OK ||
	    (err = get_mat(&L->ssm_out, g, lname(nm, il, "ssm_out.weight"), nv * hv, E)) !=
	        MOE_OK ||
	    (err = get_vec(&L->dt_bias, g, lname(nm, il, "ssm_dt.bias"), nv)) != MOE_OK ||
	    (err = get_vec(&L->ssm_a, g, lname(nm, il, "ssm_a"), nv)) != MOE_OK ||
	    (err = get_vec(&L->ssm_norm, g, lname(nm, il, "ssm_norm.weight"), hv)) != MOE_OK)
		return err;
	if (hp->arch == MOE_ARCH_QWEN35MOE) {
		if ((err = get_mat(&L->wbeta, g, lname(nm, il, "ssm_beta.weight"), E, nv)) !=
		        MOE_OK ||
		    (err = get_mat(&L->walpha, g, lname(nm, il, "ssm_alpha.weight"), E, nv)) !=
		        MOE_OK)
			return err;
	} else if ((err = get_mat(&L->wba, g, lname(nm, il, "ssm_ba.weight"), E, 2 * nv)) !=
	           MOE_OK) {
		return err;
	}
	const moe_gguf_tensor *t = NULL;
	if ((err = find_checked(&t, g, lname(nm, il, "ssm_conv1d.weight"), true, 2,
	                        hp->ssm_conv_kernel, hp->ssm_conv_dim, 1)) != MOE_OK)
		return err;
	L->conv1d = t->data;
	return MOE_OK;
}

/* Router, routed experts and shared expert of block il. */
static moe_err load_moe(moe_model *m, int il)
{
	const moe_hparams *hp = &m->hp;
	const moe_gguf *g = m->g;
	moe_layer_w *L = &m->layers[il];
	const int64_t E = hp->n_embd;
	const int ne = hp->n_expert;
	const void **ptrs = m->exp_ptrs + (size_t)il * 3 * (size_t)ne;
	char nm[128];
	moe_err err;
	L->exps.n_expert = ne;
	if ((err = get_mat(&L->router, g, lname(nm, il, "ffn_gate_inp.weight"), E, ne)) != MOE_OK ||
	    (err = get_exps(&L->exps.gate, ptrs, g, lname(nm, il, "ffn_gate_exps.weight"), E,
	                    hp->n_ff_exp, ne)) != MOE_OK ||
	    (err = get_exps(&L->exps.up, ptrs + ne, g, lname(nm, il, "ffn_up_exps.weight"), E,
	                    hp->n_ff_exp, ne)) != MOE_OK ||
	    (err = get_exps(&L->exps.down, ptrs + 2 * ne, g, lname(nm, il, "ffn_down_exps.weight"),
	                    hp->n_ff_exp, E, ne)) != MOE_OK)
		return err;
	if (hp->n_ff_shexp > 0) {
		const int64_t F = hp->n_ff_shexp;
		if ((err = get_vec(&L->sh_gate_inp, g, lname(nm, il, "ffn_gate_inp_shexp.weight"),
		                   E)) != MOE_OK ||
		    (err = get_mat(&L->sh_gate, g, lname(nm, il, "ffn_gate_shexp.weight"), E, F)) !=
		        MOE_OK ||
		    (err = get_mat(&L->sh_up, g, lname(nm, il, "ffn_up_shexp.weight"), E, F)) !=
		        MOE_OK ||
		    (err = get_mat(&L->sh_down, g, lname(nm, il, "ffn_down_shexp.weight"), F, E)) !=
		        MOE_OK)
			return err;
	}
	return MOE_OK;
}

static moe_err load_norms(moe_model *m, int il)
{
	const moe_gguf *g = m->g;
	moe_layer_w *L = &m->layers[il];
	const int64_t E = m->hp.n_embd;
	char nm[128];
	moe_err err = get_vec(&L->attn_norm, g, lname(nm, il, "attn_norm.weight"), E);
	if (err != MOE_OK)
		return err;
	return get_vec(&L->ffn_norm, g,
	               moe_arch_is_hybrid(m->hp.arch) ? lname(nm, il, "post_attention_norm.weight")
	                                              : lname(nm, il, "ffn_norm.weight"),
	               E);
}

static moe_err load_layer(moe_model *m, int il, int *n_kv, int *n_rec)
{
	moe_layer_w *L = &m->layers[il];
	moe_err err;
	if ((err = load_norms(m, il)) != MOE_OK)
		return err;
	L->idx_kv = L->idx_rec = -1;
	if (m->hp.recurrent[il]) {
		L->idx_rec = (*n_rec)++;
		err = load_deltanet(m, il);
	} else {
		L->idx_kv = (*n_kv)++;
		err = load_attn(m, il);
	}
	if (err != MOE_OK)
		return err;
	return load_moe(m, il);
}

/* An optional [n_embd] x rows matrix: data NULL when absent. */
static moe_err get_mat_opt(moe_wmat *out, const moe_gguf *g, const char *name, int64_t n_cols,
                           int64_t n_rows)
{
	if (moe_gguf_find_tensor(g, name) == NULL) {
		*out = (moe_wmat){0};
		return MOE_OK;
	}
	return get_mat(out, g, name, n_cols, n_rows);
}

/* MTP block il (>= n_layer): a gated-attention block with MoE plus the nextn
 * tensors, all checked as llama.cpp's loader names and shapes them. */
static moe_err load_nextn(moe_model *m, int il)
{
	const moe_hparams *hp = &m->hp;
	const moe_gguf *g = m->g;
	moe_layer_w *L = &m->layers[il];
	moe_nextn_w *N = &L->nextn;
	const int64_t E = hp->n_embd, V = hp->n_vocab;
	char nm[128];
	moe_err err;
	/* its KV, in a context with o.mtp, is the layer after the trunk's */
	L->idx_kv = moe_hparams_n_attn_layers(hp) + (il - hp->n_layer);
	L->idx_rec = -1;
	if ((err = load_norms(m, il)) != MOE_OK || (err = load_attn(m, il)) != MOE_OK ||
	    (err = load_moe(m, il)) != MOE_OK ||
	    (err = get_mat(&N->eh_proj, g, lname(nm, il, "nextn.eh_proj.weight"), 2 * E, E)) !=
	        MOE_OK ||
	    (err = get_vec(&N->enorm, g, lname(nm, il, "nextn.enorm.weight"), E)) != MOE_OK ||
	    (err = get_vec(&N->hnorm, g, lname(nm, il, "nextn.hnorm.weight"), E)) != MOE_OK ||
	    (err = get_mat_opt(&N->embed_tokens, g, lname(nm, il, "nextn.embed_tokens.weight"), E,
	                       V)) != MOE_OK ||
	    (err = get_mat_opt(&N->shared_head_head, g,
	                       lname(nm, il, "nextn.shared_head_head.weight"), E, V)) != MOE_OK)
		return err;
	N->shared_head_norm = NULL;
	if (moe_gguf_find_tensor(g, lname(nm, il, "nextn.shared_head_norm.weight")) != NULL)
		return get_vec(&N->shared_head_norm, g, nm, E);
	return MOE_OK;
}

moe_err moe_model_load(moe_model **out, const moe_gguf *g)
{
	moe_model *m = calloc(1, sizeof *m);
	if (m == NULL)
		return moe_fail(MOE_ERR_NOMEM, "model: allocating the model");
	m->g = g;
	moe_err err = moe_hparams_load(&m->hp, g);
	if (err != MOE_OK)
		goto out_free_model;
	const moe_hparams *hp = &m->hp;
	if (moe_arch_is_hybrid(hp->arch) && hp->n_ff_shexp == 0) {
		err = moe_fail(MOE_ERR_NOT_FOUND,
		               "hparams: required key %s.expert_shared_feed_forward_length "
		               "is missing",
		               moe_arch_name(hp->arch));
		goto out_free_model;
	}
	m->layers = calloc((size_t)hp->n_layer_all, sizeof *m->layers);
	m->exp_ptrs = calloc((size_t)hp->n_layer_all * 3 * (size_t)hp->n_expert, sizeof(void *));
	if (m->layers == NULL || m->exp_ptrs == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "model: allocating %d layers", hp->n_layer);
		goto out_free_layers;
	}

	if ((err = get_mat(&m->tok_embd, g, "token_embd.weight", hp->n_embd, hp->n_vocab)) !=
	        MOE_OK ||
	    (err = get_vec(&m->out_norm, g, "output_norm.weight", hp->n_embd)) != MOE_OK)
		goto out_free_layers;
	if (moe_gguf_find_tensor(g, "output.weight") != NULL) {
		if ((err = get_mat(&m->output, g, "output.weight", hp->n_embd, hp->n_vocab)) !=
		    MOE_OK)
			goto out_free_layers;
	} else {
		m->output = m->tok_embd; /* tied embeddings */
	}
	int n_kv = 0, n_rec = 0;
	for (int il = 0; il < hp->n_layer; il++)
		if ((err = load_layer(m, il, &n_kv, &n_rec)) != MOE_OK)
			goto out_free_layers;
	/* MTP blocks: loaded when the file has them (a converter may leave them
	 * out), never run by the main pass */
	char nm[128];
	m->has_nextn =
	    hp->n_layer_nextn > 0 &&
	    moe_gguf_find_tensor(g, lname(nm, hp->n_layer, "nextn.eh_proj.weight")) != NULL;
	for (int il = hp->n_layer; m->has_nextn && il < hp->n_layer_all; il++)
		if ((err = load_nextn(m, il)) != MOE_OK)
			goto out_free_layers;
	*out = m;
	return MOE_OK;

out_free_layers:
	free(m->layers);
	free(m->exp_ptrs);
out_free_model:
	free(m);
	return err;
}

moe_err moe_model_open(moe_model **out, const char *path)
{
	moe_gguf *g;
	moe_err err = moe_gguf_open(&g, path);
	if (err != MOE_OK)
		return err;
	moe_model *m;
	err = moe_model_load(&m, g);
	if (err != MOE_OK) {
		moe_gguf_close(g);
		return err;
	}
	m->owned = g;
	*out = m;
	return MOE_OK;
}

void moe_model_destroy(moe_model *m)
{
	if (m == NULL)
		return;
	free(m->layers);
	free(m->exp_ptrs);
	moe_gguf_close(m->owned);
	free(m);
}

const moe_hparams *moe_model_hparams(const moe_model *m)
{
	return &m->hp;
}

const moe_gguf *moe_model_gguf(const moe_model *m)
{
	return m->g;
}

bool moe_model_has_mtp(const moe_model *m)
{
	return m->has_nextn &&
	       (m->hp.arch == MOE_ARCH_QWEN35MOE || m->hp.arch == MOE_ARCH_QWEN3NEXT);
}

const moe_expert_ffn *moe_model_experts(const moe_model *m, int il)
{
	if (il < 0 || il >= m->hp.n_layer)
		return NULL;
	return &m->layers[il].exps;
}

/* ---- local expert backend ---------------------------------------------------------- */

static moe_err local_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                           const float *weights, int n_used)
{
	moe_local_experts *le = ctx;
	if (il < 0 || il >= le->m->hp.n_layer_all)
		return moe_fail(MOE_ERR_INVAL, "local experts: layer %d out of range", il);
	*le = (moe_local_experts){.m = le->m,
	                          .pool = le->pool,
	                          .il = il,
	                          .n_tok = n_tok,
	                          .x = x,
	                          .ids = ids,
	                          .w = weights,
	                          .n_used = n_used};
	return MOE_OK;
}

static moe_err local_finish(void *ctx, moe_fix_t *acc)
{
	moe_local_experts *le = ctx;
	return moe_expert_ffn_run(le->pool, acc, &le->m->layers[le->il].exps, le->x, le->n_tok,
	                          le->ids, le->w, le->n_used);
}

/* ---- context --------------------------------------------------------------------------- */

void moe_fwd_opts_default(moe_fwd_opts *o)
{
	*o = (moe_fwd_opts){
	    .n_slots = 1,
	    .n_ctx = 0,
	    .max_batch = 256,
	    .kv_type = MOE_TYPE_F16,
	    .kv_budget_bytes = 0,
	    .n_threads = 0,
	    .gdn_chunk = 0,
	    .mtp = false,
	    .keep_states = 0,
	    .experts = NULL,
	    .overlap = NULL,
	    .overlap_min_tok = 16,
	};
}

static const struct {
	const char *name;
	moe_type type;
} kv_types[] = {
    {"f32", MOE_TYPE_F32},
    {"f16", MOE_TYPE_F16},
    {"q8_0", MOE_TYPE_Q8_0},
    {"q4_0", MOE_TYPE_Q4_0},
};

moe_err moe_fwd_kv_type_parse(moe_type *out, const char *name)
{
	for (size_t i = 0; i < sizeof kv_types / sizeof kv_types[0]; i++) {
		if (strcmp(name, kv_types[i].name) == 0) {
			*out = kv_types[i].type;
			return MOE_OK;
		}
	}
	return moe_fail(MOE_ERR_INVAL, "fwd: KV type '%s' is not f32, f16, q8_0 or q4_0", name);
}

const char *moe_fwd_kv_type_name(moe_type t)
{
	for (size_t i = 0; i < sizeof kv_types / sizeof kv_types[0]; i++)
		if (kv_types[i].type == t)
			return kv_types[i].name;
	return "?";
}

static void *falloc(size_t n, size_t elem, bool *fail)
{
	size_t bytes;
	if (!moe_size_mul(&bytes, n, elem)) {
		*fail = true;
		return NULL;
	}
	void *p = moe_aligned_alloc(64, bytes);
	if (p == NULL)
		*fail = true;
	return p;
}

static void free_buffers(moe_fwd *f)
{
	void *bufs[] = {
	    f->open,       f->len,     f->next,     f->conv_state, f->ssm_state,  f->x,
	    f->xn,         f->y,       f->rope,     f->q,          f->k,          f->v,
	    f->att,        f->scores,  f->qkv,      f->z,          f->ba,         f->beta,
	    f->gdec,       f->gdn_tmp, f->conv_tmp, f->order,      f->runs,       f->run_slot,
	    f->run_of,     f->router,  f->ids,      f->wts,        f->acc,        f->sh_g,
	    f->sh_u,       f->mtp_h,   f->mtp_hn,   f->mtp_hin,    f->mtp_cat,    f->mtp_g,
	    f->mtp_logits, f->mtp_tok, f->mtp_slot, f->mtp_pos,    f->mtp_row,    f->ck,
	    f->ck_lo,      f->ck_hi,   f->ck_row,   f->mtp_pre,    f->mtp_pre_tok};
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		moe_aligned_free(bufs[i]);
	moe_kv_free(&f->kv);
}

moe_err moe_fwd_create(moe_fwd **out, const moe_model *m, const moe_fwd_opts *opts)
{
	const moe_hparams *hp = &m->hp;
	moe_fwd_opts o;
	if (opts != NULL)
		o = *opts;
	else
		moe_fwd_opts_default(&o);
	if (o.n_ctx == 0)
		o.n_ctx = hp->n_ctx_train < (1 << 24) ? hp->n_ctx_train : (1 << 24);
	if (o.n_slots < 1 || o.n_slots > 65536 || o.n_ctx < 1 || o.n_ctx > (1 << 24) ||
	    o.max_batch < 1 || o.max_batch > (1 << 20) || o.gdn_chunk < 0 || o.keep_states < 0 ||
	    o.keep_states > 4096)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: options out of range (n_slots %d, n_ctx %d, max_batch %d, "
		                "gdn_chunk %d, keep_states %d)",
		                o.n_slots, o.n_ctx, o.max_batch, o.gdn_chunk, o.keep_states);
	if (o.mtp && !moe_model_has_mtp(m))
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "fwd: MTP drafting needs a qwen35moe file with its MTP (nextn) "
		                "block; this %s file has none",
		                moe_arch_name(hp->arch));

	moe_fwd *f = calloc(1, sizeof *f);
	if (f == NULL)
		return moe_fail(MOE_ERR_NOMEM, "fwd: allocating the context");
	f->m = m;
	f->o = o;
	moe_err err = moe_kv_init(
	    &f->kv, o.kv_type, moe_hparams_n_attn_layers(hp) + (o.mtp ? 1 : 0),
	    (int64_t)hp->n_head_kv * hp->head_dim, o.n_slots, o.n_ctx, o.kv_budget_bytes);
	if (err != MOE_OK)
		goto out_free_kv;
	if ((err = moe_pool_create(&f->pool, o.n_threads)) != MOE_OK)
		goto out_free_kv;
	f->nth = moe_pool_threads(f->pool);

	const size_t B = (size_t)o.max_batch, S = (size_t)o.n_slots, E = (size_t)hp->n_embd;
	const size_t n_rec = (size_t)moe_hparams_n_recurrent_layers(hp);
	const size_t hd = (size_t)hp->head_dim;
	const size_t kvd = (size_t)hp->n_head_kv * hd;
	const size_t q_rows = (size_t)hp->n_head * hd * (moe_arch_is_hybrid(hp->arch) ? 2 : 1);
	const size_t vdim = (size_t)hp->ssm_n_v_heads * (size_t)hp->ssm_head_v;
	const size_t att = (size_t)hp->n_head * hd > vdim ? (size_t)hp->n_head * hd : vdim;
	const size_t cd = (size_t)hp->ssm_conv_dim;
	const size_t nv = (size_t)hp->ssm_n_v_heads;
	bool fail = false;

	f->open = falloc(S, sizeof(bool), &fail);
	f->len = falloc(S, sizeof(int64_t), &fail);
	f->next = falloc(S, sizeof(int64_t), &fail);
	f->run_of = falloc(S, sizeof(int32_t), &fail);

	const size_t conv_n =
	    n_rec * S * (size_t)(hp->ssm_conv_kernel > 0 ? hp->ssm_conv_kernel - 1 : 0) * cd;
	const size_t ssm_n = n_rec * S * nv * (size_t)hp->ssm_head_k * (size_t)hp->ssm_head_v;
	f->state_bytes = (conv_n + ssm_n) * sizeof(float);
	f->conv_state = falloc(conv_n, sizeof(float), &fail);
	f->ssm_state = falloc(ssm_n, sizeof(float), &fail);

	f->x = falloc(B * E, sizeof(float), &fail);
	f->xn = falloc(B * E, sizeof(float), &fail);
	f->y = falloc(B * E, sizeof(float), &fail);
	f->rope = falloc(B * (size_t)hp->n_rot, sizeof(float), &fail);
	f->q = falloc(B * q_rows, sizeof(float), &fail);
	f->k = falloc(B * kvd, sizeof(float), &fail);
	f->v = falloc(B * kvd, sizeof(float), &fail);
	f->att = falloc(B * att, sizeof(float), &fail);
	f->qkv = falloc(B * cd, sizeof(float), &fail);
	f->z = falloc(B * vdim, sizeof(float), &fail);
	f->ba = falloc(B * 2 * nv, sizeof(float), &fail);
	f->beta = falloc(B * nv, sizeof(float), &fail);
	f->gdec = falloc(B * nv, sizeof(float), &fail);
	f->gdn_tmp_n = moe_gdn_chunk_scratch(hp->ssm_head_k, hp->ssm_head_v);
	f->gdn_tmp = falloc((size_t)f->nth * f->gdn_tmp_n, sizeof(float), &fail);
	f->conv_tmp = falloc(cd, sizeof(float), &fail);
	f->order = falloc(B, sizeof(int32_t), &fail);
	f->runs = falloc(B + 1, sizeof(int32_t), &fail);
	f->run_slot = falloc(B, sizeof(int32_t), &fail);
	f->router = falloc(B * (size_t)hp->n_expert, sizeof(float), &fail);
	f->ids = falloc(B * (size_t)hp->n_expert_used, sizeof(int32_t), &fail);
	f->wts = falloc(B * (size_t)hp->n_expert_used, sizeof(float), &fail);
	f->acc = falloc(B * E, sizeof(moe_fix_t), &fail);
	f->sh_g = falloc(B * (size_t)hp->n_ff_shexp, sizeof(float), &fail);
	f->sh_u = falloc(B * (size_t)hp->n_ff_shexp, sizeof(float), &fail);
	if (o.mtp) {
		f->mtp_h = falloc(S * E, sizeof(float), &fail);
		f->mtp_hn = falloc(B * E, sizeof(float), &fail);
		f->mtp_hin = falloc(B * E, sizeof(float), &fail);
		f->mtp_cat = falloc(B * 2 * E, sizeof(float), &fail);
		f->mtp_g = falloc(B * E, sizeof(float), &fail);
		f->mtp_logits = falloc(S * (size_t)hp->n_vocab, sizeof(float), &fail);
		f->mtp_tok = falloc(B, sizeof(int32_t), &fail);
		f->mtp_slot = falloc(B, sizeof(int32_t), &fail);
		f->mtp_pos = falloc(B, sizeof(int32_t), &fail);
		f->mtp_row = falloc(S, sizeof(int32_t), &fail);
		f->mtp_pre = falloc(S, sizeof(int64_t), &fail);
		f->mtp_pre_tok = falloc(S, sizeof(int32_t), &fail);
		f->state_bytes += S * E * sizeof(float);
	}
	/* rewind checkpoints: keep_states states per slot, if they fit */
	f->ck_floats = f->state_bytes / sizeof(float) / S;
	if ((double)f->ck_floats * sizeof(float) * (double)S * (double)o.keep_states >
	    (double)MOE_FWD_KEEP_MAX_BYTES)
		f->o.keep_states = 0;
	f->ck_lo = falloc(S, sizeof(int64_t), &fail);
	f->ck_hi = falloc(S, sizeof(int64_t), &fail);
	if (f->o.keep_states > 0) {
		f->ck = falloc(S * (size_t)f->o.keep_states * (f->ck_floats > 0 ? f->ck_floats : 1),
		               sizeof(float), &fail);
		f->ck_row = falloc(B, sizeof(float *), &fail);
	}
	if (fail) {
		err = moe_fail(MOE_ERR_NOMEM, "fwd: allocating buffers (state %zu bytes)",
		               f->state_bytes);
		goto out_free_buffers;
	}
	memset(f->open, 0, S * sizeof(bool));
	memset(f->len, 0, S * sizeof(int64_t));
	memset(f->ck_lo, 0, S * sizeof(int64_t));
	memset(f->ck_hi, 0, S * sizeof(int64_t));

	f->local = (moe_local_experts){.m = m, .pool = f->pool};
	f->local_backend =
	    (moe_expert_backend){.ctx = &f->local, .start = local_start, .finish = local_finish};
	f->backend = o.experts != NULL ? *o.experts : f->local_backend;
	f->o.experts = NULL;
	moe_fwd_set_overlap(f, o.overlap);
	f->o.overlap = NULL;
	*out = f;
	return MOE_OK;

out_free_buffers:
	free_buffers(f);
	moe_pool_destroy(f->pool);
	free(f);
	return err;
out_free_kv:
	moe_kv_free(&f->kv);
	free(f);
	return err;
}

void moe_fwd_destroy(moe_fwd *f)
{
	if (f == NULL)
		return;
	free_buffers(f);
	moe_pool_destroy(f->pool);
	free(f);
}

size_t moe_fwd_kv_bytes(const moe_fwd *f)
{
	return f->kv.in_use;
}

size_t moe_fwd_kv_capacity(const moe_fwd *f)
{
	if (f->kv.budget == 0)
		return SIZE_MAX;
	if (f->kv.blk_bytes == 0)
		return 0;
	return f->kv.budget / f->kv.blk_bytes * f->kv.blk_bytes;
}

size_t moe_fwd_kv_pos_bytes(const moe_fwd *f)
{
	return (size_t)f->kv.n_layers * 2 * f->kv.row;
}

size_t moe_fwd_state_bytes(const moe_fwd *f)
{
	return f->state_bytes;
}

moe_pool *moe_fwd_pool(const moe_fwd *f)
{
	return f->pool;
}

moe_expert_backend moe_fwd_experts(const moe_fwd *f)
{
	return f->backend;
}

void moe_fwd_set_experts(moe_fwd *f, const moe_expert_backend *b)
{
	f->backend = *b;
}

void moe_fwd_set_overlap(moe_fwd *f, const moe_expert_backend *b)
{
	f->has_overlap = b != NULL;
	f->overlap = b != NULL ? *b : (moe_expert_backend){0};
}

bool moe_fwd_has_overlap(const moe_fwd *f)
{
	return f->has_overlap;
}

/* ---- sequence slots ----------------------------------------------------------------- */

/* Floats of one slot's conv state and recurrent state in one DeltaNet layer. */
static size_t conv_floats(const moe_hparams *hp)
{
	return (size_t)(hp->ssm_conv_kernel > 0 ? hp->ssm_conv_kernel - 1 : 0) *
	       (size_t)hp->ssm_conv_dim;
}

static size_t ssm_floats(const moe_hparams *hp)
{
	return (size_t)hp->ssm_n_v_heads * (size_t)hp->ssm_head_k * (size_t)hp->ssm_head_v;
}

static void clear_slot(moe_fwd *f, int slot)
{
	const moe_hparams *hp = &f->m->hp;
	const size_t S = (size_t)f->o.n_slots;
	const size_t n_rec = (size_t)moe_hparams_n_recurrent_layers(hp);
	const size_t conv = conv_floats(hp), ssm = ssm_floats(hp);
	for (size_t r = 0; r < n_rec; r++) {
		memset(f->conv_state + (r * S + (size_t)slot) * conv, 0, conv * sizeof(float));
		memset(f->ssm_state + (r * S + (size_t)slot) * ssm, 0, ssm * sizeof(float));
	}
	if (f->mtp_h != NULL)
		memset(f->mtp_h + (size_t)slot * (size_t)hp->n_embd, 0,
		       (size_t)hp->n_embd * sizeof(float));
	/* Its KV blocks go back; positions >= len are never read. */
	moe_kv_trim(&f->kv, slot, 0);
	f->len[slot] = 0;
	f->ck_lo[slot] = f->ck_hi[slot] = 0;
	if (f->mtp_pre != NULL)
		f->mtp_pre[slot] = -1;
}

moe_err moe_fwd_seq_open(moe_fwd *f, int *slot)
{
	for (int s = 0; s < f->o.n_slots; s++) {
		if (!f->open[s]) {
			f->open[s] = true;
			clear_slot(f, s);
			*slot = s;
			return MOE_OK;
		}
	}
	return moe_fail(MOE_ERR_BUSY, "fwd: all %d sequence slots are in use", f->o.n_slots);
}

moe_err moe_fwd_seq_close(moe_fwd *f, int slot)
{
	if (slot < 0 || slot >= f->o.n_slots || !f->open[slot])
		return moe_fail(MOE_ERR_INVAL, "fwd: slot %d is not open", slot);
	f->open[slot] = false;
	moe_kv_trim(&f->kv, slot, 0);
	return MOE_OK;
}

moe_err moe_fwd_seq_reset(moe_fwd *f, int slot)
{
	if (slot < 0 || slot >= f->o.n_slots || !f->open[slot])
		return moe_fail(MOE_ERR_INVAL, "fwd: slot %d is not open", slot);
	clear_slot(f, slot);
	return MOE_OK;
}

int64_t moe_fwd_seq_len(const moe_fwd *f, int slot)
{
	if (slot < 0 || slot >= f->o.n_slots || !f->open[slot])
		return -1;
	return f->len[slot];
}

/* ---- sequence snapshots ----------------------------------------------------------------- */

static moe_err check_open(const moe_fwd *f, int slot)
{
	if (slot < 0 || slot >= f->o.n_slots || !f->open[slot])
		return moe_fail(MOE_ERR_INVAL, "fwd: slot %d is not open", slot);
	return MOE_OK;
}

size_t moe_fwd_state_size(const moe_fwd *f)
{
	const moe_hparams *hp = &f->m->hp;
	return ((size_t)moe_hparams_n_recurrent_layers(hp) * (conv_floats(hp) + ssm_floats(hp)) +
	        (f->mtp_h != NULL ? (size_t)hp->n_embd : 0)) *
	       sizeof(float);
}

/* Copies slot's state out (to_state false) or in (true) through buf. */
static void copy_state(const moe_fwd *f, int slot, float *buf, bool to_state)
{
	const moe_hparams *hp = &f->m->hp;
	const size_t S = (size_t)f->o.n_slots;
	const size_t n_rec = (size_t)moe_hparams_n_recurrent_layers(hp);
	const size_t conv = conv_floats(hp), ssm = ssm_floats(hp);
	for (size_t r = 0; r < n_rec; r++) {
		float *c = f->conv_state + (r * S + (size_t)slot) * conv;
		float *st = f->ssm_state + (r * S + (size_t)slot) * ssm;
		memcpy(to_state ? c : buf, to_state ? buf : c, conv * sizeof(float));
		buf += conv;
		memcpy(to_state ? st : buf, to_state ? buf : st, ssm * sizeof(float));
		buf += ssm;
	}
	if (f->mtp_h != NULL) {
		float *h = f->mtp_h + (size_t)slot * (size_t)hp->n_embd;
		memcpy(to_state ? h : buf, to_state ? buf : h, (size_t)hp->n_embd * sizeof(float));
	}
}

moe_err moe_fwd_seq_state_read(const moe_fwd *f, int slot, void *out)
{
	moe_err err = check_open(f, slot);
	if (err == MOE_OK)
		copy_state(f, slot, out, false);
	return err;
}

moe_err moe_fwd_seq_state_write(moe_fwd *f, int slot, const void *in)
{
	moe_err err = check_open(f, slot);
	if (err == MOE_OK) {
		copy_state(f, slot, (float *)in, true);
		f->ck_lo[slot] = f->ck_hi[slot] = 0;
		if (f->mtp_pre != NULL)
			f->mtp_pre[slot] = -1;
	}
	return err;
}

moe_err moe_fwd_seq_kv_read(const moe_fwd *f, int slot, int64_t p0, int64_t p1, void *out)
{
	moe_err err = check_open(f, slot);
	if (err != MOE_OK)
		return err;
	const int64_t held = f->kv.seq[slot].held;
	if (p0 < 0 || p0 > p1 || p1 > held)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: KV read of positions [%lld, %lld) of slot %d, which holds "
		                "[0, %lld)",
		                (long long)p0, (long long)p1, slot, (long long)held);
	moe_kv_read(&f->kv, slot, p0, p1, out);
	return MOE_OK;
}

moe_err moe_fwd_seq_kv_write(moe_fwd *f, int slot, int64_t p0, int64_t p1, const void *in)
{
	moe_err err = check_open(f, slot);
	if (err != MOE_OK)
		return err;
	const int64_t held = f->kv.seq[slot].held;
	if (p0 < 0 || p0 > p1 || p1 > f->o.n_ctx || p0 > held)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: KV write of positions [%lld, %lld) into slot %d, which "
		                "holds [0, %lld) of n_ctx %d (no gaps)",
		                (long long)p0, (long long)p1, slot, (long long)held, f->o.n_ctx);
	if (f->mtp_pre != NULL)
		f->mtp_pre[slot] = -1;
	return moe_kv_write(&f->kv, slot, p0, p1, in);
}

moe_err moe_fwd_seq_set_len(moe_fwd *f, int slot, int64_t n)
{
	moe_err err = check_open(f, slot);
	if (err != MOE_OK)
		return err;
	const int64_t held = f->kv.seq[slot].held;
	if (n < 0 || n > held)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: slot %d cannot continue at position %lld: it holds KV "
		                "[0, %lld)",
		                slot, (long long)n, (long long)held);
	moe_kv_trim(&f->kv, slot, n);
	f->len[slot] = n;
	f->ck_lo[slot] = f->ck_hi[slot] = 0;
	if (f->mtp_pre != NULL)
		f->mtp_pre[slot] = -1;
	return MOE_OK;
}

int moe_fwd_keep_states(const moe_fwd *f)
{
	return f->o.keep_states;
}

moe_err moe_fwd_seq_rewind(moe_fwd *f, int slot, int64_t n)
{
	moe_err err = check_open(f, slot);
	if (err != MOE_OK || n == f->len[slot])
		return err;
	if (f->ck_hi[slot] != f->len[slot] || moe_fwd_ck(f, slot, n) == NULL)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: slot %d (length %lld) holds no checkpoint of length %lld "
		                "(kept: [%lld, %lld))",
		                slot, (long long)f->len[slot], (long long)n,
		                (long long)f->ck_lo[slot], (long long)f->ck_hi[slot]);
	copy_state(f, slot, moe_fwd_ck(f, slot, n), true);
	return moe_fwd_seq_set_len(f, slot, n);
}

/* ---- the step ------------------------------------------------------------------------ */

moe_err moe_fwd_matmul(moe_fwd *f, float *y, const moe_wmat *w, const float *x, int64_t n_tok)
{
	return moe_matmul(f->pool, y, w->data, w->type, w->n_rows, w->n_cols, x, n_tok);
}

/* The router on f->xn: f->ids and f->wts. */
static moe_err route(moe_fwd *f, const moe_layer_w *L)
{
	const moe_hparams *hp = &f->m->hp;
	const int ne = hp->n_expert, k = hp->n_expert_used;
	moe_err err;
	if ((err = moe_fwd_matmul(f, f->router, &L->router, f->xn, f->n)) != MOE_OK)
		return err;
	for (int64_t t = 0; t < f->n; t++) {
		float *p = f->router + t * ne;
		float *w = f->wts + t * k;
		moe_softmax(p, ne);
		moe_topk(f->ids + t * k, w, p, ne, k);
		float sum = 0.0f;
		for (int j = 0; j < k; j++)
			sum += w[j];
		for (int j = 0; j < k; j++)
			w[j] /= sum;
	}
	return MOE_OK;
}

/* The first half of layer il on the chunk (or micro-batch) f->x: attention or
 * DeltaNet, its residual, the FFN norm into f->xn, the router, and be's start
 * (f->acc zeroed).  *started says whether be's finish is owed. */
static moe_err layer_pre(moe_fwd *f, int il, const moe_expert_backend *be, bool *started)
{
	const moe_hparams *hp = &f->m->hp;
	const moe_layer_w *L = &f->m->layers[il];
	const int64_t n = f->n, E = hp->n_embd;
	moe_err err;
	*started = false;
	for (int64_t t = 0; t < n; t++)
		moe_rmsnorm(f->xn + t * E, f->x + t * E, L->attn_norm, E, hp->rms_eps);
	err = L->idx_rec >= 0 ? moe_fwd_deltanet(f, il) : moe_fwd_attention(f, il);
	if (err != MOE_OK)
		return err;
	for (int64_t i = 0; i < n * E; i++)
		f->x[i] += f->y[i];
	for (int64_t t = 0; t < n; t++)
		moe_rmsnorm(f->xn + t * E, f->x + t * E, L->ffn_norm, E, hp->rms_eps);
	if ((err = route(f, L)) != MOE_OK)
		return err;
	memset(f->acc, 0, (size_t)n * (size_t)E * sizeof(moe_fix_t));
	if ((err = be->start(be->ctx, il, n, f->xn, f->ids, f->wts, hp->n_expert_used)) != MOE_OK)
		return err;
	*started = true;
	return MOE_OK;
}

/* The second half of layer il after layer_pre: the shared expert while be's
 * call is in flight, be's finish (always: it is owed), the sum into f->y and
 * the residual. */
static moe_err layer_post(moe_fwd *f, int il, const moe_expert_backend *be)
{
	const moe_hparams *hp = &f->m->hp;
	const moe_layer_w *L = &f->m->layers[il];
	const int64_t n = f->n, E = hp->n_embd;
	moe_err err, sh_err = MOE_OK;
	if (L->sh_gate_inp != NULL) {
		const int64_t F = hp->n_ff_shexp;
		if ((sh_err = moe_fwd_matmul(f, f->sh_g, &L->sh_gate, f->xn, n)) == MOE_OK &&
		    (sh_err = moe_fwd_matmul(f, f->sh_u, &L->sh_up, f->xn, n)) == MOE_OK) {
			moe_swiglu(f->sh_g, f->sh_g, f->sh_u, n * F);
			sh_err = moe_fwd_matmul(f, f->y, &L->sh_down, f->sh_g, n);
		}
	}
	/* finish is owed after a successful start, whatever happened since */
	err = be->finish(be->ctx, f->acc);
	if (sh_err != MOE_OK)
		return sh_err;
	if (err != MOE_OK)
		return err;

	for (int64_t t = 0; t < n; t++) {
		const moe_fix_t *a = f->acc + t * E;
		float *y = f->y + t * E;
		if (L->sh_gate_inp != NULL) {
			const float gate =
			    moe_sigmoid(moe_dot_f32(L->sh_gate_inp, f->xn + t * E, E));
			for (int64_t c = 0; c < E; c++)
				y[c] = moe_fix_to_f32(a[c]) + y[c] * gate;
		} else {
			for (int64_t c = 0; c < E; c++)
				y[c] = moe_fix_to_f32(a[c]);
		}
	}
	for (int64_t i = 0; i < n * E; i++)
		f->x[i] += f->y[i];
	return MOE_OK;
}

void moe_fwd_rope_row(moe_fwd *f, int64_t t, int64_t pos)
{
	const moe_hparams *hp = &f->m->hp;
	float *cs = f->rope + t * hp->n_rot;
	if (hp->arch == MOE_ARCH_QWEN35MOE)
		moe_rope_cache_imrope(cs, pos, hp->n_rot, hp->rope_base, hp->rope_sections);
	else
		moe_rope_cache(cs, pos, hp->n_rot, hp->rope_base);
}

/* Groups the chunk's tokens by slot, slots in order of first appearance and
 * tokens in batch order: order[runs[r] .. runs[r+1]) are run r's tokens,
 * run_slot[r] its slot. */
void moe_fwd_group_runs(moe_fwd *f)
{
	for (int64_t t = 0; t < f->n; t++)
		f->run_of[f->slot[t]] = -1;
	f->n_runs = 0;
	for (int64_t t = 0; t < f->n; t++) {
		const int s = f->slot[t];
		if (f->run_of[s] < 0) {
			f->run_of[s] = f->n_runs;
			f->run_slot[f->n_runs++] = s;
		}
	}
	int32_t at = 0;
	for (int r = 0; r < f->n_runs; r++) {
		f->runs[r] = at;
		for (int64_t t = 0; t < f->n; t++)
			if (f->slot[t] == f->run_slot[r])
				f->order[at++] = (int32_t)t;
	}
	f->runs[f->n_runs] = at;
}

moe_err moe_fwd_layer(moe_fwd *f, int il)
{
	bool started;
	moe_err err = layer_pre(f, il, &f->backend, &started);
	if (err != MOE_OK)
		return err;
	return layer_post(f, il, &f->backend);
}

/* ---- two micro-batches ---------------------------------------------------------------
 * A chunk cut between sequences into A = tokens [0, cut) and B = [cut, n) runs
 * layer by layer as A.pre(0), then per layer il: B.pre(il), A.post(il),
 * A.pre(il + 1), B.post(il).  So A's routed experts are in flight (on f->backend)
 * while B's attention, router and dispatch and A's own shared expert compute,
 * and B's (on f->overlap) while A finishes and starts the next layer and B's
 * shared expert computes.  Every token meets the same arithmetic as in one
 * pass: attention and DeltaNet are per sequence, the matmuls batch-invariant,
 * the routed sums exact. */

/* The chunk's token-indexed buffers (a view on them is a micro-batch). */
typedef struct fwd_view {
	int64_t n;
	const int32_t *slot, *pos;
	float *x, *xn, *y, *rope, *wts;
	int32_t *ids;
	moe_fix_t *acc;
} fwd_view;

static fwd_view view_get(const moe_fwd *f)
{
	return (fwd_view){.n = f->n,
	                  .slot = f->slot,
	                  .pos = f->pos,
	                  .x = f->x,
	                  .xn = f->xn,
	                  .y = f->y,
	                  .rope = f->rope,
	                  .wts = f->wts,
	                  .ids = f->ids,
	                  .acc = f->acc};
}

/* Points f at tokens [t0, t0 + n) of the chunk whole (and groups their runs). */
static void view_set(moe_fwd *f, const fwd_view *whole, int64_t t0, int64_t n)
{
	const moe_hparams *hp = &f->m->hp;
	const int64_t E = hp->n_embd, k = hp->n_expert_used;
	f->n = n;
	f->slot = whole->slot + t0;
	f->pos = whole->pos + t0;
	f->x = whole->x + t0 * E;
	f->xn = whole->xn + t0 * E;
	f->y = whole->y + t0 * E;
	f->rope = whole->rope + t0 * hp->n_rot;
	f->wts = whole->wts + t0 * k;
	f->ids = whole->ids + t0 * k;
	f->acc = whole->acc + t0 * E;
	moe_fwd_group_runs(f);
}

/* Where the chunk can be cut into two parts that share no sequence, nearest
 * its middle; 0 where it cannot (or is not to be). */
static int64_t split_point(moe_fwd *f)
{
	const int64_t n = f->n;
	if (!f->has_overlap || n < 2 || n < f->o.overlap_min_tok || n > MOE_FWD_OVERLAP_MAX_TOK ||
	    f->m->hp.n_layer < 1)
		return 0;
	for (int64_t t = 0; t < n; t++)
		f->run_of[f->slot[t]] = (int32_t)t; /* each slot's last token */
	int64_t best = 0, reach = -1;
	for (int64_t t = 0; t + 1 < n; t++) {
		if (f->run_of[f->slot[t]] > reach)
			reach = f->run_of[f->slot[t]];
		const int64_t cut = t + 1, d = 2 * cut - n, bd = 2 * best - n;
		if (reach == t && (best == 0 || (d < 0 ? -d : d) < (bd < 0 ? -bd : bd)))
			best = cut;
	}
	return best;
}

/* The trunk as two micro-batches cut at cut (see above).  On an error the
 * finish still owed by a micro-batch in flight is called before returning. */
static moe_err trunk_overlapped(moe_fwd *f, int64_t cut)
{
	const fwd_view whole = view_get(f);
	const int64_t t0[2] = {0, cut}, nt[2] = {cut, whole.n - cut};
	const moe_expert_backend *be[2] = {&f->backend, &f->overlap};
	const int n_layer = f->m->hp.n_layer;
	bool fly[2] = {false, false};
	moe_err err;

	view_set(f, &whole, t0[0], nt[0]);
	err = layer_pre(f, 0, be[0], &fly[0]);
	for (int il = 0; il < n_layer && err == MOE_OK; il++) {
		view_set(f, &whole, t0[1], nt[1]);
		if ((err = layer_pre(f, il, be[1], &fly[1])) != MOE_OK)
			break;
		view_set(f, &whole, t0[0], nt[0]);
		fly[0] = false;
		if ((err = layer_post(f, il, be[0])) != MOE_OK)
			break;
		if (il + 1 < n_layer && (err = layer_pre(f, il + 1, be[0], &fly[0])) != MOE_OK)
			break;
		view_set(f, &whole, t0[1], nt[1]);
		fly[1] = false;
		err = layer_post(f, il, be[1]);
	}
	if (fly[0] || fly[1]) {
		char why[512];
		snprintf(why, sizeof why, "%s", moe_err_detail());
		for (int k = 0; k < 2; k++) {
			if (fly[k]) {
				view_set(f, &whole, t0[k], nt[k]);
				(void)be[k]->finish(be[k]->ctx, f->acc);
			}
		}
		err = moe_fail(err, "%s", why);
	}
	f->n = whole.n;
	f->slot = whole.slot;
	f->pos = whole.pos;
	f->x = whole.x;
	f->xn = whole.xn;
	f->y = whole.y;
	f->rope = whole.rope;
	f->wts = whole.wts;
	f->ids = whole.ids;
	f->acc = whole.acc;
	moe_fwd_group_runs(f);
	return err;
}

static moe_err step_chunk(moe_fwd *f, float *logits, const int32_t *tokens, const bool *want,
                          int64_t n)
{
	const moe_model *m = f->m;
	const moe_hparams *hp = &m->hp;
	const int64_t E = hp->n_embd;
	const size_t emb_row = moe_row_size(m->tok_embd.type, E);
	moe_err err;

	f->n = n;
	for (int64_t t = 0; t < n; t++) {
		const char *row = (const char *)m->tok_embd.data + (size_t)tokens[t] * emb_row;
		if ((err = moe_dequantize_row(m->tok_embd.type, f->x + t * E, row, E)) != MOE_OK)
			return err;
		moe_fwd_rope_row(f, t, f->pos[t]);
	}
	moe_fwd_group_runs(f);

	/* the trunk only: MTP blocks (qwen35moe) follow it in m->layers and run
	 * after it, for drafting (mtp.c) */
	const int64_t cut = split_point(f);
	if (cut > 0 && (err = trunk_overlapped(f, cut)) != MOE_OK)
		return err;
	for (int il = 0; cut == 0 && il < hp->n_layer; il++)
		if ((err = moe_fwd_layer(f, il)) != MOE_OK)
			return err;
	if (f->o.mtp && (err = moe_mtp_catch_up(f, tokens)) != MOE_OK)
		return err;
	for (int64_t t = 0; t < n; t++) {
		const int s = f->slot[t];
		f->len[s] = f->pos[t] + 1;
		if (f->kv.seq[s].held < f->len[s])
			f->kv.seq[s].held = f->len[s];
	}

	int64_t n_out = 0;
	for (int64_t t = 0; t < n; t++) {
		if (want != NULL && !want[t])
			continue;
		if (f->o.mtp) /* the same rows, normed before the MTP block ran */
			memcpy(f->xn + n_out * E, f->mtp_hn + t * E, (size_t)E * sizeof(float));
		else
			moe_rmsnorm(f->xn + n_out * E, f->x + t * E, m->out_norm, E, hp->rms_eps);
		n_out++;
	}
	if (n_out == 0)
		return MOE_OK;
	return moe_fwd_matmul(f, logits, &m->output, f->xn, n_out);
}

/* Before a step whose sequences end at f->next[]: the attention scores
 * scratch for the longest of them (grown by whole KV blocks), and the KV
 * blocks of every sequence.  On an error nothing has changed (the blocks
 * taken are given back). */
moe_err moe_fwd_take_memory(moe_fwd *f)
{
	const moe_hparams *hp = &f->m->hp;
	if (f->kv.n_layers == 0)
		return MOE_OK;
	int64_t need = 0;
	for (int s = 0; s < f->o.n_slots; s++)
		if (f->next[s] > f->len[s] && f->next[s] > need)
			need = f->next[s];
	if (need > f->scores_cap) {
		const int64_t cap =
		    (need + MOE_FWD_KV_BLOCK - 1) / MOE_FWD_KV_BLOCK * MOE_FWD_KV_BLOCK;
		const size_t per_tok = (size_t)(hp->n_head / hp->n_head_kv) * (size_t)cap;
		size_t qt = MOE_ATTN_SCORES_MAX / (per_tok * sizeof(float));
		qt = qt < 1 ? 1 : qt > MOE_ATTN_QTILE ? MOE_ATTN_QTILE : qt;
		const size_t n = qt * per_tok + (size_t)MOE_ATTN_VTILE * (size_t)hp->head_dim;
		bool fail = false;
		float *sc = falloc((size_t)f->nth * n, sizeof(float), &fail);
		if (fail)
			return moe_fail(MOE_ERR_NOMEM,
			                "fwd: attention scores for %lld positions (%d threads)",
			                (long long)cap, f->nth);
		moe_aligned_free(f->scores);
		f->scores = sc;
		f->scores_n = n;
		f->scores_cap = cap;
		f->scores_qt = (int)qt;
	}
	for (int s = 0; s < f->o.n_slots; s++) {
		if (f->next[s] <= f->len[s])
			continue;
		moe_err err = moe_kv_reserve(&f->kv, s, f->next[s]);
		if (err != MOE_OK) {
			for (int r = 0; r <= s; r++)
				if (f->next[r] > f->len[r])
					moe_kv_trim(&f->kv, r, f->kv.seq[r].held);
			return err;
		}
	}
	return MOE_OK;
}

moe_err moe_fwd_step(moe_fwd *f, float *logits, const moe_batch *b)
{
	const moe_hparams *hp = &f->m->hp;
	if (b == NULL || b->n_tok < 0 ||
	    (b->n_tok > 0 && (b->tokens == NULL || b->slot == NULL || b->pos == NULL)))
		return moe_fail(MOE_ERR_INVAL, "fwd: batch is NULL or lacks tokens/slot/pos");
	for (int s = 0; s < f->o.n_slots; s++)
		f->next[s] = f->len[s];
	int64_t n_want = 0;
	for (int64_t t = 0; t < b->n_tok; t++) {
		const int32_t tok = b->tokens[t], s = b->slot[t];
		if (tok < 0 || tok >= hp->n_vocab)
			return moe_fail(MOE_ERR_INVAL,
			                "fwd: batch token %lld: id %d not in [0, %d)", (long long)t,
			                tok, hp->n_vocab);
		if (s < 0 || s >= f->o.n_slots || !f->open[s])
			return moe_fail(MOE_ERR_INVAL, "fwd: batch token %lld: slot %d is not open",
			                (long long)t, s);
		if (b->pos[t] != f->next[s])
			return moe_fail(
			    MOE_ERR_INVAL,
			    "fwd: batch token %lld: position %d, expected %lld for slot "
			    "%d",
			    (long long)t, b->pos[t], (long long)f->next[s], s);
		if (b->pos[t] >= f->o.n_ctx)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "fwd: batch token %lld: position %d exceeds n_ctx %d",
			                (long long)t, b->pos[t], f->o.n_ctx);
		f->next[s]++;
		if (b->logits == NULL || b->logits[t])
			n_want++;
	}
	if (n_want > 0 && logits == NULL)
		return moe_fail(MOE_ERR_INVAL, "fwd: %lld logit rows wanted but logits is NULL",
		                (long long)n_want);
	moe_err err = moe_fwd_take_memory(f);
	if (err != MOE_OK)
		return err;
	/* the rewind checkpoints this step keeps: per slot, the lengths m of the
	 * rows at its end that want logits, after its first row, the last
	 * keep_states of them (f->next[s] is where it ends) */
	for (int64_t t = b->n_tok - 1; t >= 0 && f->o.keep_states > 0; t--) {
		const int32_t s = b->slot[t], p = b->pos[t];
		if (p == f->next[s] - 1) /* its last row: an empty window */
			f->ck_lo[s] = f->ck_hi[s] = f->next[s];
		if (p == f->ck_lo[s] - 1 && p > f->len[s] && p >= f->next[s] - f->o.keep_states &&
		    (b->logits == NULL || b->logits[t]))
			f->ck_lo[s] = p;
	}

	int64_t out_row = 0;
	for (int64_t c0 = 0; c0 < b->n_tok; c0 += f->o.max_batch) {
		const int64_t n = b->n_tok - c0 < f->o.max_batch ? b->n_tok - c0 : f->o.max_batch;
		const bool *want = b->logits != NULL ? b->logits + c0 : NULL;
		f->slot = b->slot + c0;
		f->pos = b->pos + c0;
		err = step_chunk(f, logits != NULL ? logits + out_row * hp->n_vocab : NULL,
		                 b->tokens + c0, want, n);
		if (err != MOE_OK)
			return err;
		for (int64_t t = 0; t < n; t++)
			out_row += want == NULL || want[t];
	}
	return MOE_OK;
}
