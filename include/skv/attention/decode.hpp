// skv/attention/decode.hpp: skv::cpu::decode_attention, the public CPU entry point.
#pragma once

#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/view.hpp>

namespace skv {
namespace cpu {

/// Decode attention for one query token: q and out are [num_q_heads][HeadDim], num_q_heads a
/// multiple of the cache's KV heads (GQA). `scale` multiplies the logits.
template <class Layout>
void decode_attention(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out, float scale) {
  decode_attention_reference(view, q, num_q_heads, out, scale);
}

template <class Layout>
void decode_attention(const SequenceView<Layout>& view, const float* q, int num_q_heads, float* out) {
  decode_attention(view, q, num_q_heads, out, default_scale<Layout>());
}

template <class KeyQ, class ValueQ, int D, int P, int R>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R>& cache, const float* q, int num_q_heads, float* out,
                      float scale) {
  decode_attention(cache.view(), q, num_q_heads, out, scale);
}

template <class KeyQ, class ValueQ, int D, int P, int R>
void decode_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R>& cache, const float* q, int num_q_heads, float* out) {
  decode_attention(cache.view(), q, num_q_heads, out);
}

}  // namespace cpu
}  // namespace skv
