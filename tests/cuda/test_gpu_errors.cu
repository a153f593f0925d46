// Host-side argument checks of the GPU launchers: every one throws skv::Error before touching the
// device, so these run without a GPU (the pointers below are never dereferenced).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <skv/cache/kv_cache.hpp>
#include <skv/gpu/append.cuh>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/decode.cuh>
#include <skv/gpu/dequantize.cuh>

#include "gpu_test_util.cuh"

namespace {

using Cache = skv::KVCache<4, 2>;
using L = Cache::Layout;

std::uint8_t g_pages[16];
std::int32_t g_table[16];
std::int32_t g_lengths[16];
float g_ring[16];
float g_q[16];
float g_out[16];

skv::gpu::BatchView<L> fake_view() {
  skv::gpu::BatchView<L> v;
  v.pages = g_pages;
  v.block_table = g_table;
  v.lengths = g_lengths;
  v.residual = g_ring;
  v.num_seqs = 2;
  v.max_pages = 4;  // 256 tokens per sequence
  v.num_pages = 8;
  v.num_kv_heads = 2;
  return v;
}

template <class F>
void expect_error(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected skv::Error containing \"" << fragment << "\"";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("skv: ", 0), 0u) << e.what();
  }
}

TEST(GpuErrors, DecodeRejectsNullPointers) {
  skv::gpu::DecodeWorkspace ws;
  const std::int32_t lens[2] = {10, 20};
  expect_error([&] { skv::gpu::decode_attention(fake_view(), nullptr, g_out, 8, 0.1f, lens, ws); }, "must not be null");
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, nullptr, 8, 0.1f, lens, ws); }, "must not be null");
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 8, 0.1f, nullptr, ws); }, "host_lengths");
  auto v = fake_view();
  v.pages = nullptr;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "null pages");
  v = fake_view();
  v.block_table = nullptr;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "null pages");
  v = fake_view();
  v.lengths = nullptr;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "null pages");
  v = fake_view();
  v.residual = nullptr;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "null residual");
}

TEST(GpuErrors, DecodeRejectsLengthBeyondPages) {
  skv::gpu::DecodeWorkspace ws;
  const std::int32_t lens[2] = {10, 257};
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 8, 0.1f, lens, ws); }, "beyond its 4 pages");
  const std::int32_t neg[2] = {-1, 3};
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 8, 0.1f, neg, ws); }, "length -1");
}

TEST(GpuErrors, DecodeRejectsBadHeadCounts) {
  skv::gpu::DecodeWorkspace ws;
  const std::int32_t lens[2] = {10, 20};
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 7, 0.1f, lens, ws); }, "multiple of num_kv_heads");
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 0, 0.1f, lens, ws); }, "multiple of num_kv_heads");
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 6, 0.1f, lens, ws); }, "unsupported GQA group of 3");
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 32, 0.1f, lens, ws); }, "unsupported GQA group of 16");
  auto v = fake_view();
  v.num_kv_heads = 0;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "at least one KV head");
  v = fake_view();
  v.num_seqs = 0;
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 8, 0.1f, lens, ws); }, "at least one sequence");
}

TEST(GpuErrors, DecodeRejectsNonFiniteScale) {
  skv::gpu::DecodeWorkspace ws;
  const std::int32_t lens[2] = {10, 20};
  expect_error([&] { skv::gpu::decode_attention(fake_view(), g_q, g_out, 8, std::nanf(""), lens, ws); }, "scale");
}

TEST(GpuErrors, Fp16BaselineChecksArgumentsToo) {
  skv::gpu::DecodeWorkspace ws;
  skv::gpu::Fp16BatchView<128, 64> v;
  v.pages = g_pages;
  v.block_table = g_table;
  v.lengths = g_lengths;
  v.num_seqs = 1;
  v.max_pages = 2;
  v.num_pages = 2;
  v.num_kv_heads = 1;
  const std::int32_t lens[1] = {129};
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 4, 0.1f, lens, ws); }, "beyond its 2 pages");
  v.pages = nullptr;
  const std::int32_t ok[1] = {5};
  expect_error([&] { skv::gpu::decode_attention(v, g_q, g_out, 4, 0.1f, ok, ws); }, "null pages");
}

TEST(GpuErrors, AppendRejectsNullPointersAndEmptyBatches) {
  const std::int32_t* indptr = g_table;
  expect_error([&] { skv::gpu::append(fake_view(), static_cast<const float*>(nullptr), g_q, indptr); }, "must not be null");
  expect_error([&] { skv::gpu::append(fake_view(), g_q, g_q, static_cast<const std::int32_t*>(nullptr)); },
               "must not be null");
  auto v = fake_view();
  v.residual = nullptr;
  expect_error([&] { skv::gpu::append(v, g_q, g_q, indptr); }, "null pages, block_table, lengths or residual");
  v = fake_view();
  v.num_seqs = 0;
  expect_error([&] { skv::gpu::append(v, g_q, g_q, indptr); }, "at least one sequence");
  v = fake_view();
  v.num_kv_heads = -1;
  expect_error([&] { skv::gpu::append(v, g_q, g_q, indptr); }, "at least one KV head");
}

TEST(GpuErrors, DequantizeRejectsBadArguments) {
  expect_error([&] { skv::gpu::dequantize(fake_view(), 10, nullptr); }, "out must not be null");
  expect_error([&] { skv::gpu::dequantize(fake_view(), 1000, g_out); }, "max_tokens");
}

TEST(GpuErrors, DeviceCacheRejectsBadSizes) {
  expect_error([] { skv::gpu::DeviceCache<L>(0, 2, 10); }, "num_seqs");
  expect_error([] { skv::gpu::DeviceCache<L>(1, 0, 10); }, "num_kv_heads");
  expect_error([] { skv::gpu::DeviceCache<L>(1, 2, 0); }, "max_tokens");
}

// The DeviceCache overload checks counts on the host (needs a device for the cache itself).
TEST(GpuErrors, DeviceCacheAppendRejectsOverflowAndBadCounts) {
  SKV_REQUIRE_DEVICE();
  skv::gpu::DeviceCache<L> cache(2, 1, 64);
  skv_test::DeviceArray<float> k(static_cast<std::size_t>(200) * 128);
  expect_error([&] { skv::gpu::append(cache, k.ptr, k.ptr, std::vector<int>{1}); }, "counts has 1 entries");
  expect_error([&] { skv::gpu::append(cache, k.ptr, k.ptr, std::vector<int>{-1, 2}); }, "negative token count");
  expect_error([&] { skv::gpu::append(cache, k.ptr, k.ptr, std::vector<int>{10, 65}); }, "past the capacity");
  EXPECT_EQ(cache.lengths()[0], 0);
  EXPECT_EQ(cache.device_lengths()[0], 0);
  expect_error([&] { skv::gpu::append(cache, static_cast<const float*>(nullptr), k.ptr, std::vector<int>{1, 1}); },
               "must not be null");
  EXPECT_EQ(cache.lengths()[0], 0);
}

TEST(GpuErrors, NoDeviceIsReportedAsZeroDevices) {
  // device_count never throws and never reports a negative count, with or without a GPU.
  const int n = skv::gpu::device_count();
  EXPECT_GE(n, 0);
  if (skv_test::gpu_required()) EXPECT_GT(n, 0);
}

}  // namespace
