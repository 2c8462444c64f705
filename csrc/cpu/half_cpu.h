// fp16 <-> fp32 for runs of elements by the CPU's conversion instructions
// (AVX-512F, F16C), chosen at run time; c10's software conversion elsewhere.
// GCC does not vectorize c10::Half's conversions (nor _Float16's without
// AVX512-FP16), so the fp16 loops convert a chunk at a time through a float
// buffer and run the float loop in between; a run of one decision (channel dropout's map,
// drop path's sample) goes in one pass instead (scale_half). bf16's per-element decisions go the same way: its
// conversions vectorize, but a loop that converts, scales, rounds and adds in
// one body does not vectorize well (2x slower than through the buffer).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastdrop::cpu {

// Exact: every fp16 value is a float.
void half_to_float(const c10::Half* in, float* out, int64_t count);

// Rounded to nearest even, overflow to infinity, as c10 rounds; a NaN stays a NaN of its sign (the
// instructions keep its payload's top bits, as torch's vectorized fp16 ops do; c10's scalar code does not).
void float_to_half(const float* in, c10::Half* out, int64_t count);

// A run of one decision in one pass: out = half(float(in) * mul), then, by `then`, nothing more, or
// that product plus add, or plus the residual's element, rounded to fp16 again: apply_dropout's roundings,
// and add_to_residual's. residual is read only for kAddResidual; out may be in or residual.
enum class AfterScale { kNothing, kAddConstant, kAddResidual };
void scale_half(AfterScale then, const c10::Half* in, const c10::Half* residual, c10::Half* out, int64_t count,
                float mul, float add);
// The same with a multiplier per element, then an addend per element unless add is null (no residual):
// rows that share their elements' decisions, a channels_last input's pixels.
void scale_half_by(const c10::Half* in, c10::Half* out, int64_t count, const float* mul, const float* add);

// scale_half_by for bf16, rounding as c10 does (to nearest even, a NaN to 0x7FC0); false, with nothing
// written, where this CPU has no such loop (no AVX-512: the callers' element loops are as fast there).
bool scale_bfloat16_by(const c10::BFloat16* in, c10::BFloat16* out, int64_t count, const float* mul, const float* add);
// Whether scale_bfloat16_by runs on this CPU.
bool has_one_pass_bfloat16();

// Which variant these use on this machine ("avx512", "f16c" or "scalar"); FASTDROP_CPU_ISA=avx2|scalar
// caps it as it caps the random-bit generator ("avx2" selects "f16c").
const char* half_conversion_isa();

// The conversions through one named variant; false if this CPU cannot run it.
bool half_to_float_using(const char* isa, const c10::Half* in, float* out, int64_t count);
bool float_to_half_using(const char* isa, const float* in, c10::Half* out, int64_t count);
bool scale_half_using(const char* isa, AfterScale then, const c10::Half* in, const c10::Half* residual, c10::Half* out,
                      int64_t count, float mul, float add);
bool scale_half_by_using(const char* isa, const c10::Half* in, c10::Half* out, int64_t count, const float* mul,
                         const float* add);
bool scale_bfloat16_by_using(const char* isa, const c10::BFloat16* in, c10::BFloat16* out, int64_t count,
                             const float* mul, const float* add);

// bf16 -> fp32 exactly; fp32 -> bf16 rounded to nearest even, a NaN to 0x7FC0, bit for bit as c10
// converts (AVX512-BF16's instruction flushes subnormals, so plain integer arithmetic, vectorized).
void bfloat16_to_float(const c10::BFloat16* in, float* out, int64_t count);
void float_to_bfloat16(const float* in, c10::BFloat16* out, int64_t count);
// x[i] = float(bf16(x[i])).
void round_to_bfloat16(float* x, int64_t count);

}  // namespace fastdrop::cpu
