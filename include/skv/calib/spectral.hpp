// skv/calib/spectral.hpp: Frobenius and spectral norms of a dense matrix (host; no dependencies).
//
// The spectral norm ||W||_2 = sigma_max is found by power iteration on W^T W in double precision:
// v <- W^T W v / ||W^T W v||, sigma = ||W v||. The estimate rises monotonically to sigma_max; the
// iteration stops when it changes by less than `tolerance` (relative) between two steps. The error
// after k steps shrinks like (sigma_2 / sigma_1)^(2k), so well-separated spectra converge in tens of
// iterations and near-degenerate ones need more (max_iterations bounds the work; `converged` says
// whether the tolerance was met).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <skv/error.hpp>

namespace skv {
namespace calib {

/// A strided view of a rows x cols float matrix: element (r, c) is data[r * row_stride + c * col_stride].
/// Strides let a view select one head's rows of k_proj, or the columns of a transposed GPT-2 c_attn.
struct MatrixRef {
  const float* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t row_stride = 0;
  std::int64_t col_stride = 1;

  float operator()(std::int64_t r, std::int64_t c) const { return data[r * row_stride + c * col_stride]; }
  /// Rows [begin, begin + count).
  MatrixRef row_block(std::int64_t begin, std::int64_t count) const {
    return MatrixRef{data + begin * row_stride, count, cols, row_stride, col_stride};
  }
  MatrixRef transposed() const { return MatrixRef{data, cols, rows, col_stride, row_stride}; }
};

inline MatrixRef row_major(const float* data, std::int64_t rows, std::int64_t cols) {
  return MatrixRef{data, rows, cols, cols, 1};
}

inline double frobenius_norm(const MatrixRef& w) {
  double s = 0.0;
  for (std::int64_t r = 0; r < w.rows; ++r)
    for (std::int64_t c = 0; c < w.cols; ++c) {
      const double x = w(r, c);
      s += x * x;
    }
  return std::sqrt(s);
}

struct SpectralNorm {
  double value = 0.0;   ///< estimate of sigma_max
  int iterations = 0;   ///< power-iteration steps taken
  bool converged = false;
};

/// Largest singular value of `w` by power iteration on W^T W. The start vector is fixed
/// (deterministic) and dense, so it is never orthogonal to the top singular vector in practice.
inline SpectralNorm spectral_norm(const MatrixRef& w, double tolerance = 1e-10, int max_iterations = 5000) {
  skv::detail::require(w.rows >= 0 && w.cols >= 0 && (w.data != nullptr || w.rows * w.cols == 0),
                  "spectral_norm: invalid matrix");
  skv::detail::require(tolerance > 0.0 && max_iterations > 0, "spectral_norm: tolerance and max_iterations must be positive");
  SpectralNorm out;
  if (w.rows == 0 || w.cols == 0) {
    out.converged = true;
    return out;
  }
  const std::size_t m = static_cast<std::size_t>(w.rows), n = static_cast<std::size_t>(w.cols);
  std::vector<double> v(n), u(m), z(n);
  // A deterministic, irregular start vector.
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  double norm = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = 0.5 + static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
    norm += v[i] * v[i];
  }
  norm = std::sqrt(norm);
  for (auto& x : v) x /= norm;

  double sigma = 0.0;
  for (int it = 1; it <= max_iterations; ++it) {
    // u = W v
    double un = 0.0;
    for (std::size_t r = 0; r < m; ++r) {
      double s = 0.0;
      for (std::size_t c = 0; c < n; ++c) s += static_cast<double>(w(static_cast<std::int64_t>(r), static_cast<std::int64_t>(c))) * v[c];
      u[r] = s;
      un += s * s;
    }
    const double next = std::sqrt(un);
    out.iterations = it;
    if (next == 0.0) {  // W v = 0: W is zero (the start vector is dense)
      out.value = 0.0;
      out.converged = true;
      return out;
    }
    // z = W^T u, normalized
    for (auto& x : z) x = 0.0;
    for (std::size_t r = 0; r < m; ++r) {
      const double ur = u[r];
      for (std::size_t c = 0; c < n; ++c) z[c] += static_cast<double>(w(static_cast<std::int64_t>(r), static_cast<std::int64_t>(c))) * ur;
    }
    double zn = 0.0;
    for (const double x : z) zn += x * x;
    zn = std::sqrt(zn);
    for (std::size_t c = 0; c < n; ++c) v[c] = z[c] / zn;
    const bool done = it > 1 && std::fabs(next - sigma) <= tolerance * next;
    sigma = next;
    if (done) {
      out.converged = true;
      break;
    }
  }
  out.value = sigma;
  return out;
}

}  // namespace calib
}  // namespace skv
