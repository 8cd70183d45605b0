/* cmd_trace.c - `moemesh trace FILE [--csv]`: reads a routing trace (every
 * field checked, model/trace.h) and prints its summary or its rows as CSV;
 * and the writer's set-up and close that run and serve share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/core.h"
#include "model/model.h"
#include "proto/proto.h"

moe_err moe_cli_trace_create(moe_trace_writer **out, const moe_model *m, const char *path,
                             bool weights)
{
	const moe_hparams *hp = moe_model_hparams(m);
	moe_trace_info ti = {.flags = weights ? MOE_TRACE_WEIGHTS : 0,
	                     .n_layer = (uint32_t)hp->n_layer,
	                     .n_expert = (uint32_t)hp->n_expert,
	                     .k = (uint32_t)hp->n_expert_used};
	moe_err err = moe_model_identity(ti.model_id, moe_model_gguf(m));
	if (err != MOE_OK)
		return err;
	return moe_trace_writer_create(out, path, &ti);
}

moe_err moe_cli_trace_close(moe_trace_writer *w, const char *path)
{
	uint64_t rec, drop;
	bool failed;
	moe_trace_writer_counts(w, &rec, &drop, &failed);
	const moe_err err = moe_trace_writer_close(w);
	if (err != MOE_OK)
		moe_log(MOE_LOG_ERROR, "%s", moe_err_detail());
	else
		moe_log(MOE_LOG_INFO, "trace %s: %llu steps recorded, %llu dropped", path,
		        (unsigned long long)rec, (unsigned long long)drop);
	return err;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh trace FILE [--csv]\n\n"
	           "Reads a routing trace written by `moemesh run --trace FILE` or `moemesh\n"
	           "serve --trace FILE`, checking every field, and prints its header and\n"
	           "totals; with --csv, one row per step, token, layer and slot instead:\n"
	           "  step,seq,pos,layer,slot,expert,weight\n"
	           "(weight empty when the trace has none; slot 0 is the router's first\n"
	           "choice).  Exit status 1 when the file is corrupt or truncated (rows\n"
	           "before the bad record are printed).  `moemesh bench trace` replays a\n"
	           "trace against a placement.\n");
}

int moe_cmd_trace(int argc, char **argv)
{
	const char *path = NULL;
	bool csv = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--csv") == 0)
			csv = true;
		else if (argv[i][0] == '-' || path != NULL) {
			usage(stderr);
			return 2;
		} else
			path = argv[i];
	}
	if (path == NULL) {
		usage(stderr);
		return 2;
	}
	moe_trace_reader *r = NULL;
	moe_err err = moe_trace_reader_open(&r, path);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh trace: %s: %s\n", moe_err_name(err), moe_err_detail());
		return 1;
	}
	const moe_trace_info *h = moe_trace_reader_info(r);
	if (csv)
		printf("step,seq,pos,layer,slot,expert,weight\n");
	uint64_t n_rec = 0, n_tok = 0, n_steps = 0, dropped = 0, max_tok = 0;
	for (;;) {
		moe_trace_step s;
		bool done;
		if ((err = moe_trace_reader_next(r, &s, &done, &n_steps, &dropped)) != MOE_OK)
			break;
		if (done)
			break;
		n_rec++;
		n_tok += s.n_tok;
		max_tok = s.n_tok > max_tok ? s.n_tok : max_tok;
		if (!csv)
			continue;
		for (uint32_t t = 0; t < s.n_tok; t++)
			for (uint32_t il = 0; il < h->n_layer; il++)
				for (uint32_t j = 0; j < h->k; j++) {
					const size_t c = ((size_t)il * s.n_tok + t) * h->k + j;
					printf("%llu,%u,%u,%u,%u,%u,", (unsigned long long)s.step,
					       s.seq[t], s.pos[t], il, j, s.ids[c]);
					if (s.weights != NULL)
						printf("%.9g", (double)s.weights[c]);
					putchar('\n');
				}
	}
	if (err == MOE_OK && !csv) {
		char id[65];
		for (int i = 0; i < 32; i++)
			snprintf(id + 2 * i, 3, "%02x", h->model_id[i]);
		printf("trace %s: version %u, model %s\n"
		       "layers %u, experts %u, chosen per token %u, weights %s\n"
		       "steps %llu recorded, %llu dropped; tokens %llu (%.2f per step, at most "
		       "%llu)\n",
		       path, h->version, id, h->n_layer, h->n_expert, h->k,
		       (h->flags & MOE_TRACE_WEIGHTS) ? "yes" : "no", (unsigned long long)n_rec,
		       (unsigned long long)dropped, (unsigned long long)n_tok,
		       n_rec > 0 ? (double)n_tok / (double)n_rec : 0.0,
		       (unsigned long long)max_tok);
	}
	moe_trace_reader_destroy(r);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "moemesh trace: writing the output failed\n");
		return 1;
	}
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh trace: %s: %s\n", moe_err_name(err), moe_err_detail());
		return 1;
	}
	return 0;
}
