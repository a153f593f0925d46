// Runtime-to-type dispatch: the right KVCache type for each compiled pair, return values, and a
// clear error listing the compiled pairs otherwise.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include <skv/dispatch.hpp>

namespace {

using Compiled = skv::BitPairs<skv::BitPair<4, 2>, skv::BitPair<4, 4>, skv::BitPair<8, 4>>;

static_assert(std::is_same<skv::BitPairList<4, 2, 4, 4, 8, 4>, Compiled>::value, "BitPairList spells the same set");
static_assert(Compiled::contains(8, 4) && !Compiled::contains(2, 4), "contains() is constexpr");
static_assert(Compiled::kSize == 3, "");

TEST(Dispatch, CallsWithTheMatchingCacheType) {
  for (auto kv : {std::make_pair(4, 2), std::make_pair(4, 4), std::make_pair(8, 4)}) {
    int key = 0, value = 0, dim = 0;
    skv::dispatch<Compiled>(kv.first, kv.second, [&](auto tag) {
      using Cache = typename decltype(tag)::type;
      key = Cache::kKeyBits;
      value = Cache::kValueBits;
      dim = Cache::kHeadDim;
      static_assert(std::is_same<Cache, skv::KVCache<Cache::kKeyBits, Cache::kValueBits>>::value, "the KVCache short form");
    });
    EXPECT_EQ(key, kv.first);
    EXPECT_EQ(value, kv.second);
    EXPECT_EQ(dim, 128);
  }
}

TEST(Dispatch, ReturnsWhatTheFunctionReturnsAndHonoursHeadDim) {
  const double bits = skv::dispatch<Compiled, 64>(4, 2, [](auto tag) { return decltype(tag)::type::bits_per_element(); });
  EXPECT_DOUBLE_EQ(bits, (4 + 1.0 + 2 + 0.5) / 2);  // 32/32 and 32/64 bits of fp16 scale + zero
  const int tokens = skv::dispatch<Compiled, 64>(8, 4, [](auto tag) {
    typename decltype(tag)::type cache(2, 100);
    return cache.capacity();
  });
  EXPECT_EQ(tokens, 100);
}

TEST(Dispatch, UncompiledPairIsAnErrorListingTheCompiledOnes) {
  int calls = 0;
  try {
    skv::dispatch<Compiled>(2, 4, [&](auto) { ++calls; });
    FAIL() << "expected skv::Error";
  } catch (const skv::Error& e) {
    EXPECT_EQ(std::string(e.what()), "skv: no cache compiled for k2v4 (head_dim 128); compiled pairs: k4v2, k4v4, k8v4");
  }
  EXPECT_EQ(calls, 0);
  EXPECT_THROW(skv::dispatch<Compiled>(4, 3, [](auto tag) { return decltype(tag)::type::kKeyBits; }), skv::Error);
  EXPECT_EQ(Compiled::names(), "k4v2, k4v4, k8v4");
}

}  // namespace
