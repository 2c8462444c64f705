"""Builds fastdrop._C: the CPU kernels always, the CUDA kernels where they can run.

FASTDROP_CUDA=1 forces the CUDA build (e.g. on a build machine without a GPU),
FASTDROP_CUDA=0 forbids it. TORCH_CUDA_ARCH_LIST is respected; by default the
kernels are built for sm_80 and sm_90 plus PTX for newer GPUs.
FASTDROP_PTXAS_VERBOSE=1 prints ptxas's register and spill report per kernel.
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def build_with_cuda():
    forced = os.environ.get("FASTDROP_CUDA")
    if forced not in (None, "", "0", "1"):
        raise SystemExit(f"FASTDROP_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return False
    if forced == "1":
        if torch.version.cuda is None:
            raise SystemExit("FASTDROP_CUDA=1, but the installed torch has no CUDA support")
        if CUDA_HOME is None:
            raise SystemExit("FASTDROP_CUDA=1, but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def extension():
    sources = [
        "csrc/ops.cpp",
        "csrc/autograd.cpp",
        "csrc/functionalize.cpp",
        "csrc/meta_ops.cpp",
        "csrc/python_module.cpp",
        *sorted(glob.glob("csrc/cpu/*.cpp")),
    ]
    # No contraction into FMA: results must round exactly as torch's reference ops do.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for only splits work when the extension itself is built
        # with OpenMP; the libgomp torch ships is reused at load time.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if not build_with_cuda():
        return CppExtension("fastdrop._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc_flags = ["-O3", "-lineinfo"]
    if os.environ.get("FASTDROP_PTXAS_VERBOSE") == "1":
        nvcc_flags.append("-Xptxas=-v")
    return CUDAExtension(
        "fastdrop._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        define_macros=[("FASTDROP_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
