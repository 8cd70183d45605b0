/*
 * rebalance.c - live re-placement of experts by their load (EPLB): the load
 * windows (dispatch counts the pairs), their imbalance, the planner (moves,
 * replicas and un-replicas per layer within the workers' byte budgets), the
 * three-phase change that runs while serving (load the union, switch the
 * routing between steps, drop), and the metrics other threads read.
 */
#include <nng/nng.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

#define LOAD_SILENCE_NS  (120ull * 1000000000ull) /* as link.c allows an ASSIGN */
#define WINDOW_DEFAULT_S 10.0                     /* the imbalance gauge without --rebalance */
#define MIN_GAIN         0.98  /* a plan must bring the imbalance under this share of it */
#define STEP_GAIN        0.995 /* one planner action must lower a layer's busiest by this */
#define CANDIDATES       16    /* experts of the busiest worker tried per action */
#define MAX_ACTIONS      128   /* per layer and plan: bounds its time; the next window goes on */

enum { PHASE_IDLE = 0, PHASE_LOADING, PHASE_DROPPING };

typedef struct link_snap {
	char name[64];
	bool alive;
	uint64_t routed, bytes, errors;
} link_snap;

struct rebal {
	uint8_t *base; /* [n_layer][n_expert] holders at placement: never fewer */
	uint8_t *plan; /* [n_links][n_layer][n_expert] the placement being made */
	double *load;  /* [n_layer][n_expert] the closed window's pairs */
	uint64_t win_pairs;
	double win_t0;
	int phase;
	bool abort;          /* a worker was lost or repaired meanwhile: no switch */
	uint64_t reassigns0; /* c->cnt.reassigns when the change began */
	bool alive0[MOE_CLUSTER_MAX_LINKS];
	pthread_mutex_t mu; /* guards what other threads read: */
	moe_cluster_balance bal;
	link_snap snap[MOE_CLUSTER_MAX_LINKS];
	int n_snap;
	moe_cluster_counters cnt; /* c->cnt at the last snapshot or tick */
};

static void snapshot(moe_cluster *c);

static size_t nh_of(const moe_cluster *c)
{
	return (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
}

moe_err moe_clu_rebalance_init(moe_cluster *c)
{
	const size_t nh = nh_of(c);
	struct rebal *rb = calloc(1, sizeof *rb);
	if (rb == NULL)
		return moe_fail(MOE_ERR_NOMEM, "rebalancer");
	c->rb = rb;
	if (pthread_mutex_init(&rb->mu, NULL) != 0) {
		free(rb);
		c->rb = NULL;
		return moe_fail(MOE_ERR_SYS, "rebalancer: pthread_mutex_init");
	}
	rb->base = calloc(nh, 1);
	rb->plan = calloc((size_t)c->n_links * nh, 1);
	rb->load = calloc(nh, sizeof *rb->load);
	c->eload = calloc(nh, sizeof *c->eload);
	c->wload = calloc((size_t)c->hp->n_layer * MOE_CLUSTER_MAX_LINKS, sizeof *c->wload);
	if (!rb->base || !rb->plan || !rb->load || !c->eload || !c->wload)
		return moe_fail(MOE_ERR_NOMEM, "rebalancer tables");
	for (int i = 0; i < c->n_links; i++)
		for (size_t k = 0; k < nh; k++)
			rb->base[k] += c->links[i].held[k] != 0;
	rb->win_t0 = moe_now_s();
	snapshot(c);
	return MOE_OK;
}

void moe_clu_rebalance_free(moe_cluster *c)
{
	struct rebal *rb = c->rb;
	free(c->eload);
	free(c->wload);
	c->eload = c->wload = NULL;
	if (rb == NULL)
		return;
	pthread_mutex_destroy(&rb->mu);
	free(rb->base);
	free(rb->plan);
	free(rb->load);
	free(rb);
	c->rb = NULL;
}

/* ---- the change's ASSIGNs ----------------------------------------------------------- */

/* Takes what l's control socket has for the ASSIGN in flight; with wait,
 * until it is done.  l->async is false once it is.  Errors: the worker's
 * ERROR, MOE_ERR_CLOSED / MOE_ERR_TIMEOUT, MOE_ERR_PROTO (the caller marks
 * it dead). */
static moe_err poll_link(moe_cluster *c, clink *l, bool wait)
{
	for (;;) {
		nng_msg *msg;
		moe_frame f;
		moe_err err;
		if (wait) {
			err = moe_clu_ctl_expect(&msg, &f, l, MOE_MSG_LOAD_PROGRESS, 120000);
		} else {
			err = moe_nng_recv_sealed(&msg, &f, l->ctl, l->ctl_rx, 0);
			if (err == MOE_ERR_TIMEOUT) {
				if (atomic_load(&l->pipes) == 0)
					return moe_fail(MOE_ERR_CLOSED,
					                "worker %s (%s) closed the connection "
					                "while loading",
					                l->name, l->url);
				if (moe_now_ns() - l->async_t > LOAD_SILENCE_NS)
					return moe_fail(MOE_ERR_TIMEOUT,
					                "worker %s (%s) silent for 120 s while "
					                "loading",
					                l->name, l->url);
				return MOE_OK;
			}
			if (err != MOE_OK)
				return err;
			if (f.kind == MOE_MSG_ERROR) {
				Moemesh__Error *e =
				    moemesh__error__unpack(NULL, f.header_len, f.header);
				err = moe_fail(MOE_ERR_PROTO, "worker %s (%s) refused: %s", l->name,
				               l->url,
				               e && e->message ? e->message : "(undecodable)");
				moemesh__error__free_unpacked(e, NULL);
				nng_msg_free(msg);
				return err;
			}
			if (f.kind != MOE_MSG_LOAD_PROGRESS) {
				nng_msg_free(msg); /* a late heartbeat echo */
				continue;
			}
		}
		if (err != MOE_OK)
			return err;
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		const bool done = p == NULL || p->done;
		moemesh__load_progress__free_unpacked(p, NULL);
		l->async_t = moe_now_ns();
		if (!done) {
			nng_msg_free(msg);
			continue;
		}
		const uint64_t in0 = l->st.assign_loaded, out0 = l->st.assign_dropped;
		err = moe_clu_assign_done(c, l, &f, l->next);
		nng_msg_free(msg);
		l->async = false;
		struct rebal *rb = c->rb;
		pthread_mutex_lock(&rb->mu);
		rb->bal.bytes_loaded += l->st.assign_loaded - in0;
		rb->bal.bytes_dropped += l->st.assign_dropped - out0;
		pthread_mutex_unlock(&rb->mu);
		return err;
	}
}

moe_err moe_clu_rebalance_drain(moe_cluster *c, clink *l)
{
	if (c->rb == NULL || !l->async)
		return MOE_OK;
	c->rb->abort = c->rb->phase == PHASE_LOADING;
	moe_clu_ctl_lock(c, l);
	const moe_err err = poll_link(c, l, true);
	moe_clu_ctl_unlock(c, l);
	return err;
}

/* Sends set to l without waiting (l->next keeps it). */
static void send_async(moe_cluster *c, clink *l, const uint8_t *set)
{
	memcpy(l->next, set, nh_of(c));
	moe_clu_ctl_lock(c, l); /* async is read under it by the heartbeat thread */
	moe_err err = moe_clu_send_assign(c, l, l->next);
	if (err == MOE_OK) {
		l->async = true;
		l->async_t = moe_now_ns();
	}
	moe_clu_ctl_unlock(c, l);
	if (err != MOE_OK)
		moe_clu_mark_dead(c, l, moe_err_detail());
}

/* Polls (or with wait, waits for) every ASSIGN in flight; true when none is. */
static bool poll_all(moe_cluster *c, bool wait)
{
	bool busy = false;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!l->async)
			continue;
		if (!l->alive) {
			moe_clu_ctl_lock(c, l);
			l->async = false;
			moe_clu_ctl_unlock(c, l);
			continue;
		}
		if (wait) {
			moe_clu_ctl_lock(c, l);
		} else if (!moe_clu_ctl_trylock(c, l)) {
			busy = true; /* a heartbeat's echo awaited: the next tick */
			continue;
		}
		moe_err err = poll_link(c, l, wait);
		if (err != MOE_OK)
			l->async = false;
		const bool still = l->async;
		moe_clu_ctl_unlock(c, l);
		if (err != MOE_OK)
			moe_clu_mark_dead(c, l, moe_err_detail());
		busy |= still;
	}
	return !busy;
}

/* Moves the change under way on: loading -> switch -> dropping -> idle. */
static void advance(moe_cluster *c, bool wait)
{
	struct rebal *rb = c->rb;
	const size_t nh = nh_of(c);
	while (rb->phase != PHASE_IDLE) {
		if (!poll_all(c, wait))
			return;
		if (rb->phase == PHASE_LOADING) { /* a worker lost or repaired: no switch */
			for (int i = 0; i < c->n_links; i++)
				if (rb->alive0[i] && !c->links[i].alive)
					rb->abort = true;
			if (c->cnt.reassigns != rb->reassigns0)
				rb->abort = true;
		}
		if (rb->phase == PHASE_DROPPING || rb->abort) {
			rb->phase = PHASE_IDLE;
			return;
		}
		/* every worker holds its old and new experts: switch the routing */
		for (int i = 0; i < c->n_links; i++) {
			clink *l = &c->links[i];
			if (!l->alive)
				continue;
			memcpy(l->held, rb->plan + (size_t)i * nh, nh);
			uint64_t n = 0;
			for (size_t k = 0; k < nh; k++)
				n += l->held[k] != 0;
			l->st.experts_held = n;
			if (l->local)
				memcpy(l->loaded, l->held, nh);
		}
		pthread_mutex_lock(&rb->mu);
		rb->bal.rebalances++;
		pthread_mutex_unlock(&rb->mu);
		rb->phase = PHASE_DROPPING;
		for (int i = 0; i < c->n_links; i++) {
			clink *l = &c->links[i];
			if (l->alive && !l->local && memcmp(l->loaded, l->held, nh) != 0)
				send_async(c, l, l->held);
		}
	}
}

/* ---- windows and the planner ---------------------------------------------------------- */

/* sum over layers of the busiest live link's load / of the mean's, from a
 * per-layer per-link table (stride MOE_CLUSTER_MAX_LINKS); 0 without load. */
static double imbalance_of(const moe_cluster *c, const double *lw)
{
	double smax = 0, smean = 0;
	int na = 0;
	for (int i = 0; i < c->n_links; i++)
		na += c->links[i].alive;
	if (na == 0)
		return 0;
	for (int il = 0; il < c->hp->n_layer; il++) {
		const double *r = lw + (size_t)il * MOE_CLUSTER_MAX_LINKS;
		double mx = 0, sum = 0;
		for (int i = 0; i < c->n_links; i++) {
			if (!c->links[i].alive)
				continue;
			sum += r[i];
			mx = r[i] > mx ? r[i] : mx;
		}
		smax += mx;
		smean += sum / na;
	}
	return smean > 0 ? smax / smean : 0;
}

/* Ends the window: its imbalance as dispatch routed it, its expert loads
 * kept for the planner, the counters zeroed. */
static void close_window(moe_cluster *c)
{
	struct rebal *rb = c->rb;
	const int nl = c->hp->n_layer;
	const size_t nh = nh_of(c);
	/* every coordinator's load, as the workers saw it */
	const bool uni = moe_clu_union_load(c);
	double *lw = calloc((size_t)nl * MOE_CLUSTER_MAX_LINKS, sizeof *lw);
	if (lw == NULL)
		return;
	for (size_t k = 0; k < (size_t)nl * MOE_CLUSTER_MAX_LINKS; k++)
		lw[k] = (double)c->wload[k];
	const double imb = imbalance_of(c, lw);
	free(lw);
	rb->win_pairs = 0;
	for (size_t k = 0; k < nh; k++) {
		rb->load[k] = (double)c->eload[k];
		rb->win_pairs += c->eload[k];
	}
	memset(c->eload, 0, nh * sizeof *c->eload);
	memset(c->wload, 0, (size_t)nl * MOE_CLUSTER_MAX_LINKS * sizeof *c->wload);
	rb->win_t0 = moe_now_s();
	pthread_mutex_lock(&rb->mu);
	if (rb->win_pairs > 0)
		rb->bal.imbalance = imb;
	rb->bal.windows++;
	rb->bal.union_windows += uni;
	pthread_mutex_unlock(&rb->mu);
}

/* Each live link's load in layer il under placement pl: an expert's pairs
 * split evenly between its live holders. */
static void layer_loads(const moe_cluster *c, const uint8_t *pl, int il, double *ld)
{
	const int ne = c->hp->n_expert;
	const size_t nh = nh_of(c);
	const double *L = c->rb->load + (size_t)il * (size_t)ne;
	for (int i = 0; i < c->n_links; i++)
		ld[i] = 0;
	for (int e = 0; e < ne; e++) {
		if (L[e] <= 0)
			continue;
		int k = 0;
		for (int i = 0; i < c->n_links; i++)
			k += c->links[i].alive && pl[(size_t)i * nh + (size_t)il * ne + e];
		for (int i = 0; k > 0 && i < c->n_links; i++)
			if (c->links[i].alive && pl[(size_t)i * nh + (size_t)il * ne + e])
				ld[i] += L[e] / k;
	}
}

/* An expert of the busiest worker that an action may move or replicate. */
typedef struct cand_t {
	int e, k;  /* expert, its live holders */
	double sh; /* the pairs each holder gets */
} cand_t;

static double max_alive(const moe_cluster *c, const double *ld, int *arg)
{
	double mx = -1;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive && ld[i] > mx) {
			mx = ld[i];
			if (arg)
				*arg = i;
		}
	return mx;
}

/* Link i's entry for layer il's expert e in a plan of n_links tables. */
static uint8_t *at(uint8_t *pl, size_t nh, int ne, int i, int il, int e)
{
	return pl + (size_t)i * nh + (size_t)il * (size_t)ne + (size_t)e;
}

/* Plans layer il in rb->plan: un-replicas that cost the busiest nothing,
 * then moves and replicas while they lower it.  ub: per link the bytes it
 * holds or is getting, within budget. */
static void plan_layer(moe_cluster *c, int il, uint64_t *ub, const uint64_t *budget)
{
	struct rebal *rb = c->rb;
	const int ne = c->hp->n_expert, n = c->n_links;
	const size_t nh = nh_of(c);
	const uint64_t eb = moe_clu_expert_bytes(c, il);
	const double *L = rb->load + (size_t)il * (size_t)ne;
	uint8_t *pl = rb->plan;
	double ld[MOE_CLUSTER_MAX_LINKS], tmp[MOE_CLUSTER_MAX_LINKS];

	/* replicas beyond the placement's that the busiest does not need */
	for (int e = 0; e < ne; e++) {
		int k = 0;
		for (int i = 0; i < n; i++)
			k += c->links[i].alive && *at(pl, nh, ne, i, il, e);
		while (k >
		       (rb->base[(size_t)il * ne + e] > 1 ? rb->base[(size_t)il * ne + e] : 1)) {
			layer_loads(c, pl, il, ld);
			const double mx = max_alive(c, ld, NULL);
			int h = -1;
			for (int i = 0; i < n; i++)
				if (c->links[i].alive && *at(pl, nh, ne, i, il, e) &&
				    (h < 0 || ld[i] > ld[h]))
					h = i;
			*at(pl, nh, ne, h, il, e) = 0;
			layer_loads(c, pl, il, tmp);
			if (max_alive(c, tmp, NULL) > mx) {
				*at(pl, nh, ne, h, il, e) = 1;
				break;
			}
			k--;
		}
	}

	for (int iter = 0; iter < MAX_ACTIONS; iter++) {
		layer_loads(c, pl, il, ld);
		int w = -1;
		const double mx = max_alive(c, ld, &w);
		if (w < 0 || mx <= 0)
			break;
		/* the busiest's experts with the largest shares */
		cand_t cand[CANDIDATES];
		int nc = 0;
		for (int e = 0; e < ne; e++) {
			if (!*at(pl, nh, ne, w, il, e) || L[e] <= 0)
				continue;
			int k = 0;
			for (int i = 0; i < n; i++)
				k += c->links[i].alive && *at(pl, nh, ne, i, il, e);
			const cand_t x = {.e = e, .k = k, .sh = L[e] / k};
			int pos;
			if (nc < CANDIDATES)
				pos = nc++;
			else if (cand[CANDIDATES - 1].sh >= x.sh)
				continue; /* not among the largest */
			else
				pos = CANDIDATES - 1;
			for (; pos > 0 && cand[pos - 1].sh < x.sh; pos--)
				cand[pos] = cand[pos - 1];
			cand[pos] = x;
		}
		double best = mx * STEP_GAIN;
		int be = -1, bt = -1;
		bool bmove = false;
		for (int ci = 0; ci < nc; ci++) {
			const int e = cand[ci].e, k = cand[ci].k;
			const double sh = cand[ci].sh, sh1 = L[e] / (k + 1);
			for (int t = 0; t < n; t++) {
				const clink *lt = &c->links[t];
				if (!lt->alive || *at(pl, nh, ne, t, il, e))
					continue;
				const size_t ke = (size_t)il * ne + e;
				const bool free_ = lt->loaded[ke] || lt->held[ke];
				if (!free_ && ub[t] + eb > budget[t])
					continue;
				/* move from w to t */
				memcpy(tmp, ld, sizeof(double) * (size_t)n);
				tmp[w] -= sh;
				tmp[t] += sh;
				double m = max_alive(c, tmp, NULL);
				if (m < best) {
					best = m;
					be = e;
					bt = t;
					bmove = true;
				}
				/* a replica on t */
				memcpy(tmp, ld, sizeof(double) * (size_t)n);
				for (int i = 0; i < n; i++)
					if (c->links[i].alive && *at(pl, nh, ne, i, il, e))
						tmp[i] -= sh - sh1;
				tmp[t] += sh1;
				m = max_alive(c, tmp, NULL);
				if (m < best) {
					best = m;
					be = e;
					bt = t;
					bmove = false;
				}
			}
		}
		if (be < 0)
			break;
		const size_t ke = (size_t)il * ne + be;
		if (!c->links[bt].loaded[ke] && !c->links[bt].held[ke])
			ub[bt] += eb;
		*at(pl, nh, ne, bt, il, be) = 1;
		if (bmove)
			*at(pl, nh, ne, w, il, be) = 0;
	}
}

/* The imbalance that placement pl gives the window's loads. */
static double planned_imbalance(moe_cluster *c, const uint8_t *pl)
{
	const int nl = c->hp->n_layer;
	double *lw = calloc((size_t)nl * MOE_CLUSTER_MAX_LINKS, sizeof *lw);
	if (lw == NULL)
		return 0;
	for (int il = 0; il < nl; il++)
		layer_loads(c, pl, il, lw + (size_t)il * MOE_CLUSTER_MAX_LINKS);
	const double r = imbalance_of(c, lw);
	free(lw);
	return r;
}

/* Plans from the closed window and starts the change if it pays. */
static void start_change(moe_cluster *c)
{
	struct rebal *rb = c->rb;
	const size_t nh = nh_of(c);
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	int na = 0;
	for (int i = 0; i < c->n_links; i++)
		na += c->links[i].alive;
	if (na < 2 || rb->win_pairs == 0)
		return;
	uint64_t ub[MOE_CLUSTER_MAX_LINKS] = {0}, budget[MOE_CLUSTER_MAX_LINKS];
	for (int i = 0; i < c->n_links; i++) {
		const clink *l = &c->links[i];
		uint8_t *p = rb->plan + (size_t)i * nh;
		if (l->alive)
			memcpy(p, l->held, nh);
		else
			memset(p, 0, nh);
		/* a lost worker's mem is the heartbeat thread's while it re-dials */
		budget[i] = !l->alive ? 0 : l->cap ? l->cap : l->mem ? l->mem : UINT64_MAX;
		for (int il = 0; il < nl; il++) {
			const uint64_t eb = moe_clu_expert_bytes(c, il);
			for (int e = 0; e < ne; e++) {
				const size_t k = (size_t)il * ne + e;
				ub[i] += l->loaded[k] || l->held[k] ? eb : 0;
			}
		}
	}
	const double before = planned_imbalance(c, rb->plan);
	for (int il = 0; il < nl; il++)
		plan_layer(c, il, ub, budget);
	const double after = planned_imbalance(c, rb->plan);
	if (!(after < before * MIN_GAIN))
		return;
	pthread_mutex_lock(&rb->mu);
	rb->bal.before = rb->bal.imbalance; /* as dispatch routed it */
	rb->bal.planned = after;            /* replicas' pairs split evenly */
	pthread_mutex_unlock(&rb->mu);
	/* (1) every worker gaining experts loads its old and new ones */
	rb->phase = PHASE_LOADING;
	rb->abort = false;
	rb->reassigns0 = c->cnt.reassigns;
	uint8_t *u = malloc(nh);
	if (u == NULL) {
		rb->phase = PHASE_IDLE;
		return;
	}
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		rb->alive0[i] = l->alive;
		if (!l->alive || l->local)
			continue;
		const uint8_t *p = rb->plan + (size_t)i * nh;
		bool gains = false;
		for (size_t k = 0; k < nh; k++) {
			u[k] = l->held[k] || p[k];
			gains |= u[k] && !l->loaded[k];
		}
		if (gains)
			send_async(c, l, u);
	}
	free(u);
}

/* What other threads read: per link its name, state, pairs, ERROR replies
 * and bytes; the failure counters. */
static void snapshot(moe_cluster *c)
{
	struct rebal *rb = c->rb;
	pthread_mutex_lock(&rb->mu);
	rb->n_snap = c->n_links;
	for (int i = 0; i < c->n_links; i++) {
		const clink *l = &c->links[i];
		snprintf(rb->snap[i].name, sizeof rb->snap[i].name, "%s", l->name);
		rb->snap[i].alive = l->alive;
		rb->snap[i].routed = l->st.routed;
		rb->snap[i].errors = l->st.errors;
		uint64_t b = 0;
		for (int il = 0; il < c->hp->n_layer; il++) {
			const uint64_t eb = moe_clu_expert_bytes(c, il);
			for (int e = 0; e < c->hp->n_expert; e++)
				b += l->held[(size_t)il * c->hp->n_expert + e] ? eb : 0;
		}
		rb->snap[i].bytes = b;
	}
	rb->cnt = c->cnt;
	pthread_mutex_unlock(&rb->mu);
}

/* ---- the public side -------------------------------------------------------------------- */

moe_err moe_cluster_tick(moe_cluster *c)
{
	struct rebal *rb = c->rb;
	const double period = c->o.rebalance_s > 0 ? c->o.rebalance_s : WINDOW_DEFAULT_S;
	const int phase = rb->phase;
	advance(c, false);
	bool changed = rb->phase != phase;
	if (moe_now_s() - rb->win_t0 >= period) {
		close_window(c);
		if (c->o.rebalance_s > 0 && rb->phase == PHASE_IDLE) {
			start_change(c);
			advance(c, false);
		}
		changed = true;
	}
	/* a worker lost or experts re-loaded since: who is up and what each holds */
	changed |= c->cnt.lost != rb->cnt.lost || c->cnt.reassigns != rb->cnt.reassigns ||
	           c->cnt.readmitted != rb->cnt.readmitted;
	if (changed) {
		snapshot(c);
	} else { /* the counters only */
		pthread_mutex_lock(&rb->mu);
		for (int i = 0; i < c->n_links; i++) {
			rb->snap[i].routed = c->links[i].st.routed;
			rb->snap[i].errors = c->links[i].st.errors;
		}
		rb->cnt = c->cnt;
		pthread_mutex_unlock(&rb->mu);
	}
	return MOE_OK;
}

double moe_cluster_window(moe_cluster *c)
{
	close_window(c);
	snapshot(c);
	return moe_cluster_get_balance(c).imbalance;
}

moe_err moe_cluster_settle(moe_cluster *c)
{
	advance(c, true);
	snapshot(c);
	return MOE_OK;
}

moe_err moe_cluster_rebalance(moe_cluster *c)
{
	advance(c, true);
	close_window(c);
	start_change(c);
	advance(c, true);
	snapshot(c);
	return MOE_OK;
}

moe_cluster_balance moe_cluster_get_balance(moe_cluster *c)
{
	pthread_mutex_lock(&c->rb->mu);
	const moe_cluster_balance b = c->rb->bal;
	pthread_mutex_unlock(&c->rb->mu);
	return b;
}

bool moe_cluster_holds(const moe_cluster *c, int i, int il, int e)
{
	if (i < 0 || i >= c->n_links || il < 0 || il >= c->hp->n_layer || e < 0 ||
	    e >= c->hp->n_expert)
		return false;
	return c->links[i].held[(size_t)il * (size_t)c->hp->n_expert + (size_t)e] != 0;
}

void moe_cluster_metrics(moe_cluster *c, FILE *out)
{
	struct rebal *rb = c->rb;
	pthread_mutex_lock(&rb->mu);
	const moe_cluster_balance b = rb->bal;
	link_snap s[MOE_CLUSTER_MAX_LINKS];
	const int n = rb->n_snap;
	memcpy(s, rb->snap, sizeof s);
	const moe_cluster_counters k = rb->cnt;
	pthread_mutex_unlock(&rb->mu);
	fprintf(out, "# HELP moemesh_worker_routed_tokens_total (token, expert) pairs sent to "
	             "each worker.\n"
	             "# TYPE moemesh_worker_routed_tokens_total counter\n");
	for (int i = 0; i < n; i++)
		fprintf(out, "moemesh_worker_routed_tokens_total{worker=\"%s\"} %llu\n", s[i].name,
		        (unsigned long long)s[i].routed);
	fprintf(out, "# HELP moemesh_worker_expert_bytes Expert bytes each worker serves.\n"
	             "# TYPE moemesh_worker_expert_bytes gauge\n");
	for (int i = 0; i < n; i++)
		fprintf(out, "moemesh_worker_expert_bytes{worker=\"%s\"} %llu\n", s[i].name,
		        (unsigned long long)(s[i].alive ? s[i].bytes : 0));
	fprintf(out, "# HELP moemesh_worker_up 1 while the worker serves, 0 once it was lost.\n"
	             "# TYPE moemesh_worker_up gauge\n");
	for (int i = 0; i < n; i++)
		fprintf(out, "moemesh_worker_up{worker=\"%s\"} %d\n", s[i].name, s[i].alive);
	fprintf(out, "# HELP moemesh_worker_error_replies_total DISPATCHes the worker answered "
	             "with an ERROR.\n"
	             "# TYPE moemesh_worker_error_replies_total counter\n");
	for (int i = 0; i < n; i++)
		fprintf(out, "moemesh_worker_error_replies_total{worker=\"%s\"} %llu\n", s[i].name,
		        (unsigned long long)s[i].errors);
	fprintf(out,
	        "# HELP moemesh_cluster_retried_pairs_total (token, expert) pairs sent again "
	        "after a worker failed or answered ERROR.\n"
	        "# TYPE moemesh_cluster_retried_pairs_total counter\n"
	        "moemesh_cluster_retried_pairs_total %llu\n"
	        "# HELP moemesh_cluster_error_retries_total ERROR replies whose DISPATCH was "
	        "sent again.\n"
	        "# TYPE moemesh_cluster_error_retries_total counter\n"
	        "moemesh_cluster_error_retries_total %llu\n"
	        "# HELP moemesh_cluster_replaced_experts_total Experts re-loaded onto "
	        "survivors after a worker was lost.\n"
	        "# TYPE moemesh_cluster_replaced_experts_total counter\n"
	        "moemesh_cluster_replaced_experts_total %llu\n"
	        "# HELP moemesh_cluster_workers_lost_total Workers marked dead.\n"
	        "# TYPE moemesh_cluster_workers_lost_total counter\n"
	        "moemesh_cluster_workers_lost_total %llu\n"
	        "# HELP moemesh_cluster_workers_readmitted_total Lost workers re-dialled and "
	        "taken back.\n"
	        "# TYPE moemesh_cluster_workers_readmitted_total counter\n"
	        "moemesh_cluster_workers_readmitted_total %llu\n",
	        (unsigned long long)k.retries, (unsigned long long)k.error_retries,
	        (unsigned long long)k.reassigns, (unsigned long long)k.lost,
	        (unsigned long long)k.readmitted);
	fprintf(out,
	        "# HELP moemesh_expert_imbalance Busiest worker's pairs over the mean's, "
	        "summed over layers, in the last window.\n"
	        "# TYPE moemesh_expert_imbalance gauge\nmoemesh_expert_imbalance %.4f\n"
	        "# HELP moemesh_rebalance_imbalance_before The imbalance of the window the "
	        "last re-placement was planned from.\n"
	        "# TYPE moemesh_rebalance_imbalance_before gauge\n"
	        "moemesh_rebalance_imbalance_before %.4f\n"
	        "# HELP moemesh_rebalance_imbalance_planned What the new placement gives that "
	        "window's loads.\n"
	        "# TYPE moemesh_rebalance_imbalance_planned gauge\n"
	        "moemesh_rebalance_imbalance_planned %.4f\n"
	        "# HELP moemesh_rebalances_total Routing switches to a new placement.\n"
	        "# TYPE moemesh_rebalances_total counter\nmoemesh_rebalances_total %llu\n"
	        "# HELP moemesh_rebalance_bytes_loaded_total Expert bytes workers loaded for "
	        "re-placements.\n"
	        "# TYPE moemesh_rebalance_bytes_loaded_total counter\n"
	        "moemesh_rebalance_bytes_loaded_total %llu\n"
	        "# HELP moemesh_rebalance_bytes_dropped_total Expert bytes workers dropped "
	        "for them.\n"
	        "# TYPE moemesh_rebalance_bytes_dropped_total counter\n"
	        "moemesh_rebalance_bytes_dropped_total %llu\n"
	        "# HELP moemesh_load_windows_total Load windows closed.\n"
	        "# TYPE moemesh_load_windows_total counter\n"
	        "moemesh_load_windows_total %llu\n"
	        "# HELP moemesh_load_windows_union_total Load windows whose load is the "
	        "workers' counts: every coordinator's.\n"
	        "# TYPE moemesh_load_windows_union_total counter\n"
	        "moemesh_load_windows_union_total %llu\n",
	        b.imbalance, b.before, b.planned, (unsigned long long)b.rebalances,
	        (unsigned long long)b.bytes_loaded, (unsigned long long)b.bytes_dropped,
	        (unsigned long long)b.windows, (unsigned long long)b.union_windows);
}

int moe_cluster_worker_states(moe_cluster *c, moe_cluster_worker_state *out, int max)
{
	struct rebal *rb = c->rb;
	pthread_mutex_lock(&rb->mu);
	const int n = rb->n_snap < max ? rb->n_snap : max;
	for (int i = 0; i < n; i++) {
		snprintf(out[i].name, sizeof out[i].name, "%s", rb->snap[i].name);
		out[i].up = rb->snap[i].alive;
	}
	pthread_mutex_unlock(&rb->mu);
	return n;
}
