// Element-wise dropout on CUDA: one thread per Philox block of 8 logically
// consecutive elements, one kernel launch per pass; backward regenerates the
// mask from the recorded rng_state.
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAGuard.h>

#include "../dropout_math.h"
#include "../fastdrop.h"
#include "rng_cuda.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, bool kVectorized, typename Rng>
__global__ void __launch_bounds__(kThreads)
    dropout_contiguous_kernel(const scalar_t* in, scalar_t* out, int64_t numel, Rng rng_source, uint32_t threshold,
                              at::opmath_type<scalar_t> scale) {
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
        pack.value[lane] = masked_scale(pack.value[lane], is_kept(element_bits(bits, lane), threshold), scale);
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = pack;
    } else {
      // Fully unrolled with a guard, so the Philox words stay in registers.
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          out[first + lane] = masked_scale(in[first + lane], is_kept(element_bits(bits, lane), threshold), scale);
        }
      }
    }
  }
}

// Any layout: walk each block's 8 logical elements through the strides.
template <typename scalar_t, typename Rng>
__global__ void __launch_bounds__(kThreads)
    dropout_strided_kernel(const scalar_t* in, scalar_t* out, StridedLayout<2> layout, int64_t numel, Rng rng_source,
                           uint32_t threshold, at::opmath_type<scalar_t> scale) {
  const RngState rng = rng_source.load();
  const int64_t blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<2> cursor;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock bits = contract_block(rng.seed, rng.offset, static_cast<uint64_t>(block));
    const int64_t first = block * kElementsPerBlock;
    cursor.seek(layout, first);
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      if (first + lane < numel) {
        out[cursor.offset[0]] =
            masked_scale(in[cursor.offset[1]], is_kept(element_bits(bits, lane), threshold), scale);
        cursor.next(layout);
      }
    }
  }
}

template <typename Rng>
void launch_dropout(const at::Tensor& input, at::Tensor& output, Rng rng, double p) {
  const uint32_t threshold = drop_threshold(p);
  const int64_t numel = input.numel();
  const int grid = grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  with_walkable_pair(input, output, [&](const StridedLayout<2>& layout, at::Tensor& out_tensor, const at::Tensor& in_tensor) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_tensor.scalar_type(), "fastdrop_dropout_cuda", [&] {
      const auto scale = keep_scale<scalar_t>(p);
      const scalar_t* in = in_tensor.const_data_ptr<scalar_t>();
      scalar_t* out = out_tensor.data_ptr<scalar_t>();
      if (!layout.flat_and_contiguous()) {
        dropout_strided_kernel<<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, scale);
      } else if (is_16_byte_aligned(in) && is_16_byte_aligned(out)) {
        dropout_contiguous_kernel<scalar_t, true><<<grid, kThreads, 0, stream>>>(in, out, numel, rng, threshold, scale);
      } else {
        dropout_contiguous_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(in, out, numel, rng, threshold, scale);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_floating_input(input, "dropout");
  check_probability(p);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor rng_state;
  const GeneratorRng rng = draw_rng(input, generator, rng_state);
  at::Tensor output = at::empty_like(input);
  launch_dropout(input, output, rng, p);
  return {output, rng_state};
}

at::Tensor dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_floating_input(input, "dropout_");
  check_probability(p);
  at::assert_no_internal_overlap(input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor rng_state;
  const GeneratorRng rng = draw_rng(input, generator, rng_state);
  launch_dropout(input, input, rng, p);
  return rng_state;
}

at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_floating_input(grad, "dropout_backward");
  check_probability(p);
  check_rng_state(rng_state, grad, "dropout_backward");
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input = at::empty_like(grad);
  launch_dropout(grad, grad_input, recorded_rng(rng_state.contiguous()), p);
  return grad_input;
}

}  // namespace fastdrop::cuda
