/* test_expert_ffn.c - the exact accumulator and the grouped expert FFN:
 * against a per-token reference and the same bits at every x86 level, one
 * test per ISA level (isa_levels.h; a level this CPU cannot run is reported
 * as skipped), batch/position/thread invariance, argument errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa_levels.h"
#include "kernels/kernels.h"

/* ---- fixed point ---------------------------------------------------------- */

Test(fix, exact_values_convert_exactly)
{
	cr_assert_eq(moe_fix_from_f32(0.0f), 0);
	cr_assert_eq(moe_fix_from_f32(-0.0f), 0);
	cr_assert_eq(moe_fix_from_f32(1.0f), (int64_t)1 << 32);
	cr_assert_eq(moe_fix_from_f32(-1.0f), -((int64_t)1 << 32));
	cr_assert_eq(moe_fix_from_f32(0.5f), (int64_t)1 << 31);
	cr_assert_eq(moe_fix_from_f32(1.5f), (int64_t)3 << 31);
	cr_assert_eq(moe_fix_from_f32(0x1p-32f), 1);
	cr_assert_eq(moe_fix_from_f32(-0x1p-32f), -1);
	cr_assert_eq(moe_fix_from_f32(12345.0f), (int64_t)12345 << 32);
	/* 3 * 2^-34 = 0.75 units: rounds to 1 */
	cr_assert_eq(moe_fix_from_f32(3 * 0x1p-34f), 1);
	for (int i = -1000; i <= 1000; i++) {
		float v = (float)i * 0.0078125f; /* multiples of 2^-7: exact */
		cr_assert_eq(moe_fix_to_f32(moe_fix_from_f32(v)), v);
	}
}

Test(fix, rounds_to_nearest_ties_away_from_zero)
{
	cr_assert_eq(moe_fix_from_f32(0x1p-33f), 1);   /* 0.5 unit */
	cr_assert_eq(moe_fix_from_f32(-0x1p-33f), -1); /* -0.5 unit */
	cr_assert_eq(moe_fix_from_f32(0x1p-34f), 0);   /* 0.25 unit */
	cr_assert_eq(moe_fix_from_f32(-0x1p-34f), 0);
	cr_assert_eq(moe_fix_from_f32(3 * 0x1p-33f), 2);   /* 1.5 units */
	cr_assert_eq(moe_fix_from_f32(5 * 0x1p-33f), 3);   /* 2.5 units */
	cr_assert_eq(moe_fix_from_f32(-5 * 0x1p-33f), -3); /* -2.5 units */
	cr_assert_eq(moe_fix_from_f32(1e-12f), 0);
	/* 1 + 2^-23 has its last bit at 2^-23: still exact */
	float v = 1.0f + 0x1p-23f;
	cr_assert_eq(moe_fix_from_f32(v), ((int64_t)1 << 32) + ((int64_t)1 << 9));
}

Test(fix, saturates_and_maps_nan_to_zero)
{
	cr_assert_eq(MOE_FIX_MAX, (int64_t)1 << 55);
	cr_assert_eq(moe_fix_from_f32(8388608.0f), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(1e30f), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(-1e30f), -MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(INFINITY), MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(-INFINITY), -MOE_FIX_MAX);
	cr_assert_eq(moe_fix_from_f32(NAN), 0);
	cr_assert_eq(moe_fix_from_f32(8388607.5f), (int64_t)16777215 << 31);
	/* the headroom: MOE_FIX_MAX_TERMS saturated values sum without overflow */
	moe_fix_t s = 0;
	for (int i = 0; i < MOE_FIX_MAX_TERMS - 1; i++)
		s += moe_fix_from_f32(1e30f);
	cr_assert_gt(s, 0);
	cr_assert_eq(moe_fix_to_f32(MOE_FIX_MAX), 8388608.0f);
	cr_assert_eq(moe_fix_to_f32(-MOE_FIX_MAX), -8388608.0f);
}

Test(fix, to_f32_is_correctly_rounded)
{
	/* (2^24 + 1) units: exact value 2^-8 + 2^-32 is not a float; the
	 * nearest is 2^-8 (the tie rounds to even) */
	cr_assert_eq(moe_fix_to_f32(((int64_t)1 << 24) + 1), 0x1p-8f);
	/* 2^24 + 3 units: nearest is (2^24 + 4) units */
	cr_assert_eq(moe_fix_to_f32(((int64_t)1 << 24) + 3),
	             (float)(((int64_t)1 << 24) + 4) * 0x1p-32f);
	cr_assert_eq(moe_fix_to_f32(-1), -0x1p-32f);
}

Test(fix, sums_are_order_independent)
{
	enum { N = 1000 };
	moe_fix_t v[N];
	uint32_t s = 12345;
	for (int i = 0; i < N; i++) {
		s = s * 1664525u + 1013904223u;
		float f = ((float)(s >> 8) / 16777216.0f - 0.5f) * (float)(1 << (i % 20));
		v[i] = moe_fix_from_f32(f);
	}
	moe_fix_t fwd = 0, bwd = 0, strided = 0;
	for (int i = 0; i < N; i++)
		fwd += v[i];
	for (int i = N - 1; i >= 0; i--)
		bwd += v[i];
	for (int k = 0; k < 7; k++)
		for (int i = k; i < N; i += 7)
			strided += v[i];
	cr_assert_eq(fwd, bwd);
	cr_assert_eq(fwd, strided);
}

/* ---- grouped expert FFN ------------------------------------------------------ */

enum { N_EXP = 6, N_EMBD = 256, N_FF = 256, N_USED = 3 };

static uint64_t rng = 0x243F6A8885A308D3ull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

typedef struct test_ffn {
	moe_expert_ffn f;
	const void *ptr[3][N_EXP];
	uint8_t *data[3];
} test_ffn;

static void make_mat(test_ffn *tf, int which, moe_type t, int64_t rows, int64_t cols)
{
	size_t rs = moe_row_size(t, cols);
	cr_assert_gt(rs, 0);
	tf->data[which] = malloc(rs * (size_t)rows * N_EXP);
	float *tmp = malloc(sizeof(float) * (size_t)cols);
	for (int e = 0; e < N_EXP; e++) {
		uint8_t *m = tf->data[which] + rs * (size_t)rows * e;
		for (int64_t r = 0; r < rows; r++) {
			for (int64_t c = 0; c < cols; c++)
				tmp[c] = frand() * 0.1f;
			moe_err err = moe_quantize_row(t, m + rs * r, tmp, cols);
			if (err == MOE_ERR_UNSUPPORTED &&
			    (t == MOE_TYPE_IQ2_XXS || t == MOE_TYPE_IQ2_XS ||
			     t == MOE_TYPE_IQ2_S)) {
				/* no IQ2 quantiser: random codes under d = 2^-8 */
				const size_t bs = moe_type_get(t)->type_size;
				for (size_t i = 0; i < rs; i++)
					m[rs * r + i] = (uint8_t)((frand() + 1.0f) * 127.99f);
				for (size_t b = 0; b < rs / bs; b++)
					m[rs * r + b * bs] = 0x00, m[rs * r + b * bs + 1] = 0x1c;
				err = MOE_OK;
			}
			cr_assert_eq(err, MOE_OK);
		}
		tf->ptr[which][e] = m;
	}
	free(tmp);
	moe_expert_mat *mat = which == 0 ? &tf->f.gate : which == 1 ? &tf->f.up : &tf->f.down;
	mat->type = t;
	mat->n_rows = rows;
	mat->n_cols = cols;
	mat->expert = tf->ptr[which];
}

static void make_ffn(test_ffn *tf, moe_type gate, moe_type up, moe_type down)
{
	memset(tf, 0, sizeof(*tf));
	tf->f.n_expert = N_EXP;
	make_mat(tf, 0, gate, N_FF, N_EMBD);
	make_mat(tf, 1, up, N_FF, N_EMBD);
	make_mat(tf, 2, down, N_EMBD, N_FF);
}

static void free_ffn(test_ffn *tf)
{
	for (int i = 0; i < 3; i++)
		free(tf->data[i]);
}

static void make_routing(int32_t *ids, float *w, int64_t n_tok)
{
	for (int64_t t = 0; t < n_tok; t++)
		for (int j = 0; j < N_USED; j++) {
			int32_t e;
			bool dup;
			do { /* distinct experts per token, as top-k gives */
				rng ^= rng << 13;
				rng ^= rng >> 7;
				rng ^= rng << 17;
				e = (int32_t)(rng % N_EXP);
				dup = false;
				for (int k = 0; k < j; k++)
					dup |= ids[t * N_USED + k] == e;
			} while (dup);
			ids[t * N_USED + j] = e;
			w[t * N_USED + j] = 0.2f + 0.6f * fabsf(frand());
		}
}

/* n_tok random input rows x [n_tok][N_EMBD], then their routing. */
static void make_batch(float *x, int32_t *ids, float *w, int64_t n_tok)
{
	for (int64_t i = 0; i < n_tok * N_EMBD; i++)
		x[i] = frand();
	make_routing(ids, w, n_tok);
}

static float ref_silu(float v)
{
	return v / (1.0f + expf(-v));
}

/* Row r of matrix m (type t, cols) of expert e dotted with act row a. */
static float ref_dot(const moe_expert_mat *m, int e, int64_t r, const void *a)
{
	float s;
	const uint8_t *base = m->expert[e];
	moe_vec_dot_get(m->type)(m->n_cols, &s, base + moe_row_size(m->type, m->n_cols) * r, a);
	return s;
}

/* The straightforward per-token version, one dot per output value. */
static void ref_ffn(moe_fix_t *acc, const moe_expert_ffn *f, const float *x, int64_t n_tok,
                    const int32_t *ids, const float *w)
{
	uint8_t xg[4096], xu[4096], hq[4096];
	float g[N_FF], h[N_FF];
	for (int64_t t = 0; t < n_tok; t++)
		for (int j = 0; j < N_USED; j++) {
			int e = ids[t * N_USED + j];
			if (e < 0 || f->gate.expert[e] == NULL)
				continue;
			cr_assert_eq(moe_quantize_act(f->gate.type, xg, x + t * N_EMBD, N_EMBD),
			             MOE_OK);
			cr_assert_eq(moe_quantize_act(f->up.type, xu, x + t * N_EMBD, N_EMBD),
			             MOE_OK);
			for (int r = 0; r < N_FF; r++) {
				g[r] = ref_dot(&f->gate, e, r, xg);
				h[r] = ref_silu(g[r]) * ref_dot(&f->up, e, r, xu);
			}
			cr_assert_eq(moe_quantize_act(f->down.type, hq, h, N_FF), MOE_OK);
			for (int r = 0; r < N_EMBD; r++)
				acc[t * N_EMBD + r] += moe_fix_from_f32(
				    w[t * N_USED + j] * ref_dot(&f->down, e, r, hq));
		}
}

static const moe_type ffn_types[][3] = {
    {MOE_TYPE_Q4_K, MOE_TYPE_Q4_K, MOE_TYPE_Q6_K}, /* Q4_K_M's experts */
    {MOE_TYPE_Q8_0, MOE_TYPE_Q8_0, MOE_TYPE_Q8_0},
    {MOE_TYPE_Q4_0, MOE_TYPE_Q4_0, MOE_TYPE_Q8_0},
    {MOE_TYPE_F32, MOE_TYPE_F32, MOE_TYPE_F32},
    {MOE_TYPE_Q8_0, MOE_TYPE_Q5_K, MOE_TYPE_Q4_K}, /* gate and up take different forms */
    {MOE_TYPE_IQ4_XS, MOE_TYPE_IQ4_XS, MOE_TYPE_IQ4_XS},
    {MOE_TYPE_MXFP4, MOE_TYPE_MXFP4, MOE_TYPE_MXFP4}, /* gpt-oss-style experts */
    {MOE_TYPE_IQ4_NL, MOE_TYPE_IQ4_XS, MOE_TYPE_IQ4_NL},
    {MOE_TYPE_Q2_K, MOE_TYPE_Q2_K, MOE_TYPE_Q3_K},       /* Q2_K's experts */
    {MOE_TYPE_Q3_K, MOE_TYPE_Q3_K, MOE_TYPE_Q4_K},       /* Q3_K_M's experts */
    {MOE_TYPE_IQ2_XXS, MOE_TYPE_IQ2_XS, MOE_TYPE_IQ2_S}, /* a UD-style mix */
    {MOE_TYPE_IQ2_S, MOE_TYPE_IQ2_S, MOE_TYPE_IQ2_XXS},
};
#define N_FFN_TYPES (sizeof(ffn_types) / sizeof(ffn_types[0]))

/* With the scalar level every kernel is the dot product the reference uses,
 * so the grouped FFN must give the reference's bits exactly; at a SIMD level
 * (whose dots the reference then uses) the tile kernels may order f32
 * operations differently, so there the check is against the float value with
 * a tolerance.  One test per level. */
static void matches_per_token_reference(moe_isa level)
{
	enum { T = 11 };
	moe_pool *pool = NULL;
	int compared = 0;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	for (size_t k = 0; k < N_FFN_TYPES; k++) {
		test_ffn tf;
		make_ffn(&tf, ffn_types[k][0], ffn_types[k][1], ffn_types[k][2]);
		float x[T * N_EMBD], w[T * N_USED];
		int32_t ids[T * N_USED];
		make_batch(x, ids, w, T);
		ids[4] = -1; /* an unused slot */
		static moe_fix_t acc[T * N_EMBD], ref[T * N_EMBD];
		memset(acc, 0, sizeof(acc));
		memset(ref, 0, sizeof(ref));
		ref_ffn(ref, &tf.f, x, T, ids, w);
		cr_assert_eq(moe_expert_ffn_run(pool, acc, &tf.f, x, T, ids, w, N_USED), MOE_OK,
		             "%s", moe_err_detail());
		double maxabs = 0;
		for (int i = 0; i < T * N_EMBD; i++)
			maxabs = fmax(maxabs, fabs(moe_fix_to_f32(ref[i])));
		cr_assert_gt(maxabs, 1e-3, "reference output is not trivially zero");
		for (int i = 0; i < T * N_EMBD; i++, compared++) {
			if (level == MOE_ISA_SCALAR) {
				cr_assert_eq(acc[i], ref[i], "types %zu elem %d", k, i);
				continue;
			}
			/* a tile kernel's result may differ from the dot's by a few
			 * f32 ulps of the block sums; through the quantised SwiGLU
			 * that can move an activation by one quantisation step:
			 * 1 % of the largest output bounds that with room. */
			double d = fabs(moe_fix_to_f32(acc[i]) - moe_fix_to_f32(ref[i]));
			cr_assert(d <= 0.01 * maxabs, "%s types %zu elem %d: %g vs %g",
			          moe_isa_name(level), k, i, moe_fix_to_f32(acc[i]),
			          moe_fix_to_f32(ref[i]));
		}
		free_ffn(&tf);
	}
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	moe_pool_destroy(pool);
}

ISA_LEVEL_TESTS(expert_ffn, matches_per_token_reference, matches_per_token_reference)

Test(expert_ffn, batch_position_and_thread_invariant)
{
	enum { NB = 24 };
	moe_pool *pools[2] = {NULL, NULL};
	cr_assert_eq(moe_pool_create(&pools[0], 1), MOE_OK);
	cr_assert_eq(moe_pool_create(&pools[1], 2), MOE_OK);
	for (size_t k = 0; k < N_FFN_TYPES; k++) {
		test_ffn tf;
		make_ffn(&tf, ffn_types[k][0], ffn_types[k][1], ffn_types[k][2]);
		float probe[N_EMBD], pw[N_USED];
		int32_t pid[N_USED];
		for (int i = 0; i < N_EMBD; i++)
			probe[i] = frand();
		make_routing(pid, pw, 1);
		static moe_fix_t alone[N_EMBD], acc[NB * N_EMBD];
		memset(alone, 0, sizeof(alone));
		cr_assert_eq(moe_expert_ffn_run(pools[0], alone, &tf.f, probe, 1, pid, pw, N_USED),
		             MOE_OK, "%s", moe_err_detail());
		const int sizes[] = {2, 9, NB};
		for (int pi = 0; pi < 2; pi++)
			for (int si = 0; si < 3; si++)
				for (int q = 0; q < 3; q++) {
					int n = sizes[si];
					int p = q == 0 ? 0 : q == 1 ? n / 2 : n - 1;
					static float x[NB * N_EMBD];
					float w[NB * N_USED];
					int32_t ids[NB * N_USED];
					make_batch(x, ids, w, n);
					memcpy(x + p * N_EMBD, probe, sizeof(probe));
					memcpy(ids + p * N_USED, pid, sizeof(pid));
					memcpy(w + p * N_USED, pw, sizeof(pw));
					memset(acc, 0, sizeof(acc));
					cr_assert_eq(moe_expert_ffn_run(pools[pi], acc, &tf.f, x, n,
					                                ids, w, N_USED),
					             MOE_OK);
					cr_assert(memcmp(acc + p * N_EMBD, alone, sizeof(alone)) ==
					              0,
					          "types %zu: %d threads, batch %d, position %d", k,
					          pi + 1, n, p);
				}
		free_ffn(&tf);
	}
	moe_pool_destroy(pools[1]);
	moe_pool_destroy(pools[0]);
}

/* Experts split over two "workers" (each holds half), partial sums added in
 * either order == the single-process result; the quantised-input entry point
 * gives the same bits as the float one. */
Test(expert_ffn, any_placement_gives_the_same_bits)
{
	enum { T = 7 };
	test_ffn tf;
	make_ffn(&tf, MOE_TYPE_Q4_K, MOE_TYPE_Q4_K, MOE_TYPE_Q6_K);
	float x[T * N_EMBD], w[T * N_USED];
	int32_t ids[T * N_USED];
	make_batch(x, ids, w, T);
	static moe_fix_t full[T * N_EMBD], a[T * N_EMBD], b[T * N_EMBD], q[T * N_EMBD];
	memset(full, 0, sizeof(full));
	cr_assert_eq(moe_expert_ffn_run(NULL, full, &tf.f, x, T, ids, w, N_USED), MOE_OK);

	const void *half[2][3][N_EXP];
	for (int h = 0; h < 2; h++)
		for (int m = 0; m < 3; m++)
			for (int e = 0; e < N_EXP; e++)
				half[h][m][e] = (e % 2 == h) ? tf.ptr[m][e] : NULL;
	moe_fix_t *parts[2] = {a, b};
	for (int h = 0; h < 2; h++) {
		moe_expert_ffn f = tf.f;
		f.gate.expert = half[h][0];
		f.up.expert = half[h][1];
		f.down.expert = half[h][2];
		memset(parts[h], 0, sizeof(a));
		cr_assert_eq(moe_expert_ffn_run(NULL, parts[h], &f, x, T, ids, w, N_USED), MOE_OK);
	}
	for (int i = 0; i < T * N_EMBD; i++) {
		cr_assert_eq(a[i] + b[i], full[i]);
		cr_assert_eq(b[i] + a[i], full[i]);
	}

	size_t as = moe_act_row_size(MOE_TYPE_Q4_K, N_EMBD);
	uint8_t *xq = malloc(as * T);
	cr_assert_eq(moe_quantize_act_rows(NULL, xq, MOE_TYPE_Q4_K, x, N_EMBD, T), MOE_OK);
	memset(q, 0, sizeof(q));
	cr_assert_eq(moe_expert_ffn_run_q(NULL, q, &tf.f, xq, T, ids, w, N_USED), MOE_OK);
	cr_assert(memcmp(q, full, sizeof(q)) == 0);
	free(xq);
	free_ffn(&tf);
}

Test(expert_ffn, rejects_bad_input_without_touching_acc)
{
	test_ffn tf;
	make_ffn(&tf, MOE_TYPE_Q8_0, MOE_TYPE_Q8_0, MOE_TYPE_Q8_0);
	float x[2 * N_EMBD] = {0}, w[2 * N_USED] = {1, 1, 1, 1, 1, 1};
	int32_t ids[2 * N_USED] = {0, 1, 2, 3, N_EXP, 4};
	static moe_fix_t acc[2 * N_EMBD];
	for (int i = 0; i < 2 * N_EMBD; i++)
		acc[i] = 77;
	cr_assert_eq(moe_expert_ffn_run(NULL, acc, &tf.f, x, 2, ids, w, N_USED), MOE_ERR_BAD_VALUE);
	cr_assert_eq(moe_expert_ffn_run(NULL, acc, &tf.f, x, 2, ids, w, 0), MOE_ERR_BAD_VALUE);
	moe_expert_ffn bad = tf.f;
	bad.down.n_rows = N_EMBD / 2;
	cr_assert_eq(moe_expert_ffn_run(NULL, acc, &bad, x, 2, ids, w, N_USED), MOE_ERR_BAD_SHAPE);
	bad = tf.f;
	bad.up.type = MOE_TYPE_Q4_K;
	cr_assert_eq(moe_expert_ffn_run_q(NULL, acc, &bad, x, 2, ids, w, N_USED),
	             MOE_ERR_UNSUPPORTED);
	for (int i = 0; i < 2 * N_EMBD; i++)
		cr_assert_eq(acc[i], 77);
	free_ffn(&tf);
}

/* A worker's whole expert FFN (products, SwiGLU, the quantised h, the
 * fixed-point sums) gives the same bits at the scalar, AVX2 and AVX-512
 * levels, for every type mix whose products follow the canonical block
 * arithmetic (see test_matmul): workers of any of these kinds can share a
 * cluster.  One test per x86 SIMD level. */
static void same_bits_as_scalar(moe_isa level)
{
	enum { T = 19 };
	moe_pool *pool = NULL;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	int compared = 0;
	for (size_t k = 0; k < N_FFN_TYPES; k++) {
		bool tiled = true;
		for (int m = 0; m < 3; m++) {
			moe_type t = ffn_types[k][m];
			tiled &= t == MOE_TYPE_Q4_K || t == MOE_TYPE_Q5_K || t == MOE_TYPE_Q6_K ||
			         t == MOE_TYPE_Q8_0 || t == MOE_TYPE_Q4_0 || t == MOE_TYPE_Q5_0 ||
			         t == MOE_TYPE_IQ4_NL || t == MOE_TYPE_IQ4_XS ||
			         t == MOE_TYPE_MXFP4 || t == MOE_TYPE_Q2_K || t == MOE_TYPE_Q3_K ||
			         t == MOE_TYPE_IQ2_XXS || t == MOE_TYPE_IQ2_XS ||
			         t == MOE_TYPE_IQ2_S;
		}
		if (!tiled)
			continue;
		test_ffn tf;
		make_ffn(&tf, ffn_types[k][0], ffn_types[k][1], ffn_types[k][2]);
		float x[T * N_EMBD], w[T * N_USED];
		int32_t ids[T * N_USED];
		make_batch(x, ids, w, T);
		static moe_fix_t want[T * N_EMBD], got[T * N_EMBD];
		memset(want, 0, sizeof(want));
		memset(got, 0, sizeof(got));
		cr_assert_eq(moe_isa_set(MOE_ISA_SCALAR), MOE_OK);
		cr_assert_eq(moe_expert_ffn_run(pool, want, &tf.f, x, T, ids, w, N_USED), MOE_OK);
		cr_assert_eq(moe_isa_set(level), MOE_OK);
		cr_assert_eq(moe_expert_ffn_run(pool, got, &tf.f, x, T, ids, w, N_USED), MOE_OK);
		cr_assert(memcmp(want, got, sizeof(got)) == 0, "types %zu: %s and scalar differ", k,
		          moe_isa_name(level));
		compared++;
		free_ffn(&tf);
	}
	cr_assert_gt(compared, 0, "%s: no type mix compared", moe_isa_name(level));
	cr_log_info("%s: %d type mixes give the scalar level's bits", moe_isa_name(level),
	            compared);
	moe_pool_destroy(pool);
}

#if defined(__x86_64__)
ISA_TEST_AT(expert_ffn, same_bits_as_scalar, same_bits_as_scalar, MOE_ISA_AVX2, avx2)
ISA_TEST_AT(expert_ffn, same_bits_as_scalar, same_bits_as_scalar, MOE_ISA_AVX512, avx512)
#endif

/* Experts repacked in place (moe_repack_rows, lanes set) give the bits of the
 * same experts as stored, at every level, for 1 and 11 tokens (one token per
 * expert: the four-row one-token kernels; several: the token groups), on two
 * threads; in the second mix down (Q4_K) stays as stored. */
static void repacked_same_bits(moe_isa level)
{
	static const moe_type mixes[][3] = {
	    {MOE_TYPE_Q2_K, MOE_TYPE_Q2_K, MOE_TYPE_Q3_K},
	    {MOE_TYPE_Q3_K, MOE_TYPE_Q3_K, MOE_TYPE_Q4_K},
	};
	enum { T = 11 };
	moe_pool *pool = NULL;
	int compared = 0;
	cr_assert_eq(moe_pool_create(&pool, 2), MOE_OK);
	cr_assert_eq(moe_isa_set(level), MOE_OK);
	for (size_t k = 0; k < 2; k++) {
		test_ffn tf;
		make_ffn(&tf, mixes[k][0], mixes[k][1], mixes[k][2]);
		float x[T * N_EMBD], w[T * N_USED];
		int32_t ids[T * N_USED];
		make_batch(x, ids, w, T);
		static moe_fix_t want[2][T * N_EMBD], got[T * N_EMBD];
		for (int n = 0; n < 2; n++) {
			memset(want[n], 0, sizeof(want[n]));
			cr_assert_eq(
			    moe_expert_ffn_run(pool, want[n], &tf.f, x, n ? T : 1, ids, w, N_USED),
			    MOE_OK);
		}
		moe_expert_mat *mats[3] = {&tf.f.gate, &tf.f.up, &tf.f.down};
		for (int i = 0; i < 3; i++) {
			if (moe_repack_row_size(mats[i]->type, mats[i]->n_cols) == 0)
				continue;
			cr_assert_eq(moe_repack_rows(tf.data[i], tf.data[i], mats[i]->type,
			                             mats[i]->n_rows * N_EXP, mats[i]->n_cols),
			             MOE_OK);
			mats[i]->lanes = true;
		}
		for (int n = 0; n < 2; n++) {
			memset(got, 0, sizeof(got));
			cr_assert_eq(
			    moe_expert_ffn_run(pool, got, &tf.f, x, n ? T : 1, ids, w, N_USED),
			    MOE_OK);
			for (int i = 0; i < (n ? T : 1) * N_EMBD; i++, compared++)
				cr_assert_eq(got[i], want[n][i], "%s mix %zu, %d tokens, elem %d",
				             moe_isa_name(level), k, n ? T : 1, i);
		}
		/* a type without a lanes layout cannot be marked repacked */
		if (!mats[2]->lanes) {
			mats[2]->lanes = true;
			cr_assert_eq(moe_expert_ffn_run(pool, got, &tf.f, x, 1, ids, w, N_USED),
			             MOE_ERR_UNSUPPORTED);
		}
		free_ffn(&tf);
	}
	cr_assert_gt(compared, 0, "%s: nothing compared", moe_isa_name(level));
	moe_pool_destroy(pool);
}

ISA_LEVEL_TESTS(expert_ffn, repacked_same_bits, repacked_same_bits)
