// The per-call RNG state: (seed, offset), the key of every decision a call
// makes. Operators return it as a 2-element int64 tensor on the input's device
// (rng_state), and backward reads it instead of a mask.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fastdrop {

struct RngState {
  uint64_t seed;
  uint64_t offset;
};

// CPU operators know (seed, offset) on the host.
inline at::Tensor rng_state_tensor_cpu(RngState rng) {
  at::Tensor state = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  state.data_ptr<int64_t>()[0] = static_cast<int64_t>(rng.seed);
  state.data_ptr<int64_t>()[1] = static_cast<int64_t>(rng.offset);
  return state;
}

inline RngState read_rng_state_cpu(const at::Tensor& state) {
  const at::Tensor contiguous = state.contiguous();
  const int64_t* values = contiguous.data_ptr<int64_t>();
  return {static_cast<uint64_t>(values[0]), static_cast<uint64_t>(values[1])};
}

}  // namespace fastdrop
