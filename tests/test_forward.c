/* test_forward.c - the forward pass against llama.cpp's golden logits for
 * every fixture model (sequences A and B in one step and one token per step:
 * logits, KL, llama.cpp's argmax at every position; greedy generation G),
 * plus batching of several sequences, chunked prefill, slot reuse, a split
 * expert backend (bit-identical), F16 KV cache, and the load-time checks of
 * hyper-parameters and tensor shapes.  Every tolerance, and every position
 * where an argmax may differ, comes from tests/fixtures/tolerances.json
 * (section "moemesh", which says why each is what it is). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/forward.h"
#include "model/fwd_internal.h"
#include "model/sample.h"

#define N_VOCAB 512

static char *fixture(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");
	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	static char buf[4][1024];
	static int k;
	char *p = buf[k++ % 4];
	snprintf(p, 1024, "%s/%s", dir, name);
	return p;
}

static void *read_file(const char *path, size_t *size)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	b[n] = 0;
	fclose(f);
	*size = (size_t)n;
	return b;
}

/* Integer array item `key` of JSON object o into a new array. */
static int32_t *json_ints(const cJSON *o, const char *key, int *n)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
	cr_assert(cJSON_IsArray(a), "json: %s is not an array", key);
	*n = cJSON_GetArraySize(a);
	int32_t *v = malloc(sizeof(int32_t) * (size_t)*n);
	for (int i = 0; i < *n; i++)
		v[i] = (int32_t)cJSON_GetArrayItem(a, i)->valueint;
	return v;
}

/* ---- tolerances (fixtures/tolerances.json, section "moemesh") ---------------------- */

static cJSON *tolerances(void)
{
	static cJSON *root;
	if (root == NULL) {
		size_t n;
		char *txt = read_file(fixture("tolerances.json"), &n);
		root = cJSON_Parse(txt);
		free(txt);
		cr_assert_not_null(root, "tolerances.json does not parse");
	}
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "moemesh");
	cr_assert(cJSON_IsObject(m), "tolerances.json has no \"moemesh\" section");
	return (cJSON *)m;
}

/* The number moemesh.<section>.<key>. */
static double tol(const char *section, const char *key)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(tolerances(), section);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
	cr_assert(cJSON_IsNumber(v), "tolerances.json: moemesh.%s.%s is not a number", section,
	          key);
	return v->valuedouble;
}

/* Whether position pos of sequence seq of model is a listed argmax exception. */
static bool argmax_exception(const char *model, const char *seq, int pos)
{
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(tolerances(), "quantized");
	const cJSON *ex = cJSON_GetObjectItemCaseSensitive(q, "argmax_exceptions");
	cr_assert(cJSON_IsObject(ex), "tolerances.json: moemesh.quantized.argmax_exceptions");
	const cJSON *l =
	    cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ex, model), seq);
	const cJSON *p;
	cJSON_ArrayForEach(p, l)
	{
		if (cJSON_IsNumber(p) && p->valueint == pos)
			return true;
	}
	return false;
}

typedef struct golden {
	cJSON *root;
	int32_t *tok[2]; /* A, B */
	int n_tok[2];
	int32_t *prompt, *gen;
	int n_prompt, n_gen;
} golden;

static void golden_load(golden *g, const char *model)
{
	char name[256];
	snprintf(name, sizeof name, "%s.json", model);
	size_t n;
	char *txt = read_file(fixture(name), &n);
	g->root = cJSON_Parse(txt);
	free(txt);
	cr_assert_not_null(g->root);
	const cJSON *seqs = cJSON_GetObjectItemCaseSensitive(g->root, "sequences");
	for (int s = 0; s < 2; s++)
		g->tok[s] = json_ints(cJSON_GetArrayItem(seqs, s), "tokens", &g->n_tok[s]);
	const cJSON *gen =
	    cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(g->root, "generations"), 0);
	g->prompt = json_ints(gen, "prompt_tokens", &g->n_prompt);
	g->gen = json_ints(gen, "generated", &g->n_gen);
}

static void golden_free(golden *g)
{
	for (int s = 0; s < 2; s++)
		free(g->tok[s]);
	free(g->prompt);
	free(g->gen);
	cJSON_Delete(g->root);
}

static float *golden_logits(const char *model, const char *suffix, int n_rows)
{
	char name[256];
	snprintf(name, sizeof name, "%s.%s.f32", model, suffix);
	size_t n;
	float *v = read_file(fixture(name), &n);
	cr_assert_eq(n, (size_t)n_rows * N_VOCAB * sizeof(float), "%s: size %zu", name, n);
	return v;
}

static moe_fwd *make_fwd(const moe_model *m, moe_type kv, int n_slots, int max_batch, int nth)
{
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.kv_type = kv;
	o.n_slots = n_slots;
	o.n_ctx = 128;
	o.max_batch = max_batch;
	o.n_threads = nth;
	moe_fwd *f = NULL;
	moe_err err = moe_fwd_create(&f, m, &o);
	cr_assert_eq(err, MOE_OK, "fwd_create: %s %s", moe_err_name(err), moe_err_detail());
	return f;
}

/* Logits of tokens[0..n) in a fresh sequence of slot, one step or one token
 * per step.  out: [n][N_VOCAB]. */
static void run_seq(moe_fwd *f, int slot, float *out, const int32_t *tokens, int n, bool one)
{
	cr_assert_eq(moe_fwd_seq_reset(f, slot), MOE_OK);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)n),
	        *sl = malloc(sizeof(int32_t) * (size_t)n);
	for (int i = 0; i < n; i++) {
		pos[i] = i;
		sl[i] = slot;
	}
	const int step = one ? 1 : n;
	for (int i = 0; i < n; i += step) {
		moe_batch b = {.n_tok = step, .tokens = tokens + i, .slot = sl + i, .pos = pos + i};
		moe_err err = moe_fwd_step(f, out + (size_t)i * N_VOCAB, &b);
		cr_assert_eq(err, MOE_OK, "step: %s %s", moe_err_name(err), moe_err_detail());
	}
	free(pos);
	free(sl);
}

typedef struct cmp {
	double max_abs, mean_kl, agree;
} cmp;

/* max |a-b|, mean KL(softmax(a) || softmax(b)), argmax agreement. */
static cmp compare(const float *a, const float *b, int n_rows)
{
	cmp c = {0, 0, 0};
	for (int r = 0; r < n_rows; r++) {
		const float *x = a + (size_t)r * N_VOCAB, *y = b + (size_t)r * N_VOCAB;
		double mx = -INFINITY, my = -INFINITY;
		for (int i = 0; i < N_VOCAB; i++) {
			c.max_abs = fmax(c.max_abs, fabs((double)x[i] - y[i]));
			mx = fmax(mx, x[i]);
			my = fmax(my, y[i]);
		}
		double sx = 0, sy = 0;
		for (int i = 0; i < N_VOCAB; i++) {
			sx += exp(x[i] - mx);
			sy += exp(y[i] - my);
		}
		const double lx = mx + log(sx), ly = my + log(sy);
		double kl = 0;
		for (int i = 0; i < N_VOCAB; i++) {
			const double px = x[i] - lx, py = y[i] - ly;
			kl += exp(px) * (px - py);
		}
		c.mean_kl += kl / n_rows;
		c.agree += (moe_argmax(x, N_VOCAB) == moe_argmax(y, N_VOCAB)) / (double)n_rows;
	}
	return c;
}

/* llama.cpp's argmax at every row, except at the positions tolerances.json
 * lists for this model and sequence (with the reason).  Returns the number of
 * rows whose argmax differs. */
static int check_argmax(const char *model, const char *seq, const char *mode, const float *gold,
                        const float *ours, int n_rows)
{
	int differ = 0;
	for (int r = 0; r < n_rows; r++) {
		const float *g = gold + (size_t)r * N_VOCAB, *o = ours + (size_t)r * N_VOCAB;
		const int32_t ag = moe_argmax(g, N_VOCAB), ao = moe_argmax(o, N_VOCAB);
		if (ag == ao)
			continue;
		differ++;
		const bool listed = argmax_exception(model, seq, r);
		cr_log_info("%s %s %s: position %d: argmax %d, llama.cpp's %d (%.3g above it "
		            "there)%s",
		            model, seq, mode, r, ao, ag, g[ag] - g[ao],
		            listed ? ", a listed exception" : "");
		cr_expect(listed,
		          "%s %s %s: position %d: argmax %d, llama.cpp's %d, and tolerances.json "
		          "lists no exception there",
		          model, seq, mode, r, ao, ag);
	}
	return differ;
}

/* Every golden check (A and B, batch and one by one, generation G) on one model. */
static void check_model(const char *model, bool f32)
{
	char path[256];
	snprintf(path, sizeof path, "%s.gguf", model);
	moe_model *m = NULL;
	moe_err err = moe_model_open(&m, fixture(path));
	cr_assert_eq(err, MOE_OK, "%s: %s %s", model, moe_err_name(err), moe_err_detail());
	cr_assert_eq(moe_model_hparams(m)->n_vocab, N_VOCAB);
	golden g;
	golden_load(&g, model);
	moe_fwd *f = make_fwd(m, MOE_TYPE_F32, 1, 256, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);

	static const char *names[2] = {"A", "B"};
	for (int s = 0; s < 2; s++) {
		const int n = g.n_tok[s];
		float *batch = malloc(sizeof(float) * (size_t)n * N_VOCAB);
		float *seq = malloc(sizeof(float) * (size_t)n * N_VOCAB);
		char suf[32];
		run_seq(f, slot, batch, g.tok[s], n, false);
		run_seq(f, slot, seq, g.tok[s], n, true);
		snprintf(suf, sizeof suf, "%s.batch", names[s]);
		float *gb = golden_logits(model, suf, n);
		snprintf(suf, sizeof suf, "%s.seq", names[s]);
		float *gs = golden_logits(model, suf, n);
		const cmp cb = compare(gb, batch, n), cs = compare(gs, seq, n);
		const cmp self = compare(batch, seq, n);
		cr_log_info("%s %s: batch max %.3g KL %.3g agree %.1f%%; one-by-one max %.3g KL "
		            "%.3g agree %.1f%%; batch vs one-by-one max %.3g",
		            model, names[s], cb.max_abs, cb.mean_kl, 100 * cb.agree, cs.max_abs,
		            cs.mean_kl, 100 * cs.agree, self.max_abs);
		if (f32) {
			const double max_abs = tol("f32", "max_abs");
			cr_expect(cb.max_abs <= max_abs, "%s %s batch: max |dlogit| %g", model,
			          names[s], cb.max_abs);
			cr_expect(cs.max_abs <= max_abs, "%s %s one-by-one: max |dlogit| %g", model,
			          names[s], cs.max_abs);
			cr_expect(self.max_abs <= max_abs, "%s %s: batch vs one-by-one %g", model,
			          names[s], self.max_abs);
		} else {
			const double max_kl = tol("quantized", "max_mean_kl");
			cr_expect(cb.mean_kl <= max_kl, "%s %s batch: KL %g", model, names[s],
			          cb.mean_kl);
			cr_expect(cs.mean_kl <= max_kl, "%s %s one-by-one: KL %g", model, names[s],
			          cs.mean_kl);
		}
		check_argmax(model, names[s], "batch", gb, batch, n);
		check_argmax(model, names[s], "one-by-one", gs, seq, n);
		free(batch), free(seq), free(gb), free(gs);
	}

	/* greedy generation G: prompt in one step, then one token per step */
	float *gl = golden_logits(model, "G.gen", g.n_gen);
	float *row = malloc(sizeof(float) * N_VOCAB);
	float *all = malloc(sizeof(float) * (size_t)g.n_prompt * N_VOCAB);
	run_seq(f, slot, all, g.prompt, g.n_prompt, false);
	memcpy(row, all + (size_t)(g.n_prompt - 1) * N_VOCAB, sizeof(float) * N_VOCAB);
	int same = 0;
	double gen_max = 0, gen_kl = 0, gen_agree = 0;
	bool diverged = false;
	for (int i = 0; i < g.n_gen; i++) {
		const int32_t t = moe_argmax(row, N_VOCAB);
		cmp c = compare(gl + (size_t)i * N_VOCAB, row, 1);
		gen_kl += c.mean_kl / g.n_gen;
		gen_agree += c.agree / g.n_gen;
		if (!diverged)
			gen_max = fmax(gen_max, c.max_abs);
		if (t != g.gen[i])
			diverged = true;
		same += !diverged;
		/* feed the golden token so the rest stays comparable */
		const int32_t p = g.n_prompt + i;
		moe_batch b = {.n_tok = 1, .tokens = &g.gen[i], .slot = &slot, .pos = &p};
		cr_assert_eq(moe_fwd_step(f, row, &b), MOE_OK);
	}
	cr_log_info("%s G: %d of %d greedy tokens as llama.cpp (max |dlogit| before any "
	            "divergence %.3g; all %d rows: mean KL %.3g, top-1 %.1f%%)",
	            model, same, g.n_gen, gen_max, g.n_gen, gen_kl, 100 * gen_agree);
	const cJSON *gx = cJSON_GetObjectItemCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(tolerances(), "greedy"), "exceptions");
	const cJSON *mx = cJSON_GetObjectItemCaseSensitive(gx, model);
	if (cJSON_IsNumber(mx)) { /* a listed flip: its own count, and the rows held */
		cr_expect_geq(same, mx->valueint, "%s: greedy generation matched %d of %d", model,
		              same, g.n_gen);
		cr_expect(gen_kl <= tol("quantized", "max_mean_kl"), "%s G: KL %g", model, gen_kl);
		cr_expect(gen_agree >= tol("greedy", "exceptions_min_top1"), "%s G: top-1 %g",
		          model, gen_agree);
	} else {
		cr_expect_geq(same, (int)tol("greedy", "min_same"),
		              "%s: greedy generation matched %d of %d", model, same, g.n_gen);
	}
	if (f32)
		cr_expect(gen_max <= tol("f32", "max_abs"), "%s: generation logits max |d| %g",
		          model, gen_max);
	free(gl), free(row), free(all);
	golden_free(&g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

Test(forward, qwen3moe_tiny_f32)
{
	check_model("qwen3moe-tiny-F32", true);
}
Test(forward, qwen3moe_tiny_q8_0)
{
	check_model("qwen3moe-tiny-Q8_0", false);
}
Test(forward, qwen3moe_tiny_q4_0)
{
	check_model("qwen3moe-tiny-Q4_0", false);
}
Test(forward, qwen3moe_tiny_q4_k_m)
{
	check_model("qwen3moe-tiny-Q4_K_M", false);
}
Test(forward, qwen3moe_kq_q4_k_m)
{
	check_model("qwen3moe-kq-Q4_K_M", false);
}
Test(forward, qwen3moe_kq_iq4_xs)
{
	check_model("qwen3moe-kq-IQ4_XS", false);
}
Test(forward, qwen3moe_kq_iq4_nl)
{
	check_model("qwen3moe-kq-IQ4_NL", false);
}
Test(forward, qwen3moe_kq_mxfp4_moe)
{
	check_model("qwen3moe-kq-MXFP4_MOE", false);
}
Test(forward, qwen3moe_kq_iq3_xxs)
{
	check_model("qwen3moe-kq-IQ3_XXS", false);
}
Test(forward, qwen3moe_kq_iq3_s)
{
	check_model("qwen3moe-kq-IQ3_S", false);
}
Test(forward, qwen3moe_kq_iq1_s)
{
	check_model("qwen3moe-kq-IQ1_S", false);
}
Test(forward, qwen3moe_kq_iq1_m)
{
	check_model("qwen3moe-kq-IQ1_M", false);
}
Test(forward, qwen3moe_k256_q2_k)
{
	check_model("qwen3moe-k256-Q2_K", false);
}
Test(forward, qwen3moe_k256_q3_k_m)
{
	check_model("qwen3moe-k256-Q3_K_M", false);
}
Test(forward, qwen3moe_k256_iq2_xxs)
{
	check_model("qwen3moe-k256-IQ2_XXS", false);
}
Test(forward, qwen3moe_k256_iq2_xs)
{
	check_model("qwen3moe-k256-IQ2_XS", false);
}
Test(forward, qwen3moe_k256_iq2_s)
{
	check_model("qwen3moe-k256-IQ2_S", false);
}
Test(forward, qwen3moe_k256_iq2_mix)
{
	check_model("qwen3moe-k256-IQ2_MIX", false);
}
Test(forward, qwen3next_tiny_f32)
{
	check_model("qwen3next-tiny-F32", true);
}
Test(forward, qwen3next_tiny_q8_0)
{
	check_model("qwen3next-tiny-Q8_0", false);
}
Test(forward, qwen3next_tiny_q4_0)
{
	check_model("qwen3next-tiny-Q4_0", false);
}
Test(forward, qwen3next_tiny_q4_k_m)
{
	check_model("qwen3next-tiny-Q4_K_M", false);
}
Test(forward, qwen3next_kq_q4_k_m)
{
	check_model("qwen3next-kq-Q4_K_M", false);
}
Test(forward, qwen35moe_tiny_f32)
{
	check_model("qwen35moe-tiny-F32", true);
}
Test(forward, qwen35moe_tiny_q8_0)
{
	check_model("qwen35moe-tiny-Q8_0", false);
}
Test(forward, qwen35moe_tiny_q4_k_m)
{
	check_model("qwen35moe-tiny-Q4_K_M", false);
}

/* ---- batching, chunking, slots ----------------------------------------------------- */

static moe_model *open_model(const char *name)
{
	moe_model *m = NULL;
	moe_err err = moe_model_open(&m, fixture(name));
	cr_assert_eq(err, MOE_OK, "%s: %s %s", name, moe_err_name(err), moe_err_detail());
	return m;
}

/* Two sequences (A and B of the golden) interleaved in shared steps at
 * different positions, in two slots, give the logits of each alone. */
static void check_interleaved(const char *model)
{
	moe_model *m = open_model(model);
	golden g;
	char base[128];
	snprintf(base, sizeof base, "%.*s", (int)(strlen(model) - 5), model);
	golden_load(&g, base);
	moe_fwd *f = make_fwd(m, MOE_TYPE_F32, 3, 256, 2);
	int s0, s1, s2;
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s1), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s2), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &(int){0}), MOE_ERR_BUSY);

	const int na = g.n_tok[0], nb = g.n_tok[1];
	float *ref_a = malloc(sizeof(float) * (size_t)na * N_VOCAB);
	float *ref_b = malloc(sizeof(float) * (size_t)nb * N_VOCAB);
	run_seq(f, s2, ref_a, g.tok[0], na, true);
	run_seq(f, s2, ref_b, g.tok[1], nb, true);

	/* step 1: B's first 30 tokens alone in s1; then steps mixing A (from 0)
	 * and B (from 30), 5 tokens of each per step, B first */
	float *out = malloc(sizeof(float) * 64 * N_VOCAB);
	int32_t tok[64], sl[64], pos[64];
	for (int i = 0; i < 30; i++)
		tok[i] = g.tok[1][i], sl[i] = s1, pos[i] = i;
	moe_batch b = {.n_tok = 30, .tokens = tok, .slot = sl, .pos = pos};
	cr_assert_eq(moe_fwd_step(f, out, &b), MOE_OK);
	const double max_abs = tol("f32", "max_abs");
	cmp c = compare(ref_b, out, 30);
	cr_expect(c.max_abs <= max_abs, "%s: B prefix %g", model, c.max_abs);
	int ia = 0, ib = 30;
	double worst = 0;
	while (ia < na || ib < nb) {
		int n = 0, from_b = 0;
		for (int j = 0; j < 5 && ib < nb; j++, ib++, n++, from_b++)
			tok[n] = g.tok[1][ib], sl[n] = s1, pos[n] = ib;
		for (int j = 0; j < 5 && ia < na; j++, ia++, n++)
			tok[n] = g.tok[0][ia], sl[n] = s0, pos[n] = ia;
		b.n_tok = n;
		cr_assert_eq(moe_fwd_step(f, out, &b), MOE_OK, "%s", moe_err_detail());
		for (int r = 0; r < n; r++) {
			const float *ref = r < from_b ? ref_b + (size_t)pos[r] * N_VOCAB
			                              : ref_a + (size_t)pos[r] * N_VOCAB;
			worst = fmax(worst, compare(ref, out + (size_t)r * N_VOCAB, 1).max_abs);
		}
	}
	cr_log_info("%s: interleaved two sequences, max |d| vs alone %.3g", model, worst);
	cr_expect(worst <= max_abs, "%s: interleaved max |d| %g", model, worst);

	/* wrong position, closed slot, bad token are refused */
	int32_t t0 = 1, p5 = 5, bad = N_VOCAB;
	b = (moe_batch){.n_tok = 1, .tokens = &t0, .slot = &s0, .pos = &p5};
	cr_assert_eq(moe_fwd_step(f, out, &b), MOE_ERR_INVAL);
	cr_assert_eq(moe_fwd_seq_close(f, s2), MOE_OK);
	int32_t p0 = 0;
	b = (moe_batch){.n_tok = 1, .tokens = &t0, .slot = &s2, .pos = &p0};
	cr_assert_eq(moe_fwd_step(f, out, &b), MOE_ERR_INVAL);
	b = (moe_batch){.n_tok = 1, .tokens = &bad, .slot = &s0, .pos = &(int32_t){na}};
	cr_assert_eq(moe_fwd_step(f, out, &b), MOE_ERR_INVAL);
	cr_assert_eq(moe_fwd_seq_len(f, s0), na);

	/* a closed slot reopens empty and gives the same logits again */
	int s3;
	cr_assert_eq(moe_fwd_seq_open(f, &s3), MOE_OK);
	cr_assert_eq(s3, s2);
	cr_assert_eq(moe_fwd_seq_len(f, s3), 0);
	run_seq(f, s3, out, g.tok[0], na, false);
	c = compare(ref_a, out, na);
	cr_expect(c.max_abs <= max_abs, "%s: reused slot %g", model, c.max_abs);

	free(ref_a), free(ref_b), free(out);
	golden_free(&g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

Test(forward, interleaved_sequences_qwen3next)
{
	check_interleaved("qwen3next-tiny-F32.gguf");
}
Test(forward, interleaved_sequences_qwen3moe)
{
	check_interleaved("qwen3moe-tiny-F32.gguf");
}
Test(forward, interleaved_sequences_qwen35moe)
{
	check_interleaved("qwen35moe-tiny-F32.gguf");
}

Test(forward, chunked_prefill_and_logit_selection)
{
	moe_model *m = open_model("qwen3next-tiny-F32.gguf");
	golden g;
	golden_load(&g, "qwen3next-tiny-F32");
	const int n = g.n_tok[1];
	float *gb = golden_logits("qwen3next-tiny-F32", "B.batch", n);
	/* max_batch 10: the 64 tokens go in 7 chunks */
	moe_fwd *f = make_fwd(m, MOE_TYPE_F32, 1, 10, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	float *out = malloc(sizeof(float) * (size_t)n * N_VOCAB);
	run_seq(f, slot, out, g.tok[1], n, false);
	cmp c = compare(gb, out, n);
	cr_expect(c.max_abs <= tol("f32", "max_abs"), "chunked prefill max |d| %g", c.max_abs);

	/* only the last row wanted */
	bool want[64] = {0};
	want[n - 1] = true;
	int32_t pos[64], sl[64];
	for (int i = 0; i < n; i++)
		pos[i] = i, sl[i] = slot;
	cr_assert_eq(moe_fwd_seq_reset(f, slot), MOE_OK);
	moe_batch b = {.n_tok = n, .tokens = g.tok[1], .slot = sl, .pos = pos, .logits = want};
	float last[N_VOCAB];
	cr_assert_eq(moe_fwd_step(f, last, &b), MOE_OK);
	c = compare(gb + (size_t)(n - 1) * N_VOCAB, last, 1);
	cr_expect(c.max_abs <= tol("f32", "max_abs"), "last row %g", c.max_abs);
	free(out), free(gb);
	golden_free(&g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

Test(forward, f16_kv_cache_stays_close)
{
	moe_model *m = open_model("qwen3moe-tiny-F32.gguf");
	golden g;
	golden_load(&g, "qwen3moe-tiny-F32");
	const int n = g.n_tok[1];
	float *gb = golden_logits("qwen3moe-tiny-F32", "B.batch", n);
	moe_fwd *f = make_fwd(m, MOE_TYPE_F16, 1, 256, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	float *out = malloc(sizeof(float) * (size_t)n * N_VOCAB);
	run_seq(f, slot, out, g.tok[1], n, false);
	const cmp c = compare(gb, out, n);
	cr_log_info("f16 KV: max %.3g KL %.3g agree %.1f%%", c.max_abs, c.mean_kl, 100 * c.agree);
	cr_expect(c.mean_kl <= tol("f16_kv", "max_mean_kl") &&
	              c.agree >= tol("f16_kv", "min_top1_agree"),
	          "f16 KV: KL %g agree %g", c.mean_kl, c.agree);
	cr_expect(moe_fwd_kv_bytes(f) > 0);
	free(out), free(gb);
	golden_free(&g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* A quantized KV cache against the F32 one, on sequences A and B of the F32
 * fixtures in one step: mean KL and top-1 agreement within tolerances.json's
 * section (KV type name + "_kv"). */
static void check_kv_type(moe_type kv)
{
	char section[32];
	snprintf(section, sizeof section, "%s_kv", moe_fwd_kv_type_name(kv));
	const char *models[2] = {"qwen3moe-tiny-F32", "qwen3next-tiny-F32"};
	for (int k = 0; k < 2; k++) {
		char path[128];
		snprintf(path, sizeof path, "%s.gguf", models[k]);
		moe_model *m = open_model(path);
		golden g;
		golden_load(&g, models[k]);
		moe_fwd *f32 = make_fwd(m, MOE_TYPE_F32, 1, 256, 1);
		moe_fwd *fq = make_fwd(m, kv, 1, 256, 1);
		int s1, s2;
		cr_assert_eq(moe_fwd_seq_open(f32, &s1), MOE_OK);
		cr_assert_eq(moe_fwd_seq_open(fq, &s2), MOE_OK);
		for (int s = 0; s < 2; s++) {
			const int n = g.n_tok[s];
			float *a = malloc(sizeof(float) * (size_t)n * N_VOCAB);
			float *b = malloc(sizeof(float) * (size_t)n * N_VOCAB);
			run_seq(f32, s1, a, g.tok[s], n, false);
			run_seq(fq, s2, b, g.tok[s], n, false);
			const cmp c = compare(a, b, n);
			cr_log_info("%s KV vs f32 KV, %s %s: max %.3g KL %.3g agree %.1f%%",
			            moe_fwd_kv_type_name(kv), models[k], s == 0 ? "A" : "B",
			            c.max_abs, c.mean_kl, 100 * c.agree);
			cr_expect(c.mean_kl <= tol(section, "max_mean_kl") &&
			              c.agree >= tol(section, "min_top1_agree"),
			          "%s KV, %s %s: KL %g agree %g", moe_fwd_kv_type_name(kv),
			          models[k], s == 0 ? "A" : "B", c.mean_kl, c.agree);
			free(a), free(b);
		}
		golden_free(&g);
		moe_fwd_destroy(fq);
		moe_fwd_destroy(f32);
		moe_model_destroy(m);
	}
}

Test(forward, q8_0_kv_cache_stays_close)
{
	check_kv_type(MOE_TYPE_Q8_0);
}
Test(forward, q4_0_kv_cache_stays_close)
{
	check_kv_type(MOE_TYPE_Q4_0);
}

/* ---- expert backend: split placement gives identical bits --------------------------- */

typedef struct split_backend {
	const moe_model *m;
	moe_pool *pool;
	int il;
	int64_t n_tok;
	const float *x;
	const int32_t *ids;
	const float *w;
	int n_used;
	int calls;
} split_backend;

static moe_err split_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                           const float *w, int n_used)
{
	split_backend *s = ctx;
	s->il = il, s->n_tok = n_tok, s->x = x, s->ids = ids, s->w = w, s->n_used = n_used;
	s->calls++;
	return MOE_OK;
}

/* Runs the odd experts, then the even ones, as two "workers" would. */
static moe_err split_finish(void *ctx, moe_fix_t *acc)
{
	split_backend *s = ctx;
	const moe_expert_ffn *full = moe_model_experts(s->m, s->il);
	const int ne = full->n_expert;
	const void **p = calloc(3 * (size_t)ne, sizeof(void *));
	for (int part = 1; part >= 0; part--) {
		moe_expert_ffn h = *full;
		for (int e = 0; e < ne; e++) {
			const bool mine = e % 2 == part;
			p[e] = mine ? full->gate.expert[e] : NULL;
			p[ne + e] = mine ? full->up.expert[e] : NULL;
			p[2 * ne + e] = mine ? full->down.expert[e] : NULL;
		}
		h.gate.expert = p;
		h.up.expert = p + ne;
		h.down.expert = p + 2 * ne;
		moe_err err =
		    moe_expert_ffn_run(s->pool, acc, &h, s->x, s->n_tok, s->ids, s->w, s->n_used);
		if (err != MOE_OK) {
			free(p);
			return err;
		}
	}
	free(p);
	return MOE_OK;
}

Test(forward, split_expert_backend_is_bit_identical)
{
	const char *models[5] = {"qwen3next-tiny-Q4_K_M.gguf", "qwen3moe-tiny-F32.gguf",
	                         "qwen35moe-tiny-Q4_K_M.gguf", "qwen3moe-k256-Q2_K.gguf",
	                         "qwen3moe-k256-IQ2_MIX.gguf"};
	for (int k = 0; k < 5; k++) {
		moe_model *m = open_model(models[k]);
		golden g;
		char base[128];
		snprintf(base, sizeof base, "%.*s", (int)(strlen(models[k]) - 5), models[k]);
		golden_load(&g, base);
		const int n = g.n_tok[0];
		moe_fwd *fl = make_fwd(m, MOE_TYPE_F32, 1, 256, 2); /* 2 threads vs 1 */
		split_backend sb = {.m = m};
		cr_assert_eq(moe_pool_create(&sb.pool, 1), MOE_OK);
		moe_expert_backend be = {.ctx = &sb, .start = split_start, .finish = split_finish};
		moe_fwd_opts o;
		moe_fwd_opts_default(&o);
		o.kv_type = MOE_TYPE_F32;
		o.n_ctx = 128;
		o.n_threads = 1;
		o.experts = &be;
		moe_fwd *fs = NULL;
		cr_assert_eq(moe_fwd_create(&fs, m, &o), MOE_OK);
		int s1, s2;
		cr_assert_eq(moe_fwd_seq_open(fl, &s1), MOE_OK);
		cr_assert_eq(moe_fwd_seq_open(fs, &s2), MOE_OK);
		float *a = malloc(sizeof(float) * (size_t)n * N_VOCAB);
		float *b = malloc(sizeof(float) * (size_t)n * N_VOCAB);
		run_seq(fl, s1, a, g.tok[0], n, false);
		run_seq(fs, s2, b, g.tok[0], n, false);
		cr_assert_eq(sb.calls, moe_model_hparams(m)->n_layer);
		cr_expect_eq(memcmp(a, b, sizeof(float) * (size_t)n * N_VOCAB), 0,
		             "%s: split experts changed the logits", models[k]);
		free(a), free(b);
		golden_free(&g);
		moe_fwd_destroy(fs);
		moe_fwd_destroy(fl);
		moe_pool_destroy(sb.pool);
		moe_model_destroy(m);
	}
}

/* ---- load-time checks ------------------------------------------------------------------ */

/* The file bytes with the 4-byte u32 value of metadata key `key` replaced
 * (or, if value < 0, one letter of the key changed so it is not found). */
static moe_err open_patched(moe_model **m, moe_gguf **g, void **buf, const char *file,
                            const char *key, long value)
{
	size_t n;
	char *b = read_file(fixture(file), &n);
	const size_t kl = strlen(key);
	char *at = NULL;
	for (size_t i = 8; i + kl + 12 <= n && at == NULL; i++) {
		uint64_t len;
		memcpy(&len, b + i - 8, 8);
		if (len == kl && memcmp(b + i, key, kl) == 0)
			at = b + i;
	}
	cr_assert_not_null(at, "key %s not found in %s", key, file);
	if (value < 0) {
		at[kl - 1] ^= 0x20; /* change the case of the last letter */
	} else {
		uint32_t type, v = (uint32_t)value;
		memcpy(&type, at + kl, 4);
		cr_assert_eq(type, 4, "%s is not a UINT32", key);
		memcpy(at + kl + 4, &v, 4);
	}
	*buf = b;
	moe_err err = moe_gguf_open_mem(g, b, n);
	cr_assert_eq(err, MOE_OK, "%s", moe_err_detail());
	return moe_model_load(m, *g);
}

Test(forward, load_names_missing_key_and_bad_shapes)
{
	moe_model *m = NULL;
	moe_gguf *g = NULL;
	void *buf = NULL;

	moe_err err =
	    open_patched(&m, &g, &buf, "qwen3moe-tiny-F32.gguf", "qwen3moe.expert_count", -1);
	cr_expect_eq(err, MOE_ERR_NOT_FOUND);
	cr_expect_not_null(strstr(moe_err_detail(), "qwen3moe.expert_count"), "%s",
	                   moe_err_detail());
	moe_gguf_close(g), free(buf);

	err = open_patched(&m, &g, &buf, "qwen3next-tiny-F32.gguf",
	                   "qwen3next.expert_feed_forward_length", 32);
	cr_expect_eq(err, MOE_ERR_BAD_SHAPE);
	cr_expect_not_null(strstr(moe_err_detail(), "blk.0.ffn_gate_exps.weight"), "%s",
	                   moe_err_detail());
	moe_gguf_close(g), free(buf);

	err = open_patched(&m, &g, &buf, "qwen3next-tiny-F32.gguf", "qwen3next.ssm.group_count", 3);
	cr_expect_eq(err, MOE_ERR_BAD_VALUE);
	cr_expect_not_null(strstr(moe_err_detail(), "qwen3next.ssm.group_count"), "%s",
	                   moe_err_detail());
	moe_gguf_close(g), free(buf);

	err = open_patched(&m, &g, &buf, "qwen3moe-tiny-F32.gguf",
	                   "qwen3moe.attention.head_count_kv", 3);
	cr_expect_eq(err, MOE_ERR_BAD_VALUE);
	moe_gguf_close(g), free(buf);

	err = open_patched(&m, &g, &buf, "qwen3moe-tiny-F32.gguf", "qwen3moe.embedding_length", 64);
	cr_expect_eq(err, MOE_ERR_BAD_SHAPE);
	cr_expect_not_null(strstr(moe_err_detail(), "token_embd.weight"), "%s", moe_err_detail());
	moe_gguf_close(g), free(buf);

	/* unpatched loads, and the hyper-parameters are the fixture table's */
	err = open_patched(&m, &g, &buf, "qwen3next-tiny-F32.gguf", "qwen3next.block_count", 4);
	cr_assert_eq(err, MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	cr_expect_eq(hp->arch, MOE_ARCH_QWEN3NEXT);
	cr_expect_eq(hp->n_embd, 128);
	cr_expect_eq(hp->n_rot, 8);
	cr_expect_eq(hp->ssm_n_k_heads, 4);
	cr_expect_eq(hp->ssm_n_v_heads, 8);
	cr_expect_eq(hp->ssm_conv_dim, 512);
	cr_expect_eq(hp->n_ff_shexp, 64);
	cr_expect(hp->recurrent[0] && hp->recurrent[1] && hp->recurrent[2] && !hp->recurrent[3]);
	cr_expect_eq(hp->eos_id, 511);
	moe_model_destroy(m);
	moe_gguf_close(g), free(buf);
}

/* qwen35moe: the trunk is block_count less nextn_predict_layers, the MTP block's
 * tensors are loaded and checked, the rotary sections are required and
 * checked. */
Test(forward, qwen35moe_hparams_and_mtp_block)
{
	moe_model *m = NULL;
	moe_gguf *g = NULL;
	void *buf = NULL;
	moe_err err =
	    open_patched(&m, &g, &buf, "qwen35moe-tiny-F32.gguf", "qwen35moe.block_count", 5);
	cr_assert_eq(err, MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	cr_expect_eq(hp->arch, MOE_ARCH_QWEN35MOE);
	cr_expect_eq(hp->n_layer, 4);
	cr_expect_eq(hp->n_layer_nextn, 1);
	cr_expect_eq(hp->n_layer_all, 5);
	cr_expect_eq(hp->n_rot, 16);
	cr_expect(hp->rope_sections[0] == 2 && hp->rope_sections[1] == 1 &&
	          hp->rope_sections[2] == 1 && hp->rope_sections[3] == 1);
	cr_expect(hp->recurrent[0] && hp->recurrent[1] && hp->recurrent[2] && !hp->recurrent[3] &&
	          !hp->recurrent[4]);
	cr_expect_eq(moe_hparams_n_attn_layers(hp), 1);
	cr_expect(m->has_nextn);
	cr_expect_not_null(m->layers[4].nextn.eh_proj.data);
	cr_expect_not_null(m->layers[4].nextn.shared_head_norm);
	cr_expect_null(m->layers[4].nextn.embed_tokens.data);
	cr_expect_null(moe_model_experts(m, 4), "the MTP block's experts are not the trunk's");
	moe_model_destroy(m);
	moe_gguf_close(g), free(buf);

	/* one block less: the MTP block is taken for trunk layer 4's tensors... */
	err = open_patched(&m, &g, &buf, "qwen35moe-tiny-F32.gguf",
	                   "qwen35moe.nextn_predict_layers", 0);
	cr_expect_eq(err, MOE_ERR_NOT_FOUND, "%s", moe_err_detail());
	cr_expect_not_null(strstr(moe_err_detail(), "blk.4."), "%s", moe_err_detail());
	moe_gguf_close(g), free(buf);
	/* ...and nextn_predict_layers >= block_count is refused, naming both */
	err = open_patched(&m, &g, &buf, "qwen35moe-tiny-F32.gguf",
	                   "qwen35moe.nextn_predict_layers", 5);
	cr_expect_eq(err, MOE_ERR_BAD_VALUE);
	cr_expect_not_null(strstr(moe_err_detail(), "qwen35moe.block_count"), "%s",
	                   moe_err_detail());
	moe_gguf_close(g), free(buf);
	/* the sections are required */
	err = open_patched(&m, &g, &buf, "qwen35moe-tiny-F32.gguf",
	                   "qwen35moe.rope.dimension_sections", -1);
	cr_expect_eq(err, MOE_ERR_NOT_FOUND);
	cr_expect_not_null(strstr(moe_err_detail(), "qwen35moe.rope.dimension_sections"), "%s",
	                   moe_err_detail());
	moe_gguf_close(g), free(buf);
}

/* Writes the fixture src as dst with the UINT32 key set_key set to set_val
 * (added after the others if src lacks it) and, if n_flags > 0,
 * "<arch>.attention.recurrent_layers" = flags (a BOOL array) added; every
 * other key and every tensor as they are. */
static void rewrite_fixture(const char *src, const char *dst, const char *set_key, uint32_t set_val,
                            const bool *flags, uint64_t n_flags)
{
	moe_gguf *g = NULL;
	moe_gguf_writer *w = NULL;
	cr_assert_eq(moe_gguf_open(&g, fixture(src)), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_writer_create(&w, dst), MOE_OK);
	bool set = false;
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		const moe_gguf_str k = moe_gguf_kv_key(g, i);
		if (k.len == strlen(set_key) && memcmp(k.ptr, set_key, k.len) == 0) {
			cr_assert_eq(moe_gguf_writer_add_u32(w, set_key, set_val), MOE_OK);
			set = true;
		} else {
			cr_assert_eq(moe_gguf_writer_copy_kv(w, g, i), MOE_OK);
		}
	}
	if (!set)
		cr_assert_eq(moe_gguf_writer_add_u32(w, set_key, set_val), MOE_OK);
	if (n_flags > 0) {
		moe_gguf_str arch;
		cr_assert_eq(moe_gguf_get_str(&arch, g, "general.architecture"), MOE_OK);
		char key[128];
		snprintf(key, sizeof key, "%.*s.attention.recurrent_layers", (int)arch.len,
		         arch.ptr);
		uint8_t b[16];
		for (uint64_t i = 0; i < n_flags; i++)
			b[i] = flags[i];
		cr_assert_eq(moe_gguf_writer_add_arr(w, key, MOE_GGUF_BOOL, b, n_flags), MOE_OK);
	}
	char name[128];
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		cr_assert_eq(moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne),
		             MOE_OK);
	}
	cr_assert_eq(moe_gguf_writer_begin_data(w), MOE_OK);
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		cr_assert_eq(moe_gguf_writer_write(w, t->data, t->size), MOE_OK);
	}
	cr_assert_eq(moe_gguf_writer_finish(w), MOE_OK, "%s", moe_err_detail());
	moe_gguf_writer_destroy(w);
	moe_gguf_close(g);
}

/* attention.recurrent_layers, where present, decides over
 * full_attention_interval: with the fixture's layout given as flags and an
 * interval of 2 that disagrees, the model loads and gives the golden logits;
 * with the interval alone it is refused (blk.1 has no attention tensors); a
 * flag array of the wrong length is refused, naming the key.  (llama.cpp gives
 * the flagged file's A logits bit-identical to the golden: checked by hand.) */
Test(forward, qwen35moe_recurrent_layers_key)
{
	char path[] = "/tmp/moe_q35_rec_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	close(fd);
	const bool flags[5] = {true, true, true, false, false};
	moe_model *m = NULL;

	rewrite_fixture("qwen35moe-tiny-F32.gguf", path, "qwen35moe.full_attention_interval", 2,
	                flags, 5);
	moe_err err = moe_model_open(&m, path);
	cr_assert_eq(err, MOE_OK, "%s", moe_err_detail());
	golden g;
	golden_load(&g, "qwen35moe-tiny-F32");
	moe_fwd *f = make_fwd(m, MOE_TYPE_F32, 1, 256, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	const int n = g.n_tok[0];
	float *out = malloc(sizeof(float) * (size_t)n * N_VOCAB);
	run_seq(f, slot, out, g.tok[0], n, false);
	float *gb = golden_logits("qwen35moe-tiny-F32", "A.batch", n);
	const cmp c = compare(gb, out, n);
	cr_expect(c.max_abs <= tol("f32", "max_abs"), "recurrent_layers flags: max |d| %g",
	          c.max_abs);
	free(out), free(gb);
	golden_free(&g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);

	rewrite_fixture("qwen35moe-tiny-F32.gguf", path, "qwen35moe.full_attention_interval", 2,
	                NULL, 0);
	cr_expect_eq(moe_model_open(&m, path), MOE_ERR_NOT_FOUND);
	cr_expect_not_null(strstr(moe_err_detail(), "blk.1.attn_q.weight"), "%s", moe_err_detail());

	rewrite_fixture("qwen35moe-tiny-F32.gguf", path, "qwen35moe.full_attention_interval", 4,
	                flags, 4);
	cr_expect_eq(moe_model_open(&m, path), MOE_ERR_BAD_VALUE);
	cr_expect_not_null(strstr(moe_err_detail(), "qwen35moe.attention.recurrent_layers"), "%s",
	                   moe_err_detail());
	unlink(path);
}

/* qwen3next reads nextn_predict_layers too (as llama.cpp does): the fixture
 * with 1 declared makes block 3 an MTP block, the trunk blocks 0-2 (no
 * attention layer left), and a file without the block's nextn tensors loads
 * without them (llama.cpp refuses this file: it requires them). */
Test(forward, qwen3next_nextn_predict_layers)
{
	char path[] = "/tmp/moe_q3n_mtp_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	close(fd);
	rewrite_fixture("qwen3next-tiny-F32.gguf", path, "qwen3next.nextn_predict_layers", 1, NULL,
	                0);
	moe_model *m = NULL;
	cr_assert_eq(moe_model_open(&m, path), MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	cr_expect(hp->n_layer == 3 && hp->n_layer_nextn == 1 && hp->n_layer_all == 4);
	cr_expect_eq(moe_hparams_n_attn_layers(hp), 0);
	cr_expect(!m->has_nextn);
	moe_fwd *f = make_fwd(m, MOE_TYPE_F32, 1, 256, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	float out[4 * N_VOCAB];
	const int32_t toks[4] = {1, 2, 3, 4};
	run_seq(f, slot, out, toks, 4, false);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
	unlink(path);
}

/* ---- the CLI ------------------------------------------------------------------------------ */

static const char *bin(void)
{
	const char *b = getenv("MOE_BIN");
	cr_assert_not_null(b, "MOE_BIN is not set");
	return b;
}

Test(cli, logits_one_by_one_matches_golden)
{
	char out[] = "/tmp/moe_logits_XXXXXX";
	int fd = mkstemp(out);
	cr_assert(fd >= 0);
	close(fd);
	golden g;
	golden_load(&g, "qwen3next-tiny-F32");
	char toks[1024] = "";
	for (int i = 0; i < g.n_tok[0]; i++)
		snprintf(toks + strlen(toks), sizeof toks - strlen(toks), "%s%d", i ? "," : "",
		         g.tok[0][i]);
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "%s logits -m %s --tokens %s --one-by-one --kv f32 --threads 1 -o %s", bin(),
	         fixture("qwen3next-tiny-F32.gguf"), toks, out);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
	size_t n;
	float *ours = read_file(out, &n);
	cr_assert_eq(n, (size_t)g.n_tok[0] * N_VOCAB * sizeof(float));
	float *gs = golden_logits("qwen3next-tiny-F32", "A.seq", g.n_tok[0]);
	const cmp c = compare(gs, ours, g.n_tok[0]);
	cr_expect(c.max_abs <= tol("f32", "max_abs"), "CLI logits max |d| %g", c.max_abs);
	snprintf(cmd, sizeof cmd, "%s logits -m %s --tokens 1,x -o %s 2>/dev/null", bin(),
	         fixture("qwen3next-tiny-F32.gguf"), out);
	cr_expect_eq(WEXITSTATUS(system(cmd)), 2, "bad token list is a usage error");
	snprintf(cmd, sizeof cmd, "%s logits -m %s --tokens 1,512 -o %s 2>/dev/null", bin(),
	         fixture("qwen3next-tiny-F32.gguf"), out);
	cr_expect_eq(WEXITSTATUS(system(cmd)), 1, "token id out of range is a runtime error");
	unlink(out);
	free(ours), free(gs);
	golden_free(&g);
}

/* --kv takes every KV type (and refuses others as a usage error); run reports
 * the type, the bytes per position and the blocks held. */
Test(cli, kv_types)
{
	char out[] = "/tmp/moe_logits_XXXXXX";
	int fd = mkstemp(out);
	cr_assert(fd >= 0);
	close(fd);
	char cmd[4096];
	static const char *types[] = {"f32", "f16", "q8_0", "q4_0"};
	for (int i = 0; i < 4; i++) {
		snprintf(cmd, sizeof cmd, "%s logits -m %s --tokens 1,2,3,4 --kv %s -o %s", bin(),
		         fixture("qwen3moe-tiny-F32.gguf"), types[i], out);
		cr_expect_eq(system(cmd), 0, "%s", cmd);
	}
	snprintf(cmd, sizeof cmd, "%s logits -m %s --tokens 1,2 --kv q5_0 -o %s 2>/dev/null", bin(),
	         fixture("qwen3moe-tiny-F32.gguf"), out);
	cr_expect_eq(WEXITSTATUS(system(cmd)), 2, "an unknown KV type is a usage error");
	unlink(out);

	const char *src = getenv("MOE_SOURCE_DIR");
	cr_assert_not_null(src);
	snprintf(cmd, sizeof cmd,
	         "%s run -m %s/models/kjv-qwen3next-Q4_K_M.gguf -p 'In the beginning' -n 4 "
	         "--temp 0 --threads 1 --kv q8_0 --kv-budget 1 2>&1 >/dev/null",
	         bin(), src);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	char text[4096];
	size_t n = fread(text, 1, sizeof text - 1, p);
	text[n] = 0;
	cr_assert_eq(pclose(p), 0, "%s", cmd);
	/* one attention layer, 2 KV heads of 32: K and V rows of 2 Q8_0 blocks */
	cr_expect_not_null(strstr(text, "KV cache 34816 bytes held (q8_0, 136 bytes per position, "
	                                "in blocks of 256 positions)"),
	                   "%s", text);
	snprintf(cmd, sizeof cmd,
	         "%s run -m %s/models/kjv-qwen3next-Q4_K_M.gguf -p x --kv q8 >/dev/null 2>&1",
	         bin(), src);
	cr_expect_eq(WEXITSTATUS(system(cmd)), 2);
}

/* Greedy text of the KJV demo models equals llama.cpp's (the samples in
 * models/README.md, prompt removed). */
static void check_kjv(const char *model, const char *prompt, const char *expect)
{
	const char *src = getenv("MOE_SOURCE_DIR");
	cr_assert_not_null(src);
	char cmd[2048];
	snprintf(cmd, sizeof cmd,
	         "%s run -m %s/models/%s -p '%s' -n 48 --temp 0 --ignore-eos --threads 1 "
	         "2>/dev/null",
	         bin(), src, model, prompt);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	char text[4096];
	size_t n = fread(text, 1, sizeof text - 1, p);
	text[n] = 0;
	cr_assert_eq(pclose(p), 0, "%s", cmd);
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
		text[--n] = 0;
	cr_expect_str_eq(text, expect, "%s greedy text differs from llama.cpp's", model);
}

Test(cli, kjv_qwen3moe_greedy_text_matches_llama_cpp)
{
	check_kjv("kjv-qwen3moe-Q4_K_M.gguf", "In the beginning",
	          " of the LORD.\nFor the LORD hath made a man to the LORD, and the LORD hath "
	          "made a man to the LORD.\nAnd he said unto the LORD, I will not be a man of the "
	          "LORD, and the LORD shall be");
}

Test(cli, kjv_qwen3next_greedy_text_matches_llama_cpp)
{
	check_kjv("kjv-qwen3next-Q4_K_M.gguf", "Jesus answered and said unto him",
	          ", Behold, I will not be a man of God, and I will not be in the midst of the "
	          "earth.\nAnd the LORD said unto Moses, The LORD hath given me to the people, and "
	          "the LORD thy God, and the");
}

/* `run ARGS` on a KJV demo model: stdout into text, stderr into err. */
static void run_kjv(char *text, char *err, size_t size, const char *model, const char *args)
{
	const char *src = getenv("MOE_SOURCE_DIR");
	cr_assert_not_null(src);
	char log[] = "/tmp/moe_run_err_XXXXXX";
	int fd = mkstemp(log);
	cr_assert(fd >= 0);
	close(fd);
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "%s run -m %s/models/%s %s 2>%s", bin(), src, model, args, log);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(text, 1, size - 1, p);
	text[n] = 0;
	cr_assert_eq(pclose(p), 0, "%s", cmd);
	FILE *e = fopen(log, "rb");
	cr_assert_not_null(e);
	n = fread(err, 1, size - 1, e);
	err[n] = 0;
	fclose(e);
	unlink(log);
}

/* --spec ngram gives the text run gives without it (greedy: llama.cpp's, see
 * above; seeded), with drafts both taken and refused: with a DeltaNet state
 * (qwen3next: refused drafts send it back to its snapshot), without one
 * (qwen3moe: the KV is cut back) and with the experts on workers. */
static void check_spec(const char *model, const char *args)
{
	static char plain[8192], spec[8192], e1[8192], e2[8192];
	char a2[1024];
	run_kjv(plain, e1, sizeof plain, model, args);
	snprintf(a2, sizeof a2, "%s --spec ngram --draft-max 6", args);
	run_kjv(spec, e2, sizeof spec, model, a2);
	cr_expect_str_eq(spec, plain, "%s %s: --spec ngram changed the text", model, args);
	const char *line = strstr(e2, "spec: ngram, ");
	cr_assert_not_null(line, "no spec line in: %s", e2);
	long drafted = 0, accepted = 0;
	cr_assert_eq(sscanf(line, "spec: ngram, %ld drafted, %ld accepted", &drafted, &accepted),
	             2);
	cr_expect_gt(accepted, 0, "%s %s: no draft taken: %s", model, args, line);
	cr_expect_lt(accepted, drafted, "%s %s: no draft refused: %s", model, args, line);
	cr_expect_null(strstr(e1, "spec:"), "a spec line without --spec");
}

#define SPEC_PROMPT                                                                                \
	"-p 'And God said, Let there be light: and there was light. And God said, Let there be "   \
	"light: and there was light. And God said' -n 64 --ignore-eos --threads 1"

Test(cli, spec_ngram_changes_no_token)
{
	check_spec("kjv-qwen3next-Q4_K_M.gguf", SPEC_PROMPT " --temp 0");
	check_spec("kjv-qwen3next-Q4_K_M.gguf", SPEC_PROMPT " --temp 0.3 --seed 3");
	check_spec("kjv-qwen3moe-Q4_K_M.gguf", SPEC_PROMPT " --temp 0");
	check_spec("kjv-qwen3moe-Q4_K_M.gguf", SPEC_PROMPT " --temp 0.3 --seed 3");
	check_spec("kjv-qwen3next-Q4_K_M.gguf", SPEC_PROMPT " --temp 0 --workers 2");
	check_spec("kjv-qwen3next-Q4_K_M.gguf",
	           "-p 'Jesus answered and said unto him' -n 48 --temp 0 --ignore-eos --threads 1");
}
