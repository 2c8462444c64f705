// The device side of a kernel's randomness and memory: where it reads its
// (seed, offset), and packs of 8 elements moved with 16-byte accesses.
#pragma once

#include <ATen/cuda/PhiloxUtils.cuh>

#include "../philox.h"
#include "../rng_state.h"

namespace fastdrop::cuda {

// Where a kernel reads its (seed, offset): a forward unpacks the generator's
// Philox state (graph-safe) and its first thread records it in rng_state; a
// backward reads a recorded rng_state. One type for both, so each kernel is
// compiled once; the branch is uniform and taken once per thread.
struct KernelRng {
  at::PhiloxCudaState philox;
  int64_t* record = nullptr;
  const int64_t* recorded = nullptr;

  __device__ RngState load() const {
    if (recorded != nullptr) return {static_cast<uint64_t>(recorded[0]), static_cast<uint64_t>(recorded[1])};
    const auto seed_offset = at::cuda::philox::unpack(philox);
    const RngState rng = {std::get<0>(seed_offset), std::get<1>(seed_offset)};
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      record[0] = static_cast<int64_t>(rng.seed);
      record[1] = static_cast<int64_t>(rng.offset);
    }
    return rng;
  }
};

inline bool is_16_byte_aligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// Eight consecutive elements, moved with 16-byte loads and stores.
template <typename scalar_t>
struct alignas(16) Pack8 {
  scalar_t value[kElementsPerBlock];
};

}  // namespace fastdrop::cuda
