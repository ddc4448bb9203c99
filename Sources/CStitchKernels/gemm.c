#include "stitch_kernels.h"
#include <stdlib.h>
#include <string.h>

/* C = A·B or A·Bᵀ with AVX-512, blocked and packed as BLIS does: B in panels of NR columns of C over KC of k, A in panels of
   MR rows, a register tile of MR x NR (24 of the 32 vector registers) accumulated by fused multiply-adds. Where the
   CPU lacks AVX-512 (and off x86-64) it is not offered and the caller uses OpenBLAS. */

#if defined(__x86_64__)
#include <immintrin.h>

enum { MR = 12, NR = 32, KC = 256, MC = 96, NC = 512 };

#define AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))

int stitch_sgemm_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq");
}

/* Bp[panel][p][j] = op(B)[p][panel * NR + j] for kc rows and nc columns of op(B), columns past nc zero: B is [n, k]
   (transposed: its rows are op(B)'s columns) or [k, n]. */
static void pack_b(int transpose_b, const float *b, long ldb, long nc, long kc, float *bp) {
    for (long panel = 0; panel < nc; panel += NR) {
        long width = nc - panel < NR ? nc - panel : NR;
        if (transpose_b) {
            for (long j = 0; j < width; j++) {
                const float *row = b + (panel + j) * ldb;
                for (long p = 0; p < kc; p++) bp[p * NR + j] = row[p];
            }
            for (long j = width; j < NR; j++)
                for (long p = 0; p < kc; p++) bp[p * NR + j] = 0;
        } else {
            for (long p = 0; p < kc; p++) {
                memcpy(bp + p * NR, b + p * ldb + panel, (size_t)width * sizeof(float));
                memset(bp + p * NR + width, 0, (size_t)(NR - width) * sizeof(float));
            }
        }
        bp += NR * kc;
    }
}

/* Ap[panel][p][i] = A[(panel * MR + i) * lda + p] for mc rows of A and kc columns, rows past mc zero. */
static void pack_a(const float *a, long lda, long mc, long kc, float *ap) {
    for (long panel = 0; panel < mc; panel += MR) {
        long height = mc - panel < MR ? mc - panel : MR;
        for (long i = 0; i < height; i++) {
            const float *row = a + (panel + i) * lda;
            for (long p = 0; p < kc; p++) ap[p * MR + i] = row[p];
        }
        for (long i = height; i < MR; i++)
            for (long p = 0; p < kc; p++) ap[p * MR + i] = 0;
        ap += MR * kc;
    }
}

/* The MR x NR tile at c (rows x cols of it inside C) = (or +=, when accumulate) Ap-panel · Bp-panel over kc. */
AVX512 static void kernel(long kc, const float *ap, const float *bp, float *c, long ldc, long rows, long cols, int accumulate) {
    __m512 low[MR], high[MR];
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++) low[i] = high[i] = _mm512_setzero_ps();
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            low[i] = _mm512_fmadd_ps(a, b0, low[i]);
            high[i] = _mm512_fmadd_ps(a, b1, high[i]);
        }
        ap += MR;
        bp += NR;
    }
    if (rows == MR && cols == NR) {
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) {
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
    for (int i = 0; i < MR; i++) {
        _mm512_store_ps(tile + i * NR, low[i]);
        _mm512_store_ps(tile + i * NR + 16, high[i]);
    }
    for (long i = 0; i < rows; i++)
        for (long j = 0; j < cols; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

AVX512 void stitch_sgemm(int transpose_b, long m, long n, long k, const float *a, long lda, const float *b, long ldb, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        for (long i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    float *bp = aligned_alloc(64, sizeof(float) * KC * ((NC + NR - 1) / NR * NR));
    float *ap = aligned_alloc(64, sizeof(float) * KC * ((MC + MR - 1) / MR * MR));
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            pack_b(transpose_b, transpose_b ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, nc, kc, bp);
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                pack_a(a + ic * lda + pc, lda, mc, kc, ap);
                for (long jr = 0; jr < nc; jr += NR)
                    for (long ir = 0; ir < mc; ir += MR)
                        kernel(kc, ap + ir * kc, bp + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                               mc - ir < MR ? mc - ir : MR, nc - jr < NR ? nc - jr : NR, pc > 0);
            }
        }
    }
    free(ap);
    free(bp);
}

#else

int stitch_sgemm_available(void) { return 0; }

void stitch_sgemm(int transpose_b, long m, long n, long k, const float *a, long lda, const float *b, long ldb, float *c, long ldc) {
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)c, (void)ldc;
    abort();   /* never offered: stitch_sgemm_available() is 0 */
}

#endif
