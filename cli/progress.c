/* progress.c - the workers' load progress while a cluster starts: one bar on
 * stderr redrawn in place when stderr is a terminal, else a log line per
 * worker every 10 %; and the same numbers for serve's /health. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "server/server.h"

void moe_cli_progress_init(moe_cli_progress *p, struct moe_http *h)
{
	memset(p, 0, sizeof *p);
	p->h = h;
	p->tty = isatty(STDERR_FILENO) && getenv("JOURNAL_STREAM") == NULL;
	for (int i = 0; i < MOE_CLUSTER_MAX_LINKS; i++)
		p->decile[i] = -1;
}

static void draw_bar(moe_cli_progress *p, const moe_cluster *c)
{
	uint64_t done = 0, total = 0;
	int n_done = 0, cur = -1;
	const int n = moe_cluster_n_links(c);
	for (int i = 0; i < n; i++) {
		const moe_cluster_link_stats s = moe_cluster_link(c, i);
		done += s.load_done;
		total += s.load_total;
		n_done += !s.loading && s.load_total > 0 && s.load_done == s.load_total;
		if (s.loading)
			cur = i;
	}
	const double f = total > 0 ? (double)done / (double)total : 0.0;
	char bar[31];
	for (int k = 0; k < 30; k++)
		bar[k] = k < (int)(f * 30 + 0.5) ? '#' : '.';
	bar[30] = '\0';
	char who[96] = "";
	if (cur >= 0)
		snprintf(who, sizeof who, ", now %s", moe_cluster_link(c, cur).name);
	fprintf(stderr, "\rloading experts [%s] %3d%%  %.1f / %.1f MB  %d of %d workers%s\033[K",
	        bar, (int)(f * 100), (double)done / 1e6, (double)total / 1e6, n_done, n, who);
	fflush(stderr);
	p->drawn = true;
}

void moe_cli_progress_cb(void *ctx, const struct moe_cluster *c)
{
	moe_cli_progress *p = ctx;
	const int n = moe_cluster_n_links(c);
	moe_http_load w[MOE_CLUSTER_MAX_LINKS];
	moe_cluster_link_stats st[MOE_CLUSTER_MAX_LINKS];
	for (int i = 0; i < n && i < MOE_CLUSTER_MAX_LINKS; i++) {
		st[i] = moe_cluster_link(c, i);
		w[i] = (moe_http_load){.name = st[i].name,
		                       .loaded_bytes = st[i].load_done,
		                       .total_bytes = st[i].load_total};
		if (st[i].loading && st[i].load_total == 0)
			p->decile[i] = -1; /* a load starts (again, after a repair) */
		if ((p->tty && !p->ended) || st[i].load_total == 0)
			continue;
		/* a line at every 10 % a worker passes */
		const int d = (int)(st[i].load_done * 10 / st[i].load_total);
		if (d > p->decile[i]) {
			p->decile[i] = d;
			moe_log(MOE_LOG_INFO, "loading experts: worker %s %d%% (%.1f of %.1f MB)",
			        st[i].name, d * 10, (double)st[i].load_done / 1e6,
			        (double)st[i].load_total / 1e6);
		}
	}
	if (p->ended)
		return; /* a repair's re-load: log lines only */
	if (p->h != NULL)
		moe_http_set_loading(p->h, w, n);
	if (p->tty)
		draw_bar(p, c);
}

void moe_cli_progress_end(moe_cli_progress *p)
{
	if (p->drawn)
		fputc('\n', stderr);
	p->drawn = false;
	p->ended = true;
	if (p->h != NULL)
		moe_http_set_loading(p->h, NULL, 0);
}
