"""Stochastic depth for whole models: fastdrop.add_stochastic_depth.

Huang et al. (Deep Networks with Stochastic Depth, 2016) drop residual block l
of L with probability drop_rate * l / L (the linear rule), so early blocks,
which extract low-level features, are almost always kept.
"""

import torch

from . import _checks
from . import functional as F
from .nn import _NotScriptable

__all__ = ["add_stochastic_depth", "ResidualBlockWithStochasticDepth"]


class ResidualBlockWithStochasticDepth(_NotScriptable, torch.nn.Module):
    """A torchvision-style BasicBlock or Bottleneck whose residual add is drop_path_add.

    It holds the block's own submodules under their own names, so the state
    dict keys and weights are exactly the block's; in eval mode it computes
    exactly what the block computed.
    """

    def __init__(self, block: torch.nn.Module, drop_prob: float) -> None:
        super().__init__()
        _checks.drop_probability(drop_prob)
        for name, child in block.named_children():
            self.add_module(name, child)
        if not hasattr(self, "downsample"):
            self.downsample = None
        self.bottleneck = hasattr(block, "conv3")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        # The block's `out += identity` is out + identity; addition commutes bit for bit.
        return self.relu(F.drop_path_add(identity, out, self.drop_prob, self.training))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"


def _is_residual_block(module):
    """torchvision's BasicBlock / Bottleneck structure: conv-bn branch, relu, optional downsample."""
    needed = ("conv1", "bn1", "conv2", "bn2", "relu")
    return all(isinstance(getattr(module, name, None), torch.nn.Module) for name in needed) and (
        getattr(module, "downsample", None) is None or isinstance(module.downsample, torch.nn.Module)
    )


def _drop_path_modules(model):
    """Modules that already implement stochastic depth: timm's DropPath (drop_prob),
    torchvision's StochasticDepth (p, mode), and fastdrop's own; matched by class name
    and attributes so that neither package needs to be importable."""
    found = []
    for module in model.modules():
        name = type(module).__name__
        if name == "DropPath" and hasattr(module, "drop_prob"):
            found.append((module, "drop_prob"))
        elif name == "StochasticDepth" and hasattr(module, "p") and hasattr(module, "mode"):
            found.append((module, "p"))
    return found


def _rates(drop_rate, count, schedule):
    if schedule == "linear":
        return [drop_rate * (index + 1) / count for index in range(count)]
    if schedule == "uniform":
        return [drop_rate] * count
    raise ValueError(f"schedule has to be either 'linear' or 'uniform', but got {schedule!r}")


def add_stochastic_depth(model: torch.nn.Module, drop_rate: float, schedule: str = "linear") -> torch.nn.Module:
    """Adds stochastic depth to a residual network, in place, and returns it.

    Models that already hold DropPath / StochasticDepth modules (timm,
    torchvision) get their rates set by the schedule, in module order. Otherwise
    every block with torchvision's BasicBlock / Bottleneck structure has its
    residual add rerouted through fastdrop's fused drop_path_add; block l of L
    (in module order) gets drop_rate * l / L ("linear", the Stochastic Depth
    paper's rule) or drop_rate ("uniform"). Weights, state-dict keys and the
    eval-mode output are unchanged.
    """
    _checks.drop_probability(drop_rate)
    existing = _drop_path_modules(model)
    if existing:
        for (module, attribute), rate in zip(existing, _rates(drop_rate, len(existing), schedule)):
            setattr(module, attribute, rate)
        return model
    blocks = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if _is_residual_block(child) and not isinstance(child, ResidualBlockWithStochasticDepth):
                blocks.append((parent, name, child))
    if not blocks:
        raise ValueError(
            "add_stochastic_depth found no residual blocks (torchvision's BasicBlock/Bottleneck structure) "
            "and no DropPath/StochasticDepth modules in the model"
        )
    for (parent, name, block), rate in zip(blocks, _rates(drop_rate, len(blocks), schedule)):
        wrapped = ResidualBlockWithStochasticDepth(block, rate)
        wrapped.train(block.training)
        setattr(parent, name, wrapped)
    return model
