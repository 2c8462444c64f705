// The CPU kernels of every variant, forward and backward, element by element
// against the single-element statement of the contract (keeps_element), for sizes that end anywhere inside a Philox
// block, a SIMD step or a thread's range, and for strided layouts; and every
// SIMD variant of the bulk generator against the scalar engine, across a block
// index that carries into the counter's high word.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "check.h"
#include "cpu/half_cpu.h"
#include "cpu/philox_cpu.h"
#include "dropout_math.h"
#include "rng_state.h"

// The CPU entry points under test (defined by csrc/entry_points/*.inc in the
// CPU kernel files; declared here, where they are called directly).
namespace fastdrop::cpu {
std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator);
at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
std::tuple<at::Tensor, at::Tensor> alpha_dropout(const at::Tensor& input, double p,
                                                 std::optional<at::Generator> generator);
at::Tensor alpha_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
std::tuple<at::Tensor, at::Tensor> feature_dropout(const at::Tensor& input, double p,
                                                   std::optional<at::Generator> generator);
at::Tensor feature_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
std::tuple<at::Tensor, at::Tensor> feature_alpha_dropout(const at::Tensor& input, double p,
                                                         std::optional<at::Generator> generator);
at::Tensor feature_alpha_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p);
}  // namespace fastdrop::cpu

namespace {

int check_bulk_generator() {
  int checks = 0;
  const uint64_t seed = 0x9E3779B97F4A7C15ull, column = 12345;
  const uint64_t firsts[] = {0, 1, 17, (1ull << 32) - 70};
  const int64_t counts[] = {1, 15, 16, 63, 64, 65, 257};
  for (uint64_t first : firsts) {
    for (int64_t count : counts) {
      std::vector<uint16_t> expected(8 * count), actual(8 * count);
      fastdrop::cpu::fill_element_bits_using("scalar", seed, column, first, count, expected.data());
      for (int64_t k = 0; k < count; ++k) {
        const fastdrop::PhiloxBlock block = fastdrop::contract_block(seed, 4 * column, first + k);
        for (int lane = 0; lane < 8; ++lane) {
          EXPECT(expected[8 * k + lane] == fastdrop::element_bits(block, lane), "scalar fill, block %llu",
                 static_cast<unsigned long long>(first + k));
          ++checks;
        }
      }
      for (const char* isa : {"avx2", "avx512"}) {
        if (!fastdrop::cpu::fill_element_bits_using(isa, seed, column, first, count, actual.data())) continue;
        EXPECT(actual == expected, "%s fill differs from scalar at first=%llu count=%lld", isa,
               static_cast<unsigned long long>(first), static_cast<long long>(count));
        ++checks;
      }
    }
  }
  return checks;
}

// The listed form (any blocks, in any order: a tile's columns) against the contract, through each variant.
int check_listed_generator() {
  int checks = 0;
  const uint64_t seed = 0x0123456789ABCDEFull, column = 77;
  std::mt19937_64 random(5);
  for (int64_t count : {1, 15, 16, 63, 64, 65, 130}) {
    std::vector<uint64_t> blocks(count);
    for (auto& block : blocks) block = random() % 3 == 0 ? (1ull << 32) - 1 + random() % 3 : random() >> 8;
    std::vector<uint16_t> expected(8 * count), actual(8 * count);
    for (int64_t k = 0; k < count; ++k) {
      const fastdrop::PhiloxBlock block = fastdrop::contract_block(seed, 4 * column, blocks[k]);
      for (int lane = 0; lane < 8; ++lane) expected[8 * k + lane] = fastdrop::element_bits(block, lane);
    }
    for (const char* isa : {"scalar", "avx2", "avx512"}) {
      if (!fastdrop::cpu::fill_element_bits_of_using(isa, seed, column, blocks.data(), count, actual.data())) continue;
      EXPECT(actual == expected, "%s listed fill differs from the contract at count=%lld", isa,
             static_cast<long long>(count));
      ++checks;
    }
  }
  return checks;
}

uint16_t half_bits(c10::Half value) { return value.x; }

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// Every fp16 value, and floats at, between and beyond them (ties, overflow, subnormals, NaNs), through
// each conversion variant against c10's conversions. NaNs need only stay NaNs of their sign.
int check_half_conversions() {
  int checks = 0;
  std::vector<c10::Half> halves(1 << 16);
  for (uint32_t bits = 0; bits < (1u << 16); ++bits) {
    halves[bits] = c10::Half(static_cast<uint16_t>(bits), c10::Half::from_bits());
  }
  std::vector<float> floats;
  for (c10::Half h : halves) {
    const float value = static_cast<float>(h);
    floats.push_back(value);
    floats.push_back(std::nextafter(value, INFINITY));
    floats.push_back(std::nextafter(value, -INFINITY));
    // Halfway to the next fp16 value up: a tie, rounded to even.
    const uint16_t next = static_cast<uint16_t>(h.x + 1);
    const float up = static_cast<float>(c10::Half(next, c10::Half::from_bits()));
    if (std::isfinite(value) && std::isfinite(up)) floats.push_back(value + (up - value) / 2);
  }
  std::mt19937 engine(7);
  for (int i = 0; i < (1 << 16); ++i) {
    floats.push_back(std::ldexp(std::uniform_real_distribution<float>(-2.0f, 2.0f)(engine), i % 40 - 30));
  }
  floats.push_back(65520.0f);  // the smallest float that rounds to infinity
  floats.push_back(65519.996f);
  std::vector<float> widened(halves.size()), expected_float(halves.size());
  std::vector<c10::Half> narrowed(floats.size()), expected_half(floats.size());
  fastdrop::cpu::half_to_float_using("scalar", halves.data(), expected_float.data(), halves.size());
  fastdrop::cpu::float_to_half_using("scalar", floats.data(), expected_half.data(), floats.size());
  for (const char* isa : {"f16c", "avx512"}) {
    // Odd lengths exercise the tails.
    for (int64_t count : {int64_t(halves.size()), int64_t(halves.size()) - 5}) {
      std::fill(widened.begin(), widened.end(), -1.0f);
      if (!fastdrop::cpu::half_to_float_using(isa, halves.data(), widened.data(), count)) continue;
      for (int64_t i = 0; i < count; ++i) {
        const bool same = std::isnan(expected_float[i])
                              ? std::isnan(widened[i]) && std::signbit(widened[i]) == std::signbit(expected_float[i])
                              : float_bits(widened[i]) == float_bits(expected_float[i]);
        EXPECT(same, "%s: fp16 0x%04x widened to 0x%08x, c10 gives 0x%08x", isa, halves[i].x, float_bits(widened[i]),
               float_bits(expected_float[i]));
        ++checks;
      }
      EXPECT(count == int64_t(halves.size()) || widened[count] == -1.0f, "%s: wrote past the end", isa);
    }
    for (int64_t count : {int64_t(floats.size()), int64_t(floats.size()) - 3}) {
      if (!fastdrop::cpu::float_to_half_using(isa, floats.data(), narrowed.data(), count)) continue;
      for (int64_t i = 0; i < count; ++i) {
        const bool same = std::isnan(floats[i]) ? std::isnan(static_cast<float>(narrowed[i])) &&
                                                      (narrowed[i].x >> 15) == (float_bits(floats[i]) >> 31)
                                                : half_bits(narrowed[i]) == half_bits(expected_half[i]);
        EXPECT(same, "%s: float 0x%08x narrowed to 0x%04x, c10 gives 0x%04x", isa, float_bits(floats[i]), narrowed[i].x,
               expected_half[i].x);
        ++checks;
      }
    }
  }
  return checks;
}

// A run of one decision's fused pass (scale_half): every fp16 value through each variant, with multipliers
// that overflow, land in the subnormals or are zero, then nothing, a constant or a residual (every fp16
// value again, shifted) added, against c10's conversions around the float arithmetic: apply_dropout's and
// add_to_residual's roundings. Out of place, in place over the input and over the residual; odd lengths
// for the tails.
int check_half_scaling() {
  using fastdrop::cpu::AfterScale;
  int checks = 0;
  const int64_t size = 1 << 16;
  std::vector<c10::Half> halves(size), residual(size), out(size);
  for (int64_t i = 0; i < size; ++i) {
    halves[i] = c10::Half(static_cast<uint16_t>(i), c10::Half::from_bits());
    residual[i] = c10::Half(static_cast<uint16_t>((i * 40503) & 0xFFFF), c10::Half::from_bits());
  }
  for (const char* isa : {"scalar", "f16c", "avx512"}) {
    for (AfterScale then : {AfterScale::kNothing, AfterScale::kAddConstant, AfterScale::kAddResidual}) {
      for (float mul : {1.0f / 0.9f, 0.0f, -1.7f, 300.0f, 1e-4f}) {
        for (float add : {0.0f, 0.3f, -1.7580993f}) {
          for (int aliasing = 0; aliasing < 3; ++aliasing) {  // none, out = in, out = residual
            const int64_t count = size - 3 - aliasing;
            std::vector<c10::Half> in_copy = halves, residual_copy = residual;
            std::fill(out.begin(), out.end(), c10::Half(-7.0f));
            c10::Half* target = aliasing == 1 ? in_copy.data() : aliasing == 2 ? residual_copy.data() : out.data();
            const c10::Half untouched = target[count];
            if (!fastdrop::cpu::scale_half_using(isa, then, in_copy.data(), residual_copy.data(), target, count, mul,
                                                 add)) {
              continue;
            }
            for (int64_t i = 0; i < count; ++i) {
              c10::Half expected = static_cast<c10::Half>(static_cast<float>(halves[i]) * mul);
              if (then == AfterScale::kAddConstant)
                expected = static_cast<c10::Half>(static_cast<float>(expected) + add);
              if (then == AfterScale::kAddResidual) {
                expected = static_cast<c10::Half>(static_cast<float>(expected) + static_cast<float>(residual[i]));
              }
              // Two NaNs summed: which one's sign survives is the compiler's choice of operand order.
              const bool any_nan = then == AfterScale::kAddResidual && std::isnan(static_cast<float>(halves[i])) &&
                                   std::isnan(static_cast<float>(residual[i]));
              const bool same = std::isnan(static_cast<float>(expected))
                                    ? std::isnan(static_cast<float>(target[i])) &&
                                          (any_nan || (target[i].x >> 15) == (expected.x >> 15))
                                    : half_bits(target[i]) == half_bits(expected);
              EXPECT(same, "%s: fp16 0x%04x * %g, then %d, gave 0x%04x, c10 gives 0x%04x", isa, halves[i].x, mul,
                     static_cast<int>(then), target[i].x, expected.x);
              ++checks;
            }
            EXPECT(half_bits(target[count]) == half_bits(untouched), "%s: wrote past the end", isa);
          }
        }
      }
    }
  }
  return checks;
}

// The per-element passes (scale_half_by, scale_bfloat16_by): every 16-bit value with a multiplier and an
// addend of its own, cycling through values that overflow, land in the subnormals or are zero, with and
// without the shift, against c10's conversions around the float arithmetic: fp16 bit for bit but for a
// NaN's payload, bf16 bit for bit (a NaN always 0x7FC0). In place and out of place, odd lengths for the
// tails; a variant without such a pass runs none.
template <typename half_t>
int check_scaling_by_element(bool (*scale_by_using)(const char*, const half_t*, half_t*, int64_t, const float*,
                                                    const float*),
                             float huge, float tiny) {
  int checks = 0;
  const int64_t size = 1 << 16;
  const float muls[] = {1.0f / 0.9f, 0.0f, -1.7f, huge, tiny, 1.0f / 0.7f, 0.5f};
  const float adds[] = {0.0f, 0.3f, -1.7580993f};
  std::vector<half_t> values(size), out(size);
  std::vector<float> mul(size), add(size);
  for (int64_t i = 0; i < size; ++i) {
    values[i] = half_t(static_cast<uint16_t>(i), half_t::from_bits());
    mul[i] = muls[i % 7];
    add[i] = adds[i % 3];
  }
  for (const char* isa : {"scalar", "f16c", "avx512"}) {
    for (const bool shift : {false, true}) {
      for (const bool in_place : {false, true}) {
        const int64_t count = size - (in_place ? 5 : 3);
        std::vector<half_t> in_copy = values;
        std::fill(out.begin(), out.end(), half_t(-7.0f));
        half_t* target = in_place ? in_copy.data() : out.data();
        const half_t untouched = target[count];
        if (!scale_by_using(isa, in_copy.data(), target, count, mul.data(), shift ? add.data() : nullptr)) continue;
        for (int64_t i = 0; i < count; ++i) {
          half_t expected = static_cast<half_t>(static_cast<float>(values[i]) * mul[i]);
          if (shift) expected = static_cast<half_t>(static_cast<float>(expected) + add[i]);
          const bool nan_of_sign = std::is_same_v<half_t, c10::Half> && std::isnan(static_cast<float>(expected)) &&
                                   std::isnan(static_cast<float>(target[i])) &&
                                   (target[i].x >> 15) == (expected.x >> 15);
          EXPECT(target[i].x == expected.x || nan_of_sign, "%s: 0x%04x * %g (+ %g if %d) gave 0x%04x, c10 gives 0x%04x",
                 isa, values[i].x, mul[i], add[i], shift, target[i].x, expected.x);
          ++checks;
        }
        EXPECT(target[count].x == untouched.x, "%s: wrote past the end", isa);
      }
    }
  }
  return checks;
}

using Forward = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, double, std::optional<at::Generator>);
using Backward = at::Tensor (*)(const at::Tensor&, const at::Tensor&, double);

struct VariantUnderTest {
  const char* name;
  Forward forward;
  Backward backward;
  fastdrop::Variant forward_variant, backward_variant;
  bool per_row;  // one decision per (n, c) instead of per element
};

const VariantUnderTest kVariants[] = {
    {"dropout", fastdrop::cpu::dropout, fastdrop::cpu::dropout_backward, fastdrop::Variant::kScaleOpMath,
     fastdrop::Variant::kScaleOpMath, false},
    {"alpha_dropout", fastdrop::cpu::alpha_dropout, fastdrop::cpu::alpha_dropout_backward,
     fastdrop::Variant::kAlphaAffine, fastdrop::Variant::kAlphaScale, false},
    {"feature_dropout", fastdrop::cpu::feature_dropout, fastdrop::cpu::feature_dropout_backward,
     fastdrop::Variant::kScaleRounded, fastdrop::Variant::kScaleRounded, true},
    {"feature_alpha_dropout", fastdrop::cpu::feature_alpha_dropout, fastdrop::cpu::feature_alpha_dropout_backward,
     fastdrop::Variant::kAlphaAffine, fastdrop::Variant::kAlphaScale, true},
};

// Every element of forward and backward against the single-element contract.
template <typename scalar_t>
int check_variant(const VariantUnderTest& variant, const at::Tensor& input, double p) {
  int checks = 0;
  auto [output, rng_state] = variant.forward(input, p, std::nullopt);
  const at::Tensor grad = at::randn_like(input);
  const at::Tensor grad_input = variant.backward(grad, rng_state, p);
  const fastdrop::RngState rng = fastdrop::read_rng_state_cpu(rng_state);
  const fastdrop::DropThreshold threshold = fastdrop::drop_threshold(p);
  const auto forward_factors = fastdrop::dropout_factors<scalar_t>(variant.forward_variant, p);
  const auto backward_factors = fastdrop::dropout_factors<scalar_t>(variant.backward_variant, p);
  const bool affine = fastdrop::is_affine(variant.forward_variant, p);
  // Logical order: flatten everything through contiguous copies.
  const at::Tensor x = input.contiguous().view(-1), y = output.contiguous().view(-1);
  const at::Tensor g = grad.contiguous().view(-1), gx = grad_input.contiguous().view(-1);
  const int64_t row_size = variant.per_row ? input.numel() / (input.size(0) * input.size(1)) : 1;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const uint64_t index = static_cast<uint64_t>(i / row_size);
    const bool kept = fastdrop::keeps_element(rng.seed, rng.offset, index, threshold);
    const scalar_t xi = x.const_data_ptr<scalar_t>()[i];
    const scalar_t expected = affine ? fastdrop::apply_dropout<true>(xi, kept, forward_factors)
                                     : fastdrop::apply_dropout<false>(xi, kept, forward_factors);
    const scalar_t expected_grad =
        fastdrop::apply_dropout<false>(g.const_data_ptr<scalar_t>()[i], kept, backward_factors);
    const double actual = static_cast<double>(y.const_data_ptr<scalar_t>()[i]);
    const double actual_grad = static_cast<double>(gx.const_data_ptr<scalar_t>()[i]);
    EXPECT(actual == static_cast<double>(expected), "%s element %lld of %lld: %g != %g (p=%g)", variant.name,
           static_cast<long long>(i), static_cast<long long>(x.numel()), actual, static_cast<double>(expected), p);
    EXPECT(actual_grad == static_cast<double>(expected_grad), "%s gradient %lld: %g != %g (p=%g)", variant.name,
           static_cast<long long>(i), actual_grad, static_cast<double>(expected_grad), p);
    checks += 2;
  }
  EXPECT(output.strides() == at::empty_like(input).strides(), "%s: output strides differ from empty_like's",
         variant.name);
  return checks + 1;
}

template <typename scalar_t>
int check_dtype(at::ScalarType dtype) {
  int checks = 0;
  const int64_t sizes[] = {1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 129, 1000, 2047, 2049, 4097, 32769, 100003};
  for (const VariantUnderTest& variant : kVariants) {
    for (int64_t size : sizes) {
      for (double p : {1e-6, 0.1, 0.5, 0.97, 0.99999}) {
        // Feature variants see the size as (N, C, L) with odd N, C and L.
        const at::Tensor input = variant.per_row ? at::randn({3, size, 5}) : at::randn({size});
        checks += check_variant<scalar_t>(variant, input.to(dtype), p);
      }
    }
    const at::Tensor grid = at::randn({37, 11, 5}).to(dtype);
    checks += check_variant<scalar_t>(variant, grid.permute({2, 0, 1}), 0.3);
    checks += check_variant<scalar_t>(variant, grid.slice(1, 1, 10, 2), 0.3);
    checks += check_variant<scalar_t>(
        variant, at::randn({4, 3, 9, 9}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast), 0.5);
    checks +=
        check_variant<scalar_t>(variant, at::randn({2, 3, 2, 3, 2, 3, 2, 3, 2, 3}).to(dtype).transpose(0, 9), 0.5);
  }
  return checks;
}

}  // namespace

int main() {
  at::manual_seed(0);
  int checks = check_bulk_generator();
  checks += check_listed_generator();
  checks += check_half_conversions();
  checks += check_half_scaling();
  checks += check_scaling_by_element<c10::Half>(fastdrop::cpu::scale_half_by_using, 300.0f, 1e-4f);
  checks += check_scaling_by_element<c10::BFloat16>(fastdrop::cpu::scale_bfloat16_by_using, 3e38f, 1e-30f);
  checks += check_dtype<float>(at::kFloat);
  checks += check_dtype<double>(at::kDouble);
  checks += check_dtype<at::Half>(at::kHalf);
  checks += check_dtype<at::BFloat16>(at::kBFloat16);
  return TEST_RESULT("cpu kernels", checks);
}
