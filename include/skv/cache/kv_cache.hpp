// skv/cache/kv_cache.hpp: the owning host cache of one sequence, and the short form KVCache<K, V>.
//
//   skv::KVCache<4, 2> cache(num_kv_heads, max_tokens);   // 4-bit keys, 2-bit values
//   cache.append(k, v, n);                                 // [n][num_kv_heads][head_dim]
//   skv::cpu::decode_attention(cache, q, num_q_heads, out);
//
// The cache allocates all of its pages up front (capacity never moves memory) and is a thin owner
// around a SequenceView: everything it does, an engine can do on its own memory through the view.
//
// A sliding-window cache (skv::Retention::window) keeps only the pages that attention over the last
// `window` tokens can still read: pages lying wholly before the window are handed back and reused,
// so a stream of any length holds at most ceil((window + max_chunk - 1) / PageSize) + 1 pages
// (ceil(window / PageSize) + 2 for the default max_chunk of one page), one page fewer when a page is
// one key group (PageSize == kBlockTokens: the quantized tokens then always end on a page boundary),
// and never fewer than two. Attention on it uses the
// window (attention/decode.hpp, attention/prefill.hpp); a chunk of more than max_chunk queries may find the first
// queries' tokens handed back (an skv::Error), so attend to long prompts in chunks of max_chunk.
#pragma once

#include <algorithm>
#include <cmath>
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
#include <skv/numeric/simd.hpp>
#include <skv/quant/quantizer.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {

/// What an owning cache keeps besides its tokens, chosen at run time.
struct Retention {
  /// Sliding window: attention reads the last `window` tokens (0: every token) and the pages lying
  /// wholly before them are reused, so the cache holds at most ceil((window + max_chunk - 1) / PageSize)
  /// + 1 pages whatever the stream's length (no + 1 when PageSize is one key group).
  int window = 0;
  /// Query tokens per chunk that a window cache can attend after appending them (0: one page).
  /// Attend to longer prompts chunk by chunk.
  int max_chunk = 0;
  /// Tokens truncate() can always take back (rejected draft tokens), beyond the Residual + 32 the
  /// ring holds anyway: the cache keeps the full-precision copies of that many more tokens.
  int rollback = 0;
};

/// A quantized KV cache for one sequence, every parameter fixed at compile time.
///   KeyQ, ValueQ  skv::Quantizer types for keys and values (any bits, group, axis, scheme)
///   HeadDim       elements per head
///   PageSize      tokens per page (a power of two, a multiple of every Channel-axis group)
///   Residual      extra recent tokens kept in full precision beyond the incomplete block
///   Opts          skv::Options<...>: RotateKeys, RotateValues, Sinks<N>, ClipKeys, ClipValues, Fp16Ring,
///                 Int8Ring, PreRopeKeys (set_rope_frequencies before the first append)
///                 (cache/options.hpp)
template <class KeyQ, class ValueQ, int HeadDim = 128, int PageSize = 64, int Residual = 0, class Opts = Options<>>
class BasicKVCache {
 public:
  using Layout = CacheLayout<KeyQ, ValueQ, HeadDim, PageSize, Residual, Opts>;
  using View = SequenceView<Layout>;
  using Full = typename Layout::FullPrecision;  ///< element of the ring, the sinks and the history
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

  BasicKVCache(int num_kv_heads, int max_tokens) : BasicKVCache(num_kv_heads, max_tokens, Retention{}) {}

  /// A cache with a sliding window and / or rollback depth (skv::Retention): attention reads the
  /// last keep.window tokens and the pages before them are reused, so memory is bounded by the
  /// window, not by max_tokens (which may then be INT_MAX: a stream of any length); truncate() can
  /// always take back keep.rollback tokens.
  BasicKVCache(int num_kv_heads, int max_tokens, const Retention& keep)
      : num_kv_heads_(num_kv_heads), max_tokens_(max_tokens), keep_(keep) {
    detail::require(num_kv_heads > 0, "the cache needs at least one KV head (num_kv_heads = " +
                                          std::to_string(num_kv_heads) + ")");
    detail::require(max_tokens >= 0, "max_tokens must not be negative (" + std::to_string(max_tokens) + ")");
    detail::require(keep.window >= 0, "the window must not be negative (" + std::to_string(keep.window) +
                                          "; 0 attends to every token)");
    detail::require(keep.max_chunk >= 0, "max_chunk must not be negative (" + std::to_string(keep.max_chunk) + ")");
    detail::require(keep.rollback >= 0 && keep.rollback <= (1 << 20),
                    "rollback must be between 0 and 2^20 tokens (" + std::to_string(keep.rollback) + ")");
    if (keep_.max_chunk == 0) keep_.max_chunk = PageSize;
    const int paged = max_tokens > Layout::kSinkTokens ? max_tokens - Layout::kSinkTokens : 0;
    num_pages_ = paged / PageSize + (paged % PageSize != 0);
    if (keep_.window > 0) {
      // the pages the queries of one chunk can read: see the file comment
      // the first query of a chunk reads tokens from (its position - window + 1) on: window + max_chunk - 1
      // tokens back to the last, whose pages are one more when the last page may be partly filled; at
      // least two, so that a long append advances a page at a time (append_impl's pieces)
      const long long span = static_cast<long long>(keep_.window) + keep_.max_chunk - 1;
      const long long ring =
          std::max(2LL, (span + PageSize - 1) / PageSize + (PageSize == Layout::kBlockTokens ? 0 : 1));
      if (ring < num_pages_) num_pages_ = static_cast<int>(ring);
    }
    // validated in 64 bits before anything is allocated (both products fit: int * 2^24 at most)
    const std::size_t page_bytes = Layout::page_bytes(num_kv_heads);
    const std::size_t elements = Layout::residual_elements(num_kv_heads);
    detail::require(page_bytes <= kMaxReservedBytes / (num_pages_ + 1) &&
                        elements <= kMaxReservedBytes / sizeof(Full) - page_bytes * num_pages_ / sizeof(Full),
                    "a cache of " + std::to_string(num_kv_heads) + " KV heads and " + std::to_string(max_tokens) +
                        " tokens would reserve more than 2^40 bytes");
    pool_bytes_ = page_bytes * num_pages_;
    try {
      // never null, even without pages (a cache of sink tokens only): views need a valid base
      pool_.reset(static_cast<std::uint8_t*>(std::calloc(pool_bytes_ + 64, 1)));
      detail::require(pool_ != nullptr, "out of memory allocating " + std::to_string(pool_bytes_) + " bytes");
      table_.resize(static_cast<std::size_t>(num_pages_) + 1);  // +1: never empty, so data() is never null
      residual_.assign(elements, Full{});
      history_.assign(2 * static_cast<std::size_t>(history_slots()) * ring_token_elements(), Full{});
    } catch (const std::bad_alloc&) {
      throw Error("out of memory allocating a cache of " + std::to_string(num_kv_heads) + " KV heads and " +
                  std::to_string(max_tokens) + " tokens");
    }
    for (int p = 0; p < num_pages_; ++p) table_[p] = p;
  }

  BasicKVCache(const BasicKVCache& other) : BasicKVCache(other.num_kv_heads_, other.max_tokens_, other.keep_) {
    if (pool_bytes_) std::memcpy(pool_.get(), other.pool_.get(), pool_bytes_);
    residual_ = other.residual_;
    history_ = other.history_;
    table_ = other.table_;
    first_page_ = other.first_page_;
    rope_freq_ = other.rope_freq_;
    ring_from_ = other.ring_from_;
    history_from_ = other.history_from_;
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

  /// Options<PreRopeKeys>: the model's rotary frequencies, HeadDim / 2 floats (its inv_freq, any rope
  /// scaling folded in), by which keys are turned back before they are stored and forward when they
  /// are read. Required before the first append; an empty cache only (the stored keys depend on them).
  void set_rope_frequencies(const float* inv_freq) {
    static_assert(Layout::kPreRopeKeys, "skv: set_rope_frequencies is for caches with Options<PreRopeKeys>");
    detail::require(inv_freq != nullptr, "set_rope_frequencies: the frequencies must not be null");
    detail::require(length_ == 0, "set_rope_frequencies: the cache holds " + std::to_string(length_) +
                                      " tokens stored with the earlier frequencies; clear() it first");
    for (int i = 0; i < HeadDim / 2; ++i)
      detail::require(std::isfinite(inv_freq[i]), "set_rope_frequencies: frequency " + std::to_string(i) +
                                                      " is not finite");
    rope_freq_.assign(inv_freq, inv_freq + HeadDim / 2);
  }
  /// The rotary frequencies (empty until set_rope_frequencies).
  const std::vector<float>& rope_frequencies() const { return rope_freq_; }

  /// Forgets every token (memory stays allocated).
  void clear() {
    length_ = 0;
    first_page_ = 0;
    ring_from_ = 0;
    history_from_ = 0;
  }

  /// Forgets the tokens after the first n: rejected draft tokens of speculative decoding, a rewound
  /// conversation. Quantized blocks are never re-quantized, so a block that completed after token n
  /// is taken back from the tokens' full-precision copies: the ring still holds the last Residual + 32 tokens,
  /// and Retention::rollback keeps that many more (also of a long append, whose blocks are quantized
  /// straight from its input). Throws skv::Error, changing nothing, when a copy is gone (a rollback
  /// deeper than that) or, in a window cache, when the pages of the window at n were handed back.
  /// Afterwards the cache holds exactly what appending its first n tokens gives.
  void truncate(int n) {
    const std::string why = truncate_error(n);
    detail::require(why.empty(), why);
    const int from = std::min(n, Layout::residual_begin(n));
    const View v = view();
    for (int t = std::max(from, Layout::kSinkTokens); t < std::min(n, ring_from_); ++t)
      for (int h = 0; h < num_kv_heads_; ++h) {  // back from the history into the ring
        std::memcpy(v.residual_key(t, h), history_key(t, h), Layout::Ring::kBytes);
        std::memcpy(v.residual_value(t, h), history_value(t, h), Layout::Ring::kBytes);
      }
    ring_from_ = std::min(ring_from_, std::max(from, Layout::kSinkTokens));
    ring_from_ = std::min(ring_from_, n);
    history_from_ = std::min(history_from_, ring_from_);
    length_ = n;
  }

  /// Whether truncate(n) would succeed: a batch of caches (one per sequence) checks every row
  /// before it truncates any, so that a refused rollback changes none of them.
  bool can_truncate(int n) const { return truncate_error(n).empty(); }

  int size() const { return length_; }
  int capacity() const { return max_tokens_; }
  int num_kv_heads() const { return num_kv_heads_; }
  /// What the cache keeps: its sliding window (0: attention reads every token), the longest chunk of
  /// queries that window serves, and the rollback depth.
  const Retention& retention() const { return keep_; }
  int window() const { return keep_.window; }
  /// Tokens kept as sinks / stored quantized / still in the full-precision residual window.
  int sink_size() const { return Layout::sink_length(length_); }
  int quantized_size() const { return Layout::quantized_length(length_); }
  int residual_size() const { return length_ - Layout::residual_begin(length_); }

  /// Bytes holding cached tokens now: the pages in use (not those handed back by a window), the
  /// full-precision area (ring and sinks) and the rollback history.
  std::size_t memory_bytes() const {
    const int q = quantized_size();
    const int pages = q == 0 ? 0 : (q - 1) / PageSize + 1 - first_page_;
    return static_cast<std::size_t>(pages) * Layout::page_bytes(num_kv_heads_) + full_bytes();
  }
  /// Bytes reserved for max_tokens: every page, the full-precision area and the rollback history.
  std::size_t reserved_bytes() const { return pool_bytes_ + full_bytes(); }

  /// A view of this cache (valid while the cache lives and is not moved). Read it for attention;
  /// to append through it, call skv::append on a copy and the cache's own size will not follow.
  View view() const {
    View v;
    v.pages = pool_.get();
    v.block_table = table_.data();
    v.residual = const_cast<Full*>(residual_.data());
    v.num_pages = num_pages_;
    v.max_pages = num_pages_;
    v.num_kv_heads = num_kv_heads_;
    v.length = length_;
    v.first_page = first_page_;
    v.rope_freq = rope_freq_.empty() ? nullptr : rope_freq_.data();
    return v;
  }

 private:
  struct FreeDeleter {
    void operator()(std::uint8_t* p) const { std::free(p); }
  };

  std::size_t full_bytes() const { return (residual_.size() + history_.size()) * sizeof(Full); }
  /// Elements of one input token (every head), and of its rows in the ring or the history.
  std::size_t token_elements() const { return static_cast<std::size_t>(num_kv_heads_) * HeadDim; }
  std::size_t ring_token_elements() const { return static_cast<std::size_t>(num_kv_heads_) * Layout::kRingRow; }
  /// Tokens the history holds: rollback, plus one block, since after a long append the ring holds
  /// only Residual tokens past its last quantized block.
  int history_slots() const { return keep_.rollback > 0 ? keep_.rollback + Layout::kBlockTokens : 0; }
  /// The history's copy of token t (t >= kSinkTokens), in slot (t - kSinkTokens) % rollback.
  Full* history_key(int t, int h) {
    return history_.data() +
           (static_cast<std::size_t>((t - Layout::kSinkTokens) % history_slots()) * num_kv_heads_ + h) *
               Layout::kRingRow;
  }
  Full* history_value(int t, int h) {
    return history_key(t, h) + static_cast<std::size_t>(history_slots()) * ring_token_elements();
  }

  template <class T>
  void append_impl(const T* k, const T* v, int n, const AppendOptions& opt) {
    detail::require(n >= 0, "cannot append a negative number of tokens (" + std::to_string(n) + ")");
    detail::require(n <= max_tokens_ - length_, "append of " + std::to_string(n) + " tokens past capacity (" +
                                                    std::to_string(length_) + " of " + std::to_string(max_tokens_) +
                                                    " tokens used)");
    detail::resolve_threads(opt.num_threads, "append");  // a bad count is an error even for no tokens
    if (n == 0) return;
    const int pages_needed = pages_through(length_ + n) - first_page_;
    if (pages_needed <= num_pages_) {  // the common case: the pages held suffice
      append_piece(k, v, n, opt);
      return;
    }
    // a window cache reuses the pages of its oldest tokens; if anything fails, the cache is put back
    // as it was (the pages handed back to this append were overwritten, so they are saved first)
    const int piece = (num_pages_ - 1) * PageSize;  // a piece never spans more than num_pages_ pages
    const bool whole = n > piece;
    const int saved = whole ? num_pages_ : std::min(num_pages_, pages_needed - num_pages_);
    const std::size_t page_bytes = Layout::page_bytes(num_kv_heads_);
    std::vector<std::uint8_t> pages(static_cast<std::size_t>(saved) * page_bytes);
    for (int i = 0; i < saved; ++i)
      std::memcpy(pages.data() + i * page_bytes, pool_.get() + static_cast<std::size_t>(table_[i]) * page_bytes,
                  page_bytes);
    const std::vector<std::int32_t> table = table_;
    const std::vector<Full> ring = whole ? residual_ : std::vector<Full>(), history = whole ? history_ : ring;
    const int first_page = first_page_, length = length_, ring_from = ring_from_, history_from = history_from_;
    try {
      for (int done = 0; done < n;) {
        const int m = std::min(piece, n - done);
        hand_back(pages_through(length_ + m) - first_page_ - num_pages_);
        append_piece(k + done * token_elements(), v + done * token_elements(), m, opt);
        done += m;
      }
    } catch (...) {
      for (int i = 0; i < saved; ++i)
        std::memcpy(pool_.get() + static_cast<std::size_t>(table[i]) * page_bytes, pages.data() + i * page_bytes,
                    page_bytes);
      table_ = table;
      if (whole) {
        residual_ = ring;
        history_ = history;
      }
      first_page_ = first_page;
      length_ = length;
      ring_from_ = ring_from;
      history_from_ = history_from;
      throw;
    }
  }

  /// Logical pages a sequence of `length` tokens has written (pages [0, pages_through)).
  static int pages_through(int length) {
    const int q = Layout::quantized_length(length);
    return q / PageSize + (q % PageSize != 0);
  }

  /// Hands the `count` oldest held pages back to the end of the table (a window cache).
  void hand_back(int count) {
    if (count <= 0) return;
    std::rotate(table_.begin(), table_.begin() + count, table_.begin() + num_pages_);
    first_page_ += count;
  }

  /// Why truncate(n) cannot be done, or "" when it can.
  std::string truncate_error(int n) const {
    if (n < 0 || n > length_)
      return "truncate to " + std::to_string(n) + " tokens: the cache holds " + std::to_string(length_);
    // tokens [from, n) are in the ring at length n: each must be in the ring now or in the history
    const int from = std::min(n, Layout::residual_begin(n));
    if (from < history_from_ && from >= Layout::kSinkTokens)
      return "cannot truncate to " + std::to_string(n) + " tokens: tokens from " + std::to_string(from) +
             " were quantized, and their full-precision copies start at token " + std::to_string(history_from_) +
             " (the ring holds Residual + 32 tokens, Retention::rollback more)";
    if (first_page_ > 0) {  // the next query (position n) reads from n - window + 1 on
      const long long j = static_cast<long long>(n) - keep_.window + 1 - Layout::kSinkTokens;
      if (j < static_cast<long long>(first_page_) * PageSize)
        return "cannot truncate to " + std::to_string(n) + " tokens: the window cache has handed back the "
               "pages of tokens before " + std::to_string(Layout::kSinkTokens + first_page_ * PageSize);
    }
    return {};
  }

  /// One skv::append whose pages are all held. Keeps the full-precision copies truncate() needs: the ring
  /// holds tokens [ring_from_, length) (and the sinks), the history tokens [history_from_, ring_from_).
  template <class T>
  void append_piece(const T* k, const T* v, int n, const AppendOptions& opt) {
    constexpr int kSinks = Layout::kSinkTokens, kCap = Layout::kResidualCapacity;
    const int t0 = length_, t_end = length_ + n;
    const int q_after = Layout::quantized_length(t_end);
    // blocks quantized straight from the input, or a chunk longer than the ring, leave no
    // contiguous full-precision copies behind the ring
    const bool gap = detail::first_direct_block<Layout>(t0, t_end) < q_after || t_end - kCap > t0;
    // tokens this append pushes out of the ring that the history keeps (copied before the ring is
    // written, stored once the append succeeded)
    const int ring_after = std::max(ring_from_, t_end - kCap);
    const int keep_from = std::max({ring_from_, ring_after - history_slots(), kSinks});
    const int kept = gap ? 0 : std::max(0, ring_after - keep_from);
    std::vector<Full> out(2 * static_cast<std::size_t>(kept) * ring_token_elements());
    View v_ = view();
    const auto row = [&](int i, int h) {
      return (static_cast<std::size_t>(i) * num_kv_heads_ + h) * Layout::kRingRow;
    };
    constexpr std::size_t kRowBytes = Layout::Ring::kBytes;
    for (int i = 0; i < kept; ++i)
      for (int h = 0; h < num_kv_heads_; ++h) {
        std::memcpy(out.data() + row(i, h), v_.residual_key(keep_from + i, h), kRowBytes);
        std::memcpy(out.data() + row(kept + i, h), v_.residual_value(keep_from + i, h), kRowBytes);
      }
    skv::append(v_, k, v, n, opt);
    length_ = v_.length;
    if (gap) {
      // the ring holds the tail; the history takes the full-precision copies of the `rollback` input tokens
      // before it straight from the input (rotated as the ring stores them)
      ring_from_ = std::max(ring_after, kSinks + q_after);
      history_from_ = std::max({kSinks, t0, ring_from_ - history_slots()});
      for (int t = history_from_; t < ring_from_; ++t)
        for (int h = 0; h < num_kv_heads_; ++h) {
          const std::size_t at = static_cast<std::size_t>(t - t0) * token_elements() + static_cast<std::size_t>(h) * HeadDim;
          detail::stored_row<Layout, true>(k + at, history_key(t, h), t, v_.rope_freq);
          detail::stored_row<Layout, false>(v + at, history_value(t, h), t, v_.rope_freq);
        }
      return;
    }
    for (int i = 0; i < kept; ++i)
      for (int h = 0; h < num_kv_heads_; ++h) {
        std::memcpy(history_key(keep_from + i, h), out.data() + row(i, h), kRowBytes);
        std::memcpy(history_value(keep_from + i, h), out.data() + row(kept + i, h), kRowBytes);
      }
    ring_from_ = ring_after;
    history_from_ = std::max(history_from_, ring_after - history_slots());
  }

  int num_kv_heads_;
  int max_tokens_;
  Retention keep_;
  int first_page_ = 0;    ///< logical page of table_[0]: the pages before it were handed back
  int ring_from_ = 0;     ///< the ring holds the full-precision copies of tokens [ring_from_, length_)
  int history_from_ = 0;  ///< the history holds tokens [history_from_, ring_from_)
  int num_pages_ = 0;
  std::size_t pool_bytes_ = 0;
  std::unique_ptr<std::uint8_t, FreeDeleter> pool_;
  std::vector<std::int32_t> table_;
  std::vector<Full> residual_;
  std::vector<Full> history_;  ///< [2][history_slots()][num_kv_heads][kRingRow]: keys, then values
  std::vector<float> rope_freq_;  ///< PreRopeKeys: HeadDim / 2 rotary frequencies
  int length_ = 0;
};

namespace detail {
/// The attention options for `cache` (DecodeOptions or PrefillOptions): a window cache attends with
/// its window, or with a narrower one the call asks for.
template <class Cache, class Opt>
Opt with_cache_window(const Cache& cache, Opt opt) {
  if (cache.window() > 0) {
    require(opt.window <= cache.window(), "attention with a window of " + std::to_string(opt.window) +
                                              " tokens over a cache that keeps a window of " +
                                              std::to_string(cache.window()));
    if (opt.window == 0) opt.window = cache.window();
  }
  return opt;
}

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
