/* signals.c - SIGTERM and SIGINT turned into a byte on a pipe, for the
 * commands that run until they are stopped (serve, worker): the handler only
 * writes (async-signal-safe), and the command waits on or polls the pipe's
 * read end, whatever thread the signal lands on. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "cli/cli.h"

static int stop_pipe[2] = {-1, -1};
static struct sigaction old_term, old_int;

static void on_signal(int sig)
{
	const unsigned char b = (unsigned char)sig;
	const int saved = errno;
	if (write(stop_pipe[1], &b, 1) < 0) {
		/* a byte is already waiting */
	}
	errno = saved;
}

int moe_cli_stop_signals_begin(bool nonblock)
{
	if (pipe2(stop_pipe, O_CLOEXEC | (nonblock ? O_NONBLOCK : 0)) != 0)
		return -1;
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, &old_term);
	sigaction(SIGINT, &sa, &old_int);
	return stop_pipe[0];
}

void moe_cli_stop_signals_end(void)
{
	if (stop_pipe[0] < 0)
		return;
	sigaction(SIGTERM, &old_term, NULL);
	sigaction(SIGINT, &old_int, NULL);
	close(stop_pipe[0]);
	close(stop_pipe[1]);
	stop_pipe[0] = stop_pipe[1] = -1;
}
