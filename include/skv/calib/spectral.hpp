// skv/calib/spectral.hpp: Frobenius and spectral norms of a dense matrix (host; no dependencies).
//
// The spectral norm ||W||_2 = sigma_max is the square root of the largest eigenvalue of W^T W, found
// in double precision by Lanczos (default) or power iteration; both estimates rise to sigma_max and
// stop when they change by less than `tolerance` (relative) between two steps. Power iteration's
// error shrinks like (sigma_2 / sigma_1)^(2k) after k steps, which is slow when the top singular
// values are close (trained k_proj / v_proj often are); Lanczos with full reorthogonalization
// needs far fewer products with W^T W. max_iterations bounds the work; `converged` says whether the
// tolerance was met.
#pragma once

#include <algorithm>
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
  double value = 0.0;   ///< estimate of sigma_max (never above it, up to rounding)
  int iterations = 0;   ///< products with W^T W (Lanczos steps or power-iteration steps)
  bool converged = false;
};

/// Lanczos converges in far fewer products than power iteration when the top singular values are
/// close (as in trained projection matrices); power iteration is kept as the simple cross-check.
enum class SpectralMethod { Lanczos, PowerIteration };

namespace detail {

/// W in a form whose rows are contiguous floats (a copy only for strided columns, e.g. GPT-2's
/// transposed c_attn).
class DenseRows {
 public:
  explicit DenseRows(const MatrixRef& w) : rows_(static_cast<std::size_t>(w.rows)), cols_(static_cast<std::size_t>(w.cols)) {
    if (w.col_stride == 1) {
      base_ = w.data;
      stride_ = static_cast<std::size_t>(w.row_stride);
    } else {
      copy_.resize(rows_ * cols_);
      for (std::size_t r = 0; r < rows_; ++r)
        for (std::size_t c = 0; c < cols_; ++c)
          copy_[r * cols_ + c] = w(static_cast<std::int64_t>(r), static_cast<std::int64_t>(c));
      base_ = copy_.data();
      stride_ = cols_;
    }
  }
  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }

  /// z = W^T W v (u = W v is scratch of rows() doubles). Four partial sums keep the dot products
  /// from being one serial dependency chain.
  void gram_apply(const double* v, double* u, double* z) const {
    for (std::size_t r = 0; r < rows_; ++r) {
      const float* row = base_ + r * stride_;
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      std::size_t c = 0;
      for (; c + 4 <= cols_; c += 4) {
        s0 += static_cast<double>(row[c]) * v[c];
        s1 += static_cast<double>(row[c + 1]) * v[c + 1];
        s2 += static_cast<double>(row[c + 2]) * v[c + 2];
        s3 += static_cast<double>(row[c + 3]) * v[c + 3];
      }
      for (; c < cols_; ++c) s0 += static_cast<double>(row[c]) * v[c];
      u[r] = (s0 + s1) + (s2 + s3);
    }
    for (std::size_t c = 0; c < cols_; ++c) z[c] = 0.0;
    for (std::size_t r = 0; r < rows_; ++r) {
      const float* row = base_ + r * stride_;
      const double ur = u[r];
      for (std::size_t c = 0; c < cols_; ++c) z[c] += static_cast<double>(row[c]) * ur;
    }
  }

 private:
  std::size_t rows_, cols_;
  const float* base_ = nullptr;
  std::size_t stride_ = 0;
  std::vector<float> copy_;
};

/// A deterministic, dense, irregular unit start vector.
inline std::vector<double> start_vector(std::size_t n) {
  std::vector<double> v(n);
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  double norm = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v[i] = 0.5 + static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
    norm += v[i] * v[i];
  }
  norm = std::sqrt(norm);
  for (auto& x : v) x /= norm;
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

/// Largest eigenvalue of the symmetric tridiagonal matrix (diagonal a, off-diagonal b) by
/// bisection on its Sturm sequence (exact up to rounding; no iteration to converge).
inline double tridiagonal_max_eigenvalue(const std::vector<double>& a, const std::vector<double>& b) {
  const std::size_t k = a.size();
  double lo = a[0], hi = a[0];
  for (std::size_t i = 0; i < k; ++i) {  // Gershgorin discs
    const double r = (i > 0 ? std::fabs(b[i - 1]) : 0.0) + (i + 1 < k ? std::fabs(b[i]) : 0.0);
    lo = std::min(lo, a[i] - r);
    hi = std::max(hi, a[i] + r);
  }
  auto count_below = [&](double x) {  // eigenvalues < x
    int count = 0;
    double d = 1.0;
    for (std::size_t i = 0; i < k; ++i) {
      d = a[i] - x - (i > 0 ? b[i - 1] * b[i - 1] / d : 0.0);
      if (d == 0.0) d = -1e-300;
      if (d < 0.0) ++count;
    }
    return count;
  };
  for (int it = 0; it < 200 && hi - lo > 1e-15 * std::max(std::fabs(hi), std::fabs(lo)); ++it) {
    const double mid = 0.5 * (lo + hi);
    if (count_below(mid) == static_cast<int>(k))
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

}  // namespace detail

/// Largest singular value of `w`: sigma_max^2 is the largest eigenvalue of W^T W, estimated from
/// below by Lanczos (with full reorthogonalization) or power iteration; the iteration stops when the
/// estimate of sigma changes by at most `tolerance` (relative) from one step to the next.
inline SpectralNorm spectral_norm(const MatrixRef& w, double tolerance = 1e-10, int max_iterations = 5000,
                                  SpectralMethod method = SpectralMethod::Lanczos) {
  skv::detail::require(w.rows >= 0 && w.cols >= 0 && (w.data != nullptr || w.rows * w.cols == 0),
                       "spectral_norm: invalid matrix");
  skv::detail::require(tolerance > 0.0 && max_iterations > 0, "spectral_norm: tolerance and max_iterations must be positive");
  SpectralNorm out;
  if (w.rows == 0 || w.cols == 0) {
    out.converged = true;
    return out;
  }
  const detail::DenseRows dense(w);
  const std::size_t n = dense.cols();
  std::vector<double> v = detail::start_vector(n), u(dense.rows()), z(n);

  if (method == SpectralMethod::PowerIteration) {
    double sigma = 0.0;
    for (int it = 1; it <= max_iterations; ++it) {
      dense.gram_apply(v.data(), u.data(), z.data());
      out.iterations = it;
      const double next = std::sqrt(std::max(0.0, detail::dot(v, z)));  // ||W v|| for unit v
      const double zn = std::sqrt(detail::dot(z, z));
      if (zn == 0.0) {  // W v = 0 for a dense v: W is zero
        out.converged = true;
        return out;
      }
      for (std::size_t c = 0; c < n; ++c) v[c] = z[c] / zn;
      const bool done = it > 1 && std::fabs(next - sigma) <= tolerance * next;
      sigma = next;
      out.value = sigma;
      if (done) {
        out.converged = true;
        break;
      }
    }
    return out;
  }

  // Lanczos on A = W^T W: A V_k = V_k T_k + beta_k v_{k+1} e_k^T, T_k tridiagonal; the largest
  // eigenvalue of T_k rises to that of A.
  std::vector<std::vector<double>> basis;
  std::vector<double> alpha, beta;
  double theta_prev = -1.0;
  const int steps = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(max_iterations), n));
  for (int it = 1; it <= steps; ++it) {
    dense.gram_apply(v.data(), u.data(), z.data());
    out.iterations = it;
    const double a = detail::dot(v, z);
    alpha.push_back(a);
    for (std::size_t c = 0; c < n; ++c) z[c] -= a * v[c] + (basis.empty() ? 0.0 : beta.back() * basis.back()[c]);
    basis.push_back(v);
    for (int pass = 0; pass < 2; ++pass)  // full reorthogonalization, twice is enough
      for (const auto& q : basis) {
        const double p = detail::dot(q, z);
        for (std::size_t c = 0; c < n; ++c) z[c] -= p * q[c];
      }
    const double theta = detail::tridiagonal_max_eigenvalue(alpha, beta.empty() ? std::vector<double>{} : beta);
    const double b = std::sqrt(detail::dot(z, z));
    out.value = std::sqrt(std::max(0.0, theta));
    // sigma = sqrt(theta): a relative change of theta by 2 tol is a change of sigma by tol.
    if ((theta_prev >= 0.0 && std::fabs(theta - theta_prev) <= 2.0 * tolerance * theta) || b <= 1e-14 * std::sqrt(std::max(theta, 1e-300)) ||
        theta == 0.0) {
      out.converged = true;
      break;
    }
    theta_prev = theta;
    beta.push_back(b);
    for (std::size_t c = 0; c < n; ++c) v[c] = z[c] / b;
  }
  if (!out.converged && out.iterations == static_cast<int>(n)) out.converged = true;  // the full Krylov space: exact
  return out;
}

}  // namespace calib
}  // namespace skv
