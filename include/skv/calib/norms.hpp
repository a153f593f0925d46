// skv/calib/norms.hpp: Frobenius and spectral norms of W_K and W_V per layer and per KV head, read
// from a safetensors checkpoint (host; needs nlohmann-json through io/safetensors.hpp).
//
// Recognised layouts (any prefix before "layers." / "h." is accepted):
//   separate  ...layers.{i}.self_attn.k_proj.weight / v_proj.weight   [kv_heads * head_dim, hidden]
//             (Llama, Mistral, Qwen2/3, Gemma, ...)
//   phi3      ...layers.{i}.self_attn.qkv_proj.weight   rows [q heads | k heads | v heads]
//   gpt2      ...h.{i}.attn.c_attn.weight               Conv1D, [hidden, 3 * hidden], columns q | k | v
// Rows (columns for GPT-2) h * head_dim .. (h + 1) * head_dim of W_K belong to KV head h; with GQA
// several query heads share it, and W_K / W_V have num_kv_heads heads, not num_heads.
// These norms are the calibration-free proxy of the paper's Theorem 1 (docs/calibration.md).
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <skv/calib/spectral.hpp>
#include <skv/error.hpp>
#include <skv/io/safetensors.hpp>

namespace skv {
namespace calib {

enum class AttentionLayout { Separate, FusedPhi3, FusedGpt2 };

inline const char* layout_name(AttentionLayout l) {
  switch (l) {
    case AttentionLayout::Separate: return "separate k_proj/v_proj";
    case AttentionLayout::FusedPhi3: return "fused qkv_proj (Phi-3)";
    case AttentionLayout::FusedGpt2: return "fused c_attn (GPT-2)";
  }
  return "?";
}

/// Norms of one block of W_K and W_V (a whole layer or one KV head).
struct KVNorms {
  double k_fro = 0, v_fro = 0, k_spec = 0, v_spec = 0;
  int k_iterations = 0, v_iterations = 0;
  bool converged = true;
};

struct LayerNorms {
  int layer = 0;
  KVNorms norms;               ///< the layer's whole W_K and W_V
  std::vector<KVNorms> heads;  ///< per KV head (only when requested)
};

struct ModelNorms {
  AttentionLayout layout = AttentionLayout::Separate;
  int num_kv_heads = 0;  ///< 0 when unknown (no config and no override)
  int head_dim = 0;
  std::vector<LayerNorms> layers;
};

struct NormOptions {
  bool per_head = false;
  double tolerance = 1e-8;
  int max_iterations = 5000;
  /// Geometry; 0 = take it from config.json next to the checkpoint (needed for per-head norms and Phi-3).
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  /// Called after each layer with (done, total).
  std::function<void(int, int)> progress;
};

namespace detail {

/// If `name` is <prefix><word>.<i><suffix> with <prefix> empty or ending in '.', returns i; else -1.
inline int layer_of(const std::string& name, const std::string& word, const std::string& suffix) {
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const std::string p = name.substr(0, name.size() - suffix.size());
  const auto dot = p.find_last_of('.');
  if (dot == std::string::npos || dot + 1 >= p.size() || p.size() - dot - 1 > 6) return -1;
  for (std::size_t i = dot + 1; i < p.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(p[i]))) return -1;
  const std::string head = p.substr(0, dot);
  if (head.size() < word.size() || head.compare(head.size() - word.size(), word.size(), word) != 0) return -1;
  if (head.size() > word.size() && head[head.size() - word.size() - 1] != '.') return -1;
  return std::stoi(p.substr(dot + 1));
}

inline std::map<int, std::string> find_layers(const std::vector<std::string>& names, const std::string& word,
                                              const std::string& suffix) {
  std::map<int, std::string> out;
  for (const auto& n : names) {
    const int i = layer_of(n, word, suffix);
    if (i >= 0) out[i] = n;
  }
  return out;
}

inline KVNorms norms_of(const MatrixRef& k, const MatrixRef& v, const NormOptions& o) {
  KVNorms r;
  r.k_fro = frobenius_norm(k);
  r.v_fro = frobenius_norm(v);
  const SpectralNorm ks = spectral_norm(k, o.tolerance, o.max_iterations);
  const SpectralNorm vs = spectral_norm(v, o.tolerance, o.max_iterations);
  r.k_spec = ks.value;
  r.v_spec = vs.value;
  r.k_iterations = ks.iterations;
  r.v_iterations = vs.iterations;
  r.converged = ks.converged && vs.converged;
  return r;
}

inline std::string list_names(const std::vector<std::string>& names) {
  std::string s;
  const std::size_t shown = names.size() < 40 ? names.size() : 40;
  for (std::size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (shown < names.size()) s += ", ... (" + std::to_string(names.size() - shown) + " more)";
  return s.empty() ? std::string("(none)") : s;
}

}  // namespace detail

/// Detects the attention layout of a checkpoint; throws, listing the tensor names seen, when none fits.
inline AttentionLayout detect_layout(const std::vector<std::string>& names, const std::string& where) {
  if (!detail::find_layers(names, "layers", ".self_attn.k_proj.weight").empty()) return AttentionLayout::Separate;
  if (!detail::find_layers(names, "layers", ".self_attn.qkv_proj.weight").empty()) return AttentionLayout::FusedPhi3;
  if (!detail::find_layers(names, "h", ".attn.c_attn.weight").empty()) return AttentionLayout::FusedGpt2;
  throw Error(where + ": unrecognised attention layout (expected layers.{i}.self_attn.k_proj/v_proj, "
                      "layers.{i}.self_attn.qkv_proj or h.{i}.attn.c_attn weights); tensors seen: " +
              detail::list_names(names));
}

/// Norms of W_K and W_V for every layer of a checkpoint. `config` may be null (geometry then comes
/// from the options, or per-layer norms only).
inline ModelNorms compute_norms(const io::Checkpoint& ckpt, const NormOptions& o, const io::ModelConfig* config) {
  const std::vector<std::string> names = ckpt.names();
  ModelNorms out;
  out.layout = detect_layout(names, ckpt.directory());
  int nq = o.num_heads ? o.num_heads : (config ? config->num_heads : 0);
  int nkv = o.num_kv_heads ? o.num_kv_heads : (config ? config->num_kv_heads : 0);
  int hd = o.head_dim ? o.head_dim : (config ? config->head_dim : 0);
  if (nkv == 0 && nq != 0) nkv = nq;

  std::map<int, std::string> k_names, v_names;
  if (out.layout == AttentionLayout::Separate) {
    k_names = detail::find_layers(names, "layers", ".self_attn.k_proj.weight");
    v_names = detail::find_layers(names, "layers", ".self_attn.v_proj.weight");
  } else if (out.layout == AttentionLayout::FusedPhi3) {
    k_names = v_names = detail::find_layers(names, "layers", ".self_attn.qkv_proj.weight");
  } else {
    k_names = v_names = detail::find_layers(names, "h", ".attn.c_attn.weight");
    if (nq && !nkv) nkv = nq;
  }
  int done = 0;
  const int total = static_cast<int>(k_names.size());
  for (const auto& kv : k_names) {
    const int layer = kv.first;
    const auto vit = v_names.find(layer);
    if (vit == v_names.end())
      throw Error(ckpt.directory() + ": layer " + std::to_string(layer) + " has '" + kv.second + "' but no value projection");
    const io::TensorRef kt = ckpt.tensor(kv.second);
    const io::TensorRef vt = ckpt.tensor(vit->second);
    auto check2d = [&](const io::TensorRef& t) {
      if (t.shape().size() != 2 || t.shape()[0] <= 0 || t.shape()[1] <= 0)
        throw Error(*t.file + ": tensor '" + t.name() + "' should be a 2-D weight matrix");
    };
    check2d(kt);
    check2d(vt);
    const std::vector<float> kdata = kt.to_float();
    const std::vector<float> vdata = out.layout == AttentionLayout::Separate ? vt.to_float() : std::vector<float>{};
    // a NaN would read as a norm of 0 (comparisons with NaN are false), an Inf as a norm of Inf
    auto check_finite = [&](const std::vector<float>& x, const io::TensorRef& t) {
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i]))
          throw Error(*t.file + ": tensor '" + t.name() + "' has a NaN or Inf at element " + std::to_string(i));
    };
    check_finite(kdata, kt);
    check_finite(vdata, vt);
    MatrixRef k, v;
    const std::int64_t r0 = kt.shape()[0], c0 = kt.shape()[1];
    if (out.layout == AttentionLayout::Separate) {
      k = row_major(kdata.data(), r0, c0);
      v = row_major(vdata.data(), vt.shape()[0], vt.shape()[1]);
    } else if (out.layout == AttentionLayout::FusedPhi3) {
      // rows: [nq * hd | nkv * hd | nkv * hd]; without geometry assume equal thirds (no GQA).
      std::int64_t q_rows = r0 / 3, kv_rows = r0 / 3;
      if (nq && nkv && hd) {
        q_rows = static_cast<std::int64_t>(nq) * hd;
        kv_rows = static_cast<std::int64_t>(nkv) * hd;
      }
      if (q_rows + 2 * kv_rows != r0)
        throw Error(*kt.file + ": tensor '" + kt.name() + "' has " + std::to_string(r0) +
                    " rows, which does not split into q, k and v heads (give num_heads / num_kv_heads / head_dim)");
      const MatrixRef all = row_major(kdata.data(), r0, c0);
      k = all.row_block(q_rows, kv_rows);
      v = all.row_block(q_rows + kv_rows, kv_rows);
    } else {
      // Conv1D: [hidden, 3 * hidden]; output features are columns q | k | v.
      if (c0 % 3 != 0)
        throw Error(*kt.file + ": tensor '" + kt.name() + "' has " + std::to_string(c0) + " columns, not a multiple of 3");
      const MatrixRef all_t = row_major(kdata.data(), r0, c0).transposed();  // [3 * hidden, hidden]
      k = all_t.row_block(c0 / 3, c0 / 3);
      v = all_t.row_block(2 * (c0 / 3), c0 / 3);
    }
    if (k.rows != v.rows || k.cols != v.cols)
      throw Error(ckpt.directory() + ": layer " + std::to_string(layer) + ": W_K is " + std::to_string(k.rows) + "x" +
                  std::to_string(k.cols) + " but W_V is " + std::to_string(v.rows) + "x" + std::to_string(v.cols));
    LayerNorms ln;
    ln.layer = layer;
    ln.norms = detail::norms_of(k, v, o);
    if (o.per_head) {
      int heads = nkv;
      if (!heads && hd) heads = static_cast<int>(k.rows / hd);
      if (!heads) throw Error(ckpt.directory() + ": per-head norms need the head geometry (config.json, or num_kv_heads / head_dim)");
      if (k.rows % heads != 0 || (hd && k.rows != static_cast<std::int64_t>(heads) * hd))
        throw Error(ckpt.directory() + ": layer " + std::to_string(layer) + ": W_K has " + std::to_string(k.rows) +
                    " rows, which is not " + std::to_string(heads) + " KV heads" +
                    (hd ? " of " + std::to_string(hd) : std::string()));
      const std::int64_t per = k.rows / heads;
      for (int h = 0; h < heads; ++h) ln.heads.push_back(detail::norms_of(k.row_block(h * per, per), v.row_block(h * per, per), o));
      out.num_kv_heads = heads;
      out.head_dim = static_cast<int>(per);
    }
    out.layers.push_back(std::move(ln));
    if (o.progress) o.progress(++done, total);
  }
  if (!o.per_head) {
    out.num_kv_heads = nkv;
    out.head_dim = hd;
  }
  return out;
}

}  // namespace calib
}  // namespace skv
