// Element-wise dropout and alpha dropout on the CPU: each element's keep
// decision comes from its own 16 contract bits, and mask, scale (and alpha's
// shift) are applied in one pass, forward and backward alike.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "element_walk.h"
#include "op_helpers.h"
#include "transform.h"

namespace fastdrop::cpu {
namespace {

// The kernel behind every op in this file.
auto elementwise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, RngState rng) {
    const uint32_t threshold = drop_threshold(p);
    const bool affine = is_affine(variant, p);
    with_layout(input, output, elementwise_layout, [&](const StridedLayout<2>& layout, at::Tensor& out, const at::Tensor& in) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastdrop_dropout_cpu", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        scalar_t* out_data = out.data_ptr<scalar_t>();
        const scalar_t* in_data = in.const_data_ptr<scalar_t>();
        const int64_t out_stride = layout.inner_stride(0), in_stride = layout.inner_stride(1);
        parallel_runs_with_bits(layout, in.numel(), rng, [&](const int64_t* offsets, int64_t count, const uint16_t* bits) {
          transform_run(out_data + offsets[0], out_stride, in_data + offsets[1], in_stride, bits, count, threshold,
                        affine, factors);
        });
      });
    });
  };
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator) {
  return forward_op("dropout", input, p, generator, elementwise_kernel(Variant::kDropout, p));
}

at::Tensor dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  return inplace_op("dropout_", input, p, generator, elementwise_kernel(Variant::kDropout, p));
}

at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  return backward_op("dropout_backward", grad, rng_state, p, elementwise_kernel(Variant::kDropout, p));
}

std::tuple<at::Tensor, at::Tensor> alpha_dropout(const at::Tensor& input, double p,
                                                 std::optional<at::Generator> generator) {
  return forward_op("alpha_dropout", input, p, generator, elementwise_kernel(Variant::kAlphaDropout, p));
}

at::Tensor alpha_dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  return inplace_op("alpha_dropout_", input, p, generator, elementwise_kernel(Variant::kAlphaDropout, p));
}

at::Tensor alpha_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  return backward_op("alpha_dropout_backward", grad, rng_state, p,
                     elementwise_kernel(Variant::kAlphaDropoutGradient, p));
}

}  // namespace fastdrop::cpu
