// Grouped decisions on the CPU: one decision per group of leading dims (see
// DecisionIndex) applied to all its elements: feature dropout and feature
// alpha dropout (per channel), drop path and stochastic depth (per sample, or
// once per batch), drop_path_add (residual + drop_path(branch)), which never
// reads a dropped sample's branch, and indexed_dropout, whose decision index
// is any strided function of the element's position. The kernels walk memory
// order; no mask is stored: decisions are drawn per run, a Philox block at a time.
#include <ATen/Dispatch.h>

#include "../dropout_math.h"
#include "../entry_points.h"
#include "element_walk.h"
#include "op_helpers.h"
#include "transform.h"

namespace fastdrop::cpu {
namespace {

// Contract bits of groups, ties resolved, a Philox block at a time,
// remembered between calls.
class GroupBits {
 public:
  GroupBits(RngState rng, const DropThreshold& threshold) : rng_(rng), threshold_(threshold) {}

  uint16_t operator()(uint64_t group) {
    const uint64_t block = group / kElementsPerBlock;
    if (block != block_) {
      block_ = block;
      bits_ = contract_block(rng_.seed, rng_.offset, block);
    }
    const uint32_t bits = element_bits(bits_, static_cast<int>(group % kElementsPerBlock));
    if (bits != threshold_.high) return static_cast<uint16_t>(bits);
    return static_cast<uint16_t>(resolved_tie_bits(keeps_on_tie(rng_.seed, rng_.offset, group, threshold_.remainder)));
  }

 private:
  RngState rng_;
  DropThreshold threshold_;
  uint64_t block_ = ~uint64_t(0);
  PhiloxBlock bits_{};
};

// Calls apply(offsets, count, bits) for the runs of the layout (whose last
// operand is the decision index, less `base`); bits[i] are the contract bits
// of the i-th element's decision, ties resolved. Runs inside one group get a
// single value (bits_stride 0).
template <int kOperands, typename Apply>
void parallel_group_runs(const StridedLayout<kOperands>& layout, int64_t numel, int64_t base, RngState rng,
                         const DropThreshold& threshold, const Apply& apply) {
  const int64_t group_stride = layout.inner_stride(kOperands - 1);
  at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
    GroupBits group_bits(rng, threshold);  // one per thread's range: neighbouring runs share Philox blocks
    alignas(64) uint16_t bits[kBitsChunk + 2 * kElementsPerBlock];
    LogicalCursor<kOperands> cursor;
    cursor.seek(layout, begin);
    walk_runs(layout, cursor, begin, end, [&](const int64_t* offsets, int64_t count, int64_t) {
      const uint64_t first_group = static_cast<uint64_t>(base + offsets[kOperands - 1]);
      if (group_stride == 0) {  // one group for the whole run (NCHW channels, samples)
        const uint16_t run_bits = static_cast<uint16_t>(group_bits(first_group));
        apply(offsets, 0, count, &run_bits, true);
        return;
      }
      for (int64_t done = 0; done < count; done += kBitsChunk) {
        const int64_t n = std::min(kBitsChunk, count - done);
        const uint64_t group = first_group + static_cast<uint64_t>(done * group_stride);
        const uint16_t* run_bits = bits;
        if (group_stride == 1) {  // consecutive groups (channels_last): whole blocks at SIMD speed
          const uint64_t first_block = group / kElementsPerBlock;
          const uint64_t last_block = (group + n - 1) / kElementsPerBlock;
          fill_element_bits(rng.seed, rng.offset / 4, first_block, static_cast<int64_t>(last_block - first_block + 1),
                            bits);
          run_bits = bits + (group - first_block * kElementsPerBlock);
          resolve_ties(bits + (group - first_block * kElementsPerBlock), n, group, threshold, rng);
        } else {
          for (int64_t i = 0; i < n; ++i) bits[i] = static_cast<uint16_t>(group_bits(group + i * group_stride));
        }
        apply(offsets, done, n, run_bits, false);
      }
    });
  });
}

void run_grouped(Variant variant, double p, const DecisionIndex& index, const at::Tensor& input, at::Tensor& output,
                 RngState rng) {
  const DropThreshold threshold = drop_threshold(p);
  const uint32_t compare = compare_bits(threshold);
  const bool affine = is_affine(variant, p);
  auto make = [&index](const std::array<at::Tensor, 2>& t) { return grouped_layout<3>(t, index); };
  with_layout<2>({output, input}, make, [&](const StridedLayout<3>& layout, const auto& t) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastdrop_grouped_cpu", [&] {
      const auto factors = dropout_factors<scalar_t>(variant, p);
      scalar_t* out = t[0].template data_ptr<scalar_t>();
      const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
      const int64_t out_stride = layout.inner_stride(0), in_stride = layout.inner_stride(1);
      parallel_group_runs(layout, input.numel(), index.base, rng, threshold,
                          [&](const int64_t* at, int64_t done, int64_t count, const uint16_t* bits, bool uniform) {
                            scalar_t* o = out + at[0] + done * out_stride;
                            const scalar_t* i = in + at[1] + done * in_stride;
                            if (uniform) {
                              transform_uniform_run(o, out_stride, i, in_stride, count,
                                                    is_kept(bits[0], compare), affine, factors);
                            } else {
                              transform_run(o, out_stride, i, in_stride, bits, count, compare, affine, factors);
                            }
                          });
    });
  });
}

// One decision per group of the first group_dims dims.
auto grouped_kernel(Variant variant, double p, int64_t group_dims) {
  return [variant, p, group_dims](const at::Tensor& input, at::Tensor& output, RngState rng) {
    run_grouped(variant, p, leading_dims_index(input.sizes(), group_dims), input, output, rng);
  };
}

// Decisions at any strided index (indexed_dropout).
auto indexed_kernel(Variant variant, double p, const DecisionIndex& index) {
  return [variant, p, &index](const at::Tensor& input, at::Tensor& output, RngState rng) {
    for_each_layout_slice<2>({output, input}, index, kMaxLayoutDims, [&](const auto& t, const DecisionIndex& slice_index) {
      at::Tensor slice_output = t[0];
      run_grouped(variant, p, slice_index, t[1], slice_output, rng);
    });
  };
}

// residual + drop_path(branch), per sample.
auto drop_path_add_kernel(const at::Tensor& residual, Variant variant, double p) {
  return [&residual, variant, p](const at::Tensor& branch, at::Tensor& output, RngState rng) {
    const DropThreshold threshold = drop_threshold(p);
    const uint32_t compare = compare_bits(threshold);
    const DecisionIndex samples = leading_dims_index(branch.sizes(), 1);
    auto make = [&samples](const std::array<at::Tensor, 3>& t) { return grouped_layout<4>(t, samples); };
    with_layout<3>({output, branch, residual}, make, [&](const StridedLayout<4>& layout, const auto& t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, branch.scalar_type(), "fastdrop_drop_path_add_cpu", [&] {
        const auto factors = dropout_factors<scalar_t>(variant, p);
        scalar_t* out = t[0].template data_ptr<scalar_t>();
        const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
        const scalar_t* res = t[2].template const_data_ptr<scalar_t>();
        const int64_t so = layout.inner_stride(0), si = layout.inner_stride(1), sr = layout.inner_stride(2);
        parallel_group_runs(layout, branch.numel(), 0, rng, threshold,
                            [&](const int64_t* at, int64_t done, int64_t count, const uint16_t* bits, bool uniform) {
                              scalar_t* o = out + at[0] + done * so;
                              const scalar_t* i = in + at[1] + done * si;
                              const scalar_t* r = res + at[2] + done * sr;
                              if (uniform) {
                                add_uniform_run(o, so, i, si, r, sr, count, is_kept(bits[0], compare), factors);
                                return;
                              }
                              // Samples change within the run (a layout with the batch dim innermost).
                              for (int64_t k = 0; k < count; ++k) {
                                add_uniform_run(o + k * so, so, i + k * si, si, r + k * sr, sr, 1,
                                                is_kept(bits[k], compare), factors);
                              }
                            });
      });
    });
  };
}

}  // namespace

FASTDROP_GROUPED_ENTRY_POINTS
FASTDROP_INDEXED_ENTRY_POINTS

}  // namespace fastdrop::cpu
