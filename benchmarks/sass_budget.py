"""The static GPU cost of every CUDA kernel, from the SASS and PTX nvcc built.

For each kernel of a CUDA build of fastdrop, the steady-state loop (the grid-stride
loop: the outermost backward branch) is found in the sm_90 SASS, and its
instructions are counted per element (a loop iteration moves one pack of 8, or
two for the channels kernel).
Rare paths (Philox ties, a pack that crosses a row, the tail after the last full
pack) live outside that loop or in noinline functions, so the count is the
instructions every element pays. It is compared with the issue budget at the
memory roofline:

    budget = SMs x 4 schedulers x 32 lanes x clock / (bandwidth / bytes per element)

(H100 SXM 3.35 TB/s, H200 4.8 TB/s, 132 SMs, ~1.98 GHz): a kernel that issues
fewer instructions per element than the budget can run at the memory's speed.
Targets: contiguous and dense kernels at most the H200 budget / 1.5, strided
kernels at most the H200 budget.

The PTX is checked too: no fused multiply-add in the float arithmetic, every
float mul/add rounded (.rn) on its own, 16-byte loads and stores in every
vectorized kernel, no local memory.

    python benchmarks/sass_budget.py [--markdown OUT] [--json OUT] [--check]

Needs a CUDA build of torch (its headers) and nvcc; cuobjdump comes from
$CUOBJDUMP, PATH, the nvidia-cuda-cuobjdump package, or the copy triton ships.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SMS, CLOCK_HZ = 132, 1.98e9
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
# Elements a kernel's loop moves per iteration: a pack of 8, or (the channels
# kernel) one pack of channels at two pixels, or (DropBlock's) a mask word's 32.
ELEMENTS_PER_ITERATION = {"grouped_channels_kernel": 16, "drop_block_strided_kernel": 32}
DENSE_MARGIN = 1.5

SCALARS = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2}
SHORT = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16"}


def tool(name):
    """A CUDA binary tool: $NAME, on PATH, or from a pip package (nvidia-cuda-cuobjdump with
    nvidia-cuda-nvdisasm, or triton's copy); cuobjdump -sass runs the nvdisasm beside it."""
    found = os.environ.get(name.upper()) or shutil.which(name)
    if found:
        return found
    site = Path(sysconfig.get_paths()["purelib"])
    for pattern in (f"nvidia/*/bin/{name}", f"triton/backends/nvidia/bin/{name}"):
        for match in sorted(glob.glob(str(site / pattern))):
            if (Path(match).parent / "nvdisasm").exists():
                return match
    raise SystemExit(f"{name} not found: pip install nvidia-cuda-{name} nvidia-cuda-nvdisasm, or set {name.upper()}")


def demangle(names):
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@dataclass
class Kernel:
    mangled: str
    name: str
    kernel: str
    dtype: str
    kind: str  # "contiguous", "dense" or "strided"
    bytes_per_element: int
    loop_instructions: int
    nested_loops: int
    calls_in_loop: int

    @property
    def per_element(self):
        return self.loop_instructions / ELEMENTS_PER_ITERATION.get(self.kernel, 8)

    def budget(self, gpu):
        return SMS * 4 * 32 * CLOCK_HZ / (BANDWIDTH[gpu] / self.bytes_per_element)

    @property
    def target(self):
        return self.budget("H200") / (1.0 if self.kind == "strided" else DENSE_MARGIN)

    @property
    def within_target(self):
        return self.nested_loops == 0 and self.per_element <= self.target


def template_arguments(demangled):
    """The kernel's template arguments, split at top-level commas."""
    start = demangled.index("<", demangled.index("_kernel")) + 1
    depth, current, arguments = 0, "", []
    for char in demangled[start:]:
        if char == "<":
            depth += 1
        elif char == ">":
            if depth == 0:
                break
            depth -= 1
        if char == "," and depth == 0:
            arguments.append(current.strip())
            current = ""
        else:
            current += char
    return arguments + [current.strip()]


def describe(demangled):
    """(kernel, dtype, kind, bytes per element) of a fastdrop kernel, or None.

    Bytes per element count the tensors streamed: the output, the input, and
    the residual of the fused forms (a bias row and group indices stay in cache);
    dtype "bf16+fp32" is a bf16 branch beside an fp32 residual.
    """
    match = re.search(r"::(\w+_kernel)<", demangled)
    if not match or "fastdrop::cuda" not in demangled:
        return None
    kernel = match.group(1)
    arguments = template_arguments(demangled)
    scalar = arguments[0]
    if scalar not in SCALARS:
        return None
    operands = int(arguments[2]) if kernel in ("elementwise_strided_kernel", "grouped_strided_kernel") else 0
    if kernel.startswith(("add_dropout", "drop_path_add")):
        streams = 3
    elif kernel == "elementwise_strided_kernel":
        streams = min(operands, 3)
    elif kernel == "grouped_strided_kernel":
        streams = operands - 1
    else:
        streams = 2
    # The residual forms' output and residual are of the residual's type (their other
    # scalar template argument), which may be wider than the branch's; the subset
    # backward reads a gradient of that type and writes the branch's.
    residual = next((a for a in arguments[1:] if a in SCALARS), scalar)
    if kernel == "drop_path_add_subset_backward_kernel":
        bytes_per_element = SCALARS[scalar] + SCALARS[residual]
    else:
        bytes_per_element = SCALARS[scalar] + (streams - 1) * SCALARS[residual]
    dtype = SHORT[scalar] if residual == scalar else f"{SHORT[scalar]}+{SHORT[residual]}"
    kind = (
        "strided"
        if "strided" in kernel
        else "contiguous"
        if kernel.startswith(("elementwise", "add_dropout"))
        else "dense"
    )
    return kernel, dtype, kind, bytes_per_element


INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text):
    """{mangled function name: [(address, opcode, operands)]}"""
    functions, current = {}, None
    for line in text.splitlines():
        header = re.search(r"Function : (\S+)", line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        if current is None:
            continue
        match = INSTRUCTION.search(line)
        if match:
            current.append((int(match.group(1), 16), match.group(2), match.group(3)))
    return functions


def steady_state_loop(instructions):
    """(instructions in the outermost loop, loops nested in it, calls in it)."""
    back_edges = []
    for address, opcode, operands in instructions:
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) <= address:
                back_edges.append((int(target.group(1), 16), address))
    if not back_edges:
        return 0, 0, 0
    start, end = max(back_edges, key=lambda edge: edge[1] - edge[0])
    body = [(a, op) for a, op, _ in instructions if start <= a <= end and not op.startswith("NOP")]
    nested = sum(1 for s, e in back_edges if (s, e) != (start, end) and start <= s and e <= end)
    calls = sum(1 for _, op in body if op.startswith("CALL"))
    return len(body), nested, calls


def sass_kernels(binary, arch):
    text = subprocess.run([tool("cuobjdump"), "-sass", binary], capture_output=True, text=True, check=True).stdout
    functions = parse_sass(text)
    names = list(functions)
    kernels = []
    for mangled, demangled in zip(names, demangle(names)):
        described = describe(demangled)
        if described is None:
            continue
        kernel, dtype, kind, traffic = described
        count, nested, calls = steady_state_loop(functions[mangled])
        kernels.append(Kernel(mangled, demangled, kernel, dtype, kind, traffic, count, nested, calls))
    return kernels


def ptx_problems(ptx_text):
    """What the PTX of every kernel must not have."""
    problems = []
    for entry in re.split(r"\.entry\s+", ptx_text)[1:]:
        name = entry.split("(", 1)[0]
        if re.search(r"\bfma\.\w*\.?(f16|bf16|f32|f64)\b", entry):
            problems.append(f"{name}: fused multiply-add in float arithmetic")
        if re.search(r"\b(mul|add|sub)\.(f32|f64)\b", entry):
            problems.append(f"{name}: a float mul/add without .rn (the compiler may contract it)")
        if re.search(r"\.local\b|\bld\.local|\bst\.local", entry):
            problems.append(f"{name}: local memory")
        vectorized = re.search(r"(contiguous|rows|channels|dense)_kernel", name)
        if vectorized and not re.search(r"\bld\.global(\.nc)?\.v[24]", entry):
            problems.append(f"{name}: a contiguous or dense kernel without 16-byte loads")
        if vectorized and not re.search(r"\bst\.global\.v[24]", entry):
            problems.append(f"{name}: a contiguous or dense kernel without 16-byte stores")
    return problems


def compile_kernels(csrc, nvcc, arch, workdir):
    """Builds every csrc/cuda/*.cu for `arch`: the hot-path cubins (rare paths compiled
    out, for the instruction counts) and the real build's PTX (for the PTX rules)."""
    from torch.utils import cpp_extension

    flags = [
        "-std=c++20",
        "-O3",
        "--expt-relaxed-constexpr",
        "-DFASTDROP_WITH_CUDA",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *[f"-I{path}" for path in cpp_extension.include_paths(device_type="cuda")],
    ]
    virtual = arch.replace("sm_", "compute_")
    jobs, outputs = [], {"cubins": [], "ptx": []}
    for source in sorted(Path(csrc, "cuda").glob("*.cu")):
        cubin = Path(workdir, source.stem + ".hot.cubin")
        ptx = Path(workdir, source.stem + ".ptx")
        jobs.append(
            subprocess.Popen(
                [nvcc, *flags, "-DFASTDROP_SASS_HOT_PATH", f"-arch={arch}", "-cubin", str(source), "-o", str(cubin)],
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        jobs.append(
            subprocess.Popen(
                [nvcc, *flags, f"-arch={virtual}", "-ptx", str(source), "-o", str(ptx)],
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        outputs["cubins"].append(cubin)
        outputs["ptx"].append(ptx)
    for job in jobs:
        _, errors = job.communicate()
        if job.returncode != 0:
            raise SystemExit(f"nvcc failed:\n{errors[-4000:]}")
    return outputs


def markdown(kernels, arch):
    lines = [
        f"# Instructions per element of every CUDA kernel ({arch} SASS)",
        "",
        "From `python benchmarks/sass_budget.py` (nvcc 13.0). The steady-state loop of each kernel (its",
        "grid-stride loop; rare paths, marked `rare()` in the source, compiled out) per element, against",
        "the issue budget at the memory roofline, SMs x 4 x 32 x clock / (bandwidth / bytes per element),",
        "132 SMs at 1.98 GHz.",
        f"Target: contiguous and dense kernels at most the H200 budget / {DENSE_MARGIN:g}, strided kernels at most",
        "the H200 budget.",
        "",
        "| kernel | dtype | kind | bytes/elem | instr/elem | budget H100 | budget H200 | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(kernels, key=lambda k: (k.kernel, k.dtype, k.name)):
        variant = ", ".join(template_arguments(k.name)[1:])
        variant = re.sub(r"fastdrop::cuda::|\(anonymous namespace\)::|\(\(anonymous namespace\)::\w+\)", "", variant)
        variant = variant.replace("unsigned int", "u32").replace("unsigned long", "u64")
        verdict = "within" if k.within_target else ("nested loop" if k.nested_loops else "OVER")
        lines.append(
            f"| {k.kernel}<{variant}> | {k.dtype} | {k.kind} | {k.bytes_per_element} | {k.per_element:.1f} "
            f"| {k.budget('H100'):.1f} | {k.budget('H200'):.1f} | {k.target:.1f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csrc", default=str(Path(__file__).resolve().parent.parent / "csrc"))
    parser.add_argument("--nvcc", default=str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")))
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    parser.add_argument(
        "--check", action="store_true", help="exit non-zero if a kernel misses its target or the PTX a rule"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        built = compile_kernels(args.csrc, args.nvcc, args.arch, workdir)
        kernels = [k for cubin in built["cubins"] for k in sass_kernels(str(cubin), args.arch)]
        problems = [p for ptx in built["ptx"] for p in ptx_problems(Path(ptx).read_text())]
    if not kernels:
        raise SystemExit(f"no fastdrop kernels found for {args.arch}")
    table = markdown(kernels, args.arch)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        rows = [
            dict(
                asdict(k),
                per_element=k.per_element,
                budget_h100=k.budget("H100"),
                budget_h200=k.budget("H200"),
                target=k.target,
                within_target=k.within_target,
            )
            for k in kernels
        ]
        Path(args.json).write_text(json.dumps({"arch": args.arch, "kernels": rows, "ptx_problems": problems}, indent=1))
    over = [k for k in kernels if not k.within_target]
    worst = max(kernels, key=lambda k: k.per_element / k.target)
    print(
        f"{len(kernels)} kernels ({args.arch}): {len(kernels) - len(over)} within target; tightest "
        f"{worst.kernel} {worst.dtype} at {worst.per_element:.1f} of {worst.target:.1f} instructions per element"
    )
    for k in over:
        print(f"  OVER: {k.name}: {k.per_element:.1f} > {k.target:.1f}" + (" (nested loop)" if k.nested_loops else ""))
    print(
        f"PTX rules (no fma, .rn float arithmetic, 16-byte accesses, no local memory): {len(problems)} problems"
        + "".join(f"\n  {p}" for p in problems)
    )
    if args.check and (over or problems):
        sys.exit(1)


if __name__ == "__main__":
    main()
