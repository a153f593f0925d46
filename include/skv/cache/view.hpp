// skv/cache/view.hpp: a non-owning, trivially copyable view of one sequence's cache.
//
// The engine owns the memory: a pool of pages (CacheLayout::page_bytes(num_kv_heads) each), a block
// table mapping the sequence's logical pages to pool pages, and the sequence's full-precision area
// (CacheLayout::residual_elements(num_kv_heads) elements of CacheLayout::FullPrecision, float, fp16
// or 8-bit rows: the residual ring and the sink tokens). The view only points at them, so it can be passed by
// value into a kernel. Reading is host and device; appending is skv::append (append.hpp).
//
// Sliding windows: a sequence whose attention only reaches back a window of tokens may hand the
// pages before the window back to its pool. `first_page` says how many: block_table[0] then maps
// logical page first_page, and attention that would read an earlier page is an skv::Error. An engine
// that keeps a whole table and frees entries in place leaves first_page at 0 and attends with a
// window, which never reads the freed entries (docs/integration.md, "Sliding windows").
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/cache/layout.hpp>
#include <skv/config.hpp>
#include <skv/error.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {

template <class Layout>
struct SequenceView {
  using L = Layout;
  using KeyBlock = typename L::KeyBlock;
  using ValueBlock = typename L::ValueBlock;
  using Full = typename L::FullPrecision;  ///< float; fp16 with Fp16Ring; bytes with Int8Ring

  std::uint8_t* pages = nullptr;             ///< base of the page pool
  const std::int32_t* block_table = nullptr;  ///< pool page of each logical page of this sequence
  Full* residual = nullptr;                  ///< this sequence's full-precision area (ring + sinks)
  int num_pages = 0;                         ///< pages in the pool (every table entry must be below)
  int max_pages = 0;                         ///< entries in block_table
  int num_kv_heads = 0;
  int length = 0;      ///< tokens appended so far
  int first_page = 0;  ///< logical page of block_table[0]; the pages before it were handed back
  /// Options<PreRopeKeys>: the model's HeadDim / 2 rotary frequencies (its inv_freq), by which key t
  /// is stored as R(-t) k and read back as R(t) of what is stored (quant/rotation.hpp); unused
  /// otherwise. The same for every append and read of the sequence.
  const float* rope_freq = nullptr;

  /// Tokens the view can hold, at most INT_MAX (a length is an int): the sinks, the tokens of the
  /// handed-back and the listed pages, and the tokens that wait in the ring until their block fills
  /// a page slot (Residual + kBlockTokens - 1).
  SKV_HOST_DEVICE int capacity() const {
    const long long c = L::kSinkTokens + (static_cast<long long>(first_page) + max_pages) * L::kPageSize +
                        L::kResidualCapacity - 1;
    return c < INT_MAX ? static_cast<int>(c) : INT_MAX;
  }
  /// First token whose page (or full-precision slot) the view still holds.
  SKV_HOST_DEVICE int first_held_token() const {
    const long long t = L::kSinkTokens + static_cast<long long>(first_page) * L::kPageSize;
    return first_page == 0 ? 0 : (t < INT_MAX ? static_cast<int>(t) : INT_MAX);
  }
  SKV_HOST_DEVICE int sink_length() const { return L::sink_length(length); }
  SKV_HOST_DEVICE int quantized_length() const { return L::quantized_length(length); }
  SKV_HOST_DEVICE int residual_begin() const { return L::residual_begin(length); }

  /// First byte of head `h`'s block in the page that holds quantized index `j` (token kSinkTokens + j).
  SKV_HOST_DEVICE std::uint8_t* head_block(int j, int h) const {
    const std::int32_t page = block_table[j / L::kPageSize - first_page];
    return pages + static_cast<std::size_t>(page) * L::page_bytes(num_kv_heads) + static_cast<std::size_t>(h) * L::kHeadBytes;
  }
  /// Key / value blocks of the page holding quantized index `j`; index them with j % kPageSize.
  SKV_HOST_DEVICE KeyBlock keys(int j, int h) const { return KeyBlock{head_block(j, h)}; }
  SKV_HOST_DEVICE ValueBlock values(int j, int h) const { return ValueBlock{head_block(j, h) + L::Keys::kBytes}; }

  /// Full-precision key / value row of a sink token (token < kSinkTokens): L::kRingRow elements,
  /// read through L::KeyRing / L::ValueRing.
  SKV_HOST_DEVICE Full* sink_key(int token, int h) const { return residual + L::sink_key_offset(token, h, num_kv_heads); }
  SKV_HOST_DEVICE Full* sink_value(int token, int h) const {
    return residual + L::sink_value_offset(token, h, num_kv_heads);
  }
  /// Full-precision key / value of a token in the residual window (token >= residual_begin()).
  SKV_HOST_DEVICE Full* residual_key(int token, int h) const {
    return residual + L::residual_key_offset(token, h, num_kv_heads);
  }
  SKV_HOST_DEVICE Full* residual_value(int token, int h) const {
    return residual + L::residual_value_offset(token, h, num_kv_heads);
  }

  /// Element `c` of key / value `token` as attention sees it (dequantized or full precision; keys /
  /// values in the rotated basis when the layout rotates them; keys with the rotary embedding turned
  /// back on with PreRopeKeys).
  SKV_HOST_DEVICE float key(int token, int h, int c) const {
    if constexpr (L::kPreRopeKeys) {
      const int partner = c < L::kHeadDim / 2 ? c + L::kHeadDim / 2 : c - L::kHeadDim / 2;
      return RotaryEmbedding<L::kHeadDim>::element(rope_freq, token, c, stored_key(token, h, c),
                                                   stored_key(token, h, partner));
    } else {
      return stored_key(token, h, c);
    }
  }
  /// Element `c` of key `token` as the cache stores it (dequantized or full precision).
  SKV_HOST_DEVICE float stored_key(int token, int h, int c) const {
    if (token < L::kSinkTokens) return L::KeyRing::element(sink_key(token, h), c);
    const int j = token - L::kSinkTokens;
    if (j < quantized_length()) return keys(j, h).dequantize(j % L::kPageSize, c);
    return L::KeyRing::element(residual_key(token, h), c);
  }
  SKV_HOST_DEVICE float value(int token, int h, int c) const {
    if (token < L::kSinkTokens) return L::ValueRing::element(sink_value(token, h), c);
    const int j = token - L::kSinkTokens;
    if (j < quantized_length()) return values(j, h).dequantize(j % L::kPageSize, c);
    return L::ValueRing::element(residual_value(token, h), c);
  }
};

namespace detail {

/// Checks the block-table entries of logical pages [first, last] (host): each must still be held
/// (not before first_page) and name a page of the pool. O(last - first).
template <class Layout>
void check_block_table(const SequenceView<Layout>& view, int first, int last, const char* what) {
  if (last < first) return;
  require(view.block_table != nullptr, std::string(what) + ": the sequence view has no block table");
  require(first >= view.first_page,
          std::string(what) + ": logical page " + std::to_string(first) + " (tokens from " +
              std::to_string(Layout::kSinkTokens + static_cast<long long>(first) * Layout::kPageSize) +
              ") was handed back; the view holds pages from " + std::to_string(view.first_page) +
              " on (attend with a window that starts after them)");
  require(last - view.first_page < view.max_pages,
          std::string(what) + ": logical page " + std::to_string(last) + " is past the " +
              std::to_string(view.max_pages) + " entries of the block table" +
              (view.first_page ? " (from page " + std::to_string(view.first_page) + ")" : std::string()));
  for (int p = first; p <= last; ++p) {
    const std::int32_t page = view.block_table[p - view.first_page];
    require(page >= 0 && page < view.num_pages, std::string(what) + ": block table entry " +
                                                    std::to_string(p - view.first_page) + " = " + std::to_string(page) +
                                                    " is outside the pool of " + std::to_string(view.num_pages) +
                                                    " pages");
  }
}

/// Checks that entries [first_new, last] (logical pages) of the block table differ from every
/// other held entry up to `last`: a repeated page would let a later block overwrite an earlier one.
/// Append calls it for the pages it starts, so each page is compared once with the pages before it
/// (O(pages) per new page; a sort when a call starts many pages).
template <class Layout>
void check_distinct_pages(const SequenceView<Layout>& view, int first_new, int last, const char* what) {
  const int lo = first_new - view.first_page, hi = last - view.first_page;  // table indices
  if (hi < lo || hi == 0) return;
  const std::int32_t* t = view.block_table;
  int a = -1, b = -1;
  if (hi - lo < 16) {
    for (int p = lo; p <= hi && a < 0; ++p)
      for (int r = 0; r < p; ++r)
        if (t[r] == t[p]) {
          a = r;
          b = p;
          break;
        }
  } else {
    std::vector<std::int32_t> sorted(t, t + hi + 1);
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end()) {
      for (int p = 0; p <= hi && b < 0; ++p)
        if (t[p] == *dup) (a < 0 ? a : b) = p;
    }
  }
  if (a < 0) return;
  throw Error(std::string(what) + ": block table entries " + std::to_string(a) + " and " + std::to_string(b) +
              " both name pool page " + std::to_string(t[a]) + " (the pages of a sequence must differ)");
}

/// The pages a reader of `view` touches when it attends to tokens from `first_token` on: the pages
/// holding quantized tokens from there must be held and in the pool.
template <class Layout>
void check_read_pages(const SequenceView<Layout>& view, int first_token, const char* what) {
  const int q = view.quantized_length();
  const int j0 = first_token > Layout::kSinkTokens ? first_token - Layout::kSinkTokens : 0;
  if (j0 < q) check_block_table(view, j0 / Layout::kPageSize, (q - 1) / Layout::kPageSize, what);
}

}  // namespace detail
}  // namespace skv
