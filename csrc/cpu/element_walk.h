// The CPU side of element-wise decisions: split the logical index range over
// threads (in whole Philox blocks, so no block is computed twice), fill a small
// buffer with the elements' 16-bit values, and hand the kernel runs of
// consecutive logical elements along the innermost dim.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "../fastdrop.h"
#include "philox_cpu.h"

namespace fastdrop::cpu {

constexpr int64_t kBitsChunk = 2048;  // elements per buffer fill; a multiple of kElementsPerBlock
constexpr int64_t kGrainBlocks = 32768 / kElementsPerBlock;

// run(offsets, count, bits): operand k's elements start at offsets[k] with
// stride layout.inner_stride(k); bits[i] belongs to the run's i-th element.
template <int kOperands, typename Run>
void for_each_run_with_bits(const StridedLayout<kOperands>& layout, int64_t numel, RngState rng, const Run& run) {
  const int64_t num_blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  at::parallel_for(0, num_blocks, kGrainBlocks, [&](int64_t first_block, int64_t last_block) {
    alignas(64) uint16_t bits[kBitsChunk];
    LogicalCursor<kOperands> cursor;
    cursor.seek(layout, first_block * kElementsPerBlock);
    for (int64_t block = first_block; block < last_block; block += kBitsChunk / kElementsPerBlock) {
      const int64_t blocks = std::min<int64_t>(kBitsChunk / kElementsPerBlock, last_block - block);
      fill_element_bits(rng.seed, rng.offset / 4, static_cast<uint64_t>(block), blocks, bits);
      const int64_t begin = block * kElementsPerBlock;
      const int64_t end = std::min(numel, (block + blocks) * kElementsPerBlock);
      for (int64_t index = begin; index < end;) {
        const int64_t count = std::min(cursor.left_in_row(layout), end - index);
        run(cursor.offset, count, bits + (index - begin));
        cursor.advance_in_row(layout, count);
        index += count;
      }
    }
  });
}

}  // namespace fastdrop::cpu
