/* cmd_serve.c - `moemesh serve`: the OpenAI-compatible HTTP server with
 * continuous batching (serve.h). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/cli.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"
#include "server/server.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: moemesh serve -m MODEL.gguf [--host 127.0.0.1] [--port 8080]\n"
	    "                     [--api-key KEY | --insecure] [--parallel SEQS] [--ctx TOKENS]\n"
	    "                     [--max-conn N] [--max-conn-per-ip N] [--timeout SECONDS]\n"
	    "                     [--threads N] [--queue N] [--max-body BYTES]\n"
	    "                     [--prefill-chunk N] [--chat-template FILE|chatml]\n"
	    "                     [--kv f16|f32|q8_0|q4_0] [--kv-budget MIB]\n"
	    "                     [--cache-ram MIB] [--cache-dir DIR] [--cache-block N]\n"
	    "                     [--no-prefix-cache] [--spec none|ngram|mtp] [--draft-max N]\n"
	    "                     [--trace FILE [--trace-no-weights]]\n"
	    "                     [--log-level error|warn|info|debug]\n\n"
	    "Serves the model over HTTP with OpenAI's API: POST /v1/chat/completions,\n"
	    "POST /v1/completions, GET /v1/models (stream: true gives server-sent\n"
	    "events), GET /health, GET /metrics (Prometheus).  --parallel sequences\n"
	    "(default 4) decode together in every step, each with --ctx positions\n"
	    "(default: the model's trained length) of KV cache in --kv's type (default\n"
	    "f16), taken in blocks as sequences grow, at most --kv-budget MiB of them\n"
	    "(0: no cap; a request waits until the blocks its prompt and max_tokens\n"
	    "can take fit, and one that never could gets 400);\n"
	    "up to --queue requests (default 64) wait for a slot, more get 429.  With\n"
	    "--api-key every route but /health needs\n"
	    "`Authorization: Bearer KEY`; a --host beyond loopback needs --api-key, or\n"
	    "--insecure to serve it open.  --port 0 picks a free port.  Up to\n"
	    "--max-conn connections (default 4096; the open-file limit is raised to\n"
	    "fit) are served at once, each idle one closed after --timeout seconds\n"
	    "(default 600, as llama.cpp's server); one client address may hold\n"
	    "--max-conn-per-ip of them (default: 3/4 of --max-conn on loopback, 256\n"
	    "beyond it;\n"
	    "more are closed at accept).  Chats are\n"
	    "rendered with the model's chat template, or the one in FILE, or ChatML\n"
	    "(--chat-template chatml); a template the server cannot render stops it\n"
	    "at start-up.  A prompt that extends one the server has run (an agent's\n"
	    "next turn) starts from the longest prefix kept in the prefix cache\n"
	    "(--cache-ram MiB of KV rows and recurrent-state checkpoints, default\n"
	    "8192; a checkpoint every --cache-block tokens of a prompt, default 1024;\n"
	    "--cache-dir keeps those blocks on disk across restarts); the output is\n"
	    "the same bytes as without it.  --spec ngram drafts up to --draft-max\n"
	    "tokens (default 8) per sequence and step from its own earlier tokens\n"
	    "and checks them in that step: the same bytes, in fewer steps where the\n"
	    "text repeats (drafted and accepted counts in /metrics); --spec mtp drafts\n"
	    "them with the model's MTP block (qwen35moe and qwen3next files that have one).\n"
	    "--trace FILE writes every step's routing (per layer, the experts and\n"
	    "weights chosen for each token; moemesh trace FILE --csv reads it); a\n"
	    "write error stops the trace, not the server.\n"
	    "Stops on SIGINT / SIGTERM.\n"
	    "With cluster options the routed experts run on workers:\n%s",
	    moe_cluster_usage());
}

typedef struct serve_args {
	const char *model;
	const char *trace; /* --trace FILE */
	bool trace_no_weights;
	const char *chat_template; /* a file, "chatml", or NULL: the model's */
	moe_http_opts ho;
	moe_engine_opts eo;
	moe_cluster_opts co;
} serve_args;

/* Round trips per worker since the last step, into the engine's histogram
 * (the mean of each worker's dispatches in the step). */
typedef struct rtt_feed {
	moe_cluster *cl;
	uint64_t n[MOE_CLUSTER_MAX_LINKS], ns[MOE_CLUSTER_MAX_LINKS];
} rtt_feed;

static void feed_rtt(void *ctx, moe_engine *e)
{
	rtt_feed *r = ctx;
	(void)moe_cluster_heartbeat(r->cl); /* what the heartbeat thread found, while busy */
	(void)moe_cluster_tick(r->cl);      /* load windows, re-placement (--rebalance) */
	const int n = moe_cluster_n_links(r->cl);
	for (int i = 0; i < n && i < MOE_CLUSTER_MAX_LINKS; i++) {
		const moe_cluster_link_stats st = moe_cluster_link(r->cl, i);
		const uint64_t dn = st.dispatches - r->n[i], dns = st.rtt_ns - r->ns[i];
		if (dn > 0)
			moe_engine_observe_rtt_n(e, i, (double)dns * 1e-9 / (double)dn, dn);
		r->n[i] = st.dispatches;
		r->ns[i] = st.rtt_ns;
	}
}

/* 0 ok, 2 usage, 3 help */
static int parse_args(serve_args *a, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0, max_body = 0;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)
			return 3;
		const int ll = moe_cli_log_level_arg(&i, argc, argv, "serve");
		if (ll != 0) {
			if (ll < 0)
				return 2;
			continue;
		}
		if (strcmp(s, "--trace-no-weights") == 0) {
			a->trace_no_weights = true;
			continue;
		}
		if (strcmp(s, "--no-prefix-cache") == 0) {
			a->eo.cache_ram = 0;
			continue;
		}
		if (strcmp(s, "--insecure") == 0) {
			a->ho.insecure = true;
			continue;
		}
		const moe_err ce = moe_cluster_parse_arg(&a->co, &i, argc, argv);
		if (ce == MOE_OK)
			continue;
		if (ce != MOE_ERR_NOT_FOUND) {
			fprintf(stderr, "moemesh serve: %s\n", moe_err_detail());
			return 2;
		}
		if (v == NULL)
			return 2;
		i++;
		if (strcmp(s, "-m") == 0)
			a->model = v;
		else if (strcmp(s, "--host") == 0)
			a->ho.host = v;
		else if (strcmp(s, "--port") == 0)
			bad = moe_parse_int(&a->ho.port, v, 0, 65535);
		else if (strcmp(s, "--trace") == 0)
			a->trace = v;
		else if (strcmp(s, "--api-key") == 0)
			a->ho.api_key = v;
		else if (strcmp(s, "--max-conn") == 0)
			bad = moe_parse_int(&a->ho.max_conn, v, 1, 1 << 20);
		else if (strcmp(s, "--max-conn-per-ip") == 0)
			bad = moe_parse_int(&a->ho.max_conn_per_ip, v, 1, 1 << 20);
		else if (strcmp(s, "--timeout") == 0)
			bad = moe_parse_int(&a->ho.timeout_s, v, 1, 1 << 20);
		else if (strcmp(s, "--parallel") == 0)
			bad = moe_parse_int(&a->eo.n_slots, v, 1, 256);
		else if (strcmp(s, "--ctx") == 0)
			bad = moe_parse_int(&a->eo.n_ctx, v, 8, 1 << 22);
		else if (strcmp(s, "--threads") == 0)
			bad = moe_parse_int(&a->eo.n_threads, v, 1, 1024);
		else if (strcmp(s, "--queue") == 0)
			bad = moe_parse_int(&a->eo.max_queue, v, 0, 1 << 20);
		else if (strcmp(s, "--kv") == 0)
			bad = moe_fwd_kv_type_parse(&a->eo.kv_type, v) != MOE_OK;
		else if (strcmp(s, "--kv-budget") == 0) {
			long mib = 0;
			bad = moe_parse_long(&mib, v, 0, 1L << 30);
			a->eo.kv_budget_bytes = (size_t)mib << 20;
		} else if (strcmp(s, "--prefill-chunk") == 0)
			bad = moe_parse_int(&a->eo.prefill_chunk, v, 1, 1 << 16);
		else if (strcmp(s, "--max-body") == 0) {
			bad = moe_parse_int(&max_body, v, 1024, 1 << 30);
			a->ho.max_body = (size_t)max_body;
		} else if (strcmp(s, "--cache-ram") == 0) {
			int mib = 0;
			bad = moe_parse_int(&mib, v, 0, 1 << 24);
			a->eo.cache_ram = (size_t)mib << 20;
		} else if (strcmp(s, "--cache-dir") == 0) {
			a->eo.cache_dir = v;
		} else if (strcmp(s, "--cache-block") == 0) {
			bad = moe_parse_int(&a->eo.cache_block, v, 1, 1 << 20);
		} else if (strcmp(s, "--chat-template") == 0) {
			a->chat_template = v;
		} else if (strcmp(s, "--spec") == 0) {
			if (moe_spec_mode_parse(&a->eo.spec, v) != MOE_OK) {
				fprintf(stderr, "moemesh serve: %s\n", moe_err_detail());
				return 2;
			}
		} else if (strcmp(s, "--draft-max") == 0) {
			bad = moe_parse_int(&a->eo.draft_max, v, 1, 256);
		} else
			return 2;
		if (bad)
			return 2;
	}
	return a->model == NULL ? 2 : 0;
}

/* What the prefix cache's disk entries are keyed by: the model's identity
 * (proto.h) and what the KV rows' and states' bits depend on besides it (the
 * kernels' ISA level, the KV type). */
static moe_err cache_identity(uint8_t out[32], const moe_model *m, moe_type kv, bool mtp)
{
	uint8_t id[MOE_ID_BYTES];
	moe_err err = moe_model_identity(id, moe_model_gguf(m));
	if (err != MOE_OK)
		return err;
	char what[96];
	const int n = snprintf(what, sizeof what, "prefix-cache 1 isa %s kv %s%s",
	                       moe_isa_name(moe_isa_active()), moe_fwd_kv_type_name(kv),
	                       mtp ? " mtp" : ""); /* MTP: another KV layer, state row */
	return moe_hmac_sha256(out, id, sizeof id, what, (size_t)n);
}

/* The engine's idle hook: heartbeats keep the cluster's picture of live
 * workers current between requests. */
/* The cluster file's coordinator "mem" against what this server will hold,
 * as `moemesh plan` counts it (the same words): MOE_ERR_NOMEM naming the node
 * and the shortfall. */
static moe_err check_fits(const moe_model *m, const serve_args *a)
{
	moe_plan_opts po;
	moe_plan_opts_default(&po);
	po.n_ctx = a->eo.n_ctx;
	po.n_parallel = a->eo.n_slots;
	po.kv_type = a->eo.kv_type;
	po.cache_bytes = a->eo.cache_ram;
	po.mtp = a->eo.spec == MOE_SPEC_MTP;
	moe_plan *p = malloc(sizeof *p);
	moe_err err = p ? moe_plan_compute(p, m, &a->co, &po) : moe_fail(MOE_ERR_NOMEM, "plan");
	if (err == MOE_OK && !p->fits)
		err = moe_fail(MOE_ERR_NOMEM, "does not fit: %s", p->why);
	free(p);
	return err;
}

static moe_err heartbeat(void *ctx)
{
	moe_err err = moe_cluster_heartbeat(ctx);
	const moe_err terr = moe_cluster_tick(ctx); /* also after a loss: /metrics says it */
	return err != MOE_OK ? err : terr;
}

static int cluster_workers(void *ctx, moe_engine_worker *out, int max)
{
	moe_cluster_worker_state st[MOE_CLUSTER_MAX_LINKS];
	const int n = moe_cluster_worker_states(
	    ctx, st, max < MOE_CLUSTER_MAX_LINKS ? max : MOE_CLUSTER_MAX_LINKS);
	for (int i = 0; i < n; i++) {
		_Static_assert(sizeof out[i].name == sizeof st[i].name, "name sizes");
		memcpy(out[i].name, st[i].name, sizeof out[i].name);
		out[i].up = st[i].up;
	}
	return n;
}

/* Raises the soft open-file limit toward what max_conn connections need
 * beside the server's own descriptors (workers, cache files), within the
 * hard limit; says so when the hard limit is lower. */
static void fit_open_files(int max_conn)
{
	const rlim_t want = (rlim_t)(max_conn > 0 ? max_conn : 4096) + 256;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
		fprintf(stderr,
		        "moemesh serve: warning: open files limited to %llu, fewer than --max-conn "
		        "needs (%llu): raise the hard limit (ulimit -Hn, LimitNOFILE=)\n",
		        (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

static void cluster_metrics(void *ctx, FILE *out)
{
	moe_cluster_metrics(ctx, out);
}

int moe_cmd_serve(int argc, char **argv)
{
	serve_args a = {.ho = {.host = "127.0.0.1", .port = 8080, .max_body = 1 << 20}};
	moe_engine_opts_default(&a.eo);
	a.eo.cache_ram = (size_t)8192 << 20;
	const int pr = parse_args(&a, argc, argv);
	if (pr == 3) {
		usage(stdout);
		return 0;
	}
	if (pr != 0) {
		usage(stderr);
		return 2;
	}
	const char *base = strrchr(a.model, '/');
	a.ho.model_id = base != NULL ? base + 1 : a.model;

	/* SIGINT / SIGTERM write to a pipe that the main thread waits on (any
	 * thread may take the signal: libraries start threads before main) */
	const int stop_fd = moe_cli_stop_signals_begin(false);
	if (stop_fd < 0) {
		fprintf(stderr, "moemesh serve: pipe: %s\n", strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	fit_open_files(a.ho.max_conn);

	int rc = 1;
	moe_err err;
	moe_http *h = NULL;
	moe_model *m = NULL;
	moe_tokenizer *tok = NULL;
	moe_chat_template *tmpl = NULL;
	moe_engine *e = NULL;
	moe_cluster *cl = NULL;
	moe_trace_writer *tw = NULL;
	rtt_feed feed = {0};
	moe_cli_progress prog; /* lives as long as the cluster: a repair re-loads experts later */
	if ((err = moe_http_start(&h, &a.ho)) != MOE_OK)
		goto out_fail;
	moe_log(MOE_LOG_INFO, "moemesh serve: listening on http://%s:%d (loading %s)", a.ho.host,
	        moe_http_port(h), a.model);
	moe_http_set_status(h, "loading", "opening the model");
	if ((err = moe_model_open(&m, a.model)) != MOE_OK ||
	    (err = moe_spec_mode_check(a.eo.spec, moe_model_has_mtp(m), a.model)) != MOE_OK ||
	    (err = moe_tokenizer_from_gguf(&tok, moe_model_gguf(m))) != MOE_OK)
		goto out_fail;
	if ((err = moe_chat_template_create(&tmpl, moe_model_gguf(m), tok, a.chat_template)) !=
	    MOE_OK)
		goto out_fail;
	if (a.co.coord_mem > 0 && (err = check_fits(m, &a)) != MOE_OK)
		goto out_fail;
	if (moe_cluster_wanted(&a.co)) {
		moe_http_set_status(h, "loading", "starting workers and loading their experts");
		moe_cli_progress_init(&prog, h);
		a.co.on_load = moe_cli_progress_cb;
		a.co.on_load_ctx = &prog;
		err = moe_cluster_create(&cl, m, a.model, &a.co);
		moe_cli_progress_end(&prog);
		if (err != MOE_OK || (err = moe_cluster_watch(cl, 1000)) != MOE_OK)
			goto out_fail;
		a.eo.experts = moe_cluster_backend(cl);
		a.eo.overlap = moe_cluster_overlap_backend(cl);
		feed.cl = cl;
		a.eo.after_step = feed_rtt;
		a.eo.after_step_ctx = &feed;
		a.eo.idle = heartbeat;
		a.eo.idle_ctx = cl;
		a.eo.metrics = cluster_metrics;
		a.eo.metrics_ctx = cl;
		a.eo.workers = cluster_workers;
		a.eo.workers_ctx = cl;
	}
	moe_http_set_status(h, "loading", "allocating the KV cache and states");
	if (a.eo.cache_ram > 0 && (err = cache_identity(a.eo.cache_identity, m, a.eo.kv_type,
	                                                a.eo.spec == MOE_SPEC_MTP)) != MOE_OK)
		goto out_fail;
	if (a.trace != NULL) {
		if ((err = moe_cli_trace_create(&tw, m, a.trace, !a.trace_no_weights)) != MOE_OK)
			goto out_fail;
		a.eo.trace = tw;
	}
	if ((err = moe_engine_create(&e, m, tok, &a.eo)) != MOE_OK)
		goto out_fail;
	if (cl != NULL)
		moe_cluster_set_pool(cl, moe_engine_pool(e));
	moe_http_set_engine(h, e, tok, tmpl);
	moe_log(MOE_LOG_INFO, "moemesh serve: ready (%d parallel sequences, context %d, %s)",
	        a.eo.n_slots, moe_engine_n_ctx(e),
	        cl != NULL ? "cluster experts" : "local experts");

	unsigned char sig = 0;
	while (read(stop_fd, &sig, 1) < 0 && errno == EINTR)
		;
	moe_log(MOE_LOG_INFO, "moemesh serve: signal %d, stopping", sig);
	rc = 0;
	goto out_free;

out_fail:
	moe_log(MOE_LOG_ERROR, "moemesh serve: %s: %s", moe_err_name(err), moe_err_detail());
out_free:
	moe_cli_stop_signals_end();
	if (e != NULL)
		moe_engine_stop(e); /* requests in flight end now */
	moe_http_stop(h);           /* waits for every connection */
	moe_engine_destroy(e);
	if (tw != NULL)
		(void)moe_cli_trace_close(tw,
		                          a.trace); /* a write error was logged; serving went on */
	moe_trace_writer_destroy(tw);
	if ((err = moe_cluster_shutdown(cl)) != MOE_OK) {
		/* a spawned worker crashed, even if failover hid it */
		moe_log(MOE_LOG_ERROR, "moemesh serve: %s: %s", moe_err_name(err),
		        moe_err_detail());
		rc = 1;
	}
	moe_cluster_destroy(cl);
	moe_chat_template_destroy(tmpl);
	moe_tokenizer_destroy(tok);
	moe_model_destroy(m);
	return rc;
}
