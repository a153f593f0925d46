// skv/gpu/common.cuh: error handling, device queries and the register-level unpacking shared by the
// CUDA kernels (nvcc only).
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/common.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <skv/error.hpp>
#include <skv/numeric/pack.hpp>

namespace skv {
namespace gpu {

/// Throws skv::Error naming the call when a CUDA runtime call failed.
inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string(what) + ": CUDA error " + std::to_string(static_cast<int>(status)) + " (" +
                cudaGetErrorString(status) + ")");
  }
}

/// Number of usable CUDA devices; any error (no driver, no device, insufficient driver) counts as none.
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

namespace detail {

/// Code i (0 <= i < 64) of a block of 64 densely packed Bits-bit codes held in Bits 64-bit words.
/// Every index is a compile-time constant after unrolling, so this compiles to shifts and funnel
/// shifts on registers; it returns exactly unpack_code<Bits>(bytes, i) (tested).
template <int Bits, int I>
__device__ SKV_FORCEINLINE std::uint32_t code_of(const std::uint64_t (&w)[Bits]) {
  constexpr int kBit = I * Bits;
  constexpr int kWord = kBit / 64;
  constexpr int kShift = kBit % 64;
  if constexpr (kShift + Bits <= 64) {
    return static_cast<std::uint32_t>(w[kWord] >> kShift) & PackTraits<Bits>::kMask;
  } else {
    return static_cast<std::uint32_t>((w[kWord] >> kShift) | (w[kWord + 1] << (64 - kShift))) & PackTraits<Bits>::kMask;
  }
}

/// 2^23 + code as a float, exactly: one OR instead of an int-to-float conversion. Subtracting a
/// constant 2^23 (+ zero point) afterwards gives the exact small integer code (- zero).
__device__ SKV_FORCEINLINE float magic_code(std::uint32_t code) { return __int_as_float(0x4B000000 | code); }
constexpr float kMagic = 8388608.0f;  // 2^23

/// The value of code I (as an exact float) of a little-endian stream of 32-bit words. A code whose
/// bits sit at mantissa positions [p, p + Bits) with p + Bits <= 23 is read with one LOP3: OR-ing
/// the exponent of 2^(23-p) gives the float 2^(23-p) + code, and one FADD removes the offset exactly.
/// Codes higher in the word use the word shifted by 12 (one shift shared by all of them); a code
/// that straddles two words takes a funnel shift. This keeps the integer pipe (the bottleneck of
/// unpacking) at about one instruction per code and moves the rest to the FP32 pipe.
template <int Bits, int I, int N>
__device__ SKV_FORCEINLINE float code_value(const std::uint32_t (&w)[N]) {
  constexpr int kBit = I * Bits;
  constexpr int kWord = kBit / 32;
  constexpr int kPos = kBit % 32;
  constexpr bool kCross = kPos + Bits > 32;
  constexpr bool kLow = !kCross && kPos + Bits <= 23;
  constexpr int kP = kCross ? 0 : (kLow ? kPos : kPos - 12);
  static_assert(kP >= 0 && kP + Bits <= 23, "code_value: code does not fit the mantissa");
  std::uint32_t win;
  if constexpr (kCross) {
    win = __funnelshift_r(w[kWord], w[kWord + 1], kPos);
  } else if constexpr (kLow) {
    win = w[kWord];
  } else {
    win = w[kWord] >> 12;
  }
  constexpr std::uint32_t kExp = static_cast<std::uint32_t>(127 + 23 - kP) << 23;
  constexpr float kOffset = static_cast<float>(1u << (23 - kP));
  return __uint_as_float(kExp | (win & (PackTraits<Bits>::kMask << kP))) - kOffset;
}

/// Code i of the block placed at bit Pos of a 32-bit word (all other bits zero): one funnel shift
/// and one mask, which the caller's OR merges into a single LOP3.
template <int Bits, int I, int Pos>
__device__ SKV_FORCEINLINE std::uint32_t code_at(const std::uint64_t (&w)[Bits]) {
  constexpr int kBit = I * Bits;
  constexpr int kWord = kBit / 64;
  constexpr int kShift = kBit % 64;
  constexpr std::uint32_t kMask = PackTraits<Bits>::kMask << Pos;
  std::uint64_t v;
  if constexpr (kShift + Bits <= 64) {
    v = w[kWord];
  } else {
    v = (w[kWord] >> kShift) | (w[kWord + 1] << (64 - kShift));
  }
  constexpr int kS = kShift + Bits <= 64 ? kShift : 0;
  if constexpr (kS >= Pos) {
    return static_cast<std::uint32_t>(v >> (kS - Pos)) & kMask;
  } else {
    return static_cast<std::uint32_t>(v << (Pos - kS)) & kMask;
  }
}

/// 2^Bits + code i of the block as a float, exactly (see offset_code), straight from the words.
template <int Bits, int I>
__device__ SKV_FORCEINLINE float offset_code_of(const std::uint64_t (&w)[Bits]) {
  return __uint_as_float((static_cast<std::uint32_t>(127 + Bits) << 23) | code_at<Bits, I, 23 - Bits>(w));
}

/// 2^Bits + code as a float, exactly, with one OR: the code lands on the mantissa bits of weight 1
/// of the float 2^Bits (code < 2^Bits). The kernels fold the constant offset into a per-group or
/// per-token term, so an unpacked code costs a shift and a LOP3, no conversion and no subtraction.
template <int Bits>
__device__ SKV_FORCEINLINE float offset_code(std::uint32_t code) {
  return __uint_as_float((static_cast<std::uint32_t>(127 + Bits) << 23) | (code << (23 - Bits)));
}
/// The offset offset_code adds: 2^Bits.
template <int Bits>
constexpr float kCodeOffset = static_cast<float>(1u << Bits);

/// Loads 8*Bits bytes (64 codes) from an 8-byte aligned address.
template <int Bits>
__device__ SKV_FORCEINLINE void load_codes64(const std::uint8_t* p, std::uint64_t (&w)[Bits]) {
  const auto* q = reinterpret_cast<const std::uint64_t*>(p);
#pragma unroll
  for (int i = 0; i < Bits; ++i) w[i] = __ldg(q + i);
}

template <class F, int... I>
__device__ SKV_FORCEINLINE void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
/// Calls f(std::integral_constant<int, i>) for i = 0..N-1.
template <int N, class F>
__device__ SKV_FORCEINLINE void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace detail
}  // namespace gpu
}  // namespace skv
