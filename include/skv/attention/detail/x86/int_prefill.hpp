// skv/attention/detail/x86/int_prefill.hpp: the AVX-512 integer tile of the CPU prefill (host only,
// not public API), for the default axes: Channel keys, Token values in groups of a multiple of 32,
// fp16 metadata. Many query rows per tile: keys as tokens-in-lanes integer dots against the codes
// transposed once per key group, values as channels-in-lanes integer sums of 16-bit folded weights.
// docs/cpu.md, "Prefill".
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <skv/attention/detail/kernels.hpp>
#include <skv/attention/detail/schedule.hpp>
#include <skv/attention/detail/simd.hpp>
#include <skv/attention/detail/tile.hpp>
#include <skv/attention/detail/x86/avx512_dots.hpp>
#include <skv/cache/view.hpp>
#include <skv/numeric/half.hpp>

#if defined(SKV_HAS_AVX512)

namespace skv {
namespace cpu {
namespace detail {

/// The integer matrix prefill for the default axes (Channel keys, Token values in groups of a
/// multiple of 32 with evenly spaced codes, fp16 metadata so that |zero| <= 2048 fits int16): tiles
/// of up to 64 tokens in one page; per key group the rows' scaled queries are rounded to 16 bits (as
/// in decode) and dotted with the transposed codes; one online-softmax update per tile; the folded
/// weights p * s rounded to 16 bits per row and tile, accumulated exactly in int32 over the tile,
/// zero points subtracted exactly.
template <class Layout>
struct IntPrefill {
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  using F = Tiles<Layout>;
  static constexpr int kD = Layout::kHeadDim;
  static constexpr int kPage = Layout::kPageSize;
  static constexpr int kT = kPage < 64 ? kPage : 64;                                // tokens per tile
  static constexpr int kKG = KQ::kGroupSize < kT ? KQ::kGroupSize : kT;           // tokens per key group in a tile
  static constexpr int kJ = VQ::kAxis == Axis::Token ? kD / VQ::kGroupSize : 1;  // value groups per token
  static constexpr int kPairs = kD / 2;
  static constexpr bool kEnabled = KQ::kAxis == Axis::Channel && VQ::kAxis == Axis::Token && !VQ::kCodebook &&
                                   !Layout::kPreRopeKeys && kD % 32 == 0 &&
                                   kD <= 256 && VQ::kGroupSize % 32 == 0 && kKG % 16 == 0 && kT % 16 == 0 &&
                                   std::is_same<typename KQ::Scale, fp16>::value &&
                                   std::is_same<typename VQ::Scale, fp16>::value;

  struct Scratch {
    std::vector<std::int16_t> qi, qlo, wi, zv;
    std::vector<std::int32_t> kt, vp, vint;
    std::vector<std::uint16_t> codes;
    std::vector<float> qs, ks, kz, vs, vz, meta, w;
    std::vector<double> winv;
    std::vector<float> qinv_f, qbias_f, ks2, kexp, zc;
    std::vector<std::int16_t> kshift;
    std::vector<std::int64_t> zsum;
    int nr = 0;
    void ensure(int rows) {
      if (rows <= nr) return;
      nr = rows;
      const std::size_t r = static_cast<std::size_t>(rows);
      qi.assign(r * kD, 0);
      qlo.assign(r * kD, 0);
      wi.assign(r * kJ * kT, 0);
      zv.assign(static_cast<std::size_t>(kJ) * kT, 0);
      kt.assign(static_cast<std::size_t>(kPairs) * kKG, 0);
      vp.assign(static_cast<std::size_t>(kT / 2) * kD, 0);
      vint.assign(r * kD, 0);
      codes.assign(static_cast<std::size_t>(kT) * kD, 0);
      qs.assign(kD, 0.0f);
      ks.assign(kD, 0.0f);
      kz.assign(kD, 0.0f);
      vs.assign(static_cast<std::size_t>(kJ) * kT, 0.0f);
      vz.assign(static_cast<std::size_t>(kJ) * kT, 0.0f);
      meta.assign(2 * static_cast<std::size_t>(kJ) * kT, 0.0f);
      w.assign(static_cast<std::size_t>(kJ) * kT, 0.0f);
      winv.assign(r, 0.0);
      qinv_f.assign(r, 0.0f);
      qbias_f.assign(r, 0.0f);
      ks2.assign(kD, 0.0f);
      kexp.assign(kD, 0.0f);
      kshift.assign(kD, 0);
      zc.assign(kD, 0.0f);
      zsum.assign(r * kJ, 0);
    }
  };

  /// Logits of rows [0, rows) for the key group starting at tile slot g0 (kKG tokens) into
  /// logits[r * kT + g0 - slot0 + i]. q0 is [rows][kD] (softmax scale and rotation applied).
  template <class Block>
  static void key_group(const Block& kb, int slot0, int g0, int rows, const float* q0, float* logits, Scratch& sc) {
    float* s = sc.ks.data();
    float* z = sc.kz.data();
    F::template load_meta<KQ>(kb.scales(), kb.zeros(), (g0 / KQ::kGroupSize) * kD, kD, s, z);
    // 16-bit values are packed with vpackssdw, which orders the channel pairs of each 32 channels as
    // pairs 0 1 8 9 2 3 10 11 4 5 12 13 6 7 14 15; the codes are permuted the same way (once per
    // group) so that pair k of a query meets pair k of a key
    const __m512i pair_order = _mm512_setr_epi32(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
    // Only the codes' distance from the middle code c0 meets the rounded query; the zero point goes
    // through the unrounded one:  logit = sum qi (code - c0) / step - sum q' (z - c0),  so the
    // rounding error, at most max|q'| / 65534 per channel, is multiplied by |code - c0| <= 2^(b-1)
    // whatever the zero points (channels far from zero have zero points far from the codes).
    constexpr int kMid = 1 << (KQ::kBits - 1);
    // the zero-point term per channel, s (z - c0), exact in float (an fp16 scale times an integer
    // below 2^12), so that each row's term is one dot product: sum_c q[c] * s (z - c0)
    float* zc = sc.zc.data();
    for (int c = 0; c < kD; c += 16)
      _mm512_storeu_ps(zc + c, _mm512_mul_ps(_mm512_loadu_ps(s + c), _mm512_sub_ps(_mm512_loadu_ps(z + c), _mm512_set1_ps(kMid))));
    // Channels whose scale is far above the group's mean (outlier channels) would set max|q'| and
    // so the rounding step of every channel. Each channel c gets a shift e_c = floor(log2(s_c / mean s))
    // (0 when below the mean, at most 15 - b so that the shifted codes fit int16): the query is
    // rounded as q' 2^-e (the step now set by ordinary channels) and the centred codes are shifted
    // left by e, so the product is unchanged. The int32 dot stays exact while
    // 32767 * 2^(b-1) * sum_c 2^e_c < 2^31; every e is lowered until it does.
    constexpr int kMaxShift = 15 - KQ::kBits;
    constexpr float kBudget = 2147483647.0f / (32767.0f * kMid);
    float* s2 = sc.ks2.data();
    std::int16_t* shift = sc.kshift.data();
    {
      __m512 sum = _mm512_setzero_ps();
      for (int c = 0; c < kD; c += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(s + c));
      const float mean = _mm512_reduce_add_ps(sum) / kD;
      const __m512 inv_mean = _mm512_set1_ps(mean > 0.0f ? 1.0f / mean : 0.0f);
      float* e = sc.kexp.data();
      float total = 0.0f;
      for (int c = 0; c < kD; c += 16) {
        // getexp: floor(log2 x) for x > 0; below the mean (or a zero scale) the shift is 0
        const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + c), inv_mean);
        const __m512 ex = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_getexp_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(1.0f), _CMP_GE_OQ), x),
                                                      _mm512_setzero_ps()),
                                        _mm512_set1_ps(static_cast<float>(kMaxShift)));
        _mm512_storeu_ps(e + c, ex);
        total += _mm512_reduce_add_ps(_mm512_scalef_ps(_mm512_set1_ps(1.0f), ex));
      }
      float lower = 0.0f;  // lower every shift until the dot's bound holds
      while (total >= kBudget && lower < kMaxShift) {
        lower += 1.0f;
        total = 0.0f;
        for (int c = 0; c < kD; c += 16)
          total += _mm512_reduce_add_ps(_mm512_scalef_ps(
              _mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(e + c), _mm512_set1_ps(lower)), _mm512_setzero_ps())));
      }
      for (int c = 0; c < kD; c += 16) {
        const __m512 ex = _mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(e + c), _mm512_set1_ps(lower)), _mm512_setzero_ps());
        _mm512_storeu_ps(s2 + c, _mm512_scalef_ps(_mm512_loadu_ps(s + c), _mm512_sub_ps(_mm512_setzero_ps(), ex)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(shift + c), _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(ex)));
      }
      for (int c = 0; c < kD; c += 32)  // the shifts in packed pair order, like the codes
        _mm512_storeu_si512(shift + c, _mm512_permutexvar_epi32(pair_order, _mm512_loadu_si512(shift + c)));
    }
    // centred, shifted codes of the group in packed pair order, transposed to [channel pair][token]
    std::uint16_t* codes = sc.codes.data();
    const __m512i mid = _mm512_set1_epi16(kMid);
    for (int i = 0; i < kKG; ++i) {
      std::uint16_t* row = codes + static_cast<std::size_t>(i) * kD;
      unpack_row_u16<KQ::kBits>(kb.row(g0 + i), kD, row);
      for (int c = 0; c < kD; c += 32)
        _mm512_storeu_si512(row + c, _mm512_sllv_epi16(_mm512_sub_epi16(_mm512_permutexvar_epi32(pair_order, _mm512_loadu_si512(row + c)), mid),
                                                       _mm512_loadu_si512(shift + c)));
    }
    const std::int32_t* c32 = reinterpret_cast<const std::int32_t*>(codes);
    for (int tb = 0; tb < kKG; tb += 16)
      for (int pb = 0; pb < kPairs; pb += 16)
        transpose16_epi32(c32 + static_cast<std::size_t>(tb) * kPairs + pb, kPairs,
                          sc.kt.data() + static_cast<std::size_t>(pb) * kKG + tb, kKG);
    // the rows' scaled queries in 16 bits (packed order) and their zero-point terms
    constexpr int kV = kD / 16;
    for (int r = 0; r < rows; ++r) {
      const float* q = q0 + static_cast<std::size_t>(r) * kD;
      __m512 v[kV];  // q' 2^-e, the query that is rounded
      __m512 vm = _mm512_setzero_ps(), fb = _mm512_setzero_ps();
      for (int k = 0; k < kV; ++k) {
        const __m512 qk = _mm512_loadu_ps(q + 16 * k);
        v[k] = _mm512_mul_ps(qk, _mm512_loadu_ps(s2 + 16 * k));
        vm = _mm512_max_ps(vm, _mm512_abs_ps(v[k]));
        fb = _mm512_fmadd_ps(qk, _mm512_loadu_ps(zc + 16 * k), fb);
      }
      const float m = _mm512_reduce_max_ps(vm);
      const __m512 vstep = _mm512_set1_ps(m > 0.0f ? 32767.0f / m : 0.0f);
      // qi = round(x), x = q' 2^-e * step, and the rest x - qi (|.| <= 1/2, exact in float) in units
      // of 2^-15: |qlo| <= 2^14, so the low dot obeys the same int32 bound as the high one
      std::int16_t* qi = sc.qi.data() + static_cast<std::size_t>(r) * kD;
      std::int16_t* ql = sc.qlo.data() + static_cast<std::size_t>(r) * kD;
      const __m512 vlo = _mm512_set1_ps(32768.0f);
      for (int k = 0; k < kV; k += 2) {
        const __m512 x0 = _mm512_mul_ps(v[k], vstep), x1 = _mm512_mul_ps(v[k + 1], vstep);
        const __m512i i0 = _mm512_cvtps_epi32(x0), i1 = _mm512_cvtps_epi32(x1);
        _mm512_storeu_si512(qi + 16 * k, _mm512_packs_epi32(i0, i1));
        _mm512_storeu_si512(ql + 16 * k,
                            _mm512_packs_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x0, _mm512_cvtepi32_ps(i0)), vlo)),
                                               _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(x1, _mm512_cvtepi32_ps(i1)), vlo))));
      }
      sc.qinv_f[r] = m > 0.0f ? m / 32767.0f : 0.0f;
      sc.qbias_f[r] = _mm512_reduce_add_ps(fb);
    }
    key_logits_rows<kKG / 16, kPairs, kKG, kT>(sc.kt.data(), reinterpret_cast<const std::int32_t*>(sc.qi.data()),
                                               reinterpret_cast<const std::int32_t*>(sc.qlo.data()), rows,
                                               sc.qinv_f.data(), sc.qbias_f.data(), logits + (g0 - slot0));
  }

  /// One tile: quantized indices [ja, jb) inside the tile starting at jt (jt % kT == 0, one page),
  /// rows [0, rows) of the item (those that see token ja); tokens past a row's position are masked.
  static void tile(const SequenceView<Layout>& view, int h, int jt, int ja, int jb, int rows, const CausalRows& cr,
                   const float* q0, float* logits, ItemState& st, Scratch& sc) {
    const int slot0 = jt % kPage;
    const int a = ja - jt, b = jb - jt;  // valid tokens [a, b) of the tile
    const auto kb = view.keys(jt, h);
    const auto vb = view.values(jt, h);
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    // ---- logits: the key groups that hold valid tokens; -inf elsewhere
    for (int g = 0; g < kT; g += kKG) {
      if (g + kKG <= a || g >= b) {
        for (int r = 0; r < rows; ++r) std::fill_n(logits + static_cast<std::size_t>(r) * kT + g, kKG, kNegInf);
        continue;
      }
      key_group(kb, slot0, slot0 + g, rows, q0, logits, sc);
      if (g < a || g + kKG > b) {
        for (int r = 0; r < rows; ++r) {
          float* lr = logits + static_cast<std::size_t>(r) * kT;
          for (int i = g; i < a; ++i) lr[i] = kNegInf;
          for (int i = b; i < g + kKG; ++i) lr[i] = kNegInf;
        }
      }
    }
    const int t0 = Layout::kSinkTokens + jt;
    if (cr.needs_mask(t0, b, rows)) cr.mask(logits, kT, t0, b, rows);

    // ---- value metadata of the valid tokens as [group][token] (0 elsewhere: weight 0)
    const int p0 = a / 2, p1 = (b + 1) / 2;  // token pairs that hold valid tokens
    float* vs = sc.vs.data();
    float* vz = sc.vz.data();
    std::fill(vs, vs + kJ * kT, 0.0f);
    std::fill(vz, vz + kJ * kT, 0.0f);
    float* meta = sc.meta.data();
    F::template load_meta<VQ>(vb.scales(), vb.zeros(), (slot0 + a) * kJ, (b - a) * kJ, meta, meta + kJ * kT);
    for (int i = a; i < b; ++i)
      for (int j = 0; j < kJ; ++j) {
        vs[j * kT + i] = meta[(i - a) * kJ + j];
        vz[j * kT + i] = meta[kJ * kT + (i - a) * kJ + j];
      }
    // |A - Z| <= 32767 * kT * max|code - z|: int32 unless zero points are far outside the codes
    constexpr float kMaxValueCode = static_cast<float>((1 << VQ::kBits) - 1);
    __m512 zb = _mm512_setzero_ps();
    for (int e = 0; e < kJ * kT; e += 16) {
      const __m512 zc = _mm512_loadu_ps(vz + e);
      zb = _mm512_max_ps(zb, _mm512_max_ps(_mm512_abs_ps(zc), _mm512_abs_ps(_mm512_sub_ps(_mm512_set1_ps(kMaxValueCode), zc))));
    }
    const bool narrow = _mm512_reduce_max_ps(zb) * kT <= 65535.0f;
    std::int16_t* zv = sc.zv.data();
    for (int e = 0; e < kJ * kT; e += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(zv + e),
                          _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_loadu_ps(vz + e))));

    // ---- online softmax per row, folded weights in 16 bits
    for (int r = 0; r < rows; ++r) {
      float* lr = logits + static_cast<std::size_t>(r) * kT;
      __m512 vmax = _mm512_set1_ps(kNegInf);
      for (int i = 0; i < kT; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(lr + i));
      const float mt = _mm512_reduce_max_ps(vmax);
      if (mt > st.m[r]) {
        if (st.l[r] != 0.0f) {
          const float f = ::expf(st.m[r] - mt);
          scale_array(st.acc + static_cast<std::size_t>(r) * kD, kD, f);
          st.l[r] *= f;
        }
        st.m[r] = mt;
      }
      const __m512 vm = _mm512_set1_ps(st.m[r]);
      const __m512 ninf = _mm512_set1_ps(kNegInf);
      __m512 lsum = _mm512_setzero_ps();
      constexpr int kTV = kT / 16;
      __m512 w[kJ][kTV];  // the folded weights stay in registers
      __m512 wmax = _mm512_setzero_ps();
      for (int i = 0; i < kTV; ++i) {
        const __m512 x = _mm512_loadu_ps(lr + 16 * i);
        const __m512 p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, ninf, _CMP_NEQ_OQ), vexp_nonpositive(_mm512_sub_ps(x, vm)));
        lsum = _mm512_add_ps(lsum, p);
        for (int j = 0; j < kJ; ++j) {
          w[j][i] = _mm512_mul_ps(p, _mm512_loadu_ps(vs + j * kT + 16 * i));
          wmax = _mm512_max_ps(wmax, w[j][i]);
        }
      }
      st.l[r] += _mm512_reduce_add_ps(lsum);
      const float wm = _mm512_reduce_max_ps(wmax);
      const float step = wm > 0.0f ? 32767.0f / wm : 0.0f;
      sc.winv[r] = wm > 0.0f ? static_cast<double>(wm) / 32767.0 : 0.0;
      const __m512 vstep = _mm512_set1_ps(step);
      std::int16_t* wi = sc.wi.data() + static_cast<std::size_t>(r) * kJ * kT;
      for (int j = 0; j < kJ; ++j) {
        __m512i zacc = _mm512_setzero_si512();  // pair sums <= 2 * 32767 * 2048, kT / 32 <= 2 per lane
        for (int i = 0; i < kTV; i += 2) {
          const __m256i x0 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(w[j][i], vstep)));
          const __m256i x1 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(w[j][i + 1], vstep)));
          const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1);
          _mm512_storeu_si512(wi + j * kT + 16 * i, x);
          if (!narrow) zacc = _mm512_add_epi32(zacc, _mm512_madd_epi16(x, _mm512_loadu_si512(zv + j * kT + 16 * i)));
        }
        if (!narrow) sc.zsum[static_cast<std::size_t>(r) * kJ + j] = reduce_add_epi32_wide(zacc);
      }
    }

    // ---- value codes: token pairs interleaved, once for all rows
    std::uint16_t* codes = sc.codes.data();
    for (int i = 2 * p0; i < 2 * p1; ++i) {
      std::uint16_t* row = codes + static_cast<std::size_t>(i) * kD;
      unpack_row_u16<VQ::kBits>(vb.row(slot0 + i), kD, row);
      if (narrow)  // the zero point goes into the codes (0 for tokens outside [a, b), whose weight is 0)
        for (int j = 0; j < kJ; ++j) {
          const __m512i zj = _mm512_set1_epi16(zv[j * kT + i]);
          for (int c = j * VQ::kGroupSize; c < (j + 1) * VQ::kGroupSize; c += 32)
            _mm512_storeu_si512(row + c, _mm512_sub_epi16(_mm512_loadu_si512(row + c), zj));
        }
    }
    for (int p = p0; p < p1; ++p) {
      const std::uint16_t* ra = codes + static_cast<std::size_t>(2 * p) * kD;
      std::int32_t* out = sc.vp.data() + static_cast<std::size_t>(p) * kD;
      for (int c = 0; c < kD; c += 32) {
        const __m512i xa = _mm512_loadu_si512(ra + c);
        const __m512i xb = _mm512_loadu_si512(ra + kD + c);
        _mm512_storeu_si512(out + c, _mm512_unpacklo_epi16(xa, xb));
        _mm512_storeu_si512(out + c + 16, _mm512_unpackhi_epi16(xa, xb));
      }
    }
    std::int32_t* vint = sc.vint.data();
    value_acc_rows<kD, kJ * kT / 2, kT / 2, VQ::kGroupSize>(sc.vp.data(), p0, p1,
                                                            reinterpret_cast<const std::int32_t*>(sc.wi.data()), rows, vint);
    if (narrow) {
      for (int r = 0; r < rows; ++r) {
        const std::int32_t* ar = vint + static_cast<std::size_t>(r) * kD;
        float* acc = st.acc + static_cast<std::size_t>(r) * kD;
        const __m512 vsc = _mm512_set1_ps(static_cast<float>(sc.winv[r]));
        for (int c = 0; c < kD; c += 16)
          _mm512_storeu_ps(acc + c, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(ar + c)), vsc, _mm512_loadu_ps(acc + c)));
      }
      return;
    }
    add_scaled_sums(vint, sc.zsum.data(), sc.winv.data(), rows, kD, VQ::kGroupSize, st.acc);
  }
};

}  // namespace detail
}  // namespace cpu
}  // namespace skv

#endif  // SKV_HAS_AVX512
