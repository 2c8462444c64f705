// Shape-only (Meta) operators: the same entry points and checks as the CPU
// and CUDA operators, with no kernel and no draw from the generator.
// torch.compile and FakeTensor trace with them, so a traced call raises exactly
// what the real call raises; a backward whose rng_state is on another device
// than its gradient lands here and is refused like any device mismatch.
#include <ATen/MemoryOverlap.h>

#include "entry_points.h"

namespace fastdrop::meta {
namespace {

struct NoKernel {};

NoKernel elementwise_kernel(Variant, double) { return {}; }
NoKernel add_dropout_kernel(const at::Tensor&, const at::Tensor&, double) { return {}; }
NoKernel grouped_kernel(Variant, double, int64_t) { return {}; }
NoKernel drop_path_add_kernel(const at::Tensor&, Variant, double) { return {}; }

at::Tensor rng_state_like(const at::Tensor& tensor) { return at::empty({2}, tensor.options().dtype(at::kLong)); }

std::tuple<at::Tensor, at::Tensor> forward_op(const char* op, const at::Tensor& input, double p,
                                              const std::optional<at::Generator>&, NoKernel,
                                              const at::Tensor& like = at::Tensor()) {
  check_floating_input(input, op);
  check_probability(p);
  return {at::empty_like(like.defined() ? like : input), rng_state_like(input)};
}

at::Tensor inplace_op(const char* op, at::Tensor& input, double p, const std::optional<at::Generator>&, NoKernel) {
  check_floating_input(input, op);
  check_probability(p);
  if (!input.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) at::assert_no_internal_overlap(input);
  return rng_state_like(input);
}

at::Tensor backward_op(const char* op, const at::Tensor& grad, const at::Tensor& rng_state, double p, NoKernel) {
  check_floating_input(grad, op);
  check_probability(p);
  check_rng_state(rng_state, grad, op);
  return at::empty_like(grad);
}

}  // namespace

FASTDROP_ELEMENTWISE_ENTRY_POINTS
FASTDROP_GROUPED_ENTRY_POINTS

}  // namespace fastdrop::meta
