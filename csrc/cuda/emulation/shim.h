// The CUDA language, as far as fastdrop's kernels use it, for the host
// compiler: the emulated CUDA build (-DFASTDROP_EMULATE_CUDA -include this
// file) compiles the .cu sources unchanged and runs every kernel serially on
// the CPU, one (block, thread) after another. The kernels use no shared
// memory, barriers, warp intrinsics or atomics, so every thread is independent
// and any order is a valid schedule.
#pragma once

#define FASTDROP_CUDA_SHIM 1

#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

// The built-in index variables, with the device's unsigned types, so that
// index arithmetic widens (or overflows) exactly where it would on a GPU.
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

using cudaStream_t = struct CUstream_st*;

// Device intrinsics with their device signatures. Products and sums are
// single IEEE operations (the build uses -ffp-contract=off), as the _rn forms are.
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
