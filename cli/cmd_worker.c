/* cmd_worker.c - `moemesh worker` (and the moemesh-worker program): serve a
 * slice of a model's experts until SHUTDOWN, SIGTERM or SIGINT. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/core.h"
#include "proto/proto.h"
#include "worker/worker.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh worker -m MODEL.gguf --listen URL [--threads N]\n"
	        "                      [--secret-file F | --insecure] [--name NAME] [--mem GIB]\n"
	        "                      [--data-port P] [--net-delay-us US] [--quiet]\n"
	        "                      [--auth-timeout MS] [--max-preauth-per-ip N]\n"
	        "                      [--log-level error|warn|info|debug]\n\n"
	        "Serves the routed experts a coordinator assigns to it.  URL is\n"
	        "tcp://HOST:PORT or ipc://PATH (control, nng); activations travel on a\n"
	        "plain TCP socket (--data-port, default any free port) or, for ipc://,\n"
	        "on the Unix socket PATH.data.  Only the assigned expert slices are\n"
	        "read from MODEL.  --mem is what it offers for experts (default: the\n"
	        "available memory); --net-delay-us adds a delay to every dispatch and\n"
	        "every result (latency experiments).  Stops on the coordinator's\n"
	        "SHUTDOWN, or on SIGTERM / SIGINT (exit status 0).  `moemesh status`\n"
	        "asks it for its state on UDP at --listen's port (ipc://: PATH.status),\n"
	        "also while it serves a coordinator.  Log lines go to stderr (--quiet:\n"
	        "none).  A tcp:// URL off loopback needs --secret-file (the same file\n"
	        "as the coordinator's), or --insecure to listen unauthenticated.  A peer\n"
	        "that has not authenticated --auth-timeout ms (default 10000) after it\n"
	        "connected is dropped; one address (IPv4 or IPv6; ipc:// has none)\n"
	        "holds at most --max-preauth-per-ip (default 4) control peers, and as\n"
	        "many data connections, not yet authenticated: a new one past that is\n"
	        "closed at once.\n");
}

/* Runs the worker with SIGTERM / SIGINT stopping it cleanly. */
static moe_err run_stoppable(moe_worker_opts *o)
{
	if ((o->stop_fd = moe_cli_stop_signals_begin(true)) < 0)
		return moe_fail(MOE_ERR_SYS, "pipe: %s", strerror(errno));
	const moe_err err = moe_worker_run(o);
	moe_cli_stop_signals_end();
	return err;
}

int moe_cmd_worker(int argc, char **argv)
{
	return moe_cmd_worker_with(argc, argv, NULL, NULL);
}

int moe_cmd_worker_with(int argc, char **argv, void (*adjust)(moe_worker_opts *o, void *ctx),
                        void *ctx)
{
	moe_worker_opts o = {.ready_fd = -1, .stop_fd = -1, .name = "worker"};
	long v;
	bool insecure = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const bool has = i + 1 < argc;
		int ll;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--quiet") == 0) {
			o.quiet = true;
		} else if (strcmp(a, "--insecure") == 0) {
			insecure = true;
		} else if ((ll = moe_cli_log_level_arg(&i, argc, argv, "worker")) != 0) {
			if (ll < 0)
				return 2;
		} else if (strcmp(a, "-m") == 0 && has) {
			o.model_path = argv[++i];
		} else if (strcmp(a, "--listen") == 0 && has) {
			o.listen_url = argv[++i];
		} else if (strcmp(a, "--secret-file") == 0 && has) {
			o.secret_file = argv[++i];
		} else if (strcmp(a, "--name") == 0 && has) {
			o.name = argv[++i];
		} else if (strcmp(a, "--threads") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 1, 1024) != 0)
				goto out_usage;
			o.n_threads = (int)v;
		} else if (strcmp(a, "--mem") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 1, 1 << 20) != 0)
				goto out_usage;
			o.mem_bytes = (uint64_t)v << 30;
		} else if (strcmp(a, "--data-port") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 1, 65535) != 0)
				goto out_usage;
			o.data_port = (uint16_t)v;
		} else if (strcmp(a, "--auth-timeout") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 1, 3600000) != 0)
				goto out_usage;
			o.auth_timeout_ms = (int)v;
		} else if (strcmp(a, "--max-preauth-per-ip") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 1, 1024) != 0)
				goto out_usage;
			o.max_preauth_per_ip = (int)v;
		} else if (strcmp(a, "--net-delay-us") == 0 && has) {
			if (moe_parse_long(&v, argv[++i], 0, 10000000) != 0)
				goto out_usage;
			o.net_delay_us = (int)v;
		} else if (strcmp(a, "--ready-fd") == 0 && has) {
			/* for --workers N: the parent's pipe */
			if (moe_parse_long(&v, argv[++i], 0, 1 << 20) != 0)
				goto out_usage;
			o.ready_fd = (int)v;
		} else {
			goto out_usage;
		}
	}
	if (o.model_path == NULL || o.listen_url == NULL)
		goto out_usage;
	if (o.secret_file == NULL && !insecure && !moe_url_is_loopback(o.listen_url)) {
		fprintf(
		    stderr,
		    "moemesh worker: --listen %s is not a loopback address and no --secret-file "
		    "is given: anyone who reaches it could drive this worker; give --secret-file "
		    "F (the same file on the coordinator), or --insecure to listen "
		    "unauthenticated anyway\n",
		    o.listen_url);
		return 2;
	}
	if (adjust != NULL)
		adjust(&o, ctx);
	moe_err err = run_stoppable(&o);
	if (err != MOE_OK) {
		moe_log(MOE_LOG_ERROR, "moemesh worker: %s: %s", moe_err_name(err),
		        moe_err_detail());
		return 1;
	}
	return 0;

out_usage:
	usage(stderr);
	return 2;
}
