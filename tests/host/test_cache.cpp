// The paged cache: accounting, quantize-once, all-or-nothing appends, views over engine memory.
#include <skv/skv.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace test_cache {

std::vector<float> random_tokens(int n, int heads, int d, unsigned seed, float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n) * heads * d);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = g(rng) + offset * static_cast<float>(i % d % 3);
  return x;
}

template <class Cache>
std::vector<std::uint8_t> page_bytes(const Cache& cache) {
  const auto v = cache.view();
  const std::size_t n = Cache::Layout::page_bytes(v.num_kv_heads) * v.max_pages;
  return std::vector<std::uint8_t>(v.pages, v.pages + n);
}

// The short form's layout as the bytes show it (its constants are checked at compile time in
// tests/headers/static_facts.cpp): keys in groups of 32 tokens per channel, values in groups of 64
// channels per token, and a page of 64 tokens and one head taking 64 * 120 bytes.
TEST(Cache, CompileTimeFacts) {
  using C = skv::KVCache<4, 2>;
  constexpr int H = 2, D = 128, N = 128;
  C cache(H, N);
  const auto k = random_tokens(N, H, D, 31), v = random_tokens(N, H, D, 32);
  cache.append(k.data(), v.data(), N);
  const auto view = cache.view();
  EXPECT_EQ(view.head_block(0, 1) - view.head_block(0, 0), 64 * 120);
  EXPECT_EQ(view.head_block(64, 0) - view.head_block(0, 0), 2 * 64 * 120);
  EXPECT_EQ(cache.memory_bytes(), 2u * 2u * 64u * 120u + C::Layout::residual_floats(H) * sizeof(float));
  EXPECT_EQ(static_cast<double>(cache.memory_bytes() - C::Layout::residual_floats(H) * sizeof(float)),
            C::bytes_per_token() * N * H);
  int key_groups_differ = 0, value_groups_differ = 0;
  for (int c = 0; c < D; ++c) {
    // one key scale per channel for tokens [0, 32), another for [32, 64)
    for (int t = 1; t < 32; ++t) ASSERT_EQ(view.keys(t, 1).params(t, c).scale, view.keys(0, 1).params(0, c).scale);
    key_groups_differ += view.keys(32, 1).params(32, c).scale != view.keys(0, 1).params(0, c).scale;
  }
  for (int t = 0; t < 64; ++t) {
    // one value scale per token for all 64 channels of a group, another for the next group
    for (int c = 1; c < 64; ++c) ASSERT_EQ(view.values(t, 0).params(t, c).scale, view.values(t, 0).params(t, 0).scale);
    value_groups_differ += view.values(t, 0).params(t, 64).scale != view.values(t, 0).params(t, 0).scale;
  }
  // distinct groups: distinct scales, except where two ranges round to the same fp16 number
  EXPECT_GT(key_groups_differ, D * 3 / 4);
  EXPECT_GT(value_groups_differ, 64 * 3 / 4);
}

TEST(Cache, SizesAndMemoryAccounting) {
  constexpr int H = 3, D = 64;
  skv::KVCache<4, 2, D> cache(H, 200);
  using L = decltype(cache)::Layout;
  EXPECT_EQ(cache.capacity(), 200);
  EXPECT_EQ(cache.memory_bytes(), L::residual_floats(H) * sizeof(float));
  EXPECT_EQ(cache.reserved_bytes(), 4 * L::page_bytes(H) + L::residual_floats(H) * sizeof(float));
  const auto k = random_tokens(100, H, D, 1), v = random_tokens(100, H, D, 2);
  cache.append(k.data(), v.data(), 100);
  EXPECT_EQ(cache.size(), 100);
  EXPECT_EQ(cache.quantized_size(), 96);
  EXPECT_EQ(cache.residual_size(), 4);
  EXPECT_EQ(cache.memory_bytes(), 2 * L::page_bytes(H) + L::residual_floats(H) * sizeof(float));
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
}

TEST(Cache, ResidualWindowKeepsRecentTokensInFullPrecision) {
  using C = skv::BasicKVCache<skv::Quantizer<2, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 64,
                              64, /*Residual=*/64>;
  constexpr int H = 2, D = 64;
  C cache(H, 300);
  const auto k = random_tokens(300, H, D, 3), v = random_tokens(300, H, D, 4);
  for (int n = 1; n <= 300; ++n) {
    cache.append(k.data() + static_cast<std::size_t>(n - 1) * H * D, v.data() + static_cast<std::size_t>(n - 1) * H * D, 1);
    const int expect_q = n < 96 ? 0 : (n - 64) / 32 * 32;
    ASSERT_EQ(cache.quantized_size(), expect_q) << n;
    ASSERT_GE(cache.residual_size(), std::min(n, 64));
    ASSERT_LT(cache.residual_size(), 96);
  }
  const auto view = cache.view();
  for (int t = cache.quantized_size(); t < 300; ++t)
    for (int h = 0; h < H; ++h)
      for (int c = 0; c < D; ++c) {
        ASSERT_EQ(view.key(t, h, c), k[(static_cast<std::size_t>(t) * H + h) * D + c]);
        ASSERT_EQ(view.value(t, h, c), v[(static_cast<std::size_t>(t) * H + h) * D + c]);
      }
}

// Every quantized element is within half a step of its input: the step of its own group.
template <int KB, int VB>
void check_dequantized_within_bound() {
  constexpr int H = 2, D = 64, N = 200;
  skv::KVCache<KB, VB, D> cache(H, N);
  const auto k = random_tokens(N, H, D, 10 + KB, 3.0f), v = random_tokens(N, H, D, 20 + VB);
  cache.append(k.data(), v.data(), N);
  const auto view = cache.view();
  using L = typename decltype(cache)::Layout;
  for (int t = 0; t < N; ++t)
    for (int h = 0; h < H; ++h)
      for (int c = 0; c < D; ++c) {
        const std::size_t i = (static_cast<std::size_t>(t) * H + h) * D + c;
        if (t < cache.quantized_size()) {
          const float ks = view.keys(t, h).params(t % L::kPageSize, c).scale;
          const float vs = view.values(t, h).params(t % L::kPageSize, c).scale;
          ASSERT_LE(std::fabs(view.key(t, h, c) - k[i]), (0.5f + 2.5e-4f) * ks);
          ASSERT_LE(std::fabs(view.value(t, h, c) - v[i]), (0.5f + 2.5e-4f) * vs);
          // the step is what the bits allow for a group of standard normals (range < 12)
          ASSERT_LE(ks, 12.0f / ((1 << KB) - 1) * 1.01f + 3.0f * 2 / 2048.0f);
        } else {
          ASSERT_EQ(view.key(t, h, c), k[i]);
        }
      }
}

TEST(Cache, DequantizedElementsStayWithinHalfAStep) {
  check_dequantized_within_bound<1, 1>();
  check_dequantized_within_bound<2, 3>();
  check_dequantized_within_bound<4, 2>();
  check_dequantized_within_bound<5, 6>();
  check_dequantized_within_bound<8, 8>();
}

// Prefill in chunks, decode token by token, or all at once: the same bytes. A completed block is
// quantized once and later appends never touch it.
TEST(Cache, BlocksAreQuantizedOnceWhateverTheChunking) {
  constexpr int H = 2, D = 128, N = 203;
  const auto k = random_tokens(N, H, D, 5), v = random_tokens(N, H, D, 6);
  skv::KVCache<3, 5> whole(H, N), single(H, N), chunks(H, N);
  whole.append(k.data(), v.data(), N);
  std::vector<std::uint8_t> after_first_block;
  for (int t = 0; t < N; ++t) {
    single.append(k.data() + static_cast<std::size_t>(t) * H * D, v.data() + static_cast<std::size_t>(t) * H * D, 1);
    if (t == 31) after_first_block = page_bytes(single);
  }
  // the first block's bytes (both heads) never change after it is written
  const auto final_bytes = page_bytes(single);
  using L = skv::KVCache<3, 5>::Layout;
  for (int h = 0; h < H; ++h) {
    const std::size_t base = h * L::kHeadBytes;
    for (std::size_t b = 0; b < 32 * L::Keys::kRowBytes; ++b) ASSERT_EQ(final_bytes[base + b], after_first_block[base + b]);
  }
  int done = 0;
  for (int n : {7, 40, 1, 64, 91}) {
    chunks.append(k.data() + static_cast<std::size_t>(done) * H * D, v.data() + static_cast<std::size_t>(done) * H * D, n);
    done += n;
  }
  ASSERT_EQ(done, N);
  EXPECT_EQ(page_bytes(whole), page_bytes(single));
  EXPECT_EQ(page_bytes(whole), page_bytes(chunks));
}

/// Every byte of a cache's pages and every float of its full-precision area (residual ring and sinks).
template <class Cache>
std::pair<std::vector<std::uint8_t>, std::vector<float>> cache_state(const Cache& cache) {
  const auto v = cache.view();
  const float* r = v.residual;
  return {page_bytes(cache), std::vector<float>(r, r + Cache::Layout::residual_floats(v.num_kv_heads))};
}

template <class Cache>
void expect_unchanged(const Cache& cache, const std::pair<std::vector<std::uint8_t>, std::vector<float>>& state, int size) {
  EXPECT_EQ(cache.size(), size);
  const auto now = cache_state(cache);
  EXPECT_EQ(now.first, state.first);
  ASSERT_EQ(now.second.size(), state.second.size());
  EXPECT_EQ(std::memcmp(now.second.data(), state.second.data(), now.second.size() * sizeof(float)), 0);
}

TEST(Cache, BadInputThrowsAndLeavesTheCacheUnchanged) {
  constexpr int H = 2, D = 64;
  // sinks and a residual window, so that every part of the cache can be checked
  skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, D, 64, 32,
                    skv::Options<skv::Sinks<4>>>
      cache(H, 70);
  auto k = random_tokens(70, H, D, 7), v = random_tokens(70, H, D, 8);
  cache.append(k.data(), v.data(), 33);
  ASSERT_EQ(cache.sink_size(), 4);
  ASSERT_EQ(cache.residual_size(), 29);
  const auto bytes = cache_state(cache);

  EXPECT_THROW(cache.append(k.data(), v.data(), 38), skv::Error);  // 33 + 38 > 70
  expect_unchanged(cache, bytes, 33);
  EXPECT_THROW(cache.append(nullptr, v.data(), 1), skv::Error);
  EXPECT_THROW(cache.append(k.data(), nullptr, 1), skv::Error);
  EXPECT_THROW(cache.append(k.data(), v.data(), -1), skv::Error);
  expect_unchanged(cache, bytes, 33);

  // a NaN or Inf in the very last element of the last token: nothing before it is written either
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 1e30f}) {
    auto k2 = k;
    k2[static_cast<std::size_t>(37) * H * D - 1] = bad;
    try {
      cache.append(k2.data(), v.data(), 37);
      FAIL() << "accepted " << bad;
    } catch (const skv::Error& e) {
      EXPECT_NE(std::string(e.what()).find("keys at token 36, head 1, dim 63"), std::string::npos) << e.what();
      if (std::isfinite(bad)) {  // numbers as people write them, not "32752.000000"
        EXPECT_NE(std::string(e.what()).find("|x| <= 32752 required"), std::string::npos) << e.what();
      }
    }
    expect_unchanged(cache, bytes, 33);
    auto v2 = v;
    v2[5] = -bad;
    EXPECT_THROW(cache.append(k.data(), v2.data(), 37), skv::Error);
    expect_unchanged(cache, bytes, 33);
  }
  std::vector<skv::fp16> hk(static_cast<std::size_t>(H) * D, skv::to_fp16(1.0f)), hv = hk;
  hv[3] = skv::fp16{0x7c00};  // +Inf
  EXPECT_THROW(cache.append(hk.data(), hv.data(), 1), skv::Error);
  expect_unchanged(cache, bytes, 33);

  // filling exactly to capacity works; one more token does not
  cache.append(k.data(), v.data(), 37);
  EXPECT_EQ(cache.size(), 70);
  EXPECT_THROW(cache.append(k.data(), v.data(), 1), skv::Error);
  EXPECT_EQ(cache.size(), 70);
}

TEST(Cache, ConstructorRejectsBadShapes) {
  EXPECT_THROW((skv::KVCache<4, 2>(0, 10)), skv::Error);
  EXPECT_THROW((skv::KVCache<4, 2>(-3, 10)), skv::Error);
  EXPECT_THROW((skv::KVCache<4, 2>(1, -1)), skv::Error);
  skv::KVCache<4, 2> empty(1, 0);
  EXPECT_EQ(empty.capacity(), 0);
  std::vector<float> x(128);
  EXPECT_THROW(empty.append(x.data(), x.data(), 1), skv::Error);
  EXPECT_NO_THROW(empty.append(x.data(), x.data(), 0));
}

/// The bytes of the pages and the floats of every token a cache still holds in full precision
/// (sinks and the residual window; ring slots of quantized tokens are free and not compared).
template <class Cache>
std::pair<std::vector<std::uint8_t>, std::vector<float>> live_state(const Cache& cache) {
  const auto v = cache.view();
  std::vector<float> fp;
  for (int t = 0; t < v.length; ++t) {
    if (t >= v.sink_length() && t < Cache::Layout::residual_begin(v.length)) continue;
    for (int h = 0; h < v.num_kv_heads; ++h) {
      for (int c = 0; c < Cache::kHeadDim; ++c) {
        fp.push_back(v.key(t, h, c));
        fp.push_back(v.value(t, h, c));
      }
    }
  }
  return {page_bytes(cache), fp};
}

/// float, fp16 and bf16 inputs in every chunking give the same cache as the float values one token
/// at a time (fp16 / bf16 inputs: their widened values): append's direct path from the input, its
/// ring path and the per-token path agree byte for byte.
template <class Cache>
void check_input_types_and_chunkings(unsigned seed) {
  constexpr int H = 3, D = Cache::kHeadDim, N = 419;
  const auto k32 = random_tokens(N, H, D, seed, 2.0f), v32 = random_tokens(N, H, D, seed + 1);
  std::vector<skv::fp16> hk(k32.size()), hv(v32.size());
  std::vector<skv::bf16> bk(k32.size()), bv(v32.size());
  std::vector<float> hk32(k32.size()), hv32(v32.size()), bk32(k32.size()), bv32(v32.size());
  for (std::size_t i = 0; i < k32.size(); ++i) {
    hk[i] = skv::to_fp16(k32[i]);
    hv[i] = skv::to_fp16(v32[i]);
    bk[i] = skv::to_bf16(k32[i]);
    bv[i] = skv::to_bf16(v32[i]);
    hk32[i] = skv::to_float(hk[i]);
    hv32[i] = skv::to_float(hv[i]);
    bk32[i] = skv::to_float(bk[i]);
    bv32[i] = skv::to_float(bv[i]);
  }
  const std::size_t tf = static_cast<std::size_t>(H) * D;
  auto one_by_one = [&](const std::vector<float>& k, const std::vector<float>& v) {
    Cache c(H, N);
    for (int t = 0; t < N; ++t) c.append(k.data() + t * tf, v.data() + t * tf, 1);
    return live_state(c);
  };
  auto chunked = [&](const auto& k, const auto& v, std::vector<int> chunks) {
    Cache c(H, N);
    int done = 0;
    for (int n : chunks) {
      c.append(k.data() + done * tf, v.data() + done * tf, n);
      done += n;
    }
    EXPECT_EQ(done, N);
    return live_state(c);
  };
  const std::vector<int> whole{N}, mixed{3, 1, 61, 29, 200, 125}, aligned{36, 32, 96, 255};
  const auto want32 = one_by_one(k32, v32), want16 = one_by_one(hk32, hv32), want_b16 = one_by_one(bk32, bv32);
  for (const auto& chunks : {whole, mixed, aligned}) {
    EXPECT_EQ(chunked(k32, v32, chunks), want32);
    EXPECT_EQ(chunked(hk, hv, chunks), want16);
    EXPECT_EQ(chunked(bk, bv, chunks), want_b16);
  }
  // sanity: the three inputs really differ
  EXPECT_NE(want32.second, want16.second);
  EXPECT_NE(want16.second, want_b16.second);
}

TEST(Cache, InputTypesAndChunkingsGiveTheSameBytes) {
  check_input_types_and_chunkings<skv::KVCache<4, 2>>(11);
  check_input_types_and_chunkings<skv::KVCache<3, 5, 64>>(12);
  using Opts = skv::Options<skv::RotateKeys, skv::Sinks<4>, skv::ClipKeys, skv::ClipValues>;
  check_input_types_and_chunkings<skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>,
                                                    skv::Quantizer<2, 32, skv::Axis::Token>, 128, 64, 64, Opts>>(13);
}

TEST(Cache, ThreadedAppendWritesTheSameBytes) {
  constexpr int H = 4, D = 128, N = 2100;  // 65 blocks
  const auto k = random_tokens(N, H, D, 21, 1.0f), v = random_tokens(N, H, D, 22);
  skv::KVCache<4, 2> one(H, N), two(H, N), every(H, N);
  skv::AppendOptions opt;
  opt.num_threads = 1;
  one.append(k.data(), v.data(), N, opt);
  opt.num_threads = 2;
  two.append(k.data(), v.data(), N, opt);
  every.append(k.data(), v.data(), N);
  EXPECT_EQ(live_state(one), live_state(two));
  EXPECT_EQ(live_state(one), live_state(every));
  EXPECT_EQ(one.quantized_size(), 2080);
}

// num_threads is resolved in one place (skv/threads.hpp): tens of thousands of threads overflowed
// libgomp's stack; they are clamped now, and a negative count is an error, for every entry point.
TEST(Cache, HugeThreadCountsAreClampedAndNegativeOnesRefused) {
  constexpr int H = 2, D = 128, N = 600;
  const auto k = random_tokens(N, H, D, 31), v = random_tokens(N, H, D, 32);
  skv::KVCache<4, 2> cache(H, N), ref(H, N);
  skv::AppendOptions append;
  append.num_threads = 70000;
  cache.append(k.data(), v.data(), N, append);
  ref.append(k.data(), v.data(), N);
  EXPECT_EQ(live_state(cache), live_state(ref));
  const auto q = random_tokens(4, 8, D, 33);
  std::vector<float> a(8 * D), b(8 * D), pa(4 * 8 * D), pb(pa.size());
  for (int threads : {70000, std::numeric_limits<int>::max()}) {
    skv::cpu::DecodeOptions d;
    d.num_threads = threads;
    skv::cpu::decode_attention(cache, q.data(), 8, a.data(), 0.1f, d);
    skv::cpu::decode_attention(cache, q.data(), 8, b.data(), 0.1f);
    for (int i = 0; i < 8 * D; ++i) ASSERT_NEAR(a[i], b[i], 1e-5f) << i;
    skv::cpu::PrefillOptions p;
    p.num_threads = threads;
    skv::cpu::prefill_attention(cache, q.data(), 4, 8, pa.data(), 0.1f, p);
    skv::cpu::prefill_attention(cache, q.data(), 4, 8, pb.data(), 0.1f);
    for (std::size_t i = 0; i < pa.size(); ++i) ASSERT_NEAR(pa[i], pb[i], 1e-5f) << i;
  }
  append.num_threads = -1;
  EXPECT_THROW(cache.append(k.data(), v.data(), 0, append), skv::Error);
  skv::cpu::DecodeOptions d;
  d.num_threads = -2;
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 8, a.data(), 0.1f, d), skv::Error);
  skv::cpu::PrefillOptions p;
  p.num_threads = -2;
  EXPECT_THROW(skv::cpu::prefill_attention(cache, q.data(), 4, 8, pa.data(), 0.1f, p), skv::Error);
}

// Float value scales accept inputs up to 2^90: attention over 2^31 tokens of them cannot overflow
// float. Larger values (1e37, which append used to accept and decode turned into Inf) are refused.
TEST(Cache, FloatScalesKeepAttentionFinite) {
  using C = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>,
                              skv::Quantizer<4, 64, skv::Axis::Token, skv::Scheme::Asymmetric, float>, 64>;
  static_assert(C::ValueQuantizer::kMaxInput == 1237940039285380274899124224.0f, "2^90");
  constexpr int N = 100;
  const auto k = random_tokens(N, 1, 64, 41);
  auto v = random_tokens(N, 1, 64, 42);
  for (float& x : v) x = x * 1e37f;
  C cache(1, N);
  EXPECT_THROW(cache.append(k.data(), v.data(), N), skv::Error);
  EXPECT_EQ(cache.size(), 0);
  for (float& x : v) x = x * 1e-11f;  // about 1e26
  cache.append(k.data(), v.data(), N);
  const auto q = random_tokens(1, 4, 64, 43);
  std::vector<float> out(4 * 64), ref(out.size()), pre(out.size());
  skv::cpu::decode_attention(cache, q.data(), 4, out.data(), 0.1f);
  skv::cpu::decode_attention_reference(cache, q.data(), 4, ref.data(), 0.1f);
  skv::cpu::prefill_attention(cache, q.data(), 1, 4, pre.data(), 0.1f);
  for (std::size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(pre[i])) << i;
    ASSERT_NEAR(out[i], ref[i], 1e-3 * std::fabs(ref[i]) + 1e21) << i;
  }
}

// A clipped Channel-axis group of 4096 tokens at head_dim 1024 searches a 16 MiB slab: on the heap
// (it was a stack array, and the first append overflowed the stack).
TEST(Cache, WideClippedKeyGroupsAreQuantizedOffTheStack) {
  using C = skv::BasicKVCache<skv::Quantizer<2, 4096, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>,
                              1024, 4096, 0, skv::Options<skv::ClipKeys>>;
  constexpr int N = 4096;
  const auto k = random_tokens(N, 1, 1024, 51), v = random_tokens(N, 1, 1024, 52);
  C cache(1, N);
  cache.append(k.data(), v.data(), N);
  ASSERT_EQ(cache.quantized_size(), N);
  const auto view = cache.view();
  // every dequantized key is within its clipped group's range: the search ran and stored scales
  for (int c = 0; c < 1024; c += 97) {
    float lo = k[c], hi = k[c];
    for (int t = 0; t < N; ++t) {
      lo = std::min(lo, k[static_cast<std::size_t>(t) * 1024 + c]);
      hi = std::max(hi, k[static_cast<std::size_t>(t) * 1024 + c]);
    }
    for (int t = 0; t < N; t += 511) {
      const float x = view.key(t, 0, c);
      ASSERT_TRUE(x >= lo - 1e-3f && x <= hi + 1e-3f) << c << " " << t << ": " << x;
    }
  }
}

/// Every token as attention sees it (dequantized or full precision): what a failed append must not change.
template <class Cache>
std::vector<float> token_state(const Cache& cache) {
  const auto v = cache.view();
  std::vector<float> x;
  for (int t = 0; t < v.length; ++t)
    for (int h = 0; h < v.num_kv_heads; ++h)
      for (int c = 0; c < Cache::kHeadDim; ++c) {
        x.push_back(v.key(t, h, c));
        x.push_back(v.value(t, h, c));
      }
  return x;
}

TEST(Cache, BadValueInsideADirectlyQuantizedBlockChangesNoToken) {
  // a long append quantizes its blocks straight from the input and checks them in the same pass:
  // a bad value there is reported at its position, and no token of the cache changes (only page
  // slots past the quantized length may have been written)
  constexpr int H = 2, D = 128, N = 700;
  using C = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 32, skv::Axis::Token>, D, 64,
                              64, skv::Options<skv::Sinks<4>>>;
  const auto k = random_tokens(N, H, D, 31), v = random_tokens(N, H, D, 32);
  for (int threads : {1, 2}) {
    C cache(H, 2 * N);
    cache.append(k.data(), v.data(), 50);
    const auto before = token_state(cache);
    skv::AppendOptions opt;
    opt.num_threads = threads;
    for (bool in_values : {false, true}) {
      for (int token : {300, 649}) {  // a block in the middle, and the last one quantized (not the ring)
        auto k2 = k, v2 = v;
        (in_values ? v2 : k2)[(static_cast<std::size_t>(token) * H + 1) * D + 7] = std::numeric_limits<float>::infinity();
        try {
          cache.append(k2.data(), v2.data(), N - 50, opt);
          FAIL() << "accepted an Inf at token " << token;
        } catch (const skv::Error& e) {
          const std::string want = std::string(in_values ? "values" : "keys") + " at token " + std::to_string(token) +
                                   ", head 1, dim 7";
          EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
        }
        EXPECT_EQ(cache.size(), 50);
        EXPECT_EQ(token_state(cache), before);
      }
    }
    // the same append without the bad value then gives the cache of a clean run
    cache.append(k.data() + 50 * H * D, v.data() + 50 * H * D, N - 50, opt);
    C clean(H, 2 * N);
    clean.append(k.data(), v.data(), N);
    EXPECT_EQ(live_state(cache), live_state(clean));
  }
}

TEST(Cache, CopiesAreIndependent) {
  constexpr int H = 1, D = 64;
  const auto k = random_tokens(64, H, D, 11), v = random_tokens(64, H, D, 12);
  skv::KVCache<4, 2, D> a(H, 64);
  a.append(k.data(), v.data(), 40);
  skv::KVCache<4, 2, D> b = a;
  EXPECT_EQ(page_bytes(a), page_bytes(b));
  b.append(k.data(), v.data(), 24);
  EXPECT_EQ(a.size(), 40);
  EXPECT_EQ(b.size(), 64);
  EXPECT_EQ(a.view().key(20, 0, 3), b.view().key(20, 0, 3));  // quantized in both
  EXPECT_EQ(a.view().key(35, 0, 3), k[35 * D + 3]);              // still in a's residual window
}

// An engine owns the memory: a shuffled block table over a shared pool gives the same tokens.
TEST(Cache, ViewOverEngineMemoryWithAShuffledBlockTable) {
  constexpr int H = 2, D = 64, N = 150;
  using C = skv::KVCache<2, 4, D>;
  using L = C::Layout;
  const auto k = random_tokens(N, H, D, 13), v = random_tokens(N, H, D, 14);
  C owned(H, N);
  owned.append(k.data(), v.data(), N);

  std::vector<std::uint8_t> pool(L::page_bytes(H) * 7);
  std::vector<float> ring(L::residual_floats(H));
  const std::vector<std::int32_t> table = {5, 2, 6};
  skv::SequenceView<L> view;
  view.pages = pool.data();
  view.block_table = table.data();
  view.residual = ring.data();
  view.num_pages = 7;
  view.max_pages = 3;
  view.num_kv_heads = H;
  static_assert(std::is_trivially_copyable<skv::SequenceView<L>>::value, "views go into kernels by value");
  skv::append(view, k.data(), v.data(), 100);
  skv::append(view, k.data() + 100 * H * D, v.data() + 100 * H * D, N - 100);
  EXPECT_EQ(view.length, N);
  const auto ov = owned.view();
  for (int t = 0; t < N; ++t)
    for (int c = 0; c < D; ++c) {
      ASSERT_EQ(view.key(t, 1, c), ov.key(t, 1, c));
      ASSERT_EQ(view.value(t, 0, c), ov.value(t, 0, c));
    }
  // a block table entry outside the pool is an error, and nothing is written
  std::vector<std::int32_t> bad = {0, 9};
  skv::SequenceView<L> bv = view;
  bv.block_table = bad.data();
  bv.max_pages = 2;
  bv.length = 90;  // the next 10 tokens complete block [64, 96), which lives on logical page 1
  const auto pool_before = pool;
  EXPECT_THROW(skv::append(bv, k.data(), v.data(), 10), skv::Error);
  EXPECT_EQ(bv.length, 90);
  EXPECT_EQ(pool, pool_before);
  skv::SequenceView<L> null_view = view;
  null_view.residual = nullptr;
  EXPECT_THROW(skv::append(null_view, k.data(), v.data(), 1), skv::Error);
}

// Two entries of one sequence's block table naming the same pool page would let a later block
// overwrite an earlier one: append finds the repeat when it starts the page, and writes nothing.
TEST(Cache, AppendRejectsAPageUsedTwiceByOneSequence) {
  constexpr int H = 1, D = 64, N = 200;
  using L = skv::KVCache<4, 2, D>::Layout;
  const auto k = random_tokens(N, H, D, 40), v = random_tokens(N, H, D, 41);
  for (int chunk : {1, 7, 200}) {
    std::vector<std::uint8_t> pool(L::page_bytes(H) * 4);
    std::vector<float> ring(L::residual_floats(H));
    const std::vector<std::int32_t> table = {3, 1, 3, 0};
    skv::SequenceView<L> view;
    view.pages = pool.data();
    view.block_table = table.data();
    view.residual = ring.data();
    view.num_pages = 4;
    view.max_pages = 4;
    view.num_kv_heads = H;
    int done = 0;
    bool threw = false;
    while (done < N && !threw) {
      const int n = std::min(chunk, N - done);
      const int before = view.length;
      const auto pool_before = pool;
      try {
        skv::append(view, k.data() + static_cast<std::size_t>(done) * H * D, v.data() + static_cast<std::size_t>(done) * H * D, n);
        done += n;
      } catch (const skv::Error& e) {
        threw = true;
        EXPECT_NE(std::string(e.what()).find("entries 0 and 2 both name pool page 3"), std::string::npos) << e.what();
        EXPECT_EQ(view.length, before);
        EXPECT_EQ(pool, pool_before);
        // the first block of logical page 2 (quantized index 128) is what this call would have written
        EXPECT_GT(L::quantized_length(before + n), 128);
        EXPECT_LE(L::quantized_length(before), 128);
      }
    }
    EXPECT_TRUE(threw) << chunk;
  }
}

// A view's capacity is computed in 64 bits and saturates at INT_MAX (a length is an int), so a huge
// block table neither overflows nor blocks appends.
TEST(Cache, CapacityOfHugeViewsDoesNotOverflow) {
  using L = skv::KVCache<2, 2, 8>::Layout;
  skv::SequenceView<L> view;
  view.max_pages = std::numeric_limits<int>::max() / 64 + 1;
  EXPECT_EQ(view.capacity(), std::numeric_limits<int>::max());
  view.max_pages = std::numeric_limits<int>::max();
  EXPECT_EQ(view.capacity(), std::numeric_limits<int>::max());
  view.max_pages = 1000;
  EXPECT_EQ(view.capacity(), 64000 + 31);  // the pages, and 31 tokens waiting for their block in the ring

  std::vector<std::uint8_t> pool(L::page_bytes(1) * 2);
  std::vector<float> ring(L::residual_floats(1));
  std::vector<std::int32_t> table = {1, 0};
  view.pages = pool.data();
  view.block_table = table.data();
  view.residual = ring.data();
  view.num_pages = 2;
  view.max_pages = std::numeric_limits<int>::max() / 64 + 1;  // more entries than exist: only those written are read
  view.num_kv_heads = 1;
  const auto k = random_tokens(100, 1, 8, 42), v = random_tokens(100, 1, 8, 43);
  skv::append(view, k.data(), v.data(), 100);
  EXPECT_EQ(view.length, 100);
  EXPECT_EQ(view.quantized_length(), 96);
}

// Shapes no host can hold are an skv::Error before anything is allocated, and the fp16 append checks
// its arguments before it widens them into float copies.
TEST(Cache, AbsurdSizesAreErrorsBeforeAnyAllocation) {
  EXPECT_THROW((skv::KVCache<4, 2>(std::numeric_limits<int>::max(), 0)), skv::Error);
  EXPECT_THROW((skv::KVCache<4, 2>(std::numeric_limits<int>::max(), 1 << 20)), skv::Error);
  EXPECT_THROW((skv::KVCache<8, 8>(1 << 16, std::numeric_limits<int>::max())), skv::Error);
  try {
    skv::KVCache<4, 2>(std::numeric_limits<int>::max(), 0);
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than 2^40 bytes"), std::string::npos) << e.what();
  }

  using L = skv::KVCache<4, 2, 64>::Layout;
  std::vector<std::uint8_t> pool(L::page_bytes(1));
  std::vector<float> ring(L::residual_floats(1));
  const std::vector<std::int32_t> table = {0};
  skv::SequenceView<L> view;
  view.pages = pool.data();
  view.block_table = table.data();
  view.residual = ring.data();
  view.num_pages = 1;
  view.max_pages = 1;
  view.num_kv_heads = 1;
  std::vector<skv::fp16> hk(64, skv::to_fp16(1.0f)), hv = hk;
  // 2^31 tokens would be 2 * 2^31 * 64 floats of copies: the capacity check comes first
  EXPECT_THROW(skv::append(view, hk.data(), hv.data(), std::numeric_limits<int>::max()), skv::Error);
  skv::SequenceView<L> bad = view;
  bad.residual = nullptr;
  EXPECT_THROW(skv::append(bad, hk.data(), hv.data(), std::numeric_limits<int>::max()), skv::Error);
  EXPECT_EQ(view.length, 0);
}

// The 8-bit ring's row encoder (cache/ring.hpp) takes the range in vectors of 16 or 8 elements and
// the codes 8 at a time where the build has AVX-512 or AVX2 (this file is built once per instruction
// set, tests/host/simd.cmake): every row byte equals the encoder's scalar definition, on rows that put elements exactly on codes and
// half-codes, at the range's ends, in constant, tiny and limit rows, and at head_dims whose tail
// the vectors do not cover.
/// What `row`, the encoding of x, should hold by the scalar definition: its zero and step (checked
/// against the range of x) and the code of every element.
template <int D>
std::vector<std::uint8_t> int8_row_by_definition(const float* x, const std::uint8_t* row) {
  using Row = skv::RingRow<std::uint8_t, D>;
  const float lo = *std::min_element(x, x + D), hi = *std::max_element(x, x + D);
  const float z = Row::zero(row), s = Row::step(row);
  EXPECT_EQ(z, -skv::to_float(skv::to_fp16(-lo, skv::Round::Up)));
  EXPECT_EQ(s, hi > z ? skv::to_float(skv::to_fp16((hi - z) / 255.0f, skv::Round::Up)) : 0.0f);
  std::vector<std::uint8_t> want(row, row + Row::kElements);
  for (int c = 0; c < D; ++c) want[c] = s > 0.0f ? Row::code(x[c], z, s, hi) : 0;
  return want;
}

template <int D>
void check_int8_rows(unsigned seed) {
  using Row = skv::RingRow<std::uint8_t, D>;
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<std::vector<float>> rows;
  for (float scale : {1e-3f, 1.0f, 37.0f, 3000.0f}) {
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> x(D);
      for (float& e : x) e = g(rng) * scale;
      rows.push_back(x);
      x[rep % D] *= 40;  // an outlier
      rows.push_back(x);
    }
  }
  for (int k : {0, 1, 2}) {  // elements on the codes, on the half-codes and just below them
    std::vector<float> x(D);
    const float z = -1.0f, s = 2.0f / 255.0f;
    for (int c = 0; c < D; ++c) {
      const float q = static_cast<float>((c * 37) % 256);
      x[c] = k == 0 ? z + q * s : (k == 1 ? z + (q + 0.5f) * s : std::nextafter(z + (q + 0.5f) * s, -2.0f));
    }
    x[0] = -1.0f, x[1] = 1.0f;
    rows.push_back(x);
  }
  rows.emplace_back(D, 0.75f);                                            // constant
  rows.emplace_back(D, 0.1f);                                             // constant, not an fp16
  std::vector<float> x(D);
  for (int c = 0; c < D; ++c) x[c] = c % 2 ? 32752.0f : -32752.0f;        // the quantizers' limits
  rows.push_back(x);
  for (int c = 0; c < D; ++c) x[c] = 32752.0f - static_cast<float>(c) * 0.37f;
  rows.push_back(x);
  for (int c = 0; c < D; ++c) x[c] = std::ldexp(static_cast<float>(c), -30);  // subnormal zero and step
  rows.push_back(x);
  for (int c = 0; c < D; ++c) x[c] = 100.0f + 1e-4f * static_cast<float>(c);  // narrower than the zero's ulp
  rows.push_back(x);
  // a minimum of zero with both signs of zero, in either order: the same bytes (z is +0)
  std::vector<float> pm(D, 0.5f), mp(D, 0.5f);
  for (int c = 0; c < D; c += 2) {
    pm[c] = mp[D - 1 - c] = -0.0f;
    pm[c + 1] = mp[D - 2 - c] = 0.0f;
  }
  std::uint8_t a[Row::kElements], b[Row::kElements];
  Row::store(pm.data(), a);
  Row::store(mp.data(), b);
  ASSERT_EQ(std::memcmp(a, b, sizeof a), 0);
  ASSERT_FALSE(std::signbit(Row::zero(a)));
  rows.push_back(pm);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    std::uint8_t row[Row::kElements];
    Row::store(rows[r].data(), row);
    const std::vector<std::uint8_t> want = int8_row_by_definition<D>(rows[r].data(), row);
    for (int i = 0; i < Row::kElements; ++i)
      ASSERT_EQ(row[i], want[static_cast<std::size_t>(i)]) << "row " << r << ", byte " << i;
  }
}

TEST(Cache, Int8RingRowsEqualTheEncodersScalarDefinition) {
  check_int8_rows<64>(1);
  check_int8_rows<128>(2);
  check_int8_rows<256>(3);
  check_int8_rows<40>(4);  // 2 x 16 + 8, 5 x 8
  check_int8_rows<24>(5);  // 16 + 8, 3 x 8
}

}  // namespace test_cache
