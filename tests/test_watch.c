/*
 * test_watch.c - the coordinator's heartbeat thread under `serve`: while one
 * long stream keeps the scheduler stepping (workers slowed by
 * --net-delay-us, so it lasts seconds), a worker killed and restarted on
 * its URL is re-admitted before the stream ends (not only once serve is
 * idle), and a worker frozen by SIGSTOP is found lost while it still runs
 * (and taken back once resumed); the stream ends with [DONE] and its text
 * is the one of the undisturbed run.  A frozen worker that holds no expert
 * (no dispatch waits on it) is found by the heartbeats alone, while the
 * stream runs.  A spawned worker killed under --respawn is started again.  Real processes over real
 * sockets.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

extern char **environ;

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert_not_null(v, "%s is not set", name);
	return v;
}

/* `moemesh worker` on ipc://sock, each dispatch delayed by delay_us. */
static pid_t start_worker(const char *model, const char *sock, int delay_us)
{
	char cmd[4096];
	unlink(sock);
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen ipc://%s --threads 1 --ready-fd 3 --quiet "
	         "--net-delay-us %d",
	         bin(), model, sock, delay_us);
	const pid_t pid = spawn_ready(cmd, sock);
	track(pid);
	return pid;
}

typedef serve_proc serve;

/* `moemesh serve -m model --port 0 --threads 1 ARGS...` until its ready line. */
static serve start_serve(const char *model, const char *const *args)
{
	const serve s = spawn_serve(model, args);
	track(s.pid);
	return s;
}

/* GET path with curl: the HTTP status; the body in out. */
static int get(const serve *s, const char *path, char *out, size_t size)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "curl -s -m 30 -w '\\n%%{http_code}' http://127.0.0.1:%d%s",
	         s->port, path);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	const size_t n = fread(out, 1, size - 1, p);
	pclose(p);
	out[n] = '\0';
	char *nl = strrchr(out, '\n');
	cr_assert_not_null(nl, "curl gave no status: %s", out);
	*nl = '\0';
	return atoi(nl + 1);
}

/* curl POSTing body to /v1/completions, its output into file; its pid. */
static pid_t start_curl(const serve *s, const char *body, const char *file)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd,
	         "exec curl -s -N -m 120 -H 'Content-Type: application/json' -d '%s' "
	         "http://127.0.0.1:%d/v1/completions > %s",
	         body, s->port, file);
	const pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	track(pid);
	return pid;
}

static size_t read_file(const char *path, char *buf, size_t size)
{
	FILE *fp = fopen(path, "rb");
	const size_t n = fp ? fread(buf, 1, size - 1, fp) : 0;
	if (fp)
		fclose(fp);
	buf[n] = '\0';
	return n;
}

/* Polls /health (every 50 ms, up to 20 s) until it holds want, while the
 * stream of curl pid still runs: false if it ended first (or never). */
static bool health_while_streaming(const serve *s, pid_t curl, const char *want, char *out,
                                   size_t size)
{
	for (int t = 0; t < 400; t++) {
		get(s, "/health", out, size);
		if (strstr(out, want) != NULL)
			return waitpid(curl, NULL, WNOHANG) == 0;
		if (waitpid(curl, NULL, WNOHANG) != 0)
			return false;
		usleep(50000);
	}
	return false;
}

/* The text of the streamed chunks of an SSE body, concatenated. */
static void stream_text(char *out, size_t size, const char *body)
{
	size_t n = 0;
	out[0] = '\0';
	for (const char *k = strstr(body, "\"text\":\""); k != NULL; k = strstr(k, "\"text\":\"")) {
		k += 8;
		const char *e = strstr(k, "\",\"");
		cr_assert_not_null(e);
		n += (size_t)snprintf(out + n, size - n, "%.*s", (int)(e - k), k);
		cr_assert_lt(n, size);
	}
}

Test(watch, workers_lost_and_readmitted_while_a_stream_runs, .timeout = 180, .fini = kill_tracked)
{
	static char buf[1 << 16], ref[1 << 16], txt[1 << 16], body[1 << 17];
	char m[1024], sa[256], sb[256], ua[300], ub[300], out[256];
	snprintf(m, sizeof m, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	tmp_path(sa, sizeof sa, "a.sock");
	tmp_path(sb, sizeof sb, "b.sock");
	tmp_path(out, sizeof out, "stream.txt");
	snprintf(ua, sizeof ua, "ipc://%s", sa);
	snprintf(ub, sizeof ub, "ipc://%s", sb);
	/* about 10 ms per dispatch: the stream below lasts ~10 s */
	pid_t a = start_worker(m, sa, 10000), b = start_worker(m, sb, 10000);
	serve s =
	    start_serve(m, (const char *const[]){"--worker", ua, "--worker", ub, "--replicate",
	                                         "all", "--dispatch-timeout-ms", "1000", NULL});
	const char *req = "{\"prompt\":\"In the beginning\",\"max_tokens\":120,\"temperature\":0,"
	                  "\"stream\":true}";
	pid_t curl = start_curl(&s, req, out);
	cr_assert_eq(waitpid(curl, NULL, 0), curl);
	read_file(out, body, sizeof body);
	cr_assert(strstr(body, "data: [DONE]") != NULL, "the undisturbed stream: %s", body);
	stream_text(ref, sizeof ref, body);

	curl = start_curl(&s, req, out);
	for (int t = 0; t < 400 && read_file(out, body, sizeof body) == 0; t++)
		usleep(25000); /* its first chunk: serve is stepping */
	cr_assert_gt(strlen(body), 0, "the stream did not start");

	/* a dies and comes back on its URL: taken back while the stream runs */
	kill(a, SIGKILL);
	waitpid(a, NULL, 0);
	cr_assert(health_while_streaming(&s, curl, "\"workers_up\":1", buf, sizeof buf),
	          "a not seen lost while the stream ran: %s", buf);
	a = start_worker(m, sa, 10000);
	cr_assert(health_while_streaming(&s, curl, "\"workers_up\":2", buf, sizeof buf),
	          "a not re-admitted while the stream ran: %s", buf);

	/* b frozen: found lost within the deadline, the stream still running */
	kill(b, SIGSTOP);
	cr_assert(health_while_streaming(&s, curl, "\"workers_up\":1", buf, sizeof buf),
	          "frozen b not seen lost while the stream ran: %s", buf);
	kill(b, SIGCONT);

	cr_assert_eq(waitpid(curl, NULL, 0), curl);
	/* b, resumed, is re-dialled and taken back too (it kept its experts) */
	bool back = false;
	for (int t = 0; t < 300 && !back; t++) {
		get(&s, "/health", buf, sizeof buf);
		back = strstr(buf, "\"workers_up\":2") != NULL;
		usleep(back ? 0 : 50000);
	}
	cr_assert(back, "resumed b not re-admitted: %s", buf);
	read_file(out, body, sizeof body);
	cr_assert(strstr(body, "data: [DONE]") != NULL, "the stream did not end: %s", body);
	cr_assert(strstr(body, "\"error\"") == NULL, "the stream carries an error: %s", body);
	stream_text(txt, sizeof txt, body);
	cr_assert_str_eq(txt, ref, "the streamed text changed");
	get(&s, "/metrics", buf, sizeof buf);
	cr_assert(strstr(buf, "moemesh_cluster_workers_readmitted_total 2\n") != NULL,
	          "the re-admission is not counted: %s", buf);
	cr_assert(strstr(buf, "moemesh_cluster_workers_lost_total 2\n") != NULL,
	          "the losses are not counted");

	kill(s.pid, SIGTERM);
	char line[1024];
	while (fgets(line, sizeof line, s.err) != NULL)
		fputs(line, stderr);
	fclose(s.err);
	int st = 0;
	waitpid(s.pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve ended with status %d", st);
	kill(a, SIGTERM);
	kill(b, SIGTERM);
	waitpid(a, NULL, 0);
	waitpid(b, NULL, 0);
	unlink(sa);
	unlink(sb);
	unlink(out);
}

/* The child processes of pid (of all its threads), up to max; how many. */
static int children_of(pid_t pid, pid_t *out, int max)
{
	char cmd[128], line[4096];
	snprintf(cmd, sizeof cmd, "cat /proc/%d/task/*/children 2>/dev/null", (int)pid);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	int n = 0;
	while (fgets(line, sizeof line, p) != NULL)
		for (char *t = strtok(line, " \n"); t != NULL && n < max; t = strtok(NULL, " \n"))
			out[n++] = (pid_t)atoi(t);
	pclose(p);
	return n;
}

static bool health_gets(const serve *s, const char *want, char *out, size_t size)
{
	for (int t = 0; t < 300; t++) {
		get(s, "/health", out, size);
		if (strstr(out, want) != NULL)
			return true;
		usleep(50000);
	}
	return false;
}

Test(watch, a_spawned_worker_that_dies_is_respawned_with_respawn, .timeout = 120,
     .fini = kill_tracked)
{
	static char buf[1 << 16], ref[1 << 16], txt[1 << 16], body[1 << 17];
	char m[1024], out[256];
	snprintf(m, sizeof m, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	tmp_path(out, sizeof out, "respawn.txt");
	serve s = start_serve(m, (const char *const[]){"--workers", "2", "--replicate", "all",
	                                               "--dispatch-timeout-ms", "1000", "--respawn",
	                                               NULL});
	const char *req = "{\"prompt\":\"In the beginning\",\"max_tokens\":24,\"temperature\":0,"
	                  "\"stream\":true}";
	pid_t curl = start_curl(&s, req, out);
	cr_assert_eq(waitpid(curl, NULL, 0), curl);
	read_file(out, body, sizeof body);
	cr_assert(strstr(body, "data: [DONE]") != NULL, "the undisturbed stream: %s", body);
	stream_text(ref, sizeof ref, body);

	pid_t kids[8];
	cr_assert_eq(children_of(s.pid, kids, 8), 2, "serve has not 2 workers");
	track(kids[1]);         /* should serve be killed: the workers it spawned too */
	kill(kids[0], SIGKILL); /* reaped by serve */
	cr_assert(health_gets(&s, "\"workers_up\":1", buf, sizeof buf), "not seen lost: %s", buf);
	cr_assert(health_gets(&s, "\"workers_up\":2", buf, sizeof buf), "not re-spawned: %s", buf);
	pid_t now[8];
	cr_assert_eq(children_of(s.pid, now, 8), 2, "serve has not 2 workers again");
	track(now[0] != kids[1] ? now[0] : now[1]);
	cr_assert(now[0] != kids[0] && now[1] != kids[0], "the killed worker is still a child");

	curl = start_curl(&s, req, out);
	cr_assert_eq(waitpid(curl, NULL, 0), curl);
	read_file(out, body, sizeof body);
	cr_assert(strstr(body, "data: [DONE]") != NULL, "the stream did not end: %s", body);
	stream_text(txt, sizeof txt, body);
	cr_assert_str_eq(txt, ref, "the streamed text changed");
	get(&s, "/metrics", buf, sizeof buf);
	cr_assert(strstr(buf, "moemesh_cluster_workers_readmitted_total 1\n") != NULL,
	          "the re-admission is not counted");

	/* the crash is still reported when serve ends: status 1, naming it */
	kill(s.pid, SIGTERM);
	char line[1024];
	bool named = false;
	while (fgets(line, sizeof line, s.err) != NULL) {
		fputs(line, stderr);
		named |= strstr(line, "was killed by signal 9 and re-spawned") != NULL;
	}
	fclose(s.err);
	int st = 0;
	waitpid(s.pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "serve ended with status %d", st);
	cr_expect(named, "the killed worker is not named at the end");
	unlink(out);
}

Test(watch, a_frozen_worker_no_dispatch_waits_on_is_found_while_busy, .timeout = 180,
     .fini = kill_tracked)
{
	static char buf[1 << 16], body[1 << 17];
	char m[1024], sa[256], sb[256], sc[256], cfg[256], out[256];
	snprintf(m, sizeof m, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	tmp_path(sa, sizeof sa, "fa.sock");
	tmp_path(sb, sizeof sb, "fb.sock");
	tmp_path(sc, sizeof sc, "fc.sock");
	tmp_path(cfg, sizeof cfg, "cluster.json");
	tmp_path(out, sizeof out, "frozen.txt");
	/* c's "mem" cap is below one expert: it holds none, and no dispatch
	 * ever waits on it; only a heartbeat can find it frozen */
	FILE *fp = fopen(cfg, "w");
	cr_assert_not_null(fp);
	fprintf(fp,
	        "{\"workers\": [{\"url\": \"ipc://%s\", \"name\": \"c\", \"mem\": 4096},"
	        " {\"url\": \"ipc://%s\", \"name\": \"a\"}, {\"url\": \"ipc://%s\", \"name\": "
	        "\"b\"}]}\n",
	        sc, sa, sb);
	fclose(fp);
	const pid_t a = start_worker(m, sa, 10000), b = start_worker(m, sb, 10000);
	const pid_t c = start_worker(m, sc, 0);
	serve s = start_serve(
	    m, (const char *const[]){"--cluster", cfg, "--dispatch-timeout-ms", "1000", NULL});
	const char *req = "{\"prompt\":\"In the beginning\",\"max_tokens\":120,\"temperature\":0,"
	                  "\"stream\":true}";
	const pid_t curl = start_curl(&s, req, out);
	for (int t = 0; t < 400 && read_file(out, body, sizeof body) == 0; t++)
		usleep(25000); /* its first chunk: serve is stepping */
	cr_assert_gt(strlen(body), 0, "the stream did not start");
	kill(c, SIGSTOP);
	cr_assert(
	    health_while_streaming(&s, curl, "{\"name\":\"c\",\"up\":false}", buf, sizeof buf),
	    "frozen c not seen lost while the stream ran: %s", buf);
	kill(c, SIGCONT);
	cr_assert_eq(waitpid(curl, NULL, 0), curl);
	read_file(out, body, sizeof body);
	cr_assert(strstr(body, "data: [DONE]") != NULL, "the stream did not end: %s", body);
	cr_assert(health_gets(&s, "\"workers_up\":3", buf, sizeof buf), "c not taken back: %s",
	          buf);

	kill(s.pid, SIGTERM);
	char line[1024];
	while (fgets(line, sizeof line, s.err) != NULL)
		fputs(line, stderr);
	fclose(s.err);
	int st = 0;
	waitpid(s.pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve ended with status %d", st);
	const pid_t w[3] = {a, b, c};
	for (int i = 0; i < 3; i++) {
		kill(w[i], SIGTERM);
		waitpid(w[i], NULL, 0);
	}
	unlink(sa);
	unlink(sb);
	unlink(sc);
	unlink(cfg);
	unlink(out);
}
