/*
 * isa_avx2_iq13.c - AVX2 + FMA + F16C kernels of the grid formats IQ3_XXS,
 * IQ3_S, IQ1_S and IQ1_M against Q8_K: the one-token dot and the tile kernel
 * (gemm.h) of the matrix products and the expert FFN.  Compiled with the avx2
 * flags; the AVX-512 level takes the dots, and the tiles for several tokens
 * (for everything on CPUs without VBMI/BITALG; its one-token tiles:
 * isa_avx512_iq13.c).
 *
 * Both follow the canonical arithmetic of quants.h bit for bit: per (row,
 * token) and block the exact int32 sum (any order: integers), then the
 * reference's fmaf((float)isum, dw * d_a, acc) in block order, so a (row,
 * token) result does not depend on the tile, the batch or the level.
 *
 * Per row and block each 32-value sub-block is unpacked once into a vector
 * of 32 magnitudes (u8) and one of 32 signs (+-1 as int8): IQ3 magnitudes are
 * the grid points (8 broadcast loads of 4 bytes from the expanded grid merged
 * by blends, rows8_u32: faster here than a vpgatherdd or vpinsrd, measured),
 * their signs (IQ3_S) the sign bits spread over bytes by one shuffle and a
 * bit test, (IQ3_XXS) formed in vector registers from the 7 stored bits of
 * each group, the 8th their parity (isa_avx2.h esigns4: ~4 % faster than 4
 * loads from a table of 128 sign patterns); IQ1 weights 8 * grid +- 1
 * (4 loads of 8 bytes from a table of 8 * grid, plus the delta), split
 * into |w| and w.  IQ3_S's and IQ1's grid indices are formed in one vector
 * and read out 2 or 4 per 64-bit register (fewer instructions than forming
 * each in a general register: these kernels are bound by instruction
 * count, not memory); IQ1's qh bytes reach that vector by a broadcast from
 * memory, not from a general register (Zen 3 moves between the two kinds
 * of register on 2 pipes only: they bounded IQ1_M), and IQ1_M's group
 * deltas are tested there; scales and deltas come from small tables as
 * ready vectors.  Every token then meets it with one sign op, one maddubs (pairs
 * of at most 2 * 62 * 127 < 2^15) and one madd by the sub-block's scale
 * 2 ls + 1 (IQ1_M: low 16 values ls1, high 16 ls2) into int32 lanes.
 *
 * One token on 16 rows or more (decode) takes 8 rows per tile (rows8_iq
 * through run_lanes8): the 8 rows' block sums reduced, converted and
 * fused-multiply-added together, one vector lane per row, instead of a
 * horizontal sum and a scalar fmaf per row and block.
 */
#include <math.h>
#include <pthread.h>
#include <stddef.h>

#include "kernels/gemm.h"
#include "kernels/isa_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { KT = 8 }; /* tokens per tile at most */

/* 32 sign bytes (+1, or -1 where the bit is set) of the 4 bytes of b: byte
 * 8l + j from bit j of byte l. */
static ALWAYS_INLINE __m256i spread_signs(uint32_t b)
{
	const __m256i pick =
	    _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll, 0x0101010101010101ll, 0);
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)b), pick);
	return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit),
	                       _mm256_set1_epi8(1));
}

/* IQ1: g8[i] the grid point i times 8 (int8 bytes in -8, 0, 8): the
 * weights are g8 + delta. */
static uint64_t g8[2048];
/* Sub-block scales as vectors (one load instead of a broadcast from a
 * general register): sc16[k] 2k + 1 in every int16 lane; m1_sc[k] IQ1_M's
 * 2 (k & 7) + 1 in the low 8 lanes, 2 (k >> 3) + 1 in the high 8; s1_dl[k]
 * IQ1_S's delta bytes, +1 (k = 0) or -1. */
static __m256i sc16[16], m1_sc[64], s1_dl[2];
/* IQ3_S: s3_hi[h] the 9th index bits of a sub-block's 8 groups from its qh
 * byte h, as 8 int16 lanes (256 where bit k of h is set). */
static __m128i s3_hi[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void fill_tables(void)
{
	for (int i = 0; i < 2048; i++) {
		int8_t b[8];
		memcpy(b, &moe_iq1s_grid[i], 8);
		for (int j = 0; j < 8; j++)
			b[j] = (int8_t)(8 * b[j]);
		memcpy(&g8[i], b, 8);
	}
	for (int k = 0; k < 16; k++)
		sc16[k] = _mm256_set1_epi16((short)(2 * k + 1));
	for (int k = 0; k < 64; k++)
		m1_sc[k] = _mm256_set_m128i(_mm_set1_epi16((short)(2 * (k >> 3) + 1)),
		                            _mm_set1_epi16((short)(2 * (k & 7) + 1)));
	for (int h = 0; h < 256; h++) {
		int16_t l[8];
		for (int k = 0; k < 8; k++)
			l[k] = (int16_t)(h >> k & 1 ? 256 : 0);
		memcpy(&s3_hi[h], l, 16);
	}
	s1_dl[0] = _mm256_set1_epi8(1);
	s1_dl[1] = _mm256_set1_epi8(-1);
}

static void tables_init(void)
{
	moe_iq13_init();
	pthread_once(&tables_once, fill_tables);
}

static ALWAYS_INLINE uint32_t load_u32(const void *p)
{
	uint32_t u;
	memcpy(&u, p, 4);
	return u;
}

/* 8 entries of a table of 4-byte rows as one vector (entry i0 in lane 0):
 * 8 broadcast loads merged by 7 blends, which any vector pipe runs (the
 * compiler's _mm256_setr_epi32 makes 6 vpinsrd and a vinserti128 of it, all
 * on the shuffle pipes; IQ3_XXS one-token ~12 % faster this way). */
static ALWAYS_INLINE __m256i rows8_u32(const uint32_t *tab, size_t i0, size_t i1, size_t i2,
                                       size_t i3, size_t i4, size_t i5, size_t i6, size_t i7)
{
	const __m256i a = _mm256_blend_epi32(_mm256_set1_epi32((int)tab[i0]),
	                                     _mm256_set1_epi32((int)tab[i1]), 0xaa);
	const __m256i b = _mm256_blend_epi32(_mm256_set1_epi32((int)tab[i2]),
	                                     _mm256_set1_epi32((int)tab[i3]), 0xaa);
	const __m256i c = _mm256_blend_epi32(_mm256_set1_epi32((int)tab[i4]),
	                                     _mm256_set1_epi32((int)tab[i5]), 0xaa);
	const __m256i d = _mm256_blend_epi32(_mm256_set1_epi32((int)tab[i6]),
	                                     _mm256_set1_epi32((int)tab[i7]), 0xaa);
	return _mm256_blend_epi32(_mm256_blend_epi32(a, b, 0xcc), _mm256_blend_epi32(c, d, 0xcc),
	                          0xf0);
}

/* The 4 bytes that end at h + 2, in every 32-bit lane: broadcast from
 * memory, a load (not a move from a general register). */
static ALWAYS_INLINE __m256i bcast_to(const uint8_t *h)
{
	return _mm256_castps_si256(_mm256_broadcast_ss((const float *)(h - 2)));
}

/* IQ1: the int8 weights 8 * grid + delta of the 4 groups: index l is q[l]
 * | ((hv >> shift l) & 0x700), formed in one vector and read out 2 per
 * 64-bit register; deltas as +-1 bytes in dl. */
static ALWAYS_INLINE __m256i iq1_weights(const uint8_t *q, __m128i hv, __m128i shift, __m256i dl)
{
	const __m128i ix =
	    _mm_or_si128(_mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)load_u32(q))),
	                 _mm_and_si128(_mm_srlv_epi32(hv, shift), _mm_set1_epi32(0x700)));
	const uint64_t i0 = (uint64_t)_mm_cvtsi128_si64(ix),
	               i1 = (uint64_t)_mm_extract_epi64(ix, 1);
	const __m256i g = _mm256_set_epi64x((long long)g8[i1 >> 32], (long long)g8[(uint32_t)i1],
	                                    (long long)g8[i0 >> 32], (long long)g8[(uint32_t)i0]);
	return _mm256_add_epi8(g, dl);
}

/* Sub-block v of block b of type t: magnitudes *mag (u8), signs *sgn (their
 * sign bytes; never 0), scales *sc (int16: low half the first 16 values'). */
static ALWAYS_INLINE void unpack(moe_type t, const uint8_t *b, int v, __m256i *mag, __m256i *sgn,
                                 __m256i *sc)
{
	if (t == MOE_TYPE_IQ3_XXS) {
		const uint8_t *q = b + offsetof(moe_block_iq3_xxs, qs) + 8 * v;
		const uint32_t aux = load_u32(b + offsetof(moe_block_iq3_xxs, qs) + 64 + 4 * v);
		*mag = rows8_u32(moe_iq3xxs_grid, q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]);
		*sgn = esigns4(_mm256_srlv_epi64(_mm256_set1_epi32((int)aux),
		                                 _mm256_setr_epi64x(0, 7, 14, 21)));
		*sc = sc16[aux >> 28];
	} else if (t == MOE_TYPE_IQ3_S) {
		const moe_block_iq3_s *x = (const moe_block_iq3_s *)b;
		/* the 8 9-bit indices as int16 lanes, then read out 4 at a time */
		const __m128i ix = _mm_or_si128(
		    _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(x->qs + 8 * v))),
		    s3_hi[x->qh[v]]);
		const uint64_t i0 = (uint64_t)_mm_cvtsi128_si64(ix),
		               i1 = (uint64_t)_mm_extract_epi64(ix, 1);
		const uint32_t *g = moe_iq3s_grid;
		*mag = rows8_u32(g, i0 & 0xffff, i0 >> 16 & 0xffff, i0 >> 32 & 0xffff, i0 >> 48,
		                 i1 & 0xffff, i1 >> 16 & 0xffff, i1 >> 32 & 0xffff, i1 >> 48);
		*sgn = spread_signs(load_u32(x->signs + 4 * v));
		*sc = sc16[(x->scales[v / 2] >> (4 * (v % 2))) & 15];
	} else if (t == MOE_TYPE_IQ1_S) {
		const moe_block_iq1_s *x = (const moe_block_iq1_s *)b;
		const unsigned h = x->qh[v];
		/* group l's index bits: 3 l .. 3 l + 2 of h (at 16 .. 31 of hv) */
		const __m256i w = iq1_weights(
		    x->qs + 4 * v, _mm256_castsi256_si128(bcast_to((const uint8_t *)&x->qh[v])),
		    _mm_setr_epi32(8, 11, 14, 17), s1_dl[h >> 15]);
		*mag = _mm256_abs_epi8(w);
		*sgn = w;
		*sc = sc16[(h >> 12) & 7];
	} else {
		const moe_block_iq1_m *x = (const moe_block_iq1_m *)b;
		const __m256i hv = bcast_to(x->qh + 2 * v);
		/* group l's index bits: 4 l .. 4 l + 2 of the 2 qh bytes (at
		 * 16 .. 31 of hv), its delta bit 4 l + 3, tested in 64-bit lane
		 * l (all ones where set, or 1: -1, else +1) */
		const __m256i bit = _mm256_setr_epi64x(1 << 19, 1 << 23, 1 << 27, 1u << 31);
		const __m256i dl = _mm256_or_si256(
		    _mm256_cmpeq_epi64(_mm256_and_si256(hv, bit), bit), _mm256_set1_epi8(1));
		const __m256i w = iq1_weights(x->qs + 4 * v, _mm256_castsi256_si128(hv),
		                              _mm_setr_epi32(8, 12, 16, 20), dl);
		*mag = _mm256_abs_epi8(w);
		*sgn = w;
		const unsigned ws = (unsigned)ld16(x->scales + 2 * (v / 2)) >> (6 * (v % 2));
		*sc = m1_sc[ws & 63];
	}
}

static ALWAYS_INLINE size_t block_bytes(moe_type t)
{
	return t == MOE_TYPE_IQ3_XXS ? sizeof(moe_block_iq3_xxs)
	       : t == MOE_TYPE_IQ3_S ? sizeof(moe_block_iq3_s)
	       : t == MOE_TYPE_IQ1_S ? sizeof(moe_block_iq1_s)
	                             : sizeof(moe_block_iq1_m);
}

/* The block's dw (quants.h): fp16 d times 1/4, 1 or 1/8. */
static ALWAYS_INLINE float block_dw(moe_type t, const uint8_t *b)
{
	if (t == MOE_TYPE_IQ1_M)
		return half_to_f32(moe_iq1m_d((const moe_block_iq1_m *)b)) * 0.125f;
	const float d = half_to_f32((uint16_t)ld16(b));
	return t == MOE_TYPE_IQ3_XXS ? d * 0.25f : t == MOE_TYPE_IQ3_S ? d : d * 0.125f;
}

/* Row w (nb blocks of type t) against T tokens a[0..T): out[t] as the
 * reference. */
static ALWAYS_INLINE void row_iq(moe_type t, int T, int64_t nb, float out[KT], const uint8_t *w,
                                 const uint8_t *const a[KT])
{
	const size_t bs = block_bytes(t);
	float sum[KT];

	for (int k = 0; k < T; k++)
		sum[k] = 0;
	for (int64_t i = 0; i < nb; i++) {
		const uint8_t *b = w + (size_t)i * bs;
		_mm_prefetch((const char *)(b + 8 * bs), _MM_HINT_T0);
		__m256i acc[KT];
#pragma GCC unroll 8
		for (int k = 0; k < T; k++)
			acc[k] = _mm256_setzero_si256();
#pragma GCC unroll 8
		for (int v = 0; v < 8; v++) {
			__m256i mag, sgn, sc;
			unpack(t, b, v, &mag, &sgn, &sc);
#pragma GCC unroll 8
			for (int k = 0; k < T; k++) {
				const moe_block_q8_K *y = (const moe_block_q8_K *)a[k] + i;
				const __m256i q8 =
				    _mm256_loadu_si256((const __m256i *)(y->qs + 32 * v));
				acc[k] = _mm256_add_epi32(
				    acc[k],
				    _mm256_madd_epi16(
				        _mm256_maddubs_epi16(mag, _mm256_sign_epi8(q8, sgn)), sc));
			}
		}
		const float dw = block_dw(t, b);
#pragma GCC unroll 8
		for (int k = 0; k < T; k++) {
			const moe_block_q8_K *y = (const moe_block_q8_K *)a[k] + i;
			const int32_t isum = _mm_cvtsi128_si32(hsum_i32_v(acc[k]));
			sum[k] = fmaf((float)isum, dw * y->d, sum[k]);
		}
	}
	for (int k = 0; k < T; k++)
		out[k] = sum[k];
}

/* One token against rows w[0..8) (run_lanes8's tile): per row and block the
 * same exact isum as row_iq, the 8 rows' sums reduced together (sum8_i32)
 * and converted and fused-multiply-added once per block in a vector whose
 * lane r is row r's accumulator: lane by lane row_iq's fmaf, so the same
 * bits, without a horizontal sum and a scalar fmaf per row and block. */
static ALWAYS_INLINE void rows8_iq(moe_type t, int64_t n_cols, float out[8],
                                   const uint8_t *const w[8], const uint8_t *const a[8])
{
	const int64_t nb = n_cols / MOE_QK_K;
	const size_t bs = block_bytes(t);
	const float f = t == MOE_TYPE_IQ3_XXS ? 0.25f : t == MOE_TYPE_IQ3_S ? 1.0f : 0.125f;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < nb; i++) {
		const moe_block_q8_K *y = (const moe_block_q8_K *)a[0] + i;
		const size_t wo = (size_t)i * bs;
		lanes8_prefetch(w, wo);
		__m256i v[8];
		/* rows not unrolled: 64 unpacks in one body overflowed the op
		 * cache (IQ3_XXS 25 -> 27, IQ1_M 26 -> 30 ns a block) */
#pragma GCC unroll 1
		for (int r = 0; r < 8; r++) {
			const uint8_t *b = w[r] + wo;
			__m256i s = _mm256_setzero_si256();
#pragma GCC unroll 8
			for (int k = 0; k < 8; k++) {
				__m256i mag, sgn, sc;
				unpack(t, b, k, &mag, &sgn, &sc);
				const __m256i q8 =
				    _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k));
				s = _mm256_add_epi32(
				    s,
				    _mm256_madd_epi16(
				        _mm256_maddubs_epi16(mag, _mm256_sign_epi8(q8, sgn)), sc));
				pin(&s);
			}
			v[r] = s;
		}
		__m256 dw;
		if (t == MOE_TYPE_IQ1_M) {
			float d[8];
			for (int r = 0; r < 8; r++)
				d[r] = block_dw(t, w[r] + wo);
			dw = _mm256_loadu_ps(d);
		} else {
			/* fp16 d times a power of two: exact, as block_dw */
			dw = _mm256_mul_ps(half8_ptr(w, wo), _mm256_set1_ps(f));
		}
		const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(y->d));
		acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8_i32(v)), d, acc);
	}
	_mm256_storeu_ps(out, acc);
}

/* ---- one-token dots and tiles per type ------------------------------------------- */

#define TYPE_FNS(name, type)                                                                       \
	static void name##_t1(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_iq(type, 1, nb, o, w, a);                                                      \
	}                                                                                          \
	static void name##_t2(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_iq(type, 2, nb, o, w, a);                                                      \
	}                                                                                          \
	static void name##_t4(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_iq(type, 4, nb, o, w, a);                                                      \
	}                                                                                          \
	static void name##_t8(int64_t nb, float o[KT], const uint8_t *w,                           \
	                      const uint8_t *const a[KT])                                          \
	{                                                                                          \
		row_iq(type, 8, nb, o, w, a);                                                      \
	}                                                                                          \
	static const row_tokens_fn fns_##name[4] = {name##_t1, name##_t2, name##_t4, name##_t8};   \
	static void name##_r8(int64_t n, float o[8], const uint8_t *const w[8],                    \
	                      const uint8_t *const a[8], const void *prep)                         \
	{                                                                                          \
		(void)prep;                                                                        \
		rows8_iq(type, n, o, w, a);                                                        \
	}                                                                                          \
	static void dot_##name(int64_t n, float *s, const void *w, const void *a)                  \
	{                                                                                          \
		const uint8_t *ap[KT] = {a};                                                       \
		float out[KT];                                                                     \
		name##_t1(n / MOE_QK_K, out, w, ap);                                               \
		*s = out[0];                                                                       \
	}

TYPE_FNS(iq3_xxs, MOE_TYPE_IQ3_XXS)
TYPE_FNS(iq3_s, MOE_TYPE_IQ3_S)
TYPE_FNS(iq1_s, MOE_TYPE_IQ1_S)
TYPE_FNS(iq1_m, MOE_TYPE_IQ1_M)

void moe_dots_avx2_iq13(moe_vec_dot_fn dots[MOE_TYPE_COUNT])
{
	tables_init();
	dots[MOE_TYPE_IQ3_XXS] = dot_iq3_xxs;
	dots[MOE_TYPE_IQ3_S] = dot_iq3_s;
	dots[MOE_TYPE_IQ1_S] = dot_iq1_s;
	dots[MOE_TYPE_IQ1_M] = dot_iq1_m;
}

/* One token on 16 rows or more: 8 rows per tile (rows8_iq through
 * run_lanes8).  Otherwise tokens [0, n_t) in groups of 8, 4, 2 and 1 over
 * every row (isa_avx2.h run_row_groups). */
static void run_rows(const row_tokens_fn fns[4], moe_tile_fn r8, int64_t n_cols, float *y,
                     int64_t ldy, const uint8_t *w, size_t w_stride, int64_t n_r, const uint8_t *x,
                     size_t x_stride, int64_t n_t)
{
	if (n_t == 1 && n_r >= 16) {
		run_lanes8(r8, n_cols, y, w, w_stride, n_r, x, NULL);
		return;
	}
	run_row_groups(fns, n_cols, y, ldy, w, w_stride, n_r, x, x_stride, n_t);
}

#define GEMM(name)                                                                                 \
	static void gemm_##name(int64_t n_cols, float *y, int64_t ldy, const uint8_t *w,           \
	                        size_t w_stride, int64_t n_r, const uint8_t *x, size_t x_stride,   \
	                        int64_t n_t)                                                       \
	{                                                                                          \
		run_rows(fns_##name, name##_r8, n_cols, y, ldy, w, w_stride, n_r, x, x_stride,     \
		         n_t);                                                                     \
	}

GEMM(iq3_xxs)
GEMM(iq3_s)
GEMM(iq1_s)
GEMM(iq1_m)

moe_gemm_fn moe_gemm_avx2_iq13(moe_type t)
{
	tables_init();
	switch (t) {
	case MOE_TYPE_IQ3_XXS:
		return gemm_iq3_xxs;
	case MOE_TYPE_IQ3_S:
		return gemm_iq3_s;
	case MOE_TYPE_IQ1_S:
		return gemm_iq1_s;
	case MOE_TYPE_IQ1_M:
		return gemm_iq1_m;
	default:
		return NULL;
	}
}
