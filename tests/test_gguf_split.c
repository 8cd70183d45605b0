/* test_gguf_split.c - models split over several GGUF files (llama.cpp's
 * gguf-split layout): written by moe_gguf_split_write / `moemesh gguf-split`,
 * opened through the first file, bad sets refused with the file named, and
 * the forward pass, a 2-worker cluster and the worker's expert store give
 * the same bytes as the single file. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/gguf.h"
#include "tests/test_util.h"
#include "worker/worker.h"

#define MODEL "kjv-qwen3next-Q4_K_M.gguf"

static char dir[256];

static void make_dir(void)
{
	snprintf(dir, sizeof dir, "/tmp/moe_split_XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

TestSuite(split, .init = make_dir, .fini = remove_dir);

static const char *model_path(void)
{
	static char path[1024];
	const char *src = getenv("MOE_SOURCE_DIR");
	snprintf(path, sizeof path, "%s/models/%s", src ? src : ".", MODEL);
	return path;
}

/* dir/name in a static buffer (one of 4 in rotation). */
static const char *in_dir(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *in_dir(const char *fmt, ...)
{
	static char bufs[4][512];
	static int k;
	char name[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof name, fmt, ap);
	va_end(ap);
	char *b = bufs[k++ % 4];
	snprintf(b, 512, "%s/%s", dir, name);
	return b;
}

/* Splits the demo model into files of max_tensors tensors under dir/prefix;
 * returns the file count. */
static int split_model(const char *prefix, int max_tensors)
{
	moe_gguf *g = NULL;
	int n = 0;
	cr_assert_eq(moe_gguf_open(&g, model_path()), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_split_write(&n, g, in_dir("%s", prefix), max_tensors), MOE_OK, "%s",
	             moe_err_detail());
	moe_gguf_close(g);
	return n;
}

static moe_gguf_vtype key_type(const moe_gguf *g, const char *key)
{
	int64_t i = moe_gguf_find_key(g, key);
	cr_assert(i >= 0, "%s missing", key);
	return moe_gguf_kv_type(g, i);
}

Test(split, every_tensor_and_key_survives_the_split)
{
	const int n = split_model("m", 20);
	moe_gguf *orig = NULL, *g = NULL;
	cr_assert_eq(moe_gguf_open(&orig, model_path()), MOE_OK);
	const int64_t nt = moe_gguf_n_tensors(orig);
	cr_assert_eq(n, (int)((nt + 19) / 20));
	cr_assert(n >= 3, "the demo model should need several files (%d)", n);

	cr_assert_eq(moe_gguf_open(&g, in_dir("m-00001-of-%05d.gguf", n)), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert_eq(moe_gguf_n_splits(g), n);
	cr_assert_eq(moe_gguf_n_tensors(g), nt);
	/* all metadata in the first file, plus the three split keys */
	cr_assert_eq(moe_gguf_n_kv(g), moe_gguf_n_kv(orig) + 3);
	cr_assert_eq(key_type(g, "split.no"), MOE_GGUF_UINT16);
	cr_assert_eq(key_type(g, "split.count"), MOE_GGUF_UINT16);
	cr_assert_eq(key_type(g, "split.tensors.count"), MOE_GGUF_INT32);
	moe_gguf_str a, b;
	cr_assert_eq(moe_gguf_get_str(&a, orig, "general.architecture"), MOE_OK);
	cr_assert_eq(moe_gguf_get_str(&b, g, "general.architecture"), MOE_OK);
	cr_assert(a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0);
	/* the later files: only the split keys, their own share of tensors */
	int64_t share = moe_gguf_n_tensors(moe_gguf_split(g, 0));
	cr_assert_eq(share, nt); /* the first file's table covers all */
	int64_t later = 0;
	for (int i = 1; i < n; i++) {
		const moe_gguf *p = moe_gguf_split(g, i);
		cr_assert_not_null(p);
		cr_assert_eq(moe_gguf_n_kv(p), 3);
		later += moe_gguf_n_tensors(p);
	}
	cr_assert_eq(later, nt - 20);
	cr_assert_null(moe_gguf_split(g, n));

	for (int64_t i = 0; i < nt; i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(orig, i);
		char name[256];
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		const moe_gguf_tensor *u = moe_gguf_find_tensor(g, name);
		cr_assert_not_null(u, "%s", name);
		cr_assert_eq(u->split, (uint32_t)(i / 20), "%s in split %u", name, u->split);
		cr_assert_eq(u->type, t->type);
		cr_assert_eq(u->n_dims, t->n_dims);
		cr_assert_eq(memcmp(u->ne, t->ne, sizeof t->ne), 0);
		cr_assert_eq(u->size, t->size);
		cr_assert_eq(memcmp(u->data, t->data, t->size), 0, "%s bytes differ", name);
	}
	moe_gguf_close(g);

	/* splitting the split model again gives the same files */
	cr_assert_eq(moe_gguf_open(&g, in_dir("m-00001-of-%05d.gguf", n)), MOE_OK);
	int n2 = 0;
	cr_assert_eq(moe_gguf_split_write(&n2, g, in_dir("again"), 20), MOE_OK, "%s",
	             moe_err_detail());
	moe_gguf_close(g);
	cr_assert_eq(n2, n);
	for (int i = 1; i <= n; i++)
		cr_assert_eq(sh("cmp -s '%s' '%s'", in_dir("m-%05d-of-%05d.gguf", i, n),
		                in_dir("again-%05d-of-%05d.gguf", i, n)),
		             0, "file %d differs", i);
	moe_gguf_close(orig);
}

Test(split, the_cli_writes_the_same_files)
{
	const int n = split_model("lib", 32);
	cr_assert_eq(sh("'%s' gguf-split --split-max-tensors 32 '%s' '%s' > /dev/null", bin(),
	                model_path(), in_dir("cli")),
	             0);
	for (int i = 1; i <= n; i++)
		cr_assert_eq(sh("cmp -s '%s' '%s'", in_dir("lib-%05d-of-%05d.gguf", i, n),
		                in_dir("cli-%05d-of-%05d.gguf", i, n)),
		             0, "file %d differs", i);
	cr_assert_neq(sh("'%s' gguf-split --split-max-tensors 0 '%s' '%s' 2> /dev/null", bin(),
	                 model_path(), in_dir("bad")),
	              0);
	cr_assert_neq(
	    sh("'%s' inspect '%s' > /dev/null 2>&1", bin(), in_dir("lib-00002-of-%05d.gguf", n)),
	    0);
	cr_assert_eq(sh("'%s' inspect '%s' | grep -q 'split 2 of %d'", bin(),
	                in_dir("lib-00001-of-%05d.gguf", n), n),
	             0);
}

/* Opening path fails with want and a detail containing needle. */
static void open_fails(const char *path, moe_err want, const char *needle)
{
	moe_gguf *g = NULL;
	moe_err err = moe_gguf_open(&g, path);
	cr_assert_eq(err, want, "%s: got %s: %s", path, moe_err_name(err), moe_err_detail());
	cr_assert_not_null(strstr(moe_err_detail(), needle), "detail \"%s\" lacks \"%s\"",
	                   moe_err_detail(), needle);
	cr_assert_null(g);
}

Test(split, bad_sets_are_refused_naming_the_file)
{
	const int n = split_model("m", 20);
	char first[512], second[512], third[512];
	snprintf(first, sizeof first, "%s", in_dir("m-00001-of-%05d.gguf", n));
	snprintf(second, sizeof second, "%s", in_dir("m-00002-of-%05d.gguf", n));
	snprintf(third, sizeof third, "%s", in_dir("m-00003-of-%05d.gguf", n));

	/* a later file alone: pointed at the first */
	open_fails(second, MOE_ERR_MISMATCH, "m-00001-of-");
	/* the first file under another name: the others cannot be found */
	cr_assert_eq(sh("cp '%s' '%s'", first, in_dir("renamed.gguf")), 0);
	open_fails(in_dir("renamed.gguf"), MOE_ERR_MISMATCH, "does not end in");
	/* a missing file */
	cr_assert_eq(sh("mv '%s' '%s'", third, in_dir("aside.gguf")), 0);
	open_fails(first, MOE_ERR_IO, "split 3 of");
	/* a file of another split set in its place: its split.count disagrees */
	const int n3 = split_model("other", 30);
	cr_assert(n3 != n);
	cr_assert_eq(sh("cp '%s' '%s'", in_dir("other-00003-of-%05d.gguf", n3), third), 0);
	open_fails(first, MOE_ERR_MISMATCH, "m-00003-of-");
	/* the right file back: opens again */
	cr_assert_eq(sh("mv '%s' '%s'", in_dir("aside.gguf"), third), 0);
	moe_gguf *g = NULL;
	cr_assert_eq(moe_gguf_open(&g, first), MOE_OK, "%s", moe_err_detail());
	moe_gguf_close(g);
}

/* Writes dir/name: split `no` of `count` holding tensor `tensor` (4 F32
 * values), with split.tensors.count = total and, for the first file, the
 * split.count key written as a string when string_count. */
static void write_part(const char *name, int no, int count, int total, const char *tensor,
                       bool string_count)
{
	moe_gguf_writer *w = NULL;
	const int64_t ne[1] = {4};
	const float v[4] = {1, 2, 3, 4};
	moe_gguf_value u16 = {.type = MOE_GGUF_UINT16, .u = (uint64_t)no};
	cr_assert_eq(moe_gguf_writer_create(&w, in_dir("%s", name)), MOE_OK);
	cr_assert_eq(moe_gguf_writer_add_value(w, "split.no", &u16), MOE_OK);
	if (string_count) {
		cr_assert_eq(moe_gguf_writer_add_str(w, "split.count", "2"), MOE_OK);
	} else {
		u16.u = (uint64_t)count;
		cr_assert_eq(moe_gguf_writer_add_value(w, "split.count", &u16), MOE_OK);
	}
	cr_assert_eq(moe_gguf_writer_add_i32(w, "split.tensors.count", total), MOE_OK);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, tensor, MOE_TYPE_F32, 1, ne), MOE_OK);
	cr_assert_eq(moe_gguf_writer_begin_data(w), MOE_OK);
	cr_assert_eq(moe_gguf_writer_write(w, v, sizeof v), MOE_OK);
	cr_assert_eq(moe_gguf_writer_finish(w), MOE_OK);
	moe_gguf_writer_destroy(w);
}

Test(split, inconsistent_split_keys_are_refused)
{
	moe_gguf *g = NULL;

	write_part("ok-00001-of-00002.gguf", 0, 2, 2, "a", false);
	write_part("ok-00002-of-00002.gguf", 1, 2, 2, "b", false);
	cr_assert_eq(moe_gguf_open(&g, in_dir("ok-00001-of-00002.gguf")), MOE_OK, "%s",
	             moe_err_detail());
	cr_assert_eq(moe_gguf_n_tensors(g), 2);
	const moe_gguf_tensor *b = moe_gguf_find_tensor(g, "b");
	cr_assert_not_null(b);
	cr_assert_eq(b->split, 1u);
	cr_assert_eq(((const float *)b->data)[3], 4.0f);
	moe_gguf_close(g);

	/* the same tensor in both files */
	write_part("dup-00001-of-00002.gguf", 0, 2, 2, "a", false);
	write_part("dup-00002-of-00002.gguf", 1, 2, 2, "a", false);
	open_fails(in_dir("dup-00001-of-00002.gguf"), MOE_ERR_DUPLICATE,
	           "in split 1 and in split 2");
	/* split.tensors.count that the files do not add up to */
	write_part("cnt-00001-of-00002.gguf", 0, 2, 3, "a", false);
	write_part("cnt-00002-of-00002.gguf", 1, 2, 3, "b", false);
	open_fails(in_dir("cnt-00001-of-00002.gguf"), MOE_ERR_MISMATCH, "split.tensors.count");
	/* the second file claims to be the first */
	write_part("no-00001-of-00002.gguf", 0, 2, 2, "a", false);
	write_part("no-00002-of-00002.gguf", 0, 2, 2, "b", false);
	open_fails(in_dir("no-00001-of-00002.gguf"), MOE_ERR_MISMATCH, "no-00002-of-00002.gguf");
	/* split.count of the wrong type */
	write_part("str-00001-of-00002.gguf", 0, 2, 2, "a", true);
	open_fails(in_dir("str-00001-of-00002.gguf"), MOE_ERR_BAD_TYPE, "split.count");
	/* split.no out of range */
	write_part("rng-00001-of-00002.gguf", 5, 2, 2, "a", false);
	open_fails(in_dir("rng-00001-of-00002.gguf"), MOE_ERR_BAD_VALUE, "split.no");
}

Test(split, logits_alone_and_on_two_workers_equal_the_single_file)
{
	const int n = split_model("m", 16);
	const char *first = in_dir("m-00001-of-%05d.gguf", n);
	const char *toks = "--tokens 3,141,592,653,58,97,93,238,46";
	cr_assert_eq(sh("'%s' logits -m '%s' %s -o '%s' 2> /dev/null", bin(), model_path(), toks,
	                in_dir("single.f32")),
	             0);
	cr_assert_eq(sh("'%s' logits -m '%s' %s -o '%s' 2> /dev/null", bin(), first, toks,
	                in_dir("split.f32")),
	             0);
	cr_assert_eq(sh("'%s' logits -m '%s' %s --workers 2 -o '%s' 2> /dev/null", bin(), first,
	                toks, in_dir("cluster.f32")),
	             0);
	cr_assert_eq(sh("cmp -s '%s' '%s'", in_dir("single.f32"), in_dir("split.f32")), 0);
	cr_assert_eq(sh("cmp -s '%s' '%s'", in_dir("single.f32"), in_dir("cluster.f32")), 0);
}

Test(split, the_expert_store_reads_each_slice_from_its_file)
{
	const int n = split_model("m", 7);
	moe_gguf *orig = NULL, *g = NULL;
	moe_expert_store *s = NULL;
	static const char *const w[3] = {"gate", "up", "down"};
	cr_assert_eq(moe_gguf_open(&orig, model_path()), MOE_OK);
	cr_assert_eq(moe_gguf_open(&g, in_dir("m-00001-of-%05d.gguf", n)), MOE_OK);
	const moe_gguf_tensor *t0 = moe_gguf_find_tensor(orig, "blk.0.ffn_gate_exps.weight");
	cr_assert_not_null(t0);
	const int n_expert = (int)t0->ne[2];
	int n_layer = 0;
	while (n_layer < 64) {
		char name[64];
		snprintf(name, sizeof name, "blk.%d.ffn_gate_exps.weight", n_layer);
		if (moe_gguf_find_tensor(orig, name) == NULL)
			break;
		n_layer++;
	}
	uint8_t *held = calloc((size_t)n_layer * (size_t)n_expert, 1);
	for (int i = 0; i < n_layer * n_expert; i++)
		held[i] = (uint8_t)(i % 3 != 1);
	bool files_differ = false;
	for (int nd = 0; nd < 2; nd++) {
		moe_store_opts o = {.no_direct = nd == 1, .depth = 4, .chunk_bytes = 8192};
		cr_assert_eq(moe_expert_store_load(&s, in_dir("m-00001-of-%05d.gguf", n), g,
		                                   n_layer, n_expert, held, &o),
		             MOE_OK, "%s", moe_err_detail());
		for (int l = 0; l < n_layer; l++) {
			for (int k = 0; k < 3; k++) {
				char name[64];
				snprintf(name, sizeof name, "blk.%d.ffn_%s_exps.weight", l, w[k]);
				const moe_gguf_tensor *t = moe_gguf_find_tensor(orig, name);
				const moe_gguf_tensor *u = moe_gguf_find_tensor(g, name);
				files_differ = files_differ || u->split != 0;
				const size_t eb = (size_t)t->size / (size_t)n_expert;
				for (int e = 0; e < n_expert; e++) {
					const void *p = moe_expert_store_get(s, l, k, e);
					if (!held[l * n_expert + e]) {
						cr_assert_null(p);
						continue;
					}
					cr_assert_not_null(p);
					cr_assert_eq(
					    memcmp(p, (const char *)t->data + (size_t)e * eb, eb),
					    0, "layer %d %s expert %d", l, w[k], e);
				}
			}
		}
		moe_expert_store_destroy(s);
	}
	cr_assert(files_differ, "the experts should lie in several files");
	free(held);
	moe_gguf_close(g);
	moe_gguf_close(orig);
}
