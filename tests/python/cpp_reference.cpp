// The C++ side of tests/python/test_bit_exact.py: the same cache types the Python package compiles,
// written the way a C++ user writes them, appending the same inputs and decoding the same query.
//
//   skv_python_reference KEY_BITS VALUE_BITS HEAD_DIM RESIDUAL OPTIONS KV_HEADS Q_HEADS TOKENS CHUNK IN OUT
//
// OPTIONS: 0 none, 1 rotate_keys + sinks 4, 2 rotate_keys + sinks 4 + clip, 3 rotate_keys + rotate_values +
// sinks 4, 4 the same with Lloyd-Max values (skv::Scheme::LloydMax).
// IN holds float32 k [TOKENS][KV_HEADS][HEAD_DIM], v (same shape), q [Q_HEADS][HEAD_DIM]; tokens are
// appended CHUNK at a time. OUT receives the float32 output [Q_HEADS][HEAD_DIM], then the bytes of the
// pages in use, then the full-precision area (ring and sinks) as float32.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/dispatch.hpp>
#include <skv/skv.hpp>

namespace {

using Pairs = skv::BitPairList<4, 2, 2, 4, 3, 3, 8, 8>;
using CodebookPairs = skv::BitPairList<4, 2, 2, 4, 3, 3>;  // Lloyd-Max values: up to 4 bits

template <int HeadDim, int Residual, class Opts, skv::Scheme ValueScheme = skv::Scheme::Asymmetric>
struct CacheOf {
  template <int K, int V>
  using type = skv::BasicKVCache<skv::Quantizer<K, 32, skv::Axis::Channel>,
                                 skv::Quantizer<V, skv::detail::default_value_group(HeadDim), skv::Axis::Token,
                                                ValueScheme>,
                                 HeadDim, 64, Residual, Opts>;
  static std::string describe() { return "head_dim " + std::to_string(HeadDim); }
};
using RotateSinks = skv::Options<skv::RotateKeys, skv::Sinks<4>>;
using RotateSinksClip = skv::Options<skv::RotateKeys, skv::Sinks<4>, skv::ClipKeys, skv::ClipValues>;
using RotateBothSinks = skv::Options<skv::RotateKeys, skv::RotateValues, skv::Sinks<4>>;

struct Args {
  int key_bits, value_bits, head_dim, residual, options, kv_heads, q_heads, tokens, chunk;
  std::string in, out;
};

template <class Cache>
void run(const Args& a) {
  const std::size_t kv = static_cast<std::size_t>(a.tokens) * a.kv_heads * a.head_dim;
  const std::size_t nq = static_cast<std::size_t>(a.q_heads) * a.head_dim;
  std::vector<float> k(kv), v(kv), q(nq), out(nq);
  std::ifstream in(a.in, std::ios::binary);
  in.read(reinterpret_cast<char*>(k.data()), static_cast<std::streamsize>(kv * sizeof(float)));
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(kv * sizeof(float)));
  in.read(reinterpret_cast<char*>(q.data()), static_cast<std::streamsize>(nq * sizeof(float)));
  if (!in) throw skv::Error("short input file " + a.in);

  Cache cache(a.kv_heads, std::max(a.tokens, 64));  // as the Python test sizes it
  const std::size_t row = static_cast<std::size_t>(a.kv_heads) * a.head_dim;
  for (int t = 0; t < a.tokens; t += a.chunk) {
    const int n = std::min(a.chunk, a.tokens - t);
    cache.append(k.data() + t * row, v.data() + t * row, n);
  }
  skv::cpu::decode_attention(cache, q.data(), a.q_heads, out.data());

  const auto view = cache.view();
  const std::size_t page = Cache::Layout::page_bytes(a.kv_heads);
  const int quantized = cache.quantized_size();
  const int pages = quantized / Cache::kPageSize + (quantized % Cache::kPageSize != 0);
  std::ofstream o(a.out, std::ios::binary);
  o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(nq * sizeof(float)));
  for (int p = 0; p < pages; ++p)
    o.write(reinterpret_cast<const char*>(view.pages + page * view.block_table[p]), static_cast<std::streamsize>(page));
  o.write(reinterpret_cast<const char*>(view.residual),
          static_cast<std::streamsize>(Cache::Layout::residual_floats(a.kv_heads) * sizeof(float)));
}

template <int HeadDim, int Residual, class Opts, skv::Scheme ValueScheme = skv::Scheme::Asymmetric>
void run_family(const Args& a) {
  using P = std::conditional_t<ValueScheme == skv::Scheme::LloydMax, CodebookPairs, Pairs>;
  skv::dispatch_with<P, CacheOf<HeadDim, Residual, Opts, ValueScheme>>(a.key_bits, a.value_bits, [&](auto tag) {
    run<typename decltype(tag)::type>(a);
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 12) {
    std::cerr << "usage: skv_python_reference KEY_BITS VALUE_BITS HEAD_DIM RESIDUAL OPTIONS KV_HEADS Q_HEADS TOKENS "
                 "CHUNK IN OUT\n";
    return 2;
  }
  Args a{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
         std::atoi(argv[6]), std::atoi(argv[7]), std::atoi(argv[8]), std::atoi(argv[9]), argv[10], argv[11]};
  try {
    if (a.head_dim == 128 && a.residual == 0 && a.options == 0)
      run_family<128, 0, skv::Options<>>(a);
    else if (a.head_dim == 128 && a.residual == 128 && a.options == 1)
      run_family<128, 128, RotateSinks>(a);
    else if (a.head_dim == 64 && a.residual == 128 && a.options == 2)
      run_family<64, 128, RotateSinksClip>(a);
    else if (a.head_dim == 256 && a.residual == 0 && a.options == 2)
      run_family<256, 0, RotateSinksClip>(a);
    else if (a.head_dim == 64 && a.residual == 0 && a.options == 3)
      run_family<64, 0, RotateBothSinks>(a);
    else if (a.head_dim == 128 && a.residual == 128 && a.options == 4)
      run_family<128, 128, RotateBothSinks, skv::Scheme::LloydMax>(a);
    else
      throw skv::Error("configuration not built into skv_python_reference");
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
