// Argument checks of the operators, with torch's wording and error types;
// the CPU, CUDA and Meta operators all run them, so each refuses the same calls.
#pragma once

#include <ATen/ATen.h>

namespace fastdrop {

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
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.dim() == 1 && rng_state.sym_numel() == 2, "fastdrop.",
              op, ": rng_state must be the 2-element int64 tensor (seed, offset) a fastdrop forward returned, but got ",
              rng_state.scalar_type(), " of shape ", rng_state.sizes());
  TORCH_CHECK(rng_state.device() == like.device(), "fastdrop.", op, ": rng_state is on ", rng_state.device(),
              " but the tensor it applies to is on ", like.device());
}

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

inline void check_feature_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2, "Feature dropout requires at least 2 dimensions in the input");
}

}  // namespace fastdrop
