/*
 * tables.c - the token walker and the per-position tables.  The walker runs
 * sorted tokens through the stack machine one byte at a time, keeping one set
 * of stacks per byte depth, so tokens that share a prefix share its steps and
 * a dead prefix costs one comparison per token.  The tables (after the
 * XGrammar idea): for each position that reads bytes, walking every token
 * from a stack whose bottom is the unknown context sorts the vocabulary into
 * accepted (the token stays inside: valid whatever the stack below),
 * rejected, and uncertain (only by leaving the rule can it go on: checked
 * per step against the real stacks).
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

void g_walk_free(g_walk *w)
{
	free(w->buf.v);
	free(w->lv);
	memset(w, 0, sizeof(*w));
}

/* Whether the stacks of level l could end into the context with byte b
 * coming next. */
static int follows(const g_level *l, const uint32_t *follow, uint8_t b)
{
	return (l->flags & G_SET_CTX) && follow != NULL && (follow[b >> 5] >> (b & 31) & 1);
}

moe_err g_walk_run(g_walk *w, g_pool *p, const moe_grammar *g, const moe_grammar_vocab *v,
                   const uint32_t *start, uint32_t n_start, uint8_t start_flags,
                   const uint32_t *follow, const uint32_t *pos, size_t n_pos, uint8_t *res)
{
	moe_err err;
	if (w->lv_cap < (size_t)v->max_len + 1) {
		g_level *lv = realloc(w->lv, ((size_t)v->max_len + 1) * sizeof(g_level));
		if (lv == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: walker levels");
		w->lv = lv;
		w->lv_cap = (size_t)v->max_len + 1;
	}
	w->buf.n = 0;
	if ((err = g_vec_reserve(&w->buf, n_start)) != MOE_OK)
		return err;
	memcpy(w->buf.v, start, n_start * sizeof(uint32_t));
	w->buf.n = n_start;
	const uint32_t base = p->n;
	g_level *lv = w->lv;
	lv[0] = (g_level){0, n_start, base, start_flags, 0};
	uint32_t depth = 0, dead = G_NONE;
	const uint8_t *prev = NULL;
	for (size_t i = 0; i < n_pos; i++) {
		/* the last walk stopped at a level without stacks, at byte dead:
		 * the next token in sorted order that shares that byte too ends
		 * the same (no step, the same level and byte), known from lcp
		 * without reading its bytes (most tokens, where few bytes lead
		 * on: bench grammar's tables 50 -> 36 ms, most of it in the 25
		 * states of its whitespace rule) */
		if (dead != G_NONE && pos[i] == pos[i - 1] + 1 && v->lcp[pos[i]] > dead) {
			res[i] = res[i - 1];
			continue;
		}
		uint32_t id = v->sorted[pos[i]];
		const uint8_t *b = v->bytes + v->off[id];
		uint32_t len = v->off[id + 1] - v->off[id];
		uint32_t l = 0, lim = len < depth ? len : depth;
		while (l < lim && b[l] == prev[l])
			l++;
		if (l < depth) {
			g_pool_truncate(p, lv[l + 1].mark);
			w->buf.n = lv[l].off + lv[l].n;
			depth = l;
		}
		while (depth < len && lv[depth].n > 0) {
			g_level *nx = &lv[depth + 1];
			nx->mark = p->n;
			nx->off = w->buf.n;
			err =
			    g_step(p, g, &w->buf, &nx->flags, lv[depth].off, lv[depth].n, b[depth]);
			if (err == MOE_ERR_BAD_COUNT && w->limit_rejects) {
				/* past the limits: a dead level, so the tokens
				 * through it are rejected, as run_bytes fails */
				moe_err_clear();
				err = MOE_OK;
				g_pool_truncate(p, nx->mark);
				w->buf.n = nx->off;
				nx->flags = 0;
			}
			if (err != MOE_OK) {
				g_pool_truncate(p, base);
				return err;
			}
			nx->n = (uint32_t)(w->buf.n - nx->off);
			if (w->most != NULL && nx->n > w->most[depth + 1])
				w->most[depth + 1] = nx->n;
			nx->cum_ctx = lv[depth].cum_ctx | follows(&lv[depth], follow, b[depth]);
			depth++;
			w->work++;
		}
		/* accepted after a stack ended into the context before a byte
		 * that can follow: uncertain too, since the real stacks' step
		 * goes on below the position (the matcher bounds the others) */
		dead = G_NONE;
		if (depth == len) {
			res[i] = lv[len].cum_ctx ? G_UNC
			         : (lv[len].n > 0 || (lv[len].flags & (G_SET_CTX | G_SET_END)))
			             ? G_ACC
			             : G_REJ;
		} else {
			res[i] = lv[depth].cum_ctx || follows(&lv[depth], follow, b[depth]) ? G_UNC
			                                                                    : G_REJ;
			dead = depth;
		}
		prev = b;
	}
	g_pool_truncate(p, base);
	return MOE_OK;
}

/* tab->fan from the most stacks after d bytes (most[1 .. max_len]). */
static void set_fan(g_tab *tab, const uint32_t *most, uint32_t max_len)
{
	uint32_t run = 0, d = 1;
	for (int k = 0; k < G_FAN_BUCKETS; k++) {
		uint32_t upto = k + 1 < G_FAN_BUCKETS && (1u << k) < max_len ? 1u << k : max_len;
		for (; d <= upto; d++)
			if (most[d] > run)
				run = most[d];
		tab->fan[k] = run > UINT16_MAX ? UINT16_MAX : (uint16_t)run;
	}
}

void moe_grammar_tables_destroy(moe_grammar_tables *t)
{
	if (t == NULL)
		return;
	free(t->st);
	free(t->acc);
	free(t->unc);
	free(t);
}

moe_err moe_grammar_tables_create(moe_grammar_tables **out, const moe_grammar *g,
                                  const moe_grammar_vocab *v)
{
	if (out == NULL || g == NULL || v == NULL)
		return moe_fail(MOE_ERR_INVAL, "grammar tables: NULL argument");
	double t0 = moe_now_s();
	moe_err err;
	g_pool p;
	if ((err = g_pool_init(&p)) != MOE_OK)
		return err;
	g_walk w = {0};
	g_vec start = {0}, pos = {0}, acc = {0}, unc = {0}, ids = {0};
	uint8_t *res = malloc((size_t)v->n_sorted + 1);
	moe_grammar_tables *t = calloc(1, sizeof(*t));
	w.most = malloc(((size_t)v->max_len + 1) * sizeof(uint32_t));
	if (t == NULL || res == NULL || w.most == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar tables");
		goto out_free;
	}
	t->g = g;
	t->v = v;
	t->st = calloc(g->n_states, sizeof(g_tab));
	if (t->st == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar tables: %u states", g->n_states);
		goto out_free;
	}
	for (uint32_t s = 0; s < g->n_states; s++) {
		if (!(g->flags[s] & G_BYTES))
			continue;
		uint8_t flags;
		start.n = 0;
		p.max_depth = 0;
		if ((err = g_start(&p, g, &start, &flags, s, G_CTX)) != MOE_OK)
			goto out_free;
		/* only tokens whose first byte some stack reads: the byte
		 * classes read, from each stack's row (not 256 bytes a stack) */
		uint8_t live[256] = {0};
		for (size_t k = 0; k < start.n; k++) {
			const uint32_t *row =
			    g->next + (size_t)p.nodes[start.v[k]].state * g->n_classes;
			for (uint32_t c = 0; c < g->n_classes; c++)
				live[c] |= row[c] != G_NONE;
		}
		pos.n = 0;
		for (int b = 0; b < 256; b++) {
			uint32_t lo = v->first[b], hi = v->first[b + 1];
			if (lo == hi || !live[g->byte_class[b]])
				continue;
			if ((err = g_vec_reserve(&pos, hi - lo)) != MOE_OK)
				goto out_free;
			for (uint32_t i = lo; i < hi; i++)
				pos.v[pos.n++] = i;
		}
		memset(w.most, 0, ((size_t)v->max_len + 1) * sizeof(uint32_t));
		err = g_walk_run(&w, &p, g, v, start.v, (uint32_t)start.n, flags,
		                 g->follow[g->state_rule[s]], pos.v, pos.n, res);
		if (err != MOE_OK)
			goto out_free;
		g_pool_truncate(&p, 2);
		if (w.work > G_MAX_WORK) {
			err = moe_fail(MOE_ERR_BAD_COUNT,
			               "grammar tables: more than %llu steps (grammar too large)",
			               (unsigned long long)G_MAX_WORK);
			goto out_free;
		}
		g_tab *tab = &t->st[s];
		tab->max_push = p.max_depth;
		set_fan(tab, w.most, v->max_len);
		ids.n = 0;
		tab->unc_off = (uint32_t)unc.n;
		if ((err = g_vec_reserve(&ids, pos.n)) != MOE_OK ||
		    (err = g_vec_reserve(&unc, pos.n)) != MOE_OK)
			goto out_free;
		for (size_t i = 0; i < pos.n; i++) {
			if (res[i] == G_ACC)
				ids.v[ids.n++] = v->sorted[pos.v[i]];
			else if (res[i] == G_UNC)
				unc.v[unc.n++] = pos.v[i];
		}
		tab->unc_n = (uint32_t)(unc.n - tab->unc_off);
		tab->acc_off = (uint32_t)acc.n;
		if (ids.n * 32 > v->n_vocab) {
			tab->acc_bits = 1;
			tab->acc_n = (uint32_t)ids.n;
			if ((err = g_vec_reserve(&acc, v->words)) != MOE_OK)
				goto out_free;
			memset(acc.v + acc.n, 0, v->words * sizeof(uint32_t));
			for (size_t i = 0; i < ids.n; i++)
				acc.v[acc.n + (ids.v[i] >> 5)] |= 1u << (ids.v[i] & 31);
			acc.n += v->words;
		} else {
			tab->acc_n = (uint32_t)ids.n;
			if ((err = g_vec_reserve(&acc, ids.n)) != MOE_OK)
				goto out_free;
			if (ids.n > 0)
				memcpy(acc.v + acc.n, ids.v, ids.n * sizeof(uint32_t));
			acc.n += ids.n;
		}
		if (acc.n > UINT32_MAX / 2 || unc.n > UINT32_MAX / 2) {
			err = moe_fail(MOE_ERR_BAD_COUNT, "grammar tables: too large");
			goto out_free;
		}
	}
	t->acc = acc.v;
	t->unc = unc.v;
	acc.v = unc.v = NULL;
	t->build_s = moe_now_s() - t0;
	*out = t;
	t = NULL;
out_free:
	moe_grammar_tables_destroy(t);
	free(res);
	free(start.v);
	free(pos.v);
	free(acc.v);
	free(unc.v);
	free(ids.v);
	free(w.most);
	g_walk_free(&w);
	g_pool_free(&p);
	return err;
}
