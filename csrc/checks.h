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
inline void check_floating_dtype(at::ScalarType dtype, const char* op) {
  if (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16) return;
  TORCH_CHECK(!at::isIntegralType(dtype, /*includeBool=*/true), "fastdrop.", op,
              " expects a floating-point input (Half, BFloat16, Float or Double), but got ", dtype);
  TORCH_CHECK_NOT_IMPLEMENTED(false, "fastdrop.", op, " is not implemented for ", dtype,
                              " inputs (it takes Half, BFloat16, Float or Double)");
}

inline void check_floating_input(const at::Tensor& input, const char* op) {
  check_floating_dtype(input.scalar_type(), op);
}

inline void check_rng_state(const at::Tensor& rng_state, const at::Tensor& like, const char* op) {
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.dim() == 1 && rng_state.sym_numel() == 2, "fastdrop.",
              op, ": rng_state must be the 2-element int64 tensor (seed, offset) a fastdrop forward returned, but got ",
              rng_state.scalar_type(), " of shape ", rng_state.sizes());
  TORCH_CHECK(rng_state.device() == like.device(), "fastdrop.", op, ": rng_state is on ", rng_state.device(),
              " but the tensor it applies to is on ", like.device());
}

// A residual of the branch's dtype or a wider float one (an fp32 residual beside a bf16 branch).
inline void check_residual_dtype(at::ScalarType wide, at::ScalarType narrow, const char* branch_name, const char* op) {
  const bool wider = (wide == at::kFloat || wide == at::kDouble) && at::isFloatingType(narrow) &&
                     at::promoteTypes(wide, narrow) == wide;
  TORCH_CHECK(wide == narrow || wider, "fastdrop.", op, ": residual must have the ", branch_name,
              "'s dtype or a wider float dtype, but got ", wide, " and ", branch_name, " ", narrow);
}

// The fused residual forms' operands: the branch's shape and device, and its
// dtype or a wider float one (an fp32 residual beside a bf16 branch), whose
// dtype the output takes.
inline void check_residual(const at::Tensor& residual, const at::Tensor& branch, const char* branch_name,
                           const char* op) {
  TORCH_CHECK(residual.sym_sizes() == branch.sym_sizes(), "fastdrop.", op, ": residual and ", branch_name,
              " must have the same shape, but got ", residual.sym_sizes(), " and ", branch.sym_sizes());
  TORCH_CHECK(residual.device() == branch.device(), "fastdrop.", op, ": residual and ", branch_name,
              " must be on the same device, but got ", residual.device(), " and ", branch.device());
  check_residual_dtype(residual.scalar_type(), branch.scalar_type(), branch_name, op);
}

// drop_path_add_subset's operands: branch_kept holds the branches of the samples
// `indices` (int64, one per row of branch_kept) names, each of a residual
// sample's shape, on its device; the dtypes as check_residual's.
inline void check_subset(const at::Tensor& residual, const at::Tensor& branch_kept, const at::Tensor& indices,
                         const char* op) {
  TORCH_CHECK(residual.dim() >= 1, "fastdrop.", op, ": residual must have a batch dim, but got a 0-D tensor");
  TORCH_CHECK(branch_kept.dim() == residual.dim() && branch_kept.sym_sizes().slice(1) == residual.sym_sizes().slice(1),
              "fastdrop.", op, ": branch_kept must be (kept samples, *residual.shape[1:]) = (K, ",
              residual.sym_sizes().slice(1), "), but got ", branch_kept.sym_sizes());
  TORCH_CHECK(
      indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.sym_size(0) == branch_kept.sym_size(0),
      "fastdrop.", op, ": indices must be a 1-D int64 tensor of one sample index per row of branch_kept (",
      branch_kept.sym_size(0), "), but got ", indices.scalar_type(), " of shape ", indices.sym_sizes());
  TORCH_CHECK(branch_kept.device() == residual.device() && indices.device() == residual.device(), "fastdrop.", op,
              ": residual, branch_kept and indices must be on the same device, but got ", residual.device(), ", ",
              branch_kept.device(), " and ", indices.device());
  TORCH_CHECK(branch_kept.sym_size(0) <= residual.sym_size(0), "fastdrop.", op, ": ", branch_kept.sym_size(0),
              " kept samples of a batch of ", residual.sym_size(0));
  check_residual_dtype(residual.scalar_type(), branch_kept.scalar_type(), "branch_kept", op);
}

// drop_path_add_subset_backward's operands: a gradient with a batch dim, the
// kept samples' indices on its device, and the branch's dtype, of which the
// gradient's is the same or a wider one.
inline void check_subset_gradient(const at::Tensor& grad, const at::Tensor& indices, at::ScalarType dtype,
                                  const char* op) {
  TORCH_CHECK(grad.dim() >= 1, "fastdrop.", op, ": grad must have a batch dim, but got a 0-D tensor");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1, "fastdrop.", op,
              ": indices must be a 1-D int64 tensor, but got ", indices.scalar_type(), " of shape ",
              indices.sym_sizes());
  TORCH_CHECK(indices.device() == grad.device(), "fastdrop.", op,
              ": grad and indices must be on the same device, but got ", grad.device(), " and ", indices.device());
  check_floating_dtype(dtype, op);
  check_residual_dtype(grad.scalar_type(), dtype, "branch_kept", op);
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
