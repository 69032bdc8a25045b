/* One decode token of one sequence, from the fused q/k/v projection to the attention output: the
 * serving engine's batch-1 step (serve/attention.py, `rope_attend_one`) in one call instead of
 * about fifteen small torch ops (rotary, two cache writes, cache views, SDPA, reshapes), whose fixed
 * costs on CPU exceed their arithmetic at this size.
 *
 * Same math as the torch path: rotary as x * cos + roll(x, D/2) * signed_sin (HF's rotate_half with
 * its signs folded into the table), k and v stored in the cache in bf16, softmax(q k^T * scale) v
 * over every cached position (a single decode row needs no mask), with grouped-query attention
 * (head h reads KV head h / (H / KVH)). Arithmetic in fp32, rounded to bf16 where the torch path
 * stores a tensor (rotated q and k, the output), so results agree to bf16 rounding.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "bf16.h"

#define MAX_HEAD_DIM 256

/* x (D bf16) rotated by the tables, rounded to bf16, into out (D bf16) */
static void rotate(const uint16_t *x, const float *c, const float *s, int64_t D, uint16_t *out) {
    int64_t half = D / 2;
    for (int64_t i = 0; i < D; i++) {
        float partner = bf16_to_float(x[i < half ? i + half : i - half]);
        out[i] = float_to_bf16(bf16_to_float(x[i]) * c[i] + partner * s[i]);
    }
}

/* qkv: (H + 2 KVH) * D bf16, the fused projection's output row (q heads, k heads, v heads);
 * cos, ssin: D bf16 rotary tables of this token's position (ssin with rotate_half's signs);
 * kc, vc: this layer's cache for the sequence's slot, (KVH, max_len, D) bf16, contiguous.
 * Writes the rotated k and v at `position`, attends over positions 0..position, writes out (H * D)
 * bf16. Returns 0, or 1 on a shape it does not take. */
int lmopt_rope_attend_one(const uint16_t *qkv, const uint16_t *cos, const uint16_t *ssin, uint16_t *kc,
                          uint16_t *vc, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t max_len,
                          int64_t position, float scale, uint16_t *out) {
    int64_t D = head_dim, span = position + 1;
    if (D > MAX_HEAD_DIM || D % 2 || kv_heads < 1 || heads % kv_heads || position < 0 || position >= max_len)
        return 1;
    int64_t group = heads / kv_heads;
    float c[MAX_HEAD_DIM], s[MAX_HEAD_DIM];
    for (int64_t i = 0; i < D; i++) {
        c[i] = bf16_to_float(cos[i]);
        s[i] = bf16_to_float(ssin[i]);
    }
    for (int64_t kh = 0; kh < kv_heads; kh++) {
        rotate(qkv + (heads + kh) * D, c, s, D, kc + (kh * max_len + position) * D);
        memcpy(vc + (kh * max_len + position) * D, qkv + (heads + kv_heads + kh) * D, (size_t)D * 2);
    }
    float *scores = malloc(sizeof(float) * (size_t)(span * heads));
    if (!scores) return 1;
    #pragma omp parallel for schedule(static) if (span * heads >= 2048)
    for (int64_t h = 0; h < heads; h++) {
        uint16_t qb[MAX_HEAD_DIM];
        float q[MAX_HEAD_DIM], acc[MAX_HEAD_DIM], *sc = scores + h * span, top = -INFINITY, total = 0.f;
        rotate(qkv + h * D, c, s, D, qb);
        for (int64_t i = 0; i < D; i++) q[i] = bf16_to_float(qb[i]) * scale;
        const uint16_t *K = kc + (h / group) * max_len * D, *V = vc + (h / group) * max_len * D;
        for (int64_t l = 0; l < span; l++) {
            float dot = 0.f;
            #pragma omp simd reduction(+:dot)
            for (int64_t i = 0; i < D; i++) dot += q[i] * bf16_to_float(K[l * D + i]);
            sc[l] = dot;
            top = fmaxf(top, dot);
        }
        for (int64_t i = 0; i < D; i++) acc[i] = 0.f;
        for (int64_t l = 0; l < span; l++) {
            float p = expf(sc[l] - top);
            total += p;
            for (int64_t i = 0; i < D; i++) acc[i] += p * bf16_to_float(V[l * D + i]);
        }
        for (int64_t i = 0; i < D; i++) out[h * D + i] = float_to_bf16(acc[i] / total);
    }
    free(scores);
    return 0;
}
