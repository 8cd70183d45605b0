/*
 * test_plan.c - `moemesh plan`'s arithmetic (moe_plan_compute) against
 * numbers worked out by hand here from the tensor shapes of the F32
 * qwen3next fixture and of the demo model bench cluster runs
 * (models/kjv-qwen3next-Q4_K_M.gguf): dense, expert, KV and DeltaNet bytes,
 * the placement under caps, the largest context and parallel sequences, the
 * decode estimate at batch 1 and 4, --layers scaling; the refusals (a worker
 * over its cap in the words of the refusal at start, the coordinator over
 * its mem) through the real program; its JSON output; the cluster file's
 * node figures and their errors; the 3-box example file; probe's fragment
 * against a probe --echo on loopback.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/model.h"
#include "tests/test_util.h"

/* ---- the F32 fixture, by hand (moemesh inspect lists the shapes) ------------------
 *
 * hidden 128, 4 layers (0..2 DeltaNet, 3 attention), 16 experts, 4 per token,
 * expert FFN 64, shared FFN 64, 2 KV heads x 32, DeltaNet: 4 key heads x 32,
 * 8 value heads x 32, conv kernel 4; every tensor F32 (4 bytes a value).
 *
 * one expert: gate 128x64 + up 128x64 + down 64x128 = 3 x 8192 x 4 = 98304 B
 * experts: 4 layers x 16 x 98304                                   = 6291456 B
 * DeltaNet layer: norms 512+512, attn_qkv 128x512 = 262144, attn_gate
 *   128x256 = 131072, conv1d 4x512 = 8192, dt 32, a 32, ba 128x16 = 8192,
 *   ssm_norm 128, ssm_out 256x128 = 131072, router 128x16 = 8192, shared
 *   gate 512, shared FFN 3 x 32768                                 = 648896 B
 * attention layer: norms 1024, q 128x512 = 262144, k and v 128x64 = 2 x
 *   32768, output 256x128 = 131072, q/k norms 256, router 8192, shared gate
 *   512, shared FFN 98304                                          = 567040 B
 * global: token_embd 128x512 = 262144, output 262144, output_norm 512
 *                                                                  = 524800 B
 * dense: 3 x 648896 + 567040 + 524800                              = 3038528 B
 * read per step: dense less token_embd (rows only)                 = 2776384 B
 * KV row: 2 heads x 32 = 64 values; f16 128 B, f32 256, q8_0 2 x 34 = 68,
 *   q4_0 2 x 18 = 36; a block: row x 1 layer x 2 (K, V) x 256 positions:
 *   f16 65536, f32 131072, q8_0 34816, q4_0 18432
 * DeltaNet state per layer: conv 3 x (2x4x32 + 8x32 = 512) = 1536 floats,
 *   recurrent 8 x 32 x 32 = 8192 floats: 38912 B; 3 layers     = 116736 B */
#define FX_EXPERT       98304ull
#define FX_EXPERTS      6291456ull
#define FX_DENSE        3038528ull
#define FX_DENSE_READ   2776384ull
#define FX_KV_BLOCK_F16 65536ull
#define FX_STATE        116736ull

static moe_model *open_model(const char *dir_env, const char *name)
{
	char path[1024];
	const char *d = getenv(dir_env);
	cr_assert(d != NULL, "%s is not set", dir_env);
	snprintf(path, sizeof path, "%s/%s", d, name);
	moe_model *m = NULL;
	cr_assert_eq(moe_model_open(&m, path), MOE_OK, "%s: %s", path, moe_err_detail());
	return m;
}

static moe_cluster_opts two_workers(uint64_t cap_a, uint64_t cap_b)
{
	moe_cluster_opts o = {.n_urls = 2};
	o.urls[0] = "tcp://10.0.0.2:7070";
	o.urls[1] = "tcp://10.0.0.3:7070";
	o.names[0] = "a";
	o.names[1] = "b";
	o.mem_caps[0] = cap_a;
	o.mem_caps[1] = cap_b;
	return o;
}

static moe_plan_opts small_opts(void)
{
	moe_plan_opts po;
	moe_plan_opts_default(&po);
	po.n_ctx = 1000;
	po.n_parallel = 3;
	po.cache_bytes = 1 << 20;
	po.overhead_bytes = 1 << 20;
	return po;
}

static moe_plan *plan_of(const moe_model *m, const moe_cluster_opts *o, const moe_plan_opts *po)
{
	moe_plan *p = malloc(sizeof *p);
	cr_assert(p != NULL);
	cr_assert_eq(moe_plan_compute(p, m, o, po), MOE_OK, "%s", moe_err_detail());
	return p;
}

Test(plan_fixture, bytes)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	const moe_plan_opts po = small_opts();
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->n_attn, 1);
	cr_expect_eq(p->n_rec, 3);
	cr_expect_eq(p->dense_bytes, FX_DENSE);
	cr_expect_eq(p->dense_read, FX_DENSE_READ);
	cr_expect_eq(p->expert_bytes, FX_EXPERTS);
	cr_expect_eq(p->kv_block, FX_KV_BLOCK_F16);
	/* 1000 positions: 4 blocks of 256 */
	cr_expect_eq(p->kv_seq, 4 * FX_KV_BLOCK_F16);
	cr_expect_eq(p->state_seq, FX_STATE);
	cr_assert_eq(p->n_nodes, 3);
	/* coordinator: dense + 3 x KV (262144) + 3 x state + 1 MiB cache + 1 MiB */
	cr_expect_eq(p->nodes[0].kv, 786432u);
	cr_expect_eq(p->nodes[0].state, 350208u);
	cr_expect_eq(p->nodes[0].total, 3038528u + 786432u + 350208u + 1048576u + 1048576u);
	/* no caps: equal shares, experts 0..7 and 8..15 of every layer */
	cr_expect_eq(p->nodes[1].experts, 8 * 4 * FX_EXPERT);
	cr_expect_eq(p->nodes[2].experts, 8 * 4 * FX_EXPERT);
	cr_expect_eq(p->nodes[1].expert_pairs, 32u);
	cr_expect(p->fits);
	cr_expect_eq(p->max_ctx, -1, "no coordinator mem: no limit computed");
	free(p);
	moe_model_destroy(m);
}

/* qwen35moe-tiny-F32's MTP block (blk.4, `moemesh inspect`): norms 512 + 512,
 * q 262144, k and v 2 x 32768, output 131072, q/k norms 256, router 8192,
 * routed experts 3 x 524288 = 1572864, shared gate 512, shared FFN 3 x 32768,
 * nextn eh_proj 131072 + enorm, hnorm, shared_head_norm 3 x 512 = 2272512 B.
 * The coordinator maps all of it (its experts run there, not on workers) and
 * reads none of it in the main pass. */
#define FX35_MTP 2272512ull

Test(plan_fixture, mtp_block_on_the_coordinator)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen35moe-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	const moe_plan_opts po = small_opts();
	moe_plan *p = plan_of(m, &o, &po);
	const moe_gguf *g = moe_model_gguf(m);
	uint64_t all = 0;
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++)
		all += moe_gguf_tensor_at(g, i)->size;
	const moe_gguf_tensor *embd = moe_gguf_find_tensor(g, "token_embd.weight");
	cr_assert(embd != NULL);
	cr_expect_eq(p->dense_bytes + p->expert_bytes, all,
	             "every byte of the file is the coordinator's or the workers'");
	cr_expect_eq(p->dense_bytes - p->dense_read, embd->size + FX35_MTP);
	cr_expect_eq(p->nodes[1].experts + p->nodes[2].experts, p->expert_bytes);
	/* KV: 1 attention layer of 2 heads x 32, f16: a block of 256 positions is
	 * 128 B x 2 (K, V) x 256 = 65536 B; MTP drafting keeps the block's KV too */
	cr_expect_eq(p->kv_block, 65536u);
	free(p);
	moe_plan_opts pm = po;
	pm.mtp = true;
	p = plan_of(m, &o, &pm);
	cr_expect_eq(p->kv_block, 2 * 65536u);
	free(p);
	moe_model_destroy(m);
}

Test(plan_fixture, kv_types)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	moe_plan_opts po = small_opts();
	static const struct {
		moe_type t;
		uint64_t block;
	} want[] = {{MOE_TYPE_F32, 131072}, {MOE_TYPE_Q8_0, 34816}, {MOE_TYPE_Q4_0, 18432}};
	for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
		po.kv_type = want[i].t;
		moe_plan *p = plan_of(m, &o, &po);
		cr_expect_eq(p->kv_block, want[i].block, "%s", moe_fwd_kv_type_name(want[i].t));
		free(p);
	}
	moe_model_destroy(m);
}

/* caps 2,000,000 and 10,000,000: an expert index costs 4 x 98304 = 393216 B;
 * a's share 16 x 2/12 = 2.67 -> 3 indices (under its 5 = 2000000 / 393216),
 * b the other 13: 3 x 393216 = 1179648, 13 x 393216 = 5111808 */
Test(plan_fixture, caps_place_as_start)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(2000000, 10000000);
	const moe_plan_opts po = small_opts();
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->nodes[1].experts, 1179648u);
	cr_expect_eq(p->nodes[2].experts, 5111808u);
	cr_expect(p->fits);
	free(p);
	moe_model_destroy(m);
}

/* coordinator mem 8,000,000: fixed dense 3038528 + 2 MiB = 5135680, room
 * 2864320; a sequence at 1000 positions 262144 + 116736 = 378880 -> 7
 * sequences; 3 sequences get 954773 each, less the state 838037, / 65536 =
 * 12 blocks = 3072 positions */
Test(plan_fixture, largest_context)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	moe_cluster_opts o = two_workers(0, 0);
	o.coord_mem = 8000000;
	const moe_plan_opts po = small_opts();
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->max_parallel, 7);
	cr_expect_eq(p->max_ctx, 3072);
	cr_expect(p->fits);
	free(p);
	moe_model_destroy(m);
}

/* bw 1e9 B/s everywhere at efficiency 0.5, rtt 100 us, link 1e9 B/s, two
 * uncapped workers (half the experts each), depth 0:
 * batch 1: P(chosen) = 1 - (1 - 4/16) = 0.25 (4 distinct); coordinator
 *   2776384 + 2 x 116736 = 3009856 B / 5e8 = 6.019712 ms; a worker reads
 *   98304 x 16 x 0.25 x 0.5 = 196608 B a layer = 0.393216 ms, plus 100 us +
 *   (512 B activation (f32 for F32 weights) + 128 x 8 B partial) / 1e9 =
 *   101.536 us; 4 layers x 0.494752 ms = 1.979008 ms; step 7.99872 ms
 * batch 4: P = 1 - 0.75^4 = 0.68359375 (10.9375 distinct); coordinator
 *   2776384 + 4 x 233472 = 3710272 B = 7.420544 ms; worker 537600 B =
 *   1.0752 ms + 100 us + 4 x 1536 B / 1e9 = 106.144 us; 4 x 1.181344 =
 *   4.725376 ms; step 12.14592 ms, 329.33 tok/s in all */
Test(plan_fixture, decode_estimate)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	moe_plan_opts po = small_opts();
	po.bw = 1e9;
	po.efficiency = 0.5;
	po.rtt_us = 100;
	po.net_bps = 1e9;
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->speed[0].batch, 1);
	cr_expect_float_eq(p->speed[0].distinct, 4.0, 1e-9);
	cr_expect_float_eq(p->speed[0].coord_s, 6.019712e-3, 1e-12);
	cr_expect_float_eq(p->speed[0].step_s, 7.99872e-3, 1e-12);
	cr_expect_float_eq(p->speed[0].tok_s_stream, 1 / 7.99872e-3, 1e-6);
	cr_expect_eq(p->speed[1].batch, 4);
	cr_expect_float_eq(p->speed[1].distinct, 10.9375, 1e-9);
	cr_expect_float_eq(p->speed[1].coord_s, 7.420544e-3, 1e-12);
	cr_expect_float_eq(p->speed[1].step_s, 12.14592e-3, 1e-12);
	cr_expect_float_eq(p->speed[1].tok_s_total, 4 / 12.14592e-3, 1e-6);
	cr_expect_eq(p->speed[2].batch, 16);
	/* with "gops" 0.5 (5e8 operations a second) the operations add, at batch
	 * 4: the coordinator's 2 x 4 tokens x 694096 values read per step (2776384
	 * B of F32) = 5552768 -> 11.105536 ms, 18.52608 ms in all; a worker's
	 * layer 2 x 4 tokens x 4 experts x 0.5 share x 24576 values an expert =
	 * 393216 -> 0.786432 ms, 1.967776 ms with the bytes and the link; step
	 * 18.52608 + 4 x 1.967776 = 26.397184 ms */
	po.gops = 0.5;
	cr_assert_eq(moe_plan_compute(p, m, &o, &po), MOE_OK);
	cr_expect_eq(p->dense_params, 694096u);
	cr_expect_float_eq(p->speed[1].coord_s, 18.52608e-3, 1e-12);
	cr_expect_float_eq(p->speed[1].step_s, 26.397184e-3, 1e-12);
	/* 2 coordinators at batch 1 each (no gops): the workers see 2 tokens, P =
	 * 1 - 0.75^2 = 0.4375 (7 distinct); a coordinator still 6.019712 ms; a
	 * worker reads 98304 x 16 x 0.4375 x 0.5 = 344064 B = 0.688128 ms, link
	 * 100 us + 2 x 1536 B / 1e9 = 103.072 us; 4 x 0.7912 = 3.1648 ms; step
	 * 9.184512 ms, 2 tokens a step in all */
	po.gops = 0;
	po.n_coordinators = 2;
	cr_assert_eq(moe_plan_compute(p, m, &o, &po), MOE_OK);
	cr_expect_eq(p->n_coordinators, 2);
	cr_expect_float_eq(p->speed[0].distinct, 7.0, 1e-9);
	cr_expect_float_eq(p->speed[0].coord_s, 6.019712e-3, 1e-12);
	cr_expect_float_eq(p->speed[0].step_s, 9.184512e-3, 1e-12);
	cr_expect_float_eq(p->speed[0].tok_s_stream, 1 / 9.184512e-3, 1e-6);
	cr_expect_float_eq(p->speed[0].tok_s_total, 2 / 9.184512e-3, 1e-6);
	po.n_coordinators = 65;
	cr_expect_eq(moe_plan_compute(p, m, &o, &po), MOE_ERR_INVAL);
	free(p);
	moe_model_destroy(m);
}

/* moe_plan_opts.batches (bench cluster --netns asks for its sweep's): the
 * estimates of decode_estimate's figures, in the order asked, 0 keeping its
 * default slot (16) */
Test(plan_fixture, batches_asked_for)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	moe_plan_opts po = small_opts();
	po.bw = 1e9;
	po.efficiency = 0.5;
	po.rtt_us = 100;
	po.net_bps = 1e9;
	po.batches[0] = 4;
	po.batches[1] = 1;
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->speed[0].batch, 4);
	cr_expect_float_eq(p->speed[0].distinct, 10.9375, 1e-9);
	cr_expect_float_eq(p->speed[0].step_s, 12.14592e-3, 1e-12);
	cr_expect_eq(p->speed[1].batch, 1);
	cr_expect_float_eq(p->speed[1].step_s, 7.99872e-3, 1e-12);
	cr_expect_eq(p->speed[2].batch, 16);
	po.batches[2] = -1;
	cr_expect_eq(moe_plan_compute(p, m, &o, &po), MOE_ERR_INVAL);
	free(p);
	moe_model_destroy(m);
}

/* --layers 8 from the 4-layer file: layers 0..3 twice: dense 524800 + 2 x
 * (3 x 648896 + 567040) = 5552256, experts 2 x 6291456, 2 attention layers
 * (a f16 block 131072), 6 DeltaNet layers (233472 B a sequence) */
Test(plan_fixture, layers_scale)
{
	moe_model *m = open_model("MOE_FIXTURES", "qwen3next-tiny-F32.gguf");
	const moe_cluster_opts o = two_workers(0, 0);
	moe_plan_opts po = small_opts();
	po.n_layer = 8;
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->n_attn, 2);
	cr_expect_eq(p->n_rec, 6);
	cr_expect_eq(p->dense_bytes, 5552256u);
	cr_expect_eq(p->expert_bytes, 2 * FX_EXPERTS);
	cr_expect_eq(p->kv_block, 131072u);
	cr_expect_eq(p->state_seq, 233472u);
	cr_expect_eq(p->nodes[1].experts, 2 * 8 * 4 * FX_EXPERT);
	po.n_layer = 6;
	cr_expect_eq(moe_plan_compute(p, m, &o, &po), MOE_ERR_INVAL, "6 is no multiple of 4");
	free(p);
	moe_model_destroy(m);
}

/* ---- the demo model bench cluster runs, by hand ------------------------------------
 *
 * models/kjv-qwen3next-Q4_K_M.gguf: hidden 256, 4 layers (3 DeltaNet), 16
 * experts, expert FFN 128, 2 KV heads x 32, DeltaNet 2 key heads x 64, 4
 * value heads x 64.  An expert: gate and up Q4_K 128 rows of 256 values
 * (one 144-byte block) = 2 x 18432; down 256 rows of 128 values, Q5_0 in
 * layers 0-1 (4 blocks x 22 = 88 B: 22528) and Q8_0 in layers 2-3 (4 x 34 =
 * 136 B: 34816): 59392 and 71680; experts 16 x 2 x (59392 + 71680) =
 * 4194304.  Its tensors are 6837856 bytes (moemesh inspect's total), so the
 * dense part is 2643552, and read per step 2643552 - token_embd's 589824 =
 * 2053728.  State: conv 3 x (2x2x64 + 4x64 = 512) + 4 x 64 x 64 = 17920
 * floats = 71680 B a layer, 215040 for 3.  The activation row of Q4_K
 * experts: one Q8_K block of 256 = 4 + 256 + 32 = 292 B. */
Test(plan_bench_model, bytes)
{
	moe_model *m = open_model("MOE_SOURCE_DIR", "models/kjv-qwen3next-Q4_K_M.gguf");
	moe_cluster_opts o = {.spawn = 2};
	moe_plan_opts po = small_opts();
	po.bw = 1e9;
	po.efficiency = 1;
	po.rtt_us = 50;
	po.net_bps = 1e12;
	moe_plan *p = plan_of(m, &o, &po);
	cr_expect_eq(p->expert_bytes, 4194304u);
	cr_expect_eq(p->dense_bytes, 2643552u);
	cr_expect_eq(p->dense_read, 2053728u);
	cr_expect_eq(p->state_seq, 215040u);
	cr_expect_eq(p->kv_block, FX_KV_BLOCK_F16);
	cr_expect_eq(p->nodes[1].experts, 2097152u);
	/* batch 1: coordinator 2053728 + 2 x 215040 = 2483808 B / 1e9; a worker's
	 * layer: 8 experts x 0.25 chosen: layers 0-1 2 x 59392 = 118784 B, 2-3
	 * 2 x 71680 = 143360 B; plus 50 us + (292 + 2048) B / 1e12 each layer */
	const double want = 2483808e-9 + (2 * 118784 + 2 * 143360) * 1e-9 + 4 * (50e-6 + 2340e-12);
	cr_expect_float_eq(p->speed[0].step_s, want, 1e-12);
	free(p);
	moe_model_destroy(m);
}

/* ---- refusals through the program -------------------------------------------------- */

static char *write_file(const char *text)
{
	char *path = strdup("/tmp/moemesh-test-plan-XXXXXX");
	cr_assert(path != NULL);
	const int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

/* Runs `moemesh plan ARGS` with stdout and stderr into *out and *err (NUL
 * terminated, caller frees); returns the exit status. */
static int run_plan(char **out, char **err, const char *args)
{
	const char *bin = getenv("MOE_BIN");
	cr_assert(bin != NULL, "MOE_BIN is not set");
	char o_path[] = "/tmp/moemesh-test-plan-out-XXXXXX",
	     e_path[] = "/tmp/moemesh-test-plan-err-XXXXXX";
	const int ofd = mkstemp(o_path), efd = mkstemp(e_path);
	cr_assert(ofd >= 0 && efd >= 0);
	close(ofd);
	close(efd);
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "'%s' plan %s >%s 2>%s", bin, args, o_path, e_path);
	const int st = system(cmd);
	size_t n;
	cr_assert_eq(moe_read_file(out, &n, o_path, 1 << 20), MOE_OK);
	cr_assert_eq(moe_read_file(err, &n, e_path, 1 << 20), MOE_OK);
	unlink(o_path);
	unlink(e_path);
	cr_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static char *fixture_path(void)
{
	static char path[1024];
	snprintf(path, sizeof path, "%s/qwen3next-tiny-F32.gguf", getenv("MOE_FIXTURES"));
	return path;
}

/* caps 2,000,000 each: a takes 16 x 0.5 = 8 indices, cut to 5 (its cap /
 * 393216); b the other 11: 4325376 B, over 2000000 by 2325376 */
Test(plan_refuse, worker_over_cap)
{
	char *cf =
	    write_file("{\"workers\": ["
	               "{\"url\": \"tcp://10.0.0.2:7070\", \"name\": \"a\", \"mem\": 2000000},"
	               "{\"url\": \"tcp://10.0.0.3:7070\", \"name\": \"b\", \"mem\": 2000000}]}");
	char args[2048], *out, *err;
	snprintf(args, sizeof args, "-m %s --cluster %s --ctx 1000", fixture_path(), cf);
	cr_expect_eq(run_plan(&out, &err, args), 1);
	cr_expect(strstr(err, "worker b (tcp://10.0.0.3:7070) would hold 4325376 bytes of "
	                      "experts, over its \"mem\" cap of 2000000 by 2325376; the experts "
	                      "are 6291456 bytes, the caps of all workers 4000000") != NULL,
	          "stderr: %s", err);
	free(out);
	free(err);
	unlink(cf);
	free(cf);
}

/* coordinator mem 6,000,000 against 3038528 + 3 x 262144 + 3 x 116736 + 1 MiB
 * + 1 MiB = 6272320: short by 272320 */
Test(plan_refuse, coordinator_over_mem)
{
	char *cf = write_file("{\"coordinator\": {\"name\": \"head\", \"mem\": 6000000},"
	                      " \"workers\": [\"tcp://10.0.0.2:7070\"]}");
	char args[2048], *out, *err;
	snprintf(args, sizeof args,
	         "-m %s --cluster %s --ctx 1000 --parallel 3 --cache-ram 1 --overhead 1",
	         fixture_path(), cf);
	cr_expect_eq(run_plan(&out, &err, args), 1);
	cr_expect(strstr(err, "coordinator head would hold 6272320 bytes") != NULL, "%s", err);
	cr_expect(strstr(err, "over its \"mem\" of 6000000 by 272320") != NULL, "%s", err);
	free(out);
	free(err);
	/* the same with room: exit 0 */
	snprintf(args, sizeof args,
	         "-m %s --cluster %s --ctx 1000 --parallel 2 --cache-ram 1 --overhead 1",
	         fixture_path(), cf);
	cr_expect_eq(run_plan(&out, &err, args), 0, "%s", err);
	free(out);
	free(err);
	unlink(cf);
	free(cf);
}

/* serve refuses at start in the same words: with its 1 GiB overhead the
 * coordinator holds 3038528 + 786432 + 350208 + 1048576 + 1073741824 =
 * 1078965568 bytes, over 6000000 by 1072965568 */
Test(plan_refuse, serve_at_start)
{
	char *cf = write_file("{\"coordinator\": {\"name\": \"head\", \"mem\": 6000000},"
	                      " \"workers\": [\"tcp://127.0.0.1:1\"]}");
	const char *bin = getenv("MOE_BIN");
	char cmd[4096], e_path[] = "/tmp/moemesh-test-plan-err-XXXXXX";
	const int efd = mkstemp(e_path);
	cr_assert(efd >= 0);
	close(efd);
	snprintf(cmd, sizeof cmd,
	         "'%s' serve -m %s --cluster %s --port 0 --ctx 1000 --parallel 3 --cache-ram 1 "
	         "2>%s",
	         bin, fixture_path(), cf, e_path);
	const int st = system(cmd);
	char *err;
	size_t n;
	cr_assert_eq(moe_read_file(&err, &n, e_path, 1 << 20), MOE_OK);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d", st);
	cr_expect(strstr(err, "coordinator head would hold 1078965568 bytes") != NULL, "%s", err);
	cr_expect(strstr(err, "over its \"mem\" of 6000000 by 1072965568") != NULL, "%s", err);
	free(err);
	unlink(e_path);
	unlink(cf);
	free(cf);
}

Test(plan_json, parses)
{
	char *cf =
	    write_file("{\"coordinator\": {\"mem\": 8000000, \"bw\": \"1GB/s\"}, \"workers\": ["
	               "{\"url\": \"tcp://10.0.0.2:7070\", \"bw\": 1e9, \"rtt_us\": 100, \"net\": "
	               "\"8Gbit/s\"},"
	               "{\"url\": \"tcp://10.0.0.3:7070\", \"bw\": \"1000MB/s\", \"rtt_us\": 100, "
	               "\"net\": 1e9}]}");
	char args[2048], *out, *err;
	snprintf(args, sizeof args,
	         "-m %s --cluster %s --ctx 1000 --parallel 3 --cache-ram 1 --overhead 1 "
	         "--efficiency 0.5 --json",
	         fixture_path(), cf);
	cr_assert_eq(run_plan(&out, &err, args), 0, "%s", err);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	cr_assert(j != NULL, "not JSON (%s): %s", je.text, out);
	cr_expect_eq(json_integer_value(json_object_get(j, "dense_bytes")), (json_int_t)FX_DENSE);
	cr_expect(json_is_true(json_object_get(j, "fits")));
	cr_expect_eq(json_integer_value(json_object_get(j, "max_ctx")), 3072);
	cr_expect_eq(json_integer_value(json_object_get(j, "max_parallel")), 7);
	json_t *nodes = json_object_get(j, "nodes");
	cr_assert_eq(json_array_size(nodes), 3);
	cr_expect_str_eq(json_string_value(json_object_get(json_array_get(nodes, 0), "role")),
	                 "coordinator");
	cr_expect_eq(json_integer_value(json_object_get(json_array_get(nodes, 2), "expert_bytes")),
	             (json_int_t)(8 * 4 * FX_EXPERT));
	json_t *d0 = json_array_get(json_object_get(j, "decode"), 0);
	cr_expect_eq(json_integer_value(json_object_get(d0, "batch")), 1);
	/* as decode_estimate: the same figures from the file (8 Gbit/s = 1e9 B/s) */
	cr_expect_float_eq(json_number_value(json_object_get(d0, "step_s")), 7.99872e-3, 1e-9);
	json_decref(j);
	free(out);
	free(err);
	unlink(cf);
	free(cf);
}

/* ---- the cluster file's figures ---------------------------------------------------- */

static moe_err parse_file(moe_cluster_opts *o, const char *text)
{
	char *cf = write_file(text);
	char *argv[] = {"--cluster", cf};
	int i = 0;
	const moe_err err = moe_cluster_parse_arg(o, &i, 2, argv);
	unlink(cf);
	free(cf);
	return err;
}

Test(plan_config, figures)
{
	moe_cluster_opts o = {0};
	cr_assert_eq(parse_file(&o, "{\"coordinator\": {\"name\": \"h\", \"mem\": \"128GiB\", "
	                            "\"bw\": \"215GB/s\"}, \"workers\": [{\"url\": "
	                            "\"tcp://h2:1\", \"bw\": \"1.5GiB/s\", \"rtt_us\": 100, "
	                            "\"net\": \"10Gbit/s\"}, \"tcp://h3:1\"]}"),
	             MOE_OK, "%s", moe_err_detail());
	cr_expect_str_eq(o.coord_name, "h");
	cr_expect_eq(o.coord_mem, 128ull << 30);
	cr_expect_float_eq(o.coord_bw, 215e9, 1);
	cr_expect_float_eq(o.bw[0], 1.5 * 1073741824.0, 1);
	cr_expect_float_eq(o.rtt_us[0], 100, 1e-9);
	cr_expect_float_eq(o.net_bps[0], 1.25e9, 1);
	cr_expect_eq(o.bw[1], 0);
	cr_expect_eq(o.n_urls, 2);
}

Test(plan_config, errors)
{
	static const struct {
		const char *text, *want;
	} cases[] = {
	    {"{\"workers\": [{\"url\": \"tcp://h:1\", \"bw\": \"fast\"}]}",
	     "workers[0].bw is not a rate"},
	    {"{\"workers\": [{\"url\": \"tcp://h:1\", \"bw\": -5}]}",
	     "workers[0].bw is not a rate"},
	    {"{\"workers\": [{\"url\": \"tcp://h:1\", \"net\": \"10Gbps\"}]}",
	     "workers[0].net is not a rate"},
	    {"{\"workers\": [{\"url\": \"tcp://h:1\", \"rtt_us\": -1}]}",
	     "workers[0].rtt_us is not a number of microseconds"},
	    {"{\"workers\": [{\"url\": \"tcp://h:1\", \"rtt_us\": \"100\"}]}",
	     "workers[0].rtt_us is not a number of microseconds"},
	    {"{\"workers\": [\"tcp://h:1\"], \"coordinator\": {\"cpu\": 1}}",
	     "unknown key \"cpu\" in coordinator"},
	    {"{\"workers\": [\"tcp://h:1\"], \"coordinator\": {\"mem\": \"lots\"}}",
	     "coordinator.mem is not a size"},
	    {"{\"workers\": [\"tcp://h:1\"], \"coordinator\": {\"bw\": \"9 furlongs\"}}",
	     "coordinator.bw is not a rate"},
	    {"{\"workers\": [\"tcp://h:1\"], \"coordinator\": [1]}",
	     "\"coordinator\" must be an object"},
	};
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		moe_cluster_opts o = {0};
		cr_expect_eq(parse_file(&o, cases[k].text), MOE_ERR_INVAL, "%s", cases[k].text);
		cr_expect(strstr(moe_err_detail(), cases[k].want) != NULL, "%s: got %s",
		          cases[k].text, moe_err_detail());
		cr_expect_eq(o.n_urls, 0, "o unchanged on an error");
	}
}

Test(plan_config, three_box_example)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/deploy/cluster.3box.example.json",
	         getenv("MOE_SOURCE_DIR"));
	char *argv[] = {"--cluster", path};
	int i = 0;
	moe_cluster_opts o = {0};
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 2, argv), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(o.n_urls, 2);
	cr_expect(o.coord_mem > 0 && o.coord_bw > 0 && o.bw[0] > 0 && o.rtt_us[1] > 0);
}

/* ---- probe ------------------------------------------------------------------------- */

/* probe against a probe --echo on loopback: one line of "key": value pairs
 * that make a JSON object once braced, with the four figures positive, and
 * the disk read as a comment line */
Test(probe, fragment, .timeout = 120)
{
	const char *bin = getenv("MOE_BIN");
	cr_assert(bin != NULL, "MOE_BIN is not set");
	const int port = free_port(); /* not the pid's: ctest -j runs others beside */
	char url[64];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	const pid_t echo = fork();
	if (echo == 0) {
		execl(bin, "moemesh", "probe", "--echo", url, (char *)NULL);
		_exit(127);
	}
	char cmd[4096], o_path[] = "/tmp/moemesh-test-probe-XXXXXX";
	const int ofd = mkstemp(o_path);
	cr_assert(ofd >= 0);
	close(ofd);
	/* the echo may take a moment to listen: the probe's connect waits 5 s */
	snprintf(cmd, sizeof cmd,
	         "sleep 0.3; '%s' probe --threads 1 --peer %s --pings 20 --read %s --read-mib 4 "
	         ">%s",
	         bin, url, fixture_path(), o_path);
	const int st = system(cmd);
	kill(echo, SIGTERM);
	waitpid(echo, NULL, 0);
	char *out;
	size_t n;
	cr_assert_eq(moe_read_file(&out, &n, o_path, 1 << 20), MOE_OK);
	unlink(o_path);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, out);
	char *nl = strchr(out, '\n');
	cr_assert(nl != NULL, "%s", out);
	cr_expect(strncmp(nl + 1, "// disk: ", 9) == 0, "%s", out);
	*nl = '\0';
	char obj[1024];
	snprintf(obj, sizeof obj, "{%s}", out);
	json_error_t je;
	json_t *j = json_loads(obj, 0, &je);
	cr_assert(j != NULL, "not a JSON fragment (%s): %s", je.text, obj);
	double bw = 0;
	cr_expect_eq(moe_parse_rate(&bw, json_string_value(json_object_get(j, "bw"))), MOE_OK);
	cr_expect(bw > 0);
	cr_expect(json_number_value(json_object_get(j, "gops")) > 0);
	cr_expect(json_number_value(json_object_get(j, "rtt_us")) > 0);
	cr_expect(json_is_string(json_object_get(j, "net")));
	json_decref(j);
	free(out);
}
