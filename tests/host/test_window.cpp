// Sliding windows: decode and prefill with DecodeOptions / PrefillOptions::window against the double
// reference over exactly the window (windows of 1, 31, 32, 33, 100 and 512 tokens, caches of 0 to
// 5000 tokens, chunks straddling the window's and the groups' edges, GQA 1, 4 and 8, every option,
// kept or hidden sinks); window caches that hand pages back (memory constant over 100,000 tokens,
// token by token equal to an unbounded cache decoded with the same window, long appends, rollback);
// and the errors.
#include <skv/attention/prefill.hpp>
#include <skv/attention/decode.hpp>
#include <skv/skv.hpp>

#include <gtest/gtest.h>

#include "common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace test_window {

using skv_test::max_abs_value;
using skv_test::random_floats;

/// The largest |fast - reference| of decode and of a chunk's prefill with window `w` over `cache`.
template <class Cache>
void check_window(const Cache& cache, int nq, int chunk, int w, bool keep_sinks, unsigned seed, const char* what) {
  using L = typename Cache::Layout;
  constexpr int D = Cache::kHeadDim;
  const auto view = cache.view();
  const float scale = skv::cpu::default_scale<L>();
  const int first = skv::cpu::detail::window_start(view.length - std::max(chunk, 1), w);
  const float tol_decode = skv::cpu::kFastTolerance * (1.0f + max_abs_value(view, keep_sinks ? 0 : first));
  const float tol_prefill = skv::cpu::kPrefillTolerance * (1.0f + max_abs_value(view, keep_sinks ? 0 : first));
  // decode: the last token's query
  const auto q = random_floats(static_cast<std::size_t>(std::max(chunk, 1)) * nq * D, seed, 1.5f);
  std::vector<float> ref(static_cast<std::size_t>(nq) * D), out(ref.size());
  skv::cpu::decode_attention_reference(view, q.data(), nq, ref.data(), scale, w, keep_sinks);
  for (int threads : {1, 2}) {
    for (int split : {0, 64}) {
      skv::cpu::DecodeOptions opt;
      opt.num_threads = threads;
      opt.split_tokens = split;
      opt.window = w;
      opt.keep_sinks = keep_sinks;
      std::fill(out.begin(), out.end(), 1e30f);
      skv::cpu::decode_attention(view, q.data(), nq, out.data(), scale, opt);
      for (std::size_t i = 0; i < out.size(); ++i)
        ASSERT_NEAR(out[i], ref[i], tol_decode) << what << ": decode, window " << w << ", length " << view.length
                                                << ", keep_sinks " << keep_sinks << ", threads " << threads
                                                << ", split " << split << ", head " << i / D;
    }
  }
  if (chunk < 2 || chunk > view.length) return;
  // prefill: the chunk's queries, each with its own window
  std::vector<float> pref(q.size()), pout(q.size());
  skv::cpu::prefill_attention_reference(view, q.data(), chunk, nq, pref.data(), scale, w, keep_sinks);
  for (int rows : {0, 12}) {
    skv::cpu::PrefillOptions opt;
    opt.num_threads = 2;
    opt.query_rows = rows;
    opt.split_tokens = rows ? 96 : 0;
    opt.window = w;
    opt.keep_sinks = keep_sinks;
    std::fill(pout.begin(), pout.end(), 1e30f);
    skv::cpu::prefill_attention(view, q.data(), chunk, nq, pout.data(), scale, opt);
    float worst = 0.0f;
    std::size_t at = 0;
    for (std::size_t i = 0; i < pout.size(); ++i) {
      const float e = std::fabs(pout[i] - pref[i]);
      if (!(e <= worst)) {
        worst = e;
        at = i;
      }
    }
    ASSERT_LE(worst, tol_prefill) << what << ": prefill of " << chunk << ", window " << w << ", length "
                                  << view.length << ", keep_sinks " << keep_sinks << ", query rows " << rows
                                  << ", at query " << at / (static_cast<std::size_t>(nq) * D);
  }
}

/// A cache of `length` tokens appended in two parts (the second one the chunk, as an engine does).
template <class Cache>
Cache make_cache(int kv_heads, int length, int chunk, unsigned seed) {
  constexpr int D = Cache::kHeadDim;
  Cache cache(kv_heads, std::max(length, 1));
  const std::size_t row = static_cast<std::size_t>(kv_heads) * D;
  const auto k = random_floats(static_cast<std::size_t>(length) * row, seed, 2.0f, 3.0f);
  const auto v = random_floats(static_cast<std::size_t>(length) * row, seed + 1, 1.0f, -1.0f);
  const int prefix = length - std::min(chunk, length);
  cache.append(k.data(), v.data(), prefix);
  cache.append(k.data() + prefix * row, v.data() + prefix * row, length - prefix);
  return cache;
}

template <class Cache>
void check_config(const char* what, unsigned seed) {
  struct Case {
    int length, chunk, kv_heads, group;
  };
  // chunks straddle the window's edge and the groups' (32) and pages' (64) edges
  const Case cases[] = {{1, 1, 1, 4}, {31, 7, 2, 4}, {33, 33, 1, 8}, {100, 40, 1, 1},
                        {517, 64, 2, 4}, {700, 130, 1, 8}};
  for (const Case& c : cases) {
    const Cache cache = make_cache<Cache>(c.kv_heads, c.length, c.chunk, seed += 3);
    for (int w : {1, 31, 32, 33, 100, 512})
      for (bool keep : {false, true}) check_window(cache, c.kv_heads * c.group, c.chunk, w, keep, seed + 1, what);
  }
}

TEST(Window, MatchesReferenceOverExactlyTheWindow) { check_config<skv::KVCache<4, 2>>("k4v2", 10); }
TEST(Window, MatchesReferenceWithRotatedKeysAndSinks) {
  check_config<skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>>("k4v2 rot sinks", 20);
}
TEST(Window, MatchesReferenceWithEveryOptionAndAResidualWindow) {
  using C = skv::BasicKVCache<skv::Quantizer<3, 32, skv::Axis::Channel>, skv::Quantizer<3, 64, skv::Axis::Token>, 128,
                              64, 128, skv::Options<skv::RotateKeys, skv::Sinks<4>, skv::ClipKeys, skv::ClipValues>>;
  check_config<C>("k3v3 r128 every option", 30);
}
TEST(Window, MatchesReferenceOtherAxesAndWidths) {
  check_config<skv::BasicKVCache<skv::Quantizer<3, 16, skv::Axis::Token>, skv::Quantizer<5, 32, skv::Axis::Channel>, 64,
                                 32, 32>>("token keys, channel values", 40);
  check_config<skv::KVCache<8, 1, 64, skv::Sinks<70>>>("k8v1 many sinks", 50);
}

TEST(Window, LongCachesAndAnEmptyOne) {
  using C = skv::KVCache<2, 4, 128, skv::Sinks<4>>;
  // a 100-token chunk: 400 query rows, two query blocks of the schedule (kPrefillRows)
  const C cache = make_cache<C>(1, 5000, 100, 60);
  for (int w : {1, 33, 512, 4999, 5000, 6000}) check_window(cache, 4, 100, w, w == 512, 61, "5000 tokens");
  const C empty(1, 10);
  std::vector<float> q(4 * 128, 1.0f), out(q.size(), 7.0f);
  skv::cpu::DecodeOptions opt;
  opt.window = 32;
  skv::cpu::decode_attention(empty.view(), q.data(), 4, out.data(), 0.1f, opt);
  for (float x : out) ASSERT_EQ(x, 0.0f);  // as without a window: an empty cache gives zeros
}

// A window at least as long as the cache changes nothing: the same bits as no window.
TEST(Window, AWindowCoveringTheCacheIsNoWindow) {
  using C = skv::KVCache<4, 2, 128, skv::Sinks<4>>;
  const C cache = make_cache<C>(2, 777, 100, 70);
  const auto q = random_floats(100 * 8 * 128, 71);
  std::vector<float> a(q.size()), b(q.size());
  skv::cpu::PrefillOptions opt;
  opt.num_threads = 1;
  skv::cpu::prefill_attention(cache, q.data(), 100, 8, a.data(), 0.09f, opt);
  opt.window = 777;
  skv::cpu::prefill_attention(cache, q.data(), 100, 8, b.data(), 0.09f, opt);
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << i;
}

// keep_sinks is StreamingLLM's rule: with sinks outside the window the results differ, and each
// matches its reference (checked above); here the two rules are told apart.
TEST(Window, KeptSinksAreSeenAndHiddenSinksAreNot) {
  using C = skv::KVCache<4, 2, 128, skv::Sinks<4>>;
  C cache(1, 300);
  auto k = random_floats(300 * 128, 80), v = random_floats(300 * 128, 81);
  for (int c = 0; c < 128; ++c) {  // a sink every query attends to strongly, with a distinct value
    k[c] = 4.0f;
    v[c] = 10.0f;
  }
  cache.append(k.data(), v.data(), 300);
  std::vector<float> q(128, 1.0f), kept(128), hidden(128), ref(128);
  skv::cpu::DecodeOptions opt;
  opt.window = 50;
  skv::cpu::decode_attention(cache, q.data(), 1, hidden.data(), 0.1f, opt);
  opt.keep_sinks = true;
  skv::cpu::decode_attention(cache, q.data(), 1, kept.data(), 0.1f, opt);
  EXPECT_GT(kept[0], hidden[0] + 1.0f);  // the sink's value 10 pulls the kept output up
  skv::cpu::decode_attention_reference(cache.view(), q.data(), 1, ref.data(), 0.1f, 50, false);
  EXPECT_NEAR(hidden[0], ref[0], 1e-3f);
}

// ---- window caches: pages handed back ---------------------------------------------------------------

template <class Cache>
std::vector<float> decode_of(const Cache& cache, const float* q, int nq, const skv::cpu::DecodeOptions& opt) {
  std::vector<float> out(static_cast<std::size_t>(nq) * Cache::kHeadDim);
  skv::cpu::decode_attention(cache, q, nq, out.data(), 0.125f, opt);
  return out;
}

// Pages of one key group (32 tokens) always end where the quantized tokens end: a window cache of
// them, attended one query at a time, holds ceil(W / 32) pages (at least two) and no more, and still
// equals an unbounded cache decoded with the same window at every step.
TEST(WindowCache, PagesOfOneKeyGroupHoldJustTheWindow) {
  using C = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 32,
                              0, skv::Options<skv::Sinks<4>, skv::Int8Ring>>;
  constexpr int kHeads = 1, kNq = 4, kTokens = 700;
  for (int w : {1, 31, 32, 100, 256}) {
    C windowed(kHeads, kTokens, skv::Retention{w, 1}), full(kHeads, kTokens);
    const auto k = random_floats(static_cast<std::size_t>(kTokens) * kHeads * 128, 95u + static_cast<unsigned>(w), 2.0f);
    const auto v = random_floats(k.size(), 96u + static_cast<unsigned>(w));
    const auto q = random_floats(kNq * 128, 97);
    const int bound = std::max(2, (w + 31) / 32);
    int most = 0;
    skv::cpu::DecodeOptions opt, with_window;
    opt.num_threads = with_window.num_threads = 1;
    with_window.window = w;
    for (int t = 0; t < kTokens; ++t) {
      const std::size_t at = static_cast<std::size_t>(t) * kHeads * 128;
      windowed.append(k.data() + at, v.data() + at, 1);
      full.append(k.data() + at, v.data() + at, 1);
      const std::size_t held = windowed.memory_bytes() - C::Layout::residual_elements(kHeads);
      ASSERT_EQ(held % C::Layout::page_bytes(kHeads), 0u);
      most = std::max(most, static_cast<int>(held / C::Layout::page_bytes(kHeads)));
      ASSERT_LE(most, bound) << "window " << w << ", token " << t;
      if (t % 29 != 0 && t < kTokens - 3) continue;
      const auto a = decode_of(windowed, q.data(), kNq, opt);
      const auto b = decode_of(full, q.data(), kNq, with_window);
      for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "window " << w << ", token " << t << ", " << i;
    }
    EXPECT_EQ(most, bound) << w;
  }
}

// A window cache fed token by token equals an unbounded cache decoded with the same window, bit
// for bit, at every step; it holds at most ceil(W / 64) + 2 pages.
TEST(WindowCache, TokenByTokenEqualsAnUnboundedCacheWithTheWindow) {
  using C = skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>;
  constexpr int kHeads = 2, kNq = 8, kTokens = 1500;
  for (int w : {1, 33, 100, 512}) {
    C windowed(kHeads, kTokens, skv::Retention{w}), full(kHeads, kTokens);
    ASSERT_EQ(windowed.window(), w);
    const auto k = random_floats(static_cast<std::size_t>(kTokens) * kHeads * 128, 90u + static_cast<unsigned>(w), 2.0f);
    const auto v = random_floats(k.size(), 91u + static_cast<unsigned>(w));
    const auto q = random_floats(kNq * 128, 92);
    const std::size_t max_pages = static_cast<std::size_t>((w + 63) / 64 + 2);
    skv::cpu::DecodeOptions opt;
    opt.num_threads = 1;
    skv::cpu::DecodeOptions with_window = opt;
    with_window.window = w;
    for (int t = 0; t < kTokens; ++t) {
      windowed.append(k.data() + static_cast<std::size_t>(t) * kHeads * 128, v.data() + static_cast<std::size_t>(t) * kHeads * 128, 1);
      full.append(k.data() + static_cast<std::size_t>(t) * kHeads * 128, v.data() + static_cast<std::size_t>(t) * kHeads * 128, 1);
      ASSERT_LE(windowed.memory_bytes(), max_pages * C::Layout::page_bytes(kHeads) + C::Layout::residual_floats(kHeads) * 4);
      if (t % 37 != 0 && t < kTokens - 3) continue;
      const auto a = decode_of(windowed, q.data(), kNq, opt);  // the cache's own window
      const auto b = decode_of(full, q.data(), kNq, with_window);
      for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "window " << w << ", token " << t << ", " << i;
    }
    EXPECT_GT(windowed.view().first_page, 0) << w;
  }
}

// 100,000 tokens through a window of 512: the memory stops growing once the window is full, and
// the output still matches the reference over exactly the window.
TEST(WindowCache, MemoryIsConstantOverAHundredThousandTokens) {
  using C = skv::KVCache<4, 2, 64>;
  constexpr int kW = 512, kTokens = 100000;
  C cache(1, std::numeric_limits<int>::max(), skv::Retention{kW});
  const auto k = random_floats(64 * 1000, 100, 2.0f), v = random_floats(64 * 1000, 101);
  std::size_t filled = 0;
  int t = 0;
  for (int step = 0; t < kTokens; ++step) {
    const int n = std::min(step % 3 == 0 ? 1 : step % 3 == 1 ? 17 : 64, kTokens - t);  // decode steps and chunks
    const int at = (t * 7) % (1000 - 64);
    cache.append(k.data() + at * 64, v.data() + at * 64, n);
    t += n;
    if (t > 2 * kW + 128 && filled == 0) filled = cache.memory_bytes();
    if (filled) {
      ASSERT_EQ(cache.memory_bytes(), filled) << "at " << t << " tokens";
    }
  }
  EXPECT_EQ(cache.size(), kTokens);
  EXPECT_LE(cache.reserved_bytes(), static_cast<std::size_t>(kW / 64 + 2) * C::Layout::page_bytes(1) +
                                        C::Layout::residual_floats(1) * sizeof(float));
  const auto q = random_floats(4 * 64, 102);
  std::vector<float> out(4 * 64), ref(out.size());
  skv::cpu::decode_attention(cache, q.data(), 4, out.data(), 0.125f);
  skv::cpu::decode_attention_reference(cache, q.data(), 4, ref.data(), 0.125f);
  const float tol = skv::cpu::kFastTolerance * (1.0f + max_abs_value(cache.view(), kTokens - kW));
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], tol) << i;
}

// A long append into a window cache (pieces that reuse the pages) leaves the same held pages and
// outputs as token-by-token appends; a rejected long append changes nothing.
TEST(WindowCache, LongAppendsEqualShortOnesAndAreAllOrNothing) {
  using C = skv::KVCache<4, 2, 128, skv::Sinks<4>>;
  using L = C::Layout;
  constexpr int kHeads = 2, kW = 200, kTokens = 3000;
  const std::size_t row = kHeads * 128;
  auto k = random_floats(kTokens * row, 110, 2.0f), v = random_floats(kTokens * row, 111);
  C one(kHeads, kTokens, skv::Retention{kW}), many(kHeads, kTokens, skv::Retention{kW});
  one.append(k.data(), v.data(), kTokens);
  for (int t = 0; t < kTokens; t += 5) many.append(k.data() + t * row, v.data() + t * row, 5);
  const auto a = one.view(), b = many.view();
  ASSERT_EQ(a.length, b.length);
  const int q = L::quantized_length(kTokens);
  for (int j = ((kTokens - kW - L::kSinkTokens) / 64) * 64; j < q; j += 64)
    ASSERT_EQ(0, std::memcmp(a.head_block(j, 0), b.head_block(j, 0), L::page_bytes(kHeads))) << "page of token " << j;
  const auto qv = random_floats(8 * 128, 112);
  ASSERT_EQ(decode_of(one, qv.data(), 8, {}), decode_of(many, qv.data(), 8, {}));
  // a NaN at the end of a long append: every held page, the ring and the outputs stay as they were
  const std::vector<float> before = decode_of(one, qv.data(), 8, {});
  std::vector<std::uint8_t> pages(a.pages, a.pages + L::page_bytes(kHeads) * static_cast<std::size_t>(a.num_pages));
  const std::vector<std::int32_t> table(a.block_table, a.block_table + a.max_pages);
  auto k2 = random_floats(2000 * row, 113);
  k2[1999 * row + 5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(one.append(k2.data(), k2.data(), 2000), skv::Error);
  const auto c = one.view();
  EXPECT_EQ(c.length, kTokens);
  EXPECT_EQ(c.first_page, a.first_page);
  EXPECT_EQ(0, std::memcmp(c.block_table, table.data(), table.size() * sizeof(std::int32_t)));
  EXPECT_EQ(0, std::memcmp(c.pages, pages.data(), pages.size()));
  EXPECT_EQ(decode_of(one, qv.data(), 8, {}), before);
}

// A chunk longer than max_chunk may need tokens whose pages were handed back: an error naming
// them, never a wrong result; chunks up to max_chunk work.
TEST(WindowCache, ChunksLongerThanTheirSlackAreRefused) {
  using C = skv::KVCache<4, 2>;
  constexpr int kW = 64;
  C cache(1, 5000, skv::Retention{kW, /*max_chunk=*/128});
  const auto k = random_floats(2000 * 128, 120), v = random_floats(2000 * 128, 121);
  cache.append(k.data(), v.data(), 1000);
  const auto q = random_floats(1000 * 4 * 128, 122);
  std::vector<float> out(q.size()), ref(q.size());
  skv::cpu::prefill_attention(cache, q.data(), 128, 4, out.data(), 0.1f);  // the last 128 queries: held
  skv::cpu::prefill_attention_reference(cache, q.data(), 128, 4, ref.data(), 0.1f);
  const float tol = skv::cpu::kPrefillTolerance * (1.0f + max_abs_value(cache.view(), 1000 - 128 - kW));
  for (std::size_t i = 0; i < 128 * 4 * 128; ++i) ASSERT_NEAR(out[i], ref[i], tol) << i;
  EXPECT_THROW(skv::cpu::prefill_attention(cache, q.data(), 900, 4, out.data(), 0.1f), skv::Error);
  skv::cpu::DecodeOptions whole;  // no narrower window than the cache's is allowed to read more
  skv::cpu::DecodeOptions wider;
  wider.window = kW + 1;
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 4, out.data(), 0.1f, wider), skv::Error);
  // the view of a window cache without a window reads released pages: refused
  EXPECT_THROW(skv::cpu::decode_attention(cache.view(), q.data(), 4, out.data(), 0.1f, whole), skv::Error);
  EXPECT_THROW(skv::cpu::decode_attention_reference(cache.view(), q.data(), 4, out.data(), 0.1f), skv::Error);
}

TEST(Window, BadWindowsAreRefused) {
  using C = skv::KVCache<4, 2>;
  EXPECT_THROW(C(1, 100, skv::Retention{-1}), skv::Error);
  EXPECT_THROW(C(1, 100, skv::Retention{10, -1}), skv::Error);
  EXPECT_THROW(C(1, 100, skv::Retention{0, 0, -1}), skv::Error);
  C cache(1, 100);
  const auto k = random_floats(10 * 128, 130);
  cache.append(k.data(), k.data(), 10);
  std::vector<float> q(4 * 128, 1.0f), out(q.size());
  skv::cpu::DecodeOptions d;
  d.window = -3;
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 4, out.data(), 0.1f, d), skv::Error);
  skv::cpu::PrefillOptions p;
  p.window = -3;
  EXPECT_THROW(skv::cpu::prefill_attention(cache, q.data(), 1, 4, out.data(), 0.1f, p), skv::Error);
}

// ---- rollback ------------------------------------------------------------------------------------

// Truncating rejected tokens, then appending others, equals a cache that never saw the rejected
// ones, byte for byte, also when blocks completed among the rejected tokens (they come back from
// the float copies). With Retention::rollback = 40 every rollback of up to 40 tokens works; without
// it, the ones the ring cannot serve are refused and change nothing.
TEST(Truncate, RollbackEqualsACacheThatNeverSawTheRejectedTokens) {
  using C = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128,
                              64, 64, skv::Options<skv::RotateKeys, skv::Sinks<4>>>;
  using L = C::Layout;
  constexpr int kHeads = 2;
  const std::size_t row = kHeads * 128;
  const auto k = random_floats(600 * row, 140, 2.0f), v = random_floats(600 * row, 141);
  const auto q = random_floats(8 * 128, 142);
  int crossed = 0, refused = 0;
  for (int rollback : {0, 40}) {
    for (int prefix : {50, 4 + 64 + 31, 4 + 64 + 32 + 5, 300}) {
      for (int draft : {1, 6, 20, 40}) {
        for (int accepted : {0, 1, draft / 2}) {
          const auto build = [&](C& c, int drafted) {
            for (int t = 0; t < prefix; t += 7) c.append(k.data() + t * row, v.data() + t * row, std::min(7, prefix - t));
            for (int t = 0; t < drafted; t += 3)  // drafted tokens, verified in chunks of three
              c.append(k.data() + (prefix + t) * row, v.data() + (prefix + t) * row, std::min(3, drafted - t));
          };
          C spec(kHeads, 600, skv::Retention{0, 0, rollback});
          build(spec, draft);
          const bool crosses = L::quantized_length(prefix + accepted) < L::quantized_length(prefix + draft);
          crossed += crosses;
          const auto before = spec.view();
          const std::vector<float> ring(before.residual, before.residual + L::residual_floats(kHeads));
          try {
            spec.truncate(prefix + accepted);
          } catch (const skv::Error&) {
            ASSERT_EQ(rollback, 0) << "prefix " << prefix << " draft " << draft << " accepted " << accepted;
            ASSERT_TRUE(crosses);
            ASSERT_EQ(spec.size(), prefix + draft);  // refused: nothing changed
            ASSERT_EQ(0, std::memcmp(ring.data(), spec.view().residual, ring.size() * sizeof(float)));
            ++refused;
            continue;
          }
          const std::size_t next = 500 * row;
          spec.append(k.data() + next, v.data() + next, 30);
          C fresh(kHeads, 600);
          build(fresh, accepted);
          fresh.append(k.data() + next, v.data() + next, 30);
          // every stored token as attention sees it (page slots past the quantized length may hold
          // the codes of a block that completed before the rollback: they hold no token)
          const auto a = spec.view(), b = fresh.view();
          ASSERT_EQ(a.length, b.length);
          for (int t = 0; t < a.length; ++t)
            for (int h = 0; h < kHeads; ++h)
              for (int c = 0; c < 128; ++c)
                ASSERT_TRUE(a.key(t, h, c) == b.key(t, h, c) && a.value(t, h, c) == b.value(t, h, c))
                    << "rollback " << rollback << " prefix " << prefix << " draft " << draft << " accepted "
                    << accepted << ": token " << t;
          ASSERT_EQ(decode_of(spec, q.data(), 8, {}), decode_of(fresh, q.data(), 8, {}));
        }
      }
    }
  }
  EXPECT_GT(crossed, 10);  // blocks completed among the rejected tokens in many cases
  EXPECT_GT(refused, 0);   // and without the history some of those are out of reach
  // a long append quantizes whole blocks straight from its input: the history keeps the float
  // copies of its last `rollback` tokens before the ring, and nothing deeper comes back
  C cache(kHeads, 600, skv::Retention{0, 0, 64});
  cache.append(k.data(), v.data(), 400);
  const auto before = decode_of(cache, q.data(), 8, {});
  EXPECT_THROW(cache.truncate(250), skv::Error);  // 150 back: deeper than the ring and the history
  EXPECT_THROW(cache.truncate(401), skv::Error);
  for (int r = 1; r <= 64; ++r) {  // every rollback up to `rollback` tokens works, after long and short appends
    C copy = cache;
    ASSERT_NO_THROW(copy.truncate(400 - r)) << r;
    C stepped(kHeads, 600, skv::Retention{0, 0, 64});
    for (int t = 0; t < 400; t += 9) stepped.append(k.data() + t * row, v.data() + t * row, std::min(9, 400 - t));
    ASSERT_NO_THROW(stepped.truncate(400 - r)) << r;
  }
  for (int n = -1; n <= 401; ++n) {  // can_truncate() answers what truncate() does, and changes nothing
    C copy = cache;
    bool threw = false;
    try {
      copy.truncate(n);
    } catch (const skv::Error&) {
      threw = true;
    }
    ASSERT_EQ(cache.can_truncate(n), !threw) << n;
    ASSERT_EQ(copy.size(), threw ? 400 : n) << n;
  }
  EXPECT_FALSE(cache.can_truncate(250));
  EXPECT_TRUE(cache.can_truncate(336) && cache.can_truncate(400));
  EXPECT_EQ(cache.size(), 400);
  EXPECT_EQ(decode_of(cache, q.data(), 8, {}), before);
  ASSERT_LT(L::quantized_length(385), L::quantized_length(400));
  cache.truncate(385);  // a block completed after token 385: it comes back from the history
  C fresh(kHeads, 600);
  fresh.append(k.data(), v.data(), 385);
  const auto a = cache.view(), b = fresh.view();
  for (int t = 0; t < 385; ++t)
    for (int c = 0; c < 128; ++c) ASSERT_TRUE(a.key(t, 1, c) == b.key(t, 1, c) && a.value(t, 1, c) == b.value(t, 1, c)) << t;
  cache.append(k.data() + 500 * row, v.data() + 500 * row, 40);
  fresh.append(k.data() + 500 * row, v.data() + 500 * row, 40);
  EXPECT_EQ(decode_of(cache, q.data(), 8, {}), decode_of(fresh, q.data(), 8, {}));
}

}  // namespace test_window
