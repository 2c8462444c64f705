"""The speed targets the issues set, checked against a run's measurements."""

from dataclasses import dataclass

FASTEST = "the fastest peer"  # every peer of the op, eager and torch.compile, the fastest in each measurement
# Not a peer: the target is a fraction of the run's copy roofline (the op's bytes over its time,
# against a large copy's bytes read + written per second), what bounds every peer ratio on a GPU.
ROOFLINE = "the copy roofline"
GROUPED = (
    "dropout2d",
    "dropout2d_channels_last",
    "feature_alpha_dropout",
    "feature_alpha_dropout_channels_last",
    "drop_path",
    "drop_path_add",
)
CPU_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Target:
    device: str
    op: str
    direction: str
    low: int  # smallest numel covered
    high: int | None  # largest numel covered, None for no limit
    peer: str  # a peer's name, or FASTEST
    minimum: float  # speedup needed; below 1, the peer is a floor fastdrop may be at most 1 / minimum times
    dtypes: tuple = ("float32", "bfloat16")


TARGETS = [
    *[
        Target("cpu", op, direction, size, size, "torch", minimum)
        for op in ("dropout", "alpha_dropout")
        for direction in ("fwd", "fwd+bwd")
        for size, minimum in ((1 << 20, 10.0), (1 << 24, 5.0))
    ],
    Target("cpu", "dropout", "fwd", 1 << 24, 1 << 24, "x.clone()", 1 / 1.5),  # within 1.5x of a clone
    # A grouped op moves what a broadcast multiply over a tiny noise tensor moves: never slower than
    # any peer, and 1.5x where torch's bernoulli, div and extra allocations show.
    *[
        Target("cpu", op, direction, low, high, FASTEST, minimum, CPU_DTYPES)
        for op in GROUPED
        for direction in ("fwd", "fwd+bwd")
        for low, high, minimum in ((1 << 10, 1 << 20, 1.5), (1 << 22, 1 << 26, 1.0))
    ],
    *[
        Target("cpu", op, direction, 1, None, peer, 5.0)
        for op, peer in (
            ("dropout_add", "torch"),
            ("bias_dropout_add", "Megatron"),
            ("dropout_add_fp32_residual", "torch"),
            ("bias_dropout_add_fp32_residual", "Megatron"),
        )
        for direction in ("fwd", "fwd+bwd")
    ],
    # Skipping the dropped samples' branch: one pass where DINOv2's index_add copies the residual first.
    Target("cpu", "drop_path_add_subset", "fwd", 1, None, FASTEST, 1.5),
    Target("cpu", "drop_path_add_subset", "fwd+bwd", 1, None, FASTEST, 1.0),
    # DropBlock: one pass over the data after a bit mask, where torchvision pads, pools and multiplies twice.
    *[
        Target("cpu", op, direction, 1, None, FASTEST, 2.0, CPU_DTYPES)
        for op in ("drop_block2d", "drop_block2d_channels_last")
        for direction in ("fwd", "fwd+bwd")
    ],
    Target("cuda", "dropout", "fwd+bwd", 1 << 26, None, "torch", 1.25),
    *[
        Target("cuda", op, direction, 1 << 26, None, "torch", 3.0)
        for op in ("alpha_dropout", "dropout2d", "feature_alpha_dropout")
        for direction in ("fwd", "fwd+bwd")
    ],
    Target("cuda", "drop_path_add", "fwd+bwd", 1 << 26, None, "timm", 2.0),
    Target("cuda", "drop_path_add", "fwd+bwd", 1 << 26, None, "timm+compile", 1.0),
    # One read and one write per element at memory speed: what the peer ratios above can reach.
    # fp32 only: at 2 bytes an element, Philox's work per element is the limit. The residual forms'
    # backward also pays autograd's copy of the gradient into the residual leaf, which the byte
    # count leaves out, so only their forward is held to it.
    *[
        Target("cuda", op, direction, 1 << 26, None, ROOFLINE, 0.8, ("float32",))
        for op in ("dropout", "alpha_dropout", "dropout2d", "feature_alpha_dropout", "drop_path", "locked_dropout")
        for direction in ("fwd", "fwd+bwd")
    ],
    *[
        Target("cuda", op, "fwd", 1 << 26, None, ROOFLINE, 0.8, ("float32",))
        for op in ("dropout_add", "bias_dropout_add", "drop_path_add")
    ],
    # DropBlock builds a bit mask first (seeds, then a separable dilation) and counts what it keeps.
    *[
        Target("cuda", op, direction, 1 << 26, None, ROOFLINE, 0.5, ("float32",))
        for op in ("drop_block2d", "drop_block2d_channels_last")
        for direction in ("fwd", "fwd+bwd")
    ],
]


def peer_seconds(record, peer):
    """The peer's time in a measurement (the fastest peer's for FASTEST), or None."""
    seconds = record["seconds"]
    if peer != FASTEST:
        return seconds.get(peer)
    others = [value for name, value in seconds.items() if name not in ("fastdrop", "x.clone()")]
    return min(others, default=None)


def size_text(target):
    low = f"2^{target.low.bit_length() - 1}"
    if target.high == target.low:
        return low
    if target.high is None:
        return low + " and up"
    return f"{low} to 2^{target.high.bit_length() - 1}"


def bound_text(target, record, roofline):
    """What bounds a peer target: where fastdrop's bytes over its time stand against the run's copy
    bandwidth, and where they would have to stand for the target's ratio. An op that must move as
    many bytes as its peer cannot be much faster than it once the peer runs near the copy's speed:
    past 100% (a copy out of cache) the target asks fastdrop to beat a plain copy of its bytes."""
    if target.peer == ROOFLINE or not roofline:
        return ""
    rate = record["bytes"] / roofline  # seconds for the op's bytes at the copy's speed
    reached = rate / record["seconds"]["fastdrop"]
    needed = target.minimum * rate / peer_seconds(record, target.peer)
    return f"fastdrop at {reached:.0%}, the target needs {needed:.0%}"


def verdicts(records, device, roofline=None):
    """A markdown section listing each target with the measurements it covers. roofline: the
    run's copy bandwidth in bytes per second (targets against it are left out without one)."""
    lines = []
    for target in TARGETS:
        if target.device != device or (target.peer == ROOFLINE and not roofline):
            continue
        covered = [
            r
            for r in records
            if r["op"] == target.op
            and r["direction"] == target.direction
            and r["numel"] >= target.low
            and (target.high is None or r["numel"] <= target.high)
            and "fastdrop" in r["seconds"]
            and (target.peer == ROOFLINE or peer_seconds(r, target.peer) is not None)
            and r["dtype"] in target.dtypes
        ]
        if not covered:
            continue
        if target.peer == ROOFLINE:
            speedups = [r["bytes"] / r["seconds"]["fastdrop"] / roofline for r in covered]
        else:
            speedups = [peer_seconds(r, target.peer) / r["seconds"]["fastdrop"] for r in covered]
        worst = min(speedups)
        where = covered[speedups.index(worst)]
        if target.peer == ROOFLINE:
            needs, measured = f">= {target.minimum:.0%} of it", f"worst {worst:.0%}"
        elif target.minimum >= 1:
            needs, measured = f">= {target.minimum:g}x faster", f"worst {worst:.2f}x"
        else:  # a floor fastdrop may not be much slower than, such as a plain copy
            needs, measured = f"<= {1 / target.minimum:g}x its time", f"worst {1 / worst:.2f}x"
        measured += f" ({where['dtype']} 2^{where['numel'].bit_length() - 1})"
        lines.append(
            f"| {target.op} {target.direction} vs {target.peer} at {size_text(target)} | {needs} | {measured} over "
            f"{len(covered)} measurements | {bound_text(target, where, roofline)} | "
            f"{'met' if worst >= target.minimum else 'MISSED'} |"
        )
    if not lines:
        return ""
    header = "| target | needs | measured | at the copy roofline (worst measurement) | verdict |"
    return "### Targets\n\n" + header + "\n|---|---|---|---|---|\n" + "\n".join(lines)
