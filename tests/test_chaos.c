/*
 * test_chaos.c - failure as a routine event: workers killed (SIGKILL) or
 * frozen (SIGSTOP) under `serve` while four clients stream (`moemesh bench
 * chaos`, a few iterations: the streams must be the bytes of an undisturbed
 * run, and with every worker gone a request gets 503 and the reason), and a
 * worker that answers DISPATCHes with ERROR (the test harness's --error-on /
 * --error-from): a few in a row are retried, not fatal; more mark it dead.
 * MOE_CHAOS_ITERATIONS (the sanitizer tree sets it lower) sets the number of
 * chaos iterations.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert_not_null(v, "%s is not set", name);
	return v;
}

Test(chaos, killed_and_frozen_workers_under_serve_change_no_streamed_byte, .timeout = 300)
{
	const char *it = getenv("MOE_CHAOS_ITERATIONS");
	const int n = it != NULL ? atoi(it) : 4;
	cr_assert_gt(n, 0);
	/* bench chaos fails on a stream that differs from the undisturbed one, a
	 * stream without [DONE], a server that crashes, or no 503 with the
	 * reason once every worker is dead */
	cr_assert_eq(sh("'%s' bench chaos -m '%s/models/kjv-qwen3next-Q4_K_M.gguf' "
	                "--iterations %d --deadline-ms 500 --seed 7",
	                bin(), env("MOE_SOURCE_DIR"), n),
	             0, "bench chaos failed (its output above)");
	/* one copy of each expert: a loss re-loads its experts onto survivors */
	cr_assert_eq(sh("'%s' bench chaos -m '%s/models/kjv-qwen3next-Q4_K_M.gguf' "
	                "--iterations 2 --deadline-ms 500 --seed 11 --replicate none",
	                bin(), env("MOE_SOURCE_DIR")),
	             0, "bench chaos --replicate none failed (its output above)");
}

static void tmp_path(char *out, size_t n, const char *what)
{
	snprintf(out, n, "/tmp/moetest-chaos-%d-%s", (int)getpid(), what);
}

/* Starts the test harness worker (faults: its options) on ipc://sock and
 * waits until it listens. */
static pid_t start_harness(const char *model, const char *sock, const char *faults)
{
	int fds[2];
	char cmd[4096];
	cr_assert_eq(pipe(fds), 0);
	unlink(sock);
	snprintf(cmd, sizeof cmd,
	         "exec '%s' %s -m '%s' --listen ipc://%s --threads 1 --ready-fd %d --quiet",
	         env("MOE_TEST_WORKER"), faults, model, sock, fds[1]);
	const pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	struct pollfd p = {.fd = fds[0], .events = POLLIN};
	char b = 0;
	const bool ready = poll(&p, 1, 10000) == 1 && read(fds[0], &b, 1) == 1;
	close(fds[0]);
	cr_assert(ready, "the harness worker on %s did not start listening", sock);
	return pid;
}

/* SIGTERM, then its wait status (SIGKILL after 20 s). */
static int stop_harness(pid_t pid)
{
	kill(pid, SIGTERM);
	int st = 0;
	for (int t = 0; t < 2000; t++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

static bool file_has(const char *path, const char *needle)
{
	static char buf[1 << 16];
	FILE *fp = fopen(path, "rb");
	const size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
	if (fp)
		fclose(fp);
	buf[n] = '\0';
	return strstr(buf, needle) != NULL;
}

Test(chaos, error_replies_are_retried_before_a_worker_is_declared_dead, .timeout = 120)
{
	char m[1024], sock[256], ref[256], out[256], err[256];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	tmp_path(sock, sizeof sock, "e.sock");
	tmp_path(ref, sizeof ref, "ref.txt");
	tmp_path(out, sizeof out, "out.txt");
	tmp_path(err, sizeof err, "err.txt");
	const char *gen = "-p 'In the beginning' -n 12 --temp 0 --threads 1";
	cr_assert_eq(sh("'%s' run -m '%s' %s > %s 2>/dev/null", bin(), m, gen, ref), 0);

	/* the only holder of every expert answers two DISPATCHes in a row with
	 * ERROR (the bound), and a third later: retried, the text unchanged */
	pid_t w = start_harness(m, sock, "--error-on 3,4,9");
	int rc =
	    sh("'%s' run -m '%s' %s --worker ipc://%s > %s 2> %s", bin(), m, gen, sock, out, err);
	int st = stop_harness(w);
	cr_assert_eq(rc, 0, "run failed although the worker's ERRORs were transient");
	cr_assert_eq(sh("cmp -s '%s' '%s'", ref, out), 0, "the text changed");
	cr_assert(file_has(err, "3 ERROR replies retried, 0 workers lost"),
	          "the retries are not counted");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker ended with status %d", st);

	/* one more than the bound in a row: dead, and with no other holder the
	 * run fails naming why */
	w = start_harness(m, sock, "--error-from 3");
	rc = sh("'%s' run -m '%s' %s --worker ipc://%s > %s 2> %s", bin(), m, gen, sock, out, err);
	st = stop_harness(w);
	cr_assert_eq(rc, 1, "run did not fail with its only worker answering ERROR");
	cr_assert(file_has(err, "answered ERROR 3 times in a row"), "no reason given");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker ended with status %d", st);
	unlink(ref);
	unlink(out);
	unlink(err);
	unlink(sock);
}
