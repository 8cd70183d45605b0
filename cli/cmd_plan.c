/*
 * cmd_plan.c - `moemesh plan`: what a model will take on a cluster (the
 * bytes each node holds against its memory, the largest context x parallel
 * sequences, the expected decode speed) from the model file and the cluster
 * file alone; refuses (exit 1) a model or a context that does not fit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/model.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh plan -m MODEL.gguf --cluster FILE [--ctx N] [--parallel S]\n"
	        "                    [--kv f16|f32|q8_0|q4_0] [--cache-ram MIB] [--overhead MIB]\n"
	        "                    [--layers N] [--depth N] [--efficiency F] [--bw RATE]\n"
	        "                    [--worker-bw RATE] [--gops N] [--rtt-us US] [--net RATE]\n"
	        "                    [--spec none|ngram|mtp] [--coordinators N] [--json]\n\n"
	        "For each node the bytes it will hold (the coordinator: dense weights, KV for\n"
	        "--ctx (default: the model's) x --parallel (4) sequences, DeltaNet states, the\n"
	        "prefix cache (--cache-ram, 8192), --overhead (1024); the workers: their expert\n"
	        "slices, replicas counted, placed as start places them) against its \"mem\"; the\n"
	        "largest context and parallel sequences that fit; decode tok/s per stream and in\n"
	        "all at batch 1, 4 and 16 from each node's \"bw\" (times --efficiency, 0.8),\n"
	        "\"gops\" (where given: compute bound) and link (\"rtt_us\", \"net\"; --bw,\n"
	        "--worker-bw, --gops, --rtt-us (100), --net (10Gbit/s) for nodes that state\n"
	        "none).  --layers N plans N trunk layers from the file's per-layer\n"
	        "figures (a multiple of its layers).  --depth: context depth of the estimate.\n"
	        "--spec mtp: serve's MTP drafting, whose MTP block keeps a KV cache too.\n"
	        "--coordinators N: N coordinators (each as the cluster file's) share the\n"
	        "workers, each decoding its own batch (tok/s total counts them all).\n"
	        "Exit 1 if the model or the context does not fit, naming the node and what is\n"
	        "short.  Cluster options as for run and serve:\n%s",
	        moe_cluster_usage());
}

int moe_cmd_plan(int argc, char **argv)
{
	const char *model = NULL;
	bool json = false;
	moe_cluster_opts co = {0};
	moe_plan_opts po;
	moe_plan_opts_default(&po);
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(s, "--json") == 0) {
			json = true;
			continue;
		}
		const moe_err ce = moe_cluster_parse_arg(&co, &i, argc, argv);
		if (ce == MOE_OK)
			continue;
		if (ce != MOE_ERR_NOT_FOUND) {
			fprintf(stderr, "moemesh plan: %s\n", moe_err_detail());
			return 2;
		}
		if (v == NULL)
			goto out_usage;
		i++;
		int bad = 0;
		long mib = 0;
		float x = 0;
		if (strcmp(s, "-m") == 0)
			model = v;
		else if (strcmp(s, "--ctx") == 0)
			bad = moe_parse_int(&po.n_ctx, v, 8, 1 << 24);
		else if (strcmp(s, "--parallel") == 0)
			bad = moe_parse_int(&po.n_parallel, v, 1, 1 << 16);
		else if (strcmp(s, "--kv") == 0)
			bad = moe_fwd_kv_type_parse(&po.kv_type, v) != MOE_OK;
		else if (strcmp(s, "--cache-ram") == 0) {
			bad = moe_parse_long(&mib, v, 0, 1L << 30);
			po.cache_bytes = (uint64_t)mib << 20;
		} else if (strcmp(s, "--overhead") == 0) {
			bad = moe_parse_long(&mib, v, 0, 1L << 30);
			po.overhead_bytes = (uint64_t)mib << 20;
		} else if (strcmp(s, "--layers") == 0)
			bad = moe_parse_int(&po.n_layer, v, 1, MOE_MAX_LAYERS * 64);
		else if (strcmp(s, "--coordinators") == 0)
			bad = moe_parse_int(&po.n_coordinators, v, 1, 64);
		else if (strcmp(s, "--spec") == 0) {
			moe_spec_mode sm;
			bad = moe_spec_mode_parse(&sm, v) != MOE_OK;
			po.mtp = sm == MOE_SPEC_MTP;
		} else if (strcmp(s, "--depth") == 0)
			bad = moe_parse_int(&po.depth, v, 0, 1 << 24);
		else if (strcmp(s, "--efficiency") == 0) {
			bad = moe_parse_float(&x, v) || !(x > 0) || x > 1;
			po.efficiency = x;
		} else if (strcmp(s, "--bw") == 0)
			bad = moe_parse_rate(&po.bw, v) != MOE_OK;
		else if (strcmp(s, "--worker-bw") == 0)
			bad = moe_parse_rate(&po.worker_bw, v) != MOE_OK;
		else if (strcmp(s, "--gops") == 0) {
			bad = moe_parse_float(&x, v) || !(x > 0) || x > 1e7;
			po.gops = x;
		} else if (strcmp(s, "--net") == 0)
			bad = moe_parse_rate(&po.net_bps, v) != MOE_OK;
		else if (strcmp(s, "--rtt-us") == 0) {
			bad = moe_parse_float(&x, v) || !(x >= 0) || x > 1e7;
			po.rtt_us = x;
		} else
			goto out_usage;
		if (bad) {
			fprintf(stderr, "moemesh plan: %s %s: bad value\n", s, v);
			return 2;
		}
	}
	if (model == NULL)
		goto out_usage;

	moe_model *m = NULL;
	moe_plan *p = malloc(sizeof *p);
	moe_err err = p ? moe_model_open(&m, model) : moe_fail(MOE_ERR_NOMEM, "plan");
	if (err == MOE_OK)
		err = moe_plan_compute(p, m, &co, &po);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh plan: %s: %s\n", moe_err_name(err), moe_err_detail());
		moe_model_destroy(m);
		free(p);
		return err == MOE_ERR_INVAL ? 2 : 1;
	}
	moe_plan_print(p, json, stdout);
	const int rc = p->fits ? 0 : 1;
	if (!p->fits)
		fprintf(stderr, "moemesh plan: does not fit: %s\n", p->why);
	moe_model_destroy(m);
	free(p);
	return rc;

out_usage:
	usage(stderr);
	return 2;
}
