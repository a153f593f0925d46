// skv/gpu/dequantize.cuh: device-side dequantization of whole tensor blocks through the shared
// decode function (nvcc only). The decode kernel never materialises dequantized values; this is
// for checks and debugging tools, and is what tests/cuda compares with the host bit for bit.
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/dequantize.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include <skv/cache/layout.hpp>
#include <skv/error.hpp>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/common.cuh>

namespace skv {
namespace gpu {

namespace detail {

/// One CTA per (sequence, KV head): every key and value of the sequence as attention sees it,
/// written to out[s][token][head][{key, value}][HeadDim]. Quantized rows are unpacked 64 codes at a
/// time by the register path of the decode kernel (code_of), then Quantizer::decode.
template <class L>
static __global__ void dequantize_kernel(BatchView<L> cache, int max_tokens, float* out) {
  using KQ = typename L::KeyQuantizer;
  using VQ = typename L::ValueQuantizer;
  constexpr int D = L::kHeadDim;
  static_assert(D % 64 == 0, "skv::gpu::dequantize: HeadDim must be a multiple of 64");
  const int s = blockIdx.x, h = blockIdx.y;
  const int length = cache.lengths[s];
  const SequenceView<L> seq = cache.sequence(s, length);
  const int qlen = L::quantized_length(length);
  for (int i = threadIdx.x; i < length * (D / 64); i += blockDim.x) {
    const int t = i / (D / 64), chunk = i % (D / 64);
    float* dst = out + ((static_cast<std::size_t>(s) * max_tokens + t) * cache.num_kv_heads + h) * 2 * D;
    if (t < qlen) {
      const auto kb = seq.keys(t, h);
      const auto vb = seq.values(t, h);
      const int slot = t % L::kPageSize;
      std::uint64_t kw[KQ::kBits];
      std::uint64_t vw[VQ::kBits];
      load_codes64<KQ::kBits>(kb.row(slot) + chunk * 8 * KQ::kBits, kw);
      load_codes64<VQ::kBits>(vb.row(slot) + chunk * 8 * VQ::kBits, vw);
      static_for<64>([&](auto ic) {
        constexpr int kI = decltype(ic)::value;
        const int c = chunk * 64 + kI;
        dst[c] = KQ::decode(code_of<KQ::kBits, kI>(kw), kb.params(slot, c));
        dst[D + c] = VQ::decode(code_of<VQ::kBits, kI>(vw), vb.params(slot, c));
      });
    } else {
      for (int c = chunk * 64; c < chunk * 64 + 64; ++c) {
        dst[c] = seq.residual_key(t, h)[c];
        dst[D + c] = seq.residual_value(t, h)[c];
      }
    }
  }
}

}  // namespace detail

/// Dequantizes every token of every sequence into out, a device array of
/// [num_seqs][max_tokens][num_kv_heads][2][HeadDim] floats (keys then values); tokens at or past a
/// sequence's length are not written. Asynchronous on `stream`.
template <class L>
void dequantize(const BatchView<L>& cache, int max_tokens, float* out, cudaStream_t stream = nullptr) {
  detail::check_batch_view(cache, "gpu::dequantize");
  skv::detail::require(out != nullptr, "gpu::dequantize: out must not be null");
  skv::detail::require(max_tokens >= 0 && max_tokens <= cache.capacity(),
                       "gpu::dequantize: max_tokens must be between 0 and the capacity");
  detail::dequantize_kernel<L><<<dim3(static_cast<unsigned>(cache.num_seqs), static_cast<unsigned>(cache.num_kv_heads)),
                                 128, 0, stream>>>(cache, max_tokens, out);
  check_cuda(cudaGetLastError(), "gpu::dequantize: kernel launch");
}

}  // namespace gpu
}  // namespace skv
