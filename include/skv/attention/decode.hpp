// skv/attention/decode.hpp: CPU decode attention over a quantized cache, one query token per
// sequence (host only).
//
//   skv::cpu::decode_attention(cache, q, num_q_heads, out);   // q, out [num_q_heads][HeadDim]
//
// One fast path for every cache configuration: scaled queries, folded probabilities, AVX-512 /
// AVX2 unpacking chosen at compile time, OpenMP threads when enabled (docs/cpu.md). It matches
// decode_attention_reference (attention/reference.hpp, double accumulation) within kFastTolerance.
#pragma once

#include <type_traits>

#include <skv/attention/detail/run.hpp>
#include <skv/attention/options.hpp>
#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/view.hpp>

namespace skv {
namespace cpu {

/// Documented accuracy against decode_attention_reference, per output element:
/// |fast - reference| <= kFastTolerance * (1 + max |value|). The float paths differ from the
/// reference by rounding order and a polynomial exp; with AVX-512, Channel-axis keys also round the
/// scaled query to a 16-bit high and an 8-bit low part, and Token-axis values round the folded
/// weights to 16 bits (docs/cpu.md, "Tolerance").
#if defined(SKV_HAS_AVX512)
constexpr float kFastTolerance = 1e-4f;
#else
constexpr float kFastTolerance = 2e-5f;
#endif

/// Decode attention for a batch of sequences: q and out are [batch][num_q_heads][HeadDim]; sequence
/// b reads views[b] (lengths may differ; num_q_heads a multiple of each one's KV heads). q and out
/// are float, or both fp16 or both bf16: queries are widened exactly and each output is rounded to
/// nearest even once, so the result is the float path's on the widened query, rounded.
template <class Layout>
void decode_attention_batch(const SequenceView<Layout>* views, int batch, const float* q, int num_q_heads, float* out,
                            float scale, const DecodeOptions& opt = DecodeOptions{}) {
  detail::decode_batch(views, batch, q, num_q_heads, out, scale, opt);
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention_batch(const SequenceView<Layout>* views, int batch, const T* q, int num_q_heads, T* out,
                            float scale, const DecodeOptions& opt = DecodeOptions{}) {
  detail::decode_batch(views, batch, q, num_q_heads, out, scale, opt);
}

/// Decode attention for one query token: q and out are [num_q_heads][HeadDim], num_q_heads a
/// multiple of the cache's KV heads (GQA). `scale` multiplies the logits (default 1 / sqrt(D)).
template <class Layout>
void decode_attention(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  detail::decode_batch(&view, 1, q, num_q_heads, out, scale, opt);
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention(const SequenceView<Layout>& view, const T* q, int num_q_heads, T* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  detail::decode_batch(&view, 1, q, num_q_heads, out, scale, opt);
}
template <class Layout>
void decode_attention(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out) {
  decode_attention(view, q, num_q_heads, out, default_scale<Layout>());
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention(const SequenceView<Layout>& view, const T* q, int num_q_heads, T* out) {
  decode_attention(view, q, num_q_heads, out, default_scale<Layout>());
}

/// On an owning cache: a window cache (BasicKVCache(heads, max_tokens, window)) attends with its
/// window unless opt asks for a narrower one.
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_heads, float* out,
                      float scale, const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention(cache.view(), q, num_q_heads, out, scale, skv::detail::with_cache_window(cache, opt));
}
template <class KeyQ, class ValueQ, int D, int P, int R, class O, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const T* q, int num_q_heads, T* out,
                      float scale, const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention(cache.view(), q, num_q_heads, out, scale, skv::detail::with_cache_window(cache, opt));
}
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_heads,
                      float* out) {
  decode_attention(cache, q, num_q_heads, out, default_scale<typename BasicKVCache<KeyQ, ValueQ, D, P, R, O>::Layout>());
}
template <class KeyQ, class ValueQ, int D, int P, int R, class O, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const T* q, int num_q_heads, T* out) {
  decode_attention(cache, q, num_q_heads, out, default_scale<typename BasicKVCache<KeyQ, ValueQ, D, P, R, O>::Layout>());
}

}  // namespace cpu
}  // namespace skv
