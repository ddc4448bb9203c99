#include "stitch_kernels.h"
#include "gemm_tile.h"
#include <string.h>

/* bfloat16 products on AMX tiles (Intel Sapphire Rapids and later), for products of more than a few rows: one
   TDPBF16PS multiplies a 16 x 32 bfloat16 tile of A by a 16-pair x 16-column tile of weights into a 16 x 16 tile of
   single-precision sums, 8192 multiply-adds, where Intel's VDPBF16PS issues at a quarter of FMA's rate (bf16.c). The
   weights stay in bf16.c's packed layout: a panel's pair q holds 32 columns' pairs, 128 bytes, so the 16 columns of each
   half are a B tile read with a 128-byte stride. A is rounded to bfloat16 (as bf16.c rounds it) into rows zero-padded
   to whole tiles.

   The tile operations are macros so that Tests/CrossCheck/amx_check.c can run this file on a software tile file where
   the CPU has none (Scripts/cross-check). */

#if defined(__x86_64__)

#ifndef AMX_TARGET   /* the hardware's tiles (amx_check.c defines these macros for its software ones) */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16")))
#define TILE_CONFIGURE(config) _tile_loadconfig(config)
#define TILE_RELEASE() _tile_release()
#define TILE_ZERO(tile) _tile_zero(tile)
#define TILE_LOAD(tile, base, stride) _tile_loadd(tile, base, stride)
#define TILE_STORE(tile, base, stride) _tile_stored(tile, base, stride)
#define TILE_DOT_BF16(sums, a, b) _tile_dpbf16ps(sums, a, b)

/* Linux hands out the tile registers' state only to processes that ask (arch_prctl, kernel 5.16 and later); elsewhere
   the tiles are not used. */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_granted;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void ask_for_tiles(void) {
#if defined(__linux__)
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return;
    int tiles = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;   /* CPUID.(7, 0).EDX: AMX-TILE, AMX-BF16 */
    amx_granted = tiles && bf16 && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#endif
}

int stitch_amx_available(void) {
    pthread_once(&amx_once, ask_for_tiles);
    return amx_granted;
}
#endif

/* CHUNK_PAIRS: the pairs of k one tile product sums (a B tile's 16 rows, an A tile's 64 bytes a row). MC: the rows of A
   rounded at a time (at k = 3072, 768 KB: inside a Sapphire Rapids core's 2 MB L2). */
enum { PANEL = STITCH_TILE_COLUMNS, CHUNK_PAIRS = 16, MC = 128 };

/* The 64-byte tile configuration LDTILECFG reads: palette 1, then each tile's bytes per row and rows. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t row_bytes[16];
    uint8_t rows[16];
} tile_configuration;

/* Rows [0, rows) of A rounded to bfloat16 into out, `depth` values a row (k of them read, zeros after), and zero rows
   up to padded_rows. */
AMX_TARGET static void round_rows(const float *a, long lda, long rows, long padded_rows, long k, long depth, uint16_t *out) {
    for (long i = 0; i < rows; i++) {
        const float *row = a + i * lda;
        uint16_t *target = out + i * depth;
        for (long p = 0; p < k; p++) target[p] = stitch_bf16_rounded(row[p]);
        memset(target + k, 0, sizeof(uint16_t) * (size_t)(depth - k));
    }
    memset(out + rows * depth, 0, sizeof(uint16_t) * (size_t)((padded_rows - rows) * depth));
}

/* The 32 x 32 block of sums for the A rows at a (two tiles; one when `one_tile`) and a panel over `chunks` chunks of 16
   pairs, the last read from `last` (a zero-padded copy where the panel's pairs do not fill it), into sums[32][32].
   Tiles 0-3 hold the sums (rows 0-15 then 16-31; columns 0-15 then 16-31), 4 and 5 A's two 16-row tiles, 6 and 7 the
   panel's two 16-column halves; every tile is 16 rows of 64 bytes. */
AMX_TARGET static void tile_block(const uint16_t *a, long depth, const uint16_t *panel, long chunks, const uint16_t *last,
                                  int one_tile, float *sums) {
    const long a_stride = depth * (long)sizeof(uint16_t), b_stride = 2 * PANEL * (long)sizeof(uint16_t);
    TILE_ZERO(0);
    TILE_ZERO(1);
    TILE_ZERO(2);
    TILE_ZERO(3);
    for (long chunk = 0; chunk < chunks; chunk++) {
        const uint16_t *b = chunk == chunks - 1 ? last : panel + chunk * CHUNK_PAIRS * 2 * PANEL;
        TILE_LOAD(6, b, b_stride);
        TILE_LOAD(7, b + PANEL, b_stride);
        TILE_LOAD(4, a + chunk * 2 * CHUNK_PAIRS, a_stride);
        TILE_DOT_BF16(0, 4, 6);
        TILE_DOT_BF16(1, 4, 7);
        if (one_tile) continue;
        TILE_LOAD(5, a + 16 * depth + chunk * 2 * CHUNK_PAIRS, a_stride);
        TILE_DOT_BF16(2, 5, 6);
        TILE_DOT_BF16(3, 5, 7);
    }
    const long c_stride = PANEL * (long)sizeof(float);
    TILE_STORE(0, sums, c_stride);
    TILE_STORE(1, sums + 16, c_stride);
    if (one_tile) return;
    TILE_STORE(2, sums + 16 * PANEL, c_stride);
    TILE_STORE(3, sums + 16 * PANEL + 16, c_stride);
}

/* stitch_bf16_gemm where stitch_amx_available() (bf16.c calls it for products of more than 4 rows). */
AMX_TARGET void stitch_amx_bf16_gemm(long m, long k, const float *a, long lda, const uint16_t *packed, long column_begin,
                                     long column_end, float *c, long ldc, const float *bias, stitch_activation activation) {
    long pairs = (k + 1) / 2, chunks = (pairs + CHUNK_PAIRS - 1) / CHUNK_PAIRS, depth = chunks * 2 * CHUNK_PAIRS;
    long tail_pairs = pairs - (chunks - 1) * CHUNK_PAIRS;
    long rows_block = m < MC ? (m + 31) / 32 * 32 : MC;
    uint16_t *rounded = stitch_thread_scratch(0, sizeof(uint16_t) * (size_t)(rows_block * depth));
    /* slot 1: the last chunk's zero-padded copy (4 KB), then the 32 x 32 sums */
    uint16_t *last = stitch_thread_scratch(1, sizeof(uint16_t) * CHUNK_PAIRS * 2 * PANEL + sizeof(float) * 32 * PANEL);
    float *sums = (float *)(last + CHUNK_PAIRS * 2 * PANEL);
    tile_configuration configuration = {.palette = 1};
    for (int tile = 0; tile < 8; tile++) configuration.row_bytes[tile] = 64, configuration.rows[tile] = 16;
    TILE_CONFIGURE(&configuration);
    for (long ic = 0; ic < m; ic += MC) {
        long mc = m - ic < MC ? m - ic : MC, padded_rows = (mc + 31) / 32 * 32;
        round_rows(a + ic * lda, lda, mc, padded_rows, k, depth, rounded);
        for (long column = column_begin; column < column_end; column += PANEL) {
            const uint16_t *panel = packed + column / PANEL * pairs * 2 * PANEL;
            const uint16_t *tail = panel + (chunks - 1) * CHUNK_PAIRS * 2 * PANEL;
            if (tail_pairs < CHUNK_PAIRS) {   /* the panel ends inside the chunk: the next panel, or the end, follows */
                memcpy(last, tail, sizeof(uint16_t) * (size_t)(tail_pairs * 2 * PANEL));
                memset(last + tail_pairs * 2 * PANEL, 0, sizeof(uint16_t) * (size_t)((CHUNK_PAIRS - tail_pairs) * 2 * PANEL));
                tail = last;
            }
            long cols = column_end - column < PANEL ? column_end - column : PANEL;
            for (long row = 0; row < mc; row += 32) {
                long rows = mc - row < 32 ? mc - row : 32;
                tile_block(rounded + row * depth, depth, panel, chunks, tail, rows <= 16, sums);
                for (long i = 0; i < rows; i++)
                    memcpy(c + (ic + row + i) * ldc + (column - column_begin), sums + i * PANEL, sizeof(float) * (size_t)cols);
            }
        }
        stitch_finish_rows(c + ic * ldc, ldc, mc, column_end - column_begin, bias, activation);
    }
    TILE_RELEASE();
}

#else

int stitch_amx_available(void) { return 0; }

#endif
