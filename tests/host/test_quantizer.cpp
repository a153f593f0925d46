// The group quantizer: error bounds derived from the bit width, exact reproduction where the math
// is exact.
#include <skv/quant/quantizer.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace test_quantizer {

// Quantizes one group and checks every element against the bound scale / 2 (with a few float ulps
// for the float computation of the range). Returns the squared error sum.
template <class Q>
double check_group(const std::vector<float>& x) {
  float mn = x[0], mx = x[0];
  for (float v : x) {
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  const typename Q::Stored stored = Q::fit(mn, mx);
  const typename Q::Params p = Q::params(stored);
  EXPECT_TRUE(std::isfinite(p.scale) && p.scale >= 0.0f);
  EXPECT_EQ(p.zero, std::floor(p.zero)) << "zero point must be an integer";
  double sq = 0;
  // float evaluation of x / scale (|x / scale| < 2^12 + 2^8) may move a code by 2.5e-4 of a step
  const double bound = (0.5 + 2.5e-4) * p.scale + 1e-30;
  for (float v : x) {
    const std::uint32_t c = Q::encode(v, p);
    EXPECT_LE(c, Q::kMaxCode);
    const float d = Q::decode(c, p);
    // decode is one exact subtraction and one rounding: identical to the double product rounded once
    EXPECT_EQ(d, static_cast<float>((static_cast<double>(c) - p.zero) * static_cast<double>(p.scale)));
    const double err = std::fabs(static_cast<double>(d) - v);
    EXPECT_LE(err, bound) << "Bits=" << Q::kBits << " x=" << v << " scale=" << p.scale << " zero=" << p.zero;
    sq += err * err;
  }
  return sq;
}

template <int Bits, skv::Scheme S, class ScaleT>
void bound_holds_on_adversarial_groups() {
  using Q = skv::Quantizer<Bits, 32, skv::Axis::Token, S, ScaleT>;
  std::mt19937 rng(Bits * 31 + static_cast<int>(S));
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<float> x(32);
    const float offset = trial % 3 == 0 ? 0.0f : g(rng) * (trial % 5 == 0 ? 500.0f : 5.0f);
    const float width = std::pow(10.0f, static_cast<float>(trial % 9) - 5.0f);  // 1e-5 .. 1e3
    for (float& v : x) v = offset + width * g(rng);
    if (trial % 7 == 0) x[trial % 32] = offset + 50.0f * width;  // an outlier
    check_group<Q>(x);
  }
}

TEST(Quantizer, ErrorIsAtMostHalfAScaleForEveryWidth) {
  bound_holds_on_adversarial_groups<1, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<2, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<3, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<4, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<5, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<6, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<8, skv::Scheme::Asymmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<2, skv::Scheme::Symmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<4, skv::Scheme::Symmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<8, skv::Scheme::Symmetric, skv::fp16>();
  bound_holds_on_adversarial_groups<4, skv::Scheme::Asymmetric, skv::bf16>();
  bound_holds_on_adversarial_groups<3, skv::Scheme::Asymmetric, float>();
}

TEST(Quantizer, ConstantGroupsAreReproducedExactly) {
  using Q4 = skv::Quantizer<4, 32, skv::Axis::Channel>;
  using Q1 = skv::Quantizer<1, 32, skv::Axis::Channel>;
  using S2 = skv::Quantizer<2, 32, skv::Axis::Channel, skv::Scheme::Symmetric>;
  for (float v : {0.0f, 0.5f, 0.25f, -3.75f, 1000.0f, -65504.0f * 0.25f, 6.1035156e-05f}) {
    const auto p4 = Q4::params(Q4::fit(v, v));
    EXPECT_EQ(Q4::decode(Q4::encode(v, p4), p4), v) << v;
    const auto p1 = Q1::params(Q1::fit(v, v));
    EXPECT_EQ(Q1::decode(Q1::encode(v, p1), p1), v) << v;
    const auto s2 = S2::params(S2::fit(v, v));
    EXPECT_EQ(S2::decode(S2::encode(v, s2), s2), v) << v;
  }
  // a constant the storage type cannot hold is still within half a (tiny) scale
  const float v = 0.1f;
  const auto p = Q4::params(Q4::fit(v, v));
  EXPECT_LE(std::fabs(Q4::decode(Q4::encode(v, p), p) - v), 0.5f * p.scale);
  EXPECT_LE(p.scale, v / 1024.0f);
}

TEST(Quantizer, RangeEndpointsAreCoveredAndExactForSmallIntegers) {
  // integer data with an exact scale reproduces every level
  using Q = skv::Quantizer<4, 16, skv::Axis::Token>;
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(i) - 5.0f;
  const auto p = Q::params(Q::fit(-5.0f, 10.0f));
  EXPECT_EQ(p.scale, 1.0f);
  EXPECT_EQ(p.zero, 5.0f);
  for (float v : x) EXPECT_EQ(Q::decode(Q::encode(v, p), p), v);
}

// Uniform data: MSE = step^2 / 12 with step = range / (2^b - 1), so one more bit divides the MSE by
// ((2^(b+1) - 1) / (2^b - 1))^2: 9 from 1 to 2 bits, tending to 4.
template <int Bits>
double uniform_mse() {
  using Q = skv::Quantizer<Bits, 64, skv::Axis::Token>;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  double sq = 0;
  int n = 0;
  for (int g = 0; g < 400; ++g) {
    std::vector<float> x(64);
    for (float& v : x) v = u(rng);
    sq += check_group<Q>(x);
    n += 64;
  }
  return sq / n;
}

TEST(Quantizer, MseFallsAboutFourfoldPerBitOnUniformData) {
  const double mse[] = {uniform_mse<1>(), uniform_mse<2>(), uniform_mse<3>(), uniform_mse<4>(),
                        uniform_mse<5>(), uniform_mse<6>(), uniform_mse<7>(), uniform_mse<8>()};
  for (int b = 1; b < 8; ++b) {
    const double ratio = mse[b - 1] / mse[b];
    const double model = std::pow((std::ldexp(1.0, b + 1) - 1.0) / (std::ldexp(1.0, b) - 1.0), 2.0);
    EXPECT_NEAR(ratio, model, 0.12 * model) << "bits " << b << " -> " << b + 1;
    if (b >= 4) {
      EXPECT_NEAR(ratio, 4.0, 0.6) << "bits " << b << " -> " << b + 1;
    }
  }
  // and the absolute level matches the uniform-noise model step^2 / 12, step = 2 / (2^b - 1)
  const double step4 = 2.0 / 15.0;
  EXPECT_NEAR(mse[3], step4 * step4 / 12.0, 0.15 * step4 * step4 / 12.0);
}

TEST(Quantizer, FarFromOriginGroupsWidenTheScaleButKeepTheBound) {
  using Q = skv::Quantizer<8, 32, skv::Axis::Channel>;
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 8.0f + 0.5f * static_cast<float>(i) / 31.0f;  // [8, 8.5]
  float mn = 8.0f, mx = 8.5f;
  const auto p = Q::params(Q::fit(mn, mx));
  EXPECT_LE(std::fabs(p.zero), skv::ScaleTraits<skv::fp16>::kExactIntegerLimit);
  EXPECT_GE(p.scale, 8.5f / 2048.0f);
  check_group<Q>(x);
}

TEST(Quantizer, CostPerElementCountsMetadata) {
  EXPECT_DOUBLE_EQ((skv::Quantizer<4, 32, skv::Axis::Channel>::bits_per_element()), 5.0);
  EXPECT_DOUBLE_EQ((skv::Quantizer<2, 64, skv::Axis::Token>::bits_per_element()), 2.5);
  EXPECT_DOUBLE_EQ((skv::Quantizer<4, 32, skv::Axis::Channel, skv::Scheme::Symmetric>::bits_per_element()), 4.5);
  EXPECT_DOUBLE_EQ((skv::Quantizer<3, 16, skv::Axis::Token, skv::Scheme::Asymmetric, float>::bits_per_element()), 7.0);
  EXPECT_DOUBLE_EQ((skv::Quantizer<3, 16, skv::Axis::Token, skv::Scheme::Asymmetric, skv::bf16>::bits_per_element()), 5.0);
}

TEST(Quantizer, SymmetricCodesAreCentred) {
  using Q = skv::Quantizer<3, 8, skv::Axis::Token, skv::Scheme::Symmetric>;
  const auto p = Q::params(Q::fit(-3.0f, 1.5f));
  EXPECT_EQ(p.zero, 4.0f);
  EXPECT_EQ(p.scale, 1.0f);
  EXPECT_EQ(Q::encode(0.0f, p), 4u);
  EXPECT_EQ(Q::encode(-3.0f, p), 1u);
  EXPECT_EQ(Q::decode(Q::encode(-3.0f, p), p), -3.0f);
}

}  // namespace test_quantizer
