/*
 * test_multicoord.c - several coordinators, one expert pool: two `moemesh
 * serve` processes against the same two workers (tcp://127.0.0.1, sealed
 * with a secret file).  The second one adopts the placement the workers
 * hold (they load nothing more: `moemesh status` counts every byte any
 * ASSIGN loaded); requests on both at once get the bytes of a single
 * process; a coordinator killed (SIGKILL) mid-stream leaves its client with
 * a cut stream, the workers and the other coordinator serving, and a
 * restarted one adopts the workers without loading anything.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/forward.h"
#include "proto/proto.h"
#include "tests/test_util.h"

extern char **environ;

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert_not_null(v, "%s is not set", name);
	return v;
}

static void model(char *out, size_t n)
{
	snprintf(out, n, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
}

/* `moemesh worker` on url with the secret file (NULL: none), until it
 * listens. */
static pid_t start_worker(const char *m, const char *url, const char *secret)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen %s --threads 1 --ready-fd 3 --quiet %s%s",
	         bin(), m, url, secret ? "--secret-file " : "", secret ? secret : "");
	const pid_t pid = spawn_ready(cmd, url);
	track(pid);
	return pid;
}

typedef struct serve {
	pid_t pid;
	int port;
	char log[256]; /* its stderr */
} serve;

static char *slurp(const char *path)
{
	static char buf[1 << 18];
	FILE *fp = fopen(path, "rb");
	const size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
	if (fp)
		fclose(fp);
	buf[n] = '\0';
	return buf;
}

/* `moemesh serve -m m --port 0 --threads 1 ARGS...`, its stderr into a file,
 * until its ready line. */
static serve start_serve(const char *m, const char *name, const char *const *args)
{
	const char *argv[32] = {bin(), "serve", "-m", m, "--port", "0", "--threads", "1"};
	int n = 8;
	for (int i = 0; args[i] != NULL; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	serve s = {0};
	tmp_path(s.log, sizeof s.log, name);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 2, s.log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_eq(posix_spawn(&s.pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	track(s.pid);
	for (int t = 0; t < 600; t++) {
		const char *log = slurp(s.log);
		const char *p = strstr(log, "listening on http://127.0.0.1:");
		if (p != NULL)
			s.port = atoi(p + strlen("listening on http://127.0.0.1:"));
		if (strstr(log, "moemesh serve: ready") != NULL && s.port > 0)
			return s;
		cr_assert_eq(waitpid(s.pid, NULL, WNOHANG), 0, "serve %s exited: %s", name, log);
		usleep(50000);
	}
	cr_assert_fail("serve %s did not start: %s", name, slurp(s.log));
	return s;
}

/* SIGTERM; its exit status must be 0. */
static void stop_serve(serve *s)
{
	int st = 0;
	kill(s->pid, SIGTERM);
	waitpid(s->pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve ended with %#x: %s", st,
	          slurp(s->log));
	unlink(s->log);
}

static const char *const bodies[2] = {
    "{\"prompt\":\"In the beginning\",\"max_tokens\":24,\"temperature\":0}",
    "{\"prompt\":\"And God said\",\"max_tokens\":24,\"temperature\":0.8,\"seed\":5}"};

/* The text of a completion's JSON body in out. */
static void text_of(char *out, size_t size, const char *body)
{
	const char *k = strstr(body, "\"text\":\"");
	cr_assert_not_null(k, "no text in %s", body);
	k += 8;
	const char *e = strstr(k, "\",\"");
	cr_assert_not_null(e, "no end of the text in %s", body);
	snprintf(out, size, "%.*s", (int)(e - k), k);
}

/* The texts of bodies[0..1] asked of s, each `per` times, all at once. */
static void ask_all(char texts[][2][512], const serve *const *s, int n_serve, int per)
{
	char cmd[8192], path[256];
	size_t len = 0;
	for (int i = 0; i < n_serve; i++)
		for (int b = 0; b < 2; b++)
			for (int r = 0; r < per; r++) {
				char what[32];
				snprintf(what, sizeof what, "ask-%d-%d-%d", i, b, r);
				tmp_path(path, sizeof path, what);
				len += (size_t)snprintf(
				    cmd + len, sizeof cmd - len,
				    "curl -sf -m 60 -H 'Content-Type: application/json' -d '%s' "
				    "http://127.0.0.1:%d/v1/completions > %s & ",
				    bodies[b], s[i]->port, path);
			}
	snprintf(cmd + len, sizeof cmd - len, "wait");
	cr_assert_eq(sh("%s", cmd), 0);
	for (int i = 0; i < n_serve; i++)
		for (int b = 0; b < 2; b++)
			for (int r = 0; r < per; r++) {
				char what[32];
				snprintf(what, sizeof what, "ask-%d-%d-%d", i, b, r);
				tmp_path(path, sizeof path, what);
				text_of(texts[(i * 2 + b) * per + r][0], 512, slurp(path));
				texts[(i * 2 + b) * per + r][1][0] = (char)b;
				unlink(path);
			}
}

/* `moemesh status --json` of one worker: the number after "key": in its
 * answer (-1 if absent). */
static long long worker_stat(const char *url, const char *secret, const char *key)
{
	char out[256], pat[64];
	tmp_path(out, sizeof out, "status.json");
	cr_assert_eq(sh("'%s' status --worker %s --secret-file %s --json > %s 2>/dev/null", bin(),
	                url, secret, out),
	             0, "the worker %s is not up", url);
	snprintf(pat, sizeof pat, "\"%s\":", key);
	const char *p = strstr(slurp(out), pat);
	unlink(out);
	return p ? atoll(p + strlen(pat)) : -1;
}

/* Polls until worker url counts `want` coordinators (15 s). */
static bool coordinators_become(const char *url, const char *secret, long long want)
{
	for (int t = 0; t < 150; t++) {
		if (worker_stat(url, secret, "coordinators") == want)
			return true;
		usleep(100000);
	}
	return false;
}

typedef struct pool {
	char m[1024], secret[256], url[2][64];
	pid_t w[2];
	char ref[2][512]; /* bodies[0..1] as one process answers them */
} pool;

/* The reference texts from a single process, then the secret and the two
 * workers. */
static void pool_start(pool *p)
{
	model(p->m, sizeof p->m);
	serve one = start_serve(p->m, "one.log", (const char *const[]){NULL});
	char texts[2][2][512];
	const serve *const ones[] = {&one};
	ask_all(texts, ones, 1, 1);
	snprintf(p->ref[0], sizeof p->ref[0], "%s", texts[0][0]);
	snprintf(p->ref[1], sizeof p->ref[1], "%s", texts[1][0]);
	stop_serve(&one);
	cr_assert_gt(strlen(p->ref[0]), 0);
	cr_log_info("one process: '%s' / '%s'", p->ref[0], p->ref[1]);
	tmp_path(p->secret, sizeof p->secret, "secret");
	cr_assert_eq(sh("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > %s", p->secret), 0);
	for (int i = 0; i < 2; i++) {
		snprintf(p->url[i], sizeof p->url[i], "tcp://127.0.0.1:%d", free_port());
		p->w[i] = start_worker(p->m, p->url[i], p->secret);
	}
}

static void pool_stop(pool *p)
{
	for (int i = 0; i < 2; i++) {
		int st = 0;
		kill(p->w[i], SIGTERM);
		waitpid(p->w[i], &st, 0);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d ended with %#x", i, st);
	}
	unlink(p->secret);
}

/* `serve` against the pool's workers, with placement (NULL: the default). */
static serve coordinator(const pool *p, const char *name, const char *placement)
{
	return start_serve(
	    p->m, name,
	    (const char *const[]){"--worker", p->url[0], "--worker", p->url[1], "--secret-file",
	                          p->secret, placement ? "--placement" : NULL, placement, NULL});
}

/* The texts of ask_all against the reference. */
static void check_texts(const pool *p, char texts[][2][512], int n, const char *when)
{
	for (int i = 0; i < n; i++)
		cr_assert_str_eq(texts[i][0], p->ref[(int)texts[i][1][0]],
		                 "%s: request %d answered '%s', one process '%s'", when, i,
		                 texts[i][0], p->ref[(int)texts[i][1][0]]);
}

Test(multicoord, two_coordinators_share_two_workers_with_the_bytes_of_one_process, .timeout = 120,
     .fini = kill_tracked)
{
	pool p;
	pool_start(&p);
	serve a = coordinator(&p, "a.log", NULL);
	long long loaded[2];
	for (int i = 0; i < 2; i++) {
		loaded[i] = worker_stat(p.url[i], p.secret, "bytes_loaded_total");
		cr_assert_gt(loaded[i], 0, "worker %d loaded nothing for the first coordinator", i);
	}
	/* the second finds the placement there and loads nothing */
	serve b = coordinator(&p, "b.log", NULL);
	cr_assert(strstr(slurp(b.log), "adopted, nothing to load") != NULL,
	          "the second coordinator did not adopt the workers' placement: %s", slurp(b.log));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(worker_stat(p.url[i], p.secret, "bytes_loaded_total"), loaded[i],
		             "worker %d loaded more for the second coordinator", i);
		cr_assert_eq(worker_stat(p.url[i], p.secret, "coordinators"), 2);
	}
	/* both at once, greedy and sampled: the bytes of one process */
	char texts[8][2][512];
	const serve *const both[] = {&a, &b};
	ask_all(texts, both, 2, 2);
	check_texts(&p, texts, 8, "two coordinators at once");
	long long dispatches = 0;
	for (int i = 0; i < 2; i++)
		dispatches += worker_stat(p.url[i], p.secret, "dispatches");
	cr_assert_gt(dispatches, 0);
	stop_serve(&a);
	stop_serve(&b);
	pool_stop(&p);
}

Test(multicoord, a_killed_coordinator_cuts_its_stream_and_a_restarted_one_adopts_the_workers,
     .timeout = 120, .fini = kill_tracked)
{
	pool p;
	pool_start(&p);
	/* a places round-robin, which a coordinator started afresh would not:
	 * only an adopting one loads nothing then */
	serve a = coordinator(&p, "a.log", "round-robin");
	long long loaded[2];
	for (int i = 0; i < 2; i++)
		loaded[i] = worker_stat(p.url[i], p.secret, "bytes_loaded_total");
	serve b = coordinator(&p, "b.log", NULL);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(worker_stat(p.url[i], p.secret, "bytes_loaded_total"), loaded[i],
		             "worker %d loaded more for the second coordinator", i);

	/* a long stream on a, killed once it has streamed something */
	char out[256], cmd[1024];
	tmp_path(out, sizeof out, "stream.txt");
	snprintf(cmd, sizeof cmd,
	         "curl -sN -m 60 -H 'Content-Type: application/json' -d "
	         "'{\"prompt\":\"In the beginning\",\"max_tokens\":400,\"temperature\":0,"
	         "\"stream\":true}' http://127.0.0.1:%d/v1/completions > %s",
	         a.port, out);
	const pid_t client = fork();
	cr_assert(client >= 0);
	if (client == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	track(client);
	bool streaming = false;
	for (int t = 0; t < 300 && !streaming; t++) {
		streaming = strstr(slurp(out), "data: ") != NULL;
		usleep(20000);
	}
	cr_assert(streaming, "a streamed nothing: %s", slurp(a.log));
	kill(a.pid, SIGKILL);
	waitpid(a.pid, NULL, 0);
	int st = 0;
	waitpid(client, &st, 0);
	/* its client: an error (a cut stream), never [DONE] */
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0,
	          "the killed coordinator's client ended with %#x", st);
	cr_assert(strstr(slurp(out), "[DONE]") == NULL, "the cut stream ended with [DONE]");
	unlink(out);

	/* the workers lose a's session, keep serving b */
	for (int i = 0; i < 2; i++)
		cr_assert(coordinators_become(p.url[i], p.secret, 1),
		          "worker %d still counts the killed coordinator", i);
	char texts[4][2][512];
	const serve *const only_b[] = {&b};
	ask_all(texts, only_b, 1, 2);
	check_texts(&p, texts, 4, "the other coordinator after the kill");

	/* b ends too; a again, alone and with the default placement: it adopts
	 * what the workers hold and loads nothing */
	stop_serve(&b);
	for (int i = 0; i < 2; i++)
		cr_assert(coordinators_become(p.url[i], p.secret, 0),
		          "worker %d still counts a coordinator", i);
	a = coordinator(&p, "a2.log", NULL);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(worker_stat(p.url[i], p.secret, "bytes_loaded_total"), loaded[i],
		             "worker %d loaded again for the restarted coordinator", i);
		cr_assert_eq(worker_stat(p.url[i], p.secret, "coordinators"), 1);
	}
	cr_assert(strstr(slurp(a.log), "adopted, nothing to load") != NULL,
	          "the restarted coordinator did not adopt the workers: %s", slurp(a.log));
	const serve *const only_a[] = {&a};
	ask_all(texts, only_a, 1, 2);
	check_texts(&p, texts, 4, "the restarted coordinator");
	stop_serve(&a);
	pool_stop(&p);
}

/* The number after "name " in s's /metrics (-1 if absent). */
static double metric(const serve *s, const char *name)
{
	char out[256], pat[128];
	tmp_path(out, sizeof out, "metrics.txt");
	cr_assert_eq(sh("curl -sf -m 10 http://127.0.0.1:%d/metrics > %s", s->port, out), 0);
	snprintf(pat, sizeof pat, "\n%s ", name);
	const char *p = strstr(slurp(out), pat);
	unlink(out);
	return p ? atof(p + strlen(pat)) : -1;
}

Test(multicoord, an_idle_coordinator_rebalances_on_the_load_the_other_brought, .timeout = 120,
     .fini = kill_tracked)
{
	pool p;
	pool_start(&p);
	serve a = coordinator(&p, "a.log", NULL);
	/* b serves nothing; its windows (0.3 s) see the workers' counts */
	serve b = start_serve(p.m, "b.log",
	                      (const char *const[]){"--worker", p.url[0], "--worker", p.url[1],
	                                            "--secret-file", p.secret, "--rebalance", "0.3",
	                                            NULL});
	cr_assert_eq(metric(&b, "moemesh_expert_imbalance"), 0.0);
	/* b's own dispatches are none: only the union gives its windows a load.
	 * b reads the workers' counts when it starts and at every window (its
	 * idle tick closes one about every second), each window's load being
	 * their growth since the last reading.  a is kept busy until b has seen
	 * a's rows, and must have by the second window closed from now on, which
	 * lies wholly within a's requests: no window may go without the counts
	 * (one that met b's heartbeat thread holding a link's control lock once
	 * did, window after window).  Whatever b re-places, a keeps its bytes. */
	char texts[2][2][512];
	const serve *const only_a[] = {&a};
	const double w0 = metric(&b, "moemesh_load_windows_total");
	cr_assert_geq(w0, 0, "b's /metrics has no moemesh_load_windows_total");
	double w = w0;
	bool seen = false;
	while (!seen && w < w0 + 2) {
		ask_all(texts, only_a, 1, 1);
		check_texts(&p, texts, 2, "a, with b rebalancing");
		/* the count first: the imbalance read after it is of window w or later */
		w = metric(&b, "moemesh_load_windows_total");
		seen = metric(&b, "moemesh_expert_imbalance") > 0;
	}
	cr_assert(seen, "the idle coordinator closed windows %g to %g, none with the other's load",
	          w0 + 1, w);
	cr_assert_geq(metric(&b, "moemesh_load_windows_union_total"), 1);
	cr_assert_gt(metric(&b, "moemesh_rebalance_imbalance_before"), 0);
	stop_serve(&a);
	stop_serve(&b);
	pool_stop(&p);
}

/* ---- the raw protocol: two sessions on one worker ----------------------------------- */

static void ctl_recv(nng_socket s, nng_msg **m, moe_frame *f)
{
	cr_assert_eq(moe_nng_recv(m, f, s, 10000), MOE_OK, "no answer: %s", moe_err_detail());
}

/* A session without a secret on the worker at ipc://sock: HELLO / AUTH
 * on *s, then its data connection on *fd. */
static void session_open(nng_socket *s, int *fd, const char *sock, const uint8_t *id)
{
	char url[300], dpath[300];
	snprintf(url, sizeof url, "ipc://%s", sock);
	snprintf(dpath, sizeof dpath, "%s.data", sock);
	cr_assert_eq(nng_pair1_open(s), 0);
	cr_assert_eq(nng_dial(*s, url, NULL, 0), 0);
	uint8_t chal[32] = {7}, mac[32];
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, (uint8_t *)id};
	h.challenge = (ProtobufCBinaryData){32, chal};
	nng_msg *m;
	moe_frame f;
	cr_assert_eq(moe_nng_send(*s, MOE_MSG_HELLO, &h.base), MOE_OK);
	ctl_recv(*s, &m, &f);
	cr_assert_eq(f.kind, MOE_MSG_HELLO_REPLY);
	Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	cr_assert(r && r->challenge.len == 32);
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, chal, r->challenge.data, id),
	             MOE_OK);
	moemesh__hello_reply__free_unpacked(r, NULL);
	nng_msg_free(m);
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, mac};
	cr_assert_eq(moe_nng_send(*s, MOE_MSG_AUTH, &a.base), MOE_OK);
	ctl_recv(*s, &m, &f);
	cr_assert_eq(f.kind, MOE_MSG_AUTH_OK);
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	cr_assert(ok && ok->data_token.len == 32);
	cr_assert_eq(moe_sock_connect_unix(fd, dpath), MOE_OK);
	Moemesh__AuthResponse da = MOEMESH__AUTH_RESPONSE__INIT;
	da.response = ok->data_token;
	cr_assert_eq(moe_stream_send(*fd, MOE_MSG_AUTH, &da.base, NULL, 0), MOE_OK);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	nng_msg_free(m);
}

/* ASSIGN of every expert of every layer on s; waits for its end. */
static void assign_all(nng_socket s, int n_layer, int n_expert)
{
	Moemesh__LayerExperts le[64], *lp[64];
	Moemesh__ExpertRange rg[64], *rp[64];
	cr_assert_leq(n_layer, 64);
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	for (int l = 0; l < n_layer; l++) {
		moemesh__layer_experts__init(&le[l]);
		moemesh__expert_range__init(&rg[l]);
		rg[l].first = 0;
		rg[l].count = (uint32_t)n_expert;
		rp[l] = &rg[l];
		le[l].layer = (uint32_t)l;
		le[l].n_ranges = 1;
		le[l].ranges = &rp[l];
		lp[l] = &le[l];
	}
	a.n_layers = (size_t)n_layer;
	a.layers = lp;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, &a.base), MOE_OK);
	for (bool done = false; !done;) {
		nng_msg *m;
		moe_frame f;
		ctl_recv(s, &m, &f);
		cr_assert_eq(f.kind, MOE_MSG_LOAD_PROGRESS, "got %s", moe_msg_kind_name(f.kind));
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		cr_assert(p != NULL);
		done = p->done;
		moemesh__load_progress__free_unpacked(p, NULL);
		nng_msg_free(m);
	}
}

/* A DISPATCH of n rows of layer 0 (xq, ids, w) on fd. */
static void dispatch_send(int fd, const moe_hparams *hp, const moe_expert_ffn *ffn,
                          const uint8_t *xq, int n, int32_t *ids, float *w, uint64_t step)
{
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	d.step = step;
	d.layer = 0;
	d.n_tokens = (uint32_t)n;
	d.act_type = (uint32_t)moe_type_get(ffn->gate.type)->vec_dot_type;
	d.n_embd = (uint32_t)hp->n_embd;
	d.n_used = (uint32_t)hp->n_expert_used;
	d.n_expert_ids = d.n_weights = (size_t)n * (size_t)hp->n_expert_used;
	d.expert_ids = ids;
	d.weights = w;
	struct iovec iov = {.iov_base = (void *)xq,
	                    .iov_len = (size_t)n * moe_act_row_size(ffn->gate.type, hp->n_embd)};
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1), MOE_OK);
}

/* Its RESULT's rows into out (n rows of n_embd). */
static void result_recv(int fd, moe_rx *rx, const moe_hparams *hp, int n, int64_t *out)
{
	bool done;
	moe_frame f;
	cr_assert_eq(moe_rx_read(&done, &f, rx, fd, (size_t)1 << 24, true), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert_eq(f.kind, MOE_MSG_RESULT, "got %s", moe_msg_kind_name(f.kind));
	cr_assert_eq(f.payload_len, (size_t)n * (size_t)hp->n_embd * 8);
	memcpy(out, f.payload, f.payload_len);
}

Test(multicoord, dispatches_that_arrive_together_are_one_batch_with_the_rows_of_each_alone,
     .timeout = 60, .fini = kill_tracked)
{
	char m[1024], sock[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(sock, sizeof sock, "batch.sock");
	char url[300];
	snprintf(url, sizeof url, "ipc://%s", sock);
	unlink(sock);
	const pid_t w = start_worker(m, url, NULL);
	moe_model *model;
	cr_assert_eq(moe_model_open(&model, m), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(model);
	const moe_expert_ffn *ffn = moe_model_experts(model, 0);
	uint8_t id[MOE_ID_BYTES];
	cr_assert_eq(moe_model_identity(id, moe_model_gguf(model)), MOE_OK);
	nng_socket s[2];
	int fd[2];
	moe_rx rx[2] = {{0}};
	for (int k = 0; k < 2; k++) {
		session_open(&s[k], &fd[k], sock, id);
		assign_all(s[k], hp->n_layer, hp->n_expert);
	}
	/* two coordinators' dispatches: 2 and 3 rows, their own experts */
	const int nt[2] = {2, 3}, nu = hp->n_expert_used;
	const size_t row = moe_act_row_size(ffn->gate.type, hp->n_embd);
	uint8_t *xq[2];
	int32_t ids[2][3 * 16];
	float wt[2][3 * 16];
	int64_t *alone[2], *together[2];
	cr_assert_leq(nu, 16);
	for (int k = 0; k < 2; k++) {
		float *x = malloc((size_t)nt[k] * (size_t)hp->n_embd * sizeof *x);
		for (int i = 0; i < nt[k] * hp->n_embd; i++)
			x[i] = (float)((i * (31 + 6 * k)) % 29 - 14) / 9.0f;
		xq[k] = moe_aligned_alloc(64, (size_t)nt[k] * row);
		cr_assert_eq(
		    moe_quantize_act_rows(NULL, xq[k], ffn->gate.type, x, hp->n_embd, nt[k]),
		    MOE_OK);
		free(x);
		for (int i = 0; i < nt[k] * nu; i++) {
			ids[k][i] = (int32_t)((i * 5 + k * 3) % hp->n_expert);
			wt[k][i] = 0.25f + 0.125f * (float)(i % 3);
		}
		alone[k] = malloc((size_t)nt[k] * (size_t)hp->n_embd * 8);
		together[k] = malloc((size_t)nt[k] * (size_t)hp->n_embd * 8);
	}
	/* each alone, the second one waiting for the first */
	for (int k = 0; k < 2; k++) {
		dispatch_send(fd[k], hp, ffn, xq[k], nt[k], ids[k], wt[k], 1);
		result_recv(fd[k], &rx[k], hp, nt[k], alone[k]);
	}
	/* as this process computes them */
	for (int k = 0; k < 2; k++) {
		moe_fix_t *want = calloc((size_t)nt[k] * (size_t)hp->n_embd, sizeof *want);
		cr_assert_eq(moe_expert_ffn_run_q(NULL, want, ffn, xq[k], nt[k], ids[k], wt[k], nu),
		             MOE_OK);
		cr_assert_arr_eq(want, alone[k], (size_t)nt[k] * (size_t)hp->n_embd * 8,
		                 "dispatch %d alone: not this process's rows", k);
		free(want);
	}
	/* both sent while the worker is stopped (waited for: a signal stops a
	 * running process a moment later): its next look finds both */
	kill(w, SIGSTOP);
	int ws = 0;
	cr_assert_eq(waitpid(w, &ws, WUNTRACED), w);
	cr_assert(WIFSTOPPED(ws));
	for (int k = 0; k < 2; k++)
		dispatch_send(fd[k], hp, ffn, xq[k], nt[k], ids[k], wt[k], 2);
	kill(w, SIGCONT);
	for (int k = 0; k < 2; k++) {
		result_recv(fd[k], &rx[k], hp, nt[k], together[k]);
		cr_assert_arr_eq(alone[k], together[k], (size_t)nt[k] * (size_t)hp->n_embd * 8,
		                 "dispatch %d in a batch: other rows than alone", k);
	}
	/* and they were one batch */
	nng_msg *msg;
	moe_frame f;
	cr_assert_eq(moe_nng_send(s[0], MOE_MSG_STATS_REQUEST, NULL), MOE_OK);
	ctl_recv(s[0], &msg, &f);
	cr_assert_eq(f.kind, MOE_MSG_STATS);
	Moemesh__Stats *st = moemesh__stats__unpack(NULL, f.header_len, f.header);
	cr_assert(st != NULL);
	cr_assert_eq(st->dispatches, 4);
	cr_assert_eq(st->dispatches_merged, 2, "%llu dispatches computed in a batch, not 2",
	             (unsigned long long)st->dispatches_merged);
	/* the rows each worker computed, per expert, for both sessions */
	uint64_t rows = 0;
	for (size_t k = 0; k < st->n_expert_rows; k++)
		rows += st->expert_rows[k];
	cr_assert_eq(rows, (uint64_t)(2 * (nt[0] + nt[1]) * nu));
	moemesh__stats__free_unpacked(st, NULL);
	nng_msg_free(msg);
	for (int k = 0; k < 2; k++) {
		close(fd[k]);
		moe_rx_free(&rx[k]);
		nng_close(s[k]);
		moe_aligned_free(xq[k]);
		free(alone[k]);
		free(together[k]);
	}
	moe_model_destroy(model);
	kill(w, SIGTERM);
	waitpid(w, &ws, 0);
	cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the worker ended with %#x", ws);
	unlink(sock);
}
