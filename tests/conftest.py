import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import emulated_cuda  # noqa: E402
import fastdrop  # noqa: E402,F401
from fastdrop.bench import measure  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# "cuda_emulated": the CUDA kernels on the emulated device (tests/emulated_cuda.py),
# selected with -m cuda_emulated.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=requires_cuda),
    pytest.param("cuda_emulated", marks=pytest.mark.cuda_emulated),
]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (branch dtype, residual dtype): every pair the residual forms take besides equal dtypes.
WIDER_RESIDUALS = [
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float64),
    (torch.float16, torch.float64),
    (torch.float32, torch.float64),
]


def dtype_pair_id(pair):
    return "-".join(str(d).replace("torch.", "") for d in pair)


def pytest_configure(config):
    """Emulated tests need the ASan runtime loaded first: re-executes pytest with it preloaded."""
    from _pytest.mark.expression import Expression

    expression = config.option.markexpr
    selected = bool(expression) and Expression.compile(expression).evaluate(lambda mark: mark == "cuda_emulated")
    if selected and not emulated_cuda.asan_loaded() and not os.environ.get("FASTDROP_EMULATION_REEXEC"):
        environment = dict(
            os.environ,
            FASTDROP_EMULATION_REEXEC="1",
            LD_PRELOAD=emulated_cuda.asan_preload(),
            ASAN_OPTIONS=emulated_cuda.ASAN_OPTIONS,
        )
        sys.stdout.flush()
        # Output captured at the file-descriptor level is lost when a sanitizer aborts the process.
        arguments = [*config.invocation_params.args, "--capture=sys"]
        os.execve(sys.executable, [sys.executable, "-m", "pytest", *arguments], environment)


def pytest_collection_modifyitems(config, items):
    """torch.compile refuses to trace under a dispatch mode, so compiled tests
    (marked `traces`, as opcheck is) run on the real devices only: what they check, the
    traced graph, is the same for every device."""
    deselected = [
        item
        for item in items
        if item.get_closest_marker("traces")
        and getattr(item, "callspec", None)
        and item.callspec.params.get("device") == "cuda_emulated"
    ]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a test's tensors live on; the emulated CUDA device keeps them
    on the CPU and runs every fastdrop operator through the CUDA kernels."""
    if request.param == "cuda_emulated":
        with emulated_cuda.redirect():
            yield "cpu"
    else:
        yield request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


def assert_identical(actual, expected):
    """Bit-for-bit agreement of values (NaN where NaN), dtype, shape and device."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def saved_bytes(fn, *inputs):
    """Bytes autograd saves for backward while fn(*inputs) runs, the inputs themselves excluded."""
    return measure.saved_bytes(fn, inputs)
