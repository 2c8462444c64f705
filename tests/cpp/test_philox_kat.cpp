// Philox4x32-10 against Random123's known-answer vectors: the host engine, and
// every SIMD variant of the CPU's bulk generator this machine can run.
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"
#include "cpu/philox_cpu.h"
#include "philox.h"

struct KnownAnswer {
  uint32_t counter[4], key[2], expected[4];
};

static std::vector<KnownAnswer> read_vectors(const char* path) {
  std::vector<KnownAnswer> vectors;
  std::ifstream file(path);
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string name, rounds;
    if (!(fields >> name >> rounds) || name != "philox4x32" || rounds != "10") continue;
    KnownAnswer v;
    uint32_t* slots[10] = {&v.counter[0], &v.counter[1],  &v.counter[2],  &v.counter[3],  &v.key[0],
                           &v.key[1],     &v.expected[0], &v.expected[1], &v.expected[2], &v.expected[3]};
    bool complete = true;
    for (uint32_t* slot : slots) complete = complete && static_cast<bool>(fields >> std::hex >> *slot);
    if (complete) vectors.push_back(v);
  }
  return vectors;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s philox4x32_10_kat.txt\n", argv[0]);
    return 2;
  }
  const std::vector<KnownAnswer> vectors = read_vectors(argv[1]);
  EXPECT(!vectors.empty(), "no known-answer vectors in %s", argv[1]);
  int checks = 0;
  const char* isas[] = {"scalar", "avx2", "avx512"};
  for (const KnownAnswer& v : vectors) {
    const fastdrop::PhiloxBlock counter = {{v.counter[0], v.counter[1], v.counter[2], v.counter[3]}};
    const fastdrop::PhiloxBlock out = fastdrop::philox4x32_10(counter, v.key[0], v.key[1]);
    for (int w = 0; w < 4; ++w) {
      EXPECT(out.word[w] == v.expected[w], "engine word %d: %08x != %08x", w, out.word[w], v.expected[w]);
      ++checks;
    }
    // The bulk generator takes the counter as (column, block) halves.
    const uint64_t column = v.counter[0] | (static_cast<uint64_t>(v.counter[1]) << 32);
    const uint64_t block = v.counter[2] | (static_cast<uint64_t>(v.counter[3]) << 32);
    const uint64_t seed = v.key[0] | (static_cast<uint64_t>(v.key[1]) << 32);
    for (const char* isa : isas) {
      uint16_t halves[8];
      if (!fastdrop::cpu::fill_element_bits_using(isa, seed, column, block, 1, halves)) continue;
      for (int w = 0; w < 4; ++w) {
        const uint32_t word = halves[2 * w] | (static_cast<uint32_t>(halves[2 * w + 1]) << 16);
        EXPECT(word == v.expected[w], "%s word %d: %08x != %08x", isa, w, word, v.expected[w]);
        ++checks;
      }
    }
  }
  std::printf("known-answer vectors: %zu, CPU generator in use: %s\n", vectors.size(),
              fastdrop::cpu::fill_element_bits_isa());
  return TEST_RESULT("philox known answers", checks);
}
