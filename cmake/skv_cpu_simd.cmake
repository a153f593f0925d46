# SKV_CPU_SIMD_FLAGS: the instruction-set flags of the targets built for the build machine (the CPU
# benchmarks, the SIMD test builds, the Python extension), chosen at configure time (override with
# -DSKV_CPU_SIMD_FLAGS="..."):
#   AVX-512 (F, BW, VL, VNNI, VBMI) + AVX2 + FMA + F16C if a test program using them runs, else
#   AVX-512 (F, BW) + AVX2 + FMA + F16C, else AVX2 + FMA + F16C, else none (the portable path).
# The library itself needs no flags. Also sets SKV_CPU_RUNS_AVX512VNNI / _AVX512 / _AVX2 and the flag
# lists _skv_avx2_flags, _skv_avx512_flags, _skv_avx512vnni_flags.
include(CheckCXXSourceRuns)

set(_skv_avx2_flags -mavx2 -mfma -mf16c)
set(_skv_avx512_flags -mavx512f -mavx512bw ${_skv_avx2_flags})
set(_skv_avx512vnni_flags -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512vbmi ${_skv_avx2_flags})

function(_skv_cpu_can_run flags result)
  string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${flags}")
  check_cxx_source_runs([[
    #include <immintrin.h>
    int main() {
      volatile float x = 1.0f;
      __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(x), _mm256_set1_ps(x), _mm256_set1_ps(x));
      __m128i h = _mm256_cvtps_ph(a, 0);
    #if defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
      __m512i b = _mm512_dpwssd_epi32(_mm512_set1_epi32(1), _mm512_set1_epi16(2), _mm512_set1_epi16(3));
      b = _mm512_permutexvar_epi8(_mm512_set1_epi8(0), b);
      return _mm512_reduce_add_epi32(b) == 0 || _mm_extract_epi16(h, 0) == 0;
    #elif defined(__AVX512BW__)
      __m512i b = _mm512_srlv_epi16(_mm512_set1_epi16(4), _mm512_set1_epi16(1));
      return _mm512_reduce_add_epi32(b) == 0 || _mm_extract_epi16(h, 0) == 0;
    #else
      return _mm_extract_epi16(h, 0) == 0;
    #endif
    }]] ${result})
  set(${result} ${${result}} PARENT_SCOPE)
endfunction()

if(NOT DEFINED SKV_CPU_SIMD_FLAGS)
  _skv_cpu_can_run("${_skv_avx512vnni_flags}" SKV_CPU_RUNS_AVX512VNNI)
  _skv_cpu_can_run("${_skv_avx512_flags}" SKV_CPU_RUNS_AVX512)
  _skv_cpu_can_run("${_skv_avx2_flags}" SKV_CPU_RUNS_AVX2)
  if(SKV_CPU_RUNS_AVX512VNNI)
    set(_skv_default_simd ${_skv_avx512vnni_flags})
  elseif(SKV_CPU_RUNS_AVX512)
    set(_skv_default_simd ${_skv_avx512_flags})
  elseif(SKV_CPU_RUNS_AVX2)
    set(_skv_default_simd ${_skv_avx2_flags})
  else()
    set(_skv_default_simd "")
  endif()
  set(SKV_CPU_SIMD_FLAGS "${_skv_default_simd}" CACHE STRING "Instruction-set flags of skv_bench_cpu, the SIMD test builds and the Python extension")
endif()

# GCC 12's AVX-512 intrinsic headers trip -W(maybe-)uninitialized on _mm512_undefined_*(): every
# target built with SKV_CPU_SIMD_FLAGS adds these.
set(SKV_CPU_SIMD_WARNING_FIXES -Wno-maybe-uninitialized -Wno-uninitialized)
