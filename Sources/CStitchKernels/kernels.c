#include "stitch_kernels.h"
#include <stdint.h>
#include <string.h>

#pragma clang fp contract(off)

#define DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/* e^x: x = n ln 2 + r with |r| <= ln 2 / 2, Cephes' degree-6 polynomial for e^r, and 2^n
   built in the exponent bits, in plain arithmetic the compiler vectorises (expf is a call). */
static inline float fast_exp(float x) {
    float clamped = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
    /* n = round(x / ln 2): adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits. */
    float shifted = clamped * 1.44269504088896341f + 12582912.0f;
    float n = shifted - 12582912.0f;
    float r = clamped - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 split in two for an exact product */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    int32_t integer = bits - 0x4B400000; /* n, from the mantissa bits */
    /* p * 2^n in two halves, so that n = 128 (x near the top of the range) does not overflow 2^n. */
    int32_t half = integer >> 1;
    uint32_t low = (uint32_t)(half + 127) << 23, high = (uint32_t)(integer - half + 127) << 23;
    float scale_low, scale_high;
    memcpy(&scale_low, &low, sizeof low);
    memcpy(&scale_high, &high, sizeof high);
    float result = p * scale_low * scale_high;
    return x < -87.33654f ? 0.0f : (x > 88.72283f ? __builtin_inff() : result);
}

DISPATCH void stitch_exp(const float *x, float *y, long n) {
    for (long i = 0; i < n; i++) y[i] = fast_exp(x[i]);
}

/* tanh(u) = 1 - 2 / (e^(2u) + 1) */
DISPATCH void stitch_gelu_tanh(float *p, long n) {
    const float c = 0.79788456080286535587989211986876f; /* sqrt(2/pi) */
    for (long i = 0; i < n; i++) {
        float v = p[i];
        p[i] = 0.5f * v * (2.0f - 2.0f / (fast_exp(2.0f * c * (v + 0.044715f * v * v * v)) + 1.0f));
    }
}

DISPATCH void stitch_quick_gelu(float *p, long n) {
    for (long i = 0; i < n; i++) p[i] = p[i] / (1.0f + fast_exp(-1.702f * p[i]));
}

DISPATCH void stitch_sigmoid(float *p, long n) {
    for (long i = 0; i < n; i++) p[i] = 1.0f / (1.0f + fast_exp(-p[i]));
}

DISPATCH void stitch_bias_activation(float *p, long n, float bias, stitch_activation activation) {
    switch (activation) {
    case STITCH_ACTIVATION_NONE:
        for (long i = 0; i < n; i++) p[i] += bias;
        break;
    case STITCH_ACTIVATION_SILU:
        for (long i = 0; i < n; i++) {
            float v = p[i] + bias;
            p[i] = v / (1.0f + fast_exp(-v));
        }
        break;
    case STITCH_ACTIVATION_RELU6:
        for (long i = 0; i < n; i++) {
            float v = p[i] + bias;
            p[i] = v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
        }
        break;
    }
}

/* The output columns [first, end) whose input column x * stride + offset lies in [0, size). */
static void valid_columns(long offset, long stride, long size, long w_out, long *first, long *end) {
    long lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    long hi = size - offset <= 0 ? 0 : (size - offset - 1) / stride + 1;
    *first = lo < w_out ? lo : w_out;
    *end = hi < *first ? *first : (hi < w_out ? hi : w_out);
}

DISPATCH void stitch_depthwise_channel(const float *input, long h, long w, const float *taps, long kh, long kw, long stride,
                                       long pad_top, long pad_left, float *output, long h_out, long w_out,
                                       float bias, stitch_activation activation) {
    /* Each tap sweeps the columns whose input lies inside the image, so the inner loop is
       contiguous and unchecked; every output still sums its taps in (i, j) order. */
    long first[16], end[16];
    for (long j = 0; j < kw && j < 16; j++) valid_columns(j - pad_left, stride, w, w_out, &first[j], &end[j]);
    for (long y = 0; y < h_out; y++) {
        float *row = output + y * w_out;
        for (long x = 0; x < w_out; x++) row[x] = 0.0f;
        for (long i = 0; i < kh; i++) {
            long sy = y * stride + i - pad_top;
            if (sy < 0 || sy >= h) continue;
            const float *input_row = input + sy * w;
            for (long j = 0; j < kw; j++) {
                long shift = j - pad_left;
                float tap = taps[i * kw + j];
                if (stride == 1) {
                    for (long x = first[j]; x < end[j]; x++) row[x] += input_row[x + shift] * tap;
                } else {
                    for (long x = first[j]; x < end[j]; x++) row[x] += input_row[x * stride + shift] * tap;
                }
            }
        }
    }
    stitch_bias_activation(output, h_out * w_out, bias, activation);
}

