// skv/calib/plan.hpp: a per-layer (or per-head) bit plan from a distortion table (mode "calibrated")
// or from weight norms (mode "weights"), its JSON form and the C++ types it asks for (host; needs
// nlohmann-json). Format: docs/cli.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <skv/calib/allocate.hpp>
#include <skv/calib/distortion.hpp>
#include <skv/calib/dump.hpp>
#include <skv/calib/norms.hpp>
#include <skv/error.hpp>

namespace skv {
namespace calib {

enum class Granularity { Layer, Head };

/// Allocation units in plan order: for each layer, (per head when Granularity::Head) K then V.
struct PlanProblem {
  std::vector<int> layers;
  int kv_heads = 1;
  int head_dim = 128;
  Granularity granularity = Granularity::Layer;
  std::string mode;
  std::vector<AllocUnit> units;
};

struct HeadPlan {
  int head = 0;
  int key_bits = 0, value_bits = 0;
};

struct LayerPlan {
  int layer = 0;
  int key_bits = 0, value_bits = 0;  ///< with per-head plans: the widest its heads need
  std::vector<HeadPlan> heads;
};

struct Plan {
  double budget = 0;
  double mean_bits = 0;             ///< of the allocation, metadata included
  double predicted_distortion = 0;  ///< sum over units of the (measured or fitted) distortion
  double uniform_distortion = std::numeric_limits<double>::quiet_NaN();
  int uniform_bits = -1;  ///< the uniform baseline's width (-1: none fits the budget)
  Granularity granularity = Granularity::Layer;
  std::string mode;
  int head_dim = 128;
  std::vector<LayerPlan> layers;
};

/// Metadata bits per element of the KVCache defaults: fp16 scale + zero per group.
inline double meta_bits(int group) { return 32.0 / group; }

namespace detail {
inline AllocUnit unit_from_table(const std::vector<int>& bits, const std::vector<double>& d, double meta, double size) {
  AllocUnit u;
  const ExpFit f = fit_exponential(bits, d);
  u.alpha = f.alpha;
  u.beta = f.beta;
  u.size = size;
  u.meta_bits = meta;
  u.measured.assign(9, std::numeric_limits<double>::quiet_NaN());
  for (std::size_t i = 0; i < bits.size(); ++i)
    if (bits[i] >= 0 && bits[i] <= 8) u.measured[static_cast<std::size_t>(bits[i])] = d[i];
  return u;
}
}  // namespace detail

/// Calibrated units from a measured table; per layer, a layer's heads are summed and refitted.
inline PlanProblem problem_from_table(const DistortionTable& t, Granularity g) {
  PlanProblem p;
  p.layers = t.layers;
  p.kv_heads = t.kv_heads;
  p.head_dim = t.head_dim;
  p.granularity = g;
  p.mode = "calibrated";
  const double mk = meta_bits(t.key_group), mv = meta_bits(t.value_group);
  for (std::size_t l = 0; l < t.layers.size(); ++l) {
    if (g == Granularity::Head) {
      for (int h = 0; h < t.kv_heads; ++h) {
        p.units.push_back(detail::unit_from_table(t.bits, t.unit(static_cast<int>(l), h, true).distortion, mk, 1.0));
        p.units.push_back(detail::unit_from_table(t.bits, t.unit(static_cast<int>(l), h, false).distortion, mv, 1.0));
      }
    } else {
      std::vector<double> dk(t.bits.size(), 0.0), dv(t.bits.size(), 0.0);
      for (int h = 0; h < t.kv_heads; ++h)
        for (std::size_t i = 0; i < t.bits.size(); ++i) {
          dk[i] += t.unit(static_cast<int>(l), h, true).distortion[i];
          dv[i] += t.unit(static_cast<int>(l), h, false).distortion[i];
        }
      p.units.push_back(detail::unit_from_table(t.bits, dk, mk, t.kv_heads));
      p.units.push_back(detail::unit_from_table(t.bits, dv, mv, t.kv_heads));
    }
  }
  return p;
}

/// Weight-norm units (the paper's proxy): alpha = ||W||_F^2, beta = 4 (MSE falling 4x per bit).
inline PlanProblem problem_from_norms(const ModelNorms& n, Granularity g, int key_group = 32, int value_group = 0) {
  PlanProblem p;
  p.head_dim = n.head_dim ? n.head_dim : 128;
  p.kv_heads = n.num_kv_heads ? n.num_kv_heads : 1;
  p.granularity = g;
  p.mode = "weights";
  const double mk = meta_bits(key_group), mv = meta_bits(value_group ? value_group : default_value_group(p.head_dim));
  auto unit = [](double fro, double meta, double size) {
    AllocUnit u;
    u.alpha = fro * fro;
    u.beta = 4.0;
    u.meta_bits = meta;
    u.size = size;
    return u;
  };
  for (const auto& l : n.layers) {
    p.layers.push_back(l.layer);
    if (g == Granularity::Head) {
      skv::detail::require(!l.heads.empty(), "per-head weight plans need per-head norms");
      p.kv_heads = static_cast<int>(l.heads.size());
      for (const auto& h : l.heads) {
        p.units.push_back(unit(h.k_fro, mk, 1.0));
        p.units.push_back(unit(h.v_fro, mv, 1.0));
      }
    } else {
      p.units.push_back(unit(l.norms.k_fro, mk, 1.0));
      p.units.push_back(unit(l.norms.v_fro, mv, 1.0));
    }
  }
  return p;
}

/// Allocates `budget` mean bits (metadata included) over the problem's units with widths from `allowed`.
inline Plan make_plan(const PlanProblem& p, const std::vector<int>& allowed, double budget) {
  skv::detail::require(!p.units.empty(), "the plan has no units");
  for (const int b : allowed)
    skv::detail::require(b >= 1 && b <= 8, "allowed bit width " + std::to_string(b) + " is not between 1 and 8");
  const std::vector<int> bits = allocate(p.units, allowed, budget);
  Plan plan;
  plan.budget = budget;
  plan.mean_bits = mean_bits(p.units, bits);
  plan.predicted_distortion = total_distortion(p.units, bits);
  plan.uniform_bits = uniform_bits(p.units, allowed, budget);
  if (plan.uniform_bits > 0)
    plan.uniform_distortion = total_distortion(p.units, std::vector<int>(p.units.size(), plan.uniform_bits));
  plan.granularity = p.granularity;
  plan.mode = p.mode;
  plan.head_dim = p.head_dim;
  const int per_layer = p.granularity == Granularity::Head ? p.kv_heads : 1;
  for (std::size_t l = 0; l < p.layers.size(); ++l) {
    LayerPlan lp;
    lp.layer = p.layers[l];
    for (int h = 0; h < per_layer; ++h) {
      const std::size_t i = (l * static_cast<std::size_t>(per_layer) + static_cast<std::size_t>(h)) * 2;
      lp.key_bits = std::max(lp.key_bits, bits[i]);
      lp.value_bits = std::max(lp.value_bits, bits[i + 1]);
      if (p.granularity == Granularity::Head) lp.heads.push_back(HeadPlan{h, bits[i], bits[i + 1]});
    }
    plan.layers.push_back(std::move(lp));
  }
  return plan;
}

/// The distinct (key, value) pairs a plan's layers need, sorted.
inline std::vector<std::pair<int, int>> plan_pairs(const Plan& p) {
  std::set<std::pair<int, int>> s;
  for (const auto& l : p.layers) s.insert({l.key_bits, l.value_bits});
  return {s.begin(), s.end()};
}

/// C++ to paste into an engine: the BitPairs list to compile and the per-layer cache types.
inline std::string plan_cpp_types(const Plan& p) {
  std::string s = "using PlanPairs = skv::BitPairs<";
  bool first = true;
  for (const auto& kv : plan_pairs(p)) {
    s += (first ? "" : ", ") + std::string("skv::BitPair<") + std::to_string(kv.first) + ", " + std::to_string(kv.second) + ">";
    first = false;
  }
  s += ">;\n";
  for (const auto& kv : plan_pairs(p)) {
    s += "// layers";
    for (const auto& l : p.layers)
      if (l.key_bits == kv.first && l.value_bits == kv.second) s += " " + std::to_string(l.layer);
    s += ": skv::KVCache<" + std::to_string(kv.first) + ", " + std::to_string(kv.second) + ", " + std::to_string(p.head_dim) + ">\n";
  }
  return s;
}

/// {"budget":..,"mean_bits":..,"predicted_distortion":..,"uniform_distortion":..,"layers":[..]}
inline nlohmann::ordered_json plan_to_json(const Plan& p) {
  nlohmann::ordered_json j;
  j["budget"] = p.budget;
  j["mean_bits"] = p.mean_bits;
  j["predicted_distortion"] = p.predicted_distortion;
  j["uniform_distortion"] = std::isfinite(p.uniform_distortion) ? nlohmann::ordered_json(p.uniform_distortion) : nlohmann::ordered_json();
  j["layers"] = nlohmann::ordered_json::array();
  for (const auto& l : p.layers) {
    nlohmann::ordered_json jl;
    jl["layer"] = l.layer;
    jl["key_bits"] = l.key_bits;
    jl["value_bits"] = l.value_bits;
    if (p.granularity == Granularity::Head) {
      jl["heads"] = nlohmann::ordered_json::array();
      for (const auto& h : l.heads) jl["heads"].push_back({{"head", h.head}, {"key_bits", h.key_bits}, {"value_bits", h.value_bits}});
    }
    j["layers"].push_back(std::move(jl));
  }
  return j;
}

}  // namespace calib
}  // namespace skv
