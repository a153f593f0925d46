// skv/attention/reference.hpp: the reference decode attention over a quantized cache (host).
//
// The oracle the fast CPU path and the CUDA kernels are tested against: plain loops, double
// accumulation, and the one shared dequantization function (SequenceView::key / value ->
// Quantizer::decode). Attention sees every appended token: sinks, quantized blocks and the residual
// window; with rotated keys the query is rotated by the same R first.
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

#include <skv/attention/softmax.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {
namespace cpu {

namespace detail {

/// Largest |q[c] * scale| the fast paths accept: they fold the scale into the query in float, and
/// with keys of magnitude at most MaxKey a logit then stays below FLT_MAX / 2. Dequantized keys stay
/// within twice the largest accepted input (Quantizer::kMaxInput): 65504 with fp16 key scales.
template <int HeadDim, class KeyQ = void>
constexpr double kMaxScaledQuery = 1.7e38 / (2.0 * static_cast<double>(KeyQ::kMaxInput) * HeadDim);
/// Dense keys (the baselines): fp16 range.
template <int HeadDim>
constexpr double kMaxScaledQuery<HeadDim, void> = 1.7e38 / (65504.0 * HeadDim);

/// First token a query at position `pos` sees with a window of `window` tokens (0: the whole cache);
/// sinks kept by keep_sinks aside.
inline int window_start(int pos, int window) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0; }

/// Checks a window argument (`what` names the caller).
inline void check_window(int window, const char* what) {
  skv::detail::require(window >= 0, std::string(what) + ": the window must not be negative (" +
                                        std::to_string(window) + "; 0 attends to every token)");
}

/// Validates one decode call over `view`, which reads tokens from first_token on (a window's start).
template <class Layout, class T>
void check_attention_args(const SequenceView<Layout>& view, const T* q, int num_q_heads, const T* out, float scale,
                          int first_token = 0) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, fp16>::value || std::is_same<T, bf16>::value,
                "skv decode: queries and outputs must be float, skv::fp16 or skv::bf16");
  using skv::detail::require;
  require(q != nullptr && out != nullptr, "decode_attention: q and out must not be null");
  require(view.num_kv_heads > 0, "decode_attention: the cache has no KV heads");
  require(num_q_heads > 0 && num_q_heads % view.num_kv_heads == 0,
          "decode_attention: num_q_heads (" + std::to_string(num_q_heads) + ") must be a positive multiple of the " +
              std::to_string(view.num_kv_heads) + " KV heads");
  require(std::isfinite(scale), "decode_attention: the softmax scale must be finite");
  require(view.length >= 0 && view.length <= view.capacity(), "decode_attention: view length exceeds its capacity");
  require(view.length == 0 || view.residual != nullptr, "decode_attention: the sequence view has a null pointer");
  require(view.quantized_length() == 0 || view.pages != nullptr, "decode_attention: the sequence view has a null pointer");
  skv::detail::check_read_pages(view, first_token, "decode_attention");  // O(pages): an error, not a crash
  const std::size_t n = static_cast<std::size_t>(num_q_heads) * Layout::kHeadDim;
  float qmax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float qi = to_float(q[i]);
    require(std::isfinite(qi), "decode_attention: q has a NaN or Inf at head " +
                                     std::to_string(i / Layout::kHeadDim) + ", dim " +
                                     std::to_string(i % Layout::kHeadDim));
    qmax = std::max(qmax, std::fabs(qi));
  }
  constexpr double kMax = kMaxScaledQuery<Layout::kHeadDim, typename Layout::KeyQuantizer>;
  require(static_cast<double>(qmax) * std::fabs(static_cast<double>(scale)) <= kMax,
          "decode_attention: softmax scale " + skv::detail::number(scale) + " times max |q| " +
              skv::detail::number(qmax) + " exceeds " + skv::detail::number(kMax) +
              ": the logits could overflow float");
}

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
  detail::check_window(window, "decode_attention_reference");
  const int from = detail::window_start(view.length - 1, window);
  const int kept = keep_sinks ? Layout::kSinkTokens : 0;
  detail::check_attention_args(view, q, num_q_heads, out, scale, from);
  const std::vector<float> qr = to_key_basis<Layout>(q, static_cast<std::size_t>(num_q_heads));
  const int group = num_q_heads / view.num_kv_heads;
  for (int h = 0; h < num_q_heads; ++h) {
    detail::reference_state(view, qr.data(), h, h / group, 0, view.length, scale, from, kept)
        .finish(out + static_cast<std::size_t>(h) * Layout::kHeadDim);
  }
}

/// The same computation split into chunks of `chunk_tokens` whose partial states are merged: tests
/// the merge math that the multi-threaded and split-KV GPU paths rely on.
template <class Layout>
void decode_attention_chunked(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out,
                              float scale, int chunk_tokens) {
  detail::check_attention_args(view, q, num_q_heads, out, scale);
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
}

}  // namespace cpu
}  // namespace skv
