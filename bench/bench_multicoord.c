/*
 * bench_multicoord.c - `moemesh bench multicoord`: several coordinators, one
 * expert pool.  Two `moemesh worker` processes on tcp://127.0.0.1 are served
 * by one coordinator, then by two (`moemesh serve` each, the second adopting
 * the workers' placement), alternated for --rounds; C clients (split evenly
 * between the coordinators) each send --requests completions of -n tokens.
 * Reported per round and setup: aggregate generated tok/s (completion tokens
 * over the wall time of the level); the median of each, their ratio, and the
 * summary line `multicoord_speedup_2_vs_1=X`; OUT/multicoord.csv.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/serve_child.h"
#include "core/core.h"

#define MAX_CLIENTS 64
#define MAX_ROUNDS  16

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench multicoord [-m MODEL.gguf] [--clients C] [-n TOKENS]\n"
	           "                                [--requests R] [--rounds K] [--threads N]\n"
	           "                                [--worker-threads N] [--out DIR]\n"
	           "Two workers on tcp://127.0.0.1, served by 1 and by 2 coordinators in turn\n"
	           "(K rounds, default 3); C clients (default 16) split between them, R requests\n"
	           "(default 2) of -n tokens (default 64) each.  Default model\n"
	           "models/kjv-qwen3next-Q4_K_M.gguf, output in bench/out.\n");
}

/* A TCP port on 127.0.0.1 that was free a moment ago, or 0. */
static int free_port(void)
{
	const int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof a;
	int port = 0;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* A worker process on a free loopback port; its pid, or -1. */
static pid_t start_worker(const char *model, char *url, size_t n, const char *threads)
{
	int fds[2];
	if (pipe(fds) != 0)
		return -1;
	snprintf(url, n, "tcp://127.0.0.1:%d", free_port());
	char rfd[16];
	snprintf(rfd, sizeof rfd, "%d", fds[1]);
	const pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(fds[0]);
		execl("/proc/self/exe", "moemesh", "worker", "-m", model, "--listen", url,
		      "--threads", threads, "--ready-fd", rfd, "--quiet", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	struct pollfd p = {.fd = fds[0], .events = POLLIN};
	char b = 0;
	const bool ready = poll(&p, 1, 30000) == 1 && read(fds[0], &b, 1) == 1;
	close(fds[0]);
	if (!ready) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

static int cmp_double(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int moe_bench_multicoord(int argc, char **argv)
{
	const char *model = "models/kjv-qwen3next-Q4_K_M.gguf", *out = "bench/out";
	const char *threads = "1", *wthreads = "1";
	int C = 16, n_tok = 64, n_req = 2, rounds = 3;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(argv[i - 1], "-m") == 0)
			model = v;
		else if (strcmp(argv[i - 1], "--out") == 0)
			out = v;
		else if (strcmp(argv[i - 1], "--threads") == 0)
			threads = v;
		else if (strcmp(argv[i - 1], "--worker-threads") == 0)
			wthreads = v;
		else if (strcmp(argv[i - 1], "--clients") == 0)
			C = atoi(v);
		else if (strcmp(argv[i - 1], "-n") == 0)
			n_tok = atoi(v);
		else if (strcmp(argv[i - 1], "--requests") == 0)
			n_req = atoi(v);
		else if (strcmp(argv[i - 1], "--rounds") == 0)
			rounds = atoi(v);
		else {
			usage(stderr);
			return 2;
		}
	}
	if (C < 2 || C > MAX_CLIENTS || n_tok < 1 || n_tok > 400 || n_req < 1 || rounds < 1 ||
	    rounds > MAX_ROUNDS) {
		usage(stderr);
		return 2;
	}
	if (moe_bsrv_warm_file(model) != 0)
		fprintf(stderr, "bench multicoord: warning: could not read %s ahead\n", model);
	char url[2][64];
	pid_t w[2] = {-1, -1};
	int rc = 1;
	for (int i = 0; i < 2; i++)
		if ((w[i] = start_worker(model, url[i], sizeof url[i], wthreads)) < 0) {
			fprintf(stderr, "bench multicoord: worker %d did not start\n", i);
			goto out_workers;
		}
	mkdir(out, 0755);
	char path[1024];
	snprintf(path, sizeof path, "%s/multicoord.csv", out);
	FILE *csv = fopen(path, "w");
	if (csv == NULL) {
		fprintf(stderr, "bench multicoord: cannot write %s\n", path);
		goto out_workers;
	}
	fprintf(csv, "round,coordinators,clients,tok_s,errors\n");
	printf("%-6s %-13s %8s %10s %7s\n", "round", "coordinators", "clients", "tok/s", "errors");
	double rate[2][MAX_ROUNDS];
	int errors = 0;
	for (int r = 0; r < rounds; r++) {
		for (int j = 0; j < 2; j++) {
			/* alternated (1, 2 then 2, 1): the VM's speed drifts */
			const int k = (r % 2 == 0) ? j + 1 : 2 - j;
			char par[16];
			snprintf(par, sizeof par, "%d", (C + k - 1) / k);
			const char *extra[] = {"--worker",   url[0],  "--worker", url[1],
			                       "--parallel", par,     "--ctx",    "512",
			                       "--threads",  threads, NULL};
			moe_bsrv_child srv[2] = {0};
			int ports[2], started = 0;
			for (; started < k; started++) {
				if (moe_bsrv_start(&srv[started], model, extra) != 0)
					break;
				ports[started] = srv[started].port;
			}
			double t = -1;
			int e = 0;
			if (started == k) {
				/* one request each first, not measured */
				int warm_err = 0;
				(void)moe_bsrv_run_clients(ports, NULL, k, k, 1, 8, &warm_err,
				                           NULL);
				t = moe_bsrv_run_clients(ports, NULL, k, C, n_req, n_tok, &e, NULL);
			}
			for (int i = 0; i < started; i++)
				if (moe_bsrv_stop(&srv[i]) != 0)
					e++;
			if (started < k || t < 0) {
				fprintf(stderr, "bench multicoord: %d coordinators did not run\n",
				        k);
				fclose(csv);
				goto out_workers;
			}
			rate[k - 1][r] = t;
			errors += e;
			printf("%-6d %-13d %8d %10.1f %7d\n", r, k, C, t, e);
			fprintf(csv, "%d,%d,%d,%.2f,%d\n", r, k, C, t, e);
		}
	}
	fclose(csv);
	double med[2];
	for (int k = 0; k < 2; k++) {
		qsort(rate[k], (size_t)rounds, sizeof rate[k][0], cmp_double);
		med[k] = rate[k][rounds / 2];
	}
	printf("median tok/s at %d clients: 1 coordinator %.1f, 2 coordinators %.1f\n", C, med[0],
	       med[1]);
	printf("multicoord_speedup_2_vs_1=%.3f\n", med[0] > 0 ? med[1] / med[0] : 0.0);
	rc = errors ? 1 : 0;
	if (errors)
		fprintf(stderr, "bench multicoord: %d failed requests or servers\n", errors);
out_workers:
	for (int i = 0; i < 2; i++)
		if (w[i] > 0) {
			kill(w[i], SIGTERM);
			waitpid(w[i], NULL, 0);
		}
	return rc;
}
