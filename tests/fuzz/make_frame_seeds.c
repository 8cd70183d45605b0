/*
 * make_frame_seeds.c - writes the seed corpus of fuzz_frame (one frame per
 * file, as moe_frame_write lays them out): a Hello, a HelloReply, an Assign,
 * a Dispatch and a Result that pass proto's checks against fuzz_frame's
 * limits, and a Heartbeat, Stats, LoadProgress and Error.  Run by hand:
 *   build/fuzz/tests/fuzz/fuzz_make_frame_seeds tests/fuzz/corpus/frame
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static int write_frame(const char *dir, const char *name, moe_msg_kind kind,
                       const ProtobufCMessage *msg, const void *payload, size_t payload_len)
{
	const size_t hl = msg ? protobuf_c_message_get_packed_size(msg) : 0;
	const size_t n = moe_frame_size(hl, payload_len);
	uint8_t *buf = calloc(1, n);
	if (buf == NULL || moe_frame_write(buf, n, kind, msg, payload_len) != MOE_OK)
		return 1;
	if (payload_len)
		memcpy(buf + moe_frame_payload_offset(hl), payload, payload_len);
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	const int bad = f == NULL || fwrite(buf, 1, n, f) != n;
	if (f != NULL && fclose(f) != 0)
		return 1;
	free(buf);
	return bad;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	const char *dir = argv[1];
	uint8_t id[32], ch[32];
	memset(id, 0xa5, sizeof id);
	memset(ch, 0x3c, sizeof ch);
	int bad = 0;

	Moemesh__Hello hello = MOEMESH__HELLO__INIT;
	hello.protocol_version = MOE_PROTO_VERSION;
	hello.model_id = (ProtobufCBinaryData){sizeof id, id};
	hello.name = "coordinator";
	hello.challenge = (ProtobufCBinaryData){sizeof ch, ch};
	bad |= write_frame(dir, "hello", MOE_MSG_HELLO, &hello.base, NULL, 0);

	Moemesh__HelloReply hr = MOEMESH__HELLO_REPLY__INIT;
	hr.protocol_version = MOE_PROTO_VERSION;
	hr.challenge = (ProtobufCBinaryData){sizeof ch, ch};
	bad |= write_frame(dir, "hello_reply", MOE_MSG_HELLO_REPLY, &hr.base, NULL, 0);

	Moemesh__ExpertRange rg = MOEMESH__EXPERT_RANGE__INIT;
	rg.first = 0;
	rg.count = 8;
	Moemesh__ExpertRange *rgs[] = {&rg};
	uint32_t ex[] = {9, 12};
	Moemesh__LayerExperts l0 = MOEMESH__LAYER_EXPERTS__INIT, l3 = MOEMESH__LAYER_EXPERTS__INIT;
	l0.layer = 0;
	l0.n_ranges = 1;
	l0.ranges = rgs;
	l3.layer = 3;
	l3.n_experts = 2;
	l3.experts = ex;
	Moemesh__LayerExperts *ls[] = {&l0, &l3};
	Moemesh__Assign as = MOEMESH__ASSIGN__INIT;
	as.n_layers = 2;
	as.layers = ls;
	bad |= write_frame(dir, "assign", MOE_MSG_ASSIGN, &as.base, NULL, 0);

	/* 2 tokens x 4 slots of a 16-expert, n_embd 8 layer; f32 activations */
	int32_t ids[8] = {0, 5, -1, 15, 2, -1, 7, 1};
	float w[8] = {0.4f, 0.3f, 0.2f, 0.1f, 0.25f, 0.25f, 0.25f, 0.25f};
	float act[16];
	for (int i = 0; i < 16; i++)
		act[i] = (float)i * 0.125f - 1.0f;
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	d.step = 7;
	d.layer = 1;
	d.n_tokens = 2;
	d.act_type = MOE_TYPE_F32;
	d.n_embd = 8;
	d.n_used = 4;
	d.n_expert_ids = 8;
	d.expert_ids = ids;
	d.n_weights = 8;
	d.weights = w;
	bad |= write_frame(dir, "dispatch", MOE_MSG_DISPATCH, &d.base, act, sizeof act);

	int64_t sums[16];
	for (int i = 0; i < 16; i++)
		sums[i] = (int64_t)i << 20;
	Moemesh__Result r = MOEMESH__RESULT__INIT;
	r.step = 7;
	r.layer = 1;
	r.n_tokens = 2;
	r.n_embd = 8;
	r.compute_ns = 12345;
	bad |= write_frame(dir, "result", MOE_MSG_RESULT, &r.base, sums, sizeof sums);

	Moemesh__Heartbeat hb = MOEMESH__HEARTBEAT__INIT;
	hb.seq = 3;
	hb.time_ns = 1000000;
	bad |= write_frame(dir, "heartbeat", MOE_MSG_HEARTBEAT, &hb.base, NULL, 0);

	Moemesh__Stats st = MOEMESH__STATS__INIT;
	st.dispatches = 10;
	st.tokens = 20;
	st.experts_held = 64;
	bad |= write_frame(dir, "stats", MOE_MSG_STATS, &st.base, NULL, 0);

	Moemesh__LoadProgress lp = MOEMESH__LOAD_PROGRESS__INIT;
	lp.bytes_done = 1 << 20;
	lp.bytes_total = 1 << 22;
	lp.seconds = 0.5;
	bad |= write_frame(dir, "load_progress", MOE_MSG_LOAD_PROGRESS, &lp.base, NULL, 0);

	Moemesh__Error er = MOEMESH__ERROR__INIT;
	er.code = 3;
	er.message = "expert 5 of layer 1 is not held";
	er.step = 7;
	bad |= write_frame(dir, "error", MOE_MSG_ERROR, &er.base, NULL, 0);

	bad |= write_frame(dir, "shutdown", MOE_MSG_SHUTDOWN, NULL, NULL, 0);
	if (bad)
		fprintf(stderr, "writing the seeds failed\n");
	return bad;
}
