/*
 * session.c - the worker's control sessions, one per coordinator on the
 * polyamorous pair1 socket: each its own HELLO / AUTH handshake, keys, data
 * token and assigned set; ASSIGN (the worker holds the union of its
 * sessions' sets, the loader thread reads what is missing while dispatches
 * go on, the final LOAD_PROGRESS to every session that waited), HEARTBEAT,
 * STATS_REQUEST, SHUTDOWN; and the pipes nng sees come and go.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/server_impl.h"

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
	if (x->pipe == 0) { /* it ended meanwhile (the loader's sends): pipe 0 would be any peer */
		err = moe_fail(MOE_ERR_CLOSED, "the session ended");
		goto out_unlock;
	}
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
void moe_wk_session_reset(server *s, session *x)
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
	moe_wk_log(s, MOE_LOG_WARN, "control: %s", what);
	(void)ctl_send(s, x, MOE_MSG_ERROR, &e.base);
}

/* Whether any coordinator has an authenticated session. */
bool moe_wk_any_authed(const server *s)
{
	for (int k = 0; k < MAX_SESSIONS; k++)
		if (s->sess[k].pipe != 0 && s->sess[k].authed)
			return true;
	return false;
}

/* ---- control ------------------------------------------------------------------ */

static void on_hello(server *s, session *x, const moe_frame *f)
{
	char msg[256];
	Moemesh__Hello *h = moemesh__hello__unpack(NULL, f->header_len, f->header);
	moe_wk_session_reset(s, x);
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
	moe_wk_log(s, MOE_LOG_DEBUG, "HELLO: model identity and protocol match");
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
	ok.mem_bytes = s->o->mem_bytes ? s->o->mem_bytes : moe_wk_mem_available();
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

void moe_wk_drop_store(server *s)
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
			mats[w]->lanes = moe_expert_store_lanes(s->store, l, w);
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
	moe_wk_log(s, MOE_LOG_INFO,
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
void moe_wk_on_loaded(server *s)
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
	if (s->store == NULL) {
		if ((err = moe_expert_store_create(&s->store, s->o->model_path, s->g, s->hp.n_layer,
		                                   s->hp.n_expert)) != MOE_OK)
			goto out_fail;
		/* Q2_K / Q3_K experts in the lanes layouts where the AVX2 kernels
		 * run (the same bits, faster); the other levels would restore
		 * every row for each product */
		const moe_isa isa = moe_isa_active();
		if ((isa == MOE_ISA_AVX2 || isa == MOE_ISA_AVX512) &&
		    (err = moe_expert_store_set_lanes(s->store, true)) != MOE_OK)
			goto out_fail;
	}
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
	moe_wk_log(s, MOE_LOG_DEBUG, "loading %llu bytes", (unsigned long long)s->load_total);
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
	moe_wk_log(s, MOE_LOG_DEBUG, "ASSIGN of %zu layers", a->n_layers);
	pthread_mutex_lock(&s->ctl_lock);
	free(x->set);
	x->set = set;
	x->assign_wait = true;
	pthread_mutex_unlock(&s->ctl_lock);
	assign_run(s);
out_free:
	moemesh__assign__free_unpacked(a, NULL);
}

/* Pipe p's remote address, as the per-address limit counts it (len 0:
 * none, as for ipc://, or p is gone). */
static peer_addr pipe_addr(nng_pipe p)
{
	nng_sockaddr sa;
	if (nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) != 0)
		return (peer_addr){0};
	if (sa.s_family == NNG_AF_INET)
		return moe_wk_peer_addr((const uint8_t *)&sa.s_in.sa_addr, false);
	if (sa.s_family == NNG_AF_INET6)
		return moe_wk_peer_addr(sa.s_in6.sa_addr, true);
	return (peer_addr){0};
}

/* nng's threads: a pipe came or left, queued for the poll loop (which gives
 * a new one a session slot and ends a gone one's session), which the byte on
 * ev_pipe wakes */
static void pipe_event(server *s, nng_pipe p, bool add)
{
	const peer_addr a = add ? pipe_addr(p) : (peer_addr){0};
	pthread_mutex_lock(&s->ev_lock);
	if (s->n_ev < (int)(sizeof s->ev / sizeof s->ev[0])) {
		s->ev[s->n_ev].id = (uint32_t)nng_pipe_id(p);
		s->ev[s->n_ev].add = add;
		s->ev[s->n_ev].t = moe_now_ns();
		s->ev[s->n_ev].addr = a;
		s->n_ev++;
	} else {
		s->ev_lost = true;
	}
	pthread_mutex_unlock(&s->ev_lock);
	(void)!write(s->ev_pipe[1], "p", 1);
}

void moe_wk_pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)ev;
	pipe_event(arg, p, true);
}

void moe_wk_pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)ev;
	pipe_event(arg, p, false);
}

/* Ends session x (its pipe left or was dropped): keys and handshake gone;
 * the slices it named stay held until the next ASSIGN of another session
 * (so a coordinator that comes back adopts them), and a load that answered
 * it alone stops. */
void moe_wk_session_end(server *s, session *x)
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
	moe_wk_session_reset(s, x);
	pthread_mutex_lock(&s->ctl_lock);
	free(x->set);
	x->set = NULL;
	x->pipe = 0;
	x->assign_wait = x->covered = false;
	x->drop_at = 0;
	pthread_mutex_unlock(&s->ctl_lock);
	assign_run(s);
}

/* Closes pipe id, which gets no session: counted as gone, so that a message
 * of it still queued does not ask for a slot again. */
static void pipe_refuse(server *s, uint32_t id)
{
	(void)nng_pipe_close((nng_pipe){.id = id});
	s->gone[s->n_gone++ % (sizeof s->gone / sizeof s->gone[0])] = id;
}

/* A free session slot for pipe id from addr (the oldest unauthenticated one
 * makes room when all are taken), or NULL: the pipe is then closed, as it
 * is at once when its address has its share of peers not yet authenticated
 * (that one takes no slot and makes no room). */
static session *session_new(server *s, uint32_t id, uint64_t since, const peer_addr *addr)
{
	session *x = NULL;
	if (!moe_wk_preauth_admit(s, addr, true)) {
		pipe_refuse(s, id);
		return NULL;
	}
	for (int k = 0; k < MAX_SESSIONS && x == NULL; k++)
		if (s->sess[k].pipe == 0)
			x = &s->sess[k];
	if (x == NULL) {
		for (int k = 0; k < MAX_SESSIONS; k++)
			if (!s->sess[k].authed && (x == NULL || s->sess[k].since < x->since))
				x = &s->sess[k];
		if (x == NULL) {
			moe_wk_log(s, MOE_LOG_WARN,
			           "control: %d coordinators already: a peer refused",
			           MAX_SESSIONS);
			pipe_refuse(s, id);
			return NULL;
		}
		(void)nng_pipe_close((nng_pipe){.id = x->pipe});
		moe_wk_session_end(s, x);
	}
	pthread_mutex_lock(&s->ctl_lock); /* the loader thread reads pipe */
	x->pipe = id;
	pthread_mutex_unlock(&s->ctl_lock);
	x->since = since;
	x->addr = *addr;
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
void moe_wk_pipes_changed(server *s)
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
				(void)session_new(s, ev[i].id, ev[i].t, &ev[i].addr);
			continue;
		}
		s->gone[s->n_gone++ % (sizeof s->gone / sizeof s->gone[0])] = ev[i].id;
		if (x != NULL) {
			moe_wk_log(s, MOE_LOG_DEBUG, "control: a peer left");
			moe_wk_session_end(s, x);
		}
	}
	for (int k = 0; lost && k < MAX_SESSIONS; k++) {
		session *x = &s->sess[k];
		nng_sockaddr sa;
		if (x->pipe != 0 && nng_pipe_get_addr((nng_pipe){.id = x->pipe}, NNG_OPT_REMADDR,
		                                      &sa) == NNG_ENOENT)
			moe_wk_session_end(s, x);
	}
}

void moe_wk_on_control(server *s)
{
	nng_msg *m;
	moe_frame f;
	char msg[600];
	int rv = nng_recvmsg(s->ctl, &m, NNG_FLAG_NONBLOCK);
	if (rv == NNG_EAGAIN)
		return;
	if (rv != 0) {
		moe_wk_log(s, MOE_LOG_INFO, "control receive: %s", nng_strerror(rv));
		return;
	}
	const nng_pipe mp = nng_msg_get_pipe(m);
	moe_wk_pipes_changed(s); /* its pipe's slot, if nng's callback came first */
	const uint32_t id = (uint32_t)nng_pipe_id(mp);
	session *x = session_find(s, id);
	if (x == NULL) {
		const peer_addr a = pipe_addr(mp);
		if (pipe_gone(s, id) || (x = session_new(s, id, moe_now_ns(), &a)) == NULL)
			goto out_free; /* from a peer that left already, or refused */
	}
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
			moe_wk_session_reset(s, x);
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
