#include "half_cpu.h"

#include <c10/util/bit_cast.h>

#include <cstring>

#include "isa_variants.h"
#include "vectorize.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTDROP_X86_SIMD 1
#include <immintrin.h>
// GCC's _mm512_cvtps_ph passes an undefined vector as the unused source: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace fastdrop::cpu {
namespace {

void to_float_scalar(const c10::Half* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(in[i]);
}

void to_half_scalar(const float* in, c10::Half* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<c10::Half>(in[i]);
}

template <AfterScale kThen>
void scale_scalar(const c10::Half* in, const c10::Half* residual, c10::Half* out, int64_t count, float mul, float add) {
  for (int64_t i = 0; i < count; ++i) {
    c10::Half result = static_cast<c10::Half>(static_cast<float>(in[i]) * mul);
    if constexpr (kThen == AfterScale::kAddConstant) result = static_cast<c10::Half>(static_cast<float>(result) + add);
    if constexpr (kThen == AfterScale::kAddResidual) {
      result = static_cast<c10::Half>(static_cast<float>(result) + static_cast<float>(residual[i]));
    }
    out[i] = result;
  }
}

#if FASTDROP_X86_SIMD

// Tails go through a padded copy or a masked access: the same instructions convert every element,
// whatever its position.
__attribute__((target("avx2,f16c"))) void to_float_f16c(const c10::Half* in, float* out, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
  if (i < count) {
    alignas(32) uint16_t halves[8] = {};
    alignas(32) float floats[8];
    std::memcpy(halves, in + i, (count - i) * sizeof(c10::Half));
    _mm256_store_ps(floats, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(halves))));
    std::memcpy(out + i, floats, (count - i) * sizeof(float));
  }
}

__attribute__((target("avx2,f16c"))) void to_half_f16c(const float* in, c10::Half* out, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < count) {
    alignas(32) float floats[8] = {};
    alignas(32) uint16_t halves[8];
    std::memcpy(floats, in + i, (count - i) * sizeof(float));
    _mm_store_si128(reinterpret_cast<__m128i*>(halves),
                    _mm256_cvtps_ph(_mm256_load_ps(floats), _MM_FROUND_TO_NEAREST_INT));
    std::memcpy(out + i, halves, (count - i) * sizeof(c10::Half));
  }
}

__attribute__((target("avx512f"))) void to_float_avx512(const c10::Half* in, float* out, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  }
  if (i < count) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    alignas(64) uint16_t padded[16] = {};
    std::memcpy(padded, in + i, (count - i) * sizeof(c10::Half));
    _mm512_mask_storeu_ps(out + i, mask, _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(padded))));
  }
}

__attribute__((target("avx512f"))) void to_half_avx512(const float* in, c10::Half* out, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < count) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    alignas(64) uint16_t halves[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(halves),
                       _mm512_cvtps_ph(_mm512_maskz_loadu_ps(mask, in + i), _MM_FROUND_TO_NEAREST_INT));
    std::memcpy(out + i, halves, (count - i) * sizeof(c10::Half));
  }
}

// One run scaled (then shifted, or added to a residual) in a single pass: the loads, conversions and
// stores of each step through a float buffer cost fp16 drop path 15% over bf16's at 2^22 elements.
// The tail goes through padded copies, so every element takes the same instructions.
template <AfterScale kThen>
__attribute__((target("avx2,f16c"))) void scale_f16c(const c10::Half* in, const c10::Half* residual, c10::Half* out,
                                                     int64_t count, float mul, float add) {
  const __m256 m = _mm256_set1_ps(mul), constant = _mm256_set1_ps(add);
  auto block = [&](const c10::Half* in8, const c10::Half* residual8,
                   c10::Half* out8) __attribute__((target("avx2,f16c"))) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in8)));
    __m128i result = _mm256_cvtps_ph(_mm256_mul_ps(x, m), _MM_FROUND_TO_NEAREST_INT);
    if constexpr (kThen != AfterScale::kNothing) {
      const __m256 addend = kThen == AfterScale::kAddConstant
                                ? constant
                                : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(residual8)));
      result = _mm256_cvtps_ph(_mm256_add_ps(_mm256_cvtph_ps(result), addend), _MM_FROUND_TO_NEAREST_INT);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out8), result);
  };
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) block(in + i, kThen == AfterScale::kAddResidual ? residual + i : nullptr, out + i);
  if (i < count) {
    c10::Half x[8] = {}, r[8] = {}, y[8];
    std::memcpy(x, in + i, (count - i) * sizeof(c10::Half));
    if (kThen == AfterScale::kAddResidual) std::memcpy(r, residual + i, (count - i) * sizeof(c10::Half));
    block(x, r, y);
    std::memcpy(out + i, y, (count - i) * sizeof(c10::Half));
  }
}

template <AfterScale kThen>
__attribute__((target("avx512f"))) void scale_avx512(const c10::Half* in, const c10::Half* residual, c10::Half* out,
                                                     int64_t count, float mul, float add) {
  const __m512 m = _mm512_set1_ps(mul), constant = _mm512_set1_ps(add);
  auto block = [&](const c10::Half* in16, const c10::Half* residual16,
                   c10::Half* out16) __attribute__((target("avx512f"))) {
    const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in16)));
    __m256i result = _mm512_cvtps_ph(_mm512_mul_ps(x, m), _MM_FROUND_TO_NEAREST_INT);
    if constexpr (kThen != AfterScale::kNothing) {
      const __m512 addend = kThen == AfterScale::kAddConstant
                                ? constant
                                : _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(residual16)));
      result = _mm512_cvtps_ph(_mm512_add_ps(_mm512_cvtph_ps(result), addend), _MM_FROUND_TO_NEAREST_INT);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16), result);
  };
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) block(in + i, kThen == AfterScale::kAddResidual ? residual + i : nullptr, out + i);
  if (i < count) {
    c10::Half x[16] = {}, r[16] = {}, y[16];
    std::memcpy(x, in + i, (count - i) * sizeof(c10::Half));
    if (kThen == AfterScale::kAddResidual) std::memcpy(r, residual + i, (count - i) * sizeof(c10::Half));
    block(x, r, y);
    std::memcpy(out + i, y, (count - i) * sizeof(c10::Half));
  }
}

#endif  // FASTDROP_X86_SIMD

struct Conversions {
  void (*to_float)(const c10::Half*, float*, int64_t);
  void (*to_half)(const float*, c10::Half*, int64_t);
  // Indexed by AfterScale.
  void (*scale[3])(const c10::Half* in, const c10::Half* residual, c10::Half* out, int64_t count, float mul, float add);
  const char* isa;
};

// The variants this CPU can run, best first.
int supported(Conversions* variants) {
  int count = 0;
#if FASTDROP_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    variants[count++] = {to_float_avx512,
                         to_half_avx512,
                         {scale_avx512<AfterScale::kNothing>, scale_avx512<AfterScale::kAddConstant>,
                          scale_avx512<AfterScale::kAddResidual>},
                         "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
    variants[count++] = {
        to_float_f16c,
        to_half_f16c,
        {scale_f16c<AfterScale::kNothing>, scale_f16c<AfterScale::kAddConstant>, scale_f16c<AfterScale::kAddResidual>},
        "f16c"};
  }
#endif
  variants[count++] = {to_float_scalar,
                       to_half_scalar,
                       {scale_scalar<AfterScale::kNothing>, scale_scalar<AfterScale::kAddConstant>,
                        scale_scalar<AfterScale::kAddResidual>},
                       "scalar"};
  return count;
}

const IsaVariants<Conversions, 3>& conversions() {
  static const auto variants = IsaVariants<Conversions, 3>::of(supported);
  return variants;
}

// FASTDROP_CPU_ISA=avx2 selects "f16c", the conversions AVX2-era CPUs have.
const Conversions& chosen() {
  static const Conversions& variant =
      conversions().chosen([](const char* isa) -> const char* { return std::strcmp(isa, "avx2") == 0 ? "f16c" : isa; });
  return variant;
}

}  // namespace

void half_to_float(const c10::Half* in, float* out, int64_t count) { chosen().to_float(in, out, count); }

void float_to_half(const float* in, c10::Half* out, int64_t count) { chosen().to_half(in, out, count); }

void scale_half(AfterScale then, const c10::Half* in, const c10::Half* residual, c10::Half* out, int64_t count,
                float mul, float add) {
  chosen().scale[static_cast<int>(then)](in, residual, out, count, mul, add);
}

const char* half_conversion_isa() { return chosen().isa; }

bool half_to_float_using(const char* isa, const c10::Half* in, float* out, int64_t count) {
  const Conversions* variant = conversions().find(isa);
  if (variant == nullptr) return false;
  variant->to_float(in, out, count);
  return true;
}

bool float_to_half_using(const char* isa, const float* in, c10::Half* out, int64_t count) {
  const Conversions* variant = conversions().find(isa);
  if (variant == nullptr) return false;
  variant->to_half(in, out, count);
  return true;
}

bool scale_half_using(const char* isa, AfterScale then, const c10::Half* in, const c10::Half* residual, c10::Half* out,
                      int64_t count, float mul, float add) {
  const Conversions* variant = conversions().find(isa);
  if (variant == nullptr) return false;
  variant->scale[static_cast<int>(then)](in, residual, out, count, mul, add);
  return true;
}

namespace {

// c10's round_to_nearest_even on the float's bits, NaN test included, kept in 32 bits.
FASTDROP_ALWAYS_INLINE uint32_t rounded_bfloat16_bits(float value) {
  const uint32_t bits = c10::bit_cast<uint32_t>(value);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded;
}

}  // namespace

FASTDROP_CPU_CLONES void bfloat16_to_float(const c10::BFloat16* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = c10::bit_cast<float>(static_cast<uint32_t>(in[i].x) << 16);
}

FASTDROP_CPU_CLONES void float_to_bfloat16(const float* in, c10::BFloat16* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i].x = static_cast<uint16_t>(rounded_bfloat16_bits(in[i]));
}

FASTDROP_CPU_CLONES void round_to_bfloat16(float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] = c10::bit_cast<float>(rounded_bfloat16_bits(x[i]) << 16);
}

}  // namespace fastdrop::cpu
