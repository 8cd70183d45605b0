/*
 * placement.c - which link holds which (layer, expert): the initial
 * placement (contiguous ranges sized by memory, or round robin, plus
 * replicas) and its repair when a worker is lost, both held to the byte caps
 * of the cluster file (a worker's "mem"), replicas counted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"

uint64_t moe_clu_expert_bytes(const moe_cluster *c, int il)
{
	static const char *const which[3] = {"gate", "up", "down"};
	const moe_gguf *g = moe_model_gguf(c->m);
	uint64_t b = 0;
	for (int w = 0; w < 3; w++) {
		char name[96];
		snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", il, which[w]);
		const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
		if (t != NULL)
			b += (uint64_t)t->size / (uint64_t)c->hp->n_expert;
	}
	return b;
}

/* Bytes of the experts l holds. */
static uint64_t held_bytes(const moe_cluster *c, const clink *l)
{
	const int ne = c->hp->n_expert;
	uint64_t b = 0;
	for (int il = 0; il < c->hp->n_layer; il++) {
		const uint64_t eb = moe_clu_expert_bytes(c, il);
		for (int e = 0; e < ne; e++)
			b += l->held[(size_t)il * (size_t)ne + (size_t)e] ? eb : 0;
	}
	return b;
}

/* Every link holds at most its cap: MOE_ERR_INVAL naming the first that
 * would not, with the bytes (and the total against all caps). */
static moe_err check_caps(const moe_cluster *c)
{
	uint64_t need = 0, caps = 0;
	bool all_capped = true;
	for (int il = 0; il < c->hp->n_layer; il++)
		need += moe_clu_expert_bytes(c, il) * (uint64_t)c->hp->n_expert;
	for (int i = 0; i < c->n_links; i++) {
		caps += c->links[i].cap;
		all_capped = all_capped && c->links[i].cap > 0;
	}
	for (int i = 0; i < c->n_links; i++) {
		const clink *l = &c->links[i];
		const uint64_t b = held_bytes(c, l);
		if (l->cap == 0 || b <= l->cap)
			continue;
		char total[160] = "";
		if (all_capped)
			snprintf(total, sizeof total,
			         "; the experts are %llu bytes, the caps of all workers %llu",
			         (unsigned long long)need, (unsigned long long)caps);
		return moe_fail(MOE_ERR_INVAL,
		                "worker %s (%s) would hold %llu bytes of experts%s, over its "
		                "\"mem\" cap of %llu by %llu%s",
		                l->name, l->url, (unsigned long long)b,
		                c->o.replicate ? " with the replicas" : "",
		                (unsigned long long)l->cap, (unsigned long long)(b - l->cap),
		                total);
	}
	return MOE_OK;
}

moe_err moe_clu_place(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert, n = c->n_links;
	double total = 0, acc = 0;
	int bound[MOE_CLUSTER_MAX_LINKS + 1];
	/* an expert index costs col bytes on its owner (all its layers) */
	uint64_t col = 0;
	for (int il = 0; il < nl; il++)
		col += moe_clu_expert_bytes(c, il);
	for (int i = 0; i < n; i++) {
		const clink *l = &c->links[i];
		total += (double)(l->cap ? l->cap : l->mem ? l->mem : 1);
	}
	bound[0] = 0;
	for (int i = 0; i < n; i++) {
		const clink *l = &c->links[i];
		acc += (double)(l->cap ? l->cap : l->mem ? l->mem : 1);
		bound[i + 1] = i + 1 == n ? ne : (int)((double)ne * acc / total + 0.5);
		/* a capped link takes no more whole expert indices than fit */
		if (l->cap > 0 && col > 0 && i + 1 < n &&
		    (uint64_t)(bound[i + 1] - bound[i]) > l->cap / col)
			bound[i + 1] = bound[i] + (int)(l->cap / col);
		if (bound[i + 1] < bound[i])
			bound[i + 1] = bound[i];
	}
	for (int i = 0; i < n; i++)
		memset(c->links[i].held, 0, (size_t)nl * (size_t)ne);
	for (int il = 0; il < nl; il++) {
		for (int e = 0; e < ne; e++) {
			int owner = 0;
			if (c->o.place == MOE_PLACE_ROUND_ROBIN)
				owner = e % n;
			else
				while (owner + 1 < n && e >= bound[owner + 1])
					owner++;
			c->links[owner].held[(size_t)il * (size_t)ne + (size_t)e] = 1;
			if (c->o.replicate && strcmp(c->o.replicate, "all") == 0 && n > 1)
				c->links[(owner + 1) % n]
				    .held[(size_t)il * (size_t)ne + (size_t)e] = 1;
		}
	}
	if (c->o.replicate && strcmp(c->o.replicate, "all") != 0) {
		const char *p = c->o.replicate;
		while (*p) {
			char *end;
			errno = 0;
			long e = strtol(p, &end, 10);
			if (end == p || errno != 0 || e < 0 || e >= ne || (*end && *end != ','))
				return moe_fail(MOE_ERR_INVAL,
				                "--replicate %s: want all or expert ids < %d",
				                c->o.replicate, ne);
			for (int i = 0; i < n; i++)
				for (int il = 0; il < nl; il++)
					c->links[i].held[(size_t)il * (size_t)ne + (size_t)e] = 1;
			p = end + (*end == ',');
		}
	}
	return check_caps(c);
}

moe_err moe_clu_repair(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	bool changed[MOE_CLUSTER_MAX_LINKS] = {0};
	int alive[MOE_CLUSTER_MAX_LINKS], na = 0;
	uint64_t hb[MOE_CLUSTER_MAX_LINKS] = {0}; /* bytes each survivor holds */
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive) {
			hb[i] = c->links[i].cap > 0 ? held_bytes(c, &c->links[i]) : 0;
			alive[na++] = i;
		}
	for (int il = 0; il < nl; il++) {
		const uint64_t eb = moe_clu_expert_bytes(c, il);
		for (int e = 0; e < ne; e++) {
			const size_t k = (size_t)il * (size_t)ne + (size_t)e;
			bool held = false;
			for (int j = 0; j < na && !held; j++)
				held = c->links[alive[j]].held[k] != 0;
			if (held)
				continue;
			if (na == 0)
				return moe_fail(MOE_ERR_CLOSED,
				                "no worker left to hold layer %d expert %d", il, e);
			/* the survivor holding the fewest experts of this layer
			 * that has room under its cap */
			int best = -1, best_n = 0;
			for (int j = 0; j < na; j++) {
				const clink *s = &c->links[alive[j]];
				if (s->cap > 0 && hb[alive[j]] + eb > s->cap)
					continue;
				int cnt = 0;
				for (int x = 0; x < ne; x++)
					cnt += s->held[(size_t)il * (size_t)ne + (size_t)x];
				if (best < 0 || cnt < best_n) {
					best = alive[j];
					best_n = cnt;
				}
			}
			if (best < 0)
				return moe_fail(
				    MOE_ERR_NOMEM,
				    "no surviving worker has room under its \"mem\" cap "
				    "for layer %d expert %d (%llu bytes)",
				    il, e, (unsigned long long)eb);
			c->links[best].held[k] = 1;
			hb[best] += eb;
			changed[best] = true;
			c->cnt.reassigns++;
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		if (!changed[i])
			continue;
		clink *l = &c->links[i];
		moe_log(MOE_LOG_WARN, "re-assigning experts: worker %s now holds more", l->name);
		moe_err err = moe_clu_assign(c, l);
		if (err != MOE_OK) {
			moe_clu_mark_dead(c, l, moe_err_detail());
			return moe_clu_repair(c); /* fewer survivors: try again */
		}
	}
	return MOE_OK;
}
