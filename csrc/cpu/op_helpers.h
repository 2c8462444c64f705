// The shape every CPU operator shares: check, draw (seed, offset) from the
// generator, run the kernel, return the output and its rng_state; in-place and
// backward variants of the same.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/MemoryOverlap.h>

#include <mutex>

#include "../fastdrop.h"

namespace fastdrop::cpu {

inline RngState draw_rng_state(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  // The CPU generator is a Mersenne twister, not Philox: each call takes a
  // fresh 64-bit key from it, and offset 0.
  return {gen->random64(), 0};
}

// kernel(input, output, rng) writes the output, which takes the memory
// format of `like` (the input, or the residual of the fused residual forms).
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor> forward_op(const char* op, const at::Tensor& input, double p,
                                              const std::optional<at::Generator>& generator, const Kernel& kernel,
                                              const at::Tensor& like = at::Tensor()) {
  check_floating_input(input, op);
  check_probability(p);
  const RngState rng = draw_rng_state(generator);
  at::Tensor output = at::empty_like(like.defined() ? like : input);
  if (input.numel() > 0) kernel(input, output, rng);
  return {output, rng_state_tensor_cpu(rng)};
}

template <typename Kernel>
at::Tensor inplace_op(const char* op, at::Tensor& input, double p, const std::optional<at::Generator>& generator,
                      const Kernel& kernel) {
  check_floating_input(input, op);
  check_probability(p);
  at::assert_no_internal_overlap(input);
  const RngState rng = draw_rng_state(generator);
  if (input.numel() > 0) kernel(input, input, rng);
  return rng_state_tensor_cpu(rng);
}

template <typename Kernel>
at::Tensor backward_op(const char* op, const at::Tensor& grad, const at::Tensor& rng_state, double p,
                       const Kernel& kernel) {
  check_floating_input(grad, op);
  check_probability(p);
  check_rng_state(rng_state, grad, op);
  at::Tensor grad_input = at::empty_like(grad);
  if (grad.numel() > 0) kernel(grad, grad_input, read_rng_state_cpu(rng_state));
  return grad_input;
}

}  // namespace fastdrop::cpu
