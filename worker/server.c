/*
 * server.c - the worker's dispatch server.
 *
 * One thread runs a poll loop over the nng control socket (its receive fd),
 * the data listener and the data connections; expert FFNs run on the worker's
 * thread pool.  Control: HELLO -> HELLO_REPLY (model identity checked; the
 * worker's nonce, nothing else), AUTH -> AUTH_OK (the coordinator's MAC
 * checked, else ERROR and the peer dropped; the worker's MAC, node facts,
 * data endpoint + token), then ASSIGN (the
 * slices no longer named dropped, the missing ones loaded by a loader thread
 * while this one goes on serving, LOAD_PROGRESS with what changed),
 * HEARTBEAT (echoed), STATS_REQUEST, SHUTDOWN.  Data: a
 * connection's first frame is AUTH carrying the token (with a secret: one
 * connection per handshake); then DISPATCH frames, each answered by one
 * RESULT (or ERROR).  With a secret, AUTH_OK and every frame after it on both links are sealed
 * with the handshake's session keys (proto.h, seal.c); one that fails its
 * tag is an ERROR and the link dropped.  Every frame is validated; a frame
 * whose prefix is sound but whose content is not gets an ERROR and the
 * connection goes on; a stream whose prefix is bad cannot be resynchronised,
 * so it gets an ERROR and is closed.  The worker itself always keeps serving,
 * until SHUTDOWN or its stop fd (the program's SIGTERM / SIGINT).  Status:
 * STATUS_REQUEST datagrams on the status socket (UDP at the control port's
 * number, or PATH.status) are answered with one STATUS datagram each, also
 * while the worker serves a coordinator and while it loads.
 */
#include <errno.h>
#include <fcntl.h>
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
#include "worker/worker.h"

#define MAX_CONNS 32

/* Frames a peer may send before it has authenticated (control: before
 * AUTH_OK; data: before its token), HELLO and AUTH being a few hundred
 * bytes: a bigger one is refused and the connection dropped, so an
 * unauthenticated peer makes the worker buffer no more than this. */
#define PREAUTH_MAX_FRAME (64u << 10)

typedef struct conn {
	int fd;
	bool authed;
	bool sealed_first; /* with a secret: its token frame is not read yet (sealed_token) */
	uint64_t since;    /* accepted at (moe_now_ns) */
	moe_rx rx;         /* rx.open: sealed link (a secret) */
	moe_aead *tx;      /* seals what goes out, once authed with a secret */
	uint8_t head[256]; /* the sealed token frame, read before its key is known */
	size_t head_have;
} conn;

/* One control session: a coordinator's pipe on the (polyamorous) pair1
 * socket, its handshake, keys, data token and the set it last assigned. */
typedef struct session {
	uint32_t pipe;  /* nng pipe id; 0: a free slot */
	uint64_t since; /* its pipe came (moe_now_ns) */
	bool hello_ok, authed;
	uint8_t nonce_c[32], challenge[32]; /* challenge: nonce_w */
	uint8_t token[32];
	bool token_used;       /* a data connection came with it (with a secret: no second) */
	moe_session_keys keys; /* with a secret, from AUTH on */
	moe_aead *tx;          /* control sealer (NULL: plain), under ctl_lock */
	moe_aead *rx;          /* control opener (NULL: plain) */
	uint8_t *set;          /* [n_layer][n_expert] its last ASSIGN (NULL: none) */
	bool assign_wait;      /* its ASSIGN waits for the loader */
	bool covered;          /* the load under way answers its ASSIGN (under ctl_lock) */
	uint64_t drop_at;      /* drop it then (after its ERROR went out); 0: no */
} session;

/* A control pipe that came (add) or left, as nng's callback saw it. */
typedef struct pipe_ev {
	uint32_t id;
	bool add;
	uint64_t t;
} pipe_ev;

/* Coordinators served at once (each its own session). */
#define MAX_SESSIONS 8

typedef struct server {
	const moe_worker_opts *o;
	moe_gguf *g;
	moe_hparams hp;
	moe_proto_limits lim;
	uint8_t id[MOE_ID_BYTES];
	uint8_t *secret;
	size_t secret_len;
	nng_socket ctl;
	int ctl_fd;
	int lfd;
	int sfd; /* status datagrams */
	char status_path[256];
	uint64_t t_start;
	_Atomic uint64_t load_done, load_total; /* the loader thread writes them */
	uint16_t data_port;
	char data_path[256];
	conn conns[MAX_CONNS];
	int n_conns;
	/* control sessions; pipes come and go on nng's threads, which queue
	 * them (ev_*) and wake the poll loop through ev_pipe */
	session sess[MAX_SESSIONS];
	pthread_mutex_t ctl_lock; /* control sends (this thread and the loader's), sess[].tx */
	pthread_mutex_t ev_lock;
	pipe_ev ev[256];
	int n_ev;
	bool ev_lost; /* the queue overflowed */
	int ev_pipe[2];
	uint32_t gone[64]; /* the last pipes that left */
	unsigned n_gone;
	/* experts */
	moe_pool *pool;
	moe_expert_store *store;
	moe_expert_ffn *ffn; /* [n_layer] */
	const void **ptrs;   /* [n_layer][3][n_expert] */
	moe_fix_t *acc;      /* result buffer */
	size_t acc_cap;      /* in elements */
	Moemesh__Stats st;
	/* an ASSIGN's load, read by the loader thread while this one serves */
	bool loading; /* the loader thread runs (join it) */
	pthread_t loader;
	moe_store_load *ld; /* what it reads */
	moe_err load_err;   /* its outcome, with load_msg */
	char load_msg[400];
	int load_pipe[2];          /* it writes a byte here when done */
	atomic_int load_stop;      /* asks it to stop (shutdown) */
	double load_t0;            /* when the ASSIGN arrived */
	uint64_t assign_dropped;   /* bytes the ASSIGN dropped */
	uint64_t load_last;        /* bytes at the last LOAD_PROGRESS sent (loader thread) */
	uint64_t auth_deadline_ns; /* a peer not authenticated by then is dropped */
	bool quit;
} server;

/* A log line (core.h) naming this worker; --quiet drops them all. */
static void wlog(const server *s, moe_log_level l, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void wlog(const server *s, moe_log_level l, const char *fmt, ...)
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

static void delay_us(int us)
{
	if (us <= 0)
		return;
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
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

static uint64_t mem_available(void)
{
	return meminfo("MemAvailable: ");
}

/* ---- replies ----------------------------------------------------------------- */

/* Sends a control frame to session x's pipe, sealed once it has
 * authenticated with a secret; from this thread or the loader's. */
static moe_err ctl_send(server *s, session *x, moe_msg_kind kind, const ProtobufCMessage *msg)
{
	const size_t hlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	const size_t size = moe_frame_size(hlen, 0);
	nng_msg *m;
	moe_err err;
	int rv;
	if (size == 0)
		return moe_fail(MOE_ERR_INVAL, "%s header of %zu bytes over cap",
		                moe_msg_kind_name(kind), hlen);
	pthread_mutex_lock(&s->ctl_lock);
	const size_t tag = x->tx != NULL ? MOE_SEAL_TAG : 0;
	if ((rv = nng_msg_alloc(&m, size + tag)) != 0) {
		err = moe_nng_fail(rv, "allocating a frame");
		goto out_unlock;
	}
	uint8_t *p = nng_msg_body(m);
	if ((err = moe_frame_write(p, size, kind, msg, 0)) != MOE_OK ||
	    (tag != 0 && (err = moe_aead_seal_frame(x->tx, p + size, p, size)) != MOE_OK))
		goto out_free_msg;
	/* polyamorous pair1 sends to the pipe the message names */
	nng_msg_set_pipe(m, (nng_pipe){.id = x->pipe});
	if ((rv = nng_sendmsg(s->ctl, m, 0)) != 0) {
		err = moe_nng_fail(rv, "sending a frame");
		goto out_free_msg;
	}
	pthread_mutex_unlock(&s->ctl_lock);
	return MOE_OK;

out_free_msg:
	nng_msg_free(m);
out_unlock:
	pthread_mutex_unlock(&s->ctl_lock);
	return err;
}

/* Forgets session x's handshake and keys: its peer (or this one, again)
 * says HELLO in the clear.  Its assigned set stays. */
static void session_reset(server *s, session *x)
{
	pthread_mutex_lock(&s->ctl_lock);
	moe_aead_destroy(x->tx);
	moe_aead_destroy(x->rx);
	x->tx = x->rx = NULL;
	pthread_mutex_unlock(&s->ctl_lock);
	moe_session_wipe(&x->keys);
	x->hello_ok = x->authed = false;
	x->token_used = true;
}

static void ctl_error(server *s, session *x, moe_err code, const char *what)
{
	Moemesh__Error e = MOEMESH__ERROR__INIT;
	e.code = (uint32_t)code;
	e.message = (char *)what;
	wlog(s, MOE_LOG_WARN, "control: %s", what);
	(void)ctl_send(s, x, MOE_MSG_ERROR, &e.base);
}

/* Whether any coordinator has an authenticated session. */
static bool any_authed(const server *s)
{
	for (int k = 0; k < MAX_SESSIONS; k++)
		if (s->sess[k].pipe != 0 && s->sess[k].authed)
			return true;
	return false;
}

/* An ERROR on a data connection, sealed with tx (NULL: plain, before the
 * connection authenticated). */
static moe_err data_error(server *s, int fd, moe_aead *tx, moe_err code, const char *what,
                          uint64_t step)
{
	Moemesh__Error e = MOEMESH__ERROR__INIT;
	e.code = (uint32_t)code;
	e.message = (char *)what;
	e.step = step;
	wlog(s, MOE_LOG_WARN, "data: %s", what);
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
		wlog(s, MOE_LOG_DEBUG, "status: a datagram of %zu bytes dropped (at least %d)", len,
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
		wlog(s, MOE_LOG_WARN, "status: %s", msg);
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
	b.mem_available = mem_available();
	b.mem_offered = s->o->mem_bytes ? s->o->mem_bytes : b.mem_available;
	b.bytes_loaded = s->st.bytes_loaded;
	b.experts_held = s->st.experts_held;
	b.n_layer_experts = s->store != NULL ? (size_t)nl : 0;
	b.layer_experts = per_layer;
	b.dispatches = s->st.dispatches;
	b.compute_ns = s->st.compute_ns;
	b.uptime_ns = moe_now_ns() - s->t_start;
	b.coordinator = any_authed(s);
	b.loading = s->loading;
	b.load_done = s->loading ? s->load_done : 0;
	b.load_total = s->loading ? s->load_total : 0;
	b.time_unix_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
	b.bad_frames = s->st.bad_frames;
	b.bytes_loaded_total = s->st.bytes_loaded_total;
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
		wlog(s, MOE_LOG_WARN,
		     "status: a reply of %zu bytes is longer than the request (%zu)", n, len);
		goto out_free;
	}
	if (moe_frame_write(out, n, MOE_MSG_STATUS, &st.base, 0) == MOE_OK)
		(void)sendto(s->sfd, out, n, MSG_DONTWAIT, from, fl);
	wlog(s, MOE_LOG_DEBUG, "status: answered a request (%zu bytes)", n);
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

/* ---- control ------------------------------------------------------------------ */

static void on_hello(server *s, session *x, const moe_frame *f)
{
	char msg[256];
	Moemesh__Hello *h = moemesh__hello__unpack(NULL, f->header_len, f->header);
	session_reset(s, x);
	if (h == NULL) {
		ctl_error(s, x, MOE_ERR_PROTO, "HELLO header does not decode");
		return;
	}
	if (h->protocol_version != MOE_PROTO_VERSION) {
		snprintf(msg, sizeof msg, "protocol version %u, this worker speaks %u",
		         h->protocol_version, MOE_PROTO_VERSION);
		ctl_error(s, x, MOE_ERR_BAD_VERSION, msg);
		goto out_free;
	}
	if (h->model_id.len != MOE_ID_BYTES || h->challenge.len != 32) {
		snprintf(msg, sizeof msg, "HELLO model_id of %zu bytes, challenge of %zu (want 32)",
		         h->model_id.len, h->challenge.len);
		ctl_error(s, x, MOE_ERR_BAD_COUNT, msg);
		goto out_free;
	}
	/* nothing about this node before authentication: not its model's path
	 * nor its identity */
	if (!moe_bytes_equal_ct(h->model_id.data, s->id, MOE_ID_BYTES)) {
		snprintf(msg, sizeof msg,
		         "model identity differs: the coordinator runs %02x%02x%02x%02x..., this "
		         "worker another model: start both with the same GGUF",
		         h->model_id.data[0], h->model_id.data[1], h->model_id.data[2],
		         h->model_id.data[3]);
		ctl_error(s, x, MOE_ERR_MISMATCH, msg);
		goto out_free;
	}
	if (moe_random_bytes(x->challenge, sizeof x->challenge) != MOE_OK) {
		ctl_error(s, x, MOE_ERR_SYS, "libcrypto failed");
		goto out_free;
	}
	memcpy(x->nonce_c, h->challenge.data, 32);
	Moemesh__HelloReply r = MOEMESH__HELLO_REPLY__INIT;
	r.protocol_version = MOE_PROTO_VERSION;
	r.challenge = (ProtobufCBinaryData){32, x->challenge};
	x->hello_ok = true;
	wlog(s, MOE_LOG_DEBUG, "HELLO: model identity and protocol match");
	(void)ctl_send(s, x, MOE_MSG_HELLO_REPLY, &r.base);
out_free:
	moemesh__hello__free_unpacked(h, NULL);
}

/* Drops session x's peer once its ERROR has had time to leave. */
static void drop_peer(session *x)
{
	x->drop_at = moe_now_ns() + 200u * 1000000u;
}

/* What this worker holds, as AUTH_OK's held list: runs of experts per
 * layer.  Returns false (nothing filled) without memory. */
typedef struct held_list {
	Moemesh__LayerExperts *les, **lp;
	Moemesh__ExpertRange *rs, **rp;
	size_t n_layers;
} held_list;

static bool held_list_make(held_list *hl, const server *s)
{
	const int nl = s->hp.n_layer, ne = s->hp.n_expert;
	memset(hl, 0, sizeof *hl);
	if (s->store == NULL)
		return true;
	hl->les = calloc((size_t)nl, sizeof *hl->les);
	hl->lp = calloc((size_t)nl, sizeof *hl->lp);
	hl->rs = calloc((size_t)nl * (size_t)ne, sizeof *hl->rs);
	hl->rp = calloc((size_t)nl * (size_t)ne, sizeof *hl->rp);
	if (hl->les == NULL || hl->lp == NULL || hl->rs == NULL || hl->rp == NULL)
		return false;
	size_t nr = 0;
	for (int il = 0; il < nl; il++) {
		Moemesh__LayerExperts *le = &hl->les[hl->n_layers];
		moemesh__layer_experts__init(le);
		le->layer = (uint32_t)il;
		le->ranges = hl->rp + nr;
		for (int e = 0; e < ne;) {
			if (moe_expert_store_get(s->store, il, MOE_EXP_GATE, e) == NULL) {
				e++;
				continue;
			}
			int e1 = e;
			while (e1 < ne &&
			       moe_expert_store_get(s->store, il, MOE_EXP_GATE, e1) != NULL)
				e1++;
			moemesh__expert_range__init(&hl->rs[nr]);
			hl->rs[nr].first = (uint32_t)e;
			hl->rs[nr].count = (uint32_t)(e1 - e);
			hl->rp[nr] = &hl->rs[nr];
			nr++;
			le->n_ranges++;
			e = e1;
		}
		if (le->n_ranges > 0)
			hl->lp[hl->n_layers++] = le;
	}
	return true;
}

static void held_list_free(held_list *hl)
{
	free(hl->les);
	free(hl->lp);
	free(hl->rs);
	free(hl->rp);
}

static void on_auth(server *s, session *x, const moe_frame *f)
{
	Moemesh__AuthResponse *a = moemesh__auth_response__unpack(NULL, f->header_len, f->header);
	uint8_t want[32], mac_w[32];
	held_list hl = {0};
	if (a == NULL) {
		ctl_error(s, x, MOE_ERR_PROTO, "AUTH header does not decode");
		return;
	}
	if (!x->hello_ok) {
		ctl_error(s, x, MOE_ERR_STATE, "AUTH before HELLO");
		goto out_free;
	}
	x->hello_ok = false; /* one try per HELLO (fresh nonce_w) */
	const size_t sl = s->secret ? s->secret_len : 0;
	if (moe_auth_mac(want, s->secret, sl, MOE_AUTH_COORDINATOR, x->nonce_c, x->challenge,
	                 s->id) != MOE_OK ||
	    moe_auth_mac(mac_w, s->secret, sl, MOE_AUTH_WORKER, x->nonce_c, x->challenge, s->id) !=
	        MOE_OK ||
	    moe_random_bytes(x->token, sizeof x->token) != MOE_OK) {
		ctl_error(s, x, MOE_ERR_SYS, "libcrypto failed");
		goto out_free;
	}
	if (a->response.len != 32 || !moe_bytes_equal_ct(a->response.data, want, 32)) {
		ctl_error(s, x, MOE_ERR_AUTH,
		          s->secret ? "authentication failed: the coordinator does not know the "
		                      "cluster secret of this worker (--secret-file)"
		                    : "authentication failed: the AUTH MAC is not the one of this "
		                      "HELLO (this worker has no --secret-file)");
		drop_peer(x);
		goto out_free;
	}
	if (!held_list_make(&hl, s)) {
		ctl_error(s, x, MOE_ERR_NOMEM, "AUTH: no memory for the held list");
		goto out_free;
	}
	/* with a secret, AUTH_OK and all after it are sealed with this
	 * handshake's keys */
	if (s->secret != NULL) {
		moe_aead *tx = NULL, *rx = NULL;
		if (moe_session_derive(&x->keys, s->secret, s->secret_len, x->nonce_c, x->challenge,
		                       s->id) != MOE_OK ||
		    moe_aead_create(&tx, x->keys.ctl_wc, true) != MOE_OK ||
		    moe_aead_create(&rx, x->keys.ctl_cw, false) != MOE_OK) {
			moe_aead_destroy(tx);
			ctl_error(s, x, MOE_ERR_SYS, "libcrypto failed");
			goto out_free;
		}
		pthread_mutex_lock(&s->ctl_lock);
		x->tx = tx;
		x->rx = rx;
		pthread_mutex_unlock(&s->ctl_lock);
	}
	x->authed = true;
	x->token_used = false;
	Moemesh__AuthOk ok = MOEMESH__AUTH_OK__INIT;
	ok.data_token = (ProtobufCBinaryData){32, x->token};
	ok.data_port = s->data_port;
	ok.data_path = s->data_path;
	ok.mac = (ProtobufCBinaryData){32, mac_w};
	ok.name = (char *)(s->o->name ? s->o->name : "");
	ok.mem_bytes = s->o->mem_bytes ? s->o->mem_bytes : mem_available();
	ok.isa = (char *)moe_isa_name(moe_isa_active());
	ok.threads = (uint32_t)moe_pool_threads(s->pool);
	/* what it holds (a coordinator may adopt it) and who else is here */
	ok.n_held = hl.n_layers;
	ok.held = hl.lp;
	for (int k = 0; k < MAX_SESSIONS; k++)
		ok.sessions += &s->sess[k] != x && s->sess[k].pipe != 0 && s->sess[k].authed;
	(void)ctl_send(s, x, MOE_MSG_AUTH_OK, &ok.base);
out_free:
	held_list_free(&hl);
	moemesh__auth_response__free_unpacked(a, NULL);
}

static void load_progress(void *ctx, uint64_t done, uint64_t total)
{
	server *s = ctx;
	s->load_done = done; /* the loader thread: status replies read them */
	s->load_total = total;
	if (done != total && done - s->load_last < (64u << 20))
		return;
	s->load_last = done;
	Moemesh__LoadProgress p = MOEMESH__LOAD_PROGRESS__INIT;
	p.bytes_done = done;
	p.bytes_total = total;
	/* the loader thread: the sessions whose ASSIGN this load answers
	 * (covered and the slots change under ctl_lock; ctl_send takes it too,
	 * so read them first) */
	uint32_t to[MAX_SESSIONS];
	int n = 0;
	pthread_mutex_lock(&s->ctl_lock);
	for (int k = 0; k < MAX_SESSIONS; k++)
		if (s->sess[k].pipe != 0 && s->sess[k].covered)
			to[n++] = (uint32_t)k;
	pthread_mutex_unlock(&s->ctl_lock);
	for (int i = 0; i < n; i++)
		(void)ctl_send(s, &s->sess[to[i]], MOE_MSG_LOAD_PROGRESS, &p.base);
}

static bool load_stopped(void *ctx)
{
	return atomic_load(&((server *)ctx)->load_stop) != 0;
}

/* The loader thread: reads s->ld, then wakes the serving thread. */
static void *loader_main(void *arg)
{
	server *s = arg;
	moe_store_opts so = {.progress = load_progress, .stop = load_stopped, .progress_ctx = s};
	s->load_err = moe_store_load_read(s->ld, &so);
	if (s->load_err != MOE_OK)
		snprintf(s->load_msg, sizeof s->load_msg, "%s", moe_err_detail());
	(void)!write(s->load_pipe[1], "L", 1);
	return NULL;
}

/* Waits for the loader thread (asking it to stop first if stop) and frees
 * its load if it was not committed. */
static void join_loader(server *s, bool stop)
{
	if (!s->loading)
		return;
	if (stop)
		atomic_store(&s->load_stop, 1);
	pthread_join(s->loader, NULL);
	s->loading = false;
	atomic_store(&s->load_stop, 0);
	char b;
	while (read(s->load_pipe[0], &b, 1) == 1) {
	}
}

static void drop_store(server *s)
{
	join_loader(s, true);
	moe_store_load_destroy(s->ld);
	s->ld = NULL;
	moe_expert_store_destroy(s->store);
	s->store = NULL;
	s->st.experts_held = 0;
	s->st.bytes_loaded = 0;
}

/* Points the per-layer FFN views at the store. */
static void bind_store(server *s)
{
	const int nl = s->hp.n_layer, ne = s->hp.n_expert;
	for (int l = 0; l < nl; l++) {
		moe_expert_mat *mats[3] = {&s->ffn[l].gate, &s->ffn[l].up, &s->ffn[l].down};
		s->ffn[l].n_expert = ne;
		for (int w = 0; w < 3; w++) {
			const void **p = s->ptrs + ((size_t)l * 3 + (size_t)w) * (size_t)ne;
			moe_expert_store_shape(s->store, l, w, &mats[w]->type, &mats[w]->n_cols,
			                       &mats[w]->n_rows);
			for (int e = 0; e < ne; e++)
				p[e] = moe_expert_store_get(s->store, l, w, e);
			mats[w]->expert = p;
		}
	}
	const moe_store_stats ss = moe_expert_store_stats(s->store);
	s->st.experts_held = ss.experts_held;
	s->st.bytes_loaded = ss.bytes_held;
}

/* Sets covered to false on every session (the load they waited for ended). */
static void uncover(server *s)
{
	pthread_mutex_lock(&s->ctl_lock);
	for (int k = 0; k < MAX_SESSIONS; k++)
		s->sess[k].covered = false;
	pthread_mutex_unlock(&s->ctl_lock);
}

/* The ASSIGN is done: the final LOAD_PROGRESS, with what it changed, to
 * every session it answers; experts_held counts what that session named
 * (the worker may hold more: what other sessions named). */
static void assign_done(server *s, uint64_t loaded, double seconds)
{
	const size_t nh = (size_t)s->hp.n_layer * (size_t)s->hp.n_expert;
	s->st.bytes_loaded_total += loaded;
	s->st.bytes_dropped_total += s->assign_dropped;
	wlog(s, MOE_LOG_INFO,
	     "holds %llu experts, %.1f MB: loaded %.1f MB, dropped %.1f MB in %.3f s",
	     (unsigned long long)s->st.experts_held, (double)s->st.bytes_loaded / 1e6,
	     (double)loaded / 1e6, (double)s->assign_dropped / 1e6, seconds);
	for (int k = 0; k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		if (x->pipe == 0 || !x->covered || x->set == NULL)
			continue;
		uint64_t named = 0;
		for (size_t i = 0; i < nh; i++)
			named += x->set[i];
		Moemesh__LoadProgress p = MOEMESH__LOAD_PROGRESS__INIT;
		p.bytes_done = p.bytes_total = loaded;
		p.done = true;
		p.seconds = seconds;
		p.bytes_loaded = loaded;
		p.bytes_dropped = s->assign_dropped;
		p.experts_held = named;
		p.bytes_held = s->st.bytes_loaded;
		(void)ctl_send(s, x, MOE_MSG_LOAD_PROGRESS, &p.base);
	}
	uncover(s);
}

/* An ASSIGN failed: ERROR to every session it answers. */
static void assign_failed(server *s, moe_err err, const char *what)
{
	char msg[600];
	snprintf(msg, sizeof msg, "loading the assigned experts failed: %s: %s", moe_err_name(err),
	         what);
	for (int k = 0; k < MAX_SESSIONS; k++)
		if (s->sess[k].pipe != 0 && s->sess[k].covered)
			ctl_error(s, &s->sess[k], err, msg);
	uncover(s);
}

static void assign_run(server *s);

/* The loader thread is done: the experts it read join the store. */
static void on_loaded(server *s)
{
	join_loader(s, false);
	moe_err err = s->load_err;
	if (err == MOE_OK) {
		const uint64_t loaded = moe_store_load_bytes(s->ld);
		if ((err = moe_store_load_commit(s->store, s->ld)) == MOE_OK) {
			s->ld = NULL;
			bind_store(s);
			assign_done(s, loaded, moe_now_s() - s->load_t0);
			assign_run(s);
			return;
		}
		snprintf(s->load_msg, sizeof s->load_msg, "%s", moe_err_detail());
	}
	moe_store_load_destroy(s->ld);
	s->ld = NULL;
	assign_failed(s, err, s->load_msg);
	assign_run(s);
}

/* Starts the load of what the sessions waiting with an ASSIGN asked for, if
 * none runs: the worker keeps the union of the sets of every authenticated
 * session (a slice is dropped only when no live session names it), loads
 * what it lacks on the loader thread, and the final LOAD_PROGRESS goes to
 * every session that was waiting. */
static void assign_run(server *s)
{
	moe_err err;
	if (s->loading)
		return;
	bool waiting = false;
	for (int k = 0; k < MAX_SESSIONS; k++)
		waiting |= s->sess[k].pipe != 0 && s->sess[k].assign_wait;
	if (!waiting)
		return;
	const size_t nh = (size_t)s->hp.n_layer * (size_t)s->hp.n_expert;
	uint8_t *held = calloc(nh, 1);
	if (held == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "ASSIGN: no memory for the held table");
		goto out_fail;
	}
	pthread_mutex_lock(&s->ctl_lock);
	for (int k = 0; k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		if (x->pipe == 0 || !x->authed || x->set == NULL)
			continue;
		for (size_t i = 0; i < nh; i++)
			held[i] |= x->set[i];
		x->covered = x->assign_wait;
		x->assign_wait = false;
	}
	pthread_mutex_unlock(&s->ctl_lock);
	s->load_t0 = moe_now_s();
	if (s->store == NULL &&
	    (err = moe_expert_store_create(&s->store, s->o->model_path, s->g, s->hp.n_layer,
	                                   s->hp.n_expert)) != MOE_OK)
		goto out_fail;
	moe_expert_store_keep(s->store, held, &s->assign_dropped, NULL);
	bind_store(s);
	if ((err = moe_store_load_prepare(&s->ld, s->store, held)) != MOE_OK)
		goto out_fail;
	if (moe_store_load_bytes(s->ld) == 0) {
		moe_store_load_destroy(s->ld);
		s->ld = NULL;
		assign_done(s, 0, moe_now_s() - s->load_t0);
		goto out_free_held;
	}
	s->load_last = 0;
	s->load_done = 0;
	s->load_total = moe_store_load_bytes(s->ld);
	wlog(s, MOE_LOG_DEBUG, "loading %llu bytes", (unsigned long long)s->load_total);
	int rc = pthread_create(&s->loader, NULL, loader_main, s);
	if (rc != 0) {
		moe_store_load_destroy(s->ld);
		s->ld = NULL;
		err = moe_fail(MOE_ERR_SYS, "pthread_create: %s", strerror(rc));
		goto out_fail;
	}
	s->loading = true;
	goto out_free_held;

out_fail:
	assign_failed(s, err, moe_err_detail());
out_free_held:
	free(held);
}

/* ASSIGN: session x's set becomes the one named; the worker then holds the
 * union of its sessions' sets (assign_run), loading what is missing on the
 * loader thread while dispatches go on being served.  An ASSIGN that comes
 * while another loads waits for it. */
static void on_assign(server *s, session *x, const moe_frame *f)
{
	char msg[600];
	Moemesh__Assign *a;
	moe_err err;
	if (!x->authed) {
		ctl_error(s, x, MOE_ERR_STATE, "ASSIGN before authentication");
		return;
	}
	if (s->o->on_assign != NULL)
		s->o->on_assign(s->o->observer_ctx);
	if ((err = moe_proto_read_assign(&a, f, &s->lim)) != MOE_OK) {
		snprintf(msg, sizeof msg, "bad ASSIGN: %s", moe_err_detail());
		s->st.bad_frames++;
		ctl_error(s, x, err, msg);
		return;
	}
	if (x->assign_wait || x->covered) {
		ctl_error(s, x, MOE_ERR_BUSY, "ASSIGN while the last one is still loading");
		goto out_free;
	}
	const size_t ne = (size_t)s->hp.n_expert;
	uint8_t *set = calloc((size_t)s->hp.n_layer * ne, 1);
	if (set == NULL) {
		ctl_error(s, x, MOE_ERR_NOMEM, "ASSIGN: no memory for the held table");
		goto out_free;
	}
	for (size_t i = 0; i < a->n_layers; i++) {
		const Moemesh__LayerExperts *le = a->layers[i];
		for (size_t j = 0; j < le->n_ranges; j++)
			for (uint32_t k = 0; k < le->ranges[j]->count; k++)
				set[le->layer * ne + le->ranges[j]->first + k] = 1;
		for (size_t j = 0; j < le->n_experts; j++)
			set[le->layer * ne + le->experts[j]] = 1;
	}
	wlog(s, MOE_LOG_DEBUG, "ASSIGN of %zu layers", a->n_layers);
	pthread_mutex_lock(&s->ctl_lock);
	free(x->set);
	x->set = set;
	x->assign_wait = true;
	pthread_mutex_unlock(&s->ctl_lock);
	assign_run(s);
out_free:
	moemesh__assign__free_unpacked(a, NULL);
}

/* nng's threads: a pipe came or left, queued for the poll loop (which gives
 * a new one a session slot and ends a gone one's session), which the byte on
 * ev_pipe wakes */
static void pipe_event(server *s, nng_pipe p, bool add)
{
	pthread_mutex_lock(&s->ev_lock);
	if (s->n_ev < (int)(sizeof s->ev / sizeof s->ev[0])) {
		s->ev[s->n_ev].id = (uint32_t)nng_pipe_id(p);
		s->ev[s->n_ev].add = add;
		s->ev[s->n_ev].t = moe_now_ns();
		s->n_ev++;
	} else {
		s->ev_lost = true;
	}
	pthread_mutex_unlock(&s->ev_lock);
	(void)!write(s->ev_pipe[1], "p", 1);
}

static void pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)ev;
	pipe_event(arg, p, true);
}

static void pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)ev;
	pipe_event(arg, p, false);
}

/* Ends session x (its pipe left or was dropped): keys and handshake gone;
 * the slices it named stay held until the next ASSIGN of another session
 * (so a coordinator that comes back adopts them), and a load that answered
 * it alone stops. */
static void session_end(server *s, session *x)
{
	if (x->covered && s->loading) {
		bool others = false;
		for (int k = 0; k < MAX_SESSIONS; k++)
			others |= &s->sess[k] != x && s->sess[k].pipe != 0 && s->sess[k].covered;
		if (!others) {
			join_loader(s, true);
			moe_store_load_destroy(s->ld);
			s->ld = NULL;
			bind_store(s);
			uncover(s);
		}
	}
	session_reset(s, x);
	pthread_mutex_lock(&s->ctl_lock);
	free(x->set);
	x->set = NULL;
	x->pipe = 0;
	x->assign_wait = x->covered = false;
	x->drop_at = 0;
	pthread_mutex_unlock(&s->ctl_lock);
	assign_run(s);
}

/* A free session slot for pipe id (the oldest unauthenticated one makes
 * room when all are taken), or NULL: the pipe is then closed. */
static session *session_new(server *s, uint32_t id, uint64_t since)
{
	session *x = NULL;
	for (int k = 0; k < MAX_SESSIONS && x == NULL; k++)
		if (s->sess[k].pipe == 0)
			x = &s->sess[k];
	if (x == NULL) {
		for (int k = 0; k < MAX_SESSIONS; k++)
			if (!s->sess[k].authed && (x == NULL || s->sess[k].since < x->since))
				x = &s->sess[k];
		if (x == NULL) {
			wlog(s, MOE_LOG_WARN, "control: %d coordinators already: a peer refused",
			     MAX_SESSIONS);
			(void)nng_pipe_close((nng_pipe){.id = id});
			return NULL;
		}
		(void)nng_pipe_close((nng_pipe){.id = x->pipe});
		session_end(s, x);
	}
	x->pipe = id;
	x->since = since;
	x->token_used = true;
	return x;
}

static session *session_find(server *s, uint32_t id)
{
	for (int k = 0; k < MAX_SESSIONS; k++)
		if (s->sess[k].pipe == id)
			return &s->sess[k];
	return NULL;
}

/* Whether pipe id left (one of the last pipes nng said were gone). */
static bool pipe_gone(const server *s, uint32_t id)
{
	for (int i = 0; i < (int)(sizeof s->gone / sizeof s->gone[0]); i++)
		if (s->gone[i] == id)
			return true;
	return false;
}

/* Takes the pipes nng saw come and go: new ones get a slot, sessions whose
 * pipe left end.  Should the queue have overflowed, each session's pipe is
 * asked for. */
static void pipes_changed(server *s)
{
	char b[64];
	while (read(s->ev_pipe[0], b, sizeof b) > 0) {
	}
	pthread_mutex_lock(&s->ev_lock);
	const int n = s->n_ev;
	pipe_ev ev[sizeof s->ev / sizeof s->ev[0]];
	memcpy(ev, s->ev, (size_t)n * sizeof ev[0]);
	s->n_ev = 0;
	const bool lost = s->ev_lost;
	s->ev_lost = false;
	pthread_mutex_unlock(&s->ev_lock);
	for (int i = 0; i < n; i++) {
		session *x = session_find(s, ev[i].id);
		if (ev[i].add) {
			if (x == NULL && !pipe_gone(s, ev[i].id))
				(void)session_new(s, ev[i].id, ev[i].t);
			continue;
		}
		s->gone[s->n_gone++ % (sizeof s->gone / sizeof s->gone[0])] = ev[i].id;
		if (x != NULL) {
			wlog(s, MOE_LOG_DEBUG, "control: a peer left");
			session_end(s, x);
		}
	}
	for (int k = 0; lost && k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		nng_sockaddr sa;
		if (x->pipe != 0 && nng_pipe_get_addr((nng_pipe){.id = x->pipe}, NNG_OPT_REMADDR,
		                                      &sa) == NNG_ENOENT)
			session_end(s, x);
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
				session_end(s, x);
				continue;
			}
			if (x->drop_at < next)
				next = x->drop_at;
		}
		if (x->authed)
			continue;
		const uint64_t due = x->since + lim;
		if (now >= due) {
			wlog(s, MOE_LOG_WARN,
			     "control: a peer did not authenticate within %llu ms: dropped",
			     (unsigned long long)(lim / 1000000u));
			(void)nng_pipe_close((nng_pipe){.id = x->pipe});
			session_end(s, x);
		} else if (due < next) {
			next = due;
		}
	}
	for (int i = s->n_conns - 1; i >= 0; i--) {
		if (s->conns[i].authed)
			continue;
		if (now >= s->conns[i].since + lim) {
			wlog(s, MOE_LOG_WARN,
			     "data: a connection sent no token within %llu ms: closed",
			     (unsigned long long)(lim / 1000000u));
			close_conn(s, i);
		} else if (s->conns[i].since + lim < next) {
			next = s->conns[i].since + lim;
		}
	}
	return next <= now ? 0 : (int)((next - now) / 1000000u) + 1;
}

static void on_control(server *s)
{
	nng_msg *m;
	moe_frame f;
	char msg[600];
	int rv = nng_recvmsg(s->ctl, &m, NNG_FLAG_NONBLOCK);
	if (rv == NNG_EAGAIN)
		return;
	if (rv != 0) {
		wlog(s, MOE_LOG_INFO, "control receive: %s", nng_strerror(rv));
		return;
	}
	const nng_pipe mp = nng_msg_get_pipe(m);
	pipes_changed(s); /* its pipe's slot, if nng's callback came first */
	const uint32_t id = (uint32_t)nng_pipe_id(mp);
	session *x = session_find(s, id);
	if (x == NULL && (pipe_gone(s, id) || (x = session_new(s, id, moe_now_ns())) == NULL))
		goto out_free; /* from a peer that left already */
	if (!x->authed && nng_msg_len(m) > PREAUTH_MAX_FRAME) {
		s->st.bad_frames++;
		snprintf(msg, sizeof msg,
		         "a control frame of %zu bytes before authentication (at most %u): "
		         "dropping the peer",
		         nng_msg_len(m), PREAUTH_MAX_FRAME);
		ctl_error(s, x, MOE_ERR_BAD_COUNT, msg);
		drop_peer(x);
		goto out_free;
	}
	moe_err err = moe_nng_open(&f, m, x->rx);
	if (err != MOE_OK) {
		s->st.bad_frames++;
		snprintf(msg, sizeof msg, "bad control frame: %s: %s", moe_err_name(err),
		         moe_err_detail());
		ctl_error(s, x, err, msg);
		if (err == MOE_ERR_AUTH) { /* tampered or replayed: this link is done */
			drop_peer(x);
			session_reset(s, x);
		}
		goto out_free;
	}
	switch (f.kind) {
	case MOE_MSG_HELLO:
		on_hello(s, x, &f);
		break;
	case MOE_MSG_AUTH:
		on_auth(s, x, &f);
		break;
	case MOE_MSG_ASSIGN:
		on_assign(s, x, &f);
		break;
	case MOE_MSG_HEARTBEAT: {
		Moemesh__Heartbeat *h = moemesh__heartbeat__unpack(NULL, f.header_len, f.header);
		if (h == NULL) {
			s->st.bad_frames++;
			ctl_error(s, x, MOE_ERR_PROTO, "HEARTBEAT header does not decode");
			break;
		}
		(void)ctl_send(s, x, MOE_MSG_HEARTBEAT, &h->base);
		moemesh__heartbeat__free_unpacked(h, NULL);
		break;
	}
	case MOE_MSG_STATS_REQUEST:
		if (!x->authed) {
			ctl_error(s, x, MOE_ERR_STATE, "STATS_REQUEST before authentication");
			break;
		}
		(void)ctl_send(s, x, MOE_MSG_STATS, &s->st.base);
		break;
	case MOE_MSG_SHUTDOWN:
		if (!x->authed) {
			ctl_error(s, x, MOE_ERR_STATE, "SHUTDOWN before authentication");
			break;
		}
		s->quit = true;
		break;
	default:
		s->st.bad_frames++;
		snprintf(msg, sizeof msg, "unexpected %s frame on the control link",
		         moe_msg_kind_name(f.kind));
		ctl_error(s, x, MOE_ERR_PROTO, msg);
		break;
	}
out_free:
	nng_msg_free(m);
}

/* ---- data ----------------------------------------------------------------------- */

/* Checks what the generic validation cannot: the activation form matches this
 * layer's weights and every expert asked for is held here. */
static moe_err check_dispatch(const server *s, const Moemesh__Dispatch *d)
{
	if (s->store == NULL)
		return moe_fail(MOE_ERR_STATE, "DISPATCH before any ASSIGN was loaded");
	const moe_expert_ffn *ffn = &s->ffn[d->layer];
	const moe_type want = moe_type_get(ffn->gate.type)->vec_dot_type;
	if (d->act_type != (uint32_t)want)
		return moe_fail(MOE_ERR_BAD_TYPE, "DISPATCH act_type %s, layer %u's gate takes %s",
		                moe_type_get((moe_type)d->act_type)->name, d->layer,
		                moe_type_get(want)->name);
	for (size_t i = 0; i < d->n_expert_ids; i++) {
		const int32_t e = d->expert_ids[i];
		if (e >= 0 && ffn->gate.expert[e] == NULL)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "DISPATCH expert_ids[%zu] = %d: layer %u expert %d is not "
			                "held by this worker",
			                i, e, d->layer, e);
	}
	return MOE_OK;
}

static moe_err on_dispatch(server *s, conn *c, const moe_frame *f)
{
	const int fd = c->fd;
	Moemesh__Dispatch *d;
	char msg[600];
	moe_err err = moe_proto_read_dispatch(&d, f, &s->lim);
	if (err == MOE_OK && (err = check_dispatch(s, d)) != MOE_OK)
		moemesh__dispatch__free_unpacked(d, NULL);
	if (err != MOE_OK) {
		s->st.bad_frames++;
		snprintf(msg, sizeof msg, "bad DISPATCH: %s: %s", moe_err_name(err),
		         moe_err_detail());
		return data_error(s, fd, c->tx, err, msg, 0);
	}
	delay_us(s->o->net_delay_us);
	if (s->o->fail_dispatch != NULL && s->o->fail_dispatch(s->o->observer_ctx)) {
		err = data_error(s, fd, c->tx, MOE_ERR_IO, "DISPATCH failed (injected)", d->step);
		goto out_free;
	}
	const size_t n = (size_t)d->n_tokens * (size_t)s->hp.n_embd;
	if (n > s->acc_cap) {
		moe_fix_t *a = moe_aligned_alloc(64, n * sizeof *a);
		if (a == NULL) {
			err = data_error(s, fd, c->tx, MOE_ERR_NOMEM, "no memory for the result",
			                 d->step);
			goto out_free;
		}
		moe_aligned_free(s->acc);
		s->acc = a;
		s->acc_cap = n;
	}
	memset(s->acc, 0, n * sizeof *s->acc);
	const uint64_t t0 = moe_now_ns();
	err = moe_expert_ffn_run_q(s->pool, s->acc, &s->ffn[d->layer], f->payload, d->n_tokens,
	                           d->expert_ids, d->weights, (int)d->n_used);
	const uint64_t dt = moe_now_ns() - t0;
	if (err != MOE_OK) {
		snprintf(msg, sizeof msg, "expert FFN failed: %s: %s", moe_err_name(err),
		         moe_err_detail());
		err = data_error(s, fd, c->tx, err, msg, d->step);
		goto out_free;
	}
	s->st.dispatches++;
	s->st.tokens += d->n_tokens;
	for (size_t i = 0; i < d->n_expert_ids; i++)
		s->st.expert_tokens += d->expert_ids[i] >= 0;
	s->st.bytes_in += f->payload_len;
	s->st.bytes_out += n * sizeof *s->acc;
	s->st.compute_ns += dt;
	if (s->o->on_computed != NULL)
		s->o->on_computed(s->o->observer_ctx, s->st.dispatches);
	delay_us(s->o->net_delay_us);
	Moemesh__Result r = MOEMESH__RESULT__INIT;
	r.step = d->step;
	r.layer = d->layer;
	r.n_tokens = d->n_tokens;
	r.n_embd = d->n_embd;
	r.compute_ns = dt;
	const struct iovec iov = {.iov_base = s->acc, .iov_len = n * sizeof *s->acc};
	/* sealed where it lies: the result buffer is cleared before its next use */
	err = moe_stream_send_sealed(fd, c->tx, MOE_MSG_RESULT, &r.base, &iov, 1, true);
out_free:
	moemesh__dispatch__free_unpacked(d, NULL);
	return err;
}

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
	(void)data_error(s, c->fd, NULL, MOE_ERR_AUTH,
	                 "data link: the first frame must be AUTH with the token of an "
	                 "authenticated control link",
	                 0);
	return -1;
}

/* Serves what connection i has; returns false if it was closed. */
static bool on_data(server *s, int i)
{
	conn *c = &s->conns[i];
	char msg[600];
	/* activations of a full batch, with room to spare; never more */
	const size_t max_frame =
	    (size_t)MOE_PROTO_MAX_HEADER + 4096 +
	    (size_t)s->lim.max_tokens * moe_act_row_size(MOE_TYPE_F32, s->hp.n_embd);
	for (;;) {
		bool done;
		moe_frame f;
		if (c->sealed_first) {
			const int r = sealed_token(s, c);
			if (r < 0) {
				close_conn(s, i);
				return false;
			}
			if (r == 0)
				return true;
			continue;
		}
		moe_err err = moe_rx_read(&done, &f, &c->rx, c->fd,
		                          c->authed ? max_frame : PREAUTH_MAX_FRAME, false);
		if (err == MOE_ERR_CLOSED) {
			close_conn(s, i);
			return false;
		}
		if (err != MOE_OK) {
			s->st.bad_frames++;
			snprintf(msg, sizeof msg, "bad data frame: %s: %s", moe_err_name(err),
			         moe_err_detail());
			if (data_error(s, c->fd, c->tx, err, msg, 0) != MOE_OK ||
			    !moe_rx_in_sync(&c->rx)) {
				close_conn(s, i);
				return false;
			}
			continue;
		}
		if (!done)
			return true;
		if (!c->authed) {
			/* without a secret: the token of any authenticated session */
			Moemesh__AuthResponse *a =
			    f.kind == MOE_MSG_AUTH
			        ? moemesh__auth_response__unpack(NULL, f.header_len, f.header)
			        : NULL;
			session *x = NULL;
			for (int k = 0; a != NULL && a->response.len == 32 && k < MAX_SESSIONS; k++)
				if (s->sess[k].pipe != 0 && s->sess[k].authed &&
				    moe_bytes_equal_ct(a->response.data, s->sess[k].token, 32))
					x = &s->sess[k];
			moemesh__auth_response__free_unpacked(a, NULL);
			if (x == NULL) {
				s->st.bad_frames++;
				(void)data_error(s, c->fd, NULL, MOE_ERR_AUTH,
				                 "data link: the first frame must be AUTH with the "
				                 "token of an authenticated control link",
				                 0);
				close_conn(s, i);
				return false;
			}
			c->authed = true;
			x->token_used = true;
			continue;
		}
		if (f.kind != MOE_MSG_DISPATCH) {
			s->st.bad_frames++;
			snprintf(msg, sizeof msg, "unexpected %s frame on the data link",
			         moe_msg_kind_name(f.kind));
			err = data_error(s, c->fd, c->tx, MOE_ERR_PROTO, msg, 0);
		} else {
			err = on_dispatch(s, c, &f);
		}
		if (err != MOE_OK) {
			close_conn(s, i);
			return false;
		}
	}
}

static void on_accept(server *s)
{
	int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (s->n_conns == MAX_CONNS) {
		/* full: the oldest connection without its token yet makes room (a
		 * flood of idle ones cannot keep the coordinator's out) */
		int old = -1;
		for (int i = 0; i < s->n_conns; i++)
			if (!s->conns[i].authed &&
			    (old < 0 || s->conns[i].since < s->conns[old].since))
				old = i;
		if (old < 0) {
			(void)data_error(s, fd, NULL, MOE_ERR_BUSY, "too many data connections", 0);
			close(fd);
			return;
		}
		close_conn(s, old);
	}
	moe_sock_nodelay(fd);
	struct timeval tv = {.tv_sec = 30};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	conn c = {.fd = fd, .since = moe_now_ns()};
	/* with a secret the first frame (the token) is sealed with the data key
	 * of a control session that is waiting for its data connection */
	if (s->secret != NULL) {
		bool waits = false;
		for (int k = 0; k < MAX_SESSIONS; k++)
			waits |=
			    s->sess[k].pipe != 0 && s->sess[k].authed && !s->sess[k].token_used;
		if (!waits) {
			(void)data_error(s, fd, NULL, MOE_ERR_AUTH,
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
	drop_store(s);
	for (int i = 0; i < 2; i++)
		if (s->load_pipe[i] >= 0)
			close(s->load_pipe[i]);
	moe_aligned_free(s->acc);
	free(s->ffn);
	free(s->ptrs);
	moe_pool_destroy(s->pool);
	for (int k = 0; k < MAX_SESSIONS; k++) {
		session_reset(s, &s->sess[k]);
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
	if (s.ffn == NULL || s.ptrs == NULL) {
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
	    (rv = nng_pipe_notify(s.ctl, NNG_PIPE_EV_ADD_POST, pipe_added, &s)) != 0 ||
	    (rv = nng_pipe_notify(s.ctl, NNG_PIPE_EV_REM_POST, pipe_removed, &s)) != 0 ||
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
	wlog(&s, MOE_LOG_INFO, "serving %s on %s (data: %s), %d threads, %s", o->model_path,
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
			wlog(&s, MOE_LOG_INFO, "asked to stop");
			break;
		}
		/* connections first, from the back (closing one moves the last) */
		for (int i = n - 7; i >= 0; i--)
			if (p[6 + i].revents)
				(void)on_data(&s, i);
		if (p[5].revents & POLLIN)
			pipes_changed(&s);
		if (p[3].revents & POLLIN)
			on_loaded(&s);
		if (p[4].revents & POLLIN)
			status_serve(&s);
		if (p[1].revents & POLLIN)
			on_accept(&s);
		if (p[0].revents & POLLIN)
			on_control(&s);
	}
	wlog(&s, MOE_LOG_INFO, "shut down after %llu dispatches",
	     (unsigned long long)s.st.dispatches);
	err = MOE_OK;

out_free:
	server_free(&s);
	return err;
}
