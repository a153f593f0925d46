// skv/attention/detail/kernels.hpp: the float inner loops of the CPU attention (host only, not
// public API): blocked dot products of query rows with key rows, value accumulation, and the
// online-softmax update of one tile. Decode, prefill and the dense baselines all run on them; the
// AVX-512 integer kernels are in detail/x86/avx512_dots.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <skv/attention/detail/simd.hpp>
#include <skv/config.hpp>

namespace skv {
namespace cpu {
namespace detail {

#if defined(SKV_HAS_AVX2) && !defined(SKV_HAS_AVX512)
constexpr int kDotRows = 2;  // 16 ymm registers: 4 heads x 2 rows of accumulators
constexpr int kAccVecs = 2;
#else
constexpr int kDotRows = 4;  // 32 zmm registers: 4 heads x 4 rows
constexpr int kAccVecs = 4;
#endif

/// Query rows (heads) per pass of the dot and accumulate kernels over a tile's rows.
constexpr int kHeadBlock = 4;  // the switches of dot_rows and acc_rows are written for 4

/// Independent partial sums per dot product: the vector paths have a lane per channel already; the
/// portable path keeps 8, so that a 128-term dot does not round as one serial chain (which broke the
/// tolerance at logit spreads of std 20).
constexpr int kDotSplit = kVecWidth == 1 ? 8 : 1;

/// Rows of floats: row r of a tile starts at data + r * stride (keys or values in full precision,
/// or codes unpacked to floats). The other row source is PackedRows (detail/simd.hpp), which
/// unpacks codes in registers; the dot and accumulate kernels take either.
struct FloatRows {
  const float* data;
  std::size_t stride;
  SKV_FORCEINLINE Vec load(int r, int c) const { return vload(data + r * stride + c); }
  SKV_FORCEINLINE float at(int r, int c) const { return data[r * stride + c]; }
  SKV_FORCEINLINE FloatRows from(int r) const { return {data + r * stride, stride}; }
};

/// sum_{c0 <= t < d} q[t] * row 0 [t]: the scalar tail of a dot product (d not a multiple of the
/// vector width). A function of its own, so that the forced unrolling of dot_block does not copy
/// the loop (GCC's -Waggressive-loop-optimizations misreads the copies).
template <class Rows>
inline float dot_tail(const float* q, Rows rows, int c0, int d) {
  float s = 0.0f;
  for (int t = c0; t < d; ++t) s += q[t] * rows.at(0, t);
  return s;
}

/// out[h * ldo + r] = dot(qs + h * D, row r) - bias[h] for NH heads and NR rows.
template <int NH, int NR, class Rows>
SKV_FORCEINLINE void dot_block(const float* SKV_RESTRICT qs, int d, Rows rows, const float* bias, float* out,
                               int ldo) {
  Vec acc[NH][NR][kDotSplit];
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int r = 0; r < NR; ++r)
      SKV_UNROLL
      for (int k = 0; k < kDotSplit; ++k) acc[h][r][k] = vzero();
  int c = 0;
  for (; c + kVecWidth * kDotSplit <= d; c += kVecWidth * kDotSplit) {
    SKV_UNROLL
    for (int k = 0; k < kDotSplit; ++k) {
      Vec x[NR];
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) x[r] = rows.load(r, c + k * kVecWidth);
      SKV_UNROLL
      for (int h = 0; h < NH; ++h) {
        const Vec qv = vload(qs + h * d + c + k * kVecWidth);
        SKV_UNROLL
        for (int r = 0; r < NR; ++r) acc[h][r][k] = vfma(qv, x[r], acc[h][r][k]);
      }
    }
  }
  for (; c + kVecWidth <= d; c += kVecWidth) {
    Vec x[NR];
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) x[r] = rows.load(r, c);
    SKV_UNROLL
    for (int h = 0; h < NH; ++h) {
      const Vec qv = vload(qs + h * d + c);
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[h][r][0] = vfma(qv, x[r], acc[h][r][0]);
    }
  }
  SKV_UNROLL
  for (int h = 0; h < NH; ++h) {
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      float s = vsum(acc[h][r][0]);
      SKV_UNROLL
      for (int k = 1; k < kDotSplit; ++k) s += vsum(acc[h][r][k]);
      if (c < d) s += dot_tail(qs + static_cast<std::size_t>(h) * d, rows.from(r), c, d);
      out[h * ldo + r] = s - (bias ? bias[h] : 0.0f);
    }
  }
}

template <int NH, class Rows>
inline void dot_rows_nh(const float* qs, int d, Rows rows, int n, const float* bias, float* out, int ldo) {
  int r = 0;
  for (; r + kDotRows <= n; r += kDotRows) dot_block<NH, kDotRows>(qs, d, rows.from(r), bias, out + r, ldo);
  for (; r < n; ++r) dot_block<NH, 1>(qs, d, rows.from(r), bias, out + r, ldo);
}

/// logits[h * ldo + r] = dot(qs[h], row r) - bias[h] for nh heads (qs is [nh][d]) and n rows.
template <class Rows>
inline void dot_rows(const float* qs, int nh, int d, Rows rows, int n, const float* bias, float* out, int ldo) {
  for (int h = 0; h < nh; h += kHeadBlock) {
    const float* q = qs + static_cast<std::size_t>(h) * d;
    const float* b = bias ? bias + h : nullptr;
    float* o = out + static_cast<std::size_t>(h) * ldo;
    switch (std::min(kHeadBlock, nh - h)) {
      case 4: dot_rows_nh<4>(q, d, rows, n, b, o, ldo); break;
      case 3: dot_rows_nh<3>(q, d, rows, n, b, o, ldo); break;
      case 2: dot_rows_nh<2>(q, d, rows, n, b, o, ldo); break;
      default: dot_rows_nh<1>(q, d, rows, n, b, o, ldo); break;
    }
  }
}

/// dot_rows over float rows (row r at rows + r * stride).
inline void dot_rows(const float* qs, int nh, int d, const float* rows, std::size_t stride, int n, const float* bias,
                     float* out, int ldo) {
  dot_rows(qs, nh, d, FloatRows{rows, stride}, n, bias, out, ldo);
}

/// acc[h][c] += sum_r w[h * ldw + r * groups + c / group_size] * rows[r][c], for NH heads and
/// channel vectors [c0, c0 + NV * kVecWidth). Every vector must lie in one group (group_size >= width);
/// OneGroup: all NV of them lie in the same one, so each row's weight is broadcast once per head.
template <int NH, int NV, bool OneGroup, class Rows>
SKV_FORCEINLINE void acc_block(float* SKV_RESTRICT acc, int d, const float* SKV_RESTRICT w, int ldw, int groups,
                               int group_size, Rows rows, int n, int c0) {
  Vec a[NH][NV];
  int j[NV];
  SKV_UNROLL
  for (int v = 0; v < NV; ++v) j[v] = (OneGroup ? c0 : c0 + v * kVecWidth) / group_size;
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) a[h][v] = vload(acc + h * d + c0 + v * kVecWidth);
  for (int r = 0; r < n; ++r) {
    Vec x[NV];
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) x[v] = rows.load(r, c0 + v * kVecWidth);
    const float* wr = w + r * groups;
    SKV_UNROLL
    for (int h = 0; h < NH; ++h) {
      if constexpr (OneGroup) {
        const Vec wv = vset1(wr[h * ldw + j[0]]);
        SKV_UNROLL
        for (int v = 0; v < NV; ++v) a[h][v] = vfma(wv, x[v], a[h][v]);
      } else {
        SKV_UNROLL
        for (int v = 0; v < NV; ++v) a[h][v] = vfma(vset1(wr[h * ldw + j[v]]), x[v], a[h][v]);
      }
    }
  }
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) vstore(acc + h * d + c0 + v * kVecWidth, a[h][v]);
}

template <int NH, bool OneGroup, class Rows>
SKV_FORCEINLINE int acc_blocks(float* acc, int d, const float* w, int ldw, int groups, int group_size, Rows rows,
                               int n) {
  int c = 0;
  for (; c + kAccVecs * kVecWidth <= d; c += kAccVecs * kVecWidth)
    acc_block<NH, kAccVecs, OneGroup>(acc, d, w, ldw, groups, group_size, rows, n, c);
  return c;
}

template <int NH, class Rows>
inline void acc_rows_nh(float* acc, int d, const float* w, int ldw, int groups, int group_size, Rows rows, int n) {
  // blocks start at multiples of kAccVecs vectors: each lies in one group when the groups are whole blocks
  int c = group_size % (kAccVecs * kVecWidth) == 0 ? acc_blocks<NH, true>(acc, d, w, ldw, groups, group_size, rows, n)
                                                   : acc_blocks<NH, false>(acc, d, w, ldw, groups, group_size, rows, n);
  for (; c + kVecWidth <= d; c += kVecWidth) acc_block<NH, 1, true>(acc, d, w, ldw, groups, group_size, rows, n, c);
  for (; c < d; ++c) {
    const int jc = c / group_size;
    for (int h = 0; h < NH; ++h) {
      float s = acc[h * d + c];
      for (int r = 0; r < n; ++r) s += w[h * ldw + r * groups + jc] * rows.at(r, c);
      acc[h * d + c] = s;
    }
  }
}

/// acc is [nh][d]; w is [nh][ldw] with `groups` weights per row (one per channel group of
/// group_size channels; group_size >= kVecWidth, or groups == 1 and group_size == d).
template <class Rows>
inline void acc_rows(float* acc, int nh, int d, const float* w, int ldw, int groups, int group_size, Rows rows,
                     int n) {
  for (int h = 0; h < nh; h += kHeadBlock) {
    float* a = acc + static_cast<std::size_t>(h) * d;
    const float* wh = w + static_cast<std::size_t>(h) * ldw;
    switch (std::min(kHeadBlock, nh - h)) {
      case 4: acc_rows_nh<4>(a, d, wh, ldw, groups, group_size, rows, n); break;
      case 3: acc_rows_nh<3>(a, d, wh, ldw, groups, group_size, rows, n); break;
      case 2: acc_rows_nh<2>(a, d, wh, ldw, groups, group_size, rows, n); break;
      default: acc_rows_nh<1>(a, d, wh, ldw, groups, group_size, rows, n); break;
    }
  }
}

/// acc_rows over float rows (row r at rows + r * stride).
inline void acc_rows(float* acc, int nh, int d, const float* w, int ldw, int groups, int group_size, const float* rows,
                     std::size_t stride, int n) {
  acc_rows(acc, nh, d, w, ldw, groups, group_size, FloatRows{rows, stride}, n);
}

/// x[i] *= f for i < n.
inline void scale_array(float* x, int n, float f) {
  const Vec vf = vset1(f);
  int i = 0;
  for (; i + kVecWidth <= n; i += kVecWidth) vstore(x + i, vmul(vload(x + i), vf));
  for (; i < n; ++i) x[i] *= f;
}

/// Online-softmax state of the query heads of one work item.
struct ItemState {
  float* m;    // [nh] running maximum (-inf when empty)
  float* l;    // [nh] running normaliser
  float* acc;  // [nh][d]

  void reset(int nh, int d) {
    for (int h = 0; h < nh; ++h) {
      m[h] = -std::numeric_limits<float>::infinity();
      l[h] = 0.0f;
    }
    std::fill(acc, acc + static_cast<std::size_t>(nh) * d, 0.0f);
  }
};

/// Folds a tile of logits ([nh][ldl], n tokens) into the state: rescales on a new maximum and
/// writes the unnormalised probabilities to p ([nh][ldl]). A row whose logits are all -inf (every
/// token masked: outside its window) gets probabilities 0 and leaves its state as it was.
inline void softmax_tile(ItemState& st, int nh, int d, const float* logits, int ldl, int n, float* p) {
  for (int h = 0; h < nh; ++h) {
    const float* lg = logits + static_cast<std::size_t>(h) * ldl;
    const float mt = max_of_array(lg, n);
    if (mt == -std::numeric_limits<float>::infinity()) {
      std::fill_n(p + static_cast<std::size_t>(h) * ldl, n, 0.0f);
      continue;
    }
    if (mt > st.m[h]) {
      if (st.l[h] != 0.0f) {
        const float f = ::expf(st.m[h] - mt);
        scale_array(st.acc + static_cast<std::size_t>(h) * d, d, f);
        st.l[h] *= f;
      }
      st.m[h] = mt;
    }
    st.l[h] += exp_shifted(lg, st.m[h], n, p + static_cast<std::size_t>(h) * ldl);
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
