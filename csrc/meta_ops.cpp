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

// indexed_dropout's checks where the sizes, strides and base are known; symbolic ones are left to the real call.
void check_decision_index(const at::Tensor& input, c10::SymIntArrayRef strides, const c10::SymInt& base,
                          const char* op) {
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == input.dim(), "fastdrop.", op,
              ": index_strides must have one stride per dim of the input (", input.dim(), "), but got ",
              strides.size());
  const auto concrete_strides = c10::asIntArrayRefSlowOpt(strides);
  const auto concrete_base = base.maybe_as_int();
  if (concrete_strides && concrete_base && !input.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    checked_decision_index(input, *concrete_strides, *concrete_base, op);
  }
}

}  // namespace

FASTDROP_ELEMENTWISE_ENTRY_POINTS
FASTDROP_GROUPED_ENTRY_POINTS

std::tuple<at::Tensor, at::Tensor> indexed_dropout(const at::Tensor& input, double p, c10::string_view variant,
                                                   c10::SymIntArrayRef index_strides, c10::SymInt index_base,
                                                   std::optional<at::Generator> generator) {
  indexed_variant(variant, false);
  check_decision_index(input, index_strides, index_base, "indexed_dropout");
  return forward_op("indexed_dropout", input, p, generator, NoKernel{});
}

at::Tensor indexed_dropout_(at::Tensor& input, double p, c10::string_view variant, c10::SymIntArrayRef index_strides,
                            c10::SymInt index_base, std::optional<at::Generator> generator) {
  indexed_variant(variant, false);
  check_decision_index(input, index_strides, index_base, "indexed_dropout_");
  return inplace_op("indexed_dropout_", input, p, generator, NoKernel{});
}

at::Tensor indexed_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,
                                    c10::string_view variant, c10::SymIntArrayRef index_strides,
                                    c10::SymInt index_base) {
  indexed_variant(variant, true);
  check_decision_index(grad, index_strides, index_base, "indexed_dropout_backward");
  return backward_op("indexed_dropout_backward", grad, rng_state, p, NoKernel{});
}

}  // namespace fastdrop::meta
