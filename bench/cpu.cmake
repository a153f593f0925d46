# CPU benchmarks (skv_bench_cpu) and the SIMD builds of the CPU fast-path tests.
#
# The library itself needs no flags; these targets are built for the instruction sets the build
# machine can run, chosen at configure time (override with -DSKV_CPU_SIMD_FLAGS="..."):
#   AVX-512 (F, BW, VL, VNNI, VBMI) + AVX2 + FMA + F16C if a test program using them runs, else
#   AVX-512 (F, BW) + AVX2 + FMA + F16C, else AVX2 + FMA + F16C, else none (the portable path). skv_host_tests_scalar (tests/host) covers the scalar path.
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
  set(SKV_CPU_SIMD_FLAGS "${_skv_default_simd}" CACHE STRING "Instruction-set flags of skv_bench_cpu and the SIMD test builds")
endif()
message(STATUS "skv: CPU benchmark / SIMD test flags: ${SKV_CPU_SIMD_FLAGS}")

# GCC 12's AVX-512 intrinsic headers trip -W(maybe-)uninitialized on _mm512_undefined_*().
set(_skv_simd_warnings ${SKV_WARNINGS} -Wno-maybe-uninitialized -Wno-uninitialized)

file(GLOB SKV_BENCH_CPU_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cpu_*.cpp)
add_executable(skv_bench_cpu ${SKV_BENCH_CPU_SOURCES})
target_link_libraries(skv_bench_cpu PRIVATE skv::skv benchmark::benchmark)
target_compile_options(skv_bench_cpu PRIVATE ${SKV_CPU_SIMD_FLAGS} ${_skv_simd_warnings})
if(OpenMP_CXX_FOUND)
  target_link_libraries(skv_bench_cpu PRIVATE OpenMP::OpenMP_CXX)
endif()

# CI proves the binary runs: the smallest decode shapes, append and memcpy, a very short min time.
add_test(NAME skv_bench_cpu_smoke
         COMMAND skv_bench_cpu --benchmark_min_time=0.01
                 "--benchmark_filter=^(decode/(fp16|fp32|k2v2|k4v2|k4v4|k8v4)/ctx:4096/batch:1/|memcpy|append/|quantize_block/)")
set_tests_properties(skv_bench_cpu_smoke PROPERTIES LABELS bench TIMEOUT 120)

# The CPU fast-path tests (and the cache tests, whose append runs the fast block quantizer) built
# with the SIMD flags above; tests/host builds them without flags (portable and scalar paths).
if(SKV_BUILD_TESTS AND SKV_CPU_SIMD_FLAGS)
  find_package(GTest QUIET)
  if(GTest_FOUND)
    include(GoogleTest)
    file(GLOB _skv_simd_tests CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/host/test_cpu_fast*.cpp)
    if(EXISTS ${PROJECT_SOURCE_DIR}/tests/host/test_cache.cpp)
      list(APPEND _skv_simd_tests ${PROJECT_SOURCE_DIR}/tests/host/test_cache.cpp)
    endif()
    add_executable(skv_host_tests_simd ${_skv_simd_tests})
    target_link_libraries(skv_host_tests_simd PRIVATE skv::skv GTest::gtest GTest::gtest_main)
    target_compile_options(skv_host_tests_simd PRIVATE ${SKV_CPU_SIMD_FLAGS} ${_skv_simd_warnings} -Werror)
    if(OpenMP_CXX_FOUND)
      target_link_libraries(skv_host_tests_simd PRIVATE OpenMP::OpenMP_CXX)
    endif()
    gtest_discover_tests(skv_host_tests_simd TEST_PREFIX simd. PROPERTIES LABELS host DISCOVERY_TIMEOUT 60)
    if(SKV_CPU_RUNS_AVX512VNNI AND SKV_CPU_SIMD_FLAGS STREQUAL "${_skv_avx512vnni_flags}")
      # AVX-512 without VNNI / VBMI too (vpmaddwd instead of vpdpwssd)
      add_executable(skv_host_tests_avx512 ${_skv_simd_tests})
      target_link_libraries(skv_host_tests_avx512 PRIVATE skv::skv GTest::gtest GTest::gtest_main)
      target_compile_options(skv_host_tests_avx512 PRIVATE ${_skv_avx512_flags} ${_skv_simd_warnings} -Werror)
      if(OpenMP_CXX_FOUND)
        target_link_libraries(skv_host_tests_avx512 PRIVATE OpenMP::OpenMP_CXX)
      endif()
      gtest_discover_tests(skv_host_tests_avx512 TEST_PREFIX avx512. PROPERTIES LABELS host DISCOVERY_TIMEOUT 60)
    endif()
    if(SKV_CPU_RUNS_AVX512)
      # the AVX2 kernels too, on a machine that would otherwise only run the AVX-512 ones
      add_executable(skv_host_tests_avx2 ${_skv_simd_tests})
      target_link_libraries(skv_host_tests_avx2 PRIVATE skv::skv GTest::gtest GTest::gtest_main)
      target_compile_options(skv_host_tests_avx2 PRIVATE ${_skv_avx2_flags} ${SKV_WARNINGS} -Werror)
      if(OpenMP_CXX_FOUND)
        target_link_libraries(skv_host_tests_avx2 PRIVATE OpenMP::OpenMP_CXX)
      endif()
      gtest_discover_tests(skv_host_tests_avx2 TEST_PREFIX avx2. PROPERTIES LABELS host DISCOVERY_TIMEOUT 60)
    endif()
  endif()
endif()
