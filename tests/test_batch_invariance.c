/* test_batch_invariance.c - the logits of a sequence are bit-identical
 * whether its tokens run alone or in steps shared with other sequences (at
 * other positions, prefilling or decoding), on 1 or 2 threads, provided the
 * sequence is cut into the same pieces -- the rule the serve scheduler keeps
 * (a prompt is cut into prefill pieces counted from its own start).  This is
 * what makes a seeded request's output independent of the server's load. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/forward.h"

static moe_model *open_model(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");
	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	char path[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	moe_model *m = NULL;
	moe_err err = moe_model_open(&m, path);
	cr_assert_eq(err, MOE_OK, "%s: %s %s", name, moe_err_name(err), moe_err_detail());
	return m;
}

static moe_fwd *make_fwd(const moe_model *m, int n_slots, int n_threads, int max_batch)
{
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = n_slots;
	o.n_ctx = 128;
	o.n_threads = n_threads;
	o.max_batch = max_batch;
	moe_fwd *f = NULL;
	moe_err err = moe_fwd_create(&f, m, &o);
	cr_assert_eq(err, MOE_OK, "%s %s", moe_err_name(err), moe_err_detail());
	return f;
}

static void random_tokens(int32_t *t, int n, uint32_t seed, int32_t n_vocab)
{
	for (int i = 0; i < n; i++) {
		seed = seed * 1664525u + 1013904223u;
		t[i] = (int32_t)((seed >> 8) % (uint32_t)n_vocab);
	}
}

#define PIECE 16 /* >= the DeltaNet chunked-form threshold: both forms run */
#define NA    40
#define NB    23
#define NC    9
#define NDEC  6

/* Sequence A: NA prompt tokens in pieces of PIECE, then NDEC decode tokens;
 * the logits after each piece's last token and after each decode token. */
static void check(const char *model)
{
	moe_model *m = open_model(model);
	const int32_t nv = moe_model_hparams(m)->n_vocab;
	int32_t a[NA + NDEC], b[NB + NDEC], c[NC + NDEC];
	random_tokens(a, NA + NDEC, 1, nv);
	random_tokens(b, NB + NDEC, 2, nv);
	random_tokens(c, NC + NDEC, 3, nv);
	const int n_out = (NA + PIECE - 1) / PIECE + NDEC;
	float *ref = malloc(sizeof(float) * (size_t)n_out * (size_t)nv);
	float *got = malloc(sizeof(float) * (size_t)n_out * (size_t)nv);
	float *out = malloc(sizeof(float) * 3 * (size_t)nv);
	cr_assert(ref != NULL && got != NULL && out != NULL);

	/* alone, one thread */
	moe_fwd *f = make_fwd(m, 1, 1, 256);
	int s;
	cr_assert_eq(moe_fwd_seq_open(f, &s), MOE_OK);
	int k = 0;
	for (int p = 0; p < NA + NDEC;) {
		const int n = p < NA ? (NA - p < PIECE ? NA - p : PIECE) : 1;
		int32_t sl[PIECE], pos[PIECE];
		bool want[PIECE] = {0};
		for (int i = 0; i < n; i++)
			sl[i] = s, pos[i] = p + i;
		want[n - 1] = true;
		moe_batch bt = {
		    .n_tok = n, .tokens = a + p, .slot = sl, .pos = pos, .logits = want};
		cr_assert_eq(moe_fwd_step(f, ref + (size_t)k++ * (size_t)nv, &bt), MOE_OK, "%s",
		             moe_err_detail());
		p += n;
	}
	moe_fwd_destroy(f);

	/* with B and C in every step, two threads, A in the middle of the batch:
	 * B prefills in pieces of 5 then decodes, C starts two steps late */
	f = make_fwd(m, 3, 2, 256);
	int sa, sb, sc;
	cr_assert_eq(moe_fwd_seq_open(f, &sb), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &sa), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &sc), MOE_OK);
	int pa = 0, pb = 0, pc = 0, step = 0;
	k = 0;
	while (pa < NA + NDEC) {
		int32_t tok[64], sl[64], pos[64];
		bool want[64] = {0};
		int n = 0, row_a = -1, rows = 0;
		const int nb = pb < NB ? (NB - pb < 5 ? NB - pb : 5) : (pb < NB + NDEC ? 1 : 0);
		for (int i = 0; i < nb; i++, n++)
			tok[n] = b[pb + i], sl[n] = sb, pos[n] = pb + i;
		if (nb > 0)
			want[n - 1] = true, rows++;
		pb += nb;
		const int na = pa < NA ? (NA - pa < PIECE ? NA - pa : PIECE) : 1;
		for (int i = 0; i < na; i++, n++)
			tok[n] = a[pa + i], sl[n] = sa, pos[n] = pa + i;
		want[n - 1] = true;
		row_a = rows++;
		pa += na;
		if (step >= 2 && pc < NC + NDEC) {
			const int ncn = pc < NC ? NC - pc : 1;
			for (int i = 0; i < ncn; i++, n++)
				tok[n] = c[pc + i], sl[n] = sc, pos[n] = pc + i;
			want[n - 1] = true;
			rows++;
			pc += ncn;
		}
		moe_batch bt = {.n_tok = n, .tokens = tok, .slot = sl, .pos = pos, .logits = want};
		cr_assert_eq(moe_fwd_step(f, out, &bt), MOE_OK, "%s", moe_err_detail());
		memcpy(got + (size_t)k++ * (size_t)nv, out + (size_t)row_a * (size_t)nv,
		       sizeof(float) * (size_t)nv);
		step++;
	}
	moe_fwd_destroy(f);

	for (int r = 0; r < n_out; r++)
		cr_expect(memcmp(ref + (size_t)r * (size_t)nv, got + (size_t)r * (size_t)nv,
		                 sizeof(float) * (size_t)nv) == 0,
		          "%s: logits row %d of A differ between alone and batched", model, r);
	free(ref), free(got), free(out);
	moe_model_destroy(m);
}

Test(batch_invariance, qwen3next_q4_k_m)
{
	check("qwen3next-kq-Q4_K_M.gguf");
}
Test(batch_invariance, qwen3next_f32)
{
	check("qwen3next-tiny-F32.gguf");
}
Test(batch_invariance, qwen3moe_q4_k_m)
{
	check("qwen3moe-kq-Q4_K_M.gguf");
}
