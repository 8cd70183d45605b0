/* test_synth.c - make-model writes what llama.cpp writes: same keys, names,
 * shapes and (for each file type) the same per-tensor quantisation choices
 * as llama-quantize made for the fixtures; streamed, deterministic. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devtools/devtools.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

static char tmpdir[64];

static void setup(void)
{
	strcpy(tmpdir, "/tmp/moe-synth-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	cr_assert_eq(system(cmd), 0);
}

static const char *fixture(const char *name)
{
	static char path[1024];
	const char *dir = getenv("MOE_FIXTURES");
	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "tests/fixtures", name);
	return path;
}

static const char *tmpfile_(const char *name)
{
	static char path[256];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

/* Every key of the fixture is in ours with the same type, in the same order
 * for the F32 original (llama-quantize moves file_type/quantization_version);
 * every tensor has the same name, shape and type. */
static void compare(const char *arch, const char *type, moe_ftype ft, int same_key_order)
{
	char fx[128], out[64];
	moe_gguf *a = NULL, *b = NULL;
	moe_synth_opts o = {.arch = arch, .preset = "tiny", .ftype = ft, .seed = 7};

	snprintf(fx, sizeof(fx), "%s-tiny-%s.gguf", arch, type);
	snprintf(out, sizeof(out), "%s-%s.gguf", arch, type);
	cr_assert_eq(moe_synth_write(tmpfile_(out), &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_open(&a, fixture(fx)), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_open(&b, tmpfile_(out)), MOE_OK, "%s", moe_err_detail());

	cr_assert_eq(moe_gguf_n_kv(a), moe_gguf_n_kv(b), "%s: key count", fx);
	for (int64_t i = 0; i < moe_gguf_n_kv(a); i++) {
		moe_gguf_str k = moe_gguf_kv_key(a, i);
		char key[128];
		snprintf(key, sizeof(key), "%.*s", (int)k.len, k.ptr);
		int64_t j = moe_gguf_find_key(b, key);
		cr_assert_geq(j, 0, "%s: key %s missing", fx, key);
		cr_assert_eq(moe_gguf_kv_type(a, i), moe_gguf_kv_type(b, j), "%s: type of %s", fx,
		             key);
		if (same_key_order)
			cr_assert_eq(i, j, "%s: key %s at %lld, fixture has it at %lld", fx, key,
			             (long long)j, (long long)i);
	}
	uint32_t fa, fb;
	cr_assert_eq(moe_gguf_get_u32(&fa, a, "general.file_type"), MOE_OK);
	cr_assert_eq(moe_gguf_get_u32(&fb, b, "general.file_type"), MOE_OK);
	cr_assert_eq(fa, fb);

	cr_assert_eq(moe_gguf_n_tensors(a), moe_gguf_n_tensors(b));
	for (int64_t i = 0; i < moe_gguf_n_tensors(a); i++) {
		const moe_gguf_tensor *ta = moe_gguf_tensor_at(a, i);
		char name[128];
		snprintf(name, sizeof(name), "%.*s", (int)ta->name.len, ta->name.ptr);
		const moe_gguf_tensor *tb = moe_gguf_find_tensor(b, name);
		cr_assert_not_null(tb, "%s: tensor %s missing", fx, name);
		cr_assert_eq(ta->n_dims, tb->n_dims, "%s", name);
		for (int d = 0; d < 4; d++)
			cr_assert_eq(ta->ne[d], tb->ne[d], "%s ne[%d]", name, d);
		cr_assert_eq(ta->type, tb->type, "%s: %s has %s, llama-quantize chose %s", fx, name,
		             moe_type_get(tb->type)->name, moe_type_get(ta->type)->name);
	}
	moe_gguf_close(a);
	moe_gguf_close(b);
}

TestSuite(synth, .init = setup, .fini = teardown);

Test(synth, tiny_models_match_llama_cpp_layout_and_types)
{
	static const char *const archs[2] = {"qwen3moe", "qwen3next"};
	for (int i = 0; i < 2; i++) {
		compare(archs[i], "F32", MOE_FTYPE_F32, 1);
		compare(archs[i], "Q8_0", MOE_FTYPE_Q8_0, 0);
		compare(archs[i], "Q4_0", MOE_FTYPE_Q4_0, 0);
		compare(archs[i], "Q4_K_M", MOE_FTYPE_Q4_K_M, 0);
	}
	/* qwen35moe's fixtures come from make-model (seed 5001) and llama-quantize */
	compare("qwen35moe", "F32", MOE_FTYPE_F32, 1);
	compare("qwen35moe", "Q8_0", MOE_FTYPE_Q8_0, 0);
	compare("qwen35moe", "Q4_K_M", MOE_FTYPE_Q4_K_M, 0);
}

/* Reads a whole file. */
static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f);
	fseek(f, 0, SEEK_END);
	*n = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *b = malloc(*n);
	cr_assert_eq(fread(b, 1, *n, f), *n);
	fclose(f);
	return b;
}

Test(synth, same_seed_same_bytes_other_seed_other_weights)
{
	moe_synth_opts o = {
	    .arch = "qwen3next", .preset = "tiny", .ftype = MOE_FTYPE_Q4_K_M, .seed = 1};
	size_t n1, n2, n3;

	o.n_threads = 1;
	cr_assert_eq(moe_synth_write(tmpfile_("a.gguf"), &o), MOE_OK);
	o.n_threads = 2; /* the thread count must not change a byte */
	cr_assert_eq(moe_synth_write(tmpfile_("b.gguf"), &o), MOE_OK);
	o.seed = 2;
	cr_assert_eq(moe_synth_write(tmpfile_("c.gguf"), &o), MOE_OK);
	unsigned char *a = slurp(tmpfile_("a.gguf"), &n1);
	unsigned char *b = slurp(tmpfile_("b.gguf"), &n2);
	unsigned char *c = slurp(tmpfile_("c.gguf"), &n3);
	cr_assert_eq(n1, n2);
	cr_assert_eq(memcmp(a, b, n1), 0);
	cr_assert_eq(n1, n3);
	cr_assert_neq(memcmp(a, c, n1), 0);
	free(a);
	free(b);
	free(c);
}

/* Mean and standard deviation of an F32 tensor. */
static void stats(const moe_gguf *g, const char *name, double *mean, double *sd, float *lo,
                  float *hi)
{
	const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
	cr_assert_not_null(t, "%s", name);
	cr_assert_eq(t->type, MOE_TYPE_F32);
	const float *v = t->data;
	size_t n = t->size / 4;
	double s = 0, s2 = 0;
	*lo = INFINITY;
	*hi = -INFINITY;
	for (size_t i = 0; i < n; i++) {
		s += v[i];
		s2 += (double)v[i] * v[i];
		*lo = fminf(*lo, v[i]);
		*hi = fmaxf(*hi, v[i]);
	}
	*mean = s / (double)n;
	*sd = sqrt(s2 / (double)n - *mean * *mean);
}

Test(synth, weights_follow_the_recipe)
{
	moe_synth_opts o = {
	    .arch = "qwen3next", .preset = "tiny", .ftype = MOE_FTYPE_F32, .seed = 3, .n_layer = 2};
	moe_gguf *g = NULL;
	double m, sd;
	float lo, hi;
	uint32_t nl;

	cr_assert_eq(moe_synth_write(tmpfile_("r.gguf"), &o), MOE_OK);
	cr_assert_eq(moe_gguf_open(&g, tmpfile_("r.gguf")), MOE_OK);
	cr_assert_eq(moe_gguf_get_u32(&nl, g, "qwen3next.block_count"), MOE_OK);
	cr_assert_eq(nl, 2);
	cr_assert_null(moe_gguf_find_tensor(g, "blk.2.attn_norm.weight"));
	stats(g, "token_embd.weight", &m, &sd, &lo, &hi); /* N(0, 1), 65536 values */
	cr_assert(fabs(m) < 0.02 && fabs(sd - 1) < 0.02, "embd mean %g sd %g", m, sd);
	stats(g, "blk.0.attn_qkv.weight", &m, &sd, &lo, &hi); /* N(0, 1/128) */
	cr_assert(fabs(sd - 1 / sqrt(128.0)) < 0.003, "qkv sd %g", sd);
	stats(g, "blk.0.ssm_out.weight", &m, &sd, &lo, &hi); /* N(0, 0.25/256) */
	cr_assert(fabs(sd - 0.5 / sqrt(256.0)) < 0.002, "ssm_out sd %g", sd);
	stats(g, "blk.1.attn_norm.weight", &m, &sd, &lo, &hi); /* 1 + 0.1 N */
	cr_assert(fabs(m - 1) < 0.05 && fabs(sd - 0.1) < 0.04, "norm mean %g sd %g", m, sd);
	stats(g, "blk.0.ssm_conv1d.weight", &m, &sd, &lo, &hi);
	cr_assert(lo >= -0.5f && hi <= 0.5f && sd > 0.25, "conv %g..%g sd %g", lo, hi, sd);
	stats(g, "blk.0.ssm_dt.bias", &m, &sd, &lo, &hi);
	cr_assert(lo >= -2.0f && hi <= 1.0f);
	stats(g, "blk.0.ssm_a", &m, &sd, &lo, &hi);
	cr_assert(lo >= -1.0f && hi <= -0.05f, "ssm_a %g..%g", lo, hi);
	moe_gguf_close(g);
}

Test(synth, big_presets_have_the_real_dimensions)
{
	moe_synth_opts o = {
	    .arch = "qwen3next", .preset = "qwen3next-80b-4L", .ftype = MOE_FTYPE_Q4_K_M};
	moe_synth_tensor *t;
	size_t n;
	uint64_t total = 0;
	int seen = 0;

	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_OK, "%s", moe_err_detail());
	for (size_t i = 0; i < n; i++) {
		total += t[i].bytes;
		if (strcmp(t[i].name, "blk.0.ffn_gate_exps.weight") == 0) {
			cr_assert(t[i].ne[0] == 2048 && t[i].ne[1] == 512 && t[i].ne[2] == 512);
			cr_assert_eq(t[i].type, MOE_TYPE_Q4_K);
			seen++;
		}
		if (strcmp(t[i].name, "blk.3.attn_q.weight") == 0) { /* 16 heads x 256, q + gate */
			cr_assert(t[i].ne[0] == 2048 && t[i].ne[1] == 2 * 16 * 256);
			seen++;
		}
		if (strcmp(t[i].name, "blk.0.attn_qkv.weight") == 0) { /* 2*16*128 + 32*128 */
			cr_assert_eq(t[i].ne[1], 2 * 16 * 128 + 32 * 128);
			seen++;
		}
		if (strcmp(t[i].name, "output.weight") == 0) {
			cr_assert(t[i].ne[1] == 151936 && t[i].type == MOE_TYPE_Q6_K);
			seen++;
		}
		cr_assert_null(strstr(t[i].name, "blk.4."));
	}
	cr_assert_eq(seen, 4);
	cr_assert(total > 4000000000ull && total < 5000000000ull, "%llu bytes",
	          (unsigned long long)total);
	free(t);

	o.arch = "qwen3moe";
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_ERR_INVAL); /* preset of the other arch */
	o.preset = "qwen3-30b-a3b-4L";
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_OK);
	for (size_t i = 0; i < n; i++)
		if (strcmp(t[i].name, "blk.1.ffn_down_exps.weight") == 0)
			cr_assert(t[i].ne[0] == 768 && t[i].ne[1] == 2048 && t[i].ne[2] == 128);
	free(t);
}

/* Qwen3.5-397B-A17B's per-layer sizes (synth.c names the source), 4 trunk
 * layers and 1 MTP block, with qwen35moe's keys. */
Test(synth, qwen35_397b_preset_has_the_real_dimensions)
{
	moe_synth_opts o = {
	    .arch = "qwen35moe", .preset = "qwen35-397b-4L", .ftype = MOE_FTYPE_F32};
	moe_synth_tensor *t;
	size_t n;
	int seen = 0;

	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_OK, "%s", moe_err_detail());
	for (size_t i = 0; i < n; i++) {
		const moe_synth_tensor *x = &t[i];
		if (strcmp(x->name, "blk.0.ffn_gate_exps.weight") == 0)
			seen += x->ne[0] == 4096 && x->ne[1] == 1024 && x->ne[2] == 512;
		if (strcmp(x->name, "blk.0.ffn_up_shexp.weight") == 0)
			seen += x->ne[0] == 4096 && x->ne[1] == 1024;
		if (strcmp(x->name, "blk.3.attn_q.weight") == 0) /* 32 heads x 256, q + gate */
			seen += x->ne[0] == 4096 && x->ne[1] == 2 * 32 * 256;
		if (strcmp(x->name, "blk.3.attn_k.weight") == 0) /* 2 kv heads x 256 */
			seen += x->ne[1] == 2 * 256;
		if (strcmp(x->name, "blk.0.attn_qkv.weight") == 0) /* 2*16*128 + 64*128 */
			seen += x->ne[1] == 2 * 16 * 128 + 64 * 128;
		if (strcmp(x->name, "blk.0.ssm_beta.weight") == 0 ||
		    strcmp(x->name, "blk.0.ssm_alpha.weight") == 0)
			seen += x->ne[0] == 4096 && x->ne[1] == 64;
		if (strcmp(x->name, "blk.4.nextn.eh_proj.weight") == 0)
			seen += x->ne[0] == 2 * 4096 && x->ne[1] == 4096;
		if (strcmp(x->name, "blk.4.attn_q.weight") == 0) /* the MTP block is attention */
			seen++;
		if (strcmp(x->name, "output.weight") == 0)
			seen += x->ne[1] == 248320;
		cr_assert_null(strstr(x->name, "ssm_ba."), "%s", x->name);
		cr_assert_null(strstr(x->name, "blk.5."), "%s", x->name);
	}
	cr_assert_eq(seen, 10);
	free(t);

	char path[512];
	snprintf(path, sizeof path, "%s", tmpfile_("q35-tiny.gguf"));
	o.preset = "tiny";
	o.n_layer = 2; /* 2 trunk layers, then the MTP block as blk.2 */
	cr_assert_eq(moe_synth_write(path, &o), MOE_OK, "%s", moe_err_detail());
	moe_gguf *g = NULL;
	cr_assert_eq(moe_gguf_open(&g, path), MOE_OK);
	uint32_t v;
	cr_assert_eq(moe_gguf_get_u32(&v, g, "qwen35moe.block_count"), MOE_OK);
	cr_expect_eq(v, 3);
	cr_assert_eq(moe_gguf_get_u32(&v, g, "qwen35moe.nextn_predict_layers"), MOE_OK);
	cr_expect_eq(v, 1);
	moe_gguf_arr a;
	cr_assert_eq(moe_gguf_get_arr(&a, g, "qwen35moe.rope.dimension_sections"), MOE_OK);
	cr_expect(a.n == 4 && a.type == MOE_GGUF_INT32 && moe_gguf_arr_int(&a, 0) == 2);
	cr_expect_not_null(moe_gguf_find_tensor(g, "blk.2.nextn.hnorm.weight"));
	moe_gguf_close(g);
}

Test(synth, bad_options_are_refused)
{
	moe_synth_opts o = {.arch = "llama", .preset = "tiny"};
	moe_synth_tensor *t;
	size_t n;
	moe_ftype ft;

	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_ERR_INVAL);
	o.arch = "qwen3moe";
	o.preset = "huge";
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_ERR_INVAL);
	cr_assert_eq(moe_ftype_parse(&ft, "q4_k_m"), MOE_OK);
	cr_assert_eq(ft, MOE_FTYPE_Q4_K_M);
	cr_assert_eq(moe_ftype_parse(&ft, "Q3_K"), MOE_ERR_INVAL);
	o.preset = "tiny";
	cr_assert_eq(moe_synth_write("/nonexistent-dir/x.gguf", &o) != MOE_OK, 1);
	o.mtp = 1; /* qwen3moe has no MTP blocks */
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_ERR_INVAL);
	o.arch = "qwen3next";
	o.mtp = 5;
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_ERR_INVAL);
}

/* --mtp 1 on qwen3next: a fifth block after the 4 trunk blocks, gated attention
 * (q and gate rows) with MoE, shared expert and the nextn tensors; without it
 * no such block. */
Test(synth, qwen3next_mtp_block)
{
	moe_synth_opts o = {.arch = "qwen3next", .preset = "tiny", .mtp = 1};
	moe_synth_tensor *t;
	size_t n;
	int seen = 0;
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_OK, "%s", moe_err_detail());
	for (size_t i = 0; i < n; i++) {
		if (strcmp(t[i].name, "blk.4.attn_q.weight") == 0)
			seen += t[i].ne[0] == 128 && t[i].ne[1] == 2 * 8 * 32;
		if (strcmp(t[i].name, "blk.4.nextn.eh_proj.weight") == 0)
			seen += t[i].ne[0] == 256 && t[i].ne[1] == 128;
		if (strcmp(t[i].name, "blk.4.ffn_gate_exps.weight") == 0)
			seen += t[i].ne[2] == 16;
		if (strcmp(t[i].name, "blk.4.ffn_down_shexp.weight") == 0)
			seen++;
		cr_assert_null(strstr(t[i].name, "blk.4.ssm"), "%s", t[i].name);
		cr_assert_null(strstr(t[i].name, "blk.5."), "%s", t[i].name);
	}
	cr_assert_eq(seen, 4);
	free(t);
	o.mtp = 0;
	cr_assert_eq(moe_synth_plan(&t, &n, &o), MOE_OK);
	for (size_t i = 0; i < n; i++)
		cr_assert_null(strstr(t[i].name, "blk.4."), "%s", t[i].name);
	free(t);
}

Test(synth, real_qwen3_tokenizer_goes_into_the_file)
{
	char tj[1024];
	moe_tokenizer_spec *spec = NULL;
	moe_gguf *g = NULL;
	moe_tokenizer *tok = NULL;
	int32_t *ids = NULL;
	size_t n = 0;
	const char *dir = getenv("MOE_FIXTURES");

	snprintf(tj, sizeof(tj), "%s/qwen3-tokenizer/tokenizer.json", dir ? dir : "tests/fixtures");
	cr_assert_eq(moe_tokenizer_spec_read_hf(&spec, tj), MOE_OK, "%s", moe_err_detail());
	const char **merges = malloc(spec->n_merges * sizeof(char *));
	for (uint32_t i = 0; i < spec->n_merges; i++)
		merges[i] = spec->merges[i];
	moe_synth_vocab v = {spec->tokens,   spec->token_types, spec->n_tokens, merges,
	                     spec->n_merges, spec->bos_id,      spec->eos_id,   spec->pad_id};
	moe_synth_opts o = {.arch = "qwen3moe",
	                    .preset = "tiny",
	                    .ftype = MOE_FTYPE_Q8_0,
	                    .vocab = &v,
	                    .n_layer = 1};

	/* the real preset keeps its 151,936 rows; the vocabulary is padded to them */
	moe_synth_opts big = o;
	big.arch = "qwen3next";
	big.preset = "qwen3next-80b-4L";
	moe_synth_tensor *t;
	size_t nt;
	cr_assert_eq(moe_synth_plan(&t, &nt, &big), MOE_OK);
	cr_assert_eq(t[0].ne[1], 151936);
	free(t);

	/* tiny grows its rows to the tokenizer, rounded up to 64 */
	cr_assert_eq(moe_synth_write(tmpfile_("q.gguf"), &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_open(&g, tmpfile_("q.gguf")), MOE_OK);
	cr_assert_eq(moe_gguf_find_tensor(g, "token_embd.weight")->ne[1], 151680);
	moe_gguf_arr a;
	cr_assert_eq(moe_gguf_get_arr(&a, g, "tokenizer.ggml.tokens"), MOE_OK);
	cr_assert_eq(a.n, 151680);
	moe_gguf_str last = moe_gguf_arr_str(&a, 151679);
	cr_assert_eq(last.len, strlen("[PAD151679]"));
	cr_assert_eq(memcmp(last.ptr, "[PAD151679]", last.len), 0);
	cr_assert_eq(moe_gguf_get_arr(&a, g, "tokenizer.ggml.token_type"), MOE_OK);
	cr_assert_eq(moe_gguf_arr_int(&a, 151679), 5); /* UNUSED */
	cr_assert_eq(moe_gguf_arr_int(&a, 151644), 3); /* <|im_start|> CONTROL */
	cr_assert_eq(moe_tokenizer_from_gguf(&tok, g), MOE_OK, "%s", moe_err_detail());
	const char *text = "Hello, my dog is cute";
	cr_assert_eq(moe_tokenizer_encode(&ids, &n, tok, text, strlen(text), 0), MOE_OK);
	int32_t want[6] = {9707, 11, 847, 5562, 374, 18838}; /* cases.json, case 0 */
	cr_assert_eq(n, 6);
	cr_assert_arr_eq(ids, want, sizeof(want));
	free(ids);
	moe_tokenizer_destroy(tok);
	moe_gguf_close(g);
	free(merges);
	moe_tokenizer_spec_free(spec);
}

/* Writes every tensor of g (all F32) as a raw file dir/<name>. */
static void dump_tensors(const moe_gguf *g, const char *dir)
{
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		char path[512];
		cr_assert_eq(t->type, MOE_TYPE_F32);
		snprintf(path, sizeof(path), "%s/%.*s", dir, (int)t->name.len, t->name.ptr);
		FILE *f = fopen(path, "wb");
		cr_assert_not_null(f, "%s", path);
		cr_assert_eq(fwrite(t->data, 1, t->size, f), t->size);
		fclose(f);
	}
}

/* Rewrites n bytes at offset off of path. */
static void patch(const char *path, long off, const void *b, size_t n)
{
	FILE *f = fopen(path, "r+b");
	cr_assert_not_null(f);
	cr_assert_eq(fseek(f, off, SEEK_SET), 0);
	cr_assert_eq(fwrite(b, 1, n, f), n);
	fclose(f);
}

Test(synth, from_weights_gives_the_files_values_and_refuses_bad_files)
{
	moe_synth_opts o = {.arch = "qwen35moe", .preset = "tiny", .seed = 3};
	moe_gguf *g = NULL;
	size_t n1, n2;
	char wdir[256], wfile[512], a_path[256], aq_path[256];

	/* a random model, its tensors dumped, then read back with another seed
	 * and its tokenizer copied: the same file, byte for byte */
	snprintf(a_path, sizeof(a_path), "%s", tmpfile_("a.gguf"));
	snprintf(aq_path, sizeof(aq_path), "%s", tmpfile_("aq.gguf"));
	snprintf(wdir, sizeof(wdir), "%s", tmpfile_("w"));
	cr_assert_eq(mkdir(wdir, 0700), 0);
	cr_assert_eq(moe_synth_write(a_path, &o), MOE_OK, "%s", moe_err_detail());
	o.ftype = MOE_FTYPE_Q8_0;
	cr_assert_eq(moe_synth_write(aq_path, &o), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_open(&g, a_path), MOE_OK);
	dump_tensors(g, wdir);
	moe_gguf_close(g);

	o.seed = 99;
	o.weights_dir = wdir;
	o.tokenizer_gguf = a_path;
	o.ftype = MOE_FTYPE_F32;
	cr_assert_eq(moe_synth_write(tmpfile_("b.gguf"), &o), MOE_OK, "%s", moe_err_detail());
	unsigned char *a = slurp(a_path, &n1), *b = slurp(tmpfile_("b.gguf"), &n2);
	cr_assert_eq(n1, n2);
	cr_assert_eq(memcmp(a, b, n1), 0, "F32 from the weights differs from the original");
	free(a);
	free(b);
	/* quantised on the way, as the random weights were */
	o.ftype = MOE_FTYPE_Q8_0;
	cr_assert_eq(moe_synth_write(tmpfile_("bq.gguf"), &o), MOE_OK, "%s", moe_err_detail());
	a = slurp(aq_path, &n1);
	b = slurp(tmpfile_("bq.gguf"), &n2);
	cr_assert_eq(n1, n2);
	cr_assert_eq(memcmp(a, b, n1), 0, "Q8_0 from the weights differs from the original");
	free(a);
	free(b);
	o.ftype = MOE_FTYPE_F32;

	/* a token count that does not fit the preset */
	o.preset = "kjv";
	cr_assert_eq(moe_synth_write(tmpfile_("c.gguf"), &o), MOE_ERR_INVAL);
	o.preset = "tiny";

	/* a NaN */
	snprintf(wfile, sizeof(wfile), "%s/blk.1.ssm_a", wdir);
	const float nan_v = NAN;
	patch(wfile, 4, &nan_v, sizeof(nan_v));
	cr_assert_eq(moe_synth_write(tmpfile_("c.gguf"), &o), MOE_ERR_BAD_VALUE);
	cr_assert_str_eq(moe_err_detail(), "weights: blk.1.ssm_a value 1 is not finite");
	/* one value short */
	cr_assert_eq(truncate(wfile, 4 * 8 - 4), 0);
	cr_assert_eq(moe_synth_write(tmpfile_("c.gguf"), &o), MOE_ERR_FORMAT);
	/* missing */
	cr_assert_eq(unlink(wfile), 0);
	cr_assert_eq(moe_synth_write(tmpfile_("c.gguf"), &o), MOE_ERR_IO);
	cr_assert_eq(access(tmpfile_("c.gguf"), F_OK), -1, "a partial file is left");
}
