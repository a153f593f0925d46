// skv/attention/detail/simd.hpp: the vector primitives of the CPU attention (host only, not public API).
//
// The float vector `Vec` (numeric/simd.hpp, brought into this namespace), exp, and unpacking.
//
// Unpacking: code i of a dense little-endian stream (numeric/pack.hpp) sits at bit i*Bits. Eight
// codes fill Bits bytes, so a 128-bit lane can hold the bytes of 8 codes; a byte shuffle gives each
// 16-bit slot the two bytes its code can span, a per-slot right shift and a mask leave the code
// (AVX-512BW has a variable 16-bit shift; AVX2 multiplies by 2^(7-shift) and shifts right by 7).
// With AVX2, codes of 1, 2 and 4 bits, which fill whole bytes, are broadcast from a word and shifted
// per 32-bit lane instead (also by PackedRows, which the float kernels read in place). Loads are
// masked or exact, so nothing past a row's last code byte is read. The result equals
// skv::unpack_code exactly (tests/host/test_decode.cpp checks every width with ==).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <skv/config.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/numeric/simd.hpp>

#if defined(SKV_HAS_AVX512) || defined(SKV_HAS_AVX2) || defined(SKV_HAS_F16C)
#include <immintrin.h>
#endif

namespace skv {
namespace cpu {
namespace detail {

// The float vector lives in numeric/simd.hpp (the block quantizer uses it too).
using simd::kSimdName;
using simd::kVecWidth;
using simd::simd_name;
using simd::vadd;
using simd::vfma;
using simd::vhmax;
using simd::vhmin;
using simd::vload;
using simd::vmax;
using simd::vmin;
using simd::vmul;
using simd::Vec;
using simd::vset1;
using simd::vstore;
using simd::vsub;
using simd::vsum;
using simd::vzero;

// ---- exp ------------------------------------------------------------------------------------------
// exp(x) for x <= 0 (softmax arguments), Cephes-style: x = n ln2 + r, |r| <= ln2 / 2, degree-6
// polynomial, 2^n put into the exponent. Relative error below 2e-7 for x in [-87, 0]; inputs below
// -87 give a tiny positive number instead of 0, which no sum of at most 2^24 terms can notice.
#if defined(SKV_HAS_AVX512) || defined(SKV_HAS_AVX2)
SKV_FORCEINLINE Vec vexp_nonpositive(Vec x) {
  x = vmax(x, vset1(-87.0f));
#if defined(SKV_HAS_AVX512)
  const Vec n = _mm512_roundscale_ps(vmul(x, vset1(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const Vec n = _mm256_round_ps(vmul(x, vset1(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  Vec r = vfma(n, vset1(-0.693359375f), x);
  r = vfma(n, vset1(2.12194440e-4f), r);
  Vec p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
#if defined(SKV_HAS_AVX512)
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return vmul(p, _mm512_castsi512_ps(e));
#else
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return vmul(p, _mm256_castsi256_ps(e));
#endif
}
#else
SKV_FORCEINLINE Vec vexp_nonpositive(Vec x) { return ::expf(x); }
#endif

/// out[i] = exp(x[i] - m) for i < n, returns their sum (every argument is <= 0).
inline float exp_shifted(const float* x, float m, int n, float* out) {
  const Vec vm = vset1(m);
  Vec s = vzero();
  int i = 0;
  for (; i + kVecWidth <= n; i += kVecWidth) {
    const Vec e = vexp_nonpositive(vsub(vload(x + i), vm));
    vstore(out + i, e);
    s = vadd(s, e);
  }
  float sum = vsum(s);
  for (; i < n; ++i) {
    out[i] = ::expf(x[i] - m);
    sum += out[i];
  }
  return sum;
}

inline float max_of_array(const float* x, int n) {
  float m = x[0];
  int i = 0;
  if (n >= kVecWidth) {
    Vec v = vload(x);
    for (i = kVecWidth; i + kVecWidth <= n; i += kVecWidth) v = vmax(v, vload(x + i));
    m = vhmax(v);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// ---- unpacking ------------------------------------------------------------------------------------

/// Shuffle and shift constants for 32 codes of width Bits as four 128-bit lanes of eight 16-bit slots.
template <int Bits>
struct UnpackTables {
  // lane l holds codes 8l..8l+7, whose bits start at byte Bits*l; the lane is filled from the dword
  // floor(Bits*l / 4) on, so its first code starts `offset(l)` bytes into the lane.
  static constexpr int dword(int l) { return Bits * l / 4; }
  static constexpr int offset(int l) { return Bits * l - 4 * dword(l); }
  struct Table {
    std::int32_t perm[16];
    std::int8_t shuffle[64];
    std::int16_t shift[32];
    std::int16_t mul[32];
  };
  static constexpr Table make() {
    Table t{};
    for (int l = 0; l < 4; ++l) {
      for (int k = 0; k < 4; ++k) t.perm[4 * l + k] = dword(l) + k;
      for (int i = 0; i < 8; ++i) {
        const int byte = offset(l) + i * Bits / 8;
        t.shuffle[16 * l + 2 * i] = static_cast<std::int8_t>(byte);
        t.shuffle[16 * l + 2 * i + 1] = static_cast<std::int8_t>(byte + 1 < 16 ? byte + 1 : 15);
        t.shift[8 * l + i] = static_cast<std::int16_t>(i * Bits % 8);
        t.mul[8 * l + i] = static_cast<std::int16_t>(1 << (7 - i * Bits % 8));
      }
    }
    return t;
  }
  static constexpr Table kTable = make();
};

/// Converts the `n` (a multiple of 8) codes of a packed row to floats, in order.
template <int Bits>
inline void unpack_row_f32(const std::uint8_t* SKV_RESTRICT row, int n, float* SKV_RESTRICT out) {
  int i = 0;
#if defined(SKV_HAS_AVX512)
  if (Bits == 8) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(out + i, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i)))));
  } else {
    using T = UnpackTables<Bits>;
    const __m512i perm = _mm512_loadu_si512(T::kTable.perm);
    const __m512i shuffle = _mm512_loadu_si512(T::kTable.shuffle);
    const __m512i shift = _mm512_loadu_si512(T::kTable.shift);
    const __m512i mask = _mm512_set1_epi16(static_cast<short>(PackTraits<Bits>::kMask));
    const __mmask64 load_mask = (std::uint64_t{1} << (4 * Bits)) - 1;
    for (; i + 32 <= n; i += 32) {
      __m512i x = _mm512_maskz_loadu_epi8(load_mask, row + i * Bits / 8);
      x = _mm512_permutexvar_epi32(perm, x);
      x = _mm512_shuffle_epi8(x, shuffle);
      x = _mm512_and_si512(_mm512_srlv_epi16(x, shift), mask);
      _mm512_storeu_ps(out + i, _mm512_cvtepi32_ps(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(x))));
      _mm512_storeu_ps(out + i + 16, _mm512_cvtepi32_ps(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(x, 1))));
    }
  }
#elif defined(SKV_HAS_AVX2)
  if constexpr (Bits == 8) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i)))));
  } else if constexpr (8 % Bits == 0) {
    // 1, 2 and 4 bits: a 32-bit word holds 32 / Bits whole codes; broadcast it, shift each lane by
    // its code's bit offset, mask (no byte shuffles, no widening)
    constexpr int kPerWord = 32 / Bits;
    const __m256i offsets = _mm256_setr_epi32(0, Bits, 2 * Bits, 3 * Bits, 4 * Bits, 5 * Bits, 6 * Bits, 7 * Bits);
    const __m256i mask = _mm256_set1_epi32(static_cast<int>(PackTraits<Bits>::kMask));
    for (; i + kPerWord <= n; i += kPerWord) {
      std::uint32_t word;
      std::memcpy(&word, row + i * Bits / 8, sizeof(word));
      const __m256i x = _mm256_set1_epi32(static_cast<int>(word));
      for (int g = 0; g < kPerWord / 8; ++g) {
        const __m256i shift = _mm256_add_epi32(offsets, _mm256_set1_epi32(8 * Bits * g));
        _mm256_storeu_ps(out + i + 8 * g, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, shift), mask)));
      }
    }
  } else {
    using T = UnpackTables<Bits>;
    const __m256i perm_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.perm));
    const __m256i perm_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.perm + 8));
    const __m256i shuf_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.shuffle));
    const __m256i shuf_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.shuffle + 32));
    const __m256i mul_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.mul));
    const __m256i mul_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T::kTable.mul + 16));
    const __m256i mask = _mm256_set1_epi16(static_cast<short>(PackTraits<Bits>::kMask));
    const __m256i seven = _mm256_set1_epi32(7);
    // Bits dwords hold the 32 codes; indices past them read zeros (masked load) or are never used
    const __m256i load_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(Bits), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (; i + 32 <= n; i += 32) {
      const __m256i x = _mm256_maskload_epi32(reinterpret_cast<const int*>(row + i * Bits / 8), load_mask);
      __m256i a = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(x, _mm256_min_epi32(perm_lo, seven)), shuf_lo);
      __m256i b = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(x, _mm256_min_epi32(perm_hi, seven)), shuf_hi);
      a = _mm256_and_si256(_mm256_srli_epi16(_mm256_mullo_epi16(a, mul_lo), 7), mask);
      b = _mm256_and_si256(_mm256_srli_epi16(_mm256_mullo_epi16(b, mul_hi), 7), mask);
      _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a))));
      _mm256_storeu_ps(out + i + 8, _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1))));
      _mm256_storeu_ps(out + i + 16, _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(b))));
      _mm256_storeu_ps(out + i + 24, _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(b, 1))));
    }
  }
#endif
  for (; i < n; i += 8) {
    std::uint8_t c[8];
    unpack8<Bits>(row, i / 8, c);
    for (int j = 0; j < 8; ++j) out[i + j] = static_cast<float>(c[j]);
  }
}

/// Converts the `n` (a multiple of 8) codes of a packed row of quantizer Q to the levels they stand
/// for, as floats (Quantizer::level: the codes themselves, or a codebook's levels, looked up in a
/// vector register with AVX2 for up to 8 levels).
template <class Q>
inline void unpack_levels_f32(const std::uint8_t* SKV_RESTRICT row, int n, float* SKV_RESTRICT out) {
  unpack_row_f32<Q::kBits>(row, n, out);
  if constexpr (Q::kCodebook) {
    constexpr int kLevels = 1 << Q::kBits;
    float table[kLevels < 8 ? 8 : kLevels] = {};
    for (int c = 0; c < kLevels; ++c) table[c] = static_cast<float>(Q::level(static_cast<std::uint32_t>(c)));
    int i = 0;
#if defined(SKV_HAS_AVX2)
    if constexpr (kLevels <= 8) {
      const __m256 lut = _mm256_loadu_ps(table);
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_permutevar8x32_ps(lut, _mm256_cvttps_epi32(_mm256_loadu_ps(out + i))));
    }
#endif
    for (; i < n; ++i) out[i] = table[static_cast<int>(out[i])];
  }
}

/// Whether PackedRows reads codes of this width in vectors: with AVX2 (without AVX-512, whose
/// attention reads codes as integers, detail/x86/) for 2, 4 and 8 bits, whose eight codes fill
/// whole bytes.
template <int Bits>
constexpr bool kPackedRowVectors =
#if defined(SKV_HAS_AVX2) && !defined(SKV_HAS_AVX512)
    Bits >= 2 && 8 % Bits == 0;
#else
    false;
#endif

/// Rows of packed codes read as floats where they are used, never stored: row r of a tile starts
/// at data + r * stride bytes. The dot and accumulate kernels take it in place of FloatRows
/// (detail/kernels.hpp), so a code goes from the cache to a register and into its multiply-adds.
/// A vector of 8 codes is Bits bytes: loaded as one word, broadcast, each lane shifted by its code's
/// bit offset and masked. Only for widths with kPackedRowVectors.
template <int Bits>
struct PackedRows {
  const std::uint8_t* data;
  std::size_t stride;
#if defined(SKV_HAS_AVX2) && !defined(SKV_HAS_AVX512)
  SKV_FORCEINLINE Vec load(int r, int c) const {
    const std::uint8_t* p = data + r * stride + c * Bits / 8;
    if constexpr (Bits == 8) {
      return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    } else {
      std::uint32_t word = 0;
      std::memcpy(&word, p, Bits);  // codes c..c+7: exactly Bits bytes
      const __m256i offsets = _mm256_setr_epi32(0, Bits, 2 * Bits, 3 * Bits, 4 * Bits, 5 * Bits, 6 * Bits, 7 * Bits);
      const __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), offsets);
      return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(PackTraits<Bits>::kMask))));
    }
  }
#endif
  /// One code (the kernels' scalar tails): as unpack_code, indexed in size_t.
  SKV_FORCEINLINE float at(int r, int c) const {
    const std::size_t bit = static_cast<std::size_t>(c) * Bits;
    const std::uint8_t* p = data + r * stride + bit / 8;
    std::uint32_t window = p[0];
    if (bit % 8 + Bits > 8) window |= static_cast<std::uint32_t>(p[1]) << 8;
    return static_cast<float>((window >> (bit % 8)) & PackTraits<Bits>::kMask);
  }
  SKV_FORCEINLINE PackedRows from(int r) const { return {data + r * stride, stride}; }
};

#if defined(SKV_HAS_AVX512)
/// Unpacks the `n` (a multiple of 8) codes of a packed row to 16-bit integers, in order (AVX-512).
template <int Bits>
inline void unpack_row_u16(const std::uint8_t* SKV_RESTRICT row, int n, std::uint16_t* SKV_RESTRICT out) {
  int i = 0;
  if (Bits == 8) {
    for (; i + 32 <= n; i += 32)
      _mm512_storeu_si512(out + i, _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i))));
  } else {
    using T = UnpackTables<Bits>;
    const __m512i perm = _mm512_loadu_si512(T::kTable.perm);
    const __m512i shuffle = _mm512_loadu_si512(T::kTable.shuffle);
    const __m512i shift = _mm512_loadu_si512(T::kTable.shift);
    const __m512i mask = _mm512_set1_epi16(static_cast<short>(PackTraits<Bits>::kMask));
    const __mmask64 load_mask = (std::uint64_t{1} << (4 * Bits)) - 1;
    for (; i + 32 <= n; i += 32) {
      __m512i x = _mm512_maskz_loadu_epi8(load_mask, row + i * Bits / 8);
      x = _mm512_permutexvar_epi32(perm, x);
      x = _mm512_shuffle_epi8(x, shuffle);
      _mm512_storeu_si512(out + i, _mm512_and_si512(_mm512_srlv_epi16(x, shift), mask));
    }
  }
  for (; i < n; i += 8) {
    std::uint8_t c[8];
    unpack8<Bits>(row, i / 8, c);
    for (int j = 0; j < 8; ++j) out[i + j] = c[j];
  }
}

/// [sum a, sum b, sum c, sum d] of four vectors of 16 int32.
SKV_FORCEINLINE __m128i hsum4_epi32(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m256i a2 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
  const __m256i b2 = _mm256_add_epi32(_mm512_castsi512_si256(b), _mm512_extracti64x4_epi64(b, 1));
  const __m256i c2 = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
  const __m256i d2 = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
  const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, b2), _mm256_unpackhi_epi32(a2, b2));
  const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c2, d2), _mm256_unpackhi_epi32(c2, d2));
  const __m256i abcd = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}
#endif

}  // namespace detail
}  // namespace cpu
}  // namespace skv
