// Grouped decisions on CUDA: feature dropout and feature alpha dropout (per
// channel), drop path and stochastic depth (per sample or per batch), and
// drop_path_add, which never loads a dropped sample's branch. One thread per
// 8 consecutive elements in the output's memory order (so channels_last is as
// coalesced as NCHW), each element's group found through the layout's last
// operand (grouped_layout); a thread computes one Philox block per 8 distinct
// groups it meets.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "../entry_points.h"
#include "op_helpers.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

// The decisions of groups, remembering the last Philox block.
struct GroupDecisions {
  RngState rng;
  DropThreshold threshold;
  uint64_t block = ~uint64_t(0);
  PhiloxBlock bits;

  __device__ bool keeps_group(uint64_t group) {
    if (group / kElementsPerBlock != block) {
      block = group / kElementsPerBlock;
      bits = contract_block(rng.seed, rng.offset, block);
    }
    return keeps(element_bits(bits, static_cast<int>(group % kElementsPerBlock)), threshold, rng.seed, rng.offset,
                 group);
  }
};

// kDense: every tensor is dense with the output's strides, so the i-th element
// in memory order sits at offset i of each, and 16-byte loads apply.
template <typename scalar_t, bool kAffine, bool kDense, typename Rng>
__global__ void __launch_bounds__(kThreads)
    grouped_device_kernel(const scalar_t* in, scalar_t* out, StridedLayout<3> layout, int64_t numel, Rng rng_source,
                   DropThreshold threshold, DropoutFactors<scalar_t> factors) {
  GroupDecisions decisions{rng_source.load(), threshold};
  const int64_t packs = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<3> cursor;
  for (int64_t pack_index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack_index < packs;
       pack_index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t first = pack_index * kElementsPerBlock;
    cursor.seek(layout, first);
    if (kDense && first + kElementsPerBlock <= numel) {
      Pack8<scalar_t> pack = *reinterpret_cast<const Pack8<scalar_t>*>(in + first);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        const bool kept = decisions.keeps_group(static_cast<uint64_t>(cursor.offset[2]));
        pack.value[lane] = apply_dropout<kAffine>(pack.value[lane], kept, factors);
        cursor.next(layout);
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = pack;
    } else {
      // Not unrolled: eight copies of the strided walk cost more registers than they save.
#pragma unroll 1
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          const bool kept = decisions.keeps_group(static_cast<uint64_t>(cursor.offset[2]));
          out[cursor.offset[0]] = apply_dropout<kAffine>(in[cursor.offset[1]], kept, factors);
          cursor.next(layout);
        }
      }
    }
  }
}

template <typename scalar_t, bool kDense, typename Rng>
__global__ void __launch_bounds__(kThreads)
    drop_path_add_device_kernel(const scalar_t* branch, const scalar_t* residual, scalar_t* out, StridedLayout<4> layout,
                         int64_t numel, Rng rng_source, DropThreshold threshold, DropoutFactors<scalar_t> factors) {
  GroupDecisions decisions{rng_source.load(), threshold};
  const int64_t packs = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  LogicalCursor<4> cursor;
  for (int64_t pack_index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; pack_index < packs;
       pack_index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t first = pack_index * kElementsPerBlock;
    cursor.seek(layout, first);
    if (kDense && first + kElementsPerBlock <= numel) {
      bool kept[kElementsPerBlock];
      bool any_kept = false;
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        kept[lane] = decisions.keeps_group(static_cast<uint64_t>(cursor.offset[3]));
        any_kept |= kept[lane];
        cursor.next(layout);
      }
      Pack8<scalar_t> result = *reinterpret_cast<const Pack8<scalar_t>*>(residual + first);
      if (any_kept) {  // a dropped sample's branch is never loaded
        const Pack8<scalar_t> x = *reinterpret_cast<const Pack8<scalar_t>*>(branch + first);
#pragma unroll
        for (int lane = 0; lane < kElementsPerBlock; ++lane) {
          if (kept[lane]) {
            result.value[lane] = add_elements(result.value[lane], apply_dropout<false>(x.value[lane], true, factors));
          }
        }
      }
      *reinterpret_cast<Pack8<scalar_t>*>(out + first) = result;
    } else {
#pragma unroll 1
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          const bool kept = decisions.keeps_group(static_cast<uint64_t>(cursor.offset[3]));
          const scalar_t r = residual[cursor.offset[2]];
          out[cursor.offset[0]] =
              kept ? add_elements(r, apply_dropout<false>(branch[cursor.offset[1]], true, factors)) : r;
          cursor.next(layout);
        }
      }
    }
  }
}

bool dense_alike(const at::Tensor& output, std::initializer_list<const at::Tensor*> inputs) {
  if (!output.is_non_overlapping_and_dense() || !is_16_byte_aligned(output.data_ptr())) return false;
  for (const at::Tensor* input : inputs) {
    if (input->strides() != output.strides() || !is_16_byte_aligned(input->const_data_ptr())) return false;
  }
  return true;
}

auto grouped_kernel(Variant variant, double p, int64_t group_dims) {
  return [variant, p, group_dims](const at::Tensor& input, at::Tensor& output, auto rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int grid = grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    auto make = [group_dims](const std::array<at::Tensor, 2>& t) { return grouped_layout<3>(t, group_dims); };
    with_layout<2>({output, input}, make, [&](const StridedLayout<3>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_grouped_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        const bool dense = dense_alike(t[0], {&t[1]});
        with_affine(is_affine(variant, p), [&](auto affine) {
          constexpr bool kAffine = decltype(affine)::value;
          if (dense) {
            grouped_device_kernel<scalar_t, kAffine, true>
                <<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, factors);
          } else {
            grouped_device_kernel<scalar_t, kAffine, false>
                <<<grid, kThreads, 0, stream>>>(in, out, layout, numel, rng, threshold, factors);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  };
}

auto drop_path_add_kernel(const at::Tensor& residual, Variant variant, double p) {
  return [&residual, variant, p](const at::Tensor& branch, at::Tensor& output, auto rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = branch.numel();
    const int grid = grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    auto make = [](const std::array<at::Tensor, 3>& t) { return grouped_layout<4>(t, 1); };
    with_layout<3>({output, branch, residual}, make, [&](const StridedLayout<4>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, branch.scalar_type(), "fastdrop_drop_path_add_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        const scalar_t* x = t[1].template const_data_ptr<scalar_t>();
        const scalar_t* r = t[2].template const_data_ptr<scalar_t>();
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        if (dense_alike(t[0], {&t[1], &t[2]})) {
          drop_path_add_device_kernel<scalar_t, true>
              <<<grid, kThreads, 0, stream>>>(x, r, out, layout, numel, rng, threshold, factors);
        } else {
          drop_path_add_device_kernel<scalar_t, false>
              <<<grid, kThreads, 0, stream>>>(x, r, out, layout, numel, rng, threshold, factors);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  };
}

}  // namespace

FASTDROP_GROUPED_ENTRY_POINTS

}  // namespace fastdrop::cuda
