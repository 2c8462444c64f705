// CUDA's Device for the operators' shape (op_shape.h): reserve a Philox counter
// column of the device's generator, launch the kernel (which unpacks and
// records the state); and with_affine, the kernels' compile-time affine flag.
#pragma once

#include <ATen/MemoryOverlap.h>

#include "../checks.h"
#include "../op_shape.h"
#include "../layout_builder.h"
#include "../rng_state.h"
#include "runtime.cuh"

namespace fastdrop::cuda {

// CUDA's side of the operators' shape (op_shape.h): kernels run on the
// input's device and stream; a forward kernel runs even on an empty input, as
// it records the (seed, offset) it unpacked into rng_state.
struct Device {
  struct Guard {
    DeviceGuard guard;
    explicit Guard(const at::Tensor& tensor) : guard(tensor.device()) {}
  };
  static bool skips_kernel(const at::Tensor& tensor, bool forward) { return !forward && tensor.numel() == 0; }

  static std::pair<KernelRng, at::Tensor> draw(const at::Tensor& input, const std::optional<at::Generator>& generator) {
    at::Tensor rng_state;
    const KernelRng rng = draw_rng(input, generator, rng_state);
    return {rng, rng_state};
  }
  static KernelRng recorded(const at::Tensor& rng_state) { return recorded_rng(rng_state); }
  static void check_no_overlap(const at::Tensor& input) { at::assert_no_internal_overlap(input); }
  static at::Tensor empty_like(const at::Tensor& like) { return at::empty_like(like); }
};

// Runs f.template operator()<kAffine>() with the flag as a compile-time constant.
template <typename F>
void with_affine(bool affine, const F& f) {
  if (affine) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace fastdrop::cuda
