// The run-time choice among a CPU kernel's ISA variants (philox_cpu.cpp's random-bit fills,
// half_cpu.cpp's fp16 conversions): the variants this CPU can run, best first, each named by its
// `isa`; FASTDROP_CPU_ISA caps the choice (for comparing variants) and never selects a variant the
// CPU lacks.
#pragma once

#include <cstdlib>
#include <cstring>

namespace fastdrop::cpu {

template <typename Variant, int kMaxVariants>
struct IsaVariants {
  Variant list[kMaxVariants];
  int count = 0;

  // The variants supported(list) writes, returning how many.
  static IsaVariants of(int (*supported)(Variant*)) {
    IsaVariants table;
    table.count = supported(table.list);
    return table;
  }

  const Variant* find(const char* isa) const {
    for (int i = 0; i < count; ++i) {
      if (std::strcmp(list[i].isa, isa) == 0) return &list[i];
    }
    return nullptr;
  }

  // The best variant, or the one FASTDROP_CPU_ISA names (as `rename` maps the name, for a family whose
  // variants are named otherwise) where this CPU has it.
  const Variant& chosen(const char* (*rename)(const char*) = nullptr) const {
    if (const char* requested = std::getenv("FASTDROP_CPU_ISA")) {
      if (const Variant* variant = find(rename != nullptr ? rename(requested) : requested)) return *variant;
    }
    return list[0];
  }
};

}  // namespace fastdrop::cpu
