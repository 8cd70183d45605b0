/* log.c - log lines on stderr: a process-wide level (error, warn, info,
 * debug) set once from --log-level, each line written whole with its UTC
 * time and level, or with a syslog priority prefix and no time when stderr
 * is the journal's stream (systemd's JOURNAL_STREAM names it). */
#include "core/core.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = MOE_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const int level_syslog[] = {3, 4, 6, 7}; /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */

moe_err moe_log_level_parse(moe_log_level *out, const char *s)
{
	for (int i = 0; i <= MOE_LOG_DEBUG; i++)
		if (s != NULL && strcmp(s, level_names[i]) == 0) {
			*out = (moe_log_level)i;
			return MOE_OK;
		}
	return moe_fail(MOE_ERR_INVAL, "--log-level '%s': want error, warn, info or debug",
	                s ? s : "");
}

const char *moe_log_level_name(moe_log_level l)
{
	return l >= MOE_LOG_ERROR && l <= MOE_LOG_DEBUG ? level_names[l] : "?";
}

void moe_log_set_level(moe_log_level l)
{
	atomic_store(&log_level, (int)l);
}

moe_log_level moe_log_get_level(void)
{
	return (moe_log_level)atomic_load(&log_level);
}

bool moe_log_enabled(moe_log_level l)
{
	return (int)l <= atomic_load(&log_level);
}

/* Whether stderr is the stream JOURNAL_STREAM ("DEV:INODE") names. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(2, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void moe_logv(moe_log_level l, const char *fmt, va_list ap)
{
	if (!moe_log_enabled(l) || l < MOE_LOG_ERROR)
		return;
	char line[2048];
	int n;
	if (stderr_is_journal()) {
		n = snprintf(line, sizeof line, "<%d>", level_syslog[l]);
	} else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
		             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		             tm.tm_sec, ts.tv_nsec / 1000000, level_names[l]);
	}
	if (n < 0)
		return;
	const int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	/* one write: lines of several threads do not interleave */
	fwrite(line, 1, len, stderr);
	fflush(stderr);
}

void moe_log(moe_log_level l, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	moe_logv(l, fmt, ap);
	va_end(ap);
}
