// Grouped decisions on the CPU: one decision per group of leading dims (see
// DecisionIndex) applied to all its elements: feature dropout and feature
// alpha dropout (per channel), drop path and stochastic depth (per sample, or
// once per batch), drop_path_add (residual + drop_path(branch)), which never
// reads a dropped sample's branch, and indexed_dropout, whose decision index
// is any strided function of the element's position. The kernels walk memory
// order; no mask is stored: decisions are drawn per run, a Philox block at a time.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../dropout_math.h"
#include "../residual_types.h"
#include "../decisions.h"
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

// The bits of groups first, first + stride, ... (n of them, n <= kBitsChunk), ties resolved, in a
// buffer of kBitsChunk + 2 * kElementsPerBlock values; returns where they start in it.
const uint16_t* draw_group_bits(GroupBits& group_bits, uint64_t first, int64_t stride, int64_t n, RngState rng,
                                const DropThreshold& threshold, uint16_t* buffer) {
  if (stride != 1) {
    for (int64_t i = 0; i < n; ++i) buffer[i] = group_bits(first + static_cast<uint64_t>(i * stride));
    return buffer;
  }
  // Consecutive groups (channels_last, NCHW rows): whole Philox blocks at SIMD speed.
  const uint64_t first_block = first / kElementsPerBlock;
  const uint64_t last_block = (first + n - 1) / kElementsPerBlock;
  fill_element_bits(rng.seed, rng.offset / 4, first_block, static_cast<int64_t>(last_block - first_block + 1), buffer);
  uint16_t* bits = buffer + (first - first_block * kElementsPerBlock);
  resolve_ties(bits, n, first, threshold, rng);
  return bits;
}

// Whether every data operand (all but the last, the decision index) is contiguous along the inner dim.
template <int kOperands>
bool contiguous_rows(const StridedLayout<kOperands>& layout) {
  for (int k = 0; k < kOperands - 1; ++k) {
    if (layout.inner_stride(k) != 1) return false;
  }
  return true;
}

// Layouts of contiguous rows with one decision each (NCHW channels, samples: (rows, row_size) with the
// index (s, 0)): apply_rows(first_row, rows, row_bits) over chunks of rows, their decisions drawn
// together. Threads split whole rows. False (nothing done) for other layouts, and for too few rows to
// split evenly.
template <int kOperands, typename ApplyRows>
bool parallel_uniform_rows(const StridedLayout<kOperands>& layout, int64_t base, RngState rng,
                           const DropThreshold& threshold, const ApplyRows& apply_rows) {
  if (layout.ndim != 2 || !contiguous_rows(layout) || layout.inner_stride(kOperands - 1) != 0) return false;
  const int64_t rows = layout.sizes[0], row_size = layout.sizes[1];
  // A few long rows (drop path on a small batch) split unevenly by rows: threads split elements instead.
  if (rows < 16 * at::get_num_threads()) return false;
  const int64_t group_stride = layout.strides[kOperands - 1][0];
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / row_size), [&](int64_t begin, int64_t end) {
    GroupBits group_bits(rng, threshold);
    alignas(64) uint16_t buffer[kBitsChunk + 2 * kElementsPerBlock];
    for (int64_t row = begin; row < end; row += kBitsChunk) {
      const int64_t n = std::min(kBitsChunk, end - row);
      const uint64_t first = static_cast<uint64_t>(base + row * group_stride);
      apply_rows(row, n, draw_group_bits(group_bits, first, group_stride, n, rng, threshold, buffer));
    }
  });
  return true;
}

// Layouts whose rows all take the same run of decisions, one per element, within each outer index
// (channels_last's (N, H * W, C) with the index (C, 0, 1), or (H * W, C) with (0, 1) for one sample):
// apply_rows(outer, first_row, rows, column, columns, bits) with the bits of that outer index's
// groups [column, column + columns), drawn once for all its rows. False (nothing done) for other layouts.
template <int kOperands, typename ApplyRows>
bool parallel_shared_rows(const StridedLayout<kOperands>& layout, int64_t base, RngState rng,
                          const DropThreshold& threshold, const ApplyRows& apply_rows) {
  if (layout.ndim < 2 || layout.ndim > 3 || !contiguous_rows(layout)) return false;
  const int64_t* index = layout.strides[kOperands - 1];
  const int d = layout.ndim - 2;  // the rows' dim
  if (index[d] != 0 || index[d + 1] != 1) return false;
  const int64_t outer = d == 1 ? layout.sizes[0] : 1, outer_stride = d == 1 ? index[0] : 0;
  const int64_t rows = layout.sizes[d], row_size = layout.sizes[d + 1];
  // Rows longer than a bits buffer (a locked dropout's (B * H) features) go in
  // column chunks, each chunk's bits drawn once for all its rows.
  const int64_t chunks = (row_size + kBitsChunk - 1) / kBitsChunk;
  const int64_t chunk_size = std::min(row_size, kBitsChunk);
  at::parallel_for(0, outer * chunks * rows, std::max<int64_t>(1, kGrainElements / chunk_size),
                   [&](int64_t begin, int64_t end) {
                     GroupBits group_bits(rng, threshold);
                     alignas(64) uint16_t buffer[kBitsChunk + 2 * kElementsPerBlock];
                     for (int64_t item = begin; item < end;) {
                       const int64_t o = item / (chunks * rows), chunk = item / rows % chunks;
                       const int64_t first_row = item % rows, n = std::min(rows - first_row, end - item);
                       const int64_t column = chunk * kBitsChunk, columns = std::min(kBitsChunk, row_size - column);
                       const uint64_t first = static_cast<uint64_t>(base + o * outer_stride + column);
                       apply_rows(o, first_row, n, column, columns,
                                  draw_group_bits(group_bits, first, 1, columns, rng, threshold, buffer));
                       item += n;
                     }
                   });
  return true;
}

// Calls apply(offsets, count, bits) for the runs of any layout (whose last
// operand is the decision index, less `base`); bits[i] are the contract bits
// of the i-th element's decision, ties resolved. Runs inside one group get a
// single value (bits_stride 0).
template <int kOperands, typename Apply>
void parallel_group_runs(const StridedLayout<kOperands>& layout, int64_t numel, int64_t base, RngState rng,
                         const DropThreshold& threshold, const Apply& apply) {
  const int64_t group_stride = layout.inner_stride(kOperands - 1);
  at::parallel_for(0, numel, kGrainElements, [&](int64_t begin, int64_t end) {
    GroupBits group_bits(rng, threshold);  // one per thread's range: neighbouring runs share Philox blocks
    alignas(64) uint16_t buffer[kBitsChunk + 2 * kElementsPerBlock];
    LogicalCursor<kOperands> cursor;
    cursor.seek(layout, begin);
    walk_runs(layout, cursor, begin, end, [&](const int64_t* offsets, int64_t count, int64_t) {
      const uint64_t first_group = static_cast<uint64_t>(base + offsets[kOperands - 1]);
      if (group_stride == 0) {  // one group for the whole run
        const uint16_t run_bits = group_bits(first_group);
        apply(offsets, 0, count, &run_bits, true);
        return;
      }
      for (int64_t done = 0; done < count; done += kBitsChunk) {
        const int64_t n = std::min(kBitsChunk, count - done);
        const uint64_t group = first_group + static_cast<uint64_t>(done * group_stride);
        apply(offsets, done, n, draw_group_bits(group_bits, group, group_stride, n, rng, threshold, buffer), false);
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
      const int64_t* outer_out = layout.strides[0];
      const int64_t* outer_in = layout.strides[1];
      const int64_t row_size = layout.inner_size();
      const bool rows_done =
          parallel_uniform_rows(layout, index.base, rng, threshold,
                                [&](int64_t row, int64_t rows, const uint16_t* bits) {
                                  transform_uniform_rows(out + row * outer_out[0], outer_out[0], in + row * outer_in[0],
                                                         outer_in[0], row_size, rows, bits, compare, affine, factors);
                                }) ||
          parallel_shared_rows(
              layout, index.base, rng, threshold,
              [&](int64_t o, int64_t row, int64_t rows, int64_t column, int64_t columns, const uint16_t* bits) {
                const int d = layout.ndim - 2;
                const int64_t at_out = (d == 1 ? o * outer_out[0] : 0) + row * outer_out[d] + column;
                const int64_t at_in = (d == 1 ? o * outer_in[0] : 0) + row * outer_in[d] + column;
                transform_shared_rows(out + at_out, outer_out[d], in + at_in, outer_in[d], columns, rows, bits, compare,
                                      affine, factors);
              });
      if (rows_done) return;
      parallel_group_runs(layout, input.numel(), index.base, rng, threshold,
                          [&](const int64_t* at, int64_t done, int64_t count, const uint16_t* bits, bool uniform) {
                            scalar_t* o = out + at[0] + done * out_stride;
                            const scalar_t* i = in + at[1] + done * in_stride;
                            if (uniform) {
                              transform_uniform_run(o, out_stride, i, in_stride, count, is_kept(bits[0], compare),
                                                    affine, factors);
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
    for_each_layout_slice<2>({output, input}, index, kMaxLayoutDims,
                             [&](const auto& t, const DecisionIndex& slice_index) {
                               at::Tensor slice_output = t[0];
                               run_grouped(variant, p, slice_index, t[1], slice_output, rng);
                             });
  };
}

// residual + drop_path(branch), per sample; the residual and the output of the branch's type or a wider one.
auto drop_path_add_kernel(const at::Tensor& residual, Variant variant, double p) {
  return [&residual, variant, p](const at::Tensor& branch, at::Tensor& output, RngState rng) {
    const DropThreshold threshold = drop_threshold(p);
    const uint32_t compare = compare_bits(threshold);
    const DecisionIndex samples = leading_dims_index(branch.sizes(), 1);
    auto make = [&samples](const std::array<at::Tensor, 3>& t) { return grouped_layout<4>(t, samples); };
    with_layout<3>({output, branch, residual}, make, [&](const StridedLayout<4>& layout, const auto& t) {
      with_branch_and_residual_types(
          branch.scalar_type(), residual.scalar_type(), [&](auto branch_type, auto residual_type) {
            using scalar_t = typename decltype(branch_type)::type;
            using residual_t = typename decltype(residual_type)::type;
            const auto factors = dropout_factors<scalar_t>(variant, p);
            residual_t* out = t[0].template data_ptr<residual_t>();
            const scalar_t* in = t[1].template const_data_ptr<scalar_t>();
            const residual_t* res = t[2].template const_data_ptr<residual_t>();
            const int64_t so = layout.inner_stride(0), si = layout.inner_stride(1), sr = layout.inner_stride(2);
            const int64_t ro = layout.strides[0][0], ri = layout.strides[1][0], rr = layout.strides[2][0];
            const bool rows_done =
                parallel_uniform_rows(layout, 0, rng, threshold, [&](int64_t row, int64_t rows, const uint16_t* bits) {
                  add_uniform_rows(out + row * ro, ro, in + row * ri, ri, res + row * rr, rr, layout.inner_size(), rows,
                                   bits, compare, factors);
                });
            if (rows_done) return;
            parallel_group_runs(
                layout, branch.numel(), 0, rng, threshold,
                [&](const int64_t* at, int64_t done, int64_t count, const uint16_t* bits, bool uniform) {
                  residual_t* o = out + at[0] + done * so;
                  const scalar_t* i = in + at[1] + done * si;
                  const residual_t* r = res + at[2] + done * sr;
                  if (uniform) {
                    add_uniform_run(o, so, i, si, r, sr, count, is_kept(bits[0], compare), factors);
                    return;
                  }
                  // Samples change within the run (a layout with the batch dim innermost).
                  for (int64_t k = 0; k < count; ++k) {
                    add_uniform_run(o + k * so, so, i + k * si, si, r + k * sr, sr, 1, is_kept(bits[k], compare),
                                    factors);
                  }
                });
          });
    });
  };
}

// chunk(r, column, count) over `rows` rows of `row` elements, a row split into
// column chunks where long: threads take whole chunks, none of them tiny.
template <typename Chunk>
void parallel_row_chunks(int64_t rows, int64_t row, const Chunk& chunk) {
  const int64_t size = std::min(row, kGrainElements), chunks = (row + size - 1) / size;
  at::parallel_for(0, rows * chunks, std::max<int64_t>(1, kGrainElements / size), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t column = item % chunks * size;
      chunk(item / chunks, column, std::min(size, row - column));
    }
  });
}

// The row of branch_kept that holds each sample's branch, or -1 (a dropped sample).
std::vector<int64_t> kept_rows(const at::Tensor& indices, int64_t batch) {
  std::vector<int64_t> rows(batch, -1);
  const at::Tensor contiguous = indices.contiguous();
  const int64_t* samples = contiguous.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < contiguous.numel(); ++j) {
    const int64_t s = samples[j];
    TORCH_CHECK_INDEX(s >= 0 && s < batch, "fastdrop.drop_path_add_subset: index ", s,
                      " is out of bounds for a batch of ", batch);
    TORCH_CHECK(rows[s] < 0, "fastdrop.drop_path_add_subset: a sample appears twice in indices (", s, ")");
    rows[s] = j;
  }
  return rows;
}

// residual + drop_path(branch) from the kept samples' branches (drop_path_add_subset):
// each sample's block is the residual's, plus its scaled branch row where kept.
// Threads split samples, and long samples into column chunks.
auto subset_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& residual, const at::Tensor& branch_kept, const at::Tensor& indices,
                      at::Tensor& output) {
    const int64_t batch = residual.size(0), row = residual.numel() / batch;
    const std::vector<int64_t> rows = kept_rows(indices, batch);
    with_sample_blocks(residual, branch_kept, output, [&](const at::Tensor& r, const at::Tensor& b, at::Tensor& o) {
      with_branch_and_residual_types(b.scalar_type(), r.scalar_type(), [&](auto branch_type, auto residual_type) {
        using scalar_t = typename decltype(branch_type)::type;
        using residual_t = typename decltype(residual_type)::type;
        const auto factors = dropout_factors<scalar_t>(variant, p);
        residual_t* out = o.template data_ptr<residual_t>();
        const residual_t* res = r.template const_data_ptr<residual_t>();
        const scalar_t* in = b.template const_data_ptr<scalar_t>();
        parallel_row_chunks(batch, row, [&](int64_t s, int64_t column, int64_t count) {
          const int64_t kept_row = rows[s];
          add_uniform_contiguous(out + s * row + column, in + std::max<int64_t>(kept_row, 0) * row + column,
                                 res + s * row + column, count, kept_row >= 0, factors);
        });
      });
    });
  };
}

// drop_path_add_subset's gradient of branch_kept: each kept sample's row of
// grad (of grad_kept's memory format), cast to the branch's type and scaled.
auto subset_backward_kernel(Variant variant, double p) {
  return [variant, p](const at::Tensor& grad, const at::Tensor& indices, at::Tensor& grad_kept) {
    const int64_t batch = grad.size(0), row = grad.numel() / batch, kept = grad_kept.size(0);
    const at::Tensor source = grad.contiguous(grad_kept.suggest_memory_format());
    const at::Tensor samples = indices.contiguous();
    const int64_t* sample = samples.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < kept; ++j) {
      TORCH_CHECK_INDEX(sample[j] >= 0 && sample[j] < batch, "fastdrop.drop_path_add_subset_backward: index ",
                        sample[j], " is out of bounds for a batch of ", batch);
    }
    with_branch_and_residual_types(
        grad_kept.scalar_type(), grad.scalar_type(), [&](auto branch_type, auto residual_type) {
          using scalar_t = typename decltype(branch_type)::type;
          using residual_t = typename decltype(residual_type)::type;
          const auto factors = dropout_factors<scalar_t>(variant, p);
          scalar_t* out = grad_kept.template data_ptr<scalar_t>();
          const residual_t* in = source.template const_data_ptr<residual_t>();
          parallel_row_chunks(kept, row, [&](int64_t j, int64_t column, int64_t count) {
            narrow_kept_contiguous(out + j * row + column, in + sample[j] * row + column, count, factors);
          });
        });
  };
}

}  // namespace

#include "../entry_points/grouped.inc"
#include "../entry_points/indexed.inc"

}  // namespace fastdrop::cpu

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) {
  fastdrop::cpu::register_grouped_kernels(m);
  fastdrop::cpu::register_indexed_kernels(m);
}
