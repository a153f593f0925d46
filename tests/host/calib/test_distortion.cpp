// Distortion measurement: skv's quantizers as the cache applies them, the score-space key error
// against a brute-force computation, the exponential fit, and K/V dumps (valid and malformed).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <skv/cache/kv_cache.hpp>
#include <skv/calib/distortion.hpp>
#include <skv/calib/dump.hpp>
#include <skv/calib/plan.hpp>
#include <skv/io/safetensors.hpp>

#include "cli/gen.hpp"
#include "helpers.hpp"

namespace {

using skv::calib::DistortionOptions;
using skv::calib::fit_exponential;

std::vector<float> gaussian(std::size_t n, float sd, unsigned seed, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

TEST(ExpFit, RecoversAlphaAndBetaExactly) {
  const std::vector<int> bits = {2, 3, 4, 5, 6, 8};
  std::vector<double> d;
  for (int b : bits) d.push_back(0.37 * std::pow(4.6, -b));
  const auto f = fit_exponential(bits, d);
  EXPECT_NEAR(f.alpha, 0.37, 1e-12);
  EXPECT_NEAR(f.beta, 4.6, 1e-12);
  EXPECT_NEAR(f.r2, 1.0, 1e-12);
  EXPECT_NEAR(f(3.5), 0.37 * std::pow(4.6, -3.5), 1e-15);
  // Zero distortions are left out of the log fit; non-decreasing data clamps beta just above 1.
  d.back() = 0.0;
  EXPECT_NEAR(fit_exponential(bits, d).beta, 4.6, 1e-12);
  EXPECT_LT(fit_exponential({2, 3}, {1.0, 2.0}).beta, 1.0 + 1e-5);
  EXPECT_EQ(fit_exponential({2, 3}, {0.0, 0.0}).alpha, 0.0);
}

TEST(FakeQuantize, IsExactlyWhatTheCacheStores) {
  constexpr int D = 64, H = 2, T = 96;
  const auto k = gaussian(static_cast<std::size_t>(T) * H * D, 2.0f, 1, 0.5f);
  const auto v = gaussian(k.size(), 0.5f, 2);
  skv::KVCache<3, 2, D> cache(H, T);
  cache.append(k.data(), v.data(), T);
  const auto view = cache.view();
  ASSERT_EQ(cache.quantized_size(), T);
  std::vector<float> kq(static_cast<std::size_t>(T) * D), vq(kq.size());
  for (int h = 0; h < H; ++h) {
    skv::calib::fake_quantize(3, 32, skv::Axis::Channel, k.data() + h * D, H * D, T, D, kq.data());
    skv::calib::fake_quantize(2, 64, skv::Axis::Token, v.data() + h * D, H * D, T, D, vq.data());
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < D; ++c) {
        ASSERT_EQ(kq[static_cast<std::size_t>(t) * D + c], view.key(t, h, c)) << t << " " << h << " " << c;
        ASSERT_EQ(vq[static_cast<std::size_t>(t) * D + c], view.value(t, h, c)) << t << " " << h << " " << c;
      }
  }
  std::vector<float> out(10);
  EXPECT_THROW(skv::calib::fake_quantize(9, 32, skv::Axis::Channel, k.data(), D, 32, D, out.data()), skv::Error);
  EXPECT_THROW(skv::calib::fake_quantize(4, 48, skv::Axis::Channel, k.data(), D, 48, D, out.data()), skv::Error);
  EXPECT_THROW(skv::calib::fake_quantize(4, 128, skv::Axis::Token, k.data(), D, 1, D, out.data()), skv::Error);
}

TEST(MeasureHead, PlainMseWithoutQueriesFallsWithBits) {
  constexpr int D = 32, T = 128;
  const auto k = gaussian(static_cast<std::size_t>(T) * D, 3.0f, 3), v = gaussian(k.size(), 0.5f, 4);
  DistortionOptions o;
  o.bits = {2, 3, 4, 5, 6, 8};
  const auto kv = skv::calib::measure_head(k.data(), v.data(), D, nullptr, 0, 0, T, D, o);
  std::vector<float> kq(k.size());
  for (std::size_t i = 0; i < o.bits.size(); ++i) {
    skv::calib::fake_quantize(o.bits[i], 32, skv::Axis::Channel, k.data(), D, T, D, kq.data());
    double mse = 0;
    for (std::size_t j = 0; j < k.size(); ++j) mse += (static_cast<double>(kq[j]) - k[j]) * (static_cast<double>(kq[j]) - k[j]);
    EXPECT_NEAR(kv.first.distortion[i], mse / static_cast<double>(k.size()), 1e-12 * mse);
    if (i > 0) {
      EXPECT_LT(kv.first.distortion[i], kv.first.distortion[i - 1]);
      EXPECT_LT(kv.second.distortion[i], kv.second.distortion[i - 1]);
    }
  }
  // Keys carry 36x the energy of values: at equal bits their MSE is far larger.
  EXPECT_GT(kv.first.distortion[2], 10 * kv.second.distortion[2]);
  EXPECT_NEAR(kv.first.energy, 9.0, 1.0);
  // MSE falls roughly 4x per bit (the paper measures 4.2-7x).
  EXPECT_GT(kv.first.fit.beta, 3.0);
  EXPECT_LT(kv.first.fit.beta, 8.0);
  EXPECT_GT(kv.second.fit.beta, 3.0);
  EXPECT_LT(kv.second.fit.beta, 8.0);
}

TEST(MeasureHead, ScoreSpaceMatchesBruteForce) {
  constexpr int D = 16, T = 64, G = 3;  // 3 query heads read this KV head
  const auto k = gaussian(static_cast<std::size_t>(T) * D, 2.0f, 5, 1.0f), v = gaussian(k.size(), 0.7f, 6);
  auto q = gaussian(static_cast<std::size_t>(T) * G * D, 1.0f, 7);
  for (int t = 0; t < T; ++t) q[static_cast<std::size_t>(t) * G * D] *= 5.0f;  // an anisotropic query distribution
  DistortionOptions o;
  o.bits = {2, 4};
  const auto kv = skv::calib::measure_head(k.data(), v.data(), D, q.data(), G * D, G, T, D, o);
  double var_v = 0;
  for (int c = 0; c < D; ++c) {
    double s = 0, s2 = 0;
    for (int t = 0; t < T; ++t) {
      s += v[static_cast<std::size_t>(t) * D + c];
      s2 += v[static_cast<std::size_t>(t) * D + c] * static_cast<double>(v[static_cast<std::size_t>(t) * D + c]);
    }
    var_v += s2 / T - (s / T) * (s / T);
  }
  var_v /= D;
  std::vector<float> kq(k.size());
  for (std::size_t i = 0; i < o.bits.size(); ++i) {
    skv::calib::fake_quantize(o.bits[i], 32, skv::Axis::Channel, k.data(), D, T, D, kq.data());
    // E over queries of the variance over tokens of the logit error q.e_t / sqrt(d).
    double total = 0;
    for (int s = 0; s < T; ++s)
      for (int g = 0; g < G; ++g) {
        const float* qr = &q[(static_cast<std::size_t>(s) * G + g) * D];
        double m = 0, m2 = 0;
        for (int t = 0; t < T; ++t) {
          double dot = 0;
          for (int c = 0; c < D; ++c)
            dot += qr[c] * (static_cast<double>(kq[static_cast<std::size_t>(t) * D + c]) - k[static_cast<std::size_t>(t) * D + c]);
          dot /= std::sqrt(static_cast<double>(D));
          m += dot;
          m2 += dot * dot;
        }
        total += m2 / T - (m / T) * (m / T);
      }
    const double expected = total / (T * G) * var_v;
    EXPECT_NEAR(kv.first.distortion[i], expected, 1e-9 * expected);
    EXPECT_GT(kv.first.mse[i], 0.0);
  }
  EXPECT_THROW(skv::calib::measure_head(k.data(), v.data(), D, q.data(), G * D, G, 16, D, o), skv::Error);  // < one key group
}

TEST(KVDump, ReadsGeneratedDumpsAndMeasuresEveryUnit) {
  skv_test::TempDir dir;
  skv_cli::GenDumpOptions g;
  g.layers = 3;
  g.kv_heads = 2;
  g.q_per_kv = 2;
  g.tokens = 96;
  g.head_dim = 32;
  g.dtype = skv::io::DType::BF16;
  skv_cli::gen_dump(dir.file("d.safetensors"), g);
  skv::calib::KVDump dump(dir.file("d.safetensors"));
  EXPECT_EQ(dump.num_layers(), 3);
  EXPECT_EQ(dump.tokens(), 96);
  EXPECT_EQ(dump.kv_heads(), 2);
  EXPECT_EQ(dump.q_heads(), 4);
  EXPECT_EQ(dump.head_dim(), 32);
  EXPECT_TRUE(dump.has_queries());
  DistortionOptions o;
  int calls = 0;
  const auto t = skv::calib::measure_distortion(dump, o, [&](int done, int total) {
    ++calls;
    EXPECT_EQ(total, 3);
    EXPECT_EQ(done, calls);
  });
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(t.score_space);
  EXPECT_EQ(t.value_group, 32);  // the largest power of two <= 64 dividing head_dim 32
  ASSERT_EQ(t.units.size(), 3u * 2 * 2);
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 2; ++h) {
      EXPECT_TRUE(t.unit(l, h, true).is_key);
      EXPECT_FALSE(t.unit(l, h, false).is_key);
      EXPECT_EQ(t.unit(l, h, true).layer, l);
      EXPECT_EQ(t.unit(l, h, false).head, h);
      EXPECT_GT(t.unit(l, h, true).fit.beta, 2.0);
      EXPECT_GT(t.unit(l, h, true).fit.r2, 0.9);
    }
  // The generator makes later layers' keys heavier: their raw key MSE grows with the layer.
  EXPECT_GT(t.unit(2, 0, true).mse[2], 2.0 * t.unit(0, 0, true).mse[2]);

  // The plan spends the budget and beats (or ties) the uniform allocation it reports.
  for (auto gran : {skv::calib::Granularity::Layer, skv::calib::Granularity::Head}) {
    const auto plan = skv::calib::make_plan(skv::calib::problem_from_table(t, gran), {2, 3, 4, 5, 6, 8}, 3.75);
    EXPECT_LE(plan.mean_bits, 3.75 + 1e-9);
    EXPECT_GT(plan.mean_bits, 3.75 - 1.0);
    EXPECT_LE(plan.predicted_distortion, plan.uniform_distortion * (1 + 1e-12));
    // head_dim 32: value groups of 32 too, so 1 bit of metadata on both sides; 3 + 1 > 3.75.
    EXPECT_EQ(plan.uniform_bits, 2);
    ASSERT_EQ(plan.layers.size(), 3u);
    const auto j = skv::calib::plan_to_json(plan);
    EXPECT_EQ(j["budget"].get<double>(), 3.75);
    EXPECT_EQ(j["layers"].size(), 3u);
    EXPECT_EQ(j["layers"][0].contains("heads"), gran == skv::calib::Granularity::Head);
  }
}

// Calibration holds a dump to the range the cache accepts (|x| <= 32752 with fp16 scales), as skv eval
// does: beyond it the fp16 scale overflows and every distortion would be NaN.
TEST(KVDump, ValuesTheCacheRejectsAreRejectedByCalibration) {
  constexpr int T = 64, H = 1, D = 8;
  std::vector<float> k(T * H * D, 1.0f), v = k;
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i % 13) - 6.0f;
  skv::calib::DistortionOptions o;
  o.bits = {2, 4};
  EXPECT_NO_THROW(skv::calib::measure_head(k.data(), v.data(), D, nullptr, 0, 0, T, D, o));
  v[100] = 40000.0f;
  try {
    skv::calib::measure_head(k.data(), v.data(), D, nullptr, 0, 0, T, D, o);
    FAIL() << "accepted";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("value at token 12, dim 4 is 40000"), std::string::npos) << e.what();
  }
  v[100] = 1.0f;
  k[3] = -32753.0f;
  EXPECT_THROW(skv::calib::measure_head(k.data(), v.data(), D, nullptr, 0, 0, T, D, o), skv::Error);
  k[3] = -32752.0f;  // the largest magnitude the cache accepts
  EXPECT_NO_THROW(skv::calib::measure_head(k.data(), v.data(), D, nullptr, 0, 0, T, D, o));

  skv_test::TempDir dir;
  const std::string p = dir.file("big.safetensors");
  k[3] = 1e6f;
  skv::io::write_safetensors(p, {{"layers.0.k", skv::io::DType::F32, {T, H, D}, k}, {"layers.0.v", skv::io::DType::F32, {T, H, D}, v}});
  const skv::calib::KVDump dump(p);
  try {
    skv::calib::measure_distortion(dump, o);
    FAIL() << "accepted";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'layers.0.k' element 3 is 1000000"), std::string::npos) << e.what();
  }
}

TEST(KVDump, MalformedDumpsAreClearErrors) {
  skv_test::TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  auto expect_error = [&](const std::vector<skv::io::TensorData>& t, const std::string& what) {
    skv::io::write_safetensors(p, t);
    try {
      skv::calib::KVDump d(p);
      FAIL() << "expected: " << what;
    } catch (const skv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const std::vector<float> x(2 * 3 * 8, 1.0f);
  using skv::io::DType;
  expect_error({{"weights", DType::F32, {2, 3, 8}, x}}, "not a K/V dump");
  expect_error({{"layers.0.k", DType::F32, {2, 3, 8}, x}}, "no tensor layers.0.v");
  expect_error({{"layers.0.k", DType::F32, {2, 3, 8}, x}, {"layers.0.v", DType::F32, {2, 8, 3}, x}}, "differ in shape");
  expect_error({{"layers.0.k", DType::F32, {6, 8}, x}, {"layers.0.v", DType::F32, {6, 8}, x}}, "[tokens, heads, head_dim]");
  expect_error({{"layers.0.k", DType::F32, {2, 3, 8}, x}, {"layers.0.v", DType::F32, {2, 3, 8}, x},
                {"layers.0.q", DType::F32, {2, 4, 6}, std::vector<float>(48, 1.0f)}},
               "layers.0.q");
  // every layer must have the same number of query heads (readers size buffers with q_heads())
  expect_error({{"layers.0.k", DType::F32, {2, 2, 8}, std::vector<float>(32, 1.0f)},
                {"layers.0.v", DType::F32, {2, 2, 8}, std::vector<float>(32, 1.0f)},
                {"layers.0.q", DType::F32, {2, 2, 8}, std::vector<float>(32, 1.0f)},
                {"layers.1.k", DType::F32, {2, 2, 8}, std::vector<float>(32, 1.0f)},
                {"layers.1.v", DType::F32, {2, 2, 8}, std::vector<float>(32, 1.0f)},
                {"layers.1.q", DType::F32, {2, 4, 8}, std::vector<float>(64, 1.0f)}},
               "'layers.1.q' has 4 query heads, but layer 0 has 2");
  std::vector<float> nan = x;
  nan[5] = std::nanf("");
  skv::io::write_safetensors(p, {{"layers.0.k", DType::F32, {2, 3, 8}, nan}, {"layers.0.v", DType::F32, {2, 3, 8}, x}});
  EXPECT_THROW(skv::calib::KVDump(p).layer(0), skv::Error);
}

}  // namespace
