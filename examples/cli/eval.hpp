// examples/cli/eval.hpp: `skv eval`: every configuration run through a real skv::KVCache on a dump.
//
// Per configuration kKvV[+options] and per layer of the dump, all tokens are appended to a
// KVCache<K, V, d, options...> (the runtime pair, options and head_dim reach the compile-time type
// through skv::dispatch and eval_options.cpp). Options: +rot (skv::RotateKeys), +sink4
// (skv::Sinks<4>), +clip (skv::ClipKeys and skv::ClipValues), +tok (keys grouped per token like the
// values instead of per channel). Reported:
//   bits_per_element  the cache's bits_per_element() (codes + fp16 scales and zeros), plus the fp32
//                     sink tokens spread over the dump's tokens
//   key_mse, value_mse  per element, over the sinks and the tokens the cache quantized (the tail
//                     stays exact); rotated keys are compared with the rotated input keys (the
//                     rotation is orthogonal, so this is the error of the keys themselves)
//   score_rel_err ||s_hat - s|| / ||s|| over the same queries: s = q.k / sqrt(d) for every cached
//                 token, s_hat the same with the cache's keys (key error in the space that matters)
//   attn_rel_err  ||o_hat - o|| / ||o|| summed over layers, query heads and the last `queries`
//                 query tokens of the dump attending to the whole cache (skv::cpu::decode_attention)
//                 against exact fp64 attention; without queries in the dump, the key of token t + 1
//                 serves as the query for token t.
// A plan (`--plan plan.json` from `skv plan --json`) is one more configuration with a pair per layer
// (for per-head plans, each layer's widest pair: what a per-layer KVCache type would hold).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <skv/attention/decode.hpp>
#include <skv/calib/dump.hpp>
#include <skv/dispatch.hpp>

namespace skv_cli {

/// The pairs `skv eval` can run: keys and values each from {2, 3, 4, 8}.
using EvalPairs = skv::BitPairList<2, 2, 2, 3, 2, 4, 2, 8, 3, 2, 3, 3, 3, 4, 3, 8, 4, 2, 4, 3, 4, 4, 4, 8, 8, 2, 8, 3, 8, 4, 8, 8>;
/// head_dim values `skv eval` is compiled for.
inline const char* kEvalHeadDims = "64, 96, 128, 256";

struct EvalResult {
  std::string name;
  double key_bits = 0, value_bits = 0;  ///< the mean over layers for a plan
  double bits_per_element = 0, key_mse = 0, value_mse = 0, score_rel_err = 0, attn_rel_err = 0;
};

struct EvalAccum {
  double key_se = 0, value_se = 0, count = 0, err2 = 0, ref2 = 0, score_err2 = 0, score_ref2 = 0;
};

/// The option sets `skv eval` knows, by canonical suffix ("" is the plain cache).
inline const std::vector<std::string>& eval_variants() {
  static const std::vector<std::string> v{"", "rot", "sink4", "clip", "rot+sink4", "rot+sink4+clip", "tok", "rot+tok"};
  return v;
}
/// Pairs and head dims compiled with options (eval_options.cpp).
using EvalOptionPairs = skv::BitPairList<2, 2, 3, 2, 4, 2, 2, 4, 3, 4, 4, 4>;
inline const char* kEvalOptionHeadDims = "64, 128";

/// Evaluates one layer with option set `variant` (> 0) of eval_variants(); returns the cache's
/// bits per element. Defined in eval_options.cpp.
double eval_layer_with_options(int variant, int key_bits, int value_bits, const skv::calib::LayerKV& l, int queries,
                               EvalAccum& acc);

template <class Cache>
double eval_layer(const skv::calib::LayerKV& l, int queries, EvalAccum& acc) {
  using L = typename Cache::Layout;
  constexpr int D = Cache::kHeadDim;
  const int h = l.kv_heads, t = l.tokens;
  Cache cache(h, t);
  cache.append(l.k.data(), l.v.data(), t);
  const auto view = cache.view();
  // the keys attention sees, and the input keys, in the basis the cache stores keys in
  std::vector<double> k_hat(static_cast<std::size_t>(t) * h * D);
  for (int s = 0; s < t; ++s)
    for (int head = 0; head < h; ++head)
      for (int c = 0; c < D; ++c) k_hat[(static_cast<std::size_t>(s) * h + head) * D + c] = view.key(s, head, c);
  const std::vector<float> k_stored = skv::to_key_basis<L>(l.k.data(), static_cast<std::size_t>(t) * h);
  const int tq = L::residual_begin(t);
  for (int s = 0; s < tq; ++s)
    for (int head = 0; head < h; ++head)
      for (int c = 0; c < D; ++c) {
        const std::size_t i = (static_cast<std::size_t>(s) * h + head) * D + c;
        const double ek = k_hat[i] - k_stored[i];
        const double ev = static_cast<double>(view.value(s, head, c)) - l.v[i];
        acc.key_se += ek * ek;
        acc.value_se += ev * ev;
      }
  acc.count += static_cast<double>(tq) * h * D;

  const bool have_q = !l.q.empty();
  const int hq = have_q ? l.q_heads : h;
  const int group = hq / h;
  const int nq = std::min(queries, have_q ? t : t - 1);
  std::vector<float> q(static_cast<std::size_t>(hq) * D), out(q.size());
  std::vector<double> p(static_cast<std::size_t>(t)), o(D);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int n = 0; n < nq; ++n) {
    const int pos = have_q ? t - 1 - n : t - 2 - n;  // query token; without queries, key pos + 1 is the query
    for (int qh = 0; qh < hq; ++qh)
      for (int c = 0; c < D; ++c)
        q[static_cast<std::size_t>(qh) * D + c] =
            have_q ? l.q[(static_cast<std::size_t>(pos) * hq + qh) * D + c] : l.k[(static_cast<std::size_t>(pos + 1) * h + qh) * D + c];
    skv::cpu::decode_attention(cache, q.data(), hq, out.data());
    const std::vector<float> q_stored = skv::to_key_basis<L>(q.data(), static_cast<std::size_t>(hq));
    for (int qh = 0; qh < hq; ++qh) {
      const int head = qh / group;
      const float* qv = &q[static_cast<std::size_t>(qh) * D];
      const float* qr = &q_stored[static_cast<std::size_t>(qh) * D];
      double mx = -1e300;
      for (int s = 0; s < t; ++s) {
        const std::size_t row = (static_cast<std::size_t>(s) * h + head) * D;
        double dot = 0, dot_hat = 0;
        for (int c = 0; c < D; ++c) {
          dot += static_cast<double>(qv[c]) * l.k[row + c];
          dot_hat += static_cast<double>(qr[c]) * k_hat[row + c];
        }
        acc.score_err2 += (dot_hat - dot) * (dot_hat - dot) * scale * scale;
        acc.score_ref2 += dot * dot * scale * scale;
        p[static_cast<std::size_t>(s)] = dot * scale;
        mx = std::max(mx, dot * scale);
      }
      double z = 0;
      for (auto& x : p) z += (x = std::exp(x - mx));
      for (auto& x : o) x = 0;
      for (int s = 0; s < t; ++s) {
        const float* vv = &l.v[(static_cast<std::size_t>(s) * h + head) * D];
        for (int c = 0; c < D; ++c) o[static_cast<std::size_t>(c)] += p[static_cast<std::size_t>(s)] / z * vv[c];
      }
      for (int c = 0; c < D; ++c) {
        const double e = out[static_cast<std::size_t>(qh) * D + c] - o[static_cast<std::size_t>(c)];
        acc.err2 += e * e;
        acc.ref2 += o[static_cast<std::size_t>(c)] * o[static_cast<std::size_t>(c)];
      }
    }
  }
  return L::bits_per_element(t);
}

template <class F>
void with_head_dim(int d, F&& f) {
  switch (d) {
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 96: f(std::integral_constant<int, 96>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    case 256: f(std::integral_constant<int, 256>{}); return;
    default:
      throw skv::Error("skv eval is compiled for head_dim " + std::string(kEvalHeadDims) + "; the dump has head_dim " +
                       std::to_string(d));
  }
}

/// One configuration to evaluate: a single (key, value) pair for every layer, or one pair per layer
/// of the dump (a plan), with an option set (an index into eval_variants()).
struct EvalConfig {
  std::string name;
  std::vector<std::pair<int, int>> pairs;  ///< size 1, or one per dump layer
  int variant = 0;
};

/// "k4v2", "k4v2+rot+sink4", "k2v4+tok+rot" (options in any order).
inline EvalConfig uniform_config(const std::string& name) {
  const auto parts = split(name, '+');
  const std::vector<std::string> order{"rot", "sink4", "clip", "tok"};
  std::string canonical;
  for (const auto& o : order) {
    const auto n = std::count(parts.begin() + 1, parts.end(), o);
    if (n > 1) throw skv::Error("configuration '" + name + "' repeats +" + o);
    if (n == 1) canonical += (canonical.empty() ? "" : "+") + o;
  }
  for (std::size_t i = 1; i < parts.size(); ++i)
    if (std::find(order.begin(), order.end(), parts[i]) == order.end())
      throw skv::Error("configuration '" + name + "': unknown option '" + parts[i] + "' (options: +rot, +sink4, +clip, +tok)");
  const auto& v = eval_variants();
  const auto it = std::find(v.begin(), v.end(), canonical);
  if (it == v.end()) {
    std::string known;
    for (std::size_t i = 1; i < v.size(); ++i) known += (i > 1 ? ", +" : "+") + v[i];
    throw skv::Error("configuration '" + name + "': the option set +" + canonical + " is not compiled into skv eval; " +
                     "compiled: " + known);
  }
  return EvalConfig{name, {parse_config(parts[0])}, static_cast<int>(it - v.begin())};
}

inline std::vector<EvalResult> run_eval(const skv::calib::KVDump& dump, const std::vector<EvalConfig>& configs,
                                        int queries, const std::function<void(int, int)>& progress) {
  for (const auto& c : configs) {
    if (c.pairs.size() != 1 && c.pairs.size() != static_cast<std::size_t>(dump.num_layers()))
      throw skv::Error("configuration " + c.name + " has " + std::to_string(c.pairs.size()) + " layers; the dump has " +
                       std::to_string(dump.num_layers()));
    for (const auto& kv : c.pairs) {
      if (!EvalPairs::contains(kv.first, kv.second))
        throw skv::Error("configuration " + c.name + " needs k" + std::to_string(kv.first) + "v" + std::to_string(kv.second) +
                         ", which is not compiled into skv eval; available: " + EvalPairs::names());
      if (c.variant != 0 && !EvalOptionPairs::contains(kv.first, kv.second))
        throw skv::Error("configuration " + c.name + ": options are compiled for " + EvalOptionPairs::names() + " only");
    }
    if (c.variant != 0 && dump.head_dim() != 64 && dump.head_dim() != 128)
      throw skv::Error("configuration " + c.name + ": options are compiled for head_dim " + kEvalOptionHeadDims +
                       "; the dump has head_dim " + std::to_string(dump.head_dim()));
  }
  std::vector<EvalResult> results;
  std::vector<EvalAccum> acc(configs.size());
  std::vector<double> bits(configs.size(), 0.0), kbits(configs.size(), 0.0), vbits(configs.size(), 0.0);
  const int total = dump.num_layers() * static_cast<int>(configs.size());
  int done = 0;
  with_head_dim(dump.head_dim(), [&](auto d) {
    constexpr int D = decltype(d)::value;
    for (int n = 0; n < dump.num_layers(); ++n) {
      const skv::calib::LayerKV l = dump.layer(n);
      for (std::size_t i = 0; i < configs.size(); ++i) {
        const auto kv = configs[i].pairs.size() == 1 ? configs[i].pairs[0] : configs[i].pairs[static_cast<std::size_t>(n)];
        if (configs[i].variant != 0) {
          bits[i] += eval_layer_with_options(configs[i].variant, kv.first, kv.second, l, queries, acc[i]);
        } else {
          bits[i] += skv::dispatch<EvalPairs, D>(kv.first, kv.second, [&](auto tag) {
            return eval_layer<typename decltype(tag)::type>(l, queries, acc[i]);
          });
        }
        kbits[i] += kv.first;
        vbits[i] += kv.second;
        if (progress) progress(++done, total);
      }
    }
  });
  for (std::size_t i = 0; i < configs.size(); ++i) {
    EvalResult r;
    r.name = configs[i].name;
    r.key_bits = kbits[i] / dump.num_layers();
    r.value_bits = vbits[i] / dump.num_layers();
    r.bits_per_element = bits[i] / dump.num_layers();
    r.key_mse = acc[i].count > 0 ? acc[i].key_se / acc[i].count : 0.0;
    r.value_mse = acc[i].count > 0 ? acc[i].value_se / acc[i].count : 0.0;
    r.attn_rel_err = acc[i].ref2 > 0 ? std::sqrt(acc[i].err2 / acc[i].ref2) : 0.0;
    r.score_rel_err = acc[i].score_ref2 > 0 ? std::sqrt(acc[i].score_err2 / acc[i].score_ref2) : 0.0;
    results.push_back(r);
  }
  return results;
}

}  // namespace skv_cli
