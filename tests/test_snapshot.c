/* test_snapshot.c - sequence snapshots (the primitives of prefix caching)
 * and the KV cache in blocks: a sequence's KV [0, P) and DeltaNet state at P,
 * read out of one slot and written into a fresh slot (of the same context or
 * another one) that then continues at P, give the logits of the
 * uninterrupted run bit for bit, for both architectures and every KV type, P
 * on either side of KV block boundaries, the KV written in two pieces; KV
 * ranges concatenate; slots, ranges and the budget are checked; blocks are
 * taken as a sequence grows and given back when it is reset or closed. */
#include <criterion/criterion.h>
#include <stdint.h>
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

static moe_fwd *make_fwd(const moe_model *m, moe_type kv, int n_slots, int n_threads, size_t budget)
{
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.kv_type = kv;
	o.n_slots = n_slots;
	o.n_ctx = 1024;
	o.n_threads = n_threads;
	o.kv_budget_bytes = budget;
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

/* Runs tokens [p0, p1) of slot in one step; the logits of every row to out
 * (rows p0.. of [N][n_vocab]), or none if out is NULL. */
static moe_err run(moe_fwd *f, int slot, const int32_t *tok, int p0, int p1, float *out, int32_t nv)
{
	const int n = p1 - p0;
	int32_t *sl = malloc(sizeof(int32_t) * (size_t)n),
	        *pos = malloc(sizeof(int32_t) * (size_t)n);
	bool *want = malloc(sizeof(bool) * (size_t)n);
	cr_assert(sl != NULL && pos != NULL && want != NULL);
	for (int i = 0; i < n; i++)
		sl[i] = slot, pos[i] = p0 + i, want[i] = out != NULL;
	moe_batch b = {.n_tok = n, .tokens = tok + p0, .slot = sl, .pos = pos, .logits = want};
	moe_err err = moe_fwd_step(f, out != NULL ? out + (size_t)p0 * (size_t)nv : NULL, &b);
	free(sl), free(pos), free(want);
	return err;
}

#define N 300

static const int checkpoints[] = {1, 37, 255, 256, 257, 299};
#define N_CP ((int)(sizeof checkpoints / sizeof checkpoints[0]))

static void check_resume(const char *model, moe_type kv)
{
	moe_model *m = open_model(model);
	const int32_t nv = moe_model_hparams(m)->n_vocab;
	const char *kn = moe_fwd_kv_type_name(kv);
	int32_t tok[N];
	random_tokens(tok, N, 42, nv);
	moe_fwd *f = make_fwd(m, kv, 2, 2, 0);
	moe_fwd *g = make_fwd(m, kv, 1, 1, 0); /* another context, one thread */
	const size_t pb = moe_fwd_kv_pos_bytes(f), sb = moe_fwd_state_size(f);
	cr_assert_gt(pb, 0);
	const size_t rows = (size_t)N * (size_t)nv;
	float *ref = malloc(sizeof(float) * rows), *got = malloc(sizeof(float) * rows);
	char *kvs[N_CP], *states[N_CP];
	cr_assert(ref != NULL && got != NULL);

	/* the uninterrupted run, read at every checkpoint on the way */
	int s0;
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	int p = 0;
	for (int k = 0; k < N_CP; k++) {
		const int P = checkpoints[k];
		cr_assert_eq(run(f, s0, tok, p, P, ref, nv), MOE_OK, "%s", moe_err_detail());
		p = P;
		cr_assert_eq(moe_fwd_seq_len(f, s0), P);
		kvs[k] = malloc(pb * (size_t)P);
		states[k] = malloc(sb + 1);
		cr_assert(kvs[k] != NULL && states[k] != NULL);
		cr_assert_eq(moe_fwd_seq_kv_read(f, s0, 0, P, kvs[k]), MOE_OK, "%s",
		             moe_err_detail());
		cr_assert_eq(moe_fwd_seq_state_read(f, s0, states[k]), MOE_OK);
	}
	cr_assert_eq(run(f, s0, tok, p, N, ref, nv), MOE_OK, "%s", moe_err_detail());

	/* KV ranges concatenate: [0, P1) + [P1, P2) == [0, P2) */
	static const int cuts[][2] = {{100, N}, {256, 257}, {1, 255}, {0, 0}};
	char *whole = malloc(pb * N), *parts = malloc(pb * N);
	cr_assert(whole != NULL && parts != NULL);
	for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
		const int p1 = cuts[c][0], p2 = cuts[c][1];
		cr_assert_eq(moe_fwd_seq_kv_read(f, s0, 0, p2, whole), MOE_OK);
		cr_assert_eq(moe_fwd_seq_kv_read(f, s0, 0, p1, parts), MOE_OK);
		cr_assert_eq(moe_fwd_seq_kv_read(f, s0, p1, p2, parts + pb * (size_t)p1), MOE_OK);
		cr_expect(memcmp(whole, parts, pb * (size_t)p2) == 0,
		          "%s %s: KV [0,%d) + [%d,%d) differs from [0,%d)", model, kn, p1, p1, p2,
		          p2);
	}
	/* and the earlier reads are prefixes of the last one */
	for (int k = 0; k < N_CP; k++)
		cr_expect(memcmp(kvs[k], whole, pb * (size_t)checkpoints[k]) == 0,
		          "%s %s: KV [0,%d) read at %d differs from its read at %d", model, kn,
		          checkpoints[k], checkpoints[k], N);
	free(whole), free(parts);

	/* restore each checkpoint into a fresh slot and continue */
	for (int k = 0; k < N_CP; k++) {
		const int P = checkpoints[k];
		moe_fwd *h = k % 2 == 0 ? f : g;
		int s1;
		cr_assert_eq(moe_fwd_seq_open(h, &s1), MOE_OK);
		cr_assert_eq(moe_fwd_seq_kv_write(h, s1, 0, P / 2, kvs[k]), MOE_OK, "%s",
		             moe_err_detail());
		cr_assert_eq(moe_fwd_seq_kv_write(h, s1, P / 2, P, kvs[k] + pb * (size_t)(P / 2)),
		             MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(moe_fwd_seq_len(h, s1), 0, "a KV write leaves the length alone");
		cr_assert_eq(moe_fwd_seq_state_write(h, s1, states[k]), MOE_OK);
		cr_assert_eq(moe_fwd_seq_set_len(h, s1, P), MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(moe_fwd_seq_len(h, s1), P);
		memset(got, 0, sizeof(float) * rows);
		cr_assert_eq(run(h, s1, tok, P, N, got, nv), MOE_OK, "%s", moe_err_detail());
		int bad = 0, first = -1;
		for (int r = P; r < N; r++) {
			if (memcmp(ref + (size_t)r * (size_t)nv, got + (size_t)r * (size_t)nv,
			           sizeof(float) * (size_t)nv) != 0) {
				bad++;
				first = first < 0 ? r : first;
			}
		}
		cr_expect_eq(bad, 0,
		             "%s %s: restored at %d (%s context): %d of %d positions differ from "
		             "the uninterrupted run (first %d)",
		             model, kn, P, h == f ? "same" : "another", bad, N - P, first);
		cr_assert_eq(moe_fwd_seq_close(h, s1), MOE_OK);
		free(kvs[k]), free(states[k]);
	}
	free(ref), free(got);
	moe_fwd_destroy(g);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

static void check_all_kv_types(const char *model)
{
	const moe_type types[] = {MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_Q8_0, MOE_TYPE_Q4_0};
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		check_resume(model, types[i]);
}

Test(snapshot, resume_qwen3next_f32)
{
	check_all_kv_types("qwen3next-tiny-F32.gguf");
}
Test(snapshot, resume_qwen3next_q4_k_m)
{
	check_all_kv_types("qwen3next-kq-Q4_K_M.gguf");
}
Test(snapshot, resume_qwen3moe_f32)
{
	check_all_kv_types("qwen3moe-tiny-F32.gguf");
}
Test(snapshot, resume_qwen3moe_q4_k_m)
{
	check_all_kv_types("qwen3moe-kq-Q4_K_M.gguf");
}
Test(snapshot, resume_qwen35moe_q4_k_m)
{
	check_all_kv_types("qwen35moe-tiny-Q4_K_M.gguf");
}

/* Sizes: state per slot, KV bytes per position in every type (qwen3moe-tiny:
 * 4 attention layers, 2 KV heads of 32), KV type names. */
Test(snapshot, sizes_and_names)
{
	moe_model *m = open_model("qwen3moe-tiny-F32.gguf");
	const struct {
		moe_type t;
		const char *name;
		size_t row;
	} k[] = {{MOE_TYPE_F32, "f32", 64 * 4},
	         {MOE_TYPE_F16, "f16", 64 * 2},
	         {MOE_TYPE_Q8_0, "q8_0", 2 * 34},
	         {MOE_TYPE_Q4_0, "q4_0", 2 * 18}};
	for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
		moe_fwd *f = make_fwd(m, k[i].t, 1, 1, 0);
		cr_expect_eq(moe_fwd_kv_pos_bytes(f), 4 * 2 * k[i].row, "%s", k[i].name);
		cr_expect_eq(moe_fwd_state_size(f), 0);
		cr_expect_str_eq(moe_fwd_kv_type_name(k[i].t), k[i].name);
		moe_type t;
		cr_expect_eq(moe_fwd_kv_type_parse(&t, k[i].name), MOE_OK);
		cr_expect_eq(t, k[i].t);
		moe_fwd_destroy(f);
	}
	moe_type t;
	cr_expect_eq(moe_fwd_kv_type_parse(&t, "q5_0"), MOE_ERR_INVAL);
	cr_expect_not_null(strstr(moe_err_detail(), "q5_0"), "%s", moe_err_detail());
	cr_expect_str_eq(moe_fwd_kv_type_name(MOE_TYPE_Q4_K), "?");
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	cr_expect_eq(o.kv_type, MOE_TYPE_F16);
	cr_expect_eq(o.gdn_chunk, 0, "the recurrent DeltaNet form is the default");
	o.kv_type = MOE_TYPE_Q4_K;
	moe_fwd *f = NULL;
	cr_expect_eq(moe_fwd_create(&f, m, &o), MOE_ERR_INVAL);
	moe_model_destroy(m);

	m = open_model("qwen3next-tiny-F32.gguf");
	f = make_fwd(m, MOE_TYPE_F16, 3, 1, 0);
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t per_layer =
	    ((size_t)(hp->ssm_conv_kernel - 1) * (size_t)hp->ssm_conv_dim +
	     (size_t)hp->ssm_n_v_heads * (size_t)hp->ssm_head_k * (size_t)hp->ssm_head_v) *
	    sizeof(float);
	cr_expect_eq(moe_fwd_state_size(f), 3 * per_layer, "3 DeltaNet layers");
	cr_expect_eq(moe_fwd_state_bytes(f), 3 * moe_fwd_state_size(f), "3 slots");
	cr_expect_eq(moe_fwd_kv_pos_bytes(f), 1 * 2 * 64 * 2, "1 attention layer, f16");
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* Slots and ranges are checked; a snapshot of a qwen3next slot restores the
 * state too (a restored sequence without it gives other logits). */
Test(snapshot, ranges_slots_and_errors)
{
	moe_model *m = open_model("qwen3next-tiny-F32.gguf");
	const int32_t nv = moe_model_hparams(m)->n_vocab;
	int32_t tok[N];
	random_tokens(tok, N, 9, nv);
	moe_fwd *f = make_fwd(m, MOE_TYPE_F16, 2, 1, 0);
	const size_t pb = moe_fwd_kv_pos_bytes(f);
	char *buf = malloc(pb * 1024 + moe_fwd_state_size(f));
	cr_assert_not_null(buf);
	int s0, s1;
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 0, 20, NULL, nv), MOE_OK);

	cr_expect_eq(moe_fwd_seq_kv_read(f, s0, 0, 21, buf), MOE_ERR_INVAL, "past the length");
	cr_expect_not_null(strstr(moe_err_detail(), "[0, 20)"), "%s", moe_err_detail());
	cr_expect_eq(moe_fwd_seq_kv_read(f, s0, 5, 4, buf), MOE_ERR_INVAL, "p0 > p1");
	cr_expect_eq(moe_fwd_seq_kv_read(f, s0, -1, 4, buf), MOE_ERR_INVAL, "negative");
	cr_expect_eq(moe_fwd_seq_kv_read(f, s0, 20, 20, buf), MOE_OK, "empty range");
	cr_expect_eq(moe_fwd_seq_kv_read(f, 1, 0, 0, buf), MOE_ERR_INVAL, "slot not open");
	cr_expect_eq(moe_fwd_seq_kv_read(f, 7, 0, 0, buf), MOE_ERR_INVAL, "no such slot");
	cr_expect_eq(moe_fwd_seq_state_read(f, 1, buf), MOE_ERR_INVAL);
	cr_expect_eq(moe_fwd_seq_state_write(f, -1, buf), MOE_ERR_INVAL);
	cr_expect_eq(moe_fwd_seq_kv_write(f, 1, 0, 1, buf), MOE_ERR_INVAL);
	cr_expect_eq(moe_fwd_seq_set_len(f, 1, 0), MOE_ERR_INVAL);

	cr_assert_eq(moe_fwd_seq_open(f, &s1), MOE_OK);
	cr_expect_eq(moe_fwd_seq_kv_write(f, s1, 1, 2, buf), MOE_ERR_INVAL, "a gap before 1");
	cr_expect_eq(moe_fwd_seq_kv_write(f, s1, 0, 1025, buf), MOE_ERR_INVAL, "past n_ctx");
	cr_expect_eq(moe_fwd_seq_set_len(f, s1, 1), MOE_ERR_INVAL, "nothing held");
	cr_expect_eq(moe_fwd_kv_bytes(f), (size_t)MOE_FWD_KV_BLOCK * pb, "s0's one block only");
	cr_assert_eq(moe_fwd_seq_kv_read(f, s0, 0, 20, buf), MOE_OK);
	cr_assert_eq(moe_fwd_seq_kv_write(f, s1, 0, 20, buf), MOE_OK);
	cr_expect_eq(moe_fwd_seq_set_len(f, s1, 21), MOE_ERR_INVAL, "past what is held");
	cr_assert_eq(moe_fwd_seq_set_len(f, s1, 20), MOE_OK);

	/* without the state, s1 goes elsewhere than s0; with it, the same way */
	float *a = malloc(sizeof(float) * (size_t)N * (size_t)nv);
	float *b = malloc(sizeof(float) * (size_t)N * (size_t)nv);
	cr_assert(a != NULL && b != NULL);
	cr_assert_eq(run(f, s0, tok, 20, 30, a, nv), MOE_OK);
	cr_assert_eq(run(f, s1, tok, 20, 30, b, nv), MOE_OK);
	cr_expect(
	    memcmp(a + 20 * (size_t)nv, b + 20 * (size_t)nv, sizeof(float) * 10 * (size_t)nv) != 0,
	    "the DeltaNet state matters");
	/* set_len shrinks: s1 back to 20 with s0's state at 30 is not s0 at 20,
	 * but s0 truncated to 30 with its own state is s0 */
	cr_assert_eq(moe_fwd_seq_state_read(f, s0, buf), MOE_OK);
	cr_assert_eq(moe_fwd_seq_set_len(f, s0, 30), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 30, 40, a, nv), MOE_OK);
	cr_assert_eq(moe_fwd_seq_set_len(f, s0, 30), MOE_OK, "back to 30 (KV [0,40) held)");
	cr_assert_eq(moe_fwd_seq_state_write(f, s0, buf), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 30, 40, b, nv), MOE_OK);
	cr_expect(
	    memcmp(a + 30 * (size_t)nv, b + 30 * (size_t)nv, sizeof(float) * 10 * (size_t)nv) == 0,
	    "rewound to 30 with the state at 30: the same logits again");
	free(a), free(b), free(buf);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* Blocks are taken as sequences grow and given back on reset and close; a
 * budget of two blocks refuses the third, before anything runs (lengths and
 * bytes unchanged), and the refused step works once a block is free; n_ctx
 * of 2^24 reserves nothing. */
Test(snapshot, kv_blocks_and_budget)
{
	moe_model *m = open_model("qwen3moe-tiny-F32.gguf");
	const int32_t nv = moe_model_hparams(m)->n_vocab;
	int32_t tok[600];
	random_tokens(tok, 600, 5, nv);
	moe_fwd *f = make_fwd(m, MOE_TYPE_Q8_0, 2, 1, 0);
	const size_t blk = (size_t)MOE_FWD_KV_BLOCK * moe_fwd_kv_pos_bytes(f);
	cr_expect_eq(moe_fwd_kv_bytes(f), 0);
	cr_expect_eq(moe_fwd_kv_capacity(f), SIZE_MAX);
	int s0, s1;
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s1), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 0, 1, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), blk);
	cr_assert_eq(run(f, s0, tok, 1, 256, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), blk, "256 positions: one block");
	cr_assert_eq(run(f, s0, tok, 256, 257, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk);
	cr_assert_eq(run(f, s1, tok, 0, 3, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), 3 * blk);
	cr_assert_eq(moe_fwd_seq_reset(f, s0), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), blk, "reset gives s0's blocks back");
	cr_assert_eq(moe_fwd_seq_close(f, s1), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), 0, "close gives s1's block back");
	moe_fwd_destroy(f);

	f = make_fwd(m, MOE_TYPE_Q8_0, 2, 1, 2 * blk + blk / 2);
	cr_expect_eq(moe_fwd_kv_capacity(f), 2 * blk, "the budget in whole blocks");
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s1), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 0, 300, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk);
	/* s1's first token needs a third block */
	cr_expect_eq(run(f, s1, tok, 0, 1, NULL, nv), MOE_ERR_NOMEM);
	cr_expect_not_null(strstr(moe_err_detail(), "budget"), "%s", moe_err_detail());
	cr_log_info("%s", moe_err_detail());
	cr_expect_eq(moe_fwd_seq_len(f, s1), 0);
	/* a step with s0's next token and s1's first: refused, nothing changed */
	int32_t t2[2] = {tok[300], tok[0]}, sl2[2] = {s0, s1}, p2[2] = {300, 0};
	moe_batch b = {.n_tok = 2, .tokens = t2, .slot = sl2, .pos = p2};
	float *out = malloc(sizeof(float) * 2 * (size_t)nv);
	cr_assert_not_null(out);
	cr_expect_eq(moe_fwd_step(f, out, &b), MOE_ERR_NOMEM);
	cr_expect_eq(moe_fwd_seq_len(f, s0), 300);
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk);
	/* s0 past 512 positions needs a third block too */
	cr_expect_eq(run(f, s0, tok, 300, 513, NULL, nv), MOE_ERR_NOMEM);
	cr_expect_eq(moe_fwd_seq_len(f, s0), 300);
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk);
	/* a KV write past the budget is refused too */
	char *kvb = malloc(moe_fwd_kv_pos_bytes(f) * 300);
	cr_assert_not_null(kvb);
	cr_assert_eq(moe_fwd_seq_kv_read(f, s0, 0, 300, kvb), MOE_OK);
	cr_expect_eq(moe_fwd_seq_kv_write(f, s1, 0, 300, kvb), MOE_ERR_NOMEM);
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk, "nothing kept of the refused write");
	/* with s0 shortened to 200 positions, one block is free for s1 */
	cr_assert_eq(moe_fwd_seq_set_len(f, s0, 200), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), blk);
	cr_expect_eq(moe_fwd_step(f, out,
	                          &(moe_batch){.n_tok = 2,
	                                       .tokens = (int32_t[]){tok[200], tok[0]},
	                                       .slot = sl2,
	                                       .pos = (int32_t[]){200, 0}}),
	             MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(moe_fwd_kv_bytes(f), 2 * blk);
	free(kvb), free(out);
	moe_fwd_destroy(f);

	/* a context as long as 2^24 positions takes memory only as it goes */
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_ctx = 1 << 24;
	o.n_threads = 1;
	o.n_slots = 64;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(moe_fwd_kv_bytes(f), 0);
	cr_assert_eq(moe_fwd_seq_open(f, &s0), MOE_OK);
	cr_assert_eq(run(f, s0, tok, 0, 10, NULL, nv), MOE_OK);
	cr_expect_eq(moe_fwd_kv_bytes(f), (size_t)MOE_FWD_KV_BLOCK * moe_fwd_kv_pos_bytes(f));
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}
