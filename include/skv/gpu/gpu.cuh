// skv/gpu/gpu.cuh: everything in skv::gpu (nvcc only). skv.hpp never includes this.
#pragma once

#include <skv/config.hpp>

#if !SKV_COMPILING_WITH_NVCC
#error "skv/gpu/gpu.cuh needs nvcc: include skv/gpu/*.cuh only from .cu files"
#endif

#include <skv/gpu/append.cuh>
#include <skv/gpu/cache.cuh>
#include <skv/gpu/common.cuh>
#include <skv/gpu/decode.cuh>
#include <skv/gpu/dequantize.cuh>
