// The skv demo: which bits should keys and values get?
//
// On an LLM-like synthetic workload (skv/calib/synthetic.hpp: keys with per-channel offsets and
// consistent outlier channels, RoPE'd; values near-Gaussian with ~25x less energy; queries that read
// the keys' outlier channels), it instantiates six quantized caches at compile time, four with
// accuracy options (rotated keys, fp32 sink tokens, clipping search; docs/accuracy.md) and an
// unquantized baseline, and prints per configuration: bits per element with metadata, KV memory of
// a Llama-3-8B-shaped model at 32k context, key and value MSE, attention-output error against fp64,
// and CPU decode time. Then it answers, for peaked and for flat attention, whether K4V2 beats K2V4
// at equal memory.
#include <skv/calib/synthetic.hpp>
#include <skv/skv.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

namespace synthetic = skv::calib::synthetic;

// Llama-3-8B: 32 layers, 8 KV heads, head_dim 128; one sequence of 32k tokens.
constexpr double kLayers = 32, kKvHeads = 8, kContext = 32768;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct Row {
  std::string name;
  double bits, gib, key_mse, value_mse, attn_err, decode_ms;
};

template <class F>
double time_ms(F&& f) {
  f();  // warm up
  int reps = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    f();
    ++reps;
    elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < 200.0 && reps < 50);
  return elapsed / reps;
}

template <class Cache>
Row measure(const char* name, const synthetic::Workload& w, const std::vector<double>& ref) {
  using L = typename Cache::Layout;
  Cache cache(w.kv_heads, w.tokens);
  cache.append(w.k.data(), w.v.data(), w.tokens);
  const auto view = cache.view();
  // keys and values as the cache stores them (rotated: compare with R k, R_v v; the same error)
  const std::vector<float> keys = skv::to_key_basis<L>(w.k.data(), w.k.size() / L::kHeadDim);
  const std::vector<float> values = skv::to_value_basis<L>(w.v.data(), w.v.size() / L::kHeadDim);
  double ke = 0, ve = 0;
  for (int t = 0; t < w.tokens; ++t)
    for (int h = 0; h < w.kv_heads; ++h)
      for (int c = 0; c < w.head_dim; ++c) {
        const std::size_t i = (static_cast<std::size_t>(t) * w.kv_heads + h) * w.head_dim + c;
        ke += std::pow(view.key(t, h, c) - keys[i], 2);
        ve += std::pow(view.value(t, h, c) - values[i], 2);
      }
  std::vector<float> out(w.q.size());
  const double ms = time_ms([&] { skv::cpu::decode_attention(cache, w.q.data(), w.q_heads, out.data()); });
  const double n = static_cast<double>(w.k.size());
  const int sinks = L::sink_length(w.tokens);
  return {name,
          L::bits_per_element(w.tokens),
          kLayers * kKvHeads * (kContext * Cache::bytes_per_token() + sinks * L::sink_bytes_per_token()) / kGiB,
          ke / n,
          ve / n,
          synthetic::relative_error(out, ref),
          ms};
}

// The unquantized baseline: plain fp32 attention over fp16-stored K/V (fp16 is what engines keep).
Row baseline(const synthetic::Workload& w, const std::vector<double>& ref) {
  const int d = w.head_dim, group = w.q_heads / w.kv_heads;
  std::vector<float> k(w.k.size()), v(w.v.size());
  double ke = 0, ve = 0;
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = skv::to_float(skv::to_fp16(w.k[i]));
    v[i] = skv::to_float(skv::to_fp16(w.v[i]));
    ke += std::pow(k[i] - w.k[i], 2);
    ve += std::pow(v[i] - w.v[i], 2);
  }
  std::vector<float> out(w.q.size()), logits(w.tokens);
  auto run = [&] {
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    for (int qh = 0; qh < w.q_heads; ++qh) {
      const int h = qh / group;
      const float* q = &w.q[static_cast<std::size_t>(qh) * d];
      float mx = -INFINITY;
      for (int t = 0; t < w.tokens; ++t) {
        const float* kt = &k[(static_cast<std::size_t>(t) * w.kv_heads + h) * d];
        float s = 0;
        for (int c = 0; c < d; ++c) s += q[c] * kt[c];
        logits[t] = s * scale;
        mx = std::max(mx, logits[t]);
      }
      float z = 0;
      for (float& l : logits) z += (l = std::exp(l - mx));
      float* o = &out[static_cast<std::size_t>(qh) * d];
      for (int c = 0; c < d; ++c) o[c] = 0;
      for (int t = 0; t < w.tokens; ++t) {
        const float* vt = &v[(static_cast<std::size_t>(t) * w.kv_heads + h) * d];
        const float p = logits[t] / z;
        for (int c = 0; c < d; ++c) o[c] += p * vt[c];
      }
    }
  };
  const double ms = time_ms(run);
  const double n = static_cast<double>(k.size());
  return {"fp16 (unquantized)", 16.0, kLayers * kKvHeads * kContext * 2 * d * 2 / kGiB, ke / n, ve / n,
          synthetic::relative_error(out, ref), ms};
}

void print(const std::vector<Row>& rows) {
  std::printf("%-20s %9s %12s %10s %10s %12s %10s\n", "config", "bits/elem", "KV GiB @32k", "key MSE", "value MSE",
              "attn relerr", "decode ms");
  for (const Row& r : rows)
    std::printf("%-20s %9.3f %12.2f %10.3e %10.3e %12.4f %10.3f\n", r.name.c_str(), r.bits, r.gib, r.key_mse,
                r.value_mse, r.attn_err, r.decode_ms);
}

}  // namespace

int main() {
  synthetic::WorkloadOptions o;
  o.tokens = 4096;
  o.kv_heads = 8;
  o.group = 4;  // 32 query heads, as in Llama-3-8B
  o.head_dim = 128;
  o.logit_std = 3.0;  // peaked attention, as in real heads
  const auto w = synthetic::make_workload(o);
  std::vector<double> ref;
  const double entropy = synthetic::exact_attention(w, ref);

  std::printf("skv demo: %d tokens, %d KV heads, %d query heads, head_dim %d; attention entropy %.2f nats "
              "(uniform: %.2f)\n",
              w.tokens, w.kv_heads, w.q_heads, w.head_dim, entropy, std::log(static_cast<double>(w.tokens)));
  double ek = 0, evv = 0;
  for (std::size_t i = 0; i < w.k.size(); ++i) {
    ek += static_cast<double>(w.k[i]) * w.k[i];
    evv += static_cast<double>(w.v[i]) * w.v[i];
  }
  std::printf("key energy / value energy: %.1f\n\n", ek / evv);

  std::vector<Row> rows;
  rows.push_back(baseline(w, ref));
  rows.push_back(measure<skv::KVCache<8, 8>>("K8V8", w, ref));
  rows.push_back(measure<skv::KVCache<8, 4>>("K8V4", w, ref));
  rows.push_back(measure<skv::KVCache<4, 4>>("K4V4", w, ref));
  rows.push_back(measure<skv::KVCache<4, 2>>("K4V2", w, ref));
  rows.push_back(measure<skv::KVCache<2, 4>>("K2V4", w, ref));
  rows.push_back(measure<skv::KVCache<2, 2>>("K2V2", w, ref));
  rows.push_back(measure<skv::KVCache<4, 2, 128, skv::RotateKeys>>("K4V2+rot", w, ref));
  rows.push_back(measure<skv::KVCache<4, 2, 128, skv::RotateKeys, skv::Sinks<4>>>("K4V2+rot+sink4", w, ref));
  using K4V2RotBoth = skv::KVCache<4, 2, 128, skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>;
  rows.push_back(measure<K4V2RotBoth>("K4V2+rot+rotv+sink4", w, ref));
  // the same with values on the Lloyd-Max levels of a normal distribution (Scheme::LloydMax)
  using K4V2LloydMax = skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>,
                                         skv::Quantizer<2, 64, skv::Axis::Token, skv::Scheme::LloydMax>, 128, 64, 0,
                                         skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>>;
  rows.push_back(measure<K4V2LloydMax>("K4V2+rot+rotv+lmv+s4", w, ref));
  rows.push_back(measure<skv::KVCache<4, 2, 128, skv::ClipKeys, skv::ClipValues>>("K4V2+clip", w, ref));
  rows.push_back(measure<skv::KVCache<2, 2, 128, skv::RotateKeys>>("K2V2+rot", w, ref));
  print(rows);

  const Row& k4v2 = rows[4];
  const Row& k2v4 = rows[5];
  std::printf("\nAt equal memory (%.2f bits/elem), peaked attention: K4V2 error %.4f vs K2V4 %.4f -> %s\n", k4v2.bits,
              k4v2.attn_err, k2v4.attn_err, k4v2.attn_err < k2v4.attn_err ? "K4V2 wins (keys first)" : "K2V4 wins");

  // The same question with nearly uniform attention, where the premise no longer bites.
  o.logit_std = 0.05;
  const auto flat = synthetic::make_workload(o);
  const double flat_entropy = synthetic::exact_attention(flat, ref);
  const Row a = measure<skv::KVCache<4, 2>>("K4V2", flat, ref);
  const Row b = measure<skv::KVCache<2, 4>>("K2V4", flat, ref);
  std::printf("Nearly uniform attention (entropy %.2f nats): K4V2 error %.4f vs K2V4 %.4f -> %s\n", flat_entropy,
              a.attn_err, b.attn_err, a.attn_err < b.attn_err ? "K4V2 wins" : "K2V4 wins (values first)");
  return 0;
}
