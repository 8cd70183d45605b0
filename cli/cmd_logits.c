/* cmd_logits.c - `moemesh logits`: run the forward pass over a token list and
 * write the raw float32 logits of every position. */
#include <errno.h>
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
	        "usage: moemesh logits -m MODEL.gguf --tokens ID,ID,... -o OUT.f32\n"
	        "                      [--one-by-one] [--kv f16|f32|q8_0|q4_0] [--threads N]\n"
	        "                      [--batch N]\n\n"
	        "Runs the tokens through the model (positions 0, 1, ...) and writes raw\n"
	        "little-endian float32 logits [n_tokens][n_vocab] to OUT (row i = after\n"
	        "token i).  All tokens go in one step (chunked by --batch, default 256),\n"
	        "or one token per step with --one-by-one.  --kv picks the KV cache type\n"
	        "(default f16).\n\n%s",
	        moe_cluster_usage());
}

static int fail(moe_err err)
{
	fprintf(stderr, "moemesh logits: %s: %s\n", moe_err_name(err), moe_err_detail());
	return 1;
}

int moe_cmd_logits(int argc, char **argv)
{
	const char *model = NULL, *out = NULL, *toks = NULL;
	bool one = false;
	moe_cluster_opts co = {0};
	moe_cluster *cl = NULL;
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const bool has = i + 1 < argc;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--one-by-one") == 0) {
			one = true;
		} else if (strcmp(a, "-m") == 0 && has) {
			model = argv[++i];
		} else if (strcmp(a, "-o") == 0 && has) {
			out = argv[++i];
		} else if (strcmp(a, "--tokens") == 0 && has) {
			toks = argv[++i];
		} else if (strcmp(a, "--kv") == 0 && has) {
			if (moe_fwd_kv_type_parse(&o.kv_type, argv[++i]) != MOE_OK)
				goto out_usage;
		} else if (strcmp(a, "--threads") == 0 && has) {
			if (moe_parse_int(&o.n_threads, argv[++i], 1, 1024) != 0)
				goto out_usage;
		} else if (strcmp(a, "--batch") == 0 && has) {
			if (moe_parse_int(&o.max_batch, argv[++i], 1, 1 << 20) != 0)
				goto out_usage;
		} else {
			moe_err ce = moe_cluster_parse_arg(&co, &i, argc, argv);
			if (ce == MOE_ERR_NOT_FOUND)
				goto out_usage;
			if (ce != MOE_OK) {
				fprintf(stderr, "moemesh logits: %s\n", moe_err_detail());
				return 2;
			}
		}
	}
	if (model == NULL || out == NULL || toks == NULL)
		goto out_usage;

	int32_t *tokens;
	size_t n_tokens;
	if (moe_arg_tokens(&tokens, &n_tokens, toks) != 0) {
		fprintf(stderr, "moemesh logits: bad token list '%s'\n", toks);
		return 2;
	}
	const int64_t n = (int64_t)n_tokens;
	int rc = 1;
	moe_model *m = NULL;
	moe_fwd *f = NULL;
	float *logits = NULL;
	int32_t *pos = NULL, *slots = NULL;
	moe_err err = moe_model_open(&m, model);
	if (err != MOE_OK) {
		rc = fail(err);
		goto out_free_tokens;
	}
	const int64_t nv = moe_model_hparams(m)->n_vocab;
	if (o.n_ctx == 0 || o.n_ctx < n)
		o.n_ctx = (int)n;
	if (moe_cluster_wanted(&co)) {
		if ((err = moe_cluster_create(&cl, m, model, &co)) != MOE_OK) {
			rc = fail(err);
			goto out_free_model;
		}
		o.experts = moe_cluster_backend(cl);
		o.overlap = moe_cluster_overlap_backend(cl);
	}
	if ((err = moe_fwd_create(&f, m, &o)) != MOE_OK) {
		rc = fail(err);
		goto out_free_cluster;
	}
	if (cl)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	logits = malloc((size_t)n * (size_t)nv * sizeof(float));
	pos = malloc((size_t)n * sizeof *pos);
	slots = calloc((size_t)n, sizeof *slots);
	if (logits == NULL || pos == NULL || slots == NULL) {
		rc = fail(moe_fail(MOE_ERR_NOMEM, "logits: %lld x %lld floats", (long long)n,
		                   (long long)nv));
		goto out_free_fwd;
	}
	for (int64_t i = 0; i < n; i++)
		pos[i] = (int32_t)i;
	int slot;
	if ((err = moe_fwd_seq_open(f, &slot)) != MOE_OK) {
		rc = fail(err);
		goto out_free_fwd;
	}
	const int64_t step = one ? 1 : n;
	for (int64_t i = 0; i < n; i += step) {
		const moe_batch b = {.n_tok = step,
		                     .tokens = tokens + i,
		                     .slot = slots + i,
		                     .pos = pos + i,
		                     .logits = NULL};
		if ((err = moe_fwd_step(f, logits + i * nv, &b)) != MOE_OK) {
			rc = fail(err);
			goto out_free_fwd;
		}
	}
	FILE *fp = fopen(out, "wb");
	if (fp == NULL) {
		rc = fail(moe_fail(MOE_ERR_IO, "opening %s: %s", out, strerror(errno)));
		goto out_free_fwd;
	}
	const size_t cnt = (size_t)n * (size_t)nv;
	const bool ok = fwrite(logits, sizeof(float), cnt, fp) == cnt;
	if (fclose(fp) != 0 || !ok) {
		rc = fail(moe_fail(MOE_ERR_IO, "writing %s: %s", out, strerror(errno)));
		goto out_free_fwd;
	}
	rc = 0;

out_free_fwd:
	free(logits);
	free(pos);
	free(slots);
	moe_fwd_destroy(f);
out_free_cluster:
	if ((err = moe_cluster_shutdown(cl)) != MOE_OK)
		rc = fail(err); /* a spawned worker crashed, even if failover hid it */
	moe_cluster_destroy(cl);
out_free_model:
	moe_model_destroy(m);
out_free_tokens:
	free(tokens);
	return rc;

out_usage:
	usage(stderr);
	return 2;
}
