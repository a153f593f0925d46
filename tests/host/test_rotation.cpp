// The randomized Hadamard rotation: orthogonal, so dot products survive it; outliers spread out.
#include <skv/quant/rotation.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <random>
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

}  // namespace test_rotation
