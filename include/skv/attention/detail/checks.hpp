// skv/attention/detail/checks.hpp: the argument checks of every CPU attention call (host only, not
// public API). Decode is checked as one query token per sequence; prefill, the references and the
// dense baselines use the same functions, so a bad call gets the same message on every path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>

namespace skv {
namespace cpu {
namespace detail {

/// fp16 and bf16: the reduced-precision query / output types of the attention overloads.
template <class T>
constexpr bool kHalfIo = std::is_same<T, fp16>::value || std::is_same<T, bf16>::value;

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

/// Validates the queries of one sequence: q holds num_q_tokens x num_q_heads rows of D channels
/// (float, fp16 or bf16) for a cache of num_kv_heads heads holding `length` of `capacity` tokens.
/// KeyQ is the key quantizer (void for dense keys), which bounds the scaled query.
template <int D, class KeyQ, class T>
void check_queries(int num_kv_heads, int length, int capacity, const T* q, int num_q_tokens, int num_q_heads,
                   const T* out, float scale, const char* what) {
  static_assert(std::is_same<T, float>::value || kHalfIo<T>,
                "skv attention: queries and outputs must be float, skv::fp16 or skv::bf16");
  using skv::detail::require;
  const std::string w(what);
  require(num_q_tokens >= 0, w + ": num_q_tokens must not be negative (" + std::to_string(num_q_tokens) + ")");
  require(num_kv_heads > 0, w + ": the cache has no KV heads");
  require(num_q_heads > 0 && num_q_heads % num_kv_heads == 0,
          w + ": num_q_heads (" + std::to_string(num_q_heads) + ") must be a positive multiple of the " +
              std::to_string(num_kv_heads) + " KV heads");
  require(std::isfinite(scale), w + ": the softmax scale must be finite");
  require(length >= 0 && length <= capacity, w + ": view length exceeds its capacity");
  if (num_q_tokens == 0) return;
  require(q != nullptr && out != nullptr, w + ": q and out must not be null");
  const std::size_t row = static_cast<std::size_t>(num_q_heads) * D;
  const std::size_t n = static_cast<std::size_t>(num_q_tokens) * row;
  float qmax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float qi = to_float(q[i]);
    if (!std::isfinite(qi))
      throw Error(w + ": q has a NaN or Inf at " + (num_q_tokens > 1 ? "token " + std::to_string(i / row) + ", " : "") +
                  "head " + std::to_string(i / D % num_q_heads) + ", dim " + std::to_string(i % D));
    qmax = std::max(qmax, std::fabs(qi));
  }
  // the scale is folded into the query in float
  require(static_cast<double>(qmax) * std::fabs(static_cast<double>(scale)) <= kMaxScaledQuery<D, KeyQ>,
          w + ": softmax scale " + skv::detail::number(scale) + " times max |q| " + skv::detail::number(qmax) +
              " exceeds " + skv::detail::number(kMaxScaledQuery<D, KeyQ>) + ": the logits could overflow float");
}

/// Validates a sequence view that attention reads from `first_token` on (a window's start): its
/// pointers, and every page entry it will read (an entry outside the pool, or a page handed back,
/// is an error, not a crash).
template <class Layout>
void check_view(const SequenceView<Layout>& view, int first_token, const char* what) {
  skv::detail::require(view.length == 0 || view.residual != nullptr,
                       std::string(what) + ": the sequence view has a null pointer");
  skv::detail::require(view.quantized_length() == 0 || view.pages != nullptr,
                       std::string(what) + ": the sequence view has a null pointer");
  skv::detail::require(!Layout::kPreRopeKeys || view.length == 0 || view.rope_freq != nullptr,
                       std::string(what) + ": a PreRopeKeys cache's view needs the rotary frequencies (rope_freq)");
  skv::detail::check_read_pages(view, first_token, what);
}

/// Validates one decode call over `view` (one query token at position length - 1) with a window.
template <class Layout, class T>
void check_decode(const SequenceView<Layout>& view, const T* q, int num_q_heads, const T* out, float scale, int window,
                  const char* what) {
  check_window(window, what);
  check_queries<Layout::kHeadDim, typename Layout::KeyQuantizer>(view.num_kv_heads, view.length, view.capacity(), q,
                                                                 1, num_q_heads, out, scale, what);
  check_view(view, window_start(view.length - 1, window), what);
}

/// Validates one prefill call: the queries of the last num_q_tokens tokens of a cache of `length`.
template <int D, class KeyQ, class T>
void check_prefill_queries(int num_kv_heads, int length, int capacity, const T* q, int num_q_tokens, int num_q_heads,
                           const T* out, float scale, const char* what) {
  check_queries<D, KeyQ>(num_kv_heads, length, capacity, q, num_q_tokens, num_q_heads, out, scale, what);
  skv::detail::require(num_q_tokens <= length, std::string(what) + ": " + std::to_string(num_q_tokens) +
                                                   " query tokens, but the cache holds only " +
                                                   std::to_string(length) +
                                                   " tokens (append the chunk's keys and values first)");
}

/// Validates one sequence's prefill over `view`; the chunk's first query sees tokens from
/// window_start(its position, window) on.
template <class Layout, class T>
void check_prefill(const SequenceView<Layout>& view, const T* q, int num_q_tokens, int num_q_heads, const T* out,
                   float scale, int window, const char* what) {
  check_window(window, what);
  check_prefill_queries<Layout::kHeadDim, typename Layout::KeyQuantizer>(
      view.num_kv_heads, view.length, view.capacity(), q, num_q_tokens, num_q_heads, out, scale, what);
  check_view(view, window_start(view.length - num_q_tokens, window), what);
}

/// Checks a batch's query offsets (q_indptr[0] = 0, never decreasing) and returns each sequence's
/// query count.
inline std::vector<int> prefill_counts(int batch, const int* q_indptr, const char* what) {
  const std::string w(what);
  skv::detail::require(q_indptr != nullptr, w + ": q_indptr must not be null");
  skv::detail::require(q_indptr[0] == 0, w + ": q_indptr[0] must be 0");
  std::vector<int> counts(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    skv::detail::require(q_indptr[b + 1] >= q_indptr[b],
                         w + ": q_indptr must not decrease (entry " + std::to_string(b + 1) + ")");
    counts[b] = q_indptr[b + 1] - q_indptr[b];
  }
  return counts;
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
