#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU and a CUDA build of torch:
#   benchmarks/gpu_check.sh OUTDIR
# builds fastdrop with CUDA (sm_90 for Hopper, or the visible GPU's arch),
# runs the whole test suite on CUDA (CPU == CUDA bit for bit, 2^31 + 17
# elements, CUDA-graph capture and replay), compute-sanitizer memcheck over a
# sample of every kernel (when the tool is there), and the benchmark; writes
# gpu_check.log, summary.md, bench.md, bench.json and the benchmark's plots to
# OUTDIR. Sized for under 8 minutes on an H100/H200. Without a GPU it says so
# and stops (exit 2): everything that needs none runs in CI instead (the
# emulated CUDA suite, the mutation check, the SASS budget).
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
: >"$LOG"
step() { printf '\n==== %s (%s)\n' "$*" "$(date +%T)" | tee -a "$LOG"; }
result() { printf -- '- %s\n' "$*" | tee -a "$SUMMARY"; }
START=$(date +%s)

echo "# fastdrop GPU check, $(date -u +%Y-%m-%dT%H:%MZ)" >"$SUMMARY"
step "environment"
{ nvidia-smi || true; "$PYTHON" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU visible:", torch.cuda.is_available())'; } 2>&1 | tee -a "$LOG"
GPU=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
if [ -z "$GPU" ]; then
  result "NO GPU PRESENT on $(hostname): torch sees no CUDA device, so nothing here was checked on a GPU."
  result "The CUDA kernels' CPU-side evidence is CI's: the emulated CUDA suite, the mutation check and the SASS budget."
  exit 2
fi
ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')
result "GPU: $GPU (sm_${ARCH/./}); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"

step "build with CUDA for sm_${ARCH/./}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
rm -f fastdrop/_C*.so
if FASTDROP_CUDA=1 FASTDROP_PTXAS_VERBOSE=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
  "$PYTHON" setup.py build_ext --inplace >>"$LOG" 2>&1; then
  result "build: ok ($(grep -c "Compiling entry function" "$LOG") kernels; spills: $(grep -c "[1-9][0-9]* bytes spill" "$LOG"))"
else
  result "build: FAILED (see gpu_check.log)"
  exit 1
fi

step "test suite on CUDA (CPU == CUDA bit for bit, 2^31 + 17 elements, graph capture)"
if PYTHONUNBUFFERED=1 timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow and not cuda_emulated" tests >>"$LOG" 2>&1; then
  result "tests: $(grep -E '^[0-9]+ passed' "$LOG" | tail -1)"
else
  result "tests: FAILED: $(grep -E '(passed|failed)' "$LOG" | tail -1) (see gpu_check.log)"
fi

step "compute-sanitizer memcheck over a sample of every kernel"
SANITIZER=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SANITIZER" ]; then
  if timeout 120 "$SANITIZER" --tool memcheck --error-exitcode 9 "$PYTHON" benchmarks/sanitizer_sample.py >>"$LOG" 2>&1; then
    result "compute-sanitizer memcheck: no errors over $(grep -c '^ran ' "$LOG") kernel samples"
  else
    result "compute-sanitizer memcheck: ERRORS (see gpu_check.log)"
  fi
else
  result "compute-sanitizer: not installed here, skipped"
fi

step "benchmark"
if PYTHONUNBUFFERED=1 timeout 240 "$PYTHON" -m fastdrop.bench --device cuda --min-exp 20 --max-exp 28 --no-compile \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md" --plots "$OUT" >>"$LOG" 2>&1; then
  result "benchmark: bench.md, bench.json and plots written"
  sed -n '/### Targets/,$p' "$OUT/bench.md" >>"$SUMMARY"
else
  result "benchmark: FAILED or out of time (see gpu_check.log)"
fi
result "total: $(($(date +%s) - START)) s"
cat "$SUMMARY"
