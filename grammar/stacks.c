/*
 * stacks.c - the stack machine: interned stack nodes (a stack is a chain of
 * (state, parent) nodes, so equal stacks are one node id and sets of stacks
 * are short arrays), the expansion of a stack into the stacks whose top reads
 * a byte (calls pushed, tail calls without a frame, finished rules popped),
 * and one byte step of a set of stacks.
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

static uint32_t node_hash(uint32_t state, uint32_t parent)
{
	uint32_t h = state * 0x9E3779B1u ^ (parent + 0x7F4A7C15u) * 0x85EBCA77u;
	h ^= h >> 15;
	h *= 0x2C1B3C6Du;
	h ^= h >> 13;
	return h;
}

moe_err g_pool_init(g_pool *p)
{
	memset(p, 0, sizeof(*p));
	p->cap = 1024;
	p->n_buckets = 1024;
	p->nodes = malloc(p->cap * sizeof(g_node));
	p->mark = calloc(p->cap, sizeof(uint32_t));
	p->bucket = malloc(p->n_buckets * sizeof(uint32_t));
	if (p->nodes == NULL || p->mark == NULL || p->bucket == NULL) {
		g_pool_free(p);
		return moe_fail(MOE_ERR_NOMEM, "grammar: stack nodes");
	}
	memset(p->bucket, 0xFF, p->n_buckets * sizeof(uint32_t));
	p->nodes[G_BOTTOM] = (g_node){G_NONE, G_NONE, G_NONE, 0, 0};
	p->nodes[G_CTX] = (g_node){G_NONE, G_NONE, G_NONE, 0, 0};
	p->n = 2;
	return MOE_OK;
}

void g_pool_free(g_pool *p)
{
	free(p->nodes);
	free(p->mark);
	free(p->bucket);
	free(p->work.v);
	memset(p, 0, sizeof(*p));
}

moe_err g_pool_copy(g_pool *dst, const g_pool *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->nodes = malloc(src->cap * sizeof(g_node));
	dst->mark = calloc(src->cap, sizeof(uint32_t));
	dst->bucket = malloc(src->n_buckets * sizeof(uint32_t));
	if (dst->nodes == NULL || dst->mark == NULL || dst->bucket == NULL) {
		g_pool_free(dst);
		return moe_fail(MOE_ERR_NOMEM, "grammar: stack nodes");
	}
	memcpy(dst->nodes, src->nodes, src->n * sizeof(g_node));
	memcpy(dst->bucket, src->bucket, src->n_buckets * sizeof(uint32_t));
	dst->n = src->n;
	dst->cap = src->cap;
	dst->n_buckets = src->n_buckets;
	return MOE_OK;
}

void g_pool_truncate(g_pool *p, uint32_t n)
{
	while (p->n > n) {
		uint32_t x = --p->n;
		g_node *nd = &p->nodes[x];
		p->bucket[node_hash(nd->state, nd->parent) & (p->n_buckets - 1)] = nd->next;
	}
}

static moe_err grow(g_pool *p)
{
	if (p->n >= G_MAX_NODES)
		return moe_fail(MOE_ERR_BAD_COUNT, "grammar: more than %u stack nodes",
		                G_MAX_NODES);
	if (p->n == p->cap) {
		uint32_t cap = p->cap * 2;
		g_node *nodes = realloc(p->nodes, cap * sizeof(g_node));
		if (nodes == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: %u stack nodes", cap);
		p->nodes = nodes;
		uint32_t *mark = realloc(p->mark, cap * sizeof(uint32_t));
		if (mark == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: %u stack nodes", cap);
		memset(mark + p->cap, 0, (cap - p->cap) * sizeof(uint32_t));
		p->mark = mark;
		p->cap = cap;
	}
	if (p->n + 1 > p->n_buckets) {
		uint32_t nb = p->n_buckets * 2;
		uint32_t *b = malloc(nb * sizeof(uint32_t));
		if (b == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: stack node table");
		memset(b, 0xFF, nb * sizeof(uint32_t));
		/* in increasing order, so that each chain stays newest first */
		for (uint32_t x = 2; x < p->n; x++) {
			uint32_t h = node_hash(p->nodes[x].state, p->nodes[x].parent) & (nb - 1);
			p->nodes[x].next = b[h];
			b[h] = x;
		}
		free(p->bucket);
		p->bucket = b;
		p->n_buckets = nb;
	}
	return MOE_OK;
}

/* The stacks a pop into node (state, parent) can make at once: see g_node. */
static uint32_t pop_bound(const g_pool *p, const moe_grammar *g, uint32_t state, uint32_t parent)
{
	if (g->close_n == NULL)
		return 0; /* compile.c is still measuring close_n */
	uint64_t n = g->close_n[state];
	if (g->flags[state] & G_POPS)
		n += p->nodes[parent].pop;
	return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

static moe_err intern(g_pool *p, const moe_grammar *g, uint32_t state, uint32_t parent,
                      uint32_t *id)
{
	uint32_t h = node_hash(state, parent);
	for (uint32_t x = p->bucket[h & (p->n_buckets - 1)]; x != G_NONE; x = p->nodes[x].next)
		if (p->nodes[x].state == state && p->nodes[x].parent == parent) {
			*id = x;
			return MOE_OK;
		}
	moe_err err = grow(p);
	if (err != MOE_OK)
		return err;
	uint32_t b = h & (p->n_buckets - 1);
	uint32_t x = p->n++;
	p->nodes[x] = (g_node){state, parent, p->bucket[b], p->nodes[parent].depth + 1,
	                       pop_bound(p, g, state, parent)};
	p->bucket[b] = x;
	p->mark[x] = 0;
	if (p->nodes[x].depth > p->max_depth)
		p->max_depth = p->nodes[x].depth;
	*id = x;
	return MOE_OK;
}

static moe_err add(g_pool *p, uint32_t x)
{
	if (p->mark[x] == p->epoch)
		return MOE_OK;
	p->mark[x] = p->epoch;
	moe_err err = g_vec_reserve(&p->work, 1);
	if (err != MOE_OK)
		return err;
	p->work.v[p->work.n++] = x;
	return MOE_OK;
}

static void next_epoch(g_pool *p)
{
	if (++p->epoch == 0) {
		memset(p->mark, 0, p->cap * sizeof(uint32_t));
		p->epoch = 1;
	}
	p->work.n = 0;
}

/* Expands every node of the work list (see g_start). */
static moe_err close_work(g_pool *p, const moe_grammar *g, g_vec *out, uint8_t *flags)
{
	size_t n0 = out->n;
	moe_err err;
	while (p->work.n > 0) {
		uint32_t x = p->work.v[--p->work.n];
		const g_node nd = p->nodes[x];
		const uint8_t f = g->flags[nd.state];
		if (f & G_BYTES) {
			if (out->n - n0 >= G_MAX_STACKS)
				return moe_fail(
				    MOE_ERR_BAD_COUNT,
				    "grammar: more than %u stacks at once (ambiguous grammar)",
				    G_MAX_STACKS);
			if ((err = g_vec_reserve(out, 1)) != MOE_OK)
				return err;
			out->v[out->n++] = x;
		}
		if (f & G_FINAL) {
			if (nd.parent == G_BOTTOM)
				*flags |= G_SET_END;
			else if (nd.parent == G_CTX)
				*flags |= G_SET_CTX;
			else if ((err = add(p, nd.parent)) != MOE_OK)
				return err;
		}
		for (uint32_t k = g->call_off[nd.state]; k < g->call_off[nd.state + 1]; k++) {
			const g_call c = g->calls[k];
			uint32_t parent = nd.parent, y;
			if (!(g->flags[c.ret] & G_TAIL) &&
			    (err = intern(p, g, c.ret, nd.parent, &parent)) != MOE_OK)
				return err;
			if (p->nodes[parent].depth >= MOE_GRAMMAR_MAX_DEPTH)
				continue; /* deeper than the matcher follows */
			if ((err = intern(p, g, g->rule_start[c.rule], parent, &y)) != MOE_OK)
				return err;
			if ((err = add(p, y)) != MOE_OK)
				return err;
		}
	}
	return MOE_OK;
}

moe_err g_start(g_pool *p, const moe_grammar *g, g_vec *out, uint8_t *flags, uint32_t state,
                uint32_t parent)
{
	uint32_t x;
	*flags = 0;
	next_epoch(p);
	moe_err err = intern(p, g, state, parent, &x);
	if (err == MOE_OK)
		err = add(p, x);
	if (err == MOE_OK)
		err = close_work(p, g, out, flags);
	return err;
}

moe_err g_step(g_pool *p, const moe_grammar *g, g_vec *out, uint8_t *flags, size_t off, uint32_t n,
               uint8_t b)
{
	moe_err err;
	*flags = 0;
	next_epoch(p);
	for (uint32_t i = 0; i < n; i++) {
		const g_node nd = p->nodes[out->v[off + i]];
		uint32_t t = g_next(g, nd.state, b), y;
		if (t == G_NONE)
			continue;
		if ((err = intern(p, g, t, nd.parent, &y)) != MOE_OK)
			return err;
		if ((err = add(p, y)) != MOE_OK)
			return err;
	}
	return close_work(p, g, out, flags);
}
