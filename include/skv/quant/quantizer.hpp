// skv/quant/quantizer.hpp: the group quantizer, every knob a template parameter.
//
// Asymmetric min-max quantization of a group x_1..x_G to b bits (docs/design.md, "The math"):
//   scale = (max - min) / (2^b - 1), rounded *up* to the storage type so the range stays covered,
//   zero  = round(-min / scale), an integer stored exactly in the storage type,
//   code  = clamp(round(x / scale) + zero, 0, 2^b - 1),  decode = (code - zero) * scale.
// Decoding is one subtraction of small integers (exact) and one multiplication (one rounding), so
// the host and the device produce the same float bit for bit; nothing can be contracted into an FMA.
//
// Scheme::LloydMax (values only: per-token groups, 1 to 4 bits) replaces the evenly spaced codes by
// the Lloyd-Max levels of a standard normal, the quantizer with the least squared error for normal
// data (rotated values are close to normal: RotateValues). The levels sit on a grid of 256 steps,
// level(code) in [0, 255] (0, 89, 166, 255 at two bits), and a group stores
//   scale = sd * step_b, rounded up (step_b: the standard deviations per grid step),
//   zero  = 127.5 - mean / scale (not an integer),  decode = (level(code) - zero) * scale,
// so a code decodes to mean + sd * (its Lloyd-Max level, to 1/510 of the levels' span), and encode
// picks the nearest level. Kernels read level(code) where they read codes, and everything else
// (integer sums over codes up to 255, the fp16 scale and zero per group) is as for the other schemes.
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
/// (codes centred on 2^(b-1)); LloydMax stores a scale and a zero point for the Lloyd-Max levels
/// of a standard normal (values, 1 to 4 bits, per-token groups).
enum class Scheme { Asymmetric, Symmetric, LloydMax };

namespace detail {

template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T min_of(T a, T b) { return b < a ? b : a; }
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T max_of(T a, T b) { return a < b ? b : a; }
template <class T>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr T clamp_to(T x, T lo, T hi) { return x < lo ? lo : (hi < x ? hi : x); }
SKV_HOST_DEVICE SKV_FORCEINLINE float abs_f(float x) { return x < 0.0f ? -x : x; }
/// floor(x), exact for every float. On the device floorf; on the host the same value without a call
/// into libm (which -Os keeps): below 2^23 in magnitude through a truncating conversion; above it
/// every float is an integer (infinities and NaN are returned as they are).
SKV_HOST_DEVICE SKV_FORCEINLINE float floor_f(float x) {
#if defined(__CUDA_ARCH__)
  return ::floorf(x);
#else
  if (!(abs_f(x) < 8388608.0f)) return x;
  const float t = static_cast<float>(static_cast<int>(x));
  return t > x ? t - 1.0f : t;  // -0.0 gives +0.0; round_half_up never passes it (x + 0.5 is never -0.0)
#endif
}
/// Round half up, identical on host and device (both floors are exact).
SKV_HOST_DEVICE SKV_FORCEINLINE float round_half_up(float x) { return floor_f(x + 0.5f); }

/// Level `code` of the b-bit Lloyd-Max quantizer of a standard normal on a grid of 0..255: the
/// levels L_i (+-0.4528, +-1.5104 at two bits) as round(255 (L_i - L_0) / (L_last - L_0)), one byte
/// each, lowest first (symmetric: level(i) + level(2^b - 1 - i) = 255).
template <int Bits>
SKV_HOST_DEVICE SKV_FORCEINLINE constexpr std::uint32_t lloyd_max_level(std::uint32_t code) {
  constexpr std::uint64_t kLow = Bits == 1   ? 0xff00ull
                                 : Bits == 2 ? 0xffa65900ull
                                 : Bits == 3 ? 0xffcfac8e71533000ull
                                             : 0x7a6d615445341f00ull;
  constexpr std::uint64_t kHigh = Bits == 4 ? 0xffe0cbbaab9e9285ull : 0ull;
  return static_cast<std::uint32_t>(((code < 8 ? kLow : kHigh) >> (8 * (code & 7))) & 0xffu);
}

/// Standard deviations per grid step of lloyd_max_level<Bits>: (L_last - L_0) / 255.
template <int Bits>
constexpr float kLloydMaxStep = Bits == 1 ? 0.0062579183f : Bits == 2 ? 0.0118464124f : Bits == 3 ? 0.0168780046f
                                                                                                   : 0.0214320744f;

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
  static_assert(QuantScheme != Scheme::Symmetric || Bits >= 2,
                "skv::Quantizer: Scheme::Symmetric needs Bits >= 2 (one bit has no centre)");
  static_assert(detail::IsScaleType<ScaleT>::value, "skv::Quantizer: ScaleT must be skv::fp16, skv::bf16 or float");
  static_assert(QuantScheme != Scheme::LloydMax || (Bits <= 4 && GroupAxis == Axis::Token),
                "skv::Quantizer: Scheme::LloydMax is for values: Bits 1 to 4, Axis::Token groups");

  using Scale = ScaleT;
  static constexpr int kBits = Bits;
  static constexpr int kGroupSize = GroupSize;
  static constexpr Axis kAxis = GroupAxis;
  static constexpr Scheme kScheme = QuantScheme;
  static constexpr bool kHasZero = QuantScheme != Scheme::Symmetric;
  /// Codes decode through a table of levels (Scheme::LloydMax), not as the integers they are.
  static constexpr bool kCodebook = QuantScheme == Scheme::LloydMax;
  static constexpr std::uint32_t kMaxCode = (1u << Bits) - 1u;
  /// Largest level(code): kMaxCode, or 255 for a codebook's grid.
  static constexpr std::uint32_t kMaxLevel = kCodebook ? 255u : kMaxCode;
  /// Symmetric codes are centred here; the implied zero point.
  static constexpr float kSymmetricZero = static_cast<float>(1u << (Bits - 1));
  /// Largest symmetric code magnitude (2^(b-1) - 1; symmetric needs b >= 2).
  static constexpr float kSymmetricMaxCode = Bits >= 2 ? kSymmetricZero - 1.0f : 1.0f;
  /// Bytes of metadata (scale, and zero point when asymmetric) per group.
  static constexpr int kMetaBytes = static_cast<int>(sizeof(ScaleT)) * (kHasZero ? 2 : 1);
  /// Tokens spanned by one group (the granularity at which a block can be quantized).
  static constexpr int kTokenExtent = GroupAxis == Axis::Channel ? GroupSize : 1;
  /// Scheme::LloydMax: the largest |mean| / scale a group's fit allows (|zero| <= 32768 + 127.5).
  static constexpr float kCodebookZeroLimit = 32768.0f;
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

  /// The value code stands for before zero and scale apply: the code itself, or its codebook level.
  SKV_HOST_DEVICE SKV_FORCEINLINE static constexpr std::uint32_t level(std::uint32_t code) {
    return kCodebook ? detail::lloyd_max_level<Bits>(code) : code;
  }

  /// Chooses the stored parameters for a group with the given finite minimum and maximum.
  SKV_HOST_DEVICE static Stored fit(float mn, float mx) {
    static_assert(!kCodebook, "skv::Quantizer: Scheme::LloydMax groups are fitted by fit_codebook");
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
    static_assert(!kCodebook, "skv::Quantizer: Scheme::LloydMax has no clipping search (its levels already "
                              "minimize the squared error of normal data)");
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

  /// Scheme::LloydMax: the group x[i * stride], i < GroupSize (finite), as mean + sd * level. The
  /// scale is sd * kLloydMaxStep rounded up, and at least max|x| / kCodebookZeroLimit, so that the
  /// zero point 127.5 - mean / scale fits fp16; the deviations are summed divided by max|x|, so that
  /// no square overflows or underflows. Constant groups are exact as in fit() (scale |x|, zero
  /// -sign(x), level 0); groups whose scale underflows are stored as zeros. A group whose deviation
  /// is tiny beside its mean (sd * step below that floor) keeps an error of up to half the widest
  /// gap between levels times the scale plus the zero point's rounding, 48 * max|x| / 32768 at two
  /// bits: the codebook is for spread data (rotated values), min-max codes for near-constant groups.
  SKV_HOST_DEVICE static Stored fit_codebook(const float* x, std::size_t stride) {
    static_assert(kCodebook, "skv::Quantizer::fit_codebook: the scheme is not Scheme::LloydMax");
    const ScaleT zero_storage = from_float<ScaleT>(0.0f);
    float mn = x[0], mx = x[0], sum = 0.0f;
    for (int i = 0; i < GroupSize; ++i) {
      const float v = x[i * stride];
      mn = detail::min_of(mn, v);
      mx = detail::max_of(mx, v);
      sum += v;
    }
    const float amax = detail::max_of(detail::abs_f(mn), detail::abs_f(mx));
    if (mn == mx) {
      const ScaleT v = from_float<ScaleT>(amax);
      if (mx == 0.0f) return Stored{zero_storage, zero_storage};
      if (to_float(v) == amax) return Stored{v, from_float<ScaleT>(mx > 0.0f ? -1.0f : 1.0f)};
    }
    const float mean = sum / static_cast<float>(GroupSize);
    float ss = 0.0f;  // sum of ((x - mean) / amax)^2: each term at most 4
    for (int i = 0; i < GroupSize; ++i) {
      const float d = (x[i * stride] - mean) / amax;
      ss = ::fmaf(d, d, ss);
    }
    const float sd = amax * ::sqrtf(ss / static_cast<float>(GroupSize));
    const float s = detail::max_of(sd * detail::kLloydMaxStep<Bits>, amax / kCodebookZeroLimit);
    const ScaleT scale = from_float<ScaleT>(s, Round::Up);
    if (to_float(scale) == 0.0f) return Stored{zero_storage, zero_storage};
    return Stored{scale, from_float<ScaleT>(127.5f - mean / to_float(scale))};
  }

  /// The code of one element (a scale of zero means a group of zeros). Scheme::LloydMax: the
  /// nearest level to x / scale + zero (the upper one at a midpoint).
  SKV_HOST_DEVICE static std::uint32_t encode(float x, Params p) {
    if constexpr (kCodebook) {
      if (p.scale == 0.0f) return 0u;
      const float t = x / p.scale + p.zero;
      std::uint32_t c = 0;
      for (std::uint32_t i = 0; i < kMaxCode; ++i)
        c += t >= 0.5f * static_cast<float>(level(i) + level(i + 1)) ? 1u : 0u;
      return c;
    }
    if (p.scale == 0.0f) return static_cast<std::uint32_t>(p.zero);
    const float c = detail::round_half_up(x / p.scale) + p.zero;
    return static_cast<std::uint32_t>(detail::clamp_to(c, 0.0f, static_cast<float>(kMaxCode)));
  }

  /// The one dequantization function: the CPU reference and the CUDA kernels both call it.
  SKV_HOST_DEVICE SKV_FORCEINLINE static float decode(std::uint32_t code, Params p) {
    return (static_cast<float>(level(code)) - p.zero) * p.scale;
  }

  /// Fits and encodes `GroupSize` elements read at x[i * stride]; writes one code per element to
  /// codes[i * code_stride]. Returns the stored parameters.
  SKV_HOST_DEVICE static Stored quantize_group(const float* x, int stride, std::uint8_t* codes, int code_stride) {
    Stored s;
    if constexpr (kCodebook) {
      s = fit_codebook(x, static_cast<std::size_t>(stride));
    } else {
      float mn = x[0], mx = x[0];
      for (int i = 1; i < GroupSize; ++i) {
        mn = detail::min_of(mn, x[i * stride]);
        mx = detail::max_of(mx, x[i * stride]);
      }
      s = fit(mn, mx);
    }
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
