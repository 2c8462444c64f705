"""torch's own arithmetic for each dropout variant, given a keep mask.

Each reference replays the ops torch runs (aten's _dropout_impl, or the fused
kernel's backward for element-wise dropout) with the mask fastdrop drew, so
fastdrop's outputs must match these bit for bit.
"""

import math

import torch

from contract_reference import keep_mask

SELU_ALPHA = 1.7580993408473766


def dropout(x, mask, p):
    """Element-wise: torch's fused CUDA kernel, x * mask * (1 / (1 - p)) rounded once."""
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.ops.aten.native_dropout_backward(x, mask.to(x.device), 1.0 / (1.0 - p))


def _noise(x, mask, p, alpha):
    """torch's noise (and shift) tensors, in x's dtype, as aten's _dropout_impl builds them.

    One step is spelled out: torch's CUDA kernels add a Python scalar in
    op-math precision (float for half types), torch's CPU kernels round it to
    the tensor's dtype first. fastdrop (on both devices) follows the CUDA
    rounding, written here so that it is the same on either device.
    """
    noise = mask.to(device=x.device, dtype=x.dtype)
    if alpha:
        a = 1.0 / math.sqrt((SELU_ALPHA * SELU_ALPHA * p + 1) * (1 - p))
        opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
        shift = noise.add(-1).mul_(SELU_ALPHA * a).to(opmath).add_(SELU_ALPHA * a * p).to(x.dtype)
        noise.mul_(a)
        return noise, shift
    return noise.div_(1 - p), None


def unfused(x, mask, p, alpha):
    """Feature and alpha variants: x * noise (+ shift); x * 0 for p == 1."""
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    noise, shift = _noise(x, mask, p, alpha)
    out = x.mul(noise)
    return out.add_(shift) if alpha else out


def unfused_grad(grad, mask, p, alpha):
    """The gradient torch's autograd gives x * noise (+ shift): grad * noise."""
    if p == 1.0:
        return grad * torch.zeros((), dtype=grad.dtype, device=grad.device)
    return grad * _noise(grad, mask, p, alpha)[0]


# name -> (per (n, c) row?, alpha?)
VARIANTS = {
    "dropout": (False, False),
    "alpha_dropout": (False, True),
    "feature_dropout": (True, False),
    "feature_alpha_dropout": (True, True),
}


def variant_mask(name, rng_state, shape, p):
    """The keep mask of variant `name` for a tensor of `shape`, broadcastable to it."""
    per_row, _ = VARIANTS[name]
    if not per_row:
        return keep_mask(rng_state, shape, p)
    rows = keep_mask(rng_state, (shape[0] * shape[1],), p)
    return rows.reshape(shape[0], shape[1], *([1] * (len(shape) - 2)))


def forward(name, x, mask, p):
    per_row, alpha = VARIANTS[name]
    if name == "dropout":
        return dropout(x, mask.expand(x.shape), p)
    return unfused(x, mask, p, alpha)


def backward(name, grad, mask, p):
    per_row, alpha = VARIANTS[name]
    if name == "dropout":
        return dropout(grad, mask.expand(grad.shape), p)
    return unfused_grad(grad, mask, p, alpha)


def sample_mask(rng_state, batch, p):
    """Per-sample keep decisions (drop path row mode): the contract's index is the sample."""
    return keep_mask(rng_state, (batch,), p)


def timm_drop_path(x, sample_keep, drop_prob, scale_by_keep=True):
    """timm.layers.drop_path with the random tensor replaced by the given decisions."""
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = sample_keep.to(device=x.device, dtype=x.dtype).reshape(shape)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def torchvision_stochastic_depth(x, keep, p, mode):
    """torchvision.ops.stochastic_depth with the noise replaced by the given decisions."""
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = keep.to(device=x.device, dtype=x.dtype).reshape(size)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise
