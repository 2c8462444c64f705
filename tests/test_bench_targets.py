"""The benchmark's targets table: verdicts from a run's records (no timing here)."""

from fastdrop.bench.targets import verdicts


def record(op, direction, numel, dtype, seconds, nbytes):
    return {"op": op, "direction": direction, "numel": numel, "dtype": dtype, "seconds": seconds, "bytes": nbytes}


def rows(table):
    return {
        line.split(" | ")[0].lstrip("| "): line
        for line in table.splitlines()
        if line.startswith("| ") and "|---" not in line
    }


def test_a_roofline_target_is_the_op_bytes_over_its_time_against_the_copy():
    roofline = 1000.0  # bytes per second
    records = [
        # 1800 bytes in 2 s: 90% of the copy's 1000 B/s; 1400 bytes: 70%
        record("dropout", "fwd", 1 << 26, "float32", {"fastdrop": 2.0, "torch": 2.6}, 1800),
        record("dropout", "fwd", 1 << 28, "float32", {"fastdrop": 2.0, "torch": 2.6}, 1700),
        record("dropout2d", "fwd", 1 << 26, "float32", {"fastdrop": 2.0, "torch": 3.0}, 1400),
        record("dropout2d", "fwd", 1 << 26, "bfloat16", {"fastdrop": 1.0, "torch": 4.0}, 10),  # bf16 is not held to it
        record("dropout2d", "fwd", 1 << 20, "float32", {"fastdrop": 1.0, "torch": 4.0}, 10),  # below 2^26
    ]
    table = rows(verdicts(records, "cuda", roofline))
    dropout = table["dropout fwd vs the copy roofline at 2^26 and up"]
    assert "worst 85% (float32 2^28) over 2 measurements |  | met" in dropout
    dropout2d = table["dropout2d fwd vs the copy roofline at 2^26 and up"]
    assert "worst 70% (float32 2^26) over 1 measurements |  | MISSED" in dropout2d
    # the peer ratio over both dtypes at 2^26 and up: 1.5x in float32
    assert "worst 1.50x (float32 2^26)" in table["dropout2d fwd vs torch at 2^26 and up"]
    # without the run's copy bandwidth, no roofline row
    assert not any("roofline" in name for name in rows(verdicts(records, "cuda")))
    # a CPU run is held to the CPU's targets only
    assert not any("roofline" in name for name in rows(verdicts(records, "cpu", roofline)))


def test_a_peer_target_shows_the_roofline_fraction_it_would_need():
    roofline = 1000.0  # bytes per second
    records = [
        # 1000 bytes: 1 s at the copy's speed. fastdrop takes 1.25 s (80%), torch 1.5 s: 1.20x, where 1.5x
        # would need fastdrop at 1.5 * 1 / 1.5 = 100% of the copy's speed.
        record("dropout2d", "fwd", 1 << 20, "float32", {"fastdrop": 1.25, "torch": 1.5}, 1000),
        # a faster peer (compiled) is the one the fastest-peer target is read against: 1.10x
        record("dropout2d", "fwd", 1 << 18, "float32", {"fastdrop": 0.5, "torch": 2.0, "torch+compile": 0.55}, 1000),
    ]
    row = rows(verdicts(records, "cpu", roofline))["dropout2d fwd vs the fastest peer at 2^10 to 2^20"]
    assert "worst 1.10x (float32 2^18)" in row
    # at 2^18: fastdrop at 1 / 0.5 = 200%; 1.5x of the compiled peer's 0.55 s needs 1.5 / 0.55 = 273%
    assert "| fastdrop at 200%, the target needs 273% | MISSED |" in row
    at_2_20 = rows(verdicts(records[:1], "cpu", roofline))["dropout2d fwd vs the fastest peer at 2^10 to 2^20"]
    assert "worst 1.20x (float32 2^20) over 1 measurements | fastdrop at 80%, the target needs 100% |" in at_2_20
    # without the run's copy bandwidth the column stays empty
    bare = rows(verdicts(records, "cpu"))["dropout2d fwd vs the fastest peer at 2^10 to 2^20"]
    assert bare.endswith("over 2 measurements |  | MISSED |")
