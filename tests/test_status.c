/*
 * test_status.c - running a cluster you can see: `moemesh status` against
 * real worker processes (an up worker with the experts a coordinator gave
 * it, an unreachable address, a wrong or missing secret, another model, a
 * worker answering while it serves a coordinator), serve's /health listing
 * the workers' bytes while they load, --log-level (strict values; debug
 * lines there with debug and gone without), the load progress as log lines
 * or, on a terminal, one bar, and syslog priorities under the journal.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"
#include "model/model.h"
#include "tests/test_util.h"

static char *slurp(const char *path)
{
	char *s = NULL;
	size_t n = 0;
	if (moe_read_file(&s, &n, path, 1 << 24) != MOE_OK)
		return strdup("");
	return s;
}

/* Whether the /health body in file path lists a first worker whose load
 * has ended (total_bytes > 0, all of it loaded). */
static bool first_loaded(const char *path)
{
	json_error_t je;
	json_t *j = json_load_file(path, 0, &je);
	json_t *w = json_array_get(json_object_get(j, "workers"), 0);
	const json_int_t total = json_integer_value(json_object_get(w, "total_bytes"));
	const bool done =
	    total > 0 && json_integer_value(json_object_get(w, "loaded_bytes")) == total;
	json_decref(j);
	return done;
}

/* ---- processes ------------------------------------------------------------------- */

/* `moemesh worker -m model --listen url extra`, stderr to err; returns once
 * it listens (--ready-fd). */
static pid_t start_worker(const char *model, const char *url, const char *extra, const char *err)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "exec '%s' worker -m '%s' --listen %s --threads 1 --ready-fd 3 %s 2>'%s'", bin(),
	         model, url, extra, err);
	const pid_t pid = spawn_ready(cmd, url);
	track(pid);
	return pid;
}

/* SIGTERM; the exit status (it must exit within 20 s). */
static int stop(pid_t pid)
{
	int st = 0;
	kill(pid, SIGTERM);
	for (int t = 0; t < 20000; t += 10) {
		const pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		sleep_ms(10);
	}
	cr_assert_fail("pid %d did not stop within 20 s", (int)pid);
	return -1;
}

/* `moemesh status ARGS --json` into a JSON object (*rc its exit status). */
static json_t *status_json(int *rc, const char *args)
{
	char out[256], err[256];
	tmp_path(out, sizeof out, "status.json");
	tmp_path(err, sizeof err, "status.err");
	*rc = sh("'%s' status %s --json >'%s' 2>'%s'", bin(), args, out, err);
	json_error_t je;
	json_t *j = json_load_file(out, 0, &je);
	char *e = slurp(err);
	cr_assert(j != NULL, "status printed no JSON (exit %d): %s; stderr: %s", *rc, je.text, e);
	free(e);
	unlink(out);
	unlink(err);
	return j;
}

static json_t *worker_at(json_t *j, size_t i)
{
	json_t *w = json_array_get(json_object_get(j, "workers"), i);
	cr_assert(w != NULL, "no workers[%zu]", i);
	return w;
}

static const char *jstr(json_t *w, const char *k)
{
	const char *s = json_string_value(json_object_get(w, k));
	cr_assert(s != NULL, "no string %s", k);
	return s;
}

static long long jint(json_t *w, const char *k)
{
	json_t *v = json_object_get(w, k);
	cr_assert(json_is_integer(v), "no integer %s", k);
	return json_integer_value(v);
}

static void write_secret(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	cr_assert(fp != NULL);
	fputs(text, fp);
	fclose(fp);
}

/* n_layer and n_expert of a GGUF, read by the model library. */
static void model_shape(int *n_layer, int *n_expert, const char *path)
{
	moe_gguf *g = NULL;
	moe_hparams hp;
	cr_assert_eq(moe_gguf_open(&g, path), MOE_OK);
	cr_assert_eq(moe_hparams_load(&hp, g), MOE_OK);
	*n_layer = hp.n_layer;
	*n_expert = hp.n_expert;
	moe_gguf_close(g);
}

/* ---- status ---------------------------------------------------------------------- */

/* Two workers (ipc:// and tcp://, with a secret) given their experts by a
 * coordinator that has ended: status shows both up with their names, the
 * model's identity and every expert between them, each in every layer; a
 * third address where nothing listens is unreachable, and the exit status
 * says so. */
Test(status, up_workers_with_their_experts_and_an_unreachable_one, .timeout = 120,
     .fini = kill_tracked)
{
	char m[1024], sock[256], url0[300], url1[64], dead[64], sec[256], e0[256], e1[256];
	char args[2048], extra[512];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(sock, sizeof sock, "w0.sock");
	tmp_path(sec, sizeof sec, "secret");
	tmp_path(e0, sizeof e0, "w0.err");
	tmp_path(e1, sizeof e1, "w1.err");
	write_secret(sec, "lab cluster secret\n");
	snprintf(url0, sizeof url0, "ipc://%s", sock);
	snprintf(url1, sizeof url1, "tcp://127.0.0.1:%d", free_port());
	snprintf(dead, sizeof dead, "tcp://127.0.0.1:%d", free_port());
	snprintf(extra, sizeof extra, "--secret-file '%s' --name alpha", sec);
	const pid_t w0 = start_worker(m, url0, extra, e0);
	snprintf(extra, sizeof extra, "--secret-file '%s' --name beta", sec);
	const pid_t w1 = start_worker(m, url1, extra, e1);

	/* before any coordinator: up, no experts */
	int rc;
	snprintf(args, sizeof args, "--worker %s --secret-file '%s'", url0, sec);
	json_t *j = status_json(&rc, args);
	cr_expect_eq(rc, 0);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "up");
	cr_expect_eq(jint(worker_at(j, 0), "experts_held"), 0);
	json_decref(j);

	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2,3 -o /dev/null --worker %s --worker %s "
	                "--secret-file '%s' 2>/dev/null",
	                bin(), m, url0, url1, sec),
	             0, "the coordinator failed");
	int nl, ne;
	model_shape(&nl, &ne, m);
	snprintf(args, sizeof args,
	         "--worker %s --worker %s --worker %s --secret-file '%s' -m '%s'", url0, url1, dead,
	         sec, m);
	j = status_json(&rc, args);
	cr_expect_eq(rc, 1, "an unreachable worker must make the exit status 1");
	json_t *a = worker_at(j, 0), *b = worker_at(j, 1), *d = worker_at(j, 2);
	cr_expect_str_eq(jstr(a, "state"), "up");
	cr_expect_str_eq(jstr(b, "state"), "up");
	cr_expect_str_eq(jstr(a, "name"), "alpha");
	cr_expect_str_eq(jstr(b, "name"), "beta");
	cr_expect_eq(jint(a, "experts_held") + jint(b, "experts_held"), (long long)nl * ne,
	             "the two hold every expert once");
	cr_expect_gt(jint(a, "experts_held"), 0);
	cr_expect_gt(jint(b, "experts_held"), 0);
	cr_expect_eq(jint(a, "layers_held"), nl);
	cr_expect_eq(jint(b, "layers_held"), nl);
	cr_expect_gt(jint(a, "bytes_loaded"), 0);
	cr_expect_gt(jint(a, "dispatches") + jint(b, "dispatches"), 0);
	cr_expect(json_is_false(json_object_get(a, "coordinator")), "its coordinator has ended");
	cr_expect_eq(jint(a, "pings_answered"), 3);
	cr_expect_str_eq(jstr(a, "model_id"), jstr(b, "model_id"));
	cr_expect_str_eq(jstr(d, "state"), "unreachable");
	cr_expect_str_eq(jstr(d, "url"), dead);
	json_decref(j);

	/* the table names the states too */
	char out[256];
	tmp_path(out, sizeof out, "table.txt");
	cr_expect_eq(sh("'%s' status --worker %s --worker %s --secret-file '%s' >'%s'", bin(), url1,
	                dead, sec, out),
	             1);
	cr_expect(file_has(out, "beta") && file_has(out, " up ") && file_has(out, "unreachable"));
	unlink(out);

	cr_expect_eq(stop(w0), 0);
	cr_expect_eq(stop(w1), 0);
	unlink(sec);
	unlink(e0);
	unlink(e1);
}

/* A worker with a secret: status with another secret, or none, is
 * auth-failed (exit 1) and the worker says why; with the right one, up; a
 * worker without a secret does not pass for one that knows ours. */
Test(status, a_wrong_or_missing_secret_fails_authentication, .timeout = 60, .fini = kill_tracked)
{
	char m[1024], url[64], url2[64], sec[256], bad[256], e0[256], e1[256], args[1024];
	char extra[512];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(sec, sizeof sec, "secret");
	tmp_path(bad, sizeof bad, "bad-secret");
	tmp_path(e0, sizeof e0, "w0.err");
	tmp_path(e1, sizeof e1, "w1.err");
	write_secret(sec, "right");
	write_secret(bad, "wrong");
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", free_port());
	snprintf(url2, sizeof url2, "tcp://127.0.0.1:%d", free_port());
	snprintf(extra, sizeof extra, "--secret-file '%s'", sec);
	const pid_t w = start_worker(m, url, extra, e0);
	const pid_t open_w = start_worker(m, url2, "", e1);
	int rc;

	snprintf(args, sizeof args, "--worker %s --secret-file '%s'", url, bad);
	json_t *j = status_json(&rc, args);
	cr_expect_eq(rc, 1);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "auth-failed");
	cr_expect(strstr(jstr(worker_at(j, 0), "detail"), "secret") != NULL, "detail: %s",
	          jstr(worker_at(j, 0), "detail"));
	json_decref(j);

	snprintf(args, sizeof args, "--worker %s", url);
	j = status_json(&rc, args);
	cr_expect_eq(rc, 1);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "auth-failed");
	json_decref(j);

	snprintf(args, sizeof args, "--worker %s --secret-file '%s'", url2, sec);
	j = status_json(&rc, args);
	cr_expect_eq(rc, 1, "a worker without the secret must not pass");
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "auth-failed");
	json_decref(j);

	snprintf(args, sizeof args, "--worker %s --secret-file '%s'", url, sec);
	j = status_json(&rc, args);
	cr_expect_eq(rc, 0);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "up");
	json_decref(j);

	cr_expect_eq(stop(w), 0);
	cr_expect_eq(stop(open_w), 0);
	cr_expect(file_has(e0, "does not know this worker's secret"), "the worker says why");
	unlink(sec);
	unlink(bad);
	unlink(e0);
	unlink(e1);
}

/* A worker of another model is model-mismatch against -m, and against the
 * first worker without -m. */
Test(status, another_model_is_a_mismatch, .timeout = 60, .fini = kill_tracked)
{
	char m[1024], m2[1024], u0[64], u1[64], e0[256], e1[256], args[2048];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	snprintf(m2, sizeof m2, "%s/qwen3moe-tiny-Q4_0.gguf", fixtures());
	tmp_path(e0, sizeof e0, "w0.err");
	tmp_path(e1, sizeof e1, "w1.err");
	snprintf(u0, sizeof u0, "tcp://127.0.0.1:%d", free_port());
	snprintf(u1, sizeof u1, "tcp://127.0.0.1:%d", free_port());
	const pid_t w0 = start_worker(m, u0, "", e0);
	const pid_t w1 = start_worker(m2, u1, "", e1);
	int rc;
	snprintf(args, sizeof args, "--worker %s --worker %s -m '%s'", u0, u1, m);
	json_t *j = status_json(&rc, args);
	cr_expect_eq(rc, 1);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "up");
	cr_expect_str_eq(jstr(worker_at(j, 1), "state"), "model-mismatch");
	json_decref(j);
	snprintf(args, sizeof args, "--worker %s --worker %s -m '%s'", u0, u1, m2);
	j = status_json(&rc, args);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "model-mismatch");
	cr_expect_str_eq(jstr(worker_at(j, 1), "state"), "up");
	json_decref(j);
	snprintf(args, sizeof args, "--worker %s --worker %s", u1, u0);
	j = status_json(&rc, args);
	cr_expect_eq(rc, 1);
	cr_expect_str_eq(jstr(worker_at(j, 0), "state"), "up");
	cr_expect_str_eq(jstr(worker_at(j, 1), "state"), "model-mismatch");
	json_decref(j);
	cr_expect_eq(stop(w0), 0);
	cr_expect_eq(stop(w1), 0);
	unlink(e0);
	unlink(e1);
}

/* While `moemesh serve` holds the worker's control link, status still
 * answers: a coordinator is connected, the experts are held. */
Test(status, a_worker_serving_a_coordinator_still_answers, .timeout = 120, .fini = kill_tracked)
{
	char m[1024], url[64], e0[256], es[256], args[2048], cmd[4096];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(e0, sizeof e0, "w0.err");
	tmp_path(es, sizeof es, "serve.err");
	snprintf(url, sizeof url, "tcp://127.0.0.1:%d", free_port());
	const pid_t w = start_worker(m, url, "", e0);
	snprintf(cmd, sizeof cmd, "exec '%s' serve -m '%s' --port 0 --threads 1 --worker %s 2>'%s'",
	         bin(), m, url, es);
	const pid_t srv = fork();
	cr_assert(srv >= 0);
	if (srv == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	track(srv);
	/* until serve says it is ready (its log line) */
	for (int t = 0; t < 60000 && !file_has(es, "moemesh serve: ready"); t += 20)
		sleep_ms(20);
	cr_assert(file_has(es, "moemesh serve: ready"), "serve did not get ready");
	int rc;
	snprintf(args, sizeof args, "--worker %s -m '%s'", url, m);
	json_t *j = status_json(&rc, args);
	cr_expect_eq(rc, 0);
	json_t *a = worker_at(j, 0);
	cr_expect_str_eq(jstr(a, "state"), "up");
	cr_expect(json_is_true(json_object_get(a, "coordinator")), "serve is connected");
	cr_expect_gt(jint(a, "experts_held"), 0);
	json_decref(j);
	cr_expect_eq(stop(srv), 0);
	cr_expect_eq(stop(w), 0);
	unlink(e0);
	unlink(es);
}

/* ---- log level, load progress ------------------------------------------------------ */

Test(log, level_values_are_strict, .timeout = 30)
{
	char err[256], m[1024];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(err, sizeof err, "log.err");
	static const char *const cmds[] = {"worker -m M --listen ipc:///tmp/x --log-level verbose",
	                                   "run -m M -p hi --log-level DEBUG",
	                                   "serve -m M --log-level '' --port 0"};
	for (int i = 0; i < 3; i++) {
		char c[512];
		snprintf(c, sizeof c, "%s", cmds[i]);
		char *mp = strstr(c, " M ");
		cr_assert(mp != NULL);
		char full[4096];
		snprintf(full, sizeof full, "%.*s '%s' %s", (int)(mp - c), c, m, mp + 3);
		cr_expect_eq(sh("'%s' %s 2>'%s' >/dev/null", bin(), full, err), 2, "%s", full);
		cr_expect(file_has(err, "want error, warn, info or debug"), "%s: no clear error",
		          full);
	}
	moe_log_level l;
	cr_expect_eq(moe_log_level_parse(&l, "debug"), MOE_OK);
	cr_expect_eq(l, MOE_LOG_DEBUG);
	cr_expect_eq(moe_log_level_parse(&l, "warn"), MOE_OK);
	cr_expect_eq(l, MOE_LOG_WARN);
	cr_expect_eq(moe_log_level_parse(&l, "warning"), MOE_ERR_INVAL);
	cr_expect_eq(moe_log_level_parse(&l, NULL), MOE_ERR_INVAL);
	unlink(err);
}

/* The same run with --log-level debug has debug lines (the coordinator's
 * and its spawned workers'), with info none, with error not even the info
 * lines; every line carries a time and its level.  The workers' load
 * progress is logged (stderr is no terminal) up to 100 % for each. */
Test(log, debug_lines_come_and_go_with_the_level, .timeout = 120)
{
	char m[1024], err[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(err, sizeof err, "run.err");
	static const char *const levels[] = {"debug", "info", "error"};
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(sh("'%s' run -m '%s' --tokens 1,2,3 -n 2 --temp 0 --workers 2 "
		                "--log-level %s 2>'%s' >/dev/null",
		                bin(), m, levels[i], err),
		             0);
		const bool debug = file_has(err, "Z debug ");
		const bool info = file_has(err, "Z info  ");
		cr_expect_eq(debug, i == 0, "--log-level %s: debug lines %s", levels[i],
		             debug ? "there" : "missing");
		cr_expect_eq(info, i < 2, "--log-level %s: info lines %s", levels[i],
		             info ? "there" : "missing");
		if (i == 0) {
			cr_expect(file_has(err, "worker w0: ASSIGN of"), "the worker's debug line");
			cr_expect(file_has(err, "(ipc://"), "the coordinator's debug line");
		}
		if (i < 2) {
			cr_expect(file_has(err, "loading experts: worker w0 100%"));
			cr_expect(file_has(err, "loading experts: worker w1 100%"));
		}
	}
	unlink(err);
}

/* The test harness worker (tests/worker_harness.c). */
static const char *test_worker(void)
{
	const char *w = getenv("MOE_TEST_WORKER");
	cr_assert(w != NULL, "MOE_TEST_WORKER is not set");
	return w;
}

/* GET url into out; the HTTP status (curl's). */
static int http_get(const char *url, const char *out)
{
	char code[256];
	tmp_path(code, sizeof code, "code");
	if (sh("curl -s -o '%s' -w '%%{http_code}' '%s' >'%s'", out, url, code) != 0) {
		unlink(code);
		return 0;
	}
	char *c = slurp(code);
	const int st = atoi(c);
	free(c);
	unlink(code);
	return st;
}

/* serve with two workers, the second holding its ASSIGN until the test lets
 * it go: meanwhile /health is 503 "loading" and lists both workers, the
 * first with all its bytes loaded, the second with none; then 200. */
Test(status, health_lists_the_workers_load_while_loading, .timeout = 120, .fini = kill_tracked)
{
	char m[1024], u0[64], u1[64], e0[256], e1[256], es[256], go[256], body[256], h[128];
	char cmd[4096], extra[4096];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(e0, sizeof e0, "w0.err");
	tmp_path(e1, sizeof e1, "w1.err");
	tmp_path(es, sizeof es, "serve.err");
	tmp_path(go, sizeof go, "go");
	tmp_path(body, sizeof body, "health.json");
	unlink(go);
	snprintf(u0, sizeof u0, "tcp://127.0.0.1:%d", free_port());
	snprintf(u1, sizeof u1, "tcp://127.0.0.1:%d", free_port());
	const int port = free_port();
	snprintf(h, sizeof h, "http://127.0.0.1:%d/health", port);
	const pid_t w0 = start_worker(m, u0, "--name first", e0);
	/* the harness: start_worker runs `moemesh worker`; this one runs the harness */
	snprintf(extra, sizeof extra,
	         "exec '%s' --hold-assign-until '%s' -m '%s' --listen %s --threads 1 --name second "
	         "--ready-fd 3 2>'%s'",
	         test_worker(), go, m, u1, e1);
	const pid_t w1 = spawn_ready(extra, "the harness");
	track(w1);

	snprintf(cmd, sizeof cmd,
	         "exec '%s' serve -m '%s' --port %d --threads 1 --worker %s --worker %s 2>'%s'",
	         bin(), m, port, u0, u1, es);
	const pid_t srv = fork();
	cr_assert(srv >= 0);
	if (srv == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	track(srv);
	/* until /health shows the first worker loaded (both are listed from the
	 * first ASSIGN on; the second's is then held) */
	int code = 0;
	for (int t = 0; t < 30000; t += 20) {
		code = http_get(h, body);
		if (code != 0 && first_loaded(body))
			break;
		sleep_ms(20);
	}
	cr_expect_eq(code, 503);
	json_error_t je;
	json_t *j = json_load_file(body, 0, &je);
	cr_assert(j != NULL, "/health: %s", je.text);
	cr_expect_str_eq(json_string_value(json_object_get(j, "status")), "loading");
	json_t *ws = json_object_get(j, "workers");
	cr_assert_eq(json_array_size(ws), 2);
	json_t *a = json_array_get(ws, 0), *c = json_array_get(ws, 1);
	cr_expect_str_eq(jstr(a, "name"), "first");
	cr_expect_str_eq(jstr(c, "name"), "second");
	cr_expect_gt(jint(a, "total_bytes"), 0);
	cr_expect_eq(jint(a, "loaded_bytes"), jint(a, "total_bytes"));
	cr_expect_eq(jint(c, "loaded_bytes"), 0);
	json_decref(j);

	FILE *fp = fopen(go, "w");
	cr_assert(fp != NULL);
	fclose(fp);
	for (int t = 0; t < 30000 && (code = http_get(h, body)) != 200; t += 20)
		sleep_ms(20);
	cr_expect_eq(code, 200, "serve got ready once the load was let go");
	/* once ready the workers are listed up or down, their load no more */
	cr_expect(!file_has(body, "total_bytes"), "a load list once ready");
	cr_expect(file_has(body, "\"workers_up\":2"), "both workers not listed up once ready");
	cr_expect_eq(stop(srv), 0);
	cr_expect_eq(stop(w0), 0);
	cr_expect_eq(stop(w1), 0);
	unlink(go);
	unlink(body);
	unlink(e0);
	unlink(e1);
	unlink(es);
}

/* On a terminal (script(1) gives the run one) the load progress is one bar
 * redrawn in place that ends with every worker loaded, and no log line per
 * 10 %. */
Test(log, a_terminal_gets_one_progress_bar, .timeout = 60)
{
	char m[1024], out[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(out, sizeof out, "tty.txt");
	if (sh("command -v script >/dev/null") != 0) {
		fprintf(stderr, "[SKIP] log::a_terminal_gets_one_progress_bar: no script(1)\n");
		return;
	}
	cr_assert_eq(sh("script -qec \"'%s' run -m '%s' --tokens 1,2 -n 2 --temp 0 --workers 2 "
	                ">/dev/null\" '%s' >/dev/null 2>&1",
	                bin(), m, out),
	             0);
	cr_expect(file_has(out, "\rloading experts ["), "no bar drawn in place");
	cr_expect(file_has(out, "2 of 2 workers\033[K\r\n"),
	          "the bar does not end with both loaded");
	cr_expect(!file_has(out, "loading experts: worker"), "log lines on a terminal");
	unlink(out);
}

/* With stderr the journal's stream (JOURNAL_STREAM names its device and
 * inode) a line is a syslog priority and the message, no time of our own;
 * with JOURNAL_STREAM naming another file, the usual time and level. */
Test(log, the_journal_gets_priority_prefixes, .timeout = 60)
{
	char m[1024], err[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(err, sizeof err, "journal.err");
	cr_assert_eq(
	    sh(": >'%s'; JOURNAL_STREAM=$(stat -c %%d:%%i '%s') '%s' run -m '%s' --tokens 1,2 "
	       "-n 2 --temp 0 --workers 1 --log-level debug 2>>'%s' >/dev/null",
	       err, err, bin(), m, err),
	    0);
	cr_expect(file_has(err, "<6>loading experts: worker w0 100%"),
	          "no info line with its priority");
	cr_expect(file_has(err, "<7>worker w0 ("), "no debug line with its priority");
	cr_expect(!file_has(err, "Z info "), "a time of our own under the journal");
	cr_assert_eq(
	    sh("JOURNAL_STREAM=1:1 '%s' run -m '%s' --tokens 1,2 -n 2 --temp 0 --workers 1 "
	       "2>'%s' >/dev/null",
	       bin(), m, err),
	    0);
	cr_expect(file_has(err, "Z info  loading experts: worker w0 100%"));
	cr_expect(!file_has(err, "<6>"));
	unlink(err);
}

/* `local` in a cluster (the coordinator's own experts) is listed, not asked,
 * and is no failure; --workers N (workers status would start) is refused. */
Test(status, local_is_listed_and_workers_n_refused, .timeout = 30)
{
	int rc;
	json_t *j = status_json(&rc, "--worker local");
	cr_expect_eq(rc, 0);
	cr_expect_str_eq(jstr(worker_at(j, 0), "url"), "local");
	cr_expect(strstr(jstr(worker_at(j, 0), "detail"), "own experts") != NULL);
	json_decref(j);
	cr_expect_eq(sh("'%s' status --workers 2 2>/dev/null", bin()), 2);
	cr_expect_eq(sh("'%s' status 2>/dev/null", bin()), 2, "no worker named");
}
