/* test_pool.c - the persistent thread pool: every index once per run, nth as
 * created, results visible to the caller, create/destroy cycles. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

enum { MAX_T = 8 };

typedef struct counts {
	atomic_int hits[MAX_T];
	atomic_int bad_nth;
	int expect_nth;
	int64_t plain[MAX_T]; /* written without atomics: checks publication */
} counts;

static void count_fn(void *arg, int ith, int nth)
{
	counts *c = arg;
	if (nth != c->expect_nth || ith < 0 || ith >= MAX_T) {
		atomic_fetch_add(&c->bad_nth, 1);
		return;
	}
	atomic_fetch_add(&c->hits[ith], 1);
	c->plain[ith] += ith + 1;
}

static void check_runs(moe_pool *pool, int n, int runs)
{
	counts c;
	memset(&c, 0, sizeof(c));
	c.expect_nth = n;
	for (int r = 0; r < runs; r++) {
		moe_pool_run(pool, count_fn, &c);
		for (int i = 0; i < MAX_T; i++) {
			cr_assert_eq(atomic_load(&c.hits[i]), i < n ? r + 1 : 0,
			             "run %d thread %d of %d", r, i, n);
			cr_assert_eq(c.plain[i], i < n ? (int64_t)(r + 1) * (i + 1) : 0);
		}
		cr_assert_eq(atomic_load(&c.bad_nth), 0);
	}
}

Test(pool, every_index_exactly_once_per_run)
{
	for (int n = 1; n <= 4; n++) {
		moe_pool *pool = NULL;
		cr_assert_eq(moe_pool_create(&pool, n), MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(moe_pool_threads(pool), n);
		check_runs(pool, n, 300);
		moe_pool_destroy(pool);
	}
}

Test(pool, create_destroy_cycles)
{
	for (int cycle = 0; cycle < 200; cycle++) {
		moe_pool *pool = NULL;
		int n = 1 + cycle % MAX_T;
		cr_assert_eq(moe_pool_create(&pool, n), MOE_OK);
		if (cycle % 2 == 0) /* half of them are destroyed without ever running */
			check_runs(pool, n, 3);
		moe_pool_destroy(pool);
	}
	moe_pool_destroy(NULL);
}

Test(pool, default_thread_count_and_null_pool)
{
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 0), MOE_OK);
	cr_assert_geq(moe_pool_threads(pool), 1);
	moe_pool_destroy(pool);
	cr_assert_eq(moe_pool_threads(NULL), 1);
	counts c;
	memset(&c, 0, sizeof(c));
	c.expect_nth = 1;
	moe_pool_run(NULL, count_fn, &c);
	cr_assert_eq(atomic_load(&c.hits[0]), 1);
}

Test(pool, absurd_thread_count_is_refused)
{
	moe_pool *pool = (moe_pool *)&pool;
	cr_assert_eq(moe_pool_create(&pool, 100000), MOE_ERR_INVAL);
	cr_assert_null(pool);
}

/* Runs spaced out in time: the workers have gone to sleep on the condition
 * variable between them and must still wake up for each run. */
Test(pool, wakes_sleeping_workers)
{
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 3), MOE_OK);
	counts c;
	memset(&c, 0, sizeof(c));
	c.expect_nth = 3;
	for (int r = 0; r < 5; r++) {
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
		moe_pool_run(pool, count_fn, &c);
		for (int i = 0; i < 3; i++)
			cr_assert_eq(atomic_load(&c.hits[i]), r + 1);
	}
	moe_pool_destroy(pool);
}
