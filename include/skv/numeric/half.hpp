// skv/numeric/half.hpp: fp16 and bf16 storage types with bit-exact conversions on host and device.
//
// The conversions are written with integer operations only, so g++ and nvcc produce the same bits
// (no dependence on F16C, cuda_fp16.h or the rounding mode of the FPU). Widening (to float) is exact;
// narrowing rounds to nearest-even, or upward when a scale must not shrink (Round::Up).
#pragma once

#include <cstdint>
#include <cstring>

#include <skv/config.hpp>

namespace skv {

/// IEEE binary16, stored as its bits. Layout-compatible with CUDA's __half.
struct fp16 {
  std::uint16_t bits;
};

/// bfloat16, stored as its bits. Layout-compatible with CUDA's __nv_bfloat16.
struct bf16 {
  std::uint16_t bits;
};

/// Rounding used when narrowing a float.
enum class Round { NearestEven, Up };

namespace detail {

SKV_HOST_DEVICE SKV_FORCEINLINE std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

SKV_HOST_DEVICE SKV_FORCEINLINE float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Decides whether to add one unit to a truncated magnitude `r` given the dropped bits `rem`
// (out of `half_unit * 2`), for a value of the given sign.
SKV_HOST_DEVICE SKV_FORCEINLINE bool round_increment(std::uint32_t r, std::uint32_t rem, std::uint32_t half_unit,
                                                    bool negative, Round mode) {
  if (mode == Round::NearestEven) return rem > half_unit || (rem == half_unit && (r & 1u));
  return !negative && rem != 0;  // toward +infinity
}

}  // namespace detail

SKV_HOST_DEVICE SKV_FORCEINLINE float to_float(fp16 h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exp = (h.bits >> 10) & 0x1fu;
  const std::uint32_t man = h.bits & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24 is exact in float
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return detail::bits_float(sign | 0x7f800000u | (man << 13));
  return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

SKV_HOST_DEVICE SKV_FORCEINLINE float to_float(bf16 b) { return detail::bits_float(static_cast<std::uint32_t>(b.bits) << 16); }

SKV_HOST_DEVICE SKV_FORCEINLINE float to_float(float f) { return f; }

SKV_HOST_DEVICE inline fp16 to_fp16(float f, Round mode = Round::NearestEven) {
  const std::uint32_t x = detail::float_bits(f);
  const bool negative = (x >> 31) != 0;
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t mag = x & 0x7fffffffu;
  if (mag >= 0x7f800000u) return fp16{static_cast<std::uint16_t>(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (mag < 0x38800000u) {  // below 2^-14: a binary16 subnormal (or zero)
    if (mag == 0) return fp16{sign};
    const std::uint32_t e = mag >> 23;
    if (e < 102) {  // below 2^-25: rounds to zero, or to the smallest subnormal upward
      return fp16{static_cast<std::uint16_t>(sign | (detail::round_increment(0, 1, 2, negative, mode) ? 1u : 0u))};
    }
    const std::uint32_t m = (mag & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    if (detail::round_increment(r, rem, 1u << (shift - 1), negative, mode)) ++r;
    return fp16{static_cast<std::uint16_t>(sign | r)};
  }
  std::uint32_t r = (mag - 0x38000000u) >> 13;  // rebias the exponent, keep 10 mantissa bits
  const std::uint32_t rem = mag & 0x1fffu;
  if (detail::round_increment(r, rem, 0x1000u, negative, mode)) ++r;  // a carry moves into the exponent
  if (r >= 0x7c00u) r = 0x7c00u;                                       // overflow: infinity
  return fp16{static_cast<std::uint16_t>(sign | r)};
}

SKV_HOST_DEVICE inline bf16 to_bf16(float f, Round mode = Round::NearestEven) {
  const std::uint32_t x = detail::float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  std::uint32_t r = x >> 16;
  if (detail::round_increment(r, x & 0xffffu, 0x8000u, (x >> 31) != 0, mode)) ++r;
  return bf16{static_cast<std::uint16_t>(r)};
}

/// Narrowing to a storage type chosen by template parameter (fp16, bf16 or float).
template <class T>
SKV_HOST_DEVICE T from_float(float f, Round mode = Round::NearestEven);
template <>
SKV_HOST_DEVICE inline fp16 from_float<fp16>(float f, Round mode) { return to_fp16(f, mode); }
template <>
SKV_HOST_DEVICE inline bf16 from_float<bf16>(float f, Round mode) { return to_bf16(f, mode); }
template <>
SKV_HOST_DEVICE inline float from_float<float>(float f, Round) { return f; }

/// What the quantizer needs to know about a scale / zero-point storage type.
template <class T>
struct ScaleTraits;

template <>
struct ScaleTraits<fp16> {
  static constexpr float kMax = 65504.0f;
  /// Largest |zero point| the quantizer uses: every integer up to it is exact in this type (and
  /// x / scale stays within a few 1e-4 of a code step in float arithmetic).
  static constexpr float kExactIntegerLimit = 2048.0f;
  static constexpr const char* kName = "fp16";
};

template <>
struct ScaleTraits<bf16> {
  static constexpr float kMax = 3.3895313892515355e38f;
  static constexpr float kExactIntegerLimit = 256.0f;
  static constexpr const char* kName = "bf16";
};

template <>
struct ScaleTraits<float> {
  static constexpr float kMax = 3.4028234663852886e38f;
  static constexpr float kExactIntegerLimit = 4096.0f;  // exact far beyond; kept small for float precision
  static constexpr const char* kName = "fp32";
};

}  // namespace skv
