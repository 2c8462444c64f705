"""Fake kernels and autograd for the operators registered by fastdrop._C.

Backward never sees a mask: each forward returns a 2-element int64 rng_state
(seed, offset) next to its output, autograd saves only that, and backward
regenerates the mask from it.
"""

import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.fastdrop)

ops = torch.ops.fastdrop


def _rng_state_like(tensor):
    return tensor.new_empty((2,), dtype=torch.int64)


@torch.library.register_fake("fastdrop::dropout")
def _dropout_fake(input, p, generator=None):
    return torch.empty_like(input), _rng_state_like(input)


@torch.library.register_fake("fastdrop::dropout_")
def _dropout_inplace_fake(input, p, generator=None):
    return _rng_state_like(input)


@torch.library.register_fake("fastdrop::dropout_backward")
def _dropout_backward_fake(grad, rng_state, p):
    return torch.empty_like(grad)


def _save_rng_state_and_p(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(output[1])
    # rng_state (an integer output) never has a gradient: do not build zeros for it.
    ctx.set_materialize_grads(False)


def _dropout_grad(ctx, grad_output, _grad_rng_state):
    if grad_output is None:
        return None, None, None
    (rng_state,) = ctx.saved_tensors
    return ops.dropout_backward(grad_output, rng_state, ctx.p), None, None


torch.library.register_autograd("fastdrop::dropout", _dropout_grad, setup_context=_save_rng_state_and_p)


def _save_replay_state(ctx, inputs, output):
    _, rng_state, ctx.p = inputs
    ctx.save_for_backward(rng_state)


def _replay_grad(ctx, grad_output):
    # The mask is a fixed 0 / scale multiplier: its backward is itself.
    (rng_state,) = ctx.saved_tensors
    return ops.dropout_backward(grad_output, rng_state, ctx.p), None, None


torch.library.register_autograd("fastdrop::dropout_backward", _replay_grad, setup_context=_save_replay_state)


class DropoutInplace(torch.autograd.Function):
    """In-place dropout under autograd (mutating ops take no registered autograd)."""

    @staticmethod
    def forward(ctx, input, p, generator):
        rng_state = ops.dropout_(input, p, generator)
        ctx.mark_dirty(input)
        ctx.save_for_backward(rng_state)
        ctx.p = p
        return input

    @staticmethod
    def backward(ctx, grad_output):
        (rng_state,) = ctx.saved_tensors
        return ops.dropout_backward(grad_output, rng_state, ctx.p), None, None
