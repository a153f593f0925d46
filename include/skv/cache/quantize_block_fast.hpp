// skv/cache/quantize_block_fast.hpp: the vectorized block quantizer used by the host append.
//
// Writes exactly the bytes of skv::quantize_rows (cache/quantize_block.hpp), which stays the
// definition: the same Quantizer::fit per group, then every code from the stored parameters with
// the same float operations (x / scale, + 0.5, floor, + zero, clamp), only many lanes at a time.
// Min / max may differ from the scalar loop in the sign of a zero, which fit() never sees
// (tests/host/test_cpu_fast.cpp compares the bytes for every width, axis, scheme and scale type).
// Codes are packed eight at a time into Bits bytes by folding a 64-bit word.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <skv/attention/cpu_simd.hpp>
#include <skv/cache/layout.hpp>
#include <skv/config.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {
namespace detail {

/// codes[c] = Quantizer::encode(x[c], {s[c], z[c]}) for c < n, lane by lane.
inline void encode_row(const float* SKV_RESTRICT x, const float* SKV_RESTRICT s, const float* SKV_RESTRICT z, int n,
                       float max_code, std::uint8_t* SKV_RESTRICT codes) {
  int c = 0;
#if defined(SKV_HAS_AVX512)
  const __m512 half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps(), top = _mm512_set1_ps(max_code);
  for (; c + 16 <= n; c += 16) {
    const __m512 sc = _mm512_loadu_ps(s + c), zc = _mm512_loadu_ps(z + c);
    __m512 q = _mm512_add_ps(_mm512_div_ps(_mm512_loadu_ps(x + c), sc), half);
    q = _mm512_add_ps(_mm512_roundscale_ps(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), zc);
    q = _mm512_min_ps(_mm512_max_ps(q, zero), top);
    q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sc, zero, _CMP_EQ_OQ), q, zc);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + c), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
  }
#elif defined(SKV_HAS_AVX2)
  const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps(), top = _mm256_set1_ps(max_code);
  for (; c + 8 <= n; c += 8) {
    const __m256 sc = _mm256_loadu_ps(s + c), zc = _mm256_loadu_ps(z + c);
    __m256 q = _mm256_add_ps(_mm256_div_ps(_mm256_loadu_ps(x + c), sc), half);
    q = _mm256_add_ps(_mm256_floor_ps(q), zc);
    q = _mm256_min_ps(_mm256_max_ps(q, zero), top);
    q = _mm256_blendv_ps(q, zc, _mm256_cmp_ps(sc, zero, _CMP_EQ_OQ));
    const __m256i i32 = _mm256_cvttps_epi32(q);
    const __m128i i16 = _mm_packus_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + c), _mm_packus_epi16(i16, i16));
  }
#endif
  for (; c < n; ++c) {
    if (s[c] == 0.0f) {
      codes[c] = static_cast<std::uint8_t>(z[c]);
      continue;
    }
    const float q = round_half_up(x[c] / s[c]) + z[c];
    codes[c] = static_cast<std::uint8_t>(clamp_to(q, 0.0f, max_code));
  }
}

/// Packs n codes (n a multiple of 8, each below 2^Bits) like skv::pack_codes, eight at a time.
template <int Bits>
inline void pack_row(const std::uint8_t* SKV_RESTRICT codes, int n, std::uint8_t* SKV_RESTRICT out) {
  for (int i = 0; i < n; i += 8) {
    std::uint64_t v = 0;
    for (int j = 0; j < 8; ++j) v |= static_cast<std::uint64_t>(codes[i + j]) << (8 * j);
    if (Bits < 8) {
      // 8 bytes of Bits bits -> 4 x 2*Bits -> 2 x 4*Bits -> 8*Bits contiguous bits
      v = (v & 0x00FF00FF00FF00FFull) | ((v >> 8) & 0x00FF00FF00FF00FFull) << Bits;
      v = (v & 0x0000FFFF0000FFFFull) | ((v >> 16) & 0x0000FFFF0000FFFFull) << (2 * Bits);
      v = (v & 0x00000000FFFFFFFFull) | (v >> 32) << (4 * Bits);
    }
    std::uint8_t* o = out + (i / 8) * Bits;
    for (int b = 0; b < Bits; ++b) o[b] = static_cast<std::uint8_t>(v >> (8 * b));
  }
}

}  // namespace detail

/// Same contract and bytes as skv::quantize_rows, vectorized (host only).
template <class Q, int HeadDim, int PageSize>
void quantize_rows_fast(const float* x, std::size_t row_stride, int rows, int slot0, std::uint8_t* block) {
  using TL = TensorLayout<Q, HeadDim, PageSize>;
  using Scale = typename Q::Scale;
  using cpu::detail::Vec;
  using cpu::detail::kVecWidth;
  constexpr int G = Q::kGroupSize;
  constexpr float kMaxCode = static_cast<float>(Q::kMaxCode);
  auto* scales = reinterpret_cast<Scale*>(block + TL::kScaleOffset);
  auto* zeros = reinterpret_cast<Scale*>(block + TL::kZeroOffset);
  float s[HeadDim], z[HeadDim];
  std::uint8_t codes[HeadDim];

  auto store = [&](int meta, typename Q::Stored st, float* sp, float* zp) {
    scales[meta] = st.scale;
    if (Q::kHasZero) zeros[meta] = st.zero;
    const typename Q::Params p = Q::params(st);
    *sp = p.scale;
    *zp = p.zero;
  };
  auto encode_pack = [&](const float* row, int slot) {
    detail::encode_row(row, s, z, HeadDim, kMaxCode, codes);
    detail::pack_row<Q::kBits>(codes, HeadDim, block + static_cast<std::size_t>(slot) * TL::kRowBytes);
  };

  if (Q::kAxis == Axis::Channel) {
    float mn[HeadDim], mx[HeadDim];
    for (int g = 0; g < rows / G; ++g) {
      const float* base = x + static_cast<std::size_t>(g) * G * row_stride;
      int c = 0;
      for (; c + kVecWidth <= HeadDim; c += kVecWidth) {
        Vec lo = cpu::detail::vload(base + c), hi = lo;
        for (int i = 1; i < G; ++i) {
          const Vec v = cpu::detail::vload(base + i * row_stride + c);
          lo = cpu::detail::vmin(lo, v);
          hi = cpu::detail::vmax(hi, v);
        }
        cpu::detail::vstore(mn + c, lo);
        cpu::detail::vstore(mx + c, hi);
      }
      for (; c < HeadDim; ++c) {
        float lo = base[c], hi = base[c];
        for (int i = 1; i < G; ++i) {
          lo = skv::detail::min_of(lo, base[i * row_stride + c]);
          hi = skv::detail::max_of(hi, base[i * row_stride + c]);
        }
        mn[c] = lo;
        mx[c] = hi;
      }
      for (c = 0; c < HeadDim; ++c) store(TL::meta_index(slot0 + g * G, c), Q::fit(mn[c], mx[c]), s + c, z + c);
      for (int i = 0; i < G; ++i) encode_pack(base + i * row_stride, slot0 + g * G + i);
    }
  } else {
    for (int t = 0; t < rows; ++t) {
      const float* row = x + static_cast<std::size_t>(t) * row_stride;
      for (int j = 0; j < HeadDim / G; ++j) {
        const float* grp = row + j * G;
        float lo = grp[0], hi = grp[0];
        int i = 0;
        if (G >= kVecWidth) {
          Vec vlo = cpu::detail::vload(grp), vhi = vlo;
          for (i = kVecWidth; i + kVecWidth <= G; i += kVecWidth) {
            vlo = cpu::detail::vmin(vlo, cpu::detail::vload(grp + i));
            vhi = cpu::detail::vmax(vhi, cpu::detail::vload(grp + i));
          }
          lo = cpu::detail::vhmin(vlo);
          hi = cpu::detail::vhmax(vhi);
        }
        for (; i < G; ++i) {
          lo = skv::detail::min_of(lo, grp[i]);
          hi = skv::detail::max_of(hi, grp[i]);
        }
        store(TL::meta_index(slot0 + t, j * G), Q::fit(lo, hi), s + j * G, z + j * G);
        for (int c = j * G + 1; c < (j + 1) * G; ++c) {
          s[c] = s[j * G];
          z[c] = z[j * G];
        }
      }
      encode_pack(row, slot0 + t);
    }
  }
}

/// Same as skv::quantize_block (every KV head of block [first, first + kBlockTokens)), vectorized.
template <class Layout, class View>
void quantize_block_fast(const View& view, int first) {
  const std::size_t stride = static_cast<std::size_t>(view.num_kv_heads) * Layout::kHeadDim;
  const int slot0 = first % Layout::kPageSize;
  for (int h = 0; h < view.num_kv_heads; ++h) {
    std::uint8_t* block = view.head_block(first, h);
    quantize_rows_fast<typename Layout::KeyQuantizer, Layout::kHeadDim, Layout::kPageSize>(
        view.residual_key(first, h), stride, Layout::kBlockTokens, slot0, block);
    quantize_rows_fast<typename Layout::ValueQuantizer, Layout::kHeadDim, Layout::kPageSize>(
        view.residual_value(first, h), stride, Layout::kBlockTokens, slot0, block + Layout::Keys::kBytes);
  }
}

}  // namespace skv
