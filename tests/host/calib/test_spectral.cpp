// Spectral and Frobenius norms: matrices with known singular values, strided views, and the norms of
// W_K / W_V read from checkpoints in the separate (Llama), fused Phi-3 and fused GPT-2 layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <skv/calib/norms.hpp>
#include <skv/calib/spectral.hpp>
#include <skv/io/safetensors.hpp>

#include "helpers.hpp"

namespace {

using skv::calib::frobenius_norm;
using skv::calib::row_major;
using skv::calib::spectral_norm;

double fro_of(const std::vector<double>& s) {
  double x = 0;
  for (double v : s) x += v * v;
  return std::sqrt(x);
}

std::vector<double> geometric(int n, double top, double ratio) {
  std::vector<double> s;
  for (int i = 0; i < n; ++i) s.push_back(top * std::pow(ratio, i));
  return s;
}

TEST(SpectralNorm, MatchesKnownSingularValuesWithin1e4) {
  struct Case {
    int rows, cols;
    std::vector<double> s;
  };
  const std::vector<Case> cases = {
      {16, 16, {5.0, 3.0, 1.0, 0.5}},
      {48, 20, {2.5, 2.0, 1.9, 0.1, 0.05}},
      {20, 64, {7.0, 1.2, 1.1, 1.0, 0.3}},
      {32, 32, {1.0, 0.98, 0.5}},               // nearly degenerate top pair
      {40, 40, geometric(40, 3.0, 0.97)},       // full rank, slowly decaying spectrum
      {24, 96, geometric(24, 0.8, 0.99)},       // full rank, top values within 1%
  };
  unsigned seed = 1;
  for (const auto method : {skv::calib::SpectralMethod::Lanczos, skv::calib::SpectralMethod::PowerIteration}) {
    for (const auto& c : cases) {
      const std::vector<float> w = skv_test::matrix_with_singular_values(c.rows, c.cols, c.s, seed++);
      const auto r = spectral_norm(row_major(w.data(), c.rows, c.cols), 1e-12, 20000, method);
      EXPECT_TRUE(r.converged);
      EXPECT_GE(r.iterations, 1);
      EXPECT_NEAR(r.value, c.s[0], 1e-4 * c.s[0]) << c.rows << "x" << c.cols;
      EXPECT_NEAR(frobenius_norm(row_major(w.data(), c.rows, c.cols)), fro_of(c.s), 1e-5 * fro_of(c.s));
    }
  }
}

TEST(SpectralNorm, PowerIterationNeedsMoreStepsForCloserSingularValues) {
  const auto far = skv_test::matrix_with_singular_values(24, 24, {4.0, 1.0}, 7);
  const auto close = skv_test::matrix_with_singular_values(24, 24, {4.0, 3.9}, 7);
  const auto power = skv::calib::SpectralMethod::PowerIteration;
  const auto a = spectral_norm(row_major(far.data(), 24, 24), 1e-10, 5000, power);
  const auto b = spectral_norm(row_major(close.data(), 24, 24), 1e-10, 5000, power);
  EXPECT_TRUE(a.converged);
  EXPECT_TRUE(b.converged);
  EXPECT_LT(a.iterations * 3, b.iterations);
}

TEST(SpectralNorm, LanczosNeedsFarFewerProductsThanPowerIteration) {
  const auto s = geometric(64, 2.0, 0.995);  // top singular values within 0.5%
  const auto w = skv_test::matrix_with_singular_values(64, 128, s, 9);
  const auto lanczos = spectral_norm(row_major(w.data(), 64, 128), 1e-10, 5000, skv::calib::SpectralMethod::Lanczos);
  const auto power = spectral_norm(row_major(w.data(), 64, 128), 1e-10, 5000, skv::calib::SpectralMethod::PowerIteration);
  EXPECT_TRUE(lanczos.converged);
  EXPECT_NEAR(lanczos.value, 2.0, 2e-5);
  EXPECT_LT(lanczos.iterations * 4, power.iterations) << lanczos.iterations << " vs " << power.iterations;
  EXPECT_GT(lanczos.value, power.value - 1e-9);  // both approach sigma_max from below; Lanczos is closer
}

TEST(SpectralNorm, StopsAtMaxIterationsAndSaysSo) {
  const auto w = skv_test::matrix_with_singular_values(24, 24, geometric(24, 4.0, 0.999), 3);
  for (const auto method : {skv::calib::SpectralMethod::Lanczos, skv::calib::SpectralMethod::PowerIteration}) {
    const auto r = spectral_norm(row_major(w.data(), 24, 24), 1e-15, 3, method);
    EXPECT_EQ(r.iterations, 3);
    EXPECT_FALSE(r.converged);
    EXPECT_LE(r.value, 4.0 * (1 + 1e-6));
    EXPECT_GT(r.value, 3.0);
  }
}

TEST(SpectralNorm, ZeroAndEmptyMatrices) {
  std::vector<float> z(12, 0.0f);
  EXPECT_EQ(spectral_norm(row_major(z.data(), 3, 4)).value, 0.0);
  EXPECT_EQ(spectral_norm(row_major(nullptr, 0, 4)).value, 0.0);
  EXPECT_THROW(spectral_norm(row_major(z.data(), 3, 4), -1.0), skv::Error);
}

TEST(SpectralNorm, StridedBlocksAndTransposeAgreeWithCopies) {
  const auto w = skv_test::matrix_with_singular_values(12, 10, {3.0, 2.0, 1.0}, 11);
  const auto view = row_major(w.data(), 12, 10);
  std::vector<float> block(w.begin() + 4 * 10, w.begin() + 8 * 10), t(120);
  for (int r = 0; r < 12; ++r)
    for (int c = 0; c < 10; ++c) t[static_cast<std::size_t>(c) * 12 + r] = w[static_cast<std::size_t>(r) * 10 + c];
  EXPECT_DOUBLE_EQ(frobenius_norm(view.row_block(4, 4)), frobenius_norm(row_major(block.data(), 4, 10)));
  EXPECT_NEAR(spectral_norm(view.row_block(4, 4)).value, spectral_norm(row_major(block.data(), 4, 10)).value, 1e-9);
  EXPECT_NEAR(spectral_norm(view.transposed()).value, spectral_norm(row_major(t.data(), 10, 12)).value, 1e-7);
  EXPECT_NEAR(spectral_norm(view.transposed()).value, 3.0, 3e-4);
}

// ---- norms from checkpoints -----------------------------------------------------------------------

struct Model {
  int layers = 2, heads = 4, kv_heads = 2, head_dim = 8;
  int hidden() const { return heads * head_dim; }
  std::vector<std::vector<float>> q, k, v;  // per layer, row-major [out, hidden]
};

Model make_model(bool gqa) {
  Model m;
  if (!gqa) m.kv_heads = m.heads;
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int l = 0; l < m.layers; ++l) {
    auto mat = [&](int rows, float scale) {
      std::vector<float> x(static_cast<std::size_t>(rows) * m.hidden());
      for (auto& e : x) e = scale * g(rng);
      return x;
    };
    m.q.push_back(mat(m.heads * m.head_dim, 0.1f));
    m.k.push_back(mat(m.kv_heads * m.head_dim, 0.3f * static_cast<float>(l + 1)));
    m.v.push_back(mat(m.kv_heads * m.head_dim, 0.1f));
  }
  return m;
}

void write_config(const std::string& dir, const Model& m, bool gpt2) {
  nlohmann::json c = gpt2 ? nlohmann::json{{"model_type", "gpt2"}, {"n_layer", m.layers}, {"n_head", m.heads}, {"n_embd", m.hidden()}}
                          : nlohmann::json{{"model_type", "llama"},
                                           {"num_hidden_layers", m.layers},
                                           {"num_attention_heads", m.heads},
                                           {"num_key_value_heads", m.kv_heads},
                                           {"hidden_size", m.hidden()}};
  std::ofstream(dir + "/config.json") << c.dump();
}

void expect_norms_match(const skv::calib::ModelNorms& n, const Model& m) {
  ASSERT_EQ(n.layers.size(), static_cast<std::size_t>(m.layers));
  EXPECT_EQ(n.num_kv_heads, m.kv_heads);
  EXPECT_EQ(n.head_dim, m.head_dim);
  for (int l = 0; l < m.layers; ++l) {
    const auto& ln = n.layers[static_cast<std::size_t>(l)];
    EXPECT_EQ(ln.layer, l);
    const auto k = row_major(m.k[static_cast<std::size_t>(l)].data(), m.kv_heads * m.head_dim, m.hidden());
    const auto v = row_major(m.v[static_cast<std::size_t>(l)].data(), m.kv_heads * m.head_dim, m.hidden());
    EXPECT_NEAR(ln.norms.k_fro, frobenius_norm(k), 1e-9 * frobenius_norm(k));
    EXPECT_NEAR(ln.norms.v_fro, frobenius_norm(v), 1e-9 * frobenius_norm(v));
    EXPECT_NEAR(ln.norms.k_spec, spectral_norm(k, 1e-12).value, 1e-6 * ln.norms.k_spec);
    EXPECT_NEAR(ln.norms.v_spec, spectral_norm(v, 1e-12).value, 1e-6 * ln.norms.v_spec);
    ASSERT_EQ(ln.heads.size(), static_cast<std::size_t>(m.kv_heads));
    double sum_sq = 0;
    for (int h = 0; h < m.kv_heads; ++h) {
      const auto& hn = ln.heads[static_cast<std::size_t>(h)];
      EXPECT_NEAR(hn.k_fro, frobenius_norm(k.row_block(h * m.head_dim, m.head_dim)), 1e-9);
      EXPECT_NEAR(hn.v_spec, spectral_norm(v.row_block(h * m.head_dim, m.head_dim), 1e-12).value, 1e-6);
      EXPECT_LE(hn.k_spec, ln.norms.k_spec * (1 + 1e-9));  // a block's norm never exceeds the whole's
      sum_sq += hn.k_fro * hn.k_fro;
    }
    EXPECT_NEAR(std::sqrt(sum_sq), ln.norms.k_fro, 1e-9);
  }
}

skv::calib::ModelNorms norms_of(const std::string& path) {
  skv::io::Checkpoint ck(path);
  const auto cfg = skv::io::read_model_config(ck.directory());
  skv::calib::NormOptions o;
  o.per_head = true;
  o.tolerance = 1e-12;
  return skv::calib::compute_norms(ck, o, &cfg);
}

TEST(ModelNorms, SeparateProjectionsWithGqa) {
  skv_test::TempDir dir;
  const Model m = make_model(true);
  std::vector<skv::io::TensorData> t;
  for (int l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    const std::int64_t kv_rows = m.kv_heads * m.head_dim;
    t.push_back({p + "q_proj.weight", skv::io::DType::F32, {m.heads * m.head_dim, m.hidden()}, m.q[static_cast<std::size_t>(l)]});
    t.push_back({p + "k_proj.weight", skv::io::DType::F32, {kv_rows, m.hidden()}, m.k[static_cast<std::size_t>(l)]});
    t.push_back({p + "v_proj.weight", skv::io::DType::F32, {kv_rows, m.hidden()}, m.v[static_cast<std::size_t>(l)]});
  }
  skv::io::write_safetensors(dir.file("model.safetensors"), t);
  write_config(dir.path(), m, false);
  expect_norms_match(norms_of(dir.path()), m);
  EXPECT_EQ(skv::calib::detect_layout(skv::io::Checkpoint(dir.path()).names(), "x"), skv::calib::AttentionLayout::Separate);
}

// A NaN compares false with everything, so it read as a norm of 0: weights must be finite, and the
// error names the tensor.
TEST(ModelNorms, NonFiniteWeightsAreErrorsNamingTheTensor) {
  const Model m = make_model(true);
  for (int which = 0; which < 4; ++which) {
    skv_test::TempDir dir;
    std::vector<skv::io::TensorData> t;
    for (int l = 0; l < m.layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      const std::int64_t kv_rows = m.kv_heads * m.head_dim;
      auto k = m.k[static_cast<std::size_t>(l)], v = m.v[static_cast<std::size_t>(l)];
      if (l == 1) (which < 2 ? k : v)[7] = which % 2 ? std::numeric_limits<float>::infinity() : std::nanf("");
      t.push_back({p + "q_proj.weight", skv::io::DType::F32, {m.heads * m.head_dim, m.hidden()}, m.q[static_cast<std::size_t>(l)]});
      t.push_back({p + "k_proj.weight", skv::io::DType::F32, {kv_rows, m.hidden()}, k});
      t.push_back({p + "v_proj.weight", skv::io::DType::F32, {kv_rows, m.hidden()}, v});
    }
    skv::io::write_safetensors(dir.file("model.safetensors"), t);
    write_config(dir.path(), m, false);
    try {
      norms_of(dir.path());
      FAIL() << "accepted " << which;
    } catch (const skv::Error& e) {
      const std::string want = std::string("'model.layers.1.self_attn.") + (which < 2 ? "k" : "v") + "_proj.weight' has a NaN or Inf";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

TEST(ModelNorms, FusedPhi3QkvProj) {
  skv_test::TempDir dir;
  const Model m = make_model(true);
  std::vector<skv::io::TensorData> t;
  for (int l = 0; l < m.layers; ++l) {
    std::vector<float> qkv = m.q[static_cast<std::size_t>(l)];
    qkv.insert(qkv.end(), m.k[static_cast<std::size_t>(l)].begin(), m.k[static_cast<std::size_t>(l)].end());
    qkv.insert(qkv.end(), m.v[static_cast<std::size_t>(l)].begin(), m.v[static_cast<std::size_t>(l)].end());
    t.push_back({"model.layers." + std::to_string(l) + ".self_attn.qkv_proj.weight", skv::io::DType::F32,
                 {(m.heads + 2 * m.kv_heads) * m.head_dim, m.hidden()}, qkv});
  }
  skv::io::write_safetensors(dir.file("model.safetensors"), t);
  write_config(dir.path(), m, false);
  expect_norms_match(norms_of(dir.path()), m);
}

TEST(ModelNorms, FusedGpt2CAttnIsTransposed) {
  skv_test::TempDir dir;
  const Model m = make_model(false);
  const int hd = m.hidden();
  std::vector<skv::io::TensorData> t;
  for (int l = 0; l < m.layers; ++l) {
    std::vector<float> w(static_cast<std::size_t>(hd) * 3 * hd);
    for (int i = 0; i < hd; ++i)
      for (int j = 0; j < hd; ++j) {
        const std::size_t src = static_cast<std::size_t>(j) * hd + i;
        w[static_cast<std::size_t>(i) * 3 * hd + j] = m.q[static_cast<std::size_t>(l)][src];
        w[static_cast<std::size_t>(i) * 3 * hd + hd + j] = m.k[static_cast<std::size_t>(l)][src];
        w[static_cast<std::size_t>(i) * 3 * hd + 2 * hd + j] = m.v[static_cast<std::size_t>(l)][src];
      }
    t.push_back({"transformer.h." + std::to_string(l) + ".attn.c_attn.weight", skv::io::DType::F32, {hd, 3 * hd}, w});
  }
  skv::io::write_safetensors(dir.file("model.safetensors"), t);
  write_config(dir.path(), m, true);
  expect_norms_match(norms_of(dir.path()), m);
}

TEST(ModelNorms, UnrecognisedLayoutListsTheTensorsSeen) {
  skv_test::TempDir dir;
  skv::io::write_safetensors(dir.file("model.safetensors"),
                             {{"transformer.blocks.0.attn.Wqkv.weight", skv::io::DType::F32, {6, 2}, std::vector<float>(12, 1.0f)},
                              {"lm_head.weight", skv::io::DType::F32, {2, 2}, std::vector<float>(4, 1.0f)}});
  try {
    skv::calib::compute_norms(skv::io::Checkpoint(dir.path()), {}, nullptr);
    FAIL() << "expected an error";
  } catch (const skv::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("unrecognised attention layout"), std::string::npos) << msg;
    EXPECT_NE(msg.find("transformer.blocks.0.attn.Wqkv.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
  }
}

TEST(ModelNorms, LayerNamesNeedTheirSeparator) {
  using skv::calib::detail::layer_of;
  EXPECT_EQ(layer_of("model.layers.12.self_attn.k_proj.weight", "layers", ".self_attn.k_proj.weight"), 12);
  EXPECT_EQ(layer_of("layers.3.k", "layers", ".k"), 3);
  EXPECT_EQ(layer_of("h.0.attn.c_attn.weight", "h", ".attn.c_attn.weight"), 0);
  EXPECT_EQ(layer_of("model.sublayers.1.self_attn.k_proj.weight", "layers", ".self_attn.k_proj.weight"), -1);
  EXPECT_EQ(layer_of("model.layers.x1.self_attn.k_proj.weight", "layers", ".self_attn.k_proj.weight"), -1);
  EXPECT_EQ(layer_of("model.layers.1.self_attn.k_proj.bias", "layers", ".self_attn.k_proj.weight"), -1);
}

}  // namespace
