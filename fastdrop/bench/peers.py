"""What a user runs today instead of each fastdrop op: the torch op it replaces,
or the composition timm, torchvision and Megatron-LM write in torch ops."""

import torch
import torch.nn.functional as F


def timm_drop_path(x, drop_prob, training=True, scale_by_keep=True):
    """timm.layers.drop_path: a (B, 1, ..., 1) Bernoulli draw, divided by keep, multiplied in."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        noise.div_(keep_prob)
    return x * noise


def torchvision_stochastic_depth(x, p, mode="row", training=True):
    """torchvision.ops.stochastic_depth: as timm's, or one draw for the whole batch."""
    if not training or p == 0.0:
        return x
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise


def timm_drop_path_add(residual, branch, p):
    return residual + timm_drop_path(branch, p)


def torchvision_stochastic_depth_add(residual, branch, p):
    return residual + torchvision_stochastic_depth(branch, p, "row")


def eager_dropout_add(residual, x, p):
    return residual + F.dropout(x, p)


def megatron_bias_dropout_add(x, bias, residual, p):
    """Megatron-LM's bias_dropout_add, unfused: residual + dropout(x + bias)."""
    return residual + F.dropout(x + bias, p)


def locked_dropout(x, p, training=True):
    """PyTorch-NLP's (and AWD-LSTM's) LockedDropout of (T, B, H): one Bernoulli
    mask of (1, B, H), divided by 1 - p, broadcast over time."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2), requires_grad=False).bernoulli_(1 - p)
    return x * (mask / (1 - p)).expand_as(x)


def dinov2_index_add(residual, branch_kept, indices, p):
    """DINOv2's stochastic depth epilogue: the branch ran on a subset of samples, scattered
    back with the residual by index_add, scaled by 1 / keep (as drop path scales a kept sample)."""
    flat = residual.flatten(1)
    added = torch.index_add(flat, 0, indices, branch_kept.flatten(1).to(residual.dtype), alpha=1 / (1 - p))
    return added.view_as(residual)


def torchvision_drop_block2d(x, p, block_size, eps=1e-6):
    """torchvision.ops.drop_block2d's composition: a Bernoulli seed grid over the valid
    block positions, padded and max-pooled into blocks, inverted, renormalised by the kept
    fraction in x's dtype, multiplied in (block_size odd, as torchvision needs)."""
    _, _, height, width = x.shape
    block = min(block_size, width, height)
    gamma = p * height * width / (block**2 * (height - block + 1) * (width - block + 1))
    noise = torch.empty(
        (x.shape[0], x.shape[1], height - block + 1, width - block + 1), dtype=x.dtype, device=x.device
    ).bernoulli_(gamma)
    noise = F.pad(noise, [block // 2] * 4, value=0)
    noise = 1 - F.max_pool2d(noise, stride=(1, 1), kernel_size=(block, block), padding=block // 2)
    return x * noise * (noise.numel() / (eps + noise.sum()))
