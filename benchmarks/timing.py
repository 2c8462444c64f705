"""Side-by-side timing: candidates are timed in turn within each repetition, so
drift in a shared machine's speed hits all of them alike; medians are reported."""

import statistics
import time

import torch


class Timer:
    """Wall time of one call on the CPU; CUDA events around it on a GPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin


def repetitions_for(seconds_per_call, budget_seconds, minimum=5, maximum=200):
    if seconds_per_call <= 0:
        return maximum
    return int(max(minimum, min(maximum, budget_seconds / seconds_per_call)))


def compare(candidates, device, budget_seconds=0.5, warmup=2):
    """candidates: {name: zero-argument callable}. Returns {name: median seconds}."""
    timer = Timer(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    probe = max(timer(fn) for fn in candidates.values())
    reps = repetitions_for(probe * len(candidates), budget_seconds)
    samples = {name: [] for name in candidates}
    for _ in range(reps):
        for name, fn in candidates.items():
            samples[name].append(timer(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


class Rotation:
    """Cycles through enough copies of an input that repeated calls do not all
    hit in cache (only for inputs small enough that this matters)."""

    def __init__(self, make, nbytes, cache_bytes):
        copies = 1 if nbytes >= 4 * cache_bytes else min(64, max(2, (4 * cache_bytes) // max(nbytes, 1)))
        self.items = [make() for _ in range(copies)]
        self.index = 0

    def next(self):
        item = self.items[self.index]
        self.index = (self.index + 1) % len(self.items)
        return item
