// Logical (row-major) element order versus memory order. The contract keys
// every decision on the logical index, so kernels walk logical order and look
// up where each operand keeps that element; dims that are contiguous in every
// operand are merged first, so a contiguous tensor becomes one flat run.
#pragma once

#include <cstdint>

#include "philox.h"

namespace fastdrop {

// Dims left after merging; tensors with more are handled through contiguous
// copies (with_layout). Eight keeps the GPU cursor in registers.
constexpr int kMaxLayoutDims = 8;

template <int kOperands>
struct StridedLayout {
  int ndim = 0;  // after merging; 0 means a single element
  int64_t sizes[kMaxLayoutDims];
  int64_t strides[kOperands][kMaxLayoutDims];

  FASTDROP_HOST_DEVICE bool flat_and_contiguous() const {
    if (ndim > 1) return false;
    for (int k = 0; k < kOperands; ++k) {
      if (ndim == 1 && strides[k][0] != 1) return false;
    }
    return true;
  }
  FASTDROP_HOST_DEVICE int64_t inner_size() const { return ndim == 0 ? 1 : sizes[ndim - 1]; }
  FASTDROP_HOST_DEVICE int64_t inner_stride(int operand) const { return ndim == 0 ? 0 : strides[operand][ndim - 1]; }
};

// Position of one logical index in every operand; next() steps to the
// following logical index with carries, so a walk costs one division per seek.
// Loops run over all kMaxLayoutDims dims with a guard, so that on the GPU the
// coordinates stay in registers instead of local memory.
template <int kOperands>
struct LogicalCursor {
  int64_t coord[kMaxLayoutDims];
  int64_t offset[kOperands];

  FASTDROP_HOST_DEVICE void seek(const StridedLayout<kOperands>& layout, int64_t index) {
    for (int k = 0; k < kOperands; ++k) offset[k] = 0;
#if FASTDROP_DEVICE_CODE
#pragma unroll
#endif
    for (int d = kMaxLayoutDims - 1; d >= 0; --d) {
      if (d >= layout.ndim) continue;
      const int64_t size = layout.sizes[d];
      coord[d] = index % size;
      index /= size;
      for (int k = 0; k < kOperands; ++k) offset[k] += coord[d] * layout.strides[k][d];
    }
  }

  FASTDROP_HOST_DEVICE void next(const StridedLayout<kOperands>& layout) {
    bool carry = true;
#if FASTDROP_DEVICE_CODE
#pragma unroll
#endif
    for (int d = kMaxLayoutDims - 1; d >= 0; --d) {
      if (d >= layout.ndim || !carry) continue;
      for (int k = 0; k < kOperands; ++k) offset[k] += layout.strides[k][d];
      if (++coord[d] < layout.sizes[d]) {
        carry = false;
      } else {
        for (int k = 0; k < kOperands; ++k) offset[k] -= coord[d] * layout.strides[k][d];
        coord[d] = 0;
      }
    }
  }

  // Elements left in the current innermost row, from the current position.
  FASTDROP_HOST_DEVICE int64_t left_in_row(const StridedLayout<kOperands>& layout) const {
    return layout.ndim == 0 ? 1 : layout.sizes[layout.ndim - 1] - coord[layout.ndim - 1];
  }

  // Steps `count` elements along the innermost row; the caller keeps within it.
  FASTDROP_HOST_DEVICE void advance_in_row(const StridedLayout<kOperands>& layout, int64_t count) {
    if (layout.ndim == 0) return;
    const int d = layout.ndim - 1;
    if (coord[d] + count < layout.sizes[d]) {
      coord[d] += count;
      for (int k = 0; k < kOperands; ++k) offset[k] += count * layout.strides[k][d];
      return;
    }
    // Reaching the row's end: step to its last element, then carry with next().
    coord[d] += count - 1;
    for (int k = 0; k < kOperands; ++k) offset[k] += (count - 1) * layout.strides[k][d];
    next(layout);
  }
};

}  // namespace fastdrop
