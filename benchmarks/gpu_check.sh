#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU and a CUDA build of torch:
#   benchmarks/gpu_check.sh OUTDIR [SECONDS]
# builds fastdrop with CUDA (the visible GPU's arch), runs the whole test suite
# on CUDA (CPU == CUDA bit for bit, 2^31 + 17 elements, CUDA-graph capture and
# replay) with compute-sanitizer memcheck over a sample of every kernel beside
# it (when the tool is there), then the benchmark; writes gpu_check.log,
# tests.log, sanitizer.log, summary.md and results.tar.gz (the benchmark's
# tables, measurements and plots per dtype) to OUTDIR: five files, within
# what a lent machine hands back.
# SECONDS (default 480) is the whole run's budget: each stage is cut to what
# is left, so the run ends with its files written instead of being killed.
# Without a GPU it says so and stops (exit 2): everything that needs none runs
# in CI instead (the emulated CUDA suite, the mutation check, the SASS budget).
# A compiler that builds crashing extensions (toolchain_probe.py) is replaced
# by the system g++.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR [SECONDS]}
BUDGET=${2:-480}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The in-place build is imported from here, also by scripts run from benchmarks/.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
: >"$LOG"
START=$(date +%s)
step() { printf '\n==== %s (%s, %d s in)\n' "$*" "$(date +%T)" "$(($(date +%s) - START))" | tee -a "$LOG"; }
result() { printf -- '- %s\n' "$*" | tee -a "$SUMMARY"; }
# Seconds a stage may take: at most $1, and never past the budget less $2 kept for later stages.
allow() {
  local left=$((BUDGET - ($(date +%s) - START) - $2))
  [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}

echo "# fastdrop GPU check, $(date -u +%Y-%m-%dT%H:%MZ)" >"$SUMMARY"
step "environment"
{ nvidia-smi || true; "$PYTHON" -c 'import sys, torch, setuptools; print(sys.version); print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU visible:", torch.cuda.is_available(), "setuptools", setuptools.__version__)'; } 2>&1 | tee -a "$LOG"
GPU=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
if [ -z "$GPU" ]; then
  result "NO GPU PRESENT on $(hostname): torch sees no CUDA device, so nothing here was checked on a GPU."
  result "The CUDA kernels' CPU-side evidence is CI's: the emulated CUDA suite, the mutation check and the SASS budget."
  exit 2
fi
ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
result "GPU: $GPU (sm_${ARCH/./}); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"

step "toolchain probe"
if timeout 120 "$PYTHON" benchmarks/toolchain_probe.py >>"$LOG" 2>&1; then
  result "toolchain: ${CXX:-c++} builds extensions whose errors reach Python"
elif [ -x /usr/bin/g++ ] && CC=/usr/bin/gcc CXX=/usr/bin/g++ timeout 120 "$PYTHON" benchmarks/toolchain_probe.py >>"$LOG" 2>&1; then
  result "toolchain: ${CXX:-c++} builds extensions that crash on a torch error with a number in it; building with /usr/bin/g++"
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
else
  result "toolchain: extensions built here crash on torch errors (see gpu_check.log); error-path tests will fail"
fi

step "build with CUDA for sm_${ARCH/./}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
fi
rm -f fastdrop/_C*.so
BUILD_START=$(date +%s)
if FASTDROP_CUDA=1 FASTDROP_PTXAS_VERBOSE=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
  timeout "$(allow 300 60)" "$PYTHON" setup.py build_ext --inplace >>"$LOG" 2>&1; then
  result "build: ok in $(($(date +%s) - BUILD_START)) s ($(grep -c "Compiling entry function" "$LOG") kernels; spills: $(grep -c "[1-9][0-9]* bytes spill" "$LOG"))"
else
  result "build: FAILED (see gpu_check.log)"
  grep -m 20 -E "error|Error" "$LOG" | tee -a "$SUMMARY"
  exit 1
fi

step "test suite on CUDA, compute-sanitizer memcheck beside it"
SANITIZER=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SANITIZER" ]; then
  timeout "$(allow 150 120)" "$SANITIZER" --tool memcheck --error-exitcode 9 "$PYTHON" benchmarks/sanitizer_sample.py \
    >"$OUT/sanitizer.log" 2>&1 &
  SANITIZER_PID=$!
fi
PARALLEL=()
THREADS=${OMP_NUM_THREADS:-$(nproc)}
if "$PYTHON" -c 'import xdist' 2>/dev/null; then
  PARALLEL=(-n 8)
  # Eight workers of nproc threads each would oversubscribe the CPU tests 8 times over.
  THREADS=$(($(nproc) / 8 > 1 ? $(nproc) / 8 : 1))
fi
"$PYTHON" -c 'import pytest_timeout' 2>/dev/null && PARALLEL+=(--timeout 120)
# -v: one line per test, so a run cut short still says which tests passed and failed.
OMP_NUM_THREADS=$THREADS PYTHONUNBUFFERED=1 timeout "$(allow 240 110)" "$PYTHON" -m pytest -v -p no:cacheprovider "${PARALLEL[@]}" \
  -m "not slow and not cuda_emulated" -rfE tests >"$OUT/tests.log" 2>&1
TESTS_RC=$?
COUNTS="$(grep -cE ' PASSED' "$OUT/tests.log") passed, $(grep -cE ' (FAILED|ERROR)' "$OUT/tests.log") failed or errors"
if [ "$TESTS_RC" -eq 0 ]; then
  result "tests (${PARALLEL[*]:-one process}): $(grep -E '[0-9]+ passed' "$OUT/tests.log" | tail -1)"
else
  result "tests: rc $TESTS_RC ($COUNTS; 124 is out of time; see tests.log)"
  grep -E '^(FAILED|ERROR) |\] (FAILED|ERROR) ' "$OUT/tests.log" | sort -u | head -40 | tee -a "$SUMMARY"
fi
if [ -n "$SANITIZER" ]; then
  wait "$SANITIZER_PID"
  SANITIZER_RC=$?
  if [ "$SANITIZER_RC" -eq 0 ]; then
    result "compute-sanitizer memcheck: no errors over $(grep -c '^ran ' "$OUT/sanitizer.log") kernel samples"
  else
    result "compute-sanitizer memcheck: rc $SANITIZER_RC after $(grep -c '^ran ' "$OUT/sanitizer.log") samples (see sanitizer.log)"
    grep -m 10 -E "Invalid|ERROR|Error" "$OUT/sanitizer.log" | tee -a "$SUMMARY"
  fi
else
  result "compute-sanitizer: not installed here, skipped"
fi

step "benchmark"
mkdir -p "$OUT/results/plots"
for DTYPE in float32 bfloat16; do
  # The host-cost section once, with the first dtype; each dtype's files stand alone if the second is cut short.
  EXTRA=(--plots "$OUT/results/plots/$DTYPE")
  [ "$DTYPE" = bfloat16 ] && EXTRA+=(--no-host)
  mkdir -p "$OUT/results/plots/$DTYPE"
  if PYTHONUNBUFFERED=1 timeout "$(allow 200 $([ "$DTYPE" = float32 ] && echo 90 || echo 10))" "$PYTHON" -m fastdrop.bench \
    --device cuda --dtype "$DTYPE" --min-exp 20 --max-exp 28 --no-compile "${EXTRA[@]}" \
    --json "$OUT/results/bench-$DTYPE.json" --markdown "$OUT/results/bench-$DTYPE.md" >>"$LOG" 2>&1; then
    result "benchmark $DTYPE: results/bench-$DTYPE.md and .json written"
    sed -n '/### Targets/,$p' "$OUT/results/bench-$DTYPE.md" >>"$SUMMARY"
  else
    result "benchmark $DTYPE: FAILED or out of time (see gpu_check.log)"
  fi
done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -r "$OUT/results"
result "total: $(($(date +%s) - START)) s"
cat "$SUMMARY"
