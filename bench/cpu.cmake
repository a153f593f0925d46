# CPU benchmarks (skv_bench_cpu), built for the instruction sets the build machine can run
# (cmake/skv_cpu_simd.cmake; tests/host/simd.cmake builds the tests the same way). Rows keep their
# own minimum times unless the command line gives --benchmark_min_time (bench/common.hpp).
include(${PROJECT_SOURCE_DIR}/cmake/skv_cpu_simd.cmake)

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
