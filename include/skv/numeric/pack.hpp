// skv/numeric/pack.hpp: dense sub-byte packing of 1..8-bit codes.
//
// Codes form a little-endian bit stream: code i occupies bits [i*Bits, (i+1)*Bits) of the byte
// array, least significant bit first. 3-, 5- and 6-bit codes are packed densely (no padding to a
// byte). Eight codes always fill exactly Bits bytes, so rows whose length is a multiple of 8 start
// on a byte boundary and can be unpacked eight codes at a time.
#pragma once

#include <cstddef>
#include <cstdint>

#include <skv/config.hpp>

namespace skv {

/// Compile-time facts about a code width.
template <int Bits>
struct PackTraits {
  static_assert(Bits >= 1 && Bits <= 8, "skv: Bits must be between 1 and 8");
  static constexpr int kBits = Bits;
  static constexpr std::uint32_t kMask = (1u << Bits) - 1u;
  /// Bytes taken by `n` codes; `n` must be a multiple of 8 for rows that are unpacked in blocks.
  static constexpr std::size_t bytes(std::size_t n) { return (n * Bits + 7) / 8; }
};

/// Reads code `i` of a packed stream. A code spans at most two bytes; the second byte is read
/// only when the code crosses into it, so a stream is never read past its last code's byte.
template <int Bits>
SKV_HOST_DEVICE SKV_FORCEINLINE std::uint32_t unpack_code(const std::uint8_t* SKV_RESTRICT packed, int i) {
  static_assert(Bits >= 1 && Bits <= 8, "skv: Bits must be between 1 and 8");
  const int bit = i * Bits;
  const int byte = bit >> 3;
  const int shift = bit & 7;
  std::uint32_t window = packed[byte];
  if (shift + Bits > 8) window |= static_cast<std::uint32_t>(packed[byte + 1]) << 8;
  return (window >> shift) & PackTraits<Bits>::kMask;
}

/// Unpacks 8 consecutive codes starting at code 8*block (they occupy exactly Bits bytes).
template <int Bits>
SKV_HOST_DEVICE SKV_FORCEINLINE void unpack8(const std::uint8_t* SKV_RESTRICT packed, int block,
                                             std::uint8_t* SKV_RESTRICT out) {
  const std::uint8_t* p = packed + block * Bits;
  std::uint64_t word = 0;
  for (int b = 0; b < Bits; ++b) word |= static_cast<std::uint64_t>(p[b]) << (8 * b);
  for (int j = 0; j < 8; ++j) out[j] = static_cast<std::uint8_t>((word >> (j * Bits)) & PackTraits<Bits>::kMask);
}

/// Packs `n` codes (each < 2^Bits; higher bits are ignored) into `PackTraits<Bits>::bytes(n)` bytes.
/// Every output byte is written, trailing bits of a partial last byte are zero.
template <int Bits>
SKV_HOST_DEVICE inline void pack_codes(const std::uint8_t* SKV_RESTRICT codes, int n, std::uint8_t* SKV_RESTRICT packed) {
  static_assert(Bits >= 1 && Bits <= 8, "skv: Bits must be between 1 and 8");
  std::uint32_t acc = 0;
  int filled = 0;
  int out = 0;
  for (int i = 0; i < n; ++i) {
    acc |= (codes[i] & PackTraits<Bits>::kMask) << filled;
    filled += Bits;
    while (filled >= 8) {
      packed[out++] = static_cast<std::uint8_t>(acc & 0xffu);
      acc >>= 8;
      filled -= 8;
    }
  }
  if (filled > 0) packed[out] = static_cast<std::uint8_t>(acc & 0xffu);
}

/// Unpacks `n` codes into one byte each.
template <int Bits>
SKV_HOST_DEVICE inline void unpack_codes(const std::uint8_t* SKV_RESTRICT packed, int n, std::uint8_t* SKV_RESTRICT codes) {
  for (int i = 0; i < n; ++i) codes[i] = static_cast<std::uint8_t>(unpack_code<Bits>(packed, i));
}

}  // namespace skv
