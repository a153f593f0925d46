// skv/calib/synthetic.hpp: an LLM-like synthetic K/V/Q workload with its exact fp64 attention (host;
// no dependencies). The demo, `skv gen-dump` and the tests measure on it.
//
// Why it looks like this (docs/theory.md, "The synthetic workload"):
// - Keys are pre-RoPE vectors with a per-channel mean (the stable offsets real key projections
//   have), four outlier channels per head with large, consistent magnitude, and unit noise; then
//   RoPE at the token's position (base 10000, rotate-half pairing as in Llama). Outliers sit on
//   low-frequency pairs, where real models put them, so they stay consistent across positions.
// - Values are zero-mean near-Gaussian with a smaller spread (std 0.5): their energy is ~25x below
//   the keys', the ratio measured on Llama-class models (24-44x).
// - Queries share the keys' outlier and mean directions (as real queries do: that is why those
//   channels matter) and are RoPE'd at the current position. Their norm is then set so the logits
//   across tokens have a chosen standard deviation: 3-5 gives the peaked attention of real heads,
//   near 0 gives almost uniform attention.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include <skv/error.hpp>

namespace skv {
namespace calib {
namespace synthetic {

/// The shape and statistics of a workload.
struct WorkloadOptions {
  int tokens = 2048;
  int kv_heads = 2;
  int group = 4;  ///< query heads per KV head
  int head_dim = 128;
  double logit_std = 4.0;  ///< spread of the exact logits across tokens (sharpness of attention)
  float value_std = 0.5f;
  unsigned seed = 1;
};

/// One workload: keys and values of every token, and one query per query head at the last position.
struct Workload {
  int tokens = 0, kv_heads = 0, q_heads = 0, head_dim = 0;
  std::vector<float> k, v;  ///< [tokens][kv_heads][head_dim]
  std::vector<float> q;     ///< [q_heads][head_dim]
};

/// Rotates x (d channels, rotate-half pairing as in Llama) by RoPE at position pos, base 10000.
inline void rope(float* x, int d, int pos) {
  for (int i = 0; i < d / 2; ++i) {
    const double theta = pos * std::pow(10000.0, -2.0 * i / d);
    const double c = std::cos(theta), s = std::sin(theta);
    const double a = x[i], b = x[i + d / 2];
    x[i] = static_cast<float>(a * c - b * s);
    x[i + d / 2] = static_cast<float>(a * s + b * c);
  }
}

/// Draws a workload (deterministic in o.seed). skv::Error for a shape it cannot draw.
inline Workload make_workload(const WorkloadOptions& o) {
  using skv::detail::require;
  require(o.tokens >= 1 && o.kv_heads >= 1 && o.group >= 1,
          "synthetic workload: tokens, kv_heads and group must be at least 1");
  require(o.head_dim >= 20 && o.head_dim % 2 == 0,
          "synthetic workload: head_dim must be even and at least 20 (RoPE pairs; the four outlier pairs are "
          "d/2-1, d/2-4, d/2-7 and d/2-10), got " +
              std::to_string(o.head_dim));
  require(o.logit_std >= 0.0 && o.value_std >= 0.0f, "synthetic workload: logit_std and value_std must be >= 0");
  Workload w;
  w.tokens = o.tokens;
  w.kv_heads = o.kv_heads;
  w.q_heads = o.kv_heads * o.group;
  w.head_dim = o.head_dim;
  const int d = o.head_dim;
  std::mt19937 rng(o.seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  w.k.resize(static_cast<std::size_t>(o.tokens) * o.kv_heads * d);
  w.v.resize(w.k.size());
  w.q.resize(static_cast<std::size_t>(w.q_heads) * d);

  for (int h = 0; h < o.kv_heads; ++h) {
    std::vector<float> mean(d), spread(d, 1.0f);
    for (int c = 0; c < d; ++c) mean[c] = 1.5f * n01(rng);
    for (int j = 0; j < 4; ++j) {  // outliers on low-frequency RoPE pairs (high pair index)
      const int pair = d / 2 - 1 - j * 3;
      const float big = (j % 2 ? -1.0f : 1.0f) * (8.0f + 1.5f * static_cast<float>(j));
      mean[pair] = big;
      mean[pair + d / 2] = 0.5f * big;
      spread[pair] = spread[pair + d / 2] = 2.0f;
    }
    for (int t = 0; t < o.tokens; ++t) {
      float* k = &w.k[(static_cast<std::size_t>(t) * o.kv_heads + h) * d];
      float* v = &w.v[(static_cast<std::size_t>(t) * o.kv_heads + h) * d];
      for (int c = 0; c < d; ++c) {
        k[c] = mean[c] + spread[c] * n01(rng);
        v[c] = o.value_std * n01(rng);
      }
      rope(k, d, t);
    }
    for (int g = 0; g < o.group; ++g) {
      float* q = &w.q[(static_cast<std::size_t>(h) * o.group + g) * d];
      for (int c = 0; c < d; ++c) q[c] = 0.15f * mean[c] + n01(rng);
      rope(q, d, o.tokens);
      // scale so the exact logits q.k / sqrt(d) have the requested spread across tokens
      double s1 = 0, s2 = 0;
      for (int t = 0; t < o.tokens; ++t) {
        const float* k = &w.k[(static_cast<std::size_t>(t) * o.kv_heads + h) * d];
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * k[c];
        dot /= std::sqrt(static_cast<double>(d));
        s1 += dot;
        s2 += dot * dot;
      }
      const double mean_l = s1 / o.tokens;
      const double sd = std::sqrt(std::max(1e-30, s2 / o.tokens - mean_l * mean_l));
      const double f = o.logit_std / sd;
      for (int c = 0; c < d; ++c) q[c] = static_cast<float>(q[c] * f);
    }
  }
  return w;
}

/// Exact attention in fp64 over the unquantized workload: out [q_heads][head_dim]; also returns the
/// mean attention entropy in nats.
inline double exact_attention(const Workload& w, std::vector<double>& out) {
  const int d = w.head_dim, group = w.q_heads / w.kv_heads;
  out.assign(static_cast<std::size_t>(w.q_heads) * d, 0.0);
  double entropy = 0;
  std::vector<double> p(w.tokens);
  for (int qh = 0; qh < w.q_heads; ++qh) {
    const int h = qh / group;
    const float* q = &w.q[static_cast<std::size_t>(qh) * d];
    double mx = -1e300;
    for (int t = 0; t < w.tokens; ++t) {
      const float* k = &w.k[(static_cast<std::size_t>(t) * w.kv_heads + h) * d];
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * k[c];
      p[t] = dot / std::sqrt(static_cast<double>(d));
      mx = std::max(mx, p[t]);
    }
    double z = 0;
    for (double& x : p) z += (x = std::exp(x - mx));
    for (int t = 0; t < w.tokens; ++t) {
      p[t] /= z;
      if (p[t] > 0) entropy -= p[t] * std::log(p[t]);
      const float* v = &w.v[(static_cast<std::size_t>(t) * w.kv_heads + h) * d];
      for (int c = 0; c < d; ++c) out[static_cast<std::size_t>(qh) * d + c] += p[t] * v[c];
    }
  }
  return entropy / w.q_heads;
}

/// ||a - b|| / ||b||.
template <class A>
double relative_error(const std::vector<A>& a, const std::vector<double>& b) {
  double e = 0, r = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    r += b[i] * b[i];
  }
  return std::sqrt(e / r);
}

}  // namespace synthetic
}  // namespace calib
}  // namespace skv
