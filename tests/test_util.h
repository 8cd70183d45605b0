/*
 * test_util.h - what several Criterion programs share: the paths the suite
 * hands them through the environment (MOE_FIXTURES, MOE_BIN: asserted set)
 * and a shell command's exit status.  Static inline: each test_*.c is a
 * program of its own.
 */
#ifndef MOE_TESTS_TEST_UTIL_H
#define MOE_TESTS_TEST_UTIL_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

#endif
