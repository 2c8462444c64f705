"""Functional dropouts with the signatures, defaults, shape rules, errors and
warnings of torch.nn.functional (and timm's and torchvision's drop path)."""

import torch
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from . import _C, _checks, _decisions
from . import distributed as _distributed
from ._ops import ops

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "dropout_with_seed",
    "drop_path",
    "stochastic_depth",
    "drop_path_add",
    "drop_path_keep_indices",
    "drop_path_add_subset",
    "dropout_add",
    "bias_dropout_add",
    "drop_block2d",
    "drop_block3d",
    "drop_block_timm",
]


def _nested(name, input, p, inplace, generator):
    """Element-wise dropout of a nested tensor's values, as torch's F.dropout does; the
    other variants, and in place, are refused with the error types torch gives."""
    if name != "dropout":
        error = NotImplementedError if name == "alpha_dropout" else RuntimeError
        raise error(f"fastdrop.{name} does not support nested tensors (torch's does not either)")
    if inplace:
        raise NotImplementedError("fastdrop.dropout does not support nested tensors in place (torch's does not either)")
    values = ops.dropout(input.values(), p, generator)[0]
    if input.layout == torch.jagged:
        return torch.nested.nested_tensor_from_jagged(
            values, input.offsets(), lengths=input.lengths(), jagged_dim=input._ragged_idx
        )
    return torch._nested_view_from_buffer(
        values, input._nested_tensor_size(), input._nested_tensor_strides(), input._nested_tensor_storage_offsets()
    )


_VARIANT_INDEX = {"dropout": 0, "alpha_dropout": 1, "feature_dropout": 2, "feature_alpha_dropout": 3}
_is_compiling = torch.compiler.is_compiling


_Tensor = torch.Tensor


def _in_batch_slice(input):
    """Whether input is a plain tensor inside fastdrop.distributed.batch_slice (or
    data_parallel): it then takes the decisions of its rows in the global batch.
    A DTensor knows where it sits by itself (fastdrop.distributed's handlers).
    Callers test `type(input) is not _Tensor or _distributed._batch is not None`
    first: a plain tensor outside a batch slice pays two comparisons."""
    if type(input) is not _Tensor and _distributed.is_dtensor(input):
        return False
    return _distributed._batch is not None


def _noise_decisions(input, noise, function):
    """indexed_dropout's strides and base for a noise shape: one decision per
    index of the noise shape (row-major), shared along its dims of 1. None where
    no decision is shared (the plain element-wise operator)."""
    shared = _checks.noise_shape(noise, input.shape, function)
    shape, offsets = list(input.shape), [0] * input.dim()
    if (type(input) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(input):
        # Rows of a global batch: the decisions of the global shape, from the rows' offsets.
        shape, offsets = _distributed._batch.place(shape)
    if not any(is_shared and size > 1 for is_shared, size in zip(shared, shape)):
        return None
    noise = [1 if is_shared else size for is_shared, size in zip(shared, shape)]
    strides = [0 if is_shared else stride for is_shared, stride in zip(shared, _decisions.row_major(noise))]
    return strides, sum(offset * stride for offset, stride in zip(offsets, strides))


def _as_channels(input, strides):
    """The dims permutation that puts the dims with decisions (at most two, in
    order) first, as the (N, C) of a channel dropout, or None where there are more.
    Channel dropout decides (n, c) at n * C + c: the same row-major index over
    those dims that the noise shape gives, so its grouped kernels (and their
    fast paths for rows and channels_last pixels) serve."""
    decided = [d for d, stride in enumerate(strides) if stride != 0 and input.shape[d] > 1]
    if len(decided) > 2:
        return None
    rest = [d for d in range(input.dim()) if d not in decided]
    return decided, rest


def _shared_noise(name, input, p, inplace, generator, decisions):
    """dropout / alpha_dropout with decisions shared along the noise shape's 1s,
    scaled as torch's noise tensors scale (Dropout1d/2d/3d, drop path)."""
    strides, base = decisions
    # The strides of a DTensor or a batch slice are the whole tensor's: the indexed operator.
    plain = type(input) is _Tensor and _distributed._batch is None
    channels = _as_channels(input, strides) if plain else None
    if channels is not None:
        decided, rest = channels
        view = input.permute(*decided, *rest)
        for _ in range(2 - len(decided)):
            view = view.unsqueeze(0)
        result = _run(
            "feature_dropout" if name == "dropout" else "feature_alpha_dropout",
            "feature_dropout",
            view,
            p,
            True,
            inplace,
            generator,
        )
        if inplace:
            return input
        for _ in range(2 - len(decided)):
            result = result.squeeze(0)
        order = [*decided, *rest]
        return result.permute(*sorted(range(len(order)), key=order.__getitem__))
    variant = "feature_dropout" if name == "dropout" else "alpha_dropout"
    if inplace:
        ops.indexed_dropout_(input, p, variant, strides, base, generator)
        return input
    return ops.indexed_dropout(input, p, variant, strides, base, generator)[0]


def _run(name, function, input, p, training, inplace, generator, noise_shape=None):
    """Variant `name` of input; `function` is the name torch's errors give it."""
    p = _checks.probability(p, function)
    _checks.training_flag(training, function)
    if noise_shape is not None:
        if input.is_nested:
            raise RuntimeError(f"fastdrop.{name}: noise_shape is not supported for nested tensors")
        decisions = _noise_decisions(input, noise_shape, f"fastdrop.{name}")
        if decisions is not None:
            if not training or p == 0.0 or input.numel() == 0:
                return input
            return _shared_noise(name, input, p, inplace, generator, decisions)
    if input.is_nested:
        return input if not training or p == 0.0 else _nested(name, input, p, inplace, generator)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if (type(input) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(input):
        return _distributed.sliced(name, input, p, (), generator, inplace)
    if not _is_compiling():  # the direct call (see csrc/python_module.cpp); compiled code traces torch.ops
        result = _C.variant(_VARIANT_INDEX[name], input, p, generator, inplace)
        if result is not NotImplemented:
            return result
    if inplace:
        getattr(ops, name + "_")(input, p, generator)
        return input
    return getattr(ops, name)(input, p, generator)[0]


def dropout(input, p=0.5, training=True, inplace=False, *, generator=None, noise_shape=None):
    """Drop-in for torch.nn.functional.dropout, fused and mask-free.

    Each element is zeroed with probability p, decided by Philox from
    (seed, offset) drawn from ``generator`` (or torch's default generator of
    the input's device) and the element's logical index; kept elements are
    multiplied by 1 / (1 - p). Backward regenerates the mask instead of
    saving it. In eval mode, or for p == 0 or an empty input, the input itself
    is returned, as torch does.

    noise_shape (TF/Keras's argument; Flax's broadcast_dims): one entry per dim
    of the input, 1 where one decision is shared along that dim, else the
    input's size (or None). One decision per index of the noise shape; kept
    elements are scaled as torch's noise tensors scale them (1 / (1 - p) in the
    input's dtype), so (N, C, 1, 1) is dropout2d and (N, 1, ..., 1) drop path,
    bit for bit. (1, B, H) on (T, B, H) is locked (variational) dropout.
    """
    if has_torch_function_unary(input):  # torch.fx's Proxy, and tensor-likes that override torch functions
        return handle_torch_function(
            dropout,
            (input,),
            input,
            p=p,
            training=training,
            inplace=inplace,
            generator=generator,
            noise_shape=noise_shape,
        )
    return _run("dropout", "dropout", input, p, training, inplace, generator, noise_shape)


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None, noise_shape=None):
    """Drop-in for torch.nn.functional.alpha_dropout (note: training=False by default, as in torch).

    Kept elements become a * x + alpha * a * p, dropped ones -alpha * a * (1 - p),
    with torch's alpha = 1.7580993408473766 and a = 1 / sqrt((alpha^2 p + 1)(1 - p)),
    so a zero-mean, unit-variance input keeps its mean and variance.
    noise_shape: as for dropout; (N, C, 1, 1) is feature_alpha_dropout.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            alpha_dropout,
            (input,),
            input,
            p=p,
            training=training,
            inplace=inplace,
            generator=generator,
            noise_shape=noise_shape,
        )
    return _run("alpha_dropout", "alpha_dropout", input, p, training, inplace, generator, noise_shape)


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None):
    """Drop-in for torch.nn.functional.feature_alpha_dropout: alpha dropout of whole channels."""
    if has_torch_function_unary(input):
        return handle_torch_function(
            feature_alpha_dropout, (input,), input, p=p, training=training, inplace=inplace, generator=generator
        )
    return _run("feature_alpha_dropout", "feature_alpha_dropout", input, p, training, inplace, generator)


def _feature_dropout(input, p, training, inplace, generator):
    return _run("feature_dropout", "feature_dropout", input, p, training, inplace, generator)


def _feature_dropout_unbatched(input, p, training, inplace, generator):
    """Channel dropout of an input without its batch dim, as a batch of one."""
    result = _feature_dropout(input.unsqueeze(0), p, training, inplace, generator)
    return input if inplace else result.squeeze(0)


def dropout1d(input, p=0.5, training=True, inplace=False, *, generator=None):
    """Drop-in for torch.nn.functional.dropout1d: zeroes whole channels of (N, C, L) or (C, L) input."""
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout1d, (input,), input, p=p, training=training, inplace=inplace, generator=generator
        )
    p = _checks.probability(p, "feature_dropout")
    _checks.channel_dropout_rank(input, 1)
    if input.dim() == 2:
        return _feature_dropout_unbatched(input, p, training, inplace, generator)
    return _feature_dropout(input, p, training, inplace, generator)


def dropout2d(input, p=0.5, training=True, inplace=False, *, generator=None):
    """Drop-in for torch.nn.functional.dropout2d: zeroes whole channels of (N, C, H, W) input.

    As in torch, a 3-D input is taken as (N, C, L) (with a warning), and other
    ranks are accepted with a deprecation warning.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout2d, (input,), input, p=p, training=training, inplace=inplace, generator=generator
        )
    p = _checks.probability(p, "feature_dropout")
    _checks.channel_dropout_rank(input, 2)
    return _feature_dropout(input, p, training, inplace, generator)


def dropout3d(input, p=0.5, training=True, inplace=False, *, generator=None):
    """Drop-in for torch.nn.functional.dropout3d: zeroes whole channels of (N, C, D, H, W) input.

    As in torch, a 4-D input is taken as unbatched (C, D, H, W), and other ranks
    are accepted with a deprecation warning.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            dropout3d, (input,), input, p=p, training=training, inplace=inplace, generator=generator
        )
    p = _checks.probability(p, "feature_dropout")
    _checks.channel_dropout_rank(input, 3)
    if input.dim() != 5:
        return _feature_dropout_unbatched(input, p, training, inplace, generator)
    return _feature_dropout(input, p, training, inplace, generator)


def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True, *, generator=None):
    """Drop-in for timm's drop_path: per-sample stochastic depth of a residual branch.

    Each sample (index along dim 0) is zeroed with probability drop_prob; kept
    samples are divided by 1 - drop_prob when scale_by_keep. Eval mode and
    drop_prob == 0 return x itself. One pass each way, nothing per element saved.
    """
    if has_torch_function_unary(x):
        return handle_torch_function(
            drop_path,
            (x,),
            x,
            drop_prob=drop_prob,
            training=training,
            scale_by_keep=scale_by_keep,
            generator=generator,
        )
    drop_prob = _checks.drop_probability(drop_prob)
    if drop_prob == 0.0 or not training:
        return x
    return _drop_path(x, drop_prob, bool(scale_by_keep), True, generator)


def _drop_path(x, p, scale_by_keep, per_sample, generator):
    if (type(x) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(x):
        return _distributed.sliced("drop_path", x, p, (scale_by_keep, per_sample), generator)
    if not _is_compiling():
        result = _C.drop_path(x, p, scale_by_keep, per_sample, generator)
        if result is not NotImplemented:
            return result
    return ops.drop_path(x, p, scale_by_keep, per_sample, generator)[0]


def stochastic_depth(input, p, mode, training=True, *, generator=None):
    """Drop-in for torchvision.ops.stochastic_depth.

    mode "row" drops each sample (dim 0) with probability p, mode "batch" the
    whole batch at once; survivors are divided by 1 - p, and p == 1 gives zeros.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(stochastic_depth, (input,), input, p, mode, training=training, generator=generator)
    p = _checks.drop_probability(p)
    _checks.stochastic_depth_mode(mode)
    if not training or p == 0.0:
        return input
    return _drop_path(input, p, True, mode == "row", generator)


def drop_path_add(residual, branch, drop_prob, training=True, scale_by_keep=True, *, generator=None):
    """residual + drop_path(branch) in one pass; a dropped sample's branch is never read.

    Backward: the residual's gradient is the incoming gradient itself, the
    branch's that gradient with the same per-sample mask and scale. In eval
    mode (or drop_prob == 0) this is exactly residual + branch.
    """
    if has_torch_function((residual, branch)):
        return handle_torch_function(
            drop_path_add,
            (residual, branch),
            residual,
            branch,
            drop_prob,
            training=training,
            scale_by_keep=scale_by_keep,
            generator=generator,
        )
    drop_prob = _checks.drop_probability(drop_prob)
    _checks.residual_operands(residual, branch, "branch", "drop_path_add")
    if not training or drop_prob == 0.0:
        return residual + branch
    if (type(branch) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(branch):
        return _distributed.sliced_drop_path_add(residual, branch, drop_prob, bool(scale_by_keep), generator)
    if not _is_compiling():
        result = _C.drop_path_add(residual, branch, drop_prob, bool(scale_by_keep), generator)
        if result is not NotImplemented:
            return result
    return ops.drop_path_add(residual, branch, drop_prob, bool(scale_by_keep), generator)[0]


def drop_path_keep_indices(batch_size, drop_prob, training=True, *, device=None, generator=None):
    """The samples a drop_path_add call would keep, sorted (int64 on device).

    Draws from the generator exactly as drop_path_add(residual, branch,
    drop_prob, training) draws for a batch of batch_size, so with the same
    generator state the two agree, and leave the generator in the same state:
    run the branch on the kept samples only (DINOv2's stochastic depth) and
    add it back with drop_path_add_subset. In eval mode (or drop_prob == 0)
    every sample, with nothing drawn. Reading the count of kept samples
    synchronizes with a CUDA device (as any data-dependent shape does).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise TypeError(f"drop_path_keep_indices(): batch_size must be a non-negative int, but got {batch_size!r}")
    drop_prob = _checks.drop_probability(drop_prob)
    if not training or drop_prob == 0.0:
        return torch.arange(batch_size, device=device)
    # One unscaled decision per sample, drawn as drop_path_add draws its samples' (batch slices too).
    keep = _drop_path(torch.ones(batch_size, device=device), drop_prob, False, True, generator)
    return keep.nonzero().squeeze(1)


def drop_path_add_subset(residual, branch_kept, indices, drop_prob, training=True, scale_by_keep=True):
    """residual + drop_path(branch) for a branch computed on the kept samples only.

    indices: the kept samples (drop_path_keep_indices); branch_kept[j] is
    sample indices[j]'s branch. One pass: a kept sample is its residual plus
    its branch scaled as drop_path_add scales it, any other the residual
    itself, so the result equals drop_path_add(residual, branch, drop_prob) of
    the same draw bit for bit, forward and backward, without computing the
    dropped samples' branches. The residual may be of a wider float dtype than
    the branch (its dtype is the output's). In eval mode (or drop_prob == 0)
    the kept samples are not scaled.
    """
    drop_prob = _checks.drop_probability(drop_prob)
    if not training:
        drop_prob = 0.0
    return ops.drop_path_add_subset(residual, branch_kept, indices, drop_prob, bool(scale_by_keep))


def dropout_add(residual, x, p, training=True, *, generator=None):
    """residual + dropout(x) in one pass (element-wise mask, as fastdrop.functional.dropout)."""
    if has_torch_function((residual, x)):
        return handle_torch_function(dropout_add, (residual, x), residual, x, p, training=training, generator=generator)
    p = _checks.probability(p, "dropout_add")
    _checks.training_flag(training, "dropout_add")
    _checks.residual_operands(residual, x, "input", "dropout_add")
    if not training or p == 0.0:
        return residual + x
    if (type(x) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(x):
        return residual + _distributed.sliced("dropout", x, p, (), generator)
    if not _is_compiling():
        result = _C.dropout_add(residual, x, p, generator)
        if result is not NotImplemented:
            return result
    return ops.dropout_add(residual, x, p, generator)[0]


def bias_dropout_add(x, bias, residual, p, training=True, *, generator=None):
    """residual + dropout(x + bias) in one pass, bias broadcast over the last dim (Megatron's epilogue).

    Backward gives the gradients of x, bias (reduced over the other dims) and residual.
    """
    if has_torch_function((x, bias, residual)):
        return handle_torch_function(
            bias_dropout_add, (x, bias, residual), x, bias, residual, p, training=training, generator=generator
        )
    p = _checks.probability(p, "bias_dropout_add")
    _checks.training_flag(training, "bias_dropout_add")
    _checks.residual_operands(residual, x, "input", "bias_dropout_add")
    _checks.bias_operand(x, bias, "bias_dropout_add")
    if not training or p == 0.0:
        return residual + (x + bias)
    if (type(x) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(x):
        return residual + _distributed.sliced("dropout", x + bias, p, (), generator)
    if not _is_compiling():
        result = _C.bias_dropout_add(x, bias, residual, p, generator)
        if result is not NotImplemented:
            return result
    return ops.bias_dropout_add(x, bias, residual, p, generator)[0]


def dropout_with_seed(input, p, seed, offset=0):
    """Applies the mask that an element-wise dropout call keyed by (seed, offset) applied.

    A CUDA call with generator ``g`` is keyed by ``(g.initial_seed(),
    g.get_offset())`` read just before it, so this reproduces a CUDA run's
    mask on the CPU (and vice versa), bit for bit. seed and offset are ints in
    [0, 2^64); only offset // 4 enters the contract. Differentiable.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(dropout_with_seed, (input,), input, p, seed, offset=offset)
    p = _checks.probability(p, "dropout_with_seed")
    rng_state = torch.tensor(
        [_checks.unsigned_64(seed, "seed"), _checks.unsigned_64(offset, "offset")],
        dtype=torch.int64,
        device=input.device,
    )
    if (type(input) is not _Tensor or _distributed._batch is not None) and _in_batch_slice(input):
        indices = _distributed.sliced_indices("dropout", input.shape, ())
        return ops.indexed_dropout_backward(input, rng_state, p, *indices)
    return ops.dropout_backward(input, rng_state, p)


def _drop_block(input, gamma, block_size, centred, share_channels, eps, scale, inplace, generator):
    """fastdrop::drop_block's output; in place, copied into input (its history rebased as
    torch's in-place ops rebase it: a leaf that requires grad is refused)."""
    output = ops.drop_block(input, gamma, block_size, centred, share_channels, eps, scale, generator)[0]
    return input.copy_(output) if inplace else output


def _torchvision_drop_block(function, spatial, input, p, block_size, inplace, eps, training, generator):
    p = _checks.drop_probability(p)
    if input.ndim != spatial + 2:
        raise ValueError(f"input should be {spatial + 2} dimensional. Got {input.ndim} dimensions.")
    if not training or p == 0.0:
        return input
    sizes = input.shape[2:]
    block = min(block_size, *sizes)
    if block < 1:
        raise ValueError(f"{function}(): block_size must be positive, but got {block_size}")
    # torchvision's gamma: the seed rate that drops p of the elements in expectation.
    valid = 1
    for size in sizes:
        valid *= size - block + 1
    gamma = p * input[0, 0].numel() / (block**spatial * valid)
    return _drop_block(input, gamma, [block] * spatial, False, False, float(eps), "input", inplace, generator)


def drop_block2d(input, p, block_size, inplace=False, eps=1e-06, training=True, *, generator=None):
    """Drop-in for torchvision.ops.drop_block2d (DropBlock, arXiv:1810.12890).

    Seeds are drawn with torchvision's rate over the positions where a whole
    block_size x block_size block fits (block_size clipped to H and W); each
    drops the block starting there, and the kept elements are scaled by
    numel / (eps + kept), computed in the input's dtype as torchvision does.
    One mask decision per seed (the contract's, keyed by its index), no mask
    saved: backward rebuilds it. Even block sizes work too (torchvision's fail).
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            drop_block2d, (input,), input, p, block_size, inplace, eps, training, generator=generator
        )
    return _torchvision_drop_block("drop_block2d", 2, input, p, block_size, inplace, eps, training, generator)


def drop_block3d(input, p, block_size, inplace=False, eps=1e-06, training=True, *, generator=None):
    """Drop-in for torchvision.ops.drop_block3d: drop_block2d over (D, H, W) blocks."""
    if has_torch_function_unary(input):
        return handle_torch_function(
            drop_block3d, (input,), input, p, block_size, inplace, eps, training, generator=generator
        )
    return _torchvision_drop_block("drop_block3d", 3, input, p, block_size, inplace, eps, training, generator)


def drop_block_timm(
    x,
    drop_prob=0.1,
    block_size=7,
    gamma_scale=1.0,
    inplace=False,
    couple_channels=True,
    scale_by_keep=True,
    *,
    generator=None,
):
    """timm.layers.drop_block_2d (timm 1.0.23 and later) without its Gaussian-noise option.

    Seeds anywhere, at timm's rate, each dropping the block centred on it
    (block_size clipped to H and to W on its own), clipped at the edges; one
    mask per sample shared by its channels (couple_channels, the paper's) or
    one per channel; the kept elements scaled by numel / (kept + 1e-7) computed
    in float32, then rounded to x's dtype (scale_by_keep), or not scaled.
    Always applies: timm's module checks training and drop_prob.
    """
    if x.ndim != 4:
        raise ValueError(f"drop_block_timm(): x must be (B, C, H, W), but got {x.ndim} dims")
    _, _, height, width = x.shape
    kh, kw = min(block_size, height), min(block_size, width)
    if kh < 1 or kw < 1:
        raise ValueError(f"drop_block_timm(): block_size must be positive, but got {block_size}")
    # timm's gamma, in its operation order (so it rounds as timm's does).
    gamma = (
        float(gamma_scale * drop_prob * height * width) / float(kh * kw) / float((height - kh + 1) * (width - kw + 1))
    )
    scale = "float" if scale_by_keep else "none"
    return _drop_block(x, gamma, [kh, kw], True, bool(couple_channels), 1e-7, scale, inplace, generator)
