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

/* Causal attention within sequences laid end to end (the packed training forwards, rlhf_env/accel/trunk.py): token
   t < T of sequence s, starts[s] <= t < starts[s + 1], attends to its sequence's tokens up to itself. The
   projections qkv (T, 3, H, D), contiguous, give the query, key and value of token t and head h at qkv[t, 0, h],
   qkv[t, 1, h] and qkv[t, 2, h]; out (T, H, D) is the attention's output, and lse (T, H) the log-sum-exp of each
   query's scaled scores, which the backward needs. The head size D must be a multiple of 16.

   Each (sequence, head) is one task of the thread team. Its keys (and in the backward its values) are copied
   transposed, D rows of the sequence's length padded to a multiple of 16, so that a token's scores over its keys
   are blocks of 16 accumulated in a register over d; the blocks' columns past the token's own (the padding, later
   tokens) are set to -inf before the softmax, which gives them weight 0. Sums over keys of rows of D (the output,
   the query's gradient) keep 16 columns in a register at a time. Returns 0, or 1 where a thread could not allocate
   its buffers. */
typedef float vf __attribute__((vector_size(64), aligned(4))); /* 16 floats, loaded and stored unaligned */
#define VF 16

static ptrdiff_t padded_longest(const int64_t *starts, int S) {
    ptrdiff_t longest = 1;
    for (int s = 0; s < S; s++) longest = starts[s + 1] - starts[s] > longest ? starts[s + 1] - starts[s] : longest;
    return (longest + VF - 1) / VF * VF;
}

/* rows (L, stride) at x, D columns, into t (D, Lp), t[d * Lp + j] = x[j * stride + d], zero past L */
static void transpose_in(const float *x, ptrdiff_t stride, ptrdiff_t L, int D, ptrdiff_t Lp, float *t) {
    for (int d = 0; d < D; d++)
        for (ptrdiff_t j = L; j < Lp; j++) t[d * Lp + j] = 0.0f;
    for (ptrdiff_t j = 0; j < L; j++)
        for (int d = 0; d < D; d++) t[d * Lp + j] = x[j * stride + d];
}

/* p[j] = scale * (a . column j of the transposed rows xt (D, Lp)) for j <= i, -inf for i < j < n (n: i + 1 rounded
   up to a multiple of VF) */
static inline ptrdiff_t scores(const float *a, const float *xt, ptrdiff_t Lp, int D, ptrdiff_t i, float scale,
                               float *p) {
    const ptrdiff_t n = (i + VF) / VF * VF;
    for (ptrdiff_t jb = 0; jb < n; jb += VF) { /* four sums over d, so that the additions do not wait on each other */
        vf acc[4] = {{0}, {0}, {0}, {0}};
        for (int d = 0; d < D; d += 4)
            for (int k = 0; k < 4; k++) acc[k] += a[d + k] * *(const vf *)(xt + (d + k) * Lp + jb);
        *(vf *)(p + jb) = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
    }
    for (ptrdiff_t j = i + 1; j < n; j++) p[j] = -INFINITY;
    return n;
}

/* out[0..D) = sum over j < n of w[j] * rows[j * stride + 0..D) (D a multiple of VF) */
static inline void weighted_rows(const float *w, const float *rows, ptrdiff_t stride, ptrdiff_t n, int D, float *out) {
    for (int d = 0; d < D; d += VF) { /* four sums over j, as in scores */
        vf acc[4] = {{0}, {0}, {0}, {0}};
        ptrdiff_t j = 0;
        for (; j + 4 <= n; j += 4)
            for (int k = 0; k < 4; k++) acc[k] += w[j + k] * *(const vf *)(rows + (j + k) * stride + d);
        for (; j < n; j++) acc[0] += w[j] * *(const vf *)(rows + j * stride + d);
        *(vf *)(out + d) = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

static inline float dot(const float *a, const float *b, int D) {
    vf acc = {0};
    for (int d = 0; d < D; d += VF) acc += *(const vf *)(a + d) * *(const vf *)(b + d);
    float total = 0.0f;
    for (int k = 0; k < VF; k++) total += acc[k];
    return total;
}

int packed_attention_forward(const float *qkv, const int64_t *starts, int S, int H, int D, float scale, float *out,
                             float *lse, int threads) {
    const ptrdiff_t row = (ptrdiff_t)3 * H * D, E = (ptrdiff_t)H * D, Lp = padded_longest(starts, S);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(Lp * (D + 1)));
        float *kt = p + Lp;
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < S * H; task++) {
            if (p == NULL) {
                failed = 1;
                continue;
            }
            const int s = task / H, h = task % H;
            const ptrdiff_t first = starts[s], L = starts[s + 1] - first;
            const float *q0 = qkv + first * row + (ptrdiff_t)h * D, *k0 = q0 + E, *v0 = k0 + E;
            transpose_in(k0, row, L, D, Lp, kt);
            for (ptrdiff_t i = 0; i < L; i++) {
                const ptrdiff_t n = scores(q0 + i * row, kt, Lp, D, i, scale, p);
                float m = -INFINITY;
                #pragma omp simd reduction(max:m)
                for (ptrdiff_t j = 0; j < n; j++) m = p[j] > m ? p[j] : m;
                float total = 0.0f;
                #pragma omp simd reduction(+:total)
                for (ptrdiff_t j = 0; j < n; j++) {
                    const float x = p[j] - m; /* <= 0, -inf past the token */
                    p[j] = x >= -80.0f ? exp_poly(x) : 0.0f;
                    total += p[j];
                }
                const float inverse = 1.0f / total;
                #pragma omp simd
                for (ptrdiff_t j = 0; j <= i; j++) p[j] *= inverse;
                weighted_rows(p, v0, row, i + 1, D, out + (first + i) * E + (ptrdiff_t)h * D);
                lse[(first + i) * H + h] = m + logf(total);
            }
        }
        free(p);
    }
    return failed;
}

/* The gradient dqkv (T, 3, H, D) of packed_attention_forward's inputs, from its inputs, its out and lse, and the
   gradient dout (T, H, D) of out. Per (sequence, head), row by row: the probabilities p_j = exp(scale q.k_j - lse)
   again, ds_j = p_j (dout.v_j - dout.out) scale, dq = sum of ds_j k_j, and dv_j += p_j dout, dk_j += ds_j q (the
   keys and values transposed, as in the forward). Every element of dqkv is written (a task owns its sequence's rows
   of its head). Returns 0, or 1 where a thread could not allocate its buffers. */
int packed_attention_backward(const float *qkv, const float *out, const float *lse, const float *dout,
                              const int64_t *starts, int S, int H, int D, float scale, float *dqkv, int threads) {
    const ptrdiff_t row = (ptrdiff_t)3 * H * D, E = (ptrdiff_t)H * D, Lp = padded_longest(starts, S);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(Lp * (2 * D + 2)));
        float *ds = p + Lp, *kt = ds + Lp, *vt = kt + Lp * D;
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < S * H; task++) {
            if (p == NULL) {
                failed = 1;
                continue;
            }
            const int s = task / H, h = task % H;
            const ptrdiff_t first = starts[s], L = starts[s + 1] - first, head = (ptrdiff_t)h * D;
            const float *q0 = qkv + first * row + head, *k0 = q0 + E, *v0 = k0 + E;
            float *dq0 = dqkv + first * row + head, *dk0 = dq0 + E, *dv0 = dk0 + E;
            transpose_in(k0, row, L, D, Lp, kt);
            transpose_in(v0, row, L, D, Lp, vt);
            for (ptrdiff_t i = 0; i < L; i++)
                for (int d = 0; d < D; d++) dk0[i * row + d] = dv0[i * row + d] = 0.0f;
            for (ptrdiff_t i = 0; i < L; i++) {
                const float *q = q0 + i * row, *g = dout + (first + i) * E + head, top = lse[(first + i) * H + h];
                const float delta = dot(g, out + (first + i) * E + head, D);
                const ptrdiff_t n = scores(q, kt, Lp, D, i, scale, p);
                #pragma omp simd
                for (ptrdiff_t j = 0; j < n; j++) {
                    const float x = p[j] - top; /* <= 0 up to rounding, -inf past the token */
                    p[j] = x >= -80.0f ? exp_poly(x > 0.0f ? 0.0f : x) : 0.0f;
                }
                scores(g, vt, Lp, D, i, 1.0f, ds); /* dout . v_j */
                #pragma omp simd
                for (ptrdiff_t j = 0; j <= i; j++) ds[j] = p[j] * (ds[j] - delta) * scale;
                weighted_rows(ds, k0, row, i + 1, D, dq0 + i * row);
                for (ptrdiff_t j = 0; j <= i; j++) {
                    float *dk = dk0 + j * row, *dv = dv0 + j * row;
                    for (int d = 0; d < D; d += VF) {
                        *(vf *)(dv + d) += p[j] * *(const vf *)(g + d);
                        *(vf *)(dk + d) += ds[j] * *(const vf *)(q + d);
                    }
                }
            }
        }
        free(p);
    }
    return failed;
}
