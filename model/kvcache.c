/*
 * kvcache.c - the KV cache of the full-attention layers (fwd_internal.h): per
 * sequence a table of blocks of MOE_FWD_KV_BLOCK positions, each holding the
 * K and V rows of those positions for every attention layer, taken as the
 * sequence grows and given back when it shrinks, is reset or closed, under a
 * byte budget; rows encoded in the KV type (F32, F16, Q8_0, Q4_0); and the
 * position-major copy of a range of positions out and in.
 */
#include <stdlib.h>
#include <string.h>

#include "model/fwd_internal.h"
#include "model/ops.h"

moe_err moe_kv_init(moe_kvcache *kv, moe_type type, int n_layers, int64_t row_len, int n_seq,
                    int64_t n_ctx, size_t budget)
{
	*kv = (moe_kvcache){.type = type,
	                    .n_layers = n_layers,
	                    .n_seq = n_seq,
	                    .n_ctx = n_ctx,
	                    .row_len = row_len,
	                    .budget = budget};
	if (type != MOE_TYPE_F32 && type != MOE_TYPE_F16 && type != MOE_TYPE_Q8_0 &&
	    type != MOE_TYPE_Q4_0)
		return moe_fail(MOE_ERR_INVAL, "fwd: kv_type %d is not F32, F16, Q8_0 or Q4_0",
		                (int)type);
	kv->row = moe_row_size(type, row_len);
	if (kv->row == 0 && row_len > 0)
		return moe_fail(MOE_ERR_INVAL,
		                "fwd: a %s KV cache needs head dimensions that are multiples of "
		                "32 (the K/V row has %lld values)",
		                moe_fwd_kv_type_name(type), (long long)row_len);
	if (!moe_size_mul(&kv->blk_bytes, kv->row, (size_t)n_layers * 2 * MOE_FWD_KV_BLOCK))
		return moe_fail(MOE_ERR_OVERFLOW, "fwd: KV block size overflows");
	kv->seq = calloc((size_t)n_seq, sizeof *kv->seq);
	if (kv->seq == NULL)
		return moe_fail(MOE_ERR_NOMEM, "fwd: KV tables of %d slots", n_seq);
	return MOE_OK;
}

void moe_kv_free(moe_kvcache *kv)
{
	if (kv->seq == NULL)
		return;
	for (int s = 0; s < kv->n_seq; s++) {
		moe_kv_trim(kv, s, 0);
		free(kv->seq[s].blk);
	}
	free(kv->seq);
	kv->seq = NULL;
}

moe_err moe_kv_reserve(moe_kvcache *kv, int s, int64_t n)
{
	moe_kv_seq *q = &kv->seq[s];
	const int64_t want = (n + MOE_FWD_KV_BLOCK - 1) / MOE_FWD_KV_BLOCK;
	if (want <= q->n_blk || kv->blk_bytes == 0)
		return MOE_OK;
	if (want > q->cap) {
		int64_t cap = q->cap > 0 ? q->cap : 4;
		while (cap < want)
			cap *= 2;
		char **t = realloc(q->blk, (size_t)cap * sizeof *t);
		if (t == NULL)
			return moe_fail(MOE_ERR_NOMEM, "fwd: KV block table of %lld entries",
			                (long long)cap);
		q->blk = t;
		q->cap = cap;
	}
	while (q->n_blk < want) {
		if (kv->budget > 0 && kv->in_use + kv->blk_bytes > kv->budget)
			return moe_fail(MOE_ERR_NOMEM,
			                "fwd: KV cache budget of %zu bytes reached: %zu bytes held "
			                "in %zu blocks of %zu bytes (%d positions each); slot %d "
			                "needs one more for position %lld",
			                kv->budget, kv->in_use, kv->in_use / kv->blk_bytes,
			                kv->blk_bytes, MOE_FWD_KV_BLOCK, s,
			                (long long)(q->n_blk * MOE_FWD_KV_BLOCK));
		char *b = moe_aligned_alloc(64, kv->blk_bytes);
		if (b == NULL)
			return moe_fail(MOE_ERR_NOMEM,
			                "fwd: allocating a KV block of %zu bytes (%zu bytes held)",
			                kv->blk_bytes, kv->in_use);
		q->blk[q->n_blk++] = b;
		kv->in_use += kv->blk_bytes;
	}
	return MOE_OK;
}

void moe_kv_trim(moe_kvcache *kv, int s, int64_t n)
{
	moe_kv_seq *q = &kv->seq[s];
	const int64_t keep = (n + MOE_FWD_KV_BLOCK - 1) / MOE_FWD_KV_BLOCK;
	while (q->n_blk > keep) {
		moe_aligned_free(q->blk[--q->n_blk]);
		kv->in_use -= kv->blk_bytes;
	}
	if (q->held > n)
		q->held = n;
}

moe_err moe_kv_store(const moe_kvcache *kv, void *dst, const float *src)
{
	switch (kv->type) {
	case MOE_TYPE_F32:
		memcpy(dst, src, (size_t)kv->row_len * sizeof(float));
		return MOE_OK;
	case MOE_TYPE_F16: {
		uint16_t *h = dst;
		for (int64_t i = 0; i < kv->row_len; i++)
			h[i] = moe_f32_to_f16(src[i]);
		return MOE_OK;
	}
	default:
		return moe_quantize_row(kv->type, dst, src, kv->row_len);
	}
}

void moe_kv_read(const moe_kvcache *kv, int s, int64_t p0, int64_t p1, void *out)
{
	char *o = out;
	for (int64_t p = p0; p < p1; p++)
		for (int l = 0; l < kv->n_layers; l++)
			for (int w = 0; w < 2; w++, o += kv->row)
				memcpy(o, moe_kv_row(kv, s, l, w, p), kv->row);
}

moe_err moe_kv_write(moe_kvcache *kv, int s, int64_t p0, int64_t p1, const void *in)
{
	moe_err err = moe_kv_reserve(kv, s, p1);
	if (err != MOE_OK) {
		moe_kv_trim(kv, s, kv->seq[s].held);
		return err;
	}
	const char *i = in;
	for (int64_t p = p0; p < p1; p++)
		for (int l = 0; l < kv->n_layers; l++)
			for (int w = 0; w < 2; w++, i += kv->row)
				memcpy(moe_kv_row(kv, s, l, w, p), i, kv->row);
	if (kv->seq[s].held < p1)
		kv->seq[s].held = p1;
	return MOE_OK;
}
