/*
 * commands.h - the subcommands of the moemesh program.  Each takes the
 * arguments after its name (argv[0] is the subcommand name) and returns the
 * process exit status: 0 on success, 1 on a runtime error (reported on stderr
 * with moe_err_detail()), 2 on a usage error.
 */
#ifndef MOE_COMMANDS_H
#define MOE_COMMANDS_H

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

#endif
