/* args.c - command-line values only the commands parse (token id lists). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "cli/cli.h"

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
