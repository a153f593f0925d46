// The group quantizer: error bounds derived from the bit width, exact reproduction where the math
// is exact.
#include <skv/quant/quantizer.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
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


// ---- Scheme::LloydMax: the Lloyd-Max levels of a standard normal on a 0..255 grid ----------------

template <int Bits>
using LloydMax = skv::Quantizer<Bits, 64, skv::Axis::Token, skv::Scheme::LloydMax>;

/// The level of code c in standard deviations: (level(c) - 127.5) * step.
template <int Bits>
double level_in_sd(std::uint32_t c) {
  return (static_cast<double>(LloydMax<Bits>::level(c)) - 127.5) * skv::detail::kLloydMaxStep<Bits>;
}

template <int Bits>
void check_lloyd_max_levels() {
  using Q = LloydMax<Bits>;
  const double step = skv::detail::kLloydMaxStep<Bits>;
  EXPECT_EQ(Q::level(0), 0u);
  EXPECT_EQ(Q::level(Q::kMaxCode), 255u);
  auto pdf = [](double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::acos(-1.0)); };
  auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  for (std::uint32_t c = 0; c <= Q::kMaxCode; ++c) {
    EXPECT_EQ(Q::level(c) + Q::level(Q::kMaxCode - c), 255u) << "symmetric, bits " << Bits << " code " << c;
    if (c > 0) {
      EXPECT_GT(Q::level(c), Q::level(c - 1));
    }
    // the Lloyd-Max condition: each level is the mean of a standard normal over its cell (bounded
    // by the midpoints to its neighbours), up to the grid's rounding of half a step
    const double a = c == 0 ? -INFINITY : 0.5 * (level_in_sd<Bits>(c - 1) + level_in_sd<Bits>(c));
    const double b = c == Q::kMaxCode ? INFINITY : 0.5 * (level_in_sd<Bits>(c) + level_in_sd<Bits>(c + 1));
    const double centroid = ((c == 0 ? 0.0 : pdf(a)) - (c == Q::kMaxCode ? 0.0 : pdf(b))) / (cdf(b) - cdf(a));
    EXPECT_NEAR(level_in_sd<Bits>(c), centroid, step) << "bits " << Bits << " code " << c;
  }
  // the outermost level of the published tables: 0.7979, 1.5104, 2.1520, 2.7326 standard deviations
  const double outer[] = {0.0, 0.7979, 1.5104, 2.1520, 2.7326};
  EXPECT_NEAR(level_in_sd<Bits>(Q::kMaxCode), outer[Bits], 1e-4);
}

TEST(Quantizer, LloydMaxLevelsAreTheNormalDistributionsOptimum) {
  check_lloyd_max_levels<1>();
  check_lloyd_max_levels<2>();
  check_lloyd_max_levels<3>();
  check_lloyd_max_levels<4>();
  EXPECT_EQ(LloydMax<2>::level(1), 89u);
  EXPECT_EQ(LloydMax<2>::level(2), 166u);
  EXPECT_DOUBLE_EQ(LloydMax<2>::bits_per_element(), 2.5);  // the same fp16 scale and zero per group
}

template <int Bits>
void check_lloyd_max_encode_is_nearest() {
  using Q = LloydMax<Bits>;
  std::mt19937 rng(Bits);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int trial = 0; trial < 2000; ++trial) {
    // parameters as stored: fp16 scale and zero point
    const typename Q::Params p = Q::params(skv::from_float<skv::fp16>(std::ldexp(1.0f + u(rng), trial % 20 - 10)),
                                           skv::from_float<skv::fp16>(127.5f + 300.0f * u(rng)));
    const float x = (300.0f * u(rng) - (p.zero - 127.5f)) * p.scale;
    const std::uint32_t c = Q::encode(x, p);
    ASSERT_LE(c, Q::kMaxCode);
    const double t = static_cast<double>(x) / p.scale + p.zero;
    for (std::uint32_t o = 0; o <= Q::kMaxCode; ++o)  // no level is nearer (float rounding of t aside)
      ASSERT_LE(std::fabs(t - Q::level(c)), std::fabs(t - Q::level(o)) + 1e-3) << "bits " << Bits << " x " << x;
    // decode is level - zero (exact: an fp16 zero point) and one rounding
    ASSERT_EQ(Q::decode(c, p), static_cast<float>((static_cast<double>(Q::level(c)) - p.zero) * p.scale));
  }
}

TEST(Quantizer, LloydMaxEncodePicksTheNearestLevel) {
  check_lloyd_max_encode_is_nearest<1>();
  check_lloyd_max_encode_is_nearest<2>();
  check_lloyd_max_encode_is_nearest<3>();
  check_lloyd_max_encode_is_nearest<4>();
}

/// Mean squared error per element over `groups` groups of 64 normal values (mean `mu`, deviation
/// sigma), in units of sigma^2: Lloyd-Max's, and min-max Asymmetric's at the same bits.
template <int Bits>
std::pair<double, double> normal_group_errors(int groups, float mu, float sigma) {
  using Q = LloydMax<Bits>;
  using U = skv::Quantizer<Bits, 64, skv::Axis::Token>;
  std::mt19937 rng(Bits * 7 + 1);
  std::normal_distribution<float> g(mu, sigma);
  double lm = 0.0, un = 0.0;
  std::vector<float> x(64);
  std::vector<std::uint8_t> codes(64);
  for (int i = 0; i < groups; ++i) {
    for (float& v : x) v = g(rng);
    const auto p = Q::params(Q::quantize_group(x.data(), 1, codes.data(), 1));
    const auto pu = U::params(U::quantize_group(x.data(), 1, codes.data(), 1));
    for (float v : x) {
      lm += std::pow(static_cast<double>(Q::decode(Q::encode(v, p), p)) - v, 2);
      un += std::pow(static_cast<double>(U::decode(U::encode(v, pu), pu)) - v, 2);
    }
  }
  const double n = 64.0 * groups * static_cast<double>(sigma) * sigma;
  return {lm / n, un / n};
}

TEST(Quantizer, LloydMaxReachesTheLloydMaxDistortionOfNormalGroups) {
  // Lloyd-Max distortion of a standard normal: 0.3634, 0.1175, 0.03454, 0.009497 (1..4 bits). The
  // groups are fitted with their own mean and deviation (a little below the distribution's), so
  // 64-element groups land within -10% .. +5%; min-max levels lose 1.8x at 2 bits, 1.15x at 3 bits
  // and win at 4 (the codebook targets 2- and 3-bit values).
  const auto e1 = normal_group_errors<1>(2000, 1.0f, 3.0f);
  const auto e2 = normal_group_errors<2>(2000, -40.0f, 3.0f);
  const auto e3 = normal_group_errors<3>(2000, 0.0f, 1e-3f);
  const auto e4 = normal_group_errors<4>(2000, 5.0f, 100.0f);
  EXPECT_GT(e1.first, 0.90 * 0.3634);
  EXPECT_LT(e1.first, 1.05 * 0.3634);
  EXPECT_GT(e2.first, 0.90 * 0.1175);
  EXPECT_LT(e2.first, 1.05 * 0.1175);
  EXPECT_GT(e3.first, 0.90 * 0.03454);
  EXPECT_LT(e3.first, 1.05 * 0.03454);
  EXPECT_GT(e4.first, 0.90 * 0.009497);
  EXPECT_LT(e4.first, 1.05 * 0.009497);
  EXPECT_LT(e2.first, 0.6 * e2.second);
  EXPECT_LT(e3.first, 0.95 * e3.second);
}

TEST(Quantizer, LloydMaxKeepsConstantAndExtremeGroupsFinite) {
  using Q = LloydMax<2>;
  std::vector<std::uint8_t> codes(64);
  for (float c : {0.0f, 3.0f, -0.375f, 1000.0f, -32752.0f}) {  // constant groups the storage holds: exact
    std::vector<float> x(64, c);
    const auto p = Q::params(Q::quantize_group(x.data(), 1, codes.data(), 1));
    for (int i = 0; i < 64; ++i) EXPECT_EQ(Q::decode(codes[i], p), c) << c;
  }
  // the floor of the scale, max|x| / 32768: a constant fp16 cannot hold, or a group far from the
  // origin (mean 30000, deviation 1), keeps at most half the widest gap (38.5 grid steps at two
  // bits) plus the zero point's rounding (8 steps at |zero| near 32768): 48 * max|x| / 32768
  {
    std::vector<float> x(64, 0.1f);
    const auto p = Q::params(Q::quantize_group(x.data(), 1, codes.data(), 1));
    for (int i = 0; i < 64; ++i) EXPECT_NEAR(Q::decode(codes[i], p), 0.1f, 48 * 0.1f / 32768);
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(64);
  for (float& v : x) v = 30000.0f + g(rng);
  auto p = Q::params(Q::quantize_group(x.data(), 1, codes.data(), 1));
  ASSERT_TRUE(std::isfinite(p.zero) && std::isfinite(p.scale));
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(Q::decode(codes[i], p), x[i], 48.0 * amax / 32768);
  // float scales: values near 1e27 square to infinity and near 1e-40 to zero; the deviations are
  // summed relative to max|x|, so both fit (relative error of a 2-bit Lloyd-Max code: below 1)
  using F = skv::Quantizer<2, 64, skv::Axis::Token, skv::Scheme::LloydMax, float>;
  for (float m : {1e27f, 1e-40f}) {
    for (float& v : x) v = m * g(rng);
    const auto pf = F::params(F::quantize_group(x.data(), 1, codes.data(), 1));
    double e = 0, n = 0;
    for (int i = 0; i < 64; ++i) {
      const double d = F::decode(codes[i], pf);
      ASSERT_TRUE(std::isfinite(d));
      e += (d - x[i]) * (d - x[i]);
      n += static_cast<double>(x[i]) * x[i];
    }
    EXPECT_LT(e / n, 0.2) << m;
  }
}

}  // namespace test_quantizer
