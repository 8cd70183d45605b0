/* cmd_run.c - `moemesh run`: generate text from a prompt on one machine,
 * streaming it to stdout, with timing and memory figures on stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "coordinator/coordinator.h"
#include "core/core.h"
#include "model/model.h"

#define MAX_STOPS 16

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: moemesh run -m MODEL.gguf (-p PROMPT | --tokens ID,ID,...) [-n N]\n"
	        "                   [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
	        "                   [--repeat-penalty R] [--presence-penalty P]\n"
	        "                   [--frequency-penalty F] [--penalty-last-n N] [--seed S]\n"
	        "                   [--stop STR]... [--ignore-eos] [--threads N]\n"
	        "                   [--kv f16|f32|q8_0|q4_0] [--kv-budget MIB] [--ctx N]\n"
	        "                   [--batch N] [--spec none|ngram|mtp] [--draft-max N]\n"
	        "                   [--trace FILE [--trace-no-weights]]\n"
	        "                   [--log-level error|warn|info|debug]\n\n"
	        "Generates up to N tokens (default 128) after the prompt and streams the\n"
	        "text to stdout; stops at the end-of-sequence token (unless --ignore-eos)\n"
	        "or a stop string.  --temp 0 is greedy (the default is 0.8 with top-k 40,\n"
	        "top-p 0.95, min-p 0.05).  --kv picks the KV cache type (default f16),\n"
	        "--kv-budget caps its blocks (0: no cap).  Prompt and decode speed and the\n"
	        "bytes of KV cache and recurrent state go to stderr; with a cluster, one\n"
	        "line of statistics per worker.  --spec ngram drafts up to --draft-max\n"
	        "tokens (default 8) from the sequence's own earlier tokens and checks them in\n"
	        "one step: the same output, in fewer steps when the text repeats itself;\n"
	        "--spec mtp drafts them with the model's MTP block (qwen35moe and qwen3next\n"
	        "files that have one).\n"
	        "--trace FILE writes the routing of every step (the prompt is step 0):\n"
	        "per layer, the experts and weights chosen for each token (moemesh trace).\n\n"
	        "%s",
	        moe_cluster_usage());
}

static int fail(moe_err err)
{
	fprintf(stderr, "moemesh run: %s: %s\n", moe_err_name(err), moe_err_detail());
	return 1;
}

typedef struct run_args {
	const char *model;
	const char *prompt;
	const char *tokens;
	int n_gen;
	bool ignore_eos;
	const char *stops[MAX_STOPS];
	int n_stops;
	moe_spec_mode spec;
	int draft_max;
	const char *trace;
	bool trace_no_weights;
	moe_sampler_params sp;
	moe_fwd_opts fo;
	moe_cluster_opts co;
} run_args;

/* Returns 0, or 2 on a usage error, 3 for --help. */
static int parse_args(run_args *a, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)
			return 3;
		const int ll = moe_cli_log_level_arg(&i, argc, argv, argv[0]);
		if (ll != 0) {
			if (ll < 0)
				return 2;
			continue;
		}
		if (strcmp(s, "--ignore-eos") == 0) {
			a->ignore_eos = true;
			continue;
		}
		if (strcmp(s, "--trace-no-weights") == 0) {
			a->trace_no_weights = true;
			continue;
		}
		moe_err ce = moe_cluster_parse_arg(&a->co, &i, argc, argv);
		if (ce == MOE_OK)
			continue;
		if (ce != MOE_ERR_NOT_FOUND) {
			fprintf(stderr, "moemesh run: %s\n", moe_err_detail());
			return 2;
		}
		if (v == NULL)
			return 2;
		i++;
		if (strcmp(s, "-m") == 0)
			a->model = v;
		else if (strcmp(s, "-p") == 0)
			a->prompt = v;
		else if (strcmp(s, "--tokens") == 0)
			a->tokens = v;
		else if (strcmp(s, "--trace") == 0)
			a->trace = v;
		else if (strcmp(s, "-n") == 0)
			bad = moe_parse_int(&a->n_gen, v, 0, 1 << 24);
		else if (strcmp(s, "--temp") == 0)
			bad = moe_parse_float(&a->sp.temp, v);
		else if (strcmp(s, "--top-k") == 0)
			bad = moe_parse_int(&a->sp.top_k, v, 0, 1 << 30);
		else if (strcmp(s, "--top-p") == 0)
			bad = moe_parse_float(&a->sp.top_p, v);
		else if (strcmp(s, "--min-p") == 0)
			bad = moe_parse_float(&a->sp.min_p, v);
		else if (strcmp(s, "--repeat-penalty") == 0)
			bad = moe_parse_float(&a->sp.repeat_penalty, v);
		else if (strcmp(s, "--presence-penalty") == 0)
			bad = moe_parse_float(&a->sp.presence_penalty, v);
		else if (strcmp(s, "--frequency-penalty") == 0)
			bad = moe_parse_float(&a->sp.frequency_penalty, v);
		else if (strcmp(s, "--penalty-last-n") == 0)
			bad = moe_parse_int(&a->sp.penalty_last_n, v, 0, 1 << 20);
		else if (strcmp(s, "--seed") == 0) {
			char *end;
			errno = 0;
			a->sp.seed = strtoull(v, &end, 10);
			bad = end == v || *end || errno != 0;
		} else if (strcmp(s, "--stop") == 0) {
			if (a->n_stops == MAX_STOPS)
				return 2;
			a->stops[a->n_stops++] = v;
		} else if (strcmp(s, "--threads") == 0)
			bad = moe_parse_int(&a->fo.n_threads, v, 1, 1024);
		else if (strcmp(s, "--ctx") == 0)
			bad = moe_parse_int(&a->fo.n_ctx, v, 1, 1 << 24);
		else if (strcmp(s, "--batch") == 0)
			bad = moe_parse_int(&a->fo.max_batch, v, 1, 1 << 20);
		else if (strcmp(s, "--kv") == 0)
			bad = moe_fwd_kv_type_parse(&a->fo.kv_type, v) != MOE_OK;
		else if (strcmp(s, "--spec") == 0) {
			if (moe_spec_mode_parse(&a->spec, v) != MOE_OK) {
				fprintf(stderr, "moemesh run: %s\n", moe_err_detail());
				return 2;
			}
		} else if (strcmp(s, "--draft-max") == 0)
			bad = moe_parse_int(&a->draft_max, v, 1, 256);
		else if (strcmp(s, "--kv-budget") == 0) {
			long mib = 0;
			bad = moe_parse_long(&mib, v, 0, 1L << 30);
			a->fo.kv_budget_bytes = (size_t)mib << 20;
		} else
			return 2;
		if (bad)
			return 2;
	}
	if (a->model == NULL || (a->prompt == NULL) == (a->tokens == NULL))
		return 2;
	return 0;
}

/* One forward step, recorded in the trace if there is one. */
static moe_err step(moe_fwd *f, float *logits, const moe_batch *b, moe_trace_writer *tw)
{
	if (tw != NULL)
		moe_trace_writer_step_begin(tw, b, NULL, 1);
	const moe_err err = moe_fwd_step(f, logits, b);
	if (tw != NULL)
		moe_trace_writer_step_end(tw, err == MOE_OK);
	return err;
}

/* Text of the generation so far and how much of it went to stdout. */
typedef struct out_text {
	char *buf;
	size_t len, cap, emitted;
} out_text;

static moe_err text_add(out_text *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *b = realloc(t->buf, cap);
		if (b == NULL)
			return moe_fail(MOE_ERR_NOMEM, "run: output text of %zu bytes", cap);
		t->buf = b;
		t->cap = cap;
	}
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	t->buf[t->len] = '\0';
	return MOE_OK;
}

/* Emits what is safe; returns true when a stop string was reached. */
static bool text_flush(out_text *t, const run_args *a, bool final)
{
	size_t at;
	const bool stop =
	    moe_stop_find(&at, t->buf + t->emitted, t->len - t->emitted, a->stops, a->n_stops);
	if (final && !stop)
		at = t->len - t->emitted;
	fwrite(t->buf + t->emitted, 1, at, stdout);
	fflush(stdout);
	t->emitted += at;
	return stop;
}

int moe_cmd_run(int argc, char **argv)
{
	run_args a = {.n_gen = 128, .draft_max = 8};
	moe_sampler_params_default(&a.sp);
	moe_fwd_opts_default(&a.fo);
	int pr = parse_args(&a, argc, argv);
	if (pr == 3) {
		usage(stdout);
		return 0;
	}
	if (pr != 0) {
		usage(stderr);
		return 2;
	}

	int rc = 1;
	moe_err err;
	moe_model *m = NULL;
	moe_tokenizer *tok = NULL;
	moe_tok_stream *ts = NULL;
	moe_fwd *f = NULL;
	moe_cluster *cl = NULL;
	moe_sampler *smp = NULL;
	moe_trace_writer *tw = NULL;
	int32_t *prompt = NULL, *pos = NULL, *slots = NULL;
	int32_t *hist = NULL, *feed = NULL, *fpos = NULL, *fslot = NULL, *draft = NULL;
	bool *fwant = NULL;
	void *snap = NULL;
	float *logits = NULL;
	size_t n_prompt = 0;
	out_text text = {0};

	if ((err = moe_model_open(&m, a.model)) != MOE_OK)
		goto out_fail;
	const moe_hparams *hp = moe_model_hparams(m);
	if ((err = moe_spec_mode_check(a.spec, moe_model_has_mtp(m), a.model)) != MOE_OK)
		goto out_fail;
	a.fo.mtp = a.spec == MOE_SPEC_MTP;
	a.fo.keep_states = a.spec == MOE_SPEC_NONE ? 0 : a.draft_max;
	if ((err = moe_tokenizer_from_gguf(&tok, moe_model_gguf(m))) != MOE_OK ||
	    (err = moe_tok_stream_create(&ts, tok, 0)) != MOE_OK)
		goto out_fail;
	if (a.prompt != NULL)
		err = moe_tokenizer_encode(&prompt, &n_prompt, tok, a.prompt, strlen(a.prompt),
		                           MOE_TOK_ENCODE_ADD_SPECIAL);
	else if (moe_arg_tokens(&prompt, &n_prompt, a.tokens) != 0)
		err = moe_fail(MOE_ERR_INVAL, "run: bad --tokens list");
	if (err != MOE_OK)
		goto out_fail;
	if (n_prompt == 0) {
		err = moe_fail(MOE_ERR_INVAL, "run: the prompt is empty");
		goto out_fail;
	}
	if (a.fo.n_ctx == 0)
		a.fo.n_ctx = (int)(n_prompt + (size_t)a.n_gen);
	/* lives as long as the cluster: a repair re-loads experts later */
	moe_cli_progress prog;
	if (moe_cluster_wanted(&a.co)) {
		moe_cli_progress_init(&prog, NULL);
		a.co.on_load = moe_cli_progress_cb;
		a.co.on_load_ctx = &prog;
		err = moe_cluster_create(&cl, m, a.model, &a.co);
		moe_cli_progress_end(&prog);
		if (err != MOE_OK)
			goto out_fail;
		a.fo.experts = moe_cluster_backend(cl);
		a.fo.overlap = moe_cluster_overlap_backend(cl);
	}
	if ((err = moe_fwd_create(&f, m, &a.fo)) != MOE_OK ||
	    (err = moe_sampler_create(&smp, &a.sp, hp->n_vocab)) != MOE_OK)
		goto out_fail;
	if (cl)
		moe_cluster_set_pool(cl, moe_fwd_pool(f));
	if (a.trace != NULL) {
		if ((err = moe_cli_trace_create(&tw, m, a.trace, !a.trace_no_weights)) != MOE_OK)
			goto out_fail;
		const moe_expert_backend inner = moe_fwd_experts(f);
		const moe_expert_backend traced = moe_trace_writer_backend(tw, &inner);
		moe_fwd_set_experts(f, &traced);
		moe_fwd_set_overlap(f, NULL); /* the trace sees every layer whole */
	}
	logits = malloc((size_t)hp->n_vocab * sizeof(float));
	pos = malloc(n_prompt * sizeof *pos);
	slots = calloc(n_prompt, sizeof *slots);
	if (logits == NULL || pos == NULL || slots == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "run: buffers");
		goto out_fail;
	}
	int slot;
	if ((err = moe_fwd_seq_open(f, &slot)) != MOE_OK)
		goto out_fail;
	const int32_t eos = moe_tokenizer_eos(tok) >= 0 ? moe_tokenizer_eos(tok) : hp->eos_id;

	/* prompt: one step, logits of the last position only */
	bool *want = calloc(n_prompt, sizeof *want);
	if (want == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "run: buffers");
		goto out_fail;
	}
	want[n_prompt - 1] = true;
	for (size_t i = 0; i < n_prompt; i++) {
		pos[i] = (int32_t)i;
		slots[i] = slot;
		moe_sampler_accept(smp, prompt[i]);
	}
	const double t0 = moe_now_s();
	const moe_batch pb = {.n_tok = (int64_t)n_prompt,
	                      .tokens = prompt,
	                      .slot = slots,
	                      .pos = pos,
	                      .logits = want};
	err = step(f, logits, &pb, tw);
	free(want);
	if (err != MOE_OK)
		goto out_fail;
	const double t1 = moe_now_s();

	/* Decode.  hist holds the prompt and the tokens taken; rows the logits
	 * of the last step's wanted positions: the token just run, then each
	 * draft.  A step runs feed = hist[len..] (tokens not yet in the cache)
	 * and the drafts; row r is used while the tokens sampled from rows 0..r-1
	 * equalled drafts 0..r-1.  Where a draft is refused, the cache is cut
	 * back to the tokens taken and the state to the one the step kept at
	 * that length (moe_fwd_seq_rewind); where the context keeps none, the
	 * DeltaNet state goes back to its snapshot from before the step and the
	 * taken tokens of that step run again at the start of the next one. */
	const int dmax = a.spec == MOE_SPEC_NONE ? 0 : a.draft_max;
	const size_t st_size = moe_fwd_state_size(f);
	/* a refused draft goes back to the state the step kept (no tokens again) */
	const bool rewind = dmax > 0 && moe_fwd_keep_states(f) >= dmax;
	hist = malloc((n_prompt + (size_t)a.n_gen + 1) * sizeof *hist);
	feed = malloc((n_prompt + (size_t)a.n_gen + (size_t)dmax + 1) * sizeof *feed);
	fpos = malloc((n_prompt + (size_t)a.n_gen + (size_t)dmax + 1) * sizeof *fpos);
	fwant = calloc(n_prompt + (size_t)a.n_gen + (size_t)dmax + 1, sizeof *fwant);
	draft = malloc(((size_t)dmax + 1) * sizeof *draft);
	fslot = malloc((n_prompt + (size_t)a.n_gen + (size_t)dmax + 1) * sizeof *fslot);
	if (hist == NULL || feed == NULL || fpos == NULL || fwant == NULL || draft == NULL ||
	    fslot == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "run: buffers");
		goto out_fail;
	}
	if (dmax > 0) {
		float *more =
		    realloc(logits, (size_t)(dmax + 1) * (size_t)hp->n_vocab * sizeof *more);
		if (more == NULL || (st_size > 0 && (snap = malloc(st_size)) == NULL)) {
			err = moe_fail(MOE_ERR_NOMEM, "run: logits of %d drafts", dmax);
			goto out_fail;
		}
		logits = more;
	}
	memcpy(hist, prompt, n_prompt * sizeof *hist);
	size_t n_hist = n_prompt;
	int n_done = 0, n_steps = 0, n_rows_used = 0, row = 0, n_draft = 0, d_max = dmax;
	long n_drafted = 0, n_accepted = 0;
	int64_t step_from = (int64_t)n_prompt - 1; /* position of the last step's first token */
	for (; n_done < a.n_gen; n_done++) {
		int32_t t;
		if ((err = moe_sampler_sample(
		         smp, &t, logits + (size_t)row * (size_t)hp->n_vocab)) != MOE_OK)
			goto out_fail;
		if (n_steps > 0)
			n_rows_used++;
		if (t == eos && !a.ignore_eos)
			break;
		moe_sampler_accept(smp, t);
		hist[n_hist++] = t;
		const char *piece;
		size_t plen;
		if ((err = moe_tok_stream_push(ts, t, &piece, &plen)) != MOE_OK ||
		    (err = text_add(&text, piece, plen)) != MOE_OK)
			goto out_fail;
		if (text_flush(&text, &a, false)) {
			n_done++;
			break;
		}
		if (n_done + 1 == a.n_gen)
			continue; /* no logits needed after the last token */
		if (row < n_draft && t == draft[row]) {
			row++; /* the draft was right: its row gives the next token */
			n_accepted++;
			continue;
		}
		/* a new step from the first position whose token is not in the
		 * cache as it will stand */
		int64_t from = (int64_t)n_hist - 1;
		if (row < n_draft && rewind) {
			if ((err = moe_fwd_seq_rewind(f, slot, from)) != MOE_OK)
				goto out_fail;
		} else if (row < n_draft) {
			if (st_size > 0) {
				if ((err = moe_fwd_seq_state_write(f, slot, snap)) != MOE_OK)
					goto out_fail;
				from = step_from;
			}
			if ((err = moe_fwd_seq_set_len(f, slot, from)) != MOE_OK)
				goto out_fail;
		}
		int remain = a.n_gen - n_done - 2; /* tokens after the next one that need logits */
		/* no drafts while taken tokens run again: their state is not
		 * snapshotted */
		d_max = moe_spec_next_max(d_max, n_draft, row, dmax);
		const int d_room = remain < d_max ? remain : d_max;
		n_draft = 0;
		if (from < (int64_t)n_hist - 1 || d_room <= 0)
			;
		else if (a.spec == MOE_SPEC_MTP)
			err = moe_fwd_mtp_draft(f, draft, &n_draft, NULL, 1, &(int32_t){slot},
			                        &hist[n_hist - 1], &d_room, dmax);
		else
			n_draft = moe_ngram_draft(draft, d_room, hist, n_hist);
		if (err != MOE_OK)
			goto out_fail;
		if (n_draft > 0 && st_size > 0 && !rewind &&
		    (err = moe_fwd_seq_state_read(f, slot, snap)) != MOE_OK)
			goto out_fail;
		int64_t nf = 0;
		for (int64_t p = from; p < (int64_t)n_hist; p++, nf++) {
			feed[nf] = hist[p];
			fwant[nf] = p == (int64_t)n_hist - 1;
		}
		for (int i = 0; i < n_draft; i++, nf++) {
			feed[nf] = draft[i];
			fwant[nf] = true;
		}
		for (int64_t i = 0; i < nf; i++) {
			fpos[i] = (int32_t)(from + i);
			fslot[i] = slot;
		}
		const moe_batch db = {
		    .n_tok = nf, .tokens = feed, .slot = fslot, .pos = fpos, .logits = fwant};
		if ((err = step(f, logits, &db, tw)) != MOE_OK)
			goto out_fail;
		step_from = from;
		n_drafted += n_draft;
		row = 0;
		n_steps++;
	}
	const double t2 = moe_now_s();
	const char *rest;
	size_t rlen;
	if (moe_tok_stream_finish(ts, &rest, &rlen) == MOE_OK &&
	    text_add(&text, rest, rlen) == MOE_OK)
		text_flush(&text, &a, true);
	printf("\n");
	fflush(stdout);
	fprintf(stderr,
	        "prompt: %zu tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f "
	        "tok/s, %d steps)\n",
	        n_prompt, t1 - t0, (double)n_prompt / (t1 - t0), n_done, t2 - t1,
	        n_steps > 0 ? (double)n_rows_used / (t2 - t1) : 0.0, n_steps);
	if (dmax > 0)
		fprintf(stderr,
		        "spec: %s, %ld drafted, %ld accepted (%.1f %%), %.2f tokens per step\n",
		        moe_spec_mode_name(a.spec), n_drafted, n_accepted,
		        n_drafted > 0 ? 100.0 * (double)n_accepted / (double)n_drafted : 0.0,
		        n_steps > 0 ? (double)n_rows_used / n_steps : 0.0);
	fprintf(stderr,
	        "memory: KV cache %zu bytes held (%s, %zu bytes per position, in blocks of %d "
	        "positions), recurrent state %zu bytes (n_ctx %d)\n",
	        moe_fwd_kv_bytes(f), moe_fwd_kv_type_name(a.fo.kv_type), moe_fwd_kv_pos_bytes(f),
	        MOE_FWD_KV_BLOCK, moe_fwd_state_bytes(f), a.fo.n_ctx);
	if (cl)
		moe_cluster_print_stats(cl, stderr);
	rc = 0;
	/* a trace that could not be written makes the run fail, after its text */
	if (tw != NULL && moe_cli_trace_close(tw, a.trace) != MOE_OK)
		rc = 1;
	goto out_free;

out_fail:
	rc = fail(err);
out_free:
	free(text.buf);
	free(logits);
	free(pos);
	free(slots);
	free(prompt);
	free(hist);
	free(feed);
	free(fpos);
	free(fslot);
	free(fwant);
	free(draft);
	free(snap);
	moe_sampler_destroy(smp);
	moe_trace_writer_destroy(tw);
	moe_fwd_destroy(f);
	if ((err = moe_cluster_shutdown(cl)) != MOE_OK)
		rc = fail(err); /* a spawned worker crashed, even if failover hid it */
	moe_cluster_destroy(cl);
	moe_tok_stream_destroy(ts);
	moe_tokenizer_destroy(tok);
	moe_model_destroy(m);
	return rc;
}
