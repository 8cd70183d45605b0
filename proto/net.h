/*
 * net.h - what both ends of a cluster link share below the messages: the
 * model identity, challenge-response authentication, frames over nng (the
 * control plane) and over plain stream sockets (the data plane).
 *
 * Transport decision (measured on the development box, loopback, 4 KiB out /
 * 16 KiB back, 2000 round trips): nng pair1 over tcp p50 173 us (p90 237);
 * a plain blocking TCP socket with TCP_NODELAY p50 25 us (p90 28).  At 48
 * layers per token nng alone would cost ~8 ms per token, so nng carries only
 * the control plane (hello, auth, assign, load progress, heartbeat, stats,
 * error, shutdown) and DISPATCH/RESULT frames travel on a stream socket (TCP
 * with TCP_NODELAY, or a Unix-domain socket for ipc:// workers) that the
 * worker announces after authentication.  Frames delimit themselves by their
 * prefix (proto.h); a sender writes prefix + header + payload with one writev
 * and no copy of the payload.
 */
#ifndef MOE_PROTO_NET_H
#define MOE_PROTO_NET_H

#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "model/gguf.h"
#include "proto/proto.h"

#define MOE_ID_BYTES 32 /* SHA-256 */

/* The model identity: SHA-256 of the GGUF bytes [0, data offset), i.e. the
 * metadata and the tensor table (of every file in order, for a split model).
 * Errors: MOE_ERR_SYS (libcrypto), MOE_ERR_BAD_OFFSET. */
moe_err moe_model_identity(uint8_t out[MOE_ID_BYTES], const moe_gguf *g);

/* out = HMAC-SHA256(key, msg).  Errors: MOE_ERR_SYS. */
moe_err moe_hmac_sha256(uint8_t out[32], const void *key, size_t key_len, const void *msg,
                        size_t len);

/* n bytes from the system's CSPRNG.  Errors: MOE_ERR_SYS. */
moe_err moe_random_bytes(void *out, size_t n);

/* Compares n bytes in time independent of where they differ. */
bool moe_bytes_equal_ct(const void *a, const void *b, size_t n);

/* Reads a shared secret (the whole file, trailing newlines dropped, 1..4096
 * bytes) into *out (caller frees) and its length into *len.  Errors:
 * MOE_ERR_IO, MOE_ERR_BAD_VALUE (empty or too long), MOE_ERR_NOMEM. */
moe_err moe_secret_read(uint8_t **out, size_t *len, const char *path);

/* ---- nng control plane ------------------------------------------------------- */

/* Packs msg into one frame (no payload) and sends it on s, blocking up to the
 * socket's send timeout.  Errors: MOE_ERR_NOMEM, MOE_ERR_INVAL, MOE_ERR_TIMEOUT,
 * MOE_ERR_CLOSED, MOE_ERR_IO. */
moe_err moe_nng_send(nng_socket s, moe_msg_kind kind, const ProtobufCMessage *msg);

/* Receives one message within timeout_ms (< 0: the socket's own timeout) and
 * parses its frame: on success *msg owns the bytes *f points into (free with
 * nng_msg_free).  Errors: MOE_ERR_TIMEOUT, MOE_ERR_CLOSED, MOE_ERR_IO, and
 * those of moe_frame_parse (the message is then freed). */
moe_err moe_nng_recv(nng_msg **msg, moe_frame *f, nng_socket s, int timeout_ms);

/* Maps an nng error to moe_err with a detail naming what was being done. */
moe_err moe_nng_fail(int rv, const char *what);

/* ---- stream sockets (data plane) --------------------------------------------- */

/* Listens on host:*port (TCP, *port 0 = any; set to the port bound).
 * Errors: MOE_ERR_SYS, MOE_ERR_INVAL (host not an address). */
moe_err moe_sock_listen_tcp(int *fd, const char *host, uint16_t *port);

/* Listens on a Unix-domain socket at path (an old socket file is replaced). */
moe_err moe_sock_listen_unix(int *fd, const char *path);

/* Connects (blocking, TCP_NODELAY) to host:port or to a Unix socket path;
 * gives up after timeout_ms.  Errors: MOE_ERR_SYS, MOE_ERR_TIMEOUT,
 * MOE_ERR_INVAL. */
moe_err moe_sock_connect_tcp(int *fd, const char *host, uint16_t port, int timeout_ms);
moe_err moe_sock_connect_unix(int *fd, const char *path);

/* Sets TCP_NODELAY where fd is a TCP socket (no-op otherwise). */
void moe_sock_nodelay(int fd);

/* Writes all of iov[0..n) (blocking; partial writes resumed; MSG_NOSIGNAL).
 * iov is modified.  Errors: MOE_ERR_CLOSED (peer gone), MOE_ERR_IO. */
moe_err moe_sock_writev_all(int fd, struct iovec *iov, int n);

/* Sends one frame: head (prefix, header, padding) from a stack buffer, then
 * the payload parts from where they lie, in one writev where they fit.
 * Errors: those of moe_frame_write_head and moe_sock_writev_all. */
moe_err moe_stream_send(int fd, moe_msg_kind kind, const ProtobufCMessage *msg,
                        const struct iovec *payload, int n_payload);

/* A frame being received from a stream: the buffer grows to the frame's size
 * (checked against max_frame from the prefix before anything is allocated)
 * and is 64-byte aligned, so payloads are used where they lie. */
typedef struct moe_rx {
	uint8_t *buf; /* [cap], moe_aligned_alloc */
	size_t cap;
	size_t have; /* bytes of the current frame received */
	size_t need; /* its total length, 0 until the prefix is in */
} moe_rx;

/* Reads what fd has without blocking (or, if block, until the frame is
 * complete) and sets *done when a whole frame is in; *f then views it (valid
 * until the next call).  The next call starts a new frame.  Errors:
 * MOE_ERR_CLOSED (EOF; mid-frame: the detail says so), MOE_ERR_IO, those of
 * moe_frame_length (the stream cannot be resynchronised: close it),
 * MOE_ERR_BAD_COUNT (frame longer than max_frame), MOE_ERR_NOMEM. */
moe_err moe_rx_read(bool *done, moe_frame *f, moe_rx *rx, int fd, size_t max_frame, bool block);

void moe_rx_free(moe_rx *rx); /* frees the buffer; the struct may be reused */

/* After an error of moe_rx_read: true if the bad frame was read to its end
 * (its prefix was sound, what followed was not), so the stream is still in
 * step and the reader may answer and go on; false if the stream must close. */
bool moe_rx_in_sync(const moe_rx *rx);

#endif
