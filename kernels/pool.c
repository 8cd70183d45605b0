/*
 * pool.c - the persistent thread pool.
 *
 * n_threads - 1 workers are started once. A run is a job of nth indices;
 * the indices are claimed, not assigned: the caller and every awake worker
 * take the next unclaimed index until none is left, and the caller returns
 * once every index has finished. So a worker that the OS has not scheduled
 * yet (a loaded or oversubscribed machine) never holds the caller up: the
 * caller simply runs that index itself. Waits spin briefly, then sleep on a
 * condition variable, so an idle pool costs no CPU.
 *
 * Claims are a compare-and-swap on one 64-bit ticket, (job << 32) | next
 * index, so a late worker can never claim an index of a job that is over, and
 * it reads fn/arg only after a successful (acquire) claim: the caller wrote
 * them before publishing the ticket (release) and cannot overwrite them
 * before the claimed index has finished. `remaining` counts the indices not
 * yet finished; the one who brings it to 0 wakes the caller if it sleeps.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"

enum { POOL_SPIN = 4000, POOL_MAX_THREADS = 1024 };

typedef struct pool_worker {
	moe_pool *pool;
	pthread_t thread;
} pool_worker;

struct moe_pool {
	int n_threads;
	pool_worker *workers; /* [n_threads - 1] */
	int n_started;

	pthread_mutex_t mu;
	pthread_cond_t start_cv; /* gen changed */
	pthread_cond_t done_cv;  /* remaining reached 0 */
	_Atomic uint64_t gen;    /* jobs published (wakes workers) */
	_Atomic uint64_t ticket; /* (job << 32) | next unclaimed index */
	atomic_int remaining;    /* indices of the current job not finished */
	atomic_bool stop;

	void (*fn)(void *arg, int ith, int nth);
	void *arg;
	int nth;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Claims and runs indices of job `job` until none is left. */
static void run_claims(moe_pool *pool, uint64_t job)
{
	uint64_t t = atomic_load_explicit(&pool->ticket, memory_order_relaxed);

	for (;;) {
		if (t >> 32 != (job & 0xffffffffu) || (int)(t & 0xffffffffu) >= pool->nth)
			return;
		if (!atomic_compare_exchange_weak_explicit(
		        &pool->ticket, &t, t + 1, memory_order_acq_rel, memory_order_relaxed))
			continue;
		int ith = (int)(t & 0xffffffffu);
		pool->fn(pool->arg, ith, pool->nth);
		if (atomic_fetch_sub_explicit(&pool->remaining, 1, memory_order_acq_rel) == 1) {
			pthread_mutex_lock(&pool->mu);
			pthread_cond_signal(&pool->done_cv);
			pthread_mutex_unlock(&pool->mu);
		}
		t = atomic_load_explicit(&pool->ticket, memory_order_relaxed);
	}
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
		run_claims(pool, g);
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
	atomic_init(&pool->ticket, 0);
	atomic_init(&pool->remaining, 0);
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
	uint64_t job;

	if (pool == NULL || pool->n_threads == 1) {
		fn(arg, 0, 1);
		return;
	}
	job = atomic_load_explicit(&pool->gen, memory_order_relaxed) + 1;
	pool->fn = fn;
	pool->arg = arg;
	pool->nth = pool->n_threads;
	atomic_store_explicit(&pool->remaining, pool->n_threads, memory_order_relaxed);
	atomic_store_explicit(&pool->ticket, (job & 0xffffffffu) << 32, memory_order_release);
	pool_publish(pool);
	run_claims(pool, job);
	for (int i = 0; i < POOL_SPIN; i++) {
		if (atomic_load_explicit(&pool->remaining, memory_order_acquire) == 0)
			return;
		cpu_relax();
	}
	pthread_mutex_lock(&pool->mu);
	while (atomic_load_explicit(&pool->remaining, memory_order_acquire) != 0)
		pthread_cond_wait(&pool->done_cv, &pool->mu);
	pthread_mutex_unlock(&pool->mu);
}
