/* cmd_gguf_split.c - `moemesh gguf-split`: write a model as several GGUF
 * files the way llama.cpp's gguf-split does (and so as moemesh and llama.cpp
 * both open them). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/core.h"
#include "model/model.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh gguf-split [--split-max-tensors N] IN.gguf OUT_PREFIX\n\n"
	           "Writes OUT_PREFIX-00001-of-0000K.gguf ... with at most N tensors each\n"
	           "(default 128), the first holding all metadata: llama.cpp's gguf-split\n"
	           "layout. IN may itself be the first file of a split model. moemesh opens\n"
	           "a split model through its first file.\n");
}

int moe_cmd_gguf_split(int argc, char **argv)
{
	const char *in = NULL, *prefix = NULL;
	int max_tensors = 128, n_files = 0;
	moe_gguf *g = NULL;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--split-max-tensors") == 0 && i + 1 < argc) {
			if (moe_parse_int(&max_tensors, argv[++i], 1, 1 << 30) != 0) {
				fprintf(stderr,
				        "moemesh gguf-split: --split-max-tensors %s: not an "
				        "integer in [1, 2^30]\n",
				        argv[i]);
				return 2;
			}
			continue;
		}
		if (argv[i][0] == '-' || (in != NULL && prefix != NULL)) {
			usage(stderr);
			return 2;
		}
		if (in == NULL)
			in = argv[i];
		else
			prefix = argv[i];
	}
	if (in == NULL || prefix == NULL) {
		usage(stderr);
		return 2;
	}
	moe_err err = moe_gguf_open(&g, in);
	if (err == MOE_OK)
		err = moe_gguf_split_write(&n_files, g, prefix, max_tensors);
	moe_gguf_close(g);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh gguf-split: %s: %s\n", moe_err_name(err),
		        moe_err_detail());
		return 1;
	}
	printf("wrote %d files: %s-00001-of-%05d.gguf ...\n", n_files, prefix, n_files);
	return 0;
}
