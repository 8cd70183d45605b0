/* proto.c - frames of the cluster protocol and validation of their headers. */
#include "proto/proto.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[MOE_MSG_KIND_COUNT] = {
    [MOE_MSG_HELLO] = "HELLO",
    [MOE_MSG_HELLO_REPLY] = "HELLO_REPLY",
    [MOE_MSG_AUTH] = "AUTH",
    [MOE_MSG_ASSIGN] = "ASSIGN",
    [MOE_MSG_LOAD_PROGRESS] = "LOAD_PROGRESS",
    [MOE_MSG_DISPATCH] = "DISPATCH",
    [MOE_MSG_RESULT] = "RESULT",
    [MOE_MSG_HEARTBEAT] = "HEARTBEAT",
    [MOE_MSG_STATS_REQUEST] = "STATS_REQUEST",
    [MOE_MSG_STATS] = "STATS",
    [MOE_MSG_ERROR] = "ERROR",
    [MOE_MSG_SHUTDOWN] = "SHUTDOWN",
    [MOE_MSG_AUTH_OK] = "AUTH_OK",
    [MOE_MSG_STATUS_REQUEST] = "STATUS_REQUEST",
    [MOE_MSG_STATUS] = "STATUS",
};

const char *moe_msg_kind_name(uint32_t kind)
{
	if (kind >= MOE_MSG_KIND_COUNT || kind_names[kind] == NULL)
		return "?";
	return kind_names[kind];
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static void wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void wr64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

size_t moe_frame_payload_offset(size_t header_len)
{
	size_t end = MOE_PROTO_PREFIX + header_len;
	return (end + MOE_PROTO_ALIGN - 1) / MOE_PROTO_ALIGN * MOE_PROTO_ALIGN;
}

size_t moe_frame_size(size_t header_len, size_t payload_len)
{
	if (header_len > MOE_PROTO_MAX_HEADER || payload_len > MOE_PROTO_MAX_PAYLOAD)
		return 0;
	return moe_frame_payload_offset(header_len) + payload_len;
}

moe_err moe_frame_write(void *buf, size_t buf_len, moe_msg_kind kind, const ProtobufCMessage *msg,
                        size_t payload_len)
{
	size_t hlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	size_t size = moe_frame_size(hlen, payload_len), head;

	if (size == 0)
		return moe_fail(MOE_ERR_INVAL, "frame %s: header %zu or payload %zu bytes over cap",
		                moe_msg_kind_name(kind), hlen, payload_len);
	if (buf_len != size)
		return moe_fail(MOE_ERR_INVAL, "frame %s: buffer of %zu bytes, frame is %zu",
		                moe_msg_kind_name(kind), buf_len, size);
	return moe_frame_write_head(&head, buf, buf_len, kind, msg, payload_len);
}

moe_err moe_frame_length(size_t *out, const void *prefix)
{
	const uint8_t *p = prefix;
	uint32_t kind, hlen, reserved;
	uint64_t plen;

	if (rd32(p) != MOE_PROTO_MAGIC)
		return moe_fail(MOE_ERR_BAD_MAGIC, "frame magic 0x%08x at offset 0 is not \"MOE1\"",
		                rd32(p));
	if (rd16(p + 4) != MOE_PROTO_VERSION)
		return moe_fail(MOE_ERR_BAD_VERSION, "frame version %u at offset 4, expected %u",
		                rd16(p + 4), MOE_PROTO_VERSION);
	kind = rd16(p + 6);
	if (kind == 0 || kind >= MOE_MSG_KIND_COUNT)
		return moe_fail(MOE_ERR_BAD_TYPE, "frame kind %u at offset 6 is unknown", kind);
	hlen = rd32(p + 8);
	reserved = rd32(p + 12);
	plen = rd64(p + 16);
	if (hlen > MOE_PROTO_MAX_HEADER)
		return moe_fail(MOE_ERR_BAD_COUNT, "frame header length %u at offset 8 over cap %u",
		                hlen, MOE_PROTO_MAX_HEADER);
	if (plen > MOE_PROTO_MAX_PAYLOAD)
		return moe_fail(
		    MOE_ERR_BAD_COUNT, "frame payload length %llu at offset 16 over cap %llu",
		    (unsigned long long)plen, (unsigned long long)MOE_PROTO_MAX_PAYLOAD);
	if (reserved != 0)
		return moe_fail(MOE_ERR_BAD_VALUE, "frame reserved field at offset 12 is %u, not 0",
		                reserved);
	*out = moe_frame_payload_offset(hlen) + (size_t)plen;
	return MOE_OK;
}

moe_err moe_frame_write_head(size_t *head_len, void *buf, size_t cap, moe_msg_kind kind,
                             const ProtobufCMessage *msg, size_t payload_len)
{
	uint8_t *p = buf;
	size_t hlen = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	size_t off = moe_frame_payload_offset(hlen);

	if (moe_frame_size(hlen, payload_len) == 0)
		return moe_fail(MOE_ERR_INVAL, "frame %s: header %zu or payload %zu bytes over cap",
		                moe_msg_kind_name(kind), hlen, payload_len);
	if (cap < off)
		return moe_fail(MOE_ERR_INVAL, "frame %s: head buffer of %zu bytes, head is %zu",
		                moe_msg_kind_name(kind), cap, off);
	wr32(p, MOE_PROTO_MAGIC);
	wr16(p + 4, MOE_PROTO_VERSION);
	wr16(p + 6, (uint16_t)kind);
	wr32(p + 8, (uint32_t)hlen);
	wr32(p + 12, 0);
	wr64(p + 16, payload_len);
	if (msg)
		protobuf_c_message_pack(msg, p + MOE_PROTO_PREFIX);
	memset(p + MOE_PROTO_PREFIX + hlen, 0, off - MOE_PROTO_PREFIX - hlen);
	*head_len = off;
	return MOE_OK;
}

moe_err moe_frame_parse(moe_frame *out, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t kind, hlen;
	uint64_t plen;
	size_t off, total;
	moe_err err;

	if (len < MOE_PROTO_PREFIX)
		return moe_fail(MOE_ERR_TRUNCATED,
		                "frame of %zu bytes is shorter than its %d-byte prefix", len,
		                MOE_PROTO_PREFIX);
	if ((err = moe_frame_length(&total, p)) != MOE_OK)
		return err;
	kind = rd16(p + 6);
	hlen = rd32(p + 8);
	plen = rd64(p + 16);
	off = moe_frame_payload_offset(hlen);
	if (len < off + plen)
		return moe_fail(
		    MOE_ERR_TRUNCATED,
		    "%s frame of %zu bytes, its header (%u) and payload (%llu) need %zu",
		    moe_msg_kind_name(kind), len, hlen, (unsigned long long)plen,
		    off + (size_t)plen);
	if (len > off + plen)
		return moe_fail(MOE_ERR_BAD_COUNT, "%s frame has %zu bytes after its payload",
		                moe_msg_kind_name(kind), len - off - (size_t)plen);
	for (size_t i = MOE_PROTO_PREFIX + hlen; i < off; i++)
		if (p[i] != 0)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "frame padding at offset %zu is not zero", i);
	out->kind = (moe_msg_kind)kind;
	out->header = p + MOE_PROTO_PREFIX;
	out->header_len = hlen;
	out->payload = p + off;
	out->payload_len = (size_t)plen;
	return MOE_OK;
}

static bool act_type_ok(uint32_t t)
{
	return t == MOE_TYPE_F32 || t == MOE_TYPE_Q8_0 || t == MOE_TYPE_Q8_1 || t == MOE_TYPE_Q8_K;
}

moe_err moe_proto_read_dispatch(Moemesh__Dispatch **out, const moe_frame *f,
                                const moe_proto_limits *lim)
{
	Moemesh__Dispatch *d;
	uint32_t max_tokens = lim->max_tokens ? lim->max_tokens : MOE_PROTO_MAX_TOKENS;
	size_t row, want;
	moe_err err;

	if (f->kind != MOE_MSG_DISPATCH)
		return moe_fail(MOE_ERR_PROTO, "expected DISPATCH, got %s",
		                moe_msg_kind_name(f->kind));
	d = moemesh__dispatch__unpack(NULL, f->header_len, f->header);
	if (d == NULL)
		return moe_fail(MOE_ERR_PROTO, "DISPATCH header of %zu bytes does not decode",
		                f->header_len);
	if (d->layer >= lim->n_layer) {
		err = moe_fail(MOE_ERR_BAD_VALUE, "DISPATCH layer %u >= n_layer %u", d->layer,
		               lim->n_layer);
		goto out_free;
	}
	if (d->n_tokens == 0 || d->n_tokens > max_tokens) {
		err = moe_fail(MOE_ERR_BAD_COUNT, "DISPATCH n_tokens %u not in 1..%u", d->n_tokens,
		               max_tokens);
		goto out_free;
	}
	if (d->n_embd != lim->n_embd) {
		err = moe_fail(MOE_ERR_BAD_VALUE, "DISPATCH n_embd %u, model has %u", d->n_embd,
		               lim->n_embd);
		goto out_free;
	}
	if (d->n_used == 0 || d->n_used != lim->n_expert_used) {
		err = moe_fail(MOE_ERR_BAD_VALUE, "DISPATCH n_used %u, model uses %u", d->n_used,
		               lim->n_expert_used);
		goto out_free;
	}
	if (d->n_expert_ids != (size_t)d->n_tokens * d->n_used ||
	    d->n_weights != (size_t)d->n_tokens * d->n_used) {
		err =
		    moe_fail(MOE_ERR_BAD_COUNT,
		             "DISPATCH has %zu expert ids and %zu weights for %u tokens x %u slots",
		             d->n_expert_ids, d->n_weights, d->n_tokens, d->n_used);
		goto out_free;
	}
	for (size_t i = 0; i < d->n_expert_ids; i++) {
		if (d->expert_ids[i] < -1 || d->expert_ids[i] >= (int32_t)lim->n_expert) {
			err = moe_fail(MOE_ERR_BAD_VALUE,
			               "DISPATCH expert_ids[%zu] = %d not in -1..%u", i,
			               d->expert_ids[i], lim->n_expert - 1);
			goto out_free;
		}
		if (!isfinite(d->weights[i])) {
			err = moe_fail(MOE_ERR_BAD_VALUE, "DISPATCH weights[%zu] is not finite", i);
			goto out_free;
		}
	}
	if (!act_type_ok(d->act_type)) {
		err = moe_fail(MOE_ERR_BAD_TYPE, "DISPATCH act_type %u is not an activation type",
		               d->act_type);
		goto out_free;
	}
	row = moe_row_size((moe_type)d->act_type, d->n_embd);
	if (row == 0 || !moe_size_mul(&want, row, d->n_tokens) || want != f->payload_len) {
		err = moe_fail(
		    MOE_ERR_BAD_COUNT, "DISPATCH payload %zu bytes, %u rows of %s[%u] need %zu",
		    f->payload_len, d->n_tokens, moe_type_get((moe_type)d->act_type)->name,
		    d->n_embd, row * d->n_tokens);
		goto out_free;
	}
	*out = d;
	return MOE_OK;

out_free:
	moemesh__dispatch__free_unpacked(d, NULL);
	return err;
}

moe_err moe_proto_read_result(Moemesh__Result **out, const moe_frame *f, uint64_t step,
                              uint32_t layer, uint32_t n_tokens, uint32_t n_embd)
{
	Moemesh__Result *r;
	moe_err err;

	if (f->kind != MOE_MSG_RESULT)
		return moe_fail(MOE_ERR_PROTO, "expected RESULT, got %s",
		                moe_msg_kind_name(f->kind));
	r = moemesh__result__unpack(NULL, f->header_len, f->header);
	if (r == NULL)
		return moe_fail(MOE_ERR_PROTO, "RESULT header of %zu bytes does not decode",
		                f->header_len);
	if (r->step != step || r->layer != layer || r->n_tokens != n_tokens ||
	    r->n_embd != n_embd) {
		err = moe_fail(MOE_ERR_PROTO,
		               "RESULT for step %llu layer %u (%u x %u) answers step %llu layer %u "
		               "(%u x %u)",
		               (unsigned long long)r->step, r->layer, r->n_tokens, r->n_embd,
		               (unsigned long long)step, layer, n_tokens, n_embd);
		goto out_free;
	}
	if (f->payload_len != (size_t)n_tokens * n_embd * sizeof(int64_t)) {
		err = moe_fail(MOE_ERR_BAD_COUNT, "RESULT payload %zu bytes, expected %zu",
		               f->payload_len, (size_t)n_tokens * n_embd * sizeof(int64_t));
		goto out_free;
	}
	*out = r;
	return MOE_OK;

out_free:
	moemesh__result__free_unpacked(r, NULL);
	return err;
}

moe_err moe_proto_read_assign(Moemesh__Assign **out, const moe_frame *f,
                              const moe_proto_limits *lim)
{
	Moemesh__Assign *a;
	moe_err err;

	if (f->kind != MOE_MSG_ASSIGN)
		return moe_fail(MOE_ERR_PROTO, "expected ASSIGN, got %s",
		                moe_msg_kind_name(f->kind));
	a = moemesh__assign__unpack(NULL, f->header_len, f->header);
	if (a == NULL)
		return moe_fail(MOE_ERR_PROTO, "ASSIGN header of %zu bytes does not decode",
		                f->header_len);
	for (size_t i = 0; i < a->n_layers; i++) {
		const Moemesh__LayerExperts *le = a->layers[i];
		if (le->layer >= lim->n_layer) {
			err =
			    moe_fail(MOE_ERR_BAD_VALUE, "ASSIGN layers[%zu].layer %u >= n_layer %u",
			             i, le->layer, lim->n_layer);
			goto out_free;
		}
		for (size_t j = 0; j < i; j++) {
			if (a->layers[j]->layer == le->layer) {
				err = moe_fail(MOE_ERR_DUPLICATE, "ASSIGN names layer %u twice",
				               le->layer);
				goto out_free;
			}
		}
		for (size_t j = 0; j < le->n_ranges; j++) {
			uint64_t end = (uint64_t)le->ranges[j]->first + le->ranges[j]->count;
			if (le->ranges[j]->count == 0 || end > lim->n_expert) {
				err = moe_fail(MOE_ERR_BAD_VALUE,
				               "ASSIGN layer %u range %u+%u outside 0..%u",
				               le->layer, le->ranges[j]->first,
				               le->ranges[j]->count, lim->n_expert);
				goto out_free;
			}
		}
		for (size_t j = 0; j < le->n_experts; j++) {
			if (le->experts[j] >= lim->n_expert) {
				err = moe_fail(MOE_ERR_BAD_VALUE, "ASSIGN layer %u expert %u >= %u",
				               le->layer, le->experts[j], lim->n_expert);
				goto out_free;
			}
		}
	}
	*out = a;
	return MOE_OK;

out_free:
	moemesh__assign__free_unpacked(a, NULL);
	return err;
}
