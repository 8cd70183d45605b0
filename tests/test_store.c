/* test_store.c - the worker's expert store: only held slices, byte-exact;
 * O_DIRECT used exactly where the fixture's file system serves it (probed
 * here independently of the store), buffered reads when asked for. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "worker/worker.h"

static char *fixture(const char *name)
{
	static char path[1024];
	const char *dir = getenv("MOE_FIXTURES");
	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "tests/fixtures", name);
	return path;
}

/* Whether the file system holding path serves O_DIRECT reads: an O_DIRECT
 * open and a 4 KiB read at offset 0 into a 4 KiB-aligned buffer (what the
 * store's reads look like).  Such a file system refuses with EINVAL, at the
 * open or at the read; any other error fails the test. */
static bool direct_reads_work(const char *path)
{
	void *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0) {
		cr_assert_eq(errno, EINVAL, "open(%s, O_DIRECT): %s", path, strerror(errno));
		return false;
	}
	cr_assert_eq(posix_memalign(&buf, 4096, 4096), 0);
	ssize_t n = pread(fd, buf, 4096, 0);
	int err = errno;
	close(fd);
	free(buf);
	if (n < 0)
		cr_assert_eq(err, EINVAL, "O_DIRECT read of %s: %s", path, strerror(err));
	else
		cr_assert_eq(n, 4096, "O_DIRECT read of %s: %zd bytes", path, n);
	return n >= 0;
}

/* Loads with the given held pattern and checks every expert against the
 * mapped file: held ones byte-identical, others NULL. */
static void check_pattern(const char *file, const uint8_t *held, int n_layer, int n_expert,
                          bool no_direct)
{
	moe_gguf *g = NULL;
	moe_expert_store *s = NULL;
	moe_store_opts o = {.no_direct = no_direct, .depth = 4, .chunk_bytes = 8192};
	static const char *const w[3] = {"gate", "up", "down"};
	uint64_t held_bytes = 0;

	cr_assert_eq(moe_gguf_open(&g, fixture(file)), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_expert_store_load(&s, fixture(file), g, n_layer, n_expert, held, &o),
	             MOE_OK, "%s", moe_err_detail());
	for (int l = 0; l < n_layer; l++) {
		for (int k = 0; k < 3; k++) {
			char name[64];
			snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.weight", l, w[k]);
			const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
			cr_assert_not_null(t);
			size_t eb = (size_t)t->size / (size_t)n_expert;
			for (int e = 0; e < n_expert; e++) {
				const void *p = moe_expert_store_get(s, l, k, e);
				if (!held[l * n_expert + e]) {
					cr_assert_null(p, "layer %d %s expert %d not held", l, w[k],
					               e);
					continue;
				}
				cr_assert_not_null(p);
				cr_assert_eq(memcmp(p, (const char *)t->data + (size_t)e * eb, eb),
				             0, "layer %d %s expert %d differs", l, w[k], e);
				held_bytes += eb;
			}
		}
	}
	moe_store_stats st = moe_expert_store_stats(s);
	cr_assert_eq(st.bytes_held, held_bytes);
	cr_assert(st.bytes_read >= held_bytes);
	if (no_direct) {
		cr_assert_not(st.direct, "%s: asked for buffered reads, the store says O_DIRECT",
		              file);
	} else {
		const bool fs_direct = direct_reads_work(fixture(file));
		cr_log_info("%s: the file system %s O_DIRECT; the store read %s, buffers %s", file,
		            fs_direct ? "serves" : "refuses", st.direct ? "direct" : "buffered",
		            st.registered ? "registered" : "not registered");
		cr_assert_eq(st.direct, fs_direct,
		             "%s: the file system %s O_DIRECT, the store %s it", file,
		             fs_direct ? "serves" : "refuses", st.direct ? "used" : "did not use");
	}
	cr_assert_null(moe_expert_store_get(s, n_layer, 0, 0));
	cr_assert_null(moe_expert_store_get(s, 0, 3, 0));
	cr_assert_null(moe_expert_store_get(s, 0, 0, n_expert));
	moe_expert_store_destroy(s);
	moe_gguf_close(g);
}

static void pattern(uint8_t *held, int n_layer, int n_expert)
{
	for (int l = 0; l < n_layer; l++)
		for (int e = 0; e < n_expert; e++)
			held[l * n_expert + e] = l == 0   ? e < n_expert / 2 /* a range */
			                         : l == 1 ? e % 2 == 1       /* every other */
			                         : l == 2 ? 0                /* none */
			                                  : 1;               /* all */
}

Test(store, holds_exactly_its_slices_direct)
{
	uint8_t held[4 * 16];
	pattern(held, 4, 16);
	check_pattern("qwen3moe-tiny-Q8_0.gguf", held, 4, 16, false);
	check_pattern("qwen3next-tiny-Q4_K_M.gguf", held, 4, 16, false);
}

Test(store, holds_exactly_its_slices_buffered)
{
	uint8_t held[4 * 16];
	pattern(held, 4, 16);
	check_pattern("qwen3moe-tiny-Q4_0.gguf", held, 4, 16, true);
	uint8_t held2[2 * 8];
	pattern(held2, 2, 8);
	check_pattern("qwen3moe-kq-Q4_K_M.gguf", held2, 2, 8, true);
}

Test(store, wrong_shapes_are_refused)
{
	moe_gguf *g = NULL;
	moe_expert_store *s = NULL;
	uint8_t held[5 * 16];
	memset(held, 1, sizeof(held));
	cr_assert_eq(moe_gguf_open(&g, fixture("qwen3moe-tiny-F32.gguf")), MOE_OK);
	/* a fifth layer does not exist */
	cr_assert_eq(
	    moe_expert_store_load(&s, fixture("qwen3moe-tiny-F32.gguf"), g, 5, 16, held, NULL),
	    MOE_ERR_NOT_FOUND);
	/* 8 experts, but the tensors stack 16 */
	cr_assert_eq(
	    moe_expert_store_load(&s, fixture("qwen3moe-tiny-F32.gguf"), g, 4, 8, held, NULL),
	    MOE_ERR_BAD_SHAPE);
	/* another file than the one whose table was read */
	cr_assert_eq(
	    moe_expert_store_load(&s, fixture("qwen3moe-tiny-Q8_0.gguf"), g, 4, 16, held, NULL),
	    MOE_ERR_MISMATCH);
	cr_assert_null(s);
	moe_gguf_close(g);
}

/* With lanes on, the Q2_K and Q3_K experts the store reads are the file's
 * bytes repacked (moe_repack_rows, in place: same size), the others the
 * file's bytes, and moe_expert_store_lanes names exactly the repacked
 * matrices; lanes cannot be switched once experts are held. */
Test(store, lanes_repack_q2_K_q3_K_experts)
{
	static const char *const files[] = {"qwen3moe-k256-Q2_K.gguf", "qwen3moe-k256-Q3_K_M.gguf"};
	static const char *const w[3] = {"gate", "up", "down"};
	int lanes = 0, plain = 0;
	for (int f = 0; f < 2; f++) {
		moe_gguf *g = NULL;
		moe_expert_store *s = NULL;
		moe_store_load *ld = NULL;
		cr_assert_eq(moe_gguf_open(&g, fixture(files[f])), MOE_OK, "%s", moe_err_detail());
		const moe_gguf_tensor *t0 = moe_gguf_find_tensor(g, "blk.0.ffn_gate_exps.weight");
		cr_assert_not_null(t0);
		const int n_expert = (int)t0->ne[2];
		int n_layer = 0;
		for (char name[64];; n_layer++) {
			snprintf(name, sizeof(name), "blk.%d.ffn_gate_exps.weight", n_layer);
			if (moe_gguf_find_tensor(g, name) == NULL)
				break;
		}
		uint8_t *held = calloc((size_t)n_layer * (size_t)n_expert, 1);
		for (int i = 0; i < n_layer * n_expert; i++)
			held[i] = (uint8_t)(i % 3 != 1);
		cr_assert_eq(moe_expert_store_create(&s, fixture(files[f]), g, n_layer, n_expert),
		             MOE_OK);
		cr_assert_eq(moe_expert_store_set_lanes(s, true), MOE_OK);
		cr_assert_eq(moe_store_load_prepare(&ld, s, held), MOE_OK);
		cr_assert_eq(moe_store_load_read(ld, NULL), MOE_OK, "%s", moe_err_detail());
		cr_assert_eq(moe_store_load_commit(s, ld), MOE_OK);
		cr_assert_eq(moe_expert_store_set_lanes(s, false), MOE_ERR_INVAL);
		for (int l = 0; l < n_layer; l++)
			for (int k = 0; k < 3; k++) {
				char name[64];
				snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.weight", l, w[k]);
				const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
				cr_assert_not_null(t);
				const bool want_lanes =
				    t->type == MOE_TYPE_Q2_K || t->type == MOE_TYPE_Q3_K;
				cr_assert_eq(moe_expert_store_lanes(s, l, k), want_lanes, "%s",
				             name);
				const size_t eb = (size_t)t->size / (size_t)n_expert;
				uint8_t *want = malloc(eb);
				for (int e = 0; e < n_expert; e++) {
					const void *p = moe_expert_store_get(s, l, k, e);
					if (!held[l * n_expert + e]) {
						cr_assert_null(p);
						continue;
					}
					const uint8_t *src =
					    (const uint8_t *)t->data + (size_t)e * eb;
					if (want_lanes)
						cr_assert_eq(moe_repack_rows(want, src, t->type,
						                             t->ne[1], t->ne[0]),
						             MOE_OK);
					else
						memcpy(want, src, eb);
					cr_assert(memcmp(p, want, eb) == 0, "%s expert %d", name,
					          e);
					if (want_lanes)
						cr_assert(memcmp(p, src, eb) != 0, "%s expert %d",
						          name, e);
					want_lanes ? lanes++ : plain++;
				}
				free(want);
			}
		free(held);
		moe_expert_store_destroy(s);
		moe_gguf_close(g);
	}
	cr_assert_gt(lanes, 0);
	cr_assert_gt(plain, 0);
}
