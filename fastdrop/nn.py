"""Modules that replace torch.nn's dropout modules one for one.

Each subclasses the torch module it replaces, so isinstance checks, repr,
state_dict and train/eval behave as before; only forward differs.
"""

import torch

from . import functional as F

__all__ = ["Dropout"]


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout, computed by fastdrop's fused, mask-free kernels."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        F._check_probability(p)
        super().__init__(p, inplace)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)
