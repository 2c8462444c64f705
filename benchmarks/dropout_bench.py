"""Element-wise dropout: fastdrop against torch.nn.functional.dropout and the
copy roofline (x.clone() of the same tensor), forward and forward+backward."""

import torch
import torch.nn.functional as torch_F

import fastdrop

from .timing import Rotation, compare

P = 0.1


def cache_bytes(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    return 32 << 20  # the last-level cache of the machines we measure on; generous elsewhere


def forward_candidates(inputs):
    return {
        "fastdrop": lambda: fastdrop.functional.dropout(inputs.next(), P),
        "torch": lambda: torch_F.dropout(inputs.next(), P),
        "clone": lambda: inputs.next().clone(),
    }


def forward_backward_candidates(inputs, grad):
    def run(dropout):
        def step():
            x = inputs.next()
            dropout(x, P).backward(grad)
            x.grad = None

        return step

    def clone_twice():
        # The copy roofline of forward + backward: one copy each way.
        inputs.next().detach().clone()
        grad.clone()

    return {"fastdrop": run(fastdrop.functional.dropout), "torch": run(torch_F.dropout), "clone": clone_twice}


def run_case(device, dtype, numel, direction, budget_seconds):
    make = lambda: torch.randn(numel, device=device, dtype=dtype).requires_grad_(direction == "fwd+bwd")  # noqa: E731
    inputs = Rotation(make, numel * dtype.itemsize, cache_bytes(device))
    if direction == "fwd":
        with torch.no_grad():
            times = compare(forward_candidates(inputs), device, budget_seconds)
    else:
        grad = torch.randn(numel, device=device, dtype=dtype)
        times = compare(forward_backward_candidates(inputs, grad), device, budget_seconds)
    return {
        "op": "dropout",
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "numel": numel,
        "direction": direction,
        "seconds": times,
        "speedup_vs_torch": times["torch"] / times["fastdrop"],
        "time_vs_clone": times["fastdrop"] / times["clone"],
    }
