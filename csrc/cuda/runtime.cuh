// The host side of a CUDA launch: reserving a Philox counter column of the
// device's generator, sizing the grid, the stream, the device guard, and the
// launch itself. The emulated build (emulation/) supplies twins of each, so
// the kernel files compile unchanged for the GPU and for the CPU test device.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "device_rng.cuh"

#if defined(FASTDROP_EMULATE_CUDA)
#include "emulation/runtime.h"
#else

// ATen/cuda/CUDAContext.h is avoided on purpose: it needs the cuBLAS and
// cuSPARSE headers, which a bare CUDA toolkit may lack.
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <mutex>

// kernel<<<grid, block, 0, stream>>>, written so that the emulated build can
// run the same launch site on the CPU: FASTDROP_LAUNCH(grid, block, stream, kernel)(args...).
#define FASTDROP_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>

namespace fastdrop::cuda {

// A CPU tensor reaches a CUDA operator when a CUDA generator is passed with it
// (the dispatcher counts a generator's device): torch's error for that call.
struct DeviceGuard {
  explicit DeviceGuard(const at::Device& device) : guard(generator_checked(device)) {}
  c10::cuda::CUDAGuard guard;

 private:
  static at::Device generator_checked(const at::Device& device) {
    TORCH_CHECK(device.is_cuda(), "Expected a '", device.type(), "' device type for generator but found 'cuda'");
    return device;
  }
};

// Kernels index what one launch covers in 32 bits.
inline int64_t max_kernel_index() { return INT32_MAX; }

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

// Reserves one Philox counter column of the input's device generator and
// allocates the rng_state the kernel will record it in.
inline KernelRng draw_rng(const at::Tensor& like, const std::optional<at::Generator>& generator,
                          at::Tensor& rng_state) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
  rng_state = at::empty({2}, like.options().dtype(at::kLong));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->philox_cuda_state(kGeneratorOffsetPerCall), rng_state.data_ptr<int64_t>(), nullptr};
}

// Enough resident blocks to fill the current GPU once; kernels stride over the rest.
inline int grid_size(int64_t work_items, int threads_per_block) {
  const int device = c10::cuda::current_device();
  int multiprocessors = 0, threads_per_multiprocessor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_multiprocessor, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  const int64_t resident = static_cast<int64_t>(multiprocessors) * (threads_per_multiprocessor / threads_per_block);
  const int64_t needed = (work_items + threads_per_block - 1) / threads_per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

}  // namespace fastdrop::cuda

#endif  // FASTDROP_EMULATE_CUDA

namespace fastdrop::cuda {

inline KernelRng recorded_rng(const at::Tensor& rng_state) {
  return {{}, nullptr, rng_state.const_data_ptr<int64_t>()};
}

}  // namespace fastdrop::cuda
