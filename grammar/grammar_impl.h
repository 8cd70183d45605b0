/*
 * grammar_impl.h - private to grammar/: the parsed rules (syntax trees in an
 * arena), the compiled automaton, the vocabulary view, the per-position token
 * tables, the stack machine (interned stack nodes, expansion, one byte step)
 * and the token walker shared by the tables and the matcher.
 */
#ifndef MOE_GRAMMAR_IMPL_H
#define MOE_GRAMMAR_IMPL_H

#include "grammar/grammar.h"

#define G_NONE UINT32_MAX
#define G_INF  UINT32_MAX

/* Limits that keep hostile grammars bounded.  The fuzz tree
 * (MOE_FUZZ_SMALL_LIMITS, set by -DMOE_FUZZ=ON) lowers the work limits so
 * that the same limit paths are reached at a fraction of the cost (DESIGN,
 * Tests); every other build has the values served. */
#define G_MAX_NEST   64    /* nested ( ) in grammar text */
#define G_MAX_REPEAT 10000 /* m and n of {m,n} */
#define G_MAX_RULES  65536 /* rules in one grammar */
#ifdef MOE_FUZZ_SMALL_LIMITS
#define G_MAX_NFA      (1u << 16)
#define G_MAX_DFA      (1u << 13)
#define G_MAX_CELLS    (1u << 20)
#define G_MAX_STACKS   64
#define G_MAX_NODES    (1u << 17)
#define G_MAX_WORK     (1ull << 22)
#define G_MAX_DFA_WORK (1ull << 17)
#else
#define G_MAX_NFA      (1u << 21)   /* automaton states before determinisation */
#define G_MAX_DFA      (1u << 18)   /* automaton states after */
#define G_MAX_CELLS    (1u << 25)   /* states x byte classes */
#define G_MAX_STACKS   4096         /* stacks in one matcher state */
#define G_MAX_NODES    (1u << 23)   /* interned stack nodes of one matcher */
#define G_MAX_WORK     400000000ull /* byte steps spent building one set of tables */
#define G_MAX_DFA_WORK (1ull << 23) /* set members handled determinising one grammar */
#endif

/* Token lengths the matcher's stack bounds are kept for: at most 1, 2, 4 ...
 * 128 bytes, then any. */
#define G_FAN_BUCKETS 9

/* ---- byte buffers (schema.c, regex.c, range.c) ---------------------------------------- */

typedef struct g_buf {
	char *p;
	size_t n, cap;
	int failed; /* an allocation failed: the text is incomplete */
} g_buf;

void g_buf_put(g_buf *b, const char *s, size_t n);
void g_buf_puts(g_buf *b, const char *s);
void g_buf_printf(g_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends the UTF-8 form of code point cp. */
void g_buf_utf8(g_buf *b, uint32_t cp);
/* The code point *cp of the valid UTF-8 sequence at s (at most n bytes):
 * its length 1-4, or 0 where the bytes are not one (a bad lead or
 * continuation byte, cut short, overlong, a surrogate, past U+10FFFF). */
int g_utf8_next(const uint8_t *s, size_t n, uint32_t *cp);
/* Appends bytes as the inside of a grammar literal (no quotes). */
void g_buf_lit(g_buf *b, const char *s, size_t n);

/* Appends to out the grammar expression for the JSON-encoded strings whose
 * decoded text the regex re (len bytes; the subset of grammar.h) matches,
 * without the quotes.  Errors: MOE_ERR_UNSUPPORTED (a feature outside the
 * subset, named), MOE_ERR_FORMAT (not a regex), MOE_ERR_NOMEM. (regex.c) */
moe_err g_regex_to_gbnf(g_buf *out, const char *re, size_t len);

/* ---- numeric ranges (range.c) ------------------------------------------------------ */

/* The largest magnitude of an integer part the JSON number rules write (16
 * digits). */
#define G_INT_CAP 9999999999999999ull

/* One bound of a range: set or not; v an integer; excl: the bound itself is
 * left out. */
typedef struct g_bound {
	int set, excl;
	int64_t v;
} g_bound;

/* Appends a grammar expression matching exactly the decimal strings without
 * sign or leading zeros ("0" for zero) of the integers in [lo, hi]; lo <= hi
 * <= G_INT_CAP. */
void g_range_uint(g_buf *e, uint64_t lo, uint64_t hi);

/* As g_range_uint for -G_INT_CAP <= lo <= hi <= G_INT_CAP: negatives as "-"
 * and the magnitude, zero as "0" only. */
void g_range_int(g_buf *e, int64_t lo, int64_t hi);

/* Appends a grammar expression matching exactly the JSON numbers without
 * exponent (integer part of at most 16 digits, at most 16 fraction digits;
 * no "-0", "-0.0", ...) whose decimal value lies within the bounds
 * (|v| <= 10^17).  Returns the number of alternatives written; 0: no number
 * fits (the expression is then empty: do not use it). */
int g_range_number(g_buf *e, g_bound lo, g_bound hi);

/* ---- arrays of uint32_t ---------------------------------------------------------- */

typedef struct g_vec {
	uint32_t *v;
	size_t n, cap;
} g_vec;

/* Room for extra more elements, v->v not NULL after (even for 0 elements);
 * MOE_ERR_NOMEM otherwise (v unchanged). */
moe_err g_vec_reserve(g_vec *v, size_t extra);

/* ---- parsed rules (gbnf.c) ------------------------------------------------------- */

enum { AST_EMPTY, AST_LIT, AST_CLASS, AST_REF, AST_SEQ, AST_ALT, AST_REP };

typedef struct g_ast g_ast;
struct g_ast {
	uint8_t kind;
	uint32_t n;        /* LIT: bytes; CLASS: ranges; SEQ, ALT: kids */
	uint32_t min, max; /* REP (max G_INF: unbounded); the body is kids[0] */
	uint32_t rule;     /* REF */
	union {
		uint8_t *bytes;   /* LIT */
		uint32_t *ranges; /* CLASS: n pairs lo, hi of code points, sorted, disjoint */
		g_ast **kids;     /* SEQ, ALT, REP */
	};
};

typedef struct g_chunk g_chunk;
typedef struct g_arena {
	g_chunk *head;
	size_t used, cap;
} g_arena;

void *g_arena_alloc(g_arena *a, size_t n);
void g_arena_free(g_arena *a);

typedef struct g_rule {
	char *name;
	g_ast *body; /* NULL while only referenced */
	uint32_t line, col;
} g_rule;

typedef struct g_rules {
	g_arena arena;
	g_rule *r;
	uint32_t n, cap;
} g_rules;

/* Parses grammar text into rules (every name defined); errors as
 * moe_grammar_parse. On error the rules may be partly filled: free them. */
moe_err g_parse_text(g_rules *out, const char *text, size_t len);
void g_rules_free(g_rules *rs);

/* ---- the compiled automaton (compile.c) ------------------------------------------ */

enum { G_FINAL = 1, G_BYTES = 2, G_TAIL = 4, G_POPS = 8 };

typedef struct g_call {
	uint32_t rule, ret; /* the callee, the state to return to */
} g_call;

struct moe_grammar {
	uint32_t n_states, n_classes, n_rules, root;
	uint8_t byte_class[256];
	uint32_t *next;     /* [n_states * n_classes] state after a byte, or G_NONE */
	uint8_t *flags;     /* [n_states] G_FINAL: the rule may end; G_BYTES: reads bytes;
	                       G_TAIL: final and nothing else (a call returning here is a tail call);
	                       G_POPS: see close_n */
	uint32_t *call_off; /* [n_states + 1] */
	g_call *calls;
	uint32_t *rule_start;  /* [n_rules] */
	uint32_t *state_rule;  /* [n_states] */
	char **rule_names;     /* [n_rules] */
	uint32_t (*follow)[8]; /* [n_rules] bytes that can come right after the rule ends
	                          (a superset; all bytes where it could not be bounded) */
	uint32_t *close_n;     /* [n_states] stacks that read a byte in the expansion of one
	                          stack at the state, its rule's frame kept (UINT32_MAX: more than
	                          G_MAX_STACKS); G_POPS in flags: that expansion can end the rule */
};

static inline uint32_t g_next(const moe_grammar *g, uint32_t s, uint8_t b)
{
	return g->next[(size_t)s * g->n_classes + g->byte_class[b]];
}

/* Merges states of one rule that end, read bytes and call alike (the
 * automaton as determinised: flags holds only G_FINAL), renumbering the
 * rest in order; the language is unchanged.  Errors: MOE_ERR_NOMEM (g
 * unchanged). (merge.c) */
moe_err g_merge_states(moe_grammar *g);

/* ---- stack machine (stacks.c) ---------------------------------------------------- */

/* A stack is a chain of interned nodes: node (state, parent) means "at state
 * of a rule; when it ends, resume at parent".  Node 0 is the bottom (the
 * grammar ends when it is reached), node 1 the unknown context below a
 * position (tables.c asks whether a token stays above it). */
#define G_BOTTOM 0u
#define G_CTX    1u

enum { G_SET_END = 1, G_SET_CTX = 2 };

typedef struct g_node {
	uint32_t state, parent, next, depth;
	uint32_t pop; /* close_n of the node and of the parents its expansion can end into,
	                 summed (saturating): the stacks a pop into it can make at once */
} g_node;

typedef struct g_pool {
	g_node *nodes;
	uint32_t *mark; /* [cap] epoch of the last expansion that met the node */
	uint32_t n, cap;
	uint32_t *bucket; /* heads of hash chains, newest first */
	uint32_t n_buckets;
	uint32_t epoch;
	uint32_t max_depth; /* deepest node interned since the caller last cleared it */
	g_vec work;
} g_pool;

moe_err g_pool_init(g_pool *p);
void g_pool_free(g_pool *p);
moe_err g_pool_copy(g_pool *dst, const g_pool *src);
/* Forgets every node from n on (they were interned last, so chains stay whole). */
void g_pool_truncate(g_pool *p, uint32_t n);

/* Appends to out the expanded stacks of the stack (state, parent): those whose
 * top reads a byte; *flags gets G_SET_END / G_SET_CTX when the stack can end
 * into the bottom / the context.  Errors: MOE_ERR_NOMEM, MOE_ERR_BAD_COUNT. */
moe_err g_start(g_pool *p, const moe_grammar *g, g_vec *out, uint8_t *flags, uint32_t state,
                uint32_t parent);

/* Appends to out the expanded stacks after byte b from the n stacks at
 * out->v[off..off+n); *flags as g_start.  Errors as g_start. */
moe_err g_step(g_pool *p, const moe_grammar *g, g_vec *out, uint8_t *flags, size_t off, uint32_t n,
               uint8_t b);

/* ---- vocabulary view (vocab.c) --------------------------------------------------- */

enum { G_TOK_NORMAL = 0, G_TOK_NEVER = 1, G_TOK_END = 2 };

struct moe_grammar_vocab {
	uint32_t n_vocab, n_sorted, max_len;
	uint8_t *bytes;
	uint32_t *off;       /* [n_vocab + 1] bytes of token i: bytes[off[i] .. off[i+1]) */
	uint8_t *kind;       /* [n_vocab] G_TOK_* */
	uint32_t *sorted;    /* [n_sorted] the NORMAL tokens by their bytes */
	uint8_t *lcp;        /* [n_sorted] bytes sorted[i] shares with sorted[i - 1] at the
	                        start (at most 255; 0 for i = 0) */
	uint32_t first[257]; /* sorted[first[b] .. first[b+1]) start with byte b */
	uint32_t *by_len;    /* [n_sorted] positions in sorted, longest token first */
	uint32_t n_longer[G_FAN_BUCKETS]; /* tokens longer than 2^k bytes (the last: 0) */
	uint32_t *end_ids;
	uint32_t n_end;
	size_t words;
};

/* ---- the token walker (tables.c) ------------------------------------------------- */

enum { G_REJ = 0, G_ACC = 1, G_UNC = 2 };

typedef struct g_level {
	size_t off; /* the stacks in the walker's buffer */
	uint32_t n;
	uint32_t mark;   /* nodes in the pool before this level was made */
	uint8_t flags;   /* G_SET_* of this level */
	uint8_t cum_ctx; /* some level up to this one could end into the context */
} g_level;

typedef struct g_walk {
	g_vec buf;
	g_level *lv;
	size_t lv_cap;
	uint64_t work;         /* byte steps taken */
	uint32_t *most;        /* [max_len + 1] most stacks after d bytes (the caller
	                          clears it; NULL: not kept) */
	uint8_t limit_rejects; /* a step past the stack limits rejects the tokens
	                          through it instead of failing the walk (the
	                          matcher: accept_token would fail there too) */
} g_walk;

void g_walk_free(g_walk *w);

/* For each of the n_pos sorted positions pos[] of v (ascending), res[i] =
 * G_ACC when the token's bytes can all be consumed from the n_start stacks
 * start[] (start_flags as their expansion gave), or end exactly where they
 * may end; G_UNC when they cannot but a stack could end into the context
 * before a byte in follow (256 bits; NULL: no context); G_REJ otherwise.  Errors: MOE_ERR_NOMEM,
 * MOE_ERR_BAD_COUNT (the pool is left as it was). */
moe_err g_walk_run(g_walk *w, g_pool *p, const moe_grammar *g, const moe_grammar_vocab *v,
                   const uint32_t *start, uint32_t n_start, uint8_t start_flags,
                   const uint32_t *follow, const uint32_t *pos, size_t n_pos, uint8_t *res);

/* ---- tables (tables.c) ----------------------------------------------------------- */

typedef struct g_tab {
	uint32_t acc_off, acc_n;     /* acc_bits: a bitset at acc[acc_off], else acc_n ids */
	uint32_t unc_off, unc_n;     /* sorted positions at unc[unc_off] */
	uint32_t max_push;           /* deepest stack a local walk from here made */
	uint16_t fan[G_FAN_BUCKETS]; /* most stacks a local walk from here had after
	                                a byte of a token of at most 2^k bytes (the
	                                last: of any length), saturating */
	uint8_t acc_bits;
} g_tab;

struct moe_grammar_tables {
	const moe_grammar *g;
	const moe_grammar_vocab *v;
	g_tab *st; /* [n_states] (only G_BYTES states are filled) */
	uint32_t *acc;
	uint32_t *unc;
	double build_s;
};

#endif
