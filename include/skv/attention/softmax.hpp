// skv/attention/softmax.hpp: the online-softmax state and its merge (host and device).
//
// A state summarises attention over a set of tokens: the largest logit m, the sum of exp(logit - m)
// and the exp-weighted sum of values. Two states over disjoint token sets merge into the state of
// their union, which is how a sequence split across threads or CTAs is put back together:
//   m = max(m_a, m_b);  sum = sum_a e^(m_a - m) + sum_b e^(m_b - m);  acc likewise.
#pragma once

#include <cmath>

#include <skv/config.hpp>

namespace skv {

namespace detail {
SKV_HOST_DEVICE SKV_FORCEINLINE float exp_of(float x) { return ::expf(x); }
SKV_HOST_DEVICE SKV_FORCEINLINE double exp_of(double x) { return ::exp(x); }
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T negative_infinity() { return -static_cast<T>(HUGE_VAL); }
}  // namespace detail

/// Running maximum and normaliser of a softmax.
template <class T>
struct SoftmaxStats {
  T max = detail::negative_infinity<T>();
  T sum = 0;

  SKV_HOST_DEVICE bool empty() const { return sum == T(0); }
  /// Natural log of the normaliser (log-sum-exp of the logits); -inf when empty.
  SKV_HOST_DEVICE T lse() const { return empty() ? detail::negative_infinity<T>() : max + ::log(sum); }
};

/// Factors that rescale two partial states onto a common maximum.
template <class T>
struct MergeFactors {
  T max;
  T a;
  T b;
};

template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE MergeFactors<T> merge_factors(const SoftmaxStats<T>& a, const SoftmaxStats<T>& b) {
  if (a.empty()) return {b.max, T(0), T(1)};
  if (b.empty()) return {a.max, T(1), T(0)};
  const T m = a.max < b.max ? b.max : a.max;
  return {m, detail::exp_of(a.max - m), detail::exp_of(b.max - m)};
}

/// Factor that puts a partial state onto a common maximum `max` (at least part.max): the n-way form
/// of merge_factors, for merging many parts at once (the CPU driver: find the largest maximum of the
/// non-empty parts, then sum each part times its factor). An empty part gets 0.
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE T rescale_factor(const SoftmaxStats<T>& part, T max) {
  return part.empty() ? T(0) : detail::exp_of(part.max - max);
}

/// Online softmax over a head of D channels: add tokens one at a time, merge partial states,
/// finish to the normalised output.
template <class T, int D>
struct SoftmaxState {
  SoftmaxStats<T> stats;
  T acc[D];

  SKV_HOST_DEVICE SoftmaxState() { reset(); }

  SKV_HOST_DEVICE void reset() {
    stats = SoftmaxStats<T>{};
    for (int c = 0; c < D; ++c) acc[c] = T(0);
  }

  /// Adds one token with the given logit; value(c) returns its value in channel c.
  SKV_HD_TEMPLATE_CALLS_ARGUMENT
  template <class ValueFn>
  SKV_HOST_DEVICE void add(T logit, ValueFn&& value) {
    if (logit > stats.max) {
      const T r = stats.empty() ? T(0) : detail::exp_of(stats.max - logit);
      for (int c = 0; c < D; ++c) acc[c] *= r;
      stats.sum *= r;
      stats.max = logit;
    }
    const T p = detail::exp_of(logit - stats.max);
    stats.sum += p;
    for (int c = 0; c < D; ++c) acc[c] += p * static_cast<T>(value(c));
  }

  SKV_HOST_DEVICE void merge(const SoftmaxState& other) {
    const MergeFactors<T> f = merge_factors(stats, other.stats);
    for (int c = 0; c < D; ++c) acc[c] = acc[c] * f.a + other.acc[c] * f.b;
    stats.sum = stats.sum * f.a + other.stats.sum * f.b;
    stats.max = f.max;
  }

  /// Writes the attention output; an empty state (no tokens) gives zeros.
  template <class Out>
  SKV_HOST_DEVICE void finish(Out* out) const {
    const T inv = stats.empty() ? T(0) : T(1) / stats.sum;
    for (int c = 0; c < D; ++c) out[c] = static_cast<Out>(acc[c] * inv);
  }
};

}  // namespace skv
