#include "stitch_kernels.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#pragma clang fp contract(off)

/* On x86-64 each kernel is compiled three times and the load-time resolver picks by CPU; elsewhere (aarch64: NEON is
   baseline) once, the vector types lowering to whatever the target has. */
#if defined(__x86_64__)
#define DISPATCH __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DISPATCH
#endif

/* Whether the load-time resolver picked the x86-64-v4 variants (AVX-512's 32 registers of 16 floats). */
static int runs_x86_64_v4(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4");
#else
    return 0;
#endif
}

const char *stitch_kernel_variant(void) {
#if defined(__x86_64__)
    if (runs_x86_64_v4()) return "x86-64-v4";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
    return "baseline";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "portable";
#endif
}

DISPATCH void stitch_widen_half(const uint16_t *source, long count, float *target) {
    const _Float16 *halves = (const _Float16 *)source;
    for (long i = 0; i < count; i++) target[i] = (float)halves[i];
}

/* 16 floats: one AVX-512 register, two AVX2 or four SSE ones, as each variant compiles it.
   aligned(4) lets it load from any float address. */
typedef float v16 __attribute__((vector_size(64), aligned(4)));

typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));

/* e^x = 2^n e^r for x clamped to the float range: x = n ln 2 + r with |r| <= ln 2 / 2 (n = round(x / ln 2) by adding
   1.5 * 2^23, which leaves n in the low mantissa bits; ln 2 split in two for an exact product) and Cephes' degree-6
   polynomial for e^r, which *p receives, with n in *n. Multiply-adds are fused where the variant has them (a third
   faster, as accurate). Vectors pass by pointer: vector arguments' ABI differs between the instruction-set variants. */
static inline __attribute__((always_inline)) void exp_parts_v16(const v16 *clamped, v16 *p, v16i *n) {
#pragma clang fp contract(fast)
    v16 x = *clamped;
    v16 shifted = x * 1.44269504088896341f + 12582912.0f;
    v16 whole = shifted - 12582912.0f;
    v16 r = x - whole * 0.693359375f + whole * 2.12194440e-4f;
    v16 q = (v16){0} + 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    *p = q * r * r + r + 1;
    *n = (v16i)shifted - 0x4B400000;
}

/* e^x on 16 lanes within about 1 ulp of expf, 0 and +inf outside its range: 2^n built in the exponent bits in two
   halves, so that n = 128 does not overflow. */
static inline __attribute__((always_inline)) void fast_exp_v16(const v16 *in, v16 *out) {
    v16 x = *in;
    const v16 low = (v16){0} + -87.33654f, high = (v16){0} + 88.72283f;
    v16 clamped = __builtin_elementwise_min(__builtin_elementwise_max(x, low), high), p;
    v16i integer, half;
    exp_parts_v16(&clamped, &p, &integer);
    half = integer >> 1;
    v16 result = p * (v16)((half + 127) << 23) * (v16)((integer - half + 127) << 23);
    v16i below = x < low, above = x > high;
    v16 infinity = (v16){0} + __builtin_inff();
    *out = (v16)((~below & ~above & (v16i)result) | (above & (v16i)infinity));
}

/* e^x for the activations, which use only 1 + e^x: x clamped to [-87.3, 88] (where 1 + e^x is 1, or so large that
   its reciprocal is below 1e-38), so 2^n is one exponent (n <= 127) and no lane needs fixing: a third fewer
   instructions than fast_exp_v16, the same values inside that range. */
static inline __attribute__((always_inline)) void activation_exp_v16(const v16 *in, v16 *out) {
    v16 clamped = __builtin_elementwise_min(__builtin_elementwise_max(*in, (v16){0} + -87.33654f), (v16){0} + 88.0f), p;
    v16i n;
    exp_parts_v16(&clamped, &p, &n);
    *out = p * (v16)((n + 127) << 23);
}

/* Runs the statements given last on p[0..<n] 16 floats at a time as the v16 `v`, the last partial
   block through a zero-padded copy. */
#define BLOCKWISE(p, n, v, ...)                                                               \
    do {                                                                                      \
        long i_ = 0;                                                                          \
        for (; i_ + 16 <= (n); i_ += 16) {                                                    \
            v16 v = *(const v16 *)((p) + i_);                                                 \
            __VA_ARGS__;                                                                      \
            *(v16 *)((p) + i_) = v;                                                           \
        }                                                                                     \
        if (i_ < (n)) {                                                                       \
            float tail_[16] = {0};                                                            \
            memcpy(tail_, (p) + i_, (size_t)((n) - i_) * sizeof(float));                      \
            v16 v = *(const v16 *)tail_;                                                      \
            __VA_ARGS__;                                                                      \
            *(v16 *)tail_ = v;                                                                \
            memcpy((p) + i_, tail_, (size_t)((n) - i_) * sizeof(float));                      \
        }                                                                                     \
    } while (0)

/* The activations, on 16 values in registers, in place: defined once, for the separate passes over a tensor and the
   fused epilogues of products and convolutions alike (so fused and separate give the same bits). */
/* x / (1 + e^(-scale x)): SiLU (scale 1) and quick GELU x sigmoid(1.702 x) (scale 1.702). */
static inline __attribute__((always_inline)) void scaled_silu_v16(v16 *v, float scale) {
    v16 u = -scale * *v, e;
    activation_exp_v16(&u, &e);
    *v = *v / (1.0f + e);
}

/* The logistic sigmoid 1 / (1 + e^-x). */
static inline __attribute__((always_inline)) void sigmoid_v16(v16 *v) {
    v16 u = -*v, e;
    activation_exp_v16(&u, &e);
    *v = 1.0f / (1.0f + e);
}

/* tanh(u) = 1 - 2 / (e^(2u) + 1) */
static inline __attribute__((always_inline)) void gelu_tanh_v16(v16 *v) {
    const float c = 0.79788456080286535587989211986876f; /* sqrt(2/pi) */
    v16 u = 2.0f * c * (*v + 0.044715f * *v * *v * *v), e;
    activation_exp_v16(&u, &e);
    *v = 0.5f * *v * (2.0f - 2.0f / (e + 1.0f));
}

/* GELU's exact form, x Φ(x) = x (1 + erf(x / √2)) / 2, with erf as a rational function of x (odd degree 13 over even
   degree 8, the approximation Eigen and XLA use; erf(4) is 1 in float, so x is clamped there): within 4.3e-7 of erf
   (erff: 5e-8; torch's own CPU GELU uses Abramowitz and Stegun's 7.1.26, within 5.3e-7). */
static inline __attribute__((always_inline)) void gelu_erf_v16(v16 *v) {
    v16 x = __builtin_elementwise_max(__builtin_elementwise_min(*v * 0.70710678118654752f, (v16){0} + 4.0f), (v16){0} - 4.0f);
    v16 x2 = x * x;
    v16 numerator = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    numerator = x2 * numerator - 2.10102402082508e-06f;
    numerator = x2 * numerator - 5.69250639462346e-05f;
    numerator = x2 * numerator - 7.34990630326855e-04f;
    numerator = x2 * numerator - 2.95459980854025e-03f;
    numerator = x2 * numerator - 1.60960333262415e-02f;
    v16 denominator = x2 * -1.45660718464996e-05f - 2.13374055278905e-04f;
    denominator = x2 * denominator - 1.68282697438203e-03f;
    denominator = x2 * denominator - 7.37332916720468e-03f;
    denominator = x2 * denominator - 1.42647390514189e-02f;
    *v = 0.5f * *v * (1.0f + x * numerator / denominator);
}

static inline __attribute__((always_inline)) void activate_v16(v16 *v, stitch_activation activation) {
    switch (activation) {
    case STITCH_ACTIVATION_NONE: break;
    case STITCH_ACTIVATION_SILU: scaled_silu_v16(v, 1.0f); break;
    case STITCH_ACTIVATION_RELU6: *v = __builtin_elementwise_min(__builtin_elementwise_max(*v, (v16){0}), (v16){0} + 6.0f); break;
    case STITCH_ACTIVATION_RELU: *v = __builtin_elementwise_max(*v, (v16){0}); break;
    case STITCH_ACTIVATION_GELU_ERF: gelu_erf_v16(v); break;
    case STITCH_ACTIVATION_GELU_TANH: gelu_tanh_v16(v); break;
    case STITCH_ACTIVATION_QUICK_GELU: scaled_silu_v16(v, 1.702f); break;
    }
}

DISPATCH void stitch_exp(const float *x, float *y, long n) {
    if (y != x) memcpy(y, x, (size_t)n * sizeof(float));   /* y == x: in place */
    BLOCKWISE(y, n, v, fast_exp_v16(&v, &v));
}

DISPATCH void stitch_sigmoid(float *p, long n) { BLOCKWISE(p, n, v, sigmoid_v16(&v)); }

/* Vectors pass by pointer (see fast_exp_v16). */
static inline __attribute__((always_inline)) void swiglu_v16(const v16 *gate, const v16 *up, v16 *out) {
    v16 sigmoid = *gate;
    sigmoid_v16(&sigmoid);
    *out = *gate * sigmoid * *up;
}

DISPATCH void stitch_swiglu(const float *gate, const float *up, float *out, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) swiglu_v16((const v16 *)(gate + i), (const v16 *)(up + i), (v16 *)(out + i));
    if (i < n) {
        v16 g = {0}, u = {0}, result;
        memcpy(&g, gate + i, (size_t)(n - i) * sizeof(float));
        memcpy(&u, up + i, (size_t)(n - i) * sizeof(float));
        swiglu_v16(&g, &u, &result);
        memcpy(out + i, &result, (size_t)(n - i) * sizeof(float));
    }
}

DISPATCH void stitch_bias_activation(float *p, long n, float bias, stitch_activation activation) {
    BLOCKWISE(p, n, v, { v += bias; activate_v16(&v, activation); });
}

/* stitch_finish_rows for one activation, which the caller makes a constant: the loop is then compiled once for it,
   with its constants in registers across all the rows (YOLOX's rows are 16 to 256 values, called one at a time they
   spent as long setting up as computing). */
static inline __attribute__((always_inline)) void finish_rows_as(float *c, long ldc, long rows, long cols, const float *bias,
                                                                 stitch_activation activation) {
    for (long row = 0; row < rows; row++) {
        float *p = c + row * ldc;
        long i = 0;
        if (bias)
            for (; i + 16 <= cols; i += 16) {
                v16 v = *(const v16 *)(p + i) + *(const v16 *)(bias + i);
                activate_v16(&v, activation);
                *(v16 *)(p + i) = v;
            }
        if (i < cols) {
            float *rest = p + i;
            if (bias) for (long j = 0; j < cols - i; j++) rest[j] += bias[i + j];
            BLOCKWISE(rest, cols - i, v, activate_v16(&v, activation));
        }
    }
}

DISPATCH void stitch_finish_rows(float *c, long ldc, long rows, long cols, const float *bias, stitch_activation activation) {
    switch (activation) {
    case STITCH_ACTIVATION_NONE: if (bias) finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_NONE); break;
    case STITCH_ACTIVATION_SILU: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_SILU); break;
    case STITCH_ACTIVATION_RELU6: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_RELU6); break;
    case STITCH_ACTIVATION_RELU: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_RELU); break;
    case STITCH_ACTIVATION_GELU_ERF: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_GELU_ERF); break;
    case STITCH_ACTIVATION_GELU_TANH: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_GELU_TANH); break;
    case STITCH_ACTIVATION_QUICK_GELU: finish_rows_as(c, ldc, rows, cols, bias, STITCH_ACTIVATION_QUICK_GELU); break;
    }
}

void stitch_bias_row_activation(float *p, long n, const float *bias, stitch_activation activation) {
    stitch_finish_rows(p, n, 1, n, bias, activation);
}

/* The sixteen lanes of running sums added in lane order: the same order in every variant, whatever its vector width. */
static inline __attribute__((always_inline)) float sum_lanes(const v16 *sums) {
    float sum = 0;
    for (int lane = 0; lane < 16; lane++) sum += (*sums)[lane];
    return sum;
}

/* The sum of a row: sixteen running sums, then the lanes in order, then the tail (a serial sum waits on each add, and
   is less accurate). */
static inline __attribute__((always_inline)) float row_sum(const float *x, long n, int squares, float shift) {
    v16 sums = (v16){0};
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 v = *(const v16 *)(x + i) - shift;
        sums += squares ? v * v : v;
    }
    float sum = sum_lanes(&sums);
    for (; i < n; i++) sum += squares ? (x[i] - shift) * (x[i] - shift) : x[i] - shift;
    return sum;
}

DISPATCH void stitch_layer_norm(const float *x, float *y, long n, const float *weight, const float *bias, float epsilon) {
    float mean = row_sum(x, n, 0, 0) / (float)n;
    float scale = 1 / sqrtf(row_sum(x, n, 1, mean) / (float)n + epsilon);
    for (long i = 0; i < n; i++) y[i] = (x[i] - mean) * scale * weight[i] + bias[i];
}

DISPATCH void stitch_rms_norm(const float *x, float *y, long n, const float *weight, float epsilon) {
    float inverse = 1 / sqrtf(row_sum(x, n, 1, 0) / (float)n + epsilon);
    for (long i = 0; i < n; i++) y[i] = weight[i] * (x[i] * inverse);
}

DISPATCH void stitch_softmax(float *p, long n) {
    /* The maximum over sixteen lanes (a serial maximum waits on each comparison: 4 times the whole softmax's time). */
    v16 maxima = (v16){0} - __builtin_inff();
    long i = 0;
    for (; i + 16 <= n; i += 16) maxima = __builtin_elementwise_max(maxima, *(const v16 *)(p + i));
    float maximum = __builtin_reduce_max(maxima);
    for (; i < n; i++) maximum = p[i] > maximum ? p[i] : maximum;
    if (maximum == -__builtin_inff()) maximum = 0;   /* a row masked throughout: exp(-inf) = 0 everywhere, sum 0 */
    /* e^(x - maximum), summed as it is stored; the tail padded with -inf, whose exp is 0. */
    v16 sums = (v16){0};
    for (i = 0; i + 16 <= n; i += 16) {
        v16 v = *(const v16 *)(p + i) - maximum;
        fast_exp_v16(&v, &v);
        *(v16 *)(p + i) = v;
        sums += v;
    }
    if (i < n) {
        v16 v = (v16){0} - __builtin_inff();
        memcpy(&v, p + i, (size_t)(n - i) * sizeof(float));
        v -= maximum;
        fast_exp_v16(&v, &v);
        memcpy(p + i, &v, (size_t)(n - i) * sizeof(float));
        sums += v;
    }
    float inverse = 1 / sum_lanes(&sums);
    for (i = 0; i < n; i++) p[i] *= inverse;
}

/* Keys transposed (d rows of the keys padded to 16) within this many floats: 32 KB on the stack. */
enum { ATTENTION_HEAD_ELEMENTS = 8192, ATTENTION_ROWS = 8 };

int stitch_attention_head_fits(long tk, long d) {
    return tk > 0 && d > 0 && d % 16 == 0 && (tk + 15) / 16 * 16 * d <= ATTENTION_HEAD_ELEMENTS;
}

/* A head's rows of keys and values, block after block, into key_rows and value_rows; their count tk. Aborts unless
   stitch_attention_head_fits(tk, d) (callers ask first), before writing past room for ATTENTION_HEAD_ELEMENTS / 16. */
static inline __attribute__((always_inline)) long key_value_rows(const stitch_key_block *blocks, int block_count, long d,
                                                                 const float **key_rows, const float **value_rows) {
    long tk = 0;
    for (int b = 0; b < block_count; b++) tk += blocks[b].count;
    if (!stitch_attention_head_fits(tk, d)) abort();
    for (long b = 0, j = 0; b < block_count; b++)
        for (long row = 0; row < blocks[b].count; row++, j++) {
            key_rows[j] = blocks[b].keys + row * blocks[b].key_stride;
            value_rows[j] = blocks[b].values + row * blocks[b].value_stride;
        }
    return tk;
}

/* ROWS(R) for the queries first..first + R - 1 of 0..tq - 1: `widest` (8 or 6) at a time, then 4, then 1 (the last
   few, and a decoding step's one). */
#define FOR_QUERY_GROUPS(tq, widest, ROWS)                                                                              \
    for (long first = 0, group; first < (tq); first += group) {                                                     \
        group = (tq) - first >= (widest) ? (widest) : (tq) - first >= 4 ? 4 : 1;                                     \
        if (group == 8) ROWS(8);                                                                                    \
        else if (group == 6) ROWS(6);                                                                               \
        else if (group == 4) ROWS(4);                                                                               \
        else ROWS(1);                                                                                               \
    }

/* The most queries stitch_attention_head takes at once: 8 rows of 16 sums fill 8 of the x86-64-v4 variant's 32
   registers. Vectors a half or a quarter that wide (AVX2's 16 registers, NEON's 32) fit 6 rows' sums beside the keys;
   8 spilled there and took twice as long (AMD Zen 3: a head of 50 queries and keys, 64 wide, 28 -> 13 us). */
static long widest_query_group(void) { return runs_x86_64_v4() ? ATTENTION_ROWS : 6; }

/* stitch_softmax of R rows of scores at once, each row's operations and values those of a call, but the rows padded
   with -inf to width (their exps are 0): whole vectors only, and R independent chains of sums where one short row's
   would wait on each add. */
static inline __attribute__((always_inline)) void softmax_rows(const int R, float scores[][ATTENTION_HEAD_ELEMENTS / 16], long tk, long width) {
    float maxima[ATTENTION_ROWS], totals[ATTENTION_ROWS];
    v16 sums[ATTENTION_ROWS];
    /* Lanes at or past tk of the last vector (width - tk < 16) become -inf: all ones in `past`. */
    const v16i lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16i past = lanes >= (v16i){0} + (int32_t)(tk - (width - 16)), minus_infinity = (v16i)((v16){0} - __builtin_inff());
    for (int r = 0; r < R; r++) {
        v16i *last = (v16i *)(scores[r] + width - 16);
        if (tk < width) *last = (*last & ~past) | (minus_infinity & past);
        v16 row_maxima = (v16){0} - __builtin_inff();
        for (long j = 0; j < width; j += 16) row_maxima = __builtin_elementwise_max(row_maxima, *(const v16 *)(scores[r] + j));
        maxima[r] = __builtin_reduce_max(row_maxima);
        if (maxima[r] == -__builtin_inff()) maxima[r] = 0;
    }
    for (int r = 0; r < R; r++) {
        sums[r] = (v16){0};
        for (long j = 0; j < width; j += 16) {
            v16 v = *(const v16 *)(scores[r] + j) - maxima[r];
            fast_exp_v16(&v, &v);
            *(v16 *)(scores[r] + j) = v;
            sums[r] += v;
        }
        totals[r] = 0;
    }
    for (int lane = 0; lane < 16; lane++)   /* sum_lanes, row by row */
        for (int r = 0; r < R; r++) totals[r] += sums[r][lane];
    for (int r = 0; r < R; r++) {
        float inverse = 1 / totals[r];
        for (long j = 0; j < width; j += 16) *(v16 *)(scores[r] + j) *= inverse;
    }
}

/* The masks of stitch_attention_head on its queries first..first + R - 1 (a masked score is -FLT_MAX, so a row masked
   throughout is uniform, as Hugging Face's), then their softmax. */
static inline __attribute__((always_inline)) void mask_and_softmax_rows(const int R, long first, long tk, long width, int causal,
                                                                        long causal_offset, long window, const float *key_mask,
                                                                        float scores[][ATTENTION_HEAD_ELEMENTS / 16]) {
    for (int r = 0; r < R; r++) {
        long last = causal_offset + first + r;
        if (causal)
            for (long j = 0; j < tk; j++)
                if (j > last || (window > 0 && j <= last - window)) scores[r][j] = -__FLT_MAX__;
        /* A loop of its own: vectorised with the test of key_mask inside, it loaded through a null key_mask under a
           mask, which a Zen 4 core resolves slowly. */
        if (key_mask)
            for (long j = 0; j < tk; j++)
                if (key_mask[j] == 0) scores[r][j] = -__FLT_MAX__;
    }
    softmax_rows(R, scores, tk, width);
}

/* Queries first..first + R - 1 of stitch_attention_head, R (a constant at each call) at a time so that as many
   independent sums keep the multiply-adds busy: keys [d][width] transposed, values[j] key j's value row, scores room for
   R rows of width. */
static inline __attribute__((always_inline)) void attention_rows(const int R, long first, long d, float scale, const float *q, long ldq,
                                                                 const float *keys, long width, const float *const *values, long tk, int causal,
                                                                 long causal_offset, long window, const float *key_mask,
                                                                 float scores[][ATTENTION_HEAD_ELEMENTS / 16], float *out, long ldo) {
#pragma clang fp contract(fast)
    for (long j = 0; j < width; j += 16) {
        v16 sums[ATTENTION_ROWS];
        for (int r = 0; r < R; r++) sums[r] = (v16){0};
        for (long p = 0; p < d; p++) {
            v16 key = *(const v16 *)(keys + p * width + j);
            for (int r = 0; r < R; r++) sums[r] = q[(first + r) * ldq + p] * key + sums[r];
        }
        for (int r = 0; r < R; r++) *(v16 *)(scores[r] + j) = sums[r] * scale;
    }
    mask_and_softmax_rows(R, first, tk, width, causal, causal_offset, window, key_mask, scores);
    for (long c = 0; c < d; c += 16) {
        v16 sums[ATTENTION_ROWS];
        for (int r = 0; r < R; r++) sums[r] = (v16){0};
        for (long j = 0; j < tk; j++) {
            v16 value = *(const v16 *)(values[j] + c);
            for (int r = 0; r < R; r++) sums[r] = scores[r][j] * value + sums[r];
        }
        for (int r = 0; r < R; r++) *(v16 *)(out + (first + r) * ldo + c) = sums[r];
    }
}

DISPATCH void stitch_attention_head(long tq, long d, float scale, const float *q, long ldq, const stitch_key_block *blocks, int block_count,
                                    int causal, long causal_offset, long window, const float *key_mask, float *out, long ldo) {
    float keys[ATTENTION_HEAD_ELEMENTS] __attribute__((aligned(64)));
    float scores[ATTENTION_ROWS][ATTENTION_HEAD_ELEMENTS / 16] __attribute__((aligned(64)));
    const float *key_rows[ATTENTION_HEAD_ELEMENTS / 16], *values[ATTENTION_HEAD_ELEMENTS / 16];
    long tk = key_value_rows(blocks, block_count, d, key_rows, values);
    /* keys[p][j] = key j's element p, 16 keys to a vector, zeros past tk. */
    long width = (tk + 15) / 16 * 16;
    memset(keys, 0, sizeof(float) * (size_t)(width * d));
    for (long j = 0; j < tk; j++) {
        /* Element by element: faster than this loop vectorised (scatters) and than 16 x 16 transposes in registers. */
#pragma clang loop vectorize(disable)
        for (long p = 0; p < d; p++) keys[p * width + j] = key_rows[j][p];
    }
#define ROWS(R) attention_rows(R, first, d, scale, q, ldq, keys, width, values, tk, causal, causal_offset, window, key_mask, scores, out, ldo)
    FOR_QUERY_GROUPS(tq, widest_query_group(), ROWS);
#undef ROWS
}

#if defined(__x86_64__)
#include <immintrin.h>
#define BF16_ATTENTION __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,fma")))

/* 16 floats rounded to bfloat16 (to nearest, ties to even), stored as 8 pairs. */
BF16_ATTENTION static inline __attribute__((always_inline)) void store_bf16_pairs(uint32_t *pairs, const float *values) {
    _mm256_storeu_si256((__m256i *)pairs, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(values)));
}

/* attention_rows with products of bfloat16 pairs: keys[p][width] holds the pair of elements 2p, 2p + 1 of each key,
   values[j][d] the pair of values 2j, 2j + 1 at each element, queries and probabilities room for R rows of pairs. */
BF16_ATTENTION static inline __attribute__((always_inline)) void bf16_attention_rows(
    const int R, long first, long d, float scale, const float *q, long ldq, const uint32_t *keys, long width, const uint32_t *values,
    long tk, int causal, long causal_offset, long window, const float *key_mask, float scores[][ATTENTION_HEAD_ELEMENTS / 16],
    uint32_t queries[][ATTENTION_HEAD_ELEMENTS / 32], uint32_t probabilities[][ATTENTION_HEAD_ELEMENTS / 32], float *out, long ldo) {
    for (int r = 0; r < R; r++)
        for (long p = 0; p < d; p += 16) store_bf16_pairs(queries[r] + p / 2, q + (first + r) * ldq + p);
    for (long j = 0; j < width; j += 16) {
        __m512 sums[ATTENTION_ROWS];
        for (int r = 0; r < R; r++) sums[r] = _mm512_setzero_ps();
        for (long p = 0; p < d / 2; p++) {
            __m512bh key = (__m512bh)_mm512_loadu_si512(keys + p * width + j);
            for (int r = 0; r < R; r++) sums[r] = _mm512_dpbf16_ps(sums[r], (__m512bh)_mm512_set1_epi32((int)queries[r][p]), key);
        }
        for (int r = 0; r < R; r++) _mm512_store_ps(scores[r] + j, _mm512_mul_ps(sums[r], _mm512_set1_ps(scale)));
    }
    mask_and_softmax_rows(R, first, tk, width, causal, causal_offset, window, key_mask, scores);
    /* Probabilities past tk are 0, so an odd last pair adds nothing for its missing value. */
    for (int r = 0; r < R; r++)
        for (long j = 0; j < width; j += 16) store_bf16_pairs(probabilities[r] + j / 2, scores[r] + j);
    for (long c = 0; c < d; c += 16) {
        __m512 sums[ATTENTION_ROWS];
        for (int r = 0; r < R; r++) sums[r] = _mm512_setzero_ps();
        for (long j = 0; j < (tk + 1) / 2; j++) {
            __m512bh value = (__m512bh)_mm512_loadu_si512(values + j * d + c);
            for (int r = 0; r < R; r++) sums[r] = _mm512_dpbf16_ps(sums[r], (__m512bh)_mm512_set1_epi32((int)probabilities[r][j]), value);
        }
        for (int r = 0; r < R; r++) _mm512_storeu_ps(out + (first + r) * ldo + c, sums[r]);
    }
}

BF16_ATTENTION static void bf16_attention_head(long tq, long d, float scale, const float *q, long ldq, const stitch_key_block *blocks,
                                               int block_count, int causal, long causal_offset, long window, const float *key_mask,
                                               float *out, long ldo) {
    uint32_t keys[ATTENTION_HEAD_ELEMENTS / 2] __attribute__((aligned(64))), values[ATTENTION_HEAD_ELEMENTS / 2] __attribute__((aligned(64)));
    float scores[ATTENTION_ROWS][ATTENTION_HEAD_ELEMENTS / 16] __attribute__((aligned(64)));
    uint32_t queries[ATTENTION_ROWS][ATTENTION_HEAD_ELEMENTS / 32], probabilities[ATTENTION_ROWS][ATTENTION_HEAD_ELEMENTS / 32];
    const float *key_rows[ATTENTION_HEAD_ELEMENTS / 16], *value_rows[ATTENTION_HEAD_ELEMENTS / 16];
    long tk = key_value_rows(blocks, block_count, d, key_rows, value_rows);
    long width = (tk + 15) / 16 * 16;
    /* keys[p][j]: key j's pair p, zeros past tk; stored pair by pair (as stitch_attention_head's floats, see there). */
    memset(keys, 0, sizeof(uint32_t) * (size_t)(d / 2 * width));
    for (long j = 0; j < tk; j++)
        for (long p = 0; p < d; p += 16) {
            uint32_t pairs[8];
            store_bf16_pairs(pairs, key_rows[j] + p);
            for (int e = 0; e < 8; e++) keys[(p / 2 + e) * width + j] = pairs[e];
        }
    /* values[j][c]: values 2j and 2j + 1 at element c, interleaved in registers (an odd last one paired with zeros). */
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long j = 0; j < (tk + 1) / 2; j++)
        for (long c = 0; c < d; c += 16) {
            __m512 even = _mm512_loadu_ps(value_rows[2 * j] + c), odd = 2 * j + 1 < tk ? _mm512_loadu_ps(value_rows[2 * j + 1] + c) : _mm512_setzero_ps();
            _mm512_storeu_si512(values + j * d + c, _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(odd, even)));
        }
#define ROWS(R) bf16_attention_rows(R, first, d, scale, q, ldq, keys, width, values, tk, causal, causal_offset, window, key_mask, scores, \
                                    queries, probabilities, out, ldo)
    FOR_QUERY_GROUPS(tq, ATTENTION_ROWS, ROWS);
#undef ROWS
}
#endif

void stitch_bf16_attention_head(long tq, long d, float scale, const float *q, long ldq, const stitch_key_block *blocks, int block_count,
                                int causal, long causal_offset, long window, const float *key_mask, float *out, long ldo) {
#if defined(__x86_64__)
    if (stitch_bf16_available() && stitch_bf16_dot_products_fast()) {
        bf16_attention_head(tq, d, scale, q, ldq, blocks, block_count, causal, causal_offset, window, key_mask, out, ldo);
        return;
    }
#endif
    stitch_attention_head(tq, d, scale, q, ldq, blocks, block_count, causal, causal_offset, window, key_mask, out, ldo);
}

DISPATCH long stitch_append_above(const float *offered, long n, float threshold, int32_t first_index, float *values,
                                  int32_t *indices, long kept) {
    /* Without a branch: each value is written after the kept ones and counted only if it is above the threshold. */
    for (long i = 0; i < n; i++) {
        values[kept] = offered[i];
        indices[kept] = first_index + (int32_t)i;
        kept += offered[i] > threshold;
    }
    return kept;
}

typedef uint32_t v16u __attribute__((vector_size(64), aligned(4)));

/* A key ordered as the float values are (-0 and +0 as one). */
static inline uint32_t order_key(float value) {
    float canonical = value + 0.0f;   /* -0 + 0 is +0 */
    uint32_t bits;
    memcpy(&bits, &canonical, sizeof bits);
    return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

DISPATCH float stitch_keep_best(float *values, int32_t *indices, uint32_t *keys, long count, long k) {
    for (long i = 0; i < count; i++) keys[i] = order_key(values[i]);
    /* The k-th largest key: the largest with k keys at or above it, decided a bit at a time from the top. */
    uint32_t kth = 0;
    for (int bit = 31; bit >= 0; bit--) {
        uint32_t candidate = kth | 1u << bit;
        v16i counts = (v16i){0};
        long i = 0;
        for (; i + 16 <= count; i += 16) counts -= (v16i)(*(const v16u *)(keys + i) >= candidate);   /* true is -1 */
        long at_or_above = 0;
        for (int lane = 0; lane < 16; lane++) at_or_above += counts[lane];
        for (; i < count; i++) at_or_above += keys[i] >= candidate;
        if (at_or_above >= k) kth = candidate;
    }
    long above = 0;
    for (long i = 0; i < count; i++) above += keys[i] > kth;
    long ties = k - above, kept = 0;   /* values equal to the k-th kept, the first (lowest indices) first */
    float threshold = 0;
    for (long i = 0; i < count; i++) {
        long tie = keys[i] == kth && ties > 0;
        if (keys[i] == kth) threshold = values[i];
        values[kept] = values[i];
        indices[kept] = indices[i];
        kept += (keys[i] > kth) | tie;
        ties -= tie;
    }
    return threshold;
}

void stitch_valid_columns(long offset, long stride, long size, long w_out, long *first, long *end) {
    long lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    long hi = size - offset <= 0 ? 0 : (size - offset - 1) / stride + 1;
    *first = lo < w_out ? lo : w_out;
    *end = hi < *first ? *first : (hi < w_out ? hi : w_out);
}

/* Output rows [0, h_out) of one depthwise channel from `plane`, its input rows with the zero border in place (rows
   `width` apart, room for the last block's reads). KH, KW and STRIDE are constants where the caller names them, so
   the taps stay in registers and the loops unroll. Every output sums its taps in (i, j) order, a multiply then an add,
   as a scalar loop would, then bias and activation. */
static inline __attribute__((always_inline)) void depthwise_rows(const int KH, const int KW, const int STRIDE, const float *plane,
                                                                 long width, const float *taps, float *output, long h_out,
                                                                 long w_out, float bias, stitch_activation activation) {
    long blocks = (w_out + 15) / 16;
    for (long y = 0; y < h_out; y++) {
        const float *top = plane + y * STRIDE * width;
        for (long block = 0; block < blocks; block++) {
            v16 sum = {0};
            for (int i = 0; i < KH; i++) {
                const float *row = top + i * width + block * 16 * STRIDE;
                for (int j = 0; j < KW; j++) {
                    v16 in;
                    if (STRIDE == 1) {
                        in = *(const v16 *)(row + j);
                    } else if (STRIDE == 2) {
                        v16 even = *(const v16 *)(row + j), odd = *(const v16 *)(row + j + 16);
                        in = __builtin_shufflevector(even, odd, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                    } else {
                        for (int lane = 0; lane < 16; lane++) in[lane] = row[lane * STRIDE + j];
                    }
                    sum = sum + in * taps[i * KW + j];
                }
            }
            sum += bias;
            activate_v16(&sum, activation);
            float *out = output + y * w_out + block * 16;
            if (block * 16 + 16 <= w_out) {
                *(v16 *)out = sum;
            } else {
                float tail[16];
                *(v16 *)tail = sum;
                memcpy(out, tail, sizeof(float) * (size_t)(w_out - block * 16));
            }
        }
    }
}

DISPATCH void stitch_depthwise_channel(const float *input, long h, long w, const float *taps, long kh, long kw, long stride,
                                       long pad_top, long pad_left, float *output, long h_out, long w_out,
                                       float bias, stitch_activation activation) {
    /* The input rows the outputs read, copied once with the zero border in place (copying them per output row cost
       more than the sums on YOLOX's narrow planes). */
    long blocks = (w_out + 15) / 16, width = blocks * 16 * stride + kw + 16, rows = (h_out - 1) * stride + kh;
    float *plane = malloc(sizeof(float) * (size_t)(rows * width));
    if (!plane) abort();
    long copied = w < width - pad_left ? w : width - pad_left;
    for (long r = 0; r < rows; r++) {
        float *row = plane + r * width;
        long sy = r - pad_top;
        if (sy < 0 || sy >= h) {
            memset(row, 0, sizeof(float) * (size_t)width);
            continue;
        }
        memset(row, 0, sizeof(float) * (size_t)pad_left);   /* only the border: zeroing whole rows cost as much as the sums */
        memcpy(row + pad_left, input + sy * w, sizeof(float) * (size_t)copied);
        memset(row + pad_left + copied, 0, sizeof(float) * (size_t)(width - pad_left - copied));
    }
    if (kh == 3 && kw == 3 && stride == 1) depthwise_rows(3, 3, 1, plane, width, taps, output, h_out, w_out, bias, activation);
    else if (kh == 3 && kw == 3 && stride == 2) depthwise_rows(3, 3, 2, plane, width, taps, output, h_out, w_out, bias, activation);
    else if (kh == 5 && kw == 5 && stride == 1) depthwise_rows(5, 5, 1, plane, width, taps, output, h_out, w_out, bias, activation);
    else if (kh == 5 && kw == 5 && stride == 2) depthwise_rows(5, 5, 2, plane, width, taps, output, h_out, w_out, bias, activation);
    else depthwise_rows((int)kh, (int)kw, (int)stride, plane, width, taps, output, h_out, w_out, bias, activation);
    free(plane);
}


/* Row y of stitch_depthwise_nhwc before its activation, channels [block, block + 16) as one vector (or
   fewer, `lanes`, through zero-padded copies), KH x KW constants where specialised. Pixels whose window lies inside
   the input take no bounds tests. */
static inline __attribute__((always_inline)) void depthwise_nhwc_run(const int KH, const int KW, const float *input, long h,
                                                                     long w, long c, const float *taps, long stride, long pad_top,
                                                                     long pad_left, const float *bias, float *output, long w_out,
                                                                     long y, long block, long lanes) {
#pragma clang fp contract(fast)
    v16 b = {0}, tap[KH * KW];   /* a variable-length array where KH and KW are not constants (at most 16 x 16) */
    memcpy(&b, bias + block, sizeof(float) * (size_t)lanes);
    for (int t = 0; t < KH * KW; t++) {
        tap[t] = (v16){0};
        memcpy(&tap[t], taps + t * c + block, sizeof(float) * (size_t)lanes);
    }
    long y0 = y * stride - pad_top;
    /* Columns [first, end) read no padding: on rows that read none either, their windows need no tests. */
    long first = (pad_left + stride - 1) / stride, span = w - KW + pad_left, end = span < 0 ? 0 : span / stride + 1;
    if (y0 >= 0 && y0 + KH <= h && lanes == 16)
        for (long x = first; x < end && x < w_out; x++) {
            const float *window = input + (y0 * w + x * stride - pad_left) * c + block;
            v16 sum = {0};
            for (int i = 0; i < KH; i++)
                for (int j = 0; j < KW; j++) sum += *(const v16 *)(window + (i * w + j) * c) * tap[i * KW + j];
            *(v16 *)(output + (y * w_out + x) * c + block) = sum + b;
        }
    else first = end = 0;
    for (long x = 0; x < w_out; x++) {
        if (x >= first && x < end) continue;   /* done above */
        long x0 = x * stride - pad_left;
        v16 sum = {0};
        for (int i = 0; i < KH; i++) {
            if (y0 + i < 0 || y0 + i >= h) continue;
            for (int j = 0; j < KW; j++) {
                if (x0 + j < 0 || x0 + j >= w) continue;
                const float *pixel = input + ((y0 + i) * w + x0 + j) * c + block;
                v16 p;
                if (lanes == 16) p = *(const v16 *)pixel;
                else {
                    p = (v16){0};
                    memcpy(&p, pixel, sizeof(float) * (size_t)lanes);
                }
                sum += p * tap[i * KW + j];
            }
        }
        sum += b;
        memcpy(output + (y * w_out + x) * c + block, &sum, sizeof(float) * (size_t)lanes);
    }
}

DISPATCH void stitch_depthwise_nhwc(const float *input, long h, long w, long c, const float *taps, long kh, long kw, long stride,
                                    long pad_top, long pad_left, const float *bias, stitch_activation activation,
                                    float *output, long w_out, long y_begin, long y_end) {
    for (long y = y_begin; y < y_end; y++) {
        for (long block = 0; block < c; block += 16) {
            long lanes = c - block < 16 ? c - block : 16;
            if (kh == 3 && kw == 3 && lanes == 16)   /* 16 as a constant: no tail copies compiled in */
                depthwise_nhwc_run(3, 3, input, h, w, c, taps, stride, pad_top, pad_left, bias, output, w_out, y, block, 16);
            else if (kh == 3 && kw == 3)
                depthwise_nhwc_run(3, 3, input, h, w, c, taps, stride, pad_top, pad_left, bias, output, w_out, y, block, lanes);
            else
                depthwise_nhwc_run((int)kh, (int)kw, input, h, w, c, taps, stride, pad_top, pad_left, bias, output, w_out, y, block, lanes);
        }
        /* The activation once the row's sums are stored (in the loop above, its long chain stalled every pixel), over
           the row as one run of values. */
        stitch_finish_rows(output + y * w_out * c, w_out * c, 1, w_out * c, NULL, activation);
    }
}

#define TILE_CHANNELS 4
#define TILE_COLUMNS 32

DISPATCH void stitch_conv_direct(const float *input, long c_in, long in_plane, long in_row, const float *packed, long c_out,
                                 long kh, long kw, const float *bias, stitch_activation activation,
                                 float *output, long out_plane, long w_out, long y_begin, long y_end, long x_begin, long x_end) {
#pragma clang fp contract(fast)
    long taps = c_in * kh * kw;
    float tail[TILE_CHANNELS][TILE_COLUMNS];
    for (long y = y_begin; y < y_end; y++) {
        for (long co0 = 0; co0 < c_out; co0 += TILE_CHANNELS) {
            const float *weights = packed + co0 * taps;   /* [taps][TILE_CHANNELS] of this channel block */
            long channels = c_out - co0 < TILE_CHANNELS ? c_out - co0 : TILE_CHANNELS;
            float b[TILE_CHANNELS] = {0};
            for (long c = 0; c < channels; c++) b[c] = bias[co0 + c];
            for (long x0 = x_begin; x0 < x_end; x0 += TILE_COLUMNS) {
                /* 4 channels x 32 columns in 8 vectors (named, so they stay in registers). */
                v16 lo0 = {0}, hi0 = {0}, lo1 = {0}, hi1 = {0}, lo2 = {0}, hi2 = {0}, lo3 = {0}, hi3 = {0};
                const float *w = weights;
                for (long ci = 0; ci < c_in; ci++) {
                    for (long ki = 0; ki < kh; ki++) {
                        const float *row = input + ci * in_plane + (y + ki) * in_row + x0;
                        for (long kj = 0; kj < kw; kj++, w += TILE_CHANNELS) {
                            v16 lo = *(const v16 *)(row + kj), hi = *(const v16 *)(row + kj + 16);
                            lo0 += lo * w[0]; hi0 += hi * w[0];
                            lo1 += lo * w[1]; hi1 += hi * w[1];
                            lo2 += lo * w[2]; hi2 += hi * w[2];
                            lo3 += lo * w[3]; hi3 += hi * w[3];
                        }
                    }
                }
                v16 acc[TILE_CHANNELS][2] = {{lo0, hi0}, {lo1, hi1}, {lo2, hi2}, {lo3, hi3}};
                long columns = x_end - x0 < TILE_COLUMNS ? x_end - x0 : TILE_COLUMNS;
                float *out = output + co0 * out_plane + y * w_out + x0;
                for (int c = 0; c < TILE_CHANNELS; c++) {
                    acc[c][0] += b[c];
                    acc[c][1] += b[c];
                    activate_v16(&acc[c][0], activation);
                    activate_v16(&acc[c][1], activation);
                }
                if (columns == TILE_COLUMNS && channels == TILE_CHANNELS) {
                    for (int c = 0; c < TILE_CHANNELS; c++) {
                        *(v16 *)(out + c * out_plane) = acc[c][0];
                        *(v16 *)(out + c * out_plane + 16) = acc[c][1];
                    }
                } else {
                    for (int c = 0; c < TILE_CHANNELS; c++) {
                        *(v16 *)tail[c] = acc[c][0];
                        *(v16 *)(tail[c] + 16) = acc[c][1];
                    }
                    for (long c = 0; c < channels; c++)
                        for (long x = 0; x < columns; x++) out[c * out_plane + x] = tail[c][x];
                }
            }
        }
    }
}

/* The most pixels direct_channels_last_row sums at a time. Its sums are an array of this fixed size, not of PIXELS:
   sized by a parameter it is a variable-length array, allocated at run time, which the compiler cannot keep in
   registers, and every sum went to the stack on every tap (YOLOX-Nano's stem, one core of a Zen 4: 3.6 -> 1.5 ms). */
#define DIRECT_MOST_PIXELS 24

/* The direct kernel's sums written channels-last: PIXELS pixels of a row at a time, each pixel's 16 output channels
   one vector, so each tap is one weight vector and a broadcast input value a pixel (the pixels of a row are what the
   NCHW kernel vectorises over, and its output then needed transposing). Each pixel's sum runs over the taps in the
   same order whatever PIXELS is. */
static inline __attribute__((always_inline)) void direct_channels_last_row(const int PIXELS, const float *input, long c_in, long in_plane,
                                                                           long in_row, const float *packed, long c_out, long kh, long kw,
                                                                           const float *bias, stitch_activation activation,
                                                                           float *output, long w_out, long y) {
#pragma clang fp contract(fast)
    long taps = c_in * kh * kw;
    for (long co0 = 0; co0 < c_out; co0 += 16) {
        const float *weights = packed + co0 * taps;   /* [taps][16] of this channel block */
        long channels = c_out - co0 < 16 ? c_out - co0 : 16;
        v16 b = {0};
        memcpy(&b, bias + co0, (size_t)channels * sizeof(float));
        for (long x0 = 0; x0 < w_out; x0 += PIXELS) {
            v16 sums[DIRECT_MOST_PIXELS];
#pragma clang loop unroll(full)
            for (int p = 0; p < PIXELS; p++) sums[p] = (v16){0};
            const float *w = weights;
            for (long ci = 0; ci < c_in; ci++) {
                for (long ki = 0; ki < kh; ki++) {
                    const float *row = input + ci * in_plane + (y + ki) * in_row + x0;
                    for (long kj = 0; kj < kw; kj++, w += 16) {
                        v16 tap = *(const v16 *)w;
#pragma clang loop unroll(full)
                        for (int p = 0; p < PIXELS; p++) sums[p] += row[kj + p] * tap;
                    }
                }
            }
            long pixels = w_out - x0 < PIXELS ? w_out - x0 : PIXELS;
#pragma clang loop unroll(full)
            for (int p = 0; p < PIXELS; p++) {
                if (p >= pixels) break;
                v16 v = sums[p] + b;
                activate_v16(&v, activation);
                float *out = output + (y * w_out + x0 + p) * c_out + co0;
                if (channels == 16) *(v16 *)out = v;
                else memcpy(out, &v, (size_t)channels * sizeof(float));
            }
        }
    }
}

DISPATCH void stitch_conv_direct_channels_last(const float *input, long c_in, long in_plane, long in_row, const float *packed,
                                               long c_out, long kh, long kw, const float *bias, stitch_activation activation,
                                               float *output, long w_out, long y_begin, long y_end) {
    /* 24 pixels' sums fill 24 of AVX-512's 32 registers; where a vector of 16 takes two registers (AVX2) or four (SSE,
       NEON) they spilled to memory on every tap: 6 pixels fit AVX2's 16 (YOLOX-Nano's stem, 12 -> 16 channels on
       208 x 208, one core of an AMD Zen 3: 5.1 -> 1.9 ms). */
    int wide = runs_x86_64_v4();
    for (long y = y_begin; y < y_end; y++)
        if (wide) direct_channels_last_row(DIRECT_MOST_PIXELS, input, c_in, in_plane, in_row, packed, c_out, kh, kw, bias, activation, output, w_out, y);
        else direct_channels_last_row(6, input, c_in, in_plane, in_row, packed, c_out, kh, kw, bias, activation, output, w_out, y);
}

void stitch_keep_freed_memory(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 256 << 20);  /* tensors come from the heap, not from fresh mappings */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);    /* and freed heap stays mapped for the next ones */
#endif
}
