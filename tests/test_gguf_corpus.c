/* test_gguf_corpus.c - malformed GGUF files: a small valid file built byte by
 * byte here, then every field broken one at a time, cut at every byte, and
 * randomly flipped; plus `moemesh inspect` on good and bad files.  Every
 * malformed input must be refused with the specific error and without any
 * read outside the buffer (each buffer is allocated at its exact size, so the
 * ASan build catches an overread). */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/gguf.h"

#define OK(expr) cr_assert_eq((expr), MOE_OK, "%s: %s", #expr, moe_err_detail())

/* ---- the small valid file ---------------------------------------------------------- */

/* The bytes and the offsets of the fields the cases below break. */
struct small {
	uint8_t b[1024];
	size_t n;
	size_t version, n_tensors, n_kv;
	size_t key0_len, key0, kv0_type, kv0_str_len;
	size_t align_type, align_val;
	size_t arr_type, arr_n, str0_len;
	size_t flags_key, bool_val;
	size_t inner_type, inner_n;
	size_t t0_name_len, t0_n_dims, t0_ne0, t0_ne1, t0_type, t0_offset;
	size_t t1_name, t1_ne0, t1_offset;
	size_t data_offset;
};

static void le(struct small *s, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		s->b[s->n++] = (uint8_t)(v >> (8 * i));
}

static void str(struct small *s, const char *p)
{
	le(s, strlen(p), 8);
	memcpy(s->b + s->n, p, strlen(p));
	s->n += strlen(p);
}

/* GGUF v3, 6 kvs, 2 tensors:
 *   general.architecture = "tiny"; general.alignment = 32; tiny.count = 1;
 *   tokenizer.ggml.tokens = ["a", "bc", ""]; tiny.flags = true;
 *   tiny.nested = [[1, 2], []] (INT32)
 *   a.weight F32 ne [4, 2] at 0 (32 bytes); b.weight Q8_0 ne [32] at 32 (34 bytes) */
static void build_small(struct small *s)
{
	memset(s, 0, sizeof(*s));
	memcpy(s->b, "GGUF", 4);
	s->n = 4;
	s->version = s->n;
	le(s, 3, 4);
	s->n_tensors = s->n;
	le(s, 2, 8);
	s->n_kv = s->n;
	le(s, 6, 8);

	s->key0_len = s->n;
	s->key0 = s->n + 8;
	str(s, "general.architecture");
	s->kv0_type = s->n;
	le(s, MOE_GGUF_STRING, 4);
	s->kv0_str_len = s->n;
	str(s, "tiny");

	str(s, "general.alignment");
	s->align_type = s->n;
	le(s, MOE_GGUF_UINT32, 4);
	s->align_val = s->n;
	le(s, 32, 4);

	str(s, "tiny.count");
	le(s, MOE_GGUF_UINT32, 4);
	le(s, 1, 4);

	str(s, "tokenizer.ggml.tokens");
	le(s, MOE_GGUF_ARRAY, 4);
	s->arr_type = s->n;
	le(s, MOE_GGUF_STRING, 4);
	s->arr_n = s->n;
	le(s, 3, 8);
	s->str0_len = s->n;
	str(s, "a");
	str(s, "bc");
	str(s, "");

	s->flags_key = s->n + 8;
	str(s, "tiny.flags");
	le(s, MOE_GGUF_BOOL, 4);
	s->bool_val = s->n;
	le(s, 1, 1);

	str(s, "tiny.nested");
	le(s, MOE_GGUF_ARRAY, 4);
	le(s, MOE_GGUF_ARRAY, 4);
	le(s, 2, 8);
	s->inner_type = s->n;
	le(s, MOE_GGUF_INT32, 4);
	s->inner_n = s->n;
	le(s, 2, 8);
	le(s, 1, 4);
	le(s, 2, 4);
	le(s, MOE_GGUF_INT32, 4);
	le(s, 0, 8);

	s->t0_name_len = s->n;
	str(s, "a.weight");
	s->t0_n_dims = s->n;
	le(s, 2, 4);
	s->t0_ne0 = s->n;
	le(s, 4, 8);
	s->t0_ne1 = s->n;
	le(s, 2, 8);
	s->t0_type = s->n;
	le(s, MOE_TYPE_F32, 4);
	s->t0_offset = s->n;
	le(s, 0, 8);

	s->t1_name = s->n + 8;
	str(s, "b.weight");
	le(s, 1, 4);
	s->t1_ne0 = s->n;
	le(s, 32, 8);
	le(s, MOE_TYPE_Q8_0, 4);
	s->t1_offset = s->n;
	le(s, 32, 8);

	while (s->n % 32 != 0)
		s->b[s->n++] = 0;
	s->data_offset = s->n;
	for (int i = 0; i < 96; i++) /* 32 + 34 bytes of data, padded to 96 */
		s->b[s->n++] = i < 66 ? (uint8_t)(i + 1) : 0;
}

/* Opens a copy of buf[0..size) in a buffer of exactly that size. */
static moe_err open_copy(const uint8_t *buf, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);
	moe_gguf *g = NULL;
	moe_err err;

	cr_assert_not_null(copy);
	memcpy(copy, buf, size);
	err = moe_gguf_open_mem(&g, copy, size);
	if (err == MOE_OK)
		moe_gguf_close(g);
	else
		cr_assert_null(g);
	free(copy);
	return err;
}

Test(gguf_corpus, the_small_file_is_valid_and_matches_the_writer)
{
	struct small s;
	moe_gguf *g;
	moe_gguf_arr a, sub;
	moe_gguf_str v;
	const moe_gguf_tensor *t;
	char path[] = "/tmp/moe_test_corpus_XXXXXX";
	moe_gguf_writer *w;
	int fd;

	build_small(&s);
	OK(moe_gguf_open_mem(&g, s.b, s.n));
	cr_assert_eq(moe_gguf_n_kv(g), 6);
	cr_assert_eq(moe_gguf_n_tensors(g), 2);
	cr_assert_eq(moe_gguf_data_offset(g), s.data_offset);
	OK(moe_gguf_get_str(&v, g, "general.architecture"));
	cr_assert(v.len == 4 && memcmp(v.ptr, "tiny", 4) == 0);
	OK(moe_gguf_get_arr(&a, g, "tokenizer.ggml.tokens"));
	cr_assert_eq(a.n, 3);
	cr_assert_eq(moe_gguf_arr_str(&a, 1).len, 2);
	OK(moe_gguf_get_arr(&a, g, "tiny.nested"));
	sub = moe_gguf_arr_sub(&a, 0);
	cr_assert_eq(moe_gguf_arr_int(&sub, 1), 2);
	t = moe_gguf_find_tensor(g, "b.weight");
	cr_assert_not_null(t);
	cr_assert_eq(t->size, 34);
	cr_assert_eq(t->data, s.b + s.data_offset + 32);
	moe_gguf_close(g);

	/* the writer produces exactly these bytes */
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	close(fd);
	const char *tokens[] = {"a", "bc", ""};
	const int32_t row0[] = {1, 2};
	const moe_gguf_value rows[] = {{.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_INT32, 2, row0}},
	                               {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_INT32, 0, NULL}}};
	const moe_gguf_value nested = {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 2, rows}};
	const int64_t ne0[2] = {4, 2}, ne1[1] = {32};
	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_str(w, "general.architecture", "tiny"));
	OK(moe_gguf_writer_add_u32(w, "general.alignment", 32));
	OK(moe_gguf_writer_add_u32(w, "tiny.count", 1));
	OK(moe_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, 3));
	OK(moe_gguf_writer_add_bool(w, "tiny.flags", true));
	OK(moe_gguf_writer_add_value(w, "tiny.nested", &nested));
	OK(moe_gguf_writer_add_tensor(w, "a.weight", MOE_TYPE_F32, 2, ne0));
	OK(moe_gguf_writer_add_tensor(w, "b.weight", MOE_TYPE_Q8_0, 1, ne1));
	OK(moe_gguf_writer_begin_data(w));
	OK(moe_gguf_writer_write(w, s.b + s.data_offset, 32));
	OK(moe_gguf_writer_write(w, s.b + s.data_offset + 32, 34));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);
	FILE *f = fopen(path, "rb");
	uint8_t got[1024];
	size_t n = fread(got, 1, sizeof(got), f);
	fclose(f);
	unlink(path);
	cr_assert_eq(n, s.n);
	cr_assert_arr_eq(got, s.b, s.n);
}

/* ---- one broken field at a time ------------------------------------------------------ */

struct patch {
	const char *what;
	size_t field; /* offsetof(struct small, <field>) */
	size_t add;   /* bytes after the field's offset */
	int width;    /* bytes written, little-endian */
	uint64_t value;
	moe_err want;
	const char *detail; /* a substring of the detail */
};

#define AT(f) offsetof(struct small, f)

static const struct patch patches[] = {
    {"magic", 0, 0, 4, 0x58554747 /* GGUX */, MOE_ERR_BAD_MAGIC, "magic"},
    {"version 1", AT(version), 0, 4, 1, MOE_ERR_BAD_VERSION, "v1"},
    {"version 4", AT(version), 0, 4, 4, MOE_ERR_BAD_VERSION, "version at offset 4"},
    {"big-endian", AT(version), 0, 4, 0x03000000, MOE_ERR_BAD_VERSION, "big-endian"},
    {"n_tensors 2^63", AT(n_tensors), 0, 8, 1ull << 63, MOE_ERR_BAD_COUNT, "n_tensors"},
    {"n_tensors max", AT(n_tensors), 0, 8, UINT64_MAX, MOE_ERR_BAD_COUNT, "n_tensors"},
    {"n_kv 2^63", AT(n_kv), 0, 8, 1ull << 63, MOE_ERR_BAD_COUNT, "n_kv"},
    {"n_kv 2^40", AT(n_kv), 0, 8, 1ull << 40, MOE_ERR_BAD_COUNT, "n_kv"},
    {"key length 2^63", AT(key0_len), 0, 8, 1ull << 63, MOE_ERR_BAD_STRING, "kv 0: key"},
    {"key length max", AT(key0_len), 0, 8, UINT64_MAX, MOE_ERR_BAD_STRING, "kv 0: key"},
    {"empty key", AT(key0_len), 0, 8, 0, MOE_ERR_BAD_STRING, "empty"},
    {"NUL in key", AT(key0), 3, 1, 0, MOE_ERR_BAD_STRING, "NUL"},
    {"value type 13", AT(kv0_type), 0, 4, 13, MOE_ERR_BAD_TYPE, "value type 13"},
    {"value type max", AT(kv0_type), 0, 4, 0xffffffff, MOE_ERR_BAD_TYPE, "general.architecture"},
    {"string length 2^63", AT(kv0_str_len), 0, 8, 1ull << 63, MOE_ERR_BAD_STRING, "value"},
    {"string length 450", AT(kv0_str_len), 0, 8, 450, MOE_ERR_TRUNCATED, "value"},
    {"alignment as INT32", AT(align_type), 0, 4, MOE_GGUF_INT32, MOE_ERR_BAD_TYPE, "UINT32"},
    {"alignment 0", AT(align_val), 0, 4, 0, MOE_ERR_BAD_ALIGNMENT, "power of two"},
    {"alignment 48", AT(align_val), 0, 4, 48, MOE_ERR_BAD_ALIGNMENT, "power of two"},
    {"alignment 64", AT(align_val), 0, 4, 64, MOE_ERR_BAD_ALIGNMENT, "b.weight"},
    {"array type 13", AT(arr_type), 0, 4, 13, MOE_ERR_BAD_TYPE, "array element type 13"},
    {"array count 2^63", AT(arr_n), 0, 8, 1ull << 63, MOE_ERR_BAD_COUNT, "array count"},
    {"array count max", AT(arr_n), 0, 8, UINT64_MAX, MOE_ERR_BAD_COUNT, "array count"},
    {"array string 2^62", AT(str0_len), 0, 8, 1ull << 62, MOE_ERR_BAD_STRING, "(element 0)"},
    {"bool 2", AT(bool_val), 0, 1, 2, MOE_ERR_BAD_VALUE, "BOOL"},
    {"duplicate key", AT(flags_key), 5, 5, 0x746e756f63 /* "count" */, MOE_ERR_DUPLICATE,
     "duplicate of kv 2"},
    {"nested type 99", AT(inner_type), 0, 4, 99, MOE_ERR_BAD_TYPE, "tiny.nested"},
    {"nested count 2^60", AT(inner_n), 0, 8, 1ull << 60, MOE_ERR_BAD_COUNT, "array count"},
    {"name length 2^63", AT(t0_name_len), 0, 8, 1ull << 63, MOE_ERR_BAD_STRING, "name"},
    {"empty name", AT(t0_name_len), 0, 8, 0, MOE_ERR_BAD_STRING, "empty"},
    {"n_dims 5", AT(t0_n_dims), 0, 4, 5, MOE_ERR_BAD_SHAPE, "n_dims 5"},
    {"n_dims max", AT(t0_n_dims), 0, 4, 0xffffffff, MOE_ERR_BAD_SHAPE, "n_dims"},
    {"ne negative", AT(t0_ne0), 0, 8, UINT64_MAX, MOE_ERR_BAD_SHAPE, "ne[0]"},
    {"ne overflow", AT(t0_ne1), 0, 8, 1ull << 62, MOE_ERR_OVERFLOW, "ne[1]"},
    {"tensor bigger than the file", AT(t0_ne1), 0, 8, 1ull << 40, MOE_ERR_TRUNCATED, "a.weight"},
    {"tensor type 4", AT(t0_type), 0, 4, 4, MOE_ERR_BAD_TYPE, "tensor type 4"},
    {"tensor type 40", AT(t0_type), 0, 4, 40, MOE_ERR_BAD_TYPE, "tensor type 40"},
    {"tensor type max", AT(t0_type), 0, 4, 0xffffffff, MOE_ERR_BAD_TYPE, "a.weight"},
    {"ne[0] off the block", AT(t1_ne0), 0, 8, 33, MOE_ERR_BAD_SHAPE, "block size"},
    {"misaligned offset", AT(t0_offset), 0, 8, 16, MOE_ERR_BAD_ALIGNMENT, "a.weight"},
    {"offset 2^40", AT(t0_offset), 0, 8, 1ull << 40, MOE_ERR_BAD_OFFSET, "beyond"},
    {"offset max", AT(t0_offset), 0, 8, UINT64_MAX & ~31ull, MOE_ERR_BAD_OFFSET, "beyond"},
    {"overlap", AT(t0_offset), 0, 8, 64, MOE_ERR_BAD_OFFSET, "overlaps"},
    {"overlap at 0", AT(t1_offset), 0, 8, 0, MOE_ERR_BAD_OFFSET, "overlaps"},
    {"past the end", AT(t1_offset), 0, 8, 64, MOE_ERR_TRUNCATED, "b.weight"},
    {"duplicate tensor", AT(t1_name), 0, 1, 'a', MOE_ERR_DUPLICATE, "duplicate of tensor"},
};

Test(gguf_corpus, every_broken_field_gives_its_error)
{
	struct small s, bad;

	build_small(&s);
	for (size_t k = 0; k < sizeof(patches) / sizeof(patches[0]); k++) {
		const struct patch *p = &patches[k];
		size_t at = p->field == 0 ? 0 : *(const size_t *)((const char *)&s + p->field);
		moe_err err;
		bad = s;
		at += p->add;
		for (int i = 0; i < p->width; i++)
			bad.b[at + i] = (uint8_t)(p->value >> (8 * i));
		moe_err_clear();
		err = open_copy(bad.b, bad.n);
		cr_expect_eq(err, p->want, "%s: got %s (%s), want %s", p->what, moe_err_name(err),
		             moe_err_detail(), moe_err_name(p->want));
		cr_expect(strstr(moe_err_detail(), p->detail) != NULL, "%s: detail '%s' lacks '%s'",
		          p->what, moe_err_detail(), p->detail);
		cr_expect(strstr(moe_err_detail(), "offset") != NULL,
		          "%s: detail '%s' names no offset", p->what, moe_err_detail());
	}
}

Test(gguf_corpus, a_valid_variant_still_opens)
{
	struct small s;

	build_small(&s);
	s.b[s.version] = 2; /* v2: same layout */
	OK(open_copy(s.b, s.n));
	build_small(&s);
	s.b[s.t0_type] = MOE_TYPE_F16; /* 16 bytes instead of 32: still inside its slot */
	/* the padding after the last tensor may be missing */
	for (size_t cut = s.data_offset + 66; cut <= s.n; cut++)
		OK(open_copy(s.b, cut));
}

/* Arrays nested `depth` deep: [[[...[1]...]]]. */
static size_t build_nested(uint8_t *b, int depth)
{
	size_t n = 0;

	memcpy(b, "GGUF\3\0\0\0", 8);
	n = 8;
	memset(b + n, 0, 8); /* n_tensors */
	n += 8;
	b[n] = 1; /* n_kv */
	memset(b + n + 1, 0, 7);
	n += 8;
	b[n] = 1;
	memset(b + n + 1, 0, 7);
	n += 8;
	b[n++] = 'k';
	b[n] = MOE_GGUF_ARRAY;
	memset(b + n + 1, 0, 3);
	n += 4;
	for (int d = 0; d < depth; d++) {
		uint32_t t = d + 1 < depth ? MOE_GGUF_ARRAY : MOE_GGUF_UINT8;
		memcpy(b + n, &t, 4);
		b[n + 4] = 1;
		memset(b + n + 5, 0, 7);
		n += 12;
	}
	b[n++] = 7;
	return n;
}

Test(gguf_corpus, nesting_is_bounded)
{
	uint8_t b[1024];
	moe_gguf *g;
	moe_gguf_arr a;
	size_t n = build_nested(b, 16);

	OK(moe_gguf_open_mem(&g, b, n));
	OK(moe_gguf_get_arr(&a, g, "k"));
	for (int d = 1; d < 16; d++)
		a = moe_gguf_arr_sub(&a, 0);
	cr_assert_eq(a.type, MOE_GGUF_UINT8);
	cr_assert_eq(moe_gguf_arr_int(&a, 0), 7);
	moe_gguf_close(g);
	n = build_nested(b, 17);
	cr_assert_eq(open_copy(b, n), MOE_ERR_UNSUPPORTED, "%s", moe_err_detail());
	n = build_nested(b, 60);
	cr_assert_eq(open_copy(b, n), MOE_ERR_UNSUPPORTED);
}

/* ---- truncation at every byte ----------------------------------------------------------- */

Test(gguf_corpus, the_small_file_cut_at_every_byte)
{
	struct small s;

	build_small(&s);
	/* the counts need 6 x 13 bytes (kvs) and 2 x 24 bytes (tensor infos) at
	 * least: below 126 bytes they cannot fit even the whole input */
	for (size_t cut = 0; cut < s.data_offset + 66; cut++) {
		moe_err want = cut >= 24 && cut < 126 ? MOE_ERR_BAD_COUNT : MOE_ERR_TRUNCATED;
		moe_err err = open_copy(s.b, cut);
		cr_assert_eq(err, want, "cut at %zu: %s (%s)", cut, moe_err_name(err),
		             moe_err_detail());
		cr_assert(strstr(moe_err_detail(), "offset") != NULL, "cut at %zu: %s", cut,
		          moe_err_detail());
	}
	/* the padding after the last tensor may be missing */
	for (size_t cut = s.data_offset + 66; cut <= s.n; cut++)
		OK(open_copy(s.b, cut));
}

static uint8_t *read_fixture(const char *name, size_t *size)
{
	const char *dir = getenv("MOE_FIXTURES");
	char path[4096];
	FILE *f;
	uint8_t *buf;
	long n;

	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*size = (size_t)n;
	return buf;
}

Test(gguf_corpus, a_fixture_cut_at_every_byte_of_its_header, .timeout = 300)
{
	size_t size, data_offset;
	uint8_t *buf = read_fixture("qwen3moe-tiny-Q4_0.gguf", &size);
	moe_gguf *g;

	OK(moe_gguf_open_mem(&g, buf, size));
	data_offset = moe_gguf_data_offset(g);
	moe_gguf_close(g);
	cr_assert_gt(data_offset, 4096);
	/* the largest count is the 512 tokens (at least 8 bytes each): from 4096
	 * bytes on, every count fits the input and only truncation remains */
	for (size_t cut = 0; cut < data_offset + 64; cut++) {
		moe_err err = open_copy(buf, cut);
		if (cut >= 4096)
			cr_assert_eq(err, MOE_ERR_TRUNCATED, "cut at %zu: %s (%s)", cut,
			             moe_err_name(err), moe_err_detail());
		else
			cr_assert(err == MOE_ERR_TRUNCATED || err == MOE_ERR_BAD_COUNT,
			          "cut at %zu: %s (%s)", cut, moe_err_name(err), moe_err_detail());
	}
	cr_assert_eq(open_copy(buf, size - 1), MOE_ERR_TRUNCATED);
	free(buf);
}

/* ---- random byte flips -------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Touches everything an accepted file offers. */
static void walk(const moe_gguf *g)
{
	volatile uint64_t sink = 0;

	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		moe_gguf_value v;
		moe_gguf_arr a;
		sink += moe_gguf_kv_key(g, i).len;
		if (moe_gguf_kv_arr(&a, g, i) != MOE_OK) {
			cr_assert_eq(moe_gguf_kv_value(&v, g, i), MOE_OK);
			continue;
		}
		for (uint64_t j = 0; j < a.n; j++) {
			moe_gguf_str s = moe_gguf_arr_str(&a, j);
			moe_gguf_arr sub = moe_gguf_arr_sub(&a, j);
			sink += s.len ? (uint8_t)s.ptr[s.len - 1] : 0;
			sink += sub.n + (uint64_t)moe_gguf_arr_int(&a, j);
		}
	}
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		char name[256];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.ptr);
		if (strlen(name) == t->name.len && t->name.len < sizeof(name))
			cr_assert_not_null(moe_gguf_find_tensor(g, name));
		if (t->size > 0)
			sink +=
			    ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->size - 1];
	}
	(void)sink;
}

static void fuzz(uint8_t *buf, size_t size, size_t region, uint64_t seed, int iters, int *accepted,
                 int *rejected)
{
	for (int it = 0; it < iters; it++) {
		size_t at[8];
		uint8_t old[8];
		int k = 1 + (int)(rng_next(&seed) % 8);
		moe_gguf *g = NULL;
		moe_err err;
		for (int i = 0; i < k; i++) {
			at[i] = rng_next(&seed) % region;
			old[i] = buf[at[i]];
			if (rng_next(&seed) & 1)
				buf[at[i]] ^= (uint8_t)(1u << (rng_next(&seed) % 8));
			else
				buf[at[i]] = (uint8_t)rng_next(&seed);
		}
		err = moe_gguf_open_mem(&g, buf, size);
		if (err == MOE_OK) {
			walk(g);
			moe_gguf_close(g);
			(*accepted)++;
		} else {
			cr_assert((err >= MOE_ERR_BAD_MAGIC && err <= MOE_ERR_BAD_VALUE) ||
			              err == MOE_ERR_UNSUPPORTED,
			          "iteration %d: %s", it, moe_err_name(err));
			cr_assert_neq(moe_err_detail()[0], '\0');
			(*rejected)++;
		}
		for (int i = k - 1; i >= 0; i--)
			buf[at[i]] = old[i];
	}
}

Test(gguf_corpus, random_byte_flips_never_crash, .timeout = 300)
{
	size_t size;
	uint8_t *buf = read_fixture("qwen3next-tiny-Q4_K_M.gguf", &size);
	struct small s;
	moe_gguf *g;
	int accepted = 0, rejected = 0;
	size_t region;

	OK(moe_gguf_open_mem(&g, buf, size));
	region = moe_gguf_data_offset(g);
	moe_gguf_close(g);
	fuzz(buf, size, region, 0x9e3779b97f4a7c15ull, 3000, &accepted, &rejected);
	cr_log_info("fixture header: %d flipped copies accepted, %d refused", accepted, rejected);
	cr_assert_gt(accepted, 0);
	cr_assert_gt(rejected, 0);
	free(buf);

	build_small(&s);
	buf = malloc(s.n);
	memcpy(buf, s.b, s.n);
	accepted = rejected = 0;
	fuzz(buf, s.n, s.n, 12345, 3000, &accepted, &rejected);
	cr_log_info("small file: %d flipped copies accepted, %d refused", accepted, rejected);
	cr_assert_gt(accepted, 0);
	cr_assert_gt(rejected, 0);
	free(buf);
}

/* ---- moemesh inspect ---------------------------------------------------------------------- */

/* Runs `moemesh inspect ARG`; returns the exit status, output in out/err. */
static int run_inspect(const char *arg, char *out, size_t out_size, char *err, size_t err_size)
{
	const char *bin = getenv("MOE_BIN");
	char cmd[8192], out_path[] = "/tmp/moe_test_inspect_XXXXXX",
	                err_path[] = "/tmp/moe_test_inspect_XXXXXX";
	int fo = mkstemp(out_path), fe = mkstemp(err_path), status;
	FILE *f;
	size_t n;

	cr_assert_not_null(bin, "MOE_BIN is not set");
	cr_assert(fo >= 0 && fe >= 0);
	close(fo);
	close(fe);
	snprintf(cmd, sizeof(cmd), "'%s' inspect %s >'%s' 2>'%s'", bin, arg, out_path, err_path);
	status = system(cmd);
	cr_assert(WIFEXITED(status), "%s", cmd);
	f = fopen(out_path, "rb");
	n = fread(out, 1, out_size - 1, f);
	out[n] = '\0';
	fclose(f);
	f = fopen(err_path, "rb");
	n = fread(err, 1, err_size - 1, f);
	err[n] = '\0';
	fclose(f);
	unlink(out_path);
	unlink(err_path);
	return WEXITSTATUS(status);
}

Test(gguf_inspect, prints_a_fixture_and_refuses_a_truncated_copy)
{
	static char out[1 << 16], err[4096];
	const char *dir = getenv("MOE_FIXTURES");
	char arg[4096], bad[] = "/tmp/moe_test_trunc_XXXXXX";
	size_t size, name_end, cut;
	uint8_t *buf = read_fixture("qwen3moe-tiny-Q4_0.gguf", &size);
	const moe_gguf_tensor *t3;
	moe_gguf *g;
	FILE *f;
	int fd;

	snprintf(arg, sizeof(arg), "'%s/qwen3moe-tiny-Q4_0.gguf'", dir);
	cr_assert_eq(run_inspect(arg, out, sizeof(out), err, sizeof(err)), 0, "%s", err);
	cr_assert(strstr(out, "GGUF v3") != NULL, "%s", out);
	cr_assert(strstr(out, "general.architecture") != NULL);
	cr_assert(strstr(out, "\"qwen3moe\"") != NULL);
	cr_assert(strstr(out, "array[STRING, 512] = [\"!\", \"\\\"\", \"#\", ...]") != NULL, "%s",
	          out);
	cr_assert(strstr(out, "array[INT32, 512]") != NULL);
	cr_assert(strstr(out, "blk.0.ffn_gate_exps.weight") != NULL);
	cr_assert(strstr(out, "[128, 64, 16]") != NULL);
	/* tensor count and bytes from tests/fixtures/README.md */
	cr_assert(strstr(out, "totals: 51 tensors") != NULL, "%s", out);
	cr_assert(strstr(out, "1213952 bytes") != NULL, "%s", out);

	/* cut inside tensor info 3's ne[1] */
	OK(moe_gguf_open_mem(&g, buf, size));
	t3 = moe_gguf_tensor_at(g, 3);
	cr_assert_geq(t3->n_dims, 2);
	name_end = (size_t)((const uint8_t *)t3->name.ptr - buf) + t3->name.len;
	cut = name_end + 4 + 8 + 3;
	moe_gguf_close(g);
	fd = mkstemp(bad);
	cr_assert_geq(fd, 0);
	close(fd);
	f = fopen(bad, "wb");
	fwrite(buf, 1, cut, f);
	fclose(f);
	snprintf(arg, sizeof(arg), "'%s'", bad);
	cr_assert_eq(run_inspect(arg, out, sizeof(out), err, sizeof(err)), 1);
	cr_assert(strstr(err, "moemesh inspect: ") == err, "%s", err);
	cr_assert(strstr(err, bad) != NULL, "%s", err);
	cr_assert(strstr(err, "MOE_ERR_TRUNCATED") != NULL, "%s", err);
	cr_assert(strstr(err, "tensor info 3 (") != NULL, "%s", err);
	cr_assert(strstr(err, "ne[1] at offset") != NULL, "%s", err);

	/* not a GGUF at all */
	f = fopen(bad, "wb");
	fputs("not a gguf file", f);
	fclose(f);
	cr_assert_eq(run_inspect(arg, out, sizeof(out), err, sizeof(err)), 1);
	cr_assert(strstr(err, "MOE_ERR_BAD_MAGIC") != NULL, "%s", err);
	unlink(bad);
	free(buf);

	cr_assert_eq(run_inspect("", out, sizeof(out), err, sizeof(err)), 2);
	cr_assert_eq(run_inspect("--help", out, sizeof(out), err, sizeof(err)), 0);
	cr_assert(strstr(out, "usage: moemesh inspect") != NULL);
	cr_assert_eq(run_inspect("/nonexistent.gguf", out, sizeof(out), err, sizeof(err)), 1);
	cr_assert(strstr(err, "MOE_ERR_IO") != NULL, "%s", err);
}
