/*
 * server.h - the public header of server/, the serving engine behind
 * `moemesh serve`: a scheduler thread that
 * owns one moe_fwd and runs continuous batching over its sequence slots, and
 * the pieces the HTTP front end (api.c and api_*.c on the transport of
 * http.c) needs around it: requests
 * (moe_gen), ChatML rendering, and metrics.
 *
 * Threads: HTTP connection threads submit requests and wait on them; the one
 * scheduler thread admits queued requests into free slots, builds one batch
 * per step from every active sequence (one token per decoding sequence, the
 * next prefill piece of each prefilling one), runs moe_fwd_step, samples, and
 * publishes the new text.  Everything shared is under the engine's mutex.
 *
 * Determinism: a request's result depends only on the request.  Kernels and
 * dense ops are batch-invariant per token, and with the forward pass's
 * default options (the DeltaNet in its recurrent form) a sequence's logits
 * do not depend on how it is cut into steps either (test_batch_invariance):
 * a prefix restored at any position and prefilled from there gives what one
 * piece would.  The scheduler cuts every prompt into pieces of prefill_chunk
 * tokens counted from the start of that prompt and never gives moe_fwd_step
 * more than max_batch tokens; that bounds a step's length, and determinism
 * no longer needs it (it did while long runs took the DeltaNet's chunked
 * form, whose bits depend on where a run starts and ends).
 */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/core.h"
#include "grammar/grammar.h"
#include "model/model.h"

/* ---- engine -------------------------------------------------------------------- */

typedef struct moe_engine moe_engine;

/* One worker of a cluster backend as /health shows it. */
typedef struct moe_engine_worker {
	char name[64];
	bool up;
} moe_engine_worker;

typedef struct moe_engine_opts {
	int n_slots;       /* sequences decoded together (--parallel), default 4 */
	int n_ctx;         /* positions per sequence (--ctx), default the model's trained length */
	int n_threads;     /* 0 = one per CPU */
	int max_queue;     /* requests waiting for a slot before 429; default 64 */
	int prefill_chunk; /* prompt tokens per sequence per step; default 256 */
	moe_type kv_type;  /* KV cache type (--kv), default MOE_TYPE_F16 */
	size_t kv_budget_bytes; /* KV blocks of all sequences at most (--kv-budget), 0 = no cap */
	const moe_expert_backend *experts; /* NULL: local experts */
	const moe_expert_backend *overlap; /* NULL, or moe_fwd_opts.overlap (off with a trace) */
	/* called on the scheduler thread after every step (may be NULL): for a
	 * cluster backend to report round trips with moe_engine_observe_rtt */
	void (*after_step)(void *ctx, moe_engine *e);
	void *after_step_ctx;
	/* called on the scheduler thread about once a second while no request is
	 * active (may be NULL): for a cluster to send heartbeats, so a dead worker
	 * is found (and its experts re-placed) before the next request needs it.
	 * An error makes the engine unhealthy with its detail as the reason until
	 * the next success. */
	moe_err (*idle)(void *ctx);
	void *idle_ctx;
	/* called by moe_engine_metrics on the thread that asks (may be NULL): the
	 * expert backend's own metrics, appended in Prometheus text */
	void (*metrics)(void *ctx, FILE *out);
	void *metrics_ctx;
	/* called by moe_engine_workers on the thread that asks (may be NULL): the
	 * expert backend's workers for /health, up to max into out; returns how
	 * many */
	int (*workers)(void *ctx, moe_engine_worker *out, int max);
	void *workers_ctx;
	/* The prefix cache: a new sequence starts from the longest cached prefix of
	 * its prompt that has a checkpoint, kept at every cache_block tokens of a
	 * prompt (a multiple of prefill_chunk; default 1024), at the end of every
	 * prompt and of every reply.  cache_ram: bytes of KV rows and states kept
	 * (0: no cache); cache_dir: a disk tier (NULL: none), its entries keyed by
	 * cache_identity (the model's, and what the bytes depend on). */
	size_t cache_ram;
	const char *cache_dir;
	int cache_block;
	uint8_t cache_identity[32];
	/* Speculative decoding (--spec, --draft-max; see model/sample.h): each
	 * decoding sequence's step carries up to draft_max drafted tokens (default
	 * 8), checked in that same step; the output is the same bytes.  Where a
	 * draft is refused the KV is cut back; a DeltaNet state goes back to its
	 * snapshot from before the step (a copy per slot) and the step's taken
	 * tokens run again, without drafts, in the next one. */
	moe_spec_mode spec;
	int draft_max;
	/* Routing trace (--trace FILE; model/trace.h): every step's experts per
	 * layer and token, each admitted request a new sequence id (0, 1, ...).
	 * NULL: none.  The caller creates it, and closes it after
	 * moe_engine_destroy. */
	moe_trace_writer *trace;
} moe_engine_opts;

void moe_engine_opts_default(moe_engine_opts *o);

/* Creates the engine on model m (which must outlive it) and tok, and starts
 * its scheduler thread.  Errors: those of moe_fwd_create, MOE_ERR_NOMEM,
 * MOE_ERR_SYS (thread). */
moe_err moe_engine_create(moe_engine **out, const moe_model *m, const moe_tokenizer *tok,
                          const moe_engine_opts *o);

/* Stops the scheduler thread: running and queued requests finish with
 * MOE_GEN_ERROR, new ones are refused.  Requests stay usable (wait, release)
 * until moe_engine_destroy.  Idempotent. */
void moe_engine_stop(moe_engine *e);

/* Stops the engine if needed and frees it; every request must have been
 * released.  NULL is a no-op. */
void moe_engine_destroy(moe_engine *e);

int moe_engine_n_ctx(const moe_engine *e);

/* The thread pool of the engine's forward pass (for the cluster backend). */
moe_pool *moe_engine_pool(const moe_engine *e);

/* False if the last step failed (the expert backend cannot serve), with the
 * reason copied into reason[0..size); true once a step succeeds again. */
bool moe_engine_healthy(moe_engine *e, char *reason, size_t size);

/* ---- requests ------------------------------------------------------------------ */

#define MOE_GEN_MAX_STOPS       8
#define MOE_GEN_MAX_END         4
#define MOE_GEN_MAX_TOP_LOGPROB 20

/* A generated token's log-probability under the model (the log-softmax of the
 * raw logits at that position, before temperature, penalties and cuts) and
 * the n_top most likely tokens there, best first (ties: lower id first). */
typedef struct moe_gen_logprob {
	int32_t id;
	float logprob;
	size_t offset; /* where its text starts in the generated text, in bytes */
	int n_top;
	int32_t top_id[MOE_GEN_MAX_TOP_LOGPROB];
	float top_logprob[MOE_GEN_MAX_TOP_LOGPROB];
} moe_gen_logprob;

/* A grammar the generated tokens must follow (grammar.h): tables over the
 * tokenizer's vocabulary, and where the constraint starts. */
typedef struct moe_gen_grammar {
	const moe_grammar_tables *tables; /* NULL: no constraint */
	const char *trigger;              /* NULL: from the first token; else from the end of the
	                                   * first occurrence of this text in the output (copied) */
	/* The request's hold on tables: on a successful submit the generation
	 * takes it and calls release(release_ctx) once when done with them; on
	 * a failed one the caller keeps it. */
	void (*release)(void *release_ctx);
	void *release_ctx;
} moe_gen_grammar;

typedef struct moe_gen_params {
	const int32_t *prompt; /* [n_prompt], copied */
	size_t n_prompt;
	int max_tokens;
	moe_sampler_params sp;
	const char *stops[MOE_GEN_MAX_STOPS]; /* copied */
	int n_stops;
	int32_t end_ids[MOE_GEN_MAX_END]; /* tokens that end the generation (not emitted) */
	int n_end;
	int logprobs;            /* -1: none; else a moe_gen_logprob per token with this many
	                          * alternatives (0..MOE_GEN_MAX_TOP_LOGPROB) */
	bool special_text;       /* the text shows control tokens too (harmony's channels) */
	moe_gen_grammar grammar; /* a constraint, or all zero */
} moe_gen_params;

typedef enum moe_gen_finish {
	MOE_GEN_RUNNING = 0,
	MOE_GEN_STOP,   /* an end token or stop string */
	MOE_GEN_LENGTH, /* max_tokens */
	MOE_GEN_ERROR,  /* the engine failed or shut down */
	MOE_GEN_CANCELLED,
} moe_gen_finish;

typedef struct moe_gen moe_gen;

/* Queues a request.  On success *out is a handle the caller must release with
 * moe_gen_release.  Errors: MOE_ERR_INVAL (empty prompt, bad sampler
 * parameter), MOE_ERR_BAD_VALUE (n_prompt + max_tokens > n_ctx, or their KV
 * blocks more than kv_budget_bytes holds; the detail names the numbers),
 * MOE_ERR_BUSY (queue full), MOE_ERR_STATE (engine stopping), MOE_ERR_NOMEM.
 * A request is admitted when a slot is free and the KV blocks that its
 * n_prompt + max_tokens can take fit the budget beside those of the admitted
 * ones (held until it ends), in the order of submission. */
moe_err moe_engine_submit(moe_gen **out, moe_engine *e, const moe_gen_params *p);

/* Waits up to timeout_ms for text not yet taken or for the end.  Appends the
 * new text (valid UTF-8, stop strings cut) to the caller's malloc'd buffer
 * *buf / *len / *cap (grown with realloc) and returns the finish state
 * (MOE_GEN_RUNNING if not finished yet).  MOE_GEN_ERROR also on allocation
 * failure. */
moe_gen_finish moe_gen_wait(moe_gen *g, char **buf, size_t *len, size_t *cap, int timeout_ms);

/* With params.logprobs >= 0: copies to out (at most max) the records of the
 * generated tokens from record *next on whose text starts before byte upto
 * of the text moe_gen_wait has handed out (SIZE_MAX once it returned the
 * finish: every token of the final text), advances *next and returns the
 * count.  Tokens cut off by a stop string never get a record. */
size_t moe_gen_logprobs(moe_gen *g, moe_gen_logprob *out, size_t max, size_t *next, size_t upto);

/* Asks the scheduler to drop the request: its slot is freed at the next step. */
void moe_gen_cancel(moe_gen *g);

/* Once g has finished with MOE_GEN_STOP because of a stop string: its index
 * in the request's stops; else -1. */
int moe_gen_stop_index(const moe_gen *g);

/* Tokens of the prompt that the prefix cache gave (0 until the request has
 * started, or without a hit). */
int moe_gen_cached_tokens(const moe_gen *g);

/* Tokens of the prompt and generated so far; seconds from submit to the
 * first generated token (0 until then). */
void moe_gen_usage(const moe_gen *g, int *prompt_tokens, int *completion_tokens);

/* Drops the caller's reference (cancels the request if still running). */
void moe_gen_release(moe_gen *g);

/* ---- metrics ------------------------------------------------------------------- */

/* Writes the engine's metrics in Prometheus text format: prompt and generated
 * token counters, tokens/s, queue depth, active sequences, KV / state bytes in
 * use, per-layer per-expert routed token counts, the per-worker round-trip
 * histogram (filled by moe_engine_observe_rtt). */
void moe_engine_metrics(moe_engine *e, FILE *out);

/* The expert backend's workers (moe_engine_opts.workers), up to max into
 * out; 0 without a cluster.  Safe from any thread. */
int moe_engine_workers(moe_engine *e, moe_engine_worker *out, int max);

/* Records one round trip of rtt_s seconds to worker (0 <= worker < 64) for
 * the per-worker histogram; for expert backends that talk to workers.  Safe
 * from any thread. */
void moe_engine_observe_rtt(moe_engine *e, int worker, double rtt_s);

/* The same for n round trips of rtt_s seconds each (e.g. a step's mean). */
void moe_engine_observe_rtt_n(moe_engine *e, int worker, double rtt_s, uint64_t n);

/* ---- chat templates (chat.c) ------------------------------------------------- */

/* How the chat routes turn a conversation into a prompt and read the reply. */
typedef struct moe_chat_template moe_chat_template;

/* The template of the file at path (the name "chatml": the built-in ChatML
 * one), or with path NULL the model's own (tokenizer.chat_template of g;
 * ChatML if it has none), for tok's vocabulary (both must outlive it).
 * Errors: MOE_ERR_IO (path unreadable), MOE_ERR_UNSUPPORTED (the server
 * cannot render it: the detail says why and where), MOE_ERR_NOMEM. */
moe_err moe_chat_template_create(moe_chat_template **out, const moe_gguf *g,
                                 const moe_tokenizer *tok, const char *path);

/* NULL is a no-op. */
void moe_chat_template_destroy(moe_chat_template *t);

/* ---- HTTP front end (api.c; the transport under it is http.c) ---------- */

typedef struct moe_http_opts {
	const char *host;     /* IPv4 address or "localhost"; default 127.0.0.1 */
	int port;             /* 0: any free port (see moe_http_port) */
	const char *api_key;  /* NULL: no authentication */
	size_t max_body;      /* request body cap in bytes (413 above it) */
	int max_conn;         /* connections at once (<= 0: 4096; each idle one costs a thread
	                       * and a descriptor, nothing else) */
	int timeout_s;        /* a connection idle this long is closed (<= 0: 600) */
	int max_conn_per_ip;  /* connections at once from one client address (<= 0: 3/4 of
	                       * max_conn when host is loopback, 256 beyond it; the ones
	                       * over are closed at accept) */
	bool insecure;        /* allow a host beyond loopback without an api_key */
	const char *model_id; /* the name /v1/models shows */
} moe_http_opts;

typedef struct moe_http moe_http;

/* Starts listening (a thread per connection).  Until moe_http_set_engine the
 * server answers /health with 503 and the reason set by
 * moe_http_set_status, and every API route with 503.  Errors: MOE_ERR_INVAL
 * (host; or a host beyond loopback without api_key and without insecure: the
 * detail says what to give), MOE_ERR_SYS (bind / start failed), MOE_ERR_NOMEM. */
moe_err moe_http_start(moe_http **out, const moe_http_opts *o);

/* The port actually bound. */
int moe_http_port(const moe_http *h);

/* Sets the /health message while not ready (copied). */
void moe_http_set_status(moe_http *h, const char *status, const char *reason);

/* Load progress of one worker, for /health while not ready. */
#define MOE_HTTP_MAX_LOADS 64
typedef struct moe_http_load {
	const char *name;
	uint64_t loaded_bytes, total_bytes; /* total 0: not started */
} moe_http_load;

/* Sets the workers /health lists while not ready ("workers": [{"name",
 * "loaded_bytes", "total_bytes"}]); w[0..n) is copied (at most
 * MOE_HTTP_MAX_LOADS), n 0 lists none.  Any thread. */
void moe_http_set_loading(moe_http *h, const moe_http_load *w, int n);

/* Makes the server ready: e, tok and the chat template t serve the API from
 * now on (all must outlive moe_http_stop). */
void moe_http_set_engine(moe_http *h, moe_engine *e, const moe_tokenizer *tok,
                         const moe_chat_template *t);

/* Stops listening, waits for every connection thread, frees h.  NULL is a
 * no-op. */
void moe_http_stop(moe_http *h);

#endif
