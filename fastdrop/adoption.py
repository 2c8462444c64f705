"""One-line adoption: fastdrop.replace_dropout(model)."""

import functools
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


# Optional packages' modules, matched by class where the package imports and by
# name and attributes where it does not (or has an older layout):
# (package, class name, attributes, fastdrop's replacement, how to build it).
_PEER_MODULES = (
    (
        "timm.layers",
        "DropPath",
        ("drop_prob",),
        fnn.DropPath,
        lambda m: fnn.DropPath(m.drop_prob, getattr(m, "scale_by_keep", True)),
    ),
    (
        "torchvision.ops",
        "StochasticDepth",
        ("p", "mode"),
        fnn.StochasticDepth,
        lambda m: fnn.StochasticDepth(m.p, m.mode),
    ),
    (
        "torchvision.ops",
        "DropBlock2d",
        ("p", "block_size", "inplace", "eps"),
        fnn.DropBlock2d,
        lambda m: fnn.DropBlock2d(m.p, m.block_size, m.inplace, m.eps),
    ),
    (
        "torchvision.ops",
        "DropBlock3d",
        ("p", "block_size", "inplace", "eps"),
        fnn.DropBlock3d,
        lambda m: fnn.DropBlock3d(m.p, m.block_size, m.inplace, m.eps),
    ),
    (
        "timm.layers",
        "DropBlock2d",
        # timm 1.0.23 and later; older timm's DropBlock2d (fast, batchwise) has no couple_channels and stays.
        ("drop_prob", "block_size", "gamma_scale", "with_noise", "couple_channels", "scale_by_keep"),
        fnn.TimmDropBlock2d,
        # Gaussian noise in the dropped blocks is not supported: such a module stays as it is.
        lambda m: (
            None
            if m.with_noise
            else fnn.TimmDropBlock2d(
                m.drop_prob, m.block_size, m.gamma_scale, False, m.inplace, m.couple_channels, m.scale_by_keep
            )
        ),
    ),
)


@functools.cache
def _class_of(package, name):
    """A class from an optional package, or None where the package does not import.

    Cached: a failed import is not, and would otherwise search sys.path again
    for every module of the model."""
    try:
        module = __import__(package, fromlist=[name])
    except Exception:  # noqa: BLE001  (any import failure means: match by name instead)
        return None
    return getattr(module, name, None)


def _replacement(module):
    make = _TORCH_MODULES.get(type(module))
    if make is not None:
        return make(module)
    for package, name, attributes, ours, make in _PEER_MODULES:
        peer_class = _class_of(package, name)
        if peer_class is not None and isinstance(module, peer_class):
            return make(module)
        if (
            type(module).__name__ == name
            and all(hasattr(module, attribute) for attribute in attributes)
            and not isinstance(module, ours)
        ):
            return make(module)
    return None


def replace_dropout(model: torch.nn.Module, *, verbose: bool = False) -> torch.nn.Module:
    """Swaps, in place, every dropout module of `model` for fastdrop's and returns the model.

    Replaced: torch.nn.Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout,
    timm's DropPath and DropBlock2d (timm 1.0.23 and later; not with_noise=True, which
    stays), torchvision's
    StochasticDepth and DropBlock2d/3d (matched by class where
    those packages import, by name and attributes where they do not). p,
    inplace, mode, scale_by_keep and training state carry over; in eval mode the
    model's outputs are bit-identical before and after. What was replaced is
    logged (logger "fastdrop", INFO) and printed with verbose=True. A model that
    is itself a dropout module is returned as its replacement.
    """
    root = _replacement(model)
    if root is not None:
        root.train(model.training)
        replaced = [("(the model itself)", type(model).__name__)]
        model = root
    else:
        # Every replacement is built (and so validated) before any is swapped
        # in, so an invalid module leaves the model as it was; a module
        # registered under several names gets one replacement.
        swaps, replacements, replaced = [], {}, []

        def visit(parent, prefix):
            for name, child in parent.named_children():
                qualified = f"{prefix}.{name}" if prefix else name
                first_visit = id(child) not in replacements
                if first_visit:
                    replacements[id(child)] = _replacement(child)
                    if replacements[id(child)] is not None:
                        replaced.append((qualified, type(child).__name__))
                new = replacements[id(child)]
                if new is not None:
                    swaps.append((parent, name, child, new))
                elif first_visit:
                    visit(child, qualified)

        visit(model, "")
        for parent, name, child, new in swaps:
            new.train(child.training)
            setattr(parent, name, new)
    counts = {}
    for _, kind in replaced:
        counts[kind] = counts.get(kind, 0) + 1
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items()) or "nothing"
    report = f"fastdrop.replace_dropout: replaced {summary}" + "".join(f"\n  {name}: {kind}" for name, kind in replaced)
    logger.info(report)
    if verbose:
        print(report)
    return model
