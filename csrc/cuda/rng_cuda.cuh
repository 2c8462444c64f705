// Where a CUDA kernel finds its (seed, offset). Forward kernels unpack the
// generator's Philox state inside the kernel, which keeps them correct under
// CUDA-graph capture (each replay reads the advanced offset), and record it in
// rng_state; backward kernels read that record back.
#pragma once

// ATen/cuda/CUDAContext.h is avoided on purpose: it needs the cuBLAS and
// cuSPARSE headers, which a bare CUDA toolkit may lack.
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <mutex>

#include "../fastdrop.h"

namespace fastdrop::cuda {

struct GeneratorRng {
  at::PhiloxCudaState philox;
  int64_t* record;

  __device__ RngState load() const {
    const auto seed_offset = at::cuda::philox::unpack(philox);
    const RngState rng = {std::get<0>(seed_offset), std::get<1>(seed_offset)};
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      record[0] = static_cast<int64_t>(rng.seed);
      record[1] = static_cast<int64_t>(rng.offset);
    }
    return rng;
  }
};

struct RecordedRng {
  const int64_t* state;

  __device__ RngState load() const {
    return {static_cast<uint64_t>(state[0]), static_cast<uint64_t>(state[1])};
  }
};

// Reserves one Philox counter column of the input's device generator and
// allocates the rng_state the kernel will record it in.
inline GeneratorRng draw_rng(const at::Tensor& like, const std::optional<at::Generator>& generator,
                             at::Tensor& rng_state) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
  rng_state = at::empty({2}, like.options().dtype(at::kLong));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return {gen->philox_cuda_state(kGeneratorOffsetPerCall), rng_state.data_ptr<int64_t>()};
}

inline RecordedRng recorded_rng(const at::Tensor& rng_state) {
  return {rng_state.const_data_ptr<int64_t>()};
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

inline bool is_16_byte_aligned(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

// Eight consecutive elements, moved with 16-byte loads and stores.
template <typename scalar_t>
struct alignas(16) Pack8 {
  scalar_t value[kElementsPerBlock];
};

}  // namespace fastdrop::cuda
