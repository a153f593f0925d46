// skv/gpu/decode.cuh: decode attention over the quantized paged cache, and an fp16 baseline with
// the same structure (nvcc only).
//
// One query token per sequence. A CTA of 128 threads handles one (split, KV head, sequence): the
// query heads that share the KV head (the GQA group, a template parameter) are processed together,
// so every cached byte is read once. Tokens go in tiles of 128, 32 per warp; per tile:
//   1. each warp takes 32 tokens (one key group: Channel-axis key groups span >= 32 tokens):
//      scaled query q'[h][c] = q[h][c] * s[c] and bias[h] = sum_c q'[h][c] * z[c] for its group,
//      then one logit per thread from raw key codes (the scaled query, docs/cpu.md "The work"); it also stages the
//      value codes and the per-token value scales / zeros of its 32 tokens in shared memory;
//   2. one warp per query head: online-softmax update (max, rescale, probabilities, sum; CUB
//      WarpReduce);
//   3. every thread owns 8 channels of a token lane: probabilities folded with the value scale once
//      per token and group, then one FMA per code and head (folded probabilities).
// Codes are unpacked in registers with compile-time shifts; nothing dequantized goes to global
// memory. Long sequences are split across CTAs (split-KV); the partial states are merged with
// skv::merge_factors (attention/softmax.hpp) by a second small kernel.
//
// Residual-window tokens are read in full precision from the sequence's ring, as on the CPU.
// Arithmetic is fp32 throughout (CUDA cores). The algebra reorders sums with respect to
// skv::cpu::decode_attention_reference (double): tests/cuda bounds the difference.
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/decode.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/warp/warp_reduce.cuh>
#include <cuda/functional>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <skv/attention/softmax.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/error.hpp>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/common.cuh>
#include <skv/numeric/half.hpp>
#include <skv/quant/quantizer.hpp>

namespace skv {
namespace gpu {

/// Page layout of the fp16 baseline cache: a page holds PageSize tokens of every KV head,
/// [head][keys PageSize x HeadDim][values PageSize x HeadDim], fp16. No residual window.
template <int HeadDim, int PageSize = 64>
struct Fp16Layout {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256, "skv::gpu::Fp16Layout: HeadDim must be 64, 128 or 256");
  static_assert(PageSize >= 32 && PageSize % 32 == 0, "skv::gpu::Fp16Layout: PageSize must be a multiple of 32");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kPageSize = PageSize;
  static constexpr std::size_t kTensorBytes = static_cast<std::size_t>(PageSize) * HeadDim * 2;
  static constexpr std::size_t kHeadBytes = 2 * kTensorBytes;
  SKV_HOST_DEVICE static constexpr std::size_t page_bytes(int num_kv_heads) {
    return kHeadBytes * static_cast<std::size_t>(num_kv_heads);
  }
  static constexpr double bytes_per_token() { return static_cast<double>(kHeadBytes) / PageSize; }
};

/// Non-owning view of an fp16 paged cache (block table and lengths as in BatchView).
template <int HeadDim, int PageSize = 64>
struct Fp16BatchView {
  using L = Fp16Layout<HeadDim, PageSize>;
  std::uint8_t* pages = nullptr;
  const std::int32_t* block_table = nullptr;
  std::int32_t* lengths = nullptr;
  int num_seqs = 0;
  int max_pages = 0;
  int num_pages = 0;
  int num_kv_heads = 0;
  SKV_HOST_DEVICE int capacity() const { return max_pages * PageSize; }
  /// First byte of head h's block in the page of `token` of sequence s.
  SKV_HOST_DEVICE std::uint8_t* head_block(int s, int token, int h) const {
    const std::int32_t page = block_table[static_cast<std::size_t>(s) * max_pages + token / PageSize];
    return pages + static_cast<std::size_t>(page) * L::page_bytes(num_kv_heads) + static_cast<std::size_t>(h) * L::kHeadBytes;
  }
};

/// Scratch memory for split-KV partial states; reuse one across calls.
class DecodeWorkspace {
 public:
  DecodeWorkspace() = default;
  /// Makes room for at least `floats` floats (reallocating only to grow).
  float* reserve(std::size_t floats) {
    if (buffer_.count < floats) buffer_ = detail::DeviceBuffer<float>(floats);
    return buffer_.ptr;
  }
  std::size_t bytes() const { return buffer_.bytes(); }

 private:
  detail::DeviceBuffer<float> buffer_;
};

/// How a launch was split (returned for benchmarks and tests).
struct DecodePlan {
  int num_splits = 1;
  int chunk_tokens = 0;  ///< tokens per split, a multiple of 128
};

namespace detail {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kTile = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct DecodeArgs {
  const float* q;      // [num_seqs][num_q_heads][D]
  float* out;          // [num_seqs][num_q_heads][D]
  float* ws_acc;       // [num_seqs][num_q_heads][num_splits][D]
  float* ws_stats;     // [num_seqs][num_q_heads][num_splits][2]: max (natural log units), sum
  int num_q_heads;
  int num_splits;
  int chunk;
  float qscale;        // softmax scale * log2(e): logits are in base-2 units inside the kernel
};

template <class T>
struct DecodeTraits;

/// Quantized cache: codes staged per token row, value metadata per token and group.
template <class KQ, class VQ, int D, int P, int R, class O>
struct DecodeTraits<CacheLayout<KQ, VQ, D, P, R, O>> {
  using L = CacheLayout<KQ, VQ, D, P, R, O>;
  using View = BatchView<L>;
  static constexpr bool kQuantized = true;
  static_assert(D == 64 || D == 128 || D == 256, "skv::gpu::decode_attention: HeadDim must be 64, 128 or 256");
  static_assert(KQ::kAxis == Axis::Channel,
                "skv::gpu::decode_attention supports Axis::Channel keys only (the default: per-channel keys, "
                "scaled-query form); use skv::cpu::decode_attention for other key quantizers");
  static_assert(VQ::kAxis == Axis::Token,
                "skv::gpu::decode_attention supports Axis::Token values only (the default: per-token values, "
                "folded probabilities); use skv::cpu::decode_attention for other value quantizers");
  static_assert(KQ::kGroupSize >= 32, "skv::gpu::decode_attention needs key groups of at least 32 tokens (one warp)");
  static_assert(VQ::kGroupSize >= 8, "skv::gpu::decode_attention needs value groups of at least 8 channels");
  static constexpr int kStageBytes = L::Values::kRowBytes;  // staged bytes per token
  static constexpr int kValueGroups = D / VQ::kGroupSize;
  static constexpr int kKeyBits = KQ::kBits;
  using Seq = SequenceView<L>;
};

template <int D, int P>
struct DecodeTraits<Fp16Layout<D, P>> {
  using L = Fp16Layout<D, P>;
  using View = Fp16BatchView<D, P>;
  static constexpr bool kQuantized = false;
  static constexpr int kStageBytes = D * 2;
  static constexpr int kValueGroups = 1;
  static constexpr int kKeyBits = 16;
  struct Seq {};
};

SKV_HOST_DEVICE constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

/// Shared-memory carve-up of the decode kernel (offsets in bytes).
template <class Layout, int G>
struct DecodeSmem {
  using Tr = DecodeTraits<Layout>;
  static constexpr int D = Layout::kHeadDim;
  static constexpr int NJ = Tr::kValueGroups;
  static constexpr std::size_t kQ = 0;                                                     // float [G][D]
  static constexpr std::size_t kQs = kQ + sizeof(float) * G * D;                           // float [W][G][D]
  static constexpr std::size_t kLogit = kQs + (Tr::kQuantized ? sizeof(float) * kDecodeWarps * G * D : 0);
  static constexpr std::size_t kVs = kLogit + sizeof(float) * G * kTile;                   // float [T][NJ]
  static constexpr std::size_t kZc = kVs + sizeof(float) * kTile * NJ;                     // float [T][NJ]
  static constexpr std::size_t kStat = kZc + sizeof(float) * kTile * NJ;                   // m, l, alpha [G]; bias [W][G]
  static constexpr std::size_t kCodes = align_up(kStat + sizeof(float) * (3 * G + kDecodeWarps * G), 16);
  static constexpr std::size_t kMain = kCodes + static_cast<std::size_t>(kTile) * Tr::kStageBytes;
  static constexpr int kLanes = kDecodeThreads / (D / 8);  // token lanes of the PV step
  static constexpr std::size_t kReduce = sizeof(float) * kLanes * G * D;
  static constexpr std::size_t kBytes = kMain > kReduce ? kMain : kReduce;
};

/// Loads Bits 64-bit words (64 codes) with the widest aligned loads.
template <int Bits>
__device__ SKV_FORCEINLINE void load_words(const std::uint8_t* p, std::uint64_t (&w)[Bits]) {
  if constexpr (Bits % 2 == 0) {
    const auto* q = reinterpret_cast<const ulonglong2*>(p);
#pragma unroll
    for (int i = 0; i < Bits / 2; ++i) {
      const ulonglong2 v = __ldg(q + i);
      w[2 * i] = v.x;
      w[2 * i + 1] = v.y;
    }
  } else {
    load_codes64<Bits>(p, w);
  }
}

/// Bits bytes (8 codes) from shared memory at an address aligned to the largest power of two
/// dividing Bits, as one little-endian word.
template <int Bits>
__device__ SKV_FORCEINLINE std::uint64_t load8_codes_shared(const std::uint8_t* p) {
  if constexpr (Bits == 8) {
    return *reinterpret_cast<const std::uint64_t*>(p);
  } else if constexpr (Bits % 4 == 0) {
    return *reinterpret_cast<const std::uint32_t*>(p);
  } else if constexpr (Bits % 2 == 0) {
    std::uint64_t w = 0;
#pragma unroll
    for (int i = 0; i < Bits / 2; ++i) w |= static_cast<std::uint64_t>(reinterpret_cast<const std::uint16_t*>(p)[i]) << (16 * i);
    return w;
  } else {
    std::uint64_t w = 0;
#pragma unroll
    for (int i = 0; i < Bits; ++i) w |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    return w;
  }
}

/// Lane 0's value (where CUB leaves a warp reduction) to every lane; the __syncwarp lets the
/// caller reuse the reduction's temporary storage.
/// Two packed fp16 values to floats with the hardware conversion (the fp16 baseline).
__device__ SKV_FORCEINLINE float2 half2_to_float2(std::uint32_t bits) {
  __half2 h;
  static_assert(sizeof(h) == sizeof(bits), "__half2 is two halves");
  memcpy(&h, &bits, sizeof bits);
  return __half22float2(h);
}

__device__ SKV_FORCEINLINE float warp_broadcast(float v) {
  const float r = __shfl_sync(0xffffffffu, v, 0);
  __syncwarp();
  return r;
}

template <class Layout, int G>
static __global__ void __launch_bounds__(kDecodeThreads)
    decode_kernel(typename DecodeTraits<Layout>::View cache, DecodeArgs a) {
  using Tr = DecodeTraits<Layout>;
  using Sm = DecodeSmem<Layout, G>;
  using WarpReduce = cub::WarpReduce<float>;
  constexpr int D = Layout::kHeadDim;
  constexpr int P = Layout::kPageSize;
  constexpr int NJ = Tr::kValueGroups;
  constexpr int kCpr = D / 8;                      // threads per value row (8 channels each)
  constexpr int kLanes = kDecodeThreads / kCpr;    // token lanes
  constexpr float kNegInf = -HUGE_VALF;
  constexpr int kKeyChunks = D / 64;
  // Loading a thread's whole key row before the metadata work cost more in occupancy (registers)
  // than it gained in latency on an H100; kept as a compile-time switch for other devices.
  constexpr bool kKeyPrefetch = false;

  extern __shared__ __align__(16) unsigned char smem[];
  float* s_q = reinterpret_cast<float*>(smem + Sm::kQ);
  float* s_qs = reinterpret_cast<float*>(smem + Sm::kQs);
  float* s_logit = reinterpret_cast<float*>(smem + Sm::kLogit);
  float* s_vs = reinterpret_cast<float*>(smem + Sm::kVs);
  float* s_zc = reinterpret_cast<float*>(smem + Sm::kZc);
  float* s_m = reinterpret_cast<float*>(smem + Sm::kStat);
  float* s_l = s_m + G;
  float* s_alpha = s_l + G;
  std::uint8_t* s_codes = smem + Sm::kCodes;
  __shared__ typename WarpReduce::TempStorage reduce_storage[kDecodeWarps];

  const int split = blockIdx.x;
  const int kvh = blockIdx.y;
  const int s = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  int length = cache.lengths[s];
  length = length < 0 ? 0 : (length > cache.capacity() ? cache.capacity() : length);
  const int begin = split * a.chunk;
  const int end = begin + a.chunk < length ? begin + a.chunk : length;
  const int qh0 = kvh * G;
  const std::size_t q_base = (static_cast<std::size_t>(s) * a.num_q_heads + qh0) * D;

  for (int i = tid; i < G * D; i += kDecodeThreads) s_q[i] = a.q[q_base + i] * a.qscale;
  if (tid < G) {
    s_m[tid] = kNegInf;
    s_l[tid] = 0.0f;
  }

  // PV ownership: channels [k8, k8 + 8) of token lanes `tl`, tl + kLanes, ...
  const int k8 = (tid % kCpr) * 8;
  const int tl0 = tid / kCpr;
  float acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
  float zacc[G];  // folded zero points (quantized values): acc[h][e] - zacc[h] is the output
#pragma unroll
  for (int h = 0; h < G; ++h) zacc[h] = 0.0f;

  [[maybe_unused]] int qlen = length;
  [[maybe_unused]] typename Tr::Seq seq{};
  if constexpr (Tr::kQuantized) {
    qlen = Layout::quantized_length(length);
    seq = cache.sequence(s, length);
  }
  __syncthreads();

  for (int tile = begin; tile < end; tile += kTile) {
    // ---- 1. logits of this warp's 32 tokens; stage their values ------------------------------
    const int g0 = tile + warp * 32;
    const int t = g0 + lane;
    float logit[G];
#pragma unroll
    for (int h = 0; h < G; ++h) logit[h] = kNegInf;
    std::uint8_t* my_codes = s_codes + static_cast<std::size_t>(warp) * 32 * Tr::kStageBytes;
    if (g0 < end) {
      if constexpr (Tr::kQuantized) {
        using KQ = typename Layout::KeyQuantizer;
        using VQ = typename Layout::ValueQuantizer;
        using KL = typename Layout::Keys;
        using VL = typename Layout::Values;
        if (g0 < qlen) {
          const std::uint8_t* kb = seq.head_block(g0, kvh);
          const std::uint8_t* vb = kb + KL::kBytes;
          const int slot0 = g0 % P;
          // this thread's key row: issue its loads before the group's metadata work
          constexpr int KB = KQ::kBits;
          const std::uint8_t* key_row = kb + static_cast<std::size_t>(slot0 + lane) * KL::kRowBytes;
          std::uint64_t wp[kKeyPrefetch ? kKeyChunks : 1][KB];
          if constexpr (kKeyPrefetch) {
            if (t < end) {
#pragma unroll
              for (int ci = 0; ci < kKeyChunks; ++ci) load_words<KB>(key_row + ci * 8 * KB, wp[ci]);
            }
          }
          const auto* ks = reinterpret_cast<const typename KQ::Scale*>(kb + KL::kScaleOffset);
          const auto* kz = reinterpret_cast<const typename KQ::Scale*>(kb + KL::kZeroOffset);
          float* qs = s_qs + static_cast<std::size_t>(warp) * G * D;
          float bias[G];
#pragma unroll
          for (int h = 0; h < G; ++h) bias[h] = 0.0f;
          for (int c = lane; c < D; c += 32) {
            const int m = KL::meta_index(slot0, c);
            const typename KQ::Params p = KQ::params(ks[m], KQ::kHasZero ? kz[m] : typename KQ::Scale{});
#pragma unroll
            for (int h = 0; h < G; ++h) {
              const float v = s_q[h * D + c] * p.scale;
              qs[h * D + c] = v;
              bias[h] = fmaf(v, p.zero, bias[h]);
            }
          }
#pragma unroll
          for (int h = 0; h < G; ++h) bias[h] = warp_broadcast(WarpReduce(reduce_storage[warp]).Sum(bias[h]));
          // value scales / zero points of the 32 tokens, and their codes
          const auto* vsc = reinterpret_cast<const typename VQ::Scale*>(vb + VL::kScaleOffset);
          const auto* vzr = reinterpret_cast<const typename VQ::Scale*>(vb + VL::kZeroOffset);
          for (int i = lane; i < 32 * NJ; i += 32) {
            const int tt = i / NJ, j = i % NJ;
            const int m = VL::meta_index(slot0 + tt, j * VQ::kGroupSize);
            const typename VQ::Params p = VQ::params(vsc[m], VQ::kHasZero ? vzr[m] : typename VQ::Scale{});
            s_vs[(warp * 32 + tt) * NJ + j] = p.scale;
            s_zc[(warp * 32 + tt) * NJ + j] = p.zero;
          }
          {
            const auto* src = reinterpret_cast<const uint4*>(vb + static_cast<std::size_t>(slot0) * VL::kRowBytes);
            auto* dst = reinterpret_cast<uint4*>(my_codes);
            for (int i = lane; i < 32 * VL::kRowBytes / 16; i += 32) dst[i] = __ldg(src + i);
          }
          __syncwarp();
          if (t < end) {
            float dot[G];
#pragma unroll
            for (int h = 0; h < G; ++h) dot[h] = 0.0f;
#pragma unroll
            for (int ci = 0; ci < kKeyChunks; ++ci) {
              std::uint64_t wl[KB];
              if constexpr (!kKeyPrefetch) load_words<KB>(key_row + ci * 8 * KB, wl);
              const std::uint64_t(&w64)[KB] = kKeyPrefetch ? wp[kKeyPrefetch ? ci : 0] : wl;
              std::uint32_t w[2 * KB];
#pragma unroll
              for (int i = 0; i < KB; ++i) {
                w[2 * i] = static_cast<std::uint32_t>(w64[i]);
                w[2 * i + 1] = static_cast<std::uint32_t>(w64[i] >> 32);
              }
              static_for<16>([&](auto quad) {
                constexpr int i0 = decltype(quad)::value * 4;
                const float x0 = code_value<KB, i0 + 0>(w);
                const float x1 = code_value<KB, i0 + 1>(w);
                const float x2 = code_value<KB, i0 + 2>(w);
                const float x3 = code_value<KB, i0 + 3>(w);
#pragma unroll
                for (int h = 0; h < G; ++h) {
                  const float4 qq = *reinterpret_cast<const float4*>(qs + h * D + ci * 64 + i0);
                  dot[h] = fmaf(qq.x, x0, dot[h]);
                  dot[h] = fmaf(qq.y, x1, dot[h]);
                  dot[h] = fmaf(qq.z, x2, dot[h]);
                  dot[h] = fmaf(qq.w, x3, dot[h]);
                }
              });
            }
#pragma unroll
            for (int h = 0; h < G; ++h) logit[h] = dot[h] - bias[h];
          }
        } else if (t < end) {
          // residual window: full-precision keys from the ring
          const float4* k4 = reinterpret_cast<const float4*>(seq.residual_key(t, kvh));
          float dot[G];
#pragma unroll
          for (int h = 0; h < G; ++h) dot[h] = 0.0f;
#pragma unroll 4
          for (int c4 = 0; c4 < D / 4; ++c4) {
            const float4 k = k4[c4];
#pragma unroll
            for (int h = 0; h < G; ++h) {
              const float4 qq = *reinterpret_cast<const float4*>(s_q + h * D + c4 * 4);
              dot[h] = fmaf(qq.x, k.x, fmaf(qq.y, k.y, fmaf(qq.z, k.z, fmaf(qq.w, k.w, dot[h]))));
            }
          }
#pragma unroll
          for (int h = 0; h < G; ++h) logit[h] = dot[h];
        }
      } else {
        // fp16 baseline: keys and values straight from the pages
        const std::uint8_t* kb = cache.head_block(s, g0, kvh);
        const int slot0 = g0 % P;
        {
          const auto* src = reinterpret_cast<const uint4*>(kb + Layout::kTensorBytes + static_cast<std::size_t>(slot0) * D * 2);
          auto* dst = reinterpret_cast<uint4*>(my_codes);
          const int valid = (end - g0 < 32 ? end - g0 : 32) * D * 2 / 16;
          for (int i = lane; i < valid; i += 32) dst[i] = __ldg(src + i);
        }
        if (t < end) {
          const uint4* k16 = reinterpret_cast<const uint4*>(kb + static_cast<std::size_t>(slot0 + lane) * D * 2);
          float dot[G];
#pragma unroll
          for (int h = 0; h < G; ++h) dot[h] = 0.0f;
#pragma unroll 4
          for (int c8 = 0; c8 < D / 8; ++c8) {
            const uint4 raw = __ldg(k16 + c8);
            const std::uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
            float k[8];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float2 f = half2_to_float2(words[i]);
              k[2 * i] = f.x;
              k[2 * i + 1] = f.y;
            }
#pragma unroll
            for (int h = 0; h < G; ++h) {
              const float4 qa = *reinterpret_cast<const float4*>(s_q + h * D + c8 * 8);
              const float4 qb = *reinterpret_cast<const float4*>(s_q + h * D + c8 * 8 + 4);
              dot[h] = fmaf(qa.x, k[0], fmaf(qa.y, k[1], fmaf(qa.z, k[2], fmaf(qa.w, k[3], dot[h]))));
              dot[h] = fmaf(qb.x, k[4], fmaf(qb.y, k[5], fmaf(qb.z, k[6], fmaf(qb.w, k[7], dot[h]))));
            }
          }
#pragma unroll
          for (int h = 0; h < G; ++h) logit[h] = dot[h];
        }
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h) s_logit[h * kTile + warp * 32 + lane] = logit[h];
    __syncthreads();

    // ---- 2. online softmax, one warp per query head --------------------------------------------
    for (int h = warp; h < G; h += kDecodeWarps) {
      float v[kTile / 32];
      float mx = kNegInf;
#pragma unroll
      for (int i = 0; i < kTile / 32; ++i) {
        v[i] = s_logit[h * kTile + i * 32 + lane];
        mx = fmaxf(mx, v[i]);
      }
      const float tile_max = warp_broadcast(WarpReduce(reduce_storage[warp]).Reduce(mx, ::cuda::maximum<float>{}));
      const float m_old = s_m[h];
      const float m_new = fmaxf(m_old, tile_max);
      const float alpha = m_new == kNegInf ? 1.0f : exp2f(m_old - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kTile / 32; ++i) {
        const float p = v[i] == kNegInf ? 0.0f : exp2f(v[i] - m_new);
        s_logit[h * kTile + i * 32 + lane] = p;
        sum += p;
      }
      __syncwarp();
      sum = warp_broadcast(WarpReduce(reduce_storage[warp]).Sum(sum));
      if (lane == 0) {
        s_l[h] = s_l[h] * alpha + sum;
        s_m[h] = m_new;
        s_alpha[h] = alpha;
      }
    }
    __syncthreads();

    // ---- 3. probabilities times values ---------------------------------------------------------
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float al = s_alpha[h];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][e] *= al;
      zacc[h] *= al;
    }
    for (int tl = tl0; tl < kTile; tl += kLanes) {
      const int tg = tile + tl;
      if (tg >= end) break;
      if constexpr (Tr::kQuantized) {
        if (tg < qlen) {
          using VQ = typename Layout::ValueQuantizer;
          constexpr int VB = VQ::kBits;
          const int j = k8 / VQ::kGroupSize;
          const float vs = s_vs[tl * NJ + j];
          const float zc = s_zc[tl * NJ + j];
          float pf[G];
#pragma unroll
          for (int h = 0; h < G; ++h) {
            pf[h] = s_logit[h * kTile + tl] * vs;
            zacc[h] = fmaf(pf[h], zc, zacc[h]);  // sum_t p s z, subtracted from every channel at the end
          }
          const std::uint64_t w = load8_codes_shared<VB>(s_codes + static_cast<std::size_t>(tl) * Tr::kStageBytes + (k8 / 8) * VB);
          const std::uint32_t w32[2] = {static_cast<std::uint32_t>(w), static_cast<std::uint32_t>(w >> 32)};
          static_for<8>([&](auto ec) {
            constexpr int e = decltype(ec)::value;
            const float x = code_value<VB, e>(w32);
#pragma unroll
            for (int h = 0; h < G; ++h) acc[h][e] = fmaf(pf[h], x, acc[h][e]);
          });
        } else {
          const float4* v4 = reinterpret_cast<const float4*>(seq.residual_value(tg, kvh) + k8);
          const float4 va = v4[0], vb4 = v4[1];
          const float x[8] = {va.x, va.y, va.z, va.w, vb4.x, vb4.y, vb4.z, vb4.w};
#pragma unroll
          for (int h = 0; h < G; ++h) {
            const float p = s_logit[h * kTile + tl];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(p, x[e], acc[h][e]);
          }
        }
      } else {
        const uint4 raw = *reinterpret_cast<const uint4*>(s_codes + static_cast<std::size_t>(tl) * Tr::kStageBytes + k8 * 2);
        const std::uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
        float x[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = half2_to_float2(words[i]);
          x[2 * i] = f.x;
          x[2 * i + 1] = f.y;
        }
#pragma unroll
        for (int h = 0; h < G; ++h) {
          const float p = s_logit[h * kTile + tl];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(p, x[e], acc[h][e]);
        }
      }
    }
    __syncthreads();
  }

  // ---- reduce the token lanes, then write the output or the partial state ----------------------
  float* s_red = reinterpret_cast<float*>(smem);
  const float* st_m = s_m;  // read before s_red overwrites: copy the stats to registers first
  float my_m = 0.0f, my_l = 0.0f;
  if (tid < G) {
    my_m = st_m[tid];
    my_l = s_l[tid];
  }
  __shared__ float s_final[2 * 8];
  if (tid < G) {
    s_final[2 * tid] = my_m;
    s_final[2 * tid + 1] = my_l;
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < G; ++h)
#pragma unroll
    for (int e = 0; e < 8; ++e) s_red[(tl0 * G + h) * D + k8 + e] = acc[h][e] - zacc[h];
  __syncthreads();
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int h = i / D, c = i % D;
    float r = 0.0f;
#pragma unroll
    for (int l = 0; l < kLanes; ++l) r += s_red[(l * G + h) * D + c];
    const float l_sum = s_final[2 * h + 1];
    const std::size_t qh = static_cast<std::size_t>(s) * a.num_q_heads + qh0 + h;
    if (a.num_splits == 1) {
      a.out[qh * D + c] = l_sum > 0.0f ? r / l_sum : 0.0f;
    } else {
      a.ws_acc[(qh * a.num_splits + split) * D + c] = r;
      if (c == 0) {
        a.ws_stats[(qh * a.num_splits + split) * 2] = s_final[2 * h] * kLn2;  // base-2 max -> natural log
        a.ws_stats[(qh * a.num_splits + split) * 2 + 1] = l_sum;
      }
    }
  }
}

/// Merges the split-KV partial states of one (sequence, query head) per CTA.
template <int D>
static __global__ void __launch_bounds__(D) merge_kernel(DecodeArgs a) {
  const std::size_t qh = static_cast<std::size_t>(blockIdx.y) * a.num_q_heads + blockIdx.x;
  const int c = threadIdx.x;
  SoftmaxStats<float> total;
  float acc = 0.0f;
  for (int sp = 0; sp < a.num_splits; ++sp) {
    SoftmaxStats<float> part;
    part.max = a.ws_stats[(qh * a.num_splits + sp) * 2];
    part.sum = a.ws_stats[(qh * a.num_splits + sp) * 2 + 1];
    if (part.empty()) continue;  // a split past the end of a short sequence
    const MergeFactors<float> f = merge_factors(total, part);
    acc = acc * f.a + a.ws_acc[(qh * a.num_splits + sp) * D + c] * f.b;
    total.sum = total.sum * f.a + part.sum * f.b;
    total.max = f.max;
  }
  a.out[qh * D + c] = total.empty() ? 0.0f : acc / total.sum;
}

/// Chooses the split count: about four waves of resident CTAs (fewer idle SMs in the last wave),
/// at least two tiles per split; `force_splits` > 0 overrides it.
inline DecodePlan plan_splits(int num_seqs, int num_kv_heads, int max_length, int resident_ctas, int force_splits) {
  DecodePlan plan;
  const int tiles = max_length > 0 ? ceil_div(max_length, kTile) : 1;
  int splits = force_splits;
  if (splits <= 0) {
    const int base = num_seqs * num_kv_heads;
    splits = ceil_div(4 * resident_ctas, base);
    const int max_splits = ceil_div(tiles, 2);
    if (splits > max_splits) splits = max_splits;
  }
  if (splits < 1) splits = 1;
  const int chunk_tiles = ceil_div(tiles, splits);
  plan.chunk_tokens = chunk_tiles * kTile;
  plan.num_splits = ceil_div(tiles, chunk_tiles);
  return plan;
}

template <class Layout, int G, class View>
DecodePlan launch_decode(const View& cache, DecodeArgs a, int max_length, int force_splits, DecodeWorkspace& workspace,
                         cudaStream_t stream) {
  using Sm = DecodeSmem<Layout, G>;
  constexpr int D = Layout::kHeadDim;
  auto kernel = &decode_kernel<Layout, G>;
  static int resident_per_sm = 0;  // per instantiation (one device model per process assumed)
  if (resident_per_sm == 0) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Sm::kBytes)),
               "gpu::decode_attention: cudaFuncSetAttribute");
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident_per_sm, kernel, kDecodeThreads, Sm::kBytes),
               "gpu::decode_attention: occupancy query");
    if (resident_per_sm < 1) resident_per_sm = 1;
  }
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "gpu::decode_attention: cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "gpu::decode_attention: cudaDeviceGetAttribute");
  const DecodePlan plan = plan_splits(cache.num_seqs, cache.num_kv_heads, max_length, resident_per_sm * sms, force_splits);
  a.num_splits = plan.num_splits;
  a.chunk = plan.chunk_tokens;
  if (plan.num_splits > 1) {
    const std::size_t rows = static_cast<std::size_t>(cache.num_seqs) * a.num_q_heads * plan.num_splits;
    float* ws = workspace.reserve(rows * (D + 2));
    a.ws_acc = ws;
    a.ws_stats = ws + rows * D;
  }
  const dim3 grid(static_cast<unsigned>(a.num_splits), static_cast<unsigned>(cache.num_kv_heads),
                  static_cast<unsigned>(cache.num_seqs));
  kernel<<<grid, kDecodeThreads, Sm::kBytes, stream>>>(cache, a);
  check_cuda(cudaGetLastError(), "gpu::decode_attention: kernel launch");
  if (a.num_splits > 1) {
    merge_kernel<D><<<dim3(static_cast<unsigned>(a.num_q_heads), static_cast<unsigned>(cache.num_seqs)), D, 0, stream>>>(a);
    check_cuda(cudaGetLastError(), "gpu::decode_attention: merge kernel launch");
  }
  return plan;
}

template <class Layout, class View>
DecodePlan decode_impl(const View& cache, const float* q, float* out, int num_q_heads, float scale,
                       const std::int32_t* host_lengths, DecodeWorkspace& workspace, cudaStream_t stream,
                       int force_splits) {
  using skv::detail::require;
  require(cache.num_seqs > 0, "gpu::decode_attention: the batch needs at least one sequence");
  require(cache.num_kv_heads > 0, "gpu::decode_attention: the cache needs at least one KV head (num_kv_heads = " +
                                      std::to_string(cache.num_kv_heads) + ")");
  require(cache.max_pages > 0 && cache.num_pages > 0, "gpu::decode_attention: max_pages and num_pages must be positive");
  require(cache.pages != nullptr && cache.block_table != nullptr && cache.lengths != nullptr,
          "gpu::decode_attention: the cache view has a null pages, block_table or lengths pointer");
  require(q != nullptr && out != nullptr, "gpu::decode_attention: q and out must not be null");
  require(host_lengths != nullptr, "gpu::decode_attention: host_lengths must not be null");
  require(num_q_heads > 0 && num_q_heads % cache.num_kv_heads == 0,
          "gpu::decode_attention: num_q_heads (" + std::to_string(num_q_heads) +
              ") must be a positive multiple of num_kv_heads (" + std::to_string(cache.num_kv_heads) + ")");
  const int group = num_q_heads / cache.num_kv_heads;
  require(group == 1 || group == 2 || group == 4 || group == 8,
          "gpu::decode_attention: unsupported GQA group of " + std::to_string(group) +
              " query heads per KV head (supported: 1, 2, 4, 8)");
  require(std::isfinite(scale), "gpu::decode_attention: the softmax scale must be finite");
  int max_length = 0;
  for (int s = 0; s < cache.num_seqs; ++s) {
    require(host_lengths[s] >= 0 && host_lengths[s] <= cache.capacity(),
            "gpu::decode_attention: length " + std::to_string(host_lengths[s]) + " of sequence " + std::to_string(s) +
                " is beyond its " + std::to_string(cache.max_pages) + " pages (" + std::to_string(cache.capacity()) +
                " tokens)");
    if (host_lengths[s] > max_length) max_length = host_lengths[s];
  }
  DecodeArgs a{};
  a.q = q;
  a.out = out;
  a.num_q_heads = num_q_heads;
  a.qscale = scale * kLog2e;
  switch (group) {
    case 1: return launch_decode<Layout, 1>(cache, a, max_length, force_splits, workspace, stream);
    case 2: return launch_decode<Layout, 2>(cache, a, max_length, force_splits, workspace, stream);
    case 4: return launch_decode<Layout, 4>(cache, a, max_length, force_splits, workspace, stream);
    default: return launch_decode<Layout, 8>(cache, a, max_length, force_splits, workspace, stream);
  }
}

}  // namespace detail

/// Decode attention for every sequence of the batch (asynchronous on `stream`).
///   q, out        device [num_seqs][num_q_heads][HeadDim] float; query head h reads KV head
///                 h / (num_q_heads / num_kv_heads) (GQA); q rotated like the keys if they were
///   scale         softmax scale (usually 1 / sqrt(HeadDim))
///   host_lengths  host copy of the lengths [num_seqs], used to check them and to plan the split
///                 (the kernel reads the device lengths, which must be equal)
///   workspace     scratch for split-KV partial states, grown on demand
///   force_splits  0: automatic; n > 0: split every sequence into about n parts (tests, tuning)
/// Throws skv::Error on null pointers, a length beyond a sequence's pages, num_q_heads not a
/// multiple of num_kv_heads, a GQA group other than 1, 2, 4, 8, or a failed launch.
template <class Layout>
DecodePlan decode_attention(const BatchView<Layout>& cache, const float* q, float* out, int num_q_heads, float scale,
                            const std::int32_t* host_lengths, DecodeWorkspace& workspace, cudaStream_t stream = nullptr,
                            int force_splits = 0) {
  (void)sizeof(detail::DecodeTraits<Layout>);  // the static_asserts name unsupported configurations
  skv::detail::require(cache.residual != nullptr, "gpu::decode_attention: the cache view has a null residual pointer");
  return detail::decode_impl<Layout>(cache, q, out, num_q_heads, scale, host_lengths, workspace, stream, force_splits);
}

/// The fp16 baseline: the same kernel structure over an fp16 paged cache, no quantization.
template <int HeadDim, int PageSize>
DecodePlan decode_attention(const Fp16BatchView<HeadDim, PageSize>& cache, const float* q, float* out, int num_q_heads,
                            float scale, const std::int32_t* host_lengths, DecodeWorkspace& workspace,
                            cudaStream_t stream = nullptr, int force_splits = 0) {
  return detail::decode_impl<Fp16Layout<HeadDim, PageSize>>(cache, q, out, num_q_heads, scale, host_lengths, workspace,
                                                            stream, force_splits);
}

/// Bytes a decode step reads from the cache (codes, scales, zeros and residual floats; the query
/// and the output are not counted): the quantity the benchmarks divide by time.
template <class Layout>
double decode_bytes_read(const std::vector<std::int32_t>& lengths, int num_kv_heads) {
  double bytes = 0.0;
  for (std::int32_t len : lengths) {
    const int q = Layout::quantized_length(len);
    bytes += static_cast<double>(q) * Layout::bytes_per_token() * num_kv_heads;
    bytes += static_cast<double>(len - q) * num_kv_heads * Layout::kHeadDim * 2 * sizeof(float);
  }
  return bytes;
}

}  // namespace gpu
}  // namespace skv
