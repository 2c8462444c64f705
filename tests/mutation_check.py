"""Proves the emulated CUDA suite can fail: each mutant below is a deliberately
broken CUDA kernel, built on the emulated device, and the suite
(tests/test_cuda_emulated.py) must catch every one, by a mismatch with the CPU
kernels or a sanitizer report. Exits non-zero if any mutant survives, if a
mutant's text is no longer in the source (the mutant would test nothing), or
if a mutant fails to build (it would prove nothing either).

    python tests/mutation_check.py [--keep BUILD_DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPOSITORY = TESTS.parent
sys.path.insert(0, str(TESTS))

import emulated_cuda  # noqa: E402

# (what breaks, file under csrc/, the correct text, how often it occurs, the
# broken text that replaces its first occurrence)
MUTANTS = [
    (
        "vector path taken on a partial last pack",
        "cuda/dropout_cuda.cu",
        "const int64_t full_packs = numel / kElementsPerBlock;",
        2,
        "const int64_t full_packs = (numel + kElementsPerBlock - 1) / kElementsPerBlock;",
    ),
    (
        "scalar tail off by one",
        "cuda/pack.cuh",
        "if (first + lane < numel) element(first + lane, lane);",
        1,
        "if (first + lane <= numel) element(first + lane, lane);",
    ),
    (
        "Philox lanes swapped",
        "philox.h",
        "word = lane >= 2 ? block.word[1] : word;\n  word = lane >= 4 ? block.word[2] : word;",
        1,
        "word = lane >= 2 ? block.word[2] : word;\n  word = lane >= 4 ? block.word[1] : word;",
    ),
    (
        "fused fast path ignores a strided residual",
        "cuda/dropout_cuda.cu",
        "vectorizable(std::array<at::Tensor, 3>{t[0], t[1], t[2]})",
        1,
        "vectorizable(std::array<at::Tensor, 3>{t[0], t[1], t[1]})",
    ),
    (
        "contiguous fast path skips its alignment check",
        "cuda/dropout_cuda.cu",
        "if (!tensor.is_contiguous() || !is_16_byte_aligned(tensor.const_data_ptr())) return false;",
        1,
        "if (!tensor.is_contiguous()) return false;",
    ),
    (
        "dense grouped path skips its alignment check",
        "cuda/grouped_dropout_cuda.cu",
        "if (!is_16_byte_aligned(tensor->const_data_ptr())) return false;",
        1,
        "",
    ),
    (
        "channels kernel writes a second pixel that is not there",
        "cuda/grouped_dropout_cuda.cu",
        "if (pixel + 1 < layout.pixels) {",
        1,
        "if (pixel < layout.pixels) {",
    ),
    (
        "a wider residual read as the branch's type",
        "dropout_math.h",
        "add_rounded(static_cast<opmath_t>(residual),",
        1,
        "add_rounded(static_cast<opmath_t>(static_cast<scalar_t>(residual)),",
    ),
    (
        "drop_path_add_subset reads the sample's row of branch_kept, not its kept row",
        "cuda/grouped_dropout_cuda.cu",
        "const scalar_t* x = branch + kept_row * row + column;",
        1,
        "const scalar_t* x = branch + sample * row + column;",
    ),
    (
        "DropBlock's per-sample mask read per channel",
        "cuda/drop_block_cuda.cu",
        "const int64_t mask_plane = g.shared ? static_cast<int64_t>(n) : static_cast<int64_t>(plane);",
        1,
        "const int64_t mask_plane = static_cast<int64_t>(plane);",
    ),
    (
        "forward reads the wrong Philox offset",
        "cuda/device_rng.cuh",
        "const RngState rng = {std::get<0>(seed_offset), std::get<1>(seed_offset)};",
        1,
        "const RngState rng = {std::get<0>(seed_offset), std::get<1>(seed_offset) + 4};",
    ),
]


def environment(csrc, build_dir):
    return dict(
        os.environ,
        FASTDROP_EMULATED_CSRC=str(csrc),
        FASTDROP_EMULATED_BUILD_DIR=str(build_dir),
        FASTDROP_EMULATION_REEXEC="1",
        LD_PRELOAD=emulated_cuda.asan_preload(),
        ASAN_OPTIONS=emulated_cuda.ASAN_OPTIONS,
    )


def build(env):
    code = "import sys; sys.path.insert(0, 'tests'); import emulated_cuda; emulated_cuda.ops()"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, env=env, capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def run_suite(env):
    # --capture=sys: a sanitizer's report goes to file descriptor 2, which must not be captured away.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda_emulated",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--capture=sys",
        "tests/test_cuda_emulated.py",
    ]
    result = subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def evidence(output):
    """The line that shows how the suite caught the mutant."""
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "elements differ", "AssertionError", "FAILED"):
        for line in output.splitlines():
            if marker in line:
                return line.strip()[:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else "(no output)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build folder to reuse between runs (incremental builds)")
    args = parser.parse_args()
    workspace = Path(tempfile.mkdtemp(prefix="fastdrop-mutants-"))
    csrc = workspace / "csrc"
    shutil.copytree(REPOSITORY / "csrc", csrc)
    build_dir = Path(args.keep) if args.keep else workspace / "build"
    env = environment(csrc, build_dir)
    failures = []
    try:
        built, log = build(env)
        if not built:
            print(log[-3000:])
            raise SystemExit("the unmutated sources do not build on the emulated device")
        status, output = run_suite(env)
        if status != 0:
            print(output[-3000:])
            raise SystemExit("the emulated suite fails on the unmutated sources")
        for name, relative, correct, occurrences, broken in MUTANTS:
            path = csrc / relative
            original = path.read_text()
            if original.count(correct) != occurrences:
                failures.append(
                    f"{name}: its text occurs {original.count(correct)} times in csrc/{relative}, not {occurrences}"
                )
                print(f"STALE     {name}")
                continue
            path.write_text(original.replace(correct, broken, 1))
            start = time.monotonic()
            try:
                built, log = build(env)
                if not built:
                    failures.append(f"{name}: the mutant does not build")
                    print(f"NO BUILD  {name}\n{log[-2000:]}")
                    continue
                status, output = run_suite(env)
            finally:
                path.write_text(original)
            seconds = time.monotonic() - start
            if status == 0:
                failures.append(f"{name}: survived")
                print(f"SURVIVED  {name} ({seconds:.0f} s)")
            else:
                print(f"caught    {name} ({seconds:.0f} s): {evidence(output)}")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    if failures:
        raise SystemExit("mutation check failed:\n  " + "\n  ".join(failures))
    print(f"mutation check: all {len(MUTANTS)} mutants caught")


if __name__ == "__main__":
    main()
