/*
 * serve_child.c - the `moemesh serve` child, latency lists and the page-cache
 * warm-up that the serving benchmarks share (serve_child.h).
 */
#include "bench/serve_child.h"

#include "core/core.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

enum { MAX_CLIENTS = 256 };
static const uint64_t FNV_BASIS = 1469598103934665603ull, FNV_PRIME = 1099511628211ull;

int moe_bsrv_lat_add(moe_bsrv_lat *l, double x)
{
	if (l->n == l->cap) {
		size_t c = l->cap ? 2 * l->cap : 256;
		double *v = realloc(l->v, c * sizeof *v);
		if (v == NULL)
			return -1;
		l->v = v;
		l->cap = c;
	}
	l->v[l->n++] = x;
	return 0;
}

static int cmp_d(const void *a, const void *b)
{
	const double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

double moe_bsrv_pct(moe_bsrv_lat *l, double p)
{
	if (l->n == 0)
		return 0;
	qsort(l->v, l->n, sizeof *l->v, cmp_d);
	size_t i = (size_t)(p * (double)(l->n - 1) + 0.5);
	return l->v[i < l->n ? i : l->n - 1];
}

int moe_bsrv_warm_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -1;
	static char buf[1 << 20];
	while (fread(buf, 1, sizeof buf, f) == sizeof buf)
		;
	const int rc = ferror(f) ? -1 : 0;
	fclose(f);
	return rc;
}

/* One "data: ..." line of a stream: counts its text and usage; returns
 * on_text's verdict (1: go on), or 2 at [DONE]. */
static int stream_line(moe_bsrv_reply *r, const char *line, int (*on_text)(void *, double),
                       void *arg)
{
	if (strncmp(line, "data: ", 6) != 0)
		return 1;
	if (strcmp(line + 6, "[DONE]") == 0) {
		r->done = 1;
		return 2;
	}
	cJSON *j = cJSON_Parse(line + 6);
	const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
	const cJSON *t = cJSON_GetObjectItem(ch, "text");
	if (t == NULL)
		t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
	const cJSON *u = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens");
	int go = 1;
	if (cJSON_IsString(t) && t->valuestring[0] != '\0') {
		r->chunks++;
		for (const char *c = t->valuestring; *c; c++)
			r->text_fnv = (r->text_fnv ^ (uint8_t)*c) * FNV_PRIME;
		if (on_text != NULL)
			go = on_text(arg, moe_now_s());
	}
	if (cJSON_IsNumber(u))
		r->tokens += (long)u->valuedouble;
	cJSON_Delete(j);
	return go;
}

int moe_bsrv_request(moe_bsrv_reply *r, int port, const char *path, const char *body,
                     int (*on_text)(void *arg, double now), void *arg)
{
	*r = (moe_bsrv_reply){.text_fnv = FNV_BASIS};
	const size_t nb = strlen(body);
	char head[512];
	const int nh = snprintf(head, sizeof head,
	                        "POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\n"
	                        "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
	                        path, nb);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	const double t0 = moe_now_s();
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    send(fd, head, (size_t)nh, MSG_NOSIGNAL) != nh ||
	    send(fd, body, nb, MSG_NOSIGNAL) != (ssize_t)nb) {
		close(fd);
		return -1;
	}
	size_t cap = 1 << 16, len = 0, scan = 0, body_at = 0;
	char *buf = malloc(cap);
	int rc = -1, sse = 0;
	while (buf != NULL) {
		if (len + 4096 > cap) {
			char *b = cap < ((size_t)1 << 24) ? realloc(buf, cap * 2) : NULL;
			if (b == NULL)
				break;
			buf = b;
			cap *= 2;
		}
		const ssize_t k = recv(fd, buf + len, cap - len - 1, 0);
		if (k < 0)
			break;
		if (k == 0) {
			rc = r->status != 0 ? 0 : -1;
			break;
		}
		len += (size_t)k;
		buf[len] = '\0';
		if (r->status == 0) {
			char *e = strstr(buf, "\r\n\r\n");
			if (e == NULL)
				continue;
			r->t_status = moe_now_s() - t0;
			r->status = strncmp(buf, "HTTP/1.", 7) == 0 ? atoi(buf + 9) : -1;
			sse = strstr(buf, "text/event-stream") != NULL &&
			      strstr(buf, "text/event-stream") < e;
			body_at = scan = (size_t)(e + 4 - buf);
		}
		char *nl;
		int go = 1;
		while (sse && go == 1 && (nl = memchr(buf + scan, '\n', len - scan)) != NULL) {
			*nl = '\0';
			go = stream_line(r, buf + scan, on_text, arg);
			*nl = '\n';
			scan = (size_t)(nl + 1 - buf);
		}
		if (go == 0) {
			r->cut = 1;
			rc = 0;
			break;
		}
	}
	close(fd);
	if (buf != NULL) {
		memmove(buf, buf + body_at, len - body_at);
		buf[len - body_at] = '\0';
		r->body = buf;
	}
	return rc;
}

typedef struct client {
	int port, netns_fd, id, n_req, n_tok;
	long tokens;
	int errors;
	bool ns_failed;
	uint64_t *fnv; /* n_req entries: each request's text_fnv */
} client;

static void *client_main(void *arg)
{
	client *c = arg;
	if (c->netns_fd >= 0 && setns(c->netns_fd, CLONE_NEWNET) != 0) {
		c->ns_failed = true;
		return NULL;
	}
	for (int r = 0; r < c->n_req; r++) {
		char body[512];
		snprintf(body, sizeof body,
		         "{\"prompt\":\"In the beginning %d-%d\",\"max_tokens\":%d,"
		         "\"temperature\":0,\"stream\":true}",
		         c->id, r, c->n_tok);
		moe_bsrv_reply rep = {0};
		if (moe_bsrv_request(&rep, c->port, "/v1/completions", body, NULL, NULL) != 0 ||
		    rep.status != 200)
			c->errors++;
		else
			c->tokens += rep.tokens;
		c->fnv[r] = rep.text_fnv;
		free(rep.body);
	}
	return NULL;
}

double moe_bsrv_run_clients(const int *ports, const int *netns_fd, int k, int n_clients, int n_req,
                            int n_tok, int *errors, uint64_t *text_fnv)
{
	if (k < 1 || n_clients < 1 || n_clients > MAX_CLIENTS || n_req < 1)
		return -1;
	client *cl = calloc((size_t)n_clients, sizeof *cl);
	pthread_t *th = calloc((size_t)n_clients, sizeof *th);
	uint64_t *fnv = calloc((size_t)n_clients * (size_t)n_req, sizeof *fnv);
	double rate = -1;
	int started = 0;
	if (cl == NULL || th == NULL || fnv == NULL)
		goto out_free;
	const double t0 = moe_now_s();
	for (; started < n_clients; started++) {
		const int i = started;
		cl[i] = (client){.port = ports[i % k],
		                 .netns_fd = netns_fd ? netns_fd[i % k] : -1,
		                 .id = i,
		                 .n_req = n_req,
		                 .n_tok = n_tok,
		                 .fnv = &fnv[(size_t)i * (size_t)n_req]};
		if (pthread_create(&th[i], NULL, client_main, &cl[i]) != 0)
			break;
	}
	long tokens = 0;
	bool ns_failed = false;
	for (int i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		tokens += cl[i].tokens;
		*errors += cl[i].errors;
		ns_failed |= cl[i].ns_failed;
	}
	const double dt = moe_now_s() - t0;
	if (started < n_clients || ns_failed)
		goto out_free;
	rate = dt > 0 ? (double)tokens / dt : 0;
	if (text_fnv != NULL) {
		uint64_t h = FNV_BASIS;
		for (size_t i = 0; i < (size_t)n_clients * (size_t)n_req; i++)
			for (int b = 0; b < 8; b++)
				h = (h ^ ((fnv[i] >> (8 * b)) & 0xff)) * FNV_PRIME;
		*text_fnv = h;
	}
out_free:
	free(fnv);
	free(th);
	free(cl);
	return rate;
}

int moe_bsrv_start(moe_bsrv_child *s, const char *model, const char *const *extra)
{
	const char *argv[32] = {"/proc/self/exe", "serve", "-m", model, "--port", "0"};
	int n = 6;
	for (int i = 0; extra != NULL && extra[i] != NULL && n < 30; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	int fds[2];
	if (pipe(fds) != 0)
		return -1;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_addclose(&fa, fds[0]);
	const int rc = posix_spawn(&s->pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	if (rc != 0) {
		close(fds[0]);
		return -1;
	}
	s->err = fdopen(fds[0], "r");
	char line[1024];
	while (s->err != NULL && fgets(line, sizeof line, s->err) != NULL) {
		const char *p = strstr(line, "listening on http://127.0.0.1:");
		if (p != NULL)
			s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
		if (strstr(line, "moemesh serve: ready") != NULL)
			return 0;
		fputs(line, stderr);
	}
	if (s->err != NULL)
		fclose(s->err);
	else
		close(fds[0]);
	s->err = NULL;
	waitpid(s->pid, NULL, 0);
	return -1;
}

int moe_bsrv_stop(moe_bsrv_child *s)
{
	kill(s->pid, SIGTERM);
	char line[1024], tail[16][1024];
	int n = 0;
	while (s->err != NULL && fgets(line, sizeof line, s->err) != NULL)
		snprintf(tail[n++ % 16], sizeof tail[0], "%s", line);
	if (s->err != NULL)
		fclose(s->err);
	s->err = NULL;
	int st = 0;
	if (waitpid(s->pid, &st, 0) != s->pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr,
		        "moemesh serve (pid %d) did not exit cleanly (%s %d); its last "
		        "lines:\n",
		        (int)s->pid, WIFSIGNALED(st) ? "signal" : "status",
		        WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		for (int i = n > 16 ? n - 16 : 0; i < n; i++)
			fputs(tail[i % 16], stderr);
		return -1;
	}
	return 0;
}
