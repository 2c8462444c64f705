// Per-element formulas shared by the CPU and CUDA kernels, so that both round
// the same way, and the host-side constants of every dropout variant, each
// computed the way torch computes it, so that results match torch's bit for bit.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>

#include "philox.h"

namespace fastdrop {

// Products and sums rounded on their own: never contracted into a fused
// multiply-add, which would round differently from torch's separate ops.
template <typename T>
FASTDROP_HOST_DEVICE T mul_rounded(T a, T b) {
#if FASTDROP_DEVICE_CODE
  if constexpr (sizeof(T) == sizeof(double)) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  return a * b;  // host code is built with -ffp-contract=off
#endif
}

template <typename T>
FASTDROP_HOST_DEVICE T add_rounded(T a, T b) {
#if FASTDROP_DEVICE_CODE
  if constexpr (sizeof(T) == sizeof(double)) {
    return __dadd_rn(a, b);
  } else {
    return __fadd_rn(a, b);
  }
#else
  return a + b;
#endif
}

// What a variant does to a kept and to a dropped element:
//   kept:    x * keep_mul (+ keep_add)
//   dropped: x * 0       (+ drop_add)
// The additive part exists for alpha dropout only (kAffine). Like torch's
// x * noise (+ b), the product is rounded to the element type before the add,
// and a dropped inf or NaN gives NaN.
template <typename scalar_t>
struct DropoutFactors {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t keep_mul;
  opmath_t keep_add;
  opmath_t drop_add;
};

template <bool kAffine, typename scalar_t>
FASTDROP_HOST_DEVICE scalar_t apply_dropout(scalar_t x, bool kept, const DropoutFactors<scalar_t>& factors) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t product =
      static_cast<scalar_t>(mul_rounded(static_cast<opmath_t>(x), kept ? factors.keep_mul : opmath_t(0)));
  if constexpr (!kAffine) {
    return product;
  } else {
    return static_cast<scalar_t>(
        add_rounded(static_cast<opmath_t>(product), kept ? factors.keep_add : factors.drop_add));
  }
}

// a + b of two elements, in op-math precision, rounded once (torch's add).
template <typename scalar_t>
FASTDROP_HOST_DEVICE scalar_t add_elements(scalar_t a, scalar_t b) {
  using opmath_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(add_rounded(static_cast<opmath_t>(a), static_cast<opmath_t>(b)));
}

// residual + x, x of the branch's type and the residual of the same or a wider
// float type (Megatron's and flash-attention's fp32 residual stream beside a
// bf16 branch): x converted exactly to the residual's op-math type and the sum
// rounded once to the residual's type, as torch's residual + x does under type
// promotion. With one type for both, add_elements.
template <typename residual_t, typename scalar_t>
FASTDROP_HOST_DEVICE residual_t add_to_residual(residual_t residual, scalar_t x) {
  using opmath_t = at::opmath_type<residual_t>;
  return static_cast<residual_t>(
      add_rounded(static_cast<opmath_t>(residual), static_cast<opmath_t>(static_cast<at::opmath_type<scalar_t>>(x))));
}

// The variants, named by what they compute (their constants: dropout_factors).
// Which operator uses which: dropout kScaleOpMath; feature dropout and drop
// path kScaleRounded (drop path without scale_by_keep kUnscaled); alpha and
// feature alpha dropout kAlphaAffine forward and kAlphaScale backward.
enum class Variant {
  kScaleOpMath,   // kept * 1 / (1 - p), the scale in op-math precision (torch's fused kernel)
  kScaleRounded,  // kept * (1 / (1 - p) rounded to the element type) (torch's noise tensor)
  kAlphaAffine,   // the SELU-preserving affine of torch's alpha dropouts: a * x + b
  kAlphaScale,    // alpha dropout's linear part: grad * (kept ? a : 0), a rounded as in the forward
  kUnscaled,      // kept * 1 (drop path with scale_by_keep=False)
};

constexpr double kSeluAlpha = 1.7580993408473766;  // torch's alpha (SELU's -scale * alpha)

// Whether the variant adds a constant; p == 1 degenerates to x * 0 in torch.
inline bool is_affine(Variant variant, double p) { return variant == Variant::kAlphaAffine && p < 1.0; }

template <typename scalar_t>
DropoutFactors<scalar_t> dropout_factors(Variant variant, double p) {
  using opmath_t = at::opmath_type<scalar_t>;
  // The op-math value of a scalar_t, as torch's ops read their operands.
  auto rounded = [](opmath_t value) { return static_cast<opmath_t>(static_cast<scalar_t>(value)); };
  DropoutFactors<scalar_t> factors{opmath_t(0), opmath_t(0), opmath_t(0)};
  if (p >= 1.0) return factors;  // everything dropped; x * 0 as torch gives
  switch (variant) {
    case Variant::kScaleOpMath:
      factors.keep_mul = static_cast<opmath_t>(1.0 / (1.0 - p));
      break;
    case Variant::kScaleRounded:
      // torch (and timm, torchvision): noise = bernoulli(1 - p).div_(1 - p) in the input's dtype.
      factors.keep_mul = rounded(opmath_t(1) / static_cast<opmath_t>(1.0 - p));
      break;
    case Variant::kUnscaled:
      factors.keep_mul = opmath_t(1);
      break;
    case Variant::kAlphaAffine:
    case Variant::kAlphaScale: {
      // torch: a = 1 / sqrt((alpha^2 p + 1)(1 - p)); noise = bernoulli(1 - p) * a;
      // b = (bernoulli - 1) * (alpha a) + alpha a p, all in the input's dtype.
      const double a = 1.0 / std::sqrt((kSeluAlpha * kSeluAlpha * p + 1.0) * (1.0 - p));
      const opmath_t alpha_a = static_cast<opmath_t>(kSeluAlpha * a);
      const opmath_t alpha_a_p = static_cast<opmath_t>(kSeluAlpha * a * p);
      factors.keep_mul = rounded(static_cast<opmath_t>(a));
      if (variant == Variant::kAlphaAffine) {
        factors.keep_add = rounded(alpha_a_p);
        factors.drop_add = rounded(rounded(-alpha_a) + alpha_a_p);
      }
      break;
    }
  }
  return factors;
}

}  // namespace fastdrop
