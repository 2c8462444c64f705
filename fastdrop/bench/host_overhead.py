"""Per-call host cost: every fastdrop op against what it replaces, on a 64-element
tensor (so the kernel is negligible and what is timed is the call itself: Python
wrappers, argument checks, dispatch, autograd bookkeeping, allocations), one
thread, forward and forward + backward. On a GPU, where an activation's kernel
takes a few microseconds, this is the cost that decides eager training speed.

The ratio is fastdrop's median time over the peer's, side by side in one
process; the target is at most 1.0 everywhere (0.7 is the aim).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastdrop

from . import peers
from .timing import compare

FD = fastdrop.functional
P = 0.1
TARGET = 1.0


@dataclass
class HostCase:
    name: str
    shape: tuple
    tensors: int  # how many same-shaped float inputs the call takes (bias_dropout_add adds a bias)
    fastdrop: Callable
    peer_name: str
    peer: Callable
    inplace: bool = False  # an in-place form: timed on a fresh non-leaf each call


def _bias_case(name, fastdrop_call, peer_name, peer_call):
    return HostCase(name, (4, 16), 3, fastdrop_call, peer_name, peer_call)


CASES = [
    HostCase("dropout", (64,), 1, lambda x: FD.dropout(x, P), "F.dropout", lambda x: F.dropout(x, P)),
    HostCase(
        "dropout (in place)",
        (64,),
        1,
        lambda x: FD.dropout(x, P, inplace=True),
        "F.dropout",
        lambda x: F.dropout(x, P, inplace=True),
        inplace=True,
    ),
    HostCase(
        "alpha_dropout",
        (64,),
        1,
        lambda x: FD.alpha_dropout(x, P, True),
        "F.alpha_dropout",
        lambda x: F.alpha_dropout(x, P, True),
    ),
    HostCase("dropout1d", (2, 4, 8), 1, lambda x: FD.dropout1d(x, P), "F.dropout1d", lambda x: F.dropout1d(x, P)),
    HostCase("dropout2d", (1, 4, 4, 4), 1, lambda x: FD.dropout2d(x, P), "F.dropout2d", lambda x: F.dropout2d(x, P)),
    HostCase("dropout3d", (1, 2, 2, 4, 4), 1, lambda x: FD.dropout3d(x, P), "F.dropout3d", lambda x: F.dropout3d(x, P)),
    HostCase(
        "feature_alpha_dropout",
        (1, 4, 4, 4),
        1,
        lambda x: FD.feature_alpha_dropout(x, P, True),
        "F.feature_alpha_dropout",
        lambda x: F.feature_alpha_dropout(x, P, True),
    ),
    HostCase(
        "drop_path",
        (4, 4, 4),
        1,
        lambda x: FD.drop_path(x, P, True),
        "timm drop_path",
        lambda x: peers.timm_drop_path(x, P),
    ),
    HostCase(
        "stochastic_depth",
        (4, 4, 4),
        1,
        lambda x: FD.stochastic_depth(x, P, "row"),
        "torchvision stochastic_depth",
        lambda x: peers.torchvision_stochastic_depth(x, P, "row"),
    ),
    HostCase(
        "drop_path_add",
        (4, 4, 4),
        2,
        lambda r, x: FD.drop_path_add(r, x, P),
        "r + timm drop_path(x)",
        lambda r, x: peers.timm_drop_path_add(r, x, P),
    ),
    HostCase(
        "dropout_add",
        (4, 16),
        2,
        lambda r, x: FD.dropout_add(r, x, P),
        "r + F.dropout(x)",
        lambda r, x: peers.eager_dropout_add(r, x, P),
    ),
    _bias_case(
        "bias_dropout_add",
        lambda x, b, r: FD.bias_dropout_add(x, b, r, P),
        "r + F.dropout(x + b)",
        lambda x, b, r: peers.megatron_bias_dropout_add(x, b, r, P),
    ),
]

MODULES = [
    ("nn.Dropout", (64,), lambda: fastdrop.nn.Dropout(P), lambda: torch.nn.Dropout(P)),
    ("nn.Dropout2d", (1, 4, 4, 4), lambda: fastdrop.nn.Dropout2d(P), lambda: torch.nn.Dropout2d(P)),
    ("nn.AlphaDropout", (64,), lambda: fastdrop.nn.AlphaDropout(P), lambda: torch.nn.AlphaDropout(P)),
]


def _inputs(case, device, requires_grad):
    tensors = [torch.randn(case.shape, device=device, requires_grad=requires_grad) for _ in range(case.tensors)]
    if case.name == "bias_dropout_add":  # (x, bias, residual)
        tensors[1] = torch.randn(case.shape[-1], device=device, requires_grad=requires_grad)
    return tensors


def _forward(call, tensors, inplace):
    if inplace:
        return lambda: call(tensors[0] * 1.0)
    return lambda: call(*tensors)


def _forward_backward(call, tensors, inplace, grad):
    if inplace:

        def step():
            call(tensors[0] * 1.0).backward(grad)
    else:

        def step():
            call(*tensors).backward(grad)

    return step


def measure(device="cpu", budget=0.3):
    """[(label, direction, peer name, fastdrop seconds, peer seconds)] for every case, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = []
        for case in CASES:
            grad = torch.ones(case.shape, device=device)
            for direction in ("fwd", "fwd+bwd"):
                tensors = _inputs(case, device, requires_grad=direction == "fwd+bwd")
                if direction == "fwd":
                    candidates = {
                        "fastdrop": _forward(case.fastdrop, tensors, case.inplace),
                        "peer": _forward(case.peer, tensors, case.inplace),
                    }
                else:
                    candidates = {
                        "fastdrop": _forward_backward(case.fastdrop, tensors, case.inplace, grad),
                        "peer": _forward_backward(case.peer, tensors, case.inplace, grad),
                    }
                seconds = compare(candidates, "cpu", budget)  # wall time of the call, whatever the device
                results.append((case.name, direction, case.peer_name, seconds["fastdrop"], seconds["peer"]))
        for label, shape, make_ours, make_theirs in MODULES:
            ours, theirs = make_ours().to(device), make_theirs().to(device)
            x = torch.randn(shape, device=device)
            x_grad = x.clone().requires_grad_()
            grad = torch.ones(shape, device=device)
            for direction in ("fwd", "fwd+bwd"):
                if direction == "fwd":
                    candidates = {"fastdrop": lambda: ours(x), "peer": lambda: theirs(x)}
                else:
                    candidates = {
                        "fastdrop": lambda: ours(x_grad).backward(grad),
                        "peer": lambda: theirs(x_grad).backward(grad),
                    }
                seconds = compare(candidates, "cpu", budget)
                results.append((label, direction, f"torch.{label}", seconds["fastdrop"], seconds["peer"]))
        return results
    finally:
        torch.set_num_threads(threads)


def table(results):
    """The markdown section: one row per op and direction, and a verdict."""
    lines = [
        "### Host overhead per call (64 elements, 1 thread)",
        "",
        "| op | pass | vs | fastdrop us | peer us | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for label, direction, peer_name, ours, theirs in results:
        lines.append(
            f"| {label} | {direction} | {peer_name} | {ours * 1e6:.1f} | {theirs * 1e6:.1f} | {ours / theirs:.2f} |"
        )
    worst = max(ours / theirs for _, _, _, ours, theirs in results)
    verdict = "met" if worst <= TARGET else "MISSED"
    lines += [
        "",
        f"Target: every ratio at most {TARGET:g} (fastdrop time / peer time). Worst: {worst:.2f} ({verdict}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(measure()))
