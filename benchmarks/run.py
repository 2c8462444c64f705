"""The benchmark's command line: cases, table, JSON, markdown."""

import argparse
import json
import platform
import sys
import time

import torch

import fastdrop

from . import dropout_bench

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# (direction, numel, minimum speedup vs torch, maximum time vs clone) the
# foundation issue asks of the CPU; printed next to the measurement.
CPU_TARGETS = {
    ("fwd", 1 << 20): (10.0, None),
    ("fwd+bwd", 1 << 20): (10.0, None),
    ("fwd", 1 << 24): (5.0, 1.5),
    ("fwd+bwd", 1 << 24): (5.0, None),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastdrop.bench", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="repeatable; default float32 and bfloat16")
    parser.add_argument("--min-exp", type=int, default=16, help="smallest size is 2**min_exp elements")
    parser.add_argument("--max-exp", type=int, help="largest size is 2**max_exp (default 24 on CPU, 28 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing, about a minute")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here as markdown")
    return parser.parse_args(argv)


def describe_machine(device):
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"{name}, {torch.get_num_threads()} threads, random bits by {fastdrop._C.cpu_generator_isa()}"
    return f"{name}; torch {torch.__version__}"


def target_verdict(result):
    if result["device"] != "cpu":
        return ""
    target = CPU_TARGETS.get((result["direction"], result["numel"]))
    if target is None:
        return ""
    speedup, clone_ratio = target
    verdicts = [f">={speedup:g}x torch: {'met' if result['speedup_vs_torch'] >= speedup else 'MISSED'}"]
    if clone_ratio is not None:
        verdicts.append(f"<={clone_ratio:g}x clone: {'met' if result['time_vs_clone'] <= clone_ratio else 'MISSED'}")
    return "; ".join(verdicts)


def format_table(results):
    header = ["dtype", "numel", "pass", "fastdrop ms", "torch ms", "clone ms", "vs torch", "vs clone", "target"]
    rows = []
    for r in results:
        s = r["seconds"]
        rows.append(
            [
                r["dtype"],
                f"2^{r['numel'].bit_length() - 1}",
                r["direction"],
                f"{s['fastdrop'] * 1e3:.3f}",
                f"{s['torch'] * 1e3:.3f}",
                f"{s['clone'] * 1e3:.3f}",
                f"{r['speedup_vs_torch']:.1f}x faster",
                f"{r['time_vs_clone']:.2f}x",
                target_verdict(r),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def progress(done, total, label, final=False):
    """A progress bar on a terminal; one line per step in a log."""
    width = 30
    filled = width * done // total
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
    if sys.stdout.isatty():
        print(f"\r{bar:<80}", end="\n\n" if final else "", flush=True)
    elif final:
        print(bar + "\n", flush=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    dtypes = [DTYPES[name] for name in (args.dtype or ["float32", "bfloat16"])]
    max_exp = args.max_exp or (24 if device == "cpu" else 28)
    exps = [args.min_exp, 20, max_exp] if args.quick else list(range(args.min_exp, max_exp + 1, 2))
    exps = sorted({e for e in exps if args.min_exp <= e <= max_exp})
    budget = 0.15 if args.quick else 2.0
    cases = [(dtype, 1 << e, direction) for dtype in dtypes for e in exps for direction in ("fwd", "fwd+bwd")]
    machine = describe_machine(device)
    print(f"fastdrop.bench on {device}: {machine}")
    print(f"element-wise dropout, p={dropout_bench.P}; times are medians of interleaved repetitions\n")
    results = []
    started = time.time()
    for index, (dtype, numel, direction) in enumerate(cases, 1):
        progress(index, len(cases), f"{str(dtype)[6:]} 2^{numel.bit_length() - 1} {direction}")
        results.append(dropout_bench.run_case(device, dtype, numel, direction, budget))
    progress(len(cases), len(cases), f"done in {time.time() - started:.0f} s", final=True)
    table = format_table(results)
    print(table)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "device": device, "results": results}, out, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"# fastdrop.bench on {device}\n\n{machine}\n\n{table}\n")
    return results


if __name__ == "__main__":
    main()
