// skv/quant/rotation.hpp: the randomized Hadamard rotation for keys (and the queries that read them) and
// for values (and the attention outputs made of them).
//
// R = H * diag(s) / sqrt(D): H the D x D Walsh-Hadamard matrix (D a power of two), s a fixed vector of
// random signs derived from a seed. R is orthogonal, so (R q) . (R k) = q . k: rotating keys at append
// and queries at attention leaves attention unchanged in exact arithmetic, while it spreads outlier
// channels over all channels and shrinks the quantization range. Cost O(D log D) per vector.
//
// RotaryEmbedding<D> is the rotary position embedding (RoPE) of a model, as Hugging Face's models
// apply it (rotate_half: channel i < D/2 pairs with channel i + D/2): R(p) rotates pair i by the angle
// p * freq[i]. R(-p) undoes R(p), so a cache can store a key in the basis before the embedding,
// R(-t) k for token t, and hand attention R(t) of what it decodes (Options<PreRopeKeys>).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <skv/config.hpp>
#include <skv/numeric/simd.hpp>

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
    flip_signs(x);
    transform(x);
  }

  /// x <- R^T x (the inverse), in place.
  SKV_HOST_DEVICE static void apply_inverse(float* x) {
    transform(x);
    flip_signs(x);
  }

 private:
  SKV_HOST_DEVICE static void flip_signs(float* x) {
#if defined(__CUDA_ARCH__)
    for (int c = 0; c < D; ++c) x[c] *= rotation_sign(Seed, c);
#else
    const float* s = host_signs();  // the hash once per process, not per element and call
    for (int c = 0; c < D; ++c) x[c] *= s[c];
#endif
  }

  static const float* host_signs() {
    struct Table {
      float v[D];
      Table() {
        for (int c = 0; c < D; ++c) v[c] = rotation_sign(Seed, c);
      }
    };
    static const Table table;
    return table.v;
  }

  // In-place fast Walsh-Hadamard transform scaled by 1/sqrt(D) (H / sqrt(D) is symmetric and
  // orthogonal, so it is its own inverse).
  SKV_HOST_DEVICE static void transform(float* x) {
#if !defined(__CUDA_ARCH__) && (defined(SKV_HAS_AVX512) || defined(SKV_HAS_AVX2))
    if (D >= simd::kVecWidth) {
      transform_vectors(x);
      return;
    }
#endif
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

#if !defined(__CUDA_ARCH__) && (defined(SKV_HAS_AVX512) || defined(SKV_HAS_AVX2))
  // The same butterflies in the same order, a vector at a time (so the same bits): stages whose
  // partner lies in the same vector (h < kVecWidth) pair lane l with lane l ^ h through a permute,
  // the others pair whole vectors.
  static void transform_vectors(float* x) {
    using simd::Vec;
    constexpr int W = simd::kVecWidth;
    for (int i = 0; i < D; i += W) {
      Vec v = simd::vload(x + i);
      for (int h = 1; h < W; h *= 2) {
#if defined(SKV_HAS_AVX512)
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512 p = _mm512_permutexvar_ps(_mm512_xor_si512(lane, _mm512_set1_epi32(h)), v);
        const __mmask16 upper = _mm512_test_epi32_mask(lane, _mm512_set1_epi32(h));
        v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), upper, p, v);
#else
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 p = _mm256_permutevar8x32_ps(v, _mm256_xor_si256(lane, _mm256_set1_epi32(h)));
        const __m256 upper = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(lane, _mm256_set1_epi32(h)),
                                                                    _mm256_set1_epi32(h)));
        v = _mm256_blendv_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), upper);
#endif
      }
      simd::vstore(x + i, v);
    }
    for (int h = W; h < D; h *= 2) {
      for (int i = 0; i < D; i += 2 * h) {
        for (int j = i; j < i + h; j += W) {
          const Vec a = simd::vload(x + j), b = simd::vload(x + j + h);
          simd::vstore(x + j, simd::vadd(a, b));
          simd::vstore(x + j + h, simd::vsub(a, b));
        }
      }
    }
    const Vec norm = simd::vset1(inv_sqrt_dim());
    for (int i = 0; i < D; i += W) simd::vstore(x + i, simd::vmul(simd::vload(x + i), norm));
  }
#endif

 public:
  /// The transform's scale 1 / sqrt(D), as a float.
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

/// The rotary embedding of D-vectors by a model's D/2 frequencies (its inv_freq; any rope scaling
/// folded in). Angles are computed in double, as position * freq[i].
template <int D>
struct RotaryEmbedding {
  static_assert(D >= 2 && D % 2 == 0, "skv::RotaryEmbedding: D (HeadDim) must be even");
  static constexpr int kHalf = D / 2;

  /// The cos and sin of one position's angles, for rows that share the position (a token's heads).
  struct Angles {
    float cs[kHalf] = {}, sn[kHalf] = {};
    Angles() = default;
    Angles(const float* freq, double position) { set(freq, position); }
    void set(const float* freq, double position) {
      for (int i = 0; i < kHalf; ++i) {
        const double a = position * static_cast<double>(freq[i]);
        cs[i] = static_cast<float>(std::cos(a));
        sn[i] = static_cast<float>(std::sin(a));
      }
    }
    /// x <- R(position) x, in place.
    void apply(float* x) const {
      for (int i = 0; i < kHalf; ++i) rotate_pair(x + i, cs[i], sn[i]);
    }
  };

  /// x <- R(position) x, in place (a negative position undoes a positive one).
  static void apply(const float* freq, double position, float* x) { Angles(freq, position).apply(x); }

  /// Element c of R(position) x, given x[c] and its partner (x[c + D/2] for c < D/2, else x[c - D/2]).
  SKV_HOST_DEVICE static float element(const float* freq, double position, int c, float xc, float partner) {
    const int i = c < kHalf ? c : c - kHalf;
    const double a = position * static_cast<double>(freq[i]);
    const float cs = static_cast<float>(::cos(a)), sn = static_cast<float>(::sin(a));
    return c < kHalf ? xc * cs - partner * sn : xc * cs + partner * sn;
  }

  /// Rotates rows of consecutive positions (the tiles of attention): cos and sin of position * freq
  /// kept in double and advanced one position at a time by the angle-addition formulas (a rounding
  /// of about 1e-16 per step, far below float's), recomputed when a run does not start within
  /// kMaxStep positions after where the last one ended or the frequencies changed.
  class Cursor {
   public:
    static constexpr int kMaxStep = 64;
    /// Starts a run of rows at `position` with frequencies `freq`.
    void begin(const float* freq, int position) {
      if (!ready_ || !std::equal(freq, freq + kHalf, freq_)) {
        ready_ = true;
        std::copy(freq, freq + kHalf, freq_);
        for (int i = 0; i < kHalf; ++i) {
          step_c_[i] = std::cos(static_cast<double>(freq[i]));
          step_s_[i] = std::sin(static_cast<double>(freq[i]));
        }
        at_ = -1;
      }
      if (at_ < 0 || position < at_ || position - at_ > kMaxStep) {
        for (int i = 0; i < kHalf; ++i) {
          const double a = static_cast<double>(position) * static_cast<double>(freq_[i]);
          c_[i] = std::cos(a);
          s_[i] = std::sin(a);
        }
        at_ = position;
      }
      while (at_ < position) advance();
    }
    /// x <- R(position) x for the run's next position.
    void rotate_next(float* x) {
      for (int i = 0; i < kHalf; ++i) rotate_pair(x + i, static_cast<float>(c_[i]), static_cast<float>(s_[i]));
      advance();
    }

   private:
    void advance() {
      for (int i = 0; i < kHalf; ++i) {
        const double c = c_[i] * step_c_[i] - s_[i] * step_s_[i];
        s_[i] = s_[i] * step_c_[i] + c_[i] * step_s_[i];
        c_[i] = c;
      }
      ++at_;
    }
    bool ready_ = false;
    long long at_ = -1;
    float freq_[kHalf] = {};
    double c_[kHalf] = {}, s_[kHalf] = {}, step_c_[kHalf] = {}, step_s_[kHalf] = {};
  };

 private:
  /// (x[i], x[i + D/2]) <- (x[i] cos - x[i + D/2] sin, x[i + D/2] cos + x[i] sin).
  static void rotate_pair(float* x, float cs, float sn) {
    const float a = x[0], b = x[kHalf];
    x[0] = a * cs - b * sn;
    x[kHalf] = b * cs + a * sn;
  }
};

namespace detail {
/// A copy of `rows` vectors of D floats, each rotated by HadamardRotation<D, Seed> when Rotate.
template <int D, bool Rotate, std::uint64_t Seed>
std::vector<float> rotated_copy(const float* x, std::size_t rows) {
  std::vector<float> r(x, x + rows * D);
  if constexpr (Rotate)
    for (std::size_t i = 0; i < r.size(); i += D) HadamardRotation<D, Seed>::apply(r.data() + i);
  return r;
}
}  // namespace detail

/// A copy of `rows` vectors of Layout::kHeadDim floats in the basis the layout stores keys in:
/// rotated by the layout's HadamardRotation when it rotates keys (Options<RotateKeys>), unchanged
/// otherwise. Keys at append, queries at attention and the checks against stored keys use it (host).
template <class Layout>
std::vector<float> to_key_basis(const float* x, std::size_t rows) {
  return detail::rotated_copy<Layout::kHeadDim, Layout::kRotateKeys, Layout::kRotationSeed>(x, rows);
}

/// The same for values: a copy in the basis the layout stores values in, R_v v with
/// Options<RotateValues>, unchanged otherwise (host).
template <class Layout>
std::vector<float> to_value_basis(const float* x, std::size_t rows) {
  return detail::rotated_copy<Layout::kHeadDim, Layout::kRotateValues, Layout::kValueRotationSeed>(x, rows);
}

/// Attention outputs, weighted sums of stored values, back to the model's basis in place:
/// R_v^T o with Options<RotateValues>, unchanged otherwise.
template <class Layout>
void from_value_basis(float* x, std::size_t rows) {
  constexpr int D = Layout::kHeadDim;
  if constexpr (Layout::kRotateValues)
    for (std::size_t i = 0; i < rows; ++i) HadamardRotation<D, Layout::kValueRotationSeed>::apply_inverse(x + i * D);
}

}  // namespace skv
