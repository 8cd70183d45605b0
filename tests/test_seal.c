/*
 * test_seal.c - sealed cluster links (proto/seal.c): known answers of the
 * session keys (HKDF-SHA256) and of sealed frames (AES-256-GCM), computed
 * independently with Python's `cryptography` (the keys also with `openssl
 * kdf`); and against real `moemesh worker` processes over real sockets: a
 * flipped bit in a control frame and in a data frame is an ERROR and the link
 * dropped, a replayed data frame is refused, and a relay between a real
 * coordinator and a worker sees neither activations, results nor node facts
 * on a sealed link (and sees them on a plain one), while the logits stay
 * those of one process.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "proto/proto.h"
#include "tests/test_util.h"

#define SECRET "seal-test-secret"

/* ---- known answers ------------------------------------------------------------------ */

static void unhex(uint8_t *out, const char *h, size_t n)
{
	cr_assert_eq(strlen(h), 2 * n);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		cr_assert_eq(sscanf(h + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* nonce_c = 00..1f, nonce_w = 40..5f, model id = 80..9f, secret "s3cret";
 * the frame: HEARTBEAT, no header, 16 payload bytes a0..af (80 bytes).
 * Expected values from Python (cryptography 48):
 *   HKDF(SHA256(), 32, salt=nc+nw+id, info=label).derive(b"s3cret")
 *   AESGCM(data_wc).encrypt(le64(counter) + 4 zero bytes, frame[24:], frame[:24])
 * and ctl_cw also from `openssl kdf -keylen 32 -kdfopt digest:SHA256
 * -kdfopt key:s3cret -kdfopt hexsalt:... -kdfopt info:... HKDF`. */
Test(seal, session_keys_and_sealed_frames_known_answers)
{
	uint8_t nc[32], nw[32], id[32];
	for (int i = 0; i < 32; i++) {
		nc[i] = (uint8_t)i;
		nw[i] = (uint8_t)(0x40 + i);
		id[i] = (uint8_t)(0x80 + i);
	}
	moe_session_keys k, want;
	unhex(want.ctl_cw, "836331142c173b6409d7523b832013112a60bcaa4c9dec781b5935688f131d05", 32);
	unhex(want.ctl_wc, "093d8972107bab80e6627b04701691712751210ff551458c415d13f76a0eb81d", 32);
	unhex(want.data_cw, "a63fe3c31b03fbd1915d1547b6be04e9bf894a2ccc614cccc340fc062b933bae", 32);
	unhex(want.data_wc, "5c4bd1ef8fb487600812350d89d142d7ec53c869456f331f020414a0fa7bb555", 32);
	cr_assert_eq(moe_session_derive(&k, (const uint8_t *)"s3cret", 6, nc, nw, id), MOE_OK);
	cr_expect(memcmp(k.ctl_cw, want.ctl_cw, 32) == 0, "control c->w key");
	cr_expect(memcmp(k.ctl_wc, want.ctl_wc, 32) == 0, "control w->c key");
	cr_expect(memcmp(k.data_cw, want.data_cw, 32) == 0, "data c->w key");
	cr_expect(memcmp(k.data_wc, want.data_wc, 32) == 0, "data w->c key");
	cr_expect_eq(moe_session_derive(&k, NULL, 0, nc, nw, id), MOE_ERR_INVAL);

	/* two frames sealed in turn: counters 0 and 1 */
	static const char *const sealed_hex[2] = {
	    "e27d2d3973b1053d425e87f08bda5d68b0c19f4857e1e2887f5275929773ecf8caa153d99d13c6c99dbd23"
	    "e8"
	    "8f46a18857e295fc8629493f5e9f1346dc0baf02f3ea0fd8c4a2d2a7",
	    "1435b684e749243b0ae00969e82cc645cef7fd4693483b4ebed328cf2ed18ea8490c2a385bb7bc6b36a383"
	    "eb"
	    "b39a5d4015f9f8bc0fa14351d21fd8c3d0ca88ff27ec27feed6407cb"};
	uint8_t plain[80], fr[2][80 + MOE_SEAL_TAG];
	cr_assert_eq(moe_frame_write(plain, 80, MOE_MSG_HEARTBEAT, NULL, 16), MOE_OK);
	for (int i = 0; i < 16; i++)
		plain[64 + i] = (uint8_t)(0xa0 + i);
	moe_aead *seal, *open;
	cr_assert_eq(moe_aead_create(&seal, k.data_wc, true), MOE_OK);
	for (int n = 0; n < 2; n++) {
		uint8_t want_ct[56 + MOE_SEAL_TAG];
		unhex(want_ct, sealed_hex[n], sizeof want_ct);
		memcpy(fr[n], plain, 80);
		cr_assert_eq(moe_aead_seal_frame(seal, fr[n] + 80, fr[n], 80), MOE_OK);
		cr_expect(memcmp(fr[n], plain, MOE_PROTO_PREFIX) == 0,
		          "the prefix must stay in the clear");
		cr_expect(memcmp(fr[n] + MOE_PROTO_PREFIX, want_ct, sizeof want_ct) == 0,
		          "sealed frame %d (ciphertext and tag) differs from the known answer", n);
	}
	cr_expect_eq(moe_aead_count(seal), 2);
	cr_expect_eq(moe_aead_open_frame(seal, fr[0], 80, fr[0] + 80), MOE_ERR_INVAL);

	/* opened in order: the plain frame again */
	uint8_t b[80 + MOE_SEAL_TAG];
	cr_assert_eq(moe_aead_create(&open, k.data_wc, false), MOE_OK);
	for (int n = 0; n < 2; n++) {
		memcpy(b, fr[n], sizeof b);
		cr_expect_eq(moe_aead_open_frame(open, b, 80, b + 80), MOE_OK, "frame %d: %s", n,
		             moe_err_detail());
		cr_expect(memcmp(b, plain, 80) == 0);
	}
	/* replayed (counter 2 expected, frame 1 again), reordered, tampered */
	memcpy(b, fr[1], sizeof b);
	cr_expect_eq(moe_aead_open_frame(open, b, 80, b + 80), MOE_ERR_AUTH, "a replay opened");
	moe_aead_destroy(open);
	cr_assert_eq(moe_aead_create(&open, k.data_wc, false), MOE_OK);
	memcpy(b, fr[1], sizeof b);
	cr_expect_eq(moe_aead_open_frame(open, b, 80, b + 80), MOE_ERR_AUTH,
	             "frame 1 opened before frame 0");
	static const size_t flips[] = {6, 30, 70, 85}; /* prefix (kind), padding, payload, tag */
	for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
		memcpy(b, fr[0], sizeof b);
		b[flips[i]] ^= 0x10;
		cr_expect_eq(moe_aead_open_frame(open, b, 80, b + 80), MOE_ERR_AUTH,
		             "a flipped bit at byte %zu opened", flips[i]);
	}
	memcpy(b, fr[0], sizeof b);
	cr_expect_eq(moe_aead_open_frame(open, b, 80, b + 80), MOE_OK,
	             "a failed open must not advance the counter");
	/* another direction's key */
	moe_aead *other;
	cr_assert_eq(moe_aead_create(&other, k.data_cw, false), MOE_OK);
	memcpy(b, fr[0], sizeof b);
	cr_expect_eq(moe_aead_open_frame(other, b, 80, b + 80), MOE_ERR_AUTH);
	moe_aead_destroy(other);
	moe_aead_destroy(open);
	moe_aead_destroy(seal);
}

/* ---- a fake coordinator against a real worker ----------------------------------------- */

static pid_t g_worker[2];

static void reap_workers(void)
{
	for (int i = 0; i < 2; i++) {
		if (g_worker[i] > 0) {
			kill(g_worker[i], SIGKILL);
			waitpid(g_worker[i], NULL, 0);
			g_worker[i] = 0;
		}
	}
}

static const char *model_path(void)
{
	static char path[1024];
	snprintf(path, sizeof path, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	return path;
}

/* Starts `moemesh worker --listen url ... extra` as worker slot k and waits
 * for its --ready-fd byte. */
static void start_worker(int k, const char *url, const char *extra)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen %s --threads 1 --name relay-node-name "
	         "--ready-fd 3 --quiet %s",
	         bin(), model_path(), url, extra);
	g_worker[k] = spawn_ready(cmd, url);
}

/* SIGTERM; its exit status must be 0 (an ASan report is 1). */
static void stop_worker(int k)
{
	int st = 0;
	kill(g_worker[k], SIGTERM);
	cr_assert_eq(waitpid(g_worker[k], &st, 0), g_worker[k]);
	g_worker[k] = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker ended with status %d", st);
}

static atomic_int g_removed, g_pipes;

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	(void)arg;
	if (ev == NNG_PIPE_EV_ADD_POST) {
		atomic_fetch_add(&g_pipes, 1);
	} else {
		atomic_fetch_sub(&g_pipes, 1);
		atomic_fetch_add(&g_removed, 1);
	}
}

static bool dropped_within(int before, int ms)
{
	for (int t = 0; t < ms; t += 20) {
		if (atomic_load(&g_removed) > before)
			return true;
		sleep_ms(20);
	}
	return false;
}

/* One authenticated session of a fake coordinator: its control socket, the
 * four directions' keys, and what AUTH_OK announced. */
typedef struct session {
	nng_socket s;
	moe_aead *ctl_tx, *ctl_rx, *data_tx, *data_rx;
	uint8_t token[32];
	char data_path[300];
} session;

/* Dials url (NULL: again on ss's socket, whose dialer dials again by itself
 * once the worker dropped its pipe: nng 1.5.2's listener stops accepting
 * when a peer goes away during the SP negotiation, nng#1518, so a socket is
 * never closed while it may be dialling) and runs HELLO / AUTH with the
 * secret; AUTH_OK must open with the derived worker-to-coordinator control
 * key. */
static void handshake(session *ss, const char *url)
{
	uint8_t id[MOE_ID_BYTES], nc[32], nw[32], mac[32];
	moe_gguf *g;
	cr_assert_eq(moe_gguf_open(&g, model_path()), MOE_OK);
	cr_assert_eq(moe_model_identity(id, g), MOE_OK);
	moe_gguf_close(g);
	cr_assert_eq(moe_random_bytes(nc, 32), MOE_OK);
	if (url != NULL) {
		cr_assert_eq(nng_pair1_open(&ss->s), 0);
		cr_assert_eq(nng_pipe_notify(ss->s, NNG_PIPE_EV_ADD_POST, on_pipe, NULL), 0);
		cr_assert_eq(nng_pipe_notify(ss->s, NNG_PIPE_EV_REM_POST, on_pipe, NULL), 0);
		cr_assert_eq(nng_socket_set_ms(ss->s, NNG_OPT_SENDTIMEO, 5000), 0);
		cr_assert_eq(nng_socket_set_ms(ss->s, NNG_OPT_RECONNMINT, 50), 0);
		cr_assert_eq(nng_socket_set_ms(ss->s, NNG_OPT_RECONNMAXT, 200), 0);
		cr_assert_eq(nng_dial(ss->s, url, NULL, 0), 0);
	}
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, id};
	h.challenge = (ProtobufCBinaryData){32, nc};
	nng_msg *m;
	moe_frame f;
	/* pair1 takes one peer: right after the worker let the last session
	 * go it may still refuse this pipe, HELLO lost with it; then (no
	 * answer in 3 s) HELLO goes again, as the coordinator does */
	for (int tries = 0;; tries++) {
		cr_assert(tries < 5, "no HELLO_REPLY to 5 HELLOs");
		for (int t = 0; atomic_load(&g_pipes) <= 0; t += 10) {
			cr_assert(t < 10000, "no connection to the worker in 10 s");
			nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
		}
		cr_assert_eq(moe_nng_send(ss->s, MOE_MSG_HELLO, &h.base), MOE_OK);
		const moe_err err = moe_nng_recv(&m, &f, ss->s, 3000);
		if (err == MOE_OK)
			break;
		cr_assert_eq(err, MOE_ERR_TIMEOUT, "%s", moe_err_detail());
	}
	cr_assert_eq(f.kind, MOE_MSG_HELLO_REPLY);
	Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	cr_assert(r != NULL && r->challenge.len == 32);
	memcpy(nw, r->challenge.data, 32);
	moemesh__hello_reply__free_unpacked(r, NULL);
	nng_msg_free(m);
	const uint8_t *sec = (const uint8_t *)SECRET;
	cr_assert_eq(moe_auth_mac(mac, sec, strlen(SECRET), MOE_AUTH_COORDINATOR, nc, nw, id),
	             MOE_OK);
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, mac};
	cr_assert_eq(moe_nng_send(ss->s, MOE_MSG_AUTH, &a.base), MOE_OK);
	moe_session_keys k;
	cr_assert_eq(moe_session_derive(&k, sec, strlen(SECRET), nc, nw, id), MOE_OK);
	cr_assert_eq(moe_aead_create(&ss->ctl_tx, k.ctl_cw, true), MOE_OK);
	cr_assert_eq(moe_aead_create(&ss->ctl_rx, k.ctl_wc, false), MOE_OK);
	cr_assert_eq(moe_aead_create(&ss->data_tx, k.data_cw, true), MOE_OK);
	cr_assert_eq(moe_aead_create(&ss->data_rx, k.data_wc, false), MOE_OK);
	cr_assert_eq(moe_nng_recv_sealed(&m, &f, ss->s, ss->ctl_rx, 10000), MOE_OK, "AUTH_OK: %s",
	             moe_err_detail());
	cr_assert_eq(f.kind, MOE_MSG_AUTH_OK);
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	cr_assert(ok != NULL && ok->data_token.len == 32 && ok->data_path != NULL);
	memcpy(ss->token, ok->data_token.data, 32);
	snprintf(ss->data_path, sizeof ss->data_path, "%s", ok->data_path);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	nng_msg_free(m);
}

/* The session's keys go (the socket stays, for handshake(ss, NULL)). */
static void session_keys_end(session *ss)
{
	moe_aead_destroy(ss->ctl_tx);
	moe_aead_destroy(ss->ctl_rx);
	moe_aead_destroy(ss->data_tx);
	moe_aead_destroy(ss->data_rx);
}

static void session_end(session *ss)
{
	nng_close(ss->s);
	session_keys_end(ss);
}

/* The next control frame, opened; its kind, with ERROR its code in *code. */
static moe_msg_kind ctl_next(session *ss, uint32_t *code)
{
	nng_msg *m;
	moe_frame f;
	cr_assert_eq(moe_nng_recv_sealed(&m, &f, ss->s, ss->ctl_rx, 10000), MOE_OK, "%s",
	             moe_err_detail());
	const moe_msg_kind k = f.kind;
	if (k == MOE_MSG_ERROR && code != NULL) {
		Moemesh__Error *e = moemesh__error__unpack(NULL, f.header_len, f.header);
		cr_assert(e != NULL);
		*code = e->code;
		moemesh__error__free_unpacked(e, NULL);
	}
	nng_msg_free(m);
	return k;
}

/* A sealed HEARTBEAT as raw bytes (frame and tag) in an nng message, with
 * one bit flipped at byte flip (none if flip < 0). */
static void send_heartbeat(session *ss, long flip)
{
	Moemesh__Heartbeat hb = MOEMESH__HEARTBEAT__INIT;
	hb.seq = 42;
	const size_t n = moe_frame_size(moemesh__heartbeat__get_packed_size(&hb), 0);
	uint8_t buf[256];
	cr_assert(n + MOE_SEAL_TAG <= sizeof buf);
	cr_assert_eq(moe_frame_write(buf, n, MOE_MSG_HEARTBEAT, &hb.base, 0), MOE_OK);
	cr_assert_eq(moe_aead_seal_frame(ss->ctl_tx, buf + n, buf, n), MOE_OK);
	if (flip >= 0)
		buf[flip] ^= 0x01;
	cr_assert_eq(nng_send(ss->s, buf, n + MOE_SEAL_TAG, 0), 0);
}

Test(seal, a_flipped_bit_in_a_control_frame_drops_the_link, .timeout = 60, .fini = reap_workers)
{
	char sock[256], url[300], sec[300], extra[400];
	tmp_path(sock, sizeof sock, "c.sock");
	tmp_path(sec, sizeof sec, "c.secret");
	snprintf(url, sizeof url, "ipc://%s", sock);
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	snprintf(extra, sizeof extra, "--secret-file %s", sec);
	start_worker(0, url, extra);
	session ss;
	handshake(&ss, url);
	/* a sealed HEARTBEAT is echoed, sealed */
	send_heartbeat(&ss, -1);
	cr_assert_eq(ctl_next(&ss, NULL), MOE_MSG_HEARTBEAT);
	/* the next with one bit flipped in its header: ERROR (auth), dropped */
	const int before = atomic_load(&g_removed);
	send_heartbeat(&ss, MOE_PROTO_PREFIX + 1);
	uint32_t code = 0;
	cr_assert_eq(ctl_next(&ss, &code), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH, "ERROR code %u", code);
	cr_expect(dropped_within(before, 5000), "the worker kept a link whose frame was tampered");
	session_keys_end(&ss);

	/* a new session: a frame sent in the clear after AUTH_OK is refused too */
	handshake(&ss, NULL);
	const int before2 = atomic_load(&g_removed);
	Moemesh__Heartbeat hb = MOEMESH__HEARTBEAT__INIT;
	cr_assert_eq(moe_nng_send(ss.s, MOE_MSG_HEARTBEAT, &hb.base), MOE_OK);
	cr_assert_eq(ctl_next(&ss, &code), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH);
	cr_expect(dropped_within(before2, 5000), "the worker kept a link that sent in the clear");
	session_end(&ss);
	stop_worker(0);
	unlink(sec);
}

/* A peer of protocol 2 (frames of version 2, or a HELLO saying 2) gets the
 * version error naming both versions, and the worker goes on serving. */
Test(seal, a_protocol_2_peer_gets_the_version_error, .timeout = 60, .fini = reap_workers)
{
	char sock[256], url[300];
	tmp_path(sock, sizeof sock, "v.sock");
	snprintf(url, sizeof url, "ipc://%s", sock);
	start_worker(0, url, "");
	uint8_t id[MOE_ID_BYTES] = {0}, nc[32] = {9};
	nng_socket s;
	cr_assert_eq(nng_pair1_open(&s), 0);
	cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = 2;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, id};
	h.challenge = (ProtobufCBinaryData){32, nc};
	for (int k = 0; k < 2; k++) {
		/* k 0: the whole frame of version 2; k 1: a v3 frame, HELLO says 2 */
		uint8_t fr[256];
		const size_t n = moe_frame_size(protobuf_c_message_get_packed_size(&h.base), 0);
		cr_assert(n <= sizeof fr);
		cr_assert_eq(moe_frame_write(fr, n, MOE_MSG_HELLO, &h.base, 0), MOE_OK);
		if (k == 0)
			fr[4] = 2;
		cr_assert_eq(nng_send(s, fr, n, 0), 0);
		nng_msg *m;
		moe_frame f;
		cr_assert_eq(moe_nng_recv(&m, &f, s, 10000), MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(f.kind, MOE_MSG_ERROR);
		Moemesh__Error *e = moemesh__error__unpack(NULL, f.header_len, f.header);
		cr_assert(e != NULL && e->message != NULL);
		cr_expect_eq(e->code, (uint32_t)MOE_ERR_BAD_VERSION, "case %d: code %u", k,
		             e->code);
		cr_expect(strstr(e->message, "2") && strstr(e->message, "3"),
		          "case %d: '%s' does not name both versions", k, e->message);
		moemesh__error__free_unpacked(e, NULL);
		nng_msg_free(m);
	}
	nng_close(s);
	stop_worker(0);
}

/* The data link of session ss: connected, its sealed token sent; rx opens
 * what comes back (it takes the session's data opener). */
static int data_open(session *ss, moe_rx *rx)
{
	int fd;
	cr_assert_eq(moe_sock_connect_unix(&fd, ss->data_path), MOE_OK, "%s", moe_err_detail());
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, ss->token};
	cr_assert_eq(moe_stream_send_sealed(fd, ss->data_tx, MOE_MSG_AUTH, &a.base, NULL, 0, false),
	             MOE_OK);
	*rx = (moe_rx){.open = ss->data_rx};
	ss->data_rx = NULL;
	return fd;
}

/* The next data frame (opened); its kind with ERROR's code in *code, or 0
 * when the worker closed the link. */
static moe_msg_kind data_next(int fd, moe_rx *rx, uint32_t *code)
{
	bool done;
	moe_frame f;
	moe_err err = moe_rx_read(&done, &f, rx, fd, (size_t)1 << 24, true);
	if (err == MOE_ERR_CLOSED)
		return 0;
	cr_assert_eq(err, MOE_OK, "data receive: %s", moe_err_detail());
	cr_assert(done);
	if (f.kind == MOE_MSG_ERROR && code != NULL) {
		Moemesh__Error *e = moemesh__error__unpack(NULL, f.header_len, f.header);
		cr_assert(e != NULL);
		*code = e->code;
		moemesh__error__free_unpacked(e, NULL);
	}
	return f.kind;
}

/* A sealed DISPATCH (an empty header: the worker refuses its content, not
 * its seal) with a 256-byte payload, as raw bytes in buf; returns its
 * length with the tag. */
static size_t sealed_dispatch(session *ss, uint8_t *buf, size_t cap)
{
	const size_t n = moe_frame_size(0, 256);
	cr_assert(n + MOE_SEAL_TAG <= cap);
	cr_assert_eq(moe_frame_write(buf, n, MOE_MSG_DISPATCH, NULL, 256), MOE_OK);
	for (int i = 0; i < 256; i++)
		buf[moe_frame_payload_offset(0) + (size_t)i] = (uint8_t)i;
	cr_assert_eq(moe_aead_seal_frame(ss->data_tx, buf + n, buf, n), MOE_OK);
	return n + MOE_SEAL_TAG;
}

static void start_sealed_worker(char *url, size_t n, char *sec, size_t sn, const char *tag)
{
	char sock[256], name[64], extra[400];
	snprintf(name, sizeof name, "%s.sock", tag);
	tmp_path(sock, sizeof sock, name);
	snprintf(name, sizeof name, "%s.secret", tag);
	tmp_path(sec, sn, name);
	snprintf(url, n, "ipc://%s", sock);
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	snprintf(extra, sizeof extra, "--secret-file %s", sec);
	start_worker(0, url, extra);
}

/* The same sealed frame twice: the first is authentic (its content is
 * refused, the link goes on), the second is a replay: ERROR, closed. */
Test(seal, a_replayed_data_frame_is_refused, .timeout = 60, .fini = reap_workers)
{
	char url[300], sec[300];
	start_sealed_worker(url, sizeof url, sec, sizeof sec, "replay");
	session ss;
	handshake(&ss, url);
	moe_rx rx;
	const int fd = data_open(&ss, &rx);
	uint8_t buf[1024];
	const size_t n = sealed_dispatch(&ss, buf, sizeof buf);
	uint32_t code = 0;
	cr_assert_eq(write(fd, buf, n), (ssize_t)n);
	cr_assert_eq(data_next(fd, &rx, &code), MOE_MSG_ERROR);
	cr_assert_neq(code, (uint32_t)MOE_ERR_AUTH, "an authentic frame failed its seal");
	cr_assert_eq(write(fd, buf, n), (ssize_t)n);
	cr_assert_eq(data_next(fd, &rx, &code), MOE_MSG_ERROR, "a replayed frame was not refused");
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH, "ERROR code %u", code);
	cr_expect_eq(data_next(fd, &rx, NULL), 0, "the data link stayed open after a replay");
	close(fd);
	moe_rx_free(&rx);
	/* the token was for one connection: a second one is refused */
	int fd2;
	cr_assert_eq(moe_sock_connect_unix(&fd2, ss.data_path), MOE_OK);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd2, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	moe_rx plain = {0};
	cr_expect_eq(data_next(fd2, &plain, &code), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH);
	close(fd2);
	moe_rx_free(&plain);
	session_end(&ss);
	stop_worker(0);
	unlink(sec);
}

/* A bit flipped in a DISPATCH's payload (the activations): ERROR, closed. */
Test(seal, a_flipped_bit_in_a_data_frame_drops_the_link, .timeout = 60, .fini = reap_workers)
{
	char url[300], sec[300];
	start_sealed_worker(url, sizeof url, sec, sizeof sec, "flip");
	session ss;
	handshake(&ss, url);
	moe_rx rx;
	const int fd = data_open(&ss, &rx);
	uint8_t buf[1024];
	const size_t n = sealed_dispatch(&ss, buf, sizeof buf);
	buf[moe_frame_payload_offset(0) + 100] ^= 0x04;
	cr_assert_eq(write(fd, buf, n), (ssize_t)n);
	uint32_t code = 0;
	cr_assert_eq(data_next(fd, &rx, &code), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH, "ERROR code %u", code);
	cr_expect_eq(data_next(fd, &rx, NULL), 0, "the data link stayed open after a bad tag");
	close(fd);
	moe_rx_free(&rx);
	session_end(&ss);
	stop_worker(0);
	unlink(sec);
}

/* ---- what a relay in the middle sees ------------------------------------------------ */

#define RELAY_PAIRS 16

/* A TCP relay on 127.0.0.3 (two ports: the worker's control and data
 * ports) to the same ports on 127.0.0.2, recording every byte:
 * cap[port][0] towards the worker, cap[port][1] from it. */
typedef struct relay {
	int lfd[2];
	uint16_t port[2];
	int stop[2];
	pthread_t th;
	pthread_mutex_t mu;
	uint8_t *cap[2][2];
	size_t len[2][2], size[2][2];
	int pair[RELAY_PAIRS][3]; /* client fd, worker fd, which port; fd -1: free */
	long flip[2][2];          /* a stream offset whose byte is changed in passing, or -1 */
} relay;

static void relay_keep(relay *r, int which, int dir, const uint8_t *b, size_t n)
{
	pthread_mutex_lock(&r->mu);
	if (r->len[which][dir] + n > r->size[which][dir]) {
		size_t sz = r->size[which][dir] ? r->size[which][dir] : 65536;
		while (sz < r->len[which][dir] + n)
			sz *= 2;
		r->cap[which][dir] = realloc(r->cap[which][dir], sz);
		r->size[which][dir] = sz;
	}
	if (r->cap[which][dir] != NULL) {
		memcpy(r->cap[which][dir] + r->len[which][dir], b, n);
		r->len[which][dir] += n;
	}
	pthread_mutex_unlock(&r->mu);
}

static bool write_all(int fd, const uint8_t *b, size_t n)
{
	while (n > 0) {
		const ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		b += w;
		n -= (size_t)w;
	}
	return true;
}

static void *relay_main(void *arg)
{
	relay *r = arg;
	static uint8_t buf[1 << 16];
	for (;;) {
		struct pollfd p[3 + 2 * RELAY_PAIRS];
		int who[3 + 2 * RELAY_PAIRS][2], n = 0;
		p[n++] = (struct pollfd){.fd = r->stop[0], .events = POLLIN};
		for (int i = 0; i < 2; i++)
			p[n++] = (struct pollfd){.fd = r->lfd[i], .events = POLLIN};
		for (int k = 0; k < RELAY_PAIRS; k++) {
			if (r->pair[k][0] < 0)
				continue;
			for (int d = 0; d < 2; d++) {
				who[n][0] = k;
				who[n][1] = d;
				p[n++] = (struct pollfd){.fd = r->pair[k][d], .events = POLLIN};
			}
		}
		if (poll(p, (nfds_t)n, -1) < 0)
			continue;
		if (p[0].revents)
			return NULL;
		for (int i = 0; i < 2; i++) {
			if (!(p[1 + i].revents & POLLIN))
				continue;
			const int c = accept(r->lfd[i], NULL, NULL);
			if (c < 0)
				continue;
			const int w = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in a = {.sin_family = AF_INET,
			                        .sin_port = htons(r->port[i])};
			inet_pton(AF_INET, "127.0.0.2", &a.sin_addr);
			int k = 0;
			while (k < RELAY_PAIRS && r->pair[k][0] >= 0)
				k++;
			if (w < 0 || k == RELAY_PAIRS ||
			    connect(w, (struct sockaddr *)&a, sizeof a) != 0) {
				close(c);
				if (w >= 0)
					close(w);
				continue;
			}
			r->pair[k][0] = c;
			r->pair[k][1] = w;
			r->pair[k][2] = i;
		}
		for (int j = 3; j < n; j++) {
			if (!p[j].revents)
				continue;
			const int k = who[j][0], d = who[j][1];
			if (r->pair[k][0] < 0)
				continue;
			const ssize_t got = recv(r->pair[k][d], buf, sizeof buf, 0);
			const int which = r->pair[k][2];
			pthread_mutex_lock(&r->mu);
			const long at = r->flip[which][d] - (long)r->len[which][d];
			pthread_mutex_unlock(&r->mu);
			if (got > 0 && at >= 0 && at < got)
				buf[at] ^= 0x01; /* a man in the middle */
			if (got > 0)
				relay_keep(r, which, d, buf, (size_t)got);
			if (got <= 0 || !write_all(r->pair[k][1 - d], buf, (size_t)got)) {
				close(r->pair[k][0]);
				close(r->pair[k][1]);
				r->pair[k][0] = r->pair[k][1] = -1;
			}
		}
	}
}

static void relay_start(relay *r)
{
	memset(r, 0, sizeof *r);
	for (int k = 0; k < RELAY_PAIRS; k++)
		r->pair[k][0] = r->pair[k][1] = -1;
	for (int i = 0; i < 2; i++)
		r->flip[i][0] = r->flip[i][1] = -1;
	pthread_mutex_init(&r->mu, NULL);
	for (int i = 0; i < 2; i++) {
		r->lfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_geq(r->lfd[i], 0);
		struct sockaddr_in a = {.sin_family = AF_INET};
		inet_pton(AF_INET, "127.0.0.3", &a.sin_addr);
		socklen_t len = sizeof a;
		cr_assert_eq(bind(r->lfd[i], (struct sockaddr *)&a, sizeof a), 0, "bind 127.0.0.3");
		cr_assert_eq(listen(r->lfd[i], 16), 0);
		cr_assert_eq(getsockname(r->lfd[i], (struct sockaddr *)&a, &len), 0);
		r->port[i] = ntohs(a.sin_port);
	}
	cr_assert_eq(pipe(r->stop), 0);
	cr_assert_eq(pthread_create(&r->th, NULL, relay_main, r), 0);
}

static void relay_stop(relay *r)
{
	cr_assert_eq(write(r->stop[1], "x", 1), 1);
	pthread_join(r->th, NULL);
	for (int k = 0; k < RELAY_PAIRS; k++)
		if (r->pair[k][0] >= 0) {
			close(r->pair[k][0]);
			close(r->pair[k][1]);
		}
	for (int i = 0; i < 2; i++) {
		close(r->lfd[i]);
		close(r->stop[i]);
		for (int d = 0; d < 2; d++)
			free(r->cap[i][d]);
	}
	pthread_mutex_destroy(&r->mu);
}

/* Forgets what was captured. */
static void relay_clear(relay *r)
{
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < 2; i++)
		for (int d = 0; d < 2; d++)
			r->len[i][d] = 0;
	pthread_mutex_unlock(&r->mu);
}

/* A copy of one capture (caller frees). */
static uint8_t *relay_copy(relay *r, int which, int dir, size_t *len)
{
	pthread_mutex_lock(&r->mu);
	*len = r->len[which][dir];
	uint8_t *b = malloc(*len + 1);
	cr_assert(b != NULL);
	if (*len)
		memcpy(b, r->cap[which][dir], *len);
	pthread_mutex_unlock(&r->mu);
	return b;
}

#define MAX_CHUNKS 256

/* 32-byte pieces (not all one byte value) of the payloads of the frames of
 * kind `kind` in a plain stream capture. */
static int payload_chunks(uint8_t (*out)[32], const uint8_t *cap, size_t len, moe_msg_kind kind)
{
	int n = 0;
	size_t at = 0;
	while (at + MOE_PROTO_PREFIX <= len && n < MAX_CHUNKS) {
		size_t flen;
		cr_assert_eq(moe_frame_length(&flen, cap + at), MOE_OK,
		             "the plain capture does not parse at %zu", at);
		if (at + flen > len)
			break;
		moe_frame f;
		cr_assert_eq(moe_frame_parse(&f, cap + at, flen), MOE_OK);
		for (size_t o = 0; f.kind == kind && o + 32 <= f.payload_len && n < MAX_CHUNKS;
		     o += 32) {
			const uint8_t *c = f.payload + o;
			bool flat = true;
			for (int i = 1; i < 32; i++)
				flat &= c[i] == c[0];
			if (!flat)
				memcpy(out[n++], c, 32);
		}
		at += flen;
	}
	return n;
}

static int chunks_found(uint8_t (*ch)[32], int n, const uint8_t *cap, size_t len)
{
	int found = 0;
	for (int i = 0; i < n; i++)
		found += memmem(cap, len, ch[i], 32) != NULL;
	return found;
}

/* A real coordinator and worker talk through a relay: with no secret the
 * relay sees the activations (DISPATCH payloads), the partial sums (RESULT
 * payloads) and the node's name, the same in two runs; with a secret it sees
 * none of them, and the logits are still those of one process. */
Test(seal, a_relay_sees_no_activation_on_a_sealed_link, .timeout = 120, .fini = reap_workers)
{
	char sec[300], out[3][300], ref[300], url[64], wurl[64], extra[400];
	tmp_path(sec, sizeof sec, "relay.secret");
	tmp_path(ref, sizeof ref, "relay-ref.f32");
	for (int i = 0; i < 3; i++) {
		char name[32];
		snprintf(name, sizeof name, "relay-%d.f32", i);
		tmp_path(out[i], sizeof out[i], name);
	}
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	const char *toks = "5,6,7,8,9,10,11,12";
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s", bin(), model_path(), toks, ref),
	             0);

	uint8_t *cap[3][2][2];
	size_t len[3][2][2];
	for (int run = 0; run < 3; run++) {
		const bool sealed = run == 2;
		relay r;
		relay_start(&r);
		snprintf(url, sizeof url, "tcp://127.0.0.3:%u", (unsigned)r.port[0]);
		snprintf(wurl, sizeof wurl, "tcp://127.0.0.2:%u", (unsigned)r.port[0]);
		snprintf(extra, sizeof extra, "--data-port %u %s%s", (unsigned)r.port[1],
		         sealed ? "--secret-file " : "", sealed ? sec : "");
		start_worker(0, wurl, extra);
		relay_clear(&r);
		const int rc = sh("'%s' logits -m '%s' --tokens %s -o %s --worker %s %s%s", bin(),
		                  model_path(), toks, out[run], url, sealed ? "--secret-file " : "",
		                  sealed ? sec : "");
		stop_worker(0);
		sleep_ms(100);
		for (int i = 0; i < 2; i++)
			for (int d = 0; d < 2; d++)
				cap[run][i][d] = relay_copy(&r, i, d, &len[run][i][d]);
		relay_stop(&r);
		cr_assert_eq(rc, 0, "run %d: logits through the relay failed", run);
		cr_assert(same_file(ref, out[run]), "run %d: logits differ from one process", run);
		cr_assert(len[run][1][0] > 1000 && len[run][1][1] > 1000,
		          "run %d: the relay saw %zu / %zu data bytes", run, len[run][1][0],
		          len[run][1][1]);
	}
	static uint8_t act[MAX_CHUNKS][32], res[MAX_CHUNKS][32];
	const int na = payload_chunks(act, cap[0][1][0], len[0][1][0], MOE_MSG_DISPATCH);
	const int nr = payload_chunks(res, cap[0][1][1], len[0][1][1], MOE_MSG_RESULT);
	cr_assert_geq(na, 16, "%d activation pieces in the plain capture", na);
	cr_assert_geq(nr, 16, "%d result pieces in the plain capture", nr);
	/* the same bytes cross in every plain run: what the check looks for is
	 * there to be seen */
	cr_assert_eq(chunks_found(act, na, cap[1][1][0], len[1][1][0]), na);
	cr_assert_eq(chunks_found(res, nr, cap[1][1][1], len[1][1][1]), nr);
	cr_assert(memmem(cap[1][0][1], len[1][0][1], "relay-node-name", 15) != NULL,
	          "the plain control link does not carry the node's name");
	/* sealed: none of it */
	const int sa = chunks_found(act, na, cap[2][1][0], len[2][1][0]);
	const int sr = chunks_found(res, nr, cap[2][1][1], len[2][1][1]);
	cr_expect_eq(sa, 0, "%d of %d activation pieces seen on the sealed link", sa, na);
	cr_expect_eq(sr, 0, "%d of %d result pieces seen on the sealed link", sr, nr);
	cr_expect(memmem(cap[2][0][1], len[2][0][1], "relay-node-name", 15) == NULL,
	          "the sealed control link carries the node's name in the clear");
	for (int run = 0; run < 3; run++) {
		unlink(out[run]);
		for (int i = 0; i < 2; i++)
			for (int d = 0; d < 2; d++)
				free(cap[run][i][d]);
	}
	unlink(ref);
	unlink(sec);
}

/* A relay that changes one bit of the first RESULT on its way to a real
 * coordinator: the coordinator refuses it (the tag) and drops the worker,
 * and the run fails instead of producing other logits. */
Test(seal, the_coordinator_refuses_a_tampered_result, .timeout = 120, .fini = reap_workers)
{
	char sec[300], out[300], err[300], url[64], wurl[64], extra[400];
	tmp_path(sec, sizeof sec, "mitm.secret");
	tmp_path(out, sizeof out, "mitm.f32");
	tmp_path(err, sizeof err, "mitm.err");
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	relay r;
	relay_start(&r);
	snprintf(url, sizeof url, "tcp://127.0.0.3:%u", (unsigned)r.port[0]);
	snprintf(wurl, sizeof wurl, "tcp://127.0.0.2:%u", (unsigned)r.port[0]);
	snprintf(extra, sizeof extra, "--data-port %u --secret-file %s", (unsigned)r.port[1], sec);
	start_worker(0, wurl, extra);
	pthread_mutex_lock(&r.mu);
	r.flip[1][1] = 300; /* inside the first RESULT's payload */
	pthread_mutex_unlock(&r.mu);
	const int rc = sh("'%s' logits -m '%s' --tokens 5,6,7 -o %s --worker %s --secret-file %s "
	                  "2>%s",
	                  bin(), model_path(), out, url, sec, err);
	stop_worker(0);
	relay_stop(&r);
	cr_expect_eq(rc, 1, "the coordinator took a tampered RESULT (exit status %d)", rc);
	cr_expect(file_has(err, "authentication tag"), "the refusal does not say why");
	unlink(out);
	unlink(err);
	unlink(sec);
}
