// The CPU's draw of (seed, offset), and its Device for the operators' shape
// (op_shape.h): the kernels run on the host, and skip empty tensors.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/MemoryOverlap.h>

#include <mutex>

#include "../checks.h"
#include "../op_shape.h"
#include "../layout_builder.h"
#include "../rng_state.h"
#include "huge_pages.h"

namespace fastdrop::cpu {

inline RngState draw_rng_state(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  // The CPU generator is a Mersenne twister, not Philox: each call takes a
  // fresh 64-bit key from it, and offset 0.
  return {gen->random64(), 0};
}

// The CPU's side of the operators' shape (op_shape.h).
struct Device {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  static bool skips_kernel(const at::Tensor& tensor, bool) { return tensor.numel() == 0; }

  static std::pair<RngState, at::Tensor> draw(const at::Tensor&, const std::optional<at::Generator>& generator) {
    const RngState rng = draw_rng_state(generator);
    return {rng, rng_state_tensor_cpu(rng)};
  }
  static RngState recorded(const at::Tensor& rng_state) { return read_rng_state_cpu(rng_state); }
  static void check_no_overlap(const at::Tensor& input) { at::assert_no_internal_overlap(input); }
  static at::Tensor empty_like(const at::Tensor& like) { return empty_output_like(like); }
};

}  // namespace fastdrop::cpu
