// Grouped decisions on CUDA: feature dropout and feature alpha dropout (per
// channel), drop path and stochastic depth (per sample or per batch),
// drop_path_add, which never loads a dropped sample's branch, and
// drop_path_add_subset, whose branch holds the kept samples only. Threads take
// packs of 8 elements consecutive in the output's memory order (so
// channels_last is as coalesced as NCHW); grouped_layout gives each element's
// group index as the layout's last operand. Dense tensors whose rows hold
// whole packs make one decision per pack (a row of one channel or sample) or
// read 8 consecutive channels' decisions from one Philox block
// (channels_last); any other layout locates each pack through an IndexMap.
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

// The group of each memory-order index of a dense piece of a tensor (fewer
// than 2^31 elements, so every index and group offset within it is 32-bit):
// up to 3 dims, innermost first, and the group where the piece starts.
struct DenseGroups {
  FastDivisor<uint32_t> sizes[2];  // the two inner dims; the outermost takes what is left
  uint32_t strides[3];             // group strides
  int64_t base;

  // The group's offset from base.
  __device__ __forceinline__ uint32_t relative(int32_t index) const {
    const uint32_t i = static_cast<uint32_t>(index);
    const uint32_t q0 = sizes[0].quotient(i), q1 = sizes[1].quotient(q0);
    const uint32_t c0 = i - q0 * sizes[0].divisor, c1 = q0 - q1 * sizes[1].divisor;
    return c0 * strides[0] + c1 * strides[1] + q1 * strides[2];
  }

  __device__ __forceinline__ uint64_t of(int32_t index) const { return static_cast<uint64_t>(base) + relative(index); }
};

// Dense rows of one group each (an NCHW channel, a sample, the whole batch):
// every operand dense with the output's strides and 16-byte aligned, each row
// a whole number of packs (or the layout a single row), so a pack makes one
// decision. `groups` maps a memory-order index to its group. The partial last
// pack (a single row) is done after the loop by the thread whose turn it would be.
template <typename scalar_t, bool kAffine>
__global__ void __launch_bounds__(kThreads)
    grouped_rows_kernel(const scalar_t* in, scalar_t* out, DenseGroups groups, int32_t numel, KernelRng rng_source,
                        DropThreshold threshold, DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int32_t full_packs = numel / kElementsPerBlock;
  int32_t pack = static_cast<int32_t>(first_pack());
  for (; pack < full_packs; pack += static_cast<int32_t>(pack_stride())) {
    const int32_t first = pack * kElementsPerBlock;
    const bool kept = keeps_group(groups.of(first), threshold, rng);
    Pack8<scalar_t> x = load_pack(in + first);
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane)
      x.value[lane] = apply_dropout<kAffine>(x.value[lane], kept, factors);
    store_pack(out + first, x);
  }
  if (!takes_partial_pack(pack, full_packs, numel)) return;
  const bool kept = keeps_group(groups.of(full_packs * kElementsPerBlock), threshold, rng);  // a single row: one group
  for_partial_pack(full_packs, numel,
                   [&](int32_t index, int) { out[index] = apply_dropout<kAffine>(in[index], kept, factors); });
}

// Dense channels-innermost tensors (channels_last): memory order [A, B, C],
// group a * group_stride + c, the same for every b (pixel). C and the group
// stride are multiples of 8, so a pack holds 8 consecutive channels whose
// decisions are one Philox block; a thread takes the same pack of channels
// at two consecutive pixels, so one block serves 16 elements.
struct ChannelPairs {
  FastDivisor<uint32_t> channel_packs;  // C / 8
  FastDivisor<uint32_t> pixel_pairs;    // ceil(B / 2)
  uint32_t pixels;                      // B
  uint32_t block_stride;                // group stride / 8
  int64_t first_block;                  // the piece's first group / 8
};

template <typename scalar_t, bool kAffine>
__global__ void __launch_bounds__(kThreads)
    grouped_channels_kernel(const scalar_t* in, scalar_t* out, ChannelPairs layout, int32_t units, KernelRng rng_source,
                            DropThreshold threshold, DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const uint32_t channel_packs = layout.channel_packs.divisor;
  for (int32_t unit = static_cast<int32_t>(first_pack()); unit < units; unit += static_cast<int32_t>(pack_stride())) {
    const uint32_t rest = layout.channel_packs.quotient(unit);
    const uint32_t channel_pack = unit - rest * channel_packs;
    const uint32_t a = layout.pixel_pairs.quotient(rest);
    const uint32_t pixel = 2 * (rest - a * layout.pixel_pairs.divisor);
    const uint64_t block = layout.first_block + a * layout.block_stride + channel_pack;
    bool kept[kElementsPerBlock];
    decide_pack(contract_block(rng.seed, rng.offset, block), threshold, rng, block * kElementsPerBlock, kept);
    const int64_t first =
        ((static_cast<int64_t>(a) * layout.pixels + pixel) * channel_packs + channel_pack) * kElementsPerBlock;
    Pack8<scalar_t> x = load_pack(in + first);
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane)
      x.value[lane] = apply_dropout<kAffine>(x.value[lane], kept[lane], factors);
    store_pack(out + first, x);
    if (pixel + 1 < layout.pixels) {  // the next pixel: the same channels, the same decisions
      const int64_t second = first + static_cast<int64_t>(channel_packs) * kElementsPerBlock;
      Pack8<scalar_t> y = load_pack(in + second);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane)
        y.value[lane] = apply_dropout<kAffine>(y.value[lane], kept[lane], factors);
      store_pack(out + second, y);
    }
  }
}

// residual + drop_path(branch) on dense operands whose samples hold whole packs;
// the residual and the output of the branch's type or a wider one (residual_t).
template <typename scalar_t, typename residual_t>
__global__ void __launch_bounds__(kThreads)
    drop_path_add_dense_kernel(const scalar_t* branch, const residual_t* residual, residual_t* out, DenseGroups groups,
                               int32_t numel, KernelRng rng_source, DropThreshold threshold,
                               DropoutFactors<scalar_t> factors) {
  const RngState rng = rng_source.load();
  const int32_t full_packs = numel / kElementsPerBlock;
  int32_t pack = static_cast<int32_t>(first_pack());
  for (; pack < full_packs; pack += static_cast<int32_t>(pack_stride())) {
    const int32_t first = pack * kElementsPerBlock;
    Pack8<residual_t> result = load_pack(residual + first);
    if (keeps_group(groups.of(first), threshold, rng)) {  // a dropped sample's branch is never loaded
      const Pack8<scalar_t> x = load_pack(branch + first);
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        result.value[lane] = add_to_residual(result.value[lane], apply_dropout<false>(x.value[lane], true, factors));
      }
    }
    store_pack(out + first, result);
  }
  if (!takes_partial_pack(pack, full_packs, numel)) return;
  const bool kept = keeps_group(groups.of(full_packs * kElementsPerBlock), threshold, rng);  // a single row: one group
  for_partial_pack(full_packs, numel, [&](int32_t index, int) {
    out[index] =
        kept ? add_to_residual(residual[index], apply_dropout<false>(branch[index], true, factors)) : residual[index];
  });
}

// residual + drop_path(branch) from the kept samples' branches (drop_path_add_subset)
// over a piece of `count` elements: samples of `columns` elements (a whole row,
// or a part of a long one) `row` apart, in memory order; kept_rows[s] is the row
// of branch_kept holding sample s's branch, or -1. A pack of 8 consecutive
// elements: one 16-byte access per operand where the rows hold whole aligned
// packs (kPacks), else element by element, a pack within one row at a time.
template <typename scalar_t, typename residual_t, bool kPacks>
__global__ void __launch_bounds__(kThreads)
    drop_path_add_subset_kernel(const scalar_t* branch, const residual_t* residual, residual_t* out,
                                const int64_t* kept_rows, FastDivisor<uint32_t> columns, int64_t row, int32_t count,
                                DropoutFactors<scalar_t> factors) {
  const int32_t packs = (count + kElementsPerBlock - 1) / kElementsPerBlock;
  for (int32_t pack = static_cast<int32_t>(first_pack()); pack < packs; pack += static_cast<int32_t>(pack_stride())) {
    const uint32_t first = static_cast<uint32_t>(pack) * kElementsPerBlock;
    uint32_t sample = columns.quotient(first), column = first - sample * columns.divisor;
    if constexpr (kPacks) {
      const int64_t at = sample * row + column;
      Pack8<residual_t> result = load_pack(residual + at);
      const int64_t kept_row = kept_rows[sample];
      if (kept_row >= 0) {  // a dropped sample has no branch row
        const Pack8<scalar_t> x = load_pack(branch + kept_row * row + column);
#pragma unroll
        for (int lane = 0; lane < kElementsPerBlock; ++lane) {
          result.value[lane] = add_to_residual(result.value[lane], apply_dropout<false>(x.value[lane], true, factors));
        }
      }
      store_pack(out + at, result);
    } else if (!rare(column + kElementsPerBlock > columns.divisor ||
                     first + kElementsPerBlock > static_cast<uint32_t>(count))) {
      // Rows of any length or alignment: a pack within one row, element by element.
      const int64_t at = sample * row + column, kept_row = kept_rows[sample];
      if (kept_row >= 0) {
        const scalar_t* x = branch + kept_row * row + column;
#pragma unroll
        for (int lane = 0; lane < kElementsPerBlock; ++lane) {
          out[at + lane] = add_to_residual(residual[at + lane], apply_dropout<false>(x[lane], true, factors));
        }
      } else {
#pragma unroll
        for (int lane = 0; lane < kElementsPerBlock; ++lane) out[at + lane] = residual[at + lane];
      }
    } else {  // a pack across rows, or the partial last one: each element located
      for (int lane = 0; lane < kElementsPerBlock && first + lane < static_cast<uint32_t>(count); ++lane) {
        sample = columns.quotient(first + lane);
        column = first + lane - sample * columns.divisor;
        const int64_t at = sample * row + column, kept_row = kept_rows[sample];
        out[at] = kept_row >= 0 ? add_to_residual(residual[at],
                                                  apply_dropout<false>(branch[kept_row * row + column], true, factors))
                                : residual[at];
      }
    }
  }
}

// drop_path_add_subset's gradient of branch_kept over a piece of `count`
// elements: kept rows of `columns` elements (a whole row, or a part of a long
// one) `row` apart, row j from grad's row samples[j], cast to the branch's type
// and scaled; a pack of 8 with one 16-byte store (and grad's loads) where the
// rows hold whole aligned packs (kPacks), else element by element (the general path).
template <typename scalar_t, typename residual_t, bool kPacks>
__global__ void __launch_bounds__(kThreads)
    drop_path_add_subset_backward_kernel(const residual_t* grad, const int64_t* samples, scalar_t* grad_kept,
                                         FastDivisor<uint32_t> columns, int64_t row, int32_t count,
                                         DropoutFactors<scalar_t> factors) {
  const int32_t packs = (count + kElementsPerBlock - 1) / kElementsPerBlock;
  for (int32_t pack = static_cast<int32_t>(first_pack()); pack < packs; pack += static_cast<int32_t>(pack_stride())) {
    const uint32_t first = static_cast<uint32_t>(pack) * kElementsPerBlock;
    uint32_t kept = columns.quotient(first), column = first - kept * columns.divisor;
    if constexpr (kPacks) {
      const Pack8<residual_t> g = load_pack(grad + samples[kept] * row + column);
      Pack8<scalar_t> result;
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        result.value[lane] = apply_dropout<false>(static_cast<scalar_t>(g.value[lane]), true, factors);
      }
      store_pack(grad_kept + kept * row + column, result);
    } else if (!rare(column + kElementsPerBlock > columns.divisor ||
                     first + kElementsPerBlock > static_cast<uint32_t>(count))) {
      // Rows of any length or alignment: a pack within one row, element by element.
      const residual_t* g = grad + samples[kept] * row + column;
      scalar_t* o = grad_kept + kept * row + column;
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        o[lane] = apply_dropout<false>(static_cast<scalar_t>(g[lane]), true, factors);
      }
    } else {  // a pack across rows, or the partial last one: each element located
      for (int lane = 0; lane < kElementsPerBlock && first + lane < static_cast<uint32_t>(count); ++lane) {
        kept = columns.quotient(first + lane);
        column = first + lane - kept * columns.divisor;
        grad_kept[kept * row + column] =
            apply_dropout<false>(static_cast<scalar_t>(grad[samples[kept] * row + column]), true, factors);
      }
    }
  }
}

// One element of the general kernels; residual for drop_path_add, whose
// dropped samples' branch is never read (out_t: the residual's type, else scalar_t).
template <bool kAffine, bool kResidual, typename scalar_t, typename out_t>
__device__ __forceinline__ void grouped_element(out_t* out, const scalar_t* in, const out_t* residual, bool kept,
                                                const DropoutFactors<scalar_t>& factors) {
  if constexpr (!kResidual) {
    *out = apply_dropout<kAffine>(*in, kept, factors);
  } else {
    *out = kept ? add_to_residual(*residual, apply_dropout<false>(*in, true, factors)) : *residual;
  }
}

// Any layout, walked in the output's memory order. A pack within one
// innermost row whose group does not change along the row makes one
// decision; any other pack decides and locates each element.
template <typename scalar_t, bool kAffine, int kOperands, typename out_t>
__global__ void __launch_bounds__(kThreads)
    grouped_strided_kernel(out_t* out, const scalar_t* in, const out_t* residual, StridedMap<kOperands> map,
                           int64_t group_base, int64_t numel, KernelRng rng_source, DropThreshold threshold,
                           DropoutFactors<scalar_t> factors) {
  constexpr int kGroup = kOperands - 1;
  constexpr bool kResidual = kOperands == 4;
  const RngState rng = rng_source.load();
  const int64_t packs = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  const bool one_group_per_row = map.inner_stride(kGroup) == 0;
  for (int64_t pack = first_pack(); pack < packs; pack += pack_stride()) {
    const int64_t first = pack * kElementsPerBlock;
    int32_t at[kOperands];
    const int32_t inner = map.locate(static_cast<int32_t>(first), at);
    if (!rare(!one_group_per_row || inner + kElementsPerBlock > map.inner_size() ||
              first + kElementsPerBlock > numel)) {
      const bool kept = keeps_group(static_cast<uint64_t>(group_base + at[kGroup]), threshold, rng);
      out_t* o = out + at[0];
      const scalar_t* x = in + at[1];
      const out_t* r = kResidual ? residual + at[2] : nullptr;
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        grouped_element<kAffine, kResidual>(o + lane * map.inner_stride(0), x + lane * map.inner_stride(1),
                                            kResidual ? r + lane * map.inner_stride(2) : nullptr, kept, factors);
      }
    } else {
#pragma unroll
      for (int lane = 0; lane < kElementsPerBlock; ++lane) {
        if (first + lane < numel) {
          map.locate(static_cast<int32_t>(first + lane), at);
          const bool kept = keeps_group(static_cast<uint64_t>(group_base + at[kGroup]), threshold, rng);
          grouped_element<kAffine, kResidual>(out + at[0], in + at[1], kResidual ? residual + at[2] : nullptr, kept,
                                              factors);
        }
      }
    }
  }
}

int grid_for(int64_t numel) { return grid_size((numel + kElementsPerBlock - 1) / kElementsPerBlock, kThreads); }

bool dense_alike(const at::Tensor& output, const std::vector<const at::Tensor*>& inputs) {
  if (!output.is_non_overlapping_and_dense() || !is_16_byte_aligned(output.data_ptr())) return false;
  for (const at::Tensor* tensor : inputs) {
    if (tensor->strides() != output.strides()) return false;
    if (!is_16_byte_aligned(tensor->const_data_ptr())) return false;
  }
  return true;
}

// Whether a dense layout (memory order, its last operand the group index) has
// rows of one group, each a whole number of packs (or is a single row).
template <int kOperands>
bool dense_rows(const StridedLayout<kOperands>& layout) {
  return layout.ndim <= 3 && layout.inner_stride(kOperands - 1) == 0 &&
         (layout.ndim <= 1 || layout.inner_size() % kElementsPerBlock == 0);
}

// Whether a dense layout is [A, B, C] with groups base + a * stride + c (channels innermost, the
// same for every b), C, the stride and the base multiples of 8: the channels kernel's.
bool dense_channels(const StridedLayout<3>& layout, int64_t base) {
  if (layout.ndim > 3 || layout.inner_stride(2) != 1 || layout.inner_size() % kElementsPerBlock != 0) return false;
  if (base % kElementsPerBlock != 0) return false;
  if (layout.ndim == 3 && layout.strides[2][1] != 0) return false;
  return layout.ndim == 1 || layout.strides[2][0] % kElementsPerBlock == 0;
}

// The channels kernel's view of a dense channels piece, and its work units (packs of channels at pixel pairs).
std::pair<ChannelPairs, int64_t> channel_pairs(const StridedLayout<3>& piece, int64_t first_group) {
  const int64_t channels = piece.sizes[piece.ndim - 1];
  const int64_t pixels = piece.ndim == 3 ? piece.sizes[1] : 1;
  const int64_t outer = piece.ndim >= 2 ? piece.sizes[0] : 1;
  const int64_t outer_group_stride = piece.ndim >= 2 ? piece.strides[2][0] : 0;
  ChannelPairs pairs{FastDivisor<uint32_t>(channels / kElementsPerBlock), FastDivisor<uint32_t>((pixels + 1) / 2),
                     static_cast<uint32_t>(pixels), static_cast<uint32_t>(outer_group_stride / kElementsPerBlock),
                     first_group / kElementsPerBlock};
  return {pairs, outer * ((pixels + 1) / 2) * (channels / kElementsPerBlock)};
}

template <int kOperands>
using Offsets = std::array<int64_t, static_cast<size_t>(kOperands)>;

// Calls launch(piece, base, count) over pieces of a layout that each satisfy
// fits(piece, count) (32-bit indices and offsets), halving the outermost dim
// until they do. base[k] is where operand k's piece starts (for the last
// operand, the decision index: decisions depend on it alone, so any split
// keeps them). A one-dim layout splits at whole packs, down to pieces of 16
// elements; only a decision index that steps by more than 2^27 per element
// (indexed_dropout) splits it further, for the strided kernel alone.
template <int kOperands, typename Fits, typename Launch>
void for_each_piece(const StridedLayout<kOperands>& layout, int64_t numel, const Offsets<kOperands>& base,
                    const Fits& fits, const Launch& launch) {
  if (numel == 0 || fits(layout, numel)) {  // an empty layout once: its forward's launch records rng_state
    launch(layout, base, numel);
    return;
  }
  StridedLayout<kOperands> piece = layout;
  const int64_t rows = layout.sizes[0];
  TORCH_INTERNAL_ASSERT(layout.ndim > 1 || rows > 1, "fastdrop: a piece that no split fits");
  if (rows == 1) {  // the outermost dim is spent: go on with the next one
    piece.ndim = layout.ndim - 1;
    for (int d = 0; d < piece.ndim; ++d) {
      piece.sizes[d] = layout.sizes[d + 1];
      for (int k = 0; k < kOperands; ++k) piece.strides[k][d] = layout.strides[k][d + 1];
    }
    for_each_piece(piece, numel, base, fits, launch);
    return;
  }
  const int64_t row = numel / rows;
  const int64_t half = layout.ndim == 1 && rows > 2 * kElementsPerBlock
                           ? std::max<int64_t>(kElementsPerBlock, rows / 2 / kElementsPerBlock * kElementsPerBlock)
                           : rows / 2;
  Offsets<kOperands> second = base;
  for (int k = 0; k < kOperands; ++k) second[k] += half * layout.strides[k][0];
  piece.sizes[0] = half;
  for_each_piece(piece, half * row, base, fits, launch);
  piece.sizes[0] = rows - half;
  for_each_piece(piece, (rows - half) * row, second, fits, launch);
}

// Dense kernels index a piece's elements and decision indices (less its base) in 32 bits.
template <int kOperands>
bool fits_dense_groups(const StridedLayout<kOperands>& piece, int64_t count) {
  int64_t reach = 0;
  for (int d = 0; d < piece.ndim; ++d) reach += (piece.sizes[d] - 1) * piece.strides[kOperands - 1][d];
  return count <= max_kernel_index() && reach <= max_kernel_index();
}

// The group operand of a dense piece (at most 3 dims), for the dense kernels.
template <int kOperands>
DenseGroups dense_groups_of(const StridedLayout<kOperands>& piece, const Offsets<kOperands>& base) {
  DenseGroups groups{};
  for (int d = 0; d < 3; ++d) {  // innermost first; unused outer dims have size 1
    const bool used = d < piece.ndim;
    if (d < 2) groups.sizes[d] = FastDivisor<uint32_t>(used ? piece.sizes[piece.ndim - 1 - d] : 1);
    groups.strides[d] = used ? static_cast<uint32_t>(piece.strides[kOperands - 1][piece.ndim - 1 - d]) : 0;
  }
  groups.base = base[kOperands - 1];
  return groups;
}

template <int kOperands>
Offsets<kOperands> first_offsets(int64_t index_base) {
  Offsets<kOperands> base{};
  base[kOperands - 1] = index_base;
  return base;
}

template <typename scalar_t, bool kAffine, int kOperands, typename out_t>
void launch_grouped_strided(const StridedLayout<kOperands>& layout, int64_t index_base, out_t* out, const scalar_t* in,
                            const out_t* residual, int64_t numel, const KernelRng& rng, const DropThreshold& threshold,
                            const DropoutFactors<scalar_t>& factors) {
  auto fits = [](const StridedLayout<kOperands>& piece, int64_t count) {
    return fits_strided_map(piece, count, kOperands - 1);
  };
  for_each_piece(layout, numel, first_offsets<kOperands>(index_base), fits,
                 [&](const StridedLayout<kOperands>& piece, const auto& base, int64_t count) {
                   FASTDROP_LAUNCH(grid_for(count), kThreads, current_stream(),
                                   grouped_strided_kernel<scalar_t, kAffine, kOperands, out_t>)(
                       out + base[0], in + base[1], kOperands == 4 ? residual + base[2] : nullptr,
                       StridedMap<kOperands>(piece), base[kOperands - 1], count, rng, threshold, factors);
                   check_launch();
                 });
}

// The grouped layout where the kernels take it: up to 4 dims, any size or
// reach (in pieces, which halve down to 16 elements of the innermost dim; a
// piece of 16 reaches 23 inner strides of a data operand); else none, and
// with_layout runs the op on contiguous copies.
template <int kOperands, size_t kTensors>
std::optional<StridedLayout<kOperands>> kernel_layout(const std::array<at::Tensor, kTensors>& tensors,
                                                      const DecisionIndex& index) {
  const auto layout = grouped_layout<kOperands>(tensors, index);
  if (!layout || layout->ndim > StridedMap<kOperands>::kDims) return std::nullopt;
  for (int k = 0; k < kOperands - 1; ++k) {
    if (3 * kElementsPerBlock * layout->inner_stride(k) > max_kernel_index()) return std::nullopt;
  }
  return layout;
}

void run_grouped(Variant variant, double p, const DecisionIndex& index, const at::Tensor& input, at::Tensor& output,
                 const KernelRng& rng) {
  const DropThreshold threshold = drop_threshold(p);
  const int64_t numel = input.numel();
  auto make = [&index](const std::array<at::Tensor, 2>& t) { return kernel_layout<3>(t, index); };
  with_layout<2>({output, input}, make, [&](const StridedLayout<3>& layout, const auto& t) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_grouped_cuda", [&] {
      const auto factors = dropout_factors<scalar_t>(variant, p);
      const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
      scalar_t* out = t[0].template data_ptr<scalar_t>();
      const bool dense = dense_alike(t[0], {&t[1]});
      const bool rows = dense && dense_rows(layout), channels = dense && !rows && dense_channels(layout, index.base);
      with_affine(is_affine(variant, p), [&](auto affine) {
        constexpr bool kAffine = decltype(affine)::value;
        if (!rows && !channels) {
          launch_grouped_strided<scalar_t, kAffine>(layout, index.base, out, in, static_cast<const scalar_t*>(nullptr),
                                                    numel, rng, threshold, factors);
          return;
        }
        for_each_piece(layout, numel, first_offsets<3>(index.base), fits_dense_groups<3>,
                       [&](const StridedLayout<3>& piece, const auto& base, int64_t count) {
                         const int grid = grid_for(count);
                         const cudaStream_t stream = current_stream();
                         if (rows) {
                           FASTDROP_LAUNCH(grid, kThreads, stream, grouped_rows_kernel<scalar_t, kAffine>)(
                               in + base[1], out + base[0], dense_groups_of(piece, base), static_cast<int32_t>(count),
                               rng, threshold, factors);
                         } else {
                           const auto [pairs, units] = channel_pairs(piece, base[2]);
                           FASTDROP_LAUNCH(grid_size(units, kThreads), kThreads, stream,
                                           grouped_channels_kernel<scalar_t, kAffine>)(
                               in + base[1], out + base[0], pairs, static_cast<int32_t>(units), rng, threshold,
                               factors);
                         }
                         check_launch();
                       });
      });
    });
  });
}

// One decision per group of the first group_dims dims.
auto grouped_kernel(Variant variant, double p, int64_t group_dims) {
  return [variant, p, group_dims](const at::Tensor& input, at::Tensor& output, const KernelRng& rng) {
    run_grouped(variant, p, leading_dims_index(input.sizes(), group_dims), input, output, rng);
  };
}

// Decisions at any strided index (indexed_dropout).
auto indexed_kernel(Variant variant, double p, const DecisionIndex& index) {
  return [variant, p, &index](const at::Tensor& input, at::Tensor& output, const KernelRng& rng) {
    if (input.numel() == 0) {  // launched all the same: the launch records rng_state
      run_grouped(variant, p, index, input, output, rng);
      return;
    }
    for_each_layout_slice<2>({output, input}, index, StridedMap<3>::kDims,
                             [&](const auto& t, const DecisionIndex& slice_index) {
                               at::Tensor slice_output = t[0];
                               run_grouped(variant, p, slice_index, t[1], slice_output, rng);
                             });
  };
}

auto drop_path_add_kernel(const at::Tensor& residual, Variant variant, double p) {
  return [&residual, variant, p](const at::Tensor& branch, at::Tensor& output, const KernelRng& rng) {
    const DropThreshold threshold = drop_threshold(p);
    const int64_t numel = branch.numel();
    const DecisionIndex samples = leading_dims_index(branch.sizes(), 1);
    auto make = [&samples](const std::array<at::Tensor, 3>& t) { return kernel_layout<4>(t, samples); };
    with_layout<3>({output, branch, residual}, make, [&](const StridedLayout<4>& layout, const auto& t) {
      with_branch_and_residual_types(
          branch.scalar_type(), residual.scalar_type(), [&](auto branch_type, auto residual_type) {
            using scalar_t = typename decltype(branch_type)::type;
            using residual_t = typename decltype(residual_type)::type;
            const auto factors = dropout_factors<scalar_t>(variant, p);
            const scalar_t* x = t[1].template const_data_ptr<scalar_t>();
            const residual_t* r = t[2].template const_data_ptr<residual_t>();
            residual_t* out = t[0].template data_ptr<residual_t>();
            const bool dense = dense_alike(t[0], {&t[1], &t[2]}) && dense_rows(layout);
            if (!dense) {
              launch_grouped_strided<scalar_t, false>(layout, 0, out, x, r, numel, rng, threshold, factors);
              return;
            }
            for_each_piece(layout, numel, Offsets<4>{}, fits_dense_groups<4>,
                           [&](const StridedLayout<4>& piece, const auto& base, int64_t count) {
                             FASTDROP_LAUNCH(grid_for(count), kThreads, current_stream(),
                                             drop_path_add_dense_kernel<scalar_t, residual_t>)(
                                 x + base[1], r + base[2], out + base[0], dense_groups_of(piece, base),
                                 static_cast<int32_t>(count), rng, threshold, factors);
                             check_launch();
                           });
          });
    });
  };
}

// The pieces of `rows` rows of `row` elements that 32-bit indices reach: whole
// rows, or a long row's columns. piece(first_row, rows_in_piece, column, width)
// for each, with the piece's element count n * width below 2^31.
template <typename Piece>
void for_each_row_piece(int64_t rows, int64_t row, const Piece& piece) {
  const int64_t columns = std::min(row, max_kernel_index());
  const int64_t rows_per_piece = std::max<int64_t>(1, max_kernel_index() / columns);
  for (int64_t first = 0; first < rows; first += rows_per_piece) {
    for (int64_t column = 0; column < row; column += columns) {
      piece(first, std::min(rows_per_piece, rows - first), column, std::min(columns, row - column));
    }
  }
}

// The row of branch_kept that holds each sample's branch, or -1 (a dropped
// sample), built on the device; bounds are index_put_'s checks, and a sample
// named twice fails an asynchronous assert (no host sync).
at::Tensor kept_rows_of(const at::Tensor& indices, int64_t batch) {
  const int64_t kept = indices.numel();
  at::Tensor rows = at::full({batch}, -1, indices.options());
  rows.index_put_({indices}, at::arange(kept, indices.options()));
  at::_assert_async(rows.ge(0).sum().eq(kept), "fastdrop.drop_path_add_subset: a sample appears twice in indices");
  return rows;
}

// residual + drop_path(branch) from the kept samples' branches
// (drop_path_add_subset), launched in pieces of whole samples (or of a long
// sample's columns) that 32-bit indices reach.
auto subset_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& residual, const at::Tensor& branch_kept, const at::Tensor& indices,
                      at::Tensor& output) {
    const int64_t batch = residual.size(0), row = residual.numel() / batch;
    const at::Tensor kept_rows = kept_rows_of(indices, batch);
    const int64_t* rows = kept_rows.const_data_ptr<int64_t>();
    with_sample_blocks(residual, branch_kept, output, [&](const at::Tensor& r, const at::Tensor& b, at::Tensor& o) {
      with_branch_and_residual_types(b.scalar_type(), r.scalar_type(), [&](auto branch_type, auto residual_type) {
        using scalar_t = typename decltype(branch_type)::type;
        using residual_t = typename decltype(residual_type)::type;
        const auto factors = dropout_factors<scalar_t>(variant, p);
        residual_t* out = o.template data_ptr<residual_t>();
        const residual_t* res = r.template const_data_ptr<residual_t>();
        const scalar_t* in = b.template const_data_ptr<scalar_t>();
        for_each_row_piece(batch, row, [&](int64_t sample, int64_t n, int64_t column, int64_t width) {
          const int64_t at = sample * row + column, count = n * width;
          const bool packs = width % kElementsPerBlock == 0 && row % kElementsPerBlock == 0 &&
                             is_16_byte_aligned(out + at) && is_16_byte_aligned(res + at) &&
                             is_16_byte_aligned(in + column);
          const auto launch = [&](auto kernel) {
            FASTDROP_LAUNCH(grid_size((count + kElementsPerBlock - 1) / kElementsPerBlock, kThreads), kThreads,
                            current_stream(), kernel)(in + column, res + at, out + at, rows + sample,
                                                      FastDivisor<uint32_t>(width), row, static_cast<int32_t>(count),
                                                      factors);
            check_launch();
          };
          if (packs) {
            launch(drop_path_add_subset_kernel<scalar_t, residual_t, true>);
          } else {
            launch(drop_path_add_subset_kernel<scalar_t, residual_t, false>);
          }
        });
      });
    });
  };
}

// drop_path_add_subset's gradient of branch_kept, in pieces as subset_kernel's.
// A sample index out of range fails an asynchronous assert before the kernel reads.
auto subset_backward_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& grad, const at::Tensor& indices, at::Tensor& grad_kept) {
    const int64_t batch = grad.size(0), row = grad.numel() / batch, kept = grad_kept.size(0);
    const at::Tensor source = grad.contiguous(grad_kept.suggest_memory_format());
    const at::Tensor samples = indices.contiguous();
    at::_assert_async(samples.ge(0).logical_and(samples.lt(batch)).all(),
                      "fastdrop.drop_path_add_subset_backward: a sample index is out of bounds for the batch");
    with_branch_and_residual_types(
        grad_kept.scalar_type(), grad.scalar_type(), [&](auto branch_type, auto residual_type) {
          using scalar_t = typename decltype(branch_type)::type;
          using residual_t = typename decltype(residual_type)::type;
          const auto factors = dropout_factors<scalar_t>(variant, p);
          scalar_t* out = grad_kept.template data_ptr<scalar_t>();
          const residual_t* in = source.template const_data_ptr<residual_t>();
          const int64_t* sample = samples.const_data_ptr<int64_t>();
          for_each_row_piece(kept, row, [&](int64_t first, int64_t n, int64_t column, int64_t width) {
            const int64_t at = first * row + column, count = n * width;
            const bool packs = width % kElementsPerBlock == 0 && row % kElementsPerBlock == 0 &&
                               is_16_byte_aligned(out + at) && is_16_byte_aligned(in + column);
            const auto launch = [&](auto kernel) {
              FASTDROP_LAUNCH(grid_size((count + kElementsPerBlock - 1) / kElementsPerBlock, kThreads), kThreads,
                              current_stream(), kernel)(in + column, sample + first, out + at,
                                                        FastDivisor<uint32_t>(width), row, static_cast<int32_t>(count),
                                                        factors);
              check_launch();
            };
            if (packs) {
              launch(drop_path_add_subset_backward_kernel<scalar_t, residual_t, true>);
            } else {
              launch(drop_path_add_subset_backward_kernel<scalar_t, residual_t, false>);
            }
          });
        });
  };
}

}  // namespace

#include "../entry_points/grouped.inc"
#include "../entry_points/indexed.inc"

}  // namespace fastdrop::cuda

// A CUDA build registers the kernels for CUDA tensors; the emulated device's
// build (tests/emulated_cuda.py) for the CPU tensors of its own namespace.
#if defined(FASTDROP_EMULATE_CUDA)
TORCH_LIBRARY_IMPL(fastdrop_emulated, CPU, m) {
  fastdrop::cuda::register_grouped_kernels(m);
  fastdrop::cuda::register_indexed_kernels(m);
}
#else
TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) {
  fastdrop::cuda::register_grouped_kernels(m);
  fastdrop::cuda::register_indexed_kernels(m);
}
#endif
