/* core.c - error names and per-thread detail, aligned memory, whole files,
 * clocks. */
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char err_detail[512];

static const char *const err_names[MOE_ERR__COUNT] = {
    [MOE_OK] = "MOE_OK",
    [MOE_ERR_NOMEM] = "MOE_ERR_NOMEM",
    [MOE_ERR_INVAL] = "MOE_ERR_INVAL",
    [MOE_ERR_IO] = "MOE_ERR_IO",
    [MOE_ERR_UNSUPPORTED] = "MOE_ERR_UNSUPPORTED",
    [MOE_ERR_NOT_FOUND] = "MOE_ERR_NOT_FOUND",
    [MOE_ERR_BAD_MAGIC] = "MOE_ERR_BAD_MAGIC",
    [MOE_ERR_BAD_VERSION] = "MOE_ERR_BAD_VERSION",
    [MOE_ERR_TRUNCATED] = "MOE_ERR_TRUNCATED",
    [MOE_ERR_BAD_COUNT] = "MOE_ERR_BAD_COUNT",
    [MOE_ERR_BAD_STRING] = "MOE_ERR_BAD_STRING",
    [MOE_ERR_BAD_TYPE] = "MOE_ERR_BAD_TYPE",
    [MOE_ERR_BAD_SHAPE] = "MOE_ERR_BAD_SHAPE",
    [MOE_ERR_OVERFLOW] = "MOE_ERR_OVERFLOW",
    [MOE_ERR_BAD_OFFSET] = "MOE_ERR_BAD_OFFSET",
    [MOE_ERR_BAD_ALIGNMENT] = "MOE_ERR_BAD_ALIGNMENT",
    [MOE_ERR_DUPLICATE] = "MOE_ERR_DUPLICATE",
    [MOE_ERR_BAD_VALUE] = "MOE_ERR_BAD_VALUE",
    [MOE_ERR_FORMAT] = "MOE_ERR_FORMAT",
    [MOE_ERR_PROTO] = "MOE_ERR_PROTO",
    [MOE_ERR_TIMEOUT] = "MOE_ERR_TIMEOUT",
    [MOE_ERR_CLOSED] = "MOE_ERR_CLOSED",
    [MOE_ERR_MISMATCH] = "MOE_ERR_MISMATCH",
    [MOE_ERR_BUSY] = "MOE_ERR_BUSY",
    [MOE_ERR_AUTH] = "MOE_ERR_AUTH",
    [MOE_ERR_CANCELED] = "MOE_ERR_CANCELED",
    [MOE_ERR_STATE] = "MOE_ERR_STATE",
    [MOE_ERR_SYS] = "MOE_ERR_SYS",
};

const char *moe_err_name(moe_err err)
{
	if ((unsigned)err >= MOE_ERR__COUNT || err_names[err] == NULL)
		return "MOE_ERR_UNKNOWN";
	return err_names[err];
}

moe_err moe_failv(moe_err err, const char *fmt, va_list ap)
{
	/* formatted aside first: callers may pass moe_err_detail() itself */
	char tmp[sizeof(err_detail)];
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	memcpy(err_detail, tmp, sizeof(tmp));
	return err;
}

moe_err moe_fail(moe_err err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	moe_failv(err, fmt, ap);
	va_end(ap);
	return err;
}

const char *moe_err_detail(void)
{
	return err_detail;
}

void moe_err_clear(void)
{
	err_detail[0] = '\0';
}

void *moe_aligned_alloc(size_t align, size_t size)
{
	void *p = NULL;

	if (posix_memalign(&p, align, size ? size : 1) != 0)
		return NULL;
	return p;
}

void moe_aligned_free(void *p)
{
	free(p);
}

int moe_size_mul(size_t *out, size_t a, size_t b)
{
	size_t r;

	if (__builtin_mul_overflow(a, b, &r))
		return 0;
	*out = r;
	return 1;
}

int moe_size_add(size_t *out, size_t a, size_t b)
{
	size_t r;

	if (__builtin_add_overflow(a, b, &r))
		return 0;
	*out = r;
	return 1;
}

moe_err moe_read_file(char **out, size_t *len, const char *path, size_t max)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return moe_fail(MOE_ERR_IO, "%s: %s", path, strerror(errno));
	moe_err err = MOE_OK;
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	if (b == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "%s", path);
		goto out_close;
	}
	for (;;) {
		if (n + 1 >= cap) {
			char *nb = realloc(b, cap * 2);
			if (nb == NULL) {
				err = moe_fail(MOE_ERR_NOMEM, "%s: %zu bytes", path, cap * 2);
				goto out_free;
			}
			b = nb;
			cap *= 2;
		}
		const size_t r = fread(b + n, 1, cap - n - 1, f);
		n += r;
		if (n > max) {
			err = moe_fail(MOE_ERR_BAD_COUNT, "%s: larger than %zu bytes", path, max);
			goto out_free;
		}
		if (r == 0) {
			if (ferror(f)) {
				err = moe_fail(MOE_ERR_IO, "%s: read failed", path);
				goto out_free;
			}
			break;
		}
	}
	b[n] = '\0';
	*out = b;
	*len = n;
	goto out_close;
out_free:
	free(b);
out_close:
	fclose(f);
	return err;
}

uint64_t moe_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double moe_now_s(void)
{
	return (double)moe_now_ns() * 1e-9;
}
