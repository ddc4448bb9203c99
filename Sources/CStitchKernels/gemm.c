#include "stitch_kernels.h"
#include "gemm_tile.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* C = A·B or A·Bᵀ, blocked and packed as BLIS does: B in panels of NR columns of C over KC of k, A in panels of MR rows,
   a register tile of MR x NR accumulated by fused multiply-adds in 24 of AVX-512's 32 vector registers. Products with
   weights packed at load also run on AVX2, the tile as four 6 x 16 blocks in 12 of its 16 registers: each element's
   sum runs over k in the same order, so the same bits. Packed weights may also be stored narrower (bfloat16, or 8-bit
   integers with a scale per column) and widened as they are read, for decoding, which waits on reading them. Where the
   CPU lacks them (and off x86-64) they are not offered and the caller uses OpenBLAS. */

enum { MR = STITCH_TILE_ROWS, NR = STITCH_TILE_COLUMNS, KC = 256, MC = 96, NC = 512 };

long stitch_sgemm_packed_count(long n, long k) { return (n + NR - 1) / NR * NR * k; }

#if defined(__x86_64__)
#include <immintrin.h>

/* Weights packed at load: Bp[panel][chunk][group][p][j] = op(W)[chunk * KC + p][panel * NR + group * width + j] for
   panels of NR columns, chunks of KC of k (the last shorter) and groups of `width` columns (NR or a divisor), columns
   past n zero. A tile reads a group's `width` values per step of k from one contiguous run: the whole panel's 32 for
   AVX-512's 12 x 32 tile, 16 for each of AVX2's 6 x 16 blocks (which in 32-wide rows read half of every 128 bytes:
   5-10% slower on an AMD Zen 3). A panel's chunks follow each other, so one row streams its panel from start to end.
   This writes the chunk of k from `chunk` of the panel from column `panel` (NR x its depth values). */
static void pack_chunk(int transpose, long n, long k, const float *w, long ldw, long width, long panel, long chunk, float *packed) {
    for (long group = 0; group < NR; group += width) {
        long first = panel + group, present = n - first < 0 ? 0 : n - first < width ? n - first : width;
        for (long p = chunk; p < k && p < chunk + KC; p++, packed += width) {
            /* Row p of op(W) is contiguous in [k, n] (Conv1D's layout): a copy, not a loop with a test a value
               (1.1 -> 4.5 GB/s on an 896 x 4864 weight, AMD Zen 3). */
            if (transpose)
                for (long j = 0; j < present; j++) packed[j] = w[(first + j) * ldw + p];
            else
                memcpy(packed, w + p * ldw + first, (size_t)present * sizeof(float));
            memset(packed + present, 0, (size_t)(width - present) * sizeof(float));
        }
    }
}

/* Where the chunk of k from pc of the panel holding column starts in the packed weights, in values (whatever the
   groups' width or the values' type). */
static inline long chunk_offset(long k, long column, long pc) { return column / NR * NR * k + pc * NR; }

#define AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))

static int has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq");
}

static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Bp[panel][p][j] = op(B)[p][panel * NR + j] for kc rows and nc columns of op(B), columns past nc zero: B is [n, k]
   (transposed: its rows are op(B)'s columns, turned 16 x 16 blocks at a time) or [k, n]. */
AVX512 static void avx512_pack_b(int transpose_b, const float *b, long ldb, long nc, long kc, float *bp) {
    for (long panel = 0; panel < nc; panel += NR) {
        long width = nc - panel < NR ? nc - panel : NR;
        if (transpose_b) {
            long start = 0;
            if (width == NR) {
                for (; start + 16 <= kc; start += 16) {
                    for (int half = 0; half < NR; half += 16) {
                        __m512 r[16];
                        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(b + (panel + half + i) * ldb + start);
                        transpose16(r);
                        for (int q = 0; q < 16; q++) _mm512_store_ps(bp + (start + q) * NR + half, r[q]);
                    }
                }
            }
            for (long j = 0; j < width; j++) {
                const float *row = b + (panel + j) * ldb;
                for (long p = start; p < kc; p++) bp[p * NR + j] = row[p];
            }
            for (long j = width; j < NR; j++)
                for (long p = 0; p < kc; p++) bp[p * NR + j] = 0;
        } else if (width == NR) {
            for (long p = 0; p < kc; p++) {
                _mm512_store_ps(bp + p * NR, _mm512_loadu_ps(b + p * ldb + panel));
                _mm512_store_ps(bp + p * NR + 16, _mm512_loadu_ps(b + p * ldb + panel + 16));
            }
        } else {
            for (long p = 0; p < kc; p++) {
                memcpy(bp + p * NR, b + p * ldb + panel, (size_t)width * sizeof(float));
                memset(bp + p * NR + width, 0, (size_t)(NR - width) * sizeof(float));
            }
        }
        bp += NR * kc;
    }
}

/* Ap[panel][p][i] = A[(panel * MR + i) * lda + p] for mc rows of A and kc columns, rows past mc zero: full panels 16
   columns at a time through a transpose in registers (left to itself the compiler scatters, which is slow). */
AVX512 static void avx512_pack_a(const float *a, long lda, long mc, long kc, float *ap) {
    for (long panel = 0; panel < mc; panel += MR) {
        long height = mc - panel < MR ? mc - panel : MR, start = 0;
        if (height == MR) {
            for (; start + 16 <= kc; start += 16) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) r[i] = i < MR ? _mm512_loadu_ps(a + (panel + i) * lda + start) : _mm512_setzero_ps();
                transpose16(r);
                for (int q = 0; q < 16; q++) _mm512_mask_storeu_ps(ap + (start + q) * MR, (1 << MR) - 1, r[q]);
            }
        } else {
            memset(ap, 0, sizeof(float) * MR * (size_t)kc);
        }
        for (long i = 0; i < height; i++) {
            const float *row = a + (panel + i) * lda;
#pragma clang loop vectorize(disable)
            for (long p = start; p < kc; p++) ap[p * MR + i] = row[p];
        }
        ap += MR * kc;
    }
}

/* The R x NR tile at c (rows x cols of it inside C) = (or +=, when accumulate) A-panel · Bp-panel over kc: A packed (Ap,
   MR values per step of k) or, IN_PLACE, R rows of A itself, lda apart (the same products and sums: the same bits); HALF,
   only the panel's first 16 columns (cols <= 16: a 16-channel convolution, the last of 80 classes). R, IN_PLACE and HALF
   are constants at each call (R: MR, 4 or 1), so the loops unroll and a product of one row (a decoding step) does not
   compute twelve. */
AVX512 static inline __attribute__((always_inline)) void tile_reading_a(const int R, const int IN_PLACE, const int HALF, long kc,
                                                                        const float *ap, long lda, const float *bp, float *c,
                                                                        long ldc, long rows, long cols, int accumulate) {
    __m512 low[MR], high[MR];
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) low[i] = high[i] = _mm512_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
        /* B 16 steps ahead: a layer's weights come from memory, not cache, and the first tile of each panel waits on
           them (measured: 50 rows x 768 x 3072 from memory 85 -> 110 GFLOP/s, 800 rows 133 -> 142). */
        _mm_prefetch((const char *)(bp + 16 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 16 * NR + 16), _MM_HINT_T0);
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            __m512 a = _mm512_set1_ps(IN_PLACE ? ap[i * lda] : ap[i]);
            low[i] = _mm512_fmadd_ps(a, b0, low[i]);
            if (!HALF) high[i] = _mm512_fmadd_ps(a, b1, high[i]);
        }
        ap += IN_PLACE ? 1 : MR;
        bp += NR;
    }
    if (HALF && rows == R && cols == 16) {
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            float *row = c + i * ldc;
            if (accumulate) low[i] = _mm512_add_ps(low[i], _mm512_loadu_ps(row));
            _mm512_storeu_ps(row, low[i]);
        }
        return;
    }
    if (rows == R && cols == NR) {
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            float *row = c + i * ldc;
            if (accumulate) {
                low[i] = _mm512_add_ps(low[i], _mm512_loadu_ps(row));
                high[i] = _mm512_add_ps(high[i], _mm512_loadu_ps(row + 16));
            }
            _mm512_storeu_ps(row, low[i]);
            _mm512_storeu_ps(row + 16, high[i]);
        }
        return;
    }
    float tile[MR * NR] __attribute__((aligned(64)));
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) {
        _mm512_store_ps(tile + i * NR, low[i]);
        _mm512_store_ps(tile + i * NR + 16, high[i]);
    }
    for (long i = 0; i < rows; i++)
        for (long j = 0; j < cols; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

AVX512 void stitch_sgemm_tile(long kc, const float *ap, const float *bp, float *c, long ldc, long rows, long cols, int accumulate) {
    tile_reading_a(MR, 0, 0, kc, ap, 0, bp, c, ldc, rows, cols, accumulate);
}

/* The tile for `rows` rows and `cols` columns: A read in place where lda > 0 (whole 12-row tiles only), else packed
   (ap); the tile of the last rows of a block computes no more rows than it has, to the next of 12, 4 or 1 (the product
   of a 16-channel convolution is 12 + 4 rows, not 24), and a panel of at most 16 columns only those. */
AVX512 static void avx512_tile_of_rows(long kc, const float *ap, long lda, const float *bp, float *c, long ldc, long rows, long cols,
                                int accumulate) {
#define TILE(R, IN_PLACE, HALF) tile_reading_a(R, IN_PLACE, HALF, kc, ap, lda, bp, c, ldc, rows, cols, accumulate)
    int half = cols <= 16;
    if (lda > 0) half ? TILE(MR, 1, 1) : TILE(MR, 1, 0);
    else if (rows > 4) half ? TILE(MR, 0, 1) : TILE(MR, 0, 0);
    else if (rows > 1) half ? TILE(4, 0, 1) : TILE(4, 0, 0);
    else half ? TILE(1, 0, 1) : TILE(1, 0, 0);
#undef TILE
}

/* y[j] = W[j, :] · x for rows [n, k] of W (row stride ldw): four rows at a time, sixteen columns per step, so that a
   decoding step streams the weights at the memory's speed. */
AVX512 void stitch_sgemv_t(long n, long k, const float *w, long ldw, const float *x, float *y) {
    long j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *w0 = w + j * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        long p = 0;
        for (; p + 16 <= k; p += 16) {
            __m512 v = _mm512_loadu_ps(x + p);
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + p), v, s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + p), v, s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + p), v, s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + p), v, s3);
        }
        if (p < k) {
            __mmask16 tail = (__mmask16)((1u << (k - p)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(tail, x + p);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + p), v, s0);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w1 + p), v, s1);
            s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w2 + p), v, s2);
            s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w3 + p), v, s3);
        }
        y[j] = _mm512_reduce_add_ps(s0);
        y[j + 1] = _mm512_reduce_add_ps(s1);
        y[j + 2] = _mm512_reduce_add_ps(s2);
        y[j + 3] = _mm512_reduce_add_ps(s3);
    }
    for (; j < n; j++) {
        const float *row = w + j * ldw;
        __m512 sum = _mm512_setzero_ps();
        long p = 0;
        for (; p + 16 <= k; p += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(row + p), _mm512_loadu_ps(x + p), sum);
        if (p < k) {
            __mmask16 tail = (__mmask16)((1u << (k - p)) - 1);
            sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, row + p), _mm512_maskz_loadu_ps(tail, x + p), sum);
        }
        y[j] = _mm512_reduce_add_ps(sum);
    }
}

#define AVX2 __attribute__((target("avx2,fma")))

/* r[q] becomes column q of the 8 x 8 block whose rows were r[0..7]: pairs, then quads within 128-bit lanes, then lanes
   across registers. */
AVX2 static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[g + c] (c < 4) holds rows g..g+3 at columns c and c + 4 (one per 128-bit lane). */
    for (int g = 0; g < 8; g += 4) {
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[c + 4] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

/* Ap as avx512_pack_a lays it out: the first 8 rows of a full panel 8 columns at a time through a transpose. */
AVX2 static void avx2_pack_a(const float *a, long lda, long mc, long kc, float *ap) {
    for (long panel = 0; panel < mc; panel += MR) {
        long height = mc - panel < MR ? mc - panel : MR, start = 0;
        if (height < MR) memset(ap, 0, sizeof(float) * MR * (size_t)kc);
        else
            for (; start + 8 <= kc; start += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(a + (panel + i) * lda + start);
                transpose8(r);
                for (int q = 0; q < 8; q++) _mm256_storeu_ps(ap + (start + q) * MR, r[q]);
            }
        for (long i = 0; i < height; i++) {
            const float *row = a + (panel + i) * lda;
#pragma clang loop vectorize(disable)
            for (long p = i < 8 ? start : 0; p < kc; p++) ap[p * MR + i] = row[p];
        }
        ap += MR * kc;
    }
}

/* The R x 16 block (R <= 6) at c (rows x cols of it inside C) = (or +=, when accumulate) R rows of A · a 16-column group
   of a B panel over kc: A packed (MR values per step of k) or, IN_PLACE, R rows of A itself, lda apart.
   12 accumulators, 2 of B and a broadcast of A: 15 of the 16 registers. */
AVX2 static inline __attribute__((always_inline)) void avx2_block(const int R, const int IN_PLACE, long kc, const float *ap, long lda,
                                                                 const float *bp, float *c, long ldc, long rows, long cols, int accumulate) {
    __m256 low[6], high[6];
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) low[i] = high[i] = _mm256_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
        _mm_prefetch((const char *)(bp + 16 * 16), _MM_HINT_T0);
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            __m256 a = _mm256_broadcast_ss(IN_PLACE ? ap + i * lda : ap + i);
            low[i] = _mm256_fmadd_ps(a, b0, low[i]);
            high[i] = _mm256_fmadd_ps(a, b1, high[i]);
        }
        ap += IN_PLACE ? 1 : MR;
        bp += 16;
    }
    if (rows == R && cols == 16) {
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            float *row = c + i * ldc;
            if (accumulate) {
                low[i] = _mm256_add_ps(low[i], _mm256_loadu_ps(row));
                high[i] = _mm256_add_ps(high[i], _mm256_loadu_ps(row + 8));
            }
            _mm256_storeu_ps(row, low[i]);
            _mm256_storeu_ps(row + 8, high[i]);
        }
        return;
    }
    float block[6 * 16] __attribute__((aligned(32)));
#pragma clang loop unroll(full)
    for (int i = 0; i < R; i++) {
        _mm256_store_ps(block + i * 16, low[i]);
        _mm256_store_ps(block + i * 16 + 8, high[i]);
    }
    for (long i = 0; i < rows; i++)
        for (long j = 0; j < cols; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + block[i * 16 + j] : block[i * 16 + j];
}

/* avx512_tile_of_rows's tile as blocks of 6 rows (of 4 or 1 for the last rows, as there) and 16 columns (a group of the
   panel, kc x 16 values apart), rows outer: a block's rows of A serve both groups of the panel from cache. */
AVX2 static void avx2_tile_of_rows(long kc, const float *ap, long lda, const float *bp, float *c, long ldc, long rows, long cols,
                                   int accumulate) {
    for (long first = 0; first < rows; first += 6) {
        long height = rows - first < 6 ? rows - first : 6;
        for (long half = 0; half < cols; half += 16) {
            long width = cols - half < 16 ? cols - half : 16;
            const float *a = lda > 0 ? ap + first * lda : ap + first;
            float *block = c + first * ldc + half;
#define BLOCK(R, IN_PLACE) avx2_block(R, IN_PLACE, kc, a, lda, bp + half * kc, block, ldc, height, width, accumulate)
            if (lda > 0) BLOCK(6, 1);
            else if (height > 4) BLOCK(6, 0);
            else if (height > 1) BLOCK(4, 0);
            else BLOCK(1, 0);
#undef BLOCK
        }
    }
}

/* One row of A (read in place) · a panel over kc into c[0, cols): both groups in one pass over k, four independent sums
   per step (a 1 x 16 block has two, and waits on the fused multiply-add's latency), in the blocks' order of sums. */
AVX2 static void avx2_row(long kc, const float *a, const float *bp, float *c, long cols, int accumulate) {
    if (cols <= 16) {
        avx2_block(1, 1, kc, a, 0, bp, c, 0, 1, cols, accumulate);
        return;
    }
    const float *bp1 = bp + 16 * kc;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (long p = 0; p < kc; p++) {
        _mm_prefetch((const char *)(bp + 16 * 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp1 + 16 * 16), _MM_HINT_T0);
        __m256 x = _mm256_broadcast_ss(a + p);
        s0 = _mm256_fmadd_ps(x, _mm256_load_ps(bp), s0);
        s1 = _mm256_fmadd_ps(x, _mm256_load_ps(bp + 8), s1);
        s2 = _mm256_fmadd_ps(x, _mm256_load_ps(bp1), s2);
        s3 = _mm256_fmadd_ps(x, _mm256_load_ps(bp1 + 8), s3);
        bp += 16;
        bp1 += 16;
    }
    float row[NR] __attribute__((aligned(32)));
    _mm256_store_ps(row, s0);
    _mm256_store_ps(row + 8, s1);
    _mm256_store_ps(row + 16, s2);
    _mm256_store_ps(row + 24, s3);
    for (long j = 0; j < cols; j++) c[j] = accumulate ? c[j] + row[j] : row[j];
}

/* avx2_row's product on AVX-512: the tile of one row, A read in place. */
AVX512 static void avx512_row(long kc, const float *a, const float *bp, float *c, long cols, int accumulate) {
    if (cols <= 16) tile_reading_a(1, 1, 1, kc, a, 0, bp, c, 0, 1, cols, accumulate);
    else tile_reading_a(1, 1, 0, kc, a, 0, bp, c, 0, 1, cols, accumulate);
}

/* Packed weights as a product reads them: floats, or narrow values widened as they are read (half or a quarter of the
   bytes): bfloat16 (stitch_sgemm_pack_bf16), or 8-bit integers with a scale per column (stitch_sgemm_pack_int8). */
typedef enum { FLOAT_VALUES, BF16_VALUES, INT8_VALUES } value_type;
typedef struct {
    value_type type;
    const void *values;
    const float *scales;   /* INT8_VALUES: each column's, from column 0 */
} packed_weights;

/* The bytes a packed value takes. */
static inline long value_size(value_type type) { return type == INT8_VALUES ? 1 : type == BF16_VALUES ? 2 : 4; }

/* The 8 narrow values from values[index], widened exactly (a bfloat16 is a float's upper half; an integer converts). */
AVX2 static inline __m256 avx2_widened(const value_type type, const void *values, long index) {
    if (type == INT8_VALUES)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)values + index))));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)values + index))), 16));
}

/* Where column `column` of a chunk of kc steps (column groups `width` wide) has its value of the first step, from the
   chunk's start; the next steps' follow, `width` apart. */
static inline long column_start(long kc, long width, long column) { return column / width * width * kc + column % width; }

/* How far ahead the narrow kernels prefetch each run of weights they read (a prefetch never faults, past the end
   either). A chunk of narrow weights is 8 KB (int8) or 16 KB (bfloat16), its column groups 4 or 8 KB apart in AVX2's
   layout, and the hardware's stream prefetcher stops at each 4 KB page, so it starts cold on every group; 8 KB ahead
   is the next chunk's same place. One core, one row from memory (16 x 768 x 3072): int8 19 G weights/s, bfloat16 11,
   against 12-14 and 9-10 prefetching 16 steps ahead as the FP32 kernels do (256 or 512 bytes). In AVX-512's layout a
   chunk is one run and the distance made no difference measured (Zen 4, 8 KB against 512 bytes: int8 gpt2-greedy
   4.02-4.21 against 4.34-4.75 ms a token, qwen2-decode 18.2-18.7 against 18.0-18.3, bfloat16 within the noise). */
#define NARROW_PREFETCH_BYTES 8192

/* avx2_row on a chunk of narrow values from values[chunk], its column groups `width` wide (AVX2's or AVX-512's layout):
   each weight widened as it is read, fewer bytes streamed; the same sums in the same order as avx2_row's and
   avx512_row's. */
AVX2 static inline __attribute__((always_inline)) void avx2_row_narrow(const value_type TYPE, long kc, long width, const float *a,
                                                                      const void *values, long chunk, float *c, long cols, int accumulate) {
    long columns[4];   /* each run of 8 columns */
#pragma clang loop unroll(full)
    for (int v = 0; v < 4; v++) columns[v] = chunk + column_start(kc, width, 8 * v);
    long bytes = value_size(TYPE);
    __m256 sums[4];
#pragma clang loop unroll(full)
    for (int v = 0; v < 4; v++) sums[v] = _mm256_setzero_ps();
    for (long p = 0; p < kc; p++) {
        _mm_prefetch((const char *)values + (columns[0] + p * width) * bytes + NARROW_PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)values + (columns[3] + p * width) * bytes + NARROW_PREFETCH_BYTES, _MM_HINT_T0);
        __m256 x = _mm256_broadcast_ss(a + p);
#pragma clang loop unroll(full)
        for (int v = 0; v < 4; v++) sums[v] = _mm256_fmadd_ps(x, avx2_widened(TYPE, values, columns[v] + p * width), sums[v]);
    }
    float row[NR] __attribute__((aligned(32)));
#pragma clang loop unroll(full)
    for (int v = 0; v < 4; v++) _mm256_store_ps(row + 8 * v, sums[v]);
    for (long j = 0; j < cols; j++) c[j] = accumulate ? c[j] + row[j] : row[j];
}

/* R (2 to 4) rows of A (read in place, lda apart) · a chunk of narrow values (a decoding step of a few beams), a
   16-column half of the panel at a time: 2R sums, each weight widened as it is read. For so few rows, widening the chunk
   into a buffer first (as more rows do) cost more than the bytes saved (BLIP's 3-beam captions, bfloat16: 1.11x FP32's
   time). */
AVX2 static inline __attribute__((always_inline)) void avx2_rows_narrow(const value_type TYPE, const int R, long kc, long width, const float *a,
                                                                       long lda, const void *values, long chunk, float *c, long ldc, long cols,
                                                                       int accumulate) {
    long bytes = value_size(TYPE);
    for (long half = 0; half < 2 && 16 * half < cols; half++) {
        long low = chunk + column_start(kc, width, 16 * half), high = low + 8;
        __m256 sums[8];
#pragma clang loop unroll(full)
        for (int i = 0; i < 2 * R; i++) sums[i] = _mm256_setzero_ps();
        for (long p = 0; p < kc; p++) {
            _mm_prefetch((const char *)values + (low + p * width) * bytes + NARROW_PREFETCH_BYTES, _MM_HINT_T0);
            __m256 w0 = avx2_widened(TYPE, values, low + p * width), w1 = avx2_widened(TYPE, values, high + p * width);
#pragma clang loop unroll(full)
            for (int i = 0; i < R; i++) {
                __m256 x = _mm256_broadcast_ss(a + i * lda + p);
                sums[2 * i] = _mm256_fmadd_ps(x, w0, sums[2 * i]);
                sums[2 * i + 1] = _mm256_fmadd_ps(x, w1, sums[2 * i + 1]);
            }
        }
        long width_here = cols - 16 * half < 16 ? cols - 16 * half : 16;
#pragma clang loop unroll(full)
        for (int i = 0; i < R; i++) {
            float row[16] __attribute__((aligned(32)));
            _mm256_store_ps(row, sums[2 * i]);
            _mm256_store_ps(row + 8, sums[2 * i + 1]);
            float *target = c + i * ldc + 16 * half;
            for (long j = 0; j < width_here; j++) target[j] = accumulate ? target[j] + row[j] : row[j];
        }
    }
}

AVX2 static inline __attribute__((always_inline)) void avx2_few_rows_of(const value_type TYPE, long m, long kc, long width, const float *a,
                                                                       long lda, const void *values, long chunk, float *c, long ldc, long cols,
                                                                       int accumulate) {
    switch (m) {
    case 1: avx2_row_narrow(TYPE, kc, width, a, values, chunk, c, cols, accumulate); break;
    case 2: avx2_rows_narrow(TYPE, 2, kc, width, a, lda, values, chunk, c, ldc, cols, accumulate); break;
    case 3: avx2_rows_narrow(TYPE, 3, kc, width, a, lda, values, chunk, c, ldc, cols, accumulate); break;
    default: avx2_rows_narrow(TYPE, 4, kc, width, a, lda, values, chunk, c, ldc, cols, accumulate); break;
    }
}

/* m (1 to 4) rows of A · the chunk of narrow values from values[chunk] into c, read directly: the few-row products of
   decoding (before any scales). */
AVX2 static void avx2_few_rows(const packed_weights *w, long m, long kc, long width, const float *a, long lda, long chunk, float *c, long ldc,
                               long cols, int accumulate) {
    if (w->type == INT8_VALUES) avx2_few_rows_of(INT8_VALUES, m, kc, width, a, lda, w->values, chunk, c, ldc, cols, accumulate);
    else avx2_few_rows_of(BF16_VALUES, m, kc, width, a, lda, w->values, chunk, c, ldc, cols, accumulate);
}

/* floats[i] = the narrow values[chunk + i] widened, for count (a multiple of 8) values. */
AVX2 static void avx2_widen(const packed_weights *w, long chunk, long count, float *floats) {
    if (w->type == INT8_VALUES)
        for (long i = 0; i < count; i += 8) _mm256_store_ps(floats + i, avx2_widened(INT8_VALUES, w->values, chunk + i));
    else
        for (long i = 0; i < count; i += 8) _mm256_store_ps(floats + i, avx2_widened(BF16_VALUES, w->values, chunk + i));
}

/* Each of `rows` rows of c (cols of them, ldc apart) times the scale of its column. */
static void scale_columns(float *c, long ldc, long rows, long cols, const float *scales) {
    for (long i = 0; i < rows; i++)
        for (long j = 0; j < cols; j++) c[i * ldc + j] *= scales[j];
}

/* One instruction set's leaves of a product with packed weights and the width of the column groups they read (see
   pack_chunk); packed_product is the same for both. */
typedef struct {
    long group_width;
    void (*pack_a)(const float *a, long lda, long mc, long kc, float *ap);
    void (*tile_of_rows)(long kc, const float *ap, long lda, const float *bp, float *c, long ldc, long rows, long cols, int accumulate);
    void (*row)(long kc, const float *a, const float *bp, float *c, long cols, int accumulate);
} packed_kernels;

static const packed_kernels avx512_kernels = {NR, avx512_pack_a, avx512_tile_of_rows, avx512_row};
static const packed_kernels avx2_kernels = {16, avx2_pack_a, avx2_tile_of_rows, avx2_row};

static int prefer_avx2;

void stitch_sgemm_prefer_avx2(int prefer) { __atomic_store_n(&prefer_avx2, prefer != 0, __ATOMIC_RELAXED); }

/* AVX-512's kernels where the CPU has them (unless a test asked for AVX2's), else AVX2's; NULL with neither. */
static const packed_kernels *chosen_kernels(void) {
    if (has_avx512() && !__atomic_load_n(&prefer_avx2, __ATOMIC_RELAXED)) return &avx512_kernels;
    return has_avx2() ? &avx2_kernels : NULL;
}

int stitch_sgemm_available(void) { return has_avx512(); }

int stitch_sgemm_packed_available(void) { return chosen_kernels() != NULL; }

void stitch_sgemm_pack(int transpose, long n, long k, const float *w, long ldw, float *packed) {
    long width = chosen_kernels()->group_width;
    for (long panel = 0; panel < n; panel += NR)
        for (long chunk = 0; chunk < k; chunk += KC) {
            pack_chunk(transpose, n, k, w, ldw, width, panel, chunk, packed);
            packed += NR * (k - chunk < KC ? k - chunk : KC);
        }
}

/* The nearest integer to value / scale (ties to even), within ±127; 0 for a column of zeros or a NaN scale. */
static inline int8_t quantized(float value, float scale) {
    float q = scale > 0 ? nearbyintf(value / scale) : 0;
    return q >= 127 ? 127 : q <= -127 ? -127 : q == q ? (int8_t)q : 0;
}

/* stitch_sgemm_pack's layout with narrow values: each chunk packed as floats, then stored rounded to bfloat16 or
   quantized with its column's scale. */
static void pack_narrow(value_type type, int transpose, long n, long k, const float *w, long ldw, void *packed, const float *scales) {
    long width = chosen_kernels()->group_width, stored = 0;
    float chunk_values[KC * NR];
    for (long panel = 0; panel < n; panel += NR)
        for (long chunk = 0; chunk < k; chunk += KC) {
            long depth = k - chunk < KC ? k - chunk : KC;
            pack_chunk(transpose, n, k, w, ldw, width, panel, chunk, chunk_values);
            for (long i = 0; i < NR * depth; i++, stored++) {
                if (type == BF16_VALUES) {
                    ((uint16_t *)packed)[stored] = stitch_bf16_rounded(chunk_values[i]);
                    continue;
                }
                long column = panel + i / (width * depth) * width + i % width;   /* pack_chunk's order: group, step, column */
                ((int8_t *)packed)[stored] = column < n ? quantized(chunk_values[i], scales[column]) : 0;
            }
        }
}

void stitch_sgemm_pack_bf16(int transpose, long n, long k, const float *w, long ldw, uint16_t *packed) {
    pack_narrow(BF16_VALUES, transpose, n, k, w, ldw, packed, NULL);
}

void stitch_sgemm_pack_int8(int transpose, long n, long k, const float *w, long ldw, int8_t *packed, float *scales) {
    /* Each column's largest magnitude, read along W's rows in memory order. A column with a NaN keeps a NaN scale, one
       with an infinity an infinite one (its integers all 0): either way its outputs are NaN, as FP32's would not be finite. */
    for (long j = 0; j < n; j++) scales[j] = 0;
    for (long outer = 0; outer < (transpose ? n : k); outer++)
        for (long inner = 0; inner < (transpose ? k : n); inner++) {
            long j = transpose ? outer : inner;
            float magnitude = fabsf(w[outer * ldw + inner]);
            if (magnitude > scales[j] || magnitude != magnitude) scales[j] = magnitude;
        }
    for (long j = 0; j < n; j++) scales[j] /= 127;
    pack_narrow(INT8_VALUES, transpose, n, k, w, ldw, packed, scales);
}

/* The thread's packing buffer `slot` for up to `block` of `count` rows (or columns), in whole panels of `panel`, over up
   to KC of k: what this product's blocks need. */
static float *packing_buffer(int slot, long k, long count, long block, long panel) {
    long depth = k < KC ? k : KC, lines = count < block ? count : block;
    return stitch_thread_scratch(slot, sizeof(float) * (size_t)(depth * ((lines + panel - 1) / panel * panel)));
}

AVX512 void stitch_sgemm(int transpose_b, long m, long n, long k, const float *a, long lda, const float *b, long ldb, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        for (long i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    float *bp = packing_buffer(0, k, n, NC, NR), *ap = packing_buffer(1, k, m, MC, MR);
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            avx512_pack_b(transpose_b, transpose_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, nc, kc, bp);
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                avx512_pack_a(a + ic * lda + pc, lda, mc, kc, ap);
                for (long jr = 0; jr < nc; jr += NR)
                    for (long ir = 0; ir < mc; ir += MR)
                        avx512_tile_of_rows(kc, ap + ir * kc, 0, bp + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                                            mc - ir < MR ? mc - ir : MR, nc - jr < NR ? nc - jr : NR, pc > 0);
            }
        }
    }
}

/* As stitch_sgemm with B packed beforehand: A is packed once per block of rows and k (not once per block of columns too),
   and the sums run in stitch_sgemm's order, so the results are the same bits; with narrow weights, the same bits as on
   the widened weights (times each column's scale, for 8-bit integers). */
static void packed_product(long m, long k, const float *a, long lda, const packed_weights *w, long column_begin, long column_end,
                           float *c, long ldc, const float *bias, stitch_activation activation) {
    if (m <= 0 || column_end <= column_begin) return;
    long n = column_end - column_begin;
    if (k <= 0) {
        for (long i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        stitch_finish_rows(c, ldc, m, n, bias, activation);
        return;
    }
    const packed_kernels *kernels = chosen_kernels();
    const float *scales = w->type == INT8_VALUES ? w->scales + column_begin : NULL;
    if (m == 1 || (w->type != FLOAT_VALUES && m <= 4)) {
        /* A decoding step (of up to 4 beams, with narrow weights): each panel streamed from start to end, A read in
           place (nothing to pack). */
        for (long column = column_begin; column < column_end; column += NR)
            for (long pc = 0; pc < k; pc += KC) {
                long kc = k - pc < KC ? k - pc : KC, cols = column_end - column < NR ? column_end - column : NR;
                if (w->type == FLOAT_VALUES)
                    kernels->row(kc, a + pc, (const float *)w->values + chunk_offset(k, column, pc), c + (column - column_begin), cols, pc > 0);
                else
                    avx2_few_rows(w, m, kc, kernels->group_width, a + pc, lda, chunk_offset(k, column, pc), c + (column - column_begin), ldc, cols,
                                  pc > 0);
            }
        if (scales) scale_columns(c, ldc, m, n, scales);
        stitch_finish_rows(c, ldc, m, n, bias, activation);
        return;
    }
    /* With few columns (a convolution's few output channels) each panel of A serves few tiles, and packing it cost as
       much as they did: whole 12-row tiles read A in place, only a last partial one is packed. */
    int in_place = n <= 4 * NR;
    float *ap = packing_buffer(0, k, in_place ? MR : m, MC, MR);
    /* More rows widen narrow weights a chunk at a time (32 KB, for every tile of the block of rows). */
    float *widened = w->type != FLOAT_VALUES ? packing_buffer(1, k, NR, NR, NR) : NULL;
    for (long ic = 0; ic < m; ic += MC) {
        long mc = m - ic < MC ? m - ic : MC, whole = in_place ? mc / MR * MR : 0;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            if (whole < mc) kernels->pack_a(a + (ic + whole) * lda + pc, lda, mc - whole, kc, ap);
            for (long column = column_begin; column < column_end; column += NR) {
                const float *bp = widened;
                if (w->type == FLOAT_VALUES) bp = (const float *)w->values + chunk_offset(k, column, pc);
                else avx2_widen(w, chunk_offset(k, column, pc), NR * kc, widened);
                long cols = column_end - column < NR ? column_end - column : NR;
                for (long ir = 0; ir < mc; ir += MR)
                    kernels->tile_of_rows(kc, ir < whole ? a + (ic + ir) * lda + pc : ap + (ir - whole) * kc, ir < whole ? lda : 0,
                                          bp, c + (ic + ir) * ldc + (column - column_begin), ldc, mc - ir < MR ? mc - ir : MR, cols, pc > 0);
            }
        }
        if (scales) scale_columns(c + ic * ldc, ldc, mc, n, scales);
        stitch_finish_rows(c + ic * ldc, ldc, mc, n, bias, activation);
    }
}

void stitch_sgemm_packed(long m, long k, const float *a, long lda, const float *packed, long column_begin,
                         long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    packed_weights w = {FLOAT_VALUES, packed, NULL};
    packed_product(m, k, a, lda, &w, column_begin, column_end, c, ldc, bias, activation);
}

void stitch_sgemm_packed_bf16(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin,
                              long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    packed_weights w = {BF16_VALUES, packed, NULL};
    packed_product(m, k, a, lda, &w, column_begin, column_end, c, ldc, bias, activation);
}

void stitch_sgemm_packed_int8(long m, long k, const float *a, long lda, const int8_t *packed, const float *scales, long column_begin,
                              long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    packed_weights w = {INT8_VALUES, packed, scales};
    packed_product(m, k, a, lda, &w, column_begin, column_end, c, ldc, bias, activation);
}

#else

int stitch_sgemm_available(void) { return 0; }

int stitch_sgemm_packed_available(void) { return 0; }

void stitch_sgemm_prefer_avx2(int prefer) { (void)prefer; }

void stitch_sgemm_pack(int transpose, long n, long k, const float *w, long ldw, float *packed) {
    (void)transpose, (void)n, (void)k, (void)w, (void)ldw, (void)packed;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemm_packed(long m, long k, const float *a, long lda, const float *packed, long column_begin, long column_end,
                         float *c, long ldc, const float *bias, stitch_activation activation) {
    (void)m, (void)k, (void)a, (void)lda, (void)packed, (void)column_begin, (void)column_end, (void)c, (void)ldc, (void)bias,
        (void)activation;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemm_pack_bf16(int transpose, long n, long k, const float *w, long ldw, uint16_t *packed) {
    (void)transpose, (void)n, (void)k, (void)w, (void)ldw, (void)packed;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemm_packed_bf16(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                              float *c, long ldc, const float *bias, stitch_activation activation) {
    (void)m, (void)k, (void)a, (void)lda, (void)packed, (void)column_begin, (void)column_end, (void)c, (void)ldc, (void)bias,
        (void)activation;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemm_pack_int8(int transpose, long n, long k, const float *w, long ldw, int8_t *packed, float *scales) {
    (void)transpose, (void)n, (void)k, (void)w, (void)ldw, (void)packed, (void)scales;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemm_packed_int8(long m, long k, const float *a, long lda, const int8_t *packed, const float *scales, long column_begin,
                              long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    (void)m, (void)k, (void)a, (void)lda, (void)packed, (void)scales, (void)column_begin, (void)column_end, (void)c, (void)ldc, (void)bias,
        (void)activation;
    abort();   /* never offered: stitch_sgemm_packed_available() is 0 */
}

void stitch_sgemv_t(long n, long k, const float *w, long ldw, const float *x, float *y) {
    (void)n, (void)k, (void)w, (void)ldw, (void)x, (void)y;
    abort();   /* never offered: stitch_sgemm_available() is 0 */
}

void stitch_sgemm(int transpose_b, long m, long n, long k, const float *a, long lda, const float *b, long ldb, float *c, long ldc) {
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)c, (void)ldc;
    abort();   /* never offered: stitch_sgemm_available() is 0 */
}

#endif
