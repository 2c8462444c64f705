// Element-wise decisions on CUDA: dropout, alpha dropout, and the residual
// epilogues dropout_add (residual + dropout(x)) and bias_dropout_add
// (residual + dropout(x + bias)). One thread per Philox block of 8 logically
// consecutive elements (16-byte loads and stores where aligned), one kernel
// launch per pass; backward regenerates the mask from rng_state.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "../entry_points.h"
#include "op_helpers.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, bool kAffine, bool kVectorized, typename Rng>
__global__ void __launch_bounds__(kThreads)
    elementwise_contiguous_kernel(const scalar_t* in, scalar_t* out, int64_t numel, Rng rng_source,
                                  DropThreshold threshold, DropoutFactors<scalar_t> factors) {
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
        pack.value[lane] =
            apply_dropout<kAffine>(pack.value[lane], keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, static_cast<uint64_t>(first + lane)), factors);
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = pack;
    } else {
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          out[first + lane] =
              apply_dropout<kAffine>(in[first + lane], keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, static_cast<uint64_t>(first + lane)), factors);
        }
      }
    }
  }
}

// residual + dropout(in [+ bias[column]]) on contiguous tensors; bias has
// `columns` elements, broadcast over the last dim.
template <typename scalar_t, bool kBias, bool kVectorized, typename Rng>
__global__ void __launch_bounds__(kThreads)
    add_dropout_contiguous_kernel(const scalar_t* in, const scalar_t* residual, const scalar_t* bias,
                                  int64_t columns, scalar_t* out, int64_t numel, Rng rng_source, DropThreshold threshold,
                                  DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock bits = contract_block(rng.seed, rng.offset, static_cast<uint64_t>(block));
    const int64_t first = block * kElementsPerBlock;
    int64_t column = kBias ? first % columns : 0;
    if (kVectorized && first + kElementsPerBlock <= numel) {
      Pack8<scalar_t> x = *reinterpret_cast<const Pack8<scalar_t>*>(in + first);
      Pack8<scalar_t> result = *reinterpret_cast<const Pack8<scalar_t>*>(residual + first);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        scalar_t value = x.value[lane];
        if constexpr (kBias) {
          value = add_elements(value, bias[column]);
          column = column + 1 == columns ? 0 : column + 1;
        }
        result.value[lane] = add_elements(
            result.value[lane], apply_dropout<false>(value, keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, static_cast<uint64_t>(first + lane)), factors));
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = result;
    } else {
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          scalar_t value = in[first + lane];
          if constexpr (kBias) {
            value = add_elements(value, bias[column]);
            column = column + 1 == columns ? 0 : column + 1;
          }
          out[first + lane] = add_elements(
              residual[first + lane], apply_dropout<false>(value, keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, static_cast<uint64_t>(first + lane)), factors));
        }
      }
    }
  }
}

// Any layout: operands (output, input[, residual[, bias]]); each block's 8
// logical elements through the strides.
template <typename scalar_t, bool kAffine, int kOperands, typename Rng>
__global__ void __launch_bounds__(kThreads)
    elementwise_strided_kernel(scalar_t* out, const scalar_t* in, const scalar_t* residual, const scalar_t* bias,
                               StridedLayout<kOperands> layout, int64_t numel, Rng rng_source, DropThreshold threshold,
                               DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<kOperands> cursor;
  for (int64_t block = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; block < blocks;
       block += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock bits = contract_block(rng.seed, rng.offset, static_cast<uint64_t>(block));
    const int64_t first = block * kElementsPerBlock;
    cursor.seek(layout, first);
    // Not unrolled: eight copies of the strided walk cost more registers than they save.
#pragma unroll 1
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      if (first + lane < numel) {
        const bool kept = keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, static_cast<uint64_t>(first + lane));
        scalar_t value = in[cursor.offset[1]];
        if constexpr (kOperands == 4) value = add_elements(value, bias[cursor.offset[3]]);
        if constexpr (kOperands == 2) {
          out[cursor.offset[0]] = apply_dropout<kAffine>(value, kept, factors);
        } else {
          out[cursor.offset[0]] = add_elements(residual[cursor.offset[2]], apply_dropout<false>(value, kept, factors));
        }
        cursor.next(layout);
      }
    }
  }
}

int blocks_for(int64_t numel) {
  return grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
}

// The kernel behind dropout and alpha dropout, forward and backward.
auto elementwise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, auto rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int grid = blocks_for(numel);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    with_layout<2>({output, input}, elementwise_layout<2>, [&](const StridedLayout<2>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_dropout_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
        with_affine(is_affine(variant, p), [&](auto affine) {
          constexpr bool kAffine = decltype(affine)::value;
          if (!layout.flat_and_contiguous()) {
            elementwise_strided_kernel<scalar_t, kAffine, 2><<<grid, kThreads, 0, stream>>>(
                out, in, nullptr, nullptr, layout, numel, rng, threshold, factors);
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

// residual + dropout(input [+ bias]); bias, when defined, is broadcast over the last dim.
auto add_dropout_kernel(const at::Tensor& residual, const at::Tensor& bias, double p) {
  return [&residual, &bias, p](const at::Tensor& input, at::Tensor& output, auto rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int grid = blocks_for(numel);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    auto launch = [&](auto tensors) {
      constexpr size_t kTensors = std::tuple_size_v<decltype(tensors)>;
      constexpr bool kBias = kTensors == 4;
      with_layout<kTensors>(tensors, elementwise_layout<kTensors>, [&](const StridedLayout<kTensors>& layout,
                                                                      const auto& t) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_dropout_add_cuda", [&] {
          const auto factors = dropout_factors<scalar_t>(Variant::kDropout, p);
          scalar_t* out = t[0].template data_ptr<scalar_t>();
          const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
          const scalar_t* res = t[2].template const_data_ptr<scalar_t>();
          const scalar_t* b = kBias ? t[kTensors - 1].template const_data_ptr<scalar_t>() : nullptr;
          // Contiguous operands (the bias broadcast along the last dim) take the fast kernels.
          const bool contiguous = t[0].is_contiguous() && t[1].is_contiguous() && t[2].is_contiguous() &&
                                  (!kBias || bias.is_contiguous());
          const int64_t columns = kBias ? input.size(-1) : 1;
          if (!contiguous) {
            elementwise_strided_kernel<scalar_t, false, static_cast<int>(kTensors)><<<grid, kThreads, 0, stream>>>(
                out, in, res, b, layout, numel, rng, threshold, factors);
          } else if (is_16_byte_aligned(in) && is_16_byte_aligned(res) && is_16_byte_aligned(out)) {
            add_dropout_contiguous_kernel<scalar_t, kBias, true><<<grid, kThreads, 0, stream>>>(
                in, res, kBias ? bias.const_data_ptr<scalar_t>() : nullptr, columns, out, numel, rng, threshold,
                factors);
          } else {
            add_dropout_contiguous_kernel<scalar_t, kBias, false><<<grid, kThreads, 0, stream>>>(
                in, res, kBias ? bias.const_data_ptr<scalar_t>() : nullptr, columns, out, numel, rng, threshold,
                factors);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    };
    if (bias.defined()) {
      launch(std::array<at::Tensor, 4>{output, input, residual, bias.expand_as(input)});
    } else {
      launch(std::array<at::Tensor, 3>{output, input, residual});
    }
  };
}

}  // namespace

FASTDROP_ELEMENTWISE_ENTRY_POINTS

}  // namespace fastdrop::cuda
