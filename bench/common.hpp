// bench/common.hpp: what the sources of skv_bench_cpu share.
#pragma once

#include <skv/config.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#if defined(SKV_HAS_OPENMP)
#include <omp.h>
#endif

namespace skv_bench {

/// Whether the command line gives --benchmark_min_time; main() reads it before it registers anything.
inline bool& min_time_from_command_line() {
  static bool given = false;
  return given;
}

inline void read_command_line(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--benchmark_min_time", 20) == 0) min_time_from_command_line() = true;
}

/// A row's own minimum time, passed to Apply(): a per-row MinTime() would override the command
/// line's --benchmark_min_time, so it is set only when the command line gives none.
template <int Milliseconds>
void default_min_time(benchmark::internal::Benchmark* b) {
  if (!min_time_from_command_line()) b->MinTime(Milliseconds / 1000.0);
}

/// Every OpenMP thread (1 without OpenMP).
inline int all_cores() {
#if defined(SKV_HAS_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// The thread counts of rows measured on one thread and on every core: {1} or {1, all_cores()}.
inline std::vector<int> thread_rows() {
  std::vector<int> rows{1};
  if (all_cores() > 1) rows.push_back(all_cores());
  return rows;
}

/// n standard-normal floats from `seed` (the benchmarks' keys, values and queries).
inline std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = g(rng);
  return x;
}

}  // namespace skv_bench
