/*
 * test_trace.c - routing traces (model/trace.h): `moemesh run --trace` and
 * `moemesh serve --trace` as processes, the file decoded here by its
 * documented layout (not by trace.c's reader) and held to facts from
 * elsewhere: the steps and tokens a prompt and -n make, the ids a forward
 * pass hands its expert backend (a hook of this test's own), the same bytes
 * run twice, cut into chunks or on workers, serve's own counters of routed
 * tokens per expert (/metrics) and of pairs sent to each worker (dispatch),
 * which `bench trace` must reproduce from the trace and the placement; the
 * CSV converter's rows against the binary; corrupt and truncated files
 * refused, naming the fault; a write error stopping the trace, not the run
 * or the server; steps dropped, not waited for, when the writer falls behind.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "proto/proto.h"
#include "test_util.h"
#include "trace_bytes.h"

extern char **environ;

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v != NULL, "%s is not set", name);
	return v;
}

static char g_dir[64];

static void make_dir(void)
{
	snprintf(g_dir, sizeof g_dir, "/tmp/moe_trace_XXXXXX");
	cr_assert(mkdtemp(g_dir) != NULL);
}

static void remove_dir(void)
{
	if (g_dir[0] != '\0')
		sh("rm -rf '%s'", g_dir);
}

static const char *model_path(void)
{
	static char p[1024];
	snprintf(p, sizeof p, "%s/models/kjv-qwen3moe-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	return p;
}

static char *path(const char *name)
{
	static char p[8][256];
	static int i;
	char *r = p[i++ % 8];
	snprintf(r, 256, "%s/%s", g_dir, name);
	return r;
}

static uint8_t *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	cr_assert(f != NULL, "open %s: %s", p, strerror(errno));
	fseek(f, 0, SEEK_END);
	const long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc((size_t)n + 1);
	cr_assert(b != NULL);
	cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	b[n] = 0;
	*len = (size_t)n;
	return b;
}

static void spit(const char *p, const uint8_t *b, size_t n)
{
	FILE *f = fopen(p, "wb");
	cr_assert(f != NULL);
	cr_assert_eq(fwrite(b, 1, n, f), n);
	fclose(f);
}

/* ---- the format as trace.h documents it, decoded here --------------------------------- */

typedef struct raw_step {
	size_t off, size; /* of the record in the file */
	uint64_t step;
	uint32_t n_tok;
	const uint8_t *tok; /* n_tok x {u32 seq, u32 pos} */
	const uint8_t *ids; /* u16 [n_layer][n_tok][k] */
	const uint8_t *wts; /* f32 [n_layer][n_tok][k] or NULL */
} raw_step;

typedef struct raw_trace {
	uint8_t *b;
	size_t len;
	uint32_t flags, n_layer, n_expert, k;
	raw_step s[256];
	size_t n;
	uint64_t end_steps, end_dropped;
} raw_trace;

static uint32_t r_seq(const raw_step *s, uint32_t t)
{
	return rd32(s->tok + 8 * (size_t)t);
}

static uint32_t r_pos(const raw_step *s, uint32_t t)
{
	return rd32(s->tok + 8 * (size_t)t + 4);
}

static uint16_t r_id(const raw_trace *t, const raw_step *s, uint32_t il, uint32_t tok, uint32_t j)
{
	const size_t c = ((size_t)il * s->n_tok + tok) * t->k + j;
	return (uint16_t)(s->ids[2 * c] | s->ids[2 * c + 1] << 8);
}

static float r_w(const raw_trace *t, const raw_step *s, uint32_t il, uint32_t tok, uint32_t j)
{
	const size_t c = ((size_t)il * s->n_tok + tok) * t->k + j;
	const uint32_t u = rd32(s->wts + 4 * c);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Decodes the file by the documented layout, asserting its structure. */
static void raw_load(raw_trace *t, const char *p)
{
	memset(t, 0, sizeof *t);
	t->b = slurp(p, &t->len);
	const uint8_t *b = t->b;
	cr_assert_geq(t->len, 64);
	cr_assert_eq(memcmp(b, "MOETRACE", 8), 0);
	cr_assert_eq(rd32(b + 8), 1, "version");
	t->flags = rd32(b + 12);
	t->n_layer = rd32(b + 16);
	t->n_expert = rd32(b + 20);
	t->k = rd32(b + 24);
	cr_assert_eq(rd32(b + 60), fnv32(b, 60), "header checksum");
	size_t off = 64;
	for (;;) {
		cr_assert_leq(off + 16, t->len, "record header at %zu", off);
		const uint32_t tag = rd32(b + off);
		if (tag == rd32((const uint8_t *)"TEND")) {
			cr_assert_eq(off + 32, t->len, "the end record ends the file");
			cr_assert_eq(rd64(b + off + 24), fnv64(b + off, 24));
			t->end_steps = rd64(b + off + 8);
			t->end_dropped = rd64(b + off + 16);
			return;
		}
		cr_assert_eq(tag, rd32((const uint8_t *)"STEP"), "tag at %zu", off);
		cr_assert_lt(t->n, 256);
		raw_step *s = &t->s[t->n++];
		s->off = off;
		s->n_tok = rd32(b + off + 4);
		s->step = rd64(b + off + 8);
		const size_t cells = (size_t)t->n_layer * s->n_tok * t->k;
		s->size =
		    16 + 8 * (size_t)s->n_tok + 2 * cells + ((t->flags & 1) ? 4 * cells : 0) + 8;
		cr_assert_leq(off + s->size, t->len);
		s->tok = b + off + 16;
		s->ids = s->tok + 8 * (size_t)s->n_tok;
		s->wts = (t->flags & 1) ? s->ids + 2 * cells : NULL;
		cr_assert_eq(rd64(b + off + s->size - 8), fnv64(b + off, s->size - 8),
		             "step record checksum at %zu", off);
		off += s->size;
	}
}

/* Re-seals a step record (or the header, off 0) after the test changed it. */
static void reseal(uint8_t *b, const raw_step *s)
{
	if (s == NULL)
		wr32(b + 60, fnv32(b, 60));
	else
		wr64(b + s->off + s->size - 8, fnv64(b + s->off, s->size - 8));
}

/* ---- running the program ------------------------------------------------------------ */

/* `moemesh run` on the demo model, greedy, with ARGS; stdout and stderr into
 * files of the test's folder named by tag. */
static int run_cmd(const char *tag, const char *prefix, const char *args)
{
	return sh("%s '%s' run -m '%s' --temp 0 --ignore-eos --threads 1 %s >'%s/%s.out' "
	          "2>'%s/%s.err'",
	          prefix, bin(), model_path(), args, g_dir, tag, g_dir, tag);
}

static const char *PROMPT = "1,2,3,4,5"; /* 5 tokens */

TestSuite(trace, .init = make_dir, .fini = remove_dir, .timeout = 240);

Test(trace, run_records_the_steps_the_prompt_and_n_make)
{
	char args[512];
	snprintf(args, sizeof args, "--tokens %s -n 6 --trace '%s'", PROMPT, path("a.trace"));
	cr_assert_eq(run_cmd("a", "", args), 0);
	raw_trace t;
	raw_load(&t, path("a.trace"));

	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model_path()), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(m);
	uint8_t id[MOE_ID_BYTES];
	cr_assert_eq(moe_model_identity(id, moe_model_gguf(m)), MOE_OK);
	cr_assert_eq(memcmp(t.b + 28, id, 32), 0, "the model identity");
	cr_assert_eq(t.n_layer, (uint32_t)hp->n_layer);
	cr_assert_eq(t.n_expert, (uint32_t)hp->n_expert);
	cr_assert_eq(t.k, (uint32_t)hp->n_expert_used);
	cr_assert_eq(t.flags, 1, "weights by default");
	moe_model_destroy(m);

	/* the prompt is one step; each of the 6 tokens but the last is run */
	cr_assert_eq(t.n, 6, "%zu steps", t.n);
	cr_assert_eq(t.end_steps, 6);
	cr_assert_eq(t.end_dropped, 0);
	for (size_t i = 0; i < t.n; i++) {
		const raw_step *s = &t.s[i];
		cr_assert_eq(s->step, i);
		cr_assert_eq(s->n_tok, i == 0 ? 5u : 1u, "step %zu: %u tokens", i, s->n_tok);
		for (uint32_t tok = 0; tok < s->n_tok; tok++) {
			cr_assert_eq(r_seq(s, tok), 0);
			cr_assert_eq(r_pos(s, tok), i == 0 ? tok : 4 + (uint32_t)i);
		}
		for (uint32_t il = 0; il < t.n_layer; il++)
			for (uint32_t tok = 0; tok < s->n_tok; tok++) {
				double sum = 0;
				for (uint32_t j = 0; j < t.k; j++) {
					cr_assert_lt(r_id(&t, s, il, tok, j), t.n_expert);
					for (uint32_t q = 0; q < j; q++)
						cr_assert_neq(r_id(&t, s, il, tok, q),
						              r_id(&t, s, il, tok, j));
					sum += r_w(&t, s, il, tok, j);
				}
				cr_assert(fabs(sum - 1.0) < 1e-5, "weights sum to %g", sum);
			}
	}
	/* the library's reader takes it whole */
	moe_trace_reader *r;
	cr_assert_eq(moe_trace_reader_open(&r, path("a.trace")), MOE_OK);
	size_t n = 0;
	for (;;) {
		moe_trace_step s;
		bool done;
		cr_assert_eq(moe_trace_reader_next(r, &s, &done, NULL, NULL), MOE_OK, "%s",
		             moe_err_detail());
		if (done)
			break;
		n++;
	}
	cr_assert_eq(n, 6);
	moe_trace_reader_destroy(r);
	free(t.b);
}

Test(trace, same_bytes_twice_in_chunks_and_on_workers)
{
	char args[512];
	const char *names[4] = {"b0.trace", "b1.trace", "b2.trace", "b3.trace"};
	const char *extra[4] = {"", "", "--batch 2", "--workers 2"};
	for (int i = 0; i < 4; i++) {
		snprintf(args, sizeof args, "--tokens %s -n 5 %s --trace '%s'", PROMPT, extra[i],
		         path(names[i]));
		char tag[8];
		snprintf(tag, sizeof tag, "b%d", i);
		cr_assert_eq(run_cmd(tag, "", args), 0, "run %s", extra[i]);
	}
	size_t n0, n;
	uint8_t *a = slurp(path(names[0]), &n0);
	for (int i = 1; i < 4; i++) {
		uint8_t *b = slurp(path(names[i]), &n);
		cr_assert(n == n0 && memcmp(a, b, n) == 0,
		          "the trace of `run %s` differs from the first run's", extra[i]);
		free(b);
	}
	free(a);
}

/* ---- what the forward pass hands its backend, seen by this test's own hook ------------ */

typedef struct hook {
	moe_expert_backend inner;
	int32_t ids[64][64 * 8];
	float wts[64][64 * 8];
	int64_t n_tok[64];
} hook;

static moe_err hook_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                          const float *weights, int n_used)
{
	hook *h = ctx;
	if (il < 64 && n_tok * n_used <= 64 * 8) {
		memcpy(h->ids[il], ids, (size_t)(n_tok * n_used) * sizeof *ids);
		memcpy(h->wts[il], weights, (size_t)(n_tok * n_used) * sizeof *weights);
		h->n_tok[il] = n_tok;
	}
	return h->inner.start(h->inner.ctx, il, n_tok, x, ids, weights, n_used);
}

static moe_err hook_finish(void *ctx, moe_fix_t *acc)
{
	hook *h = ctx;
	return h->inner.finish(h->inner.ctx, acc);
}

Test(trace, records_what_the_forward_pass_gives_the_backend)
{
	char args[512];
	snprintf(args, sizeof args, "--tokens %s -n 1 --trace '%s'", PROMPT, path("c.trace"));
	cr_assert_eq(run_cmd("c", "", args), 0);
	raw_trace t;
	raw_load(&t, path("c.trace"));
	cr_assert_eq(t.n, 1);

	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model_path()), MOE_OK);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_threads = 1;
	o.n_ctx = 64;
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK);
	hook *h = calloc(1, sizeof *h);
	h->inner = moe_fwd_experts(f);
	const moe_expert_backend hb = {.ctx = h, .start = hook_start, .finish = hook_finish};
	moe_fwd_set_experts(f, &hb);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	const int32_t tok[5] = {1, 2, 3, 4, 5}, pos[5] = {0, 1, 2, 3, 4};
	const int32_t sl[5] = {slot, slot, slot, slot, slot};
	const moe_batch b = {.n_tok = 5, .tokens = tok, .slot = sl, .pos = pos};
	float *logits = malloc(5 * (size_t)moe_model_hparams(m)->n_vocab * sizeof *logits);
	cr_assert_eq(moe_fwd_step(f, logits, &b), MOE_OK);
	const raw_step *s = &t.s[0];
	for (uint32_t il = 0; il < t.n_layer; il++) {
		cr_assert_eq(h->n_tok[il], 5, "layer %u", il);
		for (uint32_t tk = 0; tk < 5; tk++)
			for (uint32_t j = 0; j < t.k; j++) {
				cr_assert_eq(r_id(&t, s, il, tk, j), h->ids[il][tk * t.k + j],
				             "layer %u token %u slot %u", il, tk, j);
				const float w = r_w(&t, s, il, tk, j),
				            want = h->wts[il][tk * t.k + j];
				cr_assert_eq(memcmp(&w, &want, 4), 0, "weight, layer %u token %u",
				             il, tk);
			}
	}
	free(logits);
	free(h);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
	free(t.b);
}

/* ---- refusals ------------------------------------------------------------------------ */

/* The reader on b[0..n) (written to a file) fails with err and a detail
 * containing what. */
static void refused(const uint8_t *b, size_t n, moe_err err, const char *what)
{
	spit(path("bad.trace"), b, n);
	moe_trace_reader *r = NULL;
	moe_err e = moe_trace_reader_open(&r, path("bad.trace"));
	while (e == MOE_OK) {
		moe_trace_step s;
		bool done;
		e = moe_trace_reader_next(r, &s, &done, NULL, NULL);
		if (e == MOE_OK && done) {
			e = MOE_OK;
			break;
		}
	}
	moe_trace_reader_destroy(r);
	cr_assert_eq(e, err, "wanted %s (%s), got %s: %s", moe_err_name(err), what, moe_err_name(e),
	             moe_err_detail());
	cr_assert(strstr(moe_err_detail(), what) != NULL, "'%s' not in: %s", what,
	          moe_err_detail());
}

Test(trace, corrupt_and_truncated_files_are_refused)
{
	char args[512];
	snprintf(args, sizeof args, "--tokens %s -n 4 --trace '%s'", PROMPT, path("d.trace"));
	cr_assert_eq(run_cmd("d", "", args), 0);
	raw_trace t;
	raw_load(&t, path("d.trace"));
	cr_assert_eq(t.n, 4);
	uint8_t *b = malloc(t.len + 1);
	const raw_step *s0 = &t.s[0], *s1 = &t.s[1], *s2 = &t.s[2];
	const size_t ids1 = (size_t)(s1->ids - t.b), wts1 = (size_t)(s1->wts - t.b);

	/* cut anywhere */
	const size_t cuts[] = {0, 10, 63, 64 + 10, s1->off - 3, t.len - 32, t.len - 5};
	for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++)
		refused(t.b, cuts[i], MOE_ERR_TRUNCATED, "truncated");
	/* and the program says so, with exit status 1 */
	spit(path("cut.trace"), t.b, t.len - 32);
	cr_assert_eq(sh("'%s' trace '%s' 2>'%s'", bin(), path("cut.trace"), path("cut.err")), 1);
	size_t el;
	char *msg = (char *)slurp(path("cut.err"), &el);
	cr_assert(strstr(msg, "truncated") != NULL, "%s", msg);
	free(msg);

	memcpy(b, t.b, t.len);
	memcpy(b, "MOETRACX", 8);
	refused(b, t.len, MOE_ERR_BAD_MAGIC, "not a routing trace");
	memcpy(b, t.b, t.len);
	wr32(b + 8, 2);
	reseal(b, NULL);
	refused(b, t.len, MOE_ERR_BAD_VERSION, "version 2");
	memcpy(b, t.b, t.len);
	wr32(b + 20, 70000); /* n_expert */
	reseal(b, NULL);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "n_expert 70000");
	memcpy(b, t.b, t.len);
	b[ids1 + 3] ^= 0x01; /* a bit of an id, checksum left as it was */
	refused(b, t.len, MOE_ERR_FORMAT, "checksum");
	memcpy(b, t.b, t.len);
	wr32(b + 16, t.n_layer + 1); /* the header's checksum catches it */
	refused(b, t.len, MOE_ERR_FORMAT, "header checksum");
	memcpy(b, t.b, t.len);
	b[ids1] = (uint8_t)t.n_expert; /* an expert past the last, resealed */
	b[ids1 + 1] = (uint8_t)(t.n_expert >> 8);
	reseal(b, s1);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "not < n_expert");
	memcpy(b, t.b, t.len);
	memcpy(b + ids1 + 2, b + ids1, 2); /* slot 1 = slot 0 */
	reseal(b, s1);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "chosen twice");
	memcpy(b, t.b, t.len);
	cr_assert_lt(r_w(&t, s1, 0, 0, 0), 0.99f);
	wr32(b + wts1, 0x3f800000u); /* the first weight 1: the sum passes 1 */
	reseal(b, s1);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "sum");
	memcpy(b, t.b, t.len);
	wr32(b + wts1, 0x7fc00000u); /* NaN */
	reseal(b, s1);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "not in [0, 1]");
	memcpy(b, t.b, t.len);
	wr64(b + s2->off + 8, 1); /* step 2 numbered 1 */
	reseal(b, s2);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "not increasing");
	memcpy(b, t.b, t.len);
	wr32(b + s0->off + 16 + 8 + 4, 7); /* token 1 of the prompt at position 7 */
	reseal(b, s0);
	refused(b, t.len, MOE_ERR_BAD_VALUE, "not consecutive");
	memcpy(b, t.b, t.len);
	wr32(b + s0->off + 4, 1u << 25); /* more tokens than a step may have */
	refused(b, t.len, MOE_ERR_BAD_COUNT, "not in [1,");
	memcpy(b, t.b, t.len);
	wr32(b + s0->off + 4, s0->n_tok + 1000); /* past the file's end */
	refused(b, t.len, MOE_ERR_TRUNCATED, "past the file's end");
	memcpy(b, t.b, t.len);
	wr32(b + s1->off, 0x58585858u); /* an unknown tag */
	refused(b, t.len, MOE_ERR_FORMAT, "neither STEP nor");
	memcpy(b, t.b, t.len);
	wr64(b + t.len - 24, 9); /* the end record counts 9 steps */
	wr64(b + t.len - 8, fnv64(b + t.len - 32, 24));
	refused(b, t.len, MOE_ERR_BAD_COUNT, "end record says 9 steps");
	memcpy(b, t.b, t.len);
	b[t.len] = 0;
	refused(b, t.len + 1, MOE_ERR_FORMAT, "after the end record");
	free(b);
	free(t.b);
}

/* ---- the CSV converter ------------------------------------------------------------- */

static void csv_matches(const raw_trace *t, const char *csv_path)
{
	FILE *f = fopen(csv_path, "r");
	cr_assert(f != NULL);
	char line[256];
	cr_assert(fgets(line, sizeof line, f) != NULL);
	cr_assert_str_eq(line, "step,seq,pos,layer,slot,expert,weight\n");
	size_t rows = 0;
	for (size_t i = 0; i < t->n; i++) {
		const raw_step *s = &t->s[i];
		for (uint32_t tk = 0; tk < s->n_tok; tk++)
			for (uint32_t il = 0; il < t->n_layer; il++)
				for (uint32_t j = 0; j < t->k; j++) {
					cr_assert(fgets(line, sizeof line, f) != NULL,
					          "row %zu missing", rows);
					unsigned long long st;
					unsigned sq, ps, ly, sl, ex;
					int used = 0;
					cr_assert_eq(sscanf(line, "%llu,%u,%u,%u,%u,%u,%n", &st,
					                    &sq, &ps, &ly, &sl, &ex, &used),
					             6, "row %zu: %s", rows, line);
					cr_assert(st == s->step && sq == r_seq(s, tk) &&
					              ps == r_pos(s, tk) && ly == il && sl == j &&
					              ex == r_id(t, s, il, tk, j),
					          "row %zu: %s", rows, line);
					const char *wf = line + used;
					if (s->wts == NULL) {
						cr_assert_str_eq(wf, "\n", "row %zu: a weight",
						                 rows);
					} else {
						const float w = strtof(wf, NULL),
						            want = r_w(t, s, il, tk, j);
						cr_assert_eq(memcmp(&w, &want, 4), 0,
						             "row %zu: weight %s is not %.9g", rows,
						             wf, (double)want);
					}
					rows++;
				}
	}
	cr_assert(fgets(line, sizeof line, f) == NULL, "rows after the last: %s", line);
	fclose(f);
}

Test(trace, csv_rows_match_the_binary)
{
	char args[512];
	snprintf(args, sizeof args, "--tokens %s -n 4 --trace '%s'", PROMPT, path("e.trace"));
	cr_assert_eq(run_cmd("e", "", args), 0);
	snprintf(args, sizeof args, "--tokens %s -n 4 --trace '%s' --trace-no-weights", PROMPT,
	         path("f.trace"));
	cr_assert_eq(run_cmd("f", "", args), 0);
	raw_trace t, u;
	raw_load(&t, path("e.trace"));
	raw_load(&u, path("f.trace"));
	cr_assert_eq(u.flags, 0);
	size_t cells = 0;
	for (size_t i = 0; i < t.n; i++)
		cells += (size_t)t.n_layer * t.s[i].n_tok * t.k;
	cr_assert_eq(u.len, t.len - 4 * cells, "without weights: 4 bytes less per cell");
	for (size_t i = 0; i < t.n; i++)
		cr_assert_eq(
		    memcmp(t.s[i].ids, u.s[i].ids, 2 * (size_t)t.n_layer * t.s[i].n_tok * t.k), 0,
		    "the same ids with and without weights");
	cr_assert_eq(sh("'%s' trace '%s' --csv >'%s'", bin(), path("e.trace"), path("e.csv")), 0);
	cr_assert_eq(sh("'%s' trace '%s' --csv >'%s'", bin(), path("f.trace"), path("f.csv")), 0);
	csv_matches(&t, path("e.csv"));
	csv_matches(&u, path("f.csv"));
	free(t.b);
	free(u.b);
}

/* ---- a write error ------------------------------------------------------------------- */

/* The file size limit (1 KiB, SIGXFSZ ignored) fails the trace's first write
 * after its header: the prompt's record is larger. */
#define SMALL_FILES "trap '' XFSZ; ulimit -f 1;"

Test(trace, a_write_error_stops_the_trace_not_the_run)
{
	const char *prompt = "1,2,3,4,5,6,7,8,9,10,11,12";
	char args[512];
	snprintf(args, sizeof args, "--tokens %s -n 6", prompt);
	cr_assert_eq(run_cmd("g0", "", args), 0);
	snprintf(args, sizeof args, "--tokens %s -n 6 --trace '%s'", prompt, path("g.trace"));
	cr_assert_eq(run_cmd("g1", SMALL_FILES, args), 1, "the run says the trace failed");
	size_t n0, n1, ne;
	uint8_t *a = slurp(path("g0.out"), &n0), *b = slurp(path("g1.out"), &n1);
	char *err = (char *)slurp(path("g1.err"), &ne);
	cr_assert(n0 == n1 && memcmp(a, b, n0) == 0, "the text differs: '%s' / '%s'", a, b);
	cr_assert(strstr(err, "File too large") != NULL && strstr(err, "tracing stopped") != NULL,
	          "%s", err);
	cr_assert(strstr(err, "decode: 6 tokens") != NULL, "%s", err);
	free(a);
	free(b);
	free(err);
}

/* ---- serve ------------------------------------------------------------------------- */

typedef struct server {
	pid_t pid;
	FILE *err;
	int port;
} server;

static void serve_start(server *sv, const char *prefix, const char *const *extra)
{
	char script[256];
	snprintf(script, sizeof script, "%s exec \"$0\" \"$@\"", prefix);
	const char *argv[32] = {"/bin/sh",    "-c",     script, bin(),       "serve", "-m",
	                        model_path(), "--port", "0",    "--threads", "1"};
	int n = 11;
	for (int i = 0; extra[i] != NULL; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_addclose(&fa, fds[0]);
	cr_assert_eq(posix_spawn(&sv->pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	sv->err = fdopen(fds[0], "r");
	char line[1024];
	bool ready = false;
	sv->port = 0;
	while (!ready && fgets(line, sizeof line, sv->err) != NULL) {
		fputs(line, stderr);
		const char *p = strstr(line, "listening on http://127.0.0.1:");
		if (p != NULL)
			sv->port = atoi(p + strlen("listening on http://127.0.0.1:"));
		ready = strstr(line, "moemesh serve: ready") != NULL;
	}
	cr_assert(ready && sv->port > 0, "the server did not start");
}

/* SIGTERM; returns the rest of its log; asserts exit status 0. */
static char *serve_stop(server *sv)
{
	kill(sv->pid, SIGTERM);
	size_t cap = 1 << 16, len = 0;
	char *log = calloc(cap, 1);
	char line[1024];
	while (fgets(line, sizeof line, sv->err) != NULL) {
		fputs(line, stderr);
		const size_t l = strlen(line);
		if (len + l + 1 < cap) {
			memcpy(log + len, line, l + 1);
			len += l;
		}
	}
	fclose(sv->err);
	int st = 0;
	waitpid(sv->pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the server exited with %#x", st);
	return log;
}

/* Three completions at once, answers into r0..r2.json; asserts each ended
 * by length; ran[i] = the tokens its sequence ran (its prompt, and every
 * generated token but the last), sorted. */
static void three_requests(const server *sv, uint32_t ran[3])
{
	/* each long enough that its prompt's record passes 1 KiB (SMALL_FILES) */
	static const char *const prompts[3] = {
	    "In the beginning God created the heaven and the earth. And the earth was",
	    "And the LORD spake unto Moses in the wilderness of Sinai, saying,",
	    "Blessed are the poor in spirit: for theirs is the kingdom of heaven. Blessed"};
	char cmd[4096];
	int n = snprintf(cmd, sizeof cmd, "(");
	for (int i = 0; i < 3; i++)
		n +=
		    snprintf(cmd + n, sizeof cmd - (size_t)n,
		             "curl -sf -m 120 -o '%s/r%d.json' -H 'Content-Type: application/json' "
		             "-d '{\"prompt\": \"%s\", \"max_tokens\": 7, \"temperature\": 0}' "
		             "http://127.0.0.1:%d/v1/completions & p%d=$!; ",
		             g_dir, i, prompts[i], sv->port, i);
	snprintf(cmd + n, sizeof cmd - (size_t)n, "wait $p0 && wait $p1 && wait $p2)");
	cr_assert_eq(sh("%s", cmd), 0);
	for (int i = 0; i < 3; i++) {
		char name[16];
		snprintf(name, sizeof name, "r%d.json", i);
		size_t len;
		char *body = (char *)slurp(path(name), &len);
		cJSON *j = cJSON_Parse(body);
		cr_assert(j != NULL, "%s", body);
		const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
		cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(ch, "finish_reason")),
		                 "length", "%s", body);
		const cJSON *u = cJSON_GetObjectItem(j, "usage");
		ran[i] =
		    (uint32_t)(cJSON_GetNumberValue(cJSON_GetObjectItem(u, "prompt_tokens")) +
		               cJSON_GetNumberValue(cJSON_GetObjectItem(u, "completion_tokens")) -
		               1);
		for (int k = i; k > 0 && ran[k] < ran[k - 1]; k--) {
			const uint32_t x = ran[k];
			ran[k] = ran[k - 1];
			ran[k - 1] = x;
		}
		cJSON_Delete(j);
		free(body);
	}
}

Test(trace, serve_trace_agrees_with_its_counters_and_dispatch)
{
	server sv;
	serve_start(&sv, "",
	            (const char *const[]){"--workers", "2", "--placement", "round-robin",
	                                  "--parallel", "2", "--no-prefix-cache", "--trace",
	                                  path("s.trace"), NULL});
	uint32_t ran[3];
	three_requests(&sv, ran);
	cr_assert_eq(
	    sh("curl -sf -m 60 -o '%s' http://127.0.0.1:%d/metrics", path("metrics.txt"), sv.port),
	    0);
	free(serve_stop(&sv));

	raw_trace t;
	raw_load(&t, path("s.trace"));
	cr_assert_eq(t.end_dropped, 0);
	/* the engine's counting hook: routed tokens per (layer, expert) */
	const size_t ne = t.n_expert, nl = t.n_layer;
	uint64_t *cnt = calloc(nl * ne, sizeof *cnt);
	uint32_t seqs_seen = 0;
	uint32_t next_pos[16] = {0};
	for (size_t i = 0; i < t.n; i++) {
		const raw_step *s = &t.s[i];
		for (uint32_t tk = 0; tk < s->n_tok; tk++) {
			const uint32_t q = r_seq(s, tk);
			cr_assert_lt(q, 3u, "sequence ids are the 3 requests' (0, 1, 2)");
			seqs_seen |= 1u << q;
			cr_assert_eq(r_pos(s, tk), next_pos[q], "sequence %u: positions in order",
			             q);
			next_pos[q]++;
			for (uint32_t il = 0; il < nl; il++)
				for (uint32_t j = 0; j < t.k; j++)
					cnt[il * ne + r_id(&t, s, il, tk, j)]++;
		}
	}
	cr_assert_eq(seqs_seen, 7u);
	/* each request's tokens, as its usage counts them */
	for (int k = 0; k < 3; k++)
		for (int q = 2; q > 0; q--)
			if (next_pos[q] < next_pos[q - 1]) {
				const uint32_t x = next_pos[q];
				next_pos[q] = next_pos[q - 1];
				next_pos[q - 1] = x;
			}
	for (int q = 0; q < 3; q++)
		cr_assert_eq(next_pos[q], ran[q],
		             "a sequence ran %u tokens, a request's usage says %u", next_pos[q],
		             ran[q]);
	size_t ml;
	char *met = (char *)slurp(path("metrics.txt"), &ml);
	size_t n_met = 0;
	uint64_t routed[8];
	int n_routed = 0;
	for (char *line = strtok(met, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		unsigned il, e;
		unsigned long long v;
		if (sscanf(line, "moemesh_expert_tokens_total{layer=\"%u\",expert=\"%u\"} %llu",
		           &il, &e, &v) == 3) {
			cr_assert(il < nl && e < ne);
			cr_assert_eq(cnt[il * ne + e], v,
			             "layer %u expert %u: trace %llu, /metrics %llu", il, e,
			             (unsigned long long)cnt[il * ne + e], v);
			cnt[il * ne + e] = 0;
			n_met++;
		}
		const char *p = strstr(line, "moemesh_worker_routed_tokens_total{worker=");
		if (p == line && n_routed < 8)
			routed[n_routed++] = strtoull(strrchr(line, ' ') + 1, NULL, 10);
	}
	for (size_t c = 0; c < nl * ne; c++)
		cr_assert_eq(cnt[c], 0, "layer %zu expert %zu: in the trace, not in /metrics",
		             c / ne, c % ne);
	cr_assert_gt(n_met, 0);
	cr_assert_eq(n_routed, 2, "two workers in /metrics");

	/* bench trace, on the placement serve started with, gives dispatch's pairs */
	cr_assert_eq(sh("'%s' bench trace -t '%s' -m '%s' --workers 2 --placement round-robin "
	                "-o '%s' >'%s'",
	                bin(), path("s.trace"), model_path(), path("bt"), path("bt.out")),
	             0);
	size_t bl;
	char *out = (char *)slurp(path("bt.out"), &bl);
	int w = 0;
	for (char *line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
		char name[64];
		unsigned long long pairs;
		if (sscanf(line, "worker %63s pairs %llu", name, &pairs) == 2) {
			cr_assert_lt(w, 2);
			cr_assert_eq(pairs, routed[w],
			             "worker %d: bench trace %llu pairs, dispatch %llu", w, pairs,
			             (unsigned long long)routed[w]);
			w++;
		}
	}
	cr_assert_eq(w, 2, "%s", out);
	struct stat st;
	cr_assert_eq(stat(path("bt.csv"), &st), 0, "the per-step CSV");
	free(out);
	free(met);
	free(cnt);
	free(t.b);
}

Test(trace, serve_goes_on_after_a_write_error)
{
	server sv;
	serve_start(&sv, SMALL_FILES,
	            (const char *const[]){"--parallel", "2", "--trace", path("w.trace"), NULL});
	uint32_t ran[3];
	three_requests(&sv, ran); /* every request answered, by length */
	three_requests(&sv, ran);
	char *log = serve_stop(&sv);
	cr_assert(strstr(log, "File too large") != NULL && strstr(log, "tracing stopped") != NULL,
	          "%s", log);
	free(log);
}

/* ---- a writer that falls behind -------------------------------------------------------- */

static moe_err null_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                          const float *weights, int n_used)
{
	(void)ctx, (void)il, (void)n_tok, (void)x, (void)ids, (void)weights, (void)n_used;
	return MOE_OK;
}

static moe_err null_finish(void *ctx, moe_fix_t *acc)
{
	(void)ctx, (void)acc;
	return MOE_OK;
}

typedef struct drain {
	int fd;
	uint8_t *b;
	size_t len, cap;
} drain;

static void *drain_main(void *arg)
{
	drain *d = arg;
	for (;;) {
		if (d->len + 65536 > d->cap) {
			d->cap = d->cap ? 2 * d->cap : 1 << 24;
			d->b = realloc(d->b, d->cap);
			if (d->b == NULL)
				return NULL;
		}
		const ssize_t n = read(d->fd, d->b + d->len, 65536);
		if (n > 0)
			d->len += (size_t)n;
		else if (n == 0 || errno != EINTR)
			return NULL;
	}
}

/* The file is a FIFO nobody reads while 400 steps of 4096 tokens (90 MiB of
 * records) are recorded: the writer's thread blocks on the full pipe, the
 * steps go on (this test would hang if they waited), those past what the
 * writer keeps are dropped and counted, and once the FIFO is read the file
 * is whole: the records kept, numbered with the gaps where steps were
 * dropped, each with the ids it was given. */
Test(trace, steps_are_dropped_not_waited_for_when_the_writer_is_behind)
{
	const char *fifo = path("fifo");
	cr_assert_eq(mkfifo(fifo, 0600), 0);
	drain d = {.fd = open(fifo, O_RDONLY | O_NONBLOCK)};
	cr_assert_geq(d.fd, 0);
	const moe_trace_info info = {.n_layer = 6, .n_expert = 16, .k = 4};
	moe_trace_writer *w;
	cr_assert_eq(moe_trace_writer_create(&w, fifo, &info), MOE_OK, "%s", moe_err_detail());
	const moe_expert_backend inner = {.start = null_start, .finish = null_finish};
	const moe_expert_backend be = moe_trace_writer_backend(w, &inner);
	enum { NT = 4096, STEPS = 400 };
	int32_t *slot = calloc(NT, sizeof *slot), *pos = malloc(NT * sizeof *pos);
	int32_t *ids = malloc((size_t)NT * 4 * sizeof *ids);
	for (int t = 0; t < NT; t++)
		pos[t] = t;
	for (int st = 0; st < STEPS; st++) {
		const moe_batch b = {.n_tok = NT, .slot = slot, .pos = pos};
		moe_trace_writer_step_begin(w, &b, NULL, 1);
		for (int il = 0; il < 6; il++) {
			for (int i = 0; i < NT * 4; i++)
				ids[i] = (st + il + i) % 16; /* 4 consecutive: distinct */
			cr_assert_eq(be.start(be.ctx, il, NT, NULL, ids, NULL, 4), MOE_OK);
			cr_assert_eq(be.finish(be.ctx, NULL), MOE_OK);
		}
		moe_trace_writer_step_end(w, true);
		for (int t = 0; t < NT; t++)
			pos[t] += NT;
	}
	uint64_t rec, drop;
	bool failed;
	moe_trace_writer_counts(w, &rec, &drop, &failed);
	cr_assert(!failed);
	cr_assert_eq(rec + drop, STEPS);
	cr_assert_gt(drop, 0, "the writer kept all %d steps (%llu) while nothing was read", STEPS,
	             (unsigned long long)rec);
	/* now read the FIFO (blocking) while the writer finishes */
	cr_assert_eq(fcntl(d.fd, F_SETFL, 0), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, drain_main, &d), 0);
	cr_assert_eq(moe_trace_writer_close(w), MOE_OK, "%s", moe_err_detail());
	moe_trace_writer_destroy(w);
	pthread_join(th, NULL);
	close(d.fd);
	spit(path("behind.trace"), d.b, d.len);
	moe_trace_reader *r;
	cr_assert_eq(moe_trace_reader_open(&r, path("behind.trace")), MOE_OK, "%s",
	             moe_err_detail());
	uint64_t n = 0, last = 0, n_steps = 0, dropped = 0;
	bool gap = false;
	for (;;) {
		moe_trace_step s;
		bool done;
		cr_assert_eq(moe_trace_reader_next(r, &s, &done, &n_steps, &dropped), MOE_OK, "%s",
		             moe_err_detail());
		if (done)
			break;
		gap = gap || (n > 0 && s.step != last + 1) || (n == 0 && s.step != 0);
		cr_assert_eq(s.n_tok, NT);
		cr_assert_eq(s.pos[0], (uint32_t)s.step * NT, "step %llu's tokens",
		             (unsigned long long)s.step);
		for (int il = 0; il < 6; il++)
			cr_assert_eq(s.ids[(size_t)il * NT * 4 + 5],
			             (s.step + (uint64_t)il + 5) % 16);
		last = s.step;
		n++;
	}
	moe_trace_reader_destroy(r);
	cr_assert_eq(n, rec);
	cr_assert_eq(dropped, drop);
	cr_assert_eq(n_steps, STEPS);
	gap = gap || n_steps != last + 1; /* steps dropped after the last kept */
	cr_assert(gap, "the dropped steps leave gaps in the numbers");
	free(d.b);
	free(slot);
	free(pos);
	free(ids);
}
