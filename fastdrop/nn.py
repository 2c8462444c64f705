"""Modules that replace torch.nn's dropout modules one for one.

Each subclasses the torch module it replaces, so isinstance checks, repr,
state_dict and train/eval behave as before; only forward differs.
"""

import torch
from torch.fx import Proxy

from . import _checks
from . import functional as F

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "DropPath",
    "StochasticDepth",
    "StochasticDepthBlock",
    "LockedDropout",
    "DropBlock2d",
    "DropBlock3d",
    "TimmDropBlock2d",
]


class _NotScriptable:
    def __prepare_scriptable__(self):
        # torch.jit.script would otherwise fail deep inside fastdrop.functional.
        raise RuntimeError(
            f"{type(self).__name__} (fastdrop) cannot be compiled with torch.jit.script. Use torch.compile, "
            "which supports fastdrop with fullgraph=True, or torch.jit.trace, which records fastdrop's ops; "
            "fastdrop.nn modules subclass torch's, so a copy of the model with torch's modules scripts as usual."
        )


def _traced_as_leaf(module, *args):
    """Under torch.fx tracing, the module as one call_module node: a leaf, as torch.nn's
    dropouts are (fx's default tracer takes only torch.nn's own modules for leaves)."""
    tracer = args[0].tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


class _FastdropMixin(_NotScriptable):
    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        # Before torch's own check, which lets NaN through.
        _checks.probability_range(p)
        super().__init__(p, inplace)


class Dropout(_FastdropMixin, torch.nn.Dropout):
    """torch.nn.Dropout, computed by fastdrop's fused, mask-free kernels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(_FastdropMixin, torch.nn.Dropout1d):
    """torch.nn.Dropout1d: whole channels of (N, C, L) or (C, L) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(_FastdropMixin, torch.nn.Dropout2d):
    """torch.nn.Dropout2d: whole channels of (N, C, H, W) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(_FastdropMixin, torch.nn.Dropout3d):
    """torch.nn.Dropout3d: whole channels of (N, C, D, H, W) or (C, D, H, W) input."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(_FastdropMixin, torch.nn.AlphaDropout):
    """torch.nn.AlphaDropout, for SELU networks."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(_FastdropMixin, torch.nn.FeatureAlphaDropout):
    """torch.nn.FeatureAlphaDropout: alpha dropout of whole channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.feature_alpha_dropout(input, self.p, self.training)


class DropPath(_NotScriptable, torch.nn.Module):
    """timm's DropPath (same constructor, attributes and repr): per-sample stochastic depth."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        _checks.drop_probability(drop_prob)
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, Proxy):
            return _traced_as_leaf(self, x)
        return F.drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class StochasticDepth(_NotScriptable, torch.nn.Module):
    """torchvision's StochasticDepth (same constructor, attributes and repr); mode "row" or "batch"."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        _checks.drop_probability(p)
        _checks.stochastic_depth_mode(mode)
        self.p = p
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return F.stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"


class StochasticDepthBlock(_NotScriptable, torch.nn.Module):
    """shortcut(x) + drop_path(branch(x)), fused through drop_path_add.

    The shortcut (identity when None, or a projection) is never dropped. In
    eval mode the block computes exactly shortcut(x) + branch(x).

    skip_dropped=True (DINOv2's stochastic depth) runs the branch in training on
    the kept samples only (drop_path_keep_indices, drop_path_add_subset): the
    same draws and, for a branch that treats each sample on its own, the same
    result bit for bit, without the dropped samples' compute. A branch that
    mixes samples (BatchNorm's batch statistics) sees a smaller batch. Finding
    the kept count synchronizes with a CUDA device once per call.
    """

    def __init__(
        self,
        branch: torch.nn.Module,
        drop_prob: float,
        shortcut: torch.nn.Module | None = None,
        skip_dropped: bool = False,
    ) -> None:
        super().__init__()
        _checks.drop_probability(drop_prob)
        self.branch = branch
        self.shortcut = shortcut
        self.drop_prob = drop_prob
        self.skip_dropped = bool(skip_dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        if self.skip_dropped and self.training and self.drop_prob > 0:
            indices = F.drop_path_keep_indices(x.shape[0], self.drop_prob, device=x.device)
            branch_kept = self.branch(x.index_select(0, indices))
            return F.drop_path_add_subset(residual, branch_kept, indices, self.drop_prob)
        return F.drop_path_add(residual, self.branch(x), self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}" + (", skip_dropped=True" if self.skip_dropped else "")


class LockedDropout(_FastdropMixin, torch.nn.Dropout):
    """Locked (variational) dropout of sequences, AWD-LSTM's and PyTorch-NLP's:
    one mask per sequence and feature, the same at every time step.

    Input (T, B, *) (time first, as those libraries take it) or (B, T, *) with
    batch_first=True; the decisions are shared along the time dim
    (fastdrop.functional.dropout with noise_shape), and kept elements scaled by
    1 / (1 - p) in the input's dtype. Eval mode returns the input itself.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False, inplace: bool = False) -> None:
        super().__init__(p, inplace)
        self.batch_first = bool(batch_first)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        if input.dim() < 2:
            raise RuntimeError(
                f"LockedDropout: expected an input with a time and a batch dim (at least 2-D), "
                f"but got a {input.dim()}-D input"
            )
        noise_shape = [None] * input.dim()  # None: not shared (unambiguous where a dim has size 1)
        noise_shape[1 if self.batch_first else 0] = 1
        return F.dropout(input, self.p, self.training, self.inplace, noise_shape=noise_shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}, inplace={self.inplace}"


class DropBlock2d(_NotScriptable, torch.nn.Module):
    """torchvision.ops.DropBlock2d (same constructor, attributes and repr), by fastdrop.functional.drop_block2d."""

    _function = staticmethod(F.drop_block2d)

    def __init__(self, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06) -> None:
        super().__init__()
        self.p = p
        self.block_size = block_size
        self.inplace = inplace
        self.eps = eps

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, Proxy):
            return _traced_as_leaf(self, input)
        return self._function(input, self.p, self.block_size, self.inplace, self.eps, self.training)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, block_size={self.block_size}, inplace={self.inplace})"


class DropBlock3d(DropBlock2d):
    """torchvision.ops.DropBlock3d, by fastdrop.functional.drop_block3d."""

    _function = staticmethod(F.drop_block3d)


class TimmDropBlock2d(_NotScriptable, torch.nn.Module):
    """timm.layers.DropBlock2d of timm 1.0.23 and later (same constructor and attributes), by
    fastdrop.functional.drop_block_timm. with_noise=True (Gaussian noise in the dropped
    blocks) is not supported: the constructor refuses it. batchwise and fast, which timm
    dropped in 1.0.23, are taken and ignored as timm takes them."""

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        gamma_scale: float = 1.0,
        with_noise: bool = False,
        inplace: bool = False,
        couple_channels: bool = True,
        scale_by_keep: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        if with_noise:
            raise NotImplementedError("fastdrop.nn.TimmDropBlock2d: with_noise=True is not supported")
        unexpected = [key for key in kwargs if key not in ("batchwise", "fast")]
        if unexpected:
            _checks._warn(f"TimmDropBlock2d() got unexpected keyword arguments {unexpected}")
        self.drop_prob = drop_prob
        self.gamma_scale = gamma_scale
        self.block_size = block_size
        self.with_noise = with_noise
        self.inplace = inplace
        self.couple_channels = couple_channels
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, Proxy):
            return _traced_as_leaf(self, x)
        if not self.training or not self.drop_prob:
            return x
        return F.drop_block_timm(
            x,
            self.drop_prob,
            self.block_size,
            self.gamma_scale,
            self.inplace,
            self.couple_channels,
            self.scale_by_keep,
        )
