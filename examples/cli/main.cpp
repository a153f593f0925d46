// examples/cli/main.cpp: the `skv` command line: measure a model, evaluate configurations on a K/V
// dump and plan per-layer / per-head bits. Commands and JSON formats: docs/cli.md.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <skv/calib/dump.hpp>
#include <skv/calib/norms.hpp>
#include <skv/calib/plan.hpp>
#include <skv/calib/sensitivity.hpp>
#include <skv/error.hpp>
#include <skv/io/safetensors.hpp>

#include "common.hpp"
#include "eval.hpp"
#include "gen.hpp"

namespace {

using json = nlohmann::ordered_json;

/// Reads config.json next to a checkpoint when there is one.
bool find_config(const skv::io::Checkpoint& ck, skv::io::ModelConfig& cfg) {
  const std::string file = skv::io::detail::join_path(ck.directory(), "config.json");
  if (!skv::io::detail::is_file(file)) return false;
  cfg = skv::io::read_model_config(file);
  return true;
}

struct Geometry {
  int heads = 0, kv_heads = 0, head_dim = 0;
};

void add_geometry(CLI::App* app, Geometry& g) {
  app->add_option("--heads", g.heads, "query heads (default: config.json)")->check(CLI::PositiveNumber);
  app->add_option("--kv-heads", g.kv_heads, "key/value heads (default: config.json)")->check(CLI::PositiveNumber);
  app->add_option("--head-dim", g.head_dim, "head dimension (default: config.json)")->check(CLI::PositiveNumber);
}

skv::calib::ModelNorms load_norms(const std::string& path, bool per_head, const Geometry& g, double tol, int max_iter = 5000) {
  skv::io::Checkpoint ck(path);
  skv::io::ModelConfig cfg;
  const bool have_cfg = find_config(ck, cfg);
  skv::calib::NormOptions o;
  o.per_head = per_head;
  o.tolerance = tol;
  o.max_iterations = max_iter;
  o.num_heads = g.heads;
  o.num_kv_heads = g.kv_heads;
  o.head_dim = g.head_dim;
  skv_cli::Progress bar("norms");
  o.progress = [&](int d, int t) { bar(d, t); };
  return skv::calib::compute_norms(ck, o, have_cfg ? &cfg : nullptr);
}

json norms_json(const skv::calib::KVNorms& n) {
  return json{{"k_fro", n.k_fro}, {"v_fro", n.v_fro}, {"k_spec", n.k_spec}, {"v_spec", n.v_spec}};
}

int cmd_spectral(const std::string& path, bool per_head, bool as_json, const Geometry& g, double tol, int max_iter) {
  const skv::calib::ModelNorms m = load_norms(path, per_head, g, tol, max_iter);
  if (as_json) {
    json j;
    j["layers"] = json::array();
    for (const auto& l : m.layers) {
      json jl{{"layer", l.layer}};
      jl.update(norms_json(l.norms));
      if (per_head) {
        jl["heads"] = json::array();
        for (std::size_t h = 0; h < l.heads.size(); ++h) {
          json jh{{"head", h}};
          jh.update(norms_json(l.heads[h]));
          jl["heads"].push_back(jh);
        }
      }
      j["layers"].push_back(jl);
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("%s: %s, %zu layers", path.c_str(), skv::calib::layout_name(m.layout), m.layers.size());
  if (m.num_kv_heads) std::printf(", %d KV heads", m.num_kv_heads);
  if (m.head_dim) std::printf(", head_dim %d", m.head_dim);
  std::printf("\n\n");
  std::vector<std::vector<std::string>> rows;
  bool all_converged = true;
  auto row = [&](const std::string& name, const skv::calib::KVNorms& n) {
    all_converged = all_converged && n.converged;
    rows.push_back({name, skv_cli::num(n.k_fro), skv_cli::num(n.v_fro), skv_cli::num(n.v_fro > 0 ? n.k_fro / n.v_fro : 0),
                    skv_cli::num(n.k_spec), skv_cli::num(n.v_spec), skv_cli::num(n.v_spec > 0 ? n.k_spec / n.v_spec : 0),
                    std::to_string(n.k_iterations) + "/" + std::to_string(n.v_iterations)});
  };
  for (const auto& l : m.layers) {
    row(std::to_string(l.layer), l.norms);
    for (std::size_t h = 0; h < l.heads.size(); ++h) row("  head " + std::to_string(h), l.heads[h]);
  }
  skv_cli::print_table({"layer", "|W_K|_F", "|W_V|_F", "K/V", "|W_K|_2", "|W_V|_2", "K/V", "iters K/V"}, rows);
  if (!all_converged) std::printf("\nwarning: some spectral norms did not reach the tolerance (raise --max-iterations)\n");
  return 0;
}

int cmd_inspect(const std::string& path, bool as_json) {
  skv::io::Checkpoint ck(path);
  if (as_json) {
    json j;
    j["tensors"] = json::array();
    for (const auto& name : ck.names()) {
      const auto t = ck.tensor(name);
      j["tensors"].push_back({{"name", name}, {"dtype", skv::io::dtype_name(t.dtype())}, {"shape", t.shape()}, {"file", *t.file}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& name : ck.names()) {
    const auto t = ck.tensor(name);
    std::string shape = "[";
    for (std::size_t i = 0; i < t.shape().size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
    rows.push_back({name, skv::io::dtype_name(t.dtype()), shape + "]"});
  }
  skv_cli::print_table({"tensor", "dtype", "shape"}, rows);
  skv::io::ModelConfig cfg;
  if (find_config(ck, cfg))
    std::printf("\nconfig.json: %s, %d layers, %d heads, %d KV heads, head_dim %d\n", cfg.model_type.c_str(), cfg.num_layers,
                cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
  return 0;
}

/// Integral bit widths as JSON integers; a plan's mean widths as numbers.
json bits_json(double b) { return b == static_cast<double>(static_cast<int>(b)) ? json(static_cast<int>(b)) : json(b); }

/// A plan JSON (skv plan --json) as one evaluation configuration.
skv_cli::EvalConfig plan_config(const std::string& file, const skv::calib::KVDump& dump) {
  const nlohmann::json j = skv::io::detail::read_json_file(file);
  skv_cli::EvalConfig c{"plan", {}};
  try {
    const auto& layers = j.at("layers");
    if (!layers.is_array() || layers.size() != static_cast<std::size_t>(dump.num_layers()))
      throw skv::Error(file + ": the plan has " + std::to_string(layers.is_array() ? layers.size() : 0) +
                       " layers; the dump has " + std::to_string(dump.num_layers()));
    for (std::size_t n = 0; n < layers.size(); ++n) {
      if (layers[n].at("layer").get<int>() != dump.layer_ids()[n])
        throw skv::Error(file + ": plan entry " + std::to_string(n) + " is layer " + std::to_string(layers[n].at("layer").get<int>()) +
                         ", the dump's is " + std::to_string(dump.layer_ids()[n]));
      c.pairs.emplace_back(layers[n].at("key_bits").get<int>(), layers[n].at("value_bits").get<int>());
    }
  } catch (const nlohmann::json::exception& e) {
    throw skv::Error(file + ": not a plan (" + e.what() + ")");
  }
  return c;
}

int cmd_eval(const std::string& path, const std::string& configs, const std::string& plan_file, int queries, bool as_json) {
  const skv::calib::KVDump dump(path);
  std::vector<skv_cli::EvalConfig> list;
  for (const auto& name : skv_cli::split(configs, ',')) list.push_back(skv_cli::uniform_config(name));
  if (!plan_file.empty()) list.push_back(plan_config(plan_file, dump));
  std::vector<skv_cli::EvalResult> res;
  {
    skv_cli::Progress bar("eval");
    res = skv_cli::run_eval(dump, list, queries, [&](int d, int t) { bar(d, t); });
  }
  if (as_json) {
    json j;
    j["configs"] = json::array();
    for (const auto& r : res)
      j["configs"].push_back({{"name", r.name}, {"key_bits", bits_json(r.key_bits)}, {"value_bits", bits_json(r.value_bits)},
                              {"bits_per_element", r.bits_per_element}, {"key_mse", r.key_mse},
                              {"value_mse", r.value_mse}, {"score_rel_err", r.score_rel_err},
                              {"attn_rel_err", r.attn_rel_err}});
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("%s: %d layers, %d tokens, %d KV heads, %s, head_dim %d\n\n", path.c_str(), dump.num_layers(), dump.tokens(),
              dump.kv_heads(),
              dump.has_queries() ? (std::to_string(dump.q_heads()) + " query heads").c_str() : "no queries (keys shifted by one token)",
              dump.head_dim());
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : res)
    rows.push_back({r.name, skv_cli::num(r.bits_per_element), skv_cli::num(r.key_mse), skv_cli::num(r.value_mse),
                    skv_cli::num(r.score_rel_err), skv_cli::num(r.attn_rel_err)});
  skv_cli::print_table({"config", "bits/elem", "key MSE", "value MSE", "score rel err", "attn rel err"}, rows);
  return 0;
}

struct PlanArgs {
  std::string weights, kv, sensitivity, granularity = "layer", bits = "2,3,4,5,6,8";
  double budget = 0;
  bool json_out = false;
  Geometry geometry;
};

/// skv plan --sensitivity: one candidate per layer from a table measured in the generation loop.
int cmd_plan_loop(const PlanArgs& a) {
  const auto table = skv::calib::read_sensitivity(skv::io::detail::read_json_file(a.sensitivity));
  const skv::calib::LoopPlan plan = skv::calib::plan_from_sensitivity(table, a.budget);
  if (a.json_out) {
    std::cout << skv::calib::loop_plan_to_json(plan).dump(2) << "\n";
    return 0;
  }
  std::printf("plan: loop sensitivity of %s, per layer, budget %.4g bits held per element at %d tokens\n",
              table.model.empty() ? a.sensitivity.c_str() : table.model.c_str(), plan.budget, table.context);
  std::printf("held bits %.4g; predicted KL %.4g (sum over layers)", plan.held_bits, plan.predicted_kl);
  if (!plan.uniform.empty())
    std::printf(" vs %.4g for uniform %s at %.4g held bits (%.3gx lower)\n\n", plan.uniform_kl, plan.uniform.c_str(),
                plan.uniform_held_bits, plan.predicted_kl > 0 ? plan.uniform_kl / plan.predicted_kl : 0.0);
  else
    std::printf("; no uniform candidate fits the budget\n\n");
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : plan.layers) {
    const bool k = l.choice.rotate_keys, v = l.choice.rotate_values;
    rows.push_back({std::to_string(l.layer), l.kind, std::to_string(l.choice.key_bits), std::to_string(l.choice.value_bits),
                    std::to_string(l.choice.residual), k && v ? "keys, values" : k ? "keys" : v ? "values" : "none",
                    skv_cli::num(l.choice.held_bits), skv_cli::num(l.choice.kl)});
  }
  skv_cli::print_table({"layer", "kind", "key bits", "value bits", "residual", "rotated", "held bits", "KL alone"},
                       rows);
  return 0;
}

int cmd_plan(const PlanArgs& a) {
  if (!a.sensitivity.empty()) return cmd_plan_loop(a);
  const auto g = a.granularity == "head" ? skv::calib::Granularity::Head : skv::calib::Granularity::Layer;
  const std::vector<int> allowed = skv_cli::parse_int_list(a.bits, 1, 8, "--bits");
  skv::calib::PlanProblem problem;
  if (!a.kv.empty()) {
    const skv::calib::KVDump dump(a.kv);
    skv::calib::DistortionOptions o;
    o.bits = allowed;
    if (o.bits.size() < 2) o.bits = {2, 3, 4, 5, 6, 8};
    skv::calib::DistortionTable table;
    {
      skv_cli::Progress bar("calibrating");
      table = skv::calib::measure_distortion(dump, o, [&](int d, int t) { bar(d, t); });
    }
    problem = skv::calib::problem_from_table(table, g);
  } else {
    problem = skv::calib::problem_from_norms(load_norms(a.weights, g == skv::calib::Granularity::Head, a.geometry, 1e-8), g);
  }
  const skv::calib::Plan plan = skv::calib::make_plan(problem, allowed, a.budget);
  if (a.json_out) {
    std::cout << skv::calib::plan_to_json(plan).dump(2) << "\n";
    return 0;
  }
  std::printf("plan: %s, per %s, budget %.3g bits/element (metadata included)\n", plan.mode.c_str(),
              g == skv::calib::Granularity::Head ? "head" : "layer", plan.budget);
  std::printf("mean bits %.4g; %s\n\n", plan.mean_bits,
              skv_cli::plan_summary(plan.predicted_distortion, plan.uniform_distortion, plan.uniform_bits).c_str());
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : plan.layers) {
    std::string heads;
    for (const auto& h : l.heads) heads += (heads.empty() ? "" : " ") + ("k" + std::to_string(h.key_bits) + "v" + std::to_string(h.value_bits));
    std::vector<std::string> r{std::to_string(l.layer), std::to_string(l.key_bits), std::to_string(l.value_bits)};
    if (g == skv::calib::Granularity::Head) r.push_back(heads);
    rows.push_back(r);
  }
  std::vector<std::string> header{"layer", "key bits", "value bits"};
  if (g == skv::calib::Granularity::Head) header.push_back("heads");
  skv_cli::print_table(header, rows);
  std::printf("\n%s", skv::calib::plan_cpp_types(plan).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"skv: measure a model's keys and values, evaluate quantized KV cache configurations, and plan bits"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every subcommand");

  // spectral (alias: norms)
  std::string sp_path;
  bool sp_heads = false, sp_json = false;
  double sp_tol = 1e-8;
  int sp_max_iter = 5000;
  Geometry sp_geo;
  auto* spectral = app.add_subcommand("spectral", "Frobenius and spectral norms of W_K and W_V per layer (and KV head)");
  spectral->alias("norms");
  spectral->add_option("PATH", sp_path, "a .safetensors file, a model.safetensors.index.json or a model folder")->required();
  spectral->add_flag("--per-head", sp_heads, "also per KV head");
  spectral->add_flag("--json", sp_json, "JSON output");
  spectral->add_option("--tolerance", sp_tol, "relative convergence tolerance of the power iteration")->capture_default_str()
      ->check(CLI::PositiveNumber);
  spectral->add_option("--max-iterations", sp_max_iter, "most Lanczos steps per matrix")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  add_geometry(spectral, sp_geo);

  // inspect
  std::string in_path;
  bool in_json = false;
  auto* inspect = app.add_subcommand("inspect", "list the tensors of a safetensors file or checkpoint");
  inspect->add_option("PATH", in_path, "a .safetensors file, index json or model folder")->required();
  inspect->add_flag("--json", in_json, "JSON output");

  // eval
  std::string ev_path, ev_configs = "k8v8,k4v4,k4v2,k2v4,k3v3,k2v2", ev_plan;
  int ev_queries = 8;
  bool ev_json = false;
  auto* eval = app.add_subcommand("eval", "quantize a K/V dump with each configuration and report its error");
  eval->add_option("DUMP", ev_path, "K/V dump (layers.{i}.k / .v / optional .q, [tokens, heads, head_dim])")->required();
  eval->add_option("--configs", ev_configs,
                   "comma-separated kKvV configurations, each with options +rot, +sink4, +clip, +tok (e.g. k4v2+rot+sink4)")
      ->capture_default_str();
  eval->add_option("--queries", ev_queries, "query tokens per layer for the attention error")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  eval->add_option("--plan", ev_plan, "also evaluate a per-layer plan (the JSON of skv plan --json)");
  eval->add_flag("--json", ev_json, "JSON output");

  // plan
  PlanArgs pa;
  auto* plan = app.add_subcommand("plan", "allocate key/value bits per layer or head for an average budget");
  auto* w = plan->add_option("--weights", pa.weights, "checkpoint: plan from weight norms (mode weights)");
  auto* k = plan->add_option("--kv", pa.kv, "K/V dump: plan from measured distortion (mode calibrated)");
  auto* sens = plan->add_option("--sensitivity", pa.sensitivity,
                                "sensitivity table measured in the generation loop (skv.calibrate): plan bits and "
                                "residual windows for a budget of bits HELD per element (mode loop)");
  w->excludes(k);
  k->excludes(w);
  sens->excludes(w);
  sens->excludes(k);
  plan->add_option("--budget", pa.budget, "average bits per cached element, metadata included (e.g. 3.75 for k4v2)")
      ->required()
      ->check(CLI::Range(0.5, 16.0));
  plan->add_option("--granularity", pa.granularity, "layer or head")->capture_default_str()->check(CLI::IsMember({"layer", "head"}));
  plan->add_option("--bits", pa.bits, "allowed bit widths")->capture_default_str();
  plan->add_flag("--json", pa.json_out, "JSON output");
  add_geometry(plan, pa.geometry);

  // hidden generators for tests and docs
  std::string gd_path;
  skv_cli::GenDumpOptions gd;
  bool gd_no_q = false;
  std::string gd_dtype = "f32";
  auto* gen = app.add_subcommand("gen-dump", "write a synthetic K/V/Q dump");
  gen->group("");
  gen->add_option("OUT", gd_path, "output .safetensors")->required();
  gen->add_option("--layers", gd.layers, "")->capture_default_str()->check(CLI::Range(1, 1024));
  gen->add_option("--kv-heads", gd.kv_heads, "")->capture_default_str()->check(CLI::Range(1, 256));
  gen->add_option("--q-per-kv", gd.q_per_kv, "")->capture_default_str()->check(CLI::Range(1, 64));
  gen->add_option("--tokens", gd.tokens, "")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  gen->add_option("--head-dim", gd.head_dim, "")->capture_default_str()->check(CLI::Range(2, 1024));
  gen->add_option("--seed", gd.seed, "")->capture_default_str();
  gen->add_option("--dtype", gd_dtype, "f32, f16 or bf16")->capture_default_str()->check(CLI::IsMember({"f32", "f16", "bf16"}));
  gen->add_flag("--no-queries", gd_no_q, "leave out layers.{i}.q");

  std::string gm_path;
  skv_cli::GenModelOptions gm;
  auto* genm = app.add_subcommand("gen-model", "write a tiny random checkpoint folder (model.safetensors + config.json)");
  genm->group("");
  genm->add_option("DIR", gm_path, "existing output folder")->required()->check(CLI::ExistingDirectory);
  genm->add_option("--layout", gm.layout, "llama, phi3 or gpt2")->capture_default_str()->check(CLI::IsMember({"llama", "phi3", "gpt2"}));
  genm->add_option("--layers", gm.layers, "")->capture_default_str()->check(CLI::Range(1, 256));
  genm->add_option("--heads", gm.heads, "")->capture_default_str()->check(CLI::Range(1, 64));
  genm->add_option("--kv-heads", gm.kv_heads, "")->capture_default_str()->check(CLI::Range(1, 64));
  genm->add_option("--head-dim", gm.head_dim, "")->capture_default_str()->check(CLI::Range(2, 256));
  genm->add_option("--seed", gm.seed, "")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "skv: error: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    if (spectral->parsed()) return cmd_spectral(sp_path, sp_heads, sp_json, sp_geo, sp_tol, sp_max_iter);
    if (inspect->parsed()) return cmd_inspect(in_path, in_json);
    if (eval->parsed()) return cmd_eval(ev_path, ev_configs, ev_plan, ev_queries, ev_json);
    if (plan->parsed()) {
      if ((pa.weights.empty() ? 0 : 1) + (pa.kv.empty() ? 0 : 1) + (pa.sensitivity.empty() ? 0 : 1) != 1)
        throw skv::Error("plan needs exactly one of --weights PATH, --kv DUMP or --sensitivity TABLE");
      return cmd_plan(pa);
    }
    if (gen->parsed()) {
      gd.queries = !gd_no_q;
      gd.dtype = gd_dtype == "f16" ? skv::io::DType::F16 : gd_dtype == "bf16" ? skv::io::DType::BF16 : skv::io::DType::F32;
      skv_cli::gen_dump(gd_path, gd);
      return 0;
    }
    if (genm->parsed()) {
      if (gm.layout != "gpt2" && gm.heads % gm.kv_heads != 0) throw skv::Error("--heads must be a multiple of --kv-heads");
      skv_cli::gen_model(gm_path, gm);
      return 0;
    }
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    std::fprintf(stderr, "%s\n", msg.rfind("skv: ", 0) == 0 ? msg.c_str() : ("skv: " + msg).c_str());
    return 1;
  }
  return 1;
}
