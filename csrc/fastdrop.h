// What the CPU and CUDA kernels share: argument checks with torch's wording,
// the per-call RNG state, and the layout builder.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "layout.h"
#include "philox.h"

namespace fastdrop {

// (seed, offset) of one call. Kernels record it in a 2-element int64 tensor on
// the input's device (`rng_state`), which backward reads instead of a mask.
struct RngState {
  uint64_t seed;
  uint64_t offset;
};

inline void check_probability(double p) {
  // Written so that NaN fails too.
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
}

inline void check_floating_input(const at::Tensor& input, const char* op) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(!at::isComplexType(dtype), "fastdrop.", op, " is not implemented for complex inputs (got ",
                              dtype, ")");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, "fastdrop.",
              op, " expects a floating-point input (Half, BFloat16, Float or Double), but got ", dtype);
}

inline void check_rng_state(const at::Tensor& rng_state, const at::Tensor& like, const char* op) {
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.dim() == 1 && rng_state.numel() == 2, "fastdrop.", op,
              ": rng_state must be the 2-element int64 tensor (seed, offset) a fastdrop forward returned, but got ",
              rng_state.scalar_type(), " of shape ", rng_state.sizes());
  TORCH_CHECK(rng_state.device() == like.device(), "fastdrop.", op, ": rng_state is on ", rng_state.device(),
              " but the tensor it applies to is on ", like.device());
}

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

// Merges dims that are contiguous in every operand (all of one shape), drops
// size-1 dims. Empty when more than kMaxLayoutDims dims remain.
template <int kOperands>
std::optional<StridedLayout<kOperands>> make_layout(const std::array<at::Tensor, kOperands>& operands) {
  StridedLayout<kOperands> layout;
  const at::Tensor& first = operands[0];
  // Built innermost first, reversed at the end.
  int ndim = 0;
  for (int64_t d = first.dim() - 1; d >= 0; --d) {
    const int64_t size = first.size(d);
    if (size == 1) continue;
    bool merges = ndim > 0;
    for (int k = 0; k < kOperands && merges; ++k) {
      merges = operands[k].stride(d) == layout.strides[k][ndim - 1] * layout.sizes[ndim - 1];
    }
    if (merges) {
      layout.sizes[ndim - 1] *= size;
      continue;
    }
    if (ndim == kMaxLayoutDims) return std::nullopt;
    layout.sizes[ndim] = size;
    for (int k = 0; k < kOperands; ++k) layout.strides[k][ndim] = operands[k].stride(d);
    ++ndim;
  }
  for (int lo = 0, hi = ndim - 1; lo < hi; ++lo, --hi) {
    std::swap(layout.sizes[lo], layout.sizes[hi]);
    for (int k = 0; k < kOperands; ++k) std::swap(layout.strides[k][lo], layout.strides[k][hi]);
  }
  layout.ndim = ndim;
  return layout;
}

// Runs `kernel(output, input)` directly when the pair has a layout the kernels
// can walk, else through contiguous copies (only tensors with more than
// kMaxLayoutDims non-mergeable dims land there).
template <typename Kernel>
void with_walkable_pair(const at::Tensor& input, at::Tensor& output, Kernel&& kernel) {
  if (auto layout = make_layout<2>({output, input})) {
    kernel(*layout, output, input);
    return;
  }
  at::Tensor input_contiguous = input.contiguous();
  at::Tensor output_contiguous = at::empty_like(input_contiguous, at::MemoryFormat::Contiguous);
  kernel(*make_layout<2>({output_contiguous, input_contiguous}), output_contiguous, input_contiguous);
  output.copy_(output_contiguous);
}

// Entry points, registered in ops.cpp.
namespace cpu {
std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator);
at::Tensor dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator);
at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
}  // namespace cpu

namespace cuda {
std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator);
at::Tensor dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator);
at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
}  // namespace cuda

}  // namespace fastdrop
