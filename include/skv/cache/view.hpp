// skv/cache/view.hpp: a non-owning, trivially copyable view of one sequence's cache.
//
// The engine owns the memory: a pool of pages (CacheLayout::page_bytes(num_kv_heads) each), a block
// table mapping the sequence's logical pages to pool pages, and the sequence's full-precision area
// (CacheLayout::residual_floats(num_kv_heads) floats: the residual ring and the sink tokens). The
// view only points at them, so it can be passed by value into a kernel. Reading is host and device;
// appending is skv::append (append.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <skv/cache/layout.hpp>
#include <skv/config.hpp>

namespace skv {

template <class Layout>
struct SequenceView {
  using L = Layout;
  using KeyBlock = typename L::KeyBlock;
  using ValueBlock = typename L::ValueBlock;

  std::uint8_t* pages = nullptr;             ///< base of the page pool
  const std::int32_t* block_table = nullptr;  ///< pool page of each logical page of this sequence
  float* residual = nullptr;                 ///< this sequence's full-precision area (ring + sinks)
  int num_pages = 0;                         ///< pages in the pool (every table entry must be below)
  int max_pages = 0;                         ///< entries in block_table
  int num_kv_heads = 0;
  int length = 0;  ///< tokens appended so far

  /// Tokens the view can hold: the sinks plus its pages.
  SKV_HOST_DEVICE int capacity() const { return L::kSinkTokens + max_pages * L::kPageSize; }
  SKV_HOST_DEVICE int sink_length() const { return L::sink_length(length); }
  SKV_HOST_DEVICE int quantized_length() const { return L::quantized_length(length); }
  SKV_HOST_DEVICE int residual_begin() const { return L::residual_begin(length); }

  /// First byte of head `h`'s block in the page that holds quantized index `j` (token kSinkTokens + j).
  SKV_HOST_DEVICE std::uint8_t* head_block(int j, int h) const {
    const std::int32_t page = block_table[j / L::kPageSize];
    return pages + static_cast<std::size_t>(page) * L::page_bytes(num_kv_heads) + static_cast<std::size_t>(h) * L::kHeadBytes;
  }
  /// Key / value blocks of the page holding quantized index `j`; index them with j % kPageSize.
  SKV_HOST_DEVICE KeyBlock keys(int j, int h) const { return KeyBlock{head_block(j, h)}; }
  SKV_HOST_DEVICE ValueBlock values(int j, int h) const { return ValueBlock{head_block(j, h) + L::Keys::kBytes}; }

  /// Full-precision key / value of a sink token (token < kSinkTokens).
  SKV_HOST_DEVICE float* sink_key(int token, int h) const { return residual + L::sink_key_offset(token, h, num_kv_heads); }
  SKV_HOST_DEVICE float* sink_value(int token, int h) const {
    return residual + L::sink_value_offset(token, h, num_kv_heads);
  }
  /// Full-precision key / value of a token in the residual window (token >= residual_begin()).
  SKV_HOST_DEVICE float* residual_key(int token, int h) const {
    return residual + L::residual_key_offset(token, h, num_kv_heads);
  }
  SKV_HOST_DEVICE float* residual_value(int token, int h) const {
    return residual + L::residual_value_offset(token, h, num_kv_heads);
  }

  /// Element `c` of key / value `token` as attention sees it (dequantized or full precision; keys in
  /// the rotated basis when the layout rotates keys).
  SKV_HOST_DEVICE float key(int token, int h, int c) const {
    if (token < L::kSinkTokens) return sink_key(token, h)[c];
    const int j = token - L::kSinkTokens;
    if (j < quantized_length()) return keys(j, h).dequantize(j % L::kPageSize, c);
    return residual_key(token, h)[c];
  }
  SKV_HOST_DEVICE float value(int token, int h, int c) const {
    if (token < L::kSinkTokens) return sink_value(token, h)[c];
    const int j = token - L::kSinkTokens;
    if (j < quantized_length()) return values(j, h).dequantize(j % L::kPageSize, c);
    return residual_value(token, h)[c];
  }
};

}  // namespace skv
