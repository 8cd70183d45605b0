/*
 * link.c - the coordinator's links to its workers: starting local worker
 * processes (--workers N), the nng control connection and its HELLO / AUTH
 * handshake, waiting for control replies (ctl_expect), ASSIGN and its load
 * progress, heartbeats, marking a worker dead, and stopping spawned workers.
 */
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

/* Silence allowed while a worker loads its experts: LOAD_PROGRESS frames
 * (every 64 MB read) and heartbeats restart it. */
#define LOAD_SILENCE_MS 120000

/* How long HELLO is sent again when a worker closes the connection before
 * answering it (it holds another peer, see moe_clu_connect). */
#define HELLO_BUDGET_MS 30000

/* ---- control connection --------------------------------------------------------- */

static void pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	(void)ev;
	atomic_fetch_add(&((clink *)arg)->pipes, 1);
}

static void pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	(void)ev;
	atomic_fetch_sub(&((clink *)arg)->pipes, 1);
}

void moe_clu_mark_dead(moe_cluster *c, clink *l, const char *why)
{
	if (!l->alive)
		return;
	l->alive = false;
	l->st.alive = false;
	if (l->dfd >= 0) {
		close(l->dfd);
		l->dfd = -1;
	}
	moe_rx_free(&l->rx);
	moe_aead_destroy(l->data_tx);
	l->data_tx = NULL;
	moe_log(MOE_LOG_ERROR, "worker %s (%s) lost: %s", l->name, l->url, why);
	c->cnt.lost++;
	atomic_store(&l->wstate, MOE_CLU_W_DOWN); /* its session is the heartbeat thread's */
}

/* Receives the next control frame of kind `want` from l within timeout_ms of
 * silence (LOAD_PROGRESS frames reset it when want is LOAD_PROGRESS).  An
 * ERROR frame becomes the error it carries, with the worker's message. */
static moe_err ctl_expect(nng_msg **msg, moe_frame *f, clink *l, moe_msg_kind want, int timeout_ms)
{
	const bool had_pipe = atomic_load(&l->pipes) > 0;
	int waited = 0;
	for (;;) {
		moe_err err = moe_nng_recv_sealed(msg, f, l->ctl, l->ctl_rx, 100);
		if (err == MOE_ERR_TIMEOUT) {
			waited += 100;
			if (had_pipe && atomic_load(&l->pipes) == 0)
				return moe_fail(
				    MOE_ERR_CLOSED,
				    "worker %s (%s) closed the connection while we waited "
				    "for %s (did it die?)",
				    l->name, l->url, moe_msg_kind_name(want));
			if (waited >= timeout_ms)
				return moe_fail(MOE_ERR_TIMEOUT,
				                "worker %s (%s): no %s within %d ms", l->name,
				                l->url, moe_msg_kind_name(want), timeout_ms);
			continue;
		}
		if (err != MOE_OK)
			return moe_fail(err, "worker %s (%s): %s", l->name, l->url,
			                moe_err_detail());
		if (f->kind == want)
			return MOE_OK;
		if (f->kind == MOE_MSG_ERROR) {
			Moemesh__Error *e = moemesh__error__unpack(NULL, f->header_len, f->header);
			moe_err code = e && e->code > 0 && e->code < MOE_ERR__COUNT
			                   ? (moe_err)e->code
			                   : MOE_ERR_PROTO;
			err = moe_fail(code, "worker %s (%s) refused: %s", l->name, l->url,
			               e && e->message ? e->message : "(undecodable ERROR)");
			moemesh__error__free_unpacked(e, NULL);
			nng_msg_free(*msg);
			return err;
		}
		if (f->kind == MOE_MSG_LOAD_PROGRESS || f->kind == MOE_MSG_HEARTBEAT) {
			waited = 0; /* alive; not what we wait for */
			nng_msg_free(*msg);
			continue;
		}
		err = moe_fail(MOE_ERR_PROTO, "worker %s (%s) sent %s, expected %s", l->name,
		               l->url, moe_msg_kind_name(f->kind), moe_msg_kind_name(want));
		nng_msg_free(*msg);
		return err;
	}
}

/* nng dial, HELLO / HELLO_REPLY / AUTH / AUTH_OK, data socket. */
moe_err moe_clu_connect(moe_cluster *c, clink *l)
{
	uint8_t chal[32], resp[32];
	nng_msg *msg;
	moe_frame f;
	moe_err err;
	int rv;

	if ((rv = nng_pair1_open(&l->ctl)) != 0)
		return moe_nng_fail(rv, "opening a control socket");
	l->ctl_open = true;
	if ((rv = nng_pipe_notify(l->ctl, NNG_PIPE_EV_ADD_POST, pipe_added, l)) != 0 ||
	    (rv = nng_pipe_notify(l->ctl, NNG_PIPE_EV_REM_POST, pipe_removed, l)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_SENDTIMEO, 5000)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_RECONNMINT, 50)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_RECONNMAXT, 500)) != 0 ||
	    (rv = nng_dial(l->ctl, l->url, NULL, NNG_FLAG_NONBLOCK)) != 0)
		return moe_nng_fail(rv, l->url);
	if ((err = moe_random_bytes(chal, sizeof chal)) != MOE_OK)
		return err;
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, c->id};
	h.name = "coordinator";
	h.challenge = (ProtobufCBinaryData){32, chal};
	/* pair1 takes one peer: a worker that still holds another (or has just
	 * let it go) takes our pipe and closes it, HELLO lost with it, and the
	 * dialer dials again; HELLO goes again on the next pipe, or after 3 s
	 * without an answer, for up to HELLO_BUDGET_MS */
	const uint64_t t0 = moe_now_ns();
	for (int tries = 0;; tries++) {
		const int wait_ms = l->dial_wait_ms > 0   ? l->dial_wait_ms
		                    : c->dial_wait_ms > 0 ? c->dial_wait_ms
		                                          : 10000;
		for (int waited = 0; atomic_load(&l->pipes) == 0; waited += 10) {
			if (waited >= wait_ms)
				return moe_fail(
				    MOE_ERR_TIMEOUT, "worker %s: no connection within %d ms%s",
				    l->url, wait_ms,
				    tries ? " (it closed our connections before HELLO's "
				            "answer: does another peer hold it?)"
				          : "");
			struct timespec ts = {0, 10 * 1000000};
			nanosleep(&ts, NULL);
		}
		if ((err = moe_nng_send(l->ctl, MOE_MSG_HELLO, &h.base)) != MOE_OK)
			return err;
		err = ctl_expect(&msg, &f, l, MOE_MSG_HELLO_REPLY, 3000);
		if (err == MOE_OK)
			break;
		if ((err != MOE_ERR_CLOSED && err != MOE_ERR_TIMEOUT) ||
		    moe_now_ns() - t0 > HELLO_BUDGET_MS * 1000000ull)
			return err;
		moe_log(MOE_LOG_DEBUG, "worker %s: no HELLO_REPLY (%s), HELLO again", l->url,
		        moe_err_name(err));
	}
	Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	if (r == NULL)
		return moe_fail(MOE_ERR_PROTO, "worker %s: HELLO_REPLY does not decode", l->url);
	if (r->protocol_version != MOE_PROTO_VERSION || r->challenge.len != 32) {
		err =
		    moe_fail(MOE_ERR_BAD_VERSION,
		             "worker %s: HELLO_REPLY of protocol %u with a nonce of %zu bytes (we "
		             "speak %u, 32 bytes)",
		             l->url, r->protocol_version, r->challenge.len, MOE_PROTO_VERSION);
		moemesh__hello_reply__free_unpacked(r, NULL);
		return err;
	}
	uint8_t nonce_w[32], mac_w[32];
	memcpy(nonce_w, r->challenge.data, 32);
	moemesh__hello_reply__free_unpacked(r, NULL);
	const size_t sl = c->secret ? c->secret_len : 0;
	if ((err = moe_auth_mac(resp, c->secret, sl, MOE_AUTH_COORDINATOR, chal, nonce_w, c->id)) !=
	        MOE_OK ||
	    (err = moe_auth_mac(mac_w, c->secret, sl, MOE_AUTH_WORKER, chal, nonce_w, c->id)) !=
	        MOE_OK)
		return err;
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, resp};
	if ((err = moe_nng_send(l->ctl, MOE_MSG_AUTH, &a.base)) != MOE_OK)
		return err;
	/* with a secret, AUTH_OK and everything after it are sealed with
	 * this handshake's keys (a worker that refuses AUTH says so in the
	 * clear: moe_nng_open quotes it) */
	moe_session_keys keys;
	if (c->secret != NULL) {
		if ((err = moe_session_derive(&keys, c->secret, c->secret_len, chal, nonce_w,
		                              c->id)) != MOE_OK)
			return err;
		if ((err = moe_aead_create(&l->ctl_tx, keys.ctl_cw, true)) != MOE_OK ||
		    (err = moe_aead_create(&l->ctl_rx, keys.ctl_wc, false)) != MOE_OK ||
		    (err = moe_aead_create(&l->data_tx, keys.data_cw, true)) != MOE_OK ||
		    (err = moe_aead_create(&l->rx.open, keys.data_wc, false)) != MOE_OK) {
			moe_session_wipe(&keys);
			return err;
		}
		moe_session_wipe(&keys);
	}
	if ((err = ctl_expect(&msg, &f, l, MOE_MSG_AUTH_OK, 10000)) != MOE_OK)
		return err;
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	if (ok == NULL)
		return moe_fail(MOE_ERR_PROTO, "worker %s: AUTH_OK does not decode", l->url);
	/* nothing in AUTH_OK is trusted before its MAC */
	if (ok->mac.len != 32 || !moe_bytes_equal_ct(ok->mac.data, mac_w, 32)) {
		err = moe_fail(MOE_ERR_AUTH,
		               c->secret
		                   ? "worker %s does not know the cluster secret (--secret-file)"
		                   : "worker %s: AUTH_OK's MAC is not the one of this handshake "
		                     "(a worker with --secret-file, or not this model?)",
		               l->url);
		goto out_free_ok;
	}
	if (ok->data_token.len != 32) {
		err = moe_fail(MOE_ERR_PROTO, "worker %s: AUTH_OK data token of %zu bytes", l->url,
		               ok->data_token.len);
		goto out_free_ok;
	}
	l->rows_ok = false; /* a new session: no reading of its counters yet */
	if ((err = moe_clu_held_read(c, l, ok)) != MOE_OK)
		goto out_free_ok;
	if (l->name[0] == '\0') /* not named by the cluster file */
		snprintf(l->name, sizeof l->name, "%.63s",
		         ok->name && ok->name[0] ? ok->name : l->url);
	l->mem = ok->mem_bytes;
	moe_log(MOE_LOG_DEBUG, "worker %s (%s): authenticated, %llu bytes offered", l->name, l->url,
	        (unsigned long long)l->mem);
	if (strncmp(l->url, "ipc://", 6) == 0) {
		char want[300];
		snprintf(want, sizeof want, "%s.data", l->url + 6);
		if (ok->data_path == NULL || strcmp(ok->data_path, want) != 0) {
			err = moe_fail(MOE_ERR_PROTO, "worker %s announces data path '%s', not %s",
			               l->url, ok->data_path ? ok->data_path : "", want);
			goto out_free_ok;
		}
		err = moe_sock_connect_unix(&l->dfd, want);
	} else {
		char host[256];
		uint16_t control_port;
		if (ok->data_port == 0 || ok->data_port > 65535) {
			err = moe_fail(MOE_ERR_PROTO, "worker %s announces data port %u", l->url,
			               ok->data_port);
			goto out_free_ok;
		}
		if ((err = moe_url_tcp_split(host, sizeof host, &control_port, l->url)) != MOE_OK)
			goto out_free_ok;
		if (host[0] == '\0') {
			err = moe_fail(MOE_ERR_INVAL, "worker %s: a worker's URL names its host",
			               l->url);
			goto out_free_ok;
		}
		err = moe_sock_connect_tcp(&l->dfd, host, (uint16_t)ok->data_port, 10000);
	}
	if (err != MOE_OK)
		goto out_free_ok;
	/* a worker that stops reading (SIGSTOP, a hung host) fails a DISPATCH's
	 * send within the dispatch deadline instead of blocking it for good */
	const int tmo = c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000;
	const struct timeval tv = {.tv_sec = tmo / 1000, .tv_usec = (tmo % 1000) * 1000};
	if (setsockopt(l->dfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
		err = moe_fail(MOE_ERR_SYS, "worker %s: SO_SNDTIMEO: %s", l->url, strerror(errno));
		goto out_free_ok;
	}
	Moemesh__AuthResponse da = MOEMESH__AUTH_RESPONSE__INIT;
	da.response = ok->data_token;
	err = moe_stream_send_sealed(l->dfd, l->data_tx, MOE_MSG_AUTH, &da.base, NULL, 0, false);
out_free_ok:
	moemesh__auth_ok__free_unpacked(ok, NULL);
	return err;
}

/* Sends set (a [n_layer][n_expert] table) to l as an ASSIGN, runs of experts
 * as ranges. */
moe_err moe_clu_send_assign(moe_cluster *c, clink *l, const uint8_t *set)
{
	const moe_err err = moe_clu_send_assign_msg(c, l, set);
	if (err != MOE_OK)
		return err;
	l->st.loading = true;
	l->st.load_done = l->st.load_total = 0;
	if (c->o.on_load != NULL)
		c->o.on_load(c->o.on_load_ctx, c);
	return MOE_OK;
}

moe_err moe_clu_send_assign_msg(moe_cluster *c, clink *l, const uint8_t *set)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	Moemesh__LayerExperts *les = calloc((size_t)nl, sizeof *les);
	Moemesh__LayerExperts **lp = calloc((size_t)nl, sizeof *lp);
	Moemesh__ExpertRange *rs = calloc((size_t)nl * (size_t)ne, sizeof *rs);
	Moemesh__ExpertRange **rp = calloc((size_t)nl * (size_t)ne, sizeof *rp);
	moe_err err = MOE_OK;
	if (les == NULL || lp == NULL || rs == NULL || rp == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "ASSIGN of %d layers", nl);
		goto out_free;
	}
	size_t nr = 0;
	for (int il = 0; il < nl; il++) {
		moemesh__layer_experts__init(&les[a.n_layers]);
		Moemesh__LayerExperts *le = &les[a.n_layers];
		le->layer = (uint32_t)il;
		le->ranges = rp + nr;
		const uint8_t *h = set + (size_t)il * (size_t)ne;
		for (int e = 0; e < ne;) {
			if (!h[e]) {
				e++;
				continue;
			}
			int e1 = e;
			while (e1 < ne && h[e1])
				e1++;
			moemesh__expert_range__init(&rs[nr]);
			rs[nr].first = (uint32_t)e;
			rs[nr].count = (uint32_t)(e1 - e);
			rp[nr] = &rs[nr];
			nr++;
			le->n_ranges++;
			e = e1;
		}
		if (le->n_ranges > 0)
			lp[a.n_layers++] = le;
	}
	a.layers = lp;
	moe_log(MOE_LOG_DEBUG, "worker %s (%s): ASSIGN in %zu ranges", l->name, l->url, nr);
	err = moe_nng_send_sealed(l->ctl, l->ctl_tx, MOE_MSG_ASSIGN, &a.base);
out_free:
	free(les);
	free(lp);
	free(rs);
	free(rp);
	return err;
}

moe_err moe_clu_assign_done(moe_cluster *c, clink *l, const moe_frame *f, const uint8_t *set)
{
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	Moemesh__LoadProgress *p = moemesh__load_progress__unpack(NULL, f->header_len, f->header);
	if (p == NULL)
		return moe_fail(MOE_ERR_PROTO, "worker %s: LOAD_PROGRESS does not decode", l->url);
	uint64_t held = 0;
	for (size_t i = 0; i < nh; i++)
		held += set[i] != 0;
	moe_err err = MOE_OK;
	if (p->experts_held != held)
		err = moe_fail(MOE_ERR_PROTO, "worker %s holds %llu experts, assigned %llu", l->url,
		               (unsigned long long)p->experts_held, (unsigned long long)held);
	l->st.load_seconds = p->seconds;
	l->st.bytes_loaded = p->bytes_held;
	if (p->bytes_done <= p->bytes_total) {
		l->st.load_done = p->bytes_done;
		l->st.load_total = p->bytes_total;
	}
	l->st.loading = false;
	l->st.assign_loaded += p->bytes_loaded;
	l->st.assign_dropped += p->bytes_dropped;
	l->st.assigns++;
	if (err == MOE_OK)
		memcpy(l->loaded, set, nh);
	moemesh__load_progress__free_unpacked(p, NULL);
	if (c->o.on_load != NULL)
		c->o.on_load(c->o.on_load_ctx, c);
	return err;
}

static moe_err assign_wait(moe_cluster *c, clink *l);

/* Sends l's held set as an ASSIGN and waits until it is loaded. */
moe_err moe_clu_assign(moe_cluster *c, clink *l)
{
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	uint64_t held = 0;
	for (size_t i = 0; i < nh; i++)
		held += l->held[i] != 0;
	l->st.experts_held = held;
	if (l->local) {
		l->st.bytes_loaded = 0; /* mapped, not loaded */
		memcpy(l->loaded, l->held, nh);
		return MOE_OK;
	}
	moe_err err = moe_clu_rebalance_drain(c, l); /* a change under way finishes first */
	if (err != MOE_OK)
		return err;
	moe_clu_ctl_lock(c, l); /* the heartbeat thread's echoes wait */
	err = assign_wait(c, l);
	moe_clu_ctl_unlock(c, l);
	return err;
}

/* moe_clu_assign's ASSIGN and wait, l's control lock held. */
static moe_err assign_wait(moe_cluster *c, clink *l)
{
	nng_msg *msg;
	moe_frame f;
	moe_err err = moe_clu_send_assign(c, l, l->held);
	if (err != MOE_OK)
		return err;
	for (;;) {
		if ((err = ctl_expect(&msg, &f, l, MOE_MSG_LOAD_PROGRESS, LOAD_SILENCE_MS)) !=
		    MOE_OK)
			return err;
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		const bool done = p != NULL && p->done;
		if (p != NULL && !done && p->bytes_done <= p->bytes_total) {
			l->st.load_done = p->bytes_done;
			l->st.load_total = p->bytes_total;
			if (c->o.on_load != NULL)
				c->o.on_load(c->o.on_load_ctx, c);
		}
		moemesh__load_progress__free_unpacked(p, NULL);
		if (p == NULL || done)
			break;
		nng_msg_free(msg);
	}
	err = moe_clu_assign_done(c, l, &f, l->held);
	nng_msg_free(msg);
	return err;
}

moe_err moe_clu_ctl_expect(nng_msg **msg, moe_frame *f, clink *l, moe_msg_kind want, int timeout_ms)
{
	return ctl_expect(msg, f, l, want, timeout_ms);
}

/* How often a dead URL worker is re-dialled, and how long each dial waits
 * for a connection (the idle heartbeat runs it: a request that arrives
 * meanwhile waits at most this long). */
#define REDIAL_MS      2000
#define REDIAL_WAIT_MS 200

void moe_clu_drop_session(clink *l)
{
	if (l->ctl_open) {
		nng_close(l->ctl);
		l->ctl_open = false;
	}
	atomic_store(&l->pipes, 0);
	if (l->dfd >= 0) {
		close(l->dfd);
		l->dfd = -1;
	}
	moe_rx_free(&l->rx);
	moe_aead_destroy(l->ctl_tx);
	moe_aead_destroy(l->ctl_rx);
	moe_aead_destroy(l->data_tx);
	l->ctl_tx = l->ctl_rx = l->data_tx = NULL;
}

void moe_clu_readmit(moe_cluster *c)
{
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].async)
			return; /* a re-placement under way: after it ends */
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->alive || l->local || l->pid > 0 || l->url[0] == '\0')
			continue;
		const uint64_t now = moe_now_ns();
		if (l->redial_t != 0 && now - l->redial_t < (uint64_t)REDIAL_MS * 1000000u)
			continue;
		l->redial_t = now;
		moe_clu_drop_session(l);
		c->dial_wait_ms = REDIAL_WAIT_MS;
		moe_err err = moe_clu_connect(c, l);
		c->dial_wait_ms = 0;
		if (err == MOE_OK) {
			/* what it holds is what it says it loaded, from nothing */
			memset(l->loaded, 0, nh);
			moe_clu_link_reset(c, i); /* between steps: nothing in flight */
			err = moe_clu_assign(c, l);
		}
		if (err != MOE_OK) {
			moe_log(MOE_LOG_DEBUG, "worker %s (%s) not back: %s", l->name, l->url,
			        moe_err_detail());
			moe_clu_drop_session(l);
			continue;
		}
		l->alive = l->st.alive = true;
		c->cnt.readmitted++;
		moe_log(MOE_LOG_WARN, "worker %s (%s) is back: re-admitted with its experts",
		        l->name, l->url);
	}
}

moe_err moe_cluster_heartbeat(moe_cluster *c)
{
	if (c->wt != NULL) /* the heartbeat thread beats: take what it found */
		return moe_clu_watch_apply(c);
	moe_clu_readmit(c);
	static uint64_t seq;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!l->alive || l->local || l->async)
			continue; /* a worker loading for a rebalance answers its poll */
		if (atomic_load(&l->pipes) == 0) { /* its end closed: no 5 s send timeout */
			moe_clu_mark_dead(c, l, "control connection closed");
			continue;
		}
		Moemesh__Heartbeat h = MOEMESH__HEARTBEAT__INIT;
		h.seq = ++seq;
		h.time_ns = moe_now_ns();
		nng_msg *msg;
		moe_frame f;
		moe_err err = moe_nng_send_sealed(l->ctl, l->ctl_tx, MOE_MSG_HEARTBEAT, &h.base);
		if (err == MOE_OK)
			err = ctl_expect(&msg, &f, l, MOE_MSG_HEARTBEAT,
			                 c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000);
		if (err == MOE_OK)
			nng_msg_free(msg);
		else
			moe_clu_mark_dead(c, l, moe_err_detail());
	}
	return moe_clu_repair(c);
}

/* ---- spawned workers ---------------------------------------------------------------- */

moe_err moe_clu_spawn(moe_cluster *c, clink *l, int k)
{
	int fds[2];
	char rfd[16], thr[16], name[32], delay[16];
	const char *exe = "/proc/self/exe";
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int threads = c->o.worker_threads
	                  ? c->o.worker_threads
	                  : (int)(ncpu / (c->o.spawn + 1) > 0 ? ncpu / (c->o.spawn + 1) : 1);
	snprintf(l->url, sizeof l->url, "ipc:///tmp/moemesh-%d-%d.sock", (int)getpid(), k);
	snprintf(name, sizeof name, "w%d", k);
	snprintf(thr, sizeof thr, "%d", threads);
	snprintf(delay, sizeof delay, "%d", c->o.net_delay_us);
	if (pipe(fds) != 0)
		return moe_fail(MOE_ERR_SYS, "pipe: %s", strerror(errno));
	snprintf(rfd, sizeof rfd, "%d", fds[1]);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return moe_fail(MOE_ERR_SYS, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		close(fds[0]);
		const char *argv[24];
		int n = 0;
		argv[n++] = "moemesh";
		argv[n++] = "worker";
		argv[n++] = "-m";
		argv[n++] = c->model_path;
		argv[n++] = "--listen";
		argv[n++] = l->url;
		argv[n++] = "--threads";
		argv[n++] = thr;
		argv[n++] = "--name";
		argv[n++] = name;
		argv[n++] = "--ready-fd";
		argv[n++] = rfd;
		argv[n++] = "--net-delay-us";
		argv[n++] = delay;
		if (moe_log_enabled(MOE_LOG_DEBUG)) {
			argv[n++] = "--log-level";
			argv[n++] = "debug";
		} else {
			argv[n++] = "--quiet";
		}
		if (c->o.secret_file) {
			argv[n++] = "--secret-file";
			argv[n++] = c->o.secret_file;
		}
		argv[n] = NULL;
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	l->pid = pid;
	struct pollfd p = {.fd = fds[0], .events = POLLIN};
	char b = 0;
	int rv = poll(&p, 1, 30000);
	ssize_t r = rv > 0 ? read(fds[0], &b, 1) : -1;
	close(fds[0]);
	if (r != 1) {
		int status = 0;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			l->pid = 0;
			return moe_fail(MOE_ERR_CLOSED,
			                "worker %d (%s %s) exited with status %d "
			                "before listening",
			                k, exe, l->url,
			                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		}
		return moe_fail(MOE_ERR_TIMEOUT, "worker %d (%s) did not start listening in 30 s",
		                k, l->url);
	}
	return MOE_OK;
}

/* How long spawned workers get to exit after SHUTDOWN or SIGTERM. */
#define STOP_GRACE_MS 10000

/* Appends to buf (of size n, used len) how the spawned worker of l ended, if
 * not cleanly; returns whether it did. */
static bool ended_cleanly(char *buf, size_t n, size_t *len, const clink *l, int status, bool killed)
{
	char how[96];
	if (killed)
		snprintf(how, sizeof how, "did not exit within %d ms and was killed",
		         STOP_GRACE_MS);
	else if (WIFSIGNALED(status))
		snprintf(how, sizeof how, "was killed by signal %d (%s)", WTERMSIG(status),
		         strsignal(WTERMSIG(status)));
	else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
		snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
	else
		return true;
	if (*len < n)
		*len += (size_t)snprintf(buf + *len, n - *len, "%sworker %s (pid %d, %s) %s",
		                         *len ? "; " : "", l->name[0] ? l->name : "?", (int)l->pid,
		                         l->url, how);
	return false;
}

moe_err moe_clu_stop_spawned(moe_cluster *c, bool report)
{
	/* SHUTDOWN to the connected live ones, SIGTERM to the others (lost or
	 * never connected), then one deadline for all */
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->pid <= 0)
			continue;
		if (!(l->ctl_open && l->alive && atomic_load(&l->pipes) > 0 &&
		      moe_nng_send_sealed(l->ctl, l->ctl_tx, MOE_MSG_SHUTDOWN, NULL) == MOE_OK))
			kill(l->pid, SIGTERM);
	}
	const uint64_t deadline = moe_now_ns() + (uint64_t)STOP_GRACE_MS * 1000000u;
	char bad[480];
	size_t len = 0;
	int n_bad = 0;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->ended[0] != '\0') { /* a process of it the heartbeat thread re-spawned */
			n_bad++;
			if (len < sizeof bad)
				len += (size_t)snprintf(bad + len, sizeof bad - len, "%s%s",
				                        len ? "; " : "", l->ended);
			l->ended[0] = '\0';
		}
		if (l->pid <= 0)
			continue;
		int status = 0;
		pid_t r;
		while ((r = waitpid(l->pid, &status, WNOHANG)) == 0 && moe_now_ns() < deadline) {
			struct timespec ts = {0, 10 * 1000000};
			nanosleep(&ts, NULL);
		}
		const bool killed = r == 0;
		if (killed) {
			kill(l->pid, SIGKILL);
			waitpid(l->pid, &status, 0);
		}
		if (r < 0) {
			n_bad++;
			if (len < sizeof bad)
				len += (size_t)snprintf(bad + len, sizeof bad - len,
				                        "%sworker %s (pid %d): waitpid: %s",
				                        len ? "; " : "", l->url, (int)l->pid,
				                        strerror(errno));
		} else if (!ended_cleanly(bad, sizeof bad, &len, l, status, killed)) {
			n_bad++;
		}
		/* files a killed worker could not remove */
		char path[300];
		snprintf(path, sizeof path, "%s.data", l->url + 6);
		unlink(path);
		unlink(l->url + 6);
		l->pid = 0;
		l->alive = l->st.alive = false;
	}
	if (n_bad == 0 || !report)
		return MOE_OK;
	return moe_fail(MOE_ERR_CLOSED, "%d spawned worker%s did not end cleanly: %s", n_bad,
	                n_bad > 1 ? "s" : "", bad);
}
