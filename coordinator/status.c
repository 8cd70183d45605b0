/*
 * status.c - what `moemesh status` asks of each worker: STATUS_REQUEST
 * datagrams (proto.h) on the worker's status socket, a few of them, each
 * with a fresh challenge; the fastest answer gives the round trip and the
 * clock offset, any answer the worker's state.  It never opens the worker's
 * control link, so a worker that serves a coordinator answers too.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

const char *moe_node_state_name(moe_node_state s)
{
	switch (s) {
	case MOE_NODE_UP:
		return "up";
	case MOE_NODE_UNREACHABLE:
		return "unreachable";
	case MOE_NODE_AUTH_FAILED:
		return "auth-failed";
	case MOE_NODE_MODEL_MISMATCH:
		return "model-mismatch";
	case MOE_NODE_ERROR:
		return "error";
	}
	return "?";
}

static uint64_t unix_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fill(moe_node_status *o, const Moemesh__WorkerStatus *b)
{
	snprintf(o->name, sizeof o->name, "%s", b->name);
	memcpy(o->model_id, b->model_id.data, MOE_ID_BYTES);
	snprintf(o->isa, sizeof o->isa, "%s", b->isa);
	o->threads = b->threads;
	o->mem_total = b->mem_total;
	o->mem_available = b->mem_available;
	o->mem_offered = b->mem_offered;
	o->bytes_loaded = b->bytes_loaded;
	o->experts_held = b->experts_held;
	o->n_layers = (int)b->n_layer_experts;
	o->layers_held = 0;
	for (size_t i = 0; i < b->n_layer_experts; i++)
		o->layers_held += b->layer_experts[i] > 0;
	o->dispatches = b->dispatches;
	o->compute_ns = b->compute_ns;
	o->uptime_ns = b->uptime_ns;
	o->coordinator = b->coordinator;
	o->loading = b->loading;
	o->load_done = b->load_done;
	o->load_total = b->load_total;
	o->bad_frames = b->bad_frames;
	o->bytes_loaded_total = b->bytes_loaded_total;
	o->coordinators = b->coordinators;
	o->dispatches_merged = b->dispatches_merged;
}

/* One request and its answer within timeout_ms.  MOE_OK with *b set; or
 * MOE_ERR_TIMEOUT, MOE_ERR_CLOSED (refused: nothing listens), MOE_ERR_AUTH,
 * the worker's ERROR, a validation error. */
static moe_err ping(Moemesh__WorkerStatus **b, uint64_t *t_send, uint64_t *t_recv, int fd,
                    const uint8_t *secret, size_t secret_len, int timeout_ms)
{
	uint8_t chal[32], mac[32], req[MOE_STATUS_MIN_REQUEST], buf[65536];
	moe_err err;
	if ((err = moe_random_bytes(chal, sizeof chal)) != MOE_OK)
		return err;
	Moemesh__StatusRequest r = MOEMESH__STATUS_REQUEST__INIT;
	r.protocol_version = MOE_PROTO_VERSION;
	r.challenge = (ProtobufCBinaryData){32, chal};
	if (secret_len > 0) {
		if ((err = moe_status_mac(mac, secret, secret_len, "moemesh status request", chal,
		                          32)) != MOE_OK)
			return err;
		r.mac = (ProtobufCBinaryData){32, mac};
	}
	/* zero payload pads the request to the size the worker wants */
	const size_t hl = moemesh__status_request__get_packed_size(&r);
	const size_t off = moe_frame_payload_offset(hl);
	const size_t pad = off < sizeof req ? sizeof req - off : 0;
	const size_t n = moe_frame_size(hl, pad);
	if (n != sizeof req && n > sizeof req)
		return moe_fail(MOE_ERR_INVAL, "status request of %zu bytes", n);
	memset(req, 0, sizeof req);
	if ((err = moe_frame_write(req, n, MOE_MSG_STATUS_REQUEST, &r.base, pad)) != MOE_OK)
		return err;
	*t_send = unix_ns();
	const uint64_t t0 = moe_now_ns();
	if (send(fd, req, n, 0) != (ssize_t)n)
		return moe_fail(errno == ECONNREFUSED ? MOE_ERR_CLOSED : MOE_ERR_IO,
		                "sending a status request: %s", strerror(errno));
	for (;;) {
		const uint64_t spent = (moe_now_ns() - t0) / 1000000u;
		if (spent >= (uint64_t)timeout_ms)
			return moe_fail(MOE_ERR_TIMEOUT, "no answer within %d ms", timeout_ms);
		struct pollfd p = {.fd = fd, .events = POLLIN};
		const int rv = poll(&p, 1, timeout_ms - (int)spent);
		if (rv < 0 && errno == EINTR)
			continue;
		if (rv <= 0)
			continue;
		const ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return moe_fail(errno == ECONNREFUSED ? MOE_ERR_CLOSED : MOE_ERR_IO,
			                "status socket: %s (no worker there?)", strerror(errno));
		}
		*t_recv = unix_ns();
		moe_frame f;
		if ((err = moe_frame_parse(&f, buf, (size_t)got)) != MOE_OK)
			return err;
		if (f.kind == MOE_MSG_ERROR) {
			Moemesh__Error *e = moemesh__error__unpack(NULL, f.header_len, f.header);
			const moe_err code = e && e->code > 0 && e->code < MOE_ERR__COUNT
			                         ? (moe_err)e->code
			                         : MOE_ERR_PROTO;
			char msg[300] = "(undecodable ERROR)";
			for (size_t i = 0; e && e->message && e->message[i] && i + 1 < sizeof msg;
			     i++) {
				const char c = e->message[i];
				msg[i] = c >= 0x20 && c < 0x7f ? c : '?';
				msg[i + 1] = '\0';
			}
			moemesh__error__free_unpacked(e, NULL);
			return moe_fail(code, "the worker refused: %s", msg);
		}
		err = moe_proto_read_status(b, &f, chal, secret, secret_len);
		if (err == MOE_ERR_MISMATCH)
			continue; /* a late answer to an earlier ping */
		return err;
	}
}

moe_err moe_node_status_query(moe_node_status *out, const char *url, const uint8_t *secret,
                              size_t secret_len, int n_pings, int timeout_ms)
{
	memset(out, 0, sizeof *out);
	snprintf(out->url, sizeof out->url, "%s", url);
	out->state = MOE_NODE_UNREACHABLE;
	int fd = -1;
	moe_err err = moe_dgram_connect(&fd, url);
	if (err != MOE_OK) {
		if (err == MOE_ERR_NOMEM)
			return err;
		snprintf(out->detail, sizeof out->detail, "%s", moe_err_detail());
		return MOE_OK;
	}
	uint64_t best = UINT64_MAX;
	int answered = 0;
	for (int k = 0; k < (n_pings > 0 ? n_pings : 1); k++) {
		Moemesh__WorkerStatus *b = NULL;
		uint64_t ts = 0, tr = 0;
		err = ping(&b, &ts, &tr, fd, secret, secret_len, timeout_ms);
		if (err != MOE_OK) {
			if (err == MOE_ERR_NOMEM || err == MOE_ERR_SYS) {
				close(fd);
				return err;
			}
			if (answered)
				continue; /* one lost datagram among answered ones */
			snprintf(out->detail, sizeof out->detail, "%s", moe_err_detail());
			out->state = err == MOE_ERR_AUTH ? MOE_NODE_AUTH_FAILED
			             : err == MOE_ERR_TIMEOUT || err == MOE_ERR_CLOSED
			                 ? MOE_NODE_UNREACHABLE
			                 : MOE_NODE_ERROR;
			if (out->state != MOE_NODE_ERROR && out->state != MOE_NODE_AUTH_FAILED &&
			    err == MOE_ERR_CLOSED)
				break; /* refused: nothing listens there */
			if (out->state == MOE_NODE_AUTH_FAILED)
				break;
			continue;
		}
		answered++;
		const uint64_t rtt = tr - ts;
		if (rtt < best) {
			best = rtt;
			fill(out, b);
			/* the worker read its clock about half way through the round trip */
			out->clock_offset_ms =
			    ((double)b->time_unix_ns - ((double)ts + (double)tr) / 2) / 1e6;
		}
		out->rtt_ms_max =
		    (double)rtt / 1e6 > out->rtt_ms_max ? (double)rtt / 1e6 : out->rtt_ms_max;
		moemesh__worker_status__free_unpacked(b, NULL);
	}
	close(fd);
	if (answered) {
		out->state = MOE_NODE_UP;
		out->rtt_ms = (double)best / 1e6;
		out->pings_answered = answered;
		out->detail[0] = '\0';
	}
	return MOE_OK;
}
