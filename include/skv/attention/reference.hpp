// skv/attention/reference.hpp: the reference decode and prefill attention over a quantized cache
// (host).
//
// The oracle the fast CPU path and the CUDA kernels are tested against: plain loops, double
// accumulation, and the one shared dequantization function (SequenceView::key / value ->
// Quantizer::decode). Attention sees every appended token: sinks, quantized blocks and the residual
// window; with rotated keys the query is rotated by the same R first, with rotated values the output
// is rotated back by R_v^T (a sum of rotated values is the rotated sum).
//
// Sliding windows (docs/cpu.md, "Windows"): with window W > 0 the query at position i sees the
// tokens j with i - W < j <= i (Hugging Face's convention: W tokens, itself included); with
// keep_sinks the sink tokens (Sinks<N>) stay visible as well, as in StreamingLLM.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/attention/detail/checks.hpp>
#include <skv/attention/softmax.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {
namespace cpu {

namespace detail {

/// Softmax state of query head `qh` over tokens [begin, end), in double; with a window start `from`,
/// only tokens below `kept` (kept sinks) or from `from` on.
template <class Layout>
SoftmaxState<double, Layout::kHeadDim> reference_state(const SequenceView<Layout>& view, const float* q, int qh,
                                                       int kv, int begin, int end, double scale, int from = 0,
                                                       int kept = 0) {
  constexpr int D = Layout::kHeadDim;
  SoftmaxState<double, D> state;
  const float* qv = q + static_cast<std::size_t>(qh) * D;
  for (int t = begin; t < end; ++t) {
    if (t < from && t >= kept) continue;
    double dot = 0.0;
    for (int c = 0; c < D; ++c) dot += static_cast<double>(qv[c]) * view.key(t, kv, c);
    state.add(dot * scale, [&](int c) { return static_cast<double>(view.value(t, kv, c)); });
  }
  return state;
}

}  // namespace detail

/// Default softmax scale: 1 / sqrt(HeadDim).
template <class Layout>
constexpr float default_scale() {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(Layout::kHeadDim)));
}

/// Reference decode attention: q and out are [num_q_heads][HeadDim]; query head h reads KV head
/// h / (num_q_heads / num_kv_heads) (GQA). The query sits at position length - 1; with window > 0 it
/// sees the last `window` tokens (and the sinks with keep_sinks). An empty cache gives zeros.
template <class Layout>
void decode_attention_reference(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out,
                                float scale, int window = 0, bool keep_sinks = false) {
  detail::check_decode(view, q, num_q_heads, out, scale, window, "decode_attention_reference");
  const int from = detail::window_start(view.length - 1, window);
  const int kept = keep_sinks ? Layout::kSinkTokens : 0;
  const std::vector<float> qr = to_key_basis<Layout>(q, static_cast<std::size_t>(num_q_heads));
  const int group = num_q_heads / view.num_kv_heads;
  for (int h = 0; h < num_q_heads; ++h) {
    detail::reference_state(view, qr.data(), h, h / group, 0, view.length, scale, from, kept)
        .finish(out + static_cast<std::size_t>(h) * Layout::kHeadDim);
  }
  from_value_basis<Layout>(out, static_cast<std::size_t>(num_q_heads));
}

/// The same computation split into chunks of `chunk_tokens` whose partial states are merged: tests
/// the merge math that the multi-threaded and split-KV GPU paths rely on.
template <class Layout>
void decode_attention_chunked(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out,
                              float scale, int chunk_tokens) {
  detail::check_decode(view, q, num_q_heads, out, scale, 0, "decode_attention_chunked");
  skv::detail::require(chunk_tokens > 0, "decode_attention_chunked: chunk_tokens must be positive");
  const std::vector<float> qr = to_key_basis<Layout>(q, static_cast<std::size_t>(num_q_heads));
  const int group = num_q_heads / view.num_kv_heads;
  for (int h = 0; h < num_q_heads; ++h) {
    SoftmaxState<double, Layout::kHeadDim> total;
    for (int begin = 0; begin < view.length; begin += chunk_tokens) {
      const int end = std::min(view.length, begin + chunk_tokens);
      total.merge(detail::reference_state(view, qr.data(), h, h / group, begin, end, scale));
    }
    total.finish(out + static_cast<std::size_t>(h) * Layout::kHeadDim);
  }
  from_value_basis<Layout>(out, static_cast<std::size_t>(num_q_heads));
}

/// The decode reference for a whole cache, with the cache's window.
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void decode_attention_reference(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_heads,
                                float* out, float scale, bool keep_sinks = false) {
  decode_attention_reference(cache.view(), q, num_q_heads, out, scale, cache.window(), keep_sinks);
}

/// Reference prefill attention in double (the oracle): q and out are [num_q_tokens][num_q_heads][D];
/// query i (position p = length - num_q_tokens + i) attends to tokens [0, p], or with window > 0 to
/// (p - window, p] (and the sinks with keep_sinks). Each KV head is dequantized once through the
/// shared decode function (SequenceView::key / value), then plain loops.
template <class Layout>
void prefill_attention_reference(const SequenceView<Layout>& view, const float* q, int num_q_tokens, int num_q_heads,
                                 float* out, float scale, int window = 0, bool keep_sinks = false) {
  constexpr int D = Layout::kHeadDim;
  detail::check_prefill(view, q, num_q_tokens, num_q_heads, out, scale, window, "prefill_attention_reference");
  if (num_q_tokens == 0) return;
  const int length = view.length;
  const int group = num_q_heads / view.num_kv_heads;
  const int kept = keep_sinks ? Layout::kSinkTokens : 0;
  const int first = detail::window_start(length - num_q_tokens, window);  // the earliest token read
  const std::vector<float> qr = to_key_basis<Layout>(q, static_cast<std::size_t>(num_q_tokens) * num_q_heads);
  std::vector<double> k(static_cast<std::size_t>(length) * D), v(k.size()), logit(static_cast<std::size_t>(length));
  std::vector<double> acc(D);
  const auto seen = [&](int t, int pos) { return t >= detail::window_start(pos, window) || t < kept; };
  for (int kv = 0; kv < view.num_kv_heads; ++kv) {
    for (int t = 0; t < length; ++t) {
      if (t < first && t >= kept) continue;  // never seen (its page may be gone)
      for (int c = 0; c < D; ++c) {
        k[static_cast<std::size_t>(t) * D + c] = view.key(t, kv, c);
        v[static_cast<std::size_t>(t) * D + c] = view.value(t, kv, c);
      }
    }
    for (int i = 0; i < num_q_tokens; ++i) {
      const int pos = length - num_q_tokens + i;
      const int visible = pos + 1;
      for (int g = 0; g < group; ++g) {
        const int head = kv * group + g;
        const float* qv = qr.data() + (static_cast<std::size_t>(i) * num_q_heads + head) * D;
        double m = -HUGE_VAL;
        for (int t = 0; t < visible; ++t) {
          if (!seen(t, pos)) continue;
          double dot = 0.0;
          for (int c = 0; c < D; ++c) dot += static_cast<double>(qv[c]) * k[static_cast<std::size_t>(t) * D + c];
          logit[t] = dot * scale;
          m = std::max(m, logit[t]);
        }
        double l = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int t = 0; t < visible; ++t) {
          if (!seen(t, pos)) continue;
          const double p = std::exp(logit[t] - m);
          l += p;
          for (int c = 0; c < D; ++c) acc[c] += p * v[static_cast<std::size_t>(t) * D + c];
        }
        float* o = out + (static_cast<std::size_t>(i) * num_q_heads + head) * D;
        for (int c = 0; c < D; ++c) o[c] = static_cast<float>(acc[c] / l);
      }
    }
  }
  from_value_basis<Layout>(out, static_cast<std::size_t>(num_q_tokens) * num_q_heads);
}

/// The reference for a whole cache, with the cache's window (0 for a cache without one).
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void prefill_attention_reference(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_tokens,
                                 int num_q_heads, float* out, float scale, bool keep_sinks = false) {
  prefill_attention_reference(cache.view(), q, num_q_tokens, num_q_heads, out, scale, cache.window(), keep_sinks);
}

}  // namespace cpu
}  // namespace skv
