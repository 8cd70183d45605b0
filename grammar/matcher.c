/*
 * matcher.c - one generation under a grammar: the current set of stacks
 * with every earlier one (rollback), token and byte acceptance, the one-token
 * check of the sample-then-check fast path, and the full mask (the tables'
 * accepted tokens of each top position, plus the uncertain ones walked
 * against the real stacks).
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

typedef struct m_step {
	size_t off;         /* the stacks in hist */
	uint32_t n;         /* how many */
	uint32_t node_mark; /* nodes in the pool once this step was taken */
	uint8_t flags;      /* G_SET_END: the grammar may end here */
	uint8_t done;       /* an end token was accepted */
} m_step;

struct moe_grammar_matcher {
	const moe_grammar_tables *t;
	g_pool pool;
	g_walk walk;
	g_vec hist; /* the stacks of every step */
	m_step *steps;
	size_t n_steps, cap_steps;
	g_vec pos;          /* scratch: positions to walk */
	uint8_t *res;       /* scratch: walk results [n_sorted] */
	uint32_t *top_seen; /* [n_states] stamp of the last fill that met the state */
	uint32_t top_epoch;
};

void moe_grammar_matcher_destroy(moe_grammar_matcher *m)
{
	if (m == NULL)
		return;
	g_pool_free(&m->pool);
	g_walk_free(&m->walk);
	free(m->hist.v);
	free(m->steps);
	free(m->pos.v);
	free(m->res);
	free(m->top_seen);
	free(m);
}

static moe_err push_step(moe_grammar_matcher *m, m_step s)
{
	if (m->n_steps == m->cap_steps) {
		size_t cap = m->cap_steps ? m->cap_steps * 2 : 64;
		m_step *st = realloc(m->steps, cap * sizeof(*st));
		if (st == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar matcher: %zu steps", cap);
		m->steps = st;
		m->cap_steps = cap;
	}
	m->steps[m->n_steps++] = s;
	return MOE_OK;
}

static moe_grammar_matcher *alloc_matcher(const moe_grammar_tables *t)
{
	moe_grammar_matcher *m = calloc(1, sizeof(*m));
	if (m == NULL)
		return NULL;
	m->t = t;
	m->walk.limit_rejects = 1;
	m->res = malloc((size_t)t->v->n_sorted + 1);
	m->top_seen = calloc(t->g->n_states, sizeof(uint32_t));
	if (m->res == NULL || m->top_seen == NULL) {
		moe_grammar_matcher_destroy(m);
		return NULL;
	}
	return m;
}

moe_err moe_grammar_matcher_create(moe_grammar_matcher **out, const moe_grammar_tables *t)
{
	if (out == NULL || t == NULL)
		return moe_fail(MOE_ERR_INVAL, "grammar matcher: NULL argument");
	moe_grammar_matcher *m = alloc_matcher(t);
	if (m == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar matcher");
	moe_err err = g_pool_init(&m->pool);
	if (err != MOE_OK)
		goto out_destroy;
	uint8_t flags;
	const moe_grammar *g = t->g;
	err = g_start(&m->pool, g, &m->hist, &flags, g->rule_start[g->root], G_BOTTOM);
	if (err != MOE_OK)
		goto out_destroy;
	err = push_step(m, (m_step){0, (uint32_t)m->hist.n, m->pool.n, flags, 0});
	if (err != MOE_OK)
		goto out_destroy;
	*out = m;
	return MOE_OK;
out_destroy:
	moe_grammar_matcher_destroy(m);
	return err;
}

moe_err moe_grammar_matcher_clone(moe_grammar_matcher **out, const moe_grammar_matcher *m)
{
	moe_grammar_matcher *c = alloc_matcher(m->t);
	if (c == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar matcher: clone");
	moe_err err = g_pool_copy(&c->pool, &m->pool);
	if (err != MOE_OK)
		goto out_destroy;
	if ((err = g_vec_reserve(&c->hist, m->hist.n)) != MOE_OK)
		goto out_destroy;
	if (m->hist.n > 0)
		memcpy(c->hist.v, m->hist.v, m->hist.n * sizeof(uint32_t));
	c->hist.n = m->hist.n;
	c->steps = malloc(m->cap_steps * sizeof(m_step));
	if (c->steps == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar matcher: clone");
		goto out_destroy;
	}
	memcpy(c->steps, m->steps, m->n_steps * sizeof(m_step));
	c->n_steps = m->n_steps;
	c->cap_steps = m->cap_steps;
	*out = c;
	return MOE_OK;
out_destroy:
	moe_grammar_matcher_destroy(c);
	return err;
}

static const m_step *cur(const moe_grammar_matcher *m)
{
	return &m->steps[m->n_steps - 1];
}

bool moe_grammar_matcher_can_end(const moe_grammar_matcher *m)
{
	return !cur(m)->done && (cur(m)->flags & G_SET_END);
}

bool moe_grammar_matcher_is_done(const moe_grammar_matcher *m)
{
	return cur(m)->done || (cur(m)->n == 0 && (cur(m)->flags & G_SET_END));
}

size_t moe_grammar_matcher_n_steps(const moe_grammar_matcher *m)
{
	return m->n_steps - 1;
}

/* Runs len bytes from the current stacks.  On success (*ok set when every
 * byte was consumed) the last set is at walk.buf[*off .. *off + *n) with
 * *flags; *bad is the offset of the first byte that could not be consumed.
 * New nodes stay in the pool: the caller keeps or truncates them. */
static moe_err run_bytes(moe_grammar_matcher *m, const uint8_t *b, size_t len, int *ok, size_t *off,
                         uint32_t *n, uint8_t *flags, size_t *bad)
{
	const m_step *s = cur(m);
	g_vec *buf = &m->walk.buf;
	moe_err err;
	*ok = 0;
	buf->n = 0;
	if ((err = g_vec_reserve(buf, s->n)) != MOE_OK)
		return err;
	if (s->n > 0)
		memcpy(buf->v, m->hist.v + s->off, s->n * sizeof(uint32_t));
	buf->n = s->n;
	size_t o = 0;
	uint32_t k = s->n;
	uint8_t f = s->flags;
	for (size_t i = 0; i < len; i++) {
		if (k == 0) {
			*bad = i;
			return MOE_OK;
		}
		size_t o2 = buf->n;
		if ((err = g_step(&m->pool, m->t->g, buf, &f, o, k, b[i])) != MOE_OK)
			return err;
		o = o2;
		k = (uint32_t)(buf->n - o2);
		if (k == 0 && !(i + 1 == len && (f & G_SET_END))) {
			*bad = i;
			return MOE_OK;
		}
	}
	*ok = 1;
	*off = o;
	*n = k;
	*flags = f;
	return MOE_OK;
}

bool moe_grammar_matcher_token_ok(moe_grammar_matcher *m, int32_t tok)
{
	const moe_grammar_vocab *v = m->t->v;
	if (tok < 0 || (uint32_t)tok >= v->n_vocab || cur(m)->done)
		return false;
	if (v->kind[tok] == G_TOK_END)
		return (cur(m)->flags & G_SET_END) != 0;
	if (v->kind[tok] == G_TOK_NEVER)
		return false;
	uint32_t mark = m->pool.n, n;
	size_t off, bad;
	uint8_t flags;
	int ok;
	moe_err err = run_bytes(m, v->bytes + v->off[tok], v->off[tok + 1] - v->off[tok], &ok, &off,
	                        &n, &flags, &bad);
	g_pool_truncate(&m->pool, mark);
	return err == MOE_OK && ok;
}

static moe_err accept(moe_grammar_matcher *m, const uint8_t *b, size_t len, int32_t tok)
{
	uint32_t mark = m->pool.n, n;
	size_t off, bad = 0;
	uint8_t flags;
	int ok;
	moe_err err = run_bytes(m, b, len, &ok, &off, &n, &flags, &bad);
	if (err == MOE_OK && !ok)
		err =
		    tok >= 0
		        ? moe_fail(MOE_ERR_INVAL,
		                   "grammar: token %d is not valid here (byte %zu of it)", tok, bad)
		        : moe_fail(MOE_ERR_INVAL, "grammar: byte %zu is not valid here", bad);
	if (err == MOE_OK)
		err = g_vec_reserve(&m->hist, n);
	if (err != MOE_OK) {
		g_pool_truncate(&m->pool, mark);
		return err;
	}
	size_t at = m->hist.n;
	if (n > 0)
		memcpy(m->hist.v + at, m->walk.buf.v + off, n * sizeof(uint32_t));
	m->hist.n += n;
	err = push_step(m, (m_step){at, n, m->pool.n, flags, 0});
	if (err != MOE_OK) {
		m->hist.n = at;
		g_pool_truncate(&m->pool, mark);
	}
	return err;
}

moe_err moe_grammar_matcher_accept_token(moe_grammar_matcher *m, int32_t tok)
{
	const moe_grammar_vocab *v = m->t->v;
	if (cur(m)->done)
		return moe_fail(MOE_ERR_STATE, "grammar: token %d after the end", tok);
	if (tok < 0 || (uint32_t)tok >= v->n_vocab)
		return moe_fail(MOE_ERR_INVAL, "grammar: token %d outside the vocabulary", tok);
	if (v->kind[tok] == G_TOK_NEVER)
		return moe_fail(MOE_ERR_INVAL, "grammar: token %d is never valid", tok);
	if (v->kind[tok] == G_TOK_END) {
		if (!(cur(m)->flags & G_SET_END))
			return moe_fail(MOE_ERR_INVAL, "grammar: end token %d before the end", tok);
		m_step s = *cur(m);
		s.n = 0;
		s.done = 1;
		s.node_mark = m->pool.n;
		return push_step(m, s);
	}
	return accept(m, v->bytes + v->off[tok], v->off[tok + 1] - v->off[tok], tok);
}

moe_err moe_grammar_matcher_accept_bytes(moe_grammar_matcher *m, const char *bytes, size_t len)
{
	if (bytes == NULL && len > 0)
		return moe_fail(MOE_ERR_INVAL, "grammar: NULL bytes");
	if (cur(m)->done)
		return moe_fail(MOE_ERR_STATE, "grammar: bytes after the end");
	return accept(m, (const uint8_t *)bytes, len, -1);
}

moe_err moe_grammar_matcher_rollback(moe_grammar_matcher *m, size_t n)
{
	if (n >= m->n_steps)
		return moe_fail(MOE_ERR_INVAL, "grammar: rollback of %zu steps, %zu taken", n,
		                m->n_steps - 1);
	m->n_steps -= n;
	const m_step *s = cur(m);
	m->hist.n = s->off + s->n;
	g_pool_truncate(&m->pool, s->node_mark);
	return MOE_OK;
}

static int cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return a < b ? -1 : a > b;
}

moe_err moe_grammar_matcher_fill_mask(moe_grammar_matcher *m, uint32_t *mask)
{
	const moe_grammar_tables *t = m->t;
	const moe_grammar_vocab *v = t->v;
	const m_step *s = cur(m);
	moe_err err;
	memset(mask, 0, v->words * sizeof(uint32_t));
	if (s->done)
		return MOE_OK;
	if (s->n == 0)
		goto out_end;
	const uint32_t *stacks = m->hist.v + s->off;
	if (++m->top_epoch == 0) {
		memset(m->top_seen, 0, t->g->n_states * sizeof(uint32_t));
		m->top_epoch = 1;
	}
	/* Walk tokens against the real stacks where the tables' answers could
	 * be wrong.  A stack near the depth limit could go deeper within one
	 * token than the tables allowed for: walk them all.  And a token the
	 * tables accept without a walk makes, after any byte, at most the local
	 * walk's most stacks from each current stack (fan, kept by token
	 * length) plus what one pop into that stack's parents makes (pops
	 * before a byte that cannot follow die at that byte; the tokens with any
	 * other pop are walked anyway), so where that sum passes G_MAX_STACKS
	 * the step could fail where the tables said yes: walk the tokens of the
	 * lengths it does for (all of them past half the node limit). */
	int brute = m->pool.n >= G_MAX_NODES / 2;
	uint64_t bound[G_FAN_BUCKETS] = {0};
	for (uint32_t i = 0; i < s->n && !brute; i++) {
		const g_node *nd = &m->pool.nodes[stacks[i]];
		if (nd->depth - 1 + t->st[nd->state].max_push > MOE_GRAMMAR_MAX_DEPTH)
			brute = 1;
		for (int k = 0; k < G_FAN_BUCKETS; k++)
			bound[k] +=
			    (uint64_t)t->st[nd->state].fan[k] + m->pool.nodes[nd->parent].pop;
	}
	/* tokens of at most 2^safe bytes are safe; the n_long longest are not */
	int safe = G_FAN_BUCKETS - 1;
	while (safe >= 0 && bound[safe] > G_MAX_STACKS)
		safe--;
	if (safe < 0)
		brute = 1;
	uint32_t n_long = brute ? 0 : v->n_longer[safe];
	m->pos.n = 0;
	int n_unc_tops = 0;
	for (uint32_t i = 0; i < s->n && !brute; i++) {
		uint32_t st = m->pool.nodes[stacks[i]].state;
		if (m->top_seen[st] == m->top_epoch)
			continue;
		m->top_seen[st] = m->top_epoch;
		const g_tab *tab = &t->st[st];
		if (tab->acc_bits) {
			const uint32_t *bits = t->acc + tab->acc_off;
			for (size_t w = 0; w < v->words; w++)
				mask[w] |= bits[w];
		} else {
			const uint32_t *ids = t->acc + tab->acc_off;
			for (uint32_t k = 0; k < tab->acc_n; k++)
				mask[ids[k] >> 5] |= 1u << (ids[k] & 31);
		}
		if (tab->unc_n == 0)
			continue;
		n_unc_tops++;
		if ((err = g_vec_reserve(&m->pos, tab->unc_n)) != MOE_OK)
			goto out_clear;
		memcpy(m->pos.v + m->pos.n, t->unc + tab->unc_off, tab->unc_n * sizeof(uint32_t));
		m->pos.n += tab->unc_n;
	}
	if (brute) {
		if ((err = g_vec_reserve(&m->pos, v->n_sorted)) != MOE_OK)
			goto out_clear;
		for (uint32_t i = 0; i < v->n_sorted; i++)
			m->pos.v[i] = i;
		m->pos.n = v->n_sorted;
	} else if (n_unc_tops > 1 || n_long > 0) {
		if ((err = g_vec_reserve(&m->pos, n_long)) != MOE_OK)
			goto out_clear;
		memcpy(m->pos.v + m->pos.n, v->by_len, n_long * sizeof(uint32_t));
		m->pos.n += n_long;
		qsort(m->pos.v, m->pos.n, sizeof(uint32_t), cmp_u32);
		size_t k = 0;
		for (size_t i = 0; i < m->pos.n; i++)
			if (k == 0 || m->pos.v[k - 1] != m->pos.v[i])
				m->pos.v[k++] = m->pos.v[i];
		m->pos.n = k;
	}
	if (m->pos.n > 0) {
		err = g_walk_run(&m->walk, &m->pool, t->g, v, stacks, s->n, s->flags, NULL,
		                 m->pos.v, m->pos.n, m->res);
		if (err != MOE_OK)
			goto out_clear;
		/* the walk is exact: it overrides what the tables said of a
		 * token (another stack's table may have accepted it) */
		for (size_t i = 0; i < m->pos.n; i++) {
			uint32_t id = v->sorted[m->pos.v[i]];
			if (m->res[i] == G_ACC)
				mask[id >> 5] |= 1u << (id & 31);
			else
				mask[id >> 5] &= ~(1u << (id & 31));
		}
	}
out_end:
	if (s->flags & G_SET_END)
		for (uint32_t k = 0; k < v->n_end; k++)
			mask[v->end_ids[k] >> 5] |= 1u << (v->end_ids[k] & 31);
	return MOE_OK;
out_clear:
	memset(mask, 0, v->words * sizeof(uint32_t));
	return err;
}
