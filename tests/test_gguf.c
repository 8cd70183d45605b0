/* test_gguf.c - the GGUF reader and writer: value round trips, hand-built
 * bytes, alignment, getters, writer errors, every fixture model (its
 * hyper-parameters against the READMEs' tables) and byte-identical rewrites of
 * the fixtures written by llama.cpp's tools. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/gguf.h"

/* ---- helpers ------------------------------------------------------------------ */

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);

	cr_assert_not_null(p);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static char *fixture(const char *name)
{
	const char *dir = getenv("MOE_FIXTURES");

	cr_assert_not_null(dir, "MOE_FIXTURES is not set");
	return path_join(dir, name);
}

static char *model_file(const char *name)
{
	const char *dir = getenv("MOE_SOURCE_DIR");
	char *models, *p;

	cr_assert_not_null(dir, "MOE_SOURCE_DIR is not set");
	models = path_join(dir, "models");
	p = path_join(models, name);
	free(models);
	return p;
}

static uint8_t *read_all(const char *path, size_t *size)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	cr_assert_not_null(f, "open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t)n : 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*size = (size_t)n;
	return buf;
}

/* A fresh temporary path (the file exists, empty). */
static char *tmp_path(void)
{
	char *p = strdup("/tmp/moe_test_gguf_XXXXXX");
	int fd;

	cr_assert_not_null(p);
	fd = mkstemp(p);
	cr_assert_geq(fd, 0);
	close(fd);
	return p;
}

static bool str_is(moe_gguf_str s, const char *want)
{
	return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

#define OK(expr) cr_assert_eq((expr), MOE_OK, "%s: %s", #expr, moe_err_detail())

/* ---- the writer's bytes, checked against a hand-built file ----------------------- */

struct bytes {
	uint8_t b[512];
	size_t n;
};

static void put_le(struct bytes *o, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		o->b[o->n++] = (uint8_t)(v >> (8 * i));
}

static void put_s(struct bytes *o, const char *s)
{
	put_le(o, strlen(s), 8);
	memcpy(o->b + o->n, s, strlen(s));
	o->n += strlen(s);
}

Test(gguf_write, bytes_equal_a_hand_built_file)
{
	struct bytes want = {.n = 0};
	char *path = tmp_path();
	moe_gguf_writer *w;
	const float t0[3] = {1.0f, -2.0f, 0.5f};
	const int64_t ne[2] = {3, 1};
	size_t size;
	uint8_t *got;

	/* header */
	memcpy(want.b, "GGUF", 4);
	want.n = 4;
	put_le(&want, 3, 4);
	put_le(&want, 1, 8); /* n_tensors */
	put_le(&want, 2, 8); /* n_kv */
	put_s(&want, "a.u32");
	put_le(&want, 4, 4);
	put_le(&want, 0xdeadbeef, 4);
	put_s(&want, "b.str");
	put_le(&want, 8, 4);
	put_s(&want, "hi");
	put_s(&want, "t0");
	put_le(&want, 2, 4);
	put_le(&want, 3, 8);
	put_le(&want, 1, 8);
	put_le(&want, 0, 4); /* F32 */
	put_le(&want, 0, 8); /* offset */
	while (want.n % 32 != 0)
		want.b[want.n++] = 0;
	put_le(&want, 0x3f800000, 4); /* 1.0f */
	put_le(&want, 0xc0000000, 4); /* -2.0f */
	put_le(&want, 0x3f000000, 4); /* 0.5f */
	while (want.n % 32 != 0)
		want.b[want.n++] = 0;

	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_u32(w, "a.u32", 0xdeadbeef));
	OK(moe_gguf_writer_add_str(w, "b.str", "hi"));
	OK(moe_gguf_writer_add_tensor(w, "t0", MOE_TYPE_F32, 2, ne));
	OK(moe_gguf_writer_begin_data(w));
	OK(moe_gguf_writer_write(w, t0, sizeof(t0)));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);

	got = read_all(path, &size);
	cr_assert_eq(size, want.n);
	cr_assert_arr_eq(got, want.b, want.n);
	free(got);
	unlink(path);
	free(path);
}

/* ---- round trip of every value type --------------------------------------------- */

Test(gguf_roundtrip, every_value_type_and_nested_arrays)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf *g;
	moe_gguf_value v;
	moe_gguf_arr a, s, s2;
	moe_gguf_str str;
	uint32_t u32;
	uint64_t u64;
	int64_t i64;
	float f32;
	bool b;
	double d;

	const uint8_t au8[] = {0, 1, 255};
	const int8_t ai8[] = {-128, 0, 127};
	const uint16_t au16[] = {0, 65535};
	const int16_t ai16[] = {-32768, 32767};
	const uint32_t au32[] = {7, 4000000000u};
	const int32_t ai32[] = {-2000000000, 1, 2};
	const float af32[] = {1.5f, -0.25f};
	const uint8_t abool[] = {1, 0, 1};
	const uint64_t au64[] = {UINT64_MAX, 0};
	const int64_t ai64[] = {INT64_MIN, INT64_MAX};
	const double af64[] = {3.141592653589793, -1e300};
	const char *const strs[] = {"!", "\"", "", "h\xc3\xa9llo"};
	const char nul_str[] = {'a', '\0', 'b'};
	const moe_gguf_str strn[] = {{nul_str, 3}, {"xyz", 3}};
	/* [[1, 2], [], [3]] and [[["p", "q"]], [[]]] */
	const int32_t r0[] = {1, 2}, r2[] = {3};
	const moe_gguf_value rows[] = {
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_INT32, 2, r0}},
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_INT32, 0, NULL}},
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_INT32, 1, r2}},
	};
	const moe_gguf_value nested = {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 3, rows}};
	const moe_gguf_str pq[] = {{"p", 1}, {"q", 1}};
	const moe_gguf_value inner[] = {{.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_STRING, 2, pq}}};
	const moe_gguf_value inner_empty[] = {
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_STRING, 0, NULL}}};
	const moe_gguf_value mid[] = {
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 1, inner}},
	    {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 1, inner_empty}}};
	const moe_gguf_value deep = {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 2, mid}};

	OK(moe_gguf_writer_create(&w, path));
	v = (moe_gguf_value){.type = MOE_GGUF_UINT8, .u = 200};
	OK(moe_gguf_writer_add_value(w, "v.u8", &v));
	v = (moe_gguf_value){.type = MOE_GGUF_INT8, .i = -100};
	OK(moe_gguf_writer_add_value(w, "v.i8", &v));
	v = (moe_gguf_value){.type = MOE_GGUF_UINT16, .u = 60000};
	OK(moe_gguf_writer_add_value(w, "v.u16", &v));
	v = (moe_gguf_value){.type = MOE_GGUF_INT16, .i = -30000};
	OK(moe_gguf_writer_add_value(w, "v.i16", &v));
	OK(moe_gguf_writer_add_u32(w, "v.u32", 4000000000u));
	OK(moe_gguf_writer_add_i32(w, "v.i32", -2000000000));
	OK(moe_gguf_writer_add_f32(w, "v.f32", 1e-6f));
	OK(moe_gguf_writer_add_bool(w, "v.bool", true));
	OK(moe_gguf_writer_add_str(w, "v.str", "qwen3moe"));
	OK(moe_gguf_writer_add_u64(w, "v.u64", UINT64_MAX));
	v = (moe_gguf_value){.type = MOE_GGUF_INT64, .i = INT64_MIN};
	OK(moe_gguf_writer_add_value(w, "v.i64", &v));
	v = (moe_gguf_value){.type = MOE_GGUF_FLOAT64, .f = 2.718281828459045};
	OK(moe_gguf_writer_add_value(w, "v.f64", &v));
	v = (moe_gguf_value){.type = MOE_GGUF_STRING, .s = {nul_str, 3}};
	OK(moe_gguf_writer_add_value(w, "v.str_nul", &v));
	OK(moe_gguf_writer_add_str(w, "v.empty", ""));
	OK(moe_gguf_writer_add_arr(w, "a.u8", MOE_GGUF_UINT8, au8, 3));
	OK(moe_gguf_writer_add_arr(w, "a.i8", MOE_GGUF_INT8, ai8, 3));
	OK(moe_gguf_writer_add_arr(w, "a.u16", MOE_GGUF_UINT16, au16, 2));
	OK(moe_gguf_writer_add_arr(w, "a.i16", MOE_GGUF_INT16, ai16, 2));
	OK(moe_gguf_writer_add_arr(w, "a.u32", MOE_GGUF_UINT32, au32, 2));
	OK(moe_gguf_writer_add_arr(w, "a.i32", MOE_GGUF_INT32, ai32, 3));
	OK(moe_gguf_writer_add_arr(w, "a.f32", MOE_GGUF_FLOAT32, af32, 2));
	OK(moe_gguf_writer_add_arr(w, "a.bool", MOE_GGUF_BOOL, abool, 3));
	OK(moe_gguf_writer_add_arr(w, "a.u64", MOE_GGUF_UINT64, au64, 2));
	OK(moe_gguf_writer_add_arr(w, "a.i64", MOE_GGUF_INT64, ai64, 2));
	OK(moe_gguf_writer_add_arr(w, "a.f64", MOE_GGUF_FLOAT64, af64, 2));
	OK(moe_gguf_writer_add_arr(w, "a.empty", MOE_GGUF_UINT32, NULL, 0));
	OK(moe_gguf_writer_add_arr_str(w, "a.str", strs, 4));
	OK(moe_gguf_writer_add_arr_strn(w, "a.strn", strn, 2));
	OK(moe_gguf_writer_add_value(w, "a.nested", &nested));
	OK(moe_gguf_writer_add_value(w, "a.deep", &deep));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);

	OK(moe_gguf_open(&g, path));
	cr_assert_eq(moe_gguf_version(g), 3);
	cr_assert_eq(moe_gguf_n_kv(g), 30);
	cr_assert_eq(moe_gguf_n_tensors(g), 0);
	cr_assert(str_is(moe_gguf_kv_key(g, 0), "v.u8"));
	cr_assert(str_is(moe_gguf_kv_key(g, 29), "a.deep"));

	cr_assert_eq(moe_gguf_kv_type(g, moe_gguf_find_key(g, "v.u8")), MOE_GGUF_UINT8);
	OK(moe_gguf_get_u32(&u32, g, "v.u8"));
	cr_assert_eq(u32, 200);
	cr_assert_eq(moe_gguf_kv_type(g, moe_gguf_find_key(g, "v.i8")), MOE_GGUF_INT8);
	OK(moe_gguf_get_i64(&i64, g, "v.i8"));
	cr_assert_eq(i64, -100);
	OK(moe_gguf_get_u32(&u32, g, "v.u16"));
	cr_assert_eq(u32, 60000);
	OK(moe_gguf_get_i64(&i64, g, "v.i16"));
	cr_assert_eq(i64, -30000);
	OK(moe_gguf_get_u32(&u32, g, "v.u32"));
	cr_assert_eq(u32, 4000000000u);
	OK(moe_gguf_get_i64(&i64, g, "v.i32"));
	cr_assert_eq(i64, -2000000000);
	OK(moe_gguf_get_f32(&f32, g, "v.f32"));
	cr_assert_eq(f32, 1e-6f);
	OK(moe_gguf_get_bool(&b, g, "v.bool"));
	cr_assert(b);
	OK(moe_gguf_get_str(&str, g, "v.str"));
	cr_assert(str_is(str, "qwen3moe"));
	OK(moe_gguf_get_u64(&u64, g, "v.u64"));
	cr_assert_eq(u64, UINT64_MAX);
	OK(moe_gguf_get_i64(&i64, g, "v.i64"));
	cr_assert_eq(i64, INT64_MIN);
	OK(moe_gguf_kv_value(&v, g, moe_gguf_find_key(g, "v.f64")));
	cr_assert_eq(v.type, MOE_GGUF_FLOAT64);
	cr_assert_eq(v.f, 2.718281828459045);
	OK(moe_gguf_get_str(&str, g, "v.str_nul"));
	cr_assert_eq(str.len, 3);
	cr_assert_eq(memcmp(str.ptr, nul_str, 3), 0);
	OK(moe_gguf_get_str(&str, g, "v.empty"));
	cr_assert_eq(str.len, 0);
	cr_assert(moe_gguf_kv_as_double(&d, g, moe_gguf_find_key(g, "v.i16")));
	cr_assert_eq(d, -30000.0);
	cr_assert_not(moe_gguf_kv_as_double(&d, g, moe_gguf_find_key(g, "v.str")));

	OK(moe_gguf_get_arr(&a, g, "a.u8"));
	cr_assert_eq(a.type, MOE_GGUF_UINT8);
	cr_assert_eq(a.n, 3);
	cr_assert_eq(moe_gguf_arr_int(&a, 2), 255);
	OK(moe_gguf_get_arr(&a, g, "a.i8"));
	cr_assert_eq(moe_gguf_arr_int(&a, 0), -128);
	cr_assert_eq(moe_gguf_arr_int(&a, 2), 127);
	OK(moe_gguf_get_arr(&a, g, "a.u16"));
	cr_assert_eq(moe_gguf_arr_int(&a, 1), 65535);
	OK(moe_gguf_get_arr(&a, g, "a.i16"));
	cr_assert_eq(moe_gguf_arr_int(&a, 0), -32768);
	OK(moe_gguf_get_arr(&a, g, "a.u32"));
	cr_assert_eq(moe_gguf_arr_int(&a, 1), 4000000000);
	OK(moe_gguf_get_arr(&a, g, "a.i32"));
	cr_assert_eq(moe_gguf_arr_int(&a, 0), -2000000000);
	cr_assert_eq(moe_gguf_arr_int(&a, 3), 0, "out of range gives 0");
	OK(moe_gguf_get_arr(&a, g, "a.f32"));
	cr_assert_eq(moe_gguf_arr_float(&a, 0), 1.5);
	cr_assert_eq(moe_gguf_arr_float(&a, 1), -0.25);
	OK(moe_gguf_get_arr(&a, g, "a.bool"));
	cr_assert_eq(a.type, MOE_GGUF_BOOL);
	cr_assert_eq(moe_gguf_arr_int(&a, 0), 1);
	cr_assert_eq(moe_gguf_arr_int(&a, 1), 0);
	OK(moe_gguf_get_arr(&a, g, "a.u64"));
	cr_assert_eq((uint64_t)moe_gguf_arr_int(&a, 0), UINT64_MAX);
	OK(moe_gguf_get_arr(&a, g, "a.i64"));
	cr_assert_eq(moe_gguf_arr_int(&a, 0), INT64_MIN);
	cr_assert_eq(moe_gguf_arr_int(&a, 1), INT64_MAX);
	OK(moe_gguf_get_arr(&a, g, "a.f64"));
	cr_assert_eq(moe_gguf_arr_float(&a, 0), 3.141592653589793);
	cr_assert_eq(moe_gguf_arr_float(&a, 1), -1e300);
	OK(moe_gguf_get_arr(&a, g, "a.empty"));
	cr_assert_eq(a.type, MOE_GGUF_UINT32);
	cr_assert_eq(a.n, 0);

	OK(moe_gguf_get_arr(&a, g, "a.str"));
	cr_assert_eq(a.type, MOE_GGUF_STRING);
	cr_assert_eq(a.n, 4);
	cr_assert(str_is(moe_gguf_arr_str(&a, 0), "!"));
	cr_assert(str_is(moe_gguf_arr_str(&a, 1), "\""));
	cr_assert(str_is(moe_gguf_arr_str(&a, 2), ""));
	cr_assert(str_is(moe_gguf_arr_str(&a, 3), "h\xc3\xa9llo"));
	cr_assert_null(moe_gguf_arr_str(&a, 4).ptr);
	OK(moe_gguf_get_arr(&a, g, "a.strn"));
	str = moe_gguf_arr_str(&a, 0);
	cr_assert_eq(str.len, 3);
	cr_assert_eq(memcmp(str.ptr, nul_str, 3), 0);
	cr_assert(str_is(moe_gguf_arr_str(&a, 1), "xyz"));

	OK(moe_gguf_get_arr(&a, g, "a.nested"));
	cr_assert_eq(a.type, MOE_GGUF_ARRAY);
	cr_assert_eq(a.n, 3);
	s = moe_gguf_arr_sub(&a, 0);
	cr_assert_eq(s.type, MOE_GGUF_INT32);
	cr_assert_eq(s.n, 2);
	cr_assert_eq(moe_gguf_arr_int(&s, 0), 1);
	cr_assert_eq(moe_gguf_arr_int(&s, 1), 2);
	s = moe_gguf_arr_sub(&a, 1);
	cr_assert_eq(s.type, MOE_GGUF_INT32);
	cr_assert_eq(s.n, 0);
	s = moe_gguf_arr_sub(&a, 2);
	cr_assert_eq(s.n, 1);
	cr_assert_eq(moe_gguf_arr_int(&s, 0), 3);
	cr_assert_eq(moe_gguf_arr_sub(&a, 3).n, 0, "out of range gives an empty array");

	OK(moe_gguf_get_arr(&a, g, "a.deep"));
	cr_assert_eq(a.n, 2);
	s = moe_gguf_arr_sub(&a, 0);
	cr_assert_eq(s.type, MOE_GGUF_ARRAY);
	cr_assert_eq(s.n, 1);
	s2 = moe_gguf_arr_sub(&s, 0);
	cr_assert_eq(s2.type, MOE_GGUF_STRING);
	cr_assert_eq(s2.n, 2);
	cr_assert(str_is(moe_gguf_arr_str(&s2, 0), "p"));
	cr_assert(str_is(moe_gguf_arr_str(&s2, 1), "q"));
	s = moe_gguf_arr_sub(&a, 1);
	s2 = moe_gguf_arr_sub(&s, 0);
	cr_assert_eq(s2.type, MOE_GGUF_STRING);
	cr_assert_eq(s2.n, 0);

	/* copying every kv through copy_kv reproduces the file exactly */
	{
		char *path2 = tmp_path();
		uint8_t *x, *y;
		size_t nx, ny;
		OK(moe_gguf_writer_create(&w, path2));
		for (int64_t i = 0; i < moe_gguf_n_kv(g); i++)
			OK(moe_gguf_writer_copy_kv(w, g, i));
		OK(moe_gguf_writer_finish(w));
		moe_gguf_writer_destroy(w);
		x = read_all(path, &nx);
		y = read_all(path2, &ny);
		cr_assert_eq(nx, ny);
		cr_assert_arr_eq(x, y, nx);
		free(x);
		free(y);
		unlink(path2);
		free(path2);
	}
	moe_gguf_close(g);
	unlink(path);
	free(path);
}

Test(gguf_roundtrip, empty_arrays_of_every_kind)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf *g;
	moe_gguf_arr a;
	const moe_gguf_value none = {.type = MOE_GGUF_ARRAY, .arr = {MOE_GGUF_ARRAY, 0, NULL}};

	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_arr_strn(w, "strs", NULL, 0));
	OK(moe_gguf_writer_add_value(w, "arrs", &none));
	OK(moe_gguf_writer_add_arr(w, "f64s", MOE_GGUF_FLOAT64, NULL, 0));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);
	OK(moe_gguf_open(&g, path));
	OK(moe_gguf_get_arr(&a, g, "strs"));
	cr_assert_eq(a.type, MOE_GGUF_STRING);
	cr_assert_eq(a.n, 0);
	cr_assert_null(moe_gguf_arr_str(&a, 0).ptr);
	OK(moe_gguf_get_arr(&a, g, "arrs"));
	cr_assert_eq(a.type, MOE_GGUF_ARRAY);
	cr_assert_eq(a.n, 0);
	cr_assert_eq(moe_gguf_arr_sub(&a, 0).n, 0);
	OK(moe_gguf_get_arr(&a, g, "f64s"));
	cr_assert_eq(a.n, 0);
	cr_assert_eq(moe_gguf_arr_float(&a, 0), 0.0);
	cr_assert_eq(moe_gguf_data_offset(g) % 32, 0);
	cr_assert_eq(moe_gguf_file_size(g), moe_gguf_data_offset(g), "no tensors, no data");
	moe_gguf_close(g);
	unlink(path);
	free(path);
}

/* ---- alignment ---------------------------------------------------------------------- */

static void check_alignment(uint32_t align)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf *g;
	const int64_t ne_a[1] = {3}, ne_b[2] = {32, 2}, ne_c[1] = {5};
	float a[3] = {1, 2, 3}, c[5] = {9, 8, 7, 6, 5};
	uint8_t bq[68];
	size_t size;

	for (int i = 0; i < 68; i++)
		bq[i] = (uint8_t)(i * 7);
	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_str(w, "general.architecture", "x"));
	OK(moe_gguf_writer_add_u32(w, "general.alignment", align));
	OK(moe_gguf_writer_add_tensor(w, "a", MOE_TYPE_F32, 1, ne_a));
	OK(moe_gguf_writer_add_tensor(w, "b", MOE_TYPE_Q8_0, 2, ne_b));
	OK(moe_gguf_writer_add_tensor(w, "c", MOE_TYPE_F32, 1, ne_c));
	OK(moe_gguf_writer_begin_data(w));
	OK(moe_gguf_writer_write(w, a, sizeof(a)));
	OK(moe_gguf_writer_write(w, bq, 30)); /* one tensor in two writes */
	OK(moe_gguf_writer_write(w, bq + 30, 38));
	OK(moe_gguf_writer_write(w, c, sizeof(c)));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);

	OK(moe_gguf_open(&g, path));
	cr_assert_eq(moe_gguf_alignment(g), align);
	cr_assert_eq(moe_gguf_data_offset(g) % align, 0);
	size = moe_gguf_file_size(g);
	cr_assert_eq(size % align, 0, "align %u: file size %zu", align, size);
	const moe_gguf_tensor *ta = moe_gguf_find_tensor(g, "a");
	const moe_gguf_tensor *tb = moe_gguf_find_tensor(g, "b");
	const moe_gguf_tensor *tc = moe_gguf_find_tensor(g, "c");
	cr_assert(ta && tb && tc);
	/* offsets: each previous tensor's size rounded up to the alignment */
	uint64_t ob = (12 + align - 1) / align * align;
	uint64_t oc = ob + (68 + align - 1) / align * align;
	cr_assert_eq(ta->offset, 0);
	cr_assert_eq(tb->offset, ob, "align %u", align);
	cr_assert_eq(tc->offset, oc, "align %u", align);
	cr_assert_eq(tb->size, 68);
	cr_assert_eq(tb->ne[0], 32);
	cr_assert_eq(tb->ne[1], 2);
	cr_assert_eq(tb->ne[2], 1);
	cr_assert_eq(tb->n_elements, 64);
	cr_assert_eq(size, moe_gguf_data_offset(g) + oc + (20 + align - 1) / align * align);
	cr_assert_arr_eq(ta->data, a, sizeof(a));
	cr_assert_arr_eq(tb->data, bq, sizeof(bq));
	cr_assert_arr_eq(tc->data, c, sizeof(c));
	cr_assert_null(moe_gguf_find_tensor(g, "d"));
	cr_assert_null(moe_gguf_find_tensor(g, ""));
	moe_gguf_close(g);
	unlink(path);
	free(path);
}

Test(gguf_alignment, values_other_than_32)
{
	const uint32_t aligns[] = {1, 2, 8, 64, 128, 4096};

	for (size_t i = 0; i < sizeof(aligns) / sizeof(aligns[0]); i++)
		check_alignment(aligns[i]);
}

/* ---- getters -------------------------------------------------------------------------- */

Test(gguf_getters, report_missing_keys_wrong_types_and_ranges)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf *g;
	moe_gguf_arr a;
	moe_gguf_str s;
	moe_gguf_value v;
	uint32_t u32 = 77;
	uint64_t u64;
	int64_t i64;
	float f;
	bool b;

	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_i32(w, "neg", -1));
	OK(moe_gguf_writer_add_u64(w, "big", 1ull << 40));
	OK(moe_gguf_writer_add_u64(w, "huge", UINT64_MAX));
	OK(moe_gguf_writer_add_str(w, "s", "x"));
	OK(moe_gguf_writer_add_bool(w, "flag", false));
	v = (moe_gguf_value){.type = MOE_GGUF_FLOAT64, .f = 0.125};
	OK(moe_gguf_writer_add_value(w, "f64", &v));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);
	OK(moe_gguf_open(&g, path));

	cr_assert_eq(moe_gguf_get_u32(&u32, g, "absent"), MOE_ERR_NOT_FOUND);
	cr_assert(strstr(moe_err_detail(), "absent") != NULL);
	cr_assert_eq(moe_gguf_get_u32(&u32, g, "neg"), MOE_ERR_BAD_VALUE);
	cr_assert_eq(moe_gguf_get_u32(&u32, g, "big"), MOE_ERR_BAD_VALUE);
	cr_assert_eq(u32, 77, "untouched on error");
	cr_assert_eq(moe_gguf_get_u32(&u32, g, "s"), MOE_ERR_BAD_TYPE);
	cr_assert(strstr(moe_err_detail(), "s: type STRING") != NULL, "%s", moe_err_detail());
	cr_assert_eq(moe_gguf_get_u32(&u32, g, "flag"), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_get_u32(&u32, g, "f64"), MOE_ERR_BAD_TYPE);
	OK(moe_gguf_get_u64(&u64, g, "big"));
	cr_assert_eq(u64, 1ull << 40);
	cr_assert_eq(moe_gguf_get_u64(&u64, g, "neg"), MOE_ERR_BAD_VALUE);
	OK(moe_gguf_get_i64(&i64, g, "neg"));
	cr_assert_eq(i64, -1);
	cr_assert_eq(moe_gguf_get_i64(&i64, g, "huge"), MOE_ERR_BAD_VALUE);
	OK(moe_gguf_get_f32(&f, g, "f64"));
	cr_assert_eq(f, 0.125f);
	cr_assert_eq(moe_gguf_get_f32(&f, g, "neg"), MOE_ERR_BAD_TYPE);
	OK(moe_gguf_get_bool(&b, g, "flag"));
	cr_assert_not(b);
	cr_assert_eq(moe_gguf_get_bool(&b, g, "neg"), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_get_str(&s, g, "neg"), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_get_arr(&a, g, "s"), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_get_arr(&a, g, "absent"), MOE_ERR_NOT_FOUND);
	cr_assert_eq(moe_gguf_kv_arr(&a, g, 99), MOE_ERR_INVAL);
	cr_assert_eq(moe_gguf_kv_value(&v, g, -1), MOE_ERR_INVAL);
	cr_assert_eq(moe_gguf_find_key(g, "ne"), -1);
	cr_assert_eq(moe_gguf_find_key(g, "neg"), 0);
	cr_assert_null(moe_gguf_kv_key(g, 6).ptr);
	cr_assert_null(moe_gguf_tensor_at(g, 0));
	moe_gguf_close(g);
	moe_gguf_close(NULL);
	unlink(path);
	free(path);
}

/* ---- writer errors ---------------------------------------------------------------------- */

Test(gguf_write, rejects_bad_input_and_removes_unfinished_files)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf_value v;
	const int64_t ne[5] = {32, 2, 1, 1, 1}, bad_ne0[1] = {33}, neg[1] = {-1};
	const int64_t huge[2] = {INT64_MAX / 2 + 1, 4};
	uint8_t buf[200] = {0};

	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_u32(w, "k", 1));
	cr_assert_eq(moe_gguf_writer_add_u32(w, "k", 2), MOE_ERR_DUPLICATE);
	cr_assert_eq(moe_gguf_writer_add_str(w, "k", "x"), MOE_ERR_DUPLICATE);
	cr_assert_eq(moe_gguf_writer_add_u32(w, "", 2), MOE_ERR_INVAL);
	cr_assert_eq(moe_gguf_writer_add_i32(w, "general.alignment", 64), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_writer_add_u32(w, "general.alignment", 48), MOE_ERR_BAD_ALIGNMENT);
	cr_assert_eq(moe_gguf_writer_add_u32(w, "general.alignment", 0), MOE_ERR_BAD_ALIGNMENT);
	v = (moe_gguf_value){.type = MOE_GGUF_UINT8, .u = 256};
	cr_assert_eq(moe_gguf_writer_add_value(w, "u8", &v), MOE_ERR_BAD_VALUE);
	v = (moe_gguf_value){.type = MOE_GGUF_INT16, .i = -32769};
	cr_assert_eq(moe_gguf_writer_add_value(w, "i16", &v), MOE_ERR_BAD_VALUE);
	v = (moe_gguf_value){.type = MOE_GGUF_VTYPE_COUNT};
	cr_assert_eq(moe_gguf_writer_add_value(w, "bad", &v), MOE_ERR_BAD_TYPE);
	const uint8_t bools[2] = {1, 2};
	cr_assert_eq(moe_gguf_writer_add_arr(w, "bools", MOE_GGUF_BOOL, bools, 2),
	             MOE_ERR_BAD_VALUE);
	cr_assert_eq(moe_gguf_writer_add_arr(w, "strs", MOE_GGUF_STRING, NULL, 0), MOE_ERR_INVAL);
	/* a failed add leaves nothing behind: the key is still free */
	v = (moe_gguf_value){.type = MOE_GGUF_UINT8, .u = 255};
	OK(moe_gguf_writer_add_value(w, "u8", &v));

	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 5, ne), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", (moe_type)4, 1, ne), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", (moe_type)40, 1, ne), MOE_ERR_BAD_TYPE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_Q8_0, 1, bad_ne0),
	             MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 1, neg), MOE_ERR_BAD_SHAPE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 2, huge), MOE_ERR_OVERFLOW);
	OK(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 2, ne)); /* 256 bytes */
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 2, ne), MOE_ERR_DUPLICATE);
	cr_assert_eq(moe_gguf_writer_write(w, buf, 4), MOE_ERR_STATE);
	OK(moe_gguf_writer_begin_data(w));
	cr_assert_eq(moe_gguf_writer_begin_data(w), MOE_ERR_STATE);
	cr_assert_eq(moe_gguf_writer_add_u32(w, "late", 1), MOE_ERR_STATE);
	cr_assert_eq(moe_gguf_writer_add_tensor(w, "late", MOE_TYPE_F32, 1, ne), MOE_ERR_STATE);
	OK(moe_gguf_writer_write(w, buf, 100));
	cr_assert_eq(moe_gguf_writer_write(w, buf, 200), MOE_ERR_INVAL, "past the tensor's end");
	cr_assert_eq(moe_gguf_writer_finish(w), MOE_ERR_INVAL, "tensor incomplete");
	cr_assert(strstr(moe_err_detail(), "100 of 256") != NULL, "%s", moe_err_detail());
	cr_assert_eq(access(path, F_OK), 0);
	moe_gguf_writer_destroy(w);
	cr_assert_neq(access(path, F_OK), 0, "an unfinished file is removed");
	moe_gguf_writer_destroy(NULL);

	cr_assert_eq(moe_gguf_writer_create(&w, "/nonexistent-dir/x.gguf"), MOE_ERR_IO);
	free(path);
}

/* ---- v2 files ----------------------------------------------------------------------------- */

Test(gguf_read, accepts_v2_and_refuses_v1)
{
	char *path = tmp_path();
	moe_gguf_writer *w;
	moe_gguf *g = NULL;
	uint8_t *buf;
	size_t size;
	uint32_t u;

	OK(moe_gguf_writer_create(&w, path));
	OK(moe_gguf_writer_add_u32(w, "x", 5));
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);
	buf = read_all(path, &size);
	buf[4] = 2; /* v2 has the same layout as v3 */
	OK(moe_gguf_open_mem(&g, buf, size));
	cr_assert_eq(moe_gguf_version(g), 2);
	OK(moe_gguf_get_u32(&u, g, "x"));
	cr_assert_eq(u, 5);
	cr_assert_eq(moe_gguf_base(g), buf);
	moe_gguf_close(g);
	buf[4] = 1;
	g = NULL;
	cr_assert_eq(moe_gguf_open_mem(&g, buf, size), MOE_ERR_BAD_VERSION);
	cr_assert_null(g, "*out untouched on error");
	free(buf);
	unlink(path);
	free(path);
	cr_assert_eq(moe_gguf_open(&g, "/nonexistent.gguf"), MOE_ERR_IO);
}

/* ---- the fixture models against the READMEs --------------------------------------------- */

/* Literals from tests/fixtures/README.md and models/README.md; 0 = not stated
 * there (not checked); rope_dims -1 = the key is absent. */
struct model_facts {
	const char *file;
	bool in_models_dir;
	const char *arch;
	uint32_t block_count, context_length, embedding_length, feed_forward_length;
	uint32_t head_count, head_count_kv, key_length;
	uint32_t expert_count, expert_used_count, expert_ff, shared_ff;
	int rope_dims;
	uint32_t ssm_conv, ssm_state, ssm_groups, ssm_dt_rank, ssm_inner, full_attn_interval;
	uint32_t vocab, merges, n_tensors, file_type;
	uint64_t file_bytes, tensor_bytes, params;
};

static const struct model_facts facts[] = {
    /* clang-format off */
	/* file, in models/, arch,
	 *   blocks, ctx, embd, ff, heads, kv heads, key_length, experts, used, expert ff, shared ff,
	 *   rope dims, ssm conv/state/groups/dt_rank/inner, full_attention_interval,
	 *   vocab, merges, tensors, file_type, file bytes, tensor bytes, parameters */
	{"qwen3moe-tiny-F32.gguf", false, "qwen3moe",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 0, -1, 0, 0, 0, 0, 0, 0,
	 512, 253, 51, 0, 8180480, 0, 0},
	{"qwen3moe-tiny-Q8_0.gguf", false, "qwen3moe",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 0, -1, 0, 0, 0, 0, 0, 0,
	 512, 253, 51, 7, 2212608, 2196992, 0},
	{"qwen3moe-tiny-Q4_0.gguf", false, "qwen3moe",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 0, -1, 0, 0, 0, 0, 0, 0,
	 512, 253, 51, 2, 1229568, 1213952, 0},
	{"qwen3moe-tiny-Q4_K_M.gguf", false, "qwen3moe",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 0, -1, 0, 0, 0, 0, 0, 0,
	 512, 253, 51, 15, 1563392, 1547776, 0},
	{"qwen3next-tiny-F32.gguf", false, "qwen3next",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 64, 8, 4, 32, 4, 8, 256, 4,
	 512, 253, 73, 0, 9347360, 0, 0},
	{"qwen3next-tiny-Q8_0.gguf", false, "qwen3next",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 64, 8, 4, 32, 4, 8, 256, 4,
	 512, 253, 73, 7, 2543264, 2525888, 0},
	{"qwen3next-tiny-Q4_0.gguf", false, "qwen3next",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 64, 8, 4, 32, 4, 8, 256, 4,
	 512, 253, 73, 2, 1417888, 1400512, 0},
	{"qwen3next-tiny-Q4_K_M.gguf", false, "qwen3next",
	 4, 4096, 128, 384, 8, 2, 32, 16, 4, 64, 64, 8, 4, 32, 4, 8, 256, 4,
	 512, 253, 73, 15, 1814944, 1797568, 0},
	{"qwen3moe-kq-Q4_K_M.gguf", false, "qwen3moe",
	 2, 0, 256, 0, 4, 2, 64, 8, 2, 256, 0, -1, 0, 0, 0, 0, 0, 0,
	 512, 0, 0, 15, 2425664, 2411520, 0},
	{"qwen3next-kq-Q4_K_M.gguf", false, "qwen3next",
	 2, 0, 256, 0, 4, 2, 64, 8, 2, 256, 256, 16, 4, 64, 2, 4, 256, 2,
	 512, 0, 0, 15, 2774272, 2759072, 0},
	{"kjv-qwen3moe-Q4_K_M.gguf", true, "qwen3moe",
	 6, 512, 256, 768, 8, 2, 32, 16, 4, 128, 0, -1, 0, 0, 0, 0, 0, 0,
	 4096, 3837, 75, 15, 8356512, 0, 12545664},
	{"kjv-qwen3next-Q4_K_M.gguf", true, "qwen3next",
	 4, 512, 256, 768, 8, 2, 32, 16, 4, 128, 256, 8, 4, 64, 2, 4, 256, 4,
	 4096, 3837, 73, 15, 6975360, 0, 10223128},
    /* clang-format on */
};

static void expect_u32(const moe_gguf *g, const char *file, const char *arch, const char *key,
                       uint32_t want)
{
	char full[128];
	uint32_t got = 0;

	if (want == 0)
		return;
	snprintf(full, sizeof(full), "%s.%s", arch, key);
	cr_assert_eq(moe_gguf_get_u32(&got, g, full), MOE_OK, "%s: %s: %s", file, full,
	             moe_err_detail());
	cr_assert_eq(got, want, "%s: %s = %u, README says %u", file, full, got, want);
}

static moe_gguf *open_model(const struct model_facts *m)
{
	char *path = m->in_models_dir ? model_file(m->file) : fixture(m->file);
	moe_gguf *g;

	cr_assert_eq(moe_gguf_open(&g, path), MOE_OK, "%s: %s: %s", path,
	             moe_err_name(moe_gguf_open(&g, path)), moe_err_detail());
	free(path);
	return g;
}

Test(gguf_fixtures, every_model_loads_with_the_readme_hyperparameters)
{
	for (size_t k = 0; k < sizeof(facts) / sizeof(facts[0]); k++) {
		const struct model_facts *m = &facts[k];
		moe_gguf *g = open_model(m);
		moe_gguf_str s;
		moe_gguf_arr a;
		uint32_t u;
		uint64_t bytes = 0;
		int64_t params = 0;
		char key[128];

		cr_assert_eq(moe_gguf_version(g), 3, "%s", m->file);
		cr_assert_eq(moe_gguf_alignment(g), 32, "%s", m->file);
		cr_assert_eq(moe_gguf_file_size(g), m->file_bytes, "%s", m->file);
		OK(moe_gguf_get_str(&s, g, "general.architecture"));
		cr_assert(str_is(s, m->arch), "%s", m->file);
		OK(moe_gguf_get_str(&s, g, "tokenizer.ggml.model"));
		cr_assert(str_is(s, "gpt2"));
		OK(moe_gguf_get_str(&s, g, "tokenizer.ggml.pre"));
		cr_assert(str_is(s, "qwen2"));
		expect_u32(g, m->file, m->arch, "block_count", m->block_count);
		expect_u32(g, m->file, m->arch, "context_length", m->context_length);
		expect_u32(g, m->file, m->arch, "embedding_length", m->embedding_length);
		expect_u32(g, m->file, m->arch, "feed_forward_length", m->feed_forward_length);
		expect_u32(g, m->file, m->arch, "attention.head_count", m->head_count);
		expect_u32(g, m->file, m->arch, "attention.head_count_kv", m->head_count_kv);
		expect_u32(g, m->file, m->arch, "attention.key_length", m->key_length);
		expect_u32(g, m->file, m->arch, "expert_count", m->expert_count);
		expect_u32(g, m->file, m->arch, "expert_used_count", m->expert_used_count);
		expect_u32(g, m->file, m->arch, "expert_feed_forward_length", m->expert_ff);
		expect_u32(g, m->file, m->arch, "expert_shared_feed_forward_length", m->shared_ff);
		snprintf(key, sizeof(key), "%s.rope.dimension_count", m->arch);
		if (m->rope_dims < 0)
			cr_assert_eq(moe_gguf_find_key(g, key), -1, "%s: %s", m->file, key);
		else
			expect_u32(g, m->file, m->arch, "rope.dimension_count",
			           (uint32_t)m->rope_dims);
		expect_u32(g, m->file, m->arch, "ssm.conv_kernel", m->ssm_conv);
		expect_u32(g, m->file, m->arch, "ssm.state_size", m->ssm_state);
		expect_u32(g, m->file, m->arch, "ssm.group_count", m->ssm_groups);
		expect_u32(g, m->file, m->arch, "ssm.time_step_rank", m->ssm_dt_rank);
		expect_u32(g, m->file, m->arch, "ssm.inner_size", m->ssm_inner);
		expect_u32(g, m->file, m->arch, "full_attention_interval", m->full_attn_interval);
		if (m->file_type != 0) {
			OK(moe_gguf_get_u32(&u, g, "general.file_type"));
			cr_assert_eq(u, m->file_type, "%s", m->file);
		}

		OK(moe_gguf_get_arr(&a, g, "tokenizer.ggml.tokens"));
		cr_assert_eq(a.type, MOE_GGUF_STRING);
		cr_assert_eq(a.n, m->vocab, "%s: vocab", m->file);
		cr_assert(str_is(moe_gguf_arr_str(&a, 0), "!"), "%s: id 0", m->file);
		cr_assert(str_is(moe_gguf_arr_str(&a, m->vocab - 3), "<|endoftext|>"));
		cr_assert(str_is(moe_gguf_arr_str(&a, m->vocab - 2), "<|im_start|>"));
		cr_assert(str_is(moe_gguf_arr_str(&a, m->vocab - 1), "<|im_end|>"));
		OK(moe_gguf_get_arr(&a, g, "tokenizer.ggml.token_type"));
		cr_assert_eq(a.type, MOE_GGUF_INT32);
		cr_assert_eq(a.n, m->vocab);
		cr_assert_eq(moe_gguf_arr_int(&a, 0), 1);
		cr_assert_eq(moe_gguf_arr_int(&a, m->vocab - 1), 3);
		if (m->merges != 0) {
			OK(moe_gguf_get_arr(&a, g, "tokenizer.ggml.merges"));
			cr_assert_eq(a.n, m->merges, "%s: merges", m->file);
		}
		OK(moe_gguf_get_u32(&u, g, "tokenizer.ggml.eos_token_id"));
		cr_assert_eq(u, m->vocab - 1);
		OK(moe_gguf_get_u32(&u, g, "tokenizer.ggml.bos_token_id"));
		cr_assert_eq(u, m->vocab - 3);

		if (m->n_tensors != 0)
			cr_assert_eq(moe_gguf_n_tensors(g), m->n_tensors, "%s", m->file);
		for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
			const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
			char name[128];
			snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.ptr);
			cr_assert_eq(moe_gguf_find_tensor(g, name), t, "%s: %s", m->file, name);
			bytes += t->size;
			params += t->n_elements;
		}
		if (m->tensor_bytes != 0)
			cr_assert_eq(bytes, m->tensor_bytes, "%s: tensor bytes", m->file);
		if (m->params != 0)
			cr_assert_eq(params, (int64_t)m->params, "%s: parameters", m->file);
		moe_gguf_close(g);
	}
}

static void expect_tensor(const moe_gguf *g, const char *name, moe_type type, uint32_t n_dims,
                          int64_t ne0, int64_t ne1, int64_t ne2)
{
	const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);

	cr_assert_not_null(t, "%s missing", name);
	cr_assert_eq(t->type, type, "%s: type %d", name, t->type);
	cr_assert_eq(t->n_dims, n_dims, "%s", name);
	cr_assert_eq(t->ne[0], ne0, "%s", name);
	cr_assert_eq(t->ne[1], ne1, "%s", name);
	cr_assert_eq(t->ne[2], ne2, "%s", name);
}

Test(gguf_fixtures, tensor_shapes_and_types_match_the_readmes)
{
	moe_gguf *g = open_model(&facts[0]); /* qwen3moe-tiny-F32 */

	expect_tensor(g, "token_embd.weight", MOE_TYPE_F32, 2, 128, 512, 1);
	expect_tensor(g, "blk.0.attn_q.weight", MOE_TYPE_F32, 2, 128, 256, 1);
	expect_tensor(g, "blk.0.attn_k_norm.weight", MOE_TYPE_F32, 1, 32, 1, 1);
	expect_tensor(g, "blk.0.ffn_gate_exps.weight", MOE_TYPE_F32, 3, 128, 64, 16);
	expect_tensor(g, "blk.0.ffn_down_exps.weight", MOE_TYPE_F32, 3, 64, 128, 16);
	expect_tensor(g, "output.weight", MOE_TYPE_F32, 2, 128, 512, 1);
	moe_gguf_close(g);

	g = open_model(&facts[4]); /* qwen3next-tiny-F32 */
	expect_tensor(g, "blk.0.attn_qkv.weight", MOE_TYPE_F32, 2, 128, 512, 1);
	expect_tensor(g, "blk.0.ssm_conv1d.weight", MOE_TYPE_F32, 2, 4, 512, 1);
	expect_tensor(g, "blk.0.ssm_a", MOE_TYPE_F32, 1, 8, 1, 1);
	expect_tensor(g, "blk.3.attn_q.weight", MOE_TYPE_F32, 2, 128, 512, 1);
	expect_tensor(g, "blk.0.ffn_gate_inp_shexp.weight", MOE_TYPE_F32, 1, 128, 1, 1);
	moe_gguf_close(g);

	g = open_model(&facts[9]); /* qwen3next-kq-Q4_K_M */
	expect_tensor(g, "output.weight", MOE_TYPE_Q6_K, 2, 256, 512, 1);
	expect_tensor(g, "token_embd.weight", MOE_TYPE_Q4_K, 2, 256, 512, 1);
	expect_tensor(g, "blk.1.attn_output.weight", MOE_TYPE_Q5_K, 2, 256, 256, 1);
	expect_tensor(g, "blk.0.ffn_down_exps.weight", MOE_TYPE_Q4_K, 3, 256, 256, 8);
	expect_tensor(g, "blk.1.ffn_down_exps.weight", MOE_TYPE_Q6_K, 3, 256, 256, 8);
	expect_tensor(g, "blk.0.attn_qkv.weight", MOE_TYPE_Q8_0, 2, 256, 512, 1);
	moe_gguf_close(g);

	g = open_model(&facts[10]); /* kjv-qwen3moe-Q4_K_M */
	expect_tensor(g, "token_embd.weight", MOE_TYPE_Q4_K, 2, 256, 4096, 1);
	expect_tensor(g, "output.weight", MOE_TYPE_Q6_K, 2, 256, 4096, 1);
	expect_tensor(g, "blk.2.attn_v.weight", MOE_TYPE_Q6_K, 2, 256, 64, 1);
	expect_tensor(g, "blk.0.ffn_down_exps.weight", MOE_TYPE_Q5_0, 3, 128, 256, 16);
	expect_tensor(g, "blk.5.ffn_down_exps.weight", MOE_TYPE_Q8_0, 3, 128, 256, 16);
	moe_gguf_close(g);
}

/* ---- byte-identical rewrite of every fixture --------------------------------------------- */

/* Re-adds kv i through the typed writer API (not a raw copy). */
static void readd_kv_typed(moe_gguf_writer *w, const moe_gguf *g, int64_t i)
{
	moe_gguf_str k = moe_gguf_kv_key(g, i);
	char *key = strndup(k.ptr, k.len);
	moe_gguf_value v;
	moe_gguf_arr a;

	cr_assert_not_null(key);
	switch (moe_gguf_kv_type(g, i)) {
	case MOE_GGUF_UINT32: {
		uint32_t u;
		OK(moe_gguf_get_u32(&u, g, key));
		OK(moe_gguf_writer_add_u32(w, key, u));
		break;
	}
	case MOE_GGUF_INT32: {
		int64_t x;
		OK(moe_gguf_get_i64(&x, g, key));
		OK(moe_gguf_writer_add_i32(w, key, (int32_t)x));
		break;
	}
	case MOE_GGUF_UINT64: {
		uint64_t u;
		OK(moe_gguf_get_u64(&u, g, key));
		OK(moe_gguf_writer_add_u64(w, key, u));
		break;
	}
	case MOE_GGUF_FLOAT32: {
		float f;
		OK(moe_gguf_get_f32(&f, g, key));
		OK(moe_gguf_writer_add_f32(w, key, f));
		break;
	}
	case MOE_GGUF_BOOL: {
		bool b;
		OK(moe_gguf_get_bool(&b, g, key));
		OK(moe_gguf_writer_add_bool(w, key, b));
		break;
	}
	case MOE_GGUF_STRING: {
		moe_gguf_str s;
		OK(moe_gguf_get_str(&s, g, key));
		char *c = strndup(s.ptr, s.len);
		cr_assert_eq(strlen(c), s.len, "%s: NUL inside", key);
		OK(moe_gguf_writer_add_str(w, key, c));
		free(c);
		break;
	}
	case MOE_GGUF_ARRAY:
		OK(moe_gguf_kv_arr(&a, g, i));
		if (a.type == MOE_GGUF_STRING) {
			char **strs = calloc(a.n + 1, sizeof(char *));
			cr_assert_not_null(strs);
			for (uint64_t j = 0; j < a.n; j++) {
				moe_gguf_str s = moe_gguf_arr_str(&a, j);
				strs[j] = strndup(s.ptr, s.len);
			}
			OK(moe_gguf_writer_add_arr_str(w, key, (const char *const *)strs, a.n));
			for (uint64_t j = 0; j < a.n; j++)
				free(strs[j]);
			free(strs);
		} else if (a.type == MOE_GGUF_INT32) {
			int32_t *x = malloc((a.n + 1) * sizeof(int32_t));
			for (uint64_t j = 0; j < a.n; j++)
				x[j] = (int32_t)moe_gguf_arr_int(&a, j);
			OK(moe_gguf_writer_add_arr(w, key, MOE_GGUF_INT32, x, a.n));
			free(x);
		} else if (a.type == MOE_GGUF_FLOAT32) {
			float *x = malloc((a.n + 1) * sizeof(float));
			for (uint64_t j = 0; j < a.n; j++)
				x[j] = (float)moe_gguf_arr_float(&a, j);
			OK(moe_gguf_writer_add_arr(w, key, MOE_GGUF_FLOAT32, x, a.n));
			free(x);
		} else {
			OK(moe_gguf_writer_copy_kv(w, g, i));
		}
		break;
	default:
		OK(moe_gguf_kv_value(&v, g, i));
		OK(moe_gguf_writer_add_value(w, key, &v));
		break;
	}
	free(key);
}

/* Writes g's content to path through the writer: typed adds or copy_kv. */
static void rewrite(const moe_gguf *g, const char *path, bool typed)
{
	moe_gguf_writer *w;

	OK(moe_gguf_writer_create(&w, path));
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		if (typed)
			readd_kv_typed(w, g, i);
		else
			OK(moe_gguf_writer_copy_kv(w, g, i));
	}
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		char *name = strndup(t->name.ptr, t->name.len);
		OK(moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne));
		free(name);
	}
	OK(moe_gguf_writer_begin_data(w));
	for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		size_t half = (size_t)t->size / 2;
		OK(moe_gguf_writer_write(w, t->data, half));
		OK(moe_gguf_writer_write(w, (const uint8_t *)t->data + half, t->size - half));
	}
	OK(moe_gguf_writer_finish(w));
	moe_gguf_writer_destroy(w);
}

static void expect_same_file(const char *name, const char *orig, const char *copy)
{
	size_t na, nb, first = 0;
	uint8_t *a = read_all(orig, &na), *b = read_all(copy, &nb);
	size_t n = na < nb ? na : nb;

	while (first < n && a[first] == b[first])
		first++;
	cr_assert(na == nb && first == na,
	          "%s: rewrite differs: sizes %zu / %zu, first diff at %zu", name, na, nb, first);
	free(a);
	free(b);
}

Test(gguf_fixtures, rewriting_every_fixture_is_byte_identical, .timeout = 120)
{
	char *out = tmp_path();

	for (size_t k = 0; k < sizeof(facts) / sizeof(facts[0]); k++) {
		const struct model_facts *m = &facts[k];
		char *path = m->in_models_dir ? model_file(m->file) : fixture(m->file);
		moe_gguf *g;
		OK(moe_gguf_open(&g, path));
		rewrite(g, out, true);
		expect_same_file(m->file, path, out);
		rewrite(g, out, false);
		expect_same_file(m->file, path, out);
		moe_gguf_close(g);
		free(path);
	}
	unlink(out);
	free(out);
}
