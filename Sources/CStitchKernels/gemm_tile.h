#ifndef STITCH_GEMM_TILE_H
#define STITCH_GEMM_TILE_H

/* gemm.c's register tile, shared with bf16.c (not part of the module's interface). */
#include "stitch_kernels.h"

enum { STITCH_TILE_ROWS = 12, STITCH_TILE_COLUMNS = 32 };

/* The epilogue of a packed product's block of finished rows, run while they are in cache: bias [cols] (NULL: none)
   added to each row, then the activation. */
static inline void stitch_finish_rows(float *c, long ldc, long rows, long cols, const float *bias, stitch_activation activation) {
    if (bias || activation != STITCH_ACTIVATION_NONE)
        for (long i = 0; i < rows; i++) stitch_bias_row_activation(c + i * ldc, cols, bias, activation);
}

#if defined(__x86_64__)
/* The 12 x 32 tile at c (rows x cols of it inside C) = (or +=, when accumulate) ap · bp over kc: ap[p][12] (rows of A,
   p-major), bp[p][32] (64-byte aligned). AVX-512 only. */
void stitch_sgemm_tile(long kc, const float *ap, const float *bp, float *c, long ldc, long rows, long cols, int accumulate);
#endif

#endif
