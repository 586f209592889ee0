/* The package's C kernels for the CPU, over float32 arrays: rlhf_env/accel/native.py compiles this file once per
   machine and calls it through ctypes. Each loop runs on the given number of OpenMP threads (torch's own runtime once
   torch is loaded).

   - gelu_forward, gelu_forward_slope: GPT-2's tanh-approximated GELU (transformers' gelu_new), for
     rlhf_env/accel/gelu.py.
     0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is computed as x s with s = 1 / (1 + e), e = exp(-2u): the
     same function, whose derivative s + x s (1 - s) d(2u)/dx, with 1 - s = e s, needs no cancelling 1 - tanh^2;
     -2u is clamped to [-80, 80], where s is exact in float32 and e stays finite.
   - bias_gelu, residual_layer_norm: the lean decoder's layers (rlhf_env/accel/decoder.py: decode steps and prefills)
     add a projection's bias in the pass of the GELU or of the next LayerNorm that follows it, and the residual
     stream's sum in the latter, where PyTorch would run an op for each.
   - sample_rows: the sampler's draw of one token per row from its logits, by inverse-CDF sampling
     (rlhf_env/sampling.py).
   - attend_step: one decoding step's attention for the sampler's lean decoder (rlhf_env/accel/decoder.py): the new
     token's keys and values written into the cache, and softmax attention over each row's own columns only.
   - packed_attention_forward, packed_attention_backward: causal attention over sequences laid end to end (the
     packed training forwards and the decoder's prefill, rlhf_env/accel/packed_attention.py), where responses may
     share a prompt.

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
static inline float gelu_of(float v) {
    const float m = minus_2u(v);
    return v * (m >= 80.0f ? 0.0f : (m <= -80.0f ? 1.0f : 1.0f / (1.0f + exp_poly(m))));
}

void gelu_forward(const float *x, float *y, ptrdiff_t n, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads)
    for (ptrdiff_t i = 0; i < n; i++) y[i] = gelu_of(x[i]);
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

/* y = GELU(x + bias) for rows of `cols` floats, x and y contiguous (the same array, or apart), bias (cols,): a
   projection's bias added in the GELU's pass instead of its own (the lean decoder's MLP). */
void bias_gelu(const float *x, const float *bias, float *y, ptrdiff_t rows, int cols, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (ptrdiff_t r = 0; r < rows; r++) {
        #pragma omp simd
        for (int i = 0; i < cols; i++) y[r * cols + i] = gelu_of(x[r * cols + i] + bias[i]);
    }
}

/* The residual stream's update and the next LayerNorm in one pass over rows of E floats, all contiguous: x += y +
   bias (bias (E,), or NULL for none), then h = (x - mean) / sqrt(var + eps) * weight + shift per row, the mean and
   the (biased) variance of the row taken in two passes, as LayerNorm defines them. */
void residual_layer_norm(float *x, const float *y, const float *bias, const float *weight, const float *shift,
                         float eps, float *h, ptrdiff_t rows, int E, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (ptrdiff_t r = 0; r < rows; r++) {
        float *xr = x + r * E, *hr = h + r * E;
        const float *yr = y + r * E;
        float sum = 0.0f, squares = 0.0f;
        if (bias) {
            #pragma omp simd reduction(+:sum)
            for (int i = 0; i < E; i++) { xr[i] = (yr[i] + bias[i]) + xr[i]; sum += xr[i]; }
        } else {
            #pragma omp simd reduction(+:sum)
            for (int i = 0; i < E; i++) { xr[i] = yr[i] + xr[i]; sum += xr[i]; }
        }
        const float mean = sum / (float)E;
        #pragma omp simd reduction(+:squares)
        for (int i = 0; i < E; i++) squares += (xr[i] - mean) * (xr[i] - mean);
        const float rstd = 1.0f / sqrtf(squares / (float)E + eps);
        #pragma omp simd
        for (int i = 0; i < E; i++) hr[i] = (xr[i] - mean) * rstd * weight[i] + shift[i];
    }
}

/* One token per row of logits (B, V), contiguous, at temperature[b * temperature_stride] (a stride of 0: one for all
   rows), by inverse-CDF sampling with the row's uniform number u[b] in [0, 1): the log-probabilities are
   log_softmax(logits / temperature), and the token is the first whose running sum of probabilities, in float64,
   exceeds u[b] times their total, as rlhf_env/sampling.py's torch path
   draws them (the running sum is taken by blocks of 16 and then within the block that crosses, which can only move
   a boundary by float64 rounding; should rounding leave no token past the target, the last token of nonzero
   probability): token[b] and its log-probability logp[b], (x - max) - log(sum of exp(x - max)) as torch's
   log_softmax computes it. Returns 0; 1 where a row's probabilities do not sum to a finite number (a NaN in the
   logits, or a temperature of 0), whose token is then -1; 2 where a thread could not allocate its buffer (its
   rows' tokens -1). */
int sample_rows(const float *logits, const float *temperature, ptrdiff_t temperature_stride, const double *u, int B,
                int V, int64_t *token, float *logp, int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * 2 * (size_t)V); /* this thread's probabilities of a row, its scaled logits */
        #pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            const float temp = temperature[b * temperature_stride];
            const float *x = logits + (ptrdiff_t)b * V; /* the logits over the temperature (x / 1 is x) */
            if (p == NULL) {
                token[b] = -1;
                failed |= 2;
                continue;
            }
            if (temp != 1.0f) {
                float *scaled = p + V;
                #pragma omp simd
                for (int j = 0; j < V; j++) scaled[j] = x[j] / temp;
                x = scaled;
            }
            float m = -INFINITY, sum = 0.0f;
            #pragma omp simd reduction(max:m)
            for (int j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
            #pragma omp simd reduction(+:sum)
            for (int j = 0; j < V; j++) {
                const float y = x[j] - m; /* <= 0, -inf for a -inf logit, NaN for a NaN (which makes the sum NaN) */
                sum += y >= -80.0f ? exp_poly(y) : (y < -80.0f ? 0.0f : y);
            }
            const float log_sum = logf(sum); /* log_softmax = (x - m) - log_sum */
            #pragma omp simd
            for (int j = 0; j < V; j++) {
                const float y = (x[j] - m) - log_sum;
                p[j] = y >= -80.0f ? exp_poly(y) : 0.0f;
            }
            double total = 0.0;
            #pragma omp simd reduction(+:total)
            for (int j = 0; j < V; j++) total += (double)p[j];
            if (!isfinite(total) || !isfinite(log_sum) || !isfinite(m)) {
                token[b] = -1;
                failed |= 1;
                continue;
            }
            const double target = u[b] * total;
            double running = 0.0;
            int j = 0;
            for (; j + 16 <= V; j += 16) { /* the block whose sum takes the running sum past the target */
                double block = 0.0;
                #pragma omp simd reduction(+:block)
                for (int i = j; i < j + 16; i++) block += (double)p[i];
                if (running + block > target) break;
                running += block;
            }
            for (; j < V - 1; j++) {
                running += (double)p[j];
                if (running > target) break;
            }
            while (j > 0 && p[j] == 0.0f) j--; /* (only where rounding left the target past the running sum) */
            token[b] = j;
            logp[b] = (x[j] - m) - log_sum;
        }
        free(p);
    }
    return failed;
}

/* One decoding step of attention, for every row b < B and head h < H, head size D:
   - the step's projections qkv (B, 3, H, D), contiguous, plus qkv_bias (3, H, D) where it is not NULL, give query
     q = qkv[b, 0, h], and the key and value qkv[b, 1, h] and qkv[b, 2, h], which are written into the caches at
     column t;
   - the caches hold each (b, h)'s columns as contiguous rows of D floats, at k + b * sb + h * sh + s * D (v alike);
   - out[b, h] (B, H, D) = sum over s of softmax_s(scale q . k[s] + bias[b * bias_sb + s]) v[s], for s from start[b]
     to t: columns before a row's start (its left padding) are never read; a -inf bias after it gives weight 0.
   Where a row has no finite score (it cannot happen in the sampler: column t is the row's own token), its output is
   NaN, as a softmax over nothing would be. Returns 0, or 1 where a thread could not allocate its scores. */
int attend_step(const float *qkv, const float *qkv_bias, float *k, float *v, ptrdiff_t sb, ptrdiff_t sh,
                const float *bias, ptrdiff_t bias_sb, const int64_t *start, int B, int H, int D, int t, float scale,
                float *out, int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(t + 1 + D)); /* this thread's scores, then its query */
        #pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            const float *row = qkv + ((ptrdiff_t)b * 3 * H + h) * D;
            float *kr = k + b * sb + h * sh, *vr = v + b * sb + h * sh, *o = out + (ptrdiff_t)bh * D;
            const float *row_bias = bias + b * bias_sb;
            if (qkv_bias) {
                const float *qb = qkv_bias + (ptrdiff_t)h * D;
                for (int d = 0; d < D; d++) {
                    kr[(ptrdiff_t)t * D + d] = row[(ptrdiff_t)H * D + d] + qb[(ptrdiff_t)H * D + d];
                    vr[(ptrdiff_t)t * D + d] = row[(ptrdiff_t)2 * H * D + d] + qb[(ptrdiff_t)2 * H * D + d];
                }
            } else {
                for (int d = 0; d < D; d++) {
                    kr[(ptrdiff_t)t * D + d] = row[(ptrdiff_t)H * D + d];
                    vr[(ptrdiff_t)t * D + d] = row[(ptrdiff_t)2 * H * D + d];
                }
            }
            const int first = start[b] < 0 ? 0 : (start[b] > t ? t : (int)start[b]);
            if (p == NULL) {
                failed = 1;
                continue;
            }
            float *q = p + t + 1;
            for (int d = 0; d < D; d++) q[d] = qkv_bias ? row[d] + qkv_bias[(ptrdiff_t)h * D + d] : row[d];
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

/* Causal attention of sequences laid end to end, where several may share their beginning (the packed training
   forwards, rlhf_env/accel/trunk.py). The T tokens are cut into segments, segment s the tokens starts[s] <= t <
   starts[s + 1], and the segments into groups, group g the segments groups[g] <= s < groups[g + 1]: a group's first
   segment (a prompt) attends causally to itself, and each later one (a response to that prompt) to the whole first
   segment and causally to itself. A group of one segment is a sequence of its own. The projections qkv (T, 3, H, D),
   contiguous, give the query, key and value of token t and head h at qkv[t, 0, h], qkv[t, 1, h] and qkv[t, 2, h];
   out (T, H, D) is the attention's output, and lse (T, H) the log-sum-exp of each query's scaled scores, which the
   backward needs. Where queries is not NULL, only the tokens t with queries[t] nonzero are computed as queries (the
   others' outputs are 0, and their gradients are taken as 0: the last layer of a forward whose outputs are read at
   some positions only); every token is a key and a value. The head size D must be a multiple of 16.

   Each (group, head) is one task of the thread team (so that the backward's sums into a prompt's keys and values
   are a single thread's). A segment's keys (the prompt's, then its own; in the backward its values too) are copied
   transposed, D rows padded to a multiple of 16 columns, so that a token's scores over its keys are blocks of 16
   accumulated in a register over d; the blocks' columns past the token's own (the padding, later tokens) are set
   to -inf before the softmax, which gives them weight 0. Sums over keys of rows of D (the output, the query's
   gradient) keep 16 columns in a register at a time. Returns 0, or 1 where a thread could not allocate its buffers. */
typedef float vf __attribute__((vector_size(64), aligned(4))); /* 16 floats, loaded and stored unaligned */
#define VF 16
typedef int32_t vi __attribute__((vector_size(64), aligned(4)));
static const vi IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static inline vf select_vf(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* exp_poly on 16 lanes, for x <= 0: 0 below -80 (and at -inf) */
static inline vf exp_vf(vf x) {
    const vi in_range = x >= -80.0f;
    x = select_vf(in_range, x, (vf){0} - 80.0f);
    const vf k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vf r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vf scale = (vf)((__builtin_convertvector(k, vi) + 127) << 23);
    return (vf)((vi)(p * scale) & in_range);
}

static inline float max_of(vf x) {
    float m = x[0];
    for (int k = 1; k < VF; k++) m = x[k] > m ? x[k] : m;
    return m;
}

static inline float sum_of(vf x) {
    float total = 0.0f;
    for (int k = 0; k < VF; k++) total += x[k];
    return total;
}

/* The most keys any token has (a group's first segment and its longest later one), rounded up to VF. */
static ptrdiff_t padded_keys(const int64_t *starts, const int64_t *groups, int G) {
    ptrdiff_t most = 1;
    for (int g = 0; g < G; g++) {
        const int64_t first = groups[g];
        ptrdiff_t later = 0;
        for (int64_t s = first + 1; s < groups[g + 1]; s++)
            later = starts[s + 1] - starts[s] > later ? starts[s + 1] - starts[s] : later;
        const ptrdiff_t keys = starts[first + 1] - starts[first] + later;
        most = keys > most ? keys : most;
    }
    return (most + VF - 1) / VF * VF;
}

/* rows (L, stride) at x, D columns, into columns offset .. offset + L of t (D, Lp), t[d * Lp + offset + j] =
   x[j * stride + d]; zero from there to Lp */
static void transpose_in(const float *x, ptrdiff_t stride, ptrdiff_t L, int D, ptrdiff_t Lp, ptrdiff_t offset,
                         float *t) {
    for (int d = 0; d < D; d++)
        for (ptrdiff_t j = offset + L; j < Lp; j++) t[d * Lp + j] = 0.0f;
    for (ptrdiff_t j = 0; j < L; j++)
        for (int d = 0; d < D; d++) t[d * Lp + offset + j] = x[j * stride + d];
}

/* p[j] = scale * (a . column j of the transposed rows xt (D, Lp)) for j <= last, -inf for last < j < n (n: last + 1
   rounded up to a multiple of VF); returns n */
static inline ptrdiff_t scores(const float *a, const float *xt, ptrdiff_t Lp, int D, ptrdiff_t last, float scale,
                               float *p) {
    const ptrdiff_t n = (last + VF) / VF * VF;
    for (ptrdiff_t jb = 0; jb < n; jb += VF) { /* four sums over d, so that the additions do not wait on each other */
        vf acc[4] = {{0}, {0}, {0}, {0}};
        for (int d = 0; d < D; d += 4)
            for (int k = 0; k < 4; k++) acc[k] += a[d + k] * *(const vf *)(xt + (d + k) * Lp + jb);
        *(vf *)(p + jb) = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
    }
    const vi past = IOTA + (int32_t)(n - VF) > (int32_t)last; /* the last block's columns after the token's */
    *(vf *)(p + n - VF) = select_vf(past, (vf){0} - INFINITY, *(vf *)(p + n - VF));
    return n;
}

/* out[0..D) (+)= factor * sum over j < n of w[j] * rows[j * stride + 0..D) (D a multiple of VF): added to out where
   add */
static inline void weighted_rows(const float *w, const float *rows, ptrdiff_t stride, ptrdiff_t n, int D, float factor,
                                 float *out, int add) {
    for (int d = 0; d < D; d += VF) { /* four sums over j, as in scores */
        vf acc[4] = {{0}, {0}, {0}, {0}};
        ptrdiff_t j = 0;
        for (; j + 4 <= n; j += 4)
            for (int k = 0; k < 4; k++) acc[k] += w[j + k] * *(const vf *)(rows + (j + k) * stride + d);
        for (; j < n; j++) acc[0] += w[j] * *(const vf *)(rows + j * stride + d);
        const vf total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * factor;
        *(vf *)(out + d) = add ? *(vf *)(out + d) + total : total;
    }
}

static inline float dot(const float *a, const float *b, int D) {
    vf acc = {0};
    for (int d = 0; d < D; d += VF) acc += *(const vf *)(a + d) * *(const vf *)(b + d);
    float total = 0.0f;
    for (int k = 0; k < VF; k++) total += acc[k];
    return total;
}

/* Where a query's keys are: its scores' first `shared` columns are the rows at `shared_rows` (its group's first
   segment, for a later segment's token; none for a first segment's), the rest the rows at `own_rows` (its own
   segment's, from its first), each row `stride` floats after the previous; last is its last key's column. */
typedef struct {
    const float *shared_rows, *own_rows;
    ptrdiff_t shared, last;
} keys_t;

static void attend_row(const float *q, const float *kt, ptrdiff_t Lp, int D, keys_t keys, const float *v_shared,
                       const float *v_own, ptrdiff_t stride, float scale, float *p, float *o, float *lse) {
    const ptrdiff_t n = scores(q, kt, Lp, D, keys.last, scale, p);
    vf top = *(vf *)p;
    for (ptrdiff_t jb = VF; jb < n; jb += VF) top = select_vf(*(vf *)(p + jb) > top, *(vf *)(p + jb), top);
    const float m = max_of(top);
    vf sums = {0};
    for (ptrdiff_t jb = 0; jb < n; jb += VF) { /* -inf past the token: 0 */
        const vf e = exp_vf(*(vf *)(p + jb) - m);
        *(vf *)(p + jb) = e;
        sums += e;
    }
    const float total = sum_of(sums), inverse = 1.0f / total;
    weighted_rows(p, v_shared, stride, keys.shared, D, inverse, o, 0);
    weighted_rows(p + keys.shared, v_own, stride, keys.last + 1 - keys.shared, D, inverse, o, keys.shared > 0);
    *lse = m + logf(total);
}

int packed_attention_forward(const float *qkv, const int64_t *starts, const int64_t *groups, const uint8_t *queries,
                             int G, int H, int D, float scale, float *out, float *lse, int threads) {
    const ptrdiff_t row = (ptrdiff_t)3 * H * D, E = (ptrdiff_t)H * D, Lp = padded_keys(starts, groups, G);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(Lp * (D + 1)));
        float *kt = p + Lp;
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < G * H; task++) {
            if (p == NULL) {
                failed = 1;
                continue;
            }
            const int g = task / H, h = task % H;
            const ptrdiff_t head = (ptrdiff_t)h * D;
            for (int64_t s = groups[g]; s < groups[g + 1]; s++) {
                const int later = s > groups[g];
                const ptrdiff_t first = starts[s], L = starts[s + 1] - first, prompt = starts[groups[g]];
                const ptrdiff_t shared = later ? starts[groups[g] + 1] - prompt : 0;
                const float *q0 = qkv + first * row + head, *k0 = q0 + E, *v0 = k0 + E;
                const float *v_shared = qkv + prompt * row + head + 2 * E;
                transpose_in(k0, row, L, D, Lp, shared, kt); /* after the prompt's, which its own segment put there */
                for (ptrdiff_t i = 0; i < L; i++) {
                    if (queries != NULL && !queries[first + i]) { /* an output no one reads */
                        for (int d = 0; d < D; d++) out[(first + i) * E + head + d] = 0.0f;
                        lse[(first + i) * H + h] = 0.0f;
                        continue;
                    }
                    const keys_t keys = {NULL, NULL, shared, shared + i}; /* (the forward reads no key rows) */
                    attend_row(q0 + i * row, kt, Lp, D, keys, v_shared, v0, row, scale, p,
                               out + (first + i) * E + head, lse + (first + i) * H + h);
                }
            }
        }
        free(p);
    }
    return failed;
}

static void backward_row(const float *q, const float *g, const float *o, float top, const float *kt,
                         const float *vt, ptrdiff_t Lp, int D, keys_t keys, float *dq, float *dk_shared,
                         float *dv_shared, float *dk_own, float *dv_own, ptrdiff_t stride, float scale, float *p,
                         float *ds) {
    const float delta = dot(g, o, D);
    const ptrdiff_t n = scores(q, kt, Lp, D, keys.last, scale, p);
    scores(g, vt, Lp, D, keys.last, 1.0f, ds); /* dout . v_j */
    for (ptrdiff_t jb = 0; jb < n; jb += VF) { /* -inf past the token: 0; <= 0 up to rounding */
        const vf x = *(vf *)(p + jb) - top, e = exp_vf(select_vf(x > 0.0f, (vf){0}, x));
        *(vf *)(p + jb) = e;
        *(vf *)(ds + jb) = e * (select_vf(e > 0.0f, *(vf *)(ds + jb), (vf){0}) - delta) * scale;
    }
    weighted_rows(ds, keys.shared_rows, stride, keys.shared, D, 1.0f, dq, 0);
    weighted_rows(ds + keys.shared, keys.own_rows, stride, keys.last + 1 - keys.shared, D, 1.0f, dq, keys.shared > 0);
    for (ptrdiff_t j = 0; j <= keys.last; j++) {
        const ptrdiff_t at = (j < keys.shared ? j : j - keys.shared) * stride;
        float *dk = (j < keys.shared ? dk_shared : dk_own) + at, *dv = (j < keys.shared ? dv_shared : dv_own) + at;
        for (int d = 0; d < D; d += VF) {
            *(vf *)(dv + d) += p[j] * *(const vf *)(g + d);
            *(vf *)(dk + d) += ds[j] * *(const vf *)(q + d);
        }
    }
}

/* The gradient dqkv (T, 3, H, D) of packed_attention_forward's inputs, from its inputs, its out and lse, and the
   gradient dout (T, H, D) of out. Per query: the probabilities p_j = exp(scale q.k_j - lse) again, ds_j = p_j
   (dout.v_j - dout.out) scale, dq = sum of ds_j k_j, and dv_j += p_j dout, dk_j += ds_j q (the keys and values
   transposed, as in the forward). Every element of dqkv is written (a task owns its group's rows of its head).
   Returns 0, or 1 where a thread could not allocate its buffers. */
int packed_attention_backward(const float *qkv, const float *out, const float *lse, const float *dout,
                              const int64_t *starts, const int64_t *groups, const uint8_t *queries, int G, int H,
                              int D, float scale, float *dqkv, int threads) {
    const ptrdiff_t row = (ptrdiff_t)3 * H * D, E = (ptrdiff_t)H * D, Lp = padded_keys(starts, groups, G);
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *p = malloc(sizeof(float) * (size_t)(Lp * (2 * D + 2)));
        float *ds = p + Lp, *kt = ds + Lp, *vt = kt + Lp * D;
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < G * H; task++) {
            if (p == NULL) {
                failed = 1;
                continue;
            }
            const int g = task / H, h = task % H;
            const ptrdiff_t head = (ptrdiff_t)h * D, prompt = starts[groups[g]];
            for (ptrdiff_t t = prompt; t < starts[groups[g + 1]]; t++)
                for (int d = 0; d < D; d++) dqkv[t * row + E + head + d] = dqkv[t * row + 2 * E + head + d] = 0.0f;
            for (int64_t s = groups[g]; s < groups[g + 1]; s++) {
                const int later = s > groups[g];
                const ptrdiff_t first = starts[s], L = starts[s + 1] - first;
                const ptrdiff_t shared = later ? starts[groups[g] + 1] - prompt : 0;
                const float *q0 = qkv + first * row + head, *k0 = q0 + E, *v0 = k0 + E;
                const float *k_shared = qkv + prompt * row + head + E;
                float *dq0 = dqkv + first * row + head, *dk0 = dq0 + E, *dv0 = dk0 + E;
                float *dk_shared = dqkv + prompt * row + head + E, *dv_shared = dk_shared + E;
                transpose_in(k0, row, L, D, Lp, shared, kt); /* after the prompt's, as in the forward */
                transpose_in(v0, row, L, D, Lp, shared, vt);
                for (ptrdiff_t i = 0; i < L; i++) {
                    if (queries != NULL && !queries[first + i]) { /* its output was not read: no gradient */
                        for (int d = 0; d < D; d++) dq0[i * row + d] = 0.0f;
                        continue;
                    }
                    const keys_t keys = {k_shared, k0, shared, shared + i};
                    backward_row(q0 + i * row, dout + (first + i) * E + head, out + (first + i) * E + head,
                                 lse[(first + i) * H + h], kt, vt, Lp, D, keys, dq0 + i * row, dk_shared, dv_shared,
                                 dk0, dv0, row, scale, p, ds);
                }
            }
        }
        free(p);
    }
    return failed;
}
