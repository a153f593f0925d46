// skv/attention/decode.hpp: skv::cpu::decode_attention, the public CPU entry point.
//
// decode_attention runs the fast path (attention/cpu_fast.hpp: scaled query, folded probabilities,
// AVX-512 / AVX2 unpacking chosen at compile time, OpenMP threads when enabled) for every cache
// configuration. decode_attention_reference (attention/reference.hpp) stays the oracle; the fast
// path matches it within 2e-5 * (1 + max |value|) per output element (docs/cpu.md).
#pragma once

#include <type_traits>

#include <skv/attention/cpu_fast.hpp>
#include <skv/attention/cpu_kernels.hpp>
#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/view.hpp>

namespace skv {
namespace cpu {

/// Decode attention for one query token: q and out are [num_q_heads][HeadDim], num_q_heads a
/// multiple of the cache's KV heads (GQA). `scale` multiplies the logits; `opt` sets the threads.
/// Each function also takes fp16 or bf16 queries and outputs (see decode_attention_batch).
template <class Layout>
void decode_attention(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention_fast(view, q, num_q_heads, out, scale, opt);
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void decode_attention(const SequenceView<Layout>& view, const T* q, int num_q_heads, T* out, float scale,
                      const DecodeOptions& opt = DecodeOptions{}) {
  decode_attention_fast(view, q, num_q_heads, out, scale, opt);
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

/// The reference path for a whole cache (the view overload lives in attention/reference.hpp), with
/// the cache's window.
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void decode_attention_reference(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_heads,
                                float* out, float scale, bool keep_sinks = false) {
  decode_attention_reference(cache.view(), q, num_q_heads, out, scale, cache.window(), keep_sinks);
}

// Many sequences in one call: decode_attention_batch(views, batch, q, num_q_heads, out, scale, opt)
// in attention/cpu_fast.hpp (q and out [batch][num_q_heads][HeadDim]).

}  // namespace cpu
}  // namespace skv
