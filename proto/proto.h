/*
 * proto.h - the cluster wire protocol (the public header of proto/): frames
 * and their validation (proto.c), and below the messages what both ends of a
 * link share (net.c): the model identity, challenge-response authentication,
 * frames over nng (the control plane) and over plain stream sockets (the data
 * plane).
 *
 * A frame is one nng message (little-endian throughout):
 *
 *    offset  size  field
 *    0       4     magic "MOE1"
 *    4       2     protocol version (MOE_PROTO_VERSION)
 *    6       2     kind (moe_msg_kind): which protobuf message the header is
 *    8       4     header length H (bytes of protobuf, <= MOE_PROTO_MAX_HEADER)
 *    12      4     reserved, 0
 *    16      8     payload length P (<= MOE_PROTO_MAX_PAYLOAD)
 *    24      H     header: the protobuf message of that kind (moemesh.proto)
 *    24+H    pad   zeros up to the next multiple of MOE_PROTO_ALIGN
 *    ...     P     payload: tensor rows, used in place by the receiver
 *
 * The frame's size must be exactly that sum. Payloads start 64-byte aligned
 * relative to the frame, so SIMD kernels read them where they lie.
 *
 * Semantic checks of what a header says against the model (layer < n_layer,
 * expert < n_expert, counts x row bytes == payload bytes, caps) are in
 * moe_proto_read_*; a worker answers a frame that fails any check with an
 * Error message and keeps serving.
 *
 * Transport decision (measured on the development box, loopback, 4 KiB out /
 * 16 KiB back, 2000 round trips): nng pair1 over tcp p50 173 us (p90 237);
 * a plain blocking TCP socket with TCP_NODELAY p50 25 us (p90 28).  At 48
 * layers per token nng alone would cost ~8 ms per token, so nng carries only
 * the control plane (hello, auth, assign, load progress, heartbeat, stats,
 * error, shutdown) and DISPATCH/RESULT frames travel on a stream socket (TCP
 * with TCP_NODELAY, or a Unix-domain socket for ipc:// workers) that the
 * worker announces after authentication.  Frames delimit themselves by their
 * prefix; a sender writes prefix + header + payload with one writev
 * and no copy of the payload.
 */
#ifndef MOE_PROTO_H
#define MOE_PROTO_H

#include <nng/nng.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "model/model.h"
#include "proto/moemesh.pb-c.h"

#define MOE_PROTO_VERSION     3
#define MOE_PROTO_MAGIC       0x31454f4du /* "MOE1" little-endian */
#define MOE_PROTO_PREFIX      24
#define MOE_PROTO_ALIGN       64
#define MOE_PROTO_MAX_HEADER  (1u << 20)          /* 1 MiB of protobuf */
#define MOE_PROTO_MAX_PAYLOAD ((uint64_t)1 << 30) /* 1 GiB of tensor rows */
#define MOE_PROTO_MAX_TOKENS  65536               /* tokens per dispatch */

typedef enum moe_msg_kind {
	MOE_MSG_HELLO = 1,
	MOE_MSG_HELLO_REPLY = 2,
	MOE_MSG_AUTH = 3,
	MOE_MSG_ASSIGN = 4,
	MOE_MSG_LOAD_PROGRESS = 5,
	MOE_MSG_DISPATCH = 6,
	MOE_MSG_RESULT = 7,
	MOE_MSG_HEARTBEAT = 8,
	MOE_MSG_STATS_REQUEST = 9,
	MOE_MSG_STATS = 10,
	MOE_MSG_ERROR = 11,
	MOE_MSG_SHUTDOWN = 12,
	MOE_MSG_AUTH_OK = 13,
	MOE_MSG_STATUS_REQUEST = 14, /* datagrams, see moemesh.proto */
	MOE_MSG_STATUS = 15,
	MOE_MSG_KIND_COUNT
} moe_msg_kind;

/* Name of a kind ("DISPATCH"), or "?" */
const char *moe_msg_kind_name(uint32_t kind);

/* A parsed frame: views into the caller's buffer. */
typedef struct moe_frame {
	moe_msg_kind kind;
	const uint8_t *header; /* [header_len] protobuf bytes */
	size_t header_len;
	const uint8_t *payload; /* [payload_len], MOE_PROTO_ALIGN-aligned relative to the frame */
	size_t payload_len;
} moe_frame;

/* Bytes of a frame with these lengths; 0 if they exceed the caps. */
size_t moe_frame_size(size_t header_len, size_t payload_len);

/* Offset of the payload in such a frame. */
size_t moe_frame_payload_offset(size_t header_len);

/* Writes the prefix and header into buf (moe_frame_size bytes, zeroing the
 * padding); the caller then writes the payload at
 * buf + moe_frame_payload_offset(header_len). The header is packed from msg
 * (any protobuf-c message; NULL = empty header). Returns MOE_ERR_INVAL if
 * buf_len is not the frame size or a length exceeds its cap. */
moe_err moe_frame_write(void *buf, size_t buf_len, moe_msg_kind kind, const ProtobufCMessage *msg,
                        size_t payload_len);

/* Validates the prefix and lengths of a received frame and fills *out with
 * views into buf. Errors: MOE_ERR_TRUNCATED (shorter than its prefix says),
 * MOE_ERR_BAD_MAGIC, MOE_ERR_BAD_VERSION, MOE_ERR_BAD_TYPE (unknown kind),
 * MOE_ERR_BAD_COUNT (a length over its cap, or bytes after the payload),
 * MOE_ERR_BAD_VALUE (reserved field or padding not zero). */
moe_err moe_frame_parse(moe_frame *out, const void *buf, size_t len);

/* Validates a frame's 24-byte prefix alone (magic, version, kind, reserved,
 * length caps) and sets *out to the whole frame's length, so a stream reader
 * knows how much to read before it allocates. Errors as moe_frame_parse. */
moe_err moe_frame_length(size_t *out, const void *prefix);

/* Writes the prefix, header and padding of a frame (everything before the
 * payload) into buf (cap bytes) and sets *head_len to their length, for a
 * writer that sends the payload from where it lies (writev). MOE_ERR_INVAL if
 * cap is too small or a length exceeds its cap. */
moe_err moe_frame_write_head(size_t *head_len, void *buf, size_t cap, moe_msg_kind kind,
                             const ProtobufCMessage *msg, size_t payload_len);

/* What a peer's headers are checked against. */
typedef struct moe_proto_limits {
	uint32_t n_layer;
	uint32_t n_expert;
	uint32_t n_expert_used;
	uint32_t n_embd;
	uint32_t max_tokens; /* per dispatch; 0 = MOE_PROTO_MAX_TOKENS */
} moe_proto_limits;

/* Decodes and checks a Dispatch: layer < n_layer, 0 < n_tokens <= max_tokens,
 * n_embd matches, n_used == n_expert_used, exactly n_tokens*n_used expert ids
 * each -1 or < n_expert, as many finite weights, act_type a known type whose
 * activation rows of n_embd values times n_tokens equal payload_len. On
 * success *out is the decoded message (free with moemesh__dispatch__free_unpacked
 * (*out, NULL)). Errors: MOE_ERR_PROTO (undecodable), MOE_ERR_BAD_VALUE,
 * MOE_ERR_BAD_COUNT, MOE_ERR_BAD_TYPE, with a detail naming the field. */
moe_err moe_proto_read_dispatch(Moemesh__Dispatch **out, const moe_frame *f,
                                const moe_proto_limits *lim);

/* Decodes and checks a Result against the dispatch it answers (same step,
 * layer, n_tokens, n_embd; payload = n_tokens * n_embd * 8 bytes). */
moe_err moe_proto_read_result(Moemesh__Result **out, const moe_frame *f, uint64_t step,
                              uint32_t layer, uint32_t n_tokens, uint32_t n_embd);

/* Decodes and checks an Assign: every layer < n_layer, every expert and range
 * inside [0, n_expert), no layer twice. */
moe_err moe_proto_read_assign(Moemesh__Assign **out, const moe_frame *f,
                              const moe_proto_limits *lim);

/* ---- status (datagrams: moemesh.proto's StatusRequest, Status) ---------------- */

#define MOE_STATUS_MIN_REQUEST 1200 /* bytes of a request datagram at least */
#define MOE_STATUS_MAX_LAYERS  4096

/* HMAC-SHA256(secret, label || msg), label one of "moemesh status request"
 * and "moemesh status".  Errors: MOE_ERR_SYS, MOE_ERR_NOMEM. */
moe_err moe_status_mac(uint8_t out[32], const uint8_t *secret, size_t secret_len, const char *label,
                       const void *msg, size_t len);

/* Decodes and checks a StatusRequest: our protocol version, a 32-byte
 * challenge, a MAC of 0 or 32 bytes; with a secret (secret_len > 0) the MAC
 * must be there and right.  On success *out is the message (free with
 * moemesh__status_request__free_unpacked).  Errors: MOE_ERR_PROTO
 * (undecodable), MOE_ERR_BAD_VERSION, MOE_ERR_BAD_COUNT, MOE_ERR_AUTH. */
moe_err moe_proto_read_status_request(Moemesh__StatusRequest **out, const moe_frame *f,
                                      const uint8_t *secret, size_t secret_len);

/* Decodes and checks a Status answering the request with `challenge`: the
 * body decodes and echoes the challenge, its MAC is there and right when
 * secret_len > 0 (absent or wrong: MOE_ERR_AUTH, the worker does not know
 * the secret), model_id has 32 bytes, name and isa are at most 63 and 15
 * printable bytes, at most MOE_STATUS_MAX_LAYERS layer counts that add up to
 * experts_held, load_done <= load_total.  On success *out is the body (free
 * with moemesh__worker_status__free_unpacked).  Errors: MOE_ERR_PROTO,
 * MOE_ERR_AUTH, MOE_ERR_MISMATCH (another challenge), MOE_ERR_BAD_COUNT,
 * MOE_ERR_BAD_STRING, MOE_ERR_BAD_VALUE, with the field in the detail. */
moe_err moe_proto_read_status(Moemesh__WorkerStatus **out, const moe_frame *f,
                              const uint8_t challenge[32], const uint8_t *secret,
                              size_t secret_len);

/* ---- model identity and authentication (net.c) ------------------------------- */

#define MOE_ID_BYTES 32 /* SHA-256 */

/* The model identity: SHA-256 of the GGUF bytes [0, data offset), i.e. the
 * metadata and the tensor table (of every file in order, for a split model).
 * Errors: MOE_ERR_SYS (libcrypto), MOE_ERR_BAD_OFFSET. */
moe_err moe_model_identity(uint8_t out[MOE_ID_BYTES], const moe_gguf *g);

/* out = HMAC-SHA256(key, msg).  Errors: MOE_ERR_SYS. */
moe_err moe_hmac_sha256(uint8_t out[32], const void *key, size_t key_len, const void *msg,
                        size_t len);

#define MOE_AUTH_COORDINATOR "moemesh-v2 coordinator"
#define MOE_AUTH_WORKER      "moemesh-v2 worker"

/* The handshake's MACs: out = HMAC-SHA256(secret, role || nonce_c || nonce_w
 * || model_id), role MOE_AUTH_COORDINATOR (AUTH) or MOE_AUTH_WORKER
 * (AUTH_OK), the role's bytes without a terminator.  secret_len 0 (no
 * --secret-file) is an empty key: then the MAC only checks that both ends
 * agree on the nonces and the model, it authenticates nobody.  Errors:
 * MOE_ERR_SYS. */
moe_err moe_auth_mac(uint8_t out[32], const uint8_t *secret, size_t secret_len, const char *role,
                     const uint8_t nonce_c[32], const uint8_t nonce_w[32],
                     const uint8_t model_id[MOE_ID_BYTES]);

/* n bytes from the system's CSPRNG.  Errors: MOE_ERR_SYS. */
moe_err moe_random_bytes(void *out, size_t n);

/* Compares n bytes in time independent of where they differ. */
bool moe_bytes_equal_ct(const void *a, const void *b, size_t n);

/* Reads a shared secret (the whole file, trailing newlines dropped, 1..4096
 * bytes) into *out (caller frees) and its length into *len.  Errors:
 * MOE_ERR_IO, MOE_ERR_BAD_VALUE (empty or too long), MOE_ERR_NOMEM. */
moe_err moe_secret_read(uint8_t **out, size_t *len, const char *path);

/* ---- session keys and sealed frames (seal.c) ---------------------------------- */

/* With a secret, every frame from AUTH_OK on (both directions, control and
 * data, the data link's token frame included) is sealed with AES-256-GCM:
 *
 *    prefix (24 bytes, in the clear: framing)   associated data
 *    header, padding, payload                   encrypted in place
 *    tag (16 bytes)                             appended
 *
 * under a key of its link and direction and a 96-bit nonce = the direction's
 * frame counter (64 bits, little-endian) || 4 zero bytes, starting at 0 and
 * never reused: a counter that would wrap refuses to seal.  The receiver
 * keeps its own count, so a tampered, replayed, dropped or reordered frame
 * fails its tag (MOE_ERR_AUTH) and the link is dropped.  Without a secret
 * frames stay plain. */

#define MOE_SEAL_TAG 16
#define MOE_SEAL_KEY 32

/* The keys of one authenticated handshake: HKDF-SHA256 (RFC 5869) with
 * IKM = the secret, salt = nonce_c || nonce_w || model id, info = one of
 * the MOE_KEY_* labels (ASCII, no terminator), 32 bytes each. */
typedef struct moe_session_keys {
	uint8_t ctl_cw[MOE_SEAL_KEY];  /* control, coordinator -> worker */
	uint8_t ctl_wc[MOE_SEAL_KEY];  /* control, worker -> coordinator */
	uint8_t data_cw[MOE_SEAL_KEY]; /* data, coordinator -> worker */
	uint8_t data_wc[MOE_SEAL_KEY]; /* data, worker -> coordinator */
} moe_session_keys;

#define MOE_KEY_CTL_CW  "moemesh-v3 control coordinator to worker"
#define MOE_KEY_CTL_WC  "moemesh-v3 control worker to coordinator"
#define MOE_KEY_DATA_CW "moemesh-v3 data coordinator to worker"
#define MOE_KEY_DATA_WC "moemesh-v3 data worker to coordinator"

/* Derives the four keys (secret_len > 0).  Errors: MOE_ERR_INVAL (no
 * secret), MOE_ERR_SYS (libcrypto). */
moe_err moe_session_derive(moe_session_keys *out, const uint8_t *secret, size_t secret_len,
                           const uint8_t nonce_c[32], const uint8_t nonce_w[32],
                           const uint8_t model_id[MOE_ID_BYTES]);

/* Wipes the keys (memory the compiler may not skip). */
void moe_session_wipe(moe_session_keys *k);

/* One direction of one link: an AES-256-GCM key and its frame counter, for
 * sealing (seal true) or opening.  Not thread-safe: one user at a time. */
typedef struct moe_aead moe_aead;

/* Errors: MOE_ERR_NOMEM, MOE_ERR_SYS (libcrypto). */
moe_err moe_aead_create(moe_aead **out, const uint8_t key[MOE_SEAL_KEY], bool seal);
void moe_aead_destroy(moe_aead *a); /* NULL: no-op */

/* Frames sealed or opened so far (the next nonce). */
uint64_t moe_aead_count(const moe_aead *a);

/* Seals a whole frame of len >= MOE_PROTO_PREFIX bytes in place (bytes
 * from the prefix on encrypted, the prefix authenticated) and writes its tag.
 * Errors: MOE_ERR_INVAL (not a sealer, or len too short), MOE_ERR_CLOSED
 * (the counter is used up), MOE_ERR_SYS. */
moe_err moe_aead_seal_frame(moe_aead *a, uint8_t tag[MOE_SEAL_TAG], void *frame, size_t len);

/* Opens a frame sealed by moe_aead_seal_frame, in place, with the next
 * counter.  On MOE_ERR_AUTH (tampered, replayed, reordered, or another key)
 * the bytes are garbage and the link must be dropped; the counter does not
 * advance.  Errors: MOE_ERR_AUTH, MOE_ERR_INVAL, MOE_ERR_CLOSED, MOE_ERR_SYS. */
moe_err moe_aead_open_frame(moe_aead *a, void *frame, size_t len, const uint8_t tag[MOE_SEAL_TAG]);

/* Opens (when open is not NULL: the message must be a sealed frame, its
 * tag then trimmed) and parses the frame of m; *f views m's body.  A plain
 * frame on a sealed link is MOE_ERR_AUTH, its text quoted in the detail when
 * it is a plain ERROR (what a peer that refused our AUTH sends).  Errors:
 * MOE_ERR_AUTH, those of moe_frame_parse and moe_aead_open_frame. */
moe_err moe_nng_open(moe_frame *f, nng_msg *m, moe_aead *open);

/* moe_nng_send and moe_nng_recv on a sealed link (seal / open NULL: plain).
 * Errors: theirs, and those of moe_aead_seal_frame / moe_nng_open (the
 * message is then freed). */
moe_err moe_nng_send_sealed(nng_socket s, moe_aead *seal, moe_msg_kind kind,
                            const ProtobufCMessage *msg);
moe_err moe_nng_recv_sealed(nng_msg **msg, moe_frame *f, nng_socket s, moe_aead *open,
                            int timeout_ms);

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

/* Splits "tcp://HOST:PORT" into host[0..host_size) and *port: HOST a name,
 * an IPv4 address, "[IPv6 address]" (written without the brackets), or empty
 * or "*" for any address (written as "").  MOE_ERR_INVAL naming url and what
 * is wrong with it. */
moe_err moe_url_tcp_split(char *host, size_t host_size, uint16_t *port, const char *url);

/* Whether url reaches only this machine: ipc://, or tcp:// on localhost,
 * 127.0.0.0/8 or ::1 (written [::1]; also ::ffff:127.x.y.z).  Any other
 * host, a name included (no lookup), and HOST "*" or empty (every
 * address) are not; nor is a URL that does not parse. */
bool moe_url_is_loopback(const char *url);

/* Listens on host:*port (TCP, *port 0 = any; set to the port bound): host a
 * name or an IPv4 or IPv6 address (the first of its addresses that binds),
 * or "" for every address (IPv6 and IPv4 on one socket where the system has
 * IPv6).  Errors: MOE_ERR_SYS, MOE_ERR_INVAL (host unknown). */
moe_err moe_sock_listen_tcp(int *fd, const char *host, uint16_t *port);

/* Listens on a Unix-domain socket at path (an old socket file is replaced). */
moe_err moe_sock_listen_unix(int *fd, const char *path);

/* Connects (blocking, TCP_NODELAY) to host:port (a name, tried address by
 * address, or an IPv4 or IPv6 address) or to a Unix socket path; gives up on
 * an address after timeout_ms.  Errors: MOE_ERR_SYS, MOE_ERR_TIMEOUT,
 * MOE_ERR_INVAL (host unknown), naming the host and address. */
moe_err moe_sock_connect_tcp(int *fd, const char *host, uint16_t port, int timeout_ms);
moe_err moe_sock_connect_unix(int *fd, const char *path);

/* The status datagram socket of a worker whose control URL is url: UDP on
 * tcp://HOST:PORT's host and port (port, if not 0, replaces the URL's: the
 * port nng bound for PORT 0), or the Unix datagram socket PATH.status for
 * ipc://PATH (an old one replaced).  Non-blocking, close-on-exec.  Errors:
 * MOE_ERR_INVAL (the URL), MOE_ERR_SYS naming the address. */
moe_err moe_dgram_listen(int *fd, const char *url, uint16_t port);

/* A datagram socket connected to that status socket of url (UDP to the
 * first address of HOST, or PATH.status from an automatically bound
 * abstract Unix address).  Errors: MOE_ERR_INVAL (the URL, or a host that
 * does not resolve), MOE_ERR_SYS. */
moe_err moe_dgram_connect(int *fd, const char *url);

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

/* moe_stream_send sealed with seal (NULL: plain, as moe_stream_send).  The
 * payload is encrypted where it lies when in_place (the caller's bytes are
 * then ciphertext), else into a buffer of seal's (one pass either way), and
 * the frame goes out in one writev.  Errors: those of moe_stream_send and
 * moe_aead_seal_frame, MOE_ERR_NOMEM. */
moe_err moe_stream_send_sealed(int fd, moe_aead *seal, moe_msg_kind kind,
                               const ProtobufCMessage *msg, const struct iovec *payload,
                               int n_payload, bool in_place);

/* A frame being received from a stream: the buffer grows to the frame's size
 * (checked against max_frame from the prefix before anything is allocated)
 * and is 64-byte aligned, so payloads are used where they lie. */
typedef struct moe_rx {
	uint8_t *buf; /* [cap], moe_aligned_alloc */
	size_t cap;
	size_t have;    /* bytes of the current frame received */
	size_t need;    /* its total length (with the tag), 0 until the prefix is in */
	moe_aead *open; /* sealed link: frames are opened with it (owned; NULL: plain) */
	bool broken;    /* a frame failed its tag: the stream must close */
} moe_rx;

/* Reads what fd has without blocking (or, if block, until the frame is
 * complete) and sets *done when a whole frame is in; *f then views it (valid
 * until the next call; opened in place first when rx->open is set: a sealed
 * frame is followed by its tag).  The next call starts a new frame.  Errors:
 * MOE_ERR_CLOSED (EOF; mid-frame: the detail says so), MOE_ERR_IO, those of
 * moe_frame_length (the stream cannot be resynchronised: close it),
 * MOE_ERR_BAD_COUNT (frame longer than max_frame), MOE_ERR_NOMEM,
 * MOE_ERR_AUTH (a sealed frame failed its tag: close). */
moe_err moe_rx_read(bool *done, moe_frame *f, moe_rx *rx, int fd, size_t max_frame, bool block);

void moe_rx_free(moe_rx *rx); /* frees the buffer and rx->open; the struct may be reused */

/* After an error of moe_rx_read: true if the bad frame was read to its end
 * (its prefix was sound, what followed was not), so the stream is still in
 * step and the reader may answer and go on; false if the stream must close. */
bool moe_rx_in_sync(const moe_rx *rx);

#endif
