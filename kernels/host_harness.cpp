// edgeguard input-sanity statistics: CPU host harness (C ABI).
//
// Layer: guard / kernels. Runs the device algorithm on the CPU through the
// same sanity_math.cuh: every block of the launch plan is emulated thread by
// thread (eg_thread_pass), reduced with the same warp tree (lane i merges lane
// i + off, off = 16..1), the same block tree over the padded warp partials,
// and the tiles of a plane are merged in tile order, then finalized. Used by
// ctest (sanity_host_test) and by the Python test suite to check the kernel
// math against the NumPy reference without a GPU.
#include "sanity_host.h"

namespace {

EgPartial host_warp_reduce(EgPartial* p) {
  for (int off = EG_WARP / 2; off > 0; off >>= 1) {
    for (int lane = 0; lane < off; ++lane) p[lane] = eg_merge(p[lane], p[lane + off]);
  }
  return p[0];
}

template <class L, int LAYOUT>
EgPartial host_block(const typename L::T* x, const typename L::T* prev, int64_t n, int64_t c,
                     int64_t C, int64_t H, int64_t W, int64_t r0, int64_t r1, int nthreads,
                     double lo, double hi) {
  EgPartial lanes[EG_MAX_THREADS];
  for (int tid = 0; tid < nthreads; ++tid) {
    lanes[tid] = eg_acc_to_partial(
        eg_thread_pass<L, LAYOUT>(x, prev, n, c, C, H, W, r0, r1, tid, nthreads, lo, hi));
  }
  EgPartial warps[EG_WARP];
  const int nwarps = nthreads / EG_WARP;
  for (int wi = 0; wi < EG_WARP; ++wi) {
    if (wi < nwarps) {
      warps[wi] = host_warp_reduce(&lanes[wi * EG_WARP]);
    } else {
      eg_partial_empty(warps[wi]);
    }
  }
  return host_warp_reduce(warps);
}

template <class L, int LAYOUT>
void host_stats(const void* xv, const void* pv, int64_t N, int64_t C, int64_t H, int64_t W,
                double lo, double hi, int nthreads, int64_t rpt, EgStats* out) {
  const typename L::T* x = static_cast<const typename L::T*>(xv);
  const typename L::T* prev = static_cast<const typename L::T*>(pv);
  const int64_t tiles = eg_num_tiles(H, rpt);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      EgPartial p;
      eg_partial_empty(p);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * rpt;
        const int64_t r1 = r0 + rpt < H ? r0 + rpt : H;
        p = eg_merge(p, host_block<L, LAYOUT>(x, prev, n, c, C, H, W, r0, r1, nthreads, lo, hi));
      }
      out[n * C + c] = eg_finalize(p, lo, hi, prev != nullptr);
    }
  }
}

template <class L>
int dispatch_layout(int layout, const void* x, const void* prev, int64_t n, int64_t c, int64_t h,
                    int64_t w, double lo, double hi, int nthreads, int64_t rpt, EgStats* out) {
  if (layout == EG_NCHW) {
    host_stats<L, EG_NCHW>(x, prev, n, c, h, w, lo, hi, nthreads, rpt, out);
  } else {
    host_stats<L, EG_NHWC>(x, prev, n, c, h, w, lo, hi, nthreads, rpt, out);
  }
  return EG_OK;
}

}  // namespace

extern "C" int eg_sanity_abi_version(void) { return EG_SANITY_ABI_VERSION; }

extern "C" int64_t eg_sanity_stats_size(void) { return (int64_t)sizeof(EgStats); }

extern "C" int64_t eg_sanity_default_rows_per_tile(int64_t h, int64_t w) {
  return eg_default_rows_per_tile(h, w);
}

extern "C" int eg_sanity_host_stats(const void* x, int dtype, int layout, int64_t n, int64_t c,
                                    int64_t h, int64_t w, const void* prev, double sat_lo,
                                    double sat_hi, int block_threads, int64_t rows_per_tile,
                                    EgStats* out) {
  if (dtype < EG_U8 || dtype > EG_F64) return EG_ERR_DTYPE;
  if (layout != EG_NCHW && layout != EG_NHWC) return EG_ERR_LAYOUT;
  if (n < 0 || c < 0 || h < 0 || w < 0) return EG_ERR_SHAPE;
  if (block_threads < EG_WARP || block_threads > EG_MAX_THREADS ||
      block_threads % EG_WARP != 0) {
    return EG_ERR_THREADS;
  }
  if (rows_per_tile <= 0) rows_per_tile = eg_default_rows_per_tile(h, w);
  if (n * c == 0) return EG_OK;
  if (out == nullptr) return EG_ERR_NULL;
  if (x == nullptr && h * w > 0) return EG_ERR_NULL;
  switch (dtype) {
    case EG_U8:
      return dispatch_layout<EgLoadU8>(layout, x, prev, n, c, h, w, sat_lo, sat_hi,
                                       block_threads, rows_per_tile, out);
    case EG_F16:
      return dispatch_layout<EgLoadF16>(layout, x, prev, n, c, h, w, sat_lo, sat_hi,
                                        block_threads, rows_per_tile, out);
    case EG_F32:
      return dispatch_layout<EgLoadF32>(layout, x, prev, n, c, h, w, sat_lo, sat_hi,
                                        block_threads, rows_per_tile, out);
    default:
      return dispatch_layout<EgLoadF64>(layout, x, prev, n, c, h, w, sat_lo, sat_hi,
                                        block_threads, rows_per_tile, out);
  }
}
