// skv/config.hpp: the only file that knows about compilers.
//
// Every other header uses these macros and never tests __CUDACC__ itself, so a header means the
// same thing to g++, clang++ and nvcc (bodies may still branch on __CUDA_ARCH__, which only changes
// the device pass).
#pragma once

#define SKV_VERSION_MAJOR 0
#define SKV_VERSION_MINOR 1
#define SKV_VERSION_PATCH 0

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SKV_HOST_DEVICE __host__ __device__
#define SKV_DEVICE __device__
#define SKV_COMPILING_WITH_NVCC 1
#else
#define SKV_HOST_DEVICE
#define SKV_DEVICE
#define SKV_COMPILING_WITH_NVCC 0
#endif

// Before a __host__ __device__ function template that calls what it is given: whether the call
// may run on the device depends on the argument (a host lambda in a host-only reference is fine).
#if defined(__CUDACC__) && !defined(__HIPCC__)
#define SKV_HD_TEMPLATE_CALLS_ARGUMENT _Pragma("nv_exec_check_disable")
#else
#define SKV_HD_TEMPLATE_CALLS_ARGUMENT
#endif

#if defined(__CUDA_ARCH__)
#define SKV_FORCEINLINE __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define SKV_FORCEINLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define SKV_FORCEINLINE __forceinline
#else
#define SKV_FORCEINLINE inline
#endif

// Before a loop with a small constant trip count (the CPU kernels' loops over heads, rows and
// vectors): unroll it completely, so that arrays of accumulators indexed by it live in registers at
// -O2 and -Os too, not only where -O3 unrolls by itself (nvcc: the host compiler decides).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define SKV_UNROLL
#elif defined(__clang__)
#define SKV_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SKV_UNROLL _Pragma("GCC unroll 64")
#else
#define SKV_UNROLL
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SKV_RESTRICT __restrict__
#else
#define SKV_RESTRICT
#endif

// Instruction sets the CPU fast path may use, chosen at compile time from the target flags.
// SKV_DISABLE_SIMD forces the portable scalar path (it is built and tested that way in CI).
#if !defined(SKV_DISABLE_SIMD) && !defined(__CUDA_ARCH__)
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define SKV_HAS_AVX512 1
#endif
#if defined(__AVX512VNNI__) && defined(SKV_HAS_AVX512)
#define SKV_HAS_AVX512VNNI 1
#endif
#if defined(__AVX512VBMI__) && defined(SKV_HAS_AVX512)
#define SKV_HAS_AVX512VBMI 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define SKV_HAS_AVX2 1
#endif
#if defined(__F16C__)
#define SKV_HAS_F16C 1
#endif
#endif

// OpenMP is optional: without it the CPU path runs on one thread.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define SKV_HAS_OPENMP 1
#endif

// POSIX fork handlers (skv/threads.hpp: a child made by fork() runs on one thread).
#if defined(__unix__) || defined(__APPLE__)
#define SKV_HAS_PTHREAD_ATFORK 1
#else
#define SKV_HAS_PTHREAD_ATFORK 0
#endif
