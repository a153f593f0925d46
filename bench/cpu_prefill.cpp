// skv_bench_cpu, prefill: attention for a chunk of query tokens over a cached prefix (chunked prefill,
// prefix reuse, speculative verification), quantized caches against, in the same binary:
//   fp16           the dense fp16 cache through the same driver, tiles and kernels;
//   <cfg>-dequant  what an engine does without a quantized prefill kernel: dequantize the whole
//                  cache to fp32 (vectorized unpack, every thread), then dense fp32 prefill.
//
// Shapes: head_dim 128, 8 KV heads, 32 query heads (GQA 4); chunks of 16, 128, 512 queries after
// prefixes of 4096 and 32768 tokens (the cache holds prefix + chunk; query i sees prefix + i + 1
// tokens); chunk 1 is the decode path, for the speculative-verification ratio. Names:
// prefill/<cfg>/prefix:<p>/chunk:<c>/threads:<t>. Counters: TFLOP_per_s (effective: 4 * head_dim
// flops per query head and visible token, for QK^T and PV) and tokens_per_s (query tokens per second).
// main() in cpu_decode.cpp calls register_prefill_benchmarks().
#include <skv/attention/baseline.hpp>
#include <skv/attention/prefill.hpp>
#include <skv/skv.hpp>

#include <benchmark/benchmark.h>

#include "common.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(SKV_HAS_OPENMP)
#include <omp.h>
#endif

namespace {

constexpr int kHeadDim = 128;
constexpr int kKvHeads = 8;
constexpr int kQHeads = 32;
constexpr int kTemplateTokens = 4096;
constexpr float kScale = 0.0883883f;

using skv_bench::all_cores;
using skv_bench::random_floats;

const std::vector<float>& template_keys() {
  static const auto k = random_floats(static_cast<std::size_t>(kTemplateTokens) * kKvHeads * kHeadDim, 11);
  return k;
}
const std::vector<float>& template_values() {
  static const auto v = random_floats(static_cast<std::size_t>(kTemplateTokens) * kKvHeads * kHeadDim, 12);
  return v;
}
const std::vector<float>& queries() {
  static const auto q = random_floats(static_cast<std::size_t>(512) * kQHeads * kHeadDim, 13);
  return q;
}

struct Workload {
  virtual ~Workload() = default;
  virtual void run(int chunk, const float* q, float* out, const skv::cpu::PrefillOptions& opt) = 0;
};

/// A quantized cache of `length` tokens: a quantized template's pages tiled over the pool.
template <class Cache>
struct QuantCache {
  using L = typename Cache::Layout;
  std::unique_ptr<std::uint8_t[]> pool;
  std::vector<std::int32_t> table;
  std::vector<float> ring;
  skv::SequenceView<L> view;

  explicit QuantCache(int length) {
    Cache tmpl(kKvHeads, kTemplateTokens);
    tmpl.append(template_keys().data(), template_values().data(), kTemplateTokens);
    const auto tv = tmpl.view();
    const std::size_t page_bytes = L::page_bytes(kKvHeads);
    const int pages = (length + L::kPageSize - 1) / L::kPageSize;
    pool.reset(new std::uint8_t[pages * page_bytes + 64]);
    const int tmpl_pages = kTemplateTokens / L::kPageSize;
    for (int p = 0; p < pages; ++p)
      std::memcpy(pool.get() + p * page_bytes, tv.pages + (p % tmpl_pages) * page_bytes, page_bytes);
    table.resize(pages);
    for (int p = 0; p < pages; ++p) table[p] = p;
    // the ring: the template's first tokens (finite data in every slot a short chunk may read)
    ring.assign(L::residual_floats(kKvHeads), 0.0f);
    for (std::size_t i = 0; i < ring.size(); ++i) ring[i] = template_keys()[i % template_keys().size()];
    view.pages = pool.get();
    view.block_table = table.data();
    view.residual = ring.data();
    view.num_pages = pages;
    view.max_pages = pages;
    view.num_kv_heads = kKvHeads;
    view.length = length;
  }
};

template <class Cache>
struct QuantWorkload : Workload {
  QuantCache<Cache> cache;
  explicit QuantWorkload(int length) : cache(length) {}
  void run(int chunk, const float* q, float* out, const skv::cpu::PrefillOptions& opt) override {
    skv::cpu::prefill_attention(cache.view, q, chunk, kQHeads, out, kScale, opt);
  }
};

template <class T>
struct DenseWorkload : Workload {
  std::vector<T> keys, values;
  skv::cpu::DenseView<T, kHeadDim> view;

  explicit DenseWorkload(int length) {
    const auto& k = template_keys();
    const auto& v = template_values();
    const std::size_t n = static_cast<std::size_t>(kKvHeads) * length * kHeadDim;
    keys.resize(n);
    values.resize(n);
    for (int h = 0; h < kKvHeads; ++h)
      for (int t = 0; t < length; ++t) {
        const std::size_t src = (static_cast<std::size_t>(t % kTemplateTokens) * kKvHeads + h) * kHeadDim;
        const std::size_t dst = (static_cast<std::size_t>(h) * length + t) * kHeadDim;
        for (int c = 0; c < kHeadDim; ++c) {
          keys[dst + c] = skv::from_float<T>(k[src + c]);
          values[dst + c] = skv::from_float<T>(v[src + c]);
        }
      }
    view = skv::cpu::DenseView<T, kHeadDim>{keys.data(), values.data(), kKvHeads, length, length};
  }
  void run(int chunk, const float* q, float* out, const skv::cpu::PrefillOptions& opt) override {
    skv::cpu::prefill_attention(view, q, chunk, kQHeads, out, kScale, opt);
  }
};

/// The naive route: dequantize every cached token to fp32 (per call, as an engine without a
/// quantized prefill kernel must), then dense fp32 prefill.
template <class Cache>
struct DequantWorkload : Workload {
  using L = typename Cache::Layout;
  using F = skv::cpu::detail::Tiles<L>;
  using KQ = typename L::KeyQuantizer;
  using VQ = typename L::ValueQuantizer;
  static_assert(KQ::kAxis == skv::Axis::Channel && VQ::kAxis == skv::Axis::Token, "the default axes");
  QuantCache<Cache> cache;
  std::vector<float> keys, values;

  explicit DequantWorkload(int length)
      : cache(length),
        keys(static_cast<std::size_t>(kKvHeads) * length * kHeadDim),
        values(static_cast<std::size_t>(kKvHeads) * length * kHeadDim) {}

  void dequantize(int threads) {
    const auto& v = cache.view;
    const int qlen = v.quantized_length();
#if defined(SKV_HAS_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
      std::vector<float> s(kHeadDim * 64), z(kHeadDim * 64);
#if defined(SKV_HAS_OPENMP)
#pragma omp for schedule(static)
#endif
      for (int task = 0; task < kKvHeads * ((v.length + 63) / 64); ++task) {
        const int h = task % kKvHeads, t0 = task / kKvHeads * 64;
        float* kd = keys.data() + static_cast<std::size_t>(h) * v.length * kHeadDim;
        float* vd = values.data() + static_cast<std::size_t>(h) * v.length * kHeadDim;
        for (int t = t0; t < std::min(v.length, t0 + 64);) {
          if (t >= qlen) {  // the ring (no sinks in these configurations)
            std::memcpy(kd + static_cast<std::size_t>(t) * kHeadDim, v.residual_key(t, h), sizeof(float) * kHeadDim);
            std::memcpy(vd + static_cast<std::size_t>(t) * kHeadDim, v.residual_value(t, h), sizeof(float) * kHeadDim);
            ++t;
            continue;
          }
          const int slot = t % L::kPageSize;
          const int n = std::min({KQ::kGroupSize - slot % KQ::kGroupSize, qlen - t, t0 + 64 - t});
          const auto kb = v.keys(t, h);
          float* kr = kd + static_cast<std::size_t>(t) * kHeadDim;
          F::template unpack_tile<KQ>(kb, slot, n, kr);
          F::template load_meta<KQ>(kb.scales(), kb.zeros(), (slot / KQ::kGroupSize) * kHeadDim, kHeadDim, s.data(),
                                    z.data());
          for (int i = 0; i < n; ++i)
            for (int c = 0; c < kHeadDim; ++c) kr[i * kHeadDim + c] = (kr[i * kHeadDim + c] - z[c]) * s[c];
          float* vr = vd + static_cast<std::size_t>(t) * kHeadDim;
          F::template unpack_tile<VQ>(v.values(t, h), slot, n, vr);
          F::template dequantize_token_rows<VQ>(v.values(t, h), slot, n, vr, s.data(), z.data());
          t += n;
        }
      }
    }
  }

  void run(int chunk, const float* q, float* out, const skv::cpu::PrefillOptions& opt) override {
    dequantize(opt.num_threads > 0 ? opt.num_threads : all_cores());
    const skv::cpu::DenseView<float, kHeadDim> dense{keys.data(), values.data(), kKvHeads, cache.view.length,
                                                     cache.view.length};
    skv::cpu::prefill_attention(dense, q, chunk, kQHeads, out, kScale, opt);
  }
};

std::unique_ptr<Workload> g_prefill_workload;
std::string g_prefill_key;

template <class W>
Workload& workload(const std::string& key, int length) {
  if (g_prefill_key != key) {
    g_prefill_workload.reset();
    g_prefill_workload.reset(new W(length));
    g_prefill_key = key;
  }
  return *g_prefill_workload;
}

template <class W>
void bench_prefill(benchmark::State& state, const std::string& cfg, int prefix, int chunk, int threads) {
  Workload& w = workload<W>(cfg + "/" + std::to_string(prefix + chunk), prefix + chunk);
  std::vector<float> out(static_cast<std::size_t>(chunk) * kQHeads * kHeadDim);
  skv::cpu::PrefillOptions opt;
  opt.num_threads = threads;
  for (auto _ : state) {
    w.run(chunk, queries().data(), out.data(), opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // visible tokens summed over the chunk's queries: sum_i (prefix + i + 1)
  const double visible = static_cast<double>(chunk) * prefix + 0.5 * chunk * (chunk + 1.0);
  const double flops = 4.0 * kHeadDim * kQHeads * visible;
  state.counters["TFLOP_per_s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens_per_s"] = benchmark::Counter(chunk, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["prefix"] = prefix;
  state.counters["chunk"] = chunk;
  state.counters["threads"] = threads;
  // free the large workloads once their last shape is done (the decode benchmarks run next)
  if (prefix == 32768 && chunk == 512) {
    g_prefill_workload.reset();
    g_prefill_key.clear();
  }
}

template <class W>
void register_prefill(const std::string& cfg, std::initializer_list<int> chunks) {
  for (int prefix : {4096, 32768}) {
    for (int chunk : chunks) {
      const int threads = all_cores();
      const std::string name = "prefill/" + cfg + "/prefix:" + std::to_string(prefix) + "/chunk:" +
                               std::to_string(chunk) + "/threads:" + std::to_string(threads);
      benchmark::RegisterBenchmark(name.c_str(),
                                   [=](benchmark::State& s) { bench_prefill<W>(s, cfg, prefix, chunk, threads); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Apply(skv_bench::default_min_time<300>);
    }
  }
}

}  // namespace

void register_prefill_benchmarks() {
  register_prefill<DenseWorkload<skv::fp16>>("fp16", {1, 16, 128, 512});
  register_prefill<DequantWorkload<skv::KVCache<4, 2>>>("k4v2-dequant", {16, 128, 512});
  register_prefill<QuantWorkload<skv::KVCache<4, 2>>>("k4v2", {1, 16, 128, 512});
  register_prefill<QuantWorkload<skv::KVCache<2, 2>>>("k2v2", {16, 128, 512});
  register_prefill<QuantWorkload<skv::KVCache<4, 4>>>("k4v4", {16, 128, 512});
  register_prefill<QuantWorkload<skv::KVCache<8, 4>>>("k8v4", {16, 128, 512});
}

