// The randomized Hadamard rotation: orthogonal, so dot products survive it; outliers spread out.
#include <skv/quant/rotation.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

namespace test_rotation {

template <int D>
void check_orthogonal() {
  using R = skv::HadamardRotation<D, 42>;
  std::mt19937 rng(D);
  std::normal_distribution<float> g;
  std::vector<float> q(D), k(D), q0, k0;
  for (int c = 0; c < D; ++c) {
    q[c] = g(rng);
    k[c] = g(rng) + (c == 3 ? 40.0f : 0.0f);  // an outlier channel
  }
  q0 = q;
  k0 = k;
  R::apply(q.data());
  R::apply(k.data());
  double dot0 = 0, dot = 0, n0 = 0, n = 0, kmax0 = 0, kmax = 0;
  for (int c = 0; c < D; ++c) {
    dot0 += double(q0[c]) * k0[c];
    dot += double(q[c]) * k[c];
    n0 += double(k0[c]) * k0[c];
    n += double(k[c]) * k[c];
    kmax0 = std::max(kmax0, double(std::fabs(k0[c])));
    kmax = std::max(kmax, double(std::fabs(k[c])));
  }
  EXPECT_NEAR(dot, dot0, 1e-4 * (1 + std::sqrt(n0)) * D / 64);
  EXPECT_NEAR(n, n0, 1e-5 * n0);
  EXPECT_LT(kmax, 0.5 * kmax0) << "the outlier is spread over the channels";
  R::apply_inverse(k.data());
  for (int c = 0; c < D; ++c) EXPECT_NEAR(k[c], k0[c], 1e-5f * (1 + std::fabs(k0[c])));
}

TEST(Rotation, IsOrthogonalAndSpreadsOutliers) {
  check_orthogonal<8>();
  check_orthogonal<32>();
  check_orthogonal<64>();
  check_orthogonal<128>();
  check_orthogonal<256>();
}

TEST(Rotation, SignsDependOnTheSeedAndAreBalanced) {
  int differ = 0, negative = 0;
  for (int c = 0; c < 1024; ++c) {
    differ += skv::rotation_sign(1, c) != skv::rotation_sign(2, c);
    negative += skv::rotation_sign(1, c) < 0;
  }
  EXPECT_GT(differ, 400);
  EXPECT_LT(differ, 624);
  EXPECT_GT(negative, 400);
  EXPECT_LT(negative, 624);
  static_assert(skv::rotation_sign(7, 5) == skv::rotation_sign(7, 5), "constexpr and deterministic");
}

TEST(Rotation, MatchesTheDenseMatrix) {
  constexpr int D = 16;
  using R = skv::HadamardRotation<D, 9>;
  for (int col = 0; col < D; ++col) {
    std::vector<float> e(D, 0.0f);
    e[col] = 1.0f;
    R::apply(e.data());
    for (int row = 0; row < D; ++row) {
      // H[row][col] = (-1)^popcount(row & col)
      const float h = (__builtin_popcount(row & col) % 2) ? -1.0f : 1.0f;
      EXPECT_FLOAT_EQ(e[row], h * skv::rotation_sign(9, col) / 4.0f);
    }
  }
}

// The rotary embedding: Hugging Face's rotate_half convention (pair i with i + D/2), R(-p) undoes
// R(p), and the cursor of the attention tiles gives R(p) of consecutive positions like apply does.
TEST(Rotary, RotatesPairsAsTransformersDoesAndInverts) {
  constexpr int D = 8;
  using R = skv::RotaryEmbedding<D>;
  const float f[D / 2] = {1.0f, 0.1f, 0.01f, 0.0f};
  float x[D] = {1, 2, 3, 4, 5, 6, 7, 8}, y[D];
  std::copy(x, x + D, y);
  R::apply(f, 3.0, y);
  for (int i = 0; i < D / 2; ++i) {  // x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
    const double a = 3.0 * f[i];
    EXPECT_NEAR(y[i], x[i] * std::cos(a) - x[i + D / 2] * std::sin(a), 1e-6);
    EXPECT_NEAR(y[i + D / 2], x[i + D / 2] * std::cos(a) + x[i] * std::sin(a), 1e-6);
    EXPECT_NEAR(R::element(f, 3.0, i, x[i], x[i + D / 2]), y[i], 1e-6);
    EXPECT_NEAR(R::element(f, 3.0, i + D / 2, x[i + D / 2], x[i]), y[i + D / 2], 1e-6);
  }
  EXPECT_EQ(y[3], x[3]);  // frequency 0: unchanged
  R::apply(f, -3.0, y);
  for (int c = 0; c < D; ++c) EXPECT_NEAR(y[c], x[c], 1e-5);
}

TEST(Rotary, CursorMatchesApplyOverRunsAndJumps) {
  constexpr int D = 64;
  using R = skv::RotaryEmbedding<D>;
  std::vector<float> f(D / 2);
  for (int i = 0; i < D / 2; ++i) f[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / D));
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  R::Cursor cursor;
  // runs of consecutive positions, a short step forward, a jump back and one far ahead
  for (const auto& run : {std::pair<int, int>{0, 100}, {110, 64}, {30, 5}, {100000, 40}}) {
    cursor.begin(f.data(), run.first);
    for (int p = run.first; p < run.first + run.second; ++p) {
      std::vector<float> x(D), y;
      for (auto& v : x) v = g(rng);
      y = x;
      cursor.rotate_next(x.data());
      R::apply(f.data(), p, y.data());
      for (int c = 0; c < D; ++c) ASSERT_NEAR(x[c], y[c], 2e-6f * (1 + std::fabs(y[c]))) << p << " " << c;
    }
  }
  // other frequencies at the same position: recomputed, not stepped from the old ones
  std::vector<float> f2(D / 2, 0.5f), x(D, 1.0f), y(D, 1.0f);
  cursor.begin(f2.data(), 140);
  cursor.rotate_next(x.data());
  R::apply(f2.data(), 140, y.data());
  for (int c = 0; c < D; ++c) ASSERT_NEAR(x[c], y[c], 1e-6f);
}

}  // namespace test_rotation
