/* cmd_status.c - `moemesh status`: each worker of a cluster (the cluster
 * options of run) asked for its state on its status socket, without taking
 * it over; a table or JSON on stdout, exit status 1 when any is unreachable,
 * fails authentication or has another model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "proto/proto.h"

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh status (--cluster FILE | --worker URL ...) [--secret-file F]\n"
	        "                      [-m MODEL.gguf] [--json] [--pings N] [--timeout-ms MS]\n\n"
	        "Asks every worker for its state on its status socket (UDP at the port of\n"
	        "its tcp:// URL, or PATH.status for ipc://PATH), also while it serves a\n"
	        "coordinator, and prints per worker: name, URL, state (up, unreachable,\n"
	        "auth-failed, model-mismatch, error), model identity, kernel ISA level,\n"
	        "memory (total / offered for experts / held by experts), experts held\n"
	        "(and in how many layers), load (dispatches served, share of its time\n"
	        "computing, whether a coordinator is connected, load progress), round\n"
	        "trip (fastest of --pings requests, default 3, each waiting up to\n"
	        "--timeout-ms, default 1000) and its clock's offset from ours.  The\n"
	        "model identity is held to MODEL's with -m, else to the first worker's.\n"
	        "--json prints one JSON object.  Warnings (stderr) for differing ISA\n"
	        "levels and clocks more than 1 s apart.  Exit status 1 when any worker\n"
	        "is not up, 2 on a usage error.\n");
}

static void hex8(char out[9], const uint8_t *id)
{
	snprintf(out, 9, "%02x%02x%02x%02x", id[0], id[1], id[2], id[3]);
}

/* s as a JSON string (printable ASCII is all a URL or name may hold here;
 * anything else becomes '?'). */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		const unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else
			putchar(c >= 0x20 && c < 0x7f ? c : '?');
	}
	putchar('"');
}

static void print_json(const moe_node_status *ns, int n)
{
	printf("{\"workers\":[");
	for (int i = 0; i < n; i++) {
		const moe_node_status *s = &ns[i];
		char id[2 * MOE_ID_BYTES + 1];
		for (int k = 0; k < MOE_ID_BYTES; k++)
			snprintf(id + 2 * k, 3, "%02x", s->model_id[k]);
		printf("%s{\"url\":", i ? "," : "");
		json_str(s->url);
		if (s->pings_answered == 0 && s->name[0]) {
			printf(",\"name\":");
			json_str(s->name);
		}
		printf(",\"state\":\"%s\",\"detail\":", moe_node_state_name(s->state));
		json_str(s->detail);
		if (s->pings_answered > 0) {
			printf(",\"name\":");
			json_str(s->name);
			printf(",\"model_id\":\"%s\",\"isa\":", id);
			json_str(s->isa);
			printf(",\"threads\":%u,"
			       "\"mem_total\":%llu,\"mem_available\":%llu,\"mem_offered\":%llu,"
			       "\"bytes_loaded\":%llu,\"experts_held\":%llu,\"layers_held\":%d,"
			       "\"n_layers\":%d,\"dispatches\":%llu,\"compute_ns\":%llu,"
			       "\"uptime_ns\":%llu,\"coordinator\":%s,\"loading\":%s,"
			       "\"load_done\":%llu,\"load_total\":%llu,\"bad_frames\":%llu,"
			       "\"rtt_ms\":%.3f,\"rtt_ms_max\":%.3f,\"clock_offset_ms\":%.3f,"
			       "\"pings_answered\":%d",
			       s->threads, (unsigned long long)s->mem_total,
			       (unsigned long long)s->mem_available,
			       (unsigned long long)s->mem_offered,
			       (unsigned long long)s->bytes_loaded,
			       (unsigned long long)s->experts_held, s->layers_held, s->n_layers,
			       (unsigned long long)s->dispatches, (unsigned long long)s->compute_ns,
			       (unsigned long long)s->uptime_ns, s->coordinator ? "true" : "false",
			       s->loading ? "true" : "false", (unsigned long long)s->load_done,
			       (unsigned long long)s->load_total, (unsigned long long)s->bad_frames,
			       s->rtt_ms, s->rtt_ms_max, s->clock_offset_ms, s->pings_answered);
			printf(",\"bytes_loaded_total\":%llu,\"coordinators\":%u,"
			       "\"dispatches_merged\":%llu",
			       (unsigned long long)s->bytes_loaded_total, s->coordinators,
			       (unsigned long long)s->dispatches_merged);
		}
		printf("}");
	}
	printf("]}\n");
}

static void print_table(const moe_node_status *ns, int n)
{
	printf("%-12s %-30s %-14s %-8s %-7s %-27s %-22s %-36s %9s %10s\n", "NAME", "URL", "STATE",
	       "MODEL", "ISA", "MEMORY total/offer/experts", "EXPERTS", "LOAD", "RTT", "CLOCK");
	for (int i = 0; i < n; i++) {
		const moe_node_status *s = &ns[i];
		if (s->pings_answered == 0) {
			printf("%-12s %-30s %-14s %s\n", s->name[0] ? s->name : "-", s->url,
			       moe_node_state_name(s->state), s->detail);
			continue;
		}
		char id[9], mem[64], ex[64], load[96];
		hex8(id, s->model_id);
		snprintf(mem, sizeof mem, "%.1fG/%.1fG/%.1fM", (double)s->mem_total / 1e9,
		         (double)s->mem_offered / 1e9, (double)s->bytes_loaded / 1e6);
		snprintf(ex, sizeof ex, "%llu in %d/%d layers", (unsigned long long)s->experts_held,
		         s->layers_held, s->n_layers);
		if (s->loading)
			snprintf(load, sizeof load, "loading %.0f%%",
			         s->load_total
			             ? 100.0 * (double)s->load_done / (double)s->load_total
			             : 0.0);
		else
			snprintf(load, sizeof load, "%llu disp, %.1f%% busy%s",
			         (unsigned long long)s->dispatches,
			         s->uptime_ns ? 100.0 * (double)s->compute_ns / (double)s->uptime_ns
			                      : 0.0,
			         s->coordinator ? ", coordinator" : "");
		printf("%-12s %-30s %-14s %-8s %-7s %-27s %-22s %-36s %6.2f ms %+7.1f ms\n",
		       s->name, s->url, moe_node_state_name(s->state), id, s->isa, mem, ex, load,
		       s->rtt_ms, s->clock_offset_ms);
		if (s->state != MOE_NODE_UP)
			printf("%-12s %s\n", "", s->detail);
	}
}

int moe_cmd_status(int argc, char **argv)
{
	moe_cluster_opts co = {0};
	const char *model = NULL;
	bool json = false;
	int pings = 3, timeout_ms = 1000;
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(s, "--json") == 0) {
			json = true;
			continue;
		}
		const moe_err ce = moe_cluster_parse_arg(&co, &i, argc, argv);
		if (ce == MOE_OK)
			continue;
		if (ce != MOE_ERR_NOT_FOUND) {
			fprintf(stderr, "moemesh status: %s\n", moe_err_detail());
			return 2;
		}
		if (v == NULL)
			goto out_usage;
		i++;
		if (strcmp(s, "-m") == 0)
			model = v;
		else if (strcmp(s, "--pings") == 0) {
			if (moe_parse_int(&pings, v, 1, 100) != 0)
				goto out_usage;
		} else if (strcmp(s, "--timeout-ms") == 0) {
			if (moe_parse_int(&timeout_ms, v, 1, 60000) != 0)
				goto out_usage;
		} else
			goto out_usage;
	}
	if (co.spawn > 0) {
		fprintf(stderr, "moemesh status: --workers N starts workers; name them with "
		                "--worker URL or --cluster FILE\n");
		return 2;
	}
	if (co.n_urls == 0)
		goto out_usage;

	int rc = 1;
	moe_err err = MOE_OK;
	uint8_t *secret = NULL, want[MOE_ID_BYTES];
	size_t secret_len = 0;
	bool have_want = false;
	moe_node_status *ns = calloc((size_t)co.n_urls, sizeof *ns);
	if (ns == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "status table");
		goto out_fail;
	}
	if (co.secret_file &&
	    (err = moe_secret_read(&secret, &secret_len, co.secret_file)) != MOE_OK)
		goto out_fail;
	if (model != NULL) {
		moe_gguf *g = NULL;
		if ((err = moe_gguf_open(&g, model)) == MOE_OK)
			err = moe_model_identity(want, g);
		moe_gguf_close(g);
		if (err != MOE_OK)
			goto out_fail;
		have_want = true;
	}
	int n_bad = 0;
	for (int i = 0; i < co.n_urls; i++) {
		if (strcmp(co.urls[i], "local") == 0) {
			/* the coordinator's own experts: nothing to ask, nothing wrong */
			snprintf(ns[i].url, sizeof ns[i].url, "local");
			ns[i].state = MOE_NODE_UP;
			snprintf(ns[i].detail, sizeof ns[i].detail,
			         "the coordinator's own experts: nothing to ask");
			continue;
		}
		if ((err = moe_node_status_query(&ns[i], co.urls[i], secret, secret_len, pings,
		                                 timeout_ms)) != MOE_OK)
			goto out_fail;
		if (co.names[i] != NULL && ns[i].pings_answered == 0)
			snprintf(ns[i].name, sizeof ns[i].name, "%s", co.names[i]);
		if (ns[i].state != MOE_NODE_UP)
			continue;
		if (!have_want) {
			memcpy(want, ns[i].model_id, MOE_ID_BYTES);
			have_want = true;
		} else if (memcmp(want, ns[i].model_id, MOE_ID_BYTES) != 0) {
			char a[9], b[9];
			hex8(a, ns[i].model_id);
			hex8(b, want);
			ns[i].state = MOE_NODE_MODEL_MISMATCH;
			snprintf(ns[i].detail, sizeof ns[i].detail,
			         "model identity %s..., %s has %s...", a,
			         model != NULL ? model : "the first worker", b);
		}
	}
	const char *isa0 = NULL;
	for (int i = 0; i < co.n_urls; i++) {
		n_bad += ns[i].state != MOE_NODE_UP;
		if (ns[i].pings_answered == 0)
			continue;
		if (isa0 == NULL)
			isa0 = ns[i].isa;
		else if (strcmp(isa0, ns[i].isa) != 0)
			fprintf(stderr,
			        "moemesh status: warning: worker %s runs %s kernels, another %s "
			        "(the same bits only for the types with tile kernels; DESIGN.md)\n",
			        ns[i].name, ns[i].isa, isa0);
		if (fabs(ns[i].clock_offset_ms) > 1000)
			fprintf(stderr,
			        "moemesh status: warning: worker %s's clock is %+.0f ms from ours "
			        "(log times will not line up; run NTP)\n",
			        ns[i].name, ns[i].clock_offset_ms);
	}
	if (json)
		print_json(ns, co.n_urls);
	else
		print_table(ns, co.n_urls);
	rc = n_bad > 0 ? 1 : 0;
	goto out_free;

out_fail:
	fprintf(stderr, "moemesh status: %s: %s\n", moe_err_name(err), moe_err_detail());
out_free:
	free(secret);
	free(ns);
	return rc;

out_usage:
	usage(stderr);
	return 2;
}
