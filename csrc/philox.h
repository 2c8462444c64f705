// Philox4x32-10 and the random-number contract built on it, compiled for host
// and device alike so that the CPU and CUDA kernels draw the same bits.
#pragma once

#include <cmath>
#include <cstdint>

// The emulated CUDA build (cuda/emulation/) compiles the kernels with the host
// compiler; its shim must come first, so that the device branches below are
// the ones it runs.
#if defined(FASTDROP_EMULATE_CUDA) && !defined(FASTDROP_CUDA_SHIM)
#error "the emulated CUDA build includes cuda/emulation/shim.h before everything else (-include)"
#endif

// True where the code runs as a GPU kernel would: nvcc's device pass, and the
// emulated CUDA build, which runs those same branches on the CPU.
#if defined(__CUDA_ARCH__) || defined(FASTDROP_EMULATE_CUDA)
#define FASTDROP_DEVICE_CODE 1
#else
#define FASTDROP_DEVICE_CODE 0
#endif

// Rare paths (a tie on the first 16 bits, a pack that crosses a row) stay out
// of line, so that a kernel's loop holds only what every element pays.
#if defined(__CUDACC__)
#define FASTDROP_COLD __host__ __device__ __noinline__ inline
#else
#define FASTDROP_COLD inline __attribute__((noinline))
#endif

#if defined(__CUDACC__) || defined(FASTDROP_EMULATE_CUDA)
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
#if FASTDROP_DEVICE_CODE
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
#if FASTDROP_DEVICE_CODE
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
// generator. Each decision (an element's, keyed by its logical row-major index,
// or a channel's or sample's, keyed by its index) compares a uniform number
// U = 0.b1 b2 b3 ... in [0, 1) with p, exactly: dropped iff U < p. So the
// realized drop probability is p itself, for every p, and torch's scale
// 1 / (1 - p) keeps the expectation exact.
//
// U's first 16 bits are the (index % 8)-th little-endian 16-bit half-word of
// Philox block index / 8, whose counter is {offset / 4 (64 bits), index / 8
// (64 bits)} and whose key is the seed: exactly the first 128 bits
// curand_init(seed, index / 8, offset) would yield, so a call occupies the
// counter column offset / 4 that torch's CUDA generator reserved for it and
// never overlaps another op's draws. Those 16 bits decide unless they equal the
// first 16 bits of p (a tie, probability 2^-16); only then are U's next bits
// read, 32 at a time, from extension blocks of the same column (see
// extension_word) until they differ from p's or p has no bits left.
// ---------------------------------------------------------------------------
constexpr int kElementsPerBlock = 8;
constexpr int kRandomBitsPerElement = 16;
constexpr uint64_t kGeneratorOffsetPerCall = 4;  // one Philox counter column

FASTDROP_HOST_DEVICE PhiloxBlock philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const uint64_t column = offset / 4;
  const PhiloxBlock counter = {{static_cast<uint32_t>(column), static_cast<uint32_t>(column >> 32),
                                static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The block holding the first 16 bits of U for indices 8 * block ... 8 * block + 7.
FASTDROP_HOST_DEVICE PhiloxBlock contract_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox_block(seed, offset, block);
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

// Bits 17 + 32 w ... 48 + 32 w of index's U: word w % 4 of the extension block
// 2^63 + 16 * index + w / 4. Primary blocks stay below 2^60, so the two never
// meet; 16 blocks (64 words) per index are more than any double p needs (its
// last bit is bit 1074 + 53 at most). Indices must stay below 2^59.
FASTDROP_HOST_DEVICE uint32_t extension_word(uint64_t seed, uint64_t offset, uint64_t index, int w) {
  const uint64_t block = (uint64_t(1) << 63) | (index << 4) | static_cast<uint64_t>(w >> 2);
  const PhiloxBlock bits = philox_block(seed, offset, block);
  const int lane = w & 3;
  uint32_t word = bits.word[0];
  word = lane >= 1 ? bits.word[1] : word;
  word = lane >= 2 ? bits.word[2] : word;
  word = lane >= 3 ? bits.word[3] : word;
  return word;
}

// p as the contract compares it: its first 16 bits, and the rest.
struct DropThreshold {
  uint32_t high;     // floor(p * 2^16); 65536 for p == 1, which no 16-bit value reaches
  double remainder;  // p * 2^16 - high, in [0, 1): p's bits after the first 16 (exact in a double)
};

inline DropThreshold drop_threshold(double p) {
  if (p >= 1.0) return {65536u, 0.0};
  const double scaled = p * 65536.0;  // exact: a power-of-two scale
  const uint32_t high = static_cast<uint32_t>(scaled);
  return {high, scaled - static_cast<double>(high)};
}

// A tie on the first 16 bits: compares U's following bits with p's, 32 at a
// time. Each step's digit and remainder are exact in double arithmetic (the
// _rn forms only keep a compiler from fusing them, which would be exact too).
FASTDROP_COLD bool keeps_on_tie(uint64_t seed, uint64_t offset, uint64_t index, double remainder) {
  for (int w = 0; remainder != 0.0; ++w) {
#if FASTDROP_DEVICE_CODE
    const double scaled = __dmul_rn(remainder, 4294967296.0);
    const double digit = floor(scaled);
    const double next = __dadd_rn(scaled, -digit);
#else
    const double scaled = remainder * 4294967296.0;
    const double digit = floor(scaled);
    const double next = scaled - digit;
#endif
    const uint32_t bits = extension_word(seed, offset, index, w);
    if (bits != static_cast<uint32_t>(digit)) return bits > static_cast<uint32_t>(digit);
    remainder = next;
  }
  return true;  // U's bits so far equal all of p's: U >= p
}

// The decision for index, given its 16 contract bits.
FASTDROP_HOST_DEVICE bool keeps(uint32_t bits, const DropThreshold& threshold, uint64_t seed, uint64_t offset,
                                uint64_t index) {
  if (bits != threshold.high) return bits > threshold.high;
  return keeps_on_tie(seed, offset, index, threshold.remainder);
}

// Kernels that compare many 16-bit values at once first replace each tie by
// resolved_tie_bits(decision); then bits >= compare_bits(threshold) is the
// decision for every value, tie or not.
FASTDROP_HOST_DEVICE uint32_t resolved_tie_bits(bool kept) { return kept ? 0xFFFFu : 0u; }

FASTDROP_HOST_DEVICE uint32_t compare_bits(const DropThreshold& threshold) {
  return threshold.high > 1u ? threshold.high : 1u;
}

FASTDROP_HOST_DEVICE bool is_kept(uint32_t resolved_bits, uint32_t compare) { return resolved_bits >= compare; }

// The single-decision form of the contract: what every kernel must agree with.
FASTDROP_HOST_DEVICE bool keeps_element(uint64_t seed, uint64_t offset, uint64_t index,
                                        const DropThreshold& threshold) {
  const PhiloxBlock block = contract_block(seed, offset, index / kElementsPerBlock);
  return keeps(element_bits(block, static_cast<int>(index % kElementsPerBlock)), threshold, seed, offset, index);
}

}  // namespace fastdrop
