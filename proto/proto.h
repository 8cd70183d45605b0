/*
 * proto.h - the cluster wire protocol: frames and their validation.
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
 * moe_proto_check_*; a worker answers a frame that fails any check with an
 * Error message and keeps serving.
 */
#ifndef MOE_PROTO_H
#define MOE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "proto/moemesh.pb-c.h"

#define MOE_PROTO_VERSION     1
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

#endif
