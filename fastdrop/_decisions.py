"""What each operator decides per: its decision index as strides over a logical shape.

fastdrop::indexed_dropout decides element (i_0, ...) at index
index_base + sum_k i_k * index_strides[k]; every other operator is one choice of
those strides over its input's logical shape. vmap's rules (_vmap) take them over a
slice's shape, the distributed rules (distributed) over the whole tensor's.
"""

import torch

ops = torch.ops.fastdrop


def row_major(shape):
    strides, stride = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = stride
        stride *= shape[d]
    return strides


def leading(shape, dims):
    """One decision per index of the first `dims` dims (row-major), the rest sharing it."""
    return row_major(shape[:dims]) + [0] * (len(shape) - dims)


def span(shape, strides):
    """How many decision indices a slice spans: the next slice starts there."""
    if any(size == 0 for size in shape):
        return 1
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))


def check_feature(shape):
    if len(shape) < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")


def check_samples(shape, per_sample=True):
    if per_sample and len(shape) == 0:
        raise RuntimeError("fastdrop.drop_path: per-sample drop path needs a batch dim, but got a 0-D tensor")


# Each variant operator: (indexed_dropout's variant name, slice strides) from its
# slice shape and arguments after p. The backward operators take the same arguments.


def _elementwise(variant):
    return lambda shape, *_: (variant, row_major(shape), 0)


def _channelwise(variant):
    def decide(shape, *_):
        check_feature(shape)
        return variant, leading(shape, 2), 0

    return decide


def _drop_path(shape, scale_by_keep=True, per_sample=True, *_):
    check_samples(shape, per_sample)
    return ("feature_dropout" if scale_by_keep else "unscaled"), leading(shape, 1 if per_sample else 0), 0


def _indexed(shape, variant, index_strides, index_base=0, *_):
    if len(index_strides) != len(shape):
        raise RuntimeError(
            f"fastdrop.indexed_dropout: index_strides must have one stride per dim of the input ({len(shape)}), "
            f"but got {len(index_strides)}"
        )
    return variant, list(index_strides), index_base


VARIANTS = {
    "dropout": _elementwise("dropout"),
    "alpha_dropout": _elementwise("alpha_dropout"),
    "feature_dropout": _channelwise("feature_dropout"),
    "feature_alpha_dropout": _channelwise("alpha_dropout"),
    "drop_path": _drop_path,
    "indexed_dropout": _indexed,
}


def full_arguments(schema, args, kwargs):
    """Every argument in schema order: the dispatcher leaves out trailing defaults."""
    values = list(args)
    for argument in schema.arguments[len(args) :]:
        values.append(kwargs[argument.name] if argument.name in kwargs else argument.default_value)
    return values


def composed_drop_path_add(residual, branch, p, variant, strides, base, generator):
    """drop_path_add of indexed operators (vmap's rule, batch slices), rounded as
    the fused kernel rounds: where a sample is kept, residual + its scaled
    branch; where dropped, the residual itself (the fused kernel never reads a
    dropped branch: no NaN from it, no -0 turned into +0). (output, rng_state)."""
    dropped, state = ops.indexed_dropout(branch, p, variant, strides, base, generator)
    # The decisions alone: ones over the dims that carry an index, broadcast over the others.
    ones = branch.new_ones([size if stride != 0 else 1 for size, stride in zip(branch.shape, strides)])
    kept = ops.indexed_dropout_backward(ones, state, p, variant, strides, base) != 0
    return torch.where(kept, residual + dropped, residual), state
