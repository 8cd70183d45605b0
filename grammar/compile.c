/*
 * compile.c - parsed rules into the byte-level pushdown automaton: each rule
 * reachable from the start becomes a byte NFA (classes as UTF-8 byte
 * sequences, repetitions copied, references as call edges), which subset
 * construction makes deterministic per rule (calls are symbols); then the
 * checks that keep matching bounded (no left recursion, every rule can
 * finish) and the byte classes of the transition table.
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

enum { E_EPS, E_BYTE, E_CALL };

typedef struct nfa_edge {
	uint32_t to, next, rule;
	uint8_t kind, lo, hi;
} nfa_edge;

typedef struct nfa {
	uint32_t *head; /* [n] first edge of each state */
	uint32_t n, cap;
	nfa_edge *e;
	uint32_t n_e, cap_e;
	const uint32_t *rule_map; /* parsed rule id -> compiled rule id */
	g_vec seq;                /* scratch: UTF-8 sequences of a class */
} nfa;

static moe_err nfa_state(nfa *a, uint32_t *out)
{
	if (a->n >= G_MAX_NFA)
		return moe_fail(MOE_ERR_BAD_COUNT, "grammar: more than %u automaton states",
		                G_MAX_NFA);
	if (a->n == a->cap) {
		uint32_t cap = a->cap ? a->cap * 2 : 1024;
		uint32_t *h = realloc(a->head, cap * sizeof(*h));
		if (h == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: %u states", cap);
		a->head = h;
		a->cap = cap;
	}
	a->head[a->n] = G_NONE;
	*out = a->n++;
	return MOE_OK;
}

static moe_err nfa_edge_add(nfa *a, uint32_t from, uint32_t to, uint8_t kind, uint8_t lo,
                            uint8_t hi, uint32_t rule)
{
	if (a->n_e >= 4 * G_MAX_NFA)
		return moe_fail(MOE_ERR_BAD_COUNT, "grammar: too many automaton edges");
	if (a->n_e == a->cap_e) {
		uint32_t cap = a->cap_e ? a->cap_e * 2 : 2048;
		nfa_edge *e = realloc(a->e, cap * sizeof(*e));
		if (e == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: %u edges", cap);
		a->e = e;
		a->cap_e = cap;
	}
	a->e[a->n_e] = (nfa_edge){to, a->head[from], rule, kind, lo, hi};
	a->head[from] = a->n_e++;
	return MOE_OK;
}

/* ---- code point ranges as UTF-8 byte sequences ------------------------------------ */

static int utf8_encode(uint32_t cp, uint8_t *u)
{
	if (cp < 0x80) {
		u[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		u[0] = (uint8_t)(0xC0 | (cp >> 6));
		u[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		u[0] = (uint8_t)(0xE0 | (cp >> 12));
		u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	u[0] = (uint8_t)(0xF0 | (cp >> 18));
	u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
	u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
	u[3] = (uint8_t)(0x80 | (cp & 0x3F));
	return 4;
}

/* Appends to out the byte sequences that encode exactly [lo, hi] (no
 * surrogates inside): each as its length k, then k pairs lo, hi of bytes.
 * The recursion splits at most a few levels deep. */
static moe_err utf8_split(g_vec *out, uint32_t lo, uint32_t hi)
{
	static const uint32_t ends[3] = {0x7F, 0x7FF, 0xFFFF};
	moe_err err;
	for (int i = 0; i < 3; i++)
		if (lo <= ends[i] && hi > ends[i]) {
			err = utf8_split(out, lo, ends[i]);
			return err != MOE_OK ? err : utf8_split(out, ends[i] + 1, hi);
		}
	if (hi >= 0x80)
		for (int i = 1; i < 4; i++) {
			uint32_t m = (1u << (6 * i)) - 1;
			if ((lo & ~m) == (hi & ~m))
				continue;
			if ((lo & m) != 0) {
				err = utf8_split(out, lo, lo | m);
				return err != MOE_OK ? err : utf8_split(out, (lo | m) + 1, hi);
			}
			if ((hi & m) != m) {
				err = utf8_split(out, lo, (hi & ~m) - 1);
				return err != MOE_OK ? err : utf8_split(out, hi & ~m, hi);
			}
		}
	uint8_t a[4], b[4];
	int k = utf8_encode(lo, a);
	utf8_encode(hi, b);
	err = g_vec_reserve(out, 1 + 2 * (size_t)k);
	if (err != MOE_OK)
		return err;
	out->v[out->n++] = (uint32_t)k;
	for (int i = 0; i < k; i++) {
		out->v[out->n++] = a[i];
		out->v[out->n++] = b[i];
	}
	return MOE_OK;
}

static moe_err class_seqs(g_vec *out, const g_ast *a)
{
	out->n = 0;
	for (uint32_t i = 0; i < a->n; i++) {
		moe_err err = utf8_split(out, a->ranges[2 * i], a->ranges[2 * i + 1]);
		if (err != MOE_OK)
			return err;
	}
	return MOE_OK;
}

/* ---- size estimate (before anything is built) ------------------------------------- */

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a || a + b > ((uint64_t)1 << 40) ? (uint64_t)1 << 40 : a + b;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
	if (a != 0 && b > ((uint64_t)1 << 40) / a)
		return (uint64_t)1 << 40;
	return a * b;
}

/* States the NFA of a will take, saturating at 2^40. */
static uint64_t estimate(const g_ast *a, g_vec *scratch, moe_err *err)
{
	switch (a->kind) {
	case AST_EMPTY:
	case AST_REF:
		return 1;
	case AST_LIT:
		return a->n;
	case AST_CLASS: {
		moe_err e = class_seqs(scratch, a);
		if (e != MOE_OK)
			*err = e;
		return scratch->n + 1;
	}
	case AST_SEQ:
	case AST_ALT: {
		uint64_t s = a->n + 1;
		for (uint32_t i = 0; i < a->n; i++)
			s = sat_add(s, estimate(a->kids[i], scratch, err));
		return s;
	}
	default: { /* AST_REP */
		uint64_t body = estimate(a->kids[0], scratch, err);
		uint64_t copies = a->max == G_INF ? (uint64_t)a->min + 1 : a->max;
		return sat_add(sat_mul(body, copies ? copies : 1), 2);
	}
	}
}

/* ---- NFA construction (Thompson; no edge ever enters the state it starts
 * from, so pieces compose) -------------------------------------------------------- */

static moe_err build(nfa *a, const g_ast *x, uint32_t from, uint32_t *end)
{
	moe_err err = MOE_OK;
	uint32_t cur = from, s = 0, e = 0;
	switch (x->kind) {
	case AST_EMPTY:
		*end = from;
		return MOE_OK;
	case AST_LIT:
		for (uint32_t i = 0; i < x->n; i++) {
			err = nfa_state(a, &s);
			if (err == MOE_OK)
				err = nfa_edge_add(a, cur, s, E_BYTE, x->bytes[i], x->bytes[i], 0);
			if (err != MOE_OK)
				return err;
			cur = s;
		}
		*end = cur;
		return MOE_OK;
	case AST_CLASS:
		err = nfa_state(a, &e);
		if (err == MOE_OK)
			err = class_seqs(&a->seq, x);
		for (size_t i = 0; err == MOE_OK && i < a->seq.n;) {
			uint32_t k = a->seq.v[i++];
			cur = from;
			for (uint32_t j = 0; err == MOE_OK && j < k; j++, i += 2) {
				uint8_t lo = (uint8_t)a->seq.v[i], hi = (uint8_t)a->seq.v[i + 1];
				if (j + 1 == k) {
					err = nfa_edge_add(a, cur, e, E_BYTE, lo, hi, 0);
				} else {
					err = nfa_state(a, &s);
					if (err == MOE_OK)
						err = nfa_edge_add(a, cur, s, E_BYTE, lo, hi, 0);
					cur = s;
				}
			}
		}
		*end = e;
		return err;
	case AST_REF:
		err = nfa_state(a, &e);
		if (err == MOE_OK)
			err = nfa_edge_add(a, from, e, E_CALL, 0, 0, a->rule_map[x->rule]);
		*end = e;
		return err;
	case AST_SEQ:
		for (uint32_t i = 0; i < x->n && err == MOE_OK; i++)
			err = build(a, x->kids[i], cur, &cur);
		*end = cur;
		return err;
	case AST_ALT:
		err = nfa_state(a, &e);
		for (uint32_t i = 0; i < x->n && err == MOE_OK; i++) {
			uint32_t t = 0;
			err = nfa_state(a, &s);
			if (err == MOE_OK)
				err = nfa_edge_add(a, from, s, E_EPS, 0, 0, 0);
			if (err == MOE_OK)
				err = build(a, x->kids[i], s, &t);
			if (err == MOE_OK)
				err = nfa_edge_add(a, t, e, E_EPS, 0, 0, 0);
		}
		*end = e;
		return err;
	default: /* AST_REP */
		for (uint32_t i = 0; i < x->min && err == MOE_OK; i++) {
			err = nfa_state(a, &s);
			if (err == MOE_OK)
				err = nfa_edge_add(a, cur, s, E_EPS, 0, 0, 0);
			if (err == MOE_OK)
				err = build(a, x->kids[0], s, &cur);
		}
		if (err != MOE_OK)
			return err;
		if (x->max == G_INF) {
			uint32_t loop = 0, t = 0;
			err = nfa_state(a, &loop);
			if (err == MOE_OK)
				err = nfa_edge_add(a, cur, loop, E_EPS, 0, 0, 0);
			if (err == MOE_OK)
				err = nfa_state(a, &s);
			if (err == MOE_OK)
				err = nfa_edge_add(a, loop, s, E_EPS, 0, 0, 0);
			if (err == MOE_OK)
				err = build(a, x->kids[0], s, &t);
			if (err == MOE_OK)
				err = nfa_edge_add(a, t, loop, E_EPS, 0, 0, 0);
			*end = loop;
			return err;
		}
		err = nfa_state(a, &e);
		if (err == MOE_OK)
			err = nfa_edge_add(a, cur, e, E_EPS, 0, 0, 0);
		for (uint32_t i = x->min; i < x->max && err == MOE_OK; i++) {
			err = nfa_state(a, &s);
			if (err == MOE_OK)
				err = nfa_edge_add(a, cur, s, E_EPS, 0, 0, 0);
			if (err == MOE_OK)
				err = build(a, x->kids[0], s, &cur);
			if (err == MOE_OK)
				err = nfa_edge_add(a, cur, e, E_EPS, 0, 0, 0);
		}
		*end = e;
		return err;
	}
}

/* ---- determinisation ------------------------------------------------------------ */

typedef struct dfa_build {
	const nfa *a;
	moe_grammar *g;
	uint32_t cap; /* states with room in next / flags / state_rule / set_off */
	g_vec sets;   /* NFA state sets, sorted */
	uint32_t *set_off, *set_n;
	uint32_t *hash; /* open addressing: DFA ids, G_NONE empty */
	uint32_t hash_cap;
	uint32_t *stamp, epoch;   /* [a->n] */
	g_vec tmp, pairs, sorted; /* sorted: pairs by byte class */
	g_vec calls;              /* pairs rule, ret per state, in state order */
	uint32_t *rule_accept;
	uint64_t work; /* NFA states and pairs handled, held to G_MAX_DFA_WORK */
} dfa_build;

/* A set's hash, independent of the order of its members (the sets are kept
 * in the order the closure found them: sorting them cost most of the time). */
static uint64_t set_hash(const uint32_t *s, uint32_t n)
{
	uint64_t h = n;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t z = s[i] + 0x9e3779b97f4a7c15ull;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		h += z ^ (z >> 31);
	}
	return h ^ (h >> 29);
}

/* Whether stored state x holds exactly the members stamped now (n of them). */
static int same_set(const dfa_build *d, uint32_t x, uint32_t n)
{
	if (d->set_n[x] != n)
		return 0;
	const uint32_t *s = d->sets.v + d->set_off[x];
	for (uint32_t k = 0; k < n; k++)
		if (d->stamp[s[k]] != d->epoch)
			return 0;
	return 1;
}

/* Closes d->tmp under epsilon edges and interns it as a DFA state of rule;
 * *id is the state.  Fails with MOE_ERR_BAD_COUNT past G_MAX_DFA states or
 * G_MAX_DFA_WORK members handled. */
static moe_err intern_set(dfa_build *d, uint32_t rule, uint32_t *id)
{
	moe_err err;
	if (++d->epoch == 0) {
		memset(d->stamp, 0, d->a->n * sizeof(uint32_t));
		d->epoch = 1;
	}
	size_t n0 = d->tmp.n;
	d->tmp.n = 0;
	for (size_t i = 0; i < n0; i++) {
		uint32_t u = d->tmp.v[i];
		if (d->stamp[u] == d->epoch)
			continue;
		d->stamp[u] = d->epoch;
		d->tmp.v[d->tmp.n++] = u;
	}
	/* the closure holds each NFA state at most once */
	if ((err = g_vec_reserve(&d->tmp, d->a->n - d->tmp.n)) != MOE_OK)
		return err;
	for (size_t i = 0; i < d->tmp.n; i++) {
		uint32_t u = d->tmp.v[i];
		for (uint32_t e = d->a->head[u]; e != G_NONE; e = d->a->e[e].next) {
			const nfa_edge *ed = &d->a->e[e];
			if (ed->kind != E_EPS || d->stamp[ed->to] == d->epoch)
				continue;
			d->stamp[ed->to] = d->epoch;
			d->tmp.v[d->tmp.n++] = ed->to;
		}
	}
	const uint32_t *s = d->tmp.v;
	uint32_t n = (uint32_t)d->tmp.n;
	uint64_t h = set_hash(s, n);
	uint32_t mask = d->hash_cap - 1;
	d->work += n0 + n;
	for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
		if (d->work > G_MAX_DFA_WORK)
			return moe_fail(MOE_ERR_BAD_COUNT,
			                "grammar: too ambiguous to determinise within %llu steps "
			                "(rule %s)",
			                (unsigned long long)G_MAX_DFA_WORK, d->g->rule_names[rule]);
		uint32_t x = d->hash[i];
		if (x == G_NONE)
			break;
		d->work += d->set_n[x] == n ? n : 1;
		if (same_set(d, x, n)) {
			*id = x;
			return MOE_OK;
		}
	}
	moe_grammar *g = d->g;
	if (g->n_states >= G_MAX_DFA || (uint64_t)(g->n_states + 1) * g->n_classes > G_MAX_CELLS)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "grammar: more than %u deterministic states (rule %s)", G_MAX_DFA,
		                g->rule_names[rule]);
	if (g->n_states == d->cap) {
		uint32_t cap = d->cap ? d->cap * 2 : 256;
		uint32_t *next = realloc(g->next, (size_t)cap * g->n_classes * sizeof(uint32_t));
		if (next != NULL)
			g->next = next;
		uint8_t *flags = realloc(g->flags, cap);
		if (flags != NULL)
			g->flags = flags;
		uint32_t *sr = realloc(g->state_rule, cap * sizeof(uint32_t));
		if (sr != NULL)
			g->state_rule = sr;
		uint32_t *so = realloc(d->set_off, cap * sizeof(uint32_t));
		if (so != NULL)
			d->set_off = so;
		uint32_t *sn = realloc(d->set_n, cap * sizeof(uint32_t));
		if (sn != NULL)
			d->set_n = sn;
		if (!next || !flags || !sr || !so || !sn)
			return moe_fail(MOE_ERR_NOMEM, "grammar: %u states", cap);
		d->cap = cap;
	}
	if (2 * (g->n_states + 1) > d->hash_cap) {
		uint32_t cap = d->hash_cap * 2;
		uint32_t *hs = malloc(cap * sizeof(uint32_t));
		if (hs == NULL)
			return moe_fail(MOE_ERR_NOMEM, "grammar: state table");
		memset(hs, 0xFF, cap * sizeof(uint32_t));
		for (uint32_t x = 0; x < g->n_states; x++) {
			uint64_t hx = set_hash(d->sets.v + d->set_off[x], d->set_n[x]);
			uint32_t i = (uint32_t)hx & (cap - 1);
			while (hs[i] != G_NONE)
				i = (i + 1) & (cap - 1);
			hs[i] = x;
		}
		free(d->hash);
		d->hash = hs;
		d->hash_cap = cap;
		mask = cap - 1;
	}
	if ((err = g_vec_reserve(&d->sets, n)) != MOE_OK)
		return err;
	uint32_t x = g->n_states++;
	d->set_off[x] = (uint32_t)d->sets.n;
	d->set_n[x] = n;
	memcpy(d->sets.v + d->sets.n, d->tmp.v, n * sizeof(uint32_t));
	d->sets.n += n;
	uint32_t i = (uint32_t)h & mask;
	while (d->hash[i] != G_NONE)
		i = (i + 1) & mask;
	d->hash[i] = x;
	g->state_rule[x] = rule;
	g->flags[x] = 0;
	for (uint32_t c = 0; c < g->n_classes; c++)
		g->next[(size_t)x * g->n_classes + c] = G_NONE;
	for (uint32_t k = 0; k < n; k++)
		if (d->tmp.v[k] == d->rule_accept[rule])
			g->flags[x] |= G_FINAL;
	*id = x;
	return MOE_OK;
}

static int cmp_pair64(const void *x, const void *y)
{
	const uint32_t *a = x, *b = y;
	if (a[0] != b[0])
		return a[0] < b[0] ? -1 : 1;
	return a[1] < b[1] ? -1 : a[1] > b[1];
}

/* The transitions of DFA state x: bytes by class, then calls by callee. */
static moe_err expand_state(dfa_build *d, uint32_t x)
{
	moe_grammar *g = d->g;
	const nfa *a = d->a;
	uint32_t rule = g->state_rule[x];
	moe_err err;
	for (int pass = 0; pass < 2; pass++) {
		d->pairs.n = 0;
		for (uint32_t k = 0; k < d->set_n[x]; k++) {
			uint32_t u = d->sets.v[d->set_off[x] + k];
			for (uint32_t e = a->head[u]; e != G_NONE; e = a->e[e].next) {
				const nfa_edge *ed = &a->e[e];
				if (pass == 0 && ed->kind == E_BYTE) {
					uint32_t c0 = g->byte_class[ed->lo],
					         c1 = g->byte_class[ed->hi];
					if ((err = g_vec_reserve(
					         &d->pairs, 2 * (size_t)(c1 - c0 + 1))) != MOE_OK)
						return err;
					for (uint32_t c = c0; c <= c1; c++) {
						d->pairs.v[d->pairs.n++] = c;
						d->pairs.v[d->pairs.n++] = ed->to;
					}
				} else if (pass == 1 && ed->kind == E_CALL) {
					if ((err = g_vec_reserve(&d->pairs, 2)) != MOE_OK)
						return err;
					d->pairs.v[d->pairs.n++] = ed->rule;
					d->pairs.v[d->pairs.n++] = ed->to;
				}
			}
		}
		if (pass == 0 && d->pairs.n > 0) {
			/* counting sort by class (at most 256 of them): a comparison
			 * sort here took a third of the determinisation */
			uint32_t at[257] = {0};
			for (size_t i = 0; i < d->pairs.n; i += 2)
				at[d->pairs.v[i] + 1]++;
			for (uint32_t c = 0; c < g->n_classes; c++)
				at[c + 1] += at[c];
			d->sorted.n = 0;
			if ((err = g_vec_reserve(&d->sorted, d->pairs.n)) != MOE_OK)
				return err;
			for (size_t i = 0; i < d->pairs.n; i += 2) {
				uint32_t o = 2 * at[d->pairs.v[i]]++;
				d->sorted.v[o] = d->pairs.v[i];
				d->sorted.v[o + 1] = d->pairs.v[i + 1];
			}
			d->sorted.n = d->pairs.n;
			g_vec t = d->pairs;
			d->pairs = d->sorted;
			d->sorted = t;
		} else if (d->pairs.n > 0) {
			qsort(d->pairs.v, d->pairs.n / 2, 2 * sizeof(uint32_t), cmp_pair64);
		}
		for (size_t i = 0; i < d->pairs.n;) {
			uint32_t key = d->pairs.v[i];
			size_t j = i;
			while (j < d->pairs.n && d->pairs.v[j] == key)
				j += 2;
			d->tmp.n = 0;
			if ((err = g_vec_reserve(&d->tmp, (j - i) / 2)) != MOE_OK)
				return err;
			for (; i < j; i += 2)
				d->tmp.v[d->tmp.n++] = d->pairs.v[i + 1];
			uint32_t t;
			if ((err = intern_set(d, rule, &t)) != MOE_OK)
				return err;
			if (pass == 0) {
				g->next[(size_t)x * g->n_classes + key] = t;
			} else {
				if ((err = g_vec_reserve(&d->calls, 2)) != MOE_OK)
					return err;
				d->calls.v[d->calls.n++] = key;
				d->calls.v[d->calls.n++] = t;
			}
		}
	}
	return MOE_OK;
}

/* ---- checks ------------------------------------------------------------------- */

typedef struct rev {
	uint32_t *byte_off, *byte_src;  /* states with a byte edge into each state */
	uint32_t *tgt_off, *tgt_call;   /* calls returning to each state */
	uint32_t *rule_off, *rule_call; /* calls of each rule */
	uint32_t *call_src;             /* [n calls] the calling state */
} rev;

static void rev_free(rev *r)
{
	free(r->byte_off);
	free(r->byte_src);
	free(r->tgt_off);
	free(r->tgt_call);
	free(r->rule_off);
	free(r->rule_call);
	free(r->call_src);
}

/* CSR of (key, value) pairs: off[key]..off[key+1] in val. */
static moe_err csr(uint32_t **off, uint32_t **val, const g_vec *pairs, uint32_t n_keys)
{
	size_t n = pairs->n / 2;
	*off = calloc((size_t)n_keys + 1, sizeof(uint32_t));
	*val = malloc((n ? n : 1) * sizeof(uint32_t));
	if (*off == NULL || *val == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar: reverse edges");
	for (size_t i = 0; i < n; i++)
		(*off)[pairs->v[2 * i] + 1]++;
	for (uint32_t k = 0; k < n_keys; k++)
		(*off)[k + 1] += (*off)[k];
	uint32_t *fill = malloc(((size_t)n_keys + 1) * sizeof(uint32_t));
	if (fill == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar: reverse edges");
	memcpy(fill, *off, ((size_t)n_keys + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < n; i++)
		(*val)[fill[pairs->v[2 * i]]++] = pairs->v[2 * i + 1];
	free(fill);
	return MOE_OK;
}

static moe_err rev_build(rev *r, const moe_grammar *g)
{
	g_vec p = {0};
	moe_err err = MOE_OK;
	uint32_t n_calls = g->call_off[g->n_states];
	uint32_t *seen = malloc(((size_t)g->n_states + 1) * sizeof(uint32_t));
	r->call_src = malloc(((size_t)n_calls + 1) * sizeof(uint32_t));
	if (seen == NULL || r->call_src == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: reverse edges");
		goto out_free_pairs;
	}
	memset(seen, 0xFF, ((size_t)g->n_states + 1) * sizeof(uint32_t));
	for (uint32_t q = 0; q < g->n_states; q++) {
		for (uint32_t c = 0; c < g->n_classes; c++) {
			uint32_t t = g->next[(size_t)q * g->n_classes + c];
			if (t == G_NONE || seen[t] == q)
				continue;
			seen[t] = q;
			if ((err = g_vec_reserve(&p, 2)) != MOE_OK)
				goto out_free_pairs;
			p.v[p.n++] = t;
			p.v[p.n++] = q;
		}
		for (uint32_t k = g->call_off[q]; k < g->call_off[q + 1]; k++)
			r->call_src[k] = q;
	}
	if ((err = csr(&r->byte_off, &r->byte_src, &p, g->n_states)) != MOE_OK)
		goto out_free_pairs;
	p.n = 0;
	if ((err = g_vec_reserve(&p, 2 * (size_t)n_calls)) != MOE_OK)
		goto out_free_pairs;
	for (uint32_t k = 0; k < n_calls; k++) {
		p.v[p.n++] = g->calls[k].ret;
		p.v[p.n++] = k;
	}
	if ((err = csr(&r->tgt_off, &r->tgt_call, &p, g->n_states)) != MOE_OK)
		goto out_free_pairs;
	p.n = 0;
	for (uint32_t k = 0; k < n_calls; k++) {
		p.v[p.n++] = g->calls[k].rule;
		p.v[p.n++] = k;
	}
	err = csr(&r->rule_off, &r->rule_call, &p, g->n_rules);
out_free_pairs:
	free(seen);
	free(p.v);
	return err;
}

/* Marks in ok[] the states from which their rule can finish: through bytes
 * (when bytes) and calls of rules that can finish; rule_ok[] gets the rules.
 * Linear: a work list over the reverse edges. */
static moe_err finishing(const moe_grammar *g, const rev *r, int bytes, uint8_t *ok,
                         uint8_t *rule_ok)
{
	uint32_t *work = malloc(((size_t)g->n_states + 1) * sizeof(uint32_t));
	if (work == NULL)
		return moe_fail(MOE_ERR_NOMEM, "grammar: check");
	size_t n = 0;
	memset(ok, 0, g->n_states);
	memset(rule_ok, 0, g->n_rules);
	for (uint32_t q = 0; q < g->n_states; q++)
		if (g->flags[q] & G_FINAL) {
			ok[q] = 1;
			work[n++] = q;
		}
	while (n > 0) {
		uint32_t t = work[--n];
		uint32_t rt = g->state_rule[t];
		if (g->rule_start[rt] == t && !rule_ok[rt]) {
			rule_ok[rt] = 1;
			for (uint32_t i = r->rule_off[rt]; i < r->rule_off[rt + 1]; i++) {
				uint32_t k = r->rule_call[i], q = r->call_src[k];
				if (ok[g->calls[k].ret] && !ok[q]) {
					ok[q] = 1;
					work[n++] = q;
				}
			}
		}
		if (bytes)
			for (uint32_t i = r->byte_off[t]; i < r->byte_off[t + 1]; i++) {
				uint32_t q = r->byte_src[i];
				if (!ok[q]) {
					ok[q] = 1;
					work[n++] = q;
				}
			}
		for (uint32_t i = r->tgt_off[t]; i < r->tgt_off[t + 1]; i++) {
			uint32_t k = r->tgt_call[i], q = r->call_src[k];
			if (rule_ok[g->calls[k].rule] && !ok[q]) {
				ok[q] = 1;
				work[n++] = q;
			}
		}
	}
	free(work);
	return MOE_OK;
}

/* Refuses left recursion: a rule that can call itself (through other rules)
 * before reading a byte would make the expansion of a stack endless. */
static moe_err left_recursion(const moe_grammar *g, const uint8_t *nullable)
{
	g_vec edges = {0}, stack = {0};
	moe_err err = MOE_OK;
	uint8_t *seen = calloc(g->n_states, 1);
	uint8_t *colour = calloc(g->n_rules, 1);
	uint32_t *off = NULL, *to = NULL, *it = NULL;
	if (seen == NULL || colour == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: check");
		goto out_free;
	}
	for (uint32_t rl = 0; rl < g->n_rules; rl++) {
		stack.n = 0;
		if ((err = g_vec_reserve(&stack, 1)) != MOE_OK)
			goto out_free;
		stack.v[stack.n++] = g->rule_start[rl];
		seen[g->rule_start[rl]] = 1;
		while (stack.n > 0) {
			uint32_t q = stack.v[--stack.n];
			for (uint32_t k = g->call_off[q]; k < g->call_off[q + 1]; k++) {
				if ((err = g_vec_reserve(&edges, 2)) != MOE_OK)
					goto out_free;
				edges.v[edges.n++] = rl;
				edges.v[edges.n++] = g->calls[k].rule;
				uint32_t t = g->calls[k].ret;
				if (nullable[g->calls[k].rule] && !seen[t]) {
					seen[t] = 1;
					if ((err = g_vec_reserve(&stack, 1)) != MOE_OK)
						goto out_free;
					stack.v[stack.n++] = t;
				}
			}
		}
	}
	if ((err = csr(&off, &to, &edges, g->n_rules)) != MOE_OK)
		goto out_free;
	it = malloc(((size_t)g->n_rules + 1) * sizeof(uint32_t));
	if (it == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: check");
		goto out_free;
	}
	for (uint32_t r0 = 0; r0 < g->n_rules; r0++) {
		if (colour[r0])
			continue;
		stack.n = 0;
		if ((err = g_vec_reserve(&stack, 1)) != MOE_OK)
			goto out_free;
		stack.v[stack.n++] = r0;
		colour[r0] = 1;
		it[r0] = off[r0];
		while (stack.n > 0) {
			uint32_t u = stack.v[stack.n - 1];
			if (it[u] == off[u + 1]) {
				colour[u] = 2;
				stack.n--;
				continue;
			}
			uint32_t w = to[it[u]++];
			if (colour[w] == 1) {
				err = moe_fail(
				    MOE_ERR_UNSUPPORTED,
				    "grammar: rule %s is left-recursive (it can reach itself "
				    "before reading a character)",
				    g->rule_names[w]);
				goto out_free;
			}
			if (colour[w] == 0) {
				colour[w] = 1;
				it[w] = off[w];
				if ((err = g_vec_reserve(&stack, 1)) != MOE_OK)
					goto out_free;
				stack.v[stack.n++] = w;
			}
		}
	}
out_free:
	free(it);
	free(off);
	free(to);
	free(colour);
	free(seen);
	free(stack.v);
	free(edges.v);
	return err;
}

/* The bytes that can come right after each rule ends (g->follow), from the
 * bytes each state can read first.  Both are least fixed points, iterated;
 * where that takes too long every byte may follow (a superset is safe: the
 * tables only reject a token by them). */
static moe_err follow_sets(moe_grammar *g, const uint8_t *null_state, const uint8_t *null_rule)
{
	uint32_t(*first)[8] = calloc(g->n_states, sizeof(*first));
	g->follow = calloc(g->n_rules, sizeof(*g->follow));
	if (first == NULL || g->follow == NULL) {
		free(first);
		return moe_fail(MOE_ERR_NOMEM, "grammar: follow sets");
	}
	for (uint32_t q = 0; q < g->n_states; q++)
		for (int b = 0; b < 256; b++)
			if (g_next(g, q, (uint8_t)b) != G_NONE)
				first[q][b >> 5] |= 1u << (b & 31);
	int changed = 1, rounds = 0;
	for (; changed && rounds < 200; rounds++) {
		changed = 0;
		for (uint32_t q = g->n_states; q-- > 0;)
			for (uint32_t k = g->call_off[q]; k < g->call_off[q + 1]; k++) {
				const g_call c = g->calls[k];
				for (int w = 0; w < 8; w++) {
					uint32_t f = first[g->rule_start[c.rule]][w];
					if (null_rule[c.rule])
						f |= first[c.ret][w];
					if (f & ~first[q][w]) {
						first[q][w] |= f;
						changed = 1;
					}
				}
			}
	}
	int first_done = !changed;
	for (changed = 1; changed && rounds < 400; rounds++) {
		changed = 0;
		for (uint32_t q = 0; q < g->n_states; q++)
			for (uint32_t k = g->call_off[q]; k < g->call_off[q + 1]; k++) {
				const g_call c = g->calls[k];
				const uint32_t *up = g->follow[g->state_rule[q]];
				for (int w = 0; w < 8; w++) {
					uint32_t f =
					    first[c.ret][w] | (null_state[c.ret] ? up[w] : 0);
					if (f & ~g->follow[c.rule][w]) {
						g->follow[c.rule][w] |= f;
						changed = 1;
					}
				}
			}
	}
	if (changed || !first_done)
		memset(g->follow, 0xFF, g->n_rules * sizeof(*g->follow));
	free(first);
	return MOE_OK;
}

static moe_err check(moe_grammar *g)
{
	rev r = {0};
	moe_err err = MOE_OK;
	uint8_t *ok = malloc(g->n_states + 1), *rule_ok = malloc(g->n_rules + 1);
	if (ok == NULL || rule_ok == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: check");
		goto out_free;
	}
	if ((err = rev_build(&r, g)) != MOE_OK)
		goto out_free;
	if ((err = finishing(g, &r, 1, ok, rule_ok)) != MOE_OK)
		goto out_free;
	for (uint32_t rl = 0; rl < g->n_rules; rl++)
		if (!rule_ok[rl]) {
			err = moe_fail(MOE_ERR_UNSUPPORTED, "grammar: rule %s can never finish",
			               g->rule_names[rl]);
			goto out_free;
		}
	if ((err = finishing(g, &r, 0, ok, rule_ok)) != MOE_OK)
		goto out_free;
	if ((err = left_recursion(g, rule_ok)) != MOE_OK)
		goto out_free;
	err = follow_sets(g, ok, rule_ok);
out_free:
	rev_free(&r);
	free(ok);
	free(rule_ok);
	return err;
}

/* ---- the whole compilation ------------------------------------------------------ */

/* g->close_n and G_POPS: the expansion of one stack at each state with the
 * rule's frame kept (the matcher's bound on the stacks a step can make). */
static moe_err closure_sizes(moe_grammar *g)
{
	g_pool p;
	g_vec out = {0};
	uint32_t *close_n = malloc(g->n_states * sizeof(uint32_t));
	moe_err err = g_pool_init(&p);
	if (err == MOE_OK && close_n == NULL)
		err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
	for (uint32_t s = 0; s < g->n_states && err == MOE_OK; s++) {
		uint8_t flags = 0;
		out.n = 0;
		err = g_start(&p, g, &out, &flags, s, G_CTX);
		if (err == MOE_ERR_BAD_COUNT) {
			moe_err_clear();
			err = MOE_OK;
			close_n[s] = UINT32_MAX;
			flags = G_SET_CTX;
		} else {
			close_n[s] = (uint32_t)out.n;
		}
		if (flags & G_SET_CTX)
			g->flags[s] |= G_POPS;
		g_pool_truncate(&p, 2);
	}
	g_pool_free(&p);
	free(out.v);
	if (err != MOE_OK) {
		free(close_n);
		return err;
	}
	g->close_n = close_n;
	return MOE_OK;
}

void moe_grammar_destroy(moe_grammar *g)
{
	if (g == NULL)
		return;
	if (g->rule_names)
		for (uint32_t i = 0; i < g->n_rules; i++)
			free(g->rule_names[i]);
	free(g->rule_names);
	free(g->next);
	free(g->flags);
	free(g->call_off);
	free(g->calls);
	free(g->rule_start);
	free(g->state_rule);
	free(g->follow);
	free(g->close_n);
	free(g);
}

uint32_t moe_grammar_n_states(const moe_grammar *g)
{
	return g->n_states;
}

uint32_t moe_grammar_n_rules(const moe_grammar *g)
{
	return g->n_rules;
}

/* Appends to order the rules a references that map[] does not know yet. */
static moe_err collect_refs(const g_ast *a, uint32_t *map, g_vec *order)
{
	if (a->kind == AST_REF) {
		if (map[a->rule] != G_NONE)
			return MOE_OK;
		moe_err err = g_vec_reserve(order, 1);
		if (err != MOE_OK)
			return err;
		map[a->rule] = (uint32_t)order->n;
		order->v[order->n++] = a->rule;
		return MOE_OK;
	}
	if (a->kind == AST_SEQ || a->kind == AST_ALT || a->kind == AST_REP)
		for (uint32_t i = 0; i < a->n; i++) {
			moe_err err = collect_refs(a->kids[i], map, order);
			if (err != MOE_OK)
				return err;
		}
	return MOE_OK;
}

static void byte_classes(moe_grammar *g, const nfa *a)
{
	uint8_t cut[257] = {0};
	cut[0] = 1;
	for (uint32_t i = 0; i < a->n_e; i++)
		if (a->e[i].kind == E_BYTE) {
			cut[a->e[i].lo] = 1;
			cut[a->e[i].hi + 1] = 1;
		}
	uint32_t c = 0;
	for (int b = 0; b < 256; b++) {
		if (b > 0 && cut[b])
			c++;
		g->byte_class[b] = (uint8_t)c;
	}
	g->n_classes = c + 1;
}

static moe_err compile(moe_grammar **out, const g_rules *rs, uint32_t root)
{
	moe_err err = MOE_OK;
	g_vec order = {0}, call_off = {0};
	nfa a = {0};
	dfa_build d = {0};
	uint32_t *map = malloc(((size_t)rs->n + 1) * sizeof(uint32_t)), *nfa_start = NULL;
	moe_grammar *g = calloc(1, sizeof(*g));
	if (map == NULL || g == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
		goto out_free;
	}
	memset(map, 0xFF, ((size_t)rs->n + 1) * sizeof(uint32_t));
	if ((err = g_vec_reserve(&order, 1)) != MOE_OK)
		goto out_free;
	map[root] = 0;
	order.v[order.n++] = root;
	for (size_t i = 0; i < order.n; i++)
		if ((err = collect_refs(rs->r[order.v[i]].body, map, &order)) != MOE_OK)
			goto out_free;
	g->n_rules = (uint32_t)order.n;
	g->root = 0;
	g->rule_names = calloc(order.n, sizeof(char *));
	g->rule_start = malloc(order.n * sizeof(uint32_t));
	nfa_start = malloc(order.n * sizeof(uint32_t));
	d.rule_accept = malloc(order.n * sizeof(uint32_t));
	if (!g->rule_names || !g->rule_start || !nfa_start || !d.rule_accept) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
		goto out_free;
	}
	uint64_t est = 0;
	for (size_t i = 0; i < order.n; i++) {
		g->rule_names[i] = strdup(rs->r[order.v[i]].name);
		if (g->rule_names[i] == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
			goto out_free;
		}
		est = sat_add(est, estimate(rs->r[order.v[i]].body, &a.seq, &err) + 1);
		if (err != MOE_OK)
			goto out_free;
	}
	if (est > G_MAX_NFA) {
		err = moe_fail(MOE_ERR_BAD_COUNT,
		               "grammar: about %llu automaton states, more than the %u allowed "
		               "(repetition counts too large?)",
		               (unsigned long long)est, G_MAX_NFA);
		goto out_free;
	}
	a.rule_map = map;
	for (size_t i = 0; i < order.n; i++) {
		if ((err = nfa_state(&a, &nfa_start[i])) != MOE_OK)
			goto out_free;
		if ((err = build(&a, rs->r[order.v[i]].body, nfa_start[i], &d.rule_accept[i])) !=
		    MOE_OK)
			goto out_free;
	}
	byte_classes(g, &a);
	d.a = &a;
	d.g = g;
	d.hash_cap = 1024;
	d.hash = malloc(d.hash_cap * sizeof(uint32_t));
	d.stamp = calloc(a.n, sizeof(uint32_t));
	if (d.hash == NULL || d.stamp == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
		goto out_free;
	}
	memset(d.hash, 0xFF, d.hash_cap * sizeof(uint32_t));
	for (uint32_t r = 0; r < g->n_rules; r++) {
		d.tmp.n = 0;
		if ((err = g_vec_reserve(&d.tmp, 1)) != MOE_OK)
			goto out_free;
		d.tmp.v[d.tmp.n++] = nfa_start[r];
		if ((err = intern_set(&d, r, &g->rule_start[r])) != MOE_OK)
			goto out_free;
	}
	for (uint32_t x = 0; x < g->n_states; x++) {
		if ((err = g_vec_reserve(&call_off, 1)) != MOE_OK)
			goto out_free;
		call_off.v[call_off.n++] = (uint32_t)(d.calls.n / 2);
		if ((err = expand_state(&d, x)) != MOE_OK)
			goto out_free;
	}
	if ((err = g_vec_reserve(&call_off, 1)) != MOE_OK)
		goto out_free;
	call_off.v[call_off.n++] = (uint32_t)(d.calls.n / 2);
	g->call_off = call_off.v;
	call_off.v = NULL;
	g->calls = malloc((d.calls.n / 2 + 1) * sizeof(g_call));
	if (g->calls == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "grammar: compile");
		goto out_free;
	}
	for (size_t k = 0; k < d.calls.n / 2; k++)
		g->calls[k] = (g_call){d.calls.v[2 * k], d.calls.v[2 * k + 1]};
	if ((err = g_merge_states(g)) != MOE_OK)
		goto out_free;
	for (uint32_t x = 0; x < g->n_states; x++) {
		for (uint32_t c = 0; c < g->n_classes; c++)
			if (g->next[(size_t)x * g->n_classes + c] != G_NONE)
				g->flags[x] |= G_BYTES;
		if ((g->flags[x] & (G_FINAL | G_BYTES)) == G_FINAL &&
		    g->call_off[x] == g->call_off[x + 1])
			g->flags[x] |= G_TAIL;
	}
	if ((err = check(g)) != MOE_OK)
		goto out_free;
	if ((err = closure_sizes(g)) != MOE_OK)
		goto out_free;
	*out = g;
	g = NULL;
out_free:
	moe_grammar_destroy(g);
	free(call_off.v);
	free(map);
	free(nfa_start);
	free(order.v);
	free(a.head);
	free(a.e);
	free(a.seq.v);
	free(d.sets.v);
	free(d.set_off);
	free(d.set_n);
	free(d.hash);
	free(d.stamp);
	free(d.sorted.v);
	free(d.tmp.v);
	free(d.pairs.v);
	free(d.calls.v);
	free(d.rule_accept);
	return err;
}

moe_err moe_grammar_parse(moe_grammar **out, const char *text, size_t len, const char *root)
{
	if (out == NULL || (text == NULL && len > 0))
		return moe_fail(MOE_ERR_INVAL, "moe_grammar_parse: NULL argument");
	if (root == NULL)
		root = "root";
	g_rules rs = {0};
	moe_err err = g_parse_text(&rs, text, len);
	if (err != MOE_OK)
		goto out_free_rules;
	uint32_t id = G_NONE;
	for (uint32_t i = 0; i < rs.n; i++)
		if (strcmp(rs.r[i].name, root) == 0)
			id = i;
	if (id == G_NONE) {
		err = moe_fail(MOE_ERR_NOT_FOUND, "grammar: no rule named %s", root);
		goto out_free_rules;
	}
	err = compile(out, &rs, id);
out_free_rules:
	g_rules_free(&rs);
	return err;
}
