// edgeguard input-sanity statistics: self-contained checks of the host harness.
//
// Layer: guard / kernels (ctest). Every expected value below is derived by
// hand in the comment next to it; no value is produced by the code under test.
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "sanity_host.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void fail(const char* where, const char* what, double got, double want) {
  ++g_failures;
  fprintf(stderr, "FAIL %s: %s = %.17g, expected %.17g\n", where, what, got, want);
}

void expect_i(const char* where, const char* what, int64_t got, int64_t want) {
  ++g_checks;
  if (got != want) fail(where, what, (double)got, (double)want);
}

// Exact equality; -0.0 == +0.0; NaN matches NaN.
void expect_eq(const char* where, const char* what, double got, double want) {
  ++g_checks;
  const bool ok = (isnan(got) && isnan(want)) || got == want;
  if (!ok) fail(where, what, got, want);
}

void expect_near(const char* where, const char* what, double got, double want, double rtol) {
  ++g_checks;
  if (!(fabs(got - want) <= rtol * fabs(want) + 1e-300)) fail(where, what, got, want);
}

EgStats run1(const void* x, int dtype, int layout, int64_t n, int64_t c, int64_t h, int64_t w,
             const void* prev, double lo, double hi, int threads = 256, int64_t rpt = 0) {
  EgStats s;
  memset(&s, 0, sizeof(s));
  const int rc = eg_sanity_host_stats(x, dtype, layout, n, c, h, w, prev, lo, hi, threads, rpt, &s);
  expect_i("run1", "return code", rc, EG_OK);
  return s;
}

void test_mixed_f32() {
  // One 2x3 plane: row 0 = 1, 2, 4; row 1 = NaN, +inf, -inf.
  const float x[6] = {1.0f, 2.0f, 4.0f, NAN, INFINITY, -INFINITY};
  const EgStats s = run1(x, EG_F32, EG_NCHW, 1, 1, 2, 3, nullptr, 0.0, 1.0);
  const char* t = "mixed_f32";
  expect_i(t, "count", s.count, 3);
  expect_i(t, "nan", s.nan, 1);
  expect_i(t, "posinf", s.posinf, 1);
  expect_i(t, "neginf", s.neginf, 1);
  expect_eq(t, "min", s.min, 1.0);
  expect_eq(t, "max", s.max, 4.0);
  expect_near(t, "mean", s.mean, 7.0 / 3.0, 1e-15);
  // deviations -4/3, -1/3, 5/3: squares sum 42/9, / 3 = 14/9.
  expect_near(t, "std", s.std, sqrt(14.0) / 3.0, 1e-15);
  expect_eq(t, "sat_lo", s.sat_lo, 0.0);  // none <= 0
  expect_eq(t, "sat_hi", s.sat_hi, 1.0);  // all three >= 1
  // finite pairs: (1,2), (2,4) -> mean |diff| = 1.5; row 1 has none.
  expect_near(t, "hf", s.hf, 1.5 / (sqrt(14.0) / 3.0 + 1e-6), 1e-15);
  expect_eq(t, "tdiff", s.tdiff, NAN);  // no prev
}

void test_all_nan_and_empty() {
  const float x[4] = {NAN, NAN, NAN, NAN};
  EgStats s = run1(x, EG_F32, EG_NCHW, 1, 1, 2, 2, nullptr, 0.0, 1.0);
  const char* t = "all_nan";
  expect_i(t, "count", s.count, 0);
  expect_i(t, "nan", s.nan, 4);
  expect_eq(t, "min", s.min, HUGE_VAL);
  expect_eq(t, "max", s.max, -HUGE_VAL);
  expect_eq(t, "mean", s.mean, NAN);
  expect_eq(t, "std", s.std, NAN);
  expect_eq(t, "sat_lo", s.sat_lo, 0.0);
  expect_eq(t, "sat_hi", s.sat_hi, 0.0);
  expect_eq(t, "hf", s.hf, 0.0);
  // Empty planes (W = 0 and H = 0): counts 0, no data read.
  for (int64_t h : {int64_t(0), int64_t(3)}) {
    s = run1(nullptr, EG_U8, EG_NHWC, 1, 1, h, h == 0 ? 5 : 0, nullptr, 0.0, 255.0);
    t = "empty";
    expect_i(t, "count", s.count, 0);
    expect_i(t, "nan", s.nan + s.posinf + s.neginf, 0);
    expect_eq(t, "mean", s.mean, NAN);
    expect_eq(t, "hf", s.hf, 0.0);
    expect_eq(t, "min", s.min, HUGE_VAL);
  }
}

void test_single_and_zeros() {
  const double one[1] = {5.0};
  EgStats s = run1(one, EG_F64, EG_NCHW, 1, 1, 1, 1, nullptr, 0.0, 1.0);
  const char* t = "single";
  expect_i(t, "count", s.count, 1);
  expect_eq(t, "mean", s.mean, 5.0);
  expect_eq(t, "std", s.std, 0.0);
  expect_eq(t, "min", s.min, 5.0);
  expect_eq(t, "sat_hi", s.sat_hi, 1.0);
  expect_eq(t, "hf", s.hf, 0.0);  // no pair
  // -0.0 and +0.0 compare equal: min = max = 0, both <= lo = 0.
  const float z[2] = {-0.0f, 0.0f};
  s = run1(z, EG_F32, EG_NCHW, 1, 1, 1, 2, nullptr, 0.0, 1.0);
  t = "signed_zeros";
  expect_eq(t, "min", s.min, 0.0);
  expect_eq(t, "max", s.max, 0.0);
  expect_eq(t, "mean", s.mean, 0.0);
  expect_eq(t, "std", s.std, 0.0);
  expect_eq(t, "sat_lo", s.sat_lo, 1.0);
  expect_eq(t, "hf", s.hf, 0.0);  // |0 - (-0)| = 0
}

void test_denormal_and_huge() {
  // Smallest float32 subnormal d = 2^-149, and 0: mean d/2, std d/2 (exact in
  // double), min 0, max d, one pair |d - 0| = d.
  float d;
  const uint32_t bits = 1u;
  memcpy(&d, &bits, sizeof(d));
  const float x[2] = {d, 0.0f};
  EgStats s = run1(x, EG_F32, EG_NCHW, 1, 1, 1, 2, nullptr, 0.0, 1.0);
  const char* t = "denormal";
  const double dd = ldexp(1.0, -149);
  expect_eq(t, "max", s.max, dd);
  expect_eq(t, "min", s.min, 0.0);
  expect_eq(t, "mean", s.mean, dd / 2);
  expect_eq(t, "std", s.std, dd / 2);
  expect_eq(t, "sat_lo", s.sat_lo, 0.5);
  expect_near(t, "hf", s.hf, dd / (dd / 2 + 1e-6), 1e-15);
  // F = FLT_MAX and -F: shift F, shifted values 0 and -2F; mean 0, M2 = 2F^2
  // (F^2 has 48 significant bits: exact in double), std = F.
  const float hx[2] = {FLT_MAX, -FLT_MAX};
  s = run1(hx, EG_F32, EG_NCHW, 1, 1, 1, 2, nullptr, 0.0, 1.0);
  t = "huge";
  expect_i(t, "count", s.count, 2);
  expect_eq(t, "mean", s.mean, 0.0);
  expect_eq(t, "std", s.std, (double)FLT_MAX);
  expect_eq(t, "sat_lo", s.sat_lo, 0.5);
  expect_eq(t, "sat_hi", s.sat_hi, 0.5);
  expect_near(t, "hf", s.hf, 2.0 * FLT_MAX / (FLT_MAX + 1e-6), 1e-15);
}

void test_uint8_nhwc() {
  // One frame, H=2, W=2, C=3, element (h, w, c). Channel 0 = 0, 10, 20, 255;
  // channel 1 = 7 everywhere; channel 2 = 255, 0, 0, 255.
  const uint8_t x[12] = {0, 7, 255, 10, 7, 0, 20, 7, 0, 255, 7, 255};
  EgStats s[3];
  const int rc = eg_sanity_host_stats(x, EG_U8, EG_NHWC, 1, 3, 2, 2, nullptr, 0.0, 255.0, 64, 1, s);
  expect_i("u8", "rc", rc, EG_OK);
  // c0: mean 285/4 = 71.25; deviations -71.25, -61.25, -51.25, 183.75:
  // sum of squares 5076.5625 + 3751.5625 + 2626.5625 + 33764.0625 = 45218.75,
  // / 4 = 11304.6875. pairs: |10-0|, |255-20| -> mean 122.5. eps = 255e-6.
  expect_i("u8 c0", "count", s[0].count, 4);
  expect_eq("u8 c0", "mean", s[0].mean, 71.25);
  expect_near("u8 c0", "std", s[0].std, sqrt(11304.6875), 1e-15);
  expect_eq("u8 c0", "min", s[0].min, 0.0);
  expect_eq("u8 c0", "max", s[0].max, 255.0);
  expect_eq("u8 c0", "sat_lo", s[0].sat_lo, 0.25);
  expect_eq("u8 c0", "sat_hi", s[0].sat_hi, 0.25);
  expect_near("u8 c0", "hf", s[0].hf, 122.5 / (sqrt(11304.6875) + 255e-6), 1e-15);
  // c1: constant 7: std 0, hf = 0 / eps = 0, no saturation.
  expect_eq("u8 c1", "mean", s[1].mean, 7.0);
  expect_eq("u8 c1", "std", s[1].std, 0.0);
  expect_eq("u8 c1", "hf", s[1].hf, 0.0);
  expect_eq("u8 c1", "sat_lo", s[1].sat_lo, 0.0);
  // c2: mean 127.5, std 127.5, pairs |0-255|, |255-0| -> 255.
  expect_eq("u8 c2", "mean", s[2].mean, 127.5);
  expect_eq("u8 c2", "std", s[2].std, 127.5);
  expect_eq("u8 c2", "sat_lo", s[2].sat_lo, 0.5);
  expect_eq("u8 c2", "sat_hi", s[2].sat_hi, 0.5);
  expect_near("u8 c2", "hf", s[2].hf, 255.0 / (127.5 + 255e-6), 1e-15);
  for (int c = 0; c < 3; ++c) expect_i("u8", "nan", s[c].nan, 0);
}

void test_half() {
  // binary16: 0x3C00 = 1, 0xC000 = -2, 0x0001 = 2^-24, 0x7BFF = 65504,
  // 0x7E00 = NaN, 0x7C00 = +inf, 0xFC00 = -inf, 0x8000 = -0.
  const uint16_t x[8] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x7E00, 0x7C00, 0xFC00, 0x8000};
  const EgStats s = run1(x, EG_F16, EG_NCHW, 1, 1, 2, 4, nullptr, 0.0, 1.0);
  const char* t = "half";
  expect_i(t, "count", s.count, 5);
  expect_i(t, "nan", s.nan, 1);
  expect_i(t, "posinf", s.posinf, 1);
  expect_i(t, "neginf", s.neginf, 1);
  expect_eq(t, "min", s.min, -2.0);
  expect_eq(t, "max", s.max, 65504.0);
  const double tiny = ldexp(1.0, -24);
  expect_near(t, "mean", s.mean, (1.0 - 2.0 + tiny + 65504.0 + 0.0) / 5.0, 1e-15);
  // sat_lo: -2, -0 (<= 0) -> 2/5; sat_hi: 1, 65504 -> 2/5.
  expect_eq(t, "sat_lo", s.sat_lo, 0.4);
  expect_eq(t, "sat_hi", s.sat_hi, 0.4);
  // pairs: row 0: |(-2)-1| = 3, |tiny+2|, |65504 - tiny|; row 1: no pair is finite
  // (NaN, inf, -inf, -0). mean |diff| = (3 + 2 + 65504) / 3 up to tiny.
  const double mean = s.mean;
  const double var = ((1 - mean) * (1 - mean) + (-2 - mean) * (-2 - mean) +
                      (tiny - mean) * (tiny - mean) + (65504 - mean) * (65504 - mean) +
                      mean * mean) / 5.0;
  expect_near(t, "std", s.std, sqrt(var), 1e-14);
  expect_near(t, "hf", s.hf, ((3.0 + 2.0 + 65504.0) / 3.0) / (sqrt(var) + 1e-6), 1e-14);
}

void test_tdiff() {
  // x = 1, 2, NaN; prev = 2, NaN, 0: only position 0 has both finite: |1-2| = 1.
  const float x[3] = {1.0f, 2.0f, NAN};
  const float p[3] = {2.0f, NAN, 0.0f};
  EgStats s = run1(x, EG_F32, EG_NCHW, 1, 1, 1, 3, p, 0.0, 1.0);
  expect_eq("tdiff", "tdiff", s.tdiff, 1.0);
  const float q[3] = {NAN, NAN, NAN};
  s = run1(x, EG_F32, EG_NCHW, 1, 1, 1, 3, q, 0.0, 1.0);
  expect_eq("tdiff none", "tdiff", s.tdiff, NAN);  // no finite pair -> NaN
}

// Deterministic pseudo-random data (LCG), checked against a naive two-pass
// double computation written here, over several launch shapes and layouts.
void test_random_layouts_and_plans() {
  const int64_t N = 2, C = 3, H = 37, W = 53;
  std::vector<float> nchw((size_t)(N * C * H * W)), nhwc(nchw.size());
  uint64_t state = 12345;
  for (size_t i = 0; i < nchw.size(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const double u = (double)(state >> 11) / 9007199254740992.0;
    nchw[i] = (float)(1000.0 + 3.0 * u);  // offset mean: stresses cancellation
    if (i % 97 == 5) nchw[i] = NAN;
    if (i % 131 == 7) nchw[i] = INFINITY;
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          nhwc[(size_t)(((n * H + h) * W + w) * C + c)] =
              nchw[(size_t)(((n * C + c) * H + h) * W + w)];
  const int threads[3] = {32, 96, 256};
  const int64_t rpts[3] = {1, 5, 0};
  for (int k = 0; k < 3; ++k) {
    std::vector<EgStats> a((size_t)(N * C)), b((size_t)(N * C));
    expect_i("random", "rc", eg_sanity_host_stats(nchw.data(), EG_F32, EG_NCHW, N, C, H, W,
                                                  nullptr, 1000.5, 1002.5, threads[k], rpts[k],
                                                  a.data()), EG_OK);
    expect_i("random", "rc", eg_sanity_host_stats(nhwc.data(), EG_F32, EG_NHWC, N, C, H, W,
                                                  nullptr, 1000.5, 1002.5, threads[k], rpts[k],
                                                  b.data()), EG_OK);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const float* plane = &nchw[(size_t)((n * C + c) * H * W)];
        int64_t cnt = 0, nan = 0, lo = 0, hi = 0, pairs = 0;
        double sum = 0, mn = HUGE_VAL, mx = -HUGE_VAL, hf = 0;
        for (int64_t i = 0; i < H * W; ++i) {
          const double v = plane[i];
          if (isnan(v)) ++nan;
          if (!isfinite(v)) continue;
          ++cnt;
          sum += v;
          mn = v < mn ? v : mn;
          mx = v > mx ? v : mx;
          lo += v <= 1000.5;
          hi += v >= 1002.5;
          if (i % W + 1 < W && isfinite((double)plane[i + 1])) {
            hf += fabs((double)plane[i + 1] - v);
            ++pairs;
          }
        }
        const double mean = sum / (double)cnt;
        double m2 = 0;
        for (int64_t i = 0; i < H * W; ++i)
          if (isfinite((double)plane[i])) m2 += (plane[i] - mean) * (plane[i] - mean);
        const double sd = sqrt(m2 / (double)cnt);
        for (const EgStats* s : {&a[(size_t)(n * C + c)], &b[(size_t)(n * C + c)]}) {
          expect_i("random", "count", s->count, cnt);
          expect_i("random", "nan", s->nan, nan);
          expect_eq("random", "min", s->min, mn);
          expect_eq("random", "max", s->max, mx);
          expect_near("random", "mean", s->mean, mean, 1e-13);
          expect_near("random", "std", s->std, sd, 1e-10);
          expect_near("random", "sat_lo", s->sat_lo, (double)lo / (double)cnt, 1e-15);
          expect_near("random", "sat_hi", s->sat_hi, (double)hi / (double)cnt, 1e-15);
          expect_near("random", "hf", s->hf, (hf / (double)pairs) / (sd + 2e-6), 1e-10);
        }
      }
    }
  }
}

void test_refusals() {
  const float x[1] = {0.0f};
  EgStats s;
  expect_i("refuse", "dtype", eg_sanity_host_stats(x, 9, 0, 1, 1, 1, 1, nullptr, 0, 1, 256, 0, &s),
           EG_ERR_DTYPE);
  expect_i("refuse", "layout",
           eg_sanity_host_stats(x, EG_F32, 7, 1, 1, 1, 1, nullptr, 0, 1, 256, 0, &s),
           EG_ERR_LAYOUT);
  expect_i("refuse", "shape",
           eg_sanity_host_stats(x, EG_F32, 0, -1, 1, 1, 1, nullptr, 0, 1, 256, 0, &s),
           EG_ERR_SHAPE);
  expect_i("refuse", "threads",
           eg_sanity_host_stats(x, EG_F32, 0, 1, 1, 1, 1, nullptr, 0, 1, 48, 0, &s),
           EG_ERR_THREADS);
  expect_i("refuse", "threads>max",
           eg_sanity_host_stats(x, EG_F32, 0, 1, 1, 1, 1, nullptr, 0, 1, 512, 0, &s),
           EG_ERR_THREADS);
  expect_i("refuse", "null x",
           eg_sanity_host_stats(nullptr, EG_F32, 0, 1, 1, 1, 1, nullptr, 0, 1, 256, 0, &s),
           EG_ERR_NULL);
  expect_i("abi", "version", eg_sanity_abi_version(), EG_SANITY_ABI_VERSION);
  expect_i("abi", "stats size", eg_sanity_stats_size(), 96);
  expect_i("plan", "rows 640x640", eg_sanity_default_rows_per_tile(640, 640), 13);
  expect_i("plan", "rows 1x10", eg_sanity_default_rows_per_tile(1, 10), 1);
}

}  // namespace

int main() {
  test_mixed_f32();
  test_all_nan_and_empty();
  test_single_and_zeros();
  test_denormal_and_huge();
  test_uint8_nhwc();
  test_half();
  test_tdiff();
  test_random_layouts_and_plans();
  test_refusals();
  printf("sanity_host_test: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
