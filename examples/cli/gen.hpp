// examples/cli/gen.hpp: synthetic K/V/Q dumps and tiny checkpoints for tests and the docs
// (`skv gen-dump`, `skv gen-model`; hidden subcommands).
//
// The dump mimics what dump_kv.py records from a real model (see skv/calib/synthetic.hpp for the
// reasoning): keys have per-channel offsets, a few large outlier channels on low-frequency RoPE
// pairs and unit noise, RoPE'd at their position; values are zero-mean Gaussian; queries share the
// keys' mean directions. The key/value energy ratio changes from layer to layer and head to head
// (from a few times, Qwen2.5-like, to tens of times, Llama-like), so a plan has something to find.
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <skv/io/safetensors.hpp>

#include <skv/calib/synthetic.hpp>  // skv::calib::synthetic::rope

namespace skv_cli {

struct GenDumpOptions {
  int layers = 4;
  int kv_heads = 2;
  int q_per_kv = 2;
  int tokens = 256;
  int head_dim = 64;
  unsigned seed = 1;
  bool queries = true;
  skv::io::DType dtype = skv::io::DType::F32;
};

inline void gen_dump(const std::string& path, const GenDumpOptions& o) {
  skv::detail::require(o.layers > 0 && o.kv_heads > 0 && o.q_per_kv > 0 && o.tokens > 0 && o.head_dim > 0 &&
                           o.head_dim % 2 == 0,
                       "gen-dump: sizes must be positive and head_dim even");
  const int d = o.head_dim, h = o.kv_heads, hq = h * o.q_per_kv, t = o.tokens;
  std::mt19937 rng(o.seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<skv::io::TensorData> out;
  for (int l = 0; l < o.layers; ++l) {
    std::vector<float> k(static_cast<std::size_t>(t) * h * d), v(k.size()), q(static_cast<std::size_t>(t) * hq * d);
    for (int head = 0; head < h; ++head) {
      // Energy ratio from ~3x (first layer) to ~40x (last), and a little from head to head.
      const double frac = o.layers > 1 ? static_cast<double>(l) / (o.layers - 1) : 0.5;
      const float key_scale = static_cast<float>(0.5 + 1.5 * frac) * (1.0f + 0.25f * static_cast<float>(head % 2));
      const float value_std = 0.25f + 0.1f * static_cast<float>((head + l) % 3);
      std::vector<float> mean(static_cast<std::size_t>(d)), spread(static_cast<std::size_t>(d), 1.0f);
      for (auto& m : mean) m = 1.5f * n01(rng);
      for (int j = 0; j < 4 && j * 3 < d / 2; ++j) {
        const int pair = d / 2 - 1 - j * 3;
        const float big = (j % 2 ? -1.0f : 1.0f) * (8.0f + 1.5f * static_cast<float>(j));
        mean[static_cast<std::size_t>(pair)] = big;
        mean[static_cast<std::size_t>(pair + d / 2)] = 0.5f * big;
        spread[static_cast<std::size_t>(pair)] = spread[static_cast<std::size_t>(pair + d / 2)] = 2.0f;
      }
      for (int s = 0; s < t; ++s) {
        float* kr = &k[(static_cast<std::size_t>(s) * h + head) * d];
        float* vr = &v[(static_cast<std::size_t>(s) * h + head) * d];
        for (int c = 0; c < d; ++c) {
          kr[c] = key_scale * (mean[static_cast<std::size_t>(c)] + spread[static_cast<std::size_t>(c)] * n01(rng));
          vr[c] = value_std * n01(rng);
        }
        skv::calib::synthetic::rope(kr, d, s);
        for (int g = 0; g < o.q_per_kv; ++g) {
          float* qr = &q[(static_cast<std::size_t>(s) * hq + head * o.q_per_kv + g) * d];
          for (int c = 0; c < d; ++c) qr[c] = 0.15f * mean[static_cast<std::size_t>(c)] + n01(rng);
          skv::calib::synthetic::rope(qr, d, s);
        }
      }
      // Scale this head's queries so the logits q.k / sqrt(d) of a query against all earlier keys
      // spread with a standard deviation from 1 (first layer: broad attention) to 5 (last layer: the
      // peaked attention of retrieval heads), measured on a few query tokens.
      double s1 = 0, s2 = 0, n = 0;
      for (int s = t - 1; s >= 0 && s >= t - 8; --s)
        for (int u = 0; u <= s; ++u) {
          const float* qr = &q[(static_cast<std::size_t>(s) * hq + head * o.q_per_kv) * d];
          const float* kr = &k[(static_cast<std::size_t>(u) * h + head) * d];
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(qr[c]) * kr[c];
          dot /= std::sqrt(static_cast<double>(d));
          s1 += dot;
          s2 += dot * dot;
          n += 1;
        }
      const double sd = std::sqrt(std::max(1e-30, s2 / n - (s1 / n) * (s1 / n)));
      const float f = static_cast<float>((1.0 + 4.0 * frac + 0.5 * (head % 2)) / sd);
      for (int s = 0; s < t; ++s)
        for (int g = 0; g < o.q_per_kv; ++g) {
          float* qr = &q[(static_cast<std::size_t>(s) * hq + head * o.q_per_kv + g) * d];
          for (int c = 0; c < d; ++c) qr[c] *= f;
        }
    }
    const std::string p = "layers." + std::to_string(l);
    out.push_back({p + ".k", o.dtype, {t, h, d}, std::move(k)});
    out.push_back({p + ".v", o.dtype, {t, h, d}, std::move(v)});
    if (o.queries) out.push_back({p + ".q", o.dtype, {t, hq, d}, std::move(q)});
  }
  skv::io::write_safetensors(path, out, {{"format", "skv-kv-dump"}, {"source", "skv gen-dump"}});
}

struct GenModelOptions {
  std::string layout = "llama";  ///< llama | phi3 | gpt2
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int head_dim = 16;
  unsigned seed = 1;
};

/// A tiny checkpoint folder (model.safetensors + config.json) with random attention weights; keys'
/// rows are scaled up so ||W_K|| > ||W_V|| as in Llama-class models.
inline void gen_model(const std::string& dir, const GenModelOptions& o) {
  const int d = o.head_dim, hidden = o.heads * d;
  const bool gpt2 = o.layout == "gpt2";
  skv::detail::require(o.layout == "llama" || o.layout == "phi3" || gpt2, "gen-model: layout must be llama, phi3 or gpt2");
  const int kvh = gpt2 ? o.heads : o.kv_heads;
  std::mt19937 rng(o.seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  auto mat = [&](int rows, int cols, float scale) {
    std::vector<float> m(static_cast<std::size_t>(rows) * cols);
    for (auto& x : m) x = scale * n01(rng);
    return m;
  };
  std::vector<skv::io::TensorData> out;
  for (int l = 0; l < o.layers; ++l) {
    const float ks = 0.05f * static_cast<float>(2 + l), vs = 0.02f;
    auto q = mat(o.heads * d, hidden, 0.02f), k = mat(kvh * d, hidden, ks), v = mat(kvh * d, hidden, vs);
    if (o.layout == "llama") {
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      out.push_back({p + "q_proj.weight", skv::io::DType::BF16, {o.heads * d, hidden}, q});
      out.push_back({p + "k_proj.weight", skv::io::DType::BF16, {kvh * d, hidden}, k});
      out.push_back({p + "v_proj.weight", skv::io::DType::BF16, {kvh * d, hidden}, v});
    } else if (o.layout == "phi3") {
      std::vector<float> qkv = q;
      qkv.insert(qkv.end(), k.begin(), k.end());
      qkv.insert(qkv.end(), v.begin(), v.end());
      out.push_back({"model.layers." + std::to_string(l) + ".self_attn.qkv_proj.weight", skv::io::DType::F16,
                     {(o.heads + 2 * kvh) * d, hidden}, qkv});
    } else {
      // Conv1D [hidden, 3 * hidden]: element (i, j) is output feature j of input i.
      std::vector<float> w(static_cast<std::size_t>(hidden) * 3 * hidden);
      for (int i = 0; i < hidden; ++i)
        for (int j = 0; j < hidden; ++j) {
          const std::size_t src = static_cast<std::size_t>(j) * hidden + i;
          w[static_cast<std::size_t>(i) * 3 * hidden + j] = q[src];
          w[static_cast<std::size_t>(i) * 3 * hidden + hidden + j] = k[src];
          w[static_cast<std::size_t>(i) * 3 * hidden + 2 * hidden + j] = v[src];
        }
      out.push_back({"h." + std::to_string(l) + ".attn.c_attn.weight", skv::io::DType::F32, {hidden, 3 * hidden}, w});
    }
  }
  skv::io::write_safetensors(dir + "/model.safetensors", out);
  nlohmann::json cfg;
  if (gpt2) {
    cfg = {{"model_type", "gpt2"}, {"n_layer", o.layers}, {"n_head", o.heads}, {"n_embd", hidden}};
  } else {
    cfg = {{"model_type", o.layout == "phi3" ? "phi3" : "llama"}, {"num_hidden_layers", o.layers},
           {"num_attention_heads", o.heads}, {"num_key_value_heads", kvh}, {"hidden_size", hidden}};
  }
  std::ofstream f(dir + "/config.json");
  f << cfg.dump(2) << "\n";
  if (!f) throw skv::Error(dir + "/config.json: write failed");
}

}  // namespace skv_cli
