"""One-line adoption: fastdrop.replace_dropout(model)."""

import logging

import torch

from . import nn as fnn

__all__ = ["replace_dropout"]

logger = logging.getLogger("fastdrop")

# torch's modules, matched by exact class (a subclass may have changed forward).
_TORCH_MODULES = {
    torch.nn.Dropout: lambda m: fnn.Dropout(m.p, m.inplace),
    torch.nn.Dropout1d: lambda m: fnn.Dropout1d(m.p, m.inplace),
    torch.nn.Dropout2d: lambda m: fnn.Dropout2d(m.p, m.inplace),
    torch.nn.Dropout3d: lambda m: fnn.Dropout3d(m.p, m.inplace),
    torch.nn.AlphaDropout: lambda m: fnn.AlphaDropout(m.p, m.inplace),
    torch.nn.FeatureAlphaDropout: lambda m: fnn.FeatureAlphaDropout(m.p, m.inplace),
}


def _class_of(module_path, name):
    """A class from an optional package, or None where the package does not import."""
    try:
        module = __import__(module_path, fromlist=[name])
    except Exception:  # noqa: BLE001  (any import failure means: match by name instead)
        return None
    return getattr(module, name, None)


def _is_timm_drop_path(module):
    timm_class = _class_of("timm.layers", "DropPath")
    if timm_class is not None and isinstance(module, timm_class):
        return True
    # By name and attributes where timm does not import (or is an older layout).
    return (
        type(module).__name__ == "DropPath"
        and hasattr(module, "drop_prob")
        and not isinstance(module, fnn.DropPath)
    )


def _is_torchvision_stochastic_depth(module):
    torchvision_class = _class_of("torchvision.ops", "StochasticDepth")
    if torchvision_class is not None and isinstance(module, torchvision_class):
        return True
    return (
        type(module).__name__ == "StochasticDepth"
        and hasattr(module, "p")
        and hasattr(module, "mode")
        and not isinstance(module, fnn.StochasticDepth)
    )


def _replacement(module):
    make = _TORCH_MODULES.get(type(module))
    if make is not None:
        return make(module)
    if _is_timm_drop_path(module):
        return fnn.DropPath(module.drop_prob, getattr(module, "scale_by_keep", True))
    if _is_torchvision_stochastic_depth(module):
        return fnn.StochasticDepth(module.p, module.mode)
    return None


def replace_dropout(model: torch.nn.Module, *, verbose: bool = False) -> torch.nn.Module:
    """Swaps, in place, every dropout module of `model` for fastdrop's and returns the model.

    Replaced: torch.nn.Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout,
    timm's DropPath and torchvision's StochasticDepth (matched by class where
    those packages import, by name and attributes where they do not). p,
    inplace, mode, scale_by_keep and training state carry over; in eval mode the
    model's outputs are bit-identical before and after. What was replaced is
    logged (logger "fastdrop", INFO) and printed with verbose=True. A model that
    is itself a dropout module is returned as its replacement.
    """
    replaced = []

    def visit(parent, prefix):
        for name, child in list(parent.named_children()):
            qualified = f"{prefix}.{name}" if prefix else name
            new = _replacement(child)
            if new is None:
                visit(child, qualified)
                continue
            new.train(child.training)
            setattr(parent, name, new)
            replaced.append((qualified, type(child).__name__))

    root = _replacement(model)
    if root is not None:
        root.train(model.training)
        replaced.append(("(the model itself)", type(model).__name__))
        model = root
    else:
        visit(model, "")
    counts = {}
    for _, kind in replaced:
        counts[kind] = counts.get(kind, 0) + 1
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items()) or "nothing"
    report = f"fastdrop.replace_dropout: replaced {summary}" + "".join(
        f"\n  {name}: {kind}" for name, kind in replaced
    )
    logger.info(report)
    if verbose:
        print(report)
    return model
