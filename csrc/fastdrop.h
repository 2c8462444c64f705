// The operators' C++ entry points of each device (cpu, cuda, and meta: shape
// only, for tracing), registered in ops.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "layout_builder.h"
#include "rng_state.h"

namespace fastdrop {

// Entry points, registered in ops.cpp. Each variant has a forward that draws
// from a generator and returns (output, rng_state), an in-place forward that
// returns rng_state, and a backward that regenerates the mask from rng_state.
#define FASTDROP_VARIANTS(X) \
  X(dropout)                 \
  X(alpha_dropout)           \
  X(feature_dropout)         \
  X(feature_alpha_dropout)

#define FASTDROP_DECLARE_VARIANT(name)                                                                        \
  std::tuple<at::Tensor, at::Tensor> name(const at::Tensor& input, double p,                                  \
                                          std::optional<at::Generator> generator);                            \
  at::Tensor name##_(at::Tensor& input, double p, std::optional<at::Generator> generator);                     \
  at::Tensor name##_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);

namespace cpu {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace cpu

namespace cuda {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace cuda

namespace meta {
FASTDROP_VARIANTS(FASTDROP_DECLARE_VARIANT)
}  // namespace meta

#undef FASTDROP_DECLARE_VARIANT

// Per-sample drop path (stochastic depth) and the fused residual forms.
#define FASTDROP_DECLARE_RESIDUAL_OPS                                                                           \
  std::tuple<at::Tensor, at::Tensor> drop_path(const at::Tensor& input, double p, bool scale_by_keep,          \
                                               bool per_sample, std::optional<at::Generator> generator);      \
  at::Tensor drop_path_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,                 \
                                bool scale_by_keep, bool per_sample);                                           \
  std::tuple<at::Tensor, at::Tensor> drop_path_add(const at::Tensor& residual, const at::Tensor& branch,       \
                                                   double p, bool scale_by_keep,                               \
                                                   std::optional<at::Generator> generator);                    \
  std::tuple<at::Tensor, at::Tensor> dropout_add(const at::Tensor& residual, const at::Tensor& input, double p, \
                                                 std::optional<at::Generator> generator);                      \
  std::tuple<at::Tensor, at::Tensor> bias_dropout_add(const at::Tensor& input, const at::Tensor& bias,         \
                                                      const at::Tensor& residual, double p,                    \
                                                      std::optional<at::Generator> generator);

namespace cpu {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace cpu

namespace cuda {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace cuda

namespace meta {
FASTDROP_DECLARE_RESIDUAL_OPS
}  // namespace meta

#undef FASTDROP_DECLARE_RESIDUAL_OPS

// Decisions at any strided index (see DecisionIndex in layout_builder.h).
#define FASTDROP_DECLARE_INDEXED_OPS(Ints, Int)                                                                  \
  std::tuple<at::Tensor, at::Tensor> indexed_dropout(const at::Tensor& input, double p, c10::string_view variant, \
                                                     Ints index_strides, Int index_base,                         \
                                                     std::optional<at::Generator> generator);                    \
  at::Tensor indexed_dropout_(at::Tensor& input, double p, c10::string_view variant, Ints index_strides,         \
                              Int index_base, std::optional<at::Generator> generator);                           \
  at::Tensor indexed_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,            \
                                      c10::string_view variant, Ints index_strides, Int index_base);

namespace cpu {
FASTDROP_DECLARE_INDEXED_OPS(at::IntArrayRef, int64_t)
}  // namespace cpu

namespace cuda {
FASTDROP_DECLARE_INDEXED_OPS(at::IntArrayRef, int64_t)
}  // namespace cuda

// Symbolic sizes for tracing with dynamic shapes.
namespace meta {
FASTDROP_DECLARE_INDEXED_OPS(c10::SymIntArrayRef, c10::SymInt)
}  // namespace meta

#undef FASTDROP_DECLARE_INDEXED_OPS

}  // namespace fastdrop
