// skv/cache/ring.hpp: how the full-precision area (the residual ring, the sinks and the rollback
// history) holds one token row of HeadDim elements.
//
//   float     HeadDim floats (the default)
//   fp16      HeadDim fp16 values (Options<Fp16Ring>)
//   Int8Ring  HeadDim 8-bit codes, then an fp16 zero z and an fp16 step s (Options<Int8Ring>):
//             element c is z + code[c] * s. z is the row's minimum rounded down to fp16 and s its
//             range / 255 rounded up, so every code lies in [0, 255]; a code whose element would
//             land above the row's maximum is lowered by one, so a row never leaves the range of its
//             input (an accepted input is accepted again once decoded). code * s is exact in float
//             (8 x 11 significant bits), so z + code * s rounds once, the same with or without FMA.
//
// RingRow<Full, HeadDim> is the codec: kElements elements of Full per row, store (from float),
// load (to float) and one element. Every reader and writer of the area goes through it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <skv/config.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/simd.hpp>

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
  SKV_HOST_DEVICE static float step(const std::uint8_t* row) { return to_float(half_at(row + HeadDim + 2)); }

  /// Encodes the finite floats x[0, HeadDim) with |x| <= M for an fp16-representable M; every
  /// decoded element then lies in [-M, M] too.
  static void store(const float* x, std::uint8_t* row) {
    float lo = x[0], hi = x[0];
    for (int c = 1; c < HeadDim; ++c) {
      lo = x[c] < lo ? x[c] : lo;
      hi = x[c] > hi ? x[c] : hi;
    }
    const fp16 zh = negate(to_fp16(-lo, Round::Up));  // rounded down: z <= lo
    const float z = to_float(zh);
    const fp16 sh = hi > z ? to_fp16((hi - z) / 255.0f, Round::Up) : fp16{0};
    const float s = to_float(sh);
    for (int c = 0; c < HeadDim; ++c) {
      int q = 0;
      if (s > 0.0f) {
        const float t = (x[c] - z) / s + 0.5f;
        q = t <= 0.0f ? 0 : (t >= 255.0f ? 255 : static_cast<int>(t));
        if (q > 0 && z + static_cast<float>(q) * s > hi) --q;
      }
      row[c] = static_cast<std::uint8_t>(q);
    }
    std::memcpy(row + HeadDim, &zh, 2);
    std::memcpy(row + HeadDim + 2, &sh, 2);
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
  SKV_HOST_DEVICE static fp16 half_at(const std::uint8_t* p) {
    fp16 h;
    std::memcpy(&h, p, 2);
    return h;
  }
  static fp16 negate(fp16 h) { return fp16{static_cast<std::uint16_t>(h.bits ^ 0x8000u)}; }
};

}  // namespace skv
