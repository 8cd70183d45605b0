/*
 * test_util.h - what several Criterion programs share: the paths the suite
 * hands them through the environment (MOE_FIXTURES, MOE_BIN: asserted set)
 * and a shell command's exit status.  Static inline: each test_*.c is a
 * program of its own.
 */
#ifndef MOE_TESTS_TEST_UTIL_H
#define MOE_TESTS_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

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

#endif
