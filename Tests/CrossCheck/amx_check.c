/* Runs amx.c's bfloat16 product on a software tile file, for machines without AMX (Scripts/cross-check, x86-64 hosts):
   the tile configuration it loads is read as LDTILECFG reads it, and each tile operation does what Intel's reference
   says (TDPBF16PS: each row of A's pairs times each column of B's pairs, the even product then the odd one added to the
   single-precision sum). Products of many shapes are compared with a double-precision product of the bfloat16-rounded
   operands; the rows of C past its columns must stay untouched. Built with AddressSanitizer where the compiler has it,
   so a tile read past the packed weights fails. Prints one line; exits 1 on a failure. */
#include "stitch_kernels.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
    int configured;
    unsigned row_bytes[8], rows[8];
} emulated;
static unsigned char tile_file[8][16][64];
static long tile_products;

static void fail(const char *what) {
    printf("amx (emulated tiles): %s FAILED\n", what);
    exit(1);
}

static void configure(const void *memory) {
    const unsigned char *bytes = memory;
    if (bytes[0] != 1) fail("palette is not 1");
    for (int i = 1; i < 64; i++)
        if ((i < 16 || (i >= 32 && i < 48) || i >= 56) && bytes[i] != 0) fail("a reserved configuration byte is set");
    for (int t = 0; t < 8; t++) {
        emulated.row_bytes[t] = bytes[16 + 2 * t] | (unsigned)bytes[17 + 2 * t] << 8;
        emulated.rows[t] = bytes[48 + t];
        if (emulated.row_bytes[t] > 64 || emulated.rows[t] > 16) fail("a tile larger than 16 x 64 bytes");
    }
    emulated.configured = 1;
}

static void require(int tile) {
    if (!emulated.configured) fail("a tile used before the configuration was loaded");
    if (emulated.rows[tile] == 0) fail("an unconfigured tile used");
}

/* Rows and bytes past the configured ones read as zero, as the hardware's do. */
static void load(int tile, const void *base, long stride) {
    require(tile);
    memset(tile_file[tile], 0, sizeof tile_file[tile]);
    for (unsigned r = 0; r < emulated.rows[tile]; r++)
        memcpy(tile_file[tile][r], (const char *)base + r * stride, emulated.row_bytes[tile]);
}

static void store(int tile, void *base, long stride) {
    require(tile);
    for (unsigned r = 0; r < emulated.rows[tile]; r++)
        memcpy((char *)base + r * stride, tile_file[tile][r], emulated.row_bytes[tile]);
}

static void zero(int tile) {
    require(tile);
    memset(tile_file[tile], 0, sizeof tile_file[tile]);
}

static float bf16_value(const unsigned char *pair, int which) {
    uint32_t bits = (uint32_t)(pair[2 * which] | pair[2 * which + 1] << 8) << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static void dot_bf16(int sums, int a, int b) {
    require(sums), require(a), require(b);
    unsigned rows = emulated.rows[sums], columns = emulated.row_bytes[sums] / 4,
             pairs = emulated.row_bytes[a] / 4;
    if (emulated.rows[a] != rows || emulated.row_bytes[b] / 4 != columns || emulated.rows[b] != pairs)
        fail("TDPBF16PS on tiles of mismatched shapes");
    for (unsigned m = 0; m < rows; m++) {
        for (unsigned k = 0; k < pairs; k++) {
            for (unsigned n = 0; n < columns; n++) {
                float sum;
                memcpy(&sum, tile_file[sums][m] + 4 * n, sizeof sum);
                const unsigned char *left = tile_file[a][m] + 4 * k, *right = tile_file[b][k] + 4 * n;
                sum += bf16_value(left, 0) * bf16_value(right, 0);
                sum += bf16_value(left, 1) * bf16_value(right, 1);
                memcpy(tile_file[sums][m] + 4 * n, &sum, sizeof sum);
            }
        }
    }
    tile_products++;
}

#define AMX_TARGET
#define TILE_CONFIGURE(config) configure(config)
#define TILE_RELEASE() (emulated.configured = 0)
#define TILE_ZERO(tile) zero(tile)
#define TILE_LOAD(tile, base, stride) load(tile, base, stride)
#define TILE_STORE(tile, base, stride) store(tile, base, stride)
#define TILE_DOT_BF16(sums, a, b) dot_bf16(sums, a, b)
#include "amx.c"

/* The emulated tiles are always there (bf16.c, linked for its packing, asks). */
int stitch_amx_available(void) { return 1; }

static float noise(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(*state >> 40) / (float)(1 << 23) - 1.0f;
}

static double rounded(float value) {
    uint32_t bits = (uint32_t)stitch_bf16_from_float(value) << 16;
    float widened;
    memcpy(&widened, &bits, sizeof widened);
    return widened;
}

int main(void) {
    /* m past a 16- and a 32-row tile and the 128-row block; k odd, a whole number of 16-pair chunks, and not; n inside
       and past a panel; a column range starting at the second panel. */
    static const long shapes[][5] = {
        /* m, n, k, column_begin, transpose */
        {5, 32, 32, 0, 1}, {16, 33, 64, 0, 0}, {17, 64, 33, 0, 1}, {31, 100, 512, 32, 1}, {33, 40, 7, 0, 0},
        {130, 70, 600, 0, 1}, {300, 96, 1100, 64, 0}, {48, 31, 1, 0, 1},
    };
    unsigned long long state = 11;
    double worst = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], begin = shapes[s][3], transpose = shapes[s][4];
        long ldc = n - begin + 3;
        float *a = malloc(sizeof(float) * (size_t)(m * k)), *w = malloc(sizeof(float) * (size_t)(n * k));
        float *bias = malloc(sizeof(float) * (size_t)n), *c = malloc(sizeof(float) * (size_t)(m * ldc));
        uint16_t *packed = malloc(sizeof(uint16_t) * (size_t)stitch_bf16_packed_count(n, k));
        for (long i = 0; i < m * k; i++) a[i] = noise(&state);
        for (long i = 0; i < n * k; i++) w[i] = noise(&state);
        for (long j = 0; j < n; j++) bias[j] = noise(&state);
        for (long i = 0; i < m * ldc; i++) c[i] = NAN;
        stitch_bf16_pack((int)transpose, n, k, w, transpose ? k : n, packed);
        stitch_amx_bf16_gemm(m, k, a, k, packed, begin, n, c, ldc, bias + begin, STITCH_ACTIVATION_NONE);
        for (long i = 0; i < m; i++) {
            for (long j = begin; j < n; j++) {
                double exact = bias[j], magnitude = fabs(bias[j]);
                for (long p = 0; p < k; p++) {
                    double product = rounded(a[i * k + p]) * rounded(transpose ? w[j * k + p] : w[p * n + j]);
                    exact += product;
                    magnitude += fabs(product);
                }
                double error = fabs(c[i * ldc + j - begin] - exact) / magnitude;
                if (!(error <= (double)k * 1.2e-7)) {
                    printf("m %ld n %ld k %ld at [%ld, %ld]: %g against %g\n", m, n, k, i, j, c[i * ldc + j - begin], exact);
                    fail("a product");
                }
                if (error > worst) worst = error;
            }
            for (long j = n - begin; j < ldc; j++)
                if (!isnan(c[i * ldc + j])) fail("C written past its columns");
        }
        free(a), free(w), free(bias), free(c), free(packed);
    }
    if (emulated.configured) fail("the tiles not released");
    printf("amx (emulated tiles): %ld tile products, max error %.3g of the summed magnitudes ok\n", tile_products, worst);
    return 0;
}
