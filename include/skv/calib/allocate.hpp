// skv/calib/allocate.hpp: bit allocation by reverse water-filling and integer rounding (host; no
// dependencies).
//
// Units u (layer x KV head x {K, V}, or layer x {K, V}) have distortion D_u(b) = w_u alpha_u beta_u^(-b),
// `size_u` elements and `meta_u` bits of metadata per element (32 / G for fp16 scale + zero). Minimize
// sum D_u(b_u) subject to sum size_u (b_u + meta_u) <= budget * sum size_u. Lagrange: the continuous
// optimum is b_u = clip(log_beta_u(w_u alpha_u ln beta_u / lambda), b_min, b_max), the "water level"
// lambda found by bisection (docs/theory.md, "The allocation rule"). Integer widths from the allowed set then start at
// the largest allowed width below each b_u and are raised one allowed step at a time, always where
// the distortion saved per bit spent is largest, while the budget allows; a final exchange pass
// (one unit down a step, another up) removes what the greedy order left on the table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <skv/error.hpp>

namespace skv {
namespace calib {

namespace detail {
inline std::string fmt_bits(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}
}  // namespace detail

struct AllocUnit {
  double alpha = 0.0;
  double beta = 4.0;
  double weight = 1.0;
  double size = 1.0;       ///< elements (relative)
  double meta_bits = 0.0;  ///< metadata bits per element
  /// Measured distortion (before weighting) at width b, indexed by b (0..8); NaN where not measured.
  /// Integer steps use it where present, the fit elsewhere.
  std::vector<double> measured;

  double model(double b) const { return weight * alpha * std::pow(beta, -b); }
  double at(int b) const {
    if (b >= 0 && static_cast<std::size_t>(b) < measured.size() && std::isfinite(measured[static_cast<std::size_t>(b)]))
      return weight * measured[static_cast<std::size_t>(b)];
    return model(b);
  }
};

/// Mean bits per element (metadata included) of an assignment.
template <class Bits>
double mean_bits(const std::vector<AllocUnit>& u, const Bits& b) {
  double s = 0, n = 0;
  for (std::size_t i = 0; i < u.size(); ++i) {
    s += u[i].size * (static_cast<double>(b[i]) + u[i].meta_bits);
    n += u[i].size;
  }
  return n > 0 ? s / n : 0.0;
}

inline double total_distortion(const std::vector<AllocUnit>& u, const std::vector<int>& b) {
  double s = 0;
  for (std::size_t i = 0; i < u.size(); ++i) s += u[i].at(b[i]);
  return s;
}

struct WaterFilling {
  std::vector<double> bits;  ///< continuous widths
  double lambda = 0.0;       ///< water level (marginal distortion per bit)
  double mean_bits = 0.0;
};

inline void check_units(const std::vector<AllocUnit>& u) {
  skv::detail::require(!u.empty(), "allocation: no units");
  for (const auto& x : u)
    skv::detail::require(x.alpha >= 0 && std::isfinite(x.alpha) && x.beta > 1.0 && std::isfinite(x.beta) && x.weight >= 0 &&
                        x.size > 0 && x.meta_bits >= 0,
                    "allocation: every unit needs alpha >= 0, beta > 1, weight >= 0, size > 0, meta_bits >= 0");
}

/// The continuous optimum for widths in [b_min, b_max] at mean bits (metadata included) `budget`.
inline WaterFilling water_fill(const std::vector<AllocUnit>& u, double budget, double b_min, double b_max) {
  check_units(u);
  skv::detail::require(std::isfinite(budget), "budget " + detail::fmt_bits(budget) + " is not a number of bits");
  skv::detail::require(b_min <= b_max, "allocation: b_min > b_max");
  const std::vector<double> lo(u.size(), b_min), hi(u.size(), b_max);
  const double min_cost = mean_bits(u, lo), max_cost = mean_bits(u, hi);
  skv::detail::require(budget >= min_cost - 1e-9, "budget " + detail::fmt_bits(budget) + " bits is below the minimum " +
                                                      detail::fmt_bits(min_cost) + " (every unit at " + detail::fmt_bits(b_min) +
                                                      " bits, metadata included)");
  WaterFilling w;
  w.bits.assign(u.size(), b_max);
  auto widths = [&](double log_lambda) {
    for (std::size_t i = 0; i < u.size(); ++i) {
      const double lb = std::log(u[i].beta);
      const double a = u[i].weight * u[i].alpha * lb;
      const double b = a > 0 ? (std::log(a) - log_lambda) / lb : b_min;
      w.bits[i] = std::min(b_max, std::max(b_min, b));
    }
    return mean_bits(u, w.bits);
  };
  if (budget >= max_cost) {
    w.mean_bits = widths(-std::numeric_limits<double>::infinity());
    w.lambda = 0.0;
    return w;
  }
  // Bracket the water level (in log space): at lo every unit is at b_max, at hi every unit at b_min.
  double lo_l = std::numeric_limits<double>::infinity(), hi_l = -std::numeric_limits<double>::infinity();
  for (const auto& x : u) {
    const double lb = std::log(x.beta), a = x.weight * x.alpha * lb;
    if (a <= 0) continue;
    lo_l = std::min(lo_l, std::log(a) - b_max * lb);
    hi_l = std::max(hi_l, std::log(a) - b_min * lb);
  }
  if (!std::isfinite(lo_l)) {  // no unit gains anything from bits
    w.mean_bits = widths(0.0);
    return w;
  }
  lo_l -= 1.0;
  hi_l += 1.0;
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo_l + hi_l);
    if (widths(mid) > budget)
      lo_l = mid;
    else
      hi_l = mid;
  }
  w.mean_bits = widths(hi_l);  // the feasible side
  w.lambda = std::exp(hi_l);
  return w;
}

/// Integer widths from `allowed` (any order, values 1..8) with mean bits <= budget, starting from the
/// continuous optimum; see the file comment.
inline std::vector<int> round_allocation(const std::vector<AllocUnit>& u, const std::vector<double>& continuous,
                                         std::vector<int> allowed, double budget) {
  check_units(u);
  skv::detail::require(continuous.size() == u.size(), "round_allocation: one continuous width per unit needed");
  skv::detail::require(!allowed.empty(), "round_allocation: no allowed bit widths");
  skv::detail::require(std::isfinite(budget), "budget " + detail::fmt_bits(budget) + " is not a number of bits");
  std::sort(allowed.begin(), allowed.end());
  allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
  const std::size_t n = u.size();
  std::vector<std::size_t> level(n, 0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t a = 0; a < allowed.size(); ++a)
      if (allowed[a] <= continuous[i] + 1e-9) level[i] = a;
  double total_size = 0, cost = 0;
  for (std::size_t i = 0; i < n; ++i) {
    total_size += u[i].size;
    cost += u[i].size * (allowed[level[i]] + u[i].meta_bits);
  }
  const double cap = budget * total_size + 1e-9 * total_size;
  skv::detail::require(cost <= cap, "budget " + detail::fmt_bits(budget) + " bits is below the smallest allowed width plus metadata");
  auto gain = [&](std::size_t i, std::size_t from, std::size_t to) {
    return u[i].at(allowed[from]) - u[i].at(allowed[to]);
  };
  auto step_cost = [&](std::size_t i, std::size_t from, std::size_t to) {
    return u[i].size * (allowed[to] - allowed[from]);
  };
  for (int round = 0; round < 64; ++round) {
    // Greedy raises: best saving per bit that still fits.
    for (;;) {
      std::size_t best = n;
      double best_rate = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (level[i] + 1 >= allowed.size()) continue;
        const double c = step_cost(i, level[i], level[i] + 1);
        if (cost + c > cap) continue;
        const double rate = gain(i, level[i], level[i] + 1) / c;
        if (best == n || rate > best_rate) {
          best = i;
          best_rate = rate;
        }
      }
      if (best == n || best_rate <= 0) break;
      cost += step_cost(best, level[best], level[best] + 1);
      ++level[best];
    }
    // Exchanges: lower one unit a step to raise another, when it lowers the total and fits.
    double best_delta = -1e-15;
    std::size_t bi = n, bj = n;
    for (std::size_t i = 0; i < n; ++i) {
      if (level[i] == 0) continue;
      const double loss = gain(i, level[i] - 1, level[i]);
      const double freed = step_cost(i, level[i] - 1, level[i]);
      for (std::size_t j = 0; j < n; ++j) {
        if (j == i || level[j] + 1 >= allowed.size()) continue;
        if (cost - freed + step_cost(j, level[j], level[j] + 1) > cap) continue;
        const double delta = loss - gain(j, level[j], level[j] + 1);
        if (delta < best_delta) {
          best_delta = delta;
          bi = i;
          bj = j;
        }
      }
    }
    if (bi == n) break;
    cost += step_cost(bj, level[bj], level[bj] + 1) - step_cost(bi, level[bi] - 1, level[bi]);
    --level[bi];
    ++level[bj];
  }
  std::vector<int> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = allowed[level[i]];
  return out;
}

/// Water-filling then rounding, with b_min / b_max the ends of the allowed set.
inline std::vector<int> allocate(const std::vector<AllocUnit>& u, const std::vector<int>& allowed, double budget) {
  skv::detail::require(!allowed.empty(), "allocation: no allowed bit widths");
  const int lo = *std::min_element(allowed.begin(), allowed.end());
  const int hi = *std::max_element(allowed.begin(), allowed.end());
  const WaterFilling w = water_fill(u, budget, lo, hi);
  return round_allocation(u, w.bits, allowed, budget);
}

/// The widest single width from `allowed` that every unit can have within the budget (the uniform
/// baseline); -1 when even the narrowest does not fit.
inline int uniform_bits(const std::vector<AllocUnit>& u, const std::vector<int>& allowed, double budget) {
  int best = -1;
  for (const int b : allowed) {
    const std::vector<int> all(u.size(), b);
    if (mean_bits(u, all) <= budget + 1e-9 && b > best) best = b;
  }
  return best;
}

/// One choice per group (a layer) minimizing the summed loss with the summed cost at most `budget`
/// (the multiple-choice knapsack), by dynamic programming over the cost in units of budget /
/// `resolution`. Costs are rounded UP to whole units, so the choice never exceeds the budget; it is
/// optimal for the rounded costs (within one unit per group of the true optimum's cost). Throws when
/// no choice fits (the message gives the smallest total cost).
inline std::vector<int> choose_per_group(const std::vector<std::vector<double>>& cost,
                                         const std::vector<std::vector<double>>& loss, double budget,
                                         int resolution = 20000) {
  skv::detail::require(!cost.empty() && cost.size() == loss.size(), "choose_per_group: no groups, or costs and losses differ");
  skv::detail::require(budget > 0 && std::isfinite(budget) && resolution >= 1, "choose_per_group: the budget must be positive");
  double cheapest = 0;
  for (std::size_t g = 0; g < cost.size(); ++g) {
    skv::detail::require(!cost[g].empty() && cost[g].size() == loss[g].size(),
                         "choose_per_group: group " + std::to_string(g) + " has no choice, or costs and losses differ");
    for (std::size_t i = 0; i < cost[g].size(); ++i)
      skv::detail::require(cost[g][i] >= 0 && std::isfinite(cost[g][i]) && loss[g][i] >= 0 && std::isfinite(loss[g][i]),
                           "choose_per_group: costs and losses must be finite and non-negative");
    cheapest += *std::min_element(cost[g].begin(), cost[g].end());
  }
  skv::detail::require(cheapest <= budget, "the budget " + detail::fmt_bits(budget) + " is below the cheapest choice (" +
                                               detail::fmt_bits(cheapest) + ")");
  const double unit = budget / resolution;
  const std::size_t states = static_cast<std::size_t>(resolution) + 1;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> best(states, inf), next(states);
  best[0] = 0.0;  // best[c]: least loss of the groups so far at rounded cost exactly c
  std::vector<std::vector<int>> pick(cost.size(), std::vector<int>(states, -1));
  for (std::size_t g = 0; g < cost.size(); ++g) {
    std::fill(next.begin(), next.end(), inf);
    for (std::size_t i = 0; i < cost[g].size(); ++i) {
      const double units = std::ceil(cost[g][i] / unit - 1e-9);
      if (units >= static_cast<double>(states)) continue;
      const std::size_t w = static_cast<std::size_t>(units);
      for (std::size_t c = 0; c + w < states; ++c) {
        if (best[c] == inf) continue;
        const double v = best[c] + loss[g][i];
        if (v < next[c + w]) {
          next[c + w] = v;
          pick[g][c + w] = static_cast<int>(i);
        }
      }
    }
    best.swap(next);
  }
  const std::size_t end = static_cast<std::size_t>(std::min_element(best.begin(), best.end()) - best.begin());
  skv::detail::require(best[end] < inf, "no choice fits the budget " + detail::fmt_bits(budget) +
                                            " once costs are rounded; raise the budget a little");
  std::vector<int> out(cost.size());
  std::size_t c = end;
  for (std::size_t g = cost.size(); g-- > 0;) {
    out[g] = pick[g][c];
    c -= static_cast<std::size_t>(std::ceil(cost[g][static_cast<std::size_t>(out[g])] / unit - 1e-9));
  }
  return out;
}

}  // namespace calib
}  // namespace skv
