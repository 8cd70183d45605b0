/*
 * batch.c - the worker's dispatches: validation, the expert FFNs, RESULT.
 * The DISPATCHes that connections have ready in one pass of the poll loop
 * (several coordinators' at once) are grouped by layer and each group is
 * computed as one batch: their activation rows, expert ids and weights put
 * one after the other, one expert pass (the expert's weights read once),
 * each RESULT then sent its own rows.  The kernels are row-independent
 * (test_batch_invariance), so a row's result is the one it gets alone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/server_impl.h"

static void delay_us(int us)
{
	if (us <= 0)
		return;
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* Checks what the generic validation cannot: the activation form matches this
 * layer's weights and every expert asked for is held here. */
static moe_err check_dispatch(const server *s, const Moemesh__Dispatch *d)
{
	if (s->store == NULL)
		return moe_fail(MOE_ERR_STATE, "DISPATCH before any ASSIGN was loaded");
	const moe_expert_ffn *ffn = &s->ffn[d->layer];
	const moe_type want = moe_type_get(ffn->gate.type)->vec_dot_type;
	if (d->act_type != (uint32_t)want)
		return moe_fail(MOE_ERR_BAD_TYPE, "DISPATCH act_type %s, layer %u's gate takes %s",
		                moe_type_get((moe_type)d->act_type)->name, d->layer,
		                moe_type_get(want)->name);
	for (size_t i = 0; i < d->n_expert_ids; i++) {
		const int32_t e = d->expert_ids[i];
		if (e >= 0 && ffn->gate.expert[e] == NULL)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "DISPATCH expert_ids[%zu] = %d: layer %u expert %d is not "
			                "held by this worker",
			                i, e, d->layer, e);
	}
	return MOE_OK;
}

/* An ERROR to connection i (marked dead if it cannot be sent). */
static void reply_error(server *s, int i, moe_err code, const char *what, uint64_t step)
{
	conn *c = &s->conns[i];
	if (moe_wk_data_error(s, c->fd, c->tx, code, what, step) != MOE_OK)
		c->dead = true;
}

/* Grows s's result and concatenation buffers for n_tok rows of x_bytes. */
static moe_err grow(server *s, size_t n_tok, size_t x_bytes, size_t n_ids)
{
	const size_t n = n_tok * (size_t)s->hp.n_embd;
	if (n > s->acc_cap) {
		moe_fix_t *a = moe_aligned_alloc(64, n * sizeof *a);
		if (a == NULL)
			return moe_fail(MOE_ERR_NOMEM, "no memory for the result");
		moe_aligned_free(s->acc);
		s->acc = a;
		s->acc_cap = n;
	}
	if (x_bytes > s->xcat_cap) {
		uint8_t *x = moe_aligned_alloc(64, x_bytes);
		if (x == NULL)
			return moe_fail(MOE_ERR_NOMEM, "no memory for a batch's rows");
		moe_aligned_free(s->xcat);
		s->xcat = x;
		s->xcat_cap = x_bytes;
	}
	if (n_ids > s->cat_cap) {
		int32_t *ids = realloc(s->idcat, n_ids * sizeof *ids);
		if (ids != NULL)
			s->idcat = ids;
		float *w = realloc(s->wcat, n_ids * sizeof *w);
		if (w != NULL)
			s->wcat = w;
		if (ids == NULL || w == NULL)
			return moe_fail(MOE_ERR_NOMEM, "no memory for a batch's expert ids");
		s->cat_cap = n_ids;
	}
	return MOE_OK;
}

/* Computes the k dispatches d[0..k-1] (of pd's connections at, one layer)
 * as one batch and answers each. */
static void run_group(server *s, moe_wk_pending *pd, Moemesh__Dispatch **d, const int *at, int k)
{
	char msg[600];
	size_t n_tok = 0, x_bytes = 0, n_ids = 0;
	for (int j = 0; j < k; j++) {
		n_tok += d[j]->n_tokens;
		x_bytes += pd[at[j]].f.payload_len;
		n_ids += d[j]->n_expert_ids;
	}
	moe_err err = grow(s, n_tok, k > 1 ? x_bytes : 0, k > 1 ? n_ids : 0);
	if (err != MOE_OK) {
		for (int j = 0; j < k; j++)
			reply_error(s, pd[at[j]].conn, err, moe_err_detail(), d[j]->step);
		return;
	}
	const void *x = pd[at[0]].f.payload;
	const int32_t *ids = d[0]->expert_ids;
	const float *w = d[0]->weights;
	if (k > 1) {
		size_t xo = 0, io = 0;
		for (int j = 0; j < k; j++) {
			memcpy(s->xcat + xo, pd[at[j]].f.payload, pd[at[j]].f.payload_len);
			xo += pd[at[j]].f.payload_len;
			memcpy(s->idcat + io, d[j]->expert_ids, d[j]->n_expert_ids * sizeof *ids);
			memcpy(s->wcat + io, d[j]->weights, d[j]->n_weights * sizeof *w);
			io += d[j]->n_expert_ids;
		}
		x = s->xcat;
		ids = s->idcat;
		w = s->wcat;
		s->st.dispatches_merged += (uint64_t)k;
	}
	const size_t n = n_tok * (size_t)s->hp.n_embd;
	memset(s->acc, 0, n * sizeof *s->acc);
	const uint32_t layer = d[0]->layer;
	const uint64_t t0 = moe_now_ns();
	err = moe_expert_ffn_run_q(s->pool, s->acc, &s->ffn[layer], x, (int64_t)n_tok, ids, w,
	                           (int)d[0]->n_used);
	const uint64_t dt = moe_now_ns() - t0;
	if (err != MOE_OK) {
		snprintf(msg, sizeof msg, "expert FFN failed: %s: %s", moe_err_name(err),
		         moe_err_detail());
		for (int j = 0; j < k; j++)
			reply_error(s, pd[at[j]].conn, err, msg, d[j]->step);
		return;
	}
	s->st.compute_ns += dt;
	size_t row = 0;
	for (int j = 0; j < k; j++) {
		const Moemesh__Dispatch *dj = d[j];
		const size_t nj = (size_t)dj->n_tokens * (size_t)s->hp.n_embd;
		s->st.dispatches++;
		s->st.tokens += dj->n_tokens;
		for (size_t i = 0; i < dj->n_expert_ids; i++)
			if (dj->expert_ids[i] >= 0) {
				s->st.expert_tokens++;
				s->st.expert_rows[(size_t)layer * (size_t)s->hp.n_expert +
				                  (size_t)dj->expert_ids[i]]++;
			}
		s->st.bytes_in += pd[at[j]].f.payload_len;
		s->st.bytes_out += nj * sizeof *s->acc;
		if (s->o->on_computed != NULL)
			s->o->on_computed(s->o->observer_ctx, s->st.dispatches);
		Moemesh__Result r = MOEMESH__RESULT__INIT;
		r.step = dj->step;
		r.layer = dj->layer;
		r.n_tokens = dj->n_tokens;
		r.n_embd = dj->n_embd;
		r.compute_ns = dt;
		const struct iovec iov = {.iov_base = s->acc + row * (size_t)s->hp.n_embd,
		                          .iov_len = nj * sizeof *s->acc};
		row += dj->n_tokens;
		conn *c = &s->conns[pd[at[j]].conn];
		/* sealed where it lies: the result buffer is cleared before its
		 * next use, and each RESULT's rows are its own */
		if (moe_stream_send_sealed(c->fd, c->tx, MOE_MSG_RESULT, &r.base, &iov, 1, true) !=
		    MOE_OK)
			c->dead = true;
	}
}

void moe_wk_serve_dispatches(server *s, moe_wk_pending *pd, int n)
{
	char msg[600];
	Moemesh__Dispatch *d[MAX_CONNS] = {NULL};
	bool todo[MAX_CONNS] = {false};
	for (int i = 0; i < n; i++) {
		moe_err err = moe_proto_read_dispatch(&d[i], &pd[i].f, &s->lim);
		if (err == MOE_OK && (err = check_dispatch(s, d[i])) != MOE_OK) {
			moemesh__dispatch__free_unpacked(d[i], NULL);
			d[i] = NULL;
		}
		if (err != MOE_OK) {
			s->st.bad_frames++;
			snprintf(msg, sizeof msg, "bad DISPATCH: %s: %s", moe_err_name(err),
			         moe_err_detail());
			reply_error(s, pd[i].conn, err, msg, 0);
			continue;
		}
		if (s->o->fail_dispatch != NULL && s->o->fail_dispatch(s->o->observer_ctx)) {
			reply_error(s, pd[i].conn, MOE_ERR_IO, "DISPATCH failed (injected)",
			            d[i]->step);
			continue;
		}
		todo[i] = true;
	}
	delay_us(s->o->net_delay_us); /* the way in, once for what came together */
	for (int i = 0; i < n; i++) {
		if (!todo[i])
			continue;
		int at[MAX_CONNS] = {0}, k = 0;
		Moemesh__Dispatch *g[MAX_CONNS] = {NULL};
		for (int j = i; j < n; j++)
			if (todo[j] && d[j]->layer == d[i]->layer && d[j]->n_used == d[i]->n_used) {
				at[k] = j;
				g[k++] = d[j];
				todo[j] = false;
			}
		run_group(s, pd, g, at, k);
	}
	delay_us(s->o->net_delay_us); /* and out */
	for (int i = 0; i < n; i++)
		moemesh__dispatch__free_unpacked(d[i], NULL);
}
