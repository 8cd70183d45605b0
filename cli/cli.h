/*
 * cli.h - the public header of cli/: the subcommands of the moemesh program
 * (the only place that knows every role), for main.c and the tests that run
 * a command in-process.  Each takes the
 * arguments after its name (argv[0] is the subcommand name) and returns the
 * process exit status: 0 on success, 1 on a runtime error (reported on stderr
 * with moe_err_detail()), 2 on a usage error.
 */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

typedef struct moe_command {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
} moe_command;

/* The table of subcommands, terminated by an entry with name NULL. */
extern const moe_command moe_commands[];

int moe_cmd_version(int argc, char **argv);
int moe_cmd_make_model(int argc, char **argv);
int moe_cmd_inspect(int argc, char **argv);
int moe_cmd_gguf_split(int argc, char **argv);
int moe_cmd_tokenize(int argc, char **argv);
int moe_cmd_bench(int argc, char **argv);
int moe_cmd_logits(int argc, char **argv);
int moe_cmd_run(int argc, char **argv);
int moe_cmd_serve(int argc, char **argv);
int moe_cmd_worker(int argc, char **argv);
int moe_cmd_status(int argc, char **argv);
int moe_cmd_plan(int argc, char **argv);
int moe_cmd_probe(int argc, char **argv);
int moe_cmd_trace(int argc, char **argv);

/* Routing traces for run and serve (cmd_trace.c): create writes path's
 * header for model m (its identity, n_layer, n_expert, k; the weights if
 * weights); close ends the file and logs one line with the steps recorded
 * and dropped, or the write error (returned too). */
struct moe_model;
struct moe_trace_writer;
moe_err moe_cli_trace_create(struct moe_trace_writer **out, const struct moe_model *m,
                             const char *path, bool weights);
moe_err moe_cli_trace_close(struct moe_trace_writer *w, const char *path);

/* moe_cmd_worker with adjust(o, ctx) called on the parsed options just before
 * the worker runs (not on --help or a usage error); adjust NULL is
 * moe_cmd_worker.  The test harness (tests/worker_harness.c) sets the
 * worker's observers there. */
struct moe_worker_opts;
int moe_cmd_worker_with(int argc, char **argv, void (*adjust)(struct moe_worker_opts *o, void *ctx),
                        void *ctx);

/* SIGTERM and SIGINT from now on write their number as one byte to a pipe
 * (signals.c); returns its read end (non-blocking if asked), or -1 with
 * errno.  One at a time per process; _end restores the handlers and closes
 * the pipe (a no-op without _begin). */
int moe_cli_stop_signals_begin(bool nonblock);
void moe_cli_stop_signals_end(void);

/* The workers' load progress while a cluster starts (progress.c): give
 * moe_cli_progress_cb and a moe_cli_progress that lives as long as the
 * cluster to moe_cluster_opts.on_load.  On a terminal (not the journal) one
 * bar on stderr is redrawn in place, else a log line per worker at every
 * 10 % it passes; with h, /health lists the workers' bytes
 * (moe_http_set_loading) until _end, which also ends the bar's line.  After
 * _end (a repair re-loading experts) only log lines. */
struct moe_http;
struct moe_cluster;
typedef struct moe_cli_progress {
	struct moe_http *h;
	bool tty, drawn, ended;
	int decile[64]; /* last 10 % step logged per worker */
} moe_cli_progress;
void moe_cli_progress_init(moe_cli_progress *p, struct moe_http *h);
void moe_cli_progress_cb(void *ctx, const struct moe_cluster *c);
void moe_cli_progress_end(moe_cli_progress *p);

/* "1,2,3" (ids 0..INT32_MAX) into a new array (*out, *n; caller frees);
 * -1 for a malformed list or no memory (args.c). */
int moe_arg_tokens(int32_t **out, size_t *n, const char *s);

/* If argv[*i] is --log-level LEVEL: sets the process's log level, moves *i to
 * the value and returns 1; another option: 0; a missing or unknown level:
 * says so on stderr as "moemesh CMD: ..." and returns -1 (a usage error). */
int moe_cli_log_level_arg(int *i, int argc, char **argv, const char *cmd);

#endif
