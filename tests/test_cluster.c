/*
 * test_cluster.c - expert parallelism end to end.  `moemesh logits` with
 * spawned, replicated, local and tcp workers is bit-identical to one process
 * for every fixture model, and with workers on other ISA levels (or says it
 * is skipped where the CPU has one level); the example cluster file loads
 * and a misspelt key is an error naming it; a worker answers malformed
 * control and data frames with ERROR and keeps serving; wrong model identity
 * and wrong secret are refused, over ipc:// and tcp://127.0.0.1; a worker
 * dying before its assignment is a clear error; workers dying mid-generation
 * do not change the output (the dying workers are the test harness,
 * $MOE_TEST_WORKER: the release programs carry no fault injection); a
 * spawned worker that dies is reported by run and logits (exit 1); a 3-host
 * run over network namespaces (veth + tbf) gives the single-process text.
 * Every worker a test starts is checked when it ends (see "how workers end").
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/forward.h"
#include "proto/proto.h"
#include "tests/test_util.h"

/* Waits up to ms for fd to be readable. */
static bool readable_within(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, ms) == 1;
}

/* ---- how workers end --------------------------------------------------------------
 * Every worker a test starts is checked when it ends: a crash (an ASan report
 * exits 1; or a signal) fails the test even where failover hid it from the
 * output.  Workers stopped with SIGTERM must exit 0; the harness's faults exit
 * 3.  Workers a coordinator spawns (--workers N) are checked by the
 * coordinator (moe_cluster_shutdown), whose exit status the tests check. */

/* The workers the current test started and has not waited for yet; a test
 * that fails part-way leaves them to reap_workers (its .fini). */
static pid_t g_workers[16];

static void track_worker(pid_t pid, bool add)
{
	for (int i = 0; i < 16; i++) {
		if (add ? g_workers[i] == 0 : g_workers[i] == pid) {
			g_workers[i] = add ? pid : 0;
			return;
		}
	}
	cr_assert(!add, "more than 16 workers in one test");
}

static int children_of(pid_t parent, pid_t *out, int max);

/* .fini of every test that starts workers or coordinators: none outlives its
 * test, nor do a coordinator's spawned workers. */
static void reap_workers(void)
{
	for (int i = 0; i < 16; i++) {
		if (g_workers[i] > 0) {
			pid_t kids[8];
			const int n = children_of(g_workers[i], kids, 8);
			for (int k = 0; k < n; k++)
				kill(kids[k], SIGKILL);
			kill(g_workers[i], SIGKILL);
			waitpid(g_workers[i], NULL, 0);
			g_workers[i] = 0;
		}
	}
}

/* The fault-injecting worker (tests/worker_harness.c). */
static const char *test_worker(void)
{
	const char *b = getenv("MOE_TEST_WORKER");
	cr_assert(b != NULL, "MOE_TEST_WORKER is not set");
	return b;
}

/* Starts `env ENV moemesh worker -m model --listen url --threads 1 extra`
 * (env: VAR=value words, or ""), or with fault (not NULL: "--die-after N" or
 * "--die-on-assign") the test harness with those options instead of `moemesh
 * worker`, and waits until it listens (its --ready-fd byte). */
static pid_t start_worker_url(const char *model, const char *url, const char *env,
                              const char *fault, const char *extra)
{
	char cmd[4096];
	if (fault != NULL)
		snprintf(cmd, sizeof cmd,
		         "exec env %s '%s' %s -m '%s' --listen %s --threads 1 --ready-fd 3 %s", env,
		         test_worker(), fault, model, url, extra);
	else
		snprintf(cmd, sizeof cmd,
		         "exec env %s '%s' worker -m '%s' --listen %s --threads 1 --ready-fd 3 %s",
		         env, bin(), model, url, extra);
	const pid_t pid = spawn_ready(cmd, url);
	track_worker(pid, true);
	return pid;
}

/* The same on ipc://sock. */
static pid_t start_worker_full(const char *model, const char *sock, const char *env,
                               const char *fault, const char *extra)
{
	char url[300];
	snprintf(url, sizeof url, "ipc://%s", sock);
	unlink(sock);
	return start_worker_url(model, url, env, fault, extra);
}

static pid_t start_worker_env(const char *model, const char *sock, const char *env,
                              const char *extra)
{
	return start_worker_full(model, sock, env, NULL, extra);
}

static pid_t start_worker(const char *model, const char *sock, const char *extra)
{
	return start_worker_full(model, sock, "", NULL, extra);
}

/* Removes what a worker on ipc://sock leaves when it dies without cleaning
 * up (the harness's _exit(3)): the socket and its .data socket. */
static void unlink_sockets(const char *sock)
{
	char data[300];
	snprintf(data, sizeof data, "%s.data", sock);
	unlink(sock);
	unlink(data);
}

/* A worker of the test harness that dies as fault says. */
static pid_t start_faulty_worker(const char *model, const char *sock, const char *fault,
                                 const char *extra)
{
	return start_worker_full(model, sock, "", fault, extra);
}

#define STILL_RUNNING (-2) /* wait_worker: the worker had to be killed */

/* Waits up to ms for pid to end; returns its wait status, or STILL_RUNNING
 * after killing it (SIGKILL) when it did not end in time. */
static int wait_worker(pid_t pid, int ms)
{
	int st = 0;
	for (int t = 0; t <= ms; t += 10) {
		const pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			track_worker(pid, false);
			return st;
		}
		cr_assert_eq(r, 0, "waitpid %d: %s", (int)pid, strerror(errno));
		sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	track_worker(pid, false);
	return STILL_RUNNING;
}

/* Stops a worker the test started (SIGTERM) and returns how it ended
 * (wait_worker). */
static int stop_worker(pid_t pid)
{
	kill(pid, SIGTERM);
	return wait_worker(pid, 20000);
}

/* "exit status N", "signal N (name)" or "no exit (killed by the test)". */
static const char *ending(int st)
{
	static char buf[4][64];
	static int k;
	char *b = buf[k++ % 4];
	if (st == STILL_RUNNING)
		snprintf(b, 64, "no exit (still running, killed by the test)");
	else if (WIFEXITED(st))
		snprintf(b, 64, "exit status %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(b, 64, "signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else
		snprintf(b, 64, "wait status %#x", st);
	return b;
}

/* Asserts that a worker ended with exit status want. */
static void expect_exit(int st, int want, const char *who)
{
	cr_assert(st != STILL_RUNNING && WIFEXITED(st) && WEXITSTATUS(st) == want,
	          "%s ended with %s, not exit status %d", who, ending(st), want);
}

/* ---- bit-identical logits ------------------------------------------------------ */

Test(cluster, logits_bit_identical_for_every_fixture, .timeout = 600)
{
	static const char *const configs[][2] = {
	    {"--workers 1", ""},
	    {"--workers 2", ""},
	    {"--workers 3", "--one-by-one"},
	    {"--workers 2 --replicate all", ""},
	    {"--workers 3 --replicate 0,1 --placement round-robin", "--one-by-one"},
	    {"--workers 2 --worker local --placement round-robin", "--one-by-one"},
	};
	DIR *d = opendir(fixtures());
	cr_assert(d != NULL);
	struct dirent *de;
	int n_models = 0;
	char ref[256], ref1[256], out[256];
	tmp_path(ref, sizeof ref, "ref.f32");
	tmp_path(ref1, sizeof ref1, "ref1.f32");
	tmp_path(out, sizeof out, "out.f32");
	while ((de = readdir(d)) != NULL) {
		const size_t len = strlen(de->d_name);
		if (len < 5 || strcmp(de->d_name + len - 5, ".gguf") != 0)
			continue;
		char model[1024];
		snprintf(model, sizeof model, "%s/%s", fixtures(), de->d_name);
		const char *toks = "1,7,42,3,99,5,11,200,13";
		cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --threads 1", bin(), model,
		                toks, ref),
		             0);
		cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --threads 1 --one-by-one",
		                bin(), model, toks, ref1),
		             0);
		for (size_t k = 0; k < sizeof configs / sizeof *configs; k++) {
			cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --threads 1 %s %s",
			                bin(), model, toks, out, configs[k][0], configs[k][1]),
			             0, "%s: %s %s failed", de->d_name, configs[k][0],
			             configs[k][1]);
			cr_assert(same_file(configs[k][1][0] ? ref1 : ref, out),
			          "%s: logits with %s %s differ from one process", de->d_name,
			          configs[k][0], configs[k][1]);
		}
		n_models++;
	}
	closedir(d);
	cr_assert_geq(n_models, 13, "only %d fixture models found", n_models);
	unlink(ref);
	unlink(ref1);
	unlink(out);
}

Test(cluster, cluster_file_and_local_host, .timeout = 120)
{
	char model[1024], ref[256], out[256], json[256];
	snprintf(model, sizeof model, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	tmp_path(ref, sizeof ref, "cf-ref.f32");
	tmp_path(out, sizeof out, "cf-out.f32");
	tmp_path(json, sizeof json, "cluster.json");
	FILE *fp = fopen(json, "w");
	cr_assert(fp != NULL);
	fprintf(fp, "{\"workers\": [\"local\", {\"url\": \"local\", \"name\": \"here\"}], "
	            "\"placement\": \"round-robin\", \"replicate\": \"all\"}\n");
	fclose(fp);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3,4,5 -o %s --threads 1", bin(), model, ref),
	             0);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3,4,5 -o %s --threads 1 --cluster %s", bin(),
	                model, out, json),
	             0);
	cr_assert(same_file(ref, out));
	/* a worker's "name" is the name its statistics line gives */
	cr_assert_eq(sh("'%s' run -m '%s' --tokens 3,4,5 -n 2 --threads 1 --cluster %s >/dev/null "
	                "2>%s",
	                bin(), model, json, out),
	             0);
	cr_assert(file_has(out, "worker here "), "the name from the cluster file is not used");
	/* a broken file is a usage error */
	fp = fopen(json, "w");
	fprintf(fp, "{\"workers\": 7}");
	fclose(fp);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3 -o %s --cluster %s 2>/dev/null", bin(),
	                model, out, json),
	             2);
	unlink(json);
	unlink(ref);
	unlink(out);
}

/* Writes text to path. */
static void put_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	cr_assert_not_null(fp, "%s", path);
	fputs(text, fp);
	fclose(fp);
}

/* A worker's "mem" in the cluster file: sizes as users write them, and
 * anything else refused naming the worker. */
Test(cluster, mem_caps_parse_as_users_write_them, .timeout = 30)
{
	char json[256];
	tmp_path(json, sizeof json, "mem.json");
	put_file(json, "{\"workers\": [{\"url\": \"local\", \"mem\": \"96GiB\"}, "
	               "{\"url\": \"local\", \"mem\": \"512 MiB\"}, {\"url\": \"local\", "
	               "\"mem\": 1000}, {\"url\": \"local\", \"mem\": \"2TiB\"}, \"local\"]}");
	char *argv[] = {"--cluster", json};
	moe_cluster_opts o = {0};
	int i = 0;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 2, argv), MOE_OK, "%s", moe_err_detail());
	cr_expect_eq(o.mem_caps[0], 96ull * 1024 * 1024 * 1024);
	cr_expect_eq(o.mem_caps[1], 512ull * 1024 * 1024);
	cr_expect_eq(o.mem_caps[2], 1000);
	cr_expect_eq(o.mem_caps[3], 2ull << 40);
	cr_expect_eq(o.mem_caps[4], 0, "no cap where none is given");
	static const char *const bad[] = {"\"4XB\"",
	                                  "\"GiB\"",
	                                  "0",
	                                  "-5",
	                                  "1.5",
	                                  "\"1.5GiB\"",
	                                  "\"99999999999999999999\"",
	                                  "\"20000000TiB\"",
	                                  "true"};
	for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
		char text[256];
		snprintf(text, sizeof text,
		         "{\"workers\": [\"local\", {\"url\": \"local\", \"mem\": %s}]}", bad[k]);
		put_file(json, text);
		moe_cluster_opts t = {0};
		i = 0;
		cr_expect_eq(moe_cluster_parse_arg(&t, &i, 2, argv), MOE_ERR_INVAL, "mem %s taken",
		             bad[k]);
		cr_expect(strstr(moe_err_detail(), "workers[1].mem") != NULL, "mem %s: %s", bad[k],
		          moe_err_detail());
	}
	unlink(json);
}

/* Placement by bytes (qwen3moe-tiny-F32: 4 layers of 16 experts, each
 * 3 x 128 x 64 F32 = 98,304 bytes, so an expert index costs 393,216 bytes
 * over the 4 layers, 6,291,456 in all): caps of 4 and 3 MiB share the 16
 * indices 9 / 7 (36 and 28 experts, 3,538,944 and 2,752,512 bytes), with one
 * process's logits; caps that cannot hold the experts, or not with the
 * replicas, are refused naming the worker and the bytes. */
Test(cluster, placement_by_bytes_within_mem_caps, .timeout = 120)
{
	char model[1024], ref[256], out[256], err[256], json[256];
	snprintf(model, sizeof model, "%s/qwen3moe-tiny-F32.gguf", fixtures());
	tmp_path(ref, sizeof ref, "cap-ref.f32");
	tmp_path(out, sizeof out, "cap-out.f32");
	tmp_path(err, sizeof err, "cap.err");
	tmp_path(json, sizeof json, "cap.json");
	put_file(json, "{\"workers\": [{\"url\": \"local\", \"name\": \"a\", \"mem\": \"4MiB\"}, "
	               "{\"url\": \"local\", \"name\": \"b\", \"mem\": \"3MiB\"}]}");
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3,4,5 -o %s --threads 1", bin(), model, ref),
	             0);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3,4,5 -o %s --threads 1 --cluster %s", bin(),
	                model, out, json),
	             0);
	cr_assert(same_file(ref, out), "logits within caps differ from one process");
	cr_assert_eq(sh("'%s' run -m '%s' --tokens 3,4,5 -n 2 --threads 1 --cluster %s >/dev/null "
	                "2>%s",
	                bin(), model, json, err),
	             0);
	cr_expect(file_has(err, "worker a ") && file_has(err, "experts     36"),
	          "worker a does not hold 36 experts");
	cr_expect(file_has(err, "worker b ") && file_has(err, "experts     28"),
	          "worker b does not hold 28 experts");

	put_file(json, "{\"workers\": [{\"url\": \"local\", \"name\": \"a\", \"mem\": \"2MiB\"}, "
	               "{\"url\": \"local\", \"name\": \"b\", \"mem\": \"2MiB\"}]}");
	cr_expect_eq(sh("'%s' logits -m '%s' --tokens 3 -o %s --threads 1 --cluster %s 2>%s", bin(),
	                model, out, json, err),
	             1);
	/* a takes the 5 indices that fit (1,966,080 bytes), b the other 11 */
	cr_expect(file_has(err, "worker b (local) would hold 4325376 bytes of experts, over its "
	                        "\"mem\" cap of 2097152 by 2228224; the experts are 6291456 "
	                        "bytes, the caps of all workers 4194304"),
	          "the refusal does not give the numbers");
	put_file(json, "{\"workers\": [{\"url\": \"local\", \"name\": \"a\", \"mem\": \"4MiB\"}, "
	               "{\"url\": \"local\", \"name\": \"b\", \"mem\": \"4MiB\"}], "
	               "\"replicate\": \"all\"}");
	cr_expect_eq(sh("'%s' logits -m '%s' --tokens 3 -o %s --threads 1 --cluster %s 2>%s", bin(),
	                model, out, json, err),
	             1);
	cr_expect(file_has(err, "worker a (local) would hold 6291456 bytes of experts with the "
	                        "replicas, over its \"mem\" cap of 4194304 by 2097152"),
	          "the refusal does not count the replicas");
	unlink(json);
	unlink(ref);
	unlink(out);
	unlink(err);
}

/* deploy/cluster.example.json, as the docs show it, loads with every key. */
Test(cluster, cluster_file_example_loads, .timeout = 30)
{
	char path[1024];
	snprintf(path, sizeof path, "%s/deploy/cluster.example.json",
	         getenv("MOE_SOURCE_DIR") ? getenv("MOE_SOURCE_DIR") : "..");
	char *argv[] = {"--cluster", path};
	moe_cluster_opts o = {0};
	int i = 0;
	cr_assert_eq(moe_cluster_parse_arg(&o, &i, 2, argv), MOE_OK, "%s", moe_err_detail());
	cr_assert_eq(i, 1);
	cr_assert_eq(o.n_urls, 3);
	cr_assert_str_eq(o.urls[0], "tcp://10.0.0.2:7070");
	cr_assert_str_eq(o.names[0], "box-b");
	cr_assert_str_eq(o.names[1], "box-c");
	cr_assert_eq(o.mem_caps[0], 96ull << 30);
	cr_assert_eq(o.mem_caps[1], 96ull << 30);
	cr_assert_eq(o.mem_caps[2], 0);
	cr_assert_str_eq(o.urls[2], "local");
	cr_assert_null(o.names[2]);
	cr_assert_eq(o.place, MOE_PLACE_MEMORY);
	cr_assert_str_eq(o.replicate, "all");
	cr_assert_str_eq(o.secret_file, "/etc/moemesh/secret");
	cr_assert_eq(o.timeout_ms, 10000);
}

/* A misspelt key, at the top or in a worker object, is an error that names
 * it (it used to be ignored: "placment" quietly gave the default placement),
 * in-process and as the usage error of a command. */
Test(cluster, cluster_file_unknown_key_is_an_error_naming_it, .timeout = 60)
{
	static const struct {
		const char *json, *key, *where;
	} cases[] = {
	    {"{\"workers\": [\"local\"], \"placment\": \"round-robin\"}", "\"placment\"",
	     "top level"},
	    {"{\"workers\": [\"local\", {\"ulr\": \"local\"}]}", "\"ulr\"", "workers[1]"},
	    {"{\"workers\": [{\"url\": \"local\", \"nmae\": \"a\"}]}", "\"nmae\"", "workers[0]"},
	};
	char json[256], out[256], err[256], model[1024];
	tmp_path(json, sizeof json, "typo.json");
	tmp_path(out, sizeof out, "typo.f32");
	tmp_path(err, sizeof err, "typo.err");
	snprintf(model, sizeof model, "%s/qwen3moe-tiny-Q8_0.gguf", fixtures());
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		FILE *fp = fopen(json, "w");
		cr_assert_not_null(fp);
		fputs(cases[k].json, fp);
		fclose(fp);
		char *argv[] = {"--cluster", json};
		moe_cluster_opts o = {0};
		int i = 0;
		cr_assert_eq(moe_cluster_parse_arg(&o, &i, 2, argv), MOE_ERR_INVAL,
		             "%s was accepted", cases[k].json);
		cr_assert(strstr(moe_err_detail(), cases[k].key) != NULL &&
		              strstr(moe_err_detail(), cases[k].where) != NULL,
		          "the error does not name %s in the %s: %s", cases[k].key, cases[k].where,
		          moe_err_detail());
		cr_assert_eq(o.n_urls, 0, "a refused file changed the options");
		cr_assert_eq(sh("'%s' logits -m '%s' --tokens 3 -o %s --cluster %s 2>%s", bin(),
		                model, out, json, err),
		             2);
		cr_assert(file_has(err, cases[k].key), "logits does not name %s", cases[k].key);
	}
	unlink(json);
	unlink(out);
	unlink(err);
}

/* ---- refusals ------------------------------------------------------------------- */

Test(cluster, wrong_model_identity_is_refused, .timeout = 60, .fini = reap_workers)
{
	char a[1024], b[1024], sock[256], out[256], err[256];
	snprintf(a, sizeof a, "%s/qwen3next-tiny-Q4_0.gguf", fixtures());
	snprintf(b, sizeof b, "%s/qwen3next-tiny-Q8_0.gguf", fixtures());
	tmp_path(sock, sizeof sock, "id.sock");
	tmp_path(out, sizeof out, "id.f32");
	tmp_path(err, sizeof err, "id.err");
	pid_t w = start_worker(a, sock, "--quiet");
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s 2>%s", bin(), b,
	                out, sock, err),
	             1);
	cr_assert(file_has(err, "model identity differs"), "stderr does not say why");
	cr_assert(file_has(err, "MOE_ERR_MISMATCH"));
	/* the worker still serves the right model */
	cr_assert_eq(
	    sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s", bin(), a, out, sock), 0);
	expect_exit(stop_worker(w), 0, "the worker");
	unlink(out);
	unlink(err);
}

Test(cluster, wrong_secret_is_refused, .timeout = 60, .fini = reap_workers)
{
	char m[1024], sock[256], out[256], ref[256], err[256], s1[256], s2[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q4_0.gguf", fixtures());
	tmp_path(sock, sizeof sock, "sec.sock");
	tmp_path(out, sizeof out, "sec.f32");
	tmp_path(ref, sizeof ref, "sec-ref.f32");
	tmp_path(err, sizeof err, "sec.err");
	tmp_path(s1, sizeof s1, "s1");
	tmp_path(s2, sizeof s2, "s2");
	cr_assert_eq(sh("echo right-secret > %s; echo wrong-secret > %s", s1, s2), 0);
	char extra[512];
	snprintf(extra, sizeof extra, "--quiet --secret-file %s", s1);
	pid_t w = start_worker(m, sock, extra);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s --secret-file "
	                "%s 2>%s",
	                bin(), m, out, sock, s2, err),
	             1);
	cr_assert(file_has(err, "MOE_ERR_AUTH") && file_has(err, "secret"));
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s 2>%s", bin(), m,
	                out, sock, err),
	             1, "a coordinator without the secret was let in");
	cr_assert(file_has(err, "MOE_ERR_AUTH"));
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s", bin(), m, ref), 0);
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s --secret-file %s",
	                bin(), m, out, sock, s1),
	             0);
	cr_assert(same_file(ref, out));
	expect_exit(stop_worker(w), 0, "the worker");
	unlink(out);
	unlink(ref);
	unlink(err);
	unlink(s1);
	unlink(s2);
}

/* The TCP path outside the namespace test: two workers on
 * tcp://127.0.0.1:PORT (data on a TCP port of their own) started with
 * --secret-file; a coordinator with the same secret gets one process's logits
 * bit for bit, one with another secret or none is refused with MOE_ERR_AUTH
 * and a message that names the worker and the secret, and the workers go on
 * serving. */
Test(cluster, tcp_loopback_with_a_secret, .timeout = 120, .fini = reap_workers)
{
	static const char *const modes[] = {"", "--one-by-one --replicate all"};
	char m[1024], out[256], ref[256], err[256], s1[256], s2[256], url[2][64];
	char extra[512];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	tmp_path(out, sizeof out, "tcp.f32");
	tmp_path(ref, sizeof ref, "tcp-ref.f32");
	tmp_path(err, sizeof err, "tcp.err");
	tmp_path(s1, sizeof s1, "tcp-s1");
	tmp_path(s2, sizeof s2, "tcp-s2");
	cr_assert_eq(sh("echo tcp-right-secret > %s; echo tcp-wrong-secret > %s", s1, s2), 0);
	snprintf(extra, sizeof extra, "--quiet --secret-file %s", s1);
	pid_t w[2];
	for (int i = 0; i < 2; i++) {
		snprintf(url[i], sizeof url[i], "tcp://127.0.0.1:%d", free_port());
		w[i] = start_worker_url(m, url[i], "", NULL, extra);
	}
	const char *toks = "5,6,7,8,9,10,11,12";
	/* refused: another secret, then none */
	const int rc_wrong = sh("'%s' logits -m '%s' --tokens %s -o %s --worker %s --worker %s "
	                        "--secret-file %s 2>%s",
	                        bin(), m, toks, out, url[0], url[1], s2, err);
	const bool wrong_said = file_has(err, "MOE_ERR_AUTH") && file_has(err, url[0]) &&
	                        file_has(err, "does not know the cluster secret");
	const int rc_none = sh("'%s' logits -m '%s' --tokens %s -o %s --worker %s --worker %s 2>%s",
	                       bin(), m, toks, out, url[0], url[1], err);
	const bool none_said = file_has(err, "MOE_ERR_AUTH") && file_has(err, "secret");
	/* accepted, bit-identical */
	int rc_ref[2], rc_out[2];
	bool same[2];
	for (int k = 0; k < 2; k++) {
		rc_ref[k] = sh("'%s' logits -m '%s' --tokens %s -o %s %s", bin(), m, toks, ref,
		               strstr(modes[k], "--one-by-one") ? "--one-by-one" : "");
		rc_out[k] = sh("'%s' logits -m '%s' --tokens %s -o %s --worker %s --worker %s "
		               "--secret-file %s %s",
		               bin(), m, toks, out, url[0], url[1], s1, modes[k]);
		same[k] = rc_ref[k] == 0 && rc_out[k] == 0 && same_file(ref, out);
	}
	const int st0 = stop_worker(w[0]), st1 = stop_worker(w[1]);
	cr_assert_eq(rc_wrong, 1, "a coordinator with another secret was let in");
	cr_assert(wrong_said, "the refusal does not say MOE_ERR_AUTH, %s and the secret", url[0]);
	cr_assert_eq(rc_none, 1, "a coordinator without the secret was let in");
	cr_assert(none_said, "the refusal without a secret does not say why");
	for (int k = 0; k < 2; k++) {
		cr_assert(rc_ref[k] == 0 && rc_out[k] == 0, "'%s': logits failed (%d, %d)",
		          modes[k], rc_ref[k], rc_out[k]);
		cr_assert(same[k], "'%s': logits over TCP differ from one process", modes[k]);
	}
	expect_exit(st0, 0, "the first TCP worker");
	expect_exit(st1, 0, "the second TCP worker");
	unlink(out);
	unlink(ref);
	unlink(err);
	unlink(s1);
	unlink(s2);
}

/* Addresses as users write them: one worker on tcp://[::1]:PORT with a fixed
 * --data-port, one on tcp://localhost:PORT; the coordinator names them the
 * same way and gets one process's logits bit for bit.  A URL it cannot use is
 * refused before anything starts, naming it. */
Test(cluster, ipv6_and_host_names, .timeout = 120, .fini = reap_workers)
{
	char m[1024], out[256], ref[256], err[256], url[2][64], extra[64];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	tmp_path(out, sizeof out, "v6.f32");
	tmp_path(ref, sizeof ref, "v6-ref.f32");
	tmp_path(err, sizeof err, "v6.err");
	snprintf(url[0], sizeof url[0], "tcp://[::1]:%d", free_port());
	snprintf(url[1], sizeof url[1], "tcp://localhost:%d", free_port());
	snprintf(extra, sizeof extra, "--quiet --data-port %d", free_port());
	pid_t w[2];
	w[0] = start_worker_url(m, url[0], "", NULL, extra);
	w[1] = start_worker_url(m, url[1], "", NULL, "--quiet");
	const char *toks = "5,6,7,8,9,10,11,12";
	const int rc_ref = sh("'%s' logits -m '%s' --tokens %s -o %s", bin(), m, toks, ref);
	const int rc_out = sh("'%s' logits -m '%s' --tokens %s -o %s --worker '%s' --worker '%s'",
	                      bin(), m, toks, out, url[0], url[1]);
	const bool same = rc_ref == 0 && rc_out == 0 && same_file(ref, out);
	const int rc_bad = sh("'%s' logits -m '%s' --tokens %s -o %s --worker tcp://::1:7000 2>%s",
	                      bin(), m, toks, out, err);
	const bool bad_said = file_has(err, "tcp://::1:7000") && file_has(err, "in brackets");
	const int st0 = stop_worker(w[0]), st1 = stop_worker(w[1]);
	cr_assert(rc_ref == 0 && rc_out == 0, "logits failed (%d, %d)", rc_ref, rc_out);
	cr_assert(same, "logits over [::1] and localhost differ from one process");
	cr_assert_neq(rc_bad, 0, "an IPv6 address without brackets was taken");
	cr_assert(bad_said, "the refusal does not name the URL and what is wrong");
	expect_exit(st0, 0, "the worker on [::1]");
	expect_exit(st1, 0, "the worker on localhost");
	unlink(out);
	unlink(ref);
	unlink(err);
}

Test(cluster, worker_dead_before_assign_is_a_clear_error, .timeout = 60, .fini = reap_workers)
{
	char m[1024], sock[256], out[256], err[256];
	snprintf(m, sizeof m, "%s/qwen3moe-tiny-Q4_0.gguf", fixtures());
	tmp_path(sock, sizeof sock, "dead.sock");
	tmp_path(out, sizeof out, "dead.f32");
	tmp_path(err, sizeof err, "dead.err");
	pid_t w = start_faulty_worker(m, sock, "--die-on-assign", "--quiet");
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens 1,2 -o %s --worker ipc://%s 2>%s", bin(), m,
	                out, sock, err),
	             1);
	cr_assert(file_has(err, "MOE_ERR_CLOSED") && file_has(err, "did it die"),
	          "stderr does not name the dead worker");
	expect_exit(wait_worker(w, 20000), 3, "the worker told to die on ASSIGN");
	unlink(out);
	unlink(err);
	unlink_sockets(sock);
}

/* The fault injection lives in the test harness only: neither release
 * program knows --die-after / --die-on-assign (nor any "die-" string). */
Test(cluster, release_programs_carry_no_fault_injection, .timeout = 30)
{
	char worker[1024];
	snprintf(worker, sizeof worker, "%s", bin());
	char *slash = strrchr(worker, '/');
	cr_assert_not_null(slash);
	snprintf(slash + 1, sizeof worker - (size_t)(slash + 1 - worker), "moemesh-worker");
	const char *const progs[] = {bin(), worker};
	for (size_t k = 0; k < 2; k++) {
		FILE *fp = fopen(progs[k], "rb");
		cr_assert_not_null(fp, "%s", progs[k]);
		fseek(fp, 0, SEEK_END);
		const long n = ftell(fp);
		rewind(fp);
		char *buf = malloc((size_t)n);
		cr_assert_not_null(buf);
		cr_assert_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
		fclose(fp);
		const bool found = memmem(buf, (size_t)n, "die-", 4) != NULL;
		free(buf);
		cr_assert(!found, "%s contains \"die-\"", progs[k]);
	}
	/* and the harness does (it is what the fault tests run) */
	cr_assert_eq(sh("grep -q -a -- --die-after '%s'", test_worker()), 0);
}

/* ---- failures mid-generation ---------------------------------------------------- */

Test(cluster, worker_killed_mid_generation_changes_nothing, .timeout = 120, .fini = reap_workers)
{
	static const char *const extra[] = {"--replicate all", "", "--worker local"};
	char m[1024], sa[256], sb[256], out[256], ref[256];
	snprintf(m, sizeof m, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	tmp_path(sa, sizeof sa, "ka.sock");
	tmp_path(sb, sizeof sb, "kb.sock");
	tmp_path(out, sizeof out, "k.f32");
	tmp_path(ref, sizeof ref, "k-ref.f32");
	const char *toks = "5,6,7,8,9,10,11,12";
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --one-by-one", bin(), m, toks, ref),
	             0);
	for (size_t k = 0; k < sizeof extra / sizeof *extra; k++) {
		pid_t a = start_worker(m, sa, "--quiet");
		pid_t b = start_faulty_worker(m, sb, "--die-after 9", "--quiet");
		const int rc =
		    sh("'%s' logits -m '%s' --tokens %s -o %s --one-by-one --worker ipc://%s "
		       "--worker ipc://%s %s 2>/dev/null",
		       bin(), m, toks, out, sa, sb, extra[k]);
		/* both ended before any assertion: none is left running */
		const int st_b = wait_worker(b, 20000), st_a = stop_worker(a);
		cr_assert_eq(rc, 0, "with '%s'", extra[k]);
		cr_assert(same_file(ref, out), "a dead worker changed the logits (%s)", extra[k]);
		expect_exit(st_b, 3, "worker b (--die-after 9)");
		expect_exit(st_a, 0, "worker a, the survivor");
	}
	/* nobody left: a clear error, no hang */
	pid_t b = start_faulty_worker(m, sb, "--die-after 3", "--quiet");
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --one-by-one --worker ipc://%s "
	                "2>/dev/null",
	                bin(), m, toks, out, sb),
	             1);
	expect_exit(wait_worker(b, 20000), 3, "worker b (--die-after 3)");
	unlink(out);
	unlink(ref);
	unlink_sockets(sa);
	unlink_sockets(sb);
}

/* The child processes of parent (a coordinator's spawned workers), up to max;
 * returns how many. */
static int children_of(pid_t parent, pid_t *out, int max)
{
	int n = 0;
	DIR *d = opendir("/proc");
	cr_assert_not_null(d);
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
		if (rp != NULL && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == parent)
			out[n++] = (pid_t)atoi(de->d_name);
	}
	closedir(d);
	return n;
}

/* Starts `moemesh ARGS...` (NULL-terminated) with stdout on a pipe (*out_fd,
 * read end) and stderr into err_path. */
static pid_t start_coordinator(int *out_fd, const char *err_path, const char *const *args)
{
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	const pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		const char *argv[40] = {bin()};
		int n = 1;
		for (int i = 0; args[i] != NULL && n < 39; i++)
			argv[n++] = args[i];
		argv[n] = NULL;
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		if (freopen(err_path, "w", stderr) == NULL)
			_exit(126);
		execv(bin(), (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	track_worker(pid, true);
	*out_fd = fds[0];
	return pid;
}

/* Reads fd to its end into path. */
static void drain_to(int fd, const char *path)
{
	FILE *fp = fopen(path, "wb");
	cr_assert_not_null(fp);
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0)
		cr_assert_eq(fwrite(buf, 1, (size_t)n, fp), (size_t)n);
	fclose(fp);
	close(fd);
}

/* SIGKILLs one of the coordinator's two spawned workers; returns its pid. */
static pid_t kill_one_spawned(pid_t coord)
{
	pid_t kids[8];
	const int n = children_of(coord, kids, 8);
	cr_assert_eq(n, 2, "the coordinator has %d child processes, not 2 workers", n);
	cr_assert_eq(kill(kids[0], SIGKILL), 0);
	return kids[0];
}

/* A spawned worker (--workers N) that does not end cleanly makes run and
 * logits fail with a message that names it, even when failover (a replica
 * of every expert) kept the output identical: here one is SIGKILLed, for run
 * mid-generation (after its first output), for logits once the logits are
 * computed (it blocks writing them into a FIFO), before the shutdown. */
Test(cluster, coordinator_reports_a_spawned_worker_that_died, .timeout = 180, .fini = reap_workers)
{
	char m[1024], ref[256], out[256], err[256], fifo[256], want[64];
	snprintf(m, sizeof m, "%s/models/kjv-qwen3next-Q4_K_M.gguf",
	         getenv("MOE_SOURCE_DIR") ? getenv("MOE_SOURCE_DIR") : "..");
	tmp_path(ref, sizeof ref, "spawn-ref");
	tmp_path(out, sizeof out, "spawn-out");
	tmp_path(err, sizeof err, "spawn.err");
	tmp_path(fifo, sizeof fifo, "spawn.fifo");

	/* run: every step waits >= 10 ms per layer (--net-delay-us), so that the
	 * generation goes on for seconds after the kill */
	cr_assert_eq(sh("'%s' run -m '%s' -p 'In the beginning' -n 64 --temp 0 --ignore-eos "
	                "--threads 1 > %s 2>/dev/null",
	                bin(), m, ref),
	             0);
	int fd;
	const pid_t run = start_coordinator(
	    &fd, err,
	    (const char *const[]){"run", "-m", m, "-p", "In the beginning", "-n", "64", "--temp",
	                          "0", "--ignore-eos", "--threads", "1", "--workers", "2",
	                          "--replicate", "all", "--net-delay-us", "5000", NULL});
	cr_assert(readable_within(fd, 60000), "run printed nothing");
	const pid_t victim = kill_one_spawned(run);
	drain_to(fd, out);
	int st = wait_worker(run, 60000);
	cr_assert(same_file(ref, out), "failover changed the text");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1,
	          "run ended with %s although a worker was killed", ending(st));
	snprintf(want, sizeof want, "(pid %d, ", (int)victim);
	cr_assert(file_has(err, want) && file_has(err, "was killed by signal 9"),
	          "run does not name the killed worker (pid %d)", (int)victim);

	/* logits */
	const char *toks = "1,7,42,3,99,5,11,200,13,17,19,23,29,31,37,41";
	cr_assert_eq(sh("'%s' logits -m '%s' --tokens %s -o %s --threads 1", bin(), m, toks, ref),
	             0);
	unlink(fifo);
	cr_assert_eq(mkfifo(fifo, 0600), 0);
	const int rfd = open(fifo, O_RDONLY | O_NONBLOCK); /* no writer yet: no event */
	cr_assert_geq(rfd, 0);
	int unused;
	const pid_t lg = start_coordinator(
	    &unused, err,
	    (const char *const[]){"logits", "-m", m, "--tokens", toks, "-o", fifo, "--threads", "1",
	                          "--workers", "2", "--replicate", "all", NULL});
	close(unused);
	/* the first bytes: the logits are computed, 256 KB > the pipe's buffer
	 * keeps logits writing until we read, and the workers still run */
	cr_assert(readable_within(rfd, 60000), "logits wrote nothing");
	const pid_t victim2 = kill_one_spawned(lg);
	cr_assert_eq(fcntl(rfd, F_SETFL, 0), 0);
	drain_to(rfd, out);
	st = wait_worker(lg, 60000);
	cr_assert(same_file(ref, out), "logits differ");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1,
	          "logits ended with %s although a worker was killed", ending(st));
	snprintf(want, sizeof want, "(pid %d, ", (int)victim2);
	cr_assert(file_has(err, want) && file_has(err, "was killed by signal 9"),
	          "logits does not name the killed worker (pid %d)", (int)victim2);
	unlink(fifo);
	unlink(ref);
	unlink(out);
	unlink(err);
}

/* The ISA level a worker serves with: the end of its "serving ..." log line
 * (log: its stderr); "" if absent.  *fell_back: it could not run the level
 * MOEMESH_ISA asked for. */
static const char *worker_isa(const char *log, bool *fell_back)
{
	static char isa[4][32];
	static int k;
	char *out = isa[k++ % 4];
	out[0] = '\0';
	*fell_back = file_has(log, "this CPU cannot run it");
	FILE *fp = fopen(log, "r");
	char line[1024];
	while (fp != NULL && fgets(line, sizeof line, fp) != NULL) {
		const char *comma = strrchr(line, ',');
		if (strstr(line, ": serving ") == NULL || comma == NULL)
			continue;
		snprintf(out, 32, "%s", comma + 2);
		out[strcspn(out, "\n")] = '\0';
	}
	if (fp != NULL)
		fclose(fp);
	return out;
}

static long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Workers forced to other ISA levels (scalar, AVX2; the coordinator and a
 * third worker on this CPU's best) give the logits of one process bit for
 * bit: the expert products follow one canonical block arithmetic at every
 * level (kernels/quants.h), so a cluster may mix kinds of CPU.  K-quant
 * experts (Q4_K/Q6_K), both architectures, one step and one by one.  These
 * fixtures' expert rows are one K-quant block long, so the per-block
 * arithmetic across blocks is pinned by test_matmul and test_expert_ffn
 * (768-column rows); this test covers the cluster path end to end.  Each
 * worker's level is read from its log: the scalar one must run scalar, the
 * AVX2 one AVX2 unless the CPU lacks it; with fewer than two distinct levels
 * (a CPU whose best is scalar) there is nothing to compare and the test says
 * it is skipped, never passes having compared nothing. */
Test(cluster, workers_on_every_isa_level_give_the_same_logits, .timeout = 180, .fini = reap_workers)
{
	static const char *const models[] = {"qwen3next-kq-Q4_K_M.gguf", "qwen3moe-kq-Q4_K_M.gguf"};
	static const char *const modes[] = {"", "--one-by-one"};
	char sa[256], sb[256], sc[256], out[256], ref[256], log[3][256], extra[3][300];
	tmp_path(sa, sizeof sa, "isa-a.sock");
	tmp_path(sb, sizeof sb, "isa-b.sock");
	tmp_path(sc, sizeof sc, "isa-c.sock");
	tmp_path(out, sizeof out, "isa.f32");
	tmp_path(ref, sizeof ref, "isa-ref.f32");
	for (int i = 0; i < 3; i++) {
		char what[16];
		snprintf(what, sizeof what, "isa-%c.log", "abc"[i]);
		tmp_path(log[i], sizeof log[i], what);
		snprintf(extra[i], sizeof extra[i], "2>'%.255s'", log[i]);
	}
	const char *toks = "3,14,15,92,65,35,89,79,32,38";
	int n_compared = 0;
	for (size_t mi = 0; mi < sizeof models / sizeof *models; mi++) {
		char m[1024];
		snprintf(m, sizeof m, "%s/%s", fixtures(), models[mi]);
		pid_t a = start_worker_env(m, sa, "MOEMESH_ISA=scalar", extra[0]);
		pid_t b = start_worker_env(m, sb, "MOEMESH_ISA=avx2", extra[1]);
		pid_t c = start_worker(m, sc, extra[2]);
		/* the workers are stopped before any assertion, so that a failure
		 * does not leave them holding the test's output open */
		int rc_ref[2], rc_out[2];
		bool same[2];
		long size[2];
		for (size_t k = 0; k < sizeof modes / sizeof *modes; k++) {
			rc_ref[k] = sh("'%s' logits -m '%s' --tokens %s -o %s %s", bin(), m, toks,
			               ref, modes[k]);
			rc_out[k] = sh("'%s' logits -m '%s' --tokens %s -o %s %s --worker ipc://%s "
			               "--worker ipc://%s --worker ipc://%s 2>/dev/null",
			               bin(), m, toks, out, modes[k], sa, sb, sc);
			same[k] = rc_ref[k] == 0 && rc_out[k] == 0 && same_file(ref, out);
			size[k] = file_size(out);
		}
		const int st_a = stop_worker(a), st_b = stop_worker(b), st_c = stop_worker(c);
		expect_exit(st_a, 0, "the scalar worker");
		expect_exit(st_b, 0, "the AVX2 worker");
		expect_exit(st_c, 0, "the best-level worker");
		bool fell_a, fell_b, fell_c;
		const char *isa_a = worker_isa(log[0], &fell_a),
		           *isa_b = worker_isa(log[1], &fell_b),
		           *isa_c = worker_isa(log[2], &fell_c);
		cr_assert(isa_a[0] && isa_b[0] && isa_c[0], "a worker did not log its ISA level");
		cr_assert_str_eq(isa_a, "scalar",
		                 "MOEMESH_ISA=scalar did not give a scalar worker");
		cr_assert(fell_b || strcmp(isa_b, "avx2") == 0,
		          "MOEMESH_ISA=avx2 gave %s on a CPU that has AVX2", isa_b);
		const int n_levels = 1 + (strcmp(isa_b, isa_a) != 0) +
		                     (strcmp(isa_c, isa_a) != 0 && strcmp(isa_c, isa_b) != 0);
		if (n_levels < 2) {
			cr_skip_test(
			    "only one ISA level (%s) on this CPU: nothing to compare across "
			    "levels",
			    isa_c);
			return;
		}
		for (size_t k = 0; k < sizeof modes / sizeof *modes; k++) {
			cr_assert(rc_ref[k] == 0 && rc_out[k] == 0, "%s %s: logits failed (%d, %d)",
			          models[mi], modes[k], rc_ref[k], rc_out[k]);
			cr_assert_gt(size[k], 0, "%s %s: no logits written", models[mi], modes[k]);
			cr_assert(same[k], "%s %s: workers on %s, %s and %s changed the logits",
			          models[mi], modes[k], isa_a, isa_b, isa_c);
			n_compared++;
		}
		cr_log_info("%s: workers on %s, %s and %s (%d levels) gave the same logits",
		            models[mi], isa_a, isa_b, isa_c, n_levels);
	}
	cr_assert_eq(n_compared, 4, "compared %d of 4 (model, mode) pairs", n_compared);
	unlink(out);
	unlink(ref);
	unlink(sa);
	unlink(sb);
	unlink(sc);
	for (int i = 0; i < 3; i++)
		unlink(log[i]);
}

/* ---- malformed frames ------------------------------------------------------------- */

static moe_msg_kind ctl_rx(nng_socket s, Moemesh__Error **err)
{
	nng_msg *m;
	moe_frame f;
	cr_assert_eq(moe_nng_recv(&m, &f, s, 5000), MOE_OK, "no answer: %s", moe_err_detail());
	moe_msg_kind k = f.kind;
	if (err)
		*err = k == MOE_MSG_ERROR ? moemesh__error__unpack(NULL, f.header_len, f.header)
		                          : NULL;
	nng_msg_free(m);
	return k;
}

static void ctl_raw(nng_socket s, const void *buf, size_t n)
{
	cr_assert_eq(nng_send(s, (void *)buf, n, 0), 0);
}

static void expect_ctl_error(nng_socket s, const char *what)
{
	Moemesh__Error *e = NULL;
	cr_assert_eq(ctl_rx(s, &e), MOE_MSG_ERROR, "%s: no ERROR reply", what);
	cr_assert(e != NULL && e->message && e->message[0], "%s: ERROR without a message", what);
	moemesh__error__free_unpacked(e, NULL);
}

static int data_connect(const char *path, const uint8_t *token)
{
	int fd;
	cr_assert_eq(moe_sock_connect_unix(&fd, path), MOE_OK);
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (token) {
		Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
		a.response = (ProtobufCBinaryData){32, (uint8_t *)token};
		cr_assert_eq(moe_stream_send(fd, MOE_MSG_AUTH, &a.base, NULL, 0), MOE_OK);
	}
	return fd;
}

/* Receives one data frame; returns its kind, or 0 if the worker closed. */
static moe_msg_kind data_rx(int fd, moe_rx *rx, moe_frame *f)
{
	bool done;
	moe_err err = moe_rx_read(&done, f, rx, fd, (size_t)1 << 28, true);
	if (err == MOE_ERR_CLOSED)
		return 0;
	cr_assert_eq(err, MOE_OK, "data receive: %s", moe_err_detail());
	cr_assert(done);
	return f->kind;
}

static void dispatch_send(int fd, uint32_t layer, uint32_t n_tok, uint32_t act_type,
                          uint32_t n_used, int32_t *ids, float *w, const void *payload, size_t plen)
{
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	d.step = 77;
	d.layer = layer;
	d.n_tokens = n_tok;
	d.act_type = act_type;
	d.n_embd = 0;
	d.n_used = n_used;
	d.n_expert_ids = d.n_weights = (size_t)n_tok * n_used;
	d.expert_ids = ids;
	d.weights = w;
	struct iovec iov = {.iov_base = (void *)payload, .iov_len = plen};
	(void)moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1);
}

Test(cluster, malformed_frames_get_errors_and_worker_keeps_serving, .timeout = 120,
     .fini = reap_workers)
{
	char path[1024], sock[256], url[300], dpath[300];
	snprintf(path, sizeof path, "%s/qwen3next-tiny-Q4_K_M.gguf", fixtures());
	tmp_path(sock, sizeof sock, "bad.sock");
	snprintf(url, sizeof url, "ipc://%s", sock);
	snprintf(dpath, sizeof dpath, "%s.data", sock);
	pid_t w = start_worker(path, sock, "--quiet");
	moe_model *m;
	cr_assert_eq(moe_model_open(&m, path), MOE_OK);
	const moe_hparams *hp = moe_model_hparams(m);
	uint8_t id[MOE_ID_BYTES];
	cr_assert_eq(moe_model_identity(id, moe_model_gguf(m)), MOE_OK);

	nng_socket s;
	cr_assert_eq(nng_pair1_open(&s), 0);
	cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
	int n_bad = 0;

	/* control: garbage, truncated, oversized header, reserved bits, wrong state */
	ctl_raw(s, "garbage!!", 9);
	expect_ctl_error(s, "garbage");
	uint8_t fr[256];
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	uint8_t chal[32] = {1, 2, 3};
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, id};
	h.challenge = (ProtobufCBinaryData){32, chal};
	size_t hsz = moe_frame_size(protobuf_c_message_get_packed_size(&h.base), 0);
	cr_assert_eq(moe_frame_write(fr, hsz, MOE_MSG_HELLO, &h.base, 0), MOE_OK);
	ctl_raw(s, fr, hsz - 7);
	expect_ctl_error(s, "truncated HELLO");
	uint8_t big[64];
	memcpy(big, fr, 64);
	big[11] = 0x7f; /* header length ~2 GiB */
	ctl_raw(s, big, 64);
	expect_ctl_error(s, "oversized header");
	memcpy(big, fr, 64);
	big[12] = 1; /* reserved */
	ctl_raw(s, big, 64);
	expect_ctl_error(s, "reserved field");
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, NULL), MOE_OK);
	expect_ctl_error(s, "ASSIGN before HELLO");
	cr_assert_eq(moe_nng_send(s, MOE_MSG_DISPATCH, NULL), MOE_OK);
	expect_ctl_error(s, "DISPATCH on control");
	n_bad += 5;
	uint8_t zero_id[MOE_ID_BYTES] = {0};
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, zero_id};
	cr_assert_eq(moe_nng_send(s, MOE_MSG_HELLO, &h.base), MOE_OK);
	Moemesh__Error *e;
	cr_assert_eq(ctl_rx(s, &e), MOE_MSG_ERROR);
	cr_assert(strstr(e->message, "model identity differs") != NULL);
	moemesh__error__free_unpacked(e, NULL);

	/* handshake */
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, id};
	cr_assert_eq(moe_nng_send(s, MOE_MSG_HELLO, &h.base), MOE_OK);
	nng_msg *msg;
	moe_frame f;
	cr_assert_eq(moe_nng_recv(&msg, &f, s, 5000), MOE_OK);
	cr_assert_eq(f.kind, MOE_MSG_HELLO_REPLY);
	Moemesh__HelloReply *hr = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	cr_assert(hr && hr->challenge.len == 32);
	uint8_t mac[32];
	cr_assert_eq(moe_auth_mac(mac, NULL, 0, MOE_AUTH_COORDINATOR, chal, hr->challenge.data, id),
	             MOE_OK);
	moemesh__hello_reply__free_unpacked(hr, NULL);
	nng_msg_free(msg);
	Moemesh__AuthResponse ar = MOEMESH__AUTH_RESPONSE__INIT;
	ar.response = (ProtobufCBinaryData){32, mac};
	cr_assert_eq(moe_nng_send(s, MOE_MSG_AUTH, &ar.base), MOE_OK);
	cr_assert_eq(moe_nng_recv(&msg, &f, s, 5000), MOE_OK);
	cr_assert_eq(f.kind, MOE_MSG_AUTH_OK);
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	cr_assert(ok && ok->data_token.len == 32);
	uint8_t token[32];
	memcpy(token, ok->data_token.data, 32);
	cr_assert_str_eq(ok->data_path, dpath);
	moemesh__auth_ok__free_unpacked(ok, NULL);
	nng_msg_free(msg);

	/* out-of-range ASSIGNs, then a good one: layer 0, experts 0 and 1 */
	Moemesh__ExpertRange r = MOEMESH__EXPERT_RANGE__INIT, *rp = &r;
	Moemesh__LayerExperts le = MOEMESH__LAYER_EXPERTS__INIT, *lp = &le;
	Moemesh__Assign as = MOEMESH__ASSIGN__INIT;
	as.n_layers = 1;
	as.layers = &lp;
	le.n_ranges = 1;
	le.ranges = &rp;
	le.layer = (uint32_t)hp->n_layer;
	r.first = 0;
	r.count = 2;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, &as.base), MOE_OK);
	expect_ctl_error(s, "ASSIGN layer out of range");
	le.layer = 0;
	r.first = (uint32_t)hp->n_expert - 1;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, &as.base), MOE_OK);
	expect_ctl_error(s, "ASSIGN expert out of range");
	n_bad += 2;
	r.first = 0;
	cr_assert_eq(moe_nng_send(s, MOE_MSG_ASSIGN, &as.base), MOE_OK);
	for (;;) {
		cr_assert_eq(moe_nng_recv(&msg, &f, s, 5000), MOE_OK);
		cr_assert_eq(f.kind, MOE_MSG_LOAD_PROGRESS);
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		const bool done = p && p->done;
		moemesh__load_progress__free_unpacked(p, NULL);
		nng_msg_free(msg);
		if (done)
			break;
	}

	/* data: the first frame must be AUTH */
	const moe_expert_ffn *ffn = moe_model_experts(m, 0);
	const int ne = hp->n_embd, nu = hp->n_expert_used;
	const uint32_t at = moe_type_get(ffn->gate.type)->vec_dot_type;
	const size_t row = moe_act_row_size(ffn->gate.type, ne);
	float *x = malloc(2 * (size_t)ne * sizeof *x);
	uint8_t *xq = moe_aligned_alloc(64, 2 * row);
	int32_t *ids = malloc(2 * (size_t)nu * sizeof *ids);
	float *wt = malloc(2 * (size_t)nu * sizeof *wt);
	moe_fix_t *want = calloc(2 * (size_t)ne, sizeof *want);
	for (int i = 0; i < 2 * ne; i++)
		x[i] = sinf((float)i * 0.37f) * 0.5f;
	for (int i = 0; i < 2 * nu; i++) {
		ids[i] = i % nu == 0 ? 0 : i % nu == 1 ? 1 : -1;
		wt[i] = 0.25f + 0.05f * (float)i;
	}
	cr_assert_eq(moe_quantize_act_rows(NULL, xq, ffn->gate.type, x, ne, 2), MOE_OK);
	cr_assert_eq(moe_expert_ffn_run(NULL, want, ffn, x, 2, ids, wt, nu), MOE_OK);

	moe_rx rx = {0};
	int fd = data_connect(dpath, NULL);
	dispatch_send(fd, 0, 2, at, (uint32_t)nu, ids, wt, xq, 2 * row);
	cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_ERROR, "unauthenticated DISPATCH served");
	cr_assert_eq(data_rx(fd, &rx, &f), 0, "unauthenticated link not closed");
	close(fd);
	n_bad++;

	fd = data_connect(dpath, token);
	/* n_embd is filled from the model below; each bad field in turn */
	struct {
		uint32_t layer, n_tok, act, nu;
		size_t plen;
		int32_t bad_id;
	} cases[] = {
	    {(uint32_t)hp->n_layer, 2, at, (uint32_t)nu, 2 * row, 0}, /* layer */
	    {0, 2, at, (uint32_t)nu + 1, 2 * row, 0},                 /* n_used */
	    {0, 2, at, (uint32_t)nu, 2 * row - 1, 0},                 /* payload */
	    {0, 2, MOE_TYPE_Q4_K, (uint32_t)nu, 2 * row, 0},          /* act type */
	    {0, 2, at, (uint32_t)nu, 2 * row, 5},                     /* not held */
	    {0, 2, at, (uint32_t)nu, 2 * row, hp->n_expert},          /* out of range */
	    {0, 0, at, (uint32_t)nu, 0, 0},                           /* no tokens */
	};
	for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
		int32_t *ids2 = malloc(2 * (size_t)(nu + 1) * sizeof *ids2);
		float *w2 = malloc(2 * (size_t)(nu + 1) * sizeof *w2);
		for (int i = 0; i < 2 * (nu + 1); i++) {
			ids2[i] = i < 2 * nu ? ids[i] : -1;
			w2[i] = 0.1f;
		}
		if (cases[k].bad_id)
			ids2[1] = cases[k].bad_id;
		Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
		d.step = 5;
		d.layer = cases[k].layer;
		d.n_tokens = cases[k].n_tok;
		d.act_type = cases[k].act;
		d.n_embd = (uint32_t)ne;
		d.n_used = cases[k].nu;
		d.n_expert_ids = d.n_weights = (size_t)cases[k].n_tok * cases[k].nu;
		d.expert_ids = ids2;
		d.weights = w2;
		uint8_t *pl = moe_aligned_alloc(64, 2 * row + 64);
		memcpy(pl, xq, 2 * row);
		struct iovec iov = {.iov_base = pl, .iov_len = cases[k].plen};
		cr_assert_eq(moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1), MOE_OK);
		cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_ERROR, "bad DISPATCH case %zu served",
		             k);
		moe_aligned_free(pl);
		free(ids2);
		free(w2);
		n_bad++;
	}
	/* a good dispatch on the same connection */
	Moemesh__Dispatch d = MOEMESH__DISPATCH__INIT;
	d.step = 9;
	d.layer = 0;
	d.n_tokens = 2;
	d.act_type = at;
	d.n_embd = (uint32_t)ne;
	d.n_used = (uint32_t)nu;
	d.n_expert_ids = d.n_weights = 2 * (size_t)nu;
	d.expert_ids = ids;
	d.weights = wt;
	struct iovec iov = {.iov_base = xq, .iov_len = 2 * row};
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1), MOE_OK);
	cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_RESULT);
	Moemesh__Result *res;
	cr_assert_eq(moe_proto_read_result(&res, &f, 9, 0, 2, (uint32_t)ne), MOE_OK);
	moemesh__result__free_unpacked(res, NULL);
	cr_assert(memcmp(f.payload, want, 2 * (size_t)ne * sizeof *want) == 0,
	          "worker's partial sums differ from the in-process expert FFN");

	/* a frame cut short, then the peer leaves: the worker goes on */
	uint8_t head[128];
	size_t hl;
	cr_assert_eq(moe_frame_write_head(&hl, head, sizeof head, MOE_MSG_DISPATCH, NULL, 4096),
	             MOE_OK);
	cr_assert_eq(send(fd, head, hl, MSG_NOSIGNAL), (ssize_t)hl);
	cr_assert_eq(send(fd, xq, 100, MSG_NOSIGNAL), 100);
	close(fd);

	/* oversized payload in the prefix: ERROR, then the link is closed */
	fd = data_connect(dpath, token);
	cr_assert_eq(
	    moe_frame_write_head(&hl, head, sizeof head, MOE_MSG_DISPATCH, NULL, (size_t)1 << 29),
	    MOE_OK);
	cr_assert_eq(send(fd, head, hl, MSG_NOSIGNAL), (ssize_t)hl);
	cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_ERROR);
	cr_assert_eq(data_rx(fd, &rx, &f), 0);
	close(fd);
	/* bad magic: ERROR, closed */
	fd = data_connect(dpath, token);
	cr_assert_eq(send(fd, "NOT A FRAME AT ALL, REALLY NOT", 30, MSG_NOSIGNAL), 30);
	cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_ERROR);
	cr_assert_eq(data_rx(fd, &rx, &f), 0);
	close(fd);
	n_bad += 2;

	/* still serving: the same good dispatch, same bits */
	fd = data_connect(dpath, token);
	iov = (struct iovec){.iov_base = xq, .iov_len = 2 * row};
	cr_assert_eq(moe_stream_send(fd, MOE_MSG_DISPATCH, &d.base, &iov, 1), MOE_OK);
	cr_assert_eq(data_rx(fd, &rx, &f), MOE_MSG_RESULT);
	cr_assert(memcmp(f.payload, want, 2 * (size_t)ne * sizeof *want) == 0);
	close(fd);

	/* stats count the bad frames; shutdown is clean */
	cr_assert_eq(moe_nng_send(s, MOE_MSG_STATS_REQUEST, NULL), MOE_OK);
	cr_assert_eq(moe_nng_recv(&msg, &f, s, 5000), MOE_OK);
	cr_assert_eq(f.kind, MOE_MSG_STATS);
	Moemesh__Stats *st = moemesh__stats__unpack(NULL, f.header_len, f.header);
	cr_assert(st != NULL);
	cr_assert_geq(st->bad_frames, (uint64_t)n_bad, "bad_frames %llu < %d",
	              (unsigned long long)st->bad_frames, n_bad);
	cr_assert_eq(st->dispatches, 2);
	cr_assert_eq(st->experts_held, 2);
	moemesh__stats__free_unpacked(st, NULL);
	nng_msg_free(msg);
	cr_assert_eq(moe_nng_send(s, MOE_MSG_SHUTDOWN, NULL), MOE_OK);
	expect_exit(wait_worker(w, 20000), 0, "the worker after SHUTDOWN");
	nng_close(s);
	moe_rx_free(&rx);
	free(x);
	moe_aligned_free(xq);
	free(ids);
	free(wt);
	free(want);
	moe_model_destroy(m);
}

/* ---- three hosts over network namespaces ---------------------------------------- */

Test(cluster, three_hosts_in_network_namespaces, .timeout = 180, .fini = reap_workers)
{
	if (geteuid() != 0 || sh("command -v ip >/dev/null && command -v tc >/dev/null") != 0) {
		cr_skip_test("3-host test skipped: needs root and ip/tc to create network "
		             "namespaces");
		return;
	}
	char ns[3][32];
	const int id = (int)getpid() % 100000;
	for (int i = 0; i < 3; i++)
		snprintf(ns[i], sizeof ns[i], "moe%d-%c", id, "cab"[i]);
	if (sh("ip netns add %s 2>/dev/null", ns[0]) != 0) {
		cr_skip_test("3-host test skipped: network namespaces are not permitted here");
		return;
	}
	int bad = 0;
	for (int i = 1; i < 3; i++) {
		bad |= sh("ip netns add %s", ns[i]);
		bad |= sh("ip link add v%d-%d netns %s type veth peer name u%d-%d netns %s", id, i,
		          ns[0], id, i, ns[i]);
		bad |= sh("ip -n %s addr add 10.97.%d.1/24 dev v%d-%d && ip -n %s link set v%d-%d "
		          "up && ip -n %s link set lo up",
		          ns[0], i, id, i, ns[0], id, i, ns[0]);
		bad |= sh("ip -n %s addr add 10.97.%d.2/24 dev u%d-%d && ip -n %s link set u%d-%d "
		          "up && ip -n %s link set lo up",
		          ns[i], i, id, i, ns[i], id, i, ns[i]);
		bad |= sh("ip netns exec %s tc qdisc add dev v%d-%d root tbf rate 10gbit burst 1mb "
		          "latency 1ms && ip netns exec %s tc qdisc add dev u%d-%d root tbf rate "
		          "10gbit burst 1mb latency 1ms",
		          ns[0], id, i, ns[i], id, i);
	}
	char model[1024], ref[256], out[256];
	snprintf(model, sizeof model, "%s/models/kjv-qwen3next-Q4_K_M.gguf",
	         getenv("MOE_SOURCE_DIR") ? getenv("MOE_SOURCE_DIR") : "..");
	tmp_path(ref, sizeof ref, "ns-ref.txt");
	tmp_path(out, sizeof out, "ns-out.txt");
	pid_t w[3] = {0};
	if (!bad) {
		for (int i = 1; i < 3; i++) {
			char cmd[2048];
			snprintf(
			    cmd, sizeof cmd,
			    "exec ip netns exec %s '%s' worker -m '%s' --listen "
			    "tcp://10.97.%d.2:7070 --threads 1 --name host%c --quiet --insecure",
			    ns[i], bin(), model, i, "xab"[i]);
			w[i] = fork();
			if (w[i] == 0) {
				execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
				_exit(127);
			}
			track_worker(w[i], true);
		}
		sleep_ms(300);
		bad |= sh("'%s' run -m '%s' -p 'In the beginning' -n 24 --temp 0 --threads 1 > %s "
		          "2>/dev/null",
		          bin(), model, ref);
		bad |= sh("ip netns exec %s '%s' run -m '%s' -p 'In the beginning' -n 24 --temp 0 "
		          "--threads 1 --worker tcp://10.97.1.2:7070 --worker tcp://10.97.2.2:7070 "
		          "--insecure > %s 2>/dev/null",
		          ns[0], bin(), model, out);
	}
	int st_w[3] = {0, 0, 0};
	for (int i = 1; i < 3; i++)
		if (w[i] > 0)
			st_w[i] = stop_worker(w[i]);
	for (int i = 0; i < 3; i++)
		sh("ip netns del %s 2>/dev/null", ns[i]);
	for (int i = 0; i < 3; i++)
		cr_assert_neq(sh("ip netns list | grep -q '^%s'", ns[i]), 0, "namespace %s left",
		              ns[i]);
	cr_assert_eq(bad, 0, "setting up or running the 3-host cluster failed");
	for (int i = 1; i < 3; i++)
		expect_exit(st_w[i], 0, i == 1 ? "the worker on host a" : "the worker on host b");
	cr_assert(same_file(ref, out), "3-host generation differs from one process");
	cr_assert(file_has(out, "LORD"), "no text generated");
	unlink(ref);
	unlink(out);
}
