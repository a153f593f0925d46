// Appending and decoding on the GPU with a 4-bit-key / 2-bit-value cache, checked against the CPU.
//
//   cuda_decode        (prints a message and exits 0 when no GPU is usable)
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <skv/skv.hpp>
#include <skv/gpu/gpu.cuh>

int main() {
  if (skv::gpu::device_count() == 0) {
    std::printf("cuda_decode: no usable CUDA device, skipping\n");
    return 0;
  }
  using Cache = skv::KVCache<4, 2>;  // head_dim 128, keys per channel over 32 tokens, values per token
  using Layout = Cache::Layout;
  constexpr int kHeadDim = Cache::kHeadDim;
  const int num_seqs = 3, kv_heads = 4, q_heads = 16;  // GQA: 4 query heads per KV head
  const std::vector<int> prompt = {1000, 37, 513};

  try {
    // Device cache (owning) and the same sequences in CPU caches, for the comparison.
    skv::gpu::DeviceCache<Layout> gpu_cache(num_seqs, kv_heads, 2048);
    std::vector<Cache> cpu;
    for (int s = 0; s < num_seqs; ++s) cpu.emplace_back(kv_heads, gpu_cache.capacity());

    std::mt19937 rng(42);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    auto step = [&](const std::vector<int>& counts) {
      int total = 0;
      for (int c : counts) total += c;
      std::vector<float> k(static_cast<std::size_t>(total) * kv_heads * kHeadDim), v(k.size());
      for (auto& x : k) x = 2.0f * n01(rng) + 0.5f;
      for (auto& x : v) x = n01(rng);
      float *dk = nullptr, *dv = nullptr;
      skv::gpu::check_cuda(cudaMalloc(&dk, k.size() * sizeof(float)), "cudaMalloc");
      skv::gpu::check_cuda(cudaMalloc(&dv, v.size() * sizeof(float)), "cudaMalloc");
      skv::gpu::check_cuda(cudaMemcpy(dk, k.data(), k.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
      skv::gpu::check_cuda(cudaMemcpy(dv, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
      skv::gpu::append(gpu_cache, dk, dv, counts);  // one launch for the whole batch
      cudaFree(dk);
      cudaFree(dv);
      std::size_t off = 0;
      for (int s = 0; s < num_seqs; ++s) {
        cpu[s].append(k.data() + off, v.data() + off, counts[s]);
        off += static_cast<std::size_t>(counts[s]) * kv_heads * kHeadDim;
      }
    };
    step(prompt);                     // prefill
    for (int t = 0; t < 5; ++t) step({1, 1, 1});  // decode steps

    std::vector<float> q(static_cast<std::size_t>(num_seqs) * q_heads * kHeadDim);
    for (auto& x : q) x = n01(rng);
    float *dq = nullptr, *dout = nullptr;
    skv::gpu::check_cuda(cudaMalloc(&dq, q.size() * sizeof(float)), "cudaMalloc");
    skv::gpu::check_cuda(cudaMalloc(&dout, q.size() * sizeof(float)), "cudaMalloc");
    skv::gpu::check_cuda(cudaMemcpy(dq, q.data(), q.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    skv::gpu::DecodeWorkspace workspace;
    const float scale = skv::cpu::default_scale<Layout>();
    skv::gpu::decode_attention(gpu_cache.view(), dq, dout, q_heads, scale, gpu_cache.lengths().data(), workspace);
    std::vector<float> out(q.size());
    skv::gpu::check_cuda(cudaMemcpy(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    cudaFree(dq);
    cudaFree(dout);

    double max_err = 0.0;
    std::vector<float> ref(static_cast<std::size_t>(q_heads) * kHeadDim);
    for (int s = 0; s < num_seqs; ++s) {
      skv::cpu::decode_attention_reference(cpu[s].view(), q.data() + static_cast<std::size_t>(s) * ref.size(), q_heads,
                                           ref.data(), scale);
      for (std::size_t i = 0; i < ref.size(); ++i)
        max_err = std::fmax(max_err, std::fabs(out[static_cast<std::size_t>(s) * ref.size() + i] - ref[i]));
      std::printf("sequence %d: %d tokens (%d quantized), %.0f bytes/token/head vs 512 in fp16\n", s,
                  gpu_cache.lengths()[s], Layout::quantized_length(gpu_cache.lengths()[s]), Layout::bytes_per_token());
    }
    std::printf("max |gpu - cpu reference| = %.3g\n", max_err);
    if (!(max_err < 1e-3)) {
      std::printf("cuda_decode: mismatch\n");
      return 1;
    }
  } catch (const skv::Error& e) {
    std::printf("cuda_decode: %s\n", e.what());
    return 1;
  }
  return 0;
}
