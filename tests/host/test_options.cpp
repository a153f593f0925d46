// Cache options: rotated keys and values, full-precision sinks and the clipping search (cache/options.hpp).
#include <skv/skv.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace test_options {

constexpr int kD = 128;
constexpr int kHeads = 2;
constexpr int kQHeads = 8;

using KQ4 = skv::Quantizer<4, 32, skv::Axis::Channel>;
using KQ2 = skv::Quantizer<2, 32, skv::Axis::Channel>;
using VQ2 = skv::Quantizer<2, 64, skv::Axis::Token>;

/// Random [n][kHeads][kD] data; `outlier` scales channels 5 and 77 (the key outliers LLMs show).
std::vector<float> random_tensor(int n, unsigned seed, float outlier = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> x(static_cast<std::size_t>(n) * kHeads * kD);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const int c = static_cast<int>(i % kD);
    x[i] = g(rng) * ((c == 5 || c == 77) ? outlier : 1.0f) + offset;
  }
  return x;
}

/// Rotary frequencies base^(-2i / kD), as a model with rope_theta `base` has them.
std::vector<float> rope_frequencies(double base = 10000.0) {
  std::vector<float> f(kD / 2);
  for (int i = 0; i < kD / 2; ++i) f[i] = static_cast<float>(std::pow(base, -2.0 * i / kD));
  return f;
}

/// A cache of n tokens; with PreRopeKeys, given rope_frequencies().
template <class Cache>
Cache make_cache(int n, const skv::Retention& keep = {}) {
  Cache cache(kHeads, n, keep);
  if constexpr (Cache::Layout::kPreRopeKeys) cache.set_rope_frequencies(rope_frequencies().data());
  return cache;
}

/// Exact attention in double over the raw (unquantized) K and V.
std::vector<double> exact_attention(const std::vector<float>& k, const std::vector<float>& v, int n,
                                    const std::vector<float>& q) {
  std::vector<double> out(static_cast<std::size_t>(kQHeads) * kD, 0.0);
  const double scale = 1.0 / std::sqrt(double(kD));
  for (int h = 0; h < kQHeads; ++h) {
    const int kv = h / (kQHeads / kHeads);
    std::vector<double> logit(n);
    double m = -1e300;
    for (int t = 0; t < n; ++t) {
      double d = 0;
      for (int c = 0; c < kD; ++c) d += double(q[h * kD + c]) * k[(std::size_t(t) * kHeads + kv) * kD + c];
      logit[t] = d * scale;
      m = std::max(m, logit[t]);
    }
    double l = 0;
    for (int t = 0; t < n; ++t) l += std::exp(logit[t] - m);
    for (int t = 0; t < n; ++t) {
      const double p = std::exp(logit[t] - m) / l;
      for (int c = 0; c < kD; ++c) out[h * kD + c] += p * v[(std::size_t(t) * kHeads + kv) * kD + c];
    }
  }
  return out;
}

template <class Cache>
double relative_error(const Cache& cache, const std::vector<double>& exact, const std::vector<float>& q) {
  std::vector<float> out(exact.size());
  skv::cpu::decode_attention(cache, q.data(), kQHeads, out.data());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    num += (out[i] - exact[i]) * (out[i] - exact[i]);
    den += exact[i] * exact[i];
  }
  return std::sqrt(num / den);
}

/// The relative attention errors {plain, rotated} of two cache types holding the same n tokens.
template <class Plain, class Rotated>
std::pair<double, double> plain_and_rotated_errors(const std::vector<float>& k, const std::vector<float>& v, int n,
                                                   const std::vector<float>& q) {
  Plain plain(kHeads, n);
  Rotated rotated(kHeads, n);
  plain.append(k.data(), v.data(), n);
  rotated.append(k.data(), v.data(), n);
  const auto exact = exact_attention(k, v, n, q);
  return {relative_error(plain, exact, q), relative_error(rotated, exact, q)};
}

template <class Cache>
void expect_fast_matches_reference(const Cache& cache, const std::vector<float>& q, const char* what) {
  using L = typename Cache::Layout;
  std::vector<float> ref(static_cast<std::size_t>(kQHeads) * kD), chunked(ref.size()), fast(ref.size());
  const float scale = skv::cpu::default_scale<L>();
  skv::cpu::decode_attention_reference(cache, q.data(), kQHeads, ref.data(), scale);
  skv::cpu::decode_attention_chunked(cache.view(), q.data(), kQHeads, chunked.data(), scale, 7);
  float vmax = 0;
  for (int t = 0; t < cache.size(); ++t)
    for (int c = 0; c < kD; ++c) vmax = std::max(vmax, std::fabs(cache.view().value(t, 0, c)));
  for (int split : {0, 16, 100}) {
    skv::cpu::DecodeOptions opt;
    opt.split_tokens = split;
    opt.num_threads = split == 100 ? 2 : 1;
    skv::cpu::decode_attention(cache, q.data(), kQHeads, fast.data(), scale, opt);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      ASSERT_NEAR(chunked[i], ref[i], 1e-5f * (1 + vmax)) << what << " length " << cache.size() << " element " << i;
      ASSERT_NEAR(fast[i], ref[i], skv::cpu::kFastTolerance * (1 + vmax))
          << what << " length " << cache.size() << " split " << split << " element " << i;
    }
  }
}

// ---------------------------------------------------------------- options as types

// Options in any order give the same cache; what each option does reaches the stored bytes (the
// option constants themselves are checked at compile time in tests/headers/static_facts.cpp).
TEST(Options, CombineInAnyOrderAndReachTheLayout) {
  using A = skv::KVCache<4, 2, kD, skv::RotateKeys, skv::Sinks<4>, skv::ClipValues>;
  using B = skv::KVCache<4, 2, kD, skv::ClipValues, skv::Sinks<4>, skv::RotateKeys>;
  const int n = 100;
  const auto k = random_tensor(n, 3, 6.0f), v = random_tensor(n, 4);
  A a(kHeads, n);
  B b(kHeads, n);
  a.append(k.data(), v.data(), n);
  b.append(k.data(), v.data(), n);
  EXPECT_EQ(a.sink_size(), 4);
  EXPECT_EQ(a.quantized_size(), 96);
  const auto va = a.view();
  const auto vb = b.view();
  EXPECT_EQ(std::memcmp(va.pages, vb.pages, A::Layout::page_bytes(kHeads) * 2), 0);
  EXPECT_EQ(std::memcmp(va.residual, vb.residual, A::Layout::residual_floats(kHeads) * sizeof(float)), 0);
  // rotated keys: the stored sink key is R k, not k; the sink value is v itself
  bool rotated = false;
  for (int c = 0; c < kD; ++c) {
    rotated = rotated || va.key(0, 1, c) != k[kD + c];
    ASSERT_EQ(va.value(0, 1, c), v[kD + c]);
  }
  EXPECT_TRUE(rotated);
  // without the options, the same input gives other bytes
  skv::KVCache<4, 2, kD> plain(kHeads, n);
  plain.append(k.data(), v.data(), n);
  EXPECT_NE(std::memcmp(plain.view().pages, va.pages, A::Layout::page_bytes(kHeads) * 2), 0);
}

// ---------------------------------------------------------------- rotation
// ---------------------------------------------------------------- rotation

TEST(Options, RotatedKeysAreStoredAsRotatedInputs) {
  using C = skv::KVCache<4, 2, 128, skv::RotateKeys>;
  using R = skv::HadamardRotation<kD, skv::kDefaultRotationSeed>;
  const int n = 40;  // one block quantized, 8 tokens in the ring
  const auto k = random_tensor(n, 1, 10.0f), v = random_tensor(n, 2);
  C cache(kHeads, 64);
  cache.append(k.data(), v.data(), n);
  const auto view = cache.view();
  for (int t = 32; t < n; ++t)
    for (int h = 0; h < kHeads; ++h) {
      float r[kD];
      std::memcpy(r, &k[(std::size_t(t) * kHeads + h) * kD], sizeof r);
      R::apply(r);
      for (int c = 0; c < kD; ++c) ASSERT_EQ(view.residual_key(t, h)[c], r[c]) << t << " " << h << " " << c;
      for (int c = 0; c < kD; ++c) ASSERT_EQ(view.residual_value(t, h)[c], v[(std::size_t(t) * kHeads + h) * kD + c]);
    }
}

TEST(Options, RotationLeavesFullPrecisionAttentionUnchanged) {
  // everything stays in the full-precision ring: rotation alone must not change attention
  using Plain = skv::BasicKVCache<KQ4, VQ2, kD, 64, 256>;
  using Rotated = skv::BasicKVCache<KQ4, VQ2, kD, 64, 256, skv::Options<skv::RotateKeys>>;
  const int n = 250;
  const auto k = random_tensor(n, 3, 20.0f), v = random_tensor(n, 4);
  auto q = random_tensor(kQHeads / kHeads, 5);
  Plain plain(kHeads, 512);
  Rotated rotated(kHeads, 512);
  plain.append(k.data(), v.data(), n);
  rotated.append(k.data(), v.data(), n);
  ASSERT_EQ(rotated.quantized_size(), 0);
  std::vector<float> a(static_cast<std::size_t>(kQHeads) * kD), b(a.size());
  skv::cpu::decode_attention(plain, q.data(), kQHeads, a.data());
  skv::cpu::decode_attention(rotated, q.data(), kQHeads, b.data());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 2e-5f * (1 + std::fabs(a[i]))) << i;
}

TEST(Options, RotationCutsTheErrorOfKeysWithOutlierChannels) {
  using Plain = skv::BasicKVCache<KQ2, skv::Quantizer<8, 64, skv::Axis::Token>, kD>;
  using Rotated = skv::BasicKVCache<KQ2, skv::Quantizer<8, 64, skv::Axis::Token>, kD, 64, 0,
                                    skv::Options<skv::RotateKeys>>;
  const int n = 1024;
  const auto k = random_tensor(n, 6, 30.0f), v = random_tensor(n, 7);
  auto q = random_tensor(kQHeads / kHeads, 8);
  for (auto& x : q) x *= 0.3f;
  const auto [e_plain, e_rot] = plain_and_rotated_errors<Plain, Rotated>(k, v, n, q);
  EXPECT_LT(e_rot, 0.7 * e_plain) << "2-bit keys with two 30x outlier channels: plain " << e_plain << ", rotated "
                                  << e_rot;
}

TEST(Options, RotatedCachesMatchTheReference) {
  const auto k = random_tensor(300, 9, 8.0f), v = random_tensor(300, 10);
  const auto q = random_tensor(kQHeads / kHeads, 11);
  for (int n : {1, 31, 32, 33, 100, 300}) {
    skv::KVCache<4, 2, 128, skv::RotateKeys> a(kHeads, 512);
    skv::KVCache<3, 4, 128, skv::RotateKeysWithSeed<99>, skv::Sinks<3>> b(kHeads, 512);
    a.append(k.data(), v.data(), n);
    b.append(k.data(), v.data(), n);
    expect_fast_matches_reference(a, q, "k4v2+rot");
    expect_fast_matches_reference(b, q, "k3v4+rot+sink3");
  }
}

TEST(Options, RotatedKeysOutOfRangeAreRejectedAndTheCacheIsUnchanged) {
  // |k| = 30000 on one channel is accepted unrotated; rotated, the energy of many channels meets in one
  using C = skv::KVCache<4, 2, 128, skv::RotateKeys>;
  std::vector<float> k(static_cast<std::size_t>(kHeads) * kD, 30000.0f), v(k.size(), 1.0f);
  C cache(kHeads, 64);
  const auto ok = random_tensor(1, 12);
  cache.append(ok.data(), ok.data(), 1);
  const auto before = cache.view().residual_key(0, 0)[0];
  try {
    cache.append(k.data(), v.data(), 1);
    FAIL() << "expected skv::Error";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rotated keys"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.size(), 1);
  EXPECT_EQ(cache.view().residual_key(0, 0)[0], before);
}

// ---------------------------------------------------------------- rotated values

// A cache with RotateValues stores exactly what a plain cache stores for the inputs R_v v, and its
// attention output is R_v^T times the plain cache's output, bit for bit (the same float operations).
TEST(Options, RotatedValuesAreStoredAsRotatedInputsAndTheOutputIsRotatedBack) {
  using Opts = skv::Options<skv::RotateKeys, skv::Sinks<4>>;
  using Plain = skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, Opts>;
  using Rotated =
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::RotateKeys, skv::Sinks<4>, skv::RotateValues>>;
  using L = Plain::Layout;
  const int n = 300;  // sinks, quantized blocks of 64 and a ring
  const auto k = random_tensor(n, 40, 4.0f), v = random_tensor(n, 41, 8.0f);
  const auto rv = skv::to_value_basis<Rotated::Layout>(v.data(), static_cast<std::size_t>(n) * kHeads);
  ASSERT_NE(rv, v);
  Plain plain(kHeads, n);
  Rotated rotated(kHeads, n);
  plain.append(k.data(), rv.data(), n);
  for (int t = 0; t < n; t += 37)
    rotated.append(k.data() + t * kHeads * kD, v.data() + t * kHeads * kD, std::min(37, n - t));
  const auto a = plain.view();
  const auto b = rotated.view();
  const int pages = a.quantized_length() / L::kPageSize;
  ASSERT_GT(pages, 2);
  ASSERT_EQ(std::memcmp(a.pages, b.pages, pages * L::page_bytes(kHeads)), 0);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kD; ++c) ASSERT_EQ(a.value(t, h, c), b.value(t, h, c)) << t;

  const int nq = 5;  // a prefill chunk of five queries, then one decode query
  const auto q = random_tensor(nq * kQHeads / kHeads, 42);
  std::vector<float> pa(q.size()), pb(q.size());
  skv::cpu::prefill_attention(plain, q.data(), nq, kQHeads, pa.data());
  skv::cpu::prefill_attention(rotated, q.data(), nq, kQHeads, pb.data());
  skv::from_value_basis<Rotated::Layout>(pa.data(), static_cast<std::size_t>(nq) * kQHeads);
  for (std::size_t i = 0; i < pa.size(); ++i) ASSERT_EQ(pa[i], pb[i]) << i;
  std::vector<float> da(static_cast<std::size_t>(kQHeads) * kD), db(da.size());
  skv::cpu::decode_attention(plain, q.data(), kQHeads, da.data());
  skv::cpu::decode_attention(rotated, q.data(), kQHeads, db.data());
  skv::from_value_basis<Rotated::Layout>(da.data(), kQHeads);
  for (std::size_t i = 0; i < da.size(); ++i) ASSERT_EQ(da[i], db[i]) << i;
  // and the output is in the model's basis, as the reference computes it
  expect_fast_matches_reference(rotated, q, "k4v2+rot+rotv+sink4");
}

TEST(Options, RotatedValuesMatchTheReference) {
  const auto k = random_tensor(300, 43, 8.0f), v = random_tensor(300, 44, 6.0f);
  const auto q = random_tensor(kQHeads / kHeads, 45);
  for (int n : {1, 31, 32, 33, 100, 300}) {
    skv::KVCache<3, 2, 128, skv::RotateValues> a(kHeads, 512);
    skv::KVCache<4, 3, 128, skv::RotateKeys, skv::RotateValuesWithSeed<7>, skv::Sinks<4>> b(kHeads, 512);
    a.append(k.data(), v.data(), n);
    b.append(k.data(), v.data(), n);
    expect_fast_matches_reference(a, q, "k3v2+rotv");
    expect_fast_matches_reference(b, q, "k4v3+rot+rotv+sink4");
  }
}

// ---------------------------------------------------------------- Lloyd-Max values

template <int V, int G = 64, class ScaleT = skv::fp16>
using LloydMaxValues = skv::Quantizer<V, G, skv::Axis::Token, skv::Scheme::LloydMax, ScaleT>;

TEST(Options, LloydMaxValuesMatchTheReference) {
  const auto k = random_tensor(300, 53, 8.0f), v = random_tensor(300, 54, 6.0f);
  const auto q = random_tensor(kQHeads / kHeads, 55);
  for (int n : {1, 31, 32, 33, 100, 300}) {
    skv::BasicKVCache<KQ4, LloydMaxValues<2>, kD, 64, 0, skv::Options<skv::RotateValues>> a(kHeads, 512);
    skv::BasicKVCache<KQ4, LloydMaxValues<3, 32>, kD, 64, 32, skv::Options<skv::RotateKeys, skv::RotateValues,
                                                                             skv::Sinks<4>>> b(kHeads, 512);
    skv::BasicKVCache<KQ4, LloydMaxValues<4, 16, float>, kD> c(kHeads, 512);
    skv::BasicKVCache<KQ4, LloydMaxValues<1, 8>, kD> d(kHeads, 512);
    a.append(k.data(), v.data(), n);
    b.append(k.data(), v.data(), n);
    c.append(k.data(), v.data(), n);
    d.append(k.data(), v.data(), n);
    expect_fast_matches_reference(a, q, "k4v2lm+rotv");
    expect_fast_matches_reference(b, q, "k4v3lm+rot+rotv+sink4+r32");
    expect_fast_matches_reference(c, q, "k4v4lm g16 float scales");
    expect_fast_matches_reference(d, q, "k4v1lm g8");
  }
}

TEST(Options, LloydMaxValuesStoreTheCodesOfTheirQuantizer) {
  // the cache's bytes are Quantizer::quantize_group's, whatever the input type: fp16 inputs are
  // widened first, so they give the bytes of their float values
  using C = skv::BasicKVCache<KQ4, LloydMaxValues<2>, kD, 64, 0, skv::Options<skv::RotateValues>>;
  const int n = 96;
  const auto k = random_tensor(n, 56), v = random_tensor(n, 57, 5.0f);
  std::vector<skv::fp16> k16(k.size()), v16(v.size());
  std::vector<float> kw(k.size()), vw(v.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k16[i] = skv::from_float<skv::fp16>(k[i]);
    v16[i] = skv::from_float<skv::fp16>(v[i]);
    kw[i] = skv::to_float(k16[i]);
    vw[i] = skv::to_float(v16[i]);
  }
  C a(kHeads, n), b(kHeads, n);
  a.append(kw.data(), vw.data(), n);
  b.append(k16.data(), v16.data(), n);
  const auto va = a.view(), vb = b.view();
  const auto rv = skv::to_value_basis<C::Layout>(vw.data(), static_cast<std::size_t>(n) * kHeads);
  std::vector<std::uint8_t> codes(64);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < kHeads; ++h) {
      for (int g = 0; g < kD / 64; ++g) {
        const float* group = rv.data() + (static_cast<std::size_t>(t) * kHeads + h) * kD + 64 * g;
        const auto st = LloydMaxValues<2>::quantize_group(group, 1, codes.data(), 1);
        const auto p = LloydMaxValues<2>::params(st);
        for (int c = 0; c < 64; ++c) {
          ASSERT_EQ(va.value(t, h, 64 * g + c), LloydMaxValues<2>::decode(codes[c], p)) << t << " " << h << " " << c;
          ASSERT_EQ(vb.value(t, h, 64 * g + c), va.value(t, h, 64 * g + c));
        }
      }
    }
  }
}

TEST(Options, LloydMaxLevelsCutTheErrorOfRotatedValues) {
  // rotated normal values stay normal per token, where the Lloyd-Max levels have 0.54x the squared
  // error of min-max levels at 2 bits and 0.87x at 3 (tests/host/test_quantizer.cpp); with 8-bit
  // keys the attention error follows the values' (measured: 0.430 -> 0.338 at 2 bits, 0.199 ->
  // 0.184 at 3). A few dominant channels rotate into a mixture of a few modes instead, which the
  // normal's levels do not fit better than even ones.
  using KQ8 = skv::Quantizer<8, 32, skv::Axis::Channel>;
  const int n = 1024;
  const auto k = random_tensor(n, 58), v = random_tensor(n, 59);
  const auto q = random_tensor(kQHeads / kHeads, 60);
  using Rot = skv::Options<skv::RotateValues>;
  using Even2 = skv::BasicKVCache<KQ8, skv::Quantizer<2, 64, skv::Axis::Token>, kD, 64, 0, Rot>;
  using Even3 = skv::BasicKVCache<KQ8, skv::Quantizer<3, 64, skv::Axis::Token>, kD, 64, 0, Rot>;
  using Lm2 = skv::BasicKVCache<KQ8, LloydMaxValues<2>, kD, 64, 0, Rot>;
  using Lm3 = skv::BasicKVCache<KQ8, LloydMaxValues<3>, kD, 64, 0, Rot>;
  const auto [e2, e2lm] = plain_and_rotated_errors<Even2, Lm2>(k, v, n, q);
  const auto [e3, e3lm] = plain_and_rotated_errors<Even3, Lm3>(k, v, n, q);
  EXPECT_LT(e2lm, 0.85 * e2) << "2-bit rotated values: min-max " << e2 << ", Lloyd-Max " << e2lm;
  EXPECT_LT(e3lm, 0.97 * e3) << "3-bit rotated values: min-max " << e3 << ", Lloyd-Max " << e3lm;
}

TEST(Options, RotationCutsTheErrorOfValuesWithOutlierChannels) {
  // per-token 3-bit value groups: two large channels set every token's range, so the other channels
  // fall on few of the eight levels; rotated, every channel carries a share of the outliers and the
  // error falls to that of normal data (at 2 bits both sit near the floor min-max levels give normal
  // data, about 0.46 relative, so 3 bits is where the rotation shows)
  using VQ3 = skv::Quantizer<3, 64, skv::Axis::Token>;
  using Plain = skv::BasicKVCache<skv::Quantizer<8, 32, skv::Axis::Channel>, VQ3, kD>;
  using Rotated = skv::BasicKVCache<skv::Quantizer<8, 32, skv::Axis::Channel>, VQ3, kD, 64, 0,
                                    skv::Options<skv::RotateValues>>;
  const int n = 1024;
  for (float outlier : {8.0f, 20.0f}) {
    const auto k = random_tensor(n, 46), v = random_tensor(n, 47, outlier);
    const auto q = random_tensor(kQHeads / kHeads, 48);
    const auto [e_plain, e_rot] = plain_and_rotated_errors<Plain, Rotated>(k, v, n, q);
    EXPECT_LT(e_rot, 0.75 * e_plain) << "3-bit values with two " << outlier << "x outlier channels: plain " << e_plain
                                     << ", rotated " << e_rot;
  }
}

TEST(Options, RotatedValuesOutOfRangeOrNonFiniteAreRejectedAndTheCacheIsUnchanged) {
  using C = skv::KVCache<4, 2, 128, skv::RotateValues>;
  C cache(kHeads, 64);
  const auto ok = random_tensor(1, 49);
  cache.append(ok.data(), ok.data(), 1);
  const float before = cache.view().residual_value(0, 0)[0];
  const auto expect_refused = [&](const std::vector<float>& v, const char* what) {
    try {
      cache.append(ok.data(), v.data(), 1);
      FAIL() << "expected skv::Error for " << what;
    } catch (const skv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(cache.size(), 1);
    EXPECT_EQ(cache.view().residual_value(0, 0)[0], before);
  };
  expect_refused(std::vector<float>(ok.size(), 30000.0f), "rotated values");  // each fits, their sum does not
  auto nan = ok;
  nan[3] = std::nanf("");
  expect_refused(nan, "values");
}

/// A rollback that reaches the float copies of a long append (the history) gives back the tokens a
/// cache that never saw the rejected ones holds, in the stored (rotated) basis.
template <class Cache>
void check_rollback_from_history(unsigned seed) {
  const int n = 400;
  const std::size_t row = static_cast<std::size_t>(kHeads) * kD;
  const auto k = random_tensor(n, seed, 3.0f), v = random_tensor(n, seed + 1, 3.0f);
  const auto q = random_tensor(kQHeads / kHeads, seed + 2);
  Cache cache = make_cache<Cache>(n, skv::Retention{0, 0, 64});
  cache.append(k.data(), v.data(), n);  // whole blocks quantized straight from the input
  for (int r : {1, 30, 64}) {
    Cache back = cache;
    back.truncate(n - r);
    Cache fresh = make_cache<Cache>(n);
    fresh.append(k.data(), v.data(), n - r);
    const auto a = back.view(), b = fresh.view();
    for (int t = 0; t < n - r; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kD; ++c)
          ASSERT_TRUE(a.key(t, h, c) == b.key(t, h, c) && a.value(t, h, c) == b.value(t, h, c)) << r << " " << t;
    back.append(k.data() + (n - r) * row, v.data() + (n - r) * row, r);  // and the same tokens again
    std::vector<float> x(static_cast<std::size_t>(kQHeads) * kD), y(x.size());
    skv::cpu::decode_attention(back, q.data(), kQHeads, x.data());
    skv::cpu::decode_attention(cache, q.data(), kQHeads, y.data());
    ASSERT_EQ(x, y) << r;
  }
}

TEST(Options, RollbackWithRotatedValuesRestoresTheRotatedCopies) {
  check_rollback_from_history<
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::RotateKeys, skv::Sinks<4>>>>(50);
  check_rollback_from_history<
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>>>(53);
  check_rollback_from_history<skv::BasicKVCache<
      KQ4, VQ2, kD, 64, 64, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>, skv::Fp16Ring>>>(55);
  check_rollback_from_history<skv::BasicKVCache<
      KQ4, VQ2, kD, 64, 64, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>>(57);
  check_rollback_from_history<
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::PreRopeKeys, skv::Sinks<4>, skv::Int8Ring>>>(59);
}

// ---------------------------------------------------------------- sinks

TEST(Options, SinkTokensAreExactAndCounted) {
  constexpr int S = 5;
  using C = skv::KVCache<2, 2, 128, skv::Sinks<S>>;
  using L = C::Layout;
  const int n = 200;
  const auto k = random_tensor(n, 13), v = random_tensor(n, 14);
  C cache(kHeads, n);
  // capacity: sinks + pages for the other 195 tokens
  EXPECT_EQ(cache.reserved_bytes(), 4 * L::page_bytes(kHeads) + L::residual_floats(kHeads) * sizeof(float));
  EXPECT_EQ(L::residual_floats(kHeads), 2u * (32 + S) * kHeads * kD);
  for (int len : {1, 4, 5, 6, 36, 37, 38, 69, 70, 200}) {
    C c(kHeads, n);
    c.append(k.data(), v.data(), len);
    const int sinks = std::min(len, S);
    const int quantized = len - S >= 32 ? (len - S) / 32 * 32 : 0;
    ASSERT_EQ(c.sink_size(), sinks) << len;
    ASSERT_EQ(c.quantized_size(), quantized) << len;
    ASSERT_EQ(c.residual_size(), len - sinks - quantized) << len;
    const std::size_t pages = static_cast<std::size_t>((quantized + 63) / 64);
    ASSERT_EQ(c.memory_bytes(), pages * L::page_bytes(kHeads) + L::residual_floats(kHeads) * sizeof(float)) << len;
    const auto view = c.view();
    for (int t = 0; t < sinks; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int ch = 0; ch < kD; ++ch) {
          ASSERT_EQ(view.key(t, h, ch), k[(std::size_t(t) * kHeads + h) * kD + ch]);
          ASSERT_EQ(view.value(t, h, ch), v[(std::size_t(t) * kHeads + h) * kD + ch]);
        }
    // tokens after the sinks: quantized within half a step of their group, or exact in the ring
    for (int t = S; t < len; ++t) {
      const float got = view.key(t, 1, 9), want = k[(std::size_t(t) * kHeads + 1) * kD + 9];
      if (t < S + quantized) {
        ASSERT_NEAR(got, want, 2.0f) << t;
      } else {
        ASSERT_EQ(got, want) << t;
      }
    }
  }
  cache.append(k.data(), v.data(), n);
  EXPECT_THROW(cache.append(k.data(), v.data(), 1), skv::Error);
}

TEST(Options, SinkCachesMatchTheReference) {
  const auto k = random_tensor(400, 15, 4.0f), v = random_tensor(400, 16);
  const auto q = random_tensor(kQHeads / kHeads, 17);
  for (int n : {1, 3, 4, 35, 36, 37, 99, 400}) {
    skv::KVCache<4, 2, 128, skv::Sinks<4>> a(kHeads, 512);
    skv::BasicKVCache<skv::Quantizer<3, 16, skv::Axis::Token>, skv::Quantizer<4, 32, skv::Axis::Channel>, kD, 32, 32,
                      skv::Options<skv::Sinks<70>>>
        b(kHeads, 512);
    a.append(k.data(), v.data(), n);
    b.append(k.data(), v.data(), n);
    expect_fast_matches_reference(a, q, "k4v2+sink4");
    expect_fast_matches_reference(b, q, "token keys, channel values, residual 32, sink70");
  }
}

// A cache that holds only sink tokens (max_tokens <= N for Sinks<N>) has no pages at all, and
// still appends and decodes; so does a view over engine memory with no pages and no block table.
TEST(Options, CachesOfSinkTokensOnlyAppendAndDecode) {
  const auto k = random_tensor(4, 30), v = random_tensor(4, 31);
  const auto q = random_tensor(kQHeads / kHeads, 32);
  for (int max_tokens : {1, 3, 4}) {
    skv::KVCache<4, 2, kD, skv::Sinks<4>> cache(kHeads, max_tokens);
    cache.append(k.data(), v.data(), max_tokens);
    EXPECT_EQ(cache.sink_size(), max_tokens);
    expect_fast_matches_reference(cache, q, "sink4 only");
    const auto want = exact_attention(k, v, max_tokens, q);
    std::vector<float> out(want.size());
    skv::cpu::decode_attention(cache, q.data(), kQHeads, out.data());
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5) << max_tokens;
    EXPECT_THROW(cache.append(k.data(), v.data(), 1), skv::Error);
  }
  using L = skv::KVCache<4, 2, kD, skv::Sinks<4>>::Layout;
  std::vector<float> area(L::residual_floats(kHeads));
  skv::SequenceView<L> view;
  view.residual = area.data();
  view.num_kv_heads = kHeads;
  skv::append(view, k.data(), v.data(), 4);
  EXPECT_EQ(view.length, 4);
  std::vector<float> out(static_cast<std::size_t>(kQHeads) * kD);
  skv::cpu::decode_attention(view, q.data(), kQHeads, out.data());
  const auto want = exact_attention(k, v, 4, q);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5);
}

TEST(Options, SinksRemoveTheErrorOfAttentionSinks) {
  // token 0 is an attention sink: a key aligned with the queries (about half of the attention goes
  // to it), a value unlike the others
  const int n = 512;
  auto k = random_tensor(n, 18), v = random_tensor(n, 19);
  auto q = random_tensor(kQHeads / kHeads, 20);
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kD; ++c) {
      k[h * kD + c] = 0.55f * q[(h * (kQHeads / kHeads)) * kD + c];
      v[h * kD + c] = 6.0f;
    }
  skv::KVCache<2, 2> plain(kHeads, n);
  skv::KVCache<2, 2, 128, skv::Sinks<4>> sinks(kHeads, n);
  plain.append(k.data(), v.data(), n);
  sinks.append(k.data(), v.data(), n);
  const auto exact = exact_attention(k, v, n, q);
  const double e_plain = relative_error(plain, exact, q), e_sinks = relative_error(sinks, exact, q);
  EXPECT_LT(e_sinks, 0.5 * e_plain) << "plain " << e_plain << ", sinks " << e_sinks;
}

// ---------------------------------------------------------------- clipping

template <class Q>
void check_clip_never_worse() {
  std::mt19937 rng(21 + Q::kBits);
  std::normal_distribution<float> g;
  std::student_t_distribution<float> heavy(2.0f);
  int improved = 0;
  for (int trial = 0; trial < 400; ++trial) {
    float x[Q::kGroupSize];
    for (float& e : x) e = trial % 2 ? heavy(rng) : g(rng) + (trial % 3 == 0 ? 5.0f : 0.0f);
    if (trial % 50 == 7) std::fill(x, x + Q::kGroupSize, 0.375f);  // constant: stays exact
    float mn = x[0], mx = x[0];
    for (float e : x) mn = std::min(mn, e), mx = std::max(mx, e);
    const auto full = Q::params(Q::fit(mn, mx));
    const auto clipped = Q::params(Q::fit_clipped(x, 1, mn, mx));
    // never worse by the search's measure; by the stored codes' error too, up to float rounding (the
    // measures differ only in codes at a rounding boundary, where both codes are half a step away)
    ASSERT_LE(Q::search_error(x, 1, clipped), Q::search_error(x, 1, full)) << Q::kBits << " bits, trial " << trial;
    const float e_full = Q::squared_error(x, 1, full), e_clip = Q::squared_error(x, 1, clipped);
    ASSERT_LE(e_clip, e_full * (1.0f + 1e-5f)) << Q::kBits << " bits, trial " << trial;
    if (mn == mx && Q::kHasZero) {
      ASSERT_EQ(e_clip, 0.0f);
    }
    improved += e_clip < e_full;
  }
  EXPECT_GT(improved, 100) << Q::kBits << " bits: the search should find a better range for heavy-tailed groups";
}

TEST(Options, ClippingSearchNeverIncreasesAGroupsError) {
  check_clip_never_worse<skv::Quantizer<2, 64, skv::Axis::Token>>();
  check_clip_never_worse<skv::Quantizer<3, 32, skv::Axis::Channel>>();
  check_clip_never_worse<skv::Quantizer<4, 32, skv::Axis::Token, skv::Scheme::Symmetric>>();
}

TEST(Options, ClippedCachesHaveLowerValueErrorAndMatchTheReference) {
  using Plain = skv::KVCache<4, 2>;
  using Clipped = skv::KVCache<4, 2, 128, skv::ClipKeys, skv::ClipValues>;
  const int n = 256;
  auto k = random_tensor(n, 22, 6.0f), v = random_tensor(n, 23);
  std::mt19937 rng(24);
  std::student_t_distribution<float> heavy(3.0f);
  for (auto& x : v) x = heavy(rng);
  Plain plain(kHeads, n);
  Clipped clipped(kHeads, n);
  plain.append(k.data(), v.data(), n);
  clipped.append(k.data(), v.data(), n);
  double ek_plain = 0, ek_clip = 0, ev_plain = 0, ev_clip = 0;
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kD; ++c) {
        const std::size_t i = (std::size_t(t) * kHeads + h) * kD + c;
        ek_plain += std::pow(plain.view().key(t, h, c) - k[i], 2);
        ek_clip += std::pow(clipped.view().key(t, h, c) - k[i], 2);
        ev_plain += std::pow(plain.view().value(t, h, c) - v[i], 2);
        ev_clip += std::pow(clipped.view().value(t, h, c) - v[i], 2);
      }
  EXPECT_LE(ek_clip, ek_plain * (1 + 1e-6));
  EXPECT_LT(ev_clip, 0.95 * ev_plain) << "2-bit heavy-tailed values: plain " << ev_plain << ", clipped " << ev_clip;
  const auto q = random_tensor(kQHeads / kHeads, 25);
  expect_fast_matches_reference(clipped, q, "k4v2+clip");
}

}  // namespace test_options

namespace test_options {

/// Appending in chunks of any size writes the same bytes as one append, for every option.
template <class Cache>
void check_chunked_append_bytes(unsigned seed) {
  using L = typename Cache::Layout;
  const int n = 333;
  const auto k = random_tensor(n, seed, 5.0f), v = random_tensor(n, seed + 1);
  Cache whole = make_cache<Cache>(n), chunked = make_cache<Cache>(n);
  whole.append(k.data(), v.data(), n);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> size(0, 70);
  int done = 0;
  while (done < n) {
    const int m = std::min(n - done, size(rng));
    const std::size_t at = static_cast<std::size_t>(done) * kHeads * kD;
    chunked.append(k.data() + at, v.data() + at, m);
    done += m;
  }
  ASSERT_EQ(chunked.size(), n);
  const auto a = whole.view(), b = chunked.view();
  const int pages = (whole.quantized_size() + L::kPageSize - 1) / L::kPageSize;
  ASSERT_EQ(std::memcmp(a.pages, b.pages, static_cast<std::size_t>(pages) * L::page_bytes(kHeads)), 0);
  // the sinks and the live ring slots hold the same floats
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kD; ++c) {
        ASSERT_EQ(a.key(t, h, c), b.key(t, h, c)) << t;
        ASSERT_EQ(a.value(t, h, c), b.value(t, h, c)) << t;
      }
}

TEST(Options, ChunkedAppendsWriteTheSameBytes) {
  check_chunked_append_bytes<skv::KVCache<4, 2>>(30);
  check_chunked_append_bytes<skv::KVCache<4, 2, 128, skv::RotateKeys>>(31);
  check_chunked_append_bytes<skv::KVCache<3, 2, 128, skv::Sinks<7>>>(32);
  check_chunked_append_bytes<skv::KVCache<2, 4, 128, skv::RotateKeys, skv::Sinks<4>, skv::ClipKeys, skv::ClipValues>>(33);
  check_chunked_append_bytes<skv::BasicKVCache<KQ2, VQ2, kD, 32, 64, skv::Options<skv::Sinks<40>, skv::ClipValues>>>(34);
  check_chunked_append_bytes<skv::KVCache<3, 2, 128, skv::RotateValues, skv::Sinks<4>, skv::ClipValues>>(37);
  check_chunked_append_bytes<skv::KVCache<3, 3, 128, skv::RotateKeys, skv::RotateValues, skv::Sinks<4>, skv::Fp16Ring>>(38);
  check_chunked_append_bytes<skv::BasicKVCache<KQ2, VQ2, kD, 64, 64, skv::Options<skv::Fp16Ring, skv::ClipKeys>>>(39);
  check_chunked_append_bytes<
      skv::KVCache<3, 3, 128, skv::RotateKeys, skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>(40);
  check_chunked_append_bytes<skv::BasicKVCache<KQ2, VQ2, kD, 64, 64, skv::Options<skv::Int8Ring, skv::ClipValues>>>(41);
  check_chunked_append_bytes<skv::KVCache<3, 3, 128, skv::PreRopeKeys, skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>(42);
}

TEST(Options, Fp16AppendEqualsFloatAppendOfTheSameValues) {
  using C = skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>;
  const int n = 100;
  auto k = random_tensor(n, 35, 3.0f), v = random_tensor(n, 36);
  std::vector<skv::fp16> kh(k.size()), vh(v.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    kh[i] = skv::to_fp16(k[i]);
    vh[i] = skv::to_fp16(v[i]);
    k[i] = skv::to_float(kh[i]);
    v[i] = skv::to_float(vh[i]);
  }
  C a(kHeads, n), b(kHeads, n);
  a.append(k.data(), v.data(), n);
  b.append(kh.data(), vh.data(), n);
  using L = C::Layout;
  ASSERT_EQ(std::memcmp(a.view().pages, b.view().pages, 2 * L::page_bytes(kHeads)), 0);
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < kD; ++c) ASSERT_EQ(a.view().key(t, 1, c), b.view().key(t, 1, c)) << t;
}

// ---------------------------------------------------------------- fp16 ring

/// x rounded to fp16 and widened back.
float fp16_round(float x) { return skv::to_float(skv::to_fp16(x)); }
std::vector<float> fp16_rounded(std::vector<float> x) {
  for (float& e : x) e = fp16_round(e);
  return x;
}

// An Fp16Ring cache holds what a float-ring cache holds for the fp16 rounding of its input: the same
// page bytes, the same full-precision elements, the same attention outputs bit for bit, in half the
// memory of the full-precision area.
TEST(Options, Fp16RingHoldsTheFp16RoundingOfEachToken) {
  using Half = skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::Sinks<4>, skv::Fp16Ring>>;
  using Wide = skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::Sinks<4>>>;
  using L = Half::Layout;
  static_assert(std::is_same<L::FullPrecision, skv::fp16>::value &&
                    std::is_same<Wide::Layout::FullPrecision, float>::value,
                "the full-precision element");
  for (int n : {1, 3, 4, 37, 100, 131, 300}) {
    const auto k = random_tensor(n, 60 + n, 4.0f), v = random_tensor(n, 61 + n, 1.0f, 0.5f);
    const auto kr = fp16_rounded(k), vr = fp16_rounded(v);
    Half half(kHeads, n);
    Wide wide(kHeads, n);
    half.append(k.data(), v.data(), n);
    wide.append(kr.data(), vr.data(), n);
    const auto a = half.view();
    const auto b = wide.view();
    const int pages = (half.quantized_size() + L::kPageSize - 1) / L::kPageSize;
    ASSERT_EQ(std::memcmp(a.pages, b.pages, static_cast<std::size_t>(pages) * L::page_bytes(kHeads)), 0) << n;
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kD; ++c)
          ASSERT_TRUE(a.key(t, h, c) == b.key(t, h, c) && a.value(t, h, c) == b.value(t, h, c)) << n << " " << t;
    ASSERT_EQ(wide.memory_bytes() - half.memory_bytes(), L::residual_elements(kHeads) * (sizeof(float) - 2)) << n;
    ASSERT_EQ(half.memory_bytes(),
              static_cast<std::size_t>(pages) * L::page_bytes(kHeads) + L::residual_elements(kHeads) * 2) << n;
    const auto q = random_tensor(3 * (kQHeads / kHeads), 62 + n);
    std::vector<float> x(static_cast<std::size_t>(kQHeads) * kD), y(x.size());
    skv::cpu::decode_attention(half, q.data(), kQHeads, x.data());
    skv::cpu::decode_attention(wide, q.data(), kQHeads, y.data());
    ASSERT_EQ(x, y) << n;
    const int m = std::min(n, 3);
    std::vector<float> px(static_cast<std::size_t>(m) * kQHeads * kD), py(px.size());
    skv::cpu::prefill_attention(half, q.data(), m, kQHeads, px.data());
    skv::cpu::prefill_attention(wide, q.data(), m, kQHeads, py.data());
    ASSERT_EQ(px, py) << n;
    expect_fast_matches_reference(half, q, "fp16 ring");
  }
  // the sinks count 16 bits each in the counted bits
  EXPECT_DOUBLE_EQ(L::bits_per_element(2048), (L::bits_per_element() * 2044 + 16.0 * 4) / 2048);
}

// With the rotations, every full-precision element is the fp16 rounding of the rotated float one.
TEST(Options, Fp16RingRoundsAfterTheRotations) {
  using Half = skv::BasicKVCache<KQ4, VQ2, kD, 64, 128, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>,
                                                                      skv::Fp16Ring>>;
  using Wide =
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 128, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>>;
  const int n = 200;  // 4 sinks, two quantized blocks, 132 ring tokens
  const auto k = random_tensor(n, 70, 4.0f), v = random_tensor(n, 71);
  Half half(kHeads, n);
  Wide wide(kHeads, n);
  half.append(k.data(), v.data(), n);
  wide.append(k.data(), v.data(), n);
  ASSERT_EQ(half.quantized_size(), 64);
  const auto a = half.view();
  const auto b = wide.view();
  for (int t : {0, 3, 68, 100, 199})
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kD; ++c) {
        ASSERT_EQ(a.key(t, h, c), fp16_round(b.key(t, h, c))) << t;
        ASSERT_EQ(a.value(t, h, c), fp16_round(b.value(t, h, c))) << t;
      }
}

/// NaN, Inf and values past the quantizers' range are refused with their position, whether bound for
/// the ring or for a block, and the cache keeps every token.
template <class C>
void check_ring_rejects_and_stays_unchanged() {
  const int n = 80;
  auto k = random_tensor(n, 80), v = random_tensor(n, 81);
  C cache(kHeads, n);
  cache.append(k.data(), v.data(), 10);
  const C before = cache;
  const std::size_t row = static_cast<std::size_t>(kHeads) * kD;
  for (float bad : {std::nanf(""), 40000.0f, -1e30f}) {
    for (std::size_t at : {std::size_t{10} * row + 3, std::size_t{75} * row + 100}) {
      auto kb = k;
      kb[at] = bad;
      try {
        cache.append(kb.data() + 10 * row, v.data() + 10 * row, n - 10);
        FAIL() << "accepted " << bad;
      } catch (const skv::Error& e) {
        EXPECT_NE(std::string(e.what()).find("keys at token " + std::to_string(at / row - 10)), std::string::npos)
            << e.what();
      }
      ASSERT_EQ(cache.size(), 10);
      for (int t = 0; t < 10; ++t)
        for (int c = 0; c < kD; ++c) ASSERT_EQ(cache.view().key(t, 1, c), before.view().key(t, 1, c));
    }
  }
}

TEST(Options, Fp16RingRejectsWhatItCannotHoldAndStaysUnchanged) {
  using C = skv::KVCache<4, 2, 128, skv::Sinks<4>, skv::Fp16Ring>;
  check_ring_rejects_and_stays_unchanged<C>();
  const int n = 80;
  const std::size_t row = static_cast<std::size_t>(kHeads) * kD;
  const auto k = random_tensor(n, 80), v = random_tensor(n, 81);
  // bf16 input: narrowed to fp16 like float input
  std::vector<skv::bf16> kb(k.size()), vb(v.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    kb[i] = skv::to_bf16(k[i]);
    vb[i] = skv::to_bf16(v[i]);
  }
  C from_bf16(kHeads, n);
  from_bf16.append(kb.data(), vb.data(), n);
  for (int t = 0; t < n; ++t) {
    if (t >= 4 && t < from_bf16.view().residual_begin()) continue;  // quantized
    for (int c = 0; c < kD; c += 7)
      ASSERT_EQ(from_bf16.view().key(t, 0, c), fp16_round(skv::to_float(kb[t * row + c]))) << t;
  }
}

// ---------------------------------------------------------------- 8-bit ring

template <int D>
using Row8 = skv::RingRow<std::uint8_t, D>;

/// One row through the 8-bit ring: its zero and step, and every element within one step of the
/// input, in [zero, max] (so an accepted row decodes in range), the step at most range / 255 grown
/// by the fp16 roundings of the zero (down) and the step (up).
template <int D>
void check_row8(const float* x, const char* what) {
  std::uint8_t row[Row8<D>::kElements];
  float y[D];
  Row8<D>::store(x, row);
  Row8<D>::load(row, y);
  const float lo = *std::min_element(x, x + D), hi = *std::max_element(x, x + D);
  const float z = Row8<D>::zero(row), s = Row8<D>::step(row);
  const double ulp_lo =  // the fp16 unit in the last place at lo
      std::max(std::ldexp(1.0, -24), std::ldexp(1.0, std::ilogb(std::max(std::fabs(lo), 6.1e-5f)) - 10));
  ASSERT_LE(z, lo) << what;
  ASSERT_GT(z, lo - ulp_lo) << what;
  ASSERT_LE(s, (double(hi) - z) / 255 * (1 + std::ldexp(1.0, -10)) + std::ldexp(1.0, -24)) << what;
  for (int c = 0; c < D; ++c) {
    ASSERT_EQ(y[c], Row8<D>::element(row, c)) << what;
    ASSERT_EQ(y[c], z + float(row[c]) * s) << what;
    ASSERT_GE(y[c], z) << what;
    ASSERT_LE(y[c], hi) << what << " " << c;
    ASSERT_LE(std::fabs(double(y[c]) - x[c]), double(s) * (1 + 1e-6)) << what << " element " << c;
  }
}

TEST(Options, Int8RingRowsStayWithinOneStepOfTheirInput) {
  std::mt19937 rng(90);
  std::normal_distribution<float> g;
  std::vector<float> x(kD);
  for (float scale : {1e-3f, 1.0f, 37.0f, 100.0f}) {  // |x| stays within the 32752 of the contract
    for (int rep = 0; rep < 50; ++rep) {
      for (float& e : x) e = g(rng) * scale;
      check_row8<kD>(x.data(), "random");
      x[rep % kD] *= 40;  // an outlier channel
      check_row8<kD>(x.data(), "outlier");
      for (float& e : x) e = std::fabs(e) + 100.0f;  // all positive, far from zero
      check_row8<kD>(x.data(), "positive");
    }
  }
  std::fill(x.begin(), x.end(), 0.75f);  // constant and fp16: exact
  check_row8<kD>(x.data(), "constant");
  for (float e : x) ASSERT_EQ(e, 0.75f);
  std::uint8_t row[Row8<kD>::kElements];
  float y[kD];
  Row8<kD>::store(x.data(), row);
  Row8<kD>::load(row, y);
  for (int c = 0; c < kD; ++c) ASSERT_EQ(y[c], 0.75f);
  std::fill(x.begin(), x.end(), 0.1f);  // constant, not fp16: within its ulp
  check_row8<kD>(x.data(), "constant 0.1");
  for (int c = 0; c < kD; ++c) x[c] = 100.0f + 1e-4f * static_cast<float>(c);  // a range far below the zero's fp16 ulp
  check_row8<kD>(x.data(), "narrow");
  for (int c = 0; c < kD; ++c) x[c] = c % 2 ? 32752.0f : -32752.0f;  // the quantizers' limits
  check_row8<kD>(x.data(), "limits");
  for (int c = 0; c < kD; ++c) x[c] = 32752.0f - static_cast<float>(c) * 0.37f;
  check_row8<kD>(x.data(), "near the limit");
  for (int c = 0; c < 64; ++c) x[c] = std::ldexp(float(c), -30);  // subnormal zero and step
  check_row8<64>(x.data(), "tiny");
}

/// x's rows ([n][kHeads][kD]) as the 8-bit ring holds them through `Codec` (Layout::KeyRing or
/// Layout::ValueRing).
template <class Codec = Row8<kD>>
std::vector<float> int8_rounded(std::vector<float> x) {
  std::uint8_t row[Codec::kElements];
  for (std::size_t i = 0; i < x.size(); i += kD) {
    Codec::store(x.data() + i, row);
    Codec::load(row, x.data() + i);
  }
  return x;
}

// An Int8Ring cache holds what a float-ring cache holds for the 8-bit rounding of each input row
// (keys rounded in the rotated basis, as the area holds them: the next tests): the same page bytes
// and elements bit for bit, the same attention up to the order of the ring keys' dot products (R q
// against rotated rows), in about a quarter of the memory of the full-precision area.
TEST(Options, Int8RingHoldsTheRowRoundingOfEachToken) {
  using Byte = skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::Sinks<4>, skv::Int8Ring>>;
  using Wide = skv::BasicKVCache<KQ4, VQ2, kD, 64, 64, skv::Options<skv::Sinks<4>>>;
  using L = Byte::Layout;
  static_assert(std::is_same<L::FullPrecision, std::uint8_t>::value && L::kRingRow == kD + 4 && !L::kFloatRing,
                "the 8-bit area");
  static_assert(L::kRingRotatesKeys && std::is_same<L::ValueRing, Row8<kD>>::value, "keys rotated in the ring");
  for (int n : {1, 3, 4, 37, 100, 131, 300}) {
    const auto k = random_tensor(n, 160 + n, 4.0f), v = random_tensor(n, 161 + n, 1.0f, 0.5f);
    const auto kr = int8_rounded<L::KeyRing>(k), vr = int8_rounded(v);
    Byte byte(kHeads, n);
    Wide wide(kHeads, n);
    byte.append(k.data(), v.data(), n);
    wide.append(kr.data(), vr.data(), n);
    const auto a = byte.view();
    const auto b = wide.view();
    const int pages = (byte.quantized_size() + L::kPageSize - 1) / L::kPageSize;
    ASSERT_EQ(std::memcmp(a.pages, b.pages, static_cast<std::size_t>(pages) * L::page_bytes(kHeads)), 0) << n;
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kD; ++c)
          ASSERT_TRUE(a.key(t, h, c) == b.key(t, h, c) && a.value(t, h, c) == b.value(t, h, c)) << n << " " << t;
    // [2][64 + 32 + 4][kHeads][kD + 4] bytes against as many floats of kD
    ASSERT_EQ(L::residual_elements(kHeads), 2u * 100 * kHeads * (kD + 4));
    ASSERT_EQ(byte.memory_bytes(),
              static_cast<std::size_t>(pages) * L::page_bytes(kHeads) + L::residual_elements(kHeads)) << n;
    ASSERT_EQ(wide.memory_bytes() - byte.memory_bytes(), 2u * 100 * kHeads * (4 * kD - (kD + 4))) << n;
    const auto q = random_tensor(3 * (kQHeads / kHeads), 162 + n);
    std::vector<float> x(static_cast<std::size_t>(kQHeads) * kD), y(x.size());
    skv::cpu::decode_attention(byte, q.data(), kQHeads, x.data());
    skv::cpu::decode_attention(wide, q.data(), kQHeads, y.data());
    for (std::size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-5f) << n << " " << i;
    const int m = std::min(n, 3);
    std::vector<float> px(static_cast<std::size_t>(m) * kQHeads * kD), py(px.size());
    skv::cpu::prefill_attention(byte, q.data(), m, kQHeads, px.data());
    skv::cpu::prefill_attention(wide, q.data(), m, kQHeads, py.data());
    for (std::size_t i = 0; i < px.size(); ++i) ASSERT_NEAR(px[i], py[i], 1e-5f) << n << " " << i;
    expect_fast_matches_reference(byte, q, "8-bit ring");
  }
  // the sinks count 8 + 32 / kD bits each in the counted bits
  EXPECT_DOUBLE_EQ(L::ring_bits_per_element(), 8.0 + 32.0 / kD);
  EXPECT_DOUBLE_EQ(L::bits_per_element(2048), (L::bits_per_element() * 2044 + (8.0 + 32.0 / kD) * 4) / 2048);
}

// With the rotations, every sink and ring element is the 8-bit rounding of the rotated float row.
TEST(Options, Int8RingRoundsAfterTheRotations) {
  using Byte = skv::BasicKVCache<KQ4, VQ2, kD, 64, 128, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>,
                                                                      skv::Int8Ring>>;
  using Wide =
      skv::BasicKVCache<KQ4, VQ2, kD, 64, 128, skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>>;
  const int n = 200;  // 4 sinks, two quantized blocks, 132 ring tokens
  const auto k = random_tensor(n, 170, 4.0f), v = random_tensor(n, 171);
  Byte byte(kHeads, n);
  Wide wide(kHeads, n);
  byte.append(k.data(), v.data(), n);
  wide.append(k.data(), v.data(), n);
  ASSERT_EQ(byte.quantized_size(), 64);
  const auto a = byte.view();
  const auto b = wide.view();
  for (int t : {0, 3, 68, 100, 199})
    for (int h = 0; h < kHeads; ++h) {
      std::vector<float> kw(kD), vw(kD);
      for (int c = 0; c < kD; ++c) {
        kw[c] = b.key(t, h, c);  // the rotated float rows
        vw[c] = b.value(t, h, c);
      }
      std::uint8_t row[Row8<kD>::kElements];
      float y[kD];
      Row8<kD>::store(kw.data(), row);
      Row8<kD>::load(row, y);
      for (int c = 0; c < kD; ++c) ASSERT_EQ(a.key(t, h, c), y[c]) << t;
      Row8<kD>::store(vw.data(), row);
      Row8<kD>::load(row, y);
      for (int c = 0; c < kD; ++c) ASSERT_EQ(a.value(t, h, c), y[c]) << t;
    }
}

using KeyRow8 = skv::RotatedRingRow<kD, 0x5eedull, KQ4>;

/// Largest |decoded - input| of one row through the codec.
template <class Codec>
double row8_error(const std::vector<float>& x) {
  std::uint8_t row[Codec::kElements];
  std::vector<float> y(x.size());
  Codec::store(x.data(), row);
  Codec::load(row, y.data());
  double e = 0;
  for (std::size_t c = 0; c < x.size(); ++c) e = std::max(e, std::fabs(double(y[c]) - x[c]));
  return e;
}

// Keys that RotateKeys leaves unrotated sit in the 8-bit area rotated: one outlier channel sets the
// step of the whole row in the caller's basis (per-token rows are what per-channel key groups avoid),
// while the rotated row's range follows the row's norm. Every element stays within the row's error
// norm: |x' - x|_inf <= |y' - y|_2 <= sqrt(D) s for the rotated row's step s.
TEST(Options, Int8RingKeyRowsAreRotatedAndOutlierChannelsCostLittle) {
  std::mt19937 rng(91);
  std::normal_distribution<float> g;
  std::vector<float> x(kD);
  double plain_sum = 0, rotated_sum = 0;
  for (int rep = 0; rep < 50; ++rep) {
    for (float& e : x) e = g(rng);
    x[rep % kD] = 60.0f * (rep % 2 ? 1 : -1);  // an outlier channel, as post-RoPE keys have
    const double plain = row8_error<Row8<kD>>(x), rotated = row8_error<KeyRow8>(x);
    std::uint8_t row[KeyRow8::kElements];
    KeyRow8::store(x.data(), row);
    ASSERT_TRUE(Row8<kD>::rotated(row)) << rep;
    ASSERT_GE(Row8<kD>::step(row), 0.0f) << rep;  // the flag is not part of the step
    ASSERT_LE(rotated, std::sqrt(double(kD)) * Row8<kD>::step(row) * (1 + 1e-5)) << rep;
    float y[kD], yr[kD];
    KeyRow8::load(row, y);
    KeyRow8::load_rotated(row, yr);
    for (int c = 0; c < kD; ++c) ASSERT_EQ(KeyRow8::element(row, c), y[c]) << rep << " " << c;  // the reference's accessor
    skv::HadamardRotation<kD, 0x5eedull>::apply(y);  // load_rotated is R of what load gives
    for (int c = 0; c < kD; ++c) ASSERT_NEAR(yr[c], y[c], 1e-4) << rep << " " << c;
    plain_sum += plain;
    rotated_sum += rotated;
  }
  // the plain row's step is 120 / 255 = 0.47; rotated, the range is about 2 (60 + 4 sigma) / sqrt(128)
  EXPECT_LT(rotated_sum, plain_sum / 4) << plain_sum / 50 << " " << rotated_sum / 50;
}

// A row too large to rotate within the quantizers' input range is held as it is (unflagged), and
// every accepted row, rotated or not, decodes within that range.
TEST(Options, Int8RingKeyRowsBeyondTheRotationLimitStayUnrotated) {
  std::vector<float> x(kD);
  std::uint8_t row[KeyRow8::kElements];
  float y[kD];
  for (float top : {KeyRow8::kRotateLimit, std::nextafter(KeyRow8::kRotateLimit, 1e30f), 1000.0f, 32752.0f}) {
    for (int c = 0; c < kD; ++c) x[c] = c % 2 ? top : -top;  // the largest norm for its max
    for (int pattern = 0; pattern < 2; ++pattern) {
      if (pattern) std::fill(x.begin(), x.end(), top);  // all energy in one rotated channel
      KeyRow8::store(x.data(), row);
      ASSERT_EQ(Row8<kD>::rotated(row), top <= KeyRow8::kRotateLimit) << top;
      KeyRow8::load(row, y);
      for (int c = 0; c < kD; ++c) {
        ASSERT_TRUE(std::isfinite(y[c])) << top;
        ASSERT_LE(std::fabs(y[c]), KQ4::kMaxInput) << top << " " << c;
        ASSERT_EQ(KeyRow8::element(row, c), y[c]) << top << " " << c;
      }
    }
  }
  EXPECT_GT(KeyRow8::kRotateLimit, 1000.0f);  // far beyond real keys (|k| < 100)
}

// A cache of unrotated keys with Int8Ring: the sinks and the ring tokens hold the rotated rounding
// (in the caller's basis, as view.key reads them) and attention over them matches the reference.
TEST(Options, Int8RingRotatedKeyRowsThroughTheCache) {
  using C = skv::BasicKVCache<KQ4, skv::Quantizer<3, 64, skv::Axis::Token, skv::Scheme::LloydMax>, kD, 64, 128,
                              skv::Options<skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>;
  using L = C::Layout;
  static_assert(L::kRingRotatesKeys && !L::kRotateKeys, "");
  for (int n : {1, 5, 36, 200, 301}) {
    auto k = random_tensor(n, 180 + n, 2.0f);
    for (std::size_t i = 7; i < k.size(); i += kD) k[i] *= 25;  // an outlier channel
    const auto v = random_tensor(n, 181 + n);
    C cache(kHeads, n);
    cache.append(k.data(), v.data(), n);
    const auto view = cache.view();
    const auto kr = int8_rounded<L::KeyRing>(k);
    for (int t = 0; t < n; ++t) {
      if (t >= 4 && t < 4 + cache.quantized_size()) continue;  // quantized: not a row of the area
      for (int h = 0; h < kHeads; ++h)
        for (int c = 0; c < kD; c += 5)
          ASSERT_EQ(view.key(t, h, c), kr[(static_cast<std::size_t>(t) * kHeads + h) * kD + c]) << n << " " << t;
    }
    const auto q = random_tensor(kQHeads / kHeads, 182 + n);
    expect_fast_matches_reference(cache, q, "rotated key rows");
  }
}

TEST(Options, Int8RingRejectsWhatItCannotHoldAndStaysUnchanged) {
  check_ring_rejects_and_stays_unchanged<skv::KVCache<4, 2, 128, skv::Sinks<4>, skv::Int8Ring>>();
  check_ring_rejects_and_stays_unchanged<skv::KVCache<3, 2, 128, skv::RotateValues, skv::Int8Ring>>();
  // the quantizers' limits themselves are accepted: a row decodes within its input's range
  auto k = random_tensor(100, 91), v = random_tensor(100, 92);
  for (std::size_t i = 0; i < k.size(); i += 97) {
    k[i] = 32752.0f;
    v[i] = -32752.0f;
  }
  skv::KVCache<4, 2, 128, skv::Int8Ring> cache(kHeads, 100);
  cache.append(k.data(), v.data(), 100);
  EXPECT_EQ(cache.size(), 100);
  const float top = cache.view().key(96, 0, 62);  // 96 * 256 + 62 = 97 * 254, in the ring
  EXPECT_LE(top, 32752.0f);
  EXPECT_GE(top, 32752.0f * (1 - 2.0f / 255));
}

// ---------------------------------------------------------------- keys before the rotary embedding

/// Keys as a model hands them to the cache: R(t) k_pre, where k_pre keeps the sign and size of its
/// channels from token to token (channels 5 and 77 large, every channel offset by its own mean),
/// which is what the rotary embedding hides from per-channel groups.
std::vector<float> roped_keys(int n, unsigned seed, std::vector<float>* pre = nullptr) {
  auto k = random_tensor(n, seed, 1.0f);
  std::mt19937 rng(seed + 1000);
  std::normal_distribution<float> g;
  std::vector<float> mean(static_cast<std::size_t>(kHeads) * kD);
  for (auto& m : mean) m = 2.0f * g(rng);
  for (int h = 0; h < kHeads; ++h) {
    mean[h * kD + 5] = 12.0f;
    mean[h * kD + 77] = -9.0f;
  }
  const auto f = rope_frequencies();
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = 0.3f * k[i] + mean[i % mean.size()];
  if (pre) *pre = k;
  for (std::size_t i = 0; i < k.size(); i += kD)
    skv::RotaryEmbedding<kD>::apply(f.data(), static_cast<double>(i / (static_cast<std::size_t>(kHeads) * kD)),
                                    k.data() + i);
  return k;
}

using PreRope = skv::BasicKVCache<KQ4, skv::Quantizer<3, 128, skv::Axis::Token, skv::Scheme::LloydMax>, kD, 32, 0,
                                  skv::Options<skv::PreRopeKeys, skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>;
using PostRope = skv::BasicKVCache<KQ4, skv::Quantizer<3, 128, skv::Axis::Token, skv::Scheme::LloydMax>, kD, 32, 0,
                                   skv::Options<skv::RotateValues, skv::Sinks<4>, skv::Int8Ring>>;

TEST(Options, PreRopeKeysAreStoredBeforeTheRotaryEmbedding) {
  using L = PreRope::Layout;
  static_assert(L::kPreRopeKeys && L::kRingRotatesKeys, "");
  const int n = 301;
  std::vector<float> pre;
  const auto k = roped_keys(n, 60, &pre);
  const auto v = random_tensor(n, 61);
  auto cache = make_cache<PreRope>(n);
  cache.append(k.data(), v.data(), n);
  const auto view = cache.view();
  ASSERT_EQ(cache.quantized_size(), 288);
  // every token goes through its 8-bit row first (after the turn back), then a 4-bit code is within
  // half its 32-token channel group's step of that (fp16 scale and zero aside); a ring row is within
  // one step of its rotated row
  const auto rounded = int8_rounded<L::KeyRing>(pre);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < kHeads; ++h) {
      const std::size_t at = (static_cast<std::size_t>(t) * kHeads + h) * kD;
      const bool quantized = t >= 4 && t < 4 + cache.quantized_size();
      for (int c = 0; c < kD; ++c) {
        double lo = 1e30, hi = -1e30;
        if (quantized) {
          const int g0 = 4 + (t - 4) / 32 * 32;
          for (int u = g0; u < g0 + 32; ++u) {
            lo = std::min<double>(lo, rounded[(static_cast<std::size_t>(u) * kHeads + h) * kD + c]);
            hi = std::max<double>(hi, rounded[(static_cast<std::size_t>(u) * kHeads + h) * kD + c]);
          }
        } else {
          for (int e = 0; e < kD; ++e) {
            lo = std::min<double>(lo, pre[at + e]);
            hi = std::max<double>(hi, pre[at + e]);
          }
        }
        // half a step of the group, or the rotated row's step (its range is at most sqrt(kD) x 2 max|x|)
        const double bound = quantized ? (hi - lo) / 15 * 0.5 + 2e-3 * (hi - lo) + std::max(hi, -lo) / 1024 + 1e-4
                                       : 2 * std::sqrt(double(kD)) * std::max(hi, -lo) / 255;
        ASSERT_NEAR(view.stored_key(t, h, c), quantized ? rounded[at + c] : pre[at + c], bound)
            << t << " " << h << " " << c;
      }
      // what attention reads is R(t) of what is stored
      float stored[kD], roped[kD];
      for (int c = 0; c < kD; ++c) stored[c] = view.stored_key(t, h, c);
      std::copy(stored, stored + kD, roped);
      skv::RotaryEmbedding<kD>::apply(cache.rope_frequencies().data(), t, roped);
      for (int c = 0; c < kD; ++c) ASSERT_NEAR(view.key(t, h, c), roped[c], 1e-5f * (1 + std::fabs(roped[c]))) << t;
    }
}

/// Decode and prefill of a PreRopeKeys cache `C` of n tokens against the fp64 references over its view.
template <class C>
void expect_pre_rope_matches_reference(const C& cache, int n, unsigned seed, const std::vector<float>& v) {
  const auto q = random_tensor(kQHeads / kHeads, seed);
  expect_fast_matches_reference(cache, q, "pre-RoPE keys");
  // prefill: every token's causal attention (the AVX-512 integer prefill tiles fold scales into the
  // query, so they must not take these keys)
  std::vector<float> qs(static_cast<std::size_t>(n) * kQHeads * kD), fast(qs.size()), ref(qs.size());
  std::mt19937 rng(seed + 1);
  std::normal_distribution<float> g;
  for (auto& x : qs) x = g(rng);
  const float scale = skv::cpu::default_scale<typename C::Layout>();
  skv::cpu::prefill_attention(cache, qs.data(), n, kQHeads, fast.data(), scale);
  skv::cpu::prefill_attention_reference(cache.view(), qs.data(), n, kQHeads, ref.data(), scale);
  float vmax = 0;
  for (float x : v) vmax = std::max(vmax, std::fabs(x));
  for (std::size_t i = 0; i < ref.size(); ++i)
    ASSERT_NEAR(fast[i], ref[i], skv::cpu::kPrefillTolerance * (1 + 2 * vmax)) << n << " " << i;
}

TEST(Options, PreRopeKeysMatchTheReferenceAndCutTheKeyError) {
  using Plain = skv::KVCache<4, 2, kD, skv::PreRopeKeys, skv::Sinks<4>>;  // min-max values, float ring
  for (int n : {1, 5, 36, 200, 301}) {
    const auto k = roped_keys(n, 62 + n);
    const auto v = random_tensor(n, 63 + n);
    const auto q = random_tensor(kQHeads / kHeads, 64 + n);
    auto pre = make_cache<PreRope>(n);
    auto post = make_cache<PostRope>(n);
    auto plain = make_cache<Plain>(n);
    pre.append(k.data(), v.data(), n);
    post.append(k.data(), v.data(), n);
    plain.append(k.data(), v.data(), n);
    expect_pre_rope_matches_reference(pre, n, 64 + n, v);
    expect_pre_rope_matches_reference(plain, n, 66 + n, v);
    if (n < 200) continue;
    // keys whose channels keep their sign and size lose far less before the embedding than after it
    const auto exact = exact_attention(k, v, n, q);
    double key_error_pre = 0, key_error_post = 0;
    const auto a = pre.view();
    const auto b = post.view();
    for (int t = 4; t < 4 + pre.quantized_size(); ++t)
      for (int c = 0; c < kD; ++c) {
        const double x = k[(static_cast<std::size_t>(t) * kHeads) * kD + c];
        key_error_pre += (a.key(t, 0, c) - x) * (a.key(t, 0, c) - x);
        key_error_post += (b.key(t, 0, c) - x) * (b.key(t, 0, c) - x);
      }
    EXPECT_LT(key_error_pre, 0.25 * key_error_post) << n;
    EXPECT_LT(relative_error(pre, exact, q), relative_error(post, exact, q)) << n;
  }
}

TEST(Options, PreRopeKeysThroughAWindowAndInChunks) {
  // a window cache hands pages back; positions stay absolute, so what is stored does not depend on it
  const int n = 700, window = 128;
  const auto k = roped_keys(n, 70);
  const auto v = random_tensor(n, 71);
  auto whole = make_cache<PreRope>(n);
  auto win = make_cache<PreRope>(n, skv::Retention{window, 0, 0});
  whole.append(k.data(), v.data(), n);
  for (int done = 0; done < n; done += 50)
    win.append(k.data() + static_cast<std::size_t>(done) * kHeads * kD,
               v.data() + static_cast<std::size_t>(done) * kHeads * kD, std::min(50, n - done));
  const auto a = whole.view(), b = win.view();
  for (int t = n - window; t < n; ++t)
    for (int c = 0; c < kD; ++c) ASSERT_EQ(a.key(t, 1, c), b.key(t, 1, c)) << t;
  const auto q = random_tensor(kQHeads / kHeads, 72);
  std::vector<float> x(static_cast<std::size_t>(kQHeads) * kD), y(x.size());
  skv::cpu::DecodeOptions opt;
  opt.window = window;
  skv::cpu::decode_attention(whole, q.data(), kQHeads, x.data(), skv::cpu::default_scale<PreRope::Layout>(), opt);
  skv::cpu::decode_attention(win, q.data(), kQHeads, y.data(), skv::cpu::default_scale<PreRope::Layout>());
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-6f) << i;
}

TEST(Options, PreRopeKeysNeedTheirFrequencies) {
  const auto k = roped_keys(40, 80), v = random_tensor(40, 81);
  PreRope bare(kHeads, 40);
  try {
    bare.append(k.data(), v.data(), 40);
    FAIL() << "appended without frequencies";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rotary frequencies"), std::string::npos) << e.what();
  }
  EXPECT_EQ(bare.size(), 0);
  auto cache = make_cache<PreRope>(40);
  cache.append(k.data(), v.data(), 40);
  const auto f = rope_frequencies(1e6);
  EXPECT_THROW(cache.set_rope_frequencies(f.data()), skv::Error);  // tokens stored with the first ones
  EXPECT_EQ(cache.rope_frequencies(), rope_frequencies());
  cache.clear();
  cache.set_rope_frequencies(f.data());
  auto bad = f;
  bad[3] = std::nanf("");
  EXPECT_THROW(cache.set_rope_frequencies(bad.data()), skv::Error);
  EXPECT_EQ(cache.rope_frequencies(), f);
  // keys in range before the embedding may leave it after the rotation back: rejected, cache unchanged
  auto big = k;
  big[(5 * kHeads) * kD] = 32000.0f;  // pair 0 at token 5: R(-5) makes it (-21600, 39800)
  big[(5 * kHeads) * kD + kD / 2] = 32000.0f;
  EXPECT_THROW(cache.append(big.data(), v.data(), 40), skv::Error);
  EXPECT_EQ(cache.size(), 0);
}

}  // namespace test_options
