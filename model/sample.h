/*
 * sample.h - choosing the next token from logits: greedy, or penalties ->
 * top-k -> top-p -> min-p -> temperature -> a draw from the model's own PRNG
 * (xoshiro256**, seeded through splitmix64, so a seed gives the same tokens
 * on every machine).  Also stop-string matching for streamed text.
 */
#ifndef MOE_SAMPLE_H
#define MOE_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ---- PRNG --------------------------------------------------------------------- */

typedef struct moe_rng {
	uint64_t s[4];
} moe_rng;

void moe_rng_seed(moe_rng *r, uint64_t seed);
uint64_t moe_rng_u64(moe_rng *r);
double moe_rng_f64(moe_rng *r); /* uniform in [0, 1), 53 bits */

/* ---- sampler ------------------------------------------------------------------- */

typedef struct moe_sampler_params {
	float temp;  /* <= 0: greedy (argmax, lowest id on ties) */
	int top_k;   /* keep the k most likely; <= 0 = off */
	float top_p; /* keep the smallest set with mass >= top_p; >= 1 = off */
	float min_p; /* keep p >= min_p * p_max; <= 0 = off */
	float
	    repeat_penalty; /* divide positive / multiply negative logits of seen tokens; 1 = off */
	float presence_penalty;  /* subtract from the logit of every seen token; 0 = off */
	float frequency_penalty; /* subtract count * this; 0 = off */
	int penalty_last_n;      /* how many of the last accepted tokens count as seen */
	uint64_t seed;
} moe_sampler_params;

/* temp 0.8, top_k 40, top_p 0.95, min_p 0.05, penalties off, last_n 64, seed 0. */
void moe_sampler_params_default(moe_sampler_params *p);

typedef struct moe_sampler moe_sampler;

/* Errors: MOE_ERR_INVAL (n_vocab < 1, a parameter is NaN or negative where it
 * must not be), MOE_ERR_NOMEM. */
moe_err moe_sampler_create(moe_sampler **out, const moe_sampler_params *p, int32_t n_vocab);
void moe_sampler_destroy(moe_sampler *s); /* NULL is a no-op */

/* Records tok (prompt or generated) in the penalty history. */
void moe_sampler_accept(moe_sampler *s, int32_t tok);

/* Clears the history and re-seeds the PRNG. */
void moe_sampler_reset(moe_sampler *s);

/* Picks a token from logits [n_vocab] (not modified) into *out; does not
 * accept it.  MOE_ERR_BAD_VALUE if no logit is a number. */
moe_err moe_sampler_sample(moe_sampler *s, int32_t *out, const float *logits);

/* Index of the largest of x[0..n) (lowest index on ties, NaN ignored); 0 if
 * all are NaN. */
int32_t moe_argmax(const float *x, int64_t n);

/* ---- speculative drafting ------------------------------------------------------
 * Drafted tokens are checked by running them in the step that would have run
 * the last token alone, wanting the logits of every position: the sampler
 * picks each position's token from its row as it would have without drafts
 * (the forward pass gives the same logits however a sequence is cut into
 * steps), and the drafts are taken while they equal what it picked.  So the
 * output is the same bytes with and without drafting, greedy or sampled. */

typedef enum moe_spec_mode {
	MOE_SPEC_NONE,
	MOE_SPEC_NGRAM, /* prompt lookup: the tokens after the latest earlier match */
	MOE_SPEC_MTP,   /* the model's MTP block (moe_fwd_mtp_draft) */
} moe_spec_mode;

/* "none", "ngram" or "mtp" into *out; MOE_ERR_INVAL naming the text
 * otherwise. */
moe_err moe_spec_mode_parse(moe_spec_mode *out, const char *s);

/* The name above of a mode. */
const char *moe_spec_mode_name(moe_spec_mode m);

/* MOE_OK if model_has_mtp or mode is not MOE_SPEC_MTP; else
 * MOE_ERR_UNSUPPORTED, saying that the file (path) has no MTP block. */
moe_err moe_spec_mode_check(moe_spec_mode mode, bool model_has_mtp, const char *path);

/* Prompt lookup: the longest n in [MOE_NGRAM_MIN, MOE_NGRAM_MAX] for which
 * the last n tokens of hist[0..len) occurred earlier in it; of that n, the
 * latest earlier occurrence.  Copies the tokens that followed it (at most
 * max, not past len) to draft and returns how many (0: no match, or
 * max <= 0). */
#define MOE_NGRAM_MIN 2
#define MOE_NGRAM_MAX 4
int moe_ngram_draft(int32_t *draft, int max, const int32_t *hist, size_t len);

/* How many tokens the next draft of a sequence may have, from cur (its last
 * bound), what its last draft had and how many of them were taken: twice cur
 * (at most dmax) after a draft taken whole, one more than were taken after
 * one refused, cur after none; so a sequence whose text stops repeating
 * spends little on drafts, and one that repeats soon drafts dmax again. */
int moe_spec_next_max(int cur, int drafted, int accepted, int dmax);

/* ---- stop strings --------------------------------------------------------------- */

/* Looks for the stop strings in text[0..len).  Returns true if one occurs, with
 * *at = the offset where the earliest one starts.  Otherwise returns false and
 * *at = how many leading bytes are safe to emit: len minus the longest tail of
 * text that is a proper prefix of a stop string (it might still grow into
 * one).  Empty stop strings are ignored. */
bool moe_stop_find(size_t *at, const char *text, size_t len, const char *const *stops, int n_stops);

#endif
