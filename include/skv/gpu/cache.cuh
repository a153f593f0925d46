// skv/gpu/cache.cuh: the device cache of a batch of sequences (nvcc only).
//
// The page layout is the CPU cache's (cache/layout.hpp), byte for byte: a page pool of
// CacheLayout::page_bytes(num_kv_heads) bytes per page, a block table per sequence, a length per
// sequence and one full-precision residual ring per sequence. BatchView only points at that memory
// (the engine owns it) and is trivially copyable, so it is passed by value into kernels, where
// sequence(s) gives the same SequenceView the CPU code uses. DeviceCache is a small owning
// container for tests, examples and benchmarks. See docs/integration.md.
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/cache.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/gpu/common.cuh>

namespace skv {
namespace gpu {

/// Non-owning view of a batch of sequences in device memory.
///   pages        page pool, num_pages * Layout::page_bytes(num_kv_heads) bytes
///   block_table  [num_seqs][max_pages] int32: pool page of each logical page of each sequence
///   lengths      [num_seqs] int32: tokens appended so far (advanced by gpu::append)
///   residual     [num_seqs][Layout::residual_floats(num_kv_heads)] floats: the residual rings
template <class Layout>
struct BatchView {
  using L = Layout;
  static_assert(L::kSinkTokens == 0 && !L::kRotateKeys && !L::kRotateValues && !L::kClipKeys && !L::kClipValues &&
                    L::kFloatRing && !L::kPreRopeKeys,
                "skv::gpu: the CUDA kernels do not support Options (RotateKeys, RotateValues, Sinks, ClipKeys, "
                "ClipValues, Fp16Ring, Int8Ring, PreRopeKeys) yet; use them with the CPU cache");
  static_assert(!L::ValueQuantizer::kCodebook,
                "skv::gpu: the CUDA kernels do not read codebook values (Scheme::LloydMax) yet; use them with the "
                "CPU cache");
  std::uint8_t* pages = nullptr;
  const std::int32_t* block_table = nullptr;
  std::int32_t* lengths = nullptr;
  float* residual = nullptr;
  int num_seqs = 0;
  int max_pages = 0;  ///< block-table entries per sequence (its row stride)
  int num_pages = 0;  ///< pages in the pool
  int num_kv_heads = 0;

  SKV_HOST_DEVICE int capacity() const { return max_pages * L::kPageSize; }
  SKV_HOST_DEVICE std::size_t residual_stride() const { return L::residual_floats(num_kv_heads); }

  /// The SequenceView of sequence s with the given length (read the length from `lengths` on the
  /// device; on the host pass the engine's own copy).
  SKV_HOST_DEVICE SequenceView<L> sequence(int s, int length) const {
    SequenceView<L> v;
    v.pages = pages;
    v.block_table = block_table + static_cast<std::size_t>(s) * max_pages;
    v.residual = residual + static_cast<std::size_t>(s) * residual_stride();
    v.num_pages = num_pages;
    v.max_pages = max_pages;
    v.num_kv_heads = num_kv_heads;
    v.length = length;
    return v;
  }
};

static_assert(std::is_trivially_copyable<BatchView<CacheLayout<Quantizer<4, 32, Axis::Channel>,
                                                               Quantizer<2, 64, Axis::Token>, 128, 64, 0>>>::value,
              "BatchView must be trivially copyable");

namespace detail {

template <class Layout>
void check_batch_view(const BatchView<Layout>& v, const char* who) {
  const std::string w(who);
  skv::detail::require(v.num_seqs > 0, w + ": the batch needs at least one sequence (num_seqs = " +
                                           std::to_string(v.num_seqs) + ")");
  skv::detail::require(v.num_kv_heads > 0, w + ": the cache needs at least one KV head (num_kv_heads = " +
                                               std::to_string(v.num_kv_heads) + ")");
  skv::detail::require(v.max_pages > 0 && v.num_pages > 0, w + ": max_pages and num_pages must be positive");
  skv::detail::require(v.pages != nullptr && v.block_table != nullptr && v.lengths != nullptr && v.residual != nullptr,
                       w + ": the batch view has a null pages, block_table, lengths or residual pointer");
}

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  std::size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : count(n) {
    if (n) check_cuda(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)), "cudaMalloc");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), count(o.count) { o.ptr = nullptr; o.count = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr = o.ptr;
      count = o.count;
      o.ptr = nullptr;
      o.count = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }
  void release() noexcept {
    if (ptr) (void)cudaFree(ptr);
    ptr = nullptr;
  }
  std::size_t bytes() const { return count * sizeof(T); }
};

}  // namespace detail

/// Owning device cache for `num_seqs` sequences of up to `max_tokens` tokens each: every sequence
/// gets its own pages (sequence s uses pool pages s * max_pages .. s * max_pages + max_pages - 1),
/// all memory zeroed, lengths 0. Keeps a host copy of the lengths, which gpu::append advances.
template <class Layout>
class DeviceCache {
 public:
  using L = Layout;

  DeviceCache(int num_seqs, int num_kv_heads, int max_tokens)
      : num_seqs_(num_seqs), num_kv_heads_(num_kv_heads) {
    skv::detail::require(num_seqs > 0, "DeviceCache: num_seqs must be positive (" + std::to_string(num_seqs) + ")");
    skv::detail::require(num_kv_heads > 0,
                         "DeviceCache: num_kv_heads must be positive (" + std::to_string(num_kv_heads) + ")");
    skv::detail::require(max_tokens > 0, "DeviceCache: max_tokens must be positive (" + std::to_string(max_tokens) + ")");
    max_pages_ = (max_tokens + L::kPageSize - 1) / L::kPageSize;
    const std::size_t pages = static_cast<std::size_t>(num_seqs) * max_pages_;
    skv::detail::require(pages <= 0x7fffffff, "DeviceCache: too many pages");
    pool_ = detail::DeviceBuffer<std::uint8_t>(pages * L::page_bytes(num_kv_heads));
    table_ = detail::DeviceBuffer<std::int32_t>(pages);
    lengths_ = detail::DeviceBuffer<std::int32_t>(static_cast<std::size_t>(num_seqs));
    residual_ = detail::DeviceBuffer<float>(static_cast<std::size_t>(num_seqs) * L::residual_floats(num_kv_heads));
    check_cuda(cudaMemset(pool_.ptr, 0, pool_.bytes()), "cudaMemset");
    check_cuda(cudaMemset(lengths_.ptr, 0, lengths_.bytes()), "cudaMemset");
    check_cuda(cudaMemset(residual_.ptr, 0, residual_.bytes()), "cudaMemset");
    host_table_.resize(pages);
    for (std::size_t p = 0; p < pages; ++p) host_table_[p] = static_cast<std::int32_t>(p);
    check_cuda(cudaMemcpy(table_.ptr, host_table_.data(), table_.bytes(), cudaMemcpyHostToDevice), "cudaMemcpy");
    host_lengths_.assign(static_cast<std::size_t>(num_seqs), 0);
  }

  BatchView<L> view() const {
    BatchView<L> v;
    v.pages = pool_.ptr;
    v.block_table = table_.ptr;
    v.lengths = lengths_.ptr;
    v.residual = residual_.ptr;
    v.num_seqs = num_seqs_;
    v.max_pages = max_pages_;
    v.num_pages = num_seqs_ * max_pages_;
    v.num_kv_heads = num_kv_heads_;
    return v;
  }

  int num_seqs() const { return num_seqs_; }
  int num_kv_heads() const { return num_kv_heads_; }
  int max_pages() const { return max_pages_; }
  int capacity() const { return max_pages_ * L::kPageSize; }
  /// Host copy of the lengths (kept in step by gpu::append(DeviceCache&, ...)).
  const std::vector<std::int32_t>& lengths() const { return host_lengths_; }
  std::vector<std::int32_t>& host_lengths() { return host_lengths_; }
  const std::vector<std::int32_t>& host_block_table() const { return host_table_; }

  /// Copies the pages of sequence s (max_pages * page_bytes bytes, in logical order) to the host.
  std::vector<std::uint8_t> sequence_pages(int s) const {
    const std::size_t pb = L::page_bytes(num_kv_heads_);
    std::vector<std::uint8_t> out(pb * max_pages_);
    for (int p = 0; p < max_pages_; ++p) {
      const std::size_t pool_page = static_cast<std::size_t>(host_table_[static_cast<std::size_t>(s) * max_pages_ + p]);
      check_cuda(cudaMemcpy(out.data() + p * pb, pool_.ptr + pool_page * pb, pb, cudaMemcpyDeviceToHost), "cudaMemcpy");
    }
    return out;
  }
  /// Copies sequence s's residual ring to the host.
  std::vector<float> sequence_residual(int s) const {
    const std::size_t n = L::residual_floats(num_kv_heads_);
    std::vector<float> out(n);
    check_cuda(cudaMemcpy(out.data(), residual_.ptr + static_cast<std::size_t>(s) * n, n * sizeof(float),
                          cudaMemcpyDeviceToHost),
               "cudaMemcpy");
    return out;
  }
  /// Copies the device lengths to the host.
  std::vector<std::int32_t> device_lengths() const {
    std::vector<std::int32_t> out(static_cast<std::size_t>(num_seqs_));
    check_cuda(cudaMemcpy(out.data(), lengths_.ptr, lengths_.bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return out;
  }
  /// Device scratch for the token offsets of gpu::append (grown on demand).
  std::int32_t* scratch_indptr(std::size_t n) {
    if (indptr_.count < n) indptr_ = detail::DeviceBuffer<std::int32_t>(n);
    return indptr_.ptr;
  }
  /// Bytes of device memory held.
  std::size_t device_bytes() const { return pool_.bytes() + table_.bytes() + lengths_.bytes() + residual_.bytes(); }

 private:
  int num_seqs_;
  int num_kv_heads_;
  int max_pages_ = 0;
  detail::DeviceBuffer<std::uint8_t> pool_;
  detail::DeviceBuffer<std::int32_t> table_;
  detail::DeviceBuffer<std::int32_t> lengths_;
  detail::DeviceBuffer<float> residual_;
  detail::DeviceBuffer<std::int32_t> indptr_;
  std::vector<std::int32_t> host_table_;
  std::vector<std::int32_t> host_lengths_;
};

}  // namespace gpu
}  // namespace skv
