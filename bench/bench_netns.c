/*
 * bench_netns.c - `moemesh bench cluster --netns`: the cluster sweep over
 * real links.  The coordinator (this process) and each worker live in a
 * network namespace of their own, joined by veth pairs shaped by tbf (10
 * Gbit/s by default); a delaying relay (relay.c) in each worker's namespace
 * adds a configurable round trip in user space.  Sweeps workers x batch,
 * compares every row's logits with one process, feeds the same rows to
 * `moemesh plan`'s arithmetic (moe_plan_compute, with figures from `moemesh
 * probe` over the same links) and writes CSV and a gnuplot PNG.  Namespaces
 * are named by this process's id and removed by a guard process when this
 * one ends, however it ends (DESIGN "Benchmarks on real links").
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

enum { MAX_W = 8, MAX_B = 3, MAX_ROUNDS = 9, CTL_PORT = 7070, DATA_PORT = 7071, ECHO_PORT = 7072 };

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench cluster --netns [-m MODEL.gguf] [-n STEPS] [--threads N]\n"
	           "           [--worker-threads N] [--min-workers N] [--max-workers N]\n"
	           "           [--batches B,B,..] [--rtt-us US] [--rate RATE] [--rounds N]\n"
	           "           [--direct] [--no-plan] [--overlap-ab] [-o DIR]\n\n"
	           "Runs as root: the coordinator and each worker in a network namespace of its\n"
	           "own, joined by veth pairs shaped to --rate (tc tbf, default 10gbit); a relay\n"
	           "in each worker's namespace holds each direction's bytes --rtt-us / 2\n"
	           "(default 100 us round trip; --direct: no relay).  Rows: one process and\n"
	           "--min-workers (1) to --max-workers (2) workers at each batch (default\n"
	           "1,4,16, at most 3), the median of --rounds (1) runs each (%% of one process:\n"
	           "the median of the rounds' ratios), logits compared\n"
	           "with one process; with plan's prediction for each row from `moemesh probe`\n"
	           "figures over the same links (--no-plan: none).  Writes DIR/bench_netns.csv\n"
	           "and .png (default bench/out).  One coordinator: several sharing the\n"
	           "workers do not exist yet.  --overlap-ab: instead of the rows, steps with\n"
	           "and without two micro-batches alternated on --max-workers workers at each\n"
	           "batch (>= 2): step times, dispatch wait, the share of it hidden\n"
	           "(DIR/bench_overlap.csv).\n");
}

typedef struct nargs {
	const char *model, *dir, *rate;
	int steps, threads, wthreads, min_workers, max_workers, rtt_us, rounds;
	int batches[MAX_B], n_batches;
	bool direct, plan;
	bool overlap_ab; /* --overlap-ab: only the overlap A/B (bench_overlap.c) */
} nargs;

typedef struct nrow {
	int workers, batch;
	double tok_s, coord_us, net_us, worker_us;
	uint64_t fnv;
	bool fnv_varies; /* rounds disagreed */
	double pct;      /* of one process at this batch: median of the rounds' ratios */
	double p_tok_s, p_coord_us, p_net_us, p_worker_us; /* plan's; < 0 none */
} nrow;

/* What the run set up, for the teardown and the guard. */
typedef struct setup {
	int id, n;
	char exe[4096];
	char ns_c[32], ns_w[MAX_W][32];
	char tmpdir[64], secret[96];
	pid_t guard, workers[MAX_W + 1], echo;
	int guard_fd, home_fd;
	moe_relay *relay[MAX_W][2], *echo_relay;
} setup;

/* Runs a shell command made from fmt; 0 if it exited 0 (else says which). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	const int st = system(cmd);
	if (st != 0)
		fprintf(stderr, "bench cluster --netns: failed: %s\n", cmd);
	return st != 0;
}

/* Removes the namespaces (their veth ends go with them) and the secret; a
 * name not made yet, or already gone, is passed over. */
static void teardown_names(const setup *s)
{
	char cmd[128];
	int missing = 0;
	for (int i = -1; i < s->n; i++) {
		snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null",
		         i < 0 ? s->ns_c : s->ns_w[i]);
		missing += system(cmd) != 0;
	}
	(void)missing;
	if (s->secret[0])
		unlink(s->secret);
	if (s->tmpdir[0])
		rmdir(s->tmpdir);
}

/* The guard: waits for this process's end (the pipe's EOF: a return, an
 * error, SIGINT, a crash) and then removes what it set up. */
static void guard_main(int rfd, const setup *s)
{
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	char b;
	while (read(rfd, &b, 1) != 0 && errno == EINTR)
		;
	/* the workers got SIGTERM as their parent died (PR_SET_PDEATHSIG): a
	 * namespace whose last process is gone goes with its name */
	teardown_names(s);
	_exit(0);
}

/* Forks argv (execvp) with SIGTERM on this process's death. */
static pid_t spawn(char *const argv[])
{
	const pid_t parent = getpid();
	const pid_t p = fork();
	if (p == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);
		execvp(argv[0], argv);
		_exit(127);
	}
	return p;
}

/* SIGTERM, up to 10 s, then SIGKILL; the exit status as waitpid gives it. */
static int stop_child(pid_t p)
{
	int st = 0;
	if (p <= 0)
		return 0;
	kill(p, SIGTERM);
	for (int i = 0; i < 1000; i++) {
		if (waitpid(p, &st, WNOHANG) == p)
			return st;
		usleep(10000);
	}
	kill(p, SIGKILL);
	waitpid(p, &st, 0);
	return st;
}

static int make_links(setup *s, const nargs *a)
{
	int bad = sh("ip netns add %s && ip -n %s link set lo up", s->ns_c, s->ns_c);
	for (int i = 0; i < s->n && !bad; i++) {
		const int k = i + 1;
		bad |= sh("ip netns add %s && ip -n %s link set lo up", s->ns_w[i], s->ns_w[i]);
		bad |= sh("ip link add v%d-%d netns %s type veth peer name u%d-%d netns %s", s->id,
		          k, s->ns_c, s->id, k, s->ns_w[i]);
		bad |=
		    sh("ip -n %s addr add 10.98.%d.1/24 dev v%d-%d && ip -n %s link set v%d-%d up",
		       s->ns_c, k, s->id, k, s->ns_c, s->id, k);
		bad |=
		    sh("ip -n %s addr add 10.98.%d.2/24 dev u%d-%d && ip -n %s link set u%d-%d up",
		       s->ns_w[i], k, s->id, k, s->ns_w[i], s->id, k);
		bad |=
		    sh("ip netns exec %s tc qdisc add dev v%d-%d root tbf rate %s burst 1mb "
		       "latency 1ms && ip netns exec %s tc qdisc add dev u%d-%d root tbf rate %s "
		       "burst 1mb latency 1ms",
		       s->ns_c, s->id, k, a->rate, s->ns_w[i], s->id, k, a->rate);
	}
	return bad;
}

static int write_secret(setup *s)
{
	uint8_t key[32];
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	const bool got = fd >= 0 && read(fd, key, sizeof key) == (ssize_t)sizeof key;
	if (fd >= 0)
		close(fd);
	snprintf(s->secret, sizeof s->secret, "%s/secret", s->tmpdir);
	fd = open(s->secret, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (!got || fd < 0)
		return 1;
	char hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", key[i]);
	const bool ok = write(fd, hex, 64) == 64;
	close(fd);
	return !ok;
}

static int start_workers(setup *s, const nargs *a)
{
	char thr[16], dport[16];
	snprintf(thr, sizeof thr, "%d", a->wthreads);
	snprintf(dport, sizeof dport, "%d", DATA_PORT);
	for (int i = 0; i < s->n; i++) {
		char url[64], name[16];
		if (a->direct)
			snprintf(url, sizeof url, "tcp://10.98.%d.2:%d", i + 1, CTL_PORT);
		else
			snprintf(url, sizeof url, "tcp://127.0.0.1:%d", CTL_PORT);
		snprintf(name, sizeof name, "ns%d", i + 1);
		char *argv[] = {"ip",          "netns",   "exec",           s->ns_w[i], s->exe,
		                "worker",      "-m",      (char *)a->model, "--listen", url,
		                "--data-port", dport,     "--threads",      thr,        "--name",
		                name,          "--quiet", "--secret-file",  s->secret,  NULL};
		if ((s->workers[i] = spawn(argv)) < 0)
			return 1;
		if (a->direct)
			continue;
		/* the relays: the coordinator dials 10.98.k.2, the worker listens on
		 * its namespace's loopback */
		for (int j = 0; j < 2; j++) {
			char host[32];
			snprintf(host, sizeof host, "10.98.%d.2", i + 1);
			const moe_relay_opts ro = {.listen_host = host,
			                           .listen_port = (uint16_t)(CTL_PORT + j),
			                           .to_host = "127.0.0.1",
			                           .to_port = (uint16_t)(CTL_PORT + j),
			                           .netns = s->ns_w[i],
			                           .hold_us = a->rtt_us / 2};
			if (moe_relay_create(&s->relay[i][j], &ro) != MOE_OK) {
				fprintf(stderr, "bench cluster --netns: relay: %s\n",
				        moe_err_detail());
				return 1;
			}
		}
	}
	return 0;
}

static int enter_netns(const char *name)
{
	char path[96];
	snprintf(path, sizeof path, "/var/run/netns/%s", name);
	const int fd = open(path, O_RDONLY | O_CLOEXEC);
	const int rc = fd >= 0 ? setns(fd, CLONE_NEWNET) : -1;
	if (fd >= 0)
		close(fd);
	return rc != 0;
}

/* ---- figures: moemesh probe over the links ---------------------------------------- */

typedef struct figures {
	double bw, gops, rtt_us, net; /* coordinator's threads */
	double wbw, wgops;            /* one worker's threads */
} figures;

/* Runs `EXE probe ARGS` (in this thread's namespace) and reads its line. */
static int probe(double *bw, double *gops, double *rtt, double *net, const char *exe,
                 const char *args, int want)
{
	char cmd[4400], line[512];
	snprintf(cmd, sizeof cmd, "'%s' probe %s", exe, args);
	FILE *p = popen(cmd, "r");
	if (p == NULL)
		return 1;
	int got = 0;
	while (fgets(line, sizeof line, p))
		if (strncmp(line, "\"bw\"", 4) == 0)
			got =
			    sscanf(line,
			           "\"bw\": \"%lfGB/s\", \"gops\": %lf, \"rtt_us\": %lf, \"net\": "
			           "\"%lfGB/s\"",
			           bw, gops, rtt, net);
	const int st = pclose(p);
	*bw *= 1e9;
	*net *= 1e9;
	return st != 0 || got < want;
}

static int measure_figures(figures *fg, setup *s, const nargs *a)
{
	char url[64], args[128];
	if (a->direct)
		snprintf(url, sizeof url, "tcp://10.98.1.2:%d", ECHO_PORT);
	else
		snprintf(url, sizeof url, "tcp://127.0.0.1:%d", ECHO_PORT);
	char *argv[] = {"ip", "netns", "exec", s->ns_w[0], s->exe, "probe", "--echo", url, NULL};
	if ((s->echo = spawn(argv)) < 0)
		return 1;
	if (!a->direct) {
		const moe_relay_opts ro = {.listen_host = "10.98.1.2",
		                           .listen_port = ECHO_PORT,
		                           .to_host = "127.0.0.1",
		                           .to_port = ECHO_PORT,
		                           .netns = s->ns_w[0],
		                           .hold_us = a->rtt_us / 2};
		if (moe_relay_create(&s->echo_relay, &ro) != MOE_OK)
			return 1;
	} else {
		usleep(500000); /* the echo's listen */
	}
	snprintf(args, sizeof args, "--threads %d --pings 400 --peer tcp://10.98.1.2:%d",
	         a->threads, ECHO_PORT);
	int bad = probe(&fg->bw, &fg->gops, &fg->rtt_us, &fg->net, s->exe, args, 4);
	double rtt = 0, net = 0; /* not asked for */
	snprintf(args, sizeof args, "--threads %d", a->wthreads);
	bad |= probe(&fg->wbw, &fg->wgops, &rtt, &net, s->exe, args, 2);
	moe_relay_destroy(s->echo_relay);
	s->echo_relay = NULL;
	stop_child(s->echo);
	s->echo = 0;
	return bad;
}

/* Plan's decode estimate for w workers at batch B (the rows' cluster). */
static void predict(nrow *r, const moe_model *m, const nargs *a, const figures *fg, char urls[][64])
{
	r->p_tok_s = r->p_coord_us = r->p_net_us = r->p_worker_us = -1;
	moe_plan *p = malloc(sizeof *p);
	moe_cluster_opts co = {.n_urls = r->workers};
	/* the boxes share this machine: a worker's bandwidth is one worker's
	 * threads' triad, but no more than the coordinator's threads' over the
	 * workers (README "Planning a cluster") */
	double wbw = fg->wbw;
	if (r->workers > 0 && fg->bw / r->workers < wbw)
		wbw = fg->bw / r->workers;
	for (int i = 0; i < r->workers; i++) {
		co.urls[i] = urls[i];
		co.bw[i] = wbw;
		co.gops[i] = fg->wgops;
		co.rtt_us[i] = fg->rtt_us;
		co.net_bps[i] = fg->net;
	}
	co.coord_bw = fg->bw;
	co.coord_gops = fg->gops;
	moe_plan_opts po;
	moe_plan_opts_default(&po);
	po.n_ctx = a->steps + 8;
	po.n_parallel = r->batch;
	po.batches[0] = r->batch;
	if (p && moe_plan_compute(p, m, &co, &po) == MOE_OK && p->speed[0].step_s > 0) {
		const double L = p->n_layer;
		r->p_tok_s = p->speed[0].tok_s_total;
		r->p_coord_us = p->speed[0].coord_s * 1e6 / L;
		r->p_net_us = p->speed[0].net_s * 1e6 / L;
		r->p_worker_us = p->speed[0].workers_s * 1e6 / L;
	}
	free(p);
}

/* ---- decode ------------------------------------------------------------------------ */

/* FNV-1a over 32-bit words: the logits' bits. */
static uint64_t fnv_words(uint64_t h, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t w;
		memcpy(&w, &x[i], sizeof w);
		h = (h ^ w) * 1099511628211ull;
	}
	return h;
}

/* Decode speed of one configuration (co NULL: one process) and the hash of
 * every step's logits (hashed outside the timed steps). */
static moe_err decode(nrow *r, const nargs *a, moe_model *m, const moe_cluster_opts *co, int batch)
{
	const moe_hparams *hp = moe_model_hparams(m);
	moe_cluster *cl = NULL;
	moe_fwd *f = NULL;
	moe_err err;
	moe_fwd_opts o;
	moe_fwd_opts_default(&o);
	o.n_slots = batch;
	o.n_ctx = a->steps + 8;
	o.n_threads = a->threads;
	if (co) {
		if ((err = moe_cluster_create(&cl, m, a->model, co)) != MOE_OK)
			return err;
		o.experts = moe_cluster_backend(cl);
	}
	const size_t nl = (size_t)batch * (size_t)hp->n_vocab;
	float *logits = malloc(nl * sizeof *logits);
	int32_t tok[64], slot[64], pos[64];
	if (logits == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "logits");
		goto out_free;
	}
	if ((err = moe_fwd_create(&f, m, &o)) != MOE_OK)
		goto out_free;
	if (cl)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	for (int b = 0; b < batch; b++)
		if ((err = moe_fwd_seq_open(f, &slot[b])) != MOE_OK)
			goto out_free;
	moe_cluster_counters c0 = {0};
	double dt = 0;
	uint64_t h = 1469598103934665603ull;
	for (int s = 0; s < a->steps + 2; s++) {
		if (s == 2 && cl) /* two warm-up steps */
			c0 = moe_cluster_get_counters(cl);
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)((s * 31 + b * 7 + 1) % hp->n_vocab);
			pos[b] = s;
		}
		const moe_batch mb = {.n_tok = batch, .tokens = tok, .slot = slot, .pos = pos};
		const double t0 = moe_now_s();
		if ((err = moe_fwd_step(f, logits, &mb)) != MOE_OK)
			goto out_free;
		if (s >= 2)
			dt += moe_now_s() - t0;
		h = fnv_words(h, logits, nl);
	}
	const double layers = (double)a->steps * hp->n_layer;
	r->tok_s = (double)a->steps * batch / dt;
	r->fnv = h;
	r->coord_us = dt * 1e6 / layers;
	r->net_us = r->worker_us = 0;
	if (cl) {
		const moe_cluster_counters c1 = moe_cluster_get_counters(cl);
		const double wait = (double)(c1.wait_ns - c0.wait_ns) / 1e3 / layers;
		r->worker_us = (double)(c1.worker_ns - c0.worker_ns) / 1e3 / layers;
		r->net_us = wait > r->worker_us ? wait - r->worker_us : 0;
		r->coord_us -= wait;
	}
out_free:
	free(logits);
	moe_fwd_destroy(f);
	moe_cluster_destroy(cl);
	return err;
}

/* Reads the model file through the page cache, so that the one-process
 * rows (which map it) measure memory, not the disk; GB/s, 0 on an error. */
static double warm_file(const char *path, double *bytes)
{
	const int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	enum { BS = 4 << 20 };
	char *buf = malloc(BS);
	double total = 0;
	const double t0 = moe_now_s();
	for (ssize_t r; buf && (r = read(fd, buf, BS)) > 0;)
		total += (double)r;
	const double dt = moe_now_s() - t0;
	free(buf);
	close(fd);
	*bytes = total;
	return dt > 0 ? total / dt / 1e9 : 0;
}

/* ---- output ------------------------------------------------------------------------ */

static void plot(const char *dir, const char *csv, const nargs *a)
{
	if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
		printf("gnuplot not found: no plot\n");
		return;
	}
	char script[1024], png[1024], cmd[2300];
	snprintf(script, sizeof script, "%s/bench_netns.gp", dir);
	snprintf(png, sizeof png, "%s/bench_netns.png", dir);
	FILE *f = fopen(script, "w");
	if (f == NULL)
		return;
	fprintf(f,
	        "set terminal pngcairo size 1200,500 noenhanced\n"
	        "set output '%s'\nset datafile separator ','\nset multiplot layout 1,2\n"
	        "set title 'decode tok/s over %s links, %d us round trip (dashed: plan)'\n"
	        "set xlabel 'workers (0 = one process)'\nset ylabel 'tok/s'\nset key top left\n"
	        "set grid\nset xtics 1\nplot ",
	        png, a->rate, a->rtt_us);
	for (int bi = 0; bi < a->n_batches; bi++)
		fprintf(f,
		        "%s'%s' using 1:($2==%d?$4:1/0) with linespoints lc %d title 'batch %d', "
		        "'' using 1:($2==%d&&$9>0?$9:1/0) with lines dt 2 lc %d notitle",
		        bi ? ", " : "", csv, a->batches[bi], bi + 1, a->batches[bi], a->batches[bi],
		        bi + 1);
	fprintf(f, "\nset title '%% of one process'\nset ylabel '%%'\nset yrange [0:*]\nplot ");
	for (int bi = 0; bi < a->n_batches; bi++)
		fprintf(f, "%s'%s' using 1:($2==%d?$5:1/0) with linespoints lc %d title 'batch %d'",
		        bi ? ", " : "", csv, a->batches[bi], bi + 1, a->batches[bi]);
	fprintf(f, "\nunset multiplot\n");
	fclose(f);
	snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>/dev/null", script);
	if (system(cmd) == 0)
		printf("plot: %s\n", png);
	else
		printf("gnuplot failed: no plot\n");
}

static int cmp_double(const void *x, const void *y)
{
	const double a = *(const double *)x, b = *(const double *)y;
	return a < b ? -1 : a > b;
}

static int cmp_row_tok(const void *x, const void *y)
{
	const double a = ((const nrow *)x)->tok_s, b = ((const nrow *)y)->tok_s;
	return a < b ? -1 : a > b;
}

static int parse(nargs *a, int argc, char **argv)
{
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)
			return -1;
		if (strcmp(s, "--netns") == 0)
			continue;
		if (strcmp(s, "--direct") == 0) {
			a->direct = true;
			continue;
		}
		if (strcmp(s, "--no-plan") == 0) {
			a->plan = false;
			continue;
		}
		if (strcmp(s, "--overlap-ab") == 0) {
			a->overlap_ab = true;
			continue;
		}
		if (v == NULL)
			return 1;
		i++;
		if (strcmp(s, "-m") == 0)
			a->model = v;
		else if (strcmp(s, "-o") == 0)
			a->dir = v;
		else if (strcmp(s, "--rate") == 0)
			bad |= strspn(v, "0123456789.kmgitbpsKMGT") != strlen(v) || !*v;
		else if (strcmp(s, "-n") == 0)
			bad |= moe_parse_int(&a->steps, v, 1, 100000);
		else if (strcmp(s, "--threads") == 0)
			bad |= moe_parse_int(&a->threads, v, 1, 1024);
		else if (strcmp(s, "--worker-threads") == 0)
			bad |= moe_parse_int(&a->wthreads, v, 1, 1024);
		else if (strcmp(s, "--min-workers") == 0)
			bad |= moe_parse_int(&a->min_workers, v, 1, MAX_W);
		else if (strcmp(s, "--max-workers") == 0)
			bad |= moe_parse_int(&a->max_workers, v, 1, MAX_W);
		else if (strcmp(s, "--rtt-us") == 0)
			bad |= moe_parse_int(&a->rtt_us, v, 0, 1000000);
		else if (strcmp(s, "--rounds") == 0)
			bad |= moe_parse_int(&a->rounds, v, 1, MAX_ROUNDS);
		else if (strcmp(s, "--batches") == 0) {
			const char *p = v;
			a->n_batches = 0;
			while (!bad && *p) {
				char *end;
				const long b = strtol(p, &end, 10);
				bad |= end == p || b < 1 || b > 64 || a->n_batches == MAX_B ||
				       (*end != ',' && *end != '\0');
				if (!bad)
					a->batches[a->n_batches++] = (int)b;
				p = *end ? end + 1 : end;
			}
			bad |= a->n_batches == 0;
		} else
			return 1;
		if (strcmp(s, "--rate") == 0 && !bad)
			a->rate = v;
	}
	return bad || a->min_workers > a->max_workers;
}

/* The overlap A/B over the links to every worker. */
static int overlap_ab(const nargs *a, moe_model *m, const setup *s)
{
	char urls[MAX_W][64], names[MAX_W][16], label[64], csv[1100];
	moe_cluster_opts co = {.n_urls = s->n, .secret_file = s->secret, .overlap = true};
	for (int i = 0; i < s->n; i++) {
		snprintf(urls[i], sizeof urls[i], "tcp://10.98.%d.2:%d", i + 1, CTL_PORT);
		snprintf(names[i], sizeof names[i], "ns%d", i + 1);
		co.urls[i] = urls[i];
		co.names[i] = names[i];
	}
	snprintf(label, sizeof label, "netns w%d rtt%d%s", s->n, a->direct ? 0 : a->rtt_us,
	         a->direct ? " direct" : "");
	snprintf(csv, sizeof csv, "%s/bench_overlap.csv", a->dir);
	moe_bench_overlap_opts oo = {.model = a->model,
	                             .label = label,
	                             .csv = csv,
	                             .co = &co,
	                             .n_batches = a->n_batches,
	                             .steps = a->steps,
	                             .threads = a->threads};
	memcpy(oo.batches, a->batches, (size_t)a->n_batches * sizeof *a->batches);
	return moe_bench_overlap_ab(m, &oo);
}

/* Runs the sweep; 0, or 1 after saying what failed. */
static int sweep(nrow *rows, int *n_rows, const nargs *a, moe_model *m, const setup *s,
                 const figures *fg)
{
	static nrow runs[MAX_B][MAX_W + 1][MAX_ROUNDS];
	char urls[MAX_W][64], names[MAX_W][16];
	for (int i = 0; i < s->n; i++) {
		snprintf(urls[i], sizeof urls[i], "tcp://10.98.%d.2:%d", i + 1, CTL_PORT);
		snprintf(names[i], sizeof names[i], "ns%d", i + 1);
	}
	const int nw = 1 + a->max_workers - a->min_workers;
	for (int rd = 0; rd < a->rounds; rd++)
		for (int bi = 0; bi < a->n_batches; bi++)
			for (int wi = 0; wi <= nw; wi++) {
				const int w = wi == 0 ? 0 : a->min_workers + wi - 1;
				moe_cluster_opts co = {.n_urls = w, .secret_file = s->secret};
				for (int i = 0; i < w; i++) {
					co.urls[i] = urls[i];
					co.names[i] = names[i];
				}
				nrow *r = &runs[bi][wi][rd];
				*r = (nrow){.workers = w, .batch = a->batches[bi]};
				const moe_err err = decode(r, a, m, w ? &co : NULL, r->batch);
				if (err != MOE_OK) {
					fprintf(
					    stderr,
					    "bench cluster --netns: %d workers, batch %d: %s: %s\n",
					    w, r->batch, moe_err_name(err), moe_err_detail());
					return 1;
				}
				fprintf(stderr, "  round %d: %d workers, batch %d: %.1f tok/s\n",
				        rd + 1, w, r->batch, r->tok_s);
			}
	*n_rows = 0;
	for (int bi = 0; bi < a->n_batches; bi++) {
		for (int wi = 0; wi <= nw; wi++) {
			nrow sorted[MAX_ROUNDS];
			memcpy(sorted, runs[bi][wi], (size_t)a->rounds * sizeof *sorted);
			qsort(sorted, (size_t)a->rounds, sizeof *sorted, cmp_row_tok);
			nrow *r = &rows[(*n_rows)++];
			*r = sorted[a->rounds / 2]; /* the median run, with its own split */
			for (int rd = 0; rd < a->rounds; rd++)
				r->fnv_varies |= runs[bi][wi][rd].fnv != r->fnv;
			/* against one process in the same round, the median of the
			 * rounds' ratios: drift on a shared box cancels */
			double ratio[MAX_ROUNDS];
			for (int rd = 0; rd < a->rounds; rd++) {
				const double one = runs[bi][0][rd].tok_s;
				ratio[rd] = one > 0 ? runs[bi][wi][rd].tok_s / one : 0;
			}
			qsort(ratio, (size_t)a->rounds, sizeof *ratio, cmp_double);
			r->pct = 100.0 * ratio[a->rounds / 2];
			r->p_tok_s = r->p_coord_us = r->p_net_us = r->p_worker_us = -1;
			if (a->plan)
				predict(r, m, a, fg, urls);
		}
	}
	return 0;
}

static int report(const nrow *rows, int n, const nargs *a)
{
	printf("%7s %5s %9s %9s %9s %9s %9s %10s %9s %s\n", "workers", "batch", "tok/s", "% of 1p",
	       "coord us", "net us", "worker us", "plan tok/s", "meas/plan", "logits");
	bool same = true;
	const nrow *one = NULL;
	for (int i = 0; i < n; i++) {
		const nrow *r = &rows[i];
		if (r->workers == 0)
			one = r;
		const bool ok =
		    one && one->batch == r->batch && r->fnv == one->fnv && !r->fnv_varies;
		same &= ok;
		char pt[16] = "-", ratio[16] = "-";
		if (r->p_tok_s > 0) {
			snprintf(pt, sizeof pt, "%.1f", r->p_tok_s);
			snprintf(ratio, sizeof ratio, "%.2f", r->tok_s / r->p_tok_s);
		}
		printf("%7d %5d %9.1f %9.1f %9.1f %9.1f %9.1f %10s %9s %s\n", r->workers, r->batch,
		       r->tok_s, r->pct, r->coord_us, r->net_us, r->worker_us, pt, ratio,
		       r->workers == 0 ? "reference"
		       : ok            ? "identical"
		                       : "DIFFER");
	}
	char csv[1024];
	mkdir(a->dir, 0755);
	snprintf(csv, sizeof csv, "%s/bench_netns.csv", a->dir);
	FILE *f = fopen(csv, "w");
	if (f == NULL) {
		fprintf(stderr, "bench cluster --netns: cannot write %s\n", csv);
		return 1;
	}
	fprintf(f, "workers,batch,rtt_us,tok_s,pct_of_one_process,coord_us_per_layer,"
	           "net_us_per_layer,worker_us_per_layer,plan_tok_s,plan_coord_us_per_layer,"
	           "plan_net_us_per_layer,plan_worker_us_per_layer,logits_fnv\n");
	for (int i = 0; i < n; i++) {
		const nrow *r = &rows[i];
		fprintf(f, "%d,%d,%d,%.2f,%.1f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%016llx\n",
		        r->workers, r->batch, a->direct ? -1 : a->rtt_us, r->tok_s, r->pct,
		        r->coord_us, r->net_us, r->worker_us, r->p_tok_s, r->p_coord_us,
		        r->p_net_us, r->p_worker_us, (unsigned long long)r->fnv);
	}
	fclose(f);
	printf("csv: %s\n", csv);
	plot(a->dir, csv, a);
	printf("logits: %s\n", same ? "every row identical to one process" : "DIFFER");
	for (int i = 0; i < n; i++)
		if (rows[i].batch == 1 && rows[i].workers > 0)
			printf("b1_pct_of_one_process_w%d=%.1f ", rows[i].workers, rows[i].pct);
	printf("logits_identical=%d\n", same);
	return same ? 0 : 1;
}

int moe_bench_cluster_netns(int argc, char **argv)
{
	nargs a = {.model = "models/kjv-qwen3next-Q4_K_M.gguf",
	           .dir = "bench/out",
	           .rate = "10gbit",
	           .steps = 16,
	           .min_workers = 1,
	           .max_workers = 2,
	           .rtt_us = 100,
	           .rounds = 1,
	           .batches = {1, 4, 16},
	           .n_batches = 3,
	           .plan = true};
	const int pr = parse(&a, argc, argv);
	if (pr != 0) {
		usage(pr < 0 ? stdout : stderr);
		return pr < 0 ? 0 : 2;
	}
	const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if (a.threads == 0)
		a.threads = ncpu > 0 ? (int)ncpu : 1;
	if (a.wthreads == 0)
		a.wthreads = ncpu / (a.max_workers + 1) > 1 ? (int)(ncpu / (a.max_workers + 1)) : 1;
	if (geteuid() != 0) {
		fprintf(stderr, "moemesh bench cluster --netns: needs root (it makes network "
		                "namespaces, veth pairs and tc qdiscs); run it as root, or without "
		                "--netns for the loopback benchmark\n");
		return 1;
	}
	if (system("command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1") != 0) {
		fprintf(stderr, "moemesh bench cluster --netns: needs the ip and tc programs "
		                "(iproute2)\n");
		return 1;
	}
	moe_model *m;
	moe_err err = moe_model_open(&m, a.model);
	if (err != MOE_OK) {
		fprintf(stderr, "moemesh bench cluster --netns: %s: %s\n", moe_err_name(err),
		        moe_err_detail());
		return 1;
	}
	setup *s = calloc(1, sizeof *s);
	static nrow rows[MAX_B * (MAX_W + 1)];
	int rc = 1, n_rows = 0;
	if (s == NULL)
		goto out_model;
	s->id = (int)getpid();
	s->n = a.max_workers;
	s->guard_fd = s->home_fd = -1;
	const ssize_t el = readlink("/proc/self/exe", s->exe, sizeof s->exe - 1);
	snprintf(s->ns_c, sizeof s->ns_c, "moeb%d-c", s->id);
	for (int i = 0; i < s->n; i++)
		snprintf(s->ns_w[i], sizeof s->ns_w[i], "moeb%d-w%d", s->id, i + 1);
	snprintf(s->tmpdir, sizeof s->tmpdir, "/tmp/moemesh-netns-XXXXXX");
	if (el <= 0 || mkdtemp(s->tmpdir) == NULL) {
		fprintf(stderr, "moemesh bench cluster --netns: %s\n", strerror(errno));
		s->tmpdir[0] = '\0';
		goto out_setup;
	}
	snprintf(s->secret, sizeof s->secret, "%s/secret", s->tmpdir);
	/* the guard first, so that it outlives whatever happens next */
	int gp[2];
	fflush(NULL);
	if (pipe2(gp, O_CLOEXEC) != 0 || (s->guard = fork()) < 0)
		goto out_setup;
	if (s->guard == 0) {
		close(gp[1]);
		guard_main(gp[0], s);
	}
	close(gp[0]);
	s->guard_fd = gp[1];
	s->home_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	printf("namespaces: %s", s->ns_c);
	for (int i = 0; i < s->n; i++)
		printf(" %s", s->ns_w[i]);
	printf("\n");
	fflush(stdout);
	if (make_links(s, &a) || write_secret(s) || start_workers(s, &a) || enter_netns(s->ns_c)) {
		fprintf(stderr,
		        "moemesh bench cluster --netns: setting up the namespaces failed\n");
		goto out_setup;
	}
	figures fg = {0};
	if (a.plan && measure_figures(&fg, s, &a)) {
		fprintf(stderr, "moemesh bench cluster --netns: moemesh probe failed\n");
		goto out_setup;
	}
	printf("model %s, %d decode steps, links %s with %s, coordinator %d threads, workers %d "
	       "threads each\n",
	       a.model, a.steps, a.rate,
	       a.direct ? "no relay" : "a relay holding each direction rtt/2", a.threads,
	       a.wthreads);
	if (a.direct)
		printf("round trip: the veth's own\n");
	else
		printf("round trip: %d us added (%d us each way)\n", a.rtt_us, a.rtt_us / 2);
	if (a.plan)
		printf("probe over the link: coordinator bw %.1f GB/s gops %.1f, rtt %.1f us, net "
		       "%.2f GB/s; worker (%d threads) bw %.1f GB/s gops %.1f\n",
		       fg.bw / 1e9, fg.gops, fg.rtt_us, fg.net / 1e9, a.wthreads, fg.wbw / 1e9,
		       fg.wgops);
	double wbytes = 0;
	const double wgbs = warm_file(a.model, &wbytes);
	printf("page cache: read the model's %.2f GB at %.2f GB/s before the sweep\n", wbytes / 1e9,
	       wgbs);
	double load[3] = {0};
	if (getloadavg(load, 3) > 0)
		printf("load average before: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
	fflush(stdout);
	if (a.overlap_ab) { /* --max-workers workers, --batches (bench_overlap.c) */
		rc = overlap_ab(&a, m, s);
		goto out_setup;
	}
	if (sweep(rows, &n_rows, &a, m, s, &fg) != 0)
		goto out_setup;
	if (getloadavg(load, 3) > 0)
		printf("load average after: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
	rc = report(rows, n_rows, &a);

out_setup:
	if (s->home_fd >= 0) {
		if (setns(s->home_fd, CLONE_NEWNET) != 0)
			fprintf(stderr,
			        "moemesh bench cluster --netns: back to the first network "
			        "namespace: %s\n",
			        strerror(errno));
		close(s->home_fd);
	}
	moe_relay_destroy(s->echo_relay);
	stop_child(s->echo);
	for (int i = 0; i < s->n; i++)
		for (int j = 0; j < 2; j++)
			moe_relay_destroy(s->relay[i][j]);
	for (int i = 0; i < s->n; i++) {
		const int st = stop_child(s->workers[i]);
		if (s->workers[i] > 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
			fprintf(stderr,
			        "moemesh bench cluster --netns: worker ns%d ended with status "
			        "%d\n",
			        i + 1, st);
			rc = 1;
		}
	}
	if (s->guard_fd >= 0) { /* the guard removes the namespaces now */
		close(s->guard_fd);
		waitpid(s->guard, NULL, 0);
		if (sh("! ip netns list | grep -q '^moeb%d-'", s->id) == 0)
			printf("namespaces removed\n");
		else
			rc = 1;
	} else {
		teardown_names(s);
	}
out_model:
	free(s);
	moe_model_destroy(m);
	return rc;
}
