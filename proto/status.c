/* status.c - the status datagrams (moemesh.proto's StatusRequest and
 * Status): their MACs, the validation of both, and the datagram sockets a
 * worker answers them on and a status client sends them from. */
#include "proto/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

moe_err moe_status_mac(uint8_t out[32], const uint8_t *secret, size_t secret_len, const char *label,
                       const void *msg, size_t len)
{
	const size_t ll = strlen(label);
	size_t n;
	if (!moe_size_add(&n, ll, len))
		return moe_fail(MOE_ERR_OVERFLOW, "status MAC of %zu bytes", len);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf == NULL)
		return moe_fail(MOE_ERR_NOMEM, "status MAC of %zu bytes", len);
	memcpy(buf, label, ll);
	if (len)
		memcpy(buf + ll, msg, len);
	const moe_err err = moe_hmac_sha256(out, secret, secret_len, buf, n);
	free(buf);
	return err;
}

moe_err moe_proto_read_status_request(Moemesh__StatusRequest **out, const moe_frame *f,
                                      const uint8_t *secret, size_t secret_len)
{
	moe_err err;
	if (f->kind != MOE_MSG_STATUS_REQUEST)
		return moe_fail(MOE_ERR_PROTO, "expected STATUS_REQUEST, got %s",
		                moe_msg_kind_name(f->kind));
	Moemesh__StatusRequest *r = moemesh__status_request__unpack(NULL, f->header_len, f->header);
	if (r == NULL)
		return moe_fail(MOE_ERR_PROTO, "STATUS_REQUEST header of %zu bytes does not decode",
		                f->header_len);
	if (r->protocol_version != MOE_PROTO_VERSION) {
		err = moe_fail(MOE_ERR_BAD_VERSION, "STATUS_REQUEST protocol version %u, not %u",
		               r->protocol_version, MOE_PROTO_VERSION);
		goto out_free;
	}
	if (r->challenge.len != 32 || (r->mac.len != 0 && r->mac.len != 32)) {
		err =
		    moe_fail(MOE_ERR_BAD_COUNT,
		             "STATUS_REQUEST challenge of %zu bytes, mac of %zu (want 32, 0 or 32)",
		             r->challenge.len, r->mac.len);
		goto out_free;
	}
	if (secret_len > 0) {
		uint8_t want[32];
		if ((err = moe_status_mac(want, secret, secret_len, "moemesh status request",
		                          r->challenge.data, 32)) != MOE_OK)
			goto out_free;
		if (r->mac.len != 32 || !moe_bytes_equal_ct(r->mac.data, want, 32)) {
			err = moe_fail(
			    MOE_ERR_AUTH,
			    "STATUS_REQUEST: the sender does not know this worker's secret "
			    "(--secret-file)");
			goto out_free;
		}
	}
	*out = r;
	return MOE_OK;

out_free:
	moemesh__status_request__free_unpacked(r, NULL);
	return err;
}

/* Whether s is at most max bytes of printable ASCII. */
static bool printable(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (n >= max || (unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
			return false;
	return true;
}

static moe_err check_body(const Moemesh__WorkerStatus *b, const uint8_t challenge[32])
{
	if (b->challenge.len != 32 || !moe_bytes_equal_ct(b->challenge.data, challenge, 32))
		return moe_fail(MOE_ERR_MISMATCH, "STATUS answers another request (challenge)");
	if (b->model_id.len != MOE_ID_BYTES)
		return moe_fail(MOE_ERR_BAD_COUNT, "STATUS model_id of %zu bytes", b->model_id.len);
	if (!printable(b->name, 63) || !printable(b->isa, 15))
		return moe_fail(MOE_ERR_BAD_STRING,
		                "STATUS name or isa too long or not printable ASCII");
	if (b->n_layer_experts > MOE_STATUS_MAX_LAYERS)
		return moe_fail(MOE_ERR_BAD_COUNT, "STATUS with %zu layers (at most %d)",
		                b->n_layer_experts, MOE_STATUS_MAX_LAYERS);
	uint64_t sum = 0;
	for (size_t i = 0; i < b->n_layer_experts; i++)
		sum += b->layer_experts[i];
	if (sum != b->experts_held)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "STATUS experts_held %llu, its layer counts add up to %llu",
		                (unsigned long long)b->experts_held, (unsigned long long)sum);
	if (b->load_done > b->load_total)
		return moe_fail(MOE_ERR_BAD_VALUE, "STATUS load_done %llu > load_total %llu",
		                (unsigned long long)b->load_done,
		                (unsigned long long)b->load_total);
	return MOE_OK;
}

moe_err moe_proto_read_status(Moemesh__WorkerStatus **out, const moe_frame *f,
                              const uint8_t challenge[32], const uint8_t *secret, size_t secret_len)
{
	moe_err err;
	if (f->kind != MOE_MSG_STATUS)
		return moe_fail(MOE_ERR_PROTO, "expected STATUS, got %s",
		                moe_msg_kind_name(f->kind));
	Moemesh__Status *s = moemesh__status__unpack(NULL, f->header_len, f->header);
	if (s == NULL)
		return moe_fail(MOE_ERR_PROTO, "STATUS header of %zu bytes does not decode",
		                f->header_len);
	Moemesh__WorkerStatus *b = NULL;
	if (secret_len > 0) {
		uint8_t want[32];
		if ((err = moe_status_mac(want, secret, secret_len, "moemesh status", s->body.data,
		                          s->body.len)) != MOE_OK)
			goto out_free;
		if (s->mac.len != 32 || !moe_bytes_equal_ct(s->mac.data, want, 32)) {
			err = moe_fail(MOE_ERR_AUTH,
			               "the worker does not know the cluster secret "
			               "(--secret-file): its STATUS is %s",
			               s->mac.len ? "signed with another" : "not signed");
			goto out_free;
		}
	}
	b = moemesh__worker_status__unpack(NULL, s->body.len, s->body.data);
	if (b == NULL) {
		err = moe_fail(MOE_ERR_PROTO, "STATUS body of %zu bytes does not decode",
		               s->body.len);
		goto out_free;
	}
	if ((err = check_body(b, challenge)) != MOE_OK)
		goto out_free;
	moemesh__status__free_unpacked(s, NULL);
	*out = b;
	return MOE_OK;

out_free:
	if (b != NULL)
		moemesh__worker_status__free_unpacked(b, NULL);
	moemesh__status__free_unpacked(s, NULL);
	return err;
}

/* ---- datagram sockets --------------------------------------------------------------- */

static moe_err status_path(struct sockaddr_un *a, const char *url)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (snprintf(a->sun_path, sizeof a->sun_path, "%s.status", url + 6) >=
	    (int)sizeof a->sun_path)
		return moe_fail(MOE_ERR_INVAL, "%s: the status socket's path is too long", url);
	return MOE_OK;
}

static moe_err dgram_addrs(struct addrinfo **out, const char *host, uint16_t port, bool passive)
{
	char ps[8];
	snprintf(ps, sizeof ps, "%u", (unsigned)port);
	const struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                               .ai_socktype = SOCK_DGRAM,
	                               .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
	const int rv = getaddrinfo(host[0] ? host : NULL, ps, &hints, out);
	if (rv != 0)
		return moe_fail(rv == EAI_SYSTEM ? MOE_ERR_SYS : MOE_ERR_INVAL,
		                "status: resolving '%s': %s", host, gai_strerror(rv));
	return MOE_OK;
}

moe_err moe_dgram_listen(int *fd, const char *url, uint16_t port)
{
	moe_err err;
	if (strncmp(url, "ipc://", 6) == 0) {
		struct sockaddr_un a;
		if ((err = status_path(&a, url)) != MOE_OK)
			return err;
		int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s < 0)
			return moe_fail(MOE_ERR_SYS, "status socket %s: %s", a.sun_path,
			                strerror(errno));
		(void)unlink(a.sun_path);
		if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
			err = moe_fail(MOE_ERR_SYS, "status socket %s: %s", a.sun_path,
			               strerror(errno));
			close(s);
			return err;
		}
		*fd = s;
		return MOE_OK;
	}
	char host[256];
	uint16_t p;
	if ((err = moe_url_tcp_split(host, sizeof host, &p, url)) != MOE_OK)
		return err;
	if (port != 0)
		p = port;
	if (host[0] == '\0') { /* every address: IPv6 and IPv4 on one socket, else IPv4 */
		int zero = 0;
		struct sockaddr_in6 a6 = {
		    .sin6_family = AF_INET6, .sin6_port = htons(p), .sin6_addr = IN6ADDR_ANY_INIT};
		int s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s >= 0) {
			(void)setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
			if (bind(s, (struct sockaddr *)&a6, sizeof a6) == 0) {
				*fd = s;
				return MOE_OK;
			}
			close(s);
		}
		struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(p)};
		s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s >= 0 && bind(s, (struct sockaddr *)&a4, sizeof a4) == 0) {
			*fd = s;
			return MOE_OK;
		}
		err = moe_fail(MOE_ERR_SYS, "status socket on UDP port %u: %s", (unsigned)p,
		               strerror(errno));
		if (s >= 0)
			close(s);
		return err;
	}
	struct addrinfo *ai = NULL;
	if ((err = dgram_addrs(&ai, host, p, true)) != MOE_OK)
		return err;
	int e = 0;
	for (const struct addrinfo *r = ai; r != NULL; r = r->ai_next) {
		int s = socket(r->ai_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s >= 0 && bind(s, r->ai_addr, r->ai_addrlen) == 0) {
			freeaddrinfo(ai);
			*fd = s;
			return MOE_OK;
		}
		e = errno;
		if (s >= 0)
			close(s);
	}
	freeaddrinfo(ai);
	return moe_fail(MOE_ERR_SYS, "status socket on %s UDP port %u: %s", host, (unsigned)p,
	                strerror(e));
}

moe_err moe_dgram_connect(int *fd, const char *url)
{
	moe_err err;
	if (strncmp(url, "ipc://", 6) == 0) {
		struct sockaddr_un a;
		if ((err = status_path(&a, url)) != MOE_OK)
			return err;
		int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		const sa_family_t fam = AF_UNIX; /* autobind: an abstract address to answer to */
		if (s < 0 || bind(s, (const struct sockaddr *)&fam, sizeof fam) != 0 ||
		    connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
			err = moe_fail(MOE_ERR_SYS, "status socket %s: %s", a.sun_path,
			               strerror(errno));
			if (s >= 0)
				close(s);
			return err;
		}
		*fd = s;
		return MOE_OK;
	}
	char host[256];
	uint16_t p;
	if ((err = moe_url_tcp_split(host, sizeof host, &p, url)) != MOE_OK)
		return err;
	if (host[0] == '\0')
		return moe_fail(MOE_ERR_INVAL, "%s: a worker's URL names its host", url);
	struct addrinfo *ai = NULL;
	if ((err = dgram_addrs(&ai, host, p, false)) != MOE_OK)
		return err;
	int e = 0;
	for (const struct addrinfo *r = ai; r != NULL; r = r->ai_next) {
		int s = socket(r->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (s >= 0 && connect(s, r->ai_addr, r->ai_addrlen) == 0) {
			freeaddrinfo(ai);
			*fd = s;
			return MOE_OK;
		}
		e = errno;
		if (s >= 0)
			close(s);
	}
	freeaddrinfo(ai);
	return moe_fail(MOE_ERR_SYS, "status socket of %s: %s", url, strerror(e));
}
