// What each operator decides per, and the checks of its decision index: the
// groups of channel dropout and drop path, drop path's and indexed_dropout's
// variants, indexed_dropout's strides. Used by every device's entry points
// (entry_points/*.inc) and the Meta kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include "block_mask.h"
#include "dropout_math.h"
#include "layout_builder.h"

namespace fastdrop {

constexpr int64_t kChannelGroups = 2;  // feature dropout: one decision per (n, c)

inline Variant drop_path_variant(bool scale_by_keep) {
  return scale_by_keep ? Variant::kScaleRounded : Variant::kUnscaled;
}

// Group dims of drop path: 1 (each sample) or 0 (the whole batch at once).
inline int64_t drop_path_groups(const at::Tensor& input, bool per_sample) {
  TORCH_CHECK(!per_sample || input.dim() >= 1,
              "fastdrop.drop_path: per-sample drop path needs a batch dim, but got a 0-D tensor");
  return per_sample ? 1 : 0;
}

// indexed_dropout's variants, by the operator whose scaling they apply.
inline Variant indexed_variant(c10::string_view name, bool backward) {
  if (name == "dropout") return Variant::kScaleOpMath;
  if (name == "feature_dropout") return Variant::kScaleRounded;
  if (name == "alpha_dropout") return backward ? Variant::kAlphaScale : Variant::kAlphaAffine;
  if (name == "unscaled") return Variant::kUnscaled;
  TORCH_CHECK_VALUE(false,
                    "fastdrop.indexed_dropout: variant must be 'dropout', 'feature_dropout', 'alpha_dropout' or "
                    "'unscaled', but got '",
                    name, "'");
}

// The decision index of indexed_dropout: one non-negative stride per dim, a
// non-negative base, every index below 2^59 (the contract's range).
inline DecisionIndex checked_decision_index(const at::Tensor& input, at::IntArrayRef strides, int64_t base,
                                            const char* op) {
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == input.dim(), "fastdrop.", op,
              ": index_strides must have one stride per dim of the input (", input.dim(), "), but got ",
              strides.size());
  constexpr int64_t kIndexLimit = int64_t(1) << 59;
  TORCH_CHECK(base >= 0 && base < kIndexLimit, "fastdrop.", op, ": index_base must be in [0, 2^59), but got ", base);
  int64_t last = base;
  bool overflows = false;
  for (size_t d = 0; d < strides.size(); ++d) {
    TORCH_CHECK(strides[d] >= 0, "fastdrop.", op, ": index_strides must be non-negative, but got ", strides);
    int64_t reach = 0;
    overflows |= c10::mul_overflows(input.size(d) - 1, strides[d], &reach) || c10::add_overflows(last, reach, &last);
  }
  TORCH_CHECK(input.numel() == 0 || (!overflows && last < kIndexLimit), "fastdrop.", op,
              ": the largest decision index must be below 2^59, but index_base ", base, " and index_strides ", strides,
              " reach past it for shape ", input.sizes());
  return {at::DimVector(strides), base};
}

// drop_block's input, (N, C, H, W) or (N, C, D, H, W), and its block: a
// positive size per spatial dim.
inline void check_block_input(const at::Tensor& input, at::IntArrayRef block_size, const char* op) {
  TORCH_CHECK_VALUE(input.dim() == 4 || input.dim() == 5, "fastdrop.", op,
                    ": input must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), but got ", input.dim(), " dims");
  TORCH_CHECK_VALUE(static_cast<int64_t>(block_size.size()) == input.dim() - 2, "fastdrop.", op,
                    ": block_size must have one size per spatial dim (", input.dim() - 2, "), but got ", block_size);
  for (const int64_t size : block_size) {
    TORCH_CHECK_VALUE(size >= 1, "fastdrop.", op, ": block_size must be positive, but got ", block_size);
  }
}

// drop_block's scale argument: 'input', 'float' or 'none' (BlockScale).
inline BlockScale block_scale_mode(c10::string_view name) {
  if (name == "input") return BlockScale::kInput;
  if (name == "float") return BlockScale::kFloat;
  if (name == "none") return BlockScale::kNone;
  TORCH_CHECK_VALUE(false, "fastdrop.drop_block: scale must be 'input', 'float' or 'none', but got '", name, "'");
}

// DropBlock's seeds and blocks over a checked input, each block size clipped to
// its dim: seeds where a whole block fits, each dropping the block that starts
// there (torchvision), or at every element, each dropping the block centred
// there (starting block / 2 before it), clipped at the edges (centred: timm's).
inline BlockGeometry block_geometry(at::IntArrayRef sizes, at::IntArrayRef block_size, bool centred, bool shared) {
  const int spatial = static_cast<int>(sizes.size()) - 2;
  BlockGeometry g{};
  g.channels = sizes[1];
  g.shared = shared;
  g.planes = shared ? sizes[0] : sizes[0] * sizes[1];
  for (int d = 0; d < 3; ++d) {
    const bool padded = d < 3 - spatial;
    g.size[d] = padded ? 1 : sizes[2 + d - (3 - spatial)];
    // An empty spatial dim leaves nothing to drop: a block of 1 keeps the grid well formed.
    const int64_t block = padded ? 1 : std::max<int64_t>(1, std::min(block_size[d - (3 - spatial)], g.size[d]));
    g.block[d] = block;
    g.seeds[d] = centred ? g.size[d] : std::max<int64_t>(g.size[d] - block + 1, 0);
    g.shift[d] = centred ? -(block / 2) : 0;
  }
  g.words = (g.size[2] + kMaskWordBits - 1) / kMaskWordBits;
  return g;
}

}  // namespace fastdrop
