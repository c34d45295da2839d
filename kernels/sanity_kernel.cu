// edgeguard input-sanity statistics: CUDA device kernels.
//
// Layer: guard / kernels. Loaded at run time from a cubin/fatbin by
// edgeguard/guard/sanity/cuda_cpp.py (pycuda). All arithmetic lives in
// sanity_math.cuh and is shared with the CPU host harness.
//
// Launch plan (two kernels):
//   1. eg_sanity_partials_<dtype>_<layout>: grid (tiles * C, 1, frames in
//      chunk), block of EG_DEFAULT_THREADS (multiple of 32, <= EG_MAX_THREADS).
//      Block (x = t*C + c, z) reduces rows [t*rpt, min(H, (t+1)*rpt)) of
//      plane (n0+z, c):
//      every thread runs eg_thread_pass, then a warp tree (shuffle-down
//      16, 8, 4, 2, 1), then warp 0 runs the same tree over the (padded) warp
//      partials from shared memory. Thread 0 writes one EgPartial to
//      partials[(n*C + c)*tiles + t].
//   2. eg_sanity_merge: one thread per (n, c) merges its tiles in tile order
//      and writes the finalized EgStats.
// The order of every merge is fixed, so results are deterministic and the
// host harness reproduces the same reduction tree.
#include "sanity_math.cuh"

namespace {

__device__ __forceinline__ EgPartial eg_shfl_down(const EgPartial& p, unsigned off) {
  const unsigned m = 0xffffffffu;
  EgPartial o;
  o.count = __shfl_down_sync(m, (long long)p.count, off);
  o.nan = __shfl_down_sync(m, (long long)p.nan, off);
  o.posinf = __shfl_down_sync(m, (long long)p.posinf, off);
  o.neginf = __shfl_down_sync(m, (long long)p.neginf, off);
  o.sat_lo = __shfl_down_sync(m, (long long)p.sat_lo, off);
  o.sat_hi = __shfl_down_sync(m, (long long)p.sat_hi, off);
  o.hf_pairs = __shfl_down_sync(m, (long long)p.hf_pairs, off);
  o.td_count = __shfl_down_sync(m, (long long)p.td_count, off);
  o.min = __shfl_down_sync(m, p.min, off);
  o.max = __shfl_down_sync(m, p.max, off);
  o.mean = __shfl_down_sync(m, p.mean, off);
  o.m2 = __shfl_down_sync(m, p.m2, off);
  o.hf_sum = __shfl_down_sync(m, p.hf_sum, off);
  o.td_sum = __shfl_down_sync(m, p.td_sum, off);
  return o;
}

// Tree over the 32 lanes of a warp: lane i merges lane i + off, off = 16..1.
// Must be called by all 32 lanes. Result is valid in lane 0.
__device__ __forceinline__ EgPartial eg_warp_reduce(EgPartial p, unsigned lane) {
  for (unsigned off = EG_WARP / 2; off > 0; off >>= 1) {
    const EgPartial o = eg_shfl_down(p, off);
    if (lane < off) p = eg_merge(p, o);
  }
  return p;
}

template <class L, int LAYOUT>
__device__ __forceinline__ void eg_partials_body(const typename L::T* __restrict__ x,
                                                 const typename L::T* __restrict__ prev,
                                                 EgPartial* __restrict__ partials, long long n0,
                                                 long long C, long long H, long long W,
                                                 long long rows_per_tile, long long tiles,
                                                 double lo, double hi) {
  __shared__ EgPartial warp_partials[EG_MAX_THREADS / EG_WARP];
  // Channel is the fastest-varying block index: the C blocks of one tile run
  // side by side, so in NHWC (channels interleaved in memory) they share the
  // same cache lines in L2 instead of each pulling the tile from DRAM.
  const unsigned cc = (unsigned)C;
  const long long t = blockIdx.x / cc;
  const long long c = blockIdx.x % cc;
  const long long n = n0 + blockIdx.z;
  const long long r0 = t * rows_per_tile;
  long long r1 = r0 + rows_per_tile;
  if (r1 > H) r1 = H;
  const int tid = (int)threadIdx.x;
  const int nthreads = (int)blockDim.x;

  const EgAcc acc =
      eg_thread_pass<L, LAYOUT>(x, prev, n, c, C, H, W, r0, r1, tid, nthreads, lo, hi);
  const unsigned lane = (unsigned)tid % EG_WARP;
  const unsigned warp = (unsigned)tid / EG_WARP;
  EgPartial p = eg_warp_reduce(eg_acc_to_partial(acc), lane);
  if (lane == 0) warp_partials[warp] = p;
  __syncthreads();
  if (warp == 0) {
    const unsigned nwarps = (unsigned)nthreads / EG_WARP;
    if (lane < nwarps) {
      p = warp_partials[lane];
    } else {
      eg_partial_empty(p);
    }
    p = eg_warp_reduce(p, lane);
    if (lane == 0) partials[(n * C + c) * tiles + t] = p;
  }
}

}  // namespace

#define EG_DEFINE_PARTIALS(NAME, LOADER, LAYOUT)                                              \
  extern "C" __global__ void __launch_bounds__(EG_MAX_THREADS)                                \
      NAME(const LOADER::T* __restrict__ x, const LOADER::T* __restrict__ prev,               \
           EgPartial* __restrict__ partials, long long n0, long long C, long long H,          \
           long long W, long long rows_per_tile, long long tiles, double lo, double hi) {     \
    eg_partials_body<LOADER, LAYOUT>(x, prev, partials, n0, C, H, W, rows_per_tile, tiles, lo, \
                                     hi);                                                     \
  }

EG_DEFINE_PARTIALS(eg_sanity_partials_u8_nchw, EgLoadU8, EG_NCHW)
EG_DEFINE_PARTIALS(eg_sanity_partials_u8_nhwc, EgLoadU8, EG_NHWC)
EG_DEFINE_PARTIALS(eg_sanity_partials_f16_nchw, EgLoadF16, EG_NCHW)
EG_DEFINE_PARTIALS(eg_sanity_partials_f16_nhwc, EgLoadF16, EG_NHWC)
EG_DEFINE_PARTIALS(eg_sanity_partials_f32_nchw, EgLoadF32, EG_NCHW)
EG_DEFINE_PARTIALS(eg_sanity_partials_f32_nhwc, EgLoadF32, EG_NHWC)
EG_DEFINE_PARTIALS(eg_sanity_partials_f64_nchw, EgLoadF64, EG_NCHW)
EG_DEFINE_PARTIALS(eg_sanity_partials_f64_nhwc, EgLoadF64, EG_NHWC)

// One thread per (frame, channel) plane: merge tiles in order, finalize.
extern "C" __global__ void __launch_bounds__(EG_MAX_THREADS)
    eg_sanity_merge(const EgPartial* __restrict__ partials, EgStats* __restrict__ out,
                    long long planes, long long tiles, double lo, double hi, int has_prev) {
  const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= planes) return;
  EgPartial p;
  eg_partial_empty(p);
  for (long long t = 0; t < tiles; ++t) p = eg_merge(p, partials[k * tiles + t]);
  out[k] = eg_finalize(p, lo, hi, has_prev != 0);
}
