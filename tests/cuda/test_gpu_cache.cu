// The GPU append kernel writes the bytes the CPU cache writes, and device dequantization equals
// host dequantization bit for bit, for every bit width of keys and values.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include <skv/cache/kv_cache.hpp>
#include <skv/gpu/append.cuh>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/dequantize.cuh>

#include "gpu_test_util.cuh"

namespace {

using skv::Axis;
using skv::Quantizer;
using skv::Scheme;

template <class Cache, class Token>
struct Config {
  using C = Cache;
  using T = Token;
};

// Keys and values at every bit width 1..8 (K = b, V = 9 - b), plus other groupings, schemes,
// scale types, head dims, page sizes and residual windows.
using Configs = ::testing::Types<
    Config<skv::KVCache<1, 8>, float>, Config<skv::KVCache<2, 7>, skv::fp16>, Config<skv::KVCache<3, 6>, skv::bf16>,
    Config<skv::KVCache<4, 5>, float>, Config<skv::KVCache<5, 4>, skv::fp16>, Config<skv::KVCache<6, 3>, float>,
    Config<skv::KVCache<7, 2>, skv::bf16>, Config<skv::KVCache<8, 1>, float>, Config<skv::KVCache<4, 2, 64>, skv::fp16>,
    Config<skv::KVCache<2, 2, 256>, float>,
    Config<skv::BasicKVCache<Quantizer<3, 64, Axis::Channel, Scheme::Symmetric, skv::bf16>,
                             Quantizer<5, 16, Axis::Token, Scheme::Asymmetric, float>, 64, 64, 64>,
           float>,
    Config<skv::BasicKVCache<Quantizer<4, 32, Axis::Channel>, Quantizer<2, 32, Axis::Channel>, 128, 32, 32>, float>,
    Config<skv::BasicKVCache<Quantizer<6, 8, Axis::Token>, Quantizer<3, 16, Axis::Token, Scheme::Symmetric>, 128, 16, 8>,
           skv::fp16>>;

template <class Cfg>
class GpuCache : public ::testing::Test {};
TYPED_TEST_SUITE(GpuCache, Configs);

// Appends to the host cache what the device cache was given (bf16 widened exactly to float).
template <class Cache>
void append_host(Cache& cache, const std::vector<float>& k, const std::vector<float>& v, std::size_t offset, int n) {
  cache.append(k.data() + offset, v.data() + offset, n);
}
template <class Cache>
void append_host(Cache& cache, const std::vector<skv::fp16>& k, const std::vector<skv::fp16>& v, std::size_t offset,
                 int n) {
  cache.append(k.data() + offset, v.data() + offset, n);
}
template <class Cache>
void append_host(Cache& cache, const std::vector<skv::bf16>& k, const std::vector<skv::bf16>& v, std::size_t offset,
                 int n) {
  std::vector<float> kf(static_cast<std::size_t>(n) * cache.num_kv_heads() * Cache::kHeadDim), vf(kf.size());
  for (std::size_t i = 0; i < kf.size(); ++i) {
    kf[i] = skv::to_float(k[offset + i]);
    vf[i] = skv::to_float(v[offset + i]);
  }
  cache.append(kf.data(), vf.data(), n);
}

TYPED_TEST(GpuCache, AppendWritesTheBytesOfTheCpuCacheAndDequantizesBitExactly) {
  SKV_REQUIRE_DEVICE();
  using Cache = typename TypeParam::C;
  using T = typename TypeParam::T;
  using L = typename Cache::Layout;
  constexpr int D = Cache::kHeadDim;
  std::mt19937 rng(1234u + static_cast<unsigned>(Cache::kKeyBits * 16 + Cache::kValueBits));
  const int num_seqs = 3 + static_cast<int>(rng() % 3);
  const int heads = 2;
  const int max_tokens = 700;
  skv::gpu::DeviceCache<L> dev(num_seqs, heads, max_tokens);
  std::vector<Cache> host;
  for (int s = 0; s < num_seqs; ++s) host.emplace_back(heads, dev.capacity());

  // A prefill of ragged sizes (some larger than the ring), then single tokens and small chunks,
  // some sequences idle in some steps.
  std::vector<std::vector<int>> steps;
  {
    std::vector<int> prefill(num_seqs);
    for (int s = 0; s < num_seqs; ++s) prefill[s] = static_cast<int>(rng() % 300);
    prefill[0] = 1;
    steps.push_back(prefill);
    for (int step = 0; step < 40; ++step) {
      std::vector<int> c(num_seqs);
      for (int s = 0; s < num_seqs; ++s) c[s] = static_cast<int>(rng() % 4 == 0 ? 0 : 1);
      steps.push_back(c);
    }
    std::vector<int> chunk(num_seqs);
    for (int s = 0; s < num_seqs; ++s) chunk[s] = static_cast<int>(rng() % 97);
    steps.push_back(chunk);
  }
  for (const auto& counts : steps) {
    int total = 0;
    for (int c : counts) total += c;
    if (total == 0) continue;
    const std::vector<T> k = skv_test::convert<T>(skv_test::random_tokens(rng, total, heads, D, 3.0f));
    const std::vector<T> v = skv_test::convert<T>(skv_test::random_tokens(rng, total, heads, D, 0.5f));
    skv_test::DeviceArray<T> dk(k), dv(v);
    skv::gpu::append(dev, dk.ptr, dv.ptr, counts);
    std::size_t offset = 0;
    for (int s = 0; s < num_seqs; ++s) {
      append_host(host[s], k, v, offset, counts[s]);
      offset += static_cast<std::size_t>(counts[s]) * heads * D;
    }
  }

  const std::vector<std::int32_t> lengths = dev.device_lengths();
  const std::size_t page_bytes = L::page_bytes(heads);
  for (int s = 0; s < num_seqs; ++s) {
    ASSERT_EQ(lengths[s], host[s].size()) << "sequence " << s;
    ASSERT_EQ(dev.lengths()[s], host[s].size());
    const std::vector<std::uint8_t> pages = dev.sequence_pages(s);
    const auto hv = host[s].view();
    ASSERT_EQ(pages.size(), static_cast<std::size_t>(hv.num_pages) * page_bytes);
    for (std::size_t b = 0; b < pages.size(); ++b) {
      ASSERT_EQ(pages[b], hv.pages[b]) << "sequence " << s << ", page " << b / page_bytes << ", byte " << b % page_bytes;
    }
    const std::vector<float> ring = dev.sequence_residual(s);
    ASSERT_EQ(ring.size(), L::residual_floats(heads));
    EXPECT_EQ(0, std::memcmp(ring.data(), hv.residual, ring.size() * sizeof(float))) << "residual ring of sequence " << s;
  }

  // Device dequantization (register unpack + Quantizer::decode) == host SequenceView::key/value.
  int max_len = 0;
  for (int len : lengths) max_len = len > max_len ? len : max_len;
  skv_test::DeviceArray<float> deq(static_cast<std::size_t>(num_seqs) * max_len * heads * 2 * D);
  skv::gpu::dequantize(dev.view(), max_len, deq.ptr);
  skv::gpu::check_cuda(cudaDeviceSynchronize(), "dequantize");
  const std::vector<float> got = deq.download();
  std::size_t checked = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const auto hv = host[s].view();
    for (int t = 0; t < lengths[s]; ++t)
      for (int h = 0; h < heads; ++h)
        for (int c = 0; c < D; ++c) {
          const std::size_t base = ((static_cast<std::size_t>(s) * max_len + t) * heads + h) * 2 * D;
          const float hk = hv.key(t, h, c), hvv = hv.value(t, h, c);
          ASSERT_EQ(0, std::memcmp(&got[base + c], &hk, sizeof(float)))
              << "key s" << s << " t" << t << " h" << h << " c" << c << ": " << got[base + c] << " vs " << hk;
          ASSERT_EQ(0, std::memcmp(&got[base + D + c], &hvv, sizeof(float)))
              << "value s" << s << " t" << t << " h" << h << " c" << c << ": " << got[base + D + c] << " vs " << hvv;
          ++checked;
        }
  }
  EXPECT_GT(checked, 1000u);
}

// Appending through the view with an indptr: a sequence whose append would overflow its pages is
// left unchanged, the others advance.
TEST(GpuAppend, OverflowingSequenceIsLeftUnchangedOthersAdvance) {
  SKV_REQUIRE_DEVICE();
  using Cache = skv::KVCache<4, 2, 64>;
  using L = Cache::Layout;
  skv::gpu::DeviceCache<L> dev(2, 1, 64);
  std::mt19937 rng(7);
  const std::vector<float> k = skv_test::random_tokens(rng, 80, 1, 64, 1.0f);
  skv_test::DeviceArray<float> dk(k);
  const std::vector<std::int32_t> indptr = {0, 10, 80};  // 10 tokens fit, 70 do not (capacity 64)
  skv_test::DeviceArray<std::int32_t> dind(indptr);
  skv::gpu::append(dev.view(), dk.ptr, dk.ptr, dind.ptr);
  skv::gpu::check_cuda(cudaDeviceSynchronize(), "append");
  const std::vector<std::int32_t> lengths = dev.device_lengths();
  EXPECT_EQ(lengths[0], 10);
  EXPECT_EQ(lengths[1], 0);
  const std::vector<float> ring = dev.sequence_residual(1);
  for (float x : ring) ASSERT_EQ(x, 0.0f);
}

}  // namespace
