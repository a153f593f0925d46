// skv/attention/detail/schedule.hpp: the one CPU driver of decode and prefill (host only, not public
// API): work items, the split of long token ranges, OpenMP threads, and the log-sum-exp merge.
//
// Decode is the case of one query token per sequence. A work item is (sequence, KV head, block of
// query tokens, KV token range); its rows are the query tokens of the block times the GQA heads of
// the KV head, stored last query first, so the rows that see a token are always a prefix of the
// rows. Each item keeps an online-softmax state per row; items of one (sequence, KV head, query
// block) cover disjoint token ranges and are merged with softmax.hpp's rescale_factor. docs/cpu.md,
// "The work".
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include <skv/attention/detail/checks.hpp>
#include <skv/attention/detail/kernels.hpp>
#include <skv/attention/options.hpp>
#include <skv/attention/softmax.hpp>
#include <skv/config.hpp>
#include <skv/threads.hpp>

namespace skv {
namespace cpu {
namespace detail {

/// Rows per work item when PrefillOptions::query_rows is 0: enough to amortize a tile's unpacking
/// over many dot products, few enough that the rows' softmax state stays in L2.
constexpr int kPrefillRows = 256;

/// One sequence of a call: its length and KV heads, and its query tokens (the last q_count tokens of
/// the sequence; decode: 1), which are rows [q_offset, q_offset + q_count) of the output.
struct SequenceWork {
  int length;
  int kv_heads;
  int q_count;
  int q_offset;
};

/// How a call is cut into items (from DecodeOptions or PrefillOptions).
struct Schedule {
  int num_threads = 0;
  int split_tokens = 0;  ///< 0: automatic
  int query_rows = 0;    ///< 0: kPrefillRows
  int window = 0;        ///< 0: no window
  int kept = 0;          ///< sink tokens that stay visible with a window (keep_sinks)
  int tile = 1;          ///< split points are multiples of it
};

/// The Schedule of a decode or prefill call: `sinks` is the cache's sink tokens (kept visible with
/// keep_sinks; 0 for the dense baselines), `tile` the kernels' tile.
inline int query_rows_of(const DecodeOptions&) { return 0; }  // one query token: one block
inline int query_rows_of(const PrefillOptions& opt) { return opt.query_rows; }
template <class Options>
Schedule make_schedule(const Options& opt, int sinks, int tile) {
  Schedule s;
  s.num_threads = opt.num_threads;
  s.split_tokens = opt.split_tokens;
  s.query_rows = query_rows_of(opt);
  s.window = opt.window;
  s.kept = opt.keep_sinks ? sinks : 0;
  s.tile = tile;
  return s;
}

/// One unit of work: query tokens [q_begin, q_end) of sequence `seq` (rows: those tokens x the GQA
/// heads of `kv_head`, last token first) over KV tokens [begin, end).
struct WorkItem {
  int seq;
  int kv_head;
  int q_begin;
  int q_end;
  int begin;
  int end;
};

/// Per-item geometry: which rows see which tokens. Query i of the sequence sits at position
/// first_pos + i; row r is query q_end - 1 - r / group, head r % group. Row r sees token t when
/// t <= position(r) and, with a window, t > position(r) - window or t < kept (kept sinks).
struct CausalRows {
  int first_pos;
  int q_begin;
  int q_end;
  int group;
  int window = 0;  ///< 0: no lower bound
  int kept = 0;    ///< tokens below it are never outside a window (keep_sinks)

  int rows() const { return (q_end - q_begin) * group; }
  int position(int r) const { return first_pos + q_end - 1 - r / group; }
  /// Rows that see token t0 by causality (a prefix of the rows: later queries see more); the
  /// earliest rows among them may still have t0 outside their window.
  int rows_seeing(int t0) const {
    const int lo = std::max(q_begin, t0 - first_pos);
    return lo >= q_end ? 0 : (q_end - lo) * group;
  }
  /// First token row r sees that may leave its window (tokens before it are hidden, kept sinks aside).
  int window_start(int r) const { return cpu::detail::window_start(position(r), window); }
  /// Whether some row among the first `rows` does not see all of tokens [t0, t0 + n).
  bool needs_mask(int t0, int n, int rows) const {
    if (rows <= 0) return false;
    if (position(rows - 1) < t0 + n - 1) return true;  // causal: past the earliest row's position
    const int lo = std::max(t0, kept);                   // tokens that can leave a window
    return window > 0 && lo < t0 + n && lo < window_start(0);
  }
  /// Sets logits [r * ldl + k] of tokens t0 + k that row r does not see to -inf (exp gives 0, or
  /// below 2e-38 with the polynomial's clamp, which no softmax sum can notice).
  void mask(float* logits, int ldl, int t0, int n, int rows) const {
    constexpr float kHidden = -std::numeric_limits<float>::infinity();
    for (int r = rows - 1; r >= 0; --r) {  // causal: the last rows (earliest queries) see least
      const int first_hidden = position(r) - t0 + 1;
      if (first_hidden >= n) break;  // earlier rows see more
      float* lg = logits + static_cast<std::size_t>(r) * ldl;
      for (int k = std::max(first_hidden, 0); k < n; ++k) lg[k] = kHidden;
    }
    if (window <= 0) return;
    const int lo = std::max(t0, kept);
    for (int r = 0; r < rows; ++r) {  // window: the first rows (latest queries) start latest
      const int hi = std::min(window_start(r), t0 + n);
      if (hi <= lo) break;
      std::fill(logits + static_cast<std::size_t>(r) * ldl + (lo - t0),
                logits + static_cast<std::size_t>(r) * ldl + (hi - t0), kHidden);
    }
  }
};

/// Tokens per split item: `requested`, or when 0 a split only if there are fewer than 4 items per
/// thread (into pieces of at least 512 tokens); rounded up to a multiple of `tile`.
inline int split_tokens(int requested, int threads, long base_items, int max_span, int tile) {
  int split = requested;
  if (split <= 0) {
    split = std::numeric_limits<int>::max();
    const long target = threads > 1 ? 4L * threads : 1;
    if (base_items < target) {
      const long want = (target + base_items - 1) / base_items;
      split = std::max(512, static_cast<int>((max_span + want - 1) / want));
    }
  }
  return split >= std::numeric_limits<int>::max() - tile ? split : (split + tile - 1) / tile * tile;
}

/// This thread's Scratch, kept across calls.
template <class Scratch>
Scratch& thread_scratch() {
  static thread_local Scratch scratch;
  return scratch;
}

/// What the merge does to a normalized output row before it is stored: nothing.
struct KeepBasis {
  void operator()(float*) const {}
};

/// Runs process(item, rows, state, scratch) for every item on the threads and merges the partial
/// states into out ([rows of all sequences][num_q_heads][d] of float, fp16 or bf16: merged in float,
/// then finish(row), rounded once). `Scratch` is default-constructed once per thread; with
/// KeepScratch it lives in thread-local storage across calls (decode: no allocation per step), else
/// for this call only.
template <class Scratch, bool KeepScratch, class Out, class Process, class Finish = KeepBasis>
void run_attention(const std::vector<SequenceWork>& seqs, int num_q_heads, int d, const Schedule& s, const char* what,
                   Out* out, Process&& process, Finish finish = {}) {
  const int threads = skv::detail::resolve_threads(s.num_threads, what);
  const int batch = static_cast<int>(seqs.size());
  // query blocks: rows = tokens x group, at most query_rows (at least one token)
  const int want_rows = s.query_rows > 0 ? s.query_rows : kPrefillRows;
  std::vector<int> block_tokens(seqs.size());
  long base_items = 0;
  int max_span = 0;  // the longest token range of a query block (the last block's)
  for (int b = 0; b < batch; ++b) {
    const SequenceWork& sq = seqs[b];
    const int group = num_q_heads / sq.kv_heads;
    block_tokens[b] = std::max(1, std::min(want_rows / group, sq.q_count));  // no overflow, at any query_rows
    if (sq.q_count > 0) {
      base_items += static_cast<long>(sq.kv_heads) * ((sq.q_count + block_tokens[b] - 1) / block_tokens[b]);
      max_span = std::max(max_span, sq.length - window_start(sq.length - block_tokens[b], s.window));
    }
  }
  if (base_items == 0) return;
  const int split = split_tokens(s.split_tokens, threads, base_items, max_span, s.tile);

  // items of one (sequence, KV head, query block) are consecutive, in token order
  std::vector<WorkItem> items;
  std::vector<std::size_t> group_first;  // first item of each (sequence, KV head, query block)
  for (int b = 0; b < batch; ++b) {
    const int nq = seqs[b].q_count, length = seqs[b].length;
    for (int h = 0; h < seqs[b].kv_heads; ++h) {
      // the last block (the longest range) first, for the dynamic schedule
      for (int qe = nq; qe > 0; qe -= block_tokens[b]) {
        const int qb = std::max(0, qe - block_tokens[b]);
        const int kv_end = length - nq + qe;  // the last query's position + 1
        // the block's first query sees the earliest tokens: its window's start, and kept sinks
        const int kv_begin = window_start(length - nq + qb, s.window);
        const int sinks = std::min(s.kept, kv_begin);
        group_first.push_back(items.size());
        if (sinks > 0) items.push_back(WorkItem{b, h, qb, qe, 0, sinks});
        int begin = kv_begin;
        do {
          const int end = kv_end - begin > split ? begin + split : kv_end;
          items.push_back(WorkItem{b, h, qb, qe, begin, end});
          begin = end;
        } while (begin < kv_end);
      }
    }
  }
  group_first.push_back(items.size());

  // partial states: per item and row, [m[rows], l[rows], acc[rows][d]]
  int max_rows = 1;
  for (int b = 0; b < batch; ++b)
    max_rows = std::max(max_rows, std::min(seqs[b].q_count, block_tokens[b]) * (num_q_heads / seqs[b].kv_heads));
  const std::size_t per_item = static_cast<std::size_t>(max_rows) * (d + 2);
  std::vector<float> partial(items.size() * per_item);
  const long n_items = static_cast<long>(items.size());
  const long n_groups = static_cast<long>(group_first.size()) - 1;

#if defined(SKV_HAS_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1 && n_items > 1)
#endif
  {
    Scratch local_scratch;  // empty until ensure(): costs nothing when KeepScratch
    Scratch& scratch = KeepScratch ? thread_scratch<Scratch>() : local_scratch;
    std::vector<float> merge_row(std::is_same<Out, float>::value ? 0 : static_cast<std::size_t>(d));
#if defined(SKV_HAS_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (long i = 0; i < n_items; ++i) {
      const WorkItem& it = items[static_cast<std::size_t>(i)];
      const SequenceWork& sq = seqs[it.seq];
      const CausalRows cr{sq.length - sq.q_count, it.q_begin, it.q_end, num_q_heads / sq.kv_heads, s.window, s.kept};
      const int rows = cr.rows();
      float* base = partial.data() + static_cast<std::size_t>(i) * per_item;
      ItemState st{base, base + rows, base + 2 * rows};
      st.reset(rows, d);
      if (it.end > it.begin) process(it, cr, st, scratch);
    }

    // merge the items of each query block in token order, row by row
#if defined(SKV_HAS_OPENMP)
#pragma omp for schedule(dynamic, 4)
#endif
    for (long g = 0; g < n_groups; ++g) {
      const std::size_t i0 = group_first[static_cast<std::size_t>(g)], i1 = group_first[static_cast<std::size_t>(g) + 1];
      const WorkItem& first = items[i0];
      const SequenceWork& sq = seqs[first.seq];
      const int group = num_q_heads / sq.kv_heads;
      const int rows = (first.q_end - first.q_begin) * group;
      for (int r = 0; r < rows; ++r) {
        const int token = first.q_end - 1 - r / group;
        const int head = first.kv_head * group + r % group;
        Out* dst = out + ((static_cast<std::size_t>(sq.q_offset) + token) * num_q_heads + head) * d;
        float* o = merge_row.empty() ? reinterpret_cast<float*>(dst) : merge_row.data();
        const auto stats = [&](std::size_t k) {
          const float* p = partial.data() + k * per_item;
          return SoftmaxStats<float>{p[r], p[rows + r]};
        };
        float m = -std::numeric_limits<float>::infinity();
        for (std::size_t k = i0; k < i1; ++k)
          if (!stats(k).empty()) m = std::max(m, stats(k).max);
        float l = 0.0f;
        std::fill(o, o + d, 0.0f);
        for (std::size_t k = i0; k < i1; ++k) {
          const SoftmaxStats<float> part = stats(k);
          if (part.empty()) continue;
          const float f = rescale_factor(part, m);
          l += part.sum * f;
          const float* acc = partial.data() + k * per_item + 2 * rows + static_cast<std::size_t>(r) * d;
          for (int c = 0; c < d; ++c) o[c] += acc[c] * f;
        }
        if (l > 0.0f) scale_array(o, d, 1.0f / l);
        finish(o);
        if (!merge_row.empty()) simd::from_f32_row(o, d, dst);
      }
    }
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace skv
