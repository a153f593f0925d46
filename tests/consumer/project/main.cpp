#include <skv/skv.hpp>

#include <cstdio>
#include <vector>

int main() {
  skv::KVCache<4, 2, 64> cache(2, 128);
  std::vector<float> k(40 * 2 * 64), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i % 7) - 3.0f;
    v[i] = static_cast<float>(i % 5) * 0.25f;
  }
  cache.append(k.data(), v.data(), 40);
  std::vector<float> q(4 * 64, 0.1f), out(4 * 64);
  skv::cpu::decode_attention(cache, q.data(), 4, out.data());
  std::printf("consumer: %d tokens, %d quantized\n", cache.size(), cache.quantized_size());
  return cache.size() == 40 && cache.quantized_size() == 32 ? 0 : 1;
}
