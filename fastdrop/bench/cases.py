"""Every op the benchmark measures: its inputs, fastdrop's call, the peers it
replaces, and the bytes it must move (each input read once, each output
written once; benchmarks/README.md explains each count)."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

import fastdrop

from . import peers

FD = fastdrop.functional
P = 0.1  # the drop probability of every case: a common choice in practice


@dataclass
class Op:
    name: str
    family: str
    shape: Callable[[int], tuple]  # numel -> input shape
    inputs: Callable[[tuple, torch.dtype, torch.device], tuple]  # the float tensors the call takes
    fastdrop: Callable
    peers: dict[str, Callable]
    # (forward bytes, backward bytes) per element of the main input, in units of the element size
    traffic: tuple[float, float]
    differentiable: tuple[int, ...] = field(default=(0,))  # which inputs get gradients
    dtypes: tuple[torch.dtype, ...] | None = None  # the dtypes it is measured in (None: any)
    output_dtype: torch.dtype | None = None  # the output's (and its gradient's) dtype, if not the input's

    def bytes_moved(self, numel, itemsize, direction):
        forward, backward = self.traffic
        return numel * itemsize * (forward if direction == "fwd" else forward + backward)


def flat(numel):
    return (numel,)


def images(numel):
    """(N, 64, 16, 16) activations, as after a convolution: channel dropout's input
    ((1, C, 16, 16) with fewer channels below 2^14 elements)."""
    if numel < 64 * 16 * 16:
        return (1, max(1, numel // 256), 16, 16)
    return (numel // (64 * 16 * 16), 64, 16, 16)


def tokens(numel):
    """(B, 64, 64): B samples of 64 tokens of width 64, a transformer's residual stream
    ((B, T, 64) with T * B = numel / 64 and at least 4 samples below 2^14 elements)."""
    if numel < 4 * 4096:
        return (4, max(1, numel // 256), 64)
    return (numel // 4096, 64, 64)


def rows(numel):
    """(T, 1024): T tokens of a hidden size of 1024, Megatron's layout for its epilogue."""
    return (max(1, numel // 1024), 1024)


def sequences(numel):
    """(T, B, H) = (64, B, 256): time-first sequences of an LSTM's hidden size 256
    ((T, 4, 256) with fewer time steps below 2^16 elements)."""
    if numel < 64 * 4 * 256:
        return (max(1, numel // 1024), 4, 256)
    return (64, numel // (64 * 256), 256)


def one(shape, dtype, device):
    return (torch.randn(shape, dtype=dtype, device=device),)


def two(shape, dtype, device):
    return (torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))


def x_bias_residual(shape, dtype, device):
    return (
        torch.randn(shape, dtype=dtype, device=device),
        torch.randn(shape[-1], dtype=dtype, device=device),
        torch.randn(shape, dtype=dtype, device=device),
    )


def fp32_residual(inputs):
    """The same operands with the residual stream in float32 beside a 16-bit branch
    (Megatron's and flash-attention's residual_in_fp32); the residual is the last."""

    def wider(shape, dtype, device):
        *branch, residual = inputs(shape, dtype, device)
        return (*branch, residual.float())

    return wider


def residual_first_fp32(shape, dtype, device):
    residual, x = two(shape, dtype, device)
    return residual.float(), x


def kept_subset(shape, dtype, device):
    """A residual, the samples drop_path_add would keep of it, and their branches alone."""
    residual = torch.randn(shape, dtype=dtype, device=device)
    indices = FD.drop_path_keep_indices(shape[0], P, device=device)
    return residual, torch.randn((indices.numel(), *shape[1:]), dtype=dtype, device=device), indices


OPS = [
    Op(
        "dropout",
        "element-wise dropout",
        flat,
        one,
        lambda x: FD.dropout(x, P),
        # x.clone(): the allocation and copy any out-of-place op pays, the floor for dropout.
        {"torch": lambda x: F.dropout(x, P), "x.clone()": lambda x: x.clone()},
        (2, 2),
    ),
    Op(
        "alpha_dropout",
        "element-wise dropout",
        flat,
        one,
        lambda x: FD.alpha_dropout(x, P, training=True),
        {"torch": lambda x: F.alpha_dropout(x, P, training=True)},
        (2, 2),
    ),
    Op(
        "dropout2d",
        "feature-wise dropout",
        images,
        one,
        lambda x: FD.dropout2d(x, P),
        {"torch": lambda x: F.dropout2d(x, P)},
        (2, 2),
    ),
    Op(
        "feature_alpha_dropout",
        "feature-wise dropout",
        images,
        one,
        lambda x: FD.feature_alpha_dropout(x, P, training=True),
        {"torch": lambda x: F.feature_alpha_dropout(x, P, training=True)},
        (2, 2),
    ),
    Op(
        "locked_dropout",
        "feature-wise dropout",
        sequences,
        one,
        lambda x: FD.dropout(x, P, noise_shape=(1, None, None)),
        {"PyTorch-NLP": lambda x: peers.locked_dropout(x, P)},
        (2, 2),
    ),
    Op(
        "drop_path",
        "drop path",
        tokens,
        one,
        lambda x: FD.drop_path(x, P, training=True),
        {
            "timm": lambda x: peers.timm_drop_path(x, P),
            "torchvision": lambda x: peers.torchvision_stochastic_depth(x, P, "row"),
        },
        (2, 2),
    ),
    Op(
        "drop_path_add",
        "drop path",
        tokens,
        two,
        lambda r, x: FD.drop_path_add(r, x, P),
        {
            "timm": lambda r, x: peers.timm_drop_path_add(r, x, P),
            "torchvision": lambda r, x: peers.torchvision_stochastic_depth_add(r, x, P),
        },
        # forward: read residual and branch, write the sum; backward: read the
        # gradient, write the branch's (the residual's is the gradient itself).
        (3, 2),
        differentiable=(0, 1),
    ),
    Op(
        "drop_path_add_subset",
        "drop path",
        tokens,
        kept_subset,
        lambda r, b, i: FD.drop_path_add_subset(r, b, i, P),
        {"DINOv2": lambda r, b, i: peers.dinov2_index_add(r, b, i, P)},
        # forward: read the residual and the kept branches ((1 - p) N), write the sum; backward: read the
        # kept rows of the gradient and write the branch's (the residual's is the gradient itself).
        (3 - P, 2 * (1 - P)),
        differentiable=(0, 1),
    ),
    Op(
        "drop_block2d",
        "DropBlock",
        images,
        one,
        lambda x: FD.drop_block2d(x, P, 5),
        {"torchvision": lambda x: peers.torchvision_drop_block2d(x, P, 5)},
        # forward: read x, write the output (the mask's bits stay in cache); backward: the same on the gradient.
        (2, 2),
    ),
    Op(
        "dropout_add",
        "residual epilogues",
        rows,
        two,
        lambda r, x: FD.dropout_add(r, x, P),
        {"torch": lambda r, x: peers.eager_dropout_add(r, x, P)},
        (3, 2),
        differentiable=(0, 1),
    ),
    Op(
        "bias_dropout_add",
        "residual epilogues",
        rows,
        x_bias_residual,
        lambda x, b, r: FD.bias_dropout_add(x, b, r, P),
        {"Megatron": lambda x, b, r: peers.megatron_bias_dropout_add(x, b, r, P)},
        # backward: read the gradient, write the input's; the bias reduction
        # reads it once more (fastdrop leaves that reduction to torch).
        (3, 2),
        differentiable=(0, 1, 2),
    ),
    Op(
        "dropout_add_fp32_residual",
        "residual epilogues",
        rows,
        residual_first_fp32,
        lambda r, x: FD.dropout_add(r, x, P),
        {"torch": lambda r, x: peers.eager_dropout_add(r, x, P)},
        # in units of the 16-bit branch: forward reads it (1) and the fp32 residual (2) and writes
        # the fp32 sum (2); backward reads the fp32 gradient (2) and writes the branch's (1).
        (5, 3),
        differentiable=(0, 1),
        dtypes=(torch.bfloat16, torch.float16),
        output_dtype=torch.float32,
    ),
    Op(
        "bias_dropout_add_fp32_residual",
        "residual epilogues",
        rows,
        fp32_residual(x_bias_residual),
        lambda x, b, r: FD.bias_dropout_add(x, b, r, P),
        {"Megatron": lambda x, b, r: peers.megatron_bias_dropout_add(x, b, r, P)},
        (5, 3),
        differentiable=(0, 1, 2),
        dtypes=(torch.bfloat16, torch.float16),
        output_dtype=torch.float32,
    ),
]


def in_channels_last(op):
    """The same op, measured on channels_last inputs."""

    def inputs(shape, dtype, device):
        return tuple(t.contiguous(memory_format=torch.channels_last) for t in op.inputs(shape, dtype, device))

    return replace(op, name=f"{op.name}_channels_last", inputs=inputs)


for _name in ("feature_alpha_dropout", "dropout2d", "drop_block2d"):  # each right after its NCHW form
    _at = next(i for i, op in enumerate(OPS) if op.name == _name)
    OPS.insert(_at + 1, in_channels_last(OPS[_at]))
# Element-wise dropout after a convolution of a channels_last network: the same activations as
# dropout2d's, whose logical order (a channel's pixels) is not their memory order (a pixel's channels).
_at = next(i for i, op in enumerate(OPS) if op.name == "dropout")
OPS.insert(_at + 1, in_channels_last(replace(OPS[_at], shape=images)))

OPS_BY_NAME = {op.name: op for op in OPS}
FAMILIES = list(dict.fromkeys(op.family for op in OPS))
