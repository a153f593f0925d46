# CUDA benchmarks (included by bench/CMakeLists.txt when SKV_HAS_CUDA and Google Benchmark exist).
file(GLOB SKV_CUDA_BENCH_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda_*.cu)
add_executable(skv_bench_cuda ${SKV_CUDA_BENCH_SOURCES})
target_link_libraries(skv_bench_cuda PRIVATE skv::cuda benchmark::benchmark)
