/* The elementwise ops between a decoder layer's matmuls at batch 1, one call each instead of
 * three to five small torch ops (whose fixed costs exceed their arithmetic on one 576-wide row):
 * - residual add + RMSNorm: x += delta (in place, rounded to bf16 as torch's bf16 add does), then
 *   out = weight * bf16(x / sqrt(mean(x^2) + eps)), the normalization in fp32 and rounded once
 *   before the weight, as HF's LlamaRMSNorm does;
 * - SiLU(gate) * up from the fused gate/up projection's output row [gate | up], each op rounded to
 *   bf16 as torch's bf16 silu and mul do.
 * exp is a polynomial (Cephes' expf: range reduction by ln 2, degree-5 polynomial, about 1 ulp of
 * fp32) written so the compiler vectorizes it; the C library's expf would not be.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "bf16.h"

static inline float exp_approx(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.3f);
    float n = floorf(x * 1.44269504088896341f + 0.5f);  /* x = n ln2 + r, |r| <= ln2 / 2 */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;  /* 2^n */
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* x (n bf16, updated in place when delta is not NULL), delta (n bf16 or NULL), weight (n bf16) ->
 * out (n bf16). Returns 0. */
int lmopt_add_rms_norm(uint16_t *x, const uint16_t *delta, const uint16_t *weight, int64_t n, float eps,
                       uint16_t *out) {
    float squares = 0.f;
    if (delta) {
        #pragma omp simd reduction(+:squares)
        for (int64_t i = 0; i < n; i++) {
            uint16_t sum = float_to_bf16(bf16_to_float(x[i]) + bf16_to_float(delta[i]));
            float v = bf16_to_float(sum);
            x[i] = sum;
            squares += v * v;
        }
    } else {
        #pragma omp simd reduction(+:squares)
        for (int64_t i = 0; i < n; i++) squares += bf16_to_float(x[i]) * bf16_to_float(x[i]);
    }
    float inv = 1.f / sqrtf(squares / (float)n + eps);
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float normed = bf16_to_float(float_to_bf16(bf16_to_float(x[i]) * inv));
        out[i] = float_to_bf16(normed * bf16_to_float(weight[i]));
    }
    return 0;
}

/* gate_up (2n bf16: gate then up) -> out (n bf16) = bf16(silu(gate)) * up. Returns 0. */
int lmopt_silu_mul(const uint16_t *gate_up, int64_t n, uint16_t *out) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float g = bf16_to_float(gate_up[i]);
        float silu = bf16_to_float(float_to_bf16(g / (1.f + exp_approx(-g))));
        out[i] = float_to_bf16(silu * bf16_to_float(gate_up[n + i]));
    }
    return 0;
}
