/*
 * matmul.c - GEMV/GEMM y = W x on the thread pool.
 *
 * Work is split over weight rows: chunks of MM_CHUNK_ROWS rows are handed out
 * from an atomic counter (a descheduled thread does not hold the others
 * back), and within a chunk tokens are taken MM_TOK_BLOCK at a time so the
 * chunk's weights stay in cache while they meet every token.  Each element
 * y[t][r] is computed by one call of the type's tile kernel (gemm.h), whose
 * per-element arithmetic does not depend on the tile, so the result is
 * bit-identical for any thread count, chunking, batch size or batch position.
 * Types without a tile kernel use moe_vec_dot_get(type) per element, which is
 * batch-invariant for the same reason.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/kernels.h"

enum { MM_CHUNK_ROWS = 16, MM_ROW_STEP = 64, MM_TOK_BLOCK = 32 };
#ifndef CLAIM
#define CLAIM 1024
#endif

moe_gemm_fn moe_gemm_get(moe_type t)
{
	if ((unsigned)t >= MOE_TYPE_COUNT)
		return NULL;
	/* asked on every product: tests force other levels with moe_isa_set */
	switch (moe_isa_active()) {
#if defined(__x86_64__)
	case MOE_ISA_AVX512:
		return moe_gemm_avx512(t);
	case MOE_ISA_AVX2:
		return moe_gemm_avx2(t);
#elif defined(__aarch64__) && defined(__linux__)
	case MOE_ISA_NEON:
		return moe_gemm_neon_level(t);
#endif
	default:
		return NULL;
	}
}

/* Validates a product's shape; sets *w_stride and *x_stride. */
static moe_err check_shape(size_t *w_stride, size_t *x_stride, const void *w, moe_type wt,
                           int64_t n_rows, int64_t n_cols, int64_t n_tok)
{
	const moe_type_traits *tr = moe_type_get(wt);
	if (tr == NULL || !tr->compute || moe_vec_dot_get(wt) == NULL)
		return moe_fail(MOE_ERR_UNSUPPORTED, "matmul: weight type %d has no dot product",
		                (int)wt);
	if (n_rows <= 0 || n_cols <= 0 || n_tok < 0)
		return moe_fail(MOE_ERR_BAD_SHAPE, "matmul: %lld rows x %lld cols, %lld tokens",
		                (long long)n_rows, (long long)n_cols, (long long)n_tok);
	*w_stride = moe_row_size(wt, n_cols);
	*x_stride = moe_act_row_size(wt, n_cols);
	if (*w_stride == 0 || *x_stride == 0)
		return moe_fail(MOE_ERR_BAD_SHAPE,
		                "matmul: %lld cols is not a multiple of %s's block",
		                (long long)n_cols, tr->name);
	if (w == NULL)
		return moe_fail(MOE_ERR_INVAL, "matmul: NULL weights");
	return MOE_OK;
}

/* The kernels of one product, looked up once by the calling thread. */
typedef struct mm_kern {
	moe_gemm_fn gemm; /* NULL: dot per element */
	moe_vec_dot_fn dot;
} mm_kern;

static mm_kern kern_get(moe_type wt)
{
	mm_kern k = {moe_gemm_get(wt), moe_vec_dot_get(wt)};
	return k;
}

static void gemm_block(float *y, int64_t ldy, const uint8_t *w, size_t w_stride, mm_kern k,
                       int64_t n_r, int64_t n_cols, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	moe_gemm_fn fn = k.gemm;
	if (fn != NULL) {
		fn(n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
		return;
	}
	moe_vec_dot_fn dot = k.dot;
	for (int64_t r = 0; r < n_r; r++)
		for (int64_t t = 0; t < n_t; t++)
			dot(n_cols, &y[t * ldy + r], w + (size_t)r * w_stride,
			    x + (size_t)t * x_stride);
}

/* Rows [r0, r1) against every token, token blocks inside; y points at row r0's
 * output. */
static void gemm_range(float *y, int64_t ldy, const uint8_t *w, size_t w_stride, mm_kern k,
                       int64_t r0, int64_t r1, int64_t n_cols, const uint8_t *x, size_t x_stride,
                       int64_t n_tok)
{
	for (int64_t t0 = 0; t0 < n_tok; t0 += MM_TOK_BLOCK) {
		int64_t nt = n_tok - t0 < MM_TOK_BLOCK ? n_tok - t0 : MM_TOK_BLOCK;
		gemm_block(y + t0 * ldy, ldy, w + (size_t)r0 * w_stride, w_stride, k, r1 - r0,
		           n_cols, x + (size_t)t0 * x_stride, x_stride, nt);
	}
}

moe_err moe_gemm_rows(float *y, int64_t ldy, const void *w, moe_type wt, int64_t r0, int64_t r1,
                      int64_t n_cols, const void *xq, int64_t n_tok)
{
	size_t w_stride = 0, x_stride = 0;
	moe_err err = check_shape(&w_stride, &x_stride, w, wt, r1, n_cols, n_tok);
	if (err != MOE_OK)
		return err;
	if (r0 < 0 || r0 > r1)
		return moe_fail(MOE_ERR_BAD_SHAPE, "gemm_rows: rows [%lld, %lld)", (long long)r0,
		                (long long)r1);
	gemm_range(y, ldy, w, w_stride, kern_get(wt), r0, r1, n_cols, xq, x_stride, n_tok);
	return MOE_OK;
}

typedef struct mm_task {
	float *y;
	const uint8_t *w;
	size_t w_stride;
	mm_kern k;
	int64_t n_rows;
	int64_t n_cols;
	const uint8_t *x;
	size_t x_stride;
	int64_t n_tok;
	int64_t claim;     /* rows per claimed chunk, a multiple of MM_CHUNK_ROWS */
	atomic_llong next; /* next chunk to hand out */
} mm_task;

static void mm_worker(void *arg, int ith, int nth)
{
	mm_task *tk = arg;
	int64_t n_chunks = (tk->n_rows + tk->claim - 1) / tk->claim;
	(void)ith;
	(void)nth;
	for (;;) {
		int64_t c = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
		if (c >= n_chunks)
			break;
		int64_t c0 = c * tk->claim;
		int64_t c1 = c0 + tk->claim < tk->n_rows ? c0 + tk->claim : tk->n_rows;
		/* One token: the whole run at once (no weights to keep in cache
		 * for other tokens, and the tiles can lay long streams over it).
		 * Several tokens: 64 rows at a time meet every token block (their
		 * weights stay in L2, and a tile kernel's per-call gathering of the
		 * tokens is spread over 64 rows instead of 16: 80b-4L prefill at 2
		 * threads 353-393 -> 382-411 tok/s). */
		const int64_t step = tk->n_tok == 1 ? c1 - c0 : MM_ROW_STEP;
		for (int64_t r0 = c0; r0 < c1; r0 += step) {
			int64_t r1 = r0 + step < c1 ? r0 + step : c1;
			gemm_range(tk->y + r0, tk->n_rows, tk->w, tk->w_stride, tk->k, r0, r1,
			           tk->n_cols, tk->x, tk->x_stride, tk->n_tok);
		}
	}
}

moe_err moe_matmul_q(moe_pool *pool, float *y, const void *w, moe_type wt, int64_t n_rows,
                     int64_t n_cols, const void *xq, int64_t n_tok)
{
	mm_task tk = {0};
	moe_err err = check_shape(&tk.w_stride, &tk.x_stride, w, wt, n_rows, n_cols, n_tok);
	if (err != MOE_OK)
		return err;
	if (n_tok == 0)
		return MOE_OK;
	if (y == NULL || xq == NULL)
		return moe_fail(MOE_ERR_INVAL, "matmul: NULL %s", y == NULL ? "output" : "input");
	tk.y = y;
	tk.w = w;
	tk.k = kern_get(wt);
	tk.n_rows = n_rows;
	tk.n_cols = n_cols;
	tk.x = xq;
	tk.n_tok = n_tok;
	/* about 8 claims per thread, between 16 and 1024 rows: long contiguous
	 * runs for the hardware prefetcher on big matrices, enough pieces to even
	 * out a thread that was descheduled */
	tk.claim = n_rows / (8 * (int64_t)moe_pool_threads(pool)) / MM_CHUNK_ROWS * MM_CHUNK_ROWS;
	tk.claim = tk.claim < MM_CHUNK_ROWS ? MM_CHUNK_ROWS : tk.claim > 1024 ? 1024 : tk.claim;
	atomic_init(&tk.next, 0);
	if (n_rows <= MM_CHUNK_ROWS)
		mm_worker(&tk, 0, 1);
	else
		moe_pool_run(pool, mm_worker, &tk);
	return MOE_OK;
}

typedef struct quant_task {
	uint8_t *dst;
	size_t dst_stride;
	const float *x;
	moe_type wt;
	int64_t n_cols;
	int64_t n_tok;
	atomic_int err; /* first error, MOE_OK if none */
} quant_task;

static void quant_worker(void *arg, int ith, int nth)
{
	quant_task *q = arg;
	for (int64_t t = ith; t < q->n_tok; t += nth) {
		moe_err e = moe_quantize_act(q->wt, q->dst + (size_t)t * q->dst_stride,
		                             q->x + t * q->n_cols, q->n_cols);
		if (e != MOE_OK) {
			int expect = MOE_OK;
			atomic_compare_exchange_strong(&q->err, &expect, (int)e);
		}
	}
}

moe_err moe_quantize_act_rows(moe_pool *pool, void *dst, moe_type wt, const float *x,
                              int64_t n_cols, int64_t n_tok)
{
	quant_task q;
	q.dst = dst;
	q.dst_stride = moe_act_row_size(wt, n_cols);
	if (q.dst_stride == 0)
		return moe_fail(MOE_ERR_BAD_SHAPE, "quantize_act_rows: %lld cols for type %d",
		                (long long)n_cols, (int)wt);
	q.x = x;
	q.wt = wt;
	q.n_cols = n_cols;
	q.n_tok = n_tok;
	atomic_init(&q.err, MOE_OK);
	if (n_tok < 4)
		quant_worker(&q, 0, 1);
	else
		moe_pool_run(pool, quant_worker, &q);
	int e = atomic_load(&q.err);
	if (e != MOE_OK)
		return moe_fail((moe_err)e, "quantize_act_rows: %s", moe_err_detail());
	return MOE_OK;
}

moe_err moe_matmul(moe_pool *pool, float *y, const void *w, moe_type wt, int64_t n_rows,
                   int64_t n_cols, const float *x, int64_t n_tok)
{
	size_t w_stride = 0, x_stride = 0, bytes;
	moe_err err = check_shape(&w_stride, &x_stride, w, wt, n_rows, n_cols, n_tok);
	if (err != MOE_OK)
		return err;
	if (n_tok == 0)
		return MOE_OK;
	if (x == NULL)
		return moe_fail(MOE_ERR_INVAL, "matmul: NULL input");
	if (!moe_size_mul(&bytes, x_stride, (size_t)n_tok))
		return moe_fail(MOE_ERR_OVERFLOW, "matmul: %lld tokens", (long long)n_tok);
	void *xq = moe_aligned_alloc(64, bytes);
	if (xq == NULL)
		return moe_fail(MOE_ERR_NOMEM, "matmul: %zu bytes of activations", bytes);
	err = moe_quantize_act_rows(pool, xq, wt, x, n_cols, n_tok);
	if (err != MOE_OK)
		goto out_free_xq;
	err = moe_matmul_q(pool, y, w, wt, n_rows, n_cols, xq, n_tok);
out_free_xq:
	moe_aligned_free(xq);
	return err;
}
