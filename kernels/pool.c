/*
 * pool.c - the persistent thread pool.
 *
 * n_threads - 1 workers are started once; moe_pool_run publishes (fn, arg) and
 * bumps a generation counter, the caller runs index 0 itself and waits for
 * the others.  Both waits spin a little first (a run is often followed at
 * once by the next: GEMV per layer) and then sleep on a condition variable,
 * so an idle pool costs no CPU.
 *
 * Memory ordering: fn/arg are written before the release increment of `gen`
 * and read after an acquire load that saw it; each worker's results are
 * published by its acq_rel decrement of `pending`, which the caller reads
 * with acquire before returning.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"

enum { POOL_SPIN = 20000, POOL_MAX_THREADS = 1024 };

typedef struct pool_worker {
	moe_pool *pool;
	int ith;
	pthread_t thread;
} pool_worker;

struct moe_pool {
	int n_threads;
	pool_worker *workers; /* [n_threads - 1], worker i runs index i + 1 */
	int n_started;

	pthread_mutex_t mu;
	pthread_cond_t start_cv; /* gen changed */
	pthread_cond_t done_cv;  /* pending reached 0 */
	_Atomic uint64_t gen;
	atomic_int pending;
	atomic_bool stop;

	void (*fn)(void *arg, int ith, int nth);
	void *arg;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static void *worker_main(void *p)
{
	pool_worker *w = p;
	moe_pool *pool = w->pool;
	uint64_t seen = 0;

	for (;;) {
		uint64_t g = atomic_load_explicit(&pool->gen, memory_order_acquire);
		for (int i = 0; g == seen && i < POOL_SPIN; i++) {
			cpu_relax();
			g = atomic_load_explicit(&pool->gen, memory_order_acquire);
		}
		if (g == seen) {
			pthread_mutex_lock(&pool->mu);
			while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen)
				pthread_cond_wait(&pool->start_cv, &pool->mu);
			pthread_mutex_unlock(&pool->mu);
		}
		seen = g;
		if (atomic_load_explicit(&pool->stop, memory_order_acquire))
			break;
		pool->fn(pool->arg, w->ith, pool->n_threads);
		if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
			pthread_mutex_lock(&pool->mu);
			pthread_cond_signal(&pool->done_cv);
			pthread_mutex_unlock(&pool->mu);
		}
	}
	return NULL;
}

/* Wakes every worker for the function already stored in pool (or for stop). */
static void pool_publish(moe_pool *pool)
{
	pthread_mutex_lock(&pool->mu);
	atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
	pthread_cond_broadcast(&pool->start_cv);
	pthread_mutex_unlock(&pool->mu);
}

static void pool_stop_workers(moe_pool *pool)
{
	atomic_store_explicit(&pool->stop, true, memory_order_release);
	pool_publish(pool);
	for (int i = 0; i < pool->n_started; i++)
		pthread_join(pool->workers[i].thread, NULL);
	pool->n_started = 0;
}

moe_err moe_pool_create(moe_pool **out, int n_threads)
{
	moe_err err;

	*out = NULL;
	if (n_threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n > 0 ? (int)n : 1;
	}
	if (n_threads > POOL_MAX_THREADS)
		return moe_fail(MOE_ERR_INVAL, "pool: %d threads (max %d)", n_threads,
		                POOL_MAX_THREADS);
	moe_pool *pool = calloc(1, sizeof(*pool));
	if (pool == NULL)
		return moe_fail(MOE_ERR_NOMEM, "pool: %zu bytes", sizeof(*pool));
	pool->n_threads = n_threads;
	atomic_init(&pool->gen, 0);
	atomic_init(&pool->pending, 0);
	atomic_init(&pool->stop, false);
	if (pthread_mutex_init(&pool->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "pool: pthread_mutex_init");
		goto out_free_pool;
	}
	if (pthread_cond_init(&pool->start_cv, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "pool: pthread_cond_init");
		goto out_destroy_mu;
	}
	if (pthread_cond_init(&pool->done_cv, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "pool: pthread_cond_init");
		goto out_destroy_start_cv;
	}
	if (n_threads > 1) {
		pool->workers = calloc((size_t)n_threads - 1, sizeof(*pool->workers));
		if (pool->workers == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "pool: %d workers", n_threads - 1);
			goto out_destroy_done_cv;
		}
	}
	for (int i = 0; i < n_threads - 1; i++) {
		pool_worker *w = &pool->workers[i];
		w->pool = pool;
		w->ith = i + 1;
		int rc = pthread_create(&w->thread, NULL, worker_main, w);
		if (rc != 0) {
			err = moe_fail(MOE_ERR_SYS, "pool: pthread_create worker %d: %s", i + 1,
			               strerror(rc));
			goto out_stop_workers;
		}
		pool->n_started++;
	}
	*out = pool;
	return MOE_OK;

out_stop_workers:
	pool_stop_workers(pool);
	free(pool->workers);
out_destroy_done_cv:
	pthread_cond_destroy(&pool->done_cv);
out_destroy_start_cv:
	pthread_cond_destroy(&pool->start_cv);
out_destroy_mu:
	pthread_mutex_destroy(&pool->mu);
out_free_pool:
	free(pool);
	return err;
}

void moe_pool_destroy(moe_pool *pool)
{
	if (pool == NULL)
		return;
	pool_stop_workers(pool);
	free(pool->workers);
	pthread_cond_destroy(&pool->done_cv);
	pthread_cond_destroy(&pool->start_cv);
	pthread_mutex_destroy(&pool->mu);
	free(pool);
}

int moe_pool_threads(const moe_pool *pool)
{
	return pool == NULL ? 1 : pool->n_threads;
}

void moe_pool_run(moe_pool *pool, void (*fn)(void *arg, int ith, int nth), void *arg)
{
	if (pool == NULL || pool->n_threads == 1) {
		fn(arg, 0, 1);
		return;
	}
	pool->fn = fn;
	pool->arg = arg;
	atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
	pool_publish(pool);
	fn(arg, 0, pool->n_threads);
	for (int i = 0; i < POOL_SPIN; i++) {
		if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0)
			return;
		cpu_relax();
	}
	pthread_mutex_lock(&pool->mu);
	while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0)
		pthread_cond_wait(&pool->done_cv, &pool->mu);
	pthread_mutex_unlock(&pool->mu);
}
