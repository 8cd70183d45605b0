/*
 * dispatch.c - the cluster's expert backend: one layer's routed
 * experts computed by the workers that hold them.
 *
 * start(): quantise the FFN input once (the gate weights' activation form,
 * exactly as the single-process path does), choose for every (token, slot)
 * a live holder of its expert, and write one DISPATCH per involved worker
 * (only the rows of its tokens, straight from the quantised buffer).
 * finish(): run the experts hosted here, then poll every pending data socket
 * at once and add each RESULT's moe_fix_t rows into acc.  (token, slot) pairs
 * whose worker failed stay to do: experts without a live holder are
 * re-assigned, and another round sends them again.  A worker that answers
 * with an ERROR stays alive for MOE_CLU_ERROR_RETRIES such replies in a row
 * (its pairs go out again in the next round, rotating among holders); the
 * next one marks it dead.
 *
 * Two lanes (cluster_impl.h): lane 0 is moe_cluster_backend, lane 1
 * moe_cluster_overlap_backend, each with its own buffers; a call on each may
 * be in flight at once.  A link answers in the order it is sent to: the
 * cluster's per-link fifo says whose RESULT comes next, and a lane's wait that
 * reads the other lane's puts its rows in that lane's stash (exact sums: added
 * at its finish, the same bits).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"

#define MAX_DISPATCH_TOKENS 4096 /* the worker's cap (server.c) */

/* A DISPATCH of more bytes than this is not sent to a link while the other
 * lane waits for its RESULT there: the worker may be blocked writing that
 * RESULT (its rows unread here), and a frame this size fits the socket
 * buffers of either side, so its send cannot block on it; a larger one waits
 * until that RESULT is read. */
#define OVERLAP_SEND_MAX (64u * 1024u)

void moe_clu_lanes_init(moe_cluster *c)
{
	for (int k = 0; k < 2; k++)
		c->lanes[k] = (clane){.c = c,
		                      .be = {.ctx = &c->lanes[k],
		                             .start = moe_clu_backend_start,
		                             .finish = moe_clu_backend_finish}};
}

const moe_expert_backend *moe_cluster_overlap_backend(moe_cluster *c)
{
	return c->o.overlap ? &c->lanes[1].be : NULL;
}

void moe_clu_free_buffers(moe_cluster *c)
{
	for (int k = 0; k < 2; k++) {
		clane *ln = &c->lanes[k];
		moe_aligned_free(ln->xq);
		free(ln->todo);
		free(ln->lids);
		moe_aligned_free(ln->stash);
		ln->xq = NULL;
		ln->todo = NULL;
		ln->lids = NULL;
		ln->stash = NULL;
		ln->xq_cap = ln->todo_cap = ln->stash_cap = ln->max_tok = 0;
		for (int i = 0; i < MOE_CLUSTER_MAX_LINKS; i++) {
			clane_link *lk = &ln->lk[i];
			free(lk->tok);
			free(lk->ids);
			free(lk->wts);
			free(lk->iov);
			*lk = (clane_link){0};
		}
	}
}

static clane *other(clane *ln)
{
	return &ln->c->lanes[ln == &ln->c->lanes[0]];
}

/* Room for a stash of n_tok rows in ln. */
static moe_err reserve_stash(clane *ln, int64_t n_tok)
{
	const size_t n = (size_t)n_tok * (size_t)ln->c->hp->n_embd;
	if (n <= ln->stash_cap)
		return MOE_OK;
	moe_aligned_free(ln->stash);
	ln->stash = moe_aligned_alloc(64, n * sizeof *ln->stash);
	ln->stash_cap = ln->stash != NULL ? n : 0;
	if (ln->stash == NULL)
		return moe_fail(MOE_ERR_NOMEM, "cluster: a stash of %lld rows", (long long)n_tok);
	return MOE_OK;
}

static moe_err reserve(clane *ln, int64_t n_tok, int n_used)
{
	moe_cluster *c = ln->c;
	const size_t nx = (size_t)n_tok * ln->act_row;
	if (nx > ln->xq_cap) {
		moe_aligned_free(ln->xq);
		ln->xq = moe_aligned_alloc(64, nx);
		ln->xq_cap = ln->xq ? nx : 0;
		if (ln->xq == NULL)
			return moe_fail(MOE_ERR_NOMEM, "cluster: %zu bytes of activations", nx);
	}
	const size_t ns = (size_t)n_tok * (size_t)n_used;
	if (ns > ln->todo_cap) {
		free(ln->todo);
		free(ln->lids);
		ln->todo = malloc(ns);
		ln->lids = malloc(ns * sizeof *ln->lids);
		ln->todo_cap = ln->todo && ln->lids ? ns : 0;
		if (ln->todo_cap == 0)
			return moe_fail(MOE_ERR_NOMEM, "cluster: slot tables");
	}
	if ((size_t)n_tok > ln->max_tok || ns > ln->max_tok * (size_t)ln->n_used) {
		for (int i = 0; i < c->n_links; i++) {
			clane_link *l = &ln->lk[i];
			free(l->tok);
			free(l->ids);
			free(l->wts);
			free(l->iov);
			l->tok = malloc((size_t)n_tok * sizeof *l->tok);
			l->ids = malloc(ns * sizeof *l->ids);
			l->wts = malloc(ns * sizeof *l->wts);
			l->iov = malloc((size_t)n_tok * sizeof *l->iov);
			if (!l->tok || !l->ids || !l->wts || !l->iov) {
				ln->max_tok = 0;
				return moe_fail(MOE_ERR_NOMEM, "cluster: dispatch tables");
			}
		}
		ln->max_tok = (size_t)n_tok;
	}
	/* with the other lane in flight, either may read the other's rows */
	moe_err err;
	clane *o = other(ln);
	if (o->busy && ((err = reserve_stash(ln, n_tok)) != MOE_OK ||
	                (err = reserve_stash(o, o->n_tok)) != MOE_OK))
		return err;
	return MOE_OK;
}

/* The link that computes (t, j) this round: a live holder, rotating among
 * replicas by token; -1 if none holds the expert. */
static int choose(const clane *ln, int64_t t, int32_t e)
{
	const moe_cluster *c = ln->c;
	int cand[MOE_CLUSTER_MAX_LINKS], n = 0;
	const size_t k = (size_t)ln->il * (size_t)c->hp->n_expert + (size_t)e;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive && c->links[i].held[k])
			cand[n++] = i;
	if (n == 0)
		return -1;
	return cand[(size_t)(t + (int64_t)c->rr) % (size_t)n];
}

void moe_clu_link_reset(moe_cluster *c, int i)
{
	for (int k = 0; k < 2; k++)
		c->lanes[k].lk[i].pending = false;
	c->fifo_n[i] = 0;
	c->links[i].errors = 0;
}

/* Whether ln waits for link i's answer (a link marked dead answers nothing:
 * what ln sent there stays to do, and the link's dispatch state is reset). */
static bool waits(clane *ln, int i)
{
	moe_cluster *c = ln->c;
	if (ln->lk[i].pending && !c->links[i].alive)
		moe_clu_link_reset(c, i);
	return ln->lk[i].pending;
}

static void gather(clane *ln, moe_fix_t *acc, int only);

/* Sends what is still to do; link failures leave their pairs to do. */
static moe_err send_round(clane *ln)
{
	moe_cluster *c = ln->c;
	clane *o = other(ln);
	const int64_t nt = ln->n_tok;
	const int nu = ln->n_used;
	moe_err err;

	/* every expert still needed must have a live holder */
	for (int64_t s = 0; s < nt * nu; s++) {
		if (ln->todo[s] && choose(ln, s / nu, ln->ids[s]) < 0) {
			if ((err = moe_clu_repair(c)) != MOE_OK)
				return err;
			break;
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		ln->lk[i].pending = false;
		ln->lk[i].n_sent = 0;
		if (!waits(o, i))
			c->fifo_n[i] = 0;
	}
	for (int64_t s = 0; s < nt * nu; s++)
		ln->lids[s] = -1;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		clane_link *lk = &ln->lk[i];
		if (!l->alive)
			continue;
		int rows = 0, n_iov = 0;
		uint64_t pairs = 0;
		for (int64_t t = 0; t < nt; t++) {
			bool any = false;
			for (int j = 0; j < nu; j++) {
				const int64_t s = t * nu + j;
				const bool mine = ln->todo[s] && choose(ln, t, ln->ids[s]) == i;
				pairs += mine;
				if (l->local) {
					if (mine)
						ln->lids[s] = ln->ids[s];
					continue;
				}
				lk->ids[(size_t)rows * (size_t)nu + (size_t)j] =
				    mine ? ln->ids[s] : -1;
				lk->wts[(size_t)rows * (size_t)nu + (size_t)j] = ln->wts[s];
				any |= mine;
			}
			if (!any || l->local)
				continue;
			lk->tok[rows] = (int32_t)t;
			uint8_t *row = ln->xq + (size_t)t * ln->act_row;
			if (n_iov > 0 &&
			    (uint8_t *)lk->iov[n_iov - 1].iov_base + lk->iov[n_iov - 1].iov_len ==
			        row)
				lk->iov[n_iov - 1].iov_len += ln->act_row;
			else
				lk->iov[n_iov++] =
				    (struct iovec){.iov_base = row, .iov_len = ln->act_row};
			rows++;
		}
		c->wload[(size_t)ln->il * MOE_CLUSTER_MAX_LINKS + (size_t)i] += pairs;
		l->st.routed += pairs;
		if (l->local || rows == 0)
			continue;
		if ((size_t)rows * ln->act_row > OVERLAP_SEND_MAX && waits(o, i))
			gather(o, NULL, i); /* its RESULT there first (into its stash) */
		if (!l->alive)
			continue;
		Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
		d.step = ln->step;
		d.layer = (uint32_t)ln->il;
		d.n_tokens = (uint32_t)rows;
		d.act_type = (uint32_t)ln->act_type;
		d.n_embd = (uint32_t)c->hp->n_embd;
		d.n_used = (uint32_t)nu;
		d.n_expert_ids = (size_t)rows * (size_t)nu;
		d.expert_ids = lk->ids;
		d.n_weights = (size_t)rows * (size_t)nu;
		d.weights = lk->wts;
		lk->t_sent = moe_now_ns();
		/* sealed into the link's own buffer: the rows are shared by links */
		err = moe_stream_send_sealed(l->dfd, l->data_tx, MOE_MSG_DISPATCH, &d.base, lk->iov,
		                             n_iov, false);
		if (err != MOE_OK) {
			moe_clu_mark_dead(c, l, moe_err_detail());
			continue;
		}
		lk->n_sent = rows;
		lk->pending = true;
		c->fifo[i][c->fifo_n[i]++] = (uint8_t)(ln - c->lanes);
	}
	c->rr++;
	return MOE_OK;
}

moe_err moe_clu_backend_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                              const float *weights, int n_used)
{
	clane *ln = ctx;
	moe_cluster *c = ln->c;
	const uint64_t t0 = moe_now_ns();
	const moe_expert_ffn *ffn = moe_model_experts(c->m, il);
	moe_err err;

	ln->start_err = MOE_OK;
	ln->busy = false;
	ln->n_tok = 0;
	if (ffn == NULL || n_tok <= 0 || n_tok > MAX_DISPATCH_TOKENS || n_used <= 0 || n_used > 64)
		return ln->start_err = moe_fail(MOE_ERR_INVAL,
		                                "cluster: layer %d, %lld tokens (max %d), %d slots",
		                                il, (long long)n_tok, MAX_DISPATCH_TOKENS, n_used);
	ln->il = il;
	ln->n_used = n_used;
	ln->ids = ids;
	ln->wts = weights;
	ln->act_type = moe_type_get(ffn->gate.type)->vec_dot_type;
	ln->act_row = moe_act_row_size(ffn->gate.type, c->hp->n_embd);
	ln->step = ++c->step;
	ln->stashed = false;
	if ((err = reserve(ln, n_tok, n_used)) != MOE_OK ||
	    (err = moe_quantize_act_rows(c->pool, ln->xq, ffn->gate.type, x, c->hp->n_embd,
	                                 n_tok)) != MOE_OK)
		return ln->start_err = err;
	ln->n_tok = n_tok;
	uint64_t *eload = c->eload + (size_t)il * (size_t)c->hp->n_expert;
	for (int64_t s = 0; s < n_tok * n_used; s++) {
		ln->todo[s] = ids[s] >= 0;
		if (ln->todo[s])
			eload[ids[s]]++; /* the rebalancer's window */
	}
	err = send_round(ln);
	c->cnt.start_ns += moe_now_ns() - t0;
	ln->busy = err == MOE_OK;
	return ln->start_err = err;
}

/* Where owner's rows go when cur's wait reads them: acc for cur itself, else
 * owner's stash (zeroed at its first rows). */
static moe_fix_t *rows_to(clane *owner, const clane *cur, moe_fix_t *acc)
{
	if (owner == cur && acc != NULL)
		return acc;
	if (!owner->stashed) {
		memset(owner->stash, 0,
		       (size_t)owner->n_tok * (size_t)owner->c->hp->n_embd * sizeof *owner->stash);
		owner->stashed = true;
	}
	return owner->stash;
}

/* Adds a RESULT's rows (of lane ln, on link i) into acc and marks its pairs
 * done. */
static moe_err take_result(clane *ln, int i, const moe_frame *f, moe_fix_t *acc,
                           uint64_t *max_compute)
{
	clink *l = &ln->c->links[i];
	clane_link *lk = &ln->lk[i];
	const int n_embd = ln->c->hp->n_embd, nu = ln->n_used;
	if (f->kind == MOE_MSG_ERROR) {
		Moemesh__Error *e = moemesh__error__unpack(NULL, f->header_len, f->header);
		moe_err err = moe_fail(MOE_ERR_PROTO, "answered ERROR %d times in a row: %s",
		                       l->errors, e && e->message ? e->message : "(undecodable)");
		moemesh__error__free_unpacked(e, NULL);
		return err;
	}
	Moemesh__Result *r;
	moe_err err = moe_proto_read_result(&r, f, ln->step, (uint32_t)ln->il, (uint32_t)lk->n_sent,
	                                    (uint32_t)n_embd);
	if (err != MOE_OK)
		return err;
	const int64_t *rows = (const int64_t *)(const void *)f->payload;
	for (int k = 0; k < lk->n_sent; k++) {
		moe_fix_t *dst = acc + (size_t)lk->tok[k] * (size_t)n_embd;
		const int64_t *src = rows + (size_t)k * (size_t)n_embd;
		for (int e = 0; e < n_embd; e++)
			dst[e] += src[e];
		for (int j = 0; j < nu; j++)
			if (lk->ids[(size_t)k * (size_t)nu + (size_t)j] >= 0)
				ln->todo[(size_t)lk->tok[k] * (size_t)nu + (size_t)j] = 0;
	}
	l->st.dispatches++;
	l->st.rtt_ns += moe_now_ns() - lk->t_sent;
	l->st.compute_ns += r->compute_ns;
	if (r->compute_ns > *max_compute)
		*max_compute = r->compute_ns;
	moemesh__result__free_unpacked(r, NULL);
	return MOE_OK;
}

/* Reads a frame of link i if one is in (false if not, or the link failed),
 * whose owner is the head of its fifo: into acc if that is cur (acc not
 * NULL), else into the owner's stash. */
static bool take_frame(clane *cur, int i, moe_fix_t *acc, uint64_t *max_compute)
{
	moe_cluster *c = cur->c;
	clink *l = &c->links[i];
	clane *owner = &c->lanes[c->fifo_n[i] > 0 ? c->fifo[i][0] : 0];
	clane_link *lk = &owner->lk[i];
	bool done;
	moe_frame f;
	const size_t cap =
	    (size_t)MOE_PROTO_MAX_HEADER + 4096 + (size_t)lk->n_sent * (size_t)c->hp->n_embd * 8u;
	moe_err err = c->fifo_n[i] > 0 && lk->pending
	                  ? moe_rx_read(&done, &f, &l->rx, l->dfd, cap, false)
	                  : moe_fail(MOE_ERR_PROTO, "a frame nobody waits for");
	if (err == MOE_OK && !done)
		return false;
	if (err == MOE_OK) {
		lk->pending = false;
		c->fifo[i][0] = c->fifo[i][1];
		c->fifo_n[i]--;
	}
	if (err == MOE_OK && f.kind == MOE_MSG_ERROR && ++l->errors <= MOE_CLU_ERROR_RETRIES) {
		/* transient: its pairs stay to do, sent again next round */
		l->st.errors++;
		c->cnt.error_retries++;
		moe_log(MOE_LOG_WARN,
		        "worker %s answered a DISPATCH with an ERROR (%d in a row): "
		        "sending it again",
		        l->name, l->errors);
		return true;
	}
	if (err == MOE_OK) {
		c->cnt.stashed += owner != cur || acc == NULL;
		err = take_result(owner, i, &f, rows_to(owner, cur, acc), max_compute);
		if (err == MOE_OK)
			l->errors = 0;
	}
	if (err != MOE_OK)
		moe_clu_mark_dead(c, l, moe_err_detail());
	return err == MOE_OK;
}

/* Waits on every link ln waits for (only that one if only >= 0) until all
 * answered or the deadline; frames of the other lane read on the way go to
 * its stash (so do ln's own when acc is NULL). */
static void gather(clane *ln, moe_fix_t *acc, int only)
{
	moe_cluster *c = ln->c;
	const int tmo = c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000;
	const uint64_t t0 = moe_now_ns(), deadline = t0 + (uint64_t)tmo * 1000000u;
	uint64_t max_compute = 0;
	for (;;) {
		struct pollfd p[MOE_CLUSTER_MAX_LINKS];
		int who[MOE_CLUSTER_MAX_LINKS], n = 0;
		for (int i = 0; i < c->n_links; i++) {
			if (only >= 0 && i != only)
				continue;
			/* a frame an earlier read brought in (poll cannot see it) */
			while (waits(ln, i) && take_frame(ln, i, acc, &max_compute))
				;
			if (waits(ln, i)) {
				p[n] = (struct pollfd){.fd = c->links[i].dfd, .events = POLLIN};
				who[n++] = i;
			}
		}
		if (n == 0)
			break;
		const uint64_t now = moe_now_ns();
		const int left = now >= deadline ? 0 : (int)((deadline - now) / 1000000u) + 1;
		int rv = poll(p, (nfds_t)n, left);
		if (rv == 0 || (rv < 0 && errno != EINTR)) {
			for (int k = 0; k < n; k++) {
				char why[128];
				snprintf(why, sizeof why, "no RESULT within the %d ms deadline",
				         tmo);
				moe_clu_mark_dead(c, &c->links[who[k]], why);
			}
			break;
		}
		for (int k = 0; k < n && rv > 0; k++)
			if (p[k].revents)
				while (waits(ln, who[k]) &&
				       take_frame(ln, who[k], acc, &max_compute))
					;
	}
	c->cnt.wait_ns += moe_now_ns() - t0;
	c->cnt.worker_ns += max_compute;
}

static moe_err finish(clane *ln, moe_fix_t *acc)
{
	moe_cluster *c = ln->c;
	const int64_t ns = ln->n_tok * ln->n_used;
	moe_err err;
	if (ln->start_err != MOE_OK)
		return ln->start_err;
	c->cnt.layers++;
	for (int round = 0;; round++) {
		bool local = false;
		for (int64_t s = 0; s < ns && !local; s++)
			local = ln->lids[s] >= 0;
		if (local) {
			const uint64_t t0 = moe_now_ns();
			err =
			    moe_expert_ffn_run_q(c->pool, acc, moe_model_experts(c->m, ln->il),
			                         ln->xq, ln->n_tok, ln->lids, ln->wts, ln->n_used);
			if (err != MOE_OK)
				return err;
			for (int64_t s = 0; s < ns; s++)
				if (ln->lids[s] >= 0)
					ln->todo[s] = 0;
			for (int i = 0; i < c->n_links; i++)
				if (c->links[i].local)
					c->links[i].st.dispatches++;
			c->cnt.local_ns += moe_now_ns() - t0;
		}
		gather(ln, acc, -1);
		uint64_t left = 0;
		for (int64_t s = 0; s < ns; s++)
			left += ln->todo[s] != 0;
		if (left == 0)
			return MOE_OK;
		if (round > c->n_links * (MOE_CLU_ERROR_RETRIES + 1) + 1)
			return moe_fail(
			    MOE_ERR_CLOSED,
			    "cluster: layer %d still has %llu (token, expert) pairs after "
			    "%d rounds",
			    ln->il, (unsigned long long)left, round + 1);
		c->cnt.retries += left;
		if ((err = send_round(ln)) != MOE_OK)
			return err;
	}
}

moe_err moe_clu_backend_finish(void *ctx, moe_fix_t *acc)
{
	clane *ln = ctx;
	moe_err err = finish(ln, acc);
	if (err != MOE_OK) {
		/* its answers still on the way are read (into its stash) and dropped */
		char why[512];
		snprintf(why, sizeof why, "%s", moe_err_detail());
		for (int i = 0; i < ln->c->n_links; i++) {
			if (!waits(ln, i))
				continue;
			if (reserve_stash(ln, ln->n_tok) == MOE_OK)
				gather(ln, NULL, i);
			else
				moe_clu_mark_dead(ln->c, &ln->c->links[i], "no memory to drain it");
		}
		ln->busy = false;
		return moe_fail(err, "%s", why);
	}
	if (ln->stashed) {
		const size_t n = (size_t)ln->n_tok * (size_t)ln->c->hp->n_embd;
		for (size_t k = 0; k < n; k++)
			acc[k] += ln->stash[k];
	}
	ln->busy = false;
	return err;
}
