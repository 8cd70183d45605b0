/*
 * test_netns.c - `bench cluster --netns` and its delaying relay: the relay
 * passes bytes on intact both ways (more than its ring holds, with the EOF
 * after them) and holds each direction at least as long as asked; as root, a
 * tiny sweep over namespaces gives the CSV with its columns and the logits of
 * one process, and leaves no namespace behind, also when interrupted; two
 * `serve` coordinators in namespaces of their own sharing two workers give
 * the texts of one process.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/core.h"
#include "proto/proto.h"
#include "tests/test_util.h"

/* ---- the relay --------------------------------------------------------------------- */

typedef struct echo {
	int lfd, conns;
	pthread_t th;
} echo;

/* Echoes each of e->conns connections in turn until its EOF, then closes it. */
static void *echo_main(void *arg)
{
	echo *e = arg;
	static uint8_t buf[65536];
	for (int i = 0; i < e->conns; i++) {
		const int fd = accept(e->lfd, NULL, NULL);
		if (fd < 0)
			break;
		moe_sock_nodelay(fd);
		for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;)
			if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
				break;
		close(fd);
	}
	return NULL;
}

typedef struct writer {
	int fd;
	const uint8_t *p;
	size_t n;
	pthread_t th;
} writer;

/* Sends p in uneven pieces, then ends its direction. */
static void *writer_main(void *arg)
{
	writer *w = arg;
	size_t done = 0, piece = 1;
	while (done < w->n) {
		size_t n = piece < w->n - done ? piece : w->n - done;
		const ssize_t s = send(w->fd, w->p + done, n, MSG_NOSIGNAL);
		if (s <= 0)
			break;
		done += (size_t)s;
		piece = piece * 7 % 100003 + 1;
	}
	shutdown(w->fd, SHUT_WR);
	return NULL;
}

static int connect_port(uint16_t port)
{
	int fd = -1;
	cr_assert_eq(moe_sock_connect_tcp(&fd, "127.0.0.1", port, 5000), MOE_OK, "%s",
	             moe_err_detail());
	return fd;
}

Test(relay, passes_bytes_on_intact_and_holds_each_direction, .timeout = 60)
{
	enum { HOLD_US = 20000, BULK = 3 << 20, PINGS = 5 };
	echo e = {.conns = 2};
	uint16_t eport = 0;
	cr_assert_eq(moe_sock_listen_tcp(&e.lfd, "127.0.0.1", &eport), MOE_OK);
	cr_assert_eq(pthread_create(&e.th, NULL, echo_main, &e), 0);
	moe_relay *r = NULL;
	const moe_relay_opts ro = {.listen_host = "127.0.0.1",
	                           .to_host = "127.0.0.1",
	                           .to_port = eport,
	                           .hold_us = HOLD_US};
	cr_assert_eq(moe_relay_create(&r, &ro), MOE_OK, "%s", moe_err_detail());
	cr_assert_neq(moe_relay_port(r), 0);

	/* 3 MiB (three rings' worth) of pseudo-random bytes there and back */
	uint8_t *out = malloc(BULK), *back = malloc(BULK + 1);
	cr_assert(out && back);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < BULK; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		out[i] = (uint8_t)x;
	}
	writer w = {.fd = connect_port(moe_relay_port(r)), .p = out, .n = BULK};
	cr_assert_eq(pthread_create(&w.th, NULL, writer_main, &w), 0);
	size_t got = 0;
	for (ssize_t n; got <= BULK && (n = recv(w.fd, back + got, BULK + 1 - got, 0)) > 0;)
		got += (size_t)n;
	pthread_join(w.th, NULL);
	close(w.fd);
	cr_assert_eq(got, (size_t)BULK, "%zu bytes came back, not %d (then EOF)", got, BULK);
	cr_assert(memcmp(out, back, BULK) == 0, "the bytes came back changed");

	/* a one-byte exchange crosses the relay twice: at least 2 x HOLD_US */
	const int fd = connect_port(moe_relay_port(r));
	for (int i = 0; i < PINGS; i++) {
		uint8_t b = (uint8_t)i, c = 0xff;
		const uint64_t t0 = moe_now_ns();
		cr_assert_eq(send(fd, &b, 1, MSG_NOSIGNAL), 1);
		cr_assert_eq(recv(fd, &c, 1, MSG_WAITALL), 1);
		const uint64_t dt = moe_now_ns() - t0;
		cr_assert_eq(c, b);
		cr_assert_geq(dt, 2ull * HOLD_US * 1000, "round trip %llu us, under 2 x %d us held",
		              (unsigned long long)(dt / 1000), HOLD_US);
	}
	close(fd);
	pthread_join(e.th, NULL);
	close(e.lfd);
	moe_relay_destroy(r);
	free(out);
	free(back);
}

/* ---- the sweep over namespaces ------------------------------------------------------ */

static bool can_netns(void)
{
	if (geteuid() != 0 || sh("command -v ip >/dev/null && command -v tc >/dev/null") != 0)
		return false;
	char name[32];
	snprintf(name, sizeof name, "moet%d", (int)getpid());
	if (sh("ip netns add %s 2>/dev/null", name) != 0)
		return false;
	return sh("ip netns del %s", name) == 0;
}

static const char *demo_model(char *buf, size_t n)
{
	const char *src = getenv("MOE_SOURCE_DIR");
	snprintf(buf, n, "%s/models/kjv-qwen3next-Q4_K_M.gguf", src ? src : "..");
	return buf;
}

/* The namespaces the run's "namespaces:" line names, each still listed? */
static int namespaces_left(const char *out)
{
	FILE *f = fopen(out, "r");
	cr_assert(f != NULL);
	char line[512];
	int left = 0, named = 0;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, "namespaces: ", 12) == 0)
			for (char *t = strtok(line + 12, " \n"); t; t = strtok(NULL, " \n")) {
				named++;
				left += sh("ip netns list | grep -q '^%s\\b'", t) == 0;
			}
	fclose(f);
	cr_assert_gt(named, 1, "the run named no namespaces");
	return left;
}

Test(netns, tiny_sweep_gives_the_csv_and_the_logits_of_one_process, .timeout = 120)
{
	if (!can_netns()) {
		cr_skip_test("needs root, ip and tc, and network namespaces");
		return;
	}
	char model[1024], dir[64], out[128], csv[128];
	snprintf(dir, sizeof dir, "/tmp/moe-netns-%d", (int)getpid());
	snprintf(out, sizeof out, "%s/out.txt", dir);
	snprintf(csv, sizeof csv, "%s/bench_netns.csv", dir);
	cr_assert_eq(sh("mkdir -p %s", dir), 0);
	const int st = sh("'%s' bench cluster --netns -m '%s' -n 4 --batches 1 --max-workers 1 "
	                  "--threads 1 --worker-threads 1 --rtt-us 100 --no-plan -o %s > %s 2>&1",
	                  bin(), demo_model(model, sizeof model), dir, out);
	sh("cat %s >&2", out);
	cr_assert_eq(st, 0, "bench cluster --netns exited %d", st);
	cr_assert_eq(namespaces_left(out), 0, "namespaces left after the run");

	FILE *f = fopen(csv, "r");
	cr_assert(f != NULL, "no %s", csv);
	char line[1024];
	cr_assert(fgets(line, sizeof line, f) != NULL);
	cr_assert_str_eq(line, "workers,batch,rtt_us,tok_s,pct_of_one_process,coord_us_per_layer,"
	                       "net_us_per_layer,worker_us_per_layer,plan_tok_s,"
	                       "plan_coord_us_per_layer,plan_net_us_per_layer,"
	                       "plan_worker_us_per_layer,logits_fnv\n");
	char fnv[2][32] = {"", ""};
	int rows = 0;
	while (fgets(line, sizeof line, f)) {
		int w, b, rtt;
		double tok;
		char *last = strrchr(line, ',');
		cr_assert(last != NULL);
		cr_assert_eq(sscanf(line, "%d,%d,%d,%lf,", &w, &b, &rtt, &tok), 4, "row: %s", line);
		cr_assert_eq(w, rows, "row %d is for %d workers", rows, w);
		cr_assert_eq(b, 1);
		cr_assert_eq(rtt, 100);
		cr_assert_gt(tok, 0);
		cr_assert_lt(rows, 2, "more rows than one process and one worker");
		cr_assert_eq(sscanf(last + 1, "%31s", fnv[rows]), 1);
		cr_assert_eq(strlen(fnv[rows]), 16, "logits hash '%s'", fnv[rows]);
		rows++;
	}
	fclose(f);
	cr_assert_eq(rows, 2);
	cr_assert_str_eq(fnv[1], fnv[0], "one worker over the namespaces' links: other logits");
	sh("rm -rf %s", dir);
}

/* Whether this process can make a cgroup v1 cpu folder (--box-cpus). */
static bool can_box(void)
{
	char path[96];
	snprintf(path, sizeof path, "/sys/fs/cgroup/cpu/moe-test-probe-%d", (int)getpid());
	if (mkdir(path, 0755) != 0)
		return false;
	rmdir(path);
	return true;
}

Test(netns, two_coordinators_over_the_links_give_the_texts_of_one_process, .timeout = 180)
{
	if (!can_netns()) {
		cr_skip_test("needs root, ip and tc, and network namespaces");
		return;
	}
	char model[1024], dir[64], out[128], csv[128];
	snprintf(dir, sizeof dir, "/tmp/moe-netns-co-%d", (int)getpid());
	snprintf(out, sizeof out, "%s/out.txt", dir);
	snprintf(csv, sizeof csv, "%s/bench_netns_coord.csv", dir);
	cr_assert_eq(sh("mkdir -p %s", dir), 0);
	/* each node in a cgroup of its own where this machine lets us make one */
	const bool boxes = can_box();
	const int st = sh("'%s' bench cluster --netns --coordinators 2 -m '%s' -n 8 --requests 1 "
	                  "--batches 2 --min-workers 2 --max-workers 2 --threads 1 "
	                  "--worker-threads 1 --rtt-us 100 --no-plan %s -o %s > %s 2>&1",
	                  bin(), demo_model(model, sizeof model), boxes ? "--box-cpus 1" : "", dir,
	                  out);
	sh("cat %s >&2", out);
	cr_assert_eq(st, 0, "bench cluster --netns --coordinators exited %d", st);
	cr_assert_eq(namespaces_left(out), 0, "namespaces left after the run");
	if (boxes) {
		cr_assert(file_has(out, "held to 1.00 cores"), "no cgroup per node");
		int id = 0; /* the run's: its namespaces and cgroups are moeb<id>-... */
		FILE *o = fopen(out, "r");
		char line[512];
		while (o && fgets(line, sizeof line, o))
			if (sscanf(line, "namespaces: moeb%d-", &id) == 1)
				break;
		if (o)
			fclose(o);
		cr_assert_gt(id, 0, "the run named no namespaces");
		cr_assert_neq(sh("ls -d /sys/fs/cgroup/cpu/moeb%d-* 2>/dev/null | grep -q .", id), 0,
		              "a node's cgroup is left after the run");
	}
	/* the second coordinator took the workers' placement over (adopt.c) */
	cr_assert(file_has(out, "adopted, nothing to load"), "no coordinator adopted");

	FILE *f = fopen(csv, "r");
	cr_assert(f != NULL, "no %s", csv);
	char line[1024];
	cr_assert(fgets(line, sizeof line, f) != NULL);
	cr_assert_str_eq(line, "coordinators,workers,clients,rtt_us,tok_s,pct_of_one_process,"
	                       "x_of_one_coordinator,errors,plan_tok_s,text_fnv\n");
	char fnv[2][32] = {"", ""};
	int rows = 0;
	while (fgets(line, sizeof line, f)) {
		int c, w, n, rtt, errors;
		double tok, pct, x, plan;
		cr_assert_lt(rows, 2, "more rows than one process and two coordinators");
		cr_assert_eq(sscanf(line, "%d,%d,%d,%d,%lf,%lf,%lf,%d,%lf,%31s", &c, &w, &n, &rtt,
		                    &tok, &pct, &x, &errors, &plan, fnv[rows]),
		             10, "row: %s", line);
		cr_assert_eq(c, rows ? 2 : 0, "row %d is for %d coordinators", rows, c);
		cr_assert_eq(w, rows ? 2 : 0);
		cr_assert_eq(n, 2);
		cr_assert_eq(rtt, 100);
		cr_assert_gt(tok, 0);
		cr_assert_eq(errors, 0);
		cr_assert_eq(strlen(fnv[rows]), 16, "texts hash '%s'", fnv[rows]);
		rows++;
	}
	fclose(f);
	cr_assert_eq(rows, 2);
	cr_assert_str_eq(fnv[1], fnv[0], "two coordinators over the links: other texts");
	sh("rm -rf %s", dir);
}

/* the pids `ip netns pids` lists for a namespace, into pids (up to n) */
static int ns_pids(pid_t *pids, int n, const char *ns)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "ip netns pids %s", ns);
	FILE *p = popen(cmd, "r");
	cr_assert(p != NULL);
	int k = 0, v;
	while (k < n && fscanf(p, "%d", &v) == 1)
		pids[k++] = v;
	pclose(p);
	return k;
}

/* Whether pid is a process that has not ended (a zombie has). */
static bool alive(pid_t pid)
{
	char path[64], buf[256];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return false;
	const bool got = fgets(buf, sizeof buf, f) != NULL;
	fclose(f);
	const char *close_paren = strrchr(buf, ')');
	return got && close_paren && close_paren[1] == ' ' && close_paren[2] != 'Z';
}

Test(netns, an_interrupted_sweep_leaves_no_namespace_or_worker, .timeout = 120)
{
	if (!can_netns()) {
		cr_skip_test("needs root, ip and tc, and network namespaces");
		return;
	}
	char model[1024], out[128], dir[64];
	snprintf(dir, sizeof dir, "/tmp/moe-netns-int-%d", (int)getpid());
	snprintf(out, sizeof out, "/tmp/moe-netns-int-%d.txt", (int)getpid());
	demo_model(model, sizeof model);
	const pid_t p = fork();
	if (p == 0) {
		FILE *o = freopen(out, "w", stdout);
		if (o == NULL || dup2(1, 2) < 0)
			_exit(126);
		execl(bin(), "moemesh", "bench", "cluster", "--netns", "-m", model, "-n", "100000",
		      "--batches", "1", "--max-workers", "1", "--threads", "1", "--worker-threads",
		      "1", "--no-plan", "-o", dir, (char *)NULL);
		_exit(127);
	}
	cr_assert_gt(p, 0);
	/* wait until it decodes over the links (its workers are up) */
	char ns[64] = "";
	pid_t wp[4];
	int nw = 0;
	for (int i = 0; i < 300 && nw == 0; i++) {
		usleep(100000);
		FILE *f = fopen(out, "r");
		char line[512];
		bool decoding = false;
		while (f && fgets(line, sizeof line, f)) {
			if (strncmp(line, "namespaces: ", 12) == 0)
				sscanf(line, "namespaces: %*s %63s", ns);
			decoding |= strstr(line, "load average before") != NULL;
		}
		if (f)
			fclose(f);
		if (decoding && ns[0])
			nw = ns_pids(wp, 4, ns);
	}
	cr_assert_gt(nw, 0, "the run never started its worker");
	usleep(500000); /* inside the decode loop of the single-process row or the cluster's */
	cr_assert_eq(kill(p, SIGINT), 0);
	int st = 0;
	cr_assert_eq(waitpid(p, &st, 0), p);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT, "the run did not end by SIGINT");
	/* the guard and the workers' parent-death signal do the rest */
	bool gone = false;
	for (int i = 0; i < 100 && !gone; i++) {
		usleep(100000);
		gone = namespaces_left(out) == 0;
		for (int k = 0; k < nw; k++)
			gone &= !alive(wp[k]);
	}
	sh("cat %s >&2", out);
	cr_assert(gone, "a namespace or a worker was left 10 s after SIGINT");
	unlink(out);
	sh("rm -rf %s", dir);
}
