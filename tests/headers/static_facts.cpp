// Compile-time facts of the public types: this file only has to compile (it is part of the header
// checks), so a wrong constant breaks the build rather than a test that could never fail at run time.
#include <skv/skv.hpp>

#include <type_traits>

namespace static_facts {

// the short form
using C = skv::KVCache<4, 2>;
static_assert(C::kKeyBits == 4 && C::kValueBits == 2 && C::kHeadDim == 128, "short form");
static_assert(C::kPageSize == 64 && C::KeyQuantizer::kGroupSize == 32 && C::ValueQuantizer::kGroupSize == 64, "");
static_assert(C::KeyQuantizer::kAxis == skv::Axis::Channel && C::ValueQuantizer::kAxis == skv::Axis::Token, "");
// keys: 4 bits + 32 bits of fp16 scale+zero per 32 tokens = 5 bits; values: 2 + 32/64 = 2.5 bits
static_assert(C::bytes_per_token() == 128 * (5.0 + 2.5) / 8, "exact bytes per token per KV head");
static_assert(C::bits_per_element() == 3.75, "");
static_assert(C::Layout::kHeadBytes == 64u * 120u, "");
static_assert(skv::KVCache<4, 2, 64>::ValueQuantizer::kGroupSize == 64, "");
static_assert(skv::KVCache<4, 2, 96>::ValueQuantizer::kGroupSize == 32, "largest power of two dividing 96");
static_assert(skv::KVCache<3, 5>::bytes_per_token() == 128 * (4.0 + 5.5) / 8, "dense 3 and 5 bits");

// options combine in any order
using A = skv::Options<skv::RotateKeys, skv::Sinks<4>, skv::ClipValues>;
using B = skv::Options<skv::ClipValues, skv::Sinks<4>, skv::RotateKeys>;
static_assert(A::kRotateKeys && B::kRotateKeys && A::kSinkTokens == 4 && B::kSinkTokens == 4, "");
static_assert(A::kClipValues && !A::kClipKeys && A::kRotationSeed == skv::kDefaultRotationSeed, "");
static_assert(skv::Options<skv::RotateKeysWithSeed<7>>::kRotationSeed == 7, "");
static_assert(!skv::Options<>::kRotateKeys && skv::Options<>::kSinkTokens == 0, "");
static_assert(!skv::Options<>::kRotateValues && !A::kRotateValues, "");
using V = skv::Options<skv::RotateValuesWithSeed<9>, skv::RotateKeys, skv::Sinks<2>>;
static_assert(V::kRotateValues && V::kValueRotationSeed == 9 && V::kRotateKeys &&
                  V::kRotationSeed == skv::kDefaultRotationSeed && V::kSinkTokens == 2, "");
using R = skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>;
static_assert(R::kRotateKeys && R::kSinkTokens == 4 && R::kKeyBits == 4 && R::kValueBits == 2, "");
static_assert(std::is_same<skv::KVCache<4, 2>, skv::KVCache<4, 2, 128>>::value, "");

// the full-precision area: float rows, fp16 rows, or 8-bit rows of codes, an fp16 zero and step
using F32 = skv::KVCache<4, 2, 64, skv::Sinks<4>>::Layout;
using F16 = skv::KVCache<4, 2, 64, skv::Sinks<4>, skv::Fp16Ring>::Layout;
using I8 = skv::KVCache<4, 2, 64, skv::Int8Ring, skv::Sinks<4>>::Layout;
static_assert(F32::kFloatRing && F32::kRingRow == 64 && F32::ring_bits_per_element() == 32, "");
static_assert(!F16::kFloatRing && F16::kRingRow == 64 && F16::ring_bits_per_element() == 16, "");
static_assert(!I8::kFloatRing && I8::kInt8Ring && I8::kRingRow == 68 && I8::ring_bits_per_element() == 8.5, "");
static_assert(I8::residual_elements(2) == 2u * (32 + 4) * 2 * 68 && I8::sink_bytes_per_token() == 136, "");
static_assert(I8::sink_key_offset(1, 1, 2) == (2u * 32 + 1) * 2 * 68 + 68, "");
// keys before the rotary embedding: the same bytes; the 8-bit ring still holds Hadamard rows of them
using PR = skv::KVCache<4, 2, 64, skv::PreRopeKeys, skv::Int8Ring>::Layout;
static_assert(PR::kPreRopeKeys && !PR::kRotateKeys && PR::kRingRotatesKeys && !I8::kPreRopeKeys, "");
static_assert(PR::kHeadBytes == I8::kHeadBytes && PR::residual_elements(2) == I8::residual_elements(2) - 2u * 4 * 2 * 68, "");

// Lloyd-Max values: the normal's levels on a 0..255 grid, the same metadata as min-max codes
using LM2 = skv::Quantizer<2, 64, skv::Axis::Token, skv::Scheme::LloydMax>;
static_assert(LM2::kCodebook && LM2::kHasZero && LM2::kMaxCode == 3 && LM2::kMaxLevel == 255, "");
static_assert(LM2::level(0) == 0 && LM2::level(1) == 89 && LM2::level(2) == 166 && LM2::level(3) == 255, "");
static_assert(LM2::bits_per_element() == 2.5 && skv::Quantizer<2, 64, skv::Axis::Token>::level(2) == 2, "");
static_assert(skv::Quantizer<4, 64, skv::Axis::Token, skv::Scheme::LloydMax>::level(8) == 133, "");

// views go into kernels by value
static_assert(std::is_trivially_copyable<C::View>::value, "");

}  // namespace static_facts
