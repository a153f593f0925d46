// skv/cache/quantize_block_fast.hpp: the vectorized block quantizer used by the host append.
//
// Writes exactly the bytes of skv::quantize_rows (cache/quantize_block.hpp), which stays the
// definition: the same Quantizer::fit per group, then every code from the stored parameters with
// the same float operations (x / scale, + 0.5, floor, + zero, clamp), only many lanes at a time.
// Min / max may differ from the scalar loop in the sign of a zero, which fit() never sees
// (tests/host/test_decode.cpp compares the bytes for every width, axis, scheme and scale type).
// Codes are packed eight at a time into Bits bytes by folding a 64-bit word.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include <skv/numeric/simd.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/quantize_block.hpp>
#include <skv/config.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {
namespace detail {

/// codes[c] = Quantizer::encode(x[c], {s[c], z[c]}) for c < n, lane by lane (x widened to float).
template <class T>
inline void encode_row(const T* SKV_RESTRICT x, const float* SKV_RESTRICT s, const float* SKV_RESTRICT z, int n,
                       float max_code, std::uint8_t* SKV_RESTRICT codes) {
  int c = 0;
#if defined(SKV_HAS_AVX512)
  const __m512 half = _mm512_set1_ps(0.5f), zero = _mm512_setzero_ps(), top = _mm512_set1_ps(max_code);
  for (; c + 16 <= n; c += 16) {
    const __m512 sc = _mm512_loadu_ps(s + c), zc = _mm512_loadu_ps(z + c);
    __m512 q = _mm512_add_ps(_mm512_div_ps(simd::vload(x + c), sc), half);
    q = _mm512_add_ps(_mm512_roundscale_ps(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), zc);
    q = _mm512_min_ps(_mm512_max_ps(q, zero), top);
    q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sc, zero, _CMP_EQ_OQ), q, zc);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + c), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
  }
#elif defined(SKV_HAS_AVX2)
  const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps(), top = _mm256_set1_ps(max_code);
  for (; c + 8 <= n; c += 8) {
    const __m256 sc = _mm256_loadu_ps(s + c), zc = _mm256_loadu_ps(z + c);
    __m256 q = _mm256_add_ps(_mm256_div_ps(simd::vload(x + c), sc), half);
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
    const float q = round_half_up(to_float(x[c]) / s[c]) + z[c];
    codes[c] = static_cast<std::uint8_t>(clamp_to(q, 0.0f, max_code));
  }
}

#if defined(SKV_HAS_AVX512)
/// Quantizer::fit + Quantizer::params for 16 groups of an fp16 asymmetric quantizer (AVX-512), as
/// floats; every s and z is an fp16 value, so narrowing them again (vcvtps2ph) is exact.
template <class Q>
struct Fit16 {
  __m512 s, z;

  /// The same float operations as fit (divisions, max, floor) and the fp16 narrowing done by
  /// vcvtps2ph with the rounding fit implements in integers (toward +infinity for the scale, to
  /// nearest even for the integer zero point and the constant-group test): the same bits for every
  /// finite input.
  static Fit16 fit(__m512 lo, __m512 hi) {
    const __m512 max_code = _mm512_set1_ps(static_cast<float>(Q::kMaxCode));
    const __m512 limit = _mm512_set1_ps(ScaleTraits<fp16>::kExactIntegerLimit);
    const __m512 half = _mm512_set1_ps(0.5f), fzero = _mm512_setzero_ps();
    const __m512 ahi = _mm512_abs_ps(hi);
    // constant groups whose value fp16 holds: (|x|, -sign x), or (0, 0) for x == 0
    const __m256i v = _mm512_cvtps_ph(ahi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 exact =
        _mm512_cmp_ps_mask(lo, hi, _CMP_EQ_OQ) & _mm512_cmp_ps_mask(_mm512_cvtph_ps(v), ahi, _CMP_EQ_OQ);
    const __mmask16 is_zero = _mm512_cmp_ps_mask(hi, fzero, _CMP_EQ_OQ);
    const __mmask16 positive = _mm512_cmp_ps_mask(hi, fzero, _CMP_GT_OQ);
    const __m512 amax = _mm512_max_ps(_mm512_abs_ps(lo), ahi);
    const __m512 sv = _mm512_max_ps(_mm512_div_ps(_mm512_sub_ps(hi, lo), max_code), _mm512_div_ps(amax, limit));
    const __m512 sf = _mm512_cvtph_ps(_mm512_cvtps_ph(sv, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
    const __m512 zr = _mm512_roundscale_ps(_mm512_add_ps(_mm512_div_ps(_mm512_sub_ps(fzero, lo), sf), half),
                                           _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 zf = _mm512_cvtph_ps(_mm512_cvtps_ph(zr, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // exact lanes: scale |x| (0 when x == 0), zero -1 / +1 (0 when x == 0), chosen with AVX-512F masks
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 ez =
        _mm512_maskz_mov_ps(static_cast<__mmask16>(~is_zero), _mm512_mask_mov_ps(one, positive, _mm512_set1_ps(-1.0f)));
    const __m512 es = _mm512_maskz_mov_ps(static_cast<__mmask16>(~is_zero), _mm512_cvtph_ps(v));
    // a scale that underflows to 0 (|x| below ~1e-42) stores zero point 0, as Quantizer::fit does
    const __mmask16 underflow = _mm512_cmp_ps_mask(sf, fzero, _CMP_EQ_OQ);
    return Fit16{_mm512_mask_mov_ps(sf, exact, es),
                 _mm512_mask_mov_ps(_mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), zf), exact, ez)};
  }

  /// Quantizer::search_error of each group for these parameters: element i of group l at
  /// x[i * stride + l]; the same operations lane by lane, in the same order.
  __m512 search_error(const float* x, std::size_t stride) const {
    const __m512 fzero = _mm512_setzero_ps(), top = _mm512_set1_ps(static_cast<float>(Q::kMaxCode));
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), s);
    // two independent sums (elements 0, 2, 4, ... and 1, 3, 5, ...), as Quantizer::search_error;
    // which one ends in e0 does not matter, addition being commutative
    __m512 e0 = fzero, e1 = fzero;
    for (int i = 0; i < Q::kGroupSize; ++i) {
      const __m512 t = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * stride), inv, z);
      const __m512 c = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 d = _mm512_sub_ps(t, _mm512_min_ps(_mm512_max_ps(c, fzero), top));
      e0 = _mm512_fmadd_ps(d, d, e0);
      std::swap(e0, e1);  // the next element goes to the other sum
    }
    const __m512 err = _mm512_mul_ps(_mm512_add_ps(e0, e1), _mm512_mul_ps(s, s));
    return _mm512_maskz_mov_ps(static_cast<__mmask16>(~_mm512_cmp_ps_mask(s, fzero, _CMP_EQ_OQ)), err);
  }

  /// Quantizer::fit_clipped for 16 groups (layout as in search_error).
  static Fit16 fit_clipped(const float* x, std::size_t stride, __m512 lo, __m512 hi) {
    Fit16 best = fit(lo, hi);
    const __mmask16 search = _mm512_cmp_ps_mask(lo, hi, _CMP_NEQ_UQ);
    if (search == 0) return best;
    __m512 best_err = best.search_error(x, stride);
    const __m512 mid = _mm512_mul_ps(_mm512_add_ps(lo, hi), _mm512_set1_ps(0.5f));
    for (int i = 1; i < Q::kClipCandidates; ++i) {
      const __m512 r = _mm512_set1_ps(Q::clip_ratio(i));
      const Fit16 c = fit(_mm512_fnmadd_ps(r, _mm512_sub_ps(mid, lo), mid), _mm512_fmadd_ps(r, _mm512_sub_ps(hi, mid), mid));
      const __m512 e = c.search_error(x, stride);
      const __mmask16 better = search & _mm512_cmp_ps_mask(e, best_err, _CMP_LT_OQ);
      best.s = _mm512_mask_mov_ps(best.s, better, c.s);
      best.z = _mm512_mask_mov_ps(best.z, better, c.z);
      best_err = _mm512_mask_mov_ps(best_err, better, e);
    }
    return best;
  }

  /// Writes the parameters to scales / zeros (fp16) and s / z (float), 16 each.
  void store(fp16* scales, fp16* zeros, float* sf, float* zf) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(scales), _mm512_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(zeros), _mm512_cvtps_ph(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm512_storeu_ps(sf, s);
    _mm512_storeu_ps(zf, z);
  }
};
#endif

/// Whether the 16-group AVX-512 fit (Fit16) serves quantizer Q.
template <class Q>
constexpr bool kFit16 =
#if defined(SKV_HAS_AVX512)
    Q::kHasZero && std::is_same<typename Q::Scale, fp16>::value;
#else
    false;
#endif

/// Stores group i's parameters (Quantizer::Stored st) to scales / zeros and their floats to s / z.
template <class Q>
SKV_FORCEINLINE void store_group(typename Q::Stored st, int i, typename Q::Scale* scales, typename Q::Scale* zeros,
                                 float* s, float* z) {
  scales[i] = st.scale;
  if (Q::kHasZero) zeros[i] = st.zero;
  const typename Q::Params p = Q::params(st);
  s[i] = p.scale;
  z[i] = p.zero;
}

/// Fits `count` groups from their minima and maxima: stores the parameters to scales / zeros
/// [0, count) and their float values to s / z. Equals Quantizer::fit + Quantizer::params entry by
/// entry, or with Clip Quantizer::fit_clipped, whose search reads group i's elements at
/// x[i + k * stride], k < GroupSize (consecutive groups in consecutive lanes; x is unused without
/// Clip). 16 groups at a time through Fit16 where it applies.
template <class Q, bool Clip>
inline void fit_groups(const float* x, std::size_t stride, const float* SKV_RESTRICT mn, const float* SKV_RESTRICT mx,
                       int count, typename Q::Scale* SKV_RESTRICT scales, typename Q::Scale* SKV_RESTRICT zeros,
                       float* SKV_RESTRICT s, float* SKV_RESTRICT z) {
  int i = 0;
#if defined(SKV_HAS_AVX512)
  if constexpr (kFit16<Q>) {
    for (; i + 16 <= count; i += 16) {
      const __m512 lo = _mm512_loadu_ps(mn + i), hi = _mm512_loadu_ps(mx + i);
      const Fit16<Q> f = Clip ? Fit16<Q>::fit_clipped(x + i, stride, lo, hi) : Fit16<Q>::fit(lo, hi);
      f.store(scales + i, zeros + i, s + i, z + i);
    }
  }
#endif
  for (; i < count; ++i)
    store_group<Q>(Clip ? Q::fit_clipped(x + i, stride, mn[i], mx[i]) : Q::fit(mn[i], mx[i]), i, scales, zeros, s, z);
}

/// Packs n codes (n a multiple of 8, each below 2^Bits) like skv::pack_codes: 64 at a time with
/// AVX-512 for 1, 2, 4 and 8 bits (neighbouring codes merged by multiply-adds: c0 + 2^b c1, ...),
/// otherwise eight at a time by folding a 64-bit word.
template <int Bits>
inline void pack_row(const std::uint8_t* SKV_RESTRICT codes, int n, std::uint8_t* SKV_RESTRICT out) {
  int i = 0;
#if defined(SKV_HAS_AVX512)
  for (; i + 64 <= n && (Bits == 1 || Bits == 2 || Bits == 4 || Bits == 8); i += 64) {
    const __m512i c = _mm512_loadu_si512(codes + i);
    std::uint8_t* o = out + i / 8 * Bits;
    if (Bits == 8) {
      _mm512_storeu_si512(o, c);
    } else if (Bits == 4) {
      const __m512i pairs = _mm512_maddubs_epi16(c, _mm512_set1_epi16(0x1001));  // c0 + 16 c1
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtepi16_epi8(pairs));
    } else if (Bits == 2) {
      const __m512i pairs = _mm512_maddubs_epi16(c, _mm512_set1_epi16(0x0401));     // c0 + 4 c1
      const __m512i quads = _mm512_madd_epi16(pairs, _mm512_set1_epi32(0x00100001));  // + 16 (c2 + 4 c3)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm512_cvtepi32_epi8(quads));
    } else {
      const std::uint64_t bits = _mm512_test_epi8_mask(c, c);
      std::memcpy(o, &bits, 8);
    }
  }
#endif
  for (; i < n; i += 8) {
    std::uint64_t v = 0;
    SKV_UNROLL
    for (int j = 0; j < 8; ++j) v |= static_cast<std::uint64_t>(codes[i + j]) << (8 * j);
    if (Bits < 8) {
      // 8 bytes of Bits bits -> 4 x 2*Bits -> 2 x 4*Bits -> 8*Bits contiguous bits
      v = (v & 0x00FF00FF00FF00FFull) | ((v >> 8) & 0x00FF00FF00FF00FFull) << Bits;
      v = (v & 0x0000FFFF0000FFFFull) | ((v >> 16) & 0x0000FFFF0000FFFFull) << (2 * Bits);
      v = (v & 0x00000000FFFFFFFFull) | (v >> 32) << (4 * Bits);
    }
    std::uint8_t* o = out + (i / 8) * Bits;
    SKV_UNROLL
    for (int b = 0; b < Bits; ++b) o[b] = static_cast<std::uint8_t>(v >> (8 * b));
  }
}

/// `n` floats of this thread's scratch buffer `Tag` (it grows and is kept): the arrays whose size
/// grows with the group size live here rather than on the stack (a Channel-axis group of 4096
/// tokens at head_dim 1024 is 16 MiB).
template <class Tag>
float* thread_scratch(std::size_t n) {
  static thread_local std::vector<float> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}
struct SlabScratch {};
struct GroupScratch {};

/// quantize_rows_fast for the min-max schemes.
template <class Q, int HeadDim, int PageSize, bool Clip, class T>
void quantize_rows_vector(const T* x, std::size_t row_stride, int rows, int slot0, std::uint8_t* block) {
  using TL = TensorLayout<Q, HeadDim, PageSize>;
  using Scale = typename Q::Scale;
  using simd::Vec;
  using simd::kVecWidth;
  constexpr int G = Q::kGroupSize;
  constexpr float kMaxCode = static_cast<float>(Q::kMaxCode);
  auto* scales = reinterpret_cast<Scale*>(block + TL::kScaleOffset);
  auto* zeros = reinterpret_cast<Scale*>(block + TL::kZeroOffset);
  float s[HeadDim], z[HeadDim];
  std::uint8_t codes[HeadDim];

  auto encode_pack = [&](const T* row, int slot) {
    detail::encode_row(row, s, z, HeadDim, kMaxCode, codes);
    detail::pack_row<Q::kBits>(codes, HeadDim, block + static_cast<std::size_t>(slot) * TL::kRowBytes);
  };

  if constexpr (Q::kAxis == Axis::Channel) {  // constexpr: the Token branch's arrays would have size 0
    float mn[HeadDim], mx[HeadDim];
    // the clipping search reads each group's elements ten times: from a contiguous float copy of the
    // rows (rows of a head are a whole token apart in the input, often a multiple of 4 KiB, which
    // would map them to one L1 set)
    float* slab = Clip ? detail::thread_scratch<detail::SlabScratch>(static_cast<std::size_t>(G) * HeadDim) : nullptr;
    for (int g = 0; g < rows / G; ++g) {
      const T* base = x + static_cast<std::size_t>(g) * G * row_stride;
      if constexpr (Clip) {
        for (int i = 0; i < G; ++i) simd::to_f32_row(base + i * row_stride, HeadDim, slab + i * HeadDim);
      }
      int c = 0;
      for (; c + kVecWidth <= HeadDim; c += kVecWidth) {
        Vec lo = simd::vload(base + c), hi = lo;
        for (int i = 1; i < G; ++i) {
          const Vec v = simd::vload(base + i * row_stride + c);
          lo = simd::vmin(lo, v);
          hi = simd::vmax(hi, v);
        }
        simd::vstore(mn + c, lo);
        simd::vstore(mx + c, hi);
      }
      for (; c < HeadDim; ++c) {
        float lo = to_float(base[c]), hi = lo;
        for (int i = 1; i < G; ++i) {
          const float v = to_float(base[i * row_stride + c]);
          lo = skv::detail::min_of(lo, v);
          hi = skv::detail::max_of(hi, v);
        }
        mn[c] = lo;
        mx[c] = hi;
      }
      const int meta = TL::meta_index(slot0 + g * G, 0);
      Scale* zg = zeros + (Q::kHasZero ? meta : 0);
      detail::fit_groups<Q, Clip>(slab, HeadDim, mn, mx, HeadDim, scales + meta, zg, s, z);
      for (int i = 0; i < G; ++i) encode_pack(base + i * row_stride, slot0 + g * G + i);
    }
  } else {
    constexpr int kJ = HeadDim / G;
    constexpr std::size_t kGroups = static_cast<std::size_t>(kJ) * 64;
    float* mn = detail::thread_scratch<detail::GroupScratch>(4 * kGroups + (Clip ? 16 * G : 0));
    float* mx = mn + kGroups;
    float* gs = mx + kGroups;
    float* gz = gs + kGroups;
    float* tile = gz + kGroups;  // Clip: 16 groups transposed
    for (int t0 = 0; t0 < rows; t0 += 64) {
      const int nt = rows - t0 < 64 ? rows - t0 : 64;
      for (int t = t0; t < t0 + nt; ++t) {
        const T* row = x + static_cast<std::size_t>(t) * row_stride;
        for (int j = 0; j < kJ; ++j) {
          const T* grp = row + j * G;
          float lo = to_float(grp[0]), hi = lo;
          int i = 0;
          if (G >= kVecWidth) {
            Vec vlo = simd::vload(grp), vhi = vlo;
            for (i = kVecWidth; i + kVecWidth <= G; i += kVecWidth) {
              vlo = simd::vmin(vlo, simd::vload(grp + i));
              vhi = simd::vmax(vhi, simd::vload(grp + i));
            }
            lo = simd::vhmin(vlo);
            hi = simd::vhmax(vhi);
          }
          for (; i < G; ++i) {
            lo = skv::detail::min_of(lo, to_float(grp[i]));
            hi = skv::detail::max_of(hi, to_float(grp[i]));
          }
          mn[(t - t0) * kJ + j] = lo;
          mx[(t - t0) * kJ + j] = hi;
        }
      }
      const int meta = TL::meta_index(slot0 + t0, 0);
      Scale* zg = zeros + (Q::kHasZero ? meta : 0);
      if constexpr (Clip) {
        // 16 groups at a time, transposed so that group l's element k sits at tile[16 k + l]
        for (int g0 = 0; g0 < nt * kJ; g0 += 16) {
          const int ng = nt * kJ - g0 < 16 ? nt * kJ - g0 : 16;
          for (int l = 0; l < ng; ++l) {
            const int g = g0 + l;
            const T* grp = x + static_cast<std::size_t>(t0 + g / kJ) * row_stride + (g % kJ) * G;
            for (int k = 0; k < G; ++k) tile[16 * k + l] = to_float(grp[k]);
          }
          detail::fit_groups<Q, true>(tile, 16, mn + g0, mx + g0, ng, scales + meta + g0,
                                      zg + (Q::kHasZero ? g0 : 0), gs + g0, gz + g0);
        }
      } else {
        detail::fit_groups<Q, false>(nullptr, 0, mn, mx, nt * kJ, scales + meta, zg, gs, gz);
      }
      for (int t = t0; t < t0 + nt; ++t) {
        for (int j = 0; j < kJ; ++j) {
          const float sj = gs[(t - t0) * kJ + j], zj = gz[(t - t0) * kJ + j];
          for (int c = j * G; c < (j + 1) * G; ++c) {
            s[c] = sj;
            z[c] = zj;
          }
        }
        encode_pack(x + static_cast<std::size_t>(t) * row_stride, slot0 + t);
      }
    }
  }
}

}  // namespace detail

/// Same contract and bytes as skv::quantize_rows<Q, HeadDim, PageSize, Clip>, vectorized (host
/// only), reading x as T (float, or fp16 / bf16 widened exactly inside the vector loads). A codebook
/// (Scheme::LloydMax) takes quantize_rows itself, on a float copy of the rows when T is narrower.
template <class Q, int HeadDim, int PageSize, bool Clip = false, class T = float>
void quantize_rows_fast(const T* x, std::size_t row_stride, int rows, int slot0, std::uint8_t* block) {
  if constexpr (Q::kCodebook) {
    static_assert(!Clip, "skv: Scheme::LloydMax has no clipping search");
    if constexpr (std::is_same<T, float>::value) {
      quantize_rows<Q, HeadDim, PageSize>(x, row_stride, rows, slot0, block);
    } else {
      std::vector<float> wide(static_cast<std::size_t>(rows) * HeadDim);
      for (int t = 0; t < rows; ++t)
        for (int c = 0; c < HeadDim; ++c)
          wide[static_cast<std::size_t>(t) * HeadDim + c] = to_float(x[static_cast<std::size_t>(t) * row_stride + c]);
      quantize_rows<Q, HeadDim, PageSize>(wide.data(), HeadDim, rows, slot0, block);
    }
  } else {
    detail::quantize_rows_vector<Q, HeadDim, PageSize, Clip>(x, row_stride, rows, slot0, block);
  }
}

/// Quantizes quantized indices [first, first + kBlockTokens) of every KV head, vectorized, the
/// clipping search included: keys[t * stride + h * HeadDim + c] and the same for values are token
/// t of the block (float from the ring, or the caller's input of type TK / TV).
template <class Layout, class View, class TK, class TV>
void quantize_block_rows(const View& view, int first, const TK* keys, const TV* values, std::size_t stride) {
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  constexpr int D = Layout::kHeadDim, P = Layout::kPageSize, B = Layout::kBlockTokens;
  for (int h = 0; h < view.num_kv_heads; ++h) {
    std::uint8_t* block = view.head_block(first, h);
    const std::size_t at = static_cast<std::size_t>(h) * D;
    quantize_rows_fast<KQ, D, P, Layout::kClipKeys>(keys + at, stride, B, first % P, block);
    quantize_rows_fast<VQ, D, P, Layout::kClipValues>(values + at, stride, B, first % P, block + Layout::Keys::kBytes);
  }
}

/// Same as skv::quantize_block (every KV head of quantized indices [first, first + kBlockTokens)
/// read from the residual ring, where a block never wraps), vectorized, the clipping search included.
/// With Int8Ring the block's ring rows are decoded first.
template <class Layout, class View>
void quantize_block_fast(const View& view, int first) {
  constexpr int D = Layout::kHeadDim, B = Layout::kBlockTokens;
  const int token = Layout::kSinkTokens + first;
  const std::size_t stride = static_cast<std::size_t>(view.num_kv_heads) * D;
  if constexpr (Layout::kInt8Ring) {
    std::vector<float> k(B * stride), v(B * stride);
    for (int t = 0; t < B; ++t)
      for (int h = 0; h < view.num_kv_heads; ++h) {
        const std::size_t at = t * stride + static_cast<std::size_t>(h) * D;
        Layout::KeyRing::load(view.residual_key(token + t, h), k.data() + at);
        Layout::ValueRing::load(view.residual_value(token + t, h), v.data() + at);
      }
    quantize_block_rows<Layout>(view, first, k.data(), v.data(), stride);
  } else {
    quantize_block_rows<Layout>(view, first, view.residual_key(token, 0), view.residual_value(token, 0), stride);
  }
}

}  // namespace skv
