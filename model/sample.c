/* sample.c - token sampling and stop strings (see sample.h). */
#include "model/sample.h"
#include "model/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- PRNG: xoshiro256** seeded by splitmix64 ---------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void moe_rng_seed(moe_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

uint64_t moe_rng_u64(moe_rng *r)
{
	uint64_t *s = r->s;
	const uint64_t result = rotl(s[1] * 5, 7) * 9;
	const uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double moe_rng_f64(moe_rng *r)
{
	return (double)(moe_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- sampler ------------------------------------------------------------------------- */

typedef struct cand {
	int32_t id;
	float logit;
	float p;
} cand;

struct moe_sampler {
	moe_sampler_params p;
	int32_t n_vocab;
	moe_rng rng;
	cand *c;        /* [n_vocab] */
	float *w;       /* [n_vocab] penalised logits, then draw weights */
	int32_t *count; /* [n_vocab] occurrences in the window, zero between calls */
	int32_t *hist;  /* ring of the last penalty_last_n accepted tokens */
	int64_t n_hist; /* tokens accepted so far */
};

void moe_sampler_params_default(moe_sampler_params *p)
{
	*p = (moe_sampler_params){
	    .temp = 0.8f,
	    .top_k = 40,
	    .top_p = 0.95f,
	    .min_p = 0.05f,
	    .repeat_penalty = 1.0f,
	    .presence_penalty = 0.0f,
	    .frequency_penalty = 0.0f,
	    .penalty_last_n = 64,
	    .seed = 0,
	};
}

moe_err moe_sampler_create(moe_sampler **out, const moe_sampler_params *p, int32_t n_vocab)
{
	if (n_vocab < 1 || isnan(p->temp) || isnan(p->top_p) || isnan(p->min_p) ||
	    !(p->repeat_penalty > 0.0f) || !isfinite(p->presence_penalty) ||
	    !isfinite(p->frequency_penalty) || p->penalty_last_n < 0 ||
	    p->penalty_last_n > (1 << 20))
		return moe_fail(MOE_ERR_INVAL,
		                "sampler: bad parameters (n_vocab %d, temp %g, top_p %g, min_p %g, "
		                "repeat_penalty %g, last_n %d)",
		                n_vocab, (double)p->temp, (double)p->top_p, (double)p->min_p,
		                (double)p->repeat_penalty, p->penalty_last_n);
	moe_sampler *s = calloc(1, sizeof *s);
	if (s == NULL)
		return moe_fail(MOE_ERR_NOMEM, "sampler: allocating");
	s->p = *p;
	s->n_vocab = n_vocab;
	s->c = malloc((size_t)n_vocab * sizeof *s->c);
	s->w = malloc((size_t)n_vocab * sizeof *s->w);
	s->count = calloc((size_t)n_vocab, sizeof *s->count);
	s->hist = malloc(((size_t)p->penalty_last_n + 1) * sizeof *s->hist);
	if (s->c == NULL || s->w == NULL || s->count == NULL || s->hist == NULL) {
		moe_sampler_destroy(s);
		return moe_fail(MOE_ERR_NOMEM, "sampler: allocating for %d tokens", n_vocab);
	}
	moe_rng_seed(&s->rng, p->seed);
	*out = s;
	return MOE_OK;
}

void moe_sampler_destroy(moe_sampler *s)
{
	if (s == NULL)
		return;
	free(s->c);
	free(s->w);
	free(s->count);
	free(s->hist);
	free(s);
}

void moe_sampler_accept(moe_sampler *s, int32_t tok)
{
	if (s->p.penalty_last_n > 0)
		s->hist[s->n_hist % s->p.penalty_last_n] = tok;
	s->n_hist++;
}

void moe_sampler_reset(moe_sampler *s)
{
	s->n_hist = 0;
	moe_rng_seed(&s->rng, s->p.seed);
}

int32_t moe_argmax(const float *x, int64_t n)
{
	int32_t best = 0;
	float bv = -INFINITY;
	bool any = false;
	for (int64_t i = 0; i < n; i++) {
		if (isnan(x[i]))
			continue;
		if (!any || x[i] > bv) {
			best = (int32_t)i;
			bv = x[i];
			any = true;
		}
	}
	return best;
}

static int cand_cmp(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* Moves the k first candidates in cand_cmp order to c[0..k), in no
 * particular order; 0 < k < n. A heap of the k best so far with the worst
 * of them at its root. */
static void heap_down(cand *h, int32_t k, int32_t i)
{
	for (;;) {
		int32_t w = i, l = 2 * i + 1, r = l + 1;
		if (l < k && cand_cmp(&h[l], &h[w]) > 0)
			w = l;
		if (r < k && cand_cmp(&h[r], &h[w]) > 0)
			w = r;
		if (w == i)
			return;
		cand t = h[i];
		h[i] = h[w];
		h[w] = t;
		i = w;
	}
}

static void select_top(cand *c, int32_t n, int32_t k)
{
	for (int32_t i = k / 2 - 1; i >= 0; i--)
		heap_down(c, k, i);
	for (int32_t i = k; i < n; i++) {
		if (cand_cmp(&c[i], &c[0]) < 0) { /* better than the worst kept */
			cand t = c[0];
			c[0] = c[i];
			c[i] = t;
			heap_down(c, k, 0);
		}
	}
}

/* p = softmax(logit / temp) over c[0..n), returns nothing; n >= 1. */
static void cand_softmax(cand *c, int32_t n, float temp)
{
	float max = c[0].logit;
	for (int32_t i = 1; i < n; i++)
		if (c[i].logit > max)
			max = c[i].logit;
	double sum = 0.0;
	for (int32_t i = 0; i < n; i++) {
		c[i].p = expf((c[i].logit - max) / temp);
		sum += c[i].p;
	}
	for (int32_t i = 0; i < n; i++)
		c[i].p = (float)(c[i].p / sum);
}

static void apply_penalties(moe_sampler *s)
{
	const moe_sampler_params *p = &s->p;
	if (p->penalty_last_n == 0 || s->n_hist == 0 ||
	    (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f &&
	     p->frequency_penalty == 0.0f))
		return;
	const int64_t n = s->n_hist < p->penalty_last_n ? s->n_hist : p->penalty_last_n;
	for (int64_t i = 0; i < n; i++) {
		const int32_t t = s->hist[i];
		if (t >= 0 && t < s->n_vocab)
			s->count[t]++;
	}
	for (int64_t i = 0; i < n; i++) {
		const int32_t t = s->hist[i];
		if (t < 0 || t >= s->n_vocab || s->count[t] == 0)
			continue;
		float *l = &s->w[t];
		*l = *l > 0.0f ? *l / p->repeat_penalty : *l * p->repeat_penalty;
		*l -= (float)s->count[t] * p->frequency_penalty + p->presence_penalty;
		s->count[t] = 0; /* each token once; also leaves count zeroed */
	}
}

static moe_err draw(moe_sampler *s, int32_t *out, int32_t n);

/* Without top-k, the nucleus of top_p < 1 usually lies in the few best
 * candidates: this finds the best NUCLEUS_TRY of them (sorted) and walks
 * their probabilities under the softmax over all n, as the full sort would.
 * Where they reach top_p it cuts c to the nucleus (*n = its size) and
 * returns true: the same cut as sorting everything. Otherwise it returns
 * false (c reordered, nothing lost) and the caller sorts everything. */
enum { NUCLEUS_TRY = 256 };

static bool nucleus_of_top(cand *c, int32_t *n, float top_p)
{
	if (!(top_p < 1.0f) || *n <= NUCLEUS_TRY)
		return false;
	float max = c[0].logit;
	for (int32_t i = 1; i < *n; i++)
		max = c[i].logit > max ? c[i].logit : max;
	double sum = 0.0;
	for (int32_t i = 0; i < *n; i++)
		sum += expf(c[i].logit - max);
	select_top(c, *n, NUCLEUS_TRY);
	qsort(c, NUCLEUS_TRY, sizeof *c, cand_cmp);
	double cum = 0.0;
	for (int32_t i = 0; i < NUCLEUS_TRY; i++) {
		cum += expf(c[i].logit - max) / sum;
		if (cum >= top_p) {
			*n = i + 1;
			return true;
		}
	}
	return false;
}

/* No cut that needs an order (top_k off, top_p 1): draws from
 * softmax(logit / temp) over the non-NaN penalised logits in s->w (with
 * min_p, those at or above max + log(min_p)), walking them in id order.  The
 * weights exp((l - max) / temp) (moe_exp_weights) are summed in double and
 * the draw is the first id whose running sum passes u * sum: no candidates
 * are built. */
static moe_err draw_unordered(moe_sampler *s, int32_t *out)
{
	float *w = s->w;
	const int32_t n = s->n_vocab;
	float max = -INFINITY;
	bool any = false;
	for (int32_t i = 0; i < n; i++) {
		if (isnan(w[i]))
			continue;
		any = true;
		max = w[i] > max ? w[i] : max;
	}
	if (!any)
		return moe_fail(MOE_ERR_BAD_VALUE, "sampler: every logit is NaN");
	const float lim = s->p.min_p > 0.0f ? max + logf(s->p.min_p) : -INFINITY;
	const float temp = s->p.temp;
	moe_exp_weights(w, n, max, temp, lim); /* NaN fails the comparison: 0 */
	/* four running sums (independent add chains), then combined */
	double part[4] = {0.0, 0.0, 0.0, 0.0};
	int32_t i = 0;
	for (; i + 4 <= n; i += 4)
		for (int k = 0; k < 4; k++)
			part[k] += w[i + k];
	for (; i < n; i++)
		part[0] += w[i];
	const double sum = (part[0] + part[1]) + (part[2] + part[3]);
	int32_t last = n - 1;
	while (last >= 0 && !(w[last] > 0.0f))
		last--;
	const double target = moe_rng_f64(&s->rng) * sum;
	double cum = 0.0;
	for (int32_t j = 0; j < n; j++) {
		cum += w[j];
		if (target < cum) {
			*out = j;
			return MOE_OK;
		}
	}
	*out = last; /* the target beyond the rounded total */
	return MOE_OK;
}

moe_err moe_sampler_sample(moe_sampler *s, int32_t *out, const float *logits)
{
	const moe_sampler_params *p = &s->p;
	int32_t n = 0;
	memcpy(s->w, logits, (size_t)s->n_vocab * sizeof *s->w);
	apply_penalties(s);

	if (!(p->temp > 0.0f)) {
		int32_t best = moe_argmax(s->w, s->n_vocab);
		if (isnan(s->w[best]))
			return moe_fail(MOE_ERR_BAD_VALUE, "sampler: every logit is NaN");
		*out = best;
		return MOE_OK;
	}
	if (p->top_k <= 0 && !(p->top_p < 1.0f))
		return draw_unordered(s, out);

	/* keep the numbers */
	for (int32_t i = 0; i < s->n_vocab; i++)
		if (!isnan(s->w[i]))
			s->c[n++] = (cand){.id = i, .logit = s->w[i], .p = 0.0f};
	if (n == 0)
		return moe_fail(MOE_ERR_BAD_VALUE, "sampler: every logit is NaN");

	/* Sorted by logit (descending, then id) as far as the cuts need. */
	bool nucleus_done = false;
	if (p->top_k > 0 && p->top_k < n) {
		/* the same top_k as a full sort would keep (cand_cmp is a total
		 * order), in O(n log k) instead of sorting the whole vocabulary */
		select_top(s->c, n, p->top_k);
		n = p->top_k;
		qsort(s->c, (size_t)n, sizeof *s->c, cand_cmp);
	} else if (p->top_k <= 0 && nucleus_of_top(s->c, &n, p->top_p)) {
		nucleus_done = true;
	} else {
		qsort(s->c, (size_t)n, sizeof *s->c, cand_cmp);
	}
	cand_softmax(s->c, n, 1.0f);
	if (p->top_p < 1.0f && !nucleus_done) {
		double cum = 0.0;
		int32_t keep = n;
		for (int32_t i = 0; i < n; i++) {
			cum += s->c[i].p;
			if (cum >= p->top_p) {
				keep = i + 1;
				break;
			}
		}
		n = keep;
	}
	if (p->min_p > 0.0f) {
		const float lim = p->min_p * s->c[0].p;
		int32_t keep = 1;
		while (keep < n && s->c[keep].p >= lim)
			keep++;
		n = keep;
	}
	return draw(s, out, n);
}

/* Draws from softmax(logit / temp) over c[0..n), in the order they stand. */
static moe_err draw(moe_sampler *s, int32_t *out, int32_t n)
{
	cand_softmax(s->c, n, s->p.temp);
	const double u = moe_rng_f64(&s->rng);
	double cum = 0.0;
	for (int32_t i = 0; i < n; i++) {
		cum += s->c[i].p;
		if (u < cum) {
			*out = s->c[i].id;
			return MOE_OK;
		}
	}
	*out = s->c[n - 1].id; /* u beyond the rounded total */
	return MOE_OK;
}

/* ---- stop strings ------------------------------------------------------------------ */

bool moe_stop_find(size_t *at, const char *text, size_t len, const char *const *stops, int n_stops)
{
	bool found = false;
	size_t first = len;
	for (int i = 0; i < n_stops; i++) {
		const size_t sl = strlen(stops[i]);
		if (sl == 0 || sl > len)
			continue;
		for (size_t o = 0; o + sl <= len && o < first; o++) {
			if (memcmp(text + o, stops[i], sl) == 0) {
				first = o;
				found = true;
				break;
			}
		}
	}
	if (found) {
		*at = first;
		return true;
	}
	size_t hold = 0;
	for (int i = 0; i < n_stops; i++) {
		const size_t sl = strlen(stops[i]);
		for (size_t k = sl > 0 ? sl - 1 : 0; k > hold; k--) {
			if (k <= len && memcmp(text + len - k, stops[i], k) == 0) {
				hold = k;
				break;
			}
		}
	}
	*at = len - hold;
	return false;
}

/* ---- speculative drafting ------------------------------------------------------------ */

moe_err moe_spec_mode_parse(moe_spec_mode *out, const char *s)
{
	if (strcmp(s, "none") == 0)
		*out = MOE_SPEC_NONE;
	else if (strcmp(s, "ngram") == 0)
		*out = MOE_SPEC_NGRAM;
	else if (strcmp(s, "mtp") == 0)
		*out = MOE_SPEC_MTP;
	else
		return moe_fail(MOE_ERR_INVAL, "--spec '%s': expected none, ngram or mtp", s);
	return MOE_OK;
}

const char *moe_spec_mode_name(moe_spec_mode m)
{
	return m == MOE_SPEC_MTP ? "mtp" : m == MOE_SPEC_NGRAM ? "ngram" : "none";
}

moe_err moe_spec_mode_check(moe_spec_mode mode, bool model_has_mtp, const char *path)
{
	if (mode != MOE_SPEC_MTP || model_has_mtp)
		return MOE_OK;
	return moe_fail(MOE_ERR_UNSUPPORTED,
	                "--spec mtp: %s has no MTP (nextn) block to draft with (qwen35moe files "
	                "converted with it); use --spec ngram",
	                path);
}

int moe_ngram_draft(int32_t *draft, int max, const int32_t *hist, size_t len)
{
	if (max <= 0)
		return 0;
	for (size_t n = MOE_NGRAM_MAX; n >= MOE_NGRAM_MIN; n--) {
		if (len < n + 1)
			continue;
		const int32_t *tail = hist + len - n;
		/* an earlier occurrence starts at i < len - n, latest first */
		for (size_t i = len - n; i-- > 0;) {
			if (memcmp(hist + i, tail, n * sizeof *tail) != 0)
				continue;
			size_t k = 0;
			for (size_t j = i + n; j < len && k < (size_t)max; j++)
				draft[k++] = hist[j];
			return (int)k;
		}
	}
	return 0;
}

int moe_spec_next_max(int cur, int drafted, int accepted, int dmax)
{
	if (drafted <= 0)
		return cur;
	if (accepted >= drafted)
		return 2 * cur < dmax ? 2 * cur : dmax;
	return accepted + 1 < dmax ? accepted + 1 : dmax;
}
