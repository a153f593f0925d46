// skv/attention/detail/run.hpp: one CPU decode or prefill call over quantized caches (host only, not
// public API): check the arguments, cut the work (detail/schedule.hpp), and per work item load the
// rows' queries and walk the KV head's tokens (detail/walk.hpp) through the tile kernels
// (detail/tile.hpp; with AVX-512 the prefill's quantized pages go through detail/x86/int_prefill.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include <skv/attention/detail/checks.hpp>
#include <skv/attention/detail/schedule.hpp>
#include <skv/attention/detail/tile.hpp>
#include <skv/attention/detail/walk.hpp>
#include <skv/attention/detail/x86/int_prefill.hpp>
#include <skv/attention/options.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/quant/rotation.hpp>

namespace skv {
namespace cpu {
namespace detail {

/// The merge's last step: outputs, sums of stored values, back to the model's basis (R_v^T o with
/// RotateValues, once per row).
template <class Layout>
struct OutputBasis {
  void operator()(float* o) const { from_value_basis<Layout>(o, 1); }
};

/// Decode: q and out are [batch][num_q_heads][D]; sequence b reads views[b].
template <class Layout, class T>
void decode_batch(const SequenceView<Layout>* views, int batch, const T* q, int num_q_heads, T* out, float scale,
                  const DecodeOptions& opt) {
  constexpr int kD = Layout::kHeadDim;
  using F = Tiles<Layout>;
  skv::detail::require(batch >= 0, "decode_attention_batch: batch must not be negative");
  if (batch == 0) return;
  skv::detail::require(views != nullptr, "decode_attention_batch: views must not be null");
  skv::detail::require(q != nullptr && out != nullptr, "decode_attention: q and out must not be null");
  const std::size_t stride = static_cast<std::size_t>(num_q_heads) * kD;
  std::vector<SequenceWork> seqs(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    check_decode(views[b], q + b * stride, num_q_heads, out + b * stride, scale, opt.window, "decode_attention");
    seqs[b] = SequenceWork{views[b].length, views[b].num_kv_heads, 1, b};
  }
  run_attention<typename F::Scratch, true>(
      seqs, num_q_heads, kD, make_schedule(opt, Layout::kSinkTokens, F::kTile), "decode_attention", out,
      [&](const WorkItem& it, const CausalRows& cr, ItemState& st, typename F::Scratch& sc) {
        const SequenceView<Layout>& view = views[it.seq];
        const int nh = cr.group, h = it.kv_head;
        sc.ensure(nh);
        const T* qh = q + it.seq * stride + static_cast<std::size_t>(h) * nh * kD;
        for (int r = 0; r < nh; ++r)
          F::load_query(qh + static_cast<std::size_t>(r) * kD, scale, sc.q0.data() + static_cast<std::size_t>(r) * kD);
        walk_tokens<F::kTile>(
            view, it.begin, it.end,
            [&](int t, int n, bool sinks) { F::full_precision_tile(view, h, t, n, nh, st, sc, sinks, NoMask{}); },
            [&](int j, int jend) {
              walk_quantized_tiles<F::kTile>(view, h, j, jend, [&](int jt, int n) {
                F::quantized_tile(view, h, jt, n, nh, st, sc, NoMask{});
              });
            });
      },
      OutputBasis<Layout>{});
}

/// The prefill work of one item for one cache configuration.
template <class Layout>
struct PrefillItem {
  using F = Tiles<Layout>;
  static constexpr int kD = Layout::kHeadDim;
  static constexpr int kPage = Layout::kPageSize;
#if defined(SKV_HAS_AVX512)
  using I = IntPrefill<Layout>;
  static constexpr bool kIntTiles = I::kEnabled;
  struct Scratch : F::Scratch {
    typename I::Scratch ints;
    std::vector<float> tile_logits;
  };
#else
  static constexpr bool kIntTiles = false;
  using Scratch = typename F::Scratch;
#endif

#if defined(SKV_HAS_AVX512)
  /// Quantized indices [j, jend) through the integer tiles (I::kT tokens, many rows each).
  static void int_tiles(const SequenceView<Layout>& view, int h, int j, int jend, const CausalRows& cr, ItemState& st,
                        Scratch& sc) {
    const int rows = cr.rows();
    sc.ints.ensure(rows);
    if (sc.tile_logits.size() < static_cast<std::size_t>(rows) * I::kT)
      sc.tile_logits.resize(static_cast<std::size_t>(rows) * I::kT);
    prefetch_block(view.head_block(j, h), Layout::kHeadBytes);
    for (int jt = j - j % I::kT; jt < jend; jt += I::kT) {
      // the block two pages ahead into L2 (a tile of many rows takes microseconds, so one page of
      // lead hides DRAM latency; L2 requests do not crowd the L1 fill buffers)
      if (jt % kPage == 0 && jt + 2 * kPage < jend) prefetch_block<2>(view.head_block(jt + 2 * kPage, h), Layout::kHeadBytes);
      if (jt % kPage == 0 && jt + kPage < jend) prefetch_block(view.head_block(jt + kPage, h), Layout::kHeadBytes);
      const int ja = std::max(j, jt), jb = std::min(jend, jt + I::kT);
      const int tile_rows = cr.rows_seeing(Layout::kSinkTokens + ja);
      if (tile_rows > 0) I::tile(view, h, jt, ja, jb, tile_rows, cr, sc.q0.data(), sc.tile_logits.data(), st, sc.ints);
    }
  }
#endif

  /// One work item; q is the sequence's [num_q_tokens][num_q_heads][kD] (float, fp16 or bf16).
  template <class T>
  static void process(const SequenceView<Layout>& view, const T* q, int num_q_heads, float scale, const WorkItem& it,
                      const CausalRows& cr, ItemState& st, Scratch& sc) {
    const int rows = cr.rows(), h = it.kv_head;
    sc.ensure(rows);
    for (int r = 0; r < rows; ++r) {
      const int token = it.q_end - 1 - r / cr.group;
      const int head = h * cr.group + r % cr.group;
      F::load_query(q + (static_cast<std::size_t>(token) * num_q_heads + head) * kD, scale,
                    sc.q0.data() + static_cast<std::size_t>(r) * kD);
    }
    // rows that see the tile's first token (a prefix); tokens some of them do not see get -inf
    const auto mask = [&](float* logits, int ldl, int t0, int n, int tile_rows) {
      if (cr.needs_mask(t0, n, tile_rows)) cr.mask(logits, ldl, t0, n, tile_rows);
    };
    walk_tokens<F::kTile>(
        view, it.begin, it.end,
        [&](int t, int n, bool sinks) {
          const int tile_rows = cr.rows_seeing(t);
          if (tile_rows > 0) F::full_precision_tile(view, h, t, n, tile_rows, st, sc, sinks, mask);
        },
        [&](int j, int jend) {
#if defined(SKV_HAS_AVX512)
          if constexpr (kIntTiles) {
            int_tiles(view, h, j, jend, cr, st, sc);
            return;
          }
#endif
          walk_quantized_tiles<F::kTile>(view, h, j, jend, [&](int jt, int n) {
            const int tile_rows = cr.rows_seeing(Layout::kSinkTokens + jt);
            if (tile_rows > 0) F::quantized_tile(view, h, jt, n, tile_rows, st, sc, mask);
          });
        });
  }
};

/// Prefill: sequence b owns query rows [q_indptr[b], q_indptr[b + 1]) of q and out.
template <class Layout, class T>
void prefill_batch(const SequenceView<Layout>* views, int batch, const int* q_indptr, const T* q, int num_q_heads,
                   T* out, float scale, const PrefillOptions& opt) {
  constexpr int kD = Layout::kHeadDim;
  using P = PrefillItem<Layout>;
  skv::detail::require(batch >= 0, "prefill_attention_batch: batch must not be negative");
  if (batch == 0) return;
  skv::detail::require(views != nullptr, "prefill_attention_batch: views must not be null");
  const std::vector<int> counts = prefill_counts(batch, q_indptr, "prefill_attention_batch");
  std::vector<SequenceWork> seqs(static_cast<std::size_t>(batch));
  const std::size_t row = static_cast<std::size_t>(num_q_heads) * kD;
  for (int b = 0; b < batch; ++b) {
    check_prefill(views[b], q ? q + q_indptr[b] * row : nullptr, counts[b], num_q_heads,
                  out ? out + q_indptr[b] * row : nullptr, scale, opt.window, "prefill_attention_batch");
    seqs[b] = SequenceWork{views[b].length, views[b].num_kv_heads, counts[b], q_indptr[b]};
  }
  run_attention<typename P::Scratch, false>(
      seqs, num_q_heads, kD, make_schedule(opt, Layout::kSinkTokens, Tiles<Layout>::kTile), "prefill_attention",
      out, [&](const WorkItem& it, const CausalRows& cr, ItemState& st, typename P::Scratch& sc) {
        P::process(views[it.seq], q + q_indptr[it.seq] * row, num_q_heads, scale, it, cr, st, sc);
      },
      OutputBasis<Layout>{});
}

/// Prefill of one sequence; one query token runs decode (bit for bit).
template <class Layout, class T>
void prefill_one(const SequenceView<Layout>& view, const T* q, int num_q_tokens, int num_q_heads, T* out, float scale,
                 const PrefillOptions& opt) {
  if (num_q_tokens == 1) {
    check_prefill(view, q, num_q_tokens, num_q_heads, out, scale, opt.window, "prefill_attention");
    DecodeOptions d;
    d.num_threads = opt.num_threads;
    d.split_tokens = opt.split_tokens;
    d.window = opt.window;
    d.keep_sinks = opt.keep_sinks;
    decode_batch(&view, 1, q, num_q_heads, out, scale, d);
    return;
  }
  const int q_indptr[2] = {0, num_q_tokens};
  prefill_batch(&view, 1, q_indptr, q, num_q_heads, out, scale, opt);
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
