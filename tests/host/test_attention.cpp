// Decode attention (the public CPU entry point and the reference) against fp64 on unquantized K/V.
#include <skv/calib/synthetic.hpp>
#include <skv/skv.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

namespace test_attention {

namespace synthetic = skv::calib::synthetic;

struct Data {
  int n, kv_heads, q_heads, d;
  std::vector<float> k, v, q;
};

Data random_data(int n, int kv_heads, int q_heads, int d, unsigned seed, float q_scale = 1.0f) {
  Data x{n, kv_heads, q_heads, d, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  x.k.resize(static_cast<std::size_t>(n) * kv_heads * d);
  x.v.resize(x.k.size());
  x.q.resize(static_cast<std::size_t>(q_heads) * d);
  for (auto& e : x.k) e = g(rng);
  for (auto& e : x.v) e = g(rng);
  for (auto& e : x.q) e = q_scale * g(rng);
  return x;
}

// fp64 attention over the cache's own view of K/V (what the kernel should compute exactly) or the
// original K/V (what quantization perturbs).
template <class KeyFn, class ValueFn>
std::vector<double> attention_fp64(const Data& x, double scale, KeyFn key, ValueFn value) {
  std::vector<double> out(static_cast<std::size_t>(x.q_heads) * x.d, 0.0);
  const int group = x.q_heads / x.kv_heads;
  for (int qh = 0; qh < x.q_heads; ++qh) {
    std::vector<double> l(x.n);
    double mx = -1e300;
    for (int t = 0; t < x.n; ++t) {
      double s = 0;
      for (int c = 0; c < x.d; ++c) s += static_cast<double>(x.q[static_cast<std::size_t>(qh) * x.d + c]) * key(t, qh / group, c);
      l[t] = s * scale;
      mx = std::max(mx, l[t]);
    }
    double z = 0;
    for (double& e : l) z += (e = std::exp(e - mx));
    for (int t = 0; t < x.n; ++t)
      for (int c = 0; c < x.d; ++c) out[static_cast<std::size_t>(qh) * x.d + c] += l[t] / z * value(t, qh / group, c);
  }
  return out;
}

std::size_t at(const Data& x, int t, int h, int c) { return (static_cast<std::size_t>(t) * x.kv_heads + h) * x.d + c; }

// The bound from the bits: if every logit moves by at most delta and every value element by at
// most ev, each output element moves by at most ev + (e^(2 delta) - 1) max|v|.
template <class Cache>
void check_against_fp64(const Data& x) {
  Cache cache(x.kv_heads, x.n);
  cache.append(x.k.data(), x.v.data(), x.n);
  std::vector<float> out(x.q.size(), std::numeric_limits<float>::quiet_NaN());
  skv::cpu::decode_attention(cache, x.q.data(), x.q_heads, out.data());
  const auto view = cache.view();
  const double scale = 1.0 / std::sqrt(static_cast<double>(x.d));
  const auto ref = attention_fp64(x, scale, [&](int t, int h, int c) { return x.k[at(x, t, h, c)]; },
                                  [&](int t, int h, int c) { return x.v[at(x, t, h, c)]; });
  const auto exact = attention_fp64(x, scale, [&](int t, int h, int c) { return view.key(t, h, c); },
                                    [&](int t, int h, int c) { return view.value(t, h, c); });
  const int group = x.q_heads / x.kv_heads;
  double ev = 0, vmax = 0;
  for (int t = 0; t < x.n; ++t)
    for (int h = 0; h < x.kv_heads; ++h)
      for (int c = 0; c < x.d; ++c) {
        ev = std::max(ev, std::fabs(static_cast<double>(view.value(t, h, c)) - x.v[at(x, t, h, c)]));
        vmax = std::max(vmax, std::fabs(static_cast<double>(x.v[at(x, t, h, c)])));
      }
  for (int qh = 0; qh < x.q_heads; ++qh) {
    double delta = 0;
    for (int t = 0; t < x.n; ++t) {
      double e = 0;
      for (int c = 0; c < x.d; ++c)
        e += x.q[static_cast<std::size_t>(qh) * x.d + c] *
             (static_cast<double>(view.key(t, qh / group, c)) - x.k[at(x, t, qh / group, c)]);
      delta = std::max(delta, std::fabs(e) * scale);
    }
    const double bound = ev + std::expm1(2 * delta) * vmax;
    for (int c = 0; c < x.d; ++c) {
      const std::size_t i = static_cast<std::size_t>(qh) * x.d + c;
      ASSERT_TRUE(std::isfinite(out[i]));
      // against the same dequantized cache in fp64: only float rounding separates them
      ASSERT_NEAR(out[i], exact[i], 2e-5 * (1.0 + std::fabs(exact[i]))) << "head " << qh << " dim " << c;
      ASSERT_LE(std::fabs(out[i] - ref[i]), bound + 1e-5) << "head " << qh << " dim " << c;
    }
  }
}

TEST(Attention, MatchesFp64WithinTheBoundTheBitsAllow) {
  for (int n : {1, 5, 31, 32, 33, 100, 257}) {
    check_against_fp64<skv::KVCache<4, 2, 64>>(random_data(n, 2, 8, 64, 100 + n));
    check_against_fp64<skv::KVCache<2, 4, 64>>(random_data(n, 1, 1, 64, 200 + n));
    check_against_fp64<skv::KVCache<8, 8, 64>>(random_data(n, 2, 16, 64, 300 + n));
  }
  check_against_fp64<skv::KVCache<3, 5, 128>>(random_data(130, 2, 2, 128, 9));
  check_against_fp64<skv::KVCache<1, 6, 128>>(random_data(70, 1, 4, 128, 10));
  check_against_fp64<skv::KVCache<5, 1, 256>>(random_data(90, 1, 8, 256, 11));
  using Sym = skv::BasicKVCache<skv::Quantizer<4, 16, skv::Axis::Token, skv::Scheme::Symmetric>,
                                skv::Quantizer<3, 16, skv::Axis::Channel, skv::Scheme::Asymmetric, skv::bf16>, 64, 32, 32>;
  check_against_fp64<Sym>(random_data(111, 2, 4, 64, 12));
}

TEST(Attention, EightBitKeysAndValuesAreWithinTwoPercent) {
  const auto x = random_data(1000, 2, 8, 128, 13, 2.0f);
  skv::KVCache<8, 8> cache(2, 1000);
  cache.append(x.k.data(), x.v.data(), 1000);
  std::vector<float> out(x.q.size());
  skv::cpu::decode_attention(cache, x.q.data(), 8, out.data());
  const auto ref = attention_fp64(x, 1.0 / std::sqrt(128.0), [&](int t, int h, int c) { return x.k[at(x, t, h, c)]; },
                                  [&](int t, int h, int c) { return x.v[at(x, t, h, c)]; });
  const double err = synthetic::relative_error(out, ref);
  EXPECT_LT(err, 2e-2);
  EXPECT_GT(err, 1e-5);  // it is quantized: not bit-identical to fp64
}

TEST(Attention, OneTokenReturnsItsValue) {
  const auto x = random_data(1, 2, 4, 64, 14);
  skv::KVCache<2, 2, 64> cache(2, 10);
  cache.append(x.k.data(), x.v.data(), 1);
  std::vector<float> out(x.q.size());
  skv::cpu::decode_attention(cache, x.q.data(), 4, out.data());
  for (int qh = 0; qh < 4; ++qh)
    for (int c = 0; c < 64; ++c) EXPECT_FLOAT_EQ(out[qh * 64 + c], x.v[at(x, 0, qh / 2, c)]);
}

TEST(Attention, GqaMapsEachQueryHeadToItsKvHead) {
  // KV head h holds the constant value h + 1: every query head of group h must output h + 1.
  constexpr int H = 4, G = 3, D = 64, N = 70;
  std::vector<float> k(static_cast<std::size_t>(N) * H * D), v(k.size()), q(static_cast<std::size_t>(H) * G * D, 0.3f);
  std::mt19937 rng(15);
  std::normal_distribution<float> g;
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = g(rng);
    v[i] = static_cast<float>(i / D % H + 1);
  }
  skv::KVCache<4, 2, D> cache(H, N);
  cache.append(k.data(), v.data(), N);
  std::vector<float> out(q.size());
  skv::cpu::decode_attention(cache, q.data(), H * G, out.data());
  for (int qh = 0; qh < H * G; ++qh)
    for (int c = 0; c < D; ++c) EXPECT_NEAR(out[qh * D + c], qh / G + 1, 1e-5f) << qh;
}

TEST(Attention, ChunkedMergeEqualsOnePass) {
  const auto x = random_data(300, 2, 4, 64, 16, 3.0f);
  skv::KVCache<4, 2, 64> cache(2, 300);
  cache.append(x.k.data(), x.v.data(), 300);
  std::vector<float> one(x.q.size()), chunked(x.q.size());
  const float scale = 0.125f;
  skv::cpu::decode_attention_reference(cache.view(), x.q.data(), 4, one.data(), scale);
  for (int chunk : {1, 7, 32, 64, 299, 1000}) {
    skv::cpu::decode_attention_chunked(cache.view(), x.q.data(), 4, chunked.data(), scale, chunk);
    for (std::size_t i = 0; i < one.size(); ++i) ASSERT_NEAR(chunked[i], one[i], 1e-6 * (1 + std::fabs(one[i]))) << chunk;
  }
  EXPECT_THROW(skv::cpu::decode_attention_chunked(cache.view(), x.q.data(), 4, chunked.data(), scale, 0), skv::Error);
}

TEST(Attention, ExplicitScaleIsApplied) {
  const auto x = random_data(50, 1, 1, 64, 17);
  skv::KVCache<8, 8, 64> cache(1, 50);
  cache.append(x.k.data(), x.v.data(), 50);
  std::vector<float> a(64), b(64);
  skv::cpu::decode_attention(cache, x.q.data(), 1, a.data());
  skv::cpu::decode_attention(cache, x.q.data(), 1, b.data(), 0.125f);  // 1 / sqrt(64)
  for (int c = 0; c < 64; ++c) EXPECT_FLOAT_EQ(a[c], b[c]);
  skv::cpu::decode_attention(cache, x.q.data(), 1, b.data(), 0.0f);  // uniform attention: the mean value
  const auto view = cache.view();
  for (int c = 0; c < 64; ++c) {
    double mean = 0;
    for (int t = 0; t < 50; ++t) mean += view.value(t, 0, c);
    EXPECT_NEAR(b[c], mean / 50, 1e-5);
  }
}

TEST(Attention, EmptyCacheGivesZeros) {
  skv::KVCache<4, 2, 64> cache(1, 10);
  std::vector<float> q(64, 1.0f), out(64, 7.0f);
  skv::cpu::decode_attention(cache, q.data(), 1, out.data());
  for (float o : out) EXPECT_EQ(o, 0.0f);
}

TEST(Attention, BadArgumentsThrow) {
  const auto x = random_data(40, 2, 4, 64, 18);
  skv::KVCache<4, 2, 64> cache(2, 40);
  cache.append(x.k.data(), x.v.data(), 40);
  std::vector<float> out(x.q.size());
  EXPECT_THROW(skv::cpu::decode_attention(cache, x.q.data(), 3, out.data()), skv::Error);  // not a multiple of 2
  EXPECT_THROW(skv::cpu::decode_attention(cache, x.q.data(), 0, out.data()), skv::Error);
  EXPECT_THROW(skv::cpu::decode_attention(cache, nullptr, 4, out.data()), skv::Error);
  EXPECT_THROW(skv::cpu::decode_attention(cache, x.q.data(), 4, nullptr), skv::Error);
  auto q = x.q;
  q[77] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 4, out.data()), skv::Error);
  q[77] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(skv::cpu::decode_attention(cache, q.data(), 4, out.data()), skv::Error);
  EXPECT_THROW(skv::cpu::decode_attention(cache, x.q.data(), 4, out.data(), std::nanf("")), skv::Error);
}

TEST(Attention, LongContextStaysAccurate) {
  // 100k tokens: the softmax normaliser and the merge must not lose the signal
  synthetic::WorkloadOptions o;
  o.tokens = 100000;
  o.kv_heads = 1;
  o.group = 2;
  o.head_dim = 64;
  o.logit_std = 3.0;
  const auto w = synthetic::make_workload(o);
  std::vector<double> ref;
  synthetic::exact_attention(w, ref);
  skv::KVCache<8, 8, 64> cache(1, o.tokens);
  cache.append(w.k.data(), w.v.data(), o.tokens);
  std::vector<float> out(w.q.size());
  skv::cpu::decode_attention(cache, w.q.data(), w.q_heads, out.data());
  EXPECT_LT(synthetic::relative_error(out, ref), 3e-2);
}

// The paper's premise, tested where it applies: keys carry far more energy than values, and queries
// read the keys' outlier channels with peaked attention. At equal memory (7.5 bits per element),
// 4-bit keys with 2-bit values beat 2-bit keys with 4-bit values.
template <class C>
double attention_error(const synthetic::Workload& w, const std::vector<double>& ref) {
  C cache(w.kv_heads, w.tokens);
  cache.append(w.k.data(), w.v.data(), w.tokens);
  std::vector<float> out(w.q.size());
  skv::cpu::decode_attention(cache, w.q.data(), w.q_heads, out.data());
  return synthetic::relative_error(out, ref);
}

struct Duel {
  int k4v2_wins = 0;
  double k4v2 = 0, k2v4 = 0, entropy = 0;
};

Duel duel(double logit_std, int seeds) {
  static_assert(skv::KVCache<4, 2>::bytes_per_token() == skv::KVCache<2, 4>::bytes_per_token(), "equal memory");
  Duel r;
  for (int s = 1; s <= seeds; ++s) {
    synthetic::WorkloadOptions o;
    o.tokens = 1024;
    o.logit_std = logit_std;
    o.seed = static_cast<unsigned>(s);
    const auto w = synthetic::make_workload(o);
    std::vector<double> ref;
    r.entropy += synthetic::exact_attention(w, ref) / seeds;
    const double a = attention_error<skv::KVCache<4, 2>>(w, ref), b = attention_error<skv::KVCache<2, 4>>(w, ref);
    r.k4v2 += a / seeds;
    r.k2v4 += b / seeds;
    r.k4v2_wins += a < b;
  }
  return r;
}

TEST(Attention, KeysFirstWinsWhenAttentionIsPeaked) {
  const Duel d = duel(3.0, 16);
  std::cout << "peaked attention: entropy " << d.entropy << " nats (uniform over 1024 tokens: " << std::log(1024.0)
            << "), K4V2 error " << d.k4v2 << ", K2V4 error " << d.k2v4 << ", K4V2 wins " << d.k4v2_wins << "/16\n";
  EXPECT_LT(d.entropy, 4.5);
  EXPECT_LT(d.k4v2, 0.85 * d.k2v4);
  EXPECT_GE(d.k4v2_wins, 12);
}

TEST(Attention, ValuesFirstWinsWhenAttentionIsNearlyUniform) {
  // The theorem is about reconstruction error; with flat attention key errors barely move the output
  // while value errors reach it directly, so the ranking flips.
  const Duel d = duel(0.05, 8);
  std::cout << "uniform attention: entropy " << d.entropy << " nats, K4V2 error " << d.k4v2 << ", K2V4 error "
            << d.k2v4 << "\n";
  EXPECT_GT(d.entropy, 6.9);
  EXPECT_GT(d.k4v2, 2.0 * d.k2v4);
  EXPECT_EQ(d.k4v2_wins, 0);
}

// The synthetic workload refuses shapes it cannot draw instead of writing out of bounds.
TEST(Attention, SyntheticWorkloadRejectsShapesItCannotDraw) {
  synthetic::WorkloadOptions o;
  o.tokens = 64;
  o.head_dim = 32;
  EXPECT_EQ(synthetic::make_workload(o).k.size(), 64u * 2 * 32);
  o.head_dim = 16;  // the fourth outlier pair would be pair -2
  EXPECT_THROW(synthetic::make_workload(o), skv::Error);
  o.head_dim = 33;
  EXPECT_THROW(synthetic::make_workload(o), skv::Error);
  o.head_dim = 32;
  o.tokens = 0;
  EXPECT_THROW(synthetic::make_workload(o), skv::Error);
  o.tokens = 64;
  o.value_std = -1.0f;
  EXPECT_THROW(synthetic::make_workload(o), skv::Error);
}

}  // namespace test_attention
