/* cmd_make_model.c - `moemesh make-model`: synthetic random-weight GGUF models, or
 * trained weights from raw tensor files written as GGUF. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/core.h"
#include "devtools/devtools.h"
#include "model/model.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: moemesh make-model --arch qwen3moe|qwen3next|qwen35moe --preset NAME\n"
	    "                          [--layers N] [--mtp N]\n"
	    "                          [--type F32|F16|BF16|Q8_0|Q4_0|Q4_K_M] [--seed S]\n"
	    "                          [--tokenizer tokenizer.json] [--dry-run] -o OUT.gguf\n"
	    "                          [--from-weights DIR] [--tokenizer-gguf MODEL.gguf]\n"
	    "\n"
	    "Writes a random-weight model with llama.cpp's metadata keys, tensor names and\n"
	    "shapes. Presets: tiny (every arch, fixture-sized; qwen35moe's with 1 MTP block),\n"
	    "qwen3next-80b-4L (qwen3next: Qwen3-Next-80B-A3B's per-layer dimensions, 4 layers),\n"
	    "qwen3-30b-a3b-4L (qwen3moe), qwen35-397b-4L (qwen35moe: Qwen3.5-397B-A17B's\n"
	    "per-layer dimensions, 4 layers + 1 MTP block). --layers N: trunk layers (MTP\n"
	    "blocks come after them). --mtp N: N MTP blocks (1 to 4; qwen3next, qwen35moe)\n"
	    "instead of the preset's. tiny256 (qwen3moe: every row length a multiple of 256).\n"
	    "--tokenizer writes the real vocabulary and tokenizer metadata of a Hugging Face\n"
	    "tokenizer.json (e.g. Qwen3's); without it a small synthetic BPE vocabulary is\n"
	    "used. Default type F32, seed 1. --dry-run prints the tensors and sizes only.\n"
	    "--from-weights DIR: trained weights instead of random ones, one file per tensor\n"
	    "named as in the GGUF, raw little-endian F32 in ggml order (what\n"
	    "devtools/train/train_kjv_qwen35moe.py exports; preset kjv for its shape).\n"
	    "--tokenizer-gguf copies the tokenizer.* keys of another GGUF (same token count).\n");
}

typedef struct progress_state {
	double t0;
	double last;
	int tty;
} progress_state;

static void progress(void *ctx, uint64_t done, uint64_t total)
{
	progress_state *ps = ctx;
	double now = moe_now_s();

	if (!ps->tty || (now - ps->last < 0.2 && done < total))
		return;
	ps->last = now;
	fprintf(stderr, "\rmake-model: %5.1f%%  %.2f / %.2f GB  %.0f MB/s   ",
	        total ? 100.0 * (double)done / (double)total : 100.0, (double)done / 1e9,
	        (double)total / 1e9, (double)done / 1e6 / (now - ps->t0 + 1e-9));
	if (done >= total)
		fputc('\n', stderr);
}

/* The vocabulary of a tokenizer.json as make-model writes it. Tokens and
 * merges must be NUL-free (they are written as C strings). *merges is a new
 * array of pointers into spec (caller frees the array). */
static moe_err vocab_of_spec(moe_synth_vocab *v, const char ***merges,
                             const moe_tokenizer_spec *spec)
{
	for (uint32_t i = 0; spec->token_lens && i < spec->n_tokens; i++)
		if (strlen(spec->tokens[i]) != spec->token_lens[i])
			return moe_fail(MOE_ERR_UNSUPPORTED, "token %u contains a NUL byte", i);
	for (uint32_t i = 0; spec->merge_lens && i < spec->n_merges; i++)
		if (strlen(spec->merges[i]) != spec->merge_lens[i])
			return moe_fail(MOE_ERR_UNSUPPORTED, "merge %u contains a NUL byte", i);
	*merges = malloc((spec->n_merges + 1) * sizeof(char *));
	if (*merges == NULL)
		return moe_fail(MOE_ERR_NOMEM, "merges");
	for (uint32_t i = 0; i < spec->n_merges; i++)
		(*merges)[i] = spec->merges[i];
	*v = (moe_synth_vocab){spec->tokens,   spec->token_types, spec->n_tokens, *merges,
	                       spec->n_merges, spec->bos_id,      spec->eos_id,   spec->pad_id};
	return MOE_OK;
}

static int print_plan(const moe_synth_opts *o)
{
	moe_synth_tensor *t;
	size_t n;
	uint64_t total = 0;

	if (moe_synth_plan(&t, &n, o) != MOE_OK) {
		fprintf(stderr, "make-model: %s\n", moe_err_detail());
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		char shape[96];
		int k = snprintf(shape, sizeof(shape), "[%lld", (long long)t[i].ne[0]);
		for (uint32_t d = 1; d < t[i].n_dims; d++)
			k += snprintf(shape + k, sizeof(shape) - (size_t)k, ", %lld",
			              (long long)t[i].ne[d]);
		snprintf(shape + k, sizeof(shape) - (size_t)k, "]");
		printf("%-34s %-6s %-22s %12llu\n", t[i].name, moe_type_get(t[i].type)->name, shape,
		       (unsigned long long)t[i].bytes);
		total += t[i].bytes;
	}
	printf("%zu tensors, %llu bytes (%.2f GB)\n", n, (unsigned long long)total,
	       (double)total / 1e9);
	free(t);
	return 0;
}

int moe_cmd_make_model(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"arch", required_argument, NULL, 'a'},
	    {"preset", required_argument, NULL, 'p'},
	    {"layers", required_argument, NULL, 'l'},
	    {"type", required_argument, NULL, 't'},
	    {"seed", required_argument, NULL, 's'},
	    {"tokenizer", required_argument, NULL, 'k'},
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {"dry-run", no_argument, NULL, 'n'},
	    {"mtp", required_argument, NULL, 'm'},
	    {"from-weights", required_argument, NULL, 'w'},
	    {"tokenizer-gguf", required_argument, NULL, 'g'},
	    {NULL, 0, NULL, 0},
	};
	moe_synth_opts o = {.ftype = MOE_FTYPE_F32, .seed = 1};
	const char *out = NULL, *tokenizer = NULL;
	progress_state ps = {0};
	moe_tokenizer_spec *spec = NULL;
	moe_synth_vocab vocab = {0};
	const char **merges = NULL;
	int dry_run = 0;
	moe_err err;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'a':
			o.arch = optarg;
			break;
		case 'p':
			o.preset = optarg;
			break;
		case 'l':
			if (moe_parse_int(&o.n_layer, optarg, 1, 1024) != 0) {
				fprintf(stderr,
				        "make-model: --layers needs a number from 1 to 1024\n");
				return 2;
			}
			break;
		case 'm':
			if (moe_parse_int(&o.mtp, optarg, 1, 4) != 0) {
				fprintf(stderr, "make-model: --mtp needs a number from 1 to 4\n");
				return 2;
			}
			break;
		case 't':
			if (moe_ftype_parse(&o.ftype, optarg) != MOE_OK) {
				fprintf(stderr, "make-model: %s\n", moe_err_detail());
				return 2;
			}
			break;
		case 's':
			o.seed = strtoull(optarg, NULL, 0);
			break;
		case 'k':
			tokenizer = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'n':
			dry_run = 1;
			break;
		case 'w':
			o.weights_dir = optarg;
			break;
		case 'g':
			o.tokenizer_gguf = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (o.arch == NULL || o.preset == NULL || (out == NULL && !dry_run) || optind != argc ||
	    (tokenizer != NULL && o.tokenizer_gguf != NULL)) {
		usage(stderr);
		return 2;
	}
	if (tokenizer != NULL) {
		err = moe_tokenizer_spec_read_hf(&spec, tokenizer);
		if (err == MOE_OK)
			err = vocab_of_spec(&vocab, &merges, spec);
		if (err != MOE_OK) {
			fprintf(stderr, "make-model: %s: %s: %s\n", tokenizer, moe_err_name(err),
			        moe_err_detail());
			moe_tokenizer_spec_free(spec);
			return 1;
		}
		o.vocab = &vocab;
	}
	if (dry_run) {
		c = print_plan(&o);
		goto out_free;
	}
	ps.t0 = ps.last = moe_now_s();
	ps.tty = isatty(STDERR_FILENO);
	o.progress = progress;
	o.progress_ctx = &ps;
	err = moe_synth_write(out, &o);
	if (err != MOE_OK) {
		fprintf(stderr, "make-model: %s: %s: %s\n", out, moe_err_name(err),
		        moe_err_detail());
		c = 1;
		goto out_free;
	}
	fprintf(stderr, "make-model: wrote %s (%s %s, %s) in %.1f s\n", out, o.arch, o.preset,
	        moe_ftype_name(o.ftype), moe_now_s() - ps.t0);
	c = 0;
out_free:
	free(merges);
	moe_tokenizer_spec_free(spec);
	return c;
}
