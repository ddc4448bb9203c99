#ifndef STITCH_KERNELS_H
#define STITCH_KERNELS_H

/* Element-wise and convolution inner loops, compiled for AVX-512, AVX2 and baseline
   x86-64 and chosen at load time (the Swift package itself builds for baseline x86-64).
   Floating-point contraction is off, so every variant computes bit-identical results. */

typedef enum { STITCH_ACTIVATION_NONE = 0, STITCH_ACTIVATION_SILU = 1, STITCH_ACTIVATION_RELU6 = 2 } stitch_activation;

/* y[i] = e^x[i], within about 1 ulp of expf (0 and +inf outside its range). */
void stitch_exp(const float *x, float *y, long n);

/* In place: GELU tanh form, quick GELU x*sigmoid(1.702x), logistic sigmoid. */
void stitch_gelu_tanh(float *p, long n);
void stitch_quick_gelu(float *p, long n);
void stitch_sigmoid(float *p, long n);

/* In place: p[i] = activation(p[i] + bias). */
void stitch_bias_activation(float *p, long n, float bias, stitch_activation activation);

/* One channel of a depthwise convolution: output[h_out, w_out] = sum over taps (i, j) in order of
   taps[i, j] * input[y*stride + i - pad_top, x*stride + j - pad_left] (zero outside), then
   bias and activation. Kernels are at most 16 columns wide. */
void stitch_depthwise_channel(const float *input, long h, long w, const float *taps, long kh, long kw, long stride,
                              long pad_top, long pad_left, float *output, long h_out, long w_out,
                              float bias, stitch_activation activation);

#endif
