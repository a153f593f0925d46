// skv/calib/sensitivity.hpp: a plan from sensitivity measured in the generation loop (host; needs
// nlohmann-json). The table comes from Python (skv.calibrate.layer_sensitivity, format
// "skv-sensitivity/1"): per layer, its elements at the stated context and, per candidate (key bits,
// value bits, residual window, rotated values or not, rotated keys or not), the bits the cache HOLDS
// per element at that context (codes, scales, zeros, sinks, the fp32 ring with the partial key group
// and the residual window) and the KL of the next-token distribution with only that layer quantized. The plan picks
// one candidate per layer, minimizing the summed KL with the element-weighted mean of held bits at
// most the budget (exact multiple-choice knapsack: choose_per_group). docs/calibration.md, "In the
// generation loop".
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include <skv/calib/allocate.hpp>
#include <skv/error.hpp>

namespace skv {
namespace calib {

struct LoopCandidate {
  int key_bits = 0, value_bits = 0, residual = 0;
  bool rotate_values = false;  ///< values rotated (RotateValues; the table's options when a candidate omits it)
  bool rotate_keys = true;     ///< keys rotated (RotateKeys; the table's options, else true, when it omits it)
  double held_bits = 0;        ///< bits held per element at the table's context
  double kl = 0;               ///< mean KL of the next-token distribution, this layer alone quantized
  std::string name() const {
    return "k" + std::to_string(key_bits) + "v" + std::to_string(value_bits) +
           (residual ? "+r" + std::to_string(residual) : "") + (rotate_values ? "+rotv" : "") +
           (rotate_keys ? "" : "+unrotk");
  }
};

struct LoopLayer {
  int layer = 0;
  std::string kind = "full";  ///< "full" or "sliding"
  int window = 0;
  int head_dim = 0;
  double elements = 0;  ///< cached elements at the context (2 x tokens held x KV heads x head_dim)
  std::vector<LoopCandidate> candidates;
};

struct SensitivityTable {
  int context = 0, tokens = 0;
  std::string model, objective;
  /// cache options the candidates were measured with (rotate_keys, rotate_values, sinks, clip,
  /// lloyd_max_values, fp16_ring, int8_ring)
  nlohmann::json options;
  std::vector<LoopLayer> layers;
};

struct LoopPlanLayer {
  int layer = 0;
  std::string kind;
  int head_dim = 0;
  LoopCandidate choice;
};

struct LoopPlan {
  double budget = 0;
  double held_bits = 0;     ///< element-weighted mean over layers of the chosen candidates' held bits
  double predicted_kl = 0;  ///< sum of the chosen candidates' KL (the additive model)
  std::string uniform;      ///< the best uniform candidate within the budget ("" when none fits)
  double uniform_held_bits = std::numeric_limits<double>::quiet_NaN();
  double uniform_kl = std::numeric_limits<double>::quiet_NaN();
  SensitivityTable table;   ///< context, options and model of the table it came from
  std::vector<LoopPlanLayer> layers;
};

/// Parses and checks a sensitivity table (JSON of skv.calibrate.layer_sensitivity).
inline SensitivityTable read_sensitivity(const nlohmann::json& j) {
  SensitivityTable t;
  try {
    skv::detail::require(j.value("format", std::string()) == "skv-sensitivity/1",
                         "not a sensitivity table (\"format\": \"skv-sensitivity/1\" expected)");
    t.context = j.at("context").get<int>();
    t.tokens = j.value("tokens", 0);
    t.model = j.value("model", std::string());
    t.objective = j.value("objective", std::string());
    t.options = j.value("options", nlohmann::json::object());
    skv::detail::require(t.context >= 1, "context must be at least 1");
    skv::detail::require(t.options.is_object(), "options must be an object");
    const bool rotate_values = t.options.value("rotate_values", false);
    const bool rotate_keys = t.options.value("rotate_keys", true);
    std::set<int> seen;
    for (const auto& jl : j.at("layers")) {
      LoopLayer l;
      l.layer = jl.at("layer").get<int>();
      l.kind = jl.value("kind", std::string("full"));
      l.window = jl.value("window", 0);
      l.head_dim = jl.value("head_dim", 0);
      l.elements = jl.at("elements").get<double>();
      skv::detail::require(seen.insert(l.layer).second, "layer " + std::to_string(l.layer) + " is listed twice");
      skv::detail::require(l.elements > 0 && std::isfinite(l.elements), "layer " + std::to_string(l.layer) + ": elements must be positive");
      std::set<std::tuple<int, int, int, bool, bool>> pairs;
      for (const auto& jc : jl.at("candidates")) {
        LoopCandidate c;
        c.key_bits = jc.at("key_bits").get<int>();
        c.value_bits = jc.at("value_bits").get<int>();
        c.residual = jc.value("residual", 0);
        c.rotate_values = jc.value("rotate_values", rotate_values);
        c.rotate_keys = jc.value("rotate_keys", rotate_keys);
        c.held_bits = jc.at("held_bits").get<double>();
        c.kl = jc.at("kl").get<double>();
        const std::string where = "layer " + std::to_string(l.layer) + ", " + c.name() + ": ";
        skv::detail::require(c.key_bits >= 1 && c.key_bits <= 8 && c.value_bits >= 1 && c.value_bits <= 8,
                             where + "bits must be between 1 and 8");
        skv::detail::require(c.residual >= 0, where + "the residual window must not be negative");
        skv::detail::require(c.held_bits > 0 && std::isfinite(c.held_bits), where + "held_bits must be positive");
        // A KL measured as a tiny negative number is rounding around zero (float32 log-probabilities
        // of two nearly equal distributions: -7e-9 measured for k8v8+r128).
        skv::detail::require(std::isfinite(c.kl) && c.kl > -1e-6, where + "kl must be finite and not negative");
        c.kl = std::max(c.kl, 0.0);
        skv::detail::require(
            pairs.insert({c.key_bits, c.value_bits, c.residual, c.rotate_values, c.rotate_keys}).second,
            where + "listed twice");
        l.candidates.push_back(c);
      }
      skv::detail::require(!l.candidates.empty(), "layer " + std::to_string(l.layer) + " has no candidates");
      t.layers.push_back(std::move(l));
    }
  } catch (const nlohmann::json::exception& e) {
    throw skv::Error(std::string("sensitivity table: ") + e.what());
  }
  skv::detail::require(!t.layers.empty(), "sensitivity table: no layers");
  std::sort(t.layers.begin(), t.layers.end(), [](const LoopLayer& a, const LoopLayer& b) { return a.layer < b.layer; });
  return t;
}

/// The candidate per layer that minimizes the summed KL with the mean held bits (weighted by each
/// layer's elements) at most `budget`; also the best uniform candidate (the same key bits, value bits
/// and residual in every layer that has it) within the budget, for comparison.
inline LoopPlan plan_from_sensitivity(const SensitivityTable& t, double budget) {
  double total = 0;
  for (const auto& l : t.layers) total += l.elements;
  std::vector<std::vector<double>> cost, loss;
  for (const auto& l : t.layers) {
    cost.emplace_back();
    loss.emplace_back();
    for (const auto& c : l.candidates) {
      cost.back().push_back(c.held_bits * l.elements / total);
      loss.back().push_back(c.kl);
    }
  }
  const std::vector<int> pick = choose_per_group(cost, loss, budget);
  LoopPlan p;
  p.budget = budget;
  p.table = SensitivityTable{t.context, t.tokens, t.model, t.objective, t.options, {}};  // all but the layers
  for (std::size_t i = 0; i < t.layers.size(); ++i) {
    const auto& c = t.layers[i].candidates[static_cast<std::size_t>(pick[i])];
    p.layers.push_back({t.layers[i].layer, t.layers[i].kind, t.layers[i].head_dim, c});
    p.held_bits += cost[i][static_cast<std::size_t>(pick[i])];
    p.predicted_kl += c.kl;
  }
  // Uniform baselines: a candidate name every layer has.
  std::map<std::string, std::pair<double, double>> uniform;  // name -> (held bits, KL)
  std::map<std::string, std::size_t> count;
  for (std::size_t i = 0; i < t.layers.size(); ++i)
    for (std::size_t k = 0; k < t.layers[i].candidates.size(); ++k) {
      auto& u = uniform[t.layers[i].candidates[k].name()];
      u.first += cost[i][k];
      u.second += loss[i][k];
      ++count[t.layers[i].candidates[k].name()];
    }
  for (const auto& u : uniform)
    if (count[u.first] == t.layers.size() && u.second.first <= budget && !(u.second.second >= p.uniform_kl)) {
      p.uniform = u.first;
      p.uniform_held_bits = u.second.first;
      p.uniform_kl = u.second.second;
    }
  return p;
}

/// The plan JSON that skv.KVCache, skv.hf.SkvCache(plan=...) and the C++ dispatch read: "layers"
/// with key_bits, value_bits, residual, rotate_values and rotate_keys, plus what it was planned from.
inline nlohmann::ordered_json loop_plan_to_json(const LoopPlan& p) {
  nlohmann::ordered_json j;
  j["mode"] = "loop";
  j["budget"] = p.budget;
  j["budget_unit"] = "bits held per element at the context";
  j["context"] = p.table.context;
  j["mean_bits"] = p.held_bits;
  j["held_bits"] = p.held_bits;
  j["predicted_kl"] = p.predicted_kl;
  j["uniform"] = p.uniform.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(p.uniform);
  j["uniform_held_bits"] = std::isfinite(p.uniform_held_bits) ? nlohmann::ordered_json(p.uniform_held_bits) : nlohmann::ordered_json();
  j["uniform_kl"] = std::isfinite(p.uniform_kl) ? nlohmann::ordered_json(p.uniform_kl) : nlohmann::ordered_json();
  j["model"] = p.table.model;
  j["options"] = p.table.options;
  j["layers"] = nlohmann::ordered_json::array();
  for (const auto& l : p.layers) {
    nlohmann::ordered_json jl;
    jl["layer"] = l.layer;
    jl["key_bits"] = l.choice.key_bits;
    jl["value_bits"] = l.choice.value_bits;
    jl["residual"] = l.choice.residual;
    jl["rotate_values"] = l.choice.rotate_values;
    jl["rotate_keys"] = l.choice.rotate_keys;
    jl["kind"] = l.kind;
    jl["held_bits"] = l.choice.held_bits;
    jl["kl"] = l.choice.kl;
    j["layers"].push_back(std::move(jl));
  }
  return j;
}

}  // namespace calib
}  // namespace skv
