// Element-wise dropout on the CPU: y = x * (kept ? 1 / (1 - p) : 0) in one pass,
// forward and backward alike (backward applies the same mask to the gradient).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>

#include <mutex>

#include "../dropout_math.h"
#include "../fastdrop.h"
#include "element_walk.h"
#include "vectorize.h"

namespace fastdrop::cpu {
namespace {

RngState draw_rng_state(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  // The CPU generator is a Mersenne twister, not Philox: each call takes a
  // fresh 64-bit key from it, and offset 0.
  return {gen->random64(), 0};
}

template <typename scalar_t>
FASTDROP_ALWAYS_INLINE void scale_loop(scalar_t* out, int64_t out_stride, const scalar_t* in, int64_t in_stride,
                                       const uint16_t* bits, int64_t count, uint32_t threshold,
                                       at::opmath_type<scalar_t> scale) {
  for (int64_t i = 0; i < count; ++i) {
    out[i * out_stride] = masked_scale(in[i * in_stride], is_kept(bits[i], threshold), scale);
  }
}

// Unit strides get their own cloned copy so the compiler can vectorize it.
#define DEFINE_SCALE_CONTIGUOUS(scalar_t)                                                                           \
  FASTDROP_CPU_CLONES void scale_contiguous(scalar_t* out, const scalar_t* in, const uint16_t* bits, int64_t count, \
                                            uint32_t threshold, at::opmath_type<scalar_t> scale) {                 \
    scale_loop(out, 1, in, 1, bits, count, threshold, scale);                                                       \
  }
FASTDROP_FOR_EACH_FLOAT_TYPE(DEFINE_SCALE_CONTIGUOUS)
#undef DEFINE_SCALE_CONTIGUOUS

void apply_mask(const at::Tensor& input, at::Tensor& output, RngState rng, double p) {
  if (input.numel() == 0) return;
  const uint32_t threshold = drop_threshold(p);
  with_walkable_pair(input, output, [&](const StridedLayout<2>& layout, at::Tensor& out, const at::Tensor& in) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "fastdrop_dropout_cpu", [&] {
      const auto scale = keep_scale<scalar_t>(p);
      scalar_t* out_data = out.data_ptr<scalar_t>();
      const scalar_t* in_data = in.const_data_ptr<scalar_t>();
      const int64_t out_stride = layout.inner_stride(0), in_stride = layout.inner_stride(1);
      for_each_run_with_bits(layout, in.numel(), rng, [&](const int64_t* offsets, int64_t count, const uint16_t* bits) {
        if (out_stride == 1 && in_stride == 1) {
          scale_contiguous(out_data + offsets[0], in_data + offsets[1], bits, count, threshold, scale);
        } else {
          scale_loop(out_data + offsets[0], out_stride, in_data + offsets[1], in_stride, bits, count, threshold, scale);
        }
      });
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dropout(const at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_floating_input(input, "dropout");
  check_probability(p);
  const RngState rng = draw_rng_state(generator);
  at::Tensor output = at::empty_like(input);
  apply_mask(input, output, rng, p);
  return {output, rng_state_tensor_cpu(rng)};
}

at::Tensor dropout_(at::Tensor& input, double p, std::optional<at::Generator> generator) {
  check_floating_input(input, "dropout_");
  check_probability(p);
  at::assert_no_internal_overlap(input);
  const RngState rng = draw_rng_state(generator);
  apply_mask(input, input, rng, p);
  return rng_state_tensor_cpu(rng);
}

at::Tensor dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p) {
  check_floating_input(grad, "dropout_backward");
  check_probability(p);
  check_rng_state(rng_state, grad, "dropout_backward");
  at::Tensor grad_input = at::empty_like(grad);
  apply_mask(grad, grad_input, read_rng_state_cpu(rng_state), p);
  return grad_input;
}

}  // namespace fastdrop::cpu
