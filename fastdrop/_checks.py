"""Every argument check of fastdrop's Python API, with the error types and
messages of the function it replaces (torch's, timm's or torchvision's).

The operators in torch.ops.fastdrop check again in C++ (and so do their Meta
kernels, for tracing); these checks exist for what never reaches them: eval
mode, the identity cases, and torch's own argument-parsing rules.
"""

import numbers
import warnings

import torch

_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


def _type_name(value):
    """The type name torch's argument parser prints (CPython's tp_name)."""
    kind = type(value)
    if kind.__flags__ & _HEAP_TYPE or kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__name__}"


def probability_range(p):
    """The range check torch's modules make at construction (comparing with the ints 0 and 1, so
    that a str fails that comparison with torch's TypeError); NaN is refused too."""
    if p < 0 or p > 1 or p != p:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def probability(p, function):
    """p as a float, checked the way torch.nn.functional checks it.

    torch compares p with 0 and 1 in Python first (so a str raises that
    comparison's TypeError, and a multi-element tensor its RuntimeError), then
    its argument parser takes any real number or a 0-dim tensor that does not
    require grad. NaN is refused here too, where torch lets it through.
    """
    if type(p) is float:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        return p
    if p < 0.0 or p > 1.0 or p != p:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if isinstance(p, torch.Tensor):
        if p.dim() != 0 or p.requires_grad:
            raise TypeError(f"{function}(): argument 'p' (position 2) must be float, not {_type_name(p)}")
        return float(p)
    if isinstance(p, (int, float)) or (type(p).__module__ == "numpy" and isinstance(p, numbers.Real)):
        return float(p)
    raise TypeError(f"{function}(): argument 'p' (position 2) must be float, not {_type_name(p)}")


def training_flag(training, function):
    """torch's argument parser takes only a bool for `train` (not 0, None or a numpy bool)."""
    if training is not True and training is not False:
        raise TypeError(f"{function}(): argument 'train' (position 3) must be bool, not {_type_name(training)}")


def drop_probability(p):
    """timm's and torchvision's drop rate: a real number in [0, 1] (NaN refused)."""
    if isinstance(p, bool) or not isinstance(p, (numbers.Real, torch.Tensor)):
        raise TypeError(f"drop probability must be a real number, but got {_type_name(p)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    return float(p)


def stochastic_depth_mode(mode):
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


# c10's names of the dtypes, as the C++ operators' messages print them.
_SCALAR_TYPE_NAMES = {
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float",
    torch.float64: "Double",
}


def _dtype_name(dtype):
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype))


def residual_operands(residual, branch, branch_name, op):
    """The operand checks of the fused residual forms, as the C++ operators make them:
    the branch's shape and device, and its dtype or a wider float one (the output's)."""
    if residual.shape != branch.shape:
        raise RuntimeError(
            f"fastdrop.{op}: residual and {branch_name} must have the same shape, "
            f"but got {list(residual.shape)} and {list(branch.shape)}"
        )
    if residual.device != branch.device:
        raise RuntimeError(
            f"fastdrop.{op}: residual and {branch_name} must be on the same device, "
            f"but got {residual.device} and {branch.device}"
        )
    wide, narrow = residual.dtype, branch.dtype
    if wide == narrow:
        return
    if not (
        wide in (torch.float32, torch.float64)
        and narrow.is_floating_point
        and torch.promote_types(wide, narrow) == wide
    ):
        raise RuntimeError(
            f"fastdrop.{op}: residual must have the {branch_name}'s dtype or a wider float dtype, "
            f"but got {_dtype_name(wide)} and {branch_name} {_dtype_name(narrow)}"
        )


def bias_operand(input, bias, op):
    if not (bias.dim() == 1 and input.dim() >= 1 and bias.shape[0] == input.shape[-1]):
        raise RuntimeError(
            f"fastdrop.{op}: bias must be 1-D with the size of input's last dim, but got shape {list(bias.shape)}"
        )
    if bias.device != input.device:
        raise RuntimeError(f"fastdrop.{op}: bias must be on the input's device ({input.device}), but got {bias.device}")
    if bias.dtype != input.dtype:
        raise RuntimeError(f"fastdrop.{op}: bias must have the input's dtype ({input.dtype}), but got {bias.dtype}")


def unsigned_64(value, name):
    """A seed or an offset: an int in [0, 2^64), returned as the int64 bit pattern a state tensor holds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"dropout_with_seed(): {name} must be an int, not {_type_name(value)}")
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"dropout_with_seed(): {name} must be in [0, 2**64), but got {value}")
    return value - (1 << 64) if value >= 1 << 63 else value


def _warn(message):
    # torch.compile cannot trace warnings.warn (fullgraph would fail): eager only.
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=4)


def channel_dropout_rank(input, spatial_dims):
    """torch's rank rules of dropout1d (an error), dropout2d and dropout3d (warnings)."""
    if spatial_dims == 1:
        if input.dim() not in (2, 3):
            raise RuntimeError(
                f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. "
                "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
                "spatial dimension, a channel dimension, and an optional batch dimension "
                "(i.e. 2D or 3D inputs)."
            )
    elif spatial_dims == 2:
        if input.dim() not in (3, 4):
            _warn(
                f"dropout2d: Received a {input.dim()}-D input to dropout2d, which is deprecated "
                "and will result in an error in a future release. To retain the behavior "
                "and silence this warning, please use dropout instead. Note that dropout2d "
                "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
                "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs)."
            )
        if input.dim() == 3:
            _warn(
                "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
                "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
                "is the channel dim. This behavior will change in a future release to interpret the "
                "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
                "channel-wise dropout behavior, please switch to using dropout1d instead."
            )
    else:
        if input.dim() not in (4, 5):
            _warn(
                f"dropout3d: Received a {input.dim()}-D input to dropout3d, which is deprecated "
                "and will result in an error in a future release. To retain the behavior "
                "and silence this warning, please use dropout instead. Note that dropout3d "
                "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
                "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs)."
            )


def noise_shape(noise_shape, shape, function):
    """Which dims share one decision: one entry per dim of the input, 1 where the
    decision is shared along that dim, the input's size or None where it is not
    (TF/Keras's noise_shape). An explicit 1 on a dim of size 1 counts as shared:
    it matters where that dim is the batch dim of a batch slice."""
    if isinstance(noise_shape, (str, bytes)) or not hasattr(noise_shape, "__len__"):
        raise TypeError(f"{function}: noise_shape must be a sequence of ints, but got {_type_name(noise_shape)}")
    if len(noise_shape) != len(shape):
        raise ValueError(
            f"{function}: noise_shape must have one entry per dim of the input ({len(shape)}), "
            f"but got {list(noise_shape)} for an input of shape {list(shape)}"
        )
    shared = []
    for d, (entry, size) in enumerate(zip(noise_shape, shape)):
        if entry is None:
            shared.append(False)
            continue
        if isinstance(entry, bool) or not isinstance(entry, (int, torch.SymInt)):
            raise TypeError(f"{function}: noise_shape[{d}] must be an int or None, but got {_type_name(entry)}")
        if entry != 1 and entry != size:
            raise ValueError(
                f"{function}: noise_shape[{d}] must be 1 or the input's size {size}, but got {entry} "
                f"(noise_shape {list(noise_shape)}, input shape {list(shape)})"
            )
        shared.append(entry == 1)
    return shared
