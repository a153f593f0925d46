// skv_bench_cpu: CPU decode attention over quantized caches against fp16 / fp32 baselines in the same
// binary, the reference path, and block-quantizing append against memcpy of the same input bytes.
//
// Shapes: head_dim 128, 8 KV heads, 32 query heads (GQA 4); contexts 4096..131072; batch 1 and 8;
// 1 thread and every core. Names carry the configuration: decode/<cfg>/ctx:<n>/batch:<b>/threads:<t>.
// Counters: tokens_per_s (cached tokens attended per second, all sequences) and GB_per_s (bytes of
// the cache read per second: codes + scales + zeros, or fp16 / fp32 rows). decode/k4v2-{fp16,bf16}-io
// rows take fp16 / bf16 queries and outputs. Append rows: one completed block (32 tokens, float,
// fp16 or bf16 input; plain, ClipValues, or ClipKeys + ClipValues) against memcpy of the same input
// bytes, and a 32k-token append (a prefill) on 1 thread and every core against memcpy of its input.
// window/ rows: decode with a sliding window of 4096 tokens at the end of a 65536-token stream.
#include <skv/attention/baseline.hpp>
#include <skv/attention/decode.hpp>
#include <skv/cache/quantize_block_fast.hpp>
#include <skv/dispatch.hpp>
#include <skv/skv.hpp>

#include <benchmark/benchmark.h>

#include "common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(SKV_HAS_OPENMP)
#include <omp.h>
#endif

namespace {

constexpr int kHeadDim = 128;
constexpr int kKvHeads = 8;
constexpr int kQHeads = 32;
constexpr int kTemplateTokens = 4096;

using skv_bench::all_cores;
using skv_bench::random_floats;

const std::vector<float>& template_keys() {
  static const auto k = random_floats(static_cast<std::size_t>(kTemplateTokens) * kKvHeads * kHeadDim, 1);
  return k;
}
const std::vector<float>& template_values() {
  static const auto v = random_floats(static_cast<std::size_t>(kTemplateTokens) * kKvHeads * kHeadDim, 2);
  return v;
}
const std::vector<float>& queries(int batch) {
  static const auto q = random_floats(static_cast<std::size_t>(8) * kQHeads * kHeadDim, 3);
  (void)batch;
  return q;
}

/// Rotary frequencies 10000^(-2i / d), for caches that store keys before the rotary embedding.
const std::vector<float>& rope_frequencies() {
  static const std::vector<float> f = [] {
    std::vector<float> x(kHeadDim / 2);
    for (int i = 0; i < kHeadDim / 2; ++i) x[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / kHeadDim));
    return x;
  }();
  return f;
}

/// A cache of `capacity` tokens, given rope_frequencies() when it stores keys before RoPE.
template <class Cache>
Cache make_cache(int capacity) {
  Cache cache(kKvHeads, capacity);
  if constexpr (Cache::Layout::kPreRopeKeys) cache.set_rope_frequencies(rope_frequencies().data());
  return cache;
}

/// The data of one benchmark shape; kept between benchmarks of the same shape (thread counts).
struct Workload {
  virtual ~Workload() = default;
  virtual void run(const float* q, float* out, const skv::cpu::DecodeOptions& opt) = 0;
  virtual double bytes_per_token() const = 0;
};

template <class Cache>
struct QuantWorkload : Workload {
  using L = typename Cache::Layout;
  std::unique_ptr<std::uint8_t[]> pool;
  std::vector<std::int32_t> table;
  std::vector<std::vector<typename L::FullPrecision>> rings;  // float, fp16 or 8-bit rows
  std::vector<skv::SequenceView<L>> views;

  QuantWorkload(int ctx, int batch) {
    // quantize a template once, then tile its pages over every sequence's pages
    Cache tmpl = make_cache<Cache>(kTemplateTokens);
    tmpl.append(template_keys().data(), template_values().data(), kTemplateTokens);
    const auto tv = tmpl.view();
    const std::size_t page_bytes = L::page_bytes(kKvHeads);
    const int pages_per_seq = (ctx + L::kPageSize - 1) / L::kPageSize;
    const std::size_t pages = static_cast<std::size_t>(pages_per_seq) * batch;
    pool.reset(new std::uint8_t[pages * page_bytes]);
    const int tmpl_pages = kTemplateTokens / L::kPageSize;
    for (std::size_t p = 0; p < pages; ++p)
      std::memcpy(pool.get() + p * page_bytes, tv.pages + (p % tmpl_pages) * page_bytes, page_bytes);
    table.resize(pages);
    for (std::size_t p = 0; p < pages; ++p) table[p] = static_cast<std::int32_t>(p);
    using Full = typename L::FullPrecision;
    rings.assign(batch, std::vector<Full>(tv.residual, tv.residual + L::residual_elements(kKvHeads)));
    for (int b = 0; b < batch; ++b) {
      skv::SequenceView<L> v;
      v.pages = pool.get();
      v.block_table = table.data() + static_cast<std::size_t>(b) * pages_per_seq;
      v.residual = rings[b].data();
      v.num_pages = static_cast<int>(pages);
      v.max_pages = pages_per_seq;
      v.num_kv_heads = kKvHeads;
      v.length = ctx;
      v.rope_freq = tv.rope_freq == nullptr ? nullptr : rope_frequencies().data();
      views.push_back(v);
    }
  }
  void run(const float* q, float* out, const skv::cpu::DecodeOptions& opt) override {
    skv::cpu::decode_attention_batch(views.data(), static_cast<int>(views.size()), q, kQHeads, out, 0.0883883f, opt);
  }
  double bytes_per_token() const override { return L::bytes_per_token(); }
};

template <class T>
struct DenseWorkload : Workload {
  std::vector<std::vector<T>> keys, values;
  std::vector<skv::cpu::DenseView<T, kHeadDim>> views;

  DenseWorkload(int ctx, int batch) {
    const auto& k = template_keys();
    const auto& v = template_values();
    keys.resize(batch);
    values.resize(batch);
    for (int b = 0; b < batch; ++b) {
      const std::size_t n = static_cast<std::size_t>(kKvHeads) * ctx * kHeadDim;
      keys[b].resize(n);
      values[b].resize(n);
      for (int h = 0; h < kKvHeads; ++h)
        for (int t = 0; t < ctx; ++t) {
          const std::size_t src = (static_cast<std::size_t>(t % kTemplateTokens) * kKvHeads + h) * kHeadDim;
          const std::size_t dst = (static_cast<std::size_t>(h) * ctx + t) * kHeadDim;
          for (int c = 0; c < kHeadDim; ++c) {
            keys[b][dst + c] = skv::from_float<T>(k[src + c]);
            values[b][dst + c] = skv::from_float<T>(v[src + c]);
          }
        }
      views.push_back(skv::cpu::DenseView<T, kHeadDim>{keys[b].data(), values[b].data(), kKvHeads, ctx, ctx});
    }
  }
  void run(const float* q, float* out, const skv::cpu::DecodeOptions& opt) override {
    skv::cpu::decode_attention_batch(views.data(), static_cast<int>(views.size()), q, kQHeads, out, 0.0883883f, opt);
  }
  double bytes_per_token() const override { return 2.0 * kHeadDim * sizeof(T); }
};

/// A quantized workload decoded with T (fp16 / bf16) queries and outputs.
template <class Cache, class T>
struct TypedQuantWorkload : QuantWorkload<Cache> {
  std::vector<T> q16, out16;
  TypedQuantWorkload(int ctx, int batch) : QuantWorkload<Cache>(ctx, batch) {}
  void run(const float* q, float* out, const skv::cpu::DecodeOptions& opt) override {
    const std::size_t n = this->views.size() * kQHeads * kHeadDim;
    if (q16.size() != n) {  // once: the query as T (the conversion is not what is measured)
      q16.resize(n);
      out16.resize(n);
      for (std::size_t i = 0; i < n; ++i) q16[i] = skv::from_float<T>(q[i]);
    }
    skv::cpu::decode_attention_batch(this->views.data(), static_cast<int>(this->views.size()), q16.data(), kQHeads,
                                     out16.data(), 0.0883883f, opt);
    out[0] = skv::to_float(out16[0]);
  }
};

/// One workload alive at a time (the largest take gigabytes).
std::unique_ptr<Workload> g_workload;
std::string g_workload_key;

template <class W>
Workload& workload(const std::string& key, int ctx, int batch) {
  if (g_workload_key != key) {
    g_workload.reset();
    g_workload.reset(new W(ctx, batch));
    g_workload_key = key;
  }
  return *g_workload;
}

template <class W>
void bench_decode(benchmark::State& state, const std::string& cfg, int ctx, int batch, int threads) {
  Workload& w = workload<W>(cfg + "/" + std::to_string(ctx) + "/" + std::to_string(batch), ctx, batch);
  std::vector<float> out(static_cast<std::size_t>(batch) * kQHeads * kHeadDim);
  skv::cpu::DecodeOptions opt;
  opt.num_threads = threads;
  for (auto _ : state) {
    w.run(queries(batch).data(), out.data(), opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double tokens = static_cast<double>(ctx) * batch;
  state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB_per_s"] = benchmark::Counter(tokens * kKvHeads * w.bytes_per_token() / 1e9,
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ctx"] = ctx;
  state.counters["batch"] = batch;
  state.counters["threads"] = threads;
}

template <class Cache>
void bench_reference(benchmark::State& state, int ctx) {
  QuantWorkload<Cache> w(ctx, 1);
  std::vector<float> out(static_cast<std::size_t>(kQHeads) * kHeadDim);
  for (auto _ : state) {
    skv::cpu::decode_attention_reference(w.views[0], queries(1).data(), kQHeads, out.data(), 0.0883883f);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(ctx, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ctx"] = ctx;
}

// ---- a sliding window: decode over the last 4096 tokens of a 65536-token stream ---------------------

/// A window cache of 4096 tokens (skv::Retention) fed a stream of `stream` tokens, decoded with its
/// window: the same work as decode over a 4096-token cache (decode/k4v2/ctx:4096), with memory
/// bounded by the window. Counters: the bytes the cache holds and those an unbounded cache of the
/// stream would hold.
void bench_window(benchmark::State& state, int stream, int threads) {
  constexpr int kWindow = 4096;
  using Cache = skv::KVCache<4, 2>;
  static std::unique_ptr<Cache> cache;
  if (!cache || cache->size() != stream) {
    cache.reset(new Cache(kKvHeads, std::numeric_limits<int>::max(), skv::Retention{kWindow}));
    for (int t = 0; t < stream; t += kTemplateTokens)
      cache->append(template_keys().data(), template_values().data(), kTemplateTokens);
  }
  std::vector<float> out(static_cast<std::size_t>(kQHeads) * kHeadDim);
  skv::cpu::DecodeOptions opt;
  opt.num_threads = threads;
  for (auto _ : state) {
    skv::cpu::decode_attention(*cache, queries(1).data(), kQHeads, out.data(), 0.0883883f, opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens_per_s"] = benchmark::Counter(kWindow, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["held_MiB"] = static_cast<double>(cache->memory_bytes()) / (1 << 20);
  state.counters["unbounded_MiB"] = Cache::bytes_per_token() * kKvHeads * stream / (1 << 20);
  state.counters["threads"] = threads;
}

// ---- append: one completed block (32 tokens x 8 heads) per iteration --------------------------------

constexpr int kBlock = 32;
constexpr std::size_t kBlockBytes = 2u * kBlock * kKvHeads * kHeadDim * sizeof(float);  // keys + values

/// The template keys / values as T (float, fp16 or bf16).
template <class T>
const std::vector<T>& template_as(bool keys) {
  static const auto convert = [](const std::vector<float>& x) {
    std::vector<T> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = skv::from_float<T>(x[i]);
    return y;
  };
  static const std::vector<T> k = convert(template_keys()), v = convert(template_values());
  return keys ? k : v;
}

template <class Cache, class T = float>
void bench_append(benchmark::State& state) {
  constexpr int kCapacity = 1 << 14;
  Cache cache = make_cache<Cache>(kCapacity);
  const T* k = template_as<T>(true).data();
  const T* v = template_as<T>(false).data();
  int offset = 0;
  for (auto _ : state) {
    if (cache.size() + kBlock > kCapacity) {
      state.PauseTiming();
      cache.clear();
      state.ResumeTiming();
    }
    const std::size_t at = static_cast<std::size_t>(offset) * kKvHeads * kHeadDim;
    cache.append(k + at, v + at, kBlock);
    offset = (offset + kBlock) % kTemplateTokens;
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBlockBytes));
}

/// The block quantizer alone (fast or the scalar quantize_block), reading a filled residual ring.
template <class Cache, bool kFast>
void bench_quantize_block(benchmark::State& state) {
  using L = typename Cache::Layout;
  Cache cache(kKvHeads, 64);
  cache.append(template_keys().data(), template_values().data(), kBlock - 1);  // block still in the ring
  auto view = cache.view();
  for (auto _ : state) {
    if (kFast) {
      skv::quantize_block_fast<L>(view, 0);
    } else {
      skv::quantize_block<L>(view, 0);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBlockBytes));
}

// ---- a long append (a prefill of 32k tokens) on 1 thread and every core, against memcpy of its input

constexpr int kLongTokens = 32768;

const std::vector<float>& long_input(bool keys) {
  static const auto tile = [](const std::vector<float>& x) {
    std::vector<float> y(static_cast<std::size_t>(kLongTokens) * kKvHeads * kHeadDim);
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = x[i % x.size()];
    return y;
  };
  static const std::vector<float> k = tile(template_keys()), v = tile(template_values());
  return keys ? k : v;
}

template <class Cache>
void bench_long_append(benchmark::State& state, int threads) {
  Cache cache(kKvHeads, kLongTokens);
  const float* k = long_input(true).data();
  const float* v = long_input(false).data();
  skv::AppendOptions opt;
  opt.num_threads = threads;
  for (auto _ : state) {
    state.PauseTiming();
    cache.clear();
    state.ResumeTiming();
    cache.append(k, v, kLongTokens, opt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * 2 * long_input(true).size() * sizeof(float)));
  state.counters["threads"] = threads;
}

void bench_long_memcpy(benchmark::State& state) {
  std::vector<float> dk(long_input(true).size()), dv(long_input(false).size());
  for (auto _ : state) {
    std::memcpy(dk.data(), long_input(true).data(), dk.size() * sizeof(float));
    std::memcpy(dv.data(), long_input(false).data(), dv.size() * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * (dk.size() + dv.size()) * sizeof(float)));
}

void bench_memcpy(benchmark::State& state) {
  // the input of one block append: keys and values of 32 tokens, from distinct template rows
  std::vector<float> dst(kBlockBytes / sizeof(float));
  const float* k = template_keys().data();
  const float* v = template_values().data();
  int offset = 0;
  const std::size_t half = kBlockBytes / 2;
  for (auto _ : state) {
    const std::size_t at = static_cast<std::size_t>(offset) * kKvHeads * kHeadDim;
    std::memcpy(dst.data(), k + at, half);
    std::memcpy(dst.data() + half / sizeof(float), v + at, half);
    benchmark::ClobberMemory();
    offset = (offset + kBlock) % kTemplateTokens;
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kBlockBytes));
}

template <class W>
void register_decode(const std::string& cfg) {
  for (int ctx : {4096, 8192, 32768, 131072}) {
    for (int batch : {1, 8}) {
      for (int threads : skv_bench::thread_rows()) {
        const std::string name = "decode/" + cfg + "/ctx:" + std::to_string(ctx) + "/batch:" + std::to_string(batch) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { bench_decode<W>(s, cfg, ctx, batch, threads); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->Apply(skv_bench::default_min_time<200>);
      }
    }
  }
}

}  // namespace

void register_prefill_benchmarks();  // cpu_prefill.cpp

int main(int argc, char** argv) {
  skv_bench::read_command_line(argc, argv);
  register_prefill_benchmarks();
  register_decode<DenseWorkload<skv::fp16>>("fp16");
  register_decode<DenseWorkload<float>>("fp32");
  register_decode<QuantWorkload<skv::KVCache<2, 2>>>("k2v2");
  register_decode<QuantWorkload<skv::KVCache<4, 2>>>("k4v2");
  register_decode<QuantWorkload<skv::KVCache<4, 4>>>("k4v4");
  register_decode<QuantWorkload<skv::KVCache<8, 4>>>("k8v4");

  // fp16 / bf16 queries and outputs (the cache is the same k4v2 one)
  for (int ctx : {4096, 32768}) {
    for (const char* type : {"fp16", "bf16"}) {
      const std::string cfg = std::string("k4v2-") + type + "-io";
      const std::string name = "decode/" + cfg + "/ctx:" + std::to_string(ctx) + "/batch:1/threads:1";
      benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
        if (cfg == "k4v2-fp16-io") {
          bench_decode<TypedQuantWorkload<skv::KVCache<4, 2>, skv::fp16>>(s, cfg, ctx, 1, 1);
        } else {
          bench_decode<TypedQuantWorkload<skv::KVCache<4, 2>, skv::bf16>>(s, cfg, ctx, 1, 1);
        }
      })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Apply(skv_bench::default_min_time<200>);
    }
  }

  // fast vs reference on the same shape (the reference is slow: a short context)
  for (int ctx : {1024}) {
    benchmark::RegisterBenchmark(("reference/k4v2/ctx:" + std::to_string(ctx)).c_str(),
                                 [=](benchmark::State& s) { bench_reference<skv::KVCache<4, 2>>(s, ctx); })
        ->Unit(benchmark::kMillisecond)
        ->Apply(skv_bench::default_min_time<500>);
    benchmark::RegisterBenchmark(("decode/k4v2/ctx:" + std::to_string(ctx) + "/batch:1/threads:1").c_str(),
                                 [=](benchmark::State& s) {
                                   bench_decode<QuantWorkload<skv::KVCache<4, 2>>>(s, "k4v2", ctx, 1, 1);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Apply(skv_bench::default_min_time<200>);
  }

  // a sliding window of 4096 tokens after a 64k-token stream, next to decode/k4v2/ctx:4096 (issue
  // target: within 10% of it)
  for (int threads : skv_bench::thread_rows())
    benchmark::RegisterBenchmark(("window/k4v2/w:4096/stream:65536/threads:" + std::to_string(threads)).c_str(),
                                 [=](benchmark::State& s) { bench_window(s, 65536, threads); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Apply(skv_bench::default_min_time<200>);

  // the cost of the accuracy options at 32k context: rotated queries, fp32 sinks (issue target:
  // rotation within 5% of plain decode time), keys before RoPE (each key tile dequantized and turned
  // token by token); one thread, plain k4v2 registered next to them
  for (int batch : {1, 8}) {
    const std::string tail = "/ctx:32768/batch:" + std::to_string(batch) + "/threads:1";
    auto reg = [&](const std::string& cfg, auto tag) {
      using W = typename decltype(tag)::type;
      benchmark::RegisterBenchmark(("options/" + cfg + tail).c_str(),
                                   [=](benchmark::State& s) { bench_decode<W>(s, "options/" + cfg, 32768, batch, 1); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Apply(skv_bench::default_min_time<500>);
    };
    reg("k4v2", skv::TypeTag<QuantWorkload<skv::KVCache<4, 2>>>{});
    reg("k4v2+rot", skv::TypeTag<QuantWorkload<skv::KVCache<4, 2, 128, skv::RotateKeys>>>{});
    reg("k4v2+rot+sink4", skv::TypeTag<QuantWorkload<skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>>>{});
    reg("k4v2+prerope", skv::TypeTag<QuantWorkload<skv::KVCache<4, 2, 128, skv::PreRopeKeys>>>{});
  }

  // the ring's element type with a 128-token residual window at 4k context, where its 160 rows per
  // head are 4% of the tokens: float, fp16 (Fp16Ring) or 8-bit rows (Int8Ring), decoded and appended
  using Q4 = skv::Quantizer<4, 32, skv::Axis::Channel>;
  using Q2 = skv::Quantizer<2, 64, skv::Axis::Token>;
  using Ring32 = skv::BasicKVCache<Q4, Q2, 128, 64, 128, skv::Options<skv::Sinks<4>>>;
  using Ring16 = skv::BasicKVCache<Q4, Q2, 128, 64, 128, skv::Options<skv::Sinks<4>, skv::Fp16Ring>>;
  using Ring8 = skv::BasicKVCache<Q4, Q2, 128, 64, 128, skv::Options<skv::Sinks<4>, skv::Int8Ring>>;
  auto reg_ring = [&](const std::string& cfg, auto tag) {
    using C = typename decltype(tag)::type;
    benchmark::RegisterBenchmark(("ring/" + cfg + "/ctx:4096/batch:1/threads:1").c_str(),
                                 [=](benchmark::State& s) {
                                   bench_decode<QuantWorkload<C>>(s, "ring/" + cfg, 4096, 1, 1);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Apply(skv_bench::default_min_time<500>);
    benchmark::RegisterBenchmark(("append/" + cfg + "/block").c_str(), bench_append<C>)
        ->Apply(skv_bench::default_min_time<200>);
  };
  reg_ring("k4v2+r128+sink4", skv::TypeTag<Ring32>{});
  reg_ring("k4v2+r128+sink4+h16", skv::TypeTag<Ring16>{});
  reg_ring("k4v2+r128+sink4+q8", skv::TypeTag<Ring8>{});

  benchmark::RegisterBenchmark("memcpy/block_input", bench_memcpy)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2+rot/block", bench_append<skv::KVCache<4, 2, 128, skv::RotateKeys>>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2+prerope/block", bench_append<skv::KVCache<4, 2, 128, skv::PreRopeKeys>>)
      ->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2+clip/block",
                               bench_append<skv::KVCache<4, 2, 128, skv::ClipKeys, skv::ClipValues>>)
      ->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2+clipvalues/block",
                               bench_append<skv::KVCache<4, 2, 128, skv::ClipValues>>)
      ->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2/block/fp16", bench_append<skv::KVCache<4, 2>, skv::fp16>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2/block/bf16", bench_append<skv::KVCache<4, 2>, skv::bf16>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k2v2/block", bench_append<skv::KVCache<2, 2>>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v2/block", bench_append<skv::KVCache<4, 2>>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k4v4/block", bench_append<skv::KVCache<4, 4>>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("append/k8v4/block", bench_append<skv::KVCache<8, 4>>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("memcpy/prefill:32768", bench_long_memcpy)->Unit(benchmark::kMillisecond)->Apply(skv_bench::default_min_time<500>);
  for (int threads : skv_bench::thread_rows()) {
    const std::string tail = "/prefill:32768/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(("append/k4v2" + tail).c_str(),
                                 [=](benchmark::State& s) { bench_long_append<skv::KVCache<4, 2>>(s, threads); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Apply(skv_bench::default_min_time<500>);
    benchmark::RegisterBenchmark(
        ("append/k4v2+clip" + tail).c_str(),
        [=](benchmark::State& s) {
          bench_long_append<skv::KVCache<4, 2, 128, skv::ClipKeys, skv::ClipValues>>(s, threads);
        })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Apply(skv_bench::default_min_time<500>);
  }
  benchmark::RegisterBenchmark("quantize_block/k4v2/fast", bench_quantize_block<skv::KVCache<4, 2>, true>)->Apply(skv_bench::default_min_time<200>);
  benchmark::RegisterBenchmark("quantize_block/k4v2/scalar", bench_quantize_block<skv::KVCache<4, 2>, false>)->Apply(skv_bench::default_min_time<200>);

  benchmark::AddCustomContext("simd", skv::simd::simd_name());
  benchmark::AddCustomContext("threads_all", std::to_string(all_cores()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_workload.reset();
  return 0;
}
