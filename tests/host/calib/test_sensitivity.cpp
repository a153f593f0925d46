// The loop planner: the multiple-choice knapsack against brute force, and plans from sensitivity
// tables (the JSON skv.calibrate writes): budget held, uniform baseline, bad tables rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <skv/calib/sensitivity.hpp>

namespace {

using skv::calib::choose_per_group;

/// Least summed loss over every assignment with summed cost <= budget (inf when none fits).
double brute_force(const std::vector<std::vector<double>>& cost, const std::vector<std::vector<double>>& loss, double budget) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<std::size_t> idx(cost.size(), 0);
  for (;;) {
    double c = 0, l = 0;
    for (std::size_t g = 0; g < cost.size(); ++g) {
      c += cost[g][idx[g]];
      l += loss[g][idx[g]];
    }
    if (c <= budget + 1e-12) best = std::min(best, l);
    std::size_t g = 0;
    while (g < cost.size() && ++idx[g] == cost[g].size()) idx[g++] = 0;
    if (g == cost.size()) return best;
  }
}

TEST(ChoosePerGroup, MatchesBruteForceOnSmallProblems) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const std::size_t groups = 1 + trial % 5, choices = 1 + (trial / 5) % 4;
    std::vector<std::vector<double>> cost(groups), loss(groups);
    double cheapest = 0;
    for (std::size_t g = 0; g < groups; ++g) {
      for (std::size_t i = 0; i < choices; ++i) {
        // Costs on a 1/64 grid, as held bits are: the rounding to units of budget / 20000 is then exact
        // whenever budget / 20000 divides 1/64, which the budgets below make sure of.
        cost[g].push_back(std::round(u(rng) * 8 * 64) / 64);
        loss[g].push_back(u(rng));
      }
      cheapest += *std::min_element(cost[g].begin(), cost[g].end());
    }
    const double budget = std::ceil((cheapest + u(rng) * 4) * 64) / 64 + 1.0 / 64;
    const std::vector<int> pick = choose_per_group(cost, loss, budget, static_cast<int>(budget * 64 * 4));
    double c = 0, l = 0;
    for (std::size_t g = 0; g < groups; ++g) {
      ASSERT_GE(pick[g], 0);
      c += cost[g][static_cast<std::size_t>(pick[g])];
      l += loss[g][static_cast<std::size_t>(pick[g])];
    }
    EXPECT_LE(c, budget + 1e-12) << "trial " << trial;
    EXPECT_NEAR(l, brute_force(cost, loss, budget), 1e-12) << "trial " << trial;
  }
}

TEST(ChoosePerGroup, NeverExceedsTheBudgetWithUnroundedCosts) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(0.5, 9.0);
  std::vector<std::vector<double>> cost(30), loss(30);
  for (std::size_t g = 0; g < 30; ++g)
    for (int i = 0; i < 12; ++i) {
      cost[g].push_back(u(rng) / 30);
      loss[g].push_back(1.0 / cost[g].back());
    }
  for (const double budget : {3.0, 3.999, 4.0, 6.1}) {
    const std::vector<int> pick = choose_per_group(cost, loss, budget);
    double c = 0;
    for (std::size_t g = 0; g < 30; ++g) c += cost[g][static_cast<std::size_t>(pick[g])];
    EXPECT_LE(c, budget);
    EXPECT_GT(c, budget - 0.2) << "a budget this loose should be nearly spent";
  }
}

TEST(ChoosePerGroup, RejectsWhatCannotFit) {
  const std::vector<std::vector<double>> cost{{2.0, 3.0}, {2.0}};
  const std::vector<std::vector<double>> loss{{1.0, 0.5}, {1.0}};
  EXPECT_THROW(choose_per_group(cost, loss, 3.9), skv::Error);
  EXPECT_EQ(choose_per_group(cost, loss, 4.0), (std::vector<int>{0, 0}));
  EXPECT_EQ(choose_per_group(cost, loss, 5.0), (std::vector<int>{1, 0}));
  EXPECT_THROW(choose_per_group(cost, {{1.0, -0.5}, {1.0}}, 5.0), skv::Error);
  EXPECT_THROW(choose_per_group(cost, {{1.0}, {1.0}}, 5.0), skv::Error);
  EXPECT_THROW(choose_per_group({}, {}, 5.0), skv::Error);
  EXPECT_THROW(choose_per_group(cost, loss, std::nan("")), skv::Error);
}

/// A table of `layers` layers whose candidates are k2v2, k3v3, k4v4 and k4v4+r128 with a KL that
/// layer `sensitive` multiplies by 100.
nlohmann::json table(int layers, int sensitive) {
  nlohmann::json j;
  j["format"] = "skv-sensitivity/1";
  j["context"] = 2048;
  j["model"] = "test";
  j["options"] = {{"rotate_keys", true}, {"sinks", 4}, {"clip", false}};
  for (int l = 0; l < layers; ++l) {
    nlohmann::json jl{{"layer", l}, {"kind", "full"}, {"elements", 1000}, {"candidates", nlohmann::json::array()}};
    const double w = l == sensitive ? 100.0 : 1.0;
    for (const auto& c : {std::make_tuple(2, 2, 0, 3.25, 0.04), std::make_tuple(3, 3, 0, 4.25, 0.01),
                          std::make_tuple(4, 4, 0, 5.25, 0.002), std::make_tuple(4, 4, 128, 7.0, 0.0001)})
      jl["candidates"].push_back({{"key_bits", std::get<0>(c)}, {"value_bits", std::get<1>(c)}, {"residual", std::get<2>(c)},
                                  {"held_bits", std::get<3>(c)}, {"kl", w * std::get<4>(c)}});
    j["layers"].push_back(jl);
  }
  return j;
}

TEST(LoopPlan, SpendsTheBudgetWhereTheKlIs) {
  const auto t = skv::calib::read_sensitivity(table(8, 5));
  const auto p = skv::calib::plan_from_sensitivity(t, 4.25);
  ASSERT_EQ(p.layers.size(), 8u);
  EXPECT_LE(p.held_bits, 4.25);
  // The sensitive layer takes the most expensive candidate; the others pay for it.
  EXPECT_EQ(p.layers[5].choice.name(), "k4v4+r128");
  double held = 0, kl = 0;
  for (const auto& l : p.layers) {
    held += l.choice.held_bits / 8;
    kl += l.choice.kl;
  }
  EXPECT_NEAR(p.held_bits, held, 1e-12);
  EXPECT_NEAR(p.predicted_kl, kl, 1e-12);
  EXPECT_EQ(p.uniform, "k3v3");  // the best uniform candidate within 4.25 held bits
  EXPECT_NEAR(p.uniform_kl, 7 * 0.01 + 100 * 0.01, 1e-12);
  EXPECT_LT(p.predicted_kl, p.uniform_kl);

  const auto j = skv::calib::loop_plan_to_json(p);
  EXPECT_EQ(j["layers"][5]["residual"], 128);
  EXPECT_EQ(j["layers"][5]["key_bits"], 4);
  EXPECT_EQ(j["context"], 2048);
  EXPECT_EQ(j["options"]["sinks"], 4);
}

TEST(LoopPlan, WeighsLayersByTheirElements) {
  // Layer 0 holds 3x the elements of layer 1 (a full layer next to a sliding one): raising it costs 3x.
  nlohmann::json j = table(2, -1);
  j["layers"][0]["elements"] = 3000;
  const auto p = skv::calib::plan_from_sensitivity(skv::calib::read_sensitivity(j), 3.25 * 0.75 + 5.25 * 0.25);
  EXPECT_EQ(p.layers[0].choice.name(), "k2v2");
  EXPECT_EQ(p.layers[1].choice.name(), "k4v4");
}

/// Every candidate of layers 0 and 1 again with `flag` set to `value` at the same held bits, its KL
/// times `kl0` (layer 0) or `kl1` (layer 1).
void add_variants(nlohmann::json& j, const char* flag, bool value, double kl0, double kl1) {
  for (int l = 0; l < 2; ++l) {
    auto& cands = j["layers"][l]["candidates"];
    const std::size_t n = cands.size();
    for (std::size_t i = 0; i < n; ++i) {
      nlohmann::json c = cands[i];
      c[flag] = value;
      c["kl"] = c["kl"].get<double>() * (l == 0 ? kl0 : kl1);
      cands.push_back(c);
    }
  }
}

TEST(LoopPlan, ChoosesRotatedValuesPerLayerWhereTheyWin) {
  // Every candidate twice, with and without rotated values at the same held bits; the rotated ones
  // have half the KL in layer 0 and twice the KL in layer 1 (measured per layer, as on Gemma 3).
  nlohmann::json j = table(2, -1);
  add_variants(j, "rotate_values", true, 0.5, 2.0);
  const auto p = skv::calib::plan_from_sensitivity(skv::calib::read_sensitivity(j), 4.25);
  EXPECT_EQ(p.layers[0].choice.name(), "k3v3+rotv");
  EXPECT_EQ(p.layers[1].choice.name(), "k3v3");
  const auto out = skv::calib::loop_plan_to_json(p);
  EXPECT_EQ(out["layers"][0]["rotate_values"], true);
  EXPECT_EQ(out["layers"][1]["rotate_values"], false);
  // A candidate without the key takes the table's options; the same candidate twice is refused.
  j["options"]["rotate_values"] = true;
  for (auto& c : j["layers"][1]["candidates"]) c.erase("rotate_values");
  EXPECT_THROW(skv::calib::read_sensitivity(j), skv::Error);
}

TEST(LoopPlan, ChoosesRotatedKeysPerLayerWhereTheyWin) {
  // The table measured with rotated keys (its options) merged with one measured without: per-channel
  // key groups fit some layers better unrotated (Gemma 3's); here layer 1's unrotated keys have a
  // third of the KL, layer 0's three times.
  nlohmann::json j = table(2, -1);
  j["options"]["rotate_keys"] = true;
  add_variants(j, "rotate_keys", false, 3.0, 1.0 / 3.0);
  const auto p = skv::calib::plan_from_sensitivity(skv::calib::read_sensitivity(j), 4.25);
  EXPECT_EQ(p.layers[0].choice.name(), "k3v3");
  EXPECT_EQ(p.layers[1].choice.name(), "k3v3+unrotk");
  const auto out = skv::calib::loop_plan_to_json(p);
  EXPECT_EQ(out["layers"][0]["rotate_keys"], true);
  EXPECT_EQ(out["layers"][1]["rotate_keys"], false);
  // A candidate without the key takes the table's options (true where they do not say): with the
  // options' rotate_keys false, layer 1's original candidates become duplicates of the added ones.
  nlohmann::json no_key = j;
  for (auto& c : no_key["layers"][1]["candidates"])
    if (c.value("rotate_keys", true)) c.erase("rotate_keys");
  EXPECT_NO_THROW(skv::calib::read_sensitivity(no_key));
  no_key["options"]["rotate_keys"] = false;
  EXPECT_THROW(skv::calib::read_sensitivity(no_key), skv::Error);
}

TEST(LoopPlan, RejectsBadTables) {
  auto bad = [](auto edit) {
    nlohmann::json j = table(3, 1);
    edit(j);
    return j;
  };
  using skv::calib::read_sensitivity;
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["format"] = "other"; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j.erase("context"); })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["options"] = 3; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"] = nlohmann::json::array(); })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["layer"] = 0; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["elements"] = 0; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"] = nlohmann::json::array(); })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"][0]["key_bits"] = 9; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"][0]["kl"] = -1; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"][0]["kl"] = "x"; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"][0]["held_bits"] = 0; })), skv::Error);
  EXPECT_THROW(read_sensitivity(bad([](nlohmann::json& j) { j["layers"][1]["candidates"][1] = j["layers"][1]["candidates"][0]; })),
               skv::Error);
  // Below the cheapest plan: an error naming the cheapest.
  try {
    skv::calib::plan_from_sensitivity(read_sensitivity(table(3, 1)), 3.0);
    FAIL() << "a budget below every candidate was accepted";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("3.25"), std::string::npos) << e.what();
  }
}

}  // namespace
