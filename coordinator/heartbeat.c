/*
 * heartbeat.c - the cluster's heartbeat thread: HEARTBEATs to the live
 * workers on a thread of their own, also while the scheduler steps, and the
 * re-dialling and re-loading of lost workers that come back, neither waiting
 * for the scheduler to go idle.  Its findings (a worker lost; a worker back
 * and loaded) are applied by the thread that owns the cluster, between
 * steps (moe_cluster_heartbeat -> moe_clu_watch_apply).  The locking
 * (ctl_mu per link, wstate's hand-over) is described in docs/DESIGN.md,
 * "Failure semantics".
 */
#include <errno.h>
#include <nng/nng.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

/* How often a lost worker is re-dialled, and how long each dial waits for a
 * connection (on this thread: no request waits for it). */
#define REDIAL_MS      2000
#define REDIAL_WAIT_MS 200

/* A spawned worker that died is started again after BACKOFF_MIN_MS, doubled
 * after each start that does not come back, up to BACKOFF_MAX_MS; back to
 * the minimum once it has served for BACKOFF_RESET_MS. */
#define BACKOFF_MIN_MS   500
#define BACKOFF_MAX_MS   30000
#define BACKOFF_RESET_MS 60000

/* Silence allowed while a returning worker loads (LOAD_PROGRESS restarts
 * it), as link.c allows an ASSIGN. */
#define LOAD_SILENCE_MS 120000

struct watch {
	pthread_t thread;
	pthread_mutex_t mu; /* guards stop */
	pthread_cond_t cv;
	bool stop;
	int period_ms;
	uint64_t seq;                             /* the last HEARTBEAT's */
	uint64_t redial_t[MOE_CLUSTER_MAX_LINKS]; /* this thread's own */
	uint64_t spawn_t[MOE_CLUSTER_MAX_LINKS];  /* when a died spawned worker may start */
	uint64_t live_t[MOE_CLUSTER_MAX_LINKS];   /* when it was last started again */
	int backoff_ms[MOE_CLUSTER_MAX_LINKS];
	bool broken;    /* the owner's: the last repair failed (no holder for some expert) */
	uint64_t lost0; /* the owner's: c->cnt.lost when it last repaired */
};

void moe_clu_ctl_lock(moe_cluster *c, clink *l)
{
	if (c->wt != NULL)
		pthread_mutex_lock(&l->ctl_mu);
}

bool moe_clu_ctl_trylock(moe_cluster *c, clink *l)
{
	return c->wt == NULL || pthread_mutex_trylock(&l->ctl_mu) == 0;
}

void moe_clu_ctl_unlock(moe_cluster *c, clink *l)
{
	if (c->wt != NULL)
		pthread_mutex_unlock(&l->ctl_mu);
}

static bool stopping(struct watch *w)
{
	pthread_mutex_lock(&w->mu);
	const bool s = w->stop;
	pthread_mutex_unlock(&w->mu);
	return s;
}

/* The verdict on a live link: lost, and why (the owner marks it dead). */
static void found_lost(clink *l, const char *why)
{
	int live = MOE_CLU_W_LIVE;
	if (atomic_load(&l->wstate) != MOE_CLU_W_LIVE)
		return;
	snprintf(l->why, sizeof l->why, "%s", why);
	atomic_compare_exchange_strong(&l->wstate, &live, MOE_CLU_W_LOST);
}

/* One round: a HEARTBEAT to every live remote link whose control lock is
 * free (the owner holds it through a load, which has its own deadline) and
 * that has no ASSIGN of the rebalancer in flight, then every echo awaited
 * within one deadline for all. */
static void beat(moe_cluster *c, struct watch *w)
{
	const int tmo = c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000;
	bool sent[MOE_CLUSTER_MAX_LINKS] = {0};
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->local || atomic_load(&l->wstate) != MOE_CLU_W_LIVE)
			continue;
		if (pthread_mutex_trylock(&l->ctl_mu) != 0)
			continue;
		if (l->async || atomic_load(&l->wstate) != MOE_CLU_W_LIVE) {
			pthread_mutex_unlock(&l->ctl_mu);
			continue;
		}
		if (atomic_load(&l->pipes) == 0) { /* its end closed: no send timeout */
			found_lost(l, "control connection closed");
			pthread_mutex_unlock(&l->ctl_mu);
			continue;
		}
		Moemesh__Heartbeat h = MOEMESH__HEARTBEAT__INIT;
		h.seq = ++w->seq;
		h.time_ns = moe_now_ns();
		if (moe_nng_send_sealed(l->ctl, l->ctl_tx, MOE_MSG_HEARTBEAT, &h.base) != MOE_OK) {
			found_lost(l, moe_err_detail());
			pthread_mutex_unlock(&l->ctl_mu);
			continue;
		}
		sent[i] = true; /* its lock stays held until the echo */
	}
	const uint64_t t0 = moe_now_ns();
	for (int i = 0; i < c->n_links; i++) {
		if (!sent[i])
			continue;
		clink *l = &c->links[i];
		const int64_t left = (int64_t)tmo - (int64_t)((moe_now_ns() - t0) / 1000000u);
		nng_msg *msg;
		moe_frame f;
		const moe_err err = moe_clu_ctl_expect(&msg, &f, l, MOE_MSG_HEARTBEAT,
		                                       left > 100 ? (int)left : 100);
		if (err == MOE_OK)
			nng_msg_free(msg);
		else
			found_lost(l, moe_err_detail());
		pthread_mutex_unlock(&l->ctl_mu);
	}
}

/* Sends l's held set as an ASSIGN on its new session and waits for the
 * load (LOAD_PROGRESS restarts the silence allowed), keeping what it
 * reports for the owner.  Errors: the worker's, MOE_ERR_TIMEOUT,
 * MOE_ERR_CLOSED (also when the thread is asked to stop), MOE_ERR_PROTO. */
static moe_err load_held(moe_cluster *c, struct watch *w, clink *l)
{
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	uint64_t held = 0;
	for (size_t k = 0; k < nh; k++)
		held += l->held[k] != 0;
	moe_err err = moe_clu_send_assign_msg(c, l, l->held);
	if (err != MOE_OK)
		return err;
	int silent = 0;
	for (;;) {
		if (stopping(w))
			return moe_fail(MOE_ERR_CLOSED, "stopping");
		nng_msg *msg;
		moe_frame f;
		err = moe_clu_ctl_expect(&msg, &f, l, MOE_MSG_LOAD_PROGRESS, 100);
		if (err == MOE_ERR_TIMEOUT) {
			if ((silent += 100) >= LOAD_SILENCE_MS)
				return moe_fail(MOE_ERR_TIMEOUT,
				                "worker %s (%s) silent for %d ms while loading",
				                l->name, l->url, LOAD_SILENCE_MS);
			continue;
		}
		if (err != MOE_OK)
			return err;
		silent = 0;
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		nng_msg_free(msg);
		if (p == NULL)
			return moe_fail(MOE_ERR_PROTO, "worker %s: LOAD_PROGRESS does not decode",
			                l->url);
		if (!p->done) {
			moemesh__load_progress__free_unpacked(p, NULL);
			continue;
		}
		if (p->experts_held != held)
			err = moe_fail(MOE_ERR_PROTO, "worker %s holds %llu experts, assigned %llu",
			               l->url, (unsigned long long)p->experts_held,
			               (unsigned long long)held);
		l->re_bytes = p->bytes_held;
		l->re_loaded = p->bytes_loaded;
		l->re_dropped = p->bytes_dropped;
		l->re_seconds = p->seconds;
		moemesh__load_progress__free_unpacked(p, NULL);
		return err;
	}
}

/* For a lost spawned worker (--respawn): if its process ended, reaps it
 * (noting how, for moe_cluster_shutdown's report) and, once its backoff has
 * passed, starts it again.  True when there is a process to dial now (one
 * still running, frozen perhaps, is dialled as a URL worker is). */
static bool respawn(moe_cluster *c, struct watch *w, clink *l, int i)
{
	const uint64_t now = moe_now_ns();
	if (l->pid > 0) {
		int status = 0;
		if (waitpid(l->pid, &status, WNOHANG) != l->pid)
			return true; /* still there */
		const size_t n = strlen(l->ended);
		if (WIFSIGNALED(status) && n < sizeof l->ended)
			snprintf(l->ended + n, sizeof l->ended - n,
			         "%sworker %s (pid %d) was killed by signal %d and re-spawned",
			         n ? "; " : "", l->name, (int)l->pid, WTERMSIG(status));
		else if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && n < sizeof l->ended)
			snprintf(l->ended + n, sizeof l->ended - n,
			         "%sworker %s (pid %d) exited with status %d and was re-spawned",
			         n ? "; " : "", l->name, (int)l->pid, WEXITSTATUS(status));
		char path[300];
		snprintf(path, sizeof path, "%s.data", l->url + 6);
		unlink(path);
		unlink(l->url + 6);
		l->pid = 0;
		if (w->backoff_ms[i] == 0 ||
		    (w->live_t[i] != 0 && now - w->live_t[i] > BACKOFF_RESET_MS * 1000000ull))
			w->backoff_ms[i] = BACKOFF_MIN_MS;
		w->spawn_t[i] = now + (uint64_t)w->backoff_ms[i] * 1000000u;
		moe_log(MOE_LOG_WARN, "worker %s ended; starting it again in %d ms", l->name,
		        w->backoff_ms[i]);
		w->backoff_ms[i] =
		    w->backoff_ms[i] * 2 < BACKOFF_MAX_MS ? w->backoff_ms[i] * 2 : BACKOFF_MAX_MS;
		return false;
	}
	if (now < w->spawn_t[i])
		return false;
	if (moe_clu_spawn(c, l, i) != MOE_OK) {
		moe_log(MOE_LOG_WARN, "worker %s: starting it again failed: %s", l->name,
		        moe_err_detail());
		w->spawn_t[i] = now + (uint64_t)w->backoff_ms[i] * 1000000u;
		w->backoff_ms[i] =
		    w->backoff_ms[i] * 2 < BACKOFF_MAX_MS ? w->backoff_ms[i] * 2 : BACKOFF_MAX_MS;
		return false;
	}
	w->live_t[i] = now;
	w->redial_t[i] = 0; /* dial it at once */
	return true;
}

/* Re-dials every lost worker named by URL (not local; a spawned one with
 * --respawn, started again if it died), each at most every REDIAL_MS; one
 * that authenticates is sent its held set and, once loaded, handed to the
 * owner (READY).  Failures leave it DOWN. */
static void readmit(moe_cluster *c, struct watch *w)
{
	for (int i = 0; i < c->n_links && !stopping(w); i++) {
		clink *l = &c->links[i];
		if (l->local || l->url[0] == '\0' || atomic_load(&l->wstate) != MOE_CLU_W_DOWN)
			continue;
		if (i < c->o.spawn && (!c->o.respawn || !respawn(c, w, l, i)))
			continue;
		const uint64_t now = moe_now_ns();
		if (w->redial_t[i] != 0 && now - w->redial_t[i] < (uint64_t)REDIAL_MS * 1000000u)
			continue;
		w->redial_t[i] = now;
		pthread_mutex_lock(&l->ctl_mu);
		moe_clu_drop_session(l);
		l->dial_wait_ms = REDIAL_WAIT_MS;
		moe_err err = moe_clu_connect(c, l);
		if (err == MOE_OK)
			err = load_held(c, w, l);
		if (err == MOE_OK) {
			atomic_store(&l->wstate, MOE_CLU_W_READY);
		} else {
			moe_log(MOE_LOG_DEBUG, "worker %s (%s) not back: %s", l->name, l->url,
			        moe_err_detail());
			moe_clu_drop_session(l);
		}
		pthread_mutex_unlock(&l->ctl_mu);
	}
}

static void *watch_main(void *arg)
{
	moe_cluster *c = arg;
	struct watch *w = c->wt;
	pthread_mutex_lock(&w->mu);
	while (!w->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += w->period_ms / 1000;
		ts.tv_nsec += (long)(w->period_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT)
			;
		if (w->stop)
			break;
		pthread_mutex_unlock(&w->mu);
		beat(c, w);
		readmit(c, w);
		pthread_mutex_lock(&w->mu);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

moe_err moe_cluster_watch(moe_cluster *c, int period_ms)
{
	if (c->wt != NULL)
		return MOE_OK;
	if (period_ms <= 0)
		return moe_fail(MOE_ERR_INVAL, "heartbeat period of %d ms", period_ms);
	struct watch *w = calloc(1, sizeof *w);
	if (w == NULL)
		return moe_fail(MOE_ERR_NOMEM, "heartbeat thread");
	w->period_ms = period_ms;
	int n_mu = 0;
	moe_err err = MOE_OK;
	if (pthread_mutex_init(&w->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "heartbeat: pthread_mutex_init");
		goto out_free;
	}
	if (pthread_cond_init(&w->cv, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "heartbeat: pthread_cond_init");
		goto out_destroy_mu;
	}
	for (; n_mu < c->n_links; n_mu++)
		if (pthread_mutex_init(&c->links[n_mu].ctl_mu, NULL) != 0) {
			err = moe_fail(MOE_ERR_SYS, "heartbeat: pthread_mutex_init");
			goto out_destroy_links;
		}
	c->wt = w; /* before the thread: the owner's ctl locks take effect */
	const int rc = pthread_create(&w->thread, NULL, watch_main, c);
	if (rc != 0) {
		c->wt = NULL;
		err = moe_fail(MOE_ERR_SYS, "heartbeat: pthread_create: %s", strerror(rc));
		goto out_destroy_links;
	}
	return MOE_OK;

out_destroy_links:
	while (n_mu-- > 0)
		pthread_mutex_destroy(&c->links[n_mu].ctl_mu);
	pthread_cond_destroy(&w->cv);
out_destroy_mu:
	pthread_mutex_destroy(&w->mu);
out_free:
	free(w);
	return err;
}

void moe_clu_watch_stop(moe_cluster *c)
{
	struct watch *w = c->wt;
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	c->wt = NULL;
	for (int i = 0; i < c->n_links; i++) {
		pthread_mutex_destroy(&c->links[i].ctl_mu);
		/* what it found and did not hand over: the owner's again */
		clink *l = &c->links[i];
		const int s = atomic_load(&l->wstate);
		if (s == MOE_CLU_W_LOST && l->alive)
			moe_clu_mark_dead(c, l, l->why);
		else if (s == MOE_CLU_W_READY)
			moe_clu_drop_session(l);
	}
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

/* Takes back l, re-admitted and loaded by the heartbeat thread. */
static void adopt(moe_cluster *c, clink *l)
{
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	uint64_t held = 0;
	for (size_t k = 0; k < nh; k++)
		held += l->held[k] != 0;
	memcpy(l->loaded, l->held, nh);
	moe_clu_link_reset(c, (int)(l - c->links)); /* between steps: nothing in flight */
	l->async = false;
	l->st.experts_held = held;
	l->st.bytes_loaded = l->re_bytes;
	l->st.load_seconds = l->re_seconds;
	l->st.assign_loaded += l->re_loaded;
	l->st.assign_dropped += l->re_dropped;
	l->st.assigns++;
	l->alive = l->st.alive = true;
	c->cnt.readmitted++;
	moe_log(MOE_LOG_WARN,
	        "worker %s (%s) is back: re-admitted with its experts (%.1f MB loaded)", l->name,
	        l->url, (double)l->re_loaded / 1e6);
	atomic_store(&l->wstate, MOE_CLU_W_LIVE);
}

moe_err moe_clu_watch_apply(moe_cluster *c)
{
	struct watch *w = c->wt;
	bool changed = false;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		const int s = atomic_load(&l->wstate);
		if (s == MOE_CLU_W_LOST) {
			if (l->alive) {
				moe_clu_mark_dead(c, l, l->why); /* DOWN */
				changed = true;
			} else {
				atomic_store(&l->wstate, MOE_CLU_W_DOWN);
			}
		} else if (s == MOE_CLU_W_READY) {
			adopt(c, l);
			changed = true;
		}
	}
	if (!changed && !w->broken && c->cnt.lost == w->lost0) /* dispatch may mark dead too */
		return MOE_OK;
	w->lost0 = c->cnt.lost;
	const moe_err err = moe_clu_repair(c);
	w->broken = err != MOE_OK;
	return err;
}
