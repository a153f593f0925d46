// skv/cache/append.hpp: appending tokens to a sequence view (host).
//
// The first kSinkTokens tokens go to the sinks; later tokens enter the full-precision ring, and
// whenever kBlockTokens of them are older than the residual window, that block is quantized into
// its page, once (it is never re-quantized). A block whose tokens all arrive in one call is
// quantized straight from the input instead of the ring.
//
// All-or-nothing: a rejected call leaves every token of the cache as it was. Arguments, and the
// values bound for the full-precision area, are checked before anything is written; blocks made
// only of new tokens are checked just before they are quantized, and until the length advances
// their page slots (past the quantized length) hold no token.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
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
#include <skv/threads.hpp>


namespace skv {

namespace detail {

/// The codec of the area's key rows (Key) or value rows: Layout::KeyRing or Layout::ValueRing.
template <class Layout, bool Key>
using RingOf = std::conditional_t<Key, typename Layout::KeyRing, typename Layout::ValueRing>;

/// Stores one key (Key) or value row (HeadDim elements of T) in the layout's full-precision area
/// (or its history) through its codec: copied when T is the area's element type, else widened to
/// float and stored (rounded to fp16 with Fp16Ring, encoded with Int8Ring).
template <class Layout, bool Key, class T>
void store_full_row(const T* SKV_RESTRICT x, typename Layout::FullPrecision* SKV_RESTRICT out) {
  constexpr int D = Layout::kHeadDim;
  if constexpr (std::is_same<T, typename Layout::FullPrecision>::value) {
    std::memcpy(out, x, Layout::Ring::kBytes);
  } else if constexpr (Layout::kFloatRing) {
    simd::to_f32_row(x, D, out);
  } else {
    float row[D];
    simd::to_f32_row(x, D, row);
    RingOf<Layout, Key>::store(row, out);
  }
}

/// One key (Key) or value row of token `token` of the caller's input as the layout stores it:
/// widened, rotated with RotateKeys / RotateValues, turned back by R(-token) with PreRopeKeys (by the
/// view's rope_freq), and stored through Layout::Ring.
template <class Layout, bool Key, class T>
void stored_row(const T* x, typename Layout::FullPrecision* out, int token, const float* rope_freq) {
  constexpr int D = Layout::kHeadDim;
  float row[D];
  simd::to_f32_row(x, D, row);
  if constexpr (Key && Layout::kRotateKeys) HadamardRotation<D, Layout::kRotationSeed>::apply(row);
  if constexpr (Key && Layout::kPreRopeKeys) RotaryEmbedding<D>::apply(rope_freq, -static_cast<double>(token), row);
  if constexpr (!Key && Layout::kRotateValues) HadamardRotation<D, Layout::kValueRotationSeed>::apply(row);
  RingOf<Layout, Key>::store(row, out);
}

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
  require(!Layout::kPreRopeKeys || view.rope_freq != nullptr,
          "a PreRopeKeys cache needs the model's rotary frequencies: the view's rope_freq (HeadDim / 2 floats) "
          "is null");
}

/// Rejects NaN, Inf and magnitudes whose scale the storage type cannot hold.
template <class Q, class T>
void check_values(const T* x, std::size_t count, int num_kv_heads, int head_dim, const char* what,
                  const std::string& note = "") {
  // a vector pass first; the failing element is looked for only on failure
  if (simd::all_within(x, count, Q::kMaxInput)) return;
  for (std::size_t i = 0; i < count; ++i) {
    const float xi = to_float(x[i]);
    if (!(std::fabs(xi) <= Q::kMaxInput)) {  // also catches NaN
      const std::size_t per_token = static_cast<std::size_t>(num_kv_heads) * head_dim;
      throw Error(std::string(std::isnan(xi) ? "NaN" : (std::isinf(xi) ? "Inf" : "out-of-range value")) + " in " +
                  what + " at token " + std::to_string(i / per_token) + ", head " +
                  std::to_string(i % per_token / head_dim) + ", dim " + std::to_string(i % head_dim) +
                  " (finite |x| <= " + number(Q::kMaxInput) + " required" + note + ")");
    }
  }
}

/// Fewest blocks an append must complete before it uses more than one thread.
constexpr int kMinThreadedBlocks = 8;

/// Quantized index of the first block of an append of tokens [t0, t_end) made only of new tokens
/// (the blocks before it hold tokens of earlier calls, which wait in the ring).
template <class Layout>
int first_direct_block(int t0, int t_end) {
  const int q_after = Layout::quantized_length(t_end);
  int first = Layout::quantized_length(t0);
  while (first < q_after && Layout::kSinkTokens + first < t0) first += Layout::kBlockTokens;
  return first;
}

/// Quantizes the blocks of new tokens only, [first, q_after), straight from the input (several
/// threads for a prefill), checking each block's input in a linear pass just before (which also
/// brings the block, B tokens x every head, into the cache for the head-by-head strided reads).
/// Writes only page slots past the quantized length, so a caller may still throw afterwards without
/// changing any token. Returns whether every input value was in range.
template <class Layout, class TK, class TV>
bool quantize_direct_blocks(const SequenceView<Layout>& view, const TK* keys, const TV* values, int t0, int first,
                            int q_after, int num_threads) {  // num_threads: resolved (skv/threads.hpp)
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  constexpr int B = Layout::kBlockTokens;
  const std::size_t token_floats = static_cast<std::size_t>(view.num_kv_heads) * Layout::kHeadDim;
  const int blocks = (q_after - first) / B;
  const auto quantize = [&](int b) {
    const int f = first + b * B;
    const std::size_t at = static_cast<std::size_t>(Layout::kSinkTokens + f - t0) * token_floats;
    if (!simd::all_within(keys + at, B * token_floats, KQ::kMaxInput) ||
        !simd::all_within(values + at, B * token_floats, VQ::kMaxInput))
      return false;
    quantize_block_rows<Layout>(view, f, keys + at, values + at, token_floats);
    return true;
  };
  int bad = 0;
#if defined(SKV_HAS_OPENMP)
  const int threads = num_threads;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : bad) if (threads > 1 && blocks >= kMinThreadedBlocks)
  for (int b = 0; b < blocks; ++b) bad |= !quantize(b);
#else
  (void)num_threads;
  for (int b = 0; b < blocks; ++b) bad |= !quantize(b);
#endif
  return bad == 0;
}

/// The rest of an append whose values are all known to be in range: sinks, blocks that began in
/// an earlier call (quantized from the ring), the tokens that stay in the residual window.
template <class Layout, class TK, class TV>
void append_to_ring(SequenceView<Layout>& view, const TK* keys, const TV* values, int n, int direct) {
  constexpr int D = Layout::kHeadDim, B = Layout::kBlockTokens, kSinks = Layout::kSinkTokens;
  const int heads = view.num_kv_heads;
  const std::size_t token_floats = static_cast<std::size_t>(heads) * D;
  const int t0 = view.length, t_end = t0 + n;
  const auto at = [&](int t, int h) { return static_cast<std::size_t>(t - t0) * token_floats + static_cast<std::size_t>(h) * D; };
  const auto to_ring = [&](int t) {
    for (int h = 0; h < heads; ++h) {
      store_full_row<Layout, true>(keys + at(t, h), view.residual_key(t, h));
      store_full_row<Layout, false>(values + at(t, h), view.residual_value(t, h));
    }
  };
  for (int t = t0; t < t_end && t < kSinks; ++t) {
    for (int h = 0; h < heads; ++h) {
      store_full_row<Layout, true>(keys + at(t, h), view.sink_key(t, h));
      store_full_row<Layout, false>(values + at(t, h), view.sink_value(t, h));
    }
  }
  // in token order: a block's new tokens take ring slots of tokens quantized before it
  for (int first = Layout::quantized_length(t0); first < direct; first += B) {
    for (int t = t0 > kSinks + first ? t0 : kSinks + first; t < kSinks + first + B; ++t) to_ring(t);
    quantize_block_fast<Layout>(view, first);
  }
  const int q_after = Layout::quantized_length(t_end);
  for (int t = t0 > kSinks + q_after ? t0 : kSinks + q_after; t < t_end; ++t) to_ring(t);
  view.length = t_end;
}

}  // namespace detail

/// Run-time knobs of append.
struct AppendOptions {
  /// Threads for quantizing the blocks an append completes: 0 means every OpenMP thread, 1 the
  /// calling thread, at most skv::kMaxThreads (skv/threads.hpp). Only appends that complete at
  /// least detail::kMinThreadedBlocks blocks (a prefill) use more than one. Without OpenMP an
  /// append always runs on one thread.
  int num_threads = 0;
};

/// Appends `n` tokens of keys and values, each [n][num_kv_heads][HeadDim] of T (float, fp16 or
/// bf16; fp16 and bf16 are widened exactly, so each gives the bytes of its float values), to `view`
/// (whose length advances by n). With Options<RotateKeys> / Options<RotateValues> the keys / values
/// are rotated first (and the rotated ones must be in range); with Options<PreRopeKeys> key t is
/// turned back by R(-t), the inverse of the model's rotary embedding (view.rope_freq). Throws skv::Error, leaving every token
/// unchanged, on a null pointer, a bad view, a block-table entry outside the pool, a page the
/// sequence already uses (checked when a page is first written, against the entries before it:
/// O(pages)), capacity overflow or a non-finite value.
///
/// Sink tokens and the tokens that stay in the residual window are copied (widened) to the
/// full-precision area; blocks made only of new tokens are quantized straight from the input, with
/// the bytes quantize_block would write from the ring. With Options<Fp16Ring> / Options<Int8Ring>
/// every token is first rounded through the area's row format (after the rotations), so both paths
/// see the same values.
template <class Layout, class T>
void append(SequenceView<Layout>& view, const T* keys, const T* values, int n, const AppendOptions& opt = {}) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, fp16>::value || std::is_same<T, bf16>::value,
                "skv::append: keys and values must be float, skv::fp16 or skv::bf16");
  constexpr int D = Layout::kHeadDim;
  detail::check_view(view);
  detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
  const int threads = detail::resolve_threads(opt.num_threads, "append");
  if (n == 0) return;
  detail::require(keys != nullptr && values != nullptr, "append: keys and values must not be null");
  detail::require(n <= view.capacity() - view.length,
                  "append of " + std::to_string(n) + " tokens past capacity (" + std::to_string(view.length) + " of " +
                      std::to_string(view.capacity()) + " used)");
  const std::size_t count = static_cast<std::size_t>(n) * view.num_kv_heads * D;
  const int q_before = Layout::quantized_length(view.length);
  const int q_after = Layout::quantized_length(view.length + n);
  if (q_after > q_before) {
    const int first = q_before / Layout::kPageSize, last = (q_after - 1) / Layout::kPageSize;
    detail::check_block_table(view, first, last, "append");
    // pages whose first block this call writes: new to the sequence, so they must not repeat an entry
    detail::check_distinct_pages(view, (q_before + Layout::kPageSize - 1) / Layout::kPageSize, last, "append");
  }
  // keys and values in the basis the layout stores them in: widened and rotated copies with
  // RotateKeys / RotateValues / PreRopeKeys (non-finite inputs are reported before the rotation
  // spreads them); turn(row, t) rotates the row of token t
  const auto rotate = [&](const T* x, const char* what, auto check, auto turn) {
    check(x, what);
    std::vector<float> r(count);
    const std::size_t token_floats = static_cast<std::size_t>(view.num_kv_heads) * D;
    for (std::size_t i = 0; i < count; i += D) {
      simd::to_f32_row(x + i, D, r.data() + i);
      turn(r.data() + i, view.length + static_cast<int>(i / token_floats));
    }
    return r;
  };
  const auto check_keys = [&](const T* x, const char* what) {
    detail::check_values<typename Layout::KeyQuantizer>(x, count, view.num_kv_heads, D, what);
  };
  const auto check_vals = [&](const T* x, const char* what) {
    detail::check_values<typename Layout::ValueQuantizer>(x, count, view.num_kv_heads, D, what);
  };
  std::vector<float> rotated_keys, rotated_values;
  if constexpr (Layout::kRotateKeys)
    rotated_keys = rotate(keys, "keys", check_keys, [](float* x, int) { HadamardRotation<D, Layout::kRotationSeed>::apply(x); });
  if constexpr (Layout::kPreRopeKeys) {  // a token's angles once, for all of its heads
    typename RotaryEmbedding<D>::Angles angles;
    int at = -1;
    rotated_keys = rotate(keys, "keys", check_keys, [&](float* x, int t) {
      if (t != at) {
        angles.set(view.rope_freq, -static_cast<double>(t));
        at = t;
      }
      angles.apply(x);
    });
  }
  if constexpr (Layout::kRotateValues)
    rotated_values = rotate(values, "values", check_vals,
                            [](float* x, int) { HadamardRotation<D, Layout::kValueRotationSeed>::apply(x); });
  // k, v: the keys and values in the stored basis (rotated), of type T or float. Throws the first
  // error in input order (keys, then values), with its position.
  const auto fail = [&](const auto* k, const auto* v) {
    check_keys(keys, "keys");
    check_vals(values, "values");
    // the Hadamard rotation grows an element up to sqrt(head_dim) times, the rotary one sqrt(2) times
    const auto grown = [&](const char* what, double max_input, bool rotary) {
      return std::string("; the rotation can grow an element up to ") + (rotary ? "sqrt(2)" : "sqrt(head_dim)") +
             " times, so " + what + " within +-" +
             detail::number(max_input / std::sqrt(rotary ? 2.0 : static_cast<double>(D))) + " always fit";
    };
    detail::check_values<typename Layout::KeyQuantizer>(
        k, count, view.num_kv_heads, D, Layout::kPreRopeKeys ? "keys before the rotary embedding" : "rotated keys",
        grown("keys", Layout::KeyQuantizer::kMaxInput, Layout::kPreRopeKeys));
    detail::check_values<typename Layout::ValueQuantizer>(v, count, view.num_kv_heads, D, "rotated values",
                                                          grown("values", Layout::ValueQuantizer::kMaxInput, false));
    throw Error("append: a value out of range was detected but not located");  // unreachable
  };
  // k, v: what the full-precision area stores (through Layout::Ring); qk, qv: the same tokens as the
  // area holds them, which blocks of new tokens quantize straight from
  const auto store = [&](const auto* k, const auto* v, const auto* qk, const auto* qv) {
    // tokens bound for the full-precision area are checked before anything is written; blocks of
    // new tokens are checked in the pass that quantizes them (into slots past the quantized
    // length: no token changes if it fails)
    const int t0 = view.length, t_end = t0 + n;
    const int direct = detail::first_direct_block<Layout>(t0, t_end);
    const std::size_t tf = static_cast<std::size_t>(view.num_kv_heads) * D;
    const int ring_end = std::min(t_end, Layout::kSinkTokens + direct);
    const int tail = std::max(t0, Layout::kSinkTokens + q_after);
    const auto in_range = [&](int from, int to) {
      if (from >= to) return true;
      const std::size_t off = static_cast<std::size_t>(from - t0) * tf, len = static_cast<std::size_t>(to - from) * tf;
      return simd::all_within(k + off, len, Layout::KeyQuantizer::kMaxInput) &&
             simd::all_within(v + off, len, Layout::ValueQuantizer::kMaxInput);
    };
    if (!in_range(t0, ring_end) || !in_range(tail, t_end)) fail(k, v);
    if (!detail::quantize_direct_blocks(view, qk, qv, t0, direct, q_after, threads)) fail(k, v);
    detail::append_to_ring(view, k, v, n, direct);
  };
  const auto run = [&](const auto* k, const auto* v) {
    using TK = std::remove_cv_t<std::remove_reference_t<decltype(*k)>>;
    using TV = std::remove_cv_t<std::remove_reference_t<decltype(*v)>>;
    if constexpr (!Layout::kFloatRing && !(Layout::kFp16Ring && std::is_same<TK, fp16>::value &&
                                           std::is_same<TV, fp16>::value)) {
      // every token through the area's row format once, so that a token quantized straight from the
      // input and one quantized from the ring later have the same values; a value out of range is
      // reported by `fail` in the input's own terms (in range, a row decodes in range: ring.hpp)
      if (!simd::all_within(k, count, Layout::KeyQuantizer::kMaxInput) ||
          !simd::all_within(v, count, Layout::ValueQuantizer::kMaxInput))
        fail(k, v);
      const auto held = [&](const auto* x, auto key) {  // key: std::true_type for key rows
        using Codec = detail::RingOf<Layout, decltype(key)::value>;
        std::vector<float> out(count);
        float row[Layout::kHeadDim];
        typename Layout::FullPrecision stored[Layout::kRingRow];
        for (std::size_t i = 0; i < count; i += Layout::kHeadDim) {
          simd::to_f32_row(x + i, Layout::kHeadDim, row);
          Codec::store(row, stored);
          Codec::load(stored, out.data() + i);
        }
        return out;
      };
      const std::vector<float> kq = held(k, std::true_type{}), vq = held(v, std::false_type{});
      store(k, v, kq.data(), vq.data());
    } else {
      store(k, v, k, v);
    }
  };
  const auto with_values = [&](const auto* k) {
    if constexpr (Layout::kRotateValues) {
      run(k, rotated_values.data());
    } else {
      run(k, values);
    }
  };
  if constexpr (Layout::kRotateKeys || Layout::kPreRopeKeys) {
    with_values(rotated_keys.data());
  } else {
    with_values(keys);
  }
}

}  // namespace skv
