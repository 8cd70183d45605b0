/*
 * config.c - the cluster options: the command-line arguments
 * (moe_cluster_parse_arg), their usage text, and the JSON cluster file
 * (--cluster FILE, deploy/cluster.example.json).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster_impl.h"
#include "core/core.h"

const char *moe_cluster_usage(void)
{
	return "cluster:  --worker URL (repeatable; tcp://HOST:PORT, ipc://PATH or local)\n"
	       "          --workers N (start N local workers on ipc://) --cluster FILE (JSON)\n"
	       "          --placement memory|round-robin  --replicate all|E,E,...\n"
	       "          --secret-file F | --insecure  --worker-threads N  --dispatch-timeout-ms "
	       "N\n"
	       "          --net-delay-us US (spawned workers delay every message)\n"
	       "          --respawn (serve: a spawned worker that dies is started again)\n"
	       "          --rebalance SECONDS (serve: re-place experts by their load, live)\n"
	       "          --overlap | --no-overlap (two micro-batches, one's experts in flight\n"
	       "          while the other computes; default off)\n";
}

bool moe_cluster_wanted(const moe_cluster_opts *o)
{
	return o->n_urls > 0 || o->spawn > 0;
}

/* A worker's tcp:// URL names its host (a name, an IPv4 address or
 * [IPv6]) and a port; ipc:// and the others are checked when linked. */
static moe_err check_url(const char *url)
{
	if (strncmp(url, "tcp://", 6) != 0)
		return MOE_OK;
	char host[256];
	uint16_t port;
	moe_err err = moe_url_tcp_split(host, sizeof host, &port, url);
	if (err != MOE_OK)
		return err;
	if (host[0] == '\0' || port == 0)
		return moe_fail(MOE_ERR_INVAL, "worker '%s': name the worker's host and port", url);
	return MOE_OK;
}

static moe_err add_url(moe_cluster_opts *o, const char *url)
{
	moe_err err = check_url(url);
	if (err != MOE_OK)
		return err;
	if (o->n_urls == MOE_CLUSTER_MAX_LINKS)
		return moe_fail(MOE_ERR_INVAL, "more than %d workers", MOE_CLUSTER_MAX_LINKS);
	o->names[o->n_urls] = NULL;
	o->mem_caps[o->n_urls] = 0;
	o->bw[o->n_urls] = o->rtt_us[o->n_urls] = o->net_bps[o->n_urls] = o->gops[o->n_urls] = 0;
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

/* Every cluster file read, kept as long as the process: options point into
 * their strings. */
static cJSON *g_cluster_files;

static const char *const top_keys[] = {"workers",     "replicate",           "placement",
                                       "secret_file", "dispatch_timeout_ms", "coordinator"};
static const char *const worker_keys[] = {"url", "name", "mem", "bw", "rtt_us", "net", "gops"};
static const char *const coord_keys[] = {"name", "mem", "bw", "gops"};

/* A worker's "mem": a number of bytes, or a string of digits with an
 * optional B, KiB, MiB, GiB or TiB (a space between allowed).  0 on an
 * error. */
static uint64_t parse_mem(const cJSON *v)
{
	if (cJSON_IsNumber(v))
		return v->valuedouble >= 1 && v->valuedouble < 1.8e19 &&
		               v->valuedouble == (double)(uint64_t)v->valuedouble
		           ? (uint64_t)v->valuedouble
		           : 0;
	if (!cJSON_IsString(v))
		return 0;
	const char *p = v->valuestring;
	uint64_t n = 0;
	if (*p < '0' || *p > '9')
		return 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (n > (UINT64_MAX - 9) / 10)
			return 0;
		n = n * 10 + (uint64_t)(*p - '0');
	}
	if (*p == ' ')
		p++;
	static const struct {
		const char *suffix;
		int shift;
	} units[] = {{"", 0}, {"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}};
	for (size_t i = 0; i < sizeof units / sizeof *units; i++)
		if (strcmp(p, units[i].suffix) == 0)
			return n > (UINT64_MAX >> units[i].shift) ? 0 : n << units[i].shift;
	return 0;
}

moe_err moe_parse_rate(double *out, const char *s)
{
	char *end;
	errno = 0;
	const double x = strtod(s, &end);
	if (end == s || errno != 0 || !(x > 0) || x > 1e15 || *s < '0' || *s > '9')
		return moe_fail(MOE_ERR_INVAL, "\"%s\" is not a rate", s);
	if (*end == ' ')
		end++;
	static const struct {
		const char *unit;
		double scale;
	} units[] = {{"", 1},
	             {"B/s", 1},
	             {"KB/s", 1e3},
	             {"MB/s", 1e6},
	             {"GB/s", 1e9},
	             {"KiB/s", 1024.0},
	             {"MiB/s", 1048576.0},
	             {"GiB/s", 1073741824.0},
	             {"Mbit/s", 1e6 / 8},
	             {"Gbit/s", 1e9 / 8}};
	for (size_t i = 0; i < sizeof units / sizeof *units; i++)
		if (strcmp(end, units[i].unit) == 0) {
			*out = x * units[i].scale;
			return MOE_OK;
		}
	return moe_fail(MOE_ERR_INVAL,
	                "\"%s\" is not a rate (a number and B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s, "
	                "GiB/s, Mbit/s or Gbit/s)",
	                s);
}

/* A rate member of the cluster file (what: its place, for the message):
 * a positive number of bytes/s or a string moe_parse_rate reads.  Absent: 0. */
static moe_err read_rate(double *out, const cJSON *v, const char *path, const char *what)
{
	*out = 0;
	if (v == NULL)
		return MOE_OK;
	if (cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble <= 1e15) {
		*out = v->valuedouble;
		return MOE_OK;
	}
	if (cJSON_IsString(v) && moe_parse_rate(out, v->valuestring) == MOE_OK)
		return MOE_OK;
	return moe_fail(MOE_ERR_INVAL,
	                "--cluster %s: %s is not a rate (bytes/s, or a string such as "
	                "\"120GB/s\" or \"10Gbit/s\")",
	                path, what);
}

/* A "gops" member (what: its place): a number in (0, 1e7].  Absent: 0. */
static moe_err read_gops(double *out, const cJSON *v, const char *path, const char *what)
{
	*out = 0;
	if (v == NULL)
		return MOE_OK;
	if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || v->valuedouble > 1e7)
		return moe_fail(MOE_ERR_INVAL,
		                "--cluster %s: %s is not a number of 1e9 operations a second in "
		                "(0, 1e7]",
		                path, what);
	*out = v->valuedouble;
	return MOE_OK;
}

/* Fails with MOE_ERR_INVAL naming the first member of obj whose key is not
 * one of known[0..n) (where: the place in the file, for the message). */
static moe_err check_keys(const cJSON *obj, const char *const *known, size_t n, const char *path,
                          const char *where)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, obj)
	{
		size_t k = 0;
		while (k < n && strcmp(it->string, known[k]) != 0)
			k++;
		if (k < n)
			continue;
		char list[160];
		size_t len = 0;
		for (k = 0; k < n; k++)
			len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
			                        k ? ", " : "", known[k]);
		return moe_fail(MOE_ERR_INVAL, "--cluster %s: unknown key \"%s\" %s (known: %s)",
		                path, it->string, where, list);
	}
	return MOE_OK;
}

/* The workers array: URL strings or {"url": URL, "name": NAME} objects. */
static moe_err read_workers(moe_cluster_opts *o, const cJSON *ws, const char *path)
{
	if (!cJSON_IsArray(ws))
		return moe_fail(MOE_ERR_INVAL, "--cluster %s: \"workers\" must be an array", path);
	const cJSON *w;
	int k = 0;
	cJSON_ArrayForEach(w, ws)
	{
		const cJSON *u = w, *name = NULL;
		if (cJSON_IsObject(w)) {
			char where[32];
			snprintf(where, sizeof where, "in workers[%d]", k);
			moe_err err = check_keys(
			    w, worker_keys, sizeof worker_keys / sizeof *worker_keys, path, where);
			if (err != MOE_OK)
				return err;
			u = cJSON_GetObjectItemCaseSensitive(w, "url");
			name = cJSON_GetObjectItemCaseSensitive(w, "name");
		}
		if (!cJSON_IsString(u))
			return moe_fail(MOE_ERR_INVAL,
			                "--cluster %s: workers[%d] is not a URL string nor "
			                "{\"url\": URL, \"name\": NAME}",
			                path, k);
		if (name != NULL && (!cJSON_IsString(name) || name->valuestring[0] == '\0'))
			return moe_fail(MOE_ERR_INVAL,
			                "--cluster %s: workers[%d].name is not a non-empty string",
			                path, k);
		moe_err uerr = check_url(u->valuestring);
		if (uerr != MOE_OK)
			return uerr;
		const cJSON *mem =
		    cJSON_IsObject(w) ? cJSON_GetObjectItemCaseSensitive(w, "mem") : NULL;
		uint64_t cap = 0;
		if (mem != NULL && (cap = parse_mem(mem)) == 0)
			return moe_fail(
			    MOE_ERR_INVAL,
			    "--cluster %s: workers[%d].mem is not a size (bytes, or a "
			    "string such as \"96GiB\": digits and B, KiB, MiB, GiB or TiB)",
			    path, k);
		if (o->n_urls == MOE_CLUSTER_MAX_LINKS)
			return moe_fail(MOE_ERR_INVAL, "more than %d workers",
			                MOE_CLUSTER_MAX_LINKS);
		char what[48];
		snprintf(what, sizeof what, "workers[%d].bw", k);
		double bw = 0, net = 0, rtt = 0, gops = 0;
		if (cJSON_IsObject(w)) {
			moe_err ferr =
			    read_rate(&bw, cJSON_GetObjectItemCaseSensitive(w, "bw"), path, what);
			snprintf(what, sizeof what, "workers[%d].net", k);
			if (ferr == MOE_OK)
				ferr = read_rate(&net, cJSON_GetObjectItemCaseSensitive(w, "net"),
				                 path, what);
			snprintf(what, sizeof what, "workers[%d].gops", k);
			if (ferr == MOE_OK)
				ferr = read_gops(&gops, cJSON_GetObjectItemCaseSensitive(w, "gops"),
				                 path, what);
			if (ferr != MOE_OK)
				return ferr;
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(w, "rtt_us");
			if (r != NULL &&
			    (!cJSON_IsNumber(r) || !(r->valuedouble > 0) || r->valuedouble > 1e7))
				return moe_fail(MOE_ERR_INVAL,
				                "--cluster %s: workers[%d].rtt_us is not a number "
				                "of microseconds in (0, 1e7]",
				                path, k);
			rtt = r ? r->valuedouble : 0;
		}
		o->names[o->n_urls] = name ? name->valuestring : NULL;
		o->mem_caps[o->n_urls] = cap;
		o->bw[o->n_urls] = bw;
		o->net_bps[o->n_urls] = net;
		o->rtt_us[o->n_urls] = rtt;
		o->gops[o->n_urls] = gops;
		o->urls[o->n_urls++] = u->valuestring;
		k++;
	}
	return MOE_OK;
}

/* The "coordinator" object: its name, "mem" and "bw" (for plan). */
static moe_err read_coordinator(moe_cluster_opts *o, const cJSON *c, const char *path)
{
	if (c == NULL)
		return MOE_OK;
	if (!cJSON_IsObject(c))
		return moe_fail(MOE_ERR_INVAL,
		                "--cluster %s: \"coordinator\" must be an object "
		                "{\"name\": NAME, \"mem\": SIZE, \"bw\": RATE}",
		                path);
	moe_err err = check_keys(c, coord_keys, sizeof coord_keys / sizeof *coord_keys, path,
	                         "in coordinator");
	if (err != MOE_OK)
		return err;
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
	const cJSON *mem = cJSON_GetObjectItemCaseSensitive(c, "mem");
	if (name != NULL && (!cJSON_IsString(name) || name->valuestring[0] == '\0'))
		return moe_fail(MOE_ERR_INVAL,
		                "--cluster %s: coordinator.name is not a non-empty string", path);
	uint64_t m = 0;
	if (mem != NULL && (m = parse_mem(mem)) == 0)
		return moe_fail(MOE_ERR_INVAL,
		                "--cluster %s: coordinator.mem is not a size (bytes, or a "
		                "string such as \"128GiB\": digits and B, KiB, MiB, GiB or TiB)",
		                path);
	double bw = 0, gops = 0;
	if ((err = read_rate(&bw, cJSON_GetObjectItemCaseSensitive(c, "bw"), path,
	                     "coordinator.bw")) != MOE_OK ||
	    (err = read_gops(&gops, cJSON_GetObjectItemCaseSensitive(c, "gops"), path,
	                     "coordinator.gops")) != MOE_OK)
		return err;
	o->coord_name = name ? name->valuestring : NULL;
	o->coord_mem = m;
	o->coord_bw = bw;
	o->coord_gops = gops;
	return MOE_OK;
}

/* Reads the JSON cluster file into o; o is unchanged on an error. */
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
	moe_cluster_opts t = *o;
	moe_err err = MOE_OK;
	const cJSON *v;
	if (j == NULL || !cJSON_IsObject(j)) {
		err = moe_fail(MOE_ERR_INVAL, "--cluster %s: not a JSON object", path);
		goto out_free;
	}
	if ((err = check_keys(j, top_keys, sizeof top_keys / sizeof *top_keys, path,
	                      "at the top level")) != MOE_OK ||
	    (err = read_workers(&t, cJSON_GetObjectItemCaseSensitive(j, "workers"), path)) !=
	        MOE_OK ||
	    (err = read_coordinator(&t, cJSON_GetObjectItemCaseSensitive(j, "coordinator"),
	                            path)) != MOE_OK)
		goto out_free;
	v = cJSON_GetObjectItemCaseSensitive(j, "placement");
	if (v && (!cJSON_IsString(v) || parse_place(&t, v->valuestring) != MOE_OK)) {
		err =
		    moe_fail(MOE_ERR_INVAL,
		             "--cluster %s: \"placement\" is \"memory\" or \"round-robin\"", path);
		goto out_free;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "replicate")) != NULL) {
		if (!cJSON_IsString(v)) {
			err = moe_fail(MOE_ERR_INVAL, "--cluster %s: \"replicate\" is a string",
			               path);
			goto out_free;
		}
		t.replicate = v->valuestring;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "secret_file")) != NULL) {
		if (!cJSON_IsString(v)) {
			err = moe_fail(MOE_ERR_INVAL, "--cluster %s: \"secret_file\" is a string",
			               path);
			goto out_free;
		}
		t.secret_file = v->valuestring;
	}
	if ((v = cJSON_GetObjectItemCaseSensitive(j, "dispatch_timeout_ms")) != NULL) {
		if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 3600000) {
			err = moe_fail(MOE_ERR_INVAL,
			               "--cluster %s: \"dispatch_timeout_ms\" is 1..3600000", path);
			goto out_free;
		}
		t.timeout_ms = (int)v->valuedouble;
	}
	if (g_cluster_files == NULL && (g_cluster_files = cJSON_CreateArray()) == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "--cluster %s", path);
		goto out_free;
	}
	if (!cJSON_AddItemToArray(g_cluster_files, j)) {
		err = moe_fail(MOE_ERR_NOMEM, "--cluster %s", path);
		goto out_free;
	}
	*o = t;
	return MOE_OK;

out_free:
	cJSON_Delete(j);
	return err;
}

moe_err moe_cluster_check_secure(const moe_cluster_opts *o)
{
	if (o->secret_file != NULL || o->insecure)
		return MOE_OK;
	for (int i = 0; i < o->n_urls; i++)
		if (strcmp(o->urls[i], "local") != 0 && !moe_url_is_loopback(o->urls[i]))
			return moe_fail(
			    MOE_ERR_INVAL,
			    "worker %s is not on this machine and no --secret-file (or "
			    "\"secret_file\") is given: anyone who reaches it could pose "
			    "as its coordinator or as it; give --secret-file F (the same "
			    "file on every worker), or --insecure to run unauthenticated "
			    "anyway",
			    o->urls[i]);
	return MOE_OK;
}

moe_err moe_cluster_parse_arg(moe_cluster_opts *o, int *i, int argc, char **argv)
{
	const char *a = argv[*i];
	if (strcmp(a, "--respawn") == 0) {
		o->respawn = true;
		return MOE_OK;
	}
	if (strcmp(a, "--insecure") == 0) {
		o->insecure = true;
		return MOE_OK;
	}
	if (strcmp(a, "--overlap") == 0 || strcmp(a, "--no-overlap") == 0) {
		o->overlap = a[2] == 'o';
		return MOE_OK;
	}
	static const char *const names[] = {
	    "--worker",       "--workers",     "--cluster",        "--placement",
	    "--replicate",    "--secret-file", "--worker-threads", "--dispatch-timeout-ms",
	    "--net-delay-us", "--rebalance"};
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
	case 9: {
		float sec = 0;
		if (moe_parse_float(&sec, v) != 0 || !(sec > 0) || sec > 86400)
			return moe_fail(MOE_ERR_INVAL, "--rebalance %s: seconds, > 0", v);
		o->rebalance_s = sec;
		return MOE_OK;
	}
	default:
		return moe_parse_int(&o->net_delay_us, v, 0, 10000000)
		           ? moe_fail(MOE_ERR_INVAL, "--net-delay-us %s", v)
		           : MOE_OK;
	}
}
