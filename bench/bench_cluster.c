/*
 * bench_cluster.c - `moemesh bench cluster [-m MODEL.gguf]`: expert
 * parallelism on this box.
 *
 * 1. Decode tok/s at batch 1 and batch 16 (16 sequences, one token each per
 *    step; --batches B,B,.. for others, up to 4) for 0 (one process), 1, 2 and
 *    3 spawned workers (--min-workers, --max-workers) (ipc: Unix-domain
 *    data sockets), with the time per MoE layer split into coordinator
 *    compute (everything but waiting for results), network (waiting beyond
 *    the slowest worker's compute) and worker compute.
 * 2. Dispatch round trip: one token through the cluster backend to one
 *    worker on tcp://127.0.0.1 (minus the worker's reported compute) against
 *    a raw TCP_NODELAY ping-pong of the same frame sizes whose far side is
 *    busy for that same compute time before answering (minus that time), p50
 *    of --iters; the ratio is taken against that. The plain ping-pong is
 *    printed too.
 * 3. Worker load: expert bytes / load time of one worker holding every
 *    expert (its start and handshake included), against a sequential
 *    O_DIRECT read of the same file.
 * With --secret-file F every link (workers spawned or on tcp://) is sealed
 * (proto/seal.c), and 4. a plain and a sealed cluster run side by side,
 * alternated step by step (and round trip by round trip), give the
 * encryption's cost under one and the same load.  Writes DIR/bench_cluster.csv and .png (gnuplot)
 * and ends with `rtt_ratio=X.XX net_pct_b1=N load_pct_of_seq=N`.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh bench cluster [-m MODEL.gguf] [-n STEPS] [--threads N]\n"
	        "                              [--worker-threads N] [--max-workers N]\n"
	        "                              [--iters N] [--net-delay-us US] [-o DIR]\n"
	        "                              [--min-workers N] [--batches B,B,..]\n"
	        "                              [--secret-file F]\n"
	        "       moemesh bench cluster --overlap-ab [--worker URL]... [-m MODEL.gguf]\n"
	        "                              [-n STEPS] [--batches B,B,..] (two micro-batches\n"
	        "                              vs one pass, alternated; spawned workers without\n"
	        "                              --worker)\n"
	        "       moemesh bench cluster --netns ... (over real links: --netns --help)\n\n"
	        "Default model models/kjv-qwen3next-Q4_K_M.gguf, 16 decode steps, 0 to 3\n"
	        "workers, batches 1,16, 2000 round trips, output in bench/out.\n");
}

typedef struct bargs {
	const char *model, *dir;
	const char *secret; /* --secret-file: sealed links */
	int steps, threads, wthreads, min_workers, max_workers, iters, delay_us;
	int batches[4], n_batches;
	bool overlap_ab;     /* --overlap-ab: only the overlap A/B (bench_overlap.c) */
	const char *urls[8]; /* --worker URL: the A/B's workers instead of spawned ones */
	int n_urls;
} bargs;

typedef struct row {
	int workers, batch;
	double tok_s, coord_us, net_us, worker_us;
} row;

static int cmp_u64(const void *a, const void *b)
{
	const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Decode speed for one configuration on w spawned workers (0: one
 * process); fills r (per-layer split if w > 0). */
static moe_err decode_run(row *r, const bargs *a, moe_model *m, int w, int batch)
{
	const moe_cluster_opts co = {.spawn = w,
	                             .worker_threads = a->wthreads,
	                             .net_delay_us = a->delay_us,
	                             .secret_file = a->secret};
	moe_bench_decode_out d;
	const moe_err err =
	    moe_bench_decode(&d, m, a->model, w > 0 ? &co : NULL, batch, a->steps, a->threads);
	if (err == MOE_OK)
		*r = (row){.workers = w,
		           .batch = batch,
		           .tok_s = d.tok_s,
		           .coord_us = d.coord_us,
		           .net_us = d.net_us,
		           .worker_us = d.worker_us};
	return err;
}

/* ---- raw ping-pong ------------------------------------------------------------- */

static int read_full(int fd, void *buf, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	for (size_t put = 0; put < n;) {
		ssize_t r = send(fd, (const char *)buf + put, n - put, MSG_NOSIGNAL);
		if (r <= 0)
			return -1;
		put += (size_t)r;
	}
	return 0;
}

/* p50 of a TCP_NODELAY ping-pong over 127.0.0.1: out bytes there, back back,
 * the far side busy for work_us before it answers (as a worker computes), that
 * time not counted. On a VM a thread that waits milliseconds pays ~0.1 ms to be
 * woken, which the dispatch pays too: the fair baseline waits as long. */
static double raw_rtt_us(size_t out, size_t back, int iters, double work_us)
{
	const uint64_t work_ns = (uint64_t)(work_us * 1e3);
	int lfd, fd = -1;
	uint16_t port = 0;
	if (moe_sock_listen_tcp(&lfd, "127.0.0.1", &port) != MOE_OK)
		return 0;
	uint8_t *buf = calloc(1, out > back ? out : back);
	uint64_t *t = malloc((size_t)iters * sizeof *t);
	pid_t pid = fork();
	if (pid == 0) {
		int c = accept(lfd, NULL, NULL);
		moe_sock_nodelay(c);
		for (int i = 0; i < iters; i++) {
			if (read_full(c, buf, out) != 0)
				break;
			for (const uint64_t t0 = moe_now_ns(); moe_now_ns() - t0 < work_ns;)
				;
			if (write_full(c, buf, back) != 0)
				break;
		}
		_exit(0);
	}
	close(lfd);
	double p50 = 0;
	if (buf && t && moe_sock_connect_tcp(&fd, "127.0.0.1", port, 5000) == MOE_OK) {
		int i = 0;
		for (; i < iters; i++) {
			const uint64_t t0 = moe_now_ns();
			if (write_full(fd, buf, out) != 0 || read_full(fd, buf, back) != 0)
				break;
			const uint64_t dt = moe_now_ns() - t0;
			t[i] = dt > work_ns ? dt - work_ns : 0;
		}
		if (i == iters) {
			qsort(t, (size_t)iters, sizeof *t, cmp_u64);
			p50 = (double)t[iters / 2] / 1e3;
		}
		close(fd);
	}
	waitpid(pid, NULL, 0);
	free(buf);
	free(t);
	return p50;
}

/* Starts `moemesh worker` on tcp://127.0.0.1:port (this binary), with
 * --secret-file secret unless NULL. */
static pid_t start_tcp_worker(const bargs *a, int port, const char *secret)
{
	char url[64], thr[16];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	snprintf(thr, sizeof thr, "%d", a->wthreads ? a->wthreads : 1);
	pid_t pid = fork();
	if (pid == 0) {
		if (secret != NULL)
			execl("/proc/self/exe", "moemesh", "worker", "-m", a->model, "--listen",
			      url, "--threads", thr, "--quiet", "--secret-file", secret,
			      (char *)NULL);
		else
			execl("/proc/self/exe", "moemesh", "worker", "-m", a->model, "--listen",
			      url, "--threads", thr, "--quiet", (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Dispatch round trip of one token to one tcp worker, minus its compute. */
static moe_err dispatch_rtt(double *p50_us, double *compute_us, size_t *out_bytes,
                            size_t *back_bytes, const bargs *a, moe_model *m)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const int port = 20000 + (int)(getpid() % 20000);
	char url[64];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	pid_t pid = start_tcp_worker(a, port, a->secret);
	moe_cluster_opts co = {.n_urls = 1, .secret_file = a->secret};
	co.urls[0] = url;
	moe_cluster *cl = NULL;
	moe_err err = moe_cluster_create(&cl, m, a->model, &co);
	if (err != MOE_OK)
		goto out_kill;
	const moe_expert_backend *be = moe_cluster_backend(cl);
	const int nu = hp->n_expert_used, ne = hp->n_embd;
	float *x = malloc((size_t)ne * sizeof *x), *w = malloc((size_t)nu * sizeof *w);
	int32_t *ids = malloc((size_t)nu * sizeof *ids);
	moe_fix_t *acc = calloc((size_t)ne, sizeof *acc);
	uint64_t *t = malloc((size_t)a->iters * sizeof *t);
	if (!x || !w || !ids || !acc || !t) {
		err = moe_fail(MOE_ERR_NOMEM, "rtt buffers");
		goto out_free;
	}
	for (int i = 0; i < ne; i++)
		x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
	for (int j = 0; j < nu; j++) {
		ids[j] = j;
		w[j] = 1.0f / (float)nu;
	}
	uint64_t comp0 = 0;
	for (int i = -50; i < a->iters; i++) {
		if (i == 0)
			comp0 = moe_cluster_link(cl, 0).compute_ns;
		const uint64_t t0 = moe_now_ns();
		const uint64_t c0 = moe_cluster_link(cl, 0).compute_ns;
		if ((err = be->start(be->ctx, 0, 1, x, ids, w, nu)) != MOE_OK ||
		    (err = be->finish(be->ctx, acc)) != MOE_OK)
			goto out_free;
		const uint64_t dt = moe_now_ns() - t0, dc = moe_cluster_link(cl, 0).compute_ns - c0;
		if (i >= 0)
			t[i] = dt > dc ? dt - dc : 0;
	}
	*compute_us = (double)(moe_cluster_link(cl, 0).compute_ns - comp0) / 1e3 / a->iters;
	qsort(t, (size_t)a->iters, sizeof *t, cmp_u64);
	*p50_us = (double)t[a->iters / 2] / 1e3;
	/* frame sizes: DISPATCH header (~2 x n_used values) + 1 activation row,
	 * RESULT header + one moe_fix_t row */
	const moe_expert_ffn *ffn = moe_model_experts(m, 0);
	*out_bytes =
	    moe_frame_payload_offset(24 + 10 * (size_t)nu) + moe_act_row_size(ffn->gate.type, ne);
	*back_bytes = moe_frame_payload_offset(24) + (size_t)ne * 8;
out_free:
	free(x);
	free(w);
	free(ids);
	free(acc);
	free(t);
	moe_cluster_destroy(cl);
out_kill:
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	return err;
}

/* ---- sealing ------------------------------------------------------------------------ */

/* p50 of sealing and opening (AES-256-GCM, proto/seal.c) one frame of out
 * bytes and one of back bytes, as a DISPATCH and its RESULT cross a sealed
 * link; 0 if libcrypto fails. */
static double seal_us(size_t out, size_t back, int iters)
{
	uint8_t key[MOE_SEAL_KEY] = {1}, tag[MOE_SEAL_TAG];
	moe_aead *a[4] = {0};
	const size_t n = out > back ? out : back;
	uint8_t *buf = moe_aligned_alloc(64, n);
	uint64_t *t = malloc((size_t)iters * sizeof *t);
	double p50 = 0;
	if (buf == NULL || t == NULL)
		goto out_free;
	memset(buf, 0x5a, n);
	for (int k = 0; k < 4; k++)
		if (moe_aead_create(&a[k], key, k % 2 == 0) != MOE_OK)
			goto out_free;
	for (int i = -50; i < iters; i++) {
		const uint64_t t0 = moe_now_ns();
		if (moe_aead_seal_frame(a[0], tag, buf, out) != MOE_OK ||
		    moe_aead_open_frame(a[1], buf, out, tag) != MOE_OK ||
		    moe_aead_seal_frame(a[2], tag, buf, back) != MOE_OK ||
		    moe_aead_open_frame(a[3], buf, back, tag) != MOE_OK)
			goto out_free;
		if (i >= 0)
			t[i] = moe_now_ns() - t0;
	}
	qsort(t, (size_t)iters, sizeof *t, cmp_u64);
	p50 = (double)t[iters / 2] / 1e3;
out_free:
	for (int k = 0; k < 4; k++)
		moe_aead_destroy(a[k]);
	moe_aligned_free(buf);
	free(t);
	return p50;
}

/* ---- sealed against plain, interleaved --------------------------------------------- */

/* On a shared, loaded machine two runs minutes apart see different loads;
 * these run a plain and a sealed cluster side by side and alternate them
 * step by step (or round trip by round trip), so both see the same load. */

typedef struct ab_side {
	moe_cluster *cl;
	moe_fwd *f;
	pid_t pid;
	int32_t slot[64];
} ab_side;

static void ab_close(ab_side *s)
{
	moe_fwd_destroy(s->f);
	moe_cluster_destroy(s->cl);
	if (s->pid > 0) {
		kill(s->pid, SIGTERM);
		waitpid(s->pid, NULL, 0);
	}
	*s = (ab_side){0};
}

/* A forward pass over one worker on tcp://127.0.0.1:port, sealed when
 * secret is set. */
static moe_err ab_open(ab_side *s, const bargs *a, moe_model *m, int batch, int port,
                       const char *secret)
{
	char url[64];
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
	s->pid = start_tcp_worker(a, port, secret);
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = batch;
	o.n_ctx = a->steps + 8;
	o.n_threads = a->threads;
	moe_cluster_opts co = {.n_urls = 1, .secret_file = secret};
	co.urls[0] = url;
	moe_err err = moe_cluster_create(&s->cl, m, a->model, &co);
	if (err == MOE_OK) {
		o.experts = moe_cluster_backend(s->cl);
		err = moe_fwd_create(&s->f, m, &o);
	}
	if (err == MOE_OK)
		moe_cluster_set_pool(s->cl, moe_fwd_pool(s->f));
	for (int b = 0; err == MOE_OK && b < batch; b++)
		err = moe_fwd_seq_open(s->f, &s->slot[b]);
	return err;
}

static int cmp_dbl(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* tok/s of each side over the same steps, and the median of the per-step
 * time ratio sealed / plain. */
static moe_err ab_decode(double *tok_plain, double *tok_sealed, double *ratio, const bargs *a,
                         moe_model *m, int batch)
{
	const moe_hparams *hp = moe_model_hparams(m);
	ab_side sd[2] = {0};
	double *t = malloc(2 * (size_t)a->steps * sizeof *t);
	double *r = malloc((size_t)a->steps * sizeof *r);
	float *logits = malloc((size_t)batch * (size_t)hp->n_vocab * sizeof *logits);
	moe_err err = MOE_OK;
	if (t == NULL || r == NULL || logits == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "interleaved run");
		goto out_free;
	}
	const int port = 20000 + (int)((getpid() + 11) % 20000);
	if ((err = ab_open(&sd[0], a, m, batch, port, NULL)) != MOE_OK ||
	    (err = ab_open(&sd[1], a, m, batch, port + 1, a->secret)) != MOE_OK)
		goto out_free;
	double sum[2] = {0, 0};
	for (int s = 0; s < a->steps + 2; s++) {
		int32_t tok[64], pos[64];
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)((s * 31 + b * 7 + 1) % hp->n_vocab);
			pos[b] = s;
		}
		for (int k = 0; k < 2; k++) {
			const int side = (s + k) % 2; /* which goes first alternates */
			const moe_batch mb = {
			    .n_tok = batch, .tokens = tok, .slot = sd[side].slot, .pos = pos};
			const double t0 = moe_now_s();
			if ((err = moe_fwd_step(sd[side].f, logits, &mb)) != MOE_OK)
				goto out_free;
			if (s >= 2) { /* two warm-up steps */
				t[2 * (s - 2) + side] = moe_now_s() - t0;
				sum[side] += t[2 * (s - 2) + side];
			}
		}
	}
	for (int i = 0; i < a->steps; i++)
		r[i] = t[2 * i + 1] / t[2 * i];
	qsort(r, (size_t)a->steps, sizeof *r, cmp_dbl);
	*tok_plain = (double)a->steps * batch / sum[0];
	*tok_sealed = (double)a->steps * batch / sum[1];
	*ratio = r[a->steps / 2];
out_free:
	ab_close(&sd[0]);
	ab_close(&sd[1]);
	free(t);
	free(r);
	free(logits);
	return err;
}

/* Dispatch round trips of one token to a plain and a sealed tcp worker,
 * alternated; p50 of each beyond the worker's compute. */
static moe_err ab_rtt(double p50[2], const bargs *a, moe_model *m)
{
	const moe_hparams *hp = moe_model_hparams(m);
	const int port = 20000 + (int)((getpid() + 7) % 20000);
	const int nu = hp->n_expert_used, ne = hp->n_embd;
	moe_cluster *cl[2] = {0};
	pid_t pid[2] = {0};
	float *x = malloc((size_t)ne * sizeof *x), *w = malloc((size_t)nu * sizeof *w);
	int32_t *ids = malloc((size_t)nu * sizeof *ids);
	moe_fix_t *acc = calloc((size_t)ne, sizeof *acc);
	uint64_t *t = malloc(2 * (size_t)a->iters * sizeof *t);
	moe_err err = MOE_OK;
	if (!x || !w || !ids || !acc || !t) {
		err = moe_fail(MOE_ERR_NOMEM, "rtt buffers");
		goto out_free;
	}
	for (int i = 0; i < ne; i++)
		x[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
	for (int j = 0; j < nu; j++) {
		ids[j] = j;
		w[j] = 1.0f / (float)nu;
	}
	for (int k = 0; k < 2; k++) {
		char url[64];
		snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port + k);
		pid[k] = start_tcp_worker(a, port + k, k ? a->secret : NULL);
		moe_cluster_opts co = {.n_urls = 1, .secret_file = k ? a->secret : NULL};
		co.urls[0] = url;
		if ((err = moe_cluster_create(&cl[k], m, a->model, &co)) != MOE_OK)
			goto out_free;
	}
	for (int i = -50; i < a->iters; i++) {
		for (int j = 0; j < 2; j++) {
			const int k = (i + j + 100) % 2; /* which goes first alternates */
			const moe_expert_backend *be = moe_cluster_backend(cl[k]);
			const uint64_t t0 = moe_now_ns(),
			               c0 = moe_cluster_link(cl[k], 0).compute_ns;
			if ((err = be->start(be->ctx, 0, 1, x, ids, w, nu)) != MOE_OK ||
			    (err = be->finish(be->ctx, acc)) != MOE_OK)
				goto out_free;
			const uint64_t dt = moe_now_ns() - t0,
			               dc = moe_cluster_link(cl[k], 0).compute_ns - c0;
			if (i >= 0)
				t[(size_t)k * (size_t)a->iters + (size_t)i] = dt > dc ? dt - dc : 0;
		}
	}
	for (int k = 0; k < 2; k++) {
		uint64_t *tk = t + (size_t)k * (size_t)a->iters;
		qsort(tk, (size_t)a->iters, sizeof *tk, cmp_u64);
		p50[k] = (double)tk[a->iters / 2] / 1e3;
	}
out_free:
	for (int k = 0; k < 2; k++) {
		moe_cluster_destroy(cl[k]);
		if (pid[k] > 0) {
			kill(pid[k], SIGTERM);
			waitpid(pid[k], NULL, 0);
		}
	}
	free(x);
	free(w);
	free(ids);
	free(acc);
	free(t);
	return err;
}

/* ---- load bandwidth ---------------------------------------------------------------- */

static void drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/* Sequential read of the whole file with O_DIRECT, 4 MiB at a time: what the
 * disk gives a plain reader, whatever the page cache holds (this process maps
 * the model, so the cache cannot be dropped for a buffered baseline). Falls
 * back to buffered reads after dropping the cache where O_DIRECT is refused. */
static double seq_read_gbs(const char *path, bool *direct)
{
	const size_t bs = 4u << 20;
	int fd = open(path, O_RDONLY | O_DIRECT);
	*direct = fd >= 0;
	if (fd < 0) {
		drop_cache(path);
		fd = open(path, O_RDONLY);
	}
	if (fd < 0)
		return 0;
	char *buf = moe_aligned_alloc(4096, bs);
	uint64_t total = 0;
	const double t0 = moe_now_s();
	ssize_t r;
	while (buf && (r = read(fd, buf, bs)) > 0)
		total += (uint64_t)r;
	const double dt = moe_now_s() - t0;
	moe_aligned_free(buf);
	close(fd);
	return dt > 0 ? (double)total / dt / 1e9 : 0;
}

static double load_gbs(const bargs *a, moe_model *m, double *bytes)
{
	drop_cache(a->model);
	moe_cluster_opts co = {.spawn = 1, .worker_threads = 1};
	moe_cluster *cl;
	if (moe_cluster_create(&cl, m, a->model, &co) != MOE_OK)
		return 0;
	const moe_cluster_link_stats s = moe_cluster_link(cl, 0);
	moe_cluster_destroy(cl);
	*bytes = (double)s.bytes_loaded;
	return s.load_seconds > 0 ? (double)s.bytes_loaded / s.load_seconds / 1e9 : 0;
}

/* ---- output ------------------------------------------------------------------------ */

static void plot(const char *dir, const char *csv)
{
	FILE *f = moe_bench_plot_open(dir, "bench_cluster", 1200, 500);
	if (f == NULL)
		return;
	fprintf(f,
	        "set title 'decode tok/s vs workers'\nset xlabel 'workers (0 = one process)'\n"
	        "set ylabel 'tok/s'\nset key top right\nset grid\n"
	        "plot '%s' using 1:($2==1?$3:1/0) with linespoints title 'batch 1', "
	        "'' using 1:($2==16?$3:1/0) with linespoints title 'batch 16'\n"
	        "set title 'per-layer time, batch 1 (us)'\nset style data histograms\n"
	        "set style histogram rowstacked\nset style fill solid 0.8\nset boxwidth 0.6\n"
	        "set ylabel 'us per layer'\nset xlabel 'workers'\n"
	        "plot '%s' every ::0 using ($2==1?$4:0):xtic(1) title 'coordinator', '' using "
	        "($2==1?$5:0) title 'network', '' using ($2==1?$6:0) title 'worker compute'\n",
	        csv, csv);
	moe_bench_plot_run(f, dir, "bench_cluster");
}

int moe_bench_cluster(int argc, char **argv)
{
	bargs a = {.model = "models/kjv-qwen3next-Q4_K_M.gguf",
	           .dir = "bench/out",
	           .steps = 16,
	           .max_workers = 3,
	           .iters = 2000,
	           .batches = {1, 16},
	           .n_batches = 2};
	int bad = 0;
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--netns") == 0) /* over real links: bench_netns.c */
			return moe_bench_cluster_netns(argc, argv);
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(s, "--overlap-ab") == 0) {
			a.overlap_ab = true;
			continue;
		}
		if (v == NULL)
			goto out_usage;
		i++;
		if (strcmp(s, "-m") == 0)
			a.model = v;
		else if (strcmp(s, "-o") == 0)
			a.dir = v;
		else if (strcmp(s, "-n") == 0)
			bad |= moe_parse_int(&a.steps, v, 1, 1000000);
		else if (strcmp(s, "--threads") == 0)
			bad |= moe_parse_int(&a.threads, v, 0, 1024);
		else if (strcmp(s, "--worker-threads") == 0)
			bad |= moe_parse_int(&a.wthreads, v, 0, 1024);
		else if (strcmp(s, "--max-workers") == 0)
			bad |= moe_parse_int(&a.max_workers, v, 0, 8);
		else if (strcmp(s, "--min-workers") == 0)
			bad |= moe_parse_int(&a.min_workers, v, 0, 8);
		else if (strcmp(s, "--batches") == 0) {
			const char *p = v;
			a.n_batches = 0;
			while (!bad && *p) {
				char *end;
				const long b = strtol(p, &end, 10);
				bad |= end == p || b < 1 || b > 64 || a.n_batches == 4 ||
				       (*end != ',' && *end != '\0');
				if (!bad)
					a.batches[a.n_batches++] = (int)b;
				p = *end ? end + 1 : end;
			}
			bad |= a.n_batches == 0;
		} else if (strcmp(s, "--iters") == 0)
			bad |= moe_parse_int(&a.iters, v, 10, 10000000);
		else if (strcmp(s, "--net-delay-us") == 0)
			bad |= moe_parse_int(&a.delay_us, v, 0, 10000000);
		else if (strcmp(s, "--secret-file") == 0)
			a.secret = v;
		else if (strcmp(s, "--worker") == 0 && a.n_urls < 8)
			a.urls[a.n_urls++] = v;
		else
			goto out_usage;
	}
	if (bad)
		goto out_usage;

	moe_model *m;
	moe_err err = moe_model_open(&m, a.model);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh bench cluster: %s: %s\n", moe_err_name(err),
		        moe_err_detail());
		return 1;
	}
	int rc = 1;
	row rows[4 * 9];
	int nr = 0;
	if (a.overlap_ab) { /* --max-workers spawned workers, --batches */
		moe_cluster_opts co = {.spawn = a.max_workers,
		                       .worker_threads = a.wthreads,
		                       .net_delay_us = a.delay_us,
		                       .secret_file = a.secret,
		                       .overlap = true};
		for (int i = 0; i < a.n_urls; i++)
			co.urls[i] = a.urls[i];
		co.n_urls = a.n_urls;
		co.spawn = a.n_urls > 0 ? 0 : a.max_workers;
		char label[64], csv[1100];
		snprintf(label, sizeof label, "%s w%d delay%d", a.n_urls > 0 ? "url" : "ipc",
		         a.n_urls > 0 ? a.n_urls : a.max_workers, a.delay_us);
		snprintf(csv, sizeof csv, "%s/bench_overlap.csv", a.dir);
		moe_bench_overlap_opts oo = {.model = a.model,
		                             .label = label,
		                             .csv = csv,
		                             .co = &co,
		                             .n_batches = a.n_batches,
		                             .steps = a.steps,
		                             .threads = a.threads};
		memcpy(oo.batches, a.batches, sizeof a.batches);
		printf(
		    "model %s, %d decode steps, %d spawned workers, net delay %d us per message\n",
		    a.model, a.steps, a.max_workers, a.delay_us);
		rc = moe_bench_overlap_ab(m, &oo);
		moe_model_destroy(m);
		return rc;
	}
	printf("model %s, %d decode steps, net delay %d us per message, links %s\n", a.model,
	       a.steps, a.delay_us, a.secret ? "sealed (--secret-file)" : "plain");
	printf("%8s %6s %10s %14s %12s %14s\n", "workers", "batch", "tok/s", "coord us/layer",
	       "net us/layer", "worker us/layer");
	for (int w = a.min_workers; w <= a.max_workers; w++) {
		for (int bi = 0; bi < a.n_batches; bi++) {
			row *r = &rows[nr];
			if ((err = decode_run(r, &a, m, w, a.batches[bi])) != MOE_OK)
				goto out_fail;
			printf("%8d %6d %10.1f %14.1f %12.1f %14.1f\n", r->workers, r->batch,
			       r->tok_s, r->coord_us, r->net_us, r->worker_us);
			nr++;
		}
	}
	double rtt = 0, comp = 0;
	size_t ob = 0, bb = 0;
	if ((err = dispatch_rtt(&rtt, &comp, &ob, &bb, &a, m)) != MOE_OK)
		goto out_fail;
	const double raw0 = raw_rtt_us(ob, bb, a.iters, 0);
	const double raw = raw_rtt_us(ob, bb, a.iters, comp);
	printf("dispatch round trip (tcp://127.0.0.1, 1 token, %zu B out / %zu B back): p50 "
	       "%.1f us beyond %.1f us worker compute; raw TCP ping-pong p50 %.1f us with the "
	       "far side busy as long (%.1f us without)\n",
	       ob, bb, rtt, comp, raw, raw0);
	/* what sealing costs per layer and worker: one DISPATCH and its RESULT
	 * at batch 1 and at batch 16 (16 activation rows out, 16 sums back) */
	{
		const moe_hparams *hp = moe_model_hparams(m);
		const size_t act =
		                 ob - moe_frame_payload_offset(24 + 10 * (size_t)hp->n_expert_used),
		             sum = (size_t)hp->n_embd * 8;
		const size_t ob16 = ob + 15 * act, bb16 = bb + 15 * sum;
		const double s1 = seal_us(ob, bb, a.iters), s16 = seal_us(ob16, bb16, a.iters);
		printf(
		    "sealing (AES-256-GCM, seal + open, p50): batch 1 %zu B + %zu B %.2f us per "
		    "layer and worker (%.1f us per token over %d layers); batch 16 %zu B + %zu B "
		    "%.2f us\n",
		    ob, bb, s1, s1 * hp->n_layer, hp->n_layer, ob16, bb16, s16);
	}
	if (a.secret != NULL) {
		printf("sealed against plain, interleaved (1 worker each on tcp://127.0.0.1, "
		       "alternated "
		       "step by step):\n");
		for (int bi = 0; bi < a.n_batches; bi++) {
			double tp = 0, ts = 0, ratio = 0;
			if ((err = ab_decode(&tp, &ts, &ratio, &a, m, a.batches[bi])) != MOE_OK)
				goto out_fail;
			printf("  batch %d: plain %.1f tok/s, sealed %.1f tok/s; per-step time "
			       "sealed/plain p50 %.3f (%+.1f %%)\n",
			       a.batches[bi], tp, ts, ratio, 100.0 * (ratio - 1));
		}
		double p[2] = {0, 0};
		if ((err = ab_rtt(p, &a, m)) != MOE_OK)
			goto out_fail;
		printf("  dispatch round trip (tcp://127.0.0.1, alternated): plain p50 %.1f us, "
		       "sealed p50 %.1f us beyond worker compute (%+.1f us)\n",
		       p[0], p[1], p[1] - p[0]);
	}
	double bytes = 0;
	bool direct = false;
	const double lgb = load_gbs(&a, m, &bytes), sgb = seq_read_gbs(a.model, &direct);
	printf("worker load: %.1f MB at %.2f GB/s (start, handshake and load); sequential read of "
	       "the file %.2f GB/s (%s)\n",
	       bytes / 1e6, lgb, sgb, direct ? "O_DIRECT, 4 MiB reads" : "buffered, cache dropped");

	char csv[1024];
	mkdir(a.dir, 0755);
	snprintf(csv, sizeof csv, "%s/bench_cluster.csv", a.dir);
	FILE *f = fopen(csv, "w");
	if (f) {
		fprintf(f, "workers,batch,tok_s,coord_us_per_layer,net_us_per_layer,"
		           "worker_us_per_layer\n");
		for (int i = 0; i < nr; i++)
			fprintf(f, "%d,%d,%.2f,%.2f,%.2f,%.2f\n", rows[i].workers, rows[i].batch,
			        rows[i].tok_s, rows[i].coord_us, rows[i].net_us, rows[i].worker_us);
		fclose(f);
		printf("csv: %s\n", csv);
		plot(a.dir, csv);
	}
	/* network share of a batch-1 step with the most workers */
	const row *r1 = NULL;
	for (int i = 0; i < nr; i++)
		if (rows[i].batch == 1 && rows[i].workers == a.max_workers)
			r1 = &rows[i];
	const double step = r1 ? r1->coord_us + r1->net_us + r1->worker_us : 0;
	printf("rtt_ratio=%.2f net_pct_b1=%.0f load_pct_of_seq=%.0f\n", raw > 0 ? rtt / raw : 0,
	       step > 0 ? 100.0 * r1->net_us / step : 0, sgb > 0 ? 100.0 * lgb / sgb : 0);
	rc = 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh bench cluster: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	moe_model_destroy(m);
	return rc;

out_usage:
	usage(stderr);
	return 2;
}
