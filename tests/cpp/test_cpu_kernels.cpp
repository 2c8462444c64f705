// The CPU kernels element by element against the single-element statement of
// the contract (keeps_element), for sizes that end anywhere inside a Philox
// block, a SIMD step or a thread's range, and for strided layouts; and every
// SIMD variant of the bulk generator against the scalar engine, across a block
// index that carries into the counter's high word.
#include <ATen/ATen.h>

#include <vector>

#include "check.h"
#include "cpu/philox_cpu.h"
#include "dropout_math.h"
#include "fastdrop.h"

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

template <typename scalar_t>
int check_dropout(const at::Tensor& input, double p) {
  int checks = 0;
  auto [output, rng_state] = fastdrop::cpu::dropout(input, p, std::nullopt);
  const fastdrop::RngState rng = fastdrop::read_rng_state_cpu(rng_state);
  const uint32_t threshold = fastdrop::drop_threshold(p);
  const auto scale = fastdrop::keep_scale<scalar_t>(p);
  // Logical order: flatten both through contiguous copies.
  const at::Tensor in = input.contiguous().view(-1), out = output.contiguous().view(-1);
  const scalar_t* x = in.const_data_ptr<scalar_t>();
  const scalar_t* y = out.const_data_ptr<scalar_t>();
  for (int64_t i = 0; i < in.numel(); ++i) {
    const bool kept = fastdrop::keeps_element(rng.seed, rng.offset, static_cast<uint64_t>(i), threshold);
    const scalar_t expected = fastdrop::masked_scale(x[i], kept, scale);
    EXPECT(static_cast<double>(y[i]) == static_cast<double>(expected), "element %lld of %lld: %g != %g (p=%g)",
          static_cast<long long>(i), static_cast<long long>(in.numel()), static_cast<double>(y[i]),
          static_cast<double>(expected), p);
    ++checks;
  }
  EXPECT(output.strides() == at::empty_like(input).strides(), "output strides differ from empty_like's");
  auto grad = fastdrop::cpu::dropout_backward(input, rng_state, p);
  EXPECT(at::equal(grad, output), "backward's replay differs from forward");
  return checks + 2;
}

template <typename scalar_t>
int check_dtype(at::ScalarType dtype) {
  int checks = 0;
  const int64_t sizes[] = {1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 129, 1000, 2047, 2049, 4097, 32769, 100003};
  for (int64_t size : sizes) {
    for (double p : {0.1, 0.5, 0.97}) {
      checks += check_dropout<scalar_t>(at::randn({size}).to(dtype), p);
    }
  }
  const at::Tensor grid = at::randn({37, 11, 5}).to(dtype);
  checks += check_dropout<scalar_t>(grid.permute({2, 0, 1}), 0.3);
  checks += check_dropout<scalar_t>(grid.slice(1, 1, 10, 2), 0.3);
  checks += check_dropout<scalar_t>(at::randn({4, 3, 9, 9}).to(dtype).contiguous(at::MemoryFormat::ChannelsLast), 0.5);
  return checks;
}

}  // namespace

int main() {
  at::manual_seed(0);
  int checks = check_bulk_generator();
  checks += check_dtype<float>(at::kFloat);
  checks += check_dtype<double>(at::kDouble);
  checks += check_dtype<at::Half>(at::kHalf);
  checks += check_dtype<at::BFloat16>(at::kBFloat16);
  return TEST_RESULT("cpu kernels", checks);
}
