/*
 * test_repair.c - a worker lost with no replica of its experts: they are
 * re-loaded onto the survivor, which loads only those (the slices it lacks),
 * not its whole set again: what it read over its ASSIGNs is what it holds in
 * the end.  The text is the one of the single-process run.  Real worker
 * processes (the test harness, --die-after) over real sockets.
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

static pid_t g_pids[2];

static void kill_workers(void)
{
	for (int i = 0; i < 2; i++)
		if (g_pids[i] > 0 && waitpid(g_pids[i], NULL, WNOHANG) == 0) {
			kill(g_pids[i], SIGKILL);
			waitpid(g_pids[i], NULL, 0);
		}
}

/* The test harness worker (faults: its options) on ipc://sock, listening. */
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

Test(repair, a_survivor_loads_only_the_experts_it_takes_over, .timeout = 120, .fini = kill_workers)
{
	char m[1024], sx[256], sy[256], ref[256], out[256], err[256], line[1024];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	snprintf(sx, sizeof sx, "/tmp/moetest-repair-%d-x.sock", (int)getpid());
	snprintf(sy, sizeof sy, "/tmp/moetest-repair-%d-y.sock", (int)getpid());
	snprintf(ref, sizeof ref, "/tmp/moetest-repair-%d-ref.txt", (int)getpid());
	snprintf(out, sizeof out, "/tmp/moetest-repair-%d-out.txt", (int)getpid());
	snprintf(err, sizeof err, "/tmp/moetest-repair-%d-err.txt", (int)getpid());
	const char *gen = "-p 'In the beginning' -n 12 --temp 0 --threads 1";
	cr_assert_eq(sh("'%s' run -m '%s' %s > %s 2>/dev/null", bin(), m, gen, ref), 0);

	/* y holds half the experts, alone, and dies mid-run */
	g_pids[0] = start_harness(m, sx, "");
	g_pids[1] = start_harness(m, sy, "--die-after 6");
	const int rc = sh("'%s' run -m '%s' %s --worker ipc://%s --worker ipc://%s > %s 2> %s",
	                  bin(), m, gen, sx, sy, out, err);
	cr_assert_eq(rc, 0, "run failed with a survivor to take the experts over");
	cr_assert_eq(sh("cmp -s '%s' '%s'", ref, out), 0, "the text changed");

	/* the survivor's statistics line: "worker NAME URL up experts N, loaded
	 * A MB (S s; IN MB in, OUT MB out by K ASSIGNs)" */
	FILE *fp = fopen(err, "r");
	cr_assert_not_null(fp);
	bool found = false, lost = false;
	double held = 0, in = 0;
	int assigns = 0;
	while (fgets(line, sizeof line, fp) != NULL) {
		lost |= strstr(line, "1 workers lost") != NULL;
		const char *p = strstr(line, sx);
		if (p == NULL || strstr(line, " up ") == NULL)
			continue;
		const char *l = strstr(p, "loaded");
		cr_assert_not_null(l, "%s", line);
		double s = 0, dropped = 0;
		cr_assert_eq(sscanf(l, "loaded %lf MB (%lf s; %lf MB in, %lf MB out by %d ASSIGNs)",
		                    &held, &s, &in, &dropped, &assigns),
		             5, "%s", line);
		found = true;
	}
	fclose(fp);
	cr_assert(found, "no statistics line for the survivor");
	cr_assert(lost, "the loss is not reported");
	cr_assert_gt(held, 0.0);
	/* read once each: its own experts, then the lost worker's */
	cr_assert(in == held, "the survivor read %.1f MB over its ASSIGNs and holds %.1f MB", in,
	          held);
	cr_assert_eq(assigns, 2, "the survivor got %d ASSIGNs, not its own and the repair's",
	             assigns);
	kill_workers();
	unlink(sx);
	unlink(sy);
	unlink(ref);
	unlink(out);
	unlink(err);
}
