// Every fastdrop operator's schema, and the registration of one device's
// kernels, shared by the extension (ops.cpp) and the emulated CUDA build
// (cuda/emulation/), which registers the CUDA kernels under its own namespace.
#pragma once

#include <torch/library.h>

#include "fastdrop.h"

namespace fastdrop {

inline void define_operators(torch::Library& m) {
  // The forwards draw from a generator: tagged so that compilers neither merge
  // two calls nor recompute one in backward.
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
#define FASTDROP_DEFINE_VARIANT(name)                                                                   \
  m.def(#name "(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);        \
  m.def(#name "_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);             \
  /* Applies the mask a forward drew (from its rng_state) to grad: the backward. */                     \
  m.def(#name "_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");
  FASTDROP_VARIANTS(FASTDROP_DEFINE_VARIANT)
#undef FASTDROP_DEFINE_VARIANT

  // Stochastic depth: one decision per sample (per_sample) or per batch.
  m.def("drop_path(Tensor input, float p, bool scale_by_keep=True, bool per_sample=True, "
        "Generator? generator=None) -> (Tensor, Tensor)",
        seeded);
  m.def("drop_path_backward(Tensor grad, Tensor rng_state, float p, bool scale_by_keep=True, "
        "bool per_sample=True) -> Tensor");
  // Residual epilogues; their backwards are the backwards above (and a bias reduction).
  m.def("drop_path_add(Tensor residual, Tensor branch, float p, bool scale_by_keep=True, "
        "Generator? generator=None) -> (Tensor, Tensor)",
        seeded);
  m.def("dropout_add(Tensor residual, Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("bias_dropout_add(Tensor input, Tensor bias, Tensor residual, float p, Generator? generator=None) "
        "-> (Tensor, Tensor)",
        seeded);
  // Any variant with the decision of element (i_0, ...) at index
  // index_base + sum_k i_k * index_strides[k]: vmap's batching rules and
  // sharded tensors. variant: 'dropout', 'feature_dropout', 'alpha_dropout' or 'unscaled'.
  m.def("indexed_dropout(Tensor input, float p, str variant, SymInt[] index_strides, SymInt index_base=0, "
        "Generator? generator=None) -> (Tensor, Tensor)",
        seeded);
  m.def("indexed_dropout_(Tensor(a!) input, float p, str variant, SymInt[] index_strides, SymInt index_base=0, "
        "Generator? generator=None) -> Tensor",
        seeded);
  m.def("indexed_dropout_backward(Tensor grad, Tensor rng_state, float p, str variant, SymInt[] index_strides, "
        "SymInt index_base=0) -> Tensor");
}

}  // namespace fastdrop

// Registers namespace `device`'s kernels of every operator with m.
#define FASTDROP_REGISTER_VARIANT(name)  \
  m.impl(#name, &device::name);          \
  m.impl(#name "_", &device::name##_);   \
  m.impl(#name "_backward", &device::name##_backward);

#define FASTDROP_REGISTER_RESIDUAL_OPS                       \
  m.impl("drop_path", &device::drop_path);                   \
  m.impl("drop_path_backward", &device::drop_path_backward); \
  m.impl("drop_path_add", &device::drop_path_add);           \
  m.impl("dropout_add", &device::dropout_add);               \
  m.impl("bias_dropout_add", &device::bias_dropout_add);

#define FASTDROP_REGISTER_INDEXED_OPS                  \
  m.impl("indexed_dropout", &device::indexed_dropout);   \
  m.impl("indexed_dropout_", &device::indexed_dropout_); \
  m.impl("indexed_dropout_backward", &device::indexed_dropout_backward);
