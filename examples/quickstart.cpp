#include <skv/skv.hpp>
#include <vector>

int main() {
  constexpr int kv_heads = 8, q_heads = 32, d = 128, n = 1000;
  skv::KVCache<4, 2> cache(kv_heads, /*max_tokens=*/4096);  // 4-bit keys, 2-bit values, head_dim 128
  std::vector<float> k(n * kv_heads * d, 0.5f), v(n * kv_heads * d, 0.25f);  // [token][kv_head][dim]
  cache.append(k.data(), v.data(), n);
  std::vector<float> q(q_heads * d, 1.0f), out(q_heads * d);               // [q_head][dim]
  skv::cpu::decode_attention(cache, q.data(), q_heads, out.data());
  return cache.size() == n ? 0 : 1;
}
