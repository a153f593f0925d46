// The fast CPU path: vector unpacking equals the scalar unpacking, fast decode attention matches the
// reference for every bit width, axis, GQA group, length and thread count, the fast block quantizer
// writes the same bytes as skv::quantize_rows, and the fp16 / fp32 baselines are exact attention.
#include <skv/attention/baseline.hpp>
#include <skv/attention/decode.hpp>
#include <skv/cache/quantize_block_fast.hpp>
#include <skv/skv.hpp>

#include <gtest/gtest.h>

#include "common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace test_decode {

using skv_test::random_floats;

template <int Bits>
void check_unpack(unsigned seed) {
  std::mt19937 rng(seed);
  for (int n : {8, 24, 32, 64, 96, 128, 136, 256}) {
    // the row sits at the very end of its buffer: the vector path must not read past it
    std::vector<std::uint8_t> bytes(skv::PackTraits<Bits>::bytes(n));
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    std::vector<float> out(n, -1.0f);
    skv::cpu::detail::unpack_row_f32<Bits>(bytes.data(), n, out.data());
    for (int i = 0; i < n; ++i)
      ASSERT_EQ(out[i], static_cast<float>(skv::unpack_code<Bits>(bytes.data(), i))) << "bits " << Bits << " code " << i;
  }
}

TEST(CpuFast, VectorUnpackEqualsScalarUnpackForEveryWidth) {
  check_unpack<1>(1);
  check_unpack<2>(2);
  check_unpack<3>(3);
  check_unpack<4>(4);
  check_unpack<5>(5);
  check_unpack<6>(6);
  check_unpack<7>(7);
  check_unpack<8>(8);
}

// PackedRows hands the dot and accumulate kernels codes straight from the cache: every vector and
// every single code it reads equals the scalar unpack_code, for rows back to back in one buffer,
// the last of them at its very end.
template <int Bits>
void check_packed_rows(unsigned seed) {
  constexpr int kRows = 3, kCodes = 128;
  const std::size_t stride = skv::PackTraits<Bits>::bytes(kCodes);
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> bytes(kRows * stride);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  const skv::cpu::detail::PackedRows<Bits> rows{bytes.data(), stride};
  for (int r = 0; r < kRows; ++r) {
    const std::uint8_t* row = bytes.data() + r * stride;
    for (int c = 0; c < kCodes; ++c)
      ASSERT_EQ(rows.at(r, c), static_cast<float>(skv::unpack_code<Bits>(row, c))) << "bits " << Bits << " row " << r;
    if constexpr (skv::cpu::detail::kPackedRowVectors<Bits>) {
      for (int c = 0; c < kCodes; c += skv::cpu::detail::kVecWidth) {
        float lanes[skv::cpu::detail::kVecWidth];
        skv::cpu::detail::vstore(lanes, rows.from(r).load(0, c));
        for (int l = 0; l < skv::cpu::detail::kVecWidth; ++l)
          ASSERT_EQ(lanes[l], static_cast<float>(skv::unpack_code<Bits>(row, c + l))) << "bits " << Bits << " code " << c + l;
      }
    }
  }
}

TEST(CpuFast, PackedRowsEqualScalarUnpack) {
  check_packed_rows<2>(11);
  check_packed_rows<3>(12);
  check_packed_rows<4>(13);
  check_packed_rows<8>(14);
}

// The fast path feeds exp_shifted every x - max(x): any value in [-inf, 0]. Down to -87 the result
// is within 4e-7 relative of exp; below, where exp underflows, it is a tiny non-negative number
// (at most exp(-87)) that no sum of probabilities can notice, never a NaN or a negative value.
TEST(CpuFast, ExpMatchesLibm) {
  std::vector<float> x;
  for (int i = 0; i <= 4000; ++i) x.push_back(-87.0f * static_cast<float>(i) / 4000.0f);
  for (float v = -87.0f; v > -3e38f; v *= 1.37f) x.push_back(v);  // underflow down to -FLT_MAX
  x.push_back(-std::numeric_limits<float>::max());
  x.push_back(-std::numeric_limits<float>::infinity());
  x.push_back(-std::numeric_limits<float>::denorm_min());
  const int n = static_cast<int>(x.size());
  std::vector<float> out(x.size(), -1.0f);
  const float sum = skv::cpu::detail::exp_shifted(x.data(), 0.0f, n, out.data());
  double ref_sum = 0.0;
  const double tiny = std::exp(-87.0) * (1.0 + 1e-6);
  for (int i = 0; i < n; ++i) {
    const double e = std::exp(static_cast<double>(x[i]));
    ref_sum += e;
    if (x[i] >= -87.0f) {
      EXPECT_NEAR(out[i], e, 4e-7 * e) << x[i];
    } else {
      EXPECT_GE(out[i], 0.0f) << x[i];
      EXPECT_LE(out[i], tiny) << x[i];
    }
  }
  EXPECT_NEAR(sum, ref_sum, 4e-6 * ref_sum);  // a float sum of 4000 terms
  // the same through a shift: x - m with m > 0, and the largest logits a cache can produce
  const float m = 3e38f;
  std::vector<float> y = {m, m - 1e33f, 0.0f, -m};
  std::vector<float> oy(y.size());
  skv::cpu::detail::exp_shifted(y.data(), m, static_cast<int>(y.size()), oy.data());
  EXPECT_EQ(oy[0], 1.0f);
  for (std::size_t i = 1; i < y.size(); ++i) EXPECT_TRUE(oy[i] >= 0.0f && oy[i] <= tiny) << i;
}

using skv_test::max_abs_value;  // the largest |value| the attention can see bounds the output error

/// Fast vs reference for one cache: every query head, several thread counts and split sizes.
template <class Cache>
void check_against_reference(int kv_heads, int group, int length, unsigned seed) {
  constexpr int D = Cache::kHeadDim;
  Cache cache(kv_heads, length + 3);
  const auto k = random_floats(static_cast<std::size_t>(length) * kv_heads * D, seed, 1.0f, 3.0f);
  const auto v = random_floats(static_cast<std::size_t>(length) * kv_heads * D, seed + 1, 0.7f, -1.0f);
  cache.append(k.data(), v.data(), length);
  const int nq = kv_heads * group;
  const auto q = random_floats(static_cast<std::size_t>(nq) * D, seed + 2, 1.5f);
  const float scale = skv::cpu::default_scale<typename Cache::Layout>();
  std::vector<float> ref(static_cast<std::size_t>(nq) * D), out(ref.size());
  skv::cpu::decode_attention_reference(cache.view(), q.data(), nq, ref.data(), scale);
  const float tol = skv::cpu::kFastTolerance * (1.0f + max_abs_value(cache.view()));
  for (int threads : {1, 2}) {
    for (int split : {0, 64, 96}) {
      skv::cpu::DecodeOptions opt;
      opt.num_threads = threads;
      opt.split_tokens = split;
      std::fill(out.begin(), out.end(), 1e30f);
      skv::cpu::decode_attention(cache.view(), q.data(), nq, out.data(), scale, opt);
      for (std::size_t i = 0; i < out.size(); ++i)
        ASSERT_NEAR(out[i], ref[i], tol) << "K" << Cache::kKeyBits << "V" << Cache::kValueBits << " length " << length
                                         << " heads " << kv_heads << "x" << group << " threads " << threads
                                         << " split " << split << " at " << i;
    }
  }
}

template <class Cache>
void check_shapes(unsigned seed) {
  // GQA 1 / 4 / 8; lengths: empty, 1 token, inside the first block, ragged, several pages
  const int lengths[] = {0, 1, 31, 33, 64, 95, 200, 517};
  int i = 0;
  for (int group : {1, 4, 8}) {
    for (int length : lengths) {
      const int kv_heads = 1 + (i++ % 3);
      check_against_reference<Cache>(kv_heads, group, length, seed + 17 * static_cast<unsigned>(i));
    }
  }
}

TEST(CpuFast, MatchesReferenceK4V2) { check_shapes<skv::KVCache<4, 2>>(100); }
TEST(CpuFast, MatchesReferenceK1V8) { check_shapes<skv::KVCache<1, 8>>(200); }
TEST(CpuFast, MatchesReferenceK2V7) { check_shapes<skv::KVCache<2, 7>>(300); }
TEST(CpuFast, MatchesReferenceK3V6) { check_shapes<skv::KVCache<3, 6>>(400); }
TEST(CpuFast, MatchesReferenceK4V5) { check_shapes<skv::KVCache<4, 5>>(500); }
TEST(CpuFast, MatchesReferenceK5V4) { check_shapes<skv::KVCache<5, 4>>(600); }
TEST(CpuFast, MatchesReferenceK6V3) { check_shapes<skv::KVCache<6, 3>>(700); }
TEST(CpuFast, MatchesReferenceK7V2) { check_shapes<skv::KVCache<7, 2>>(800); }
TEST(CpuFast, MatchesReferenceK8V1) { check_shapes<skv::KVCache<8, 1>>(900); }

// Other axes, schemes, scale types, head dims (with a tail shorter than a vector) and residual windows.
using TokenKeysChannelValues = skv::BasicKVCache<skv::Quantizer<3, 16, skv::Axis::Token>,
                                                 skv::Quantizer<5, 32, skv::Axis::Channel>, 64, 32, 32>;
using SymmetricBf16 = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel, skv::Scheme::Symmetric, skv::bf16>,
                                        skv::Quantizer<2, 8, skv::Axis::Token, skv::Scheme::Asymmetric, float>, 40, 64>;
using WideGroups = skv::BasicKVCache<skv::Quantizer<6, 64, skv::Axis::Channel>,
                                     skv::Quantizer<3, 32, skv::Axis::Token, skv::Scheme::Symmetric>, 96, 128, 64>;

TEST(CpuFast, MatchesReferenceTokenAxisKeysChannelAxisValues) { check_shapes<TokenKeysChannelValues>(1000); }
TEST(CpuFast, MatchesReferenceSymmetricBf16AndNarrowValueGroups) { check_shapes<SymmetricBf16>(1100); }
TEST(CpuFast, MatchesReferenceWideGroupsAndResidualWindow) { check_shapes<WideGroups>(1200); }

TEST(CpuFast, BatchOfRaggedSequencesEqualsOneCallPerSequence) {
  using C = skv::KVCache<4, 2>;
  constexpr int D = C::kHeadDim;
  const int kv = 2, nq = 8;
  const int lengths[] = {1, 700, 64, 129, 0};
  std::vector<C> caches;
  std::vector<C::View> views;
  for (int b = 0; b < 5; ++b) {
    caches.emplace_back(kv, 1024);
    const auto k = random_floats(static_cast<std::size_t>(lengths[b]) * kv * D, 40u + b);
    const auto v = random_floats(static_cast<std::size_t>(lengths[b]) * kv * D, 50u + b);
    caches.back().append(k.data(), v.data(), lengths[b]);
  }
  for (auto& c : caches) views.push_back(c.view());
  const auto q = random_floats(static_cast<std::size_t>(5) * nq * D, 60);
  const float scale = 0.1f;
  for (int threads : {1, 2}) {
    skv::cpu::DecodeOptions opt;
    opt.num_threads = threads;
    opt.split_tokens = 128;  // the same split points in both calls, so the same float operations
    std::vector<float> out(q.size(), 1e30f), one(static_cast<std::size_t>(nq) * D);
    skv::cpu::decode_attention_batch(views.data(), 5, q.data(), nq, out.data(), scale, opt);
    for (int b = 0; b < 5; ++b) {
      skv::cpu::decode_attention(views[b], q.data() + b * nq * D, nq, one.data(), scale, opt);
      for (int i = 0; i < nq * D; ++i) ASSERT_EQ(out[static_cast<std::size_t>(b) * nq * D + i], one[i]) << b;
    }
  }
  // an empty sequence gives zeros
  std::vector<float> out(q.size(), 1.0f);
  skv::cpu::decode_attention_batch(views.data(), 5, q.data(), nq, out.data(), scale);
  for (int i = 0; i < nq * D; ++i) EXPECT_EQ(out[static_cast<std::size_t>(4) * nq * D + i], 0.0f);
}

// Keys whose channels sit far from zero (an offset of 200 on four channels, as real models have)
// get zero points near 2048; the fast path must keep its documented tolerance on them too.
template <class Cache>
void check_offset_channels(unsigned seed) {
  constexpr int D = Cache::kHeadDim, H = 2, G = 4, N = 517;
  Cache cache(H, N);
  auto k = random_floats(static_cast<std::size_t>(N) * H * D, seed, 3.0f);
  for (std::size_t i = 0; i < k.size(); ++i)
    if (i % D == 3 || i % D == 17 || i % D == 64 || i % D == 101) k[i] += 200.0f;
  const auto v = random_floats(static_cast<std::size_t>(N) * H * D, seed + 1);
  cache.append(k.data(), v.data(), N);
  const auto q = random_floats(static_cast<std::size_t>(H) * G * D, seed + 2, 4.0f);
  const float scale = skv::cpu::default_scale<typename Cache::Layout>();
  std::vector<float> ref(q.size()), out(q.size());
  skv::cpu::decode_attention_reference(cache.view(), q.data(), H * G, ref.data(), scale);
  skv::cpu::decode_attention(cache.view(), q.data(), H * G, out.data(), scale);
  const float tol = skv::cpu::kFastTolerance * (1.0f + max_abs_value(cache.view()));
  float worst = 0.0f;
  for (std::size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]));
  EXPECT_LE(worst, tol) << "K" << Cache::kKeyBits << "V" << Cache::kValueBits << " seed " << seed;
}

TEST(CpuFast, MatchesReferenceOnKeysWithOffsetChannels) {
  for (unsigned seed : {1u, 2u, 3u, 4u}) {
    check_offset_channels<skv::KVCache<4, 2>>(seed);
    check_offset_channels<skv::KVCache<8, 4>>(seed);
    check_offset_channels<skv::KVCache<2, 2>>(seed);
    check_offset_channels<skv::KVCache<4, 4, 64>>(seed);
  }
}

// A block-table entry outside the pool is an error of the call, found before any page is read.
TEST(CpuFast, RejectsBlockTableEntriesOutsideThePool) {
  using C = skv::KVCache<4, 2, 64>;
  using L = C::Layout;
  constexpr int H = 1, D = 64, N = 150;
  const auto k = random_floats(static_cast<std::size_t>(N) * H * D, 5), v = random_floats(k.size(), 6);
  std::vector<std::uint8_t> pool(L::page_bytes(H) * 3);
  std::vector<float> ring(L::residual_floats(H));
  std::vector<std::int32_t> table = {2, 0, 1};
  skv::SequenceView<L> view;
  view.pages = pool.data();
  view.block_table = table.data();
  view.residual = ring.data();
  view.num_pages = 3;
  view.max_pages = 3;
  view.num_kv_heads = H;
  skv::append(view, k.data(), v.data(), N);
  const auto q = random_floats(static_cast<std::size_t>(2) * D, 7);
  std::vector<float> out(q.size());
  skv::cpu::decode_attention(view, q.data(), 2, out.data());  // valid: fine
  for (std::int32_t bad : {1000, -1, 3}) {
    table[1] = bad;
    EXPECT_THROW(skv::cpu::decode_attention(view, q.data(), 2, out.data()), skv::Error) << bad;
    EXPECT_THROW(skv::cpu::decode_attention_reference(view, q.data(), 2, out.data(), 0.1f), skv::Error) << bad;
    EXPECT_THROW(skv::cpu::decode_attention_batch(&view, 1, q.data(), 2, out.data(), 0.1f), skv::Error) << bad;
  }
  // entries past the quantized tokens are not read, so they may hold anything
  table[1] = 0;
  table[2] = -5;
  view.length = 100;  // quantized tokens [0, 96): pages 0 and 1
  EXPECT_NO_THROW(skv::cpu::decode_attention(view, q.data(), 2, out.data()));
}

// Groups whose magnitudes are float denormals (below ~1e-42) have a scale that underflows to 0:
// they are stored as zeros, and every path (scalar, vector quantizer, fast decode, reference) agrees.
TEST(CpuFast, GroupsOfDenormalsAreStoredAsZerosOnEveryPath) {
  using C = skv::KVCache<4, 2, 64>;
  constexpr int H = 1, D = 64, N = 96;
  auto k = random_floats(static_cast<std::size_t>(N) * H * D, 8);
  auto v = random_floats(k.size(), 9);
  const float tiny = std::numeric_limits<float>::denorm_min();
  for (int t = 32; t < 64; ++t)  // the second key group of every channel: constant, or two neighbouring denormals
    for (int c = 0; c < D; ++c)
      k[static_cast<std::size_t>(t) * D + c] = c % 2 ? 1e-42f : tiny * static_cast<float>((t + c) % 2);
  for (int c = 0; c < D; ++c) v[static_cast<std::size_t>(40) * D + c] = -tiny * static_cast<float>(c % 2);  // a value row
  C cache(H, N);
  cache.append(k.data(), v.data(), N);
  const auto view = cache.view();
  for (int c = 0; c < D; ++c) {
    const auto kp = view.keys(40, 0).params(40, c);
    ASSERT_EQ(kp.scale, 0.0f) << c;
    ASSERT_EQ(kp.zero, 0.0f) << c;
    ASSERT_EQ(view.key(40, 0, c), 0.0f) << c;
    ASSERT_EQ(view.value(40, 0, c), 0.0f) << c;
  }
  const auto q = random_floats(static_cast<std::size_t>(2) * D, 10);
  std::vector<float> ref(q.size()), out(q.size());
  skv::cpu::decode_attention_reference(view, q.data(), 2, ref.data(), 0.125f);
  skv::cpu::decode_attention(view, q.data(), 2, out.data(), 0.125f);
  const float tol = skv::cpu::kFastTolerance * (1.0f + max_abs_value(view));
  for (std::size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isfinite(ref[i])) << i;
    ASSERT_NEAR(out[i], ref[i], tol) << i;
  }
}

// The fast path folds the softmax scale into the query in float: scales whose product with q could
// overflow a logit are rejected (they gave NaN); large scales below that bound still work.
TEST(CpuFast, RejectsScalesWhoseLogitsCouldOverflow) {
  skv::KVCache<4, 2> cache(1, 64);
  const auto k = random_floats(64 * 128, 11), v = random_floats(64 * 128, 12);
  cache.append(k.data(), v.data(), 64);
  const auto q = random_floats(128, 13);
  std::vector<float> out(128), ref(128);
  for (float scale : {1e38f, -1e38f, 3e33f}) {
    EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 1, out.data(), scale), skv::Error) << scale;
    EXPECT_THROW(skv::cpu::decode_attention_reference(cache, q.data(), 1, out.data(), scale), skv::Error) << scale;
  }
  skv::cpu::decode_attention(cache, q.data(), 1, out.data(), 1e20f);
  skv::cpu::decode_attention_reference(cache, q.data(), 1, ref.data(), 1e20f);
  for (int i = 0; i < 128; ++i) {
    ASSERT_TRUE(std::isfinite(out[i])) << i;
    ASSERT_NEAR(out[i], ref[i], 1e-3f) << i;  // one token takes all the weight on both paths
  }
}

// Attention only reads the cache: many threads decoding one const cache at once get exactly what one
// thread gets (each call single-threaded, so every call does the same float operations).
TEST(CpuFast, ConcurrentDecodesOfOneConstCacheAgree) {
  using C = skv::KVCache<4, 2>;
  const int kv = 2, nq = 8, n = 300;
  C cache(kv, n);
  const auto k = random_floats(static_cast<std::size_t>(n) * kv * 128, 70), v = random_floats(k.size(), 71);
  cache.append(k.data(), v.data(), n);
  const C& shared = cache;
  const auto q = random_floats(static_cast<std::size_t>(nq) * 128, 72);
  skv::cpu::DecodeOptions one;
  one.num_threads = 1;
  std::vector<float> want(q.size());
  skv::cpu::decode_attention(shared, q.data(), nq, want.data(), 0.1f, one);
  std::vector<std::vector<float>> got(4, std::vector<float>(q.size()));
  std::vector<int> same(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      int ok = 1;
      for (int rep = 0; rep < 20; ++rep) {
        skv::cpu::decode_attention(shared, q.data(), nq, got[static_cast<std::size_t>(t)].data(), 0.1f, one);
        ok &= got[static_cast<std::size_t>(t)] == want;
      }
      same[static_cast<std::size_t>(t)] = ok;
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(same[static_cast<std::size_t>(t)], 1) << t;
}

TEST(CpuFast, RejectsBadArguments) {
  skv::KVCache<4, 2> cache(2, 64);
  std::vector<float> q(4 * 128, 0.5f), out(4 * 128);
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 3, out.data()), skv::Error);
  EXPECT_THROW(skv::cpu::decode_attention(cache, nullptr, 4, out.data()), skv::Error);
  q[5] = std::nanf("");
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 4, out.data()), skv::Error);
}

// ---- fast block quantizer: identical bytes ----------------------------------------------------------

/// quantize_rows_fast<.., Clip, T> against the scalar quantize_rows<.., Clip> on the same values
/// (T inputs widened to float for the scalar one): the same bytes, metadata and codes.
template <class Q, int D, int P, bool Clip, class T>
void check_block_bytes_as(const std::vector<float>& x32, std::size_t stride, int rows, int variant) {
  using TL = skv::TensorLayout<Q, D, P>;
  std::vector<T> x(x32.size());
  std::vector<float> widened(x32.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = skv::from_float<T>(x32[i]);
    widened[i] = skv::to_float(x[i]);
  }
  for (int slot0 : {0, P - rows}) {
    std::vector<std::uint8_t> a(TL::kBytes, 0xAB), b(TL::kBytes, 0xAB);
    skv::quantize_rows<Q, D, P, Clip>(widened.data(), stride, rows, slot0, a.data());
    skv::quantize_rows_fast<Q, D, P, Clip>(x.data(), stride, rows, slot0, b.data());
    ASSERT_EQ(a, b) << "bits " << Q::kBits << " group " << Q::kGroupSize << " variant " << variant << " clip " << Clip
                    << " input bytes " << sizeof(T);
  }
}

template <class Q, int D, int P>
void check_block_bytes(unsigned seed) {
  constexpr int kRows = Q::kAxis == skv::Axis::Channel ? Q::kGroupSize : 4;
  const std::size_t stride = 3 * D;  // rows of one head inside [token][head][dim]
  for (int variant = 0; variant < 7; ++variant) {
    // variant 4: denormals, whose groups' scales underflow to 0
    const float sigma = variant == 3 ? 1e-3f : (variant == 4 ? 1e-42f : 2.0f);
    auto x = random_floats(stride * kRows, seed + variant, sigma, variant == 1 ? 40.0f : 0.0f);
    if (variant == 2) {  // constant groups, zeros and exact integers
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 5 == 0) ? 0.0f : (i % 3 == 0 ? -2.0f : 3.0f);
    }
    if (variant == 5) {  // outliers: what clipping is for
      for (std::size_t i = 0; i < x.size(); i += 37) x[i] *= 30.0f;
    }
    if (variant == 6) {  // ranges a few float steps wide (shrunk candidates collapse to constants)
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::nextafter(1.5f, i % 3 == 0 ? 2.0f : 0.0f);
    }
    constexpr bool kClip = !Q::kCodebook;  // a codebook has no clipping search
    check_block_bytes_as<Q, D, P, false, float>(x, stride, kRows, variant);
    check_block_bytes_as<Q, D, P, kClip, float>(x, stride, kRows, variant);
    if (variant != 4) {  // fp16 / bf16 inputs (denormals of float have no fp16 value)
      check_block_bytes_as<Q, D, P, false, skv::fp16>(x, stride, kRows, variant);
      check_block_bytes_as<Q, D, P, kClip, skv::fp16>(x, stride, kRows, variant);
      check_block_bytes_as<Q, D, P, false, skv::bf16>(x, stride, kRows, variant);
      check_block_bytes_as<Q, D, P, kClip, skv::bf16>(x, stride, kRows, variant);
    }
  }
}

template <int Bits>
void check_block_bytes_all_axes() {
  check_block_bytes<skv::Quantizer<Bits, 32, skv::Axis::Channel>, 128, 64>(Bits * 10);
  check_block_bytes<skv::Quantizer<Bits, 64, skv::Axis::Token>, 128, 64>(Bits * 10 + 1);
  check_block_bytes<skv::Quantizer<Bits, 8, skv::Axis::Token, skv::Scheme::Asymmetric, skv::bf16>, 40, 16>(Bits * 10 + 2);
  check_block_bytes<skv::Quantizer<Bits, 16, skv::Axis::Channel, skv::Scheme::Asymmetric, float>, 24, 32>(Bits * 10 + 3);
  if (Bits <= 4) {
    constexpr int B = Bits <= 4 ? Bits : 4;
    check_block_bytes<skv::Quantizer<B, 64, skv::Axis::Token, skv::Scheme::LloydMax>, 128, 64>(Bits * 10 + 6);
    check_block_bytes<skv::Quantizer<B, 8, skv::Axis::Token, skv::Scheme::LloydMax, skv::bf16>, 40, 16>(Bits * 10 + 7);
  }
  if (Bits >= 2) {
    check_block_bytes<skv::Quantizer<Bits < 2 ? 2 : Bits, 32, skv::Axis::Token, skv::Scheme::Symmetric>, 64, 64>(Bits * 10 + 4);
    check_block_bytes<skv::Quantizer<Bits < 2 ? 2 : Bits, 32, skv::Axis::Channel, skv::Scheme::Symmetric>, 64, 64>(
        Bits * 10 + 5);
  }
}

TEST(CpuFast, FastBlockQuantizerWritesTheSameBytesForEveryWidthWithAndWithoutClipping) {
  check_block_bytes_all_axes<1>();
  check_block_bytes_all_axes<2>();
  check_block_bytes_all_axes<3>();
  check_block_bytes_all_axes<4>();
  check_block_bytes_all_axes<5>();
  check_block_bytes_all_axes<6>();
  check_block_bytes_all_axes<7>();
  check_block_bytes_all_axes<8>();
}

/// fit_groups (vectorized with AVX-512 for fp16 asymmetric parameters) against Quantizer::fit for
/// minima / maxima of every kind: random ranges at many magnitudes, constant groups (representable
/// in fp16 or not, zero, negative zero), one-sided groups far from the origin, fp16 subnormal scales.
template <int Bits>
void check_fit_groups() {
  using Q = skv::Quantizer<Bits, 32, skv::Axis::Channel>;
  std::mt19937 rng(77u + Bits);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> e(-30, 15);
  constexpr int kN = 4096;
  std::vector<float> mn(kN), mx(kN);
  for (int i = 0; i < kN; ++i) {
    const float m = std::ldexp(1.0f, e(rng));
    float a = u(rng) * m, b = u(rng) * m;
    switch (i % 8) {
      case 0: b = a; break;                                      // constant, usually not an fp16 value
      case 1: a = b = std::ldexp(std::round(u(rng) * 1024.0f), e(rng) / 3); break;  // constant, fp16 value
      case 2: a = 0.0f; b = i % 16 == 2 ? -0.0f : 0.0f; break;  // zero
      case 3: a = std::fabs(a) + m; b = a + m * 1e-3f; break;    // far from the origin
      default: break;
    }
    mn[i] = std::min(a, b);
    mx[i] = std::max(a, b);
  }
  std::vector<skv::fp16> s(kN), z(kN);
  std::vector<float> sf(kN), zf(kN);
  skv::detail::fit_groups<Q, false>(nullptr, 0, mn.data(), mx.data(), kN, s.data(), z.data(), sf.data(), zf.data());
  for (int i = 0; i < kN; ++i) {
    const auto st = Q::fit(mn[i], mx[i]);
    ASSERT_EQ(s[i].bits, st.scale.bits) << Bits << " bits, group " << i << ": " << mn[i] << " .. " << mx[i];
    ASSERT_EQ(z[i].bits, st.zero.bits) << Bits << " bits, group " << i << ": " << mn[i] << " .. " << mx[i];
    ASSERT_EQ(sf[i], skv::to_float(st.scale));
    ASSERT_EQ(zf[i], skv::to_float(st.zero));
  }
}

TEST(CpuFast, VectorFitEqualsQuantizerFit) {
  check_fit_groups<1>();
  check_fit_groups<2>();
  check_fit_groups<4>();
  check_fit_groups<8>();
}

TEST(CpuFast, AppendedCacheBytesEqualTheScalarQuantizer) {
  using C = skv::KVCache<4, 2>;
  using L = C::Layout;
  constexpr int kHeads = 3, kTokens = 300;
  C cache(kHeads, kTokens);
  const auto k = random_floats(static_cast<std::size_t>(kTokens) * kHeads * 128, 7, 1.0f, 5.0f);
  const auto v = random_floats(static_cast<std::size_t>(kTokens) * kHeads * 128, 8);
  cache.append(k.data(), v.data(), 100);  // in two calls: blocks complete inside each
  cache.append(k.data() + 100 * kHeads * 128, v.data() + 100 * kHeads * 128, kTokens - 100);
  const auto view = cache.view();
  // the expected pool, written block by block by the scalar quantizer into zeroed pages
  std::vector<std::uint8_t> expected(L::page_bytes(kHeads) * view.max_pages, 0);
  const std::size_t stride = kHeads * 128;
  for (int first = 0; first < view.quantized_length(); first += L::kBlockTokens) {
    for (int h = 0; h < kHeads; ++h) {
      std::uint8_t* block = expected.data() + (first / L::kPageSize) * L::page_bytes(kHeads) + h * L::kHeadBytes;
      const std::size_t off = static_cast<std::size_t>(first) * stride + h * 128;
      skv::quantize_rows<C::KeyQuantizer, 128, 64>(k.data() + off, stride, 32, first % 64, block);
      skv::quantize_rows<C::ValueQuantizer, 128, 64>(v.data() + off, stride, 32, first % 64, block + L::Keys::kBytes);
    }
  }
  ASSERT_EQ(0, std::memcmp(expected.data(), view.pages, expected.size()));
}

// ---- rotation: the vector transform is the scalar one, bit for bit ----------------------------------

template <int D>
void check_rotation_bits(unsigned seed) {
  auto x = random_floats(D * 8, seed, 3.0f);
  for (int r = 0; r < 8; ++r) {
    float* v = x.data() + r * D;
    std::vector<float> want(v, v + D);
    // R x = H diag(s) x / sqrt(D), butterflies in the order of rotation.hpp's scalar loop
    for (int c = 0; c < D; ++c) want[c] *= skv::rotation_sign(skv::HadamardRotation<D>::kSeed, c);
    for (int h = 1; h < D; h *= 2)
      for (int i = 0; i < D; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          const float a = want[j], b = want[j + h];
          want[j] = a + b;
          want[j + h] = a - b;
        }
    const float norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    for (float& w : want) w *= norm;
    skv::HadamardRotation<D>::apply(v);
    for (int c = 0; c < D; ++c) ASSERT_EQ(v[c], want[c]) << "D " << D << " row " << r << " channel " << c;
  }
}

TEST(CpuFast, VectorRotationEqualsTheScalarButterflies) {
  check_rotation_bits<8>(50);
  check_rotation_bits<16>(51);
  check_rotation_bits<32>(52);
  check_rotation_bits<64>(53);
  check_rotation_bits<128>(54);
  check_rotation_bits<256>(55);
}

// ---- fp16 / bf16 queries and outputs ----------------------------------------------------------------

/// decode with T queries and outputs equals the float decode on the widened queries, rounded to T
/// once (the internal arithmetic is the float path's, so the match is exact).
template <class T, class Cache>
void check_typed_decode(unsigned seed) {
  constexpr int H = 2, G = 3, D = Cache::kHeadDim, N = 517, B = 2;
  Cache a(H, N), b(H, N);
  const auto k = random_floats(static_cast<std::size_t>(N) * H * D, seed, 1.0f, 2.0f);
  const auto v = random_floats(static_cast<std::size_t>(N) * H * D, seed + 1);
  a.append(k.data(), v.data(), N);
  b.append(k.data(), v.data(), 300);
  const std::vector<typename Cache::View> views{a.view(), b.view()};
  const std::size_t n = static_cast<std::size_t>(B) * H * G * D;
  const auto q32 = random_floats(n, seed + 2, 3.0f);
  std::vector<T> q(n), out(n);
  std::vector<float> widened(n), want(n);
  for (std::size_t i = 0; i < n; ++i) {
    q[i] = skv::from_float<T>(q32[i]);
    widened[i] = skv::to_float(q[i]);
  }
  for (int threads : {1, 2}) {
    skv::cpu::DecodeOptions opt;
    opt.num_threads = threads;
    opt.split_tokens = threads == 2 ? 128 : 0;
    skv::cpu::decode_attention_batch(views.data(), B, widened.data(), H * G, want.data(), 0.1f, opt);
    skv::cpu::decode_attention_batch(views.data(), B, q.data(), H * G, out.data(), 0.1f, opt);
    for (std::size_t i = 0; i < n; ++i)
      ASSERT_EQ(out[i].bits, skv::from_float<T>(want[i]).bits) << i << ": " << want[i] << " threads " << threads;
    // one sequence through decode_attention, the cache overload
    std::vector<T> one(n / B);
    skv::cpu::decode_attention(a, q.data(), H * G, one.data(), 0.1f, opt);
    for (std::size_t i = 0; i < one.size(); ++i) ASSERT_EQ(one[i].bits, out[i].bits) << i;
  }
  // a NaN query is rejected in every type
  q[5] = skv::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  EXPECT_THROW(skv::cpu::decode_attention(a, q.data(), H * G, out.data(), 0.1f), skv::Error);
}

TEST(CpuFast, Fp16AndBf16QueriesAndOutputsAreTheFloatPathRounded) {
  check_typed_decode<skv::fp16, skv::KVCache<4, 2>>(40);
  check_typed_decode<skv::bf16, skv::KVCache<4, 2>>(41);
  using Opts = skv::Options<skv::RotateKeys, skv::Sinks<4>>;
  using WithOptions = skv::BasicKVCache<skv::Quantizer<3, 32, skv::Axis::Channel>, skv::Quantizer<4, 32, skv::Axis::Token>,
                                        64, 64, 128, Opts>;
  check_typed_decode<skv::fp16, WithOptions>(42);
  check_typed_decode<skv::bf16, WithOptions>(43);
}

// ---- baselines ------------------------------------------------------------------------------------

template <class T>
void check_baseline(int kv, int group, int length, unsigned seed) {
  constexpr int D = 128;
  skv::cpu::DenseKVCache<T, D> cache(kv, length + 1);
  const auto k = random_floats(static_cast<std::size_t>(length) * kv * D, seed);
  const auto v = random_floats(static_cast<std::size_t>(length) * kv * D, seed + 1);
  cache.append(k.data(), v.data(), length);
  const int nq = kv * group;
  const auto q = random_floats(static_cast<std::size_t>(nq) * D, seed + 2);
  const float scale = 0.125f;
  for (int threads : {1, 2}) {
    skv::cpu::DecodeOptions opt;
    opt.num_threads = threads;
    opt.split_tokens = 64;
    std::vector<float> out(static_cast<std::size_t>(nq) * D);
    skv::cpu::decode_attention(cache.view(), q.data(), nq, out.data(), scale, opt);
    double vmax = 0.0;
    for (float x : v) vmax = std::max(vmax, static_cast<double>(std::fabs(skv::to_float(skv::from_float<T>(x)))));
    for (int h = 0; h < nq; ++h) {
      // exact attention in double over the stored (possibly fp16-rounded) keys and values
      const int kvh = h / group;
      std::vector<double> logit(static_cast<std::size_t>(length));
      double m = -1e300;
      for (int t = 0; t < length; ++t) {
        double s = 0.0;
        for (int c = 0; c < D; ++c)
          s += static_cast<double>(q[static_cast<std::size_t>(h) * D + c]) *
               skv::to_float(skv::from_float<T>(k[(static_cast<std::size_t>(t) * kv + kvh) * D + c]));
        logit[t] = s * scale;
        m = std::max(m, logit[t]);
      }
      double l = 0.0;
      std::vector<double> acc(D, 0.0);
      for (int t = 0; t < length; ++t) {
        const double p = std::exp(logit[t] - m);
        l += p;
        for (int c = 0; c < D; ++c)
          acc[c] += p * skv::to_float(skv::from_float<T>(v[(static_cast<std::size_t>(t) * kv + kvh) * D + c]));
      }
      for (int c = 0; c < D; ++c) {
        const double want = length ? acc[c] / l : 0.0;
        ASSERT_NEAR(out[static_cast<std::size_t>(h) * D + c], want, 2e-5 * (1.0 + vmax)) << h << " " << c;
      }
    }
  }
}

TEST(CpuFast, Fp32BaselineIsExactAttention) {
  check_baseline<float>(2, 4, 300, 1);
  check_baseline<float>(1, 1, 1, 2);
  check_baseline<float>(3, 8, 77, 3);
}

TEST(CpuFast, Fp16BaselineIsExactAttentionOverFp16Values) {
  check_baseline<skv::fp16>(2, 4, 300, 4);
  check_baseline<skv::fp16>(1, 1, 1, 5);
  check_baseline<skv::fp16>(3, 8, 0, 6);
}

}  // namespace test_decode
