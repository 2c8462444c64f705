// The shape every CUDA operator shares: check, reserve a Philox counter column
// of the device's generator, launch the kernel (which unpacks and records the
// state), return the output and its rng_state; in-place and backward variants.
#pragma once

#include <ATen/MemoryOverlap.h>

#include "../fastdrop.h"
#include "runtime.cuh"

namespace fastdrop::cuda {

// kernel(input, output, rng) launches the work with a KernelRng. The output takes the memory format of `like` (the input, or
// the residual of the fused residual forms).
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor> forward_op(const char* op, const at::Tensor& input, double p,
                                              const std::optional<at::Generator>& generator, const Kernel& kernel,
                                              const at::Tensor& like = at::Tensor()) {
  check_floating_input(input, op);
  check_probability(p);
  const DeviceGuard guard(input.device());
  at::Tensor rng_state;
  const KernelRng rng = draw_rng(input, generator, rng_state);
  at::Tensor output = at::empty_like(like.defined() ? like : input);
  kernel(input, output, rng);  // launched even when empty: it records rng_state
  return {output, rng_state};
}

template <typename Kernel>
at::Tensor inplace_op(const char* op, at::Tensor& input, double p, const std::optional<at::Generator>& generator,
                      const Kernel& kernel) {
  check_floating_input(input, op);
  check_probability(p);
  at::assert_no_internal_overlap(input);
  const DeviceGuard guard(input.device());
  at::Tensor rng_state;
  const KernelRng rng = draw_rng(input, generator, rng_state);
  kernel(input, input, rng);
  return rng_state;
}

template <typename Kernel>
at::Tensor backward_op(const char* op, const at::Tensor& grad, const at::Tensor& rng_state, double p,
                       const Kernel& kernel) {
  check_floating_input(grad, op);
  check_probability(p);
  check_rng_state(rng_state, grad, op);
  const DeviceGuard guard(grad.device());
  at::Tensor grad_input = at::empty_like(grad);
  const at::Tensor state = rng_state.contiguous();
  if (grad.numel() > 0) kernel(grad, grad_input, recorded_rng(state));
  return grad_input;
}

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
