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


def _forward_fake(input, p, generator=None):
    return torch.empty_like(input), _rng_state_like(input)


def _inplace_fake(input, p, generator=None):
    return _rng_state_like(input)


def _backward_fake(grad, rng_state, p):
    return torch.empty_like(grad)


def _register(name):
    backward_op = getattr(ops, f"{name}_backward")

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

    torch.library.register_fake(f"fastdrop::{name}", _forward_fake)
    torch.library.register_fake(f"fastdrop::{name}_", _inplace_fake)
    torch.library.register_fake(f"fastdrop::{name}_backward", _backward_fake)
    torch.library.register_autograd(f"fastdrop::{name}", forward_grad, setup_context=setup_forward)
    torch.library.register_autograd(f"fastdrop::{name}_backward", backward_grad, setup_context=setup_backward)


for _name in VARIANTS:
    _register(_name)


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
