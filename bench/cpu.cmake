# CPU benchmarks (skv_bench_cpu) and the SIMD builds of the CPU fast-path tests.
#
# Both are built for the instruction sets the build machine can run (cmake/skv_cpu_simd.cmake);
# tests/host covers the portable scalar path. Rows keep their own minimum times unless the command
# line gives --benchmark_min_time (bench/common.hpp).
include(${PROJECT_SOURCE_DIR}/cmake/skv_cpu_simd.cmake)
message(STATUS "skv: CPU benchmark / SIMD test flags: ${SKV_CPU_SIMD_FLAGS}")

set(_skv_simd_warnings ${SKV_WARNINGS} ${SKV_CPU_SIMD_WARNING_FIXES})

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
