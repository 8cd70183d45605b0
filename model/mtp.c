/*
 * mtp.c - the MTP (nextn) block of qwen35moe and qwen3next files, run for
 * drafting (forward.h): the catch-up after each step's trunk that keeps the
 * block's KV in step with the trunk's, and the greedy draft chain.  The math is llama.cpp's
 * graph_mtp: x = eh_proj [rmsnorm(embed(token), enorm); rmsnorm(h, hnorm)], one gated
 * full-attention block with MoE and shared expert, then the shared head norm
 * (else output_norm) and the head (else output).  The block's routed experts
 * always run locally (workers serve the trunk's only).
 */
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"
#include "model/sample.h"

/* The MTP block on the chunk's f->n rows (slot, pos, runs and rope set): the
 * tokens, and the hidden input rows h [n][n_embd]; the block's output in
 * f->x. */
static moe_err mtp_block(moe_fwd *f, const int32_t *tokens, const float *h)
{
	const moe_model *m = f->m;
	const moe_hparams *hp = &m->hp;
	const int il = hp->n_layer;
	const moe_nextn_w *N = &m->layers[il].nextn;
	const int64_t n = f->n, E = hp->n_embd;
	const moe_wmat *emb = N->embed_tokens.data != NULL ? &N->embed_tokens : &m->tok_embd;
	const size_t emb_row = moe_row_size(emb->type, E);
	moe_err err;

	for (int64_t t = 0; t < n; t++) {
		const char *row = (const char *)emb->data + (size_t)tokens[t] * emb_row;
		float *cat = f->mtp_cat + t * 2 * E;
		if ((err = moe_dequantize_row(emb->type, f->y + t * E, row, E)) != MOE_OK)
			return err;
		moe_rmsnorm(cat, f->y + t * E, N->enorm, E, hp->rms_eps);
		moe_rmsnorm(cat + E, h + t * E, N->hnorm, E, hp->rms_eps);
	}
	if ((err = moe_fwd_matmul(f, f->x, &N->eh_proj, f->mtp_cat, n)) != MOE_OK)
		return err;
	/* the block's experts are the coordinator's: the local backend */
	const moe_expert_backend saved = f->backend;
	f->backend = f->local_backend;
	err = moe_fwd_layer(f, il);
	f->backend = saved;
	return err;
}

moe_err moe_mtp_catch_up(moe_fwd *f, const int32_t *tokens)
{
	const moe_hparams *hp = &f->m->hp;
	const int64_t E = hp->n_embd;
	const size_t row = (size_t)E * sizeof(float);
	for (int64_t t = 0; t < f->n; t++)
		moe_rmsnorm(f->mtp_hn + t * E, f->x + t * E, f->m->out_norm, E, hp->rms_eps);
	/* a row's hidden input is the row before it in its slot's run, or the
	 * slot's last from an earlier step */
	for (int r = 0; r < f->n_runs; r++) {
		const int s = f->run_slot[r];
		float *last = f->mtp_h + (size_t)s * (size_t)E;
		for (int32_t i = f->runs[r]; i < f->runs[r + 1]; i++) {
			const int32_t t = f->order[i];
			memcpy(f->mtp_hin + t * E,
			       i == f->runs[r] ? last : f->mtp_hn + f->order[i - 1] * E, row);
		}
		memcpy(last, f->mtp_hn + f->order[f->runs[r + 1] - 1] * E, row);
		/* the first row, if the last draft's first pass ran it: the same
		 * token, position and hidden input, so the same KV row (the block
		 * is batch-invariant); its output is not used */
		for (int32_t i = f->runs[r]; i < f->runs[r + 1]; i++)
			f->mtp_tok[f->order[i]] = tokens[f->order[i]];
		const int32_t t0 = f->order[f->runs[r]];
		if (f->mtp_pre[s] == f->pos[t0] && f->mtp_pre_tok[s] == tokens[t0])
			f->mtp_tok[t0] = -1;
		f->mtp_pre[s] = -1;
		/* the rewind checkpoints' last rows (the row ends each one) */
		for (int32_t i = f->runs[r]; i < f->runs[r + 1] && f->ck != NULL; i++) {
			const int32_t t = f->order[i];
			float *c = moe_fwd_ck(f, s, (int64_t)f->pos[t] + 1);
			if (c != NULL)
				memcpy(c + f->ck_floats - (size_t)E, f->mtp_hn + t * E, row);
		}
	}
	/* the rows that run, packed (in place: row k <= t) */
	int64_t k = 0;
	for (int64_t t = 0; t < f->n; t++) {
		if (f->mtp_tok[t] < 0)
			continue;
		f->mtp_slot[k] = f->slot[t];
		f->mtp_pos[k] = f->pos[t];
		f->mtp_tok[k] = tokens[t];
		if (k != t)
			memcpy(f->mtp_hin + k * E, f->mtp_hin + t * E, row);
		k++;
	}
	if (k == f->n)
		return mtp_block(f, tokens, f->mtp_hin);
	const int64_t n = f->n;
	const int32_t *slot = f->slot, *pos = f->pos;
	f->n = k;
	f->slot = f->mtp_slot;
	f->pos = f->mtp_pos;
	for (int64_t t = 0; t < k; t++)
		moe_fwd_rope_row(f, t, f->pos[t]);
	moe_fwd_group_runs(f);
	moe_err err = k > 0 ? mtp_block(f, f->mtp_tok, f->mtp_hin) : MOE_OK;
	f->n = n;
	f->slot = slot;
	f->pos = pos;
	for (int64_t t = 0; t < n; t++)
		moe_fwd_rope_row(f, t, f->pos[t]);
	moe_fwd_group_runs(f);
	return err;
}

moe_err moe_fwd_mtp_draft(moe_fwd *f, int32_t *draft, int *n_draft, float *logits1, int n_seq,
                          const int32_t *slots, const int32_t *tokens, const int *max, int stride)
{
	const moe_model *m = f->m;
	const moe_hparams *hp = &m->hp;
	const int64_t E = hp->n_embd, V = hp->n_vocab;
	if (!f->o.mtp)
		return moe_fail(MOE_ERR_UNSUPPORTED,
		                "fwd: MTP drafting in a context created without it");
	if (n_seq < 0 || n_seq > f->o.max_batch || stride < 0)
		return moe_fail(MOE_ERR_INVAL, "fwd: MTP draft of %d sequences (max_batch %d)",
		                n_seq, f->o.max_batch);
	for (int s = 0; s < f->o.n_slots; s++) {
		f->next[s] = f->len[s];
		f->mtp_row[s] = -1;
	}
	int rounds = 0;
	for (int j = 0; j < n_seq; j++) {
		const int32_t s = slots[j];
		n_draft[j] = 0;
		if (s < 0 || s >= f->o.n_slots || !f->open[s] || f->mtp_row[s] >= 0)
			return moe_fail(MOE_ERR_INVAL,
			                "fwd: MTP draft %d: slot %d is not open or repeated", j, s);
		if (tokens[j] < 0 || tokens[j] >= V || max[j] < 0 || max[j] > stride)
			return moe_fail(
			    MOE_ERR_INVAL,
			    "fwd: MTP draft %d: token %d or max %d (stride %d) out of range", j,
			    tokens[j], max[j], stride);
		f->mtp_row[s] = j;
		/* drafts at positions len + 1 .. len + mx, all within n_ctx */
		int64_t mx = (int64_t)f->o.n_ctx - 1 - f->len[s];
		mx = mx < 0 ? 0 : mx > max[j] ? max[j] : mx;
		f->next[s] = f->len[s] + mx;
		rounds = mx > rounds ? (int)mx : rounds;
	}
	moe_err err = moe_fwd_take_memory(f);
	if (err != MOE_OK)
		return err;

	const moe_layer_w *L = &m->layers[hp->n_layer];
	const float *head_norm =
	    L->nextn.shared_head_norm != NULL ? L->nextn.shared_head_norm : m->out_norm;
	const moe_wmat *head =
	    L->nextn.shared_head_head.data != NULL ? &L->nextn.shared_head_head : &m->output;
	const size_t row = (size_t)E * sizeof(float);
	for (int i = 0; i < rounds && err == MOE_OK; i++) {
		/* the rows of the sequences still drafting; a row's hidden input is
		 * the slot's last trunk row, then the block's output of the pass before */
		int64_t n = 0;
		for (int j = 0; j < n_seq; j++) {
			const int32_t s = slots[j];
			if (f->next[s] - f->len[s] <= i)
				continue;
			const int prev = f->mtp_row[s];
			f->mtp_tok[n] =
			    i == 0 ? tokens[j] : draft[(size_t)j * (size_t)stride + i - 1];
			f->mtp_slot[n] = s;
			f->mtp_pos[n] = (int32_t)(f->len[s] + i);
			memcpy(f->mtp_hin + n * E,
			       i == 0 ? f->mtp_h + (size_t)s * (size_t)E : f->mtp_g + prev * E,
			       row);
			f->mtp_row[s] = (int32_t)n++;
		}
		f->n = n;
		f->slot = f->mtp_slot;
		f->pos = f->mtp_pos;
		for (int64_t t = 0; t < n; t++)
			moe_fwd_rope_row(f, t, f->mtp_pos[t]);
		moe_fwd_group_runs(f);
		if ((err = mtp_block(f, f->mtp_tok, f->mtp_hin)) != MOE_OK)
			break;
		for (int64_t t = 0; t < n; t++)
			moe_rmsnorm(f->mtp_g + t * E, f->x + t * E, head_norm, E, hp->rms_eps);
		if ((err = moe_fwd_matmul(f, f->mtp_logits, head, f->mtp_g, n)) != MOE_OK)
			break;
		for (int j = 0; j < n_seq; j++) {
			const int32_t s = slots[j];
			if (f->next[s] - f->len[s] <= i)
				continue;
			const float *lg = f->mtp_logits + (size_t)f->mtp_row[s] * (size_t)V;
			draft[(size_t)j * (size_t)stride + i] = moe_argmax(lg, V);
			if (i == 0 && logits1 != NULL)
				memcpy(logits1 + (size_t)j * (size_t)V, lg,
				       (size_t)V * sizeof(float));
			if (i == 0) { /* the next step's first catch-up row, done */
				f->mtp_pre[s] = f->len[s];
				f->mtp_pre_tok[s] = tokens[j];
			}
		}
	}
	for (int j = 0; j < n_seq; j++)
		n_draft[j] = err == MOE_OK ? (int)(f->next[slots[j]] - f->len[slots[j]]) : 0;
	return err;
}
