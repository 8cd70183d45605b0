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
#include <math.h>
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
#include "bench/serve_child.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

enum {
	MAX_W = 8,
	MAX_B = 3,
	MAX_C = 4, /* coordinators (--coordinators) */
	MAX_ROUNDS = 9,
	CTL_PORT = 7070,
	DATA_PORT = 7071,
	ECHO_PORT = 7072
};

static void usage(FILE *f)
{
	fprintf(f, "usage: moemesh bench cluster --netns [-m MODEL.gguf] [-n STEPS] [--threads N]\n"
	           "           [--worker-threads N] [--min-workers N] [--max-workers N]\n"
	           "           [--batches B,B,..] [--rtt-us US] [--rate RATE] [--rounds N]\n"
	           "           [--direct] [--no-plan] [--overlap-ab] [-o DIR]\n"
	           "           [--coordinators K,K,.. [--requests R] [--box-cpus F]]\n\n"
	           "Runs as root: the coordinator and each worker in a network namespace of its\n"
	           "own, joined by veth pairs shaped to --rate (tc tbf, default 10gbit); a relay\n"
	           "in each worker's namespace holds each direction's bytes --rtt-us / 2\n"
	           "(default 100 us round trip; --direct: no relay).  Rows: one process and\n"
	           "--min-workers (1) to --max-workers (2) workers at each batch (default\n"
	           "1,4,16, at most 3), the median of --rounds (1) runs each (%% of one process:\n"
	           "the median of the rounds' ratios), logits compared\n"
	           "with one process; with plan's prediction for each row from `moemesh probe`\n"
	           "figures over the same links (--no-plan: none).  Writes DIR/bench_netns.csv\n"
	           "and .png (default bench/out).  --coordinators: instead, K `moemesh serve`\n"
	           "coordinators (each in a namespace of its own, linked to every worker)\n"
	           "share the workers; --batches are then concurrent streaming clients,\n"
	           "split between the coordinators, each sending R (2) greedy completions of\n"
	           "-n (64) tokens; rows against one process and one coordinator, texts\n"
	           "compared (DIR/bench_netns_coord.csv and .png); --box-cpus F: each\n"
	           "coordinator and worker held to F cores (a cgroup v1 cpu quota), as if\n"
	           "each were a box of its own.  --overlap-ab: instead of the "
	           "rows, steps with\n"
	           "and without two micro-batches alternated on --max-workers workers at each\n"
	           "batch (>= 2): step times, dispatch wait, the share of it hidden\n"
	           "(DIR/bench_overlap.csv).\n");
}

typedef struct nargs {
	const char *model, *dir, *rate;
	int steps, threads, wthreads, min_workers, max_workers, rtt_us, rounds;
	int batches[MAX_B], n_batches;
	bool direct, plan;
	bool overlap_ab;             /* --overlap-ab: only the overlap A/B (bench_overlap.c) */
	int coords[MAX_C], n_coords; /* --coordinators (0: the in-process rows) */
	int requests;                /* per client, --coordinators */
	bool steps_set;              /* -n given */
	double box_cpus;             /* --box-cpus: each node's cpu quota in cores (0: none) */
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
	int n_c;    /* coordinator namespaces */
	bool boxes; /* --box-cpus: a cgroup per namespace, named alike */
	char ns_c[MAX_C][32], ns_w[MAX_W][32];
	char tmpdir[64], secret[96];
	pid_t guard, workers[MAX_W + 1], echo;
	int guard_fd, home_fd;
	moe_relay *relay[MAX_W][2 * MAX_C], *echo_relay; /* [worker][2 coordinator + port] */
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

/* The cgroup v1 cpu folder of node name (--box-cpus): /sys/fs/cgroup/cpu/NAME. */
static void box_path(char *out, size_t n, const char *name, const char *file)
{
	snprintf(out, n, "/sys/fs/cgroup/cpu/%s%s%s", name, file ? "/" : "", file ? file : "");
}

/* Writes text to path; 0 on success. */
static int write_text(const char *path, const char *text)
{
	const int fd = open(path, O_WRONLY | O_CLOEXEC);
	const size_t n = strlen(text);
	const bool ok = fd >= 0 && write(fd, text, n) == (ssize_t)n;
	if (fd >= 0)
		close(fd);
	return !ok;
}

/* Makes node name's cgroup with a quota of cpus cores; 0, or 1 after saying why. */
static int box_make(const char *name, double cpus)
{
	char path[160], quota[32];
	box_path(path, sizeof path, name, NULL);
	snprintf(quota, sizeof quota, "%ld", (long)(cpus * 100000));
	int bad = mkdir(path, 0755) != 0;
	box_path(path, sizeof path, name, "cpu.cfs_period_us");
	bad = bad || write_text(path, "100000");
	box_path(path, sizeof path, name, "cpu.cfs_quota_us");
	bad = bad || write_text(path, quota);
	if (bad)
		fprintf(stderr,
		        "bench cluster --netns: --box-cpus: cannot make the cgroup %s (%s): needs "
		        "cgroup v1's cpu controller at /sys/fs/cgroup/cpu\n",
		        path, strerror(errno));
	return bad;
}

/* Moves process pid (all its threads) into node name's cgroup; 0 on success. */
static int box_enter(const char *name, pid_t pid)
{
	char path[160], text[32];
	box_path(path, sizeof path, name, "cgroup.procs");
	snprintf(text, sizeof text, "%d", (int)pid);
	return write_text(path, text);
}

/* Removes node name's cgroup once its processes are gone (up to 10 s). */
static void box_remove(const char *name)
{
	char path[160];
	box_path(path, sizeof path, name, NULL);
	for (int i = 0; i < 100 && rmdir(path) != 0 && errno == EBUSY; i++)
		usleep(100000);
}

/* Removes the namespaces (their veth ends go with them) and the secret; a
 * name not made yet, or already gone, is passed over. */
static void teardown_names(const setup *s)
{
	char cmd[128];
	int missing = 0;
	for (int i = -s->n_c; i < s->n; i++) {
		snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null",
		         i < 0 ? s->ns_c[-1 - i] : s->ns_w[i]);
		missing += system(cmd) != 0;
	}
	(void)missing;
	for (int i = -s->n_c; s->boxes && i < s->n; i++)
		box_remove(i < 0 ? s->ns_c[-1 - i] : s->ns_w[i]);
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

/* Coordinator c's namespace joins worker k (1-based) by a veth pair: v<id>-<k>
 * (c 0) or v<id>-<k>c<c> on 10.(98+c).k.1, u... on 10.(98+c).k.2 in the
 * worker's, both ends shaped by tbf. */
static int make_links(setup *s, const nargs *a)
{
	int bad = 0;
	for (int i = -s->n_c; s->boxes && i < s->n && !bad; i++)
		bad |= box_make(i < 0 ? s->ns_c[-1 - i] : s->ns_w[i], a->box_cpus);
	for (int c = 0; c < s->n_c && !bad; c++)
		bad |= sh("ip netns add %s && ip -n %s link set lo up", s->ns_c[c], s->ns_c[c]);
	for (int i = 0; i < s->n && !bad; i++)
		bad |= sh("ip netns add %s && ip -n %s link set lo up", s->ns_w[i], s->ns_w[i]);
	for (int c = 0; c < s->n_c && !bad; c++)
		for (int i = 0; i < s->n && !bad; i++) {
			const int k = i + 1, net = 98 + c;
			char v[40], u[40]; /* at most 12 characters: a pid has at most 7 digits */
			if (c == 0) {
				snprintf(v, sizeof v, "v%d-%d", s->id, k);
				snprintf(u, sizeof u, "u%d-%d", s->id, k);
			} else {
				snprintf(v, sizeof v, "v%d-%dc%d", s->id, k, c);
				snprintf(u, sizeof u, "u%d-%dc%d", s->id, k, c);
			}
			const char *nc = s->ns_c[c], *nw = s->ns_w[i];
			bad |= sh("ip link add %s netns %s type veth peer name %s netns %s", v, nc,
			          u, nw);
			bad |=
			    sh("ip -n %s addr add 10.%d.%d.1/24 dev %s && ip -n %s link set %s up",
			       nc, net, k, v, nc, v);
			bad |=
			    sh("ip -n %s addr add 10.%d.%d.2/24 dev %s && ip -n %s link set %s up",
			       nw, net, k, u, nw, u);
			bad |=
			    sh("ip netns exec %s tc qdisc add dev %s root tbf rate %s burst 1mb "
			       "latency 1ms && ip netns exec %s tc qdisc add dev %s root tbf rate "
			       "%s burst 1mb latency 1ms",
			       nc, v, a->rate, nw, u, a->rate);
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
		if (a->direct && s->n_c > 1) /* reached on every coordinator's veth */
			snprintf(url, sizeof url, "tcp://0.0.0.0:%d", CTL_PORT);
		else if (a->direct)
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
		/* `ip netns exec` execs the worker in the same process */
		if (s->boxes && box_enter(s->ns_w[i], s->workers[i]) != 0) {
			fprintf(stderr,
			        "bench cluster --netns: worker %d: cannot enter its cgroup\n",
			        i + 1);
			return 1;
		}
		if (a->direct)
			continue;
		/* the relays: coordinator c dials 10.(98+c).k.2, the worker listens
		 * on its namespace's loopback */
		for (int j = 0; j < 2 * s->n_c; j++) {
			char host[32];
			snprintf(host, sizeof host, "10.%d.%d.2", 98 + j / 2, i + 1);
			const moe_relay_opts ro = {.listen_host = host,
			                           .listen_port = (uint16_t)(CTL_PORT + j % 2),
			                           .to_host = "127.0.0.1",
			                           .to_port = (uint16_t)(CTL_PORT + j % 2),
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

/* Plan's decode estimate for w workers at batch B per coordinator, nc
 * coordinators (<= 1: one) each stepping its own batch: out[] = aggregate
 * tok/s, coordinator, network and worker us per layer; all -1 where plan
 * has no answer. */
static void predict(double out[4], const moe_model *m, const nargs *a, const figures *fg,
                    char urls[][64], int w, int B, int nc)
{
	out[0] = out[1] = out[2] = out[3] = -1;
	moe_plan *p = malloc(sizeof *p);
	moe_cluster_opts co = {.n_urls = w};
	/* the boxes share this machine: a worker's bandwidth is one worker's
	 * threads' triad, but no more than the coordinator's threads' over the
	 * workers (README "Planning a cluster"); and where the nc coordinators'
	 * (or the w workers') threads outnumber the cores, each gets its share
	 * of them, as in plan's lock step all of them compute at once */
	const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	const int k = nc > 1 ? nc : 1;
	const double cpus = ncpu > 0 ? (double)ncpu : 1;
	double fc = k * a->threads > cpus ? cpus / (k * a->threads) : 1;
	double fw = w * a->wthreads > cpus ? cpus / (w * a->wthreads) : 1;
	if (a->box_cpus > 0) { /* each node its own quota, as a box of its own */
		fc = a->box_cpus < a->threads ? a->box_cpus / a->threads : 1;
		fw = a->box_cpus < a->wthreads ? a->box_cpus / a->wthreads : 1;
	}
	double wbw = fg->wbw;
	if (w > 0 && fg->bw / w < wbw)
		wbw = fg->bw / w;
	for (int i = 0; i < w; i++) {
		co.urls[i] = urls[i];
		co.bw[i] = wbw * fw;
		co.gops[i] = fg->wgops * fw;
		co.rtt_us[i] = fg->rtt_us;
		co.net_bps[i] = fg->net;
	}
	co.coord_bw = fg->bw * fc;
	co.coord_gops = fg->gops * fc;
	moe_plan_opts po;
	moe_plan_opts_default(&po);
	po.n_ctx = a->steps + 8;
	po.n_parallel = B;
	po.batches[0] = B;
	po.n_coordinators = w > 0 ? k : 0;
	if (p && moe_plan_compute(p, m, &co, &po) == MOE_OK && p->speed[0].step_s > 0) {
		const double L = p->n_layer;
		out[0] = p->speed[0].tok_s_total;
		out[1] = p->speed[0].coord_s * 1e6 / L;
		out[2] = p->speed[0].net_s * 1e6 / L;
		out[3] = p->speed[0].workers_s * 1e6 / L;
	}
	free(p);
}

/* ---- decode ------------------------------------------------------------------------ */

/* Decode speed of one configuration (co NULL: one process) and the hash of
 * every step's logits (moe_bench_decode). */
static moe_err decode(nrow *r, const nargs *a, moe_model *m, const moe_cluster_opts *co, int batch)
{
	moe_bench_decode_out d;
	const moe_err err = moe_bench_decode(&d, m, a->model, co, batch, a->steps, a->threads);
	if (err == MOE_OK) {
		r->tok_s = d.tok_s;
		r->fnv = d.fnv;
		r->coord_us = d.coord_us;
		r->net_us = d.net_us;
		r->worker_us = d.worker_us;
	}
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
	FILE *f = moe_bench_plot_open(dir, "bench_netns", 1200, 500);
	if (f == NULL)
		return;
	fprintf(f,
	        "set title 'decode tok/s over %s links, %d us round trip (dashed: plan)'\n"
	        "set xlabel 'workers (0 = one process)'\nset ylabel 'tok/s'\nset key top left\n"
	        "set grid\nset xtics 1\nplot ",
	        a->rate, a->rtt_us);
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
	fprintf(f, "\n");
	moe_bench_plot_run(f, dir, "bench_netns");
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

/* "N,N,..": at most max numbers in [lo, hi]; 0, or 1 when malformed. */
static int parse_list(int *out, int *n, int max, const char *v, long lo, long hi)
{
	*n = 0;
	for (const char *p = v; *p;) {
		char *end;
		const long b = strtol(p, &end, 10);
		if (end == p || b < lo || b > hi || *n == max || (*end != ',' && *end != '\0'))
			return 1;
		out[(*n)++] = (int)b;
		p = *end ? end + 1 : end;
	}
	return *n == 0;
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
		else if (strcmp(s, "--box-cpus") == 0) {
			char *end;
			a->box_cpus = strtod(v, &end);
			bad |= end == v || *end != '\0' ||
			       !(a->box_cpus >= 0.01 && a->box_cpus <= 1024);
		} else if (strcmp(s, "--requests") == 0)
			bad |= moe_parse_int(&a->requests, v, 1, 1000);
		else if (strcmp(s, "--coordinators") == 0)
			bad |= parse_list(a->coords, &a->n_coords, MAX_C, v, 1, MAX_C);
		else if (strcmp(s, "-o") == 0)
			a->dir = v;
		else if (strcmp(s, "--rate") == 0)
			bad |= strspn(v, "0123456789.kmgitbpsKMGT") != strlen(v) || !*v;
		else if (strcmp(s, "-n") == 0) {
			bad |= moe_parse_int(&a->steps, v, 1, 100000);
			a->steps_set = true;
		} else if (strcmp(s, "--threads") == 0)
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
		else if (strcmp(s, "--batches") == 0)
			bad |= parse_list(a->batches, &a->n_batches, MAX_B, v, 1, 64);
		else
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
			double pl[4] = {-1, -1, -1, -1};
			if (a->plan)
				predict(pl, m, a, fg, urls, r->workers, r->batch, 1);
			r->p_tok_s = pl[0];
			r->p_coord_us = pl[1];
			r->p_net_us = pl[2];
			r->p_worker_us = pl[3];
		}
	}
	return 0;
}

/* DIR/NAME.csv (DIR made if missing) opened for writing, its path in path;
 * NULL after saying so. */
static FILE *open_csv(char *path, size_t n, const char *dir, const char *name)
{
	mkdir(dir, 0755);
	snprintf(path, n, "%s/%s.csv", dir, name);
	FILE *f = fopen(path, "w");
	if (f == NULL)
		fprintf(stderr, "bench cluster --netns: cannot write %s\n", path);
	return f;
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
	FILE *f = open_csv(csv, sizeof csv, a->dir, "bench_netns");
	if (f == NULL)
		return 1;
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

/* ---- several coordinators: `moemesh serve` in each namespace ------------------------- */

/* One row of the --coordinators sweep: c coordinators (0: one process, no
 * workers) over w workers, C concurrent clients. */
typedef struct crow {
	int coords, workers, clients;
	double tok_s; /* the median round's */
	double pct;   /* of one process at C clients: median of the rounds' ratios */
	double x_one; /* of one coordinator (same w, C): median ratio; 0 for c <= 1 */
	uint64_t fnv; /* the texts' (moe_bsrv_run_clients) */
	bool fnv_varies;
	int errors;     /* over the rounds */
	double p_tok_s; /* plan's aggregate, < 0 none */
} crow;

/* Starts k `moemesh serve` (k 0: one, without workers) in the first k
 * coordinator namespaces, w workers each, C clients' worth of --parallel;
 * runs the level and stops them.  0, or 1 after saying what failed. */
static int serve_level(double *tok_s, uint64_t *fnv, int *errors, const nargs *a, const setup *s,
                       int k, int w, int C)
{
	const int ns = k > 0 ? k : 1;
	char urls[MAX_W][64], par[16], thr[16];
	snprintf(par, sizeof par, "%d", (C + ns - 1) / ns);
	snprintf(thr, sizeof thr, "%d", a->threads);
	moe_bsrv_child srv[MAX_C] = {0};
	int ports[MAX_C], fds[MAX_C], started = 0, bad = 0;
	for (int c = 0; c < ns; c++)
		fds[c] = -1;
	for (; started < ns && !bad; started++) {
		const char *extra[2 * MAX_W + 12];
		int n = 0;
		for (int i = 0; i < w; i++) {
			snprintf(urls[i], sizeof urls[i], "tcp://10.%d.%d.2:%d", 98 + started,
			         i + 1, CTL_PORT);
			extra[n++] = "--worker";
			extra[n++] = urls[i];
		}
		if (w > 0) {
			extra[n++] = "--secret-file";
			extra[n++] = s->secret;
		}
		const char *rest[] = {"--parallel", par, "--ctx", "512", "--threads", thr, NULL};
		memcpy(&extra[n], rest, sizeof rest);
		char path[96];
		snprintf(path, sizeof path, "/var/run/netns/%s", s->ns_c[started]);
		fds[started] = open(path, O_RDONLY | O_CLOEXEC);
		/* the child is forked from this thread, in its namespace */
		if (fds[started] < 0 || enter_netns(s->ns_c[started]) ||
		    moe_bsrv_start(&srv[started], a->model, extra) != 0) {
			fprintf(stderr, "bench cluster --netns: coordinator %d did not start\n",
			        started + 1);
			bad = 1;
			break;
		}
		ports[started] = srv[started].port;
		if (s->boxes && box_enter(s->ns_c[started], srv[started].pid) != 0) {
			fprintf(stderr,
			        "bench cluster --netns: coordinator %d: cannot enter its cgroup\n",
			        started + 1);
			bad = 1;
			started++;
			break;
		}
	}
	bad |= enter_netns(s->ns_c[0]);
	*tok_s = -1;
	if (!bad) {
		int warm = 0; /* a request each first, not measured */
		(void)moe_bsrv_run_clients(ports, fds, ns, ns, 1, 8, &warm, NULL);
		*tok_s =
		    moe_bsrv_run_clients(ports, fds, ns, C, a->requests, a->steps, errors, fnv);
		bad = *tok_s < 0;
	}
	for (int c = 0; c < started; c++)
		if (moe_bsrv_stop(&srv[c]) != 0)
			bad = 1;
	for (int c = 0; c < ns; c++)
		if (fds[c] >= 0)
			close(fds[c]);
	return bad;
}

static int cmp_crow_tok(const void *x, const void *y)
{
	const double a = ((const crow *)x)->tok_s, b = ((const crow *)y)->tok_s;
	return a < b ? -1 : a > b;
}

/* The median over the rounds of runs[rd].tok_s / ref[rd].tok_s. */
static double median_ratio(const crow *runs, const crow *ref, int rounds)
{
	double ratio[MAX_ROUNDS];
	for (int rd = 0; rd < rounds; rd++)
		ratio[rd] = ref[rd].tok_s > 0 ? runs[rd].tok_s / ref[rd].tok_s : 0;
	qsort(ratio, (size_t)rounds, sizeof *ratio, cmp_double);
	return ratio[rounds / 2];
}

/* The --coordinators sweep: per clients level, one process, then per
 * workers count each coordinators count (in the order asked, reversed every
 * other round: the VM's speed drifts); rows are the medians.  0, or 1 after
 * saying what failed. */
static int sweep_coords(crow *rows, int *n_rows, const nargs *a, const moe_model *m, const setup *s,
                        const figures *fg)
{
	/* [clients][0: one process, 1 + workers index * n_coords + coords index][round] */
	static crow runs[MAX_B][1 + MAX_W * MAX_C][MAX_ROUNDS];
	const int nw = 1 + a->max_workers - a->min_workers, per = 1 + nw * a->n_coords;
	for (int rd = 0; rd < a->rounds; rd++)
		for (int bi = 0; bi < a->n_batches; bi++)
			for (int li = 0; li < per; li++) {
				const int C = a->batches[bi];
				int w = 0, k = 0, slot = 0;
				if (li > 0) {
					const int wi = (li - 1) / a->n_coords,
					          o = (li - 1) % a->n_coords;
					const int ci = rd % 2 ? a->n_coords - 1 - o : o;
					w = a->min_workers + wi;
					k = a->coords[ci];
					slot = 1 + wi * a->n_coords + ci;
				}
				crow *r = &runs[bi][slot][rd];
				*r = (crow){.coords = k, .workers = w, .clients = C, .tok_s = -1};
				if (k > C) /* a coordinator would have no client */
					continue;
				if (serve_level(&r->tok_s, &r->fnv, &r->errors, a, s, k, w, C) != 0)
					return 1;
				fprintf(stderr,
				        "  round %d: %d coordinators, %d workers, %d clients: %.1f "
				        "tok/s%s\n",
				        rd + 1, k, w, C, r->tok_s,
				        r->errors ? " (failed requests)" : "");
			}
	char urls[MAX_W][64];
	for (int i = 0; i < MAX_W; i++)
		snprintf(urls[i], sizeof urls[i], "tcp://10.98.%d.2:%d", i + 1, CTL_PORT);
	*n_rows = 0;
	for (int bi = 0; bi < a->n_batches; bi++)
		for (int slot = 0; slot < per; slot++) {
			const crow *rs = runs[bi][slot];
			if (rs[0].coords > rs[0].clients)
				continue;
			crow sorted[MAX_ROUNDS];
			memcpy(sorted, rs, (size_t)a->rounds * sizeof *sorted);
			qsort(sorted, (size_t)a->rounds, sizeof *sorted, cmp_crow_tok);
			crow *r = &rows[(*n_rows)++];
			*r = sorted[a->rounds / 2];
			r->errors = 0;
			for (int rd = 0; rd < a->rounds; rd++) {
				r->fnv_varies |= rs[rd].fnv != r->fnv;
				r->errors += rs[rd].errors;
			}
			r->pct = 100.0 * median_ratio(rs, runs[bi][0], a->rounds);
			/* one coordinator over the same workers: the slot of coords 1 */
			r->x_one = 0;
			for (int ci = 0; slot > 0 && ci < a->n_coords; ci++)
				if (a->coords[ci] == 1 && r->coords > 1)
					r->x_one = median_ratio(
					    rs, runs[bi][slot - (slot - 1) % a->n_coords + ci],
					    a->rounds);
			double pl[4] = {-1, -1, -1, -1};
			if (a->plan)
				predict(pl, m, a, fg, urls, r->workers,
				        (r->clients + (r->coords > 1 ? r->coords : 1) - 1) /
				            (r->coords > 1 ? r->coords : 1),
				        r->coords);
			r->p_tok_s = pl[0];
		}
	return 0;
}

/* Per series (one process; each K on --max-workers workers) a gnuplot data
 * block of clients, tok/s, % of one process and plan's tok/s, so that each
 * line joins its own points (the CSV interleaves the series). */
static void plot_coords(const char *dir, const crow *rows, int n, const nargs *a)
{
	FILE *f = moe_bench_plot_open(dir, "bench_netns_coord", 1200, 500);
	if (f == NULL)
		return;
	for (int ci = -1; ci < a->n_coords; ci++) {
		const int k = ci < 0 ? 0 : a->coords[ci], w = ci < 0 ? 0 : a->max_workers;
		fprintf(f, "$s%d << EOD\n", ci + 1);
		for (int i = 0; i < n; i++)
			if (rows[i].coords == k && rows[i].workers == w)
				fprintf(f, "%d,%.3f,%.3f,%.3f\n", rows[i].clients, rows[i].tok_s,
				        rows[i].pct, rows[i].p_tok_s > 0 ? rows[i].p_tok_s : NAN);
		fprintf(f, "EOD\n");
	}
	fprintf(f,
	        "set title 'aggregate tok/s, %d workers, %s links, %d us round trip (dashed: "
	        "plan)'\nset xlabel 'concurrent clients'\nset ylabel 'tok/s'\nset key top left\n"
	        "set grid\nset logscale x 2\nset yrange [0:*]\nplot ",
	        a->max_workers, a->rate, a->direct ? 0 : a->rtt_us);
	for (int ci = -1; ci < a->n_coords; ci++) {
		const int k = ci < 0 ? 0 : a->coords[ci];
		char title[32] = "one process";
		if (k > 0)
			snprintf(title, sizeof title, "%d coordinator%s", k, k > 1 ? "s" : "");
		fprintf(f,
		        "%s$s%d using 1:2 with linespoints lc %d title '%s', $s%d using 1:4 with "
		        "lines dt 2 lc %d notitle",
		        ci < 0 ? "" : ", ", ci + 1, ci + 1, title, ci + 1, ci + 1);
	}
	fprintf(f, "\nset title '%% of one process'\nset ylabel '%%'\nplot ");
	for (int ci = 0; ci < a->n_coords; ci++)
		fprintf(f, "%s$s%d using 1:3 with linespoints lc %d title '%d coordinator%s'",
		        ci ? ", " : "", ci + 1, ci + 1, a->coords[ci],
		        a->coords[ci] > 1 ? "s" : "");
	fprintf(f, "\n");
	moe_bench_plot_run(f, dir, "bench_netns_coord");
}

/* The table, DIR/bench_netns_coord.csv and .png; 0 when every row's texts
 * are one process's and no request failed. */
static int report_coords(const crow *rows, int n, const nargs *a)
{
	printf("%6s %7s %7s %9s %9s %10s %10s %9s %6s %s\n", "coords", "workers", "clients",
	       "tok/s", "% of 1p", "x of 1 co", "plan tok/s", "meas/plan", "errors", "texts");
	bool same = true;
	int errors = 0;
	const crow *one = NULL;
	for (int i = 0; i < n; i++) {
		const crow *r = &rows[i];
		if (r->coords == 0)
			one = r;
		const bool ok = one && one->clients == r->clients && r->fnv == one->fnv &&
		                !r->fnv_varies && !one->fnv_varies;
		same &= ok;
		errors += r->errors;
		char x[16] = "-", pt[16] = "-", ratio[16] = "-";
		if (r->x_one > 0)
			snprintf(x, sizeof x, "%.2f", r->x_one);
		if (r->p_tok_s > 0) {
			snprintf(pt, sizeof pt, "%.1f", r->p_tok_s);
			snprintf(ratio, sizeof ratio, "%.2f", r->tok_s / r->p_tok_s);
		}
		printf("%6d %7d %7d %9.1f %9.1f %10s %10s %9s %6d %s\n", r->coords, r->workers,
		       r->clients, r->tok_s, r->pct, x, pt, ratio, r->errors,
		       r->coords == 0 ? (r->fnv_varies ? "VARY" : "reference")
		       : ok           ? "identical"
		                      : "DIFFER");
	}
	char csv[1024];
	FILE *f = open_csv(csv, sizeof csv, a->dir, "bench_netns_coord");
	if (f == NULL)
		return 1;
	fprintf(f, "coordinators,workers,clients,rtt_us,tok_s,pct_of_one_process,"
	           "x_of_one_coordinator,errors,plan_tok_s,text_fnv\n");
	for (int i = 0; i < n; i++) {
		const crow *r = &rows[i];
		fprintf(f, "%d,%d,%d,%d,%.2f,%.1f,%.3f,%d,%.2f,%016llx\n", r->coords, r->workers,
		        r->clients, a->direct ? -1 : a->rtt_us, r->tok_s, r->pct, r->x_one,
		        r->errors, r->p_tok_s, (unsigned long long)r->fnv);
	}
	fclose(f);
	printf("csv: %s\n", csv);
	plot_coords(a->dir, rows, n, a);
	printf("texts: %s\n", same ? "every row identical to one process" : "DIFFER");
	for (int i = 0; i < n; i++)
		if (rows[i].x_one > 0)
			printf("coord%d_x_of_one_w%d_c%d=%.3f ", rows[i].coords, rows[i].workers,
			       rows[i].clients, rows[i].x_one);
	printf("texts_identical=%d failed_requests=%d\n", same, errors);
	return same && errors == 0 ? 0 : 1;
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
	           .requests = 2,
	           .batches = {1, 4, 16},
	           .n_batches = 3,
	           .plan = true};
	int pr = parse(&a, argc, argv);
	if (pr == 0 && a.n_coords > 0 && a.overlap_ab)
		pr = 1; /* one or the other */
	if (pr == 0 && a.box_cpus > 0 && a.n_coords == 0)
		pr = 1; /* the in-process rows' coordinator is this process */
	if (pr != 0) {
		usage(pr < 0 ? stdout : stderr);
		return pr < 0 ? 0 : 2;
	}
	if (a.n_coords > 0 && !a.steps_set)
		a.steps = 64; /* tokens per request */
	if (a.n_coords > 0 && a.steps > 400) {
		fprintf(stderr, "moemesh bench cluster --netns: --coordinators: -n is at most 400 "
		                "tokens per request\n");
		return 2;
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
	s->boxes = a.box_cpus > 0;
	const ssize_t el = readlink("/proc/self/exe", s->exe, sizeof s->exe - 1);
	s->n_c = 1;
	for (int i = 0; i < a.n_coords; i++)
		s->n_c = a.coords[i] > s->n_c ? a.coords[i] : s->n_c;
	for (int c = 0; c < s->n_c; c++)
		snprintf(s->ns_c[c], sizeof s->ns_c[c], c ? "moeb%d-c%d" : "moeb%d-c", s->id,
		         c + 1);
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
	printf("namespaces:");
	for (int c = 0; c < s->n_c; c++)
		printf(" %s", s->ns_c[c]);
	for (int i = 0; i < s->n; i++)
		printf(" %s", s->ns_w[i]);
	printf("\n");
	fflush(stdout);
	if (make_links(s, &a) || write_secret(s) || start_workers(s, &a) ||
	    enter_netns(s->ns_c[0])) {
		fprintf(stderr,
		        "moemesh bench cluster --netns: setting up the namespaces failed\n");
		goto out_setup;
	}
	figures fg = {0};
	if (a.plan && measure_figures(&fg, s, &a)) {
		fprintf(stderr, "moemesh bench cluster --netns: moemesh probe failed\n");
		goto out_setup;
	}
	printf("model %s, %d %s, links %s with %s, coordinator %d threads, workers %d "
	       "threads each\n",
	       a.model, a.steps, a.n_coords ? "tokens per request" : "decode steps", a.rate,
	       a.direct ? "no relay" : "a relay holding each direction rtt/2", a.threads,
	       a.wthreads);
	if (a.box_cpus > 0)
		printf("boxes: each coordinator and worker held to %.2f cores (cgroup cpu quota)\n",
		       a.box_cpus);
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
	if (a.n_coords > 0) { /* several coordinators: serve in each namespace */
		static crow crows[MAX_B * (1 + MAX_W * MAX_C)];
		if (sweep_coords(crows, &n_rows, &a, m, s, &fg) != 0)
			goto out_setup;
		if (getloadavg(load, 3) > 0)
			printf("load average after: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
		rc = report_coords(crows, n_rows, &a);
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
		for (int j = 0; j < 2 * MAX_C; j++)
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
