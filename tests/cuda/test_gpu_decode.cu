// GPU decode attention against skv::cpu::decode_attention_reference (double precision, same cache
// bytes). Tolerance: the kernel works in fp32 and reorders the sums (scaled query, folded
// probabilities, split-KV merge), so each output may differ from the reference by at most
// kTolerance * max(1, max |reference output of that head|); observed differences are ~1e-6.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <skv/attention/reference.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/gpu/append.cuh>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/decode.cuh>

#include "gpu_test_util.cuh"

namespace {

constexpr double kTolerance = 2e-4;

using skv::Axis;
using skv::Quantizer;

// Every key bit width and every value bit width 1..8 appears at least once; head dims 64/128/256;
// a longer residual window with 64-token key groups.
using Caches = ::testing::Types<
    skv::KVCache<1, 8>, skv::KVCache<2, 2>, skv::KVCache<3, 5>, skv::KVCache<4, 2>, skv::KVCache<5, 3>,
    skv::KVCache<6, 7>, skv::KVCache<7, 1>, skv::KVCache<8, 4>, skv::KVCache<4, 4>, skv::KVCache<4, 2, 64>,
    skv::KVCache<4, 2, 256>,
    skv::BasicKVCache<Quantizer<4, 64, Axis::Channel>, Quantizer<2, 32, Axis::Token>, 128, 64, 64>>;

template <class C>
class GpuDecode : public ::testing::Test {};
TYPED_TEST_SUITE(GpuDecode, Caches);

struct Case {
  int group;
  int kv_heads;
  std::vector<int> lengths;
  int force_splits;
};

template <class Cache>
void run_case(std::mt19937& rng, const Case& cs) {
  using L = typename Cache::Layout;
  constexpr int D = Cache::kHeadDim;
  const int num_seqs = static_cast<int>(cs.lengths.size());
  const int heads = cs.kv_heads;
  const int q_heads = heads * cs.group;
  const int max_len = *std::max_element(cs.lengths.begin(), cs.lengths.end());
  skv::gpu::DeviceCache<L> dev(num_seqs, heads, std::max(max_len, 1));
  std::vector<Cache> host;
  for (int s = 0; s < num_seqs; ++s) host.emplace_back(heads, dev.capacity());
  // prefill all but the last token of each sequence, then one decode-step append
  for (int step = 0; step < 2; ++step) {
    std::vector<int> counts(num_seqs);
    for (int s = 0; s < num_seqs; ++s)
      counts[s] = cs.lengths[s] == 0 ? 0 : (step == 0 ? cs.lengths[s] - 1 : 1);
    const int total = std::accumulate(counts.begin(), counts.end(), 0);
    if (total == 0) continue;
    const std::vector<float> k = skv_test::random_tokens(rng, total, heads, D, 2.0f);
    const std::vector<float> v = skv_test::random_tokens(rng, total, heads, D, 0.5f);
    skv_test::DeviceArray<float> dk(k), dv(v);
    skv::gpu::append(dev, dk.ptr, dv.ptr, counts);
    std::size_t off = 0;
    for (int s = 0; s < num_seqs; ++s) {
      host[s].append(k.data() + off, v.data() + off, counts[s]);
      off += static_cast<std::size_t>(counts[s]) * heads * D;
    }
  }
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> q(static_cast<std::size_t>(num_seqs) * q_heads * D);
  for (float& x : q) x = n01(rng);
  skv_test::DeviceArray<float> dq(q), dout(q.size());
  // poison the output: every element must be written
  skv::gpu::check_cuda(cudaMemset(dout.ptr, 0xff, q.size() * sizeof(float)), "cudaMemset");
  skv::gpu::DecodeWorkspace ws;
  const float scale = skv::cpu::default_scale<L>();
  const std::vector<std::int32_t> lengths = dev.lengths();
  const skv::gpu::DecodePlan plan =
      skv::gpu::decode_attention(dev.view(), dq.ptr, dout.ptr, q_heads, scale, lengths.data(), ws, nullptr, cs.force_splits);
  skv::gpu::check_cuda(cudaDeviceSynchronize(), "decode_attention");
  const std::vector<float> got = dout.download();
  if (cs.force_splits > 1 && max_len > 512) EXPECT_GT(plan.num_splits, 1);

  std::vector<float> ref(static_cast<std::size_t>(q_heads) * D);
  for (int s = 0; s < num_seqs; ++s) {
    skv::cpu::decode_attention_reference(host[s].view(), q.data() + static_cast<std::size_t>(s) * q_heads * D, q_heads,
                                         ref.data(), scale);
    for (int h = 0; h < q_heads; ++h) {
      double ref_max = 1.0;
      for (int c = 0; c < D; ++c) ref_max = std::max(ref_max, std::fabs(static_cast<double>(ref[h * D + c])));
      for (int c = 0; c < D; ++c) {
        const float g = got[(static_cast<std::size_t>(s) * q_heads + h) * D + c];
        const double err = std::fabs(static_cast<double>(g) - ref[h * D + c]);
        ASSERT_TRUE(std::isfinite(g) && err <= kTolerance * ref_max)
            << "seq " << s << " (length " << cs.lengths[s] << "), head " << h << ", dim " << c << ": gpu " << g
            << " reference " << ref[h * D + c] << " (group " << cs.group << ", splits " << plan.num_splits << ")";
      }
    }
  }
}

TYPED_TEST(GpuDecode, MatchesCpuReferenceOnRaggedBatches) {
  SKV_REQUIRE_DEVICE();
  std::mt19937 rng(99u + static_cast<unsigned>(TypeParam::kKeyBits * 9 + TypeParam::kValueBits + TypeParam::kHeadDim));
  std::uniform_int_distribution<int> batch(1, 5), len(2, 900);
  const int groups[] = {1, 4, 8, 2};
  for (int i = 0; i < 4; ++i) {
    Case cs;
    cs.group = groups[i];
    cs.kv_heads = cs.group == 8 ? 1 : 2;
    const int n = batch(rng);
    for (int s = 0; s < n; ++s) cs.lengths.push_back(len(rng));
    // ragged edge cases: one token, one short of / past a key group and a page, an empty sequence
    const int edges[] = {1, 31, 33, 65, 0};
    cs.lengths.push_back(edges[i]);
    if (i == 0) cs.lengths.push_back(1);
    if (i == 1) cs.lengths.push_back(1500 + static_cast<int>(rng() % 300));  // long: several splits
    cs.force_splits = i == 2 ? 3 : (i == 3 ? 1 : 0);
    SCOPED_TRACE("group " + std::to_string(cs.group));
    run_case<TypeParam>(rng, cs);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The fp16 baseline kernel over a paged fp16 cache with a shuffled block table, against a double
// reference computed from the same fp16 values.
template <int D>
void fp16_baseline_case(int group, std::mt19937& rng) {
  using View = skv::gpu::Fp16BatchView<D, 64>;
  using FL = skv::gpu::Fp16Layout<D, 64>;
  const int heads = 2, q_heads = heads * group;
  const std::vector<int> lengths = {1, 63, 777, 130, 2100};
  const int num_seqs = static_cast<int>(lengths.size());
  const int max_pages = (2100 + 63) / 64;
  const int num_pages = num_seqs * max_pages;
  std::vector<std::int32_t> table(static_cast<std::size_t>(num_pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<skv::fp16> pool(static_cast<std::size_t>(num_pages) * FL::page_bytes(heads) / 2);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (auto& x : pool) x = skv::to_fp16(n01(rng) + 0.3f);
  std::vector<float> q(static_cast<std::size_t>(num_seqs) * q_heads * D);
  for (float& x : q) x = n01(rng);
  skv_test::DeviceArray<skv::fp16> dpool(pool);
  skv_test::DeviceArray<std::int32_t> dtable(table), dlen(std::vector<std::int32_t>(lengths.begin(), lengths.end()));
  skv_test::DeviceArray<float> dq(q), dout(q.size());
  View view;
  view.pages = reinterpret_cast<std::uint8_t*>(dpool.ptr);
  view.block_table = dtable.ptr;
  view.lengths = dlen.ptr;
  view.num_seqs = num_seqs;
  view.max_pages = max_pages;
  view.num_pages = num_pages;
  view.num_kv_heads = heads;
  skv::gpu::DecodeWorkspace ws;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const std::vector<std::int32_t> hl(lengths.begin(), lengths.end());
  skv::gpu::decode_attention(view, dq.ptr, dout.ptr, q_heads, scale, hl.data(), ws);
  skv::gpu::check_cuda(cudaDeviceSynchronize(), "fp16 decode");
  const std::vector<float> got = dout.download();
  const std::size_t page_halves = FL::page_bytes(heads) / 2;
  auto at = [&](int s, int t, int h, int kv, int c) {
    const std::size_t page = static_cast<std::size_t>(table[static_cast<std::size_t>(s) * max_pages + t / 64]);
    return static_cast<double>(skv::to_float(
        pool[page * page_halves + static_cast<std::size_t>(h) * 2 * 64 * D + kv * 64 * D + (t % 64) * D + c]));
  };
  for (int s = 0; s < num_seqs; ++s)
    for (int qh = 0; qh < q_heads; ++qh) {
      const int h = qh / group;
      std::vector<double> logit(lengths[s]);
      double mx = -1e300;
      for (int t = 0; t < lengths[s]; ++t) {
        double d = 0;
        for (int c = 0; c < D; ++c) d += q[(static_cast<std::size_t>(s) * q_heads + qh) * D + c] * at(s, t, h, 0, c);
        logit[t] = d * scale;
        mx = std::max(mx, logit[t]);
      }
      double sum = 0;
      std::vector<double> o(D, 0.0);
      for (int t = 0; t < lengths[s]; ++t) {
        const double p = std::exp(logit[t] - mx);
        sum += p;
        for (int c = 0; c < D; ++c) o[c] += p * at(s, t, h, 1, c);
      }
      for (int c = 0; c < D; ++c) {
        const double r = o[c] / sum;
        const float g = got[(static_cast<std::size_t>(s) * q_heads + qh) * D + c];
        ASSERT_NEAR(g, r, kTolerance * std::max(1.0, std::fabs(r))) << "seq " << s << " head " << qh << " dim " << c;
      }
    }
}

TEST(GpuDecodeFp16Baseline, MatchesDoubleReferenceThroughShuffledBlockTable) {
  SKV_REQUIRE_DEVICE();
  std::mt19937 rng(5);
  fp16_baseline_case<128>(4, rng);
  fp16_baseline_case<64>(1, rng);
  fp16_baseline_case<256>(8, rng);
}

}  // namespace
