#if defined(__APPLE__)
/* On macOS the BLAS is Accelerate's CBLAS (its current interface, 32-bit dimensions as OpenBLAS's). The OpenBLAS calls
   Stitch makes have no counterpart there: Accelerate picks its own threads, and reports no configuration. */
#define ACCELERATE_NEW_LAPACK
#include <Accelerate/Accelerate.h>
static inline void openblas_set_num_threads(int threads) { (void)threads; }
static inline char *openblas_get_config(void) { return (char *)"Accelerate"; }
static inline char *openblas_get_corename(void) { return (char *)"Apple"; }
#else
#include <cblas.h>
#endif
