/* args.c - command-line values shared by the moemesh commands. */
#include "coordinator/args.h"

#include <errno.h>
#include <stdlib.h>

int moe_arg_long(long *out, const char *s, long lo, long hi)
{
	char *end;
	errno = 0;
	long x = strtol(s, &end, 10);
	if (end == s || *end || errno != 0 || x < lo || x > hi)
		return -1;
	*out = x;
	return 0;
}

int moe_arg_int(int *out, const char *s, long lo, long hi)
{
	long x;
	if (lo < INT32_MIN || hi > INT32_MAX || moe_arg_long(&x, s, lo, hi) != 0)
		return -1;
	*out = (int)x;
	return 0;
}

int moe_arg_float(float *out, const char *s)
{
	char *end;
	errno = 0;
	float x = strtof(s, &end);
	if (end == s || *end || errno != 0)
		return -1;
	*out = x;
	return 0;
}

int moe_arg_tokens(int32_t **out, size_t *n_out, const char *s)
{
	size_t n = 1;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	int32_t *v = malloc(n * sizeof *v);
	if (v == NULL)
		return -1;
	const char *p = s;
	for (size_t i = 0; i < n; i++) {
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno != 0 || x < 0 || x > INT32_MAX || (*end != ',' && *end)) {
			free(v);
			return -1;
		}
		v[i] = (int32_t)x;
		p = end + (*end == ',');
	}
	*out = v;
	*n_out = n;
	return 0;
}
