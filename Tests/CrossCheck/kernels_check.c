/* Checks each of Stitch's C kernels (Sources/CStitchKernels) against a plain double-precision computation of what it
   promises, so that a build for another architecture (Scripts/cross-check, under qemu-user) is known to compute what
   the x86-64 build does. Prints one line per kernel with its largest error; exits 1 on the first failure. */
#include "stitch_kernels.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void report(const char *name, double worst, double tolerance) {
    int ok = worst <= tolerance;
    printf("%-24s max error %.3g (tolerance %.3g) %s\n", name, worst, tolerance, ok ? "ok" : "FAILED");
    if (!ok) failures++;
}

/* Deterministic values in [-1, 1). */
static float noise(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(*state >> 40) / (float)(1 << 23) - 1.0f;
}

static double half_to_double(uint16_t h) {
    int exponent = (h >> 10) & 31, mantissa = h & 1023;
    double sign = (h & 0x8000) ? -1 : 1;
    if (exponent == 0) return sign * ldexp(mantissa, -24);
    if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
    return sign * ldexp(1024 + mantissa, exponent - 25);
}

/* A bfloat16's value, with exponent 255 read as the next power of two (2^128 for 0x7f80): the upper neighbour of the
   largest finite one, for deciding when rounding overflows. */
static double bf16_unbounded(uint32_t h) {
    int exponent = (h >> 7) & 255, mantissa = h & 127;
    double sign = (h & 0x8000) ? -1 : 1;
    return exponent == 0 ? sign * ldexp(mantissa, -133) : sign * ldexp(128 + mantissa, exponent - 134);
}

static double activate(double x, stitch_activation activation) {
    switch (activation) {
    case STITCH_ACTIVATION_NONE: return x;
    case STITCH_ACTIVATION_SILU: return x / (1 + exp(-x));
    case STITCH_ACTIVATION_RELU6: return x < 0 ? 0 : x > 6 ? 6 : x;
    case STITCH_ACTIVATION_RELU: return x < 0 ? 0 : x;
    case STITCH_ACTIVATION_GELU_ERF: return 0.5 * x * (1 + erf(x / sqrt(2)));
    case STITCH_ACTIVATION_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case STITCH_ACTIVATION_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    }
    return NAN;
}

static const char *activation_names[] = {"none", "silu", "relu6", "relu", "gelu_erf", "gelu_tanh", "quick_gelu"};

static void add_index(void *context, long index) { __atomic_fetch_add((long *)context, index + 1, __ATOMIC_RELAXED); }

int main(void) {
    unsigned long long state = 1;
    enum { N = 4099 };   /* not a multiple of any vector width */
    static float x[N], y[N], p[N];
    printf("kernel variant: %s\n", stitch_kernel_variant());

    /* every finite half, exactly */
    static uint16_t halves[65536];
    static float widened[65536];
    for (int i = 0; i < 65536; i++) halves[i] = (uint16_t)i;
    stitch_widen_half(halves, 65536, widened);
    double worst = 0;
    for (int i = 0; i < 65536; i++) {
        double want = half_to_double((uint16_t)i);
        if (isnan(want)) { if (!isnan(widened[i])) worst = INFINITY; continue; }
        if (widened[i] != want) worst = INFINITY;
    }
    report("widen_half", worst, 0);

    for (int i = 0; i < N; i++) x[i] = 100 * noise(&state);
    stitch_exp(x, y, N);
    worst = 0;
    for (int i = 0; i < N; i++) {
        double want = exp((double)x[i]);
        if (x[i] < -87.33654f) { if (y[i] != 0) worst = INFINITY; continue; }
        if (x[i] > 88.72283f) { if (!isinf(y[i])) worst = INFINITY; continue; }
        double e = fabs(y[i] - want) / want;
        if (e > worst) worst = e;
    }
    report("exp (relative)", worst, 3e-7);

    /* odd entries past the range where e^-x is clamped (the activations' exponential) */
    for (int i = 0; i < N; i++) p[i] = x[i] = (i % 2 ? 100 : 12) * noise(&state);
    stitch_sigmoid(p, N);
    worst = 0;
    for (int i = 0; i < N; i++) {
        double e = fabs(p[i] - 1 / (1 + exp(-(double)x[i])));
        if (e > worst) worst = e;
    }
    report("sigmoid", worst, 2e-6);

    for (int i = 0; i < N; i++) { x[i] = 12 * noise(&state); y[i] = 3 * noise(&state); }
    stitch_swiglu(x, y, p, N);
    worst = 0;
    for (int i = 0; i < N; i++) {
        double want = (double)x[i] / (1 + exp(-(double)x[i])) * y[i], e = fabs(p[i] - want) / (1 + fabs(want));
        if (e > worst) worst = e;
    }
    report("swiglu", worst, 2e-6);

    /* each activation after a bias, one for all values (convolutions' channels) and one per column (products' rows),
       relative to 1 + |value|, odd entries past the clamps of the activations' exponential */
    static float bias_row[N];
    for (int a = 0; a <= STITCH_ACTIVATION_QUICK_GELU; a++) {
        char name[48];
        for (int i = 0; i < N; i++) p[i] = x[i] = (i % 2 ? 100 : 12) * noise(&state);
        stitch_bias_activation(p, N, 0.25f, (stitch_activation)a);
        worst = 0;
        for (int i = 0; i < N; i++) {
            double want = activate((double)x[i] + 0.25, (stitch_activation)a), e = fabs(p[i] - want) / (1 + fabs(want));
            if (e > worst) worst = e;
        }
        snprintf(name, sizeof name, "bias + %s", activation_names[a]);
        report(name, worst, 2e-6);
        for (int i = 0; i < N; i++) { p[i] = x[i] = (i % 2 ? 100 : 12) * noise(&state); bias_row[i] = noise(&state); }
        stitch_bias_row_activation(p, N, bias_row, (stitch_activation)a);
        worst = 0;
        for (int i = 0; i < N; i++) {
            double want = activate((double)(x[i] + bias_row[i]), (stitch_activation)a), e = fabs(p[i] - want) / (1 + fabs(want));
            if (e > worst) worst = e;
        }
        snprintf(name, sizeof name, "bias row + %s", activation_names[a]);
        report(name, worst, 2e-6);
    }

    /* layer and RMS normalisation, softmax: rows of 1000 (62 blocks of 16 and a tail) around an offset of 3 */
    {
        enum { R = 1000 };
        static float row[R], out[R], weight[R], bias[R];
        double mean = 0, variance = 0, squares = 0;
        for (int i = 0; i < R; i++) { row[i] = 3 + noise(&state); weight[i] = noise(&state); bias[i] = noise(&state); mean += row[i]; }
        mean /= R;
        for (int i = 0; i < R; i++) { variance += (row[i] - mean) * (row[i] - mean); squares += (double)row[i] * row[i]; }
        variance /= R;
        squares /= R;
        stitch_layer_norm(row, out, R, weight, bias, 1e-5f);
        worst = 0;
        for (int i = 0; i < R; i++) {
            double e = fabs(out[i] - ((row[i] - mean) / sqrt(variance + 1e-5) * weight[i] + bias[i]));
            if (e > worst) worst = e;
        }
        report("layer_norm", worst, 1e-5);
        stitch_rms_norm(row, out, R, weight, 1e-6f);
        worst = 0;
        for (int i = 0; i < R; i++) {
            double e = fabs(out[i] - weight[i] * row[i] / sqrt(squares + 1e-6));
            if (e > worst) worst = e;
        }
        report("rms_norm", worst, 1e-6);
        double total = 0, high = -INFINITY;
        for (int i = 0; i < R; i++) { row[i] = 10 * noise(&state); high = row[i] > high ? row[i] : high; }
        for (int i = 0; i < R; i++) total += exp(row[i] - high);
        memcpy(out, row, sizeof row);
        stitch_softmax(out, R);
        worst = 0;
        for (int i = 0; i < R; i++) {
            double want = exp(row[i] - high) / total, e = fabs(out[i] - want) / want;
            if (e > worst) worst = e;
        }
        report("softmax (relative)", worst, 2e-6);
    }

    /* one attention head: 13 queries (groups of 8, 4 and 1 with AVX-512, else of 6, 6 and 1) after a cached prefix,
       against 3 cached and 13 own keys of 32, causal with a window of 9, key 5 masked */
    {
        enum { TQ = 13, PREFIX = 3, TK = PREFIX + TQ, D = 32 };
        static float q[TQ * D], k[TK * D], v[TK * D], mask[TK], out[TQ * D];
        for (int i = 0; i < TQ * D; i++) q[i] = noise(&state);
        for (int i = 0; i < TK * D; i++) k[i] = noise(&state), v[i] = noise(&state);
        for (int j = 0; j < TK; j++) mask[j] = j != 5;
        stitch_key_block blocks[2] = {{k, v, PREFIX, D, D}, {k + PREFIX * D, v + PREFIX * D, TQ, D, D}};
        const float scale = 1 / sqrtf(D);
        /* BF16's kernel: the FP32 one where bfloat16 dot products are not fast (here, unless an AMD x86-64), else
           operands rounded to bfloat16 (8 bits: within 2e-2 of the sums in double). */
        int rounded = stitch_bf16_available() && stitch_bf16_dot_products_fast();
        for (int bf16 = 0; bf16 < 2; bf16++) {
            worst = stitch_attention_head_fits(TK, D) ? 0 : INFINITY;
            (bf16 ? stitch_bf16_attention_head : stitch_attention_head)(TQ, D, scale, q, D, blocks, 2, 1, PREFIX, 9, mask, out, D);
            for (int i = 0; i < TQ; i++) {
                double scores[TK], high = -INFINITY, total = 0;
                for (int j = 0; j < TK; j++) {
                    int visible = j <= PREFIX + i && j > PREFIX + i - 9 && mask[j] != 0;
                    double dot = 0;
                    for (int p = 0; p < D; p++) dot += (double)q[i * D + p] * k[j * D + p];
                    scores[j] = visible ? dot * scale : -INFINITY;
                    if (scores[j] > high) high = scores[j];
                }
                for (int j = 0; j < TK; j++) total += scores[j] = exp(scores[j] - high);
                for (int e = 0; e < D; e++) {
                    double want = 0;
                    for (int j = 0; j < TK; j++) want += scores[j] / total * v[j * D + e];
                    if (fabs(out[i * D + e] - want) > worst) worst = fabs(out[i * D + e] - want);
                }
            }
            report(bf16 ? (rounded ? "bf16_attention_head (bfloat16)" : "bf16_attention_head (fp32 here)") : "attention_head", worst,
                   bf16 && rounded ? 2e-2 : 2e-6);
        }
    }

    /* depthwise 3x3 and 5x5, strides 1 and 2, padded */
    worst = 0;
    for (int variant = 0; variant < 4; variant++) {
        long h = 13, w = 21, k = variant < 2 ? 3 : 5, stride = variant % 2 ? 2 : 1, pad = k / 2;
        long h_out = (h + 2 * pad - k) / stride + 1, w_out = (w + 2 * pad - k) / stride + 1;
        float input[13 * 21], taps[25], output[13 * 21];
        for (int i = 0; i < h * w; i++) input[i] = noise(&state);
        for (int i = 0; i < k * k; i++) taps[i] = noise(&state);
        stitch_depthwise_channel(input, h, w, taps, k, k, stride, pad, pad, output, h_out, w_out, 0.5f, STITCH_ACTIVATION_SILU);
        for (long yy = 0; yy < h_out; yy++) for (long xx = 0; xx < w_out; xx++) {
            double sum = 0.5;
            for (long i = 0; i < k; i++) for (long j = 0; j < k; j++) {
                long iy = yy * stride + i - pad, ix = xx * stride + j - pad;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w) sum += (double)taps[i * k + j] * input[iy * w + ix];
            }
            double e = fabs(output[yy * w_out + xx] - activate(sum, STITCH_ACTIVATION_SILU));
            if (e > worst) worst = e;
        }
    }
    report("depthwise_channel", worst, 1e-5);

    /* channels-last depthwise: 16 channels (one vector) and 20 (one and a partial), 3x3 and 5x5, strides 1 and 2,
       padded and not */
    worst = 0;
    for (int variant = 0; variant < 16; variant++) {
        long c = variant & 1 ? 20 : 16, k = variant & 2 ? 5 : 3, stride = variant & 4 ? 2 : 1, pad = variant & 8 ? k / 2 : 0;
        long h = 13, w = 21, h_out = (h + 2 * pad - k) / stride + 1, w_out = (w + 2 * pad - k) / stride + 1;
        static float input[13 * 21 * 20], taps[25 * 20], bias[20], output[13 * 21 * 20];
        for (int i = 0; i < h * w * c; i++) input[i] = noise(&state);
        for (int i = 0; i < k * k * c; i++) taps[i] = noise(&state);
        for (int i = 0; i < c; i++) bias[i] = noise(&state);
        stitch_depthwise_nhwc(input, h, w, c, taps, k, k, stride, pad, pad, bias, STITCH_ACTIVATION_SILU, output, w_out, 0, h_out);
        for (long yy = 0; yy < h_out; yy++) for (long xx = 0; xx < w_out; xx++) for (long ch = 0; ch < c; ch++) {
            double sum = bias[ch];
            for (long i = 0; i < k; i++) for (long j = 0; j < k; j++) {
                long iy = yy * stride + i - pad, ix = xx * stride + j - pad;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w) sum += (double)taps[(i * k + j) * c + ch] * input[(iy * w + ix) * c + ch];
            }
            double e = fabs(output[(yy * w_out + xx) * c + ch] - activate(sum, STITCH_ACTIVATION_SILU));
            if (e > worst) worst = e;
        }
    }
    report("depthwise_nhwc", worst, 1e-5);

    /* direct 3x3 convolution, 5 input and 6 output channels, over a pre-padded input with slack */
    {
        enum { CI = 5, CO = 6, K = 3, H = 9, W = 40, HO = H - K + 1, WO = W - K + 1 };
        long in_row = W, in_plane = H * W + 64;
        float *input = calloc(CI * in_plane + 64, sizeof(float));
        float weight[CO][CI][K][K], bias[CO], output[CO * HO * WO];
        float *packed = calloc(((CO + 3) / 4) * CI * K * K * 4, sizeof(float));
        for (int c = 0; c < CI; c++) for (int i = 0; i < H * W; i++) input[c * in_plane + i] = noise(&state);
        for (int o = 0; o < CO; o++) {
            bias[o] = noise(&state);
            for (int c = 0; c < CI; c++) for (int i = 0; i < K; i++) for (int j = 0; j < K; j++) weight[o][c][i][j] = noise(&state);
        }
        for (int o = 0; o < CO; o++) for (int c = 0; c < CI; c++) for (int i = 0; i < K; i++) for (int j = 0; j < K; j++)
            packed[((o / 4) * CI * K * K + (c * K + i) * K + j) * 4 + o % 4] = weight[o][c][i][j];
        stitch_conv_direct(input, CI, in_plane, in_row, packed, CO, K, K, bias, STITCH_ACTIVATION_RELU6, output, HO * WO, WO, 0, HO, 0, WO);
        worst = 0;
        for (int o = 0; o < CO; o++) for (int yy = 0; yy < HO; yy++) for (int xx = 0; xx < WO; xx++) {
            double sum = bias[o];
            for (int c = 0; c < CI; c++) for (int i = 0; i < K; i++) for (int j = 0; j < K; j++)
                sum += (double)weight[o][c][i][j] * input[c * in_plane + (yy + i) * in_row + xx + j];
            double e = fabs(output[o * HO * WO + yy * WO + xx] - activate(sum, STITCH_ACTIVATION_RELU6));
            if (e > worst) worst = e;
        }
        report("conv_direct", worst, 1e-5);
        /* The channels-last variant: the same sums, so the same bits, at each output's transposed place. */
        float *sixteens = calloc(((CO + 15) / 16) * CI * K * K * 16, sizeof(float)), last[HO * WO * CO];
        for (int o = 0; o < CO; o++) for (int t = 0; t < CI * K * K; t++) sixteens[((o / 16) * CI * K * K + t) * 16 + o % 16] = packed[((o / 4) * CI * K * K + t) * 4 + o % 4];
        stitch_conv_direct_channels_last(input, CI, in_plane, in_row, sixteens, CO, K, K, bias, STITCH_ACTIVATION_RELU6, last, WO, 0, HO);
        worst = 0;
        for (int o = 0; o < CO; o++) for (int i = 0; i < HO * WO; i++) {
            double e = fabs(last[i * CO + o] - output[o * HO * WO + i]);
            if (e > worst) worst = e;
        }
        report("conv_direct_channels_last", worst, 0);
        free(sixteens);
        free(input);
        free(packed);
    }

    long total = 0;
    stitch_parallel_for(1000, 4, add_index, &total);
    report("parallel_for", total == 1000 * 1001 / 2 ? 0 : INFINITY, 0);
    int cpus[] = {0, 1};
    unsigned long long ticks = stitch_stat_busy_ticks("cpu  9 9 9 9 9 9 9 9\ncpu0 1 2 3 100 100 4 5 6 0 0\ncpu1 1 1 1 1 1 1 1 1\n", cpus, 2);
    report("stat_busy_ticks", ticks == 21 + 6 ? 0 : INFINITY, 0);
    report("cpus_left", stitch_cpus_left(2, 0, 2.0, 1.0, 1.0) == 1 && stitch_cpus_left(2, 0, 1.0, 1.0, 1.0) == 2 &&
                        stitch_cpus_left(2, 1, 1.45, 1.0, 1.0) == 1 ? 0 : INFINITY, 0);
    /* bfloat16 rounding: the nearer of the two neighbours, ties to the even one, over 2^16 bit patterns spread over all
       floats (every sign, exponent and a spread of low halves, exact ties among them). */
    worst = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t bits = i << 16 | ((i * 2654435761u) >> 16 & 0xffff);
        if (i % 4 == 1) bits = (bits & 0xffff0000u) | 0x8000u;   /* a tie */
        float f;
        memcpy(&f, &bits, sizeof f);
        uint16_t got = stitch_bf16_from_float(f);
        if (isnan(f)) { if (((got >> 7) & 255) != 255 || !(got & 127)) worst = INFINITY; continue; }
        uint32_t below = bits >> 16;
        if (((below >> 7) & 255) == 255) { if (got != below) worst = INFINITY; continue; }   /* infinities stay */
        double low = bf16_unbounded(below), high = bf16_unbounded(below + 1), value = f;
        double to_low = fabs(value - low), to_high = fabs(high - value);
        uint32_t want = to_low < to_high ? below : to_high < to_low ? below + 1 : (below & 1 ? below + 1 : below);
        if (got != want) worst = INFINITY;
    }
    report("bf16_from_float", worst, 0);

    /* packing for the bfloat16 product: panels of 32 columns of op(W), pairs of k interleaved, zeros past n and k */
    {
        enum { n = 35, k = 5 };
        static float w[n * k];
        static uint16_t packed[2 * 3 * 32 * 2];
        for (int i = 0; i < n * k; i++) w[i] = (float)(i + 1);
        worst = stitch_bf16_packed_count(n, k) == 2 * 3 * 32 * 2 ? 0 : INFINITY;
        stitch_bf16_pack(1, n, k, w, k, packed);
        for (int column = 0; column < 64; column++)
            for (int p = 0; p < 6; p++) {
                float want = column < n && p < k ? w[column * k + p] : 0;
                uint16_t got = packed[(column / 32) * 3 * 64 + (p / 2) * 64 + (column % 32) * 2 + p % 2];
                if (got != stitch_bf16_from_float(want)) worst = INFINITY;
            }
        report("bf16_pack", worst, 0);
    }
    /* the running top-k: 3000 values on 13 levels (ties everywhere, -0 beside +0, a NaN), k = 200, against counting
       how many rank before each value (larger, or equal at a lower index) */
    {
        enum { C = 3000, K = 200 };
        static float offered[C], values[2 * K];
        static int32_t indices[2 * K];
        static uint32_t keys[2 * K];
        for (int i = 0; i < C; i++) offered[i] = (float)((int)((noise(&state) + 1) * 6.5f) - 6);
        offered[17] = -0.0f;
        offered[18] = 0.0f;
        offered[19] = NAN;
        long kept = 0;
        float threshold = -INFINITY;
        for (long start = 0, n; start < C; start += n) {
            n = C - start < 2 * K - kept ? C - start : 2 * K - kept;
            kept = stitch_append_above(offered + start, n, threshold, (int32_t)start, values, indices, kept);
            if (kept == 2 * K) { threshold = stitch_keep_best(values, indices, keys, kept, K); kept = K; }
        }
        if (kept > K) threshold = stitch_keep_best(values, indices, keys, kept, K);
        worst = 0;
        long next = 0;   /* the kept indices, in order, are exactly those with fewer than K ranking before them */
        for (int i = 0; i < C; i++) {
            if (isnan(offered[i])) continue;
            long before = 0;
            for (int j = 0; j < C; j++) before += !isnan(offered[j]) && (offered[j] > offered[i] || (offered[j] == offered[i] && j < i));
            if (before < K && (next >= K || indices[next++] != i)) worst = INFINITY;
            if (before == K - 1 && threshold != offered[i]) worst = INFINITY;
        }
        report("append_above, keep_best", next == K ? worst : INFINITY, 0);
    }
#if !defined(__x86_64__)
    report("bf16 gemm not offered", stitch_bf16_available() ? INFINITY : 0, 0);
    report("sgemm not offered", stitch_sgemm_available() ? INFINITY : 0, 0);
    report("packed sgemm not offered", stitch_sgemm_packed_available() ? INFINITY : 0, 0);
#endif
    printf(failures ? "%d kernel(s) FAILED\n" : "all kernels ok\n", failures);
    return failures ? 1 : 0;
}
