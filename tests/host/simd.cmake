# The CPU attention tests and the cache tests (whose append runs the fast block quantizer) built
# with the instruction-set flags of the build machine (cmake/skv_cpu_simd.cmake), and on a machine
# that runs AVX-512 also for AVX-512 without VNNI / VBMI and for AVX2, so that every kernel this
# machine can run is tested. skv_host_tests covers the portable path.
option(SKV_SIMD_TESTS "Build the host tests once more for each instruction set the machine runs" ON)
if(NOT SKV_SIMD_TESTS)
  return()
endif()
include(${PROJECT_SOURCE_DIR}/cmake/skv_cpu_simd.cmake)
message(STATUS "skv: CPU benchmark / SIMD test flags: ${SKV_CPU_SIMD_FLAGS}")
if(NOT SKV_CPU_SIMD_FLAGS)
  return()
endif()

# The machine's own instruction set runs the four files at the build's optimization (-O3 in Release);
# the narrower sets a wider machine also runs (AVX-512 without VNNI, AVX2) run, at -O2
# (SKV_TEST_OPTIMIZATION), the files of the kernels that have a path per instruction set: decode and
# prefill attention, and the block quantizer that append runs (test_cache). The window tests reach
# the same kernels through a window view.
set(_skv_simd_kernel_tests ${CMAKE_CURRENT_SOURCE_DIR}/test_decode.cpp ${CMAKE_CURRENT_SOURCE_DIR}/test_prefill.cpp
                           ${CMAKE_CURRENT_SOURCE_DIR}/test_cache.cpp)
set(_skv_simd_warnings ${SKV_WARNINGS} ${SKV_CPU_SIMD_WARNING_FIXES} -Werror)

function(_skv_add_simd_tests target prefix sources)
  add_executable(${target} ${sources})
  target_link_libraries(${target} PRIVATE skv::skv GTest::gtest GTest::gtest_main)
  target_compile_options(${target} PRIVATE ${ARGN} ${_skv_simd_warnings})
  if(OpenMP_CXX_FOUND)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
  gtest_discover_tests(${target} TEST_PREFIX ${prefix}. PROPERTIES LABELS host DISCOVERY_TIMEOUT 60)
endfunction()

_skv_add_simd_tests(skv_host_tests_simd simd "${_skv_simd_kernel_tests};${CMAKE_CURRENT_SOURCE_DIR}/test_window.cpp"
                    ${SKV_CPU_SIMD_FLAGS})
if(SKV_CPU_RUNS_AVX512VNNI AND SKV_CPU_SIMD_FLAGS STREQUAL "${_skv_avx512vnni_flags}")
  # vpmaddwd instead of vpdpwssd
  _skv_add_simd_tests(skv_host_tests_avx512 avx512 "${_skv_simd_kernel_tests}" ${_skv_avx512_flags}
                      ${SKV_TEST_OPTIMIZATION})
endif()
if(SKV_CPU_RUNS_AVX512)
  _skv_add_simd_tests(skv_host_tests_avx2 avx2 "${_skv_simd_kernel_tests}" ${_skv_avx2_flags} ${SKV_TEST_OPTIMIZATION})
endif()
