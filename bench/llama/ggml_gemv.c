/*
 * ggml_gemv.c - llama.cpp's CPU one-token GEMV measured the way `moemesh
 * bench kernels --gemv-only` measures moemesh's, for a side-by-side table
 * (bench/llama/ggml_gemv.sh builds it against a llama.cpp build and runs
 * both). Not part of the CMake build: it links ggml's static libraries.
 *
 *   ggml_gemv [--types q4_K,iq2_xxs,...] [--threads N] [--reps N]
 *             [--rows N] [--distinct N] [--no-triad] [--no-repack] [--csv FILE]
 *
 * Per type (names as ggml_type_name spells them, any case): a weight matrix
 * of 4096 columns and, by default, as many rows as make >= 4x the LLC (the
 * rule of bench kernels: ceil(4 * LLC / row bytes) rounded up to 16), 64
 * (--distinct) rows of uniform random F32 quantised by ggml_quantize_chunk (with
 * an all-ones importance matrix where ggml_quantize_requires_imatrix says one
 * is needed) and repeated, set into the weight buffer llama.cpp would load
 * them into: its CPU_REPACK buffer type (which interleaves 8 rows, for the
 * types where the CPU device says it runs the product from it; the output's
 * "repack") unless --no-repack, the plain CPU buffer otherwise ("vec_dot": one
 * row a vec_dot call). One graph of one ggml_mul_mat with a one-token F32
 * activation, computed by ggml_graph_compute at 1 and N threads (default 2).
 * Each thread count: --reps (default 7) passes, each a STREAM triad pass
 * (a = b + 3c on arrays of 4x the LLC each, 3 x 8 bytes counted per element,
 * OpenMP at the same thread count) then one timed compute; pass 0 warms up.
 * Prints weight GB/s (best and median of the timed passes; the activation's
 * conversion to the vec_dot type is inside the timed compute, as in
 * llama.cpp), the best triad, and best GB/s as % of it. --rows N with
 * --no-triad --no-repack is the small in-cache run for callgrind
 * (instructions of the type's vec_dot over rows x 16 blocks x 2 x reps).
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

enum { COLS = 4096, MAX_REPS = 1000 };

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t last_level_cache(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
	unsigned long v = 0;
	char unit = 0;
	if (f != NULL) {
		int n = fscanf(f, "%lu%c", &v, &unit);
		fclose(f);
		if (n >= 1 && v > 0)
			return unit == 'M' ? (size_t)v << 20 : unit == 'K' ? (size_t)v << 10 : v;
	}
	long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
	return l3 > 0 ? (size_t)l3 : (size_t)32 << 20;
}

/* ---- triad ----------------------------------------------------------------------- */

typedef struct triad {
	double *a, *b, *c;
	size_t n;
} triad;

static void triad_free(triad *t)
{
	free(t->c);
	free(t->b);
	free(t->a);
}

static bool triad_init(triad *t, size_t n, int nth)
{
	t->n = n;
	t->a = aligned_alloc(64, n * sizeof(double));
	t->b = aligned_alloc(64, n * sizeof(double));
	t->c = aligned_alloc(64, n * sizeof(double));
	if (t->a == NULL || t->b == NULL || t->c == NULL)
		return false;
	double *a = t->a, *b = t->b, *c = t->c;
	/* first touch by the threads that stream it */
#pragma omp parallel for schedule(static) num_threads(nth)
	for (size_t i = 0; i < n; i++) {
		a[i] = 0.0;
		b[i] = 1.0;
		c[i] = 2.0;
	}
	return true;
}

/* One pass at nth threads: GB/s as STREAM counts it. */
static double triad_run(const triad *t, int nth)
{
	double *a = t->a;
	const double *b = t->b, *c = t->c;
	const size_t n = t->n;
	const double t0 = now_s();
#pragma omp parallel for schedule(static) num_threads(nth)
	for (size_t i = 0; i < n; i++)
		a[i] = b[i] + 3.0 * c[i];
	const double dt = now_s() - t0;
	return 3.0 * (double)(n * sizeof(double)) / dt / 1e9;
}

/* ---- GEMV ------------------------------------------------------------------------ */

typedef struct result {
	int64_t rows;
	size_t row_bytes;
	double best[2], median[2], triad[2]; /* 1 thread, N threads */
	bool repacked;                       /* weights in CPU_REPACK */
} result;

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The ggml type named name (case-insensitive), or GGML_TYPE_COUNT. */
static enum ggml_type type_by_name(const char *name, size_t len)
{
	for (int t = 0; t < GGML_TYPE_COUNT; t++) {
		const char *n = ggml_type_name((enum ggml_type)t);
		if (n == NULL || strlen(n) != len ||
		    ggml_get_type_traits((enum ggml_type)t)->blck_size == 0)
			continue;
		size_t i = 0;
		while (i < len && tolower((unsigned char)n[i]) == tolower((unsigned char)name[i]))
			i++;
		if (i == len)
			return (enum ggml_type)t;
	}
	return GGML_TYPE_COUNT;
}

/* Quantises min(distinct, rows) rows of random values into w (rows x rs
 * bytes) and repeats them; distinct 0: random bytes, no quantiser (whose
 * tables take IQ1_S 15 s of CPU to build), for counting instructions only. */
static bool fill_weights(uint8_t *w, enum ggml_type type, int64_t rows, size_t rs, int64_t distinct)
{
	if (distinct == 0) {
		for (size_t i = 0; i < (size_t)rows * rs; i++)
			w[i] = (uint8_t)(frand() * 128 + 128);
		return true;
	}
	const int64_t n = rows < distinct ? rows : distinct;
	float *src = malloc(sizeof(float) * (size_t)n * COLS);
	float *imat = malloc(sizeof(float) * COLS);
	if (src == NULL || imat == NULL) {
		free(imat);
		free(src);
		return false;
	}
	for (int64_t i = 0; i < n * COLS; i++)
		src[i] = frand();
	for (int i = 0; i < COLS; i++)
		imat[i] = 1.0f;
	const size_t got = ggml_quantize_chunk(type, src, w, 0, n, COLS,
	                                       ggml_quantize_requires_imatrix(type) ? imat : NULL);
	free(imat);
	free(src);
	if (got != (size_t)n * rs)
		return false;
	for (int64_t r = n; r < rows; r++)
		memcpy(w + (size_t)r * rs, w + (size_t)(r % n) * rs, rs);
	return true;
}

/* The CPU backend's repacking buffer type ("CPU_REPACK", which llama.cpp puts
 * the weights of the types it interleaves in unless told --no-repack), or
 * NULL. */
static ggml_backend_buffer_type_t repack_buft(void)
{
	ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
	if (dev == NULL)
		return NULL;
	ggml_backend_dev_get_extra_bufts_t get =
	    (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(
	        ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts");
	if (get == NULL)
		return NULL;
	for (ggml_backend_buffer_type_t *b = get(dev); b != NULL && *b != NULL; b++)
		if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0)
			return *b;
	return NULL;
}

/* Whether the CPU device runs op with its weight (src[0]) in buft, asked as
 * llama.cpp asks it: the weight on an empty buffer of that type. */
static bool runs_from(struct ggml_tensor *op, ggml_backend_buffer_type_t buft)
{
	ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
	ggml_backend_buffer_t empty = ggml_backend_buft_alloc_buffer(buft, 0);
	if (dev == NULL || empty == NULL)
		return false;
	op->src[0]->buffer = empty;
	const bool ok = ggml_backend_dev_supports_op(dev, op);
	op->src[0]->buffer = NULL;
	ggml_backend_buffer_free(empty);
	return ok;
}

/* res: the figures of type on rows x COLS at 1 and nth threads, the weights
 * in the repacking buffer type where repack is set and the CPU runs the
 * product from it (res->repacked), in the plain CPU buffer otherwise. */
static bool measure(result *res, enum ggml_type type, int64_t rows, int nth, int reps,
                    const triad *tri, bool repack, int64_t distinct)
{
	const size_t rs = ggml_row_size(type, COLS);
	const size_t wbytes = rs * (size_t)rows;
	struct ggml_init_params wp = {
	    .mem_size = 2 * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
	struct ggml_init_params ip = {
	    .mem_size = sizeof(float) * (COLS + (size_t)rows) + 8 * ggml_tensor_overhead() +
	                ggml_graph_overhead() + (1u << 20),
	    .mem_buffer = NULL,
	    .no_alloc = false,
	};
	struct ggml_context *ctx_w = ggml_init(wp), *ctx = ggml_init(ip);
	ggml_backend_buffer_t wbuf = NULL;
	uint8_t *work = NULL, *host = NULL;
	struct ggml_threadpool *pool = NULL;
	bool ok = false;
	if (ctx_w == NULL || ctx == NULL)
		goto out_ctx;
	struct ggml_tensor *a = ggml_new_tensor_2d(ctx_w, type, COLS, rows);
	struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, COLS, 1);
	if (a == NULL || x == NULL || ggml_nbytes(a) != wbytes)
		goto out_ctx;
	for (int i = 0; i < COLS; i++)
		((float *)x->data)[i] = frand();
	struct ggml_tensor *y = ggml_mul_mat(ctx, a, x);
	ggml_backend_buffer_type_t rp = repack ? repack_buft() : NULL;
	res->repacked = rp != NULL && runs_from(y, rp);
	wbuf = ggml_backend_alloc_ctx_tensors_from_buft(
	    ctx_w, res->repacked ? rp : ggml_backend_cpu_buffer_type());
	host = malloc(wbytes);
	if (wbuf == NULL || host == NULL || !fill_weights(host, type, rows, rs, distinct))
		goto out_ctx;
	ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
	ggml_backend_tensor_set(a, host, 0, wbytes); /* the repacking buffer interleaves here */
	free(host);
	host = NULL;
	struct ggml_cgraph *gf = ggml_new_graph(ctx);
	ggml_build_forward_expand(gf, y);
	res->rows = rows;
	res->row_bytes = rs;
	for (int p = 0; p < 2; p++) {
		const int n = p == 0 ? 1 : nth;
		/* one pool for all passes, as llama.cpp attaches one (without, each
		 * compute makes and frees its own: ~10 us, a third of an in-cache one) */
		struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n);
		ggml_threadpool_free(pool);
		pool = ggml_threadpool_new(&tpp);
		if (pool == NULL)
			goto out_ctx;
		struct ggml_cplan plan = ggml_graph_plan(gf, n, pool);
		free(work);
		work = plan.work_size > 0 ? malloc(plan.work_size) : NULL;
		if (plan.work_size > 0 && work == NULL)
			goto out_ctx;
		plan.work_data = work;
		double dts[MAX_REPS];
		res->triad[p] = 0;
		for (int rep = 0; rep < reps; rep++) {
			if (tri != NULL) {
				const double g = triad_run(tri, n);
				res->triad[p] = g > res->triad[p] ? g : res->triad[p];
			}
			const double t0 = now_s();
			if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS)
				goto out_ctx;
			dts[rep] = now_s() - t0;
		}
		/* pass 0 warms up */
		const int m = reps > 1 ? reps - 1 : 1;
		qsort(reps > 1 ? dts + 1 : dts, (size_t)m, sizeof(double), cmp_double);
		const double *s = reps > 1 ? dts + 1 : dts;
		const double med = m % 2 ? s[m / 2] : 0.5 * (s[m / 2 - 1] + s[m / 2]);
		res->best[p] = (double)wbytes / s[0] / 1e9;
		res->median[p] = (double)wbytes / med / 1e9;
	}
	ok = true;
out_ctx:
	if (pool != NULL)
		ggml_threadpool_free(pool);
	free(host);
	free(work);
	ggml_backend_buffer_free(wbuf);
	if (ctx != NULL)
		ggml_free(ctx);
	if (ctx_w != NULL)
		ggml_free(ctx_w);
	return ok;
}

/* ggml's warnings and errors to stderr, not its debug and info lines. */
static void log_warnings(enum ggml_log_level level, const char *text, void *user)
{
	(void)user;
	if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR)
		fputs(text, stderr);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: ggml_gemv [--types q4_K,iq2_xxs,...] [--threads N] [--reps N] [--rows N]\n"
	        "                 [--distinct N] [--no-triad] [--no-repack] [--csv FILE]\n"
	        "  --types   ggml type names, any case (default q4_K,q2_K,iq2_xxs)\n"
	        "  --threads the larger thread count (default 2; also measured at 1)\n"
	        "  --reps    passes per thread count, the first a warm-up (default 7)\n"
	        "  --rows    matrix rows (default: >= 4x the LLC, a multiple of 16)\n"
	        "  --distinct rows quantised, then repeated (default 64); 0: random bytes\n"
	        "            (no quantiser; for instruction counts only)\n"
	        "  --no-triad no triad passes (for callgrind)\n"
	        "  --no-repack the weights in the plain CPU buffer even where llama.cpp\n"
	        "            would interleave them (its CPU_REPACK buffer type)\n"
	        "  --csv     also write the figures as CSV to FILE\n");
}

int main(int argc, char **argv)
{
	const char *types = "q4_K,q2_K,iq2_xxs", *csv_path = NULL;
	int nth = 2, reps = 7;
	long long rows_opt = 0, distinct = 64;
	bool use_triad = true, repack = true;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--no-triad") == 0) {
			use_triad = false;
			continue;
		} else if (strcmp(argv[i], "--no-repack") == 0) {
			repack = false;
			continue;
		} else if (v == NULL) {
			usage(stderr);
			return 2;
		} else if (strcmp(argv[i], "--types") == 0) {
			types = v;
		} else if (strcmp(argv[i], "--threads") == 0) {
			nth = atoi(v);
		} else if (strcmp(argv[i], "--reps") == 0) {
			reps = atoi(v);
		} else if (strcmp(argv[i], "--rows") == 0) {
			rows_opt = atoll(v);
		} else if (strcmp(argv[i], "--distinct") == 0) {
			distinct = atoll(v);
		} else if (strcmp(argv[i], "--csv") == 0) {
			csv_path = v;
		} else {
			usage(stderr);
			return 2;
		}
		i++;
	}
	if (nth < 1 || nth > 256 || reps < 1 || reps > MAX_REPS || rows_opt < 0 || distinct < 0) {
		fprintf(stderr,
		        "ggml_gemv: --threads 1..256, --reps 1..%d, --rows >= 1, --distinct >= 0\n",
		        MAX_REPS);
		return 2;
	}
	ggml_log_set(log_warnings, NULL);
	ggml_cpu_init();
	const size_t llc = last_level_cache();
	triad tri = {0};
	if (use_triad && !triad_init(&tri, 4 * llc / sizeof(double), nth)) {
		fprintf(stderr, "ggml_gemv: out of memory (triad)\n");
		triad_free(&tri);
		return 1;
	}
	FILE *csv = NULL;
	if (csv_path != NULL) {
		csv = fopen(csv_path, "w");
		if (csv == NULL) {
			fprintf(stderr, "ggml_gemv: cannot write %s\n", csv_path);
			triad_free(&tri);
			return 1;
		}
		fprintf(csv,
		        "type,path,rows,row_bytes,gemv_gbs_1t,gemv_med_1t,triad_gbs_1t,gemv_pct_1t,"
		        "gemv_gbs_%dt,gemv_med_%dt,triad_gbs_%dt,gemv_pct_%dt\n",
		        nth, nth, nth, nth);
	}
	printf("ggml_gemv: ggml CPU (AVX2 %d, FMA %d, AVX512 %d), %d threads, LLC %zu MiB, GEMV %d "
	       "cols, %d passes (first warms up)\n",
	       ggml_cpu_has_avx2(), ggml_cpu_has_fma(), ggml_cpu_has_avx512(), nth, llc >> 20, COLS,
	       reps);
	printf("%-8s %-7s %7s %5s %25s %25s\n", "", "", "", "", "GEMV 1 thread", "GEMV N threads");
	printf("%-8s %-7s %7s %5s %6s %6s %6s %4s %6s %6s %6s %4s\n", "type", "path", "rows",
	       "row B", "GB/s", "med", "triad", "%", "GB/s", "med", "triad", "%");
	fflush(stdout);
	int rc = 0;
	for (const char *p = types; *p != '\0';) {
		const char *e = strchr(p, ',');
		const size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
		const enum ggml_type t = type_by_name(p, len);
		if (t == GGML_TYPE_COUNT || ggml_get_type_traits_cpu(t)->vec_dot == NULL ||
		    COLS % ggml_get_type_traits(t)->blck_size != 0) {
			fprintf(stderr, "ggml_gemv: no CPU GEMV for type %.*s\n", (int)len, p);
			rc = 1;
		} else {
			const size_t rs = ggml_row_size(t, COLS);
			int64_t rows = rows_opt > 0 ? rows_opt : (int64_t)((4 * llc + rs - 1) / rs);
			if (rows_opt == 0)
				rows = (rows + 15) / 16 * 16;
			result r = {0};
			if (!measure(&r, t, rows, nth, reps, use_triad ? &tri : NULL, repack,
			             distinct)) {
				fprintf(stderr, "ggml_gemv: %s failed (memory or quantisation)\n",
				        ggml_type_name(t));
				rc = 1;
			} else {
				double pct[2];
				for (int q = 0; q < 2; q++)
					pct[q] =
					    r.triad[q] > 0 ? 100.0 * r.best[q] / r.triad[q] : 0;
				printf("%-8s %-7s %7lld %5zu %6.1f %6.1f %6.1f %4.0f %6.1f %6.1f "
				       "%6.1f "
				       "%4.0f\n",
				       ggml_type_name(t), r.repacked ? "repack" : "vec_dot",
				       (long long)r.rows, r.row_bytes, r.best[0], r.median[0],
				       r.triad[0], pct[0], r.best[1], r.median[1], r.triad[1],
				       pct[1]);
				if (csv != NULL)
					fprintf(csv,
					        "%s,%s,%lld,%zu,%.2f,%.2f,%.2f,%.1f,%.2f,%.2f,%.2f,"
					        "%.1f\n",
					        ggml_type_name(t),
					        r.repacked ? "repack" : "vec_dot",
					        (long long)r.rows, r.row_bytes, r.best[0],
					        r.median[0], r.triad[0], pct[0], r.best[1],
					        r.median[1], r.triad[1], pct[1]);
				fflush(stdout);
			}
		}
		p += len;
		if (*p == ',')
			p++;
	}
	printf("GB/s: weight bytes / s of one ggml_graph_compute (best and median of the timed "
	       "passes); %%: best over the best triad pass next to them (same threads)\n");
	if (csv != NULL)
		fclose(csv);
	triad_free(&tri);
	return rc;
}
