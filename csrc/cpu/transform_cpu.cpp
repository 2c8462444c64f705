// The unit-stride loops of transform.h, cloned per ISA so they vectorize with
// the widest instructions the CPU has.
#include "transform.h"

namespace fastdrop::cpu {

#define FASTDROP_DEFINE_TRANSFORM_CONTIGUOUS(scalar_t)                                                            \
  FASTDROP_CPU_CLONES void transform_contiguous(scalar_t* out, const scalar_t* in, const uint16_t* bits,          \
                                                int64_t count, uint32_t compare, bool affine,                   \
                                                DropoutFactors<scalar_t> factors) {                        \
    if (affine) {                                                                                                 \
      transform_loop<true>(out, 1, in, 1, bits, count, compare, factors);                                       \
    } else {                                                                                                      \
      transform_loop<false>(out, 1, in, 1, bits, count, compare, factors);                                      \
    }                                                                                                             \
  }                                                                                                               \
  FASTDROP_CPU_CLONES void transform_uniform_contiguous(scalar_t* out, const scalar_t* in, int64_t count,         \
                                                        bool kept, bool affine,                                   \
                                                        DropoutFactors<scalar_t> factors) {                \
    if (affine) {                                                                                                 \
      transform_uniform_loop<true>(out, 1, in, 1, count, kept, factors);                                          \
    } else {                                                                                                      \
      transform_uniform_loop<false>(out, 1, in, 1, count, kept, factors);                                         \
    }                                                                                                             \
  }                                                                                                               \
  FASTDROP_CPU_CLONES void add_dropout_contiguous(scalar_t* out, const scalar_t* in, const scalar_t* residual,     \
                                                  const scalar_t* bias, const uint16_t* bits, int64_t count,      \
                                                  uint32_t compare, DropoutFactors<scalar_t> factors) {  \
    if (bias != nullptr) {                                                                                        \
      add_dropout_loop<true>(out, 1, in, 1, residual, 1, bias, 1, bits, count, compare, factors);              \
    } else {                                                                                                      \
      add_dropout_loop<false>(out, 1, in, 1, residual, 1, bias, 0, bits, count, compare, factors);             \
    }                                                                                                             \
  }                                                                                                               \
  FASTDROP_CPU_CLONES void add_uniform_contiguous(scalar_t* out, const scalar_t* in, const scalar_t* residual,     \
                                                  int64_t count, bool kept,                                       \
                                                  DropoutFactors<scalar_t> factors) {                      \
    add_uniform_loop(out, 1, in, 1, residual, 1, count, kept, factors);                                           \
  }
FASTDROP_FOR_EACH_FLOAT_TYPE(FASTDROP_DEFINE_TRANSFORM_CONTIGUOUS)
#undef FASTDROP_DEFINE_TRANSFORM_CONTIGUOUS

}  // namespace fastdrop::cpu
