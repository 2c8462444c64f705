// What a CUDA thread does with one pack: the 8 logically consecutive
// elements that share a Philox block (element-wise variants) or 8 elements
// consecutive in memory (grouped variants), moved with one 16-byte load and
// store where aligned.
#pragma once

#include "../philox.h"
#include "device_rng.cuh"

namespace fastdrop::cuda {

template <typename scalar_t>
__device__ __forceinline__ Pack8<scalar_t> load_pack(const scalar_t* source) {
  return *reinterpret_cast<const Pack8<scalar_t>*>(source);
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* target, const Pack8<scalar_t>& pack) {
  *reinterpret_cast<Pack8<scalar_t>*>(target) = pack;
}

// A rare path's condition: a tie on the first 16 bits (one pack in 8192), a
// pack that crosses an innermost row, a partial pack. The SASS budget
// (benchmarks/sass_budget.py) counts a build with -DFASTDROP_SASS_HOT_PATH, in
// which the condition is still computed and branched on (every pack pays for
// the test, a predicated trap standing in for the branch) but the rare path
// is gone: the instructions of the packs that take the common path.
__device__ __forceinline__ bool rare(bool condition) {
#if defined(FASTDROP_SASS_HOT_PATH)
  if (condition) asm volatile("trap;");
  return false;
#else
  return __builtin_expect(condition, false);
#endif
}

// The decisions of the 8 indices first ... first + 7, whose Philox block is bits.
__device__ __forceinline__ void decide_pack(const PhiloxBlock& bits, const DropThreshold& threshold,
                                            const RngState& rng, uint64_t first, bool (&kept)[kElementsPerBlock]) {
  bool tie = false;
#pragma unroll
  for (int lane = 0; lane < kElementsPerBlock; ++lane) {
    const uint32_t value = element_bits(bits, lane);
    kept[lane] = value > threshold.high;
    tie |= value == threshold.high;
  }
  if (rare(tie)) {
#pragma unroll
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      kept[lane] = keeps(element_bits(bits, lane), threshold, rng.seed, rng.offset, first + lane);
    }
  }
}

// One decision for a group (channel, sample), from its Philox block.
__device__ __forceinline__ bool keeps_group(uint64_t group, const DropThreshold& threshold, const RngState& rng) {
  const PhiloxBlock bits = contract_block(rng.seed, rng.offset, group / kElementsPerBlock);
  const uint32_t value = element_bits(bits, static_cast<int>(group % kElementsPerBlock));
  if (rare(value == threshold.high)) return keeps_on_tie(rng.seed, rng.offset, group, threshold.remainder);
  return value > threshold.high;
}

// The partial last pack of a kernel whose loop takes full packs only is done
// after that loop, element by element, by the thread whose turn that pack
// would be: the one whose loop index stopped exactly at full_packs.
template <typename Index>
__device__ __forceinline__ bool takes_partial_pack(Index pack, Index full_packs, Index numel) {
  return pack == full_packs && full_packs * kElementsPerBlock < numel;
}

// element(index, lane) for each element of the partial last pack.
template <typename Index, typename Element>
__device__ __forceinline__ void for_partial_pack(Index full_packs, Index numel, const Element& element) {
  const Index first = full_packs * kElementsPerBlock;
#pragma unroll
  for (int lane = 0; lane < kElementsPerBlock - 1; ++lane) {
    if (first + lane < numel) element(first + lane, lane);
  }
}

// This thread's first pack, and the grid-stride step between its packs.
__device__ __forceinline__ int64_t first_pack() { return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ int64_t pack_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace fastdrop::cuda
