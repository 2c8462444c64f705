// Shape-only (Meta) operators: the same entry points and checks as the CPU
// and CUDA operators, with no kernel and no draw from the generator.
// torch.compile and FakeTensor trace with them, so a traced call raises exactly
// what the real call raises; a backward whose rng_state is on another device
// than its gradient lands here and is refused like any device mismatch.
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "decisions.h"
#include "checks.h"
#include "op_shape.h"

namespace fastdrop::meta {
namespace {

// No kernel runs: NoKernel(...) does nothing.
struct NoKernel {
  template <typename... Arguments>
  void operator()(const Arguments&...) const {}
};

NoKernel elementwise_kernel(Variant, double) { return {}; }
NoKernel add_dropout_kernel(const at::Tensor&, const at::Tensor&, double) { return {}; }
NoKernel grouped_kernel(Variant, double, int64_t) { return {}; }
NoKernel drop_path_add_kernel(const at::Tensor&, Variant, double) { return {}; }
NoKernel subset_kernel(Variant, double) { return {}; }
NoKernel subset_backward_kernel(Variant, double) { return {}; }
NoKernel block_kernel(at::IntArrayRef, bool, bool, double, double, BlockScale) { return {}; }

// Meta's side of the operators' shape (op_shape.h): nothing drawn, nothing run;
// rng_state is an uninitialized tensor of its shape.
struct Device {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
  static bool skips_kernel(const at::Tensor&, bool) { return true; }  // sizes may be symbolic

  static std::pair<NoKernel, at::Tensor> draw(const at::Tensor& input, const std::optional<at::Generator>&) {
    return {NoKernel{}, at::empty({2}, input.options().dtype(at::kLong))};
  }
  static NoKernel recorded(const at::Tensor&) { return {}; }
  static void check_no_overlap(const at::Tensor& input) {
    if (!input.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) at::assert_no_internal_overlap(input);
  }
  static at::Tensor empty_like(const at::Tensor& like) { return at::empty_like(like); }
};

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

#include "entry_points/elementwise.inc"
#include "entry_points/grouped.inc"
#include "entry_points/block.inc"

std::tuple<at::Tensor, at::Tensor> indexed_dropout(const at::Tensor& input, double p, c10::string_view variant,
                                                   c10::SymIntArrayRef index_strides, c10::SymInt index_base,
                                                   std::optional<at::Generator> generator) {
  indexed_variant(variant, false);
  check_decision_index(input, index_strides, index_base, "indexed_dropout");
  return forward_op<Device>("indexed_dropout", input, p, generator, NoKernel{});
}

at::Tensor indexed_dropout_(at::Tensor& input, double p, c10::string_view variant, c10::SymIntArrayRef index_strides,
                            c10::SymInt index_base, std::optional<at::Generator> generator) {
  indexed_variant(variant, false);
  check_decision_index(input, index_strides, index_base, "indexed_dropout_");
  return inplace_op<Device>("indexed_dropout_", input, p, generator, NoKernel{});
}

at::Tensor indexed_dropout_backward(const at::Tensor& grad, const at::Tensor& rng_state, double p,
                                    c10::string_view variant, c10::SymIntArrayRef index_strides,
                                    c10::SymInt index_base) {
  indexed_variant(variant, true);
  check_decision_index(grad, index_strides, index_base, "indexed_dropout_backward");
  return backward_op<Device>("indexed_dropout_backward", grad, rng_state, p, NoKernel{});
}

}  // namespace fastdrop::meta

TORCH_LIBRARY_IMPL(fastdrop, Meta, m) {
  fastdrop::meta::register_elementwise_kernels(m);
  fastdrop::meta::register_grouped_kernels(m);
  fastdrop::meta::register_block_kernels(m);
  m.impl("indexed_dropout", &fastdrop::meta::indexed_dropout);
  m.impl("indexed_dropout_", &fastdrop::meta::indexed_dropout_);
  m.impl("indexed_dropout_backward", &fastdrop::meta::indexed_dropout_backward);
}
