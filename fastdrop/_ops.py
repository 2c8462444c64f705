"""Fake kernels and autograd for the operators registered by fastdrop._C.

Backward never sees a mask: each forward returns a 2-element int64 rng_state
(seed, offset) next to its output, autograd saves only that, and backward
regenerates the mask from it.
"""

import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.fastdrop)

ops = torch.ops.fastdrop

# Each has fastdrop::NAME (forward), NAME_ (in place) and NAME_backward.
VARIANTS = ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout")


def _rng_state_like(tensor):
    return tensor.new_empty((2,), dtype=torch.int64)


def _check_feature_input(input):
    if input.dim() < 2:
        raise RuntimeError("Feature dropout requires at least 2 dimensions in the input")


def _register(name):
    backward_op = getattr(ops, f"{name}_backward")
    # The C++ ops' shape check, for tracing with fake tensors.
    check = _check_feature_input if name.startswith("feature") else (lambda input: None)

    def forward_fake(input, p, generator=None):
        check(input)
        return torch.empty_like(input), _rng_state_like(input)

    def inplace_fake(input, p, generator=None):
        check(input)
        return _rng_state_like(input)

    def backward_fake(grad, rng_state, p):
        check(grad)
        return torch.empty_like(grad)

    def setup_forward(ctx, inputs, output):
        ctx.p = inputs[1]
        ctx.save_for_backward(output[1])
        # rng_state (an integer output) never has a gradient: do not build zeros for it.
        ctx.set_materialize_grads(False)

    def forward_grad(ctx, grad_output, _grad_rng_state):
        if grad_output is None:
            return None, None, None
        (rng_state,) = ctx.saved_tensors
        return backward_op(grad_output, rng_state, ctx.p), None, None

    def setup_backward(ctx, inputs, output):
        _, rng_state, ctx.p = inputs
        ctx.save_for_backward(rng_state)

    def backward_grad(ctx, grad_output):
        # The backward multiplies by a fixed 0 / scale pattern: its own derivative.
        (rng_state,) = ctx.saved_tensors
        return backward_op(grad_output, rng_state, ctx.p), None, None

    torch.library.register_fake(f"fastdrop::{name}", forward_fake)
    torch.library.register_fake(f"fastdrop::{name}_", inplace_fake)
    torch.library.register_fake(f"fastdrop::{name}_backward", backward_fake)
    torch.library.register_autograd(f"fastdrop::{name}", forward_grad, setup_context=setup_forward)
    torch.library.register_autograd(f"fastdrop::{name}_backward", backward_grad, setup_context=setup_backward)


for _name in VARIANTS:
    _register(_name)


# ------------------------------------------------ checks of the fused forms ----


def _check_same(a, a_name, b, b_name, op):
    """The operand checks of the fused residual forms, as the C++ ops make them
    (here too, for eval mode, which never reaches them, and for tracing)."""
    if a.shape != b.shape:
        raise RuntimeError(
            f"fastdrop.{op}: {a_name} and {b_name} must have the same shape, but got {list(a.shape)} and {list(b.shape)}"
        )
    if a.device != b.device:
        raise RuntimeError(
            f"fastdrop.{op}: {a_name} and {b_name} must be on the same device, but got {a.device} and {b.device}"
        )
    if a.dtype != b.dtype:
        raise RuntimeError(
            f"fastdrop.{op}: {a_name} and {b_name} must have the same dtype, but got {a.dtype} and {b.dtype}"
        )


def _check_bias(input, bias, op):
    if not (bias.dim() == 1 and input.dim() >= 1 and bias.shape[0] == input.shape[-1]):
        raise RuntimeError(
            f"fastdrop.{op}: bias must be 1-D with the size of input's last dim, but got shape {list(bias.shape)}"
        )
    if bias.device != input.device:
        raise RuntimeError(f"fastdrop.{op}: bias must be on the input's device ({input.device}), but got {bias.device}")
    if bias.dtype != input.dtype:
        raise RuntimeError(f"fastdrop.{op}: bias must have the input's dtype ({input.dtype}), but got {bias.dtype}")


# ---------------------------------------------------------------- drop path ----


@torch.library.register_fake("fastdrop::drop_path")
def _drop_path_fake(input, p, scale_by_keep=True, per_sample=True, generator=None):
    return torch.empty_like(input), _rng_state_like(input)


@torch.library.register_fake("fastdrop::drop_path_backward")
def _drop_path_backward_fake(grad, rng_state, p, scale_by_keep=True, per_sample=True):
    return torch.empty_like(grad)


def _setup_drop_path(ctx, inputs, output):
    _, ctx.p, ctx.scale_by_keep, ctx.per_sample, _ = inputs
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)


def _drop_path_grad(ctx, grad_output, _grad_rng_state):
    if grad_output is None:
        return None, None, None, None, None
    (rng_state,) = ctx.saved_tensors
    return ops.drop_path_backward(grad_output, rng_state, ctx.p, ctx.scale_by_keep, ctx.per_sample), None, None, None, None


def _setup_drop_path_backward(ctx, inputs, output):
    _, rng_state, ctx.p, ctx.scale_by_keep, ctx.per_sample = inputs
    ctx.save_for_backward(rng_state)


def _drop_path_backward_grad(ctx, grad_output):
    (rng_state,) = ctx.saved_tensors
    grad = ops.drop_path_backward(grad_output, rng_state, ctx.p, ctx.scale_by_keep, ctx.per_sample)
    return grad, None, None, None, None


torch.library.register_autograd("fastdrop::drop_path", _drop_path_grad, setup_context=_setup_drop_path)
torch.library.register_autograd(
    "fastdrop::drop_path_backward", _drop_path_backward_grad, setup_context=_setup_drop_path_backward
)

# ------------------------------------------------------- residual epilogues ----
# Their backwards: the residual's gradient is the incoming gradient itself (no
# copy); the dropped operand's is the mask regenerated by the backward ops above.


@torch.library.register_fake("fastdrop::drop_path_add")
def _drop_path_add_fake(residual, branch, p, scale_by_keep=True, generator=None):
    _check_same(residual, "residual", branch, "branch", "drop_path_add")
    return torch.empty_like(residual), _rng_state_like(residual)


def _setup_drop_path_add(ctx, inputs, output):
    _, _, ctx.p, ctx.scale_by_keep, _ = inputs
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)


def _drop_path_add_grad(ctx, grad_output, _grad_rng_state):
    if grad_output is None:
        return None, None, None, None, None
    (rng_state,) = ctx.saved_tensors
    grad_branch = ops.drop_path_backward(grad_output, rng_state, ctx.p, ctx.scale_by_keep, True)
    return grad_output, grad_branch, None, None, None


torch.library.register_autograd("fastdrop::drop_path_add", _drop_path_add_grad, setup_context=_setup_drop_path_add)


@torch.library.register_fake("fastdrop::dropout_add")
def _dropout_add_fake(residual, input, p, generator=None):
    _check_same(residual, "residual", input, "input", "dropout_add")
    return torch.empty_like(residual), _rng_state_like(residual)


def _setup_dropout_add(ctx, inputs, output):
    ctx.p = inputs[2]
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)


def _dropout_add_grad(ctx, grad_output, _grad_rng_state):
    if grad_output is None:
        return None, None, None, None
    (rng_state,) = ctx.saved_tensors
    return grad_output, ops.dropout_backward(grad_output, rng_state, ctx.p), None, None


torch.library.register_autograd("fastdrop::dropout_add", _dropout_add_grad, setup_context=_setup_dropout_add)


@torch.library.register_fake("fastdrop::bias_dropout_add")
def _bias_dropout_add_fake(input, bias, residual, p, generator=None):
    _check_same(residual, "residual", input, "input", "bias_dropout_add")
    _check_bias(input, bias, "bias_dropout_add")
    return torch.empty_like(residual), _rng_state_like(residual)


def _setup_bias_dropout_add(ctx, inputs, output):
    ctx.p = inputs[3]
    ctx.bias_shape = inputs[1].shape
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)


def _bias_dropout_add_grad(ctx, grad_output, _grad_rng_state):
    if grad_output is None:
        return None, None, None, None, None
    (rng_state,) = ctx.saved_tensors
    grad_input = ops.dropout_backward(grad_output, rng_state, ctx.p)
    # torch's reduction for a broadcast operand, so the bias gradient matches autograd's.
    grad_bias = grad_input.sum_to_size(ctx.bias_shape)
    return grad_input, grad_bias, grad_output, None, None


torch.library.register_autograd(
    "fastdrop::bias_dropout_add", _bias_dropout_add_grad, setup_context=_setup_bias_dropout_add
)


class InplaceDropout(torch.autograd.Function):
    """Any variant in place under autograd (mutating ops take no registered autograd)."""

    @staticmethod
    def forward(ctx, input, p, generator, name):
        rng_state = getattr(ops, f"{name}_")(input, p, generator)
        ctx.mark_dirty(input)
        ctx.save_for_backward(rng_state)
        ctx.p, ctx.name = p, name
        return input

    @staticmethod
    def backward(ctx, grad_output):
        (rng_state,) = ctx.saved_tensors
        return getattr(ops, f"{ctx.name}_backward")(grad_output, rng_state, ctx.p), None, None, None


def apply_variant(name, input, p, inplace, generator):
    """Runs variant `name` in training mode; the caller has checked p and the trivial cases."""
    if not inplace:
        return getattr(ops, name)(input, p, generator)[0]
    if torch.is_grad_enabled() and input.requires_grad:
        return InplaceDropout.apply(input, p, generator, name)
    getattr(ops, f"{name}_")(input, p, generator)
    return input
