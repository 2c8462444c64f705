// Element-wise decisions on CUDA: dropout and alpha dropout (forward and
// backward), and the residual epilogues dropout_add (residual + dropout(x))
// and bias_dropout_add (residual + dropout(x + bias)). A thread takes one pack
// per iteration of a grid-stride loop: the 8 logically consecutive elements
// of one Philox block. Contiguous tensors move with 16-byte accesses where
// aligned; any other layout goes through an IndexMap, one multiply-shift per
// dim and pack. Backward regenerates the mask from rng_state.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../dropout_math.h"
#include "../residual_types.h"
#include "../decisions.h"
#include "index_map.cuh"
#include "op_helpers.cuh"
#include "pack.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

// dropout / alpha dropout of contiguous, 16-byte aligned tensors. Full packs
// in the loop; the partial last pack after it, by the thread whose turn that
// pack would be.
template <typename scalar_t, bool kAffine>
__global__ void __launch_bounds__(kThreads)
    elementwise_contiguous_kernel(const scalar_t* in, scalar_t* out, int64_t numel, KernelRng rng_source,
                                  DropThreshold threshold, DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t full_packs = numel / kElementsPerBlock;
  int64_t pack = first_pack();
  for (; pack < full_packs; pack += pack_stride()) {
    const int64_t first = pack * kElementsPerBlock;
    bool kept[kElementsPerBlock];
    decide_pack(contract_block(rng.seed, rng.offset, pack), threshold, rng, first, kept);
    Pack8<scalar_t> x = load_pack(in + first);
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      x.value[lane] = apply_dropout<kAffine>(x.value[lane], kept[lane], factors);
    }
    store_pack(out + first, x);
  }
  if (!takes_partial_pack(pack, full_packs, numel)) return;
  const PhiloxBlock bits = contract_block(rng.seed, rng.offset, full_packs);
  for_partial_pack(full_packs, numel, [&](int64_t index, int lane) {
    const bool kept = keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, index);
    out[index] = apply_dropout<kAffine>(in[index], kept, factors);
  });
}

// residual + dropout(input [+ bias]) on contiguous, 16-byte aligned operands;
// the bias (broadcast over the last dim, `columns` long, a multiple of 8) is
// read a pack at a time. Its column advances with the loop, without a division.
// The residual and the output: the input's type, or a wider one (residual_t).
template <typename scalar_t, bool kBias, typename residual_t>
__global__ void __launch_bounds__(kThreads)
    add_dropout_contiguous_kernel(const scalar_t* in, const residual_t* residual, const scalar_t* bias, int64_t columns,
                                  residual_t* out, int64_t numel, KernelRng rng_source, DropThreshold threshold,
                                  DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t full_packs = numel / kElementsPerBlock;
  int64_t pack = first_pack();
  const int64_t step = pack_stride();
  int64_t column = kBias ? pack * kElementsPerBlock % columns : 0;
  const int64_t column_step = kBias ? step * kElementsPerBlock % columns : 0;
  for (; pack < full_packs; pack += step) {
    const int64_t first = pack * kElementsPerBlock;
    bool kept[kElementsPerBlock];
    decide_pack(contract_block(rng.seed, rng.offset, pack), threshold, rng, first, kept);
    Pack8<scalar_t> x = load_pack(in + first);
    Pack8<residual_t> result = load_pack(residual + first);
    if constexpr (kBias) {
      const Pack8<scalar_t> b = load_pack(bias + column);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) x.value[lane] = add_elements(x.value[lane], b.value[lane]);
    }
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      result.value[lane] =
          add_to_residual(result.value[lane], apply_dropout<false>(x.value[lane], kept[lane], factors));
    }
    store_pack(out + first, result);
    if constexpr (kBias) {
      column += column_step;
      if (column >= columns) column -= columns;
    }
  }
  if (!takes_partial_pack(pack, full_packs, numel)) return;
  const PhiloxBlock bits = contract_block(rng.seed, rng.offset, full_packs);
  for_partial_pack(full_packs, numel, [&](int64_t index, int lane) {
    const bool kept = keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, index);
    scalar_t value = in[index];
    if constexpr (kBias) value = add_elements(value, bias[index % columns]);
    out[index] = add_to_residual(residual[index], apply_dropout<false>(value, kept, factors));
  });
}

// Any layout (32-bit indices, up to 4 dims). A pack within one innermost row
// steps through it by the row's strides; a pack across rows (or the partial
// last one) locates each element. The output (and a residual): residual_t.
template <typename scalar_t, bool kAffine, int kOperands, typename residual_t>
__global__ void __launch_bounds__(kThreads)
    elementwise_strided_kernel(residual_t* out, const scalar_t* in, const residual_t* residual, const scalar_t* bias,
                               StridedMap<kOperands> map, int64_t numel, KernelRng rng_source, DropThreshold threshold,
                               DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int64_t packs = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  // One element, its operands at out_at, in_at, residual_at, bias_at.
  auto element = [&](residual_t* o, const scalar_t* x, const residual_t* r, const scalar_t* b, bool kept) {
    scalar_t value = *x;
    if constexpr (kOperands == 4) value = add_elements(value, *b);
    if constexpr (kOperands == 2) {
      *o = apply_dropout<kAffine>(value, kept, factors);
    } else {
      *o = add_to_residual(*r, apply_dropout<false>(value, kept, factors));
    }
  };
  for (int64_t pack = first_pack(); pack < packs; pack += pack_stride()) {
    const int64_t first = pack * kElementsPerBlock;
    bool kept[kElementsPerBlock];
    decide_pack(contract_block(rng.seed, rng.offset, pack), threshold, rng, first, kept);
    int32_t at[kOperands];
    const int32_t inner = map.locate(static_cast<int32_t>(first), at);
    if (!rare(inner + kElementsPerBlock > map.inner_size() || first + kElementsPerBlock > numel)) {
      residual_t* o = out + at[0];
      const scalar_t* x = in + at[1];
      const residual_t* r = kOperands >= 3 ? residual + at[2] : nullptr;
      const scalar_t* b = kOperands == 4 ? bias + at[3] : nullptr;
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        element(o + lane * map.inner_stride(0), x + lane * map.inner_stride(1),
                kOperands >= 3 ? r + lane * map.inner_stride(2) : nullptr,
                kOperands == 4 ? b + lane * map.inner_stride(3) : nullptr, kept[lane]);
      }
    } else {
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          map.locate(static_cast<int32_t>(first + lane), at);
          element(out + at[0], in + at[1], kOperands >= 3 ? residual + at[2] : nullptr,
                  kOperands == 4 ? bias + at[3] : nullptr, kept[lane]);
        }
      }
    }
  }
}

int grid_for(int64_t numel) { return grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads); }

template <typename scalar_t, bool kAffine, int kOperands, typename residual_t>
void launch_strided(const StridedLayout<kOperands>& layout, residual_t* out, const scalar_t* in,
                    const residual_t* residual, const scalar_t* bias, int64_t numel, const KernelRng& rng,
                    const DropThreshold& threshold, const DropoutFactors<scalar_t>& factors) {
  FASTDROP_LAUNCH(grid_for(numel), kThreads, current_stream(),
                  elementwise_strided_kernel<scalar_t, kAffine, kOperands, residual_t>)(
      out, in, residual, bias, StridedMap<kOperands>(layout), numel, rng, threshold, factors);
  check_launch();
}

// Whether the tensors take the contiguous kernels: contiguous and 16-byte aligned.
template <size_t kTensors>
bool vectorizable(const std::array<at::Tensor, kTensors>& tensors) {
  for (const at::Tensor& tensor : tensors) {
    if (!tensor.is_contiguous() || !is_16_byte_aligned(tensor.const_data_ptr())) return false;
  }
  return true;
}

// The element-wise layout where the kernels take it: vectorizable (any size),
// or within StridedMap's reach; else none, and with_layout runs the op on
// contiguous copies (fresh allocations, so aligned).
template <size_t kTensors>
std::optional<StridedLayout<kTensors>> kernel_layout(const std::array<at::Tensor, kTensors>& tensors) {
  const auto layout = elementwise_layout<kTensors>(tensors);
  if (layout && !vectorizable(tensors) && !fits_strided_map(*layout, tensors[0].numel())) return std::nullopt;
  return layout;
}

// The kernel behind dropout and alpha dropout, forward and backward.
auto elementwise_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& input, at::Tensor& output, const KernelRng& rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    with_layout<2>({output, input}, kernel_layout<2>, [&](const StridedLayout<2>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_dropout_cuda", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
        with_affine(is_affine(variant, p), [&](auto affine) {
          constexpr bool kAffine = decltype(affine)::value;
          if (!vectorizable(t)) {
            launch_strided<scalar_t, kAffine>(layout, out, in, static_cast<const scalar_t*>(nullptr), nullptr, numel,
                                              rng, threshold, factors);
            return;
          }
          FASTDROP_LAUNCH(grid_for(numel), kThreads, current_stream(),
                          elementwise_contiguous_kernel<scalar_t, kAffine>)(in, out, numel, rng, threshold, factors);
          check_launch();
        });
      });
    });
  };
}

// residual + dropout(input [+ bias]); bias, when defined, is broadcast over the last dim. The
// residual and the output: the input's type or a wider one.
auto add_dropout_kernel(const at::Tensor& residual, const at::Tensor& bias, double p) {
  return [&residual, &bias, p](const at::Tensor& input, at::Tensor& output, const KernelRng& rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = input.numel();
    const int64_t columns = bias.defined() ? input.size(-1) : 1;
    // The contiguous kernel reads the bias a pack at a time: a row of whole packs, aligned.
    const bool bias_packs = !bias.defined() || (bias.is_contiguous() && columns % kElementsPerBlock == 0 &&
                                                is_16_byte_aligned(bias.const_data_ptr()));
    auto launch = [&](auto tensors) {
      constexpr int kTensors = static_cast<int>(std::tuple_size_v<decltype(tensors)>);
      constexpr bool kBias = kTensors == 4;
      auto fast = [&](const auto& t) {
        return bias_packs && vectorizable(std::array<at::Tensor, 3>{t[0], t[1], t[2]});
      };
      auto make = [&](const std::array<at::Tensor, kTensors>& t) {
        return fast(t) ? elementwise_layout<kTensors>(t) : kernel_layout<kTensors>(t);
      };
      with_layout<kTensors>(tensors, make, [&](const StridedLayout<kTensors>& layout, const auto& t) {
        with_branch_and_residual_types(
            input.scalar_type(), residual.scalar_type(), [&](auto branch_type, auto residual_type) {
              using scalar_t = typename decltype(branch_type)::type;
              using residual_t = typename decltype(residual_type)::type;
              const auto factors = dropout_factors<scalar_t>(Variant::kScaleOpMath, p);
              residual_t* out = t[0].template data_ptr<residual_t>();
              const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
              const residual_t* res = t[2].template const_data_ptr<residual_t>();
              const scalar_t* b = kBias ? t[kTensors - 1].template const_data_ptr<scalar_t>() : nullptr;
              if (!fast(t)) {
                launch_strided<scalar_t, false>(layout, out, in, res, b, numel, rng, threshold, factors);
                return;
              }
              FASTDROP_LAUNCH(grid_for(numel), kThreads, current_stream(),
                              add_dropout_contiguous_kernel<scalar_t, kBias, residual_t>)(
                  in, res, kBias ? bias.const_data_ptr<scalar_t>() : nullptr, columns, out, numel, rng, threshold,
                  factors);
              check_launch();
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

#include "../entry_points/elementwise.inc"

}  // namespace fastdrop::cuda

// A CUDA build registers the kernels for CUDA tensors; the emulated device's
// build (tests/emulated_cuda.py) for the CPU tensors of its own namespace.
#if defined(FASTDROP_EMULATE_CUDA)
TORCH_LIBRARY_IMPL(fastdrop_emulated, CPU, m) { fastdrop::cuda::register_elementwise_kernels(m); }
#else
TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) { fastdrop::cuda::register_elementwise_kernels(m); }
#endif
