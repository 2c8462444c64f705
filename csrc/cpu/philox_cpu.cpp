// The SIMD variants carry their own target attributes, so the extension runs on
// any x86-64 (or other) CPU while using AVX-512 or AVX2 where present. Each
// variant computes 16 or 8 Philox blocks side by side, one block per 32-bit lane.
#include "philox_cpu.h"

#include "../philox.h"
#include "isa_variants.h"
#include "vectorize.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTDROP_X86_SIMD 1
#include <immintrin.h>
#endif

namespace fastdrop::cpu {
namespace {

// Which blocks a fill computes, block k of the fill at out + 8 * k: a run of consecutive indices
// (the element-wise walk), or any list of them (rows of a tile whose logical runs start anywhere).
struct ConsecutiveBlocks {
  uint64_t first;
  uint64_t operator[](int64_t k) const { return first + static_cast<uint64_t>(k); }
};

struct ListedBlocks {
  const uint64_t* list;
  uint64_t operator[](int64_t k) const { return list[k]; }
};

template <typename Blocks>
void fill_scalar(uint64_t seed, uint64_t column, const Blocks& blocks, int64_t begin, int64_t end, uint16_t* out) {
  const PhiloxBlock counter_base = {{static_cast<uint32_t>(column), static_cast<uint32_t>(column >> 32), 0, 0}};
  for (int64_t k = begin; k < end; ++k) {
    const uint64_t block = blocks[k];
    PhiloxBlock counter = counter_base;
    counter.word[2] = static_cast<uint32_t>(block);
    counter.word[3] = static_cast<uint32_t>(block >> 32);
    const PhiloxBlock bits = philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    for (int lane = 0; lane < kElementsPerBlock; ++lane) {
      out[kElementsPerBlock * k + lane] = static_cast<uint16_t>(element_bits(bits, lane));
    }
  }
}

// Block indices split into 32-bit halves for blocks k ... k + lanes - 1.
template <typename Blocks>
void block_index_halves(const Blocks& blocks, int64_t k, int lanes, uint32_t* lo, uint32_t* hi) {
  for (int lane = 0; lane < lanes; ++lane) {
    const uint64_t block = blocks[k + lane];
    lo[lane] = static_cast<uint32_t>(block);
    hi[lane] = static_cast<uint32_t>(block >> 32);
  }
}

#if FASTDROP_X86_SIMD

// Several independent vectors per step: one alone leaves the multiplier
// latency exposed, four keep the vector units busy.
constexpr int kVectorsInFlight = 4;

template <typename Blocks>
__attribute__((target("avx512f"))) void fill_avx512(uint64_t seed, uint64_t column, const Blocks& blocks,
                                                    int64_t num_blocks, uint16_t* out) {
  constexpr int kLanes = 16, kStep = kLanes * kVectorsInFlight;
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __mmask16 odd_lanes = 0xAAAA, even_lanes = 0x5555;
  int64_t k = 0;
  for (; k + kStep <= num_blocks; k += kStep) {
    alignas(64) uint32_t lo[kStep], hi[kStep];
    block_index_halves(blocks, k, kStep, lo, hi);
    __m512i c0[kVectorsInFlight], c1[kVectorsInFlight], c2[kVectorsInFlight], c3[kVectorsInFlight];
    for (int v = 0; v < kVectorsInFlight; ++v) {
      c0[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(column)));
      c1[v] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(column >> 32)));
      c2[v] = _mm512_load_si512(lo + kLanes * v);
      c3[v] = _mm512_load_si512(hi + kLanes * v);
    }
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < kPhiloxRounds; ++round) {
      const __m512i k0 = _mm512_set1_epi32(static_cast<int>(key0)), k1 = _mm512_set1_epi32(static_cast<int>(key1));
      for (int v = 0; v < kVectorsInFlight; ++v) {
        // 64-bit products of the even lanes and of the odd lanes (shifted down);
        // masked dword swaps gather their high and low halves.
        const __m512i even0 = _mm512_mul_epu32(c0[v], m0), odd0 = _mm512_mul_epu32(_mm512_srli_epi64(c0[v], 32), m0);
        const __m512i even1 = _mm512_mul_epu32(c2[v], m1), odd1 = _mm512_mul_epu32(_mm512_srli_epi64(c2[v], 32), m1);
        const __m512i hi0 = _mm512_mask_shuffle_epi32(odd0, even_lanes, even0, _MM_PERM_CDAB);
        const __m512i lo0 = _mm512_mask_shuffle_epi32(even0, odd_lanes, odd0, _MM_PERM_CDAB);
        const __m512i hi1 = _mm512_mask_shuffle_epi32(odd1, even_lanes, even1, _MM_PERM_CDAB);
        const __m512i lo1 = _mm512_mask_shuffle_epi32(even1, odd_lanes, odd1, _MM_PERM_CDAB);
        c0[v] = _mm512_ternarylogic_epi32(hi1, c1[v], k0, 0x96);  // three-way xor
        c2[v] = _mm512_ternarylogic_epi32(hi0, c3[v], k1, 0x96);
        c1[v] = lo1;
        c3[v] = lo0;
      }
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    for (int v = 0; v < kVectorsInFlight; ++v) {
      // Transpose 4 words x 16 lanes into 16 consecutive 128-bit blocks.
      const __m512i t0 = _mm512_unpacklo_epi32(c0[v], c1[v]), t1 = _mm512_unpackhi_epi32(c0[v], c1[v]);
      const __m512i t2 = _mm512_unpacklo_epi32(c2[v], c3[v]), t3 = _mm512_unpackhi_epi32(c2[v], c3[v]);
      const __m512i b0 = _mm512_unpacklo_epi64(t0, t2);  // blocks 0, 4, 8, 12
      const __m512i b1 = _mm512_unpackhi_epi64(t0, t2);  // blocks 1, 5, 9, 13
      const __m512i b2 = _mm512_unpacklo_epi64(t1, t3);  // blocks 2, 6, 10, 14
      const __m512i b3 = _mm512_unpackhi_epi64(t1, t3);  // blocks 3, 7, 11, 15
      const __m512i low01 = _mm512_shuffle_i32x4(b0, b1, 0x44), low23 = _mm512_shuffle_i32x4(b2, b3, 0x44);
      const __m512i high01 = _mm512_shuffle_i32x4(b0, b1, 0xEE), high23 = _mm512_shuffle_i32x4(b2, b3, 0xEE);
      uint16_t* dst = out + kElementsPerBlock * (k + kLanes * v);
      _mm512_storeu_si512(dst + 0, _mm512_shuffle_i32x4(low01, low23, 0x88));
      _mm512_storeu_si512(dst + 32, _mm512_shuffle_i32x4(low01, low23, 0xDD));
      _mm512_storeu_si512(dst + 64, _mm512_shuffle_i32x4(high01, high23, 0x88));
      _mm512_storeu_si512(dst + 96, _mm512_shuffle_i32x4(high01, high23, 0xDD));
    }
  }
  fill_scalar(seed, column, blocks, k, num_blocks, out);
}

template <typename Blocks>
__attribute__((target("avx2"))) void fill_avx2(uint64_t seed, uint64_t column, const Blocks& blocks, int64_t num_blocks,
                                               uint16_t* out) {
  constexpr int kLanes = 8, kStep = kLanes * kVectorsInFlight;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  int64_t k = 0;
  for (; k + kStep <= num_blocks; k += kStep) {
    alignas(32) uint32_t lo[kStep], hi[kStep];
    block_index_halves(blocks, k, kStep, lo, hi);
    __m256i c0[kVectorsInFlight], c1[kVectorsInFlight], c2[kVectorsInFlight], c3[kVectorsInFlight];
    for (int v = 0; v < kVectorsInFlight; ++v) {
      c0[v] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(column)));
      c1[v] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(column >> 32)));
      c2[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + kLanes * v));
      c3[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + kLanes * v));
    }
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < kPhiloxRounds; ++round) {
      const __m256i k0 = _mm256_set1_epi32(static_cast<int>(key0)), k1 = _mm256_set1_epi32(static_cast<int>(key1));
      for (int v = 0; v < kVectorsInFlight; ++v) {
        // 64-bit products of the even lanes, and of the odd lanes shifted down.
        const __m256i even0 = _mm256_mul_epu32(c0[v], m0), odd0 = _mm256_mul_epu32(_mm256_srli_epi64(c0[v], 32), m0);
        const __m256i even1 = _mm256_mul_epu32(c2[v], m1), odd1 = _mm256_mul_epu32(_mm256_srli_epi64(c2[v], 32), m1);
        const __m256i lo0 = _mm256_blend_epi32(even0, _mm256_slli_epi64(odd0, 32), 0xAA);
        const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(even0, 32), odd0, 0xAA);
        const __m256i lo1 = _mm256_blend_epi32(even1, _mm256_slli_epi64(odd1, 32), 0xAA);
        const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(even1, 32), odd1, 0xAA);
        c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[v]), k0);
        c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[v]), k1);
        c1[v] = lo1;
        c3[v] = lo0;
      }
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    for (int v = 0; v < kVectorsInFlight; ++v) {
      const __m256i t0 = _mm256_unpacklo_epi32(c0[v], c1[v]), t1 = _mm256_unpackhi_epi32(c0[v], c1[v]);
      const __m256i t2 = _mm256_unpacklo_epi32(c2[v], c3[v]), t3 = _mm256_unpackhi_epi32(c2[v], c3[v]);
      const __m256i b0 = _mm256_unpacklo_epi64(t0, t2);  // blocks 0, 4
      const __m256i b1 = _mm256_unpackhi_epi64(t0, t2);  // blocks 1, 5
      const __m256i b2 = _mm256_unpacklo_epi64(t1, t3);  // blocks 2, 6
      const __m256i b3 = _mm256_unpackhi_epi64(t1, t3);  // blocks 3, 7
      __m256i* dst = reinterpret_cast<__m256i*>(out + kElementsPerBlock * (k + kLanes * v));
      _mm256_storeu_si256(dst + 0, _mm256_permute2x128_si256(b0, b1, 0x20));
      _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(b2, b3, 0x20));
      _mm256_storeu_si256(dst + 2, _mm256_permute2x128_si256(b0, b1, 0x31));
      _mm256_storeu_si256(dst + 3, _mm256_permute2x128_si256(b2, b3, 0x31));
    }
  }
  fill_scalar(seed, column, blocks, k, num_blocks, out);
}

#endif  // FASTDROP_X86_SIMD

struct FillVariant {
  void (*consecutive)(uint64_t, uint64_t, const ConsecutiveBlocks&, int64_t, uint16_t*);
  void (*listed)(uint64_t, uint64_t, const ListedBlocks&, int64_t, uint16_t*);
  const char* isa;
};

template <typename Blocks>
void fill_scalar_all(uint64_t seed, uint64_t column, const Blocks& blocks, int64_t num_blocks, uint16_t* out) {
  fill_scalar(seed, column, blocks, 0, num_blocks, out);
}

// The variants this CPU can run, best first.
int supported_variants(FillVariant* variants) {
  int count = 0;
#if FASTDROP_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    variants[count++] = {fill_avx512<ConsecutiveBlocks>, fill_avx512<ListedBlocks>, "avx512"};
  }
  if (__builtin_cpu_supports("avx2"))
    variants[count++] = {fill_avx2<ConsecutiveBlocks>, fill_avx2<ListedBlocks>, "avx2"};
#endif
  variants[count++] = {fill_scalar_all<ConsecutiveBlocks>, fill_scalar_all<ListedBlocks>, "scalar"};
  return count;
}

const IsaVariants<FillVariant, 3>& fill_variants() {
  static const auto variants = IsaVariants<FillVariant, 3>::of(supported_variants);
  return variants;
}

// FASTDROP_CPU_ISA=avx2|scalar caps the choice.
const FillVariant& fill_variant() {
  static const FillVariant& variant = fill_variants().chosen();
  return variant;
}

}  // namespace

void fill_element_bits(uint64_t seed, uint64_t counter_column, uint64_t first_block, int64_t num_blocks,
                       uint16_t* out) {
  fill_variant().consecutive(seed, counter_column, ConsecutiveBlocks{first_block}, num_blocks, out);
}

void fill_element_bits_of(uint64_t seed, uint64_t counter_column, const uint64_t* blocks, int64_t num_blocks,
                          uint16_t* out) {
  fill_variant().listed(seed, counter_column, ListedBlocks{blocks}, num_blocks, out);
}

const char* fill_element_bits_isa() { return fill_variant().isa; }

bool fill_element_bits_using(const char* isa, uint64_t seed, uint64_t counter_column, uint64_t first_block,
                             int64_t num_blocks, uint16_t* out) {
  const FillVariant* variant = fill_variants().find(isa);
  if (variant == nullptr) return false;
  variant->consecutive(seed, counter_column, ConsecutiveBlocks{first_block}, num_blocks, out);
  return true;
}

bool fill_element_bits_of_using(const char* isa, uint64_t seed, uint64_t counter_column, const uint64_t* blocks,
                                int64_t num_blocks, uint16_t* out) {
  const FillVariant* variant = fill_variants().find(isa);
  if (variant == nullptr) return false;
  variant->listed(seed, counter_column, ListedBlocks{blocks}, num_blocks, out);
  return true;
}

FASTDROP_CPU_CLONES int64_t find_value(const uint16_t* values, int64_t count, uint16_t value) {
  // Whole steps with a branch-free test (vectorized); the step that hits, and the tail, one by one.
  constexpr int64_t kStep = 64;
  int64_t i = 0;
  for (; i + kStep <= count; i += kStep) {
    int hit = 0;
    for (int64_t k = 0; k < kStep; ++k) hit |= values[i + k] == value;
    if (hit) break;
  }
  for (; i < count; ++i) {
    if (values[i] == value) return i;
  }
  return count;
}

}  // namespace fastdrop::cpu
