// skv/attention/detail/walk.hpp: the walk over one KV head's tokens in the order a sequence view
// stores them (host only, not public API): full-precision sinks, quantized pages, the
// full-precision ring. Decode and prefill both walk with it; what runs per tile is theirs.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <skv/cache/view.hpp>

namespace skv {
namespace cpu {
namespace detail {

/// Asks for `bytes` from p into L1 (locality 3) or L2 (locality 2), one request per 64-byte line.
template <int Locality = 3>
inline void prefetch_block(const std::uint8_t* p, std::size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  for (std::size_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, Locality);
#else
  (void)p;
  (void)bytes;
#endif
}

/// Visits tokens [begin, end) of a sequence in storage order: sinks in tiles of at most Tile tokens
/// (full(t, n, true)), then the quantized indices [j, jend) in one call quantized(j, jend) (index j
/// is token kSinkTokens + j), then ring tokens in tiles of at most Tile (full(t, n, false)).
template <int Tile, class Layout, class Full, class Quantized>
void walk_tokens(const SequenceView<Layout>& view, int begin, int end, Full&& full, Quantized&& quantized) {
  constexpr int kSinks = Layout::kSinkTokens;
  int t = begin;
  for (const int e = std::min(end, view.sink_length()); t < e;) {
    const int n = std::min(Tile, e - t);
    full(t, n, true);
    t += n;
  }
  const int j = t - kSinks;
  const int jend = std::min(end - kSinks, view.quantized_length());
  if (j < jend) {
    quantized(j, jend);
    t = kSinks + jend;
  }
  while (t < end) {
    const int n = std::min(Tile, end - t);
    full(t, n, false);
    t += n;
  }
}

/// Cuts quantized indices [j, jend) of KV head h into tiles that never cross a multiple of Tile (so
/// never a page or a Channel-axis group) and calls tile(j, n) for each. A page's block of this head
/// is contiguous and the next page's is elsewhere in the pool, so it is fetched one page ahead (the
/// hardware prefetcher would restart at every page), spread over the page's tiles so that the
/// requests do not arrive in one burst.
template <int Tile, class Layout, class TileFn>
void walk_quantized_tiles(const SequenceView<Layout>& view, int h, int j, int jend, TileFn&& tile) {
  constexpr int kPage = Layout::kPageSize;
  prefetch_block(view.head_block(j, h), Layout::kHeadBytes);
  while (j < jend) {
    const int n = std::min(Tile - j % Tile, jend - j);
    if (j + kPage < jend) {
      constexpr std::size_t kPart = (Layout::kHeadBytes / (kPage / Tile) + 63) / 64 * 64;
      const std::size_t off = static_cast<std::size_t>((j % kPage) / Tile) * kPart;
      if (off < Layout::kHeadBytes)
        prefetch_block(view.head_block(j + kPage, h) + off, std::min(kPart, Layout::kHeadBytes - off));
    }
    tile(j, n);
    j += n;
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
