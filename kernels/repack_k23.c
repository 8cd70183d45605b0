/*
 * repack_k23.c - the load-time repacking of Q2_K and Q3_K rows into the
 * "lanes" layouts (quants.h) and the products on them (moe_matmul_repacked,
 * moe_gemm_rows_repacked): the layouts' scalar conversions both ways (in
 * place too), the token's rearrangement, the thread split, and the dispatch
 * to the AVX2 lanes kernels (isa_avx2_k23.c) or, at the other levels, to the
 * level's dot on each row restored.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/quants.h"

/* ---- block conversions ----------------------------------------------------------- */

/* The 256 q of a Q2_K (or Q3_K: bits 0-1) qs[64], value order. */
static void q2_unpack(uint8_t q[256], const uint8_t *qs)
{
	for (int h = 0; h < 2; h++)
		for (int j = 0; j < 4; j++)
			for (int l = 0; l < 32; l++)
				q[128 * h + 32 * j + l] = (uint8_t)((qs[32 * h + l] >> 2 * j) & 3);
}

static void q2_pack(uint8_t *qs, const uint8_t q[256])
{
	memset(qs, 0, 64);
	for (int h = 0; h < 2; h++)
		for (int j = 0; j < 4; j++)
			for (int l = 0; l < 32; l++)
				qs[32 * h + l] |= (uint8_t)((q[128 * h + 32 * j + l] & 3) << 2 * j);
}

static void q2_K_to_lanes(moe_block_q2_K *o, const moe_block_q2_K *x)
{
	uint8_t q[256];
	q2_unpack(q, x->qs);
	memcpy(o->scales, x->scales, 16);
	memset(o->qs, 0, 64);
	for (int v = 0; v < 8; v++)
		for (int b = 0; b < 32; b++)
			o->qs[32 * (v / 4) + b] |=
			    (uint8_t)(q[moe_lanes_value(v, b)] << 2 * (v % 4));
	o->d = x->d;
	o->dmin = x->dmin;
}

static void q2_K_from_lanes(moe_block_q2_K *o, const moe_block_q2_K *x)
{
	uint8_t q[256];
	for (int v = 0; v < 8; v++)
		for (int b = 0; b < 32; b++)
			q[moe_lanes_value(v, b)] =
			    (uint8_t)((x->qs[32 * (v / 4) + b] >> 2 * (v % 4)) & 3);
	memcpy(o->scales, x->scales, 16);
	q2_pack(o->qs, q);
	o->d = x->d;
	o->dmin = x->dmin;
}

static void q3_K_to_lanes(moe_block_q3_K_lanes *o, const moe_block_q3_K *x)
{
	uint8_t q[256];
	q2_unpack(q, x->qs);
	for (int i = 0; i < 256; i++)
		q[i] |= (uint8_t)(((x->hmask[i % 32] >> (i / 32)) & 1) << 2);
	memset(o->qs, 0, 96);
	for (int b = 0; b < 32; b++) {
		for (int k = 0; k < 3; k++)
			o->qs[32 * k + b] = (uint8_t)(q[moe_lanes_value(2 * k, b)] |
			                              q[moe_lanes_value(2 * k + 1, b)] << 3);
		const int q6 = q[moe_lanes_value(6, b)], q7 = q[moe_lanes_value(7, b)];
		o->qs[b] |= (uint8_t)((q6 & 3) << 6);
		o->qs[32 + b] |= (uint8_t)((q7 & 3) << 6);
		o->qs[64 + b] |= (uint8_t)((q6 >> 2) << 6 | (q7 >> 2) << 7);
	}
	memset(o->scales, 0, 12);
	for (int s = 0; s < 16; s++) {
		const int lo = s < 8 ? x->scales[s] & 15 : x->scales[s - 8] >> 4;
		const int hi = (x->scales[8 + s % 4] >> (2 * (s / 4))) & 3;
		const int sc = lo | hi << 4;
		for (int i = 0; i < 6; i++)
			o->scales[(6 * s + i) / 8] |=
			    (uint8_t)(((sc >> i) & 1) << ((6 * s + i) % 8));
	}
	o->d = x->d;
}

static void q3_K_from_lanes(moe_block_q3_K *o, const moe_block_q3_K_lanes *x)
{
	uint8_t q[256];
	for (int b = 0; b < 32; b++) {
		for (int k = 0; k < 3; k++) {
			q[moe_lanes_value(2 * k, b)] = x->qs[32 * k + b] & 7;
			q[moe_lanes_value(2 * k + 1, b)] = (x->qs[32 * k + b] >> 3) & 7;
		}
		q[moe_lanes_value(6, b)] =
		    (uint8_t)((x->qs[b] >> 6) | ((x->qs[64 + b] >> 6) & 1) << 2);
		q[moe_lanes_value(7, b)] =
		    (uint8_t)((x->qs[32 + b] >> 6) | (x->qs[64 + b] >> 7) << 2);
	}
	q2_pack(o->qs, q);
	memset(o->hmask, 0, 32);
	for (int i = 0; i < 256; i++)
		o->hmask[i % 32] |= (uint8_t)((q[i] >> 2) << (i / 32));
	memset(o->scales, 0, 12);
	for (int s = 0; s < 16; s++) {
		int sc = 0;
		for (int i = 0; i < 6; i++)
			sc |= ((x->scales[(6 * s + i) / 8] >> ((6 * s + i) % 8)) & 1) << i;
		o->scales[s % 8] |= (uint8_t)((sc & 15) << (s < 8 ? 0 : 4));
		o->scales[8 + s % 4] |= (uint8_t)((sc >> 4) << (2 * (s / 4)));
	}
	o->d = x->d;
}

/* ---- rows -------------------------------------------------------------------------- */

size_t moe_repack_row_size(moe_type t, int64_t n_cols)
{
	if (n_cols <= 0 || n_cols % MOE_QK_K != 0)
		return 0;
	if (t == MOE_TYPE_Q2_K)
		return (size_t)(n_cols / MOE_QK_K) * sizeof(moe_block_q2_K);
	if (t == MOE_TYPE_Q3_K)
		return (size_t)(n_cols / MOE_QK_K) * sizeof(moe_block_q3_K_lanes);
	return 0;
}

static moe_err check_repack(const char *what, const void *dst, const void *src, moe_type t,
                            int64_t n_rows, int64_t n_cols)
{
	if (t != MOE_TYPE_Q2_K && t != MOE_TYPE_Q3_K)
		return moe_fail(MOE_ERR_UNSUPPORTED, "%s: type %d has no lanes layout", what,
		                (int)t);
	if (n_rows < 0 || moe_repack_row_size(t, n_cols) == 0)
		return moe_fail(MOE_ERR_BAD_SHAPE, "%s: %lld rows x %lld cols", what,
		                (long long)n_rows, (long long)n_cols);
	if (dst == NULL || src == NULL)
		return moe_fail(MOE_ERR_INVAL, "%s: NULL %s", what, dst == NULL ? "dst" : "src");
	return MOE_OK;
}

moe_err moe_repack_rows(void *dst, const void *src, moe_type t, int64_t n_rows, int64_t n_cols)
{
	moe_err err = check_repack("repack_rows", dst, src, t, n_rows, n_cols);
	if (err != MOE_OK)
		return err;
	const int64_t nb = n_rows * (n_cols / MOE_QK_K);
	for (int64_t i = 0; i < nb; i++) {
		/* through a copy: dst may be src */
		if (t == MOE_TYPE_Q2_K) {
			moe_block_q2_K x;
			memcpy(&x, (const moe_block_q2_K *)src + i, sizeof(x));
			q2_K_to_lanes((moe_block_q2_K *)dst + i, &x);
		} else {
			moe_block_q3_K x;
			memcpy(&x, (const moe_block_q3_K *)src + i, sizeof(x));
			q3_K_to_lanes((moe_block_q3_K_lanes *)dst + i, &x);
		}
	}
	return MOE_OK;
}

moe_err moe_unrepack_rows(void *dst, const void *src, moe_type t, int64_t n_rows, int64_t n_cols)
{
	moe_err err = check_repack("unrepack_rows", dst, src, t, n_rows, n_cols);
	if (err != MOE_OK)
		return err;
	const int64_t nb = n_rows * (n_cols / MOE_QK_K);
	for (int64_t i = 0; i < nb; i++) {
		if (t == MOE_TYPE_Q2_K) {
			moe_block_q2_K x;
			memcpy(&x, (const moe_block_q2_K *)src + i, sizeof(x));
			q2_K_from_lanes((moe_block_q2_K *)dst + i, &x);
		} else {
			moe_block_q3_K_lanes x;
			memcpy(&x, (const moe_block_q3_K_lanes *)src + i, sizeof(x));
			q3_K_from_lanes((moe_block_q3_K *)dst + i, &x);
		}
	}
	return MOE_OK;
}

/* ---- products ------------------------------------------------------------------------ */

enum { RP_CHUNK_ROWS = 16, RP_ROW_STEP = 64, RP_TOK_BLOCK = 32 };

/* One product's operands, as the callers checked them. */
typedef struct rp_prod {
	const uint8_t *w;
	size_t w_stride;
	moe_type type;
	int64_t n_cols;
	const uint8_t *x;           /* the tokens (Q8_K rows) */
	size_t x_stride;            /* moe_act_row_size */
	const moe_q8_K_lanes *prep; /* the tokens rearranged (lanes kernels), or NULL */
	size_t row_bytes;           /* moe_row_size of a restored row */
	moe_vec_dot_fn dot;         /* without the lanes kernels */
} rp_prod;

/* Rows [r0, r1) against tokens [0, n_tok): y[t * ldy + r - r0].  Without
 * the lanes kernels each row is restored into row (row_bytes) and dotted. */
static void rp_rows(const rp_prod *pr, uint8_t *row, float *y, int64_t ldy, int64_t r0, int64_t r1,
                    int64_t n_tok)
{
#if defined(__x86_64__)
	if (pr->prep != NULL) {
		const int64_t nb = pr->n_cols / MOE_QK_K;
		const uint8_t *w = pr->w + (size_t)r0 * pr->w_stride;
		for (int64_t t0 = 0; t0 < n_tok; t0 += RP_TOK_BLOCK) {
			const int64_t nt = n_tok - t0 < RP_TOK_BLOCK ? n_tok - t0 : RP_TOK_BLOCK;
			if (pr->type == MOE_TYPE_Q2_K)
				moe_gemm_q2_K_lanes_avx2(pr->n_cols, y + t0 * ldy, ldy, w,
				                         pr->w_stride, r1 - r0, pr->prep + t0 * nb,
				                         nt);
			else
				moe_gemm_q3_K_lanes_avx2(pr->n_cols, y + t0 * ldy, ldy, w,
				                         pr->w_stride, r1 - r0, pr->prep + t0 * nb,
				                         nt);
		}
		return;
	}
#endif
	for (int64_t r = r0; r < r1; r++) {
		/* cannot fail: the shape and type were checked */
		(void)moe_unrepack_rows(row, pr->w + (size_t)r * pr->w_stride, pr->type, 1,
		                        pr->n_cols);
		for (int64_t t = 0; t < n_tok; t++)
			pr->dot(pr->n_cols, &y[t * ldy + r - r0], row,
			        pr->x + (size_t)t * pr->x_stride);
	}
}

/* Checks a product's operands and sets up *pr: the tokens rearranged at the
 * AVX2 / AVX-512 levels (*prep_out, to moe_aligned_free), else *row_out =
 * n_row_bufs restored-row buffers (to free). */
static moe_err rp_setup(rp_prod *pr, moe_q8_K_lanes **prep_out, uint8_t **row_out, int n_row_bufs,
                        const char *what, const void *w, moe_type t, int64_t n_rows, int64_t n_cols,
                        const void *xq, int64_t n_tok)
{
	*prep_out = NULL;
	*row_out = NULL;
	moe_err err = check_repack(what, w, w, t, n_rows, n_cols);
	if (err != MOE_OK)
		return err;
	if (n_tok < 0)
		return moe_fail(MOE_ERR_BAD_SHAPE, "%s: %lld tokens", what, (long long)n_tok);
	if (xq == NULL)
		return moe_fail(MOE_ERR_INVAL, "%s: NULL input", what);
	pr->w = w;
	pr->w_stride = moe_repack_row_size(t, n_cols);
	pr->type = t;
	pr->n_cols = n_cols;
	pr->x = xq;
	pr->x_stride = moe_act_row_size(t, n_cols);
	pr->prep = NULL;
	pr->row_bytes = moe_row_size(t, n_cols);
	pr->dot = moe_vec_dot_get(t);
#if defined(__x86_64__)
	const moe_isa isa = moe_isa_active();
	if (isa == MOE_ISA_AVX2 || isa == MOE_ISA_AVX512) {
		const int64_t nb = n_cols / MOE_QK_K;
		size_t bytes;
		if (!moe_size_mul(&bytes, (size_t)(nb * (n_tok > 0 ? n_tok : 1)),
		                  sizeof(moe_q8_K_lanes)))
			return moe_fail(MOE_ERR_OVERFLOW, "%s: %lld tokens", what,
			                (long long)n_tok);
		moe_q8_K_lanes *prep = moe_aligned_alloc(64, bytes);
		if (prep == NULL)
			return moe_fail(MOE_ERR_NOMEM, "%s: %zu bytes of tokens", what, bytes);
		for (int64_t k = 0; k < n_tok; k++)
			moe_prep_q8_K_lanes_avx2(prep + k * nb, pr->x + (size_t)k * pr->x_stride,
			                         nb);
		pr->prep = prep;
		*prep_out = prep;
		return MOE_OK;
	}
#endif
	*row_out = malloc((size_t)n_row_bufs * pr->row_bytes);
	if (*row_out == NULL)
		return moe_fail(MOE_ERR_NOMEM, "%s: %d rows of %zu bytes", what, n_row_bufs,
		                pr->row_bytes);
	return MOE_OK;
}

moe_err moe_gemm_rows_repacked(float *y, int64_t ldy, const void *w, moe_type t, int64_t r0,
                               int64_t r1, int64_t n_cols, const void *xq, int64_t n_tok)
{
	rp_prod pr = {0};
	moe_q8_K_lanes *prep = NULL;
	uint8_t *row = NULL;
	if (r0 < 0 || r0 > r1)
		return moe_fail(MOE_ERR_BAD_SHAPE, "gemm_rows_repacked: rows [%lld, %lld)",
		                (long long)r0, (long long)r1);
	moe_err err =
	    rp_setup(&pr, &prep, &row, 1, "gemm_rows_repacked", w, t, r1, n_cols, xq, n_tok);
	if (err != MOE_OK)
		return err;
	if (r1 > r0 && n_tok > 0)
		rp_rows(&pr, row, y, ldy, r0, r1, n_tok);
	free(row);
	moe_aligned_free(prep);
	return MOE_OK;
}

typedef struct rp_task {
	rp_prod pr;
	float *y;
	int64_t n_rows, n_tok;
	uint8_t *rows;     /* NULL, or one restored row per thread */
	int64_t claim;     /* rows per claimed chunk */
	atomic_llong next; /* next chunk to hand out */
} rp_task;

static void rp_worker(void *arg, int ith, int nth)
{
	rp_task *tk = arg;
	const int64_t n_chunks = (tk->n_rows + tk->claim - 1) / tk->claim;
	uint8_t *row = tk->rows == NULL ? NULL : tk->rows + (size_t)ith * tk->pr.row_bytes;
	(void)nth;
	for (;;) {
		const int64_t c = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
		if (c >= n_chunks)
			break;
		const int64_t c0 = c * tk->claim;
		const int64_t c1 = c0 + tk->claim < tk->n_rows ? c0 + tk->claim : tk->n_rows;
		/* as moe_matmul_q: one token, the whole run at once; several, 64
		 * rows at a time meet every token */
		const int64_t step = tk->n_tok == 1 ? c1 - c0 : RP_ROW_STEP;
		for (int64_t r0 = c0; r0 < c1; r0 += step) {
			const int64_t r1 = r0 + step < c1 ? r0 + step : c1;
			rp_rows(&tk->pr, row, tk->y + r0, tk->n_rows, r0, r1, tk->n_tok);
		}
	}
}

moe_err moe_matmul_repacked(moe_pool *pool, float *y, const void *w, moe_type t, int64_t n_rows,
                            int64_t n_cols, const void *xq, int64_t n_tok)
{
	rp_task tk = {0};
	moe_q8_K_lanes *prep = NULL;
	if (y == NULL)
		return moe_fail(MOE_ERR_INVAL, "matmul_repacked: NULL output");
	const int nth = n_rows <= RP_CHUNK_ROWS ? 1 : moe_pool_threads(pool);
	moe_err err = rp_setup(&tk.pr, &prep, &tk.rows, nth, "matmul_repacked", w, t, n_rows,
	                       n_cols, xq, n_tok);
	if (err != MOE_OK)
		return err;
	tk.y = y;
	tk.n_rows = n_rows;
	tk.n_tok = n_tok;
	/* as moe_matmul_q: about 8 claims per thread, 16 to 1024 rows */
	tk.claim = n_rows / (8 * (int64_t)nth) / RP_CHUNK_ROWS * RP_CHUNK_ROWS;
	tk.claim = tk.claim < RP_CHUNK_ROWS ? RP_CHUNK_ROWS : tk.claim > 1024 ? 1024 : tk.claim;
	atomic_init(&tk.next, 0);
	if (n_rows > 0 && n_tok > 0) {
		if (nth == 1)
			rp_worker(&tk, 0, 1);
		else
			moe_pool_run(pool, rp_worker, &tk);
	}
	free(tk.rows);
	moe_aligned_free(prep);
	return MOE_OK;
}
