// Bulk generation of the contract's 16-bit element values on the CPU, with
// SIMD variants chosen at run time. Bit-identical to contract_block().
#pragma once

#include <cstdint>

namespace fastdrop::cpu {

// out[8 * k + lane] = element_bits(Philox block {counter_column, first_block + k}, lane)
// for k in [0, num_blocks); counter_column is the generator offset / 4.
void fill_element_bits(uint64_t seed, uint64_t counter_column, uint64_t first_block, int64_t num_blocks, uint16_t* out);

// The same for any list of blocks: out[8 * k + lane] = element_bits(block {counter_column, blocks[k]}, lane).
void fill_element_bits_of(uint64_t seed, uint64_t counter_column, const uint64_t* blocks, int64_t num_blocks,
                          uint16_t* out);

// Which SIMD variant fill_element_bits uses on this machine ("avx512", "avx2" or "scalar").
const char* fill_element_bits_isa();

// fill_element_bits through one named variant; false if this CPU cannot run it.
bool fill_element_bits_using(const char* isa, uint64_t seed, uint64_t counter_column, uint64_t first_block,
                             int64_t num_blocks, uint16_t* out);

bool fill_element_bits_of_using(const char* isa, uint64_t seed, uint64_t counter_column, const uint64_t* blocks,
                                int64_t num_blocks, uint16_t* out);

// The first i < count with values[i] == value, or count: a vectorized scan.
int64_t find_value(const uint16_t* values, int64_t count, uint16_t value);

}  // namespace fastdrop::cpu
