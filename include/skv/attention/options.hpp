// skv/attention/options.hpp: the run-time knobs of the CPU decode and prefill (host only).
#pragma once

namespace skv {
namespace cpu {

/// Run-time knobs of the CPU decode paths (quantized and the dense baselines).
struct DecodeOptions {
  /// Threads to use: 0 means every OpenMP thread (omp_get_max_threads()); 1 runs on the calling
  /// thread; at most skv::kMaxThreads (skv/threads.hpp). Without OpenMP the call always runs on one
  /// thread.
  int num_threads = 0;
  /// Tokens per work item when a sequence is split across threads; 0 chooses automatically (a split
  /// only when there are fewer than 4 items per thread). Rounded up to the tile size.
  int split_tokens = 0;
  /// Sliding window: the query (position length - 1) attends to the last `window` tokens, positions
  /// length - window .. length - 1 (Hugging Face's convention); 0 attends to every token.
  int window = 0;
  /// With a window, sink tokens (Options: Sinks<N>) stay visible to every query (StreamingLLM)
  /// instead of leaving the window like any other token (Gemma, Mistral).
  bool keep_sinks = false;
};

/// Run-time knobs of the CPU prefill paths (quantized and the dense baselines).
struct PrefillOptions {
  /// Threads, as DecodeOptions::num_threads.
  int num_threads = 0;
  /// KV tokens per work item when a query block's range is split across threads; 0 chooses
  /// automatically (a split only when there are fewer than 4 items per thread).
  int split_tokens = 0;
  /// Rows (query tokens x GQA heads of one KV head) per work item; 0 chooses automatically.
  int query_rows = 0;
  /// Sliding window: query i (position p_i) attends to positions p_i - window + 1 .. p_i (Hugging
  /// Face's convention); 0 attends causally to every token.
  int window = 0;
  /// As DecodeOptions::keep_sinks.
  bool keep_sinks = false;
};

}  // namespace cpu
}  // namespace skv
