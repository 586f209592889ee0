/* The tanh-approximated GELU of GPT-2 (transformers' gelu_new), forward and backward, over float32 arrays:
   rlhf_env/accel/gelu.py compiles this file once per machine and calls it through ctypes.

   0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is computed as x s with s = 1 / (1 + e), e = exp(-2u):
   the same function, whose derivative s + x s (1 - s) d(2u)/dx, with 1 - s = e s, needs no cancelling 1 - tanh^2. exp is Cephes' expf
   (range reduction by ln 2, a degree-6 polynomial: about 1 ulp), written without library calls so that the
   compiler vectorises both loops; -2u is clamped to [-80, 80], where s is exact in float32 and e stays finite.
   Each loop runs on the given number of OpenMP threads (torch's own runtime once torch is loaded). */
#include <stddef.h>
#include <stdint.h>

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

void gelu_backward(const float *x, const float *grad, float *out, ptrdiff_t n, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads)
    for (ptrdiff_t i = 0; i < n; i++) {
        const float v = x[i], m = minus_2u(v);
        const float e = exp_poly(m), s = 1.0f / (1.0f + e);
        const float du = 1.5957691216057308f * (1.0f + 0.134145f * v * v); /* d(2u)/dx */
        const float d = s + (v * du) * (s * (e * s)); /* e s = 1 - s: the product stays finite */
        out[i] = grad[i] * (m >= 80.0f ? 0.0f : (m <= -80.0f ? 1.0f : d));
    }
}
