/*
 * internal.h - the private types of jinja/: the arena, values (strings,
 * lists, dicts, namespaces, macros...), the syntax tree, the render state,
 * and the functions the files of the folder share.  Nothing here is public.
 */
#ifndef MOE_JINJA_INTERNAL_H
#define MOE_JINJA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/core.h"
#include "jinja/jinja.h"

/* ---- arena: bump allocation freed all at once (a == NULL: the C heap) ---- */

typedef struct jchunk jchunk;
typedef struct jarena {
	jchunk *head;
	size_t total; /* bytes taken from the heap */
	size_t limit; /* 0: none */
	int over;     /* an allocation failed on the limit (not on the heap) */
} jarena;

void *ja_alloc(jarena *a, size_t n);
/* Grows p (old bytes) to n bytes; on the heap realloc, in an arena a copy. */
void *ja_grow(jarena *a, void *p, size_t old, size_t n);
void ja_release(jarena *a);
/* The error of a failed ja_alloc: MOE_ERR_OVERFLOW on the limit, else NOMEM. */
moe_err ja_fail(const jarena *a);

/* ---- values ---- */

enum jv_type {
	JV_MISSING, /* internal: no value (unset argument, absent variable) */
	JV_UNDEF,
	JV_NONE,
	JV_BOOL,
	JV_INT,
	JV_FLOAT,
	JV_STR,
	JV_LIST, /* list, tuple, generator, dict view, range: jlist.kind */
	JV_DICT,
	JV_NS,     /* namespace(): a dict that set ns.x may change */
	JV_MACRO,  /* a macro or a call block's caller */
	JV_FUNC,   /* a global function: aux = JF_* */
	JV_METHOD, /* a bound method: bm */
	JV_LOOP,
};

/* flags of a JV_STR */
enum { JVF_MARKUP = 1 };

/* why a JV_UNDEF is undefined (aux), for the message when it is used */
enum {
	JU_NAME,   /* s: the variable's name */
	JU_ATTR,   /* s: the attribute; x: the type of the object */
	JU_HINT,   /* hint: a message */
	JU_UNSAFE, /* s: the attribute; x: the type; a sandbox refusal */
};

/* the global functions */
enum { JF_RANGE, JF_DICT, JF_NAMESPACE, JF_RAISE, JF_STRFTIME, JF_REFUSED, JF__COUNT };

typedef struct jstr {
	size_t len; /* bytes */
	size_t ncp; /* code points */
	char s[];   /* len bytes, then a NUL */
} jstr;

struct jlist;
struct jdict;
struct jmacro;
struct jloop;
struct jmethod;

typedef struct jv {
	uint8_t t;    /* enum jv_type */
	uint8_t fl;   /* JVF_* */
	uint16_t x;   /* JU_ATTR: the object's type */
	uint32_t aux; /* JU_* for JV_UNDEF, JF_* for JV_FUNC */
	union {
		int64_t i; /* JV_INT, JV_BOOL */
		double f;
		const jstr *s;
		struct jlist *l;
		struct jdict *d;
		struct jmacro *m;
		struct jloop *lp;
		struct jmethod *bm;
		const char *hint;
	};
} jv;

enum jl_kind {
	JL_LIST,
	JL_TUPLE,
	JL_GEN,    /* a generator: iterates once, has no len, is always true */
	JL_KEYS,   /* dict_keys([...]) */
	JL_VALUES, /* dict_values([...]) */
	JL_ITEMS,  /* dict_items([...]) */
	JL_RANGE,  /* range(a, b, s) */
};

typedef struct jlist {
	size_t n, cap;
	jv *v;
	uint8_t kind;
	size_t pos;         /* JL_GEN: items before pos are used up */
	int64_t r0, r1, rs; /* JL_RANGE: start, stop, step */
} jlist;

typedef struct jentry {
	const jstr *k;
	jv v;
} jentry;

typedef struct jdict {
	size_t n, cap;
	jentry *e;
	uint32_t *idx; /* open addressing over e (index + 1), when n > 8 */
	size_t icap;
} jdict;

struct jnode;
struct jscope;

typedef struct jmacro {
	const struct jnode *def; /* N_MACRO or N_CALLBLOCK */
	struct jscope *closure;
} jmacro;

typedef struct jloop {
	const jv *items;
	size_t n, i;
	unsigned depth0;
	jv changed; /* JV_MISSING before the first loop.changed() */
} jloop;

typedef struct jmethod {
	jv self;
	const jstr *name;
} jmethod;

static inline jv jv_make(uint8_t t)
{
	jv v = {0};
	v.t = t;
	return v;
}
static inline jv jv_int(int64_t i)
{
	jv v = jv_make(JV_INT);
	v.i = i;
	return v;
}
static inline jv jv_bool(int b)
{
	jv v = jv_make(JV_BOOL);
	v.i = b != 0;
	return v;
}
static inline jv jv_float(double f)
{
	jv v = jv_make(JV_FLOAT);
	v.f = f;
	return v;
}
static inline jv jv_str(const jstr *s)
{
	jv v = jv_make(JV_STR);
	v.s = s;
	return v;
}
static inline jv jv_list(jlist *l)
{
	jv v = jv_make(JV_LIST);
	v.l = l;
	return v;
}
static inline jv jv_dict(jdict *d)
{
	jv v = jv_make(JV_DICT);
	v.d = d;
	return v;
}
static inline jv jv_undef_hint(const char *hint)
{
	jv v = jv_make(JV_UNDEF);
	v.aux = JU_HINT;
	v.hint = hint;
	return v;
}

/* the public handle: a value on the heap */
struct moe_jinja_value {
	jv v;
};

/* Copies n values to dst[at...] (nothing when n is 0: dst may be NULL). */
static inline void jv_copy(jv *dst, size_t at, const jv *src, size_t n)
{
	if (n)
		memcpy(dst + at, src, n * sizeof(jv));
}

/* strings (value.c) */
size_t utf8_count(const char *s, size_t n);
int utf8_valid(const char *s, size_t n);
const jstr *jstr_new(jarena *a, const char *s, size_t n);
const jstr *jstr_lit(jarena *a, const char *s); /* NUL-terminated */
extern const jstr jstr_empty;

/* lists and dicts (value.c) */
jlist *jlist_new(jarena *a, size_t cap, int kind);
moe_err jlist_push(jarena *a, jlist *l, jv v);
jdict *jdict_new(jarena *a, size_t cap);
/* Sets d[k] = v (an existing key keeps its place). */
moe_err jdict_set(jarena *a, jdict *d, const jstr *k, jv v);
jv *jdict_get(const jdict *d, const char *k, size_t n);
void jv_free_heap(jv v); /* frees a value built on the heap (a == NULL) */

/* Python semantics (value.c) */
int jv_truthy(jv v);
int jv_is_str(jv v);
int jv_is_num(jv v); /* bool, int, float */
double jv_num(jv v);
/* v == w as Python compares. */
int jv_eq(jv v, jv w);
/* Sets *r to the sign of v - w; MOE_ERR_BAD_TYPE when Python cannot order them. */
moe_err jv_cmp(int *r, jv v, jv w);
/* Python's type name of v ("dict", "str", "int", "NoneType"...). */
const char *jv_type_name(jv v);
/* Jinja2's object_type_repr: "dict object", "None", "no such element"... */
const char *jv_object_repr(int t);

/* Text output: a growable heap buffer with a size limit. */
typedef struct jbuf {
	char *p;
	size_t n, cap, limit;
	jarena *acct; /* if set, the capacity counts against its limit */
} jbuf;
moe_err jbuf_put(jbuf *b, const void *p, size_t n);
moe_err jbuf_putc(jbuf *b, char c);
moe_err jbuf_puts(jbuf *b, const char *s);
moe_err jbuf_printf(jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jbuf_free(jbuf *b);
/* UTF-8 of code point cp. */
moe_err jbuf_putcp(jbuf *b, uint32_t cp);

/* Formats d as Python's repr(float) into buf (at least 32 bytes). */
void fmt_float(char *buf, double d);
/* Appends str(v) / repr(v) as Python writes them (depth bounds nesting). */
moe_err jv_write_str(jbuf *b, jv v, int depth);
moe_err jv_write_repr(jbuf *b, jv v, int depth);
/* Python's repr of a string. */
moe_err jstr_write_repr(jbuf *b, const char *s, size_t n);

/* JSON (json.c) */
typedef struct jjson_opts {
	int ensure_ascii;
	const jstr *indent; /* NULL: none */
	const jstr *item_sep, *key_sep;
	int sort_keys;
} jjson_opts;
moe_err jv_write_json(jbuf *b, jv v, const jjson_opts *o);

/* Unicode (methods.c) */
uint32_t utf8_next(const char *s, size_t n, size_t *i);
int uc_isspace(uint32_t cp);
int uc_isprintable(uint32_t cp);
/* byte offset of code point index k of s (k <= ncp) */
size_t utf8_offset(const jstr *s, size_t k);

/* ---- syntax tree ---- */

enum jnode_kind {
	/* expressions */
	N_CONST,
	N_NAME,
	N_GETATTR,
	N_GETITEM,
	N_SLICE,
	N_CALL,
	N_FILTER,
	N_TEST,
	N_LIST,
	N_TUPLE,
	N_DICT,
	N_NOT,
	N_NEG,
	N_POS,
	N_AND,
	N_OR,
	N_BINOP,
	N_COMPARE,
	N_CONCAT,
	N_COND,
	/* statements */
	N_DATA,
	N_OUTPUT,
	N_IF,
	N_FOR,
	N_SET,
	N_SETNS,
	N_SETBLOCK,
	N_MACRO,
	N_CALLBLOCK,
	N_FILTERBLOCK,
	N_WITH,
	N_BREAK,
	N_CONTINUE,
};

enum jop {
	OP_ADD,
	OP_SUB,
	OP_MUL,
	OP_DIV,
	OP_FLOORDIV,
	OP_MOD,
	OP_POW,
	OP_EQ,
	OP_NE,
	OP_LT,
	OP_LE,
	OP_GT,
	OP_GE,
	OP_IN,
	OP_NOTIN,
};

/* macro flags (jnode.op of N_MACRO / N_CALLBLOCK) */
enum { MF_CALLER = 1, MF_VARARGS = 2, MF_KWARGS = 4 };

typedef struct jnode jnode;
struct jnode {
	uint8_t k;   /* enum jnode_kind */
	uint8_t op;  /* enum jop, MF_*, negation of N_TEST */
	uint16_t fn; /* filter / test index */
	uint32_t line;
	int32_t sym;      /* N_NAME, N_SETNS, N_MACRO: the symbol */
	const jstr *name; /* attribute, filter, test, macro name */
	jv cv;            /* N_CONST, N_DATA */
	jnode *a, *b, *c;
	jnode **kids; /* arguments, items, body, operands */
	size_t nk;
	jnode **kids2; /* keyword argument values, dict values, else body */
	size_t nk2;
	const jstr **kw; /* keyword argument names (nk2 of them) */
	int32_t *syms;   /* targets, parameters */
	size_t nsyms;
	uint8_t *ops; /* N_COMPARE: nk operators */
};

struct moe_jinja_tmpl {
	jarena arena;
	jnode *root; /* a body: kids */
	const jstr **symnames;
	size_t nsyms;
	int32_t sym_loop, sym_caller, sym_varargs, sym_kwargs;
};

/* lexer.c */
enum jtok_type {
	T_EOF,
	T_DATA,
	T_VAR_BEGIN,
	T_VAR_END,
	T_BLOCK_BEGIN,
	T_BLOCK_END,
	T_NAME,
	T_STRING,
	T_INT,
	T_FLOAT,
	T_OP, /* op: the operator text, 1 or 2 bytes, in opc */
};

typedef struct jtok {
	uint8_t t;
	char opc[3];
	uint32_t line;
	const char *p; /* T_DATA, T_NAME: the text (in the normalised source) */
	size_t n;
	const jstr *str; /* T_STRING (unescaped), T_DATA */
	int64_t i;
	double f;
} jtok;

typedef struct jtoks {
	jtok *v;
	size_t n, cap;
	char *src; /* the normalised source the tokens point into */
} jtoks;

moe_err jlex(jtoks *out, jarena *a, const char *text, size_t len);
void jtoks_free(jtoks *t);

/* ---- the parser (parser.c: expressions, statements.c: statements) ---- */

#define JP_MAX_NEST 300 /* nesting of statements and expressions */

typedef struct jparser {
	jtok *tk;
	size_t n, i;
	moe_jinja_tmpl *t;
	jarena *a;
	unsigned depth;
	unsigned loops; /* enclosing for loops (in this macro) */
	jnode *macros[JP_MAX_NEST];
	size_t nmacros;
	size_t symcap;
} jparser;

/* A growable array of nodes in the template's arena. */
typedef struct jnvec {
	jnode **v;
	size_t n, cap;
} jnvec;

moe_err jp_push(jparser *p, jnvec *v, jnode *x);
jtok *jp_cur(jparser *p);
jtok *jp_peek(jparser *p);
void jp_next(jparser *p);
int jp_name(const jtok *t, const char *name); /* the token is the name */
int jp_op(const jtok *t, const char *op);     /* the token is the operator */
const char *jp_describe(const jtok *t, char *buf, size_t n);
moe_err jp_err(jparser *p, uint32_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
moe_err jp_unsup(uint32_t line, const char *what, const char *name, size_t n);
moe_err jp_unexpected(jparser *p, const char *expected);
moe_err jp_expect_op(jparser *p, const char *op);
moe_err jp_expect_type(jparser *p, int type, const char *what);
moe_err jp_expect_name(jparser *p, const char *name);
jnode *jp_node(jparser *p, int kind, uint32_t line);
moe_err jp_intern(jparser *p, int32_t *out, const char *s, size_t n);
moe_err jp_enter(jparser *p); /* one level deeper (JP_MAX_NEST) */
moe_err jp_expression(jparser *p, jnode **out, int with_condexpr);
moe_err jp_tuple(jparser *p, jnode **out, int simplified, int with_condexpr, int explicit_parens);
moe_err jp_filter(jparser *p, jnode **node, int start_inline);
moe_err jp_primary(jparser *p, jnode **out);
moe_err jp_subparse(jparser *p, jnvec *body, const char *const *end, size_t nend);

/* ---- builtins: filters and tests (filters.c) ---- */

/* Index of filter / test name, or -1 (refused) or -2 (unknown). */
int jfilter_find(const char *name, size_t n);
int jtest_find(const char *name, size_t n);
/* Is name a filter / test of Jinja2 (for the tests 'filter' and 'test'). */
int jfilter_known(const char *name, size_t n);
int jtest_known(const char *name, size_t n);
/* Is name a method of str, list or dict that this renderer refuses. */
int jmethod_refused(const char *name, size_t n);

/* ---- render state (interp.c) ---- */

typedef struct jbind {
	int32_t sym;
	jv v;
} jbind;

typedef struct jscope {
	struct jscope *parent;
	size_t n, cap;
	jbind *b;
	int captured; /* a macro holds it: do not reuse */
} jscope;

typedef struct jrender {
	const moe_jinja_tmpl *t;
	jarena arena;
	const jv *ctx; /* per symbol: the caller's variable or global, or MISSING */
	jscope *scope;
	jbuf *out;
	size_t max_output;
	uint64_t steps, max_steps;
	unsigned depth, max_depth;
	struct tm now;
	int annotated; /* the error detail already names its line */
} jrender;

/* Arguments of a call, evaluated. */
typedef struct jargs {
	jv *pos;
	size_t npos;
	jv *kwv;
	const jstr **kw;
	size_t nkw;
} jargs;

/* Binds args to the parameters names (nparams of them): out[i] gets the
 * value of parameter i or JV_MISSING.  Unknown keywords and surplus
 * positional arguments fail with TypeError's message. */
moe_err jbind_args(jv *out, const char *fname, const char *const *params, size_t nparams,
                   const jargs *args);

moe_err jcall_filter(jrender *r, jv *out, int filter, jv v, const jargs *args);
moe_err jcall_test(jrender *r, int *out, int test, jv v, const jargs *args);
/* Calls the method name of self. */
moe_err jcall_method(jrender *r, jv *out, jv self, const jstr *name, const jargs *args);
/* Is name a method of v's type (a bound method for getattr). */
int jhas_method(jv v, const char *name, size_t n);
/* Is name a method of v's type that the immutable sandbox refuses. */
int junsafe_method(jv v, const char *name, size_t n);

/* seqfilters.c */
moe_err jf_join(jrender *r, jv *out, jv v, const jargs *a);
moe_err jf_map(jrender *r, jv *out, jv v, const jargs *a);
moe_err jf_select(jrender *r, jv *out, jv v, const jargs *a, int reject, int attr);
moe_err jf_sort(jrender *r, jv *out, jv v, const jargs *a);
moe_err jf_dictsort(jrender *r, jv *out, jv v, const jargs *a);
moe_err jf_unique(jrender *r, jv *out, jv v, const jargs *a);
moe_err jf_minmax(jrender *r, jv *out, jv v, const jargs *a, int max);
moe_err jf_reverse(jrender *r, jv *out, jv v);
moe_err jf_batch_slice(jrender *r, jv *out, jv v, const jargs *a, int slice);
moe_err jf_sum(jrender *r, jv *out, jv v, const jargs *a);

/* methods.c, for the filters */
moe_err jstr_case(jrender *r, jv *out, const jstr *s, int how, uint8_t fl); /* 0 lower, 1 upper,
                                                                              2 title, 3 capitalize,
                                                                              4 swapcase */
moe_err jstr_jtitle(jrender *r, jv *out, const jstr *s, uint8_t fl);
int64_t jwordcount(const jstr *s);
moe_err jstr_replace(jrender *r, jv *out, const jstr *s, const jstr *old, const jstr *new,
                     int64_t count, uint8_t fl);
moe_err jsplitlines(jrender *r, jlist *l, const jstr *s, int keepends, uint8_t fl);
moe_err jdict_items(jrender *r, jv *out, const jdict *d, int kind);
moe_err jfmt_percent(jrender *r, jv *out, const jstr *fmt, jv args);
moe_err jr_call_global(jrender *r, jv *out, int fn, const jargs *a);

/* interp.c, for the builtins */
moe_err jr_str(jrender *r, const jstr **out, jv v); /* str(v) */
moe_err jr_repr(jrender *r, const jstr **out, jv v);
moe_err jr_getattr(jrender *r, jv *out, jv obj, const jstr *name);
moe_err jr_getitem(jrender *r, jv *out, jv obj, jv key);
/* The items of an iterable, in order (a generator is used up); str gives
 * its characters, a dict its keys, undefined nothing. */
moe_err jr_iter(jrender *r, const jv **items, size_t *n, jv v);
moe_err jr_call(jrender *r, jv *out, jv fn, const jargs *args);
moe_err jr_undef_fail(jv u); /* the error of using undefined u */
moe_err jr_nomem(jrender *r);
/* s[a:b] in code points */
const jstr *jr_substr(jrender *r, const jstr *s, size_t a, size_t b);
moe_err jr_escape(jrender *r, const jstr **out, const jstr *s); /* markupsafe.escape */
moe_err jr_binop(jrender *r, jv *out, int op, jv a, jv b);
moe_err jr_contains(jrender *r, int *out, jv item, jv seq);
moe_err jr_steps(jrender *r, uint64_t n);

#endif
