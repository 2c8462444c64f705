// The unit-stride loops of transform.h, cloned per ISA so they vectorize with
// the widest instructions the CPU has.
#include "transform.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "half_cpu.h"

namespace fastdrop::cpu {

// The element loops with one decision per run: float, double and bf16 (GCC vectorizes bf16's well
// here, 10-20% faster than through float buffers; fp16: below).
#define FASTDROP_DEFINE_TRANSFORM_UNIFORM(scalar_t)                                                                  \
  FASTDROP_CPU_CLONES void transform_uniform_contiguous(scalar_t* out, const scalar_t* in, int64_t count, bool kept, \
                                                        bool affine, DropoutFactors<scalar_t> factors) {             \
    if (affine) {                                                                                                    \
      transform_uniform_loop<true>(out, 1, in, 1, count, kept, factors);                                             \
    } else {                                                                                                         \
      transform_uniform_loop<false>(out, 1, in, 1, count, kept, factors);                                            \
    }                                                                                                                \
  }                                                                                                                  \
  FASTDROP_CPU_CLONES void transform_uniform_rows(                                                                   \
      scalar_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride, int64_t row_size,            \
      int64_t rows, const uint16_t* row_bits, uint32_t compare, bool affine, DropoutFactors<scalar_t> factors) {     \
    if (affine) {                                                                                                    \
      uniform_rows_loop<true>(out, out_row_stride, in, in_row_stride, row_size, rows, row_bits, compare, factors);   \
    } else {                                                                                                         \
      uniform_rows_loop<false>(out, out_row_stride, in, in_row_stride, row_size, rows, row_bits, compare, factors);  \
    }                                                                                                                \
  }
FASTDROP_DEFINE_TRANSFORM_UNIFORM(float)
FASTDROP_DEFINE_TRANSFORM_UNIFORM(double)
FASTDROP_DEFINE_TRANSFORM_UNIFORM(c10::BFloat16)
#undef FASTDROP_DEFINE_TRANSFORM_UNIFORM

// The element loops with a decision per element: float and double (16-bit types: below).
#define FASTDROP_DEFINE_TRANSFORM_BY_ELEMENT(scalar_t)                                                         \
  FASTDROP_CPU_CLONES void transform_contiguous(scalar_t* out, const scalar_t* in, const uint16_t* bits,       \
                                                int64_t count, uint32_t compare, bool affine,                  \
                                                DropoutFactors<scalar_t> factors) {                            \
    if (affine) {                                                                                              \
      transform_loop<true>(out, 1, in, 1, bits, count, compare, factors);                                      \
    } else {                                                                                                   \
      transform_loop<false>(out, 1, in, 1, bits, count, compare, factors);                                     \
    }                                                                                                          \
  }                                                                                                            \
  FASTDROP_CPU_CLONES void transform_shared_rows(                                                              \
      scalar_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride, int64_t row_size,      \
      int64_t rows, const uint16_t* bits, uint32_t compare, bool affine, DropoutFactors<scalar_t> factors) {   \
    if (affine) {                                                                                              \
      shared_rows_loop<true>(out, out_row_stride, in, in_row_stride, row_size, rows, bits, compare, factors);  \
    } else {                                                                                                   \
      shared_rows_loop<false>(out, out_row_stride, in, in_row_stride, row_size, rows, bits, compare, factors); \
    }                                                                                                          \
  }
FASTDROP_DEFINE_TRANSFORM_BY_ELEMENT(float)
FASTDROP_DEFINE_TRANSFORM_BY_ELEMENT(double)
#undef FASTDROP_DEFINE_TRANSFORM_BY_ELEMENT

#define FASTDROP_DEFINE_ADD_CONTIGUOUS(scalar_t, residual_t)                                                          \
  FASTDROP_CPU_CLONES void add_dropout_contiguous(residual_t* out, const scalar_t* in, const residual_t* residual,    \
                                                  const scalar_t* bias, const uint16_t* bits, int64_t count,          \
                                                  uint32_t compare, DropoutFactors<scalar_t> factors) {               \
    if (bias != nullptr) {                                                                                            \
      add_dropout_loop<true>(out, 1, in, 1, residual, 1, bias, 1, bits, count, compare, factors);                     \
    } else {                                                                                                          \
      add_dropout_loop<false>(out, 1, in, 1, residual, 1, bias, 0, bits, count, compare, factors);                    \
    }                                                                                                                 \
  }                                                                                                                   \
  FASTDROP_CPU_CLONES void add_uniform_contiguous(residual_t* out, const scalar_t* in, const residual_t* residual,    \
                                                  int64_t count, bool kept, DropoutFactors<scalar_t> factors) {       \
    add_uniform_loop(out, 1, in, 1, residual, 1, count, kept, factors);                                               \
  }                                                                                                                   \
  FASTDROP_CPU_CLONES void add_uniform_rows(                                                                          \
      residual_t* out, int64_t out_row_stride, const scalar_t* in, int64_t in_row_stride, const residual_t* residual, \
      int64_t residual_row_stride, int64_t row_size, int64_t rows, const uint16_t* row_bits, uint32_t compare,        \
      DropoutFactors<scalar_t> factors) {                                                                             \
    for (int64_t r = 0; r < rows; ++r) {                                                                              \
      add_uniform_loop(out + r * out_row_stride, 1, in + r * in_row_stride, 1, residual + r * residual_row_stride, 1, \
                       row_size, is_kept(row_bits[r], compare), factors);                                             \
    }                                                                                                                 \
  }                                                                                                                   \
  FASTDROP_CPU_CLONES void narrow_kept_contiguous(scalar_t* out, const residual_t* in, int64_t count,                 \
                                                  DropoutFactors<scalar_t> factors) {                                 \
    narrow_kept_loop(out, in, count, factors);                                                                        \
  }
FASTDROP_DEFINE_ADD_CONTIGUOUS(float, float)
FASTDROP_DEFINE_ADD_CONTIGUOUS(float, double)
FASTDROP_DEFINE_ADD_CONTIGUOUS(double, double)
FASTDROP_DEFINE_ADD_CONTIGUOUS(c10::BFloat16, c10::BFloat16)
FASTDROP_DEFINE_ADD_CONTIGUOUS(c10::BFloat16, float)
FASTDROP_DEFINE_ADD_CONTIGUOUS(c10::BFloat16, double)
#undef FASTDROP_DEFINE_ADD_CONTIGUOUS

// fp16, and bf16's transforms: a chunk at a time through float buffers (half_cpu.h), the float loops
// below in between, and values rounded to the 16-bit type where apply_dropout and add_elements round
// them. The result is bit for bit that of the element loops.
namespace {

constexpr int64_t kHalfChunk = 256;

FASTDROP_CPU_CLONES void scale_by_bits(float* x, const uint16_t* bits, int64_t count, uint32_t compare, float mul) {
  for (int64_t i = 0; i < count; ++i) x[i] = x[i] * (is_kept(bits[i], compare) ? mul : 0.0f);
}

FASTDROP_CPU_CLONES void add_by_bits(float* x, const uint16_t* bits, int64_t count, uint32_t compare, float keep_add,
                                     float drop_add) {
  for (int64_t i = 0; i < count; ++i) x[i] = x[i] + (is_kept(bits[i], compare) ? keep_add : drop_add);
}

FASTDROP_CPU_CLONES void scale(float* x, int64_t count, float mul) {
  for (int64_t i = 0; i < count; ++i) x[i] = x[i] * mul;
}

FASTDROP_CPU_CLONES void add(float* x, const float* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] = x[i] + y[i];
}

void round_to_half(float* x, int64_t count) {
  c10::Half rounded[kHalfChunk];
  float_to_half(x, rounded, count);
  half_to_float(rounded, x, count);
}

// The 16-bit types' conversions by overload; round_to's first argument only names the type.
void to_float(const c10::Half* in, float* out, int64_t count) { half_to_float(in, out, count); }
void to_float(const c10::BFloat16* in, float* out, int64_t count) { bfloat16_to_float(in, out, count); }
void from_float(const float* in, c10::Half* out, int64_t count) { float_to_half(in, out, count); }
void from_float(const float* in, c10::BFloat16* out, int64_t count) { float_to_bfloat16(in, out, count); }
void round_to(c10::Half*, float* x, int64_t count) { round_to_half(x, count); }
void round_to(c10::BFloat16*, float* x, int64_t count) { round_to_bfloat16(x, count); }

// residual + x (x already rounded to fp16, in float), rounded into out: an fp16
// residual's sum rounded to fp16, a float one's exact in float, a double one's in double.
void add_residual(float* x, const c10::Half* residual, c10::Half* out, int64_t count) {
  alignas(64) float r[kHalfChunk];
  half_to_float(residual, r, count);
  add(x, r, count);
  float_to_half(x, out, count);
}

FASTDROP_CPU_CLONES void add_residual(float* x, const float* residual, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = x[i] + residual[i];
}

FASTDROP_CPU_CLONES void add_residual(float* x, const double* residual, double* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<double>(x[i]) + residual[i];
}

template <typename residual_t>
void half_add_dropout(residual_t* out, const c10::Half* in, const residual_t* residual, const c10::Half* bias,
                      const uint16_t* bits, int64_t count, uint32_t compare, DropoutFactors<c10::Half> factors) {
  alignas(64) float x[kHalfChunk], b[kHalfChunk];
  for (int64_t done = 0; done < count; done += kHalfChunk) {
    const int64_t n = std::min(kHalfChunk, count - done);
    half_to_float(in + done, x, n);
    if (bias != nullptr) {
      half_to_float(bias + done, b, n);
      add(x, b, n);
      round_to_half(x, n);
    }
    scale_by_bits(x, bits + done, n, compare, factors.keep_mul);
    round_to_half(x, n);
    add_residual(x, residual + done, out + done, n);
  }
}

template <typename residual_t>
void half_add_uniform(residual_t* out, const c10::Half* in, const residual_t* residual, int64_t count, bool kept,
                      DropoutFactors<c10::Half> factors) {
  if (!kept) {  // the residual itself; the branch is never read
    std::memmove(out, residual, count * sizeof(residual_t));
    return;
  }
  if constexpr (std::is_same_v<residual_t, c10::Half>) {
    scale_half(AfterScale::kAddResidual, in, residual, out, count, factors.keep_mul, 0.0f);
    return;
  }
  alignas(64) float x[kHalfChunk];
  for (int64_t done = 0; done < count; done += kHalfChunk) {
    const int64_t n = std::min(kHalfChunk, count - done);
    half_to_float(in + done, x, n);
    scale(x, n, factors.keep_mul);
    round_to_half(x, n);
    add_residual(x, residual + done, out + done, n);
  }
}

// x (a chunk of residual_t values, converted to float) rounded to fp16, as a cast rounds it.
void load_as_half(const c10::Half* in, float* x, int64_t count) { half_to_float(in, x, count); }

FASTDROP_CPU_CLONES void load_as_half(const float* in, float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] = in[i];
  round_to_half(x, count);
}

FASTDROP_CPU_CLONES void load_as_half(const double* in, float* x, int64_t count) {
  // c10's double -> Half goes through float, as torch's casts do.
  for (int64_t i = 0; i < count; ++i) x[i] = static_cast<float>(in[i]);
  round_to_half(x, count);
}

template <typename residual_t>
void half_narrow_kept(c10::Half* out, const residual_t* in, int64_t count, DropoutFactors<c10::Half> factors) {
  alignas(64) float x[kHalfChunk];
  for (int64_t done = 0; done < count; done += kHalfChunk) {
    const int64_t n = std::min(kHalfChunk, count - done);
    load_as_half(in + done, x, n);
    scale(x, n, factors.keep_mul);
    float_to_half(x, out + done, n);
  }
}

template <typename residual_t>
void half_add_uniform_rows(residual_t* out, int64_t out_row_stride, const c10::Half* in, int64_t in_row_stride,
                           const residual_t* residual, int64_t residual_row_stride, int64_t row_size, int64_t rows,
                           const uint16_t* row_bits, uint32_t compare, DropoutFactors<c10::Half> factors) {
  for (int64_t r = 0; r < rows; ++r) {
    half_add_uniform(out + r * out_row_stride, in + r * in_row_stride, residual + r * residual_row_stride, row_size,
                     is_kept(row_bits[r], compare), factors);
  }
}

template <typename half_t>
void chunked_transform(half_t* out, const half_t* in, const uint16_t* bits, int64_t count, uint32_t compare,
                       bool affine, DropoutFactors<half_t> factors) {
  alignas(64) float x[kHalfChunk];
  for (int64_t done = 0; done < count; done += kHalfChunk) {
    const int64_t n = std::min(kHalfChunk, count - done);
    to_float(in + done, x, n);
    scale_by_bits(x, bits + done, n, compare, factors.keep_mul);
    if (affine) {
      round_to(out, x, n);
      add_by_bits(x, bits + done, n, compare, factors.keep_add, factors.drop_add);
    }
    from_float(x, out + done, n);
  }
}

// Short rows side by side in memory (a contiguous NCHW tensor's channels, a channels_last tensor's
// pixels) go a chunk of whole rows at a time, so a row costs no conversion call of its own.
bool adjacent_short_rows(int64_t out_row_stride, int64_t in_row_stride, int64_t row_size) {
  return out_row_stride == row_size && in_row_stride == row_size && row_size <= kHalfChunk / 2;
}

FASTDROP_CPU_CLONES void scale_rows(float* x, int64_t row_size, int64_t rows, const uint16_t* row_bits,
                                    uint32_t compare, float mul) {
  for (int64_t r = 0; r < rows; ++r) {
    const float row_mul = is_kept(row_bits[r], compare) ? mul : 0.0f;
    for (int64_t i = 0; i < row_size; ++i) x[r * row_size + i] = x[r * row_size + i] * row_mul;
  }
}

FASTDROP_CPU_CLONES void add_rows(float* x, int64_t row_size, int64_t rows, const uint16_t* row_bits, uint32_t compare,
                                  float keep_add, float drop_add) {
  for (int64_t r = 0; r < rows; ++r) {
    const float row_add = is_kept(row_bits[r], compare) ? keep_add : drop_add;
    for (int64_t i = 0; i < row_size; ++i) x[r * row_size + i] = x[r * row_size + i] + row_add;
  }
}

FASTDROP_CPU_CLONES void scale_shared_rows(float* x, int64_t row_size, int64_t rows, const uint16_t* bits,
                                           uint32_t compare, float mul) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * row_size;
    for (int64_t i = 0; i < row_size; ++i) row[i] = row[i] * (is_kept(bits[i], compare) ? mul : 0.0f);
  }
}

FASTDROP_CPU_CLONES void add_shared_rows(float* x, int64_t row_size, int64_t rows, const uint16_t* bits,
                                         uint32_t compare, float keep_add, float drop_add) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < row_size; ++i) {
      x[r * row_size + i] = x[r * row_size + i] + (is_kept(bits[i], compare) ? keep_add : drop_add);
    }
  }
}

// Adjacent short rows a chunk of whole rows at a time: scale(x, first_row, rows) multiplies a chunk in
// float, shift(...) adds the affine part after the product's rounding to the 16-bit type.
template <typename half_t, typename Scale, typename Shift>
void in_row_chunks(half_t* out, const half_t* in, int64_t row_size, int64_t rows, bool affine, const Scale& scale,
                   const Shift& shift) {
  alignas(64) float x[kHalfChunk];
  const int64_t rows_per_chunk = kHalfChunk / row_size;
  for (int64_t r = 0; r < rows; r += rows_per_chunk) {
    const int64_t n = std::min(rows_per_chunk, rows - r), count = n * row_size;
    to_float(in + r * row_size, x, count);
    scale(x, r, n);
    if (affine) {
      round_to(out, x, count);
      shift(x, r, n);
    }
    from_float(x, out + r * row_size, count);
  }
}

// Rows sharing their elements' decisions (a channels_last input's pixels: each channel's decision is the
// same at every pixel) of 32 fp16 elements and more, or 64 bf16 ones with AVX-512: a chunk of columns'
// factors computed once, then every row's slice of it in one pass. On (N, C, 16, 16) channels_last at
// 2^20 elements: fp16 dropout2d 0.105 ms through the float buffer, 0.087 ms so, feature_alpha_dropout
// 0.195 and 0.10 ms; bf16 dropout2d 0.124 and 0.105 ms at C = 64, 0.123 and 0.093 ms at C = 256, but
// 0.127 and 0.148 ms at C = 32. (bf16 runs of one decision stay with the element loops: GCC's
// vectorization of them was as fast, and faster with alpha dropout's second rounding.)
void scale_by(const c10::Half* in, c10::Half* out, int64_t count, const float* mul, const float* add) {
  scale_half_by(in, out, count, mul, add);
}

// Called only where has_one_pass_rows found the one-pass loop, so it always runs.
void scale_by(const c10::BFloat16* in, c10::BFloat16* out, int64_t count, const float* mul, const float* add) {
  scale_bfloat16_by(in, out, count, mul, add);
}

template <typename half_t>
bool has_one_pass_rows(int64_t row_size) {
  if constexpr (std::is_same_v<half_t, c10::Half>) return row_size >= 32;
  return row_size >= 64 && has_one_pass_bfloat16();
}

template <typename half_t>
void scaled_shared_rows(half_t* out, int64_t out_row_stride, const half_t* in, int64_t in_row_stride, int64_t row_size,
                        int64_t rows, const uint16_t* bits, uint32_t compare, bool affine,
                        DropoutFactors<half_t> factors) {
  alignas(64) float mul[kHalfChunk], add[kHalfChunk];
  for (int64_t column = 0; column < row_size; column += kHalfChunk) {
    const int64_t n = std::min(kHalfChunk, row_size - column);
    for (int64_t i = 0; i < n; ++i) {
      const bool kept = is_kept(bits[column + i], compare);
      mul[i] = kept ? factors.keep_mul : 0.0f;
      add[i] = kept ? factors.keep_add : factors.drop_add;
    }
    for (int64_t r = 0; r < rows; ++r) {
      scale_by(in + r * in_row_stride + column, out + r * out_row_stride + column, n, mul, affine ? add : nullptr);
    }
  }
}

template <typename half_t>
void chunked_transform_shared_rows(half_t* out, int64_t out_row_stride, const half_t* in, int64_t in_row_stride,
                                   int64_t row_size, int64_t rows, const uint16_t* bits, uint32_t compare, bool affine,
                                   DropoutFactors<half_t> factors) {
  if (has_one_pass_rows<half_t>(row_size)) {
    scaled_shared_rows(out, out_row_stride, in, in_row_stride, row_size, rows, bits, compare, affine, factors);
    return;
  }
  if (!adjacent_short_rows(out_row_stride, in_row_stride, row_size)) {
    for (int64_t r = 0; r < rows; ++r) {
      chunked_transform(out + r * out_row_stride, in + r * in_row_stride, bits, row_size, compare, affine, factors);
    }
    return;
  }
  in_row_chunks(
      out, in, row_size, rows, affine,
      [&](float* x, int64_t, int64_t n) { scale_shared_rows(x, row_size, n, bits, compare, factors.keep_mul); },
      [&](float* x, int64_t, int64_t n) {
        add_shared_rows(x, row_size, n, bits, compare, factors.keep_add, factors.drop_add);
      });
}

}  // namespace

// Per-element decisions, for both 16-bit types, through the float buffer. GCC vectorizes bf16's element
// loop too, but poorly where each element has its own decision: 1.5x slower (feature alpha dropout on
// a channels_last bf16 input at 2^20 elements) than converting, scaling and adding in separate loops.
#define FASTDROP_DEFINE_CHUNKED_TRANSFORM(half_t)                                                                 \
  void transform_contiguous(half_t* out, const half_t* in, const uint16_t* bits, int64_t count, uint32_t compare, \
                            bool affine, DropoutFactors<half_t> factors) {                                        \
    chunked_transform(out, in, bits, count, compare, affine, factors);                                            \
  }                                                                                                               \
  void transform_shared_rows(half_t* out, int64_t out_row_stride, const half_t* in, int64_t in_row_stride,        \
                             int64_t row_size, int64_t rows, const uint16_t* bits, uint32_t compare, bool affine, \
                             DropoutFactors<half_t> factors) {                                                    \
    chunked_transform_shared_rows(out, out_row_stride, in, in_row_stride, row_size, rows, bits, compare, affine,  \
                                  factors);                                                                       \
  }
FASTDROP_DEFINE_CHUNKED_TRANSFORM(c10::Half)
FASTDROP_DEFINE_CHUNKED_TRANSFORM(c10::BFloat16)
#undef FASTDROP_DEFINE_CHUNKED_TRANSFORM

// One decision per run, fp16: converted, scaled and rounded in one pass by the conversion instructions.
void transform_uniform_contiguous(c10::Half* out, const c10::Half* in, int64_t count, bool kept, bool affine,
                                  DropoutFactors<c10::Half> factors) {
  scale_half(affine ? AfterScale::kAddConstant : AfterScale::kNothing, in, nullptr, out, count,
             kept ? factors.keep_mul : 0.0f, kept ? factors.keep_add : factors.drop_add);
}

// Rows of 32 elements and more each go in one fused pass; shorter ones (a 4x4 map) a chunk of rows at a
// time through the float buffer, where a call per row would cost more than the row (measured: a
// (N, 64, 4, 4) dropout2d 0.15 ms by chunks, 0.19 ms by rows; (N, 64, 4, 8) alike; (N, 64, 8, 8) 0.10
// and 0.085 ms, at 2^20 elements).
void transform_uniform_rows(c10::Half* out, int64_t out_row_stride, const c10::Half* in, int64_t in_row_stride,
                            int64_t row_size, int64_t rows, const uint16_t* row_bits, uint32_t compare, bool affine,
                            DropoutFactors<c10::Half> factors) {
  if (!adjacent_short_rows(out_row_stride, in_row_stride, row_size) || row_size >= 32) {
    for (int64_t r = 0; r < rows; ++r) {
      transform_uniform_contiguous(out + r * out_row_stride, in + r * in_row_stride, row_size,
                                   is_kept(row_bits[r], compare), affine, factors);
    }
    return;
  }
  in_row_chunks(
      out, in, row_size, rows, affine,
      [&](float* x, int64_t r, int64_t n) { scale_rows(x, row_size, n, row_bits + r, compare, factors.keep_mul); },
      [&](float* x, int64_t r, int64_t n) {
        add_rows(x, row_size, n, row_bits + r, compare, factors.keep_add, factors.drop_add);
      });
}

// The fp16 branch's residual forms, one set per residual type.
#define FASTDROP_DEFINE_HALF_ADD(residual_t)                                                                           \
  void add_dropout_contiguous(residual_t* out, const c10::Half* in, const residual_t* residual, const c10::Half* bias, \
                              const uint16_t* bits, int64_t count, uint32_t compare,                                   \
                              DropoutFactors<c10::Half> factors) {                                                     \
    half_add_dropout(out, in, residual, bias, bits, count, compare, factors);                                          \
  }                                                                                                                    \
  void add_uniform_contiguous(residual_t* out, const c10::Half* in, const residual_t* residual, int64_t count,         \
                              bool kept, DropoutFactors<c10::Half> factors) {                                          \
    half_add_uniform(out, in, residual, count, kept, factors);                                                         \
  }                                                                                                                    \
  void add_uniform_rows(residual_t* out, int64_t out_row_stride, const c10::Half* in, int64_t in_row_stride,           \
                        const residual_t* residual, int64_t residual_row_stride, int64_t row_size, int64_t rows,       \
                        const uint16_t* row_bits, uint32_t compare, DropoutFactors<c10::Half> factors) {               \
    half_add_uniform_rows(out, out_row_stride, in, in_row_stride, residual, residual_row_stride, row_size, rows,       \
                          row_bits, compare, factors);                                                                 \
  }                                                                                                                    \
  void narrow_kept_contiguous(c10::Half* out, const residual_t* in, int64_t count,                                     \
                              DropoutFactors<c10::Half> factors) {                                                     \
    half_narrow_kept(out, in, count, factors);                                                                         \
  }
FASTDROP_DEFINE_HALF_ADD(c10::Half)
FASTDROP_DEFINE_HALF_ADD(float)
FASTDROP_DEFINE_HALF_ADD(double)
#undef FASTDROP_DEFINE_HALF_ADD

}  // namespace fastdrop::cpu
