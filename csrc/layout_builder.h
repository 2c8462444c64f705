// Builds the StridedLayout a kernel walks (layout.h) from the operands'
// sizes and strides, on the host: merges what is contiguous everywhere, orders
// grouped variants by memory, and falls back to contiguous copies where more
// than kMaxLayoutDims dims remain.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "layout.h"

namespace fastdrop {

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

// Which decision each element takes: element (i_0, ..., i_{n-1}) takes the
// contract's decision for index base + sum_k i_k * strides[k] (strides >= 0).
// Element-wise dropout is the row-major strides of the shape; grouped
// variants decide once per group of the first dims: per (n, c) channel for
// feature dropout (strides (C, 1, 0, ...)), per sample for drop path
// ((1, 0, ...)), once for the whole tensor in stochastic depth's batch mode
// (all 0). fastdrop::indexed_dropout takes any strides and base: a vmap level
// adds a dim of stride 0 (the same mask for every slice) or of the slices'
// span (independent slices), a shard adds its global offset.
struct DecisionIndex {
  at::DimVector strides;
  int64_t base = 0;
};

// One decision per group of the first `group_dims` dims, numbered row-major.
inline DecisionIndex leading_dims_index(at::IntArrayRef sizes, int64_t group_dims) {
  DecisionIndex index{at::DimVector(sizes.size(), 0), 0};
  int64_t stride = 1;
  for (int64_t d = group_dims - 1; d >= 0; --d) {
    index.strides[d] = stride;
    stride *= sizes[d];
  }
  return index;
}

// The decision depends on the index alone, so grouped kernels walk the
// output's memory order (channels_last included), every operand through its
// strides, and find each element's decision index (less the base) through a
// last operand whose strides are the index's.
template <int kOperands>
std::optional<StridedLayout<kOperands>> grouped_layout(const std::array<at::Tensor, kOperands - 1>& tensors,
                                                       const DecisionIndex& index) {
  const at::Tensor& output = tensors[0];
  const std::vector<int64_t> order = memory_order(output);
  std::array<std::vector<int64_t>, kOperands> strides;
  for (int k = 0; k < kOperands - 1; ++k) strides[k] = permuted(tensors[k].strides(), order);
  strides[kOperands - 1] = permuted(index.strides, order);
  std::array<at::IntArrayRef, kOperands> stride_refs;
  for (int k = 0; k < kOperands; ++k) stride_refs[k] = strides[k];
  return make_layout<kOperands>(permuted(output.sizes(), order), stride_refs);
}

// Calls run(tensors, index) once, or, where the decision index keeps more
// than max_dims dims apart even on contiguous copies (any strides can; CPU
// layouts hold kMaxLayoutDims, CUDA's fewer), once per slice along the first
// dim, the index's base advanced by its stride.
template <size_t kTensors, typename Run>
void for_each_layout_slice(const std::array<at::Tensor, kTensors>& tensors, const DecisionIndex& index, int max_dims,
                           const Run& run) {
  const at::Tensor& output = tensors[0];
  std::vector<int64_t> contiguous(output.dim());
  int64_t stride = 1;
  for (int64_t d = output.dim() - 1; d >= 0; --d) {
    contiguous[d] = stride;
    stride *= output.size(d);
  }
  const auto layout = make_layout<2>(output.sizes(), {at::IntArrayRef(contiguous), at::IntArrayRef(index.strides)});
  if (layout && layout->ndim <= max_dims) {
    run(tensors, index);
    return;
  }
  DecisionIndex slice_index{at::DimVector(index.strides.begin() + 1, index.strides.end()), index.base};
  for (int64_t i = 0; i < output.size(0); ++i, slice_index.base += index.strides[0]) {
    std::array<at::Tensor, kTensors> slices;
    for (size_t k = 0; k < kTensors; ++k) slices[k] = tensors[k].select(0, i);
    for_each_layout_slice<kTensors>(slices, slice_index, max_dims, run);
  }
}

// Runs kernel(layout, tensors) on the layout make_layout(tensors) builds
// (tensors: the output, then the inputs, all of the output's shape), or, where
// it builds none (more dims after merging than a kernel takes, or a reach past
// its index range), on fresh contiguous copies, copying the result back into
// the output. Fresh copies are aligned, so every kernel takes them.
template <size_t kTensors, typename MakeLayout, typename Kernel>
void with_layout(const std::array<at::Tensor, kTensors>& tensors, const MakeLayout& make_layout, const Kernel& kernel) {
  if (const auto layout = make_layout(tensors)) {
    kernel(*layout, tensors);
    return;
  }
  std::array<at::Tensor, kTensors> contiguous;
  for (size_t k = 0; k < kTensors; ++k) contiguous[k] = at::empty_like(tensors[k], at::MemoryFormat::Contiguous);
  for (size_t k = 1; k < kTensors; ++k) contiguous[k].copy_(tensors[k]);
  const auto layout = make_layout(contiguous);
  TORCH_INTERNAL_ASSERT(layout.has_value(), "fastdrop: no kernel takes contiguous copies");
  kernel(*layout, contiguous);
  tensors[0].copy_(contiguous[0]);
}

// drop_path_add_subset's layouts: whether every tensor holds each sample (index
// along dim 0) as one dense block of `row` elements, laid out alike (the
// strides of the other dims equal), so that element k of sample s is at
// data + s * row + k in each.
inline bool alike_sample_blocks(std::initializer_list<const at::Tensor*> tensors, int64_t row) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* tensor : tensors) {
    if (!tensor->is_non_overlapping_and_dense() || (tensor->size(0) > 1 && tensor->stride(0) != row)) return false;
    if (tensor->strides().slice(1) != first.strides().slice(1)) return false;
  }
  return true;
}

// Runs kernel(residual, branch_kept, output) on tensors of alike sample blocks:
// these, or contiguous copies (the result copied back into output).
template <typename Kernel>
void with_sample_blocks(const at::Tensor& residual, const at::Tensor& branch_kept, at::Tensor& output,
                        const Kernel& kernel) {
  const int64_t row = residual.numel() / residual.size(0);
  if (alike_sample_blocks({&output, &residual, &branch_kept}, row)) {
    kernel(residual, branch_kept, output);
    return;
  }
  at::Tensor contiguous_output = at::empty_like(output, at::MemoryFormat::Contiguous);
  kernel(residual.contiguous(), branch_kept.contiguous(), contiguous_output);
  output.copy_(contiguous_output);
}

}  // namespace fastdrop
