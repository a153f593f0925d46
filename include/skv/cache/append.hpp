// skv/cache/append.hpp: appending tokens to a sequence view (host).
//
// All-or-nothing: every argument and every value is checked before the first byte is written, so a
// rejected call leaves the cache exactly as it was. The first kSinkTokens tokens go to the sinks;
// later tokens enter the full-precision ring, and whenever kBlockTokens of them are older than the
// residual window, that block is quantized into its page, once (it is never re-quantized).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <skv/cache/layout.hpp>
#include <skv/cache/quantize_block.hpp>
#include <skv/cache/quantize_block_fast.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {

namespace detail {

template <class Layout>
void check_view(const SequenceView<Layout>& view) {
  require(view.num_kv_heads > 0, "the cache needs at least one KV head (num_kv_heads = " +
                                     std::to_string(view.num_kv_heads) + ")");
  require(view.max_pages >= 0 && view.num_pages >= 0, "sequence view has a negative page count");
  // a view without pages (a cache that only ever holds sink tokens) needs no pool or table
  require(view.residual != nullptr && (view.max_pages == 0 || (view.pages != nullptr && view.block_table != nullptr)),
          "sequence view has a null pages, block_table or residual pointer");
  require(view.length >= 0 && view.length <= view.capacity(),
          "sequence view length " + std::to_string(view.length) + " exceeds its capacity " +
              std::to_string(view.capacity()));
}

/// Rejects NaN, Inf and magnitudes whose scale the storage type cannot hold.
template <class Q>
void check_values(const float* x, std::size_t count, int num_kv_heads, int head_dim, const char* what) {
  // a branch-free pass first (it vectorizes); the failing element is looked for only on failure
  unsigned bad = 0;
  for (std::size_t i = 0; i < count; ++i) bad |= static_cast<unsigned>(!(std::fabs(x[i]) <= Q::kMaxInput));
  if (bad == 0) return;
  for (std::size_t i = 0; i < count; ++i) {
    const float a = std::fabs(x[i]);
    if (!(a <= Q::kMaxInput)) {  // also catches NaN
      const std::size_t per_token = static_cast<std::size_t>(num_kv_heads) * head_dim;
      throw Error(std::string(std::isnan(x[i]) ? "NaN" : (std::isinf(x[i]) ? "Inf" : "out-of-range value")) + " in " +
                  what + " at token " + std::to_string(i / per_token) + ", head " +
                  std::to_string(i % per_token / head_dim) + ", dim " + std::to_string(i % head_dim) +
                  " (finite |x| <= " + number(Q::kMaxInput) + " required)");
    }
  }
}

}  // namespace detail

/// Appends `n` tokens of keys and values, each [n][num_kv_heads][HeadDim] floats, to `view`
/// (whose length advances by n). With Options<RotateKeys> the keys are rotated first (and the rotated
/// keys must be in range). Throws skv::Error, leaving the cache unchanged, on a null pointer, a bad
/// view, a block-table entry outside the pool, a page the sequence already uses (checked when a page
/// is first written, against the entries before it: O(pages)), capacity overflow or a non-finite value.
template <class Layout>
void append(SequenceView<Layout>& view, const float* keys, const float* values, int n) {
  constexpr int D = Layout::kHeadDim;
  detail::check_view(view);
  detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
  if (n == 0) return;
  detail::require(keys != nullptr && values != nullptr, "append: keys and values must not be null");
  detail::require(n <= view.capacity() - view.length,
                  "append of " + std::to_string(n) + " tokens past capacity (" + std::to_string(view.length) + " of " +
                      std::to_string(view.capacity()) + " used)");
  const std::size_t count = static_cast<std::size_t>(n) * view.num_kv_heads * D;
  std::vector<float> rotated;
  if constexpr (Layout::kRotateKeys) {
    detail::check_values<typename Layout::KeyQuantizer>(keys, count, view.num_kv_heads, D, "keys");
    rotated = to_key_basis<Layout>(keys, count / D);
    keys = rotated.data();
  }
  detail::check_values<typename Layout::KeyQuantizer>(keys, count, view.num_kv_heads, D,
                                                      Layout::kRotateKeys ? "rotated keys" : "keys");
  detail::check_values<typename Layout::ValueQuantizer>(values, count, view.num_kv_heads, D, "values");
  const int q_before = Layout::quantized_length(view.length);
  const int q_after = Layout::quantized_length(view.length + n);
  if (q_after > q_before) {
    const int first = q_before / Layout::kPageSize, last = (q_after - 1) / Layout::kPageSize;
    detail::check_block_table(view, first, last, "append");
    // pages whose first block this call writes: new to the sequence, so they must not repeat an entry
    detail::check_distinct_pages(view, (q_before + Layout::kPageSize - 1) / Layout::kPageSize, last, "append");
  }

  const std::size_t token_floats = static_cast<std::size_t>(view.num_kv_heads) * D;
  for (int i = 0; i < n; ++i) {
    const int t = view.length;
    const bool sink = t < Layout::kSinkTokens;
    for (int h = 0; h < view.num_kv_heads; ++h) {
      const float* k = keys + i * token_floats + static_cast<std::size_t>(h) * D;
      const float* v = values + i * token_floats + static_cast<std::size_t>(h) * D;
      float* rk = sink ? view.sink_key(t, h) : view.residual_key(t, h);
      float* rv = sink ? view.sink_value(t, h) : view.residual_value(t, h);
      for (int c = 0; c < D; ++c) {
        rk[c] = k[c];
        rv[c] = v[c];
      }
    }
    const int q_old = Layout::quantized_length(t);
    view.length = t + 1;
    if (Layout::quantized_length(t + 1) > q_old) quantize_block_fast<Layout>(view, q_old);  // bytes of quantize_block
  }
}

/// fp16 overload: the values are widened exactly to float, then appended.
template <class Layout>
void append(SequenceView<Layout>& view, const fp16* keys, const fp16* values, int n) {
  // everything the float overload checks before it writes, checked before the float copies are allocated
  detail::check_view(view);
  detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
  if (n == 0) return;
  detail::require(keys != nullptr && values != nullptr, "append: keys and values must not be null");
  detail::require(n <= view.capacity() - view.length,
                  "append of " + std::to_string(n) + " tokens past capacity (" + std::to_string(view.length) + " of " +
                      std::to_string(view.capacity()) + " used)");
  const std::size_t count = static_cast<std::size_t>(n) * view.num_kv_heads * Layout::kHeadDim;
  std::vector<float> k(count), v(count);
  for (std::size_t i = 0; i < count; ++i) {
    k[i] = to_float(keys[i]);
    v[i] = to_float(values[i]);
  }
  append(view, k.data(), v.data(), n);
}

}  // namespace skv
