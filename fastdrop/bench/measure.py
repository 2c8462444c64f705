"""Measuring one case: an op at one dtype, size and direction, against its peers
and torch.compile of them, side by side; its saved memory; the copy roofline."""

import math

import torch

import fastdrop

from .timing import Rotation, Timer, compare


def cache_bytes(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    return 32 << 20  # a server CPU's last-level cache; rotating past it costs nothing elsewhere


def copy_roofline(device, budget_seconds):
    """Bytes per second of a large device copy into an existing buffer (read + write)."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 26)
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    seconds = compare({"copy": lambda: target.copy_(source)}, device, budget_seconds)["copy"]
    return 2 * source.numel() * source.element_size() / seconds


def warm_up_huge_pages(device, calls=8):
    """fastdrop's large CPU outputs take transparent huge pages (csrc/cpu/huge_pages.h). On a virtual
    machine that hands free 2 MiB blocks back to its host (virtio free page reporting, as on the CI
    machine) the host must back each block again the first time the process takes it: measured there,
    the first 12 calls at 64 MiB took 63-97 ms, then 10-12 ms, against 25 ms in small pages. That is
    once per process, as torch.compile's compile is, and is paid here before anything is timed; after
    an idle spell of a few seconds the next calls pay part of it again, which each burst's untimed
    warm-up (timing.settle) takes."""
    if device.type != "cpu" or not fastdrop._C.cpu_huge_pages():
        return
    scratch = torch.zeros(1 << 26, device=device)  # 256 MiB
    for _ in range(calls):
        fastdrop.functional.dropout(scratch, 0.1)


def saved_bytes(fn, inputs):
    """Bytes autograd saves for backward during one call of fn, inputs themselves excluded."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*inputs)
    unique = {}
    for tensor in saved:
        if any(tensor is i for i in inputs) or tensor.numel() == 0:
            continue
        unique[(tensor.data_ptr(), tensor.numel(), tensor.dtype)] = tensor.numel() * tensor.element_size()
    return sum(unique.values())


def compiled(fn):
    # torch's defaults: static shapes first, one dynamic-shape recompile once sizes vary.
    return torch.compile(fn)


class Case:
    def __init__(self, op, device, dtype, numel, direction, compile_peers):
        self.op, self.device, self.dtype, self.direction = op, device, dtype, direction
        self.shape = op.shape(numel)
        self.numel = math.prod(self.shape)
        self.backward = direction == "fwd+bwd"
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.bytes = op.bytes_moved(self.numel, itemsize, direction)
        self.inputs = Rotation(self._make_inputs, self.bytes, cache_bytes(device))
        self.grad = self._make_grad(op.output_dtype or dtype) if self.backward else None
        self.functions = {"fastdrop": op.fastdrop, **op.peers}
        if compile_peers:
            self.functions.update(
                {f"{name}+compile": compiled(fn) for name, fn in op.peers.items() if name != "x.clone()"}
            )

    def _make_grad(self, dtype):
        """The incoming gradient in the output's layout (every op's output takes its full-size
        input's), as the layer after an op hands it back: a contiguous gradient for a channels_last
        output would add a transposing copy into the input's .grad (autograd's layout contract)
        to every peer's backward alike."""
        like = next(t for t in self.inputs.items[0] if t.shape == self.shape)
        return torch.empty_like(like, dtype=dtype, requires_grad=False).normal_()  # keeps a dense input's strides

    def _make_inputs(self):
        tensors = self.op.inputs(self.shape, self.dtype, self.device)
        if self.backward:
            for index in self.op.differentiable:
                tensors[index].requires_grad_()
        return tensors

    def _step(self, fn):
        if not self.backward:

            def forward():
                with torch.no_grad():
                    fn(*self.inputs.next())

            return forward

        def forward_backward():
            inputs = self.inputs.next()
            fn(*inputs).backward(self.grad)
            for tensor in inputs:
                tensor.grad = None

        return forward_backward

    def run(self, budget_seconds):
        failures = {}
        steps = {}
        for name, fn in self.functions.items():
            step = self._step(fn)
            try:
                step()  # compiles, for the compiled peers; compile time is never timed
            except Exception as error:  # noqa: BLE001  (reported, not hidden)
                failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                continue
            steps[name] = step
        seconds = compare(steps, self.device, budget_seconds)
        saved = {}
        if self.backward:
            for name in steps:
                try:
                    saved[name] = saved_bytes(self.functions[name], self.inputs.next())
                except Exception:  # noqa: BLE001  (compiled graphs may hide their saved tensors)
                    saved[name] = None
        return {
            "op": self.op.name,
            "family": self.op.family,
            "device": self.device.type,
            "dtype": str(self.dtype).replace("torch.", ""),
            "shape": list(self.shape),
            "numel": self.numel,
            "direction": self.direction,
            "bytes": self.bytes,
            "seconds": seconds,
            "saved_bytes": saved,
            "failures": failures,
        }


__all__ = ["Case", "Timer", "copy_roofline"]
