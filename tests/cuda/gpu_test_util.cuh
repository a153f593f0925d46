// Helpers shared by the GPU tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <skv/gpu/common.cuh>
#include <skv/numeric/half.hpp>

namespace skv_test {

/// True when SKV_REQUIRE_GPU=1: a missing device is then a failure, not a skip.
inline bool gpu_required() {
  const char* v = std::getenv("SKV_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

}  // namespace skv_test

/// Skips the test (or fails it under SKV_REQUIRE_GPU=1) when no CUDA device is usable.
#define SKV_REQUIRE_DEVICE()                                                                      \
  do {                                                                                            \
    if (skv::gpu::device_count() == 0) {                                                          \
      if (skv_test::gpu_required()) FAIL() << "SKV_REQUIRE_GPU=1 but no usable CUDA device";       \
      GTEST_SKIP() << "no usable CUDA device";                                                    \
    }                                                                                             \
  } while (0)

namespace skv_test {

/// Realistic-looking K/V rows: per-channel offsets and spreads (keys have outlier channels).
inline std::vector<float> random_tokens(std::mt19937& rng, int tokens, int heads, int dim, float offset_scale) {
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> chan_offset(static_cast<std::size_t>(heads) * dim), chan_scale(chan_offset.size());
  for (std::size_t i = 0; i < chan_offset.size(); ++i) {
    chan_offset[i] = offset_scale * n01(rng);
    chan_scale[i] = 0.25f + std::abs(n01(rng));
  }
  std::vector<float> x(static_cast<std::size_t>(tokens) * heads * dim);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t hc = i % chan_offset.size();
    x[i] = chan_offset[hc] + chan_scale[hc] * n01(rng);
  }
  return x;
}

template <class T>
std::vector<T> convert(const std::vector<float>& x);
template <>
inline std::vector<float> convert<float>(const std::vector<float>& x) { return x; }
template <>
inline std::vector<skv::fp16> convert<skv::fp16>(const std::vector<float>& x) {
  std::vector<skv::fp16> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = skv::to_fp16(x[i]);
  return y;
}
template <>
inline std::vector<skv::bf16> convert<skv::bf16>(const std::vector<float>& x) {
  std::vector<skv::bf16> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = skv::to_bf16(x[i]);
  return y;
}

template <class T>
struct DeviceArray {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit DeviceArray(std::size_t count) : n(count) {
    skv::gpu::check_cuda(cudaMalloc(reinterpret_cast<void**>(&ptr), (count ? count : 1) * sizeof(T)), "cudaMalloc");
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { (void)cudaFree(ptr); }
  void upload(const std::vector<T>& host) {
    skv::gpu::check_cuda(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  std::vector<T> download() const {
    std::vector<T> host(n);
    skv::gpu::check_cuda(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
  }
};

}  // namespace skv_test
