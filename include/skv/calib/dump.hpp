// skv/calib/dump.hpp: K/V activation dumps and their distortion table (host; needs nlohmann-json).
//
// A dump is one safetensors file with, for each layer i, tensors layers.{i}.k and layers.{i}.v of
// shape [tokens, kv_heads, head_dim] and optionally layers.{i}.q of shape [tokens, q_heads, head_dim]
// (q_heads a multiple of kv_heads), dtype F32, F16 or BF16. examples/python/dump_kv.py writes one
// from a Hugging Face model; `skv gen-dump` writes a synthetic one.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <skv/calib/distortion.hpp>
#include <skv/calib/norms.hpp>
#include <skv/error.hpp>
#include <skv/io/safetensors.hpp>

namespace skv {
namespace calib {

/// One layer of a dump, as floats.
struct LayerKV {
  int tokens = 0, kv_heads = 0, q_heads = 0, head_dim = 0;
  std::vector<float> k, v;  ///< [tokens][kv_heads][head_dim]
  std::vector<float> q;     ///< [tokens][q_heads][head_dim], empty without queries
};

/// An open dump: validated geometry, layers read on demand.
class KVDump {
 public:
  explicit KVDump(const std::string& path) : file_(path) {
    std::vector<std::string> names;
    for (const auto& t : file_.tensors()) names.push_back(t.name);
    const auto ks = detail::find_layers(names, "layers", ".k");
    const auto vs = detail::find_layers(names, "layers", ".v");
    const auto qs = detail::find_layers(names, "layers", ".q");
    if (ks.empty())
      throw Error(path + ": not a K/V dump (expected tensors layers.{i}.k / layers.{i}.v); tensors seen: " +
                  detail::list_names(names));
    has_q_ = !qs.empty();
    for (const auto& kv : ks) {
      const int i = kv.first;
      if (!vs.count(i)) throw Error(path + ": layer " + std::to_string(i) + " has keys but no tensor layers." + std::to_string(i) + ".v");
      if (has_q_ && !qs.count(i)) throw Error(path + ": layer " + std::to_string(i) + " has no queries (layers." + std::to_string(i) + ".q) but other layers do");
      const auto kt = file_.tensor(kv.second), vt = file_.tensor(vs.at(i));
      check_shape(kt);
      check_shape(vt);
      if (kt.shape() != vt.shape())
        throw Error(path + ": tensors '" + kt.name() + "' and '" + vt.name() + "' differ in shape");
      const int t = static_cast<int>(kt.shape()[0]), h = static_cast<int>(kt.shape()[1]), d = static_cast<int>(kt.shape()[2]);
      if (layers_.empty()) {
        tokens_ = t;
        kv_heads_ = h;
        head_dim_ = d;
      } else if (t != tokens_ || h != kv_heads_ || d != head_dim_) {
        throw Error(path + ": tensor '" + kt.name() + "' has a different shape from layer " + std::to_string(layers_.front()));
      }
      if (has_q_) {
        const auto qt = file_.tensor(qs.at(i));
        check_shape(qt);
        if (qt.shape()[0] != t || qt.shape()[2] != d || qt.shape()[1] % h != 0)
          throw Error(path + ": tensor '" + qt.name() + "' must be [" + std::to_string(t) + ", a multiple of " +
                      std::to_string(h) + ", " + std::to_string(d) + "]");
        // one query-head count for the whole dump: every reader sizes its buffers with q_heads()
        if (!layers_.empty() && qt.shape()[1] != q_heads_)
          throw Error(path + ": tensor '" + qt.name() + "' has " + std::to_string(qt.shape()[1]) +
                      " query heads, but layer " + std::to_string(layers_.front()) + " has " + std::to_string(q_heads_) +
                      " (every layer must have the same number)");
        q_heads_ = static_cast<int>(qt.shape()[1]);
      }
      layers_.push_back(i);
    }
    for (const auto& kv : vs)
      if (!ks.count(kv.first))
        throw Error(path + ": layer " + std::to_string(kv.first) + " has values but no keys");
  }

  const std::string& path() const { return file_.path(); }
  const std::vector<int>& layer_ids() const { return layers_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int tokens() const { return tokens_; }
  int kv_heads() const { return kv_heads_; }
  int q_heads() const { return q_heads_; }
  int head_dim() const { return head_dim_; }
  bool has_queries() const { return has_q_; }

  /// The n-th layer of the dump (n indexes layer_ids()).
  LayerKV layer(int n) const {
    const std::string p = "layers." + std::to_string(layers_.at(static_cast<std::size_t>(n)));
    LayerKV l;
    l.tokens = tokens_;
    l.kv_heads = kv_heads_;
    l.q_heads = q_heads_;
    l.head_dim = head_dim_;
    l.k = file_.tensor(p + ".k").to_float();
    l.v = file_.tensor(p + ".v").to_float();
    if (has_q_) l.q = file_.tensor(p + ".q").to_float();
    check_finite(l.k, p + ".k");
    check_finite(l.v, p + ".v");
    check_finite(l.q, p + ".q");
    return l;
  }

 private:
  void check_shape(const io::TensorRef& t) const {
    const auto& s = t.shape();
    if (s.size() != 3 || s[0] <= 0 || s[1] <= 0 || s[2] <= 0 || s[0] > (1 << 24) || s[1] > 4096 || s[2] > 4096)
      throw Error(path() + ": tensor '" + t.name() + "' must have shape [tokens, heads, head_dim] with positive sizes");
  }
  void check_finite(const std::vector<float>& x, const std::string& name) const {
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!std::isfinite(x[i])) throw Error(path() + ": tensor '" + name + "' has a NaN or Inf at element " + std::to_string(i));
  }

  io::SafetensorsFile file_;
  std::vector<int> layers_;
  int tokens_ = 0, kv_heads_ = 0, q_heads_ = 0, head_dim_ = 0;
  bool has_q_ = false;
};

/// Every unit's distortion: units are ordered layer-major, then head, then K before V.
struct DistortionTable {
  std::vector<int> bits;
  std::vector<int> layers;  ///< layer ids, in dump order
  int kv_heads = 0;
  int head_dim = 0;
  int tokens = 0;
  int key_group = 32;
  int value_group = 64;
  bool score_space = false;
  std::vector<UnitDistortion> units;

  const UnitDistortion& unit(int layer_index, int head, bool key) const {
    return units[(static_cast<std::size_t>(layer_index) * kv_heads + head) * 2 + (key ? 0 : 1)];
  }
};

/// Measures every unit of a dump. `progress(done, total)` is called after each layer.
inline DistortionTable measure_distortion(const KVDump& dump, const DistortionOptions& o,
                                          const std::function<void(int, int)>& progress = {}) {
  DistortionTable table;
  table.bits = o.bits;
  table.layers = dump.layer_ids();
  table.kv_heads = dump.kv_heads();
  table.head_dim = dump.head_dim();
  table.tokens = dump.tokens();
  table.key_group = o.key_group;
  table.value_group = o.value_group ? o.value_group : default_value_group(dump.head_dim());
  table.score_space = o.score_space && dump.has_queries();
  const int h = dump.kv_heads(), d = dump.head_dim();
  for (int n = 0; n < dump.num_layers(); ++n) {
    const LayerKV l = dump.layer(n);
    const std::string name = "layers." + std::to_string(table.layers[static_cast<std::size_t>(n)]);
    // the range the cache accepts (skv eval appends to a real cache and is held to it)
    detail::check_quantizable(l.k.data(), l.k.size(), dump.path() + ": tensor '" + name + ".k'");
    detail::check_quantizable(l.v.data(), l.v.size(), dump.path() + ": tensor '" + name + ".v'");
    const int group = l.q_heads / h;
    for (int head = 0; head < h; ++head) {
      const std::size_t kv_stride = static_cast<std::size_t>(h) * d;
      const float* q = l.q.empty() ? nullptr : l.q.data() + static_cast<std::size_t>(head) * group * d;
      auto kv = measure_head(l.k.data() + static_cast<std::size_t>(head) * d, l.v.data() + static_cast<std::size_t>(head) * d,
                             kv_stride, q, static_cast<std::size_t>(l.q_heads) * d, group, l.tokens, d, o);
      kv.first.layer = kv.second.layer = table.layers[static_cast<std::size_t>(n)];
      kv.first.head = kv.second.head = head;
      table.units.push_back(std::move(kv.first));
      table.units.push_back(std::move(kv.second));
    }
    if (progress) progress(n + 1, dump.num_layers());
  }
  return table;
}

}  // namespace calib
}  // namespace skv
