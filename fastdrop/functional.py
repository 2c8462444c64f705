"""Functional dropout, with the signatures, defaults and errors of torch.nn.functional."""

import torch

from ._ops import DropoutInplace, ops

__all__ = ["dropout", "dropout_with_seed"]


def _check_probability(p):
    # Negated so that NaN fails too.
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _needs_autograd(input):
    return torch.is_grad_enabled() and input.requires_grad


def dropout(input, p=0.5, training=True, inplace=False, *, generator=None):
    """Drop-in for torch.nn.functional.dropout, fused and mask-free.

    Each element is zeroed with probability p, decided by Philox from
    (seed, offset) drawn from ``generator`` (or torch's default generator of
    the input's device) and the element's logical index; kept elements are
    multiplied by 1 / (1 - p). Backward regenerates the mask instead of
    saving it. In eval mode, or for p == 0 or an empty input, the input itself
    is returned, as torch does.
    """
    _check_probability(p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        if _needs_autograd(input):
            return DropoutInplace.apply(input, p, generator)
        ops.dropout_(input, p, generator)
        return input
    return ops.dropout(input, p, generator)[0]


def dropout_with_seed(input, p, seed, offset=0):
    """Applies the mask that a dropout call keyed by (seed, offset) applied.

    A CUDA call with generator ``g`` is keyed by ``(g.initial_seed(),
    g.get_offset())`` read just before it, so this reproduces a CUDA run's
    mask on the CPU (and vice versa), bit for bit. Differentiable.
    """
    _check_probability(p)
    # seed is an unsigned 64-bit value; the state tensor holds its bit pattern.
    seed = seed - (1 << 64) if seed >= (1 << 63) else seed
    rng_state = torch.tensor([seed, offset], dtype=torch.int64, device=input.device)
    return ops.dropout_backward(input, rng_state, p)
