// The element types of the fused residual forms: a branch of any float dtype
// beside a residual of its dtype or a wider one (an fp32 residual stream beside
// a bf16 branch). Host code: the kernels' dispatch.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace fastdrop {

template <typename T>
struct TypeTag {
  using type = T;
};

// f(TypeTag<residual_t>{}) with the residual's type: the branch's own
// (scalar_t), float for a 16-bit branch, double for any narrower branch (the
// checks, check_residual_dtype, refuse the rest).
template <typename scalar_t, typename F>
void with_residual_type(c10::ScalarType residual, const F& f) {
  if (residual == c10::CppTypeToScalarType<scalar_t>::value) return f(TypeTag<scalar_t>{});
  if constexpr (sizeof(scalar_t) == 2) {
    if (residual == c10::ScalarType::Float) return f(TypeTag<float>{});
  }
  if constexpr (sizeof(scalar_t) < sizeof(double)) {
    if (residual == c10::ScalarType::Double) return f(TypeTag<double>{});
  }
  TORCH_INTERNAL_ASSERT(false, "fastdrop: a residual of ", residual, " beside a branch of ",
                        c10::CppTypeToScalarType<scalar_t>::value, " passed the checks");
}

// f(TypeTag<scalar_t>{}, TypeTag<residual_t>{}) for a branch of dtype `branch` and a residual of `residual`.
template <typename F>
void with_branch_and_residual_types(c10::ScalarType branch, c10::ScalarType residual, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, branch, "fastdrop_residual_forms", [&] {
    with_residual_type<scalar_t>(residual, [&](auto residual_type) { f(TypeTag<scalar_t>{}, residual_type); });
  });
}

}  // namespace fastdrop
