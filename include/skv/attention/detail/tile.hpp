// skv/attention/detail/tile.hpp: the tile kernels of the CPU attention over a quantized cache (host
// only, not public API): logits, online softmax and values for any number of query rows (decode:
// the GQA heads of one KV head; prefill: query tokens x heads) over one tile of tokens.
//
// Tiles of up to 64 tokens never cross a page or a Channel-axis group (docs/cpu.md, "The work"):
//   keys, Axis::Channel   scaled query: q'[r][c] = q[r][c] * softmax_scale * s[c] and the bias
//                         sum_c q'[r][c] * z[c] once per tile, then one FMA per code per row
//                         (AVX-512: integer dots on a 16-bit + 8-bit split of q')
//   keys, Axis::Token     codes dequantized once per token (shared by the rows), then a dot
//   values, Axis::Token   folded probabilities: w = p * s once per token and group, one FMA per code
//                         per row, the zero term subtracted once per tile (groups narrower than a
//                         vector are dequantized once per token instead; AVX-512: 16-bit weights,
//                         exact int32 sums)
//   values, Axis::Channel sum_t p[t] * code[t][c] per tile, then scaled and shifted once per tile
//   codebook values      (Scheme::LloydMax) the codes unpacked as their levels, then the float
//                         paths above (the integer ones assume evenly spaced codes)
//   sinks, residual window full-precision rows, same dot / accumulate kernels
//   rotated keys          the query is rotated once per work item (O(D log D) per row)
//   pre-RoPE keys         (PreRopeKeys) each tile dequantized once, then every token turned by the
//                         rotary embedding of its position, then a dot
// Codes are unpacked with AVX-512 / AVX2 shuffles (detail/simd.hpp) into a tile in L1, or, with
// AVX2 and at most kHeadBlock rows, read in place by the float kernels (PackedRows). A tile with
// more rows than tokens (prefill) is dequantized once instead, then weighted like a dense one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <skv/attention/detail/kernels.hpp>
#include <skv/attention/detail/simd.hpp>
#include <skv/attention/detail/x86/avx512_dots.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/config.hpp>
#include <skv/numeric/half.hpp>
#include <skv/quant/quantizer.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {
namespace cpu {
namespace detail {

/// A mask that hides nothing: every row sees every token of the tile (decode).
struct NoMask {
  void operator()(float*, int, int, int, int) const {}
};

constexpr int min_int(int a, int b) { return a < b ? a : b; }

/// The tile kernels for one cache configuration.
template <class Layout>
struct Tiles {
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  static constexpr int kD = Layout::kHeadDim;
  static constexpr int kPage = Layout::kPageSize;
  /// Tokens per tile: within one page and one Channel-axis group of keys and of values.
  static constexpr int kTile =
      min_int(min_int(min_int(kPage, 64), KQ::kAxis == Axis::Channel ? KQ::kGroupSize : 64),
              VQ::kAxis == Axis::Channel ? VQ::kGroupSize : 64);
  /// Value groups per token row (Axis::Token), and whether the scale can be folded into p.
  static constexpr int kValueGroups = VQ::kAxis == Axis::Token ? kD / VQ::kGroupSize : 1;
  static constexpr bool kFoldValues = VQ::kAxis == Axis::Token && VQ::kGroupSize >= kVecWidth;
#if defined(SKV_HAS_AVX512)
  /// Integer keys (vpdpwssd on a 16-bit scaled query) and integer values (16-bit folded weights).
  static constexpr bool kIntKeys = KQ::kAxis == Axis::Channel && kD % 32 == 0 && kD <= 256 && !Layout::kPreRopeKeys;
  static constexpr bool kIntValues =
      VQ::kAxis == Axis::Token && !VQ::kCodebook && VQ::kGroupSize % 32 == 0 && kD % 32 == 0;
#else
  static constexpr bool kIntKeys = false;
  static constexpr bool kIntValues = false;
#endif
  /// Channel-axis keys and Token-axis (folded) or Channel-axis values whose codes the float
  /// kernels read straight from the cache (PackedRows; AVX2 at 2, 4 and 8 bits); the others are
  /// unpacked into a float tile first.
  static constexpr bool kPackedKeys = kPackedRowVectors<KQ::kBits> && !KQ::kCodebook;
  static constexpr bool kPackedValues = kPackedRowVectors<VQ::kBits> && !VQ::kCodebook;
  static constexpr int kPairs = (kTile + 1) / 2;
  /// Bytes per row of u8 key codes (integer keys' low halves): kD rounded up to whole vectors.
  static constexpr int kD8 = (kD + 63) / 64 * 64;
  /// Folded and integer values: weight vectors are built with shuffles when kJ (value groups per
  /// row) is a power of two up to 8, and zero-point sums lane by lane when kJ divides 8.
  static constexpr int kJShift = kValueGroups == 1 ? 0 : kValueGroups == 2 ? 1 : kValueGroups == 4 ? 2 : 3;
  static constexpr bool kWeightShuffle = (1 << kJShift) == kValueGroups;
  static constexpr bool kZeroLanes = kWeightShuffle;
  struct PairIndex {
    std::int16_t v[32];
  };
  /// int16 position 2 (p kJ + j) + e of the pair weights comes from position (2p + e) kJ + j.
  static constexpr PairIndex make_pair_index() {
    PairIndex x{};
    for (int r = 0; r < 32; ++r) {
      const int blk = r / (2 * kValueGroups), o = r % (2 * kValueGroups);
      const int j = o / 2, e = o % 2;
      x.v[r] = static_cast<std::int16_t>(blk * 2 * kValueGroups + e * kValueGroups + j);
    }
    return x;
  }
  static constexpr PairIndex kPairIndex = make_pair_index();

  struct Scratch {
    std::vector<float> kbuf, vbuf, ms, mz, logits, p, w, qs, q0, qr, bias, zs, tmp;
    std::vector<std::uint16_t> kcodes, vcodes;
    std::vector<std::int16_t> qi, qlo16;
    std::vector<std::int8_t> qlo;
    std::vector<std::uint8_t> kcodes8;
    std::vector<std::int32_t> dots, dots_lo, wp, vint, wi16;
    std::vector<double> qbias, qstep, fbias, vinv;
    std::vector<std::int64_t> vzsum;
    typename RotaryEmbedding<kD>::Cursor rope;  ///< PreRopeKeys: the rotary angles of the tile's tokens
    int nh = 0;
    void ensure(int heads) {
      if (heads <= nh) return;
      nh = heads;
      const std::size_t tile = static_cast<std::size_t>(kTile) * kD;
      kbuf.assign(tile, 0.0f);
      vbuf.assign(tile, 0.0f);
      ms.assign(tile, 0.0f);
      mz.assign(tile, 0.0f);
      logits.assign(static_cast<std::size_t>(heads) * kTile, 0.0f);
      p.assign(static_cast<std::size_t>(heads) * kTile + 32, 0.0f);  // vector reads past the last head
      qs.assign(static_cast<std::size_t>(heads) * kD, 0.0f);
      q0.assign(static_cast<std::size_t>(heads) * kD, 0.0f);
      if (Layout::kRingRotatesKeys) qr.assign(static_cast<std::size_t>(heads) * kD, 0.0f);
      bias.assign(static_cast<std::size_t>(heads), 0.0f);
      zs.assign(static_cast<std::size_t>(heads) * kValueGroups, 0.0f);
      tmp.assign(static_cast<std::size_t>(heads) * kD, 0.0f);
      kcodes.assign(tile, 0);
      kcodes8.assign(static_cast<std::size_t>(kTile) * kD8, 0);
      vcodes.assign(tile + kD, 0);  // one more row: the zero-weight partner of an odd last token
      wp.assign(static_cast<std::size_t>(heads) * kPairs * kValueGroups + 32, 0);
      wi16.assign(static_cast<std::size_t>(kPairs) * kValueGroups + 32, 0);
      w.assign(static_cast<std::size_t>(heads) * kTile * kValueGroups + 2 * kValueGroups + 32, 0.0f);
      vint.assign(static_cast<std::size_t>(heads) * kD, 0);
      qi.assign(static_cast<std::size_t>(heads) * kD, 0);
      qlo.assign(static_cast<std::size_t>(heads) * kD8, 0);
      qlo16.assign(static_cast<std::size_t>(kD), 0);
      dots.assign(static_cast<std::size_t>(heads) * kTile, 0);
      dots_lo.assign(static_cast<std::size_t>(heads) * kTile, 0);
      qbias.assign(static_cast<std::size_t>(heads), 0.0);
      qstep.assign(static_cast<std::size_t>(heads), 0.0);
      fbias.assign(static_cast<std::size_t>(heads), 0.0);
      vinv.assign(static_cast<std::size_t>(heads), 0.0);
      vzsum.assign(static_cast<std::size_t>(heads) * kValueGroups, 0);
    }
  };

  /// Scales and zero points of `count` metadata entries from `first` as floats.
  template <class Q, class Scale>
  static void load_meta(const Scale* scales, const Scale* zeros, int first, int count, float* s, float* z) {
    simd::to_f32_row(scales + first, count, s);
    if (Q::kHasZero) {
      simd::to_f32_row(zeros + first, count, z);
    } else {
      std::fill(z, z + count, Q::kSymmetricZero);
    }
  }

  /// Turns unpacked codes of Axis::Token rows (slots slot0..slot0+n) into dequantized values.
  template <class Q, class Block>
  static void dequantize_token_rows(const Block& blk, int slot0, int n, float* buf, float* ms, float* mz) {
    constexpr int kGroups = kD / Q::kGroupSize;
    load_meta<Q>(blk.scales(), blk.zeros(), slot0 * kGroups, n * kGroups, ms, mz);
    for (int i = 0; i < n; ++i) {
      float* row = buf + static_cast<std::size_t>(i) * kD;
      for (int j = 0; j < kGroups; ++j) {
        const float s = ms[i * kGroups + j], z = mz[i * kGroups + j];
        for (int c = j * Q::kGroupSize; c < (j + 1) * Q::kGroupSize; ++c) row[c] = (row[c] - z) * s;
      }
    }
  }

  /// Turns n unpacked rows of Axis::Channel codes into values: (code - z[c]) * s[c].
  static void dequantize_channel_rows(float* SKV_RESTRICT buf, int n, const float* SKV_RESTRICT s,
                                      const float* SKV_RESTRICT z) {
    for (int i = 0; i < n; ++i) {
      float* row = buf + static_cast<std::size_t>(i) * kD;
      int c = 0;
      for (; c + kVecWidth <= kD; c += kVecWidth) vstore(row + c, vmul(vsub(vload(row + c), vload(z + c)), vload(s + c)));
      for (; c < kD; ++c) row[c] = (row[c] - z[c]) * s[c];
    }
  }

  /// The codes of rows slot0..slot0+n as floats: the levels they stand for (Quantizer::level).
  template <class Q, class Block>
  static void unpack_tile(const Block& blk, int slot0, int n, float* buf) {
    for (int i = 0; i < n; ++i) unpack_levels_f32<Q>(blk.row(slot0 + i), kD, buf + static_cast<std::size_t>(i) * kD);
  }

  /// Whether the float kernels read codes in place (PackedRows) for `rows` query rows: when the
  /// width allows it (Packed) and they pass over the codes once (at most kHeadBlock rows,
  /// detail/kernels.hpp).
  template <bool Packed>
  static constexpr bool reads_in_place(int rows) {
    return Packed && rows <= kHeadBlock;
  }

  /// Whether a tile of n tokens is dequantized once, (code - z) * s, for `rows` query rows: when
  /// there are more rows than tokens (prefill) and the codes are not read in place anyway. Else
  /// the scales go into each row's query (keys) or weights (values).
  template <bool Packed>
  static constexpr bool dequantize_once(int rows, int n) {
    return rows > n && !reads_in_place<Packed>(rows);
  }

  /// Calls f with the codes of rows slot0..slot0+n as a row source for the float kernels: read in
  /// place (reads_in_place), else unpacked into buf first.
  template <class Q, bool Packed, class Block, class F>
  static void with_code_rows(const Block& blk, int slot0, int n, int rows, float* buf, F&& f) {
    if constexpr (Packed) {
      if (reads_in_place<Packed>(rows)) {
        f(PackedRows<Q::kBits>{blk.row(slot0), Block::L::kRowBytes});
        return;
      }
    }
    unpack_tile<Q>(blk, slot0, n, buf);
    f(FloatRows{buf, static_cast<std::size_t>(kD)});
  }

#if defined(SKV_HAS_AVX512)
  /// Axis::Channel keys with integer dot products. The scaled query q' (per head and tile), in
  /// units step = 32767 / max|q'|, is split into qi = round(q' * step) (16 bits) and
  /// ql = round((q' * step - qi) * 126) (8 bits, |ql| <= 63); each token costs one vpdpwssd per 32
  /// codes and one vpdpbusd per 64 codes per head. Only the codes' distance from the middle code
  /// c0 = 2^(b-1) meets the integer query; the zero point goes through the unrounded q', in double:
  ///   logit = (sum (qi + ql / 126) * code - c0 * sum (qi + ql / 126)) / step - sum q' * (z - c0)
  /// so the error is sum e_c * (code - c0) with |e_c| <= max|q'| / (32767 * 252), whatever the zero
  /// points. (A 16-bit query alone, with the zero point applied to it, multiplied its rounding by
  /// zero points near 2048 on channels far from zero, and was too coarse for large logits;
  /// docs/cpu.md, "Tolerance".)
  template <class Block>
  static void integer_key_logits(const Block& kb, int slot, int n, int nh, const float* s, const float* z,
                                 Scratch& sc) {
    constexpr float kMid = static_cast<float>((KQ::kMaxCode + 1) / 2);
    constexpr float kLo = 126.0f;  // low halves in [-63, 63]: s8, and exact pair sums without VNNI
    // z - c0, exact in float (integers below 2^13)
    float* zc = sc.tmp.data();
    for (int c = 0; c < kD; c += 16) _mm512_storeu_ps(zc + c, _mm512_sub_ps(_mm512_loadu_ps(z + c), _mm512_set1_ps(kMid)));
    for (int q = 0; q < nh; ++q) {
      const float* q0 = sc.q0.data() + static_cast<std::size_t>(q) * kD;
      float* qs = sc.qs.data() + static_cast<std::size_t>(q) * kD;
      __m512 vm = _mm512_setzero_ps();
      __m512d fb = _mm512_setzero_pd();  // sum q' (z - c0): products exact in double
      for (int c = 0; c < kD; c += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(q0 + c), _mm512_loadu_ps(s + c));
        _mm512_storeu_ps(qs + c, v);
        vm = _mm512_max_ps(vm, _mm512_abs_ps(v));
        const __m512 w = _mm512_loadu_ps(zc + c);
        fb = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(_mm512_castps512_ps256(w)), fb);
        fb = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))),
                             _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1))), fb);
      }
      const float m = _mm512_reduce_max_ps(vm);
      const float step = m > 0.0f ? 32767.0f / m : 0.0f;
      const __m512 vstep = _mm512_set1_ps(step);
      std::int16_t* qi = sc.qi.data() + static_cast<std::size_t>(q) * kD;
      std::int16_t* ql = sc.qlo16.data();  // [kD] low halves as int16
      __m512i isum = _mm512_setzero_si512(), lsum = _mm512_setzero_si512();  // exact: |sum| < 2^24
      for (int c = 0; c < kD; c += 16) {
        const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(qs + c), vstep);
        const __m512i iv = _mm512_cvtps_epi32(x);
        // the low half: what rounding left, |x - qi| <= 1/2 (exact in float), in units of 1/kLo
        const __m512i lv = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x, _mm512_cvtepi32_ps(iv)), _mm512_set1_ps(kLo)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qi + c), _mm512_cvtsepi32_epi16(iv));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ql + c), _mm512_cvtsepi32_epi16(lv));
        isum = _mm512_add_epi32(isum, iv);
        lsum = _mm512_add_epi32(lsum, lv);
      }
      // s8 low halves in the byte order of the packed codes (vpacksswb interleaves like vpackuswb)
      std::int8_t* q8 = sc.qlo.data() + static_cast<std::size_t>(q) * kD8;
      for (int c = 0; c < kD; c += 64)
        _mm512_storeu_si512(q8 + c, _mm512_packs_epi16(_mm512_loadu_si512(ql + c),
                                                       c + 32 < kD ? _mm512_loadu_si512(ql + c + 32) : _mm512_setzero_si512()));
      sc.qbias[q] = static_cast<double>(kMid) * (static_cast<double>(_mm512_reduce_add_epi32(isum)) +
                                                 static_cast<double>(_mm512_reduce_add_epi32(lsum)) / kLo);
      sc.qstep[q] = m > 0.0f ? 1.0 / static_cast<double>(step) : 0.0;
      sc.fbias[q] = _mm512_reduce_add_pd(fb);
    }
    for (int i = 0; i < n; ++i) {
      std::uint16_t* c16 = sc.kcodes.data() + static_cast<std::size_t>(i) * kD;
      std::uint8_t* c8 = sc.kcodes8.data() + static_cast<std::size_t>(i) * kD8;
      unpack_row_u16<KQ::kBits>(kb.row(slot + i), kD, c16);
      for (int c = 0; c < kD; c += 64)
        _mm512_storeu_si512(c8 + c, _mm512_packus_epi16(_mm512_loadu_si512(c16 + c), c + 32 < kD ? _mm512_loadu_si512(c16 + c + 32)
                                                                                                 : _mm512_setzero_si512()));
    }
    dot_rows_i16(sc.qi.data(), nh, kD, sc.kcodes.data(), n, sc.dots.data(), kTile);
    dot_rows_u8(sc.qlo.data(), nh, kD8, sc.kcodes8.data(), n, sc.dots_lo.data(), kTile);
    const __m512d vlo = _mm512_set1_pd(1.0 / kLo);
    for (int q = 0; q < nh; ++q) {
      const std::int32_t* dq = sc.dots.data() + static_cast<std::size_t>(q) * kTile;
      const std::int32_t* dl = sc.dots_lo.data() + static_cast<std::size_t>(q) * kTile;
      float* lq = sc.logits.data() + static_cast<std::size_t>(q) * kTile;
      const __m512d vb = _mm512_set1_pd(sc.qbias[q]), vs = _mm512_set1_pd(sc.qstep[q]), vf = _mm512_set1_pd(sc.fbias[q]);
      int i = 0;
      for (; i + 8 <= n; i += 8) {
        const __m512d x = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dl + i))), vlo,
                                          _mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dq + i))));
        _mm256_storeu_ps(lq + i, _mm512_cvtpd_ps(_mm512_fmsub_pd(_mm512_sub_pd(x, vb), vs, vf)));
      }
      for (; i < n; ++i)
        lq[i] = static_cast<float>(
            (static_cast<double>(dq[i]) + static_cast<double>(dl[i]) / kLo - sc.qbias[q]) * sc.qstep[q] - sc.fbias[q]);
    }
  }

  /// Axis::Token values (group size a multiple of 32) with integer accumulation. Per head and tile,
  /// the folded weights w[t][j] = p[t] * s[t][j] are rounded to 16 bits relative to their maximum,
  /// wi = round(w * 32767 / max w), and sum_t wi[t][j] * code[t][c] is accumulated exactly in int32
  /// (token pairs per vpdpwssd, detail/x86/avx512_dots.hpp). The zero points are subtracted exactly
  /// (Z[j] = sum_t wi[t][j] * z[t][j] in int64) and the result scaled back once per tile:
  /// acc[c] += (A[c] - Z[j]) * max w / 32767. The only new error is the rounding of the weights,
  /// |w - wi * max w / 32767| <= max w / 65534 (docs/cpu.md, "Tolerance").
  template <class Block>
  static void integer_values_tile(const Block& vb, int slot, int n, int nh, ItemState& st, Scratch& sc) {
    constexpr int kJ = kValueGroups;
    for (int i = 0; i < n; ++i)
      unpack_row_u16<VQ::kBits>(vb.row(slot + i), kD, sc.vcodes.data() + static_cast<std::size_t>(i) * kD);
    const int npairs = (n + 1) / 2;
    float* s = sc.ms.data();
    float* z = sc.mz.data();
    load_meta<VQ>(vb.scales(), vb.zeros(), slot * kJ, n * kJ, s, z);
    // the partner of an odd last token and the rest of the last vector: weight 0
    for (int e = n * kJ; e < (n + 1) * kJ + 16; ++e) {
      s[e] = 0.0f;
      z[e] = 0.0f;
    }
    const int m = 2 * npairs;
    const int nw = m * kJ;                       // weights of the tile, the zero-weight partner included
    const int nwv = (nw + 15) / 16 * 16;         // rounded up to whole vectors
    const __mmask16 tail = static_cast<__mmask16>((1u << (nw % 16 ? nw % 16 : 16)) - 1u);
    float* wq = sc.w.data();                     // [nwv] folded weights of one head
    std::int16_t* wi = reinterpret_cast<std::int16_t*>(sc.wi16.data());
    for (int q = 0; q < nh; ++q) {
      const float* pq = sc.p.data() + static_cast<std::size_t>(q) * kTile;
      // w[i * kJ + j] = p[i] * s[i * kJ + j]; entries past n * kJ are 0 (s and z of the partner are 0)
      __m512 vmax = _mm512_setzero_ps();
      for (int e = 0; e < nwv; e += 16) {
        __m512 pv;
        if (kWeightShuffle) {
          const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                kJShift);
          pv = _mm512_permutexvar_ps(idx, _mm512_loadu_ps(pq + e / kJ));
        } else {
          alignas(64) float pe[16];
          for (int l = 0; l < 16; ++l) pe[l] = (e + l) / kJ < n ? pq[(e + l) / kJ] : 0.0f;
          pv = _mm512_load_ps(pe);
        }
        const __mmask16 k = e + 16 <= nw ? static_cast<__mmask16>(0xFFFF) : (e < nw ? tail : static_cast<__mmask16>(0));
        const __m512 w = _mm512_maskz_mul_ps(k, pv, _mm512_loadu_ps(s + e));
        _mm512_storeu_ps(wq + e, w);
        vmax = _mm512_max_ps(vmax, w);
      }
      const float wmax = _mm512_reduce_max_ps(vmax);
      const float step = wmax > 0.0f ? 32767.0f / wmax : 0.0f;
      sc.vinv[q] = wmax > 0.0f ? static_cast<double>(wmax) / 32767.0 : 0.0;
      // wi = round(w * step) in [0, 32767]; Z[j] = sum_t wi[t][j] * z[t][j], exact in double
      // (|wi * z| < 2^15 * 2^24, at most 64 terms)
      const __m512 vstep = _mm512_set1_ps(step);
      __m512d zacc = _mm512_setzero_pd();
      for (int e = 0; e < nwv; e += 16) {
        const __m512i iv = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(wq + e), vstep));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(wi + e), _mm512_cvtepi32_epi16(iv));
        if (kZeroLanes) {
          const __mmask16 k = e + 16 <= nw ? static_cast<__mmask16>(0xFFFF) : (e < nw ? tail : static_cast<__mmask16>(0));
          const __m512 zv = _mm512_maskz_loadu_ps(k, z + e);
          zacc = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(iv)), _mm512_cvtps_pd(_mm512_castps512_ps256(zv)), zacc);
          zacc = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(iv, 1)),
                                 _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(zv), 1))), zacc);
        }
      }
      std::int64_t* zq = sc.vzsum.data() + static_cast<std::size_t>(q) * kJ;
      if (kZeroLanes) {
        alignas(64) double zl[8];
        _mm512_store_pd(zl, zacc);
        for (int j = 0; j < kJ; ++j) {
          double t = 0.0;
          for (int l = j; l < 8; l += kJ) t += zl[l];
          zq[j] = static_cast<std::int64_t>(t);
        }
      } else {
        for (int j = 0; j < kJ; ++j) zq[j] = 0;
        for (int e = 0; e < nw; ++e) zq[e % kJ] += static_cast<std::int64_t>(wi[e]) * static_cast<std::int64_t>(z[e]);
      }
      // pairs: wp[p * kJ + j] = wi[2p][j] | wi[2p + 1][j] << 16
      std::int32_t* wpq = sc.wp.data() + static_cast<std::size_t>(q) * kPairs * kJ;
      if (kJ == 1) {
        std::memcpy(wpq, wi, sizeof(std::int16_t) * static_cast<std::size_t>(nw));
      } else if (kWeightShuffle) {
        const __m512i idx = _mm512_loadu_si512(kPairIndex.v);
        for (int e = 0; e < nw; e += 32)
          _mm512_storeu_si512(reinterpret_cast<std::int16_t*>(wpq) + e,
                              _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(wi + e)));
      } else {
        for (int i = 0; i < m; i += 2)
          for (int j = 0; j < kJ; ++j)
            wpq[(i / 2) * kJ + j] = static_cast<std::int32_t>(static_cast<std::uint16_t>(wi[i * kJ + j]) |
                                                              (static_cast<std::uint32_t>(wi[(i + 1) * kJ + j]) << 16));
      }
    }
    std::int32_t* vint = sc.vint.data();
    acc_rows_i16(sc.vcodes.data(), kD, npairs, sc.wp.data(), nh, kPairs * kJ, kJ, VQ::kGroupSize, vint);
    add_scaled_sums(vint, sc.vzsum.data(), sc.vinv.data(), nh, kD, VQ::kGroupSize, st.acc);
  }
#endif

  /// Folded value weights of one row over a tile of n tokens: w[i kJ + j] = p[i] s[i kJ + j], and
  /// zs[j] = sum_i w[i kJ + j] z[i kJ + j] (kJ value groups per token). With AVX2, eight weights
  /// per vector when kJ divides 8 (p spread over the lanes by a permute).
  static void fold_weights(const float* SKV_RESTRICT p, const float* SKV_RESTRICT s, const float* SKV_RESTRICT z,
                           int n, float* SKV_RESTRICT w, float* SKV_RESTRICT zs) {
    constexpr int kJ = kValueGroups;
    for (int j = 0; j < kJ; ++j) zs[j] = 0.0f;
    int e = 0;
#if defined(SKV_HAS_AVX2) && !defined(SKV_HAS_AVX512)
    if constexpr (kWeightShuffle) {
      const __m256i token = _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), kJShift);
      __m256 zacc = _mm256_setzero_ps();
      for (; e + 8 <= n * kJ; e += 8) {  // p is read up to 7 past e / kJ: the scratch pads it
        const __m256 wv = _mm256_mul_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(p + e / kJ), token), _mm256_loadu_ps(s + e));
        _mm256_storeu_ps(w + e, wv);
        zacc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(z + e), zacc);
      }
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, zacc);
      for (int l = 0; l < 8; ++l) zs[l % kJ] += lanes[l];  // lane l holds group l mod kJ
    }
#endif
    for (; e < n * kJ; ++e) {
      w[e] = p[e / kJ] * s[e];
      zs[e % kJ] += w[e] * z[e];
    }
  }

  /// Values of tokens [slot, slot + n) of a page block, weighted by the probabilities in sc.p.
  template <class Block>
  static void values_tile(const Block& vb, int slot, int n, int nh, ItemState& st, Scratch& sc) {
#if defined(SKV_HAS_AVX512)
    if (kIntValues) {
      integer_values_tile(vb, slot, n, nh, st, sc);
      return;
    }
#endif
    float* vbuf = sc.vbuf.data();
    float* p = sc.p.data();
    const bool dequantize_tile = dequantize_once<kPackedValues>(nh, n);
    if constexpr (kFoldValues) {
      if (!dequantize_tile) {
        constexpr int kJ = kValueGroups;
        float* s = sc.ms.data();
        float* z = sc.mz.data();
        load_meta<VQ>(vb.scales(), vb.zeros(), slot * kJ, n * kJ, s, z);
        float* w = sc.w.data();
        for (int q = 0; q < nh; ++q) {
          const float* pq = p + static_cast<std::size_t>(q) * kTile;
          float* wq = w + static_cast<std::size_t>(q) * kTile * kJ;
          float zs[kJ];
          fold_weights(pq, s, z, n, wq, zs);
          float* acc = st.acc + static_cast<std::size_t>(q) * kD;
          for (int j = 0; j < kJ; ++j) {
            const Vec vz = vset1(zs[j]);
            int c = j * VQ::kGroupSize;
            const int c_end = c + VQ::kGroupSize;
            for (; c + kVecWidth <= c_end; c += kVecWidth) vstore(acc + c, vsub(vload(acc + c), vz));
            for (; c < c_end; ++c) acc[c] -= zs[j];
          }
        }
        with_code_rows<VQ, kPackedValues>(vb, slot, n, nh, vbuf, [&](const auto& codes) {
          acc_rows(st.acc, nh, kD, w, kTile * kJ, kJ, VQ::kGroupSize, codes, n);
        });
        return;
      }
    }
    if constexpr (VQ::kAxis == Axis::Channel) {
      float* s = sc.ms.data();
      float* z = sc.mz.data();
      load_meta<VQ>(vb.scales(), vb.zeros(), (slot / VQ::kGroupSize) * kD, kD, s, z);
      if (dequantize_tile) {
        unpack_tile<VQ>(vb, slot, n, vbuf);
        dequantize_channel_rows(vbuf, n, s, z);
        acc_rows(st.acc, nh, kD, p, kTile, 1, kD, vbuf, kD, n);
        return;
      }
      float* tmp = sc.tmp.data();
      std::fill(tmp, tmp + static_cast<std::size_t>(nh) * kD, 0.0f);
      with_code_rows<VQ, kPackedValues>(vb, slot, n, nh, vbuf,
                                        [&](const auto& codes) { acc_rows(tmp, nh, kD, p, kTile, 1, kD, codes, n); });
      for (int q = 0; q < nh; ++q) {
        const float* pq = p + static_cast<std::size_t>(q) * kTile;
        float psum = 0.0f;
        for (int i = 0; i < n; ++i) psum += pq[i];
        const float* tq = tmp + static_cast<std::size_t>(q) * kD;
        float* acc = st.acc + static_cast<std::size_t>(q) * kD;
        for (int c = 0; c < kD; ++c) acc[c] += s[c] * (tq[c] - z[c] * psum);
      }
    } else {
      unpack_tile<VQ>(vb, slot, n, vbuf);
      dequantize_token_rows<VQ>(vb, slot, n, vbuf, sc.ms.data(), sc.mz.data());
      acc_rows(st.acc, nh, kD, p, kTile, 1, kD, vbuf, kD, n);
    }
  }


  /// Logits of rows [0, rows) for quantized indices [j, j + n) (one tile) into sc.logits
  /// ([rows][kTile]); sc.q0 holds the rows' queries (scaled, rotated).
  static void key_logits(const SequenceView<Layout>& view, int h, int j, int n, int rows, Scratch& sc) {
    const int slot = j % kPage;
    const auto kb = view.keys(j, h);
    float* kbuf = sc.kbuf.data();
    if constexpr (Layout::kPreRopeKeys) {  // dequantized, then turned by R(t) token by token
      unpack_tile<KQ>(kb, slot, n, kbuf);
      if constexpr (KQ::kAxis == Axis::Channel) {
        load_meta<KQ>(kb.scales(), kb.zeros(), (slot / KQ::kGroupSize) * kD, kD, sc.ms.data(), sc.mz.data());
        dequantize_channel_rows(kbuf, n, sc.ms.data(), sc.mz.data());
      } else {
        dequantize_token_rows<KQ>(kb, slot, n, kbuf, sc.ms.data(), sc.mz.data());
      }
      rope_rows(view, Layout::kSinkTokens + j, n, sc);
      dot_rows(sc.q0.data(), rows, kD, kbuf, kD, n, nullptr, sc.logits.data(), kTile);
      return;
    }
    if (KQ::kAxis == Axis::Channel) {
      float* s = sc.ms.data();
      float* z = sc.mz.data();
      load_meta<KQ>(kb.scales(), kb.zeros(), (slot / KQ::kGroupSize) * kD, kD, s, z);
#if defined(SKV_HAS_AVX512)
      if (kIntKeys) {
        integer_key_logits(kb, slot, n, rows, s, z, sc);
        return;
      }
#endif
      if (dequantize_once<kPackedKeys>(rows, n)) {
        unpack_tile<KQ>(kb, slot, n, kbuf);
        dequantize_channel_rows(kbuf, n, s, z);
        dot_rows(sc.q0.data(), rows, kD, kbuf, kD, n, nullptr, sc.logits.data(), kTile);
        return;
      }
      for (int r = 0; r < rows; ++r) {
        const float* q0 = sc.q0.data() + static_cast<std::size_t>(r) * kD;
        float* qs = sc.qs.data() + static_cast<std::size_t>(r) * kD;
        Vec b = vzero();
        int c = 0;
        for (; c + kVecWidth <= kD; c += kVecWidth) {
          const Vec v = vmul(vload(q0 + c), vload(s + c));
          vstore(qs + c, v);
          b = vfma(v, vload(z + c), b);
        }
        float bias = vsum(b);
        for (; c < kD; ++c) {
          qs[c] = q0[c] * s[c];
          bias += qs[c] * z[c];
        }
        sc.bias[r] = bias;
      }
      with_code_rows<KQ, kPackedKeys>(kb, slot, n, rows, kbuf, [&](const auto& codes) {
        dot_rows(sc.qs.data(), rows, kD, codes, n, sc.bias.data(), sc.logits.data(), kTile);
      });
    } else {
      unpack_tile<KQ>(kb, slot, n, kbuf);
      dequantize_token_rows<KQ>(kb, slot, n, kbuf, sc.ms.data(), sc.mz.data());
      dot_rows(sc.q0.data(), rows, kD, kbuf, kD, n, nullptr, sc.logits.data(), kTile);
    }
  }

  /// Quantized indices [j, j + n) of KV head h (within one tile) for rows [0, rows): logits,
  /// mask(logits, ldl, first token, n, rows) to hide what some rows do not see, softmax, values.
  template <class Mask>
  static void quantized_tile(const SequenceView<Layout>& view, int h, int j, int n, int rows, ItemState& st,
                             Scratch& sc, const Mask& mask) {
    key_logits(view, h, j, n, rows, sc);
    mask(sc.logits.data(), kTile, Layout::kSinkTokens + j, n, rows);
    softmax_tile(st, rows, kD, sc.logits.data(), kTile, n, sc.p.data());
    values_tile(view.values(j, h), j % kPage, n, rows, st, sc);
  }

  /// Whether the tiles read the ring's rotated key rows in the rotated basis (against R q): with
  /// PreRopeKeys they are decoded to the stored basis instead, to be turned by the rotary embedding.
  static constexpr bool kRotatedRingKeys = Layout::kRingRotatesKeys && !Layout::kPreRopeKeys;

  /// PreRopeKeys: rows [0, n) of sc.kbuf, keys of tokens [t, t + n) as stored, turned by R(t + i).
  static void rope_rows(const SequenceView<Layout>& view, int t, int n, Scratch& sc) {
    sc.rope.begin(view.rope_freq, t);
    for (int i = 0; i < n; ++i) sc.rope.rotate_next(sc.kbuf.data() + static_cast<std::size_t>(i) * kD);
  }

  /// Tokens [t, t + n) of KV head h in full precision, sinks (all below kSinkTokens) or ring
  /// tokens, for rows [0, rows), masked like quantized_tile.
  template <class Mask>
  static void full_precision_tile(const SequenceView<Layout>& view, int h, int t, int n, int rows, ItemState& st,
                                  Scratch& sc, bool sinks, const Mask& mask) {
    const float* q = sc.q0.data();
    for (int i = 0; i < n; ++i) {
      const auto* k = sinks ? view.sink_key(t + i, h) : view.residual_key(t + i, h);  // float, fp16 or 8-bit
      const auto* v = sinks ? view.sink_value(t + i, h) : view.residual_value(t + i, h);
      if constexpr (kRotatedRingKeys) {
        Layout::KeyRing::load_rotated(k, sc.kbuf.data() + static_cast<std::size_t>(i) * kD);
      } else {
        Layout::KeyRing::load(k, sc.kbuf.data() + static_cast<std::size_t>(i) * kD);
      }
      Layout::ValueRing::load(v, sc.vbuf.data() + static_cast<std::size_t>(i) * kD);
    }
    if constexpr (Layout::kPreRopeKeys) rope_rows(view, t, n, sc);
    if constexpr (kRotatedRingKeys) {  // rotated key rows (cache/ring.hpp) against R q: R^T R = I
      std::copy_n(sc.q0.data(), static_cast<std::size_t>(rows) * kD, sc.qr.data());
      for (int r = 0; r < rows; ++r)
        HadamardRotation<kD, Layout::kRotationSeed>::apply(sc.qr.data() + static_cast<std::size_t>(r) * kD);
      q = sc.qr.data();
    }
    dot_rows(q, rows, kD, sc.kbuf.data(), kD, n, nullptr, sc.logits.data(), kTile);
    mask(sc.logits.data(), kTile, t, n, rows);
    softmax_tile(st, rows, kD, sc.logits.data(), kTile, n, sc.p.data());
    acc_rows(st.acc, rows, kD, sc.p.data(), kTile, 1, kD, sc.vbuf.data(), kD, n);
  }

  /// One query row for the tiles: widened to float (exactly), times the softmax scale, and rotated
  /// into the keys' basis with rotated keys.
  template <class T>
  static void load_query(const T* src, float scale, float* dst) {
    simd::to_f32_row(src, kD, dst);
    for (int c = 0; c < kD; ++c) dst[c] *= scale;
    if constexpr (Layout::kRotateKeys) HadamardRotation<kD, Layout::kRotationSeed>::apply(dst);
  }
};

}  // namespace detail
}  // namespace cpu
}  // namespace skv
