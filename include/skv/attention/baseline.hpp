// skv/attention/baseline.hpp: fp32 and fp16 KV caches and their CPU decode and prefill attention
// (host only): the baselines the quantized cache is measured against (bench/), never part of
// skv/skv.hpp.
//
// They run on the quantized path's driver (attention/detail/schedule.hpp) and kernels
// (attention/detail/kernels.hpp): the same tiles, exp, threads and splitting, reading unquantized
// rows (fp32 directly, fp16 widened per tile with F16C / AVX-512), so that a benchmark's ratio
// measures the cache format and not two different implementations.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include <skv/attention/detail/checks.hpp>
#include <skv/attention/detail/kernels.hpp>
#include <skv/attention/detail/schedule.hpp>
#include <skv/attention/detail/simd.hpp>
#include <skv/attention/options.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>

namespace skv {
namespace cpu {

/// A non-owning view of a dense cache: keys and values are [num_kv_heads][capacity][HeadDim] of T.
template <class T, int HeadDim>
struct DenseView {
  static constexpr int kHeadDim = HeadDim;
  const T* keys = nullptr;
  const T* values = nullptr;
  int num_kv_heads = 0;
  int capacity = 0;
  int length = 0;

  const T* key_row(int token, int h) const {
    return keys + (static_cast<std::size_t>(h) * capacity + token) * HeadDim;
  }
  const T* value_row(int token, int h) const {
    return values + (static_cast<std::size_t>(h) * capacity + token) * HeadDim;
  }
};

/// An owning dense cache of one sequence (T = float or skv::fp16).
template <class T, int HeadDim = 128>
class DenseKVCache {
 public:
  using View = DenseView<T, HeadDim>;

  DenseKVCache(int num_kv_heads, int max_tokens) : num_kv_heads_(num_kv_heads), max_tokens_(max_tokens) {
    skv::detail::require(num_kv_heads > 0 && max_tokens >= 0, "DenseKVCache: bad shape");
    const std::size_t n = static_cast<std::size_t>(num_kv_heads) * max_tokens * HeadDim;
    keys_.resize(n);
    values_.resize(n);
  }

  /// Appends n tokens; k and v are [n][num_kv_heads][HeadDim] floats (rounded to T).
  void append(const float* k, const float* v, int n) {
    skv::detail::require(n >= 0 && n <= max_tokens_ - length_, "DenseKVCache: append past capacity");
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < num_kv_heads_; ++h) {
        const std::size_t src = (static_cast<std::size_t>(i) * num_kv_heads_ + h) * HeadDim;
        const std::size_t dst = (static_cast<std::size_t>(h) * max_tokens_ + length_ + i) * HeadDim;
        for (int c = 0; c < HeadDim; ++c) {
          keys_[dst + c] = from_float<T>(k[src + c]);
          values_[dst + c] = from_float<T>(v[src + c]);
        }
      }
    }
    length_ += n;
  }

  int size() const { return length_; }
  View view() const { return View{keys_.data(), values_.data(), num_kv_heads_, max_tokens_, length_}; }

 private:
  int num_kv_heads_;
  int max_tokens_;
  int length_ = 0;
  std::vector<T> keys_;
  std::vector<T> values_;
};

namespace detail {

template <class T, int D>
struct DenseDecode {
  static constexpr int kTile = 64;
  struct Scratch {
    std::vector<float> kbuf, vbuf, logits, p, q0;
    int nh = 0;
    void ensure(int heads) {
      if (heads <= nh) return;
      nh = heads;
      kbuf.assign(static_cast<std::size_t>(kTile) * D, 0.0f);
      vbuf.assign(static_cast<std::size_t>(kTile) * D, 0.0f);
      logits.assign(static_cast<std::size_t>(heads) * kTile, 0.0f);
      p.assign(static_cast<std::size_t>(heads) * kTile, 0.0f);
      q0.assign(static_cast<std::size_t>(heads) * D, 0.0f);
    }
  };

  static const float* rows(const float* x, int, float*) { return x; }
  static const float* rows(const fp16* x, int n, float* buf) {
    simd::to_f32_row(x, n * D, buf);
    return buf;
  }

  static void process(const DenseView<T, D>& view, const float* q, float scale, int h, int begin, int end, int nh,
                      ItemState& st, Scratch& sc) {
    sc.ensure(nh);
    for (std::size_t i = 0; i < static_cast<std::size_t>(nh) * D; ++i) sc.q0[i] = q[i] * scale;
    for (int t = begin; t < end; t += kTile) {
      const int n = end - t < kTile ? end - t : kTile;
      const float* k = rows(view.key_row(t, h), n, sc.kbuf.data());
      dot_rows(sc.q0.data(), nh, D, k, D, n, nullptr, sc.logits.data(), kTile);
      softmax_tile(st, nh, D, sc.logits.data(), kTile, n, sc.p.data());
      const float* v = rows(view.value_row(t, h), n, sc.vbuf.data());
      acc_rows(st.acc, nh, D, sc.p.data(), kTile, 1, D, v, D, n);
    }
  }
};

/// The dense (fp32 / fp16) prefill: the same driver, tiles and kernels without quantization.
template <class T, int D>
struct DensePrefill {
  static constexpr int kTile = 64;
  struct Scratch {
    std::vector<float> kbuf, vbuf, logits, p, q0;
    int nh = 0;
    void ensure(int rows) {
      if (rows <= nh) return;
      nh = rows;
      kbuf.assign(static_cast<std::size_t>(kTile) * D, 0.0f);
      vbuf.assign(static_cast<std::size_t>(kTile) * D, 0.0f);
      logits.assign(static_cast<std::size_t>(rows) * kTile, 0.0f);
      p.assign(static_cast<std::size_t>(rows) * kTile, 0.0f);
      q0.assign(static_cast<std::size_t>(rows) * D, 0.0f);
    }
  };

  static const float* rows_of(const float* x, int, float*) { return x; }
  static const float* rows_of(const fp16* x, int n, float* buf) {
    simd::to_f32_row(x, n * D, buf);
    return buf;
  }

  static void process(const DenseView<T, D>& view, const float* q, int num_q_heads, float scale, const WorkItem& it,
                      const CausalRows& cr, ItemState& st, Scratch& sc) {
    const int all_rows = cr.rows();
    sc.ensure(all_rows);
    for (int r = 0; r < all_rows; ++r) {
      const int token = it.q_end - 1 - r / cr.group;
      const int head = it.kv_head * cr.group + r % cr.group;
      const float* src = q + (static_cast<std::size_t>(token) * num_q_heads + head) * D;
      for (int c = 0; c < D; ++c) sc.q0[static_cast<std::size_t>(r) * D + c] = src[c] * scale;
    }
    for (int t = it.begin; t < it.end; t += kTile) {
      const int n = std::min(kTile, it.end - t);
      const int rows = cr.rows_seeing(t);
      if (rows == 0) break;
      const float* k = rows_of(view.key_row(t, it.kv_head), n, sc.kbuf.data());
      dot_rows(sc.q0.data(), rows, D, k, D, n, nullptr, sc.logits.data(), kTile);
      if (cr.needs_mask(t, n, rows)) cr.mask(sc.logits.data(), kTile, t, n, rows);
      softmax_tile(st, rows, D, sc.logits.data(), kTile, n, sc.p.data());
      const float* v = rows_of(view.value_row(t, it.kv_head), n, sc.vbuf.data());
      acc_rows(st.acc, rows, D, sc.p.data(), kTile, 1, D, v, D, n);
    }
  }
};

}  // namespace detail

/// Decode attention over dense caches for a batch: q and out are [batch][num_q_heads][HeadDim].
template <class T, int D>
void decode_attention_batch(const DenseView<T, D>* views, int batch, const float* q, int num_q_heads, float* out,
                            float scale, const DecodeOptions& opt = DecodeOptions{}) {
  skv::detail::require(batch >= 0 && (batch == 0 || (views && q && out)), "decode_attention_batch: bad arguments");
  detail::check_window(opt.window, "decode_attention");
  if (batch == 0) return;
  const std::size_t stride = static_cast<std::size_t>(num_q_heads) * D;
  std::vector<detail::SequenceWork> seqs(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    detail::check_queries<D, void>(views[b].num_kv_heads, views[b].length, views[b].capacity, q + b * stride, 1,
                                   num_q_heads, out + b * stride, scale, "decode_attention");
    seqs[b] = detail::SequenceWork{views[b].length, views[b].num_kv_heads, 1, b};
  }
  using F = detail::DenseDecode<T, D>;
  detail::run_attention<typename F::Scratch, true>(
      seqs, num_q_heads, D, detail::make_schedule(opt, 0, F::kTile), "decode_attention", out,
      [&](const detail::WorkItem& it, const detail::CausalRows& cr, detail::ItemState& st, typename F::Scratch& sc) {
        F::process(views[it.seq], q + it.seq * stride + static_cast<std::size_t>(it.kv_head) * cr.group * D, scale,
                   it.kv_head, it.begin, it.end, cr.group, st, sc);
      });
}

/// Decode attention over one dense cache: q and out are [num_q_heads][HeadDim].
template <class T, int D>
void decode_attention(const DenseView<T, D>& view, const float* q, int num_q_heads, float* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention_batch(&view, 1, q, num_q_heads, out, scale, opt);
}

/// Prefill attention over dense (fp32 / fp16) caches for a batch, with the same driver, tiles and
/// kernels as the quantized path: the baseline of bench/cpu_prefill.cpp.
template <class T, int D>
void prefill_attention_batch(const DenseView<T, D>* views, int batch, const int* q_indptr, const float* q,
                             int num_q_heads, float* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  skv::detail::require(batch >= 0, "prefill_attention_batch: batch must not be negative");
  if (batch == 0) return;
  skv::detail::require(views != nullptr, "prefill_attention_batch: views must not be null");
  const std::vector<int> counts = detail::prefill_counts(batch, q_indptr, "prefill_attention_batch");
  std::vector<detail::SequenceWork> seqs(static_cast<std::size_t>(batch));
  const std::size_t row = static_cast<std::size_t>(num_q_heads) * D;
  for (int b = 0; b < batch; ++b) {
    detail::check_prefill_queries<D, void>(views[b].num_kv_heads, views[b].length, views[b].capacity,
                                           q ? q + q_indptr[b] * row : nullptr, counts[b], num_q_heads,
                                           out ? out + q_indptr[b] * row : nullptr, scale, "prefill_attention_batch");
    seqs[b] = detail::SequenceWork{views[b].length, views[b].num_kv_heads, counts[b], q_indptr[b]};
  }
  using P = detail::DensePrefill<T, D>;
  detail::run_attention<typename P::Scratch, false>(
      seqs, num_q_heads, D, detail::make_schedule(opt, 0, P::kTile), "prefill_attention", out,
      [&](const detail::WorkItem& it, const detail::CausalRows& cr, detail::ItemState& st, typename P::Scratch& sc) {
        P::process(views[it.seq], q + q_indptr[it.seq] * row, num_q_heads, scale, it, cr, st, sc);
      });
}

template <class T, int D>
void prefill_attention(const DenseView<T, D>& view, const float* q, int num_q_tokens, int num_q_heads, float* out,
                       float scale, const PrefillOptions& opt = PrefillOptions{}) {
  const int q_indptr[2] = {0, num_q_tokens};
  prefill_attention_batch(&view, 1, q_indptr, q, num_q_heads, out, scale, opt);
}

}  // namespace cpu
}  // namespace skv
