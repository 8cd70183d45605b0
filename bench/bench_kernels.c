/*
 * bench_kernels.c - `moemesh bench kernels [--threads N] [--out DIR]`.
 *
 * `--types Q4_K,Q6_K` measures only those types, `--gemv-only` skips the GEMMs
 * and sgemm (short runs while working on one kernel).
 * 1. STREAM triad a[i] = b[i] + s * c[i] on arrays of 4x the last-level cache
 *    each, at 1 and N threads (bytes counted as STREAM does: 3 x 8 per i).
 * 2. GEMV (one token) per weight type on a matrix of >= 4x the LLC: weight
 *    bytes streamed per second, and as % of the triad at the same thread
 *    count measured next to it (one triad pass before each GEMV pass, the
 *    best of each): this machine's bandwidth moves by a third within
 *    seconds, and a triad taken once at the start made the same kernel read
 *    70 % in one run and 95 % in the next.
 *    Q2_K/L, Q3_K/L: the Q2_K / Q3_K matrix repacked at load (moe_repack_rows)
 *    through moe_matmul_repacked, bytes of the repacked rows (not yet what the
 *    engine runs: not in gemv_min_pct_of_triad).
 * 3. GEMM at 16, 64 and 512 tokens on a 2048 x 2048 matrix at N threads:
 *    GOPS = 2 * rows * cols * tokens / s, next to OpenBLAS sgemm on the same
 *    shape with the weights dequantised to F32.
 * Every figure is the best of a few repetitions. Prints a table, writes
 * DIR/bench_kernels.csv, plots DIR/bench_kernels.png with gnuplot when it is
 * installed, and ends with `gemv_min_pct_of_triad=NN gemm64_vs_sgemm=X.XX`
 * (minimum over Q4_K, Q6_K, Q8_0, Q4_0, Q5_K at 1 and N threads; Q4_K GEMM at
 * 64 tokens over sgemm, both from rounds of runs alternating with each other).
 */
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench.h"
#include "kernels/kernels.h"

enum { GEMV_COLS = 4096, GEMM_N = 2048, N_TOKS = 3, DISTINCT_ROWS = 64 };

static const int gemm_toks[N_TOKS] = {16, 64, 512};

typedef struct bk_type {
	moe_type type;
	/* 1: counts for gemv_min_pct_of_triad; 2: GEMV only, the rows repacked
	 * (moe_repack_rows), not counted */
	int role;
} bk_type;

/* clang-format off */
static const bk_type bk_types[] = {
    {MOE_TYPE_Q4_K, 1},    {MOE_TYPE_Q6_K, 1},    {MOE_TYPE_Q8_0, 1},
    {MOE_TYPE_Q4_0, 1},    {MOE_TYPE_Q5_K, 1},    {MOE_TYPE_F16, 0},
    {MOE_TYPE_F32, 0},     {MOE_TYPE_Q2_K, 1},    {MOE_TYPE_Q3_K, 1},
    {MOE_TYPE_Q2_K, 2},    {MOE_TYPE_Q3_K, 2},
    {MOE_TYPE_IQ4_XS, 1},  {MOE_TYPE_IQ4_NL, 1},  {MOE_TYPE_MXFP4, 1},
    {MOE_TYPE_IQ3_XXS, 1}, {MOE_TYPE_IQ3_S, 1},   {MOE_TYPE_IQ1_S, 1},
    {MOE_TYPE_IQ1_M, 1},
    {MOE_TYPE_IQ2_XXS, 1}, {MOE_TYPE_IQ2_XS, 1},  {MOE_TYPE_IQ2_S, 1},
};
/* clang-format on */
#define N_BK_TYPES (sizeof(bk_types) / sizeof(bk_types[0]))

typedef struct bk_row {
	const char *name;
	double gemv_gbs[2];  /* 1 thread, N threads; 0 = not measured */
	double triad_gbs[2]; /* the triad measured next to each */
	double gemm_gops[N_TOKS];
} bk_row;

static uint64_t bk_rng = 88172645463325252ull;
static float bk_frand(void)
{
	bk_rng ^= bk_rng << 13;
	bk_rng ^= bk_rng >> 7;
	bk_rng ^= bk_rng << 17;
	return (float)(bk_rng >> 40) / 8388608.0f - 1.0f;
}

/* ---- GEMV, GEMM ------------------------------------------------------------------ */

/* A row of cols values of a type moemesh has no quantiser for (IQ2_XXS,
 * IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M: llama-quantize makes them):
 * random bytes with a fp16 scale of about 2^-6 per block (IQ1_M: in its 4
 * scale words' top nibbles, the other types: the block's first two bytes),
 * so no NaN or subnormal; the speed does not depend on the values. */
static moe_err random_blocks(uint8_t *row, moe_type t, int64_t cols)
{
	const moe_type_traits *tr = moe_type_get(t);
	if (t != MOE_TYPE_IQ3_XXS && t != MOE_TYPE_IQ3_S && t != MOE_TYPE_IQ1_S &&
	    t != MOE_TYPE_IQ1_M && t != MOE_TYPE_IQ2_XXS && t != MOE_TYPE_IQ2_XS &&
	    t != MOE_TYPE_IQ2_S)
		return moe_fail(MOE_ERR_UNSUPPORTED, "bench: no quantiser for %s", tr->name);
	for (size_t i = 0; i < moe_row_size(t, cols); i++)
		row[i] = (uint8_t)(bk_frand() * 128 + 128);
	for (int64_t k = 0; k < cols / tr->block_size; k++) {
		uint8_t *b = row + (size_t)k * tr->type_size;
		const uint16_t d = (uint16_t)(0x2400 | (k * 37 & 1023));
		if (t == MOE_TYPE_IQ1_M)
			for (int q = 0; q < 4; q++)
				b[49 + 2 * q] =
				    (uint8_t)((b[49 + 2 * q] & 15) | ((d >> (4 * q)) & 15) << 4);
		else
			memcpy(b, &d, 2);
	}
	return MOE_OK;
}

/* rows x cols of type t: DISTINCT_ROWS random rows repeated (the content
 * does not change the speed). Caller frees with moe_aligned_free. */
static moe_err make_matrix(uint8_t **out, moe_type t, int64_t rows, int64_t cols)
{
	size_t rs = moe_row_size(t, cols), bytes;
	*out = NULL;
	if (!moe_size_mul(&bytes, rs, (size_t)rows))
		return moe_fail(MOE_ERR_OVERFLOW, "bench: %lld rows", (long long)rows);
	uint8_t *w = moe_aligned_alloc(64, bytes);
	float *tmp = malloc(sizeof(float) * (size_t)cols);
	moe_err err = MOE_OK;
	if (w == NULL || tmp == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench: %zu bytes of weights", bytes);
		goto out_free;
	}
	for (int64_t r = 0; r < rows && r < DISTINCT_ROWS; r++) {
		for (int64_t c = 0; c < cols; c++)
			tmp[c] = bk_frand();
		err = moe_quantize_row(t, w + (size_t)r * rs, tmp, cols);
		if (err == MOE_ERR_UNSUPPORTED)
			err = random_blocks(w + (size_t)r * rs, t, cols);
		if (err != MOE_OK)
			goto out_free;
	}
	for (int64_t r = DISTINCT_ROWS; r < rows; r++)
		memcpy(w + (size_t)r * rs, w + (size_t)(r % DISTINCT_ROWS) * rs, rs);
	*out = w;
	w = NULL;
out_free:
	free(tmp);
	moe_aligned_free(w);
	return err;
}

/* gbs: GEMV weight GB/s at 1 and N threads; triad: the triad's GB/s at the
 * same thread counts, one pass of it before each GEMV pass.  lanes: the rows
 * repacked, through moe_matmul_repacked. */
static moe_err gemv_measure(double gbs[2], double triad[2], moe_type t, bool lanes,
                            moe_pool *pools[2], moe_bench_triad *tri, size_t llc)
{
	size_t rs = moe_row_size(t, GEMV_COLS);
	int64_t rows = (int64_t)((4 * llc + rs - 1) / rs);
	rows = (rows + 15) / 16 * 16;
	uint8_t *w = NULL;
	moe_err err = make_matrix(&w, t, rows, GEMV_COLS);
	if (err != MOE_OK)
		return err;
	if (lanes) {
		const size_t rl = moe_repack_row_size(t, GEMV_COLS);
		uint8_t *wl = moe_aligned_alloc(64, rl * (size_t)rows);
		err = wl == NULL ? moe_fail(MOE_ERR_NOMEM, "bench: repacked weights")
		                 : moe_repack_rows(wl, w, t, rows, GEMV_COLS);
		moe_aligned_free(w);
		w = wl;
		rs = rl;
		if (err != MOE_OK)
			goto out_free_w;
	}
	float x[GEMV_COLS];
	for (int i = 0; i < GEMV_COLS; i++)
		x[i] = bk_frand();
	uint8_t *xq = moe_aligned_alloc(64, moe_act_row_size(t, GEMV_COLS));
	float *y = moe_aligned_alloc(64, sizeof(float) * (size_t)rows);
	if (xq == NULL || y == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench: gemv buffers");
		goto out_free;
	}
	err = moe_quantize_act(t, xq, x, GEMV_COLS);
	for (int p = 0; p < 2 && err == MOE_OK; p++) {
		double best = 1e30;
		triad[p] = 0;
		for (int rep = 0; rep < 7 && err == MOE_OK; rep++) {
			const double tr = moe_bench_triad_run(tri, pools[p], 1);
			triad[p] = tr > triad[p] ? tr : triad[p];
			double t0 = moe_now_s();
			err = lanes ? moe_matmul_repacked(pools[p], y, w, t, rows, GEMV_COLS, xq, 1)
			            : moe_matmul_q(pools[p], y, w, t, rows, GEMV_COLS, xq, 1);
			double dt = moe_now_s() - t0;
			if (rep > 0 && dt < best) /* rep 0 warms up */
				best = dt;
		}
		gbs[p] = (double)rs * (double)rows / best / 1e9;
	}
out_free:
	moe_aligned_free(y);
	moe_aligned_free(xq);
out_free_w:
	moe_aligned_free(w);
	return err;
}

/* Best seconds of f over at least 2 runs and about 0.15 s. */
static double time_best(moe_err *err, moe_pool *pool, const uint8_t *w, moe_type t, const float *x,
                        float *y, int tok)
{
	double best = 1e30, total = 0;
	for (int rep = 0; rep < 20 && (rep < 2 || total < 0.15); rep++) {
		double t0 = moe_now_s();
		*err = moe_matmul(pool, y, w, t, GEMM_N, GEMM_N, x, tok);
		double dt = moe_now_s() - t0;
		if (*err != MOE_OK)
			return 0;
		total += dt;
		if (dt < best)
			best = dt;
	}
	return best;
}

static double gops(int tok, double s)
{
	return 2.0 * GEMM_N * GEMM_N * tok / s / 1e9;
}

static moe_err gemm_measure(double out[N_TOKS], moe_type t, moe_pool *pool, const float *x,
                            float *y)
{
	uint8_t *w = NULL;
	moe_err err = make_matrix(&w, t, GEMM_N, GEMM_N);
	if (err != MOE_OK)
		return err;
	for (int k = 0; k < N_TOKS && err == MOE_OK; k++)
		out[k] = gops(gemm_toks[k], time_best(&err, pool, w, t, x, y, gemm_toks[k]));
	moe_aligned_free(w);
	return err;
}

/* Q4_K (pair[0]) and sgemm (pair[1]) GOPS at 64 tokens on the same weights,
 * in 4 rounds of 5 runs of each, the best of each: measured apart, the two
 * met different states of this shared machine and their ratio moved from
 * 1.4 to 3.3 between runs.  After the sgemm runs a pause of 0.2 s, before the
 * Q4_K runs: OpenBLAS's threads keep spinning for a while after a call, and
 * back to back with them the Q4_K runs measured 149 instead of ~400 GOPS. */
static moe_err pair_measure(double pair[2], moe_pool *pool, const uint8_t *wq, const float *w,
                            const float *x, float *y)
{
	enum { TOK = 64 };
	double best_q = 1e30, best_s = 1e30;
	for (int round = 0; round < 4; round++) {
		for (int rep = 0; rep < 5; rep++) {
			const double t0 = moe_now_s();
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, TOK, GEMM_N, GEMM_N,
			            1.0f, x, GEMM_N, w, GEMM_N, 0.0f, y, GEMM_N);
			const double dt = moe_now_s() - t0;
			best_s = dt < best_s ? dt : best_s;
		}
		usleep(200000);
		for (int rep = 0; rep < 5; rep++) {
			const double t0 = moe_now_s();
			moe_err err =
			    moe_matmul(pool, y, wq, MOE_TYPE_Q4_K, GEMM_N, GEMM_N, x, TOK);
			if (err != MOE_OK)
				return err;
			const double dt = moe_now_s() - t0;
			best_q = dt < best_q ? dt : best_q;
		}
	}
	pair[0] = gops(TOK, best_q);
	pair[1] = gops(TOK, best_s);
	return MOE_OK;
}

/* out: OpenBLAS sgemm GOPS at each token count on the Q4_K matrix
 * dequantised to F32; pair: see pair_measure. */
static moe_err sgemm_measure(double out[N_TOKS], double pair[2], moe_pool *pool, int threads,
                             const float *x, float *y)
{
	uint8_t *wq = NULL;
	moe_err err = make_matrix(&wq, MOE_TYPE_Q4_K, GEMM_N, GEMM_N);
	if (err != MOE_OK)
		return err;
	size_t rs = moe_row_size(MOE_TYPE_Q4_K, GEMM_N);
	float *w = moe_aligned_alloc(64, sizeof(float) * GEMM_N * GEMM_N);
	if (w == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench: f32 weights");
		goto out_free;
	}
	for (int r = 0; r < GEMM_N && err == MOE_OK; r++)
		err =
		    moe_dequantize_row(MOE_TYPE_Q4_K, w + (size_t)r * GEMM_N, wq + r * rs, GEMM_N);
	openblas_set_num_threads(threads);
	for (int k = 0; k < N_TOKS && err == MOE_OK; k++) {
		int tok = gemm_toks[k];
		double best = 1e30, total = 0;
		for (int rep = 0; rep < 20 && (rep < 2 || total < 0.15); rep++) {
			double t0 = moe_now_s();
			/* y[tok][rows] = x[tok][cols] . w[rows][cols]^T */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tok, GEMM_N, GEMM_N,
			            1.0f, x, GEMM_N, w, GEMM_N, 0.0f, y, GEMM_N);
			double dt = moe_now_s() - t0;
			total += dt;
			if (dt < best)
				best = dt;
		}
		out[k] = gops(tok, best);
	}
	if (err == MOE_OK)
		err = pair_measure(pair, pool, wq, w, x, y);
out_free:
	moe_aligned_free(w);
	moe_aligned_free(wq);
	return err;
}

/* ---- report ---------------------------------------------------------------------- */

static void write_plot(const char *dir, const char *csv, int threads)
{
	FILE *f = moe_bench_plot_open(dir, "bench_kernels", 1200, 500);
	if (f == NULL)
		return;
	fprintf(f,
	        "set style data histograms\n"
	        "set style histogram clustered gap 1\n"
	        "set style fill solid 0.8 border -1\n"
	        "set key top left\n"
	        "set grid ytics\n"
	        "set title 'GEMV: weight bandwidth, %% of STREAM triad'\n"
	        "set ylabel '%% of triad'\n"
	        "set yrange [0:*]\n"
	        "plot '%s' every ::1 using 4:xtic(1) title '1 thread', "
	        "'' every ::1 using 7 title '%d threads', 80 with lines lw 2 title 'target 80%%'\n"
	        "set title 'GEMM %dx%d, %d threads (GOPS)'\n"
	        "set ylabel 'GOPS'\n"
	        "set logscale y\n"
	        "set yrange [1:*]\n"
	        "plot '%s' every ::1 using 8:xtic(1) title '16 tokens', '' every ::1 using 9 "
	        "title '64 tokens', '' every ::1 using 10 title '512 tokens'\n",
	        csv, threads, GEMM_N, GEMM_N, threads, csv);
	moe_bench_plot_run(f, dir, "bench_kernels");
}

/* The L3 size of cpu0 from sysfs (what lscpu shows; sysconf may report the
 * whole package's), else sysconf, else 32 MiB. */
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

/* Whether name is one of the comma-separated names in list (NULL: all). */
static bool type_listed(const char *list, const char *name)
{
	const size_t n = strlen(name);
	for (const char *p = list; p != NULL; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
		if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
			return true;
	return list == NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench kernels [--threads N] [--out DIR] [--types T,..] "
	           "[--gemv-only]\n"
	           "  --threads N  the larger thread count (default 2; GEMV also at 1)\n"
	           "  --out DIR    where the CSV and PNG go (default bench/out)\n"
	           "  --types T,.. only these weight types (names as in GGUF, e.g. Q4_K,Q6_K)\n"
	           "  --gemv-only  no GEMM, no sgemm\n");
}

int moe_bench_kernels(int argc, char **argv)
{
	int threads = 2;
	const char *dir = "bench/out", *only = NULL;
	bool gemv_only = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end != '\0' || v < 1 || v > 256) {
				usage(stderr);
				return 2;
			}
			threads = (int)v;
		} else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
			dir = argv[++i];
		} else if (strcmp(argv[i], "--types") == 0 && i + 1 < argc) {
			only = argv[++i];
		} else if (strcmp(argv[i], "--gemv-only") == 0) {
			gemv_only = true;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		fprintf(stderr, "moemesh bench kernels: cannot create %s: %s\n", dir,
		        strerror(errno));
		return 1;
	}
	size_t llc = last_level_cache();

	moe_pool *pools[2] = {NULL, NULL};
	bk_row rows[N_BK_TYPES + 1];
	moe_bench_triad *tri = NULL;
	double pair[2] = {0, 0}; /* Q4_K, sgemm GOPS at 64 tokens, alternating runs */
	float *x = NULL, *y = NULL;
	int rc = 1;
	moe_err err = moe_pool_create(&pools[0], 1);
	if (err == MOE_OK)
		err = moe_pool_create(&pools[1], threads);
	if (err != MOE_OK)
		goto out_report;
	memset(rows, 0, sizeof(rows));
	x = moe_aligned_alloc(64, sizeof(float) * GEMM_N * 512);
	y = moe_aligned_alloc(64, sizeof(float) * GEMM_N * 512);
	if (x == NULL || y == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench: activations");
		goto out_report;
	}
	for (int i = 0; i < GEMM_N * 512; i++)
		x[i] = bk_frand();

	printf("moemesh bench kernels: ISA %s, %d threads, LLC %zu MiB, GEMV %d cols, GEMM %dx%d\n",
	       moe_isa_name(moe_isa_active()), threads, llc >> 20, GEMV_COLS, GEMM_N, GEMM_N);
	fflush(stdout);
	err = moe_bench_triad_create(&tri, pools[1], 4 * llc / sizeof(double));
	if (err != MOE_OK)
		goto out_report;
	for (size_t k = 0; k < N_BK_TYPES; k++) {
		moe_type t = bk_types[k].type;
		rows[k].name = moe_type_get(t)->name;
		if (moe_vec_dot_get(t) == NULL || !type_listed(only, rows[k].name))
			continue;
		if ((bk_types[k].role == 2))
			rows[k].name = t == MOE_TYPE_Q2_K ? "Q2_K/L" : "Q3_K/L";
		err = gemv_measure(rows[k].gemv_gbs, rows[k].triad_gbs, t, (bk_types[k].role == 2),
		                   pools, tri, llc);
		if (err == MOE_OK && !gemv_only && !(bk_types[k].role == 2))
			err = gemm_measure(rows[k].gemm_gops, t, pools[1], x, y);
		if (err != MOE_OK)
			goto out_report;
	}
	rows[N_BK_TYPES].name = "sgemm";
	if (!gemv_only)
		err = sgemm_measure(rows[N_BK_TYPES].gemm_gops, pair, pools[1], threads, x, y);
	if (err != MOE_OK)
		goto out_report;

	char csv[1024];
	snprintf(csv, sizeof(csv), "%s/bench_kernels.csv", dir);
	FILE *f = fopen(csv, "w");
	if (f == NULL) {
		err = moe_fail(MOE_ERR_IO, "cannot write %s: %s", csv, strerror(errno));
		goto out_report;
	}
	fprintf(f,
	        "type,gemv_gbs_1t,triad_gbs_1t,gemv_pct_1t,gemv_gbs_%dt,triad_gbs_%dt,gemv_pct_%dt,"
	        "gemm16_gops,gemm64_gops,gemm512_gops\n",
	        threads, threads, threads);
	printf("\n%-6s %26s %26s   GEMM GOPS (%d thr)\n", "", "GEMV 1 thread", "GEMV N threads",
	       threads);
	printf("%-6s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "type", "GB/s", "triad", "%", "GB/s",
	       "triad", "%", "16 tok", "64 tok", "512 tok");
	double min_pct = 1e30;
	for (size_t k = 0; k <= N_BK_TYPES; k++) {
		const bk_row *r = &rows[k];
		double pct[2];
		for (int p = 0; p < 2; p++)
			pct[p] = r->triad_gbs[p] > 0 ? 100.0 * r->gemv_gbs[p] / r->triad_gbs[p] : 0;
		if (k < N_BK_TYPES && bk_types[k].role == 1 && r->gemv_gbs[0] > 0)
			for (int p = 0; p < 2; p++)
				if (pct[p] < min_pct)
					min_pct = pct[p];
		if (k < N_BK_TYPES && r->gemv_gbs[0] > 0)
			printf("%-6s %8.1f %8.1f %8.0f %8.1f %8.1f %8.0f", r->name, r->gemv_gbs[0],
			       r->triad_gbs[0], pct[0], r->gemv_gbs[1], r->triad_gbs[1], pct[1]);
		else
			printf("%-6s %8s %8s %8s %8s %8s %8s", r->name, "-", "-", "-", "-", "-",
			       "-");
		printf(" %8.1f %8.1f %8.1f\n", r->gemm_gops[0], r->gemm_gops[1], r->gemm_gops[2]);
		fprintf(f, "%s,%.2f,%.2f,%.1f,%.2f,%.2f,%.1f,%.2f,%.2f,%.2f\n", r->name,
		        r->gemv_gbs[0], r->triad_gbs[0], pct[0], r->gemv_gbs[1], r->triad_gbs[1],
		        pct[1], r->gemm_gops[0], r->gemm_gops[1], r->gemm_gops[2]);
	}
	fclose(f);
	printf("%%: GEMV GB/s over the STREAM triad measured next to it (same threads)\n");
	printf("csv: %s\n", csv);
	if (gemv_only)
		printf("--gemv-only: no plot\n");
	else
		write_plot(dir, csv, threads);
	printf("GEMM 64 tokens, alternating rounds: Q4_K %.1f GOPS, sgemm %.1f GOPS\n", pair[0],
	       pair[1]);
	printf("gemv_min_pct_of_triad=%.0f gemm64_vs_sgemm=%.2f\n", min_pct < 1e29 ? min_pct : 0.0,
	       pair[1] > 0 ? pair[0] / pair[1] : 0.0);
	rc = 0;

out_report:
	if (err != MOE_OK)
		fprintf(stderr, "moemesh bench kernels: %s: %s\n", moe_err_name(err),
		        moe_err_detail());
	moe_bench_triad_destroy(tri);
	moe_aligned_free(y);
	moe_aligned_free(x);
	moe_pool_destroy(pools[1]);
	moe_pool_destroy(pools[0]);
	return rc;
}
