/*
 * isa_avx2_gemm.c - tile kernels (gemm.h) built with the avx2 flags.
 *
 * One tile = 8 (row, token) pairs: R rows x T tokens with R * T = 8 (shapes
 * 8x1 for one token, 2x4 and 1x8 for many).  Pair k is row k / T, token
 * k % T.  For every block, each pair's integer dot is exact in int32 (the
 * same maddubs/madd sums as the per-row dots), the 8 pairs' partial-sum
 * vectors are reduced together by an unpack-and-add tree to one vector whose
 * lane k is pair k's exact block sum, and that vector is converted and
 * multiplied-added (one FMA) by the 8 pairs' scale products into one f32
 * accumulator: lane k accumulates pair k's blocks in block order and is the
 * result.  Every lane goes through the same instructions whatever the shape,
 * and integer sums are exact (their order is free), so the bits of a result
 * depend only on its row and token: not on the shape, the position in the
 * tile, or on padding (an edge tile repeats its last row or token and drops
 * those lanes).
 *
 * Why tiles: the weight unpacking (nibbles, 6-bit scales, high bits) is done
 * once per row and block and met by up to 8 tokens; one token's activation
 * loads are shared by 8 rows; and the per-block f32 work (conversion, scale,
 * FMA) and the final horizontal sums serve 8 results at once.
 *
 * One row against one to four tokens on K-quants (decode, and experts that
 * met only a few tokens) takes a one-row kernel doing each pair's lane
 * arithmetic in scalar registers (the block's integer sum reduced exactly,
 * then int->f32 and one fused multiply-add, as in the lane): 8-row tiles ran
 * as fast in cache but streamed from DRAM at about half the per-row dot's
 * rate (8 interleaved row streams; software prefetch did not help), and the
 * 2x4 tile padded 2 tokens to 4 and streamed 2 rows: 2 tokens on a
 * 151936 x 2048 Q6_K matrix took 62.6 ms with 2x4 and 22.8 ms with 1x2 (2
 * threads).  (One token on 4 or more K-quant rows now takes four rows at a
 * time, in four row runs: see run_rows4.)  The 32-block types use 8x1 for one token, its 8 lanes
 * laid over 8 contiguous runs of the rows (run_lanes8), so that each lane reads one long stream:
 * over 8 adjacent rows, 8 streams of a few KB each that ended with every tile, it streamed at half
 * its in-cache rate (Q4_0 9.6, Q8_0 16.1 GB/s on one Zen 4 core; 15.2 and 21.7 with long runs).  A
 * 4-row VNNI variant with the same lanes was slower still (8 adjacent rows
 * was not the cause, their shortness was), as was software prefetching.
 */
#include <stddef.h>
#include <stdlib.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

enum { NP = 8 }; /* pairs per tile */

/* What a 1x8 K-quant tile needs of its 8 tokens per block, gathered once per
 * group of tokens instead of once per row: the tokens' d, and the bsums that
 * meet the mins, summed per 32-value sub-block (BS[s] = bsums[2s] +
 * bsums[2s+1], |BS| <= 2 * 16 * 128) and laid out for one madd per pair of
 * sub-blocks: bs[k] = BS[2k][t], BS[2k+1][t] for t = 0..7. */
typedef struct k8_prep {
	float dy[NP];
	int16_t bs[4][2 * NP];
} k8_prep;

static void prep_k8(k8_prep *p, int64_t nb, const uint8_t *const a[NP])
{
	for (int64_t i = 0; i < nb; i++) {
		for (int t = 0; t < NP; t++) {
			const moe_block_q8_K *y =
			    (const moe_block_q8_K *)(a[t] + (size_t)i * sizeof(moe_block_q8_K));
			p[i].dy[t] = y->d;
			for (int s = 0; s < 8; s++)
				p[i].bs[s / 2][2 * t + s % 2] =
				    (int16_t)(y->bsums[2 * s] + y->bsums[2 * s + 1]);
		}
	}
}

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Per-lane fp16 scale at byte off of each pair's row block (rw) and token
 * block (ta): lane k = f32(row k/T) * f32(token k%T), or the token's f32 when
 * tok_f32 (Q8_K).  A single row or token is broadcast. */
static ALWAYS_INLINE __m256 lane_rows_h(int R, int T, const uint8_t *const w[NP], size_t off)
{
	if (R == 1)
		return _mm256_set1_ps(half_to_f32((uint16_t)ld16(w[0] + off)));
	const uint8_t *p[NP];
	for (int k = 0; k < NP; k++)
		p[k] = w[k / T];
	return half8_ptr(p, off);
}

static ALWAYS_INLINE __m256 lane_toks_h(int T, const uint8_t *const a[NP], size_t off)
{
	if (T == 1)
		return _mm256_set1_ps(half_to_f32((uint16_t)ld16(a[0] + off)));
	const uint8_t *p[NP];
	for (int k = 0; k < NP; k++)
		p[k] = a[k % T];
	return half8_ptr(p, off);
}

static ALWAYS_INLINE __m256 lane_toks_f(int T, const uint8_t *const a[NP], size_t off)
{
	float v[NP];
	for (int k = 0; k < NP; k++)
		memcpy(&v[k], a[k % T] + off, sizeof(float));
	if (T == 1)
		return _mm256_set1_ps(v[0]);
	return _mm256_setr_ps(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
}

/* ---- Q4_K / Q5_K x Q8_K ---------------------------------------------------------- */

/* Q4_K (hbits false) or Q5_K (true). Per row and block the scales and the
 * quants are unpacked once; per pair: 8 maddubs (u8 x s8 pairs, at most
 * 2 * 31 * 127 < 2^15) and 8 madds by the sub-block scales -> int32, then
 * the mins' term from the activation's bsums (one madd). Block value:
 * d * d_a * isum - dmin * d_a * msum, accumulated in two f32 lanes. */
static ALWAYS_INLINE void tile_k45(int R, int T, bool hbits, int64_t n_cols, float out[NP],
                                   const uint8_t *const w[NP], const uint8_t *const a[NP],
                                   const k8_prep *prep, bool use_prep)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	const size_t qs_off = hbits ? offsetof(moe_block_q5_K, qs) : offsetof(moe_block_q4_K, qs);
	/* one row and at most 4 tokens: each pair's lane arithmetic on scalars */
	const bool scalar = R == 1 && T <= 4;
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
	__m128 s_acc2[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs;
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		__m256i is[NP], ms[NP], sm[NP];

#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			const uint8_t *b = w[r] + wo;
			sm[r] = k4_scales_mins(b + offsetof(moe_block_q4_K, scales));
			__m256i qh = _mm256_setzero_si256();
			if (hbits)
				qh = _mm256_loadu_si256(
				    (const __m256i *)(b + offsetof(moe_block_q5_K, qh)));
#pragma GCC unroll 8
			for (int c = 0; c < 4; c++) {
				__m256i q =
				    _mm256_loadu_si256((const __m256i *)(b + qs_off + 32 * c));
				pin(&q);
				__m256i lo, hi;
				k45_unpack(&lo, &hi, q, qh, c, hbits);
				__m256i s0 = _mm256_shuffle_epi8(sm[r], pick_scale(2 * c));
				__m256i s1 = _mm256_shuffle_epi8(sm[r], pick_scale(2 * c + 1));
#pragma GCC unroll 8
				for (int t = 0; t < T; t++) {
					const int8_t *y =
					    (const int8_t *)(a[t] + ao +
					                     offsetof(moe_block_q8_K, qs));
					__m256i y0 =
					    _mm256_loadu_si256((const __m256i *)(y + 64 * c));
					__m256i y1 =
					    _mm256_loadu_si256((const __m256i *)(y + 64 * c + 32));
					__m256i p = _mm256_add_epi32(
					    _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), s0),
					    _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), s1));
					is[r * T + t] =
					    c == 0 ? p : _mm256_add_epi32(is[r * T + t], p);
					pin(&is[r * T + t]);
				}
			}
		}
		if (scalar) {
			const uint8_t *b = w[0] + wo;
#pragma GCC unroll 4
			for (int t = 0; t < T; t++) {
				s_acc2[t] = k45_row_block(s_acc2[t], is[t], sm[0], b,
				                          (const moe_block_q8_K *)(a[t] + ao));
			}
			continue;
		}
		__m256 vi = _mm256_cvtepi32_ps(sum8_i32(is)), vm, dy;
		if (use_prep) { /* R == 1, T == NP */
			/* lane t = sum over sub-blocks of mn[s] * BS[s][t]: the same
			 * integer as below, in 4 madds instead of 8 and a tree */
			const k8_prep *pp = &prep[i];
			const __m256i m = k8_mins(sm[0], pp->bs);
			vm = _mm256_cvtepi32_ps(m);
			dy = _mm256_loadu_ps(pp->dy);
		} else {
#pragma GCC unroll 8
			for (int k = 0; k < NP; k++)
				ms[k] = k4_mins(sm[k / T],
				                (const int16_t *)(a[k % T] + ao +
				                                  offsetof(moe_block_q8_K, bsums)));
			vm = _mm256_cvtepi32_ps(sum8_i32(ms));
			dy = lane_toks_f(T, a, ao + offsetof(moe_block_q8_K, d));
		}
		__m256 d = lane_rows_h(R, T, w, wo + offsetof(moe_block_q4_K, d));
		__m256 dmin = lane_rows_h(R, T, w, wo + offsetof(moe_block_q4_K, dmin));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, dy), acc);
		accm = _mm256_fmadd_ps(vm, _mm256_mul_ps(dmin, dy), accm);
	}
	if (scalar)
		for (int t = 0; t < T; t++)
			out[t] = k45_row_result(s_acc2[t]);
	else
		_mm256_storeu_ps(out, _mm256_sub_ps(acc, accm));
}

/* ---- Q6_K x Q8_K ----------------------------------------------------------------- */

/* Per row and block the 6-bit quants (0..63) are assembled once; per pair 8
 * maddubs (at most 2 * 63 * 127 < 2^15) and 8 madds by the int8 sub-block
 * scales, minus 32 * sum(scale * bsum) for the -32 offset: exact in int32. */
static ALWAYS_INLINE void tile_q6_K(int R, int T, int64_t n_cols, float out[NP],
                                    const uint8_t *const w[NP], const uint8_t *const a[NP])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const bool scalar = R == 1 && T <= 4; /* as in tile_k45 */
	__m256 acc = _mm256_setzero_ps();
	__m128 s_acc1[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q6_K);
		const size_t ao = (size_t)i * sizeof(moe_block_q8_K);
		__m256i is[NP];

#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			const moe_block_q6_K *x = (const moe_block_q6_K *)(w[r] + wo);
			__m256i sc16 =
			    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
			/* -32 * scale fits int16 (|.| <= 4096), and each madd lane
			 * below (two products of at most 4096 * 2048) fits int32 */
			__m256i scm =
			    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
#pragma GCC unroll 8
			for (int t = 0; t < T; t++) {
				const moe_block_q8_K *y = (const moe_block_q8_K *)(a[t] + ao);
				is[r * T + t] = _mm256_madd_epi16(
				    scm, _mm256_loadu_si256((const __m256i *)y->bsums));
			}
#pragma GCC unroll 8
			for (int h = 0; h < 2; h++) {
				__m256i sc = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
				                    : _mm256_permute2x128_si256(sc16, sc16, 0x11);
				__m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
				__m256i l0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
				__m256i l1 =
				    _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
				__m256i q[4];
				pin(&qh);
				pin(&l0);
				pin(&l1);
				q6_assemble(q, l0, l1, qh);
#pragma GCC unroll 8
				for (int j = 0; j < 4; j++) {
					/* low half: scale 2j, high half: scale 2j+1 */
					__m256i scj = _mm256_shuffle_epi8(
					    sc, _mm256_set_m128i(
					            _mm256_castsi256_si128(pick16(2 * j + 1)),
					            _mm256_castsi256_si128(pick16(2 * j))));
#pragma GCC unroll 8
					for (int t = 0; t < T; t++) {
						const int8_t *yq =
						    ((const moe_block_q8_K *)(a[t] + ao))->qs +
						    128 * h + 32 * j;
						__m256i yy =
						    _mm256_loadu_si256((const __m256i *)yq);
						__m256i p = _mm256_madd_epi16(
						    _mm256_maddubs_epi16(q[j], yy), scj);
						is[r * T + t] = _mm256_add_epi32(is[r * T + t], p);
						pin(&is[r * T + t]);
					}
				}
			}
		}
		if (scalar) {
			float d = half_to_f32(((const moe_block_q6_K *)(w[0] + wo))->d);
#pragma GCC unroll 4
			for (int t = 0; t < T; t++) {
				float dy = ((const moe_block_q8_K *)(a[t] + ao))->d;
				s_acc1[t] = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum_i32_v(is[t])),
				                         _mm_set_ss(d * dy), s_acc1[t]);
			}
			continue;
		}
		__m256 vi = _mm256_cvtepi32_ps(sum8_i32(is));
		__m256 dy = lane_toks_f(T, a, ao + offsetof(moe_block_q8_K, d));
		__m256 d = lane_rows_h(R, T, w, wo + offsetof(moe_block_q6_K, d));
		acc = _mm256_fmadd_ps(vi, _mm256_mul_ps(d, dy), acc);
	}
	if (scalar)
		for (int t = 0; t < T; t++)
			out[t] = _mm_cvtss_f32(s_acc1[t]);
	else
		_mm256_storeu_ps(out, acc);
}

/* ---- one token, four rows (decode) -----------------------------------------------
 *
 * One token against K-quant rows four at a time: the token's loads serve four
 * rows, and the blocks' integer sums (Q4_K/Q5_K: each row's isum and mins
 * sum) are reduced together by unpacks and adds instead of two horizontal adds
 * per row (vphaddd costs two cycles on Zen 3), then converted and
 * fused-multiply-added once, in a vector whose lanes are the rows'
 * accumulators: per lane the one-row kernel's arithmetic (exact block sum, one
 * conversion, one FMA by the same scale product), so the same bits.  In cache
 * on one Zen 3 core (moe_dotbench --matmul, best of 3000 samples, 2 vCPUs
 * shared with other work): Q4_K 17.5 GB/s one row at a time, 20 two rows,
 * 22.4 four. */

/* Q4_K (hbits false) or Q5_K (true), rows w[0..3]: accumulator lanes 2r and
 * 2r + 1 = row r's isum at d * dy and mins sum at dmin * dy (sum8_i32 puts
 * v[k]'s sum in lane k); out[r] = lane 2r - lane 2r + 1. */
static ALWAYS_INLINE void rows4_k45(bool hbits, int64_t n_cols, float out[4],
                                    const uint8_t *const w[4], const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t wbs = hbits ? sizeof(moe_block_q5_K) : sizeof(moe_block_q4_K);
	const size_t qs_off = hbits ? offsetof(moe_block_q5_K, qs) : offsetof(moe_block_q4_K, qs);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const uint8_t *b[4];
		const moe_block_q8_K *y = (const moe_block_q8_K *)a + i;
		__m256i sm[4], qh[4], v[8];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			b[r] = w[r] + (size_t)i * wbs;
			sm[r] = k4_scales_mins(b[r] + offsetof(moe_block_q4_K, scales));
			qh[r] = hbits ? _mm256_loadu_si256(
			                    (const __m256i *)(b[r] + offsetof(moe_block_q5_K, qh)))
			              : _mm256_setzero_si256();
		}
#pragma GCC unroll 4
		for (int c = 0; c < 4; c++) {
			const __m256i y0 = _mm256_loadu_si256((const __m256i *)(y->qs + 64 * c));
			const __m256i y1 =
			    _mm256_loadu_si256((const __m256i *)(y->qs + 64 * c + 32));
#pragma GCC unroll 4
			for (int r = 0; r < 4; r++) {
				__m256i q =
				    _mm256_loadu_si256((const __m256i *)(b[r] + qs_off + 32 * c));
				pin(&q);
				__m256i lo, hi;
				k45_unpack(&lo, &hi, q, qh[r], c, hbits);
				const __m256i p = _mm256_add_epi32(
				    _mm256_madd_epi16(
				        _mm256_maddubs_epi16(lo, y0),
				        _mm256_shuffle_epi8(sm[r], pick_scale(2 * c))),
				    _mm256_madd_epi16(
				        _mm256_maddubs_epi16(hi, y1),
				        _mm256_shuffle_epi8(sm[r], pick_scale(2 * c + 1))));
				v[2 * r] = c == 0 ? p : _mm256_add_epi32(v[2 * r], p);
				pin(&v[2 * r]); /* one chain per row: fewer live registers */
			}
		}
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++)
			v[2 * r + 1] = k4_mins(sm[r], y->bsums);
		uint32_t u[4]; /* each row's fp16 d and dmin */
		for (int r = 0; r < 4; r++)
			memcpy(&u[r], b[r] + offsetof(moe_block_q4_K, d), 4);
		const __m256 dd = _mm256_mul_ps(
		    _mm256_cvtph_ps(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0])),
		    _mm256_set1_ps(y->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), dd, acc);
	}
	float o[8];
	_mm256_storeu_ps(o, acc);
	for (int r = 0; r < 4; r++)
		out[r] = o[2 * r] - o[2 * r + 1];
}

static void q4_K_rows4(int64_t n, float out[4], const uint8_t *const w[4], const uint8_t *a)
{
	rows4_k45(false, n, out, w, a);
}

static void q5_K_rows4(int64_t n, float out[4], const uint8_t *const w[4], const uint8_t *a)
{
	rows4_k45(true, n, out, w, a);
}

/* Q6_K, rows w[0..3]: accumulator lane r = row r's block sums at d * dy (the
 * tile's per-row arithmetic: -32 * sum(scale * bsum) first, then per half
 * the assembled 6-bit quants by maddubs and the int8 scales by madd).  Each
 * row's block is done whole before the next (the token's values loaded again
 * from L1): fewer live registers than the four rows side by side, 25.0-25.3
 * against 23.1-24.8 GB/s in cache (one Zen 3 core, alternated). */
static void q6_K_rows4(int64_t n_cols, float out[4], const uint8_t *const w[4], const uint8_t *a)
{
	const int64_t nb = n_cols / MOE_QK_K;
	__m128 acc = _mm_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q6_K *x[4];
		const moe_block_q8_K *y = (const moe_block_q8_K *)a + i;
		__m256i is[4];
#pragma GCC unroll 4
		for (int r = 0; r < 4; r++) {
			x[r] = (const moe_block_q6_K *)(w[r] + (size_t)i * sizeof(moe_block_q6_K));
			const __m256i sc16 =
			    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[r]->scales));
			/* -32 * scale fits int16 (as in tile_q6_K) */
			__m256i s = _mm256_madd_epi16(
			    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5)),
			    _mm256_loadu_si256((const __m256i *)y->bsums));
#pragma GCC unroll 2
			for (int h = 0; h < 2; h++) {
				const __m256i sc =
				    h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
				           : _mm256_permute2x128_si256(sc16, sc16, 0x11);
				__m256i qh =
				    _mm256_loadu_si256((const __m256i *)(x[r]->qh + 32 * h));
				__m256i l0 =
				    _mm256_loadu_si256((const __m256i *)(x[r]->ql + 64 * h));
				__m256i l1 =
				    _mm256_loadu_si256((const __m256i *)(x[r]->ql + 64 * h + 32));
				__m256i q[4];
				pin(&qh);
				pin(&l0);
				pin(&l1);
				q6_assemble(q, l0, l1, qh);
#pragma GCC unroll 4
				for (int j = 0; j < 4; j++) {
					/* low half: scale 2j, high half: scale 2j+1 */
					const __m256i scj = _mm256_shuffle_epi8(
					    sc, _mm256_set_m128i(
					            _mm256_castsi256_si128(pick16(2 * j + 1)),
					            _mm256_castsi256_si128(pick16(2 * j))));
					const __m256i yy = _mm256_loadu_si256(
					    (const __m256i *)(y->qs + 128 * h + 32 * j));
					s = _mm256_add_epi32(
					    s,
					    _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], yy), scj));
					pin(&s);
				}
			}
			is[r] = s;
		}
		uint64_t d4 = 0; /* the rows' fp16 d */
		for (int r = 0; r < 4; r++)
			d4 |= ld16(&x[r]->d) << 16 * r;
		const __m128 d =
		    _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)d4)), _mm_set1_ps(y->d));
		acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_i32(is[0], is[1], is[2], is[3])), d, acc);
	}
	_mm_storeu_ps(out, acc);
}

/* ---- 32-blocks x Q8_0 ------------------------------------------------------------ */

enum { KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 };

/* The signed quants of a 32-block as int8 (Q8_0 as is, Q4_0 q - 8, Q5_0
 * q - 16). */
static ALWAYS_INLINE __m256i q32_values(int kind, const uint8_t *b)
{
	if (kind == KIND_Q8_0)
		return _mm256_loadu_si256((const __m256i *)(b + offsetof(moe_block_q8_0, qs)));
	if (kind == KIND_Q4_0)
		return _mm256_sub_epi8(unpack_nibbles(b + offsetof(moe_block_q4_0, qs)),
		                       _mm256_set1_epi8(8));
	__m256i hi = _mm256_andnot_si256(spread_bits(b + offsetof(moe_block_q5_0, qh)),
	                                 _mm256_set1_epi8((char)0xf0));
	return _mm256_or_si256(unpack_nibbles(b + offsetof(moe_block_q5_0, qs)), hi);
}

/* Per row and block |q| once; per pair sign(y, q) and one maddubs. Q8_0's
 * pairs (up to 2 * 127 * 127) are widened by a madd before the tree; Q4_0's
 * and Q5_0's (up to 2 * 16 * 127) are summed 8 to a lane in int16 by the
 * tree first (at most 16 * 16 * 127 < 2^15). Block value: d * d_a * isum. */
static ALWAYS_INLINE void tile_q32(int R, int T, int kind, int64_t n_cols, float out[NP],
                                   const uint8_t *const w[NP], const uint8_t *const a[NP])
{
	const int64_t nb = n_cols / MOE_QK32;
	const size_t wbs = kind == KIND_Q8_0   ? sizeof(moe_block_q8_0)
	                   : kind == KIND_Q4_0 ? sizeof(moe_block_q4_0)
	                                       : sizeof(moe_block_q5_0);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * wbs, ao = (size_t)i * sizeof(moe_block_q8_0);
		__m256i v[NP];

#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			__m256i qx = q32_values(kind, w[r] + wo);
			pin(&qx);
			__m256i ax = _mm256_sign_epi8(qx, qx);
#pragma GCC unroll 8
			for (int t = 0; t < T; t++) {
				__m256i qy = _mm256_loadu_si256(
				    (const __m256i *)(a[t] + ao + offsetof(moe_block_q8_0, qs)));
				__m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx));
				v[r * T + t] = kind == KIND_Q8_0
				                   ? _mm256_madd_epi16(p, _mm256_set1_epi16(1))
				                   : p;
			}
		}
		__m256i s = kind == KIND_Q8_0 ? sum8_i32(v) : sum8_i16(v);
		__m256 d = _mm256_mul_ps(lane_rows_h(R, T, w, wo), lane_toks_h(T, a, ao));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* ---- shapes ---------------------------------------------------------------------- */

/* The K-quant shapes: 8x1, 2x4, 1x8 and the scalar-lane 1x1 .. 1x4. */
static void q4_K_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(8, 1, false, n, o, w, a, prep, false);
}
static void q4_K_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(2, 4, false, n, o, w, a, prep, false);
}
static void q4_K_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 8, false, n, o, w, a, prep, false);
}
static void q4_K_1x8p(int64_t n, float o[NP], const uint8_t *const w[NP],
                      const uint8_t *const a[NP], const void *prep)
{
	tile_k45(1, 8, false, n, o, w, a, prep, true);
}
static void q4_K_1x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 1, false, n, o, w, a, prep, false);
}
static void q4_K_1x2(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 2, false, n, o, w, a, prep, false);
}
static void q4_K_1x3(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 3, false, n, o, w, a, prep, false);
}
static void q4_K_1x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 4, false, n, o, w, a, prep, false);
}
static void q5_K_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(8, 1, true, n, o, w, a, prep, false);
}
static void q5_K_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(2, 4, true, n, o, w, a, prep, false);
}
static void q5_K_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 8, true, n, o, w, a, prep, false);
}
static void q5_K_1x8p(int64_t n, float o[NP], const uint8_t *const w[NP],
                      const uint8_t *const a[NP], const void *prep)
{
	tile_k45(1, 8, true, n, o, w, a, prep, true);
}
static void q5_K_1x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 1, true, n, o, w, a, prep, false);
}
static void q5_K_1x2(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 2, true, n, o, w, a, prep, false);
}
static void q5_K_1x3(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 3, true, n, o, w, a, prep, false);
}
static void q5_K_1x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	tile_k45(1, 4, true, n, o, w, a, prep, false);
}
static void q6_K_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(8, 1, n, o, w, a);
}
static void q6_K_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(2, 4, n, o, w, a);
}
static void q6_K_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(1, 8, n, o, w, a);
}
static void q6_K_1x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(1, 1, n, o, w, a);
}
static void q6_K_1x2(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(1, 2, n, o, w, a);
}
static void q6_K_1x3(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(1, 3, n, o, w, a);
}
static void q6_K_1x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q6_K(1, 4, n, o, w, a);
}
static void q8_0_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(8, 1, KIND_Q8_0, n, o, w, a);
}
static void q8_0_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(2, 4, KIND_Q8_0, n, o, w, a);
}
static void q8_0_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(1, 8, KIND_Q8_0, n, o, w, a);
}
static void q4_0_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(8, 1, KIND_Q4_0, n, o, w, a);
}
static void q4_0_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(2, 4, KIND_Q4_0, n, o, w, a);
}
static void q4_0_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(1, 8, KIND_Q4_0, n, o, w, a);
}

/* Q4_0, one token, the rows transposed into the lanes (isa_avx2.h
 * q40_rows), prep a q40_prep: per dword vector maddubs of its low and of
 * its high nibbles with the token's 4 matching values, summed in int16 (8
 * pairs of at most 2 * 15 * 128 per lane: < 2^15) and widened once per
 * block.  The same exact block sums, conversion and FMA per lane as
 * tile_q32, so the same bits; 27.7 against 20.2 GB/s in cache, 23.0-23.9
 * against 17.5-18.2 streaming 1024-row claims (one Zen 4 core forced to
 * this level, alternating runs). */
static void q4_0_8x1_t(int64_t n_cols, float out[NP], const uint8_t *const w[NP],
                       const uint8_t *const a[NP], const void *prep)
{
	const q40_prep *p = prep;
	const int64_t nb = n_cols / MOE_QK32;
	const __m256i m0f = _mm256_set1_epi8(0x0f), ones16 = _mm256_set1_epi16(1);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const size_t wo = (size_t)i * sizeof(moe_block_q4_0);
		const int8_t *y = ((const moe_block_q8_0 *)a[0] + i)->qs;
		lanes8_prefetch(w, wo);
		__m256i v[4], s = _mm256_setzero_si256();
		q40_rows(v, w, wo + offsetof(moe_block_q4_0, qs));
#pragma GCC unroll 4
		for (int m = 0; m < 4; m++) {
			const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v[m], 4), m0f);
			s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v[m], m0f),
			                                             bcast4(y + 4 * m)));
			s = _mm256_add_epi16(s, _mm256_maddubs_epi16(hi, bcast4(y + 16 + 4 * m)));
		}
		const __m256i is =
		    _mm256_add_epi32(_mm256_madd_epi16(s, ones16), _mm256_set1_epi32(p[i].base));
		const __m256 d = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(p[i].d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}
static void q5_0_8x1(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(8, 1, KIND_Q5_0, n, o, w, a);
}
static void q5_0_2x4(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(2, 4, KIND_Q5_0, n, o, w, a);
}
static void q5_0_1x8(int64_t n, float o[NP], const uint8_t *const w[NP], const uint8_t *const a[NP],
                     const void *prep)
{
	(void)prep;
	tile_q32(1, 8, KIND_Q5_0, n, o, w, a);
}

/* A type's shapes: 8 rows x 1 token, 2 x 4, 1 x 8, and where not NULL
 * r1tn[T] for one row x T tokens (T = 1..4; the same lane arithmetic on
 * scalars, streaming one row). */
typedef struct tile_set {
	moe_tile_fn r8t1, r2t4, r1t8;
	moe_tile_fn r1tn[5];
	moe_tile_fn r1t8p; /* r1t8 taking a k8_prep, or NULL */
	moe_tile_fn r8t1p; /* r8t1's one-token runs as a tile taking a q40_prep, or NULL */
	rows4_fn r4t1;     /* one token on >= 4 rows, four at a time (run_rows4), or NULL */
} tile_set;

enum { PREP_STACK_BLOCKS = 64 };

/* prep_k8 as run_grid's gather (prep: a k8_prep per block). */
static void gather_k8(void *prep, int64_t n_cols, const uint8_t *const a[NP])
{
	prep_k8(prep, n_cols / MOE_QK_K, a);
}

/* Covers rows [0, n_r) x tokens [t0, t0 + n_tt) with R x T tiles of fn,
 * repeating the last row / token in edge tiles (run_grid).  With fnp (1x8
 * K-quant tiles, fnp) each group of 8 tokens is gathered into a k8_prep first (on the
 * stack, or the heap for long rows; without memory the tiles gather for
 * themselves, with the same results); one token over runs of many rows
 * takes fnp, where given, with a q40_prep (run_lanes8_q40). */
static void run_shape(moe_tile_fn fn, moe_tile_fn fnp, int R, int T, int64_t n_cols, float *y,
                      int64_t ldy, const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                      size_t x_stride, int64_t t0, int64_t t1)
{
	k8_prep stack[PREP_STACK_BLOCKS], *prep = NULL;
	const int64_t nb = n_cols / MOE_QK_K;

	if (R == NP && T == 1 && n_r >= 2 * NP) { /* one token, many rows */
		const uint8_t *a = x + (size_t)t0 * x_stride;
		if (fnp != NULL)
			run_lanes8_q40(fnp, fn, n_cols, y + t0 * ldy, w, w_stride, n_r, a);
		else
			run_lanes8(fn, n_cols, y + t0 * ldy, w, w_stride, n_r, a, NULL);
		return;
	}
	if (fnp != NULL && R == 1 && T == NP)
		prep = nb <= PREP_STACK_BLOCKS ? stack : malloc((size_t)nb * sizeof(*prep));
	if (prep != NULL)
		run_grid(fnp, R, T, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, t0, t1,
		         gather_k8, prep);
	else
		run_grid(fn, R, T, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, t0, t1, NULL,
		         NULL);
	if (prep != stack)
		free(prep);
}

/* Groups of 8 tokens take 1x8 tiles; a remainder of 1 token 8x1, of 2-4
 * 2x4, of 5-7 one padded 1x8. Which shape computes an element does not
 * change its bits (see the top of the file). */
static void run_tiles(const tile_set *s, int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,
                      size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	int64_t full = n_t / 8 * 8, rem = n_t - full;
	if (full > 0)
		run_shape(s->r1t8, s->r1t8p, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, 0,
		          full);
	if (rem == 1 && n_r >= 4 && s->r4t1 != NULL)
		run_rows4(s->r4t1, n_cols, y + full * ldy, w, w_stride, n_r,
		          x + (size_t)full * x_stride);
	else if (rem >= 1 && rem <= 4 && s->r1tn[rem] != NULL)
		run_shape(s->r1tn[rem], NULL, 1, (int)rem, n_cols, y, ldy, w, w_stride, n_r, x,
		          x_stride, full, n_t);
	else if (rem == 1)
		run_shape(s->r8t1, s->r8t1p, 8, 1, n_cols, y, ldy, w, w_stride, n_r, x, x_stride,
		          full, n_t);
	else if (rem >= 2 && rem <= 4)
		run_shape(s->r2t4, NULL, 2, 4, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, full,
		          n_t);
	else if (rem > 4)
		run_shape(s->r1t8, s->r1t8p, 1, 8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride,
		          full, n_t);
}

static const tile_set set_q4_K = {
    q4_K_8x1,  q4_K_2x4, q4_K_1x8,  {NULL, q4_K_1x1, q4_K_1x2, q4_K_1x3, q4_K_1x4},
    q4_K_1x8p, NULL,     q4_K_rows4};
static const tile_set set_q5_K = {
    q5_K_8x1,  q5_K_2x4, q5_K_1x8,  {NULL, q5_K_1x1, q5_K_1x2, q5_K_1x3, q5_K_1x4},
    q5_K_1x8p, NULL,     q5_K_rows4};
static const tile_set set_q6_K = {
    q6_K_8x1, q6_K_2x4, q6_K_1x8,  {NULL, q6_K_1x1, q6_K_1x2, q6_K_1x3, q6_K_1x4},
    NULL,     NULL,     q6_K_rows4};
static const tile_set set_q8_0 = {q8_0_8x1, q8_0_2x4, q8_0_1x8, {NULL}, NULL, NULL, NULL};
static const tile_set set_q4_0 = {q4_0_8x1, q4_0_2x4, q4_0_1x8, {NULL}, NULL, q4_0_8x1_t, NULL};
static const tile_set set_q5_0 = {q5_0_8x1, q5_0_2x4, q5_0_1x8, {NULL}, NULL, NULL, NULL};

static void gemm_q4_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q4_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}
static void gemm_q5_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q5_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}
static void gemm_q6_K(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q6_K, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}
static void gemm_q8_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q8_0, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}
static void gemm_q4_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q4_0, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}
static void gemm_q5_0(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w, size_t w_stride,
                      int64_t n_r, const uint8_t *x, size_t x_stride, int64_t n_t)
{
	run_tiles(&set_q5_0, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

moe_gemm_fn moe_gemm_avx2(moe_type t)
{
	switch (t) {
	case MOE_TYPE_Q4_K:
		return gemm_q4_K;
	case MOE_TYPE_Q5_K:
		return gemm_q5_K;
	case MOE_TYPE_Q6_K:
		return gemm_q6_K;
	case MOE_TYPE_Q8_0:
		return gemm_q8_0;
	case MOE_TYPE_Q4_0:
		return gemm_q4_0;
	case MOE_TYPE_Q5_0:
		return gemm_q5_0;
	case MOE_TYPE_Q2_K:
		return moe_gemm_q2_K_avx2;
	case MOE_TYPE_Q3_K:
		return moe_gemm_q3_K_avx2;
	case MOE_TYPE_IQ3_XXS:
	case MOE_TYPE_IQ3_S:
	case MOE_TYPE_IQ1_S:
	case MOE_TYPE_IQ1_M:
		return moe_gemm_avx2_iq13(t);
	case MOE_TYPE_IQ2_XXS:
	case MOE_TYPE_IQ2_XS:
	case MOE_TYPE_IQ2_S:
		return moe_gemm_avx2_iq2(t); /* isa_avx2_iq2.c */
	default:
		return moe_gemm_avx2_iq4(t);
	}
}
