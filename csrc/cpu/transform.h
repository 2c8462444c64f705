// The per-run loops every CPU dropout kernel ends in: apply a variant's
// DropoutFactors to `count` elements, with per-element decisions (16-bit
// contract values, ties resolved, against compare_bits) or one decision for the whole run.
// Factors travel by value: a reference could alias the output, and the
// compiler would then reload them every element instead of vectorizing.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../dropout_math.h"
#include "vectorize.h"

namespace fastdrop::cpu {

template <bool kAffine, typename scalar_t>
FASTDROP_ALWAYS_INLINE void transform_loop(scalar_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                                           const uint16_t* bits, int64_t count, uint32_t compare,
                                           DropoutFactors<scalar_t> factors) {
  for (int64_t i = 0; i < count; ++i) {
    out[i * out_stride] = apply_dropout<kAffine>(in[i * in_stride], is_kept(bits[i], compare), factors);
  }
}

template <bool kAffine, typename scalar_t>
FASTDROP_ALWAYS_INLINE void transform_uniform_loop(scalar_t* out, int64_t out_stride, const scalar_t* in,
                                                   int64_t in_stride, int64_t count, bool kept,
                                                   DropoutFactors<scalar_t> factors) {
  for (int64_t i = 0; i < count; ++i) {
    out[i * out_stride] = apply_dropout<kAffine>(in[i * in_stride], kept, factors);
  }
}

// Rows of row_size contiguous elements, row r at out + r * out_row_stride (and in's): each row one
// decision (row_bits[r]), or every row the same per-element decisions (bits).
template <bool kAffine, typename scalar_t>
FASTDROP_ALWAYS_INLINE void uniform_rows_loop(scalar_t* out, int64_t out_row_stride, const scalar_t* in,
                                              int64_t in_row_stride, int64_t row_size, int64_t rows,
                                              const uint16_t* row_bits, uint32_t compare,
                                              DropoutFactors<scalar_t> factors) {
  for (int64_t r = 0; r < rows; ++r) {
    transform_uniform_loop<kAffine>(out + r * out_row_stride, 1, in + r * in_row_stride, 1, row_size,
                                    is_kept(row_bits[r], compare), factors);
  }
}

template <bool kAffine, typename scalar_t>
FASTDROP_ALWAYS_INLINE void shared_rows_loop(scalar_t* out, int64_t out_row_stride, const scalar_t* in,
                                             int64_t in_row_stride, int64_t row_size, int64_t rows,
                                             const uint16_t* bits, uint32_t compare, DropoutFactors<scalar_t> factors) {
  for (int64_t r = 0; r < rows; ++r) {
    transform_loop<kAffine>(out + r * out_row_stride, 1, in + r * in_row_stride, 1, bits, row_size, compare, factors);
  }
}

// residual + dropout(in [+ bias]), element by element (dropout_add, bias_dropout_add). The residual
// and the output are of the branch's type or a wider one (add_to_residual).
template <bool kBias, typename scalar_t, typename residual_t>
FASTDROP_ALWAYS_INLINE void add_dropout_loop(residual_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                                             const residual_t* residual, int64_t residual_stride, const scalar_t* bias,
                                             int64_t bias_stride, const uint16_t* bits, int64_t count, uint32_t compare,
                                             DropoutFactors<scalar_t> factors) {
  for (int64_t i = 0; i < count; ++i) {
    scalar_t value = in[i * in_stride];
    if constexpr (kBias) value = add_elements(value, bias[i * bias_stride]);
    out[i * out_stride] =
        add_to_residual(residual[i * residual_stride], apply_dropout<false>(value, is_kept(bits[i], compare), factors));
  }
}

// A kept sample's scale applied to a gradient of the residual's type, cast to the branch's type first
// (drop_path_add_subset's backward, as autograd casts a gradient to its input's dtype).
template <typename scalar_t, typename residual_t>
FASTDROP_ALWAYS_INLINE void narrow_kept_loop(scalar_t* out, const residual_t* in, int64_t count,
                                             DropoutFactors<scalar_t> factors) {
  for (int64_t i = 0; i < count; ++i) out[i] = apply_dropout<false>(static_cast<scalar_t>(in[i]), true, factors);
}

// residual + drop_path(in) over a run that shares one decision; a dropped run
// copies the residual and never reads the input (drop_path_add).
template <typename scalar_t, typename residual_t>
FASTDROP_ALWAYS_INLINE void add_uniform_loop(residual_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                                             const residual_t* residual, int64_t residual_stride, int64_t count,
                                             bool kept, DropoutFactors<scalar_t> factors) {
  if (!kept) {
    for (int64_t i = 0; i < count; ++i) out[i * out_stride] = residual[i * residual_stride];
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    out[i * out_stride] =
        add_to_residual(residual[i * residual_stride], apply_dropout<false>(in[i * in_stride], true, factors));
  }
}

// Unit-stride versions, compiled for several ISAs (transform_cpu.cpp). The *_rows forms take `rows`
// runs of row_size contiguous elements, row r at out + r * out_row_stride (and the inputs' likewise),
// in one call, so that a short row (an 8x8 feature map) costs no call and no setup of its own:
// row r decided by row_bits[r] (uniform rows), or every row by the same per-element bits (shared rows:
// a channels_last pixel's channels).
#define FASTDROP_DECLARE_TRANSFORM_CONTIGUOUS(scalar_t)                                                                \
  void transform_contiguous(scalar_t* out, const scalar_t* in, const uint16_t* bits, int64_t count, uint32_t compare,  \
                            bool affine, DropoutFactors<scalar_t> factors);                                            \
  void transform_uniform_contiguous(scalar_t* out, const scalar_t* in, int64_t count, bool kept, bool affine,          \
                                    DropoutFactors<scalar_t> factors);                                                 \
  void transform_uniform_rows(scalar_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride,        \
                              int64_t row_size, int64_t rows, const uint16_t* row_bits, uint32_t compare, bool affine, \
                              DropoutFactors<scalar_t> factors);                                                       \
  void transform_shared_rows(scalar_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride,         \
                             int64_t row_size, int64_t rows, const uint16_t* bits, uint32_t compare, bool affine,      \
                             DropoutFactors<scalar_t> factors);
FASTDROP_FOR_EACH_FLOAT_TYPE(FASTDROP_DECLARE_TRANSFORM_CONTIGUOUS)
#undef FASTDROP_DECLARE_TRANSFORM_CONTIGUOUS

// The residual forms' unit-stride loops, for each branch type and residual type (the same, or wider);
// narrow_kept_contiguous: a kept branch's gradient from the residual's, cast to the branch's type first.
#define FASTDROP_DECLARE_ADD_CONTIGUOUS(scalar_t, residual_t)                                                        \
  void add_dropout_contiguous(residual_t* out, const scalar_t* in, const residual_t* residual, const scalar_t* bias, \
                              const uint16_t* bits, int64_t count, uint32_t compare,                                 \
                              DropoutFactors<scalar_t> factors);                                                     \
  void add_uniform_contiguous(residual_t* out, const scalar_t* in, const residual_t* residual, int64_t count,        \
                              bool kept, DropoutFactors<scalar_t> factors);                                          \
  void add_uniform_rows(residual_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride,          \
                        const residual_t* residual, int64_t residual_row_stride, int64_t row_size, int64_t rows,     \
                        const uint16_t* row_bits, uint32_t compare, DropoutFactors<scalar_t> factors);               \
  void narrow_kept_contiguous(scalar_t* out, const residual_t* in, int64_t count, DropoutFactors<scalar_t> factors);
FASTDROP_FOR_EACH_RESIDUAL_TYPE(FASTDROP_DECLARE_ADD_CONTIGUOUS)
#undef FASTDROP_DECLARE_ADD_CONTIGUOUS

template <typename scalar_t>
void transform_run(scalar_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride, const uint16_t* bits,
                   int64_t count, uint32_t compare, bool affine, DropoutFactors<scalar_t> factors) {
  if (out_stride == 1 && in_stride == 1) {
    transform_contiguous(out, in, bits, count, compare, affine, factors);
  } else if (affine) {
    transform_loop<true>(out, out_stride, in, in_stride, bits, count, compare, factors);
  } else {
    transform_loop<false>(out, out_stride, in, in_stride, bits, count, compare, factors);
  }
}

template <typename scalar_t>
void transform_uniform_run(scalar_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride, int64_t count,
                           bool kept, bool affine, DropoutFactors<scalar_t> factors) {
  if (out_stride == 1 && in_stride == 1) {
    transform_uniform_contiguous(out, in, count, kept, affine, factors);
  } else if (affine) {
    transform_uniform_loop<true>(out, out_stride, in, in_stride, count, kept, factors);
  } else {
    transform_uniform_loop<false>(out, out_stride, in, in_stride, count, kept, factors);
  }
}

// bias: nullptr for dropout_add.
template <typename scalar_t, typename residual_t>
void add_dropout_run(residual_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                     const residual_t* residual, int64_t residual_stride, const scalar_t* bias, int64_t bias_stride,
                     const uint16_t* bits, int64_t count, uint32_t compare, DropoutFactors<scalar_t> factors) {
  if (out_stride == 1 && in_stride == 1 && residual_stride == 1 && (bias == nullptr || bias_stride == 1)) {
    add_dropout_contiguous(out, in, residual, bias, bits, count, compare, factors);
  } else if (bias != nullptr) {
    add_dropout_loop<true>(out, out_stride, in, in_stride, residual, residual_stride, bias, bias_stride, bits, count,
                           compare, factors);
  } else {
    add_dropout_loop<false>(out, out_stride, in, in_stride, residual, residual_stride, bias, bias_stride, bits, count,
                            compare, factors);
  }
}

template <typename scalar_t, typename residual_t>
void add_uniform_run(residual_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                     const residual_t* residual, int64_t residual_stride, int64_t count, bool kept,
                     DropoutFactors<scalar_t> factors) {
  if (out_stride == 1 && in_stride == 1 && residual_stride == 1) {
    add_uniform_contiguous(out, in, residual, count, kept, factors);
  } else {
    add_uniform_loop(out, out_stride, in, in_stride, residual, residual_stride, count, kept, factors);
  }
}

}  // namespace fastdrop::cpu
