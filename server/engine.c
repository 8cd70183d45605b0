/* engine.c - the scheduler thread of `moemesh serve`: continuous batching
 * of requests over the slots of one moe_fwd (see serve.h). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/prefix.h"
#include "server/server.h"

#define RTT_WORKERS 64
#define RTT_BUCKETS 12
static const double rtt_le[RTT_BUCKETS] = {50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3,
                                           5e-3,  10e-3,  20e-3,  50e-3,  0.1,  1.0};

struct moe_gen {
	moe_engine *e;
	int refs; /* under e->mu: the caller's and the engine's */
	moe_gen *next;

	/* parameters, fixed at submit */
	int32_t *prompt; /* [n_prompt + max_tokens]: the prompt, then the tokens generated */
	size_t n_prompt;
	int max_tokens;
	moe_sampler_params sp;
	char *stops[MOE_GEN_MAX_STOPS];
	int n_stops;
	int32_t end_ids[MOE_GEN_MAX_END];
	int n_end;
	int logprobs;
	moe_gen_grammar gram; /* .trigger malloc'd */

	/* shared, under e->mu */
	pthread_cond_t cv;
	char *text; /* published text: [0, taken) went to the caller */
	size_t text_len, text_cap, taken;
	moe_gen_finish finish;
	bool cancel;
	int n_gen;
	moe_gen_logprob *lp; /* [n_lp] published records */
	size_t n_lp, cap_lp;

	/* the scheduler's own */
	int slot;
	size_t kv_blocks; /* KV blocks its prompt and max_tokens can take (held from admission) */
	int n_sched;      /* tokens generated (copied to n_gen when published) */
	size_t n_fed;     /* prompt tokens in the slot */
	int32_t next_tok;
	int d_max; /* the bound of its next draft (moe_spec_next_max) */
	moe_sampler *smp;
	moe_tok_stream *ts;
	char *raw; /* generated text; [0, raw_out) published */
	size_t raw_len, raw_cap, raw_out;
	size_t pub;           /* raw_out at the last publish */
	moe_gen_finish done;  /* set by the scheduler before publishing */
	bool stop_cut;        /* a stop string ended it: later tokens get no record */
	int stop_index;       /* which one (stops[]), or -1 */
	moe_gen_logprob *slp; /* [n_slp] records not yet published */
	size_t n_slp, cap_slp;
	size_t cached;  /* prompt tokens the prefix cache gave (set before the first step) */
	bool looked_up; /* the prefix cache was asked */
	bool cp_due;    /* the step under way ends at a checkpoint of the prompt */
	moe_grammar_matcher *gm; /* the constraint's state, or NULL */
	bool g_on;               /* the constraint applies (its trigger was met) */
	size_t g_scan;           /* raw text below this has no trigger */
	uint32_t *g_mask;        /* [n_vocab / 32] a step's valid tokens */
	float *g_logits;         /* [n_vocab] the row with the others at -inf */
};

struct moe_engine {
	const moe_model *m;
	const moe_tokenizer *tok;
	moe_engine_opts o;
	int max_batch;
	moe_fwd *f;
	moe_prefix_cache *pc;            /* NULL: no prefix cache */
	bool cp_before_last;             /* prompts' checkpoints before their last token */
	uint8_t *state;                  /* [moe_fwd_state_size] a state on its way in or out */
	moe_expert_backend inner;        /* local or the cluster's */
	moe_expert_backend inner_b;      /* the second micro-batch's (moe_fwd_opts.overlap) */
	_Atomic uint64_t *expert_tokens; /* [n_layer][n_expert] */
	uint32_t *slot_seq;              /* [n_slots] the trace's sequence id of each slot */
	uint32_t next_seq;               /* the next admitted request's (scheduler's) */
	_Atomic uint64_t rtt_count[RTT_WORKERS][RTT_BUCKETS + 1];
	_Atomic uint64_t rtt_sum_us[RTT_WORKERS];

	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t work; /* the scheduler waits on it */
	bool stop, joined;
	moe_gen *queue_head, *queue_tail;
	int n_queued;
	moe_gen **active; /* [n_slots], scheduler's; NULL = free */
	int n_active;
	size_t kv_blocks_cap;  /* KV blocks the budget holds (SIZE_MAX: no budget) */
	size_t kv_blocks_held; /* under mu: the kv_blocks of the admitted requests */

	/* step buffers: [max_batch] */
	int32_t *b_tok, *b_slot, *b_pos;
	bool *b_want;
	moe_gen **b_gen; /* [max_rows] gen of each wanted row (a gen's rows in a row) */
	int *b_before;   /* [max_rows] each row's n_sched before the step's sampling */
	float *logits;   /* [max_rows][n_vocab] */
	int max_rows;    /* n_slots * (dmax + 1) */

	/* speculative decoding, per slot; the scheduler's */
	int dmax;        /* drafts per sequence and step at most (0: off) */
	size_t st_size;  /* bytes of a slot's DeltaNet state */
	int32_t *d_tok;  /* [n_slots][dmax] the step's drafts */
	int *d_n;        /* [n_slots] how many */
	int *d_acc;      /* [n_slots] of which taken */
	int64_t *d_from; /* [n_slots] the slot's length before the step */
	int *d_fed;      /* [n_slots] tokens of the sequence (not drafts) the step ran */
	uint8_t *snap;   /* [n_slots][st_size] states from before the step (no rewind) */
	bool rewind;     /* the context keeps the states of drafts (moe_fwd_seq_rewind) */
	/* --spec mtp: the step's MTP drafts, made for every slot at once */
	int32_t *m_slot; /* [n_slots] the drafting slots */
	int32_t *m_tok;  /* [n_slots] their next tokens */
	int *m_max;      /* [n_slots] their bounds */
	int *m_nd;       /* [n_slots] drafts made, per drafting slot */
	int32_t *m_d;    /* [n_slots][dmax] */
	int *m_n;        /* [n_slots] drafts made, per slot */

	/* metrics, under mu */
	uint64_t prompt_tokens, gen_tokens, steps;
	uint64_t drafted, accepted;
	uint64_t win_tokens;
	double win_t0, rate;
	size_t kv_in_use, state_in_use;
	char fail_reason[256]; /* the last step's error; "" when it succeeded */
};

void moe_engine_opts_default(moe_engine_opts *o)
{
	*o = (moe_engine_opts){.n_slots = 4,
	                       .max_queue = 64,
	                       .prefill_chunk = 256,
	                       .cache_block = 1024,
	                       .kv_type = MOE_TYPE_F16,
	                       .draft_max = 8};
}

int moe_engine_n_ctx(const moe_engine *e)
{
	return e->o.n_ctx;
}

/* ---- expert backends ------------------------------------------------------------ */

/* Counts the routed tokens of layer il. */
static void count_tokens(moe_engine *e, int il, int64_t n_tok, const int32_t *ids, int n_used)
{
	const moe_hparams *hp = moe_model_hparams(e->m);
	if (il >= 0 && il < hp->n_layer) {
		for (int64_t i = 0; i < n_tok * n_used; i++)
			if (ids[i] >= 0 && ids[i] < hp->n_expert)
				atomic_fetch_add_explicit(
				    &e->expert_tokens[(size_t)il * (size_t)hp->n_expert +
				                      (size_t)ids[i]],
				    1, memory_order_relaxed);
	}
}

static moe_err count_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                           const float *weights, int n_used)
{
	moe_engine *e = ctx;
	count_tokens(e, il, n_tok, ids, n_used);
	return e->inner.start(e->inner.ctx, il, n_tok, x, ids, weights, n_used);
}

static moe_err count_finish(void *ctx, moe_fix_t *acc)
{
	moe_engine *e = ctx;
	return e->inner.finish(e->inner.ctx, acc);
}

static moe_err count_start_b(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                             const float *weights, int n_used)
{
	moe_engine *e = ctx;
	count_tokens(e, il, n_tok, ids, n_used);
	return e->inner_b.start(e->inner_b.ctx, il, n_tok, x, ids, weights, n_used);
}

static moe_err count_finish_b(void *ctx, moe_fix_t *acc)
{
	moe_engine *e = ctx;
	return e->inner_b.finish(e->inner_b.ctx, acc);
}

void moe_engine_observe_rtt_n(moe_engine *e, int worker, double rtt_s, uint64_t n)
{
	if (e == NULL || worker < 0 || worker >= RTT_WORKERS || !(rtt_s >= 0) || rtt_s > 1e6)
		return;
	int b = 0;
	while (b < RTT_BUCKETS && rtt_s > rtt_le[b])
		b++;
	atomic_fetch_add_explicit(&e->rtt_count[worker][b], n, memory_order_relaxed);
	atomic_fetch_add_explicit(&e->rtt_sum_us[worker], (uint64_t)(rtt_s * 1e6) * n,
	                          memory_order_relaxed);
}

void moe_engine_observe_rtt(moe_engine *e, int worker, double rtt_s)
{
	moe_engine_observe_rtt_n(e, worker, rtt_s, 1);
}

moe_pool *moe_engine_pool(const moe_engine *e)
{
	return moe_fwd_pool(e->f);
}

bool moe_engine_healthy(moe_engine *e, char *reason, size_t size)
{
	pthread_mutex_lock(&e->mu);
	const bool ok = e->fail_reason[0] == '\0';
	if (!ok && size > 0)
		snprintf(reason, size, "%s", e->fail_reason);
	pthread_mutex_unlock(&e->mu);
	return ok;
}

/* ---- requests ------------------------------------------------------------------- */

static void gen_free(moe_gen *g)
{
	free(g->prompt);
	for (int i = 0; i < g->n_stops; i++)
		free(g->stops[i]);
	free(g->text);
	free(g->raw);
	free(g->lp);
	free(g->slp);
	moe_sampler_destroy(g->smp);
	moe_tok_stream_destroy(g->ts);
	moe_grammar_matcher_destroy(g->gm);
	free(g->g_mask);
	free(g->g_logits);
	free((char *)g->gram.trigger);
	if (g->gram.release != NULL)
		g->gram.release(g->gram.release_ctx);
	pthread_cond_destroy(&g->cv);
	free(g);
}

/* Under e->mu. */
static void gen_unref(moe_gen *g)
{
	if (--g->refs == 0)
		gen_free(g);
}

moe_err moe_engine_submit(moe_gen **out, moe_engine *e, const moe_gen_params *p)
{
	if (p->n_prompt == 0)
		return moe_fail(MOE_ERR_INVAL, "serve: the prompt is empty");
	if (p->max_tokens < 1)
		return moe_fail(MOE_ERR_INVAL, "serve: max_tokens %d < 1", p->max_tokens);
	if (p->n_prompt + (size_t)p->max_tokens > (size_t)e->o.n_ctx)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "prompt (%zu tokens) + max_tokens (%d) exceeds the context of %d "
		                "tokens",
		                p->n_prompt, p->max_tokens, e->o.n_ctx);
	/* the KV blocks it can take are held from admission to its end, so a
	 * step never runs out of them mid-way */
	const size_t blocks =
	    (p->n_prompt + (size_t)p->max_tokens + MOE_FWD_KV_BLOCK - 1) / MOE_FWD_KV_BLOCK;
	if (e->kv_blocks_cap != SIZE_MAX && blocks > e->kv_blocks_cap) {
		const double mib =
		    (double)moe_fwd_kv_pos_bytes(e->f) * MOE_FWD_KV_BLOCK / 1048576.0;
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "prompt (%zu tokens) + max_tokens (%d) need %zu KV blocks of %d "
		                "positions (%.1f MiB); the KV budget holds %zu (%.1f MiB)",
		                p->n_prompt, p->max_tokens, blocks, MOE_FWD_KV_BLOCK,
		                (double)blocks * mib, e->kv_blocks_cap,
		                (double)e->kv_blocks_cap * mib);
	}
	if (p->n_stops < 0 || p->n_stops > MOE_GEN_MAX_STOPS || p->n_end < 0 ||
	    p->n_end > MOE_GEN_MAX_END)
		return moe_fail(MOE_ERR_INVAL, "serve: too many stop strings or end tokens");
	if (p->logprobs < -1 || p->logprobs > MOE_GEN_MAX_TOP_LOGPROB)
		return moe_fail(MOE_ERR_INVAL, "serve: logprobs %d not in [-1, %d]", p->logprobs,
		                MOE_GEN_MAX_TOP_LOGPROB);
	const int32_t n_vocab = moe_model_hparams(e->m)->n_vocab;
	for (size_t i = 0; i < p->n_prompt; i++)
		if (p->prompt[i] < 0 || p->prompt[i] >= n_vocab)
			return moe_fail(MOE_ERR_INVAL,
			                "serve: prompt token %zu: id %d not in [0, %d)", i,
			                p->prompt[i], n_vocab);
	moe_err err;
	moe_gen *g = calloc(1, sizeof *g);
	if (g == NULL)
		return moe_fail(MOE_ERR_NOMEM, "serve: request");
	if (pthread_cond_init(&g->cv, NULL) != 0) {
		free(g);
		return moe_fail(MOE_ERR_SYS, "serve: pthread_cond_init");
	}
	g->e = e;
	g->slot = -1;
	g->kv_blocks = e->kv_blocks_cap == SIZE_MAX ? 0 : blocks;
	g->stop_index = -1;
	g->n_prompt = p->n_prompt;
	g->max_tokens = p->max_tokens;
	g->d_max = e->dmax;
	g->sp = p->sp;
	g->n_end = p->n_end;
	g->logprobs = p->logprobs;
	memcpy(g->end_ids, p->end_ids, sizeof g->end_ids);
	g->prompt = malloc((p->n_prompt + (size_t)p->max_tokens) * sizeof *g->prompt);
	if (g->prompt == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "serve: prompt of %zu tokens", p->n_prompt);
		goto out_free_gen;
	}
	memcpy(g->prompt, p->prompt, p->n_prompt * sizeof *g->prompt);
	for (int i = 0; i < p->n_stops; i++) {
		if ((g->stops[i] = strdup(p->stops[i])) == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "serve: stop string");
			goto out_free_gen;
		}
		g->n_stops = i + 1;
	}
	if ((err = moe_sampler_create(&g->smp, &p->sp, n_vocab)) != MOE_OK ||
	    (err = moe_tok_stream_create(&g->ts, e->tok,
	                                 p->special_text ? MOE_TOK_DECODE_SPECIAL : 0)) != MOE_OK)
		goto out_free_gen;
	if (p->grammar.tables != NULL) {
		const char *trig = p->grammar.trigger;
		if ((err = moe_grammar_matcher_create(&g->gm, p->grammar.tables)) != MOE_OK)
			goto out_free_gen;
		g->g_mask = calloc(((size_t)n_vocab + 31) / 32, sizeof *g->g_mask);
		g->g_logits = malloc((size_t)n_vocab * sizeof *g->g_logits);
		g->gram.trigger = trig != NULL && trig[0] ? strdup(trig) : NULL;
		if (g->g_mask == NULL || g->g_logits == NULL ||
		    (trig != NULL && trig[0] && g->gram.trigger == NULL)) {
			err = moe_fail(MOE_ERR_NOMEM, "serve: the grammar's buffers");
			goto out_free_gen;
		}
		g->g_on = g->gram.trigger == NULL;
	}

	pthread_mutex_lock(&e->mu);
	if (e->stop) {
		pthread_mutex_unlock(&e->mu);
		err = moe_fail(MOE_ERR_STATE, "serve: the engine is stopping");
		goto out_free_gen;
	}
	if (e->n_queued >= e->o.max_queue) {
		pthread_mutex_unlock(&e->mu);
		err = moe_fail(MOE_ERR_BUSY, "serve: %d requests queued already", e->n_queued);
		goto out_free_gen;
	}
	g->refs = 2;
	g->gram.tables = p->grammar.tables; /* the request's hold is the generation's now */
	g->gram.release = p->grammar.release;
	g->gram.release_ctx = p->grammar.release_ctx;
	if (e->queue_tail != NULL)
		e->queue_tail->next = g;
	else
		e->queue_head = g;
	e->queue_tail = g;
	e->n_queued++;
	pthread_cond_signal(&e->work);
	pthread_mutex_unlock(&e->mu);
	*out = g;
	return MOE_OK;

out_free_gen:
	gen_free(g);
	return err;
}

moe_gen_finish moe_gen_wait(moe_gen *g, char **buf, size_t *len, size_t *cap, int timeout_ms)
{
	moe_engine *e = g->e;
	pthread_mutex_lock(&e->mu);
	if (g->taken == g->text_len && g->finish == MOE_GEN_RUNNING && timeout_ms > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += timeout_ms / 1000;
		ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&g->cv, &e->mu, &ts);
	}
	moe_gen_finish fin = g->finish;
	const size_t n = g->text_len - g->taken;
	if (n > 0) {
		if (*len + n + 1 > *cap) {
			size_t c = *cap ? *cap : 256;
			while (c < *len + n + 1)
				c *= 2;
			char *b = realloc(*buf, c);
			if (b == NULL) {
				pthread_mutex_unlock(&e->mu);
				return MOE_GEN_ERROR;
			}
			*buf = b;
			*cap = c;
		}
		memcpy(*buf + *len, g->text + g->taken, n);
		*len += n;
		(*buf)[*len] = '\0';
		g->taken = g->text_len;
	}
	pthread_mutex_unlock(&e->mu);
	return fin;
}

size_t moe_gen_logprobs(moe_gen *g, moe_gen_logprob *out, size_t max, size_t *next, size_t upto)
{
	moe_engine *e = g->e;
	size_t k = 0;
	pthread_mutex_lock(&e->mu);
	while (k < max && *next < g->n_lp && g->lp[*next].offset < upto)
		out[k++] = g->lp[(*next)++];
	pthread_mutex_unlock(&e->mu);
	return k;
}

void moe_gen_cancel(moe_gen *g)
{
	pthread_mutex_lock(&g->e->mu);
	g->cancel = true;
	pthread_cond_signal(&g->e->work);
	pthread_mutex_unlock(&g->e->mu);
}

int moe_gen_cached_tokens(const moe_gen *g)
{
	pthread_mutex_lock(&g->e->mu);
	const int k = (int)g->cached;
	pthread_mutex_unlock(&g->e->mu);
	return k;
}

int moe_gen_stop_index(const moe_gen *g)
{
	pthread_mutex_lock(&g->e->mu);
	const int k = g->finish == MOE_GEN_STOP ? g->stop_index : -1;
	pthread_mutex_unlock(&g->e->mu);
	return k;
}

void moe_gen_usage(const moe_gen *g, int *prompt_tokens, int *completion_tokens)
{
	pthread_mutex_lock(&g->e->mu);
	*prompt_tokens = (int)g->n_prompt;
	*completion_tokens = g->n_gen;
	pthread_mutex_unlock(&g->e->mu);
}

void moe_gen_release(moe_gen *g)
{
	if (g == NULL)
		return;
	moe_engine *e = g->e;
	pthread_mutex_lock(&e->mu);
	g->cancel = true;
	pthread_cond_signal(&e->work);
	gen_unref(g);
	pthread_mutex_unlock(&e->mu);
}

/* ---- the scheduler ------------------------------------------------------------------ */

static bool raw_add(moe_gen *g, const char *s, size_t n)
{
	if (g->raw_len + n + 1 > g->raw_cap) {
		size_t c = g->raw_cap ? g->raw_cap : 256;
		while (c < g->raw_len + n + 1)
			c *= 2;
		char *b = realloc(g->raw, c);
		if (b == NULL)
			return false;
		g->raw = b;
		g->raw_cap = c;
	}
	memcpy(g->raw + g->raw_len, s, n);
	g->raw_len += n;
	g->raw[g->raw_len] = '\0';
	return true;
}

/* Moves raw_out forward over what is safe to show; true if a stop string
 * was reached (then raw_out stops where it starts). */
static bool raw_flush(moe_gen *g, bool final)
{
	size_t at;
	const bool stop = moe_stop_find(&at, g->raw + g->raw_out, g->raw_len - g->raw_out,
	                                (const char *const *)g->stops, g->n_stops);
	if (final && !stop)
		at = g->raw_len - g->raw_out;
	g->raw_out += at;
	for (int k = 0; stop && g->stop_index < 0 && k < g->n_stops; k++)
		if (strncmp(g->raw + g->raw_out, g->stops[k], strlen(g->stops[k])) == 0)
			g->stop_index = k;
	return stop;
}

/* Appends token t's record, computed from the raw logits row, to g's
 * unpublished ones (its text starts where the generated text ends now).
 * False without memory. */
static bool lp_record(moe_gen *g, int32_t t, const float *row)
{
	const int32_t n = moe_model_hparams(g->e->m)->n_vocab;
	if (g->n_slp == g->cap_slp) {
		size_t c = g->cap_slp ? 2 * g->cap_slp : 16;
		moe_gen_logprob *p = realloc(g->slp, c * sizeof(*p));
		if (p == NULL)
			return false;
		g->slp = p;
		g->cap_slp = c;
	}
	moe_gen_logprob *r = &g->slp[g->n_slp++];
	*r = (moe_gen_logprob){.id = t, .offset = g->raw_len};
	/* log-softmax: lse = max + log(sum exp(l - max)), the sum in double;
	 * the best n_top by insertion, ties to the lower id */
	float max = -INFINITY;
	for (int32_t i = 0; i < n; i++)
		max = row[i] > max ? row[i] : max;
	double sum = 0.0;
	for (int32_t i = 0; i < n; i++) {
		if (isnan(row[i]))
			continue;
		sum += exp((double)row[i] - (double)max);
		if (g->logprobs == 0)
			continue;
		int k = r->n_top;
		if (k == g->logprobs && !(row[i] > row[r->top_id[k - 1]]))
			continue;
		if (k < g->logprobs)
			r->n_top++;
		else
			k--;
		while (k > 0 && row[i] > row[r->top_id[k - 1]]) {
			r->top_id[k] = r->top_id[k - 1];
			k--;
		}
		r->top_id[k] = i;
	}
	const double lse = (double)max + log(sum);
	r->logprob = (float)((double)row[t] - lse);
	for (int k = 0; k < r->n_top; k++)
		r->top_logprob[k] = (float)((double)row[r->top_id[k]] - lse);
	return true;
}

/* Under a constraint that refused the token sampled: samples again from
 * row with every token the grammar does not allow at -inf.  False if the
 * grammar allows none (or no memory). */
static bool sample_masked(moe_gen *g, const float *row, int32_t n_vocab, int32_t *t)
{
	if (moe_grammar_matcher_fill_mask(g->gm, g->g_mask) != MOE_OK)
		return false;
	bool any = false;
	for (int32_t i = 0; i < n_vocab; i++) {
		const bool ok = (g->g_mask[i >> 5] >> (i & 31)) & 1u;
		g->g_logits[i] = ok ? row[i] : -INFINITY;
		any |= ok;
	}
	return any && moe_sampler_sample(g->smp, t, g->g_logits) == MOE_OK;
}

/* After token text was added to raw: turns the constraint on once its trigger
 * shows up in the output (the bytes after it are the grammar's first).
 * False if those bytes break the grammar already. */
static bool grammar_trigger(moe_gen *g)
{
	const char *trig = g->gram.trigger;
	const size_t tl = strlen(trig);
	const char *at = memmem(g->raw + g->g_scan, g->raw_len - g->g_scan, trig, tl);
	if (at == NULL) {
		g->g_scan = g->raw_len >= tl ? g->raw_len - tl + 1 : 0;
		return true;
	}
	g->g_on = true;
	const size_t from = (size_t)(at - g->raw) + tl;
	return from == g->raw_len ||
	       moe_grammar_matcher_accept_bytes(g->gm, g->raw + from, g->raw_len - from) == MOE_OK;
}

/* Samples the next token of g from its logits row (the scheduler thread,
 * unlocked).  Sets g->done when the generation ends. */
static void gen_take(moe_gen *g, const float *row)
{
	int32_t t;
	if (moe_sampler_sample(g->smp, &t, row) != MOE_OK) {
		g->done = MOE_GEN_ERROR;
		return;
	}
	if (g->g_on) {
		const int32_t n_vocab = moe_model_hparams(g->e->m)->n_vocab;
		if (!moe_grammar_matcher_token_ok(g->gm, t) &&
		    !sample_masked(g, row, n_vocab, &t)) {
			g->done = MOE_GEN_ERROR; /* the grammar allows nothing here */
			return;
		}
		if (moe_grammar_matcher_accept_token(g->gm, t) != MOE_OK) {
			g->done = MOE_GEN_ERROR;
			return;
		}
	}
	for (int i = 0; i < g->n_end; i++) {
		if (t == g->end_ids[i]) {
			g->done = MOE_GEN_STOP;
			goto out_final;
		}
	}
	moe_sampler_accept(g->smp, t);
	g->prompt[g->n_prompt + (size_t)g->n_sched] = t; /* room for max_tokens */
	g->n_sched++;
	if (g->logprobs >= 0 && !lp_record(g, t, row)) {
		g->done = MOE_GEN_ERROR;
		return;
	}
	const char *piece;
	size_t plen;
	if (moe_tok_stream_push(g->ts, t, &piece, &plen) != MOE_OK || !raw_add(g, piece, plen)) {
		g->done = MOE_GEN_ERROR;
		return;
	}
	if (g->gm != NULL && !g->g_on && !grammar_trigger(g)) {
		g->done = MOE_GEN_ERROR;
		return;
	}
	if (raw_flush(g, false)) {
		g->done = MOE_GEN_STOP;
		g->stop_cut = true;
		return;
	}
	if (g->g_on && moe_grammar_matcher_is_done(g->gm)) {
		g->done = MOE_GEN_STOP; /* the grammar is complete: nothing but the end follows */
		goto out_final;
	}
	if (g->n_sched >= g->max_tokens) {
		g->done = MOE_GEN_LENGTH;
		goto out_final;
	}
	g->next_tok = t;
	return;

out_final:;
	const char *rest;
	size_t rlen;
	if (moe_tok_stream_finish(g->ts, &rest, &rlen) == MOE_OK && raw_add(g, rest, rlen))
		raw_flush(g, true);
}

/* Under mu: frees g's slot and hands the end to the caller. */
static void gen_end(moe_engine *e, moe_gen *g, moe_gen_finish fin)
{
	if (g->slot >= 0) {
		(void)moe_fwd_seq_close(e->f, g->slot);
		e->active[g->slot] = NULL;
		e->n_active--;
		e->kv_blocks_held -= g->kv_blocks;
		g->slot = -1;
	}
	g->finish = fin;
	pthread_cond_broadcast(&g->cv);
	gen_unref(g);
}

/* Under mu: copies the newly safe text to the shared buffer. */
/* Under mu: moves the records whose text has been published (all of them at
 * the end, unless a stop string cut the text) to the shared list. */
static void publish_lp(moe_gen *g)
{
	size_t k = 0;
	const bool all = g->done != MOE_GEN_RUNNING && !g->stop_cut;
	while (k < g->n_slp && (all || g->slp[k].offset < g->raw_out))
		k++;
	if (k == 0)
		return;
	if (g->n_lp + k > g->cap_lp) {
		size_t c = g->cap_lp ? g->cap_lp : 16;
		while (c < g->n_lp + k)
			c *= 2;
		moe_gen_logprob *p = realloc(g->lp, c * sizeof(*p));
		if (p == NULL) {
			g->done = MOE_GEN_ERROR;
			return;
		}
		g->lp = p;
		g->cap_lp = c;
	}
	memcpy(g->lp + g->n_lp, g->slp, k * sizeof(*g->slp));
	g->n_lp += k;
	memmove(g->slp, g->slp + k, (g->n_slp - k) * sizeof(*g->slp));
	g->n_slp -= k;
}

static void publish(moe_gen *g)
{
	const size_t n = g->raw_out - g->pub;
	g->n_gen = g->n_sched;
	publish_lp(g);
	if (n == 0)
		return;
	if (g->text_len + n + 1 > g->text_cap) {
		size_t c = g->text_cap ? g->text_cap : 256;
		while (c < g->text_len + n + 1)
			c *= 2;
		char *b = realloc(g->text, c);
		if (b == NULL) {
			g->done = MOE_GEN_ERROR;
			return;
		}
		g->text = b;
		g->text_cap = c;
	}
	memcpy(g->text + g->text_len, g->raw + g->pub, n);
	g->text_len += n;
	g->text[g->text_len] = '\0';
	g->pub = g->raw_out;
	pthread_cond_broadcast(&g->cv);
}

/* Under mu: drops cancelled requests, admits queued ones into free slots. */
static void admit(moe_engine *e)
{
	for (int s = 0; s < e->o.n_slots; s++)
		if (e->active[s] != NULL && e->active[s]->cancel)
			gen_end(e, e->active[s], MOE_GEN_CANCELLED);
	moe_gen **pp = &e->queue_head;
	e->queue_tail = NULL;
	bool full = false; /* first come, first served: none passes a request that waits */
	while (*pp != NULL) {
		moe_gen *g = *pp;
		if (!g->cancel)
			full = full || e->n_active == e->o.n_slots ||
			       g->kv_blocks > e->kv_blocks_cap - e->kv_blocks_held;
		if (!g->cancel && full) {
			e->queue_tail = g;
			pp = &g->next;
			continue;
		}
		*pp = g->next;
		g->next = NULL;
		e->n_queued--;
		if (g->cancel) {
			gen_end(e, g, MOE_GEN_CANCELLED);
			continue;
		}
		int slot;
		if (moe_fwd_seq_open(e->f, &slot) != MOE_OK) {
			gen_end(e, g, MOE_GEN_ERROR);
			continue;
		}
		g->slot = slot;
		e->slot_seq[slot] = e->next_seq++;
		e->active[slot] = g;
		e->n_active++;
		e->kv_blocks_held += g->kv_blocks;
		for (size_t i = 0; i < g->n_prompt; i++)
			moe_sampler_accept(g->smp, g->prompt[i]);
	}
}

/* Whether slot s's sequence drafts this step: decoding, only its last token
 * taken is not in the cache (so no taken tokens run again), and it may take
 * more than one token; *room is how many past the next. */
static bool may_draft(const moe_engine *e, int s, int *room)
{
	const moe_gen *g = e->active[s];
	if (e->dmax == 0 || g == NULL || g->n_fed < g->n_prompt || g->done != MOE_GEN_RUNNING)
		return false;
	const int64_t hist = (int64_t)g->n_prompt + g->n_sched;
	*room = g->max_tokens - g->n_sched - 1;
	return moe_fwd_seq_len(e->f, s) == hist - 1 && *room > 0;
}

/* --spec mtp: the drafts of every slot that drafts this step, in one call
 * (e->m_n, e->m_d); none where it fails. */
static void mtp_drafts(moe_engine *e)
{
	int n = 0, room;
	for (int s = 0; s < e->o.n_slots; s++) {
		e->m_n[s] = 0;
		if (!may_draft(e, s, &room))
			continue;
		const moe_gen *g = e->active[s];
		e->m_slot[n] = s;
		e->m_tok[n] = g->prompt[g->n_prompt + g->n_sched - 1];
		e->m_max[n++] = room < g->d_max ? room : g->d_max;
	}
	if (n == 0 || moe_fwd_mtp_draft(e->f, e->m_d, e->m_nd, NULL, n, e->m_slot, e->m_tok,
	                                e->m_max, e->dmax) != MOE_OK)
		return;
	for (int j = 0; j < n; j++) {
		const int s = e->m_slot[j];
		e->m_n[s] = e->m_nd[j];
		memcpy(e->d_tok + (size_t)s * (size_t)e->dmax, e->m_d + (size_t)j * (size_t)e->dmax,
		       (size_t)e->m_nd[j] * sizeof *e->m_d);
	}
}

/* Builds the next batch from the active slots (scheduler thread).  Returns
 * the number of tokens. */
static int64_t build_batch(moe_engine *e, int *n_rows)
{
	int64_t n = 0;
	int rows = 0;
	if (e->m_n != NULL)
		mtp_drafts(e);
	/* decoding sequences first: the tokens taken but not in the cache (the
	 * last one taken; after a refused draft with a DeltaNet state, those of
	 * the last step again), then drafts, if none had to run again */
	for (int s = 0; s < e->o.n_slots; s++) {
		e->d_n[s] = 0;
		moe_gen *g = e->active[s];
		if (g == NULL || g->n_fed < g->n_prompt || g->done != MOE_GEN_RUNNING)
			continue;
		const int64_t len = moe_fwd_seq_len(e->f, s);
		const int64_t hist = (int64_t)g->n_prompt + g->n_sched; /* g->prompt[0..hist) */
		for (int64_t p = len; p < hist; p++, n++) {
			e->b_tok[n] = g->prompt[p];
			e->b_slot[n] = s;
			e->b_pos[n] = (int32_t)p;
			e->b_want[n] = p == hist - 1;
		}
		e->b_gen[rows++] = g;
		e->d_from[s] = len;
		e->d_fed[s] = (int)(hist - len);
		int room; /* rows past the next token */
		if (!may_draft(e, s, &room))
			continue;
		int32_t *d = e->d_tok + (size_t)s * (size_t)e->dmax;
		e->d_n[s] = e->m_n != NULL ? e->m_n[s]
		                           : moe_ngram_draft(d, room < g->d_max ? room : g->d_max,
		                                             g->prompt, (size_t)hist);
		for (int i = 0; i < e->d_n[s]; i++, n++) {
			e->b_tok[n] = d[i];
			e->b_slot[n] = s;
			e->b_pos[n] = (int32_t)(hist + i);
			e->b_want[n] = true;
			e->b_gen[rows++] = g;
		}
	}
	/* then prefill pieces, cut at multiples of prefill_chunk (so that a step
	 * ends at every checkpoint of the prefix cache, which is a multiple of
	 * it; outputs do not depend on the cuts) */
	for (int s = 0; s < e->o.n_slots; s++) {
		moe_gen *g = e->active[s];
		if (g == NULL || g->n_fed >= g->n_prompt)
			continue;
		const size_t chunk = (size_t)e->o.prefill_chunk;
		size_t piece = g->n_prompt - g->n_fed;
		if (piece > chunk - g->n_fed % chunk)
			piece = chunk - g->n_fed % chunk;
		/* with a recurrent state, the prompt's checkpoint is before its
		 * last token, so that the same prompt again (a retry, another
		 * sample) finds all but that token */
		if (e->cp_before_last && piece > 1 && g->n_fed + piece == g->n_prompt)
			piece--;
		if (n + (int64_t)piece > e->max_batch)
			continue; /* next step */
		for (size_t i = 0; i < piece; i++) {
			e->b_tok[n] = g->prompt[g->n_fed + i];
			e->b_slot[n] = s;
			e->b_pos[n] = (int32_t)(g->n_fed + i);
			e->b_want[n] = g->n_fed + i + 1 == g->n_prompt;
			if (e->b_want[n])
				e->b_gen[rows++] = g;
			n++;
		}
		g->n_fed += piece;
		g->cp_due =
		    e->pc != NULL && (g->n_fed % (size_t)e->o.cache_block == 0 ||
		                      g->n_fed + (e->cp_before_last ? 1 : 0) == g->n_prompt);
	}
	*n_rows = rows;
	return n;
}

/* The idle hook, called with e->mu held; drops it meanwhile. */
static void run_idle(moe_engine *e)
{
	pthread_mutex_unlock(&e->mu);
	const moe_err err = e->o.idle(e->o.idle_ctx);
	char why[256] = "";
	if (err != MOE_OK)
		snprintf(why, sizeof why, "%s: %s", moe_err_name(err), moe_err_detail());
	pthread_mutex_lock(&e->mu);
	snprintf(e->fail_reason, sizeof e->fail_reason, "%s", why);
}

/* The sampling of one step's rows, spread over the forward pass's pool
 * (each row's generation is its own: sampler, stream and text). */
typedef struct take_task {
	moe_engine *e;
	int rows;
	int32_t n_vocab;
	atomic_int next;
} take_task;

static void take_worker(void *arg, int ith, int nth)
{
	take_task *tk = arg;
	(void)ith;
	(void)nth;
	moe_engine *e = tk->e;
	for (;;) {
		const int r = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
		if (r >= tk->rows)
			return;
		moe_gen *g = e->b_gen[r];
		if (r > 0 && e->b_gen[r - 1] == g)
			continue; /* not a sequence's first row: taken with it */
		/* rows in order while the token taken equals the draft of the next */
		const int s = g->slot;
		const int32_t *d = e->d_tok + (size_t)s * (size_t)e->dmax;
		const bool drafts = g->n_fed >= g->n_prompt && e->d_n[s] > 0;
		int i = 0;
		for (;; i++) {
			gen_take(g, e->logits + (size_t)(r + i) * (size_t)tk->n_vocab);
			if (!drafts || i == e->d_n[s] || g->done != MOE_GEN_RUNNING ||
			    g->next_tok != d[i])
				break;
		}
		if (drafts) {
			e->d_acc[s] = i;
			g->d_max = moe_spec_next_max(g->d_max, e->d_n[s], i, e->dmax);
		}
	}
}

/* After a step's sampling: where a draft was refused, the slot is cut back to
 * the tokens taken (KV) with the state the step kept there (e->rewind), or,
 * with a DeltaNet state and no checkpoints, to its length and state before
 * the step (the taken tokens run again next step).  Scheduler thread,
 * unlocked. */
static void spec_rollback(moe_engine *e)
{
	for (int s = 0; s < e->o.n_slots; s++) {
		moe_gen *g = e->active[s];
		if (g == NULL || e->d_n[s] == 0)
			continue;
		if (e->d_acc[s] == e->d_n[s])
			continue;
		moe_err err;
		if (e->rewind) {
			err = moe_fwd_seq_rewind(e->f, s, e->d_from[s] + e->d_fed[s] + e->d_acc[s]);
		} else if (e->st_size > 0) {
			err = moe_fwd_seq_state_write(e->f, s, e->snap + (size_t)s * e->st_size);
			if (err == MOE_OK)
				err = moe_fwd_seq_set_len(e->f, s, e->d_from[s]);
		} else {
			err =
			    moe_fwd_seq_set_len(e->f, s, e->d_from[s] + e->d_fed[s] + e->d_acc[s]);
		}
		if (err != MOE_OK)
			g->done = MOE_GEN_ERROR;
	}
}

/* ---- the prefix cache ---------------------------------------------------------------- */

static bool kv_in(void *ctx, int64_t p0, int64_t p1, const void *kv)
{
	const moe_gen *g = ctx;
	return moe_fwd_seq_kv_write(g->e->f, g->slot, p0, p1, kv) == MOE_OK;
}

static moe_err kv_out(void *ctx, int64_t p0, int64_t p1, void *kv)
{
	const moe_gen *g = ctx;
	return moe_fwd_seq_kv_read(g->e->f, g->slot, p0, p1, kv);
}

/* A new sequence starts from the longest prefix of its prompt the cache holds
 * (leaving at least its last token to run, whose logits give the first
 * token): KV rows and state into its slot.  Scheduler thread, unlocked. */
static void restore(moe_engine *e, moe_gen *g)
{
	g->looked_up = true;
	const size_t p = moe_prefix_cache_lookup(e->pc, g->prompt, g->n_prompt, g->n_prompt - 1);
	if (p == 0)
		return;
	if (moe_prefix_cache_read(e->pc, p, kv_in, g, e->state) != MOE_OK ||
	    moe_fwd_seq_state_write(e->f, g->slot, e->state) != MOE_OK ||
	    moe_fwd_seq_set_len(e->f, g->slot, (int64_t)p) != MOE_OK) {
		(void)moe_fwd_seq_reset(e->f, g->slot); /* from the start, then */
		return;
	}
	g->n_fed = p;
	g->cached = p;
}

/* Keeps the checkpoint of g's sequence as it stands in its slot: the prompt
 * (or a block of it) after a prefill step, the prompt and the reply when
 * the reply has ended.  Best effort: a failure only loses the checkpoint. */
static void checkpoint(moe_engine *e, moe_gen *g)
{
	const int64_t n = moe_fwd_seq_len(e->f, g->slot);
	if (n <= 0 || moe_fwd_seq_state_read(e->f, g->slot, e->state) != MOE_OK)
		return;
	(void)moe_prefix_cache_insert(e->pc, g->prompt, (size_t)n, kv_out, g, e->state);
}

static void *sched_main(void *arg)
{
	moe_engine *e = arg;
	const int32_t n_vocab = moe_model_hparams(e->m)->n_vocab;
	const size_t kv_pos = moe_fwd_kv_pos_bytes(e->f);
	const size_t st_slot = moe_fwd_state_bytes(e->f) / (size_t)e->o.n_slots;
	pthread_mutex_lock(&e->mu);
	e->win_t0 = moe_now_s();
	while (!e->stop) {
		admit(e);
		if (e->n_active == 0) {
			e->kv_in_use = e->state_in_use = 0;
			if (e->o.idle == NULL) {
				pthread_cond_wait(&e->work, &e->mu);
			} else {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_sec += 1;
				if (pthread_cond_timedwait(&e->work, &e->mu, &ts) == ETIMEDOUT &&
				    e->n_queued == 0 && !e->stop)
					run_idle(e);
			}
			e->win_t0 = moe_now_s(); /* the rate counts busy time only */
			e->win_tokens = 0;
			continue;
		}
		pthread_mutex_unlock(&e->mu);

		if (e->pc != NULL)
			for (int s = 0; s < e->o.n_slots; s++)
				if (e->active[s] != NULL && !e->active[s]->looked_up)
					restore(e, e->active[s]);
		int rows;
		const int64_t n = build_batch(e, &rows);
		int64_t n_prompt_tok = n - (int64_t)rows;
		for (int r = 0; r < rows; r++)
			if (e->b_gen[r]->n_sched == 0)
				n_prompt_tok++; /* the last prompt token of a finished prefill */
		const moe_batch b = {.n_tok = n,
		                     .tokens = e->b_tok,
		                     .slot = e->b_slot,
		                     .pos = e->b_pos,
		                     .logits = e->b_want};
		moe_err err = MOE_OK;
		for (int s = 0; s < e->o.n_slots && e->st_size > 0 && !e->rewind; s++)
			if (e->d_n[s] > 0 && err == MOE_OK)
				err = moe_fwd_seq_state_read(e->f, s,
				                             e->snap + (size_t)s * e->st_size);
		if (err == MOE_OK) {
			if (e->o.trace != NULL)
				moe_trace_writer_step_begin(e->o.trace, &b, e->slot_seq,
				                            e->o.n_slots);
			err = moe_fwd_step(e->f, e->logits, &b);
			if (e->o.trace != NULL)
				moe_trace_writer_step_end(e->o.trace, err == MOE_OK);
		}
		char why[256] = "";
		if (err != MOE_OK)
			snprintf(why, sizeof why, "%s: %s", moe_err_name(err), moe_err_detail());
		if (e->o.after_step != NULL)
			e->o.after_step(e->o.after_step_ctx, e);
		int n_new = 0;
		for (int r = 0; r < rows; r++) {
			e->b_before[r] = e->b_gen[r]->n_sched;
			if (err != MOE_OK)
				e->b_gen[r]->done = MOE_GEN_ERROR;
		}
		if (err == MOE_OK && rows > 0) {
			take_task tk = {.e = e, .rows = rows, .n_vocab = n_vocab};
			atomic_init(&tk.next, 0);
			if (rows == 1)
				take_worker(&tk, 0, 1);
			else
				moe_pool_run(moe_fwd_pool(e->f), take_worker, &tk);
		}
		for (int r = 0; r < rows; r++)
			if (r == 0 || e->b_gen[r - 1] != e->b_gen[r])
				n_new += e->b_gen[r]->n_sched - e->b_before[r];
		uint64_t drafted = 0, accepted = 0;
		if (err == MOE_OK && e->dmax > 0) {
			spec_rollback(e);
			for (int s = 0; s < e->o.n_slots; s++) {
				drafted += (uint64_t)e->d_n[s];
				accepted += e->d_n[s] > 0 ? (uint64_t)e->d_acc[s] : 0;
			}
		}
		if (e->pc != NULL && err == MOE_OK) {
			/* checkpoints: prompts that reached one, replies that ended */
			for (int s = 0; s < e->o.n_slots; s++) {
				moe_gen *g = e->active[s];
				if (g == NULL)
					continue;
				if (g->cp_due || g->done == MOE_GEN_STOP ||
				    g->done == MOE_GEN_LENGTH)
					checkpoint(e, g);
				g->cp_due = false;
			}
		}

		pthread_mutex_lock(&e->mu);
		snprintf(e->fail_reason, sizeof e->fail_reason, "%s", why);
		if (err != MOE_OK) /* the batch's sequences are in an unknown state */
			for (int64_t t = 0; t < n; t++)
				if (e->active[e->b_slot[t]] != NULL)
					e->active[e->b_slot[t]]->done = MOE_GEN_ERROR;
		for (int s = 0; s < e->o.n_slots; s++) {
			moe_gen *g = e->active[s];
			if (g == NULL)
				continue;
			publish(g);
			if (g->done != MOE_GEN_RUNNING)
				gen_end(e, g, g->done);
		}
		e->prompt_tokens += (uint64_t)n_prompt_tok;
		e->gen_tokens += (uint64_t)n_new;
		e->drafted += drafted;
		e->accepted += accepted;
		e->win_tokens += (uint64_t)n_new;
		e->steps++;
		const double now = moe_now_s();
		if (now - e->win_t0 >= 1.0) {
			e->rate = (double)e->win_tokens / (now - e->win_t0);
			e->win_tokens = 0;
			e->win_t0 = now;
		}
		size_t pos = 0;
		for (int s = 0; s < e->o.n_slots; s++)
			if (e->active[s] != NULL)
				pos += (size_t)moe_fwd_seq_len(e->f, s);
		e->kv_in_use = pos * kv_pos;
		e->state_in_use = (size_t)e->n_active * st_slot;
	}
	/* stopping: everything still here ends with an error */
	for (int s = 0; s < e->o.n_slots; s++)
		if (e->active[s] != NULL)
			gen_end(e, e->active[s], MOE_GEN_ERROR);
	while (e->queue_head != NULL) {
		moe_gen *g = e->queue_head;
		e->queue_head = g->next;
		gen_end(e, g, MOE_GEN_ERROR);
	}
	e->queue_tail = NULL;
	e->n_queued = 0;
	pthread_mutex_unlock(&e->mu);
	return NULL;
}

/* Frees the engine's buffers and the engine itself. */
static void free_engine(moe_engine *e)
{
	free(e->expert_tokens);
	free(e->slot_seq);
	free(e->active);
	free(e->b_tok);
	free(e->b_slot);
	free(e->b_pos);
	free(e->b_want);
	free(e->b_gen);
	free(e->b_before);
	free(e->logits);
	free(e->d_tok);
	free(e->d_n);
	free(e->d_acc);
	free(e->d_from);
	free(e->d_fed);
	free(e->m_slot);
	free(e->m_tok);
	free(e->m_max);
	free(e->m_nd);
	free(e->m_d);
	free(e->m_n);
	free(e->snap);
	free(e);
}

/* ---- engine ------------------------------------------------------------------------- */

moe_err moe_engine_create(moe_engine **out, const moe_model *m, const moe_tokenizer *tok,
                          const moe_engine_opts *opts)
{
	moe_engine_opts o = *opts;
	const moe_hparams *hp = moe_model_hparams(m);
	if (o.n_slots < 1 || o.n_slots > 1024 || o.max_queue < 0 || o.prefill_chunk < 1 ||
	    o.n_ctx < 0)
		return moe_fail(MOE_ERR_INVAL, "serve: parallel %d, queue %d, prefill chunk %d",
		                o.n_slots, o.max_queue, o.prefill_chunk);
	/* KV blocks are taken as sequences grow: the trained length costs nothing up front */
	if (o.n_ctx == 0)
		o.n_ctx =
		    hp->n_ctx_train > 0 && hp->n_ctx_train < (1 << 22) ? hp->n_ctx_train : 1 << 22;
	if (o.cache_block < 1)
		o.cache_block = 1024;
	o.cache_block = (o.cache_block + o.prefill_chunk - 1) / o.prefill_chunk * o.prefill_chunk;
	moe_err err;
	moe_engine *e = calloc(1, sizeof *e);
	if (e == NULL)
		return moe_fail(MOE_ERR_NOMEM, "serve: engine");
	e->m = m;
	e->tok = tok;
	e->o = o;
	if (o.draft_max < 1 || o.draft_max > 256) {
		free(e);
		return moe_fail(MOE_ERR_INVAL, "serve: draft-max %d (1..256)", o.draft_max);
	}
	e->dmax = o.spec == MOE_SPEC_NONE ? 0 : o.draft_max;
	/* a decoding sequence runs at most dmax + 2 tokens: its last step's
	 * taken tokens again and the next, or the next and dmax drafts */
	e->max_batch = o.prefill_chunk + o.n_slots * (e->dmax + 2);
	e->max_rows = o.n_slots * (e->dmax + 1);
	const size_t ns = (size_t)o.n_slots, dm = (size_t)(e->dmax > 0 ? e->dmax : 1);
	e->d_tok = malloc(ns * dm * sizeof *e->d_tok);
	e->d_n = calloc(ns, sizeof *e->d_n);
	e->d_acc = calloc(ns, sizeof *e->d_acc);
	e->d_from = calloc(ns, sizeof *e->d_from);
	e->d_fed = calloc(ns, sizeof *e->d_fed);
	if (e->dmax > 0 && o.spec == MOE_SPEC_MTP) {
		e->m_slot = malloc(ns * sizeof *e->m_slot);
		e->m_tok = malloc(ns * sizeof *e->m_tok);
		e->m_max = malloc(ns * sizeof *e->m_max);
		e->m_nd = malloc(ns * sizeof *e->m_nd);
		e->m_d = malloc(ns * dm * sizeof *e->m_d);
		e->m_n = calloc(ns, sizeof *e->m_n);
		if (e->m_slot == NULL || e->m_tok == NULL || e->m_max == NULL || e->m_nd == NULL ||
		    e->m_d == NULL || e->m_n == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "serve: MTP draft buffers");
			goto out_free_bufs;
		}
	}
	e->expert_tokens =
	    calloc((size_t)hp->n_layer * (size_t)hp->n_expert, sizeof *e->expert_tokens);
	e->active = calloc((size_t)o.n_slots, sizeof *e->active);
	e->slot_seq = calloc((size_t)o.n_slots, sizeof *e->slot_seq);
	e->b_tok = malloc((size_t)e->max_batch * sizeof *e->b_tok);
	e->b_slot = malloc((size_t)e->max_batch * sizeof *e->b_slot);
	e->b_pos = malloc((size_t)e->max_batch * sizeof *e->b_pos);
	e->b_want = malloc((size_t)e->max_batch * sizeof *e->b_want);
	e->b_gen = malloc((size_t)e->max_rows * sizeof *e->b_gen);
	e->b_before = malloc((size_t)e->max_rows * sizeof *e->b_before);
	e->logits = malloc((size_t)e->max_rows * (size_t)hp->n_vocab * sizeof *e->logits);
	if (e->expert_tokens == NULL || e->active == NULL || e->slot_seq == NULL ||
	    e->b_tok == NULL || e->b_slot == NULL || e->b_pos == NULL || e->b_want == NULL ||
	    e->b_gen == NULL || e->b_before == NULL || e->logits == NULL || e->d_tok == NULL ||
	    e->d_n == NULL || e->d_acc == NULL || e->d_from == NULL || e->d_fed == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "serve: engine buffers");
		goto out_free_bufs;
	}

	moe_fwd_opts fo;
	moe_fwd_opts_default(&fo);
	fo.n_slots = o.n_slots;
	fo.n_ctx = o.n_ctx;
	fo.max_batch = e->max_batch;
	fo.n_threads = o.n_threads;
	fo.kv_type = o.kv_type;
	fo.kv_budget_bytes = o.kv_budget_bytes;
	fo.mtp = e->m_n != NULL;
	fo.keep_states = e->dmax;
	fo.experts = o.experts; /* NULL: the forward pass's local experts */
	if ((err = moe_fwd_create(&e->f, m, &fo)) != MOE_OK)
		goto out_free_bufs;
	e->st_size = moe_fwd_state_size(e->f);
	e->rewind = e->dmax > 0 && moe_fwd_keep_states(e->f) >= e->dmax;
	if (e->dmax > 0 && e->st_size > 0 && !e->rewind &&
	    (e->snap = malloc(ns * e->st_size)) == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "serve: %zu state snapshots of %zu bytes", ns,
		               e->st_size);
		goto out_free_fwd;
	}
	const size_t kv_cap = moe_fwd_kv_capacity(e->f);
	const size_t kv_blk = moe_fwd_kv_pos_bytes(e->f) * MOE_FWD_KV_BLOCK;
	e->kv_blocks_cap = kv_cap == SIZE_MAX || kv_blk == 0 ? SIZE_MAX : kv_cap / kv_blk;
	/* count every layer's routed tokens on their way to that backend */
	e->inner = moe_fwd_experts(e->f);
	const moe_expert_backend counting = {
	    .ctx = e, .start = count_start, .finish = count_finish};
	moe_fwd_set_experts(e->f, &counting);
	if (o.overlap != NULL && o.trace == NULL) { /* the trace sees every layer whole */
		e->inner_b = *o.overlap;
		const moe_expert_backend counting_b = {
		    .ctx = e, .start = count_start_b, .finish = count_finish_b};
		moe_fwd_set_overlap(e->f, &counting_b);
	}
	if (o.trace != NULL) {
		/* the trace records what the counting hook counts, before it */
		const moe_expert_backend traced = moe_trace_writer_backend(o.trace, &counting);
		moe_fwd_set_experts(e->f, &traced);
	}
	if (o.cache_ram > 0) {
		moe_prefix_opts po = {.ram_bytes = o.cache_ram,
		                      .dir = o.cache_dir,
		                      .kv_pos_bytes = moe_fwd_kv_pos_bytes(e->f),
		                      .state_bytes = moe_fwd_state_size(e->f),
		                      .block = (uint32_t)o.cache_block};
		memcpy(po.identity, o.cache_identity, sizeof po.identity);
		e->state = malloc(po.state_bytes > 0 ? po.state_bytes : 1);
		if (e->state == NULL) {
			err = moe_fail(MOE_ERR_NOMEM, "serve: a state buffer");
			goto out_free_fwd;
		}
		if ((err = moe_prefix_cache_create(&e->pc, &po)) != MOE_OK)
			goto out_free_fwd;
		e->cp_before_last = po.state_bytes > 0;
	}

	if (pthread_mutex_init(&e->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "serve: pthread_mutex_init");
		goto out_free_fwd;
	}
	if (pthread_cond_init(&e->work, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "serve: pthread_cond_init");
		goto out_free_mutex;
	}
	int rc = pthread_create(&e->thread, NULL, sched_main, e);
	if (rc != 0) {
		err = moe_fail(MOE_ERR_SYS, "serve: pthread_create: %s", strerror(rc));
		goto out_free_cond;
	}
	*out = e;
	return MOE_OK;

out_free_cond:
	pthread_cond_destroy(&e->work);
out_free_mutex:
	pthread_mutex_destroy(&e->mu);
out_free_fwd:
	moe_prefix_cache_destroy(e->pc);
	free(e->state);
	moe_fwd_destroy(e->f);
out_free_bufs:
	free_engine(e);
	return err;
}

void moe_engine_stop(moe_engine *e)
{
	pthread_mutex_lock(&e->mu);
	const bool joined = e->joined;
	e->stop = true;
	e->joined = true;
	pthread_cond_signal(&e->work);
	pthread_mutex_unlock(&e->mu);
	if (!joined)
		pthread_join(e->thread, NULL);
}

void moe_engine_destroy(moe_engine *e)
{
	if (e == NULL)
		return;
	moe_engine_stop(e);
	pthread_cond_destroy(&e->work);
	pthread_mutex_destroy(&e->mu);
	moe_prefix_cache_destroy(e->pc);
	free(e->state);
	moe_fwd_destroy(e->f);
	free_engine(e);
}

/* ---- metrics ----------------------------------------------------------------------- */

int moe_engine_workers(moe_engine *e, moe_engine_worker *out, int max)
{
	return e->o.workers != NULL ? e->o.workers(e->o.workers_ctx, out, max) : 0;
}

void moe_engine_metrics(moe_engine *e, FILE *out)
{
	const moe_hparams *hp = moe_model_hparams(e->m);
	pthread_mutex_lock(&e->mu);
	const uint64_t pt = e->prompt_tokens, gt = e->gen_tokens, steps = e->steps;
	const uint64_t drafted = e->drafted, accepted = e->accepted;
	const double rate = moe_now_s() - e->win_t0 > 5.0 ? 0.0 : e->rate;
	const int queued = e->n_queued, active = e->n_active;
	const size_t kv = e->kv_in_use, st = e->state_in_use;
	pthread_mutex_unlock(&e->mu);

	fprintf(out,
	        "# HELP moemesh_prompt_tokens_total Prompt tokens prefilled.\n"
	        "# TYPE moemesh_prompt_tokens_total counter\nmoemesh_prompt_tokens_total %llu\n"
	        "# HELP moemesh_generated_tokens_total Tokens generated.\n"
	        "# TYPE moemesh_generated_tokens_total counter\n"
	        "moemesh_generated_tokens_total %llu\n"
	        "# HELP moemesh_steps_total Forward steps run.\n"
	        "# TYPE moemesh_steps_total counter\nmoemesh_steps_total %llu\n"
	        "# HELP moemesh_generated_tokens_per_second Generation rate over the last "
	        "second.\n"
	        "# TYPE moemesh_generated_tokens_per_second gauge\n"
	        "moemesh_generated_tokens_per_second %.3f\n"
	        "# HELP moemesh_queue_depth Requests waiting for a slot.\n"
	        "# TYPE moemesh_queue_depth gauge\nmoemesh_queue_depth %d\n"
	        "# HELP moemesh_active_sequences Sequences holding a slot.\n"
	        "# TYPE moemesh_active_sequences gauge\nmoemesh_active_sequences %d\n"
	        "# HELP moemesh_slots Sequence slots.\n"
	        "# TYPE moemesh_slots gauge\nmoemesh_slots %d\n"
	        "# HELP moemesh_kv_bytes_in_use KV cache bytes of the positions in use.\n"
	        "# TYPE moemesh_kv_bytes_in_use gauge\nmoemesh_kv_bytes_in_use %zu\n"
	        "# HELP moemesh_state_bytes_in_use DeltaNet state bytes of the slots in use.\n"
	        "# TYPE moemesh_state_bytes_in_use gauge\nmoemesh_state_bytes_in_use %zu\n",
	        (unsigned long long)pt, (unsigned long long)gt, (unsigned long long)steps, rate,
	        queued, active, e->o.n_slots, kv, st);

	if (e->dmax > 0)
		fprintf(out,
		        "# HELP moemesh_spec_drafted_tokens_total Tokens drafted (n-gram) and "
		        "checked.\n"
		        "# TYPE moemesh_spec_drafted_tokens_total counter\n"
		        "moemesh_spec_drafted_tokens_total %llu\n"
		        "# HELP moemesh_spec_accepted_tokens_total Drafted tokens taken.\n"
		        "# TYPE moemesh_spec_accepted_tokens_total counter\n"
		        "moemesh_spec_accepted_tokens_total %llu\n",
		        (unsigned long long)drafted, (unsigned long long)accepted);

	fprintf(out, "# HELP moemesh_worker_rtt_seconds Round trip of one expert dispatch.\n"
	             "# TYPE moemesh_worker_rtt_seconds histogram\n");
	for (int w = 0; w < RTT_WORKERS; w++) {
		uint64_t cum = 0, c[RTT_BUCKETS + 1];
		for (int b = 0; b <= RTT_BUCKETS; b++) {
			c[b] = atomic_load_explicit(&e->rtt_count[w][b], memory_order_relaxed);
			cum += c[b];
		}
		if (cum == 0)
			continue;
		uint64_t run = 0;
		for (int b = 0; b < RTT_BUCKETS; b++) {
			run += c[b];
			fprintf(out,
			        "moemesh_worker_rtt_seconds_bucket{worker=\"%d\",le=\"%g\"} %llu\n",
			        w, rtt_le[b], (unsigned long long)run);
		}
		fprintf(out,
		        "moemesh_worker_rtt_seconds_bucket{worker=\"%d\",le=\"+Inf\"} %llu\n"
		        "moemesh_worker_rtt_seconds_sum{worker=\"%d\"} %.6f\n"
		        "moemesh_worker_rtt_seconds_count{worker=\"%d\"} %llu\n",
		        w, (unsigned long long)cum, w,
		        (double)atomic_load_explicit(&e->rtt_sum_us[w], memory_order_relaxed) *
		            1e-6,
		        w, (unsigned long long)cum);
	}

	if (e->pc != NULL) {
		const moe_prefix_stats ps = moe_prefix_cache_stats(e->pc);
		const struct {
			const char *name, *type, *help;
			double v;
		} m[] = {
		    {"prefix_cache_lookups_total", "counter", "Prompts looked up.",
		     (double)ps.lookups},
		    {"prefix_cache_hits_total", "counter",
		     "Prompts that started from a cached prefix.", (double)ps.hits},
		    {"prefix_cache_tokens_reused_total", "counter",
		     "Prompt tokens not prefilled thanks to the cache.", (double)ps.tokens_reused},
		    {"prefix_cache_bytes", "gauge", "KV rows and states held in memory.",
		     (double)ps.bytes},
		    {"prefix_cache_checkpoint_bytes", "gauge",
		     "Of which recurrent-state checkpoints.", (double)ps.state_bytes},
		    {"prefix_cache_checkpoints", "gauge", "Checkpoints held in memory.",
		     (double)ps.checkpoints},
		    {"prefix_cache_evictions_total", "counter", "Entries dropped for the budget.",
		     (double)ps.evictions},
		    {"prefix_cache_disk_reads_total", "counter",
		     "Blocks read back from the disk tier.", (double)ps.disk_hits},
		    {"prefix_cache_disk_writes_total", "counter",
		     "Blocks written to the disk tier.", (double)ps.disk_writes},
		    {"prefix_cache_disk_rejects_total", "counter",
		     "Disk blocks that failed their checks.", (double)ps.disk_rejects},
		};
		for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
			fprintf(out,
			        "# HELP moemesh_%s %s\n# TYPE moemesh_%s %s\nmoemesh_%s %.0f\n",
			        m[i].name, m[i].help, m[i].name, m[i].type, m[i].name, m[i].v);
	}

	if (e->o.metrics != NULL)
		e->o.metrics(e->o.metrics_ctx, out);

	fprintf(out, "# HELP moemesh_expert_tokens_total Token rows routed to each expert.\n"
	             "# TYPE moemesh_expert_tokens_total counter\n");
	for (int il = 0; il < hp->n_layer; il++)
		for (int x = 0; x < hp->n_expert; x++) {
			const uint64_t c = atomic_load_explicit(
			    &e->expert_tokens[(size_t)il * (size_t)hp->n_expert + (size_t)x],
			    memory_order_relaxed);
			if (c > 0)
				fprintf(out,
				        "moemesh_expert_tokens_total{layer=\"%d\",expert=\"%d\"} "
				        "%llu\n",
				        il, x, (unsigned long long)c);
		}
}
