// skv/cache/ring.hpp: how the full-precision area (the residual ring, the sinks and the rollback
// history) holds one token row of HeadDim elements.
//
//   float     HeadDim floats (the default)
//   fp16      HeadDim fp16 values (Options<Fp16Ring>)
//   Int8Ring  HeadDim 8-bit codes, then an fp16 zero z and an fp16 step s (Options<Int8Ring>):
//             element c is z + code[c] * s. z is the row's minimum (+0 for either zero) rounded
//             down to fp16 and s its range / 255 rounded up, so every code lies in [0, 255]; a
//             code whose element would land above the row's maximum is lowered by one, so a row
//             never leaves the range of its input (an accepted input is accepted again once
//             decoded). code * s is exact in float (8 x 11 significant bits), so z + code * s
//             rounds once, the same with or without FMA. With AVX2 the codes are computed 8 at a
//             time by the same operations (the bytes do not depend on the instruction set).
//             The sign bit of s flags a row held rotated (below); s itself is never negative.
//   rotated   Int8Ring keys that RotateKeys leaves in the caller's basis: the 8-bit row of R x
//             (R the keys' HadamardRotation), so that an outlier channel no longer sets the step
//             of every element of the row (per-token rows are what per-channel key groups avoid);
//             load undoes R. Values have no such channels once RotateValues rotates them.
//
// RingRow<Full, HeadDim> is the codec: kElements elements of Full per row, store (from float),
// load (to float) and one element; RotatedRingRow adds the rotation. The layout names the codec of
// each side (Layout::KeyRing, Layout::ValueRing); every reader and writer of the area goes through
// them.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <skv/config.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/simd.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {

/// One row of the full-precision area held as elements of Full (float or fp16).
template <class Full, int HeadDim>
struct RingRow {
  static_assert(std::is_same<Full, float>::value || std::is_same<Full, fp16>::value,
                "skv::RingRow: the full-precision area holds float, fp16 or 8-bit rows");
  static constexpr int kElements = HeadDim;
  static constexpr std::size_t kBytes = sizeof(Full) * kElements;

  /// row = x (rounded to nearest even for fp16); out = row (exact).
  static void store(const float* SKV_RESTRICT x, Full* SKV_RESTRICT row) { simd::from_f32_row(x, HeadDim, row); }
  static void load(const Full* SKV_RESTRICT row, float* SKV_RESTRICT out) { simd::to_f32_row(row, HeadDim, out); }
  SKV_HOST_DEVICE static float element(const Full* row, int c) { return to_float(row[c]); }
};

/// An 8-bit row: HeadDim codes, then the fp16 zero and step (4 bytes).
template <int HeadDim>
struct RingRow<std::uint8_t, HeadDim> {
  static constexpr int kElements = HeadDim + 4;
  static constexpr std::size_t kBytes = kElements;

  SKV_HOST_DEVICE static float zero(const std::uint8_t* row) { return to_float(half_at(row + HeadDim)); }
  SKV_HOST_DEVICE static float step(const std::uint8_t* row) {
    return to_float(fp16{static_cast<std::uint16_t>(half_at(row + HeadDim + 2).bits & 0x7fffu)});
  }
  /// Whether RotatedRingRow stored the row rotated: the sign bit of the step.
  SKV_HOST_DEVICE static bool rotated(const std::uint8_t* row) { return (half_at(row + HeadDim + 2).bits & 0x8000u) != 0; }
  static void mark_rotated(std::uint8_t* row) {
    fp16 s = half_at(row + HeadDim + 2);
    s.bits = static_cast<std::uint16_t>(s.bits | 0x8000u);
    std::memcpy(row + HeadDim + 2, &s, 2);
  }

  /// Encodes the finite floats x[0, HeadDim) with |x| <= M for an fp16-representable M; every
  /// decoded element then lies in [-M, M] too.
  static void store(const float* SKV_RESTRICT x, std::uint8_t* SKV_RESTRICT row) {
    // the range, a vector at a time (the inputs are finite, so min and max agree in any order)
    int c = 0;
    simd::Vec vlo = simd::vset1(x[0]), vhi = vlo;
    for (; c + simd::kVecWidth <= HeadDim; c += simd::kVecWidth) {
      const simd::Vec v = simd::vload(x + c);
      vlo = simd::vmin(vlo, v);
      vhi = simd::vmax(vhi, v);
    }
    float lo = simd::vhmin(vlo), hi = simd::vhmax(vhi);
    for (; c < HeadDim; ++c) {
      lo = x[c] < lo ? x[c] : lo;
      hi = x[c] > hi ? x[c] : hi;
    }
    lo = lo == 0.0f ? 0.0f : lo;  // +0 for -0 too: the vector min returns either sign of zero
    const fp16 zh = negate(to_fp16(-lo, Round::Up));  // rounded down: z <= lo
    const float z = to_float(zh);
    const fp16 sh = hi > z ? to_fp16((hi - z) / 255.0f, Round::Up) : fp16{0};
    const float s = to_float(sh);
    std::memcpy(row + HeadDim, &zh, 2);
    std::memcpy(row + HeadDim + 2, &sh, 2);
    if (!(s > 0.0f)) {  // a constant row
      std::memset(row, 0, HeadDim);
      return;
    }
    for (c = encode_vectors(x, z, s, hi, row); c < HeadDim; ++c) row[c] = code(x[c], z, s, hi);
  }
  /// The code of one element: (x - z) / s rounded half up into [0, 255], lowered by one where
  /// z + q * s (an exact product, one rounding) would pass the row's maximum hi. encode_vectors
  /// computes the same with the same operations, a vector at a time.
  static std::uint8_t code(float x, float z, float s, float hi) {
    const float t = (x - z) / s + 0.5f;
    int q = t <= 0.0f ? 0 : (t >= 255.0f ? 255 : static_cast<int>(t));
    if (q > 0 && z + static_cast<float>(q) * s > hi) --q;
    return static_cast<std::uint8_t>(q);
  }
  /// out[c] = z + code[c] * s.
  static void load(const std::uint8_t* SKV_RESTRICT row, float* SKV_RESTRICT out) {
    const float z = zero(row), s = step(row);
    for (int c = 0; c < HeadDim; ++c) out[c] = z + static_cast<float>(row[c]) * s;
  }
  SKV_HOST_DEVICE static float element(const std::uint8_t* row, int c) {
    return zero(row) + static_cast<float>(row[c]) * step(row);
  }

 private:
  /// The codes of elements [0, n) for the largest n <= HeadDim that whole 8-float vectors cover;
  /// returns n.
  static int encode_vectors(const float* SKV_RESTRICT x, float z, float s, float hi, std::uint8_t* SKV_RESTRICT row) {
    int c = 0;
#if defined(SKV_HAS_AVX2)  // also in AVX-512 builds: 8 lanes are enough next to the division
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), vhi = _mm256_set1_ps(hi);
    const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
    for (; c + 8 <= HeadDim; c += 8) {
      __m256 t = _mm256_add_ps(_mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vz), vs), half);
      t = _mm256_min_ps(_mm256_max_ps(t, zero), top);  // t <= 0 -> 0, t >= 255 -> 255
      __m256i q = _mm256_cvttps_epi32(t);
      const __m256 qf = _mm256_cvtepi32_ps(q);
      const __m256 over = _mm256_and_ps(_mm256_cmp_ps(_mm256_add_ps(vz, _mm256_mul_ps(qf, vs)), vhi, _CMP_GT_OQ),
                                        _mm256_cmp_ps(qf, zero, _CMP_GT_OQ));
      q = _mm256_add_epi32(q, _mm256_castps_si256(over));  // all ones: minus one
      const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(row + c), _mm_packus_epi16(words, words));
    }
#else
    (void)x, (void)z, (void)s, (void)hi, (void)row;
#endif
    return c;
  }
  SKV_HOST_DEVICE static fp16 half_at(const std::uint8_t* p) {
    fp16 h;
    std::memcpy(&h, p, 2);
    return h;
  }
  static fp16 negate(fp16 h) { return fp16{static_cast<std::uint16_t>(h.bits ^ 0x8000u)}; }
};

/// Rows of the 8-bit area held in the basis of HadamardRotation<HeadDim, Seed> (Layout::KeyRing with
/// Int8Ring and keys that RotateKeys does not rotate; HeadDim a power of two): store codes R x and
/// flags the row, load decodes and applies R^T. A row with an element beyond kRotateLimit (far beyond
/// real keys) is coded as it is, unflagged, so that every row the quantizers accept (|x| <= their
/// kMaxInput) decodes within that range again: |(R^T y')_c| <= |y'|_2 <= |x|_2 + sqrt(D) s
/// <= (sqrt(D) + D / 64) max|x| for the decoded rotated row y' (s <= 2 sqrt(D) max|x| / 255, rounded up).
template <int HeadDim, std::uint64_t Seed, class Q>
struct RotatedRingRow {
  using Codec = RingRow<std::uint8_t, HeadDim>;
  using Rotation = HadamardRotation<HeadDim, Seed>;
  static constexpr int kElements = Codec::kElements;
  static constexpr std::size_t kBytes = Codec::kBytes;
  /// Largest |x| of a row that is stored rotated.
  static constexpr float kRotateLimit =
      static_cast<float>(Q::kMaxInput / (1.0 / Rotation::inv_sqrt_dim() + 0.01 + HeadDim / 64.0));

  static void store(const float* SKV_RESTRICT x, std::uint8_t* SKV_RESTRICT row) {
    float amax = 0.0f;
    for (int c = 0; c < HeadDim; ++c) amax = std::fabs(x[c]) > amax ? std::fabs(x[c]) : amax;
    if (!(amax <= kRotateLimit)) {
      Codec::store(x, row);
      return;
    }
    alignas(64) float y[HeadDim];
    std::memcpy(y, x, sizeof(y));
    Rotation::apply(y);
    Codec::store(y, row);
    Codec::mark_rotated(row);
  }
  /// The row in the caller's basis.
  static void load(const std::uint8_t* SKV_RESTRICT row, float* SKV_RESTRICT out) {
    Codec::load(row, out);
    if (Codec::rotated(row)) Rotation::apply_inverse(out);
  }
  /// The row in the rotated basis, R x (attention reads these rows against R q).
  static void load_rotated(const std::uint8_t* SKV_RESTRICT row, float* SKV_RESTRICT out) {
    Codec::load(row, out);
    if (!Codec::rotated(row)) Rotation::apply(out);
  }
  /// Element c of load(row): the whole row is decoded (O(D log D); the reference path's accessor).
  SKV_HOST_DEVICE static float element(const std::uint8_t* row, int c) {
    if (!Codec::rotated(row)) return Codec::element(row, c);
    float y[HeadDim];
    for (int i = 0; i < HeadDim; ++i) y[i] = Codec::element(row, i);
    Rotation::apply_inverse(y);
    return y[c];
  }
};

}  // namespace skv
