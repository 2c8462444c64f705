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
#pragma once

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
