// skv/attention/detail/x86/avx512_dots.hpp: the AVX-512 integer kernels of the CPU attention (host
// only, not public API). Every sum is exact in int32 (the bounds are stated per kernel), so the
// only rounding is that of the 16-bit queries and weights (docs/cpu.md, "Tolerance").
//   decode   dot_rows_i16 / dot_rows_u8: heads x token rows, a horizontal sum per dot;
//            acc_rows_i16: token pairs interleaved, one vpdpwssd adds two tokens' products;
//   prefill  key_logits_rows: tokens in lanes (codes transposed), no horizontal sums;
//            value_acc_rows: channels in lanes, many rows per tile.
// Without AVX-512 VNNI, vpdpwssd / vpdpbusd become vpmaddwd (+ vpmaddubsw) and vpaddd.
#pragma once

#include <cstddef>
#include <cstdint>

#include <skv/attention/detail/simd.hpp>
#include <skv/config.hpp>

#if defined(SKV_HAS_AVX512)

namespace skv {
namespace cpu {
namespace detail {

// ---- decode: heads x rows -------------------------------------------------------------------------

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
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[h][r] = _mm512_setzero_si512();
  for (int c = 0; c < d; c += 32) {
    __m512i x[NR];
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) x[r] = _mm512_loadu_si512(codes + r * d + c);
    SKV_UNROLL
    for (int h = 0; h < NH; ++h) {
      const __m512i qv = _mm512_loadu_si512(qi + h * d + c);
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[h][r] = dpwssd(acc[h][r], qv, x[r]);
    }
  }
  SKV_UNROLL
  for (int h = 0; h < NH; ++h) {
    std::int32_t sums[NR];
    if constexpr (NR == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), hsum4_epi32(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    } else {
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) sums[r] = _mm512_reduce_add_epi32(acc[h][r]);
    }
    SKV_UNROLL
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
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) acc[h][r] = _mm512_setzero_si512();
  for (int c = 0; c < d; c += 64) {
    __m512i x[NR];
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) x[r] = _mm512_loadu_si512(codes + r * d + c);
    SKV_UNROLL
    for (int h = 0; h < NH; ++h) {
      const __m512i wv = _mm512_loadu_si512(w + h * d + c);
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) acc[h][r] = dpbusd(acc[h][r], x[r], wv);
    }
  }
  SKV_UNROLL
  for (int h = 0; h < NH; ++h) {
    std::int32_t sums[NR];
    if constexpr (NR == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), hsum4_epi32(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
    } else {
      SKV_UNROLL
      for (int r = 0; r < NR; ++r) sums[r] = _mm512_reduce_add_epi32(acc[h][r]);
    }
    SKV_UNROLL
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
  SKV_UNROLL
  for (int k = 0; k < NC; ++k) j[k] = (c0 + 32 * k) / group_size;
  SKV_UNROLL
  for (int h = 0; h < NH; ++h)
    SKV_UNROLL
    for (int k = 0; k < NC; ++k) lo[h][k] = hi[h][k] = _mm512_setzero_si512();
  for (int p = 0; p < npairs; ++p) {
    const std::uint16_t* a = codes + static_cast<std::size_t>(2 * p) * d + c0;
    __m512i xl[NC], xh[NC];
    SKV_UNROLL
    for (int k = 0; k < NC; ++k) {
      const __m512i xa = _mm512_loadu_si512(a + 32 * k);
      const __m512i xb = _mm512_loadu_si512(a + d + 32 * k);
      xl[k] = _mm512_unpacklo_epi16(xa, xb);
      xh[k] = _mm512_unpackhi_epi16(xa, xb);
    }
    const std::int32_t* wr = wp + p * groups;
    SKV_UNROLL
    for (int h = 0; h < NH; ++h) {
      SKV_UNROLL
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
  SKV_UNROLL
  for (int h = 0; h < NH; ++h) {
    SKV_UNROLL
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

// ---- prefill: matrix kernels (docs/cpu.md, "Prefill") ----------------------------------------------

/// acc += pairwise products of x with the int16 pair at w broadcast to every lane. GCC keeps
/// vpdpwssd accumulators in place only through inline assembly (the intrinsic's copies and spills
/// cost a third of the kernel), which also folds the broadcast into the instruction.
SKV_FORCEINLINE void dpwssd_bcast(__m512i& acc, __m512i x, const std::int32_t* w) {
#if defined(SKV_HAS_AVX512VNNI) && (defined(__GNUC__) || defined(__clang__))
  __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
#else
  acc = dpwssd(acc, x, _mm512_set1_epi32(*w));
#endif
}

/// acc += pairwise products of x and w (registers), in place (see dpwssd_bcast).
SKV_FORCEINLINE void dpwssd_acc(__m512i& acc, __m512i x, __m512i w) {
#if defined(SKV_HAS_AVX512VNNI) && (defined(__GNUC__) || defined(__clang__))
  __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
#else
  acc = dpwssd(acc, x, w);
#endif
}

/// Transposes a 16 x 16 block of int32: rows in + i * ldi become columns out + i * ldo.
SKV_FORCEINLINE void transpose16_epi32(const std::int32_t* in, std::size_t ldi, std::int32_t* out, std::size_t ldo) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(in + i * ldi);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // r[4g + k]: 128-bit lane L holds rows 4g..4g+3 of column 4L + k
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);
    const __m512i v1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);
    const __m512i v2 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
    const __m512i v3 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
    _mm512_storeu_si512(out + k * ldo, _mm512_shuffle_i32x4(v0, v2, 0x88));
    _mm512_storeu_si512(out + (8 + k) * ldo, _mm512_shuffle_i32x4(v0, v2, 0xDD));
    _mm512_storeu_si512(out + (4 + k) * ldo, _mm512_shuffle_i32x4(v1, v3, 0x88));
    _mm512_storeu_si512(out + (12 + k) * ldo, _mm512_shuffle_i32x4(v1, v3, 0xDD));
  }
}

/// Key logits with tokens in lanes: logits[r][16v + l] = inv[r] * sum_p (qp[r][p] + qlo[r][p] / 2^15)
/// . kt[p][16v + l] - bias[r] for NR rows and NV vectors of 16 tokens; each dot (int16 pairs) is
/// exact in int32. kt holds the tile's centred codes transposed to [channel pair][token] (row length
/// LDK); qp the rows' 16-bit scaled queries and qlo what their rounding left, in units of 2^-15, both
/// as [row][channel pair] (row length PAIRS). No horizontal sums: each vpdpwssd adds one channel pair
/// for 16 tokens. The strides are template parameters so that every operand address is a base plus
/// a constant.
template <int NR, int NV, int PAIRS, int LDK, int LDL>
SKV_FORCEINLINE void key_logits_i16(const std::int32_t* SKV_RESTRICT kt, const std::int32_t* SKV_RESTRICT qp,
                                    const std::int32_t* SKV_RESTRICT qlo, const float* inv, const float* bias,
                                    float* SKV_RESTRICT logits) {
  __m512i acc[NR][NV], low[NR][NV];
  SKV_UNROLL
  for (int r = 0; r < NR; ++r)
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = low[r][v] = _mm512_setzero_si512();
  for (int p = 0; p < PAIRS; ++p) {
    __m512i x[NV];
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) x[v] = _mm512_loadu_si512(kt + p * LDK + 16 * v);
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      // one broadcast per row and pair, used by every token vector (the load ports, not the
      // multipliers, would otherwise limit the loop)
      if (NV == 1) {
        dpwssd_bcast(acc[r][0], x[0], qp + r * PAIRS + p);
        dpwssd_bcast(low[r][0], x[0], qlo + r * PAIRS + p);
      } else {
        const __m512i qv = _mm512_set1_epi32(qp[r * PAIRS + p]);
        const __m512i lv = _mm512_set1_epi32(qlo[r * PAIRS + p]);
        SKV_UNROLL
        for (int v = 0; v < NV; ++v) {
          dpwssd_acc(acc[r][v], x[v], qv);
          dpwssd_acc(low[r][v], x[v], lv);
        }
      }
    }
  }
  const __m512 vlo = _mm512_set1_ps(1.0f / 32768.0f);
  SKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    const __m512 vs = _mm512_set1_ps(inv[r]), vb = _mm512_set1_ps(bias[r]);
    SKV_UNROLL
    for (int v = 0; v < NV; ++v) {
      const __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low[r][v]), vlo, _mm512_cvtepi32_ps(acc[r][v]));
      _mm512_storeu_ps(logits + r * LDL + 16 * v, _mm512_fmsub_ps(dot, vs, vb));
    }
  }
}

/// key_logits_i16 for `rows` rows; logits is [rows][LDL]. Rows go in blocks that keep both
/// accumulator sets of a block in the 32 vector registers.
template <int NV, int PAIRS, int LDK, int LDL>
inline void key_logits_rows(const std::int32_t* kt, const std::int32_t* qp, const std::int32_t* qlo, int rows,
                            const float* inv, const float* bias, float* logits) {
  constexpr int kRows = NV == 1 ? 8 : NV == 2 ? 6 : 2;
  int r = 0;
  for (; r + kRows <= rows; r += kRows)
    key_logits_i16<kRows, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                               qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                               logits + static_cast<std::size_t>(r) * LDL);
  for (; r + 2 <= rows; r += 2)
    key_logits_i16<2, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                           qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                           logits + static_cast<std::size_t>(r) * LDL);
  for (; r < rows; ++r)
    key_logits_i16<1, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                           qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                           logits + static_cast<std::size_t>(r) * LDL);
}

/// Value accumulation with channels in lanes: out[r][c] = sum_p wp[r][g(c)][p] . vp[p][c] for
/// token pairs [p0, p1), NR rows, the 64 channels from C0 (32 when only 32 are left). vp holds the
/// tile's value codes with the two tokens of each pair interleaved (vpunpcklwd / vpunpckhwd order,
/// once per tile, rows of D); wp the rows' 16-bit folded weights, whose pairs are consecutive tokens:
/// [row][group][token] as int32 pairs, LDW per row, LDG per group; G channels per value group.
template <int NR, int C0, int D, int LDW, int LDG, int G>
SKV_FORCEINLINE void value_acc_i16(const std::int32_t* SKV_RESTRICT vp, int p0, int p1,
                                   const std::int32_t* SKV_RESTRICT wp, std::int32_t* SKV_RESTRICT out) {
  constexpr int NC = C0 + 64 <= D ? 2 : 1;
  __m512i lo[NR][NC], hi[NR][NC];
  SKV_UNROLL
  for (int r = 0; r < NR; ++r)
    SKV_UNROLL
    for (int k = 0; k < NC; ++k) lo[r][k] = hi[r][k] = _mm512_setzero_si512();
  for (int p = p0; p < p1; ++p) {
    __m512i xl[NC], xh[NC];
    const std::int32_t* row = vp + static_cast<std::size_t>(p) * D + C0;
    SKV_UNROLL
    for (int k = 0; k < NC; ++k) {
      xl[k] = _mm512_loadu_si512(row + 32 * k);
      xh[k] = _mm512_loadu_si512(row + 32 * k + 16);
    }
    const std::int32_t* w = wp + p;
    SKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      SKV_UNROLL
      for (int k = 0; k < NC; ++k) {
        const __m512i wv = _mm512_set1_epi32(w[r * LDW + (C0 + 32 * k) / G * LDG]);
        dpwssd_acc(lo[r][k], xl[k], wv);
        dpwssd_acc(hi[r][k], xh[k], wv);
      }
    }
  }
  // lane l of lo holds channels 8l..8l+3 of the chunk, of hi 8l+4..8l+7: back to channel order
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  SKV_UNROLL
  for (int r = 0; r < NR; ++r) {
    SKV_UNROLL
    for (int k = 0; k < NC; ++k) {
      std::int32_t* o = out + r * D + C0 + 32 * k;
      _mm512_storeu_si512(o, _mm512_permutex2var_epi32(lo[r][k], i0, hi[r][k]));
      _mm512_storeu_si512(o + 16, _mm512_permutex2var_epi32(lo[r][k], i1, hi[r][k]));
    }
  }
}

template <int NR, int C0, int D, int LDW, int LDG, int G>
SKV_FORCEINLINE void value_acc_channels(const std::int32_t* vp, int p0, int p1, const std::int32_t* wp,
                                        std::int32_t* out) {
  if constexpr (C0 < D) {
    value_acc_i16<NR, C0, D, LDW, LDG, G>(vp, p0, p1, wp, out);
    value_acc_channels<NR, C0 + 64, D, LDW, LDG, G>(vp, p0, p1, wp, out);
  }
}

/// value_acc_i16 for `rows` rows and every channel; out is [rows][D].
template <int D, int LDW, int LDG, int G>
inline void value_acc_rows(const std::int32_t* vp, int p0, int p1, const std::int32_t* wp, int rows,
                           std::int32_t* out) {
  int r = 0;
  for (; r + 4 <= rows; r += 4)
    value_acc_channels<4, 0, D, LDW, LDG, G>(vp, p0, p1, wp + static_cast<std::size_t>(r) * LDW, out + static_cast<std::size_t>(r) * D);
  for (; r < rows; ++r)
    value_acc_channels<1, 0, D, LDW, LDG, G>(vp, p0, p1, wp + static_cast<std::size_t>(r) * LDW, out + static_cast<std::size_t>(r) * D);
}

/// Sum of the 16 int32 lanes in int64 (no overflow).
SKV_FORCEINLINE std::int64_t reduce_add_epi32_wide(__m512i x) {
  const __m512i a = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(x));
  const __m512i b = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(x, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(a, b));
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv

#endif  // SKV_HAS_AVX512
