// Helpers shared by the host tests (included by relative path, so every build of a test file,
// host, scalar, nvcc or SIMD, finds it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace skv_test {

/// True in the AddressSanitizer build (the asan preset, -O0): tests that repeat one shape over many
/// random values run fewer repetitions there, since memory errors depend on shapes, not values.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

/// n normal floats with deviation sigma; element i is shifted by offset * (i % 7) / 7, so that
/// channels sit at different distances from the origin.
inline std::vector<float> random_floats(std::size_t n, unsigned seed, float sigma = 1.0f, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, sigma);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = g(rng) + offset * static_cast<float>(i % 7) / 7.0f;
  return x;
}

/// Largest |value| attention can read from a view (the tolerances scale with it): every token from
/// `from` on, as the view stores it.
template <class View>
float max_abs_value(const View& v, int from = 0) {
  float m = 0.0f;
  for (int t = from; t < v.length; ++t)
    for (int h = 0; h < v.num_kv_heads; ++h)
      for (int c = 0; c < View::L::kHeadDim; ++c) m = std::max(m, std::fabs(v.value(t, h, c)));
  return m;
}

}  // namespace skv_test
