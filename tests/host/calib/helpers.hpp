// tests/host/calib/helpers.hpp: temporary folders and small matrices for the calibration tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace skv_test {

/// A fresh folder under the system temp dir, removed (with its files) at scope exit.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/skv_calib_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) std::abort();
    path_ = buf.data();
  }
  ~TempDir() {
    const std::string cmd = "rm -rf '" + path_ + "'";
    if (std::system(cmd.c_str()) != 0) {
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// A random n x n orthogonal matrix (row-major), by Gram-Schmidt on Gaussian vectors.
inline std::vector<double> random_orthogonal(int n, std::mt19937& rng) {
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> q(static_cast<std::size_t>(n) * n);
  for (int i = 0; i < n; ++i) {
    double* r = &q[static_cast<std::size_t>(i) * n];
    for (int c = 0; c < n; ++c) r[c] = g(rng);
    for (int pass = 0; pass < 2; ++pass)
      for (int j = 0; j < i; ++j) {
        const double* p = &q[static_cast<std::size_t>(j) * n];
        double dot = 0;
        for (int c = 0; c < n; ++c) dot += r[c] * p[c];
        for (int c = 0; c < n; ++c) r[c] -= dot * p[c];
      }
    double norm = 0;
    for (int c = 0; c < n; ++c) norm += r[c] * r[c];
    norm = std::sqrt(norm);
    for (int c = 0; c < n; ++c) r[c] /= norm;
  }
  return q;
}

/// A rows x cols matrix U diag(s) V^T with the given singular values (s.size() <= min(rows, cols)).
inline std::vector<float> matrix_with_singular_values(int rows, int cols, const std::vector<double>& s, unsigned seed) {
  std::mt19937 rng(seed);
  const std::vector<double> u = random_orthogonal(rows, rng), v = random_orthogonal(cols, rng);
  std::vector<float> w(static_cast<std::size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      double x = 0;
      for (std::size_t k = 0; k < s.size(); ++k)
        x += u[k * rows + r] * s[k] * v[k * cols + c];  // rows of the orthogonal matrices as singular vectors
      w[static_cast<std::size_t>(r) * cols + c] = static_cast<float>(x);
    }
  return w;
}

}  // namespace skv_test
