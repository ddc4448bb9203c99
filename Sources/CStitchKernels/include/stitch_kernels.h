#ifndef STITCH_KERNELS_H
#define STITCH_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* Element-wise and convolution inner loops, compiled for AVX-512, AVX2 and baseline
   x86-64 and chosen at load time (the Swift package itself builds for baseline x86-64).
   Floating-point contraction is off except in the direct convolution and the exponential (fused where the variant
   has FMA: a third faster, as accurate), so the variants' element-wise results agree bit for bit except through
   the exponential, within its 1 ulp. */

/* Activations, fused into convolutions and products or a pass of their own: SiLU (YOLOX), ReLU6 (EfficientNet-Lite),
   and the transformers' MLP activations: ReLU, GELU's exact form (erf within 4.3e-7), its tanh form, quick GELU
   x sigmoid(1.702 x). */
typedef enum {
    STITCH_ACTIVATION_NONE = 0, STITCH_ACTIVATION_SILU = 1, STITCH_ACTIVATION_RELU6 = 2, STITCH_ACTIVATION_RELU = 3,
    STITCH_ACTIVATION_GELU_ERF = 4, STITCH_ACTIVATION_GELU_TANH = 5, STITCH_ACTIVATION_QUICK_GELU = 6
} stitch_activation;

/* The variant of the kernels below this CPU runs ("x86-64-v4", "x86-64-v3" or "baseline": the level the
   load-time resolver of their target clones picks; "aarch64" or "portable" elsewhere, compiled once). */
const char *stitch_kernel_variant(void);

/* target[i] = source[i] for count IEEE half-precision values stored little-endian (exact: every half is a float);
   F16C's conversion where the CPU has it. */
void stitch_widen_half(const uint16_t *source, long count, float *target);

/* Whether stitch_sgemm and stitch_sgemv_t run here: x86-64 with AVX-512 (F, VL, BW, DQ). */
int stitch_sgemm_available(void);

/* Whether stitch_sgemm_packed runs here: with AVX-512, or with AVX2 and FMA. */
int stitch_sgemm_packed_available(void);

/* For tests: run stitch_sgemm_packed's AVX2 kernels where the CPU also has AVX-512's (both give the same bits), or
   (0) AVX-512's again. No effect where there is no choice. */
void stitch_sgemm_prefer_avx2(int prefer);

/* C[m, n] (row stride ldc) = A[m, k] (lda) · B[n, k]ᵀ when transpose_b, else · B[k, n] (ldb), row-major, in single
   precision with fused multiply-adds; only where stitch_sgemm_available(). */
void stitch_sgemm(int transpose_b, long m, long n, long k, const float *a, long lda, const float *b, long ldb, float *c, long ldc);

/* The float count of op(W) [k, n] packed for stitch_sgemm_packed, and the packing (once, at load): W is [n, k] (row
   stride ldw) when transpose, as nn.Linear stores it, else [k, n]. Panels of 32 columns of op(W), k-major, in the
   layout of the kernels stitch_sgemm_packed runs here (gemm.c), so pack and multiply under the same
   stitch_sgemm_prefer_avx2; only where stitch_sgemm_packed_available(). */
long stitch_sgemm_packed_count(long n, long k);
void stitch_sgemm_pack(int transpose, long n, long k, const float *w, long ldw, float *packed);

/* Memory for packed weights (product_memory.c): 64-byte aligned, from chunks the kernel is asked to back with
   transparent huge pages. NULL when no memory is left; free with stitch_weight_free. */
void *stitch_weight_allocate(size_t bytes);
void stitch_weight_free(void *memory);

/* The calling thread's packing buffer `slot` (< STITCH_SCRATCH_SLOTS), at least `bytes`, 64-byte aligned: kept for the
   thread's next product, its contents not (a larger request replaces it). NULL when no memory is left. */
enum { STITCH_SCRATCH_SLOTS = 2 };
void *stitch_thread_scratch(int slot, size_t bytes);

/* Columns [column_begin, column_end) of A[m, k] · op(W) into C (row stride ldc; c points at column column_begin), op(W)
   packed by stitch_sgemm_pack into 64-byte-aligned memory (column_begin a multiple of 32): the same bits as
   stitch_sgemm; only where stitch_sgemm_packed_available(). Then, as stitch_bias_row_activation, bias (its entries for these
   columns; NULL: none) and the activation, each block of rows while it is in cache. */
void stitch_sgemm_packed(long m, long k, const float *a, long lda, const float *packed, long column_begin, long column_end,
                         float *c, long ldc, const float *bias, stitch_activation activation);

/* Weights stored in bfloat16 for FP32 products (the opt-in bf16-weights precision): op(W) laid out as stitch_sgemm_pack
   lays it out, each value rounded to the nearest bfloat16 (stitch_sgemm_packed_count values of 16 bits, half the
   memory), and the product of A with them: each weight widened exactly as it is read, so the same bits as
   stitch_sgemm_packed on the rounded weights. Only where stitch_sgemm_packed_available(). */
void stitch_sgemm_pack_bf16(int transpose, long n, long k, const float *w, long ldw, uint16_t *packed);
void stitch_sgemm_packed_bf16(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                              float *c, long ldc, const float *bias, stitch_activation activation);

/* Weights stored as 8-bit integers for FP32 products (the opt-in int8-weights precision): each column j of op(W) as
   integers q within ±127 and a scale (scales[j], n of them: its largest magnitude / 127; q the nearest integer to
   w / scale, ties to even), laid out as stitch_sgemm_pack lays out floats (stitch_sgemm_packed_count bytes, a quarter of
   the memory); and the product of A with them: each integer widened exactly as it is read, each column's sums times its
   scale, so the same bits as stitch_sgemm_packed on the integers, then the scales. Only where
   stitch_sgemm_packed_available(). */
void stitch_sgemm_pack_int8(int transpose, long n, long k, const float *w, long ldw, int8_t *packed, float *scales);
void stitch_sgemm_packed_int8(long m, long k, const float *a, long lda, const int8_t *packed, const float *scales, long column_begin,
                              long column_end, float *c, long ldc, const float *bias, stitch_activation activation);

/* y[n] = W[n, k] (row stride ldw) · x[k]; only where stitch_sgemm_available(). */
void stitch_sgemv_t(long n, long k, const float *w, long ldw, const float *x, float *y);

/* bfloat16 products (bf16.c), an opt-in reduced precision: the nearest bfloat16 to value (ties to even, as torch rounds). */
uint16_t stitch_bf16_from_float(float value);
/* rounded[i * k + p] = A[i][p] (row stride lda) rounded to the nearest bfloat16, kept as a float, for m rows of k: the
   activations of a bf16 product where the CPU lacks AVX512-BF16, for stitch_sgemm_packed_bf16's FP32 products. */
void stitch_bf16_round_rows(long m, long k, const float *a, long lda, float *rounded);

/* Whether stitch_bf16_gemm runs here: x86-64 with AVX-512 and AVX512-BF16. */
int stitch_bf16_available(void);
/* Whether stitch_bf16_gemm multiplies products of more than 4 rows on AMX tiles here: the CPU has AMX-BF16 and Linux
   granted this process the tile registers (asked once, on the first call). */
int stitch_amx_available(void);
/* Whether VDPBF16PS runs at least at FMA's rate here (AMD Zen 4), so that bfloat16 dot products pay on any shape. */
int stitch_bf16_dot_products_fast(void);

/* The uint16 count of op(W) [k, n] packed for stitch_bf16_gemm, and the packing (once, at load): W is [n, k] (row stride
   ldw) when transpose, as nn.Linear stores it, else [k, n]. Panels of 32 columns of op(W), pairs of k interleaved. */
long stitch_bf16_packed_count(long n, long k);
void stitch_bf16_pack(int transpose, long n, long k, const float *w, long ldw, uint16_t *packed);

/* Columns [column_begin, column_end) of bf16(A[m, k]) · op(W) into C (row stride ldc; c points at column column_begin),
   op(W) packed by stitch_bf16_pack (column_begin a multiple of 32): products of bfloat16 pairs summed in single
   precision; only where stitch_bf16_available(). Bias and activation as for stitch_sgemm_packed. */
void stitch_bf16_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                      float *c, long ldc, const float *bias, stitch_activation activation);

/* y[i] = e^x[i], within about 1 ulp of expf (0 and +inf outside its range). */
void stitch_exp(const float *x, float *y, long n);

/* In place: the logistic sigmoid. */
void stitch_sigmoid(float *p, long n);

/* Llama's SwiGLU MLP: out[i] = gate[i] sigmoid(gate[i]) up[i] (sigmoid as stitch_sigmoid). out may be gate. */
void stitch_swiglu(const float *gate, const float *up, float *out, long n);

/* One row of n: layer normalisation y = (x - mean) / sqrt(variance + epsilon) * weight + bias; RMS normalisation
   y = weight * (x / sqrt(mean of squares + epsilon)); softmax in place (a row of -inf gives 0/0, as torch's NaN). Sums
   over sixteen lanes, the same order in every variant. y may be x. */
void stitch_layer_norm(const float *x, float *y, long n, const float *weight, const float *bias, float epsilon);
void stitch_rms_norm(const float *x, float *y, long n, const float *weight, float epsilon);
void stitch_softmax(float *p, long n);

/* One attention head over a few keys, where a blocked product's packing would cost more than its arithmetic:
   out[i] = softmax(scale q[i] · keysᵀ, masked) · values for tq queries [tq, d] (row stride ldq), into out (ldo). The keys
   and values are the blocks' rows one after another (a cached prefix, then a sequence's own), tk in all. Query i sees
   key j when j < causal_offset + i + 1 if causal, j > causal_offset + i - window too if window > 0, and key_mask[j] != 0
   (NULL: every key); a masked score is -FLT_MAX, as Hugging Face's, so a row masked throughout becomes uniform. Each
   score and output sums as stitch_sgemm's tile does (fused multiply-adds over d, or over the keys, from zero; the scale
   after), so one block gives the bits of the two blocked products and softmax between. Only for heads
   stitch_attention_head_fits. */
typedef struct {
    const float *keys, *values;
    long count, key_stride, value_stride;
} stitch_key_block;
int stitch_attention_head_fits(long tk, long d);
void stitch_attention_head(long tq, long d, float scale, const float *q, long ldq, const stitch_key_block *blocks, int block_count,
                           int causal, long causal_offset, long window, const float *key_mask, float *out, long ldo);
/* stitch_attention_head with bfloat16 products (BF16 precision's attention, as torch's autocast runs it): queries, keys,
   probabilities and values rounded to bfloat16, their products summed, the softmax taken, in single precision; where
   stitch_bf16_dot_products_fast(), else stitch_attention_head itself. */
void stitch_bf16_attention_head(long tq, long d, float scale, const float *q, long ldq, const stitch_key_block *blocks, int block_count,
                                int causal, long causal_offset, long window, const float *key_mask, float *out, long ldo);

/* In place: p[i] = activation(p[i] + bias); p[i] = activation(p[i] + bias[i]) (bias may be NULL: none). */
void stitch_bias_activation(float *p, long n, float bias, stitch_activation activation);
void stitch_bias_row_activation(float *p, long n, const float *bias, stitch_activation activation);

/* stitch_bias_row_activation on each of `rows` rows of `cols` values at c (row stride ldc), nothing with neither bias
   nor activation: a product's epilogue, run on each block of rows while it is in cache. */
void stitch_finish_rows(float *c, long ldc, long rows, long cols, const float *bias, stitch_activation activation);

/* A running top-k (ASIF's k best similarities of a query, kept in anchor order). stitch_append_above appends the n
   offered values above threshold (NaN never) to values/indices, which hold `kept` and have room for kept + n, their
   indices first_index + i; returns the new count. stitch_keep_best keeps the k best of `count` (0 < k <= count) in
   place and in their order, equal values the earliest first, with keys as scratch for count; returns the k-th best. */
long stitch_append_above(const float *offered, long n, float threshold, int32_t first_index, float *values,
                         int32_t *indices, long kept);
float stitch_keep_best(float *values, int32_t *indices, uint32_t *keys, long count, long k);

/* The output columns [first, end) of w_out whose input column x * stride + offset lies in [0, size). */
void stitch_valid_columns(long offset, long stride, long size, long w_out, long *first, long *end);

/* One channel of a depthwise convolution: output[h_out, w_out] = sum over taps (i, j) in order of
   taps[i, j] * input[y*stride + i - pad_top, x*stride + j - pad_left] (zero outside), then
   bias and activation. Kernels are at most 16 columns wide. */
void stitch_depthwise_channel(const float *input, long h, long w, const float *taps, long kh, long kw, long stride,
                              long pad_top, long pad_left, float *output, long h_out, long w_out,
                              float bias, stitch_activation activation);

/* Output rows [y_begin, y_end) of a depthwise convolution in channels-last layout, input [h, w, c] and output
   [h_out, w_out, c]: output[y, x, ch] = activation(bias[ch] + sum over taps (i, j) in order of taps[i, j, ch] *
   input[y*stride + i - pad_top, x*stride + j - pad_left, ch]) (zero outside), taps [kh, kw, c]. Sixteen channels
   a vector, so small planes run as fast as large ones. */
void stitch_depthwise_nhwc(const float *input, long h, long w, long c, const float *taps, long kh, long kw, long stride,
                           long pad_top, long pad_left, const float *bias, stitch_activation activation,
                           float *output, long w_out, long y_begin, long y_end);

/* A stride-1 convolution computed directly, without im2col, over output rows [y_begin, y_end) and
   columns [x_begin, x_end): output[co, y, x] = activation(bias[co] + sum over (ci, ki, kj) of
   weight[co, ci, ki, kj] * input[ci, y + ki, x + kj]), with input planes of in_plane floats and rows of
   in_row floats (already zero-padded).
   `packed` holds the weights as [ceil(c_out / 4)][c_in * kh * kw][4] (zeros past c_out). Reads run up
   to 31 + kw floats past the last output column, so the input needs that much slack. Multiply-adds
   are fused where the CPU can, so results may differ from other paths in the last bits; so does the
   activation, applied in registers. */
void stitch_conv_direct(const float *input, long c_in, long in_plane, long in_row, const float *packed, long c_out,
                        long kh, long kw, const float *bias, stitch_activation activation,
                        float *output, long out_plane, long w_out, long y_begin, long y_end, long x_begin, long x_end);

/* stitch_conv_direct's sums, in its order, with the output channels-last, output[(y * w_out + x) * c_out + co] for
   rows [y_begin, y_end) and all w_out columns. `packed` holds the weights as [ceil(c_out / 16)][c_in * kh * kw][16]
   (zeros past c_out). Reads run up to 23 + kw floats past a row's last output column. */
void stitch_conv_direct_channels_last(const float *input, long c_in, long in_plane, long in_row, const float *packed,
                                      long c_out, long kh, long kw, const float *bias, stitch_activation activation,
                                      float *output, long w_out, long y_begin, long y_end);

/* glibc: serve large allocations from the heap and keep freed memory mapped (no-op elsewhere). */
void stitch_keep_freed_memory(void);

/* Calls function(context, i) for i in 0..<count on the calling thread and up to threads - 1 pool
   workers; returns when all are done. Runs inline when the pool is busy (nested or concurrent
   callers), for one iteration, or for counts of 2^20 and more. */
typedef void (*stitch_task)(void *context, long index);
void stitch_parallel_for(long count, long threads, stitch_task function, void *context);

/* The threads a region asking for `threads` should run on now, the `threads` to pass stitch_parallel_for: fewer while
   other processes take some of this process's CPUs (measured over 100 ms windows from /proc/stat, as OpenMP's
   dynamic adjustment does). */
long stitch_parallel_threads(long threads);

/* CPUs this process may run on (its affinity mask; the online CPUs where that cannot be read). */
long stitch_affinity_cpus(void);

/* The dynamic adjustment of parallel regions' threads to the machine's load (pool.c), exposed for its tests:
   the busy ticks (all but idle and iowait) of the listed CPUs in /proc/stat's text, and the CPUs of `cpus` that
   others leave when the CPUs were busy `busy_seconds` over `wall_seconds`, `own_seconds` of it this process's, and the
   last window left `left_before` (0: no window yet). */
unsigned long long stitch_stat_busy_ticks(const char *text, const int *cpus, long count);
long stitch_cpus_left(long cpus, long left_before, double busy_seconds, double own_seconds, double wall_seconds);

#endif
