// edgeguard input-sanity statistics: the shared per-element and per-block math.
//
// Layer: guard / kernels. This header is the single source of the arithmetic
// used by BOTH the CUDA device kernel (sanity_kernel.cu, compiled by nvcc) and
// the CPU host harness (host_harness.cpp, compiled by a plain C++ compiler).
// Every function is `EG_HD` (= `__host__ __device__` under nvcc, nothing under
// g++/clang), so the host harness exercises exactly the code the GPU runs.
//
// Statistics (spec: issue #3, docs/kernels.md): per frame n and channel c, in
// one pass, accumulating in double (int64 for counts): nan/posinf/neginf
// counts, finite count, min/max over finite values, mean and population std
// (shifted double sums per thread, shift = first finite value that thread saw,
// merged with Chan's parallel formula), saturation fractions (<= lo, >= hi),
// horizontal high-frequency energy (mean |x[h,w+1]-x[h,w]| over finite pairs,
// divided by std + eps after the pass) and the temporal difference against a
// previous frame (mean |x - prev| over finite pairs).
//
// Must NOT be compiled with fast-math (-ffast-math, --use_fast_math): the
// NaN/Inf classification relies on IEEE comparisons.
#ifndef EDGEGUARD_SANITY_MATH_CUH
#define EDGEGUARD_SANITY_MATH_CUH

#include <float.h>
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define EG_HD __host__ __device__
#else
#define EG_HD
#endif

#define EG_SANITY_ABI_VERSION 1

// Input dtype codes (shared with edgeguard/guard/sanity/cuda_cpp.py).
enum EgDtype { EG_U8 = 0, EG_F16 = 1, EG_F32 = 2, EG_F64 = 3 };
// Layout codes. Rank-2 and rank-3 inputs are mapped onto these by the caller.
enum EgLayout { EG_NCHW = 0, EG_NHWC = 1 };

// Work-group shape. The device kernel and the host emulation both use warps of
// EG_WARP lanes and at most EG_MAX_THREADS threads per block.
#define EG_WARP 32
#define EG_MAX_THREADS 256
#define EG_DEFAULT_THREADS 256
// A block (tile of rows of one (frame, channel) plane) covers about this many
// elements; see eg_default_rows_per_tile.
#define EG_TILE_ELEMS 8192

// Per-thread accumulator: shifted sums relative to the first finite value seen.
struct EgAcc {
  int64_t count, nan, posinf, neginf, sat_lo, sat_hi, hf_pairs, td_count;
  double shift, s1, s2, min, max, hf_sum, td_sum;
};

// Mergeable partial: (count, mean, M2) plus the additive and min/max fields.
// All fields are 8 bytes: no padding, identical layout on host and device.
struct EgPartial {
  int64_t count, nan, posinf, neginf, sat_lo, sat_hi, hf_pairs, td_count;
  double min, max, mean, m2, hf_sum, td_sum;
};

// Final per-(frame, channel) statistics. nan/posinf/neginf are the counts of
// this channel; per-frame counts are their sum over channels (done by caller).
struct EgStats {
  int64_t count, nan, posinf, neginf;
  double min, max, mean, std, sat_lo, sat_hi, hf, tdiff;
};

static_assert(sizeof(EgPartial) == 112, "EgPartial must be 14 packed 8-byte fields");
static_assert(sizeof(EgStats) == 96, "EgStats must be 12 packed 8-byte fields");

EG_HD inline double eg_inf() { return HUGE_VAL; }
EG_HD inline double eg_nan() { return (double)NAN; }

// ---------------------------------------------------------------- elements --

// Exact float16 (IEEE binary16 bits) -> double.
EG_HD inline double eg_half_bits_to_double(uint16_t bits) {
#if defined(__CUDA_ARCH__)
  return (double)__half2float(__ushort_as_half(bits));
#else
  const unsigned sign = bits >> 15;
  const unsigned expo = (bits >> 10) & 0x1fu;
  const unsigned mant = bits & 0x3ffu;
  double v;
  if (expo == 0) {
    v = ldexp((double)mant, -24);  // zero or subnormal
  } else if (expo == 31) {
    v = mant ? eg_nan() : eg_inf();
  } else {
    v = ldexp((double)(mant | 0x400u), (int)expo - 25);
  }
  return sign ? -v : v;
#endif
}

// Loaders: one per input dtype; `T` is the storage type, load() is exact.
struct EgLoadU8 {
  typedef uint8_t T;
  EG_HD static double load(const T* p, int64_t i) { return (double)p[i]; }
};
struct EgLoadF16 {
  typedef uint16_t T;  // binary16 bits
  EG_HD static double load(const T* p, int64_t i) { return eg_half_bits_to_double(p[i]); }
};
struct EgLoadF32 {
  typedef float T;
  EG_HD static double load(const T* p, int64_t i) { return (double)p[i]; }
};
struct EgLoadF64 {
  typedef double T;
  EG_HD static double load(const T* p, int64_t i) { return p[i]; }
};

// a / n for a count n (a positive integer < 2^53). On the device this is the
// Newton-Raphson sequence of the IEEE division fast path without its slow-path
// subroutine call: that call makes ptxas save registers to the stack (local
// memory spills). For these operands (n >= 1 integral, a finite) the fast
// path is the whole story; the result equals a / n within 1 ulp.
EG_HD inline double eg_div_count(double a, double n) {
#if defined(__CUDA_ARCH__)
  double r;
  asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(n));
  double e = fma(-n, r, 1.0);
  r = fma(r, e, r);
  e = fma(-n, r, 1.0);
  r = fma(r, e, r);
  const double q = a * r;
  const double rem = fma(-n, q, a);
  return fma(rem, r, q);
#else
  return a / n;
#endif
}

EG_HD inline bool eg_is_finite(double v) { return v == v && v <= DBL_MAX && v >= -DBL_MAX; }

// ------------------------------------------------------------- accumulate --

EG_HD inline void eg_acc_init(EgAcc& a) {
  a.count = a.nan = a.posinf = a.neginf = 0;
  a.sat_lo = a.sat_hi = a.hf_pairs = a.td_count = 0;
  a.shift = a.s1 = a.s2 = 0.0;
  a.min = eg_inf();
  a.max = -eg_inf();
  a.hf_sum = a.td_sum = 0.0;
}

// One element value (already converted exactly to double).
EG_HD inline void eg_acc_value(EgAcc& a, double v, double lo, double hi) {
  if (v != v) {
    a.nan += 1;
    return;
  }
  if (v > DBL_MAX) {
    a.posinf += 1;
    return;
  }
  if (v < -DBL_MAX) {
    a.neginf += 1;
    return;
  }
  if (a.count == 0) a.shift = v;
  const double d = v - a.shift;
  a.s1 += d;
  a.s2 += d * d;
  a.count += 1;
  if (v < a.min) a.min = v;
  if (v > a.max) a.max = v;
  if (v <= lo) a.sat_lo += 1;
  if (v >= hi) a.sat_hi += 1;
}

// One horizontal neighbour pair (x[h,w], x[h,w+1]).
EG_HD inline void eg_acc_pair(EgAcc& a, double left, double right) {
  if (eg_is_finite(left) && eg_is_finite(right)) {
    a.hf_sum += fabs(right - left);
    a.hf_pairs += 1;
  }
}

// One temporal pair (x, prev) at the same position.
EG_HD inline void eg_acc_tdiff(EgAcc& a, double v, double p) {
  if (eg_is_finite(v) && eg_is_finite(p)) {
    a.td_sum += fabs(v - p);
    a.td_count += 1;
  }
}

EG_HD inline void eg_partial_empty(EgPartial& p) {
  p.count = p.nan = p.posinf = p.neginf = 0;
  p.sat_lo = p.sat_hi = p.hf_pairs = p.td_count = 0;
  p.min = eg_inf();
  p.max = -eg_inf();
  p.mean = p.m2 = p.hf_sum = p.td_sum = 0.0;
}

EG_HD inline EgPartial eg_acc_to_partial(const EgAcc& a) {
  EgPartial p;
  p.count = a.count;
  p.nan = a.nan;
  p.posinf = a.posinf;
  p.neginf = a.neginf;
  p.sat_lo = a.sat_lo;
  p.sat_hi = a.sat_hi;
  p.hf_pairs = a.hf_pairs;
  p.td_count = a.td_count;
  p.min = a.min;
  p.max = a.max;
  p.hf_sum = a.hf_sum;
  p.td_sum = a.td_sum;
  if (a.count > 0) {
    const double n = (double)a.count;
    const double m1 = eg_div_count(a.s1, n);
    p.mean = a.shift + m1;
    const double m2 = a.s2 - a.s1 * m1;
    p.m2 = m2 > 0.0 ? m2 : 0.0;
  } else {
    p.mean = 0.0;
    p.m2 = 0.0;
  }
  return p;
}

// Chan et al. parallel merge. merge(a, empty) and merge(empty, b) are exact
// identities, so padding a reduction with empty partials changes nothing.
EG_HD inline EgPartial eg_merge(const EgPartial& a, const EgPartial& b) {
  EgPartial r;
  r.count = a.count + b.count;
  r.nan = a.nan + b.nan;
  r.posinf = a.posinf + b.posinf;
  r.neginf = a.neginf + b.neginf;
  r.sat_lo = a.sat_lo + b.sat_lo;
  r.sat_hi = a.sat_hi + b.sat_hi;
  r.hf_pairs = a.hf_pairs + b.hf_pairs;
  r.td_count = a.td_count + b.td_count;
  r.min = b.min < a.min ? b.min : a.min;
  r.max = b.max > a.max ? b.max : a.max;
  r.hf_sum = a.hf_sum + b.hf_sum;
  r.td_sum = a.td_sum + b.td_sum;
  if (b.count == 0) {
    r.mean = a.mean;
    r.m2 = a.m2;
  } else if (a.count == 0) {
    r.mean = b.mean;
    r.m2 = b.m2;
  } else {
    const double na = (double)a.count;
    const double nb = (double)b.count;
    const double n = na + nb;
    const double delta = b.mean - a.mean;
    r.mean = a.mean + delta * eg_div_count(nb, n);
    r.m2 = a.m2 + b.m2 + delta * delta * eg_div_count(na, n) * nb;
  }
  return r;
}

EG_HD inline EgStats eg_finalize(const EgPartial& p, double lo, double hi, bool has_prev) {
  EgStats s;
  s.count = p.count;
  s.nan = p.nan;
  s.posinf = p.posinf;
  s.neginf = p.neginf;
  s.min = p.min;
  s.max = p.max;
  const double span = fabs(hi - lo);
  const double eps = 1e-6 * (span > 1.0 ? span : 1.0);
  if (p.count > 0) {
    const double n = (double)p.count;
    s.mean = p.mean;
    s.std = sqrt(p.m2 / n);
    s.sat_lo = (double)p.sat_lo / n;
    s.sat_hi = (double)p.sat_hi / n;
    s.hf = p.hf_pairs > 0 ? (p.hf_sum / (double)p.hf_pairs) / (s.std + eps) : 0.0;
  } else {
    s.mean = eg_nan();
    s.std = eg_nan();
    s.sat_lo = 0.0;
    s.sat_hi = 0.0;
    s.hf = 0.0;
  }
  s.tdiff = (has_prev && p.td_count > 0) ? p.td_sum / (double)p.td_count : eg_nan();
  return s;
}

// --------------------------------------------------------------- traversal --

// Rows of one (frame, channel) plane handled by one block.
EG_HD inline int64_t eg_default_rows_per_tile(int64_t h, int64_t w) {
  int64_t r = w > 0 ? (EG_TILE_ELEMS + w - 1) / w : 1;
  if (r > h) r = h;
  return r < 1 ? 1 : r;
}

EG_HD inline int64_t eg_num_tiles(int64_t h, int64_t rows_per_tile) {
  return h > 0 ? (h + rows_per_tile - 1) / rows_per_tile : 0;
}

// Offset of x[n, c, h=r0, w=0] and the element stride along a row.
template <int LAYOUT>
EG_HD inline int64_t eg_row_stride(int64_t C) {
  return LAYOUT == EG_NCHW ? 1 : C;
}
template <int LAYOUT>
EG_HD inline int64_t eg_tile_base(int64_t n, int64_t c, int64_t r0, int64_t C, int64_t H,
                                  int64_t W) {
  return LAYOUT == EG_NCHW ? ((n * C + c) * H + r0) * W : ((n * H + r0) * W) * C + c;
}

// The work of ONE thread `tid` of a block of `nthreads` over rows [r0, r1) of
// plane (n, c). The rows of a tile are contiguous along w in both layouts (a
// row of an NHWC plane is strided by C), so the tile is walked as a flat index
// i = tid, tid + nthreads, ... while the column w is tracked incrementally to
// know whether the right neighbour x[h, w+1] exists (pairs never cross rows).
template <class L, int LAYOUT>
EG_HD inline EgAcc eg_thread_pass(const typename L::T* x, const typename L::T* prev, int64_t n,
                                  int64_t c, int64_t C, int64_t H, int64_t W, int64_t r0,
                                  int64_t r1, int tid, int nthreads, double lo, double hi) {
  EgAcc acc;
  eg_acc_init(acc);
  if (W <= 0 || r1 <= r0) return acc;
  const int64_t total = (r1 - r0) * W;
  const int64_t stride = eg_row_stride<LAYOUT>(C);
  const int64_t base = eg_tile_base<LAYOUT>(n, c, r0, C, H, W);
  // 32-bit remainders only (a 64-bit one is a subroutine call on the device):
  // when W > nthreads > tid the remainders are the identity.
  const bool narrow = W > (int64_t)nthreads;
  const int64_t step_w = narrow ? (int64_t)nthreads : (int64_t)(nthreads % (int)W);
  const int64_t step_off = (int64_t)nthreads * stride;
  int64_t w = narrow ? (int64_t)tid : (int64_t)(tid % (int)W);
  int64_t off = base + (int64_t)tid * stride;
  // No unrolling: an unrolled loop needs its trip count, a 64-bit division
  // (a subroutine call that makes ptxas spill on sm_110). The block keeps
  // enough warps in flight to hide load latency without it.
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
  for (int64_t i = tid; i < total; i += nthreads) {
    const double v = L::load(x, off);
    eg_acc_value(acc, v, lo, hi);
    if (w + 1 < W) eg_acc_pair(acc, v, L::load(x, off + stride));
    if (prev != 0) eg_acc_tdiff(acc, v, L::load(prev, off));
    off += step_off;
    w += step_w;
    if (w >= W) w -= W;
  }
  return acc;
}

#endif  // EDGEGUARD_SANITY_MATH_CUH
