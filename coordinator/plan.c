/*
 * plan.c - `moemesh plan`'s arithmetic (moe_plan_compute): the bytes each
 * node of a cluster will hold (the coordinator's dense weights, KV, DeltaNet
 * states, prefix cache and overhead; the workers' expert slices as
 * placement.c places them, replicas counted), the largest context and
 * parallel sequences the coordinator's memory allows, and the expected decode
 * speed from each node's memory bandwidth and its link (DESIGN "Planning");
 * its text and JSON output.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

void moe_plan_opts_default(moe_plan_opts *o)
{
	*o = (moe_plan_opts){.n_parallel = 4,
	                     .kv_type = MOE_TYPE_F16,
	                     .cache_bytes = 8192ull << 20,
	                     .overhead_bytes = 1ull << 30,
	                     .efficiency = 0.8,
	                     .rtt_us = 100,
	                     .net_bps = 1.25e9};
}

/* The layer of a "blk.N." tensor name, or -1. */
static int tensor_layer(const moe_gguf_tensor *t)
{
	char name[128];
	const size_t n = t->name.len < sizeof name - 1 ? (size_t)t->name.len : sizeof name - 1;
	memcpy(name, t->name.ptr, n);
	name[n] = '\0';
	int il = -1, used = 0;
	if (sscanf(name, "blk.%d.%n", &il, &used) != 1 || used == 0)
		return -1;
	return il;
}

static bool name_has(const moe_gguf_tensor *t, const char *s)
{
	const size_t k = strlen(s);
	for (uint64_t i = 0; i + k <= t->name.len; i++)
		if (memcmp(t->name.ptr + i, s, k) == 0)
			return true;
	return false;
}

static bool name_is(const moe_gguf_tensor *t, const char *s)
{
	return t->name.len == strlen(s) && memcmp(t->name.ptr, s, t->name.len) == 0;
}

/* The model's bytes by kind: per file trunk layer the dense bytes and the
 * bytes of one routed expert (gate + up + down slices, as placement.c counts
 * them); the global tensors; MTP blocks, whole (mapped on the coordinator,
 * their routed experts too: drafting runs them there; the main pass never
 * reads them). */
typedef struct model_bytes {
	uint64_t layer_dense[MOE_MAX_LAYERS];
	uint64_t expert[MOE_MAX_LAYERS];
	uint64_t layer_dense_el[MOE_MAX_LAYERS]; /* values, for the operations */
	uint64_t expert_el[MOE_MAX_LAYERS];
	uint64_t global, global_el; /* token_embd, output, output_norm, ... */
	uint64_t embd, embd_el;     /* token_embd (read by rows only, unless it is the lm_head) */
	uint64_t mtp;               /* every tensor of the MTP blocks */
	bool tied;                  /* no output.weight: token_embd is the lm_head */
	moe_type gate_type;         /* of the routed experts (activation form on the wire) */
} model_bytes;

static void count_bytes(model_bytes *mb, const moe_model *m)
{
	const moe_gguf *g = moe_model_gguf(m);
	const moe_hparams *hp = moe_model_hparams(m);
	memset(mb, 0, sizeof *mb);
	mb->tied = true;
	mb->gate_type = MOE_TYPE_F32;
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		const int il = tensor_layer(t);
		if (name_is(t, "output.weight"))
			mb->tied = false;
		const uint64_t el = (uint64_t)t->n_elements;
		if (name_is(t, "token_embd.weight")) {
			mb->embd = t->size;
			mb->embd_el = el;
		}
		if (il < 0) {
			mb->global += t->size;
			mb->global_el += el;
		} else if (il >= hp->n_layer) {
			mb->mtp += t->size;
		} else if (name_has(t, "_exps.")) {
			mb->expert[il] += t->size / (uint64_t)hp->n_expert;
			mb->expert_el[il] += el / (uint64_t)hp->n_expert;
			if (il == 0 && name_has(t, "ffn_gate_exps"))
				mb->gate_type = t->type;
		} else {
			mb->layer_dense[il] += t->size;
			mb->layer_dense_el[il] += el;
		}
	}
}

static double gib(uint64_t b)
{
	return (double)b / (double)(1ull << 30);
}

/* Link i's URL ("spawned-I" for a worker --workers starts) and name (the
 * cluster file's, else the URL), as place() and the node table show them. */
static void node_label(char *url, size_t url_size, char *name, size_t name_size,
                       const moe_cluster_opts *o, int i)
{
	const int u = i - o->spawn;
	if (u >= 0)
		snprintf(url, url_size, "%s", o->urls[u]);
	else
		snprintf(url, url_size, "spawned-%d", i);
	snprintf(name, name_size, "%s", u >= 0 && o->names[u] ? o->names[u] : url);
}

/* Places the experts as moe_cluster_create does, without workers: the same
 * moe_clu_place on a cluster whose links have the file's caps divided by
 * scale (the planned layers are scale times the file's, each expert index
 * costing scale times as much: floor(cap / scale / col) = floor(cap / (scale
 * col)), so the same indices land on the same links).  held[i] is link i's
 * table (caller frees each).  Errors of moe_clu_place other than an over-cap
 * link (which the caller reports with the true bytes). */
static moe_err place(uint8_t **held, const moe_model *m, const moe_cluster_opts *o, int n,
                     uint64_t scale)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t nh = (size_t)hp->n_layer * (size_t)hp->n_expert;
	moe_cluster *c = calloc(1, sizeof *c);
	if (c == NULL)
		return moe_fail(MOE_ERR_NOMEM, "plan: placement");
	c->o = *o;
	c->m = m;
	c->hp = hp;
	moe_err err = MOE_OK;
	for (int i = 0; i < n; i++) {
		clink *l = &c->links[i];
		l->dfd = -1;
		l->alive = true;
		const int u = i - o->spawn;
		node_label(l->url, sizeof l->url, l->name, sizeof l->name, o, i);
		l->cap = u >= 0 ? o->mem_caps[u] / scale : 0;
		if (u >= 0 && o->mem_caps[u] > 0 && l->cap == 0)
			l->cap = 1;
		l->held = calloc(nh, 1);
		c->n_links++;
		if (l->held == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "plan: placement tables");
			goto out_free;
		}
	}
	const moe_err perr = moe_clu_place(c);
	for (int i = 0; i < n; i++) {
		held[i] = c->links[i].held;
		c->links[i].held = NULL;
	}
	/* an over-cap link is found again below with the planned bytes; any
	 * other refusal (a bad --replicate list) is the plan's */
	if (perr != MOE_OK && strstr(moe_err_detail(), "cap of") == NULL)
		err = perr;
out_free:
	for (int i = 0; i < c->n_links; i++)
		free(c->links[i].held);
	free(c);
	return err;
}

moe_err moe_placement_compute(moe_placement *out, const moe_model *m, const moe_cluster_opts *o)
{
	const moe_hparams *hp = moe_model_hparams(m);
	*out = (moe_placement){
	    .n_links = o->spawn + o->n_urls, .n_layer = hp->n_layer, .n_expert = hp->n_expert};
	if (out->n_links < 1 || out->n_links > MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "placement: %d workers (1..%d)", out->n_links,
		                MOE_CLUSTER_MAX_LINKS);
	const moe_err err = place(out->held, m, o, out->n_links, 1);
	if (err != MOE_OK) {
		moe_placement_free(out);
		return err;
	}
	for (int i = 0; i < out->n_links; i++) {
		char url[256], name[256];
		node_label(url, sizeof url, name, sizeof name, o, i);
		snprintf(out->name[i], sizeof out->name[i], "%.63s", name);
	}
	return MOE_OK;
}

void moe_placement_free(moe_placement *p)
{
	for (int i = 0; i < MOE_CLUSTER_MAX_LINKS; i++) {
		free(p->held[i]);
		p->held[i] = NULL;
	}
}

/* Fills the node table and the refusal; shares[i][lf] is link i's expected
 * share of layer lf's experts (replicas splitting an expert's reads). */
static moe_err fill_nodes(moe_plan *p, double *shares, const moe_model *m,
                          const moe_cluster_opts *o, const moe_plan_opts *po, const model_bytes *mb,
                          int n_links)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const int nf = hp->n_layer, ne = hp->n_expert;
	const uint64_t scale = (uint64_t)(p->n_layer / nf);
	uint8_t *held[MOE_CLUSTER_MAX_LINKS] = {0};
	moe_err err = MOE_OK;
	if (n_links > 0 && (err = place(held, m, o, n_links, scale)) != MOE_OK)
		goto out_free;
	moe_plan_node *co = &p->nodes[0];
	*co = (moe_plan_node){.coordinator = true,
	                      .mem = o->coord_mem,
	                      .dense = p->dense_bytes,
	                      .kv = p->kv_seq * (uint64_t)p->n_parallel,
	                      .state = p->state_seq * (uint64_t)p->n_parallel,
	                      .cache = po->cache_bytes,
	                      .overhead = po->overhead_bytes,
	                      .bw = o->coord_bw > 0 ? o->coord_bw : po->bw,
	                      .gops = o->coord_gops > 0 ? o->coord_gops : po->gops};
	snprintf(co->name, sizeof co->name, "%s", o->coord_name ? o->coord_name : "coordinator");
	if (n_links == 0) { /* one process: the coordinator computes every expert */
		co->experts = p->expert_bytes;
		co->expert_pairs = (uint64_t)p->n_layer * (uint64_t)ne;
		for (int lf = 0; lf < nf; lf++)
			shares[lf] = 1;
	}
	for (int i = 0; i < n_links; i++) {
		moe_plan_node *w = &p->nodes[1 + i];
		const int u = i - o->spawn;
		node_label(w->url, sizeof w->url, w->name, sizeof w->name, o, i);
		w->mem = u >= 0 ? o->mem_caps[u] : 0;
		w->bw = u >= 0 && o->bw[u] > 0 ? o->bw[u]
		        : po->worker_bw > 0    ? po->worker_bw
		                               : po->bw;
		w->gops = u >= 0 && o->gops[u] > 0 ? o->gops[u] : po->gops;
		w->rtt_us = u >= 0 && o->rtt_us[u] > 0 ? o->rtt_us[u] : po->rtt_us;
		w->net_bps = u >= 0 && o->net_bps[u] > 0 ? o->net_bps[u] : po->net_bps;
		for (int lf = 0; lf < nf; lf++) {
			double share = 0;
			for (int e = 0; e < ne; e++) {
				const size_t k = (size_t)lf * (size_t)ne + (size_t)e;
				if (!held[i][k])
					continue;
				int holders = 0;
				for (int j = 0; j < n_links; j++)
					holders += held[j][k] != 0;
				share += 1.0 / holders;
				w->experts += mb->expert[lf] * scale;
				w->expert_pairs += scale;
			}
			shares[(size_t)(1 + i) * (size_t)nf + (size_t)lf] = share / ne;
		}
		w->total = w->experts;
		if (u >= 0 && strcmp(o->urls[u], "local") == 0) {
			w->bw = co->bw;
			w->gops = co->gops;
			w->rtt_us = 0;
			co->experts += w->experts;
			co->expert_pairs += w->expert_pairs;
		}
	}
	p->n_nodes = 1 + n_links;
	co->total = co->dense + co->kv + co->state + co->cache + co->overhead + co->experts;

	/* refusals: the coordinator's memory, then each worker's cap (the words of
	 * placement.c's refusal at start) */
	p->fits = true;
	if (co->mem > 0 && co->total > co->mem) {
		p->fits = false;
		snprintf(p->why, sizeof p->why,
		         "coordinator %s would hold %llu bytes (%.2f GiB: dense %.2f, KV %.2f for "
		         "%d x %d positions of %s, DeltaNet state %.2f, prefix cache %.2f, "
		         "overhead %.2f, local experts %.2f), over its \"mem\" of %llu by %llu "
		         "(%.2f GiB)",
		         co->name, (unsigned long long)co->total, gib(co->total), gib(co->dense),
		         gib(co->kv), p->n_parallel, p->n_ctx, moe_fwd_kv_type_name(p->kv_type),
		         gib(co->state), gib(co->cache), gib(co->overhead), gib(co->experts),
		         (unsigned long long)co->mem, (unsigned long long)(co->total - co->mem),
		         gib(co->total - co->mem));
		goto out_free;
	}
	uint64_t caps = 0;
	bool all_capped = n_links > 0;
	for (int i = 0; i < n_links; i++) {
		caps += p->nodes[1 + i].mem;
		all_capped = all_capped && p->nodes[1 + i].mem > 0;
	}
	for (int i = 0; i < n_links; i++) {
		const moe_plan_node *w = &p->nodes[1 + i];
		if (w->mem == 0 || w->experts <= w->mem)
			continue;
		char total[160] = "";
		if (all_capped)
			snprintf(total, sizeof total,
			         "; the experts are %llu bytes, the caps of all workers %llu",
			         (unsigned long long)p->expert_bytes, (unsigned long long)caps);
		p->fits = false;
		snprintf(p->why, sizeof p->why,
		         "worker %s (%s) would hold %llu bytes of experts%s, over its \"mem\" cap "
		         "of %llu by %llu%s",
		         w->name, w->url, (unsigned long long)w->experts,
		         o->replicate ? " with the replicas" : "", (unsigned long long)w->mem,
		         (unsigned long long)(w->experts - w->mem), total);
		break;
	}
out_free:
	for (int i = 0; i < n_links; i++)
		free(held[i]);
	return err;
}

/* The largest parallel sequences at n_ctx and context at n_parallel that the
 * coordinator's "mem" holds (-1 without one). */
static void fill_limits(moe_plan *p)
{
	const moe_plan_node *co = &p->nodes[0];
	p->max_ctx = p->max_parallel = -1;
	if (co->mem == 0)
		return;
	const uint64_t fixed = co->dense + co->cache + co->overhead + co->experts;
	const uint64_t avail = co->mem > fixed ? co->mem - fixed : 0;
	const uint64_t per_seq = p->kv_seq + p->state_seq;
	p->max_parallel = per_seq > 0 ? (int64_t)(avail / per_seq) : -1;
	const uint64_t each = avail / (uint64_t)p->n_parallel;
	if (each < p->state_seq || p->kv_block == 0)
		p->max_ctx = p->kv_block == 0 && each >= p->state_seq ? -1 : 0;
	else
		p->max_ctx = (int64_t)((each - p->state_seq) / p->kv_block) * MOE_FWD_KV_BLOCK;
}

/* Seconds to read bytes and do ops on node n: the two added, not overlapped
 * (the compute term only where the node has "gops"; DESIGN "Planning" says
 * why the sum). */
static double node_time(const moe_plan_node *n, double eff, double bytes, double ops)
{
	return bytes / (n->bw * eff) + (n->gops > 0 ? ops / (n->gops * 1e9) : 0);
}

/* The decode estimate at batch 1, 4 and 16, or those asked for (DESIGN
 * "Planning"): each of p->n_coordinators coordinators steps its own batch B
 * in lock step with the others, so each layer's dispatches reach a worker
 * together: it reads the experts chosen by any of the nc x B tokens and
 * computes every pair of them, and its link carries all nc dispatches. */
static void fill_speed(moe_plan *p, const double *shares, const model_bytes *mb,
                       const moe_hparams *hp, int n_links, const int *want)
{
	static const int dflt[MOE_PLAN_BATCHES] = {1, 4, 16};
	int batches[MOE_PLAN_BATCHES];
	for (int bi = 0; bi < MOE_PLAN_BATCHES; bi++)
		batches[bi] = want[bi] > 0 ? want[bi] : dflt[bi];
	const int nf = hp->n_layer;
	const double E = hp->n_expert, k = hp->n_expert_used;
	const uint64_t kv_row = moe_row_size(p->kv_type, (int64_t)hp->n_head_kv * hp->head_dim);
	const double act = (double)moe_act_row_size(mb->gate_type, hp->n_embd);
	const double eff = p->efficiency;
	const moe_plan_node *co = &p->nodes[0];
	const int nc = p->n_coordinators;
	for (int bi = 0; bi < MOE_PLAN_BATCHES; bi++) {
		const int B = batches[bi];
		/* P(an expert is chosen by one of the step's tokens, all coordinators') */
		const double chosen = 1 - pow(1 - k / E, (double)nc * B);
		p->speed[bi].batch = B;
		p->speed[bi].distinct = E * chosen;
		double coord = (double)p->dense_read +
		               B * ((double)p->depth * 2.0 * (double)kv_row * p->n_attn +
		                    2.0 * (double)p->state_seq);
		double coord_ops = 2.0 * B * (double)p->dense_params;
		double wsum = 0, nsum = 0, step = 0;
		bool known = co->bw > 0;
		for (int j = 0; j < p->n_layer; j++) {
			const int lf = j % nf;
			/* bytes of the experts of the layer chosen in the step, and the
			 * operations of every (token, expert) pair */
			const double bytes = (double)mb->expert[lf] * E * chosen;
			const double ops = 2.0 * nc * B * k * (double)mb->expert_el[lf];
			double worst = 0, w_comp = 0, w_net = 0;
			if (n_links == 0) {
				coord += bytes;
				coord_ops += ops;
			}
			for (int i = 0; i < n_links; i++) {
				const moe_plan_node *w = &p->nodes[1 + i];
				const double share =
				    shares[(size_t)(1 + i) * (size_t)nf + (size_t)lf];
				if (share == 0)
					continue;
				if (strcmp(w->url, "local") == 0) {
					coord += bytes * share;
					coord_ops += ops * share;
					continue;
				}
				if (w->bw <= 0) {
					known = false;
					continue;
				}
				const double comp = node_time(w, eff, bytes * share, ops * share);
				const double net = w->rtt_us * 1e-6 + (double)nc * B *
				                                          (act + 8.0 * hp->n_embd) /
				                                          w->net_bps;
				if (comp + net > worst) {
					worst = comp + net;
					w_comp = comp;
					w_net = net;
				}
			}
			wsum += w_comp;
			nsum += w_net;
			step += worst;
		}
		const double cs = known ? node_time(co, eff, coord, coord_ops) : -1;
		p->speed[bi].coord_s = cs;
		p->speed[bi].workers_s = known ? wsum : -1;
		p->speed[bi].net_s = known ? nsum : -1;
		p->speed[bi].step_s = known ? step + cs : -1;
		p->speed[bi].tok_s_stream = known ? 1 / p->speed[bi].step_s : -1;
		p->speed[bi].tok_s_total = known ? (double)nc * B / p->speed[bi].step_s : -1;
	}
}

moe_err moe_plan_compute(moe_plan *p, const moe_model *m, const moe_cluster_opts *o,
                         const moe_plan_opts *po)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const int nf = hp->n_layer;
	memset(p, 0, sizeof *p);
	if (hp->n_expert <= 0)
		return moe_fail(MOE_ERR_UNSUPPORTED, "plan: the model has no routed experts");
	const int n_links = o->spawn + o->n_urls;
	if (n_links > MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "plan: more than %d workers", MOE_CLUSTER_MAX_LINKS);
	if (po->n_coordinators < 0 || po->n_coordinators > 64 ||
	    (po->n_coordinators > 1 && n_links == 0))
		return moe_fail(MOE_ERR_INVAL,
		                "plan: %d coordinators (1 to 64, and more than one needs workers)",
		                po->n_coordinators);
	p->n_coordinators = po->n_coordinators > 1 ? po->n_coordinators : 1;
	const int L = po->n_layer > 0 ? po->n_layer : nf;
	if (L % nf != 0 || (moe_arch_is_hybrid(hp->arch) && hp->full_attn_interval > 0 && L != nf &&
	                    nf % hp->full_attn_interval != 0))
		return moe_fail(MOE_ERR_INVAL,
		                "plan: --layers %d: want a multiple of the file's %d trunk layers "
		                "(whose count must be a multiple of the attention interval %d)",
		                L, nf, hp->full_attn_interval);
	if (po->n_parallel < 1 || po->depth < 0 || !(po->efficiency > 0) || po->efficiency > 1 ||
	    !(po->net_bps > 0) || po->rtt_us < 0 || po->batches[0] < 0 || po->batches[1] < 0 ||
	    po->batches[2] < 0)
		return moe_fail(MOE_ERR_INVAL, "plan: --parallel, --depth, --efficiency (0, 1], "
		                               "--net or --rtt-us out of range");
	const uint64_t scale = (uint64_t)(L / nf);
	model_bytes *mb = malloc(sizeof *mb);
	double *shares = calloc((size_t)(1 + n_links) * (size_t)nf, sizeof *shares);
	moe_err err = MOE_OK;
	if (mb == NULL || shares == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "plan");
		goto out_free;
	}
	count_bytes(mb, m);
	snprintf(p->model, sizeof p->model, "%s", moe_arch_name(hp->arch));
	p->n_layer = L;
	p->n_layer_file = nf;
	p->n_attn = moe_hparams_n_attn_layers(hp) * (int)scale;
	p->n_rec = moe_hparams_n_recurrent_layers(hp) * (int)scale;
	p->n_expert = hp->n_expert;
	p->n_used = hp->n_expert_used;
	p->n_ctx = po->n_ctx > 0 ? po->n_ctx : hp->n_ctx_train;
	p->n_parallel = po->n_parallel;
	p->kv_type = po->kv_type;
	p->depth = po->depth;
	p->efficiency = po->efficiency;
	uint64_t layers = 0, layers_el = 0, experts = 0;
	for (int lf = 0; lf < nf; lf++) {
		layers += mb->layer_dense[lf];
		layers_el += mb->layer_dense_el[lf];
		experts += mb->expert[lf];
	}
	p->dense_params = mb->global_el - (mb->tied ? 0 : mb->embd_el) + layers_el * scale;
	p->dense_bytes = mb->global + mb->mtp + layers * scale;
	p->dense_read = mb->global - (mb->tied ? 0 : mb->embd) + layers * scale;
	p->expert_bytes = experts * scale * (uint64_t)hp->n_expert;
	const size_t row = moe_row_size(po->kv_type, (int64_t)hp->n_head_kv * hp->head_dim);
	if (row == 0 && hp->n_head_kv > 0) {
		err = moe_fail(MOE_ERR_INVAL,
		               "plan: a %s KV cache needs a head dimension that is a "
		               "multiple of 32",
		               moe_fwd_kv_type_name(po->kv_type));
		goto out_free;
	}
	/* drafting keeps the MTP blocks' KV as more attention layers of the slot */
	const int kv_layers = p->n_attn + (po->mtp && moe_model_has_mtp(m) ? hp->n_layer_nextn : 0);
	p->kv_block = (uint64_t)row * (uint64_t)kv_layers * 2 * MOE_FWD_KV_BLOCK;
	p->kv_seq = (uint64_t)((p->n_ctx + MOE_FWD_KV_BLOCK - 1) / MOE_FWD_KV_BLOCK) * p->kv_block;
	p->state_seq =
	    (uint64_t)p->n_rec * 4 *
	    ((uint64_t)(hp->ssm_conv_kernel > 0 ? hp->ssm_conv_kernel - 1 : 0) *
	         (uint64_t)hp->ssm_conv_dim +
	     (uint64_t)hp->ssm_n_v_heads * (uint64_t)hp->ssm_head_k * (uint64_t)hp->ssm_head_v);
	if ((err = fill_nodes(p, shares, m, o, po, mb, n_links)) != MOE_OK)
		goto out_free;
	fill_limits(p);
	fill_speed(p, shares, mb, hp, n_links, po->batches);
out_free:
	free(shares);
	free(mb);
	return err;
}

/* ---- output ---------------------------------------------------------------------- */

static void print_text(const moe_plan *p, FILE *f)
{
	fprintf(f,
	        "model %s: %d layers (%d full attention, %d DeltaNet)%s, %d experts of which %d "
	        "per token\n",
	        p->model, p->n_layer, p->n_attn, p->n_rec,
	        p->n_layer != p->n_layer_file ? " planned from the file's per-layer figures" : "",
	        p->n_expert, p->n_used);
	fprintf(f,
	        "dense %.2f GiB (%.2f GiB read per step), experts %.2f GiB; KV %.1f KiB per "
	        "token (%s), DeltaNet state %.2f MiB per sequence\n",
	        gib(p->dense_bytes), gib(p->dense_read), gib(p->expert_bytes),
	        (double)p->kv_block / MOE_FWD_KV_BLOCK / 1024.0, moe_fwd_kv_type_name(p->kv_type),
	        (double)p->state_seq / 1048576.0);
	fprintf(f, "\n%-16s %10s %10s %8s %8s %8s %8s %8s %10s\n", "node (GiB)", "holds", "mem",
	        "dense", "KV", "state", "cache", "other", "experts");
	for (int i = 0; i < p->n_nodes; i++) {
		const moe_plan_node *n = &p->nodes[i];
		char mem[32] = "-";
		if (n->mem)
			snprintf(mem, sizeof mem, "%.2f", gib(n->mem));
		fprintf(f, "%-16.16s %10.2f %10s %8.2f %8.2f %8.2f %8.2f %8.2f %10.2f\n", n->name,
		        gib(n->total), mem, gib(n->dense), gib(n->kv), gib(n->state), gib(n->cache),
		        gib(n->overhead), gib(n->experts));
	}
	fprintf(f, "\ncontext %d x %d parallel sequences (KV %s)", p->n_ctx, p->n_parallel,
	        moe_fwd_kv_type_name(p->kv_type));
	if (p->max_ctx >= 0)
		fprintf(f,
		        "; the coordinator's mem holds up to %lld positions x %d sequences, or "
		        "%lld sequences x %d positions\n",
		        (long long)p->max_ctx, p->n_parallel, (long long)p->max_parallel, p->n_ctx);
	else
		fprintf(f, "; no coordinator \"mem\": largest context not computed\n");
	fprintf(f,
	        "\ndecode at depth %d (bytes read at %.0f %% of each node's bw; plus ops at "
	        "its gops where given):\n",
	        p->depth, 100 * p->efficiency);
	if (p->n_coordinators > 1)
		fprintf(f,
		        "%d coordinators, each holding what the coordinator row holds and decoding "
		        "its own batch in step with the others (the workers see them all: distinct "
		        "experts of all their tokens; tok/s total counts every coordinator's):\n",
		        p->n_coordinators);
	fprintf(f, "%6s %9s %10s %10s %10s %10s %12s %12s\n", "batch", "distinct", "coord ms",
	        "workers ms", "net ms", "step ms", "tok/s/strm", "tok/s total");
	for (int bi = 0; bi < MOE_PLAN_BATCHES; bi++) {
		if (p->speed[bi].step_s < 0) {
			fprintf(f, "%6d %9.1f   (a node has no \"bw\": no estimate)\n",
			        p->speed[bi].batch, p->speed[bi].distinct);
			continue;
		}
		fprintf(f, "%6d %9.1f %10.2f %10.2f %10.2f %10.2f %12.1f %12.1f\n",
		        p->speed[bi].batch, p->speed[bi].distinct, 1e3 * p->speed[bi].coord_s,
		        1e3 * p->speed[bi].workers_s, 1e3 * p->speed[bi].net_s,
		        1e3 * p->speed[bi].step_s, p->speed[bi].tok_s_stream,
		        p->speed[bi].tok_s_total);
	}
}

static void add_u64(cJSON *o, const char *k, uint64_t v)
{
	cJSON_AddNumberToObject(o, k, (double)v);
}

static void add_opt(cJSON *o, const char *k, double v)
{
	if (v < 0)
		cJSON_AddNullToObject(o, k);
	else
		cJSON_AddNumberToObject(o, k, v);
}

static void print_json(const moe_plan *p, FILE *f)
{
	cJSON *j = cJSON_CreateObject(), *nodes = cJSON_CreateArray(), *sp = cJSON_CreateArray();
	if (j == NULL || nodes == NULL || sp == NULL) {
		cJSON_Delete(j);
		cJSON_Delete(nodes);
		cJSON_Delete(sp);
		fprintf(f, "{\"error\": \"out of memory\"}\n");
		return;
	}
	cJSON_AddStringToObject(j, "arch", p->model);
	cJSON_AddNumberToObject(j, "layers", p->n_layer);
	cJSON_AddNumberToObject(j, "layers_file", p->n_layer_file);
	cJSON_AddNumberToObject(j, "attention_layers", p->n_attn);
	cJSON_AddNumberToObject(j, "deltanet_layers", p->n_rec);
	cJSON_AddNumberToObject(j, "experts", p->n_expert);
	cJSON_AddNumberToObject(j, "experts_per_token", p->n_used);
	cJSON_AddNumberToObject(j, "ctx", p->n_ctx);
	cJSON_AddNumberToObject(j, "parallel", p->n_parallel);
	cJSON_AddNumberToObject(j, "coordinators", p->n_coordinators);
	cJSON_AddStringToObject(j, "kv_type", moe_fwd_kv_type_name(p->kv_type));
	add_u64(j, "dense_bytes", p->dense_bytes);
	add_u64(j, "dense_read_bytes", p->dense_read);
	add_u64(j, "expert_bytes", p->expert_bytes);
	add_u64(j, "kv_block_bytes", p->kv_block);
	add_u64(j, "kv_bytes_per_seq", p->kv_seq);
	add_u64(j, "state_bytes_per_seq", p->state_seq);
	add_opt(j, "max_ctx", (double)p->max_ctx);
	add_opt(j, "max_parallel", (double)p->max_parallel);
	for (int i = 0; i < p->n_nodes; i++) {
		const moe_plan_node *n = &p->nodes[i];
		cJSON *o = cJSON_CreateObject();
		if (o == NULL || !cJSON_AddItemToArray(nodes, o)) {
			cJSON_Delete(o);
			break;
		}
		cJSON_AddStringToObject(o, "name", n->name);
		cJSON_AddStringToObject(o, "role", n->coordinator ? "coordinator" : "worker");
		if (!n->coordinator)
			cJSON_AddStringToObject(o, "url", n->url);
		add_u64(o, "holds_bytes", n->total);
		if (n->mem)
			add_u64(o, "mem_bytes", n->mem);
		else
			cJSON_AddNullToObject(o, "mem_bytes");
		if (n->coordinator) {
			add_u64(o, "dense_bytes", n->dense);
			add_u64(o, "kv_bytes", n->kv);
			add_u64(o, "state_bytes", n->state);
			add_u64(o, "cache_bytes", n->cache);
			add_u64(o, "overhead_bytes", n->overhead);
		}
		add_u64(o, "expert_bytes", n->experts);
		add_u64(o, "expert_pairs", n->expert_pairs);
		add_opt(o, "bw", n->bw > 0 ? n->bw : -1);
		add_opt(o, "gops", n->gops > 0 ? n->gops : -1);
		if (!n->coordinator) {
			cJSON_AddNumberToObject(o, "rtt_us", n->rtt_us);
			cJSON_AddNumberToObject(o, "net", n->net_bps);
		}
	}
	cJSON_AddItemToObject(j, "nodes", nodes);
	cJSON_AddNumberToObject(j, "depth", p->depth);
	cJSON_AddNumberToObject(j, "efficiency", p->efficiency);
	for (int bi = 0; bi < MOE_PLAN_BATCHES; bi++) {
		cJSON *o = cJSON_CreateObject();
		if (o == NULL || !cJSON_AddItemToArray(sp, o)) {
			cJSON_Delete(o);
			break;
		}
		cJSON_AddNumberToObject(o, "batch", p->speed[bi].batch);
		cJSON_AddNumberToObject(o, "distinct_experts", p->speed[bi].distinct);
		add_opt(o, "coord_s", p->speed[bi].coord_s);
		add_opt(o, "workers_s", p->speed[bi].workers_s);
		add_opt(o, "net_s", p->speed[bi].net_s);
		add_opt(o, "step_s", p->speed[bi].step_s);
		add_opt(o, "tok_s_stream", p->speed[bi].tok_s_stream);
		add_opt(o, "tok_s_total", p->speed[bi].tok_s_total);
	}
	cJSON_AddItemToObject(j, "decode", sp);
	cJSON_AddBoolToObject(j, "fits", p->fits);
	if (!p->fits)
		cJSON_AddStringToObject(j, "why", p->why);
	char *s = cJSON_Print(j);
	fprintf(f, "%s\n", s ? s : "{\"error\": \"out of memory\"}");
	free(s);
	cJSON_Delete(j);
}

void moe_plan_print(const moe_plan *p, bool json, FILE *f)
{
	if (json)
		print_json(p, f);
	else
		print_text(p, f);
}
