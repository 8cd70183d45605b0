/*
 * placement.c - which link holds which (layer, expert): the initial
 * placement (contiguous ranges sized by memory, or round robin, plus
 * replicas) and its repair when a worker is lost.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"

moe_err moe_clu_place(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert, n = c->n_links;
	double total = 0, acc = 0;
	int bound[MOE_CLUSTER_MAX_LINKS + 1];
	for (int i = 0; i < n; i++)
		total += (double)(c->links[i].mem ? c->links[i].mem : 1);
	bound[0] = 0;
	for (int i = 0; i < n; i++) {
		acc += (double)(c->links[i].mem ? c->links[i].mem : 1);
		bound[i + 1] = i + 1 == n ? ne : (int)((double)ne * acc / total + 0.5);
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
	return MOE_OK;
}

moe_err moe_clu_repair(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	bool changed[MOE_CLUSTER_MAX_LINKS] = {0};
	int alive[MOE_CLUSTER_MAX_LINKS], na = 0;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive)
			alive[na++] = i;
	for (int il = 0; il < nl; il++) {
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
			/* the survivor holding the fewest experts of this layer */
			int best = -1, best_n = 0;
			for (int j = 0; j < na; j++) {
				int cnt = 0;
				for (int x = 0; x < ne; x++)
					cnt += c->links[alive[j]]
					           .held[(size_t)il * (size_t)ne + (size_t)x];
				if (best < 0 || cnt < best_n) {
					best = alive[j];
					best_n = cnt;
				}
			}
			c->links[best].held[k] = 1;
			changed[best] = true;
			c->cnt.reassigns++;
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		if (!changed[i])
			continue;
		clink *l = &c->links[i];
		fprintf(stderr, "moemesh: re-assigning experts: worker %s now holds more\n",
		        l->name);
		moe_err err = moe_clu_assign(c, l);
		if (err != MOE_OK) {
			moe_clu_mark_dead(c, l, moe_err_detail());
			return moe_clu_repair(c); /* fewer survivors: try again */
		}
	}
	return MOE_OK;
}
