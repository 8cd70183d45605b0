/* test_core.c - the error enum, per-thread detail and size arithmetic. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

Test(core, every_error_has_a_distinct_name)
{
	for (int i = 0; i < MOE_ERR__COUNT; i++) {
		cr_assert_str_neq(moe_err_name((moe_err)i), "MOE_ERR_UNKNOWN", "code %d", i);
		for (int j = 0; j < i; j++)
			cr_assert_str_neq(moe_err_name((moe_err)i), moe_err_name((moe_err)j));
	}
	cr_assert_str_eq(moe_err_name((moe_err)9999), "MOE_ERR_UNKNOWN");
}

Test(core, fail_records_detail_and_returns_code)
{
	moe_err_clear();
	cr_assert_str_eq(moe_err_detail(), "");
	moe_err e = moe_fail(MOE_ERR_TRUNCATED, "field %s at offset %d", "n_tensors", 8);
	cr_assert_eq(e, MOE_ERR_TRUNCATED);
	cr_assert_str_eq(moe_err_detail(), "field n_tensors at offset 8");
}

Test(core, size_arithmetic_reports_overflow)
{
	size_t r = 7;
	cr_assert_eq(moe_size_mul(&r, SIZE_MAX / 2, 3), 0);
	cr_assert_eq(r, 7);
	cr_assert_eq(moe_size_mul(&r, 1u << 20, 1u << 10), 1);
	cr_assert_eq(r, (size_t)1 << 30);
	cr_assert_eq(moe_size_add(&r, SIZE_MAX, 1), 0);
	cr_assert_eq(moe_size_add(&r, 40, 2), 1);
	cr_assert_eq(r, 42);
}

Test(core, aligned_alloc_is_aligned)
{
	void *p = moe_aligned_alloc(64, 1000);
	cr_assert_not_null(p);
	cr_assert_eq((uintptr_t)p % 64, 0);
	memset(p, 1, 1000);
	moe_aligned_free(p);
	moe_aligned_free(NULL);
}

/* A whole file: its bytes and a NUL after them, across the buffer's growth
 * (64 KiB); more than max bytes and a missing file are errors naming it. */
Test(core, read_file_whole_bounded_and_named)
{
	char path[] = "/tmp/moe_core_read_XXXXXX";
	const int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	const size_t n = 200000;
	char *data = malloc(n);
	cr_assert_not_null(data);
	for (size_t i = 0; i < n; i++)
		data[i] = (char)('a' + i % 26);
	cr_assert_eq(write(fd, data, n), (ssize_t)n);
	close(fd);
	char *got = NULL;
	size_t len = 0;
	cr_assert_eq(moe_read_file(&got, &len, path, n), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(len, n);
	cr_expect(memcmp(got, data, n) == 0 && got[n] == '\0');
	free(got);
	cr_expect_eq(moe_read_file(&got, &len, path, n - 1), MOE_ERR_BAD_COUNT);
	cr_expect_not_null(strstr(moe_err_detail(), path));
	unlink(path);
	cr_expect_eq(moe_read_file(&got, &len, path, n), MOE_ERR_IO);
	cr_expect_not_null(strstr(moe_err_detail(), path));
	free(data);
}
