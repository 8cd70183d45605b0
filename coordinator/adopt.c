/*
 * adopt.c - several coordinators, one expert pool: what a worker says it
 * holds when it authenticates (AUTH_OK's held list, checked here), and the
 * adoption of a complete placement the workers already hold (a second
 * coordinator joining, or one that restarted after a kill), so that its
 * ASSIGNs name what is there and load nothing; and the load of every
 * coordinator together, from the workers' counts, for the rebalancer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

moe_err moe_clu_held_read(moe_cluster *c, clink *l, const Moemesh__AuthOk *ok)
{
	const uint32_t nl = (uint32_t)c->hp->n_layer, ne = (uint32_t)c->hp->n_expert;
	memset(l->has, 0, (size_t)nl * ne);
	l->others = ok->sessions;
	for (size_t i = 0; i < ok->n_held; i++) {
		const Moemesh__LayerExperts *le = ok->held[i];
		if (le == NULL || le->layer >= nl)
			return moe_fail(MOE_ERR_PROTO, "worker %s: AUTH_OK holds layer %u of %u",
			                l->url, le ? le->layer : 0, nl);
		uint8_t *h = l->has + (size_t)le->layer * ne;
		for (size_t j = 0; j < le->n_ranges; j++) {
			const Moemesh__ExpertRange *r = le->ranges[j];
			if (r == NULL || r->first >= ne || r->count > ne - r->first)
				return moe_fail(
				    MOE_ERR_PROTO,
				    "worker %s: AUTH_OK holds experts [%u, +%u) of layer "
				    "%u, which has %u",
				    l->url, r ? r->first : 0, r ? r->count : 0, le->layer, ne);
			memset(h + r->first, 1, r->count);
		}
		for (size_t j = 0; j < le->n_experts; j++) {
			if (le->experts[j] >= ne)
				return moe_fail(
				    MOE_ERR_PROTO,
				    "worker %s: AUTH_OK holds expert %u of layer %u, which "
				    "has %u",
				    l->url, le->experts[j], le->layer, ne);
			h[le->experts[j]] = 1;
		}
	}
	return MOE_OK;
}

bool moe_clu_adopt(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	const size_t nh = (size_t)nl * (size_t)ne;
	for (int i = 0; i < c->n_links; i++) {
		const clink *l = &c->links[i];
		if (l->local)
			return false;
		uint64_t bytes = 0, n = 0;
		for (int il = 0; il < nl; il++) {
			const uint64_t eb = moe_clu_expert_bytes(c, il);
			for (int e = 0; e < ne; e++)
				if (l->has[(size_t)il * (size_t)ne + (size_t)e]) {
					bytes += eb;
					n++;
				}
		}
		if (n == 0 || (l->cap != 0 && bytes > l->cap))
			return false;
	}
	for (size_t k = 0; k < nh; k++) {
		bool any = false;
		for (int i = 0; i < c->n_links && !any; i++)
			any = c->links[i].has[k] != 0;
		if (!any)
			return false;
	}
	uint32_t others = 0;
	for (int i = 0; i < c->n_links; i++) {
		memcpy(c->links[i].held, c->links[i].has, nh);
		others = c->links[i].others > others ? c->links[i].others : others;
	}
	moe_log(MOE_LOG_INFO,
	        "the %d workers hold a whole placement already (%u other coordinator%s "
	        "connected): adopted, nothing to load",
	        c->n_links, others, others == 1 ? "" : "s");
	return true;
}

/* l's STATS expert_rows into rows ([nh]); false if it did not answer them. */
static bool read_rows(clink *l, uint64_t *rows, size_t nh, int timeout_ms)
{
	nng_msg *msg;
	moe_frame f;
	if (moe_nng_send_sealed(l->ctl, l->ctl_tx, MOE_MSG_STATS_REQUEST, NULL) != MOE_OK ||
	    moe_clu_ctl_expect(&msg, &f, l, MOE_MSG_STATS, timeout_ms) != MOE_OK)
		return false;
	Moemesh__Stats *st = moemesh__stats__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	const bool ok = st != NULL && st->n_expert_rows == nh;
	if (ok)
		memcpy(rows, st->expert_rows, nh * sizeof *rows);
	moemesh__stats__free_unpacked(st, NULL);
	return ok;
}

bool moe_clu_union_load(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	const size_t nh = (size_t)nl * (size_t)ne;
	const int tmo = c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000;
	bool all = true, any = false, got[MOE_CLUSTER_MAX_LINKS] = {false};
	uint64_t *now = calloc((size_t)c->n_links * nh, sizeof *now);
	if (now == NULL)
		return false;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!l->alive)
			continue;
		if (l->local || l->async) {
			all = false;
			l->rows_ok = false;
			continue;
		}
		/* the control socket is the heartbeat thread's while it holds the
		 * lock (an echo awaited, at most a deadline): wait for it.  Not a
		 * trylock: serve's idle tick and the heartbeat thread both run
		 * every second from starts a millisecond apart, so a window that
		 * meets a beat meets the next one too (DESIGN.md, "Failure
		 * semantics").  A link that the beat found lost is not asked. */
		moe_clu_ctl_lock(c, l);
		const bool read = atomic_load(&l->wstate) != MOE_CLU_W_LOST &&
		                  read_rows(l, now + (size_t)i * nh, nh, tmo);
		moe_clu_ctl_unlock(c, l);
		if (!read) {
			all = false;
			l->rows_ok = false;
			continue;
		}
		got[i] = any = true;
		/* counters only grow within a session; else a restarted worker */
		for (size_t k = 0; l->rows_ok && k < nh; k++)
			l->rows_ok = now[(size_t)i * nh + k] >= l->rows[k];
		all = all && l->rows_ok;
	}
	all = all && any; /* no live link: nothing read */
	if (all) {
		memset(c->eload, 0, nh * sizeof *c->eload);
		memset(c->wload, 0, (size_t)nl * MOE_CLUSTER_MAX_LINKS * sizeof *c->wload);
		for (int i = 0; i < c->n_links; i++) {
			const clink *l = &c->links[i];
			if (!l->alive)
				continue;
			for (size_t k = 0; k < nh; k++) {
				const uint64_t d = now[(size_t)i * nh + k] - l->rows[k];
				c->eload[k] += d;
				c->wload[(k / (size_t)ne) * MOE_CLUSTER_MAX_LINKS + (size_t)i] += d;
			}
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!got[i])
			continue;
		memcpy(l->rows, now + (size_t)i * nh, nh * sizeof *l->rows);
		l->rows_ok = true;
	}
	free(now);
	return all;
}
