// Feature-wise (channel) dropout and feature alpha dropout on the CPU. One
// decision per (n, c) row (see feature_row_layout), applied to every element
// of the row, walking memory order. No mask is ever stored: decisions are
// drawn per run, a Philox block at a time.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "element_walk.h"
#include "op_helpers.h"
#include "transform.h"

namespace fastdrop::cpu {
namespace {

// Contract bits of rows, a Philox block at a time, remembered between calls.
class RowBits {
 public:
  explicit RowBits(RngState rng) : rng_(rng) {}

  uint32_t operator()(uint64_t row) {
    const uint64_t block = row / kElementsPerBlock;
    if (block != block_) {
      block_ = block;
      bits_ = contract_block(rng_.seed, rng_.offset, block);
    }
    return element_bits(bits_, static_cast<int>(row % kElementsPerBlock));
  }

 private:
  RngState rng_;
  uint64_t block_ = ~uint64_t(0);
  PhiloxBlock bits_{};
};

template <typename scalar_t>
void featurewise(const StridedLayout<3>& layout, const at::Tensor& input, at::Tensor& output, RngState rng, double p,
                 Variant variant) {
  const uint32_t threshold = drop_threshold(p);
  const bool affine = is_affine(variant, p);
  const auto factors = dropout_factors<scalar_t>(variant, p);
  scalar_t* out_data = output.data_ptr<scalar_t>();
  const scalar_t* in_data = input.const_data_ptr<scalar_t>();
  const int64_t out_stride = layout.inner_stride(0), in_stride = layout.inner_stride(1);
  const int64_t row_stride = layout.inner_stride(2);
  parallel_runs(layout, input.numel(), [&](const int64_t* offsets, int64_t count, int64_t) {
    alignas(64) uint16_t bits[kBitsChunk + 2 * kElementsPerBlock];
    scalar_t* out = out_data + offsets[0];
    const scalar_t* in = in_data + offsets[1];
    const uint64_t first_row = static_cast<uint64_t>(offsets[2]);
    if (row_stride == 0) {  // the whole run is one row (e.g. NCHW)
      RowBits row_bits(rng);
      transform_uniform_run(out, out_stride, in, in_stride, count, is_kept(row_bits(first_row), threshold), affine,
                            factors);
      return;
    }
    RowBits row_bits(rng);
    for (int64_t done = 0; done < count; done += kBitsChunk) {
      const int64_t n = std::min(kBitsChunk, count - done);
      const uint64_t row = first_row + static_cast<uint64_t>(done * row_stride);
      const uint16_t* run_bits = bits;
      if (row_stride == 1) {  // consecutive rows (e.g. channels_last): whole blocks at SIMD speed
        const uint64_t first_block = row / kElementsPerBlock;
        const uint64_t last_block = (row + n - 1) / kElementsPerBlock;
        fill_element_bits(rng.seed, rng.offset / 4, first_block, static_cast<int64_t>(last_block - first_block + 1),
                          bits);
        run_bits = bits + (row - first_block * kElementsPerBlock);
      } else {
        for (int64_t i = 0; i < n; ++i) bits[i] = static_cast<uint16_t>(row_bits(row + i * row_stride));
      }
      transform_run(out + done * out_stride, out_stride, in + done * in_stride, in_stride, run_bits, n, threshold,
                    affine, factors);
    }
  });
}

auto featurewise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, RngState rng) {
    with_layout(input, output, feature_row_layout,
                [&](const StridedLayout<3>& layout, at::Tensor& out, const at::Tensor& in) {
                  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(),
                                                  "fastdrop_feature_dropout_cpu",
                                                  [&] { featurewise<scalar_t>(layout, in, out, rng, p, variant); });
                });
  };
}

void check_feature_input(const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 2, "Feature dropout requires at least 2 dimensions in the input");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> feature_dropout(const at::Tensor& input, double p,
                                                   std::optional<at::Generator> generator) {
  check_feature_input(input);
  return forward_op("feature_dropout", input, p, generator, featurewise_kernel(Variant::kFeatureDropout, p));
}

at::Tensor feature_dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_feature_input(input);
  return inplace_op("feature_dropout_", input, p, generator, featurewise_kernel(Variant::kFeatureDropout, p));
}

at::Tensor feature_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_feature_input(grad);
  return backward_op("feature_dropout_backward", grad, rng_state, p, featurewise_kernel(Variant::kFeatureDropout, p));
}

std::tuple<at::Tensor, at::Tensor> feature_alpha_dropout(const at::Tensor& input, double p,
                                                         std::optional<at::Generator> generator) {
  check_feature_input(input);
  return forward_op("feature_alpha_dropout", input, p, generator, featurewise_kernel(Variant::kAlphaDropout, p));
}

at::Tensor feature_alpha_dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_feature_input(input);
  return inplace_op("feature_alpha_dropout_", input, p, generator, featurewise_kernel(Variant::kAlphaDropout, p));
}

at::Tensor feature_alpha_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_feature_input(grad);
  return backward_op("feature_alpha_dropout_backward", grad, rng_state, p,
                     featurewise_kernel(Variant::kAlphaDropoutGradient, p));
}

}  // namespace fastdrop::cpu
