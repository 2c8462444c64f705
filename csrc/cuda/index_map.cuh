// Where a logical (or memory-order) index sits in each operand of any layout,
// found by a CUDA thread with one 32-bit multiply-shift per dim instead of a
// 64-bit division: the seek that strided and grouped kernels make once per pack.
#pragma once

#include <climits>
#include <cstdint>

#include "../layout.h"
#include "../philox.h"
#include "runtime.cuh"

namespace fastdrop::cuda {

template <typename Index>
FASTDROP_HOST_DEVICE Index mul_high(Index a, Index b) {
  if constexpr (sizeof(Index) == 4) {
    uint32_t high, low;
    mul_hi_lo(a, b, high, low);
    return high;
  } else {
#if FASTDROP_DEVICE_CODE
    return __umul64hi(a, b);
#else
    return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
  }
}

// Division by a fixed divisor d as a multiply and a shift (Granlund and
// Montgomery, "Division by invariant integers using multiplication"): with
// B the bits of Index, s = ceil(log2 d) and m = floor(2^B (2^s - d) / d) + 1,
// n / d is (mulhi(n, m) + n) >> s for every n below 2^(B - 1).
template <typename Index>
struct FastDivisor {
  Index divisor = 1;
  Index multiplier = 1;
  uint32_t shift = 0;

  FastDivisor() = default;
  explicit FastDivisor(uint64_t d) : divisor(static_cast<Index>(d)) {
    if (d == 0) return;  // an empty dim: nothing is ever divided by it
    constexpr uint32_t kBits = 8 * sizeof(Index);
    while ((uint64_t(1) << shift) < d) ++shift;
    const unsigned __int128 numerator = (static_cast<unsigned __int128>(1) << kBits) * ((uint64_t(1) << shift) - d);
    multiplier = static_cast<Index>(numerator / d + 1);
  }

  FASTDROP_HOST_DEVICE Index quotient(Index n) const { return (mul_high(n, multiplier) + n) >> shift; }
};

// A layout for the strided kernels: up to 4 dims, innermost first (unused
// outer dims have size 1), sizes as fast divisors and each operand's strides.
// Everything is 32-bit: a layout takes a StridedMap only where every index
// and every operand offset fits (fits_strided_map); others run on contiguous
// copies or, for grouped variants, in pieces.
template <int kOperands>
struct StridedMap {
  static constexpr int kDims = 4;
  FastDivisor<uint32_t> sizes[kDims];
  int32_t strides[kOperands][kDims];

  StridedMap() = default;
  // From a host layout (outermost dim first) that fits.
  explicit StridedMap(const StridedLayout<kOperands>& layout) {
    for (int d = 0; d < kDims; ++d) {
      const bool used = d < layout.ndim;
      sizes[d] = FastDivisor<uint32_t>(used ? static_cast<uint64_t>(layout.sizes[layout.ndim - 1 - d]) : 1);
      for (int k = 0; k < kOperands; ++k) {
        strides[k][d] = used ? static_cast<int32_t>(layout.strides[k][layout.ndim - 1 - d]) : 0;
      }
    }
  }

  FASTDROP_HOST_DEVICE int32_t inner_size() const { return static_cast<int32_t>(sizes[0].divisor); }
  FASTDROP_HOST_DEVICE int32_t inner_stride(int operand) const { return strides[operand][0]; }

  // offsets[k]: where operand k keeps `index`; returns its innermost coordinate.
  FASTDROP_HOST_DEVICE int32_t locate(int32_t index, int32_t (&offsets)[kOperands]) const {
    for (int k = 0; k < kOperands; ++k) offsets[k] = 0;
    uint32_t rest = static_cast<uint32_t>(index);
    int32_t inner = 0;
#if FASTDROP_DEVICE_CODE
#pragma unroll
#endif
    for (int d = 0; d < kDims; ++d) {
      // The outermost dim takes what is left: no division.
      const uint32_t quotient = d + 1 < kDims ? sizes[d].quotient(rest) : 0;
      const int32_t coordinate = static_cast<int32_t>(rest - quotient * sizes[d].divisor);
      if (d == 0) inner = coordinate;
      for (int k = 0; k < kOperands; ++k) offsets[k] += coordinate * strides[k][d];
      rest = quotient;
    }
    return inner;
  }
};

// Whether the strided kernels take a layout: 32-bit indices and offsets
// (below max_kernel_index(), INT32_MAX; the emulated device can lower it to
// send small tensors down the paths that big ones take). The first
// data_operands operands are read a pack at a time along the inner dim, so
// their offsets need room for 8 steps more; a grouped kernel's last operand
// (the decision index) is located per element or per pack, and needs none.
template <int kOperands>
bool fits_strided_map(const StridedLayout<kOperands>& layout, int64_t numel, int data_operands = kOperands) {
  const int64_t limit = max_kernel_index();
  if (layout.ndim > StridedMap<kOperands>::kDims || numel > limit) return false;
  for (int k = 0; k < kOperands; ++k) {
    int64_t reach = 0;  // the largest offset of operand k (torch's strides are never negative)
    for (int d = 0; d < layout.ndim; ++d) reach += (layout.sizes[d] - 1) * layout.strides[k][d];
    if (reach > limit - (k < data_operands ? 8 * layout.inner_stride(k) : 0)) return false;
  }
  return true;
}

}  // namespace fastdrop::cuda
