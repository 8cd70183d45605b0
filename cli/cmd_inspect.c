/* cmd_inspect.c - `moemesh inspect FILE.gguf`: header, metadata, tensor table
 * and totals of a GGUF file, after full validation. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"

#define SHOW_ITEMS     3  /* array elements shown before "..." */
#define SHOW_STR_BYTES 80 /* string bytes shown before "..." */

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh inspect FILE.gguf\n\n"
	           "Validates a GGUF file and prints its version, metadata (one line per key:\n"
	           "key, type, value; long arrays summarised), the tensor table (name, type,\n"
	           "shape in ggml ne order, bytes) and totals. Exit 1 if the file is invalid.\n");
}

/* Prints s quoted, escaping quotes, backslashes and control bytes; long
 * strings are cut. */
static void print_str(moe_gguf_str s)
{
	uint64_t n = s.len > SHOW_STR_BYTES ? SHOW_STR_BYTES : s.len;

	putchar('"');
	for (uint64_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s.ptr[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c < 0x20 || c == 0x7f)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('"');
	if (s.len > n)
		printf("...(%" PRIu64 " bytes)", s.len);
}

static void print_scalar_elem(const moe_gguf_arr *a, uint64_t j)
{
	switch (a->type) {
	case MOE_GGUF_FLOAT32:
		printf("%.9g", moe_gguf_arr_float(a, j));
		break;
	case MOE_GGUF_FLOAT64:
		printf("%.17g", moe_gguf_arr_float(a, j));
		break;
	case MOE_GGUF_BOOL:
		fputs(moe_gguf_arr_int(a, j) ? "true" : "false", stdout);
		break;
	case MOE_GGUF_UINT64:
		printf("%" PRIu64, (uint64_t)moe_gguf_arr_int(a, j));
		break;
	default:
		printf("%" PRId64, moe_gguf_arr_int(a, j));
		break;
	}
}

/* [e0, e1, e2, ...] with nested arrays summarised the same way. */
static void print_arr(const moe_gguf_arr *a)
{
	uint64_t n = a->n > SHOW_ITEMS ? SHOW_ITEMS : a->n;

	putchar('[');
	for (uint64_t j = 0; j < n; j++) {
		if (j > 0)
			fputs(", ", stdout);
		if (a->type == MOE_GGUF_STRING) {
			print_str(moe_gguf_arr_str(a, j));
		} else if (a->type == MOE_GGUF_ARRAY) {
			moe_gguf_arr sub = moe_gguf_arr_sub(a, j);
			print_arr(&sub);
		} else {
			print_scalar_elem(a, j);
		}
	}
	if (a->n > n)
		fputs(", ...", stdout);
	putchar(']');
}

/* The type column of an array: array[STRING, 512], array[array[INT32, 2], 3]. */
static void print_arr_type(const moe_gguf_arr *a)
{
	fputs("array[", stdout);
	if (a->type == MOE_GGUF_ARRAY && a->n > 0) {
		moe_gguf_arr sub = moe_gguf_arr_sub(a, 0);
		print_arr_type(&sub);
	} else {
		fputs(moe_gguf_vtype_name(a->type), stdout);
	}
	printf(", %" PRIu64 "]", a->n);
}

static void print_kv(const moe_gguf *g, int64_t i, int key_width)
{
	moe_gguf_str key = moe_gguf_kv_key(g, i);
	moe_gguf_vtype t = moe_gguf_kv_type(g, i);
	moe_gguf_value v;
	moe_gguf_arr a;

	printf("  %-*.*s  ", key_width, (int)key.len, key.ptr);
	if (t == MOE_GGUF_ARRAY) {
		if (moe_gguf_kv_arr(&a, g, i) == MOE_OK) {
			print_arr_type(&a);
			fputs(" = ", stdout);
			print_arr(&a);
		}
		putchar('\n');
		return;
	}
	printf("%-8s ", moe_gguf_vtype_name(t));
	if (moe_gguf_kv_value(&v, g, i) != MOE_OK) {
		putchar('\n');
		return;
	}
	switch (t) {
	case MOE_GGUF_STRING:
		print_str(v.s);
		break;
	case MOE_GGUF_BOOL:
		fputs(v.b ? "true" : "false", stdout);
		break;
	case MOE_GGUF_FLOAT32:
		printf("%.9g", v.f);
		break;
	case MOE_GGUF_FLOAT64:
		printf("%.17g", v.f);
		break;
	case MOE_GGUF_INT8:
	case MOE_GGUF_INT16:
	case MOE_GGUF_INT32:
	case MOE_GGUF_INT64:
		printf("%" PRId64, v.i);
		break;
	default:
		printf("%" PRIu64, v.u);
		break;
	}
	putchar('\n');
}

static void print_shape(const moe_gguf_tensor *t, char *buf, size_t size)
{
	size_t used = (size_t)snprintf(buf, size, "[");

	for (uint32_t d = 0; d < t->n_dims && used < size; d++)
		used += (size_t)snprintf(buf + used, size - used, "%s%" PRId64, d ? ", " : "",
		                         t->ne[d]);
	if (used < size)
		snprintf(buf + used, size - used, "]");
}

static void print_tensors(const moe_gguf *g)
{
	int64_t n = moe_gguf_n_tensors(g);
	int name_width = 4;
	int64_t count[MOE_TYPE_COUNT] = {0}, params[MOE_TYPE_COUNT] = {0};
	uint64_t bytes[MOE_TYPE_COUNT] = {0};
	int64_t total_params = 0;
	uint64_t total_bytes = 0;
	char shape[128];

	for (int64_t i = 0; i < n; i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		if ((int)t->name.len > name_width)
			name_width = t->name.len > 64 ? 64 : (int)t->name.len;
	}
	printf("\ntensors: %" PRId64 "\n", n);
	printf("  %-*s  %-7s  %-20s  %12s\n", name_width, "name", "type", "shape", "bytes");
	for (int64_t i = 0; i < n; i++) {
		const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
		print_shape(t, shape, sizeof(shape));
		printf("  %-*.*s  %-7s  %-20s  %12" PRIu64 "\n", name_width, (int)t->name.len,
		       t->name.ptr, moe_type_get(t->type)->name, shape, t->size);
		count[t->type]++;
		params[t->type] += t->n_elements;
		bytes[t->type] += t->size;
		total_params += t->n_elements;
		total_bytes += t->size;
	}
	printf("\ntotals: %" PRId64 " tensors, %" PRId64 " parameters, %" PRIu64
	       " bytes (%.2f MiB), %.3f bits per parameter\n",
	       n, total_params, total_bytes, (double)total_bytes / (1024.0 * 1024.0),
	       total_params > 0 ? 8.0 * (double)total_bytes / (double)total_params : 0.0);
	printf("by type:\n");
	for (int ty = 0; ty < MOE_TYPE_COUNT; ty++)
		if (count[ty] > 0)
			printf("  %-7s  %6" PRId64 " tensors  %14" PRId64 " parameters  %14" PRIu64
			       " bytes\n",
			       moe_type_get((moe_type)ty)->name, count[ty], params[ty], bytes[ty]);
}

int moe_cmd_inspect(int argc, char **argv)
{
	const char *path = NULL;
	moe_gguf *g;
	moe_err err;
	int key_width = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (argv[i][0] == '-' || path != NULL) {
			usage(stderr);
			return 2;
		}
		path = argv[i];
	}
	if (path == NULL) {
		usage(stderr);
		return 2;
	}
	err = moe_gguf_open(&g, path);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh inspect: %s: %s: %s\n", path, moe_err_name(err),
		        moe_err_detail());
		return 1;
	}
	printf("%s: GGUF v%u, %zu bytes, alignment %u, data section at offset %" PRIu64 "\n", path,
	       moe_gguf_version(g), moe_gguf_file_size(g), moe_gguf_alignment(g),
	       moe_gguf_data_offset(g));
	for (int i = 1; i < moe_gguf_n_splits(g); i++) {
		const moe_gguf *p = moe_gguf_split(g, i);
		printf("split %d of %d: %s: GGUF v%u, %zu bytes, alignment %u, data section at "
		       "offset %" PRIu64 ", %" PRId64 " tensors\n",
		       i + 1, moe_gguf_n_splits(g), moe_gguf_path(p), moe_gguf_version(p),
		       moe_gguf_file_size(p), moe_gguf_alignment(p), moe_gguf_data_offset(p),
		       moe_gguf_n_tensors(p));
	}
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
		moe_gguf_str k = moe_gguf_kv_key(g, i);
		if ((int)k.len > key_width)
			key_width = k.len > 48 ? 48 : (int)k.len;
	}
	printf("\nmetadata: %" PRId64 " keys\n", moe_gguf_n_kv(g));
	for (int64_t i = 0; i < moe_gguf_n_kv(g); i++)
		print_kv(g, i, key_width);
	print_tensors(g);
	moe_gguf_close(g);
	if (fflush(stdout) != 0)
		return 1;
	return 0;
}
