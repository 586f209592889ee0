/* The package's C kernels for the CPU, over float32 arrays: rlhf_env/accel/native.py compiles this file once per
   machine and calls it through ctypes. Each loop runs on the given number of OpenMP threads (torch's own runtime once
   torch is loaded).

   - gelu_forward, gelu_forward_slope: GPT-2's tanh-approximated GELU (transformers' gelu_new), for
     rlhf_env/accel/gelu.py.
     0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is computed as x s with s = 1 / (1 + e), e = exp(-2u): the
     same function, whose derivative s + x s (1 - s) d(2u)/dx, with 1 - s = e s, needs no cancelling 1 - tanh^2;
     -2u is clamped to [-80, 80], where s is exact in float32 and e stays finite.
   - attend_step: one decoding step's attention for the sampler's lean decoder (rlhf_env/accel/decoder.py): the new
     token's keys and values written into the cache, and softmax attention over each row's own columns only.

   exp is Cephes' expf (range reduction by ln 2, a degree-6 polynomial: about 1 ulp), written without library calls so
   that the compiler vectorises the loops that use it. */
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float exp_poly(float x) { /* x in [-80, 80] */
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)k + 127) << 23}; /* 2^k */
    return p * scale.f;
}

static inline float minus_2u(float v) {
    const float m = -1.5957691216057308f * (v + 0.044715f * v * v * v);
    return m > 80.0f ? 80.0f : (m < -80.0f ? -80.0f : m);
}

/* Where the clamp holds (|2u| >= 80), s is 0 or 1 to float32 precision: the GELU is 0 or x, its derivative 0 or 1
   (the clamped e would leave x * 1.8e-35 and a wrong derivative for inputs beyond any activation's range). */
void gelu_forward(const float *x, float *y, ptrdiff_t n, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads)
    for (ptrdiff_t i = 0; i < n; i++) {
        const float v = x[i], m = minus_2u(v);
        const float s = m >= 80.0f ? 0.0f : (m <= -80.0f ? 1.0f : 1.0f / (1.0f + exp_poly(m)));
        y[i] = v * s;
    }
}

/* The GELU and its derivative at x in one pass (training: the backward is then one multiplication, with no exp). */
void gelu_forward_slope(const float *x, float *y, float *slope, ptrdiff_t n, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads)
    for (ptrdiff_t i = 0; i < n; i++) {
        const float v = x[i], m = minus_2u(v);
        const float e = exp_poly(m), s = 1.0f / (1.0f + e);
        const float du = 1.5957691216057308f * (1.0f + 0.134145f * v * v); /* d(2u)/dx */
        const float d = s + (v * du) * (s * (e * s));
        y[i] = v * (m >= 80.0f ? 0.0f : (m <= -80.0f ? 1.0f : s)); /* gelu_forward's value, bit for bit */
        slope[i] = m >= 80.0f ? 0.0f : (m <= -80.0f ? 1.0f : d);
    }
}

/* One decoding step of attention, for every row b < B and head h < H, head size D:
   - the step's projections qkv (B, 3, H, D), contiguous, give query q = qkv[b, 0, h], and the key and value
     qkv[b, 1, h] and qkv[b, 2, h], which are written into the caches at column t;
   - the caches hold each (b, h)'s columns as contiguous rows of D floats, at k + b * sb + h * sh + s * D (v alike);
   - out[b, h] (B, H, D) = sum over s of softmax_s(scale q . k[s] + bias[b * bias_sb + s]) v[s], for s from start[b]
     to t: columns before a row's start (its left padding) are never read; a -inf bias after it gives weight 0.
   Where a row has no finite score (it cannot happen in the sampler: column t is the row's own token), its output is
   NaN, as a softmax over nothing would be. Returns 0, or 1 where a thread could not allocate its scores. */
int attend_step(const float *qkv, float *k, float *v, ptrdiff_t sb, ptrdiff_t sh, const float *bias,
                 ptrdiff_t bias_sb, const int64_t *start, int B, int H, int D, int t, float scale, float *out,
                 int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(t + 1)); /* this thread's scores */
        #pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            const float *q = qkv + ((ptrdiff_t)b * 3 * H + h) * D;
            float *kr = k + b * sb + h * sh, *vr = v + b * sb + h * sh, *o = out + (ptrdiff_t)bh * D;
            const float *row_bias = bias + b * bias_sb;
            for (int d = 0; d < D; d++) {
                kr[(ptrdiff_t)t * D + d] = q[(ptrdiff_t)H * D + d];
                vr[(ptrdiff_t)t * D + d] = q[(ptrdiff_t)2 * H * D + d];
            }
            const int first = start[b] < 0 ? 0 : (start[b] > t ? t : (int)start[b]);
            if (p == NULL) {
                failed = 1;
                continue;
            }
            float m = -INFINITY;
            for (int s = first; s <= t; s++) {
                const float *ks = kr + (ptrdiff_t)s * D;
                float dot = 0.0f;
                #pragma omp simd reduction(+:dot)
                for (int d = 0; d < D; d++) dot += q[d] * ks[d];
                p[s] = dot * scale + row_bias[s];
                m = p[s] > m ? p[s] : m;
            }
            float total = 0.0f;
            #pragma omp simd reduction(+:total)
            for (int s = first; s <= t; s++) {
                const float x = p[s] - m; /* <= 0, -inf for a masked column, NaN if every column is masked */
                p[s] = x >= -80.0f ? exp_poly(x) : (x < -80.0f ? 0.0f : x);
                total += p[s];
            }
            for (int d = 0; d < D; d++) o[d] = 0.0f;
            for (int s = first; s <= t; s++) {
                const float w = p[s] / total;
                const float *vs = vr + (ptrdiff_t)s * D;
                #pragma omp simd
                for (int d = 0; d < D; d++) o[d] += w * vs[d];
            }
        }
        free(p);
    }
    return failed;
}
