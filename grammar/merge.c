/*
 * merge.c - merging the automaton's equal states.  Subset construction
 * makes one state per set of NFA states, and sets that differ can still
 * behave alike: inside a JSON string the states after the opening quote,
 * after a plain character, after each multi-byte character and after each
 * escape all read the same bytes into the same states.  Each such state
 * costs a walk of the whole vocabulary when the tables are built (the six
 * string states of bench grammar's tool schema took 85 of its 122 ms), and
 * each can make a stack of its own in the matcher.
 *
 * A round merges the states of one rule that agree exactly: whether the rule
 * may end there, the state after every byte class, and every call (callee and
 * return state).  Merging can make more states agree, so rounds go on until
 * one merges nothing or the work bound is spent.  Stopping early is safe:
 * every merge joins states that accept the same strings, so the automaton
 * accepts what it did before whether or not it ends minimal (loops of
 * states that agree only up to each other stay apart).
 */
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

/* Rounds stop once they have handled this many cells (states x byte
 * classes) in all, a few times the automaton's size at most. */
#define MERGE_WORK_FACTOR 4

typedef struct merger {
	moe_grammar *g;
	uint32_t *rep;  /* [n_states] the state each is merged into (itself: kept) */
	uint32_t *hash; /* open addressing: states, G_NONE empty */
	uint32_t hash_cap;
} merger;

static uint64_t mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
	return h;
}

static uint64_t state_hash(const moe_grammar *g, uint32_t x)
{
	uint64_t h = mix(g->state_rule[x], g->flags[x] & G_FINAL);
	const uint32_t *row = g->next + (size_t)x * g->n_classes;
	for (uint32_t c = 0; c < g->n_classes; c++)
		h = mix(h, row[c]);
	for (uint32_t k = g->call_off[x]; k < g->call_off[x + 1]; k++)
		h = mix(mix(h, g->calls[k].rule), g->calls[k].ret);
	return h ^ (h >> 31);
}

static int same_state(const moe_grammar *g, uint32_t x, uint32_t y)
{
	if (g->state_rule[x] != g->state_rule[y] ||
	    (g->flags[x] & G_FINAL) != (g->flags[y] & G_FINAL))
		return 0;
	if (memcmp(g->next + (size_t)x * g->n_classes, g->next + (size_t)y * g->n_classes,
	           g->n_classes * sizeof(uint32_t)) != 0)
		return 0;
	uint32_t n = g->call_off[x + 1] - g->call_off[x];
	if (n != g->call_off[y + 1] - g->call_off[y])
		return 0;
	/* calls are sorted by callee (expand_state), one per callee */
	for (uint32_t k = 0; k < n; k++) {
		const g_call a = g->calls[g->call_off[x] + k], b = g->calls[g->call_off[y] + k];
		if (a.rule != b.rule || a.ret != b.ret)
			return 0;
	}
	return 1;
}

/* One round: rep[x] for every state; returns how many states it merged. */
static uint32_t find_equal(merger *m)
{
	const moe_grammar *g = m->g;
	uint32_t mask = m->hash_cap - 1, merged = 0;
	memset(m->hash, 0xFF, m->hash_cap * sizeof(uint32_t));
	for (uint32_t x = 0; x < g->n_states; x++) {
		m->rep[x] = x;
		for (uint32_t i = (uint32_t)state_hash(g, x) & mask;; i = (i + 1) & mask) {
			uint32_t y = m->hash[i];
			if (y == G_NONE) {
				m->hash[i] = x;
				break;
			}
			if (same_state(g, x, y)) {
				m->rep[x] = y;
				merged++;
				break;
			}
		}
	}
	return merged;
}

/* Renumbers the kept states in order and rewrites every reference to a
 * merged one.  In place: a kept state's new id is at most its old one, and
 * its calls start at most where they did. */
static void renumber(merger *m)
{
	moe_grammar *g = m->g;
	uint32_t *id = m->rep, n = 0, n_calls = 0;
	/* a state is merged into an earlier one, which is kept */
	for (uint32_t x = 0; x < g->n_states; x++)
		id[x] = id[x] == x ? n++ : id[id[x]];
	for (uint32_t x = 0, kept = 0; x < g->n_states; x++) {
		uint32_t y = id[x];
		if (y != kept)
			continue; /* merged */
		kept++;
		const uint32_t *from = g->next + (size_t)x * g->n_classes;
		uint32_t *to = g->next + (size_t)y * g->n_classes;
		for (uint32_t c = 0; c < g->n_classes; c++)
			to[c] = from[c] == G_NONE ? G_NONE : id[from[c]];
		g->flags[y] = g->flags[x];
		g->state_rule[y] = g->state_rule[x];
		uint32_t k0 = g->call_off[x], k1 = g->call_off[x + 1];
		g->call_off[y] = n_calls;
		for (uint32_t k = k0; k < k1; k++)
			g->calls[n_calls++] = (g_call){g->calls[k].rule, id[g->calls[k].ret]};
	}
	g->call_off[n] = n_calls;
	for (uint32_t r = 0; r < g->n_rules; r++)
		g->rule_start[r] = id[g->rule_start[r]];
	g->n_states = n;
}

moe_err g_merge_states(moe_grammar *g)
{
	merger m = {.g = g};
	uint32_t cap = 16;
	while (cap < 2 * g->n_states)
		cap *= 2;
	m.rep = malloc((size_t)g->n_states * sizeof(uint32_t));
	m.hash = malloc((size_t)cap * sizeof(uint32_t));
	if (m.rep == NULL || m.hash == NULL) {
		free(m.rep);
		free(m.hash);
		return moe_fail(MOE_ERR_NOMEM, "grammar: merging %u states", g->n_states);
	}
	m.hash_cap = cap;
	const uint64_t budget =
	    MERGE_WORK_FACTOR * ((uint64_t)g->n_states * g->n_classes + g->call_off[g->n_states]);
	uint64_t work = 0;
	while (work < budget) {
		work += (uint64_t)g->n_states * g->n_classes + g->call_off[g->n_states];
		if (find_equal(&m) == 0)
			break;
		renumber(&m);
	}
	free(m.rep);
	free(m.hash);
	return MOE_OK;
}
