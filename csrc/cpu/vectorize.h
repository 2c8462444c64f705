// Run-time ISA selection for the CPU's element loops. A loop is written once
// as an always-inline template; FASTDROP_CPU_CLONES stamps out copies of its
// per-dtype wrapper for AVX-512, AVX2 and baseline x86-64, and the loader
// picks the best one for the CPU it runs on. Only the extension's own
// functions are cloned, so no inline function from a header is ever compiled
// for an ISA the CPU may lack.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define FASTDROP_ALWAYS_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define FASTDROP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTDROP_CPU_CLONES
#endif

// DEFINE(scalar_t) once for each dtype the kernels take.
#define FASTDROP_FOR_EACH_FLOAT_TYPE(DEFINE) \
  DEFINE(float)                              \
  DEFINE(double)                             \
  DEFINE(c10::Half)                          \
  DEFINE(c10::BFloat16)

// DEFINE(scalar_t, residual_t) for each branch type and each residual type it
// takes (with_residual_type: its own, float for 16 bits, double).
#define FASTDROP_FOR_EACH_RESIDUAL_TYPE(DEFINE) \
  DEFINE(float, float)                          \
  DEFINE(float, double)                         \
  DEFINE(double, double)                        \
  DEFINE(c10::Half, c10::Half)                  \
  DEFINE(c10::Half, float)                      \
  DEFINE(c10::Half, double)                     \
  DEFINE(c10::BFloat16, c10::BFloat16)          \
  DEFINE(c10::BFloat16, float)                  \
  DEFINE(c10::BFloat16, double)
