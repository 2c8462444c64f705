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

// Where a fused pass takes its multiplier and addend: one for the whole run, or one per element.
enum class Factors { kOne, kPerElement };

template <typename half_t>
using ScalePass = void (*)(const half_t* in, const half_t* residual, half_t* out, int64_t count, const float* mul,
                           const float* add);

// One ISA's fused passes for one 16-bit type, from its class template Pass<AfterScale, Factors>::run: with
// one factor, indexed by AfterScale; with factors per element, without (0) and with (1) the shift. (A table
// is instantiated only where it is used: bf16 has only the per-element passes.)
template <typename half_t, template <AfterScale, Factors> class Pass>
struct PassesOf {
  static constexpr ScalePass<half_t> one[3] = {Pass<AfterScale::kNothing, Factors::kOne>::run,
                                               Pass<AfterScale::kAddConstant, Factors::kOne>::run,
                                               Pass<AfterScale::kAddResidual, Factors::kOne>::run};
  static constexpr ScalePass<half_t> by_element[2] = {Pass<AfterScale::kNothing, Factors::kPerElement>::run,
                                                      Pass<AfterScale::kAddConstant, Factors::kPerElement>::run};
};

template <typename half_t>
struct ScaleScalar {
  template <AfterScale kThen, Factors kFactors>
  struct Pass {
    static void run(const half_t* in, const half_t* residual, half_t* out, int64_t count, const float* mul,
                    const float* add) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t f = kFactors == Factors::kOne ? 0 : i;
        half_t result = static_cast<half_t>(static_cast<float>(in[i]) * mul[f]);
        if constexpr (kThen == AfterScale::kAddConstant) {
          result = static_cast<half_t>(static_cast<float>(result) + add[f]);
        }
        if constexpr (kThen == AfterScale::kAddResidual) {
          result = static_cast<half_t>(static_cast<float>(result) + static_cast<float>(residual[i]));
        }
        out[i] = result;
      }
    }
  };
};

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

// A run scaled (then shifted, or added to a residual) in a single pass: the loads, conversions and
// stores of each step through a float buffer cost fp16 drop path 15% over bf16's at 2^22 elements.
// scale_in_blocks is every ISA's loop and tail; block(in, residual, mul, add, out) does kWidth elements,
// and the tail goes through padded copies, so every element takes the same instructions.
template <int kWidth, AfterScale kThen, Factors kFactors, typename half_t, typename Block>
FASTDROP_ALWAYS_INLINE void scale_in_blocks(const Block& block, const half_t* in, const half_t* residual, half_t* out,
                                            int64_t count, const float* mul, const float* add) {
  const int64_t step = kFactors == Factors::kOne ? 0 : 1;  // how far the factors move per element
  int64_t i = 0;
  for (; i + kWidth <= count; i += kWidth) {
    block(in + i, kThen == AfterScale::kAddResidual ? residual + i : nullptr, mul + i * step,
          kThen == AfterScale::kAddConstant ? add + i * step : nullptr, out + i);
  }
  if (i < count) {
    const int64_t n = count - i, factors = step == 0 ? 1 : n;
    half_t x[kWidth] = {}, r[kWidth] = {}, y[kWidth];
    float m[kWidth] = {}, a[kWidth] = {};
    std::memcpy(x, in + i, n * sizeof(half_t));
    if (kThen == AfterScale::kAddResidual) std::memcpy(r, residual + i, n * sizeof(half_t));
    std::memcpy(m, mul + i * step, factors * sizeof(float));
    if (kThen == AfterScale::kAddConstant) std::memcpy(a, add + i * step, factors * sizeof(float));
    block(x, r, m, a, y);
    std::memcpy(out + i, y, n * sizeof(half_t));
  }
}

template <AfterScale kThen, Factors kFactors>
struct ScaleF16c {
  __attribute__((target("avx2,f16c"))) static void run(const c10::Half* in, const c10::Half* residual, c10::Half* out,
                                                       int64_t count, const float* mul, const float* add) {
    auto block = [&](const c10::Half* in8, const c10::Half* residual8, const float* mul8, const float* add8,
                     c10::Half* out8) __attribute__((target("avx2,f16c"))) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in8)));
      const __m256 m = kFactors == Factors::kOne ? _mm256_set1_ps(*mul8) : _mm256_loadu_ps(mul8);
      __m128i result = _mm256_cvtps_ph(_mm256_mul_ps(x, m), _MM_FROUND_TO_NEAREST_INT);
      if constexpr (kThen != AfterScale::kNothing) {
        const __m256 addend = kThen == AfterScale::kAddResidual
                                  ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(residual8)))
                              : kFactors == Factors::kOne ? _mm256_set1_ps(*add8)
                                                          : _mm256_loadu_ps(add8);
        result = _mm256_cvtps_ph(_mm256_add_ps(_mm256_cvtph_ps(result), addend), _MM_FROUND_TO_NEAREST_INT);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out8), result);
    };
    scale_in_blocks<8, kThen, kFactors>(block, in, residual, out, count, mul, add);
  }
};

// 16 fp16 or bf16 values to floats and back. bf16 rounds as c10 does, to nearest even and a NaN to 0x7FC0,
// in integer arithmetic: AVX512-BF16's conversion flushes subnormals.
__attribute__((target("avx512f"))) inline __m512 widen16(__m256i halves, const c10::Half*) {
  return _mm512_cvtph_ps(halves);
}

__attribute__((target("avx512f"))) inline __m512 widen16(__m256i halves, const c10::BFloat16*) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

template <typename half_t>
__attribute__((target("avx512f"))) inline __m512 load16(const half_t* in) {
  return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)), in);
}

__attribute__((target("avx512f"))) inline __m256i narrow16(__m512 x, const c10::Half*) {
  return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("avx512f"))) inline __m256i narrow16(__m512 x, const c10::BFloat16*) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

template <typename half_t>
struct ScaleAvx512 {
  template <AfterScale kThen, Factors kFactors>
  struct Pass {
    __attribute__((target("avx512f"))) static void run(const half_t* in, const half_t* residual, half_t* out,
                                                       int64_t count, const float* mul, const float* add) {
      auto block = [&](const half_t* in16, const half_t* residual16, const float* mul16, const float* add16,
                       half_t* out16) __attribute__((target("avx512f"))) {
        const __m512 m = kFactors == Factors::kOne ? _mm512_set1_ps(*mul16) : _mm512_loadu_ps(mul16);
        __m256i result = narrow16(_mm512_mul_ps(load16(in16), m), out16);
        if constexpr (kThen != AfterScale::kNothing) {
          const __m512 addend = kThen == AfterScale::kAddResidual ? load16(residual16)
                                : kFactors == Factors::kOne       ? _mm512_set1_ps(*add16)
                                                                  : _mm512_loadu_ps(add16);
          result = narrow16(_mm512_add_ps(widen16(result, out16), addend), out16);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16), result);
      };
      scale_in_blocks<16, kThen, kFactors>(block, in, residual, out, count, mul, add);
    }
  };
};

#endif  // FASTDROP_X86_SIMD

struct Conversions {
  void (*to_float)(const c10::Half*, float*, int64_t);
  void (*to_half)(const float*, c10::Half*, int64_t);
  const ScalePass<c10::Half>* scale;     // PassesOf::one
  const ScalePass<c10::Half>* scale_by;  // PassesOf::by_element
  // bf16's per-element passes where they beat GCC's vectorization of the element loops (AVX-512); else null.
  const ScalePass<c10::BFloat16>* scale_bfloat16_by;
  const char* isa;
};

// The variants this CPU can run, best first.
int supported(Conversions* variants) {
  int count = 0;
#if FASTDROP_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    using Half = PassesOf<c10::Half, ScaleAvx512<c10::Half>::Pass>;
    using BFloat16 = PassesOf<c10::BFloat16, ScaleAvx512<c10::BFloat16>::Pass>;
    variants[count++] = {to_float_avx512, to_half_avx512, Half::one, Half::by_element, BFloat16::by_element, "avx512"};
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
    using Half = PassesOf<c10::Half, ScaleF16c>;
    variants[count++] = {to_float_f16c, to_half_f16c, Half::one, Half::by_element, nullptr, "f16c"};
  }
#endif
  using Half = PassesOf<c10::Half, ScaleScalar<c10::Half>::Pass>;
  variants[count++] = {to_float_scalar, to_half_scalar, Half::one, Half::by_element, nullptr, "scalar"};
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
  chosen().scale[static_cast<int>(then)](in, residual, out, count, &mul, &add);
}

void scale_half_by(const c10::Half* in, c10::Half* out, int64_t count, const float* mul, const float* add) {
  chosen().scale_by[add != nullptr](in, nullptr, out, count, mul, add);
}

bool scale_bfloat16_by(const c10::BFloat16* in, c10::BFloat16* out, int64_t count, const float* mul, const float* add) {
  if (chosen().scale_bfloat16_by == nullptr) return false;
  chosen().scale_bfloat16_by[add != nullptr](in, nullptr, out, count, mul, add);
  return true;
}

bool has_one_pass_bfloat16() { return chosen().scale_bfloat16_by != nullptr; }

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
  variant->scale[static_cast<int>(then)](in, residual, out, count, &mul, &add);
  return true;
}

bool scale_half_by_using(const char* isa, const c10::Half* in, c10::Half* out, int64_t count, const float* mul,
                         const float* add) {
  const Conversions* variant = conversions().find(isa);
  if (variant == nullptr) return false;
  variant->scale_by[add != nullptr](in, nullptr, out, count, mul, add);
  return true;
}

bool scale_bfloat16_by_using(const char* isa, const c10::BFloat16* in, c10::BFloat16* out, int64_t count,
                             const float* mul, const float* add) {
  const Conversions* variant = conversions().find(isa);
  if (variant == nullptr || variant->scale_bfloat16_by == nullptr) return false;
  variant->scale_bfloat16_by[add != nullptr](in, nullptr, out, count, mul, add);
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
