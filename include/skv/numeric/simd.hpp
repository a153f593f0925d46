// skv/numeric/simd.hpp: the float vector shared by the host block quantizer and the CPU attention
// kernels (host only, not public API).
//
// One float vector type `Vec` whose width is fixed at compile time from the target flags
// (config.hpp): 16 lanes with AVX-512, 8 with AVX2 + FMA, 1 (plain C++) otherwise or with
// SKV_DISABLE_SIMD. Code above this file is written once against Vec. Loads and stores of fp16 and
// bf16 convert inside the vector (vcvtph2ps / a 16-bit shift on the way in; round to nearest even
// on the way out, as skv::to_fp16 / skv::to_bf16 do for every finite value).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <skv/config.hpp>
#include <skv/numeric/half.hpp>

#if defined(SKV_HAS_AVX512) || defined(SKV_HAS_AVX2) || defined(SKV_HAS_F16C)
#include <immintrin.h>
#endif

namespace skv {
namespace simd {

// ---- the float vector ----------------------------------------------------------------------------
#if defined(SKV_HAS_AVX512)
constexpr int kVecWidth = 16;
constexpr const char* kSimdName = "avx512";
using Vec = __m512;
SKV_FORCEINLINE Vec vzero() { return _mm512_setzero_ps(); }
SKV_FORCEINLINE Vec vset1(float x) { return _mm512_set1_ps(x); }
SKV_FORCEINLINE Vec vload(const float* p) { return _mm512_loadu_ps(p); }
SKV_FORCEINLINE void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
SKV_FORCEINLINE Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
SKV_FORCEINLINE Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
SKV_FORCEINLINE Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
SKV_FORCEINLINE Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
SKV_FORCEINLINE Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
SKV_FORCEINLINE Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
SKV_FORCEINLINE float vhmin(Vec v) { return _mm512_reduce_min_ps(v); }
SKV_FORCEINLINE float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
SKV_FORCEINLINE float vhmax(Vec v) { return _mm512_reduce_max_ps(v); }
#elif defined(SKV_HAS_AVX2)
constexpr int kVecWidth = 8;
constexpr const char* kSimdName = "avx2";
using Vec = __m256;
SKV_FORCEINLINE Vec vzero() { return _mm256_setzero_ps(); }
SKV_FORCEINLINE Vec vset1(float x) { return _mm256_set1_ps(x); }
SKV_FORCEINLINE Vec vload(const float* p) { return _mm256_loadu_ps(p); }
SKV_FORCEINLINE void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
SKV_FORCEINLINE Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
SKV_FORCEINLINE Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
SKV_FORCEINLINE Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
SKV_FORCEINLINE Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
SKV_FORCEINLINE Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
SKV_FORCEINLINE Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
SKV_FORCEINLINE float vsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
SKV_FORCEINLINE float vhmax(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
SKV_FORCEINLINE float vhmin(Vec v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int kVecWidth = 1;
constexpr const char* kSimdName = "scalar";
using Vec = float;
SKV_FORCEINLINE Vec vzero() { return 0.0f; }
SKV_FORCEINLINE Vec vset1(float x) { return x; }
SKV_FORCEINLINE Vec vload(const float* p) { return *p; }
SKV_FORCEINLINE void vstore(float* p, Vec v) { *p = v; }
SKV_FORCEINLINE Vec vadd(Vec a, Vec b) { return a + b; }
SKV_FORCEINLINE Vec vsub(Vec a, Vec b) { return a - b; }
SKV_FORCEINLINE Vec vmul(Vec a, Vec b) { return a * b; }
SKV_FORCEINLINE Vec vfma(Vec a, Vec b, Vec c) { return a * b + c; }
SKV_FORCEINLINE Vec vmax(Vec a, Vec b) { return a < b ? b : a; }
SKV_FORCEINLINE Vec vmin(Vec a, Vec b) { return b < a ? b : a; }
SKV_FORCEINLINE float vhmin(Vec v) { return v; }
SKV_FORCEINLINE float vsum(Vec v) { return v; }
SKV_FORCEINLINE float vhmax(Vec v) { return v; }
#endif

/// Name of the instruction set the CPU code was compiled for ("avx512", "avx2" or "scalar").
inline const char* simd_name() { return kSimdName; }


// ---- fp16 / bf16 rows ----------------------------------------------------------------------------

/// kVecWidth values of type T (float, fp16 or bf16) widened to float (exact).
SKV_FORCEINLINE Vec vload(const fp16* p) {
#if defined(SKV_HAS_AVX512)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(SKV_HAS_AVX2) && defined(SKV_HAS_F16C)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(SKV_HAS_AVX2)
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = to_float(p[i]);
  return _mm256_load_ps(f);
#else
  return to_float(*p);
#endif
}
SKV_FORCEINLINE Vec vload(const bf16* p) {
#if defined(SKV_HAS_AVX512)
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
#elif defined(SKV_HAS_AVX2)
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
#else
  return to_float(*p);
#endif
}

/// Stores kVecWidth floats as fp16 / bf16, rounded to nearest even (finite inputs: the bits of
/// skv::to_fp16 / skv::to_bf16).
SKV_FORCEINLINE void vstore(fp16* p, Vec v) {
#if defined(SKV_HAS_AVX512)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(SKV_HAS_AVX2) && defined(SKV_HAS_F16C)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(SKV_HAS_AVX2)
  alignas(32) float f[8];
  _mm256_store_ps(f, v);
  for (int i = 0; i < 8; ++i) p[i] = to_fp16(f[i]);
#else
  *p = to_fp16(v);
#endif
}
SKV_FORCEINLINE void vstore(bf16* p, Vec v) {
#if defined(SKV_HAS_AVX512)
  // x + 0x7fff + (bit 16 of x), then the high half: round to nearest even
  const __m512i x = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
#elif defined(SKV_HAS_AVX2)
  const __m256i x = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
#else
  *p = to_bf16(v);
#endif
}

/// out[i] = float(x[i]) for i < n (exact), converted a vector at a time.
template <class T>
inline void to_f32_row(const T* SKV_RESTRICT x, int n, float* SKV_RESTRICT out) {
  const int whole = n - n % kVecWidth;
  for (int i = 0; i < whole; i += kVecWidth) vstore(out + i, vload(x + i));
  for (int i = whole; i < n; ++i) out[i] = to_float(x[i]);
}

/// out[i] = T(x[i]) for i < n, rounded to nearest even.
template <class T>
inline void from_f32_row(const float* SKV_RESTRICT x, int n, T* SKV_RESTRICT out) {
  int i = 0;
  for (; i + kVecWidth <= n; i += kVecWidth) vstore(out + i, vload(x + i));
  for (; i < n; ++i) out[i] = from_float<T>(x[i]);
}
inline void from_f32_row(const float* SKV_RESTRICT x, int n, float* SKV_RESTRICT out) {
  for (int i = 0; i < n; ++i) out[i] = x[i];
}

/// Whether every |float(x[i])| <= limit for i < n (NaN fails), a vector at a time.
template <class T>
inline bool all_within(const T* x, std::size_t n, float limit) {
  std::size_t i = 0;
#if defined(SKV_HAS_AVX512)
  const __m512 lim = _mm512_set1_ps(limit);
  __mmask16 bad = 0;
  for (; i + 16 <= n; i += 16) bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(vload(x + i)), lim, _CMP_NLE_UQ);
  if (bad != 0) return false;
#elif defined(SKV_HAS_AVX2)
  const __m256 lim = _mm256_set1_ps(limit), sign = _mm256_set1_ps(-0.0f);
  __m256 bad = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, vload(x + i)), lim, _CMP_NLE_UQ));
  if (_mm256_movemask_ps(bad) != 0) return false;
#endif
  unsigned b = 0;
  for (; i < n; ++i) b |= static_cast<unsigned>(!(std::fabs(to_float(x[i])) <= limit));
  return b == 0;
}

}  // namespace simd
}  // namespace skv
