/* test_serve.c - `moemesh serve` over real HTTP on loopback.  Each test
 * starts the server ($MOE_BIN) on a free port, runs one client case of
 * tests/serve_client.py against it, then stops it with SIGTERM and expects a
 * clean exit (under ASan/LSan a leak or a memory error makes it fail; with
 * --workers N, so does a spawned worker that did not end cleanly, which the
 * server reports).  A worker the test kills is expected in that report. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/test_util.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	cr_assert_not_null(v, "%s is not set", name);
	return v;
}

static char *path_in(const char *dir_env, const char *name)
{
	static char buf[4][1024];
	static int k;
	char *p = buf[k++ % 4];
	snprintf(p, 1024, "%s/%s", env(dir_env), name);
	return p;
}

static char *kjv(void)
{
	static char p[1024];
	snprintf(p, sizeof p, "%s/models/kjv-qwen3next-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	return p;
}

typedef serve_proc server;

/* `moemesh serve -m model --port 0 --threads 2 EXTRA...` (EXTRA NULL-terminated
 * or NULL) until its ready line (or asserts with the server's message). */
static server start(const char *model, const char *const *extra)
{
	return spawn_serve_opts(model, extra, (serve_opts){.threads = 2});
}

/* The same server must refuse to start (exit 1): its stderr in msg. */
static void start_refused(const char *model, const char *const *extra, char *msg, size_t size)
{
	spawn_serve_opts(model, extra,
	                 (serve_opts){.threads = 2, .refusal = msg, .refusal_size = size});
}

/* Stops the server (SIGTERM), echoes the rest of its stderr, keeps the last
 * of it in msg (when not NULL) and returns its wait status. */
static int stop_status(server *s, char *msg, size_t msg_size)
{
	kill(s->pid, SIGTERM);
	char line[1024];
	size_t used = 0;
	if (msg != NULL)
		msg[0] = '\0';
	while (fgets(line, sizeof line, s->err) != NULL) {
		fputs(line, stderr);
		if (msg != NULL && used + strlen(line) < msg_size) {
			strcpy(msg + used, line);
			used += strlen(line);
		}
	}
	int st = 0;
	waitpid(s->pid, &st, 0);
	fclose(s->err);
	return st;
}

/* Stops the server; it must exit 0, which with --workers N also says that
 * every spawned worker ended cleanly (the coordinator checks them). */
static void stop(server *s)
{
	const int st = stop_status(s, NULL, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the server exited with status %d", st);
}

/* Runs serve_client.py CASE PORT [ARG] with MOE_MODEL=model; asserts exit 0. */
static void client(const char *c, const server *s, const char *model, const char *arg)
{
	char port[16];
	snprintf(port, sizeof port, "%d", s->port);
	const char *argv[] = {
	    "python3", path_in("MOE_SOURCE_DIR", "tests/serve_client.py"), c, port, arg, NULL};
	setenv("MOE_MODEL", model, 1);
	pid_t pid;
	cr_assert_eq(posix_spawnp(&pid, "python3", NULL, NULL, (char *const *)argv, environ), 0);
	int st = 0;
	waitpid(pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client case %s failed (status %d)", c,
	          st);
}

static void run_case(const char *c, const char *model, const char *const *extra, const char *arg)
{
	server s = start(model, extra);
	client(c, &s, model, arg);
	stop(&s);
}

Test(serve, chat_completion_and_greedy_equals_run, .timeout = 300)
{
	run_case("basic", kjv(), NULL, NULL);
}

Test(serve, streaming_matches_non_streamed, .timeout = 300)
{
	run_case("stream", kjv(), NULL, NULL);
}

Test(serve, logprobs_match_the_logits_and_the_stream, .timeout = 300)
{
	run_case("logprobs", kjv(), NULL, NULL);
}

Test(serve, streaming_never_splits_utf8, .timeout = 300)
{
	const char *m = path_in("MOE_FIXTURES", "qwen3next-tiny-Q8_0.gguf");
	run_case("utf8", m, (const char *const[]){"--chat-template", "chatml", NULL}, NULL);
}

Test(serve, eight_concurrent_streams_get_their_own_text, .timeout = 300)
{
	run_case("concurrent8", kjv(), (const char *const[]){"--parallel", "8", NULL}, NULL);
}

Test(serve, seeded_output_identical_alone_and_among_15, .timeout = 300)
{
	/* small prefill pieces: prompts are cut and mixed with decoding sequences */
	run_case("determinism", kjv(),
	         (const char *const[]){"--parallel", "16", "--prefill-chunk", "16", NULL}, NULL);
}

Test(serve, disconnect_cancels_and_frees, .timeout = 300)
{
	run_case("cancel", kjv(), (const char *const[]){"--parallel", "2", NULL}, NULL);
}

Test(serve, error_cases, .timeout = 300)
{
	run_case("errors", kjv(),
	         (const char *const[]){"--parallel", "1", "--queue", "1", "--ctx", "512",
	                               "--max-body", "4096", NULL},
	         NULL);
}

/* A KV budget of 8 blocks (1 MiB of f32 KV: half the positions of f16, so
 * half the tokens to fill it): a request that needs more gets 400 naming the
 * numbers; two that fit alone but not together run one after the other. */
Test(serve, a_kv_budget_admits_what_fits_and_refuses_what_never_can, .timeout = 300)
{
	run_case("kv_budget", kjv(),
	         (const char *const[]){"--parallel", "2", "--ctx", "8192", "--kv", "f32",
	                               "--kv-budget", "1", "--no-prefix-cache", NULL},
	         NULL);
}

Test(serve, http_head_405_413_before_the_body_and_counters, .timeout = 300)
{
	run_case("http", kjv(), (const char *const[]){"--max-body", "4096", NULL}, NULL);
}

Test(serve, a_thousand_idle_connections_leave_real_clients_served, .timeout = 300)
{
	run_case("slowloris", kjv(), NULL, NULL);
}

Test(serve, a_host_beyond_loopback_needs_an_api_key_or_insecure, .timeout = 120)
{
	char msg[4096];
	start_refused(kjv(), (const char *const[]){"--host", "0.0.0.0", NULL}, msg, sizeof msg);
	cr_expect(strstr(msg, "--host 0.0.0.0 is reachable from other machines") != NULL &&
	              strstr(msg, "--api-key") != NULL && strstr(msg, "--insecure") != NULL,
	          "the refusal: %s", msg);
	server s = start(kjv(), (const char *const[]){"--host", "0.0.0.0", "--api-key", "k", NULL});
	stop(&s);
	s = start(kjv(), (const char *const[]){"--host", "0.0.0.0", "--insecure", NULL});
	stop(&s);
}

Test(serve, api_key, .timeout = 300)
{
	run_case("auth", kjv(), (const char *const[]){"--api-key", "s3cret-key", NULL},
	         "s3cret-key");
}

/* A model file with tmpl as its chat template, in dst (a mkstemp name). */
static void template_model(char *dst, const char *tmpl)
{
	int fd = mkstemp(dst);
	cr_assert_geq(fd, 0);
	close(fd);
	const char *argv[] = {"python3",
	                      path_in("MOE_SOURCE_DIR", "tests/serve_client.py"),
	                      "make-template-model",
	                      kjv(),
	                      dst,
	                      tmpl,
	                      NULL};
	pid_t pid;
	cr_assert_eq(posix_spawnp(&pid, "python3", NULL, NULL, (char *const *)argv, environ), 0);
	int st = 0;
	waitpid(pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

Test(serve, a_template_it_cannot_render_fails_at_startup_naming_it, .timeout = 120)
{
	/* any Jinja template renders (here not ChatML: the model's own is used) ... */
	char ok[] = "/tmp/moe_tmpl_XXXXXX";
	template_model(ok, "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}");
	server s = start(ok, NULL);
	client("mistral_template", &s, ok, NULL);
	stop(&s);
	unlink(ok);
	/* ... one with a construct the renderer lacks stops the server at start-up,
	 * naming the construct and its line */
	char bad[] = "/tmp/moe_tmpl_XXXXXX";
	template_model(bad, "{{ bos_token }}\n{% include 'other.jinja' %}");
	char msg[4096];
	start_refused(bad, NULL, msg, sizeof msg);
	cr_expect(strstr(msg, "chat template") != NULL && strstr(msg, "line 2") != NULL &&
	              strstr(msg, "include") != NULL,
	          "start-up message: %s", msg);
	/* the same file with the ChatML override serves */
	s = start(bad, (const char *const[]){"--chat-template", "chatml", NULL});
	stop(&s);
	unlink(bad);
}

Test(serve, reasoning_is_taken_apart_from_the_answer, .timeout = 300)
{
	char t[512];
	snprintf(t, sizeof t, "%s/chat-templates/Qwen3.5-4B.jinja", env("MOE_FIXTURES"));
	run_case("reasoning", kjv(), (const char *const[]){"--chat-template", t, NULL}, NULL);
}

/* POST /apply-template with every fixture template against Jinja2 itself. */
Test(serve, apply_template_is_jinja2_byte_for_byte, .timeout = 300)
{
	static const char *const names[] = {
	    "Qwen-Qwen3-0.6B.jinja",           "Qwen3-Coder.jinja",       "Qwen3.5-4B.jinja",
	    "openai-gpt-oss-120b.jinja",       "GLM-4.6.jinja",           "MiniMax-M2.jinja",
	    "deepseek-ai-DeepSeek-V3.1.jinja", "moonshotai-Kimi-K2.jinja"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		char t[512];
		snprintf(t, sizeof t, "%s/chat-templates/%s", env("MOE_FIXTURES"), names[i]);
		server s = start(kjv(), (const char *const[]){"--chat-template", t, NULL});
		client("apply_template", &s, kjv(), t);
		stop(&s);
	}
}

Test(serve, cluster_workers_give_the_same_text, .timeout = 300)
{
	/* experts on 2 spawned workers: greedy text still equals `moemesh run` */
	run_case("basic", kjv(), (const char *const[]){"--workers", "2", NULL}, NULL);
}

/* Kills every child process of pid (the spawned workers); returns how many,
 * the last one's pid in *last. */
static int kill_children(pid_t pid, pid_t *last)
{
	int n = 0;
	DIR *d = opendir("/proc");
	cr_assert_not_null(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char path[300], buf[512];
		snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		size_t len = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[len] = '\0';
		const char *rp = strrchr(buf, ')'); /* the name may hold spaces */
		int ppid = 0;
		char state;
		if (rp != NULL && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == pid) {
			*last = (pid_t)atoi(de->d_name);
			kill(*last, SIGKILL);
			n++;
		}
	}
	closedir(d);
	return n;
}

Test(serve, dead_workers_make_it_unhealthy_with_a_reason, .timeout = 120)
{
	server s = start(
	    kjv(), (const char *const[]){"--workers", "1", "--dispatch-timeout-ms", "2000", NULL});
	pid_t victim = 0;
	cr_assert_eq(kill_children(s.pid, &victim), 1, "expected one worker process");
	client("dead_cluster", &s, kjv(), NULL);
	/* the worker killed on purpose is reported: the server exits 1 naming it */
	char msg[8192], want[64];
	const int st = stop_status(&s, msg, sizeof msg);
	snprintf(want, sizeof want, "worker w0 (pid %d, ", (int)victim);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1,
	          "the server exited with status %d although its worker was killed", st);
	cr_expect(strstr(msg, want) != NULL && strstr(msg, "was killed by signal 9") != NULL,
	          "the server does not name its killed worker: %s", msg);
}

Test(serve, random_bodies_never_get_a_5xx_nor_crash_it, .timeout = 300)
{
	/* a 64-token context: bodies without max_tokens end there, not at the
	 * model's 512 (the same 147 of 1000 are answered 200, a quarter of the
	 * tokens generated) */
	run_case("fuzz", kjv(), (const char *const[]){"--ctx", "64", NULL}, NULL);
}

/* Runs `node tests/sdk/SCRIPT.mjs CASE PORT` (the official SDKs, installed in
 * tests/sdk/node_modules by deploy/install.sh test); asserts exit 0. */
static void sdk(const char *script, const char *c, const server *s)
{
	char port[16], js[64];
	snprintf(port, sizeof port, "%d", s->port);
	snprintf(js, sizeof js, "tests/sdk/%s.mjs", script);
	const char *argv[] = {"node", path_in("MOE_SOURCE_DIR", js), c, port, NULL};
	pid_t pid;
	cr_assert_eq(posix_spawnp(&pid, "node", NULL, NULL, (char *const *)argv, environ), 0,
	             "cannot start node (deploy/install.sh test installs it)");
	int st = 0;
	waitpid(pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s SDK case %s failed (status %d)",
	          script, c, st);
}

Test(serve, openai_sdk_chat_stream_and_errors, .timeout = 300)
{
	server s = start(kjv(), NULL);
	sdk("openai", "basic", &s);
	sdk("openai", "errors", &s);
	stop(&s);
}

Test(serve, anthropic_sdk_messages_stream_and_errors, .timeout = 300)
{
	server s = start(kjv(), NULL);
	sdk("anthropic", "basic", &s);
	sdk("anthropic", "errors", &s);
	stop(&s);
}

/* Tool calls through both SDKs with a chat template (NULL: the model's, which
 * it has none of: ChatML), the small model's context stretched to fit the
 * tools' descriptions, its thinking off (it never ends a reasoning part). */
static void sdk_tools(const char *tmpl)
{
	char t[512];
	const char *extra[8] = {"--ctx", "2048", NULL};
	if (tmpl != NULL) {
		snprintf(t, sizeof t, "%s/chat-templates/%s", env("MOE_FIXTURES"), tmpl);
		extra[2] = "--chat-template";
		extra[3] = t;
		extra[4] = NULL;
	}
	server s = start(kjv(), extra);
	setenv("MOE_NO_THINKING", "1", 1);
	sdk("openai", "tools", &s);
	sdk("openai", "agent", &s);
	sdk("openai", "json_schema", &s);
	sdk("anthropic", "tools", &s);
	unsetenv("MOE_NO_THINKING");
	stop(&s);
}

Test(serve, sdk_tool_calls_and_schemas_chatml, .timeout = 300)
{
	sdk_tools(NULL);
}

Test(serve, sdk_tool_calls_and_schemas_qwen3_json_form, .timeout = 300)
{
	sdk_tools("Qwen-Qwen3-0.6B.jinja");
}

Test(serve, sdk_tool_calls_and_schemas_qwen3_5_xml_form, .timeout = 300)
{
	sdk_tools("Qwen3.5-4B.jinja");
}

Test(serve, sdk_tool_calls_and_schemas_qwen3_coder_xml_form, .timeout = 300)
{
	sdk_tools("Qwen3-Coder.jinja");
}

/* ---- the prefix cache ------------------------------------------------------------ */

/* Client case c (one that writes JSON to the file it is given) against model
 * served with extra (NULL-terminated): that JSON. */
static cJSON *json_case(const char *c, const char *model, const char *const *extra)
{
	char out[] = "/tmp/moe_conv_XXXXXX";
	int fd = mkstemp(out);
	cr_assert_geq(fd, 0);
	close(fd);
	server s = start(model, extra);
	client(c, &s, model, out);
	stop(&s);
	FILE *f = fopen(out, "rb");
	cr_assert(f != NULL);
	static char buf[1 << 16];
	const size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	unlink(out);
	buf[n] = '\0';
	cJSON *j = cJSON_Parse(buf);
	cr_assert(j != NULL, "%s output: %s", c, buf);
	return j;
}

static cJSON *conversation(const char *model, const char *const *extra)
{
	return json_case("conversation", model, extra);
}

static int cached_at(const cJSON *j, int turn)
{
	return (int)cJSON_GetNumberValue(
	    cJSON_GetArrayItem(cJSON_GetObjectItem(j, "cached"), turn));
}

static double metric(const cJSON *j, const char *name)
{
	return cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metrics"), name));
}

static void same_texts(const cJSON *a, const cJSON *b, const char *what)
{
	char *x = cJSON_PrintUnformatted(cJSON_GetObjectItem(a, "texts"));
	char *y = cJSON_PrintUnformatted(cJSON_GetObjectItem(b, "texts"));
	cr_expect_str_eq(x, y, "%s: the replies differ", what);
	cJSON_free(x);
	cJSON_free(y);
}

Test(serve, prefix_cache_reuses_prompts_and_changes_no_byte, .timeout = 600)
{
	cJSON *on = conversation(
	    kjv(), (const char *const[]){"--ctx", "2048", "--cache-block", "256", NULL});
	cJSON *off =
	    conversation(kjv(), (const char *const[]){"--ctx", "2048", "--no-prefix-cache", NULL});
	cJSON *small = conversation(kjv(), (const char *const[]){"--ctx", "2048", "--cache-block",
	                                                         "256", "--cache-ram", "1", NULL});
	cJSON *cl = conversation(kjv(), (const char *const[]){"--ctx", "2048", "--cache-block",
	                                                      "256", "--workers", "2", NULL});
	cJSON *q8 = conversation(kjv(), (const char *const[]){"--ctx", "2048", "--cache-block",
	                                                      "256", "--kv", "q8_0", NULL});
	cJSON *q8off = conversation(kjv(), (const char *const[]){"--ctx", "2048", "--kv", "q8_0",
	                                                         "--no-prefix-cache", NULL});
	same_texts(on, off, "cache vs none");
	same_texts(q8, q8off, "a Q8_0 KV cache: prefix cache vs none");
	cr_expect_gt(cached_at(q8, 3), 0, "Q8_0 KV: the last turn reused nothing");
	same_texts(on, small, "cache vs a 1 MiB cache");
	same_texts(on, cl, "cache vs cache on 2 workers");
	cr_expect_eq(cached_at(on, 0), 0);
	for (int t = 1; t < 4; t++) {
		cr_expect_gt(cached_at(on, t), 0, "turn %d reused nothing", t);
		cr_expect_gt(cached_at(cl, t), 0, "cluster: turn %d reused nothing", t);
		cr_expect_eq(cached_at(off, t), 0, "no cache, yet turn %d reused", t);
	}
	cr_expect_gt(cJSON_GetNumberValue(cJSON_GetObjectItem(on, "repeat_cached")), 0);
	cr_expect_gt(metric(on, "moemesh_prefix_cache_tokens_reused_total"), 0);
	cr_expect_gt(metric(small, "moemesh_prefix_cache_evictions_total"), 0,
	             "a 1 MiB budget evicted nothing");
	cJSON_Delete(on);
	cJSON_Delete(off);
	cJSON_Delete(small);
	cJSON_Delete(cl);
	cJSON_Delete(q8);
	cJSON_Delete(q8off);
}

/* The .moeblk files of one identity folder of dir into list (their folder
 * in *folder): how many. */
static int block_files(const char *dir, const char *skip, char *folder, size_t fsize)
{
	DIR *d = opendir(dir);
	cr_assert(d != NULL);
	const struct dirent *e;
	int n = 0;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || (skip != NULL && strcmp(e->d_name, skip) == 0))
			continue;
		snprintf(folder, fsize, "%s", e->d_name);
		char sub[1024];
		snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
		DIR *s = opendir(sub);
		const struct dirent *f;
		while (s != NULL && (f = readdir(s)) != NULL)
			n += strstr(f->d_name, ".moeblk") != NULL;
		if (s != NULL)
			closedir(s);
	}
	closedir(d);
	return n;
}

Test(serve, prefix_cache_disk_tier_survives_a_restart_and_refuses_another_models_blocks,
     .timeout = 600)
{
	char dir[] = "/tmp/moe_cache_XXXXXX";
	cr_assert(mkdtemp(dir) != NULL);
	/* blocks of 64 tokens: the first prompt (181 tokens) has two */
	const char *const args[] = {
	    "--ctx", "2048", "--prefill-chunk", "64", "--cache-block", "64", "--cache-dir",
	    dir,     NULL};
	cJSON *a1 = conversation(kjv(), args);
	char fa[256];
	cr_assert_gt(block_files(dir, NULL, fa, sizeof fa), 0, "no block was written");
	cJSON *a2 = conversation(kjv(), args); /* a restart: memory empty */
	same_texts(a1, a2, "after a restart");
	cr_expect_gt(cached_at(a2, 0), 0, "the first turn after a restart reused nothing");
	cr_expect_gt(metric(a2, "moemesh_prefix_cache_disk_reads_total"), 0);
	/* another model: its own folder; model A's blocks copied into it are refused */
	char other[1024];
	snprintf(other, sizeof other, "%s/models/kjv-qwen3moe-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	cJSON *b1 = conversation(other, args);
	char fb[256];
	block_files(dir, fa, fb, sizeof fb);
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "cp %s/%s/*.moeblk %s/%s/", dir, fa, dir, fb);
	cr_assert_eq(system(cmd), 0);
	cJSON *b2 = conversation(other, args);
	same_texts(b1, b2, "model B with model A's blocks in its folder");
	cr_expect_gt(metric(b2, "moemesh_prefix_cache_disk_rejects_total"), 0,
	             "model A's blocks were not refused");
	cJSON_Delete(a1);
	cJSON_Delete(a2);
	cJSON_Delete(b1);
	cJSON_Delete(b2);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

/* ---- speculative decoding --------------------------------------------------------- */

static void same_json(const cJSON *a, const cJSON *b, const char *key, const char *what)
{
	char *x = cJSON_PrintUnformatted(cJSON_GetObjectItem(a, key));
	char *y = cJSON_PrintUnformatted(cJSON_GetObjectItem(b, key));
	cr_expect_str_eq(x, y, "%s: the %s differ", what, key);
	cJSON_free(x);
	cJSON_free(y);
}

/* n-gram drafts change no byte (texts, logprobs), alone or eight at a time,
 * greedy or seeded, with a DeltaNet state (qwen3next: refused drafts go back to
 * the state's snapshot) or without (qwen3moe: the KV is cut), on workers too
 * (each server's texts against one server's without --spec); and they are
 * taken and refused. */
static void spec_same_bytes(const char *model, bool cluster)
{
	const char *const none[] = {"--parallel", "4", NULL};
	const char *const ngram[] = {"--parallel", "4", "--spec", "ngram", NULL};
	const char *const ngram_cl[] = {"--parallel", "4",           "--spec", "ngram", "--workers",
	                                "2",          "--draft-max", "5",      NULL};
	cJSON *off = json_case("spec", model, none);
	for (int cl = 0; cl < (cluster ? 2 : 1); cl++) {
		const char *what = cl ? "--spec ngram --workers 2" : "--spec ngram";
		cJSON *on = json_case("spec", model, cl ? ngram_cl : ngram);
		same_json(off, on, "texts", what);
		same_json(off, on, "logprobs", what);
		const double drafted = metric(on, "moemesh_spec_drafted_tokens_total");
		const double accepted = metric(on, "moemesh_spec_accepted_tokens_total");
		cr_expect_gt(accepted, 0, "%s: no draft was taken (%g drafted)", what, drafted);
		cr_expect_lt(accepted, drafted, "%s: every draft was taken: refusals are untested",
		             what);
		cJSON_Delete(on);
	}
	cr_expect(cJSON_GetObjectItem(cJSON_GetObjectItem(off, "metrics"),
	                              "moemesh_spec_drafted_tokens_total") == NULL,
	          "drafting metrics without --spec");
	cJSON_Delete(off);
}

Test(serve, spec_ngram_changes_no_byte_with_a_deltanet_state_alone_and_on_workers, .timeout = 600)
{
	spec_same_bytes(kjv(), true);
}

Test(serve, spec_ngram_changes_no_byte_without_one, .timeout = 600)
{
	static char p[1024];
	snprintf(p, sizeof p, "%s/models/kjv-qwen3moe-Q4_K_M.gguf", env("MOE_SOURCE_DIR"));
	spec_same_bytes(p, false);
}

/* MTP drafts (--spec mtp, qwen35moe's MTP block; the tiny fixture's random
 * weights: few are taken) change no byte either, alone or with the experts
 * on workers (the block's own experts stay on the coordinator); a file
 * without the block is refused at start-up. */
Test(serve, spec_mtp_changes_no_byte_alone_and_on_workers, .timeout = 600)
{
	const char *model = path_in("MOE_FIXTURES", "qwen35moe-tiny-F32.gguf");
	const char *const none[] = {"--parallel", "4", NULL};
	const char *const mtp[] = {"--parallel", "4", "--spec", "mtp", NULL};
	const char *const mtp_cl[] = {"--parallel", "4",           "--spec", "mtp", "--workers",
	                              "2",          "--draft-max", "3",      NULL};
	cJSON *off = json_case("spec", model, none);
	for (int cl = 0; cl < 2; cl++) {
		cJSON *on = json_case("spec", model, cl ? mtp_cl : mtp);
		same_json(off, on, "texts", cl ? "--spec mtp --workers 2" : "--spec mtp");
		same_json(off, on, "logprobs", cl ? "--spec mtp --workers 2" : "--spec mtp");
		const double drafted = metric(on, "moemesh_spec_drafted_tokens_total");
		const double accepted = metric(on, "moemesh_spec_accepted_tokens_total");
		cr_expect_gt(drafted, 0, "nothing drafted");
		cr_expect_lt(accepted, drafted, "every draft was taken: refusals are untested");
		cJSON_Delete(on);
	}
	cJSON_Delete(off);
	char msg[8192];
	start_refused(path_in("MOE_FIXTURES", "qwen3next-tiny-F32.gguf"),
	              (const char *const[]){"--spec", "mtp", NULL}, msg, sizeof msg);
	cr_expect(strstr(msg, "has no MTP (nextn) block") != NULL, "%s", msg);
}
