/*
 * test_auth.c - the cluster handshake and what a peer can do before it has
 * authenticated, against real `moemesh worker` processes over real sockets:
 * a fake coordinator (a raw nng pair1 socket here) gets a HELLO_REPLY with
 * the worker's nonce and nothing about the node, a wrong AUTH is an ERROR and
 * the connection dropped, the MAC of one nonce pair is refused for another
 * (no relay), and the right one gets AUTH_OK whose MAC proves the worker.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/model.h"
#include "proto/proto.h"
#include "tests/test_util.h"

#define SECRET "auth-test-secret"

static pid_t g_worker;

static void reap_worker(void)
{
	if (g_worker > 0) {
		kill(g_worker, SIGKILL);
		waitpid(g_worker, NULL, 0);
		g_worker = 0;
	}
}

static const char *model_path(void)
{
	static char path[1024];
	snprintf(path, sizeof path, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	return path;
}

static void model_id(uint8_t id[MOE_ID_BYTES])
{
	moe_gguf *g;
	cr_assert_eq(moe_gguf_open(&g, model_path()), MOE_OK);
	cr_assert_eq(moe_model_identity(id, g), MOE_OK);
	moe_gguf_close(g);
}

/* Starts `moemesh worker --listen url --name NAME ... extra` and waits for
 * its --ready-fd byte. */
static void start_worker(const char *url, const char *extra)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen %s --threads 1 --name node-secret-name "
	         "--ready-fd 3 --quiet %s",
	         bin(), model_path(), url, extra);
	g_worker = spawn_ready(cmd, url);
}

/* SIGTERM, then its exit status must be 0 (an ASan report is 1). */
static void stop_worker(void)
{
	int st = 0;
	kill(g_worker, SIGTERM);
	cr_assert_eq(waitpid(g_worker, &st, 0), g_worker);
	g_worker = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the worker ended with status %d", st);
}

static atomic_int g_removed; /* pipes the fake coordinator's socket lost */
static atomic_int g_pipes;   /* and has */

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

/* One socket for a whole test, never closed while it may be dialling again
 * (nng 1.5.2's listener stops accepting when a peer goes away during the SP
 * negotiation, nng#1518): the worker drops it, its dialer dials again. */
static nng_socket fake_coordinator(const char *url)
{
	nng_socket s;
	cr_assert_eq(nng_pair1_open(&s), 0);
	cr_assert_eq(nng_pipe_notify(s, NNG_PIPE_EV_ADD_POST, on_pipe, NULL), 0);
	cr_assert_eq(nng_pipe_notify(s, NNG_PIPE_EV_REM_POST, on_pipe, NULL), 0);
	cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 5000), 0);
	cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 50), 0);
	cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 200), 0);
	cr_assert_eq(nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK), 0);
	return s;
}

/* Sends HELLO with nonce_c once s has a pipe; returns the HELLO_REPLY's
 * header bytes in hdr (*hl of them) and its nonce in nonce_w.  pair1 takes
 * one peer: right after the worker dropped us it may still refuse our next
 * pipe, and a HELLO is lost with it; then (and only then: no answer in 3 s)
 * HELLO goes again, up to 5 times, as the coordinator does (moe_clu_connect). */
static void hello(nng_socket s, const uint8_t id[MOE_ID_BYTES], const uint8_t nonce_c[32],
                  uint8_t nonce_w[32], uint8_t *hdr, size_t *hl)
{
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, (uint8_t *)id};
	h.name = "fake";
	h.challenge = (ProtobufCBinaryData){32, (uint8_t *)nonce_c};
	nng_msg *m;
	moe_frame f;
	for (int tries = 0;; tries++) {
		cr_assert(tries < 5, "no HELLO_REPLY to 5 HELLOs");
		for (int t = 0; atomic_load(&g_pipes) <= 0; t += 10) {
			cr_assert(t < 10000, "no connection to the worker in 10 s");
			sleep_ms(10);
		}
		cr_assert_eq(moe_nng_send(s, MOE_MSG_HELLO, &h.base), MOE_OK);
		moe_err err = moe_nng_recv(&m, &f, s, 3000);
		if (err == MOE_ERR_TIMEOUT)
			continue;
		cr_assert_eq(err, MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(f.kind, MOE_MSG_HELLO_REPLY, "got %s", moe_msg_kind_name(f.kind));
		cr_assert(f.header_len <= 256);
		memcpy(hdr, f.header, f.header_len);
		*hl = f.header_len;
		Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
		cr_assert(r != NULL && r->challenge.len == 32);
		memcpy(nonce_w, r->challenge.data, 32);
		moemesh__hello_reply__free_unpacked(r, NULL);
		nng_msg_free(m);
		return;
	}
}

/* Sends AUTH with mac; returns the kind of the answer (opened with open
 * when not NULL: AUTH_OK is sealed), and with AUTH_OK its decoded message in
 * *ok (caller frees), with ERROR its code in *code. */
static moe_msg_kind auth(nng_socket s, const uint8_t mac[32], Moemesh__AuthOk **ok, uint32_t *code,
                         moe_aead *open)
{
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = (ProtobufCBinaryData){32, (uint8_t *)mac};
	cr_assert_eq(moe_nng_send(s, MOE_MSG_AUTH, &a.base), MOE_OK);
	nng_msg *m;
	moe_frame f;
	cr_assert_eq(moe_nng_recv_sealed(&m, &f, s, open, 10000), MOE_OK, "%s", moe_err_detail());
	const moe_msg_kind k = f.kind;
	if (k == MOE_MSG_AUTH_OK && ok != NULL)
		*ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	if (k == MOE_MSG_ERROR && code != NULL) {
		Moemesh__Error *e = moemesh__error__unpack(NULL, f.header_len, f.header);
		cr_assert(e != NULL);
		*code = e->code;
		moemesh__error__free_unpacked(e, NULL);
	}
	nng_msg_free(m);
	return k;
}

/* Waits up to ms for the socket to have lost a pipe since `before`. */
static bool dropped_within(int before, int ms)
{
	for (int t = 0; t < ms; t += 20) {
		if (atomic_load(&g_removed) > before)
			return true;
		struct timespec ts = {0, 20 * 1000000};
		nanosleep(&ts, NULL);
	}
	return false;
}

static bool has_bytes(const uint8_t *h, size_t n, const char *needle)
{
	const size_t k = strlen(needle);
	for (size_t i = 0; i + k <= n; i++)
		if (memcmp(h + i, needle, k) == 0)
			return true;
	return false;
}

Test(auth, hello_reply_says_nothing_and_a_wrong_auth_is_dropped, .timeout = 60, .fini = reap_worker)
{
	char sock[256], url[300], sec[300], extra[400];
	tmp_path(sock, sizeof sock, "a.sock");
	tmp_path(sec, sizeof sec, "a.secret");
	snprintf(url, sizeof url, "ipc://%s", sock);
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	snprintf(extra, sizeof extra, "--secret-file %s", sec);
	start_worker(url, extra);
	uint8_t id[MOE_ID_BYTES], nc[32], nw[32], hdr[256], mac[32], mac_w[32];
	size_t hl;
	model_id(id);

	/* HELLO_REPLY: a version and a 32-byte nonce, nothing else */
	memset(nc, 0x11, sizeof nc);
	nng_socket s = fake_coordinator(url);
	hello(s, id, nc, nw, hdr, &hl);
	cr_expect_eq(hl, 2 + 2 + 32, "HELLO_REPLY header of %zu bytes", hl);
	cr_expect(!has_bytes(hdr, hl, "node-secret-name"));

	/* a wrong AUTH: ERROR, then the worker drops the connection */
	memset(mac, 0x5a, sizeof mac);
	int before = atomic_load(&g_removed);
	uint32_t code = 0;
	cr_assert_eq(auth(s, mac, NULL, &code, NULL), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH);
	cr_expect(dropped_within(before, 5000), "the worker kept a peer that failed AUTH");

	/* the MAC of the empty key (what a coordinator without the secret
	 * sends) is refused too */
	hello(s, id, nc, nw, hdr, &hl);
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, nc, nw, id), MOE_OK);
	before = atomic_load(&g_removed);
	cr_assert_eq(auth(s, mac, NULL, &code, NULL), MOE_MSG_ERROR);
	cr_expect(dropped_within(before, 5000));

	/* the right one: AUTH_OK whose MAC is the worker's, with the node's facts */
	hello(s, id, nc, nw, hdr, &hl);
	cr_assert_eq(moe_auth_mac(mac, (const uint8_t *)SECRET, strlen(SECRET),
	                          MOE_AUTH_COORDINATOR, nc, nw, id),
	             MOE_OK);
	cr_assert_eq(moe_auth_mac(mac_w, (const uint8_t *)SECRET, strlen(SECRET), MOE_AUTH_WORKER,
	                          nc, nw, id),
	             MOE_OK);
	/* sealed with the key of this handshake (worker to coordinator) */
	moe_session_keys k;
	moe_aead *open;
	cr_assert_eq(moe_session_derive(&k, (const uint8_t *)SECRET, strlen(SECRET), nc, nw, id),
	             MOE_OK);
	cr_assert_eq(moe_aead_create(&open, k.ctl_wc, false), MOE_OK);
	Moemesh__AuthOk *ok = NULL;
	cr_assert_eq(auth(s, mac, &ok, NULL, open), MOE_MSG_AUTH_OK);
	moe_aead_destroy(open);
	cr_assert(ok != NULL);
	cr_expect(ok->mac.len == 32 && memcmp(ok->mac.data, mac_w, 32) == 0);
	cr_expect_str_eq(ok->name, "node-secret-name");
	cr_expect_eq(ok->data_token.len, 32);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	nng_close(s);
	stop_worker();
	unlink(sec);
}

/* Two workers share a secret; a client that talks to both gets no MAC from
 * either before it has authenticated (HELLO_REPLY carries none), and the MAC
 * one worker accepts for one nonce pair is refused for any other: a relay of
 * a coordinator's AUTH to a second HELLO fails. */
Test(auth, the_mac_of_one_nonce_pair_is_refused_for_another, .timeout = 60, .fini = reap_worker)
{
	char sock[256], url[300], sec[300], extra[400];
	tmp_path(sock, sizeof sock, "r.sock");
	tmp_path(sec, sizeof sec, "r.secret");
	snprintf(url, sizeof url, "ipc://%s", sock);
	cr_assert_eq(sh("printf '%%s\\n' '%s' > %s", SECRET, sec), 0);
	snprintf(extra, sizeof extra, "--secret-file %s", sec);
	start_worker(url, extra);
	uint8_t id[MOE_ID_BYTES], nc1[32], nc2[32], nw1[32], nw2[32], hdr[256], mac1[32];
	size_t hl;
	model_id(id);
	memset(nc1, 0x21, sizeof nc1);
	memset(nc2, 0x22, sizeof nc2);
	/* the pair (nc1, nw1) has a valid MAC, as a real coordinator would send */
	nng_socket s = fake_coordinator(url);
	hello(s, id, nc1, nw1, hdr, &hl);
	cr_assert_eq(moe_auth_mac(mac1, (const uint8_t *)SECRET, strlen(SECRET),
	                          MOE_AUTH_COORDINATOR, nc1, nw1, id),
	             MOE_OK);
	/* a new HELLO (the relay's): another nonce_w; mac1 is refused for it */
	hello(s, id, nc2, nw2, hdr, &hl);
	cr_expect(memcmp(nw1, nw2, 32) != 0, "the worker reused its nonce");
	uint32_t code = 0;
	int before = atomic_load(&g_removed);
	cr_assert_eq(auth(s, mac1, NULL, &code, NULL), MOE_MSG_ERROR);
	cr_expect_eq(code, (uint32_t)MOE_ERR_AUTH);
	cr_expect(dropped_within(before, 5000));
	/* the same coordinator nonce again: still another nonce_w, still refused */
	hello(s, id, nc1, nw2, hdr, &hl);
	before = atomic_load(&g_removed);
	cr_assert_eq(auth(s, mac1, NULL, &code, NULL), MOE_MSG_ERROR);
	cr_expect(dropped_within(before, 5000));
	/* the worker role's MAC for the right pair is no coordinator's */
	hello(s, id, nc1, nw1, hdr, &hl);
	cr_assert_eq(moe_auth_mac(mac1, (const uint8_t *)SECRET, strlen(SECRET), MOE_AUTH_WORKER,
	                          nc1, nw1, id),
	             MOE_OK);
	cr_assert_eq(auth(s, mac1, NULL, &code, NULL), MOE_MSG_ERROR);
	nng_close(s);
	stop_worker();
	unlink(sec);
}

/* ---- no open listening without a secret ------------------------------------------- */

/* A worker on every address, or on another host's address, without
 * --secret-file is refused (status 2) naming the address and both remedies,
 * before it listens; with --insecure it serves. */
Test(auth, open_listening_needs_a_secret_or_insecure, .timeout = 60, .fini = reap_worker)
{
	char err[300];
	tmp_path(err, sizeof err, "open.err");
	static const char *const urls[] = {"tcp://0.0.0.0:0", "tcp://*:0", "tcp://[::]:0",
	                                   "tcp://192.0.2.1:7000"};
	for (size_t i = 0; i < sizeof urls / sizeof *urls; i++) {
		const int rc = sh("'%s' worker -m '%s' --listen '%s' --threads 1 2>%s", bin(),
		                  model_path(), urls[i], err);
		cr_expect_eq(rc, 2, "%s: exit status %d", urls[i], rc);
		cr_expect(file_has(err, urls[i]) && file_has(err, "--secret-file") &&
		              file_has(err, "--insecure"),
		          "%s: the refusal does not name the address and both remedies", urls[i]);
	}
	/* --insecure: it listens (on every address) and stops cleanly */
	start_worker("tcp://0.0.0.0:0", "--insecure");
	stop_worker();
	unlink(err);
}

/* A coordinator with a tcp:// worker off loopback and no secret is refused
 * naming the worker and both remedies, before it dials; --insecure or a
 * secret file lets the options through; loopback and ipc:// need neither. */
Test(auth, coordinator_needs_a_secret_or_insecure_for_remote_workers, .timeout = 60)
{
	char err[300];
	tmp_path(err, sizeof err, "coord.err");
	const int rc = sh("'%s' logits -m '%s' --tokens 1,2 -o /dev/null --worker "
	                  "tcp://127.0.0.1:9 --worker tcp://192.0.2.1:7000 2>%s",
	                  bin(), model_path(), err);
	cr_expect_eq(rc, 1);
	cr_expect(file_has(err, "tcp://192.0.2.1:7000") && file_has(err, "--secret-file") &&
	              file_has(err, "--insecure"),
	          "the refusal does not name the worker and both remedies");
	cr_expect(!file_has(err, "no connection"), "it dialled before refusing");
	unlink(err);

	moe_cluster_opts o = {0};
	char *argv[] = {
	    "x",          "--worker",      "tcp://192.0.2.1:7000", "--worker", "ipc:///tmp/w",
	    "--insecure", "--secret-file", "/etc/moemesh/secret"};
	int i = 1;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 8, argv), MOE_OK);
	i = 3;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 8, argv), MOE_OK);
	cr_expect_eq(moe_cluster_check_secure(&o), MOE_ERR_INVAL);
	i = 5;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 8, argv), MOE_OK);
	cr_expect(o.insecure);
	cr_expect_eq(moe_cluster_check_secure(&o), MOE_OK);
	o.insecure = false;
	i = 6;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 8, argv), MOE_OK);
	cr_expect_eq(moe_cluster_check_secure(&o), MOE_OK);
	moe_cluster_opts lo = {0};
	lo.urls[0] = "tcp://[::1]:7000";
	lo.urls[1] = "ipc:///tmp/w";
	lo.urls[2] = "local";
	lo.n_urls = 3;
	cr_expect_eq(moe_cluster_check_secure(&lo), MOE_OK);
}

/* ---- what an unauthenticated peer may send ------------------------------------------ */

/* Before authentication a frame over 64 KiB is refused and the connection
 * dropped: on the data socket as soon as its prefix announces it (nothing
 * more is buffered), on the control socket when it arrives. */
Test(auth, big_frames_before_authentication_are_refused_and_dropped, .timeout = 60,
     .fini = reap_worker)
{
	char sock[256], url[300], data[300];
	tmp_path(sock, sizeof sock, "big.sock");
	snprintf(url, sizeof url, "ipc://%s", sock);
	snprintf(data, sizeof data, "%s.data", sock);
	start_worker(url, "");

	/* data: a DISPATCH prefix announcing 1 MiB of payload (under the
	 * frame caps, over the pre-authentication one), and nothing else */
	int fd;
	cr_assert_eq(moe_sock_connect_unix(&fd, data), MOE_OK, "%s", moe_err_detail());
	uint8_t pre[MOE_PROTO_PREFIX] = {'M',
	                                 'O',
	                                 'E',
	                                 '1',
	                                 MOE_PROTO_VERSION,
	                                 0,
	                                 MOE_MSG_DISPATCH,
	                                 0,
	                                 64,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 16,
	                                 0,
	                                 0,
	                                 0,
	                                 0,
	                                 0};
	cr_assert_eq(write(fd, pre, sizeof pre), (ssize_t)sizeof pre);
	uint8_t buf[4096];
	size_t got = 0;
	bool eof = false;
	for (int t = 0; t < 50 && !eof; t++) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) != 1)
			continue;
		const ssize_t n = read(fd, buf + got, sizeof buf - got);
		if (n <= 0)
			eof = true;
		else
			got += (size_t)n;
	}
	close(fd);
	cr_expect(eof, "the worker kept a data connection that announced a 1 MiB frame");
	moe_frame f;
	cr_expect(got > 0 && moe_frame_parse(&f, buf, got) == MOE_OK && f.kind == MOE_MSG_ERROR,
	          "no ERROR before the close (%zu bytes)", got);

	/* control: a 100 KiB HEARTBEAT before HELLO */
	nng_socket s = fake_coordinator(url);
	const size_t n = moe_frame_size(0, 100 << 10);
	uint8_t *big = calloc(1, n);
	cr_assert(big != NULL);
	cr_assert_eq(moe_frame_write(big, n, MOE_MSG_HEARTBEAT, NULL, 100 << 10), MOE_OK);
	for (int t = 0; atomic_load(&g_pipes) <= 0; t += 10) {
		cr_assert(t < 10000, "no connection to the worker in 10 s");
		sleep_ms(10);
	}
	const int before = atomic_load(&g_removed);
	cr_assert_eq(nng_send(s, big, n, 0), 0);
	free(big);
	nng_msg *m;
	cr_assert_eq(moe_nng_recv(&m, &f, s, 10000), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(f.kind, MOE_MSG_ERROR);
	nng_msg_free(m);
	cr_expect(dropped_within(before, 5000),
	          "the worker kept a peer that sent 100 KiB unauthenticated");
	/* and it still serves: a HELLO gets its answer */
	uint8_t id[MOE_ID_BYTES], nc[32] = {7}, nw[32], hdr[256];
	size_t hl;
	model_id(id);
	hello(s, id, nc, nw, hdr, &hl);
	nng_close(s);
	stop_worker();
}

/* A TCP connection to dst:port from source address src (both loopback:
 * 127.0.0.1 and 127.0.0.2 are two addresses of one host). */
static int dial_from(const char *src, const char *dst, int port)
{
	const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in a = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
	cr_assert_eq(inet_pton(AF_INET, src, &a.sin_addr), 1);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s", src);
	to.sin_port = htons((uint16_t)port);
	cr_assert_eq(inet_pton(AF_INET, dst, &to.sin_addr), 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0, "connect %s:%d from %s",
	             dst, port, src);
	return fd;
}

/* A raw TCP peer from src that speaks the SP header of pair1 (nng's
 * transport handshake: 0 'S' 'P' 0, protocol 0x11, two zero bytes) to the
 * worker at dst:port and then nothing: it never says HELLO, and never dials
 * again once dropped. */
static int idle_control_peer_from(const char *src, const char *dst, int port)
{
	const int fd = dial_from(src, dst, port);
	const uint8_t sp[8] = {0, 'S', 'P', 0, 0, 0x11, 0, 0};
	uint8_t back[8];
	cr_assert_eq(write(fd, sp, sizeof sp), (ssize_t)sizeof sp);
	struct pollfd p = {.fd = fd, .events = POLLIN};
	cr_assert(poll(&p, 1, 10000) == 1 && read(fd, back, sizeof back) == (ssize_t)sizeof back,
	          "no SP header back from the worker");
	cr_assert(back[1] == 'S' && back[2] == 'P' && back[5] == 0x11);
	return fd;
}

static int idle_control_peer(int port)
{
	return idle_control_peer_from("127.0.0.1", "127.0.0.1", port);
}

/* Whether fd reads end-of-file (or a reset) within ms, discarding bytes. */
static bool closed_within(int fd, int ms)
{
	uint8_t b[512];
	for (int t = 0; t < ms; t += 50) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 50) == 1 && read(fd, b, sizeof b) <= 0)
			return true;
	}
	return false;
}

/* `moemesh logits` over the worker at host:port (loopback: no secret
 * needed); its stderr goes to the test's log when it fails. */
static int logits_via(const char *host, int port)
{
	char err[256];
	tmp_path(err, sizeof err, "logits.err");
	const int rc = sh("'%s' logits -m '%s' --tokens 1,2,3 -o /dev/null --worker "
	                  "tcp://%s:%d 2>%s",
	                  bin(), model_path(), host, port, err);
	if (rc != 0)
		(void)sh("cat %s >&2", err);
	unlink(err);
	return rc;
}

static int logits_through(int port)
{
	return logits_via("127.0.0.1", port);
}

/* An idle control peer (pair1 takes one) and data connections that never
 * send their token would lock every coordinator out: past --auth-timeout
 * both are dropped, and a coordinator gets in. */
Test(auth, idle_peers_are_dropped_at_the_deadline, .timeout = 120, .fini = reap_worker)
{
	const int port = free_port(), dport = free_port();
	char url[64], extra[128];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	snprintf(extra, sizeof extra, "--data-port %d --auth-timeout 500", dport);
	start_worker(url, extra);
	const int ctl = idle_control_peer(port);
	int data;
	cr_assert_eq(moe_sock_connect_tcp(&data, "127.0.0.1", (uint16_t)dport, 5000), MOE_OK, "%s",
	             moe_err_detail());
	cr_expect(closed_within(ctl, 10000), "an idle control peer was kept past --auth-timeout");
	cr_expect(closed_within(data, 10000),
	          "a data connection without its token was kept past --auth-timeout");
	close(ctl);
	close(data);
	cr_expect_eq(logits_through(port), 0, "no coordinator got in after the idle peers");
	stop_worker();
}

/* A full data listener (32 connections without their token) makes room by
 * closing the oldest of them, so a flood cannot keep the coordinator's data
 * connection out even before the deadline. */
Test(auth, a_flood_of_data_connections_makes_room, .timeout = 120, .fini = reap_worker)
{
	const int port = free_port(), dport = free_port();
	char url[64], extra[128];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	/* one address: its per-address share raised past the flood */
	snprintf(extra, sizeof extra,
	         "--data-port %d --auth-timeout 600000 --max-preauth-per-ip 64", dport);
	start_worker(url, extra);
	enum { N = 40 };
	int fd[N];
	for (int i = 0; i < N; i++) {
		cr_assert_eq(moe_sock_connect_tcp(&fd[i], "127.0.0.1", (uint16_t)dport, 5000),
		             MOE_OK, "%s", moe_err_detail());
		sleep_ms(5); /* one accept at a time: a known order */
	}
	int closed = 0;
	for (int i = 0; i < N - 32; i++)
		closed += closed_within(fd[i], 5000);
	cr_expect_eq(closed, N - 32, "%d of the %d oldest connections were closed", closed, N - 32);
	cr_expect(!closed_within(fd[N - 1], 300), "the newest connection was closed");
	cr_expect_eq(logits_through(port), 0, "the coordinator's data connection was kept out");
	for (int i = 0; i < N; i++)
		close(fd[i]);
	stop_worker();
}

/* ---- peers not yet authenticated, per address ---------------------------------------- */

/* Of the n sockets fd, how many the worker closed (end-of-file or a reset;
 * bytes before it are dropped): waited for until at least want are (up to
 * 10 s), then 300 ms more for any other. */
static int count_closed(const int *fd, int n, int want)
{
	bool closed[16] = {0};
	uint8_t b[512];
	int got = 0;
	const uint64_t t0 = moe_now_ns();
	uint64_t end = t0 + 10000000000u;
	cr_assert_leq(n, 16);
	while (moe_now_ns() < end) {
		struct pollfd p[16];
		for (int i = 0; i < n; i++)
			p[i] = (struct pollfd){.fd = closed[i] ? -1 : fd[i], .events = POLLIN};
		if (poll(p, (nfds_t)n, 50) > 0)
			for (int i = 0; i < n; i++)
				if (p[i].revents != 0 && read(fd[i], b, sizeof b) <= 0) {
					closed[i] = true;
					got++;
				}
		if (got >= want && end - t0 == 10000000000u)
			end = moe_now_ns() + 300000000u;
	}
	return got;
}

/* A fake coordinator (nng_socket, from whatever address reaches url) that
 * authenticates without a secret, and its data connection from src to
 * data_host, authenticated with the token (an ERROR for a HEARTBEAT on it
 * proves the worker read the token: before it, any frame but AUTH closes
 * the link).  Returns the data connection. */
static int authenticated_coordinator(nng_socket s, const char *src, const char *data_host)
{
	uint8_t id[MOE_ID_BYTES], nc[32], nw[32], hdr[256], mac[32];
	size_t hl;
	model_id(id);
	memset(nc, 0x33, sizeof nc);
	hello(s, id, nc, nw, hdr, &hl);
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, nc, nw, id), MOE_OK);
	Moemesh__AuthOk *ok = NULL;
	cr_assert_eq(auth(s, mac, &ok, NULL, NULL), MOE_MSG_AUTH_OK);
	cr_assert(ok != NULL && ok->data_token.len == 32);
	const int fd = dial_from(src, data_host, (int)ok->data_port);
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	a.response = ok->data_token;
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_AUTH, &a.base, NULL, 0), MOE_OK);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_HEARTBEAT, NULL, NULL, 0), MOE_OK);
	moe_rx rx = {0};
	moe_frame f;
	bool done = false;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	while (!done) {
		cr_assert_eq(poll(&p, 1, 10000), 1, "no answer on the data link in 10 s");
		cr_assert_eq(moe_rx_read(&done, &f, &rx, fd, 1 << 16, false), MOE_OK, "%s",
		             moe_err_detail());
	}
	cr_assert_eq(f.kind, MOE_MSG_ERROR, "got %s", moe_msg_kind_name(f.kind));
	moe_rx_free(&rx);
	cr_assert(!closed_within(fd, 300), "the worker closed an authenticated data link");
	return fd;
}

/* One address holds at most --max-preauth-per-ip control peers and as many
 * data connections that have not authenticated: a new one past that is
 * closed at once, while another address is served: a real coordinator gets
 * in, and an authenticated session and data link do not count against
 * their address's share.  127.0.0.2 is the crowd (its sockets bound to it);
 * the coordinators come from 127.0.0.1 (the kernel's source address on
 * loopback). */
Test(auth, one_address_holds_a_share_of_unauthenticated_peers, .timeout = 120, .fini = reap_worker)
{
	enum { CAP = 2 };
	const int port = free_port(), dport = free_port();
	char url[64], extra[160];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	snprintf(extra, sizeof extra,
	         "--data-port %d --auth-timeout 600000 --max-preauth-per-ip %d", dport, CAP);
	start_worker(url, extra);
	/* from 127.0.0.1, a coordinator with its session and data link */
	nng_socket s = fake_coordinator(url);
	const int authed = authenticated_coordinator(s, "127.0.0.1", "127.0.0.1");

	/* from 127.0.0.2: one control peer and one data connection too many */
	int c2[CAP + 1], d2[CAP + 1];
	for (int i = 0; i <= CAP; i++)
		c2[i] = idle_control_peer_from("127.0.0.2", "127.0.0.1", port);
	cr_expect_eq(count_closed(c2, CAP + 1, 1), 1,
	             "not exactly 1 of %d idle control peers of 127.0.0.2 closed", CAP + 1);
	for (int i = 0; i <= CAP; i++)
		d2[i] = dial_from("127.0.0.2", "127.0.0.1", dport);
	cr_expect_eq(count_closed(d2, CAP + 1, 1), 1,
	             "not exactly 1 of %d data connections of 127.0.0.2 without a token closed",
	             CAP + 1);

	/* a real coordinator from 127.0.0.1 gets in while 127.0.0.2 holds its
	 * share */
	cr_expect_eq(logits_through(port), 0, "a coordinator from another address was kept out");

	/* 127.0.0.1 has its own share: its authenticated session and data link
	 * count for nothing; past the share it is refused too */
	int c1[CAP + 1], d1[CAP + 1];
	for (int i = 0; i <= CAP; i++)
		c1[i] = idle_control_peer_from("127.0.0.1", "127.0.0.1", port);
	cr_expect_eq(count_closed(c1, CAP + 1, 1), 1,
	             "not exactly 1 of %d idle control peers of 127.0.0.1 closed", CAP + 1);
	for (int i = 0; i <= CAP; i++)
		d1[i] = dial_from("127.0.0.1", "127.0.0.1", dport);
	cr_expect_eq(count_closed(d1, CAP + 1, 1), 1,
	             "not exactly 1 of %d data connections of 127.0.0.1 without a token closed",
	             CAP + 1);
	cr_expect(!closed_within(authed, 300), "the authenticated data link was closed");
	cr_expect_eq(atomic_load(&g_removed), 0, "the authenticated session was dropped");
	for (int i = 0; i <= CAP; i++) {
		close(c1[i]);
		close(d1[i]);
		close(c2[i]);
		close(d2[i]);
	}
	close(authed);
	nng_close(s);
	stop_worker();
}
