// Element-wise decisions on the CPU: dropout, alpha dropout, and the residual
// epilogues dropout_add (residual + dropout(x)) and bias_dropout_add
// (residual + dropout(x + bias)). Each element's decision comes from its own
// 16 contract bits; everything is applied in one pass.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../dropout_math.h"
#include "../residual_types.h"
#include "../decisions.h"
#include "element_walk.h"
#include "op_helpers.h"
#include "transform.h"

namespace fastdrop::cpu {
namespace {

// The kernel behind dropout and alpha dropout, forward and backward.
auto elementwise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, RngState rng) {
    const DropThreshold threshold = drop_threshold(p);
    const uint32_t compare = compare_bits(threshold);
    const bool affine = is_affine(variant, p);
    with_layout<2>({output, input}, elementwise_layout<2>, [&](const StridedLayout<2>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_dropout_cpu", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
        parallel_runs_with_bits(layout, input.numel(), rng, threshold,
                                [&](const int64_t* at, const int64_t* strides, int64_t count, const uint16_t* bits) {
                                  transform_run(out + at[0], strides[0], in + at[1], strides[1], bits, count, compare,
                                                affine, factors);
                                });
      });
    });
  };
}

// residual + dropout(input [+ bias]); bias, when defined, is broadcast over the last dim. The
// residual and the output: the input's type or a wider one.
auto add_dropout_kernel(const at::Tensor& residual, const at::Tensor& bias, double p) {
  return [&residual, &bias, p](const at::Tensor& input, at::Tensor& output, RngState rng) {
    const DropThreshold threshold = drop_threshold(p);
    const uint32_t compare = compare_bits(threshold);
    auto run_with = [&](auto tensors) {
      constexpr size_t kTensors = std::tuple_size_v<decltype(tensors)>;
      with_layout<kTensors>(
          tensors, elementwise_layout<kTensors>, [&](const StridedLayout<kTensors>& layout, const auto& t) {
            with_branch_and_residual_types(
                input.scalar_type(), residual.scalar_type(), [&](auto branch_type, auto residual_type) {
                  using scalar_t = typename decltype(branch_type)::type;
                  using residual_t = typename decltype(residual_type)::type;
                  const auto factors = dropout_factors<scalar_t>(Variant::kScaleOpMath, p);
                  residual_t* out = t[0].template data_ptr<residual_t>();
                  const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
                  const residual_t* res = t[2].template const_data_ptr<residual_t>();
                  const scalar_t* b = kTensors == 4 ? t[kTensors - 1].template const_data_ptr<scalar_t>() : nullptr;
                  parallel_runs_with_bits(
                      layout, input.numel(), rng, threshold,
                      [&](const int64_t* at, const int64_t* strides, int64_t count, const uint16_t* bits) {
                        add_dropout_run(out + at[0], strides[0], in + at[1], strides[1], res + at[2], strides[2],
                                        b == nullptr ? nullptr : b + at[kTensors - 1], strides[kTensors - 1], bits,
                                        count, compare, factors);
                      });
                });
          });
    };
    if (bias.defined()) {
      run_with(std::array<at::Tensor, 4>{output, input, residual, bias.expand_as(input)});
    } else {
      run_with(std::array<at::Tensor, 3>{output, input, residual});
    }
  };
}

}  // namespace

#include "../entry_points/elementwise.inc"

}  // namespace fastdrop::cpu

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) { fastdrop::cpu::register_elementwise_kernels(m); }
