/*
 * test_connlimit.c - serve's per-address connection limit: connections from
 * one address past --max-conn-per-ip (by default 3/4 of --max-conn) are
 * refused at once, while another address (127.0.0.2, loopback too) is still
 * served.  A real server over real sockets.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

extern char **environ;

static pid_t g_serve;

static void kill_serve(void)
{
	if (g_serve > 0 && waitpid(g_serve, NULL, WNOHANG) == 0) {
		kill(g_serve, SIGKILL);
		waitpid(g_serve, NULL, 0);
	}
}

/* `moemesh serve` on the tiny model with ARGS until ready; its port. */
static int start_serve(const char *const *args)
{
	char m[1024];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	const char *argv[32] = {bin(), "serve", "-m", m, "--port", "0", "--threads", "1"};
	int n = 8;
	for (int i = 0; args[i] != NULL; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_addclose(&fa, fds[0]);
	cr_assert_eq(posix_spawn(&g_serve, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	FILE *err = fdopen(fds[0], "r");
	char line[1024];
	int port = 0;
	while (fgets(line, sizeof line, err) != NULL) {
		const char *p = strstr(line, "listening on http://127.0.0.1:");
		if (p != NULL)
			port = atoi(p + strlen("listening on http://127.0.0.1:"));
		if (strstr(line, "moemesh serve: ready") != NULL)
			break;
	}
	fclose(err);
	cr_assert_gt(port, 0, "the server did not start");
	return port;
}

/* A TCP connection to 127.0.0.1:port from source address src. */
static int dial_from(const char *src, int port)
{
	const int fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	cr_assert_eq(inet_pton(AF_INET, src, &a.sin_addr), 1);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s", src);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
	cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
	return fd;
}

/* Whether fd is answered 200 to GET /health (false: closed or refused); the
 * connection is kept alive. */
static bool health_ok(int fd)
{
	static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
	if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1))
		return false;
	char buf[256];
	struct pollfd p = {.fd = fd, .events = POLLIN};
	cr_assert_eq(poll(&p, 1, 10000), 1, "no answer and no close within 10 s");
	const ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strncmp(buf, "HTTP/1.1 200", 12) == 0;
}

/* With k connections from 127.0.0.1 open (k - 1 idle, the last served), one
 * more from it is refused and one from 127.0.0.2 is served. */
static void check_limit(int port, int k)
{
	int held[16];
	for (int i = 0; i < k; i++)
		held[i] = dial_from("127.0.0.1", port);
	cr_assert(health_ok(held[k - 1]), "connection %d of 127.0.0.1 refused within its limit", k);
	const int over = dial_from("127.0.0.1", port);
	cr_assert(!health_ok(over), "connection %d of 127.0.0.1 served past its limit", k + 1);
	close(over);
	const int other = dial_from("127.0.0.2", port);
	cr_assert(health_ok(other), "127.0.0.2 refused while 127.0.0.1 holds its share");
	close(other);
	for (int i = 0; i < k; i++)
		close(held[i]);
}

Test(connlimit, one_address_is_refused_past_its_share, .timeout = 60, .fini = kill_serve)
{
	const int port =
	    start_serve((const char *const[]){"--max-conn", "6", "--max-conn-per-ip", "2", NULL});
	check_limit(port, 2);
	kill(g_serve, SIGTERM);
	int st = 0;
	waitpid(g_serve, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve ended with status %d", st);
}

Test(connlimit, by_default_one_address_cannot_take_every_slot, .timeout = 60, .fini = kill_serve)
{
	/* --max-conn 8: 6 (3/4) from one address */
	const int port = start_serve((const char *const[]){"--max-conn", "8", NULL});
	check_limit(port, 6);
	kill(g_serve, SIGTERM);
	int st = 0;
	waitpid(g_serve, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve ended with status %d", st);
}
