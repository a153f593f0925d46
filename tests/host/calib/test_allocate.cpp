// Bit allocation: reverse water-filling against its closed form, integer rounding against brute
// force on small problems, and the two-unit gap log_beta(alpha_K / alpha_V).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <skv/calib/allocate.hpp>

#include "cli/common.hpp"

namespace {

using skv::calib::AllocUnit;

AllocUnit unit(double alpha, double beta, double meta = 0.0, double weight = 1.0) {
  AllocUnit u;
  u.alpha = alpha;
  u.beta = beta;
  u.meta_bits = meta;
  u.weight = weight;
  return u;
}

/// The best integer assignment over `allowed` with mean bits <= budget, by enumeration.
double brute_force(const std::vector<AllocUnit>& u, const std::vector<int>& allowed, double budget) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<int> b(u.size());
  std::function<void(std::size_t)> rec = [&](std::size_t i) {
    if (i == u.size()) {
      if (skv::calib::mean_bits(u, b) <= budget + 1e-9) best = std::min(best, skv::calib::total_distortion(u, b));
      return;
    }
    for (int a : allowed) {
      b[i] = a;
      rec(i + 1);
    }
  };
  rec(0);
  return best;
}

TEST(WaterFilling, MatchesTheClosedFormWhenNothingClips) {
  // Equal beta, no clipping: b_u = mean + log_beta(alpha_u / geometric mean of alpha).
  const std::vector<AllocUnit> u = {unit(1.0, 4.0), unit(16.0, 4.0), unit(4.0, 4.0), unit(0.25, 4.0)};
  const auto w = skv::calib::water_fill(u, 4.0, 0.0, 16.0);
  const double log_gm = (std::log(1.0) + std::log(16.0) + std::log(4.0) + std::log(0.25)) / 4;
  for (std::size_t i = 0; i < u.size(); ++i)
    EXPECT_NEAR(w.bits[i], 4.0 + (std::log(u[i].alpha) - log_gm) / std::log(4.0), 1e-9);
  EXPECT_NEAR(w.mean_bits, 4.0, 1e-9);
  // The marginal distortion per bit is the water level for every unclipped unit.
  for (std::size_t i = 0; i < u.size(); ++i)
    EXPECT_NEAR(u[i].alpha * std::log(4.0) * std::pow(4.0, -w.bits[i]), w.lambda, 1e-9 * w.lambda);
}

TEST(WaterFilling, ClipsAndCountsMetadata) {
  std::vector<AllocUnit> u = {unit(1e6, 4.0, 1.0), unit(1e-6, 4.0, 0.5), unit(1.0, 5.0, 1.0)};
  const auto w = skv::calib::water_fill(u, 6.0, 2.0, 8.0);
  EXPECT_DOUBLE_EQ(w.bits[0], 8.0);  // huge alpha: pinned at the top
  EXPECT_DOUBLE_EQ(w.bits[1], 2.0);  // negligible alpha: pinned at the bottom
  EXPECT_NEAR(w.bits[2], 3 * 6.0 - 2.5 - 8.0 - 2.0, 1e-9);  // the rest of the budget, metadata counted
  // With less budget the top unit leaves the ceiling and the other unit keeps at least b_min.
  const auto tight = skv::calib::water_fill(u, 4.0, 2.0, 8.0);
  EXPECT_NEAR(tight.bits[0], 3 * 4.0 - 2.5 - 2.0 - 2.0, 1e-6);
  EXPECT_NEAR(tight.mean_bits, 4.0, 1e-9);
  EXPECT_THROW(skv::calib::water_fill(u, 2.5, 2.0, 8.0), skv::Error);  // below 2 bits + metadata
  const auto all = skv::calib::water_fill(u, 20.0, 2.0, 8.0);
  for (double b : all.bits) EXPECT_DOUBLE_EQ(b, 8.0);
  u[0].beta = 1.0;
  EXPECT_THROW(skv::calib::water_fill(u, 4.0, 2.0, 8.0), skv::Error);
}

// A budget that is not a number (NaN, or an infinity from a parse) is named as such, not compared.
TEST(WaterFilling, RejectsNonFiniteBudgets) {
  const std::vector<AllocUnit> u = {unit(1.0, 4.0), unit(2.0, 4.0)};
  for (double b : {std::nan(""), std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
    for (int which = 0; which < 2; ++which) {
      try {
        if (which == 0)
          skv::calib::water_fill(u, b, 1.0, 8.0);
        else
          skv::calib::round_allocation(u, {4.0, 4.0}, {2, 4}, b);
        ADD_FAILURE() << "budget " << b << " was accepted";
      } catch (const skv::Error& e) {
        EXPECT_NE(std::string(e.what()).find("is not a number of bits"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Rounding, MatchesBruteForceOnSmallProblems) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> la(-4.0, 4.0), lb(3.5, 7.0), meta(0.0, 1.0);
  const std::vector<std::vector<int>> sets = {{2, 3, 4, 5, 6}, {1, 2, 3, 4, 5, 6, 7, 8}, {2, 3, 4}};
  int cases = 0;
  for (const auto& allowed : sets)
    for (int n = 2; n <= 5; ++n)
      for (int rep = 0; rep < 12; ++rep) {
        std::vector<AllocUnit> u;
        for (int i = 0; i < n; ++i) u.push_back(unit(std::exp(la(rng)), lb(rng), rep % 2 ? 0.0 : std::round(meta(rng) * 4) / 4));
        const double lo = skv::calib::mean_bits(u, std::vector<int>(u.size(), allowed.front()));
        const double hi = skv::calib::mean_bits(u, std::vector<int>(u.size(), allowed.back()));
        const double budget = lo + (hi - lo) * std::uniform_real_distribution<double>(0.05, 0.95)(rng);
        const auto b = skv::calib::allocate(u, allowed, budget);
        EXPECT_LE(skv::calib::mean_bits(u, b), budget + 1e-9);
        const double got = skv::calib::total_distortion(u, b), best = brute_force(u, allowed, budget);
        EXPECT_NEAR(got, best, 1e-9 * best) << "n=" << n << " budget=" << budget << " allowed " << allowed.size();
        ++cases;
      }
  EXPECT_EQ(cases, 144);
}

TEST(Rounding, UsesMeasuredDistortionWhereGiven) {
  // Unit 0's fit says bits are worth a lot, but its measurements say 3 -> 4 gains nothing.
  std::vector<AllocUnit> u = {unit(100.0, 4.0), unit(10.0, 4.0)};
  u[0].measured.assign(9, std::numeric_limits<double>::quiet_NaN());
  u[0].measured[3] = 1.0;
  u[0].measured[4] = 1.0;
  const auto b = skv::calib::round_allocation(u, {3.0, 3.0}, {3, 4}, 3.5);
  EXPECT_EQ(b[0], 3);
  EXPECT_EQ(b[1], 4);
  EXPECT_DOUBLE_EQ(u[0].at(4), 1.0);
  EXPECT_DOUBLE_EQ(u[0].at(5), 100.0 * std::pow(4.0, -5));
}

TEST(TwoUnits, GapIsLogBetaOfTheAlphaRatioRounded) {
  // Minimizing alpha_K beta^-b_K + alpha_V beta^-b_V with b_K + b_V fixed gives
  // b_K - b_V = log_beta(alpha_K / alpha_V) (docs/theory.md, "The allocation rule"); with integer widths the gap is that,
  // rounded, whenever the total's parity allows it.
  for (double beta : {4.0, 5.3}) {
    for (double ratio : {1.0, 3.0, 7.0, 13.0, 24.0, 44.0, 200.0, 0.2}) {
      const double x = std::log(ratio) / std::log(beta);
      const std::vector<AllocUnit> u = {unit(ratio, beta, 1.0), unit(1.0, beta, 0.5)};
      const auto r = static_cast<long>(std::lround(x));
      for (int total : {7, 8, 9, 10}) {  // b_K + b_V
        if ((total - r) % 2 != 0) continue;
        const double budget = (total + 1.5) / 2.0;  // metadata 1 + 0.5 bits
        const auto w = skv::calib::water_fill(u, budget, 0.0, 16.0);
        EXPECT_NEAR(w.bits[0] - w.bits[1], x, 1e-9);
        const std::vector<int> allowed = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
        const auto b = skv::calib::allocate(u, allowed, budget);
        EXPECT_EQ(b[0] + b[1], total);
        EXPECT_EQ(b[0] - b[1], r) << "ratio " << ratio << " beta " << beta << " total " << total;
      }
    }
  }
  // Llama-class keys (MSE ratio 24-44, beta 4): a gap of about 2.5 bits -> K4V2 style plans at 3.75 bits.
  const auto b = skv::calib::allocate({unit(30.0, 4.0, 1.0), unit(1.0, 4.0, 0.5)}, {2, 3, 4, 5, 6, 8}, 3.75);
  EXPECT_EQ(b[0], 4);
  EXPECT_EQ(b[1], 2);
}

TEST(Uniform, WidestSingleWidthThatFits) {
  const std::vector<AllocUnit> u = {unit(1, 4, 1.0), unit(1, 4, 0.5)};
  EXPECT_EQ(skv::calib::uniform_bits(u, {2, 3, 4, 8}, 3.75), 3);
  EXPECT_EQ(skv::calib::uniform_bits(u, {2, 3, 4, 8}, 4.75), 4);
  EXPECT_EQ(skv::calib::uniform_bits(u, {2, 3, 4, 8}, 2.0), -1);
}

// skv plan's summary line: a ratio only where both distortions are positive (0 / 0 printed "-nanx").
TEST(PlanSummary, ZeroDistortionPrintsNoRatio) {
  EXPECT_EQ(skv_cli::plan_summary(0.2829, 0.3466, 3), "predicted distortion 0.2829 vs 0.3466 for uniform k3v3 (1.23x lower)");
  EXPECT_EQ(skv_cli::plan_summary(0.0, 0.0, 4), "predicted distortion 0 vs 0 for uniform k4v4 (the same)");
  EXPECT_EQ(skv_cli::plan_summary(0.0, 0.5, 4), "predicted distortion 0 vs 0.5 for uniform k4v4");
  EXPECT_EQ(skv_cli::plan_summary(2.0, 1.0, 2), "predicted distortion 2 vs 1 for uniform k2v2 (2x higher)");
  EXPECT_EQ(skv_cli::plan_summary(1.0, 0.0, 0), "predicted distortion 1 (no uniform width fits this budget)");
  for (const double a : {0.0, 1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    for (const double b : {0.0, 2.0}) {
      const std::string line = skv_cli::plan_summary(a, b, 3);
      EXPECT_EQ(line.find("nanx"), std::string::npos) << line;
      EXPECT_EQ(line.find("infx"), std::string::npos) << line;
    }
}

}  // namespace
