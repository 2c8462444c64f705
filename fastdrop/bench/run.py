"""python -m fastdrop.bench: every fastdrop op against what a user would otherwise
run (the torch op it replaces, timm / torchvision / Megatron-style compositions
in torch ops, and torch.compile of those), forward and forward+backward, with
effective bandwidth against the copy roofline and the bytes saved for backward."""

import argparse
import json
import platform
import sys
import time

import torch

import fastdrop

from . import host_overhead
from .cases import FAMILIES, OPS, OPS_BY_NAME
from .measure import Case, copy_roofline, warm_up_huge_pages
from .targets import verdicts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m fastdrop.bench", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", action="append", choices=sorted(DTYPES), help="repeatable (default: float32 and bfloat16)"
    )
    parser.add_argument("--op", action="append", choices=sorted(OPS_BY_NAME), help="repeatable (default: every op)")
    parser.add_argument("--min-exp", type=int, default=16, help="smallest size: 2**MIN_EXP elements")
    parser.add_argument("--max-exp", type=int, help="largest size: 2**MAX_EXP elements (default 26 on CPU, 30 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="a few sizes, float32, short timings: about a minute")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peers")
    parser.add_argument("--host-only", action="store_true", help="only the per-call host cost section")
    parser.add_argument("--no-host", action="store_true", help="leave out the per-call host cost section")

    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--plots", help="write one PNG per op family into this folder")
    return parser.parse_args(argv)


def describe_machine(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}"
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{name}, {torch.get_num_threads()} threads, random bits by {fastdrop._C.cpu_generator_isa()}, "
        f"huge pages {'on' if fastdrop._C.cpu_huge_pages() else 'off'}; torch {torch.__version__}"
    )


def compile_works(device):
    """Whether torch.compile runs here (it needs a working compiler toolchain)."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(8, device=device))
        return True, ""
    except Exception as error:  # noqa: BLE001  (reported in the output)
        return False, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def progress(done, total, label, final=False):
    """A progress bar on a terminal; nothing but the end in a log."""
    width = 30
    filled = width * done // max(total, 1)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
    if sys.stdout.isatty():
        print(f"\r{bar:<100}", end="\n\n" if final else "", flush=True)
    elif final:
        print(bar + "\n", flush=True)


def size_label(numel):
    exponent = numel.bit_length() - 1
    return f"2^{exponent}" if numel == 1 << exponent else f"{numel:,}"


def format_bytes(count):
    if count is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def op_table(records, roofline):
    """One markdown table per op: fastdrop's time, bandwidth and roofline fraction,
    its speedup over each peer, and the bytes each saves for backward."""
    peer_names = list(dict.fromkeys(name for r in records for name in r["seconds"] if name != "fastdrop"))
    header = ["dtype", "numel", "pass", "fastdrop ms", "GB/s", "of roofline"]
    header += [f"vs {name}" for name in peer_names] + ["saved: fastdrop / peers"]
    rows = []
    for r in records:
        s = r["seconds"]
        fastdrop_seconds = s.get("fastdrop")
        if fastdrop_seconds is None:
            continue
        bandwidth = r["bytes"] / fastdrop_seconds
        row = [
            r["dtype"],
            size_label(r["numel"]),
            r["direction"],
            f"{fastdrop_seconds * 1e3:.3f}",
            f"{bandwidth / 1e9:.1f}",
            f"{bandwidth / roofline:.0%}",
        ]
        for name in peer_names:
            row.append(f"{s[name] / fastdrop_seconds:.2f}x" if name in s else "n/a")
        saved = r["saved_bytes"]
        if saved:
            others = " / ".join(format_bytes(saved.get(name)) for name in peer_names if name in saved)
            row.append(f"{format_bytes(saved.get('fastdrop'))} / {others}")
        else:
            row.append("")
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if args.quick:
        dtypes = [DTYPES[name] for name in (args.dtype or ["float32"])]
        exps = sorted({args.min_exp, 20}) if device.type == "cpu" else [20, 24]
        budget = 0.1
    else:
        dtypes = [DTYPES[name] for name in (args.dtype or ["float32", "bfloat16"])]
        max_exp = args.max_exp or (26 if device.type == "cpu" else 30)
        exps = list(range(args.min_exp, max_exp + 1, 2))
        budget = 0.4
    ops = [OPS_BY_NAME[name] for name in args.op] if args.op else OPS
    compile_peers, compile_note = (False, "left out (--quick or --no-compile)")
    if not (args.quick or args.no_compile):
        compile_peers, reason = compile_works(device)
        compile_note = "included" if compile_peers else f"does not work on this machine ({reason})"
    torch._dynamo.config.cache_size_limit = 256

    machine = describe_machine(device)
    roofline = copy_roofline(device, 1.0)
    warm_up_huge_pages(device)
    print(f"fastdrop.bench on {device.type}: {machine}")
    print(f"copy roofline (a large copy, bytes read + written): {roofline / 1e9:.1f} GB/s; p = 0.1 everywhere")
    print(f"torch.compile peers: {compile_note}\n")

    cases = [
        (op, dtype, 1 << e, direction)
        for op in ops
        for dtype in dtypes
        if op.dtypes is None or dtype in op.dtypes
        for e in exps
        for direction in ("fwd", "fwd+bwd")
    ]
    if args.host_only:
        cases = []
    records = []
    started = time.time()
    for index, (op, dtype, numel, direction) in enumerate(cases, 1):
        progress(index - 1, len(cases), f"{op.name} {str(dtype)[6:]} {size_label(numel)} {direction}")
        records.append(Case(op, device, dtype, numel, direction, compile_peers).run(budget))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress(len(cases), len(cases), f"done in {time.time() - started:.0f} s", final=True)

    sections = []
    for op in ops:
        op_records = [r for r in records if r["op"] == op.name]
        failures = {name: why for r in op_records for name, why in r["failures"].items()}
        text = f"### {op.name} ({op.family})\n\n{op_table(op_records, roofline)}"
        if failures:
            text += "\n\nCould not run: " + "; ".join(f"{name}: {why}" for name, why in failures.items())
        sections.append(text)
    summary = verdicts(records, device.type, roofline)
    host = []
    if not args.no_host:
        print("per-call host cost (64 elements, one thread) ...", flush=True)
        host = host_overhead.measure(device, budget=0.1 if args.quick else 0.3)
        sections.append(host_overhead.table(host))
    if args.host_only:
        sections = sections[-1:]
    report = "\n\n".join(sections + ([summary] if summary else []))
    print(report)

    if args.json:
        with open(args.json, "w") as out:
            host_records = [
                {"op": label, "direction": direction, "peer": peer, "fastdrop_seconds": ours, "peer_seconds": theirs}
                for label, direction, peer, ours, theirs in host
            ]
            json.dump(
                {
                    "machine": machine,
                    "device": device.type,
                    "roofline_bytes_per_second": roofline,
                    "compile": compile_note,
                    "p": 0.1,
                    "records": records,
                    "host_overhead": host_records,
                },
                out,
                indent=1,
            )
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(
                f"# fastdrop.bench on {device.type}\n\n{machine}\n\n"
                f"Copy roofline: {roofline / 1e9:.1f} GB/s (read + write). torch.compile peers: {compile_note}. "
                "Speedups are peer time / fastdrop time; saved bytes are what autograd keeps for backward.\n\n"
                f"{report}\n"
            )
    if args.plots:
        from .plots import plot_families

        for path in plot_families(records, roofline, args.plots, device.type, FAMILIES):
            print(f"wrote {path}")
    return records


if __name__ == "__main__":
    main()
