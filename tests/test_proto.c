/* test_proto.c - frames of the cluster protocol and validation of headers. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static const moe_proto_limits lim = {
    .n_layer = 4, .n_expert = 16, .n_expert_used = 4, .n_embd = 128, .max_tokens = 64};

/* A valid DISPATCH frame for n_tok tokens of Q8_0 activations. */
static uint8_t *make_dispatch(size_t *len, uint32_t n_tok, int32_t *ids, float *w)
{
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	size_t row = 4 * 34; /* Q8_0: 128 values = 4 blocks of 34 bytes */

	d.step = 7;
	d.layer = 2;
	d.n_tokens = n_tok;
	d.act_type = MOE_TYPE_Q8_0;
	d.n_embd = 128;
	d.n_used = 4;
	d.n_expert_ids = n_tok * 4;
	d.expert_ids = ids;
	d.n_weights = n_tok * 4;
	d.weights = w;
	size_t hlen = protobuf_c_message_get_packed_size(&d.base);
	*len = moe_frame_size(hlen, row * n_tok);
	uint8_t *buf = malloc(*len);
	cr_assert_eq(moe_frame_write(buf, *len, MOE_MSG_DISPATCH, &d.base, row * n_tok), MOE_OK);
	memset(buf + moe_frame_payload_offset(hlen), 0x5a, row * n_tok);
	return buf;
}

Test(proto, frame_round_trip_and_alignment)
{
	int32_t ids[8] = {0, 1, 2, 3, 15, -1, 4, 5};
	float w[8] = {.25f, .25f, .25f, .25f, .5f, 0, .3f, .2f};
	size_t len;
	uint8_t *buf = make_dispatch(&len, 2, ids, w);
	moe_frame f;

	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(f.kind, MOE_MSG_DISPATCH);
	cr_assert_eq((size_t)(f.payload - buf) % MOE_PROTO_ALIGN, 0);
	cr_assert_eq(f.payload_len, 2 * 4 * 34);
	cr_assert_eq(f.payload[0], 0x5a);
	Moemesh__Dispatch *d = NULL;
	cr_assert_eq(moe_proto_read_dispatch(&d, &f, &lim), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(d->step, 7);
	cr_assert_eq(d->layer, 2);
	cr_assert_eq(d->n_expert_ids, 8);
	cr_assert_eq(d->expert_ids[4], 15);
	cr_assert_eq(d->expert_ids[5], -1);
	cr_assert_float_eq(d->weights[6], .3f, 0);
	moemesh__dispatch__free_unpacked(d, NULL);
	free(buf);
}

Test(proto, truncated_at_every_offset_is_rejected)
{
	int32_t ids[4] = {0, 1, 2, 3};
	float w[4] = {.25f, .25f, .25f, .25f};
	size_t len;
	uint8_t *buf = make_dispatch(&len, 1, ids, w);
	moe_frame f;

	for (size_t n = 0; n < len; n++) {
		/* a fresh copy of exactly n bytes, so ASan sees any read past it */
		uint8_t *cut = malloc(n ? n : 1);
		memcpy(cut, buf, n);
		cr_assert_eq(moe_frame_parse(&f, cut, n), MOE_ERR_TRUNCATED, "length %zu", n);
		free(cut);
	}
	free(buf);
}

Test(proto, bad_prefix_fields)
{
	int32_t ids[4] = {0, 1, 2, 3};
	float w[4] = {.25f, .25f, .25f, .25f};
	size_t len;
	uint8_t *buf = make_dispatch(&len, 1, ids, w);
	uint8_t *b = malloc(len + 1);
	moe_frame f;

	memcpy(b, buf, len);
	b[0] ^= 1;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_MAGIC);
	memcpy(b, buf, len);
	b[4] = 9;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_VERSION);
	memcpy(b, buf, len);
	b[6] = 0;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_TYPE);
	b[6] = MOE_MSG_KIND_COUNT;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_TYPE);
	memcpy(b, buf, len);
	b[11] = 0x7f; /* header length ~2 GiB */
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_COUNT);
	memcpy(b, buf, len);
	b[23] = 0x7f; /* payload length ~2^62 */
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_COUNT);
	memcpy(b, buf, len);
	b[12] = 1;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_VALUE);
	memcpy(b, buf, len);
	b[len] = 0;
	cr_assert_eq(moe_frame_parse(&f, b, len + 1), MOE_ERR_BAD_COUNT); /* trailing byte */
	/* nonzero padding: the byte just before the payload is padding here */
	memcpy(b, buf, len);
	size_t hlen = b[8] | b[9] << 8;
	size_t off = moe_frame_payload_offset(hlen);
	cr_assert_gt(off, MOE_PROTO_PREFIX + hlen, "the test frame needs padding");
	b[off - 1] = 1;
	cr_assert_eq(moe_frame_parse(&f, b, len), MOE_ERR_BAD_VALUE);
	free(b);
	free(buf);
}

/* Builds a dispatch with one field spoiled and returns the read error. */
static moe_err dispatch_with(void (*spoil)(Moemesh__Dispatch *), size_t payload_len)
{
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	int32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
	float w[8] = {1, 1, 1, 1, 1, 1, 1, 1};
	moe_frame f;

	d.layer = 1;
	d.n_tokens = 2;
	d.act_type = MOE_TYPE_Q8_0;
	d.n_embd = 128;
	d.n_used = 4;
	d.n_expert_ids = 8;
	d.expert_ids = ids;
	d.n_weights = 8;
	d.weights = w;
	spoil(&d);
	size_t hlen = protobuf_c_message_get_packed_size(&d.base);
	size_t len = moe_frame_size(hlen, payload_len);
	uint8_t *buf = calloc(1, len);
	cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_DISPATCH, &d.base, payload_len), MOE_OK);
	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK);
	Moemesh__Dispatch *out = NULL;
	moe_err err = moe_proto_read_dispatch(&out, &f, &lim);
	if (out)
		moemesh__dispatch__free_unpacked(out, NULL);
	free(buf);
	return err;
}

static void nothing(Moemesh__Dispatch *d)
{
	(void)d;
}
static void layer_big(Moemesh__Dispatch *d)
{
	d->layer = 4;
}
static void tokens_zero(Moemesh__Dispatch *d)
{
	d->n_tokens = 0;
}
static void tokens_big(Moemesh__Dispatch *d)
{
	d->n_tokens = 65;
}
static void embd_wrong(Moemesh__Dispatch *d)
{
	d->n_embd = 256;
}
static void used_wrong(Moemesh__Dispatch *d)
{
	d->n_used = 3;
}
static void ids_short(Moemesh__Dispatch *d)
{
	d->n_expert_ids = 7;
}
static void weights_short(Moemesh__Dispatch *d)
{
	d->n_weights = 5;
}
static void expert_big(Moemesh__Dispatch *d)
{
	d->expert_ids[3] = 16;
}
static void expert_neg(Moemesh__Dispatch *d)
{
	d->expert_ids[0] = -2;
}
static void weight_nan(Moemesh__Dispatch *d)
{
	d->weights[2] = NAN;
}
static void act_weird(Moemesh__Dispatch *d)
{
	d->act_type = MOE_TYPE_Q4_K;
}

Test(proto, dispatch_checks_every_field)
{
	const size_t ok = 2 * 4 * 34;
	cr_assert_eq(dispatch_with(nothing, ok), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(dispatch_with(nothing, ok - 1), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(nothing, ok + 34), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(layer_big, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(tokens_zero, ok), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(tokens_big, ok), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(embd_wrong, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(used_wrong, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(ids_short, ok), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(weights_short, ok), MOE_ERR_BAD_COUNT);
	cr_assert_eq(dispatch_with(expert_big, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(expert_neg, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(weight_nan, ok), MOE_ERR_BAD_VALUE);
	cr_assert_eq(dispatch_with(act_weird, ok), MOE_ERR_BAD_TYPE);
}

Test(proto, garbage_header_is_a_protocol_error)
{
	uint8_t junk[41];
	size_t len = moe_frame_size(sizeof(junk), 0);
	uint8_t *buf = calloc(1, len);
	moe_frame f;
	Moemesh__Dispatch *d = NULL;

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = 0xff;
	cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_DISPATCH, NULL, 0), MOE_ERR_INVAL);
	/* hand-build: prefix then junk */
	cr_assert_eq(moe_frame_write(buf, moe_frame_size(0, 0), MOE_MSG_DISPATCH, NULL, 0), MOE_OK);
	buf[8] = sizeof(junk);
	memcpy(buf + MOE_PROTO_PREFIX, junk, sizeof(junk));
	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_proto_read_dispatch(&d, &f, &lim), MOE_ERR_PROTO);
	cr_assert_null(d);
	free(buf);
}

Test(proto, result_must_answer_its_dispatch)
{
	Moemesh__Result r = MOEMESH__RESULT__INIT;
	moe_frame f;
	Moemesh__Result *out = NULL;

	r.step = 3;
	r.layer = 1;
	r.n_tokens = 2;
	r.n_embd = 128;
	size_t hlen = protobuf_c_message_get_packed_size(&r.base);
	size_t plen = 2 * 128 * 8;
	size_t len = moe_frame_size(hlen, plen);
	uint8_t *buf = calloc(1, len);
	cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_RESULT, &r.base, plen), MOE_OK);
	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK);
	cr_assert_eq(moe_proto_read_result(&out, &f, 3, 1, 2, 128), MOE_OK);
	moemesh__result__free_unpacked(out, NULL);
	out = NULL;
	cr_assert_eq(moe_proto_read_result(&out, &f, 4, 1, 2, 128), MOE_ERR_PROTO);
	cr_assert_eq(moe_proto_read_result(&out, &f, 3, 0, 2, 128), MOE_ERR_PROTO);
	cr_assert_eq(moe_proto_read_result(&out, &f, 3, 1, 3, 128), MOE_ERR_PROTO);
	cr_assert_null(out);
	free(buf);
}

Test(proto, assign_checks_layers_and_experts)
{
	Moemesh__ExpertRange r0 = MOEMESH__EXPERT_RANGE__INIT, r1 = MOEMESH__EXPERT_RANGE__INIT;
	Moemesh__LayerExperts l0 = MOEMESH__LAYER_EXPERTS__INIT, l1 = MOEMESH__LAYER_EXPERTS__INIT;
	Moemesh__ExpertRange *ranges0[1] = {&r0}, *ranges1[1] = {&r1};
	Moemesh__LayerExperts *layers[2] = {&l0, &l1};
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	uint32_t extra[2] = {15, 3};
	moe_frame f;

	r0.first = 0;
	r0.count = 8;
	r1.first = 8;
	r1.count = 8;
	l0.layer = 0;
	l0.n_ranges = 1;
	l0.ranges = ranges0;
	l1.layer = 3;
	l1.n_ranges = 1;
	l1.ranges = ranges1;
	l1.n_experts = 2;
	l1.experts = extra;
	a.n_layers = 2;
	a.layers = layers;

	for (int c = 0; c < 5; c++) {
		moe_err want = MOE_OK;
		r1.count = 8;
		l1.layer = 3;
		extra[0] = 15;
		if (c == 1) {
			r1.count = 9; /* 8 + 9 > 16 */
			want = MOE_ERR_BAD_VALUE;
		} else if (c == 2) {
			l1.layer = 4;
			want = MOE_ERR_BAD_VALUE;
		} else if (c == 3) {
			l1.layer = 0;
			want = MOE_ERR_DUPLICATE;
		} else if (c == 4) {
			extra[0] = 16;
			want = MOE_ERR_BAD_VALUE;
		}
		size_t hlen = protobuf_c_message_get_packed_size(&a.base);
		size_t len = moe_frame_size(hlen, 0);
		uint8_t *buf = calloc(1, len);
		cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_ASSIGN, &a.base, 0), MOE_OK);
		cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK);
		Moemesh__Assign *out = NULL;
		cr_assert_eq(moe_proto_read_assign(&out, &f, &lim), want, "case %d: %s", c,
		             moe_err_detail());
		if (out)
			moemesh__assign__free_unpacked(out, NULL);
		free(buf);
	}
}

Test(proto, random_bytes_never_crash)
{
	uint32_t s = 12345;
	uint8_t buf[256];
	moe_frame f;

	for (int it = 0; it < 20000; it++) {
		size_t n = 0;
		s = s * 1664525u + 1013904223u;
		n = s % sizeof(buf);
		for (size_t i = 0; i < n; i++) {
			s = s * 1664525u + 1013904223u;
			buf[i] = (uint8_t)(s >> 24);
		}
		if (n >= 8 && (it & 1)) { /* keep a valid prefix half the time */
			buf[0] = 'M';
			buf[1] = 'O';
			buf[2] = 'E';
			buf[3] = '1';
			buf[4] = 1;
			buf[5] = 0;
		}
		if (moe_frame_parse(&f, buf, n) == MOE_OK && f.kind == MOE_MSG_DISPATCH) {
			Moemesh__Dispatch *d = NULL;
			if (moe_proto_read_dispatch(&d, &f, &lim) == MOE_OK)
				moemesh__dispatch__free_unpacked(d, NULL);
		}
	}
}
