// skv/quant/rotation.hpp: the randomized Hadamard rotation for keys (and the queries that read them).
//
// R = H * diag(s) / sqrt(D): H the D x D Walsh-Hadamard matrix (D a power of two), s a fixed vector of
// random signs derived from a seed. R is orthogonal, so (R q) . (R k) = q . k: rotating keys at append
// and queries at attention leaves attention unchanged in exact arithmetic, while it spreads outlier
// channels over all channels and shrinks the quantization range. Cost O(D log D) per vector.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <skv/config.hpp>

namespace skv {

/// The sign of channel c for a seed: a splitmix64 hash, identical on host and device.
SKV_HOST_DEVICE constexpr float rotation_sign(std::uint64_t seed, int c) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(c + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (z & 1u) ? -1.0f : 1.0f;
}

/// A randomized Hadamard rotation of D-vectors, fixed by Seed.
template <int D, std::uint64_t Seed = 0x5eedull>
struct HadamardRotation {
  static_assert(D >= 2 && (D & (D - 1)) == 0, "skv::HadamardRotation: D (HeadDim) must be a power of two");
  static constexpr int kDim = D;
  static constexpr std::uint64_t kSeed = Seed;

  /// x <- R x, in place.
  SKV_HOST_DEVICE static void apply(float* x) {
    for (int c = 0; c < D; ++c) x[c] *= rotation_sign(Seed, c);
    transform(x);
  }

  /// x <- R^T x (the inverse), in place.
  SKV_HOST_DEVICE static void apply_inverse(float* x) {
    transform(x);
    for (int c = 0; c < D; ++c) x[c] *= rotation_sign(Seed, c);
  }

 private:
  // In-place fast Walsh-Hadamard transform scaled by 1/sqrt(D) (H / sqrt(D) is symmetric and
  // orthogonal, so it is its own inverse).
  SKV_HOST_DEVICE static void transform(float* x) {
    for (int h = 1; h < D; h *= 2) {
      for (int i = 0; i < D; i += 2 * h) {
        for (int j = i; j < i + h; ++j) {
          const float a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
      }
    }
    const float norm = inv_sqrt_dim();
    for (int c = 0; c < D; ++c) x[c] *= norm;
  }

  SKV_HOST_DEVICE static constexpr float inv_sqrt_dim() {
    // 1/sqrt(D) for D = 2^k: 2^(-k/2), exact for even k; for odd k the nearest float of 2^(-k/2).
    float r = 1.0f;
    int d = D;
    while (d >= 4) {
      r *= 0.5f;
      d /= 4;
    }
    return d == 2 ? r * 0.70710678118654752f : r;
  }
};

/// A copy of `rows` vectors of Layout::kHeadDim floats in the basis the layout stores keys in:
/// rotated by the layout's HadamardRotation when it rotates keys (Options<RotateKeys>), unchanged
/// otherwise. Keys at append, queries at attention and the checks against stored keys use it (host).
template <class Layout>
std::vector<float> to_key_basis(const float* x, std::size_t rows) {
  constexpr int D = Layout::kHeadDim;
  std::vector<float> r(x, x + rows * D);
  if constexpr (Layout::kRotateKeys)
    for (std::size_t i = 0; i < r.size(); i += D) HadamardRotation<D, Layout::kRotationSeed>::apply(r.data() + i);
  return r;
}

}  // namespace skv
