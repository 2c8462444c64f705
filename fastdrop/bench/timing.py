"""Side-by-side timing. Candidates take turns in a few rounds, so drift in a
shared machine's speed hits all of them alike; within a round each runs a
short burst whose first calls are not timed (settle), so it is timed in the steady state
its own allocation pattern reaches (on the CPU, interleaving single calls lets
one op's frees and the next op's allocations turn into page faults that
belong to neither). Medians are reported."""

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


def settle(timer, fn, most=8):
    """Calls fn (untimed) until a call is no more than 20% faster than the one before: the steady
    state a burst is timed in. One call is not always enough: after an idle spell of a few seconds,
    a large output's first huge pages must be backed again by a virtual machine's host (see
    measure.warm_up_huge_pages), and the next two or three calls still pay part of it."""
    previous = timer(fn)
    for _ in range(most - 1):
        current = timer(fn)
        if current >= 0.8 * previous:
            return
        previous = current


def compare(candidates, device, budget_seconds=0.5):
    """candidates: {name: zero-argument callable}. Returns {name: median seconds}.

    Cheap cases get three rounds of bursts sized to the budget; a case whose
    candidates take longer than the budget gets one round of two timed calls
    each (at 2^26 elements on a small CPU one torch call takes most of a second).
    """
    timer = Timer(device)
    for fn in candidates.values():
        fn()
    probe = max((timer(fn) for fn in candidates.values()), default=0.0)
    rounds = 3 if probe * len(candidates) * 6 <= budget_seconds else 1
    per_round = repetitions_for(probe * len(candidates) * rounds, budget_seconds, minimum=2, maximum=60)
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            settle(timer, fn)  # back into this candidate's steady state
            samples[name].extend(timer(fn) for _ in range(per_round))
    return {name: statistics.median(values) for name, values in samples.items()}


class Rotation:
    """Cycles through enough copies of an input that repeated calls do not all
    hit in cache (only for inputs small enough that this matters)."""

    def __init__(self, make, nbytes, cache_bytes):
        copies = 1 if nbytes >= 4 * cache_bytes else min(64, max(2, int(4 * cache_bytes // max(nbytes, 1))))
        self.items = [make() for _ in range(copies)]
        self.index = 0

    def next(self):
        item = self.items[self.index]
        self.index = (self.index + 1) % len(self.items)
        return item
