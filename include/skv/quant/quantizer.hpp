// skv/quant/quantizer.hpp: the group quantizer, every knob a template parameter.
//
// Asymmetric min-max quantization of a group x_1..x_G to b bits (docs/design.md, "The math"):
//   scale = (max - min) / (2^b - 1), rounded *up* to the storage type so the range stays covered,
//   zero  = round(-min / scale), an integer stored exactly in the storage type,
//   code  = clamp(round(x / scale) + zero, 0, 2^b - 1),  decode = (code - zero) * scale.
// Decoding is one subtraction of small integers (exact) and one multiplication (one rounding), so
// the host and the device produce the same float bit for bit; nothing can be contracted into an FMA.
//
// A zero point must be an exact integer in the storage type (|zero| <= 2048 for fp16). Groups far
// from the origin relative to their width (|min| > 2048 * scale) therefore get a larger scale,
// scale >= max(|min|, |max|) / 2048; the bound |x - decode(encode(x))| <= scale / 2 holds for every
// group with the scale actually stored (up to float rounding of x / scale: at most 2.5e-4 of a
// step, since |x / scale| stays below 2^12). Constant groups whose value the storage type represents are
// reproduced exactly (scale = |x|, zero = -sign(x), code 0). Groups whose scale underflows to 0
// (every |x| below about 1e-42) are stored as zeros, scale 0 and zero point 0.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <skv/config.hpp>
#include <skv/numeric/half.hpp>

namespace skv {

/// Which elements share a scale: a group runs along the token axis of one channel (Channel: the
/// right choice for keys, whose channels have stable offsets and outliers) or along the channels of
/// one token (Token: the right choice for values).
enum class Axis { Channel, Token };

/// Asymmetric stores a scale and an integer zero point per group; Symmetric stores a scale only
/// (codes centred on 2^(b-1)).
enum class Scheme { Asymmetric, Symmetric };

namespace detail {

template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T min_of(T a, T b) { return b < a ? b : a; }
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T max_of(T a, T b) { return a < b ? b : a; }
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T clamp_to(T x, T lo, T hi) { return x < lo ? lo : (hi < x ? hi : x); }
SKV_HOST_DEVICE SKV_FORCEINLINE float abs_f(float x) { return x < 0.0f ? -x : x; }
/// Round half up, identical on host and device (floorf is exact everywhere).
SKV_HOST_DEVICE SKV_FORCEINLINE float round_half_up(float x) { return ::floorf(x + 0.5f); }

template <class T>
struct IsScaleType : std::false_type {};
template <>
struct IsScaleType<fp16> : std::true_type {};
template <>
struct IsScaleType<bf16> : std::true_type {};
template <>
struct IsScaleType<float> : std::true_type {};

}  // namespace detail

/// A group quantizer: `Bits` per code, `GroupSize` elements sharing a scale along `GroupAxis`.
template <int Bits, int GroupSize, Axis GroupAxis, Scheme QuantScheme = Scheme::Asymmetric, class ScaleT = fp16>
struct Quantizer {
  static_assert(Bits >= 1 && Bits <= 8, "skv::Quantizer: Bits must be between 1 and 8");
  static_assert(GroupSize >= 1 && GroupSize <= 4096, "skv::Quantizer: GroupSize must be between 1 and 4096");
  static_assert((GroupSize & (GroupSize - 1)) == 0, "skv::Quantizer: GroupSize must be a power of two");
  static_assert(QuantScheme == Scheme::Asymmetric || Bits >= 2,
                "skv::Quantizer: Scheme::Symmetric needs Bits >= 2 (one bit has no centre)");
  static_assert(detail::IsScaleType<ScaleT>::value, "skv::Quantizer: ScaleT must be skv::fp16, skv::bf16 or float");

  using Scale = ScaleT;
  static constexpr int kBits = Bits;
  static constexpr int kGroupSize = GroupSize;
  static constexpr Axis kAxis = GroupAxis;
  static constexpr Scheme kScheme = QuantScheme;
  static constexpr bool kHasZero = QuantScheme == Scheme::Asymmetric;
  static constexpr std::uint32_t kMaxCode = (1u << Bits) - 1u;
  /// Symmetric codes are centred here; the implied zero point.
  static constexpr float kSymmetricZero = static_cast<float>(1u << (Bits - 1));
  /// Largest symmetric code magnitude (2^(b-1) - 1; symmetric needs b >= 2).
  static constexpr float kSymmetricMaxCode = Bits >= 2 ? kSymmetricZero - 1.0f : 1.0f;
  /// Bytes of metadata (scale, and zero point when asymmetric) per group.
  static constexpr int kMetaBytes = static_cast<int>(sizeof(ScaleT)) * (kHasZero ? 2 : 1);
  /// Tokens spanned by one group (the granularity at which a block can be quantized).
  static constexpr int kTokenExtent = GroupAxis == Axis::Channel ? GroupSize : 1;
  /// Largest |x| accepted (checked by the cache): half the storage type's range, so that every
  /// scale is finite, and at most 2^90, so that attention over up to 2^31 tokens of such values
  /// (sums of probability-weighted values, in float) cannot overflow: with fp16 scales 32752,
  /// with bf16 or float scales 2^90 (about 1.2e27).
  static constexpr float kMaxInput = detail::min_of(ScaleTraits<ScaleT>::kMax * 0.5f, 1237940039285380274899124224.0f);

  /// Storage cost per element, metadata included.
  static constexpr double bits_per_element() { return Bits + 8.0 * kMetaBytes / GroupSize; }

  /// Group parameters as stored (zero is unused when symmetric).
  struct Stored {
    ScaleT scale;
    ScaleT zero;
  };

  /// Group parameters ready for arithmetic.
  struct Params {
    float scale;
    float zero;
  };

  SKV_HOST_DEVICE static Params params(ScaleT scale, ScaleT zero) {
    return Params{to_float(scale), kHasZero ? to_float(zero) : kSymmetricZero};
  }
  SKV_HOST_DEVICE static Params params(Stored s) { return params(s.scale, s.zero); }

  /// Chooses the stored parameters for a group with the given finite minimum and maximum.
  SKV_HOST_DEVICE static Stored fit(float mn, float mx) {
    const ScaleT zero_storage = from_float<ScaleT>(0.0f);
    if (kHasZero) {
      if (mn == mx) {  // constant group: exact whenever the storage type holds the value
        const ScaleT v = from_float<ScaleT>(detail::abs_f(mx));
        if (to_float(v) == detail::abs_f(mx)) {
          if (mx == 0.0f) return Stored{zero_storage, zero_storage};
          return Stored{v, from_float<ScaleT>(mx > 0.0f ? -1.0f : 1.0f)};
        }
      }
      const float amax = detail::max_of(detail::abs_f(mn), detail::abs_f(mx));
      const float s = detail::max_of((mx - mn) / static_cast<float>(kMaxCode),
                                     amax / ScaleTraits<ScaleT>::kExactIntegerLimit);
      const ScaleT scale = from_float<ScaleT>(s, Round::Up);
      // |x| below ~1e-42: both terms of s underflow to 0 and -mn / 0 would store a NaN or Inf zero
      // point; such a group is stored as zeros (error < 1e-41), like a group of exact zeros
      if (to_float(scale) == 0.0f) return Stored{zero_storage, zero_storage};
      const float zero = detail::round_half_up(-mn / to_float(scale));
      return Stored{scale, from_float<ScaleT>(zero)};
    }
    const float amax = detail::max_of(detail::abs_f(mn), detail::abs_f(mx));
    return Stored{from_float<ScaleT>(amax / kSymmetricMaxCode, Round::Up), zero_storage};
  }

  /// Ranges tried by fit_clipped: the full range and the range shrunk by clip_ratio(i), i < kClipCandidates.
  static constexpr int kClipCandidates = 10;
  /// 1, 0.95, ..., 0.55 (each the float nearest to (20 - i) / 20).
  SKV_HOST_DEVICE static constexpr float clip_ratio(int i) { return static_cast<float>(20 - i) / 20.0f; }

  /// The clipping search (Options ClipKeys / ClipValues): fits the group x[i * stride], i < GroupSize,
  /// whose minimum and maximum are mn and mx, trying the full range and ranges shrunk around the
  /// midpoint (around zero when symmetric), and keeps the one with the lowest search_error over the
  /// group (the full range on ties).
  ///
  /// Every product that meets a sum is an explicit fmaf, so no compiler flag (-ffp-contract, -mfma)
  /// changes the result: the vectorized search of the host append (cache/quantize_block_fast.hpp)
  /// chooses the same parameters bit for bit.
  SKV_HOST_DEVICE static Stored fit_clipped(const float* x, std::size_t stride, float mn, float mx) {
    Stored best = fit(mn, mx);
    if (mn == mx) return best;
    float best_err = search_error(x, stride, params(best));
    const float mid = kHasZero ? (mn + mx) * 0.5f : 0.0f;  // |mn|, |mx| <= kMaxInput: the sum is finite
    for (int i = 1; i < kClipCandidates; ++i) {
      const float r = clip_ratio(i);
      const Stored s = fit(::fmaf(-r, mid - mn, mid), ::fmaf(r, mx - mid, mid));
      const float e = search_error(x, stride, params(s));
      if (e < best_err) {
        best = s;
        best_err = e;
      }
    }
    return best;
  }

  /// The error the clipping search compares, in units of the candidate's step: with
  /// t = x * (1 / scale) + zero (one fmaf) and code c = clamp(round(t), 0, 2^b - 1) (to nearest,
  /// ties to even), the sum of (t - c)^2 over the group, elements i = 0, 2, 4, ... and i = 1, 3, ...
  /// summed separately and then added; times scale^2 it is the group's squared error. The code is
  /// encode's up to ties and the last bit of x / scale; the search needs a consistent ranking, not
  /// the stored codes, and this form costs a few vector operations per element and candidate (no
  /// division, two independent sums). A zero scale (a group stored as zeros) has error 0.
  SKV_HOST_DEVICE static float search_error(const float* x, std::size_t stride, Params p) {
    if (p.scale == 0.0f) return 0.0f;
    const float inv = 1.0f / p.scale;
    float e[2] = {0.0f, 0.0f};
    for (int i = 0; i < GroupSize; ++i) {
      const float t = ::fmaf(x[i * stride], inv, p.zero);
      const float d = t - detail::clamp_to(::nearbyintf(t), 0.0f, static_cast<float>(kMaxCode));
      e[i % 2] = ::fmaf(d, d, e[i % 2]);
    }
    return (e[0] + e[1]) * (p.scale * p.scale);
  }

  /// Sum over the group of (x - decode(encode(x)))^2.
  SKV_HOST_DEVICE static float squared_error(const float* x, std::size_t stride, Params p) {
    float e = 0.0f;
    for (int i = 0; i < GroupSize; ++i) {
      const float d = x[i * stride] - decode(encode(x[i * stride], p), p);
      e += d * d;
    }
    return e;
  }

  /// The code of one element (a scale of zero means a group of zeros).
  SKV_HOST_DEVICE static std::uint32_t encode(float x, Params p) {
    if (p.scale == 0.0f) return static_cast<std::uint32_t>(p.zero);
    const float c = detail::round_half_up(x / p.scale) + p.zero;
    return static_cast<std::uint32_t>(detail::clamp_to(c, 0.0f, static_cast<float>(kMaxCode)));
  }

  /// The one dequantization function: the CPU reference and the CUDA kernels both call it.
  SKV_HOST_DEVICE SKV_FORCEINLINE static float decode(std::uint32_t code, Params p) {
    return (static_cast<float>(code) - p.zero) * p.scale;
  }

  /// Fits and encodes `GroupSize` elements read at x[i * stride]; writes one code per element to
  /// codes[i * code_stride]. Returns the stored parameters.
  SKV_HOST_DEVICE static Stored quantize_group(const float* x, int stride, std::uint8_t* codes, int code_stride) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < GroupSize; ++i) {
      mn = detail::min_of(mn, x[i * stride]);
      mx = detail::max_of(mx, x[i * stride]);
    }
    const Stored s = fit(mn, mx);
    const Params p = params(s);
    for (int i = 0; i < GroupSize; ++i) codes[i * code_stride] = static_cast<std::uint8_t>(encode(x[i * stride], p));
    return s;
  }
};

template <class Q>
struct IsQuantizer : std::false_type {};
template <int B, int G, Axis A, Scheme S, class T>
struct IsQuantizer<Quantizer<B, G, A, S, T>> : std::true_type {};

}  // namespace skv
