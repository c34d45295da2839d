// edgeguard input-sanity statistics: C ABI of the CPU host harness.
//
// Layer: guard / kernels. Implemented in host_harness.cpp, built as
// libedgeguard_sanity_host.so and loaded with ctypes by
// edgeguard/guard/sanity/cuda_cpp.py (HostHarness).
#ifndef EDGEGUARD_SANITY_HOST_H
#define EDGEGUARD_SANITY_HOST_H

#include <stdint.h>

#include "sanity_math.cuh"

#ifdef __cplusplus
extern "C" {
#endif

// Return codes of eg_sanity_host_stats.
#define EG_OK 0
#define EG_ERR_DTYPE 1
#define EG_ERR_LAYOUT 2
#define EG_ERR_SHAPE 3
#define EG_ERR_THREADS 4
#define EG_ERR_NULL 5

// EG_SANITY_ABI_VERSION; callers refuse a library with another version.
int eg_sanity_abi_version(void);
// sizeof(EgStats) (96): callers check their record layout against it.
int64_t eg_sanity_stats_size(void);
// The default rows per block used by the device launch plan.
int64_t eg_sanity_default_rows_per_tile(int64_t h, int64_t w);

// Statistics of x viewed as [n, c, h, w] frames in `layout` (EgLayout) of
// `dtype` (EgDtype; float16 passed as its 16-bit patterns). `prev` is NULL or a
// buffer of the same shape/dtype/layout. The CPU emulates the device launch:
// blocks of `block_threads` threads (a multiple of 32, at most
// EG_MAX_THREADS) over tiles of `rows_per_tile` rows (<= 0: the default), the
// same warp/block reduction trees and the same tile merge order. Writes n*c
// records (index n*c_count + c) to `out`. Returns EG_OK or an EG_ERR_* code;
// `out` is untouched on error.
int eg_sanity_host_stats(const void* x, int dtype, int layout, int64_t n, int64_t c, int64_t h,
                         int64_t w, const void* prev, double sat_lo, double sat_hi,
                         int block_threads, int64_t rows_per_tile, EgStats* out);

#ifdef __cplusplus
}
#endif

#endif  // EDGEGUARD_SANITY_HOST_H
