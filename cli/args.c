/* args.c - command-line values only the commands parse (token id lists) and
 * the options every long-running command shares (--log-level). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/core.h"

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

int moe_cli_log_level_arg(int *i, int argc, char **argv, const char *cmd)
{
	if (strcmp(argv[*i], "--log-level") != 0)
		return 0;
	moe_log_level l;
	if (*i + 1 >= argc) {
		fprintf(stderr, "moemesh %s: --log-level needs a value (error|warn|info|debug)\n",
		        cmd);
		return -1;
	}
	if (moe_log_level_parse(&l, argv[*i + 1]) != MOE_OK) {
		fprintf(stderr, "moemesh %s: %s\n", cmd, moe_err_detail());
		return -1;
	}
	moe_log_set_level(l);
	++*i;
	return 1;
}
