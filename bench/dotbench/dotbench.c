/*
 * dotbench.c - standalone microbenchmark of the per-row dot products
 * (moe_vec_dot_get_isa): GB/s of weight bytes read, per type, for
 *   - "cache":  a GEMV over a small matrix (~256 KiB) that stays in L2,
 *   - "stream": a GEMV over a matrix of --mib MiB (default 4x the LLC),
 * next to a STREAM-like triad (a = b + s*c on doubles, 3 x 8 bytes counted
 * per element, as STREAM counts) measured in the same run with the same
 * thread count.  Weights are random data quantised once and replicated; the
 * activation row is quantised once (its cost is not in the figures).
 *
 *   moe_dotbench [--isa scalar|avx2|avx512] [--threads N] [--cols N]
 *                [--mib N] [--reps N] [--samples N] [--types Q4_K,Q8_0,...]
 *                [--matmul] [--repack]
 *
 * --repack (with --matmul) adds, after each type with a load-time repacked
 * layout (Q2_K, Q3_K), a line "<type>/L" for the same rows repacked
 * (moe_repack_rows) through moe_matmul_repacked, the token's per-product
 * rearrangement included.
 *
 * In-cache figures come from many short samples (~1 MiB of weight reads per
 * thread each; --samples, default 1000): "best" is the fastest sample (what
 * the kernel does when nothing else runs on its core; wall clock, so it
 * cannot overstate), "median" the typical one on a shared machine.  Streaming
 * and triad figures are best and median of --reps full passes.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/kernels.h"

/* clang-format off */
static const moe_type all_types[] = {
    MOE_TYPE_F32,  MOE_TYPE_F16,  MOE_TYPE_BF16, MOE_TYPE_Q8_0, MOE_TYPE_Q4_0,
    MOE_TYPE_Q5_0, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K,
    MOE_TYPE_Q2_K, MOE_TYPE_Q3_K, MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_MXFP4,
    MOE_TYPE_IQ3_XXS, MOE_TYPE_IQ3_S, MOE_TYPE_IQ1_S, MOE_TYPE_IQ1_M,
    MOE_TYPE_IQ2_XXS, MOE_TYPE_IQ2_XS, MOE_TYPE_IQ2_S,
};
/* clang-format on */
#define N_ALL_TYPES (sizeof(all_types) / sizeof(all_types[0]))

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 12345;

static float rng_unif(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* A row of a type moemesh has no quantiser for (IQ3_XXS, IQ3_S, IQ1_S,
 * IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S: llama-quantize makes them): random bytes, each block's fp16 scale
 * (IQ1_M: its 4 scale words' top nibbles; the others: its first two bytes)
 * set to about 2^-6, so no NaN or subnormal. */
static moe_err random_blocks(uint8_t *row, moe_type t, int64_t n_cols)
{
	const moe_type_traits *tr = moe_type_get(t);
	if (t != MOE_TYPE_IQ3_XXS && t != MOE_TYPE_IQ3_S && t != MOE_TYPE_IQ1_S &&
	    t != MOE_TYPE_IQ1_M && t != MOE_TYPE_IQ2_XXS && t != MOE_TYPE_IQ2_XS &&
	    t != MOE_TYPE_IQ2_S)
		return moe_fail(MOE_ERR_UNSUPPORTED, "no quantiser for %s", tr->name);
	for (size_t i = 0; i < moe_row_size(t, n_cols); i++)
		row[i] = (uint8_t)(rng_unif() * 128 + 128);
	for (int64_t k = 0; k < n_cols / tr->block_size; k++) {
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

/* The last-level cache in MiB from sysfs (glibc's sysconf reports 256 MiB on
 * some VMs whose L3 is 32 MiB); 32 if it cannot be read. */
static size_t llc_mib(void)
{
	size_t best = 0;

	for (int idx = 0; idx < 8; idx++) {
		char path[96];
		snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/size",
		         idx);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		unsigned long v = 0;
		char unit = 0;
		if (fscanf(f, "%lu%c", &v, &unit) >= 1) {
			size_t kib = unit == 'M' ? v << 10 : v;
			if (kib >> 10 > best)
				best = kib >> 10;
		}
		fclose(f);
	}
	return best > 0 ? best : 32;
}

/* ---- work split over threads ---------------------------------------------------- */

typedef struct job {
	int kind; /* 0 = gemv, 1 = triad */
	/* gemv */
	moe_vec_dot_fn dot;
	moe_type type;
	bool matmul;   /* through moe_matmul_q (the tile kernels), not dot */
	bool repacked; /* w repacked: through moe_matmul_repacked */
	const uint8_t *w;
	size_t row_bytes;
	int64_t n_rows, n_cols;
	const void *act;
	float *y;
	int passes;
	/* triad */
	double *a, *b, *c;
	size_t n;
} job;

typedef struct worker_arg {
	const job *j;
	int ith, nth;
	pthread_barrier_t *start;
} worker_arg;

static void run_slice(const job *j, int ith, int nth)
{
	if (j->kind == 0) {
		int64_t r0 = j->n_rows * ith / nth, r1 = j->n_rows * (ith + 1) / nth;
		for (int p = 0; p < j->passes; p++) {
			if (j->repacked) {
				moe_matmul_repacked(NULL, j->y + r0,
				                    j->w + (size_t)r0 * j->row_bytes, j->type,
				                    r1 - r0, j->n_cols, j->act, 1);
				continue;
			}
			if (j->matmul) {
				moe_matmul_q(NULL, j->y + r0, j->w + (size_t)r0 * j->row_bytes,
				             j->type, r1 - r0, j->n_cols, j->act, 1);
				continue;
			}
			for (int64_t r = r0; r < r1; r++)
				j->dot(j->n_cols, &j->y[r], j->w + (size_t)r * j->row_bytes,
				       j->act);
		}
	} else {
		size_t i0 = j->n * (size_t)ith / (size_t)nth;
		size_t i1 = j->n * (size_t)(ith + 1) / (size_t)nth;
		for (size_t i = i0; i < i1; i++)
			j->a[i] = j->b[i] + 3.0 * j->c[i];
	}
}

static void *worker_main(void *p)
{
	worker_arg *wa = p;

	pthread_barrier_wait(wa->start);
	run_slice(wa->j, wa->ith, wa->nth);
	return NULL;
}

/* Seconds for one run of j on nth threads (thread creation outside the timed
 * region: workers wait on a barrier, the clock starts when it opens). */
static double time_job(const job *j, int nth)
{
	pthread_t th[64];
	worker_arg wa[64];
	pthread_barrier_t start;

	pthread_barrier_init(&start, NULL, (unsigned)nth);
	for (int t = 1; t < nth; t++) {
		wa[t] = (worker_arg){j, t, nth, &start};
		pthread_create(&th[t], NULL, worker_main, &wa[t]);
	}
	pthread_barrier_wait(&start);
	double t0 = now_s();
	run_slice(j, 0, nth);
	for (int t = 1; t < nth; t++)
		pthread_join(th[t], NULL);
	double t1 = now_s();
	pthread_barrier_destroy(&start);
	return t1 - t0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Best and median GB/s over reps runs of j moving bytes bytes. */
static void measure(const job *j, int nth, int reps, double bytes, double *best, double *median)
{
	double *g = malloc((size_t)reps * sizeof(double));

	if (g == NULL) {
		*best = *median = 0;
		return;
	}
	for (int r = 0; r < reps; r++)
		g[r] = bytes / time_job(j, nth) / 1e9;
	qsort(g, (size_t)reps, sizeof(double), cmp_double);
	*best = g[reps - 1];
	*median = g[reps / 2];
	free(g);
}

static int parse_types(const char *s, moe_type *out, int max)
{
	int n = 0;
	char buf[256];

	snprintf(buf, sizeof(buf), "%s", s);
	for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
		int found = -1;
		for (size_t i = 0; i < N_ALL_TYPES; i++)
			if (strcmp(tok, moe_type_get(all_types[i])->name) == 0)
				found = (int)i;
		if (found < 0 || n == max) {
			fprintf(stderr, "moe_dotbench: unknown or repeated type list at '%s'\n",
			        tok);
			return -1;
		}
		out[n++] = all_types[found];
	}
	return n;
}

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: moe_dotbench [--isa scalar|avx2|avx512] [--threads N] [--cols N]\n"
	       "                    [--mib N] [--reps N] [--samples N] [--types F32,Q4_K,...]\n"
	       "                    [--matmul]  (GEMV through moe_matmul_q: the tile kernels\n"
	       "                                 of the active level, not the dot; ignores --isa)\n"
	       "                    [--repack]  (with --matmul: Q2_K, Q3_K also repacked at\n"
	       "                                 load, moe_matmul_repacked, as '<type>/L')\n");
}

int main(int argc, char **argv)
{
	moe_isa isa = moe_isa_active();
	int nth = 1, reps = 7, samples = 1000;
	bool matmul = false, repack = false;
	int64_t n_cols = 2048;
	size_t big_mib = 4 * llc_mib();
	moe_type types[N_ALL_TYPES];
	int n_types = (int)N_ALL_TYPES;

	memcpy(types, all_types, sizeof(all_types));
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--matmul") == 0) {
			matmul = true;
			continue;
		}
		if (strcmp(argv[i], "--repack") == 0) {
			repack = true;
			continue;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		if (strcmp(argv[i], "--isa") == 0) {
			int found = -1;
			for (int l = 0; l < 4; l++)
				if (strcmp(v, moe_isa_name((moe_isa)l)) == 0)
					found = l;
			if (found < 0 || !moe_isa_supported((moe_isa)found)) {
				fprintf(stderr, "moe_dotbench: ISA %s not available\n", v);
				return 2;
			}
			isa = (moe_isa)found;
		} else if (strcmp(argv[i], "--threads") == 0) {
			nth = atoi(v);
		} else if (strcmp(argv[i], "--cols") == 0) {
			n_cols = atoll(v);
		} else if (strcmp(argv[i], "--mib") == 0) {
			big_mib = (size_t)atol(v);
		} else if (strcmp(argv[i], "--reps") == 0) {
			reps = atoi(v);
		} else if (strcmp(argv[i], "--samples") == 0) {
			samples = atoi(v);
		} else if (strcmp(argv[i], "--types") == 0) {
			n_types = parse_types(v, types, (int)N_ALL_TYPES);
			if (n_types < 0)
				return 2;
		} else {
			usage(stderr);
			return 2;
		}
		i++;
	}
	if (nth < 1 || nth > 64 || reps < 1 || samples < 1 || n_cols < 256 || n_cols % 256 != 0 ||
	    big_mib < 1) {
		fprintf(
		    stderr,
		    "moe_dotbench: --threads 1..64, --reps and --samples >= 1, --cols a multiple "
		    "of 256, --mib >= 1\n");
		return 2;
	}

	size_t big_bytes = big_mib << 20;
	uint8_t *big = aligned_alloc(64, big_bytes);
	float *x = malloc((size_t)n_cols * sizeof(float));
	float *a = malloc((size_t)n_cols * sizeof(float));
	void *act = aligned_alloc(64, ((size_t)n_cols * 4 + 63) / 64 * 64);
	/* every type takes >= 1 bit a value (IQ1_S 1.56), so no type has more rows than this */
	float *y = malloc(big_bytes / (size_t)(n_cols / 8) * sizeof(float));
	if (big == NULL || x == NULL || a == NULL || act == NULL || y == NULL) {
		fprintf(stderr, "moe_dotbench: out of memory (%zu MiB)\n", big_mib);
		return 1;
	}

	/* Triad: three arrays, each half the big matrix (so 1.5x its size in all). */
	size_t tn = big_bytes / 2 / sizeof(double);
	double *ta = aligned_alloc(64, tn * sizeof(double));
	double *tb = aligned_alloc(64, tn * sizeof(double));
	double *tc = aligned_alloc(64, tn * sizeof(double));
	if (ta == NULL || tb == NULL || tc == NULL) {
		fprintf(stderr, "moe_dotbench: out of memory (triad)\n");
		return 1;
	}
	for (size_t i = 0; i < tn; i++) {
		ta[i] = 0;
		tb[i] = 1.0 + (double)(i & 7);
		tc[i] = 0.5;
	}
	job tj = {.kind = 1, .a = ta, .b = tb, .c = tc, .n = tn};
	double triad, triad_med;
	measure(&tj, nth, reps, 3.0 * (double)tn * sizeof(double), &triad, &triad_med);

	printf("moe_dotbench: isa %s, %d thread(s), %lld columns; cache: ~256 KiB matrix, best "
	       "and median of %d samples; stream: %zu MiB matrix, best and median of %d\n",
	       moe_isa_name(isa), nth, (long long)n_cols, samples, big_mib, reps);
	printf("triad (3 x %zu MiB arrays): best %.1f GB/s, median %.1f GB/s\n",
	       tn * sizeof(double) >> 20, triad, triad_med);
	printf("%-7s %7s %22s %22s %13s\n", "type", "row B", "cache GB/s best  med",
	       "stream GB/s best  med", "stream/triad");
	for (int i = 0; i < n_cols; i++)
		a[i] = rng_unif() * (1.0f + (float)(i % 5));
	for (int ti = 0; ti < n_types; ti++) {
		moe_type t = types[ti];
		moe_vec_dot_fn dot = moe_vec_dot_get_isa(t, isa);
		size_t rb = moe_row_size(t, n_cols);
		if (dot == NULL || rb == 0 || moe_quantize_act(t, act, a, n_cols) != MOE_OK) {
			printf("%-7s no dot product at this level\n", moe_type_get(t)->name);
			continue;
		}
		/* 16 distinct random rows, replicated over the whole buffer. */
		int64_t n_big = (int64_t)(big_bytes / rb);
		for (int r = 0; r < 16 && r < n_big; r++) {
			for (int64_t i = 0; i < n_cols; i++)
				x[i] = rng_unif() * (0.1f + 0.05f * (float)(r % 4));
			moe_err qe = moe_quantize_row(t, big + (size_t)r * rb, x, n_cols);
			if (qe == MOE_ERR_UNSUPPORTED)
				qe = random_blocks(big + (size_t)r * rb, t, n_cols);
			if (qe != MOE_OK) {
				fprintf(stderr, "moe_dotbench: quantize %s failed: %s\n",
				        moe_type_get(t)->name, moe_err_detail());
				return 1;
			}
		}
		for (int64_t r = 16; r < n_big; r++)
			memcpy(big + (size_t)r * rb, big + (size_t)(r % 16) * rb, rb);

		int64_t n_small = (int64_t)((256u << 10) / rb);
		if (n_small < nth)
			n_small = nth;
		/* ~1 MiB of weight reads per thread per sample (16 MiB with
		 * threads, so that joining them is not what is timed) */
		double per = (double)n_small * (double)rb;
		int passes = (int)((nth > 1 ? 16.0 : 1.0) * nth * (1 << 20) / per) + 1;
		job cj = {.kind = 0,
		          .dot = dot,
		          .type = t,
		          .matmul = matmul,
		          .w = big,
		          .row_bytes = rb,
		          .n_rows = n_small,
		          .n_cols = n_cols,
		          .act = act,
		          .y = y,
		          .passes = passes};
		job sj = cj;
		sj.n_rows = n_big;
		sj.passes = 1;
		double cb, cm, sb, sm;
		time_job(&cj, nth); /* warm-up */
		measure(&cj, nth, nth > 1 ? samples / 8 + 1 : samples, passes * per, &cb, &cm);
		measure(&sj, nth, reps, (double)n_big * (double)rb, &sb, &sm);
		printf("%-7s %7zu %16.1f %5.1f %16.1f %5.1f %12.0f%%\n", moe_type_get(t)->name, rb,
		       cb, cm, sb, sm, 100 * sb / triad);
		const size_t rbr = moe_repack_row_size(t, n_cols);
		uint8_t *bigr =
		    repack && matmul && rbr != 0 ? aligned_alloc(64, (size_t)n_big * rbr) : NULL;
		if (bigr != NULL && moe_repack_rows(bigr, big, t, n_big, n_cols) == MOE_OK) {
			cj.repacked = sj.repacked = true;
			cj.w = sj.w = bigr;
			cj.row_bytes = sj.row_bytes = rbr;
			time_job(&cj, nth);
			measure(&cj, nth, nth > 1 ? samples / 8 + 1 : samples,
			        passes * (double)n_small * (double)rbr, &cb, &cm);
			measure(&sj, nth, reps, (double)n_big * (double)rbr, &sb, &sm);
			char name[16];
			snprintf(name, sizeof(name), "%s/L", moe_type_get(t)->name);
			printf("%-7s %7zu %16.1f %5.1f %16.1f %5.1f %12.0f%%\n", name, rbr, cb, cm,
			       sb, sm, 100 * sb / triad);
		}
		free(bigr);
	}
	free(ta);
	free(tb);
	free(tc);
	free(y);
	free(act);
	free(a);
	free(x);
	free(big);
	return 0;
}
