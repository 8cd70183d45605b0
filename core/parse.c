/* parse.c - numbers from text (command lines, config files), strictly: the
 * whole string, in range. */
#include "core/core.h"

#include <errno.h>
#include <stdlib.h>

int moe_parse_long(long *out, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long x = strtol(s, &end, 10);
	if (end == s || *end || errno != 0 || x < lo || x > hi)
		return -1;
	*out = x;
	return 0;
}

int moe_parse_int(int *out, const char *s, long lo, long hi)
{
	long x;
	if (lo < INT32_MIN || hi > INT32_MAX || moe_parse_long(&x, s, lo, hi) != 0)
		return -1;
	*out = (int)x;
	return 0;
}

int moe_parse_float(float *out, const char *s)
{
	char *end;
	errno = 0;
	float x = strtof(s, &end);
	if (end == s || *end || errno != 0)
		return -1;
	*out = x;
	return 0;
}
