#include "stitch_kernels.h"
#include "gemm_tile.h"
#include <stdlib.h>
#include <string.h>

/* Products with weights in bfloat16 (an opt-in reduced precision): activations rounded to bfloat16 as they are
   packed, weights converted and packed once, at load, products of bfloat16 pairs summed in single precision. Three
   ways to sum, by what the CPU does fastest:
   - AVX512-BF16's VDPBF16PS: 32 multiply-adds an instruction, twice FMA's rate on AMD Zen 4; on Intel's cores it
     issues at a quarter of FMA's rate (measured on Sapphire/Emerald Rapids: 84 against 172 GFLOP/s a core), so there
     it serves only products of a few rows, which wait on memory, where half the bytes is what counts;
   - AMX tiles (amx.c) where the CPU has them and Linux grants them, for products of more than 4 rows;
   - otherwise the operands widened back to floats (exact) and gemm.c's FMA tile, which reads the weights at half the
     bytes and computes at FP32's rate.
   The dot-product and widened ways are blocked as gemm.c is. */

uint16_t stitch_bf16_from_float(float value) { return stitch_bf16_rounded(value); }

void stitch_bf16_round_rows(long m, long k, const float *a, long lda, float *rounded) {
    for (long i = 0; i < m; i++) {
        for (long p = 0; p < k; p++) {
            uint32_t bits = (uint32_t)stitch_bf16_rounded(a[i * lda + p]) << 16;
            memcpy(rounded + i * k + p, &bits, sizeof bits);
        }
    }
}

enum { PANEL = STITCH_TILE_COLUMNS };

long stitch_bf16_packed_count(long n, long k) { return (n + PANEL - 1) / PANEL * ((k + 1) / 2) * PANEL * 2; }

void stitch_bf16_pack(int transpose, long n, long k, const float *w, long ldw, uint16_t *packed) {
    long pairs = (k + 1) / 2;
    for (long panel = 0; panel < n; panel += PANEL) {
        for (long q = 0; q < pairs; q++) {
            for (long j = 0; j < PANEL; j++) {
                for (long e = 0; e < 2; e++) {
                    long column = panel + j, p = 2 * q + e;
                    float value = column < n && p < k ? (transpose ? w[column * ldw + p] : w[p * ldw + column]) : 0;
                    *packed++ = stitch_bf16_from_float(value);
                }
            }
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

/* KC_PAIRS: the pairs of k a widened B panel holds (32 KB of floats, in L1 beside the A tile). DOT_KC_PAIRS: the pairs
   of k a dot-product tile sums before it stores (a 64 KB bfloat16 panel, streamed from L2 with a prefetch, 16 steps
   ahead as gemm.c's): fewer passes over C (measured on a Zen 4 core, 800 x 768 x 3072: 128 pairs 185-197, 512 pairs
   207-214 GFLOP/s). */
enum { MR = STITCH_TILE_ROWS, KC_PAIRS = 128, DOT_KC_PAIRS = 512, MC = 96 };

#define BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,fma")))

int stitch_bf16_available(void) {
    __builtin_cpu_init();
    return stitch_sgemm_available() && __builtin_cpu_supports("avx512bf16");
}

/* Ap[tile][q][i] = the bfloat16 pair (A[tile * MR + i][2q], A[tile * MR + i][2q + 1]) for mc rows and k columns of A,
   zeros past them. Whole tiles turn 32 columns of their rows at a time in registers (16 pairs of each row, transposed):
   storing each row's pairs MR apart instead made CLIP's text products 2.5% slower (one Zen 4 core: 256 against 249 ms). */
BF16 static void pack_a(const float *a, long lda, long mc, long k, uint32_t *ap) {
    long pairs = (k + 1) / 2;
    for (long tile = 0; tile < mc; tile += MR) {
        long start = 0;
        if (mc - tile >= MR) {
            for (; start + 32 <= k; start += 32) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    const float *row = a + (tile + i) * lda + start;
                    r[i] = i < MR ? (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 16), _mm512_loadu_ps(row)) : _mm512_setzero_ps();
                }
                transpose16(r);
                for (int q = 0; q < 16; q++) _mm512_mask_storeu_ps((float *)(ap + (start / 2 + q) * MR), (1 << MR) - 1, r[q]);
            }
        }
        for (long i = 0; i < MR; i++) {
            uint32_t *target = ap + i;
            if (tile + i >= mc) {
                for (long q = 0; q < pairs; q++) target[q * MR] = 0;
                continue;
            }
            const float *row = a + (tile + i) * lda;
            long p = start;
            for (; p + 16 <= k; p += 16) {
                uint32_t converted[8];
                _mm256_storeu_si256((__m256i *)converted, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + p)));
                for (int e = 0; e < 8; e++) target[(p / 2 + e) * MR] = converted[e];
            }
            for (; p < k; p += 2) {
                uint32_t low = stitch_bf16_from_float(row[p]), high = p + 1 < k ? stitch_bf16_from_float(row[p + 1]) : 0;
                target[p / 2 * MR] = low | high << 16;
            }
        }
        ap += MR * pairs;
    }
}

/* The R x 32 tile at c (rows x cols of it inside C) = (or +=, when accumulate) an A tile · a B panel over `pairs` pairs
   of k. R is a constant at each call (12, 4 or 1), so the loops unroll and a one-row product (a decoding step) does
   not pay for twelve. */
BF16 static inline __attribute__((always_inline)) void tile_product(const int R, long pairs, const uint32_t *ap, const uint16_t *bp,
                                                                    float *c, long ldc, long rows, long cols, int accumulate) {
    __m512 low[MR], high[MR];
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) low[i] = high[i] = _mm512_setzero_ps();
    for (long q = 0; q < pairs; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 32);
        _mm_prefetch((const char *)(bp + 16 * 2 * PANEL), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 16 * 2 * PANEL + 32), _MM_HINT_T0);
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            __m512bh pair = (__m512bh)_mm512_set1_epi32((int)ap[i]);
            low[i] = _mm512_dpbf16_ps(low[i], pair, b0);
            high[i] = _mm512_dpbf16_ps(high[i], pair, b1);
        }
        ap += MR;
        bp += 2 * PANEL;
    }
    /* The 32 columns of a panel are interleaved in pairs of k: column j of the panel sits at element j of b0 (j < 16)
       or b1, since each 32-bit lane holds one column's pair. The rows are stored by a loop over R (constant), so the
       sums stay in registers (indexed by a loop over `rows`, they were kept on the stack through the whole product:
       83 against 190 GFLOP/s on a Zen 4 core). */
    __mmask16 first = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
    __mmask16 second = (__mmask16)(cols >= 32 ? 0xffff : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) {
        if (i >= rows) break;
        float *row = c + i * ldc;
        __m512 l = low[i], h = high[i];
        if (accumulate) {
            l = _mm512_add_ps(l, _mm512_maskz_loadu_ps(first, row));
            h = _mm512_add_ps(h, _mm512_maskz_loadu_ps(second, row + 16));
        }
        _mm512_mask_storeu_ps(row, first, l);
        _mm512_mask_storeu_ps(row + 16, second, h);
    }
}

/* Ap[tile][p][i] = A[tile * MR + i][p] rounded to bfloat16 (kept as a float) for mc rows and `depth` (even) columns of A
   (k of them read), zeros past them: gemm.c's A panels. */
BF16 static void pack_a_rounded(const float *a, long lda, long mc, long k, long depth, float *ap) {
    for (long tile = 0; tile < mc; tile += MR) {
        for (long i = 0; i < MR; i++) {
            float *target = ap + i;
            long p = 0;
            if (tile + i < mc) {
                const float *row = a + (tile + i) * lda;
                for (; p + 16 <= k; p += 16) {
                    float rounded[16];
                    __m512i halves = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + p)));
                    _mm512_storeu_si512(rounded, _mm512_slli_epi32(halves, 16));
                    for (int e = 0; e < 16; e++) target[(p + e) * MR] = rounded[e];
                }
                for (; p < k; p++) {
                    uint32_t bits = (uint32_t)stitch_bf16_from_float(row[p]) << 16;
                    memcpy(target + p * MR, &bits, sizeof bits);
                }
            }
            for (; p < depth; p++) target[p * MR] = 0;
        }
        ap += MR * depth;
    }
}

/* bp[p][j] = the float of the packed panel's column j at k = p, for 2 * pairs values of k: gemm.c's B panel. Each
   32-bit lane holds a column's pair, k even in its low half, so a shift and a mask widen them. */
BF16 static void widen_panel(const uint16_t *panel, long pairs, float *bp) {
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (long q = 0; q < pairs; q++) {
        for (int half = 0; half < 2; half++) {
            __m512i lanes = _mm512_loadu_si512(panel + q * 2 * PANEL + half * PANEL);
            _mm512_store_si512(bp + 2 * q * PANEL + half * 16, _mm512_slli_epi32(lanes, 16));
            _mm512_store_si512(bp + (2 * q + 1) * PANEL + half * 16, _mm512_and_si512(lanes, high));
        }
    }
}

int stitch_bf16_dot_products_fast(void) {
    static int amd = -1;
    if (amd < 0) {
        __builtin_cpu_init();
        amd = __builtin_cpu_is("amd");
    }
    return amd;
}

/* The way a product of m rows takes (see the top of this file): a few rows wait on memory, so dot products read the
   bfloat16 weights directly; more go to AMX tiles where granted, else to dot products where they are fast. */
typedef enum { DOT_PRODUCTS, AMX_TILES, WIDENED } product_way;
static product_way way_for(long m) {
    if (m <= 4) return DOT_PRODUCTS;
    if (stitch_amx_available()) return AMX_TILES;
    return stitch_bf16_dot_products_fast() ? DOT_PRODUCTS : WIDENED;
}

BF16 static void widened_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin,
                              long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    long pairs = (k + 1) / 2, rows_block = m < MC ? m : MC;
    size_t a_bytes = sizeof(float) * (size_t)((rows_block + MR - 1) / MR * MR * 2 * pairs);
    float *ap = stitch_thread_scratch(0, a_bytes), *bp = stitch_thread_scratch(1, sizeof(float) * 2 * KC_PAIRS * PANEL);
    for (long ic = 0; ic < m; ic += MC) {
        long mc = m - ic < MC ? m - ic : MC;
        pack_a_rounded(a + ic * lda, lda, mc, k, 2 * pairs, ap);
        for (long qc = 0; qc < pairs; qc += KC_PAIRS) {
            long block = pairs - qc < KC_PAIRS ? pairs - qc : KC_PAIRS;
            for (long column = column_begin; column < column_end; column += PANEL) {
                widen_panel(packed + column / PANEL * pairs * 2 * PANEL + qc * 2 * PANEL, block, bp);
                long cols = column_end - column < PANEL ? column_end - column : PANEL;
                for (long tile = 0; tile < mc; tile += MR)
                    stitch_sgemm_tile(2 * block, ap + tile * 2 * pairs + 2 * qc * MR, bp, c + (ic + tile) * ldc + (column - column_begin), ldc,
                                      mc - tile < MR ? mc - tile : MR, cols, qc > 0);
            }
        }
        stitch_finish_rows(c + ic * ldc, ldc, mc, column_end - column_begin, bias, activation);
    }
}

BF16 void stitch_bf16_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                           float *c, long ldc, const float *bias, stitch_activation activation) {
    long pairs = (k + 1) / 2;
    if (m <= 0 || column_end <= column_begin) return;
    if (k <= 0) {
        for (long i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)(column_end - column_begin) * sizeof(float));
        stitch_finish_rows(c, ldc, m, column_end - column_begin, bias, activation);
        return;
    }
    product_way way = way_for(m);
    if (way == AMX_TILES) {
        stitch_amx_bf16_gemm(m, k, a, lda, packed, column_begin, column_end, c, ldc, bias, activation);
        return;
    }
    if (way == WIDENED) {
        widened_gemm(m, k, a, lda, packed, column_begin, column_end, c, ldc, bias, activation);
        return;
    }
    long rows_block = m < MC ? m : MC;
    size_t bytes = sizeof(uint32_t) * (size_t)((rows_block + MR - 1) / MR * MR * pairs);
    uint32_t *ap = stitch_thread_scratch(0, bytes);
    for (long ic = 0; ic < m; ic += MC) {
        long mc = m - ic < MC ? m - ic : MC;
        pack_a(a + ic * lda, lda, mc, k, ap);
        for (long qc = 0; qc < pairs; qc += DOT_KC_PAIRS) {
            long block = pairs - qc < DOT_KC_PAIRS ? pairs - qc : DOT_KC_PAIRS;
            for (long column = column_begin; column < column_end; column += PANEL) {
                const uint16_t *panel = packed + column / PANEL * pairs * 2 * PANEL + qc * 2 * PANEL;
                long cols = column_end - column < PANEL ? column_end - column : PANEL;
                for (long tile = 0; tile < mc; tile += MR) {
                    long rows = mc - tile < MR ? mc - tile : MR;
                    const uint32_t *at = ap + tile * pairs + qc * MR;
                    float *ct = c + (ic + tile) * ldc + (column - column_begin);
                    if (rows > 4) tile_product(MR, block, at, panel, ct, ldc, rows, cols, qc > 0);
                    else if (rows > 1) tile_product(4, block, at, panel, ct, ldc, rows, cols, qc > 0);
                    else tile_product(1, block, at, panel, ct, ldc, rows, cols, qc > 0);
                }
            }
        }
        stitch_finish_rows(c + ic * ldc, ldc, mc, column_end - column_begin, bias, activation);
    }
}

#else

int stitch_bf16_available(void) { return 0; }

int stitch_bf16_dot_products_fast(void) { return 0; }

void stitch_bf16_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                      float *c, long ldc, const float *bias, stitch_activation activation) {
    (void)m, (void)k, (void)a, (void)lda, (void)packed, (void)column_begin, (void)column_end, (void)c, (void)ldc, (void)bias,
        (void)activation;
    abort();   /* never offered: stitch_bf16_available() is 0 */
}

#endif
