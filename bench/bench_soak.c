/*
 * bench_soak.c - `moemesh bench soak`: a server left running under clients
 * that misbehave, as a lab leaves it.
 *
 * `moemesh serve` starts as a child (--parallel P, --queue = the number of
 * clients, so the soak itself is never refused; --cache-ram 64 MiB, so that
 * the prefix cache, which keeps what it may, is full within the warm-up) and C clients send
 * streamed completions and chat completions of 8-64 tokens one after the other until
 * --seconds have passed; of their requests --cancel % stop reading after a
 * random number of chunks and close (a client that gives up), and
 * --disconnect % close right after sending all or part of the request (a
 * client that goes away before the first byte). Every other request must
 * end with 200 and data: [DONE]. A probe client asks one seeded sampled
 * completion every few seconds; every answer must be the bytes it got alone
 * before the soak (a seeded request gives the same bytes under load).
 *
 * Every --sample seconds the server's RSS (/proc/PID/status VmRSS) and open
 * descriptors (/proc/PID/fd) are read, with the window's generated tok/s and
 * inter-token latency p50/p99: OUT/soak.csv, OUT/soak.png (gnuplot).
 * After the clients stop, the server's descriptors must come back to what
 * they were before the soak (within 3 s). Then an overload burst: P + C + 16
 * requests at once; those past the slots and the queue must be answered 429,
 * and their time to the status line is reported (target <= 100 ms).
 *
 * Summary lines: soak_rss_drift_pct (largest |RSS - RSS at the end of the
 * warm-up| over the samples after it, in % of it; target <= 5),
 * soak_fd_rest (before -> after), soak_itl_p99_ratio (median window p99 of
 * the last half of the samples after warm-up over the first half),
 * soak_429_max_ms, and the request counts. Exit status 1 on any failed
 * request, a probe answer that differs, descriptors that do not come back,
 * a burst without a 429 or with another failure, a server that died or did
 * not exit cleanly on SIGTERM (a sanitizer's report, in the suite); the
 * targets are reported, not judged (this is a benchmark).
 */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "bench/bench.h"
#include "bench/serve_child.h"
#include "core/core.h"

#define MAX_CLIENTS 64
#define MAX_SAMPLES 4096

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench soak [-m MODEL.gguf] [--clients C] [--seconds S]\n"
	           "                          [--sample S] [--parallel P] [--cancel PCT]\n"
	           "                          [--disconnect PCT] [--warmup PCT] [--threads N]\n"
	           "                          [--out DIR]\n"
	           "Default model models/kjv-qwen3next-Q4_K_M.gguf, 16 clients for 600 s,\n"
	           "a sample every 5 s, --parallel 4, 20 %% cancelled and 10 %% disconnected\n"
	           "requests, the first 20 %% of the run as warm-up; output in bench/out.\n");
}

/* What the clients share with the sampler: the current window and totals. */
typedef struct soak {
	int port;
	int cancel_pct, disconnect_pct;
	atomic_int stop;
	pthread_mutex_t mu;
	long win_tokens; /* completion tokens streamed in this window */
	moe_bsrv_lat win_itl;
	long done, cancelled, disconnected, rejected, errors, probes, probe_diffs;
	char *probe_want; /* the probe's answer alone, before the soak */
} soak;

typedef struct client {
	soak *s;
	int id;
	uint64_t rng;
	int cut_after; /* this request: close after so many chunks (0: never) */
	int chunks;
	double last;
} client;

static uint64_t rnd(client *c)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return c->rng;
}

static int on_text(void *arg, double now)
{
	client *c = arg;
	soak *s = c->s;
	pthread_mutex_lock(&s->mu);
	if (c->last != 0)
		moe_bsrv_lat_add(&s->win_itl, now - c->last);
	s->win_tokens++;
	pthread_mutex_unlock(&s->mu);
	c->last = now;
	return c->cut_after == 0 || ++c->chunks < c->cut_after;
}

/* Connects and sends the first `part` bytes of a request, then closes. */
static void send_and_leave(int port, const char *req, size_t part)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
		(void)send(fd, req, part, MSG_NOSIGNAL);
	close(fd);
}

static const char *const prompts[] = {"In the beginning", "And the LORD said unto Moses",
                                      "Blessed are the",  "And it came to pass",
                                      "Hear, O Israel",   "The heavens declare"};

static void count(soak *s, long *what)
{
	pthread_mutex_lock(&s->mu);
	(*what)++;
	pthread_mutex_unlock(&s->mu);
}

static void one_request(client *c)
{
	soak *s = c->s;
	char body[1024];
	const int chat = rnd(c) % 3 == 0;
	const int n_tok = 8 + (int)(rnd(c) % 57);
	const char *prompt = prompts[rnd(c) % 6];
	const int seed = (int)(rnd(c) % 100000);
	if (chat)
		snprintf(body, sizeof body,
		         "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":%d,"
		         "\"temperature\":0.8,\"seed\":%d,\"stream\":true}",
		         prompt, n_tok, seed);
	else
		snprintf(body, sizeof body,
		         "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,"
		         "\"stream\":true}",
		         prompt, n_tok, seed);
	const char *path = chat ? "/v1/chat/completions" : "/v1/completions";
	const unsigned roll = (unsigned)(rnd(c) % 100);
	if (roll < (unsigned)s->disconnect_pct) {
		char req[1536];
		const int n = snprintf(req, sizeof req,
		                       "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
		                       "application/json\r\nContent-Length: %zu\r\n\r\n%s",
		                       path, strlen(body), body);
		/* all of it, or a cut inside the headers or the body */
		const size_t part =
		    rnd(c) % 2 ? (size_t)n : 1 + (size_t)(rnd(c) % (uint64_t)(n - 1));
		send_and_leave(s->port, req, part);
		count(s, &s->disconnected);
		return;
	}
	c->cut_after = roll < (unsigned)(s->disconnect_pct + s->cancel_pct)
	                   ? 1 + (int)(rnd(c) % (uint64_t)(n_tok / 2))
	                   : 0;
	c->chunks = 0;
	c->last = 0;
	moe_bsrv_reply r;
	const int rc = moe_bsrv_request(&r, s->port, path, body, on_text, c);
	if (rc == 0 && r.status == 429) {
		count(s, &s->rejected);
		usleep(50000);
	} else if (rc == 0 && r.status == 200 && r.cut) {
		count(s, &s->cancelled);
	} else if (rc == 0 && r.status == 200 && r.done) {
		count(s, &s->done);
	} else {
		fprintf(stderr, "bench soak: client %d: %s status %d, %d chunks, %s\n", c->id, path,
		        r.status, r.chunks, r.done ? "[DONE]" : "no [DONE]");
		count(s, &s->errors);
	}
	free(r.body);
}

static void *client_main(void *arg)
{
	client *c = arg;
	while (!atomic_load(&c->s->stop))
		one_request(c);
	return NULL;
}

/* The probe's request: one seeded sampled completion, not streamed. */
static const char probe_body[] = "{\"prompt\":\"And God said\",\"max_tokens\":24,"
                                 "\"temperature\":0.9,\"seed\":4242}";

/* The "text" of a completion body (malloc'd), NULL if there is none. */
static char *probe_text(const char *body)
{
	const char *k = strstr(body, "\"text\":");
	if (k == NULL)
		return NULL;
	const char *e = strstr(k, "\",\"");
	if (e == NULL)
		e = strstr(k, "\"}");
	return e == NULL ? NULL : strndup(k, (size_t)(e - k));
}

static void probe_once(soak *s)
{
	moe_bsrv_reply r;
	const int rc = moe_bsrv_request(&r, s->port, "/v1/completions", probe_body, NULL, NULL);
	char *got = rc == 0 && r.status == 200 ? probe_text(r.body) : NULL;
	pthread_mutex_lock(&s->mu);
	s->probes++;
	if (rc == 0 && r.status == 429) {
		s->rejected++;
	} else if (got == NULL || strcmp(got, s->probe_want) != 0) {
		s->probe_diffs++;
		fprintf(stderr, "bench soak: the probe got %.200s\n  alone it got %.200s\n",
		        got ? got : "(no text)", s->probe_want);
	}
	pthread_mutex_unlock(&s->mu);
	free(got);
	free(r.body);
}

static void *probe_main(void *arg)
{
	soak *s = arg;
	while (!atomic_load(&s->stop)) {
		probe_once(s);
		for (int i = 0; i < 30 && !atomic_load(&s->stop); i++)
			usleep(100000);
	}
	return NULL;
}

/* The server's resident set in KiB (-1 if unreadable) and open fds. */
static long rss_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long v = -1;
	while (f != NULL && fgets(line, sizeof line, f) != NULL)
		if (strncmp(line, "VmRSS:", 6) == 0)
			v = atol(line + 6);
	if (f != NULL)
		fclose(f);
	return v;
}

static int open_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (d == NULL)
		return -1;
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

typedef struct sample {
	double t, tok_s, itl50, itl99;
	long rss;
	int fds;
} sample;

/* The burst: n requests at once; fills *n429, the largest and p99 time to a
 * 429's status line in ms, and the count of anything else than 200 or 429. */
typedef struct burst_req {
	int port;
	moe_bsrv_reply r;
	int rc;
} burst_req;

static void *burst_main(void *arg)
{
	burst_req *b = arg;
	b->rc = moe_bsrv_request(&b->r, b->port, "/v1/completions",
	                         "{\"prompt\":\"In the beginning\",\"max_tokens\":16,"
	                         "\"temperature\":0.8,\"seed\":7,\"stream\":true}",
	                         NULL, NULL);
	return NULL;
}

static int burst(int port, int n, int *n429, double *max_ms, double *p99_ms)
{
	burst_req *b = calloc((size_t)n, sizeof *b);
	pthread_t *th = calloc((size_t)n, sizeof *th);
	int bad = 0, started = 0;
	moe_bsrv_lat l = {0};
	if (b == NULL || th == NULL)
		goto free_arrays;
	for (; started < n; started++) {
		b[started].port = port;
		if (pthread_create(&th[started], NULL, burst_main, &b[started]) != 0)
			break;
	}
	*n429 = 0;
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		if (b[i].rc == 0 && b[i].r.status == 429) {
			(*n429)++;
			moe_bsrv_lat_add(&l, b[i].r.t_status * 1e3);
		} else if (b[i].rc != 0 || b[i].r.status != 200 || !b[i].r.done) {
			bad++;
		}
		free(b[i].r.body);
	}
	bad += n - started;
	*max_ms = moe_bsrv_pct(&l, 1.0);
	*p99_ms = moe_bsrv_pct(&l, 0.99);
	free(l.v);
free_arrays:
	free(th);
	free(b);
	return b == NULL || th == NULL ? n : bad;
}

static double median(double *v, int n)
{
	moe_bsrv_lat l = {v, (size_t)n, (size_t)n};
	return moe_bsrv_pct(&l, 0.5);
}

static void plot(const char *out)
{
	char cmd[4096];
	snprintf(
	    cmd, sizeof cmd,
	    "command -v gnuplot >/dev/null && gnuplot -e \"set terminal pngcairo size 1000,420 "
	    "noenhanced; set output '%s/soak.png'; set datafile separator ','; "
	    "set multiplot layout 1,2; set xlabel 'seconds'; set key bottom right; "
	    "set ylabel 'RSS MiB'; set y2label 'open fds'; set ytics nomirror; set y2tics; "
	    "set yrange [0:*]; set y2range [0:*]; "
	    "plot '%s/soak.csv' every ::1 using 1:2 with lines lw 2 title 'RSS', "
	    "'' every ::1 using 1:3 axes x1y2 with lines title 'fds'; "
	    "set ylabel 'ITL ms'; set y2label 'tok/s'; set key top left; "
	    "plot '%s/soak.csv' every ::1 using 1:6 with lines lw 2 title 'ITL p99', "
	    "'' every ::1 using 1:5 with lines title 'ITL p50', "
	    "'' every ::1 using 1:4 axes x1y2 with lines title 'tok/s'; unset multiplot\"",
	    out, out, out);
	if (system(cmd) != 0)
		fprintf(stderr, "bench soak: no plot (gnuplot missing or failed)\n");
}

/* Waits up to 3 s for the server's descriptors to come back to want or
 * fewer (a connection it has yet to close, or a thread yet to end, holds
 * one for a moment); returns the last count. */
static int fds_at_rest(pid_t pid, int want)
{
	int n = open_fds(pid);
	for (int i = 0; i < 30 && n > want; i++) {
		usleep(100000);
		n = open_fds(pid);
	}
	return n;
}

int moe_bench_soak(int argc, char **argv)
{
	const char *model = "models/kjv-qwen3next-Q4_K_M.gguf", *out = "bench/out";
	const char *threads = NULL, *cache_ram = "64";
	int clients = 16, seconds = 600, sample_s = 5, parallel = 4, warm_pct = 20;
	soak s = {.cancel_pct = 20, .disconnect_pct = 10};
	/* every option takes a value: a string, or a whole number (atoi) */
	const struct {
		const char *name;
		const char **str;
		int *num;
	} opts[] = {{"-m", &model, NULL},
	            {"--out", &out, NULL},
	            {"--threads", &threads, NULL},
	            {"--cache-ram", &cache_ram, NULL},
	            {"--clients", NULL, &clients},
	            {"--seconds", NULL, &seconds},
	            {"--sample", NULL, &sample_s},
	            {"--parallel", NULL, &parallel},
	            {"--cancel", NULL, &s.cancel_pct},
	            {"--disconnect", NULL, &s.disconnect_pct},
	            {"--warmup", NULL, &warm_pct}};
	for (int i = 1; i < argc; i += 2) {
		size_t k = 0;
		while (k < sizeof opts / sizeof *opts && strcmp(argv[i], opts[k].name) != 0)
			k++;
		if (k == sizeof opts / sizeof *opts || i + 1 >= argc) {
			usage(stderr);
			return 2;
		}
		if (opts[k].str != NULL)
			*opts[k].str = argv[i + 1];
		else
			*opts[k].num = atoi(argv[i + 1]);
	}
	if (clients < 1 || clients > MAX_CLIENTS || seconds < 1 || sample_s < 1 || parallel < 1 ||
	    parallel > 64 || s.cancel_pct < 0 || s.disconnect_pct < 0 ||
	    s.cancel_pct + s.disconnect_pct > 100 || warm_pct < 0 || warm_pct > 90 ||
	    seconds / sample_s > MAX_SAMPLES) {
		usage(stderr);
		return 2;
	}
	char par[16], queue[16];
	snprintf(par, sizeof par, "%d", parallel);
	snprintf(queue, sizeof queue, "%d", clients);
	const char *extra[12] = {"--parallel", par,   "--queue",     queue,
	                         "--ctx",      "512", "--cache-ram", cache_ram};
	if (threads != NULL) {
		extra[8] = "--threads";
		extra[9] = threads;
	}
	if (moe_bsrv_warm_file(model) != 0)
		fprintf(stderr, "bench soak: warning: could not read %s ahead\n", model);
	moe_bsrv_child srv = {0};
	if (moe_bsrv_start(&srv, model, extra) != 0) {
		fprintf(stderr, "bench soak: the server did not start\n");
		return 1;
	}
	s.port = srv.port;
	pthread_mutex_init(&s.mu, NULL);
	int rc = 1;
	sample *sm = calloc(MAX_SAMPLES, sizeof *sm);
	FILE *csv = NULL;
	char path[1024];
	mkdir(out, 0755);
	snprintf(path, sizeof path, "%s/soak.csv", out);
	if (sm == NULL || (csv = fopen(path, "w")) == NULL) {
		fprintf(stderr, "bench soak: cannot write %s\n", path);
		goto stop_server;
	}
	moe_bsrv_reply r;
	if (moe_bsrv_request(&r, s.port, "/v1/completions", probe_body, NULL, NULL) != 0 ||
	    r.status != 200 || (s.probe_want = probe_text(r.body)) == NULL) {
		fprintf(stderr, "bench soak: the probe request failed alone (status %d)\n",
		        r.status);
		free(r.body);
		goto close_csv;
	}
	free(r.body);
	int fds0 = open_fds(srv.pid); /* at rest: the same twice, 200 ms apart */
	for (int i = 0, f; i < 15 && (usleep(200000), f = open_fds(srv.pid)) != fds0; i++)
		fds0 = f;
	printf("bench soak: %d clients for %d s (%d %% cancelled, %d %% disconnected), "
	       "serve --parallel %d --queue %d, %d open fds at rest\n",
	       clients, seconds, s.cancel_pct, s.disconnect_pct, parallel, clients, fds0);
	fprintf(csv, "t_s,rss_mib,fds,tok_s,itl_p50_ms,itl_p99_ms,done,cancelled,disconnected,"
	             "rejected,errors\n");
	printf("%7s %9s %5s %8s %9s %9s %7s %7s %7s %6s\n", "t s", "RSS MiB", "fds", "tok/s",
	       "ITL p50", "ITL p99", "done", "cancel", "discon", "errors");
	client cl[MAX_CLIENTS];
	pthread_t th[MAX_CLIENTS], probe;
	int started = 0;
	for (; started < clients; started++) {
		cl[started] = (client){
		    .s = &s, .id = started, .rng = 0x9E3779B97F4A7C15ull * (unsigned)(started + 1)};
		if (pthread_create(&th[started], NULL, client_main, &cl[started]) != 0)
			break;
	}
	const int probing = pthread_create(&probe, NULL, probe_main, &s) == 0;
	const double t0 = moe_now_s();
	int n = 0;
	bool died = false;
	for (double next = t0 + sample_s; n < MAX_SAMPLES && !died; next += sample_s) {
		const double now = moe_now_s();
		if (next > now)
			usleep((useconds_t)((next - now) * 1e6));
		sample *x = &sm[n];
		x->t = moe_now_s() - t0;
		x->rss = rss_kib(srv.pid);
		x->fds = open_fds(srv.pid);
		died = x->rss < 0 || waitpid(srv.pid, NULL, WNOHANG) != 0;
		pthread_mutex_lock(&s.mu);
		x->tok_s = (double)s.win_tokens / sample_s;
		x->itl50 = moe_bsrv_pct(&s.win_itl, 0.5) * 1e3;
		x->itl99 = moe_bsrv_pct(&s.win_itl, 0.99) * 1e3;
		s.win_tokens = 0;
		s.win_itl.n = 0;
		const long c_done = s.done, c_cancel = s.cancelled, c_disc = s.disconnected,
		           c_rej = s.rejected, c_err = s.errors;
		pthread_mutex_unlock(&s.mu);
		fprintf(csv, "%.1f,%.2f,%d,%.1f,%.2f,%.2f,%ld,%ld,%ld,%ld,%ld\n", x->t,
		        (double)x->rss / 1024, x->fds, x->tok_s, x->itl50, x->itl99, c_done,
		        c_cancel, c_disc, c_rej, c_err);
		printf("%7.1f %9.1f %5d %8.1f %9.2f %9.2f %7ld %7ld %7ld %6ld\n", x->t,
		       (double)x->rss / 1024, x->fds, x->tok_s, x->itl50, x->itl99, c_done,
		       c_cancel, c_disc, c_err);
		fflush(stdout);
		n++;
		if (x->t >= seconds)
			break;
	}
	atomic_store(&s.stop, 1);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (probing)
		pthread_join(probe, NULL);
	fclose(csv);
	csv = NULL;
	if (died) {
		fprintf(stderr, "bench soak: the server died\n");
		goto free_probe;
	}
	const int fds1 = fds_at_rest(srv.pid, fds0);
	/* after warm-up: RSS drift and ITL p99 stability */
	int w = n * warm_pct / 100;
	if (w >= n)
		w = n - 1;
	double drift = 0;
	for (int i = w; i < n; i++) {
		const double d = 100.0 * (double)labs(sm[i].rss - sm[w].rss) / (double)sm[w].rss;
		drift = d > drift ? d : drift;
	}
	double p99s[MAX_SAMPLES];
	const int half = (n - w) / 2;
	for (int i = 0; i < n - w; i++)
		p99s[i] = sm[w + i].itl99;
	const double m1 = half > 0 ? median(p99s, half) : 0;
	const double m2 = half > 0 ? median(p99s + half, n - w - half) : 0;
	int n429 = 0;
	double max429 = 0, p99_429 = 0;
	const int n_burst = parallel + clients + 16;
	const int burst_bad = burst(s.port, n_burst, &n429, &max429, &p99_429);
	plot(out);
	printf("wrote %s/soak.csv and %s/soak.png\n", out, out);
	printf("requests: %ld completed, %ld cancelled, %ld disconnected, %ld refused 429, %ld "
	       "failed; probe %ld times, %ld differed\n",
	       s.done, s.cancelled, s.disconnected, s.rejected, s.errors, s.probes, s.probe_diffs);
	printf("soak_rss_drift_pct=%.2f after %d %% warm-up (target <= 5)\n", drift, warm_pct);
	printf("soak_fd_rest=%d->%d\n", fds0, fds1);
	printf("soak_itl_p99_ratio=%.2f (median window p99 %.2f ms then %.2f ms)\n",
	       m1 > 0 ? m2 / m1 : 0, m1, m2);
	printf("soak_429_max_ms=%.1f p99 %.1f ms over %d refused of a burst of %d, %d other "
	       "failures (target <= 100 ms)\n",
	       max429, p99_429, n429, n_burst, burst_bad);
	rc = s.errors == 0 && s.probe_diffs == 0 && fds1 <= fds0 && n429 > 0 && burst_bad == 0 &&
	             s.done > 0
	         ? 0
	         : 1;
	if (rc != 0)
		fprintf(stderr, "bench soak: FAILED (failed requests, probe differences, fds not "
		                "back at rest, or a burst without 429)\n");
free_probe:
	free(s.probe_want);
close_csv:
	if (csv != NULL)
		fclose(csv);
stop_server:
	if (moe_bsrv_stop(&srv) != 0)
		rc = 1;
	free(s.win_itl.v);
	free(sm);
	pthread_mutex_destroy(&s.mu);
	return rc;
}
