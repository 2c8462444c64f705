// Philox4x32-10 and the random-number contract built on it, compiled for host
// and device alike so that the CPU and CUDA kernels draw the same bits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTDROP_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined, so the CPU's ISA-cloned loops get vectorizable copies.
#define FASTDROP_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FASTDROP_HOST_DEVICE inline
#endif

namespace fastdrop {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

struct PhiloxBlock {
  uint32_t word[4];
};

FASTDROP_HOST_DEVICE void mul_hi_lo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  lo = static_cast<uint32_t>(product);
  hi = static_cast<uint32_t>(product >> 32);
#endif
}

FASTDROP_HOST_DEVICE PhiloxBlock philox4x32_10(PhiloxBlock counter, uint32_t key0, uint32_t key1) {
  uint32_t* c = counter.word;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(kPhiloxM0, c[0], hi0, lo0);
    mul_hi_lo(kPhiloxM1, c[2], hi1, lo1);
    const PhiloxBlock next = {{hi1 ^ c[1] ^ key0, lo1, hi0 ^ c[3] ^ key1, lo0}};
    counter = next;
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return counter;
}

// ---------------------------------------------------------------------------
// The contract. A call is keyed by (seed, offset), taken from a torch
// generator. Element `index` (its logical row-major index, or the index of the
// sample / channel that owns it) reads the (index % 8)-th little-endian 16-bit
// half-word of Philox block `index / 8`, whose counter is
// {offset / 4 (64 bits), index / 8 (64 bits)} and whose key is the seed. That
// is exactly the first 128 bits curand_init(seed, index / 8, offset) would
// yield, so a call occupies the counter column offset / 4 that torch's CUDA
// generator reserved for it and never overlaps another op's draws.
// The element is dropped iff its 16 bits are below threshold = round(p * 2^16).
// ---------------------------------------------------------------------------
constexpr int kElementsPerBlock = 8;
constexpr int kRandomBitsPerElement = 16;
constexpr uint64_t kGeneratorOffsetPerCall = 4;  // one Philox counter column

FASTDROP_HOST_DEVICE PhiloxBlock contract_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const uint64_t column = offset / 4;
  const PhiloxBlock counter = {{static_cast<uint32_t>(column), static_cast<uint32_t>(column >> 32),
                                static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

FASTDROP_HOST_DEVICE uint32_t element_bits(const PhiloxBlock& block, int lane) {
  // Selects rather than block.word[lane >> 1]: with a run-time lane, indexing
  // would move the block to local memory on the GPU.
  uint32_t word = block.word[0];
  word = lane >= 2 ? block.word[1] : word;
  word = lane >= 4 ? block.word[2] : word;
  word = lane >= 6 ? block.word[3] : word;
  return (word >> ((lane & 1) * 16)) & 0xFFFFu;
}

// |threshold / 2^16 - p| <= 2^-17: the realized drop probability is within
// 2^-17 of p. p == 1 gives 65536, which no 16-bit value reaches: all dropped.
inline uint32_t drop_threshold(double p) {
  return static_cast<uint32_t>(p * 65536.0 + 0.5);
}

FASTDROP_HOST_DEVICE bool is_kept(uint32_t bits, uint32_t threshold) {
  return bits >= threshold;
}

// The single-element form of the contract: what every kernel must agree with.
FASTDROP_HOST_DEVICE bool keeps_element(uint64_t seed, uint64_t offset, uint64_t index, uint32_t threshold) {
  const PhiloxBlock block = contract_block(seed, offset, index / kElementsPerBlock);
  return is_kept(element_bits(block, static_cast<int>(index % kElementsPerBlock)), threshold);
}

}  // namespace fastdrop
