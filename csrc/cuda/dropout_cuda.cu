// Element-wise dropout and alpha dropout on CUDA: one thread per Philox block
// of 8 logically consecutive elements (16-byte loads and stores where aligned),
// one kernel launch per pass; backward regenerates the mask from rng_state.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "op_helpers.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, bool kAffine, bool kVectorized, typename Rng>
__global__ void __launch_bounds__(kThreads)
    elementwise_contiguous_kernel(const scalar_t* in, scalar_t* out, int64_t numel, Rng rng_source,
                                  uint32_t threshold, DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock bits = contract_block(rng.seed, rng.offset, static_cast<uint64_t>(block));
    const int64_t first = block * kElementsPerBlock;
    if (kVectorized && first + kElementsPerBlock <= numel) {
      Pack8<scalar_t> pack = *reinterpret_cast<const Pack8<scalar_t>*>(in + first);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        pack.value[lane] = apply_dropout<kAffine>(pack.value[lane], is_kept(element_bits(bits, lane), threshold), factors);
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = pack;
    } else {
      // Fully unrolled with a guard, so the Philox words stay in registers.
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          out[first + lane] = apply_dropout<kAffine>(in[first + lane], is_kept(element_bits(bits, lane), threshold), factors);
        }
      }
    }
  }
}

// Any layout: each block's 8 logical elements through the strides.
template <typename scalar_t, bool kAffine, typename Rng>
__global__ void __launch_bounds__(kThreads)
    elementwise_strided_kernel(const scalar_t* in, scalar_t* out, StridedLayout<2> layout, int64_t numel,
                               Rng rng_source, uint32_t threshold, DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<2> cursor;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock bits = contract_block(rng.seed, rng.offset, static_cast<uint64_t>(block));
    const int64_t first = block * kElementsPerBlock;
    cursor.seek(layout, first);
    // Not unrolled: eight copies of the strided walk cost more registers than they save.
#pragma unroll 1
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      if (first + lane < numel) {
        out[cursor.offset[0]] =
            apply_dropout<kAffine>(in[cursor.offset[1]], is_kept(element_bits(bits, lane), threshold), factors);
        cursor.next(layout);
      }
    }
  }
}

// The kernel behind every op in this file.
auto elementwise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, auto rng) {
    const uint32_t threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int grid = grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    with_layout(input, output, elementwise_layout, [&](const StridedLayout<2>& layout, at::Tensor& out_tensor,
                                          const at::Tensor& in_tensor) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_tensor.scalar_type(), "fastdrop_dropout_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        const scalar_t* in = in_tensor.const_data_ptr<scalar_t>();
        scalar_t* out = out_tensor.data_ptr<scalar_t>();
        with_affine(is_affine(variant, p), [&](auto affine) {
          constexpr bool kAffine = decltype(affine)::value;
          if (!layout.flat_and_contiguous()) {
            elementwise_strided_kernel<scalar_t, kAffine>
                <<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, factors);
          } else if (is_16_byte_aligned(in) && is_16_byte_aligned(out)) {
            elementwise_contiguous_kernel<scalar_t, kAffine, true>
                <<<grid, kThreads, 0, stream>>>(in, out, numel, rng, threshold, factors);
          } else {
            elementwise_contiguous_kernel<scalar_t, kAffine, false>
                <<<grid, kThreads, 0, stream>>>(in, out, numel, rng, threshold, factors);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
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

}  // namespace fastdrop::cuda
