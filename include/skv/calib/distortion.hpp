// skv/calib/distortion.hpp: quantization distortion of keys and values at each bit width, measured
// with skv's own quantizers, and the fit D(b) = alpha * beta^(-b) per unit (host; no dependencies).
//
// A unit is one (layer, KV head, K or V). For every candidate width b the unit's tokens are quantized
// exactly as the cache quantizes them (Quantizer::fit on the group's min/max, encode from the stored
// fp16 parameters, decode): keys per channel over groups of key_group tokens, values per token over
// groups of value_group channels. Only whole key groups are measured (the cache keeps the tail in
// full precision).
//
// Key distortion, with queries (score space, docs/calibration.md): a key error e_t moves the logit of
// every query q by q.e_t / sqrt(d); softmax ignores the part common to all tokens, so e_t is centred
// over tokens first. To first order the attention output then moves by sum_t p_t delta_t (v_t - o), so
//   D_K = E_t[(e'_t)^T Sigma_q (e'_t)] / d * var(v)        (Sigma_q = E[q q^T] over the queries of this KV head)
// is on the same per-element output scale as the value distortion
//   D_V = E[(v_hat - v)^2]                                   (per element).
// Without queries both are the plain per-element MSE (the paper's reconstruction error).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <skv/error.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {
namespace calib {

namespace detail {

template <class F>
void with_bits(int bits, F&& f) {
  switch (bits) {
    case 1: f(std::integral_constant<int, 1>{}); return;
    case 2: f(std::integral_constant<int, 2>{}); return;
    case 3: f(std::integral_constant<int, 3>{}); return;
    case 4: f(std::integral_constant<int, 4>{}); return;
    case 5: f(std::integral_constant<int, 5>{}); return;
    case 6: f(std::integral_constant<int, 6>{}); return;
    case 7: f(std::integral_constant<int, 7>{}); return;
    case 8: f(std::integral_constant<int, 8>{}); return;
    default: throw Error("bit width " + std::to_string(bits) + " is not between 1 and 8");
  }
}

template <class F>
void with_group(int group, F&& f) {
  switch (group) {
    case 4: f(std::integral_constant<int, 4>{}); return;
    case 8: f(std::integral_constant<int, 8>{}); return;
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    case 256: f(std::integral_constant<int, 256>{}); return;
    default: throw Error("group size " + std::to_string(group) + " is not one of 4, 8, 16, 32, 64, 128, 256");
  }
}

/// Largest |x| measured: what skv::KVCache accepts with fp16 scales (Quantizer::kMaxInput); beyond
/// it the fp16 scale overflows and the distortion would be NaN.
constexpr float kMaxQuantizable = Quantizer<2, 32, Axis::Channel>::kMaxInput;

inline std::string describe_unquantizable(float x) {
  return (std::isfinite(x) ? skv::detail::number(x) : std::string("NaN or Inf")) +
         "; the cache quantizes finite |x| <= " + skv::detail::number(kMaxQuantizable) + " only (fp16 scales)";
}

/// Throws unless every x[i] is finite with |x| <= kMaxQuantizable; `what` names the data.
inline void check_quantizable(const float* x, std::size_t n, const std::string& what) {
  for (std::size_t i = 0; i < n; ++i)
    if (!(std::fabs(x[i]) <= kMaxQuantizable))
      throw Error(what + " element " + std::to_string(i) + " is " + describe_unquantizable(x[i]));
}

/// The same for `tokens` rows of head_dim floats at x + t * stride.
inline void check_quantizable_rows(const float* x, std::size_t stride, int tokens, int head_dim, const char* what) {
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < head_dim; ++c)
      if (!(std::fabs(x[t * stride + c]) <= kMaxQuantizable))
        throw Error(std::string(what) + " token " + std::to_string(t) + ", dim " + std::to_string(c) + " is " +
                    describe_unquantizable(x[t * stride + c]));
}

template <class Q>
void fake_quantize_channel(const float* x, std::size_t stride, int tokens, int head_dim, float* out) {
  constexpr int G = Q::kGroupSize;
  for (int g = 0; g + G <= tokens; g += G)
    for (int c = 0; c < head_dim; ++c) {
      float mn = x[g * stride + c], mx = mn;
      for (int i = 1; i < G; ++i) {
        const float v = x[(g + i) * stride + c];
        mn = skv::detail::min_of(mn, v);
        mx = skv::detail::max_of(mx, v);
      }
      const typename Q::Params p = Q::params(Q::fit(mn, mx));
      for (int i = 0; i < G; ++i)
        out[static_cast<std::size_t>(g + i) * head_dim + c] = Q::decode(Q::encode(x[(g + i) * stride + c], p), p);
    }
}

template <class Q>
void fake_quantize_token(const float* x, std::size_t stride, int tokens, int head_dim, float* out) {
  constexpr int G = Q::kGroupSize;
  for (int t = 0; t < tokens; ++t)
    for (int j = 0; j + G <= head_dim; j += G) {
      const float* grp = x + t * stride + j;
      float mn = grp[0], mx = grp[0];
      for (int i = 1; i < G; ++i) {
        mn = skv::detail::min_of(mn, grp[i]);
        mx = skv::detail::max_of(mx, grp[i]);
      }
      const typename Q::Params p = Q::params(Q::fit(mn, mx));
      for (int i = 0; i < G; ++i) out[static_cast<std::size_t>(t) * head_dim + j + i] = Q::decode(Q::encode(grp[i], p), p);
    }
}

}  // namespace detail

/// Quantizes and dequantizes `tokens` rows of `head_dim` floats (row t at x + t * stride) with
/// skv::Quantizer<bits, group, axis> (asymmetric, fp16 scale and zero, as KVCache stores them);
/// writes [tokens][head_dim] to `out`. Channel axis: only the first floor(tokens / group) * group
/// rows are written. Token axis: `group` must divide head_dim.
inline void fake_quantize(int bits, int group, Axis axis, const float* x, std::size_t stride, int tokens, int head_dim,
                          float* out) {
  skv::detail::require(axis == Axis::Channel || head_dim % group == 0,
                       "value group " + std::to_string(group) + " does not divide head_dim " + std::to_string(head_dim));
  detail::with_bits(bits, [&](auto b) {
    detail::with_group(group, [&](auto g) {
      if (axis == Axis::Channel)
        detail::fake_quantize_channel<Quantizer<decltype(b)::value, decltype(g)::value, Axis::Channel>>(x, stride, tokens,
                                                                                                         head_dim, out);
      else
        detail::fake_quantize_token<Quantizer<decltype(b)::value, decltype(g)::value, Axis::Token>>(x, stride, tokens,
                                                                                                     head_dim, out);
    });
  });
}

/// D(b) = alpha * beta^(-b).
struct ExpFit {
  double alpha = 0.0;
  double beta = 4.0;
  double r2 = 0.0;  ///< coefficient of determination of the fit in log space

  double operator()(double bits) const { return alpha * std::pow(beta, -bits); }
};

/// Least-squares fit of ln D = ln alpha - b ln beta over the points with D > 0. beta is kept above
/// 1 + 1e-6 (a distortion that does not fall with more bits has nothing to allocate).
inline ExpFit fit_exponential(const std::vector<int>& bits, const std::vector<double>& d) {
  skv::detail::require(bits.size() == d.size(), "fit_exponential: bits and distortions differ in length");
  double sx = 0, sy = 0, sxx = 0, sxy = 0, syy = 0;
  int n = 0;
  for (std::size_t i = 0; i < bits.size(); ++i) {
    if (!(d[i] > 0.0) || !std::isfinite(d[i])) continue;
    const double x = bits[i], y = std::log(d[i]);
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
    syy += y * y;
    ++n;
  }
  ExpFit f;
  if (n == 0) {  // nothing to lose: zero distortion at every width
    f.alpha = 0.0;
    f.r2 = 1.0;
    return f;
  }
  if (n == 1) {
    for (std::size_t i = 0; i < bits.size(); ++i)
      if (d[i] > 0.0 && std::isfinite(d[i])) f.alpha = d[i] * std::pow(f.beta, bits[i]);
    return f;
  }
  const double vx = sxx - sx * sx / n, cxy = sxy - sx * sy / n, vy = syy - sy * sy / n;
  const double slope = vx > 0 ? cxy / vx : 0.0;  // = -ln beta
  const double ln_beta = -slope < 1e-6 ? 1e-6 : -slope;
  f.beta = std::exp(ln_beta);
  f.alpha = std::exp((sy + ln_beta * sx) / n);
  f.r2 = vy > 0 && vx > 0 ? cxy * cxy / (vx * vy) : 1.0;
  return f;
}

struct DistortionOptions {
  std::vector<int> bits = {2, 3, 4, 5, 6, 8};  ///< candidate widths to measure
  int key_group = 32;                          ///< KVCache default: per channel over 32 tokens
  int value_group = 0;                         ///< 0: KVCache default (largest power of two <= 64 dividing head_dim)
  bool score_space = true;                     ///< use queries when given
};

/// Measured distortion of one unit at each candidate width, and its fit.
struct UnitDistortion {
  int layer = 0;
  int head = 0;
  bool is_key = true;
  std::vector<double> distortion;  ///< per DistortionOptions::bits entry
  std::vector<double> mse;         ///< plain per-element MSE per width (== distortion for values)
  double energy = 0.0;             ///< mean squared element (E x^2)
  ExpFit fit;
};

inline int default_value_group(int head_dim) {
  int g = 64;
  while (g > 1 && head_dim % g != 0) g /= 2;
  return g;
}

/// Measures the K and V units of one KV head. k, v: row t at k + t * kv_stride (head_dim floats);
/// q (may be null): `q_per_kv` query heads per token, row (t, j) at q + t * q_stride + j * head_dim.
inline std::pair<UnitDistortion, UnitDistortion> measure_head(const float* k, const float* v, std::size_t kv_stride,
                                                              const float* q, std::size_t q_stride, int q_per_kv,
                                                              int tokens, int head_dim, const DistortionOptions& o) {
  using skv::detail::require;
  const int kg = o.key_group, vg = o.value_group ? o.value_group : default_value_group(head_dim);
  require(head_dim > 0, "head_dim must be positive");
  require(tokens >= kg, "the dump has " + std::to_string(tokens) + " tokens, fewer than one key group (" +
                            std::to_string(kg) + "): nothing would be quantized");
  require(!o.bits.empty(), "no candidate bit widths");
  detail::check_quantizable_rows(k, kv_stride, tokens, head_dim, "measure_head: key at");
  detail::check_quantizable_rows(v, kv_stride, tokens, head_dim, "measure_head: value at");
  const int tq = tokens / kg * kg;  // tokens in whole key groups
  const std::size_t d = static_cast<std::size_t>(head_dim);
  const bool score = o.score_space && q != nullptr && q_per_kv > 0;

  // Second moment of the queries reading this head, and the values' per-element variance.
  std::vector<double> sigma;
  double var_v = 0.0;
  if (score) {
    sigma.assign(d * d, 0.0);
    for (int t = 0; t < tokens; ++t)
      for (int j = 0; j < q_per_kv; ++j) {
        const float* qr = q + t * q_stride + j * d;
        for (std::size_t a = 0; a < d; ++a) {
          const double qa = qr[a];
          for (std::size_t b = a; b < d; ++b) sigma[a * d + b] += qa * qr[b];
        }
      }
    const double inv = 1.0 / (static_cast<double>(tokens) * q_per_kv);
    for (std::size_t a = 0; a < d; ++a)
      for (std::size_t b = a; b < d; ++b) sigma[b * d + a] = sigma[a * d + b] = sigma[a * d + b] * inv;
    for (std::size_t c = 0; c < d; ++c) {
      double s = 0, s2 = 0;
      for (int t = 0; t < tq; ++t) {
        const double x = v[t * kv_stride + c];
        s += x;
        s2 += x * x;
      }
      var_v += s2 / tq - (s / tq) * (s / tq);
    }
    var_v /= static_cast<double>(d);
  }

  UnitDistortion uk, uv;
  uk.is_key = true;
  uv.is_key = false;
  for (int t = 0; t < tq; ++t)
    for (std::size_t c = 0; c < d; ++c) {
      uk.energy += static_cast<double>(k[t * kv_stride + c]) * k[t * kv_stride + c];
      uv.energy += static_cast<double>(v[t * kv_stride + c]) * v[t * kv_stride + c];
    }
  const double n_el = static_cast<double>(tq) * head_dim;
  uk.energy /= n_el;
  uv.energy /= n_el;

  std::vector<float> khat(static_cast<std::size_t>(tq) * d), vhat(static_cast<std::size_t>(tq) * d);
  std::vector<double> e(static_cast<std::size_t>(tq) * d), mean(d), cov;
  for (const int b : o.bits) {
    fake_quantize(b, kg, Axis::Channel, k, kv_stride, tq, head_dim, khat.data());
    fake_quantize(b, vg, Axis::Token, v, kv_stride, tq, head_dim, vhat.data());
    double kmse = 0, vmse = 0;
    for (auto& m : mean) m = 0;
    for (int t = 0; t < tq; ++t)
      for (std::size_t c = 0; c < d; ++c) {
        const double ek = static_cast<double>(khat[t * d + c]) - k[t * kv_stride + c];
        const double ev = static_cast<double>(vhat[t * d + c]) - v[t * kv_stride + c];
        e[t * d + c] = ek;
        mean[c] += ek;
        kmse += ek * ek;
        vmse += ev * ev;
      }
    kmse /= n_el;
    vmse /= n_el;
    double dk = kmse;
    if (score) {
      for (auto& m : mean) m /= tq;
      cov.assign(d * d, 0.0);
      for (int t = 0; t < tq; ++t) {
        double* et = &e[t * d];
        for (std::size_t c = 0; c < d; ++c) et[c] -= mean[c];
        for (std::size_t a = 0; a < d; ++a) {
          const double ea = et[a];
          if (ea == 0.0) continue;
          for (std::size_t bb = a; bb < d; ++bb) cov[a * d + bb] += ea * et[bb];
        }
      }
      double tr = 0.0;  // trace(Sigma_q * Cov_e), Cov_e stored in its upper triangle
      for (std::size_t a = 0; a < d; ++a) {
        tr += sigma[a * d + a] * cov[a * d + a];
        for (std::size_t bb = a + 1; bb < d; ++bb) tr += 2.0 * sigma[a * d + bb] * cov[a * d + bb];
      }
      dk = tr / tq / static_cast<double>(d) * var_v;
    }
    uk.distortion.push_back(dk);
    uk.mse.push_back(kmse);
    uv.distortion.push_back(vmse);
    uv.mse.push_back(vmse);
  }
  uk.fit = fit_exponential(o.bits, uk.distortion);
  uv.fit = fit_exponential(o.bits, uv.distortion);
  return {uk, uv};
}

}  // namespace calib
}  // namespace skv
