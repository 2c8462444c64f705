// Feature-wise (channel) dropout and feature alpha dropout on CUDA. One thread
// per 8 consecutive elements in the output's memory order (so channels_last is
// as coalesced as NCHW), each element's (n, c) row found through the layout's
// row operand; a thread computes one Philox block per 8 distinct rows it meets.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "op_helpers.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

// The contract bits of rows, remembering the last Philox block.
struct RowBits {
  RngState rng;
  uint64_t block = ~uint64_t(0);
  PhiloxBlock bits;

  __device__ uint32_t operator()(uint64_t row) {
    if (row / kElementsPerBlock != block) {
      block = row / kElementsPerBlock;
      bits = contract_block(rng.seed, rng.offset, block);
    }
    return element_bits(bits, static_cast<int>(row % kElementsPerBlock));
  }
};

// kDense: input and output are dense with equal strides, so the i-th element
// in memory order sits at offset i of both, and 16-byte loads apply.
template <typename scalar_t, bool kAffine, bool kDense, typename Rng>
__global__ void __launch_bounds__(kThreads)
    featurewise_kernel(const scalar_t* in, scalar_t* out, StridedLayout<3> layout, int64_t numel, Rng rng_source,
                       uint32_t threshold, DropoutFactors<scalar_t> factors) {
  RowBits row_bits{rng_source.load()};
  const int64_t groups = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<3> cursor;
  for (int64_t group = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; group < groups;
       group += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t first = group * kElementsPerBlock;
    cursor.seek(layout, first);
    if (kDense && first + kElementsPerBlock <= numel) {
      Pack8<scalar_t> pack = *reinterpret_cast<const Pack8<scalar_t>*>(in + first);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        const bool kept = is_kept(row_bits(static_cast<uint64_t>(cursor.offset[2])), threshold);
        pack.value[lane] = apply_dropout<kAffine>(pack.value[lane], kept, factors);
        cursor.next(layout);
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = pack;
    } else {
      // Not unrolled: eight copies of the strided walk cost more registers than they save.
#pragma unroll 1
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          const bool kept = is_kept(row_bits(static_cast<uint64_t>(cursor.offset[2])), threshold);
          out[cursor.offset[0]] = apply_dropout<kAffine>(in[cursor.offset[1]], kept, factors);
          cursor.next(layout);
        }
      }
    }
  }
}

auto featurewise_kernel_launcher(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, auto rng) {
    const uint32_t threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int grid = grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    with_layout(input, output, feature_row_layout, [&](const StridedLayout<3>& layout, at::Tensor& out_tensor,
                                                       const at::Tensor& in_tensor) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_tensor.scalar_type(),
                                      "fastdrop_feature_dropout_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        const scalar_t* in = in_tensor.const_data_ptr<scalar_t>();
        scalar_t* out = out_tensor.data_ptr<scalar_t>();
        const bool dense = in_tensor.is_non_overlapping_and_dense() && in_tensor.strides() == out_tensor.strides() &&
                           is_16_byte_aligned(in) && is_16_byte_aligned(out);
        with_affine(is_affine(variant, p), [&](auto affine) {
          constexpr bool kAffine = decltype(affine)::value;
          if (dense) {
            featurewise_kernel<scalar_t, kAffine, true>
                <<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, factors);
          } else {
            featurewise_kernel<scalar_t, kAffine, false>
                <<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, factors);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
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
  return forward_op("feature_dropout", input, p, generator, featurewise_kernel_launcher(Variant::kFeatureDropout, p));
}

at::Tensor feature_dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_feature_input(input);
  return inplace_op("feature_dropout_", input, p, generator, featurewise_kernel_launcher(Variant::kFeatureDropout, p));
}

at::Tensor feature_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_feature_input(grad);
  return backward_op("feature_dropout_backward", grad, rng_state, p,
                     featurewise_kernel_launcher(Variant::kFeatureDropout, p));
}

std::tuple<at::Tensor, at::Tensor> feature_alpha_dropout(const at::Tensor& input, double p,
                                                         std::optional<at::Generator> generator) {
  check_feature_input(input);
  return forward_op("feature_alpha_dropout", input, p, generator,
                    featurewise_kernel_launcher(Variant::kAlphaDropout, p));
}

at::Tensor feature_alpha_dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_feature_input(input);
  return inplace_op("feature_alpha_dropout_", input, p, generator,
                    featurewise_kernel_launcher(Variant::kAlphaDropout, p));
}

at::Tensor feature_alpha_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_feature_input(grad);
  return backward_op("feature_alpha_dropout_backward", grad, rng_state, p,
                     featurewise_kernel_launcher(Variant::kAlphaDropoutGradient, p));
}

}  // namespace fastdrop::cuda
