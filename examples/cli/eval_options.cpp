// examples/cli/eval_options.cpp: the cache types `skv eval` runs for configurations with options
// (k4v2+rot, k4v2+rot+sink4, ...). A translation unit of its own so that its many instantiations
// compile in parallel with the rest of the program.
#include "common.hpp"
#include "eval.hpp"

namespace skv_cli {
namespace {

/// The cache of option set I (the order of eval_variants()) for pair K, V and head_dim D.
template <int I, int K, int V, int D>
struct VariantCache;
template <int K, int V, int D>
struct VariantCache<1, K, V, D> {
  using type = skv::KVCache<K, V, D, skv::RotateKeys>;
};
template <int K, int V, int D>
struct VariantCache<2, K, V, D> {
  using type = skv::KVCache<K, V, D, skv::Sinks<4>>;
};
template <int K, int V, int D>
struct VariantCache<3, K, V, D> {
  using type = skv::KVCache<K, V, D, skv::ClipKeys, skv::ClipValues>;
};
template <int K, int V, int D>
struct VariantCache<4, K, V, D> {
  using type = skv::KVCache<K, V, D, skv::RotateKeys, skv::Sinks<4>>;
};
template <int K, int V, int D>
struct VariantCache<5, K, V, D> {
  using type = skv::KVCache<K, V, D, skv::RotateKeys, skv::Sinks<4>, skv::ClipKeys, skv::ClipValues>;
};
/// Keys grouped per token over the same channels as the values (the KIVI-style alternative axis).
template <int K, int V, int D, class... Opts>
using TokenKeysCache = skv::BasicKVCache<skv::Quantizer<K, skv::detail::default_value_group(D), skv::Axis::Token>,
                                         skv::Quantizer<V, skv::detail::default_value_group(D), skv::Axis::Token>, D,
                                         64, 0, skv::Options<Opts...>>;
template <int K, int V, int D>
struct VariantCache<6, K, V, D> {
  using type = TokenKeysCache<K, V, D>;
};
template <int K, int V, int D>
struct VariantCache<7, K, V, D> {
  using type = TokenKeysCache<K, V, D, skv::RotateKeys>;
};
constexpr int kVariants = 8;

template <int D, int I>
double run_variant(int key_bits, int value_bits, const skv::calib::LayerKV& l, int queries, EvalAccum& acc) {
  return skv::dispatch<EvalOptionPairs, D>(key_bits, value_bits, [&](auto tag) {
    using Plain = typename decltype(tag)::type;
    return eval_layer<typename VariantCache<I, Plain::kKeyBits, Plain::kValueBits, D>::type>(l, queries, acc);
  });
}

template <int D, int... I>
double run_any(std::integer_sequence<int, I...>, int variant, int key_bits, int value_bits,
               const skv::calib::LayerKV& l, int queries, EvalAccum& acc) {
  double bits = 0;
  const bool found =
      ((I != 0 && I == variant ? (bits = run_variant<D, (I == 0 ? 1 : I)>(key_bits, value_bits, l, queries, acc), true)
                               : false) ||
       ...);
  if (!found) throw skv::Error("skv eval: no option set " + std::to_string(variant));
  return bits;
}

}  // namespace

double eval_layer_with_options(int variant, int key_bits, int value_bits, const skv::calib::LayerKV& l, int queries,
                               EvalAccum& acc) {
  static_assert(kVariants == 8, "eval_variants() and VariantCache must list the same option sets");
  const auto all = std::make_integer_sequence<int, kVariants>{};
  if (l.head_dim == 64) return run_any<64>(all, variant, key_bits, value_bits, l, queries, acc);
  if (l.head_dim == 128) return run_any<128>(all, variant, key_bits, value_bits, l, queries, acc);
  throw skv::Error("skv eval: options are compiled for head_dim " + std::string(kEvalOptionHeadDims) + "; the dump has " +
                   std::to_string(l.head_dim));
}

}  // namespace skv_cli
