// Every fastdrop operator: its schema, and its CPU, CUDA and Meta (shape-only,
// for tracing) kernels. Autograd is registered in autograd.cpp.
#include <torch/library.h>

#include "operators.h"

TORCH_LIBRARY(fastdrop, m) { fastdrop::define_operators(m); }

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) {
  namespace device = fastdrop::cpu;
  FASTDROP_VARIANTS(FASTDROP_REGISTER_VARIANT)
  FASTDROP_REGISTER_RESIDUAL_OPS
  FASTDROP_REGISTER_INDEXED_OPS
}

TORCH_LIBRARY_IMPL(fastdrop, Meta, m) {
  namespace device = fastdrop::meta;
  FASTDROP_VARIANTS(FASTDROP_REGISTER_VARIANT)
  FASTDROP_REGISTER_RESIDUAL_OPS
  FASTDROP_REGISTER_INDEXED_OPS
}

#ifdef FASTDROP_WITH_CUDA
TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) {
  namespace device = fastdrop::cuda;
  FASTDROP_VARIANTS(FASTDROP_REGISTER_VARIANT)
  FASTDROP_REGISTER_RESIDUAL_OPS
  FASTDROP_REGISTER_INDEXED_OPS
}
#endif
