// Per-element formulas shared by the CPU and CUDA kernels, so both round the
// same way: arithmetic in the op-math type (float for half types), one
// rounding back to the element type, exactly as torch's fused kernels do.
#pragma once

#include <ATen/OpMathType.h>

#include "philox.h"

namespace fastdrop {

// x * (kept ? scale : 0): dropped inf and NaN give NaN, as torch's x * mask * scale does.
template <typename scalar_t>
FASTDROP_HOST_DEVICE scalar_t masked_scale(scalar_t x, bool kept, at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(static_cast<opmath_t>(x) * (kept ? scale : opmath_t(0)));
}

// The factor kept elements are multiplied by, computed as torch does: 1 / (1 - p) in double.
template <typename scalar_t>
inline at::opmath_type<scalar_t> keep_scale(double p) {
  return static_cast<at::opmath_type<scalar_t>>(1.0 / (1.0 - p));
}

}  // namespace fastdrop
