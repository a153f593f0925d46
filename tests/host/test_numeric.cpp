// Packing and fp16/bf16 conversion: exact math, so exact equality.
#include <skv/numeric/half.hpp>
#include <skv/numeric/pack.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace test_numeric {

template <int Bits>
void exhaustive_round_trip() {
  constexpr int kMax = 1 << Bits;
  // every code at every position of a 2-block row, and every pair of neighbours
  std::vector<std::uint8_t> codes(64), back(64), packed(skv::PackTraits<Bits>::bytes(64) + 1, 0xAB);
  for (int a = 0; a < kMax; ++a) {
    for (int b = 0; b < kMax; ++b) {
      for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>((i % 2 == 0 ? a : b) ^ (i * 7 % kMax));
      skv::pack_codes<Bits>(codes.data(), 64, packed.data());
      ASSERT_EQ(packed.back(), 0xAB) << "wrote past the packed row";
      skv::unpack_codes<Bits>(packed.data(), 64, back.data());
      ASSERT_EQ(codes, back) << "Bits=" << Bits << " a=" << a << " b=" << b;
      for (int blk = 0; blk < 8; ++blk) {
        std::uint8_t eight[8];
        skv::unpack8<Bits>(packed.data(), blk, eight);
        for (int j = 0; j < 8; ++j) ASSERT_EQ(eight[j], codes[blk * 8 + j]);
      }
    }
  }
}

TEST(Pack, RoundTripsExhaustivelyForEveryWidth) {
  exhaustive_round_trip<1>();
  exhaustive_round_trip<2>();
  exhaustive_round_trip<3>();
  exhaustive_round_trip<4>();
  exhaustive_round_trip<5>();
  exhaustive_round_trip<6>();
  exhaustive_round_trip<7>();
  exhaustive_round_trip<8>();
}

TEST(Pack, DenseSizes) {
  EXPECT_EQ(skv::PackTraits<3>::bytes(128), 48u);
  EXPECT_EQ(skv::PackTraits<5>::bytes(128), 80u);
  EXPECT_EQ(skv::PackTraits<6>::bytes(128), 96u);
  EXPECT_EQ(skv::PackTraits<1>::bytes(128), 16u);
  EXPECT_EQ(skv::PackTraits<3>::bytes(3), 2u);
}

TEST(Pack, LittleEndianBitOrder) {
  const std::uint8_t codes[8] = {1, 2, 3, 4, 5, 6, 7, 0};
  std::uint8_t packed[3];
  skv::pack_codes<3>(codes, 8, packed);
  // bits: 001 010 011 100 101 110 111 000, least significant first
  const std::uint32_t word = packed[0] | (packed[1] << 8) | (packed[2] << 16);
  for (int i = 0; i < 8; ++i) EXPECT_EQ((word >> (3 * i)) & 7u, codes[i]);
  // a partial last byte has zero padding bits
  std::uint8_t two[1] = {0xFF};
  const std::uint8_t c2[2] = {3, 1};
  skv::pack_codes<3>(c2, 2, two);
  EXPECT_EQ(two[0], 0x0B);
}

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Half, EveryFp16RoundTripsThroughFloat) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const skv::fp16 h{static_cast<std::uint16_t>(b)};
    const float f = skv::to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(((b >> 10) & 0x1f) == 0x1f && (b & 0x3ff) != 0);
      continue;
    }
    EXPECT_EQ(skv::to_fp16(f).bits, b) << b;
    EXPECT_EQ(skv::to_fp16(f, skv::Round::Up).bits, b) << b;
  }
}

TEST(Half, KnownValues) {
  EXPECT_EQ(skv::to_float(skv::fp16{0x3c00}), 1.0f);
  EXPECT_EQ(skv::to_float(skv::fp16{0x7bff}), 65504.0f);
  EXPECT_EQ(skv::to_float(skv::fp16{0x0001}), std::ldexp(1.0f, -24));
  EXPECT_EQ(skv::to_float(skv::fp16{0xc000}), -2.0f);
  EXPECT_EQ(skv::to_fp16(65520.0f).bits, 0x7c00);  // rounds to infinity
  EXPECT_EQ(skv::to_fp16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(skv::to_fp16(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00);  // tie to even
  EXPECT_EQ(skv::to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)).bits, 0x3c02);
  EXPECT_EQ(skv::to_fp16(std::ldexp(1.0f, -25)).bits, 0x0000);  // tie to even (zero)
  EXPECT_EQ(skv::to_fp16(std::ldexp(1.0f, -25), skv::Round::Up).bits, 0x0001);
  EXPECT_EQ(skv::to_fp16(1e-30f, skv::Round::Up).bits, 0x0001);
  EXPECT_EQ(skv::to_fp16(-1e-30f, skv::Round::Up).bits, 0x8000);
  EXPECT_EQ(skv::to_fp16(std::nanf("")).bits & 0x7e00, 0x7e00);
  EXPECT_EQ(skv::to_fp16(-INFINITY).bits, 0xfc00);
}

// Round-to-nearest-even and round-up agree with a brute-force search over the fp16 grid.
TEST(Half, NarrowingMatchesBruteForceOnRandomFloats) {
  std::vector<float> grid;
  for (std::uint32_t b = 0; b < 0x7c00; ++b) grid.push_back(skv::to_float(skv::fp16{static_cast<std::uint16_t>(b)}));
  std::mt19937 rng(1);
  std::uniform_int_distribution<std::uint32_t> bits(0, 0x477fe000u);  // positive floats up to just past 65504
  for (int i = 0; i < 20000; ++i) {
    const float f = bits_to_float(bits(rng));
    const auto up = std::lower_bound(grid.begin(), grid.end(), f);
    ASSERT_NE(up, grid.end());
    EXPECT_EQ(skv::to_float(skv::to_fp16(f, skv::Round::Up)), *up) << f;
    const float lo = up == grid.begin() ? *up : *(up - 1);
    const float nearest = skv::to_float(skv::to_fp16(f));
    if (*up == f) {
      EXPECT_EQ(nearest, f);
    } else if (f - lo != *up - f) {
      EXPECT_EQ(nearest, (f - lo < *up - f) ? lo : *up) << f;
    }
  }
}

TEST(Bf16, ConversionIsExactAndRounds) {
  EXPECT_EQ(skv::to_float(skv::bf16{0x3f80}), 1.0f);
  EXPECT_EQ(skv::to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(skv::to_bf16(bits_to_float(0x3f808000u)).bits, 0x3f80);  // tie to even
  EXPECT_EQ(skv::to_bf16(bits_to_float(0x3f818000u)).bits, 0x3f82);
  EXPECT_EQ(skv::to_bf16(bits_to_float(0x3f800001u), skv::Round::Up).bits, 0x3f81);
  for (std::uint32_t b = 0; b < 65536; b += 3) {
    const float f = skv::to_float(skv::bf16{static_cast<std::uint16_t>(b)});
    if (!std::isnan(f)) {
      EXPECT_EQ(skv::to_bf16(f).bits, b);
    }
  }
}

}  // namespace test_numeric
