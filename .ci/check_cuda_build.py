"""Checks a CUDA build of fastdrop: every op has a CUDA kernel, and ptxas's
resource report shows kernels for sm_80 and sm_90 with no register spills.

usage: check_cuda_build.py BUILD_LOG EXTENSION_SO
"""

import re
import sys

import torch

log_path, library = sys.argv[1], sys.argv[2]
torch.ops.load_library(library)

ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastdrop::"))
assert ops, "the extension registered no fastdrop ops"
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
assert not missing, f"ops without a CUDA kernel: {missing}"
print(f"{len(ops)} ops, each with CPU and CUDA kernels: {', '.join(ops)}")

# Each "Compiling entry function" line is followed by that kernel's resource line.
reports, pending = [], None
for line in open(log_path):
    entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
    if entry:
        pending = entry.groups()
        continue
    usage = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if usage and pending:
        reports.append((*pending, int(usage.group(1)), int(usage.group(2))))
        pending = None
archs = sorted({arch for _, arch, _, _ in reports})
assert {"sm_80", "sm_90"} <= set(archs), f"kernels were built for {archs}, expected sm_80 and sm_90"
spilling = [(name, arch) for name, arch, stores, loads in reports if stores or loads]
assert not spilling, f"kernels that spill registers: {spilling}"
print(f"{len(reports)} kernel builds ({', '.join(archs)}), none spills registers")
