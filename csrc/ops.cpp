// The fastdrop operators' schemas (operators.h). Each device's kernel files
// register their own kernels (cpu/*_cpu.cpp, cuda/*_cuda.cu, meta_ops.cpp);
// autograd.cpp registers autograd.
#include <torch/library.h>

#include "operators.h"

TORCH_LIBRARY(fastdrop, m) { fastdrop::define_operators(m); }
