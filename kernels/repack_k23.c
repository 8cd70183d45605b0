/*
 * repack_k23.c - the load-time repacking of Q2_K and Q3_K rows into the
 * "lanes" layouts (quants.h) and the one-token product on them
 * (moe_matmul_repacked): the layouts' scalar conversions both ways, the
 * thread split, and the dispatch to the AVX2 lanes kernels (isa_avx2_k23.c)
 * or, at the other levels, to the level's dot on each row restored.
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
	for (int s = 0; s < 16; s++) {
		const int lo = s < 8 ? x->scales[s] & 15 : x->scales[s - 8] >> 4;
		const int hi = (x->scales[8 + s % 4] >> (2 * (s / 4))) & 3;
		o->sc[s] = (int8_t)((lo | hi << 4) - 32);
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
		const int sc = x->sc[s] + 32; /* 0..63 when made by q3_K_to_lanes */
		o->scales[s % 8] |= (uint8_t)((sc & 15) << (s < 8 ? 0 : 4));
		o->scales[8 + s % 4] |= (uint8_t)(((sc >> 4) & 3) << (2 * (s / 4)));
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
	for (int64_t i = 0; i < nb; i++)
		if (t == MOE_TYPE_Q2_K)
			q2_K_to_lanes((moe_block_q2_K *)dst + i, (const moe_block_q2_K *)src + i);
		else
			q3_K_to_lanes((moe_block_q3_K_lanes *)dst + i,
			              (const moe_block_q3_K *)src + i);
	return MOE_OK;
}

moe_err moe_unrepack_rows(void *dst, const void *src, moe_type t, int64_t n_rows, int64_t n_cols)
{
	moe_err err = check_repack("unrepack_rows", dst, src, t, n_rows, n_cols);
	if (err != MOE_OK)
		return err;
	const int64_t nb = n_rows * (n_cols / MOE_QK_K);
	for (int64_t i = 0; i < nb; i++)
		if (t == MOE_TYPE_Q2_K)
			q2_K_from_lanes((moe_block_q2_K *)dst + i, (const moe_block_q2_K *)src + i);
		else
			q3_K_from_lanes((moe_block_q3_K *)dst + i,
			                (const moe_block_q3_K_lanes *)src + i);
	return MOE_OK;
}

/* ---- the one-token product ---------------------------------------------------------- */

enum { RP_CHUNK_ROWS = 16 };

typedef struct rp_task {
	float *y;
	const uint8_t *w;
	size_t w_stride;
	moe_type type;
	int64_t n_rows, n_cols;
	const uint8_t *x;           /* the token (Q8_K) */
	const moe_q8_K_lanes *prep; /* rearranged (lanes kernels), or NULL */
	uint8_t *rows;              /* NULL, or one restored row per thread */
	size_t row_bytes;           /* moe_row_size of a restored row */
	moe_vec_dot_fn dot;         /* without the lanes kernels */
	int64_t claim;              /* rows per claimed chunk */
	atomic_llong next;          /* next chunk to hand out */
} rp_task;

static void rp_range(rp_task *tk, int ith, int64_t r0, int64_t r1)
{
#if defined(__x86_64__)
	if (tk->prep != NULL) {
		if (tk->type == MOE_TYPE_Q2_K)
			moe_gemv_q2_K_lanes_avx2(tk->n_cols, tk->y + r0,
			                         tk->w + (size_t)r0 * tk->w_stride, tk->w_stride,
			                         r1 - r0, tk->prep);
		else
			moe_gemv_q3_K_lanes_avx2(tk->n_cols, tk->y + r0,
			                         tk->w + (size_t)r0 * tk->w_stride, tk->w_stride,
			                         r1 - r0, tk->prep);
		return;
	}
#endif
	uint8_t *row = tk->rows + (size_t)ith * tk->row_bytes;
	for (int64_t r = r0; r < r1; r++) {
		/* cannot fail: the shape and type were checked */
		(void)moe_unrepack_rows(row, tk->w + (size_t)r * tk->w_stride, tk->type, 1,
		                        tk->n_cols);
		tk->dot(tk->n_cols, &tk->y[r], row, tk->x);
	}
}

static void rp_worker(void *arg, int ith, int nth)
{
	rp_task *tk = arg;
	const int64_t n_chunks = (tk->n_rows + tk->claim - 1) / tk->claim;
	(void)nth;
	for (;;) {
		const int64_t c = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
		if (c >= n_chunks)
			break;
		const int64_t c0 = c * tk->claim;
		const int64_t c1 = c0 + tk->claim < tk->n_rows ? c0 + tk->claim : tk->n_rows;
		rp_range(tk, ith, c0, c1);
	}
}

moe_err moe_matmul_repacked(moe_pool *pool, float *y, const void *w, moe_type t, int64_t n_rows,
                            int64_t n_cols, const void *xq)
{
	rp_task tk = {0};
	moe_err err = check_repack("matmul_repacked", w, w, t, n_rows, n_cols);
	if (err != MOE_OK)
		return err;
	if (n_rows == 0)
		return MOE_OK;
	if (y == NULL || xq == NULL)
		return moe_fail(MOE_ERR_INVAL, "matmul_repacked: NULL %s",
		                y == NULL ? "output" : "input");
	const int nth = n_rows <= RP_CHUNK_ROWS ? 1 : moe_pool_threads(pool);
	const int64_t nb = n_cols / MOE_QK_K;
	tk.y = y;
	tk.w = w;
	tk.w_stride = moe_repack_row_size(t, n_cols);
	tk.type = t;
	tk.n_rows = n_rows;
	tk.n_cols = n_cols;
	tk.x = xq;
	tk.row_bytes = moe_row_size(t, n_cols);
	tk.dot = moe_vec_dot_get(t);
	/* as moe_matmul_q: about 8 claims per thread, 16 to 1024 rows */
	tk.claim = n_rows / (8 * (int64_t)nth) / RP_CHUNK_ROWS * RP_CHUNK_ROWS;
	tk.claim = tk.claim < RP_CHUNK_ROWS ? RP_CHUNK_ROWS : tk.claim > 1024 ? 1024 : tk.claim;
	atomic_init(&tk.next, 0);
	moe_q8_K_lanes *prep = NULL;
#if defined(__x86_64__)
	const moe_isa isa = moe_isa_active();
	if (isa == MOE_ISA_AVX2 || isa == MOE_ISA_AVX512) {
		prep = moe_aligned_alloc(64, (size_t)nb * sizeof(*prep));
		if (prep == NULL)
			return moe_fail(MOE_ERR_NOMEM, "matmul_repacked: %lld token blocks",
			                (long long)nb);
		moe_prep_q8_K_lanes_avx2(prep, xq, nb);
		tk.prep = prep;
	}
#endif
	if (prep == NULL) {
		tk.rows = malloc((size_t)nth * tk.row_bytes);
		if (tk.rows == NULL)
			return moe_fail(MOE_ERR_NOMEM, "matmul_repacked: %d rows of %zu bytes", nth,
			                tk.row_bytes);
	}
	if (nth == 1)
		rp_worker(&tk, 0, 1);
	else
		moe_pool_run(pool, rp_worker, &tk);
	free(tk.rows);
	moe_aligned_free(prep);
	return MOE_OK;
}
