// skv/cache/append.hpp: appending tokens to a sequence view (host).
//
// All-or-nothing: every argument and every value is checked before the first byte is written, so a
// rejected call leaves the cache exactly as it was. The first kSinkTokens tokens go to the sinks;
// later tokens enter the full-precision ring, and whenever kBlockTokens of them are older than the
// residual window, that block is quantized into its page, once (it is never re-quantized). A block
// whose tokens all arrive in one call is quantized straight from the input instead of the ring.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/cache/layout.hpp>
#include <skv/cache/quantize_block.hpp>
#include <skv/cache/quantize_block_fast.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/simd.hpp>
#include <skv/quant/rotation.hpp>

#if defined(SKV_HAS_OPENMP)
#include <omp.h>
#endif

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
template <class Q, class T>
void check_values(const T* x, std::size_t count, int num_kv_heads, int head_dim, const char* what) {
  // a vector pass first; the failing element is looked for only on failure
  if (simd::all_within(x, count, Q::kMaxInput)) return;
  for (std::size_t i = 0; i < count; ++i) {
    const float xi = to_float(x[i]);
    if (!(std::fabs(xi) <= Q::kMaxInput)) {  // also catches NaN
      const std::size_t per_token = static_cast<std::size_t>(num_kv_heads) * head_dim;
      throw Error(std::string(std::isnan(xi) ? "NaN" : (std::isinf(xi) ? "Inf" : "out-of-range value")) + " in " +
                  what + " at token " + std::to_string(i / per_token) + ", head " +
                  std::to_string(i % per_token / head_dim) + ", dim " + std::to_string(i % head_dim) +
                  " (finite |x| <= " + number(Q::kMaxInput) + " required)");
    }
  }
}

/// Fewest blocks an append must complete before it uses more than one thread.
constexpr int kMinThreadedBlocks = 8;

/// The writing half of append, after every check passed: keys / values are the n new tokens,
/// [n][num_kv_heads][HeadDim] (keys already in the cache's basis).
template <class Layout, class TK, class TV>
void append_checked(SequenceView<Layout>& view, const TK* keys, const TV* values, int n, int num_threads) {
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  constexpr int D = Layout::kHeadDim, P = Layout::kPageSize, B = Layout::kBlockTokens, kSinks = Layout::kSinkTokens;
  const int heads = view.num_kv_heads;
  const std::size_t token_floats = static_cast<std::size_t>(heads) * D;
  const int t0 = view.length, t_end = t0 + n;
  const auto at = [&](int t, int h) { return static_cast<std::size_t>(t - t0) * token_floats + static_cast<std::size_t>(h) * D; };
  const auto to_ring = [&](int t) {
    for (int h = 0; h < heads; ++h) {
      simd::to_f32_row(keys + at(t, h), D, view.residual_key(t, h));
      simd::to_f32_row(values + at(t, h), D, view.residual_value(t, h));
    }
  };

  // sinks, in full precision
  for (int t = t0; t < t_end && t < kSinks; ++t) {
    for (int h = 0; h < heads; ++h) {
      simd::to_f32_row(keys + at(t, h), D, view.sink_key(t, h));
      simd::to_f32_row(values + at(t, h), D, view.sink_value(t, h));
    }
  }
  // blocks this call completes that began in an earlier call: their new tokens join the ring, and
  // the block is quantized from the ring
  const int q_after = Layout::quantized_length(t_end);
  int first = Layout::quantized_length(t0);
  for (; first < q_after && kSinks + first < t0; first += B) {
    for (int t = t0; t < kSinks + first + B; ++t) to_ring(t);
    quantize_block_fast<Layout>(view, first);
  }
  // blocks of new tokens only: quantized straight from the input (never copied to the ring), on
  // several threads when there are many (a prefill)
  const int blocks = (q_after - first) / B;
  const int items = blocks * heads;
  const auto quantize = [&](int item) {
    const int f = first + item / heads * B, h = item % heads;
    std::uint8_t* block = view.head_block(f, h);
    quantize_rows_fast<KQ, D, P, Layout::kClipKeys>(keys + at(kSinks + f, h), token_floats, B, f % P, block);
    quantize_rows_fast<VQ, D, P, Layout::kClipValues>(values + at(kSinks + f, h), token_floats, B, f % P,
                                                      block + Layout::Keys::kBytes);
  };
#if defined(SKV_HAS_OPENMP)
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks >= kMinThreadedBlocks)
  for (int i = 0; i < items; ++i) quantize(i);
#else
  (void)num_threads;
  for (int i = 0; i < items; ++i) quantize(i);
#endif
  // the tokens still in the full-precision window; their ring slots belong to quantized tokens
  for (int t = t0 > kSinks + q_after ? t0 : kSinks + q_after; t < t_end; ++t) to_ring(t);
  view.length = t_end;
}

}  // namespace detail

/// Run-time knobs of append.
struct AppendOptions {
  /// Threads for quantizing the blocks an append completes: 0 means every OpenMP thread, 1 the
  /// calling thread. Only appends that complete at least detail::kMinThreadedBlocks blocks (a
  /// prefill) use more than one. Without OpenMP an append always runs on one thread.
  int num_threads = 0;
};

/// Appends `n` tokens of keys and values, each [n][num_kv_heads][HeadDim] of T (float, fp16 or
/// bf16; fp16 and bf16 are widened exactly, so each gives the bytes of its float values), to `view`
/// (whose length advances by n). With Options<RotateKeys> the keys are rotated first (and the
/// rotated keys must be in range). Throws skv::Error, leaving the cache unchanged, on a null pointer,
/// a bad view, a block-table entry outside the pool, a page the sequence already uses (checked when
/// a page is first written, against the entries before it: O(pages)), capacity overflow or a
/// non-finite value.
///
/// One pass over the input after the check: sink tokens and the tokens that stay in the residual
/// window are copied (widened) to the full-precision area; blocks made only of new tokens are
/// quantized straight from the input, with the bytes quantize_block would write from the ring.
template <class Layout, class T>
void append(SequenceView<Layout>& view, const T* keys, const T* values, int n, const AppendOptions& opt = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, fp16>::value || std::is_same<T, bf16>::value,
                "skv::append: keys and values must be float, skv::fp16 or skv::bf16");
  constexpr int D = Layout::kHeadDim;
  detail::check_view(view);
  detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
  if (n == 0) return;
  detail::require(keys != nullptr && values != nullptr, "append: keys and values must not be null");
  detail::require(n <= view.capacity() - view.length,
                  "append of " + std::to_string(n) + " tokens past capacity (" + std::to_string(view.length) + " of " +
                      std::to_string(view.capacity()) + " used)");
  const std::size_t count = static_cast<std::size_t>(n) * view.num_kv_heads * D;
  detail::check_values<typename Layout::KeyQuantizer>(keys, count, view.num_kv_heads, D, "keys");
  detail::check_values<typename Layout::ValueQuantizer>(values, count, view.num_kv_heads, D, "values");
  std::vector<float> rotated;
  if constexpr (Layout::kRotateKeys) {
    rotated.resize(count);
    for (std::size_t r = 0; r < count; r += D) {
      simd::to_f32_row(keys + r, D, rotated.data() + r);
      HadamardRotation<D, Layout::kRotationSeed>::apply(rotated.data() + r);
    }
    detail::check_values<typename Layout::KeyQuantizer>(rotated.data(), count, view.num_kv_heads, D, "rotated keys");
  }
  const int q_before = Layout::quantized_length(view.length);
  const int q_after = Layout::quantized_length(view.length + n);
  if (q_after > q_before) {
    const int first = q_before / Layout::kPageSize, last = (q_after - 1) / Layout::kPageSize;
    detail::check_block_table(view, first, last, "append");
    // pages whose first block this call writes: new to the sequence, so they must not repeat an entry
    detail::check_distinct_pages(view, (q_before + Layout::kPageSize - 1) / Layout::kPageSize, last, "append");
  }
  if constexpr (Layout::kRotateKeys) {
    detail::append_checked(view, rotated.data(), values, n, opt.num_threads);
  } else {
    detail::append_checked(view, keys, values, n, opt.num_threads);
  }
}

}  // namespace skv
