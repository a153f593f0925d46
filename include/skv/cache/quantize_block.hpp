// skv/cache/quantize_block.hpp: quantizes a block of full-precision tokens into a page, once.
//
// This defines the bytes a cache holds: the CPU cache calls it, and the GPU append kernel must
// produce the same bytes (tests/cuda checks it). Metadata is fitted first and written, then every
// code is encoded from the stored (rounded) parameters, so encoding and decoding agree exactly.
#pragma once

#include <cstddef>
#include <cstdint>

#include <skv/cache/layout.hpp>
#include <skv/config.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {

/// Quantizes `rows` tokens, x[r * row_stride + c] for r < rows and c < HeadDim, into page slots
/// [slot0, slot0 + rows) of the tensor block at `block`. `rows` and `slot0` must be multiples of
/// Q::kTokenExtent. With Clip, each group's parameters come from Quantizer::fit_clipped; a codebook
/// (Scheme::LloydMax) fits each group with Quantizer::fit_codebook.
template <class Q, int HeadDim, int PageSize, bool Clip = false>
SKV_HOST_DEVICE void quantize_rows(const float* x, std::size_t row_stride, int rows, int slot0, std::uint8_t* block) {
  using TL = TensorLayout<Q, HeadDim, PageSize>;
  using Scale = typename Q::Scale;
  constexpr int G = Q::kGroupSize;
  auto* scales = reinterpret_cast<Scale*>(block + TL::kScaleOffset);
  auto* zeros = reinterpret_cast<Scale*>(block + TL::kZeroOffset);

  auto store = [&](int meta, typename Q::Stored s) {
    scales[meta] = s.scale;
    if (Q::kHasZero) zeros[meta] = s.zero;
  };
  if constexpr (Q::kAxis == Axis::Channel) {
    for (int g = 0; g < rows / G; ++g) {
      for (int c = 0; c < HeadDim; ++c) {
        const float* col = x + static_cast<std::size_t>(g) * G * row_stride + c;
        float mn = col[0], mx = col[0];
        for (int i = 1; i < G; ++i) {
          mn = detail::min_of(mn, col[i * row_stride]);
          mx = detail::max_of(mx, col[i * row_stride]);
        }
        store(TL::meta_index(slot0 + g * G, c), Clip ? Q::fit_clipped(col, row_stride, mn, mx) : Q::fit(mn, mx));
      }
    }
  } else if constexpr (Q::kCodebook) {
    for (int t = 0; t < rows; ++t)
      for (int j = 0; j < HeadDim / G; ++j)
        store(TL::meta_index(slot0 + t, j * G),
              Q::fit_codebook(x + static_cast<std::size_t>(t) * row_stride + j * G, 1));
  } else {
    for (int t = 0; t < rows; ++t) {
      for (int j = 0; j < HeadDim / G; ++j) {
        const float* grp = x + static_cast<std::size_t>(t) * row_stride + j * G;
        float mn = grp[0], mx = grp[0];
        for (int i = 1; i < G; ++i) {
          mn = detail::min_of(mn, grp[i]);
          mx = detail::max_of(mx, grp[i]);
        }
        store(TL::meta_index(slot0 + t, j * G), Clip ? Q::fit_clipped(grp, 1, mn, mx) : Q::fit(mn, mx));
      }
    }
  }

  std::uint8_t codes[HeadDim];
  for (int t = 0; t < rows; ++t) {
    const int slot = slot0 + t;
    const float* row = x + static_cast<std::size_t>(t) * row_stride;
    for (int c = 0; c < HeadDim; ++c) {
      const int m = TL::meta_index(slot, c);
      codes[c] = static_cast<std::uint8_t>(Q::encode(row[c], Q::params(scales[m], Q::kHasZero ? zeros[m] : Scale{})));
    }
    pack_codes<Q::kBits>(codes, HeadDim, block + static_cast<std::size_t>(slot) * TL::kRowBytes);
  }
}

/// Quantizes quantized indices [first, first + kBlockTokens) of a sequence (tokens kSinkTokens +
/// first, ...) from its residual ring into its page, for every KV head. `first` must be a multiple
/// of kBlockTokens.
template <class Layout, class View>
SKV_HOST_DEVICE void quantize_block(const View& view, int first) {
  static_assert(Layout::kFloatRing, "skv::quantize_block reads a float ring: an Fp16Ring or Int8Ring layout (host "
                                    "only) quantizes with quantize_block_fast");
  const std::size_t stride = static_cast<std::size_t>(view.num_kv_heads) * Layout::kHeadDim;
  const int slot0 = first % Layout::kPageSize;
  const int token = Layout::kSinkTokens + first;
  for (int h = 0; h < view.num_kv_heads; ++h) {
    std::uint8_t* block = view.head_block(first, h);
    quantize_rows<typename Layout::KeyQuantizer, Layout::kHeadDim, Layout::kPageSize, Layout::kClipKeys>(
        view.residual_key(token, h), stride, Layout::kBlockTokens, slot0, block);
    quantize_rows<typename Layout::ValueQuantizer, Layout::kHeadDim, Layout::kPageSize, Layout::kClipValues>(
        view.residual_value(token, h), stride, Layout::kBlockTokens, slot0, block + Layout::Keys::kBytes);
  }
}

}  // namespace skv
