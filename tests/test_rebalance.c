/*
 * test_rebalance.c - what a worker holds changes by slices, and the cluster
 * re-places experts while it serves.  A worker told a new set over the raw
 * protocol loads only the slices it lacked and drops only those it lost
 * (byte counts from the GGUF's tensor table), keeps computing the experts
 * it kept to the same bytes, and computes a newly loaded expert as this
 * process does from the model; a lost worker's experts are loaded by the
 * survivors and nothing else is; live re-placement under a skewed routing
 * (one repeated token) with the rebalancer ticking after every step gives
 * the single-process logits bit for bit, switches the placement at least
 * once, keeps every worker under its "mem" cap, and one re-placement loads
 * and drops exactly the slices its placements differ by; `moemesh serve
 * --rebalance` replies to skewed prompts with the bytes of a server without
 * it and of one without workers, and its /metrics shows the re-placements;
 * --rebalance takes positive seconds only.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/forward.h"
#include "proto/proto.h"
#include "tests/test_util.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v != NULL, "%s is not set", name);
	return v;
}

static void fixture(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", env("MOE_FIXTURES"), name);
}

/* ---- workers --------------------------------------------------------------------- */

static pid_t g_workers[8];

/* .fini: no worker outlives its test. */
static void reap_workers(void)
{
	for (int i = 0; i < 8; i++) {
		if (g_workers[i] > 0) {
			kill(g_workers[i], SIGKILL);
			waitpid(g_workers[i], NULL, 0);
			g_workers[i] = 0;
		}
	}
}

/* Starts `moemesh worker` on ipc://sock and waits until it listens. */
static const char *g_secret; /* --secret-file of the workers start_worker starts, or NULL */

static pid_t start_worker(int k, const char *model, const char *sock)
{
	char cmd[4096];
	unlink(sock);
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen ipc://%s --threads 1 --ready-fd 3 --quiet%s%s",
	         env("MOE_BIN"), model, sock, g_secret ? " --secret-file " : "",
	         g_secret ? g_secret : "");
	g_workers[k] = spawn_ready(cmd, sock);
	return g_workers[k];
}

/* SIGTERM; the worker must exit 0 within 20 s. */
static void stop_worker(int k)
{
	int st = 0;
	kill(g_workers[k], SIGTERM);
	for (int t = 0; t < 2000 && waitpid(g_workers[k], &st, WNOHANG) == 0; t++) {
		struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d ended with status %#x", k, st);
	g_workers[k] = 0;
}

/* Bytes of one expert of layer il, from the GGUF's tensor table: its gate,
 * up and down slices. */
static uint64_t expert_bytes(const moe_model *m, int il)
{
	static const char *const w[3] = {"gate", "up", "down"};
	uint64_t b = 0;
	for (int k = 0; k < 3; k++) {
		char name[96];
		snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", il, w[k]);
		const moe_gguf_tensor *t = moe_gguf_find_tensor(moe_model_gguf(m), name);
		cr_assert(t != NULL && t->n_dims == 3, "%s", name);
		b += (uint64_t)t->size / (uint64_t)t->ne[2];
	}
	return b;
}

/* ---- the raw protocol --------------------------------------------------------------- */

static void ctl_recv(nng_socket s, nng_msg **m, moe_frame *f)
{
	cr_assert_eq(moe_nng_recv(m, f, s, 10000), MOE_OK, "no answer: %s", moe_err_detail());
}

/* HELLO / AUTH; returns the data token. */
static void handshake(nng_socket s, const uint8_t *id, uint8_t token[32])
{
	uint8_t chal[32] = {9};
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, (uint8_t *)id};
	h.challenge = (ProtobufCBinaryData){32, chal};
	nng_msg *m;
	moe_frame f;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_HELLO, &h.base), MOE_OK);
	ctl_recv(s, &m, &f);
	cr_assert_eq(f.kind, MOE_MSG_HELLO_REPLY);
	Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	cr_assert(r && r->challenge.len == 32);
	uint8_t mac[32];
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, chal, r->challenge.data, id),
	             MOE_OK);
	moemesh__hello_reply__free_unpacked(r, NULL);
	nng_msg_free(m);
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, mac};
	cr_assert_eq(moe_nng_send(s, MOE_MSG_AUTH, &a.base), MOE_OK);
	ctl_recv(s, &m, &f);
	cr_assert_eq(f.kind, MOE_MSG_AUTH_OK);
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	cr_assert(ok && ok->data_token.len == 32);
	memcpy(token, ok->data_token.data, 32);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	nng_msg_free(m);
}

typedef struct assigned {
	uint64_t loaded, dropped, held, bytes_held;
} assigned;

/* ASSIGN of n (layer, expert) pairs; waits for its end. */
static assigned assign(nng_socket s, const int (*pairs)[2], int n)
{
	Moemesh__LayerExperts le[8], *lp[8];
	uint32_t ex[8][16];
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	for (int i = 0; i < n; i++) {
		size_t k = 0;
		while (k < a.n_layers && le[k].layer != (uint32_t)pairs[i][0])
			k++;
		if (k == a.n_layers) {
			moemesh__layer_experts__init(&le[k]);
			le[k].layer = (uint32_t)pairs[i][0];
			le[k].experts = ex[k];
			lp[k] = &le[k];
			a.n_layers++;
		}
		ex[k][le[k].n_experts++] = (uint32_t)pairs[i][1];
	}
	a.layers = lp;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, &a.base), MOE_OK);
	for (;;) {
		nng_msg *m;
		moe_frame f;
		ctl_recv(s, &m, &f);
		cr_assert_eq(f.kind, MOE_MSG_LOAD_PROGRESS, "got %s", moe_msg_kind_name(f.kind));
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		cr_assert(p != NULL);
		const bool done = p->done;
		const assigned r = {p->bytes_loaded, p->bytes_dropped, p->experts_held,
		                    p->bytes_held};
		moemesh__load_progress__free_unpacked(p, NULL);
		nng_msg_free(m);
		if (done)
			return r;
	}
}

/* One token through expert e of layer il on the worker: its RESULT row
 * (n_embd moe_fix_t, weight 1), or false if it answered ERROR. */
static bool run_expert(int fd, moe_rx *rx, const moe_model *m, const uint8_t *xq, int il, int e,
                       int64_t *out)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const moe_expert_ffn *ffn = moe_model_experts(m, il);
	const int nu = hp->n_expert_used;
	int32_t ids[64];
	float w[64];
	for (int j = 0; j < nu; j++) {
		ids[j] = j == 0 ? e : -1;
		w[j] = j == 0 ? 1.0f : 0.0f;
	}
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	d.step = 5;
	d.layer = (uint32_t)il;
	d.n_tokens = 1;
	d.act_type = (uint32_t)moe_type_get(ffn->gate.type)->vec_dot_type;
	d.n_embd = (uint32_t)hp->n_embd;
	d.n_used = (uint32_t)nu;
	d.n_expert_ids = d.n_weights = (size_t)nu;
	d.expert_ids = ids;
	d.weights = w;
	struct iovec iov = {.iov_base = (void *)xq,
	                    .iov_len = moe_act_row_size(ffn->gate.type, hp->n_embd)};
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1), MOE_OK);
	bool done;
	moe_frame f;
	cr_assert_eq(moe_rx_read(&done, &f, rx, fd, (size_t)1 << 24, true), MOE_OK, "%s",
	             moe_err_detail());
	if (f.kind == MOE_MSG_ERROR)
		return false;
	cr_assert_eq(f.kind, MOE_MSG_RESULT);
	cr_assert_eq(f.payload_len, (size_t)hp->n_embd * 8);
	memcpy(out, f.payload, f.payload_len);
	return true;
}

Test(rebalance, a_new_assignment_loads_only_what_is_missing, .timeout = 60, .fini = reap_workers)
{
	char model[1024], sock[128], url[160], dpath[160];
	fixture(model, sizeof model, "qwen3moe-tiny-Q8_0.gguf");
	snprintf(sock, sizeof sock, "/tmp/moetest-rb-%d.sock", (int)getpid());
	snprintf(url, sizeof url, "ipc://%s", sock);
	snprintf(dpath, sizeof dpath, "%s.data", sock);
	start_worker(0, model, sock);
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(m);
	const uint64_t b0 = expert_bytes(m, 0), b1 = expert_bytes(m, 1);
	uint8_t id[MOE_ID_BYTES], token[32];
	cr_assert_eq(moe_model_identity(id, moe_model_gguf(m)), MOE_OK);
	nng_socket s;
	cr_assert_eq(nng_pair1_open(&s), 0);
	cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
	handshake(s, id, token);
	int fd;
	cr_assert_eq(moe_sock_connect_unix(&fd, dpath), MOE_OK);
	Moemesh__AuthResponse da = MOEMESH__AUTH_RESPONSE__INIT;
	da.response = (ProtobufCBinaryData){32, token};
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_AUTH, &da.base, NULL, 0), MOE_OK);
	moe_rx rx = {0};

	/* an activation row as the experts of layer 0 take it */
	const moe_expert_ffn *ffn = moe_model_experts(m, 0);
	const size_t row = moe_act_row_size(ffn->gate.type, hp->n_embd);
	float *x = malloc((size_t)hp->n_embd * sizeof *x);
	uint8_t *xq = moe_aligned_alloc(64, row);
	int64_t *r1 = malloc((size_t)hp->n_embd * 8), *r2 = malloc((size_t)hp->n_embd * 8);
	moe_fix_t *want = calloc((size_t)hp->n_embd, sizeof *want);
	for (int k = 0; k < hp->n_embd; k++)
		x[k] = (float)((k * 37) % 23 - 11) / 7.0f;
	cr_assert_eq(moe_quantize_act_rows(NULL, xq, ffn->gate.type, x, hp->n_embd, 1), MOE_OK);

	static const int first[][2] = {{0, 0}, {0, 1}, {1, 0}};
	assigned a = assign(s, first, 3);
	cr_assert_eq(a.loaded, 2 * b0 + b1, "first ASSIGN loaded %llu bytes, not %llu",
	             (unsigned long long)a.loaded, (unsigned long long)(2 * b0 + b1));
	cr_assert_eq(a.dropped, 0);
	cr_assert_eq(a.held, 3);
	cr_assert_eq(a.bytes_held, 2 * b0 + b1);
	cr_assert(run_expert(fd, &rx, m, xq, 0, 1, r1));

	/* keep 0:1, gain 0:2, lose 0:0 and 1:0 */
	static const int second[][2] = {{0, 1}, {0, 2}};
	a = assign(s, second, 2);
	cr_assert_eq(a.loaded, b0, "second ASSIGN loaded %llu bytes, not one expert's %llu",
	             (unsigned long long)a.loaded, (unsigned long long)b0);
	cr_assert_eq(a.dropped, b0 + b1, "second ASSIGN dropped %llu bytes, not %llu",
	             (unsigned long long)a.dropped, (unsigned long long)(b0 + b1));
	cr_assert_eq(a.held, 2);
	cr_assert_eq(a.bytes_held, 2 * b0);
	cr_assert(run_expert(fd, &rx, m, xq, 0, 1, r2));
	cr_assert_arr_eq(r1, r2, (size_t)hp->n_embd * 8, "the kept expert computes otherwise");
	cr_assert(!run_expert(fd, &rx, m, xq, 0, 0, r2), "a dropped expert still answers");
	cr_assert(!run_expert(fd, &rx, m, xq, 1, 0, r2), "a dropped expert still answers");
	/* the loaded one as this process computes it from the model */
	cr_assert(run_expert(fd, &rx, m, xq, 0, 2, r2));
	int32_t ids[64];
	float w[64];
	for (int j = 0; j < hp->n_expert_used; j++) {
		ids[j] = j == 0 ? 2 : -1;
		w[j] = j == 0 ? 1.0f : 0.0f;
	}
	cr_assert_eq(moe_expert_ffn_run_q(NULL, want, ffn, xq, 1, ids, w, hp->n_expert_used),
	             MOE_OK);
	cr_assert_arr_eq(want, r2, (size_t)hp->n_embd * 8, "the loaded expert computes otherwise");

	/* the same set again changes nothing */
	a = assign(s, second, 2);
	cr_assert_eq(a.loaded, 0);
	cr_assert_eq(a.dropped, 0);
	cr_assert_eq(a.held, 2);

	/* the totals the worker keeps */
	nng_msg *msg;
	moe_frame f;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_STATS_REQUEST, NULL), MOE_OK);
	ctl_recv(s, &msg, &f);
	cr_assert_eq(f.kind, MOE_MSG_STATS);
	Moemesh__Stats *st = moemesh__stats__unpack(NULL, f.header_len, f.header);
	cr_assert(st != NULL);
	cr_assert_eq(st->bytes_loaded_total, 3 * b0 + b1);
	cr_assert_eq(st->bytes_dropped_total, b0 + b1);
	cr_assert_eq(st->bytes_loaded, 2 * b0);
	moemesh__stats__free_unpacked(st, NULL);
	nng_msg_free(msg);

	close(fd);
	moe_rx_free(&rx);
	nng_close(s);
	stop_worker(0);
	free(x);
	moe_aligned_free(xq);
	free(r1);
	free(r2);
	free(want);
	moe_model_destroy(m);
}

/* ---- the cluster ---------------------------------------------------------------------- */

#define N_PROMPT 8
#define N_STEPS  40

/* Greedy tokens and every step's logits of one sequence: a prompt of one
 * token repeated (every position routes alike: a skewed load), then
 * n_steps decoded.  With be (a cluster backend) the tokens are given
 * (tok[N_PROMPT..]) instead of taken, so both runs see the same. */
static void run_seq(moe_model *m, moe_cluster *cl, int32_t *tok, float *logits, int n_steps,
                    bool tick)
{
	const moe_hparams *hp = moe_model_hparams(m);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_ctx = N_PROMPT + n_steps + 8;
	o.n_threads = 1;
	if (cl != NULL)
		o.experts = moe_cluster_backend(cl);
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	if (cl != NULL)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);
	int32_t pos[N_PROMPT], slots[N_PROMPT];
	bool want[N_PROMPT] = {0};
	for (int i = 0; i < N_PROMPT; i++) {
		pos[i] = i;
		slots[i] = slot;
	}
	want[N_PROMPT - 1] = true;
	moe_batch b = {.n_tok = N_PROMPT, .tokens = tok, .slot = slots, .pos = pos, .logits = want};
	for (int s = 0; s <= n_steps; s++) {
		float *lg = logits + (size_t)s * (size_t)hp->n_vocab;
		cr_assert_eq(moe_fwd_step(f, lg, &b), MOE_OK, "step %d: %s", s, moe_err_detail());
		if (tick)
			cr_assert_eq(moe_cluster_tick(cl), MOE_OK, "%s", moe_err_detail());
		if (s == n_steps)
			break;
		if (cl == NULL) {
			int best = 0;
			for (int v = 1; v < hp->n_vocab; v++)
				best = lg[v] > lg[best] ? v : best;
			tok[N_PROMPT + s] = best;
		}
		pos[0] = N_PROMPT + s;
		b = (moe_batch){
		    .n_tok = 1, .tokens = tok + N_PROMPT + s, .slot = slots, .pos = pos};
	}
	moe_fwd_destroy(f);
}

/* Whether link i holds each (layer, expert), into h[il * n_expert + e]. */
static void holds(const moe_cluster *cl, const moe_hparams *hp, int i, uint8_t *h)
{
	for (int il = 0; il < hp->n_layer; il++)
		for (int e = 0; e < hp->n_expert; e++)
			h[il * hp->n_expert + e] = moe_cluster_holds(cl, i, il, e);
}

Test(rebalance, live_replacement_changes_no_logit_and_moves_only_what_it_says, .timeout = 120,
     .fini = reap_workers)
{
	char model[1024], sock[3][128];
	fixture(model, sizeof model, "qwen3moe-tiny-Q8_0.gguf");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t nv = (size_t)hp->n_vocab, nh = (size_t)hp->n_layer * hp->n_expert;
	int32_t tok[N_PROMPT + 2 * N_STEPS + 2];
	for (int i = 0; i < N_PROMPT; i++)
		tok[i] = 7;
	float *ref = malloc((2 * N_STEPS + 2) * nv * sizeof *ref);
	float *got = malloc((2 * N_STEPS + 2) * nv * sizeof *got);
	run_seq(m, NULL, tok, ref, 2 * N_STEPS, false);

	/* three workers, each capped at 60 % of all the expert bytes; sealed
	 * links (a secret), so ASSIGNs and LOAD_PROGRESS from the workers'
	 * loader threads cross them too */
	uint64_t all = 0;
	for (int il = 0; il < hp->n_layer; il++)
		all += expert_bytes(m, il) * (uint64_t)hp->n_expert;
	char secret[128];
	snprintf(secret, sizeof secret, "/tmp/moetest-rb-%d.secret", (int)getpid());
	FILE *sf = fopen(secret, "w");
	cr_assert(sf != NULL && fputs("rebalance-secret\n", sf) >= 0 && fclose(sf) == 0);
	g_secret = secret;
	moe_cluster_opts o = {.n_urls = 3, .rebalance_s = 1e-6, .secret_file = secret};
	char url[3][160];
	for (int k = 0; k < 3; k++) {
		snprintf(sock[k], sizeof sock[k], "/tmp/moetest-rb-%d-%d.sock", (int)getpid(), k);
		snprintf(url[k], sizeof url[k], "ipc://%s", sock[k]);
		start_worker(k, model, sock[k]);
		o.urls[k] = url[k];
		o.mem_caps[k] = all * 6 / 10;
	}
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &o), MOE_OK, "%s", moe_err_detail());

	/* live: the rebalancer ticks after every step */
	run_seq(m, cl, tok, got, N_STEPS, true);
	cr_assert_eq(moe_cluster_settle(cl), MOE_OK);
	for (int s = 0; s <= N_STEPS; s++)
		cr_assert_arr_eq(ref + (size_t)s * nv, got + (size_t)s * nv, nv * sizeof *ref,
		                 "step %d: logits differ from one process", s);
	const moe_cluster_balance b1 = moe_cluster_get_balance(cl);
	cr_log_info("live: %llu re-placements, %llu bytes loaded, %llu dropped, imbalance %.3f "
	            "before the last, %.3f planned, %.3f in the last window",
	            (unsigned long long)b1.rebalances, (unsigned long long)b1.bytes_loaded,
	            (unsigned long long)b1.bytes_dropped, b1.before, b1.planned, b1.imbalance);
	cr_assert_geq(b1.rebalances, 1, "no re-placement under a skewed load");
	cr_assert_gt(b1.bytes_loaded, 0);
	cr_assert_gt(b1.before, 1.0);

	/* one re-placement, waited for: what it loads and drops is exactly the
	 * difference of the placements (a worker's bytes beyond its routing
	 * were dropped by the last change's end, settled above) */
	uint8_t *h0 = malloc(3 * nh), *h1 = malloc(3 * nh);
	moe_cluster_link_stats s0[3], s1[3];
	for (int k = 0; k < 3; k++) {
		holds(cl, hp, k, h0 + k * nh);
		s0[k] = moe_cluster_link(cl, k);
	}
	for (int i = 0; i < N_PROMPT; i++)
		tok[i] = 42; /* another skew for the window */
	run_seq(m, NULL, tok, ref, N_STEPS, false);
	cr_assert_eq(moe_cluster_tick(cl), MOE_OK); /* the window restarts here */
	run_seq(m, cl, tok, got, N_STEPS, false);
	const uint64_t n0 = moe_cluster_get_balance(cl).rebalances;
	cr_assert_eq(moe_cluster_rebalance(cl), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_cluster_get_balance(cl).rebalances, n0 + 1,
	             "another skew brought no re-placement");
	uint64_t moved = 0;
	for (int k = 0; k < 3; k++) {
		holds(cl, hp, k, h1 + k * nh);
		s1[k] = moe_cluster_link(cl, k);
		uint64_t in = 0, out = 0, held = 0;
		for (int il = 0; il < hp->n_layer; il++)
			for (int e = 0; e < hp->n_expert; e++) {
				const size_t x = k * nh + (size_t)il * hp->n_expert + e;
				in += h1[x] && !h0[x] ? expert_bytes(m, il) : 0;
				out += h0[x] && !h1[x] ? expert_bytes(m, il) : 0;
				held += h1[x] ? expert_bytes(m, il) : 0;
			}
		moved += in;
		cr_assert_eq(s1[k].assign_loaded - s0[k].assign_loaded, in,
		             "worker %d loaded %llu bytes, its new experts are %llu", k,
		             (unsigned long long)(s1[k].assign_loaded - s0[k].assign_loaded),
		             (unsigned long long)in);
		cr_assert_eq(s1[k].assign_dropped - s0[k].assign_dropped, out,
		             "worker %d dropped %llu bytes, its lost experts are %llu", k,
		             (unsigned long long)(s1[k].assign_dropped - s0[k].assign_dropped),
		             (unsigned long long)out);
		cr_assert_eq(s1[k].bytes_loaded, held, "worker %d holds %llu bytes, routed %llu", k,
		             (unsigned long long)s1[k].bytes_loaded, (unsigned long long)held);
		cr_assert_leq(held, o.mem_caps[k], "worker %d holds %llu bytes over its cap", k,
		              (unsigned long long)held);
	}
	cr_log_info("one re-placement moved %llu bytes", (unsigned long long)moved);
	cr_assert_gt(moved, 0);
	/* and the new placement computes the same */
	run_seq(m, cl, tok, got, N_STEPS, false);
	for (int s = 0; s <= N_STEPS; s++)
		cr_assert_arr_eq(ref + (size_t)s * nv, got + (size_t)s * nv, nv * sizeof *ref,
		                 "after the re-placement, step %d: logits differ", s);

	moe_cluster_destroy(cl);
	for (int k = 0; k < 3; k++)
		stop_worker(k);
	g_secret = NULL;
	unlink(secret);
	free(h0);
	free(h1);
	free(ref);
	free(got);
	moe_model_destroy(m);
}

Test(rebalance, a_lost_worker_costs_the_survivors_only_its_experts, .timeout = 120,
     .fini = reap_workers)
{
	char model[1024], sock[3][128], url[3][160];
	fixture(model, sizeof model, "qwen3moe-tiny-Q8_0.gguf");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(m);
	const size_t nv = (size_t)hp->n_vocab;
	int32_t tok[N_PROMPT + N_STEPS + 2];
	for (int i = 0; i < N_PROMPT; i++)
		tok[i] = 3 + i;
	float *ref = malloc((N_STEPS + 2) * nv * sizeof *ref);
	float *got = malloc((N_STEPS + 2) * nv * sizeof *got);
	run_seq(m, NULL, tok, ref, 4, false);
	moe_cluster_opts o = {.n_urls = 3, .timeout_ms = 5000};
	for (int k = 0; k < 3; k++) {
		snprintf(sock[k], sizeof sock[k], "/tmp/moetest-rl-%d-%d.sock", (int)getpid(), k);
		snprintf(url[k], sizeof url[k], "ipc://%s", sock[k]);
		start_worker(k, model, sock[k]);
		o.urls[k] = url[k];
	}
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &o), MOE_OK, "%s", moe_err_detail());
	uint64_t lost = 0;
	for (int il = 0; il < hp->n_layer; il++)
		for (int e = 0; e < hp->n_expert; e++)
			lost += moe_cluster_holds(cl, 2, il, e) ? expert_bytes(m, il) : 0;
	cr_assert_gt(lost, 0);
	moe_cluster_link_stats s0[2];
	for (int k = 0; k < 2; k++)
		s0[k] = moe_cluster_link(cl, k);
	kill(g_workers[2], SIGKILL);
	waitpid(g_workers[2], NULL, 0);
	g_workers[2] = 0;
	unlink(sock[2]);
	run_seq(m, cl, tok, got, 4, false);
	for (int s = 0; s <= 4; s++)
		cr_assert_arr_eq(ref + (size_t)s * nv, got + (size_t)s * nv, nv * sizeof *ref,
		                 "step %d: logits differ after the loss", s);
	uint64_t in = 0;
	for (int k = 0; k < 2; k++) {
		const moe_cluster_link_stats s1 = moe_cluster_link(cl, k);
		in += s1.assign_loaded - s0[k].assign_loaded;
		cr_assert_eq(s1.assign_dropped, s0[k].assign_dropped, "survivor %d dropped bytes",
		             k);
	}
	cr_assert_eq(in, lost, "the survivors loaded %llu bytes, the lost worker held %llu",
	             (unsigned long long)in, (unsigned long long)lost);
	moe_cluster_destroy(cl);
	for (int k = 0; k < 2; k++)
		stop_worker(k);
	char data[160];
	snprintf(data, sizeof data, "%s.data", sock[2]);
	unlink(data);
	free(ref);
	free(got);
	moe_model_destroy(m);
}

/* ---- serve --------------------------------------------------------------------------- */

extern char **environ;

/* Runs `moemesh serve -m model --port 0 EXTRA`, then serve_client.py's case
 * rebalance against it, then SIGTERM (exit status 0: every spawned worker
 * ended cleanly too); returns what the case wrote. */
static cJSON *serve_case(const char *model, const char *const *extra)
{
	const char *argv[24] = {env("MOE_BIN"), "serve", "-m",        model,
	                        "--port",       "0",     "--threads", "1"};
	int n = 8;
	for (int i = 0; extra[i] != NULL; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_addclose(&fa, fds[0]);
	pid_t pid;
	cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	g_workers[7] = pid;
	FILE *err = fdopen(fds[0], "r");
	char line[1024];
	int port = 0;
	bool ready = false;
	while (!ready && fgets(line, sizeof line, err) != NULL) {
		const char *p = strstr(line, "listening on http://127.0.0.1:");
		if (p != NULL)
			port = atoi(p + strlen("listening on http://127.0.0.1:"));
		ready = strstr(line, "moemesh serve: ready") != NULL;
	}
	cr_assert(ready && port > 0, "the server did not start");
	char out[] = "/tmp/moe_rebalance_XXXXXX", ports[16], script[1024];
	int fd = mkstemp(out);
	cr_assert_geq(fd, 0);
	close(fd);
	snprintf(ports, sizeof ports, "%d", port);
	snprintf(script, sizeof script, "%s/tests/serve_client.py", env("MOE_SOURCE_DIR"));
	const char *cargv[] = {"python3", script, "rebalance", ports, out, NULL};
	pid_t cp;
	cr_assert_eq(posix_spawnp(&cp, "python3", NULL, NULL, (char *const *)cargv, environ), 0);
	int st = 0;
	waitpid(cp, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the client case failed (%#x)", st);
	kill(pid, SIGTERM);
	while (fgets(line, sizeof line, err) != NULL)
		fputs(line, stderr);
	fclose(err);
	waitpid(pid, &st, 0);
	g_workers[7] = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the server exited with %#x", st);
	FILE *f = fopen(out, "rb");
	cr_assert(f != NULL);
	static char buf[1 << 16];
	const size_t len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	unlink(out);
	buf[len] = '\0';
	cJSON *j = cJSON_Parse(buf);
	cr_assert(j != NULL, "client output: %s", buf);
	return j;
}

static double metric(const cJSON *j, const char *name)
{
	const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metrics"), name);
	cr_assert(cJSON_IsNumber(v), "no metric %s", name);
	return cJSON_GetNumberValue(v);
}

Test(rebalance, serve_rebalancing_replies_the_same_bytes, .timeout = 300, .fini = reap_workers)
{
	char model[1024];
	snprintf(model, sizeof model, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	cJSON *rb =
	    serve_case(model, (const char *const[]){"--workers", "3", "--rebalance", "0.05", NULL});
	cJSON *still = serve_case(model, (const char *const[]){"--workers", "3", NULL});
	cJSON *one = serve_case(model, (const char *const[]){NULL});
	char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(rb, "texts"));
	char *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(still, "texts"));
	char *c = cJSON_PrintUnformatted(cJSON_GetObjectItem(one, "texts"));
	cr_expect_str_eq(a, b, "replies with --rebalance differ from those without it");
	cr_expect_str_eq(a, c, "replies with --rebalance differ from one process's");
	cr_log_info("serve --rebalance 0.05: %.0f re-placements, %.0f bytes loaded, imbalance "
	            "%.3f before the last, %.3f planned",
	            metric(rb, "moemesh_rebalances_total"),
	            metric(rb, "moemesh_rebalance_bytes_loaded_total"),
	            metric(rb, "moemesh_rebalance_imbalance_before"),
	            metric(rb, "moemesh_rebalance_imbalance_planned"));
	cr_expect_geq(metric(rb, "moemesh_rebalances_total"), 1, "no re-placement");
	cr_expect_gt(metric(rb, "moemesh_rebalance_bytes_loaded_total"), 0);
	cr_expect_eq(metric(still, "moemesh_rebalances_total"), 0, "a re-placement without it");
	cr_expect_gt(metric(still, "moemesh_worker_routed_tokens_total{worker=\"w0\"}"), 0);
	cJSON_free(a);
	cJSON_free(b);
	cJSON_free(c);
	cJSON_Delete(rb);
	cJSON_Delete(still);
	cJSON_Delete(one);
}

Test(rebalance, rebalance_option_takes_positive_seconds)
{
	static const char *const bad[] = {"0", "-1", "x", "1e9", ""};
	for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
		moe_cluster_opts o = {0};
		char *argv[] = {"prog", "--rebalance", (char *)bad[k]};
		int i = 1;
		cr_assert_eq(moe_cluster_parse_arg(&o, &i, 3, argv), MOE_ERR_INVAL,
		             "--rebalance '%s' was taken", bad[k]);
		cr_assert(strstr(moe_err_detail(), "--rebalance") != NULL, "%s", moe_err_detail());
	}
	moe_cluster_opts o = {0};
	char *argv[] = {"prog", "--rebalance", "2.5"};
	int i = 1;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 3, argv), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(i, 2);
	cr_assert_float_eq(o.rebalance_s, 2.5, 1e-9);
}
