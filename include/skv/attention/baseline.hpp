// skv/attention/baseline.hpp: fp16 and fp32 KV caches and their CPU decode attention (host only).
//
// The baselines the quantized fast path is measured against (bench/cpu_decode.cpp): the same
// driver, tiles, blocked dot / accumulate kernels, exp, threads and sequence splitting as
// cpu_fast.hpp, reading unquantized rows (fp32 directly, fp16 widened per tile with F16C / AVX-512).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <skv/attention/cpu_kernels.hpp>
#include <skv/attention/cpu_simd.hpp>
#include <skv/attention/reference.hpp>
#include <skv/config.hpp>
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

}  // namespace detail

/// Decode attention over dense caches for a batch: q and out are [batch][num_q_heads][HeadDim].
template <class T, int D>
void decode_attention_batch(const DenseView<T, D>* views, int batch, const float* q, int num_q_heads, float* out,
                            float scale, const DecodeOptions& opt = DecodeOptions{}) {
  skv::detail::require(batch >= 0 && (batch == 0 || (views && q && out)), "decode_attention_batch: bad arguments");
  detail::check_window(opt.window, "decode_attention");
  std::vector<int> lengths(static_cast<std::size_t>(batch)), starts(lengths.size()), heads(lengths.size());
  for (int b = 0; b < batch; ++b) {
    skv::detail::require(views[b].num_kv_heads > 0 && num_q_heads > 0 && num_q_heads % views[b].num_kv_heads == 0,
                         "decode_attention: num_q_heads must be a positive multiple of the KV heads");
    skv::detail::require(views[b].length >= 0 && views[b].length <= views[b].capacity,
                         "decode_attention: view length exceeds its capacity");
    lengths[b] = views[b].length;
    starts[b] = detail::window_start(lengths[b] - 1, opt.window);
    heads[b] = views[b].num_kv_heads;
  }
  if (batch == 0) return;
  const std::size_t stride = static_cast<std::size_t>(num_q_heads) * D;
  using F = detail::DenseDecode<T, D>;
  detail::run_decode<typename F::Scratch>(
      batch, lengths.data(), starts.data(), 0, heads.data(), num_q_heads, D, F::kTile, opt, out,
      [&](const detail::WorkItem& it, detail::ItemState& st, typename F::Scratch& sc) {
        const int nh = num_q_heads / heads[it.seq];
        F::process(views[it.seq], q + it.seq * stride + static_cast<std::size_t>(it.q_head) * D, scale, it.kv_head,
                   it.begin, it.end, nh, st, sc);
      });
}

/// Decode attention over one dense cache: q and out are [num_q_heads][HeadDim].
template <class T, int D>
void decode_attention(const DenseView<T, D>& view, const float* q, int num_q_heads, float* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention_batch(&view, 1, q, num_q_heads, out, scale, opt);
}

}  // namespace cpu
}  // namespace skv
