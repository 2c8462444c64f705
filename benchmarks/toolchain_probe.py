"""Builds a one-function torch extension with the compiler the build would use
($CXX, else c++) and raises a torch error whose message holds a number; exits 0
when that error arrives as Python's ValueError. Some images wrap g++ so that an
extension carries a second copy of libstdc++'s stream code, and formatting a
number into any TORCH_CHECK message then segfaults (seen on the lent H200
image's /opt/gcc wrapper, 2026-11-29); benchmarks/gpu_check.sh runs this
before building fastdrop and falls back to the system g++ when it fails.
The extension is built and called in a child process, so a crash is an exit
status here rather than the end of this script."""

import subprocess
import sys
import tempfile

CHILD = r"""
import sys
from torch.utils.cpp_extension import load_inline
source = '#include <torch/extension.h>\nvoid fail(double p) { TORCH_CHECK_VALUE(p <= 1.0, "probability ", p); }\n'
module = load_inline(
    name="fastdrop_toolchain_probe", cpp_sources=source, functions=["fail"], build_directory=sys.argv[1]
)
try:
    module.fail(2.0)
except ValueError as error:
    sys.exit(0 if "probability 2" in str(error) else 3)
sys.exit(4)
"""


def main():
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run([sys.executable, "-c", CHILD, folder], capture_output=True, text=True)
    if child.returncode == 0:
        print("toolchain probe: a torch error with a number in its message reaches Python")
        return 0
    print(f"toolchain probe: exit status {child.returncode} (-11 or 139: segfault)\n{child.stderr[-2000:]}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
