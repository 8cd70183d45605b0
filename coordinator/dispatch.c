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
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"

#define MAX_DISPATCH_TOKENS 4096 /* the worker's cap (server.c) */

void moe_clu_free_buffers(moe_cluster *c)
{
	moe_aligned_free(c->xq);
	free(c->todo);
	free(c->lids);
	c->xq = NULL;
	c->todo = NULL;
	c->lids = NULL;
}

static moe_err reserve(moe_cluster *c, int64_t n_tok, int n_used)
{
	const size_t nx = (size_t)n_tok * c->act_row;
	if (nx > c->xq_cap) {
		moe_aligned_free(c->xq);
		c->xq = moe_aligned_alloc(64, nx);
		c->xq_cap = c->xq ? nx : 0;
		if (c->xq == NULL)
			return moe_fail(MOE_ERR_NOMEM, "cluster: %zu bytes of activations", nx);
	}
	const size_t ns = (size_t)n_tok * (size_t)n_used;
	if (ns > c->todo_cap) {
		free(c->todo);
		free(c->lids);
		c->todo = malloc(ns);
		c->lids = malloc(ns * sizeof *c->lids);
		c->todo_cap = c->todo && c->lids ? ns : 0;
		if (c->todo_cap == 0)
			return moe_fail(MOE_ERR_NOMEM, "cluster: slot tables");
	}
	if ((size_t)n_tok > c->max_tok || ns > c->max_tok * (size_t)c->n_used) {
		for (int i = 0; i < c->n_links; i++) {
			clink *l = &c->links[i];
			free(l->tok);
			free(l->ids);
			free(l->wts);
			free(l->iov);
			l->tok = malloc((size_t)n_tok * sizeof *l->tok);
			l->ids = malloc(ns * sizeof *l->ids);
			l->wts = malloc(ns * sizeof *l->wts);
			l->iov = malloc((size_t)n_tok * sizeof *l->iov);
			if (!l->tok || !l->ids || !l->wts || !l->iov) {
				c->max_tok = 0;
				return moe_fail(MOE_ERR_NOMEM, "cluster: dispatch tables");
			}
		}
		c->max_tok = (size_t)n_tok;
	}
	return MOE_OK;
}

/* The link that computes (t, j) this round: a live holder, rotating among
 * replicas by token; -1 if none holds the expert. */
static int choose(const moe_cluster *c, int64_t t, int32_t e)
{
	int cand[MOE_CLUSTER_MAX_LINKS], n = 0;
	const size_t k = (size_t)c->il * (size_t)c->hp->n_expert + (size_t)e;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive && c->links[i].held[k])
			cand[n++] = i;
	if (n == 0)
		return -1;
	return cand[(size_t)(t + (int64_t)c->rr) % (size_t)n];
}

/* Sends what is still to do; link failures leave their pairs to do. */
static moe_err send_round(moe_cluster *c)
{
	const int64_t nt = c->n_tok;
	const int nu = c->n_used;
	moe_err err;

	/* every expert still needed must have a live holder */
	for (int64_t s = 0; s < nt * nu; s++) {
		if (c->todo[s] && choose(c, s / nu, c->ids[s]) < 0) {
			if ((err = moe_clu_repair(c)) != MOE_OK)
				return err;
			break;
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		c->links[i].pending = false;
		c->links[i].n_sent = 0;
	}
	for (int64_t s = 0; s < nt * nu; s++)
		c->lids[s] = -1;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!l->alive)
			continue;
		int rows = 0, n_iov = 0;
		uint64_t pairs = 0;
		for (int64_t t = 0; t < nt; t++) {
			bool any = false;
			for (int j = 0; j < nu; j++) {
				const int64_t s = t * nu + j;
				const bool mine = c->todo[s] && choose(c, t, c->ids[s]) == i;
				pairs += mine;
				if (l->local) {
					if (mine)
						c->lids[s] = c->ids[s];
					continue;
				}
				l->ids[(size_t)rows * (size_t)nu + (size_t)j] =
				    mine ? c->ids[s] : -1;
				l->wts[(size_t)rows * (size_t)nu + (size_t)j] = c->wts[s];
				any |= mine;
			}
			if (!any || l->local)
				continue;
			l->tok[rows] = (int32_t)t;
			uint8_t *row = c->xq + (size_t)t * c->act_row;
			if (n_iov > 0 &&
			    (uint8_t *)l->iov[n_iov - 1].iov_base + l->iov[n_iov - 1].iov_len ==
			        row)
				l->iov[n_iov - 1].iov_len += c->act_row;
			else
				l->iov[n_iov++] =
				    (struct iovec){.iov_base = row, .iov_len = c->act_row};
			rows++;
		}
		c->wload[(size_t)c->il * MOE_CLUSTER_MAX_LINKS + (size_t)i] += pairs;
		l->st.routed += pairs;
		if (l->local || rows == 0)
			continue;
		Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
		d.step = c->step;
		d.layer = (uint32_t)c->il;
		d.n_tokens = (uint32_t)rows;
		d.act_type = (uint32_t)c->act_type;
		d.n_embd = (uint32_t)c->hp->n_embd;
		d.n_used = (uint32_t)nu;
		d.n_expert_ids = (size_t)rows * (size_t)nu;
		d.expert_ids = l->ids;
		d.n_weights = (size_t)rows * (size_t)nu;
		d.weights = l->wts;
		l->t_sent = moe_now_ns();
		/* sealed into the link's own buffer: the rows are shared by links */
		err = moe_stream_send_sealed(l->dfd, l->data_tx, MOE_MSG_DISPATCH, &d.base, l->iov,
		                             n_iov, false);
		if (err != MOE_OK) {
			moe_clu_mark_dead(c, l, moe_err_detail());
			continue;
		}
		l->n_sent = rows;
		l->pending = true;
	}
	c->rr++;
	return MOE_OK;
}

moe_err moe_clu_backend_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                              const float *weights, int n_used)
{
	moe_cluster *c = ctx;
	const uint64_t t0 = moe_now_ns();
	const moe_expert_ffn *ffn = moe_model_experts(c->m, il);
	moe_err err;

	c->start_err = MOE_OK;
	if (ffn == NULL || n_tok <= 0 || n_tok > MAX_DISPATCH_TOKENS || n_used <= 0 || n_used > 64)
		return c->start_err = moe_fail(MOE_ERR_INVAL,
		                               "cluster: layer %d, %lld tokens (max %d), %d slots",
		                               il, (long long)n_tok, MAX_DISPATCH_TOKENS, n_used);
	c->il = il;
	c->n_tok = n_tok;
	c->n_used = n_used;
	c->ids = ids;
	c->wts = weights;
	c->act_type = moe_type_get(ffn->gate.type)->vec_dot_type;
	c->act_row = moe_act_row_size(ffn->gate.type, c->hp->n_embd);
	c->step++;
	if ((err = reserve(c, n_tok, n_used)) != MOE_OK ||
	    (err = moe_quantize_act_rows(c->pool, c->xq, ffn->gate.type, x, c->hp->n_embd,
	                                 n_tok)) != MOE_OK)
		return c->start_err = err;
	uint64_t *eload = c->eload + (size_t)il * (size_t)c->hp->n_expert;
	for (int64_t s = 0; s < n_tok * n_used; s++) {
		c->todo[s] = ids[s] >= 0;
		if (c->todo[s])
			eload[ids[s]]++; /* the rebalancer's window */
	}
	err = send_round(c);
	c->cnt.start_ns += moe_now_ns() - t0;
	return c->start_err = err;
}

/* Adds a RESULT's rows into acc and marks l's pairs done. */
static moe_err take_result(moe_cluster *c, clink *l, const moe_frame *f, moe_fix_t *acc,
                           uint64_t *max_compute)
{
	const int n_embd = c->hp->n_embd, nu = c->n_used;
	if (f->kind == MOE_MSG_ERROR) {
		Moemesh__Error *e = moemesh__error__unpack(NULL, f->header_len, f->header);
		moe_err err = moe_fail(MOE_ERR_PROTO, "answered ERROR %d times in a row: %s",
		                       l->errors, e && e->message ? e->message : "(undecodable)");
		moemesh__error__free_unpacked(e, NULL);
		return err;
	}
	Moemesh__Result *r;
	moe_err err = moe_proto_read_result(&r, f, c->step, (uint32_t)c->il, (uint32_t)l->n_sent,
	                                    (uint32_t)n_embd);
	if (err != MOE_OK)
		return err;
	const int64_t *rows = (const int64_t *)(const void *)f->payload;
	for (int i = 0; i < l->n_sent; i++) {
		moe_fix_t *dst = acc + (size_t)l->tok[i] * (size_t)n_embd;
		const int64_t *src = rows + (size_t)i * (size_t)n_embd;
		for (int k = 0; k < n_embd; k++)
			dst[k] += src[k];
		for (int j = 0; j < nu; j++)
			if (l->ids[(size_t)i * (size_t)nu + (size_t)j] >= 0)
				c->todo[(size_t)l->tok[i] * (size_t)nu + (size_t)j] = 0;
	}
	l->st.dispatches++;
	l->st.rtt_ns += moe_now_ns() - l->t_sent;
	l->st.compute_ns += r->compute_ns;
	if (r->compute_ns > *max_compute)
		*max_compute = r->compute_ns;
	moemesh__result__free_unpacked(r, NULL);
	return MOE_OK;
}

/* Waits on every pending link at once until all answered or the deadline. */
static void gather(moe_cluster *c, moe_fix_t *acc)
{
	const int tmo = c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000;
	const uint64_t t0 = moe_now_ns(), deadline = t0 + (uint64_t)tmo * 1000000u;
	uint64_t max_compute = 0;
	for (;;) {
		struct pollfd p[MOE_CLUSTER_MAX_LINKS];
		int who[MOE_CLUSTER_MAX_LINKS], n = 0;
		for (int i = 0; i < c->n_links; i++) {
			if (c->links[i].pending) {
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
		for (int k = 0; k < n && rv > 0; k++) {
			if (!p[k].revents)
				continue;
			clink *l = &c->links[who[k]];
			bool done;
			moe_frame f;
			const size_t cap = (size_t)MOE_PROTO_MAX_HEADER + 4096 +
			                   (size_t)l->n_sent * (size_t)c->hp->n_embd * 8u;
			moe_err err = moe_rx_read(&done, &f, &l->rx, l->dfd, cap, false);
			if (err == MOE_OK && done && f.kind == MOE_MSG_ERROR &&
			    ++l->errors <= MOE_CLU_ERROR_RETRIES) {
				/* transient: its pairs stay to do, sent again next round */
				l->pending = false;
				l->st.errors++;
				c->cnt.error_retries++;
				moe_log(
				    MOE_LOG_WARN,
				    "worker %s answered a DISPATCH with an ERROR (%d in a row): "
				    "sending it again",
				    l->name, l->errors);
				continue;
			}
			if (err == MOE_OK && done) {
				err = take_result(c, l, &f, acc, &max_compute);
				l->pending = false;
				if (err == MOE_OK)
					l->errors = 0;
			}
			if (err != MOE_OK)
				moe_clu_mark_dead(c, l, moe_err_detail());
		}
	}
	c->cnt.wait_ns += moe_now_ns() - t0;
	c->cnt.worker_ns += max_compute;
}

moe_err moe_clu_backend_finish(void *ctx, moe_fix_t *acc)
{
	moe_cluster *c = ctx;
	const int64_t ns = c->n_tok * c->n_used;
	moe_err err;
	if (c->start_err != MOE_OK)
		return c->start_err;
	c->cnt.layers++;
	for (int round = 0;; round++) {
		bool local = false;
		for (int64_t s = 0; s < ns && !local; s++)
			local = c->lids[s] >= 0;
		if (local) {
			const uint64_t t0 = moe_now_ns();
			err = moe_expert_ffn_run_q(c->pool, acc, moe_model_experts(c->m, c->il),
			                           c->xq, c->n_tok, c->lids, c->wts, c->n_used);
			if (err != MOE_OK)
				return err;
			for (int64_t s = 0; s < ns; s++)
				if (c->lids[s] >= 0)
					c->todo[s] = 0;
			for (int i = 0; i < c->n_links; i++)
				if (c->links[i].local)
					c->links[i].st.dispatches++;
			c->cnt.local_ns += moe_now_ns() - t0;
		}
		gather(c, acc);
		uint64_t left = 0;
		for (int64_t s = 0; s < ns; s++)
			left += c->todo[s] != 0;
		if (left == 0)
			return MOE_OK;
		if (round > c->n_links * (MOE_CLU_ERROR_RETRIES + 1) + 1)
			return moe_fail(
			    MOE_ERR_CLOSED,
			    "cluster: layer %d still has %llu (token, expert) pairs after "
			    "%d rounds",
			    c->il, (unsigned long long)left, round + 1);
		c->cnt.retries += left;
		if ((err = send_round(c)) != MOE_OK)
			return err;
	}
}
