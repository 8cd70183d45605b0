/*
 * test_overlap.c - two micro-batches (moe_fwd_opts.overlap with the cluster's
 * moe_cluster_overlap_backend): batched steps on workers give the logits of
 * one process and of the cluster without overlap bit for bit, on a model with
 * a shared expert (qwen3next: DeltaNet and gated attention) and on models
 * without (qwen3moe) and the demo model; the steps are cut into micro-batches
 * where they can be (and only there: the count of expert calls says so), and
 * ERROR replies under overlap (a micro-batch's retry queued behind the other's
 * RESULT, which its wait then reads into the other's stash) change no bit;
 * the cluster gives the second backend only with --overlap (it is off by
 * default); a worker lost under overlap changes no bit either.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/forward.h"
#include "tests/test_util.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v != NULL, "%s is not set", name);
	return v;
}

/* ---- workers --------------------------------------------------------------------- */

static pid_t g_workers[4];

/* .fini: no worker outlives its test. */
static void reap_workers(void)
{
	for (int i = 0; i < 4; i++) {
		if (g_workers[i] > 0) {
			kill(g_workers[i], SIGKILL);
			waitpid(g_workers[i], NULL, 0);
			g_workers[i] = 0;
		}
	}
}

/* Starts worker k on ipc://sock: `moemesh worker`, or with fault (not NULL:
 * "--error-on" or "--die-after") the test harness with that option and arg;
 * waits until it listens. */
static void start_harness(int k, const char *model, const char *sock, const char *fault,
                          const char *arg)
{
	char cmd[4096];
	unlink(sock);
	if (fault != NULL)
		snprintf(
		    cmd, sizeof cmd,
		    "exec '%s' %s '%s' -m '%s' --listen ipc://%s --threads 1 --ready-fd 3 --quiet",
		    env("MOE_TEST_WORKER"), fault, arg, model, sock);
	else
		snprintf(
		    cmd, sizeof cmd,
		    "exec '%s' worker -m '%s' --listen ipc://%s --threads 1 --ready-fd 3 --quiet",
		    env("MOE_BIN"), model, sock);
	g_workers[k] = spawn_ready(cmd, sock);
}

static void start_worker(int k, const char *model, const char *sock, const char *error_on)
{
	start_harness(k, model, sock, error_on != NULL ? "--error-on" : NULL, error_on);
}

/* ---- the steps ------------------------------------------------------------------------ */

#define N_SEQ    5
#define N_DECODE 6
#define MAX_ROWS 64

/* One step: tokens of the given slots (each continuing its sequence), every
 * row's logits wanted. */
typedef struct step {
	int n;
	int32_t slot[MAX_ROWS];
} step;

/* Prompts of 3, 1, 4, 2 and 5 tokens side by side (cut between sequences
 * 2 and 3); two sequences interleaved then three more (cut after the
 * interleaved ones); two interleaved only (no cut: one pass); then every
 * sequence decodes one token a step. */
static int make_steps(step *st)
{
	static const int plen[N_SEQ] = {3, 1, 4, 2, 5};
	int n = 0;
	st[n] = (step){0};
	for (int s = 0; s < N_SEQ; s++)
		for (int i = 0; i < plen[s]; i++)
			st[n].slot[st[n].n++] = s;
	n++;
	st[n++] = (step){.n = 7, .slot = {0, 1, 0, 1, 2, 3, 4}};
	st[n++] = (step){.n = 4, .slot = {2, 3, 2, 3}};
	for (int d = 0; d < N_DECODE; d++) {
		st[n] = (step){.n = N_SEQ};
		for (int s = 0; s < N_SEQ; s++)
			st[n].slot[s] = s;
		n++;
	}
	return n;
}

/* Steps whose rows can be cut into two micro-batches (all but one). */
#define N_CUT_STEPS (2 + N_DECODE)

/* Runs the steps (tokens from a fixed sequence, not from the logits) on one
 * process (cl NULL) or on cl with or without overlap; every row's logits in
 * turn into out (n_rows rows).  The cluster's expert calls are counted into
 * *calls.  Steps of 2 tokens or more are cut where they can be, or with
 * min_default from the default minimum on. */
static void run_steps(const moe_model *m, moe_cluster *cl, bool overlap, float *out, int *n_rows,
                      uint64_t *calls, bool min_default)
{
	const moe_hparams *hp = moe_model_hparams(m);
	step st[16];
	const int n_steps = make_steps(st);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = N_SEQ;
	o.n_ctx = 64;
	o.n_threads = 1;
	if (!min_default)
		o.overlap_min_tok = 2;
	if (cl != NULL) {
		o.experts = moe_cluster_backend(cl);
		o.overlap = overlap ? moe_cluster_overlap_backend(cl) : NULL;
		cr_assert(!overlap || o.overlap != NULL);
	}
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_fwd_has_overlap(f), cl != NULL && overlap);
	if (cl != NULL)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	for (int s = 0; s < N_SEQ; s++) {
		int slot;
		cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
		cr_assert_eq(slot, s);
	}
	const uint64_t c0 = cl != NULL ? moe_cluster_get_counters(cl).layers : 0;
	int32_t len[N_SEQ] = {0}, tok[MAX_ROWS], pos[MAX_ROWS];
	uint32_t rnd = 12345;
	int rows = 0;
	for (int k = 0; k < n_steps; k++) {
		for (int t = 0; t < st[k].n; t++) {
			rnd = rnd * 1103515245u + 12345u;
			tok[t] = (int32_t)((rnd >> 8) % (uint32_t)hp->n_vocab);
			pos[t] = len[st[k].slot[t]]++;
		}
		const moe_batch b = {
		    .n_tok = st[k].n, .tokens = tok, .slot = st[k].slot, .pos = pos};
		cr_assert_eq(moe_fwd_step(f, out + (size_t)rows * (size_t)hp->n_vocab, &b), MOE_OK,
		             "step %d: %s", k, moe_err_detail());
		rows += st[k].n;
	}
	*n_rows = rows;
	*calls = cl != NULL ? moe_cluster_get_counters(cl).layers - c0 : 0;
	moe_fwd_destroy(f);
}

/* Logits rows of ref and got, equal bit for bit (the first row that is not
 * is named). */
static void same_rows(const float *ref, const float *got, int rows, int nv, const char *what)
{
	for (int r = 0; r < rows; r++)
		cr_assert_arr_eq(ref + (size_t)r * (size_t)nv, got + (size_t)r * (size_t)nv,
		                 (size_t)nv * sizeof *ref, "%s: row %d differs", what, r);
}

static void one_model(const char *model, bool shared_expert)
{
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK, "%s: %s", model, moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	cr_assert_eq(hp->n_ff_shexp > 0, shared_expert, "%s: shared expert %d", model,
	             hp->n_ff_shexp);
	const size_t sz = (size_t)128 * (size_t)hp->n_vocab * sizeof(float);
	float *ref = malloc(sz), *on = malloc(sz), *off = malloc(sz);
	cr_assert(ref && on && off);
	int rows_ref, rows_on, rows_off;
	uint64_t calls_on, calls_off, none;
	run_steps(m, NULL, false, ref, &rows_ref, &none, false);

	char sock[2][128];
	const char *urls[2];
	char url[2][300];
	for (int k = 0; k < 2; k++) {
		snprintf(sock[k], sizeof sock[k], "/tmp/moetest-ov-%d-%d.sock", (int)getpid(), k);
		snprintf(url[k], sizeof url[k], "ipc://%s", sock[k]);
		start_worker(k, model, sock[k], NULL);
		urls[k] = url[k];
	}
	moe_cluster_opts co = {.n_urls = 2, .urls = {urls[0], urls[1]}, .overlap = true};
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &co), MOE_OK, "%s", moe_err_detail());
	run_steps(m, cl, true, on, &rows_on, &calls_on, false);
	run_steps(m, cl, false, off, &rows_off, &calls_off, false);
	cr_assert_eq(rows_on, rows_ref);
	cr_assert_eq(rows_off, rows_ref);
	same_rows(ref, on, rows_ref, hp->n_vocab, "overlap against one process");
	same_rows(off, on, rows_ref, hp->n_vocab, "overlap against no overlap");
	/* without overlap one call per layer and step; with it two where a step
	 * is cut */
	const uint64_t L = (uint64_t)hp->n_layer;
	const int n_steps = N_CUT_STEPS + 1;
	cr_assert_eq(calls_off, (uint64_t)n_steps * L, "%llu calls without overlap",
	             (unsigned long long)calls_off);
	cr_assert_eq(calls_on, (uint64_t)(2 * N_CUT_STEPS + 1) * L, "%llu calls with overlap",
	             (unsigned long long)calls_on);
	/* with the default minimum (16 tokens) none of these steps is cut */
	uint64_t calls_def;
	run_steps(m, cl, true, on, &rows_on, &calls_def, true);
	same_rows(ref, on, rows_ref, hp->n_vocab, "default minimum against one process");
	cr_assert_eq(calls_def, calls_off, "%llu calls with the default minimum",
	             (unsigned long long)calls_def);
	moe_cluster_destroy(cl);
	reap_workers();

	/* --overlap and --no-overlap */
	char *argv[] = {"--overlap", "--no-overlap", NULL};
	moe_cluster_opts no = {0};
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(moe_cluster_parse_arg(&no, &i, 2, argv), MOE_OK);
		cr_assert_eq(no.overlap, i == 0);
	}
	free(ref);
	free(on);
	free(off);
	moe_model_destroy(m);
}

static void fixture(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", env("MOE_FIXTURES"), name);
}

Test(overlap, shared_expert_model_same_bits, .timeout = 120, .fini = reap_workers)
{
	char model[1024];
	fixture(model, sizeof model, "qwen3next-tiny-Q8_0.gguf");
	one_model(model, true);
}

Test(overlap, model_without_shared_expert_same_bits, .timeout = 120, .fini = reap_workers)
{
	char model[1024];
	fixture(model, sizeof model, "qwen3moe-tiny-Q4_K_M.gguf");
	one_model(model, false);
}

Test(overlap, demo_model_same_bits, .timeout = 120, .fini = reap_workers)
{
	char model[1024];
	snprintf(model, sizeof model, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	one_model(model, true);
}

Test(overlap, error_replies_under_overlap_same_bits, .timeout = 120, .fini = reap_workers)
{
	char model[1024];
	fixture(model, sizeof model, "qwen3next-tiny-Q8_0.gguf");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t sz = (size_t)128 * (size_t)hp->n_vocab * sizeof(float);
	float *ref = malloc(sz), *got = malloc(sz);
	cr_assert(ref && got);
	int rows_ref, rows;
	uint64_t calls;
	run_steps(m, NULL, false, ref, &rows_ref, &calls, false);

	/* every expert on both workers; worker 0 answers a few DISPATCHes with an
	 * ERROR (never two in a row), each sent again while the other
	 * micro-batch's DISPATCH waits on both links */
	char sock[2][128], url[2][300];
	for (int k = 0; k < 2; k++) {
		snprintf(sock[k], sizeof sock[k], "/tmp/moetest-ove-%d-%d.sock", (int)getpid(), k);
		snprintf(url[k], sizeof url[k], "ipc://%s", sock[k]);
		start_worker(k, model, sock[k], k == 0 ? "2,5,9,14,20,27" : NULL);
	}
	moe_cluster_opts co = {
	    .n_urls = 2, .urls = {url[0], url[1]}, .replicate = "all", .overlap = true};
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &co), MOE_OK, "%s", moe_err_detail());
	run_steps(m, cl, true, got, &rows, &calls, false);
	cr_assert_eq(rows, rows_ref);
	same_rows(ref, got, rows, hp->n_vocab, "overlap with ERROR replies against one process");
	const moe_cluster_counters k = moe_cluster_get_counters(cl);
	cr_log_info("%llu ERROR replies retried, %llu RESULTs read by the other micro-batch",
	            (unsigned long long)k.error_retries, (unsigned long long)k.stashed);
	cr_assert_eq(k.error_retries, 6);
	cr_assert_eq(k.lost, 0);
	cr_assert_geq(k.stashed, 1, "no RESULT went to the other micro-batch's stash");
	moe_cluster_destroy(cl);
	free(ref);
	free(got);
	moe_model_destroy(m);
}

Test(overlap, off_by_default_on_with_the_option, .timeout = 60, .fini = reap_workers)
{
	char model[1024], sock[128], url[300];
	fixture(model, sizeof model, "qwen3moe-tiny-Q4_K_M.gguf");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK, "%s", moe_err_detail());
	snprintf(sock, sizeof sock, "/tmp/moetest-ovd-%d.sock", (int)getpid());
	snprintf(url, sizeof url, "ipc://%s", sock);
	start_worker(0, model, sock, NULL);
	for (int want = 0; want < 2; want++) {
		moe_cluster_opts co = {.n_urls = 2, .urls = {"local", url}, .overlap = want};
		moe_cluster *cl;
		cr_assert_eq(moe_cluster_create(&cl, m, model, &co), MOE_OK, "%s",
		             moe_err_detail());
		cr_assert_eq(moe_cluster_overlap_backend(cl) != NULL, want == 1,
		             "overlap %d: backend %p", want,
		             (const void *)moe_cluster_overlap_backend(cl));
		moe_cluster_destroy(cl);
	}
	reap_workers();
	moe_model_destroy(m);
}

Test(overlap, a_worker_dying_under_overlap_changes_no_bit, .timeout = 120, .fini = reap_workers)
{
	char model[1024];
	fixture(model, sizeof model, "qwen3next-tiny-Q8_0.gguf");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t sz = (size_t)128 * (size_t)hp->n_vocab * sizeof(float);
	float *ref = malloc(sz), *got = malloc(sz);
	cr_assert(ref && got);
	int rows_ref, rows;
	uint64_t calls;
	run_steps(m, NULL, false, ref, &rows_ref, &calls, false);

	/* every expert on both workers; worker 0 dies before its 11th RESULT,
	 * with the other micro-batch's DISPATCH on its way to it or queued */
	char sock[2][128], url[2][300];
	for (int k = 0; k < 2; k++) {
		snprintf(sock[k], sizeof sock[k], "/tmp/moetest-ovk-%d-%d.sock", (int)getpid(), k);
		snprintf(url[k], sizeof url[k], "ipc://%s", sock[k]);
		start_harness(k, model, sock[k], k == 0 ? "--die-after" : NULL,
		              k == 0 ? "11" : NULL);
	}
	moe_cluster_opts co = {
	    .n_urls = 2, .urls = {url[0], url[1]}, .replicate = "all", .overlap = true};
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &co), MOE_OK, "%s", moe_err_detail());
	run_steps(m, cl, true, got, &rows, &calls, false);
	cr_assert_eq(rows, rows_ref);
	same_rows(ref, got, rows, hp->n_vocab, "overlap with a worker lost against one process");
	const moe_cluster_counters k = moe_cluster_get_counters(cl);
	cr_assert_eq(k.lost, 1);
	cr_assert_gt(k.retries, 0);
	moe_cluster_destroy(cl);
	free(ref);
	free(got);
	moe_model_destroy(m);
}
