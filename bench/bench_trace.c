/*
 * bench_trace.c - `moemesh bench trace -t TRACE -m MODEL [cluster options]`:
 * replays a routing trace (model/trace.h; run/serve --trace) against a
 * placement of the experts and says, per step and in summary, what each
 * worker would have had to do.
 *
 * The placement is the one `run` and `serve` start with for the same
 * options (moe_placement_compute: moe_clu_place without workers, as `plan`
 * does).  Per step and worker: the (token, expert) pairs it computes (a
 * replicated expert's pairs rotate among its holders by token index, as
 * dispatch sends them) and the distinct experts it reads, summed over the
 * layers; per step: the distinct experts of the whole cluster (the expert
 * slices read) beside the uniform-routing estimate `plan` uses,
 * n_layer x E x (1 - (1 - k/E)^tokens), and two imbalances as rebalance.c
 * defines them, sum over layers of the busiest worker's load over the sum
 * of the mean worker's: of pairs (compute) and of distinct experts (bytes
 * read).  Writes PREFIX.csv (one row per step), prints the summary (mean,
 * p50, p99, max) and plots PREFIX.png with gnuplot when it is installed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: moemesh bench trace -t TRACE -m MODEL.gguf (--workers N | --cluster FILE |\n"
	       "                           --worker URL...) [--placement memory|round-robin]\n"
	       "                           [--replicate all|E,E,...] [-o PREFIX]\n"
	       "       moemesh bench trace --record-cost FILE\n\n"
	       "Replays TRACE (written by run/serve --trace on MODEL) against the placement\n"
	       "those cluster options give at start (nothing is contacted; workers without a\n"
	       "\"mem\" cap count as equal).  Per step: each worker's (token, expert) pairs\n"
	       "and distinct experts, the cluster's distinct experts beside the uniform-\n"
	       "routing estimate, and the imbalance (busiest worker / mean, summed over\n"
	       "layers) of pairs and of distinct experts.  Writes PREFIX.csv (default\n"
	       "bench_trace), PREFIX.png with gnuplot, and a summary on stdout.\n"
	       "--record-cost FILE: what recording a trace costs the step thread per step,\n"
	       "on Qwen3-Next-80B's routing shape (48 layers, 10 of 512 experts) written\n"
	       "to FILE, at 1, 16 and 256 tokens per step.\n");
}

/* Nearest-rank percentile q of v[0..n) (sorted here). */
static double pct(double *v, size_t n, double q)
{
	if (n == 0)
		return 0.0;
	size_t r = (size_t)ceil(q * (double)n);
	r = r < 1 ? 1 : r > n ? n : r;
	return v[r - 1];
}

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

typedef struct series {
	double *v;
	size_t n, cap;
} series;

static bool series_add(series *s, double x)
{
	if (s->n == s->cap) {
		const size_t cap = s->cap ? 2 * s->cap : 1024;
		double *p = realloc(s->v, cap * sizeof *p);
		if (p == NULL)
			return false;
		s->v = p;
		s->cap = cap;
	}
	s->v[s->n++] = x;
	return true;
}

static void summary(const char *what, series *s)
{
	double sum = 0;
	for (size_t i = 0; i < s->n; i++)
		sum += s->v[i];
	const double mean = s->n ? sum / (double)s->n : 0.0;
	qsort(s->v, s->n, sizeof *s->v, cmp_double);
	printf("%-22s mean %8.3f  p50 %8.3f  p99 %8.3f  max %8.3f\n", what, mean,
	       pct(s->v, s->n, 0.5), pct(s->v, s->n, 0.99), s->n ? s->v[s->n - 1] : 0.0);
}

static double mean_of(const series *s)
{
	double sum = 0;
	for (size_t i = 0; i < s->n; i++)
		sum += s->v[i];
	return s->n ? sum / (double)s->n : 0.0;
}

static void plot(const char *prefix, const char *csv)
{
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		printf("gnuplot not found: no plot\n");
		return;
	}
	char script[1024], png[1024], cmd[1100];
	snprintf(script, sizeof script, "%s.gp", prefix);
	snprintf(png, sizeof png, "%s.png", prefix);
	FILE *f = fopen(script, "w");
	if (f == NULL) {
		printf("cannot write %s: no plot\n", script);
		return;
	}
	fprintf(f,
	        "set terminal pngcairo size 1200,500 noenhanced\n"
	        "set output '%s'\n"
	        "set datafile separator ','\n"
	        "set key autotitle columnhead top right\n"
	        "set multiplot layout 1,2\n"
	        "set grid\n"
	        "set title 'imbalance per step (busiest worker / mean, over layers)'\n"
	        "set xlabel 'step'\n"
	        "set yrange [1:*]\n"
	        "plot '%s' using 1:6 with lines lw 1, '' using 1:7 with lines lw 1\n"
	        "set title 'distinct experts per step (all layers)'\n"
	        "set yrange [0:*]\n"
	        "plot '%s' using 1:4 with lines lw 1, '' using 1:5 with lines lw 1 dt 2\n"
	        "unset multiplot\n",
	        png, csv, csv);
	fclose(f);
	snprintf(cmd, sizeof cmd, "gnuplot '%s'", script);
	if (system(cmd) == 0)
		printf("plot: %s\n", png);
	else
		printf("gnuplot failed: no plot\n");
}

/* ---- what recording costs the step path --------------------------------------------- */

static moe_err null_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                          const float *weights, int n_used)
{
	(void)ctx, (void)il, (void)n_tok, (void)x, (void)ids, (void)weights, (void)n_used;
	return MOE_OK;
}

static moe_err null_finish(void *ctx, moe_fix_t *acc)
{
	(void)ctx, (void)acc;
	return MOE_OK;
}

/* Steps of Qwen3-Next-80B's routing shape (48 layers, 10 of 512 experts,
 * weights) recorded into file through the writer's backend wrapper around a
 * backend that does nothing: the time the step thread spends per step
 * (begin, 48 layers' copies, end) at 1, 16 and 256 tokens. */
static int record_cost(const char *file)
{
	enum { NL = 48, K = 10, NE = 512 };
	static const int batches[3] = {1, 16, 256};
	int32_t *ids = malloc(256 * K * sizeof *ids), *slot = calloc(256, sizeof *slot);
	int32_t *pos = malloc(256 * sizeof *pos);
	float *wts = malloc(256 * K * sizeof *wts);
	int rc = 0;
	if (ids == NULL || slot == NULL || pos == NULL || wts == NULL) {
		fprintf(stderr, "moemesh bench trace: no memory\n");
		rc = 1;
	}
	for (int i = 0; rc == 0 && i < 256 * K; i++) {
		ids[i] = (i * 37) % NE; /* 37 is prime to 512: a token's 10 are distinct */
		wts[i] = 1.0f / K;
	}
	for (int bi = 0; bi < 3 && rc == 0; bi++) {
		const int nt = batches[bi], steps = 200000 / nt;
		const moe_trace_info info = {
		    .flags = MOE_TRACE_WEIGHTS, .n_layer = NL, .n_expert = NE, .k = K};
		moe_trace_writer *w;
		if (moe_trace_writer_create(&w, file, &info) != MOE_OK) {
			fprintf(stderr, "moemesh bench trace: %s\n", moe_err_detail());
			rc = 1;
			break;
		}
		const moe_expert_backend inner = {.start = null_start, .finish = null_finish};
		const moe_expert_backend be = moe_trace_writer_backend(w, &inner);
		for (int t = 0; t < nt; t++)
			pos[t] = t;
		const double t0 = moe_now_s();
		for (int st = 0; st < steps; st++) {
			const moe_batch b = {.n_tok = nt, .slot = slot, .pos = pos};
			moe_trace_writer_step_begin(w, &b, NULL, 1);
			for (int il = 0; il < NL; il++) {
				(void)be.start(be.ctx, il, nt, NULL, ids, wts, K);
				(void)be.finish(be.ctx, NULL);
			}
			moe_trace_writer_step_end(w, true);
			for (int t = 0; t < nt; t++)
				pos[t] += nt;
		}
		const double dt = moe_now_s() - t0;
		uint64_t rec, drop;
		bool failed;
		moe_trace_writer_counts(w, &rec, &drop, &failed);
		const moe_err err = moe_trace_writer_close(w);
		moe_trace_writer_destroy(w);
		if (err != MOE_OK) {
			fprintf(stderr, "moemesh bench trace: %s\n", moe_err_detail());
			rc = 1;
			break;
		}
		const double bytes = 16.0 + 8.0 * nt + 6.0 * NL * nt * K + 8.0;
		printf(
		    "record cost: %3d tokens per step (%7.0f bytes): %8.2f us per step on the step "
		    "thread; %llu recorded, %llu dropped\n",
		    nt, bytes, dt / steps * 1e6, (unsigned long long)rec, (unsigned long long)drop);
	}
	free(ids);
	free(slot);
	free(pos);
	free(wts);
	return rc;
}

int moe_bench_trace(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--record-cost") == 0)
		return record_cost(argv[2]);
	const char *trace = NULL, *model = NULL, *prefix = "bench_trace";
	moe_cluster_opts co = {0};
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		const moe_err ce = moe_cluster_parse_arg(&co, &i, argc, argv);
		if (ce == MOE_OK)
			continue;
		if (ce != MOE_ERR_NOT_FOUND) {
			fprintf(stderr, "moemesh bench trace: %s\n", moe_err_detail());
			return 2;
		}
		if (i + 1 >= argc) {
			usage(stderr);
			return 2;
		}
		if (strcmp(s, "-t") == 0)
			trace = argv[++i];
		else if (strcmp(s, "-m") == 0)
			model = argv[++i];
		else if (strcmp(s, "-o") == 0)
			prefix = argv[++i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (trace == NULL || model == NULL || co.spawn + co.n_urls < 1) {
		usage(stderr);
		return 2;
	}

	int rc = 1;
	moe_err err;
	moe_model *m = NULL;
	moe_trace_reader *r = NULL;
	moe_placement pl = {0};
	FILE *out = NULL;
	int *owner = NULL;       /* [n_layer][n_expert][MAX_LINKS + 1]: holders, count last */
	uint32_t *cnt = NULL;    /* [n_expert] a layer's pairs per expert this step */
	uint64_t *wpairs = NULL; /* [n_links] this step */
	uint64_t *wdist = NULL;
	uint64_t *tot_pairs = NULL, *tot_dist = NULL; /* [n_links] over the trace */
	uint8_t *seen = NULL;                         /* [n_links][n_expert] this layer */
	series imb = {0}, rimb = {0}, dist = {0}, uni = {0}, tok = {0};
	char csv[1024];
	snprintf(csv, sizeof csv, "%s.csv", prefix);

	if ((err = moe_model_open(&m, model)) != MOE_OK ||
	    (err = moe_trace_reader_open(&r, trace)) != MOE_OK)
		goto out_fail;
	const moe_hparams *hp = moe_model_hparams(m);
	const moe_trace_info *h = moe_trace_reader_info(r);
	uint8_t id[MOE_ID_BYTES];
	if ((err = moe_model_identity(id, moe_model_gguf(m))) != MOE_OK)
		goto out_fail;
	if (memcmp(id, h->model_id, sizeof id) != 0 || h->n_layer != (uint32_t)hp->n_layer ||
	    h->n_expert != (uint32_t)hp->n_expert || h->k != (uint32_t)hp->n_expert_used) {
		err = moe_fail(MOE_ERR_MISMATCH,
		               "%s was not written with %s (its model identity or its %u layers, "
		               "%u experts, %u per token differ)",
		               trace, model, h->n_layer, h->n_expert, h->k);
		goto out_fail;
	}
	if ((err = moe_placement_compute(&pl, m, &co)) != MOE_OK)
		goto out_fail;
	const int nw = pl.n_links, nl = hp->n_layer, ne = hp->n_expert, k = (int)h->k;
	const size_t stride = MOE_CLUSTER_MAX_LINKS + 1;
	owner = malloc((size_t)nl * (size_t)ne * stride * sizeof *owner);
	cnt = malloc((size_t)ne * sizeof *cnt);
	wpairs = malloc((size_t)nw * sizeof *wpairs);
	wdist = malloc((size_t)nw * sizeof *wdist);
	tot_pairs = calloc((size_t)nw, sizeof *tot_pairs);
	tot_dist = calloc((size_t)nw, sizeof *tot_dist);
	seen = malloc((size_t)nw * (size_t)ne);
	if (owner == NULL || cnt == NULL || wpairs == NULL || wdist == NULL || tot_pairs == NULL ||
	    tot_dist == NULL || seen == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "bench trace: tables");
		goto out_fail;
	}
	for (int il = 0; il < nl; il++)
		for (int e = 0; e < ne; e++) {
			int *o = owner + ((size_t)il * (size_t)ne + (size_t)e) * stride;
			int n = 0;
			for (int w = 0; w < nw; w++)
				if (pl.held[w][(size_t)il * (size_t)ne + (size_t)e])
					o[n++] = w;
			o[MOE_CLUSTER_MAX_LINKS] = n;
			if (n == 0) {
				err =
				    moe_fail(MOE_ERR_INVAL,
				             "placement: layer %d expert %d has no holder", il, e);
				goto out_fail;
			}
		}
	if ((out = fopen(csv, "w")) == NULL) {
		err = moe_fail(MOE_ERR_IO, "bench trace: cannot write %s", csv);
		goto out_fail;
	}
	fprintf(out,
	        "step,tokens,seqs,distinct,uniform_distinct,imbalance_pairs,imbalance_distinct");
	for (int w = 0; w < nw; w++)
		fprintf(out, ",%s_pairs,%s_distinct", pl.name[w], pl.name[w]);
	fprintf(out, "\n");

	uint64_t n_steps = 0, dropped = 0, n_tok_all = 0;
	for (;;) {
		moe_trace_step s;
		bool done;
		if ((err = moe_trace_reader_next(r, &s, &done, &n_steps, &dropped)) != MOE_OK)
			goto out_fail;
		if (done)
			break;
		memset(wpairs, 0, (size_t)nw * sizeof *wpairs);
		memset(wdist, 0, (size_t)nw * sizeof *wdist);
		uint64_t distinct = 0;
		double max_p = 0, max_d = 0, sum_p = 0, sum_d = 0;
		for (int il = 0; il < nl; il++) {
			memset(cnt, 0, (size_t)ne * sizeof *cnt);
			memset(seen, 0, (size_t)nw * (size_t)ne);
			uint64_t lp[MOE_CLUSTER_MAX_LINKS] = {0}, ld[MOE_CLUSTER_MAX_LINKS] = {0};
			for (uint32_t t = 0; t < s.n_tok; t++)
				for (int j = 0; j < k; j++) {
					const int e = s.ids[((size_t)il * s.n_tok + t) * (size_t)k +
					                    (size_t)j];
					const int *o =
					    owner + ((size_t)il * (size_t)ne + (size_t)e) * stride;
					const int w = o[t % (uint32_t)o[MOE_CLUSTER_MAX_LINKS]];
					distinct += cnt[e]++ == 0;
					lp[w]++;
					if (!seen[(size_t)w * (size_t)ne + (size_t)e]) {
						seen[(size_t)w * (size_t)ne + (size_t)e] = 1;
						ld[w]++;
					}
				}
			uint64_t mp = 0, md = 0, tp = 0, td = 0;
			for (int w = 0; w < nw; w++) {
				wpairs[w] += lp[w];
				wdist[w] += ld[w];
				mp = lp[w] > mp ? lp[w] : mp;
				md = ld[w] > md ? ld[w] : md;
				tp += lp[w];
				td += ld[w];
			}
			max_p += (double)mp;
			max_d += (double)md;
			sum_p += (double)tp / nw;
			sum_d += (double)td / nw;
		}
		const double kp = (double)k / ne;
		const double uniform = (double)nl * ne * (1.0 - pow(1.0 - kp, (double)s.n_tok));
		const double ip = sum_p > 0 ? max_p / sum_p : 1.0,
		             id_ = sum_d > 0 ? max_d / sum_d : 1.0;
		/* sequences in the step: distinct ids (a step has as many as the
		 * server's slots, so a short list does; past 1024 they stop counting) */
		uint32_t seqs[1024], n_seq = 0;
		for (uint32_t t = 0; t < s.n_tok; t++) {
			uint32_t q = 0;
			while (q < n_seq && seqs[q] != s.seq[t])
				q++;
			if (q == n_seq && n_seq < 1024)
				seqs[n_seq++] = s.seq[t];
		}
		fprintf(out, "%llu,%u,%u,%llu,%.2f,%.4f,%.4f", (unsigned long long)s.step, s.n_tok,
		        n_seq, (unsigned long long)distinct, uniform, ip, id_);
		for (int w = 0; w < nw; w++) {
			fprintf(out, ",%llu,%llu", (unsigned long long)wpairs[w],
			        (unsigned long long)wdist[w]);
			tot_pairs[w] += wpairs[w];
			tot_dist[w] += wdist[w];
		}
		fprintf(out, "\n");
		n_tok_all += s.n_tok;
		if (!series_add(&imb, ip) || !series_add(&rimb, id_) ||
		    !series_add(&dist, (double)distinct) || !series_add(&uni, uniform) ||
		    !series_add(&tok, (double)s.n_tok)) {
			err = moe_fail(MOE_ERR_NOMEM, "bench trace: per-step figures");
			goto out_fail;
		}
	}
	if (fclose(out) != 0) {
		out = NULL;
		err = moe_fail(MOE_ERR_IO, "bench trace: writing %s", csv);
		goto out_fail;
	}
	out = NULL;

	printf("trace %s: %zu steps (%llu dropped by the writer), %llu tokens; %d workers\n", trace,
	       imb.n, (unsigned long long)dropped, (unsigned long long)n_tok_all, nw);
	uint64_t all_pairs = 0;
	for (int w = 0; w < nw; w++)
		all_pairs += tot_pairs[w];
	for (int w = 0; w < nw; w++)
		printf("worker %-16s pairs %12llu (%5.1f %%)  distinct experts read %12llu\n",
		       pl.name[w], (unsigned long long)tot_pairs[w],
		       all_pairs ? 100.0 * (double)tot_pairs[w] / (double)all_pairs : 0.0,
		       (unsigned long long)tot_dist[w]);
	const double dmean = mean_of(&dist), umean = mean_of(&uni), tmean = mean_of(&tok);
	summary("tokens per step", &tok);
	summary("imbalance (pairs)", &imb);
	summary("imbalance (distinct)", &rimb);
	summary("distinct per step", &dist);
	printf("distinct experts per step: measured mean %.1f, uniform routing %.1f (%.1f %%)\n",
	       dmean, umean, umean > 0 ? 100.0 * dmean / umean : 0.0);
	printf("csv: %s\n", csv);
	plot(prefix, csv);
	printf("steps=%zu tokens_mean=%.2f imbalance_mean=%.4f imbalance_p99=%.4f "
	       "distinct_mean=%.2f uniform_mean=%.2f\n",
	       imb.n, tmean, mean_of(&imb), pct(imb.v, imb.n, 0.99), dmean, umean);
	rc = 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh bench trace: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	if (out != NULL)
		fclose(out);
	free(imb.v);
	free(rimb.v);
	free(dist.v);
	free(uni.v);
	free(tok.v);
	free(owner);
	free(cnt);
	free(wpairs);
	free(wdist);
	free(tot_pairs);
	free(tot_dist);
	free(seen);
	moe_placement_free(&pl);
	moe_trace_reader_destroy(r);
	moe_model_destroy(m);
	return rc;
}
