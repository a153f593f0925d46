// skv/gpu/append.cuh: the quantize-append kernel (nvcc only).
//
// One call appends new tokens to many sequences, in two launches: every block the append
// completes is quantized by its own CTA (reading new tokens from the input and older ones from the
// ring), then the ring receives the tokens it keeps and the lengths advance. The result is what
// skv::append writes token by token on the host: ring slots, metadata and packed codes identical
// byte for byte (tests/cuda checks it). The metadata comes
// from skv::Quantizer::fit and the codes from skv::Quantizer::encode on the stored parameters, the
// functions the CPU cache calls.
//
// Unlike skv::append (host), the kernel does not scan the input for NaN / Inf (that would cost a
// pass over it); keys and values must be finite with |x| <= Quantizer::kMaxInput.
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/append.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <skv/cache/layout.hpp>
#include <skv/error.hpp>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/common.cuh>
#include <skv/numeric/half.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {
namespace gpu {

namespace detail {

constexpr int kAppendThreads = 256;

/// Whether appending n tokens to sequence s is valid: fits its pages and every page it will
/// quantize into is inside the pool. The append kernel and the length update use the same test,
/// so a rejected sequence is left exactly as it was.
template <class L>
__device__ bool append_ok(const BatchView<L>& cache, int s, int length, int n) {
  if (n <= 0 || length < 0 || length > cache.capacity() || n > cache.capacity() - length) return false;
  const int q0 = L::quantized_length(length);
  const int q1 = L::quantized_length(length + n);
  const std::int32_t* table = cache.block_table + static_cast<std::size_t>(s) * cache.max_pages;
  for (int p = q0 / L::kPageSize; q1 > q0 && p <= (q1 - 1) / L::kPageSize; ++p) {
    if (table[p] < 0 || table[p] >= cache.num_pages) return false;
  }
  return true;
}

/// Metadata of one tensor block: the same groups, min/max and fit as skv::quantize_rows.
/// x(r, c) returns element c of row r of the block (r < rows).
template <class Q, int HeadDim, int PageSize, class X>
__device__ void fit_block_meta(X x, int rows, int slot0, std::uint8_t* block) {
  using TL = TensorLayout<Q, HeadDim, PageSize>;
  using Scale = typename Q::Scale;
  constexpr int G = Q::kGroupSize;
  auto* scales = reinterpret_cast<Scale*>(block + TL::kScaleOffset);
  auto* zeros = reinterpret_cast<Scale*>(block + TL::kZeroOffset);
  if constexpr (Q::kAxis == Axis::Channel) {
    const int items = rows / G * HeadDim;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
      const int g = i / HeadDim, c = i % HeadDim;
      float mn = x(g * G, c), mx = mn;
      for (int r = 1; r < G; ++r) {
        const float v = x(g * G + r, c);
        mn = skv::detail::min_of(mn, v);
        mx = skv::detail::max_of(mx, v);
      }
      const typename Q::Stored st = Q::fit(mn, mx);
      const int m = TL::meta_index(slot0 + g * G, c);
      scales[m] = st.scale;
      if (Q::kHasZero) zeros[m] = st.zero;
    }
  } else {
    constexpr int kGroups = HeadDim / G;
    const int items = rows * kGroups;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
      const int t = i / kGroups, j = i % kGroups;
      float mn = x(t, j * G), mx = mn;
      for (int r = 1; r < G; ++r) {
        const float v = x(t, j * G + r);
        mn = skv::detail::min_of(mn, v);
        mx = skv::detail::max_of(mx, v);
      }
      const typename Q::Stored st = Q::fit(mn, mx);
      const int m = TL::meta_index(slot0 + t, j * G);
      scales[m] = st.scale;
      if (Q::kHasZero) zeros[m] = st.zero;
    }
  }
}

/// Codes of one tensor block, eight at a time (eight codes fill exactly Bits bytes, so packing
/// eight-code pieces gives the bytes of skv::pack_codes over the whole row).
template <class Q, int HeadDim, int PageSize, class X>
__device__ void encode_block(X x, int rows, int slot0, std::uint8_t* block) {
  using TL = TensorLayout<Q, HeadDim, PageSize>;
  using Scale = typename Q::Scale;
  const auto* scales = reinterpret_cast<const Scale*>(block + TL::kScaleOffset);
  const auto* zeros = reinterpret_cast<const Scale*>(block + TL::kZeroOffset);
  constexpr int kPieces = HeadDim / 8;
  const int items = rows * kPieces;
  for (int i = threadIdx.x; i < items; i += blockDim.x) {
    const int t = i / kPieces, k = i % kPieces;
    const int slot = slot0 + t;
    std::uint8_t codes[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int m = TL::meta_index(slot, k * 8 + j);
      codes[j] = static_cast<std::uint8_t>(
          Q::encode(x(t, k * 8 + j), Q::params(scales[m], Q::kHasZero ? zeros[m] : Scale{})));
    }
    pack_codes<Q::kBits>(codes, 8, block + static_cast<std::size_t>(slot) * TL::kRowBytes + k * Q::kBits);
  }
}

/// Phase 1: quantizes every block that this append completes, one block per CTA (grid-stride over
/// blocks in x; y = sequence, z = KV head). A block's tokens come from the input (new tokens) or
/// from the residual ring (tokens appended earlier and not yet quantized), so blocks are
/// independent and a long prefill quantizes in parallel. The ring is written afterwards (phase 2),
/// so no block reads a slot that this append overwrites.
template <class L, class T>
static __global__ void __launch_bounds__(kAppendThreads)
    quantize_blocks_kernel(BatchView<L> cache, const T* keys, const T* values, const std::int32_t* indptr) {
  using KQ = typename L::KeyQuantizer;
  using VQ = typename L::ValueQuantizer;
  constexpr int D = L::kHeadDim;
  constexpr int B = L::kBlockTokens;
  const int s = blockIdx.y;
  const int h = blockIdx.z;
  const int first_input = indptr[s];
  const int n = indptr[s + 1] - first_input;
  const int length = cache.lengths[s];
  if (!append_ok(cache, s, length, n)) return;
  const int q0 = L::quantized_length(length);
  const int q1 = L::quantized_length(length + n);
  const SequenceView<L> view = cache.sequence(s, length);
  const std::size_t in_stride = static_cast<std::size_t>(cache.num_kv_heads) * D;
  for (int first = q0 + static_cast<int>(blockIdx.x) * B; first < q1; first += static_cast<int>(gridDim.x) * B) {
    auto key = [&](int r, int c) -> float {
      const int t = first + r;
      if (t >= length) return to_float(keys[static_cast<std::size_t>(first_input + t - length) * in_stride + h * D + c]);
      return view.residual_key(t, h)[c];
    };
    auto value = [&](int r, int c) -> float {
      const int t = first + r;
      if (t >= length) return to_float(values[static_cast<std::size_t>(first_input + t - length) * in_stride + h * D + c]);
      return view.residual_value(t, h)[c];
    };
    const int slot0 = first % L::kPageSize;
    std::uint8_t* block = view.head_block(first, h);
    fit_block_meta<KQ, D, L::kPageSize>(key, B, slot0, block);
    fit_block_meta<VQ, D, L::kPageSize>(value, B, slot0, block + L::Keys::kBytes);
    __syncthreads();
    encode_block<KQ, D, L::kPageSize>(key, B, slot0, block);
    encode_block<VQ, D, L::kPageSize>(value, B, slot0, block + L::Keys::kBytes);
    __syncthreads();
  }
}

/// Phase 2, one CTA per sequence: writes the new tokens that the ring keeps (the last
/// kResidualCapacity tokens; earlier slots are overwritten on the CPU too), then advances the length.
template <class L, class T>
static __global__ void __launch_bounds__(kAppendThreads)
    write_ring_kernel(BatchView<L> cache, const T* keys, const T* values, const std::int32_t* indptr) {
  constexpr int D = L::kHeadDim;
  const int s = blockIdx.x;
  const int first_input = indptr[s];
  const int n = indptr[s + 1] - first_input;
  const int length = cache.lengths[s];
  if (!append_ok(cache, s, length, n)) return;
  const int end = length + n;
  const int from = end - L::kResidualCapacity > length ? end - L::kResidualCapacity : length;
  const SequenceView<L> view = cache.sequence(s, length);
  const int heads = cache.num_kv_heads;
  const std::size_t in_stride = static_cast<std::size_t>(heads) * D;
  const int items = (end - from) * heads * D;
  for (int i = threadIdx.x; i < items; i += blockDim.x) {
    const int t = from + i / (heads * D);
    const int h = i / D % heads;
    const int c = i % D;
    const std::size_t src = static_cast<std::size_t>(first_input + t - length) * in_stride + static_cast<std::size_t>(h) * D + c;
    view.residual_key(t, h)[c] = to_float(keys[src]);
    view.residual_value(t, h)[c] = to_float(values[src]);
  }
  __syncthreads();
  if (threadIdx.x == 0) cache.lengths[s] = end;
}

}  // namespace detail

/// Appends new tokens to every sequence of the batch in one launch (asynchronous on `stream`).
///   keys, values  device arrays [total_tokens][num_kv_heads][HeadDim] of float, skv::fp16 or skv::bf16
///                 (CUDA's __half / __nv_bfloat16 have the same layout: reinterpret_cast them)
///   indptr        device array [num_seqs + 1]: sequence s appends tokens indptr[s] .. indptr[s+1]-1
///   max_tokens_per_seq  the largest indptr[s+1] - indptr[s], or 0 if unknown; it sizes the grid
///                 (too small costs parallelism, never correctness)
/// A sequence whose new length would exceed its pages, or whose block table points outside the
/// pool, is left unchanged (its length does not advance); the DeviceCache overload checks this on
/// the host and throws instead. Throws skv::Error on invalid arguments or a failed launch.
template <class L, class T>
void append(const BatchView<L>& cache, const T* keys, const T* values, const std::int32_t* indptr,
            int max_tokens_per_seq = 0, cudaStream_t stream = nullptr) {
  detail::check_batch_view(cache, "gpu::append");
  skv::detail::require(keys != nullptr && values != nullptr && indptr != nullptr,
                       "gpu::append: keys, values and indptr must not be null");
  static_assert(std::is_same<T, float>::value || std::is_same<T, fp16>::value || std::is_same<T, bf16>::value,
                "skv::gpu::append: token type T must be float, skv::fp16 or skv::bf16");
  skv::detail::require(max_tokens_per_seq >= 0, "gpu::append: max_tokens_per_seq must not be negative");
  // Enough CTAs for every block the longest append can complete; any count is correct (grid-stride).
  const int blocks = max_tokens_per_seq / L::kBlockTokens + 1;
  const unsigned gx = static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
  detail::quantize_blocks_kernel<L, T><<<dim3(gx, static_cast<unsigned>(cache.num_seqs),
                                              static_cast<unsigned>(cache.num_kv_heads)),
                                         detail::kAppendThreads, 0, stream>>>(cache, keys, values, indptr);
  check_cuda(cudaGetLastError(), "gpu::append: quantize kernel launch");
  detail::write_ring_kernel<L, T><<<static_cast<unsigned>(cache.num_seqs), detail::kAppendThreads, 0, stream>>>(
      cache, keys, values, indptr);
  check_cuda(cudaGetLastError(), "gpu::append: ring kernel launch");
}

/// Appends counts[s] tokens to sequence s (keys / values on the device, sequences back to back).
/// Checks every count against the host copy of the lengths and throws skv::Error, changing
/// nothing, if one is negative or would overflow its sequence's pages. Synchronous with the host
/// for the small upload of token offsets; the kernels run on `stream`.
template <class L, class T>
void append(DeviceCache<L>& cache, const T* keys, const T* values, const std::vector<int>& counts,
            cudaStream_t stream = nullptr) {
  skv::detail::require(static_cast<int>(counts.size()) == cache.num_seqs(),
                       "gpu::append: counts has " + std::to_string(counts.size()) + " entries for " +
                           std::to_string(cache.num_seqs()) + " sequences");
  std::vector<std::int32_t> indptr(counts.size() + 1, 0);
  for (std::size_t s = 0; s < counts.size(); ++s) {
    skv::detail::require(counts[s] >= 0, "gpu::append: negative token count " + std::to_string(counts[s]) +
                                             " for sequence " + std::to_string(s));
    skv::detail::require(counts[s] <= cache.capacity() - cache.lengths()[s],
                         "gpu::append: " + std::to_string(counts[s]) + " tokens past the capacity of sequence " +
                             std::to_string(s) + " (" + std::to_string(cache.lengths()[s]) + " of " +
                             std::to_string(cache.capacity()) + " used)");
    indptr[s + 1] = indptr[s] + counts[s];
  }
  if (indptr.back() == 0) return;
  std::int32_t* d_indptr = cache.scratch_indptr(indptr.size());
  check_cuda(cudaMemcpyAsync(d_indptr, indptr.data(), indptr.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                             stream),
             "gpu::append: cudaMemcpyAsync");
  int max_count = 0;
  for (int c : counts) max_count = c > max_count ? c : max_count;
  append(cache.view(), keys, values, d_indptr, max_count, stream);
  check_cuda(cudaStreamSynchronize(stream), "gpu::append: cudaStreamSynchronize");
  for (std::size_t s = 0; s < counts.size(); ++s) cache.host_lengths()[s] += counts[s];
}

}  // namespace gpu
}  // namespace skv
