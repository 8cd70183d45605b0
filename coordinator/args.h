/*
 * args.h - private to coordinator/: the command-line values every moemesh
 * command parses the same way.  Each returns 0 on success and -1 (leaving
 * *out untouched) for text that is not entirely a number in range.
 */
#ifndef MOE_ARGS_H
#define MOE_ARGS_H

#include <stddef.h>
#include <stdint.h>

int moe_arg_long(long *out, const char *s, long lo, long hi);
int moe_arg_int(int *out, const char *s, long lo, long hi);
int moe_arg_float(float *out, const char *s);

/* "1,2,3" (ids 0..INT32_MAX) into a new array (*out, *n; caller frees);
 * -1 for a malformed list or no memory. */
int moe_arg_tokens(int32_t **out, size_t *n, const char *s);

#endif
