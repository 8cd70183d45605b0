/* test_proto.c - frames of the cluster protocol and validation of headers:
 * hand-made frames for each check, and a seeded fuzz run that starts from
 * valid DISPATCH, ASSIGN and RESULT frames, mutates their fields, header
 * bytes, lengths and prefixes, and holds every outcome of moe_frame_parse and
 * moe_proto_read_* to the documented contract. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- fuzzing: valid frames, mutated ------------------------------------------------- */

/* Each iteration makes a valid DISPATCH, ASSIGN or RESULT message with random
 * contents, then maybe (1) changes one field to a value the reader must refuse
 * or one it must accept, (2) mutates the packed header bytes (bit flips,
 * overwrites, cuts, insertions, repeats), (3) changes the payload length or
 * the kind, (4) corrupts the 24-byte prefix, the padding or the frame length.
 * Frames whose prefix was left alone are laid out consistently, so they pass
 * moe_frame_parse and reach the reader of their kind.  What is known of the
 * outcome is asserted (a frame built right parses; an untouched or validly
 * changed message is accepted; a refused field is refused); anything a
 * reader accepts must satisfy its documented checks, and a refusal must leave
 * *out NULL and use a documented error. */

enum { FZ_DISPATCH, FZ_ASSIGN, FZ_RESULT, FZ_KINDS };
enum { FZ_UNKNOWN, FZ_ACCEPT, FZ_REJECT };
enum { FZ_ITERATIONS = 30000, FZ_MAX_HEADER = 1024 };

static uint64_t fz_state;

static uint64_t fz_next(void) /* splitmix64 */
{
	uint64_t z = (fz_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t fz_below(uint32_t n)
{
	return (uint32_t)(fz_next() % n);
}

static bool fz_chance(unsigned percent)
{
	return fz_below(100) < percent;
}

/* A value >= bound: half the time bound itself, often bound + 1, else any. */
static uint32_t fz_at_least(uint32_t bound)
{
	const uint32_t r = fz_below(4);
	return r < 2 ? bound : r == 2 ? bound + 1 : bound + fz_below(UINT32_MAX - bound);
}

typedef struct fz_case {
	moe_msg_kind kind;
	uint8_t hdr[FZ_MAX_HEADER];
	size_t hlen;
	size_t plen;
	int expect;         /* FZ_ACCEPT / FZ_REJECT / FZ_UNKNOWN by the reader */
	bool prefix_broken; /* the frame layout was corrupted: parse may refuse */
	/* RESULT: what the reader is told the dispatch was */
	uint64_t step;
	uint32_t layer, n_tokens, n_embd;
} fz_case;

static void fz_pack(fz_case *c, const ProtobufCMessage *m)
{
	c->hlen = protobuf_c_message_get_packed_size(m);
	cr_assert_leq(c->hlen, sizeof(c->hdr));
	protobuf_c_message_pack(m, c->hdr);
}

/* Activation types a DISPATCH may carry, with their row bytes for n_embd 128. */
static const struct {
	moe_type t;
	size_t row;
} fz_act[] = {{MOE_TYPE_F32, 512}, {MOE_TYPE_Q8_0, 136}, {MOE_TYPE_Q8_1, 144}};

static void fz_dispatch(fz_case *c)
{
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	int32_t ids[8 * 4 + 1];
	float w[8 * 4 + 1];
	const uint32_t n_tok = 1 + fz_below(8);
	const int at = (int)fz_below(3);

	d.step = fz_next();
	d.layer = fz_below(lim.n_layer);
	d.n_tokens = n_tok;
	d.act_type = fz_act[at].t;
	d.n_embd = lim.n_embd;
	d.n_used = lim.n_expert_used;
	d.n_expert_ids = d.n_weights = n_tok * lim.n_expert_used;
	d.expert_ids = ids;
	d.weights = w;
	for (size_t i = 0; i < d.n_expert_ids; i++) {
		ids[i] = (int32_t)fz_below(lim.n_expert + 1) - 1; /* -1 .. n_expert-1 */
		w[i] = (float)(fz_next() >> 40) / 16777216.0f;
	}
	c->kind = MOE_MSG_DISPATCH;
	c->plen = fz_act[at].row * n_tok;
	c->expect = FZ_ACCEPT;
	if (fz_chance(40)) {
		const size_t i = fz_below((uint32_t)d.n_expert_ids);
		c->expect = FZ_REJECT;
		switch (fz_below(14)) {
		case 0:
			d.layer = fz_at_least(lim.n_layer);
			break;
		case 1:
			d.n_tokens = fz_chance(30) ? 0 : fz_at_least(lim.max_tokens + 1);
			break;
		case 2:
			d.n_embd =
			    fz_chance(50) ? fz_below(lim.n_embd) : fz_at_least(lim.n_embd + 1);
			break;
		case 3:
			d.n_used = fz_chance(50) ? fz_below(lim.n_expert_used)
			                         : fz_at_least(lim.n_expert_used + 1);
			break;
		case 4:
			d.n_expert_ids += fz_chance(50) ? 1 : -1;
			ids[d.n_expert_ids - 1] = 0;
			break;
		case 5:
			d.n_weights += fz_chance(50) ? 1 : -1;
			w[d.n_weights - 1] = 0;
			break;
		case 6: {
			const uint32_t big = fz_at_least(lim.n_expert);
			ids[i] = fz_chance(60)   ? (big > INT32_MAX ? INT32_MAX : (int32_t)big)
			         : fz_chance(50) ? -2
			                         : -2 - (int32_t)fz_below(INT32_MAX - 1);
			break;
		}
		case 7:
			w[i] = fz_chance(50) ? NAN : fz_chance(50) ? INFINITY : -INFINITY;
			break;
		case 8:
			d.act_type = fz_chance(30)   ? MOE_TYPE_Q4_K
			             : fz_chance(50) ? MOE_TYPE_Q8_K /* no rows of 128 */
			                             : fz_at_least(MOE_TYPE_COUNT);
			break;
		case 9: /* a payload one byte, one row or many rows off */
			c->plen = fz_chance(30)   ? c->plen + 1
			          : fz_chance(50) ? c->plen - fz_act[at].row
			                          : c->plen + fz_act[at].row * (1 + fz_below(3));
			break;
		case 10: /* another activation type whose rows fit: valid */
			d.act_type = fz_act[(at + 1) % 3].t;
			c->plen = fz_act[(at + 1) % 3].row * n_tok;
			c->expect = FZ_ACCEPT;
			break;
		case 11: /* slots of other workers, weights of any sign: valid */
			ids[i] = -1;
			w[i] = -w[i];
			c->expect = FZ_ACCEPT;
			break;
		case 12: /* the largest expert id and the smallest float: valid */
			ids[i] = (int32_t)lim.n_expert - 1;
			w[i] = 1e-45f;
			c->expect = FZ_ACCEPT;
			break;
		default: /* an empty payload with tokens */
			c->plen = 0;
			break;
		}
	}
	fz_pack(c, &d.base);
}

static void fz_assign(fz_case *c)
{
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	Moemesh__LayerExperts le[5], *lp[5];
	Moemesh__ExpertRange rg[5][3], *rp[5][3];
	uint32_t ex[5][4];
	uint32_t order[4] = {0, 1, 2, 3};

	for (int i = 3; i > 0; i--) { /* distinct layers in random order */
		uint32_t j = fz_below((uint32_t)i + 1), t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	a.n_layers = 1 + fz_below(lim.n_layer);
	a.layers = lp;
	for (size_t l = 0; l < 5; l++) {
		moemesh__layer_experts__init(&le[l]);
		lp[l] = &le[l];
		le[l].layer = l < 4 ? order[l] : order[0];
		le[l].n_ranges = fz_below(4);
		le[l].ranges = rp[l];
		for (size_t r = 0; r < 3; r++) {
			moemesh__expert_range__init(&rg[l][r]);
			rp[l][r] = &rg[l][r];
			rg[l][r].first = fz_below(lim.n_expert);
			rg[l][r].count = 1 + fz_below(lim.n_expert - rg[l][r].first);
		}
		le[l].n_experts = fz_below(5);
		le[l].experts = ex[l];
		for (size_t e = 0; e < 4; e++)
			ex[l][e] = fz_below(lim.n_expert);
	}
	c->kind = MOE_MSG_ASSIGN;
	c->plen = 0;
	c->expect = FZ_ACCEPT;
	if (fz_chance(40)) {
		const uint32_t l = fz_below((uint32_t)a.n_layers);
		c->expect = FZ_REJECT;
		switch (fz_below(7)) {
		case 0:
			le[l].layer = fz_at_least(lim.n_layer);
			break;
		case 1: /* a layer twice */
			if (a.n_layers == lim.n_layer)
				le[l].layer = le[(l + 1) % a.n_layers].layer;
			else
				a.n_layers++, le[a.n_layers - 1].layer = le[l].layer;
			break;
		case 2: /* an empty range */
			le[l].n_ranges = 1 + fz_below(3);
			rg[l][fz_below((uint32_t)le[l].n_ranges)].count = 0;
			break;
		case 3: /* a range past the end, or wrapping around 2^32 */
			le[l].n_ranges = 1 + fz_below(3);
			if (fz_chance(70)) { /* mostly ending at n_expert + 1 */
				rg[l][0].first = fz_below(lim.n_expert + 1);
				rg[l][0].count = lim.n_expert + 1 - rg[l][0].first;
				rg[l][0].count += fz_chance(50) ? 0 : fz_below(8);
			} else {
				rg[l][0].first = UINT32_MAX - fz_below(4);
				rg[l][0].count = 1 + fz_below(8);
			}
			break;
		case 4: {
			le[l].n_experts = 1 + fz_below(4);
			const uint32_t bad = fz_at_least(lim.n_expert);
			ex[l][fz_below((uint32_t)le[l].n_experts)] = bad;
			break;
		}
		case 5: /* the last expert, alone and as a range: valid */
			le[l].n_ranges = le[l].n_experts = 1;
			rg[l][0].first = ex[l][0] = lim.n_expert - 1;
			rg[l][0].count = 1;
			c->expect = FZ_ACCEPT;
			break;
		default: /* no layers at all: valid */
			a.n_layers = 0;
			c->expect = FZ_ACCEPT;
			break;
		}
	}
	fz_pack(c, &a.base);
}

static void fz_result(fz_case *c)
{
	Moemesh__Result r = MOEMESH__RESULT__INIT;

	r.step = fz_next();
	r.step >>= fz_below(64);
	r.layer = fz_below(lim.n_layer);
	r.n_tokens = 1 + fz_below(4);
	r.n_embd = lim.n_embd;
	r.compute_ns = fz_next();
	r.compute_ns >>= fz_below(64);
	c->kind = MOE_MSG_RESULT;
	c->step = r.step;
	c->layer = r.layer;
	c->n_tokens = r.n_tokens;
	c->n_embd = r.n_embd;
	c->plen = (size_t)r.n_tokens * r.n_embd * 8;
	c->expect = FZ_ACCEPT;
	if (fz_chance(40)) {
		c->expect = FZ_REJECT;
		switch (fz_below(6)) {
		case 0:
			c->step ^= (uint64_t)1 << fz_below(64);
			break;
		case 1:
			c->layer = r.layer + 1 + fz_below(3);
			break;
		case 2:
			c->n_tokens = r.n_tokens + 1;
			break;
		case 3:
			c->n_embd = 2 * r.n_embd;
			break;
		case 4:
			c->plen = fz_chance(50) ? c->plen - 8 : c->plen + 1 + fz_below(16);
			break;
		default: /* the time it took is free: valid */
			r.compute_ns = fz_next();
			c->expect = FZ_ACCEPT;
			break;
		}
	}
	fz_pack(c, &r.base);
}

/* Mutates the packed header bytes; the reader's outcome is then unknown. */
static void fz_mutate_header(fz_case *c)
{
	for (int n = 1 + (int)fz_below(4); n > 0; n--) {
		const size_t at = c->hlen ? fz_below((uint32_t)c->hlen) : 0;
		switch (fz_below(6)) {
		case 0:
		case 1:
			if (c->hlen)
				c->hdr[at] ^= (uint8_t)(1u << fz_below(8));
			break;
		case 2: {
			static const uint8_t v[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
			if (c->hlen)
				c->hdr[at] = fz_chance(50) ? v[fz_below(5)] : (uint8_t)fz_next();
			break;
		}
		case 3:
			c->hlen = fz_below((uint32_t)c->hlen + 1);
			break;
		case 4: { /* insert 1..8 random bytes */
			size_t k = 1 + fz_below(8);
			if (c->hlen + k > sizeof(c->hdr))
				break;
			memmove(c->hdr + at + k, c->hdr + at, c->hlen - at);
			for (size_t i = 0; i < k; i++)
				c->hdr[at + i] = (uint8_t)fz_next();
			c->hlen += k;
			break;
		}
		default: { /* repeat a piece (protobuf merges repeated fields) */
			size_t k = fz_below((uint32_t)(c->hlen - at) + 1);
			if (c->hlen + k > sizeof(c->hdr))
				break;
			memcpy(c->hdr + c->hlen, c->hdr + at, k);
			c->hlen += k;
			break;
		}
		}
	}
	c->expect = FZ_UNKNOWN;
}

static void fz_wr(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The frame of c laid out as proto.h says, then maybe corrupted; *len is its
 * length, and the bytes are an allocation of exactly that size (ASan). */
static uint8_t *fz_frame(fz_case *c, size_t *len)
{
	const size_t off = moe_frame_payload_offset(c->hlen);
	size_t n = off + c->plen;
	uint8_t *b = calloc(1, n + 16);
	cr_assert_not_null(b);
	fz_wr(b, MOE_PROTO_MAGIC, 4);
	fz_wr(b + 4, MOE_PROTO_VERSION, 2);
	fz_wr(b + 6, c->kind, 2);
	fz_wr(b + 8, c->hlen, 4);
	fz_wr(b + 16, c->plen, 8);
	memcpy(b + MOE_PROTO_PREFIX, c->hdr, c->hlen);
	for (size_t i = off; i < n; i++)
		b[i] = (uint8_t)fz_next();
	c->prefix_broken = false;
	if (fz_chance(12)) {
		c->prefix_broken = true;
		c->expect = FZ_UNKNOWN;
		switch (fz_below(8)) {
		case 0: {
			const uint32_t at = fz_below(MOE_PROTO_PREFIX);
			b[at] = (uint8_t)fz_next();
			break;
		}
		case 1: { /* header length off by a little or a lot */
			static const int64_t d[] = {-64, -1, 1, 64, 1 << 20, -(1 << 20)};
			fz_wr(b + 8, (uint64_t)((int64_t)c->hlen + d[fz_below(6)]), 4);
			break;
		}
		case 2: {
			static const int64_t d[] = {
			    -8, -1, 1, 8, (int64_t)1 << 30, (int64_t)1 << 62};
			fz_wr(b + 16, (uint64_t)((int64_t)c->plen + d[fz_below(6)]), 8);
			break;
		}
		case 3: /* cut */
			n -= fz_below((uint32_t)(n < 64 ? n : 64) + 1);
			break;
		case 4: /* trailing bytes */
			n += 1 + fz_below(16);
			break;
		case 5: /* padding not zero */
			if (off > MOE_PROTO_PREFIX + c->hlen) {
				const size_t at =
				    MOE_PROTO_PREFIX + c->hlen +
				    fz_below((uint32_t)(off - MOE_PROTO_PREFIX - c->hlen));
				b[at] = (uint8_t)(1 + fz_below(255));
			}
			break;
		case 6: /* any kind */
			fz_wr(b + 6, fz_below(MOE_MSG_KIND_COUNT + 3), 2);
			break;
		default:
			fz_wr(b + 12, 1 + fz_below(UINT32_MAX), 4);
			break;
		}
	}
	uint8_t *exact = malloc(n ? n : 1);
	cr_assert_not_null(exact);
	memcpy(exact, b, n);
	free(b);
	*len = n;
	return exact;
}

/* The documented checks of an accepted DISPATCH. */
static void fz_check_dispatch(const Moemesh__Dispatch *d, const moe_frame *f)
{
	cr_assert_lt(d->layer, lim.n_layer);
	cr_assert(d->n_tokens >= 1 && d->n_tokens <= lim.max_tokens, "n_tokens %u", d->n_tokens);
	cr_assert_eq(d->n_embd, lim.n_embd);
	cr_assert_eq(d->n_used, lim.n_expert_used);
	cr_assert_eq(d->n_expert_ids, (size_t)d->n_tokens * d->n_used);
	cr_assert_eq(d->n_weights, (size_t)d->n_tokens * d->n_used);
	for (size_t i = 0; i < d->n_expert_ids; i++) {
		cr_assert(d->expert_ids[i] >= -1 && d->expert_ids[i] < (int32_t)lim.n_expert,
		          "accepted expert_ids[%zu] = %d", i, d->expert_ids[i]);
		cr_assert(isfinite(d->weights[i]), "accepted weights[%zu] = %g", i, d->weights[i]);
	}
	size_t row = 0;
	for (size_t k = 0; k < 3; k++)
		if (d->act_type == (uint32_t)fz_act[k].t)
			row = fz_act[k].row;
	cr_assert_gt(row, 0, "accepted act_type %u", d->act_type);
	cr_assert_eq(f->payload_len, row * d->n_tokens, "payload %zu for %u rows of %zu bytes",
	             f->payload_len, d->n_tokens, row);
}

static void fz_check_assign(const Moemesh__Assign *a)
{
	for (size_t i = 0; i < a->n_layers; i++) {
		const Moemesh__LayerExperts *le = a->layers[i];
		cr_assert_lt(le->layer, lim.n_layer);
		for (size_t j = 0; j < i; j++)
			cr_assert_neq(a->layers[j]->layer, le->layer, "layer %u twice", le->layer);
		for (size_t j = 0; j < le->n_ranges; j++) {
			cr_assert_gt(le->ranges[j]->count, 0);
			cr_assert_leq((uint64_t)le->ranges[j]->first + le->ranges[j]->count,
			              lim.n_expert);
		}
		for (size_t j = 0; j < le->n_experts; j++)
			cr_assert_lt(le->experts[j], lim.n_expert);
	}
}

Test(proto, mutated_frames_reach_the_parsers)
{
	static const char *const names[FZ_KINDS] = {"DISPATCH", "ASSIGN", "RESULT"};
	int parse_ok = 0, parse_refused = 0, other_kind = 0;
	int reached[FZ_KINDS] = {0}, accepted[FZ_KINDS] = {0}, refused[FZ_KINDS] = {0};
	int undecoded[FZ_KINDS] = {0}; /* refused as MOE_ERR_PROTO */

	fz_state = 20240611;
	for (int it = 0; it < FZ_ITERATIONS; it++) {
		fz_case c;
		memset(&c, 0, sizeof(c));
		const int gen = (int)fz_below(FZ_KINDS);
		if (gen == FZ_DISPATCH)
			fz_dispatch(&c);
		else if (gen == FZ_ASSIGN)
			fz_assign(&c);
		else
			fz_result(&c);
		if (fz_chance(45))
			fz_mutate_header(&c);
		if (fz_chance(5)) { /* read as another kind */
			static const moe_msg_kind k[] = {MOE_MSG_DISPATCH, MOE_MSG_ASSIGN,
			                                 MOE_MSG_RESULT};
			c.kind = k[fz_below(3)];
			c.expect = FZ_UNKNOWN;
		}
		if (fz_chance(5)) { /* payload length: the reader may refuse or ignore it */
			c.plen += 1 + fz_below(300);
			c.expect = FZ_UNKNOWN;
		}
		size_t len;
		uint8_t *buf = fz_frame(&c, &len);
		moe_frame f;
		moe_err err = moe_frame_parse(&f, buf, len);
		if (err != MOE_OK) {
			cr_assert(c.prefix_broken,
			          "iteration %d: a well-formed frame is refused: %s", it,
			          moe_err_detail());
			cr_assert(err == MOE_ERR_TRUNCATED || err == MOE_ERR_BAD_MAGIC ||
			              err == MOE_ERR_BAD_VERSION || err == MOE_ERR_BAD_TYPE ||
			              err == MOE_ERR_BAD_COUNT || err == MOE_ERR_BAD_VALUE,
			          "iteration %d: frame error %s", it, moe_err_name(err));
			parse_refused++;
			free(buf);
			continue;
		}
		parse_ok++;
		cr_assert_eq(f.header, buf + MOE_PROTO_PREFIX);
		cr_assert_eq((size_t)(f.payload - buf) % MOE_PROTO_ALIGN, 0);
		cr_assert_eq(f.payload + f.payload_len, buf + len,
		             "iteration %d: the frame has bytes after its payload", it);
		cr_assert_leq(f.header + f.header_len, f.payload);
		int k;
		err = MOE_OK;
		if (f.kind == MOE_MSG_DISPATCH) {
			Moemesh__Dispatch *d = NULL;
			k = FZ_DISPATCH;
			err = moe_proto_read_dispatch(&d, &f, &lim);
			if (err == MOE_OK) {
				fz_check_dispatch(d, &f);
				moemesh__dispatch__free_unpacked(d, NULL);
			} else {
				cr_assert_null(d);
				cr_assert(err == MOE_ERR_PROTO || err == MOE_ERR_BAD_VALUE ||
				              err == MOE_ERR_BAD_COUNT || err == MOE_ERR_BAD_TYPE,
				          "iteration %d: DISPATCH error %s", it, moe_err_name(err));
			}
		} else if (f.kind == MOE_MSG_ASSIGN) {
			Moemesh__Assign *a = NULL;
			k = FZ_ASSIGN;
			err = moe_proto_read_assign(&a, &f, &lim);
			if (err == MOE_OK) {
				fz_check_assign(a);
				moemesh__assign__free_unpacked(a, NULL);
			} else {
				cr_assert_null(a);
				cr_assert(err == MOE_ERR_PROTO || err == MOE_ERR_BAD_VALUE ||
				              err == MOE_ERR_DUPLICATE,
				          "iteration %d: ASSIGN error %s", it, moe_err_name(err));
			}
		} else if (f.kind == MOE_MSG_RESULT) {
			Moemesh__Result *r = NULL;
			k = FZ_RESULT;
			err = moe_proto_read_result(&r, &f, c.step, c.layer, c.n_tokens, c.n_embd);
			if (err == MOE_OK) {
				cr_assert(r->step == c.step && r->layer == c.layer &&
				          r->n_tokens == c.n_tokens && r->n_embd == c.n_embd);
				cr_assert_eq(f.payload_len, (size_t)c.n_tokens * c.n_embd * 8);
				moemesh__result__free_unpacked(r, NULL);
			} else {
				cr_assert_null(r);
				cr_assert(err == MOE_ERR_PROTO || err == MOE_ERR_BAD_COUNT,
				          "iteration %d: RESULT error %s", it, moe_err_name(err));
			}
		} else {
			other_kind++; /* a corrupted kind field named another message */
			free(buf);
			continue;
		}
		reached[k]++;
		if (err == MOE_OK)
			accepted[k]++;
		else
			refused[k]++;
		undecoded[k] += err == MOE_ERR_PROTO;
		if (c.expect == FZ_ACCEPT)
			cr_assert_eq(err, MOE_OK, "iteration %d: valid %s refused: %s", it,
			             names[k], moe_err_detail());
		else if (c.expect == FZ_REJECT)
			cr_assert_neq(err, MOE_OK, "iteration %d: invalid %s accepted", it,
			              names[k]);
		free(buf);
	}
	cr_log_info("%d iterations: %d frames parsed, %d refused, %d of other kinds", FZ_ITERATIONS,
	            parse_ok, parse_refused, other_kind);
	for (int k = 0; k < FZ_KINDS; k++) {
		cr_log_info("%s: %d reached the reader, %d accepted, %d refused (%d as "
		            "undecodable or not answering)",
		            names[k], reached[k], accepted[k], refused[k], undecoded[k]);
		/* a third of the iterations make each kind; most of those must get
		 * past the prefix, and both outcomes must be common */
		cr_assert_geq(reached[k], FZ_ITERATIONS / 4, "%s reached its reader %d times",
		              names[k], reached[k]);
		cr_assert_geq(accepted[k], FZ_ITERATIONS / 20, "%s accepted %d times", names[k],
		              accepted[k]);
		cr_assert_geq(refused[k], FZ_ITERATIONS / 20, "%s refused %d times", names[k],
		              refused[k]);
		if (k != FZ_RESULT) /* RESULT's field checks are MOE_ERR_PROTO too */
			cr_assert_geq(refused[k] - undecoded[k], FZ_ITERATIONS / 40,
			              "%s: %d refused after decoding", names[k],
			              refused[k] - undecoded[k]);
	}
	cr_assert_gt(parse_refused, FZ_ITERATIONS / 50, "moe_frame_parse refused %d frames",
	             parse_refused);
}

/* ---- addresses -------------------------------------------------------------------- */

static void split_ok(const char *url, const char *host, unsigned port)
{
	char h[64];
	uint16_t p = 1;
	cr_assert_eq(moe_url_tcp_split(h, sizeof h, &p, url), MOE_OK, "%s: %s", url,
	             moe_err_detail());
	cr_expect_str_eq(h, host, "%s", url);
	cr_expect_eq(p, port, "%s", url);
}

static void split_bad(const char *url, const char *says)
{
	char h[64];
	uint16_t p;
	cr_assert_eq(moe_url_tcp_split(h, sizeof h, &p, url), MOE_ERR_INVAL, "%s accepted", url);
	cr_expect(strstr(moe_err_detail(), says) != NULL, "%s: '%s' does not say '%s'", url,
	          moe_err_detail(), says);
}

Test(proto, tcp_urls_as_users_write_them)
{
	split_ok("tcp://10.0.0.2:7070", "10.0.0.2", 7070);
	split_ok("tcp://box-1.lab.example:7000", "box-1.lab.example", 7000);
	split_ok("tcp://localhost:0", "localhost", 0);
	split_ok("tcp://[::1]:7000", "::1", 7000);
	split_ok("tcp://[fd00::2]:65535", "fd00::2", 65535);
	split_ok("tcp://*:7000", "", 7000);
	split_ok("tcp://:7000", "", 7000);
	split_bad("ipc:///tmp/x", "want tcp://HOST:PORT");
	split_bad("tcp://box", "no port");
	split_bad("tcp://::1:7000", "in brackets");
	split_bad("tcp://[::1]7000", "[IPV6]:PORT");
	split_bad("tcp://[::1:7000", "[IPV6]:PORT");
	split_bad("tcp://box:70000", "not a number in 0..65535");
	split_bad("tcp://box:70x", "not a number");
	split_bad("tcp://box:", "not a number");
	split_bad("tcp://a b:7000", "character");
	split_bad("tcp://user@box:7000", "character");
	split_bad(
	    "tcp://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1",
	    "host name of 72 bytes");
}

/* Data sockets by name and over IPv6: a listener on every address takes
 * connections to ::1 and 127.0.0.1; an unknown name is a clear error. */
Test(proto, data_sockets_take_names_and_ipv6)
{
	int lfd = -1, c1 = -1, c2 = -1, c3 = -1;
	uint16_t port = 0;
	cr_assert_eq(moe_sock_listen_tcp(&lfd, "", &port), MOE_OK, "%s", moe_err_detail());
	cr_assert_gt(port, 0);
	cr_expect_eq(moe_sock_connect_tcp(&c1, "::1", port, 2000), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(moe_sock_connect_tcp(&c2, "127.0.0.1", port, 2000), MOE_OK, "%s",
	             moe_err_detail());
	cr_expect_eq(moe_sock_connect_tcp(&c3, "localhost", port, 2000), MOE_OK, "%s",
	             moe_err_detail());
	close(c1);
	close(c2);
	close(c3);
	close(lfd);
	uint16_t p6 = 0;
	cr_assert_eq(moe_sock_listen_tcp(&lfd, "::1", &p6), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(moe_sock_connect_tcp(&c1, "::1", p6, 2000), MOE_OK, "%s", moe_err_detail());
	close(c1);
	close(lfd);
	/* MOE_ERR_INVAL where a resolver answers, MOE_ERR_SYS where none can be asked */
	cr_expect_neq(moe_sock_connect_tcp(&c1, "no-such-host.invalid", 7000, 2000), MOE_OK);
	cr_expect(strstr(moe_err_detail(), "'no-such-host.invalid'") != NULL, "%s",
	          moe_err_detail());
	cr_expect_neq(moe_sock_listen_tcp(&lfd, "no-such-host.invalid", &p6), MOE_OK);
}

/* ---- status datagrams ------------------------------------------------------------------ */

static const uint8_t st_secret[] = "the cluster secret";
#define ST_SECRET_LEN (sizeof st_secret - 1)

/* A STATUS_REQUEST frame (into buf, *len) with these fields. */
static void status_request(uint8_t *buf, size_t *len, uint32_t version, size_t chal_len,
                           const uint8_t *mac, size_t mac_len)
{
	uint8_t chal[64];
	memset(chal, 0x42, sizeof chal);
	Moemesh__StatusRequest r = MOEMESH__STATUS_REQUEST__INIT;
	r.protocol_version = version;
	r.challenge = (ProtobufCBinaryData){chal_len, chal};
	r.mac = (ProtobufCBinaryData){mac_len, (uint8_t *)mac};
	*len = moe_frame_size(moemesh__status_request__get_packed_size(&r), 0);
	cr_assert_eq(moe_frame_write(buf, *len, MOE_MSG_STATUS_REQUEST, &r.base, 0), MOE_OK);
}

static moe_err read_request(const uint8_t *buf, size_t len, bool with_secret)
{
	moe_frame f;
	Moemesh__StatusRequest *r = NULL;
	moe_err err = moe_frame_parse(&f, buf, len);
	cr_assert_eq(err, MOE_OK);
	err = moe_proto_read_status_request(&r, &f, st_secret, with_secret ? ST_SECRET_LEN : 0);
	if (err == MOE_OK)
		moemesh__status_request__free_unpacked(r, NULL);
	return err;
}

Test(proto, status_request_checks_version_challenge_and_mac)
{
	uint8_t buf[512], chal[32], mac[32], bad[32];
	size_t len;
	memset(chal, 0x42, sizeof chal);
	/* the MAC computed here with HMAC directly, not with moe_status_mac */
	uint8_t msg[22 + 32];
	memcpy(msg, "moemesh status request", 22);
	memcpy(msg + 22, chal, 32);
	cr_assert_eq(moe_hmac_sha256(mac, st_secret, ST_SECRET_LEN, msg, sizeof msg), MOE_OK);
	memcpy(bad, mac, 32);
	bad[31] ^= 1;

	status_request(buf, &len, MOE_PROTO_VERSION, 32, mac, 32);
	cr_expect_eq(read_request(buf, len, true), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(read_request(buf, len, false), MOE_OK, "no secret: the MAC is not asked for");
	status_request(buf, &len, MOE_PROTO_VERSION, 32, bad, 32);
	cr_expect_eq(read_request(buf, len, true), MOE_ERR_AUTH);
	status_request(buf, &len, MOE_PROTO_VERSION, 32, NULL, 0);
	cr_expect_eq(read_request(buf, len, true), MOE_ERR_AUTH);
	cr_expect_eq(read_request(buf, len, false), MOE_OK);
	status_request(buf, &len, MOE_PROTO_VERSION + 1, 32, mac, 32);
	cr_expect_eq(read_request(buf, len, true), MOE_ERR_BAD_VERSION);
	status_request(buf, &len, MOE_PROTO_VERSION, 31, mac, 32);
	cr_expect_eq(read_request(buf, len, false), MOE_ERR_BAD_COUNT);
	status_request(buf, &len, MOE_PROTO_VERSION, 32, mac, 16);
	cr_expect_eq(read_request(buf, len, false), MOE_ERR_BAD_COUNT);
	/* another kind, and a header that does not decode */
	moe_frame f = {.kind = MOE_MSG_STATUS_REQUEST,
	               .header = (const uint8_t *)"\xff\xff\xff",
	               .header_len = 3};
	Moemesh__StatusRequest *r = NULL;
	cr_expect_eq(moe_proto_read_status_request(&r, &f, NULL, 0), MOE_ERR_PROTO);
	f.kind = MOE_MSG_STATUS;
	cr_expect_eq(moe_proto_read_status_request(&r, &f, NULL, 0), MOE_ERR_PROTO);
}

/* A STATUS frame whose body is b (spoiled by spoil), signed with key
 * (key_len 0: unsigned), read back with our challenge and secret. */
static moe_err read_status_with(void (*spoil)(Moemesh__WorkerStatus *), const uint8_t *key,
                                size_t key_len, bool with_secret)
{
	uint8_t chal[32], id[32], body[8192], mac[32], buf[9000];
	uint32_t layers[4] = {3, 0, 2, 1};
	memset(chal, 0x42, sizeof chal);
	memset(id, 0x17, sizeof id);
	Moemesh__WorkerStatus b = MOEMESH__WORKER_STATUS__INIT;
	b.challenge = (ProtobufCBinaryData){32, chal};
	b.name = "box-1";
	b.model_id = (ProtobufCBinaryData){32, id};
	b.isa = "avx2";
	b.experts_held = 6;
	b.n_layer_experts = 4;
	b.layer_experts = layers;
	b.load_done = 5;
	b.load_total = 9;
	uint8_t other[32];
	memset(other, 0x43, sizeof other);
	if (spoil != NULL)
		spoil(&b);
	if (spoil != NULL && b.challenge.data == NULL)
		b.challenge = (ProtobufCBinaryData){32, other};
	const size_t bl = moemesh__worker_status__get_packed_size(&b);
	cr_assert_leq(bl, sizeof body);
	moemesh__worker_status__pack(&b, body);
	Moemesh__Status s = MOEMESH__STATUS__INIT;
	s.body = (ProtobufCBinaryData){bl, body};
	if (key_len > 0) {
		uint8_t msg[14 + 8192];
		memcpy(msg, "moemesh status", 14);
		memcpy(msg + 14, body, bl);
		cr_assert_eq(moe_hmac_sha256(mac, key, key_len, msg, 14 + bl), MOE_OK);
		s.mac = (ProtobufCBinaryData){32, mac};
	}
	const size_t len = moe_frame_size(moemesh__status__get_packed_size(&s), 0);
	cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_STATUS, &s.base, 0), MOE_OK);
	moe_frame f;
	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK);
	Moemesh__WorkerStatus *out = NULL;
	const moe_err err =
	    moe_proto_read_status(&out, &f, chal, st_secret, with_secret ? ST_SECRET_LEN : 0);
	if (err == MOE_OK) {
		cr_expect_str_eq(out->name, "box-1");
		cr_expect_eq(out->experts_held, 6);
		moemesh__worker_status__free_unpacked(out, NULL);
	}
	return err;
}

static void st_other_challenge(Moemesh__WorkerStatus *b)
{
	b->challenge.data = NULL; /* read_status_with puts another there */
}
static void st_short_id(Moemesh__WorkerStatus *b)
{
	b->model_id.len = 31;
}
static void st_long_name(Moemesh__WorkerStatus *b)
{
	b->name = "a-name-of-sixty-four-characters-is-one-longer-than-a-worker-has!";
}
static void st_control_name(Moemesh__WorkerStatus *b)
{
	b->name = "box\n1";
}
static void st_long_isa(Moemesh__WorkerStatus *b)
{
	b->isa = "avx512-and-then-some";
}
static void st_count_off(Moemesh__WorkerStatus *b)
{
	b->experts_held = 7;
}
static void st_too_many_layers(Moemesh__WorkerStatus *b)
{
	static uint32_t zeros[MOE_STATUS_MAX_LAYERS + 1];
	b->n_layer_experts = MOE_STATUS_MAX_LAYERS + 1;
	b->layer_experts = zeros;
	b->experts_held = 0;
}
static void st_load_over(Moemesh__WorkerStatus *b)
{
	b->load_done = 10;
}

Test(proto, status_reply_checks_mac_challenge_and_fields)
{
	static const uint8_t other_key[] = "another secret";
	cr_expect_eq(read_status_with(NULL, NULL, 0, false), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(read_status_with(NULL, st_secret, ST_SECRET_LEN, true), MOE_OK, "%s",
	             moe_err_detail());
	cr_expect_eq(read_status_with(NULL, NULL, 0, true), MOE_ERR_AUTH, "unsigned");
	cr_expect_eq(read_status_with(NULL, other_key, sizeof other_key - 1, true), MOE_ERR_AUTH);
	cr_expect_eq(read_status_with(st_other_challenge, NULL, 0, false), MOE_ERR_MISMATCH);
	cr_expect_eq(read_status_with(st_short_id, NULL, 0, false), MOE_ERR_BAD_COUNT);
	cr_expect_eq(read_status_with(st_long_name, NULL, 0, false), MOE_ERR_BAD_STRING);
	cr_expect_eq(read_status_with(st_control_name, NULL, 0, false), MOE_ERR_BAD_STRING);
	cr_expect_eq(read_status_with(st_long_isa, NULL, 0, false), MOE_ERR_BAD_STRING);
	cr_expect_eq(read_status_with(st_count_off, NULL, 0, false), MOE_ERR_BAD_VALUE);
	cr_expect_eq(read_status_with(st_load_over, NULL, 0, false), MOE_ERR_BAD_VALUE);
	cr_expect_eq(read_status_with(st_too_many_layers, NULL, 0, false), MOE_ERR_BAD_COUNT);
	/* a body that does not decode */
	uint8_t chal[32] = {0}, buf[256];
	Moemesh__Status s = MOEMESH__STATUS__INIT;
	s.body = (ProtobufCBinaryData){3, (uint8_t *)"\xff\xff\xff"};
	const size_t len = moe_frame_size(moemesh__status__get_packed_size(&s), 0);
	cr_assert_eq(moe_frame_write(buf, len, MOE_MSG_STATUS, &s.base, 0), MOE_OK);
	moe_frame f;
	cr_assert_eq(moe_frame_parse(&f, buf, len), MOE_OK);
	Moemesh__WorkerStatus *out = NULL;
	cr_expect_eq(moe_proto_read_status(&out, &f, chal, NULL, 0), MOE_ERR_PROTO);
}

/* ---- handshake MACs (moe_auth_mac) ------------------------------------------------ */

static void unhex(uint8_t *out, const char *hex, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		cr_assert_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* Known answers computed outside this code base (Python's hmac over the
 * documented byte string role || nonce_c || nonce_w || model_id), nonce_c
 * = 00..1f, nonce_w = 40..5f, model_id = 80..9f, secret "s3cret" or none. */
Test(proto, auth_mac_known_answers_bind_role_nonces_and_model)
{
	static const struct {
		const char *secret, *role, *hex;
	} kat[] = {
	    {"s3cret", MOE_AUTH_COORDINATOR,
	     "4d4f0af709e09001762d11b0f99589c7da260cb3f77df0047c00ac899cff336f"},
	    {"s3cret", MOE_AUTH_WORKER,
	     "0f322c721024829870a33c8a95969d086343615a0216702a5f5a7a91e0699630"},
	    {"", MOE_AUTH_COORDINATOR,
	     "71fa7b49355b8b448b36f7b6562b90116d319942ad3dd3e4583325d0426c4cbb"},
	    {"", MOE_AUTH_WORKER,
	     "9031b8eea28362f860306efb5a09e144ce9ee58d08ac070d956024b2e25e538d"},
	};
	uint8_t nc[32], nw[32], id[MOE_ID_BYTES], mac[32], want[32], other[32];
	for (int i = 0; i < 32; i++) {
		nc[i] = (uint8_t)i;
		nw[i] = (uint8_t)(0x40 + i);
		id[i] = (uint8_t)(0x80 + i);
	}
	cr_assert_str_eq(MOE_AUTH_COORDINATOR, "moemesh-v2 coordinator");
	cr_assert_str_eq(MOE_AUTH_WORKER, "moemesh-v2 worker");
	for (size_t k = 0; k < sizeof kat / sizeof kat[0]; k++) {
		const size_t sl = strlen(kat[k].secret);
		unhex(want, kat[k].hex, 32);
		cr_assert_eq(
		    moe_auth_mac(mac, (const uint8_t *)kat[k].secret, sl, kat[k].role, nc, nw, id),
		    MOE_OK);
		cr_expect(memcmp(mac, want, 32) == 0, "vector %zu (%s, '%s')", k, kat[k].role,
		          kat[k].secret);
		/* each input changes it: nonces swapped, another model */
		cr_assert_eq(moe_auth_mac(other, (const uint8_t *)kat[k].secret, sl, kat[k].role,
		                          nw, nc, id),
		             MOE_OK);
		cr_expect(memcmp(other, want, 32) != 0);
		id[5] ^= 1;
		cr_assert_eq(moe_auth_mac(other, (const uint8_t *)kat[k].secret, sl, kat[k].role,
		                          nc, nw, id),
		             MOE_OK);
		id[5] ^= 1;
		cr_expect(memcmp(other, want, 32) != 0);
	}
	/* no secret: a NULL key works as the empty one */
	unhex(want, kat[2].hex, 32);
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, nc, nw, id), MOE_OK);
	cr_expect(memcmp(mac, want, 32) == 0);
}

Test(proto, url_is_loopback_only_for_this_machine)
{
	static const char *const yes[] = {"ipc:///tmp/x",
	                                  "tcp://127.0.0.1:7000",
	                                  "tcp://127.9.8.7:1",
	                                  "tcp://localhost:7000",
	                                  "tcp://LocalHost:7000",
	                                  "tcp://[::1]:7000",
	                                  "tcp://[::ffff:127.0.0.1]:7000"};
	static const char *const no[] = {
	    "tcp://0.0.0.0:7000",   "tcp://*:7000",         "tcp://:7000",
	    "tcp://10.0.0.2:7000",  "tcp://128.0.0.1:7000", "tcp://[::]:7000",
	    "tcp://[fd00::2]:7000", "tcp://box1:7000",      "tcp://localhost.evil.example:7000",
	    "tcp://::1:7000",       "ws://127.0.0.1:7000",  "tcp://[::ffff:10.0.0.1]:7000"};
	for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
		cr_expect(moe_url_is_loopback(yes[i]), "%s", yes[i]);
	for (size_t i = 0; i < sizeof no / sizeof *no; i++)
		cr_expect(!moe_url_is_loopback(no[i]), "%s", no[i]);
}
