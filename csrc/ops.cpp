// Every fastdrop operator: its schema, and its CPU and CUDA kernels. Fake
// (meta) kernels and autograd are registered from Python (fastdrop/_ops.py).
#include <torch/library.h>

#include "fastdrop.h"

TORCH_LIBRARY(fastdrop, m) {
  // The forwards draw from a generator: tagged so that compilers neither merge
  // two calls nor recompute one in backward.
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  m.def("dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("dropout_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);
  // Applies the mask a forward drew (from its rng_state) to grad: the backward
  // of dropout, and a replay of the forward.
  m.def("dropout_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) {
  m.impl("dropout", &fastdrop::cpu::dropout);
  m.impl("dropout_", &fastdrop::cpu::dropout_);
  m.impl("dropout_backward", &fastdrop::cpu::dropout_backward);
}

#ifdef FASTDROP_WITH_CUDA
TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) {
  m.impl("dropout", &fastdrop::cuda::dropout);
  m.impl("dropout_", &fastdrop::cuda::dropout_);
  m.impl("dropout_backward", &fastdrop::cuda::dropout_backward);
}
#endif
