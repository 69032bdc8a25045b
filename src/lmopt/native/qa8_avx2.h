/* The AVX2 path of qa8.c, for x86-64 CPUs without AVX-512 VNNI (AVX2 + FMA + F16C: Haswell and
 * later, every AMD Zen). Same layout, same arithmetic, same int8 activation codes as the VNNI path.
 *
 * AVX2 has no u8 x s8 dot into int32 (VNNI's dpbusd); the classic sequence is maddubs (u8 x s8 ->
 * int16, pairs summed, saturating) then madd with ones (int16 pairs -> int32), as llama.cpp's AVX2
 * dot products do. Exact here because no int16 sum can saturate: codes are split into nibbles
 * (0..15) and activations are in [-127, 127], so a pair is at most 2 * 15 * 127 = 3810 and the 8
 * pairs a block adds per int16 lane at most 30480 < 32767. 4-bit codes are nibbles already; an
 * 8-bit code c is 16 * (c >> 4) + (c & 15), two nibble dots.
 * A 64-byte vector of the layout is two 32-byte halves: rows 0..7 and rows 8..15 of the group.
 */
#ifndef LMOPT_QA8_AVX2_H
#define LMOPT_QA8_AVX2_H
#include <immintrin.h>
#include "bf16.h"

static inline __m256 load_bf16x8(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline int32_t hsum8_epi32(__m256i v) {
    __m128i m = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtsi128_si32(_mm_add_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1))));
}

/* One row of x (K bf16) -> xq (K int8), d and s (K/32 each): the portable loop's products and
 * round-to-nearest-even (cvtps_epi32 under the default rounding mode, as lrintf), so the same codes. */
static void quantize_row(const uint16_t *x, int64_t K, int8_t *xq, float *d, float *s) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undo packs' lane interleave */
    for (int64_t b = 0; b < K / 32; b++) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = load_bf16x8(x + b * 32 + 8 * i);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
        }
        float amax = hmax8(m), scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)));
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(xq + b * 32), _mm256_permutevar8x32_epi32(packed, order));
        d[b] = scale;
        s[b] = scale * (float)hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]),
                                                           _mm256_add_epi32(q[2], q[3])));
    }
}

/* 16 rows (one group) x `rows` activation rows (1 or ROWS_MULTI) -> acc[2 r + h]: 8 outputs each,
 * h = 0 for rows 0..7, 1 for rows 8..15. `ahead`: bytes to the block prefetched (0 for none). */
#define ROWS_MULTI 2
static inline void group_dot(const uint8_t *q, int bits, const uint16_t *ws, const uint16_t *wz, int64_t nb,
                             const int8_t *xq, int64_t K, const float *d, const float *s, int rows,
                             int64_t ahead, __m256 *acc) {
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    const int64_t block = 64 * bits;  /* bytes of 16 rows x 32 codes */
    for (int r = 0; r < 2 * rows; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * block;
        if (ahead)
            for (int64_t line = 0; line < block; line += 64)
                _mm_prefetch((const char *)(qb + ahead + line), _MM_HINT_T0);
        /* int16 sums of nibble x activation pairs; [2 r + h]; hi: 8-bit codes' high nibbles */
        __m256i lo16[2 * ROWS_MULTI], hi16[2 * ROWS_MULTI];
        for (int r = 0; r < 2 * rows; r++) lo16[r] = hi16[r] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {  /* inputs 4j..4j+3 of the block */
            for (int h = 0; h < 2; h++) {
                __m256i v, vhi = _mm256_setzero_si256();
                if (bits == 4) {  /* vector j/2 holds inputs of j even in low nibbles, j odd in high */
                    __m256i packed = _mm256_loadu_si256((const __m256i *)(qb + (j / 2) * 64 + h * 32));
                    v = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(packed, 4) : packed, low);
                } else {
                    __m256i packed = _mm256_loadu_si256((const __m256i *)(qb + j * 64 + h * 32));
                    v = _mm256_and_si256(packed, low);
                    vhi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                }
                for (int r = 0; r < rows; r++) {
                    __m256i x4 = _mm256_set1_epi32(((const int32_t *)(xq + r * K + b * 32))[j]);
                    lo16[2 * r + h] = _mm256_add_epi16(lo16[2 * r + h], _mm256_maddubs_epi16(v, x4));
                    if (bits == 8)
                        hi16[2 * r + h] = _mm256_add_epi16(hi16[2 * r + h], _mm256_maddubs_epi16(vhi, x4));
                }
            }
        }
        for (int h = 0; h < 2; h++) {
            __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + b * 16 + 8 * h)));
            __m256 zero = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wz + b * 16 + 8 * h)));
            for (int r = 0; r < rows; r++) {  /* scale * (d * dot - zero * d * sum(xq)) */
                __m256i dot = _mm256_madd_epi16(lo16[2 * r + h], ones);
                if (bits == 8) dot = _mm256_add_epi32(dot, _mm256_madd_epi16(hi16[2 * r + h], sixteen));
                __m256 t = _mm256_fmsub_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d[r * nb + b]),
                                           _mm256_mul_ps(zero, _mm256_set1_ps(s[r * nb + b])));
                acc[2 * r + h] = _mm256_fmadd_ps(scale, t, acc[2 * r + h]);
            }
        }
    }
}

static inline __m256i round_bf16x8(__m256 v) {  /* round to nearest even, in the low 16 bits */
    __m256i u = _mm256_castps_si256(v);
    __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                    _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
    return _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
}

/* group_dot, then the 16 outputs of each activation row to y (row stride N). */
static inline void group_store(const uint8_t *q, int bits, const uint16_t *ws, const uint16_t *wz, int64_t nb,
                               const int8_t *xq, int64_t K, const float *d, const float *s, int rows,
                               int64_t ahead, uint16_t *y, int64_t N) {
    __m256 acc[2 * ROWS_MULTI];
    group_dot(q, bits, ws, wz, nb, xq, K, d, s, rows, ahead, acc);
    for (int r = 0; r < rows; r++) {  /* packus interleaves 128-bit lanes; permute4x64 undoes it */
        __m256i packed = _mm256_packus_epi32(round_bf16x8(acc[2 * r]), round_bf16x8(acc[2 * r + 1]));
        _mm256_storeu_si256((__m256i *)(y + r * N), _mm256_permute4x64_epi64(packed, _MM_SHUFFLE(3, 1, 2, 0)));
    }
}
#endif
