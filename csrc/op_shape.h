// The three forms every operator takes, written once for every device: the
// forward checks its arguments, draws (seed, offset) from the generator, runs
// the kernel and returns the output and its rng_state; the in-place form does
// the same into its input and returns rng_state; the backward runs the kernel
// on the gradient with the rng_state a forward returned (the same mask).
//
// A Device (cpu/op_helpers.h, cuda/op_helpers.cuh, meta_ops.cpp) gives:
//   Guard(tensor)            what is held while its kernel runs (a device guard, or nothing);
//   draw(input, generator)   {the kernel's rng, the rng_state tensor it records};
//   recorded(rng_state)      the kernel's rng of the call that returned rng_state;
//   skips_kernel(t, forward) whether the kernel is not run for t (empty tensors; on CUDA a forward's
//                            kernel always runs: it records rng_state; Meta runs none);
//   check_no_overlap(input)  the in-place form's check that no two elements share memory;
//   empty_like(like)         a fresh output the kernel writes in full.
// kernel(input, output, rng) writes the output, which takes the memory format
// of `like` (the input, or the residual of the fused residual forms).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "checks.h"

namespace fastdrop {

template <typename Device, typename Kernel>
std::tuple<at::Tensor, at::Tensor> forward_op(const char* op, const at::Tensor& input, double p,
                                              const std::optional<at::Generator>& generator, const Kernel& kernel,
                                              const at::Tensor& like = at::Tensor()) {
  check_floating_input(input, op);
  check_probability(p);
  const typename Device::Guard guard(input);
  auto [rng, rng_state] = Device::draw(input, generator);
  at::Tensor output = Device::empty_like(like.defined() ? like : input);
  if (!Device::skips_kernel(input, true)) kernel(input, output, rng);
  return {output, rng_state};
}

template <typename Device, typename Kernel>
at::Tensor inplace_op(const char* op, at::Tensor& input, double p, const std::optional<at::Generator>& generator,
                      const Kernel& kernel) {
  check_floating_input(input, op);
  check_probability(p);
  Device::check_no_overlap(input);
  const typename Device::Guard guard(input);
  auto [rng, rng_state] = Device::draw(input, generator);
  if (!Device::skips_kernel(input, true)) kernel(input, input, rng);
  return rng_state;
}

template <typename Device, typename Kernel>
at::Tensor backward_op(const char* op, const at::Tensor& grad, const at::Tensor& rng_state, double p,
                       const Kernel& kernel) {
  check_floating_input(grad, op);
  check_probability(p);
  check_rng_state(rng_state, grad, op);
  const typename Device::Guard guard(grad);
  at::Tensor grad_input = Device::empty_like(grad);
  const at::Tensor state = rng_state.contiguous();  // alive until the kernel has read it
  if (!Device::skips_kernel(grad, false)) kernel(grad, grad_input, Device::recorded(state));
  return grad_input;
}

}  // namespace fastdrop
