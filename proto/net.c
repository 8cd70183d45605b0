/* net.c - model identity, authentication, frames over nng and stream sockets. */
#include "proto/proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moemesh payloads (moe_fix_t rows, activation blocks) are little-endian on the wire"
#endif

moe_err moe_model_identity(uint8_t out[MOE_ID_BYTES], const moe_gguf *g)
{
	unsigned int n = 0;
	moe_err err = MOE_OK;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		err = moe_fail(MOE_ERR_SYS, "identity: SHA-256 failed");
		goto out_free_md;
	}
	/* every file's header, in split order (one file: just its header) */
	for (int i = 0; i < moe_gguf_n_splits(g); i++) {
		const moe_gguf *p = moe_gguf_split(g, i);
		const uint64_t len = moe_gguf_data_offset(p);
		if (len > moe_gguf_file_size(p)) {
			err = moe_fail(MOE_ERR_BAD_OFFSET,
			               "identity: data offset %llu past the file (split %d)",
			               (unsigned long long)len, i + 1);
			goto out_free_md;
		}
		if (EVP_DigestUpdate(md, moe_gguf_base(p), (size_t)len) != 1) {
			err = moe_fail(MOE_ERR_SYS, "identity: SHA-256 failed");
			goto out_free_md;
		}
	}
	if (EVP_DigestFinal_ex(md, out, &n) != 1 || n != MOE_ID_BYTES)
		err = moe_fail(MOE_ERR_SYS, "identity: SHA-256 failed");
out_free_md:
	EVP_MD_CTX_free(md);
	return err;
}

moe_err moe_hmac_sha256(uint8_t out[32], const void *key, size_t key_len, const void *msg,
                        size_t len)
{
	unsigned int n = 0;
	if (key_len > INT32_MAX ||
	    HMAC(EVP_sha256(), key, (int)key_len, msg, len, out, &n) == NULL || n != 32)
		return moe_fail(MOE_ERR_SYS, "HMAC-SHA256 failed");
	return MOE_OK;
}

moe_err moe_auth_mac(uint8_t out[32], const uint8_t *secret, size_t secret_len, const char *role,
                     const uint8_t nonce_c[32], const uint8_t nonce_w[32],
                     const uint8_t model_id[MOE_ID_BYTES])
{
	static const uint8_t empty[1];
	uint8_t msg[64 + 96];
	const size_t rl = strlen(role);
	if (rl > 64)
		return moe_fail(MOE_ERR_SYS, "auth MAC: role label too long");
	memcpy(msg, role, rl);
	memcpy(msg + rl, nonce_c, 32);
	memcpy(msg + rl + 32, nonce_w, 32);
	memcpy(msg + rl + 64, model_id, MOE_ID_BYTES);
	return moe_hmac_sha256(out, secret_len > 0 ? secret : empty, secret_len, msg,
	                       rl + 64 + MOE_ID_BYTES);
}

bool moe_url_is_loopback(const char *url)
{
	char host[256];
	uint16_t port;
	struct in_addr a4;
	struct in6_addr a6;
	if (strncmp(url, "ipc://", 6) == 0)
		return true;
	if (strncmp(url, "tcp://", 6) != 0 ||
	    moe_url_tcp_split(host, sizeof host, &port, url) != MOE_OK)
		return false;
	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (memcmp(a6.s6_addr, mapped, 12) == 0 && a6.s6_addr[12] == 127);
	}
	return false;
}

moe_err moe_random_bytes(void *out, size_t n)
{
	if (n > INT32_MAX || RAND_bytes(out, (int)n) != 1)
		return moe_fail(MOE_ERR_SYS, "RAND_bytes(%zu) failed", n);
	return MOE_OK;
}

bool moe_bytes_equal_ct(const void *a, const void *b, size_t n)
{
	const volatile uint8_t *x = a, *y = b;
	uint8_t d = 0;
	for (size_t i = 0; i < n; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

moe_err moe_secret_read(uint8_t **out, size_t *len, const char *path)
{
	enum { MAX_SECRET = 4096 };
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return moe_fail(MOE_ERR_IO, "secret file %s: %s", path, strerror(errno));
	uint8_t *buf = malloc(MAX_SECRET + 1);
	if (buf == NULL) {
		fclose(fp);
		return moe_fail(MOE_ERR_NOMEM, "secret buffer");
	}
	size_t n = fread(buf, 1, MAX_SECRET + 1, fp);
	const bool bad = ferror(fp);
	fclose(fp);
	if (bad) {
		free(buf);
		return moe_fail(MOE_ERR_IO, "reading secret file %s", path);
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	if (n == 0 || n > MAX_SECRET) {
		free(buf);
		return moe_fail(MOE_ERR_BAD_VALUE, "secret file %s: %s", path,
		                n == 0 ? "empty" : "longer than 4096 bytes");
	}
	*out = buf;
	*len = n;
	return MOE_OK;
}

/* ---- nng ------------------------------------------------------------------------ */

moe_err moe_nng_fail(int rv, const char *what)
{
	switch (rv) {
	case NNG_ETIMEDOUT:
		return moe_fail(MOE_ERR_TIMEOUT, "%s: timed out", what);
	case NNG_ECLOSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
		return moe_fail(MOE_ERR_CLOSED, "%s: %s", what, nng_strerror(rv));
	case NNG_ENOMEM:
		return moe_fail(MOE_ERR_NOMEM, "%s: %s", what, nng_strerror(rv));
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return moe_fail(MOE_ERR_INVAL, "%s: %s", what, nng_strerror(rv));
	default:
		return moe_fail(MOE_ERR_IO, "%s: %s", what, nng_strerror(rv));
	}
}

moe_err moe_nng_send(nng_socket s, moe_msg_kind kind, const ProtobufCMessage *msg)
{
	const size_t hlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	const size_t size = moe_frame_size(hlen, 0);
	nng_msg *m;
	moe_err err;
	int rv;

	if (size == 0)
		return moe_fail(MOE_ERR_INVAL, "%s header of %zu bytes over cap",
		                moe_msg_kind_name(kind), hlen);
	if ((rv = nng_msg_alloc(&m, size)) != 0)
		return moe_nng_fail(rv, "allocating a frame");
	if ((err = moe_frame_write(nng_msg_body(m), size, kind, msg, 0)) != MOE_OK)
		goto out_free_msg;
	if ((rv = nng_sendmsg(s, m, 0)) != 0) {
		err = moe_nng_fail(rv, "sending a frame");
		goto out_free_msg;
	}
	return MOE_OK;

out_free_msg:
	nng_msg_free(m);
	return err;
}

moe_err moe_nng_recv(nng_msg **msg, moe_frame *f, nng_socket s, int timeout_ms)
{
	nng_msg *m;
	moe_err err;
	int rv;

	if (timeout_ms >= 0 &&
	    (rv = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, (nng_duration)timeout_ms)) != 0)
		return moe_nng_fail(rv, "setting the receive timeout");
	if ((rv = nng_recvmsg(s, &m, 0)) != 0)
		return moe_nng_fail(rv, "receiving a frame");
	if ((err = moe_frame_parse(f, nng_msg_body(m), nng_msg_len(m))) != MOE_OK) {
		nng_msg_free(m);
		return err;
	}
	*msg = m;
	return MOE_OK;
}

/* ---- stream sockets ----------------------------------------------------------- */

void moe_sock_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static moe_err sys_fail(const char *what, const char *where)
{
	return moe_fail(MOE_ERR_SYS, "%s %s: %s", what, where, strerror(errno));
}

moe_err moe_url_tcp_split(char *host, size_t host_size, uint16_t *port, const char *url)
{
	if (strncmp(url, "tcp://", 6) != 0)
		return moe_fail(MOE_ERR_INVAL, "'%s': want tcp://HOST:PORT", url);
	const char *h = url + 6, *end, *ps;
	if (*h == '[') {
		end = strchr(h, ']');
		if (end == NULL || end[1] != ':')
			return moe_fail(MOE_ERR_INVAL, "'%s': want tcp://[IPV6]:PORT", url);
		h++;
		ps = end + 2;
	} else {
		end = strrchr(h, ':');
		if (end == NULL)
			return moe_fail(MOE_ERR_INVAL, "'%s': no port (want tcp://HOST:PORT)", url);
		if (memchr(h, ':', (size_t)(end - h)) != NULL)
			return moe_fail(MOE_ERR_INVAL,
			                "'%s': an IPv6 address goes in brackets: tcp://[ADDR]:PORT",
			                url);
		ps = end + 1;
	}
	const size_t hl = (size_t)(end - h);
	int p = 0;
	if (moe_parse_int(&p, ps, 0, 65535) != 0)
		return moe_fail(MOE_ERR_INVAL, "'%s': the port '%s' is not a number in 0..65535",
		                url, ps);
	if (hl >= host_size)
		return moe_fail(MOE_ERR_INVAL, "'%s': a host name of %zu bytes", url, hl);
	for (size_t i = 0; i < hl; i++)
		if (h[i] <= ' ' || h[i] == '/' || h[i] == '[' || h[i] == ']' || h[i] == '@')
			return moe_fail(MOE_ERR_INVAL, "'%s': a character the host cannot hold",
			                url);
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (strcmp(host, "*") == 0)
		host[0] = '\0';
	*port = (uint16_t)p;
	return MOE_OK;
}

/* The addresses of host:port (numeric port) for a stream socket; passive:
 * for bind.  The error names host. */
static moe_err resolve(struct addrinfo **out, const char *host, uint16_t port, bool passive,
                       const char *what)
{
	char ps[8];
	snprintf(ps, sizeof ps, "%u", (unsigned)port);
	const struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                               .ai_socktype = SOCK_STREAM,
	                               .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
	const int rv = getaddrinfo(host, ps, &hints, out);
	if (rv == EAI_NONAME || rv == EAI_FAIL || rv == EAI_NODATA)
		return moe_fail(MOE_ERR_INVAL, "%s: '%s' is no address and no known host name (%s)",
		                what, host, gai_strerror(rv));
	if (rv != 0)
		return moe_fail(MOE_ERR_SYS, "%s: resolving '%s': %s", what, host,
		                gai_strerror(rv));
	return MOE_OK;
}

/* The numeric form of a socket address, for messages. */
static const char *addr_text(char *buf, size_t size, const struct sockaddr *a, socklen_t len)
{
	if (getnameinfo(a, len, buf, (socklen_t)size, NULL, 0, NI_NUMERICHOST) != 0)
		snprintf(buf, size, "?");
	return buf;
}

/* socket + bind + listen on one address; the port bound into *port. */
static int listen_on(const struct sockaddr *a, socklen_t alen, int family, uint16_t *port)
{
	int one = 1, zero = 0;
	int s = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	(void)setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (family == AF_INET6) /* "::" takes IPv4 too */
		(void)setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	struct sockaddr_storage got;
	socklen_t gl = sizeof got;
	if (bind(s, a, alen) != 0 || listen(s, 16) != 0 ||
	    getsockname(s, (struct sockaddr *)&got, &gl) != 0) {
		const int e = errno;
		close(s);
		errno = e;
		return -1;
	}
	*port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
	                                        : ((struct sockaddr_in *)&got)->sin_port);
	return s;
}

moe_err moe_sock_listen_tcp(int *fd, const char *host, uint16_t *port)
{
	if (host[0] == '\0') { /* any address: IPv6 and IPv4 on one socket, or IPv4 alone */
		struct sockaddr_in6 a6 = {.sin6_family = AF_INET6,
		                          .sin6_port = htons(*port),
		                          .sin6_addr = IN6ADDR_ANY_INIT};
		int s = listen_on((struct sockaddr *)&a6, sizeof a6, AF_INET6, port);
		if (s < 0) {
			struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(*port)};
			s = listen_on((struct sockaddr *)&a4, sizeof a4, AF_INET, port);
		}
		if (s < 0)
			return moe_fail(MOE_ERR_SYS, "data listener on port %u: %s",
			                (unsigned)*port, strerror(errno));
		*fd = s;
		return MOE_OK;
	}
	struct addrinfo *ai = NULL;
	moe_err err = resolve(&ai, host, *port, true, "data listener");
	if (err != MOE_OK)
		return err;
	int e = 0;
	for (const struct addrinfo *r = ai; r != NULL; r = r->ai_next) {
		const int s = listen_on(r->ai_addr, r->ai_addrlen, r->ai_family, port);
		if (s >= 0) {
			freeaddrinfo(ai);
			*fd = s;
			return MOE_OK;
		}
		e = errno;
	}
	freeaddrinfo(ai);
	return moe_fail(MOE_ERR_SYS, "data listener on %s port %u: %s", host, (unsigned)*port,
	                strerror(e));
}

static moe_err unix_addr(struct sockaddr_un *a, const char *path)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof a->sun_path)
		return moe_fail(MOE_ERR_INVAL, "unix socket path '%s' longer than %zu bytes", path,
		                sizeof a->sun_path - 1);
	memcpy(a->sun_path, path, strlen(path) + 1);
	return MOE_OK;
}

moe_err moe_sock_listen_unix(int *fd, const char *path)
{
	struct sockaddr_un a;
	moe_err err = unix_addr(&a, path);
	if (err != MOE_OK)
		return err;
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return sys_fail("socket", path);
	(void)unlink(path);
	if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
		err = sys_fail("bind/listen", path);
		close(s);
		return err;
	}
	*fd = s;
	return MOE_OK;
}

/* A non-blocking connect to one address, waited for up to timeout_ms. */
static moe_err connect_one(int *fd, const struct addrinfo *r, const char *host, uint16_t port,
                           int timeout_ms)
{
	char at[INET6_ADDRSTRLEN + 8];
	addr_text(at, sizeof at, r->ai_addr, r->ai_addrlen);
	int s = socket(r->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return sys_fail("socket", host);
	moe_err err = MOE_OK;
	if (connect(s, r->ai_addr, r->ai_addrlen) != 0) {
		if (errno != EINPROGRESS) {
			err = moe_fail(MOE_ERR_SYS, "connect %s (%s) port %u: %s", host, at, port,
			               strerror(errno));
			goto out_close;
		}
		struct pollfd p = {.fd = s, .events = POLLOUT};
		int rv = poll(&p, 1, timeout_ms);
		int so = 0;
		socklen_t sl = sizeof so;
		if (rv == 0) {
			err =
			    moe_fail(MOE_ERR_TIMEOUT, "connect %s (%s) port %u: no answer in %d ms",
			             host, at, port, timeout_ms);
			goto out_close;
		}
		if (rv < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &so, &sl) != 0 || so != 0) {
			err = moe_fail(MOE_ERR_SYS, "connect %s (%s) port %u: %s", host, at, port,
			               strerror(so ? so : errno));
			goto out_close;
		}
	}
	if (fcntl(s, F_SETFL, fcntl(s, F_GETFL) & ~O_NONBLOCK) != 0) {
		err = sys_fail("fcntl", host);
		goto out_close;
	}
	moe_sock_nodelay(s);
	*fd = s;
	return MOE_OK;

out_close:
	close(s);
	return err;
}

moe_err moe_sock_connect_tcp(int *fd, const char *host, uint16_t port, int timeout_ms)
{
	struct addrinfo *ai = NULL;
	moe_err err = resolve(&ai, host, port, false, "data link");
	if (err != MOE_OK)
		return err;
	/* each address in getaddrinfo's order until one answers */
	for (const struct addrinfo *r = ai; r != NULL; r = r->ai_next)
		if ((err = connect_one(fd, r, host, port, timeout_ms)) == MOE_OK)
			break;
	freeaddrinfo(ai);
	return err;
}

moe_err moe_sock_connect_unix(int *fd, const char *path)
{
	struct sockaddr_un a;
	moe_err err = unix_addr(&a, path);
	if (err != MOE_OK)
		return err;
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return sys_fail("socket", path);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		err = sys_fail("connect", path);
		close(s);
		return err;
	}
	*fd = s;
	return MOE_OK;
}

moe_err moe_sock_writev_all(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)(n > 512 ? 512 : n)};
		ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				return moe_fail(MOE_ERR_CLOSED, "data link: peer closed (%s)",
				                strerror(errno));
			return moe_fail(MOE_ERR_IO, "data link: send: %s", strerror(errno));
		}
		size_t left = (size_t)w;
		while (n > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return MOE_OK;
}

moe_err moe_stream_send(int fd, moe_msg_kind kind, const ProtobufCMessage *msg,
                        const struct iovec *payload, int n_payload)
{
	return moe_stream_send_sealed(fd, NULL, kind, msg, payload, n_payload, true);
}

void moe_rx_free(moe_rx *rx)
{
	moe_aligned_free(rx->buf);
	moe_aead_destroy(rx->open);
	*rx = (moe_rx){0};
}

bool moe_rx_in_sync(const moe_rx *rx)
{
	return !rx->broken && rx->need != 0 && rx->have >= rx->need;
}

static moe_err rx_grow(moe_rx *rx, size_t size)
{
	if (rx->cap >= size)
		return MOE_OK;
	size_t cap = rx->cap ? rx->cap : 4096;
	while (cap < size)
		cap *= 2;
	uint8_t *b = moe_aligned_alloc(MOE_PROTO_ALIGN, cap);
	if (b == NULL)
		return moe_fail(MOE_ERR_NOMEM, "frame buffer of %zu bytes", cap);
	if (rx->have > 0)
		memcpy(b, rx->buf, rx->have);
	moe_aligned_free(rx->buf);
	rx->buf = b;
	rx->cap = cap;
	return MOE_OK;
}

/* Reads take what the socket has, up to the buffer's capacity, so a small
 * frame usually arrives in one recv; bytes past the current frame stay in the
 * buffer and start the next one (moved to offset 0 to keep it aligned).  On a
 * sealed link rx->need counts the tag after the frame, and the frame is
 * opened where it lies. */
moe_err moe_rx_read(bool *done, moe_frame *f, moe_rx *rx, int fd, size_t max_frame, bool block)
{
	moe_err err;
	const size_t tag = rx->open != NULL ? MOE_SEAL_TAG : 0;
	*done = false;
	if (rx->broken)
		return moe_fail(MOE_ERR_AUTH, "data link: a frame failed its tag before");
	if (rx->need != 0 && rx->have >= rx->need) {
		const size_t left = rx->have - rx->need;
		if (left > 0)
			memmove(rx->buf, rx->buf + rx->need, left);
		rx->have = left;
		rx->need = 0;
	}
	if ((err = rx_grow(rx, 4096)) != MOE_OK)
		return err;
	for (;;) {
		if (rx->need == 0 && rx->have >= MOE_PROTO_PREFIX) {
			size_t len;
			if ((err = moe_frame_length(&len, rx->buf)) != MOE_OK)
				return err;
			if (len > max_frame)
				return moe_fail(MOE_ERR_BAD_COUNT,
				                "%s frame of %zu bytes over this link's cap of %zu",
				                moe_msg_kind_name(rx->buf[6] | rx->buf[7] << 8),
				                len, max_frame);
			if ((err = rx_grow(rx, len + tag)) != MOE_OK)
				return err;
			rx->need = len + tag;
		}
		if (rx->need != 0 && rx->have >= rx->need) {
			const size_t flen = rx->need - tag;
			if (tag != 0 && (err = moe_aead_open_frame(rx->open, rx->buf, flen,
			                                           rx->buf + flen)) != MOE_OK) {
				rx->broken = true;
				return err;
			}
			if ((err = moe_frame_parse(f, rx->buf, flen)) != MOE_OK)
				return err;
			*done = true;
			return MOE_OK;
		}
		ssize_t r =
		    recv(fd, rx->buf + rx->have, rx->cap - rx->have, block ? 0 : MSG_DONTWAIT);
		if (r == 0)
			return moe_fail(MOE_ERR_CLOSED, "data link closed by the peer%s",
			                rx->have ? " in the middle of a frame" : "");
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return MOE_OK;
			if (errno == ECONNRESET)
				return moe_fail(MOE_ERR_CLOSED, "data link reset by the peer");
			return moe_fail(MOE_ERR_IO, "data link: recv: %s", strerror(errno));
		}
		rx->have += (size_t)r;
	}
}
