"""The emulated CUDA device the tests run fastdrop's CUDA kernels on.

csrc/cuda/*.cu are compiled by the host compiler against a shim
(csrc/cuda/emulation/), with AddressSanitizer and UndefinedBehaviorSanitizer,
into torch.ops.fastdrop_emulated: the CUDA operators on CPU tensors, each
kernel run serially, thread by thread, in the order and grid the settings
give. The build comes from the checkout's csrc/ and is cached under a hash of
every source and flag, so editing a .cu file and rerunning pytest tests the
edit, with no reinstall. FASTDROP_EMULATED_CSRC points the build at another
source tree and FASTDROP_EMULATED_BUILD_DIR the build to a fixed folder, rebuilt
incrementally (the mutation check uses both).

`redirect()` routes every torch.ops.fastdrop call to torch.ops.fastdrop_emulated
(below autograd, so autograd, the functional API and the modules run as they
do on a GPU): the tests' `device` fixture runs the CUDA parametrizations so.

The process must have the ASan runtime loaded first; tests/conftest.py
re-executes pytest with it preloaded when emulated tests are selected.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPOSITORY = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastdrop" / "emulated-cuda"
CFLAGS = [
    "-DFASTDROP_EMULATE_CUDA",
    "-O1",
    "-g1",
    "-ffp-contract=off",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
    "-Wno-unknown-pragmas",
]
LDFLAGS = ["-fsanitize=address,undefined"]
# Python and torch leak by design at exit and mix allocators; neither is what is under test.
ASAN_OPTIONS = "detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1"


def _gcc_file(name):
    return subprocess.run(
        ["gcc", f"-print-file-name={name}"], check=True, capture_output=True, text=True
    ).stdout.strip()


def asan_preload():
    """LD_PRELOAD for the emulated device: the host compiler's ASan runtime, and
    libstdc++ beside it so that ASan's exception interceptor finds the real
    __cxa_throw (python itself does not link libstdc++)."""
    return f"{_gcc_file('libasan.so')} {_gcc_file('libstdc++.so.6')}"


def asan_loaded():
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


def sources_root():
    return Path(os.environ.get("FASTDROP_EMULATED_CSRC", REPOSITORY / "csrc")).resolve()


def source_digest(csrc):
    digest = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(csrc)).encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS + [torch.__version__]).encode())
    return digest.hexdigest()[:16]


KEEP_BUILDS = 4


def _prune_cache():
    """Keeps the most recent builds only: each edit of csrc/ makes a new one."""
    builds = sorted((p for p in CACHE.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        shutil.rmtree(old, ignore_errors=True)
        (CACHE / f".{old.name}.lock").unlink(missing_ok=True)


def build(csrc=None, build_dir=None, verbose=False):
    """Builds (or finds in the cache) the emulated operators' library; returns its path."""
    csrc = Path(csrc or sources_root()).resolve()
    build_dir = Path(build_dir or os.environ.get("FASTDROP_EMULATED_BUILD_DIR") or CACHE / source_digest(csrc))
    library = build_dir / "fastdrop_emulated.so"
    if library.exists() and build_dir.parent == CACHE:
        os.utime(build_dir)
        return library
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch's builder guards a folder with a lock file that a killed build leaves behind, and then
    # waits on it forever; a kernel lock dies with its holder, so under it that file is stale.
    with open(build_dir.parent / f".{build_dir.name}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if library.exists() and build_dir.parent == CACHE:
            return library
        (build_dir / "lock").unlink(missing_ok=True)
        _compile(csrc, build_dir, verbose)
    if build_dir.parent == CACHE:
        _prune_cache()
    return library


def _compile(csrc, build_dir, verbose):
    from torch.utils import cpp_extension

    sources = []
    for kernel_file in sorted((csrc / "cuda").glob("*.cu")):
        # The .cu files themselves, through a C++ file (the extension builder would hand .cu to nvcc).
        wrapper = build_dir / f"{kernel_file.stem}_emulated.cpp"
        wrapper.write_text(f'#include "{kernel_file}"\n')
        sources.append(str(wrapper))
    sources.append(str(csrc / "cuda" / "emulation" / "emulated_ops.cpp"))
    shim = csrc / "cuda" / "emulation" / "shim.h"
    cpp_extension.load(
        name="fastdrop_emulated",
        sources=sources,
        extra_cflags=[*CFLAGS, "-include", str(shim)],
        extra_ldflags=LDFLAGS,
        extra_include_paths=[str(csrc)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )


@cache
def ops():
    """torch.ops.fastdrop_emulated, built and loaded once per process."""
    if not asan_loaded():
        raise RuntimeError(
            "the emulated CUDA device needs the ASan runtime preloaded: "
            f"LD_PRELOAD='{asan_preload()}' ASAN_OPTIONS={ASAN_OPTIONS} python -m pytest -m cuda_emulated"
        )
    library = build()
    if not hasattr(torch.ops.fastdrop_emulated, "dropout"):
        torch.ops.load_library(str(library))
    return torch.ops.fastdrop_emulated


def configure(**settings):
    """Launch geometry, order, SM count, Philox offset and graph-capture form (see emulation/runtime.h)."""
    ops().configure(**settings)


@contextmanager
def settings(**values):
    configure(**values)
    try:
        yield
    finally:
        configure()


def _real(value):
    return not isinstance(value, torch.Tensor) or (type(value) is torch.Tensor and value.device.type == "cpu")


class _Redirect(TorchDispatchMode):
    """Sends fastdrop's operators on real CPU tensors to the emulated device; traced
    calls (fake or meta tensors, under torch.compile or opcheck) keep the Meta kernels."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastdrop" and all(map(_real, args)) and all(map(_real, kwargs.values())):
            func = getattr(getattr(ops(), func._schema.name.split("::")[1]), func._overloadname)
        return func(*args, **kwargs)


@contextmanager
def redirect():
    """Runs torch.ops.fastdrop's operators on the emulated CUDA device within the block."""
    ops()
    with _Redirect():
        yield
