// Splitting a tensor's elements over threads and walking them as runs along
// the innermost (merged) dim, for kernels that take any strides.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "../checks.h"
#include "../layout_builder.h"
#include "../rng_state.h"
#include "philox_cpu.h"

namespace fastdrop::cpu {

constexpr int64_t kGrainElements = 32768;
constexpr int64_t kBitsChunk = 2048;  // contract values per buffer fill in the grouped kernels
// Elements per bits fill in the element-wise walk: one step of the widest
// fill (philox_cpu.cpp: 4 vectors of 16 blocks), so a whole fill has no scalar
// tail. Short fills interleave the Philox arithmetic with the transform's
// loads closely enough that the hardware prefetchers keep the input and
// output streams going through both; 2048 at a time measured 10-30% slower
// at 2^20 to 2^22 elements (fp32, 2 threads).
constexpr int64_t kRunChunk = 512;
static_assert(kRunChunk % kElementsPerBlock == 0, "a fill covers whole Philox blocks");

// Calls run(offsets, count, index) for consecutive runs covering [begin, end)
// of the layout's index space, starting at the cursor's position; operand k's
// run starts at offsets[k] with stride layout.inner_stride(k).
template <int kOperands, typename Run>
void walk_runs(const StridedLayout<kOperands>& layout, LogicalCursor<kOperands>& cursor, int64_t begin, int64_t end,
               const Run& run) {
  for (int64_t index = begin; index < end;) {
    const int64_t count = std::min(cursor.left_in_row(layout), end - index);
    run(cursor.offset, count, index);
    cursor.advance_in_row(layout, count);
    index += count;
  }
}

// Replaces each tie (a value equal to the threshold's first 16 bits) in the
// contract bits of indices first_index ... first_index + count - 1 by its
// resolved decision, so that is_kept(bits[i], compare_bits(threshold)) decides
// every element. Ties are rare (2^-16 per element): the scan is what costs.
inline void resolve_ties(uint16_t* bits, int64_t count, uint64_t first_index, const DropThreshold& threshold,
                         RngState rng) {
  if (threshold.high > 0xFFFFu) return;  // p == 1: nothing ties
  const uint16_t high = static_cast<uint16_t>(threshold.high);
  for (int64_t i = find_value(bits, count, high); i < count;
       i = i + 1 + find_value(bits + i + 1, count - i - 1, high)) {
    const uint64_t index = first_index + static_cast<uint64_t>(i);
    bits[i] = static_cast<uint16_t>(resolved_tie_bits(keeps_on_tie(rng.seed, rng.offset, index, threshold.remainder)));
  }
}

// All elements in logical order, in parallel, with each element's 16 contract
// bits, ties resolved: run(offsets, count, bits). Threads split at Philox
// block boundaries so no block is computed twice.
template <int kOperands, typename Run>
void parallel_runs_with_bits(const StridedLayout<kOperands>& layout, int64_t numel, RngState rng,
                             const DropThreshold& threshold, const Run& run) {
  const int64_t num_blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  at::parallel_for(0, num_blocks, kGrainElements / kElementsPerBlock, [&](int64_t first_block, int64_t last_block) {
    alignas(64) uint16_t bits[kRunChunk];
    LogicalCursor<kOperands> cursor;
    cursor.seek(layout, first_block * kElementsPerBlock);
    for (int64_t block = first_block; block < last_block; block += kRunChunk / kElementsPerBlock) {
      const int64_t blocks = std::min<int64_t>(kRunChunk / kElementsPerBlock, last_block - block);
      fill_element_bits(rng.seed, rng.offset / 4, static_cast<uint64_t>(block), blocks, bits);
      const int64_t begin = block * kElementsPerBlock;
      const int64_t end = std::min(numel, (block + blocks) * kElementsPerBlock);
      resolve_ties(bits, end - begin, static_cast<uint64_t>(begin), threshold, rng);
      walk_runs(layout, cursor, begin, end, [&](const int64_t* offsets, int64_t count, int64_t index) {
        run(offsets, count, bits + (index - begin));
      });
    }
  });
}

}  // namespace fastdrop::cpu
