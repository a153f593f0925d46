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

// ---- the walk-through of docs/calibration.md, step 4: a plan's JSON drives per-layer cache types ----

#include <memory>
#include <vector>

#include <nlohmann/json.hpp>
#include <skv/attention/decode.hpp>

namespace {

/// What an engine keeps per layer: the type is fixed when the layer is created, from the plan.
struct LayerCache {
  virtual ~LayerCache() = default;
  virtual void append(const float* k, const float* v, int n) = 0;
  virtual void attend(const float* q, int num_q_heads, float* out) const = 0;
  virtual double bits_per_element() const = 0;
};

template <class Cache>
struct TypedLayerCache final : LayerCache {
  Cache cache;
  TypedLayerCache(int kv_heads, int max_tokens) : cache(kv_heads, max_tokens) {}
  void append(const float* k, const float* v, int n) override { cache.append(k, v, n); }
  void attend(const float* q, int num_q_heads, float* out) const override {
    skv::cpu::decode_attention(cache, q, num_q_heads, out);
  }
  double bits_per_element() const override { return Cache::bits_per_element(); }
};

TEST(Dispatch, PlanJsonBuildsOneCacheTypePerLayer) {
  using PlanPairs = skv::BitPairList<4, 2, 3, 3, 4, 3>;
  const auto plan = nlohmann::json::parse(R"({"budget":3.75,"layers":[
      {"layer":0,"key_bits":3,"value_bits":3},{"layer":1,"key_bits":4,"value_bits":2},
      {"layer":2,"key_bits":4,"value_bits":3}]})");
  constexpr int kHeadDim = 64, kKvHeads = 2, kQHeads = 4, kTokens = 80;
  std::vector<std::unique_ptr<LayerCache>> layers;
  for (const auto& l : plan["layers"])
    skv::dispatch<PlanPairs, kHeadDim>(l["key_bits"].get<int>(), l["value_bits"].get<int>(), [&](auto tag) {
      layers.push_back(std::make_unique<TypedLayerCache<typename decltype(tag)::type>>(kKvHeads, kTokens));
    });
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_DOUBLE_EQ(layers[0]->bits_per_element(), (3 + 1.0 + 3 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(layers[1]->bits_per_element(), (4 + 1.0 + 2 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(layers[2]->bits_per_element(), (4 + 1.0 + 3 + 0.5) / 2);

  // Every layer works as a cache: attention over constant values returns those values.
  std::vector<float> k(static_cast<std::size_t>(kTokens) * kKvHeads * kHeadDim), v(k.size(), 0.5f);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>((i * 7919) % 13) / 13.0f - 0.5f;
  std::vector<float> q(static_cast<std::size_t>(kQHeads) * kHeadDim, 0.1f), out(q.size());
  for (auto& layer : layers) {
    layer->append(k.data(), v.data(), kTokens);
    layer->attend(q.data(), kQHeads, out.data());
    for (float o : out) EXPECT_NEAR(o, 0.5f, 1e-3f);
  }
  // A plan asking for a pair that was not compiled fails before any cache is built.
  EXPECT_THROW((skv::dispatch<PlanPairs, kHeadDim>(2, 2, [&](auto) {})), skv::Error);
}

}  // namespace
