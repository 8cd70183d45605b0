/*
 * server.c - the worker's dispatch server: the poll loop, status datagrams,
 * data connections and set-up.
 *
 * One thread runs a poll loop over the nng control socket (its receive fd),
 * the data listener and the data connections; expert FFNs run on the worker's
 * thread pool.  Control (session.c) is one session per coordinator on a
 * polyamorous pair1 socket, each with its own handshake (HELLO ->
 * HELLO_REPLY, AUTH -> AUTH_OK with what the worker holds), keys, data
 * token and ASSIGNed set.  Data: a connection's first frame is AUTH
 * carrying the token of one authenticated session (with a secret: sealed
 * with that session's data key, one connection per handshake); then
 * DISPATCH frames, each answered by one RESULT (or ERROR), from whichever
 * coordinator.  With a secret, AUTH_OK and every frame after it on both
 * links are sealed with the session's keys (proto.h, seal.c); one that
 * fails its tag is an ERROR and the link dropped.  Every frame is
 * validated; a frame whose prefix is sound but whose content is not gets an
 * ERROR and the connection goes on; a stream whose prefix is bad cannot be
 * resynchronised, so it gets an ERROR and is closed.  The worker itself
 * always keeps serving, until SHUTDOWN or its stop fd (the program's
 * SIGTERM / SIGINT).  Status: STATUS_REQUEST datagrams on the status socket
 * (UDP at the control port's number, or PATH.status) are answered with one
 * STATUS datagram each, also while the worker serves and while it loads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"
#include "proto/proto.h"
#include "worker/server_impl.h"
#include "worker/worker.h"

/* A log line (core.h) naming this worker; --quiet drops them all. */
void moe_wk_log(const server *s, moe_log_level l, const char *fmt, ...)
{
	if (s->o->quiet || !moe_log_enabled(l))
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	moe_log(l, "worker %s: %s", s->o->name ? s->o->name : "", line);
}

/* A line "KEY: N kB" of /proc/meminfo in bytes (key "MemAvailable: "), 0
 * if absent. */
static uint64_t meminfo(const char *key)
{
	FILE *fp = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long long kb = 0;
	const size_t kl = strlen(key);
	if (fp == NULL)
		return 0;
	while (fgets(line, sizeof line, fp))
		if (strncmp(line, key, kl) == 0 && sscanf(line + kl, "%llu kB", &kb) == 1)
			break;
	fclose(fp);
	return (uint64_t)kb * 1024;
}

uint64_t moe_wk_mem_available(void)
{
	return meminfo("MemAvailable: ");
}

/* An ERROR on a data connection, sealed with tx (NULL: plain, before the
 * connection authenticated). */
moe_err moe_wk_data_error(server *s, int fd, moe_aead *tx, moe_err code, const char *what,
                          uint64_t step)
{
	Moemesh__Error e = MOEMESH__ERROR__INIT;
	e.code = (uint32_t)code;
	e.message = (char *)what;
	e.step = step;
	moe_wk_log(s, MOE_LOG_WARN, "data: %s", what);
	return moe_stream_send_sealed(fd, tx, MOE_MSG_ERROR, &e.base, NULL, 0, false);
}

/* ---- status ------------------------------------------------------------------- */

/* Answers one STATUS_REQUEST datagram of len bytes in buf from (from, fl). */
static void status_answer(server *s, const uint8_t *buf, size_t len, const struct sockaddr *from,
                          socklen_t fl)
{
	moe_frame f;
	Moemesh__StatusRequest *rq = NULL;
	moe_err err;
	if (len < MOE_STATUS_MIN_REQUEST) {
		s->st.bad_frames++; /* too short to be answered: no reply bigger than a request */
		moe_wk_log(s, MOE_LOG_DEBUG,
		           "status: a datagram of %zu bytes dropped (at least %d)", len,
		           MOE_STATUS_MIN_REQUEST);
		return;
	}
	if ((err = moe_frame_parse(&f, buf, len)) == MOE_OK)
		err = moe_proto_read_status_request(&rq, &f, s->secret,
		                                    s->secret ? s->secret_len : 0);
	if (err != MOE_OK) {
		s->st.bad_frames++;
		char msg[600];
		snprintf(msg, sizeof msg, "bad STATUS_REQUEST: %s: %s", moe_err_name(err),
		         moe_err_detail());
		moe_wk_log(s, MOE_LOG_WARN, "status: %s", msg);
		Moemesh__Error e = MOEMESH__ERROR__INIT;
		e.code = (uint32_t)err;
		e.message = msg;
		uint8_t out[1024];
		const size_t n = moe_frame_size(moemesh__error__get_packed_size(&e), 0);
		if (n > 0 && n <= sizeof out && n <= len &&
		    moe_frame_write(out, n, MOE_MSG_ERROR, &e.base, 0) == MOE_OK)
			(void)sendto(s->sfd, out, n, MSG_DONTWAIT, from, fl);
		return;
	}
	uint32_t per_layer[MOE_STATUS_MAX_LAYERS];
	const int nl =
	    s->hp.n_layer < MOE_STATUS_MAX_LAYERS ? s->hp.n_layer : MOE_STATUS_MAX_LAYERS;
	for (int l = 0; l < nl; l++) {
		per_layer[l] = 0;
		for (int e = 0; s->store != NULL && e < s->hp.n_expert; e++)
			per_layer[l] += moe_expert_store_get(s->store, l, MOE_EXP_GATE, e) != NULL;
	}
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	Moemesh__WorkerStatus b = MOEMESH__WORKER_STATUS__INIT;
	b.challenge = rq->challenge;
	b.name = (char *)(s->o->name ? s->o->name : "");
	b.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, s->id};
	b.isa = (char *)moe_isa_name(moe_isa_active());
	b.threads = (uint32_t)moe_pool_threads(s->pool);
	b.mem_total = meminfo("MemTotal: ");
	b.mem_available = moe_wk_mem_available();
	b.mem_offered = s->o->mem_bytes ? s->o->mem_bytes : b.mem_available;
	b.bytes_loaded = s->st.bytes_loaded;
	b.experts_held = s->st.experts_held;
	b.n_layer_experts = s->store != NULL ? (size_t)nl : 0;
	b.layer_experts = per_layer;
	b.dispatches = s->st.dispatches;
	b.compute_ns = s->st.compute_ns;
	b.uptime_ns = moe_now_ns() - s->t_start;
	b.coordinator = moe_wk_any_authed(s);
	b.loading = s->loading;
	b.load_done = s->loading ? s->load_done : 0;
	b.load_total = s->loading ? s->load_total : 0;
	b.time_unix_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
	b.bad_frames = s->st.bad_frames;
	b.bytes_loaded_total = s->st.bytes_loaded_total;
	b.dispatches_merged = s->st.dispatches_merged;
	for (int k = 0; k < MAX_SESSIONS; k++)
		b.coordinators += s->sess[k].pipe != 0 && s->sess[k].authed;
	uint8_t body[MOE_STATUS_MAX_LAYERS * 6 + 1024], mac[32], out[sizeof body + 256];
	const size_t bl = moemesh__worker_status__get_packed_size(&b);
	if (bl > sizeof body)
		goto out_free;
	moemesh__worker_status__pack(&b, body);
	Moemesh__Status st = MOEMESH__STATUS__INIT;
	st.body = (ProtobufCBinaryData){bl, body};
	if (s->secret != NULL) {
		if (moe_status_mac(mac, s->secret, s->secret_len, "moemesh status", body, bl) !=
		    MOE_OK)
			goto out_free;
		st.mac = (ProtobufCBinaryData){32, mac};
	}
	const size_t n = moe_frame_size(moemesh__status__get_packed_size(&st), 0);
	if (n == 0 || n > sizeof out || n > len) {
		moe_wk_log(s, MOE_LOG_WARN,
		           "status: a reply of %zu bytes is longer than the request (%zu)", n, len);
		goto out_free;
	}
	if (moe_frame_write(out, n, MOE_MSG_STATUS, &st.base, 0) == MOE_OK)
		(void)sendto(s->sfd, out, n, MSG_DONTWAIT, from, fl);
	moe_wk_log(s, MOE_LOG_DEBUG, "status: answered a request (%zu bytes)", n);
out_free:
	moemesh__status_request__free_unpacked(rq, NULL);
}

/* Answers every status datagram waiting (never blocks). */
static void status_serve(server *s)
{
	uint8_t buf[65536];
	for (int k = 0; k < 64 && s->sfd >= 0; k++) {
		struct sockaddr_storage from;
		socklen_t fl = sizeof from;
		const ssize_t n =
		    recvfrom(s->sfd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
		if (n < 0)
			return;
		status_answer(s, buf, (size_t)n, (struct sockaddr *)&from, fl);
	}
}

static void close_conn(server *s, int i);

/* Before authentication every peer has a deadline: a control peer is
 * dropped, and so is a data connection that has not sent its token, once
 * auth_deadline_ns has passed since it came; a session's ERROR that asked
 * for its drop is followed by it.  Returns the milliseconds until the next
 * deadline (at most max_ms). */
static int preauth_deadlines(server *s, int max_ms)
{
	const uint64_t now = moe_now_ns(), lim = s->auth_deadline_ns;
	uint64_t next = now + (uint64_t)max_ms * 1000000u;
	for (int k = 0; k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		if (x->pipe == 0)
			continue;
		if (x->drop_at != 0) {
			if (now >= x->drop_at) {
				(void)nng_pipe_close((nng_pipe){.id = x->pipe});
				moe_wk_session_end(s, x);
				continue;
			}
			if (x->drop_at < next)
				next = x->drop_at;
		}
		if (x->authed)
			continue;
		const uint64_t due = x->since + lim;
		if (now >= due) {
			moe_wk_log(s, MOE_LOG_WARN,
			           "control: a peer did not authenticate within %llu ms: dropped",
			           (unsigned long long)(lim / 1000000u));
			(void)nng_pipe_close((nng_pipe){.id = x->pipe});
			moe_wk_session_end(s, x);
		} else if (due < next) {
			next = due;
		}
	}
	for (int i = s->n_conns - 1; i >= 0; i--) {
		if (s->conns[i].authed)
			continue;
		if (now >= s->conns[i].since + lim) {
			moe_wk_log(s, MOE_LOG_WARN,
			           "data: a connection sent no token within %llu ms: closed",
			           (unsigned long long)(lim / 1000000u));
			close_conn(s, i);
		} else if (s->conns[i].since + lim < next) {
			next = s->conns[i].since + lim;
		}
	}
	return next <= now ? 0 : (int)((next - now) / 1000000u) + 1;
}

/* ---- peers not yet authenticated, per address ------------------------------------------ */

peer_addr moe_wk_peer_addr(const uint8_t *bytes, bool v6)
{
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	peer_addr a = {.len = v6 && memcmp(bytes, v4mapped, 12) != 0 ? 16 : 4};
	memcpy(a.a, a.len == 4 && v6 ? bytes + 12 : bytes, a.len);
	return a;
}

/* The address of a data connection (accept's), as the limit counts it. */
static peer_addr addr_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return moe_wk_peer_addr(
		    (const uint8_t *)&((const struct sockaddr_in *)ss)->sin_addr, false);
	if (ss->ss_family == AF_INET6)
		return moe_wk_peer_addr(((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr, true);
	return (peer_addr){0};
}

static bool addr_eq(const peer_addr *x, const peer_addr *y)
{
	return x->len == y->len && memcmp(x->a, y->a, x->len) == 0;
}

bool moe_wk_preauth_admit(server *s, const peer_addr *a, bool control)
{
	if (a->len == 0)
		return true;
	int n = 0;
	if (control) {
		for (int k = 0; k < MAX_SESSIONS; k++)
			n += s->sess[k].pipe != 0 && !s->sess[k].authed &&
			     addr_eq(&s->sess[k].addr, a);
	} else {
		for (int i = 0; i < s->n_conns; i++)
			n += !s->conns[i].authed && !s->conns[i].dead &&
			     addr_eq(&s->conns[i].addr, a);
	}
	if (n < s->preauth_per_addr)
		return true;
	s->limit_refused++;
	const uint64_t now = moe_now_ns();
	if (s->limit_logged == 0 || now - s->limit_logged >= 10000000000u) {
		char host[INET6_ADDRSTRLEN];
		if (inet_ntop(a->len == 4 ? AF_INET : AF_INET6, a->a, host, sizeof host) == NULL)
			snprintf(host, sizeof host, "?");
		moe_wk_log(s, MOE_LOG_WARN,
		           "%s: %s has %d peers not yet authenticated (--max-preauth-per-ip): a "
		           "new one closed (%u refused in all since the last such line)",
		           control ? "control" : "data", host, n, s->limit_refused);
		s->limit_logged = now;
		s->limit_refused = 0;
	}
	return false;
}

/* ---- data ----------------------------------------------------------------------- */

static void close_conn(server *s, int i)
{
	close(s->conns[i].fd);
	moe_rx_free(&s->conns[i].rx);
	moe_aead_destroy(s->conns[i].tx);
	s->conns[i] = s->conns[--s->n_conns];
}

/* With a secret, a data connection's first frame is its token, sealed with
 * the data key of the session it belongs to, and several sessions may wait
 * for theirs: its bytes are read into c->head (nothing past the frame and
 * its tag) and opened with each waiting session's key in turn; the one that
 * opens it and whose token it carries owns the connection (its keys seal and
 * open what follows).  Returns 1 when c is authenticated, 0 while bytes are
 * missing, -1 when it must close (refused with an ERROR). */
static int sealed_token(server *s, conn *c)
{
	size_t need = MOE_PROTO_PREFIX, len = 0;
	if (c->head_have >= MOE_PROTO_PREFIX) {
		if (moe_frame_length(&len, c->head) != MOE_OK ||
		    len + MOE_SEAL_TAG > sizeof c->head)
			goto out_refuse;
		need = len + MOE_SEAL_TAG;
	}
	while (c->head_have < need) {
		const ssize_t r =
		    recv(c->fd, c->head + c->head_have, need - c->head_have, MSG_DONTWAIT);
		if (r == 0)
			return -1;
		if (r < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
		c->head_have += (size_t)r;
		if (c->head_have == MOE_PROTO_PREFIX && need == MOE_PROTO_PREFIX)
			return sealed_token(s, c);
	}
	for (int k = 0; k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		if (x->pipe == 0 || !x->authed || x->token_used)
			continue;
		uint8_t tmp[sizeof c->head];
		moe_aead *open = NULL;
		moe_frame f;
		memcpy(tmp, c->head, need);
		if (moe_aead_create(&open, x->keys.data_cw, false) != MOE_OK)
			goto out_refuse;
		if (moe_aead_open_frame(open, tmp, len, tmp + len) != MOE_OK ||
		    moe_frame_parse(&f, tmp, len) != MOE_OK || f.kind != MOE_MSG_AUTH) {
			moe_aead_destroy(open);
			continue;
		}
		Moemesh__AuthResponse *a =
		    moemesh__auth_response__unpack(NULL, f.header_len, f.header);
		const bool ok = a != NULL && a->response.len == 32 &&
		                moe_bytes_equal_ct(a->response.data, x->token, 32) &&
		                moe_aead_create(&c->tx, x->keys.data_wc, true) == MOE_OK;
		moemesh__auth_response__free_unpacked(a, NULL);
		if (!ok) {
			moe_aead_destroy(open);
			continue;
		}
		c->rx.open = open; /* its counter is past the token frame */
		c->sealed_first = false;
		c->authed = true;
		/* one data connection per handshake: its keys are the
		 * handshake's, and a second one would reuse nonces */
		x->token_used = true;
		return 1;
	}
out_refuse:
	s->st.bad_frames++;
	(void)moe_wk_data_error(s, c->fd, NULL, MOE_ERR_AUTH,
	                        "data link: the first frame must be AUTH with the token of an "
	                        "authenticated control link",
	                        0);
	return -1;
}

/* Reads connection i until a DISPATCH frame is whole (*f views it until the
 * next call), answering what else comes (its token, bad frames).  Returns 1
 * with *f, 0 when nothing more is there now, -1 when it must close (marked
 * dead: closed after the pass, so that the indices of the others hold). */
static int data_next(server *s, int i, moe_frame *f)
{
	conn *c = &s->conns[i];
	char msg[600];
	/* activations of a full batch, with room to spare; never more */
	const size_t max_frame =
	    (size_t)MOE_PROTO_MAX_HEADER + 4096 +
	    (size_t)s->lim.max_tokens * moe_act_row_size(MOE_TYPE_F32, s->hp.n_embd);
	for (;;) {
		bool done;
		if (c->sealed_first) {
			const int r = sealed_token(s, c);
			if (r < 0) {
				c->dead = true;
				return -1;
			}
			if (r == 0)
				return 0;
			continue;
		}
		moe_err err = moe_rx_read(&done, f, &c->rx, c->fd,
		                          c->authed ? max_frame : PREAUTH_MAX_FRAME, false);
		if (err == MOE_ERR_CLOSED) {
			c->dead = true;
			return -1;
		}
		if (err != MOE_OK) {
			s->st.bad_frames++;
			snprintf(msg, sizeof msg, "bad data frame: %s: %s", moe_err_name(err),
			         moe_err_detail());
			if (moe_wk_data_error(s, c->fd, c->tx, err, msg, 0) != MOE_OK ||
			    !moe_rx_in_sync(&c->rx)) {
				c->dead = true;
				return -1;
			}
			continue;
		}
		if (!done)
			return 0;
		if (!c->authed) {
			/* without a secret: the token of any authenticated session */
			Moemesh__AuthResponse *a =
			    f->kind == MOE_MSG_AUTH
			        ? moemesh__auth_response__unpack(NULL, f->header_len, f->header)
			        : NULL;
			session *x = NULL;
			for (int k = 0; a != NULL && a->response.len == 32 && k < MAX_SESSIONS; k++)
				if (s->sess[k].pipe != 0 && s->sess[k].authed &&
				    moe_bytes_equal_ct(a->response.data, s->sess[k].token, 32))
					x = &s->sess[k];
			moemesh__auth_response__free_unpacked(a, NULL);
			if (x == NULL) {
				s->st.bad_frames++;
				(void)moe_wk_data_error(
				    s, c->fd, NULL, MOE_ERR_AUTH,
				    "data link: the first frame must be AUTH with the "
				    "token of an authenticated control link",
				    0);
				c->dead = true;
				return -1;
			}
			c->authed = true;
			x->token_used = true;
			continue;
		}
		if (f->kind == MOE_MSG_DISPATCH)
			return 1;
		s->st.bad_frames++;
		snprintf(msg, sizeof msg, "unexpected %s frame on the data link",
		         moe_msg_kind_name(f->kind));
		if (moe_wk_data_error(s, c->fd, c->tx, MOE_ERR_PROTO, msg, 0) != MOE_OK) {
			c->dead = true;
			return -1;
		}
	}
}

/* Serves the readable connections (ready[i]): each pass takes at most one
 * DISPATCH from each, and those of one layer are computed together
 * (batch.c).  A pass that served some is followed by another, its
 * connections asked anew without waiting (what arrived during the last
 * batch makes the next one), up to MAX_PASSES before the control socket and
 * the listener get their turn.  Dead connections close at the end, from
 * the back (closing one moves the last). */
#define MAX_PASSES 4

static void on_data(server *s, bool *ready)
{
	for (int pass = 0; pass < MAX_PASSES; pass++) {
		if (pass > 0) {
			struct pollfd q[MAX_CONNS];
			for (int i = 0; i < s->n_conns; i++)
				q[i] = (struct pollfd){.fd = s->conns[i].dead ? -1 : s->conns[i].fd,
				                       .events = POLLIN};
			if (poll(q, (nfds_t)s->n_conns, 0) > 0)
				for (int i = 0; i < s->n_conns; i++)
					ready[i] = ready[i] || q[i].revents != 0;
		}
		moe_wk_pending pd[MAX_CONNS];
		int np = 0;
		for (int i = 0; i < s->n_conns; i++) {
			if (!ready[i] || s->conns[i].dead)
				continue;
			const int r = data_next(s, i, &pd[np].f);
			if (r == 1)
				pd[np++].conn = i;
			else
				ready[i] = false;
		}
		if (np == 0)
			break;
		moe_wk_serve_dispatches(s, pd, np);
	}
	for (int i = s->n_conns - 1; i >= 0; i--)
		if (s->conns[i].dead)
			close_conn(s, i);
}

static void on_accept(server *s)
{
	struct sockaddr_storage from = {0};
	socklen_t fl = sizeof from;
	int fd = accept4(s->lfd, (struct sockaddr *)&from, &fl, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	/* an address past its share of peers without their token is refused
	 * before it can make room (below) by closing another's */
	const peer_addr addr = addr_of(&from);
	if (!moe_wk_preauth_admit(s, &addr, false)) {
		/* a fresh socket: these few bytes fit its buffer (admit logged it) */
		Moemesh__Error e = MOEMESH__ERROR__INIT;
		e.code = MOE_ERR_BUSY;
		e.message = "too many data connections without their token from this address";
		(void)moe_stream_send(fd, MOE_MSG_ERROR, &e.base, NULL, 0);
		close(fd);
		return;
	}
	if (s->n_conns == MAX_CONNS) {
		/* full: the oldest connection without its token yet makes room (a
		 * flood of idle ones cannot keep the coordinator's out) */
		int old = -1;
		for (int i = 0; i < s->n_conns; i++)
			if (!s->conns[i].authed &&
			    (old < 0 || s->conns[i].since < s->conns[old].since))
				old = i;
		if (old < 0) {
			(void)moe_wk_data_error(s, fd, NULL, MOE_ERR_BUSY,
			                        "too many data connections", 0);
			close(fd);
			return;
		}
		close_conn(s, old);
	}
	moe_sock_nodelay(fd);
	struct timeval tv = {.tv_sec = 30};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	conn c = {.fd = fd, .addr = addr, .since = moe_now_ns()};
	/* with a secret the first frame (the token) is sealed with the data key
	 * of a control session that is waiting for its data connection */
	if (s->secret != NULL) {
		bool waits = false;
		for (int k = 0; k < MAX_SESSIONS; k++)
			waits |=
			    s->sess[k].pipe != 0 && s->sess[k].authed && !s->sess[k].token_used;
		if (!waits) {
			(void)moe_wk_data_error(
			    s, fd, NULL, MOE_ERR_AUTH,
			    "no authenticated control link is waiting for a data "
			    "connection",
			    0);
			close(fd);
			return;
		}
		c.sealed_first = true;
	}
	s->conns[s->n_conns++] = c;
}

/* ---- set-up ------------------------------------------------------------------------ */

/* Splits "tcp://HOST:PORT" / "ipc://PATH" into where the data listener goes:
 * the same host (a name, an address, [IPv6], or * for every address). */
static moe_err open_data_listener(server *s)
{
	const char *url = s->o->listen_url;
	if (strncmp(url, "ipc://", 6) == 0) {
		if (snprintf(s->data_path, sizeof s->data_path, "%s.data", url + 6) >=
		    (int)sizeof s->data_path)
			return moe_fail(MOE_ERR_INVAL, "--listen %s: path too long", url);
		return moe_sock_listen_unix(&s->lfd, s->data_path);
	}
	if (strncmp(url, "tcp://", 6) != 0)
		return moe_fail(MOE_ERR_INVAL, "--listen %s: want tcp://HOST:PORT or ipc://PATH",
		                url);
	char host[256];
	uint16_t control_port;
	moe_err err = moe_url_tcp_split(host, sizeof host, &control_port, url);
	if (err != MOE_OK)
		return err; /* the detail names url */
	s->data_port = s->o->data_port;
	return moe_sock_listen_tcp(&s->lfd, host, &s->data_port);
}

static void server_free(server *s)
{
	for (int i = s->n_conns - 1; i >= 0; i--)
		close_conn(s, i);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->data_path[0])
		unlink(s->data_path);
	if (s->sfd >= 0)
		close(s->sfd);
	if (s->status_path[0])
		unlink(s->status_path);
	nng_close(s->ctl);
	moe_wk_drop_store(s);
	for (int i = 0; i < 2; i++)
		if (s->load_pipe[i] >= 0)
			close(s->load_pipe[i]);
	moe_aligned_free(s->acc);
	moe_aligned_free(s->xcat);
	free(s->idcat);
	free(s->wcat);
	free(s->ffn);
	free(s->ptrs);
	free(s->st.expert_rows);
	moe_pool_destroy(s->pool);
	for (int k = 0; k < MAX_SESSIONS; k++) {
		moe_wk_session_reset(s, &s->sess[k]);
		free(s->sess[k].set);
	}
	for (int i = 0; i < 2; i++)
		if (s->ev_pipe[i] >= 0)
			close(s->ev_pipe[i]);
	pthread_mutex_destroy(&s->ctl_lock);
	pthread_mutex_destroy(&s->ev_lock);
	free(s->secret);
	moe_gguf_close(s->g);
}

moe_err moe_worker_run(const moe_worker_opts *o)
{
	server s = {.o = o,
	            .auth_deadline_ns =
	                (uint64_t)(o->auth_timeout_ms > 0 ? o->auth_timeout_ms : 10000) * 1000000u,
	            .preauth_per_addr =
	                o->max_preauth_per_ip > 0 ? o->max_preauth_per_ip : PREAUTH_PER_ADDR,
	            .lfd = -1,
	            .sfd = -1,
	            .ctl = NNG_SOCKET_INITIALIZER,
	            .load_pipe = {-1, -1},
	            .ev_pipe = {-1, -1},
	            .ctl_lock = PTHREAD_MUTEX_INITIALIZER,
	            .ev_lock = PTHREAD_MUTEX_INITIALIZER};
	nng_listener lst;
	Moemesh__Stats st0 = MOEMESH__STATS__INIT;
	moe_err err;
	int rv;
	s.st = st0;
	s.t_start = moe_now_ns();

	if ((err = moe_gguf_open(&s.g, o->model_path)) != MOE_OK ||
	    (err = moe_hparams_load(&s.hp, s.g)) != MOE_OK ||
	    (err = moe_model_identity(s.id, s.g)) != MOE_OK)
		goto out_free;
	if (s.hp.n_expert <= 0) {
		err = moe_fail(MOE_ERR_UNSUPPORTED, "%s has no routed experts", o->model_path);
		goto out_free;
	}
	s.lim = (moe_proto_limits){.n_layer = (uint32_t)s.hp.n_layer,
	                           .n_expert = (uint32_t)s.hp.n_expert,
	                           .n_expert_used = (uint32_t)s.hp.n_expert_used,
	                           .n_embd = (uint32_t)s.hp.n_embd,
	                           .max_tokens = 4096};
	if (o->secret_file &&
	    (err = moe_secret_read(&s.secret, &s.secret_len, o->secret_file)) != MOE_OK)
		goto out_free;
	s.ffn = calloc((size_t)s.hp.n_layer, sizeof *s.ffn);
	s.ptrs = calloc((size_t)s.hp.n_layer * 3 * (size_t)s.hp.n_expert, sizeof *s.ptrs);
	s.st.n_expert_rows = (size_t)s.hp.n_layer * (size_t)s.hp.n_expert;
	s.st.expert_rows = calloc(s.st.n_expert_rows, sizeof *s.st.expert_rows);
	if (s.ffn == NULL || s.ptrs == NULL || s.st.expert_rows == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "worker tables");
		goto out_free;
	}
	if (pipe2(s.load_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
	    pipe2(s.ev_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
		err = moe_fail(MOE_ERR_SYS, "pipe: %s", strerror(errno));
		goto out_free;
	}
	if ((err = moe_pool_create(&s.pool, o->n_threads)) != MOE_OK ||
	    (err = open_data_listener(&s)) != MOE_OK)
		goto out_free;
	/* polyamorous: one pipe per coordinator (DESIGN.md, Several
	 * coordinators); every reply names its pipe */
	if ((rv = nng_pair1_open_poly(&s.ctl)) != 0 ||
	    (rv = nng_socket_set_ms(s.ctl, NNG_OPT_SENDTIMEO, 5000)) != 0 ||
	    (rv = nng_pipe_notify(s.ctl, NNG_PIPE_EV_ADD_POST, moe_wk_pipe_added, &s)) != 0 ||
	    (rv = nng_pipe_notify(s.ctl, NNG_PIPE_EV_REM_POST, moe_wk_pipe_removed, &s)) != 0 ||
	    (rv = nng_listen(s.ctl, o->listen_url, &lst, 0)) != 0 ||
	    (rv = nng_socket_get_int(s.ctl, NNG_OPT_RECVFD, &s.ctl_fd)) != 0) {
		err = moe_nng_fail(rv, o->listen_url);
		goto out_free;
	}
	/* status on UDP at the port nng bound (the URL's, or the one picked for 0) */
	int bound = 0;
	if (strncmp(o->listen_url, "tcp://", 6) == 0 &&
	    (rv = nng_listener_get_int(lst, NNG_OPT_TCP_BOUND_PORT, &bound)) != 0) {
		err = moe_nng_fail(rv, o->listen_url);
		goto out_free;
	}
	if ((err = moe_dgram_listen(&s.sfd, o->listen_url, (uint16_t)bound)) != MOE_OK)
		goto out_free;
	if (strncmp(o->listen_url, "ipc://", 6) == 0)
		snprintf(s.status_path, sizeof s.status_path, "%s.status", o->listen_url + 6);
	char data[300];
	if (s.data_path[0])
		snprintf(data, sizeof data, "%s", s.data_path);
	else
		snprintf(data, sizeof data, "tcp port %u", (unsigned)s.data_port);
	moe_wk_log(&s, MOE_LOG_INFO, "serving %s on %s (data: %s), %d threads, %s", o->model_path,
	           o->listen_url, data, moe_pool_threads(s.pool), moe_isa_name(moe_isa_active()));
	if (o->ready_fd >= 0) {
		(void)!write(o->ready_fd, "R", 1);
		close(o->ready_fd);
	}

	while (!s.quit) {
		/* first the deadlines of peers not yet authenticated (this may
		 * close connections, so before the poll set is made) */
		int wait_ms = preauth_deadlines(&s, 1000);
		/* control, data listener, stop fd (ignored by poll when -1),
		 * loader, status, pipe events, connections */
		struct pollfd p[MAX_CONNS + 6];
		p[0] = (struct pollfd){.fd = s.ctl_fd, .events = POLLIN};
		p[1] = (struct pollfd){.fd = s.lfd, .events = POLLIN};
		p[2] = (struct pollfd){.fd = o->stop_fd, .events = POLLIN};
		p[3] = (struct pollfd){.fd = s.loading ? s.load_pipe[0] : -1, .events = POLLIN};
		p[4] = (struct pollfd){.fd = s.sfd, .events = POLLIN};
		p[5] = (struct pollfd){.fd = s.ev_pipe[0], .events = POLLIN};
		for (int i = 0; i < s.n_conns; i++)
			p[6 + i] = (struct pollfd){.fd = s.conns[i].fd, .events = POLLIN};
		const int n = 6 + s.n_conns;
		if (poll(p, (nfds_t)n, wait_ms) < 0) {
			if (errno == EINTR)
				continue;
			err = moe_fail(MOE_ERR_SYS, "poll: %s", strerror(errno));
			goto out_free;
		}
		if (p[2].revents) {
			moe_wk_log(&s, MOE_LOG_INFO, "asked to stop");
			break;
		}
		/* connections first */
		bool ready[MAX_CONNS];
		for (int i = 0; i < s.n_conns; i++)
			ready[i] = p[6 + i].revents != 0;
		on_data(&s, ready);
		if (p[5].revents & POLLIN)
			moe_wk_pipes_changed(&s);
		if (p[3].revents & POLLIN)
			moe_wk_on_loaded(&s);
		if (p[4].revents & POLLIN)
			status_serve(&s);
		if (p[1].revents & POLLIN)
			on_accept(&s);
		if (p[0].revents & POLLIN)
			moe_wk_on_control(&s);
	}
	moe_wk_log(&s, MOE_LOG_INFO, "shut down after %llu dispatches",
	           (unsigned long long)s.st.dispatches);
	err = MOE_OK;

out_free:
	server_free(&s);
	return err;
}
