/* 4- and 8-bit weights x int8 activations: the arithmetic of llama.cpp's Q4_1 x Q8_1 and
 * Q8_0 x Q8_K dot products, for the kernels `q4a8` and `q8a8`.
 *
 * Compiled on first use by native.py (cc -O3 -march=native -fopenmp) and called through ctypes;
 * the autotuner keeps it only for the shapes and row counts where it measures faster than torch's
 * own int4/int8 kernels and the dense paths. Why it can be: torch's `_weight_int4pack_mm_for_cpu`
 * and `_weight_int8pack_mm` convert every weight to float and multiply in float (14-19 GB/s of
 * weights on a 2-core AVX-512 EPYC); here 64 codes and 64 int8 activations meet in one VNNI
 * instruction, so a batch-1 GEMV is limited by memory instead.
 *
 * Weight layout (built by native.pack_weights), rows in groups of 16, inputs in blocks of 32:
 *   wq, 4 bits: (N/16, K/32, 4, 64) uint8; for group g, block b, vector p, byte 4r + i holds row
 *     r's code for input 8p + i (low nibble) and 8p + 4 + i (high nibble);
 *   wq, 8 bits: (N/16, K/32, 8, 64) uint8; vector j, byte 4r + i holds row r's code for input 4j + i;
 *   so lane r of a 64-byte vector is row r (the layout llama.cpp repacks Q4_0 into for AVX-512);
 *   ws, wz (N/16, K/32, 16) fp16: scale and zero of each row's block; w = ws * (q - wz).
 * Activations are rounded per row and block of 32: xq = round(x / d), d = max|x| / 127. Then
 *   y[m, n] = sum_b ws[n, b] * (d[m, b] * dot(q[n, b], xq[m, b]) - wz[n, b] * d[m, b] * sum(xq[m, b])),
 * which is the de-quantized weight times the rounded activations, exactly up to float rounding.
 * Inputs and outputs are bf16 (the engine's dtype); K a multiple of 32, N of 16.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "bf16.h"
#define M_CHUNK 8
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LMOPT_VNNI 1
#define LMOPT_SIMD 2
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LMOPT_SIMD 1
#include "qa8_avx2.h"  /* quantize_row, group_store */
#endif
#define PREFETCH_GROUPS 2

/* One row of x (K bf16) -> xq (K int8), d and s (K/32 floats each). The VNNI build does a block
 * in a few vector ops (the same products and round-to-nearest-even as the portable loop, so the
 * same codes); prompt chunks quantize hundreds of rows per call. */
#ifdef LMOPT_VNNI
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static void quantize_row(const uint16_t *x, int64_t K, int8_t *xq, float *d, float *s) {
    for (int64_t b = 0; b < K / 32; b++) {
        __m512 lo = load_bf16x16(x + b * 32), hi = load_bf16x16(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        __m512 iv = _mm512_set1_ps(inv);
        __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, iv)), qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, iv));
        _mm_storeu_si128((__m128i *)(xq + b * 32), _mm512_cvtepi32_epi8(qlo));
        _mm_storeu_si128((__m128i *)(xq + b * 32 + 16), _mm512_cvtepi32_epi8(qhi));
        d[b] = scale;
        s[b] = scale * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
    }
}
#elif !defined(LMOPT_SIMD)
static void quantize_row(const uint16_t *x, int64_t K, int8_t *xq, float *d, float *s) {
    for (int64_t b = 0; b < K / 32; b++) {
        float v[32], amax = 0.f;
        for (int i = 0; i < 32; i++) {
            v[i] = bf16_to_float(x[b * 32 + i]);
            amax = fmaxf(amax, fabsf(v[i]));
        }
        float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        int32_t qsum = 0;
        for (int i = 0; i < 32; i++) {
            xq[b * 32 + i] = (int8_t)lrintf(v[i] * inv);
            qsum += xq[b * 32 + i];
        }
        d[b] = scale;
        s[b] = scale * (float)qsum;  /* the zero term sees the same rounded activations as the codes */
    }
}
#endif

#ifdef LMOPT_VNNI
/* 16 rows (one group of the interleaved layout) x `rows` quantized activation rows (1 or ROWS_MULTI,
 * a constant at each call, so the loops over it unroll) -> acc[r], 16 outputs each.
 * Per block of 32 inputs: lane r of a VNNI dot multiplies W row r's 4 codes by 4 broadcast
 * activations, so 8 dots give the 16 rows' block sums with no horizontal reduction. Each 64-byte
 * code vector is loaded and unpacked once for all `rows` (for prompt chunks the unpacking, not the
 * dots, bounds a single row). `ahead`: bytes to the block prefetched (the same block a few groups
 * on: hides memory latency at batch 1; 0 for none). */
#define ROWS_MULTI 4
static inline void group_dot(const uint8_t *q, int bits, const uint16_t *ws, const uint16_t *wz, int64_t nb,
                             const int8_t *xq, int64_t K, const float *d, const float *s, int rows,
                             int64_t ahead, __m512 *acc) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const int64_t block = 64 * bits;  /* bytes of 16 rows x 32 codes */
    for (int r = 0; r < rows; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * block;
        if (ahead)
            for (int64_t line = 0; line < block; line += 64)
                _mm_prefetch((const char *)(qb + ahead + line), _MM_HINT_T0);
        __m512i dot[ROWS_MULTI];
        for (int r = 0; r < rows; r++) dot[r] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j += 2) {  /* inputs 4j..4j+3 and 4j+4..4j+7 of the block */
            __m512i v0, v1;
            if (bits == 4) {  /* one 64-byte vector: low nibbles then high */
                __m512i packed = _mm512_loadu_si512((const void *)(qb + (j / 2) * 64));
                v0 = _mm512_and_si512(packed, low);
                v1 = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
            } else {
                v0 = _mm512_loadu_si512((const void *)(qb + j * 64));
                v1 = _mm512_loadu_si512((const void *)(qb + (j + 1) * 64));
            }
            for (int r = 0; r < rows; r++) {
                const int32_t *xb = (const int32_t *)(xq + r * K + b * 32);
                dot[r] = _mm512_dpbusd_epi32(dot[r], v0, _mm512_set1_epi32(xb[j]));
                dot[r] = _mm512_dpbusd_epi32(dot[r], v1, _mm512_set1_epi32(xb[j + 1]));
            }
        }
        __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ws + b * 16)));
        __m512 zero = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wz + b * 16)));
        for (int r = 0; r < rows; r++) {  /* scale * (d * dot - zero * d * sum(xq)) */
            __m512 t = _mm512_fmsub_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_set1_ps(d[r * nb + b]),
                                       _mm512_mul_ps(zero, _mm512_set1_ps(s[r * nb + b])));
            acc[r] = _mm512_fmadd_ps(scale, t, acc[r]);
        }
    }
}

static inline void store_bf16x16(uint16_t *y, __m512 v) {  /* round to nearest even */
    __m512i u = _mm512_castps_si512(v);
    __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                    _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    _mm256_storeu_si256((__m256i *)y, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(u, bias), 16)));
}

/* group_dot, then the 16 outputs of each activation row to y (row stride N). */
static inline void group_store(const uint8_t *q, int bits, const uint16_t *ws, const uint16_t *wz, int64_t nb,
                               const int8_t *xq, int64_t K, const float *d, const float *s, int rows,
                               int64_t ahead, uint16_t *y, int64_t N) {
    __m512 acc[ROWS_MULTI];
    group_dot(q, bits, ws, wz, nb, xq, K, d, s, rows, ahead, acc);
    for (int r = 0; r < rows; r++) store_bf16x16(y + r * N, acc[r]);
}
#endif

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, u;
    if (exp == 0) {  /* zero or subnormal */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    u = sign | (exp == 31 ? 0x7F800000u | (man << 13) : ((exp + 112) << 23) | (man << 13));
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#ifndef LMOPT_SIMD
/* The portable path: one row r of a group of 16. */
static float row_dot(const uint8_t *q, int bits, const uint16_t *ws, const uint16_t *wz, int64_t nb, int r,
                     const int8_t *xq, const float *d, const float *s) {
    float y = 0.f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * 64 * bits;
        const int8_t *xb = xq + b * 32;
        int32_t dot = 0;
        for (int j = 0; j < 8; j++)  /* inputs 4j..4j+3 */
            for (int i = 0; i < 4; i++) {
                int code = bits == 8 ? qb[j * 64 + r * 4 + i]
                                     : (qb[(j / 2) * 64 + r * 4 + i] >> (4 * (j % 2))) & 15;
                dot += code * xb[4 * j + i];
            }
        y += half_to_float(ws[b * 16 + r]) * (d[b] * (float)dot - half_to_float(wz[b * 16 + r]) * s[b]);
    }
    return y;
}
#endif

/* The vector path this build has: 2 AVX-512 VNNI, 1 AVX2 (qa8_avx2.h), 0 none (the portable loops,
 * not worth timing). */
int lmopt_qa8_simd(void) {
#ifdef LMOPT_SIMD
    return LMOPT_SIMD;
#else
    return 0;
#endif
}

/* y (M, N) bf16 = x (M, K) bf16 @ W^T for W of `bits` (4 or 8) in the layout above; returns 0,
 * or 1 on a bad shape or failed allocation. */
int lmopt_qa8_linear(const uint16_t *x, int64_t M, int64_t K, int bits, const uint8_t *wq,
                     const uint16_t *ws, const uint16_t *wz, int64_t N, uint16_t *y) {
    if (K % 32 != 0 || N % 16 != 0 || M < 1 || (bits != 4 && bits != 8)) return 1;
    int64_t nb = K / 32, group_bytes = 2 * K * bits;  /* 16 rows x K codes */
    int8_t *xq = malloc((size_t)(M * K));
    float *d = malloc(sizeof(float) * (size_t)(M * nb)), *s = malloc(sizeof(float) * (size_t)(M * nb));
    if (!xq || !d || !s) {
        free(xq); free(d); free(s);
        return 1;
    }
    #pragma omp parallel for schedule(static) if (M * K >= 16384)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, d + m * nb, s + m * nb);
    /* Activation rows in chunks of M_CHUNK (whose int8 copy stays in L1 while every group of W
     * passes: the weights are the smaller stream for prompt chunks); within a chunk, groups of 16 W
     * rows are split over threads, and a group's codes stay in L1 while the chunk's rows pass. */
    for (int64_t m0 = 0; m0 < M; m0 += M_CHUNK) {
        int64_t m1 = m0 + M_CHUNK < M ? m0 + M_CHUNK : M;
        #pragma omp parallel for schedule(static) if (N * K >= 65536)
        for (int64_t g = 0; g < N / 16; g++) {
            const uint8_t *q = wq + g * group_bytes;
            const uint16_t *wsg = ws + g * 16 * nb, *wzg = wz + g * 16 * nb;
            int64_t m = m0;
#ifdef LMOPT_SIMD
            for (; m + ROWS_MULTI <= m1; m += ROWS_MULTI)
                group_store(q, bits, wsg, wzg, nb, xq + m * K, K, d + m * nb, s + m * nb, ROWS_MULTI, 0,
                            y + m * N + g * 16, N);
            for (; m < m1; m++)
                group_store(q, bits, wsg, wzg, nb, xq + m * K, K, d + m * nb, s + m * nb, 1,
                            PREFETCH_GROUPS * group_bytes, y + m * N + g * 16, N);
#else
            for (; m < m1; m++)
                for (int r = 0; r < 16; r++)
                    y[m * N + g * 16 + r] = float_to_bf16(row_dot(q, bits, wsg, wzg, nb, r, xq + m * K,
                                                                  d + m * nb, s + m * nb));
#endif
        }
    }
    free(xq); free(d); free(s);
    return 0;
}
