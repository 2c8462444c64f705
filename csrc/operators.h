// Every fastdrop operator's schema, shared by the extension (ops.cpp) and the
// emulated CUDA build (cuda/emulation/), which defines them under its own namespace.
#pragma once

#include <torch/library.h>

#include <vector>

namespace fastdrop {

inline void define_operators(torch::Library& m) {
  // The forwards draw from a generator: tagged so that compilers neither merge
  // two calls nor recompute one in backward.
  const std::vector<at::Tag> seeded = {at::Tag::nondeterministic_seeded};
  // Each variant: a forward, an in-place forward, and a backward that applies
  // the mask a forward drew (from its rng_state) to grad.
  m.def("dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("dropout_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);
  m.def("dropout_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");
  m.def("alpha_dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("alpha_dropout_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);
  m.def("alpha_dropout_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");
  m.def("feature_dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("feature_dropout_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);
  m.def("feature_dropout_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");
  m.def("feature_alpha_dropout(Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def("feature_alpha_dropout_(Tensor(a!) input, float p, Generator? generator=None) -> Tensor", seeded);
  m.def("feature_alpha_dropout_backward(Tensor grad, Tensor rng_state, float p) -> Tensor");

  // Stochastic depth: one decision per sample (per_sample) or per batch.
  m.def(
      "drop_path(Tensor input, float p, bool scale_by_keep=True, bool per_sample=True, "
      "Generator? generator=None) -> (Tensor, Tensor)",
      seeded);
  m.def(
      "drop_path_backward(Tensor grad, Tensor rng_state, float p, bool scale_by_keep=True, "
      "bool per_sample=True) -> Tensor");
  // Residual epilogues; their backwards are the backwards above (and a bias reduction).
  m.def(
      "drop_path_add(Tensor residual, Tensor branch, float p, bool scale_by_keep=True, "
      "Generator? generator=None) -> (Tensor, Tensor)",
      seeded);
  m.def("dropout_add(Tensor residual, Tensor input, float p, Generator? generator=None) -> (Tensor, Tensor)", seeded);
  m.def(
      "bias_dropout_add(Tensor input, Tensor bias, Tensor residual, float p, Generator? generator=None) "
      "-> (Tensor, Tensor)",
      seeded);
  // residual + drop_path(branch) for a branch computed on the kept samples only
  // (branch_kept[j] is sample indices[j]'s, drop_path_keep_indices's samples):
  // not random, the indices are the decisions.
  m.def(
      "drop_path_add_subset(Tensor residual, Tensor branch_kept, Tensor indices, float p, bool scale_by_keep=True) "
      "-> Tensor");
  // Its branch_kept's gradient: rows `indices` of grad, in dtype (the branch's), times the kept scale.
  m.def(
      "drop_path_add_subset_backward(Tensor grad, Tensor indices, float p, bool scale_by_keep, ScalarType dtype) "
      "-> Tensor");
  // DropBlock (torchvision's drop_block2d/3d, timm's DropBlock2d): seeds drawn
  // with probability gamma, each dropping a block of block_size (one size per
  // spatial dim, each clipped to its dim) starting at it, or centred on it;
  // one mask per (n, c), or per sample (share_channels); the kept elements
  // scaled by numel / (eps + kept) in the input's dtype (scale 'input'), in
  // float32 ('float') or not at all ('none'). Returns the output, rng_state and
  // kept, the mask's kept count, which the backward takes back.
  m.def(
      "drop_block(Tensor input, float gamma, int[] block_size, bool centred=False, bool share_channels=False, "
      "float eps=1e-06, str scale='input', Generator? generator=None) -> (Tensor, Tensor, Tensor)",
      seeded);
  m.def(
      "drop_block_backward(Tensor grad, Tensor rng_state, Tensor kept, float gamma, int[] block_size, "
      "bool centred=False, bool share_channels=False, float eps=1e-06, str scale='input') -> Tensor");
  // Any variant with the decision of element (i_0, ...) at index
  // index_base + sum_k i_k * index_strides[k]: vmap's batching rules and
  // sharded tensors. variant: 'dropout', 'feature_dropout', 'alpha_dropout' or 'unscaled'.
  m.def(
      "indexed_dropout(Tensor input, float p, str variant, SymInt[] index_strides, SymInt index_base=0, "
      "Generator? generator=None) -> (Tensor, Tensor)",
      seeded);
  m.def(
      "indexed_dropout_(Tensor(a!) input, float p, str variant, SymInt[] index_strides, SymInt index_base=0, "
      "Generator? generator=None) -> Tensor",
      seeded);
  m.def(
      "indexed_dropout_backward(Tensor grad, Tensor rng_state, float p, str variant, SymInt[] index_strides, "
      "SymInt index_base=0) -> Tensor");
}

}  // namespace fastdrop
