/* test_sample.c - sampling: greedy, penalties, filters, seeded determinism,
 * the distribution of draws, and stop strings. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "model/sample.h"

static moe_sampler *make(const moe_sampler_params *p, int n)
{
	moe_sampler *s = NULL;
	cr_assert_eq(moe_sampler_create(&s, p, n), MOE_OK);
	return s;
}

static moe_sampler_params greedy(void)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 0.0f;
	return p;
}

Test(sample, argmax_lowest_id_on_ties_and_skips_nan)
{
	const float x[5] = {1.0f, 3.0f, NAN, 3.0f, -1.0f};
	cr_assert_eq(moe_argmax(x, 5), 1);
	const float y[2] = {NAN, -5.0f};
	cr_assert_eq(moe_argmax(y, 2), 1);
}

Test(sample, greedy_picks_argmax)
{
	moe_sampler_params p = greedy();
	moe_sampler *s = make(&p, 4);
	const float l[4] = {0.5f, 2.0f, 2.0f, 1.0f};
	int32_t t = -1;
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 1);
	moe_sampler_destroy(s);
}

Test(sample, repetition_and_presence_penalties)
{
	moe_sampler_params p = greedy();
	p.repeat_penalty = 2.0f; /* 2.0 -> 1.0 for a seen token */
	moe_sampler *s = make(&p, 3);
	const float l[3] = {1.45f, 2.0f, -1.0f};
	moe_sampler_accept(s, 1);
	int32_t t;
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 0);
	moe_sampler_destroy(s);

	p = greedy();
	p.presence_penalty = 0.4f;
	p.frequency_penalty = 0.1f;
	s = make(&p, 3);
	moe_sampler_accept(s, 1);
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 1);       /* 2.0 - 0.4 - 0.1 = 1.5 > 1.45 */
	moe_sampler_accept(s, 1); /* now 2.0 - 0.4 - 0.2 = 1.4 < 1.45 */
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 0);
	moe_sampler_destroy(s);
}

Test(sample, penalty_window_forgets_old_tokens)
{
	moe_sampler_params p = greedy();
	p.presence_penalty = 10.0f;
	p.penalty_last_n = 2;
	moe_sampler *s = make(&p, 3);
	const float l[3] = {0.0f, 1.0f, 0.5f};
	moe_sampler_accept(s, 1);
	moe_sampler_accept(s, 0);
	int32_t t;
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 2);
	moe_sampler_accept(s, 0);
	moe_sampler_accept(s, 0); /* token 1 has left the window */
	cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
	cr_assert_eq(t, 1);
	moe_sampler_destroy(s);
}

Test(sample, top_k_one_is_greedy)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 5.0f;
	p.top_k = 1;
	p.seed = 3;
	moe_sampler *s = make(&p, 4);
	const float l[4] = {0.1f, 0.2f, 0.3f, 0.25f};
	for (int i = 0; i < 50; i++) {
		int32_t t;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		cr_assert_eq(t, 2);
	}
	moe_sampler_destroy(s);
}

Test(sample, same_seed_same_tokens_and_reset_replays)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 1.0f;
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.seed = 1234;
	moe_sampler *a = make(&p, 8), *b = make(&p, 8);
	const float l[8] = {0, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
	int32_t first[40];
	bool differs = false;
	for (int i = 0; i < 40; i++) {
		int32_t x, y;
		cr_assert_eq(moe_sampler_sample(a, &x, l), MOE_OK);
		cr_assert_eq(moe_sampler_sample(b, &y, l), MOE_OK);
		cr_assert_eq(x, y);
		first[i] = x;
		differs |= x != first[0];
	}
	cr_assert(differs, "40 draws from a flat distribution were all equal");
	moe_sampler_reset(a);
	for (int i = 0; i < 40; i++) {
		int32_t x;
		cr_assert_eq(moe_sampler_sample(a, &x, l), MOE_OK);
		cr_assert_eq(x, first[i]);
	}
	moe_sampler_destroy(a);
	moe_sampler_destroy(b);
}

Test(sample, draws_follow_the_distribution)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 1.0f;
	p.top_k = 0;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.seed = 99;
	moe_sampler *s = make(&p, 3);
	/* probabilities 0.5, 0.3, 0.2 */
	const float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
	int cnt[3] = {0};
	const int N = 20000;
	for (int i = 0; i < N; i++) {
		int32_t t;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		cnt[t]++;
	}
	/* 5 sigma for p = 0.5 at N = 20000 is ~0.018 */
	cr_assert(fabs(cnt[0] / (double)N - 0.5) < 0.02, "p0 %g", cnt[0] / (double)N);
	cr_assert(fabs(cnt[1] / (double)N - 0.3) < 0.02, "p1 %g", cnt[1] / (double)N);
	cr_assert(fabs(cnt[2] / (double)N - 0.2) < 0.02, "p2 %g", cnt[2] / (double)N);
	moe_sampler_destroy(s);
}

Test(sample, top_p_and_min_p_cut_the_tail)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 1.0f;
	p.top_k = 0;
	p.top_p = 0.75f; /* 0.5 + 0.3 >= 0.75: tokens 0 and 1 only */
	p.min_p = 0.0f;
	p.seed = 5;
	moe_sampler *s = make(&p, 3);
	const float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
	int seen1 = 0;
	for (int i = 0; i < 2000; i++) {
		int32_t t;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		cr_assert_neq(t, 2);
		seen1 += t == 1;
	}
	cr_assert(seen1 > 0);
	moe_sampler_destroy(s);

	p.top_p = 1.0f;
	p.min_p = 0.5f; /* keep p >= 0.25: tokens 0 and 1 */
	s = make(&p, 3);
	for (int i = 0; i < 2000; i++) {
		int32_t t;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		cr_assert_neq(t, 2);
	}
	moe_sampler_destroy(s);
}

Test(sample, rejects_bad_parameters)
{
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	moe_sampler *s = NULL;
	p.repeat_penalty = 0.0f;
	cr_assert_eq(moe_sampler_create(&s, &p, 10), MOE_ERR_INVAL);
	moe_sampler_params_default(&p);
	cr_assert_eq(moe_sampler_create(&s, &p, 0), MOE_ERR_INVAL);
	cr_assert_null(s);
	moe_sampler_destroy(NULL);
}

Test(sample, stop_strings)
{
	const char *stops[2] = {"\n\n", "END"};
	size_t at;
	const char *t1 = "hello\n\nworld";
	cr_assert(moe_stop_find(&at, t1, strlen(t1), stops, 2));
	cr_assert_eq(at, 5);
	const char *t2 = "the EN";
	cr_assert_not(moe_stop_find(&at, t2, strlen(t2), stops, 2));
	cr_assert_eq(at, 4); /* "EN" might become "END" */
	const char *t3 = "line\n";
	cr_assert_not(moe_stop_find(&at, t3, strlen(t3), stops, 2));
	cr_assert_eq(at, 4);
	const char *t4 = "plain";
	cr_assert_not(moe_stop_find(&at, t4, strlen(t4), stops, 2));
	cr_assert_eq(at, 5);
	const char *t5 = "xENDy\n\n";
	cr_assert(moe_stop_find(&at, t5, strlen(t5), stops, 2));
	cr_assert_eq(at, 1);
}

/* top-k keeps exactly the k best logits (ties to the lower id), found here by
 * brute force, over a big vocabulary full of ties. */
Test(sample, top_k_keeps_the_k_best_of_a_big_vocabulary)
{
	enum { V = 50000, K = 7 };
	static float l[V];
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 5.0f; /* flat: every kept token gets drawn */
	p.top_k = K;
	p.top_p = 1.0f;
	p.min_p = 0.0f;
	p.repeat_penalty = 1.0f;
	uint32_t r = 99;
	for (int i = 0; i < V; i++) {
		r = r * 1103515245u + 12345u;
		l[i] = (float)((r >> 16) % 1000) / 100.0f; /* 1000 values: many ties */
	}
	/* brute force: the K best by (logit desc, id asc) */
	int best[K];
	for (int k = 0; k < K; k++) {
		int b = -1;
		for (int i = 0; i < V; i++) {
			int taken = 0;
			for (int j = 0; j < k; j++)
				taken |= best[j] == i;
			if (!taken && (b < 0 || l[i] > l[b]))
				b = i;
		}
		best[k] = b;
	}
	int seen[K] = {0};
	for (int it = 0; it < 400; it++) {
		p.seed = (uint64_t)it + 1;
		moe_sampler *s = make(&p, V);
		int32_t t = -1;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		int in = -1;
		for (int k = 0; k < K; k++)
			if (best[k] == t)
				in = k;
		cr_assert_geq(in, 0, "drew %d, not among the %d best", t, K);
		seen[in]++;
		moe_sampler_destroy(s);
	}
	for (int k = 0; k < K; k++)
		cr_assert_gt(seen[k], 0, "token %d of the best %d never drawn", best[k], K);
}

/* top-p without top-k over a big vocabulary keeps exactly the nucleus of the
 * softmax over all tokens, found here by brute force: once where it is a
 * few tokens (the sampler's short cut) and once where it is thousands (its
 * full sort). */
static int cmp_desc(const void *a, const void *b)
{
	const float *x = a, *y = b;
	return (*x < *y) - (*x > *y);
}

static void nucleus_case(float spread)
{
	enum { V = 30000 };
	static float l[V], sorted[V];
	moe_sampler_params p;
	moe_sampler_params_default(&p);
	p.temp = 1.0f;
	p.top_k = 0;
	p.top_p = 0.9f;
	p.min_p = 0.0f;
	p.repeat_penalty = 1.0f;
	uint32_t r = 7;
	for (int i = 0; i < V; i++) {
		r = r * 1103515245u + 12345u;
		l[i] = spread * (float)((r >> 8) % 100000) / 100000.0f;
		sorted[i] = l[i];
	}
	qsort(sorted, V, sizeof(float), cmp_desc);
	double sum = 0, cum = 0;
	for (int i = 0; i < V; i++)
		sum += exp((double)sorted[i] - sorted[0]);
	float cut = sorted[0]; /* the smallest logit inside the nucleus */
	int size = 0;
	for (int i = 0; i < V && cum < 0.9; i++) {
		cum += exp((double)sorted[i] - sorted[0]) / sum;
		cut = sorted[i];
		size = i + 1;
	}
	for (int it = 0; it < 100; it++) {
		p.seed = (uint64_t)it + 11;
		moe_sampler *s = make(&p, V);
		int32_t t = -1;
		cr_assert_eq(moe_sampler_sample(s, &t, l), MOE_OK);
		cr_assert_geq(l[t], cut,
		              "spread %g: drew logit %g below the nucleus (%d tokens, cut %g)",
		              spread, l[t], size, cut);
		moe_sampler_destroy(s);
	}
	cr_log_info("spread %g: nucleus of %d tokens", spread, size);
}

Test(sample, top_p_keeps_the_nucleus_of_a_big_vocabulary)
{
	nucleus_case(400.0f); /* peaked: a short nucleus */
	nucleus_case(1.0f);   /* flat: most of the vocabulary */
}

/* ---- n-gram drafting ------------------------------------------------------------ */

static int draft(int32_t *out, int max, const int32_t *h, size_t n)
{
	return moe_ngram_draft(out, max, h, n);
}

Test(ngram, the_tokens_after_the_earlier_occurrence_of_the_tail)
{
	int32_t d[8];
	/* tail 1 2 3 at 0: then 9 1 2 3 */
	const int32_t a[] = {1, 2, 3, 9, 1, 2, 3};
	cr_assert_eq(draft(d, 8, a, 7), 4);
	cr_expect(d[0] == 9 && d[1] == 1 && d[2] == 2 && d[3] == 3);
	cr_assert_eq(draft(d, 2, a, 7), 2, "max caps the draft");
	/* tail 5 6 at 0 and 3: the latest, 3, then 8 5 */
	const int32_t b[] = {5, 6, 7, 5, 6, 8, 5, 6};
	cr_assert_eq(draft(d, 2, b, 8), 2);
	cr_expect(d[0] == 8 && d[1] == 5, "latest occurrence: %d %d", d[0], d[1]);
	/* the longest tail wins: 1 2 3 4 at 0 (then 0 2 3) over 2 3 4 at 5 (then 7) */
	const int32_t c[] = {1, 2, 3, 4, 0, 2, 3, 4, 7, 1, 2, 3, 4};
	cr_assert_eq(draft(d, 3, c, 13), 3);
	cr_expect(d[0] == 0 && d[1] == 2 && d[2] == 3, "longest tail: %d %d %d", d[0], d[1], d[2]);
}

Test(ngram, nothing_without_a_repeat_of_two_tokens)
{
	int32_t d[8];
	const int32_t a[] = {1, 2, 3, 4};
	cr_expect_eq(draft(d, 8, a, 4), 0);
	const int32_t b[] = {1, 2, 1}; /* one token repeats: shorter than MOE_NGRAM_MIN */
	cr_expect_eq(draft(d, 8, b, 3), 0);
	const int32_t c[] = {7, 7, 7};
	cr_expect_eq(draft(d, 0, c, 3), 0, "max 0");
	cr_expect_eq(draft(d, 8, c, 2), 0, "too short to repeat");
	cr_expect_eq(draft(d, 8, c, 3), 1, "7 7 at 0: then 7");
}

Test(ngram, spec_modes)
{
	moe_spec_mode m = MOE_SPEC_NGRAM;
	cr_expect_eq(moe_spec_mode_parse(&m, "none"), MOE_OK);
	cr_expect_eq(m, MOE_SPEC_NONE);
	cr_expect_eq(moe_spec_mode_parse(&m, "ngram"), MOE_OK);
	cr_expect_eq(m, MOE_SPEC_NGRAM);
	cr_expect_eq(moe_spec_mode_parse(&m, "mtp"), MOE_OK);
	cr_expect_eq(m, MOE_SPEC_MTP);
	cr_expect_eq(moe_spec_mode_parse(&m, "eagle"), MOE_ERR_INVAL);
	cr_expect_str_eq(moe_spec_mode_name(MOE_SPEC_MTP), "mtp");
	cr_expect_eq(moe_spec_mode_check(MOE_SPEC_MTP, true, "x.gguf"), MOE_OK);
	cr_expect_eq(moe_spec_mode_check(MOE_SPEC_NGRAM, false, "x.gguf"), MOE_OK);
	cr_expect_eq(moe_spec_mode_check(MOE_SPEC_MTP, false, "x.gguf"), MOE_ERR_UNSUPPORTED);
	cr_expect(strstr(moe_err_detail(), "x.gguf has no MTP") != NULL, "%s", moe_err_detail());
}

Test(ngram, the_next_draft_bound_follows_what_was_taken)
{
	cr_expect_eq(moe_spec_next_max(2, 2, 2, 8), 4, "taken whole: twice");
	cr_expect_eq(moe_spec_next_max(8, 8, 8, 8), 8, "at most dmax");
	cr_expect_eq(moe_spec_next_max(8, 6, 2, 8), 3, "refused at 2: 3");
	cr_expect_eq(moe_spec_next_max(8, 5, 0, 8), 1, "refused at once: 1");
	cr_expect_eq(moe_spec_next_max(3, 0, 0, 8), 3, "no draft: unchanged");
}
