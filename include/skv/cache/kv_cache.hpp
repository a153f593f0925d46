// skv/cache/kv_cache.hpp: the owning host cache of one sequence, and the short form KVCache<K, V>.
//
//   skv::KVCache<4, 2> cache(num_kv_heads, max_tokens);   // 4-bit keys, 2-bit values
//   cache.append(k, v, n);                                 // [n][num_kv_heads][head_dim]
//   skv::cpu::decode_attention(cache, q, num_q_heads, out);
//
// The cache allocates all of its pages up front (capacity never moves memory) and is a thin owner
// around a SequenceView: everything it does, an engine can do on its own memory through the view.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <skv/cache/append.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {

/// A quantized KV cache for one sequence, every parameter fixed at compile time.
///   KeyQ, ValueQ  skv::Quantizer types for keys and values (any bits, group, axis, scheme)
///   HeadDim       elements per head
///   PageSize      tokens per page (a power of two, a multiple of every Channel-axis group)
///   Residual      extra recent tokens kept in full precision beyond the incomplete block
///   Opts          skv::Options<...>: RotateKeys, Sinks<N>, ClipKeys, ClipValues (cache/options.hpp)
template <class KeyQ, class ValueQ, int HeadDim = 128, int PageSize = 64, int Residual = 0, class Opts = Options<>>
class BasicKVCache {
 public:
  using Layout = CacheLayout<KeyQ, ValueQ, HeadDim, PageSize, Residual, Opts>;
  using View = SequenceView<Layout>;
  using KeyQuantizer = KeyQ;
  using ValueQuantizer = ValueQ;

  static constexpr int kKeyBits = KeyQ::kBits;
  static constexpr int kValueBits = ValueQ::kBits;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kPageSize = PageSize;
  static constexpr int kResidual = Residual;
  static constexpr int kSinkTokens = Layout::kSinkTokens;
  static constexpr bool kRotateKeys = Layout::kRotateKeys;
  /// Bytes of one KV head in one page (naming it also checks the configuration at compile time).
  static constexpr std::size_t kHeadBytes = Layout::kHeadBytes;

  /// Quantized bytes per token per KV head (keys + values, codes + scales + zeros); sink tokens cost
  /// Layout::sink_bytes_per_token() each instead, counted in memory_bytes().
  static constexpr double bytes_per_token() { return Layout::bytes_per_token(); }
  /// Average bits per cached element, metadata included.
  static constexpr double bits_per_element() { return Layout::bits_per_element(); }

  /// Largest reservation a cache accepts (pages plus the full-precision area): 1 TiB, beyond any
  /// host it runs on, so that absurd shapes are an skv::Error rather than an allocator failure.
  static constexpr std::size_t kMaxReservedBytes = std::size_t{1} << 40;

  BasicKVCache(int num_kv_heads, int max_tokens) : num_kv_heads_(num_kv_heads), max_tokens_(max_tokens) {
    detail::require(num_kv_heads > 0, "the cache needs at least one KV head (num_kv_heads = " +
                                          std::to_string(num_kv_heads) + ")");
    detail::require(max_tokens >= 0, "max_tokens must not be negative (" + std::to_string(max_tokens) + ")");
    const int paged = max_tokens > Layout::kSinkTokens ? max_tokens - Layout::kSinkTokens : 0;
    num_pages_ = paged / PageSize + (paged % PageSize != 0);
    // validated in 64 bits before anything is allocated (both products fit: int * 2^24 at most)
    const std::size_t page_bytes = Layout::page_bytes(num_kv_heads);
    const std::size_t floats = Layout::residual_floats(num_kv_heads);
    detail::require(page_bytes <= kMaxReservedBytes / (num_pages_ + 1) &&
                        floats <= kMaxReservedBytes / sizeof(float) - page_bytes * num_pages_ / sizeof(float),
                    "a cache of " + std::to_string(num_kv_heads) + " KV heads and " + std::to_string(max_tokens) +
                        " tokens would reserve more than 2^40 bytes");
    pool_bytes_ = page_bytes * num_pages_;
    try {
      // never null, even without pages (a cache of sink tokens only): views need a valid base
      pool_.reset(static_cast<std::uint8_t*>(std::calloc(pool_bytes_ + 64, 1)));
      detail::require(pool_ != nullptr, "out of memory allocating " + std::to_string(pool_bytes_) + " bytes");
      table_.resize(static_cast<std::size_t>(num_pages_) + 1);  // +1: never empty, so data() is never null
      residual_.assign(floats, 0.0f);
    } catch (const std::bad_alloc&) {
      throw Error("out of memory allocating a cache of " + std::to_string(num_kv_heads) + " KV heads and " +
                  std::to_string(max_tokens) + " tokens");
    }
    for (int p = 0; p < num_pages_; ++p) table_[p] = p;
  }

  BasicKVCache(const BasicKVCache& other)
      : BasicKVCache(other.num_kv_heads_, other.max_tokens_) {
    if (pool_bytes_) std::memcpy(pool_.get(), other.pool_.get(), pool_bytes_);
    residual_ = other.residual_;
    length_ = other.length_;
  }
  BasicKVCache& operator=(const BasicKVCache& other) {
    if (this != &other) *this = BasicKVCache(other);
    return *this;
  }
  BasicKVCache(BasicKVCache&&) noexcept = default;
  BasicKVCache& operator=(BasicKVCache&&) noexcept = default;

  /// Appends n tokens; k and v are [n][num_kv_heads][HeadDim] of float, fp16 or bf16 (widened
  /// exactly: the cache holds the same bytes as for their float values). All-or-nothing: throws
  /// skv::Error and leaves every token unchanged on null pointers, NaN/Inf, or appending past max_tokens.
  void append(const float* k, const float* v, int n, const AppendOptions& opt = {}) { append_impl(k, v, n, opt); }
  void append(const fp16* k, const fp16* v, int n, const AppendOptions& opt = {}) { append_impl(k, v, n, opt); }
  void append(const bf16* k, const bf16* v, int n, const AppendOptions& opt = {}) { append_impl(k, v, n, opt); }

  /// Forgets every token (memory stays allocated).
  void clear() { length_ = 0; }

  int size() const { return length_; }
  int capacity() const { return max_tokens_; }
  int num_kv_heads() const { return num_kv_heads_; }
  /// Tokens kept as sinks / stored quantized / still in the full-precision residual window.
  int sink_size() const { return Layout::sink_length(length_); }
  int quantized_size() const { return Layout::quantized_length(length_); }
  int residual_size() const { return length_ - Layout::residual_begin(length_); }

  /// Bytes holding cached tokens now: the pages in use plus the full-precision area (ring and sinks).
  std::size_t memory_bytes() const {
    const int q = quantized_size();
    const std::size_t pages_used = static_cast<std::size_t>(q / PageSize + (q % PageSize != 0));
    return pages_used * Layout::page_bytes(num_kv_heads_) + residual_bytes();
  }
  /// Bytes reserved for max_tokens: every page plus the full-precision area.
  std::size_t reserved_bytes() const { return pool_bytes_ + residual_bytes(); }

  /// A view of this cache (valid while the cache lives and is not moved). Read it for attention;
  /// to append through it, call skv::append on a copy and the cache's own size will not follow.
  View view() const {
    View v;
    v.pages = pool_.get();
    v.block_table = table_.data();
    v.residual = const_cast<float*>(residual_.data());
    v.num_pages = num_pages_;
    v.max_pages = num_pages_;
    v.num_kv_heads = num_kv_heads_;
    v.length = length_;
    return v;
  }

 private:
  struct FreeDeleter {
    void operator()(std::uint8_t* p) const { std::free(p); }
  };

  std::size_t residual_bytes() const { return residual_.size() * sizeof(float); }

  template <class T>
  void append_impl(const T* k, const T* v, int n, const AppendOptions& opt) {
    detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
    detail::require(n <= max_tokens_ - length_, "append of " + std::to_string(n) + " tokens past capacity (" +
                                                    std::to_string(length_) + " of " + std::to_string(max_tokens_) +
                                                    " tokens used)");
    if (n == 0) return;
    View v_ = view();
    skv::append(v_, k, v, n, opt);
    length_ = v_.length;
  }

  int num_kv_heads_;
  int max_tokens_;
  int num_pages_ = 0;
  std::size_t pool_bytes_ = 0;
  std::unique_ptr<std::uint8_t, FreeDeleter> pool_;
  std::vector<std::int32_t> table_;
  std::vector<float> residual_;
  int length_ = 0;
};

namespace detail {
/// The largest power of two up to 64 that divides HeadDim: the default value group.
constexpr int default_value_group(int head_dim) {
  int g = 64;
  while (g > 1 && head_dim % g != 0) g /= 2;
  return g;
}
}  // namespace detail

/// The short form: KeyBits-bit keys grouped per channel over 32 tokens, ValueBits-bit values grouped
/// per token over 64 channels, asymmetric, fp16 scales and zeros, pages of 64 tokens, and any
/// accuracy options: skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>.
template <int KeyBits, int ValueBits, int HeadDim = 128, class... Opts>
using KVCache = BasicKVCache<Quantizer<KeyBits, 32, Axis::Channel>,
                             Quantizer<ValueBits, detail::default_value_group(HeadDim), Axis::Token>, HeadDim, 64, 0,
                             Options<Opts...>>;

}  // namespace skv
