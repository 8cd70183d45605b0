/*
 * bench_serve.c - `moemesh bench serve`: C concurrent streaming clients
 * against `moemesh serve` (started here as a child process on a free port).
 *
 * For each C in --clients (default 1,4,16) every client sends --requests
 * streamed completions of -n tokens one after the other (different prompts
 * and seeds).  Reported per C: aggregate generated tok/s (all completion
 * tokens / wall time), time to first token p50/p99, inter-token latency
 * p50/p99.  Writes OUT/serve.csv and OUT/serve.png (gnuplot, if installed)
 * and ends with a summary line `serve_speedup_16_vs_1=X`.  Before the first
 * level the model file is read once and one request is served, unmeasured,
 * so that no level pays for a cold page cache.
 *
 * With --schema every level is run as chat completions instead, in rounds
 * that alternate free text and the same requests held to a JSON schema
 * (response_format json_schema: the grammar's cost on every step), and the
 * summary line is `schema_tok_s_ratio=X` at the first level: constrained
 * tok/s over free tok/s (the target is >= 0.90).
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/serve_child.h"
#include "core/core.h"

#define MAX_CLIENTS  64
#define MAX_C_VALUES 8

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: moemesh bench serve [-m MODEL.gguf] [--clients 1,4,16] [-n TOKENS]\n"
	       "                           [--requests R] [--threads N] [--workers N] [--out DIR]\n"
	       "                           [--schema] [--rounds K] [--spec ngram]\n"
	       "Default model models/kjv-qwen3next-Q4_K_M.gguf, -n 64, 2 requests per\n"
	       "client, output in bench/out; --workers N serves with N local workers.\n"
	       "--schema: chat requests free and held to a JSON schema, alternating in K\n"
	       "rounds (default 3) per level.  --spec: the server drafts (serve --spec).\n");
}

enum { MODE_COMPLETIONS, MODE_CHAT, MODE_SCHEMA };

/* The schema of --schema: a small record, every string and array bounded so
 * that a reply ends within the token budget whatever the model wants. */
static const char bench_schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"title\":{\"type\":\"string\",\"maxLength\":40},"
    "\"chapter\":{\"type\":\"integer\",\"minimum\":1},"
    "\"verses\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":60},"
    "\"maxItems\":4},"
    "\"holy\":{\"type\":\"boolean\"}},"
    "\"required\":[\"title\",\"chapter\",\"verses\",\"holy\"],"
    "\"additionalProperties\":false}";

typedef struct client {
	int port, id, n_req, n_tok, mode;
	long tokens; /* completion tokens received */
	int errors;
	moe_bsrv_lat ttft, itl;
} client;

/* The latencies of one stream: TTFT from the request, then between chunks. */
typedef struct lat_state {
	client *c;
	double t0, last;
} lat_state;

static int on_text(void *arg, double now)
{
	lat_state *st = arg;
	if (st->last == 0)
		moe_bsrv_lat_add(&st->c->ttft, now - st->t0);
	else
		moe_bsrv_lat_add(&st->c->itl, now - st->last);
	st->last = now;
	return 1;
}

/* One streamed request over HTTP/1.0 (the server closes at the end). */
static int one_request(client *c, int r)
{
	static const char *prompts[] = {"In the beginning", "And the LORD said unto Moses",
	                                "Blessed are the",  "And it came to pass",
	                                "Hear, O Israel",   "The heavens declare"};
	char body[2048];
	const char *prompt = prompts[(c->id + r) % 6];
	const int seed = c->id * 1000 + r;
	const int nb =
	    c->mode == MODE_COMPLETIONS
	        ? snprintf(body, sizeof body,
	                   "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0.8,"
	                   "\"seed\":%d,\"stream\":true}",
	                   prompt, c->n_tok, seed)
	        : snprintf(
	              body, sizeof body,
	              "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
	              "\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,\"stream\":true%s%s%s}",
	              prompt, c->n_tok, seed,
	              c->mode == MODE_SCHEMA
	                  ? ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
	                    "{\"name\":\"record\",\"schema\":"
	                  : "",
	              c->mode == MODE_SCHEMA ? bench_schema : "",
	              c->mode == MODE_SCHEMA ? "}}" : "");
	if (nb < 0 || (size_t)nb >= sizeof body)
		return -1;
	lat_state st = {c, moe_now_s(), 0};
	moe_bsrv_reply rep;
	const int rc = moe_bsrv_request(
	    &rep, c->port, c->mode == MODE_COMPLETIONS ? "/v1/completions" : "/v1/chat/completions",
	    body, on_text, &st);
	c->tokens += rep.tokens;
	free(rep.body);
	return rc == 0 && rep.status == 200 && rep.done ? 0 : -1;
}

static void *client_main(void *arg)
{
	client *c = arg;
	for (int r = 0; r < c->n_req; r++)
		if (one_request(c, r) != 0)
			c->errors++;
	return NULL;
}

/* What one level measured: tokens, wall time, latencies, errors. */
typedef struct level {
	long tokens;
	double seconds;
	int errors;
	moe_bsrv_lat ttft, itl;
} level;

/* Runs C clients of n_req requests of n_tok tokens in mode, adding to *lv. */
static void run_level(level *lv, int port, int C, int n_req, int n_tok, int mode)
{
	client cl[MAX_CLIENTS] = {0};
	pthread_t th[MAX_CLIENTS];
	const double t0 = moe_now_s();
	for (int i = 0; i < C; i++) {
		cl[i] =
		    (client){.port = port, .id = i, .n_req = n_req, .n_tok = n_tok, .mode = mode};
		pthread_create(&th[i], NULL, client_main, &cl[i]);
	}
	for (int i = 0; i < C; i++)
		pthread_join(th[i], NULL);
	lv->seconds += moe_now_s() - t0;
	for (int i = 0; i < C; i++) {
		lv->tokens += cl[i].tokens;
		lv->errors += cl[i].errors;
		for (size_t j = 0; j < cl[i].ttft.n; j++)
			moe_bsrv_lat_add(&lv->ttft, cl[i].ttft.v[j]);
		for (size_t j = 0; j < cl[i].itl.n; j++)
			moe_bsrv_lat_add(&lv->itl, cl[i].itl.v[j]);
		free(cl[i].ttft.v);
		free(cl[i].itl.v);
	}
}

/* Prints and writes one row; returns tok/s. */
static double report(FILE *csv, const char *label, int C, level *lv)
{
	const double rate = lv->seconds > 0 ? (double)lv->tokens / lv->seconds : 0;
	const double r[4] = {moe_bsrv_pct(&lv->ttft, 0.5) * 1e3,
	                     moe_bsrv_pct(&lv->ttft, 0.99) * 1e3, moe_bsrv_pct(&lv->itl, 0.5) * 1e3,
	                     moe_bsrv_pct(&lv->itl, 0.99) * 1e3};
	printf("%-8d %-8s %10.1f %12.1f %12.1f %11.2f %11.2f%s\n", C, label, rate, r[0], r[1], r[2],
	       r[3], lv->errors ? "  (errors)" : "");
	fprintf(csv, "%d,%s,%.2f,%.2f,%.2f,%.3f,%.3f,%d\n", C, label, rate, r[0], r[1], r[2], r[3],
	        lv->errors);
	if (lv->ttft.n == 0 && lv->tokens > 0)
		printf("  (no streamed chunk carried text, so the latencies above were not "
		       "measured: a model without a real vocabulary? make-model "
		       "--tokenizer gives it one)\n");
	return rate;
}

int moe_bench_serve(int argc, char **argv)
{
	const char *model = "models/kjv-qwen3next-Q4_K_M.gguf", *out = "bench/out";
	const char *threads = NULL, *workers = NULL, *spec = NULL;
	int cs[MAX_C_VALUES] = {1, 4, 16}, n_cs = 3, n_tok = 64, n_req = 2, rounds = 3;
	bool schema = false;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--schema") == 0) {
			schema = true;
			continue;
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
		else if (strcmp(argv[i - 1], "--workers") == 0)
			workers = v;
		else if (strcmp(argv[i - 1], "--spec") == 0)
			spec = v;
		else if (strcmp(argv[i - 1], "-n") == 0)
			n_tok = atoi(v);
		else if (strcmp(argv[i - 1], "--requests") == 0)
			n_req = atoi(v);
		else if (strcmp(argv[i - 1], "--rounds") == 0)
			rounds = atoi(v);
		else if (strcmp(argv[i - 1], "--clients") == 0) {
			n_cs = 0;
			for (const char *p = v; *p && n_cs < MAX_C_VALUES;) {
				cs[n_cs++] = atoi(p);
				p = strchr(p, ',');
				if (p == NULL)
					break;
				p++;
			}
		} else {
			usage(stderr);
			return 2;
		}
	}
	int max_c = 0;
	for (int k = 0; k < n_cs; k++) {
		if (cs[k] < 1 || cs[k] > MAX_CLIENTS) {
			usage(stderr);
			return 2;
		}
		max_c = cs[k] > max_c ? cs[k] : max_c;
	}
	if (n_tok < 1 || n_tok > 400 || n_req < 1 || rounds < 1) {
		usage(stderr);
		return 2;
	}
	char par[16];
	snprintf(par, sizeof par, "%d", max_c);
	const char *extra[12] = {"--parallel", par, "--ctx", "512"};
	int n_extra = 4;
	if (threads != NULL) {
		extra[n_extra++] = "--threads";
		extra[n_extra++] = threads;
	}
	if (workers != NULL) {
		extra[n_extra++] = "--workers";
		extra[n_extra++] = workers;
	}
	if (spec != NULL) {
		extra[n_extra++] = "--spec";
		extra[n_extra++] = spec;
	}
	moe_bsrv_child srv = {0};
	if (moe_bsrv_start(&srv, model, extra) != 0) {
		fprintf(stderr, "bench serve: the server did not start\n");
		return 1;
	}
	mkdir(out, 0755);
	char path[1024];
	snprintf(path, sizeof path, "%s/serve.csv", out);
	FILE *csv = fopen(path, "w");
	if (csv == NULL) {
		moe_bsrv_stop(&srv);
		fprintf(stderr, "bench serve: cannot write %s\n", path);
		return 1;
	}
	/* Warm-up, not measured: the model file into the page cache (a cold
	 * first level would be charged the disk), then one request through the
	 * server (its first touches of the mapping). */
	if (moe_bsrv_warm_file(model) != 0)
		fprintf(stderr, "bench serve: warning: could not read %s ahead\n", model);
	client warm = {.port = srv.port,
	               .id = 0,
	               .n_req = 1,
	               .n_tok = n_tok,
	               .mode = schema ? MODE_SCHEMA : MODE_COMPLETIONS};
	client_main(&warm); /* with --schema this also compiles (and caches) the grammar */
	free(warm.ttft.v);
	free(warm.itl.v);
	fprintf(csv, "clients,mode,tok_s,ttft_p50_ms,ttft_p99_ms,itl_p50_ms,itl_p99_ms,errors\n");
	printf("%-8s %-8s %10s %12s %12s %11s %11s\n", "clients", "mode", "tok/s", "TTFT p50 ms",
	       "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms");
	double rate1 = 0, rate16 = 0, ratio = 0;
	int rc = 0;
	for (int k = 0; k < n_cs; k++) {
		const int C = cs[k];
		level lv[2] = {0};
		if (!schema) {
			run_level(&lv[0], srv.port, C, n_req, n_tok, MODE_COMPLETIONS);
		} else {
			for (int r = 0; r < rounds; r++) { /* alternating: the VM's speed drifts */
				run_level(&lv[0], srv.port, C, n_req, n_tok, MODE_CHAT);
				run_level(&lv[1], srv.port, C, n_req, n_tok, MODE_SCHEMA);
			}
		}
		const double rate = report(csv, schema ? "chat" : "complete", C, &lv[0]);
		const double srate = schema ? report(csv, "schema", C, &lv[1]) : 0;
		if (schema && k == 0 && rate > 0)
			ratio = srate / rate;
		if (C == 1)
			rate1 = rate;
		if (C == 16)
			rate16 = rate;
		if (lv[0].errors || lv[1].errors)
			rc = 1;
		for (int m = 0; m < 2; m++) {
			free(lv[m].ttft.v);
			free(lv[m].itl.v);
		}
	}
	fclose(csv);
	moe_bsrv_stop(&srv);

	char cmd[4096];
	snprintf(cmd, sizeof cmd,
	         "command -v gnuplot >/dev/null && gnuplot -e \"set terminal pngcairo size 900,420 "
	         "noenhanced; set output '%s/serve.png'; set datafile separator ','; "
	         "set multiplot layout 1,2; set logscale x 2; set xlabel 'concurrent clients'; "
	         "set ylabel 'generated tok/s'; set key off; "
	         "plot '%s/serve.csv' every ::1 using 1:3 with linespoints lw 2 title 'tok/s'; "
	         "set ylabel 'ms'; set key top left; "
	         "plot '%s/serve.csv' every ::1 using 1:4 with linespoints title 'TTFT p50', "
	         "'' every ::1 using 1:5 with linespoints title 'TTFT p99', "
	         "'' every ::1 using 1:6 with linespoints title 'ITL p50', "
	         "'' every ::1 using 1:7 with linespoints title 'ITL p99'; unset multiplot\"",
	         out, out, out);
	if (system(cmd) != 0)
		fprintf(stderr, "bench serve: no plot (gnuplot missing or failed)\n");
	printf("wrote %s/serve.csv and %s/serve.png\n", out, out);
	if (schema)
		printf("schema_tok_s_ratio=%.3f at %d client(s) (target >= 0.90)\n", ratio, cs[0]);
	else if (rate1 > 0 && rate16 > 0)
		printf("serve_speedup_16_vs_1=%.2f (target >= 4)\n", rate16 / rate1);
	return rc;
}
