/*
 * cluster.c - the cluster handle: create (spawn or name the workers, connect,
 * place, assign) and destroy, the backend and pool accessors, statistics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

/* dst (cap bytes) = src, cut to fit, terminated: the status copies of a
 * link's url and name (gcc's Debug build with the sanitizers took snprintf
 * "%s" from one member of a link into another for an overlap). */
static void copy_cut(char *dst, size_t cap, const char *src)
{
	const size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

moe_err moe_cluster_create(moe_cluster **out, const moe_model *m, const char *model_path,
                           const moe_cluster_opts *o)
{
	moe_err err;
	const int n = o->spawn + o->n_urls;
	if (n <= 0 || n > MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "cluster of %d workers (1..%d)", n,
		                MOE_CLUSTER_MAX_LINKS);
	if ((err = moe_cluster_check_secure(o)) != MOE_OK)
		return err;
	moe_cluster *c = calloc(1, sizeof *c);
	if (c == NULL)
		return moe_fail(MOE_ERR_NOMEM, "cluster");
	c->o = *o;
	c->m = m;
	c->hp = moe_model_hparams(m);
	snprintf(c->model_path, sizeof c->model_path, "%s", model_path);
	moe_clu_lanes_init(c);
	for (int i = 0; i < MOE_CLUSTER_MAX_LINKS; i++)
		c->links[i].dfd = -1;
	if (c->hp->n_expert <= 0) {
		err = moe_fail(MOE_ERR_UNSUPPORTED, "the model has no routed experts");
		goto out_destroy;
	}
	if ((err = moe_model_identity(c->id, moe_model_gguf(m))) != MOE_OK)
		goto out_destroy;
	if (o->secret_file &&
	    (err = moe_secret_read(&c->secret, &c->secret_len, o->secret_file)) != MOE_OK)
		goto out_destroy;
	const size_t nh = (size_t)c->hp->n_layer * (size_t)c->hp->n_expert;
	for (int i = 0; i < n; i++) {
		clink *l = &c->links[i];
		l->held = calloc(nh, 1);
		l->loaded = calloc(nh, 1);
		l->next = calloc(nh, 1);
		l->has = calloc(nh, 1);
		l->rows = calloc(nh, sizeof *l->rows);
		if (l->held == NULL || l->loaded == NULL || l->next == NULL || l->has == NULL ||
		    l->rows == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "placement tables");
			goto out_destroy;
		}
		c->n_links++;
		if (i < o->spawn) {
			if ((err = moe_clu_spawn(c, l, i)) != MOE_OK)
				goto out_destroy;
		} else {
			snprintf(l->url, sizeof l->url, "%s", o->urls[i - o->spawn]);
			if (o->names[i - o->spawn] != NULL)
				snprintf(l->name, sizeof l->name, "%s", o->names[i - o->spawn]);
			l->cap = o->mem_caps[i - o->spawn];
		}
		copy_cut(l->st.url, sizeof l->st.url, l->url);
	}
	for (int i = 0; i < n; i++) {
		clink *l = &c->links[i];
		if (strcmp(l->url, "local") == 0) {
			l->local = true;
			if (l->name[0] == '\0')
				snprintf(l->name, sizeof l->name, "local");
			FILE *fp = fopen("/proc/meminfo", "r");
			unsigned long long kb = 0;
			char line[256];
			while (fp && fgets(line, sizeof line, fp))
				if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
					break;
			if (fp)
				fclose(fp);
			l->mem = (uint64_t)kb * 1024;
		} else if ((err = moe_clu_connect(c, l)) != MOE_OK) {
			goto out_destroy;
		}
		l->alive = true;
		l->st.alive = true;
		l->st.local = l->local;
		copy_cut(l->st.name, sizeof l->st.name, l->name);
	}
	/* workers that hold a whole placement already (another coordinator's,
	 * or this one's before it restarted) keep it: nothing is loaded */
	if ((!moe_clu_adopt(c) && (err = moe_clu_place(c)) != MOE_OK) ||
	    (err = moe_clu_rebalance_init(c)) != MOE_OK)
		goto out_destroy;
	for (int i = 0; i < n; i++)
		if ((err = moe_clu_assign(c, &c->links[i])) != MOE_OK)
			goto out_destroy;
	/* the workers' counts now: the first window's load is every coordinator's */
	(void)moe_clu_union_load(c);
	*out = c;
	return MOE_OK;

out_destroy:
	moe_cluster_destroy(c);
	return err;
}

void moe_cluster_destroy(moe_cluster *c)
{
	if (c == NULL)
		return;
	moe_clu_watch_stop(c);
	(void)moe_clu_stop_spawned(c, false); /* a no-op after moe_cluster_shutdown */
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->ctl_open)
			nng_close(l->ctl);
		if (l->dfd >= 0)
			close(l->dfd);
		moe_rx_free(&l->rx);
		moe_aead_destroy(l->ctl_tx);
		moe_aead_destroy(l->ctl_rx);
		moe_aead_destroy(l->data_tx);
		free(l->held);
		free(l->loaded);
		free(l->next);
		free(l->has);
		free(l->rows);
	}
	moe_clu_free_buffers(c);
	moe_clu_rebalance_free(c);
	free(c->secret);
	free(c);
}

moe_err moe_cluster_shutdown(moe_cluster *c)
{
	if (c == NULL)
		return MOE_OK;
	moe_clu_watch_stop(c); /* before the links it uses go */
	return moe_clu_stop_spawned(c, true);
}

const moe_expert_backend *moe_cluster_backend(moe_cluster *c)
{
	return &c->lanes[0].be;
}

void moe_cluster_set_pool(moe_cluster *c, moe_pool *pool)
{
	c->pool = pool;
}

int moe_cluster_n_links(const moe_cluster *c)
{
	return c->n_links;
}

moe_cluster_link_stats moe_cluster_link(const moe_cluster *c, int i)
{
	return c->links[i].st;
}

moe_cluster_counters moe_cluster_get_counters(const moe_cluster *c)
{
	return c->cnt;
}

void moe_cluster_print_stats(const moe_cluster *c, FILE *f)
{
	for (int i = 0; i < c->n_links; i++) {
		const moe_cluster_link_stats *s = &c->links[i].st;
		fprintf(f,
		        "worker %-8s %-34s %s experts %6llu, loaded %8.1f MB (%.2f s; %.1f MB in, "
		        "%.1f MB out by %llu ASSIGNs), dispatches "
		        "%7llu, mean round trip %7.1f us, worker compute %7.1f us\n",
		        s->name, s->url, s->alive ? "up  " : "DEAD",
		        (unsigned long long)s->experts_held, (double)s->bytes_loaded / 1e6,
		        s->load_seconds, (double)s->assign_loaded / 1e6,
		        (double)s->assign_dropped / 1e6, (unsigned long long)s->assigns,
		        (unsigned long long)s->dispatches,
		        s->dispatches ? (double)s->rtt_ns / 1e3 / (double)s->dispatches : 0.0,
		        s->dispatches ? (double)s->compute_ns / 1e3 / (double)s->dispatches : 0.0);
	}
	const moe_cluster_counters *k = &c->cnt;
	if (k->retries || k->reassigns || k->error_retries || k->lost)
		fprintf(f,
		        "failures: %llu (token, expert) pairs retried, %llu experts re-assigned, "
		        "%llu ERROR replies retried, %llu workers lost\n",
		        (unsigned long long)k->retries, (unsigned long long)k->reassigns,
		        (unsigned long long)k->error_retries, (unsigned long long)k->lost);
}
