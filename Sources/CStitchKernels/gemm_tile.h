#ifndef STITCH_GEMM_TILE_H
#define STITCH_GEMM_TILE_H

/* gemm.c's register tile and 16 x 16 transpose, shared with bf16.c, and bf16.c's rounding and AMX product, shared with
   amx.c (not part of the module's interface). */
#include "stitch_kernels.h"
#include <stdint.h>
#include <string.h>

enum { STITCH_TILE_ROWS = 12, STITCH_TILE_COLUMNS = 32 };

/* The nearest bfloat16 to value, ties to even, as torch rounds; a NaN stays a (quiet) NaN. Without branches, so that
   loops of it vectorise. */
static inline uint16_t stitch_bf16_rounded(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t nearest = (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16), nan = (uint16_t)((bits >> 16) | 0x40);
    return (bits & 0x7fffffffu) > 0x7f800000u ? nan : nearest;
}

#if defined(__x86_64__)
#include <immintrin.h>

/* r[q] becomes column q of the 16 x 16 block whose rows were r[0..15]: pairs, then quads within 128-bit lanes, then
   lanes across registers. */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + c] holds rows 4g..4g+3 at columns c, c + 4, c + 8, c + 12 (one per lane). */
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
    }
    for (int c = 0; c < 4; c++) {
        __m512 low = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), high = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
        __m512 low2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), high2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_f32x4(low, low2, 0x88);
        r[c + 4] = _mm512_shuffle_f32x4(low, low2, 0xDD);
        r[c + 8] = _mm512_shuffle_f32x4(high, high2, 0x88);
        r[c + 12] = _mm512_shuffle_f32x4(high, high2, 0xDD);
    }
}

/* The 12 x 32 tile at c (rows x cols of it inside C) = (or +=, when accumulate) ap · bp over kc: ap[p][12] (rows of A,
   p-major), bp[p][32] (64-byte aligned). AVX-512 only. */
void stitch_sgemm_tile(long kc, const float *ap, const float *bp, float *c, long ldc, long rows, long cols, int accumulate);

/* stitch_bf16_gemm on AMX tiles (amx.c), where stitch_amx_available(). */
void stitch_amx_bf16_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin, long column_end,
                          float *c, long ldc, const float *bias, stitch_activation activation);
#endif

#endif
