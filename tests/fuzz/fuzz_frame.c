/*
 * fuzz_frame.c - libFuzzer harness for the wire: the input is one frame as
 * it arrives on a control or data socket.  The frame's prefix and lengths are
 * checked (moe_frame_parse, and moe_frame_length on the prefix alone, which
 * must agree), then its header is decoded and validated as the receiver of
 * its kind does: Dispatch, Result and Assign through proto's checks against
 * a model's limits, the other kinds through their protobuf-c decoders.
 */
#include <string.h>

#include "proto/proto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* Limits of a Qwen3-Next-like model with few layers (dispatches are checked
 * against them). */
static const moe_proto_limits lim = {
    .n_layer = 4, .n_expert = 16, .n_expert_used = 4, .n_embd = 8, .max_tokens = 64};

static void decode_other(const moe_frame *f)
{
	const size_t n = f->header_len;
	const uint8_t *h = f->header;
	switch (f->kind) {
	case MOE_MSG_HELLO:
		moemesh__hello__free_unpacked(moemesh__hello__unpack(NULL, n, h), NULL);
		break;
	case MOE_MSG_HELLO_REPLY:
		moemesh__hello_reply__free_unpacked(moemesh__hello_reply__unpack(NULL, n, h), NULL);
		break;
	case MOE_MSG_AUTH:
		moemesh__auth_response__free_unpacked(moemesh__auth_response__unpack(NULL, n, h),
		                                      NULL);
		break;
	case MOE_MSG_AUTH_OK:
		moemesh__auth_ok__free_unpacked(moemesh__auth_ok__unpack(NULL, n, h), NULL);
		break;
	case MOE_MSG_LOAD_PROGRESS:
		moemesh__load_progress__free_unpacked(moemesh__load_progress__unpack(NULL, n, h),
		                                      NULL);
		break;
	case MOE_MSG_HEARTBEAT:
		moemesh__heartbeat__free_unpacked(moemesh__heartbeat__unpack(NULL, n, h), NULL);
		break;
	case MOE_MSG_STATS:
		moemesh__stats__free_unpacked(moemesh__stats__unpack(NULL, n, h), NULL);
		break;
	case MOE_MSG_ERROR:
		moemesh__error__free_unpacked(moemesh__error__unpack(NULL, n, h), NULL);
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t whole = 0;
	const moe_err lerr =
	    size >= MOE_PROTO_PREFIX ? moe_frame_length(&whole, data) : MOE_ERR_TRUNCATED;
	moe_frame f;
	if (moe_frame_parse(&f, data, size) != MOE_OK)
		return 0;
	/* a frame parse accepts, its prefix alone accepts too, with its length */
	if (lerr != MOE_OK || whole != size) {
		fprintf(stderr, "moe_frame_length disagrees with moe_frame_parse\n");
		abort();
	}
	switch (f.kind) {
	case MOE_MSG_DISPATCH: {
		Moemesh__Dispatch *d = NULL;
		if (moe_proto_read_dispatch(&d, &f, &lim) == MOE_OK)
			moemesh__dispatch__free_unpacked(d, NULL);
		break;
	}
	case MOE_MSG_RESULT: {
		Moemesh__Result *r = NULL;
		if (moe_proto_read_result(&r, &f, 7, 1, 2, lim.n_embd) == MOE_OK)
			moemesh__result__free_unpacked(r, NULL);
		break;
	}
	case MOE_MSG_ASSIGN: {
		Moemesh__Assign *a = NULL;
		if (moe_proto_read_assign(&a, &f, &lim) == MOE_OK)
			moemesh__assign__free_unpacked(a, NULL);
		break;
	}
	default:
		decode_other(&f);
		break;
	}
	return 0;
}
