// The operators' entry points, written once for both devices. Each device's
// kernel files include this inside their own namespace (fastdrop::cpu or
// fastdrop::cuda), after defining that device's forward_op, inplace_op and
// backward_op (op_helpers) and the kernel factories named below; so the CPU
// and CUDA operators check and behave identically by construction.
//
//   FASTDROP_ELEMENTWISE_ENTRY_POINTS: dropout, alpha_dropout, dropout_add,
//     bias_dropout_add, from elementwise_kernel and add_dropout_kernel.
//   FASTDROP_GROUPED_ENTRY_POINTS: feature_dropout, feature_alpha_dropout,
//     drop_path, drop_path_add, from grouped_kernel and drop_path_add_kernel.
//   FASTDROP_INDEXED_ENTRY_POINTS: indexed_dropout, from indexed_kernel.
#pragma once

#include <c10/util/safe_numerics.h>

#include "dropout_math.h"
#include "fastdrop.h"

namespace fastdrop {

inline void no_check(const at::Tensor&) {}

constexpr int64_t kChannelGroups = 2;  // feature dropout: one decision per (n, c)

inline Variant drop_path_variant(bool scale_by_keep) {
  return scale_by_keep ? Variant::kFeatureDropout : Variant::kUnscaled;
}

// Group dims of drop path: 1 (each sample) or 0 (the whole batch at once).
inline int64_t drop_path_groups(const at::Tensor& input, bool per_sample) {
  TORCH_CHECK(!per_sample || input.dim() >= 1,
              "fastdrop.drop_path: per-sample drop path needs a batch dim, but got a 0-D tensor");
  return per_sample ? 1 : 0;
}

// indexed_dropout's variants, by the operator whose scaling they apply.
inline Variant indexed_variant(c10::string_view name, bool backward) {
  if (name == "dropout") return Variant::kDropout;
  if (name == "feature_dropout") return Variant::kFeatureDropout;
  if (name == "alpha_dropout") return backward ? Variant::kAlphaDropoutGradient : Variant::kAlphaDropout;
  if (name == "unscaled") return Variant::kUnscaled;
  TORCH_CHECK_VALUE(false,
                    "fastdrop.indexed_dropout: variant must be 'dropout', 'feature_dropout', 'alpha_dropout' or "
                    "'unscaled', but got '",
                    name, "'");
}

// The decision index of indexed_dropout: one non-negative stride per dim, a
// non-negative base, every index below 2^59 (the contract's range).
inline DecisionIndex checked_decision_index(const at::Tensor& input, at::IntArrayRef strides, int64_t base,
                                            const char* op) {
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == input.dim(), "fastdrop.", op,
              ": index_strides must have one stride per dim of the input (", input.dim(), "), but got ",
              strides.size());
  constexpr int64_t kIndexLimit = int64_t(1) << 59;
  TORCH_CHECK(base >= 0 && base < kIndexLimit, "fastdrop.", op, ": index_base must be in [0, 2^59), but got ", base);
  int64_t last = base;
  bool overflows = false;
  for (size_t d = 0; d < strides.size(); ++d) {
    TORCH_CHECK(strides[d] >= 0, "fastdrop.", op, ": index_strides must be non-negative, but got ", strides);
    int64_t reach = 0;
    overflows |= c10::mul_overflows(input.size(d) - 1, strides[d], &reach) || c10::add_overflows(last, reach, &last);
  }
  TORCH_CHECK(input.numel() == 0 || (!overflows && last < kIndexLimit), "fastdrop.", op,
              ": the largest decision index must be below 2^59, but index_base ", base, " and index_strides ", strides,
              " reach past it for shape ", input.sizes());
  return {at::DimVector(strides), base};
}

}  // namespace fastdrop

// A variant's three operators: forward, in place, backward. KERNEL(p) builds
// the kernel for the forward, BACKWARD_KERNEL(p) the one for the backward.
#define FASTDROP_VARIANT_ENTRY_POINTS(name, check, KERNEL, BACKWARD_KERNEL)                                    \
  std::tuple<at::Tensor, at::Tensor> name(const at::Tensor& input, double p,                                 \
                                          std::optional<at::Generator> generator) {                          \
    check(input);                                                                                            \
    return forward_op(#name, input, p, generator, KERNEL(p));                                                \
  }                                                                                                          \
  at::Tensor name##_(at::Tensor& input, double p, std::optional<at::Generator> generator) {                  \
    check(input);                                                                                            \
    return inplace_op(#name "_", input, p, generator, KERNEL(p));                                            \
  }                                                                                                          \
  at::Tensor name##_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {                \
    check(grad);                                                                                             \
    return backward_op(#name "_backward", grad, rng_state, p, BACKWARD_KERNEL(p));                           \
  }

#define FASTDROP_ELEMENTWISE(variant) [](double p) { return elementwise_kernel(Variant::variant, p); }
#define FASTDROP_CHANNELWISE(variant) \
  [](double p) { return grouped_kernel(Variant::variant, p, kChannelGroups); }

#define FASTDROP_ELEMENTWISE_ENTRY_POINTS                                                                      \
  FASTDROP_VARIANT_ENTRY_POINTS(dropout, no_check, FASTDROP_ELEMENTWISE(kDropout), FASTDROP_ELEMENTWISE(kDropout)) \
  FASTDROP_VARIANT_ENTRY_POINTS(alpha_dropout, no_check, FASTDROP_ELEMENTWISE(kAlphaDropout),                  \
                                FASTDROP_ELEMENTWISE(kAlphaDropoutGradient))                                   \
                                                                                                             \
  std::tuple<at::Tensor, at::Tensor> dropout_add(const at::Tensor& residual, const at::Tensor& input, double p, \
                                                 std::optional<at::Generator> generator) {                    \
    check_same_tensors(residual, "residual", input, "input", "dropout_add");                                  \
    return forward_op("dropout_add", input, p, generator, add_dropout_kernel(residual, at::Tensor(), p),      \
                      residual);                                                                             \
  }                                                                                                          \
                                                                                                             \
  std::tuple<at::Tensor, at::Tensor> bias_dropout_add(const at::Tensor& input, const at::Tensor& bias,        \
                                                      const at::Tensor& residual, double p,                   \
                                                      std::optional<at::Generator> generator) {               \
    check_same_tensors(residual, "residual", input, "input", "bias_dropout_add");                             \
    check_bias(input, bias, "bias_dropout_add");                                                              \
    return forward_op("bias_dropout_add", input, p, generator, add_dropout_kernel(residual, bias, p), residual); \
  }

#define FASTDROP_GROUPED_ENTRY_POINTS                                                                          \
  FASTDROP_VARIANT_ENTRY_POINTS(feature_dropout, check_feature_input, FASTDROP_CHANNELWISE(kFeatureDropout),   \
                                FASTDROP_CHANNELWISE(kFeatureDropout))                                         \
  FASTDROP_VARIANT_ENTRY_POINTS(feature_alpha_dropout, check_feature_input,                                    \
                                FASTDROP_CHANNELWISE(kAlphaDropout), FASTDROP_CHANNELWISE(kAlphaDropoutGradient)) \
                                                                                                             \
  std::tuple<at::Tensor, at::Tensor> drop_path(const at::Tensor& input, double p, bool scale_by_keep,        \
                                               bool per_sample, std::optional<at::Generator> generator) {     \
    const int64_t groups = drop_path_groups(input, per_sample);                                              \
    return forward_op("drop_path", input, p, generator, grouped_kernel(drop_path_variant(scale_by_keep), p, groups)); \
  }                                                                                                          \
                                                                                                             \
  at::Tensor drop_path_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,               \
                                bool scale_by_keep, bool per_sample) {                                        \
    const int64_t groups = drop_path_groups(grad, per_sample);                                               \
    return backward_op("drop_path_backward", grad, rng_state, p,                                              \
                       grouped_kernel(drop_path_variant(scale_by_keep), p, groups));                          \
  }                                                                                                          \
                                                                                                             \
  std::tuple<at::Tensor, at::Tensor> drop_path_add(const at::Tensor& residual, const at::Tensor& branch,     \
                                                   double p, bool scale_by_keep,                              \
                                                   std::optional<at::Generator> generator) {                  \
    check_same_tensors(residual, "residual", branch, "branch", "drop_path_add");                              \
    drop_path_groups(branch, true);                                                                           \
    return forward_op("drop_path_add", branch, p, generator,                                                 \
                      drop_path_add_kernel(residual, drop_path_variant(scale_by_keep), p), residual);        \
  }

// indexed_dropout: element (i_0, ...) takes the decision of index
// index_base + sum_k i_k * index_strides[k] (vmap's batching rules, sharded tensors).
#define FASTDROP_INDEXED_ENTRY_POINTS                                                                         \
  std::tuple<at::Tensor, at::Tensor> indexed_dropout(const at::Tensor& input, double p, c10::string_view variant, \
                                                     at::IntArrayRef index_strides, int64_t index_base,      \
                                                     std::optional<at::Generator> generator) {               \
    const Variant kind = indexed_variant(variant, false);                                                    \
    const DecisionIndex index = checked_decision_index(input, index_strides, index_base, "indexed_dropout"); \
    return forward_op("indexed_dropout", input, p, generator, indexed_kernel(kind, p, index));               \
  }                                                                                                          \
                                                                                                             \
  at::Tensor indexed_dropout_(at::Tensor& input, double p, c10::string_view variant, at::IntArrayRef index_strides, \
                              int64_t index_base, std::optional<at::Generator> generator) {                  \
    const Variant kind = indexed_variant(variant, false);                                                    \
    const DecisionIndex index = checked_decision_index(input, index_strides, index_base, "indexed_dropout_"); \
    return inplace_op("indexed_dropout_", input, p, generator, indexed_kernel(kind, p, index));              \
  }                                                                                                          \
                                                                                                             \
  at::Tensor indexed_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,         \
                                      c10::string_view variant, at::IntArrayRef index_strides,               \
                                      int64_t index_base) {                                                  \
    const Variant kind = indexed_variant(variant, true);                                                     \
    const DecisionIndex index = checked_decision_index(grad, index_strides, index_base, "indexed_dropout_backward"); \
    return backward_op("indexed_dropout_backward", grad, rng_state, p, indexed_kernel(kind, p, index));      \
  }
