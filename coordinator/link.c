/*
 * link.c - worker links (spawn, connect, handshake, assign, shutdown), the
 * placement of experts on them, its repair after a failure, and options.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

/* ---- options ------------------------------------------------------------------- */

const char *moe_cluster_usage(void)
{
	return "cluster:  --worker URL (repeatable; tcp://HOST:PORT, ipc://PATH or local)\n"
	       "          --workers N (start N local workers on ipc://) --cluster FILE (JSON)\n"
	       "          --placement memory|round-robin  --replicate all|E,E,...\n"
	       "          --secret-file F  --worker-threads N  --dispatch-timeout-ms N\n"
	       "          --net-delay-us US (spawned workers delay every message)\n";
}

bool moe_cluster_wanted(const moe_cluster_opts *o)
{
	return o->n_urls > 0 || o->spawn > 0;
}

static moe_err add_url(moe_cluster_opts *o, const char *url)
{
	if (o->n_urls == MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "more than %d workers", MOE_CLUSTER_MAX_LINKS);
	o->urls[o->n_urls++] = url;
	return MOE_OK;
}

static moe_err parse_place(moe_cluster_opts *o, const char *v)
{
	if (strcmp(v, "memory") == 0)
		o->place = MOE_PLACE_MEMORY;
	else if (strcmp(v, "round-robin") == 0)
		o->place = MOE_PLACE_ROUND_ROBIN;
	else
		return moe_fail(MOE_ERR_INVAL, "--placement %s: want memory or round-robin", v);
	return MOE_OK;
}

/* The strings of a cluster file live as long as the process (options point
 * into them); one file per process is all a command reads. */
static cJSON *g_cluster_json;

static moe_err read_cluster_file(moe_cluster_opts *o, const char *path)
{
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return moe_fail(MOE_ERR_INVAL, "--cluster %s: %s", path, strerror(errno));
	char *buf = malloc(1 << 20);
	size_t n = buf ? fread(buf, 1, (1 << 20) - 1, fp) : 0;
	fclose(fp);
	if (buf == NULL)
		return moe_fail(MOE_ERR_NOMEM, "--cluster %s", path);
	buf[n] = '\0';
	cJSON *j = cJSON_Parse(buf);
	free(buf);
	moe_err err = MOE_OK;
	if (j == NULL || !cJSON_IsObject(j)) {
		err = moe_fail(MOE_ERR_INVAL, "--cluster %s: not a JSON object", path);
		goto out_free;
	}
	const cJSON *ws = cJSON_GetObjectItemCaseSensitive(j, "workers");
	if (!cJSON_IsArray(ws)) {
		err = moe_fail(MOE_ERR_INVAL, "--cluster %s: \"workers\" must be an array", path);
		goto out_free;
	}
	const cJSON *w;
	cJSON_ArrayForEach(w, ws)
	{
		const cJSON *u = cJSON_IsObject(w) ? cJSON_GetObjectItemCaseSensitive(w, "url") : w;
		if (!cJSON_IsString(u)) {
			err = moe_fail(
			    MOE_ERR_INVAL,
			    "--cluster %s: each worker is a URL string or {\"url\": ...}", path);
			goto out_free;
		}
		if ((err = add_url(o, u->valuestring)) != MOE_OK)
			goto out_free;
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "placement");
	if (v && (!cJSON_IsString(v) || parse_place(o, v->valuestring) != MOE_OK)) {
		err = moe_fail(MOE_ERR_INVAL, "--cluster %s: bad \"placement\"", path);
		goto out_free;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "replicate")) != NULL) {
		if (!cJSON_IsString(v)) {
			err = moe_fail(MOE_ERR_INVAL, "--cluster %s: \"replicate\" is a string",
			               path);
			goto out_free;
		}
		o->replicate = v->valuestring;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "secret_file")) != NULL) {
		if (!cJSON_IsString(v)) {
			err = moe_fail(MOE_ERR_INVAL, "--cluster %s: \"secret_file\" is a string",
			               path);
			goto out_free;
		}
		o->secret_file = v->valuestring;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "dispatch_timeout_ms")) != NULL) {
		if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 3600000) {
			err = moe_fail(MOE_ERR_INVAL, "--cluster %s: bad \"dispatch_timeout_ms\"",
			               path);
			goto out_free;
		}
		o->timeout_ms = (int)v->valuedouble;
	}
	cJSON_Delete(g_cluster_json);
	g_cluster_json = j;
	return MOE_OK;

out_free:
	cJSON_Delete(j);
	return err;
}

moe_err moe_cluster_parse_arg(moe_cluster_opts *o, int *i, int argc, char **argv)
{
	const char *a = argv[*i];
	static const char *const names[] = {
	    "--worker",      "--workers",     "--cluster",        "--placement",
	    "--replicate",   "--secret-file", "--worker-threads", "--dispatch-timeout-ms",
	    "--net-delay-us"};
	int k = 0;
	while (k < (int)(sizeof names / sizeof *names) && strcmp(a, names[k]) != 0)
		k++;
	if (k == (int)(sizeof names / sizeof *names))
		return MOE_ERR_NOT_FOUND;
	if (*i + 1 >= argc)
		return moe_fail(MOE_ERR_INVAL, "%s needs a value", a);
	const char *v = argv[++*i];
	switch (k) {
	case 0:
		return add_url(o, v);
	case 1:
		return moe_parse_int(&o->spawn, v, 0, 32)
		           ? moe_fail(MOE_ERR_INVAL, "--workers %s", v)
		           : MOE_OK;
	case 2:
		return read_cluster_file(o, v);
	case 3:
		return parse_place(o, v);
	case 4:
		o->replicate = v;
		return MOE_OK;
	case 5:
		o->secret_file = v;
		return MOE_OK;
	case 6:
		return moe_parse_int(&o->worker_threads, v, 1, 1024)
		           ? moe_fail(MOE_ERR_INVAL, "--worker-threads %s", v)
		           : MOE_OK;
	case 7:
		return moe_parse_int(&o->timeout_ms, v, 1, 3600000)
		           ? moe_fail(MOE_ERR_INVAL, "--dispatch-timeout-ms %s", v)
		           : MOE_OK;
	default:
		return moe_parse_int(&o->net_delay_us, v, 0, 10000000)
		           ? moe_fail(MOE_ERR_INVAL, "--net-delay-us %s", v)
		           : MOE_OK;
	}
}

/* ---- links ------------------------------------------------------------------------ */

static void pipe_added(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	(void)ev;
	atomic_fetch_add(&((clink *)arg)->pipes, 1);
}

static void pipe_removed(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	(void)ev;
	atomic_fetch_sub(&((clink *)arg)->pipes, 1);
}

void moe_clu_mark_dead(moe_cluster *c, clink *l, const char *why)
{
	if (!l->alive)
		return;
	l->alive = false;
	l->st.alive = false;
	l->pending = false;
	if (l->dfd >= 0) {
		close(l->dfd);
		l->dfd = -1;
	}
	moe_rx_free(&l->rx);
	fprintf(stderr, "moemesh: worker %s (%s) lost: %s\n", l->name, l->url, why);
	(void)c;
}

/* Receives the next control frame of kind `want` from l within timeout_ms of
 * silence (LOAD_PROGRESS frames reset it when want is LOAD_PROGRESS).  An
 * ERROR frame becomes the error it carries, with the worker's message. */
static moe_err ctl_expect(nng_msg **msg, moe_frame *f, clink *l, moe_msg_kind want, int timeout_ms)
{
	const bool had_pipe = atomic_load(&l->pipes) > 0;
	int waited = 0;
	for (;;) {
		moe_err err = moe_nng_recv(msg, f, l->ctl, 100);
		if (err == MOE_ERR_TIMEOUT) {
			waited += 100;
			if (had_pipe && atomic_load(&l->pipes) == 0)
				return moe_fail(
				    MOE_ERR_CLOSED,
				    "worker %s (%s) closed the connection while we waited "
				    "for %s (did it die?)",
				    l->name, l->url, moe_msg_kind_name(want));
			if (waited >= timeout_ms)
				return moe_fail(MOE_ERR_TIMEOUT,
				                "worker %s (%s): no %s within %d ms", l->name,
				                l->url, moe_msg_kind_name(want), timeout_ms);
			continue;
		}
		if (err != MOE_OK)
			return moe_fail(err, "worker %s (%s): %s", l->name, l->url,
			                moe_err_detail());
		if (f->kind == want)
			return MOE_OK;
		if (f->kind == MOE_MSG_ERROR) {
			Moemesh__Error *e = moemesh__error__unpack(NULL, f->header_len, f->header);
			moe_err code = e && e->code > 0 && e->code < MOE_ERR__COUNT
			                   ? (moe_err)e->code
			                   : MOE_ERR_PROTO;
			err = moe_fail(code, "worker %s (%s) refused: %s", l->name, l->url,
			               e && e->message ? e->message : "(undecodable ERROR)");
			moemesh__error__free_unpacked(e, NULL);
			nng_msg_free(*msg);
			return err;
		}
		if (f->kind == MOE_MSG_LOAD_PROGRESS || f->kind == MOE_MSG_HEARTBEAT) {
			waited = 0; /* alive; not what we wait for */
			nng_msg_free(*msg);
			continue;
		}
		err = moe_fail(MOE_ERR_PROTO, "worker %s (%s) sent %s, expected %s", l->name,
		               l->url, moe_msg_kind_name(f->kind), moe_msg_kind_name(want));
		nng_msg_free(*msg);
		return err;
	}
}

/* nng dial, HELLO / HELLO_REPLY / AUTH / AUTH_OK, data socket. */
static moe_err link_connect(moe_cluster *c, clink *l)
{
	uint8_t chal[32], resp[32];
	nng_msg *msg;
	moe_frame f;
	moe_err err;
	int rv;

	if ((rv = nng_pair1_open(&l->ctl)) != 0)
		return moe_nng_fail(rv, "opening a control socket");
	l->ctl_open = true;
	if ((rv = nng_pipe_notify(l->ctl, NNG_PIPE_EV_ADD_POST, pipe_added, l)) != 0 ||
	    (rv = nng_pipe_notify(l->ctl, NNG_PIPE_EV_REM_POST, pipe_removed, l)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_SENDTIMEO, 5000)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_RECONNMINT, 50)) != 0 ||
	    (rv = nng_socket_set_ms(l->ctl, NNG_OPT_RECONNMAXT, 500)) != 0 ||
	    (rv = nng_dial(l->ctl, l->url, NULL, NNG_FLAG_NONBLOCK)) != 0)
		return moe_nng_fail(rv, l->url);
	for (int waited = 0; atomic_load(&l->pipes) == 0; waited += 10) {
		if (waited >= 10000)
			return moe_fail(MOE_ERR_TIMEOUT, "worker %s: no connection within 10 s",
			                l->url);
		struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
	if ((err = moe_random_bytes(chal, sizeof chal)) != MOE_OK)
		return err;
	Moemesh__Hello h = MOEMESH__HELLO__INIT;
	h.protocol_version = MOE_PROTO_VERSION;
	h.model_id = (ProtobufCBinaryData){MOE_ID_BYTES, c->id};
	h.name = "coordinator";
	h.challenge = (ProtobufCBinaryData){32, chal};
	if ((err = moe_nng_send(l->ctl, MOE_MSG_HELLO, &h.base)) != MOE_OK ||
	    (err = ctl_expect(&msg, &f, l, MOE_MSG_HELLO_REPLY, 10000)) != MOE_OK)
		return err;
	Moemesh__HelloReply *r = moemesh__hello_reply__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	if (r == NULL)
		return moe_fail(MOE_ERR_PROTO, "worker %s: HELLO_REPLY does not decode", l->url);
	if (r->protocol_version != MOE_PROTO_VERSION || r->model_id.len != MOE_ID_BYTES ||
	    !moe_bytes_equal_ct(r->model_id.data, c->id, MOE_ID_BYTES)) {
		err = moe_fail(MOE_ERR_MISMATCH,
		               "worker %s: protocol %u or model identity differs from ours", l->url,
		               r->protocol_version);
		goto out_free_reply;
	}
	snprintf(l->name, sizeof l->name, "%s", r->name && r->name[0] ? r->name : l->url);
	l->mem = r->mem_bytes;
	Moemesh__AuthResponse a = MOEMESH__AUTH_RESPONSE__INIT;
	if (c->secret) {
		if (moe_hmac_sha256(resp, c->secret, c->secret_len, chal, 32) != MOE_OK ||
		    r->response.len != 32 || !moe_bytes_equal_ct(r->response.data, resp, 32)) {
			err = moe_fail(MOE_ERR_AUTH,
			               "worker %s does not know the cluster secret (--secret-file)",
			               l->url);
			goto out_free_reply;
		}
		if (r->challenge.len != 32) {
			err = moe_fail(MOE_ERR_PROTO, "worker %s: challenge of %zu bytes", l->url,
			               r->challenge.len);
			goto out_free_reply;
		}
		if ((err = moe_hmac_sha256(resp, c->secret, c->secret_len, r->challenge.data,
		                           32)) != MOE_OK)
			goto out_free_reply;
		a.response = (ProtobufCBinaryData){32, resp};
	}
	moemesh__hello_reply__free_unpacked(r, NULL);
	if ((err = moe_nng_send(l->ctl, MOE_MSG_AUTH, &a.base)) != MOE_OK ||
	    (err = ctl_expect(&msg, &f, l, MOE_MSG_AUTH_OK, 10000)) != MOE_OK)
		return err;
	Moemesh__AuthOk *ok = moemesh__auth_ok__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	if (ok == NULL || ok->data_token.len != 32)
		return moe_fail(MOE_ERR_PROTO, "worker %s: bad AUTH_OK", l->url);
	if (strncmp(l->url, "ipc://", 6) == 0) {
		char want[300];
		snprintf(want, sizeof want, "%s.data", l->url + 6);
		if (ok->data_path == NULL || strcmp(ok->data_path, want) != 0) {
			err = moe_fail(MOE_ERR_PROTO, "worker %s announces data path '%s', not %s",
			               l->url, ok->data_path ? ok->data_path : "", want);
			goto out_free_ok;
		}
		err = moe_sock_connect_unix(&l->dfd, want);
	} else {
		char host[64];
		const char *h0 = l->url + 6, *colon = strrchr(h0, ':');
		size_t hl = colon ? (size_t)(colon - h0) : 0;
		if (strncmp(l->url, "tcp://", 6) != 0 || colon == NULL || hl == 0 ||
		    hl >= sizeof host || ok->data_port == 0 || ok->data_port > 65535) {
			err = moe_fail(MOE_ERR_INVAL,
			               "worker %s: want tcp://IPV4:PORT (data port %u)", l->url,
			               ok->data_port);
			goto out_free_ok;
		}
		memcpy(host, h0, hl);
		host[hl] = '\0';
		if (strcmp(host, "localhost") == 0)
			strcpy(host, "127.0.0.1");
		err = moe_sock_connect_tcp(&l->dfd, host, (uint16_t)ok->data_port, 10000);
	}
	if (err != MOE_OK)
		goto out_free_ok;
	Moemesh__AuthResponse da = MOEMESH__AUTH_RESPONSE__INIT;
	da.response = ok->data_token;
	err = moe_stream_send(l->dfd, MOE_MSG_AUTH, &da.base, NULL, 0);
out_free_ok:
	moemesh__auth_ok__free_unpacked(ok, NULL);
	return err;

out_free_reply:
	moemesh__hello_reply__free_unpacked(r, NULL);
	return err;
}

/* Sends l's held set as an ASSIGN (runs of experts as ranges) and waits until
 * it is loaded. */
moe_err moe_clu_assign(moe_cluster *c, clink *l)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	uint64_t held = 0;
	for (size_t i = 0; i < (size_t)nl * (size_t)ne; i++)
		held += l->held[i] != 0;
	l->st.experts_held = held;
	if (l->local) {
		l->st.bytes_loaded = 0; /* mapped, not loaded */
		return MOE_OK;
	}
	Moemesh__Assign a = MOEMESH__ASSIGN__INIT;
	Moemesh__LayerExperts *les = calloc((size_t)nl, sizeof *les);
	Moemesh__LayerExperts **lp = calloc((size_t)nl, sizeof *lp);
	Moemesh__ExpertRange *rs = calloc((size_t)nl * (size_t)ne, sizeof *rs);
	Moemesh__ExpertRange **rp = calloc((size_t)nl * (size_t)ne, sizeof *rp);
	moe_err err = MOE_OK;
	nng_msg *msg;
	moe_frame f;
	if (les == NULL || lp == NULL || rs == NULL || rp == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "ASSIGN of %d layers", nl);
		goto out_free;
	}
	size_t nr = 0;
	for (int il = 0; il < nl; il++) {
		moemesh__layer_experts__init(&les[a.n_layers]);
		Moemesh__LayerExperts *le = &les[a.n_layers];
		le->layer = (uint32_t)il;
		le->ranges = rp + nr;
		const uint8_t *h = l->held + (size_t)il * (size_t)ne;
		for (int e = 0; e < ne;) {
			if (!h[e]) {
				e++;
				continue;
			}
			int e1 = e;
			while (e1 < ne && h[e1])
				e1++;
			moemesh__expert_range__init(&rs[nr]);
			rs[nr].first = (uint32_t)e;
			rs[nr].count = (uint32_t)(e1 - e);
			rp[nr] = &rs[nr];
			nr++;
			le->n_ranges++;
			e = e1;
		}
		if (le->n_ranges > 0)
			lp[a.n_layers++] = le;
	}
	a.layers = lp;
	if ((err = moe_nng_send(l->ctl, MOE_MSG_ASSIGN, &a.base)) != MOE_OK)
		goto out_free;
	const int tmo = c->o.load_timeout_ms > 0 ? c->o.load_timeout_ms : 120000;
	for (;;) {
		if ((err = ctl_expect(&msg, &f, l, MOE_MSG_LOAD_PROGRESS, tmo)) != MOE_OK)
			goto out_free;
		Moemesh__LoadProgress *p =
		    moemesh__load_progress__unpack(NULL, f.header_len, f.header);
		nng_msg_free(msg);
		if (p == NULL) {
			err = moe_fail(MOE_ERR_PROTO, "worker %s: LOAD_PROGRESS does not decode",
			               l->url);
			goto out_free;
		}
		const bool done = p->done;
		if (done)
			l->st.load_seconds = p->seconds;
		if (c->o.verbose && !done)
			fprintf(stderr, "\rworker %s: loaded %.0f / %.0f MB", l->name,
			        (double)p->bytes_done / 1e6, (double)p->bytes_total / 1e6);
		moemesh__load_progress__free_unpacked(p, NULL);
		if (done)
			break;
	}
	/* what the worker holds, as it counts it */
	Moemesh__Stats *s = NULL;
	if ((err = moe_nng_send(l->ctl, MOE_MSG_STATS_REQUEST, NULL)) != MOE_OK ||
	    (err = ctl_expect(&msg, &f, l, MOE_MSG_STATS, 10000)) != MOE_OK)
		goto out_free;
	s = moemesh__stats__unpack(NULL, f.header_len, f.header);
	nng_msg_free(msg);
	if (s != NULL) {
		l->st.bytes_loaded = s->bytes_loaded;
		if (s->experts_held != held)
			err = moe_fail(MOE_ERR_PROTO, "worker %s holds %llu experts, assigned %llu",
			               l->url, (unsigned long long)s->experts_held,
			               (unsigned long long)held);
		moemesh__stats__free_unpacked(s, NULL);
	}
	if (c->o.verbose && err == MOE_OK)
		fprintf(stderr, "\rworker %s: %llu experts, %.1f MB loaded in %.2f s\n", l->name,
		        (unsigned long long)held, (double)l->st.bytes_loaded / 1e6,
		        l->st.load_seconds);
out_free:
	free(les);
	free(lp);
	free(rs);
	free(rp);
	return err;
}

/* ---- placement ---------------------------------------------------------------------- */

static moe_err place(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert, n = c->n_links;
	double total = 0, acc = 0;
	int bound[MOE_CLUSTER_MAX_LINKS + 1];
	for (int i = 0; i < n; i++)
		total += (double)(c->links[i].mem ? c->links[i].mem : 1);
	bound[0] = 0;
	for (int i = 0; i < n; i++) {
		acc += (double)(c->links[i].mem ? c->links[i].mem : 1);
		bound[i + 1] = i + 1 == n ? ne : (int)((double)ne * acc / total + 0.5);
	}
	for (int i = 0; i < n; i++)
		memset(c->links[i].held, 0, (size_t)nl * (size_t)ne);
	for (int il = 0; il < nl; il++) {
		for (int e = 0; e < ne; e++) {
			int owner = 0;
			if (c->o.place == MOE_PLACE_ROUND_ROBIN)
				owner = e % n;
			else
				while (owner + 1 < n && e >= bound[owner + 1])
					owner++;
			c->links[owner].held[(size_t)il * (size_t)ne + (size_t)e] = 1;
			if (c->o.replicate && strcmp(c->o.replicate, "all") == 0 && n > 1)
				c->links[(owner + 1) % n]
				    .held[(size_t)il * (size_t)ne + (size_t)e] = 1;
		}
	}
	if (c->o.replicate && strcmp(c->o.replicate, "all") != 0) {
		const char *p = c->o.replicate;
		while (*p) {
			char *end;
			errno = 0;
			long e = strtol(p, &end, 10);
			if (end == p || errno != 0 || e < 0 || e >= ne || (*end && *end != ','))
				return moe_fail(MOE_ERR_INVAL,
				                "--replicate %s: want all or expert ids < %d",
				                c->o.replicate, ne);
			for (int i = 0; i < n; i++)
				for (int il = 0; il < nl; il++)
					c->links[i].held[(size_t)il * (size_t)ne + (size_t)e] = 1;
			p = end + (*end == ',');
		}
	}
	return MOE_OK;
}

moe_err moe_clu_repair(moe_cluster *c)
{
	const int nl = c->hp->n_layer, ne = c->hp->n_expert;
	bool changed[MOE_CLUSTER_MAX_LINKS] = {0};
	int alive[MOE_CLUSTER_MAX_LINKS], na = 0;
	for (int i = 0; i < c->n_links; i++)
		if (c->links[i].alive)
			alive[na++] = i;
	for (int il = 0; il < nl; il++) {
		for (int e = 0; e < ne; e++) {
			const size_t k = (size_t)il * (size_t)ne + (size_t)e;
			bool held = false;
			for (int j = 0; j < na && !held; j++)
				held = c->links[alive[j]].held[k] != 0;
			if (held)
				continue;
			if (na == 0)
				return moe_fail(MOE_ERR_CLOSED,
				                "no worker left to hold layer %d expert %d", il, e);
			/* the survivor holding the fewest experts of this layer */
			int best = -1, best_n = 0;
			for (int j = 0; j < na; j++) {
				int cnt = 0;
				for (int x = 0; x < ne; x++)
					cnt += c->links[alive[j]]
					           .held[(size_t)il * (size_t)ne + (size_t)x];
				if (best < 0 || cnt < best_n) {
					best = alive[j];
					best_n = cnt;
				}
			}
			c->links[best].held[k] = 1;
			changed[best] = true;
			c->cnt.reassigns++;
		}
	}
	for (int i = 0; i < c->n_links; i++) {
		if (!changed[i])
			continue;
		clink *l = &c->links[i];
		fprintf(stderr, "moemesh: re-assigning experts: worker %s now holds more\n",
		        l->name);
		moe_err err = moe_clu_assign(c, l);
		if (err != MOE_OK) {
			moe_clu_mark_dead(c, l, moe_err_detail());
			return moe_clu_repair(c); /* fewer survivors: try again */
		}
	}
	return MOE_OK;
}

/* ---- spawn ---------------------------------------------------------------------------- */

static moe_err spawn_worker(moe_cluster *c, clink *l, int k)
{
	int fds[2];
	char rfd[16], thr[16], name[32], delay[16];
	const char *exe = c->o.exe ? c->o.exe : "/proc/self/exe";
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int threads = c->o.worker_threads
	                  ? c->o.worker_threads
	                  : (int)(ncpu / (c->o.spawn + 1) > 0 ? ncpu / (c->o.spawn + 1) : 1);
	snprintf(l->url, sizeof l->url, "ipc:///tmp/moemesh-%d-%d.sock", (int)getpid(), k);
	snprintf(name, sizeof name, "w%d", k);
	snprintf(thr, sizeof thr, "%d", threads);
	snprintf(delay, sizeof delay, "%d", c->o.net_delay_us);
	if (pipe(fds) != 0)
		return moe_fail(MOE_ERR_SYS, "pipe: %s", strerror(errno));
	snprintf(rfd, sizeof rfd, "%d", fds[1]);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return moe_fail(MOE_ERR_SYS, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		close(fds[0]);
		const char *argv[24];
		int n = 0;
		argv[n++] = "moemesh";
		argv[n++] = "worker";
		argv[n++] = "-m";
		argv[n++] = c->model_path;
		argv[n++] = "--listen";
		argv[n++] = l->url;
		argv[n++] = "--threads";
		argv[n++] = thr;
		argv[n++] = "--name";
		argv[n++] = name;
		argv[n++] = "--ready-fd";
		argv[n++] = rfd;
		argv[n++] = "--net-delay-us";
		argv[n++] = delay;
		argv[n++] = "--quiet";
		if (c->o.secret_file) {
			argv[n++] = "--secret-file";
			argv[n++] = c->o.secret_file;
		}
		argv[n] = NULL;
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	l->pid = pid;
	struct pollfd p = {.fd = fds[0], .events = POLLIN};
	char b = 0;
	int rv = poll(&p, 1, 30000);
	ssize_t r = rv > 0 ? read(fds[0], &b, 1) : -1;
	close(fds[0]);
	if (r != 1) {
		int status = 0;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			l->pid = 0;
			return moe_fail(MOE_ERR_CLOSED,
			                "worker %d (%s %s) exited with status %d "
			                "before listening",
			                k, exe, l->url,
			                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		}
		return moe_fail(MOE_ERR_TIMEOUT, "worker %d (%s) did not start listening in 30 s",
		                k, l->url);
	}
	return MOE_OK;
}

/* ---- create / destroy -------------------------------------------------------------- */

moe_err moe_cluster_create(moe_cluster **out, const moe_model *m, const char *model_path,
                           const moe_cluster_opts *o)
{
	moe_err err;
	const int n = o->spawn + o->n_urls;
	if (n <= 0 || n > MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "cluster of %d workers (1..%d)", n,
		                MOE_CLUSTER_MAX_LINKS);
	moe_cluster *c = calloc(1, sizeof *c);
	if (c == NULL)
		return moe_fail(MOE_ERR_NOMEM, "cluster");
	c->o = *o;
	c->m = m;
	c->hp = moe_model_hparams(m);
	snprintf(c->model_path, sizeof c->model_path, "%s", model_path);
	c->be = (moe_expert_backend){
	    .ctx = c, .start = moe_clu_backend_start, .finish = moe_clu_backend_finish};
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
		if (l->held == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "placement tables");
			goto out_destroy;
		}
		c->n_links++;
		if (i < o->spawn) {
			if ((err = spawn_worker(c, l, i)) != MOE_OK)
				goto out_destroy;
		} else {
			snprintf(l->url, sizeof l->url, "%s", o->urls[i - o->spawn]);
		}
		snprintf(l->st.url, sizeof l->st.url, "%s", l->url);
	}
	for (int i = 0; i < n; i++) {
		clink *l = &c->links[i];
		if (strcmp(l->url, "local") == 0) {
			l->local = true;
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
		} else if ((err = link_connect(c, l)) != MOE_OK) {
			goto out_destroy;
		}
		l->alive = true;
		l->st.alive = true;
		l->st.local = l->local;
		snprintf(l->st.name, sizeof l->st.name, "%s", l->name);
	}
	if ((err = place(c)) != MOE_OK)
		goto out_destroy;
	for (int i = 0; i < n; i++)
		if ((err = moe_clu_assign(c, &c->links[i])) != MOE_OK)
			goto out_destroy;
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
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->ctl_open && l->alive && l->pid > 0)
			(void)moe_nng_send(l->ctl, MOE_MSG_SHUTDOWN, NULL);
	}
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (l->pid > 0) {
			int status;
			pid_t r = 0;
			for (int t = 0; t < 300 && (r = waitpid(l->pid, &status, WNOHANG)) == 0;
			     t++) {
				struct timespec ts = {0, 10 * 1000000};
				nanosleep(&ts, NULL);
			}
			if (r == 0) {
				kill(l->pid, SIGKILL);
				waitpid(l->pid, &status, 0);
			}
			/* files a killed worker could not remove */
			char path[300];
			snprintf(path, sizeof path, "%s.data", l->url + 6);
			unlink(path);
			unlink(l->url + 6);
		}
		if (l->ctl_open)
			nng_close(l->ctl);
		if (l->dfd >= 0)
			close(l->dfd);
		moe_rx_free(&l->rx);
		free(l->held);
		free(l->tok);
		free(l->ids);
		free(l->wts);
		free(l->iov);
	}
	moe_clu_free_buffers(c);
	free(c->secret);
	free(c);
}

const moe_expert_backend *moe_cluster_backend(moe_cluster *c)
{
	return &c->be;
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

moe_err moe_cluster_heartbeat(moe_cluster *c)
{
	static uint64_t seq;
	for (int i = 0; i < c->n_links; i++) {
		clink *l = &c->links[i];
		if (!l->alive || l->local)
			continue;
		Moemesh__Heartbeat h = MOEMESH__HEARTBEAT__INIT;
		h.seq = ++seq;
		h.time_ns = moe_now_ns();
		nng_msg *msg;
		moe_frame f;
		moe_err err = moe_nng_send(l->ctl, MOE_MSG_HEARTBEAT, &h.base);
		if (err == MOE_OK)
			err = ctl_expect(&msg, &f, l, MOE_MSG_HEARTBEAT,
			                 c->o.timeout_ms > 0 ? c->o.timeout_ms : 10000);
		if (err == MOE_OK)
			nng_msg_free(msg);
		else
			moe_clu_mark_dead(c, l, moe_err_detail());
	}
	return moe_clu_repair(c);
}

void moe_cluster_print_stats(const moe_cluster *c, FILE *f)
{
	for (int i = 0; i < c->n_links; i++) {
		const moe_cluster_link_stats *s = &c->links[i].st;
		fprintf(f,
		        "worker %-8s %-34s %s experts %6llu, loaded %8.1f MB (%.2f s), dispatches "
		        "%7llu, mean round trip %7.1f us, worker compute %7.1f us\n",
		        s->name, s->url, s->alive ? "up  " : "DEAD",
		        (unsigned long long)s->experts_held, (double)s->bytes_loaded / 1e6,
		        s->load_seconds, (unsigned long long)s->dispatches,
		        s->dispatches ? (double)s->rtt_ns / 1e3 / (double)s->dispatches : 0.0,
		        s->dispatches ? (double)s->compute_ns / 1e3 / (double)s->dispatches : 0.0);
	}
	const moe_cluster_counters *k = &c->cnt;
	if (k->retries || k->reassigns)
		fprintf(f,
		        "failures: %llu (token, expert) pairs retried, %llu experts re-assigned\n",
		        (unsigned long long)k->retries, (unsigned long long)k->reassigns);
}
