// skv/cache/layout.hpp: where every byte of a quantized cache lives (docs/design.md, "Bytes").
//
// A page holds PageSize tokens of every KV head: [head 0][head 1]...; one head's block is
//   [key codes][key scales][key zeros][value codes][value scales][value zeros]
// each part padded to 16 bytes. Codes are token-major: row t holds the HeadDim codes of token t,
// densely packed (pack.hpp). Metadata is one entry per group: for Axis::Channel groups the entries
// form rows of HeadDim (one row per PageSize / GroupSize token group); for Axis::Token groups rows
// of HeadDim / GroupSize (one row per token).
//
// A sequence's tokens come in three runs, in order: kSinkTokens sink tokens (Options: Sinks<N>),
// kept in full precision; quantized tokens, in pages, addressed by their quantized index j (token
// kSinkTokens + j); and the tokens not yet quantized. Both full-precision parts live in the sequence's
// full-precision area of residual_elements(num_kv_heads) elements of FullPrecision (float; fp16 with
// Options<Fp16Ring>; bytes with Options<Int8Ring>), in rows of kRingRow elements (cache/ring.hpp):
//   [2][kResidualCapacity][num_kv_heads][kRingRow]  the ring (residual window), keys first; token t
//                                                   sits in slot (t - kSinkTokens) % kResidualCapacity
//   [2][kSinkTokens][num_kv_heads][kRingRow]        the sinks, keys first
// quantized_length(length) is a pure function of the length, so a reader needs nothing but the
// length to know where each token is. With Options<RotateKeys> every stored key (sink, page, ring)
// is the rotated key R k; with Options<PreRopeKeys> it is R(-t) k, key t before the rotary
// embedding (the view's rope_freq); with Options<RotateValues> every stored value is R_v v.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <skv/cache/options.hpp>
#include <skv/cache/ring.hpp>
#include <skv/config.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {

namespace detail {
SKV_HOST_DEVICE constexpr std::size_t align16(std::size_t n) { return (n + 15) / 16 * 16; }
}  // namespace detail

/// Byte layout of one quantized tensor (keys or values) of one KV head within one page.
template <class Q, int HeadDim, int PageSize>
struct TensorLayout {
  static_assert(IsQuantizer<Q>::value, "skv::TensorLayout: Q must be an skv::Quantizer");
  static_assert(HeadDim % 8 == 0, "skv: HeadDim must be a multiple of 8");
  static_assert(Q::kAxis != Axis::Token || HeadDim % Q::kGroupSize == 0,
                "skv: a Token-axis quantizer's GroupSize must divide HeadDim");
  static_assert(Q::kAxis != Axis::Channel || PageSize % Q::kGroupSize == 0,
                "skv: a Channel-axis quantizer's GroupSize must divide PageSize");

  using Quantizer = Q;
  using Scale = typename Q::Scale;
  using Params = typename Q::Params;

  static constexpr int kRowBytes = HeadDim * Q::kBits / 8;  ///< packed codes of one token
  /// Metadata entries per row and rows per page.
  static constexpr int kMetaCols = Q::kAxis == Axis::Channel ? HeadDim : HeadDim / Q::kGroupSize;
  static constexpr int kMetaRows = Q::kAxis == Axis::Channel ? PageSize / Q::kGroupSize : PageSize;
  static constexpr std::size_t kCodeBytes = detail::align16(static_cast<std::size_t>(PageSize) * kRowBytes);
  static constexpr std::size_t kScaleBytes = detail::align16(sizeof(Scale) * kMetaCols * kMetaRows);
  static constexpr std::size_t kZeroBytes = Q::kHasZero ? kScaleBytes : 0;
  static constexpr std::size_t kScaleOffset = kCodeBytes;
  static constexpr std::size_t kZeroOffset = kCodeBytes + kScaleBytes;
  static constexpr std::size_t kBytes = kCodeBytes + kScaleBytes + kZeroBytes;

  /// Index of the metadata entry for token slot t (within the page) and channel c.
  SKV_HOST_DEVICE static constexpr int meta_index(int t, int c) {
    return Q::kAxis == Axis::Channel ? (t / Q::kGroupSize) * HeadDim + c : t * kMetaCols + c / Q::kGroupSize;
  }
};

/// Read access to one tensor block (one head, one page).
template <class Q, int HeadDim, int PageSize>
struct TensorBlock {
  using L = TensorLayout<Q, HeadDim, PageSize>;
  const std::uint8_t* base;

  SKV_HOST_DEVICE const std::uint8_t* row(int t) const { return base + static_cast<std::size_t>(t) * L::kRowBytes; }
  SKV_HOST_DEVICE const typename L::Scale* scales() const {
    return reinterpret_cast<const typename L::Scale*>(base + L::kScaleOffset);
  }
  SKV_HOST_DEVICE const typename L::Scale* zeros() const {
    return reinterpret_cast<const typename L::Scale*>(base + L::kZeroOffset);
  }
  SKV_HOST_DEVICE typename L::Params params(int t, int c) const {
    const int m = L::meta_index(t, c);
    return Q::params(scales()[m], Q::kHasZero ? zeros()[m] : typename L::Scale{});
  }
  SKV_HOST_DEVICE std::uint32_t code(int t, int c) const { return unpack_code<Q::kBits>(row(t), c); }
  /// The dequantized element: the shared decode function applied to the stored code.
  SKV_HOST_DEVICE float dequantize(int t, int c) const { return Q::decode(code(t, c), params(t, c)); }
};

/// Every compile-time fact about a cache configuration; shared by the host cache, the views and
/// the GPU kernels.
template <class KeyQ, class ValueQ, int HeadDim, int PageSize, int Residual, class Opts = Options<>>
struct CacheLayout {
  static_assert(IsQuantizer<KeyQ>::value, "skv: KeyQuantizer must be an skv::Quantizer");
  static_assert(IsQuantizer<ValueQ>::value, "skv: ValueQuantizer must be an skv::Quantizer");
  static_assert(HeadDim >= 8 && HeadDim <= 1024 && HeadDim % 8 == 0,
                "skv: HeadDim must be a multiple of 8 between 8 and 1024");
  static_assert(PageSize >= 1 && (PageSize & (PageSize - 1)) == 0, "skv: PageSize must be a power of two");
  static_assert(Residual >= 0, "skv: Residual must not be negative");
  static_assert(IsOptions<Opts>::value, "skv: the options of a cache must be skv::Options<...>");
  static_assert(!Opts::kRotateKeys || (HeadDim & (HeadDim - 1)) == 0,
                "skv: RotateKeys needs a power-of-two HeadDim (the Walsh-Hadamard transform)");
  static_assert(!Opts::kRotateValues || (HeadDim & (HeadDim - 1)) == 0,
                "skv: RotateValues needs a power-of-two HeadDim (the Walsh-Hadamard transform)");
  static_assert(!KeyQ::kCodebook, "skv: Scheme::LloydMax is for values; the key kernels read key codes as integers");
  static_assert(!(Opts::kFp16Ring || Opts::kInt8Ring) ||
                    (KeyQ::kMaxInput <= 65504.0f && ValueQ::kMaxInput <= 65504.0f),
                "skv: Fp16Ring and Int8Ring hold tokens in fp16 or with fp16 zeros, so both quantizers must take "
                "only fp16-sized inputs (fp16 scales, the default)");
  static_assert(!(Opts::kFp16Ring && Opts::kInt8Ring), "skv: Fp16Ring and Int8Ring exclude each other");
  static_assert(!(Opts::kPreRopeKeys && Opts::kRotateKeys),
                "skv: PreRopeKeys and RotateKeys exclude each other (the Hadamard rotation mixes the channel pairs "
                "the rotary embedding turns)");
  static_assert(!(Opts::kClipValues && ValueQ::kCodebook),
                "skv: ClipValues and Scheme::LloydMax values do not combine (the codebook fits the group's mean "
                "and deviation, not its range)");

  using KeyQuantizer = KeyQ;
  using ValueQuantizer = ValueQ;
  using CacheOptions = Opts;
  using Keys = TensorLayout<KeyQ, HeadDim, PageSize>;
  using Values = TensorLayout<ValueQ, HeadDim, PageSize>;
  using KeyBlock = TensorBlock<KeyQ, HeadDim, PageSize>;
  using ValueBlock = TensorBlock<ValueQ, HeadDim, PageSize>;

  static constexpr int kKeyBits = KeyQ::kBits;
  static constexpr int kValueBits = ValueQ::kBits;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kPageSize = PageSize;
  static constexpr int kResidual = Residual;
  static constexpr int kSinkTokens = Opts::kSinkTokens;
  static constexpr bool kRotateKeys = Opts::kRotateKeys;
  static constexpr std::uint64_t kRotationSeed = Opts::kRotationSeed;
  static constexpr bool kClipKeys = Opts::kClipKeys;
  static constexpr bool kClipValues = Opts::kClipValues;
  static constexpr bool kRotateValues = Opts::kRotateValues;
  static constexpr std::uint64_t kValueRotationSeed = Opts::kValueRotationSeed;
  static constexpr bool kFp16Ring = Opts::kFp16Ring;
  static constexpr bool kInt8Ring = Opts::kInt8Ring;
  static constexpr bool kPreRopeKeys = Opts::kPreRopeKeys;
  /// Element type of the full-precision area (ring and sinks): float, fp16, or bytes (8-bit rows).
  using FullPrecision = std::conditional_t<kInt8Ring, std::uint8_t, std::conditional_t<kFp16Ring, fp16, float>>;
  /// How the area holds one token row of one head, and its elements of FullPrecision.
  using Ring = RingRow<FullPrecision, HeadDim>;
  /// Whether the 8-bit area holds key rows rotated (cache/ring.hpp): Int8Ring keys that RotateKeys
  /// leaves in the caller's basis, for a power-of-two HeadDim, in the basis RotateKeys would use.
  static constexpr bool kRingRotatesKeys = kInt8Ring && !kRotateKeys && (HeadDim & (HeadDim - 1)) == 0;
  /// The codec of key rows and of value rows (the same size as Ring's rows).
  using KeyRing = std::conditional_t<kRingRotatesKeys, RotatedRingRow<HeadDim, kRotationSeed, KeyQ>, Ring>;
  using ValueRing = Ring;
  static constexpr int kRingRow = Ring::kElements;
  /// Whether the area holds plain floats (the GPU caches and the scalar quantize_block need it).
  static constexpr bool kFloatRing = std::is_same<FullPrecision, float>::value;
  /// Tokens quantized together: one Channel-axis group (both extents are powers of two).
  static constexpr int kBlockTokens = detail::max_of(KeyQ::kTokenExtent, ValueQ::kTokenExtent);
  static_assert(PageSize % kBlockTokens == 0, "skv: PageSize must be a multiple of every Channel-axis GroupSize");
  static_assert(Residual % kBlockTokens == 0, "skv: Residual must be a multiple of every Channel-axis GroupSize");
  /// Slots of the full-precision ring per sequence.
  static constexpr int kResidualCapacity = Residual + kBlockTokens;

  /// Bytes of one KV head in one page, and of one whole page.
  static constexpr std::size_t kHeadBytes = Keys::kBytes + Values::kBytes;
  SKV_HOST_DEVICE static constexpr std::size_t page_bytes(int num_kv_heads) {
    return kHeadBytes * static_cast<std::size_t>(num_kv_heads);
  }
  /// Quantized bytes per token per KV head, keys and values, codes and metadata (page padding
  /// included; it is zero for the shipped configurations).
  static constexpr double bytes_per_token() { return static_cast<double>(kHeadBytes) / PageSize; }
  /// Bits per cached element (keys and values averaged), metadata included.
  static constexpr double bits_per_element() { return bytes_per_token() * 8.0 / (2.0 * HeadDim); }
  /// Bits per element of a row of the full-precision area: 32, 16, or 8 + 32 / HeadDim with Int8Ring.
  static constexpr double ring_bits_per_element() { return 8.0 * Ring::kBytes / HeadDim; }
  /// The same averaged over a sequence of `length` > 0 tokens whose sinks are full precision (at
  /// ring_bits_per_element; tokens still in the ring count at the rate they will be quantized at).
  static constexpr double bits_per_element(int length) {
    return (bits_per_element() * (length - sink_length(length)) + ring_bits_per_element() * sink_length(length)) /
           length;
  }
  /// Elements (FullPrecision) of a sequence's full-precision area: the residual ring, then the sinks.
  SKV_HOST_DEVICE static constexpr std::size_t residual_elements(int num_kv_heads) {
    return 2u * (kResidualCapacity + kSinkTokens) * static_cast<std::size_t>(num_kv_heads) * kRingRow;
  }
  /// The same in floats, for the float area of a layout without Fp16Ring (the GPU caches' case).
  SKV_HOST_DEVICE static constexpr std::size_t residual_floats(int num_kv_heads) {
    static_assert(kFloatRing, "skv: this layout's full-precision area is not float: use residual_elements");
    return residual_elements(num_kv_heads);
  }
  /// Bytes of the sinks per token per KV head (full-precision keys and values).
  static constexpr std::size_t sink_bytes_per_token() { return 2u * Ring::kBytes; }

  /// Sink tokens of a sequence of `length` tokens.
  SKV_HOST_DEVICE static constexpr int sink_length(int length) { return length < kSinkTokens ? length : kSinkTokens; }
  /// Tokens of a sequence of `length` tokens that are stored quantized: quantized indices
  /// [0, quantized_length), tokens [kSinkTokens, kSinkTokens + quantized_length).
  SKV_HOST_DEVICE static constexpr int quantized_length(int length) {
    return length <= kSinkTokens + Residual ? 0 : (length - kSinkTokens - Residual) / kBlockTokens * kBlockTokens;
  }
  /// First token in the ring: the ring holds tokens [residual_begin(length), length).
  SKV_HOST_DEVICE static constexpr int residual_begin(int length) {
    return sink_length(length) + quantized_length(length);
  }
  SKV_HOST_DEVICE static constexpr int residual_slot(int token) { return (token - kSinkTokens) % kResidualCapacity; }
  /// Offset (in elements) of residual key / value `token`, head `h` within a sequence's ring.
  SKV_HOST_DEVICE static constexpr std::size_t residual_key_offset(int token, int h, int num_kv_heads) {
    return (static_cast<std::size_t>(residual_slot(token)) * num_kv_heads + h) * kRingRow;
  }
  SKV_HOST_DEVICE static constexpr std::size_t residual_value_offset(int token, int h, int num_kv_heads) {
    return residual_key_offset(token, h, num_kv_heads) +
           static_cast<std::size_t>(kResidualCapacity) * num_kv_heads * kRingRow;
  }
  /// Offset (in elements) of sink key / value `token` (< kSinkTokens), head `h`.
  SKV_HOST_DEVICE static constexpr std::size_t sink_key_offset(int token, int h, int num_kv_heads) {
    return (2u * kResidualCapacity + static_cast<std::size_t>(token)) * num_kv_heads * kRingRow +
           static_cast<std::size_t>(h) * kRingRow;
  }
  SKV_HOST_DEVICE static constexpr std::size_t sink_value_offset(int token, int h, int num_kv_heads) {
    return sink_key_offset(token, h, num_kv_heads) + static_cast<std::size_t>(kSinkTokens) * num_kv_heads * kRingRow;
  }
};

}  // namespace skv
