/*
 * range.c - numeric ranges as grammar text: the canonical decimal integers
 * of [lo, hi] (digit by digit: each digit count is a few literal prefixes
 * followed by digit classes, so the text is linear in the digits) and the
 * decimal numbers without exponent between integral bounds; schema.c reads
 * the bounds from the schema.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar_impl.h"

static const uint64_t pow10s[] = {1ull,
                                  10ull,
                                  100ull,
                                  1000ull,
                                  10000ull,
                                  100000ull,
                                  1000000ull,
                                  10000000ull,
                                  100000000ull,
                                  1000000000ull,
                                  10000000000ull,
                                  100000000000ull,
                                  1000000000000ull,
                                  10000000000000ull,
                                  100000000000000ull,
                                  1000000000000000ull,
                                  10000000000000000ull,
                                  100000000000000000ull,
                                  1000000000000000000ull};

static const char zeros[] = "00000000000000000000";
static const char nines[] = "99999999999999999999";

/* Fractions: any, only zeros, with a nonzero digit (16 digits at most). */
#define FRAC_ANY  "( \".\" [0-9]{1,16} )?"
#define FRAC_ZERO "( \".\" \"0\"{1,16} )?"

static int n_digits(uint64_t v)
{
	int n = 1;
	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

static int all_of(const char *s, char ch, int n)
{
	for (int i = 0; i < n; i++)
		if (s[i] != ch)
			return 0;
	return 1;
}

/* Appends " [0-9]{m}" (nothing for m 0). */
static void any_digits(g_buf *e, int m)
{
	if (m == 1)
		g_buf_puts(e, " [0-9]");
	else if (m > 1)
		g_buf_printf(e, " [0-9]{%d}", m);
}

/* Appends the strings of n digits from a to b (n digits each, a <= b,
 * leading zeros counted): the common prefix as a literal, then the strings
 * starting with a[0] (above the rest of a), those starting with a digit
 * strictly between a[0] and b[0] (anything after) and those starting with
 * b[0] (below the rest of b).  A side whose rest is all 0s (for a) or all 9s
 * (for b) joins the middle class.  Each level recurses on one side only, so
 * the text has O(n) elements per side. */
static void same_len(g_buf *e, const char *a, const char *b, int n)
{
	int k = 0;
	while (k < n && a[k] == b[k])
		k++;
	if (k > 0)
		g_buf_printf(e, "\"%.*s\"", k, a);
	if (k == n)
		return;
	if (k > 0)
		g_buf_puts(e, " ");
	a += k;
	b += k;
	n -= k;
	int lo_full = all_of(a + 1, '0', n - 1), hi_full = all_of(b + 1, '9', n - 1);
	char lo_d = (char)(lo_full ? a[0] : a[0] + 1), hi_d = (char)(hi_full ? b[0] : b[0] - 1);
	const char *sep = "";
	g_buf_puts(e, "( ");
	if (!lo_full) {
		g_buf_printf(e, "\"%c\" ", a[0]);
		same_len(e, a + 1, nines, n - 1);
		sep = " | ";
	}
	if (lo_d <= hi_d) {
		if (lo_d == hi_d)
			g_buf_printf(e, "%s\"%c\"", sep, lo_d);
		else
			g_buf_printf(e, "%s[%c-%c]", sep, lo_d, hi_d);
		any_digits(e, n - 1);
		sep = " | ";
	}
	if (!hi_full) {
		g_buf_printf(e, "%s\"%c\" ", sep, b[0]);
		same_len(e, zeros, b + 1, n - 1);
	}
	g_buf_puts(e, " )");
}

void g_range_uint(g_buf *e, uint64_t lo, uint64_t hi)
{
	char a[24], b[24];
	const char *sep = "";
	g_buf_puts(e, "( ");
	if (lo == 0) {
		g_buf_puts(e, "\"0\"");
		sep = " | ";
		lo = 1;
	}
	if (lo <= hi) {
		int l1 = n_digits(lo), l2 = n_digits(hi);
		if (l1 == l2) {
			snprintf(a, sizeof a, "%llu", (unsigned long long)lo);
			snprintf(b, sizeof b, "%llu", (unsigned long long)hi);
			g_buf_puts(e, sep);
			same_len(e, a, b, l1);
		} else {
			/* the first and last digit counts, unless full; the full
			 * ones between as one class */
			int fl = l1, fh = l2;
			if (lo != pow10s[l1 - 1]) {
				snprintf(a, sizeof a, "%llu", (unsigned long long)lo);
				snprintf(b, sizeof b, "%llu", (unsigned long long)(pow10s[l1] - 1));
				g_buf_puts(e, sep);
				same_len(e, a, b, l1);
				sep = " | ";
				fl = l1 + 1;
			}
			int hi_full = hi == pow10s[l2] - 1;
			if (!hi_full)
				fh = l2 - 1;
			if (fl <= fh) {
				g_buf_printf(e, "%s[1-9]", sep);
				if (fl == fh)
					any_digits(e, fl - 1);
				else
					g_buf_printf(e, " [0-9]{%d,%d}", fl - 1, fh - 1);
				sep = " | ";
			}
			if (!hi_full) {
				snprintf(a, sizeof a, "%llu", (unsigned long long)pow10s[l2 - 1]);
				snprintf(b, sizeof b, "%llu", (unsigned long long)hi);
				g_buf_puts(e, sep);
				same_len(e, a, b, l2);
			}
		}
	}
	g_buf_puts(e, " )");
}

void g_range_int(g_buf *e, int64_t lo, int64_t hi)
{
	const char *sep = "";
	g_buf_puts(e, "( ");
	if (lo < 0) {
		g_buf_puts(e, "\"-\" ");
		g_range_uint(e, hi < 0 ? (uint64_t)-hi : 1, (uint64_t)-lo);
		sep = " | ";
	}
	if (hi >= 0) {
		g_buf_puts(e, sep);
		g_range_uint(e, lo > 0 ? (uint64_t)lo : 0, (uint64_t)hi);
	}
	g_buf_puts(e, " )");
}

/* A fraction with a nonzero digit, 16 digits at most: k zeros, a nonzero
 * digit, at most 15 - k more. */
static void frac_nonzero(g_buf *e)
{
	g_buf_puts(e, "\".\" ( [1-9] [0-9]{0,15}");
	for (int k = 1; k < 16; k++)
		g_buf_printf(e, " | \"0\"{%d} [1-9] [0-9]{0,%d}", k, 15 - k);
	g_buf_puts(e, " )");
}

/* Appends, each after *sep, the alternatives for the magnitudes m = n.f
 * (n at most G_INT_CAP) with a <= m (a < m when ae) and, when has_b, m <= b
 * (m < b when be); a and b are integers.  n above a (or at a, when a is
 * included) and below b takes any fraction; n = a, when a is excluded, a
 * fraction with a nonzero digit; n = b, when b is included, zeros only.
 * Returns the number of alternatives. */
static int magnitudes(g_buf *e, uint64_t a, int ae, int has_b, uint64_t b, int be, const char **sep)
{
	int n = 0;
	if (a > G_INT_CAP)
		return 0;
	if (has_b && b > G_INT_CAP)
		has_b = 0;
	uint64_t flo = a + (ae ? 1 : 0);
	if (has_b ? b >= 1 && flo <= b - 1 : flo <= G_INT_CAP) {
		g_buf_puts(e, *sep);
		g_range_uint(e, flo, has_b ? b - 1 : G_INT_CAP);
		g_buf_puts(e, " " FRAC_ANY);
		*sep = " | ";
		n++;
	}
	if (ae && (!has_b || a < b)) {
		g_buf_printf(e, "%s\"%llu\" ", *sep, (unsigned long long)a);
		frac_nonzero(e);
		*sep = " | ";
		n++;
	}
	if (has_b && !be && (a < b || (a == b && !ae))) {
		g_buf_printf(e, "%s\"%llu\" " FRAC_ZERO, *sep, (unsigned long long)b);
		*sep = " | ";
		n++;
	}
	return n;
}

int g_range_number(g_buf *e, g_bound lo, g_bound hi)
{
	const char *sep = "";
	int n = 0;
	g_buf_puts(e, "( ");
	/* m >= 0 (zero written "0", "0.0", ...) */
	if (!hi.set || hi.v >= 0) {
		int pos_lo = lo.set && lo.v >= 0;
		n += magnitudes(e, pos_lo ? (uint64_t)lo.v : 0, pos_lo && lo.excl, hi.set,
		                hi.set ? (uint64_t)hi.v : 0, hi.excl, &sep);
	}
	/* -m with m > 0 (so "-0" and "-0.0" are not written) */
	if (!lo.set || lo.v < 0) {
		int neg_hi = hi.set && hi.v < 0;
		g_buf neg = {0};
		const char *nsep = "";
		int k = magnitudes(&neg, neg_hi ? (uint64_t)-hi.v : 0, neg_hi ? hi.excl : 1, lo.set,
		                   lo.set ? (uint64_t)-lo.v : 0, lo.excl, &nsep);
		if (k > 0) {
			g_buf_printf(e, "%s\"-\" ( %s )", sep, neg.p ? neg.p : "");
			n++;
		}
		if (neg.failed)
			e->failed = 1;
		free(neg.p);
	}
	g_buf_puts(e, " )");
	return n;
}
