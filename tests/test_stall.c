/*
 * test_stall.c - a worker that stops reading (frozen by SIGSTOP, as a hung
 * host would be) cannot stall the coordinator's send for good: its data
 * socket's send timeout (coordinator/link.c, the dispatch deadline) fails a
 * DISPATCH that does not fit the socket buffers, the worker is marked lost
 * and the step returns an error.  An in-process coordinator over a real
 * `moemesh worker` on TCP; the coordinator's data socket has its send buffer
 * shrunk here (found among this process's descriptors by its peer's port),
 * so that one prefill's DISPATCH (1 MiB) is far more than what the kernel
 * buffers on both sides hold.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/forward.h"
#include "tests/test_util.h"

static volatile pid_t g_worker;

/* .fini: the worker (stopped or not) does not outlive its test. */
static void reap_worker(void)
{
	if (g_worker > 0) {
		kill(g_worker, SIGKILL);
		kill(g_worker, SIGCONT);
		waitpid(g_worker, NULL, 0);
		g_worker = 0;
	}
}

/* A step that hangs (the bug this test is for) ends the test here, before
 * Criterion's timeout, which would leave the stopped worker behind: the
 * worker is killed and the test dies of SIGALRM (a failure). */
static void on_alarm(int sig)
{
	if (g_worker > 0)
		kill(g_worker, SIGKILL);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* This process's TCP socket whose peer is 127.0.0.1:port, or -1. */
static int socket_to_port(int port)
{
	DIR *d = opendir("/proc/self/fd");
	cr_assert(d != NULL);
	int found = -1;
	const struct dirent *e;
	while ((e = readdir(d)) != NULL && found < 0) {
		const int fd = atoi(e->d_name);
		struct sockaddr_in a;
		socklen_t al = sizeof a;
		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		if (getpeername(fd, (struct sockaddr *)&a, &al) == 0 && a.sin_family == AF_INET &&
		    ntohs(a.sin_port) == port && ntohl(a.sin_addr.s_addr) == INADDR_LOOPBACK)
			found = fd;
	}
	closedir(d);
	return found;
}

Test(stall, a_dispatch_to_a_frozen_worker_fails_at_the_send_timeout, .timeout = 60,
     .fini = reap_worker)
{
	enum { N_TOK = 2048 };
	char model[1024], url[64], cmd[2048], log[256];
	snprintf(model, sizeof model, "%s/qwen3next-tiny-F32.gguf", fixtures());
	const int port = free_port(), dport = free_port();
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen %s --data-port %d --threads 1 --ready-fd 3 "
	         "--quiet",
	         bin(), model, url, dport);
	g_worker = spawn_ready(cmd, url);

	moe_model *m;
	cr_assert_eq(moe_model_open(&m, model), MOE_OK, "%s", moe_err_detail());
	const moe_hparams *hp = moe_model_hparams(m);
	moe_cluster_opts co = {.n_urls = 1, .urls = {url}, .timeout_ms = 1000};
	moe_cluster *cl;
	cr_assert_eq(moe_cluster_create(&cl, m, model, &co), MOE_OK, "%s", moe_err_detail());
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_ctx = N_TOK;
	o.max_batch = N_TOK; /* one DISPATCH per layer: N_TOK rows */
	o.n_threads = 1;
	o.experts = moe_cluster_backend(cl);
	moe_fwd *f;
	cr_assert_eq(moe_fwd_create(&f, m, &o), MOE_OK, "%s", moe_err_detail());
	moe_cluster_set_pool(cl, moe_fwd_pool(f));
	int slot;
	cr_assert_eq(moe_fwd_seq_open(f, &slot), MOE_OK);

	/* the coordinator's data socket: a send buffer of a few KiB (the
	 * worker's receive buffer is its first one: nothing has been read on
	 * it but the token), so the 1 MiB DISPATCH below cannot leave */
	const int dfd = socket_to_port(dport);
	cr_assert_geq(dfd, 0, "no socket to the worker's data port %d", dport);
	const int sb = 4096;
	cr_assert_eq(setsockopt(dfd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb), 0);

	/* the worker frozen (waited for: a signal stops a process a moment later) */
	signal(SIGALRM, on_alarm);
	alarm(45);
	int ws = 0;
	cr_assert_eq(kill(g_worker, SIGSTOP), 0);
	cr_assert_eq(waitpid(g_worker, &ws, WUNTRACED), g_worker);
	cr_assert(WIFSTOPPED(ws));

	/* one prefill step; the coordinator's log lines (stderr) go to a file */
	int32_t *tok = malloc(N_TOK * sizeof *tok), *pos = malloc(N_TOK * sizeof *pos),
	        *sl = malloc(N_TOK * sizeof *sl);
	float *logits = malloc((size_t)N_TOK * (size_t)hp->n_vocab * sizeof *logits);
	cr_assert(tok && pos && sl && logits);
	for (int t = 0; t < N_TOK; t++) {
		tok[t] = (int32_t)((t * 7 + 3) % hp->n_vocab);
		pos[t] = t;
		sl[t] = slot;
	}
	const moe_batch b = {.n_tok = N_TOK, .tokens = tok, .slot = sl, .pos = pos};
	tmp_path(log, sizeof log, "stall.log");
	fflush(stderr);
	const int saved = dup(2), lf = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert(saved >= 0 && lf >= 0);
	cr_assert_eq(dup2(lf, 2), 2);
	close(lf);
	const uint64_t t0 = moe_now_ns();
	const moe_err err = moe_fwd_step(f, logits, &b);
	const double s = (double)(moe_now_ns() - t0) / 1e9;
	fflush(stderr);
	cr_assert_eq(dup2(saved, 2), 2);
	close(saved);
	cr_log_info("the step returned %s after %.2f s: %s", moe_err_name(err), s,
	            moe_err_detail());
	(void)sh("cat '%s' >&2", log);

	cr_expect_neq(err, MOE_OK, "a step whose only worker is frozen succeeded");
	cr_expect(!moe_cluster_link(cl, 0).alive, "the frozen worker is not marked lost");
	/* by the send's timeout, not by the wait for a RESULT that a DISPATCH
	 * small enough to be buffered would have met */
	cr_expect(file_has(log, "lost: data link: send: "),
	          "the worker was not lost at its DISPATCH's send");
	cr_expect_eq(moe_cluster_get_counters(cl).lost, 1);

	/* the worker ends before the coordinator's socket closes (its dialer
	 * may be dialling the frozen worker again: nng#1518) */
	alarm(0);
	reap_worker();
	moe_fwd_destroy(f);
	moe_cluster_destroy(cl);
	moe_model_destroy(m);
	free(tok);
	free(pos);
	free(sl);
	free(logits);
	unlink(log);
}
