"""The speed targets the issues set, checked against a run's measurements."""

# (device, op, direction, smallest numel, largest numel or None, peer, minimum speedup)
TARGETS = [
    ("cpu", "dropout", "fwd", 1 << 20, 1 << 20, "torch", 10.0),
    ("cpu", "dropout", "fwd+bwd", 1 << 20, 1 << 20, "torch", 10.0),
    ("cpu", "dropout", "fwd", 1 << 24, 1 << 24, "torch", 5.0),
    ("cpu", "dropout", "fwd+bwd", 1 << 24, 1 << 24, "torch", 5.0),
    ("cpu", "dropout", "fwd", 1 << 24, 1 << 24, "x.clone()", 1 / 1.5),  # within 1.5x of a clone
    *[
        ("cpu", op, direction, size, size, "torch", 5.0)
        for op in ("alpha_dropout", "dropout2d", "feature_alpha_dropout")
        for direction in ("fwd", "fwd+bwd")
        for size in (1 << 20, 1 << 24)
    ],
    ("cpu", "drop_path_add", "fwd+bwd", 1 << 22, None, "timm", 2.0),
    *[("cpu", op, direction, 1, None, peer, 5.0)
      for op, peer in (("dropout_add", "torch"), ("bias_dropout_add", "Megatron"))
      for direction in ("fwd", "fwd+bwd")],
    ("cuda", "dropout", "fwd+bwd", 1 << 26, None, "torch", 1.25),
    *[("cuda", op, direction, 1 << 26, None, "torch", 3.0)
      for op in ("alpha_dropout", "dropout2d", "feature_alpha_dropout") for direction in ("fwd", "fwd+bwd")],
    ("cuda", "drop_path_add", "fwd+bwd", 1 << 26, None, "timm", 2.0),
    ("cuda", "drop_path_add", "fwd+bwd", 1 << 26, None, "timm+compile", 1.0),
]


def verdicts(records, device):
    """A markdown section listing each target with the measurements it covers."""
    lines = []
    for target_device, op, direction, low, high, peer, minimum in TARGETS:
        if target_device != device:
            continue
        covered = [
            r for r in records
            if r["op"] == op and r["direction"] == direction and r["numel"] >= low
            and (high is None or r["numel"] <= high) and peer in r["seconds"] and "fastdrop" in r["seconds"]
            and (device != "cpu" or r["dtype"] in ("float32", "bfloat16"))
        ]
        if not covered:
            continue
        speedups = [r["seconds"][peer] / r["seconds"]["fastdrop"] for r in covered]
        worst = min(speedups)
        sizes = "2^%d" % (low.bit_length() - 1) + ("" if high == low else " and up" if high is None else "")
        if minimum >= 1:
            needs, measured = f">= {minimum:g}x faster", f"worst {worst:.2f}x"
        else:  # a floor fastdrop may not be much slower than, such as a plain copy
            needs, measured = f"<= {1 / minimum:g}x its time", f"worst {1 / worst:.2f}x"
        lines.append(
            f"| {op} {direction} vs {peer} at {sizes} | {needs} | {measured} over {len(covered)} measurements "
            f"| {'met' if worst >= minimum else 'MISSED'} |"
        )
    if not lines:
        return ""
    return "### Targets\n\n| target | needs | measured | verdict |\n|---|---|---|---|\n" + "\n".join(lines)
