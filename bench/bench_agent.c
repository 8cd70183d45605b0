/*
 * bench_agent.c - `moemesh bench agent`: a synthetic agent session against a
 * server's OpenAI chat route, as an agent sends it: a long system prompt
 * (tool definitions), then turns that each add a user message or a tool
 * result of a few hundred to a few thousand tokens and get a short reply,
 * the whole conversation resent every turn.
 *
 * The same session (same seed, same texts; replies are greedy) is run
 * against `moemesh serve` with the prefix cache, without it
 * (--no-prefix-cache), and, with --llama-server PATH, against llama.cpp's
 * server on the same file and threads.  Per turn: prompt tokens, tokens
 * the server reused (moemesh: usage.prompt_tokens_details.cached_tokens;
 * llama.cpp: prompt tokens minus timings.prompt_n), time to first token, and
 * the turn's time; per run the session's total.  Writes OUT/agent.csv and
 * OUT/agent.png (gnuplot) and ends with summary lines:
 *   agent_speedup=X (session without the cache / with it; target >= 5)
 *   agent_ttft_ratio_max=Y (a turn's TTFT over the time to prefill only its
 *   new tokens at the first turn's prefill rate; target <= 1.3)
 *   agent_ttft_vs_new_at_depth_max=Z (a turn's TTFT over what its new tokens
 *   cost where they sit, after the reused ones: the no-cache run's TTFT
 *   fitted as a * P + b * P^2 over its prompts P gives a * (P - C) +
 *   b * (P^2 - C^2) for C reused; attention over a long context makes a
 *   token at 30k dearer than one at 3k, which Y ignores)
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/core.h"

extern char **environ;

#define MAX_TURNS 64

static const char *const names[3] = {"moemesh-cache", "moemesh-nocache", "llama.cpp"};

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: moemesh bench agent -m MODEL.gguf [--turns 20] [--system 3000]\n"
	    "                           [--add 500,2000] [--reply 64] [--threads N]\n"
	    "                           [--ctx 40960] [--cache-ram MIB] [--llama-server PATH]\n"
	    "                           [--llama-arg ARG (repeatable, up to 8)] [--completions]\n"
	    "                           [--skip-cache] [--skip-nocache] [--out DIR] [--seed S]\n"
	    "       moemesh bench agent --summary DIR/agent.csv\n"
	    "Runs one synthetic agent session (a system prompt of --system tokens, then\n"
	    "--turns turns each adding --add tokens and a --reply-token reply) against\n"
	    "moemesh serve with and without its prefix cache and, with --llama-server,\n"
	    "against llama.cpp's server on the same file.  CSV + PNG in DIR (bench/out).\n"
	    "--summary prints the table and summary lines of a CSV written before.\n"
	    "--completions: each server renders the chat (POST /apply-template) and the\n"
	    "prompt goes to /v1/completions, so that no reply parser sees the text (llama.cpp's\n"
	    "refuses a random-weight model's replies).\n");
}

/* ---- the session's text ---------------------------------------------------------- */

static const char *const words[] = {
    "the",     "function", "returns", "value",  "file",   "path",    "error",   "build",
    "test",    "agent",    "tool",    "call",   "result", "request", "server",  "model",
    "expert",  "layer",    "token",   "cache",  "prefix", "state",   "memory",  "worker",
    "cluster", "node",     "output",  "input",  "string", "number",  "object",  "array",
    "read",    "write",    "open",    "close",  "list",   "search",  "replace", "line",
    "code",    "change",   "check",   "report", "status", "time",    "data",    "table",
    "user",    "system",   "message", "answer", "parse",  "format",  "config",  "option",
    "start",   "stop",     "run",     "step",   "batch",  "thread",  "queue",   "lock"};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* About n tokens of text (one common English word is one token). */
static char *text_of(uint64_t *s, int n, const char *head)
{
	size_t cap = strlen(head) + (size_t)n * 10 + 16, len = 0;
	char *t = malloc(cap);
	if (t == NULL)
		return NULL;
	len = (size_t)snprintf(t, cap, "%s", head);
	for (int i = 0; i < n; i++) {
		const char *w = words[rnd(s) % (sizeof words / sizeof words[0])];
		len += (size_t)snprintf(t + len, cap - len, "%s%s", i % 16 == 15 ? ".\n" : " ", w);
	}
	return t;
}

/* ---- one server ------------------------------------------------------------------- */

typedef struct child {
	pid_t pid;
	int port;
} child;

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t l = sizeof a;
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* One HTTP/1.0 request; the whole response in *out (malloc'd).  first: the
 * seconds from the request to the first byte of the first SSE event whose
 * text is not empty (0 if none). */
static int http(char **out, double *first, int port, const char *method, const char *path,
                const char *body)
{
	char head[512];
	const size_t nb = body != NULL ? strlen(body) : 0;
	const int nh = snprintf(head, sizeof head,
	                        "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: "
	                        "application/json\r\nContent-Length: %zu\r\n\r\n",
	                        method, path, nb);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	const double t0 = moe_now_s();
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (send(fd, head, (size_t)nh, MSG_NOSIGNAL) != nh ||
	    (nb > 0 && send(fd, body, nb, MSG_NOSIGNAL) != (ssize_t)nb)) {
		close(fd);
		return -1;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	if (first != NULL)
		*first = 0;
	while (buf != NULL) {
		if (len + 4096 > cap) {
			char *b = realloc(buf, cap * 2);
			if (b == NULL) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = b;
			cap *= 2;
		}
		const ssize_t k = recv(fd, buf + len, cap - len - 1, 0);
		if (k <= 0)
			break;
		len += (size_t)k;
		buf[len] = '\0';
		/* the first delta with text (moemesh's first chunk carries "content":"");
		 * chat events carry "content", completion events "text" */
		for (int w = 0; w < 2; w++) {
			const char *key = w == 0 ? "\"content\":\"" : "\"text\":\"";
			const size_t kl = strlen(key);
			for (const char *p = buf;
			     first != NULL && *first == 0 && (p = strstr(p, key)) != NULL; p += kl)
				if (p[kl] != '"')
					*first = moe_now_s() - t0;
		}
	}
	close(fd);
	if (buf == NULL)
		return -1;
	*out = buf;
	return 0;
}

static int start(child *c, const char *const *argv)
{
	if (posix_spawn(&c->pid, argv[0], NULL, NULL, (char *const *)argv, environ) != 0)
		return -1;
	for (int i = 0; i < 3000; i++) { /* up to 5 minutes: a large model loads */
		char *r = NULL;
		if (http(&r, NULL, c->port, "GET", "/health", NULL) == 0) {
			const bool ok = strstr(r, " 200 ") != NULL;
			free(r);
			if (ok)
				return 0;
		}
		int st;
		if (waitpid(c->pid, &st, WNOHANG) == c->pid)
			return -1;
		struct timespec ts = {0, 100 * 1000000};
		nanosleep(&ts, NULL);
	}
	return -1;
}

static void stop(child *c)
{
	kill(c->pid, SIGTERM);
	waitpid(c->pid, NULL, 0);
}

/* ---- one session ------------------------------------------------------------------- */

typedef struct turn {
	int prompt, cached; /* tokens */
	double ttft, secs;
	bool cut; /* llama.cpp's server ended the reply early with an error */
} turn;

typedef struct session {
	int turns, system, add_lo, add_hi, reply;
	bool completions; /* render with /apply-template, send to /v1/completions */
	uint64_t seed;
} session;

/* Runs the session against the server on port; fills t[0..turns). */
/* Completions mode: the server renders msgs with its chat template
 * (POST /apply-template, as llama.cpp's server has it too) and the prompt
 * goes to /v1/completions, so that nothing parses the reply.  Returns the
 * body to send (malloc'd), or NULL. */
static char *completion_body(int port, const cJSON *msgs, int reply, bool native)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddItemReferenceToObject(b, "messages", (cJSON *)msgs);
	char *json = cJSON_PrintUnformatted(b);
	cJSON_Delete(b);
	char *resp = NULL;
	if (json == NULL || http(&resp, NULL, port, "POST", "/apply-template", json) != 0) {
		free(json);
		return NULL;
	}
	free(json);
	const char *body = strstr(resp, "\r\n\r\n");
	cJSON *j = body != NULL ? cJSON_Parse(body + 4) : NULL;
	const char *prompt = cJSON_GetStringValue(cJSON_GetObjectItem(j, "prompt"));
	char *out = NULL;
	if (prompt != NULL) {
		cJSON *c = cJSON_CreateObject();
		cJSON_AddStringToObject(c, "prompt", prompt);
		cJSON_AddNumberToObject(c, native ? "n_predict" : "max_tokens", reply);
		cJSON_AddNumberToObject(c, "temperature", 0);
		cJSON_AddBoolToObject(c, "stream", true);
		if (native) {
			cJSON_AddBoolToObject(c, "cache_prompt", true);
		} else {
			cJSON *so = cJSON_AddObjectToObject(c, "stream_options");
			cJSON_AddBoolToObject(so, "include_usage", true);
		}
		out = cJSON_PrintUnformatted(c);
		cJSON_Delete(c);
	} else {
		fprintf(stderr, "bench agent: /apply-template gave no prompt: %.300s\n", resp);
	}
	cJSON_Delete(j);
	free(resp);
	return out;
}

static int run_session(turn *t, const session *s, int port, bool llama)
{
	uint64_t r = s->seed;
	cJSON *msgs = cJSON_CreateArray();
	char *sys = text_of(&r, s->system,
	                    "You are a coding agent. You have these tools: read_file(path), "
	                    "write_file(path, text), search(query), run(command). Their "
	                    "documentation follows.\n");
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", "system");
	cJSON_AddStringToObject(m, "content", sys);
	cJSON_AddItemToArray(msgs, m);
	free(sys);
	int rc = 0;
	for (int k = 0; k < s->turns && rc == 0; k++) {
		const int add = s->add_lo + (int)(rnd(&r) % (uint64_t)(s->add_hi - s->add_lo + 1));
		char *txt = text_of(&r, add, k % 2 == 0 ? "Task: " : "Tool result:\n");
		m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "role", "user");
		cJSON_AddStringToObject(m, "content", txt);
		cJSON_AddItemToArray(msgs, m);
		free(txt);
		cJSON *body = cJSON_CreateObject();
		cJSON_AddItemReferenceToObject(body, "messages", msgs);
		cJSON_AddNumberToObject(body, "max_tokens", s->reply);
		cJSON_AddNumberToObject(body, "temperature", 0);
		cJSON_AddBoolToObject(body, "stream", true);
		cJSON *so = cJSON_AddObjectToObject(body, "stream_options");
		cJSON_AddBoolToObject(so, "include_usage", true);
		/* llama.cpp's /v1/completions also runs its reply parser, which
		 * refuses some replies of a random-weight model: its own route */
		const bool native = s->completions && llama;
		char *json = s->completions ? completion_body(port, msgs, s->reply, native)
		                            : cJSON_PrintUnformatted(body);
		cJSON_Delete(body);
		char *resp = NULL;
		double first = 0;
		const double t0 = moe_now_s();
		if (json == NULL || http(&resp, &first, port, "POST",
		                         native           ? "/completion"
		                         : s->completions ? "/v1/completions"
		                                          : "/v1/chat/completions",
		                         json) != 0) {
			rc = -1;
			free(json);
			break;
		}
		t[k].secs = moe_now_s() - t0;
		t[k].ttft = first;
		free(json);
		const char *eol = strchr(resp, '\n');
		/* llama.cpp's server ends a stream with a 500 event when its reply
		 * parser meets bytes that are not UTF-8 (a random-weight model writes
		 * them); with text streamed before it, that text is the reply and the
		 * turn counts as cut (shorter than --reply: it favours llama.cpp) */
		const char *err_ev = strstr(resp, "\ndata: {\"error\"");
		t[k].cut = llama && err_ev != NULL && first > 0 &&
		           strstr(err_ev, "does not match the expected") != NULL;
		if (strncmp(resp, "HTTP/1.", 7) != 0 || eol == NULL ||
		    strstr(resp, " 200 ") == NULL || strstr(resp, " 200 ") > eol ||
		    (err_ev != NULL && !t[k].cut)) {
			const char *ev = strstr(resp, "\ndata: {\"error\"");
			fprintf(stderr, "bench agent: turn %d failed: %.400s%s%.400s\n", k + 1,
			        resp, ev != NULL ? "\n...\n" : "", ev != NULL ? ev + 1 : "");
			free(resp);
			rc = -1;
			break;
		}
		/* the events: the reply's text, and usage (and llama.cpp's timings;
		 * -1: a cut reply has none) */
		if (llama)
			t[k].cached = -1;
		char *reply = calloc(1, 1);
		size_t rl = 0;
		for (char *line = strstr(resp, "data: "); line != NULL;
		     line = strstr(line + 6, "\ndata: ")) {
			char *p = line[0] == '\n' ? line + 7 : line + 6;
			char *e = strchr(p, '\n');
			if (e != NULL)
				*e = '\0';
			cJSON *ev = cJSON_Parse(p);
			if (e != NULL)
				*e = '\n';
			const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0);
			const char *piece =
			    native ? cJSON_GetStringValue(cJSON_GetObjectItem(ev, "content"))
			    : s->completions ? cJSON_GetStringValue(cJSON_GetObjectItem(ch, "text"))
			                     : cJSON_GetStringValue(cJSON_GetObjectItem(
			                           cJSON_GetObjectItem(ch, "delta"), "content"));
			const cJSON *te = cJSON_GetObjectItem(ev, "tokens_evaluated");
			if (native && cJSON_IsNumber(te))
				t[k].prompt = (int)te->valuedouble;
			if (piece != NULL && *piece) {
				const size_t pl = strlen(piece);
				char *nr = realloc(reply, rl + pl + 1);
				if (nr != NULL) {
					memcpy(nr + rl, piece, pl + 1);
					reply = nr;
					rl += pl;
				}
			}
			const cJSON *u = cJSON_GetObjectItem(ev, "usage");
			if (cJSON_IsObject(u)) {
				t[k].prompt = (int)cJSON_GetNumberValue(
				    cJSON_GetObjectItem(u, "prompt_tokens"));
				const cJSON *d = cJSON_GetObjectItem(
				    cJSON_GetObjectItem(u, "prompt_tokens_details"),
				    "cached_tokens");
				if (cJSON_IsNumber(d))
					t[k].cached = (int)d->valuedouble;
			}
			const cJSON *tm = cJSON_GetObjectItem(ev, "timings");
			const cJSON *pn = cJSON_GetObjectItem(tm, "prompt_n");
			if (cJSON_IsNumber(pn) && t[k].prompt > 0)
				t[k].cached = t[k].prompt - (int)pn->valuedouble;
			cJSON_Delete(ev);
		}
		free(resp);
		if (t[k].prompt <= 0 || t[k].ttft <= 0) {
			fprintf(stderr, "bench agent: turn %d: no usage or no text in the reply\n",
			        k + 1);
			free(reply);
			rc = -1;
			break;
		}
		m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "role", "assistant");
		cJSON_AddStringToObject(m, "content", reply);
		cJSON_AddItemToArray(msgs, m);
		free(reply);
		fprintf(stderr,
		        "  turn %2d: prompt %6d tokens, reused %6d, TTFT %7.2f s, turn %7.2f s%s\n",
		        k + 1, t[k].prompt, t[k].cached, t[k].ttft, t[k].secs,
		        t[k].cut ? " (reply cut by the server's error)" : "");
	}
	cJSON_Delete(msgs);
	return rc;
}

/* ---- the benchmark ---------------------------------------------------------------- */

/* Prints the per-turn table and the summary lines; with write_csv also
 * OUT/agent.csv and OUT/agent.png.  Returns 0, or 1 when the CSV cannot be
 * written. */
static int report(turn t[3][MAX_TURNS], const bool ran[3], const double total[3], int turns,
                  const char *out, bool write_csv)
{
	if (write_csv)
		mkdir(out, 0755);
	char path[1024];
	snprintf(path, sizeof path, "%s/agent.csv", out);
	FILE *csv = write_csv ? fopen(path, "w") : NULL;
	if (write_csv && csv == NULL) {
		fprintf(stderr, "bench agent: cannot write %s\n", path);
		return 1;
	}
	if (csv != NULL)
		fprintf(csv, "turn,run,prompt_tokens,reused_tokens,ttft_s,turn_s\n");
	printf("%-5s", "turn");
	for (int run = 0; run < 3; run++)
		if (ran[run])
			printf(" | %-15s %7s %7s %8s", names[run], "prompt", "reused", "TTFT s");
	printf("\n");
	/* the first turn's prefill rate (cache run: nothing to reuse yet) */
	const double rate = t[0][0].ttft > 0 ? (double)t[0][0].prompt / t[0][0].ttft : 0;
	double worst = 0, worst_m = 0;
	/* the no-cache run's TTFT as a * P + b * P^2 (P in thousands of tokens:
	 * the layers' work grows with the prompt, attention's with its square),
	 * least squares; a turn's new tokens alone then cost
	 * a * (P - C) + b * (P^2 - C^2) with C the tokens reused */
	double fa = 0, fb = 0;
	bool fit = false;
	if (ran[1]) {
		double s2 = 0, s3 = 0, s4 = 0, st1 = 0, st2 = 0;
		for (int k = 0; k < turns; k++) {
			const double p = t[1][k].prompt / 1e3, y = t[1][k].ttft;
			s2 += p * p, s3 += p * p * p, s4 += p * p * p * p;
			st1 += p * y, st2 += p * p * y;
		}
		const double det = s2 * s4 - s3 * s3;
		if (det > 0) {
			fa = (st1 * s4 - st2 * s3) / det;
			fb = (s2 * st2 - s3 * st1) / det;
			fit = true;
		}
	}
	for (int k = 0; k < turns; k++) {
		printf("%-5d", k + 1);
		for (int run = 0; run < 3; run++) {
			if (!ran[run])
				continue;
			const turn *x = &t[run][k];
			printf(" | %-15s %7d %7d %8.2f", "", x->prompt, x->cached, x->ttft);
			if (csv != NULL)
				fprintf(csv, "%d,%s,%d,%d,%.3f,%.3f\n", k + 1, names[run],
				        x->prompt, x->cached, x->ttft, x->secs);
		}
		printf("\n");
		if (k > 0 && rate > 0 && t[0][k].prompt > t[0][k].cached) {
			const double alone = (double)(t[0][k].prompt - t[0][k].cached) / rate;
			if (t[0][k].ttft / alone > worst)
				worst = t[0][k].ttft / alone;
		}
		if (k > 0 && fit && t[0][k].prompt > t[0][k].cached) {
			const double p1 = t[0][k].prompt / 1e3, p0 = t[0][k].cached / 1e3;
			const double alone = fa * (p1 - p0) + fb * (p1 * p1 - p0 * p0);
			if (alone > 0 && t[0][k].ttft / alone > worst_m)
				worst_m = t[0][k].ttft / alone;
		}
	}
	if (csv != NULL)
		fclose(csv);
	for (int run = 0; run < 3; run++) {
		if (!ran[run])
			continue;
		double ttft = 0;
		int cut = 0;
		for (int k = 0; k < turns; k++)
			ttft += t[run][k].ttft, cut += t[run][k].cut;
		printf("%s: session %.1f s, time to first token summed over turns %.1f s",
		       names[run], total[run], ttft);
		if (cut > 0)
			printf(", %d replies cut short by the server's error", cut);
		printf("\n");
	}
	char cmd[4096];
	if (!write_csv)
		goto summary;
	snprintf(cmd, sizeof cmd,
	         "command -v gnuplot >/dev/null && gnuplot -e \"set terminal pngcairo size 900,420 "
	         "noenhanced; set output '%s/agent.png'; set datafile separator ','; "
	         "set xlabel 'turn'; set ylabel 'time to first token, s'; set key top left; "
	         "plot for [r in 'moemesh-cache moemesh-nocache llama.cpp'] '%s/agent.csv' "
	         "using (strcol(2) eq r ? \\$1 : 1/0):5 with linespoints title r\"",
	         out, out);
	if (system(cmd) != 0)
		fprintf(stderr, "bench agent: no plot (gnuplot missing or failed)\n");
	printf("wrote %s/agent.csv and %s/agent.png\n", out, out);
summary:
	if (ran[1] && total[0] > 0)
		printf("agent_speedup=%.2f (session without the cache / with it; target >= 5)\n",
		       total[1] / total[0]);
	if (ran[2] && total[0] > 0)
		printf("agent_vs_llama=%.2f (llama.cpp's session / moemesh's; target >= 1)\n",
		       total[2] / total[0]);
	if (ran[0])
		printf(
		    "agent_ttft_ratio_max=%.2f (a turn's TTFT / prefill of its new tokens alone at "
		    "%.0f tok/s, the first turn's rate; target <= 1.3)\n",
		    worst, rate);
	if (fit)
		printf("agent_ttft_vs_new_at_depth_max=%.2f (a turn's TTFT / its new tokens alone "
		       "where "
		       "they sit, from the no-cache TTFT fitted as %.3f s * P + %.5f s * P^2, P in "
		       "thousands of tokens)\n",
		       worst_m, fa, fb);
	return 0;
}

/* --summary CSV: the table and summary lines of an agent.csv written before
 * (session totals as the sums of its turns' times). */
static int summary_of(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		fprintf(stderr, "bench agent: cannot read %s\n", path);
		return 1;
	}
	static turn t[3][MAX_TURNS];
	bool ran[3] = {false};
	double total[3] = {0};
	int turns = 0;
	char line[512], name[64];
	if (fgets(line, sizeof line, f) == NULL) /* the header */
		line[0] = '\0';
	while (fgets(line, sizeof line, f) != NULL) {
		int k, prompt, cached;
		double ttft, secs;
		if (sscanf(line, "%d,%63[^,],%d,%d,%lf,%lf", &k, name, &prompt, &cached, &ttft,
		           &secs) != 6 ||
		    k < 1 || k > MAX_TURNS) {
			fprintf(stderr, "bench agent: %s: not a line of agent.csv: %s", path, line);
			fclose(f);
			return 1;
		}
		for (int r = 0; r < 3; r++)
			if (strcmp(name, names[r]) == 0) {
				t[r][k - 1] = (turn){
				    .prompt = prompt, .cached = cached, .ttft = ttft, .secs = secs};
				ran[r] = true;
				total[r] += secs;
			}
		if (k > turns)
			turns = k;
	}
	fclose(f);
	return report(t, ran, total, turns, NULL, false);
}

int moe_bench_agent(int argc, char **argv)
{
	const char *model = NULL, *llama = NULL, *out = "bench/out", *threads = "2";
	const char *ctx = "40960", *cache_ram = "8192";
	session s = {.turns = 20,
	             .system = 3000,
	             .add_lo = 500,
	             .add_hi = 2000,
	             .reply = 64,
	             .seed = 88172645463325252ull};
	bool skip_nocache = false, skip_cache = false;
	const char *extra[8];
	int n_extra = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(a, "--skip-nocache") == 0) {
			skip_nocache = true;
			continue;
		}
		if (strcmp(a, "--completions") == 0) {
			s.completions = true;
			continue;
		}
		if (strcmp(a, "--skip-cache") == 0) {
			skip_cache = true;
			continue;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--summary") == 0)
			return summary_of(v);
		if (strcmp(a, "-m") == 0)
			model = v;
		else if (strcmp(a, "--llama-server") == 0)
			llama = v;
		else if (strcmp(a, "--llama-arg") == 0 && n_extra < 8)
			extra[n_extra++] = v;
		else if (strcmp(a, "--out") == 0)
			out = v;
		else if (strcmp(a, "--threads") == 0)
			threads = v;
		else if (strcmp(a, "--ctx") == 0)
			ctx = v;
		else if (strcmp(a, "--cache-ram") == 0)
			cache_ram = v;
		else if (strcmp(a, "--turns") == 0)
			bad = moe_parse_int(&s.turns, v, 1, MAX_TURNS);
		else if (strcmp(a, "--system") == 0)
			bad = moe_parse_int(&s.system, v, 1, 1 << 20);
		else if (strcmp(a, "--reply") == 0)
			bad = moe_parse_int(&s.reply, v, 1, 4096);
		else if (strcmp(a, "--seed") == 0)
			s.seed = strtoull(v, NULL, 10) | 1;
		else if (strcmp(a, "--add") == 0)
			bad = sscanf(v, "%d,%d", &s.add_lo, &s.add_hi) != 2 || s.add_lo < 1 ||
			      s.add_hi < s.add_lo;
		else
			bad = 1;
		if (bad) {
			usage(stderr);
			return 2;
		}
	}
	if (model == NULL) {
		usage(stderr);
		return 2;
	}
	turn t[3][MAX_TURNS] = {{{0}}};
	double total[3] = {0};
	bool ran[3] = {false};
	for (int run = 0; run < 3; run++) {
		if ((run == 0 && skip_cache) || (run == 1 && skip_nocache) ||
		    (run == 2 && llama == NULL))
			continue;
		child c = {.port = free_port()};
		char port[16];
		snprintf(port, sizeof port, "%d", c.port);
		const char *moe[] = {"/proc/self/exe", "serve",   "-m",         model,
		                     "--port",         port,      "--threads",  threads,
		                     "--ctx",          ctx,       "--parallel", "1",
		                     "--cache-ram",    cache_ram, NULL,         NULL};
		if (run == 1)
			moe[14] = "--no-prefix-cache", moe[15] = NULL;
		const char *lla[24] = {llama, "-m", model, "--port", port,  "-t", threads,
		                       "-c",  ctx,  "-np", "1",      "-fa", "on", NULL};
		for (int j = 0; j < n_extra; j++)
			lla[13 + j] = extra[j];
		fprintf(stderr, "bench agent: %s\n", names[run]);
		if (start(&c, run == 2 ? lla : moe) != 0) {
			fprintf(stderr, "bench agent: %s did not start\n", names[run]);
			return 1;
		}
		const double t0 = moe_now_s();
		const int rc = run_session(t[run], &s, c.port, run == 2);
		total[run] = moe_now_s() - t0;
		stop(&c);
		if (rc != 0) {
			fprintf(stderr, "bench agent: %s: a request failed\n", names[run]);
			return 1;
		}
		ran[run] = true;
	}
	return report(t, ran, total, s.turns, out, true);
}
