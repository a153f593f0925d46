// skv/attention/cpu_prefill.hpp: attention for many query tokens over a quantized cache (host only):
// chunked prefill, a reused prefix, speculative verification.
//
//   cache.append(k, v, n);                                           // the chunk's keys and values
//   skv::cpu::prefill_attention(cache, q, n, num_q_heads, out);      // q, out [n][num_q_heads][D]
//
// The queries belong to the last num_q_tokens tokens already appended: query i sits at position
// length - num_q_tokens + i and attends causally to every token up to and including its own, as
// the cache stores them now (sinks, quantized pages, the full-precision ring). With num_q_tokens == 1
// this is decode_attention (it runs the decode path, bit for bit). docs/cpu.md, "Prefill".
//
// Work: an item is (sequence, KV head, block of query tokens, KV token range). Its rows are the
// query tokens of the block times the GQA heads of the KV head, so each tile of codes is unpacked
// once and read by every row (keys: the integer / scaled-query dots of cpu_fast.hpp, now with a
// matrix of queries; values: folded probabilities). Rows are stored last query first, so the rows
// that see a token of the chunk are always a prefix of the rows; tokens past a row's position get a
// logit of -inf. Items run on OpenMP threads; a long KV range is split and the partial softmax
// states merged by log-sum-exp (attention/softmax.hpp).
//
// Tolerance against prefill_attention_reference (double): kPrefillTolerance * (1 + max |value|) per
// output element: 2e-5 for the float paths, 2e-4 for the AVX-512 integer path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/attention/baseline.hpp>
#include <skv/attention/cpu_fast.hpp>
#include <skv/attention/cpu_kernels.hpp>
#include <skv/attention/cpu_simd.hpp>
#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/config.hpp>
#include <skv/error.hpp>
#include <skv/quant/rotation.hpp>
#include <skv/threads.hpp>

namespace skv {
namespace cpu {

/// Documented accuracy of prefill_attention against prefill_attention_reference, per output
/// element: |fast - reference| <= kPrefillTolerance * (1 + max |value|). The float paths (AVX2,
/// scalar) differ from the reference by rounding order only; the AVX-512 integer path also rounds
/// the scaled queries and the folded weights to 16 bits (docs/cpu.md, "Prefill": measured 3.4e-5 for
/// K4V2, 1.0e-4 for 1-bit keys, whose scales are the widest).
#if defined(SKV_HAS_AVX512)
constexpr float kPrefillTolerance = 2e-4f;
#else
constexpr float kPrefillTolerance = 2e-5f;
#endif

/// Run-time knobs of the CPU prefill paths (quantized and dense baselines).
struct PrefillOptions {
  /// Threads: 0 means every OpenMP thread, 1 the calling thread, at most skv::kMaxThreads
  /// (skv/threads.hpp; always 1 without OpenMP).
  int num_threads = 0;
  /// KV tokens per work item when a query block's range is split across threads; 0 chooses
  /// automatically (a split only when there are fewer than 4 items per thread).
  int split_tokens = 0;
  /// Rows (query tokens x GQA heads of one KV head) per work item; 0 chooses automatically.
  int query_rows = 0;
  /// Sliding window: query i (position p_i) attends to positions p_i - window + 1 .. p_i (Hugging
  /// Face's convention); 0 attends causally to every token.
  int window = 0;
  /// With a window, sink tokens (Options: Sinks<N>) stay visible to every query (StreamingLLM)
  /// instead of leaving the window like any other token (Gemma, Mistral).
  bool keep_sinks = false;
};

namespace detail {

/// Rows per work item when PrefillOptions::query_rows is 0: enough to amortize a tile's unpacking
/// over many dot products, few enough that the rows' softmax state stays in L2.
constexpr int kPrefillRows = 256;

/// Validates one sequence's prefill arguments (q holds num_q_tokens * num_q_heads rows); KeyQ is
/// the key quantizer (void for dense keys), which bounds the scaled query.
template <int D, class KeyQ, class View, class T>
void check_prefill_args(const View& view, int length, int capacity, const T* q, int num_q_tokens, int num_q_heads,
                        const T* out, float scale, const char* what) {
  using skv::detail::require;
  const std::string w(what);
  require(num_q_tokens >= 0, w + ": num_q_tokens must not be negative (" + std::to_string(num_q_tokens) + ")");
  require(view.num_kv_heads > 0, w + ": the cache has no KV heads");
  require(num_q_heads > 0 && num_q_heads % view.num_kv_heads == 0,
          w + ": num_q_heads (" + std::to_string(num_q_heads) + ") must be a positive multiple of the " +
              std::to_string(view.num_kv_heads) + " KV heads");
  require(std::isfinite(scale), w + ": the softmax scale must be finite");
  require(length >= 0 && length <= capacity, w + ": view length exceeds its capacity");
  require(num_q_tokens <= length, w + ": " + std::to_string(num_q_tokens) +
                                      " query tokens, but the cache holds only " + std::to_string(length) +
                                      " tokens (append the chunk's keys and values first)");
  if (num_q_tokens == 0) return;
  require(q != nullptr && out != nullptr, w + ": q and out must not be null");
  const std::size_t n = static_cast<std::size_t>(num_q_tokens) * num_q_heads * D;
  float qmax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float qi = to_float(q[i]);
    if (!std::isfinite(qi))
      throw Error(w + ": q has a NaN or Inf at token " + std::to_string(i / (static_cast<std::size_t>(num_q_heads) * D)) +
                  ", head " + std::to_string(i / D % num_q_heads) + ", dim " + std::to_string(i % D));
    qmax = std::max(qmax, std::fabs(qi));
  }
  // the same bound as decode: the scale is folded into the query in float (reference.hpp)
  require(static_cast<double>(qmax) * std::fabs(static_cast<double>(scale)) <= kMaxScaledQuery<D, KeyQ>,
          w + ": softmax scale " + skv::detail::number(scale) + " times max |q| " + skv::detail::number(qmax) +
              " exceeds " + skv::detail::number(kMaxScaledQuery<D, KeyQ>) + ": the logits could overflow float");
}

/// Validates one sequence's prefill over `view`; the chunk's first query sees tokens from
/// window_start(its position, window) on.
template <class Layout, class T>
void check_prefill_view(const SequenceView<Layout>& view, const T* q, int num_q_tokens, int num_q_heads, const T* out,
                        float scale, int window, const char* what) {
  check_prefill_args<Layout::kHeadDim, typename Layout::KeyQuantizer>(view, view.length, view.capacity(), q,
                                                                      num_q_tokens, num_q_heads, out, scale, what);
  check_window(window, what);
  skv::detail::require(view.length == 0 || view.residual != nullptr, std::string(what) + ": the sequence view has a null pointer");
  skv::detail::require(view.quantized_length() == 0 || view.pages != nullptr,
                       std::string(what) + ": the sequence view has a null pointer");
  // an entry outside the pool, or a page handed back, is an error, not a crash
  skv::detail::check_read_pages(view, window_start(view.length - num_q_tokens, window), what);
}

/// One unit of prefill work: query tokens [q_begin, q_end) of sequence `seq` (rows: those tokens x
/// the GQA heads of `kv_head`, last token first) over KV tokens [begin, end).
struct PrefillItem {
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
      std::fill(logits + static_cast<std::size_t>(r) * ldl + (lo - t0), logits + static_cast<std::size_t>(r) * ldl + (hi - t0),
                kHidden);
    }
  }
};

/// Runs process(item, rows, state, scratch) for every item on the threads and merges the partial
/// states into out ([total query rows][num_q_heads][d] of float, fp16 or bf16: merged in float,
/// rounded once; sequence b from row q_offsets[b]). `tile` aligns split points; `kept` is the
/// number of sink tokens that a window keeps visible (opt.keep_sinks).
template <class Scratch, class Out, class Process>
void run_prefill(int batch, const int* lengths, const int* kv_heads, const int* q_counts, const int* q_offsets,
                 int num_q_heads, int d, int tile, int kept, const PrefillOptions& opt, Out* out, Process&& process) {
  const int threads = skv::detail::resolve_threads(opt.num_threads, "prefill_attention");
  // query blocks: rows = tokens x group, at most query_rows (at least one token)
  const int want_rows = opt.query_rows > 0 ? opt.query_rows : kPrefillRows;
  std::vector<int> block_tokens(static_cast<std::size_t>(batch));
  long base_items = 0;
  int max_len = 0;
  for (int b = 0; b < batch; ++b) {
    const int group = num_q_heads / kv_heads[b];
    block_tokens[b] = std::max(1, std::min(want_rows / group, q_counts[b]));  // no overflow below, at any query_rows
    if (q_counts[b] > 0) {
      base_items += static_cast<long>(kv_heads[b]) * ((q_counts[b] + block_tokens[b] - 1) / block_tokens[b]);
      const long span = opt.window > 0 ? static_cast<long>(opt.window) + block_tokens[b] : lengths[b];
      max_len = std::max(max_len, static_cast<int>(std::min<long>(span, lengths[b])));
    }
  }
  if (base_items == 0) return;
  int split = opt.split_tokens;
  if (split <= 0) {
    split = std::numeric_limits<int>::max();
    const long target = threads > 1 ? 4L * threads : 1;
    if (base_items < target) {
      const long want = (target + base_items - 1) / base_items;
      split = std::max(512, static_cast<int>((max_len + want - 1) / want));
    }
  }
  split = split >= std::numeric_limits<int>::max() - tile ? split : (split + tile - 1) / tile * tile;

  // items of one (sequence, KV head, query block) are consecutive, in token order
  std::vector<PrefillItem> items;
  std::vector<std::size_t> group_first;  // first item of each (sequence, KV head, query block)
  for (int b = 0; b < batch; ++b) {
    const int nq = q_counts[b];
    for (int h = 0; h < kv_heads[b]; ++h) {
      // the last block (the longest range) first, for the dynamic schedule
      for (int qe = nq; qe > 0; qe -= block_tokens[b]) {
        const int qb = std::max(0, qe - block_tokens[b]);
        const int kv_end = lengths[b] - nq + qe;  // the last query's position + 1
        // the block's first query sees the earliest tokens: its window's start, and kept sinks
        const int kv_begin = window_start(lengths[b] - nq + qb, opt.window);
        const int sinks = std::min(kept, kv_begin);
        group_first.push_back(items.size());
        if (sinks > 0) items.push_back(PrefillItem{b, h, qb, qe, 0, sinks});
        int begin = kv_begin;
        do {
          const int end = kv_end - begin > split ? begin + split : kv_end;
          items.push_back(PrefillItem{b, h, qb, qe, begin, end});
          begin = end;
        } while (begin < kv_end);
      }
    }
  }
  group_first.push_back(items.size());

  int max_rows = 1;
  for (int b = 0; b < batch; ++b)
    max_rows = std::max(max_rows, std::min(q_counts[b], block_tokens[b]) * (num_q_heads / kv_heads[b]));
  const std::size_t per_item = static_cast<std::size_t>(max_rows) * (d + 2);
  std::vector<float> partial(items.size() * per_item);
  const long n_items = static_cast<long>(items.size());
  const long n_groups = static_cast<long>(group_first.size()) - 1;

#if defined(SKV_HAS_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1 && n_items > 1)
#endif
  {
    Scratch scratch;
    std::vector<float> merge_row(std::is_same<Out, float>::value ? 0 : static_cast<std::size_t>(d));
#if defined(SKV_HAS_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (long i = 0; i < n_items; ++i) {
      const PrefillItem& it = items[static_cast<std::size_t>(i)];
      const int group = num_q_heads / kv_heads[it.seq];
      const CausalRows cr{lengths[it.seq] - q_counts[it.seq], it.q_begin, it.q_end, group, opt.window, kept};
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
      std::vector<float>& row = merge_row;
      const std::size_t i0 = group_first[static_cast<std::size_t>(g)], i1 = group_first[static_cast<std::size_t>(g) + 1];
      const PrefillItem& first = items[i0];
      const int b = first.seq;
      const int group = num_q_heads / kv_heads[b];
      const int rows = (first.q_end - first.q_begin) * group;
      for (int r = 0; r < rows; ++r) {
        const int token = first.q_end - 1 - r / group;
        const int head = first.kv_head * group + r % group;
        Out* dst = out + ((static_cast<std::size_t>(q_offsets[b]) + token) * num_q_heads + head) * d;
        float* o = row.empty() ? reinterpret_cast<float*>(dst) : row.data();
        float m = -std::numeric_limits<float>::infinity();
        for (std::size_t k = i0; k < i1; ++k) {
          const float* s = partial.data() + k * per_item;
          if (s[rows + r] != 0.0f) m = std::max(m, s[r]);
        }
        float l = 0.0f;
        std::fill(o, o + d, 0.0f);
        for (std::size_t k = i0; k < i1; ++k) {
          const float* s = partial.data() + k * per_item;
          if (s[rows + r] == 0.0f) continue;
          const float f = i1 - i0 == 1 ? 1.0f : ::expf(s[r] - m);
          l += s[rows + r] * f;
          const float* acc = s + 2 * rows + static_cast<std::size_t>(r) * d;
          if (f == 1.0f) {
            for (int c = 0; c < d; ++c) o[c] += acc[c];
          } else {
            for (int c = 0; c < d; ++c) o[c] += acc[c] * f;
          }
        }
        if (l > 0.0f) scale_array(o, d, 1.0f / l);
        if (!row.empty()) simd::from_f32_row(o, d, dst);
      }
    }
  }
}

#if defined(SKV_HAS_AVX512)
// ---- AVX-512 integer matrix kernels of the prefill (docs/cpu.md, "Prefill") -----------------------

/// acc += pairwise products of x with the int16 pair at w broadcast to every lane. GCC keeps
/// vpdpwssd accumulators in place only through inline assembly (the intrinsic's copies and spills
/// cost a third of the kernel), which also folds the broadcast into the instruction.
SKV_FORCEINLINE void dpwssd_bcast(__m512i& acc, __m512i x, const std::int32_t* w) {
#if defined(SKV_HAS_AVX512VNNI) && (defined(__GNUC__) || defined(__clang__))
  __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
#else
  acc = dpwssd(acc, x, _mm512_set1_epi32(*w));
#endif
}

/// acc += pairwise products of x and w (registers), in place (see dpwssd_bcast).
SKV_FORCEINLINE void dpwssd_acc(__m512i& acc, __m512i x, __m512i w) {
#if defined(SKV_HAS_AVX512VNNI) && (defined(__GNUC__) || defined(__clang__))
  __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
#else
  acc = dpwssd(acc, x, w);
#endif
}

/// Transposes a 16 x 16 block of int32: rows in + i * ldi become columns out + i * ldo.
SKV_FORCEINLINE void transpose16_epi32(const std::int32_t* in, std::size_t ldi, std::int32_t* out, std::size_t ldo) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(in + i * ldi);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // r[4g + k]: 128-bit lane L holds rows 4g..4g+3 of column 4L + k
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);
    const __m512i v1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);
    const __m512i v2 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
    const __m512i v3 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
    _mm512_storeu_si512(out + k * ldo, _mm512_shuffle_i32x4(v0, v2, 0x88));
    _mm512_storeu_si512(out + (8 + k) * ldo, _mm512_shuffle_i32x4(v0, v2, 0xDD));
    _mm512_storeu_si512(out + (4 + k) * ldo, _mm512_shuffle_i32x4(v1, v3, 0x88));
    _mm512_storeu_si512(out + (12 + k) * ldo, _mm512_shuffle_i32x4(v1, v3, 0xDD));
  }
}

/// Key logits with tokens in lanes: logits[r][16v + l] = inv[r] * sum_p (qp[r][p] + qlo[r][p] / 2^15)
/// . kt[p][16v + l] - bias[r] for NR rows and NV vectors of 16 tokens; each dot (int16 pairs) is
/// exact in int32. kt holds the tile's centred codes transposed to [channel pair][token] (row length
/// LDK); qp the rows' 16-bit scaled queries and qlo what their rounding left, in units of 2^-15, both
/// as [row][channel pair] (row length PAIRS). No horizontal sums: each vpdpwssd adds one channel pair
/// for 16 tokens. The strides are template parameters so that every operand address is a base plus
/// a constant.
template <int NR, int NV, int PAIRS, int LDK, int LDL>
SKV_FORCEINLINE void key_logits_i16(const std::int32_t* SKV_RESTRICT kt, const std::int32_t* SKV_RESTRICT qp,
                                    const std::int32_t* SKV_RESTRICT qlo, const float* inv, const float* bias,
                                    float* SKV_RESTRICT logits) {
  __m512i acc[NR][NV], low[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = low[r][v] = _mm512_setzero_si512();
  for (int p = 0; p < PAIRS; ++p) {
    __m512i x[NV];
    for (int v = 0; v < NV; ++v) x[v] = _mm512_loadu_si512(kt + p * LDK + 16 * v);
    for (int r = 0; r < NR; ++r) {
      // one broadcast per row and pair, used by every token vector (the load ports, not the
      // multipliers, would otherwise limit the loop)
      if (NV == 1) {
        dpwssd_bcast(acc[r][0], x[0], qp + r * PAIRS + p);
        dpwssd_bcast(low[r][0], x[0], qlo + r * PAIRS + p);
      } else {
        const __m512i qv = _mm512_set1_epi32(qp[r * PAIRS + p]);
        const __m512i lv = _mm512_set1_epi32(qlo[r * PAIRS + p]);
        for (int v = 0; v < NV; ++v) {
          dpwssd_acc(acc[r][v], x[v], qv);
          dpwssd_acc(low[r][v], x[v], lv);
        }
      }
    }
  }
  const __m512 vlo = _mm512_set1_ps(1.0f / 32768.0f);
  for (int r = 0; r < NR; ++r) {
    const __m512 vs = _mm512_set1_ps(inv[r]), vb = _mm512_set1_ps(bias[r]);
    for (int v = 0; v < NV; ++v) {
      const __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(low[r][v]), vlo, _mm512_cvtepi32_ps(acc[r][v]));
      _mm512_storeu_ps(logits + r * LDL + 16 * v, _mm512_fmsub_ps(dot, vs, vb));
    }
  }
}

/// key_logits_i16 for `rows` rows; logits is [rows][LDL]. Rows go in blocks that keep both
/// accumulator sets of a block in the 32 vector registers.
template <int NV, int PAIRS, int LDK, int LDL>
inline void key_logits_rows(const std::int32_t* kt, const std::int32_t* qp, const std::int32_t* qlo, int rows,
                            const float* inv, const float* bias, float* logits) {
  constexpr int kRows = NV == 1 ? 8 : NV == 2 ? 6 : 2;
  int r = 0;
  for (; r + kRows <= rows; r += kRows)
    key_logits_i16<kRows, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                               qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                               logits + static_cast<std::size_t>(r) * LDL);
  for (; r + 2 <= rows; r += 2)
    key_logits_i16<2, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                           qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                           logits + static_cast<std::size_t>(r) * LDL);
  for (; r < rows; ++r)
    key_logits_i16<1, NV, PAIRS, LDK, LDL>(kt, qp + static_cast<std::size_t>(r) * PAIRS,
                                           qlo + static_cast<std::size_t>(r) * PAIRS, inv + r, bias + r,
                                           logits + static_cast<std::size_t>(r) * LDL);
}

/// Value accumulation with channels in lanes: out[r][c] = sum_p wp[r][g(c)][p] . vp[p][c] for
/// token pairs [p0, p1), NR rows, the 64 channels from C0 (32 when only 32 are left). vp holds the
/// tile's value codes with the two tokens of each pair interleaved (vpunpcklwd / vpunpckhwd order,
/// once per tile, rows of D); wp the rows' 16-bit folded weights, whose pairs are consecutive tokens:
/// [row][group][token] as int32 pairs, LDW per row, LDG per group; G channels per value group.
template <int NR, int C0, int D, int LDW, int LDG, int G>
SKV_FORCEINLINE void value_acc_i16(const std::int32_t* SKV_RESTRICT vp, int p0, int p1,
                                   const std::int32_t* SKV_RESTRICT wp, std::int32_t* SKV_RESTRICT out) {
  constexpr int NC = C0 + 64 <= D ? 2 : 1;
  __m512i lo[NR][NC], hi[NR][NC];
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < NC; ++k) lo[r][k] = hi[r][k] = _mm512_setzero_si512();
  for (int p = p0; p < p1; ++p) {
    __m512i xl[NC], xh[NC];
    const std::int32_t* row = vp + static_cast<std::size_t>(p) * D + C0;
    for (int k = 0; k < NC; ++k) {
      xl[k] = _mm512_loadu_si512(row + 32 * k);
      xh[k] = _mm512_loadu_si512(row + 32 * k + 16);
    }
    const std::int32_t* w = wp + p;
    for (int r = 0; r < NR; ++r) {
      for (int k = 0; k < NC; ++k) {
        const __m512i wv = _mm512_set1_epi32(w[r * LDW + (C0 + 32 * k) / G * LDG]);
        dpwssd_acc(lo[r][k], xl[k], wv);
        dpwssd_acc(hi[r][k], xh[k], wv);
      }
    }
  }
  // lane l of lo holds channels 8l..8l+3 of the chunk, of hi 8l+4..8l+7: back to channel order
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int r = 0; r < NR; ++r) {
    for (int k = 0; k < NC; ++k) {
      std::int32_t* o = out + r * D + C0 + 32 * k;
      _mm512_storeu_si512(o, _mm512_permutex2var_epi32(lo[r][k], i0, hi[r][k]));
      _mm512_storeu_si512(o + 16, _mm512_permutex2var_epi32(lo[r][k], i1, hi[r][k]));
    }
  }
}

template <int NR, int C0, int D, int LDW, int LDG, int G>
SKV_FORCEINLINE void value_acc_channels(const std::int32_t* vp, int p0, int p1, const std::int32_t* wp,
                                        std::int32_t* out) {
  if constexpr (C0 < D) {
    value_acc_i16<NR, C0, D, LDW, LDG, G>(vp, p0, p1, wp, out);
    value_acc_channels<NR, C0 + 64, D, LDW, LDG, G>(vp, p0, p1, wp, out);
  }
}

/// value_acc_i16 for `rows` rows and every channel; out is [rows][D].
template <int D, int LDW, int LDG, int G>
inline void value_acc_rows(const std::int32_t* vp, int p0, int p1, const std::int32_t* wp, int rows,
                           std::int32_t* out) {
  int r = 0;
  for (; r + 4 <= rows; r += 4)
    value_acc_channels<4, 0, D, LDW, LDG, G>(vp, p0, p1, wp + static_cast<std::size_t>(r) * LDW, out + static_cast<std::size_t>(r) * D);
  for (; r < rows; ++r)
    value_acc_channels<1, 0, D, LDW, LDG, G>(vp, p0, p1, wp + static_cast<std::size_t>(r) * LDW, out + static_cast<std::size_t>(r) * D);
}

/// Asks for `bytes` from p into L2, one request per 64-byte line.
inline void prefetch_l2(const std::uint8_t* p, std::size_t bytes) {
  for (std::size_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T1);
}

/// Sum of the 16 int32 lanes in int64 (no overflow).
SKV_FORCEINLINE std::int64_t reduce_add_epi32_wide(__m512i x) {
  const __m512i a = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(x));
  const __m512i b = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(x, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(a, b));
}

/// The integer matrix prefill for the default axes (Channel keys, Token values in groups of a
/// multiple of 32, fp16 metadata so that |zero| <= 2048 fits int16): tiles of up to 64 tokens in one
/// page; per key group the rows' scaled queries are rounded to 16 bits (as in decode) and dotted with
/// the transposed codes; one online-softmax update per tile; the folded weights p * s rounded to 16
/// bits per row and tile, accumulated exactly in int32 over the tile, zero points subtracted exactly.
template <class Layout>
struct IntPrefill {
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  using F = FastDecode<Layout>;
  static constexpr int kD = Layout::kHeadDim;
  static constexpr int kPage = Layout::kPageSize;
  static constexpr int kT = kPage < 64 ? kPage : 64;                                // tokens per tile
  static constexpr int kKG = KQ::kGroupSize < kT ? KQ::kGroupSize : kT;           // tokens per key group in a tile
  static constexpr int kJ = VQ::kAxis == Axis::Token ? kD / VQ::kGroupSize : 1;  // value groups per token
  static constexpr int kPairs = kD / 2;
  static constexpr bool kEnabled = KQ::kAxis == Axis::Channel && VQ::kAxis == Axis::Token && kD % 32 == 0 &&
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
#endif

/// The fast prefill for one cache configuration, on the tile kernels of FastDecode.
template <class Layout>
struct FastPrefill {
  using F = FastDecode<Layout>;
  using KQ = typename Layout::KeyQuantizer;
  using VQ = typename Layout::ValueQuantizer;
  static constexpr int kD = Layout::kHeadDim;
  static constexpr int kPage = Layout::kPageSize;
  static constexpr int kTile = F::kTile;
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

  /// Logits of rows [0, rows) for quantized indices [j, j + n) (one tile) into sc.logits.
  static void key_logits(const SequenceView<Layout>& view, int h, int j, int n, int rows, Scratch& sc) {
    const int slot = j % kPage;
    const auto kb = view.keys(j, h);
    float* kbuf = sc.kbuf.data();
    if (KQ::kAxis == Axis::Channel) {
      float* s = sc.ms.data();
      float* z = sc.mz.data();
      F::template load_meta<KQ>(kb.scales(), kb.zeros(), (slot / KQ::kGroupSize) * kD, kD, s, z);
#if defined(SKV_HAS_AVX512)
      if (F::kIntKeys) {
        F::integer_key_logits(kb, slot, n, rows, s, z, sc);
        return;
      }
#endif
      F::template unpack_tile<KQ::kBits>(kb, slot, n, kbuf);
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
      dot_rows(sc.qs.data(), rows, kD, kbuf, kD, n, sc.bias.data(), sc.logits.data(), kTile);
    } else {
      F::template unpack_tile<KQ::kBits>(kb, slot, n, kbuf);
      F::template dequantize_token_rows<KQ>(kb, slot, n, kbuf, sc.ms.data(), sc.mz.data());
      dot_rows(sc.q0.data(), rows, kD, kbuf, kD, n, nullptr, sc.logits.data(), kTile);
    }
  }

  static void quantized_tile(const SequenceView<Layout>& view, int h, int j, int n, const CausalRows& cr, ItemState& st,
                             Scratch& sc) {
    const int t0 = Layout::kSinkTokens + j;
    const int rows = cr.rows_seeing(t0);
    if (rows == 0) return;
    key_logits(view, h, j, n, rows, sc);
    if (cr.needs_mask(t0, n, rows)) cr.mask(sc.logits.data(), kTile, t0, n, rows);
    softmax_tile(st, rows, kD, sc.logits.data(), kTile, n, sc.p.data());
    F::values_tile(view.values(j, h), j % kPage, n, rows, st, sc);
  }

  static void full_precision_tile(const SequenceView<Layout>& view, int h, int t, int n, const CausalRows& cr,
                                  ItemState& st, Scratch& sc, bool sinks) {
    const int rows = cr.rows_seeing(t);
    if (rows == 0) return;
    for (int i = 0; i < n; ++i) {
      const float* k = sinks ? view.sink_key(t + i, h) : view.residual_key(t + i, h);
      const float* v = sinks ? view.sink_value(t + i, h) : view.residual_value(t + i, h);
      std::memcpy(sc.kbuf.data() + static_cast<std::size_t>(i) * kD, k, sizeof(float) * kD);
      std::memcpy(sc.vbuf.data() + static_cast<std::size_t>(i) * kD, v, sizeof(float) * kD);
    }
    dot_rows(sc.q0.data(), rows, kD, sc.kbuf.data(), kD, n, nullptr, sc.logits.data(), kTile);
    if (cr.needs_mask(t, n, rows)) cr.mask(sc.logits.data(), kTile, t, n, rows);
    softmax_tile(st, rows, kD, sc.logits.data(), kTile, n, sc.p.data());
    acc_rows(st.acc, rows, kD, sc.p.data(), kTile, 1, kD, sc.vbuf.data(), kD, n);
  }

  /// One work item; q is the sequence's [num_q_tokens][num_q_heads][kD] (float, fp16 or bf16).
  template <class T>
  static void process(const SequenceView<Layout>& view, const T* q, int num_q_heads, float scale,
                      const PrefillItem& it, const CausalRows& cr, ItemState& st, Scratch& sc) {
    constexpr int kSinks = Layout::kSinkTokens;
    const int rows = cr.rows();
    sc.ensure(rows);
    for (int r = 0; r < rows; ++r) {
      const int token = it.q_end - 1 - r / cr.group;
      const int head = it.kv_head * cr.group + r % cr.group;
      const T* src = q + (static_cast<std::size_t>(token) * num_q_heads + head) * kD;
      float* dst = sc.q0.data() + static_cast<std::size_t>(r) * kD;
      simd::to_f32_row(src, kD, dst);  // widened exactly
      for (int c = 0; c < kD; ++c) dst[c] *= scale;
      if constexpr (Layout::kRotateKeys) HadamardRotation<kD, Layout::kRotationSeed>::apply(dst);
    }
    const int h = it.kv_head, begin = it.begin, end = it.end;
    int t = begin;
    for (const int e = std::min(end, view.sink_length()); t < e;) {
      const int n = std::min(kTile, e - t);
      full_precision_tile(view, h, t, n, cr, st, sc, true);
      t += n;
    }
    int j = t - kSinks;
    const int jend = std::min(end - kSinks, view.quantized_length());
#if defined(SKV_HAS_AVX512)
    if constexpr (kIntTiles) {
      if (j < jend) {
        sc.ints.ensure(rows);
        if (sc.tile_logits.size() < static_cast<std::size_t>(rows) * I::kT) sc.tile_logits.resize(static_cast<std::size_t>(rows) * I::kT);
        F::prefetch_block(view.head_block(j, h), Layout::kHeadBytes);
        for (int jt = j - j % I::kT; jt < jend; jt += I::kT) {
          // the block two pages ahead into L2 (a tile of many rows takes microseconds, so one page of
          // lead hides DRAM latency; L2 requests do not crowd the L1 fill buffers)
          if (jt % kPage == 0 && jt + 2 * kPage < jend) prefetch_l2(view.head_block(jt + 2 * kPage, h), Layout::kHeadBytes);
          if (jt % kPage == 0 && jt + kPage < jend) F::prefetch_block(view.head_block(jt + kPage, h), Layout::kHeadBytes);
          const int ja = std::max(j, jt), jb = std::min(jend, jt + I::kT);
          const int tile_rows = cr.rows_seeing(kSinks + ja);
          if (tile_rows > 0)
            I::tile(view, h, jt, ja, jb, tile_rows, cr, sc.q0.data(), sc.tile_logits.data(), st, sc.ints);
        }
        j = jend;
        t = kSinks + jend;
      }
    }
#endif
    if (j < jend) {
      F::prefetch_block(view.head_block(j, h), Layout::kHeadBytes);
      while (j < jend) {
        const int n = std::min(kTile - j % kTile, jend - j);
        if (j % kPage == 0 && j + kPage < jend) F::prefetch_block(view.head_block(j + kPage, h), Layout::kHeadBytes);
        quantized_tile(view, h, j, n, cr, st, sc);
        j += n;
      }
      t = kSinks + jend;
    }
    while (t < end) {
      const int n = std::min(kTile, end - t);
      full_precision_tile(view, h, t, n, cr, st, sc, false);
      t += n;
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

  static void process(const DenseView<T, D>& view, const float* q, int num_q_heads, float scale, const PrefillItem& it,
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

/// Checks a batch's query offsets and returns each sequence's query count.
inline std::vector<int> prefill_counts(int batch, const int* q_indptr, const char* what) {
  const std::string w(what);
  skv::detail::require(q_indptr != nullptr, w + ": q_indptr must not be null");
  skv::detail::require(q_indptr[0] == 0, w + ": q_indptr[0] must be 0");
  std::vector<int> counts(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    skv::detail::require(q_indptr[b + 1] >= q_indptr[b],
                         w + ": q_indptr must not decrease (entry " + std::to_string(b + 1) + ")");
    counts[b] = q_indptr[b + 1] - q_indptr[b];
  }
  return counts;
}

}  // namespace detail

// ---- the reference ----------------------------------------------------------------------------------

/// Reference prefill attention in double (the oracle): q and out are [num_q_tokens][num_q_heads][D];
/// query i (position p = length - num_q_tokens + i) attends to tokens [0, p], or with window > 0 to
/// (p - window, p] (and the sinks with keep_sinks). Each KV head is dequantized once through the
/// shared decode function (SequenceView::key / value), then plain loops.
template <class Layout>
void prefill_attention_reference(const SequenceView<Layout>& view, const float* q, int num_q_tokens, int num_q_heads,
                                 float* out, float scale, int window = 0, bool keep_sinks = false) {
  constexpr int D = Layout::kHeadDim;
  detail::check_prefill_view(view, q, num_q_tokens, num_q_heads, out, scale, window, "prefill_attention_reference");
  if (num_q_tokens == 0) return;
  const int length = view.length;
  const int group = num_q_heads / view.num_kv_heads;
  const int kept = keep_sinks ? Layout::kSinkTokens : 0;
  const int first = detail::window_start(length - num_q_tokens, window);  // the earliest token read
  const std::vector<float> qr = to_key_basis<Layout>(q, static_cast<std::size_t>(num_q_tokens) * num_q_heads);
  std::vector<double> k(static_cast<std::size_t>(length) * D), v(k.size()), logit(static_cast<std::size_t>(length));
  std::vector<double> acc(D);
  const auto seen = [&](int t, int pos) { return t >= detail::window_start(pos, window) || t < kept; };
  for (int kv = 0; kv < view.num_kv_heads; ++kv) {
    for (int t = 0; t < length; ++t) {
      if (t < first && t >= kept) continue;  // never seen (its page may be gone)
      for (int c = 0; c < D; ++c) {
        k[static_cast<std::size_t>(t) * D + c] = view.key(t, kv, c);
        v[static_cast<std::size_t>(t) * D + c] = view.value(t, kv, c);
      }
    }
    for (int i = 0; i < num_q_tokens; ++i) {
      const int pos = length - num_q_tokens + i;
      const int visible = pos + 1;
      for (int g = 0; g < group; ++g) {
        const int head = kv * group + g;
        const float* qv = qr.data() + (static_cast<std::size_t>(i) * num_q_heads + head) * D;
        double m = -HUGE_VAL;
        for (int t = 0; t < visible; ++t) {
          if (!seen(t, pos)) continue;
          double dot = 0.0;
          for (int c = 0; c < D; ++c) dot += static_cast<double>(qv[c]) * k[static_cast<std::size_t>(t) * D + c];
          logit[t] = dot * scale;
          m = std::max(m, logit[t]);
        }
        double l = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int t = 0; t < visible; ++t) {
          if (!seen(t, pos)) continue;
          const double p = std::exp(logit[t] - m);
          l += p;
          for (int c = 0; c < D; ++c) acc[c] += p * v[static_cast<std::size_t>(t) * D + c];
        }
        float* o = out + (static_cast<std::size_t>(i) * num_q_heads + head) * D;
        for (int c = 0; c < D; ++c) o[c] = static_cast<float>(acc[c] / l);
      }
    }
  }
}

/// The reference for a whole cache, with the cache's window (0 for a cache without one).
template <class KeyQ, class ValueQ, int D, int P, int R, class O>
void prefill_attention_reference(const BasicKVCache<KeyQ, ValueQ, D, P, R, O>& cache, const float* q, int num_q_tokens,
                                 int num_q_heads, float* out, float scale, bool keep_sinks = false) {
  prefill_attention_reference(cache.view(), q, num_q_tokens, num_q_heads, out, scale, cache.window(), keep_sinks);
}

// ---- the fast path ----------------------------------------------------------------------------------

namespace detail {

template <class Layout, class T>
void prefill_batch(const SequenceView<Layout>* views, int batch, const int* q_indptr, const T* q, int num_q_heads,
                   T* out, float scale, const PrefillOptions& opt) {
  constexpr int kD = Layout::kHeadDim;
  skv::detail::require(batch >= 0, "prefill_attention_batch: batch must not be negative");
  if (batch == 0) return;
  skv::detail::require(views != nullptr, "prefill_attention_batch: views must not be null");
  const std::vector<int> counts = detail::prefill_counts(batch, q_indptr, "prefill_attention_batch");
  std::vector<int> lengths(static_cast<std::size_t>(batch)), heads(static_cast<std::size_t>(batch));
  const std::size_t row = static_cast<std::size_t>(num_q_heads) * kD;
  for (int b = 0; b < batch; ++b) {
    check_prefill_view(views[b], q ? q + q_indptr[b] * row : nullptr, counts[b], num_q_heads,
                       out ? out + q_indptr[b] * row : nullptr, scale, opt.window, "prefill_attention_batch");
    lengths[b] = views[b].length;
    heads[b] = views[b].num_kv_heads;
  }
  using P = FastPrefill<Layout>;
  run_prefill<typename P::Scratch>(
      batch, lengths.data(), heads.data(), counts.data(), q_indptr, num_q_heads, kD, P::kTile,
      opt.keep_sinks ? Layout::kSinkTokens : 0, opt, out,
      [&](const PrefillItem& it, const CausalRows& cr, ItemState& st, typename P::Scratch& sc) {
        P::process(views[it.seq], q + q_indptr[it.seq] * row, num_q_heads, scale, it, cr, st, sc);
      });
}

template <class Layout, class T>
void prefill_one(const SequenceView<Layout>& view, const T* q, int num_q_tokens, int num_q_heads, T* out, float scale,
                 const PrefillOptions& opt) {
  if (num_q_tokens == 1) {
    check_prefill_view(view, q, num_q_tokens, num_q_heads, out, scale, opt.window, "prefill_attention");
    DecodeOptions d;
    d.num_threads = opt.num_threads;
    d.split_tokens = opt.split_tokens;
    d.window = opt.window;
    d.keep_sinks = opt.keep_sinks;
    decode_attention_fast(view, q, num_q_heads, out, scale, d);
    return;
  }
  const int q_indptr[2] = {0, num_q_tokens};
  prefill_batch(&view, 1, q_indptr, q, num_q_heads, out, scale, opt);
}

}  // namespace detail

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
/// attends to tokens [0, p], or to (p - window, p] with PrefillOptions::window. One query token
/// runs decode_attention. q and out are float, or both fp16 or both bf16.
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

// ---- dense baselines ----------------------------------------------------------------------------------

/// Prefill attention over dense (fp32 / fp16) caches for a batch, with the same driver, tiles and
/// kernels as the quantized path: the baseline of bench/cpu_prefill.cpp.
template <class T, int D>
void prefill_attention_batch(const DenseView<T, D>* views, int batch, const int* q_indptr, const float* q,
                             int num_q_heads, float* out, float scale, const PrefillOptions& opt = PrefillOptions{}) {
  skv::detail::require(batch >= 0, "prefill_attention_batch: batch must not be negative");
  if (batch == 0) return;
  skv::detail::require(views != nullptr, "prefill_attention_batch: views must not be null");
  const std::vector<int> counts = detail::prefill_counts(batch, q_indptr, "prefill_attention_batch");
  std::vector<int> lengths(static_cast<std::size_t>(batch)), heads(static_cast<std::size_t>(batch));
  const std::size_t row = static_cast<std::size_t>(num_q_heads) * D;
  for (int b = 0; b < batch; ++b) {
    detail::check_prefill_args<D, void>(views[b], views[b].length, views[b].capacity, q ? q + q_indptr[b] * row : nullptr,
                               counts[b], num_q_heads, out ? out + q_indptr[b] * row : nullptr, scale,
                               "prefill_attention_batch");
    lengths[b] = views[b].length;
    heads[b] = views[b].num_kv_heads;
  }
  using P = detail::DensePrefill<T, D>;
  detail::run_prefill<typename P::Scratch>(
      batch, lengths.data(), heads.data(), counts.data(), q_indptr, num_q_heads, D, P::kTile, 0, opt, out,
      [&](const detail::PrefillItem& it, const detail::CausalRows& cr, detail::ItemState& st,
          typename P::Scratch& sc) {
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
