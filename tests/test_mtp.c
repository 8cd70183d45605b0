/*
 * test_mtp.c - the MTP block (moe_fwd_mtp_draft, o.mtp): its logits and
 * draft chains against llama.cpp's MTP context on the tiny qwen35moe and
 * qwen3next fixtures (*.A.mtp.f32, written by tests/tools/llama_mtp_logits.cpp),
 * the trunk's logits unchanged by it and by drafting, its KV and hidden
 * state following the trunk's through a refused draft (run again, or
 * rewound to the state a step kept), and the refusals;
 * and `moemesh run --spec mtp`: the same text as without it, alone and with
 * the experts on workers, and refused for a file without an MTP block.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/forward.h"
#include "model/sample.h"
#include "tests/test_util.h"

#define N_VOCAB 512
#define N_A     24

/* Sequence A of qwen35moe-tiny-F32.json. */
static const int32_t seq_a[N_A] = {355, 115, 401, 161, 103, 405, 327, 344, 503, 199, 427, 169,
                                   288, 304, 108, 95,  116, 342, 312, 479, 359, 126, 465, 482};

static char *fixture(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");
	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	static char buf[2][1024];
	static int k;
	char *p = buf[k++ % 2];
	snprintf(p, 1024, "%s/%s", dir, name);
	return p;
}

static float *read_f32(const char *path, size_t n)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	float *v = malloc(n * sizeof(float));
	cr_assert_eq(fread(v, sizeof(float), n, f), n, "%s is short", path);
	fclose(f);
	return v;
}

static moe_fwd *ctx(const moe_model *m, bool mtp, int n_slots)
{
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.kv_type = MOE_TYPE_F32;
	o.n_threads = 2;
	o.n_slots = n_slots;
	o.n_ctx = 256;
	o.mtp = mtp;
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	return f;
}

static void step(moe_fwd *f, float *logits, int slot, const int32_t *tok, int n, bool all)
{
	int32_t slots[32], pos[32];
	bool want[32];
	cr_assert(n <= 32);
	const int64_t p0 = moe_fwd_seq_len(f, slot);
	for (int i = 0; i < n; i++) {
		slots[i] = slot;
		pos[i] = (int32_t)(p0 + i);
		want[i] = all || i == n - 1;
	}
	const moe_batch b = {.n_tok = n, .tokens = tok, .slot = slots, .pos = pos, .logits = want};
	cr_assert_eq(moe_fwd_step(f, logits, &b), MOE_OK, "%s", moe_err_detail());
}

/* Token q at position q with the trunk's hidden row of q - 1 gives the
 * logits of llama.cpp's MTP context row q (F32 bar: 1e-4); each is the first
 * pass of a draft made before the trunk runs token q. */
static void logits_match(const char *model, const char *golden)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture(model)), MOE_OK, "%s", moe_err_detail());
	cr_assert(moe_model_has_mtp(m));
	float *gold = read_f32(fixture(golden), (size_t)N_A * N_VOCAB);
	moe_fwd *f = ctx(m, true, 1);
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	float lg[N_VOCAB], trunk[N_VOCAB];
	double worst = 0;
	for (int q = 0; q < N_A; q++) {
		int32_t d[1];
		int nd;
		const int mx = 1;
		cr_assert_eq(
		    moe_fwd_mtp_draft(f, d, &nd, lg, 1, &(int32_t){slot}, &seq_a[q], &mx, 1),
		    MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(nd, 1);
		cr_assert_eq(d[0], moe_argmax(lg, N_VOCAB));
		for (int i = 0; i < N_VOCAB; i++) {
			const double e = fabs((double)lg[i] - gold[(size_t)q * N_VOCAB + i]);
			worst = e > worst ? e : worst;
		}
		step(f, trunk, slot, &seq_a[q], 1, true);
	}
	cr_log_info("%s: MTP logits vs llama.cpp: max abs diff %g", model, worst);
	cr_assert(worst <= 1e-4, "%s: MTP logits differ from llama.cpp's by %g", model, worst);
	moe_fwd_destroy(f);
	free(gold);
	moe_model_destroy(m);
}

Test(mtp, logits_match_llamacpp)
{
	logits_match("qwen35moe-tiny-F32.gguf", "qwen35moe-tiny-F32.A.mtp.f32");
}

/* qwen3next's block: the same math with the trunk's plain (partial NEOX)
 * rotation instead of qwen35moe's sections. */
Test(mtp, qwen3next_logits_match_llamacpp)
{
	logits_match("qwen3next-tiny-mtp-F32.gguf", "qwen3next-tiny-mtp-F32.A.mtp.f32");
}

/* A chain of 8 drafts after a prompt, from the trunk's greedy next token, is
 * llama.cpp's (draft-mtp's chain: each pass at the next position with the
 * block's own post-norm output row; `llama_mtp_logits ... chain:8` printed
 * these ids), for sequence A and for G's prompt. */
static void chain(const moe_model *m, const int32_t *prompt, int n, const int32_t *want)
{
	moe_fwd *f = ctx(m, true, 1);
	int s;
	cr_assert_eq(moe_fwd_seq_open(f, &s), MOE_OK);
	float lg[N_VOCAB];
	step(f, lg, s, prompt, n, false);
	const int32_t next = moe_argmax(lg, N_VOCAB);
	int32_t d[8];
	int nd;
	const int mx = 8;
	cr_assert_eq(moe_fwd_mtp_draft(f, d, &nd, NULL, 1, &(int32_t){s}, &next, &mx, 8), MOE_OK,
	             "%s", moe_err_detail());
	cr_assert_eq(nd, 8);
	for (int i = 0; i < 8; i++)
		cr_expect_eq(d[i], want[i], "draft %d: %d, llama.cpp's %d", i, d[i], want[i]);
	moe_fwd_destroy(f);
}

Test(mtp, draft_chain_matches_llamacpp)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	chain(m, seq_a, N_A, (const int32_t[]){452, 415, 182, 136, 98, 445, 268, 364});
	chain(m, (const int32_t[]){315, 220, 293, 72, 66, 74, 285, 294, 86, 77, 304, 78, 87}, 13,
	      (const int32_t[]){3, 338, 375, 1, 334, 295, 65, 1});
	moe_model_destroy(m);
	cr_assert_eq(moe_model_open(&m, fixture("qwen3next-tiny-mtp-F32.gguf")), MOE_OK);
	chain(m, seq_a, N_A, (const int32_t[]){1, 50, 74, 321, 252, 351, 40, 294});
	chain(m, (const int32_t[]){315, 220, 293, 72, 66, 74, 285, 294, 86, 77, 304, 78, 87}, 13,
	      (const int32_t[]){337, 413, 261, 30, 74, 238, 107, 176});
	moe_model_destroy(m);
}

/* The trunk's logits are the same bits with the MTP block kept in step and
 * with drafts of 4 made before every step, as without either. */
Test(mtp, trunk_unchanged)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	moe_fwd *plain = ctx(m, false, 1), *f = ctx(m, true, 1);
	int s0, s1;
	cr_assert_eq(moe_fwd_seq_open(plain, &s0), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s1), MOE_OK);
	float a[4 * N_VOCAB], b[4 * N_VOCAB];
	step(plain, a, s0, seq_a, 4, true);
	step(f, b, s1, seq_a, 4, true);
	cr_assert_eq(memcmp(a, b, sizeof a), 0);
	for (int q = 4; q < N_A; q++) {
		int32_t d[4];
		int nd;
		const int mx = 4;
		cr_assert_eq(
		    moe_fwd_mtp_draft(f, d, &nd, NULL, 1, &(int32_t){s1}, &seq_a[q], &mx, 4),
		    MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(nd, 4);
		for (int i = 0; i < nd; i++)
			cr_assert(d[i] >= 0 && d[i] < N_VOCAB);
		step(plain, a, s0, &seq_a[q], 1, true);
		step(f, b, s1, &seq_a[q], 1, true);
		cr_assert_eq(memcmp(a, b, N_VOCAB * sizeof(float)), 0, "position %d", q);
		cr_assert_eq(moe_fwd_seq_len(f, s1), q + 1);
	}
	moe_fwd_destroy(plain);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* A step with refused drafts, the state put back and the taken tokens run
 * again (as run and serve do) leaves the MTP block where a plain run of the
 * same tokens leaves it: the next draft's logits and tokens are the same. */
Test(mtp, follows_rollback)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	moe_fwd *f = ctx(m, true, 2);
	int a, b;
	cr_assert_eq(moe_fwd_seq_open(f, &a), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &b), MOE_OK);
	float lg[8 * N_VOCAB];
	step(f, lg, a, seq_a, 12, false);
	step(f, lg, b, seq_a, 8, false);
	/* b: tokens 8.. with three wrong drafts, refused */
	const size_t st = moe_fwd_state_size(f);
	cr_assert_gt(st, 0);
	void *snap = malloc(st);
	cr_assert_eq(moe_fwd_seq_state_read(f, b, snap), MOE_OK);
	const int32_t wrong[4] = {seq_a[8], 7, 9, 11};
	step(f, lg, b, wrong, 4, true);
	cr_assert_eq(moe_fwd_seq_state_write(f, b, snap), MOE_OK);
	cr_assert_eq(moe_fwd_seq_set_len(f, b, 8), MOE_OK);
	step(f, lg, b, seq_a + 8, 4, false);
	cr_assert_eq(moe_fwd_seq_len(f, a), moe_fwd_seq_len(f, b));

	/* both slots draft from token 12 in one call */
	int32_t d[2][6];
	float l1[2][N_VOCAB];
	int nd[2];
	const int32_t slots[2] = {a, b}, toks[2] = {seq_a[12], seq_a[12]};
	const int mx[2] = {6, 6};
	cr_assert_eq(moe_fwd_mtp_draft(f, &d[0][0], nd, &l1[0][0], 2, slots, toks, mx, 6), MOE_OK,
	             "%s", moe_err_detail());
	cr_assert_eq(nd[0], 6);
	cr_assert_eq(nd[1], 6);
	cr_assert_eq(memcmp(l1[0], l1[1], sizeof l1[0]), 0);
	cr_assert_eq(memcmp(d[0], d[1], sizeof d[0]), 0);
	free(snap);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* A draft's first pass is the next step's first MTP catch-up row (the same
 * token, position and hidden input), which therefore is not run again: the
 * MTP block's KV is the same bytes as without drafting, and where the step
 * runs another token there than the draft started from, that row runs. */
Test(mtp, first_pass_stands_for_the_catch_up)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	moe_fwd *f = ctx(m, true, 2);
	int a, b;
	cr_assert_eq(moe_fwd_seq_open(f, &a), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &b), MOE_OK);
	float la[2 * N_VOCAB], lb[2 * N_VOCAB];
	step(f, la, a, seq_a, 4, false);
	step(f, lb, b, seq_a, 4, false);
	for (int q = 4; q < 16; q += 2) {
		int32_t d[3];
		int nd;
		const int mx = 3;
		/* even q: from the token the step runs; odd: from another one */
		const int32_t from = q % 4 == 0 ? seq_a[q] : 7;
		cr_assert_eq(moe_fwd_mtp_draft(f, d, &nd, NULL, 1, &(int32_t){b}, &from, &mx, 3),
		             MOE_OK, "%s", moe_err_detail());
		step(f, la, a, seq_a + q, 2, true);
		step(f, lb, b, seq_a + q, 2, true);
		cr_assert_eq(memcmp(la, lb, sizeof la), 0, "position %d", q);
	}
	const size_t pb = moe_fwd_kv_pos_bytes(f);
	unsigned char *ka = malloc(16 * pb), *kb = malloc(16 * pb);
	cr_assert_eq(moe_fwd_seq_kv_read(f, a, 0, 16, ka), MOE_OK);
	cr_assert_eq(moe_fwd_seq_kv_read(f, b, 0, 16, kb), MOE_OK);
	cr_assert_eq(memcmp(ka, kb, 16 * pb), 0, "the KV (the MTP block's last in each position)");
	int32_t d[2][4];
	int nd[2];
	const int32_t slots[2] = {a, b}, toks[2] = {seq_a[16], seq_a[16]};
	const int mx[2] = {4, 4};
	cr_assert_eq(moe_fwd_mtp_draft(f, &d[0][0], nd, NULL, 2, slots, toks, mx, 4), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert_eq(memcmp(d[0], d[1], sizeof d[0]), 0);
	free(ka);
	free(kb);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* A step of drafts keeps the states it passes through (keep_states): going
 * back to one of them after a refused draft (moe_fwd_seq_rewind) leaves the
 * slot, its DeltaNet state, last trunk hidden row and KV, where a plain run of
 * the taken tokens leaves it, bit for bit: the same state, the same next
 * logits and drafts.  Lengths the step kept nothing for are refused. */
Test(mtp, rewind_equals_the_plain_run)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.kv_type = MOE_TYPE_F32;
	o.n_threads = 2;
	o.n_slots = 3;
	o.n_ctx = 256;
	o.mtp = true;
	o.keep_states = 4;
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_fwd_keep_states(f), 4);
	int a, b, c;
	cr_assert_eq(moe_fwd_seq_open(f, &a), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &b), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &c), MOE_OK);
	float la[2 * N_VOCAB], lb[4 * N_VOCAB];
	step(f, la, a, seq_a, 10, false); /* a: the plain run, to length 10 */
	step(f, lb, b, seq_a, 8, false);
	step(f, lb, c, seq_a, 8, false);
	/* a prompt step keeps nothing: its rows want no logits */
	cr_assert_eq(moe_fwd_seq_rewind(f, b, 5), MOE_ERR_INVAL);
	cr_assert_eq(moe_fwd_seq_rewind(f, b, 8), MOE_OK); /* its length: nothing to do */
	/* b: token 8, drafts 9 (right), 7 and 11 (wrong) -> back to length 10;
	 * c: token 8, drafts 7, 9, 11 all wrong -> back to length 9 */
	const int32_t db[4] = {seq_a[8], seq_a[9], 7, 11}, dc[4] = {seq_a[8], 7, 9, 11};
	step(f, lb, b, db, 4, true);
	step(f, lb, c, dc, 4, true);
	cr_assert_eq(moe_fwd_seq_rewind(f, b, 8), MOE_ERR_INVAL); /* before its first row */
	cr_assert_eq(moe_fwd_seq_rewind(f, b, 10), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_fwd_seq_len(f, b), 10);
	cr_assert_eq(moe_fwd_seq_rewind(f, b, 9), MOE_ERR_INVAL); /* the checkpoints went */
	cr_assert_eq(moe_fwd_seq_rewind(f, c, 9), MOE_OK, "%s", moe_err_detail());
	step(f, lb, c, seq_a + 9, 1, true);

	const size_t st = moe_fwd_state_size(f);
	cr_assert_gt(st, 0);
	unsigned char *sa = malloc(st), *sb = malloc(st), *sc = malloc(st);
	cr_assert_eq(moe_fwd_seq_state_read(f, a, sa), MOE_OK);
	cr_assert_eq(moe_fwd_seq_state_read(f, b, sb), MOE_OK);
	cr_assert_eq(moe_fwd_seq_state_read(f, c, sc), MOE_OK);
	cr_assert_eq(memcmp(sa, sb, st), 0, "the state after a rewind to 10");
	cr_assert_eq(memcmp(sa, sc, st), 0, "the state after a rewind to 9 and token 9");

	/* the next steps and drafts of all three are the same bits */
	step(f, la, a, seq_a + 10, 2, true);
	step(f, lb, b, seq_a + 10, 2, true);
	cr_assert_eq(memcmp(la, lb, 2 * N_VOCAB * sizeof(float)), 0);
	step(f, lb, c, seq_a + 10, 2, true);
	cr_assert_eq(memcmp(la, lb, 2 * N_VOCAB * sizeof(float)), 0);
	int32_t d[3][4];
	int nd[3];
	const int32_t slots[3] = {a, b, c}, toks[3] = {seq_a[12], seq_a[12], seq_a[12]};
	const int mx[3] = {4, 4, 4};
	cr_assert_eq(moe_fwd_mtp_draft(f, &d[0][0], nd, NULL, 3, slots, toks, mx, 4), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert_eq(memcmp(d[0], d[1], sizeof d[0]), 0);
	cr_assert_eq(memcmp(d[0], d[2], sizeof d[0]), 0);
	free(sa);
	free(sb);
	free(sc);
	moe_fwd_destroy(f);

	/* more checkpoints than MOE_FWD_KEEP_MAX_BYTES hold: none */
	o.keep_states = 4096;
	o.n_slots = 65536 / 64;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_fwd_keep_states(f), 0);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* Drafting is repeatable (it leaves the slot as it was), its length is
 * bounded by max and by n_ctx, and bad arguments are refused. */
Test(mtp, bounds)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	moe_fwd *f = ctx(m, true, 1);
	int s;
	cr_assert_eq(moe_fwd_seq_open(f, &s), MOE_OK);
	float lg[N_VOCAB];
	step(f, lg, s, seq_a, 10, false);
	int32_t d1[8], d2[8];
	int n1, n2;
	const int mx = 8;
	cr_assert_eq(moe_fwd_mtp_draft(f, d1, &n1, NULL, 1, &(int32_t){s}, &seq_a[10], &mx, 8),
	             MOE_OK);
	cr_assert_eq(moe_fwd_mtp_draft(f, d2, &n2, NULL, 1, &(int32_t){s}, &seq_a[10], &mx, 8),
	             MOE_OK);
	cr_assert_eq(n1, 8);
	cr_assert_eq(n2, 8);
	cr_assert_eq(memcmp(d1, d2, sizeof d1), 0);
	cr_assert_eq(moe_fwd_seq_len(f, s), 10);
	moe_fwd_destroy(f);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_ctx = 12;
	o.mtp = true;
	o.n_threads = 1;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK);
	cr_assert_eq(moe_fwd_seq_open(f, &s), MOE_OK);
	step(f, lg, s, seq_a, 8, false);
	cr_assert_eq(moe_fwd_mtp_draft(f, d1, &n1, NULL, 1, &(int32_t){s}, &seq_a[8], &mx, 8),
	             MOE_OK);
	cr_assert_eq(n1, 3, "drafts at positions 9..11 of n_ctx 12, not %d", n1);
	/* errors: slot not open, repeated, token, max over stride */
	const int32_t two[2] = {s, s}, tk[2] = {1, 1};
	const int m2[2] = {1, 1}, big = 9;
	cr_assert_eq(moe_fwd_mtp_draft(f, d1, &n1, NULL, 1, &(int32_t){3}, tk, &mx, 8),
	             MOE_ERR_INVAL);
	int nd2[2];
	cr_assert_eq(moe_fwd_mtp_draft(f, d1, nd2, NULL, 2, two, tk, m2, 8), MOE_ERR_INVAL);
	cr_assert_eq(
	    moe_fwd_mtp_draft(f, d1, &n1, NULL, 1, &(int32_t){s}, &(int32_t){N_VOCAB}, &mx, 8),
	    MOE_ERR_INVAL);
	cr_assert_eq(moe_fwd_mtp_draft(f, d1, &n1, NULL, 1, &(int32_t){s}, tk, &big, 8),
	             MOE_ERR_INVAL);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* Files without an MTP block, and contexts made without o.mtp, refuse. */
Test(mtp, refused)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, fixture("qwen3next-tiny-F32.gguf")), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert(!moe_model_has_mtp(m));
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.mtp = true;
	o.n_ctx = 64;
	moe_fwd *f = NULL;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_ERR_UNSUPPORTED);
	cr_assert(strstr(moe_err_detail(), "MTP") != NULL, "%s", moe_err_detail());
	moe_model_destroy(m);

	cr_assert_eq(moe_model_open(&m, fixture("qwen35moe-tiny-F32.gguf")), MOE_OK);
	o.mtp = false;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK);
	int s;
	cr_assert_eq(moe_fwd_seq_open(f, &s), MOE_OK);
	int32_t d[1];
	int n;
	const int mx = 1;
	cr_assert_eq(moe_fwd_mtp_draft(f, d, &n, NULL, 1, &(int32_t){s}, &(int32_t){1}, &mx, 1),
	             MOE_ERR_UNSUPPORTED);
	moe_fwd_destroy(f);
	moe_model_destroy(m);
}

/* ---- moemesh run --spec mtp ------------------------------------------------------ */

/* `run -m fixture ARGS`: its exit status; stdout into out, stderr into err. */
static int run_cli(char *out, char *err, size_t size, const char *model, const char *args)
{
	char log[] = "/tmp/moe_mtp_err_XXXXXX";
	int fd = mkstemp(log);
	cr_assert(fd >= 0);
	close(fd);
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "%s run -m %s/%s %s 2>%s", bin(), fixtures(), model, args, log);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, size - 1, p);
	out[n] = 0;
	const int st = pclose(p);
	FILE *e = fopen(log, "rb");
	cr_assert_not_null(e);
	n = fread(err, 1, size - 1, e);
	err[n] = 0;
	fclose(e);
	unlink(log);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define PROMPT "--tokens 315,220,293,72,66,74,285,294,86,77,304,78,87 -n 64 --ignore-eos"

/* --spec mtp gives the text run gives without it, greedy and seeded, alone and
 * on workers, drafting and refusing drafts; its accepted count over the
 * cases is not 0 (random weights: few are taken). */
Test(mtp_cli, run_text_unchanged, .timeout = 300)
{
	static const char *const cases[] = {
	    "--temp 0 --threads 1", "--temp 0.8 --seed 3 --threads 1",
	    "--temp 0 --threads 1 --workers 2 --draft-max 3", "--temp 0 --threads 2 --kv f32"};
	static char plain[8192], spec[8192], e1[8192], e2[8192];
	long taken = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char a[512];
		snprintf(a, sizeof a, PROMPT " %s", cases[i]);
		cr_assert_eq(run_cli(plain, e1, sizeof plain, "qwen35moe-tiny-F32.gguf", a), 0,
		             "%s", e1);
		snprintf(a, sizeof a, PROMPT " %s --spec mtp", cases[i]);
		cr_assert_eq(run_cli(spec, e2, sizeof spec, "qwen35moe-tiny-F32.gguf", a), 0, "%s",
		             e2);
		cr_expect_str_eq(spec, plain, "%s: --spec mtp changed the text", cases[i]);
		const char *line = strstr(e2, "spec: mtp, ");
		cr_assert_not_null(line, "no spec line in: %s", e2);
		long drafted = 0, accepted = 0;
		cr_assert_eq(
		    sscanf(line, "spec: mtp, %ld drafted, %ld accepted", &drafted, &accepted), 2);
		cr_expect_gt(drafted, 0, "%s: nothing drafted", cases[i]);
		cr_expect_lt(accepted, drafted, "%s: no draft refused: %s", cases[i], line);
		cr_expect_null(strstr(e1, "spec:"), "a spec line without --spec");
		taken += accepted;
	}
	cr_expect_gt(taken, 0, "no MTP draft was ever taken");
}

/* The same on a qwen3next file with an MTP block, its trunk's experts on
 * workers. */
Test(mtp_cli, qwen3next_text_unchanged, .timeout = 120)
{
	static char plain[8192], spec[8192], e1[8192], e2[8192];
	const char *a = PROMPT " --temp 0 --threads 1 --workers 2";
	cr_assert_eq(run_cli(plain, e1, sizeof plain, "qwen3next-tiny-mtp-F32.gguf", a), 0, "%s",
	             e1);
	char b[512];
	snprintf(b, sizeof b, "%s --spec mtp", a);
	cr_assert_eq(run_cli(spec, e2, sizeof spec, "qwen3next-tiny-mtp-F32.gguf", b), 0, "%s", e2);
	cr_expect_str_eq(spec, plain, "--spec mtp changed the text");
	long drafted = 0, accepted = 0;
	const char *line = strstr(e2, "spec: mtp, ");
	cr_assert_not_null(line, "no spec line in: %s", e2);
	cr_assert_eq(sscanf(line, "spec: mtp, %ld drafted, %ld accepted", &drafted, &accepted), 2);
	cr_expect_gt(drafted, 0, "nothing drafted");
}

/* The trained KJV demo model (models/kjv-qwen35moe-Q4_K_M.gguf, MTP block
 * trained on the next-next token): the same text with --spec mtp, greedy and
 * sampled, alone and on workers; there over a quarter of the drafts are
 * taken (45 % when this test was written; 0.7 % on the random-weight
 * fixture), and some are refused. */
Test(mtp_cli, trained_model_text_unchanged, .timeout = 300)
{
	static const char *const cases[] = {"--temp 0 --threads 1",
	                                    "--temp 0.8 --seed 5 --threads 1",
	                                    "--temp 0 --threads 1 --workers 2 --draft-max 2"};
	static char plain[8192], spec[8192], e1[8192], e2[8192];
	long drafted = 0, accepted = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char a[512];
		snprintf(a, sizeof a, "-p 'And the LORD said' -n 64 %s", cases[i]);
		cr_assert_eq(
		    run_cli(plain, e1, sizeof plain, "../../models/kjv-qwen35moe-Q4_K_M.gguf", a),
		    0, "%s", e1);
		snprintf(a, sizeof a, "-p 'And the LORD said' -n 64 %s --spec mtp", cases[i]);
		cr_assert_eq(
		    run_cli(spec, e2, sizeof spec, "../../models/kjv-qwen35moe-Q4_K_M.gguf", a), 0,
		    "%s", e2);
		cr_expect_str_eq(spec, plain, "%s: --spec mtp changed the text", cases[i]);
		const char *line = strstr(e2, "spec: mtp, ");
		cr_assert_not_null(line, "no spec line in: %s", e2);
		long d = 0, k = 0;
		cr_assert_eq(sscanf(line, "spec: mtp, %ld drafted, %ld accepted", &d, &k), 2);
		drafted += d;
		accepted += k;
	}
	cr_expect_gt(4 * accepted, drafted, "%ld of %ld drafts taken", accepted, drafted);
	cr_expect_lt(accepted, drafted, "no draft refused");
}

Test(mtp_cli, refused_without_an_mtp_block)
{
	static char out[4096], err[4096];
	cr_expect_neq(run_cli(out, err, sizeof out, "qwen3next-tiny-F32.gguf",
	                      "--tokens 1,2,3 -n 4 --spec mtp"),
	              0);
	cr_expect(strstr(err, "has no MTP (nextn) block") != NULL, "%s", err);
}
