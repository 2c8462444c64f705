// What the CPU and CUDA kernels share: argument checks with torch's wording,
// the per-call RNG state, and the layout builder.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

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

// torch's dropouts raise RuntimeError for integer and bool inputs and
// NotImplementedError for other dtypes they have no kernel for (complex, float8).
inline void check_floating_input(const at::Tensor& input, const char* op) {
  const auto dtype = input.scalar_type();
  if (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16) return;
  TORCH_CHECK(!at::isIntegralType(dtype, /*includeBool=*/true), "fastdrop.", op,
              " expects a floating-point input (Half, BFloat16, Float or Double), but got ", dtype);
  TORCH_CHECK_NOT_IMPLEMENTED(false, "fastdrop.", op, " is not implemented for ", dtype,
                              " inputs (it takes Half, BFloat16, Float or Double)");
}

inline void check_rng_state(const at::Tensor& rng_state, const at::Tensor& like, const char* op) {
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.dim() == 1 && rng_state.sym_numel() == 2, "fastdrop.", op,
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
std::optional<StridedLayout<kOperands>> make_layout(at::IntArrayRef sizes,
                                                    const std::array<at::IntArrayRef, kOperands>& strides) {
  StridedLayout<kOperands> layout;
  // Built innermost first, reversed at the end.
  int ndim = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    const int64_t size = sizes[d];
    if (size == 1) continue;
    bool merges = ndim > 0;
    for (int k = 0; k < kOperands && merges; ++k) {
      merges = strides[k][d] == layout.strides[k][ndim - 1] * layout.sizes[ndim - 1];
    }
    if (merges) {
      layout.sizes[ndim - 1] *= size;
      continue;
    }
    if (ndim == kMaxLayoutDims) return std::nullopt;
    layout.sizes[ndim] = size;
    for (int k = 0; k < kOperands; ++k) layout.strides[k][ndim] = strides[k][d];
    ++ndim;
  }
  for (int lo = 0, hi = ndim - 1; lo < hi; ++lo, --hi) {
    std::swap(layout.sizes[lo], layout.sizes[hi]);
    for (int k = 0; k < kOperands; ++k) std::swap(layout.strides[k][lo], layout.strides[k][hi]);
  }
  layout.ndim = ndim;
  return layout;
}

template <int kOperands>
std::optional<StridedLayout<kOperands>> make_layout(const std::array<at::Tensor, kOperands>& operands) {
  std::array<at::IntArrayRef, kOperands> strides;
  for (int k = 0; k < kOperands; ++k) strides[k] = operands[k].strides();
  return make_layout<kOperands>(operands[0].sizes(), strides);
}

// Element-wise variants decide per logical index: the operands' own layout,
// as a layout builder for with_layout.
template <size_t kTensors>
std::optional<StridedLayout<kTensors>> elementwise_layout(const std::array<at::Tensor, kTensors>& tensors) {
  return make_layout<kTensors>(tensors);
}

// The dims of `tensor` ordered outermost to innermost in memory (by stride,
// ties in logical order): walking a permuted layout in this order visits
// memory sequentially.
inline std::vector<int64_t> memory_order(const at::Tensor& tensor) {
  std::vector<int64_t> order(tensor.dim());
  for (int64_t d = 0; d < tensor.dim(); ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return tensor.stride(a) > tensor.stride(b); });
  return order;
}

inline std::vector<int64_t> permuted(at::IntArrayRef values, const std::vector<int64_t>& order) {
  std::vector<int64_t> result(order.size());
  for (size_t i = 0; i < order.size(); ++i) result[i] = values[order[i]];
  return result;
}

// Grouped variants decide once per group of the first `group_dims` dims: per
// (n, c) channel for feature dropout (group index n * C + c), per sample n for
// drop path, once for the whole tensor with no group dims (stochastic depth's
// batch mode). The decision depends on the group alone, so their kernels walk
// the output's memory order (channels_last included), every operand through
// its strides, and find each element's group through a last operand whose
// strides are (C, 1, 0, ...), (1, 0, ...) or all 0.
template <int kOperands>
std::optional<StridedLayout<kOperands>> grouped_layout(const std::array<at::Tensor, kOperands - 1>& tensors,
                                                        int64_t group_dims) {
  const at::Tensor& output = tensors[0];
  std::vector<int64_t> group_strides(output.dim(), 0);
  int64_t stride = 1;
  for (int64_t d = group_dims - 1; d >= 0; --d) {
    group_strides[d] = stride;
    stride *= output.size(d);
  }
  const std::vector<int64_t> order = memory_order(output);
  std::array<std::vector<int64_t>, kOperands> strides;
  for (int k = 0; k < kOperands - 1; ++k) strides[k] = permuted(tensors[k].strides(), order);
  strides[kOperands - 1] = permuted(group_strides, order);
  std::array<at::IntArrayRef, kOperands> stride_refs;
  for (int k = 0; k < kOperands; ++k) stride_refs[k] = strides[k];
  return make_layout<kOperands>(permuted(output.sizes(), order), stride_refs);
}

// Runs kernel(layout, tensors) on the layout make_layout(tensors) builds
// (tensors: the output, then the inputs, all of the output's shape), or, where
// it finds none (more than kMaxLayoutDims dims left after merging), on
// contiguous copies, copying the result back into the output.
template <size_t kTensors, typename MakeLayout, typename Kernel>
void with_layout(const std::array<at::Tensor, kTensors>& tensors, const MakeLayout& make_layout,
                 const Kernel& kernel) {
  if (const auto layout = make_layout(tensors)) {
    kernel(*layout, tensors);
    return;
  }
  std::array<at::Tensor, kTensors> contiguous;
  contiguous[0] = at::empty_like(tensors[0], at::MemoryFormat::Contiguous);
  for (size_t k = 1; k < kTensors; ++k) contiguous[k] = tensors[k].contiguous();
  kernel(*make_layout(contiguous), contiguous);
  tensors[0].copy_(contiguous[0]);
}

// Entry points, registered in ops.cpp. Each variant has a forward that draws
// from a generator and returns (output, rng_state), an in-place forward that
// returns rng_state, and a backward that regenerates the mask from rng_state.
#define FASTDROP_VARIANTS(X) \
  X(dropout)                 \
  X(alpha_dropout)           \
  X(feature_dropout)         \
  X(feature_alpha_dropout)

#define FASTDROP_DECLARE_VARIANT(name)                                                                        \
  std::tuple<at::Tensor, at::Tensor> name(const at::Tensor& input, double p,                                  \
                                          std::optional<at::Generator> generator);                            \
  at::Tensor name##_(at::Tensor& input, double p, std::optional<at::Generator> generator);                     \
  at::Tensor name##_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);

namespace cpu {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace cpu

namespace cuda {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace cuda

namespace meta {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace meta

#undef FASTDROP_DECLARE_VARIANT

// Per-sample drop path (stochastic depth) and the fused residual forms.
#define FASTDROP_DECLARE_RESIDUAL_OPS                                                                           \
  std::tuple<at::Tensor, at::Tensor> drop_path(const at::Tensor& input, double p, bool scale_by_keep,          \
                                               bool per_sample, std::optional<at::Generator> generator);      \
  at::Tensor drop_path_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,                 \
                                bool scale_by_keep, bool per_sample);                                           \
  std::tuple<at::Tensor, at::Tensor> drop_path_add(const at::Tensor& residual, const at::Tensor& branch,       \
                                                   double p, bool scale_by_keep,                               \
                                                   std::optional<at::Generator> generator);                    \
  std::tuple<at::Tensor, at::Tensor> dropout_add(const at::Tensor& residual, const at::Tensor& input, double p, \
                                                 std::optional<at::Generator> generator);                      \
  std::tuple<at::Tensor, at::Tensor> bias_dropout_add(const at::Tensor& input, const at::Tensor& bias,         \
                                                      const at::Tensor& residual, double p,                    \
                                                      std::optional<at::Generator> generator);

namespace cpu {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace cpu

namespace cuda {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace cuda

namespace meta {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace meta

#undef FASTDROP_DECLARE_RESIDUAL_OPS

// Checks shared by the fused residual forms: same shape, device and dtype.
inline void check_same_tensors(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                               const char* op) {
  TORCH_CHECK(a.sym_sizes() == b.sym_sizes(), "fastdrop.", op, ": ", a_name, " and ", b_name,
              " must have the same shape, but got ", a.sym_sizes(), " and ", b.sym_sizes());
  TORCH_CHECK(a.device() == b.device(), "fastdrop.", op, ": ", a_name, " and ", b_name,
              " must be on the same device, but got ", a.device(), " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastdrop.", op, ": ", a_name, " and ", b_name,
              " must have the same dtype, but got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_bias(const at::Tensor& input, const at::Tensor& bias, const char* op) {
  TORCH_CHECK(input.dim() >= 1 && bias.dim() == 1 && bias.sym_size(0) == input.sym_size(-1), "fastdrop.", op,
              ": bias must be 1-D with the size of input's last dim (", input.dim() >= 1 ? input.sym_size(-1) : 0,
              "), but got shape ", bias.sym_sizes());
  TORCH_CHECK(bias.device() == input.device(), "fastdrop.", op, ": bias must be on the input's device (",
              input.device(), "), but got ", bias.device());
  TORCH_CHECK(bias.scalar_type() == input.scalar_type(), "fastdrop.", op, ": bias must have the input's dtype (",
              input.scalar_type(), "), but got ", bias.scalar_type());
}

}  // namespace fastdrop
