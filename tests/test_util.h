/*
 * test_util.h - what several Criterion programs share: the paths the suite
 * hands them through the environment (MOE_FIXTURES, MOE_BIN: asserted set),
 * a shell command's exit status, a free port, temporary paths, file checks,
 * a sleep, `moemesh serve` started until ready (or refusing to start), and
 * the processes a test started, killed when it ends early.  Static inline:
 * each test_*.c is a program of its own.
 */
#ifndef MOE_TESTS_TEST_UTIL_H
#define MOE_TESTS_TEST_UTIL_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* tests/fixtures of the source tree. */
static inline const char *fixtures(void)
{
	const char *d = getenv("MOE_FIXTURES");
	cr_assert(d != NULL, "MOE_FIXTURES is not set");
	return d;
}

/* The built `moemesh`. */
static inline const char *bin(void)
{
	const char *b = getenv("MOE_BIN");
	cr_assert(b != NULL, "MOE_BIN is not set");
	return b;
}

/* Runs a shell command; returns its exit status (-1 if it did not exit). */
static inline int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	const int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A TCP port on 127.0.0.1 that was free a moment ago. */
static inline int free_port(void)
{
	const int fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof a;
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* /tmp/moetest-PID-name in out (this program's own: PID tells runs apart). */
static inline void tmp_path(char *out, size_t n, const char *name)
{
	snprintf(out, n, "/tmp/moetest-%d-%s", (int)getpid(), name);
}

static inline void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* Whether the file holds needle (false if it cannot be read). */
static inline bool file_has(const char *path, const char *needle)
{
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return false;
	size_t cap = 1 << 16, n = 0, got;
	char *buf = malloc(cap + 1);
	cr_assert(buf != NULL);
	while ((got = fread(buf + n, 1, cap - n, fp)) > 0) {
		n += got;
		if (n == cap) {
			buf = realloc(buf, (cap *= 2) + 1);
			cr_assert(buf != NULL);
		}
	}
	fclose(fp);
	buf[n] = '\0';
	const bool has = strstr(buf, needle) != NULL;
	free(buf);
	return has;
}

/* Whether the two files have the same bytes. */
static inline bool same_file(const char *a, const char *b)
{
	return sh("cmp -s '%s' '%s'", a, b) == 0;
}

/* Runs the shell command line cmd, which gives its program `--ready-fd 3`
 * (fd 3 is the write end of a pipe), and waits up to 10 s for the byte the
 * program writes there once it listens; asserts it came, naming what.
 * Returns the pid (the caller stops and reaps it). */
static inline pid_t spawn_ready(const char *cmd, const char *what)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	const pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		if (fds[1] != 3 && (dup2(fds[1], 3) != 3 || close(fds[1]) != 0))
			_exit(127);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	struct pollfd p = {.fd = fds[0], .events = POLLIN};
	char b = 0;
	const bool ready = poll(&p, 1, 10000) == 1 && read(fds[0], &b, 1) == 1;
	close(fds[0]);
	if (!ready) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	cr_assert(ready, "%s did not start listening", what);
	return pid;
}

extern char **environ;

/* A `moemesh serve` the test started: its pid, HTTP port and stderr. */
typedef struct serve_proc {
	pid_t pid;
	int port;
	FILE *err;
} serve_proc;

/* How spawn_serve_opts runs serve. */
typedef struct serve_opts {
	int threads;         /* --threads (0: 1) */
	char *refusal;       /* not NULL: serve must refuse to start (exit 1 before */
	size_t refusal_size; /* its ready line); its stderr is kept here */
} serve_opts;

/* Runs `moemesh serve -m model --port 0 --threads T ARGS...` (args
 * NULL-terminated, or NULL), echoing its stderr until its ready line; asserts
 * that came (the process killed first), naming what serve said.  The caller
 * stops it and reads the rest of err.  With o.refusal: asserts instead that
 * serve exits 1 without that line, keeps its stderr in o.refusal and returns
 * pid 0. */
static inline serve_proc spawn_serve_opts(const char *model, const char *const *args, serve_opts o)
{
	char threads[16];
	snprintf(threads, sizeof threads, "%d", o.threads > 0 ? o.threads : 1);
	const char *argv[32] = {bin(), "serve", "-m", model, "--port", "0", "--threads", threads};
	int n = 8;
	for (int i = 0; args != NULL && args[i] != NULL; i++) {
		cr_assert_lt(n, 31);
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_addclose(&fa, fds[0]);
	serve_proc s = {0};
	cr_assert_eq(posix_spawn(&s.pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	s.err = fdopen(fds[0], "r");
	char said[8192] = "", line[1024];
	size_t used = 0;
	while (fgets(line, sizeof line, s.err) != NULL) {
		fputs(line, stderr);
		if (used + strlen(line) < sizeof said) {
			memcpy(said + used, line, strlen(line) + 1);
			used += strlen(line);
		}
		const char *p = strstr(line, "listening on http://");
		if (p != NULL && (p = strchr(p + strlen("listening on http://"), ':')) != NULL)
			s.port = atoi(p + 1);
		if (strstr(line, "moemesh serve: ready") != NULL) {
			if (o.refusal != NULL) {
				kill(s.pid, SIGKILL);
				waitpid(s.pid, NULL, 0);
			}
			cr_assert(o.refusal == NULL, "the server started: %s", said);
			cr_assert_gt(s.port, 0, "no port in: %s", said);
			return s;
		}
	}
	int st = 0;
	waitpid(s.pid, &st, 0);
	fclose(s.err);
	cr_assert(o.refusal != NULL, "the server did not start: %s", said);
	snprintf(o.refusal, o.refusal_size, "%s", said);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "refused with exit status %d: %s", st,
	          said);
	return (serve_proc){0};
}

/* spawn_serve_opts with --threads 1, expecting it to start. */
static inline serve_proc spawn_serve(const char *model, const char *const *args)
{
	return spawn_serve_opts(model, args, (serve_opts){0});
}

/* The processes a test started (up to 16), for kill_tracked. */
static inline pid_t *tracked_pids(void)
{
	static pid_t pids[16];
	return pids;
}

/* Adds pid to the processes kill_tracked ends. */
static inline void track(pid_t pid)
{
	pid_t *t = tracked_pids();
	for (int i = 0; i < 16; i++)
		if (t[i] == 0) {
			t[i] = pid;
			return;
		}
	cr_assert_fail("more than 16 tracked processes");
}

/* A test's .fini: kills (SIGCONT first, for a frozen one) and reaps every
 * tracked process still running, so that none outlives a test an assertion
 * ended early. */
static inline void kill_tracked(void)
{
	pid_t *t = tracked_pids();
	for (int i = 0; i < 16; i++)
		if (t[i] > 0 && waitpid(t[i], NULL, WNOHANG) == 0) {
			kill(t[i], SIGCONT);
			kill(t[i], SIGKILL);
			waitpid(t[i], NULL, 0);
		}
}

#endif
