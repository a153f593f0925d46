// Custom bit combinations: any quantizer parameters, fixed at compile time.
#include <skv/skv.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

// 3-bit symmetric keys grouped per channel over 16 tokens with bf16 scales; 5-bit values grouped
// per token over 32 channels; head_dim 64; pages of 32 tokens; 32 recent tokens kept in full precision.
using Keys = skv::Quantizer<3, 16, skv::Axis::Channel, skv::Scheme::Symmetric, skv::bf16>;
using Values = skv::Quantizer<5, 32, skv::Axis::Token>;
using Cache = skv::BasicKVCache<Keys, Values, /*HeadDim=*/64, /*PageSize=*/32, /*Residual=*/32>;

static_assert(Cache::kKeyBits == 3 && Cache::kValueBits == 5 && Cache::kHeadDim == 64, "compile-time facts");

template <class C>
double attention_error(const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& q, int heads,
                       int n) {
  C cache(heads, n);
  cache.append(k.data(), v.data(), n);
  std::vector<float> out(q.size());
  skv::cpu::decode_attention(cache, q.data(), heads, out.data());
  // the same attention on the unquantized values (an fp32 cache: 8-bit would still be lossy)
  double err = 0, ref = 0;
  const int d = C::kHeadDim;
  for (int h = 0; h < heads; ++h) {
    std::vector<double> logits(n);
    double mx = -1e300;
    for (int t = 0; t < n; ++t) {
      double s = 0;
      for (int c = 0; c < d; ++c) s += double(q[h * d + c]) * k[(std::size_t(t) * heads + h) * d + c];
      logits[t] = s / std::sqrt(double(d));
      mx = std::max(mx, logits[t]);
    }
    double z = 0;
    for (double& l : logits) z += (l = std::exp(l - mx));
    for (int c = 0; c < d; ++c) {
      double o = 0;
      for (int t = 0; t < n; ++t) o += logits[t] / z * v[(std::size_t(t) * heads + h) * d + c];
      err += (out[h * d + c] - o) * (out[h * d + c] - o);
      ref += o * o;
    }
  }
  return std::sqrt(err / ref);
}

int main() {
  const int heads = 4, n = 300, d = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> k(std::size_t(n) * heads * d), v(k.size()), q(std::size_t(heads) * d);
  for (auto& x : k) x = g(rng);
  for (auto& x : v) x = g(rng);
  for (auto& x : q) x = g(rng);

  std::printf("%-34s %8s %10s %12s\n", "cache", "bits/el", "B/token", "attn rel err");
  auto row = [&](const char* name, double bits, double bytes, double err) {
    std::printf("%-34s %8.3f %10.1f %12.5f\n", name, bits, bytes, err);
  };
  row("K3(sym,bf16,G16) V5(G32) D64", Cache::bits_per_element(), Cache::bytes_per_token(),
      attention_error<Cache>(k, v, q, heads, n));
  row("KVCache<4, 2, 64>", skv::KVCache<4, 2, 64>::bits_per_element(), skv::KVCache<4, 2, 64>::bytes_per_token(),
      attention_error<skv::KVCache<4, 2, 64>>(k, v, q, heads, n));
  row("KVCache<8, 8, 64>", skv::KVCache<8, 8, 64>::bits_per_element(), skv::KVCache<8, 8, 64>::bytes_per_token(),
      attention_error<skv::KVCache<8, 8, 64>>(k, v, q, heads, n));

  // k4v2 with a 128-token residual window and 4 sink tokens in full precision, held in fp32, in
  // fp16 (skv::Fp16Ring: half the window's bytes) or in 8-bit rows with an fp16 zero and step per
  // token and head (skv::Int8Ring: about a quarter), at about the same attention error.
  using Q4 = skv::Quantizer<4, 32, skv::Axis::Channel>;
  using Q2 = skv::Quantizer<2, 64, skv::Axis::Token>;
  using Ring32 = skv::BasicKVCache<Q4, Q2, 64, 64, /*Residual=*/128, skv::Options<skv::Sinks<4>>>;
  using Ring16 = skv::BasicKVCache<Q4, Q2, 64, 64, /*Residual=*/128, skv::Options<skv::Sinks<4>, skv::Fp16Ring>>;
  using Ring8 = skv::BasicKVCache<Q4, Q2, 64, 64, /*Residual=*/128, skv::Options<skv::Sinks<4>, skv::Int8Ring>>;
  Ring32 ring32(heads, n);
  Ring16 ring16(heads, n);
  Ring8 ring8(heads, n);
  ring32.append(k.data(), v.data(), n);
  ring16.append(k.data(), v.data(), n);
  ring8.append(k.data(), v.data(), n);
  const auto held = [&](std::size_t bytes) { return static_cast<double>(bytes) * 8.0 / (2.0 * n * heads * d); };
  std::printf("\n%-34s %8s %12s\n", "k4v2 + window 128 + 4 sinks", "held b/el", "attn rel err");
  std::printf("%-34s %8.3f %12.5f\n", "  fp32 ring", held(ring32.memory_bytes()),
              attention_error<Ring32>(k, v, q, heads, n));
  std::printf("%-34s %8.3f %12.5f\n", "  fp16 ring (skv::Fp16Ring)", held(ring16.memory_bytes()),
              attention_error<Ring16>(k, v, q, heads, n));
  std::printf("%-34s %8.3f %12.5f\n", "  8-bit ring (skv::Int8Ring)", held(ring8.memory_bytes()),
              attention_error<Ring8>(k, v, q, heads, n));
  return ring8.memory_bytes() < ring16.memory_bytes() && ring16.memory_bytes() < ring32.memory_bytes() ? 0 : 1;
}
