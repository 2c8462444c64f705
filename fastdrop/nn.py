"""Modules that replace torch.nn's dropout modules one for one.

Each subclasses the torch module it replaces, so isinstance checks, repr,
state_dict and train/eval behave as before; only forward differs.
"""

import torch

from . import functional as F

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]


class _FastdropMixin:
    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        # Before torch's own check, which lets NaN through.
        F._check_probability(p)
        super().__init__(p, inplace)


class Dropout(_FastdropMixin, torch.nn.Dropout):
    """torch.nn.Dropout, computed by fastdrop's fused, mask-free kernels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_FastdropMixin, torch.nn.Dropout1d):
    """torch.nn.Dropout1d: whole channels of (N, C, L) or (C, L) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_FastdropMixin, torch.nn.Dropout2d):
    """torch.nn.Dropout2d: whole channels of (N, C, H, W) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_FastdropMixin, torch.nn.Dropout3d):
    """torch.nn.Dropout3d: whole channels of (N, C, D, H, W) or (C, D, H, W) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_FastdropMixin, torch.nn.AlphaDropout):
    """torch.nn.AlphaDropout, for SELU networks."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(_FastdropMixin, torch.nn.FeatureAlphaDropout):
    """torch.nn.FeatureAlphaDropout: alpha dropout of whole channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.feature_alpha_dropout(input, self.p, self.training)
