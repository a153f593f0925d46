// skv/attention/prefill.hpp: CPU attention for many query tokens over a quantized cache (host only):
// chunked prefill, a reused prefix, speculative verification.
//
//   cache.append(k, v, n);                                           // the chunk's keys and values
//   skv::cpu::prefill_attention(cache, q, n, num_q_heads, out);      // q, out [n][num_q_heads][D]
//
// The queries belong to the last num_q_tokens tokens already appended: query i sits at position
// length - num_q_tokens + i and attends causally to every token up to and including its own, as
// the cache stores them now (sinks, quantized pages, the full-precision ring). With num_q_tokens == 1
// this is decode_attention, bit for bit. The work runs on the decode's driver and tiles with many
// query rows per tile (docs/cpu.md, "Prefill"); it matches prefill_attention_reference
// (attention/reference.hpp) within kPrefillTolerance.
#pragma once

#include <type_traits>

#include <skv/attention/detail/run.hpp>
#include <skv/attention/options.hpp>
#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/view.hpp>

namespace skv {
namespace cpu {

/// Documented accuracy against prefill_attention_reference, per output element:
/// |fast - reference| <= kPrefillTolerance * (1 + max |value|). The float paths (AVX2, scalar)
/// differ from the reference by rounding order only; the AVX-512 integer path also rounds the
/// scaled queries and the folded weights to 16 bits (docs/cpu.md, "Prefill").
#if defined(SKV_HAS_AVX512)
constexpr float kPrefillTolerance = 2e-4f;
#else
constexpr float kPrefillTolerance = 2e-5f;
#endif

/// Prefill attention for a batch of sequences with different lengths and query counts, the way an
/// engine batches prefill chunks and decode steps together. Sequence b owns query rows
/// [q_indptr[b], q_indptr[b + 1]) of q and out ([q_indptr[batch]][num_q_heads][D]); those are its
/// last q_indptr[b + 1] - q_indptr[b] tokens (0 is allowed: the sequence is skipped). q and out are
/// float, or both fp16 or both bf16 (widened exactly; each output rounded once to nearest even).
template <class Layout>
void prefill_attention_batch(const SequenceView<Layout>* views, int batch, const int* q_indptr, const float* q,
                             int num_q_heads, float* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  detail::prefill_batch(views, batch, q_indptr, q, num_q_heads, out, scale, opt);
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void prefill_attention_batch(const SequenceView<Layout>* views, int batch, const int* q_indptr, const T* q,
                             int num_q_heads, T* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  detail::prefill_batch(views, batch, q_indptr, q, num_q_heads, out, scale, opt);
}

/// Prefill attention for one sequence: q and out are [num_q_tokens][num_q_heads][HeadDim], the
/// queries of the last num_q_tokens appended tokens; query i (position p = length - num_q_tokens + i)
/// attends to tokens [0, p], or to (p - window, p] with PrefillOptions::window. q and out are float,
/// or both fp16 or both bf16.
template <class Layout>
void prefill_attention(const SequenceView<Layout>& view, const float* q, int num_q_tokens, int num_q_heads, float* out,
                       float scale, const PrefillOptions& opt = PrefillOptions{}) {
  detail::prefill_one(view, q, num_q_tokens, num_q_heads, out, scale, opt);
}
template <class Layout, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void prefill_attention(const SequenceView<Layout>& view, const T* q, int num_q_tokens, int num_q_heads, T* out,
                       float scale, const PrefillOptions& opt = PrefillOptions{}) {
  detail::prefill_one(view, q, num_q_tokens, num_q_heads, out, scale, opt);
}
template <class Layout>
void prefill_attention(const SequenceView<Layout>& view, const float* q, int num_q_tokens, int num_q_heads,
                       float* out) {
  prefill_attention(view, q, num_q_tokens, num_q_heads, out, default_scale<Layout>());
}

/// On an owning cache: a window cache attends with its window unless opt asks for a narrower one.
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void prefill_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_tokens,
                       int num_q_heads, float* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  prefill_attention(cache.view(), q, num_q_tokens, num_q_heads, out, scale, skv::detail::with_cache_window(cache, opt));
}
template <class KeyQ, class ValueQ, int D, int P, int R, class O, class T, class = std::enable_if_t<detail::kHalfIo<T>>>
void prefill_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const T* q, int num_q_tokens,
                       int num_q_heads, T* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  prefill_attention(cache.view(), q, num_q_tokens, num_q_heads, out, scale, skv::detail::with_cache_window(cache, opt));
}
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void prefill_attention(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_tokens,
                       int num_q_heads, float* out) {
  prefill_attention(cache, q, num_q_tokens, num_q_heads, out,
                    default_scale<typename BasicKVCache<KeyQ, ValueQ, D, P, R, O>::Layout>());
}

}  // namespace cpu
}  // namespace skv
