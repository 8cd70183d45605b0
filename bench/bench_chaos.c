/*
 * bench_chaos.c - `moemesh bench chaos`: workers killed (SIGKILL) or frozen
 * (SIGSTOP) under `serve` while clients stream, and every stream must still
 * be the bytes of an undisturbed run.
 *
 * Each iteration starts `serve --workers W --replicate all` (every expert on
 * two workers) with a short dispatch deadline, runs four concurrent
 * streamed completions (two seeded samples at temperature 0.8, two greedy),
 * and, at a moment drawn from a seeded generator (after the k-th streamed
 * chunk of all clients together), sends SIGKILL (even iterations) or SIGSTOP
 * (odd ones; SIGCONT once the streams ended) to a drawn worker.
 * The texts must equal those the first server streamed before any fault
 * (the reference), the streams must end with [DONE], /health and /metrics
 * must show the worker down and the loss counted, and the server must
 * then exit by itself on SIGTERM (status 1 after a SIGKILL: it names the
 * killed worker).  After the last iteration every worker is killed and a
 * request must get 503 naming the reason.  The same seed gives the same
 * victims, signals and moments.  ctest test_chaos runs a few iterations; the
 * long run (20 iterations) is in docs/DESIGN.md "Failure semantics".
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/serve_child.h"
#include "core/core.h"

#define N_CLIENTS   4
#define MAX_WORKERS 8

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench chaos [-m MODEL.gguf] [--iterations N] [--workers W]\n"
	           "                           [--seed S] [--tokens T] [--deadline-ms MS]\n"
	           "                           [--replicate all|none|E,E,...]\n"
	           "Default model models/kjv-qwen3next-Q4_K_M.gguf, 20 iterations of 3\n"
	           "workers, seed 1, 48 tokens per stream, a 1000 ms dispatch deadline,\n"
	           "--replicate all (none: one copy of each expert, a loss re-loads them).\n");
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* One iteration's fault: when the clients' streamed chunks reach `at`, sig
 * goes to pid (from the client thread that streamed that chunk). */
typedef struct fault {
	atomic_int chunks;
	int at;
	pid_t pid;
	int sig;
	atomic_int sent;
	double t_sent;
} fault;

typedef struct stream {
	int port;
	int id;
	int tokens;
	fault *f;
	moe_bsrv_reply r;
	int rc;
	char *text; /* the streamed text, concatenated (malloc'd) */
} stream;

static int on_text(void *arg, double now)
{
	stream *s = arg;
	fault *f = s->f;
	if (f != NULL && atomic_fetch_add(&f->chunks, 1) + 1 == f->at) {
		kill(f->pid, f->sig);
		f->t_sent = now;
		atomic_store(&f->sent, 1);
	}
	return 1;
}

/* The text of a server-sent event stream: choices[0].text of every data
 * chunk, concatenated; NULL if a chunk is not JSON or is an error event. */
static char *stream_text(const char *body)
{
	size_t cap = 256, len = 0;
	char *out = malloc(cap);
	if (out == NULL)
		return NULL;
	out[0] = '\0';
	for (const char *p = strstr(body, "data: "); p != NULL; p = strstr(p, "data: ")) {
		p += 6;
		const char *end = strstr(p, "\n");
		if (end == NULL)
			end = p + strlen(p);
		if (strncmp(p, "[DONE]", 6) == 0)
			break;
		cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
		if (j == NULL || cJSON_GetObjectItem(j, "error") != NULL) { /* failed mid-stream */
			cJSON_Delete(j);
			free(out);
			return NULL;
		}
		const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
		const cJSON *t = cJSON_GetObjectItem(c0, "text");
		if (cJSON_IsString(t)) {
			const size_t n = strlen(t->valuestring);
			if (len + n + 1 > cap) {
				while (len + n + 1 > cap)
					cap *= 2;
				char *grown = realloc(out, cap);
				if (grown == NULL) {
					cJSON_Delete(j);
					free(out);
					return NULL;
				}
				out = grown;
			}
			memcpy(out + len, t->valuestring, n + 1);
			len += n;
		}
		cJSON_Delete(j);
		p = end;
	}
	return out;
}

static const char *const prompts[N_CLIENTS] = {"In the beginning", "And the LORD said unto Moses",
                                               "Blessed are the", "And it came to pass"};

static void *stream_main(void *arg)
{
	stream *s = arg;
	char body[512];
	/* clients 0 and 2 sample with a seed, 1 and 3 are greedy */
	if (s->id % 2 == 0)
		snprintf(body, sizeof body,
		         "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,"
		         "\"stream\":true}",
		         prompts[s->id], s->tokens, 1000 + s->id);
	else
		snprintf(body, sizeof body,
		         "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"stream\":true}",
		         prompts[s->id], s->tokens);
	s->rc = moe_bsrv_request(&s->r, s->port, "/v1/completions", body, on_text, s);
	s->text = s->rc == 0 && s->r.body != NULL ? stream_text(s->r.body) : NULL;
	return NULL;
}

/* Runs the four streams at once; fills st[]. 0 when all ended 200 + [DONE]
 * with a parsable text, else -1 (said on stderr). */
static int run_streams(stream *st, int port, int tokens, fault *f)
{
	pthread_t th[N_CLIENTS];
	int started = 0, bad = 0;
	for (; started < N_CLIENTS; started++) {
		st[started] = (stream){.port = port, .id = started, .tokens = tokens, .f = f};
		if (pthread_create(&th[started], NULL, stream_main, &st[started]) != 0)
			break;
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (started < N_CLIENTS)
		return -1;
	for (int i = 0; i < N_CLIENTS; i++) {
		if (st[i].rc != 0 || st[i].r.status != 200 || !st[i].r.done || st[i].text == NULL) {
			const char *b = st[i].r.body ? st[i].r.body : "";
			const size_t n = strlen(b);
			fprintf(stderr,
			        "bench chaos: stream %d: rc %d, status %d, %s, body: ...%s\n", i,
			        st[i].rc, st[i].r.status, st[i].r.done ? "[DONE]" : "no [DONE]",
			        b + (n > 400 ? n - 400 : 0));
			bad = 1;
		}
	}
	return bad ? -1 : 0;
}

static void free_streams(stream *st)
{
	for (int i = 0; i < N_CLIENTS; i++) {
		free(st[i].r.body);
		free(st[i].text);
		st[i].r.body = st[i].text = NULL;
	}
}

/* The child processes of pid (the spawned workers), in ascending pid order
 * (the order they were spawned in); returns how many. */
static int children(pid_t pid, pid_t *out, int max)
{
	int n = 0;
	DIR *d = opendir("/proc");
	if (d == NULL)
		return 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL && n < max) {
		char path[300], buf[512];
		snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		const size_t len = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[len] = '\0';
		const char *rp = strrchr(buf, ')'); /* the name may hold spaces */
		int ppid = 0;
		char state;
		if (rp != NULL && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == pid)
			out[n++] = (pid_t)atoi(de->d_name);
	}
	closedir(d);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
			const pid_t t = out[j];
			out[j] = out[j - 1];
			out[j - 1] = t;
		}
	return n;
}

/* GET path at 127.0.0.1:port over HTTP/1.0: the whole reply (status line,
 * headers, body; malloc'd), or NULL. */
static char *http_get(int port, const char *path)
{
	char req[256];
	const int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	const int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return NULL;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	if (buf == NULL || connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		free(buf);
		close(fd);
		return NULL;
	}
	for (;;) {
		if (len + 1 >= cap) {
			char *b = realloc(buf, cap * 2);
			if (b == NULL)
				break;
			buf = b;
			cap *= 2;
		}
		const ssize_t k = recv(fd, buf + len, cap - len - 1, 0);
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

/* The --name of worker process pid (from its command line) into name. */
static void worker_name(pid_t pid, char *name, size_t size)
{
	char path[64], buf[4096];
	snprintf(name, size, "?");
	snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return;
	const size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
		if (strcmp(buf + i, "--name") == 0 && i + 7 < n)
			snprintf(name, size, "%s", buf + i + 7);
}

/* After a fault on worker `victim` of W: /health lists it down within 5 s
 * (the idle heartbeat finds a frozen worker nothing was sent to) with W - 1
 * up, and /metrics says it is down and counts the loss (and, with reload,
 * experts re-loaded onto survivors).  0 if so. */
static int fault_visible(int port, const char *victim, int workers, bool reload)
{
	char want_h[160], want_up[64], want_m[160];
	snprintf(want_h, sizeof want_h, "{\"name\":\"%s\",\"up\":false}", victim);
	snprintf(want_up, sizeof want_up, "\"workers_up\":%d", workers - 1);
	snprintf(want_m, sizeof want_m, "moemesh_worker_up{worker=\"%s\"} 0\n", victim);
	char *h = NULL;
	for (int t = 0; t < 50; t++) {
		free(h);
		h = http_get(port, "/health");
		if (h != NULL && strstr(h, want_h) != NULL && strstr(h, want_up) != NULL)
			break;
		usleep(100000);
	}
	char *m = http_get(port, "/metrics");
	const bool ok =
	    h != NULL && strstr(h, want_h) != NULL && strstr(h, want_up) != NULL && m != NULL &&
	    strstr(m, want_m) != NULL &&
	    strstr(m, "moemesh_cluster_workers_lost_total 1\n") != NULL &&
	    (!reload || strstr(m, "moemesh_cluster_replaced_experts_total 0\n") == NULL);
	if (!ok)
		fprintf(stderr, "bench chaos: %s is not shown down:\n%s\n%s\n", victim,
		        h ? h : "(no /health)", m ? m : "(no /metrics)");
	free(h);
	free(m);
	return ok ? 0 : -1;
}

/* SIGTERM, drain its stderr (echoed when echo), reap: the wait status. */
static int stop_server(moe_bsrv_child *s, bool echo)
{
	kill(s->pid, SIGTERM);
	char line[1024];
	while (s->err != NULL && fgets(line, sizeof line, s->err) != NULL)
		if (echo)
			fputs(line, stderr);
	if (s->err != NULL)
		fclose(s->err);
	s->err = NULL;
	int st = 0;
	waitpid(s->pid, &st, 0);
	return st;
}

/* Every worker killed: within 30 s a completion gets 503 with the reason,
 * and /health is 503 with no worker up.  0 if so. */
static int all_dead(const moe_bsrv_child *srv, int n_workers)
{
	pid_t w[MAX_WORKERS];
	const int n = children(srv->pid, w, MAX_WORKERS);
	if (n != n_workers) {
		fprintf(stderr, "bench chaos: %d workers found, expected %d\n", n, n_workers);
		return -1;
	}
	for (int i = 0; i < n; i++)
		kill(w[i], SIGKILL);
	int st = 0;
	for (int i = 0; i < 100 && st != 503; i++) {
		moe_bsrv_reply r;
		if (moe_bsrv_request(&r, srv->port, "/v1/completions",
		                     "{\"prompt\":\"In the beginning\",\"max_tokens\":4}", NULL,
		                     NULL) == 0 &&
		    r.status == 503) {
			st = r.status;
			if (r.body == NULL || strstr(r.body, "cannot serve") == NULL ||
			    strstr(r.body, "no worker left") == NULL) {
				fprintf(stderr, "bench chaos: 503 without the reason: %s\n",
				        r.body ? r.body : "");
				free(r.body);
				return -1;
			}
			printf("bench chaos: all workers killed: 503 %s\n", r.body);
			char *h = http_get(srv->port, "/health");
			const bool down = h != NULL && strstr(h, " 503 ") != NULL &&
			                  strstr(h, "\"workers_up\":0") != NULL;
			if (!down)
				fprintf(stderr, "bench chaos: /health: %s\n", h ? h : "(none)");
			free(h);
			if (!down) {
				free(r.body);
				return -1;
			}
		} else if (r.status != 200) {
			fprintf(stderr, "bench chaos: all workers killed: status %d: %s\n",
			        r.status, r.body ? r.body : "");
			free(r.body);
			return -1;
		}
		free(r.body);
		if (st != 503)
			usleep(300000);
	}
	return st == 503 ? 0 : -1;
}

int moe_bench_chaos(int argc, char **argv)
{
	const char *model = "models/kjv-qwen3next-Q4_K_M.gguf", *replicate = "all";
	int iterations = 20, workers = 3, seed = 1, tokens = 48, deadline_ms = 1000;
	const struct {
		const char *name;
		const char **str;
		int *num;
	} opts[] = {{"-m", &model, NULL},
	            {"--replicate", &replicate, NULL},
	            {"--iterations", NULL, &iterations},
	            {"--workers", NULL, &workers},
	            {"--seed", NULL, &seed},
	            {"--tokens", NULL, &tokens},
	            {"--deadline-ms", NULL, &deadline_ms}};
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
	if (iterations < 1 || workers < 2 || workers > MAX_WORKERS || tokens < 4 || tokens > 1024 ||
	    deadline_ms < 50) {
		usage(stderr);
		return 2;
	}
	char nw[16], dl[16];
	snprintf(nw, sizeof nw, "%d", workers);
	snprintf(dl, sizeof dl, "%d", deadline_ms);
	const char *extra[] = {
	    "--workers", nw,  "--dispatch-timeout-ms", dl,        "--parallel", "4",
	    "--threads", "1", "--replicate",           replicate, NULL};
	if (strcmp(replicate, "none") == 0)
		extra[8] = NULL; /* each expert on one worker: a loss re-loads onto survivors */
	uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(unsigned)seed;
	char *want[N_CLIENTS] = {0};
	int rc = 1, n_kill = 0, n_stop = 0;
	double t_recover = 0.0;
	const double t0 = moe_now_s();
	for (int it = 0; it < iterations; it++) {
		moe_bsrv_child srv = {0};
		if (moe_bsrv_start(&srv, model, extra) != 0) {
			fprintf(stderr, "bench chaos: iteration %d: the server did not start\n",
			        it);
			goto free_want;
		}
		stream st[N_CLIENTS];
		if (it == 0) { /* the reference: undisturbed */
			if (run_streams(st, srv.port, tokens, NULL) != 0) {
				free_streams(st);
				stop_server(&srv, true);
				goto free_want;
			}
			for (int i = 0; i < N_CLIENTS; i++) {
				want[i] = st[i].text;
				st[i].text = NULL;
			}
			free_streams(st);
		}
		pid_t w[MAX_WORKERS];
		if (children(srv.pid, w, MAX_WORKERS) != workers) {
			fprintf(stderr, "bench chaos: iteration %d: not %d workers\n", it, workers);
			stop_server(&srv, true);
			goto free_want;
		}
		const int victim = (int)(rnd(&rng) % (uint64_t)workers);
		const int sig = it % 2 ? SIGSTOP : SIGKILL; /* both in any two iterations */
		/* a chunk among the first three quarters of all streams' */
		fault f = {.at = 1 + (int)(rnd(&rng) % (uint64_t)(N_CLIENTS * tokens * 3 / 4)),
		           .pid = w[victim],
		           .sig = sig};
		char vname[64]; /* read while it lives: a killed one's command line is gone */
		worker_name(w[victim], vname, sizeof vname);
		const int bad = run_streams(st, srv.port, tokens, &f);
		if (sig == SIGSTOP)
			kill(w[victim], SIGCONT);
		int diff = 0;
		for (int i = 0; i < N_CLIENTS && !bad; i++) {
			if (strcmp(st[i].text, want[i]) != 0) {
				fprintf(
				    stderr,
				    "bench chaos: iteration %d: stream %d differs:\n  want %s\n  "
				    "got  %s\n",
				    it, i, want[i], st[i].text);
				diff = 1;
			}
		}
		const double now = moe_now_s();
		printf("bench chaos: iteration %2d: %s w%d after chunk %3d of %d: %s\n", it,
		       sig == SIGKILL ? "SIGKILL" : "SIGSTOP", victim, f.at, N_CLIENTS * tokens,
		       !atomic_load(&f.sent) ? "not sent (streams ended first)"
		       : bad || diff         ? "FAILED"
		                             : "identical");
		if (atomic_load(&f.sent))
			t_recover += now - f.t_sent;
		n_kill += sig == SIGKILL && atomic_load(&f.sent);
		n_stop += sig == SIGSTOP && atomic_load(&f.sent);
		free_streams(st);
		if (!bad && !diff && atomic_load(&f.sent) &&
		    fault_visible(srv.port, vname, workers, strcmp(replicate, "none") == 0) != 0)
			diff = 1;
		int last_ok = 0;
		if (!bad && !diff && it == iterations - 1)
			last_ok = all_dead(&srv, workers);
		const int ws = stop_server(&srv, bad || diff || last_ok != 0);
		/* exit 1 when it names a worker that did not end cleanly, never a
		 * signal (a crash) */
		if (!WIFEXITED(ws) || WEXITSTATUS(ws) > 1 ||
		    (sig == SIGKILL && atomic_load(&f.sent) && WEXITSTATUS(ws) != 1)) {
			fprintf(stderr,
			        "bench chaos: iteration %d: the server ended with status %d\n", it,
			        ws);
			goto free_want;
		}
		if (bad || diff || last_ok != 0)
			goto free_want;
	}
	printf("bench chaos: %d iterations (%d SIGKILL, %d SIGSTOP sent), every stream "
	       "identical; %.1f s; mean %.2f s from the signal to the end of the streams\n",
	       iterations, n_kill, n_stop, moe_now_s() - t0,
	       n_kill + n_stop ? t_recover / (n_kill + n_stop) : 0.0);
	rc = 0;
free_want:
	for (int i = 0; i < N_CLIENTS; i++)
		free(want[i]);
	return rc;
}
