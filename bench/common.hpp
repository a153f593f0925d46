// bench/common.hpp: what the sources of skv_bench_cpu share.
#pragma once

#include <benchmark/benchmark.h>

#include <cstring>

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

}  // namespace skv_bench
