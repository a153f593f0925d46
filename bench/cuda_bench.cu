// skv_bench_cuda: decode attention and quantize-append on the GPU, with an fp16 decode baseline and
// a device-to-device copy measured in the same binary, so that every result is also a ratio.
//
// Timing: CUDA events around each launch, L2 flushed (a 2 x L2 memset) before every iteration,
// Google Benchmark in manual-time mode. Counters:
//   GBps       effective bandwidth: bytes the kernel really reads (codes, scales, zeros, residual
//              floats; fp16 K/V for the baseline) per second
//   pct_copy   GBps as a percentage of the measured copy bandwidth (bytes read + written / s)
//   speedup    fp16 baseline time / this time, same batch and context (decode only)
// Without a usable GPU the binary prints a message and exits 0.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <skv/cache/kv_cache.hpp>
#include <skv/gpu/append.cuh>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/decode.cuh>

namespace {

using skv::gpu::check_cuda;

constexpr int kHeadDim = 128;
constexpr int kKvHeads = 8;
constexpr int kGroup = 4;
constexpr int kQHeads = kKvHeads * kGroup;

double g_copy_gbps = 0.0;                          // bytes read + written per second / 1e9
std::map<std::pair<int, int>, double> g_fp16_time;  // (batch, context) -> seconds

struct Flush {
  void* buf = nullptr;
  std::size_t bytes = 0;
  Flush() {
    int dev = 0, l2 = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "l2 size");
    bytes = static_cast<std::size_t>(l2) * 2 + (1u << 20);
    check_cuda(cudaMalloc(&buf, bytes), "cudaMalloc flush");
  }
  ~Flush() { (void)cudaFree(buf); }
  void operator()(int pass) { check_cuda(cudaMemsetAsync(buf, pass & 0xff, bytes), "flush"); }
};

Flush& flush() {
  static Flush f;
  return f;
}

struct Events {
  cudaEvent_t a{}, b{};
  Events() {
    check_cuda(cudaEventCreate(&a), "event");
    check_cuda(cudaEventCreate(&b), "event");
  }
  ~Events() {
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
  }
  double seconds() {
    check_cuda(cudaEventSynchronize(b), "event sync");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, a, b), "elapsed");
    return ms * 1e-3;
  }
};

// Random page contents with valid metadata: codes are random bytes; every scale is a small positive
// fp16 and every zero point an integer in the code range. Data-independent kernels, but no zeros.
template <class L>
__global__ void fill_pages_kernel(std::uint8_t* pages, std::size_t bytes, int heads) {
  using KL = typename L::Keys;
  using VL = typename L::Values;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < bytes / 2; i += stride) {
    const std::size_t off = (i * 2) % L::kHeadBytes;
    std::uint32_t h = static_cast<std::uint32_t>(i * 2654435761u) ^ static_cast<std::uint32_t>(i >> 17);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    std::uint16_t v = static_cast<std::uint16_t>(h);
    auto in = [&](std::size_t base, std::size_t a, std::size_t b) { return off >= base + a && off < base + b; };
    if (in(0, KL::kScaleOffset, KL::kZeroOffset) || in(KL::kBytes, VL::kScaleOffset, VL::kZeroOffset)) {
      v = skv::to_fp16(0.01f + static_cast<float>(h % 100) * 1e-3f).bits;
    } else if (in(0, KL::kZeroOffset, KL::kBytes) || in(KL::kBytes, VL::kZeroOffset, VL::kBytes)) {
      v = skv::to_fp16(static_cast<float>(h % 4)).bits;
    }
    reinterpret_cast<std::uint16_t*>(pages)[i] = v;
  }
  (void)heads;
}

__global__ void fill_fp16_kernel(skv::fp16* x, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    std::uint32_t h = static_cast<std::uint32_t>(i * 2654435761u);
    h ^= h >> 15;
    x[i] = skv::to_fp16(static_cast<float>(h % 2001) * 1e-3f - 1.0f);
  }
}

__global__ void fill_float_kernel(float* x, std::size_t n, float amp) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    std::uint32_t h = static_cast<std::uint32_t>(i * 2246822519u + 7u);
    h ^= h >> 13;
    x[i] = amp * (static_cast<float>(h % 2001) * 1e-3f - 1.0f);
  }
}

template <class T>
struct Dev {
  T* p = nullptr;
  explicit Dev(std::size_t n) { check_cuda(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(T)), "cudaMalloc"); }
  ~Dev() { (void)cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
};

void set_counters(benchmark::State& state, double bytes, double seconds_per_iter) {
  const double gbps = bytes / seconds_per_iter / 1e9;
  state.counters["GBps"] = gbps;
  state.counters["pct_copy"] = g_copy_gbps > 0 ? 100.0 * gbps / g_copy_gbps : 0.0;
  state.counters["us"] = seconds_per_iter * 1e6;
  state.counters["MB"] = bytes / 1e6;
}

// ---- device-to-device copy: the bandwidth ceiling -------------------------------------------------
void BM_copy(benchmark::State& state) {
  const std::size_t bytes = std::size_t{1} << 30;
  Dev<std::uint8_t> a(bytes), b(bytes);
  check_cuda(cudaMemset(a.p, 1, bytes), "memset");
  Events ev;
  double total = 0;
  int n = 0;
  for (auto _ : state) {
    flush()(n);
    check_cuda(cudaEventRecord(ev.a), "record");
    check_cuda(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice), "copy");
    check_cuda(cudaEventRecord(ev.b), "record");
    const double s = ev.seconds();
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  const double gbps = 2.0 * bytes / (total / n) / 1e9;
  g_copy_gbps = gbps;
  state.counters["GBps"] = gbps;
  state.counters["us"] = total / n * 1e6;
}

// ---- decode -----------------------------------------------------------------------------------------
template <int K, int V>
void BM_decode(benchmark::State& state) {
  using Cache = skv::KVCache<K, V, kHeadDim>;
  using L = typename Cache::Layout;
  const int batch = static_cast<int>(state.range(0));
  const int context = static_cast<int>(state.range(1));
  skv::gpu::DeviceCache<L> cache(batch, kKvHeads, context);
  const auto view = cache.view();
  {
    const std::size_t pool = static_cast<std::size_t>(view.num_pages) * L::page_bytes(kKvHeads);
    fill_pages_kernel<L><<<1024, 256>>>(view.pages, pool, kKvHeads);
    fill_float_kernel<<<256, 256>>>(view.residual, static_cast<std::size_t>(batch) * L::residual_floats(kKvHeads), 1.0f);
    std::vector<std::int32_t> lengths(static_cast<std::size_t>(batch), context);
    check_cuda(cudaMemcpy(view.lengths, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice), "lengths");
    cache.host_lengths() = lengths;
    check_cuda(cudaDeviceSynchronize(), "fill");
  }
  Dev<float> q(static_cast<std::size_t>(batch) * kQHeads * kHeadDim), out(static_cast<std::size_t>(batch) * kQHeads * kHeadDim);
  fill_float_kernel<<<64, 256>>>(q.p, static_cast<std::size_t>(batch) * kQHeads * kHeadDim, 1.0f);
  skv::gpu::DecodeWorkspace ws;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  skv::gpu::DecodePlan plan{};
  for (int i = 0; i < 3; ++i)
    plan = skv::gpu::decode_attention(view, q.p, out.p, kQHeads, scale, cache.lengths().data(), ws);
  check_cuda(cudaDeviceSynchronize(), "warmup");
  Events ev;
  double total = 0;
  int n = 0;
  for (auto _ : state) {
    flush()(n);
    check_cuda(cudaEventRecord(ev.a), "record");
    skv::gpu::decode_attention(view, q.p, out.p, kQHeads, scale, cache.lengths().data(), ws);
    check_cuda(cudaEventRecord(ev.b), "record");
    const double s = ev.seconds();
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  const double t = total / n;
  set_counters(state, skv::gpu::decode_bytes_read<L>(cache.lengths(), kKvHeads), t);
  state.counters["splits"] = plan.num_splits;
  const auto it = g_fp16_time.find({batch, context});
  if (it != g_fp16_time.end()) state.counters["speedup"] = it->second / t;
  state.SetLabel("k" + std::to_string(K) + "v" + std::to_string(V));
}

void BM_decode_fp16(benchmark::State& state) {
  using View = skv::gpu::Fp16BatchView<kHeadDim, 64>;
  using FL = skv::gpu::Fp16Layout<kHeadDim, 64>;
  const int batch = static_cast<int>(state.range(0));
  const int context = static_cast<int>(state.range(1));
  const int max_pages = (context + 63) / 64;
  const int num_pages = batch * max_pages;
  const std::size_t pool_bytes = static_cast<std::size_t>(num_pages) * FL::page_bytes(kKvHeads);
  Dev<std::uint8_t> pool(pool_bytes);
  fill_fp16_kernel<<<1024, 256>>>(reinterpret_cast<skv::fp16*>(pool.p), pool_bytes / 2);
  std::vector<std::int32_t> table(static_cast<std::size_t>(num_pages));
  for (int i = 0; i < num_pages; ++i) table[i] = i;
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(batch), context);
  Dev<std::int32_t> dtable(table.size()), dlen(lengths.size());
  check_cuda(cudaMemcpy(dtable.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice), "table");
  check_cuda(cudaMemcpy(dlen.p, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice), "lengths");
  View view;
  view.pages = pool.p;
  view.block_table = dtable.p;
  view.lengths = dlen.p;
  view.num_seqs = batch;
  view.max_pages = max_pages;
  view.num_pages = num_pages;
  view.num_kv_heads = kKvHeads;
  Dev<float> q(static_cast<std::size_t>(batch) * kQHeads * kHeadDim), out(static_cast<std::size_t>(batch) * kQHeads * kHeadDim);
  fill_float_kernel<<<64, 256>>>(q.p, static_cast<std::size_t>(batch) * kQHeads * kHeadDim, 1.0f);
  skv::gpu::DecodeWorkspace ws;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  skv::gpu::DecodePlan plan{};
  for (int i = 0; i < 3; ++i) plan = skv::gpu::decode_attention(view, q.p, out.p, kQHeads, scale, lengths.data(), ws);
  check_cuda(cudaDeviceSynchronize(), "warmup");
  Events ev;
  double total = 0;
  int n = 0;
  for (auto _ : state) {
    flush()(n);
    check_cuda(cudaEventRecord(ev.a), "record");
    skv::gpu::decode_attention(view, q.p, out.p, kQHeads, scale, lengths.data(), ws);
    check_cuda(cudaEventRecord(ev.b), "record");
    const double s = ev.seconds();
    state.SetIterationTime(s);
    total += s;
    ++n;
  }
  const double t = total / n;
  g_fp16_time[{batch, context}] = t;
  set_counters(state, static_cast<double>(batch) * context * kKvHeads * FL::bytes_per_token(), t);
  state.counters["splits"] = plan.num_splits;
  state.counters["speedup"] = 1.0;
  state.SetLabel("fp16");
}

// ---- append -----------------------------------------------------------------------------------------
// range(0) = batch, range(1) = tokens appended per sequence per call (1: a decode step; 1024: a
// prefill chunk), fp16 input. Bytes: input read + ring floats written + block tokens read back for
// quantization (input or ring) + quantized pages written.
template <int K, int V>
void BM_append(benchmark::State& state) {
  using Cache = skv::KVCache<K, V, kHeadDim>;
  using L = typename Cache::Layout;
  const int batch = static_cast<int>(state.range(0));
  const int tokens = static_cast<int>(state.range(1));
  const int calls_before_reset = tokens == 1 ? 4096 : 8;
  skv::gpu::DeviceCache<L> cache(batch, kKvHeads, tokens * calls_before_reset + 64);
  const std::size_t in_count = static_cast<std::size_t>(batch) * tokens * kKvHeads * kHeadDim;
  Dev<skv::fp16> k(in_count), v(in_count);
  fill_fp16_kernel<<<1024, 256>>>(k.p, in_count);
  fill_fp16_kernel<<<1024, 256>>>(v.p, in_count);
  std::vector<std::int32_t> indptr(static_cast<std::size_t>(batch) + 1);
  for (int s = 0; s <= batch; ++s) indptr[s] = s * tokens;
  Dev<std::int32_t> dind(indptr.size());
  check_cuda(cudaMemcpy(dind.p, indptr.data(), indptr.size() * 4, cudaMemcpyHostToDevice), "indptr");
  const auto view = cache.view();
  Events ev;
  double total = 0, bytes_total = 0;
  int n = 0, calls = 0;
  for (auto _ : state) {
    if (calls == calls_before_reset) {
      check_cuda(cudaMemset(view.lengths, 0, static_cast<std::size_t>(batch) * 4), "reset");
      calls = 0;
    }
    const int len0 = calls * tokens;
    flush()(n);
    check_cuda(cudaEventRecord(ev.a), "record");
    skv::gpu::append(view, k.p, v.p, dind.p, tokens);
    check_cuda(cudaEventRecord(ev.b), "record");
    const double s = ev.seconds();
    state.SetIterationTime(s);
    total += s;
    ++n;
    ++calls;
    const int q_new = L::quantized_length(len0 + tokens) - L::quantized_length(len0);
    const int ring_tokens = tokens < L::kResidualCapacity ? tokens : L::kResidualCapacity;
    const double per_head_token = 2.0 * kHeadDim;  // K and V elements
    bytes_total += static_cast<double>(batch) * kKvHeads *
                   (tokens * per_head_token * sizeof(skv::fp16) + ring_tokens * per_head_token * sizeof(float) +
                    q_new * per_head_token * 2.0 /* read back, mostly fp16 input */ + q_new * L::bytes_per_token());
  }
  set_counters(state, bytes_total / n, total / n);
  state.counters["tokens_per_s"] = static_cast<double>(batch) * tokens / (total / n);
  state.SetLabel("k" + std::to_string(K) + "v" + std::to_string(V));
}

void decode_args(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 8, 32})
    for (int ctx : {1024, 4096, 8192, 32768, 131072}) b->Args({batch, ctx});
  b->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
}

void append_args(benchmark::internal::Benchmark* b) {
  for (int batch : {1, 8, 32})
    for (int tokens : {1, 1024}) b->Args({batch, tokens});
  b->UseManualTime()->Iterations(20)->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_copy)->UseManualTime()->Iterations(20)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_decode_fp16)->Apply(decode_args);
BENCHMARK_TEMPLATE(BM_decode, 2, 2)->Apply(decode_args);
BENCHMARK_TEMPLATE(BM_decode, 4, 2)->Apply(decode_args);
BENCHMARK_TEMPLATE(BM_decode, 4, 4)->Apply(decode_args);
BENCHMARK_TEMPLATE(BM_decode, 8, 4)->Apply(decode_args);
BENCHMARK_TEMPLATE(BM_append, 4, 2)->Apply(append_args);
BENCHMARK_TEMPLATE(BM_append, 2, 2)->Apply(append_args);
BENCHMARK_TEMPLATE(BM_append, 8, 4)->Apply(append_args);

int main(int argc, char** argv) {
  if (skv::gpu::device_count() == 0) {
    std::printf("skv_bench_cuda: no usable CUDA device; nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("sm_count", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("l2_bytes", std::to_string(prop.l2CacheSize));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
