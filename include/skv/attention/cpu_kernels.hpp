// skv/attention/cpu_kernels.hpp: the blocked inner loops and the threaded driver shared by the fast
// quantized decode (cpu_fast.hpp) and the fp16 / fp32 baselines (baseline.hpp). Host only; not
// public API except DecodeOptions.
//
// A work item is (sequence, KV head, token range); it keeps one online-softmax state per query head
// of its GQA group, in float. Items run on OpenMP threads when available and their partial states
// are merged with the usual rescaling (attention/softmax.hpp). See docs/cpu.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <skv/attention/cpu_simd.hpp>
#include <skv/config.hpp>
#include <skv/error.hpp>
#include <skv/threads.hpp>

namespace skv {
namespace cpu {

/// Run-time knobs of the CPU decode paths (fast quantized and baselines).
struct DecodeOptions {
  /// Threads to use: 0 means every OpenMP thread (omp_get_max_threads()); 1 runs on the calling
  /// thread; at most skv::kMaxThreads (skv/threads.hpp). Without OpenMP the call always runs on one
  /// thread.
  int num_threads = 0;
  /// Tokens per work item when a sequence is split across threads; 0 chooses automatically (a split
  /// only when there are fewer than 4 items per thread). Rounded up to the tile size.
  int split_tokens = 0;
  /// Sliding window: the query (position length - 1) attends to the last `window` tokens, positions
  /// length - window .. length - 1 (Hugging Face's convention); 0 attends to every token.
  int window = 0;
  /// With a window, sink tokens (Options: Sinks<N>) stay visible to every query (StreamingLLM)
  /// instead of leaving the window like any other token (Gemma, Mistral).
  bool keep_sinks = false;
};


namespace detail {

#if defined(SKV_HAS_AVX2) && !defined(SKV_HAS_AVX512)
constexpr int kDotRows = 2;  // 16 ymm registers: 4 heads x 2 rows of accumulators
constexpr int kAccVecs = 2;
#else
constexpr int kDotRows = 4;  // 32 zmm registers: 4 heads x 4 rows
constexpr int kAccVecs = 4;
#endif

/// Independent partial sums per dot product: the vector paths have a lane per channel already; the
/// portable path keeps 8, so that a 128-term dot does not round as one serial chain (which broke the
/// tolerance at logit spreads of std 20).
constexpr int kDotSplit = kVecWidth == 1 ? 8 : 1;

/// out[h * ldo + r] = dot(qs + h * D, rows + r * stride) - bias[h] for NH heads and NR rows.
template <int NH, int NR>
SKV_FORCEINLINE void dot_block(const float* SKV_RESTRICT qs, int d, const float* SKV_RESTRICT rows,
                               std::size_t stride, const float* bias, float* out, int ldo) {
  Vec acc[NH][NR][kDotSplit];
  for (int h = 0; h < NH; ++h)
    for (int r = 0; r < NR; ++r)
      for (int k = 0; k < kDotSplit; ++k) acc[h][r][k] = vzero();
  int c = 0;
  for (; c + kVecWidth * kDotSplit <= d; c += kVecWidth * kDotSplit) {
    for (int k = 0; k < kDotSplit; ++k) {
      Vec x[NR];
      for (int r = 0; r < NR; ++r) x[r] = vload(rows + r * stride + c + k * kVecWidth);
      for (int h = 0; h < NH; ++h) {
        const Vec qv = vload(qs + h * d + c + k * kVecWidth);
        for (int r = 0; r < NR; ++r) acc[h][r][k] = vfma(qv, x[r], acc[h][r][k]);
      }
    }
  }
  for (; c + kVecWidth <= d; c += kVecWidth) {
    Vec x[NR];
    for (int r = 0; r < NR; ++r) x[r] = vload(rows + r * stride + c);
    for (int h = 0; h < NH; ++h) {
      const Vec qv = vload(qs + h * d + c);
      for (int r = 0; r < NR; ++r) acc[h][r][0] = vfma(qv, x[r], acc[h][r][0]);
    }
  }
  for (int h = 0; h < NH; ++h) {
    for (int r = 0; r < NR; ++r) {
      float s = vsum(acc[h][r][0]);
      for (int k = 1; k < kDotSplit; ++k) s += vsum(acc[h][r][k]);
      const float* qh = qs + static_cast<std::size_t>(h) * d;
      const float* row = rows + r * stride;
      for (int t = c; t < d; ++t) s += qh[t] * row[t];
      out[h * ldo + r] = s - (bias ? bias[h] : 0.0f);
    }
  }
}

template <int NH>
inline void dot_rows_nh(const float* qs, int d, const float* rows, std::size_t stride, int n, const float* bias,
                        float* out, int ldo) {
  int r = 0;
  for (; r + kDotRows <= n; r += kDotRows) dot_block<NH, kDotRows>(qs, d, rows + r * stride, stride, bias, out + r, ldo);
  for (; r < n; ++r) dot_block<NH, 1>(qs, d, rows + r * stride, stride, bias, out + r, ldo);
}

/// logits[h * ldo + r] = dot(qs[h], row r) - bias[h] for nh heads (qs is [nh][d]) and n rows.
inline void dot_rows(const float* qs, int nh, int d, const float* rows, std::size_t stride, int n, const float* bias,
                     float* out, int ldo) {
  for (int h = 0; h < nh; h += 4) {
    const float* q = qs + static_cast<std::size_t>(h) * d;
    const float* b = bias ? bias + h : nullptr;
    float* o = out + static_cast<std::size_t>(h) * ldo;
    switch (std::min(4, nh - h)) {
      case 4: dot_rows_nh<4>(q, d, rows, stride, n, b, o, ldo); break;
      case 3: dot_rows_nh<3>(q, d, rows, stride, n, b, o, ldo); break;
      case 2: dot_rows_nh<2>(q, d, rows, stride, n, b, o, ldo); break;
      default: dot_rows_nh<1>(q, d, rows, stride, n, b, o, ldo); break;
    }
  }
}

#if defined(SKV_HAS_AVX512)
/// acc + a[2i] * b[2i] + a[2i+1] * b[2i+1] per 32-bit lane (int16 inputs): vpdpwssd with
/// AVX-512 VNNI, vpmaddwd + vpaddd without.
SKV_FORCEINLINE __m512i dpwssd(__m512i acc, __m512i a, __m512i b) {
#if defined(SKV_HAS_AVX512VNNI)
  return _mm512_dpwssd_epi32(acc, a, b);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

/// out[h * ldo + r] = sum_c qi[h][c] * codes[r][c], exact in int32 (|qi| < 2^15, codes < 2^8,
/// d <= 256 so |sum| <= 256 * 32767 * 255 < 2^31, d a multiple of 32), for NH heads and NR rows:
/// vpdpwssd (or vpmaddwd) on 32 channels at a time.
template <int NH, int NR>
SKV_FORCEINLINE void dot_block_i16(const std::int16_t* SKV_RESTRICT qi, int d, const std::uint16_t* SKV_RESTRICT codes,
                                   std::int32_t* out, int ldo) {
  __m512i acc[NH][NR];
  for (int h = 0; h < NH; ++h)
    for (int r = 0; r < NR; ++r) acc[h][r] = _mm512_setzero_si512();
  for (int c = 0; c < d; c += 32) {
    __m512i x[NR];
    for (int r = 0; r < NR; ++r) x[r] = _mm512_loadu_si512(codes + r * d + c);
    for (int h = 0; h < NH; ++h) {
      const __m512i qv = _mm512_loadu_si512(qi + h * d + c);
      for (int r = 0; r < NR; ++r) acc[h][r] = dpwssd(acc[h][r], qv, x[r]);
    }
  }
  for (int h = 0; h < NH; ++h) {
    std::int32_t sums[NR];
    if constexpr (NR == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), hsum4_epi32(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    } else {
      for (int r = 0; r < NR; ++r) sums[r] = _mm512_reduce_add_epi32(acc[h][r]);
    }
    for (int r = 0; r < NR; ++r) out[h * ldo + r] = sums[r];
  }
}

template <int NH>
inline void dot_rows_i16_nh(const std::int16_t* qi, int d, const std::uint16_t* codes, int n, std::int32_t* out,
                            int ldo) {
  int r = 0;
  for (; r + 4 <= n; r += 4) dot_block_i16<NH, 4>(qi, d, codes + static_cast<std::size_t>(r) * d, out + r, ldo);
  for (; r < n; ++r) dot_block_i16<NH, 1>(qi, d, codes + static_cast<std::size_t>(r) * d, out + r, ldo);
}

/// Integer dots of nh quantized queries ([nh][d] int16) with n rows of 16-bit codes ([n][d]).
inline void dot_rows_i16(const std::int16_t* qi, int nh, int d, const std::uint16_t* codes, int n, std::int32_t* out,
                         int ldo) {
  for (int h = 0; h < nh; h += 4) {
    const std::int16_t* q = qi + static_cast<std::size_t>(h) * d;
    std::int32_t* o = out + static_cast<std::size_t>(h) * ldo;
    switch (std::min(4, nh - h)) {
      case 4: dot_rows_i16_nh<4>(q, d, codes, n, o, ldo); break;
      case 3: dot_rows_i16_nh<3>(q, d, codes, n, o, ldo); break;
      case 2: dot_rows_i16_nh<2>(q, d, codes, n, o, ldo); break;
      default: dot_rows_i16_nh<1>(q, d, codes, n, o, ldo); break;
    }
  }
}

/// acc + sum of four u8 x s8 products per 32-bit lane: vpdpbusd with AVX-512 VNNI, vpmaddubsw +
/// vpmaddwd without (exact while a pair of products stays below 2^15: |w| <= 63, u <= 255).
SKV_FORCEINLINE __m512i dpbusd(__m512i acc, __m512i u, __m512i w) {
#if defined(SKV_HAS_AVX512VNNI)
  return _mm512_dpbusd_epi32(acc, u, w);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, w), _mm512_set1_epi16(1)));
#endif
}

/// out[h * ldo + r] = sum_j w[h][j] * codes[r][j] over d bytes (d a multiple of 64), exact in int32:
/// u8 codes, s8 weights in [-63, 63]. NH heads, NR rows.
template <int NH, int NR>
SKV_FORCEINLINE void dot_block_u8(const std::int8_t* SKV_RESTRICT w, int d, const std::uint8_t* SKV_RESTRICT codes,
                                  std::int32_t* out, int ldo) {
  __m512i acc[NH][NR];
  for (int h = 0; h < NH; ++h)
    for (int r = 0; r < NR; ++r) acc[h][r] = _mm512_setzero_si512();
  for (int c = 0; c < d; c += 64) {
    __m512i x[NR];
    for (int r = 0; r < NR; ++r) x[r] = _mm512_loadu_si512(codes + r * d + c);
    for (int h = 0; h < NH; ++h) {
      const __m512i wv = _mm512_loadu_si512(w + h * d + c);
      for (int r = 0; r < NR; ++r) acc[h][r] = dpbusd(acc[h][r], x[r], wv);
    }
  }
  for (int h = 0; h < NH; ++h) {
    std::int32_t sums[NR];
    if constexpr (NR == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), hsum4_epi32(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    } else {
      for (int r = 0; r < NR; ++r) sums[r] = _mm512_reduce_add_epi32(acc[h][r]);
    }
    for (int r = 0; r < NR; ++r) out[h * ldo + r] = sums[r];
  }
}

template <int NH>
inline void dot_rows_u8_nh(const std::int8_t* w, int d, const std::uint8_t* codes, int n, std::int32_t* out, int ldo) {
  int r = 0;
  for (; r + 4 <= n; r += 4) dot_block_u8<NH, 4>(w, d, codes + static_cast<std::size_t>(r) * d, out + r, ldo);
  for (; r < n; ++r) dot_block_u8<NH, 1>(w, d, codes + static_cast<std::size_t>(r) * d, out + r, ldo);
}

/// Integer dots of nh s8 weight rows ([nh][d]) with n rows of u8 codes ([n][d]), both in the same
/// byte order (any permutation of the channels, as long as both use it).
inline void dot_rows_u8(const std::int8_t* w, int nh, int d, const std::uint8_t* codes, int n, std::int32_t* out,
                        int ldo) {
  for (int h = 0; h < nh; h += 4) {
    const std::int8_t* q = w + static_cast<std::size_t>(h) * d;
    std::int32_t* o = out + static_cast<std::size_t>(h) * ldo;
    switch (std::min(4, nh - h)) {
      case 4: dot_rows_u8_nh<4>(q, d, codes, n, o, ldo); break;
      case 3: dot_rows_u8_nh<3>(q, d, codes, n, o, ldo); break;
      case 2: dot_rows_u8_nh<2>(q, d, codes, n, o, ldo); break;
      default: dot_rows_u8_nh<1>(q, d, codes, n, o, ldo); break;
    }
  }
}

/// Integer value accumulation over one tile (AVX-512): for NH heads and NC chunks of 32 channels
/// from c0, out[h][c] = sum_t wi[h][t][j(c)] * codes[t][c] exactly in int32. Tokens go in pairs:
/// the 16-bit codes of rows 2p and 2p+1 are interleaved (vpunpcklwd / vpunpckhwd) and wp[h][p][j]
/// holds the two 16-bit weights of the pair, so one vpdpwssd adds two tokens' products for 16
/// channels. Bound: |wi| <= 32767, codes <= 255, at most 32 pairs: |sum| <= 64 * 32767 * 255 < 2^31.
/// codes holds 2 * npairs rows of d codes (an odd tail row has weight 0); wp is [NH][ldw] with
/// `groups` entries per pair; every 32-channel chunk lies in one group (group_size % 32 == 0).
template <int NH, int NC>
SKV_FORCEINLINE void acc_block_i16(const std::uint16_t* SKV_RESTRICT codes, int d, int npairs,
                                   const std::int32_t* SKV_RESTRICT wp, int ldw, int groups, int group_size, int c0,
                                   std::int32_t* SKV_RESTRICT out) {
  __m512i lo[NH][NC], hi[NH][NC];
  int j[NC];
  for (int k = 0; k < NC; ++k) j[k] = (c0 + 32 * k) / group_size;
  for (int h = 0; h < NH; ++h)
    for (int k = 0; k < NC; ++k) lo[h][k] = hi[h][k] = _mm512_setzero_si512();
  for (int p = 0; p < npairs; ++p) {
    const std::uint16_t* a = codes + static_cast<std::size_t>(2 * p) * d + c0;
    __m512i xl[NC], xh[NC];
    for (int k = 0; k < NC; ++k) {
      const __m512i xa = _mm512_loadu_si512(a + 32 * k);
      const __m512i xb = _mm512_loadu_si512(a + d + 32 * k);
      xl[k] = _mm512_unpacklo_epi16(xa, xb);
      xh[k] = _mm512_unpackhi_epi16(xa, xb);
    }
    const std::int32_t* wr = wp + p * groups;
    for (int h = 0; h < NH; ++h) {
      for (int k = 0; k < NC; ++k) {
        const __m512i w = _mm512_set1_epi32(wr[h * ldw + j[k]]);
        lo[h][k] = dpwssd(lo[h][k], xl[k], w);
        hi[h][k] = dpwssd(hi[h][k], xh[k], w);
      }
    }
  }
  // lane l of lo holds channels 8l..8l+3 of the chunk, of hi 8l+4..8l+7: back to channel order
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int h = 0; h < NH; ++h) {
    for (int k = 0; k < NC; ++k) {
      std::int32_t* o = out + static_cast<std::size_t>(h) * d + c0 + 32 * k;
      _mm512_storeu_si512(o, _mm512_permutex2var_epi32(lo[h][k], i0, hi[h][k]));
      _mm512_storeu_si512(o + 16, _mm512_permutex2var_epi32(lo[h][k], i1, hi[h][k]));
    }
  }
}

template <int NH>
inline void acc_rows_i16_nh(const std::uint16_t* codes, int d, int npairs, const std::int32_t* wp, int ldw, int groups,
                            int group_size, std::int32_t* out) {
  int c = 0;
  for (; c + 64 <= d; c += 64) acc_block_i16<NH, 2>(codes, d, npairs, wp, ldw, groups, group_size, c, out);
  for (; c < d; c += 32) acc_block_i16<NH, 1>(codes, d, npairs, wp, ldw, groups, group_size, c, out);
}

/// out ([nh][d] int32) = sum over the tile's token pairs of wp-weighted codes (acc_block_i16).
inline void acc_rows_i16(const std::uint16_t* codes, int d, int npairs, const std::int32_t* wp, int nh, int ldw,
                         int groups, int group_size, std::int32_t* out) {
  for (int h = 0; h < nh; h += 4) {
    const std::int32_t* w = wp + static_cast<std::size_t>(h) * ldw;
    std::int32_t* o = out + static_cast<std::size_t>(h) * d;
    switch (std::min(4, nh - h)) {
      case 4: acc_rows_i16_nh<4>(codes, d, npairs, w, ldw, groups, group_size, o); break;
      case 3: acc_rows_i16_nh<3>(codes, d, npairs, w, ldw, groups, group_size, o); break;
      case 2: acc_rows_i16_nh<2>(codes, d, npairs, w, ldw, groups, group_size, o); break;
      default: acc_rows_i16_nh<1>(codes, d, npairs, w, ldw, groups, group_size, o); break;
    }
  }
}

/// Scales integer value sums back into float rows: acc[r][c] += (sums[r][c] - zsum[r][j]) * inv[r]
/// for channel c in value group j (group_size % 8 == 0), the zero term subtracted exactly in double.
/// sums and acc are [rows][d], zsum is [rows][d / group_size].
inline void add_scaled_sums(const std::int32_t* sums, const std::int64_t* zsum, const double* inv, int rows, int d,
                            int group_size, float* acc) {
  const int groups = d / group_size;
  for (int r = 0; r < rows; ++r) {
    const std::int32_t* a = sums + static_cast<std::size_t>(r) * d;
    float* o = acc + static_cast<std::size_t>(r) * d;
    const __m512d vs = _mm512_set1_pd(inv[r]);
    for (int j = 0; j < groups; ++j) {
      const __m512d vz = _mm512_set1_pd(static_cast<double>(zsum[static_cast<std::size_t>(r) * groups + j]));
      for (int c = j * group_size; c < (j + 1) * group_size; c += 8) {
        const __m512d x = _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c)));
        const __m256 delta = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_sub_pd(x, vz), vs));
        _mm256_storeu_ps(o + c, _mm256_add_ps(_mm256_loadu_ps(o + c), delta));
      }
    }
  }
}
#endif

/// acc[h][c] += sum_r w[h * ldw + r * groups + c / group_size] * rows[r][c], for NH heads and
/// channel vectors [c0, c0 + NV * kVecWidth). Every vector must lie in one group (group_size >= width).
template <int NH, int NV>
SKV_FORCEINLINE void acc_block(float* SKV_RESTRICT acc, int d, const float* SKV_RESTRICT w, int ldw, int groups,
                               int group_size, const float* SKV_RESTRICT rows, std::size_t stride, int n, int c0) {
  Vec a[NH][NV];
  int j[NV];
  for (int v = 0; v < NV; ++v) j[v] = (c0 + v * kVecWidth) / group_size;
  for (int h = 0; h < NH; ++h)
    for (int v = 0; v < NV; ++v) a[h][v] = vload(acc + h * d + c0 + v * kVecWidth);
  for (int r = 0; r < n; ++r) {
    Vec x[NV];
    for (int v = 0; v < NV; ++v) x[v] = vload(rows + r * stride + c0 + v * kVecWidth);
    const float* wr = w + r * groups;
    for (int h = 0; h < NH; ++h)
      for (int v = 0; v < NV; ++v) a[h][v] = vfma(vset1(wr[h * ldw + j[v]]), x[v], a[h][v]);
  }
  for (int h = 0; h < NH; ++h)
    for (int v = 0; v < NV; ++v) vstore(acc + h * d + c0 + v * kVecWidth, a[h][v]);
}

template <int NH>
inline void acc_rows_nh(float* acc, int d, const float* w, int ldw, int groups, int group_size, const float* rows,
                        std::size_t stride, int n) {
  int c = 0;
  for (; c + kAccVecs * kVecWidth <= d; c += kAccVecs * kVecWidth)
    acc_block<NH, kAccVecs>(acc, d, w, ldw, groups, group_size, rows, stride, n, c);
  for (; c + kVecWidth <= d; c += kVecWidth) acc_block<NH, 1>(acc, d, w, ldw, groups, group_size, rows, stride, n, c);
  for (; c < d; ++c) {
    const int jc = c / group_size;
    for (int h = 0; h < NH; ++h) {
      float s = acc[h * d + c];
      for (int r = 0; r < n; ++r) s += w[h * ldw + r * groups + jc] * rows[r * stride + c];
      acc[h * d + c] = s;
    }
  }
}

/// acc is [nh][d]; w is [nh][ldw] with `groups` weights per row (one per channel group of
/// group_size channels; group_size >= kVecWidth, or groups == 1 and group_size == d).
inline void acc_rows(float* acc, int nh, int d, const float* w, int ldw, int groups, int group_size, const float* rows,
                     std::size_t stride, int n) {
  for (int h = 0; h < nh; h += 4) {
    float* a = acc + static_cast<std::size_t>(h) * d;
    const float* wh = w + static_cast<std::size_t>(h) * ldw;
    switch (std::min(4, nh - h)) {
      case 4: acc_rows_nh<4>(a, d, wh, ldw, groups, group_size, rows, stride, n); break;
      case 3: acc_rows_nh<3>(a, d, wh, ldw, groups, group_size, rows, stride, n); break;
      case 2: acc_rows_nh<2>(a, d, wh, ldw, groups, group_size, rows, stride, n); break;
      default: acc_rows_nh<1>(a, d, wh, ldw, groups, group_size, rows, stride, n); break;
    }
  }
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

/// One unit of work: query heads [q_head, q_head + nh) of sequence `seq` over tokens [begin, end)
/// of KV head `kv_head`.
struct WorkItem {
  int seq;
  int kv_head;
  int q_head;
  int begin;
  int end;
};

/// Runs `process(item, state, scratch)` for every work item on `threads` threads and merges the
/// partial states into out ([batch][num_q_heads][d] of float, fp16 or bf16: merged in float, then
/// rounded to nearest even once). lengths / kv_heads give each sequence's length and KV heads,
/// starts the first token its query sees (a window's start, else 0) and kept the tokens before it
/// that stay visible (kept sinks); `tile` is the alignment of split points. `Scratch` is
/// default-constructed once per thread.
template <class Scratch, class Out, class Process>
void run_decode(int batch, const int* lengths, const int* starts, int kept, const int* kv_heads, int num_q_heads,
                int d, int tile, const DecodeOptions& opt, Out* out, Process&& process) {
  const int threads = skv::detail::resolve_threads(opt.num_threads, "decode_attention");
  long base_items = 0;
  for (int b = 0; b < batch; ++b) base_items += kv_heads[b];
  int split = opt.split_tokens;
  if (split <= 0) {
    split = std::numeric_limits<int>::max();
    const long target = threads > 1 ? 4L * threads : 1;
    if (base_items < target) {
      int max_len = 0;
      for (int b = 0; b < batch; ++b) max_len = std::max(max_len, lengths[b] - starts[b]);
      const long want = (target + base_items - 1) / base_items;
      split = std::max(512, static_cast<int>((max_len + want - 1) / want));
    }
  }
  split = split >= std::numeric_limits<int>::max() - tile ? split : (split + tile - 1) / tile * tile;

  std::vector<WorkItem> items;
  std::vector<std::size_t> seq_item(static_cast<std::size_t>(batch) + 1, 0);
  for (int b = 0; b < batch; ++b) {
    seq_item[b] = items.size();
    const int group = num_q_heads / kv_heads[b];
    const int sinks = std::min(kept, starts[b]);  // visible tokens before the window
    for (int h = 0; h < kv_heads[b]; ++h) {
      if (sinks > 0) items.push_back(WorkItem{b, h, h * group, 0, sinks});
      int begin = starts[b];
      do {
        const int end = lengths[b] - begin > split ? begin + split : lengths[b];
        items.push_back(WorkItem{b, h, h * group, begin, end});
        begin = end;
      } while (begin < lengths[b]);
    }
  }
  seq_item[batch] = items.size();

  // partial states: per item and query head of its group, [m, l, acc[d]]
  int max_group = 1;
  for (int b = 0; b < batch; ++b) max_group = std::max(max_group, num_q_heads / kv_heads[b]);
  const std::size_t per_item = static_cast<std::size_t>(max_group) * (d + 2);
  std::vector<float> partial(items.size() * per_item);
  const long n_items = static_cast<long>(items.size());

#if defined(SKV_HAS_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1 && n_items > 1)
#endif
  {
    static thread_local Scratch scratch;  // kept per thread across calls: no allocation or zeroing per call
#if defined(SKV_HAS_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (long i = 0; i < n_items; ++i) {
      const WorkItem& it = items[static_cast<std::size_t>(i)];
      const int nh = num_q_heads / kv_heads[it.seq];
      float* base = partial.data() + static_cast<std::size_t>(i) * per_item;
      ItemState st{base, base + nh, base + 2 * nh};
      st.reset(nh, d);
      if (it.end > it.begin) process(it, st, scratch);
    }
  }

  // merge the items of each (sequence, KV head) in token order
  std::vector<float> row(std::is_same<Out, float>::value ? 0 : static_cast<std::size_t>(d));
  for (int b = 0; b < batch; ++b) {
    const int nh = num_q_heads / kv_heads[b];
    std::size_t i = seq_item[b];
    while (i < seq_item[b + 1]) {
      std::size_t j = i;
      while (j < seq_item[b + 1] && items[j].kv_head == items[i].kv_head) ++j;
      for (int h = 0; h < nh; ++h) {
        float m = -std::numeric_limits<float>::infinity();
        for (std::size_t k = i; k < j; ++k) {
          const float* s = partial.data() + k * per_item;
          if (s[nh + h] != 0.0f) m = std::max(m, s[h]);
        }
        float l = 0.0f;
        Out* dst = out + (static_cast<std::size_t>(b) * num_q_heads + items[i].q_head + h) * d;
        float* o = row.empty() ? reinterpret_cast<float*>(dst) : row.data();
        std::fill(o, o + d, 0.0f);
        for (std::size_t k = i; k < j; ++k) {
          const float* s = partial.data() + k * per_item;
          if (s[nh + h] == 0.0f) continue;
          const float f = ::expf(s[h] - m);
          l += s[nh + h] * f;
          const float* acc = s + 2 * nh + static_cast<std::size_t>(h) * d;
          for (int c = 0; c < d; ++c) o[c] += acc[c] * f;
        }
        if (l > 0.0f) scale_array(o, d, 1.0f / l);
        if (!row.empty()) simd::from_f32_row(o, d, dst);
      }
      i = j;
    }
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
