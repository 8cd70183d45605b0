/*
 * cmd_probe.c - `moemesh probe`: this node's figures for the cluster file,
 * printed as a JSON fragment to paste into its entry: memory bandwidth (the
 * STREAM triad of bench/), a sequential read of a file (the model) from disk,
 * and the round trip and bandwidth of the link to a peer running
 * `moemesh probe --echo URL`.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/bench.h"
#include "cli/cli.h"
#include "core/core.h"
#include "proto/proto.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: moemesh probe [--threads N] [--read FILE] [--read-mib N]\n"
	    "                     [--peer tcp://HOST:PORT] [--pings N]\n"
	    "       moemesh probe --echo tcp://HOST:PORT\n\n"
	    "Prints this node's figures for the cluster file as a JSON fragment:\n"
	    "\"bw\" (STREAM triad on --threads, default one per CPU), \"gops\" (a Q4_K\n"
	    "GEMM of 4096 x 4096 on 16 tokens, 2 operations a multiply-add), \"rtt_us\" (p50 of\n"
	    "--pings (1000) round trips of a dispatch's sizes, 2.3 KiB out and 16 KiB\n"
	    "back, to --peer) and \"net\" (64 MiB sent to the peer).  --read FILE: a\n"
	    "sequential read of its first --read-mib (4096) MiB with O_DIRECT (or after\n"
	    "dropping it from the page cache; said when it was cached), as a comment.\n"
	    "--echo: answer the probes of another node until killed.\n");
}

/* The probe's exchange: a request is (out, back) as two little-endian
 * uint32 and out bytes; the answer is back bytes. */
static int full_io(int fd, void *buf, size_t n, bool wr)
{
	for (size_t done = 0; done < n;) {
		const ssize_t r = wr ? send(fd, (char *)buf + done, n - done, MSG_NOSIGNAL)
		                     : recv(fd, (char *)buf + done, n - done, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}

enum { BULK = 64 << 20 };

static int echo_serve(const char *url)
{
	char host[256];
	uint16_t port;
	int lfd;
	if (moe_url_tcp_split(host, sizeof host, &port, url) != MOE_OK ||
	    moe_sock_listen_tcp(&lfd, strcmp(host, "*") == 0 ? "" : host, &port) != MOE_OK) {
		fprintf(stderr, "moemesh probe: --echo %s: %s\n", url, moe_err_detail());
		return 1;
	}
	fprintf(stderr, "moemesh probe: echoing on port %u\n", port);
	uint8_t *buf = malloc(BULK);
	while (buf) {
		const int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		moe_sock_nodelay(fd);
		uint8_t hd[8];
		while (full_io(fd, hd, 8, false) == 0) {
			const uint32_t out = (uint32_t)hd[0] | (uint32_t)hd[1] << 8 |
			                     (uint32_t)hd[2] << 16 | (uint32_t)hd[3] << 24;
			const uint32_t back = (uint32_t)hd[4] | (uint32_t)hd[5] << 8 |
			                      (uint32_t)hd[6] << 16 | (uint32_t)hd[7] << 24;
			if (out > BULK || back > BULK || full_io(fd, buf, out, false) != 0 ||
			    full_io(fd, buf, back, true) != 0)
				break;
		}
		close(fd);
	}
	free(buf);
	close(lfd);
	return 1;
}

static int exchange(int fd, uint8_t *buf, uint32_t out, uint32_t back)
{
	const uint8_t hd[8] = {(uint8_t)out,          (uint8_t)(out >> 8),  (uint8_t)(out >> 16),
	                       (uint8_t)(out >> 24),  (uint8_t)back,        (uint8_t)(back >> 8),
	                       (uint8_t)(back >> 16), (uint8_t)(back >> 24)};
	return full_io(fd, (void *)hd, 8, true) || full_io(fd, buf, out, true) ||
	       full_io(fd, buf, back, false);
}

static int cmp_d(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* p50 round trip (us) and link bandwidth (bytes/s) to the peer's echo. */
static moe_err peer_figures(double *rtt_us, double *net, const char *url, int pings)
{
	char host[256];
	uint16_t port;
	int fd = -1;
	moe_err err = moe_url_tcp_split(host, sizeof host, &port, url);
	if (err == MOE_OK)
		err = moe_sock_connect_tcp(&fd, host, port, 5000);
	if (err != MOE_OK)
		return err;
	moe_sock_nodelay(fd);
	uint8_t *buf = malloc(BULK);
	double *t = malloc((size_t)pings * sizeof *t);
	if (buf == NULL || t == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "probe buffers");
		goto out_close;
	}
	memset(buf, 0x5a, BULK);
	for (int i = -20; i < pings; i++) {
		const double t0 = moe_now_s();
		if (exchange(fd, buf, 2304, 16384) != 0) {
			err = moe_fail(MOE_ERR_CLOSED, "probe: %s stopped answering", url);
			goto out_close;
		}
		if (i >= 0)
			t[i] = (moe_now_s() - t0) * 1e6;
	}
	qsort(t, (size_t)pings, sizeof *t, cmp_d);
	*rtt_us = t[pings / 2];
	const double t0 = moe_now_s();
	if (exchange(fd, buf, BULK, 8) != 0) {
		err = moe_fail(MOE_ERR_CLOSED, "probe: %s stopped answering", url);
		goto out_close;
	}
	*net = BULK / (moe_now_s() - t0);
out_close:
	free(t);
	free(buf);
	close(fd);
	return err;
}

/* The weight kernels' rate: 1e9 operations (2 per multiply-add) a second of
 * a Q4_K GEMM of 4096 x 4096 on 16 tokens (a batch-16 decode step's shape),
 * best of 5 on pool; 0 on an error (detail set). */
static double gemm_gops(moe_pool *pool)
{
	enum { N = 4096, TOK = 16 };
	const size_t row = moe_row_size(MOE_TYPE_Q4_K, N);
	uint8_t *w = malloc(row * N);
	float *x = malloc((size_t)TOK * N * sizeof *x), *y = malloc((size_t)TOK * N * sizeof *y);
	float *src = malloc(N * sizeof *src);
	double best = 0;
	if (w == NULL || x == NULL || y == NULL || src == NULL) {
		moe_fail(MOE_ERR_NOMEM, "probe: GEMM buffers");
		goto out_free;
	}
	uint32_t s = 1;
	for (int r = 0; r < N; r++) {
		for (int c = 0; c < N; c++) {
			s = s * 1664525u + 1013904223u;
			src[c] = (float)(s >> 8) / 16777216.0f - 0.5f;
		}
		if (moe_quantize_row(MOE_TYPE_Q4_K, w + (size_t)r * row, src, N) != MOE_OK)
			goto out_free;
	}
	for (size_t i = 0; i < (size_t)TOK * N; i++)
		x[i] = (float)(i % 97) / 97.0f - 0.5f;
	for (int rep = 0; rep < 6; rep++) {
		const double t0 = moe_now_s();
		if (moe_matmul(pool, y, w, MOE_TYPE_Q4_K, N, N, x, TOK) != MOE_OK) {
			best = 0;
			goto out_free;
		}
		const double g = 2.0 * N * N * TOK / (moe_now_s() - t0) / 1e9;
		if (rep > 0 && g > best)
			best = g;
	}
out_free:
	free(w);
	free(x);
	free(y);
	free(src);
	return best;
}

/* Sequential read of up to max bytes of path, 4 MiB at a time, with O_DIRECT
 * where the file system allows it, else after asking the kernel to drop the
 * file's pages (*how says which, or that pages stayed cached). */
static double read_gbs(const char *path, uint64_t max, const char **how)
{
	const size_t bs = 4u << 20;
	int fd = open(path, O_RDONLY | O_DIRECT);
	*how = "O_DIRECT";
	if (fd < 0) {
		fd = open(path, O_RDONLY);
		if (fd < 0)
			return 0;
		*how = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0
		           ? "buffered after POSIX_FADV_DONTNEED"
		           : "buffered (may be cached)";
	}
	char *buf = moe_aligned_alloc(4096, bs);
	uint64_t total = 0;
	const double t0 = moe_now_s();
	ssize_t r;
	while (buf && total < max && (r = read(fd, buf, bs)) > 0)
		total += (uint64_t)r;
	const double dt = moe_now_s() - t0;
	moe_aligned_free(buf);
	close(fd);
	return dt > 0 ? (double)total / dt / 1e9 : 0;
}

int moe_cmd_probe(int argc, char **argv)
{
	int threads = 0, pings = 1000, read_mib = 4096;
	const char *peer = NULL, *file = NULL;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL)
			goto out_usage;
		i++;
		int bad = 0;
		if (strcmp(s, "--threads") == 0)
			bad = moe_parse_int(&threads, v, 1, 1024);
		else if (strcmp(s, "--read") == 0)
			file = v;
		else if (strcmp(s, "--read-mib") == 0)
			bad = moe_parse_int(&read_mib, v, 1, 1 << 24);
		else if (strcmp(s, "--peer") == 0)
			peer = v;
		else if (strcmp(s, "--pings") == 0)
			bad = moe_parse_int(&pings, v, 10, 1 << 24);
		else if (strcmp(s, "--echo") == 0)
			return echo_serve(v);
		else
			goto out_usage;
		if (bad)
			goto out_usage;
	}
	moe_pool *pool = NULL;
	moe_bench_triad *t = NULL;
	moe_err err = moe_pool_create(&pool, threads);
	if (err == MOE_OK)
		err = moe_bench_triad_create(&t, pool, 20u << 20); /* 3 x 160 MiB */
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh probe: %s: %s\n", moe_err_name(err), moe_err_detail());
		moe_pool_destroy(pool);
		return 1;
	}
	const double bw = moe_bench_triad_run(t, pool, 5);
	moe_bench_triad_destroy(t);
	const double gops = gemm_gops(pool);
	moe_pool_destroy(pool);
	if (gops <= 0) {
		fprintf(stderr, "moemesh probe: %s\n", moe_err_detail());
		return 1;
	}
	double rtt = 0, net = 0;
	if (peer && (err = peer_figures(&rtt, &net, peer, pings)) != MOE_OK) {
		fprintf(stderr, "moemesh probe: %s: %s\n", moe_err_name(err), moe_err_detail());
		return 1;
	}
	printf("\"bw\": \"%.1fGB/s\", \"gops\": %.1f", bw, gops);
	if (peer)
		printf(", \"rtt_us\": %.1f, \"net\": \"%.2fGB/s\"", rtt, net / 1e9);
	printf("\n");
	if (file) {
		const char *how = "";
		const double gbs = read_gbs(file, (uint64_t)read_mib << 20, &how);
		printf("// disk: %s read at %.2f GB/s (%s)\n", file, gbs, how);
	}
	return 0;

out_usage:
	usage(stderr);
	return 2;
}
