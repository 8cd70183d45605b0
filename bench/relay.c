/*
 * relay.c - a delaying TCP relay (moe_relay): `bench cluster --netns` puts one
 * in front of each worker's control and data ports to add a round-trip delay
 * in user space (the kernel here has no netem).  Each accepted connection is
 * joined to the target; each direction is one thread that reads whatever
 * arrives, stamps it with the time it was read and writes it on once it has
 * been held hold_us (DESIGN "Benchmarks on real links").
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/core.h"
#include "proto/proto.h"

enum {
	RING_BYTES = 1 << 20, /* bytes held per direction: 10 Gbit/s for 800 us */
	RING_SEGS = 8192,     /* reads held per direction */
};

/* One direction: bytes read from src, held, then written to dst. */
typedef struct pipe_dir {
	int src, dst;
	int hold_us;
	uint8_t *buf;        /* RING_BYTES */
	uint64_t rpos, wpos; /* bytes written on / read in, ever */
	uint64_t seg_end[RING_SEGS], seg_due[RING_SEGS];
	uint64_t seg_head, seg_tail; /* segments popped / pushed, ever */
	struct conn *c;
	pthread_t th;
	bool started;
} pipe_dir;

typedef struct conn {
	int fd[2]; /* [0] the accepted client, [1] the target */
	pipe_dir dir[2];
	atomic_int running; /* directions still running (0: reaped by the accept thread) */
	struct conn *next;
} conn;

struct moe_relay {
	moe_relay_opts o;
	char listen_host[256], to_host[256], netns[256];
	int lfd;
	uint16_t port;
	pthread_t th;
	sem_t ready;
	moe_err start_err;
	char start_detail[256];
	atomic_bool stop;
	pthread_mutex_t mu; /* conns */
	conn *conns;
};

static void shut(int fd)
{
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

/* Writes n bytes of p to fd (blocking); 0, or -1 when the peer is gone. */
static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Writes the bytes [rpos, end) of the ring to d->dst. */
static int write_ring(pipe_dir *d, uint64_t end)
{
	while (d->rpos < end) {
		const size_t at = (size_t)(d->rpos % RING_BYTES);
		size_t n = (size_t)(end - d->rpos);
		if (n > RING_BYTES - at)
			n = RING_BYTES - at;
		if (write_all(d->dst, d->buf + at, n) != 0)
			return -1;
		d->rpos += n;
	}
	return 0;
}

static void *dir_main(void *arg)
{
	pipe_dir *d = arg;
	/* the default 50 us timer slack would add itself to every hold */
	prctl(PR_SET_TIMERSLACK, 1UL);
	bool eof = false, failed = false;
	while (!failed) {
		const uint64_t now = moe_now_ns();
		if (d->seg_head < d->seg_tail && d->seg_due[d->seg_head % RING_SEGS] <= now) {
			if (write_ring(d, d->seg_end[d->seg_head % RING_SEGS]) != 0)
				failed = true;
			d->seg_head++;
			continue;
		}
		if (d->seg_head == d->seg_tail && eof)
			break;
		const bool room =
		    !eof && d->wpos - d->rpos < RING_BYTES && d->seg_tail - d->seg_head < RING_SEGS;
		struct pollfd p = {.fd = d->src, .events = room ? POLLIN : 0};
		struct timespec ts, *tp = NULL;
		if (d->seg_head < d->seg_tail) {
			const uint64_t wait = d->seg_due[d->seg_head % RING_SEGS] - now;
			ts = (struct timespec){.tv_sec = (time_t)(wait / 1000000000u),
			                       .tv_nsec = (long)(wait % 1000000000u)};
			tp = &ts;
		}
		const int pr = ppoll(&p, room ? 1 : 0, tp, NULL);
		if (pr < 0 && errno != EINTR)
			failed = true;
		if (pr <= 0 || !room)
			continue;
		const size_t at = (size_t)(d->wpos % RING_BYTES);
		size_t n = RING_BYTES - (size_t)(d->wpos - d->rpos);
		if (n > RING_BYTES - at)
			n = RING_BYTES - at;
		const ssize_t got = recv(d->src, d->buf + at, n, MSG_DONTWAIT);
		if (got > 0) {
			/* stamped when read, which is at or after its arrival: the hold
			 * is never shorter than hold_us */
			d->wpos += (uint64_t)got;
			d->seg_end[d->seg_tail % RING_SEGS] = d->wpos;
			d->seg_due[d->seg_tail % RING_SEGS] =
			    moe_now_ns() + (uint64_t)d->hold_us * 1000u;
			d->seg_tail++;
		} else if (got == 0) {
			eof = true;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			failed = true;
		}
	}
	if (failed) { /* a reset on either side ends the whole connection */
		shut(d->src);
		shut(d->dst);
	} else {
		shutdown(d->dst, SHUT_WR); /* EOF passed on after the last held byte */
	}
	/* the fds stay open until the connection is reaped, so nobody shuts
	 * down a number that was reused */
	atomic_fetch_sub(&d->c->running, 1);
	return NULL;
}

/* Connects to the target, retrying a refusal for up to 10 s (the target may
 * still be starting). */
static moe_err connect_target(int *fd, const moe_relay *r)
{
	const uint64_t until = moe_now_ns() + 10000000000ull;
	for (;;) {
		moe_err err = moe_sock_connect_tcp(fd, r->to_host, r->o.to_port, 2000);
		if (err == MOE_OK || moe_now_ns() > until || atomic_load(&r->stop))
			return err;
		struct timespec ts = {0, 20000000};
		nanosleep(&ts, NULL);
	}
}

static void conn_free(conn *c)
{
	shut(c->fd[0]);
	shut(c->fd[1]);
	for (int i = 0; i < 2; i++)
		if (c->dir[i].started)
			pthread_join(c->dir[i].th, NULL);
	close(c->fd[0]);
	close(c->fd[1]);
	free(c->dir[0].buf);
	free(c->dir[1].buf);
	free(c);
}

/* Frees the connections whose two directions have ended. */
static void reap(moe_relay *r)
{
	pthread_mutex_lock(&r->mu);
	for (conn **pc = &r->conns; *pc;) {
		conn *c = *pc;
		if (atomic_load(&c->running) == 0) {
			*pc = c->next;
			conn_free(c);
		} else {
			pc = &c->next;
		}
	}
	pthread_mutex_unlock(&r->mu);
}

static void serve_conn(moe_relay *r, int cfd)
{
	int tfd = -1;
	if (connect_target(&tfd, r) != MOE_OK) {
		close(cfd);
		return;
	}
	moe_sock_nodelay(cfd);
	moe_sock_nodelay(tfd);
	conn *c = calloc(1, sizeof *c);
	uint8_t *b0 = malloc(RING_BYTES), *b1 = malloc(RING_BYTES);
	if (c == NULL || b0 == NULL || b1 == NULL) {
		free(c);
		free(b0);
		free(b1);
		close(cfd);
		close(tfd);
		return;
	}
	c->fd[0] = cfd;
	c->fd[1] = tfd;
	atomic_init(&c->running, 2);
	for (int i = 0; i < 2; i++)
		c->dir[i] = (pipe_dir){.src = c->fd[i],
		                       .dst = c->fd[1 - i],
		                       .hold_us = r->o.hold_us,
		                       .buf = i == 0 ? b0 : b1,
		                       .c = c};
	pthread_mutex_lock(&r->mu);
	c->next = r->conns;
	r->conns = c;
	for (int i = 0; i < 2; i++) {
		c->dir[i].started = pthread_create(&c->dir[i].th, NULL, dir_main, &c->dir[i]) == 0;
		if (!c->dir[i].started) {
			atomic_fetch_sub(&c->running, 1);
			shut(cfd);
			shut(tfd);
		}
	}
	pthread_mutex_unlock(&r->mu);
}

static void *accept_main(void *arg)
{
	moe_relay *r = arg;
	moe_err err = MOE_OK;
	if (r->netns[0]) {
		char path[300];
		snprintf(path, sizeof path, "/var/run/netns/%s", r->netns);
		const int nfd = open(path, O_RDONLY | O_CLOEXEC);
		if (nfd < 0 || setns(nfd, CLONE_NEWNET) != 0)
			err = moe_fail(MOE_ERR_SYS, "relay: entering network namespace %s: %s",
			               r->netns, strerror(errno));
		if (nfd >= 0)
			close(nfd);
	}
	if (err == MOE_OK) {
		r->port = r->o.listen_port;
		err = moe_sock_listen_tcp(&r->lfd, r->listen_host, &r->port);
	}
	r->start_err = err;
	if (err != MOE_OK)
		snprintf(r->start_detail, sizeof r->start_detail, "%s", moe_err_detail());
	sem_post(&r->ready);
	if (err != MOE_OK)
		return NULL;
	while (!atomic_load(&r->stop)) {
		const int cfd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* shut down by destroy */
		}
		if (atomic_load(&r->stop)) {
			close(cfd);
			break;
		}
		reap(r);
		serve_conn(r, cfd);
	}
	return NULL;
}

moe_err moe_relay_create(moe_relay **out, const moe_relay_opts *o)
{
	*out = NULL;
	if (o->hold_us < 0 || o->listen_host == NULL || o->to_host == NULL || o->to_port == 0)
		return moe_fail(MOE_ERR_INVAL, "relay: bad options");
	moe_relay *r = calloc(1, sizeof *r);
	if (r == NULL)
		return moe_fail(MOE_ERR_NOMEM, "relay");
	r->o = *o;
	r->lfd = -1;
	snprintf(r->listen_host, sizeof r->listen_host, "%s", o->listen_host);
	snprintf(r->to_host, sizeof r->to_host, "%s", o->to_host);
	snprintf(r->netns, sizeof r->netns, "%s", o->netns ? o->netns : "");
	pthread_mutex_init(&r->mu, NULL);
	sem_init(&r->ready, 0, 0);
	if (pthread_create(&r->th, NULL, accept_main, r) != 0) {
		sem_destroy(&r->ready);
		pthread_mutex_destroy(&r->mu);
		free(r);
		return moe_fail(MOE_ERR_SYS, "relay: thread: %s", strerror(errno));
	}
	while (sem_wait(&r->ready) != 0 && errno == EINTR)
		;
	if (r->start_err != MOE_OK) {
		const moe_err err = r->start_err;
		pthread_join(r->th, NULL);
		sem_destroy(&r->ready);
		pthread_mutex_destroy(&r->mu);
		moe_fail(err, "%s", r->start_detail);
		free(r);
		return err;
	}
	*out = r;
	return MOE_OK;
}

uint16_t moe_relay_port(const moe_relay *r)
{
	return r->port;
}

void moe_relay_destroy(moe_relay *r)
{
	if (r == NULL)
		return;
	atomic_store(&r->stop, true);
	shut(r->lfd);
	pthread_join(r->th, NULL);
	close(r->lfd);
	pthread_mutex_lock(&r->mu);
	conn *c = r->conns;
	r->conns = NULL;
	pthread_mutex_unlock(&r->mu);
	for (conn *n; c; c = n) {
		n = c->next;
		conn_free(c);
	}
	sem_destroy(&r->ready);
	pthread_mutex_destroy(&r->mu);
	free(r);
}
